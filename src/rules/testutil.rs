//! Test helpers shared by the rule language's unit tests (and `setup`'s): rule sets from text,
//! packets as the engine hands them to the rules, wire-form names, a small deterministic random
//! source and the value pools the random tests draw from. Compiled only for tests.

use std::net::IpAddr;

use etherparse::PacketBuilder;
use hickory_proto::rr::RecordType;

use super::defs::NamePattern;
use super::{Ctx, Outcome, RuleSet};
use crate::packet::{self, Proto};
use crate::types::{Hook, Meta};
use crate::{dns, fixtures};

/// The test machine's links: index -> name.
pub(crate) const LINKS: &[(u32, &str)] = &[(1, "lo"), (2, "lan0"), (3, "wan0"), (4, "ppp0")];

pub(crate) fn ifaces(name: &str) -> Option<u32> {
    LINKS.iter().find(|(_, n)| *n == name).map(|(i, _)| *i)
}

/// The name of link `index` on the test machine.
pub(crate) fn link_name(index: u32) -> Option<&'static str> {
    LINKS.iter().find(|(i, _)| *i == index).map(|(_, n)| *n)
}

pub(crate) fn link_map() -> crate::links::LinkMap {
    LINKS.iter().map(|(i, n)| (*i, n.to_string())).collect()
}

/// Rules bound to the test machine's links (prefixes included).
pub(crate) fn rules(text: &str) -> RuleSet {
    match RuleSet::parse(text, "t.rules", &ifaces) {
        Ok(r) => {
            r.bind(&link_map());
            r
        }
        Err(d) => panic!("{d:#?}"),
    }
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|_| panic!("bad test address {s}"))
}

/// A packet as the engine would hand it to the rules.
pub(crate) struct Pkt {
    bytes: Vec<u8>,
    meta: Meta,
}

impl Pkt {
    pub(crate) fn new(bytes: Vec<u8>) -> Pkt {
        Pkt {
            bytes,
            meta: Meta::new(Hook::Input, 0, 2, 0),
        }
    }

    pub(crate) fn hook(mut self, hook: Hook) -> Pkt {
        self.meta.hook = hook;
        self
    }

    pub(crate) fn mark(mut self, mark: u32) -> Pkt {
        self.meta.mark = mark;
        self
    }

    pub(crate) fn devs(mut self, indev: u32, outdev: u32) -> Pkt {
        self.meta.indev = indev;
        self.meta.outdev = outdev;
        self
    }

    pub(crate) fn src_mac(mut self, mac: Option<[u8; 6]>) -> Pkt {
        self.meta.src_mac = mac;
        self
    }

    /// Parse it as the engine does (DNS read on port 53) and run `f` on the context.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&Ctx<'_>) -> T) -> T {
        let packet = match packet::parse(&self.bytes) {
            Ok(p) => p,
            Err(e) => panic!("fixture does not parse: {e}"),
        };
        let dns = if packet.sport == 53 || packet.dport == 53 {
            match packet.proto {
                Proto::Udp => dns::parse_udp(packet.payload).ok(),
                Proto::Tcp => dns::parse_tcp(packet.payload).ok(),
                _ => None,
            }
        } else {
            None
        };
        f(&Ctx {
            meta: &self.meta,
            packet: &packet,
            dns: dns.as_ref(),
        })
    }

    pub(crate) fn eval(&self, rs: &RuleSet) -> Outcome {
        self.with(|ctx| rs.evaluate(ctx))
    }

    /// Index of the rule that matched, `None` for the default.
    pub(crate) fn rule(&self, rs: &RuleSet) -> Option<usize> {
        self.eval(rs).rule
    }
}

pub(crate) fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
    Pkt::new(fixtures::udp(ip(src), sport, ip(dst), dport, b"hello"))
}

pub(crate) fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
    Pkt::new(fixtures::tcp(ip(src), sport, ip(dst), dport, b"hello"))
}

/// An ICMP (or ICMPv6) echo request.
pub(crate) fn icmp_bytes(src: IpAddr, dst: IpAddr) -> Vec<u8> {
    let mut out = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut out, &[])
            .unwrap_or_default(),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut out, &[])
            .unwrap_or_default(),
        _ => {}
    }
    out
}

pub(crate) fn icmp(src: &str, dst: &str) -> Pkt {
    Pkt::new(icmp_bytes(ip(src), ip(dst)))
}

