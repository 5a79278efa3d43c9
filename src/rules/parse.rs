//! Rule text -> checked rules: the lexer, the parser, and every mistake a user can make.
//!
//! This module owns the syntax described in `docs/rules.md`. It turns text into [`Parsed`] rules
//! whose values are typed and checked (addresses as ranges, names in lower-case wire form,
//! interfaces as indexes, set references expanded) and collects every error in the file, each
//! with its line, column and, where one helps, a hint, so a user fixes a file in one pass.
//!
//! Flow rules (`flow ... names ... set-mark ...`) are read here too, into [`FlowDef`]s kept apart
//! from the packet rules: they have their own order and never take part in a packet's
//! first-match-wins.
//!
//! It never opens files (the caller reads them and hands us the text), never panics whatever the
//! input, and never looks at a packet: matching and indexing belong to `matcher.rs`.

use std::collections::HashMap;
use std::net::IpAddr;

use super::Diagnostic;
use crate::types::{Direction, Hook, Verdict};

// ------------------------------------------------------------------------------------------------
// What the parser produces.

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

/// Which DNS messages `dns` matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DnsKind {
    Query,
    Response,
    Any,
}

/// One matcher with its values; it matches when the packet has any of the values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Test {
    Hook(Vec<Hook>),
    Dir(Vec<Direction>),
    Iif(Vec<u32>),
    Oif(Vec<u32>),
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
}

impl SetKind {
    fn keyword(self) -> &'static str {
        match self {
            SetKind::Names => "names",
            SetKind::Addrs => "addrs",
            SetKind::Ports => "ports",
        }
    }

    /// How the kind reads in a sentence ("holds names").
    fn noun(self) -> &'static str {
        match self {
            SetKind::Names => "names",
            SetKind::Addrs => "addresses",
            SetKind::Ports => "ports",
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
}

/// Parse a whole file. Every error is reported, sorted by position.
pub(crate) fn parse(
    text: &str,
    source: &str,
    ifaces: &dyn Fn(&str) -> Option<u32>,
) -> Result<Parsed, Vec<Diagnostic>> {
    let toks = lex(text);
    let mut st = State {
        source,
        ifaces,
        diags: Vec::new(),
        sets: HashMap::new(),
        set_order: Vec::new(),
        rules: Vec::new(),
        flows: Vec::new(),
        default: None,
    };
    st.parse_all(&toks);
    let rules = st.resolve();
    let flows = st.resolve_flows();
    if !st.diags.is_empty() {
        let mut diags = st.diags;
        diags.sort_by_key(|d| (d.line, d.col));
        return Err(diags);
    }
    let sets = st
        .set_order
        .iter()
        .filter_map(|name| st.sets.get(name)?.values.as_ref())
        .map(|values| SetSummary {
            kind: values.kind(),
            len: values.len(),
        })
        .collect();
    Ok(Parsed {
        rules,
        flows,
        default: st.default.map_or(Action::ACCEPT, |(_, a)| a),
        sets,
    })
}

// ------------------------------------------------------------------------------------------------
// Lexer: words, punctuation and line ends, each with its 1-based line and column (in characters).

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Comma,
    Open,
    Close,
    Bang,
    Newline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    tok: Tok,
    line: usize,
    col: usize,
}

impl Token {
    /// The column just after this token.
    fn end_col(&self) -> usize {
        match &self.tok {
            Tok::Word(w) => self.col + w.chars().count(),
            _ => self.col + 1,
        }
    }

    fn describe(&self) -> String {
        match &self.tok {
            Tok::Word(w) => format!("'{w}'"),
            Tok::Comma => "','".to_string(),
            Tok::Open => "'{'".to_string(),
            Tok::Close => "'}'".to_string(),
            Tok::Bang => "'!'".to_string(),
            Tok::Newline => "end of line".to_string(),
        }
    }
}

/// Split text into tokens. `#` starts a comment; `,`, `{`, `}` stand alone; `!` stands alone at
/// the start of a word (`!dport` is `!` `dport`). Every line ends with a `Newline` token.
fn lex(text: &str) -> Vec<Token> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        let mut word = String::new();
        let mut word_col = 0;
        let flush = |word: &mut String, word_col: usize, out: &mut Vec<Token>| {
            if !word.is_empty() {
                out.push(Token {
                    tok: Tok::Word(std::mem::take(word)),
                    line: line_no,
                    col: word_col,
                });
            }
        };
        let mut width = 0;
        for (i, ch) in line.chars().enumerate() {
            let col = i + 1;
            width = col;
            let single = match ch {
                '#' => break,
                ',' => Some(Tok::Comma),
                '{' => Some(Tok::Open),
                '}' => Some(Tok::Close),
                '!' if word.is_empty() => Some(Tok::Bang),
                c if c.is_whitespace() => {
                    flush(&mut word, word_col, &mut out);
                    continue;
                }
                c => {
                    if word.is_empty() {
                        word_col = col;
                    }
                    word.push(c);
                    continue;
                }
            };
            flush(&mut word, word_col, &mut out);
            if let Some(tok) = single {
                out.push(Token {
                    tok,
                    line: line_no,
                    col,
                });
            }
        }
        flush(&mut word, word_col, &mut out);
        let end = line.chars().count().max(width) + 1;
        out.push(Token {
            tok: Tok::Newline,
            line: line_no,
            col: end,
        });
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Keywords.

/// The fields a rule can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
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
    /// `names` in a flow rule (not a packet-rule field, so not in [`FIELDS`]).
    Names,
}

const FIELDS: &[(&str, Field)] = &[
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
];

impl Field {
    fn name(self) -> &'static str {
        if self == Field::Names {
            return "names";
        }
        FIELDS
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("?", |(n, _)| n)
    }

    /// A short example, for "needs a value" hints.
    fn example(self) -> &'static str {
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
            Field::Names => "names *.video.example, video.example",
        }
    }

    /// The kind of set this field can take with `@name`, if any.
    fn set_kind(self) -> Option<SetKind> {
        match self {
            Field::Src | Field::Dst => Some(SetKind::Addrs),
            Field::Sport | Field::Dport => Some(SetKind::Ports),
            Field::DnsName | Field::Names => Some(SetKind::Names),
            _ => None,
        }
    }

    fn empty_test(self) -> Test {
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
        }
    }
}

/// The words that end a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActWord {
    Accept,
    Drop,
    Repeat,
    SetMark,
    Pair,
    NoPair,
}

const ACTIONS: &[(&str, ActWord)] = &[
    ("accept", ActWord::Accept),
    ("drop", ActWord::Drop),
    ("repeat", ActWord::Repeat),
    ("set-mark", ActWord::SetMark),
    ("pair", ActWord::Pair),
    ("nopair", ActWord::NoPair),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    Field(Field),
    Act(ActWord),
    Not,
}

fn keyword(word: &str) -> Option<Keyword> {
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
const FLOW_WORDS: &[&str] = &["src", "mark", "names", "set-mark", "per-mark"];

/// The words only flow rules know (they are not keywords elsewhere: a set may be called `names`).
fn flow_only(word: &str) -> bool {
    word.eq_ignore_ascii_case("names") || word.eq_ignore_ascii_case("per-mark")
}

/// How a flow rule reads, for hints.
const FLOW_USAGE: &str =
    "flow [src CIDR, ...] [mark VALUE[/MASK]] names NAME, ... set-mark VALUE[/MASK] [per-mark]";

/// Words from iptables and nftables that people will type, and what they are called here.
const ALIASES: &[(&str, &str)] = &[
    ("-p", "proto"),
    ("--protocol", "proto"),
    ("protocol", "proto"),
    ("-s", "src"),
    ("--source", "src"),
    ("source", "src"),
    ("saddr", "src"),
    ("-d", "dst"),
    ("--destination", "dst"),
    ("destination", "dst"),
    ("daddr", "dst"),
    ("-i", "iif"),
    ("--in-interface", "iif"),
    ("iifname", "iif"),
    ("-o", "oif"),
    ("--out-interface", "oif"),
    ("oifname", "oif"),
    ("--set-mark", "set-mark"),
    ("--set-xmark", "set-mark"),
    ("qname", "dns-name"),
    ("name", "dns-name"),
    ("qtype", "dns-type"),
    ("type", "dns-type"),
    ("chain", "hook"),
    ("direction", "dir"),
    ("port", "dport' or 'sport"),
    ("-j", "accept', 'drop', 'repeat' or 'set-mark"),
    ("-m", "a field name (dport, mark, ...)"),
];

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let w = word.to_ascii_lowercase();
    let limit = if w.chars().count() <= 3 { 1 } else { 2 };
    candidates
        .iter()
        .map(|c| (strsim::damerau_levenshtein(&w, &c.to_ascii_lowercase()), *c))
        .filter(|(d, c)| *d <= limit && *d < c.len().min(w.len()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn dym_hint(word: &str, candidates: &[&str]) -> Option<String> {
    did_you_mean(word, candidates).map(|c| format!("did you mean '{c}'?"))
}

/// "one of a, b, c" for a list of words.
fn one_of(words: &[&str]) -> String {
    format!("one of {}", words.join(", "))
}

// ------------------------------------------------------------------------------------------------
// Values. Each parser returns the value or (message, hint).

type VErr = (String, Option<String>);

fn verr(msg: String, hint: Option<String>) -> VErr {
    (msg, hint)
}

/// Decimal or 0x-prefixed hexadecimal.
fn parse_u32(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16).ok()
        }
        Some(_) => None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse().ok(),
        None => None,
    }
}

/// `VALUE` or `VALUE/MASK`; the value may not have bits outside the mask.
fn parse_mark(s: &str, setting: bool) -> Result<(u32, u32), VErr> {
    let example = if setting {
        "e.g. set-mark 0x1 or set-mark 0x100/0xff00"
    } else {
        "e.g. mark 0x1 or mark 0x100/0xff00"
    };
    let (v, m) = match s.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (s, None),
    };
    if v.is_empty() {
        return Err(verr(
            format!("mask without value in '{s}'"),
            Some(format!("write VALUE/MASK, {example}")),
        ));
    }
    let not_number = |t: &str| {
        verr(
            format!("'{t}' is not a 32-bit number"),
            Some("write it in decimal, or in hex like 0xff00".to_string()),
        )
    };
    let value = parse_u32(v).ok_or_else(|| not_number(v))?;
    let mask = match m {
        None => u32::MAX,
        Some("") => {
            return Err(verr(
                format!("'/' without a mask in '{s}'"),
                Some(format!("write VALUE/MASK, {example}")),
            ));
        }
        Some(m) => parse_u32(m).ok_or_else(|| not_number(m))?,
    };
    if value & !mask != 0 {
        let what = if setting {
            "those bits would not be set"
        } else {
            "the rule could never match"
        };
        return Err(verr(
            format!("value {value:#x} has bits outside mask {mask:#x}: {what}"),
            Some(format!("did you mean {:#x}/{mask:#x}?", value & mask)),
        ));
    }
    Ok((value, mask))
}

/// Well-known service names, for a hint when someone writes `dport http`.
const SERVICES: &[(&str, u16)] = &[
    ("ssh", 22),
    ("smtp", 25),
    ("domain", 53),
    ("dns", 53),
    ("http", 80),
    ("ntp", 123),
    ("https", 443),
    ("smtps", 465),
    ("submission", 587),
    ("imaps", 993),
    ("dot", 853),
];

fn parse_port(s: &str, whole: &str) -> Result<u16, VErr> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u16>().map_err(|_| {
            verr(
                format!("port {s} is out of range"),
                Some("ports are 0-65535".to_string()),
            )
        });
    }
    let hint = match SERVICES.iter().find(|(n, _)| n.eq_ignore_ascii_case(s)) {
        Some((n, p)) => format!("service names are not looked up; {n} is {p}"),
        None => "write a number from 0 to 65535, or a range like 1024-65535".to_string(),
    };
    Err(verr(format!("'{whole}' is not a port"), Some(hint)))
}

/// `80`, `1024-65535` or iptables' `1024:65535`; an open end means 0 or 65535.
fn parse_port_range(s: &str) -> Result<PortRange, VErr> {
    let Some((a, b)) = s.split_once(['-', ':']) else {
        let p = parse_port(s, s)?;
        return Ok(PortRange { lo: p, hi: p });
    };
    let lo = if a.is_empty() { 0 } else { parse_port(a, s)? };
    let hi = if b.is_empty() {
        u16::MAX
    } else {
        parse_port(b, s)?
    };
    if lo > hi {
        return Err(verr(
            format!("port range {s} is backwards"),
            Some(format!("write {hi}-{lo}")),
        ));
    }
    Ok(PortRange { lo, hi })
}

