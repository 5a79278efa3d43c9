//! The kernel backend of flow rules: the learned (client, address) entries as elements of
//! nftables sets in the `inet nfqmark` table, so new flows are marked by the kernel and no
//! flow packet goes through the queue.
//!
//! This module owns three things:
//! - the layout ([`layout`]): one set per flow rule and address family, named after the rule's
//!   place and mark (`f1_20_ff_4`: first flow rule, mark 0x20/0xff, IPv4; `_m` and the mask for
//!   rules keyed by the client's mark, whose key ends with the client's mark under it), keyed
//!   `client . address [. mark]`. `nfqmark setup` prints these sets and the rules that use them
//!   (`crate::setup`); the daemon writes their elements. A name carries the mark, so a rules
//!   file whose marks changed without `nfqmark setup` being run again finds its sets missing
//!   and says so, instead of writing another rule's set;
//! - the backend thread ([`Backend::run`]): it takes the learned table's changes from a
//!   bounded queue (a full queue drops and counts; the packet path never waits), and sends
//!   them to the kernel in batches, one transaction each, with each element's timeout the
//!   entry's clamped TTL; it reads the sets back now and then to count the elements the kernel
//!   expired and to put back any the kernel lost while their TTL runs (a set emptied by loading
//!   the table again);
//! - start-up ([`start`]): check that the sets exist with the right key, find how this kernel
//!   re-times an element that exists already (Linux >= 6.12 on a plain add; older kernels need
//!   a delete first, in the same batch), and adopt the elements already there into the learned
//!   table, so a restarted daemon knows what a stopped one learned. On stop the elements stay
//!   in the kernel until their timeouts: flows keep being marked while nfqmark is down.
//!
//! It never touches the packet path, never blocks a worker (the only thing a worker does is a
//! non-blocking send into the queue), and never creates or deletes a set or a rule: the table
//! is the operator's, loaded from `nfqmark setup`'s output.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use crate::flows::{Change, FlowTarget, Learned, keyed_mark};
use crate::nfnl::{
    BatchReply, Element, MAX_BATCH_ELEMENTS, NfnlSocket, SetElemOp as Op, SetId, SetKey as Key,
    SetOp,
};
use crate::stats::Counter;

/// The table `nfqmark setup` creates (family inet).
pub const TABLE: &str = "nfqmark";
/// `NFPROTO_INET`: the table's family.
const INET: u8 = 1;

/// Address family of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn addr_len(self) -> usize {
        match self {
            Family::V4 => 4,
            Family::V6 => 16,
        }
    }
}

/// One set of the layout: the elements of one flow rule for one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    pub name: String,
    pub family: Family,
    pub target: FlowTarget,
}

/// The set name for a flow rule and family: `f{n}_{value}_{mask}[_m{per-mark mask}]_{4|6}`, in
/// hex, `n` counting flow rules from 1.
pub fn set_name(target: FlowTarget, family: Family) -> String {
    let (value, mask) = target.mark;
    let mut name = format!("f{}_{:x}_{mask:x}", target.rule + 1, value & mask);
    if let Some(by) = target.by_mark {
        let _ = write!(name, "_m{by:x}");
    }
    name.push_str(match family {
        Family::V4 => "_4",
        Family::V6 => "_6",
    });
    name
}

/// The sets of a rules file's flow rules, in file order, IPv4 then IPv6 for each.
pub fn layout(targets: &[FlowTarget]) -> Vec<SetSpec> {
    targets
        .iter()
        .flat_map(|&target| {
            [Family::V4, Family::V6].map(|family| SetSpec {
                name: set_name(target, family),
                family,
                target,
            })
        })
        .collect()
}

