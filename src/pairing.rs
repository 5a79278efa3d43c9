//! The pairing table: which client is waiting for which question, which upstream query was sent
//! on whose behalf, and which TCP connection the resolver is about to open for whom.
//!
//! This module owns the memory of nfqmark. Every table is bounded (a capacity, the oldest entry
//! evicted first; a bound per question and a quota per client host so that one LAN host cannot
//! crowd out another), expires entries by time with `now` always passed in, and does O(1)
//! amortized work per operation: lookups are hash lookups plus a scan of at most
//! [`PairingConfig::per_question`] entries, and expiry removes at most [`EXPIRE_BUDGET`]
//! entries per operation. It never sizes anything from a number read off the wire, takes no
//! lock and reads no clock: the worker does that.
//!
//! The four moments of one resolution (see the README for the iptables hooks):
//!
//! 1. client query (arrives for a local address): remember question, client, server address,
//!    id, mark, time;
//! 2. the resolver's upstream query (leaves this host) with the same question: give it the
//!    waiting client's mark, and remember the upstream flow and id;
//! 3. the upstream answer (arrives) on that flow with that id: same mark;
//! 4. the answer to the client (leaves, from the address the client asked, to the client's
//!    address and port, with its id and question): the client's mark.
//!
//! Resolvers pick a fresh id for the upstream query, may change the case of the name (0x20) and
//! merge identical questions from several clients into one upstream query, so step 2 matches by
//! question. Which waiting client an upstream query belongs to (the ambiguity policy):
//!
//! - a client whose id the resolver kept, if any;
//! - else the client that an earlier upstream query for this question already took (a resolution
//!   in progress: the resolver retries or asks another server on behalf of the same client);
//! - else the oldest client that asked within [`RECENT`] — a resolver sends its upstream query
//!   promptly after the client query that causes it, so an older unclaimed entry is one the
//!   resolver answered from its cache, merged, or never received;
//! - else the oldest waiting client.
//!
//! When waiting clients carry different marks the upstream query is counted as `ambiguous`. The
//! policy is chosen so that a LAN host cannot steer another client's mark: a query the resolver
//! never received (a bad checksum is refused before it gets here) or never acts on is never
//! claimed, so it cannot hold a slot against a later client; and a host that floods a question
//! fills only its own share of that question's entries and of the table.
//!
//! A full recursive resolver (unbound, knot-resolver) sends, for one client question, upstream
//! queries with other names: the question's ancestors (qname minimisation, DS and DNSKEY for
//! DNSSEC), the names of the name servers a referral points to and their ancestors, the targets
//! of CNAME and DNAME records. So a waiting client also owns, for its window, the names its
//! resolution may ask (causal attribution): its question's name and ancestors when it arrives,
//! and the names that upstream answers paired to it point to. An upstream query whose question
//! no client waits for is matched by name against those, its own name first, then derived
//! names, then ancestors; among several owners the oldest client, counted as `ambiguous` when
//! their marks differ (a top-level domain that both clients' names share, for instance).
//! Bounded: [`MAX_NAMES`] names per client, [`MAX_OWNERS`] owners per name.
//!
//! DNS over TCP needs a mark on the SYN, which carries no question. So the table also keeps
//! *intents*: after a truncated answer to an upstream query, the resolver's next TCP connection
//! to that server belongs to that query's client; after a client's query over TCP, the
//! resolver's next TCP connection to any server belongs to that client (a forwarder such as
//! dnsmasq forwards TCP queries over TCP). Intents are short-lived, claimed oldest first, and
//! dropped as soon as the client's query leaves by another way.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

// Keys come off the wire, so the hasher is seeded at random per table (foldhash is several times
// faster than the standard SipHash here and still resists chosen-collision floods).
use foldhash::fast::RandomState;

use crate::dns::QKey;
pub use crate::lru::Id;
use crate::lru::Lru;
use crate::packet::Proto;

/// Most entries removed by expiry in one operation: a burst of entries due at once is spread
/// over the next operations instead of stalling one packet. Entries past their window are
/// ignored by lookups until they are removed.
pub const EXPIRE_BUDGET: usize = 32;

/// An unclaimed client query younger than this is preferred over older unclaimed ones.
pub const RECENT: Duration = Duration::from_secs(1);

/// How long an intent to open a TCP connection waits for the resolver's SYN.
pub const INTENT_WINDOW: Duration = Duration::from_secs(3);

/// Most intents waiting at once (a resolver opens few TCP connections at a time).
const INTENT_CAPACITY: usize = 4096;

/// Most names one waiting client owns (its question's, its ancestors', and the names answers to
/// its resolution point to).
pub const MAX_NAMES: usize = 48;

/// Most waiting clients that own one name; beyond it, the newest owner is not added.
pub const MAX_OWNERS: usize = 16;

/// How long a DNS-over-TCP connection's mark is remembered after its last packet.
pub const CONN_IDLE: Duration = Duration::from_secs(300);

/// Most DNS-over-TCP connections remembered at once; the least recently used is forgotten.
const CONN_CAPACITY: usize = 16_384;

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
    /// Most clients waiting for one question; beyond it, an entry of the client host holding
    /// the most of them is evicted.
    pub per_question: usize,
    /// Most client queries one host (an IPv4 address, an IPv6 /64) may have waiting; beyond
    /// it, its new queries are not recorded (they are still answered, unmarked upstream).
    pub per_client: usize,
    /// When answers to clients are not queued (`--lean`), a client query is retired this long
    /// after an upstream query took it, instead of at its answer (enough for the resolver's
    /// retries). A claimed query then only waits for retries: it does not count against its
    /// host's quota, and it is the first to go when the table is full, so the table keeps
    /// room for unclaimed queries at any rate.
    pub claimed_grace: Option<Duration>,
}

impl Default for PairingConfig {
    fn default() -> Self {
        PairingConfig {
            window: Duration::from_secs(5),
            client_capacity: 65_536,
            upstream_capacity: 65_536,
            mask: u32::MAX,
            per_question: 16,
            per_client: 16_384,
            claimed_grace: None,
        }
    }
}

/// Outcome counters. Plain integers: the table lives behind one lock and these live with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairingCounters {
    /// Client queries remembered (retransmissions of a waiting query are not counted again).
    pub client_queries: u64,
    /// Client queries not remembered because their host had `per_client` queries waiting.
    pub over_quota: u64,
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
    /// Intents recorded: the resolver is expected to open a TCP connection for a client.
    pub tcp_intents: u64,
    /// Resolver TCP connections (SYN) that took a waiting intent's mark.
    pub tcp_opened: u64,
    /// ... of which other waiting intents carried another mark.
    pub tcp_ambiguous: u64,
    /// Resolver TCP connections that found no intent.
    pub tcp_unpaired: u64,
    /// Resolver TCP connections whose client the kernel named (the process holding the
    /// connection also holds that client's connection: sock_diag), where timing was ambiguous.
    pub tcp_by_socket: u64,
    /// DNS queries routed through this host, remembered for their answers.
    pub forwarded_queries: u64,
    /// Upstream queries paired by name to a waiting client's resolution (no client asked their
    /// question): the question's own name with another type, an ancestor of it, a name an
    /// answer to the resolution pointed to (name server, CNAME/DNAME target) or its ancestor.
    pub by_own_name: u64,
    pub by_ancestor: u64,
    pub by_derived: u64,
    /// Entries dropped because their window passed.
    pub expired: u64,
    /// Entries dropped because a table, or a question's share of it, was full.
    pub evicted: u64,
    /// Client queries retired after their grace (answers not queued: `--lean`).
    pub retired: u64,
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

/// Who asked: the client's address and port, the address and port it asked, and the DNS id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Asker {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub id: u16,
}

/// A DNS-over-TCP connection of this host, from this host's side: the resolver's connection to
/// a server (local = the resolver's address and port) or a client's connection to the resolver
/// (local = the address and port the client connected to).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// A client's TCP connection waiting for the resolver to open its upstream connection: a
/// candidate the kernel can confirm (see `crate::sockdiag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpCandidate {
    pub intent: Id,
    /// The client's connection to the resolver, from this host's side.
    pub client: ConnKey,
    pub mark: u32,
}

/// What the table says about an upstream query or a resolver's TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamMatch {
    /// A waiting client's mark; `ambiguous` when other waiting clients had other marks.
    Paired { mark: u32, ambiguous: bool },
    /// Nobody waits for this question.
    Unpaired,
}

/// What happened to a client query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New,
    /// A retransmission of a waiting query: refreshed.
    Refreshed,
    /// Its host had too many queries waiting: not recorded.
    OverQuota,
    /// The table holds nothing (capacity 0).
    Off,
}

/// A client host, for quotas: an IPv4 address, or an IPv6 /64 (one host may use many
/// addresses of its prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Host {
    V4(u32),
    V6(u64),
}

impl Host {
    fn of(addr: IpAddr) -> Host {
        match addr {
            IpAddr::V4(a) => Host::V4(u32::from(a)),
            IpAddr::V6(a) => Host::V6((u128::from(a) >> 64) as u64),
        }
    }
}

#[derive(Debug, Clone)]
struct ClientEntry {
    question: QKey,
    asker: Asker,
    host: Host,
    mark: u32,
    /// Set when an upstream query took this client (its resolution is in progress): the order
    /// of claims, so the first claimer stays the owner of retries.
    claim: Option<u64>,
    /// The intent this query holds for a TCP connection the resolver is expected to open.
    intent: Option<Id>,
    /// The names this query owns in [`Pairing::names`] (hashes), to take them back when it goes.
    names: Vec<u64>,
}

/// What a name is to the resolution that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NameKind {
    /// The question's own name (asked with another type: A before AAAA, DS...).
    Own,
    /// A name an answer to the resolution pointed to: a name server, a CNAME or DNAME target.
    Derived,
    /// An ancestor of a derived name (minimised lookups of a name server's address).
    DerivedAncestor,
    /// An ancestor of the question's name (qname minimisation, DS and DNSKEY).
    Ancestor,
}

#[derive(Debug, Clone, Copy)]
struct NameOwner {
    owner: Id,
    kind: NameKind,
}

#[derive(Debug, Clone, Copy)]
struct UpstreamEntry {
    flow: FlowKey,
    mark: u32,
    /// The client entry this query was sent for.
    owner: Option<Id>,
}

#[derive(Debug, Clone, Copy)]
struct Intent {
    mark: u32,
    owner: Option<Id>,
}

