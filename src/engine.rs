//! The decision for one packet, in three steps: plan, apply, finish.
//!
//! - [`plan`] reads the packet (IP, transport, DNS header and question, the answer's addresses
//!   when a flow rule may want them), evaluates the rules and says which pairing or learning
//!   step the packet needs. It is a pure function of (config, rules, metadata, bytes): no state,
//!   no lock, no clock, no counter.
//! - [`apply`] performs that step on the [`Tables`] (`&mut`, with `now` passed in) and returns
//!   what it found.
//! - [`finish`] turns the plan and what was found into the [`Decision`]: verdict, mark, and
//!   what the worker should count.
//!
//! The worker is the only place that takes the lock around [`apply`], reads the clock and
//! counts; [`decide`] chains the three steps for tests, benchmarks and fuzzing. Nothing here
//! does I/O or panics. A packet that cannot be parsed, or is not DNS, falls through to the
//! rules' default (accept, unchanged, when there are no rules).
//!
//! A mark nfqmark carries from pairing never changes a connection's mark midway: when the queue
//! reports the packet's conntrack entry and the packet is not the connection's first, the bits
//! under the pairing mask keep the connection's value (on a router that masquerades each
//! uplink, a packet rerouted midway by a new mark leaves with the wrong source address and is
//! dropped). Such a packet is counted as a conflict when pairing wanted another mark.

use std::net::SocketAddr;
use std::time::Instant;

use crate::dns::{self, Dns, Name, QKey};
use crate::flows::{self, LearnConfig, Learned, Resolution};
use crate::packet::{self, Packet, Proto};
use crate::pairing::{
    Asker, ConnKey, FlowKey, Id, Pairing, PairingConfig, TcpCandidate, UpstreamMatch,
};
use crate::rules::{Ctx, RuleSet};
use crate::stream::{FlowId, Segment, StreamConfig, Streams};
use crate::types::{Checksum, Direction, Meta, Verdict, apply_mask};

/// The role a DNS packet played in pairing, and whether it found its partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Not DNS, not parsed, or pairing does not apply.
    NotPaired,
    ClientQuery,
    UpstreamQuery {
        paired: bool,
        ambiguous: bool,
    },
    UpstreamAnswer {
        paired: bool,
    },
    ClientAnswer {
        paired: bool,
    },
    /// The resolver opening a TCP connection to a DNS server (its SYN).
    TcpOpen {
        paired: bool,
    },
    /// A new flow to an address a flow rule learned for this client.
    FlowMarked,
}

/// What reading the packet found, for counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The IP or transport header could not be read.
    Unparsed,
    /// Not to or from a DNS port, or nothing to read (a bare TCP segment).
    NotDns,
    /// A DNS message was read.
    Dns,
    /// On a DNS port, but not a DNS message we can read.
    DnsError,
    /// A query whose transport checksum is wrong: the receiving socket will drop it, so it is
    /// recorded nowhere.
    BadChecksum,
}

/// The engine's answer for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The packet's new mark, when it changes.
    pub mark: Option<u32>,
    pub role: Role,
    /// Index of the rule that matched, if any (for per-rule counters).
    pub rule: Option<usize>,
    pub class: Class,
    /// DNS messages in this packet that pairing would have marked otherwise than their
    /// connection; the connection's mark was kept.
    pub conflicts: u16,
    /// Addresses learned from this packet for flow rules.
    pub learned: u16,
}

impl Decision {
    pub fn accept() -> Decision {
        Decision {
            verdict: Verdict::Accept,
            mark: None,
            role: Role::NotPaired,
            rule: None,
            class: Class::NotDns,
            conflicts: 0,
            learned: 0,
        }
    }
}

/// Static settings of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    pub pairing: PairingConfig,
    /// Ports that carry DNS (a query goes to one, an answer comes from one).
    pub dns_ports: Vec<u16>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pairing: PairingConfig::default(),
            dns_ports: vec![53],
        }
    }
}

/// The state [`apply`] works on. One per process; the worker keeps it behind one lock.
#[derive(Debug)]
pub struct Tables {
    pub pairing: Pairing,
    pub learned: Learned,
    /// DNS-over-TCP connections read as streams.
    pub streams: Streams,
}

impl Tables {
    pub fn new(config: &EngineConfig, learn: LearnConfig) -> Tables {
        Tables {
            pairing: Pairing::new(config.pairing),
            learned: Learned::new(learn),
            streams: Streams::new(StreamConfig::default()),
        }
    }
}

/// The pairing or learning step a packet needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    None,
    /// A client's query for this host's resolver.
    ClientQuery {
        question: QKey,
        asker: Asker,
        mark: u32,
        via: Proto,
    },
    /// The resolver's query to a server.
    UpstreamQuery {
        question: QKey,
        flow: FlowKey,
    },
    /// A server's answer to the resolver, with the names it points to (see
    /// [`derived_names`]).
    UpstreamAnswer {
        flow: FlowKey,
        truncated: bool,
        derived: Vec<Name>,
    },
    /// The resolver's answer to a client.
    ClientAnswer {
        question: QKey,
        asker: Asker,
    },
    /// The resolver opens a TCP connection to a DNS server.
    TcpOpen {
        conn: ConnKey,
    },
    /// A query routed through this host.
    ForwardedQuery {
        question: QKey,
        asker: Asker,
        via: Proto,
    },
    /// The answer to a routed query, on its way to the client.
    ForwardedAnswer {
        question: QKey,
        asker: Asker,
        via: Proto,
    },
    /// A new flow from a client: is its destination an address the client resolved?
    FlowOpen {
        client: std::net::IpAddr,
        dst: std::net::IpAddr,
    },
}

/// What [`plan`] found: everything [`apply`] and [`finish`] need, borrowing only the packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<'a> {
    pub class: Class,
    pub verdict: Verdict,
    pub rule: Option<usize>,
    /// The packet's mark once the rule's mark is applied; pairing starts from it.
    pub mark: u32,
    /// Whether the rules let pairing mark this packet.
    pub pairing: bool,
    /// To or from a DNS port: a packet of a DNS connection.
    pub dns_port: bool,
    pub step: Step,
    /// A packet this host sends on a DNS-over-TCP connection: the connection whose mark it
    /// keeps (when the queue does not report the conntrack entry).
    pub conn: Option<ConnKey>,
    /// A segment of a DNS-over-TCP connection: [`apply`] reads it as a stream and takes a
    /// pairing step for every message it completes or contains.
    pub segment: Option<(FlowId, Segment<'a>)>,
    /// Whether messages read from the stream take pairing steps (pairing on, or flow rules
    /// that need to know which queries their answers answer).
    pub track: bool,
    /// Flow rules exist: answers read from the stream are decoded for them.
    pub flow_rules: bool,
    /// The DNS message of an upstream answer over UDP: [`apply`] reads the names it points to
    /// when the tables attribute names (a recursive resolver).
    pub message: Option<&'a [u8]>,
    /// The answer's names and addresses, read when a flow rule may learn from it (the answer
    /// is learned only if [`apply`] finds the query it answers).
    pub answer: Option<Resolution>,
}

/// What [`apply`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub role: Role,
    /// The mark pairing carries to this packet, under the pairing mask.
    pub carried: Option<u32>,
    /// The mark a flow rule gives this new flow (value already applied to the packet's mark).
    pub flow_mark: Option<u32>,
    /// The mark the packet's DNS-over-TCP connection started with, when nfqmark saw it start.
    pub conn_mark: Option<u32>,
    pub learned: u16,
    /// DNS messages the packet's TCP segment completed or contained, and how many of them
    /// could not be read.
    pub messages: u16,
    pub message_errors: u16,
    /// Messages pairing would have marked otherwise than their connection.
    pub conflicts: u16,
    /// The resolver opens a TCP connection and timing cannot tell for which of these waiting
    /// clients: the caller asks the kernel (`crate::sockdiag`) and calls [`settle_syn`].
    pub syn_candidates: Vec<TcpCandidate>,
}

impl Applied {
    pub const NOTHING: Applied = Applied {
        role: Role::NotPaired,
        carried: None,
        flow_mark: None,
        conn_mark: None,
        learned: 0,
        messages: 0,
        message_errors: 0,
        conflicts: 0,
        syn_candidates: Vec::new(),
    };
}

/// Most waiting clients offered to the kernel for one ambiguous SYN.
pub const MAX_SYN_CANDIDATES: usize = 16;

/// Decide one packet: plan, apply, finish. Pure: all state is passed in, `now` included. An
/// ambiguous SYN is settled by timing here (the worker asks the kernel first).
pub fn decide(
    config: &EngineConfig,
    rules: &RuleSet,
    tables: &mut Tables,
    meta: &Meta,
    bytes: &[u8],
    now: Instant,
) -> Decision {
    let plan = plan(config, rules, meta, bytes);
    let mut applied = apply(&plan, rules, tables, meta, now);
    if !applied.syn_candidates.is_empty() {
        settle_syn(&plan, tables, &mut applied, None, now);
    }
    finish(meta, &plan, &applied, tables.pairing.config().mask)
}

/// Give the resolver's new TCP connection its mark once the kernel was asked which waiting
/// client it serves: `chosen` is that client's intent, `None` when the kernel could not tell
/// (then the oldest waiting client's, counted as ambiguous).
pub fn settle_syn(
    plan: &Plan<'_>,
    tables: &mut Tables,
    applied: &mut Applied,
    chosen: Option<Id>,
    now: Instant,
) {
    applied.syn_candidates.clear();
    let Step::TcpOpen { conn } = plan.step else {
        return;
    };
    let m = match chosen {
        Some(intent) => tables.pairing.tcp_open_for(conn, intent, now),
        None => tables.pairing.tcp_open(conn, now),
    };
    (applied.role, applied.carried) = opened(&mut tables.pairing, conn, m, plan.mark, now);
}

/// The role and carried mark of the resolver's new TCP connection, from what pairing matched
/// it to. A connection no client is known for starts with the packet's own mark `own` and
/// keeps it, whatever queries it carries later (counted as conflicts).
fn opened(
    pairing: &mut Pairing,
    conn: ConnKey,
    matched: UpstreamMatch,
    own: u32,
    now: Instant,
) -> (Role, Option<u32>) {
    match matched {
        UpstreamMatch::Paired { mark, .. } => (Role::TcpOpen { paired: true }, Some(mark)),
        UpstreamMatch::Unpaired => {
            pairing.remember_conn(conn, own, now);
            (Role::TcpOpen { paired: false }, None)
        }
    }
}