fn octets(addr: IpAddr) -> ([u8; 16], usize) {
    let mut out = [0u8; 16];
    match addr {
        IpAddr::V4(a) => {
            out[..4].copy_from_slice(&a.octets());
            (out, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

impl SetSpec {
    /// The key's length: two addresses, and the mark for rules keyed by it.
    pub fn key_len(&self) -> u32 {
        let addrs = 2 * self.family.addr_len();
        let mark = if self.target.by_mark.is_some() { 4 } else { 0 };
        (addrs + mark) as u32
    }

    /// The element key of (client, its mark, address); `None` when either address is not of
    /// the set's family.
    pub fn key(&self, client: IpAddr, client_mark: u32, addr: IpAddr) -> Option<Key> {
        if Family::of(client) != self.family || Family::of(addr) != self.family {
            return None;
        }
        let (c, n) = octets(client);
        let (a, _) = octets(addr);
        let mark = keyed_mark(self.target, client_mark).to_ne_bytes();
        let c = c.get(..n)?;
        let a = a.get(..n)?;
        match self.target.by_mark {
            Some(_) => Key::concat(&[c, a, &mark]),
            None => Key::concat(&[c, a]),
        }
    }

    /// (client, client's mark under the rule's mask, address) of a key of this set.
    pub fn parse_key(&self, key: &[u8]) -> Option<(IpAddr, u32, IpAddr)> {
        if key.len() != self.key_len() as usize {
            return None;
        }
        let n = self.family.addr_len();
        let addr = |b: &[u8]| -> Option<IpAddr> {
            Some(match self.family {
                Family::V4 => IpAddr::V4(Ipv4Addr::from(*b.first_chunk::<4>()?)),
                Family::V6 => IpAddr::V6(Ipv6Addr::from(*b.first_chunk::<16>()?)),
            })
        };
        let client = addr(key.get(..n)?)?;
        let dst = addr(key.get(n..2 * n)?)?;
        let mark = match self.target.by_mark {
            Some(_) => u32::from_ne_bytes(*key.get(2 * n..)?.first_chunk::<4>()?),
            None => 0,
        };
        Some((client, mark, dst))
    }

    /// The set's type for nft (`ipv4_addr . ipv4_addr . mark`).
    pub fn nft_type(&self) -> &'static str {
        match (self.family, self.target.by_mark.is_some()) {
            (Family::V4, false) => "ipv4_addr . ipv4_addr",
            (Family::V4, true) => "ipv4_addr . ipv4_addr . mark",
            (Family::V6, false) => "ipv6_addr . ipv6_addr",
            (Family::V6, true) => "ipv6_addr . ipv6_addr . mark",
        }
    }

    /// What a packet is looked up by (`ip saddr . ip daddr . meta mark & 0xff00`).
    pub fn nft_lookup(&self) -> String {
        let ip = match self.family {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        match self.target.by_mark {
            Some(mask) => format!("{ip} saddr . {ip} daddr . meta mark & {mask:#x}"),
            None => format!("{ip} saddr . {ip} daddr"),
        }
    }

    fn id(&self) -> SetId<'_> {
        SetId {
            family: INET,
            table: TABLE,
            name: &self.name,
        }
    }
}

/// How this kernel re-times an element that exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// A plain add sets its new timeout (Linux >= 6.12).
    Add,
    /// A destroy, then the add, in one batch (Linux 6.3 to 6.11: an add keeps the old expiry,
    /// a destroy of what is not there is no error).
    DestroyThenAdd,
    /// A delete, then the add; a batch failing because the element had expired meanwhile is
    /// sent again without the delete (older kernels).
    DeleteThenAdd,
}

/// Counters of the backend, shared with the metrics.
#[derive(Debug, Default)]
pub struct Stats {
    /// Elements added for entries learned anew.
    pub added: Counter,
    /// Elements added again for entries learned again (their timeout starts again).
    pub refreshed: Counter,
    /// Elements deleted because their entry was evicted before its TTL.
    pub removed: Counter,
    /// Elements the kernel expired, found out by reading the sets back.
    pub expired: Counter,
    /// Elements the kernel had lost before their TTL (a set loaded again), put back.
    pub restored: Counter,
    /// Changes dropped: the queue to the backend thread was full.
    pub dropped: Counter,
    /// Changes the kernel refused (see the log for why).
    pub failed: Counter,
    /// Changes for a set the kernel does not have (`nfqmark setup` not loaded, or older than
    /// the rules).
    pub no_set: Counter,
    /// Batches sent.
    pub batches: Counter,
    /// Elements taken in from the kernel at start.
    pub adopted: Counter,
    /// Elements in the sets at the last read-back.
    pub elements: AtomicU64,
    /// Time from the answer being learned to its element being in the kernel, as a histogram:
    /// counts per bucket of [`LATENCY_BUCKETS_US`] (and one past the last), and the sum.
    pub latency: [Counter; LATENCY_BUCKETS_US.len() + 1],
    pub latency_sum_us: Counter,
}

/// Upper bounds of the latency histogram's buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 10] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 100_000, 1_000_000,
];

impl Stats {
    fn record_latency(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        if let Some(c) = self.latency.get(i) {
            c.inc();
        }
        self.latency_sum_us.add(us);
    }

    /// Every counter, copied out.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            added: self.added.get(),
            refreshed: self.refreshed.get(),
            removed: self.removed.get(),
            expired: self.expired.get(),
            restored: self.restored.get(),
            dropped: self.dropped.get(),
            failed: self.failed.get(),
            no_set: self.no_set.get(),
            batches: self.batches.get(),
            adopted: self.adopted.get(),
            elements: self.elements.load(Ordering::Relaxed),
            latency: self.latency.iter().map(Counter::get).collect(),
            latency_sum_us: self.latency_sum_us.get(),
        }
    }
}

