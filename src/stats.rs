//! Counters: cheap to bump from any worker, read for logs and metrics.
//!
//! Every hot-path outcome that is not a decision of its own (a packet we could not parse, a
//! verdict the kernel refused) ends here, so an operator can see it without a debug log.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::engine::{Class, Decision};
use crate::types::Verdict;

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
    /// Queries with a wrong transport checksum (the socket drops them): recorded nowhere.
    pub bad_checksums: Counter,
    /// Packets of a connection that pairing would have given another mark than the
    /// connection's; the connection's was kept (a connection reused for another client).
    pub conn_conflicts: Counter,
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

impl Stats {
    /// Count one verdict.
    pub fn count_verdict(&self, verdict: Verdict) {
        match verdict {
            Verdict::Accept => self.accepted.inc(),
            Verdict::Drop => self.dropped.inc(),
            Verdict::Repeat => self.repeated.inc(),
        }
    }

    /// Count one decided packet: what was read, the verdict, whether the mark changed.
    pub fn count(&self, decision: &Decision) {
        self.packets.inc();
        match decision.class {
            Class::Unparsed => self.parse_errors.inc(),
            Class::NotDns => self.not_dns.inc(),
            Class::Dns => self.dns.inc(),
            Class::DnsError => self.dns_errors.inc(),
            Class::BadChecksum => {
                self.dns.inc();
                self.bad_checksums.inc();
            }
        }
        self.count_verdict(decision.verdict);
        if decision.mark.is_some() {
            self.marked.inc();
        }
        if decision.conflicts > 0 {
            self.conn_conflicts.add(u64::from(decision.conflicts));
        }
        if decision.learned > 0 {
            self.flows_learned.add(u64::from(decision.learned));
        }
    }
}