/// An address or CIDR, IPv4 or IPv6. Host bits under the prefix must be zero.
fn parse_addr(s: &str) -> Result<AddrRange, VErr> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let addr: IpAddr = a.parse().map_err(|_| {
        let hint = if a.chars().any(|c| c.is_ascii_alphabetic()) && !a.contains(':') {
            "host names are not resolved here; write an address or a CIDR like \
             198.18.0.0/15, or use dns-name to match DNS questions"
        } else {
            "write an IPv4 or IPv6 address, or a CIDR like 198.18.0.0/15 or 2001:db8::/32"
        };
        verr(
            format!("'{a}' is not an IPv4 or IPv6 address"),
            Some(hint.to_string()),
        )
    })?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => {
            let n: u8 = l
                .parse()
                .ok()
                .filter(|_| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    verr(
                        format!("'/{l}' is not a prefix length"),
                        Some(format!(
                            "write a number from 0 to {max}, as in 198.18.0.0/15"
                        )),
                    )
                })?;
            if n > max {
                let family = if max == 32 { "IPv4" } else { "IPv6" };
                return Err(verr(
                    format!("prefix /{n} is too long for {family}"),
                    Some(format!("{family} prefixes are at most /{max}")),
                ));
            }
            n
        }
    };
    let host_bits_err = |net: IpAddr| {
        verr(
            format!("{s} has host bits set"),
            Some(format!("the network is {net}/{len}")),
        )
    };
    match addr {
        IpAddr::V4(v4) => {
            let a = u32::from(v4);
            let host = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            if a & host != 0 {
                return Err(host_bits_err(IpAddr::V4((a & !host).into())));
            }
            Ok(AddrRange::V4(a, a | host))
        }
        IpAddr::V6(v6) => {
            let a = u128::from(v6);
            let host = u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            if a & host != 0 {
                return Err(host_bits_err(IpAddr::V6((a & !host).into())));
            }
            Ok(AddrRange::V6(a, a | host))
        }
    }
}

/// `host.example`, `host.example.` or `*.example`, into lower-case wire form.
fn parse_name(s: &str) -> Result<NamePattern, VErr> {
    let (wildcard, rest) = match s.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    if s == "*" {
        return Err(verr(
            "'*' alone is not a name pattern".to_string(),
            Some("to match any question, write 'dns query' or 'dns any'".to_string()),
        ));
    }
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    if rest.is_empty() {
        return Err(verr(
            format!("'{s}' is not a DNS name"),
            Some("write a name like portal.example or *.portal.example".to_string()),
        ));
    }
    if rest.contains('*') {
        return Err(verr(
            format!("'*' in '{s}' is only allowed as the whole first label"),
            Some("write *.example to match every name below example".to_string()),
        ));
    }
    let mut wire = Vec::with_capacity(rest.len() + 2);
    for label in rest.split('.') {
        if label.is_empty() {
            return Err(verr(
                format!("empty label in '{s}'"),
                Some("two dots in a row, or a leading dot".to_string()),
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            let hint = if bad.is_ascii() {
                "names hold letters, digits, '-' and '_'".to_string()
            } else {
                "write internationalised names in their xn-- form".to_string()
            };
            return Err(verr(
                format!("'{bad}' is not allowed in DNS name '{s}'"),
                Some(hint),
            ));
        }
        let len = u8::try_from(label.len())
            .ok()
            .filter(|l| *l <= 63)
            .ok_or_else(|| {
                verr(
                    format!("label '{label}' is longer than 63 bytes"),
                    Some("DNS labels are at most 63 bytes".to_string()),
                )
            })?;
        wire.push(len);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    if wire.len() > 255 {
        return Err(verr(
            format!("name '{s}' is longer than 255 bytes"),
            Some("DNS names are at most 255 bytes in wire form".to_string()),
        ));
    }
    Ok(NamePattern {
        wire: wire.into_boxed_slice(),
        wildcard,
    })
}

/// Look `s` up (case-insensitively) in a keyword table, with a did-you-mean on failure.
fn lookup<T: Copy>(s: &str, table: &[(&str, T)], what: &str) -> Result<T, VErr> {
    let lower = s.to_ascii_lowercase();
    if let Some((_, v)) = table.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
    let hint = dym_hint(s, &names).unwrap_or_else(|| one_of(&names));
    Err(verr(format!("unknown {what} '{s}'"), Some(hint)))
}

const HOOKS: &[(&str, Hook)] = &[
    ("prerouting", Hook::PreRouting),
    ("input", Hook::Input),
    ("forward", Hook::Forward),
    ("output", Hook::Output),
    ("postrouting", Hook::PostRouting),
];

const DIRS: &[(&str, Direction)] = &[
    ("in", Direction::Incoming),
    ("out", Direction::LocalOut),
    ("forward", Direction::Forwarded),
];

const PROTOS: &[(&str, u8)] = &[
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

const DNS_KINDS: &[(&str, DnsKind)] = &[
    ("query", DnsKind::Query),
    ("response", DnsKind::Response),
    ("any", DnsKind::Any),
];

/// Record types by mnemonic (IANA numbers).
const QTYPES: &[(&str, u16)] = &[
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

fn parse_proto(s: &str) -> Result<u8, VErr> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| {
            verr(
                format!("protocol number {s} is out of range"),
                Some("protocol numbers are 0-255".to_string()),
            )
        });
    }
    lookup(s, PROTOS, "protocol")
}

/// `AAAA`, `TYPE65` (RFC 3597) or a number.
fn parse_qtype(s: &str) -> Result<u16, VErr> {
    let digits = s
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("type"))
        .and_then(|_| s.get(4..))
        .unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return digits.parse().map_err(|_| {
            verr(
                format!("record type {s} is out of range"),
                Some("record types are 0-65535".to_string()),
            )
        });
    }
    let lower = s.to_ascii_lowercase();
    if let Some((_, v)) = QTYPES.iter().find(|(n, _)| *n == lower) {
        return Ok(*v);
    }
    let names: Vec<&str> = QTYPES.iter().map(|(n, _)| *n).collect();
    let hint = did_you_mean(s, &names)
        .map(|c| format!("did you mean '{}'?", c.to_ascii_uppercase()))
        .unwrap_or_else(|| "write a mnemonic like AAAA, or a number like 65".to_string());
    Err(verr(format!("unknown DNS record type '{s}'"), Some(hint)))
}

fn valid_set_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

// ------------------------------------------------------------------------------------------------
// Parser.

/// A set's values, typed by its kind.
#[derive(Debug, Clone)]
enum SetValues {
    Names(Vec<NamePattern>),
    Addrs(Vec<AddrRange>),
    Ports(Vec<PortRange>),
}

impl SetValues {
    fn new(kind: SetKind) -> SetValues {
        match kind {
            SetKind::Names => SetValues::Names(Vec::new()),
            SetKind::Addrs => SetValues::Addrs(Vec::new()),
            SetKind::Ports => SetValues::Ports(Vec::new()),
        }
    }

    fn kind(&self) -> SetKind {
        match self {
            SetValues::Names(_) => SetKind::Names,
            SetValues::Addrs(_) => SetKind::Addrs,
            SetValues::Ports(_) => SetKind::Ports,
        }
    }

    fn len(&self) -> usize {
        match self {
            SetValues::Names(v) => v.len(),
            SetValues::Addrs(v) => v.len(),
            SetValues::Ports(v) => v.len(),
        }
    }

    fn push(&mut self, item: &str) -> Result<(), VErr> {
        match self {
            SetValues::Names(v) => v.push(parse_name(item)?),
            SetValues::Addrs(v) => v.push(parse_addr(item)?),
            SetValues::Ports(v) => v.push(parse_port_range(item)?),
        }
        Ok(())
    }
}

#[derive(Debug)]
struct SetDef {
    /// `None` when the definition had errors (already reported).
    values: Option<SetValues>,
    line: usize,
}

#[derive(Debug)]
struct SetRef {
    name: String,
    line: usize,
    col: usize,
}

#[derive(Debug)]
struct RawCond {
    cond: Cond,
    field: Field,
    line: usize,
    col: usize,
    refs: Vec<SetRef>,
}

#[derive(Debug)]
struct RawRule {
    line: usize,
    conds: Vec<RawCond>,
    action: Action,
}

#[derive(Debug)]
struct RawFlow {
    line: usize,
    /// `src`, `mark` and (once) `names`.
    conds: Vec<RawCond>,
    set_mark: (u32, u32),
    per_mark: bool,
}

/// A word value with its position.
#[derive(Debug, Clone, Copy)]
struct Val<'t> {
    text: &'t str,
    line: usize,
    col: usize,
}

/// What to say when a rule or the default has no action.
#[derive(Debug, Clone, Copy)]
struct Missing {
    message: &'static str,
    hint: &'static str,
}

/// A rule being read: its matchers so far and its action words.
#[derive(Debug, Default)]
struct RuleParts {
    conds: Vec<RawCond>,
    action: ActionParts,
}

/// The action words seen so far in one rule, with where they were.
#[derive(Debug, Default)]
struct ActionParts {
    verdict: Option<(Verdict, &'static str)>,
    set_mark: Option<((u32, u32), usize, usize)>,
    pair: Option<(bool, &'static str, usize, usize)>,
    started: bool,
    /// In a flow rule: `names` and `per-mark` are words there, not values.
    flow: bool,
    /// An action word had an error (already reported): "missing action" would only repeat it.
    broken: bool,
}

struct State<'a> {
    source: &'a str,
    ifaces: &'a dyn Fn(&str) -> Option<u32>,
    diags: Vec<Diagnostic>,
    sets: HashMap<String, SetDef>,
    set_order: Vec<String>,
    rules: Vec<RawRule>,
    flows: Vec<RawFlow>,
    /// The `default` line's number and action, once seen.
    default: Option<(usize, Action)>,
}

/// Index of the `Newline` that ends the line holding `toks[i]` (or `toks.len()`).
fn line_end(toks: &[Token], i: usize) -> usize {
    toks.iter()
        .skip(i)
        .position(|t| t.tok == Tok::Newline)
        .map_or(toks.len(), |p| p + i)
}

impl State<'_> {
    fn error(&mut self, line: usize, col: usize, message: String, hint: Option<String>) {
        self.diags.push(Diagnostic {
            source: self.source.to_string(),
            line,
            col,
            message,
            hint,
        });
    }

    fn error_at(&mut self, tok: &Token, message: String, hint: Option<String>) {
        self.error(tok.line, tok.col, message, hint);
    }

    fn parse_all(&mut self, toks: &[Token]) {
        let mut i = 0;
        while let Some(t) = toks.get(i) {
            match &t.tok {
                Tok::Newline => i += 1,
                Tok::Word(w) if w.eq_ignore_ascii_case("set") => i = self.parse_set(toks, i),
                tok => {
                    let end = line_end(toks, i);
                    let line = toks.get(i..end).unwrap_or(&[]);
                    let eol = toks.get(end).map_or((t.line, t.col), |n| (n.line, n.col));
                    match tok {
                        Tok::Word(w) if w.eq_ignore_ascii_case("default") => {
                            self.parse_default(line, eol)
                        }
                        Tok::Word(w) if w.eq_ignore_ascii_case("flow") => {
                            self.parse_flow(line, eol)
                        }
                        _ => self.parse_rule(line, eol),
                    }
                    i = end + 1;
                }
            }
        }
    }

    // --- sets -----------------------------------------------------------------------------------