/// The backend's counters at one moment, for metrics and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub added: u64,
    pub refreshed: u64,
    pub removed: u64,
    pub expired: u64,
    pub restored: u64,
    pub dropped: u64,
    pub failed: u64,
    pub no_set: u64,
    pub batches: u64,
    pub adopted: u64,
    pub elements: u64,
    /// Per bucket of [`LATENCY_BUCKETS_US`], then one past the last (not cumulative).
    pub latency: Vec<u64>,
    pub latency_sum_us: u64,
}

/// Work for the backend thread.
#[derive(Debug)]
enum Job {
    Change(Change),
    /// The rules were reloaded: their sets.
    Layout(Vec<SetSpec>),
}

/// The workers' side of the backend: hand it changes without ever waiting.
#[derive(Debug)]
pub struct Handle {
    tx: SyncSender<Job>,
    pub stats: Arc<Stats>,
}

impl Handle {
    /// Queue a change for the kernel; a full queue drops it (counted).
    pub fn offer(&self, change: Change) {
        match self.tx.try_send(Job::Change(change)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.inc()
            }
        }
    }

    /// The rules changed (SIGHUP): use their sets from now on. Waits for room in the queue
    /// (this is the rules thread, not a worker).
    pub fn relayout(&self, targets: &[FlowTarget]) {
        let _ = self.tx.send(Job::Layout(layout(targets)));
    }
}

/// Settings of the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Most changes waiting for the thread.
    pub queue: usize,
    /// How often the sets are read back.
    pub readback: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            queue: 16_384,
            readback: Duration::from_secs(10),
        }
    }
}

/// A set as the backend knows it: its spec, whether the kernel has it, and the elements it put
/// there (key -> expiry), to tell expired elements from lost ones.
#[derive(Debug)]
struct Set {
    spec: SetSpec,
    present: bool,
    mirror: HashMap<Key, Instant>,
}

/// What [`start`] found, for the daemon's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// Sets the rules need that the kernel has.
    pub present: usize,
    /// Sets the rules need that are missing or have another key; their names.
    pub missing: Vec<String>,
    pub refresh: Refresh,
    /// Elements found in the kernel and taken into the learned table.
    pub adopted: usize,
}

/// The backend thread's state.
pub struct Backend {
    sock: NfnlSocket,
    rx: Receiver<Job>,
    sets: Vec<Set>,
    refresh: Refresh,
    stats: Arc<Stats>,
    config: Config,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("sets", &self.sets.len())
            .field("refresh", &self.refresh)
            .finish()
    }
}

/// Which of the rules' sets the kernel has with the key they need: `Err` when it cannot be
/// asked (no netlink, no permission).
pub fn sets_present(specs: &[SetSpec]) -> std::io::Result<Vec<bool>> {
    let mut sock = NfnlSocket::open()?;
    specs.iter().map(|s| present(&mut sock, s)).collect()
}

fn present(sock: &mut NfnlSocket, spec: &SetSpec) -> std::io::Result<bool> {
    Ok(sock
        .set_info(&spec.id())?
        .is_some_and(|info| info.key_len == spec.key_len() && info.timeouts() && !info.map()))
}

