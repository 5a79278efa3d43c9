//! One loop per queue: receive, decide, verdict.
//!
//! This module owns the rule that every packet gets exactly one verdict. Whatever the engine
//! says, and whatever fails, the packet received here leaves through [`Queue::verdict`] before
//! the next one is read.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use crate::engine::{self, EngineConfig, Verdict};
use crate::pairing::Pairing;
use crate::queue::Queue;
use crate::rules::RuleSet;
use crate::stats::Stats;

/// State shared by all workers: pairing spans queues, so a client query seen on queue 0 pairs
/// with its upstream query seen on queue 2.
#[derive(Debug)]
pub struct Shared {
    pub config: EngineConfig,
    rules: RwLock<Arc<RuleSet>>,
    /// Bumped on every reload so workers pick up the new rules without taking a lock per packet.
    rules_generation: AtomicU64,
    pub pairing: Mutex<Pairing>,
    pub stats: Stats,
    /// Set to ask the workers to finish.
    pub stop: AtomicBool,
}

impl Shared {
    pub fn new(config: EngineConfig, rules: RuleSet) -> Shared {
        let pairing = Pairing::new(config.pairing);
        Shared {
            config,
            rules: RwLock::new(Arc::new(rules)),
            rules_generation: AtomicU64::new(0),
            pairing: Mutex::new(pairing),
            stats: Stats::default(),
            stop: AtomicBool::new(false),
        }
    }

    /// Put new rules in force. Packets already being decided finish with the old ones; the next
    /// packet on every queue sees the new ones.
    pub fn replace_rules(&self, rules: RuleSet) {
        if let Ok(mut slot) = self.rules.write() {
            *slot = Arc::new(rules);
            self.rules_generation.fetch_add(1, Ordering::Release);
        }
    }

    fn current_rules(&self) -> (u64, Arc<RuleSet>) {
        let generation = self.rules_generation.load(Ordering::Acquire);
        let rules = match self.rules.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        (generation, rules)
    }
}

/// Serve one queue until asked to stop or the socket fails for good.
pub fn run(mut queue: Queue, shared: Arc<Shared>) {
    let (mut generation, mut rules) = shared.current_rules();
    let stats = &shared.stats;
    log::info!("queue {}: serving", queue.num());
    while !shared.stop.load(Ordering::Relaxed) {
        let packet = match queue.recv() {
            Ok(p) => p,
            Err(e) => {
                stats.recv_errors.inc();
                if e.raw_os_error() == Some(libc::ENOBUFS) {
                    stats.enobufs.inc();
                    log::warn!(
                        "queue {}: receive buffer overflowed (ENOBUFS); packets were lost to \
                         the queue's full policy",
                        queue.num()
                    );
                    continue;
                }
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("queue {}: receive failed: {e}", queue.num());
                break;
            }
        };
        if shared.rules_generation.load(Ordering::Acquire) != generation {
            (generation, rules) = shared.current_rules();
        }
        let meta = packet.meta();
        let decision = engine::decide(
            &shared.config,
            &rules,
            &shared.pairing,
            stats,
            &meta,
            packet.payload(),
            Instant::now(),
        );
        match decision.verdict {
            Verdict::Accept => stats.accepted.inc(),
            Verdict::Drop => stats.dropped.inc(),
            Verdict::Repeat => stats.repeated.inc(),
        }
        if decision.mark.is_some() {
            stats.marked.inc();
        }
        log::debug!(
            "queue {} {:?} mark {:#x} -> {:?} {:?} {:?}",
            queue.num(),
            meta.hook,
            meta.mark,
            decision.verdict,
            decision.mark,
            decision.role
        );
        if let Err(e) = queue.verdict(packet, decision.verdict, decision.mark) {
            stats.verdict_errors.inc();
            log::warn!("queue {}: verdict failed: {e}", queue.num());
        }
    }
    log::info!("queue {}: stopped", queue.num());
}
