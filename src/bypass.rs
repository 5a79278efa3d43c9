//! Packets the kernel let past nfqmark: counted from the NFQUEUE rules' own counters.
//!
//! The kernel keeps no count of the packets it accepts without queueing them (fail-open when
//! the queue is full, `--queue-bypass` when nobody listens): they get no id and no line in
//! /proc. But every packet that reaches one of nfqmark's NFQUEUE rules (tagged `--comment
//! nfqmark` by `nfqmark setup`) is counted by that rule, queued or not. So, from the moment
//! nfqmark starts: packets the rules saw, minus packets nfqmark received, minus those still
//! waiting in the queue, were let past. This module owns that arithmetic (pure, no I/O); the
//! daemon samples the counters on a thread of its own.

/// The running count of packets let past nfqmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Meter {
    /// Rule packets and received packets at the first sample (or after the rules' counters
    /// were reset, e.g. by reinstalling the rules).
    base: Option<(u64, u64)>,
    /// The count when the counters were last reset: what follows adds to it.
    carried: u64,
    /// The highest count seen: packets queued but not yet received are not counted, and the
    /// count never goes back.
    total: u64,
}

impl Meter {
    /// Take one sample: `rule_packets` counted by nfqmark's queue rules for its queues,
    /// `received` the packets nfqmark has received on them (decided or unreadable), `waiting`
    /// those in the kernel queue now. Returns how many more were let past since the last
    /// sample.
    pub fn sample(&mut self, rule_packets: u64, received: u64, waiting: u64) -> u64 {
        let (base_rules, base_received) = match self.base {
            Some((r, got)) if rule_packets >= r => (r, got),
            // First sample, or the counters went backwards (rules reinstalled): start again.
            _ => {
                let base = (rule_packets, received);
                self.base = Some(base);
                self.carried = self.total;
                base
            }
        };
        let seen = rule_packets - base_rules;
        let got = received.saturating_sub(base_received);
        let past = self
            .carried
            .saturating_add(seen.saturating_sub(got).saturating_sub(waiting));
        let more = past.saturating_sub(self.total);
        self.total = self.total.max(past);
        more
    }

    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_the_rules_saw_and_nfqmark_did_not_receive() {
        let mut m = Meter::default();
        // At start, the rules have counted 1,000 packets over their life: not ours to judge.
        assert_eq!(m.sample(1000, 0, 0), 0);
        assert_eq!(m.sample(1100, 100, 0), 0);
        // 50 more reached the rules; 30 were received, 5 still wait: 15 were let past.
        assert_eq!(m.sample(1150, 130, 5), 15);
        assert_eq!(m.total(), 15);
        // The 5 arrive: nothing new, and the count never goes back.
        assert_eq!(m.sample(1150, 135, 0), 0);
        assert_eq!(m.total(), 15);
    }

    #[test]
    fn reinstalled_rules_start_the_count_again() {
        let mut m = Meter::default();
        m.sample(500, 0, 0);
        assert_eq!(m.sample(600, 50, 0), 50);
        // The rules were removed and installed again: their counters start from 0, and the
        // count goes on from where it was.
        assert_eq!(m.sample(10, 60, 0), 0);
        assert_eq!(m.sample(30, 70, 0), 10);
        assert_eq!(m.sample(60, 70, 0), 30);
        assert_eq!(m.sample(200, 80, 0), 130);
        assert_eq!(m.total(), 220);
    }

    #[test]
    fn nothing_installed_counts_nothing() {
        let mut m = Meter::default();
        for received in [0, 10, 1000] {
            assert_eq!(m.sample(0, received, 3), 0);
        }
        assert_eq!(m.total(), 0);
    }
}
