//! One loop per queue: receive, decide, verdict; and the state all loops share.
//!
//! This module owns the rule that every packet gets exactly one verdict. Whatever the engine
//! says, and whatever fails, the packet received here leaves through [`Queue::verdict`] before
//! the next one is read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, TryLockError};
use std::time::{Duration, Instant};

use crate::engine::{self, Decision, EngineConfig, Tables};
use crate::flows::LearnConfig;
use crate::queue::{self, Item, Queue, Served};
use crate::rules::RuleSet;
use crate::stats::{Counter, Stats};
use crate::types::{Meta, Verdict, apply_mask};

/// A rule set in force, with its per-rule counters (which start again at a reload).
#[derive(Debug)]
pub struct Loaded {
    pub rules: RuleSet,
    /// Packets each rule matched.
    pub matches: Vec<Counter>,
    /// Marks each rule set (the packet's mark changed).
    pub marks: Vec<Counter>,
}

impl Loaded {
    pub fn new(rules: RuleSet) -> Loaded {
        let n = rules.len();
        Loaded {
            rules,
            matches: (0..n).map(|_| Counter::default()).collect(),
            marks: (0..n).map(|_| Counter::default()).collect(),
        }
    }
}

/// Counters of one queue.
#[derive(Debug, Default)]
pub struct QueueStats {
    pub num: u16,
    pub stats: Stats,
}

/// State shared by all workers: pairing spans queues, so a client query seen on queue 0 pairs
/// with its upstream query seen on queue 2.
#[derive(Debug)]
pub struct Shared {
    pub config: EngineConfig,
    loaded: RwLock<Arc<Loaded>>,
    /// Bumped on every reload so workers pick up the new rules without a lock per packet.
    generation: AtomicU64,
    /// Pairing and learned flows, behind one lock taken only for [`engine::apply`].
    pub tables: Mutex<Tables>,
    pub queues: Vec<QueueStats>,
    pub reloads_ok: Counter,
    pub reloads_failed: Counter,
    /// Packets the kernel let past nfqmark's queues (fail-open, bypass), from the queue
    /// rules' counters (see [`crate::bypass`]).
    pub bypassed: Counter,
    /// Whether those counters can be read (nfqmark's rules found, permission to read them).
    pub bypass_known: AtomicBool,
    /// Set to ask the workers to finish.
    pub stop: AtomicBool,
    /// The kernel backend of flow rules, when it runs: learned entries are handed to it.
    pub kernel_flows: OnceLock<crate::kernel_flows::Handle>,
    /// Connection marks over ctnetlink, when the kernel answers it: marked first packets are
    /// handed to it.
    pub ct_marks: OnceLock<crate::ctmark::Handle>,
}

/// Lock a mutex, carrying on with the data if a panicking thread poisoned it: counters and
/// tables stay usable, and the packet path must never stop on a poisoned lock.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// [`lock`], counting in `waits` each time another thread held it.
fn lock_counted<'a, T>(m: &'a Mutex<T>, waits: &Counter) -> MutexGuard<'a, T> {
    match m.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => {
            waits.inc();
            lock(m)
        }
    }
}

impl Shared {
    pub fn new(config: EngineConfig, learn: LearnConfig, rules: RuleSet, queues: &[u16]) -> Shared {
        let tables = Tables::new(&config, learn);
        Shared {
            config,
            loaded: RwLock::new(Arc::new(Loaded::new(rules))),
            generation: AtomicU64::new(0),
            tables: Mutex::new(tables),
            queues: queues
                .iter()
                .map(|&num| QueueStats {
                    num,
                    stats: Stats::default(),
                })
                .collect(),
            reloads_ok: Counter::default(),
            reloads_failed: Counter::default(),
            bypassed: Counter::default(),
            bypass_known: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            kernel_flows: OnceLock::new(),
            ct_marks: OnceLock::new(),
        }
    }