    /// `set NAME KIND { ITEM[,] ... }`, possibly over several lines. Returns the index after it.
    fn parse_set(&mut self, toks: &[Token], start: usize) -> usize {
        let usage = "write: set NAME names|addrs|ports { ITEM, ITEM ... }".to_string();
        let skip_line = |i: usize| line_end(toks, i) + 1;
        let mut i = start + 1;
        let mut ok = true;
        let Some(set_tok) = toks.get(start) else {
            return toks.len();
        };
        // Name.
        let (name, name_tok) = match toks.get(i) {
            Some(
                t @ Token {
                    tok: Tok::Word(w), ..
                },
            ) => {
                i += 1;
                let bare = w.strip_prefix('@').unwrap_or(w);
                if w.starts_with('@') {
                    self.error_at(
                        t,
                        format!("set name '{w}' starts with '@'"),
                        Some(format!(
                            "write 'set {bare} ...'; '@{bare}' is how a rule refers to it"
                        )),
                    );
                    ok = false;
                } else if !valid_set_name(bare) {
                    self.error_at(
                        t,
                        format!("'{w}' is not a valid set name"),
                        Some("set names hold letters, digits, '-' and '_'".to_string()),
                    );
                    ok = false;
                } else if keyword(bare).is_some() {
                    self.error_at(
                        t,
                        format!("'{w}' is a keyword and cannot name a set"),
                        Some("choose another name".to_string()),
                    );
                    ok = false;
                }
                (bare.to_string(), t.clone())
            }
            _ => {
                self.error_at(
                    set_tok,
                    "'set' needs a name and a kind".to_string(),
                    Some(usage),
                );
                return skip_line(i);
            }
        };
        // Kind.
        let kind = match toks.get(i) {
            Some(
                t @ Token {
                    tok: Tok::Word(w), ..
                },
            ) => {
                i += 1;
                let kinds = [
                    ("names", SetKind::Names),
                    ("addrs", SetKind::Addrs),
                    ("ports", SetKind::Ports),
                ];
                match lookup(w, &kinds, "set kind") {
                    Ok(k) => Some(k),
                    Err((m, h)) => {
                        self.error_at(t, m, h);
                        None
                    }
                }
            }
            next => {
                self.error(
                    name_tok.line,
                    name_tok.end_col(),
                    format!("set '{name}' needs a kind"),
                    Some(format!("write: set {name} names|addrs|ports {{ ... }}")),
                );
                // With the brace there, read the body anyway so its lines are not taken for
                // rules; otherwise give up on this line.
                if next.is_none_or(|t| t.tok != Tok::Open) {
                    return skip_line(i);
                }
                ok = false;
                None
            }
        };
        // Opening brace, on this line or alone on a following one.
        let next_token = toks
            .iter()
            .skip(i)
            .position(|t| t.tok != Tok::Newline)
            .map(|p| p + i);
        if let Some(j) = next_token.filter(|j| toks.get(*j).is_some_and(|t| t.tok == Tok::Open)) {
            i = j;
        }
        let open = match toks.get(i) {
            Some(t) if t.tok == Tok::Open => {
                i += 1;
                t.clone()
            }
            Some(t) => {
                self.error_at(
                    t,
                    format!("expected '{{' after 'set {name}', found {}", t.describe()),
                    Some(format!(
                        "items go between braces: set {name} {} {{ ITEM, ITEM ... }}",
                        kind.map_or("names", SetKind::keyword)
                    )),
                );
                return skip_line(i);
            }
            None => return i,
        };
        // Body.
        let mut values = kind.map(SetValues::new);
        let mut line_start = false;
        loop {
            let Some(t) = toks.get(i) else {
                self.error_at(
                    &open,
                    format!("set '{name}' is not closed"),
                    Some("add '}' after its last item".to_string()),
                );
                ok = false;
                break;
            };
            match &t.tok {
                Tok::Newline => {
                    line_start = true;
                    i += 1;
                    continue;
                }
                Tok::Comma => {}
                Tok::Close => {
                    i += 1;
                    if let Some(after) = toks.get(i).filter(|a| a.tok != Tok::Newline) {
                        self.error_at(
                            after,
                            format!("unexpected {} after the set's '}}'", after.describe()),
                            Some("start the next rule on a new line".to_string()),
                        );
                        i = skip_line(i);
                    }
                    break;
                }
                Tok::Open => {
                    self.error_at(t, "unexpected '{' inside a set".to_string(), None);
                    ok = false;
                }
                Tok::Bang => {
                    self.error_at(
                        t,
                        "'!' has no meaning inside a set".to_string(),
                        Some(
                            "negate the matcher in the rule instead: '! dns-name @set'".to_string(),
                        ),
                    );
                    ok = false;
                }
                Tok::Word(w) => {
                    if line_start
                        && (w.eq_ignore_ascii_case("set") || w.eq_ignore_ascii_case("default"))
                    {
                        self.error_at(
                            &open,
                            format!("set '{name}' is not closed"),
                            Some("add '}' after its last item".to_string()),
                        );
                        ok = false;
                        break;
                    }
                    if w.starts_with('@') {
                        self.error_at(
                            t,
                            format!("set '{name}' refers to another set ('{w}')"),
                            Some("sets cannot contain sets; list the items".to_string()),
                        );
                        ok = false;
                    } else if let Some(v) = values.as_mut()
                        && let Err((m, h)) = v.push(w)
                    {
                        self.error_at(t, m, h);
                        ok = false;
                    }
                }
            }
            line_start = false;
            i += 1;
        }
        if let Some(first) = self.sets.get(&name) {
            let first_line = first.line;
            self.error_at(
                &name_tok,
                format!("set '{name}' is defined twice"),
                Some(format!("it was first defined on line {first_line}")),
            );
        } else {
            // A broken set is remembered without values, so its uses are not reported again.
            let values = values.filter(|_| ok);
            if values.is_some() {
                self.set_order.push(name.clone());
            }
            self.sets.insert(
                name,
                SetDef {
                    values,
                    line: set_tok.line,
                },
            );
        }
        i
    }

    // --- rules ----------------------------------------------------------------------------------

    fn parse_default(&mut self, line: &[Token], eol: (usize, usize)) {
        let Some(first) = line.first() else { return };
        if let Some((first_line, _)) = self.default {
            self.error_at(
                first,
                "'default' is given twice".to_string(),
                Some(format!("the first is on line {first_line}")),
            );
        }
        let mut parts = ActionParts::default();
        let mut i = 1;
        while let Some(t) = line.get(i) {
            i += 1;
            let word = match &t.tok {
                Tok::Word(w) => w.as_str(),
                _ => {
                    self.error_at(
                        t,
                        format!("unexpected {} after 'default'", t.describe()),
                        Some("'default' takes only an action, e.g. 'default accept'".to_string()),
                    );
                    continue;
                }
            };
            match keyword(word) {
                Some(Keyword::Act(a)) => i = self.action_word(line, i, t, a, &mut parts),
                Some(Keyword::Field(_) | Keyword::Not) => {
                    self.error_at(
                        t,
                        format!("'default' takes no matcher, found '{word}'"),
                        Some(
                            "it applies when no rule matches; write matchers in a rule above it"
                                .to_string(),
                        ),
                    );
                    i = skip_values(line, i, false);
                }
                None => {
                    parts.broken |= self.unknown_word(t, word, true);
                    i = skip_values(line, i, false);
                }
            }
        }
        let missing = Missing {
            message: "'default' needs an action",
            hint: "e.g. 'default accept' or 'default drop'",
        };
        let action = self.finish_action(&parts, eol, missing);
        if self.default.is_none() {
            // Even a bad default counts as "seen", so rules below it are reported once.
            self.default = Some((first.line, action.unwrap_or(Action::ACCEPT)));
        }
    }

    fn parse_rule(&mut self, line: &[Token], eol: (usize, usize)) {
        let Some(first) = line.first() else { return };
        let before = self.diags.len();
        if let Some((default_line, _)) = self.default {
            self.error_at(
                first,
                "rule after 'default'".to_string(),
                Some(format!(
                    "'default' on line {default_line} applies when no rule matches; move it \
                     to the end of the file"
                )),
            );
        }
        let mut rule = RuleParts::default();
        let mut i = 0;
        while let Some(t) = line.get(i) {
            i += 1;
            let word = match &t.tok {
                Tok::Word(w) => w.as_str(),
                Tok::Bang => {
                    i = self.negation(line, i, t, &mut rule);
                    continue;
                }
                Tok::Comma | Tok::Open | Tok::Close | Tok::Newline => {
                    self.stray(t);
                    continue;
                }
            };
            match keyword(word) {
                Some(Keyword::Not) => i = self.negation(line, i, t, &mut rule),
                Some(Keyword::Field(f)) => i = self.field(line, i, t, f, false, &mut rule),
                Some(Keyword::Act(a)) => i = self.action_word(line, i, t, a, &mut rule.action),
                None => {
                    rule.action.broken |= self.unknown_word(t, word, rule.action.started);
                    i = skip_values(line, i, false);
                }
            }
        }
        // `dport 25 mark 1`: 'mark' where 'set-mark' was meant is the likely story.
        let ends_in_mark = rule
            .conds
            .last()
            .is_some_and(|c| c.field == Field::Mark && !c.cond.negated);
        let missing = Missing {
            message: "missing action",
            hint: if ends_in_mark {
                "'mark' matches the packet's mark; to set it, write 'set-mark VALUE[/MASK]'"
            } else {
                "end the rule with accept, drop, repeat or set-mark VALUE[/MASK]"
            },
        };
        let action = self.finish_action(&rule.action, eol, missing);
        self.check_ports_need_tcp_udp(&rule.conds);
        if self.diags.len() == before
            && let Some(action) = action
        {
            self.rules.push(RawRule {
                line: first.line,
                conds: rule.conds,
                action,
            });
        }
    }

    /// `flow [src ...] [mark ...] names ... set-mark VALUE[/MASK] [per-mark]`: a flow rule.
    fn parse_flow(&mut self, line: &[Token], eol: (usize, usize)) {
        let Some(first) = line.first() else { return };
        let before = self.diags.len();
        if let Some((default_line, _)) = self.default {
            self.error_at(
                first,
                "flow rule after 'default'".to_string(),
                Some(format!(
                    "'default' on line {default_line} ends the rules; move it to the end of the \
                     file"
                )),
            );
        }
        let mut rule = RuleParts::default();
        rule.action.flow = true;
        let mut names: Option<&Token> = None;
        // A misspelt `names` was reported; "without names" would only repeat it.
        let mut names_misspelt = false;
        let mut per_mark: Option<&Token> = None;
        let mut set_mark_at: Option<&Token> = None;
        let mut i = 1;
        while let Some(t) = line.get(i) {
            i += 1;
            let word = match &t.tok {
                Tok::Word(w) => w.as_str(),
                Tok::Bang => {
                    i = self.flow_negation(line, i, t, &mut rule);
                    continue;
                }
                Tok::Comma | Tok::Open | Tok::Close | Tok::Newline => {
                    self.stray(t);
                    continue;
                }
            };
            if word.eq_ignore_ascii_case("names") {
                if let Some(prev) = names {
                    self.error_at(
                        t,
                        "'names' is given twice".to_string(),
                        Some(format!(
                            "list all names after the first 'names', at column {}, separated by \
                             commas",
                            prev.col
                        )),
                    );
                }
                names.get_or_insert(t);
                i = self.field(line, i, t, Field::Names, false, &mut rule);
                continue;
            }
            if word.eq_ignore_ascii_case("per-mark") {
                if per_mark.is_some() {
                    self.error_at(
                        t,
                        "'per-mark' is given twice".to_string(),
                        Some("remove one".to_string()),
                    );
                }
                per_mark.get_or_insert(t);
                rule.action.started = true;
                continue;
            }
            match keyword(word) {
                Some(Keyword::Not) => i = self.flow_negation(line, i, t, &mut rule),
                Some(Keyword::Field(f @ (Field::Src | Field::Mark))) => {
                    i = self.field(line, i, t, f, false, &mut rule);
                }
                Some(Keyword::Field(f)) => {
                    let hint = match f {
                        Field::DnsName => "did you mean 'names'?",
                        Field::Dst => {
                            "a flow rule's destinations are the addresses its names resolve to"
                        }
                        _ => {
                            "a flow rule matches clients with src and mark, and marks every \
                              new flow of theirs to an address its names resolved to"
                        }
                    };
                    self.error_at(
                        t,
                        format!("'{}' cannot be used in a flow rule", f.name()),
                        Some(hint.to_string()),
                    );
                    names_misspelt |= f == Field::DnsName;
                    i = skip_values(line, i, true);
                }
                Some(Keyword::Act(ActWord::SetMark)) => {
                    rule.action.started = true;
                    set_mark_at.get_or_insert(t);
                    i = self.set_mark(line, i, t, &mut rule.action);
                }
                Some(Keyword::Act(a)) => {
                    let name = ACTIONS
                        .iter()
                        .find(|(_, w)| *w == a)
                        .map_or(word, |(n, _)| n);
                    let hint = if matches!(a, ActWord::Pair | ActWord::NoPair) {
                        "DNS pairing is chosen by packet rules; a flow rule only marks flows, \
                         with set-mark"
                    } else {
                        "a flow rule only marks flows, with set-mark; to accept, drop or repeat \
                         packets, write a packet rule: a line without 'flow'"
                    };
                    self.error_at(
                        t,
                        format!("'{name}' in a flow rule"),
                        Some(hint.to_string()),
                    );
                }
                None => {
                    match self.unknown_flow_word(t, word, rule.action.started) {
                        Some("names") => names_misspelt = true,
                        Some("set-mark") => rule.action.broken = true,
                        _ => {}
                    }
                    i = skip_values(line, i, true);
                }
            }
        }
        let set_mark = rule.action.set_mark.map(|(m, _, _)| m);
        let has_set_mark = set_mark.is_some() || rule.action.broken;
        if names.is_none() && !names_misspelt {
            if has_set_mark {
                let (line_no, col) = set_mark_at.map_or(eol, |t| (t.line, t.col));
                self.error(
                    line_no,
                    col,
                    "flow rule without 'names'".to_string(),
                    Some(
                        "say whose addresses it learns before set-mark, e.g. 'names \
                         *.video.example'"
                            .to_string(),
                    ),
                );
            } else {
                self.error(
                    eol.0,
                    eol.1,
                    "flow rule without 'names' and 'set-mark'".to_string(),
                    Some(format!("write: {FLOW_USAGE}")),
                );
            }
        } else if !has_set_mark {
            // `flow names x.example mark 0x20`: 'mark' where 'set-mark' was meant.
            let ends_in_mark = rule
                .conds
                .last()
                .is_some_and(|c| c.field == Field::Mark && !c.cond.negated);
            let hint = if ends_in_mark {
                "'mark' matches the client's mark; to mark the flows, write 'set-mark \
                 VALUE[/MASK]'"
            } else {
                "end it with the mark for the flows, e.g. 'set-mark 0x20/0xff'"
            };
            self.error(
                eol.0,
                eol.1,
                "flow rule without 'set-mark'".to_string(),
                Some(hint.to_string()),
            );
        }
        if self.diags.len() == before
            && let Some(set_mark) = set_mark
        {
            self.flows.push(RawFlow {
                line: first.line,
                conds: rule.conds,
                set_mark,
                per_mark: per_mark.is_some(),
            });
        }
    }