/// A DNS query over UDP from a client to the resolver.
pub(crate) fn query(name: &str, qtype: RecordType) -> Pkt {
    let msg = fixtures::dns_message(7, name, qtype, false);
    Pkt::new(fixtures::udp(
        ip("198.18.0.10"),
        40000,
        ip("198.18.0.1"),
        53,
        &msg,
    ))
}

pub(crate) fn answer(name: &str) -> Pkt {
    let msg = fixtures::dns_message(7, name, RecordType::A, true);
    Pkt::new(fixtures::udp(
        ip("198.18.0.1"),
        53,
        ip("198.18.0.10"),
        40000,
        &msg,
    ))
    .hook(Hook::Output)
    .devs(0, 2)
}

/// Wire form of a dotted name (no checks: tests feed it what they mean).
pub(crate) fn wire(name: &str) -> Box<[u8]> {
    let mut out = Vec::new();
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(u8::try_from(label.len()).unwrap_or(0));
        out.extend(label.bytes());
    }
    out.push(0);
    out.into_boxed_slice()
}

pub(crate) fn pattern(text: &str) -> NamePattern {
    match text.strip_prefix("*.") {
        Some(rest) => NamePattern {
            wire: wire(rest),
            wildcard: true,
        },
        None if text == "*" => NamePattern {
            wire: wire(""),
            wildcard: true,
        },
        None => NamePattern {
            wire: wire(text),
            wildcard: false,
        },
    }
}

/// splitmix64: small, deterministic, good enough to spread test cases.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub(crate) fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

pub(crate) const V4_HOSTS: &[&str] = &[
    "198.18.0.1",
    "198.18.0.2",
    "198.18.0.9",
    "198.18.1.1",
    "198.18.1.200",
    "198.19.255.254",
    "203.0.113.5",
];
pub(crate) const V6_HOSTS: &[&str] = &[
    "2001:db8::1",
    "2001:db8::2",
    "2001:db8:0:1::9",
    "2001:db8:1::1",
    "2001:db8:ffff::5",
    "2001:db9::1",
];
pub(crate) const ADDR_PATTERNS: &[&str] = &[
    "198.18.0.1",
    "198.18.0.2",
    "198.18.0.0/30",
    "198.18.0.0/24",
    "198.18.1.0/24",
    "198.18.0.0/15",
    "0.0.0.0/0",
    "203.0.113.5",
    "2001:db8::1",
    "2001:db8::/64",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "::/0",
    "2001:db8:ffff::5",
];
pub(crate) const PORTS: &[u16] = &[25, 53, 80, 443, 1000, 1500, 2000, 40000, 65535];
pub(crate) const PORT_PATTERNS: &[&str] = &[
    "25",
    "53",
    "80",
    "443",
    "1000-2000",
    ":1023",
    "1024-",
    "1500",
    "40000",
    "0-65535",
];
pub(crate) const NAMES: &[&str] = &[
    "a.example",
    "b.example",
    "www.a.example",
    "x.www.a.example",
    "portal.example",
    "login.portal.example",
    "example",
    "other.test",
];
pub(crate) const NAME_PATTERNS: &[&str] = &[
    "a.example",
    "*.a.example",
    "*.example",
    "portal.example",
    "*.portal.example",
    "www.a.example",
    "example",
    "*.test",
];
// Five distinct masks: one more than the index takes, so both paths are exercised.
pub(crate) const MARK_PATTERNS: &[&str] = &[
    "0",
    "0x1",
    "0x1/0x1",
    "0/0x1",
    "0x100/0xff00",
    "0x2/0xf",
    "0x10/0x10",
];
pub(crate) const MARKS: &[u32] = &[0, 1, 2, 0x101, 0x100, 0x1ff, 0x202, 0x10, 0xdead_beef];

pub(crate) fn random_values(rng: &mut Rng, pool: &[&str]) -> String {
    let n = 1 + rng.below(3);
    (0..n)
        .map(|_| *rng.pick(pool))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn wire_to_text(wire: &[u8]) -> String {
    let mut labels = Vec::new();
    let mut rest = wire;
    while let Some((&len, tail)) = rest.split_first() {
        if len == 0 {
            break;
        }
        let (label, tail) = tail.split_at(usize::from(len));
        labels.push(String::from_utf8_lossy(label).into_owned());
        rest = tail;
    }
    labels.join(".")
}

pub(crate) const VIDEO: &str = "\
flow src 198.18.1.0/24, 2001:db8:1::/64 names *.video.example, video.example set-mark 0x20/0xff
";