/// Read the packet, evaluate the rules, and say which step it needs.
pub fn plan<'a>(config: &EngineConfig, rules: &RuleSet, meta: &Meta, bytes: &'a [u8]) -> Plan<'a> {
    let packet = match packet::parse(bytes) {
        Ok(p) => p,
        Err(e) => {
            log::trace!("unparsed packet ({} bytes): {e}", bytes.len());
            // Rules cannot look at what we could not read: the default verdict applies.
            let outcome = rules.default_outcome();
            let mark = outcome.set_mark.map_or(meta.mark, |(value, mask)| {
                apply_mask(meta.mark, value, mask)
            });
            return Plan {
                class: Class::Unparsed,
                verdict: outcome.verdict,
                rule: outcome.rule,
                mark,
                pairing: false,
                dns_port: false,
                step: Step::None,
                conn: None,
                segment: None,
                track: false,
                flow_rules: false,
                message: None,
                answer: None,
            };
        }
    };
    let (class, dns) = dns_of(config, &packet);
    let ctx = Ctx {
        meta,
        packet: &packet,
        dns: dns.as_ref(),
    };
    let outcome = rules.evaluate(&ctx);
    let mark = match outcome.set_mark {
        Some((value, mask)) => apply_mask(meta.mark, value, mask),
        None => meta.mark,
    };
    let dns_port =
        config.dns_ports.contains(&packet.dport) || config.dns_ports.contains(&packet.sport);
    let mut plan = Plan {
        class,
        verdict: outcome.verdict,
        rule: outcome.rule,
        mark,
        pairing: outcome.pairing,
        dns_port,
        step: Step::None,
        conn: None,
        segment: None,
        track: false,
        flow_rules: false,
        message: None,
        answer: None,
    };
    if dns_port
        && outcome.pairing
        && packet.proto == Proto::Tcp
        && meta.direction() == Direction::LocalOut
        && meta.conn.is_none()
    {
        plan.conn = Some(ConnKey {
            local: SocketAddr::new(packet.src, packet.sport),
            remote: SocketAddr::new(packet.dst, packet.dport),
        });
    }
    if outcome.verdict == Verdict::Drop {
        return plan;
    }
    let flow_rules = rules.has_flow_rules();
    plan.flow_rules = flow_rules;
    plan.track = outcome.pairing || flow_rules;
    if dns_port && packet.proto == Proto::Tcp && plan.track {
        // DNS over TCP is read as a stream (several messages in a segment, one message over
        // several): the steps come from the messages, in [`apply`].
        plan.segment = Segment::of(&packet);
        if meta.checksum == Checksum::NotVerified && !crate::checksum::transport_ok(bytes) {
            // The receiver drops it; its sender retransmits what it carried.
            plan.class = Class::BadChecksum;
            plan.segment = None;
        }
    }
    match dns.as_ref() {
        // DNS over TCP takes its steps from the stream, or none (see above).
        Some(_) if packet.proto == Proto::Tcp => {}
        Some(dns) => {
            // Flow learning needs the query an answer answers, so the tables follow DNS for it
            // even where a rule turns pairing's marks off.
            if outcome.pairing || flow_rules {
                plan.step = dns_step(meta, &packet, dns, mark);
                if let Step::UpstreamAnswer { .. } = plan.step {
                    // Read for the names it points to only if the tables attribute names.
                    plan.message = Some(packet.payload);
                }
            }
            if flow_rules && dns.response && meta.direction() != Direction::Incoming {
                // An answer going to a client (from the local resolver, or routed through):
                // read its addresses now, outside any lock; [`apply`] learns them only if it
                // answers a query seen from that client.
                plan.answer = dns_message(&packet).and_then(flows::answer_addresses);
            }
        }
        None if packet.proto == Proto::Tcp
            && outcome.pairing
            && packet.tcp.syn
            && !packet.tcp.ack
            && meta.direction() == Direction::LocalOut
            && config.dns_ports.contains(&packet.dport) =>
        {
            plan.step = Step::TcpOpen {
                conn: ConnKey {
                    local: SocketAddr::new(packet.src, packet.sport),
                    remote: SocketAddr::new(packet.dst, packet.dport),
                },
            };
            // The SYN starts the connection: no mark to keep yet.
            plan.conn = None;
        }
        None if flow_rules
            && !config.dns_ports.contains(&packet.dport)
            && meta.direction() != Direction::LocalOut =>
        {
            plan.step = Step::FlowOpen {
                client: packet.src,
                dst: packet.dst,
            };
        }
        None => {}
    }
    if let Step::ClientQuery { .. } | Step::ForwardedQuery { .. } = plan.step
        && meta.checksum == Checksum::NotVerified
        && !crate::checksum::transport_ok(bytes)
    {
        // The receiving socket drops it: recording it would let a host that sends queries no
        // resolver ever sees hold a slot against other clients.
        plan.class = Class::BadChecksum;
        plan.step = Step::None;
    }
    plan
}

/// Most names taken from one upstream answer for causal attribution.
pub const MAX_DERIVED: usize = 16;

/// The names an upstream answer points a resolution to: the name servers it delegates to (NS
/// records, in the authority section of a referral or the answer to an NS query) and the
/// targets of its CNAME and DNAME records. A recursive resolver asks about these next on the
/// same client's behalf (name-server addresses, the alias's target). At most [`MAX_DERIVED`];
/// reading stops at the first malformed record; an answer with no record names nothing.
pub fn derived_names(message: &[u8]) -> Vec<Name> {
    use crate::dns::answer::{Message, RData, Section};
    let mut out = Vec::new();
    // Counts in the header: no records, nothing to read (most answers over a forwarder's
    // link carry only addresses, but a lone CNAME does point elsewhere, so any record counts).
    let counts = message.get(6..10).unwrap_or_default();
    if counts.iter().all(|&b| b == 0) {
        return out;
    }
    let Ok(msg) = Message::parse(message) else {
        return out;
    };
    for record in msg.sections(Section::Answer, Section::Authority) {
        let Ok(record) = record else { break };
        let target = match &record.data {
            RData::Cname(n) | RData::Dname(n) | RData::Ns(n) => n,
            _ => continue,
        };
        if !out.contains(target) {
            out.push(target.clone());
            if out.len() >= MAX_DERIVED {
                break;
            }
        }
    }
    out
}

/// The DNS message in a packet: the UDP payload, or the message after a TCP segment's length
/// prefix.
fn dns_message<'a>(packet: &Packet<'a>) -> Option<&'a [u8]> {
    match packet.proto {
        Proto::Udp => Some(packet.payload),
        Proto::Tcp => packet.payload.get(2..),
        _ => None,
    }
}

/// Parse the DNS message in a packet to or from a DNS port. Anything else is `None`.
fn dns_of(config: &EngineConfig, packet: &Packet<'_>) -> (Class, Option<Dns>) {
    let to_dns = config.dns_ports.contains(&packet.dport);
    let from_dns = config.dns_ports.contains(&packet.sport);
    if !to_dns && !from_dns {
        return (Class::NotDns, None);
    }
    let parsed = match packet.proto {
        Proto::Udp => dns::parse_udp(packet.payload),
        // Handshake and bare ACKs of a DNS-over-TCP connection: nothing to read.
        Proto::Tcp if packet.payload.is_empty() => return (Class::NotDns, None),
        Proto::Tcp => dns::parse_tcp(packet.payload),
        _ => return (Class::NotDns, None),
    };
    match parsed {
        Ok(d) => (Class::Dns, Some(d)),
        Err(e) => {
            log::trace!(
                "{} {}:{} -> {}:{}: {e}",
                packet.proto,
                packet.src,
                packet.sport,
                packet.dst,
                packet.dport
            );
            (Class::DnsError, None)
        }
    }
}

/// The pairing step for the DNS message of a packet.
fn dns_step(meta: &Meta, packet: &Packet<'_>, dns: &Dns, mark: u32) -> Step {
    let src = SocketAddr::new(packet.src, packet.sport);
    let dst = SocketAddr::new(packet.dst, packet.dport);
    message_step(meta.direction(), packet.proto, src, dst, dns, mark)
}

/// The pairing step for a DNS message, from its direction and whether it is an answer.
fn message_step(
    direction: Direction,
    proto: Proto,
    src: SocketAddr,
    dst: SocketAddr,
    dns: &Dns,
    mark: u32,
) -> Step {
    let Some(question) = dns.question.as_ref() else {
        return Step::None;
    };
    // Standard queries only; a "query" with answers is not one a stub or resolver sends, and is
    // most likely a misread fragment of something else.
    if dns.opcode != 0 || (!dns.response && dns.answer_count != 0) {
        return Step::None;
    }
    let question = question.key.clone();
    match (direction, dns.response) {
        (Direction::Incoming, false) => Step::ClientQuery {
            question,
            asker: Asker {
                client: src,
                server: dst,
                id: dns.id,
            },
            mark,
            via: proto,
        },
        (Direction::LocalOut, false) => Step::UpstreamQuery {
            question,
            flow: FlowKey {
                proto,
                local: src,
                remote: dst,
                id: dns.id,
            },
        },
        (Direction::Incoming, true) => Step::UpstreamAnswer {
            flow: FlowKey {
                proto,
                local: dst,
                remote: src,
                id: dns.id,
            },
            truncated: dns.truncated,
            derived: Vec::new(),
        },
        (Direction::LocalOut, true) => Step::ClientAnswer {
            question,
            asker: Asker {
                client: dst,
                server: src,
                id: dns.id,
            },
        },
        (Direction::Forwarded, false) => Step::ForwardedQuery {
            question,
            asker: Asker {
                client: src,
                server: dst,
                id: dns.id,
            },
            via: proto,
        },
        (Direction::Forwarded, true) => Step::ForwardedAnswer {
            question,
            asker: Asker {
                client: dst,
                server: src,
                id: dns.id,
            },
            via: proto,
        },
    }
}

/// Perform the plan's step on the tables, and the steps of every DNS message the packet's TCP
/// segment completes or contains.
pub fn apply(
    plan: &Plan<'_>,
    rules: &RuleSet,
    tables: &mut Tables,
    meta: &Meta,
    now: Instant,
) -> Applied {
    let Tables {
        pairing,
        learned,
        streams,
    } = tables;
    let mut applied = Applied::NOTHING;
    let own_step;
    let first_step = match (&plan.step, plan.message) {
        (
            Step::UpstreamAnswer {
                flow, truncated, ..
            },
            Some(message),
        ) if pairing.attributing() => {
            own_step = Step::UpstreamAnswer {
                flow: *flow,
                truncated: *truncated,
                derived: derived_names(message),
            };
            &own_step
        }
        (step, _) => step,
    };
    // The connection's mark, where the packet is not its connection's first: the queue reports
    // it where the kernel can; else nfqmark remembers the TCP connections it saw start.
    applied.conn_mark = meta
        .conn
        .filter(|c| !c.first)
        .map(|c| c.mark)
        .or_else(|| plan.conn.and_then(|c| pairing.conn_mark(c, now)));
    step(
        first_step,
        plan,
        plan.answer.as_ref(),
        rules,
        pairing,
        learned,
        now,
        &mut applied,
    );
    if let Some((id, segment)) = plan.segment {
        let direction = meta.direction();
        let read = streams.segment(id, segment, now);
        for message in read.messages() {
            applied.messages = applied.messages.saturating_add(1);
            let Ok(dns) = dns::parse_udp(message.bytes) else {
                applied.message_errors = applied.message_errors.saturating_add(1);
                continue;
            };
            let mut s = message_step(direction, Proto::Tcp, id.src, id.dst, &dns, plan.mark);
            if let Step::UpstreamAnswer { derived, .. } = &mut s
                && pairing.attributing()
            {
                *derived = derived_names(message.bytes);
            }
            let answer = (plan.flow_rules && dns.response && direction != Direction::Incoming)
                .then(|| flows::answer_addresses(message.bytes))
                .flatten();
            step(
                &s,
                plan,
                answer.as_ref(),
                rules,
                pairing,
                learned,
                now,
                &mut applied,
            );
        }
    }
    applied
}