    /// After `!` / `not` at `line[i-1]` in a flow rule: a negated `src` or `mark`.
    fn flow_negation(
        &mut self,
        line: &[Token],
        i: usize,
        bang: &Token,
        rule: &mut RuleParts,
    ) -> usize {
        let Some(
            t @ Token {
                tok: Tok::Word(w), ..
            },
        ) = line.get(i)
        else {
            self.error_at(
                bang,
                "negation without a matcher".to_string(),
                Some("put '!' before src or mark, as in '! src 198.18.1.0/24'".to_string()),
            );
            return i;
        };
        let hint = match keyword(w) {
            Some(Keyword::Field(f @ (Field::Src | Field::Mark))) => {
                return self.field(line, i + 1, t, f, true, rule);
            }
            Some(Keyword::Not) => {
                self.error_at(
                    t,
                    "negation twice in a row".to_string(),
                    Some("remove both".to_string()),
                );
                return i + 1;
            }
            _ if w.eq_ignore_ascii_case("names") => {
                "a flow rule learns the names it lists; to leave some out, give them an earlier \
                 flow rule of their own"
            }
            Some(Keyword::Act(_)) => "negate a matcher instead, as in '! src 198.18.1.0/24'",
            _ if flow_only(w) => "negate a matcher instead, as in '! src 198.18.1.0/24'",
            // Other words are reported on their own, next.
            _ => return i,
        };
        self.error_at(
            bang,
            format!("'{w}' cannot be negated"),
            Some(hint.to_string()),
        );
        // The word itself is read next, as if it were not negated.
        i
    }