/// Open the backend for these flow rules: check the sets, find how this kernel re-times
/// elements, adopt the elements the kernel holds into `learned`. The daemon then turns the
/// learned table's outbox on ([`Learned::enable_outbox`]), runs [`Backend::run`] on a thread
/// of its own and gives the workers the [`Handle`].
pub fn start(
    targets: &[FlowTarget],
    learned: &mut Learned,
    config: Config,
    now: Instant,
) -> std::io::Result<(Handle, Backend, Started)> {
    let mut sock = NfnlSocket::open()?;
    let mut sets = Vec::new();
    let mut missing = Vec::new();
    for spec in layout(targets) {
        let here = present(&mut sock, &spec)?;
        if !here {
            missing.push(spec.name.clone());
        }
        sets.push(Set {
            spec,
            present: here,
            mirror: HashMap::new(),
        });
    }
    let refresh = match sets.iter().find(|s| s.present) {
        Some(s) => probe_refresh(&mut sock, &s.spec)?,
        None => Refresh::Add,
    };
    let stats = Arc::new(Stats::default());
    let mut adopted = 0;
    for set in sets.iter_mut().filter(|s| s.present) {
        let Some(elements) = sock.set_elements(&set.spec.id())? else {
            continue;
        };
        for e in elements {
            let Some((client, mark, addr)) = set.spec.parse_key(e.key.as_bytes()) else {
                continue;
            };
            let Some(left) = e.expiration_ms.map(Duration::from_millis) else {
                continue; // never expires: not one of ours
            };
            let expires = now + left;
            if learned.adopt(client, mark, addr, set.spec.target, expires, now) {
                set.mirror.insert(e.key, expires);
                adopted += 1;
            }
        }
    }
    stats.adopted.add(adopted as u64);
    stats.elements.store(adopted as u64, Ordering::Relaxed);
    let (tx, rx) = mpsc::sync_channel(config.queue.max(1));
    let present = sets.iter().filter(|s| s.present).count();
    Ok((
        Handle {
            tx,
            stats: Arc::clone(&stats),
        },
        Backend {
            sock,
            rx,
            sets,
            refresh,
            stats,
            config,
        },
        Started {
            present,
            missing,
            refresh,
            adopted,
        },
    ))
}

/// Find how the kernel re-times an existing element: add a probe element (an all-zero key,
/// which no client has) with a 60 s timeout, add it again with 120 s, read its timeout back;
/// then remove it (destroy where the kernel has it). The probe lives for a few milliseconds.
fn probe_refresh(sock: &mut NfnlSocket, spec: &SetSpec) -> std::io::Result<Refresh> {
    let zero = match spec.family {
        Family::V4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Family::V6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let Some(key) = spec.key(zero, 0, zero) else {
        return Ok(Refresh::Add);
    };
    let add = |ms: u64| Element {
        key,
        timeout_ms: Some(ms),
        expiration_ms: None,
    };
    let (short, long, bare) = (add(60_000), add(120_000), Element::new(key));
    let id = spec.id();
    fn one<'a>(op: Op, set: SetId<'a>, e: &'a Element) -> [SetOp<'a>; 1] {
        [SetOp {
            op,
            set,
            elements: std::slice::from_ref(e),
        }]
    }
    let first = sock.set_batch(&one(Op::Add, id, &short))?;
    if !first.applied() {
        return Err(refused("adding a probe element", &first));
    }
    let _ = sock.set_batch(&one(Op::Add, id, &long))?;
    let retimed = sock
        .set_element(&id, &key)?
        .is_some_and(|e| e.timeout_ms == Some(120_000));
    let destroys = sock.set_batch(&one(Op::Destroy, id, &bare))?.applied();
    if !destroys {
        let _ = sock.set_batch(&one(Op::Delete, id, &bare))?;
    }
    Ok(match (retimed, destroys) {
        (true, _) => Refresh::Add,
        (false, true) => Refresh::DestroyThenAdd,
        (false, false) => Refresh::DeleteThenAdd,
    })
}

fn refused(what: &str, reply: &BatchReply) -> std::io::Error {
    match reply.errno() {
        Some(errno) => {
            let e = std::io::Error::from_raw_os_error(errno);
            std::io::Error::new(e.kind(), format!("{what}: {e}"))
        }
        None => std::io::Error::other(format!("{what}: no answer")),
    }
}

/// One change waiting to be sent, with where it goes.
#[derive(Debug, Clone, Copy)]
struct Pending {
    set: usize,
    key: Key,
    /// `Some` for an add: the element's timeout and what is left of it, and when the entry was
    /// learned; `None` for a removal.
    add: Option<(Duration, Duration, Instant)>,
    refreshed: bool,
}

