//! The words of the rule language: fields, action words, flow-rule words and named values
//! (hooks, directions, protocols, DNS message kinds, record types).
//!
//! This module owns the tables that say what a word means, case-insensitively, and nothing
//! else: no tokens, no positions, no messages beyond a field's usage example. Every other part
//! of the parser looks words up here, so a new keyword is added in one place. It never parses a
//! value (that is `values.rs`) and never panics.

use super::defs::{DnsKind, SetKind, Test};
use crate::types::{Direction, Hook};

/// The fields a rule can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Field {
    Hook,
    Dir,
    Iif,
    Oif,
    Src,
    Dst,
    Proto,
    Sport,
    Dport,
    Mark,
    Dns,
    DnsName,
    DnsType,
    SrcMac,
    /// `names` in a flow rule (not a packet-rule field, so not in [`FIELDS`]).
    Names,
}

pub(super) const FIELDS: &[(&str, Field)] = &[
    ("hook", Field::Hook),
    ("dir", Field::Dir),
    ("iif", Field::Iif),
    ("oif", Field::Oif),
    ("src", Field::Src),
    ("dst", Field::Dst),
    ("proto", Field::Proto),
    ("sport", Field::Sport),
    ("dport", Field::Dport),
    ("mark", Field::Mark),
    ("dns", Field::Dns),
    ("dns-name", Field::DnsName),
    ("dns-type", Field::DnsType),
    ("src-mac", Field::SrcMac),
];

impl Field {
    pub(super) fn name(self) -> &'static str {
        if self == Field::Names {
            return "names";
        }
        FIELDS
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    /// A short example, for "needs a value" hints.
    pub(super) fn example(self) -> &'static str {
        match self {
            Field::Hook => "hook prerouting",
            Field::Dir => "dir in",
            Field::Iif => "iif lan0",
            Field::Oif => "oif wan0",
            Field::Src => "src 198.18.0.0/15",
            Field::Dst => "dst 2001:db8::/32",
            Field::Proto => "proto udp",
            Field::Sport => "sport 1024-65535",
            Field::Dport => "dport 80, 443",
            Field::Mark => "mark 0x100/0xff00",
            Field::Dns => "dns query",
            Field::DnsName => "dns-name *.portal.example",
            Field::DnsType => "dns-type AAAA",
            Field::SrcMac => "src-mac 02:00:5e:10:00:01",
            Field::Names => "names *.video.example, video.example",
        }
    }

    /// The kind of set this field can take with `@name`, if any.
    pub(super) fn set_kind(self) -> Option<SetKind> {
        match self {
            Field::Src | Field::Dst => Some(SetKind::Addrs),
            Field::Sport | Field::Dport => Some(SetKind::Ports),
            Field::DnsName | Field::Names => Some(SetKind::Names),
            Field::SrcMac => Some(SetKind::Macs),
            _ => None,
        }
    }

    pub(super) fn empty_test(self) -> Test {
        match self {
            Field::Hook => Test::Hook(Vec::new()),
            Field::Dir => Test::Dir(Vec::new()),
            Field::Iif => Test::Iif(Vec::new()),
            Field::Oif => Test::Oif(Vec::new()),
            Field::Src => Test::Src(Vec::new()),
            Field::Dst => Test::Dst(Vec::new()),
            Field::Proto => Test::Proto(Vec::new()),
            Field::Sport => Test::Sport(Vec::new()),
            Field::Dport => Test::Dport(Vec::new()),
            Field::Mark => Test::Mark(Vec::new()),
            Field::Dns => Test::Dns(Vec::new()),
            Field::DnsName | Field::Names => Test::DnsName(Vec::new()),
            Field::DnsType => Test::DnsType(Vec::new()),
            Field::SrcMac => Test::SrcMac(Vec::new()),
        }
    }
}

/// The words that end a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ActWord {
    Accept,
    Drop,
    Repeat,
    SetMark,
    Pair,
    NoPair,
}

pub(super) const ACTIONS: &[(&str, ActWord)] = &[
    ("accept", ActWord::Accept),
    ("drop", ActWord::Drop),
    ("repeat", ActWord::Repeat),
    ("set-mark", ActWord::SetMark),
    ("pair", ActWord::Pair),
    ("nopair", ActWord::NoPair),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Keyword {
    Field(Field),
    Act(ActWord),
    Not,
}

pub(super) fn keyword(word: &str) -> Option<Keyword> {
    let lower = word.to_ascii_lowercase();
    if lower == "not" {
        return Some(Keyword::Not);
    }
    if let Some((_, f)) = FIELDS.iter().find(|(n, _)| *n == lower) {
        return Some(Keyword::Field(*f));
    }
    ACTIONS
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|(_, a)| Keyword::Act(*a))
}

/// The words a flow rule is made of, for did-you-mean.
pub(super) const FLOW_WORDS: &[&str] = &["src", "mark", "names", "set-mark", "per-mark"];

/// The words only flow rules know (they are not keywords elsewhere: a set may be called `names`).
pub(super) fn flow_only(word: &str) -> bool {
    word.eq_ignore_ascii_case("names") || word.eq_ignore_ascii_case("per-mark")
}

// ------------------------------------------------------------------------------------------------
// Named values.

pub(super) const HOOKS: &[(&str, Hook)] = &[
    ("prerouting", Hook::PreRouting),
    ("input", Hook::Input),
    ("forward", Hook::Forward),
    ("output", Hook::Output),
    ("postrouting", Hook::PostRouting),
];

pub(super) const DIRS: &[(&str, Direction)] = &[
    ("in", Direction::Incoming),
    ("out", Direction::LocalOut),
    ("forward", Direction::Forwarded),
];

pub(super) const PROTOS: &[(&str, u8)] = &[
    ("tcp", 6),
    ("udp", 17),
    ("icmp", 1),
    ("icmpv6", 58),
    ("ipv6-icmp", 58),
    ("sctp", 132),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
];

pub(super) const DNS_KINDS: &[(&str, DnsKind)] = &[
    ("query", DnsKind::Query),
    ("response", DnsKind::Response),
    ("any", DnsKind::Any),
];

/// Record types by mnemonic (IANA numbers).
pub(super) const QTYPES: &[(&str, u16)] = &[
    ("a", 1),
    ("ns", 2),
    ("cname", 5),
    ("soa", 6),
    ("ptr", 12),
    ("hinfo", 13),
    ("mx", 15),
    ("txt", 16),
    ("rp", 17),
    ("afsdb", 18),
    ("sig", 24),
    ("key", 25),
    ("aaaa", 28),
    ("loc", 29),
    ("srv", 33),
    ("naptr", 35),
    ("kx", 36),
    ("cert", 37),
    ("dname", 39),
    ("opt", 41),
    ("apl", 42),
    ("ds", 43),
    ("sshfp", 44),
    ("ipseckey", 45),
    ("rrsig", 46),
    ("nsec", 47),
    ("dnskey", 48),
    ("dhcid", 49),
    ("nsec3", 50),
    ("nsec3param", 51),
    ("tlsa", 52),
    ("smimea", 53),
    ("hip", 55),
    ("cds", 59),
    ("cdnskey", 60),
    ("openpgpkey", 61),
    ("csync", 62),
    ("zonemd", 63),
    ("svcb", 64),
    ("https", 65),
    ("spf", 99),
    ("tkey", 249),
    ("tsig", 250),
    ("ixfr", 251),
    ("axfr", 252),
    ("any", 255),
    ("uri", 256),
    ("caa", 257),
];
