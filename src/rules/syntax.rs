//! Tokens -> statements: the machine that reads `set`, `default`, packet rules and flow rules.
//!
//! This module owns the grammar of `docs/rules.md`, line by line: which word may follow which,
//! what a misplaced or missing word is reported as, and where. It reads each value through
//! `values.rs`, reports every mistake with its line, column and, where one helps, a hint (the
//! guesses are `hints.rs`'s), and recovers at the next word that can start something, so a user
//! fixes a file in one pass. Its output is [`Statements`]: sets with their items, and the rules
//! that had no errors, with set references still unexpanded (that is `resolve.rs`).
//!
//! It never opens files, never looks at a packet, and never panics whatever the input.

use std::collections::HashMap;

use super::Diagnostic;
use super::defs::{Action, AddrRange, Cond, IfaceUse, NamePattern, PortRange, SetKind, Test};
use super::hints::{self, FLOW_USAGE};
use super::keywords::{
    ACTIONS, ActWord, DIRS, DNS_KINDS, FIELDS, FLOW_WORDS, Field, HOOKS, Keyword, flow_only,
    keyword,
};
use super::lex::{Tok, Token, line_end};
use super::values::{
    VErr, lookup, parse_addr, parse_iface, parse_mac, parse_mark, parse_name, parse_port_range,
    parse_proto, parse_qtype, valid_set_name,
};
use crate::types::Verdict;

/// A set's values, typed by its kind.
#[derive(Debug, Clone)]
pub(super) enum SetValues {
    Names(Vec<NamePattern>),
    Addrs(Vec<AddrRange>),
    Ports(Vec<PortRange>),
    Macs(Vec<u64>),
}

impl SetValues {
    fn new(kind: SetKind) -> SetValues {
        match kind {
            SetKind::Names => SetValues::Names(Vec::new()),
            SetKind::Addrs => SetValues::Addrs(Vec::new()),
            SetKind::Ports => SetValues::Ports(Vec::new()),
            SetKind::Macs => SetValues::Macs(Vec::new()),
        }
    }

    pub(super) fn kind(&self) -> SetKind {
        match self {
            SetValues::Names(_) => SetKind::Names,
            SetValues::Addrs(_) => SetKind::Addrs,
            SetValues::Ports(_) => SetKind::Ports,
            SetValues::Macs(_) => SetKind::Macs,
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            SetValues::Names(v) => v.len(),
            SetValues::Addrs(v) => v.len(),
            SetValues::Ports(v) => v.len(),
            SetValues::Macs(v) => v.len(),
        }
    }

    fn push(&mut self, item: &str) -> Result<(), VErr> {
        match self {
            SetValues::Names(v) => v.push(parse_name(item)?),
            SetValues::Addrs(v) => v.push(parse_addr(item)?),
            SetValues::Ports(v) => v.push(parse_port_range(item)?),
            SetValues::Macs(v) => v.push(parse_mac(item)?),
        }
        Ok(())
    }
}

/// A `set` statement.
#[derive(Debug)]
pub(super) struct SetDef {
    /// `None` when the definition had errors (already reported).
    pub(super) values: Option<SetValues>,
    pub(super) line: usize,
}

/// `@NAME` in a matcher, where it was written.
#[derive(Debug)]
pub(super) struct SetRef {
    pub(super) name: String,
    pub(super) line: usize,
    pub(super) col: usize,
}

/// A matcher as written: its values so far (set references not yet expanded) and its place.
#[derive(Debug)]
pub(super) struct RawCond {
    pub(super) cond: Cond,
    pub(super) field: Field,
    pub(super) line: usize,
    pub(super) col: usize,
    pub(super) refs: Vec<SetRef>,
}

/// A packet rule without errors of its own.
#[derive(Debug)]
pub(super) struct RawRule {
    pub(super) line: usize,
    pub(super) conds: Vec<RawCond>,
    pub(super) action: Action,
}

