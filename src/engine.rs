//! The decision: packet bytes + metadata + rules + pairing state + `now` -> verdict and mark.
//!
//! This module owns what happens to a packet and nothing else: it does no I/O, reads no clock and
//! never panics. The queue worker hands it what the kernel told us about the packet, applies the
//! [`Decision`] it returns, and gives the packet exactly one verdict whatever happened here. A
//! packet that cannot be parsed, or is not DNS, falls through to the rules' default (accept,
//! unchanged, when there are no rules) and ends in a counter.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::dns::{self, Dns};
use crate::packet::{self, Packet, Proto};
use crate::pairing::{FlowKey, Pairing, PairingConfig, UpstreamMatch};
use crate::rules::{Ctx, RuleSet};
use crate::stats::Stats;

/// The netfilter hook a packet was queued from (NFQUEUE tells us), kept as data when unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    PreRouting,
    Input,
    Forward,
    Output,
    PostRouting,
    Other(u8),
}

impl Hook {
    /// From the kernel's `NF_INET_*` numbering.
    pub fn from_kernel(n: u8) -> Hook {
        match n {
            0 => Hook::PreRouting,
            1 => Hook::Input,
            2 => Hook::Forward,
            3 => Hook::Output,
            4 => Hook::PostRouting,
            n => Hook::Other(n),
        }
    }
}

/// Which way a packet goes relative to this host, derived from hook and interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Arriving for this host, or not yet routed (PREROUTING, INPUT).
    Incoming,
    /// Sent by a process on this host (OUTPUT, or POSTROUTING with no input interface).
    LocalOut,
    /// Routed through this host.
    Forwarded,
}

/// What the kernel tells us about a queued packet besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub hook: Hook,
    /// The packet's firewall mark when it was queued.
    pub mark: u32,
    /// Input interface index, 0 when none (locally generated).
    pub indev: u32,
    /// Output interface index, 0 when none (not routed yet, or for this host).
    pub outdev: u32,
}

impl Meta {
    pub fn direction(&self) -> Direction {
        match self.hook {
            Hook::PreRouting | Hook::Input => Direction::Incoming,
            Hook::Output => Direction::LocalOut,
            Hook::PostRouting if self.indev == 0 => Direction::LocalOut,
            Hook::Forward | Hook::PostRouting | Hook::Other(_) => Direction::Forwarded,
        }
    }
}

/// Verdicts nfqmark gives. `Repeat` sends the packet through the hook again (with its new mark),
/// so rules after the queue rule can act on the mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Repeat,
}

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
}

