//! Statements -> rules: set references expanded and checked against what their matcher takes.
//!
//! This module owns what a `@set` in the file refers to (a set defined anywhere in the file, of
//! the kind its matcher takes). [`resolve`] turns the [`Statements`] of `syntax.rs` into the
//! checked [`Parsed`] file of `defs.rs`, reporting each set reference that cannot be expanded
//! with its place and a hint. Interface names are not resolved here: they stay names, matched
//! against the link table when packets come (`iface.rs`), so an interface may appear after the
//! rules load. It never reads text or tokens, never opens files, and never panics.

use std::collections::HashMap;

use super::Diagnostic;
use super::defs::{Action, Cond, FlowDef, Parsed, RuleDef, SetKind, SetSummary, Test};
use super::hints::did_you_mean;
use super::keywords::Field;
use super::syntax::{RawCond, RawFlow, RawRule, SetDef, SetRef, SetValues, Statements};

/// The checked file: every rule and flow rule whose set references all resolve, the default and
/// the sets. Problems are added to `diags`.
pub(super) fn resolve(statements: Statements, source: &str, diags: &mut Vec<Diagnostic>) -> Parsed {
    let Statements {
        sets,
        set_order,
        rules,
        flows,
        default,
        ifaces,
    } = statements;
    let mut r = Resolver {
        source,
        sets: &sets,
        diags,
    };
    let rules = r.rules(rules);
    let flows = r.flows(flows);
    let sets = set_order
        .iter()
        .filter_map(|name| sets.get(name)?.values.as_ref())
        .map(|values| SetSummary {
            kind: values.kind(),
            len: values.len(),
        })
        .collect();
    Parsed {
        rules,
        flows,
        default: default.map_or(Action::ACCEPT, |(_, a)| a),
        sets,
        ifaces,
    }
}

/// Expands set references, reporting those that do not resolve.
struct Resolver<'a> {
    source: &'a str,
    sets: &'a HashMap<String, SetDef>,
    diags: &'a mut Vec<Diagnostic>,
}

impl Resolver<'_> {
    /// Expand set references and produce the final rules.
    fn rules(&mut self, raw: Vec<RawRule>) -> Vec<RuleDef> {
        let mut out = Vec::with_capacity(raw.len());
        for rule in raw {
            if let Some(conds) = self.conds(rule.conds) {
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
    fn flows(&mut self, raw: Vec<RawFlow>) -> Vec<FlowDef> {
        let mut out = Vec::with_capacity(raw.len());
        for flow in raw {
            let Some(conds) = self.conds(flow.conds) else {
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
    fn conds(&mut self, raw: Vec<RawCond>) -> Option<Vec<Cond>> {
        let mut ok = true;
        let mut conds = Vec::with_capacity(raw.len());
        for rc in raw {
            let mut cond = rc.cond;
            for r in &rc.refs {
                ok &= self.expand(&mut cond, rc.field, r);
            }
            conds.push(cond);
        }
        ok.then_some(conds)
    }

    /// Add the values of the set `r` names to `cond` (a matcher of `field`); false when it
    /// cannot be (reported, unless the set's own definition was).
    fn expand(&mut self, cond: &mut Cond, field: Field, r: &SetRef) -> bool {
        let Some(def) = self.sets.get(&r.name) else {
            let names: Vec<&str> = self.sets.keys().map(String::as_str).collect();
            let hint = did_you_mean(&r.name, &names)
                .map(|n| format!("did you mean '@{n}'?"))
                .or_else(|| {
                    field.set_kind().map(|k| {
                        format!("define it with: set {} {} {{ ... }}", r.name, k.keyword())
                    })
                });
            self.report(r, format!("unknown set '@{}'", r.name), hint);
            return false;
        };
        let Some(values) = &def.values else {
            // The definition's errors are reported; its uses are not errors too.
            return false;
        };
        match (&mut cond.test, values) {
            (Test::DnsName(l), SetValues::Names(v)) => l.extend(v.iter().cloned()),
            (Test::Src(l) | Test::Dst(l), SetValues::Addrs(v)) => l.extend_from_slice(v),
            (Test::Sport(l) | Test::Dport(l), SetValues::Ports(v)) => l.extend_from_slice(v),
            (Test::SrcMac(l), SetValues::Macs(v)) => l.extend_from_slice(v),
            _ => {
                let want = field.set_kind().map_or("values", SetKind::noun);
                let message = format!(
                    "set '@{}' holds {}, but '{}' needs {want}",
                    r.name,
                    values.kind().noun(),
                    field.name()
                );
                let hint = Some(format!("the set is defined on line {}", def.line));
                self.report(r, message, hint);
                return false;
            }
        }
        true
    }

    fn report(&mut self, r: &SetRef, message: String, hint: Option<String>) {
        self.diags.push(Diagnostic {
            source: self.source.to_string(),
            line: r.line,
            col: r.col,
            message,
            hint,
        });
    }
}