    /// Report a word a flow rule does not know. Returns the flow word it was taken for, if any.
    fn unknown_flow_word(
        &mut self,
        tok: &Token,
        word: &str,
        in_action: bool,
    ) -> Option<&'static str> {
        let alias = ALIASES
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(word))
            .map(|(_, to)| if *to == "dns-name" { "names" } else { *to })
            .filter(|to| FLOW_WORDS.contains(to));
        let suggestion = alias.or_else(|| did_you_mean(word.trim_start_matches('-'), FLOW_WORDS));
        let is_action = in_action || matches!(suggestion, Some("set-mark" | "per-mark"));
        let message = if is_action {
            format!("unknown action '{word}' in a flow rule")
        } else {
            format!("unknown field '{word}' in a flow rule")
        };
        let looks_like_value = word
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '@' || c == '*')
            || word.contains(['.', ':', '/']);
        let hint = match suggestion {
            Some(s) => format!("did you mean '{s}'?"),
            None if looks_like_value => "to give a field several values, separate them with \
                                         commas, as in 'names a.example, b.example'"
                .to_string(),
            None => format!("a flow rule reads: {FLOW_USAGE}"),
        };
        self.error_at(tok, message, Some(hint));
        suggestion
    }

    /// A `,`, `{` or `}` where a field or an action word was expected.
    fn stray(&mut self, t: &Token) {
        let hint = match t.tok {
            Tok::Comma => Some("commas separate the values of one field, as in 'dport 80, 443'"),
            Tok::Open => Some(
                "braces hold the items of a set: set NAME names { ... }; in a rule, separate \
                 values with commas",
            ),
            _ => None,
        };
        self.error_at(
            t,
            format!("unexpected {}", t.describe()),
            hint.map(str::to_string),
        );
    }

    /// After `!` / `not` at `line[i-1]`: the negated matcher.
    fn negation(&mut self, line: &[Token], i: usize, bang: &Token, rule: &mut RuleParts) -> usize {
        match line.get(i) {
            Some(
                t @ Token {
                    tok: Tok::Word(w), ..
                },
            ) => match keyword(w) {
                Some(Keyword::Field(f)) => self.field(line, i + 1, t, f, true, rule),
                Some(Keyword::Act(_)) => {
                    self.error_at(
                        bang,
                        format!("'{w}' cannot be negated"),
                        Some("negate a matcher instead, as in '! dport 53'".to_string()),
                    );
                    i
                }
                Some(Keyword::Not) => {
                    self.error_at(
                        t,
                        "negation twice in a row".to_string(),
                        Some("remove both".to_string()),
                    );
                    i + 1
                }
                // The unknown word is reported on its own.
                None => i,
            },
            _ => {
                self.error_at(
                    bang,
                    "negation without a matcher".to_string(),
                    Some("put '!' before a matcher, as in '! dport 53'".to_string()),
                );
                i
            }
        }
    }

    /// A field at `line[i-1]` (`tok`): read its values and check them. Returns the next index.
    fn field(
        &mut self,
        line: &[Token],
        mut i: usize,
        tok: &Token,
        field: Field,
        negated: bool,
        rule: &mut RuleParts,
    ) -> usize {
        let name = field.name();
        if rule.action.started {
            let hint = if field == Field::Mark && !negated {
                "to set the mark, write 'set-mark VALUE[/MASK]'; to match it, put 'mark' before \
                 the action"
            } else {
                "put matchers before the action"
            };
            self.error_at(
                tok,
                format!("matcher '{name}' after the action"),
                Some(hint.to_string()),
            );
        }
        let mut vals: Vec<Val<'_>> = Vec::new();
        if let Some(b) = line.get(i).filter(|t| t.tok == Tok::Bang) {
            self.error_at(
                b,
                "'!' goes before the field, not its value".to_string(),
                Some(format!("write '! {name} ...'")),
            );
            i += 1;
        }
        if let Some(open) = line.get(i).filter(|t| t.tok == Tok::Open) {
            // `dport { 80 443 }`: nftables style. Say how it is written here, keep the values.
            self.error_at(
                open,
                format!("braces after '{name}'"),
                Some(format!(
                    "in a rule, separate values with commas, as in '{}'; braces hold the items \
                     of a set",
                    field.example()
                )),
            );
            i += 1;
            while let Some(t) = line.get(i) {
                i += 1;
                match &t.tok {
                    Tok::Close => break,
                    Tok::Word(w) => vals.push(Val {
                        text: w.as_str(),
                        line: t.line,
                        col: t.col,
                    }),
                    _ => {}
                }
            }
        } else {
            match value_word(line.get(i), rule.action.flow) {
                Some(v) => {
                    vals.push(v);
                    i += 1;
                }
                None => {
                    self.error(
                        tok.line,
                        tok.end_col(),
                        format!("'{name}' needs a value"),
                        Some(format!("e.g. '{}'", field.example())),
                    );
                    return i;
                }
            }
        }
        while let Some(comma) = line.get(i).filter(|t| t.tok == Tok::Comma) {
            i += 1;
            match value_word(line.get(i), rule.action.flow) {
                Some(v) => {
                    vals.push(v);
                    i += 1;
                }
                None => {
                    self.error_at(comma, "expected a value after ','".to_string(), None);
                    break;
                }
            }
        }
        let mut test = field.empty_test();
        let mut refs = Vec::new();
        let mut ok = true;
        for v in &vals {
            if let Some(set) = v.text.strip_prefix('@') {
                if field.set_kind().is_none() {
                    let takers = if rule.action.flow {
                        "in a flow rule, only src and names take sets"
                    } else {
                        "only dns-name, src, dst, sport and dport take sets"
                    };
                    self.error(
                        v.line,
                        v.col,
                        format!("'{name}' does not take a set"),
                        Some(takers.to_string()),
                    );
                    ok = false;
                } else if set.is_empty() {
                    self.error(
                        v.line,
                        v.col,
                        "'@' without a set name".to_string(),
                        Some("write '@NAME' for a set defined with 'set NAME ...'".to_string()),
                    );
                    ok = false;
                } else {
                    refs.push(SetRef {
                        name: set.to_string(),
                        line: v.line,
                        col: v.col,
                    });
                }
                continue;
            }
            let result = match &mut test {
                Test::Hook(l) => lookup(v.text, HOOKS, "hook").map(|x| l.push(x)),
                Test::Dir(l) => lookup(v.text, DIRS, "direction").map(|x| l.push(x)),
                Test::Iif(l) | Test::Oif(l) => self.interface(v.text).map(|x| l.push(x)),
                Test::Src(l) | Test::Dst(l) => parse_addr(v.text).map(|x| l.push(x)),
                Test::Proto(l) => parse_proto(v.text).map(|x| l.push(x)),
                Test::Sport(l) | Test::Dport(l) => parse_port_range(v.text).map(|x| l.push(x)),
                Test::Mark(l) => parse_mark(v.text, false).map(|x| l.push(x)),
                Test::Dns(l) => lookup(v.text, DNS_KINDS, "DNS message kind").map(|x| l.push(x)),
                Test::DnsName(l) => parse_name(v.text).map(|x| l.push(x)),
                Test::DnsType(l) => parse_qtype(v.text).map(|x| l.push(x)),
            };
            if let Err((m, h)) = result {
                self.error(v.line, v.col, m, h);
                ok = false;
            }
        }
        if ok {
            rule.conds.push(RawCond {
                cond: Cond { negated, test },
                field,
                line: tok.line,
                col: tok.col,
                refs,
            });
        }
        i
    }

    fn interface(&self, name: &str) -> Result<u32, VErr> {
        match (self.ifaces)(name) {
            Some(idx) if idx != 0 => Ok(idx),
            _ => Err(verr(
                format!("unknown interface '{name}'"),
                Some(
                    "the interface must exist when the rules load; they are read again on \
                     reload"
                        .to_string(),
                ),
            )),
        }
    }

    /// An action word at `line[i-1]`. Returns the next index.
    fn action_word(
        &mut self,
        line: &[Token],
        i: usize,
        tok: &Token,
        word: ActWord,
        parts: &mut ActionParts,
    ) -> usize {
        parts.started = true;
        let (verdict, flag) = match word {
            ActWord::Accept => (Some((Verdict::Accept, "accept")), None),
            ActWord::Drop => (Some((Verdict::Drop, "drop")), None),
            ActWord::Repeat => (Some((Verdict::Repeat, "repeat")), None),
            ActWord::Pair => (None, Some((true, "pair"))),
            ActWord::NoPair => (None, Some((false, "nopair"))),
            ActWord::SetMark => return self.set_mark(line, i, tok, parts),
        };
        if let Some((v, name)) = verdict {
            match parts.verdict {
                Some((_, prev)) => self.error_at(
                    tok,
                    format!("'{name}' after '{prev}': a rule has one verdict"),
                    Some("keep one of accept, drop and repeat".to_string()),
                ),
                None => parts.verdict = Some((v, name)),
            }
        }
        if let Some((pair, name)) = flag {
            match parts.pair {
                Some((_, prev, _, _)) => self.error_at(
                    tok,
                    format!("'{name}' after '{prev}'"),
                    Some("keep one of pair and nopair".to_string()),
                ),
                None => parts.pair = Some((pair, name, tok.line, tok.col)),
            }
        }
        i
    }

    fn set_mark(
        &mut self,
        line: &[Token],
        i: usize,
        tok: &Token,
        parts: &mut ActionParts,
    ) -> usize {
        let Some(value) = value_word(line.get(i), parts.flow) else {
            self.error(
                tok.line,
                tok.end_col(),
                "'set-mark' needs a value".to_string(),
                Some("e.g. set-mark 0x1 or set-mark 0x100/0xff00".to_string()),
            );
            parts.broken = true;
            return i;
        };
        match parse_mark(value.text, true) {
            Err((m, h)) => {
                self.error(value.line, value.col, m, h);
                parts.broken = true;
            }
            Ok(_) if parts.set_mark.is_some() => self.error_at(
                tok,
                "'set-mark' is given twice".to_string(),
                Some("a rule sets one mark; combine the bits into one VALUE/MASK".to_string()),
            ),
            Ok(m) => parts.set_mark = Some((m, tok.line, tok.col)),
        }
        i + 1
    }

    /// Check the action words of a rule or the default; `eol` is where "missing" is reported.
    fn finish_action(
        &mut self,
        parts: &ActionParts,
        eol: (usize, usize),
        missing: Missing,
    ) -> Option<Action> {
        if parts.broken {
            return None;
        }
        if parts.verdict.is_none() && parts.set_mark.is_none() {
            self.error(
                eol.0,
                eol.1,
                missing.message.to_string(),
                Some(missing.hint.to_string()),
            );
            return None;
        }
        let verdict = parts.verdict.map_or(Verdict::Accept, |(v, _)| v);
        let mut ok = true;
        if verdict == Verdict::Drop {
            if let Some((_, line, col)) = parts.set_mark {
                self.error(
                    line,
                    col,
                    "'set-mark' with 'drop': a dropped packet keeps no mark".to_string(),
                    Some("use 'accept' or 'repeat' with set-mark, or remove set-mark".to_string()),
                );
                ok = false;
            }
            if let Some((_, name, line, col)) = parts.pair {
                self.error(
                    line,
                    col,
                    format!("'{name}' with 'drop': dropped packets are never paired"),
                    Some(format!("remove '{name}'")),
                );
                ok = false;
            }
        }
        ok.then(|| Action {
            verdict,
            set_mark: parts.set_mark.map(|(m, _, _)| m),
            pairing: verdict != Verdict::Drop && parts.pair.is_none_or(|(p, _, _, _)| p),
        })
    }

    /// Ports exist only for TCP and UDP: a port matcher beside a protocol that excludes both can
    /// never match, which is certainly a mistake.
    fn check_ports_need_tcp_udp(&mut self, conds: &[RawCond]) {
        let Some(protos) = conds.iter().find_map(|c| match &c.cond.test {
            Test::Proto(p) if !c.cond.negated => Some(p),
            _ => None,
        }) else {
            return;
        };
        if protos.iter().any(|p| *p == 6 || *p == 17) {
            return;
        }
        for c in conds
            .iter()
            .filter(|c| !c.cond.negated && matches!(c.field, Field::Sport | Field::Dport))
        {
            self.error(
                c.line,
                c.col,
                format!("'{}' with a protocol that has no ports", c.field.name()),
                Some("ports exist only for tcp and udp; this rule can never match".to_string()),
            );
        }
    }

    /// Report a word that is neither a field nor an action.
    /// Returns true when the word was taken for a misspelt action.
    fn unknown_word(&mut self, tok: &Token, word: &str, in_action: bool) -> bool {
        if flow_only(word) || word.eq_ignore_ascii_case("flow") {
            let lower = word.to_ascii_lowercase();
            let hint = if lower == "flow" {
                "'flow' starts a flow rule: put it first on the line".to_string()
            } else {
                format!(
                    "'{lower}' belongs in a flow rule: start the line with 'flow', as in 'flow \
                     names *.video.example set-mark 0x20/0xff'"
                )
            };
            let is_action = lower == "per-mark";
            let kind = if is_action { "action" } else { "field" };
            self.error_at(tok, format!("unknown {kind} '{word}'"), Some(hint));
            return is_action;
        }
        let alias = ALIASES
            .iter()
            .find(|(a, _)| a.eq_ignore_ascii_case(word))
            .map(|(_, to)| *to);
        let fields: Vec<&str> = FIELDS.iter().map(|(n, _)| *n).collect();
        let actions: Vec<&str> = ACTIONS.iter().map(|(n, _)| *n).collect();
        let all: Vec<&str> = fields.iter().chain(actions.iter()).copied().collect();
        let bare = word.trim_start_matches('-');
        let suggestion = alias.or_else(|| did_you_mean(bare, &all));
        let is_action = in_action || suggestion.is_some_and(|s| actions.contains(&s));
        let message = if is_action {
            format!("unknown action '{word}'")
        } else {
            format!("unknown field '{word}'")
        };
        let looks_like_value = word
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '@' || c == '*')
            || word.contains(['.', ':', '/']);
        let lower = word.to_ascii_lowercase();
        let value_of = |table: &[&str], field: &str| {
            table
                .contains(&lower.as_str())
                .then(|| format!("did you mean '{field} {lower}'?"))
        };
        let hooks: Vec<&str> = HOOKS.iter().map(|(n, _)| *n).collect();
        let protos: Vec<&str> = PROTOS.iter().map(|(n, _)| *n).collect();
        let as_value = value_of(&protos, "proto").or_else(|| value_of(&hooks, "hook"));
        let hint = match suggestion {
            Some(s) => Some(format!("did you mean '{s}'?")),
            None if as_value.is_some() && !in_action => as_value,
            None if looks_like_value => Some(
                "to give a field several values, separate them with commas, as in 'dport 80, 443'"
                    .to_string(),
            ),
            None if is_action => Some(
                "actions are accept, drop, repeat, set-mark VALUE[/MASK], pair and nopair"
                    .to_string(),
            ),
            None => Some(format!("fields are {}", fields.join(", "))),
        };
        self.error_at(tok, message, hint);
        is_action
    }

    // --- resolution ------------------------------------------------------------------------------

    /// Expand set references and produce the final rules.
    fn resolve(&mut self) -> Vec<RuleDef> {
        let raw = std::mem::take(&mut self.rules);
        let mut out = Vec::with_capacity(raw.len());
        for rule in raw {
            if let Some(conds) = self.resolve_conds(rule.conds) {
                out.push(RuleDef {
                    line: rule.line,
                    conds,
                    action: rule.action,
                });
            }
        }
        out
    }

    /// Expand set references in the flow rules and produce the final flow rules.
    fn resolve_flows(&mut self) -> Vec<FlowDef> {
        let raw = std::mem::take(&mut self.flows);
        let mut out = Vec::with_capacity(raw.len());
        for flow in raw {
            let Some(conds) = self.resolve_conds(flow.conds) else {
                continue;
            };
            let mut names = Vec::new();
            let mut client = Vec::with_capacity(conds.len());
            for cond in conds {
                match cond.test {
                    // Only `names` reads into DnsName in a flow rule, and only once.
                    Test::DnsName(v) => names.extend(v),
                    _ => client.push(cond),
                }
            }
            let per_mark = flow.per_mark.then(|| {
                let masks = client.iter().filter_map(|c| match &c.test {
                    Test::Mark(v) => Some(v.iter().fold(0, |acc, (_, m)| acc | m)),
                    _ => None,
                });
                masks.reduce(|a, b| a | b).unwrap_or(u32::MAX)
            });
            out.push(FlowDef {
                line: flow.line,
                conds: client,
                names,
                set_mark: flow.set_mark,
                per_mark,
            });
        }
        out
    }

    /// Expand the set references of one rule's matchers; `None` (errors reported) when one
    /// cannot be expanded.
    fn resolve_conds(&mut self, raw: Vec<RawCond>) -> Option<Vec<Cond>> {
        let mut ok = true;
        let mut conds = Vec::with_capacity(raw.len());
        for rc in raw {
            let mut cond = rc.cond;
            for r in &rc.refs {
                let Some(def) = self.sets.get(&r.name) else {
                    let names: Vec<&str> = self.sets.keys().map(String::as_str).collect();
                    let hint = did_you_mean(&r.name, &names)
                        .map(|n| format!("did you mean '@{n}'?"))
                        .or_else(|| {
                            rc.field.set_kind().map(|k| {
                                format!("define it with: set {} {} {{ ... }}", r.name, k.keyword())
                            })
                        });
                    self.diags.push(Diagnostic {
                        source: self.source.to_string(),
                        line: r.line,
                        col: r.col,
                        message: format!("unknown set '@{}'", r.name),
                        hint,
                    });
                    ok = false;
                    continue;
                };
                let Some(values) = &def.values else {
                    // The definition's errors are reported; its uses are not errors too.
                    ok = false;
                    continue;
                };
                let extended = match (&mut cond.test, values) {
                    (Test::DnsName(l), SetValues::Names(v)) => {
                        l.extend(v.iter().cloned());
                        true
                    }
                    (Test::Src(l) | Test::Dst(l), SetValues::Addrs(v)) => {
                        l.extend_from_slice(v);
                        true
                    }
                    (Test::Sport(l) | Test::Dport(l), SetValues::Ports(v)) => {
                        l.extend_from_slice(v);
                        true
                    }
                    _ => false,
                };
                if !extended {
                    let want = rc.field.set_kind().map_or("values", SetKind::noun);
                    self.diags.push(Diagnostic {
                        source: self.source.to_string(),
                        line: r.line,
                        col: r.col,
                        message: format!(
                            "set '@{}' holds {}, but '{}' needs {want}",
                            r.name,
                            values.kind().noun(),
                            rc.field.name()
                        ),
                        hint: Some(format!("the set is defined on line {}", def.line)),
                    });
                    ok = false;
                }
            }
            conds.push(cond);
        }
        ok.then_some(conds)
    }
}

/// A value word (a word that is not a keyword; in a flow rule, nor a flow word), with its
/// position.
fn value_word(t: Option<&Token>, flow: bool) -> Option<Val<'_>> {
    match t {
        Some(Token {
            tok: Tok::Word(w),
            line,
            col,
        }) if keyword(w).is_none() && !(flow && flow_only(w)) => Some(Val {
            text: w.as_str(),
            line: *line,
            col: *col,
        }),
        _ => None,
    }
}