impl Decision {
    pub fn accept() -> Decision {
        Decision {
            verdict: Verdict::Accept,
            mark: None,
            role: Role::NotPaired,
            rule: None,
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

/// `old` with the bits under `mask` replaced by those of `value`.
pub fn apply_mask(old: u32, value: u32, mask: u32) -> u32 {
    (old & !mask) | (value & mask)
}

/// Decide one packet. Pure: all state is passed in, `now` included.
pub fn decide(
    config: &EngineConfig,
    rules: &RuleSet,
    pairing: &Mutex<Pairing>,
    stats: &Stats,
    meta: &Meta,
    bytes: &[u8],
    now: Instant,
) -> Decision {
    stats.packets.inc();
    let packet = match packet::parse(bytes) {
        Ok(p) => p,
        Err(e) => {
            stats.parse_errors.inc();
            log::trace!("unparsed packet ({} bytes): {e}", bytes.len());
            // Rules cannot look at what we could not read: the default verdict applies.
            let outcome = rules.default_outcome();
            let mark = outcome.set_mark.map_or(meta.mark, |(value, mask)| {
                apply_mask(meta.mark, value, mask)
            });
            return finish(meta, outcome.verdict, mark, None, Role::NotPaired);
        }
    };
    let dns = dns_of(config, &packet, stats);
    let ctx = Ctx {
        meta,
        packet: &packet,
        dns: dns.as_ref(),
    };
    let outcome = rules.evaluate(&ctx);
    if outcome.verdict == Verdict::Drop {
        return finish(
            meta,
            Verdict::Drop,
            meta.mark,
            outcome.rule,
            Role::NotPaired,
        );
    }
    // The mark the packet carries once the rule's mark is applied; pairing starts from it.
    let mut mark = match outcome.set_mark {
        Some((value, mask)) => apply_mask(meta.mark, value, mask),
        None => meta.mark,
    };
    let mut role = Role::NotPaired;
    if outcome.pairing
        && let Some(dns) = dns.as_ref()
        && let Ok(mut table) = pairing.lock()
    {
        let (r, carried) = pair(&mut table, meta, &packet, dns, mark, now);
        role = r;
        let mask = table.config().mask;
        // A client whose mark is empty under the mask carries nothing.
        if let Some(carried) = carried.filter(|m| m & mask != 0) {
            mark = apply_mask(mark, carried, mask);
        }
    }
    finish(meta, outcome.verdict, mark, outcome.rule, role)
}

/// The decision, with the mark reported only when it differs from the packet's.
fn finish(meta: &Meta, verdict: Verdict, mark: u32, rule: Option<usize>, role: Role) -> Decision {
    Decision {
        verdict,
        mark: (mark != meta.mark).then_some(mark),
        role,
        rule,
    }
}

/// Parse the DNS message in a packet to or from a DNS port. Anything else is `None`.
fn dns_of(config: &EngineConfig, packet: &Packet<'_>, stats: &Stats) -> Option<Dns> {
    let to_dns = config.dns_ports.contains(&packet.dport);
    let from_dns = config.dns_ports.contains(&packet.sport);
    if !to_dns && !from_dns {
        stats.not_dns.inc();
        return None;
    }
    let parsed = match packet.proto {
        Proto::Udp => dns::parse_udp(packet.payload),
        Proto::Tcp if packet.payload.is_empty() => {
            // Handshake and bare ACKs of a DNS-over-TCP connection: nothing to read.
            stats.not_dns.inc();
            return None;
        }
        Proto::Tcp => dns::parse_tcp(packet.payload),
        _ => {
            stats.not_dns.inc();
            return None;
        }
    };
    match parsed {
        Ok(d) => {
            stats.dns.inc();
            Some(d)
        }
        Err(e) => {
            stats.dns_errors.inc();
            log::trace!(
                "{} {}:{} -> {}:{}: {e}",
                packet.proto,
                packet.src,
                packet.sport,
                packet.dst,
                packet.dport
            );
            None
        }
    }
}

/// Run the pairing step for a DNS packet; returns its role and the mark it should carry.
fn pair(
    table: &mut Pairing,
    meta: &Meta,
    packet: &Packet<'_>,
    dns: &Dns,
    mark: u32,
    now: Instant,
) -> (Role, Option<u32>) {
    let Some(question) = dns.question.as_ref() else {
        return (Role::NotPaired, None);
    };
    if dns.opcode != 0 {
        return (Role::NotPaired, None);
    }
    let src = SocketAddr::new(packet.src, packet.sport);
    let dst = SocketAddr::new(packet.dst, packet.dport);
    match (meta.direction(), dns.response) {
        (Direction::Incoming, false) => {
            table.client_query(&question.key, src, dns.id, mark, now);
            (Role::ClientQuery, None)
        }
        (Direction::LocalOut, false) => {
            let flow = FlowKey {
                proto: packet.proto,
                local: src,
                remote: dst,
                id: dns.id,
            };
            match table.upstream_query(&question.key, flow, now) {
                UpstreamMatch::Paired { mark, ambiguous } => (
                    Role::UpstreamQuery {
                        paired: true,
                        ambiguous,
                    },
                    Some(mark),
                ),
                UpstreamMatch::Unpaired => (
                    Role::UpstreamQuery {
                        paired: false,
                        ambiguous: false,
                    },
                    None,
                ),
            }
        }
        (Direction::Incoming, true) => {
            let flow = FlowKey {
                proto: packet.proto,
                local: dst,
                remote: src,
                id: dns.id,
            };
            let carried = table.upstream_answer(&flow, now);
            (
                Role::UpstreamAnswer {
                    paired: carried.is_some(),
                },
                carried,
            )
        }
        (Direction::LocalOut, true) => {
            let carried = table.client_answer(&question.key, dst, dns.id, now);
            (
                Role::ClientAnswer {
                    paired: carried.is_some(),
                },
                carried,
            )
        }
        (Direction::Forwarded, _) => (Role::NotPaired, None),
    }
}