/// One pairing or learning step; what it finds is added to `applied` (the first role and mark
/// found stand for the packet).
#[allow(clippy::too_many_arguments)] // one call site per kind of message; a struct would only rename them
fn step(
    step: &Step,
    plan: &Plan<'_>,
    answer: Option<&Resolution>,
    rules: &RuleSet,
    pairing: &mut Pairing,
    learned: &mut Learned,
    now: Instant,
    applied: &mut Applied,
) {
    let paired = |m: UpstreamMatch| match m {
        UpstreamMatch::Paired { mark, ambiguous } => (true, ambiguous, Some(mark)),
        UpstreamMatch::Unpaired => (false, false, None),
    };
    let mut role = Role::NotPaired;
    let mut carried = None;
    // The client an answer goes to, and its mark, when the answer may teach flow rules.
    let mut learn_for = None;
    match step {
        Step::None => return,
        Step::ClientQuery {
            question,
            asker,
            mark,
            via,
        } => {
            pairing.client_query(question, *asker, *mark, *via, now);
            if *via == Proto::Tcp {
                // The client's connection to the resolver: its answers keep this mark.
                let conn = ConnKey {
                    local: asker.server,
                    remote: asker.client,
                };
                pairing.remember_conn(conn, *mark, now);
            }
            role = Role::ClientQuery;
        }
        Step::UpstreamQuery { question, flow } => {
            let (ok, ambiguous, c) = paired(pairing.upstream_query(question, *flow, now));
            role = Role::UpstreamQuery {
                paired: ok,
                ambiguous,
            };
            carried = c;
        }
        Step::UpstreamAnswer {
            flow,
            truncated,
            derived,
        } => {
            carried = pairing.upstream_answer_with(flow, *truncated, derived, now);
            role = Role::UpstreamAnswer {
                paired: carried.is_some(),
            };
        }
        Step::ClientAnswer { question, asker } => {
            carried = pairing.client_answer(question, *asker, now);
            role = Role::ClientAnswer {
                paired: carried.is_some(),
            };
            if carried.is_some() {
                let mask = pairing.config().mask;
                let mark = carried
                    .filter(|m| m & mask != 0)
                    .map_or(plan.mark, |c| apply_mask(plan.mark, c, mask));
                learn_for = Some((asker.client.ip(), mark));
            }
        }
        Step::TcpOpen { conn } => {
            let candidates = pairing.tcp_candidates(*conn, now, MAX_SYN_CANDIDATES);
            if !candidates.is_empty() {
                // Decided by [`settle_syn`], once the kernel has been asked.
                applied.syn_candidates = candidates;
                return;
            }
            let matched = pairing.tcp_open(*conn, now);
            (role, carried) = opened(pairing, *conn, matched, plan.mark, now);
        }
        Step::ForwardedQuery {
            question,
            asker,
            via,
        } => pairing.forwarded_query(question, *asker, *via, now),
        Step::ForwardedAnswer {
            question,
            asker,
            via,
        } => {
            if pairing.forwarded_answer(question, *asker, *via, now) {
                learn_for = Some((asker.client.ip(), plan.mark));
            }
        }
        Step::FlowOpen { client, dst } => {
            if let Some(target) = learned.lookup(*client, plan.mark, *dst, now) {
                let (value, mask) = target.mark;
                applied.flow_mark = Some(apply_mask(plan.mark, value, mask));
                role = Role::FlowMarked;
            }
        }
    }
    if applied.role == Role::NotPaired {
        applied.role = role;
    }
    if applied.carried.is_none() {
        applied.carried = carried;
    }
    // Each message pairing would have marked otherwise than its connection is a conflict: the
    // connection's mark wins (see [`finish`]).
    if let (Some(c), Some(conn)) = (carried, applied.conn_mark)
        && plan.pairing
        && plan.dns_port
    {
        let mask = pairing.config().mask;
        let wanted = if c & mask != 0 {
            apply_mask(plan.mark, c, mask)
        } else {
            plan.mark
        };
        if apply_mask(wanted, conn, mask) != wanted {
            applied.conflicts = applied.conflicts.saturating_add(1);
        }
    }
    match (learn_for, answer) {
        (Some((client, client_mark)), Some(answer)) => {
            let n = learn(rules, learned, client, client_mark, answer, now);
            applied.learned = applied.learned.saturating_add(n);
        }
        (None, Some(_)) => log::trace!("answer to a query nfqmark did not see: not learned"),
        _ => {}
    }
}

/// Remember the addresses of an answer a client asked for, when a flow rule names one of its
/// names. Returns how many were learned.
fn learn(
    rules: &RuleSet,
    learned: &mut Learned,
    client: std::net::IpAddr,
    client_mark: u32,
    resolution: &Resolution,
    now: Instant,
) -> u16 {
    if resolution.addresses.is_empty() {
        return 0;
    }
    let Some(target) = rules.flow_target(client, client_mark, &resolution.names) else {
        return 0;
    };
    let mut n: u16 = 0;
    for a in &resolution.addresses {
        log::debug!(
            "flow rule {}: {} resolved {} -> {} (ttl {} s)",
            target.rule,
            client,
            resolution
                .names
                .first()
                .map(|n| n.to_ascii())
                .unwrap_or_default(),
            a.addr,
            a.ttl
        );
        learned.learn(client, client_mark, a.addr, a.ttl, target, now);
        n = n.saturating_add(1);
    }
    n
}

