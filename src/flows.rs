//! DNS-learned flow marks: which addresses a client resolved, through which names, until when.
//!
//! This module owns two pure steps. [`answer_addresses`] reads a DNS answer (with nfqmark's own
//! bounded reader, [`crate::dns::answer`]) and follows its CNAME chain from the question to the
//! A/AAAA records at its end, so an alias name that a rule names (`cdn.video.example` ->
//! `edge-7.cdn.example` -> 198.18.7.7) yields the final addresses with every name along the
//! chain. [`Learned`] remembers, per client, the addresses a flow rule
//! matched, each until its record's TTL (clamped to a floor and a ceiling), in a bounded table
//! with `now` passed in; a new flow from that client to such an address gets the rule's mark.
//! Nothing here reads a clock, does I/O, or sizes an allocation from a number off the wire.
//!
//! For the kernel backend (`crate::kernel_flows`, the same entries as nftables set elements),
//! the table keeps an outbox of its changes once [`Learned::enable_outbox`] is called: every
//! entry learned or refreshed, every entry evicted before its TTL. The worker hands the outbox
//! to the backend's thread after each step; the outbox is bounded (a full one drops its oldest
//! change, counted), so a backend that stops draining it costs no memory. Entries that expire
//! are not in it: the kernel expires its elements by the same TTL. [`Learned::adopt`] takes in
//! entries the kernel already holds, without sending them back.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::dns::Name;
use crate::dns::answer::{Message, RData, Section};

/// Longest CNAME chain followed (real chains are a handful of links; loops stop here).
const MAX_CHAIN: usize = 16;

/// One address at the end of a CNAME chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainAddress {
    pub addr: IpAddr,
    /// The smallest TTL along the chain, in seconds: the address is only as fresh as its
    /// shortest-lived link.
    pub ttl: u32,
}

/// The addresses an answer gives for its question, and every name along the way (question
/// first, then each CNAME target), lower-cased (as every [`Name`] is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolution {
    pub names: Vec<Name>,
    pub addresses: Vec<ChainAddress>,
}

/// Follow the answer section from the question through CNAMEs to A/AAAA records. `None` when the
/// message has no question, or its header, questions or answer section cannot be read (the
/// authority and additional sections are not read at all).
///
/// One pass over the answer section keeps its CNAME and A/AAAA records (at most
/// [`crate::dns::answer::MAX_SECTION_RECORDS`]), so the chain is followed whatever the records'
/// order; then the addresses of the chain's last name are taken.
pub fn answer_addresses(message: &[u8]) -> Option<Resolution> {
    let msg = Message::parse(message).ok()?;
    let question = msg.question()?.name.clone();
    let mut cnames: Vec<(Name, Name, u32)> = Vec::new();
    let mut found: Vec<(Name, ChainAddress)> = Vec::new();
    for r in msg.section(Section::Answer) {
        let r = r.ok()?;
        if let Some(addr) = r.address() {
            found.push((r.owner, ChainAddress { addr, ttl: r.ttl }));
        } else if let RData::Cname(target) = r.data {
            cnames.push((r.owner, target, r.ttl));
        }
    }
    let mut names = Vec::with_capacity(4);
    names.push(question);
    let mut chain_ttl = u32::MAX;
    for _ in 0..MAX_CHAIN {
        let Some(current) = names.last() else { break };
        let Some((_, target, ttl)) = cnames.iter().find(|(owner, _, _)| owner == current) else {
            break;
        };
        if names.contains(target) {
            break; // a loop
        }
        chain_ttl = chain_ttl.min(*ttl);
        names.push(target.clone());
    }
    let current = names.last()?;
    let addresses = found
        .into_iter()
        .filter(|(owner, _)| owner == current)
        .map(|(_, a)| ChainAddress {
            ttl: chain_ttl.min(a.ttl),
            ..a
        })
        .collect();
    Some(Resolution { names, addresses })
}

/// What a flow rule says about a resolved name for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowTarget {
    /// Index of the rule (first match wins: lower is stronger).
    pub rule: usize,
    /// Mark value and mask for the flows.
    pub mark: (u32, u32),
    /// When the rule keys learned addresses by the client's mark too: the client's mark under
    /// this mask must match when the flow opens.
    pub by_mark: Option<u32>,
}

