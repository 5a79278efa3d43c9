//! The pairing table: which client is waiting for which question, and which upstream query was
//! sent on whose behalf.
//!
//! This module owns the memory of nfqmark. It is bounded (a fixed capacity per table, oldest
//! entry evicted first) and expires entries by time, with `now` always passed in, so it is fully
//! testable without a clock or a kernel. It never sizes anything from a number read off the wire.
//!
//! The four moments of one resolution (see the README for the iptables hooks):
//!
//! 1. client query (arrives for a local address): remember question, client, id, mark, time;
//! 2. the resolver's upstream query (leaves this host) with the same question: give it the
//!    waiting client's mark, and remember the upstream flow and id;
//! 3. the upstream answer (arrives) on that flow with that id: same mark;
//! 4. the answer to the client (leaves, client's address, port and id): the client's mark.
//!
//! Resolvers pick a fresh id for the upstream query, may change the case of the name (0x20) and
//! merge identical questions from several clients into one upstream query, so step 2 matches by
//! question. When the resolver kept the client's id we use it to choose among several waiting
//! clients; otherwise the oldest waiting client wins, and if the candidates carry different marks
//! the case is counted as ambiguous.

use std::collections::{HashMap, VecDeque};

// Keys come off the wire, so the hasher is seeded at random per table (foldhash is several times
// faster than the standard SipHash here and still resists chosen-collision floods).
use foldhash::fast::RandomState;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dns::QKey;
use crate::packet::Proto;

/// Sizes and timing of the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairingConfig {
    /// How long a client query waits for its upstream query, and an upstream query for its answer.
    pub window: Duration,
    /// Most client queries remembered at once; the oldest is evicted to make room.
    pub client_capacity: usize,
    /// Most upstream queries remembered at once; the oldest is evicted to make room.
    pub upstream_capacity: usize,
    /// Only these bits of a mark count: two clients whose marks agree under the mask are not an
    /// ambiguous merge, and a client whose mark is 0 under the mask carries nothing.
    pub mask: u32,
}

impl Default for PairingConfig {
    fn default() -> Self {
        PairingConfig {
            window: Duration::from_secs(5),
            client_capacity: 65_536,
            upstream_capacity: 65_536,
            mask: u32::MAX,
        }
    }
}

/// Outcome counters. Plain integers: the table lives behind one lock and these live with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairingCounters {
    /// Client queries remembered (retransmissions of a waiting query are not counted again).
    pub client_queries: u64,
    /// Upstream queries that found a waiting client and took its mark.
    pub paired: u64,
    /// Paired upstream queries whose question was waited on by clients with different marks.
    pub ambiguous: u64,
    /// Upstream queries that found no waiting client (the resolver's own queries, or too late).
    pub unpaired: u64,
    /// Upstream answers that found their upstream query.
    pub upstream_answers: u64,
    /// Answers to clients that found their client query.
    pub client_answers: u64,
    /// Entries dropped because their window passed.
    pub expired: u64,
    /// Entries dropped because a table was full.
    pub evicted: u64,
}

/// An upstream flow plus DNS id: what ties an upstream answer to its query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub proto: Proto,
    /// This host's end (source of the upstream query).
    pub local: SocketAddr,
    /// The upstream server's end.
    pub remote: SocketAddr,
    pub id: u16,
}

/// What the table says about an upstream query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamMatch {
    /// A waiting client's mark; `ambiguous` when other waiting clients had other marks.
    Paired { mark: u32, ambiguous: bool },
    /// Nobody waits for this question.
    Unpaired,
}