/// The decision: the plan's verdict, and the mark once pairing or a flow rule has spoken, with
/// the connection's mark kept where the packet is not its connection's first.
pub fn finish(meta: &Meta, plan: &Plan, applied: &Applied, mask: u32) -> Decision {
    let mut mark = plan.mark;
    if plan.verdict == Verdict::Drop {
        mark = meta.mark;
    } else {
        if plan.pairing {
            // A client whose mark is empty under the mask carries nothing.
            if let Some(carried) = applied.carried.filter(|m| m & mask != 0) {
                mark = apply_mask(mark, carried, mask);
            }
            // Any packet of a DNS connection that is not its first keeps the connection's
            // mark under the mask: its route and NAT binding were chosen with it.
            if plan.dns_port
                && let Some(conn_mark) = applied.conn_mark
            {
                mark = apply_mask(mark, conn_mark, mask);
            }
        }
        if let Some(flow_mark) = applied.flow_mark {
            mark = flow_mark;
        }
    }
    // A TCP segment read as a stream is DNS when it completed or held a message; a segment
    // with none (handshake, ACK, the first part of a message) is not an error.
    let class = match (
        plan.segment.is_some(),
        applied.messages,
        applied.message_errors,
    ) {
        (false, _, _) => plan.class,
        (true, 0, _) => Class::NotDns,
        (true, n, bad) if bad >= n => Class::DnsError,
        (true, _, _) => Class::Dns,
    };
    Decision {
        verdict: plan.verdict,
        mark: (mark != meta.mark).then_some(mark),
        role: applied.role,
        rule: plan.rule,
        class,
        conflicts: applied.conflicts,
        learned: applied.learned,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{RefCell, RefMut};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::time::Duration;

    use hickory_proto::op::OpCode;
    use hickory_proto::rr::RecordType;

    use super::*;
    use crate::fixtures;
    use crate::types::Hook;

    const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 137));
    const CLIENT4B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 138));
    const CLIENT4C: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 139));
    const LAN4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const WAN4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
    const UPSTREAM4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 53));
    const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x137));
    const LAN6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
    const WAN6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2));
    const UPSTREAM6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x53));

    const CLIENT_PORT: u16 = 40_000;
    const RESOLVER_PORT: u16 = 33_000;
    const MARK: u32 = 137;
    const MS: Duration = Duration::from_millis(1);

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Wire {
        Udp,
        Tcp,
    }

    /// One DNS message in one packet, framed for TCP when it goes over TCP.
    fn packet(wire: Wire, src: IpAddr, sport: u16, dst: IpAddr, dport: u16, msg: &[u8]) -> Vec<u8> {
        match wire {
            Wire::Udp => fixtures::udp(src, sport, dst, dport, msg),
            Wire::Tcp => fixtures::tcp(src, sport, dst, dport, &fixtures::tcp_framed(msg)),
        }
    }

    /// The four packets of one resolution, seen from the resolver's host.
    struct Resolution {
        client_query: Vec<u8>,
        upstream_query: Vec<u8>,
        upstream_answer: Vec<u8>,
        client_answer: Vec<u8>,
    }

    /// Who talks to whom, over what, with which ids and spellings of the name.
    #[derive(Clone, Copy)]
    struct Plan {
        client: IpAddr,
        client_port: u16,
        lan: IpAddr,
        wan: IpAddr,
        upstream: IpAddr,
        client_wire: Wire,
        upstream_wire: Wire,
        client_id: u16,
        upstream_id: u16,
        client_name: &'static str,
        upstream_name: &'static str,
    }

    impl Plan {
        fn v4() -> Plan {
            Plan {
                client: CLIENT4,
                client_port: CLIENT_PORT,
                lan: LAN4,
                wan: WAN4,
                upstream: UPSTREAM4,
                client_wire: Wire::Udp,
                upstream_wire: Wire::Udp,
                client_id: 0x1111,
                upstream_id: 0x2222,
                client_name: "www.example.com",
                upstream_name: "www.example.com",
            }
        }

        fn client_v6(self) -> Plan {
            Plan {
                client: CLIENT6,
                lan: LAN6,
                ..self
            }
        }

        fn upstream_v6(self) -> Plan {
            Plan {
                wan: WAN6,
                upstream: UPSTREAM6,
                ..self
            }
        }

        fn client_query(&self) -> Vec<u8> {
            let msg = fixtures::dns_query(self.client_id, self.client_name);
            packet(
                self.client_wire,
                self.client,
                self.client_port,
                self.lan,
                53,
                &msg,
            )
        }

        fn upstream_query(&self) -> Vec<u8> {
            let msg = fixtures::dns_query(self.upstream_id, self.upstream_name);
            packet(
                self.upstream_wire,
                self.wan,
                RESOLVER_PORT,
                self.upstream,
                53,
                &msg,
            )
        }

        fn upstream_answer(&self) -> Vec<u8> {
            let addrs = [Ipv4Addr::new(192, 0, 2, 80)];
            let msg = fixtures::dns_answer_a(self.upstream_id, self.upstream_name, &addrs);
            packet(
                self.upstream_wire,
                self.upstream,
                53,
                self.wan,
                RESOLVER_PORT,
                &msg,
            )
        }

        fn client_answer(&self) -> Vec<u8> {
            let addrs = [Ipv4Addr::new(192, 0, 2, 80)];
            let msg = fixtures::dns_answer_a(self.client_id, self.client_name, &addrs);
            packet(
                self.client_wire,
                self.lan,
                53,
                self.client,
                self.client_port,
                &msg,
            )
        }

        fn packets(&self) -> Resolution {
            Resolution {
                client_query: self.client_query(),
                upstream_query: self.upstream_query(),
                upstream_answer: self.upstream_answer(),
                client_answer: self.client_answer(),
            }
        }
    }

    /// The engine with its state, and a clock the test moves.
    struct Lab {
        config: EngineConfig,
        rules: RuleSet,
        tables: RefCell<Tables>,
        stats: crate::stats::Stats,
        t0: Instant,
    }

    impl Lab {
        fn new() -> Lab {
            Lab::with(EngineConfig::default())
        }

        fn with(config: EngineConfig) -> Lab {
            Lab {
                tables: RefCell::new(Tables::new(&config, LearnConfig::default())),
                stats: crate::stats::Stats::default(),
                config,
                rules: RuleSet::empty(),
                t0: Instant::now(),
            }
        }

        fn with_pairing(pairing: PairingConfig) -> Lab {
            Lab::with(EngineConfig {
                pairing,
                ..EngineConfig::default()
            })
        }

        fn decide_meta(&self, meta: Meta, bytes: &[u8], at: Duration) -> Decision {
            let d = decide(
                &self.config,
                &self.rules,
                &mut self.tables.borrow_mut(),
                &meta,
                bytes,
                self.t0 + at,
            );
            self.stats.count(&d);
            d
        }

        /// Decide at `at` after the lab started, queued from `hook` with `mark`.
        fn decide_at(&self, hook: Hook, mark: u32, bytes: &[u8], at: Duration) -> Decision {
            self.decide_meta(meta(hook, mark), bytes, at)
        }

        fn decide(&self, hook: Hook, mark: u32, bytes: &[u8]) -> Decision {
            self.decide_at(hook, mark, bytes, Duration::ZERO)
        }

        fn table(&self) -> RefMut<'_, Pairing> {
            RefMut::map(self.tables.borrow_mut(), |t| &mut t.pairing)
        }

        /// The four moments with the hooks the README's iptables rules queue them from: returns
        /// the decisions for the client query, upstream query, upstream answer and client answer.
        fn resolve(&self, r: &Resolution, client_mark: u32) -> [Decision; 4] {
            [
                self.decide_at(Hook::Input, client_mark, &r.client_query, Duration::ZERO),
                self.decide_at(Hook::Output, 0, &r.upstream_query, MS),
                self.decide_at(Hook::Input, 0, &r.upstream_answer, 2 * MS),
                self.decide_at(Hook::Output, 0, &r.client_answer, 3 * MS),
            ]
        }
    }

    /// Metadata as the kernel gives it: an input interface for arriving packets, none for
    /// locally generated ones.
    fn meta(hook: Hook, mark: u32) -> Meta {
        let (indev, outdev) = match hook {
            Hook::PreRouting | Hook::Input => (2, 0),
            Hook::Forward => (2, 3),
            Hook::Output | Hook::PostRouting | Hook::Other(_) => (0, 3),
        };
        Meta::new(hook, mark, indev, outdev)
    }

    fn accepted(mark: Option<u32>, role: Role) -> Decision {
        Decision {
            verdict: Verdict::Accept,
            mark,
            role,
            rule: None,
            class: Class::Dns,
            conflicts: 0,
            learned: 0,
        }
    }

    fn upstream_query(paired: bool, ambiguous: bool) -> Role {
        Role::UpstreamQuery { paired, ambiguous }
    }

    /// Decisions of a fully paired resolution whose client carried `mark`.
    fn all_paired(mark: u32) -> [Decision; 4] {
        [
            accepted(None, Role::ClientQuery),
            accepted(Some(mark), upstream_query(true, false)),
            accepted(Some(mark), Role::UpstreamAnswer { paired: true }),
            accepted(Some(mark), Role::ClientAnswer { paired: true }),
        ]
    }

    /// Accepted, mark unchanged, no pairing role, no rule: what the engine does with a packet
    /// it has nothing to say about (whatever it found when reading it).
    fn assert_untouched(d: Decision) {
        assert_eq!(
            (d.verdict, d.mark, d.role, d.rule, d.conflicts),
            (Verdict::Accept, None, Role::NotPaired, None, 0),
            "{d:?}"
        );
    }

    // --- The four moments -------------------------------------------------------------------

    #[test]
    fn four_moments_over_udp_ipv4_carry_the_client_mark() {
        let lab = Lab::new();
        assert_eq!(lab.resolve(&Plan::v4().packets(), MARK), all_paired(MARK));
        let table = lab.table();
        assert_eq!((table.client_len(), table.upstream_len()), (0, 0));
        assert_eq!(
            table.counters,
            crate::pairing::PairingCounters {
                client_queries: 1,
                paired: 1,
                upstream_answers: 1,
                client_answers: 1,
                ..Default::default()
            }
        );
    }

    #[test]
    fn four_moments_over_tcp_carry_the_client_mark() {
        let plan = Plan {
            client_wire: Wire::Tcp,
            upstream_wire: Wire::Tcp,
            ..Plan::v4()
        };
        let lab = Lab::new();
        assert_eq!(lab.resolve(&plan.packets(), MARK), all_paired(MARK));
    }

    #[test]
    fn four_moments_over_ipv6_carry_the_client_mark() {
        let lab = Lab::new();
        let plan = Plan::v4().client_v6().upstream_v6();
        assert_eq!(lab.resolve(&plan.packets(), MARK), all_paired(MARK));
    }

    #[test]
    fn client_over_ipv6_with_upstream_over_ipv4_is_paired() {
        let lab = Lab::new();
        let plan = Plan::v4().client_v6();
        assert_eq!(lab.resolve(&plan.packets(), MARK), all_paired(MARK));
    }

    #[test]
    fn client_over_ipv4_with_upstream_over_ipv6_is_paired() {
        let lab = Lab::new();
        let plan = Plan::v4().upstream_v6();
        assert_eq!(lab.resolve(&plan.packets(), MARK), all_paired(MARK));
    }

    #[test]
    fn every_mix_of_transports_and_families_is_paired() {
        for client_wire in [Wire::Udp, Wire::Tcp] {
            for upstream_wire in [Wire::Udp, Wire::Tcp] {
                for client_v6 in [false, true] {
                    for upstream_v6 in [false, true] {
                        let mut plan = Plan {
                            client_wire,
                            upstream_wire,
                            ..Plan::v4()
                        };
                        if client_v6 {
                            plan = plan.client_v6();
                        }
                        if upstream_v6 {
                            plan = plan.upstream_v6();
                        }
                        let lab = Lab::new();
                        assert_eq!(
                            lab.resolve(&plan.packets(), MARK),
                            all_paired(MARK),
                            "client {client_wire:?} v6={client_v6}, \
                             upstream {upstream_wire:?} v6={upstream_v6}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn ids_differing_between_client_and_upstream_query_are_paired() {
        let plan = Plan {
            client_id: 0x0001,
            upstream_id: 0xfffe,
            ..Plan::v4()
        };
        assert_eq!(Lab::new().resolve(&plan.packets(), MARK), all_paired(MARK));
    }

    #[test]
    fn upstream_query_with_0x20_case_is_paired() {
        let plan = Plan {
            client_name: "www.example.com",
            upstream_name: "wWw.ExAmPle.CoM",
            ..Plan::v4()
        };
        assert_eq!(Lab::new().resolve(&plan.packets(), MARK), all_paired(MARK));
        // And the other way round, with a client that writes in capitals.
        let plan = Plan {
            client_name: "WWW.EXAMPLE.COM",
            upstream_name: "www.eXample.com",
            ..Plan::v4()
        };
        assert_eq!(Lab::new().resolve(&plan.packets(), MARK), all_paired(MARK));
    }

    #[test]
    fn upstream_query_for_another_question_is_not_paired() {
        let lab = Lab::new();
        let plan = Plan::v4();
        lab.decide(Hook::Input, MARK, &plan.client_query());
        let other = Plan {
            upstream_name: "www.example.org",
            ..plan
        }
        .upstream_query();
        assert_eq!(
            lab.decide(Hook::Output, 0, &other),
            accepted(None, upstream_query(false, false))
        );
        assert_eq!(lab.table().counters.unpaired, 1);
        // The same name with another type is the waiting resolution's own name (a recursive
        // resolver asks A before AAAA): it carries the client's mark.
        let msg = fixtures::dns_message(0x2222, "www.example.com", RecordType::AAAA, false);
        let aaaa = fixtures::udp(WAN4, RESOLVER_PORT, UPSTREAM4, 53, &msg);
        assert_eq!(
            lab.decide(Hook::Output, 0, &aaaa),
            accepted(Some(MARK), upstream_query(true, false))
        );
        assert_eq!(lab.table().counters.by_own_name, 1);
    }

    #[test]
    fn upstream_retry_over_tcp_after_a_truncated_udp_answer_is_paired() {
        let lab = Lab::new();
        let udp = Plan::v4();
        let tcp = Plan {
            upstream_wire: Wire::Tcp,
            upstream_id: 0x3333,
            ..udp
        };
        lab.decide(Hook::Input, MARK, &udp.client_query());
        let d = lab.decide(Hook::Output, 0, &udp.upstream_query());
        assert_eq!(d.mark, Some(MARK));
        // The answer is truncated (TC): the resolver will retry over TCP.
        let mut answer = udp.upstream_answer();
        answer[20 + 8 + 2] |= 0x02;
        let d = lab.decide(Hook::Input, 0, &answer);
        assert_eq!(d.mark, Some(MARK));
        // The SYN carries no question, but the truncated answer announced it: it gets the
        // client's mark, so the connection's route and NAT binding are chosen with it.
        let syn = fixtures::tcp_syn(WAN4, RESOLVER_PORT, UPSTREAM4, 53);
        let d = lab.decide(Hook::Output, 0, &syn);
        assert_eq!(
            (d.mark, d.role),
            (Some(MARK), Role::TcpOpen { paired: true })
        );
        let d = lab.decide(Hook::Output, 0, &tcp.upstream_query());
        assert_eq!(d, accepted(Some(MARK), upstream_query(true, false)));
        let d = lab.decide(Hook::Input, 0, &tcp.upstream_answer());
        assert_eq!(d.mark, Some(MARK));
        let d = lab.decide(Hook::Output, 0, &udp.client_answer());
        assert_eq!(d, accepted(Some(MARK), Role::ClientAnswer { paired: true }));
    }

    #[test]
    fn upstream_answer_over_udp_does_not_match_a_tcp_query() {
        let lab = Lab::new();
        let tcp = Plan {
            upstream_wire: Wire::Tcp,
            ..Plan::v4()
        };
        let udp = Plan::v4();
        lab.decide(Hook::Input, MARK, &tcp.client_query());
        lab.decide(Hook::Output, 0, &tcp.upstream_query());
        assert_eq!(
            lab.decide(Hook::Input, 0, &udp.upstream_answer()),
            accepted(None, Role::UpstreamAnswer { paired: false })
        );
    }

    // --- Hooks and directions ---------------------------------------------------------------

    #[test]
    fn postrouting_without_input_interface_counts_as_local_out() {
        let lab = Lab::new();
        let r = Plan::v4().packets();
        let local = Meta::new(Hook::PostRouting, 0, 0, 3);
        lab.decide(Hook::Input, MARK, &r.client_query);
        assert_eq!(
            lab.decide_meta(local, &r.upstream_query, MS),
            accepted(Some(MARK), upstream_query(true, false))
        );
        lab.decide(Hook::Input, 0, &r.upstream_answer);
        assert_eq!(
            lab.decide_meta(local, &r.client_answer, MS),
            accepted(Some(MARK), Role::ClientAnswer { paired: true })
        );
    }

    #[test]
    fn postrouting_with_an_input_interface_is_forwarded_and_not_paired() {
        let lab = Lab::new();
        let r = Plan::v4().packets();
        let routed = Meta::new(Hook::PostRouting, 0, 2, 3);
        lab.decide(Hook::Input, MARK, &r.client_query);
        assert_untouched(lab.decide_meta(routed, &r.upstream_query, MS));
        assert_untouched(lab.decide_meta(routed, &r.client_answer, MS));
        assert_eq!(lab.table().client_len(), 1);
        assert_eq!(lab.table().counters.paired, 0);
    }

    #[test]
    fn forward_hook_is_never_paired() {
        let lab = Lab::new();
        let r = Plan::v4().packets();
        // A client query routed through this host is not remembered...
        assert_untouched(lab.decide(Hook::Forward, MARK, &r.client_query));
        assert_eq!(lab.table().client_len(), 0);
        // ...and a routed query finds no partner even when a local client waits.
        lab.decide(Hook::Input, MARK, &r.client_query);
        for bytes in [&r.upstream_query, &r.upstream_answer, &r.client_answer] {
            assert_untouched(lab.decide(Hook::Forward, 0, bytes));
        }
        let table = lab.table();
        assert_eq!(table.client_len(), 1);
        assert_eq!(table.upstream_len(), 0);
        assert_eq!(table.counters.paired + table.counters.unpaired, 0);
    }

    #[test]
    fn prerouting_client_query_is_remembered() {
        let lab = Lab::new();
        let r = Plan::v4().packets();
        assert_eq!(
            lab.decide(Hook::PreRouting, MARK, &r.client_query),
            accepted(None, Role::ClientQuery)
        );
        assert_eq!(
            lab.decide(Hook::Output, 0, &r.upstream_query).mark,
            Some(MARK)
        );
        assert_eq!(
            lab.decide(Hook::PreRouting, 0, &r.upstream_answer).mark,
            Some(MARK)
        );
    }

    #[test]
    fn unknown_hook_is_not_paired() {
        let lab = Lab::new();
        let r = Plan::v4().packets();
        lab.decide(Hook::Input, MARK, &r.client_query);
        for bytes in [&r.client_query, &r.upstream_query, &r.client_answer] {
            assert_untouched(lab.decide(Hook::Other(7), 0, bytes));
        }
        assert_eq!(lab.table().client_len(), 1);
    }

    #[test]
    fn hooks_follow_the_kernel_numbering() {
        assert_eq!(Hook::from_kernel(0), Hook::PreRouting);
        assert_eq!(Hook::from_kernel(1), Hook::Input);
        assert_eq!(Hook::from_kernel(2), Hook::Forward);
        assert_eq!(Hook::from_kernel(3), Hook::Output);
        assert_eq!(Hook::from_kernel(4), Hook::PostRouting);
        assert_eq!(Hook::from_kernel(5), Hook::Other(5));
        assert_eq!(Hook::from_kernel(255), Hook::Other(255));
    }

    #[test]
    fn direction_comes_from_hook_and_input_interface() {
        let m = |hook, indev| Meta::new(hook, 0, indev, 0);
        assert_eq!(m(Hook::PreRouting, 2).direction(), Direction::Incoming);
        assert_eq!(m(Hook::Input, 2).direction(), Direction::Incoming);
        assert_eq!(m(Hook::Input, 0).direction(), Direction::Incoming);
        assert_eq!(m(Hook::Output, 0).direction(), Direction::LocalOut);
        assert_eq!(m(Hook::PostRouting, 0).direction(), Direction::LocalOut);
        assert_eq!(m(Hook::PostRouting, 2).direction(), Direction::Forwarded);
        assert_eq!(m(Hook::Forward, 2).direction(), Direction::Forwarded);
        assert_eq!(m(Hook::Forward, 0).direction(), Direction::Forwarded);
        assert_eq!(m(Hook::Other(9), 0).direction(), Direction::Forwarded);
    }

    // --- Marks and the mask -----------------------------------------------------------------

    #[test]
    fn apply_mask_replaces_only_the_masked_bits() {
        assert_eq!(apply_mask(0xdead_00ab, 0x0000_1234, 0xff00), 0xdead_12ab);
        assert_eq!(apply_mask(0xffff_ffff, 0, 0xff00), 0xffff_00ff);
        assert_eq!(apply_mask(0x1234_5678, 0x9abc_def0, u32::MAX), 0x9abc_def0);
        assert_eq!(apply_mask(0x1234_5678, 0x9abc_def0, 0), 0x1234_5678);
    }

    #[test]
    fn mark_mask_changes_only_the_masked_bits() {
        let lab = Lab::with_pairing(PairingConfig {
            mask: 0xff00,
            ..PairingConfig::default()
        });
        let r = Plan::v4().packets();
        assert_eq!(
            lab.decide(Hook::Input, 0x00ab_1234, &r.client_query),
            accepted(None, Role::ClientQuery)
        );
        // The resolver's packets carry bits of their own (another tool's, outside the mask).
        assert_eq!(
            lab.decide(Hook::Output, 0xdead_00cd, &r.upstream_query),
            accepted(Some(0xdead_12cd), upstream_query(true, false))
        );
        assert_eq!(
            lab.decide(Hook::Input, 0x0001_0000, &r.upstream_answer),
            accepted(Some(0x0001_1200), Role::UpstreamAnswer { paired: true })
        );
        assert_eq!(
            lab.decide(Hook::Output, 0xffff_ffff, &r.client_answer),
            accepted(Some(0xffff_12ff), Role::ClientAnswer { paired: true })
        );
    }

    #[test]
    fn client_mark_zero_under_the_mask_carries_nothing() {
        let lab = Lab::with_pairing(PairingConfig {
            mask: 0xff00,
            ..PairingConfig::default()
        });
        let r = Plan::v4().packets();
        lab.decide(Hook::Input, 0xffff_00ff, &r.client_query);
        // Paired, but with nothing to carry: the resolver's own bits stay as they are.
        assert_eq!(
            lab.decide(Hook::Output, 0x0000_3400, &r.upstream_query),
            accepted(None, upstream_query(true, false))
        );
        assert_eq!(
            lab.decide(Hook::Input, 0, &r.upstream_answer),
            accepted(None, Role::UpstreamAnswer { paired: true })
        );
        assert_eq!(
            lab.decide(Hook::Output, 0x0000_3400, &r.client_answer),
            accepted(None, Role::ClientAnswer { paired: true })
        );
    }

    #[test]
    fn client_without_a_mark_carries_nothing() {
        let lab = Lab::new();
        let d = lab.resolve(&Plan::v4().packets(), 0);
        assert_eq!(d[1], accepted(None, upstream_query(true, false)));
        assert_eq!(d[2], accepted(None, Role::UpstreamAnswer { paired: true }));
        assert_eq!(d[3], accepted(None, Role::ClientAnswer { paired: true }));
    }

    #[test]
    fn packet_already_carrying_the_mark_reports_no_change() {
        let lab = Lab::new();
        let r = Plan::v4().packets();
        lab.decide(Hook::Input, MARK, &r.client_query);
        assert_eq!(
            lab.decide(Hook::Output, MARK, &r.upstream_query),
            accepted(None, upstream_query(true, false))
        );
    }

    // --- Merged questions (the table's policy is tested in pairing.rs) ------------------------

    #[test]
    fn merged_question_with_different_marks_gives_the_oldest_mark_and_is_ambiguous() {
        let lab = Lab::new();
        let plans = [
            (CLIENT4, 0x0101, 1),
            (CLIENT4B, 0x0202, 2),
            (CLIENT4C, 0x0303, 3),
        ]
        .map(|(client, client_id, mark)| {
            (
                Plan {
                    client,
                    client_id,
                    ..Plan::v4()
                },
                mark,
            )
        });
        for (i, (plan, mark)) in plans.iter().enumerate() {
            let at = MS * u32::try_from(i).unwrap();
            lab.decide_at(Hook::Input, *mark, &plan.client_query(), at);
        }
        let upstream = plans[0].0;
        assert_eq!(
            lab.decide_at(Hook::Output, 0, &upstream.upstream_query(), 10 * MS),
            accepted(Some(1), upstream_query(true, true))
        );
        assert_eq!(
            lab.decide_at(Hook::Input, 0, &upstream.upstream_answer(), 11 * MS)
                .mark,
            Some(1)
        );
        // Each client's answer still gets that client's own mark.
        for (plan, mark) in plans.iter().rev() {
            assert_eq!(
                lab.decide_at(Hook::Output, 0, &plan.client_answer(), 12 * MS),
                accepted(Some(*mark), Role::ClientAnswer { paired: true })
            );
        }
        let table = lab.table();
        assert_eq!(table.counters.ambiguous, 1);
        assert_eq!(table.counters.paired, 1);
        assert_eq!(table.client_len(), 0);
    }

    // --- Capacity through the whole decision -------------------------------------------------

    #[test]
    fn tables_stay_within_capacity_through_decide() {
        let lab = Lab::with_pairing(PairingConfig {
            client_capacity: 100,
            upstream_capacity: 50,
            ..PairingConfig::default()
        });
        for i in 0..2_000u16 {
            let name = format!("n{i}.example");
            let msg = fixtures::dns_query(i, &name);
            let at = Duration::from_micros(u64::from(i));
            lab.decide_at(
                Hook::Input,
                MARK,
                &fixtures::udp(CLIENT4, 1024 + i, LAN4, 53, &msg),
                at,
            );
            lab.decide_at(
                Hook::Output,
                0,
                &fixtures::udp(WAN4, RESOLVER_PORT, UPSTREAM4, 53, &msg),
                at,
            );
            let table = lab.table();
            assert!(table.client_len() <= 100);
            assert!(table.upstream_len() <= 50);
        }
        let table = lab.table();
        assert_eq!(table.counters.paired, 2_000);
        assert_eq!(table.counters.evicted, 1_900 + 1_950);
    }

    // --- What is not paired -----------------------------------------------------------------

    #[test]
    fn answer_to_a_client_that_never_asked_is_not_marked() {
        let lab = Lab::new();
        let r = Plan::v4().packets();
        assert_eq!(
            lab.decide(Hook::Output, 0, &r.client_answer),
            accepted(None, Role::ClientAnswer { paired: false })
        );
        // Nor one with another id, or to another port, of a client that did ask.
        lab.decide(Hook::Input, MARK, &r.client_query);
        for other in [
            Plan {
                client_id: 0x1112,
                ..Plan::v4()
            },
            Plan {
                client_port: CLIENT_PORT + 1,
                ..Plan::v4()
            },
        ] {
            assert_eq!(
                lab.decide(Hook::Output, 0, &other.client_answer()),
                accepted(None, Role::ClientAnswer { paired: false })
            );
        }
        assert_eq!(lab.table().client_len(), 1);
    }

    #[test]
    fn upstream_answer_without_its_query_is_not_marked() {
        let lab = Lab::new();
        let plan = Plan::v4();
        assert_eq!(
            lab.decide(Hook::Input, 0, &plan.upstream_answer()),
            accepted(None, Role::UpstreamAnswer { paired: false })
        );
        lab.decide(Hook::Input, MARK, &plan.client_query());
        lab.decide(Hook::Output, 0, &plan.upstream_query());
        let wrong_id = Plan {
            upstream_id: 0x2223,
            ..plan
        };
        assert_eq!(
            lab.decide(Hook::Input, 0, &wrong_id.upstream_answer()),
            accepted(None, Role::UpstreamAnswer { paired: false })
        );
        let spoofed_source = {
            let addrs = [Ipv4Addr::new(192, 0, 2, 66)];
            let msg = fixtures::dns_answer_a(plan.upstream_id, plan.upstream_name, &addrs);
            let other_server = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 99));
            fixtures::udp(other_server, 53, WAN4, RESOLVER_PORT, &msg)
        };
        assert_eq!(
            lab.decide(Hook::Input, 0, &spoofed_source),
            accepted(None, Role::UpstreamAnswer { paired: false })
        );
        assert_eq!(
            lab.decide(Hook::Input, 0, &plan.upstream_answer()).mark,
            Some(MARK)
        );
    }

    #[test]
    fn opcode_other_than_query_is_not_paired() {
        let lab = Lab::new();
        let plan = Plan::v4();
        // A standard query for the same name waits: the others must not pair with it either.
        lab.decide(Hook::Input, MARK, &plan.client_query());
        for opcode in [OpCode::Notify, OpCode::Update, OpCode::Status] {
            let msg = |id, response| {
                fixtures::dns_message_with_opcode(
                    id,
                    "www.example.com",
                    RecordType::A,
                    response,
                    opcode,
                )
            };
            let client_query = fixtures::udp(CLIENT4, CLIENT_PORT, LAN4, 53, &msg(0x1111, false));
            assert_untouched(lab.decide(Hook::Input, MARK, &client_query));
            assert_eq!(lab.table().client_len(), 1);
            let upstream = fixtures::udp(WAN4, RESOLVER_PORT, UPSTREAM4, 53, &msg(0x2222, false));
            assert_untouched(lab.decide(Hook::Output, 0, &upstream));
            let answer = fixtures::udp(LAN4, 53, CLIENT4, CLIENT_PORT, &msg(0x1111, true));
            assert_untouched(lab.decide(Hook::Output, 0, &answer));
            assert_eq!(lab.table().client_len(), 1);
        }
        let table = lab.table();
        assert_eq!(table.counters.paired + table.counters.unpaired, 0);
    }

    #[test]
    fn dns_message_without_a_question_is_not_paired() {
        let lab = Lab::new();
        let r = Plan::v4().packets();
        lab.decide(Hook::Input, MARK, &r.client_query);
        let query = fixtures::udp(
            WAN4,
            RESOLVER_PORT,
            UPSTREAM4,
            53,
            &fixtures::dns_header_only(1, false),
        );
        let answer = fixtures::udp(
            LAN4,
            53,
            CLIENT4,
            CLIENT_PORT,
            &fixtures::dns_header_only(0x1111, true),
        );
        assert_untouched(lab.decide(Hook::Output, 0, &query));
        assert_untouched(lab.decide(Hook::Output, 0, &answer));
        assert_eq!(lab.table().client_len(), 1);
    }

    #[test]
    fn non_dns_packets_are_accepted_without_a_mark() {
        let lab = Lab::new();
        let ntp = fixtures::udp(CLIENT4, 123, LAN4, 123, b"\x1b\0\0\0");
        let https = fixtures::tcp(CLIENT6, 40000, LAN6, 443, b"\x16\x03\x01");
        let icmp = {
            let builder = etherparse::PacketBuilder::ipv4([192, 0, 2, 1], [192, 0, 2, 137], 64)
                .icmpv4_echo_request(7, 1);
            let mut out = Vec::new();
            builder.write(&mut out, b"ping").unwrap();
            out
        };
        // A DNS message on a port that is not a DNS port is not DNS either.
        let elsewhere = fixtures::udp(
            CLIENT4,
            CLIENT_PORT,
            LAN4,
            5353,
            &fixtures::dns_query(1, "www.example.com"),
        );
        for (hook, bytes) in [
            (Hook::Input, &ntp),
            (Hook::Output, &https),
            (Hook::Input, &icmp),
            (Hook::Input, &elsewhere),
        ] {
            assert_untouched(lab.decide(hook, MARK, bytes));
        }
        assert_eq!(lab.stats.not_dns.get(), 4);
        assert_eq!(lab.stats.dns.get(), 0);
        assert_eq!(lab.table().client_len(), 0);
    }

    #[test]
    fn unparsable_packets_are_accepted_without_a_mark() {
        let lab = Lab::new();
        let whole = Plan::v4().client_query();
        let garbage: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
        let mut bad_version = whole.clone();
        bad_version[0] = 0x55;
        let cases: [&[u8]; 5] = [&[], &[0x45], &whole[..19], &garbage, &bad_version];
        for bytes in cases {
            for hook in [Hook::Input, Hook::Output] {
                assert_untouched(lab.decide(hook, MARK, bytes));
            }
        }
        assert_eq!(lab.stats.parse_errors.get(), 10);
        assert_eq!(lab.stats.packets.get(), 10);
        assert_eq!(lab.table().client_len(), 0);
    }

    #[test]
    fn truncated_udp_gets_default_verdict() {
        let lab = Lab::new();
        let whole = Plan::v4().client_query();
        for len in 20..28 {
            assert_untouched(lab.decide(Hook::Input, MARK, &whole[..len]));
        }
        assert_eq!(lab.stats.parse_errors.get(), 8);
    }

    #[test]
    fn truncated_tcp_header_gets_default_verdict() {
        let lab = Lab::new();
        let whole = Plan {
            client_wire: Wire::Tcp,
            ..Plan::v4().client_v6()
        }
        .client_query();
        for len in 40..60 {
            assert_untouched(lab.decide(Hook::Input, MARK, &whole[..len]));
        }
        assert_eq!(lab.stats.parse_errors.get(), 20);
    }

    #[test]
    fn dns_header_cut_gets_default_verdict() {
        let lab = Lab::new();
        let whole = Plan::v4().client_query();
        for len in 28..28 + 12 {
            assert_untouched(lab.decide(Hook::Input, MARK, &whole[..len]));
        }
        assert_eq!(lab.stats.dns_errors.get(), 12);
        assert_eq!(lab.table().client_len(), 0);
    }

    #[test]
    fn question_cut_gets_default_verdict() {
        let lab = Lab::new();
        for plan in [Plan::v4(), Plan::v4().client_v6()] {
            let whole = plan.client_query();
            let header_end = whole.len() - 33 + 12;
            for len in header_end..whole.len() {
                assert_untouched(lab.decide(Hook::Input, MARK, &whole[..len]));
            }
        }
        assert_eq!(lab.stats.dns_errors.get(), 2 * 21);
        assert_eq!(lab.table().client_len(), 0);
    }

    #[test]
    fn udp_length_larger_than_the_copy_still_pairs_a_whole_question() {
        // Lax parsing: the copy is short of what the UDP length claims, but the header and
        // question are all there, so the packet counts.
        let lab = Lab::new();
        let plan = Plan::v4();
        let mut client_query = plan.client_query();
        let claimed = u16::try_from(client_query.len() - 20 + 200).unwrap();
        assert!(fixtures::set_udp_length(&mut client_query, claimed));
        assert_eq!(
            lab.decide(Hook::Input, MARK, &client_query),
            accepted(None, Role::ClientQuery)
        );
        assert_eq!(
            lab.decide(Hook::Output, 0, &plan.upstream_query()).mark,
            Some(MARK)
        );
        // A copy range that cuts long answers inside their records, after the question.
        let addrs = [Ipv4Addr::new(192, 0, 2, 80); 20];
        let long = |id| fixtures::dns_answer_a(id, "www.example.com", &addrs);
        let upstream_answer = fixtures::udp(UPSTREAM4, 53, WAN4, RESOLVER_PORT, &long(0x2222));
        let client_answer = fixtures::udp(LAN4, 53, CLIENT4, CLIENT_PORT, &long(0x1111));
        let copy = 20 + 8 + 12 + 21 + 7;
        assert_eq!(
            lab.decide(Hook::Input, 0, &upstream_answer[..copy]),
            accepted(Some(MARK), Role::UpstreamAnswer { paired: true })
        );
        assert_eq!(
            lab.decide(Hook::Output, 0, &client_answer[..copy]),
            accepted(Some(MARK), Role::ClientAnswer { paired: true })
        );
    }

    #[test]
    fn tcp_message_after_a_bare_length_prefix_is_accepted_unmarked() {
        // A client that writes the length prefix and the message in two segments: the second
        // segment starts with the DNS header, not a prefix. Reading it would need the stream,
        // which nfqmark does not keep; it must at least not remember a garbage question.
        let lab = Lab::new();
        let msg = fixtures::dns_query(0x1111, "www.example.com");
        let framed = fixtures::tcp_framed(&msg);
        let prefix = fixtures::tcp(CLIENT4, CLIENT_PORT, LAN4, 53, &framed[..2]);
        let rest = fixtures::tcp(CLIENT4, CLIENT_PORT, LAN4, 53, &framed[2..]);
        assert_untouched(lab.decide(Hook::Input, MARK, &prefix));
        assert_untouched(lab.decide(Hook::Input, MARK, &rest));
        assert_eq!(lab.table().client_len(), 0);
    }

    #[test]
    fn tcp_syn_without_an_intent_is_accepted_without_a_mark() {
        let lab = Lab::new();
        let r = Plan::v4().packets();
        lab.decide(Hook::Input, MARK, &r.client_query);
        for (hook, bytes) in [
            (
                Hook::Input,
                fixtures::tcp_syn(CLIENT4, CLIENT_PORT, LAN4, 53),
            ),
            (
                Hook::Output,
                fixtures::tcp_syn(WAN4, RESOLVER_PORT, UPSTREAM4, 53),
            ),
            (
                Hook::Output,
                fixtures::tcp_syn(WAN6, RESOLVER_PORT, UPSTREAM6, 53),
            ),
        ] {
            let d = lab.decide(hook, MARK, &bytes);
            assert_eq!(d.mark, None);
            // The resolver's own SYNs are looked up (no intent: the client asked over UDP and
            // got a whole answer); a client's SYN to the resolver is not.
            let resolver = hook == Hook::Output;
            assert_eq!(d.role == Role::TcpOpen { paired: false }, resolver, "{d:?}");
        }
        assert_eq!(lab.stats.not_dns.get(), 3);
        assert_eq!(lab.table().counters.unpaired, 0);
        assert_eq!(lab.table().counters.tcp_unpaired, 2);
    }

    #[test]
    fn tcp_lone_length_prefix_then_the_message_is_one_client_query() {
        let lab = Lab::new();
        let msg = fixtures::dns_query(0x1111, "www.example.com");
        let framed = fixtures::tcp_framed(&msg);
        let seq = fixtures::TCP_DATA_SEQ;
        let prefix = fixtures::tcp_seq(CLIENT4, CLIENT_PORT, LAN4, 53, seq, &framed[..2]);
        let rest = fixtures::tcp_seq(CLIENT4, CLIENT_PORT, LAN4, 53, seq + 2, &framed[2..]);
        assert_untouched(lab.decide(Hook::Input, MARK, &prefix));
        assert_eq!(
            (lab.stats.not_dns.get(), lab.stats.dns_errors.get()),
            (1, 0)
        );
        assert_eq!(lab.table().client_len(), 0);
        let d = lab.decide(Hook::Input, MARK, &rest);
        assert_eq!((d.role, d.class), (Role::ClientQuery, Class::Dns));
        assert_eq!(lab.table().client_len(), 1);
        // The same bytes again (a retransmission) are not a second query.
        lab.decide(Hook::Input, MARK, &rest);
        assert_eq!(lab.table().counters.client_queries, 1);
    }

    #[test]
    fn several_queries_in_one_segment_are_each_recorded() {
        let lab = Lab::new();
        let mut wire = Vec::new();
        for (id, name) in [(1, "a.example"), (2, "b.example"), (3, "c.example")] {
            wire.extend(fixtures::tcp_framed(&fixtures::dns_query(id, name)));
        }
        let d = lab.decide(
            Hook::Input,
            MARK,
            &fixtures::tcp(CLIENT4, CLIENT_PORT, LAN4, 53, &wire),
        );
        assert_eq!(d.role, Role::ClientQuery);
        assert_eq!(lab.table().counters.client_queries, 3);
    }

    #[test]
    fn tcp_answer_over_two_segments_is_paired_when_complete() {
        let lab = Lab::new();
        let plan = Plan {
            client_wire: Wire::Tcp,
            upstream_wire: Wire::Tcp,
            ..Plan::v4()
        };
        lab.decide(Hook::Input, MARK, &plan.client_query());
        lab.decide(Hook::Output, 0, &plan.upstream_query());
        // A long answer split in two segments: the first carries prefix, header and question
        // and is paired; the second starts inside the records.
        let addrs = [Ipv4Addr::new(192, 0, 2, 80); 30];
        let framed = fixtures::tcp_framed(&fixtures::dns_answer_a(
            plan.upstream_id,
            plan.upstream_name,
            &addrs,
        ));
        let (head, tail) = framed.split_at(100);
        let seq = fixtures::TCP_DATA_SEQ;
        let first = fixtures::tcp_seq(UPSTREAM4, 53, WAN4, RESOLVER_PORT, seq, head);
        let second = fixtures::tcp_seq(UPSTREAM4, 53, WAN4, RESOLVER_PORT, seq + 100, tail);
        // The answer is read when its last byte arrives: the segment that completes it pairs.
        assert_untouched(lab.decide(Hook::Input, 0, &first));
        let d = lab.decide(Hook::Input, 0, &second);
        assert_eq!(
            (d.mark, d.role),
            (Some(MARK), Role::UpstreamAnswer { paired: true })
        );
    }

    #[test]
    fn client_query_keeps_its_own_mark() {
        let lab = Lab::new();
        let d = lab.decide(Hook::Input, MARK, &Plan::v4().client_query());
        assert_eq!(d, accepted(None, Role::ClientQuery));
    }

    #[test]
    fn configured_dns_port_is_paired_and_port_53_is_not_dns() {
        let lab = Lab::with(EngineConfig {
            dns_ports: vec![5353],
            ..EngineConfig::default()
        });
        let query = fixtures::dns_query(0x1111, "www.example.com");
        let on = |src, sport, dst, dport| fixtures::udp(src, sport, dst, dport, &query);
        assert_untouched(lab.decide(Hook::Input, MARK, &on(CLIENT4, CLIENT_PORT, LAN4, 53)));
        assert_eq!(
            lab.decide(Hook::Input, MARK, &on(CLIENT4, CLIENT_PORT, LAN4, 5353)),
            accepted(None, Role::ClientQuery)
        );
        assert_eq!(
            lab.decide(Hook::Output, 0, &on(WAN4, RESOLVER_PORT, UPSTREAM4, 5353))
                .mark,
            Some(MARK)
        );
    }

    #[test]
    fn stats_count_every_packet_once() {
        let lab = Lab::new();
        let r = Plan::v4().packets();
        lab.resolve(&r, MARK);
        lab.decide(Hook::Input, 0, &[]);
        lab.decide(Hook::Input, 0, &fixtures::udp(CLIENT4, 1, LAN4, 2, b"x"));
        lab.decide(Hook::Input, 0, &r.client_query[..30]);
        assert_eq!(lab.stats.packets.get(), 7);
        assert_eq!(lab.stats.dns.get(), 4);
        assert_eq!(lab.stats.parse_errors.get(), 1);
        assert_eq!(lab.stats.not_dns.get(), 1);
        assert_eq!(lab.stats.dns_errors.get(), 1);
    }

    #[test]
    fn decision_accept_is_accept_unchanged() {
        assert_untouched(accepted(None, Role::NotPaired));
        assert_eq!(Decision::accept().mark, None);
        assert_eq!(EngineConfig::default().dns_ports, vec![53]);
    }

    // --- Connections: a mark never changes inside a flow (issue 11) ---------------------------

    fn with_conn(mut meta: Meta, mark: u32, first: bool) -> Meta {
        meta.conn = Some(crate::types::Conn { mark, first });
        meta
    }

    #[test]
    fn a_connections_first_packet_takes_the_paired_mark() {
        let lab = Lab::new();
        let r = Plan::v4().packets();
        lab.decide(Hook::Input, MARK, &r.client_query);
        let d = lab.decide_meta(
            with_conn(meta(Hook::Output, 0), 0, true),
            &r.upstream_query,
            MS,
        );
        assert_eq!(d.mark, Some(MARK));
        assert_eq!(d.conflicts, 0);
    }

    #[test]
    fn a_later_packet_keeps_the_connections_mark_and_counts_the_conflict() {
        // The resolver sends client A's query on a connection B's query opened (one query
        // port, or a pipelined TCP connection): its route and NAT binding are B's.
        let lab = Lab::new();
        let r = Plan::v4().packets();
        lab.decide(Hook::Input, MARK, &r.client_query);
        let d = lab.decide_meta(
            with_conn(meta(Hook::Output, 0), 0, false),
            &r.upstream_query,
            MS,
        );
        assert_eq!((d.mark, d.conflicts), (None, 1));
        assert_eq!(d.role, upstream_query(true, false));
        assert_eq!(lab.stats.conn_conflicts.get(), 1);
        // The answer on that connection keeps its mark too.
        let d = lab.decide_meta(
            with_conn(meta(Hook::Input, 0), 0, false),
            &r.upstream_answer,
            2 * MS,
        );
        assert_eq!((d.mark, d.conflicts), (None, 1));
    }

    #[test]
    fn a_later_packet_without_a_query_of_its_own_gets_the_connections_mark() {
        // A bare ACK of the resolver's TCP connection opened for client A, queued before
        // OUTPUT's restore-mark: it must leave with A's mark, or it would leave by the other
        // uplink with this one's source address.
        let lab = Lab::new();
        let ack = fixtures::tcp(WAN4, RESOLVER_PORT, UPSTREAM4, 53, &[]);
        let d = lab.decide_meta(with_conn(meta(Hook::Output, 0), MARK, false), &ack, MS);
        assert_eq!((d.mark, d.conflicts), (Some(MARK), 0));
        // Under a mask, only the mask's bits come from the connection.
        let lab = Lab::with_pairing(PairingConfig {
            mask: 0xff00,
            ..PairingConfig::default()
        });
        let d = lab.decide_meta(with_conn(meta(Hook::Output, 0x12), 0x3f00, false), &ack, MS);
        assert_eq!(d.mark, Some(0x3f12));
    }

    #[test]
    fn without_conntrack_information_a_tcp_connection_keeps_the_mark_its_syn_took() {
        // This kernel reports no conntrack entry with queued packets: nfqmark remembers the
        // marks of the DNS-over-TCP connections it saw start.
        let lab = Lab::new();
        let tcp_client = Plan {
            client_wire: Wire::Tcp,
            ..Plan::v4()
        };
        lab.decide(Hook::Input, MARK, &tcp_client.client_query());
        let syn = fixtures::tcp_syn(WAN4, RESOLVER_PORT, UPSTREAM4, 53);
        assert_eq!(lab.decide(Hook::Output, 0, &syn).mark, Some(MARK));
        let ack = fixtures::tcp(WAN4, RESOLVER_PORT, UPSTREAM4, 53, &[]);
        let d = lab.decide(Hook::Output, 0, &ack);
        assert_eq!((d.mark, d.role), (Some(MARK), Role::NotPaired));
        // Another client's query on that connection keeps the connection's mark (counted).
        let b = Plan {
            client: CLIENT4B,
            client_name: "b.example.com",
            upstream_name: "b.example.com",
            upstream_wire: Wire::Tcp,
            ..Plan::v4()
        };
        lab.decide(Hook::Input, 0, &b.client_query());
        let d = lab.decide(Hook::Output, 0, &b.upstream_query());
        assert_eq!((d.mark, d.conflicts), (Some(MARK), 1));
        // The client's own TCP connection to the resolver: the answer's bare ACKs keep the
        // client's mark too.
        let to_client = fixtures::tcp(LAN4, 53, CLIENT4, CLIENT_PORT, &[]);
        assert_eq!(lab.decide(Hook::Output, 0, &to_client).mark, Some(MARK));
    }

    #[test]
    fn non_dns_packets_are_not_given_the_connections_mark() {
        let lab = Lab::new();
        let https = fixtures::tcp(CLIENT4, 40000, LAN4, 443, b"\x16\x03\x01");
        let d = lab.decide_meta(with_conn(meta(Hook::Input, 0), MARK, false), &https, MS);
        assert_eq!(d.mark, None);
    }

    // --- Hostile input (issue 13) -------------------------------------------------------------

    #[test]
    fn a_query_with_a_bad_checksum_is_recorded_nowhere() {
        // B's query never reaches the resolver (the socket drops it); had it been recorded, A's
        // later query for the same name would find B waiting.
        let lab = Lab::new();
        let b = Plan {
            client: CLIENT4B,
            ..Plan::v4()
        };
        let mut bad = b.client_query();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let mut m = meta(Hook::Input, 0);
        m.checksum = Checksum::NotVerified;
        let d = lab.decide_meta(m, &bad, Duration::ZERO);
        assert_eq!((d.class, d.role), (Class::BadChecksum, Role::NotPaired));
        assert_eq!(lab.table().client_len(), 0);
        assert_eq!(lab.stats.bad_checksums.get(), 1);
        // The same query with a good checksum, or one the kernel already verified, counts.
        let d = lab.decide_meta(m, &b.client_query(), MS);
        assert_eq!(d.role, Role::ClientQuery);
        let d = lab.decide_meta(meta(Hook::Input, 0), &bad, MS);
        assert_eq!(
            d.class,
            Class::Dns,
            "verified by the kernel: not checked again"
        );
    }

    fn flow_lab() -> Lab {
        let mut lab = Lab::new();
        lab.rules = RuleSet::parse(
            "flow names www.example.com set-mark 0x20/0xff\ndefault accept\n",
            "t.rules",
            &|_: &str| Some(1),
        )
        .unwrap();
        lab
    }

    #[test]
    fn an_answer_to_a_query_nobody_asked_teaches_nothing() {
        let lab = flow_lab();
        let plan = Plan::v4();
        let answer = packet(
            Wire::Udp,
            plan.lan,
            53,
            plan.client,
            plan.client_port,
            &fixtures::dns_answer_a(
                plan.client_id,
                "www.example.com",
                &[Ipv4Addr::new(198, 18, 7, 7)],
            ),
        );
        let d = lab.decide(Hook::Output, 0, &answer);
        assert_eq!(
            (d.learned, d.role),
            (0, Role::ClientAnswer { paired: false })
        );
        let routed = lab.decide(Hook::Forward, 0, &answer);
        assert_eq!(routed.learned, 0);
        let flow = fixtures::tcp_syn(
            plan.client,
            41000,
            IpAddr::V4(Ipv4Addr::new(198, 18, 7, 7)),
            443,
        );
        assert_eq!(lab.decide(Hook::PreRouting, 0, &flow).mark, None);
    }

    #[test]
    fn an_answer_to_a_query_the_client_asked_teaches_its_addresses() {
        let lab = flow_lab();
        let plan = Plan::v4();
        lab.decide(Hook::Input, 0, &plan.client_query());
        let answer = packet(
            Wire::Udp,
            plan.lan,
            53,
            plan.client,
            plan.client_port,
            &fixtures::dns_answer_a(
                plan.client_id,
                "www.example.com",
                &[Ipv4Addr::new(198, 18, 7, 7)],
            ),
        );
        let d = lab.decide(Hook::Output, 0, &answer);
        assert_eq!(
            (d.learned, d.role),
            (1, Role::ClientAnswer { paired: true })
        );
        let flow = fixtures::tcp_syn(
            plan.client,
            41000,
            IpAddr::V4(Ipv4Addr::new(198, 18, 7, 7)),
            443,
        );
        let d = lab.decide(Hook::PreRouting, 0, &flow);
        assert_eq!((d.mark, d.role), (Some(0x20), Role::FlowMarked));
        // A routed answer teaches only after its routed query was seen.
        let other = Plan {
            client: CLIENT4B,
            lan: UPSTREAM4,
            ..plan
        };
        lab.decide(Hook::Forward, 0, &other.client_query());
        let routed = packet(
            Wire::Udp,
            other.lan,
            53,
            other.client,
            other.client_port,
            &fixtures::dns_answer_a(
                other.client_id,
                "www.example.com",
                &[Ipv4Addr::new(198, 18, 7, 8)],
            ),
        );
        assert_eq!(lab.decide(Hook::Forward, 0, &routed).learned, 1);
    }

    #[test]
    fn derived_names_are_the_targets_of_cnames_dnames_and_name_servers() {
        use hickory_proto::op::{Message, MessageType, OpCode};
        use hickory_proto::rr::rdata::{A, CNAME, NS};
        use hickory_proto::rr::{Name as HName, RData, Record};
        let n = |s: &str| HName::from_ascii(s).unwrap();
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.add_answer(Record::from_rdata(
            n("a.lab."),
            60,
            RData::CNAME(CNAME(n("t.cdn.hosting."))),
        ));
        m.add_answer(Record::from_rdata(
            n("t.cdn.hosting."),
            60,
            RData::A(A::new(198, 18, 7, 7)),
        ));
        m.add_authority(Record::from_rdata(
            n("cdn.hosting."),
            60,
            RData::NS(NS(n("NS1.dns.hosting."))),
        ));
        let wire = m.to_vec().unwrap();
        let names: Vec<String> = derived_names(&wire).iter().map(|n| n.to_ascii()).collect();
        assert_eq!(names, ["t.cdn.hosting.", "ns1.dns.hosting."]);
        // A header without records names nothing; cut messages name nothing more and never
        // panic.
        assert!(derived_names(&wire[..12]).is_empty());
        for cut in 0..wire.len() {
            let _ = derived_names(&wire[..cut]);
        }
    }

    // --- Robustness -------------------------------------------------------------------------

    /// Marsaglia's xorshift64: deterministic, no crate, good enough to pick bytes.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn one_in(&mut self, n: u64) -> bool {
            self.next().is_multiple_of(n)
        }

        fn byte(&mut self) -> u8 {
            self.next() as u8
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    /// Valid packets of every kind the engine meets, to start mutations from.
    fn seed_packets() -> Vec<Vec<u8>> {
        let names = ["www.example.com", "wWw.ExAmPle.CoM", "a.example", "."];
        let mut seeds = Vec::new();
        for name in names {
            for (client_id, upstream_id) in [(0x1111, 0x2222), (7, 7)] {
                for client_wire in [Wire::Udp, Wire::Tcp] {
                    for upstream_wire in [Wire::Udp, Wire::Tcp] {
                        for (client_v6, upstream_v6) in
                            [(false, false), (true, false), (false, true), (true, true)]
                        {
                            let mut plan = Plan {
                                client_wire,
                                upstream_wire,
                                client_id,
                                upstream_id,
                                client_name: name,
                                upstream_name: name,
                                ..Plan::v4()
                            };
                            if client_v6 {
                                plan = plan.client_v6();
                            }
                            if upstream_v6 {
                                plan = plan.upstream_v6();
                            }
                            let r = plan.packets();
                            seeds.extend([
                                r.client_query,
                                r.upstream_query,
                                r.upstream_answer,
                                r.client_answer,
                            ]);
                        }
                    }
                }
            }
        }
        let notify = fixtures::dns_message_with_opcode(
            3,
            "example.com",
            RecordType::SOA,
            false,
            OpCode::Notify,
        );
        let long = fixtures::dns_answer_a(0x2222, "www.example.com", &[Ipv4Addr::LOCALHOST; 40]);
        let framed = fixtures::tcp_framed(&long);
        seeds.extend([
            fixtures::udp(CLIENT4, CLIENT_PORT, LAN4, 53, &notify),
            fixtures::udp(
                WAN6,
                RESOLVER_PORT,
                UPSTREAM6,
                53,
                &fixtures::dns_header_only(9, false),
            ),
            fixtures::tcp_syn(CLIENT4, CLIENT_PORT, LAN4, 53),
            fixtures::tcp_syn(WAN6, RESOLVER_PORT, UPSTREAM6, 53),
            fixtures::tcp(CLIENT6, CLIENT_PORT, LAN6, 53, &framed[..2]),
            fixtures::tcp(UPSTREAM4, 53, WAN4, RESOLVER_PORT, &framed[..300]),
            fixtures::tcp(UPSTREAM4, 53, WAN4, RESOLVER_PORT, &framed[300..]),
            fixtures::udp(UPSTREAM6, 53, WAN6, RESOLVER_PORT, &long),
            fixtures::udp(CLIENT4, 123, LAN4, 123, b"\x1b\0\0\0\0\0\0\0"),
        ]);
        seeds
    }

    /// One to four random edits: bit flips, byte stores, inserts, deletes, cuts, and
    /// boundary values written over length, count and pointer fields.
    fn mutate(rng: &mut XorShift, seed: &[u8]) -> Vec<u8> {
        let mut b = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(b.len() + 1);
            match rng.below(7) {
                0 if !b.is_empty() => {
                    let i = at.min(b.len() - 1);
                    b[i] ^= 1 << rng.below(8);
                }
                1 if !b.is_empty() => {
                    let i = at.min(b.len() - 1);
                    b[i] = *rng.pick(&[0x00, 0x01, 0x0c, 0x3f, 0x40, 0x7f, 0x80, 0xc0, 0xff]);
                }
                2 => {
                    let n = 1 + rng.below(16);
                    let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                    b.splice(at..at, bytes);
                }
                3 => {
                    let end = (at + 1 + rng.below(16)).min(b.len());
                    b.drain(at.min(end)..end);
                }
                4 => b.truncate(at),
                5 if b.len() >= 2 => {
                    let i = at.min(b.len() - 2);
                    let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
                    let v = *rng.pick(&[
                        0,
                        1,
                        11,
                        12,
                        0x7fff,
                        0xffff,
                        0xc00c,
                        len,
                        len.wrapping_sub(1),
                        len.wrapping_add(1),
                    ]);
                    b[i..i + 2].copy_from_slice(&v.to_be_bytes());
                }
                _ => {
                    let i = rng.below(b.len() + 1);
                    b[i..].iter_mut().for_each(|x| *x = rng.byte());
                }
            }
        }
        b
    }

    fn random_packet(rng: &mut XorShift, seeds: &[Vec<u8>]) -> Vec<u8> {
        match rng.below(10) {
            // Valid packets keep the tables busy, so mutations meet real state.
            0..=2 => rng.pick(seeds).clone(),
            3 => {
                let n = rng.below(120);
                let mut b: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                if let Some(first) = b.first_mut() {
                    *first = *rng.pick(&[0x45, 0x46, 0x4f, 0x60, 0x6f, *first]);
                }
                b
            }
            _ => {
                let seed = rng.pick(seeds).clone();
                mutate(rng, &seed)
            }
        }
    }

    fn random_meta(rng: &mut XorShift) -> Meta {
        let any = rng.next() as u32;
        Meta::new(
            Hook::from_kernel(rng.below(7) as u8),
            *rng.pick(&[0, MARK, 0x1200, 0xff00, u32::MAX, any]),
            *rng.pick(&[0, 0, 2, 3]),
            *rng.pick(&[0, 2, 3]),
        )
    }

    #[test]
    fn random_and_mutated_packets_always_get_a_decision() {
        const PACKETS: u32 = 200_000;
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let seeds = seed_packets();
        // Two engines: small tables and a narrow mask (eviction and expiry all the time), and
        // the defaults with an extra DNS port.
        let labs = [
            Lab::with(EngineConfig {
                pairing: PairingConfig {
                    window: Duration::from_secs(2),
                    client_capacity: 16,
                    upstream_capacity: 8,
                    mask: 0xff00,
                    per_question: 2,
                    per_client: 8,
                    claimed_grace: Some(Duration::from_millis(300)),
                },
                dns_ports: vec![53],
            }),
            Lab::with(EngineConfig {
                dns_ports: vec![53, 5353],
                ..EngineConfig::default()
            }),
        ];
        let mut at = Duration::ZERO;
        for i in 0..PACKETS {
            at += MS * rng.below(5) as u32;
            if rng.one_in(5_000) {
                at += Duration::from_secs(10);
            }
            let lab = &labs[rng.below(2)];
            let bytes = random_packet(&mut rng, &seeds);
            let meta = random_meta(&mut rng);
            let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                lab.decide_meta(meta, &bytes, at)
            }));
            let Ok(d) = decided else {
                panic!("decide panicked on packet {i}: {meta:?} {bytes:02x?}");
            };
            assert_eq!(
                d.verdict,
                Verdict::Accept,
                "packet {i}: {meta:?} {bytes:02x?}"
            );
            assert_eq!(d.rule, None);
            let mask = lab.config.pairing.mask;
            if let Some(mark) = d.mark {
                assert_ne!(mark, meta.mark, "packet {i}");
                assert_eq!(
                    (mark ^ meta.mark) & !mask,
                    0,
                    "packet {i}: bits outside the mask"
                );
                // A mark changes by pairing, or on a TCP packet of a DNS connection whose start
                // nfqmark saw (it keeps the connection's mark).
                let tcp = packet::parse(&bytes).is_ok_and(|p| p.proto == Proto::Tcp);
                assert!(d.role != Role::NotPaired || tcp, "packet {i}: {d:?}");
            }
            let table = lab.table();
            assert!(table.client_len() <= lab.config.pairing.client_capacity);
            assert!(table.upstream_len() <= lab.config.pairing.upstream_capacity);
        }
        let packets: u64 = labs.iter().map(|l| l.stats.packets.get()).sum();
        assert_eq!(packets, u64::from(PACKETS));
        // The run reached every corner it is meant to.
        let small = labs[0].table();
        for (what, n) in [
            ("paired", small.counters.paired),
            ("ambiguous", small.counters.ambiguous),
            ("upstream answers", small.counters.upstream_answers),
            ("client answers", small.counters.client_answers),
            ("expired", small.counters.expired),
            ("evicted", small.counters.evicted),
            ("parse errors", labs[0].stats.parse_errors.get()),
            ("dns errors", labs[0].stats.dns_errors.get()),
            ("not dns", labs[0].stats.not_dns.get()),
        ] {
            assert!(n > 0, "no {what} in the random run");
        }
    }
}
