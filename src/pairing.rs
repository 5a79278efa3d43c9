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
    clients: HashMap<QKey, Vec<ClientEntry>>,
    client_count: usize,
    client_log: OrderLog<QKey>,
    upstream: HashMap<FlowKey, UpstreamEntry>,
    upstream_log: OrderLog<FlowKey>,
    next_seq: u64,
    pub counters: PairingCounters,
}

impl Pairing {
    pub fn new(config: PairingConfig) -> Pairing {
        Pairing {
            config,
            clients: HashMap::new(),
            client_count: 0,
            client_log: OrderLog::new(),
            upstream: HashMap::new(),
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
        let window = self.config.window;
        while let Some((_, _, at)) = self.client_log.records.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            if let Some((key, seq, _)) = self.client_log.records.pop_front()
                && self.remove_client_seq(&key, seq)
            {
                self.counters.expired += 1;
            }
        }
        while let Some((_, _, at)) = self.upstream_log.records.front() {
            if now.saturating_duration_since(*at) < window {
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
        if self.client_log.records.len() <= 2 * self.config.client_capacity + 1024 {
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
        if self.upstream_log.records.len() <= 2 * self.config.upstream_capacity + 1024 {
            return;
        }
        let upstream = &self.upstream;
        self.upstream_log
            .records
            .retain(|(flow, seq, _)| upstream.get(flow).is_some_and(|e| e.seq == *seq));
    }
}