#[derive(Debug, Clone)]
struct ClientEntry {
    client: SocketAddr,
    id: u16,
    mark: u32,
    /// Current log record: a retransmission gets a new one, so it keeps the entry alive.
    seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct UpstreamEntry {
    mark: u32,
    seq: u64,
}

/// Insertion log used for expiry and eviction in O(1) amortised: entries are appended in time
/// order, and an entry removed early (answered, refreshed) leaves a stale record that is skipped
/// when it reaches the front.
#[derive(Debug)]
struct OrderLog<K> {
    records: VecDeque<(K, u64, Instant)>,
}

impl<K> OrderLog<K> {
    fn new() -> Self {
        OrderLog {
            records: VecDeque::new(),
        }
    }
}

/// The pairing state. One per process, shared by all queue workers behind a mutex.
#[derive(Debug)]
pub struct Pairing {
    config: PairingConfig,
    clients: HashMap<QKey, Vec<ClientEntry>, RandomState>,
    client_count: usize,
    client_log: OrderLog<QKey>,
    upstream: HashMap<FlowKey, UpstreamEntry, RandomState>,
    upstream_log: OrderLog<FlowKey>,
    next_seq: u64,
    pub counters: PairingCounters,
}

impl Pairing {
    pub fn new(config: PairingConfig) -> Pairing {
        Pairing {
            config,
            clients: HashMap::default(),
            client_count: 0,
            client_log: OrderLog::new(),
            upstream: HashMap::default(),
            upstream_log: OrderLog::new(),
            next_seq: 0,
            counters: PairingCounters::default(),
        }
    }

    pub fn config(&self) -> &PairingConfig {
        &self.config
    }

    /// Client queries waiting now.
    pub fn client_len(&self) -> usize {
        self.client_count
    }

    /// Upstream queries waiting for their answer now.
    pub fn upstream_len(&self) -> usize {
        self.upstream.len()
    }

    fn seq(&mut self) -> u64 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    /// Step 1: a client query arrived. A retransmission (same client, port, id, question) only
    /// refreshes the waiting entry and takes its newest mark.
    pub fn client_query(
        &mut self,
        question: &QKey,
        client: SocketAddr,
        id: u16,
        mark: u32,
        now: Instant,
    ) {
        self.expire(now);
        let seq = self.seq();
        if let Some(entries) = self.clients.get_mut(question)
            && let Some(e) = entries
                .iter_mut()
                .find(|e| e.client == client && e.id == id)
        {
            e.mark = mark;
            e.seq = seq;
            self.client_log
                .records
                .push_back((question.clone(), seq, now));
            self.compact_client_log();
            return;
        }
        if self.client_count >= self.config.client_capacity {
            self.evict_client();
        }
        if self.config.client_capacity == 0 {
            return;
        }
        self.clients
            .entry(question.clone())
            .or_default()
            .push(ClientEntry {
                client,
                id,
                mark,
                seq,
            });
        self.client_count += 1;
        self.counters.client_queries += 1;
        self.client_log
            .records
            .push_back((question.clone(), seq, now));
        self.compact_client_log();
    }

    /// Step 2: the resolver sends a query upstream. Returns the mark to give it.
    pub fn upstream_query(
        &mut self,
        question: &QKey,
        flow: FlowKey,
        now: Instant,
    ) -> UpstreamMatch {
        self.expire(now);
        let mask = self.config.mask;
        let Some(entries) = self.clients.get(question).filter(|e| !e.is_empty()) else {
            self.counters.unpaired += 1;
            return UpstreamMatch::Unpaired;
        };
        // Entries are in arrival order, so the first one is the oldest waiting client.
        let chosen = entries
            .iter()
            .find(|e| e.id == flow.id)
            .or_else(|| entries.first());
        let Some(chosen) = chosen else {
            self.counters.unpaired += 1;
            return UpstreamMatch::Unpaired;
        };
        let mark = chosen.mark;
        let ambiguous = entries.iter().any(|e| e.mark & mask != mark & mask);
        self.counters.paired += 1;
        if ambiguous {
            self.counters.ambiguous += 1;
        }
        self.remember_upstream(flow, mark, now);
        UpstreamMatch::Paired { mark, ambiguous }
    }

    fn remember_upstream(&mut self, flow: FlowKey, mark: u32, now: Instant) {
        if self.config.upstream_capacity == 0 {
            return;
        }
        let seq = self.seq();
        if self
            .upstream
            .insert(flow, UpstreamEntry { mark, seq })
            .is_none()
            && self.upstream.len() > self.config.upstream_capacity
        {
            self.evict_upstream(seq);
        }
        self.upstream_log.records.push_back((flow, seq, now));
        self.compact_upstream_log();
    }