#[derive(Debug, Clone, Copy)]
struct Forwarded {
    key: (Asker, Proto),
}

/// The pairing state. One per process, shared by all queue workers behind a lock.
#[derive(Debug)]
pub struct Pairing {
    config: PairingConfig,
    clients: Lru<ClientEntry>,
    /// Waiting clients per question, in arrival order, at most `per_question` each.
    by_question: HashMap<QKey, Vec<Id>, RandomState>,
    per_host: HashMap<Host, usize, RandomState>,
    upstream: Lru<UpstreamEntry>,
    by_flow: HashMap<FlowKey, Id, RandomState>,
    intents: Lru<Intent>,
    /// Waiting intents per server (`None`: any server), oldest first; may hold stale handles,
    /// which are skipped.
    intents_by_server: HashMap<Option<SocketAddr>, VecDeque<Id>, RandomState>,
    forwarded: Lru<Forwarded>,
    forwarded_by_key: HashMap<(Asker, Proto), (Id, QKey), RandomState>,
    /// Names waiting clients' resolutions may ask, by hash of the lower-cased wire form (seeded
    /// per process), with their owners.
    names: HashMap<u64, Vec<NameOwner>, RandomState>,
    name_hash: RandomState,
    /// Set once an upstream query matched no waiting question: the resolver recurses (or sends
    /// queries of its own), so names are attributed from then on. A forwarder whose every
    /// upstream query is a client's question never pays for it.
    attributing: bool,
    /// The mark each DNS-over-TCP connection started with: its later packets keep it.
    conns: Lru<(ConnKey, u32)>,
    conn_by_key: HashMap<ConnKey, Id, RandomState>,
    /// Claimed client queries in claim order, for `claimed_grace`: the entry, its claim number
    /// (a slot reused by a later entry has another) and when it was claimed. At most as long
    /// as the client table.
    claimed: VecDeque<(Id, u64, Instant)>,
    next_claim: u64,
    pub counters: PairingCounters,
}

impl Pairing {
    pub fn new(config: PairingConfig) -> Pairing {
        Pairing {
            config,
            clients: Lru::new(),
            by_question: HashMap::default(),
            per_host: HashMap::default(),
            upstream: Lru::new(),
            by_flow: HashMap::default(),
            intents: Lru::new(),
            intents_by_server: HashMap::default(),
            forwarded: Lru::new(),
            forwarded_by_key: HashMap::default(),
            names: HashMap::default(),
            name_hash: RandomState::default(),
            attributing: false,
            conns: Lru::new(),
            conn_by_key: HashMap::default(),
            claimed: VecDeque::new(),
            next_claim: 0,
            counters: PairingCounters::default(),
        }
    }

    pub fn config(&self) -> &PairingConfig {
        &self.config
    }

    /// Client queries waiting now (some may be past their window and not yet removed).
    pub fn client_len(&self) -> usize {
        self.clients.len()
    }

    /// Upstream queries waiting for their answer now.
    pub fn upstream_len(&self) -> usize {
        self.upstream.len()
    }

    /// Intents waiting for the resolver's TCP connection.
    pub fn intent_len(&self) -> usize {
        self.intents.len()
    }

    /// Entries at or before this instant are past their window.
    fn cutoff(&self, now: Instant) -> Option<Instant> {
        now.checked_sub(self.config.window)
    }

    /// Entries at or before this instant are past the intent window.
    fn intent_cutoff(&self, now: Instant) -> Option<Instant> {
        now.checked_sub(INTENT_WINDOW.min(self.config.window))
    }

    fn fresh(&self, id: Id, cutoff: Option<Instant>) -> bool {
        touched_after(&self.clients, id, cutoff)
    }

    /// Step 1: a client query arrived. A retransmission (same client, port, server, id,
    /// question) only refreshes the waiting entry and takes its newest mark.
    pub fn client_query(
        &mut self,
        question: &QKey,
        asker: Asker,
        mark: u32,
        via: Proto,
        now: Instant,
    ) -> Recorded {
        self.expire(now);
        if self.config.client_capacity == 0 {
            return Recorded::Off;
        }
        if let Some(id) = self.by_question.get(question).and_then(|ids| {
            ids.iter()
                .copied()
                .find(|&id| self.clients.get(id).is_some_and(|e| e.asker == asker))
        }) {
            if let Some(e) = self.clients.get_mut(id) {
                e.mark = mark;
            }
            self.clients.touch(id, now);
            return Recorded::Refreshed;
        }
        let host = Host::of(asker.client.ip());
        if self.per_host.get(&host).copied().unwrap_or(0) >= self.config.per_client {
            self.counters.over_quota += 1;
            return Recorded::OverQuota;
        }
        if self
            .by_question
            .get(question)
            .is_some_and(|ids| ids.len() >= self.config.per_question)
        {
            self.evict_from_question(question, host);
        }
        while self.clients.len() >= self.config.client_capacity {
            if self.retire_oldest_claimed() {
                continue;
            }
            let Some((id, _, _)) = self.clients.oldest() else {
                break;
            };
            self.remove_client(id);
            self.counters.evicted += 1;
        }
        if self.config.per_question == 0 {
            return Recorded::Off;
        }
        let entry = ClientEntry {
            question: question.clone(),
            asker,
            host,
            mark,
            claim: None,
            intent: None,
            names: Vec::new(),
        };
        let Some(id) = self.clients.insert(entry, now) else {
            return Recorded::Off;
        };
        self.by_question
            .entry(question.clone())
            .or_default()
            .push(id);
        *self.per_host.entry(host).or_default() += 1;
        if self.attributing {
            self.own_names(id, question.wire_name(), NameKind::Own, NameKind::Ancestor);
        }
        self.counters.client_queries += 1;
        if via == Proto::Tcp && !self.has_client_intent(asker, now) {
            // One intent per client connection: a forwarder serves a client's pipelined queries
            // over one upstream connection.
            self.add_intent(None, mark, Some(id), now);
        }
        Recorded::New
    }

    /// The question's share is full. A host that already holds entries of it gives up its own
    /// oldest (a host flooding one name only displaces itself, in one pass); a host asking for
    /// the first time takes the oldest entry of the host holding the most of them.
    fn evict_from_question(&mut self, question: &QKey, asking: Host) {
        let Some(ids) = self.by_question.get(question) else {
            return;
        };
        let oldest_of = |host: Host| {
            let of = |claimed: bool| {
                ids.iter().copied().find(|&id| {
                    self.clients
                        .get(id)
                        .is_some_and(|e| e.host == host && e.claim.is_some() == claimed)
                })
            };
            of(false).or_else(|| of(true))
        };
        let victim = oldest_of(asking).or_else(|| {
            let mut heaviest: Option<(Host, usize)> = None;
            for &id in ids {
                let Some(e) = self.clients.get(id) else {
                    continue;
                };
                let n = ids
                    .iter()
                    .filter(|&&o| self.clients.get(o).is_some_and(|x| x.host == e.host))
                    .count();
                if heaviest.is_none_or(|(_, m)| n > m) {
                    heaviest = Some((e.host, n));
                }
            }
            heaviest.and_then(|(host, _)| oldest_of(host))
        });
        if let Some(id) = victim.or_else(|| ids.first().copied()) {
            self.remove_client(id);
            self.counters.evicted += 1;
        }
    }

    fn hash_name(&self, wire: &[u8]) -> u64 {
        use std::hash::BuildHasher as _;
        self.name_hash.hash_one(wire)
    }

    /// Let client entry `owner` own `wire` (as `first`) and its ancestors up to the root (as
    /// `rest`: a cold resolver's root priming and DNSKEY lookup belong to the first resolution
    /// that needs them), within the bounds.
    fn own_names(&mut self, owner: Id, wire: &[u8], first: NameKind, rest: NameKind) {
        let mut kind = first;
        let mut wire = wire;
        loop {
            if wire.is_empty() {
                return;
            }
            let held = self.clients.get(owner).map_or(MAX_NAMES, |e| e.names.len());
            if held >= MAX_NAMES {
                return;
            }
            let hash = self.hash_name(wire);
            let owners = self.names.entry(hash).or_default();
            if let Some(o) = owners.iter_mut().find(|o| o.owner == owner) {
                o.kind = o.kind.min(kind);
            } else if owners.len() < MAX_OWNERS {
                owners.push(NameOwner { owner, kind });
                if let Some(e) = self.clients.get_mut(owner) {
                    e.names.push(hash);
                }
            }
            kind = rest;
            match wire.first() {
                Some(&len) if len != 0 => {
                    wire = wire.get(1 + usize::from(len)..).unwrap_or_default();
                }
                _ => return,
            }
        }
    }

    /// Whether names are attributed (see the field): callers read an upstream answer's names
    /// only then.
    pub fn attributing(&self) -> bool {
        self.attributing
    }

    /// The first upstream query no client asked: from now on every waiting client owns its
    /// names, those waiting now included (a one-time walk over the table).
    pub fn start_attributing(&mut self) {
        self.attributing = true;
        let mut waiting = Vec::with_capacity(self.clients.len());
        for ids in self.by_question.values() {
            waiting.extend(ids.iter().copied());
        }
        for id in waiting {
            if let Some(wire) = self
                .clients
                .get(id)
                .map(|e| e.question.wire_name().to_vec())
            {
                self.own_names(id, &wire, NameKind::Own, NameKind::Ancestor);
            }
        }
        log::info!(
            "the resolver sends queries no client asked (it recurses): attributing them by name \
             to the resolutions that cause them"
        );
    }

    /// An upstream query no client asked: the waiting resolution that owns its name, by kind
    /// (own name, derived, derived ancestor, ancestor), then oldest client first.
    fn by_name(&mut self, question: &QKey, flow: FlowKey, now: Instant) -> UpstreamMatch {
        if !self.attributing {
            self.start_attributing();
        }
        let cutoff = self.cutoff(now);
        let hash = self.hash_name(question.wire_name());
        let Some(owners) = self.names.get(&hash) else {
            self.counters.unpaired += 1;
            return UpstreamMatch::Unpaired;
        };
        let live: Vec<NameOwner> = owners
            .iter()
            .copied()
            .filter(|o| self.fresh(o.owner, cutoff))
            .collect();
        let best = live
            .iter()
            .min_by_key(|o| (o.kind, self.clients.touched_at(o.owner)));
        let Some((owner, kind, mark)) =
            best.and_then(|o| self.clients.get(o.owner).map(|e| (o.owner, o.kind, e.mark)))
        else {
            self.counters.unpaired += 1;
            return UpstreamMatch::Unpaired;
        };
        let mask = self.config.mask;
        let ambiguous = live.iter().any(|o| {
            self.clients
                .get(o.owner)
                .is_some_and(|e| e.mark & mask != mark & mask)
        });
        match kind {
            NameKind::Own => self.counters.by_own_name += 1,
            NameKind::Ancestor => self.counters.by_ancestor += 1,
            NameKind::Derived | NameKind::DerivedAncestor => self.counters.by_derived += 1,
        }
        self.counters.paired += 1;
        if ambiguous {
            self.counters.ambiguous += 1;
        }
        self.remember_upstream(flow, mark, Some(owner), now);
        UpstreamMatch::Paired { mark, ambiguous }
    }

