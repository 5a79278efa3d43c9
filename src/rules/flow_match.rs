//! Checked flow rules -> which flow rule, if any, learns a DNS answer's addresses for a client.
//!
//! This module owns the flow rules' side of matching: each flow rule compiled into client checks
//! (`src`, `mark`) and filed by its names in a name trie (`index/names.rs`), the first flow rule
//! in file order winning, apart from the packet rules. It also keeps, per flow rule, the `src`
//! ranges it can match, for `nfqmark setup` to turn into prefixes (that math is `setup.rs`'s).
//!
//! A lookup never allocates (names come in lower-case wire form), never panics and never reads a
//! clock. The learned-flow table itself is `crate::flows`.

use std::net::IpAddr;

use super::defs::{AddrRange, FlowDef, Test};
use super::index::{AddrSet, NameIndex};
use crate::dns::Name;
use crate::flows::FlowTarget;

/// A flow rule's test of the client.
#[derive(Debug, Clone)]
enum ClientCheck {
    Src(AddrSet),
    Mark(Vec<(u32, u32)>),
}

impl ClientCheck {
    fn holds(&self, client: IpAddr, mark: u32) -> bool {
        match self {
            ClientCheck::Src(s) => s.contains(client),
            ClientCheck::Mark(v) => v.iter().any(|(value, mask)| mark & mask == *value),
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledFlow {
    /// (negated, check): all must hold.
    checks: Vec<(bool, ClientCheck)>,
    target: FlowTarget,
}

impl CompiledFlow {
    fn holds(&self, client: IpAddr, mark: u32) -> bool {
        self.checks
            .iter()
            .all(|(neg, c)| c.holds(client, mark) != *neg)
    }
}

/// The clients one flow rule can match, as far as their address tells: the ranges of each of
/// its positive `src` matchers (a client lies in every one); none when it can match any client.
pub(crate) type SrcRanges = Vec<Vec<AddrRange>>;

/// The flow rules, compiled and filed by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Flows {
    rules: Vec<CompiledFlow>,
    names: NameIndex,
    /// Per flow rule that can match at all (it names something), in file order.
    sources: Vec<SrcRanges>,
}

impl Flows {
    pub(crate) fn build(defs: &[FlowDef]) -> Flows {
        let rules = defs
            .iter()
            .enumerate()
            .map(|(i, d)| CompiledFlow {
                checks: d
                    .conds
                    .iter()
                    .filter_map(|c| {
                        let check = match &c.test {
                            Test::Src(v) => ClientCheck::Src(AddrSet::new(v)),
                            Test::Mark(v) => ClientCheck::Mark(v.clone()),
                            // The parser gives flow rules no other client matcher.
                            _ => return None,
                        };
                        Some((c.negated, check))
                    })
                    .collect(),
                target: FlowTarget {
                    rule: i,
                    mark: d.set_mark,
                    by_mark: d.per_mark,
                },
            })
            .collect();
        let names = NameIndex::build(
            defs.iter()
                .zip(0u32..)
                .flat_map(|(d, r)| d.names.iter().map(move |p| (p, r))),
        );
        Flows {
            rules,
            names,
            sources: defs.iter().filter_map(src_ranges).collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    /// Each flow rule's target, in file order.
    pub(crate) fn targets(&self) -> impl Iterator<Item = FlowTarget> + '_ {
        self.rules.iter().map(|r| r.target)
    }

    /// The first flow rule whose client matchers hold and whose names match any of `names`.
    /// Does not allocate: each name is already in lower-case wire form.
    pub(crate) fn target(&self, client: IpAddr, mark: u32, names: &[Name]) -> Option<FlowTarget> {
        if self.rules.is_empty() {
            return None;
        }
        let mut best: Option<u32> = None;
        for name in names {
            let (exact, below) = self.names.lookup(name.wire());
            for list in [exact, below] {
                // Each list is in rule order: its first candidate that holds is its best.
                for &r in list {
                    if best.is_some_and(|b| r >= b) {
                        break;
                    }
                    if self
                        .rules
                        .get(r as usize)
                        .is_some_and(|f| f.holds(client, mark))
                    {
                        best = Some(r);
                        break;
                    }
                }
            }
        }
        best.and_then(|r| self.rules.get(r as usize))
            .map(|f| f.target)
    }

    /// The addresses each flow rule that can match (it names something) can match clients of,
    /// in file order (see [`SrcRanges`]).
    pub(crate) fn sources(&self) -> &[SrcRanges] {
        &self.sources
    }
}

/// A flow rule's positive `src` matchers, each as its ranges; `None` for a rule without names,
/// which never matches. Negated matchers and `mark` do not narrow what the addresses can be.
fn src_ranges(def: &FlowDef) -> Option<SrcRanges> {
    if def.names.is_empty() {
        return None;
    }
    let positive = def.conds.iter().filter(|c| !c.negated);
    Some(
        positive
            .filter_map(|c| match &c.test {
                Test::Src(v) => Some(v.clone()),
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use hickory_proto::rr::RecordType;

    use super::super::defs::{self, Parsed};
    use super::super::parse;
    use super::super::testutil::*;
    use super::super::{Outcome, RuleSet};
    use super::*;

    /// Names as the engine passes them: lower-case, question first, then each CNAME target.
    fn chain(names: &[&str]) -> Vec<Name> {
        names
            .iter()
            .map(|n| match Name::from_ascii(n) {
                Ok(name) => name,
                Err(e) => panic!("bad test name {n}: {e}"),
            })
            .collect()
    }

    /// (rule index, mark, by_mark) of the flow target, for short assertions.
    fn flow(rs: &RuleSet, client: &str, mark: u32, names: &[&str]) -> Option<usize> {
        rs.flow_target(ip(client), mark, &chain(names))
            .map(|t| t.rule)
    }

    #[test]
    fn flow_rule_matches_its_clients_and_names() {
        let rs = rules(VIDEO);
        assert!(rs.has_flow_rules());
        assert_eq!(rs.flow_len(), 1);
        assert_eq!(rs.len(), 0, "flow rules are not packet rules");
        let target = rs.flow_target(ip("198.18.1.7"), 0, &chain(&["www.video.example."]));
        assert_eq!(
            target,
            Some(FlowTarget {
                rule: 0,
                mark: (0x20, 0xff),
                by_mark: None
            })
        );
        assert_eq!(flow(&rs, "198.18.1.7", 0, &["video.example."]), Some(0));
        assert_eq!(flow(&rs, "198.18.1.7", 0, &["a.b.video.example"]), Some(0));
        assert_eq!(
            flow(&rs, "2001:db8:1::99", 0, &["x.video.example."]),
            Some(0)
        );
        // Another client, in either family.
        assert_eq!(flow(&rs, "198.18.2.7", 0, &["www.video.example."]), None);
        assert_eq!(flow(&rs, "2001:db8:2::99", 0, &["x.video.example."]), None);
        // Other names, and a name that only ends like one.
        assert_eq!(flow(&rs, "198.18.1.7", 0, &["video.example.org."]), None);
        assert_eq!(flow(&rs, "198.18.1.7", 0, &["evilvideo.example."]), None);
        assert_eq!(flow(&rs, "198.18.1.7", 0, &[]), None);
        // Names the engine did not lower-case still match.
        let upper = [Name::from_ascii("WWW.Video.Example.").unwrap_or_else(|e| panic!("{e}"))];
        assert_eq!(
            rs.flow_target(ip("198.18.1.7"), 0, &upper).map(|t| t.rule),
            Some(0)
        );
    }

    #[test]
    fn alias_name_anywhere_in_the_cname_chain_matches() {
        let rs = rules(VIDEO);
        // www.news.example -> cdn.video.example -> edge-7.cdn.example: the alias in the middle
        // is the one the rule names.
        let names = [
            "www.news.example.",
            "cdn.video.example.",
            "edge-7.cdn.example.",
        ];
        assert_eq!(flow(&rs, "198.18.1.7", 0, &names), Some(0));
        assert_eq!(
            flow(
                &rs,
                "198.18.1.7",
                0,
                &["www.news.example.", "edge-7.cdn.example."]
            ),
            None
        );
    }

    #[test]
    fn first_flow_rule_in_file_order_wins_over_names_and_chain_order() {
        let rs = rules(
            "flow src 198.18.1.0/24 names *.cdn.example set-mark 0x1/0xff\n\
             dport 443 set-mark 0x7\n\
             flow names *.video.example set-mark 0x2/0xff\n\
             flow names www.video.example set-mark 0x3/0xff\n\
             flow src 198.18.2.0/24 names *.example set-mark 0x4/0xff\n",
        );
        assert_eq!(rs.flow_len(), 4);
        assert_eq!(flow(&rs, "198.18.1.7", 0, &["www.video.example."]), Some(1));
        // The chain's later name (rule 0) beats its first name (rule 1).
        assert_eq!(
            flow(
                &rs,
                "198.18.1.7",
                0,
                &["www.video.example.", "a.cdn.example."]
            ),
            Some(0)
        );
        // ... but only for clients rule 0 names.
        assert_eq!(
            flow(
                &rs,
                "198.18.2.7",
                0,
                &["www.video.example.", "a.cdn.example."]
            ),
            Some(1)
        );
        assert_eq!(flow(&rs, "198.18.2.7", 0, &["other.example."]), Some(3));
        assert_eq!(flow(&rs, "198.18.3.7", 0, &["other.example."]), None);
        let t = rs.flow_target(ip("198.18.1.7"), 0, &chain(&["a.cdn.example."]));
        assert_eq!(t.map(|t| t.mark), Some((0x1, 0xff)));
        assert_eq!(rs.describe_flow(0).as_deref(), Some("t.rules:1"));
        assert_eq!(rs.describe_flow(3).as_deref(), Some("t.rules:5"));
        assert_eq!(rs.describe_flow(4), None);
        assert_eq!(rs.describe(0).as_deref(), Some("t.rules:2"));
    }

    #[test]
    fn flow_rules_do_not_take_part_in_packet_rules() {
        let rs = rules(
            "flow names *.video.example set-mark 0x20/0xff\n\
             dport 443 set-mark 0x1\n",
        );
        assert_eq!(
            tcp("198.18.1.7", 40000, "198.18.7.7", 443).rule(&rs),
            Some(0)
        );
        assert_eq!(
            query("www.video.example.", RecordType::A).eval(&rs),
            Outcome::DEFAULT
        );
    }

    #[test]
    fn negated_src_and_client_marks() {
        let rs = rules(
            "flow ! src 198.18.9.0/24 mark 0x100/0x100 names a.example set-mark 0x1/0xf\n\
             flow ! mark 0x100/0x100 names a.example set-mark 0x2/0xf\n",
        );
        assert_eq!(flow(&rs, "198.18.1.7", 0x100, &["a.example."]), Some(0));
        assert_eq!(flow(&rs, "2001:db8::7", 0x1ff, &["a.example."]), Some(0));
        assert_eq!(flow(&rs, "198.18.9.7", 0x100, &["a.example."]), None);
        assert_eq!(flow(&rs, "198.18.9.7", 0, &["a.example."]), Some(1));
        assert_eq!(flow(&rs, "198.18.1.7", 0x0ff, &["a.example."]), Some(1));
    }

    #[test]
    fn per_mark_keys_by_the_rules_mark_bits_or_the_whole_mark() {
        let rs = rules(
            "flow mark 0x100/0xff00 names a.example set-mark 0x20/0xff per-mark\n\
             flow names a.example set-mark 0x30/0xff per-mark\n\
             flow names b.example set-mark 0x40/0xff\n",
        );
        let t = |mark: u32, name: &str| rs.flow_target(ip("198.18.1.7"), mark, &chain(&[name]));
        assert_eq!(
            t(0x1ab, "a.example."),
            Some(FlowTarget {
                rule: 0,
                mark: (0x20, 0xff),
                by_mark: Some(0xff00)
            })
        );
        assert_eq!(
            t(0x2ab, "a.example."),
            Some(FlowTarget {
                rule: 1,
                mark: (0x30, 0xff),
                by_mark: Some(u32::MAX)
            })
        );
        assert_eq!(t(0x2ab, "b.example.").and_then(|t| t.by_mark), None);
    }

    #[test]
    fn summary_counts_flow_rules_only_when_there_are_some() {
        assert_eq!(
            rules("dport 25 set-mark 1\nflow names a.example set-mark 2\n").summary(),
            "1 rule, 1 flow rule, 0 sets, default accept"
        );
        assert_eq!(
            rules(&format!("{VIDEO}flow names b.example set-mark 3\n")).summary(),
            "0 rules, 2 flow rules, 0 sets, default accept"
        );
        assert_eq!(
            rules("dport 25 set-mark 1\n").summary(),
            "1 rule, 0 sets, default accept"
        );
        assert!(!rules("dport 25 set-mark 1\n").has_flow_rules());
        assert_eq!(
            RuleSet::empty().flow_target(ip("198.18.1.7"), 0, &chain(&["a.example."])),
            None
        );
    }

    /// What a flow rule should do, by a plain scan over the parsed rules and text comparison.
    fn naive_flow(parsed: &Parsed, client: IpAddr, mark: u32, names: &[String]) -> Option<usize> {
        let in_range = |r: &AddrRange| match (r, client) {
            (AddrRange::V4(a, b), IpAddr::V4(c)) => (*a..=*b).contains(&u32::from(c)),
            (AddrRange::V6(a, b), IpAddr::V6(c)) => (*a..=*b).contains(&u128::from(c)),
            _ => false,
        };
        parsed.flows.iter().position(|f| {
            let client_ok = f.conds.iter().all(|c| {
                let holds = match &c.test {
                    defs::Test::Src(v) => v.iter().any(in_range),
                    defs::Test::Mark(v) => v.iter().any(|(value, mask)| mark & mask == *value),
                    _ => panic!("flow rule with {:?}", c.test),
                };
                holds != c.negated
            });
            client_ok
                && names.iter().any(|name| {
                    f.names.iter().any(|pat| {
                        let text = wire_to_text(&pat.wire);
                        if pat.wildcard {
                            name.ends_with(&format!(".{text}"))
                        } else {
                            *name == text
                        }
                    })
                })
        })
    }

    #[test]
    fn flow_index_agrees_with_a_linear_scan_on_random_rules() {
        let mut rng = Rng(0xf10e_5eed_0000_0004);
        let (mut matched, mut lookups) = (0usize, 0usize);
        for round in 0..20 {
            let count = [1, 4, 30, 200][round % 4];
            let mut text = String::new();
            for _ in 0..count {
                text.push_str("flow");
                if rng.chance(60) {
                    let neg = if rng.chance(25) { "! " } else { "" };
                    text.push_str(&format!(
                        " {neg}src {}",
                        random_values(&mut rng, ADDR_PATTERNS)
                    ));
                }
                if rng.chance(30) {
                    let neg = if rng.chance(25) { "! " } else { "" };
                    text.push_str(&format!(
                        " {neg}mark {}",
                        random_values(&mut rng, MARK_PATTERNS)
                    ));
                }
                text.push_str(&format!(
                    " names {}",
                    random_values(&mut rng, NAME_PATTERNS)
                ));
                text.push_str(&format!(" set-mark {}", rng.below(256)));
                if rng.chance(20) {
                    text.push_str(" per-mark");
                }
                text.push('\n');
            }
            let parsed = match parse(&text, "r.rules") {
                Ok(p) => p,
                Err(d) => panic!("generated flow rules do not parse: {d:#?}\n{text}"),
            };
            let rs = rules(&text);
            for _ in 0..500 {
                let hosts = if rng.chance(50) { V4_HOSTS } else { V6_HOSTS };
                let host: &&str = rng.pick(hosts);
                let client = ip(host);
                let mark = *rng.pick(MARKS);
                let names: Vec<String> = (0..rng.below(4))
                    .map(|_| rng.pick(NAMES).to_string())
                    .collect();
                let chain: Vec<Name> = names
                    .iter()
                    .map(|n| Name::from_ascii(n).unwrap_or_else(|e| panic!("{e}")))
                    .collect();
                let want = naive_flow(&parsed, client, mark, &names);
                let got = rs.flow_target(client, mark, &chain);
                assert_eq!(
                    got.map(|t| t.rule),
                    want,
                    "round {round}: {client} mark {mark:#x} names {names:?}\nrules:\n{text}"
                );
                if let (Some(t), Some(f)) = (got, want.and_then(|i| parsed.flows.get(i))) {
                    assert_eq!(t.mark, f.set_mark);
                    assert_eq!(t.by_mark, f.per_mark);
                }
                lookups += 1;
                matched += usize::from(want.is_some());
            }
        }
        assert!(matched > lookups / 5, "{matched} of {lookups}");
        assert!(matched < lookups, "{matched} of {lookups}");
    }
}