    /// Step 3: an answer arrived from upstream. `flow` is written from this host's side (local =
    /// the answer's destination). Returns the mark of the upstream query it answers.
    pub fn upstream_answer(&mut self, flow: &FlowKey, now: Instant) -> Option<u32> {
        self.expire(now);
        let entry = self.upstream.remove(flow)?;
        self.counters.upstream_answers += 1;
        Some(entry.mark)
    }

    /// Step 4: the resolver answers a client. Returns the client's mark and forgets the query.
    pub fn client_answer(
        &mut self,
        question: &QKey,
        client: SocketAddr,
        id: u16,
        now: Instant,
    ) -> Option<u32> {
        self.expire(now);
        let entries = self.clients.get_mut(question)?;
        let pos = entries
            .iter()
            .position(|e| e.client == client && e.id == id)?;
        let entry = entries.remove(pos);
        if entries.is_empty() {
            self.clients.remove(question);
        }
        self.client_count -= 1;
        self.counters.client_answers += 1;
        Some(entry.mark)
    }

    /// Drop everything whose window has passed. Called by every operation; cheap when nothing
    /// is due (one look at the front of each log).
    pub fn expire(&mut self, now: Instant) {
        // Entries recorded at or before `cutoff` are due (their age is at least the window).
        // One subtraction here instead of one per record looked at.
        let Some(cutoff) = now.checked_sub(self.config.window) else {
            return;
        };
        while let Some((_, _, at)) = self.client_log.records.front() {
            if *at > cutoff {
                break;
            }
            if let Some((key, seq, _)) = self.client_log.records.pop_front()
                && self.remove_client_seq(&key, seq)
            {
                self.counters.expired += 1;
            }
        }
        while let Some((_, _, at)) = self.upstream_log.records.front() {
            if *at > cutoff {
                break;
            }
            if let Some((flow, seq, _)) = self.upstream_log.records.pop_front()
                && self.upstream.get(&flow).is_some_and(|e| e.seq == seq)
            {
                self.upstream.remove(&flow);
                self.counters.expired += 1;
            }
        }
    }

    /// Remove the client entry under `key` whose current seq is `seq`; false if it is gone or
    /// was refreshed since (then a newer log record stands for it).
    fn remove_client_seq(&mut self, key: &QKey, seq: u64) -> bool {
        let Some(entries) = self.clients.get_mut(key) else {
            return false;
        };
        let Some(pos) = entries.iter().position(|e| e.seq == seq) else {
            return false;
        };
        entries.remove(pos);
        if entries.is_empty() {
            self.clients.remove(key);
        }
        self.client_count -= 1;
        true
    }

    fn evict_client(&mut self) {
        while let Some((key, seq, _)) = self.client_log.records.pop_front() {
            if self.remove_client_seq(&key, seq) {
                self.counters.evicted += 1;
                return;
            }
        }
    }

    /// Evict the oldest upstream entry other than the one just inserted (`keep`).
    fn evict_upstream(&mut self, keep: u64) {
        while let Some((flow, seq, _)) = self.upstream_log.records.pop_front() {
            if seq != keep && self.upstream.get(&flow).is_some_and(|e| e.seq == seq) {
                self.upstream.remove(&flow);
                self.counters.evicted += 1;
                return;
            }
        }
    }

    /// Stale records (answered or refreshed entries) wait in the log until they reach the front.
    /// Keep the log within a small multiple of the table so a burst of answered queries cannot
    /// grow it without bound.
    fn compact_client_log(&mut self) {
        if self.client_log.records.len() <= log_bound(self.config.client_capacity) {
            return;
        }
        let clients = &self.clients;
        self.client_log.records.retain(|(key, seq, _)| {
            clients
                .get(key)
                .is_some_and(|entries| entries.iter().any(|e| e.seq == *seq))
        });
    }