    /// Names an upstream answer points to (name servers of a referral, CNAME and DNAME
    /// targets): owned, with their ancestors, by the resolution the answered query was sent
    /// for.
    fn derive(&mut self, owner: Id, derived: &[crate::dns::Name]) {
        for name in derived {
            self.own_names(
                owner,
                name.wire(),
                NameKind::Derived,
                NameKind::DerivedAncestor,
            );
        }
    }

    /// Step 2: the resolver sends a query upstream. Returns the mark to give it.
    pub fn upstream_query(
        &mut self,
        question: &QKey,
        flow: FlowKey,
        now: Instant,
    ) -> UpstreamMatch {
        self.expire(now);
        let cutoff = self.cutoff(now);
        let Some(ids) = self.by_question.get(question) else {
            return self.by_name(question, flow, now);
        };
        let live: Vec<Id> = ids
            .iter()
            .copied()
            .filter(|&id| self.fresh(id, cutoff))
            .collect();
        let Some(chosen) = self.choose(&live, flow.id, now) else {
            return self.by_name(question, flow, now);
        };
        let Some(entry) = self.clients.get(chosen) else {
            self.counters.unpaired += 1;
            return UpstreamMatch::Unpaired;
        };
        let mark = entry.mark;
        let mask = self.config.mask;
        let ambiguous = live.iter().any(|&id| {
            self.clients
                .get(id)
                .is_some_and(|e| e.mark & mask != mark & mask)
        });
        if entry.claim.is_none() {
            self.next_claim += 1;
            let claim = self.next_claim;
            let mut host = None;
            if let Some(e) = self.clients.get_mut(chosen) {
                e.claim = Some(claim);
                host = Some(e.host);
            }
            if self.config.claimed_grace.is_some() {
                // From now on it only waits for the resolver's retries: off its host's quota.
                if let Some(host) = host {
                    self.uncount_host(host);
                }
                if self.claimed.len() >= self.config.client_capacity {
                    self.retire_oldest_claimed();
                }
                self.claimed.push_back((chosen, claim, now));
            }
        }
        // The client's query left upstream: an intent it had for a TCP connection (a query it
        // sent over TCP, forwarded over UDP here) is void, or was just used.
        self.drop_intents_of(chosen);
        self.counters.paired += 1;
        if ambiguous {
            self.counters.ambiguous += 1;
        }
        self.remember_upstream(flow, mark, Some(chosen), now);
        UpstreamMatch::Paired { mark, ambiguous }
    }

    /// The ambiguity policy (see the module header). `live` is in arrival order.
    fn choose(&self, live: &[Id], id: u16, now: Instant) -> Option<Id> {
        let entry = |x: &Id| self.clients.get(*x);
        if let Some(&kept) = live
            .iter()
            .find(|x| entry(x).is_some_and(|e| e.asker.id == id))
        {
            return Some(kept);
        }
        let owner = live
            .iter()
            .filter_map(|x| entry(x).and_then(|e| e.claim).map(|c| (c, *x)))
            .min_by_key(|(c, _)| *c);
        if let Some((_, owner)) = owner {
            return Some(owner);
        }
        let recent = now.checked_sub(RECENT);
        live.iter()
            .copied()
            .find(|&x| self.fresh(x, recent))
            .or_else(|| live.first().copied())
    }

    fn remember_upstream(&mut self, flow: FlowKey, mark: u32, owner: Option<Id>, now: Instant) {
        if self.config.upstream_capacity == 0 {
            return;
        }
        if let Some(&id) = self.by_flow.get(&flow) {
            if let Some(e) = self.upstream.get_mut(id) {
                e.mark = mark;
                e.owner = owner;
            }
            self.upstream.touch(id, now);
            return;
        }
        while self.upstream.len() >= self.config.upstream_capacity {
            let Some((_, e)) = self.upstream.pop_oldest() else {
                break;
            };
            self.by_flow.remove(&e.flow);
            self.counters.evicted += 1;
        }
        if let Some(id) = self
            .upstream
            .insert(UpstreamEntry { flow, mark, owner }, now)
        {
            self.by_flow.insert(flow, id);
        }
    }

    /// Step 3: an answer arrived from upstream. `flow` is written from this host's side (local =
    /// the answer's destination). Returns the mark of the upstream query it answers. A
    /// truncated answer over UDP announces the resolver's TCP retry to that server.
    pub fn upstream_answer(
        &mut self,
        flow: &FlowKey,
        truncated: bool,
        now: Instant,
    ) -> Option<u32> {
        self.upstream_answer_with(flow, truncated, &[], now)
    }

    /// [`Pairing::upstream_answer`], with the names the answer points to (name servers of a
    /// referral, CNAME and DNAME targets): the resolution it answers owns them from now on.
    pub fn upstream_answer_with(
        &mut self,
        flow: &FlowKey,
        truncated: bool,
        derived: &[crate::dns::Name],
        now: Instant,
    ) -> Option<u32> {
        self.expire(now);
        let id = self.by_flow.remove(flow)?;
        let due = match (self.upstream.touched_at(id), self.cutoff(now)) {
            (Some(at), Some(cutoff)) => at <= cutoff,
            _ => false,
        };
        let entry = self.upstream.remove(id)?;
        if due {
            self.counters.expired += 1;
            return None;
        }
        self.counters.upstream_answers += 1;
        if let Some(owner) = entry.owner
            && self.attributing
            && !derived.is_empty()
        {
            self.derive(owner, derived);
        }
        if truncated && flow.proto == Proto::Udp {
            self.add_intent(Some(flow.remote), entry.mark, entry.owner, now);
        }
        Some(entry.mark)
    }

    /// Step 4: the resolver answers a client. Returns the client's mark and forgets the query.
    /// The answer must come from the address and port the client asked, to the client's
    /// address and port, with its id and question.
    pub fn client_answer(&mut self, question: &QKey, asker: Asker, now: Instant) -> Option<u32> {
        self.expire(now);
        let cutoff = self.cutoff(now);
        let id = self.by_question.get(question).and_then(|ids| {
            ids.iter()
                .copied()
                .find(|&id| self.clients.get(id).is_some_and(|e| e.asker == asker))
        })?;
        if !self.fresh(id, cutoff) {
            return None;
        }
        let entry = self.remove_client(id)?;
        self.counters.client_answers += 1;
        Some(entry.mark)
    }

    /// The resolver opens a TCP connection (its SYN, `key.remote` the server): the mark of the
    /// oldest intent for that server, else of the oldest intent for any server. A SYN sent
    /// again finds the mark its connection already has.
    pub fn tcp_open(&mut self, key: ConnKey, now: Instant) -> UpstreamMatch {
        self.expire(now);
        if let Some(mark) = self.conn_mark(key, now) {
            return UpstreamMatch::Paired {
                mark,
                ambiguous: false,
            };
        }
        let (conn, server) = (key, key.remote);
        for key in [Some(server), None] {
            if let Some((mark, ambiguous)) = self.claim_intent(key, now) {
                self.counters.tcp_opened += 1;
                self.remember_conn(conn, mark, now);
                if ambiguous {
                    self.counters.tcp_ambiguous += 1;
                }
                return UpstreamMatch::Paired { mark, ambiguous };
            }
        }
        self.counters.tcp_unpaired += 1;
        log::debug!(
            "resolver TCP connection {} -> {}: no client waits for it ({} intents held)",
            conn.local,
            conn.remote,
            self.intents.len()
        );
        UpstreamMatch::Unpaired
    }

    /// When timing cannot tell whose query a resolver's new TCP connection serves: the waiting
    /// clients' TCP connections (oldest first, at most `limit`), when two or more wait, or one
    /// and an intent from a truncated answer of this server. Empty when timing is enough. If
    /// the kernel names none of them, [`Pairing::tcp_open`] decides (truncated answers first).
    pub fn tcp_candidates(&self, key: ConnKey, now: Instant, limit: usize) -> Vec<TcpCandidate> {
        if self.conn_by_key.contains_key(&key) {
            return Vec::new();
        }
        let cutoff = self.intent_cutoff(now);
        let fresh = |id: Id| touched_after(&self.intents, id, cutoff);
        let server_intents = self
            .intents_by_server
            .get(&Some(key.remote))
            .is_some_and(|q| q.iter().any(|&id| fresh(id)));
        let Some(queue) = self.intents_by_server.get(&None) else {
            return Vec::new();
        };
        // With two or more clients waiting the kernel is asked even when their marks agree:
        // timing would hand one client's intent to another's connection, and the client left
        // without its intent would later be mistaken too. With one client waiting and a
        // truncated answer from this server pending too, the kernel tells which it is (a
        // forwarder's child serving the client, or the resolver retrying itself).
        let waiting = queue.iter().filter(|&&id| fresh(id)).take(2).count();
        if waiting == 0 || (waiting == 1 && !server_intents) {
            return Vec::new();
        }
        queue
            .iter()
            .copied()
            .filter(|&id| fresh(id))
            .filter_map(|id| {
                let intent = self.intents.get(id)?;
                let owner = self.clients.get(intent.owner?)?;
                Some(TcpCandidate {
                    intent: id,
                    client: ConnKey {
                        local: owner.asker.server,
                        remote: owner.asker.client,
                    },
                    mark: intent.mark,
                })
            })
            .take(limit)
            .collect()
    }