/// Skip the values that follow an unknown word, up to the next `!` or word that is, or looks
/// like, a keyword (so `prot udp dropp` reports both `prot` and `dropp`). In a flow rule
/// (`flow`), its own words count as keywords too.
fn skip_values(line: &[Token], mut i: usize, flow: bool) -> usize {
    let mut keywords: Vec<&str> = FIELDS
        .iter()
        .map(|(n, _)| *n)
        .chain(ACTIONS.iter().map(|(n, _)| *n))
        .collect();
    if flow {
        keywords.extend_from_slice(FLOW_WORDS);
    }
    while let Some(t) = line.get(i) {
        match &t.tok {
            Tok::Bang => break,
            Tok::Word(w) if keyword(w).is_some() || (flow && flow_only(w)) => break,
            Tok::Word(w)
                if ALIASES.iter().any(|(a, _)| a.eq_ignore_ascii_case(w))
                    || (w.starts_with('-') && keyword(w.trim_start_matches('-')).is_some())
                    || did_you_mean(w, &keywords).is_some() =>
            {
                break;
            }
            _ => i += 1,
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ifaces(name: &str) -> Option<u32> {
        match name {
            "lan0" => Some(2),
            "wan0" => Some(3),
            _ => None,
        }
    }

    fn ok(text: &str) -> Parsed {
        match parse(text, "t.rules", &ifaces) {
            Ok(p) => p,
            Err(d) => panic!("unexpected errors: {d:#?}"),
        }
    }

    /// Every diagnostic, as the user sees it.
    fn errors(text: &str) -> Vec<String> {
        match parse(text, "t.rules", &ifaces) {
            Ok(p) => panic!("expected errors for {text:?}, parsed {p:#?}"),
            Err(d) => d.iter().map(ToString::to_string).collect(),
        }
    }

    fn wire(name: &str) -> Box<[u8]> {
        let mut w = Vec::new();
        for l in name.split('.') {
            w.push(l.len() as u8);
            w.extend(l.bytes());
        }
        w.push(0);
        w.into_boxed_slice()
    }

    fn only_rule(text: &str) -> RuleDef {
        let mut p = ok(text);
        assert_eq!(p.rules.len(), 1, "{text}");
        p.rules.remove(0)
    }

    #[test]
    fn empty_file_is_accept_everything() {
        for text in ["", "# only a comment\n\n   \t\n", "\r\n"] {
            let p = ok(text);
            assert!(p.rules.is_empty());
            assert!(p.sets.is_empty());
            assert_eq!(p.default, Action::ACCEPT);
        }
    }

    #[test]
    fn every_field_parses_to_its_values() {
        let r = only_rule(
            "hook prerouting, INPUT dir in, out iif lan0 oif wan0 src 198.18.0.0/15, 2001:db8::1 \
             dst 198.18.5.5 proto tcp, 17, icmpv6 sport 1024-65535 dport 53, 853, 8000:8080 \
             mark 0x100/0xff00 dns query dns-name Portal.Example., *.cdn.example \
             dns-type AAAA, type65, 99 accept",
        );
        let tests: Vec<Test> = r.conds.into_iter().map(|c| c.test).collect();
        assert_eq!(
            tests,
            vec![
                Test::Hook(vec![Hook::PreRouting, Hook::Input]),
                Test::Dir(vec![Direction::Incoming, Direction::LocalOut]),
                Test::Iif(vec![2]),
                Test::Oif(vec![3]),
                Test::Src(vec![
                    AddrRange::V4(0xc612_0000, 0xc613_ffff),
                    AddrRange::V6(0x2001_0db8 << 96 | 1, 0x2001_0db8 << 96 | 1),
                ]),
                Test::Dst(vec![AddrRange::V4(0xc612_0505, 0xc612_0505)]),
                Test::Proto(vec![6, 17, 58]),
                Test::Sport(vec![PortRange {
                    lo: 1024,
                    hi: 65535
                }]),
                Test::Dport(vec![
                    PortRange { lo: 53, hi: 53 },
                    PortRange { lo: 853, hi: 853 },
                    PortRange { lo: 8000, hi: 8080 },
                ]),
                Test::Mark(vec![(0x100, 0xff00)]),
                Test::Dns(vec![DnsKind::Query]),
                Test::DnsName(vec![
                    NamePattern {
                        wire: wire("portal.example"),
                        wildcard: false
                    },
                    NamePattern {
                        wire: wire("cdn.example"),
                        wildcard: true
                    },
                ]),
                Test::DnsType(vec![28, 65, 99]),
            ]
        );
        assert_eq!(r.action, Action::ACCEPT);
    }

    #[test]
    fn open_port_ranges_and_whole_prefixes() {
        let r = only_rule("sport :1023 dport 1024- src 0.0.0.0/0, ::/0 accept");
        let tests: Vec<Test> = r.conds.into_iter().map(|c| c.test).collect();
        assert_eq!(
            tests,
            vec![
                Test::Sport(vec![PortRange { lo: 0, hi: 1023 }]),
                Test::Dport(vec![PortRange {
                    lo: 1024,
                    hi: 65535
                }]),
                Test::Src(vec![
                    AddrRange::V4(0, u32::MAX),
                    AddrRange::V6(0, u128::MAX)
                ]),
            ]
        );
    }

    #[test]
    fn actions_and_flags() {
        let a = |text: &str| only_rule(text).action;
        assert_eq!(
            a("dport 25 set-mark 1"),
            Action {
                verdict: Verdict::Accept,
                set_mark: Some((1, u32::MAX)),
                pairing: true
            }
        );
        assert_eq!(
            a("dport 25 set-mark 0x10/0xf0 repeat nopair"),
            Action {
                verdict: Verdict::Repeat,
                set_mark: Some((0x10, 0xf0)),
                pairing: false
            }
        );
        assert_eq!(
            a("dport 25 DROP"),
            Action {
                verdict: Verdict::Drop,
                set_mark: None,
                pairing: false
            }
        );
        assert_eq!(a("dport 53 accept pair"), Action::ACCEPT);
        assert_eq!(a("accept"), Action::ACCEPT);
        let p = ok("dport 53 accept\ndefault drop # the end\n\n# trailing comment\n");
        assert_eq!(p.default.verdict, Verdict::Drop);
        let p = ok("default set-mark 0x1/0x1 nopair");
        assert_eq!(p.default.set_mark, Some((1, 1)));
        assert!(!p.default.pairing);
    }

    #[test]
    fn negation_with_bang_attached_spaced_or_not() {
        for text in [
            "!dport 53 accept",
            "! dport 53 accept",
            "not dport 53 accept",
        ] {
            let r = only_rule(text);
            assert!(r.conds.first().is_some_and(|c| c.negated), "{text}");
        }
        assert!(
            only_rule("dport 53 accept")
                .conds
                .iter()
                .all(|c| !c.negated)
        );
    }

    #[test]
    fn sets_span_lines_and_expand_into_rules() {
        let p = ok(
            "set garden names {\n  portal.example, *.cdn.example # comment\n  \
                    login.example\n}\nset web ports { 80 443 }\nset lan addrs {198.18.0.0/24,\
                    2001:db8::/64}\n\ndns-name @garden, extra.example accept\n\
                    src @lan dport @web set-mark 2\n",
        );
        assert_eq!(
            p.sets.iter().map(|s| (s.kind, s.len)).collect::<Vec<_>>(),
            vec![
                (SetKind::Names, 3),
                (SetKind::Ports, 2),
                (SetKind::Addrs, 2)
            ]
        );
        let lens: Vec<Vec<usize>> = p
            .rules
            .iter()
            .map(|r| {
                r.conds
                    .iter()
                    .map(|c| match &c.test {
                        Test::DnsName(v) => v.len(),
                        Test::Src(v) | Test::Dst(v) => v.len(),
                        Test::Sport(v) | Test::Dport(v) => v.len(),
                        _ => 0,
                    })
                    .collect()
            })
            .collect();
        assert_eq!(lens, vec![vec![4], vec![2, 2]]);
        assert_eq!(
            p.rules.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![8, 9]
        );
    }

    #[test]
    fn set_may_be_used_before_it_is_defined_and_may_be_empty() {
        let p = ok("dport @mail set-mark 1\nset mail ports { 25, 465, 587 }\nset none names {}\n");
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.sets.len(), 2);
    }

    fn only_flow(text: &str) -> FlowDef {
        let mut p = ok(text);
        assert_eq!(p.flows.len(), 1, "{text}");
        p.flows.remove(0)
    }

    #[test]
    fn flow_rule_parses_to_clients_names_and_mark() {
        let f = only_flow(
            "FLOW src 198.18.1.0/24, 2001:db8:1::/64 names *.Video.Example, video.example. \
             set-mark 0x20/0xff",
        );
        assert_eq!(f.line, 1);
        assert_eq!(
            f.conds,
            vec![Cond {
                negated: false,
                test: Test::Src(vec![
                    AddrRange::V4(0xc612_0100, 0xc612_01ff),
                    AddrRange::V6(
                        0x2001_0db8_0001 << 80,
                        (0x2001_0db8_0001 << 80) | ((1u128 << 64) - 1)
                    ),
                ]),
            }]
        );
        assert_eq!(
            f.names,
            vec![
                NamePattern {
                    wire: wire("video.example"),
                    wildcard: true
                },
                NamePattern {
                    wire: wire("video.example"),
                    wildcard: false
                },
            ]
        );
        assert_eq!(f.set_mark, (0x20, 0xff));
        assert_eq!(f.per_mark, None);
    }

    #[test]
    fn flow_rules_are_kept_apart_from_packet_rules() {
        let p = ok("dport 25 set-mark 1
                    flow names a.example set-mark 2
                    dport 80 accept
                    flow names b.example set-mark 3
                    default accept
");
        assert_eq!(
            p.rules.iter().map(|r| r.line).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(
            p.flows
                .iter()
                .map(|f| (f.line, f.set_mark))
                .collect::<Vec<_>>(),
            vec![(2, (2, u32::MAX)), (4, (3, u32::MAX))]
        );
    }

    #[test]
    fn flow_rule_with_negation_marks_sets_and_per_mark() {
        let f = only_flow(
            "set vids names { *.video.example }
set lan addrs { 198.18.0.0/16 }
\
             flow src @lan ! src 198.18.9.0/24 not mark 0/0x100 mark 0x1/0xf \
             names @vids, cdn.example set-mark 0x20/0xff per-mark",
        );
        assert_eq!(f.line, 3);
        assert_eq!(
            f.conds.iter().map(|c| c.negated).collect::<Vec<_>>(),
            vec![false, true, true, false]
        );
        assert_eq!(f.names.len(), 2);
        // per-mark keys by the bits the rule's mark matchers look at.
        assert_eq!(f.per_mark, Some(0x10f));
        assert_eq!(
            only_flow("flow names a.example set-mark 1 per-mark").per_mark,
            Some(u32::MAX)
        );
        assert_eq!(
            only_flow("flow mark 0x100/0xff00 names a.example PER-MARK set-mark 1").per_mark,
            Some(0xff00),
            "per-mark may come before set-mark"
        );
    }

    #[test]
    fn flow_words_are_no_keywords_elsewhere() {
        // A set may be called 'names' or 'flow'; 'names' may be a DNS name in a packet rule.
        let p = ok("set names names { names.example }
set flow addrs { 198.18.0.0/24 }
\
                    dns-name @names, names accept
flow src @flow names @names set-mark 1
");
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.flows.len(), 1);
        assert_eq!(p.sets.len(), 2);
    }

    /// (what, input, every diagnostic expected).
    const BAD: &[(&str, &str, &[&str])] = &[
        (
            "unknown field",
            "prot udp accept",
            &["t.rules:1:1: unknown field 'prot' (did you mean 'proto'?)"],
        ),
        (
            "protocol name without its field",
            "udp dport 53 accept",
            &["t.rules:1:1: unknown field 'udp' (did you mean 'proto udp'?)"],
        ),
        (
            "iptables spellings",
            "-p tcp --dport 25 set-mark 1",
            &[
                "t.rules:1:1: unknown field '-p' (did you mean 'proto'?)",
                "t.rules:1:8: unknown field '--dport' (did you mean 'dport'?)",
            ],
        ),
        (
            "values without commas",
            "dport 80 443 accept",
            &[
                "t.rules:1:10: unknown field '443' (to give a field several values, separate them \
               with commas, as in 'dport 80, 443')",
            ],
        ),
        (
            "CIDR with host bits",
            "src 198.18.0.1/15 accept",
            &["t.rules:1:5: 198.18.0.1/15 has host bits set (the network is 198.18.0.0/15)"],
        ),
        (
            "bad address",
            "src 198.18.0.300 accept",
            &[
                "t.rules:1:5: '198.18.0.300' is not an IPv4 or IPv6 address (write an IPv4 or IPv6 \
               address, or a CIDR like 198.18.0.0/15 or 2001:db8::/32)",
            ],
        ),
        (
            "host name as address",
            "dst portal.example accept",
            &[
                "t.rules:1:5: 'portal.example' is not an IPv4 or IPv6 address (host names are not \
               resolved here; write an address or a CIDR like 198.18.0.0/15, or use dns-name to \
               match DNS questions)",
            ],
        ),
        (
            "prefix too long",
            "dst 2001:db8::/129 accept",
            &["t.rules:1:5: prefix /129 is too long for IPv6 (IPv6 prefixes are at most /128)"],
        ),
        (
            "prefix not a number",
            "src 198.18.0.0/ accept",
            &[
                "t.rules:1:5: '/' is not a prefix length (write a number from 0 to 32, as in \
               198.18.0.0/15)",
            ],
        ),
        (
            "port range backwards",
            "dport 2000-1000 accept",
            &["t.rules:1:7: port range 2000-1000 is backwards (write 1000-2000)"],
        ),
        (
            "port out of range",
            "sport 70000 accept",
            &["t.rules:1:7: port 70000 is out of range (ports are 0-65535)"],
        ),
        (
            "service name",
            "dport smtp accept",
            &["t.rules:1:7: 'smtp' is not a port (service names are not looked up; smtp is 25)"],
        ),
        (
            "mask without value",
            "mark /0xff accept",
            &[
                "t.rules:1:6: mask without value in '/0xff' (write VALUE/MASK, e.g. mark 0x1 or \
               mark 0x100/0xff00)",
            ],
        ),
        (
            "value outside mask",
            "mark 0x3/0x1 accept",
            &[
                "t.rules:1:6: value 0x3 has bits outside mask 0x1: the rule could never match (did \
               you mean 0x1/0x1?)",
            ],
        ),
        (
            "slash without mask",
            "dport 25 set-mark 0x1/",
            &[
                "t.rules:1:19: '/' without a mask in '0x1/' (write VALUE/MASK, e.g. set-mark 0x1 \
               or set-mark 0x100/0xff00)",
            ],
        ),
        (
            "bad number",
            "dport 25 set-mark 0xzz",
            &[
                "t.rules:1:19: '0xzz' is not a 32-bit number (write it in decimal, or in hex like \
               0xff00)",
            ],
        ),
        (
            "unknown set",
            "dns-name @gardn accept\nset garden names { a.example }",
            &["t.rules:1:10: unknown set '@gardn' (did you mean '@garden'?)"],
        ),
        (
            "unknown set, nothing close",
            "src @clients accept",
            &["t.rules:1:5: unknown set '@clients' (define it with: set clients addrs { ... })"],
        ),
        (
            "set of the wrong kind",
            "src @garden accept\nset garden names { a.example }",
            &[
                "t.rules:1:5: set '@garden' holds names, but 'src' needs addresses (the set is \
               defined on line 2)",
            ],
        ),
        (
            "set defined twice",
            "set g names { a.example }\n\nset g names { b.example }",
            &["t.rules:3:5: set 'g' is defined twice (it was first defined on line 1)"],
        ),
        (
            "missing action",
            "dport 25",
            &[
                "t.rules:1:9: missing action (end the rule with accept, drop, repeat or set-mark \
               VALUE[/MASK])",
            ],
        ),
        (
            "mark where set-mark was meant",
            "dport 25 mark 1",
            &[
                "t.rules:1:16: missing action ('mark' matches the packet's mark; to set it, write \
               'set-mark VALUE[/MASK]')",
            ],
        ),
        (
            "only a flag",
            "dport 53 nopair",
            &[
                "t.rules:1:16: missing action (end the rule with accept, drop, repeat or set-mark \
               VALUE[/MASK])",
            ],
        ),
        (
            "unknown interface",
            "iif lan0, eth9 accept",
            &[
                "t.rules:1:11: unknown interface 'eth9' (the interface must exist when the rules \
               load; they are read again on reload)",
            ],
        ),
        (
            "two verdicts",
            "dport 25 accept drop",
            &[
                "t.rules:1:17: 'drop' after 'accept': a rule has one verdict (keep one of accept, \
               drop and repeat)",
            ],
        ),
        (
            "set-mark with drop",
            "dport 25 set-mark 1 drop",
            &[
                "t.rules:1:10: 'set-mark' with 'drop': a dropped packet keeps no mark (use 'accept' \
               or 'repeat' with set-mark, or remove set-mark)",
            ],
        ),
        (
            "pairing flag with drop",
            "dport 25 drop nopair",
            &[
                "t.rules:1:15: 'nopair' with 'drop': dropped packets are never paired (remove \
               'nopair')",
            ],
        ),
        (
            "matcher after the action",
            "dport 25 accept sport 26",
            &["t.rules:1:17: matcher 'sport' after the action (put matchers before the action)"],
        ),
        (
            "unknown hook",
            "hook prerouteing accept",
            &["t.rules:1:6: unknown hook 'prerouteing' (did you mean 'prerouting'?)"],
        ),
        (
            "unknown direction",
            "dir sideways accept",
            &["t.rules:1:5: unknown direction 'sideways' (one of in, out, forward)"],
        ),
        (
            "unknown protocol",
            "proto tpc accept",
            &["t.rules:1:7: unknown protocol 'tpc' (did you mean 'tcp'?)"],
        ),
        (
            "unknown DNS kind",
            "dns queyr accept",
            &["t.rules:1:5: unknown DNS message kind 'queyr' (did you mean 'query'?)"],
        ),
        (
            "unknown record type",
            "dns-type AAA accept",
            &["t.rules:1:10: unknown DNS record type 'AAA' (did you mean 'AAAA'?)"],
        ),
        (
            "empty label",
            "dns-name a..example accept",
            &["t.rules:1:10: empty label in 'a..example' (two dots in a row, or a leading dot)"],
        ),
        (
            "wildcard inside a name",
            "dns-name foo.*.example accept",
            &[
                "t.rules:1:10: '*' in 'foo.*.example' is only allowed as the whole first label \
               (write *.example to match every name below example)",
            ],
        ),
        (
            "bare wildcard",
            "dns-name * accept",
            &[
                "t.rules:1:10: '*' alone is not a name pattern (to match any question, write 'dns \
               query' or 'dns any')",
            ],
        ),
        (
            "bad character in a name",
            "dns-name ex%ample accept",
            &[
                "t.rules:1:10: '%' is not allowed in DNS name 'ex%ample' (names hold letters, \
               digits, '-' and '_')",
            ],
        ),
        (
            "field without value",
            "dport accept",
            &["t.rules:1:6: 'dport' needs a value (e.g. 'dport 80, 443')"],
        ),
        (
            "dangling comma",
            "dport 80, accept",
            &["t.rules:1:9: expected a value after ','"],
        ),
        (
            "old-style negation",
            "dport ! 53 accept",
            &["t.rules:1:7: '!' goes before the field, not its value (write '! dport ...')"],
        ),
        (
            "negated action",
            "! accept",
            &[
                "t.rules:1:1: 'accept' cannot be negated (negate a matcher instead, as in '! dport \
               53')",
            ],
        ),
        (
            "misspelt action",
            "dport 25 acept",
            &["t.rules:1:10: unknown action 'acept' (did you mean 'accept'?)"],
        ),
        (
            "rule after default",
            "default drop\ndport 25 accept",
            &[
                "t.rules:2:1: rule after 'default' ('default' on line 1 applies when no rule \
               matches; move it to the end of the file)",
            ],
        ),
        (
            "default twice",
            "default accept\ndefault drop",
            &["t.rules:2:1: 'default' is given twice (the first is on line 1)"],
        ),
        (
            "default with a matcher",
            "default dport 53 accept",
            &[
                "t.rules:1:9: 'default' takes no matcher, found 'dport' (it applies when no rule \
               matches; write matchers in a rule above it)",
            ],
        ),
        (
            "default without action",
            "default",
            &["t.rules:1:8: 'default' needs an action (e.g. 'default accept' or 'default drop')"],
        ),
        (
            "set not closed",
            "set garden names {\n a.example\n",
            &["t.rules:1:18: set 'garden' is not closed (add '}' after its last item)"],
        ),
        (
            "set without braces",
            "set garden names a.example",
            &[
                "t.rules:1:18: expected '{' after 'set garden', found 'a.example' (items go between \
               braces: set garden names { ITEM, ITEM ... })",
            ],
        ),
        (
            "unknown set kind",
            "set garden nams { a.example }",
            &["t.rules:1:12: unknown set kind 'nams' (did you mean 'names'?)"],
        ),
        (
            "set name with @",
            "set @garden names { a.example }",
            &[
                "t.rules:1:5: set name '@garden' starts with '@' (write 'set garden ...'; '@garden' \
               is how a rule refers to it)",
            ],
        ),
        (
            "set in a set",
            "set garden names { @other }",
            &[
                "t.rules:1:20: set 'garden' refers to another set ('@other') (sets cannot contain \
               sets; list the items)",
            ],
        ),
        (
            "bad item in a set",
            "set clients addrs {\n  198.18.0.1\n  198.18.0.999\n}",
            &[
                "t.rules:3:3: '198.18.0.999' is not an IPv4 or IPv6 address (write an IPv4 or IPv6 \
               address, or a CIDR like 198.18.0.0/15 or 2001:db8::/32)",
            ],
        ),
        (
            "text after a set",
            "set garden names { a.example } accept",
            &[
                "t.rules:1:32: unexpected 'accept' after the set's '}' (start the next rule on a new \
               line)",
            ],
        ),
        (
            "ports with a protocol without ports",
            "proto icmp dport 53 accept",
            &[
                "t.rules:1:12: 'dport' with a protocol that has no ports (ports exist only for tcp \
               and udp; this rule can never match)",
            ],
        ),
        (
            "set for a field that takes none",
            "hook @x accept",
            &[
                "t.rules:1:6: 'hook' does not take a set (only dns-name, src, dst, sport and dport \
               take sets)",
            ],
        ),
        (
            "braces after a field",
            "dport { 80 443 } accept",
            &[
                "t.rules:1:7: braces after 'dport' (in a rule, separate values with commas, as in \
               'dport 80, 443'; braces hold the items of a set)",
            ],
        ),
        (
            "brace elsewhere in a rule",
            "dport 80 { accept",
            &[
                "t.rules:1:10: unexpected '{' (braces hold the items of a set: set NAME names { ... \
               }; in a rule, separate values with commas)",
            ],
        ),
        (
            "set-mark without value",
            "dport 25 set-mark",
            &[
                "t.rules:1:18: 'set-mark' needs a value (e.g. set-mark 0x1 or set-mark \
               0x100/0xff00)",
            ],
        ),
        (
            "set-mark twice",
            "dport 25 set-mark 1 set-mark 2",
            &[
                "t.rules:1:21: 'set-mark' is given twice (a rule sets one mark; combine the bits \
               into one VALUE/MASK)",
            ],
        ),
        (
            "pair and nopair",
            "dport 25 pair nopair accept",
            &["t.rules:1:15: 'nopair' after 'pair' (keep one of pair and nopair)"],
        ),
        (
            "flow rule without names",
            "flow src 198.18.1.0/24 set-mark 0x20",
            &[
                "t.rules:1:24: flow rule without 'names' (say whose addresses it learns before \
               set-mark, e.g. 'names *.video.example')",
            ],
        ),
        (
            "flow rule without set-mark",
            "flow src 198.18.1.0/24 names a.example",
            &[
                "t.rules:1:39: flow rule without 'set-mark' (end it with the mark for the flows, \
               e.g. 'set-mark 0x20/0xff')",
            ],
        ),
        (
            "flow rule with 'mark' where 'set-mark' was meant",
            "flow names a.example mark 0x20",
            &[
                "t.rules:1:31: flow rule without 'set-mark' ('mark' matches the client's mark; to \
               mark the flows, write 'set-mark VALUE[/MASK]')",
            ],
        ),
        (
            "bare flow",
            "flow",
            &[
                "t.rules:1:5: flow rule without 'names' and 'set-mark' (write: flow [src CIDR, \
               ...] [mark VALUE[/MASK]] names NAME, ... set-mark VALUE[/MASK] [per-mark])",
            ],
        ),
        (
            "drop in a flow rule",
            "flow names a.example set-mark 1 drop",
            &[
                "t.rules:1:33: 'drop' in a flow rule (a flow rule only marks flows, with \
               set-mark; to accept, drop or repeat packets, write a packet rule: a line without \
               'flow')",
            ],
        ),
        (
            "accept, repeat and pair in a flow rule",
            "flow names a.example accept set-mark 1 REPEAT nopair",
            &[
                "t.rules:1:22: 'accept' in a flow rule (a flow rule only marks flows, with \
               set-mark; to accept, drop or repeat packets, write a packet rule: a line without \
               'flow')",
                "t.rules:1:40: 'repeat' in a flow rule (a flow rule only marks flows, with \
               set-mark; to accept, drop or repeat packets, write a packet rule: a line without \
               'flow')",
                "t.rules:1:47: 'nopair' in a flow rule (DNS pairing is chosen by packet rules; a \
               flow rule only marks flows, with set-mark)",
            ],
        ),
        (
            "misspelt names",
            "flow nmaes a.example set-mark 1",
            &["t.rules:1:6: unknown field 'nmaes' in a flow rule (did you mean 'names'?)"],
        ),
        (
            "misspelt set-mark",
            "flow names a.example setmark 1",
            &["t.rules:1:22: unknown action 'setmark' in a flow rule (did you mean 'set-mark'?)"],
        ),
        (
            "misspelt per-mark",
            "flow names a.example set-mark 1 per_mark",
            &["t.rules:1:33: unknown action 'per_mark' in a flow rule (did you mean 'per-mark'?)"],
        ),
        (
            "iptables source in a flow rule",
            "flow -s 198.18.1.0/24 names a.example set-mark 1",
            &["t.rules:1:6: unknown field '-s' in a flow rule (did you mean 'src'?)"],
        ),
        (
            "unknown word in a flow rule, nothing close",
            "flow client 198.18.1.0/24 names a.example set-mark 1",
            &[
                "t.rules:1:6: unknown field 'client' in a flow rule (a flow rule reads: flow [src \
               CIDR, ...] [mark VALUE[/MASK]] names NAME, ... set-mark VALUE[/MASK] [per-mark])",
            ],
        ),
        (
            "names without commas in a flow rule",
            "flow names a.example b.example set-mark 1",
            &[
                "t.rules:1:22: unknown field 'b.example' in a flow rule (to give a field several \
               values, separate them with commas, as in 'names a.example, b.example')",
            ],
        ),
        (
            "dns-name in a flow rule",
            "flow dns-name *.video.example set-mark 1",
            &["t.rules:1:6: 'dns-name' cannot be used in a flow rule (did you mean 'names'?)"],
        ),
        (
            "dst in a flow rule",
            "flow dst 198.18.7.0/24 names a.example set-mark 1",
            &[
                "t.rules:1:6: 'dst' cannot be used in a flow rule (a flow rule's destinations are \
               the addresses its names resolve to)",
            ],
        ),
        (
            "dport in a flow rule",
            "flow names a.example dport 443 set-mark 1",
            &[
                "t.rules:1:22: 'dport' cannot be used in a flow rule (a flow rule matches clients \
               with src and mark, and marks every new flow of theirs to an address its names \
               resolved to)",
            ],
        ),
        (
            "negated names",
            "flow ! names a.example set-mark 1",
            &[
                "t.rules:1:6: 'names' cannot be negated (a flow rule learns the names it lists; to \
               leave some out, give them an earlier flow rule of their own)",
            ],
        ),
        (
            "negated set-mark in a flow rule",
            "flow names a.example not set-mark 1",
            &[
                "t.rules:1:22: 'set-mark' cannot be negated (negate a matcher instead, as in '! src \
               198.18.1.0/24')",
            ],
        ),
        (
            "names twice",
            "flow names a.example names b.example set-mark 1",
            &[
                "t.rules:1:22: 'names' is given twice (list all names after the first 'names', at \
               column 6, separated by commas)",
            ],
        ),
        (
            "per-mark twice",
            "flow names a.example set-mark 1 per-mark per-mark",
            &["t.rules:1:42: 'per-mark' is given twice (remove one)"],
        ),
        (
            "set-mark twice in a flow rule",
            "flow names a.example set-mark 1 set-mark 2",
            &[
                "t.rules:1:33: 'set-mark' is given twice (a rule sets one mark; combine the bits \
               into one VALUE/MASK)",
            ],
        ),
        (
            "client matcher after set-mark",
            "flow names a.example set-mark 1 src 198.18.0.0/24",
            &["t.rules:1:33: matcher 'src' after the action (put matchers before the action)"],
        ),
        (
            "src without a value before names",
            "flow src names a.example set-mark 1",
            &["t.rules:1:9: 'src' needs a value (e.g. 'src 198.18.0.0/15')"],
        ),
        (
            "set-mark without a value before per-mark",
            "flow names a.example set-mark per-mark",
            &[
                "t.rules:1:30: 'set-mark' needs a value (e.g. set-mark 0x1 or set-mark \
               0x100/0xff00)",
            ],
        ),
        (
            "flow set-mark value outside its mask",
            "flow names a.example set-mark 0x3/0x1",
            &[
                "t.rules:1:31: value 0x3 has bits outside mask 0x1: those bits would not be set \
               (did you mean 0x1/0x1?)",
            ],
        ),
        (
            "bad name in a flow rule",
            "flow names a..example set-mark 1",
            &["t.rules:1:12: empty label in 'a..example' (two dots in a row, or a leading dot)"],
        ),
        (
            "set of addresses for names",
            "set lan addrs { 198.18.0.0/24 }\nflow names @lan set-mark 1",
            &[
                "t.rules:2:12: set '@lan' holds addresses, but 'names' needs names (the set is \
               defined on line 1)",
            ],
        ),
        (
            "unknown set in a flow rule",
            "flow names @vidoes set-mark 1\nset videos names { a.example }",
            &["t.rules:1:12: unknown set '@vidoes' (did you mean '@videos'?)"],
        ),
        (
            "set for mark in a flow rule",
            "flow mark @m names a.example set-mark 1",
            &[
                "t.rules:1:11: 'mark' does not take a set (in a flow rule, only src and names take \
               sets)",
            ],
        ),
        (
            "flow rule after default",
            "default accept\nflow names a.example set-mark 1",
            &[
                "t.rules:2:1: flow rule after 'default' ('default' on line 1 ends the rules; move it \
               to the end of the file)",
            ],
        ),
        (
            "names in a packet rule",
            "src 198.18.1.0/24 names a.example set-mark 1",
            &[
                "t.rules:1:19: unknown field 'names' ('names' belongs in a flow rule: start the \
               line with 'flow', as in 'flow names *.video.example set-mark 0x20/0xff')",
            ],
        ),
        (
            "flow not first on the line",
            "src 198.18.1.0/24 flow names a.example set-mark 1",
            &[
                "t.rules:1:19: unknown field 'flow' ('flow' starts a flow rule: put it first on \
               the line)",
            ],
        ),
    ];

    #[test]
    fn each_error_names_its_place_and_hint() {
        for (what, text, expected) in BAD {
            let expected: Vec<String> = expected
                .iter()
                .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect();
            assert_eq!(errors(text), expected, "case: {what}");
        }
    }

    #[test]
    fn every_error_in_a_file_is_reported_at_once_in_order() {
        let text = "\
set garden names {
    portal.example
    bad..example
}
set garden names { other.example }
dport 25 accept
prot udp dropp
src 198.18.0.1/40 accept
dns-name @nope accept
iif eth9 oif wan0 set-mark 0x3/0x1
default accept
";
        let e = errors(text);
        let places: Vec<&str> = e
            .iter()
            .map(|d| d.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(
            places,
            vec![
                "t.rules:3:5:",
                "t.rules:5:5:",
                "t.rules:7:1:",
                "t.rules:7:10:",
                "t.rules:8:5:",
                "t.rules:9:10:",
                "t.rules:10:5:",
                "t.rules:10:28:",
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn mark_hint_only_replaces_the_missing_action_hint() {
        assert_eq!(
            errors("mark 1 set-mark 0xzz"),
            vec![
                "t.rules:1:17: '0xzz' is not a 32-bit number (write it in decimal, or in hex \
                  like 0xff00)"
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ]
        );
    }

    #[test]
    fn set_brace_may_open_on_the_next_line() {
        let p = ok("set garden names\n{\n  a.example\n}\ndns-name @garden accept\n");
        assert_eq!(p.sets.len(), 1);
        assert_eq!(p.rules.len(), 1);
    }

    #[test]
    fn set_without_kind_still_reads_its_body() {
        assert_eq!(
            errors("set garden {\n  a.example\n  b.example\n}\ndns-name @garden accept\n"),
            vec![
                "t.rules:1:11: set 'garden' needs a kind (write: set garden names|addrs|ports \
                  { ... })"
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ]
        );
    }

    #[test]
    fn unclosed_set_recovers_at_the_next_set() {
        let e = errors("set garden names {\n a.example\nset x ports { 1 }\ndport @x accept\n");
        assert_eq!(
            e,
            vec!["t.rules:1:18: set 'garden' is not closed (add '}' after its last item)"]
        );
    }

    #[test]
    fn broken_set_is_not_also_reported_at_its_uses() {
        let e = errors("set g names { a..example }\ndns-name @g accept\n");
        assert_eq!(e.len(), 1, "{e:#?}");
    }

    #[test]
    fn keywords_are_case_insensitive_set_names_are_not() {
        let p = ok("HOOK Input PROTO UDP DPORT 53 ACCEPT\nDEFAULT DROP");
        assert_eq!(p.rules.len(), 1);
        assert_eq!(p.default.verdict, Verdict::Drop);
        let e = errors("set Garden names { a.example }\ndns-name @garden accept");
        assert_eq!(
            e,
            vec!["t.rules:2:10: unknown set '@garden' (did you mean '@Garden'?)"]
        );
    }

    #[test]
    fn columns_count_characters_and_tabs_as_one() {
        let e = errors("\tdns-name \u{e9}t\u{e9}.example accept # caf\u{e9}\n");
        assert_eq!(
            e,
            vec![
                "t.rules:1:11: '\u{e9}' is not allowed in DNS name '\u{e9}t\u{e9}.example' \
                  (write internationalised names in their xn-- form)"
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ]
        );
    }

    #[test]
    fn long_names_are_rejected() {
        let label = "a".repeat(64);
        let e = errors(&format!("dns-name {label}.example accept"));
        assert!(e[0].contains("longer than 63 bytes"), "{e:?}");
        let long = vec!["abcdefghij"; 24].join(".");
        let e = errors(&format!("dns-name {long}.example accept"));
        assert!(e[0].contains("longer than 255 bytes"), "{e:?}");
    }

    #[test]
    fn did_you_mean_needs_a_close_match() {
        assert_eq!(did_you_mean("prot", &["proto", "dport"]), Some("proto"));
        assert_eq!(did_you_mean("dprot", &["proto", "dport"]), Some("dport"));
        assert_eq!(did_you_mean("xyz", &["proto", "dport"]), None);
        assert_eq!(did_you_mean("a", &["ab"]), None);
    }

    #[test]
    fn every_error_in_a_flow_file_is_reported_at_once_in_order() {
        let text = "\
set vids names { *.video.example, bad..example }
flow src 198.18.1.0/24 names @vids set-mark 0x20/0xff
flow names a.example
dport 443 accept
flow src 198.18.1.300 nmaes b.example set-mark 1 drop
flow names c.example set-mark 1
";
        let e = errors(text);
        let places: Vec<&str> = e
            .iter()
            .map(|d| d.split(' ').next().unwrap_or_default())
            .collect();
        assert_eq!(
            places,
            vec![
                "t.rules:1:35:",
                "t.rules:3:21:",
                "t.rules:5:10:",
                "t.rules:5:23:",
                "t.rules:5:50:",
            ],
            "{e:#?}"
        );
    }

    #[test]
    fn garbage_never_panics() {
        // A crude fuzz: every prefix of a rich file, and a few odd byte soups.
        let text = "set g names { a.example, *.b.example }\n! dport 1-2,3 src ::1/128 \
                    dns-name @g mark 0x1/0x1 set-mark 2/3 repeat nopair # c\n\
                    flow ! src 198.18.0.0/24 mark 1/1 names @g, x.example set-mark 1/1 per-mark\n\
                    default drop\n";
        for end in (0..=text.len()).filter(|i| text.is_char_boundary(*i)) {
            let _ = parse(&text[..end], "t", &ifaces);
        }
        for soup in [
            "{{{",
            "}}}",
            "!!!",
            ",,,",
            "set",
            "set {",
            "@",
            "! ! !",
            "-",
            "/",
            "*.*",
            "flow",
            "flow !",
            "flow names",
            "flow names ,",
            "flow set-mark",
            "flow { names }",
            "flow per-mark names",
            "flow not not",
            "flow names @",
        ] {
            let _ = parse(soup, "t", &ifaces);
        }
    }
}