    fn compact_upstream_log(&mut self) {
        if self.upstream_log.records.len() <= log_bound(self.config.upstream_capacity) {
            return;
        }
        let upstream = &self.upstream;
        self.upstream_log
            .records
            .retain(|(flow, seq, _)| upstream.get(flow).is_some_and(|e| e.seq == *seq));
    }
}

/// How long an order log may grow (stale records included) before it is compacted. Saturating:
/// the capacity comes from the command line and may be as large as `usize::MAX`.
fn log_bound(capacity: usize) -> usize {
    capacity.saturating_mul(2).saturating_add(1024)
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use hickory_proto::rr::Name;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn key(name: &str) -> QKey {
        QKey::new(&Name::from_ascii(name).unwrap(), 1, 1)
    }

    fn client(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), port)
    }

    fn flow(id: u16) -> FlowKey {
        FlowKey {
            proto: Proto::Udp,
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 33000),
            remote: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 53)), 53),
            id,
        }
    }

    fn config(capacity: usize) -> PairingConfig {
        PairingConfig {
            window: Duration::from_secs(5),
            client_capacity: capacity,
            upstream_capacity: capacity,
            mask: u32::MAX,
        }
    }

    fn paired(mark: u32, ambiguous: bool) -> UpstreamMatch {
        UpstreamMatch::Paired { mark, ambiguous }
    }

    #[test]
    fn default_config_is_five_seconds_and_64k_entries_with_all_mark_bits() {
        let c = PairingConfig::default();
        assert_eq!(c.window, Duration::from_secs(5));
        assert_eq!(c.client_capacity, 65_536);
        assert_eq!(c.upstream_capacity, 65_536);
        assert_eq!(c.mask, u32::MAX);
        assert_eq!(Pairing::new(c).config(), &c);
    }

    #[test]
    fn four_moments_carry_the_client_mark() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(137, 40000), 0x1111, 137, t0);
        assert_eq!(p.client_len(), 1);
        assert_eq!(
            p.upstream_query(&q, flow(0x2222), t0 + MS),
            paired(137, false)
        );
        assert_eq!(p.upstream_len(), 1);
        assert_eq!(p.upstream_answer(&flow(0x2222), t0 + 2 * MS), Some(137));
        assert_eq!(p.upstream_len(), 0);
        assert_eq!(
            p.client_answer(&q, client(137, 40000), 0x1111, t0 + 3 * MS),
            Some(137)
        );
        assert_eq!(p.client_len(), 0);
        assert_eq!(
            p.counters,
            PairingCounters {
                client_queries: 1,
                paired: 1,
                upstream_answers: 1,
                client_answers: 1,
                ..PairingCounters::default()
            }
        );
    }

    #[test]
    fn upstream_query_with_another_id_and_0x20_case_pairs_by_question() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let asked = key("www.example.com");
        let sent = key("wWw.ExAmPle.CoM");
        p.client_query(&asked, client(137, 40000), 0x1111, 7, t0);
        assert_eq!(p.upstream_query(&sent, flow(0xbeef), t0), paired(7, false));
    }

    #[test]
    fn upstream_query_without_waiting_client_is_unpaired() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        p.client_query(&key("a.example"), client(1, 1000), 1, 7, t0);
        assert_eq!(
            p.upstream_query(&key("b.example"), flow(1), t0),
            UpstreamMatch::Unpaired
        );
        let other_type = QKey::new(&Name::from_ascii("a.example").unwrap(), 28, 1);
        assert_eq!(
            p.upstream_query(&other_type, flow(2), t0),
            UpstreamMatch::Unpaired
        );
        assert_eq!(p.counters.unpaired, 2);
        assert_eq!(p.counters.paired, 0);
        assert_eq!(p.upstream_len(), 0);
    }

    #[test]
    fn upstream_answer_needs_the_same_flow_and_id() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 7, t0);
        p.upstream_query(&q, flow(0x2222), t0);
        let mut other_port = flow(0x2222);
        other_port.local.set_port(33001);
        let mut other_server = flow(0x2222);
        other_server.remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 54)), 53);
        let mut other_proto = flow(0x2222);
        other_proto.proto = Proto::Tcp;
        for wrong in [flow(0x2223), other_port, other_server, other_proto] {
            assert_eq!(p.upstream_answer(&wrong, t0), None, "{wrong:?}");
        }
        assert_eq!(p.upstream_answer(&flow(0x2222), t0), Some(7));
        // Answered once: a duplicate answer finds nothing.
        assert_eq!(p.upstream_answer(&flow(0x2222), t0), None);
        assert_eq!(p.counters.upstream_answers, 1);
    }

    #[test]
    fn client_answer_needs_the_same_client_port_id_and_question() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 7, t0);
        assert_eq!(p.client_answer(&q, client(2, 1000), 1, t0), None);
        assert_eq!(p.client_answer(&q, client(1, 1001), 1, t0), None);
        assert_eq!(p.client_answer(&q, client(1, 1000), 2, t0), None);
        assert_eq!(
            p.client_answer(&key("www.example.org"), client(1, 1000), 1, t0),
            None
        );
        assert_eq!(
            p.client_answer(&key("WWW.EXAMPLE.COM"), client(1, 1000), 1, t0),
            Some(7)
        );
        assert_eq!(p.client_answer(&q, client(1, 1000), 1, t0), None);
        assert_eq!(p.client_len(), 0);
        assert_eq!(p.counters.client_answers, 1);
    }

    #[test]
    fn answer_to_a_client_that_never_asked_is_none() {
        let mut p = Pairing::new(config(16));
        let now = Instant::now();
        assert_eq!(
            p.client_answer(&key("a.example"), client(1, 1000), 1, now),
            None
        );
        assert_eq!(p.upstream_answer(&flow(1), now), None);
        assert_eq!(p.counters, PairingCounters::default());
    }

    #[test]
    fn client_over_ipv6_and_upstream_over_ipv4_pair() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        let v6 = SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)),
            5353,
        );
        p.client_query(&q, v6, 9, 0x42, t0);
        assert_eq!(p.upstream_query(&q, flow(10), t0), paired(0x42, false));
        assert_eq!(p.client_answer(&q, v6, 9, t0), Some(0x42));
        // The same port and id from the client's IPv4-mapped address is another client.
        p.client_query(&q, v6, 9, 0x42, t0);
        let mapped = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(0, 0, 0, 7)), 5353);
        assert_eq!(p.client_answer(&q, mapped, 9, t0), None);
    }

    #[test]
    fn merged_question_with_different_marks_takes_the_oldest_and_is_ambiguous() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 0x0101, 1, t0);
        p.client_query(&q, client(2, 2000), 0x0202, 2, t0 + MS);
        p.client_query(&q, client(3, 3000), 0x0303, 3, t0 + 2 * MS);
        assert_eq!(
            p.upstream_query(&q, flow(0x9999), t0 + 3 * MS),
            paired(1, true)
        );
        assert_eq!(p.counters.ambiguous, 1);
        assert_eq!(p.counters.paired, 1);
        // Every client still gets its own mark on its answer.
        assert_eq!(p.client_answer(&q, client(2, 2000), 0x0202, t0), Some(2));
        assert_eq!(p.client_answer(&q, client(3, 3000), 0x0303, t0), Some(3));
        assert_eq!(p.client_answer(&q, client(1, 1000), 0x0101, t0), Some(1));
    }

    #[test]
    fn merged_question_with_the_same_marks_is_not_ambiguous() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 5, t0);
        p.client_query(&q, client(2, 2000), 2, 5, t0);
        assert_eq!(p.upstream_query(&q, flow(3), t0), paired(5, false));
        assert_eq!(p.counters.ambiguous, 0);
    }

    #[test]
    fn marks_equal_under_the_mask_are_not_ambiguous() {
        let t0 = Instant::now();
        let mut p = Pairing::new(PairingConfig {
            mask: 0xff00,
            ..config(16)
        });
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 0x0100, t0);
        p.client_query(&q, client(2, 2000), 2, 0xab01_01ff, t0);
        assert_eq!(p.upstream_query(&q, flow(3), t0), paired(0x0100, false));
        p.client_query(&q, client(3, 3000), 3, 0x0200, t0);
        assert_eq!(p.upstream_query(&q, flow(4), t0), paired(0x0100, true));
    }

    #[test]
    fn resolver_keeping_the_client_id_picks_that_client_over_the_oldest() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 0x0101, 1, t0);
        p.client_query(&q, client(2, 2000), 0x0202, 2, t0 + MS);
        let m = p.upstream_query(&q, flow(0x0202), t0 + 2 * MS);
        assert_eq!(m, paired(2, true));
        assert_eq!(p.upstream_answer(&flow(0x0202), t0 + 3 * MS), Some(2));
    }

    #[test]
    fn client_retransmission_does_not_add_a_second_entry() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 5, t0);
        p.client_query(&q, client(1, 1000), 1, 5, t0 + MS);
        p.client_query(&q, client(1, 1000), 1, 6, t0 + 2 * MS);
        assert_eq!(p.client_len(), 1);
        assert_eq!(p.counters.client_queries, 1);
        // The retransmission's newest mark counts, and one answer clears the entry.
        assert_eq!(p.upstream_query(&q, flow(2), t0 + 3 * MS), paired(6, false));
        assert_eq!(
            p.client_answer(&q, client(1, 1000), 1, t0 + 4 * MS),
            Some(6)
        );
        assert_eq!(p.client_len(), 0);
    }

    #[test]
    fn same_id_from_another_port_or_address_is_another_client() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 5, t0);
        p.client_query(&q, client(1, 1001), 1, 5, t0);
        p.client_query(&q, client(2, 1000), 1, 5, t0);
        assert_eq!(p.client_len(), 3);
        assert_eq!(p.counters.client_queries, 3);
    }

    #[test]
    fn client_entries_expire_after_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(5);
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 5, t0);
        p.client_query(&key("b.example"), client(2, 1000), 1, 5, t0 + MS);
        p.expire(t0 + window - MS);
        assert_eq!(p.client_len(), 2);
        assert_eq!(p.counters.expired, 0);
        assert_eq!(
            p.upstream_query(&q, flow(1), t0 + window),
            UpstreamMatch::Unpaired
        );
        assert_eq!(p.client_len(), 1);
        assert_eq!(p.counters.expired, 1);
        assert_eq!(p.client_answer(&q, client(1, 1000), 1, t0 + window), None);
        p.expire(t0 + window + MS);
        assert_eq!(p.client_len(), 0);
        assert_eq!(p.counters.expired, 2);
        assert!(p.clients.is_empty());
    }

    #[test]
    fn upstream_entries_expire_after_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(5);
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 5, t0);
        p.upstream_query(&q, flow(2), t0 + window - MS);
        assert_eq!(p.upstream_len(), 1);
        // The client entry goes first; the upstream entry lives its own window.
        p.expire(t0 + window);
        assert_eq!((p.client_len(), p.upstream_len()), (0, 1));
        assert_eq!(
            p.upstream_answer(&flow(2), t0 + 2 * window - MS - MS),
            Some(5)
        );
        p.client_query(&q, client(1, 1000), 1, 5, t0 + window);
        p.upstream_query(&q, flow(3), t0 + window);
        assert_eq!(p.upstream_answer(&flow(3), t0 + 2 * window), None);
        assert_eq!(p.upstream_len(), 0);
        assert_eq!(p.counters.expired, 3);
    }

    #[test]
    fn answered_entries_are_not_counted_as_expired() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 5, t0);
        p.upstream_query(&q, flow(2), t0);
        p.upstream_answer(&flow(2), t0);
        p.client_answer(&q, client(1, 1000), 1, t0);
        p.expire(t0 + Duration::from_secs(60));
        assert_eq!(p.counters.expired, 0);
        assert!(p.client_log.records.is_empty());
        assert!(p.upstream_log.records.is_empty());
    }

    #[test]
    fn retransmission_restarts_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(5);
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 5, t0);
        p.client_query(&q, client(1, 1000), 1, 5, t0 + Duration::from_secs(3));
        p.expire(t0 + window);
        assert_eq!(p.client_len(), 1);
        assert_eq!(p.counters.expired, 0);
        p.expire(t0 + Duration::from_secs(3) + window);
        assert_eq!(p.client_len(), 0);
        assert_eq!(p.counters.expired, 1);
    }

    #[test]
    fn time_going_backwards_expires_nothing_and_does_not_panic() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 5, t0);
        p.expire(t0 - Duration::from_secs(10));
        assert_eq!(
            p.upstream_query(&q, flow(1), t0 - Duration::from_secs(1)),
            paired(5, false)
        );
        assert_eq!(p.counters.expired, 0);
    }

    #[test]
    fn client_table_full_evicts_the_oldest_and_counts_it() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(2));
        p.client_query(&key("a.example"), client(1, 1000), 1, 1, t0);
        p.client_query(&key("b.example"), client(1, 1000), 2, 2, t0 + MS);
        p.client_query(&key("c.example"), client(1, 1000), 3, 3, t0 + 2 * MS);
        assert_eq!(p.client_len(), 2);
        assert_eq!(p.counters.evicted, 1);
        assert_eq!(p.counters.client_queries, 3);
        assert_eq!(
            p.upstream_query(&key("a.example"), flow(1), t0),
            UpstreamMatch::Unpaired
        );
        assert_eq!(
            p.upstream_query(&key("b.example"), flow(2), t0),
            paired(2, false)
        );
        assert_eq!(
            p.upstream_query(&key("c.example"), flow(3), t0),
            paired(3, false)
        );
    }

    #[test]
    fn client_table_full_evicts_the_oldest_client_of_a_shared_question() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(2));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 1, t0);
        p.client_query(&q, client(2, 1000), 1, 2, t0);
        p.client_query(&q, client(3, 1000), 1, 3, t0);
        assert_eq!(p.client_len(), 2);
        assert_eq!(p.upstream_query(&q, flow(9), t0), paired(2, true));
        assert_eq!(p.client_answer(&q, client(1, 1000), 1, t0), None);
    }

    #[test]
    fn refreshed_entry_is_not_the_oldest_any_more() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(2));
        p.client_query(&key("a.example"), client(1, 1000), 1, 1, t0);
        p.client_query(&key("b.example"), client(1, 1000), 2, 2, t0 + MS);
        // a is retransmitted, so b is now the oldest.
        p.client_query(&key("a.example"), client(1, 1000), 1, 1, t0 + 2 * MS);
        p.client_query(&key("c.example"), client(1, 1000), 3, 3, t0 + 3 * MS);
        assert_eq!(
            p.upstream_query(&key("a.example"), flow(1), t0),
            paired(1, false)
        );
        assert_eq!(
            p.upstream_query(&key("b.example"), flow(2), t0),
            UpstreamMatch::Unpaired
        );
        assert_eq!(p.counters.evicted, 1);
    }

    #[test]
    fn upstream_table_full_evicts_the_oldest_and_counts_it() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(2));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 7, t0);
        for id in 1..=3 {
            p.upstream_query(&q, flow(id), t0 + u32::from(id) * MS);
        }
        assert_eq!(p.upstream_len(), 2);
        assert_eq!(p.counters.evicted, 1);
        assert_eq!(p.upstream_answer(&flow(1), t0), None);
        assert_eq!(p.upstream_answer(&flow(2), t0), Some(7));
        assert_eq!(p.upstream_answer(&flow(3), t0), Some(7));
    }

    #[test]
    fn upstream_query_resent_on_the_same_flow_keeps_one_entry() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(2));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 7, t0);
        p.upstream_query(&q, flow(1), t0);
        p.upstream_query(&q, flow(2), t0);
        p.upstream_query(&q, flow(1), t0 + MS);
        assert_eq!(p.upstream_len(), 2);
        assert_eq!(p.counters.evicted, 0);
        p.upstream_query(&q, flow(3), t0 + 2 * MS);
        // flow 2 is the oldest now: flow 1 was sent again.
        assert_eq!(p.upstream_answer(&flow(2), t0), None);
        assert_eq!(p.upstream_answer(&flow(1), t0), Some(7));
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(0));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 7, t0);
        assert_eq!(p.client_len(), 0);
        assert_eq!(p.upstream_query(&q, flow(1), t0), UpstreamMatch::Unpaired);
        assert_eq!(p.upstream_len(), 0);
    }

    #[test]
    fn zero_upstream_capacity_pairs_but_remembers_no_upstream_query() {
        let t0 = Instant::now();
        let mut p = Pairing::new(PairingConfig {
            upstream_capacity: 0,
            ..config(4)
        });
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 7, t0);
        assert_eq!(p.upstream_query(&q, flow(1), t0), paired(7, false));
        assert_eq!(p.upstream_len(), 0);
        assert_eq!(p.upstream_answer(&flow(1), t0), None);
    }

    #[test]
    fn huge_capacity_does_not_overflow() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(usize::MAX));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 7, t0);
        assert_eq!(p.upstream_query(&q, flow(1), t0), paired(7, false));
        assert_eq!((p.client_len(), p.upstream_len()), (1, 1));
    }

    #[test]
    fn client_table_never_exceeds_capacity_over_100k_unique_queries() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(1000));
        for i in 0..100_000u32 {
            let q = key(&format!("n{i}.example"));
            let now = t0 + Duration::from_micros(u64::from(i));
            p.client_query(&q, client(1, (i % 60_000) as u16), i as u16, i, now);
            assert!(p.client_len() <= 1000, "{} entries at {i}", p.client_len());
            assert!(p.client_log.records.len() <= log_bound(1000));
        }
        assert_eq!(p.client_len(), 1000);
        assert_eq!(p.counters.evicted, 99_000);
        assert_eq!(p.counters.client_queries, 100_000);
        let entries: usize = p.clients.values().map(Vec::len).sum();
        assert_eq!(entries, p.client_len());
        // The newest 1000 are the ones kept.
        let newest = key("n99999.example");
        assert_eq!(
            p.upstream_query(&newest, flow(1), t0),
            paired(99_999, false)
        );
        let evicted = key("n98999.example");
        assert_eq!(
            p.upstream_query(&evicted, flow(2), t0),
            UpstreamMatch::Unpaired
        );
    }

    #[test]
    fn upstream_table_never_exceeds_capacity_over_100k_unique_queries() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(1000));
        let q = key("www.example.com");
        p.client_query(&q, client(1, 1000), 1, 7, t0);
        for i in 0..100_000u32 {
            let mut f = flow(i as u16);
            f.local.set_port(1024 + (i / 65_536) as u16);
            let now = t0 + Duration::from_nanos(u64::from(i));
            assert_eq!(p.upstream_query(&q, f, now), paired(7, false));
            assert!(
                p.upstream_len() <= 1000,
                "{} entries at {i}",
                p.upstream_len()
            );
            assert!(p.upstream_log.records.len() <= log_bound(1000));
        }
        assert_eq!(p.upstream_len(), 1000);
        assert_eq!(p.counters.evicted, 99_000);
    }

    #[test]
    fn order_logs_stay_bounded_when_every_query_is_answered() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(10));
        let q = key("www.example.com");
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_nanos(u64::from(i));
            let id = i as u16;
            p.client_query(&q, client(1, 1000), id, 7, now);
            p.upstream_query(&q, flow(id), now);
            assert_eq!(p.upstream_answer(&flow(id), now), Some(7));
            assert_eq!(p.client_answer(&q, client(1, 1000), id, now), Some(7));
            assert!(p.client_log.records.len() <= log_bound(10));
            assert!(p.upstream_log.records.len() <= log_bound(10));
        }
        assert_eq!((p.client_len(), p.upstream_len()), (0, 0));
        assert_eq!(p.counters.evicted, 0);
        assert_eq!(p.counters.expired, 0);
    }

    #[test]
    fn order_logs_stay_bounded_under_retransmissions_and_resent_upstream_queries() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(10));
        let q = key("www.example.com");
        for i in 0..100_000u32 {
            let now = t0 + Duration::from_nanos(u64::from(i));
            p.client_query(&q, client(1, 1000), 1, 7, now);
            p.upstream_query(&q, flow(1), now);
            assert!(p.client_log.records.len() <= log_bound(10));
            assert!(p.upstream_log.records.len() <= log_bound(10));
        }
        assert_eq!((p.client_len(), p.upstream_len()), (1, 1));
        assert_eq!(p.counters.client_queries, 1);
    }

    #[test]
    fn tables_drain_completely_after_the_window() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(100));
        for i in 0..1000u32 {
            let q = key(&format!("n{i}.example"));
            let now = t0 + Duration::from_micros(u64::from(i));
            p.client_query(&q, client(1, 1000), i as u16, 7, now);
            p.upstream_query(&q, flow(i as u16), now);
        }
        p.expire(t0 + Duration::from_secs(6));
        assert_eq!((p.client_len(), p.upstream_len()), (0, 0));
        assert!(p.clients.is_empty());
        assert!(p.client_log.records.is_empty());
        assert!(p.upstream_log.records.is_empty());
        assert_eq!(p.counters.expired + p.counters.evicted, 2000);
    }
}