/// The ops of one batch for `pending` (in order, grouped per set and kind), given how the
/// kernel re-times elements. Refreshes on kernels that keep the old expiry are preceded by a
/// removal of the element (`with_removal` false drops those, for the retry of a batch whose
/// removals found nothing). Returns (set, op, elements).
fn batch_ops(
    pending: &[Pending],
    refresh: Refresh,
    with_removal: bool,
) -> Vec<(usize, Op, Vec<Element>)> {
    let mut ops: Vec<(usize, Op, Vec<Element>)> = Vec::new();
    let mut push = |set: usize, op: Op, e: Element| match ops
        .iter_mut()
        .find(|(s, o, _)| *s == set && *o == op)
    {
        Some((_, _, v)) => v.push(e),
        None => ops.push((set, op, vec![e])),
    };
    let removal = match refresh {
        Refresh::Add => None,
        Refresh::DestroyThenAdd => Some(Op::Destroy),
        Refresh::DeleteThenAdd => Some(Op::Delete),
    };
    // Removals first (evictions and the first half of refreshes), then adds: within one set a
    // refresh's removal must come before its add.
    for p in pending {
        match p.add {
            None => push(p.set, removal.unwrap_or(Op::Destroy), Element::new(p.key)),
            Some(_) if p.refreshed && with_removal => {
                if let Some(op) = removal {
                    push(p.set, op, Element::new(p.key));
                }
            }
            Some(_) => {}
        }
    }
    for p in pending {
        if let Some((timeout, left, _)) = p.add {
            push(
                p.set,
                Op::Add,
                Element {
                    key: p.key,
                    timeout_ms: Some(ms(timeout)),
                    expiration_ms: Some(ms(left).max(1)),
                },
            );
        }
    }
    ops
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// What a read-back of one set means for the elements the backend put there: those gone whose
/// expiry has passed (give or take `slack`) expired in the kernel; those gone before it were
/// lost and are put back, with what is left of their TTL. Forgets entries whose expiry passed.
fn reconcile(
    mirror: &mut HashMap<Key, Instant>,
    present: &HashSet<Key>,
    now: Instant,
    slack: Duration,
) -> (u64, Vec<(Key, Duration)>) {
    let mut expired = 0;
    let mut lost = Vec::new();
    mirror.retain(|key, &mut expires| {
        if present.contains(key) {
            // Still there: keep it while its TTL runs (a late read-back may find it expired).
            return expires + slack > now;
        }
        if expires <= now + slack {
            expired += 1;
            false
        } else {
            lost.push((*key, expires - now));
            true
        }
    });
    (expired, lost)
}

/// How often the thread looks at the stop flag while idle.
const IDLE: Duration = Duration::from_millis(100);
/// An element counts as expired, not lost, if its expiry is this close (the kernel's own
/// clock and the timeout's rounding to its tick).
const SLACK: Duration = Duration::from_secs(1);
/// At most one log line per kind of refusal per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);

impl Backend {
    /// Serve changes until `stop` is set. `Err` only when the netlink socket fails for good.
    pub fn run(mut self, stop: &AtomicBool) -> std::io::Result<()> {
        let mut next_readback = Instant::now() + self.config.readback;
        let mut pending: Vec<Pending> = Vec::with_capacity(MAX_BATCH_ELEMENTS);
        let mut warned: HashMap<i32, Instant> = HashMap::new();
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_readback {
                if let Err(e) = self.readback(now) {
                    self.socket_failed("reading the sets back", &e)?;
                }
                next_readback = Instant::now() + self.config.readback;
            }
            let wait = next_readback.saturating_duration_since(now).min(IDLE);
            let first = match self.rx.recv_timeout(wait) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // A batch is what waits now: the first change of a quiet period goes out at once,
            // and under load one batch carries many.
            pending.clear();
            let mut layout = self.take(first, &mut pending);
            while layout.is_none() && pending.len() < MAX_BATCH_ELEMENTS / 2 {
                match self.rx.try_recv() {
                    Ok(job) => layout = self.take(job, &mut pending),
                    Err(_) => break,
                }
            }
            if !pending.is_empty()
                && let Err(e) = self.send(&pending, &mut warned)
            {
                self.stats.failed.add(pending.len() as u64);
                self.socket_failed("sending a batch", &e)?;
            }
            // New sets only once what was filed for the old ones has gone out (pending
            // changes name their set by its place in the old list).
            if let Some(specs) = layout {
                self.relayout(specs);
            }
        }
        let held: usize = self.sets.iter().map(|s| s.mirror.len()).sum();
        log::info!(
            "kernel flow sets: {held} element(s) nfqmark put there stay in the kernel until their \
             timeouts (flows to them keep their marks while nfqmark is stopped)"
        );
        Ok(())
    }

    /// After a netlink error: say so, and start again on a new socket (an error there ends
    /// the thread, and the daemon with it).
    fn socket_failed(&mut self, what: &str, e: &std::io::Error) -> std::io::Result<()> {
        log::warn!("kernel flow sets: {what} failed: {e}; opening a new netlink socket");
        self.sock = NfnlSocket::open()?;
        Ok(())
    }

    /// File one job: a change becomes a pending element (or is counted as having no set); a
    /// new layout is handed back, for the caller to put in force after sending what is pending.
    fn take(&mut self, job: Job, pending: &mut Vec<Pending>) -> Option<Vec<SetSpec>> {
        match job {
            Job::Change(c) => {
                self.file(c, pending);
                None
            }
            Job::Layout(specs) => Some(specs),
        }
    }

    /// File one change as a pending element of its set, or count it as having no set.
    fn file(&mut self, change: Change, pending: &mut Vec<Pending>) {
        let (client, client_mark, addr, target, add, refreshed) = match change {
            Change::Put {
                client,
                client_mark,
                addr,
                target,
                ttl,
                at,
                refreshed,
            } => {
                let left = ttl.saturating_sub(at.elapsed());
                (
                    client,
                    client_mark,
                    addr,
                    target,
                    Some((ttl, left, at)),
                    refreshed,
                )
            }
            Change::Remove {
                client,
                client_mark,
                addr,
                target,
            } => (client, client_mark, addr, target, None, false),
        };
        if Family::of(client) != Family::of(addr) {
            log::debug!("{client} resolved {addr}: another address family, no flow to mark");
            return;
        }
        let family = Family::of(addr);
        let Some(set) = self
            .sets
            .iter()
            .position(|s| s.spec.target == target && s.spec.family == family)
        else {
            // Learned under rules that were replaced since.
            self.stats.no_set.inc();
            return;
        };
        let Some(spec) = self.sets.get(set).map(|s| &s.spec) else {
            return;
        };
        if !self.sets.get(set).is_some_and(|s| s.present) {
            self.stats.no_set.inc();
            return;
        }
        let Some(key) = spec.key(client, client_mark, addr) else {
            return;
        };
        let change = Pending {
            set,
            key,
            add,
            refreshed,
        };
        // The last change of an element in a batch is the one that counts.
        match pending.iter_mut().find(|p| p.set == set && p.key == key) {
            Some(p) => {
                p.refreshed |= change.refreshed;
                p.add = change.add;
            }
            None => pending.push(change),
        }
    }

    /// Use the sets of reloaded rules: those that stay keep what the backend knows of them.
    fn relayout(&mut self, specs: Vec<SetSpec>) {
        let mut old: HashMap<String, Set> = self
            .sets
            .drain(..)
            .map(|s| (s.spec.name.clone(), s))
            .collect();
        let mut missing = Vec::new();
        for spec in specs {
            let here = match present(&mut self.sock, &spec) {
                Ok(h) => h,
                Err(e) => {
                    log::warn!("kernel flow sets: cannot look up set {}: {e}", spec.name);
                    false
                }
            };
            if !here {
                missing.push(spec.name.clone());
            }
            let mirror = old.remove(&spec.name).map(|s| s.mirror).unwrap_or_default();
            self.sets.push(Set {
                spec,
                present: here,
                mirror,
            });
        }
        if missing.is_empty() {
            log::info!(
                "kernel flow sets: {} set(s) for the reloaded rules",
                self.sets.len()
            );
        } else {
            log::warn!(
                "kernel flow sets: the reloaded rules need set(s) {} that table inet {TABLE} lacks: \
                 load `nfqmark setup --rules FILE --flow-table` again (nft -f); until then \
                 their learned addresses mark nothing",
                missing.join(", ")
            );
        }
    }

    /// Send one batch for `pending`; on a refusal, find the elements at fault by sending each
    /// on its own.
    fn send(
        &mut self,
        pending: &[Pending],
        warned: &mut HashMap<i32, Instant>,
    ) -> std::io::Result<()> {
        let reply = self.batch(pending, true)?;
        if reply.applied() {
            self.done(pending);
            return Ok(());
        }
        if self.refresh == Refresh::DeleteThenAdd && reply.errno() == Some(libc::ENOENT) {
            let again = self.batch(pending, false)?;
            if again.applied() {
                self.done(pending);
                return Ok(());
            }
        }
        // One at a time: only the ones the kernel refuses are lost.
        for p in pending {
            let one = std::slice::from_ref(p);
            let mut reply = self.batch(one, true)?;
            if !reply.applied() && self.refresh == Refresh::DeleteThenAdd {
                reply = self.batch(one, false)?;
            }
            if reply.applied() {
                self.done(one);
            } else {
                self.stats.failed.inc();
                let errno = reply.errno().unwrap_or(0);
                if warned.get(&errno).is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    warned.insert(errno, Instant::now());
                    let name = self.sets.get(p.set).map_or("?", |s| s.spec.name.as_str());
                    log::warn!(
                        "kernel flow sets: the kernel refused an element of set {name}: {} \
                         (counted in nfqmark_kernel_flows_total{{outcome=\"failed\"}})",
                        std::io::Error::from_raw_os_error(errno)
                    );
                }
            }
        }
        Ok(())
    }

    fn batch(&mut self, pending: &[Pending], with_removal: bool) -> std::io::Result<BatchReply> {
        let ops = batch_ops(pending, self.refresh, with_removal);
        let sets = &self.sets;
        let set_ops: Vec<SetOp<'_>> = ops
            .iter()
            .filter_map(|(set, op, elements)| {
                Some(SetOp {
                    op: *op,
                    set: sets.get(*set)?.spec.id(),
                    elements,
                })
            })
            .collect();
        self.stats.batches.inc();
        self.sock.set_batch(&set_ops)
    }

    /// Count what an applied batch did and remember its elements.
    fn done(&mut self, pending: &[Pending]) {
        let now = Instant::now();
        for p in pending {
            let Some(set) = self.sets.get_mut(p.set) else {
                continue;
            };
            match p.add {
                Some((_, left, at)) => {
                    set.mirror.insert(p.key, now + left);
                    if p.refreshed {
                        self.stats.refreshed.inc();
                    } else {
                        self.stats.added.inc();
                    }
                    self.stats.record_latency(now.saturating_duration_since(at));
                }
                None => {
                    set.mirror.remove(&p.key);
                    self.stats.removed.inc();
                }
            }
        }
    }

    /// Read every set back: count what the kernel expired, put back what it lost.
    fn readback(&mut self, now: Instant) -> std::io::Result<()> {
        let mut total = 0u64;
        let mut restore = Vec::new();
        for (i, set) in self.sets.iter_mut().enumerate() {
            let id = set.spec.id();
            let elements = match self.sock.set_elements(&id)? {
                Some(e) => e,
                None => {
                    if set.present {
                        log::warn!(
                            "kernel flow sets: set {} is gone from table inet {TABLE}",
                            set.spec.name
                        );
                    }
                    set.present = false;
                    continue;
                }
            };
            if !set.present {
                log::info!("kernel flow sets: set {} is there now", set.spec.name);
            }
            set.present = true;
            total += elements.len() as u64;
            let here: HashSet<Key> = elements.iter().map(|e| e.key).collect();
            let (expired, lost) = reconcile(&mut set.mirror, &here, now, SLACK);
            self.stats.expired.add(expired);
            restore.extend(lost.into_iter().map(|(key, left)| Pending {
                set: i,
                key,
                add: Some((left, left, now)),
                refreshed: false,
            }));
        }
        self.stats.elements.store(total, Ordering::Relaxed);
        if !restore.is_empty() {
            log::warn!(
                "kernel flow sets: {} element(s) were gone before their timeouts (the table \
                 loaded again?); putting them back",
                restore.len()
            );
            for chunk in restore.chunks(MAX_BATCH_ELEMENTS / 2) {
                let reply = self.batch(chunk, false)?;
                if reply.applied() {
                    for p in chunk {
                        if let (Some(set), Some((_, left, _))) = (self.sets.get_mut(p.set), p.add) {
                            set.mirror.insert(p.key, now + left);
                        }
                    }
                    self.stats.restored.add(chunk.len() as u64);
                } else {
                    self.stats.failed.add(chunk.len() as u64);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: FlowTarget = FlowTarget {
        rule: 0,
        mark: (0x20, 0xff),
        by_mark: None,
    };
    const KEYED: FlowTarget = FlowTarget {
        rule: 2,
        mark: (0x1234, 0xff00),
        by_mark: Some(0xf0),
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn sets_are_named_by_rule_mark_and_family() {
        let specs = layout(&[T, KEYED]);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "f1_20_ff_4",
                "f1_20_ff_6",
                "f3_1200_ff00_mf0_4",
                "f3_1200_ff00_mf0_6"
            ]
        );
        assert_eq!(specs[2].nft_type(), "ipv4_addr . ipv4_addr . mark");
        assert_eq!(
            specs[3].nft_lookup(),
            "ip6 saddr . ip6 daddr . meta mark & 0xf0"
        );
        assert_eq!(specs[0].nft_lookup(), "ip saddr . ip daddr");
        assert_eq!(
            specs.iter().map(SetSpec::key_len).collect::<Vec<_>>(),
            [8, 32, 12, 36]
        );
    }

    #[test]
    fn keys_hold_client_address_and_the_keyed_mark_and_read_back() {
        let specs = layout(&[T, KEYED]);
        let (c, d) = (ip("198.18.1.2"), ip("198.18.9.81"));
        let k = specs[0].key(c, 0x77, d).expect("v4");
        assert_eq!(k.as_bytes(), &[198, 18, 1, 2, 198, 18, 9, 81]);
        assert_eq!(specs[0].parse_key(k.as_bytes()), Some((c, 0, d)));
        let k = specs[2].key(c, 0x1ff, d).expect("v4 keyed");
        assert_eq!(&k.as_bytes()[8..], &0xf0u32.to_ne_bytes());
        assert_eq!(specs[2].parse_key(k.as_bytes()), Some((c, 0xf0, d)));
        let (c6, d6) = (ip("2001:db8:1::2"), ip("2001:db8:9::81"));
        let k = specs[3].key(c6, 0x10, d6).expect("v6 keyed");
        assert_eq!(specs[3].parse_key(k.as_bytes()), Some((c6, 0x10, d6)));
        assert_eq!(specs[0].key(c6, 0, d6), None, "v6 pair for a v4 set");
        assert_eq!(specs[1].key(c, 0, d6), None, "mixed families");
        assert_eq!(specs[0].parse_key(&[0; 12]), None, "wrong length");
    }

    fn pending(last: u8, add: bool, refreshed: bool) -> Pending {
        let now = Instant::now();
        Pending {
            set: usize::from(last % 2),
            key: Key::from_bytes(&[198, 18, 1, 2, 198, 18, 9, last]).expect("key"),
            add: add.then_some((Duration::from_secs(60), Duration::from_millis(59_500), now)),
            refreshed,
        }
    }

    #[test]
    fn batches_group_per_set_removals_first_and_refresh_as_the_kernel_needs() {
        let p = [
            pending(1, true, false),
            pending(2, true, true),
            pending(3, false, false),
            pending(4, true, false),
        ];
        let kinds = |ops: &[(usize, Op, Vec<Element>)]| {
            ops.iter()
                .map(|(s, o, v)| (*s, *o, v.len()))
                .collect::<Vec<_>>()
        };
        // Linux >= 6.12: a refresh is a plain add; the eviction a destroy.
        let ops = batch_ops(&p, Refresh::Add, true);
        assert_eq!(
            kinds(&ops),
            [(1, Op::Destroy, 1), (1, Op::Add, 1), (0, Op::Add, 2)]
        );
        let add = &ops[1].2[0];
        assert_eq!(
            (add.timeout_ms, add.expiration_ms),
            (Some(60_000), Some(59_500))
        );
        // Older kernels: the refreshed element is removed first, in the same batch.
        let ops = batch_ops(&p, Refresh::DestroyThenAdd, true);
        assert_eq!(
            kinds(&ops),
            [
                (0, Op::Destroy, 1),
                (1, Op::Destroy, 1),
                (1, Op::Add, 1),
                (0, Op::Add, 2)
            ]
        );
        let ops = batch_ops(&p, Refresh::DeleteThenAdd, false);
        assert_eq!(
            kinds(&ops),
            [(1, Op::Delete, 1), (1, Op::Add, 1), (0, Op::Add, 2)],
            "the retry without the refreshes' deletes"
        );
    }

    #[test]
    fn read_back_tells_expired_from_lost_elements() {
        let now = Instant::now();
        let k = |i: u8| Key::from_bytes(&[i; 8]).expect("key");
        let mut mirror: HashMap<Key, Instant> = [
            (k(1), now - Duration::from_secs(3)), // expired, gone: counted
            (k(2), now + Duration::from_millis(500)), // about to expire, gone: counted
            (k(3), now + Duration::from_secs(30)), // gone 30 s early: lost
            (k(4), now + Duration::from_secs(30)), // there
            (k(5), now - Duration::from_secs(3)), // there although past (late GC): forgotten
        ]
        .into_iter()
        .collect();
        let here: HashSet<Key> = [k(4), k(5)].into_iter().collect();
        let (expired, lost) = reconcile(&mut mirror, &here, now, SLACK);
        assert_eq!(expired, 2);
        assert_eq!(lost, vec![(k(3), Duration::from_secs(30))]);
        let mut kept: Vec<Key> = mirror.keys().copied().collect();
        kept.sort();
        assert_eq!(kept, vec![k(3), k(4)]);
    }

    #[test]
    fn latency_lands_in_its_bucket() {
        let s = Stats::default();
        s.record_latency(Duration::from_micros(40));
        s.record_latency(Duration::from_micros(700));
        s.record_latency(Duration::from_secs(5));
        let snap = s.snapshot();
        assert_eq!(snap.latency[0], 1);
        assert_eq!(snap.latency[4], 1, "<= 1 ms");
        assert_eq!(snap.latency[LATENCY_BUCKETS_US.len()], 1, "past the last");
        assert_eq!(snap.latency_sum_us, 5_000_740);
    }
}
