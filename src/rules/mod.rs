//! The rule language: what to mark, what to drop, and where DNS pairing applies.
//!
//! This module owns the text -> rules step and the per-packet match, and is the only public face
//! of both. The files each do one step:
//!
//! - text -> rules: `lex.rs` (tokens with line:col), `keywords.rs` (what each word means),
//!   `values.rs` (one value word -> a typed value), `syntax.rs` (tokens -> statements, every
//!   error at once with FILE:LINE:COL and a hint), `hints.rs` (did-you-mean tables and messages),
//!   `resolve.rs` (statements -> rules: set references expanded); `defs.rs` holds the checked
//!   types both halves share;
//! - rules -> decisions: `index/` (the name trie, interval tables, key maps and the candidate
//!   index), `iface.rs` (interface names bound to the link table's indexes), `matcher.rs`
//!   (packet rules: first match wins), `flow_match.rs` (flow rules).
//!
//! Interfaces are named, as in iptables (`iif lan0`, `oif ppp+`), and matched by name: a rule set
//! is bound to a link table (index -> name). [`RuleSet::parse`] binds it to the names the caller
//! resolves; [`RuleSet::follow`] keeps it bound to a live table (`crate::links`), so a rule keeps
//! matching when its interface is created again with a new index, and starts matching when it
//! first appears. An interface that does not exist is no error; [`RuleSet::missing_interfaces`]
//! says which the rules name that a table lacks.
//!
//! The syntax is documented in `docs/rules.md`; example files live in `rules/`.
//!
//! Flow rules (`flow ... names ... set-mark ...`) live beside the packet rules but apart from
//! them: [`RuleSet::flow_target`] tells which flow rule, if any, learns a DNS answer's addresses
//! for a client; the learned table itself is `crate::flows`.
//!
//! With no rules file, the rule set is empty: every packet is accepted, DNS pairing applies to
//! all DNS packets, and no static mark is set; that is the zero-configuration dnsmasq
//! `--conntrack` replacement. This module never does I/O on the packet path (only [`load`]
//! reads a file, at load time), never allocates in [`RuleSet::evaluate`] or
//! [`RuleSet::flow_target`] and never panics.

mod defs;
mod flow_match;
mod hash;
mod hints;
mod iface;
mod index;
mod keywords;
mod lex;
mod matcher;
#[cfg(test)]
mod parse_tests;
mod resolve;
mod syntax;
#[cfg(test)]
pub(crate) mod testutil;
mod values;

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use crate::dns::{Dns, Name};
use crate::flows::FlowTarget;
use crate::links::{LinkMap, LinkWatcher, Links};
use crate::packet::Packet;
use crate::types::{Meta, Verdict};

pub(crate) use defs::AddrRange;
pub(crate) use flow_match::SrcRanges;

/// What a rule sees of a packet.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub meta: &'a Meta,
    pub packet: &'a Packet<'a>,
    /// The DNS message, when the packet is to or from a DNS port and could be read.
    pub dns: Option<&'a Dns>,
}

/// The outcome of evaluating the rules for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Mark to set: (value, mask); bits outside the mask keep their value.
    pub set_mark: Option<(u32, u32)>,
    /// Whether DNS pairing applies to this packet.
    pub pairing: bool,
    /// Index of the matching rule, `None` for the default.
    pub rule: Option<usize>,
}

impl Outcome {
    /// What happens with no rules at all: accept, pair DNS, leave the mark.
    pub const DEFAULT: Outcome = Outcome {
        verdict: Verdict::Accept,
        set_mark: None,
        pairing: true,
        rule: None,
    };
}

/// One problem in a rules file: where it is, what is wrong and, when it helps, how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given to [`RuleSet::parse`] or [`load`].
    pub source: String,
    /// 1-based line; 0 when the problem is the file as a whole (it could not be read).
    pub line: usize,
    /// 1-based column, in characters; 0 with line 0.
    pub col: usize,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    /// `rules.conf:12:7: unknown field 'prot' (did you mean 'proto'?)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.source, self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.source, self.line, self.col, self.message
            )?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostic {}

impl Diagnostic {
    /// As a warning: `rules.conf:12:7: warning: no interface 'wg0' here (hint)`.
    pub fn warning(&self) -> String {
        let shown = Diagnostic {
            message: format!("warning: {}", self.message),
            ..self.clone()
        };
        shown.to_string()
    }
}

/// What a set in the file held, for [`RuleSet::summary`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SetCounts {
    sets: usize,
    names: usize,
    addrs: usize,
    ports: usize,
    macs: usize,
}

/// A checked, ready-to-match set of rules.
#[derive(Debug, Clone)]
pub struct RuleSet {
    matcher: matcher::Matcher,
    default: Outcome,
    source: String,
    /// The line of each rule, by rule index.
    lines: Vec<usize>,
    flows: flow_match::Flows,
    /// The line of each flow rule, by flow-rule index.
    flow_lines: Vec<usize>,
    sets: SetCounts,
    /// Every interface the rules name, where.
    iface_uses: Vec<defs::IfaceUse>,
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet::empty()
    }
}