/// Limits of the learned table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnConfig {
    /// TTLs below this are raised to it (a 0-TTL answer would otherwise be useless).
    pub ttl_floor: Duration,
    /// TTLs above this are lowered to it (a day-long TTL should not pin a mark for a day).
    pub ttl_ceiling: Duration,
    /// Most (client, address, rule) entries at once; the one closest to expiry is evicted.
    pub capacity: usize,
    /// Most entries one client may hold; beyond it, its new addresses are not learned (so one
    /// client resolving without end cannot evict the others').
    pub per_client: usize,
}

impl Default for LearnConfig {
    fn default() -> Self {
        LearnConfig {
            ttl_floor: Duration::from_secs(30),
            ttl_ceiling: Duration::from_secs(3600),
            capacity: 65_536,
            per_client: 8_192,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    client: IpAddr,
    addr: IpAddr,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    target: FlowTarget,
    /// The client's mark when it resolved, under the rule's `per-mark` mask ([`keyed_mark`]).
    client_mark: u32,
    expires: Instant,
    seq: u64,
}

/// Counters of the learned table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LearnCounters {
    /// Addresses learned (or refreshed) from answers.
    pub learned: u64,
    /// New flows that found a learned address and got its mark.
    pub flows_marked: u64,
    /// Addresses not learned because their client held `per_client` entries.
    pub over_quota: u64,
    pub expired: u64,
    pub evicted: u64,
    /// Of `learned`: entries that were held already (their TTL starts again).
    pub refreshed: u64,
    /// Changes the outbox dropped because nobody took them in time (its oldest first).
    pub outbox_dropped: u64,
    /// Entries taken in from the kernel at start ([`Learned::adopt`]).
    pub adopted: u64,
}

/// A change of the learned table, for a backend that mirrors it (the kernel's sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `client` resolved `addr` under `target`'s rule: keep it for `ttl` (clamped already)
    /// from `at`. `refreshed`: it was held already.
    Put {
        client: IpAddr,
        client_mark: u32,
        addr: IpAddr,
        target: FlowTarget,
        ttl: Duration,
        at: Instant,
        refreshed: bool,
    },
    /// The entry was evicted before its TTL, for room: the mirror drops it too.
    Remove {
        client: IpAddr,
        client_mark: u32,
        addr: IpAddr,
        target: FlowTarget,
    },
}

/// The part of a client's mark an entry is kept by: the bits under the rule's `per-mark` mask,
/// nothing for rules not keyed by mark (their entries hold whatever the client's mark).
pub fn keyed_mark(target: FlowTarget, client_mark: u32) -> u32 {
    target.by_mark.map_or(0, |mask| client_mark & mask)
}

/// Addresses learned per client, each with its rule's mark, until its TTL runs out.
#[derive(Debug)]
pub struct Learned {
    config: LearnConfig,
    entries: HashMap<Key, Vec<Entry>>,
    /// (expiry, seq) -> key: the soonest expiry first, for expiry and eviction.
    by_expiry: BTreeMap<(Instant, u64), Key>,
    per_client: HashMap<IpAddr, usize>,
    next_seq: u64,
    pub counters: LearnCounters,
    /// Changes for a mirroring backend, oldest first; `outbox_cap` 0: none kept.
    outbox: VecDeque<Change>,
    outbox_cap: usize,
}

impl Learned {
    pub fn new(config: LearnConfig) -> Learned {
        Learned {
            config,
            entries: HashMap::new(),
            by_expiry: BTreeMap::new(),
            per_client: HashMap::new(),
            next_seq: 0,
            counters: LearnCounters::default(),
            outbox: VecDeque::new(),
            outbox_cap: 0,
        }
    }

    /// Keep the changes of the table for a mirroring backend, at most `cap` waiting (then the
    /// oldest is dropped and counted).
    pub fn enable_outbox(&mut self, cap: usize) {
        self.outbox_cap = cap;
        self.outbox.reserve(cap.min(4096));
    }

    /// Hand every waiting change to `take`, oldest first.
    pub fn take_changes(&mut self, mut take: impl FnMut(Change)) {
        while let Some(c) = self.outbox.pop_front() {
            take(c);
        }
    }

    /// Changes waiting in the outbox.
    pub fn pending_changes(&self) -> usize {
        self.outbox.len()
    }