    /// Put new rules in force. Packets already being decided finish with the old ones; the next
    /// packet on every queue sees the new ones. No packet waits for this.
    pub fn replace_rules(&self, rules: RuleSet) {
        let loaded = Arc::new(Loaded::new(rules));
        match self.loaded.write() {
            Ok(mut slot) => *slot = loaded,
            Err(poisoned) => *poisoned.into_inner() = loaded,
        }
        self.generation.fetch_add(1, Ordering::Release);
        self.reloads_ok.inc();
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<Loaded> {
        match self.loaded.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn current(&self) -> (u64, Arc<Loaded>) {
        let generation = self.generation.load(Ordering::Acquire);
        (generation, self.rules())
    }

    /// Hand what the learned table changed to the kernel backend (no-op without it).
    fn drain_learned(&self) {
        if let Some(kernel) = self.kernel_flows.get() {
            lock(&self.tables)
                .learned
                .take_changes(|change| kernel.offer(change));
        }
    }
}

/// How long a worker waits for packets before it looks at the stop flag again.
const POLL: Duration = Duration::from_millis(100);
/// Longest a stopping worker spends giving verdicts to what is still queued.
const DRAIN: Duration = Duration::from_millis(500);

/// Serve one queue until asked to stop or the socket fails for good, then stop cleanly: stop
/// taking new packets, give every queued packet its verdict, unbind. `index` is the queue's
/// place in [`Shared::queues`]. `Ok` when asked to stop; the error that ended the loop
/// otherwise (the caller treats that as fatal: the queue is no longer served).
pub fn run(mut queue: Queue, shared: Arc<Shared>, index: usize) -> std::io::Result<()> {
    let Some(stats) = shared.queues.get(index).map(|q| &q.stats) else {
        return Err(std::io::Error::other("no counters for this queue (bug)"));
    };
    let num = queue.num();
    let mut loaded = shared.rules();
    let mut generation = shared.generation.load(Ordering::Acquire);
    let mut ended = Ok(());
    log::info!("queue {num}: serving");
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.generation.load(Ordering::Acquire) != generation {
            (generation, loaded) = shared.current();
        }
        if let Err(e) = serve_once(&mut queue, &shared, stats, &loaded, POLL) {
            ended = Err(e);
            break;
        }
    }
    if let Err(e) = queue.stop_taking() {
        log::warn!("queue {num}: could not stop the kernel queueing: {e}");
    }
    let deadline = Instant::now() + DRAIN;
    while Instant::now() < deadline {
        match queue.serve(Duration::from_millis(20), |item| {
            decide_item(item, &shared, stats, &loaded)
        }) {
            Ok(served) if served.handled == 0 => break,
            Ok(served) => count_verdict_errors(num, stats, &served),
            Err(_) => break,
        }
    }
    if let Err(e) = queue.unbind() {
        log::warn!("queue {num}: unbind failed: {e}");
    }
    log::info!("queue {num}: stopped");
    ended
}

/// One receive-and-verdict round. An error when the socket failed for good.
fn serve_once(
    queue: &mut Queue,
    shared: &Shared,
    stats: &Stats,
    loaded: &Loaded,
    wait: Duration,
) -> std::io::Result<()> {
    let num = queue.num();
    #[cfg(debug_assertions)]
    if let Some(e) = crate::fault::recv_error(num, stats.packets.get()) {
        return receive_error(num, stats, e);
    }
    match queue.serve(wait, |item| decide_item(item, shared, stats, loaded)) {
        Ok(served) => {
            count_verdict_errors(num, stats, &served);
            Ok(())
        }
        Err(e) => receive_error(num, stats, e),
    }
}

/// Count a receive error; the error back when the socket failed for good.
fn receive_error(num: u16, stats: &Stats, e: std::io::Error) -> std::io::Result<()> {
    stats.recv_errors.inc();
    match e.raw_os_error() {
        Some(libc::ENOBUFS) => {
            stats.enobufs.inc();
            log::warn!(
                "queue {num}: receive buffer overflowed (ENOBUFS); the kernel dropped or, \
                 fail-open, accepted packets unmarked (raise --rcvbuf or add queues)"
            );
            Ok(())
        }
        Some(libc::EINTR) | Some(libc::EAGAIN) => Ok(()),
        _ => {
            log::error!("queue {num}: receive failed: {e}");
            Err(e)
        }
    }
}

fn count_verdict_errors(num: u16, stats: &Stats, served: &Served) {
    if served.verdict_errors > 0 {
        stats.verdict_errors.add(served.verdict_errors as u64);
        if let Some(e) = &served.last_error {
            log::warn!(
                "queue {num}: {} verdict(s) refused: {e}",
                served.verdict_errors
            );
        }
    }
}

/// The verdict and mark for one received item. Unreadable messages get the rules' default
/// verdict and mark.
fn decide_item(
    item: Item<'_>,
    shared: &Shared,
    stats: &Stats,
    loaded: &Loaded,
) -> (Verdict, Option<u32>) {
    let (meta, payload) = match item {
        Item::Packet(msg) => (queue::meta(&msg), msg.payload),
        Item::Unreadable(e) => {
            stats.packets.inc();
            stats.parse_errors.inc();
            log::debug!("unreadable queue message: {e}");
            let d = loaded.rules.default_outcome();
            stats.count_verdict(d.verdict);
            // The message's mark is unknown, so only a mark that owns every bit can be set.
            let mark = d
                .set_mark
                .filter(|&(_, mask)| mask == u32::MAX)
                .map(|(value, mask)| apply_mask(0, value, mask));
            return (d.verdict, mark);
        }
    };
    let decision = decide(shared, stats, loaded, &meta, payload);
    count(stats, loaded, &decision);
    log::trace!(
        "{:?} mark {:#x} -> {:?} {:?} {:?}",
        meta.hook,
        meta.mark,
        decision.verdict,
        decision.mark,
        decision.role
    );
    (decision.verdict, decision.mark)
}

/// Plan outside the lock, apply under it, finish outside it. The clock read for `now` starts
/// the decision's time; for one packet in [`crate::stats::DECISION_SAMPLE`] a second read ends
/// it, into the decision-time histogram. What an answer taught the learned table goes to the
/// kernel backend after.
fn decide(
    shared: &Shared,
    stats: &Stats,
    loaded: &Loaded,
    meta: &Meta,
    payload: &[u8],
) -> Decision {
    let now = Instant::now();
    let decision = decide_locked(
        &shared.config,
        &loaded.rules,
        &shared.tables,
        &stats.lock_waits,
        meta,
        payload,
        now,
    );
    stats.decision_time.sampled_since(now);
    if decision.learned > 0 {
        shared.drain_learned();
    }
    // A connection's first packet that nfqmark marked: its connection gets the mark too.
    if let (Some(mark), Some(ct)) = (decision.mark, shared.ct_marks.get())
        && matches!(
            decision.role,
            engine::Role::FlowMarked | engine::Role::TcpOpen { paired: true }
        )
    {
        ct.offer(payload, mark);
    }
    decision
}

/// The engine's three steps with the tables behind a lock: plan and finish outside it, the
/// lock held only for [`engine::apply`], and not taken at all when the packet needs no step;
/// `waits` counts the times another worker held it. (The benchmark of the decision path calls
/// this too.)
pub fn decide_locked(
    config: &EngineConfig,
    rules: &RuleSet,
    tables: &Mutex<Tables>,
    waits: &Counter,
    meta: &Meta,
    payload: &[u8],
    now: Instant,
) -> Decision {
    let plan = engine::plan(config, rules, meta, payload);
    let applied = if plan.step == engine::Step::None
        && plan.answer.is_none()
        && plan.conn.is_none()
        && plan.segment.is_none()
    {
        engine::Applied::NOTHING
    } else {
        let mut applied = engine::apply(&plan, rules, &mut lock_counted(tables, waits), meta, now);
        if !applied.syn_candidates.is_empty() {
            // Off the lock: ask the kernel which waiting client the resolver's process serves.
            let chosen = syn_owner(&plan, &applied.syn_candidates);
            engine::settle_syn(
                &plan,
                &mut lock_counted(tables, waits),
                &mut applied,
                chosen,
                now,
            );
        }
        applied
    };
    engine::finish(meta, &plan, &applied, config.pairing.mask)
}

thread_local! {
    /// This worker's sock_diag socket, opened on first need; `None` once it failed to open.
    static SOCKDIAG: std::cell::RefCell<Option<Option<crate::sockdiag::Resolver>>> =
        const { std::cell::RefCell::new(None) };
}

/// Which waiting client's TCP connection is held by the process that sends this SYN (a
/// forking resolver such as dnsmasq serves each client from its own process); `None` when the
/// kernel cannot say (one process serving every client, a socket gone, no permission).
fn syn_owner(
    plan: &engine::Plan<'_>,
    candidates: &[crate::pairing::TcpCandidate],
) -> Option<crate::pairing::Id> {
    let engine::Step::TcpOpen { conn } = plan.step else {
        return None;
    };
    let ends: Vec<crate::sockdiag::Ends> = candidates
        .iter()
        .map(|c| (c.client.local, c.client.remote))
        .collect();
    SOCKDIAG.with(|cell| {
        let mut slot = cell.borrow_mut();
        let resolver = slot.get_or_insert_with(|| match crate::sockdiag::Resolver::new() {
            Ok(r) => Some(r),
            Err(e) => {
                log::warn!(
                    "sock_diag unavailable ({e}): the resolver's TCP connections are matched \
                     to clients by timing alone"
                );
                None
            }
        });
        let r = resolver.as_mut()?;
        match r.same_process((conn.local, conn.remote), &ends) {
            Ok(link) => {
                if link.index().is_none() {
                    log::debug!(
                        "SYN {} -> {}: {link:?} {:?} candidates {:?}",
                        conn.local,
                        conn.remote,
                        r.stats(),
                        ends
                    );
                }
                link.index()
                    .and_then(|i| candidates.get(i))
                    .map(|c| c.intent)
            }
            Err(e) => {
                log::debug!("sock_diag: {e}");
                None
            }
        }
    })
}

/// Every counter a decision moves.
fn count(stats: &Stats, loaded: &Loaded, decision: &Decision) {
    stats.count(decision);
    if let Some(rule) = decision.rule {
        if let Some(c) = loaded.matches.get(rule) {
            c.inc();
        }
        if decision.mark.is_some()
            && let Some(c) = loaded.marks.get(rule)
        {
            c.inc();
        }
    }
    if decision.conflicts > 0 {
        log::debug!(
            "{:?}: pairing wanted another mark than the connection's; kept the connection's",
            decision.role
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_recovered_with_its_data() {
        let m = Mutex::new(7);
        std::thread::scope(|s| {
            let _ = s
                .spawn(|| {
                    let _guard = m.lock();
                    panic!("poison the lock (expected in this test)");
                })
                .join();
        });
        assert!(m.is_poisoned());
        assert_eq!(*lock(&m), 7);
    }

    #[test]
    fn a_lock_held_by_another_worker_is_counted_as_a_wait() {
        let m = Mutex::new(0u32);
        let waits = Counter::default();
        *lock_counted(&m, &waits) += 1;
        assert_eq!(waits.get(), 0, "an uncontended lock is no wait");
        let held = lock(&m);
        std::thread::scope(|s| {
            let other = s.spawn(|| *lock_counted(&m, &waits) += 1);
            // The other worker finds the lock held, counts it, and waits for it.
            while waits.get() == 0 && !other.is_finished() {
                std::thread::yield_now();
            }
            drop(held);
            let _ = other.join();
        });
        assert_eq!(waits.get(), 1);
        assert_eq!(*lock(&m), 2);
    }
}