impl RuleSet {
    /// No rules: everything gets [`Outcome::DEFAULT`].
    pub fn empty() -> RuleSet {
        RuleSet {
            matcher: matcher::Matcher::default(),
            default: Outcome::DEFAULT,
            source: String::new(),
            lines: Vec::new(),
            flows: flow_match::Flows::default(),
            flow_lines: Vec::new(),
            sets: SetCounts::default(),
            iface_uses: Vec::new(),
        }
    }

    /// Parse rules from text. `source` is the file name used in messages. On failure, every
    /// problem in the text is returned, in file order.
    ///
    /// Interfaces are names. The rule set starts bound to the interfaces `ifaces` gives an index
    /// for, among the exact names the rules use (a fixed view of a machine: tests, benchmarks,
    /// `nfqmark setup`); a name it does not know is no error, its rules just match nothing.
    /// [`RuleSet::follow`] binds the rules to a live link table instead, [`RuleSet::bind`] to
    /// another fixed one.
    pub fn parse(
        text: &str,
        source: &str,
        ifaces: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<RuleSet, Vec<Diagnostic>> {
        let parsed = parse(text, source)?;
        let mut sets = SetCounts::default();
        for s in &parsed.sets {
            sets.sets += 1;
            match s.kind {
                defs::SetKind::Names => sets.names += s.len,
                defs::SetKind::Addrs => sets.addrs += s.len,
                defs::SetKind::Ports => sets.ports += s.len,
                defs::SetKind::Macs => sets.macs += s.len,
            }
        }
        let default = Outcome {
            verdict: parsed.default.verdict,
            set_mark: parsed.default.set_mark,
            pairing: parsed.default.pairing,
            rule: None,
        };
        let rules = RuleSet {
            matcher: matcher::Matcher::build(&parsed.rules),
            default,
            source: source.to_string(),
            lines: parsed.rules.iter().map(|r| r.line).collect(),
            flows: flow_match::Flows::build(&parsed.flows),
            flow_lines: parsed.flows.iter().map(|f| f.line).collect(),
            sets,
            iface_uses: parsed.ifaces,
        };
        let mut known: Vec<(u32, &str)> = rules
            .iface_uses
            .iter()
            .filter(|u| !u.pattern.prefix)
            .filter_map(|u| ifaces(&u.pattern.name).map(|i| (i, &*u.pattern.name)))
            .collect();
        known.sort_unstable();
        known.dedup();
        rules.matcher.ifaces().bind(known.into_iter());
        Ok(rules)
    }

    /// Bind the rules to a fixed link table: from now on (for every clone of this rule set),
    /// an interface matches by the name `links` gives its index.
    pub fn bind(&self, links: &LinkMap) {
        self.matcher.ifaces().bind(links.iter());
    }

    /// Bind the rules to `links` now and after every change to it, for as long as this rule set
    /// (or a clone) lives: an interface created, renamed, deleted or created again with a new
    /// index is matched by its name as it is then. Does nothing when the rules name no
    /// interface.
    pub fn follow(&self, links: &Links) {
        if !self.names_interfaces() {
            return;
        }
        let watcher: Arc<dyn LinkWatcher> = self.matcher.ifaces().clone();
        links.subscribe(&watcher);
    }

    /// True when a rule names an interface (`iif`, `oif`).
    pub fn names_interfaces(&self) -> bool {
        !self.iface_uses.is_empty()
    }

    /// Every place a rule names an interface that `links` does not have (for a `NAME+`
    /// pattern: no name in `links` starts with it), in file order. `strict` words them as
    /// errors (`--strict-interfaces`); otherwise they are meant as warnings: such a rule loads,
    /// and matches once the interface exists.
    pub fn missing_interfaces(&self, links: &LinkMap, strict: bool) -> Vec<Diagnostic> {
        self.iface_uses
            .iter()
            .filter(|u| {
                !links
                    .iter()
                    .any(|(_, name)| iface::matches(&u.pattern, name))
            })
            .map(|u| {
                let shown = iface::text(&u.pattern);
                let message = match (u.pattern.prefix, strict) {
                    (false, true) => format!("unknown interface '{shown}'"),
                    (true, true) => format!("no interface matches '{shown}'"),
                    (false, false) => format!("no interface '{shown}' on this machine now"),
                    (true, false) => format!("no interface matches '{shown}' on this machine now"),
                };
                let hint = if strict {
                    "--strict-interfaces: every interface a rule names must exist when the rules \
                     load; without it the rule loads and matches once the interface appears"
                } else {
                    "the rule loads and matches once the interface appears, as interfaces \
                     are followed by name as they come and go; --strict-interfaces makes this \
                     an error"
                };
                Diagnostic {
                    source: self.source.clone(),
                    line: u.line,
                    col: u.col,
                    message,
                    hint: Some(hint.to_string()),
                }
            })
            .collect()
    }

    /// The number of packet rules (the default and flow rules not counted).
    pub fn len(&self) -> usize {
        self.matcher.len()
    }

    /// True when there are no packet rules (the default may still say something other than
    /// accept, and there may be flow rules: see [`RuleSet::has_flow_rules`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One line for logs, e.g. `12 rules, 2 flow rules, 2 sets (205 names), default accept`
    /// (flow rules only when there are some).
    pub fn summary(&self) -> String {
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut out = plural(self.len(), "rule", "rules");
        if self.has_flow_rules() {
            out.push_str(", ");
            out.push_str(&plural(self.flow_len(), "flow rule", "flow rules"));
        }
        out.push_str(", ");
        out.push_str(&plural(self.sets.sets, "set", "sets"));
        let held: Vec<String> = [
            (self.sets.names, "name", "names"),
            (self.sets.addrs, "address", "addresses"),
            (self.sets.ports, "port", "ports"),
            (self.sets.macs, "MAC address", "MAC addresses"),
        ]
        .iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, one, many)| plural(*n, one, many))
        .collect();
        if !held.is_empty() {
            out.push_str(&format!(" ({})", held.join(", ")));
        }
        out.push_str(", default ");
        out.push_str(&describe_outcome(&self.default));
        out
    }

    /// `FILE:LINE` of rule `index`, for per-rule counters.
    pub fn describe(&self, index: usize) -> Option<String> {
        self.lines
            .get(index)
            .map(|line| format!("{}:{line}", self.source))
    }

    /// The outcome for a packet no rule can look at (it could not be parsed).
    pub fn default_outcome(&self) -> Outcome {
        self.default
    }

    /// First matching rule wins; the default applies when none matches. Does not allocate.
    pub fn evaluate(&self, ctx: &Ctx<'_>) -> Outcome {
        self.matcher.evaluate(ctx).unwrap_or(self.default)
    }

    /// True when the file has flow rules (the engine then learns from DNS answers).
    pub fn has_flow_rules(&self) -> bool {
        self.flows.len() > 0
    }

    /// The first flow rule (file order) whose `src`/`mark` matchers hold for this client and
    /// whose names match ANY of `names` (lower-case by construction: the question then each CNAME
    /// target). `rule` in the result is a flow-rule index usable with
    /// [`RuleSet::describe_flow`]. Does not allocate.
    pub fn flow_target(
        &self,
        client: IpAddr,
        client_mark: u32,
        names: &[Name],
    ) -> Option<FlowTarget> {
        self.flows.target(client, client_mark, names)
    }

    /// `FILE:LINE` of flow rule `index`.
    pub fn describe_flow(&self, index: usize) -> Option<String> {
        self.flow_lines
            .get(index)
            .map(|line| format!("{}:{line}", self.source))
    }

    /// Number of flow rules.
    pub fn flow_len(&self) -> usize {
        self.flows.len()
    }

    /// What each flow rule marks, in file order (the kernel backend keeps one set per flow
    /// rule and family: `crate::kernel_flows`).
    pub fn flow_targets(&self) -> Vec<FlowTarget> {
        self.flows.targets().collect()
    }

    /// For each flow rule that can match (it names something), in file order, the address
    /// ranges of each of its positive `src` matchers: a client it matches lies in every one, and
    /// any client can match when there are none. `nfqmark setup` turns these into the prefixes
    /// whose new flows it queues (`crate::setup::flow_clients`).
    pub(crate) fn flow_sources(&self) -> &[SrcRanges] {
        self.flows.sources()
    }
}