    /// The resolver's new TCP connection serves the client of this intent (the kernel said so):
    /// it takes that intent's mark. Falls back to [`Pairing::tcp_open`] if the intent is gone.
    pub fn tcp_open_for(&mut self, key: ConnKey, intent: Id, now: Instant) -> UpstreamMatch {
        let Some(chosen) = self.intents.remove(intent) else {
            return self.tcp_open(key, now);
        };
        self.counters.tcp_opened += 1;
        self.counters.tcp_by_socket += 1;
        self.remember_conn(key, chosen.mark, now);
        UpstreamMatch::Paired {
            mark: chosen.mark,
            ambiguous: false,
        }
    }

    fn claim_intent(&mut self, key: Option<SocketAddr>, now: Instant) -> Option<(u32, bool)> {
        let cutoff = self.intent_cutoff(now);
        let queue = self.intents_by_server.get_mut(&key)?;
        let mut chosen = None;
        while let Some(id) = queue.pop_front() {
            if touched_after(&self.intents, id, cutoff) {
                chosen = self.intents.remove(id);
                break;
            }
        }
        let mask = self.config.mask;
        let result = chosen.map(|intent| {
            let ambiguous = queue.iter().any(|&id| {
                self.intents
                    .get(id)
                    .is_some_and(|o| o.mark & mask != intent.mark & mask)
            });
            (intent.mark, ambiguous)
        });
        if queue.is_empty() {
            self.intents_by_server.remove(&key);
        }
        result
    }

    fn add_intent(
        &mut self,
        server: Option<SocketAddr>,
        mark: u32,
        owner: Option<Id>,
        now: Instant,
    ) {
        while self.intents.len() >= INTENT_CAPACITY {
            if self.intents.pop_oldest().is_none() {
                break;
            }
            self.counters.evicted += 1;
        }
        if let Some(id) = self.intents.insert(Intent { mark, owner }, now) {
            // One intent per query: a newer one (another truncated answer) replaces it.
            if let Some(old) = owner
                .and_then(|o| self.clients.get_mut(o))
                .and_then(|e| e.intent.replace(id))
            {
                self.intents.remove(old);
            }
            let queue = self.intents_by_server.entry(server).or_default();
            // Stale handles (claimed or expired intents) are dropped as the queue is used; keep
            // the queue bounded even if it is never used.
            if queue.len() >= INTENT_CAPACITY {
                queue.pop_front();
            }
            queue.push_back(id);
            self.counters.tcp_intents += 1;
        }
    }

    /// Whether a query of this client connection (address, port, server) already waits for
    /// the resolver's TCP connection.
    fn has_client_intent(&self, asker: Asker, now: Instant) -> bool {
        let cutoff = self.intent_cutoff(now);
        let Some(queue) = self.intents_by_server.get(&None) else {
            return false;
        };
        // Intents of one connection are the newest ones when its queries arrive together: a
        // short scan from the newest end finds it.
        queue.iter().rev().take(64).any(|&id| {
            touched_after(&self.intents, id, cutoff)
                && self
                    .intents
                    .get(id)
                    .and_then(|i| i.owner)
                    .and_then(|o| self.clients.get(o))
                    .is_some_and(|e| {
                        e.asker.client == asker.client && e.asker.server == asker.server
                    })
        })
    }

    /// Intents owned by a client entry whose query has now left by another way.
    fn drop_intents_of(&mut self, owner: Id) {
        if let Some(intent) = self.clients.get_mut(owner).and_then(|e| e.intent.take()) {
            self.intents.remove(intent);
        }
    }

    /// Remember the mark a DNS-over-TCP connection started with (its SYN's, or for a client's
    /// connection to the resolver, its first query's). A connection already remembered keeps
    /// its mark.
    pub fn remember_conn(&mut self, key: ConnKey, mark: u32, now: Instant) {
        if let Some(&id) = self.conn_by_key.get(&key) {
            self.conns.touch(id, now);
            return;
        }
        while self.conns.len() >= CONN_CAPACITY {
            let Some((_, (old, _))) = self.conns.pop_oldest() else {
                break;
            };
            self.conn_by_key.remove(&old);
        }
        if let Some(id) = self.conns.insert((key, mark), now) {
            self.conn_by_key.insert(key, id);
        }
    }

    /// The mark a DNS-over-TCP connection started with, if it is remembered.
    pub fn conn_mark(&mut self, key: ConnKey, now: Instant) -> Option<u32> {
        let id = *self.conn_by_key.get(&key)?;
        let mark = self.conns.get(id)?.1;
        self.conns.touch(id, now);
        Some(mark)
    }

    /// Connections remembered now.
    pub fn conn_len(&self) -> usize {
        self.conns.len()
    }

    /// A DNS query routed through this host (client to a server elsewhere): remembered so that
    /// its answer can be recognised.
    pub fn forwarded_query(&mut self, question: &QKey, asker: Asker, via: Proto, now: Instant) {
        self.expire(now);
        if self.config.upstream_capacity == 0 {
            return;
        }
        let key = (asker, via);
        if let Some((id, _)) = self.forwarded_by_key.get(&key) {
            let id = *id;
            self.forwarded.touch(id, now);
            if let Some(slot) = self.forwarded_by_key.get_mut(&key) {
                slot.1 = question.clone();
            }
            return;
        }
        while self.forwarded.len() >= self.config.upstream_capacity {
            let Some((_, f)) = self.forwarded.pop_oldest() else {
                break;
            };
            self.forwarded_by_key.remove(&f.key);
            self.counters.evicted += 1;
        }
        if let Some(id) = self.forwarded.insert(Forwarded { key }, now) {
            self.forwarded_by_key.insert(key, (id, question.clone()));
            self.counters.forwarded_queries += 1;
        }
    }

    /// The answer to a routed query: true when it answers a query seen going the other way
    /// (same addresses, ports, id and question) within the window. Forgets the query.
    pub fn forwarded_answer(
        &mut self,
        question: &QKey,
        asker: Asker,
        via: Proto,
        now: Instant,
    ) -> bool {
        self.expire(now);
        let key = (asker, via);
        let Some((id, asked)) = self.forwarded_by_key.get(&key) else {
            return false;
        };
        if asked != question {
            return false;
        }
        let id = *id;
        let fresh = touched_after(&self.forwarded, id, self.cutoff(now));
        self.forwarded_by_key.remove(&key);
        self.forwarded.remove(id);
        fresh
    }

    fn remove_client(&mut self, id: Id) -> Option<ClientEntry> {
        let entry = self.clients.remove(id)?;
        for hash in &entry.names {
            if let Some(owners) = self.names.get_mut(hash) {
                owners.retain(|o| o.owner != id);
                if owners.is_empty() {
                    self.names.remove(hash);
                }
            }
        }
        // A client that has its answer (or is forgotten) needs no connection opened for it: a
        // forwarder that relays a truncated answer leaves the TCP retry to its client.
        if let Some(intent) = entry.intent {
            self.intents.remove(intent);
        }
        if let Some(ids) = self.by_question.get_mut(&entry.question) {
            ids.retain(|&x| x != id);
            if ids.is_empty() {
                self.by_question.remove(&entry.question);
            }
        }
        // With a grace, a claimed entry left its host's count when it was claimed.
        if entry.claim.is_none() || self.config.claimed_grace.is_none() {
            self.uncount_host(entry.host);
        }
        Some(entry)
    }

    fn uncount_host(&mut self, host: Host) {
        if let Some(n) = self.per_host.get_mut(&host) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_host.remove(&host);
            }
        }
    }

    /// Retire the longest-claimed client query still in the table (`claimed_grace` only);
    /// false when there is none.
    fn retire_oldest_claimed(&mut self) -> bool {
        while let Some((id, claim, _)) = self.claimed.pop_front() {
            if self.clients.get(id).is_some_and(|e| e.claim == Some(claim)) {
                self.remove_client(id);
                self.counters.retired += 1;
                return true;
            }
        }
        false
    }

    /// Drop entries whose window has passed: at most [`EXPIRE_BUDGET`] per table per call, so
    /// no single packet pays for a burst of entries due at once. Called by every operation.
    pub fn expire(&mut self, now: Instant) {
        let Some(cutoff) = self.cutoff(now) else {
            return;
        };
        for _ in 0..EXPIRE_BUDGET {
            let Some((id, at, _)) = self.clients.oldest() else {
                break;
            };
            if at > cutoff {
                break;
            }
            self.remove_client(id);
            self.counters.expired += 1;
        }
        if let Some(grace) = self.config.claimed_grace {
            for _ in 0..EXPIRE_BUDGET {
                match self.claimed.front() {
                    Some(&(id, claim, at)) if at + grace <= now => {
                        self.claimed.pop_front();
                        // Only the entry that was claimed: its slot may hold a newer one.
                        if self.clients.get(id).is_some_and(|e| e.claim == Some(claim)) {
                            self.remove_client(id);
                            self.counters.retired += 1;
                        }
                    }
                    _ => break,
                }
            }
        }
        // With a grace (answers are not queued), an upstream query's entry waits only for a
        // truncated answer, queued to announce a TCP retry: it lives as long as a claim.
        let upstream_cutoff = self
            .config
            .claimed_grace
            .and_then(|g| now.checked_sub(g))
            .map_or(cutoff, |c| c.max(cutoff));
        for _ in 0..EXPIRE_BUDGET {
            let Some((_, e)) = self.upstream.pop_due(upstream_cutoff) else {
                break;
            };
            self.by_flow.remove(&e.flow);
            self.counters.expired += 1;
        }
        for _ in 0..EXPIRE_BUDGET {
            let Some((_, f)) = self.forwarded.pop_due(cutoff) else {
                break;
            };
            self.forwarded_by_key.remove(&f.key);
        }
        if let Some(idle) = now.checked_sub(CONN_IDLE) {
            for _ in 0..EXPIRE_BUDGET {
                let Some((_, (key, _))) = self.conns.pop_due(idle) else {
                    break;
                };
                self.conn_by_key.remove(&key);
            }
        }
        if let Some(intent_cutoff) = self.intent_cutoff(now) {
            for _ in 0..EXPIRE_BUDGET {
                if self.intents.pop_due(intent_cutoff).is_none() {
                    break;
                }
            }
        }
        // Per-server intent queues drop their stale handles when used; an idle queue whose
        // intents are all gone is dropped here, a few per call.
        if self.intents.is_empty() && !self.intents_by_server.is_empty() {
            self.intents_by_server.clear();
        }
    }

    /// Everything past its window, removed now whatever the budget (tests, and an idle
    /// daemon's housekeeping).
    pub fn expire_all(&mut self, now: Instant) {
        while self.clients.len() + self.upstream.len() + self.intents.len() + self.forwarded.len()
            > 0
        {
            let before = (
                self.clients.len(),
                self.upstream.len(),
                self.intents.len(),
                self.forwarded.len(),
            );
            self.expire(now);
            let after = (
                self.clients.len(),
                self.upstream.len(),
                self.intents.len(),
                self.forwarded.len(),
            );
            if before == after {
                break;
            }
        }
    }
}