    fn send(&mut self, change: Change) {
        if self.outbox_cap == 0 {
            return;
        }
        if self.outbox.len() >= self.outbox_cap {
            self.outbox.pop_front();
            self.counters.outbox_dropped += 1;
        }
        self.outbox.push_back(change);
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.by_expiry.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_expiry.is_empty()
    }

    fn clamp(&self, ttl: u32) -> Duration {
        Duration::from_secs(u64::from(ttl)).clamp(self.config.ttl_floor, self.config.ttl_ceiling)
    }

    /// Remember that `client` (with mark `client_mark`) resolved `addr` under `target`'s rule,
    /// for `ttl` seconds (clamped). A newer answer refreshes the entry.
    pub fn learn(
        &mut self,
        client: IpAddr,
        client_mark: u32,
        addr: IpAddr,
        ttl: u32,
        target: FlowTarget,
        now: Instant,
    ) {
        self.expire(now);
        let ttl = self.clamp(ttl);
        let client_mark = keyed_mark(target, client_mark);
        if let Some(refreshed) = self.insert(client, client_mark, addr, target, now + ttl) {
            self.counters.learned += 1;
            if refreshed {
                self.counters.refreshed += 1;
            }
            self.send(Change::Put {
                client,
                client_mark,
                addr,
                target,
                ttl,
                at: now,
                refreshed,
            });
            self.evict_over_capacity();
        }
    }

    /// Take in an entry the kernel holds already (found at start), until `expires`; nothing goes
    /// to the outbox. Bounds and quotas apply as for [`Learned::learn`].
    pub fn adopt(
        &mut self,
        client: IpAddr,
        client_mark: u32,
        addr: IpAddr,
        target: FlowTarget,
        expires: Instant,
        now: Instant,
    ) -> bool {
        self.expire(now);
        if expires <= now {
            return false;
        }
        let client_mark = keyed_mark(target, client_mark);
        let adopted = self
            .insert(client, client_mark, addr, target, expires)
            .is_some();
        if adopted {
            self.counters.adopted += 1;
            self.evict_over_capacity();
        }
        adopted
    }

    /// File the entry until `expires`: `Some(refreshed)` when it was filed (`refreshed`: it was
    /// held already), `None` when the client is over its quota or the table has no room at
    /// all. The caller evicts what no longer fits ([`Learned::evict_over_capacity`]).
    fn insert(
        &mut self,
        client: IpAddr,
        client_mark: u32,
        addr: IpAddr,
        target: FlowTarget,
        expires: Instant,
    ) -> Option<bool> {
        if self.config.capacity == 0 {
            return None;
        }
        let key = Key { client, addr };
        self.next_seq = self.next_seq.wrapping_add(1);
        let seq = self.next_seq;
        let held = self.per_client.get(&client).copied().unwrap_or(0);
        let list = self.entries.entry(key).or_default();
        let refreshed = if let Some(e) = list
            .iter_mut()
            .find(|e| e.target.rule == target.rule && e.client_mark == client_mark)
        {
            self.by_expiry.remove(&(e.expires, e.seq));
            e.expires = expires;
            e.seq = seq;
            e.target = target;
            true
        } else if held >= self.config.per_client {
            if list.is_empty() {
                self.entries.remove(&key);
            }
            self.counters.over_quota += 1;
            return None;
        } else {
            list.push(Entry {
                target,
                client_mark,
                expires,
                seq,
            });
            list.sort_by_key(|e| e.target.rule);
            *self.per_client.entry(client).or_default() += 1;
            false
        };
        self.by_expiry.insert((expires, seq), key);
        Some(refreshed)
    }

    /// Evict the entries closest to expiry while the table holds more than its capacity; the
    /// mirror is told after the change that filled the table (which may be the one evicted).
    fn evict_over_capacity(&mut self) {
        while self.by_expiry.len() > self.config.capacity {
            let Some(((at, seq), key)) = self.by_expiry.pop_first() else {
                break;
            };
            if let Some(gone) = self.remove(key, at, seq) {
                self.send(Change::Remove {
                    client: key.client,
                    client_mark: gone.client_mark,
                    addr: key.addr,
                    target: gone.target,
                });
            }
            self.counters.evicted += 1;
        }
    }