/// Text -> checked rules: tokens, statements, then references resolved. Every problem in the
/// text is returned, sorted by place.
fn parse(text: &str, source: &str) -> Result<defs::Parsed, Vec<Diagnostic>> {
    let toks = lex::lex(text);
    let (statements, mut diags) = syntax::read(&toks, source);
    let parsed = resolve::resolve(statements, source, &mut diags);
    if !diags.is_empty() {
        diags.sort_by_key(|d| (d.line, d.col));
        return Err(diags);
    }
    Ok(parsed)
}

/// An outcome in rule syntax: `accept`, `drop`, `repeat set-mark 0x1/0xff nopair`.
fn describe_outcome(o: &Outcome) -> String {
    let mut s = match o.verdict {
        Verdict::Accept => "accept",
        Verdict::Drop => "drop",
        Verdict::Repeat => "repeat",
    }
    .to_string();
    if let Some((value, mask)) = o.set_mark {
        if mask == u32::MAX {
            s.push_str(&format!(" set-mark {value:#x}"));
        } else {
            s.push_str(&format!(" set-mark {value:#x}/{mask:#x}"));
        }
    }
    if !o.pairing && o.verdict != Verdict::Drop {
        s.push_str(" nopair");
    }
    s
}

/// Read a rules file and parse it. A file that cannot be read is one [`Diagnostic`] with line 0.
pub fn load(path: &Path, ifaces: &dyn Fn(&str) -> Option<u32>) -> Result<RuleSet, Vec<Diagnostic>> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => RuleSet::parse(&text, &source, ifaces),
        Err(e) => Err(vec![Diagnostic {
            source,
            line: 0,
            col: 0,
            message: format!("cannot read the rules file: {e}"),
            hint: None,
        }]),
    }
}
