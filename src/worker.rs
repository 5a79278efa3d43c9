//! One loop per queue: receive, decide, verdict; and the state all loops share.
//!
//! This module owns the rule that every packet gets exactly one verdict. Whatever the engine
//! says, and whatever fails, the packet received here leaves through [`Queue::verdict`] before
//! the next one is read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use crate::engine::{self, EngineConfig};
use crate::flows::{LearnConfig, Learned};
use crate::metrics::{KernelQueue, QueueSnapshot, RuleSnapshot, Snapshot};
use crate::pairing::Pairing;
use crate::queue::{self, Item, Queue, Served};
use crate::rules::RuleSet;
use crate::stats::{Counter, Stats};
use crate::types::Verdict;

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
    pub pairing: Mutex<Pairing>,
    pub learned: Mutex<Learned>,
    pub queues: Vec<QueueStats>,
    pub reloads_ok: Counter,
    pub reloads_failed: Counter,
    /// Set to ask the workers to finish.
    pub stop: AtomicBool,
}

/// Lock a mutex, carrying on with the data if a panicking thread poisoned it: counters and
/// tables stay usable, and the packet path must never stop on a poisoned lock.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    pub fn new(config: EngineConfig, learn: LearnConfig, rules: RuleSet, queues: &[u16]) -> Shared {
        let pairing = Pairing::new(config.pairing);
        Shared {
            config,
            loaded: RwLock::new(Arc::new(Loaded::new(rules))),
            generation: AtomicU64::new(0),
            pairing: Mutex::new(pairing),
            learned: Mutex::new(Learned::new(learn)),
            queues: queues
                .iter()
                .map(|&num| QueueStats {
                    num,
                    stats: Stats::default(),
                })
                .collect(),
            reloads_ok: Counter::default(),
            reloads_failed: Counter::default(),
            stop: AtomicBool::new(false),
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

    /// Everything the metrics page and the counter log line show.
    pub fn snapshot(&self) -> Snapshot {
        let (pairing, waiting_clients, waiting_upstream) = {
            let t = lock(&self.pairing);
            (t.counters, t.client_len(), t.upstream_len())
        };
        let (learned, learned_entries) = {
            let l = lock(&self.learned);
            (l.counters, l.len())
        };
        let loaded = self.rules();
        let rules = (0..loaded.rules.len())
            .map(|i| RuleSnapshot {
                rule: loaded
                    .rules
                    .describe(i)
                    .unwrap_or_else(|| format!("rule {i}")),
                matches: loaded.matches.get(i).map_or(0, Counter::get),
                marks: loaded.marks.get(i).map_or(0, Counter::get),
            })
            .collect();
        let ours: Vec<u16> = self.queues.iter().map(|q| q.num).collect();
        let kernel: Vec<KernelQueue> =
            std::fs::read_to_string("/proc/net/netfilter/nfnetlink_queue")
                .map(|t| crate::metrics::parse_proc_queues(&t))
                .unwrap_or_default()
                .into_iter()
                .filter(|k| ours.contains(&k.num))
                .collect();
        Snapshot {
            queues: self
                .queues
                .iter()
                .map(|q| QueueSnapshot::of(q.num, &q.stats))
                .collect(),
            kernel,
            pairing,
            waiting_clients,
            waiting_upstream,
            learned,
            learned_entries,
            rules,
            rules_loaded: loaded.rules.len(),
            reloads_ok: self.reloads_ok.get(),
            reloads_failed: self.reloads_failed.get(),
        }
    }
}

/// How long a worker waits for packets before it looks at the stop flag again.
const POLL: Duration = Duration::from_millis(100);
/// Longest a stopping worker spends giving verdicts to what is still queued.
const DRAIN: Duration = Duration::from_millis(500);

/// Serve one queue until asked to stop or the socket fails for good, then stop cleanly: stop
/// taking new packets, give every queued packet its verdict, unbind. `index` is the queue's
/// place in [`Shared::queues`].
pub fn run(mut queue: Queue, shared: Arc<Shared>, index: usize) {
    let Some(stats) = shared.queues.get(index).map(|q| &q.stats) else {
        log::error!("queue {}: no counters (bug); not serving", queue.num());
        return;
    };
    let num = queue.num();
    let mut loaded = shared.rules();
    let mut generation = shared.generation.load(Ordering::Acquire);
    log::info!("queue {num}: serving");
    while !shared.stop.load(Ordering::Relaxed) {
        if shared.generation.load(Ordering::Acquire) != generation {
            (generation, loaded) = shared.current();
        }
        if !serve_once(&mut queue, &shared, stats, &loaded, POLL) {
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
}

/// One receive-and-verdict round. False when the socket failed for good.
fn serve_once(
    queue: &mut Queue,
    shared: &Shared,
    stats: &Stats,
    loaded: &Loaded,
    wait: Duration,
) -> bool {
    let num = queue.num();
    match queue.serve(wait, |item| decide_item(item, shared, stats, loaded)) {
        Ok(served) => {
            count_verdict_errors(num, stats, &served);
            true
        }
        Err(e) => receive_error(num, stats, &e),
    }
}

/// Count a receive error; false when the socket failed for good.
fn receive_error(num: u16, stats: &Stats, e: &std::io::Error) -> bool {
    stats.recv_errors.inc();
    match e.raw_os_error() {
        Some(libc::ENOBUFS) => {
            stats.enobufs.inc();
            log::warn!(
                "queue {num}: receive buffer overflowed (ENOBUFS); the kernel dropped or, \
                 fail-open, accepted packets unmarked (raise --rcvbuf or add queues)"
            );
            true
        }
        Some(libc::EINTR) | Some(libc::EAGAIN) => true,
        _ => {
            log::error!("queue {num}: receive failed: {e}");
            false
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

/// The verdict and mark for one received item. Unreadable messages get the rules' default.
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
            stats.accepted.inc();
            return (d.verdict, None);
        }
    };
    let decision = engine::decide_with_flows(
        &shared.config,
        &loaded.rules,
        &shared.pairing,
        Some(&shared.learned),
        stats,
        &meta,
        payload,
        Instant::now(),
    );
    match decision.verdict {
        Verdict::Accept => stats.accepted.inc(),
        Verdict::Drop => stats.dropped.inc(),
        Verdict::Repeat => stats.repeated.inc(),
    }
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
    if decision.mark.is_some() {
        stats.marked.inc();
    }
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
