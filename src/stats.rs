//! Counters: cheap to bump from any worker, read for logs and metrics.
//!
//! Every hot-path outcome that is not a decision of its own (a packet we could not parse, a
//! verdict the kernel refused) ends here, so an operator can see it without a debug log. The
//! decision-time histogram ([`DecisionTimes`]) lives here too: the worker records into it, the
//! metrics page reads it. This module takes no lock; it reads the clock only to end a sampled
//! decision's time.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    /// Decisions that waited for the shared tables' lock because another queue's worker held
    /// it (with one queue, always 0): how much `--queue A-B` workers serialize.
    pub lock_waits: Counter,
    /// Time the decision took, for a random sample of the packets.
    pub decision_time: DecisionTimes,
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

/// Upper bounds of the decision-time buckets, in nanoseconds (the last bucket, `+Inf`, is
/// implicit). A decision takes 150-300 ns without contention (benches/README.md); the upper
/// buckets catch a wait for the tables' lock and a preempted worker.
pub const DECISION_BOUNDS_NS: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// One packet in this many (on average, chosen at random) has its decision timed: a clock read
/// costs about as much as a tenth of the decision (21 ns on the development VM), so timing every
/// packet would add that to each; sampled, it adds under 2 ns per packet.
pub const DECISION_SAMPLE: u32 = 16;

/// A histogram of decision times, written by one queue's worker and read by the metrics page.
///
/// One writer: the counts are bumped with a load and a store (no locked instruction), so a
/// second writer would lose counts, never corrupt memory. Which packets are timed is decided
/// by a xorshift generator, not a packet count, so periodic traffic (the four packets of each
/// DNS resolution) is not sampled always at the same step.
#[derive(Debug)]
pub struct DecisionTimes {
    buckets: [AtomicU64; DECISION_BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
    rng: AtomicU32,
}

impl Default for DecisionTimes {
    fn default() -> Self {
        DecisionTimes {
            buckets: Default::default(),
            sum_ns: AtomicU64::new(0),
            rng: AtomicU32::new(0x9e37_79b9),
        }
    }
}

/// [`DecisionTimes`] copied out: counts per bucket (not cumulative), the sum of the times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecisionTimesSnapshot {
    pub buckets: [u64; DECISION_BOUNDS_NS.len() + 1],
    pub sum_ns: u64,
}

impl DecisionTimesSnapshot {
    /// Packets timed.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Bucket by bucket sum (several queues).
    pub fn add(&mut self, other: &DecisionTimesSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
    }
}

/// Add one with a plain load and store: for counters with a single writer.
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl DecisionTimes {
    /// Whether to time this packet: true for one packet in [`DECISION_SAMPLE`], at random.
    #[inline]
    pub fn sample(&self) -> bool {
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng.store(x, Ordering::Relaxed);
        x.is_multiple_of(DECISION_SAMPLE)
    }

    /// What the worker does after each decision that started at `start` (its `now`): for one
    /// packet in [`DECISION_SAMPLE`], read the clock and record the time taken.
    #[inline]
    pub fn sampled_since(&self, start: Instant) {
        if self.sample() {
            self.observe(start.elapsed());
        }
    }

    /// Record one decision's time.
    #[inline]
    pub fn observe(&self, took: Duration) {
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let i = DECISION_BOUNDS_NS.iter().filter(|&&b| ns > b).count();
        if let Some(b) = self.buckets.get(i) {
            bump(b, 1);
        }
        bump(&self.sum_ns, ns);
    }

    pub fn snapshot(&self) -> DecisionTimesSnapshot {
        let mut s = DecisionTimesSnapshot {
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            ..DecisionTimesSnapshot::default()
        };
        for (out, b) in s.buckets.iter_mut().zip(self.buckets.iter()) {
            *out = b.load(Ordering::Relaxed);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_times_fall_in_the_bucket_whose_bound_they_do_not_exceed() {
        let h = DecisionTimes::default();
        for ns in [0, 100, 101, 250, 999, 1_000_000, 1_000_001, u64::MAX] {
            h.observe(Duration::from_nanos(ns));
        }
        h.observe(Duration::MAX);
        let s = h.snapshot();
        assert_eq!(s.count(), 9);
        assert_eq!(s.buckets[0], 2, "0 and 100 ns: le=100ns");
        assert_eq!(s.buckets[1], 2, "101 and 250 ns");
        assert_eq!(s.buckets[3], 1, "999 ns");
        assert_eq!(s.buckets[11], 1, "exactly 1 ms");
        assert_eq!(s.buckets[12], 3, "past 1 ms, and beyond u64 nanoseconds");
        let mut twice = s;
        twice.add(&s);
        assert_eq!(twice.count(), 18);
    }

    #[test]
    fn about_one_packet_in_sample_is_timed_and_not_periodically() {
        let h = DecisionTimes::default();
        let n = 160_000u32;
        // Per position in a cycle of four packets (one DNS resolution).
        let mut by_step = [0u32; 4];
        for i in 0..n {
            if h.sample() {
                by_step[(i % 4) as usize] += 1;
            }
        }
        let total: u32 = by_step.iter().sum();
        let expected = n / DECISION_SAMPLE;
        assert!(
            total > expected * 9 / 10 && total < expected * 11 / 10,
            "{total} timed, expected about {expected}"
        );
        for (step, &k) in by_step.iter().enumerate() {
            assert!(
                k > expected / 4 * 8 / 10,
                "step {step} of each cycle timed {k} times: {by_step:?}"
            );
        }
    }
}
