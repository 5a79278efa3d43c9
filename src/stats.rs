//! Counters: cheap to bump from any worker, read for logs and metrics.
//!
//! Every hot-path outcome that is not a decision of its own (a packet we could not parse, a
//! verdict the kernel refused) ends here, so an operator can see it without a debug log.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter shared between threads.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Process-wide packet counters. Pairing outcomes live with the pairing table.
#[derive(Debug, Default)]
pub struct Stats {
    /// Packets decided.
    pub packets: Counter,
    /// Packets whose IP or transport header could not be read (accepted by default).
    pub parse_errors: Counter,
    /// Packets not to or from a DNS port, or without a payload to read.
    pub not_dns: Counter,
    /// DNS messages read.
    pub dns: Counter,
    /// Payloads on a DNS port that are not a DNS message we can read.
    pub dns_errors: Counter,
    /// Verdicts given, by kind.
    pub accepted: Counter,
    pub dropped: Counter,
    pub repeated: Counter,
    /// Packets whose mark we changed.
    pub marked: Counter,
    /// Addresses learned from DNS answers for flow rules.
    pub flows_learned: Counter,
    /// Verdicts the kernel would not take (the packet then waits for the queue's timeout).
    pub verdict_errors: Counter,
    /// Receive errors, ENOBUFS (the socket buffer overflowed and the kernel dropped packets
    /// or, with fail-open, accepted them unmarked) among them.
    pub recv_errors: Counter,
    pub enobufs: Counter,
}