    /// The mark for a new flow from `client` (whose packet carries `mark`) to `addr`: the
    /// strongest (lowest-index) rule's entry that is still fresh and, for rules keyed by mark,
    /// was learned with the same mark.
    pub fn lookup(
        &mut self,
        client: IpAddr,
        mark: u32,
        addr: IpAddr,
        now: Instant,
    ) -> Option<FlowTarget> {
        self.expire(now);
        let list = self.entries.get(&Key { client, addr })?;
        let hit = list.iter().find(|e| match e.target.by_mark {
            Some(mask) => e.client_mark & mask == mark & mask,
            None => true,
        })?;
        self.counters.flows_marked += 1;
        Some(hit.target)
    }

    /// Drop entries whose TTL has passed.
    pub fn expire(&mut self, now: Instant) {
        while let Some((&(at, seq), &key)) = self.by_expiry.first_key_value() {
            if at > now {
                break;
            }
            self.by_expiry.pop_first();
            self.remove(key, at, seq);
            self.counters.expired += 1;
        }
    }

    /// Drop the entry filed under (`at`, `seq`); the entry, when there was one.
    fn remove(&mut self, key: Key, at: Instant, seq: u64) -> Option<Entry> {
        let list = self.entries.get_mut(&key)?;
        let i = list.iter().position(|e| e.expires == at && e.seq == seq);
        let gone = i.map(|i| list.remove(i));
        if gone.is_some()
            && let Some(n) = self.per_client.get_mut(&key.client)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(&key.client);
            }
        }
        if list.is_empty() {
            self.entries.remove(&key);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn name(s: &str) -> Name {
        Name::from_ascii(s).expect("test name")
    }

    fn answer(q: &str, records: Vec<Record>) -> Vec<u8> {
        let mut msg = Message::new(7, MessageType::Response, OpCode::Query);
        msg.add_query(Query::query(name(q), RecordType::A));
        for r in records {
            msg.add_answer(r);
        }
        msg.to_vec().expect("encode")
    }

    fn cname(from: &str, to: &str, ttl: u32) -> Record {
        Record::from_rdata(name(from), ttl, RData::CNAME(CNAME(name(to))))
    }

    fn a(owner: &str, ip: [u8; 4], ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::from(ip))))
    }

    const T: FlowTarget = FlowTarget {
        rule: 3,
        mark: (0x20, 0xff),
        by_mark: None,
    };

    #[test]
    fn cname_chain_is_followed_to_its_addresses_with_the_smallest_ttl() {
        let msg = answer(
            "WWW.Video.Example.",
            vec![
                cname("www.video.example.", "cdn.video.example.", 300),
                cname("cdn.video.example.", "edge-7.cdn.example.", 60),
                a("edge-7.cdn.example.", [198, 18, 7, 7], 120),
                a("edge-7.cdn.example.", [198, 18, 7, 8], 20),
                a("unrelated.example.", [198, 18, 9, 9], 120),
            ],
        );
        let r = answer_addresses(&msg).expect("an answer");
        let names: Vec<String> = r.names.iter().map(|n| n.to_ascii()).collect();
        assert_eq!(
            names,
            [
                "www.video.example.",
                "cdn.video.example.",
                "edge-7.cdn.example."
            ]
        );
        assert_eq!(
            r.addresses,
            vec![
                ChainAddress {
                    addr: IpAddr::V4(Ipv4Addr::new(198, 18, 7, 7)),
                    ttl: 60
                },
                ChainAddress {
                    addr: IpAddr::V4(Ipv4Addr::new(198, 18, 7, 8)),
                    ttl: 20
                },
            ]
        );
    }

    #[test]
    fn cname_loop_stops() {
        let msg = answer(
            "a.example.",
            vec![
                cname("a.example.", "b.example.", 60),
                cname("b.example.", "a.example.", 60),
            ],
        );
        let r = answer_addresses(&msg).expect("an answer");
        assert_eq!(r.names.len(), 2);
        assert!(r.addresses.is_empty());
    }

    #[test]
    fn aaaa_records_are_learned_too() {
        let mut msg = Message::new(7, MessageType::Response, OpCode::Query);
        msg.add_query(Query::query(name("v6.example."), RecordType::AAAA));
        msg.add_answer(Record::from_rdata(
            name("v6.example."),
            90,
            RData::AAAA(AAAA(Ipv6Addr::new(0x2001, 0xdb8, 7, 0, 0, 0, 0, 1))),
        ));
        let r = answer_addresses(&msg.to_vec().expect("encode")).expect("an answer");
        assert_eq!(r.addresses.len(), 1);
        assert_eq!(r.addresses[0].ttl, 90);
    }

    #[test]
    fn garbage_is_not_an_answer() {
        assert_eq!(answer_addresses(&[1, 2, 3]), None);
        assert_eq!(answer_addresses(&[]), None);
    }

    fn texts(r: &Resolution) -> Vec<String> {
        r.names.iter().map(|n| n.to_ascii()).collect()
    }

    #[test]
    fn cname_chain_in_any_order_and_any_case_is_followed() {
        let msg = answer(
            "www.video.example.",
            vec![
                a("EDGE-7.cdn.example.", [198, 18, 7, 7], 120),
                cname("CDN.video.example.", "edge-7.CDN.example.", 60),
                cname("www.VIDEO.example.", "cdn.video.EXAMPLE.", 300),
            ],
        );
        let r = answer_addresses(&msg).expect("an answer");
        assert_eq!(
            texts(&r),
            [
                "www.video.example.",
                "cdn.video.example.",
                "edge-7.cdn.example."
            ]
        );
        assert_eq!(r.addresses.len(), 1);
        assert_eq!(r.addresses[0].ttl, 60);
    }

    #[test]
    fn answer_without_question_or_with_a_bad_answer_section_teaches_nothing() {
        let mut no_question = Message::new(7, MessageType::Response, OpCode::Query);
        no_question.add_answer(a("a.example.", [198, 18, 7, 7], 60));
        assert_eq!(
            answer_addresses(&no_question.to_vec().expect("encode")),
            None
        );
        let msg = answer(
            "a.example.",
            vec![
                cname("a.example.", "b.example.", 60),
                a("b.example.", [198, 18, 7, 7], 60),
            ],
        );
        // Cut anywhere: the answer section is incomplete, nothing is learned.
        for len in 0..msg.len() {
            assert_eq!(answer_addresses(&msg[..len]), None, "cut at {len}");
        }
        assert!(answer_addresses(&msg).is_some());
    }

    #[test]
    fn sections_after_the_answers_are_not_read() {
        // hickory-proto refused this whole message (a malformed additional record), so nothing
        // was learned; the answer section alone is what flow learning reads now.
        let mut msg = answer("a.example.", vec![a("a.example.", [198, 18, 7, 7], 60)]);
        msg[11] = 1; // ARCOUNT 1, and a record of label type 0x40
        msg.extend_from_slice(&[0x40, 0, 1, 0, 1, 0, 0, 0, 60, 0, 0]);
        assert!(Message::from_vec(&msg).is_err());
        let r = answer_addresses(&msg).expect("an answer");
        assert_eq!(r.addresses.len(), 1);
    }

    #[test]
    fn learned_address_marks_flows_of_that_client_until_the_ttl_passes() {
        let t0 = Instant::now();
        let mut l = Learned::new(LearnConfig {
            ttl_floor: Duration::from_secs(1),
            ttl_ceiling: Duration::from_secs(600),
            capacity: 100,
            per_client: usize::MAX,
        });
        let client: IpAddr = "198.18.1.2".parse().expect("ip");
        let other: IpAddr = "198.18.2.2".parse().expect("ip");
        let dst: IpAddr = "198.18.7.7".parse().expect("ip");
        l.learn(client, 0, dst, 10, T, t0);
        assert_eq!(
            l.lookup(client, 0, dst, t0 + Duration::from_secs(9)),
            Some(T)
        );
        assert_eq!(
            l.lookup(other, 0, dst, t0 + Duration::from_secs(1)),
            None,
            "another client"
        );
        assert_eq!(
            l.lookup(client, 0, "198.18.7.8".parse().expect("ip"), t0),
            None
        );
        assert_eq!(
            l.lookup(client, 0, dst, t0 + Duration::from_secs(10)),
            None,
            "expired"
        );
        assert!(l.is_empty());
        assert_eq!(l.counters.expired, 1);
    }

    #[test]
    fn ttl_is_clamped_to_floor_and_ceiling() {
        let t0 = Instant::now();
        let mut l = Learned::new(LearnConfig {
            ttl_floor: Duration::from_secs(5),
            ttl_ceiling: Duration::from_secs(50),
            capacity: 100,
            per_client: usize::MAX,
        });
        let c: IpAddr = "198.18.1.2".parse().expect("ip");
        let d1: IpAddr = "198.18.7.1".parse().expect("ip");
        let d2: IpAddr = "198.18.7.2".parse().expect("ip");
        l.learn(c, 0, d1, 0, T, t0);
        l.learn(c, 0, d2, 86_400, T, t0);
        assert!(l.lookup(c, 0, d1, t0 + Duration::from_secs(4)).is_some());
        assert!(l.lookup(c, 0, d1, t0 + Duration::from_secs(5)).is_none());
        assert!(l.lookup(c, 0, d2, t0 + Duration::from_secs(49)).is_some());
        assert!(l.lookup(c, 0, d2, t0 + Duration::from_secs(50)).is_none());
    }

    #[test]
    fn rules_keyed_by_mark_need_the_same_mark() {
        let t0 = Instant::now();
        let mut l = Learned::new(LearnConfig::default());
        let c: IpAddr = "198.18.1.2".parse().expect("ip");
        let d: IpAddr = "198.18.7.1".parse().expect("ip");
        let keyed = FlowTarget {
            by_mark: Some(0xff00),
            ..T
        };
        l.learn(c, 0x0100, d, 60, keyed, t0);
        assert_eq!(l.lookup(c, 0x01ff, d, t0), Some(keyed));
        assert_eq!(l.lookup(c, 0x0200, d, t0), None);
    }

    #[test]
    fn the_strongest_rule_wins() {
        let t0 = Instant::now();
        let mut l = Learned::new(LearnConfig::default());
        let c: IpAddr = "198.18.1.2".parse().expect("ip");
        let d: IpAddr = "198.18.7.1".parse().expect("ip");
        let weak = FlowTarget {
            rule: 9,
            mark: (1, 0xff),
            by_mark: None,
        };
        let strong = FlowTarget {
            rule: 2,
            mark: (2, 0xff),
            by_mark: None,
        };
        l.learn(c, 0, d, 60, weak, t0);
        l.learn(c, 0, d, 60, strong, t0);
        assert_eq!(l.lookup(c, 0, d, t0), Some(strong));
    }

    #[test]
    fn table_stays_within_capacity_and_refresh_does_not_grow_it() {
        let t0 = Instant::now();
        let mut l = Learned::new(LearnConfig {
            capacity: 1000,
            ..LearnConfig::default()
        });
        let c: IpAddr = "198.18.1.2".parse().expect("ip");
        for i in 0..50_000u32 {
            let d = IpAddr::V4(Ipv4Addr::from(0xc612_0000 | (i & 0xffff)));
            l.learn(c, 0, d, 60 + (i % 7), T, t0);
            assert!(l.len() <= 1000);
        }
        assert!(l.counters.evicted > 0);
        let d = IpAddr::V4(Ipv4Addr::new(198, 18, 200, 1));
        let before = l.len();
        for _ in 0..10 {
            l.learn(c, 0, d, 60, T, t0);
        }
        assert!(l.len() <= before + 1);
        let total: usize = l.entries.values().map(Vec::len).sum();
        assert_eq!(total, l.len(), "index and entries agree");
    }

    #[test]
    fn one_client_cannot_crowd_out_another() {
        let t0 = Instant::now();
        let mut l = Learned::new(LearnConfig {
            ttl_floor: Duration::from_secs(1),
            ttl_ceiling: Duration::from_secs(3600),
            capacity: 100,
            per_client: 10,
        });
        let a: IpAddr = "198.18.1.2".parse().expect("ip");
        let b: IpAddr = "198.18.2.2".parse().expect("ip");
        let real: IpAddr = "198.18.7.7".parse().expect("ip");
        l.learn(a, 0, real, 60, T, t0);
        for i in 0..1000u32 {
            let addr = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + i));
            l.learn(b, 0, addr, 3600, T, t0);
        }
        assert_eq!(l.len(), 11);
        assert_eq!(l.counters.over_quota, 990);
        assert_eq!(l.counters.evicted, 0);
        assert!(l.lookup(a, 0, real, t0).is_some());
        // Refreshing an entry already held is not refused.
        let first = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000));
        l.learn(b, 0, first, 3600, T, t0);
        assert_eq!(l.counters.over_quota, 990);
    }

    fn changes(l: &mut Learned) -> Vec<Change> {
        let mut v = Vec::new();
        l.take_changes(|c| v.push(c));
        v
    }

    #[test]
    fn the_outbox_holds_what_was_learned_refreshed_and_evicted_but_not_what_expired() {
        let t0 = Instant::now();
        let mut l = Learned::new(LearnConfig {
            ttl_floor: Duration::from_secs(5),
            ttl_ceiling: Duration::from_secs(50),
            capacity: 2,
            per_client: usize::MAX,
        });
        let c: IpAddr = "198.18.1.2".parse().expect("ip");
        let d = |i: u8| IpAddr::V4(Ipv4Addr::new(198, 18, 9, i));
        l.learn(c, 0, d(1), 60, T, t0);
        assert!(changes(&mut l).is_empty(), "no outbox until enabled");
        l.enable_outbox(8);
        // T is not keyed by mark: the client's mark (7) is not part of the entry.
        l.learn(c, 7, d(2), 1, T, t0);
        l.learn(c, 7, d(2), 30, T, t0 + Duration::from_secs(1));
        let got = changes(&mut l);
        assert_eq!(
            got,
            vec![
                Change::Put {
                    client: c,
                    client_mark: 0,
                    addr: d(2),
                    target: T,
                    ttl: Duration::from_secs(5),
                    at: t0,
                    refreshed: false,
                },
                Change::Put {
                    client: c,
                    client_mark: 0,
                    addr: d(2),
                    target: T,
                    ttl: Duration::from_secs(30),
                    at: t0 + Duration::from_secs(1),
                    refreshed: true,
                },
            ]
        );
        assert_eq!(l.counters.refreshed, 1);
        // A third address: the entry closest to expiry (d(2), at 31 s; d(1) runs to 50 s) is
        // evicted, and the mirror told.
        l.learn(c, 0, d(3), 40, T, t0 + Duration::from_secs(2));
        let got = changes(&mut l);
        assert_eq!(got.len(), 2);
        assert!(matches!(got[0], Change::Put { addr, .. } if addr == d(3)));
        assert_eq!(
            got[1],
            Change::Remove {
                client: c,
                client_mark: 0,
                addr: d(2),
                target: T
            }
        );
        // An entry that is itself the one closest to expiry is put, then removed at once.
        l.learn(c, 0, d(4), 1, T, t0 + Duration::from_secs(2));
        let got = changes(&mut l);
        assert!(matches!(got[0], Change::Put { addr, .. } if addr == d(4)));
        assert!(matches!(got[1], Change::Remove { addr, .. } if addr == d(4)));
        // Expiry: the kernel expires its elements itself.
        l.expire(t0 + Duration::from_secs(100));
        assert!(l.is_empty());
        assert!(changes(&mut l).is_empty());
    }

    #[test]
    fn a_full_outbox_drops_its_oldest_change_and_adoption_sends_nothing() {
        let t0 = Instant::now();
        let mut l = Learned::new(LearnConfig::default());
        l.enable_outbox(3);
        let c: IpAddr = "198.18.1.2".parse().expect("ip");
        for i in 1..=5u8 {
            l.learn(c, 0, IpAddr::V4(Ipv4Addr::new(198, 18, 9, i)), 60, T, t0);
        }
        assert_eq!(l.pending_changes(), 3);
        assert_eq!(l.counters.outbox_dropped, 2);
        let got = changes(&mut l);
        assert!(
            matches!(got[0], Change::Put { addr, .. } if addr == IpAddr::V4(Ipv4Addr::new(198, 18, 9, 3)))
        );
        let d = IpAddr::V4(Ipv4Addr::new(198, 18, 9, 77));
        assert!(l.adopt(c, 0, d, T, t0 + Duration::from_secs(20), t0));
        assert!(!l.adopt(c, 0, d, T, t0, t0), "already expired");
        assert_eq!(l.counters.adopted, 1);
        assert_eq!(l.pending_changes(), 0);
        assert_eq!(l.lookup(c, 0, d, t0 + Duration::from_secs(19)), Some(T));
        assert_eq!(l.lookup(c, 0, d, t0 + Duration::from_secs(20)), None);
    }
}