/// A flow rule without errors of its own.
#[derive(Debug)]
pub(super) struct RawFlow {
    pub(super) line: usize,
    /// `src`, `mark` and (once) `names`.
    pub(super) conds: Vec<RawCond>,
    pub(super) set_mark: (u32, u32),
    pub(super) per_mark: bool,
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

/// A flow rule being read: its matchers and action words, and where its own words were.
#[derive(Debug, Default)]
struct FlowParts<'t> {
    rule: RuleParts,
    names: Option<&'t Token>,
    /// A misspelt `names` was reported; "without names" would only repeat it.
    names_misspelt: bool,
    per_mark: Option<&'t Token>,
    set_mark_at: Option<&'t Token>,
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

/// Every statement of a file that had no errors of its own, in file order, for `resolve.rs`.
#[derive(Debug, Default)]
pub(super) struct Statements {
    /// Every set defined, by name; a broken one without values.
    pub(super) sets: HashMap<String, SetDef>,
    /// The names of the sets defined without errors, in file order.
    pub(super) set_order: Vec<String>,
    pub(super) rules: Vec<RawRule>,
    pub(super) flows: Vec<RawFlow>,
    /// The `default` line's number and action, once seen.
    pub(super) default: Option<(usize, Action)>,
    /// Every interface named in a rule, where.
    pub(super) ifaces: Vec<IfaceUse>,
}

/// Read the statements of a file. Every problem found is in the diagnostics, in the order found.
pub(super) fn read(toks: &[Token], source: &str) -> (Statements, Vec<Diagnostic>) {
    let mut st = State {
        source,
        diags: Vec::new(),
        out: Statements::default(),
    };
    st.parse_all(toks);
    (st.out, st.diags)
}

/// The statement machine: what it has read so far, and every problem found.
struct State<'a> {
    source: &'a str,
    diags: Vec<Diagnostic>,
    out: Statements,
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
        let skip_line = |i: usize| line_end(toks, i) + 1;
        let Some(set_tok) = toks.get(start) else {
            return toks.len();
        };
        let Some((name, name_tok, name_ok)) = self.set_name(set_tok, toks.get(start + 1)) else {
            return skip_line(start + 1);
        };
        let mut i = start + 2;
        let (kind, kind_ok) = match toks.get(i) {
            Some(
                t @ Token {
                    tok: Tok::Word(w), ..
                },
            ) => {
                i += 1;
                (self.set_kind(t, w), true)
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
                (None, false)
            }
        };
        let (open, i) = match self.set_open(toks, i, &name, kind) {
            Ok(found) => found,
            Err(next) => return next,
        };
        let (values, body_ok, next) = self.set_body(toks, i, &name, &open, kind);
        let values = values.filter(|_| name_ok && kind_ok && body_ok);
        self.define_set(name, &name_tok, set_tok.line, values);
        next
    }

    /// The name after `set` (`next`): the name without any `@`, its token, and whether it is a
    /// valid name (errors reported). `None` (reported) when there is no name at all.
    fn set_name(&mut self, set_tok: &Token, next: Option<&Token>) -> Option<(String, Token, bool)> {
        let Some(
            t @ Token {
                tok: Tok::Word(w), ..
            },
        ) = next
        else {
            self.error_at(
                set_tok,
                "'set' needs a name and a kind".to_string(),
                Some("write: set NAME names|addrs|ports { ITEM, ITEM ... }".to_string()),
            );
            return None;
        };
        let bare = w.strip_prefix('@').unwrap_or(w);
        let problem = if w.starts_with('@') {
            Some((
                format!("set name '{w}' starts with '@'"),
                format!("write 'set {bare} ...'; '@{bare}' is how a rule refers to it"),
            ))
        } else if !valid_set_name(bare) {
            Some((
                format!("'{w}' is not a valid set name"),
                "set names hold letters, digits, '-' and '_'".to_string(),
            ))
        } else if keyword(bare).is_some() {
            Some((
                format!("'{w}' is a keyword and cannot name a set"),
                "choose another name".to_string(),
            ))
        } else {
            None
        };
        let ok = problem.is_none();
        if let Some((message, hint)) = problem {
            self.error_at(t, message, Some(hint));
        }
        Some((bare.to_string(), t.clone(), ok))
    }

    /// The kind word `w` of a set; `None` (reported) when it is not one.
    fn set_kind(&mut self, t: &Token, w: &str) -> Option<SetKind> {
        let kinds = [
            ("names", SetKind::Names),
            ("addrs", SetKind::Addrs),
            ("ports", SetKind::Ports),
            ("macs", SetKind::Macs),
        ];
        match lookup(w, &kinds, "set kind") {
            Ok(k) => Some(k),
            Err((m, h)) => {
                self.error_at(t, m, h);
                None
            }
        }
    }

    /// The set's opening brace, at `toks[i]` or alone on a following line: the brace and the
    /// index after it, or (reported) the index to go on from.
    fn set_open(
        &mut self,
        toks: &[Token],
        mut i: usize,
        name: &str,
        kind: Option<SetKind>,
    ) -> Result<(Token, usize), usize> {
        let next_token = toks
            .iter()
            .skip(i)
            .position(|t| t.tok != Tok::Newline)
            .map(|p| p + i);
        if let Some(j) = next_token.filter(|j| toks.get(*j).is_some_and(|t| t.tok == Tok::Open)) {
            i = j;
        }
        match toks.get(i) {
            Some(t) if t.tok == Tok::Open => Ok((t.clone(), i + 1)),
            Some(t) => {
                self.error_at(
                    t,
                    format!("expected '{{' after 'set {name}', found {}", t.describe()),
                    Some(format!(
                        "items go between braces: set {name} {} {{ ITEM, ITEM ... }}",
                        kind.map_or("names", SetKind::keyword)
                    )),
                );
                Err(line_end(toks, i) + 1)
            }
            None => Err(i),
        }
    }

    /// A set's items from `toks[i]` to its `}`: the values (`None` without a kind), whether every
    /// item was good (errors reported), and the index to go on from. An unclosed set ends at the
    /// end of the text or before a line that starts with `set` or `default`.
    fn set_body(
        &mut self,
        toks: &[Token],
        mut i: usize,
        name: &str,
        open: &Token,
        kind: Option<SetKind>,
    ) -> (Option<SetValues>, bool, usize) {
        let mut values = kind.map(SetValues::new);
        let mut ok = true;
        let mut line_start = false;
        let not_closed = |st: &mut Self| {
            st.error_at(
                open,
                format!("set '{name}' is not closed"),
                Some("add '}' after its last item".to_string()),
            );
        };
        loop {
            let Some(t) = toks.get(i) else {
                not_closed(self);
                return (values, false, i);
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
                        i = line_end(toks, i) + 1;
                    }
                    return (values, ok, i);
                }
                Tok::Word(w)
                    if line_start
                        && (w.eq_ignore_ascii_case("set") || w.eq_ignore_ascii_case("default")) =>
                {
                    not_closed(self);
                    return (values, false, i);
                }
                _ => ok &= self.set_item(t, name, values.as_mut()),
            }
            line_start = false;
            i += 1;
        }
    }

    /// One token inside a set's braces (not a line end, comma or `}`): an item added to
    /// `values`, or a problem reported (then false).
    fn set_item(&mut self, t: &Token, name: &str, values: Option<&mut SetValues>) -> bool {
        let (message, hint) = match &t.tok {
            Tok::Open => ("unexpected '{' inside a set".to_string(), None),
            Tok::Bang => (
                "'!' has no meaning inside a set".to_string(),
                Some("negate the matcher in the rule instead: '! dns-name @set'".to_string()),
            ),
            Tok::Word(w) if w.starts_with('@') => (
                format!("set '{name}' refers to another set ('{w}')"),
                Some("sets cannot contain sets; list the items".to_string()),
            ),
            Tok::Word(w) => match values.map(|v| v.push(w)) {
                Some(Err(problem)) => problem,
                Some(Ok(())) | None => return true,
            },
            Tok::Comma | Tok::Close | Tok::Newline => return true,
        };
        self.error_at(t, message, hint);
        false
    }

    /// Remember a set (without values when it is broken, so its uses are not reported again),
    /// unless one of that name was defined before.
    fn define_set(
        &mut self,
        name: String,
        name_tok: &Token,
        line: usize,
        values: Option<SetValues>,
    ) {
        if let Some(first) = self.out.sets.get(&name) {
            let first_line = first.line;
            self.error_at(
                name_tok,
                format!("set '{name}' is defined twice"),
                Some(format!("it was first defined on line {first_line}")),
            );
            return;
        }
        if values.is_some() {
            self.out.set_order.push(name.clone());
        }
        self.out.sets.insert(name, SetDef { values, line });
    }

    // --- rules ----------------------------------------------------------------------------------

    fn parse_default(&mut self, line: &[Token], eol: (usize, usize)) {
        let Some(first) = line.first() else { return };
        if let Some((first_line, _)) = self.out.default {
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
        if self.out.default.is_none() {
            // Even a bad default counts as "seen", so rules below it are reported once.
            self.out.default = Some((first.line, action.unwrap_or(Action::ACCEPT)));
        }
    }

    fn parse_rule(&mut self, line: &[Token], eol: (usize, usize)) {
        let Some(first) = line.first() else { return };
        let before = self.diags.len();
        if let Some((default_line, _)) = self.out.default {
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
            self.out.rules.push(RawRule {
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
        if let Some((default_line, _)) = self.out.default {
            self.error_at(
                first,
                "flow rule after 'default'".to_string(),
                Some(format!(
                    "'default' on line {default_line} ends the rules; move it to the end of the \
                     file"
                )),
            );
        }
        let mut flow = FlowParts::default();
        flow.rule.action.flow = true;
        let mut i = 1;
        while let Some(t) = line.get(i) {
            i += 1;
            i = match &t.tok {
                Tok::Word(w) => self.flow_word(line, i, t, w, &mut flow),
                Tok::Bang => self.flow_negation(line, i, t, &mut flow.rule),
                Tok::Comma | Tok::Open | Tok::Close | Tok::Newline => {
                    self.stray(t);
                    i
                }
            };
        }
        let set_mark = flow.rule.action.set_mark.map(|(m, _, _)| m);
        self.flow_missing(&flow, eol);
        if self.diags.len() == before
            && let Some(set_mark) = set_mark
        {
            self.out.flows.push(RawFlow {
                line: first.line,
                conds: flow.rule.conds,
                set_mark,
                per_mark: flow.per_mark.is_some(),
            });
        }
    }

    /// The word `word` at `line[i-1]` (`t`) in a flow rule. Returns the next index.
    fn flow_word<'t>(
        &mut self,
        line: &'t [Token],
        i: usize,
        t: &'t Token,
        word: &str,
        flow: &mut FlowParts<'t>,
    ) -> usize {
        if word.eq_ignore_ascii_case("names") {
            if let Some(prev) = flow.names {
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
            flow.names.get_or_insert(t);
            return self.field(line, i, t, Field::Names, false, &mut flow.rule);
        }
        if word.eq_ignore_ascii_case("per-mark") {
            if flow.per_mark.is_some() {
                self.error_at(
                    t,
                    "'per-mark' is given twice".to_string(),
                    Some("remove one".to_string()),
                );
            }
            flow.per_mark.get_or_insert(t);
            flow.rule.action.started = true;
            return i;
        }
        match keyword(word) {
            Some(Keyword::Not) => self.flow_negation(line, i, t, &mut flow.rule),
            Some(Keyword::Field(f @ (Field::Src | Field::Mark))) => {
                self.field(line, i, t, f, false, &mut flow.rule)
            }
            Some(Keyword::Field(f)) => {
                self.field_in_flow(t, f);
                flow.names_misspelt |= f == Field::DnsName;
                skip_values(line, i, true)
            }
            Some(Keyword::Act(ActWord::SetMark)) => {
                flow.rule.action.started = true;
                flow.set_mark_at.get_or_insert(t);
                self.set_mark(line, i, t, &mut flow.rule.action)
            }
            Some(Keyword::Act(a)) => {
                self.action_in_flow(t, word, a);
                i
            }
            None => {
                match self.unknown_flow_word(t, word, flow.rule.action.started) {
                    Some("names") => flow.names_misspelt = true,
                    Some("set-mark") => flow.rule.action.broken = true,
                    _ => {}
                }
                skip_values(line, i, true)
            }
        }
    }

    /// A packet-rule field other than `src` and `mark` in a flow rule.
    fn field_in_flow(&mut self, t: &Token, f: Field) {
        let hint = match f {
            Field::DnsName => "did you mean 'names'?",
            Field::Dst => "a flow rule's destinations are the addresses its names resolve to",
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
    }

    /// An action word other than `set-mark` in a flow rule.
    fn action_in_flow(&mut self, t: &Token, word: &str, a: ActWord) {
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

    /// Report a flow rule's missing `names` or `set-mark` (unless a misspelling of either was
    /// reported already); `eol` is where "missing" is reported.
    fn flow_missing(&mut self, flow: &FlowParts<'_>, eol: (usize, usize)) {
        let action = &flow.rule.action;
        let has_set_mark = action.set_mark.is_some() || action.broken;
        if flow.names.is_none() && !flow.names_misspelt {
            if has_set_mark {
                let (line_no, col) = flow.set_mark_at.map_or(eol, |t| (t.line, t.col));
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
            let ends_in_mark = flow
                .rule
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
        let unknown = hints::unknown_flow_word(word, in_action);
        self.error_at(tok, unknown.message, unknown.hint);
        unknown.suggestion
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
        i: usize,
        tok: &Token,
        field: Field,
        negated: bool,
        rule: &mut RuleParts,
    ) -> usize {
        if rule.action.started {
            let hint = if field == Field::Mark && !negated {
                "to set the mark, write 'set-mark VALUE[/MASK]'; to match it, put 'mark' before \
                 the action"
            } else {
                "put matchers before the action"
            };
            self.error_at(
                tok,
                format!("matcher '{}' after the action", field.name()),
                Some(hint.to_string()),
            );
        }
        let flow = rule.action.flow;
        let (vals, next) = match self.field_values(line, i, tok, field, flow) {
            Ok(read) => read,
            Err(next) => return next,
        };
        let mut test = field.empty_test();
        let mut refs = Vec::new();
        let mut ok = true;
        for v in &vals {
            if let Some(set) = v.text.strip_prefix('@') {
                match self.set_ref(v, set, field, flow) {
                    Some(r) => refs.push(r),
                    None => ok = false,
                }
            } else if let Err((m, h)) = self.add_value(&mut test, v.text) {
                self.error(v.line, v.col, m, h);
                ok = false;
            } else if let Test::Iif(l) | Test::Oif(l) = &test
                && let Some(pattern) = l.last()
            {
                self.out.ifaces.push(IfaceUse {
                    pattern: pattern.clone(),
                    line: v.line,
                    col: v.col,
                });
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
        next
    }

    /// The value words of the field `tok` (at `line[i-1]`): `VALUE[, VALUE ...]`, and the index
    /// after them. A stray `!` before the values and nftables' `{ ... }` are reported, their
    /// values kept. `Err` (reported) with the index to go on from when there is no value.
    fn field_values<'t>(
        &mut self,
        line: &'t [Token],
        mut i: usize,
        tok: &Token,
        field: Field,
        flow: bool,
    ) -> Result<(Vec<Val<'t>>, usize), usize> {
        let name = field.name();
        let mut vals: Vec<Val<'t>> = Vec::new();
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
            let Some(v) = value_word(line.get(i), flow) else {
                self.error(
                    tok.line,
                    tok.end_col(),
                    format!("'{name}' needs a value"),
                    Some(format!("e.g. '{}'", field.example())),
                );
                return Err(i);
            };
            vals.push(v);
            i += 1;
        }
        while let Some(comma) = line.get(i).filter(|t| t.tok == Tok::Comma) {
            i += 1;
            let Some(v) = value_word(line.get(i), flow) else {
                self.error_at(comma, "expected a value after ','".to_string(), None);
                break;
            };
            vals.push(v);
            i += 1;
        }
        Ok((vals, i))
    }

    /// `@set` (`v`, `set` without the `@`) as a value of `field`; `None` (reported) when the
    /// field takes no set or the name is missing.
    fn set_ref(&mut self, v: &Val<'_>, set: &str, field: Field, flow: bool) -> Option<SetRef> {
        let (message, hint) = if field.set_kind().is_none() {
            let takers = if flow {
                "in a flow rule, only src and names take sets"
            } else {
                "only dns-name, src, dst, sport, dport and src-mac take sets"
            };
            (format!("'{}' does not take a set", field.name()), takers)
        } else if set.is_empty() {
            (
                "'@' without a set name".to_string(),
                "write '@NAME' for a set defined with 'set NAME ...'",
            )
        } else {
            return Some(SetRef {
                name: set.to_string(),
                line: v.line,
                col: v.col,
            });
        };
        self.error(v.line, v.col, message, Some(hint.to_string()));
        None
    }

    /// Parse `text` as a value of `test`'s field and add it.
    fn add_value(&self, test: &mut Test, text: &str) -> Result<(), VErr> {
        match test {
            Test::Hook(l) => lookup(text, HOOKS, "hook").map(|x| l.push(x)),
            Test::Dir(l) => lookup(text, DIRS, "direction").map(|x| l.push(x)),
            Test::Iif(l) | Test::Oif(l) => parse_iface(text).map(|x| l.push(x)),
            Test::SrcMac(l) => parse_mac(text).map(|x| l.push(x)),
            Test::Src(l) | Test::Dst(l) => parse_addr(text).map(|x| l.push(x)),
            Test::Proto(l) => parse_proto(text).map(|x| l.push(x)),
            Test::Sport(l) | Test::Dport(l) => parse_port_range(text).map(|x| l.push(x)),
            Test::Mark(l) => parse_mark(text, false).map(|x| l.push(x)),
            Test::Dns(l) => lookup(text, DNS_KINDS, "DNS message kind").map(|x| l.push(x)),
            Test::DnsName(l) => parse_name(text).map(|x| l.push(x)),
            Test::DnsType(l) => parse_qtype(text).map(|x| l.push(x)),
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
        let unknown = hints::unknown_word(word, in_action);
        self.error_at(tok, unknown.message, unknown.hint);
        unknown.action
    }
}

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
                if hints::ALIASES
                    .iter()
                    .any(|(a, _)| a.eq_ignore_ascii_case(w))
                    || (w.starts_with('-') && keyword(w.trim_start_matches('-')).is_some())
                    || hints::did_you_mean(w, &keywords).is_some() =>
            {
                break;
            }
            _ => i += 1,
        }
    }
    i
}
