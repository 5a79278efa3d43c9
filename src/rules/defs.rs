//! Checked rules: the types the text becomes and the index is built from.
//!
//! This module owns the shared vocabulary of the rule language's two halves: the parsing side
//! (`lex`, `syntax`, `values`, `resolve`) produces a [`Parsed`] file of [`RuleDef`]s and
//! [`FlowDef`]s whose values are typed and checked (addresses as ranges, names in lower-case
//! wire form, interfaces as name patterns, MAC addresses as numbers, set references expanded);
//! the matching side (`matcher`, `flow_match`, `index/`, `iface`) reads them. It holds data and nothing else: no parsing, no matching,
//! and it imports nothing from the rest of the rule language.

use crate::types::{Direction, Hook, Verdict};

// ------------------------------------------------------------------------------------------------
// Values.

/// An inclusive range of addresses of one family (a CIDR is one such range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddrRange {
    V4(u32, u32),
    V6(u128, u128),
}

/// An inclusive range of ports; a single port is `lo == hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// A DNS name to match: exact, or `*.suffix` (any name strictly below the suffix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NamePattern {
    /// Lower-case wire form (length-prefixed labels, ending in 0), as `QKey::wire_name`; for a
    /// wildcard, the wire form of the suffix (without the `*` label).
    pub wire: Box<[u8]>,
    pub wildcard: bool,
}

/// An interface name to match: exact, or iptables' `NAME+` (every name that starts with
/// `NAME`; a lone `+` is every interface). Interface names are case-sensitive, as in the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct IfPattern {
    /// The name, or the prefix (without the `+`).
    pub name: Box<str>,
    pub prefix: bool,
}

/// Which DNS messages `dns` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DnsKind {
    Query,
    Response,
    Any,
}

// ------------------------------------------------------------------------------------------------
// Rules.

/// One matcher with its values; it matches when the packet has any of the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Test {
    Hook(Vec<Hook>),
    Dir(Vec<Direction>),
    Iif(Vec<IfPattern>),
    Oif(Vec<IfPattern>),
    /// Source MAC addresses, as 48-bit numbers (the first byte in the high bits).
    SrcMac(Vec<u64>),
    Src(Vec<AddrRange>),
    Dst(Vec<AddrRange>),
    Proto(Vec<u8>),
    Sport(Vec<PortRange>),
    Dport(Vec<PortRange>),
    /// (value, mask): matches when `mark & mask == value`.
    Mark(Vec<(u32, u32)>),
    Dns(Vec<DnsKind>),
    DnsName(Vec<NamePattern>),
    DnsType(Vec<u16>),
}

/// A matcher, possibly negated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cond {
    pub negated: bool,
    pub test: Test,
}

/// What a matching rule (or the default) does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Action {
    pub verdict: Verdict,
    pub set_mark: Option<(u32, u32)>,
    pub pairing: bool,
}

impl Action {
    /// The default when a file has no `default` line: accept, pair DNS, leave the mark.
    pub const ACCEPT: Action = Action {
        verdict: Verdict::Accept,
        set_mark: None,
        pairing: true,
    };
}

/// One rule: all its matchers must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleDef {
    pub line: usize,
    pub conds: Vec<Cond>,
    pub action: Action,
}

/// One flow rule: which clients (`src`, `mark`), which names it learns the addresses of, and
/// the mark that flows from those clients to those addresses get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FlowDef {
    pub line: usize,
    /// `src` and `mark` matchers on the client (possibly negated); all must hold.
    pub conds: Vec<Cond>,
    /// The names whose addresses are learned (any of them; set references expanded).
    pub names: Vec<NamePattern>,
    /// (value, mask) for the flows.
    pub set_mark: (u32, u32),
    /// With `per-mark`: the bits of the client's mark that key learned addresses (the masks of
    /// the rule's `mark` matchers together, or every bit when it has none).
    pub per_mark: Option<u32>,
}

/// What a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetKind {
    Names,
    Addrs,
    Ports,
    Macs,
}

impl SetKind {
    pub(crate) fn keyword(self) -> &'static str {
        match self {
            SetKind::Names => "names",
            SetKind::Addrs => "addrs",
            SetKind::Ports => "ports",
            SetKind::Macs => "macs",
        }
    }

    /// How the kind reads in a sentence ("holds names").
    pub(crate) fn noun(self) -> &'static str {
        match self {
            SetKind::Names => "names",
            SetKind::Addrs => "addresses",
            SetKind::Ports => "ports",
            SetKind::Macs => "MAC addresses",
        }
    }
}

/// A set as the summary reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetSummary {
    pub kind: SetKind,
    pub len: usize,
}

/// A whole file, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub rules: Vec<RuleDef>,
    /// Flow rules, in file order.
    pub flows: Vec<FlowDef>,
    pub default: Action,
    pub sets: Vec<SetSummary>,
    /// Every interface the rules name, where (for "no such interface" warnings).
    pub ifaces: Vec<IfaceUse>,
}

/// An interface named in a rule, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IfaceUse {
    pub pattern: IfPattern,
    pub line: usize,
    pub col: usize,
}