/// Whether entry `id` of `table` is still there and was last touched after `cutoff` (`None`:
/// too early in the clock's life for anything to be past it).
fn touched_after<T>(table: &Lru<T>, id: Id, cutoff: Option<Instant>) -> bool {
    match (table.touched_at(id), cutoff) {
        (Some(at), Some(cutoff)) => at > cutoff,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use crate::dns::Name;

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
            ..PairingConfig::default()
        }
    }

    /// The resolver's address the clients ask.
    fn server() -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254)), 53)
    }

    fn ask(client: SocketAddr, id: u16) -> Asker {
        Asker {
            client,
            server: server(),
            id,
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
        p.client_query(&q, ask(client(137, 40000), 0x1111), 137, Proto::Udp, t0);
        assert_eq!(p.client_len(), 1);
        assert_eq!(
            p.upstream_query(&q, flow(0x2222), t0 + MS),
            paired(137, false)
        );
        assert_eq!(p.upstream_len(), 1);
        assert_eq!(
            p.upstream_answer(&flow(0x2222), false, t0 + 2 * MS),
            Some(137)
        );
        assert_eq!(p.upstream_len(), 0);
        assert_eq!(
            p.client_answer(&q, ask(client(137, 40000), 0x1111), t0 + 3 * MS),
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
        p.client_query(&asked, ask(client(137, 40000), 0x1111), 7, Proto::Udp, t0);
        assert_eq!(p.upstream_query(&sent, flow(0xbeef), t0), paired(7, false));
    }

    #[test]
    fn upstream_query_without_waiting_client_is_unpaired() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        p.client_query(
            &key("a.example"),
            ask(client(1, 1000), 1),
            7,
            Proto::Udp,
            t0,
        );
        assert_eq!(
            p.upstream_query(&key("b.example"), flow(1), t0),
            UpstreamMatch::Unpaired
        );
        assert_eq!(p.counters.unpaired, 1);
        assert_eq!(p.counters.paired, 0);
        // The same name with another type belongs to the waiting resolution (by its name).
        let other_type = QKey::new(&Name::from_ascii("a.example").unwrap(), 28, 1);
        assert_eq!(p.upstream_query(&other_type, flow(2), t0), paired(7, false));
        assert_eq!(p.counters.by_own_name, 1);
        assert_eq!(p.upstream_len(), 1);
    }

    #[test]
    fn upstream_answer_needs_the_same_flow_and_id() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 7, Proto::Udp, t0);
        p.upstream_query(&q, flow(0x2222), t0);
        let mut other_port = flow(0x2222);
        other_port.local.set_port(33001);
        let mut other_server = flow(0x2222);
        other_server.remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 54)), 53);
        let mut other_proto = flow(0x2222);
        other_proto.proto = Proto::Tcp;
        for wrong in [flow(0x2223), other_port, other_server, other_proto] {
            assert_eq!(p.upstream_answer(&wrong, false, t0), None, "{wrong:?}");
        }
        assert_eq!(p.upstream_answer(&flow(0x2222), false, t0), Some(7));
        // Answered once: a duplicate answer finds nothing.
        assert_eq!(p.upstream_answer(&flow(0x2222), false, t0), None);
        assert_eq!(p.counters.upstream_answers, 1);
    }

    #[test]
    fn client_answer_needs_the_same_client_port_id_and_question() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 7, Proto::Udp, t0);
        assert_eq!(p.client_answer(&q, ask(client(2, 1000), 1), t0), None);
        assert_eq!(p.client_answer(&q, ask(client(1, 1001), 1), t0), None);
        assert_eq!(p.client_answer(&q, ask(client(1, 1000), 2), t0), None);
        assert_eq!(
            p.client_answer(&key("www.example.org"), ask(client(1, 1000), 1), t0),
            None
        );
        assert_eq!(
            p.client_answer(&key("WWW.EXAMPLE.COM"), ask(client(1, 1000), 1), t0),
            Some(7)
        );
        assert_eq!(p.client_answer(&q, ask(client(1, 1000), 1), t0), None);
        assert_eq!(p.client_len(), 0);
        assert_eq!(p.counters.client_answers, 1);
    }

    #[test]
    fn answer_to_a_client_that_never_asked_is_none() {
        let mut p = Pairing::new(config(16));
        let now = Instant::now();
        assert_eq!(
            p.client_answer(&key("a.example"), ask(client(1, 1000), 1), now),
            None
        );
        assert_eq!(p.upstream_answer(&flow(1), false, now), None);
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
        p.client_query(&q, ask(v6, 9), 0x42, Proto::Udp, t0);
        assert_eq!(p.upstream_query(&q, flow(10), t0), paired(0x42, false));
        assert_eq!(p.client_answer(&q, ask(v6, 9), t0), Some(0x42));
        // The same port and id from the client's IPv4-mapped address is another client.
        p.client_query(&q, ask(v6, 9), 0x42, Proto::Udp, t0);
        let mapped = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(0, 0, 0, 7)), 5353);
        assert_eq!(p.client_answer(&q, ask(mapped, 9), t0), None);
    }

    #[test]
    fn merged_question_with_different_marks_takes_the_oldest_and_is_ambiguous() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 0x0101), 1, Proto::Udp, t0);
        p.client_query(&q, ask(client(2, 2000), 0x0202), 2, Proto::Udp, t0 + MS);
        p.client_query(&q, ask(client(3, 3000), 0x0303), 3, Proto::Udp, t0 + 2 * MS);
        assert_eq!(
            p.upstream_query(&q, flow(0x9999), t0 + 3 * MS),
            paired(1, true)
        );
        assert_eq!(p.counters.ambiguous, 1);
        assert_eq!(p.counters.paired, 1);
        // Every client still gets its own mark on its answer.
        assert_eq!(
            p.client_answer(&q, ask(client(2, 2000), 0x0202), t0),
            Some(2)
        );
        assert_eq!(
            p.client_answer(&q, ask(client(3, 3000), 0x0303), t0),
            Some(3)
        );
        assert_eq!(
            p.client_answer(&q, ask(client(1, 1000), 0x0101), t0),
            Some(1)
        );
    }

    #[test]
    fn merged_question_with_the_same_marks_is_not_ambiguous() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 5, Proto::Udp, t0);
        p.client_query(&q, ask(client(2, 2000), 2), 5, Proto::Udp, t0);
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
        p.client_query(&q, ask(client(1, 1000), 1), 0x0100, Proto::Udp, t0);
        p.client_query(&q, ask(client(2, 2000), 2), 0xab01_01ff, Proto::Udp, t0);
        assert_eq!(p.upstream_query(&q, flow(3), t0), paired(0x0100, false));
        p.client_query(&q, ask(client(3, 3000), 3), 0x0200, Proto::Udp, t0);
        assert_eq!(p.upstream_query(&q, flow(4), t0), paired(0x0100, true));
    }

    #[test]
    fn resolver_keeping_the_client_id_picks_that_client_over_the_oldest() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 0x0101), 1, Proto::Udp, t0);
        p.client_query(&q, ask(client(2, 2000), 0x0202), 2, Proto::Udp, t0 + MS);
        let m = p.upstream_query(&q, flow(0x0202), t0 + 2 * MS);
        assert_eq!(m, paired(2, true));
        assert_eq!(
            p.upstream_answer(&flow(0x0202), false, t0 + 3 * MS),
            Some(2)
        );
    }

    #[test]
    fn client_retransmission_does_not_add_a_second_entry() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 5, Proto::Udp, t0);
        p.client_query(&q, ask(client(1, 1000), 1), 5, Proto::Udp, t0 + MS);
        p.client_query(&q, ask(client(1, 1000), 1), 6, Proto::Udp, t0 + 2 * MS);
        assert_eq!(p.client_len(), 1);
        assert_eq!(p.counters.client_queries, 1);
        // The retransmission's newest mark counts, and one answer clears the entry.
        assert_eq!(p.upstream_query(&q, flow(2), t0 + 3 * MS), paired(6, false));
        assert_eq!(
            p.client_answer(&q, ask(client(1, 1000), 1), t0 + 4 * MS),
            Some(6)
        );
        assert_eq!(p.client_len(), 0);
    }

    #[test]
    fn same_id_from_another_port_or_address_is_another_client() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 5, Proto::Udp, t0);
        p.client_query(&q, ask(client(1, 1001), 1), 5, Proto::Udp, t0);
        p.client_query(&q, ask(client(2, 1000), 1), 5, Proto::Udp, t0);
        assert_eq!(p.client_len(), 3);
        assert_eq!(p.counters.client_queries, 3);
    }

    #[test]
    fn client_entries_expire_after_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(5);
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 5, Proto::Udp, t0);
        p.client_query(
            &key("b.example"),
            ask(client(2, 1000), 1),
            5,
            Proto::Udp,
            t0 + MS,
        );
        p.expire(t0 + window - MS);
        assert_eq!(p.client_len(), 2);
        assert_eq!(p.counters.expired, 0);
        assert_eq!(
            p.upstream_query(&q, flow(1), t0 + window),
            UpstreamMatch::Unpaired
        );
        assert_eq!(p.client_len(), 1);
        assert_eq!(p.counters.expired, 1);
        assert_eq!(
            p.client_answer(&q, ask(client(1, 1000), 1), t0 + window),
            None
        );
        p.expire(t0 + window + MS);
        assert_eq!(p.client_len(), 0);
        assert_eq!(p.counters.expired, 2);
        assert!(p.by_question.is_empty());
    }

    #[test]
    fn upstream_entries_expire_after_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(5);
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 5, Proto::Udp, t0);
        p.upstream_query(&q, flow(2), t0 + window - MS);
        assert_eq!(p.upstream_len(), 1);
        // The client entry goes first; the upstream entry lives its own window.
        p.expire(t0 + window);
        assert_eq!((p.client_len(), p.upstream_len()), (0, 1));
        assert_eq!(
            p.upstream_answer(&flow(2), false, t0 + 2 * window - MS - MS),
            Some(5)
        );
        p.client_query(&q, ask(client(1, 1000), 1), 5, Proto::Udp, t0 + window);
        p.upstream_query(&q, flow(3), t0 + window);
        assert_eq!(p.upstream_answer(&flow(3), false, t0 + 2 * window), None);
        assert_eq!(p.upstream_len(), 0);
        assert_eq!(p.counters.expired, 3);
    }

    #[test]
    fn answered_entries_are_not_counted_as_expired() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 5, Proto::Udp, t0);
        p.upstream_query(&q, flow(2), t0);
        p.upstream_answer(&flow(2), false, t0);
        p.client_answer(&q, ask(client(1, 1000), 1), t0);
        p.expire(t0 + Duration::from_secs(60));
        assert_eq!(p.counters.expired, 0);
        assert!(p.clients.is_empty() && p.by_flow.is_empty() && p.per_host.is_empty());
    }

    #[test]
    fn retransmission_restarts_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(5);
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 5, Proto::Udp, t0);
        p.client_query(
            &q,
            ask(client(1, 1000), 1),
            5,
            Proto::Udp,
            t0 + Duration::from_secs(3),
        );
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
        p.client_query(&q, ask(client(1, 1000), 1), 5, Proto::Udp, t0);
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
        p.client_query(
            &key("a.example"),
            ask(client(1, 1000), 1),
            1,
            Proto::Udp,
            t0,
        );
        p.client_query(
            &key("b.example"),
            ask(client(1, 1000), 2),
            2,
            Proto::Udp,
            t0 + MS,
        );
        p.client_query(
            &key("c.example"),
            ask(client(1, 1000), 3),
            3,
            Proto::Udp,
            t0 + 2 * MS,
        );
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
        p.client_query(&q, ask(client(1, 1000), 1), 1, Proto::Udp, t0);
        p.client_query(&q, ask(client(2, 1000), 1), 2, Proto::Udp, t0);
        p.client_query(&q, ask(client(3, 1000), 1), 3, Proto::Udp, t0);
        assert_eq!(p.client_len(), 2);
        assert_eq!(p.upstream_query(&q, flow(9), t0), paired(2, true));
        assert_eq!(p.client_answer(&q, ask(client(1, 1000), 1), t0), None);
    }

    #[test]
    fn refreshed_entry_is_not_the_oldest_any_more() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(2));
        p.client_query(
            &key("a.example"),
            ask(client(1, 1000), 1),
            1,
            Proto::Udp,
            t0,
        );
        p.client_query(
            &key("b.example"),
            ask(client(1, 1000), 2),
            2,
            Proto::Udp,
            t0 + MS,
        );
        // a is retransmitted, so b is now the oldest.
        p.client_query(
            &key("a.example"),
            ask(client(1, 1000), 1),
            1,
            Proto::Udp,
            t0 + 2 * MS,
        );
        p.client_query(
            &key("c.example"),
            ask(client(1, 1000), 3),
            3,
            Proto::Udp,
            t0 + 3 * MS,
        );
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
        p.client_query(&q, ask(client(1, 1000), 1), 7, Proto::Udp, t0);
        for id in 1..=3 {
            p.upstream_query(&q, flow(id), t0 + u32::from(id) * MS);
        }
        assert_eq!(p.upstream_len(), 2);
        assert_eq!(p.counters.evicted, 1);
        assert_eq!(p.upstream_answer(&flow(1), false, t0), None);
        assert_eq!(p.upstream_answer(&flow(2), false, t0), Some(7));
        assert_eq!(p.upstream_answer(&flow(3), false, t0), Some(7));
    }

    #[test]
    fn upstream_query_resent_on_the_same_flow_keeps_one_entry() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(2));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 7, Proto::Udp, t0);
        p.upstream_query(&q, flow(1), t0);
        p.upstream_query(&q, flow(2), t0);
        p.upstream_query(&q, flow(1), t0 + MS);
        assert_eq!(p.upstream_len(), 2);
        assert_eq!(p.counters.evicted, 0);
        p.upstream_query(&q, flow(3), t0 + 2 * MS);
        // flow 2 is the oldest now: flow 1 was sent again.
        assert_eq!(p.upstream_answer(&flow(2), false, t0), None);
        assert_eq!(p.upstream_answer(&flow(1), false, t0), Some(7));
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(0));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 7, Proto::Udp, t0);
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
        p.client_query(&q, ask(client(1, 1000), 1), 7, Proto::Udp, t0);
        assert_eq!(p.upstream_query(&q, flow(1), t0), paired(7, false));
        assert_eq!(p.upstream_len(), 0);
        assert_eq!(p.upstream_answer(&flow(1), false, t0), None);
    }

    #[test]
    fn huge_capacity_does_not_overflow() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(usize::MAX));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 7, Proto::Udp, t0);
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
            p.client_query(
                &q,
                ask(client(1, (i % 60_000) as u16), i as u16),
                i,
                Proto::Udp,
                now,
            );
            assert!(p.client_len() <= 1000, "{} entries at {i}", p.client_len());
            assert!(p.by_question.len() <= 1000);
        }
        assert_eq!(p.client_len(), 1000);
        assert_eq!(p.counters.evicted, 99_000);
        assert_eq!(p.counters.client_queries, 100_000);
        let entries: usize = p.by_question.values().map(Vec::len).sum();
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
        p.client_query(&q, ask(client(1, 1000), 1), 7, Proto::Udp, t0);
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
            assert!(p.by_flow.len() <= 1000);
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
            p.client_query(&q, ask(client(1, 1000), id), 7, Proto::Udp, now);
            p.upstream_query(&q, flow(id), now);
            assert_eq!(p.upstream_answer(&flow(id), false, now), Some(7));
            assert_eq!(p.client_answer(&q, ask(client(1, 1000), id), now), Some(7));
            assert!(p.by_question.len() <= 10 && p.by_flow.len() <= 10);
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
            p.client_query(&q, ask(client(1, 1000), 1), 7, Proto::Udp, now);
            p.upstream_query(&q, flow(1), now);
            assert!(p.by_question.len() <= 10 && p.by_flow.len() <= 10);
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
            p.client_query(&q, ask(client(1, 1000), i as u16), 7, Proto::Udp, now);
            p.upstream_query(&q, flow(i as u16), now);
        }
        p.expire_all(t0 + Duration::from_secs(6));
        assert_eq!((p.client_len(), p.upstream_len()), (0, 0));
        assert!(p.by_question.is_empty());
        assert!(p.clients.is_empty() && p.by_flow.is_empty() && p.per_host.is_empty());
        assert_eq!(p.counters.expired + p.counters.evicted, 2000);
    }

    // --- Hostile and odd input (issue 13) ------------------------------------------------------

    fn host(last: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 2, last)), port)
    }

    #[test]
    fn a_stale_unclaimed_query_does_not_take_a_later_clients_upstream_query() {
        // B asked long ago and the resolver never acted on it (never received it, dropped it):
        // A's fresh query is the one the resolver's upstream query answers.
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("video.example");
        p.client_query(&q, ask(client(2, 2000), 2), 0, Proto::Udp, t0);
        let later = t0 + Duration::from_secs(3);
        p.client_query(&q, ask(client(1, 1000), 1), 137, Proto::Udp, later);
        assert_eq!(p.upstream_query(&q, flow(9), later + MS), paired(137, true));
    }

    #[test]
    fn retries_of_a_resolution_in_progress_keep_its_first_clients_mark() {
        // A's query caused the upstream query; B asked the same question meanwhile (merged by
        // the resolver). The resolver's retry to another server is still A's resolution.
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 137, Proto::Udp, t0);
        assert_eq!(p.upstream_query(&q, flow(7), t0 + MS), paired(137, false));
        p.client_query(&q, ask(client(2, 2000), 2), 0, Proto::Udp, t0 + 2 * MS);
        assert_eq!(
            p.upstream_query(&q, flow(8), t0 + 400 * MS),
            paired(137, true)
        );
    }

    #[test]
    fn a_host_flooding_one_question_only_displaces_its_own_entries() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(65_536));
        let q = key("video.example");
        p.client_query(&q, ask(client(1, 1000), 1), 137, Proto::Udp, t0);
        for i in 0..120_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i));
            p.client_query(
                &q,
                ask(host(66, 1024 + (i % 60_000) as u16), i as u16),
                0,
                Proto::Udp,
                now,
            );
            assert!(p.by_question.get(&q).is_some_and(|ids| ids.len() <= 16));
        }
        // A's entry is still there and still answers as A's.
        assert_eq!(
            p.client_answer(&q, ask(client(1, 1000), 1), t0 + Duration::from_millis(130)),
            Some(137)
        );
        assert!(p.counters.evicted >= 120_000 - 16);
    }

    #[test]
    fn one_host_cannot_hold_more_than_its_quota() {
        let t0 = Instant::now();
        let mut p = Pairing::new(PairingConfig {
            per_client: 100,
            ..config(1000)
        });
        for i in 0..1000u32 {
            let r = p.client_query(
                &key(&format!("n{i}.example")),
                ask(host(66, 1024), i as u16),
                0,
                Proto::Udp,
                t0,
            );
            assert_eq!(
                r,
                if i < 100 {
                    Recorded::New
                } else {
                    Recorded::OverQuota
                }
            );
        }
        assert_eq!(p.counters.over_quota, 900);
        // Another host is not affected; nothing was evicted.
        let q = key("a.example");
        assert_eq!(
            p.client_query(&q, ask(client(1, 1000), 1), 137, Proto::Udp, t0),
            Recorded::New
        );
        assert_eq!(p.counters.evicted, 0);
        assert_eq!(p.upstream_query(&q, flow(1), t0), paired(137, false));
        // An answered query frees the quota again.
        let first = key("n0.example");
        assert!(
            p.client_answer(&first, ask(host(66, 1024), 0), t0)
                .is_some()
        );
        assert_eq!(
            p.client_query(
                &key("again.example"),
                ask(host(66, 1024), 7),
                0,
                Proto::Udp,
                t0
            ),
            Recorded::New
        );
    }

    #[test]
    fn ipv6_hosts_share_a_quota_per_64() {
        let t0 = Instant::now();
        let mut p = Pairing::new(PairingConfig {
            per_client: 2,
            ..config(100)
        });
        let v6 = |last: u16| {
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, last)),
                1000,
            )
        };
        let q = |i: u16| key(&format!("n{i}.example"));
        assert_eq!(
            p.client_query(&q(1), ask(v6(1), 1), 0, Proto::Udp, t0),
            Recorded::New
        );
        assert_eq!(
            p.client_query(&q(2), ask(v6(2), 2), 0, Proto::Udp, t0),
            Recorded::New
        );
        assert_eq!(
            p.client_query(&q(3), ask(v6(3), 3), 0, Proto::Udp, t0),
            Recorded::OverQuota
        );
    }

    #[test]
    fn client_answer_must_come_from_the_address_the_client_asked() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 7, Proto::Udp, t0);
        let mut forged = ask(client(1, 1000), 1);
        forged.server = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 2, 66)), 53);
        assert_eq!(p.client_answer(&q, forged, t0), None);
        assert_eq!(p.client_answer(&q, ask(client(1, 1000), 1), t0), Some(7));
    }

    #[test]
    fn expiry_removes_a_bounded_number_per_operation_and_lookups_ignore_the_rest() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(100_000));
        for i in 0..50_000u32 {
            let q = key(&format!("n{i}.example"));
            let c = client((i % 200) as u8, (i % 60_000) as u16);
            p.client_query(&q, ask(c, i as u16), 7, Proto::Udp, t0);
        }
        let late = t0 + Duration::from_secs(6);
        p.expire(late);
        assert_eq!(p.client_len(), 50_000 - EXPIRE_BUDGET);
        // Entries past their window are not found even before they are removed.
        assert_eq!(
            p.upstream_query(&key("n49999.example"), flow(1), late),
            UpstreamMatch::Unpaired
        );
        assert_eq!(
            p.client_answer(
                &key("n49998.example"),
                ask(client((49_998 % 200) as u8, 49_998), 49_998),
                late
            ),
            None
        );
        p.expire_all(late);
        assert_eq!(p.client_len(), 0);
        assert_eq!(p.counters.expired, 50_000);
    }

    // --- TCP intents (issue 11) ----------------------------------------------------------------

    fn upstream(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 53)), port)
    }

    /// The resolver's `n`th TCP connection to `server`.
    fn conn_to(server: SocketAddr, n: u16) -> ConnKey {
        ConnKey {
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)), 40_000 + n),
            remote: server,
        }
    }

    #[test]
    fn truncated_answer_gives_the_resolvers_next_connection_to_that_server_the_clients_mark() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("big.example");
        p.client_query(&q, ask(client(1, 1000), 1), 137, Proto::Udp, t0);
        p.upstream_query(&q, flow(5), t0);
        assert_eq!(p.upstream_answer(&flow(5), true, t0 + MS), Some(137));
        assert_eq!(p.intent_len(), 1);
        // A connection to another server is not it.
        let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 54)), 53);
        assert_eq!(
            p.tcp_open(conn_to(other, 1), t0 + 2 * MS),
            UpstreamMatch::Unpaired
        );
        assert_eq!(
            p.tcp_open(conn_to(upstream(53), 2), t0 + 2 * MS),
            paired(137, false)
        );
        assert_eq!(
            p.tcp_open(conn_to(upstream(53), 3), t0 + 3 * MS),
            UpstreamMatch::Unpaired
        );
        assert_eq!((p.counters.tcp_opened, p.counters.tcp_unpaired), (1, 2));
    }

    #[test]
    fn client_query_over_tcp_gives_the_resolvers_next_connection_its_mark() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("a.example");
        p.client_query(&q, ask(client(1, 1000), 1), 137, Proto::Tcp, t0);
        assert_eq!(
            p.tcp_open(conn_to(upstream(53), 4), t0 + MS),
            paired(137, false)
        );
    }

    #[test]
    fn tcp_intent_is_void_once_the_query_left_over_udp() {
        // unbound answers a TCP client with an upstream query over UDP: no SYN follows for it.
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("a.example");
        p.client_query(&q, ask(client(1, 1000), 1), 137, Proto::Tcp, t0);
        p.upstream_query(&q, flow(3), t0 + MS);
        assert_eq!(p.intent_len(), 0);
        assert_eq!(
            p.tcp_open(conn_to(upstream(53), 5), t0 + 2 * MS),
            UpstreamMatch::Unpaired
        );
    }

    #[test]
    fn intents_are_claimed_oldest_first_and_mixed_marks_are_ambiguous() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        p.client_query(
            &key("a.example"),
            ask(client(1, 1000), 1),
            137,
            Proto::Tcp,
            t0,
        );
        p.client_query(
            &key("b.example"),
            ask(client(2, 2000), 2),
            0,
            Proto::Tcp,
            t0 + MS,
        );
        assert_eq!(
            p.tcp_open(conn_to(upstream(53), 6), t0 + 2 * MS),
            paired(137, true)
        );
        assert_eq!(
            p.tcp_open(conn_to(upstream(53), 7), t0 + 3 * MS),
            paired(0, false)
        );
        assert_eq!(p.counters.tcp_ambiguous, 1);
    }

    #[test]
    fn intents_expire_quickly() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        p.client_query(
            &key("a.example"),
            ask(client(1, 1000), 1),
            137,
            Proto::Tcp,
            t0,
        );
        assert_eq!(
            p.tcp_open(conn_to(upstream(53), 8), t0 + INTENT_WINDOW),
            UpstreamMatch::Unpaired
        );
    }

    // --- Routed queries (issue 13: answers are learned only if their query was seen) ------------

    #[test]
    fn forwarded_answer_must_answer_a_forwarded_query() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("video.example");
        let a = Asker {
            client: client(1, 1000),
            server: upstream(53),
            id: 9,
        };
        assert!(!p.forwarded_answer(&q, a, Proto::Udp, t0), "nothing asked");
        p.forwarded_query(&q, a, Proto::Udp, t0);
        assert!(!p.forwarded_answer(&key("other.example"), a, Proto::Udp, t0));
        assert!(!p.forwarded_answer(&q, Asker { id: 10, ..a }, Proto::Udp, t0));
        assert!(!p.forwarded_answer(&q, a, Proto::Tcp, t0));
        assert!(p.forwarded_answer(&q, a, Proto::Udp, t0 + MS));
        assert!(
            !p.forwarded_answer(&q, a, Proto::Udp, t0 + MS),
            "answered once"
        );
        p.forwarded_query(&q, a, Proto::Udp, t0);
        assert!(!p.forwarded_answer(&q, a, Proto::Udp, t0 + Duration::from_secs(5)));
    }

    #[test]
    fn a_connection_keeps_the_mark_its_syn_took() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        p.client_query(
            &key("a.example"),
            ask(client(1, 1000), 1),
            137,
            Proto::Tcp,
            t0,
        );
        let c = conn_to(upstream(53), 1);
        assert_eq!(p.tcp_open(c, t0 + MS), paired(137, false));
        // The SYN sent again (lost, retransmitted) finds its connection, not another intent.
        p.client_query(
            &key("b.example"),
            ask(client(2, 2000), 2),
            0,
            Proto::Tcp,
            t0 + MS,
        );
        assert_eq!(p.tcp_open(c, t0 + 2 * MS), paired(137, false));
        assert_eq!(p.conn_mark(c, t0 + 3 * MS), Some(137));
        assert_eq!(p.intent_len(), 1, "B's intent is still waiting");
        // Forgotten after it has been idle for a while.
        p.expire(t0 + CONN_IDLE + 3 * MS);
        assert_eq!(p.conn_mark(c, t0 + CONN_IDLE + 3 * MS), None);
    }

    #[test]
    fn simultaneous_tcp_clients_with_different_marks_are_candidates_for_the_kernel() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let c = conn_to(upstream(53), 1);
        p.client_query(
            &key("a.example"),
            ask(client(1, 1000), 1),
            137,
            Proto::Tcp,
            t0,
        );
        assert!(
            p.tcp_candidates(c, t0, 8).is_empty(),
            "one client: timing is enough"
        );
        p.client_query(
            &key("b.example"),
            ask(client(2, 2000), 2),
            0,
            Proto::Tcp,
            t0,
        );
        let cands = p.tcp_candidates(c, t0, 8);
        assert_eq!(cands.len(), 2);
        assert_eq!(cands[1].client.remote, client(2, 2000));
        assert_eq!(cands[1].client.local, server());
        // The kernel says the SYN's process holds B's connection: B's mark, not the oldest's.
        assert_eq!(p.tcp_open_for(c, cands[1].intent, t0), paired(0, false));
        assert_eq!(p.conn_mark(c, t0), Some(0));
        assert_eq!(p.counters.tcp_by_socket, 1);
        // A's intent still waits for its own SYN.
        assert_eq!(p.tcp_open(conn_to(upstream(53), 2), t0), paired(137, false));
    }

    #[test]
    fn a_truncated_answer_relayed_to_the_client_voids_the_intent() {
        // dnsmasq passes a truncated answer on to its client, which retries over TCP itself:
        // the resolver opens no connection for the UDP query.
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        let q = key("big.example");
        p.client_query(&q, ask(client(1, 1000), 1), 137, Proto::Udp, t0);
        p.upstream_query(&q, flow(5), t0);
        assert_eq!(p.upstream_answer(&flow(5), true, t0 + MS), Some(137));
        assert_eq!(p.intent_len(), 1);
        assert_eq!(
            p.client_answer(&q, ask(client(1, 1000), 1), t0 + 2 * MS),
            Some(137)
        );
        assert_eq!(p.intent_len(), 0);
        assert_eq!(
            p.tcp_open(conn_to(upstream(53), 1), t0 + 3 * MS),
            UpstreamMatch::Unpaired
        );
    }

    #[test]
    fn two_tcp_clients_of_one_mark_are_still_asked_about() {
        // Timing would hand one client's intent to the other's connection; the client left
        // without its intent would then be mistaken for a third.
        let t0 = Instant::now();
        let mut p = Pairing::new(config(16));
        for (n, port) in [(1u8, 1000u16), (3, 3000)] {
            p.client_query(
                &key(&format!("n{n}.example")),
                ask(client(n, port), u16::from(n)),
                137,
                Proto::Tcp,
                t0,
            );
        }
        assert_eq!(p.tcp_candidates(conn_to(upstream(53), 1), t0, 8).len(), 2);
    }

    // --- Causal attribution for recursive resolvers (issue 12) ---------------------------------

    fn name(text: &str) -> crate::dns::Name {
        crate::dns::Name::from_ascii(text).unwrap()
    }

    fn typed(text: &str, qtype: u16) -> QKey {
        QKey::new(&name(text), qtype, 1)
    }

    #[test]
    fn minimised_ancestors_of_a_waiting_question_carry_its_mark() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(64));
        p.client_query(
            &key("www1.sub.a-zone.lab"),
            ask(client(1, 1000), 1),
            137,
            Proto::Udp,
            t0,
        );
        for (i, (n, t)) in [
            ("lab", 2),
            ("a-zone.lab", 1),
            ("sub.a-zone.lab", 2),
            (".", 48),
        ]
        .iter()
        .enumerate()
        {
            assert_eq!(
                p.upstream_query(&typed(n, *t), flow(i as u16), t0),
                paired(137, false),
                "{n}"
            );
        }
        assert_eq!(p.counters.by_ancestor, 4);
        // Not a name of the resolution: unpaired.
        assert_eq!(
            p.upstream_query(&key("other.lab"), flow(9), t0),
            UpstreamMatch::Unpaired
        );
    }

    #[test]
    fn names_an_answer_points_to_belong_to_the_resolution_it_answers() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(64));
        p.client_query(
            &key("www1.a-oob.lab"),
            ask(client(1, 1000), 1),
            137,
            Proto::Udp,
            t0,
        );
        // The referral for a-oob.lab names an out-of-bailiwick server without glue.
        let q = typed("a-oob.lab", 1);
        assert_eq!(p.upstream_query(&q, flow(1), t0), paired(137, false));
        p.upstream_answer_with(&flow(1), false, &[name("ns1.a-dns.hosting")], t0);
        // Its address lookup, minimised through its own ancestors, is A's too.
        for (i, n) in ["hosting", "a-dns.hosting", "ns1.a-dns.hosting"]
            .iter()
            .enumerate()
        {
            assert_eq!(
                p.upstream_query(&typed(n, 1), flow(10 + i as u16), t0),
                paired(137, false),
                "{n}"
            );
        }
        // A CNAME target from an answer to that lookup chain: still A's.
        p.upstream_answer_with(&flow(12), false, &[name("www1.a-cdn.hosting")], t0);
        assert_eq!(
            p.upstream_query(&typed("www1.a-cdn.hosting", 1), flow(20), t0),
            paired(137, false)
        );
        assert!(p.counters.by_derived >= 3);
        // Once the client has its answer, none of it is anyone's any more.
        p.client_answer(&key("www1.a-oob.lab"), ask(client(1, 1000), 1), t0);
        assert!(p.names.is_empty());
        assert_eq!(
            p.upstream_query(&typed("ns1.a-dns.hosting", 28), flow(30), t0),
            UpstreamMatch::Unpaired
        );
    }

    #[test]
    fn a_shared_ancestor_goes_to_the_oldest_client_and_is_ambiguous() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(64));
        p.client_query(
            &key("www1.b-zone.lab"),
            ask(client(2, 2000), 2),
            0,
            Proto::Udp,
            t0,
        );
        p.client_query(
            &key("www1.a-zone.lab"),
            ask(client(1, 1000), 1),
            137,
            Proto::Udp,
            t0 + MS,
        );
        assert_eq!(
            p.upstream_query(&typed("lab", 2), flow(1), t0 + 2 * MS),
            paired(0, true)
        );
        assert_eq!(p.counters.ambiguous, 1);
        // Each client's own zone is its own, not ambiguous.
        assert_eq!(
            p.upstream_query(&typed("a-zone.lab", 2), flow(2), t0 + 2 * MS),
            paired(137, false)
        );
        // The exact question another client asked wins over a name match.
        p.client_query(
            &typed("a-zone.lab", 2),
            ask(client(2, 2001), 3),
            0,
            Proto::Udp,
            t0,
        );
        assert_eq!(
            p.upstream_query(&typed("a-zone.lab", 2), flow(3), t0 + 3 * MS),
            paired(0, false)
        );
    }

    #[test]
    fn own_name_ranks_before_derived_and_ancestors() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(64));
        // B's question's ancestor is A's own name: A asked it (with another type).
        p.client_query(
            &key("x.a-zone.lab"),
            ask(client(2, 2000), 2),
            0,
            Proto::Udp,
            t0,
        );
        p.client_query(
            &typed("a-zone.lab", 28),
            ask(client(1, 1000), 1),
            137,
            Proto::Udp,
            t0,
        );
        assert_eq!(
            p.upstream_query(&typed("a-zone.lab", 1), flow(1), t0),
            paired(137, true)
        );
        assert_eq!(p.counters.by_own_name, 1);
    }

    #[test]
    fn names_per_client_and_owners_per_name_are_bounded() {
        let t0 = Instant::now();
        let mut p = Pairing::new(config(1000));
        p.start_attributing();
        p.client_query(&key("a.lab"), ask(client(1, 1000), 1), 137, Proto::Udp, t0);
        p.upstream_query(&key("a.lab"), flow(1), t0);
        let many: Vec<crate::dns::Name> = (0..200)
            .map(|i| name(&format!("ns{i}.x{i}.hosting")))
            .collect();
        p.upstream_answer_with(&flow(1), false, &many, t0);
        let owned = p
            .clients
            .oldest()
            .map(|(_, _, e)| e.names.len())
            .unwrap_or(0);
        assert_eq!(owned, MAX_NAMES);
        for i in 0..100u16 {
            p.client_query(
                &key(&format!("q{i}.lab")),
                ask(client(2, 2000 + i), i),
                0,
                Proto::Udp,
                t0,
            );
        }
        let lab = p.hash_name(name("lab").wire());
        assert_eq!(p.names.get(&lab).map(Vec::len), Some(MAX_OWNERS));
        p.expire_all(t0 + Duration::from_secs(6));
        assert!(p.names.is_empty(), "every name goes with its owners");
    }

    #[test]
    fn a_forwarder_never_pays_for_attribution() {
        // Every upstream query is a client's question: no name is ever owned.
        let t0 = Instant::now();
        let mut p = Pairing::new(config(64));
        for i in 0..10u16 {
            let q = key(&format!("w{i}.example"));
            p.client_query(&q, ask(client(1, 1000 + i), i), 137, Proto::Udp, t0);
            p.upstream_query(&q, flow(i), t0);
        }
        assert!(!p.attributing() && p.names.is_empty());
        // The first query no client asked turns it on, for the clients waiting now too.
        assert_eq!(
            p.upstream_query(&key("example"), flow(99), t0),
            paired(137, false)
        );
        assert!(p.attributing() && !p.names.is_empty());
    }

    #[test]
    fn with_a_grace_claimed_queries_retire_without_their_answer() {
        let t0 = Instant::now();
        let mut p = Pairing::new(PairingConfig {
            claimed_grace: Some(Duration::from_secs(1)),
            ..config(16)
        });
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 137, Proto::Udp, t0);
        p.client_query(
            &key("other.example"),
            ask(client(1, 1001), 2),
            137,
            Proto::Udp,
            t0,
        );
        assert_eq!(p.upstream_query(&q, flow(1), t0 + MS), paired(137, false));
        // A retry within the grace is still the client's.
        assert_eq!(
            p.upstream_query(&q, flow(2), t0 + 900 * MS),
            paired(137, false)
        );
        p.expire(t0 + Duration::from_millis(1001) + MS);
        assert_eq!(
            p.client_len(),
            1,
            "the unclaimed query waits its whole window"
        );
        assert_eq!(p.counters.retired, 1);
    }

    #[test]
    fn with_a_grace_claimed_queries_neither_fill_a_hosts_quota_nor_the_table() {
        let t0 = Instant::now();
        let mut p = Pairing::new(PairingConfig {
            claimed_grace: Some(Duration::from_secs(1)),
            per_client: 2,
            upstream_capacity: 64,
            ..config(3)
        });
        // One host asks ten names in a row, each forwarded at once: at 50k queries/s the
        // grace holds thousands of claimed entries per host, and none may cost a new query
        // its place.
        for i in 0..10u16 {
            let q = key(&format!("n{i}.example"));
            let at = t0 + u32::from(i) * MS;
            assert_eq!(
                p.client_query(&q, ask(client(1, 1000 + i), i), 137, Proto::Udp, at),
                Recorded::New,
                "query {i}"
            );
            assert_eq!(p.upstream_query(&q, flow(i), at), paired(137, false));
        }
        assert_eq!(p.counters.over_quota, 0);
        assert_eq!(p.counters.evicted, 0, "claimed entries made the room");
        assert_eq!(p.counters.retired, 7);
        // An unclaimed query is not retired for a claimed one's sake, and the quota still
        // holds for queries that wait to be forwarded.
        let (a, b) = (key("a.example"), key("b.example"));
        p.client_query(&a, ask(client(1, 2000), 1), 137, Proto::Udp, t0 + 20 * MS);
        p.client_query(&b, ask(client(1, 2001), 2), 137, Proto::Udp, t0 + 20 * MS);
        assert_eq!(
            p.client_query(
                &key("c.example"),
                ask(client(1, 2002), 3),
                1,
                Proto::Udp,
                t0 + 20 * MS
            ),
            Recorded::OverQuota
        );
        assert_eq!(
            p.upstream_query(&a, flow(100), t0 + 30 * MS),
            paired(137, false)
        );
        assert_eq!(
            p.upstream_query(&b, flow(101), t0 + 30 * MS),
            paired(137, false)
        );
    }

    #[test]
    fn with_a_grace_a_reused_slot_is_not_retired_for_its_former_entry() {
        let t0 = Instant::now();
        let mut p = Pairing::new(PairingConfig {
            claimed_grace: Some(Duration::from_secs(1)),
            ..config(16)
        });
        let q = key("www.example.com");
        p.client_query(&q, ask(client(1, 1000), 1), 137, Proto::Udp, t0);
        assert_eq!(p.upstream_query(&q, flow(1), t0), paired(137, false));
        // The claimed entry goes before its grace (its window here), and a new query,
        // unclaimed, may take its slot.
        p.expire(t0 + Duration::from_secs(6));
        assert_eq!(p.client_len(), 0);
        let later = t0 + Duration::from_secs(6);
        let r = key("other.example");
        p.client_query(&r, ask(client(2, 1000), 2), 7, Proto::Udp, later);
        p.expire(later + Duration::from_secs(2));
        assert_eq!(p.client_len(), 1, "the new entry waits for its own claim");
        assert_eq!(
            p.upstream_query(&r, flow(2), later + Duration::from_secs(2)),
            paired(7, false)
        );
    }
}
