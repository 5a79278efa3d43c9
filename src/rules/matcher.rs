//! Checked packet rules -> compiled rules, and the per-packet evaluation: first matching rule
//! wins.
//!
//! This module owns the hot path of the rule language. Each rule is compiled into checks (the
//! cheapest first) and filed in the candidate index (`index/`); a packet draws its candidate
//! lists from the index and merges them in rule order while each candidate's checks run: the
//! first candidate that matches is the first rule that matches, because a rule can only match a
//! packet that lies in the list it was filed under. For the same reason the matcher a rule is
//! filed under is not checked again: reaching the rule through its list proves it.
//!
//! Interface matchers hold pattern numbers; what a packet's interface indexes mean (which
//! patterns their names match, which rules are filed under them) comes from the rule set's
//! binding to the link table (`iface.rs`), read once per packet.
//!
//! Evaluation never allocates, never panics and never reads a clock; building happens once per
//! load, off the packet path. Nothing here parses text (that is `syntax.rs`) or knows about flow
//! rules (that is `flow_match.rs`).

use std::sync::Arc;

use super::defs::{DnsKind, RuleDef, Test};
use super::hash::FxMap;
use super::iface::{Ifaces, Interner, View};
use super::index::{
    AddrSet, Candidates, Index, LISTS, NameSet, RangeSet, has_ports, mac_key, port_set,
};
use super::{Ctx, Outcome};
use crate::types::{Direction, Hook};

#[derive(Debug, Clone)]
enum Check {
    Hook(Vec<Hook>),
    Dir(Vec<Direction>),
    /// Interface pattern ids (`iface::Interner`).
    Iif(Box<[u32]>),
    Oif(Box<[u32]>),
    Src(AddrSet),
    Dst(AddrSet),
    Proto(Vec<u8>),
    Sport(RangeSet<u16>),
    Dport(RangeSet<u16>),
    Mark(Vec<(u32, u32)>),
    Dns {
        query: bool,
        response: bool,
    },
    /// Shared by the rules that name the same patterns (a named set used by many rules).
    DnsName(Arc<NameSet>),
    DnsType(Vec<u16>),
    /// MAC addresses as `mac_key` numbers, sorted.
    SrcMac(Box<[u64]>),
}

impl Check {
    fn new(test: &Test, name_sets: &mut NameSets, patterns: &mut Interner) -> Check {
        match test {
            Test::Hook(v) => Check::Hook(v.clone()),
            Test::Dir(v) => Check::Dir(v.clone()),
            Test::Iif(v) => Check::Iif(patterns.ids(v)),
            Test::Oif(v) => Check::Oif(patterns.ids(v)),
            Test::SrcMac(v) => {
                let mut macs = v.clone();
                macs.sort_unstable();
                macs.dedup();
                Check::SrcMac(macs.into_boxed_slice())
            }
            Test::Src(v) => Check::Src(AddrSet::new(v)),
            Test::Dst(v) => Check::Dst(AddrSet::new(v)),
            Test::Proto(v) => Check::Proto(v.clone()),
            Test::Sport(v) => Check::Sport(port_set(v)),
            Test::Dport(v) => Check::Dport(port_set(v)),
            Test::Mark(v) => Check::Mark(v.clone()),
            Test::Dns(kinds) => Check::Dns {
                query: kinds
                    .iter()
                    .any(|k| matches!(k, DnsKind::Query | DnsKind::Any)),
                response: kinds
                    .iter()
                    .any(|k| matches!(k, DnsKind::Response | DnsKind::Any)),
            },
            Test::DnsName(v) => {
                let key = v.iter().map(|p| (p.wire.clone(), p.wildcard)).collect();
                let set = name_sets
                    .entry(key)
                    .or_insert_with(|| Arc::new(NameSet::new(v)));
                Check::DnsName(Arc::clone(set))
            }
            Test::DnsType(v) => Check::DnsType(v.clone()),
        }
    }

    /// A rough rank of what checking costs: fields of the packet, then small lists, then
    /// binary searches, then name lookups.
    fn cost(&self) -> u8 {
        match self {
            Check::Hook(_) | Check::Dir(_) | Check::Iif(_) | Check::Oif(_) | Check::Proto(_) => 0,
            Check::Dns { .. } | Check::Mark(_) | Check::DnsType(_) | Check::SrcMac(_) => 1,
            Check::Sport(_) | Check::Dport(_) => 2,
            Check::Src(_) | Check::Dst(_) => 3,
            Check::DnsName(_) => 4,
        }
    }

    fn holds(&self, ctx: &Ctx<'_>, links: View<'_>) -> bool {
        let p = ctx.packet;
        let question = ctx.dns.and_then(|d| d.question.as_ref());
        match self {
            Check::Hook(v) => v.contains(&ctx.meta.hook),
            Check::Dir(v) => v.contains(&ctx.meta.direction()),
            Check::Iif(ids) => links.indev.is_some_and(|l| l.any(ids)),
            Check::Oif(ids) => links.outdev.is_some_and(|l| l.any(ids)),
            Check::SrcMac(v) => ctx
                .meta
                .src_mac
                .is_some_and(|m| v.binary_search(&mac_key(m)).is_ok()),
            Check::Src(s) => s.contains(p.src),
            Check::Dst(s) => s.contains(p.dst),
            Check::Proto(v) => v.contains(&p.proto.number()),
            Check::Sport(s) => has_ports(p.proto) && s.contains(p.sport),
            Check::Dport(s) => has_ports(p.proto) && s.contains(p.dport),
            Check::Mark(v) => v.iter().any(|(value, mask)| ctx.meta.mark & mask == *value),
            Check::Dns { query, response } => ctx
                .dns
                .is_some_and(|d| if d.response { *response } else { *query }),
            Check::DnsName(s) => question.is_some_and(|q| s.contains(q.key.wire_name())),
            Check::DnsType(v) => question.is_some_and(|q| v.contains(&q.qtype())),
        }
    }
}

/// The name sets built so far, by their patterns.
type NameSets = FxMap<Vec<(Box<[u8]>, bool)>, Arc<NameSet>>;

#[derive(Debug, Clone)]
struct Compiled {
    /// (negated, check): all must hold.
    checks: Vec<(bool, Check)>,
    outcome: Outcome,
}

impl Compiled {
    /// Rule `index`, without its condition number `proven` (the one it is filed under in the
    /// index: a packet that reaches the rule through the index meets it already), the cheapest
    /// checks first (all must hold, so their order changes nothing but the cost).
    fn new(
        rule: &RuleDef,
        index: usize,
        proven: Option<usize>,
        name_sets: &mut NameSets,
        patterns: &mut Interner,
    ) -> Compiled {
        let mut checks: Vec<(bool, Check)> = rule
            .conds
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != proven)
            .map(|(_, c)| (c.negated, Check::new(&c.test, name_sets, patterns)))
            .collect();
        checks.sort_by_key(|(_, c)| c.cost());
        Compiled {
            checks,
            outcome: Outcome {
                verdict: rule.action.verdict,
                set_mark: rule.action.set_mark,
                pairing: rule.action.pairing,
                rule: Some(index),
            },
        }
    }

    fn matches(&self, ctx: &Ctx<'_>, links: View<'_>) -> bool {
        self.checks
            .iter()
            .all(|(neg, c)| c.holds(ctx, links) != *neg)
    }
}

/// The rules, compiled and indexed.
#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    rules: Vec<Compiled>,
    index: Index,
    /// The interfaces the rules name, and their binding to the link table.
    ifaces: Arc<Ifaces>,
}

impl Default for Matcher {
    fn default() -> Matcher {
        Matcher::build(&[])
    }
}

impl Matcher {
    pub(crate) fn build(rules: &[RuleDef]) -> Matcher {
        let mut patterns = Interner::default();
        let (index, filed, mut by_pattern) = Index::build(rules, &mut patterns);
        let mut name_sets = NameSets::default();
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let proven = filed.get(i).copied().flatten();
                Compiled::new(r, i, proven, &mut name_sets, &mut patterns)
            })
            .collect();
        by_pattern.iif.resize_with(patterns.len(), Vec::new);
        by_pattern.oif.resize_with(patterns.len(), Vec::new);
        let ifaces = Ifaces::new(patterns.into_patterns(), by_pattern.iif, by_pattern.oif);
        Matcher {
            rules: compiled,
            index,
            ifaces: Arc::new(ifaces),
        }
    }

    /// The interfaces the rules name and their binding.
    pub(crate) fn ifaces(&self) -> &Arc<Ifaces> {
        &self.ifaces
    }

    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    /// The outcome of the first rule that matches, if any.
    pub(crate) fn evaluate(&self, ctx: &Ctx<'_>) -> Option<Outcome> {
        self.first_match(ctx, &mut 0)
    }

    /// As [`Matcher::evaluate`], counting the candidates whose matchers were checked.
    pub(crate) fn first_match(&self, ctx: &Ctx<'_>, examined: &mut usize) -> Option<Outcome> {
        if self.rules.is_empty() {
            return None;
        }
        let (indev, outdev) = (ctx.meta.indev, ctx.meta.outdev);
        // Most packets' interfaces mean nothing to the rules: no binding to read.
        if self.ifaces.is_empty() || !self.ifaces.may_hold(indev, outdev) {
            return self.first_match_with(ctx, View::default(), examined);
        }
        self.ifaces
            .with_bound(|bound| self.first_match_with(ctx, bound.view(indev, outdev), examined))
    }

    /// [`Matcher::first_match`] with what the packet's interfaces mean already looked up.
    #[inline(always)]
    fn first_match_with(
        &self,
        ctx: &Ctx<'_>,
        links: View<'_>,
        examined: &mut usize,
    ) -> Option<Outcome> {
        let mut check = |r: u32| {
            *examined += 1;
            self.rules
                .get(r as usize)
                .filter(|rule| rule.matches(ctx, links))
                .map(|rule| rule.outcome)
        };
        let mut c = Candidates {
            lists: [&[]; LISTS],
            len: 0,
        };
        self.index.candidates(ctx, links, &mut c);
        // Several lists: merge them in rule order (a rule can be in more than one), dropping
        // each list as it runs out.
        while c.len > 1 {
            let live = c.lists.get_mut(..c.len).unwrap_or_default();
            let next = live.iter().filter_map(|l| l.first()).min().copied()?;
            let (mut i, mut n) = (0, live.len());
            while i < n {
                let Some(list) = live.get_mut(i) else { break };
                if let Some((&head, rest)) = list.split_first()
                    && head == next
                {
                    *list = rest;
                    if rest.is_empty() {
                        n -= 1;
                        live.swap(i, n);
                        continue;
                    }
                }
                i += 1;
            }
            c.len = n;
            if let Some(outcome) = check(next) {
                return Some(outcome);
            }
        }
        // One list (or none) left: its rules in order.
        let last = c.lists.first().filter(|_| c.len == 1).copied();
        last.unwrap_or_default().iter().find_map(|&r| check(r))
    }

    /// Rule numbers stored in the index (memory use, roughly, in units of 4 bytes).
    #[cfg(test)]
    pub(crate) fn index_entries(&self) -> usize {
        self.index.entries()
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use hickory_proto::rr::RecordType;

    use super::super::defs::{self, Action, AddrRange, Parsed};
    use super::super::parse;
    use super::super::testutil::*;
    use super::super::{Ctx, Outcome, RuleSet};
    use super::*;
    use crate::fixtures;
    use crate::packet::Proto;
    use crate::types::Verdict;

    #[test]
    fn no_rules_gives_the_default_outcome() {
        let rs = RuleSet::empty();
        assert_eq!(
            udp("198.18.0.1", 1, "198.18.0.2", 2).eval(&rs),
            Outcome::DEFAULT
        );
        let rs = rules("# nothing\n");
        assert_eq!(
            udp("198.18.0.1", 1, "198.18.0.2", 2).eval(&rs),
            Outcome::DEFAULT
        );
    }

    #[test]
    fn ipv4_and_ipv6_addresses_match_their_own_family() {
        let rs = rules(
            "src 198.18.0.0/24 set-mark 1\n\
             dst 2001:db8:1::/48 set-mark 2\n\
             src 2001:db8::5 set-mark 3\n",
        );
        assert_eq!(udp("198.18.0.77", 1, "198.19.0.1", 2).rule(&rs), Some(0));
        assert_eq!(udp("198.18.1.77", 1, "198.19.0.1", 2).rule(&rs), None);
        assert_eq!(
            udp("2001:db8::5", 1, "2001:db8:1:ffff::1", 2).rule(&rs),
            Some(1)
        );
        assert_eq!(udp("2001:db8::5", 1, "2001:db8:2::1", 2).rule(&rs), Some(2));
        assert_eq!(udp("2001:db8::6", 1, "2001:db8:2::1", 2).rule(&rs), None);
        // An IPv4 rule never matches IPv6, even for an IPv4-mapped address.
        assert_eq!(udp("::ffff:198.18.0.77", 1, "::1", 2).rule(&rs), None);
        assert_eq!(
            udp("198.18.0.77", 1, "198.19.0.1", 2).eval(&rs).set_mark,
            Some((1, u32::MAX))
        );
    }

    #[test]
    fn ports_match_tcp_and_udp_and_ranges() {
        let rs = rules(
            "proto tcp dport 25 set-mark 1\n\
             dport 1000-2000 set-mark 2\n\
             sport :1023 proto udp set-mark 3\n",
        );
        assert_eq!(
            tcp("198.18.0.9", 40000, "198.18.0.1", 25).rule(&rs),
            Some(0)
        );
        assert_eq!(udp("198.18.0.9", 40000, "198.18.0.1", 25).rule(&rs), None);
        assert_eq!(
            udp("198.18.0.9", 40000, "198.18.0.1", 1000).rule(&rs),
            Some(1)
        );
        assert_eq!(
            tcp("198.18.0.9", 40000, "198.18.0.1", 2000).rule(&rs),
            Some(1)
        );
        assert_eq!(tcp("198.18.0.9", 40000, "198.18.0.1", 2001).rule(&rs), None);
        assert_eq!(udp("198.18.0.9", 123, "198.18.0.1", 9).rule(&rs), Some(2));
        assert_eq!(tcp("198.18.0.9", 123, "198.18.0.1", 9).rule(&rs), None);
    }

    #[test]
    fn ports_never_match_icmp_but_negated_ports_do() {
        let rs = rules("dport 0 set-mark 1\n! dport 53 set-mark 2\n");
        assert_eq!(icmp("198.18.0.9", "198.18.0.1").rule(&rs), Some(1));
        assert_eq!(icmp("2001:db8::9", "2001:db8::1").rule(&rs), Some(1));
        let rs = rules("proto icmp set-mark 1\nproto icmpv6 set-mark 2\nproto 17 set-mark 3\n");
        assert_eq!(icmp("198.18.0.9", "198.18.0.1").rule(&rs), Some(0));
        assert_eq!(icmp("2001:db8::9", "2001:db8::1").rule(&rs), Some(1));
        assert_eq!(udp("198.18.0.9", 1, "198.18.0.1", 2).rule(&rs), Some(2));
    }

    #[test]
    fn names_match_whatever_their_case() {
        let rs = rules("dns-name Portal.Example set-mark 1\n");
        for name in ["portal.example.", "PORTAL.EXAMPLE.", "pOrTaL.eXaMpLe."] {
            assert_eq!(query(name, RecordType::A).rule(&rs), Some(0), "{name}");
        }
        assert_eq!(query("www.portal.example.", RecordType::A).rule(&rs), None);
        assert_eq!(query("portal.example.net.", RecordType::A).rule(&rs), None);
    }

    #[test]
    fn wildcard_matches_below_the_suffix_but_not_the_suffix() {
        let rs = rules("dns-name *.cdn.example set-mark 1\n");
        assert_eq!(query("a.cdn.example.", RecordType::A).rule(&rs), Some(0));
        assert_eq!(query("A.B.CDN.Example.", RecordType::A).rule(&rs), Some(0));
        assert_eq!(query("cdn.example.", RecordType::A).rule(&rs), None);
        assert_eq!(query("xcdn.example.", RecordType::A).rule(&rs), None);
        assert_eq!(query("example.", RecordType::A).rule(&rs), None);
        // Both, as most people want: list the bare name too.
        let rs = rules("dns-name cdn.example, *.cdn.example set-mark 1\n");
        assert_eq!(query("cdn.example.", RecordType::A).rule(&rs), Some(0));
        assert_eq!(query("x.cdn.example.", RecordType::A).rule(&rs), Some(0));
    }

    #[test]
    fn nested_wildcards_keep_rule_order() {
        let rs = rules(
            "dns-name *.example set-mark 1\n\
             dns-name *.b.example set-mark 2\n\
             dns-name a.b.example set-mark 3\n",
        );
        assert_eq!(query("a.b.example.", RecordType::A).rule(&rs), Some(0));
        let rs = rules(
            "dns-name a.b.example set-mark 3\n\
             dns-name *.b.example set-mark 2\n\
             dns-name *.example set-mark 1\n",
        );
        assert_eq!(query("a.b.example.", RecordType::A).rule(&rs), Some(0));
        assert_eq!(query("z.b.example.", RecordType::A).rule(&rs), Some(1));
        assert_eq!(query("b.example.", RecordType::A).rule(&rs), Some(2));
        assert_eq!(query("example.", RecordType::A).rule(&rs), None);
    }

    #[test]
    fn dns_kind_and_type() {
        let rs = rules(
            "dns response set-mark 1\n\
             dns query dns-type AAAA, TXT set-mark 2\n\
             dns any set-mark 3\n",
        );
        assert_eq!(answer("a.example.").rule(&rs), Some(0));
        assert_eq!(query("a.example.", RecordType::AAAA).rule(&rs), Some(1));
        assert_eq!(query("a.example.", RecordType::TXT).rule(&rs), Some(1));
        assert_eq!(query("a.example.", RecordType::A).rule(&rs), Some(2));
        assert_eq!(udp("198.18.0.10", 1, "198.18.0.1", 2).rule(&rs), None);
    }

    #[test]
    fn dns_over_tcp_is_matched_too() {
        let rs = rules("dns-name a.example proto tcp set-mark 1\n");
        let msg = fixtures::tcp_framed(&fixtures::dns_query(9, "a.example."));
        let p = Pkt::new(fixtures::tcp(
            ip("198.18.0.10"),
            40000,
            ip("198.18.0.1"),
            53,
            &msg,
        ));
        assert_eq!(p.rule(&rs), Some(0));
    }

    #[test]
    fn negation_is_plain_logical_not() {
        let rs = rules(
            "set garden names { portal.example, *.portal.example }\n\
             ! dns-name @garden drop\n",
        );
        assert_eq!(query("portal.example.", RecordType::A).rule(&rs), None);
        assert_eq!(query("x.portal.example.", RecordType::A).rule(&rs), None);
        assert_eq!(query("evil.example.", RecordType::A).rule(&rs), Some(0));
        // A packet with no question is "not a garden name" too: scope it with 'dns query'.
        assert_eq!(udp("198.18.0.10", 1, "198.18.0.1", 2).rule(&rs), Some(0));
        let rs = rules(
            "set garden names { portal.example }\n\
             dns query ! dns-name @garden drop\n",
        );
        assert_eq!(udp("198.18.0.10", 1, "198.18.0.1", 2).rule(&rs), None);
        assert_eq!(query("evil.example.", RecordType::A).rule(&rs), Some(0));
        let rs = rules("! src 198.18.0.0/15 ! proto udp set-mark 1\n");
        assert_eq!(tcp("203.0.113.1", 1, "198.18.0.1", 2).rule(&rs), Some(0));
        assert_eq!(udp("203.0.113.1", 1, "198.18.0.1", 2).rule(&rs), None);
        assert_eq!(tcp("198.18.0.1", 1, "198.18.0.1", 2).rule(&rs), None);
    }

    #[test]
    fn marks_match_under_their_mask() {
        let rs = rules(
            "mark 0x100/0xff00 set-mark 1\n\
             mark 0/0x1 set-mark 2\n\
             mark 0x7 set-mark 3\n",
        );
        let p = || udp("198.18.0.10", 1, "198.18.0.1", 2);
        assert_eq!(p().mark(0x1_01ff).rule(&rs), Some(0));
        assert_eq!(p().mark(0x200).rule(&rs), Some(1));
        assert_eq!(p().mark(0x7).rule(&rs), Some(2));
        assert_eq!(p().mark(0x207).rule(&rs), None);
        let rs = rules("mark 0x7 set-mark 3\n");
        assert_eq!(p().mark(0x7).rule(&rs), Some(0));
        assert_eq!(p().mark(0x107).rule(&rs), None);
    }

    #[test]
    fn hooks_directions_and_interfaces() {
        let rs = rules(
            "hook forward set-mark 1\n\
             dir out oif wan0 set-mark 2\n\
             dir in iif lan0 set-mark 3\n\
             iif wan0 set-mark 4\n",
        );
        let p = || udp("198.18.0.10", 1, "198.18.0.1", 2);
        assert_eq!(p().hook(Hook::Forward).devs(2, 3).rule(&rs), Some(0));
        assert_eq!(p().hook(Hook::PostRouting).devs(0, 3).rule(&rs), Some(1));
        assert_eq!(p().hook(Hook::PostRouting).devs(2, 3).rule(&rs), None);
        assert_eq!(p().hook(Hook::PreRouting).devs(2, 0).rule(&rs), Some(2));
        assert_eq!(p().hook(Hook::Input).devs(3, 0).rule(&rs), Some(3));
        assert_eq!(p().hook(Hook::Other(9)).devs(0, 0).rule(&rs), None);
    }

    #[test]
    fn interfaces_match_by_name_whatever_their_index() {
        let rs = rules(
            "iif ppp+ set-mark 1\n\
             oif wg0 set-mark 2\n\
             ! iif lan0 dir in set-mark 3\n",
        );
        let p = || udp("198.18.0.10", 1, "198.18.0.1", 2);
        // ppp0 is link 4 on the test machine; wg0 does not exist yet.
        assert_eq!(p().devs(4, 0).rule(&rs), Some(0));
        assert_eq!(p().hook(Hook::Forward).devs(2, 9).rule(&rs), None);
        assert_eq!(p().devs(2, 0).rule(&rs), None);
        assert_eq!(
            p().devs(0, 0).rule(&rs),
            Some(2),
            "no input interface is not lan0"
        );
        // wg0 appears as 9, ppp0 is created again as 12 and lan0 renamed to lan1.
        let now: crate::links::LinkMap = [(1, "lo"), (2, "lan1"), (9, "wg0"), (12, "ppp0")]
            .iter()
            .map(|(i, n)| (*i, n.to_string()))
            .collect();
        let copy = rs.clone();
        rs.bind(&now);
        assert_eq!(p().hook(Hook::Forward).devs(2, 9).rule(&copy), Some(1));
        assert_eq!(p().devs(12, 0).rule(&copy), Some(0));
        assert_eq!(
            p().devs(4, 0).rule(&copy),
            Some(2),
            "4 is gone: not a ppp link"
        );
        assert_eq!(p().devs(2, 0).rule(&copy), Some(2), "lan1 is not lan0");
    }

    #[test]
    fn source_macs_match_only_packets_that_have_one() {
        let rs = rules(
            "src-mac 02:00:00:00:00:0a, 02:00:00:00:00:0b set-mark 1\n\
             ! src-mac 02:00:00:00:00:0c set-mark 2\n",
        );
        let p = |mac| udp("198.18.0.10", 1, "198.18.0.1", 2).src_mac(mac);
        assert_eq!(p(Some([2, 0, 0, 0, 0, 0x0b])).rule(&rs), Some(0));
        assert_eq!(p(Some([2, 0, 0, 0, 0, 0x0c])).rule(&rs), None);
        assert_eq!(p(Some([2, 0, 0, 0, 0, 0x0d])).rule(&rs), Some(1));
        // A packet this host sends has no source MAC: `src-mac` never holds, its negation does.
        assert_eq!(p(None).rule(&rs), Some(1));
        let rs = rules("src-mac 02:00:00:00:00:0a dport 2 set-mark 1\n");
        assert_eq!(p(None).rule(&rs), None);
        assert_eq!(p(Some([2, 0, 0, 0, 0, 0x0a])).rule(&rs), Some(0));
    }

    #[test]
    fn actions_become_outcomes() {
        let rs = rules(
            "dport 1 drop\n\
             dport 2 set-mark 0x10/0xf0 repeat nopair\n\
             dport 3 accept\n\
             default set-mark 0x1/0x1\n",
        );
        let o = |port| udp("198.18.0.10", 1, "198.18.0.1", port).eval(&rs);
        assert_eq!(
            o(1),
            Outcome {
                verdict: Verdict::Drop,
                set_mark: None,
                pairing: false,
                rule: Some(0)
            }
        );
        assert_eq!(
            o(2),
            Outcome {
                verdict: Verdict::Repeat,
                set_mark: Some((0x10, 0xf0)),
                pairing: false,
                rule: Some(1)
            }
        );
        assert_eq!(
            o(3),
            Outcome {
                rule: Some(2),
                ..Outcome::DEFAULT
            }
        );
        let default = Outcome {
            set_mark: Some((1, 1)),
            ..Outcome::DEFAULT
        };
        assert_eq!(o(4), default);
        assert_eq!(rs.default_outcome(), default);
    }

    #[test]
    fn first_match_wins_across_index_buckets() {
        // Each rule is filed under a different kind of key; order must still be rule order.
        let rs = rules(
            "hook input set-mark 1\n\
             proto udp set-mark 2\n\
             dport 53 set-mark 3\n\
             dns-name a.example set-mark 4\n\
             src 198.18.0.10 set-mark 5\n",
        );
        assert_eq!(query("a.example.", RecordType::A).rule(&rs), Some(0));
        let rs = rules(
            "src 198.18.0.10 set-mark 5\n\
             dns-name a.example set-mark 4\n\
             dport 53 set-mark 3\n\
             proto udp set-mark 2\n\
             hook input set-mark 1\n",
        );
        assert_eq!(query("a.example.", RecordType::A).rule(&rs), Some(0));
        assert_eq!(
            query("b.example.", RecordType::A)
                .hook(Hook::Input)
                .rule(&rs),
            Some(0)
        );
        let q = || {
            let msg = fixtures::dns_query(1, "a.example.");
            Pkt::new(fixtures::udp(
                ip("198.18.0.11"),
                40000,
                ip("198.18.0.1"),
                53,
                &msg,
            ))
        };
        assert_eq!(q().rule(&rs), Some(1));
        let msg = fixtures::dns_query(1, "b.example.");
        let other = Pkt::new(fixtures::udp(
            ip("198.18.0.11"),
            1,
            ip("198.18.0.1"),
            53,
            &msg,
        ));
        assert_eq!(other.rule(&rs), Some(2));
    }

    #[test]
    fn thousand_rules_examine_few_candidates() {
        let mut text = String::new();
        for i in 0..1000u32 {
            text.push_str(&format!(
                "src 198.18.{}.{} set-mark {}\n",
                i / 250,
                i % 250 + 1,
                i + 1
            ));
        }
        for i in 0..200u32 {
            text.push_str(&format!(
                "dns-name host{i}.example, *.zone{i}.example drop\n"
            ));
        }
        for i in 0..200u16 {
            text.push_str(&format!("proto tcp dport {} set-mark 7\n", 10000 + i));
        }
        text.push_str("! dport 53 hook forward drop\n");
        let rs = rules(&text);
        assert_eq!(rs.len(), 1401);
        let examined = |p: &Pkt| {
            p.with(|ctx| {
                let mut n = 0;
                let hit = rs.matcher.first_match(ctx, &mut n);
                (hit.and_then(|o| o.rule), n)
            })
        };
        let p = udp("198.18.3.200", 5, "198.19.0.1", 6);
        assert_eq!(examined(&p), (Some(949), 1));
        let msg = fixtures::dns_query(1, "www.Zone150.example.");
        let p = Pkt::new(fixtures::udp(
            ip("203.0.113.9"),
            1,
            ip("198.18.0.1"),
            53,
            &msg,
        ));
        assert_eq!(examined(&p), (Some(1150), 1));
        let p = tcp("203.0.113.9", 1, "198.19.0.1", 10150);
        assert_eq!(examined(&p), (Some(1350), 1));
        // The one catch-all-ish rule is filed under its hook: an INPUT packet never sees it.
        let p = tcp("203.0.113.9", 1, "198.19.0.1", 9);
        assert_eq!(examined(&p), (None, 0));
        assert_eq!(examined(&p.hook(Hook::Forward)), (Some(1400), 1));
        // The index stays linear in the rules here: no cell holds more than a few rules.
        assert!(
            rs.matcher.index_entries() < 6000,
            "{}",
            rs.matcher.index_entries()
        );
    }

    #[test]
    fn mark_rules_are_indexed_by_mask_and_keep_order() {
        let mut text = String::new();
        for i in 1..=300u32 {
            text.push_str(&format!("mark {:#x}/0xffff0000 set-mark {i}\n", i << 16));
        }
        text.push_str("mark 0x1/0xff set-mark 0x500\n");
        text.push_str("mark 0/0x100 set-mark 0x600\n");
        // A fifth and sixth mask: not indexed, found through the catch-all list.
        text.push_str("mark 0x2/0x2 set-mark 0x700\nmark 0x4/0x4 set-mark 0x800\n");
        text.push_str("mark 0x8/0x8 set-mark 0x900\n");
        let rs = rules(&text);
        let run = |mark: u32| {
            udp("198.18.0.10", 1, "198.18.0.1", 2)
                .mark(mark)
                .with(|ctx| {
                    let mut n = 0;
                    let o = rs.matcher.first_match(ctx, &mut n);
                    (o.and_then(|o| o.rule), n)
                })
        };
        assert_eq!(run(0x012c_0000).0, Some(299));
        assert!(run(0x012c_0000).1 <= 3, "{:?}", run(0x012c_0000));
        assert_eq!(run(0x0000_0001).0, Some(300));
        assert_eq!(run(0x0000_0101).0, Some(300));
        assert_eq!(run(0x0000_0000).0, Some(301));
        assert_eq!(run(0x0000_0102).0, Some(302));
        assert_eq!(run(0x0000_0108).0, Some(304));
        // First match wins across masks: 0x10001 matches rule 0 (by the high half) and 300.
        assert_eq!(run(0x0001_0001).0, Some(0));
    }

    #[test]
    fn filed_matcher_is_not_checked_again_and_cheap_checks_come_first() {
        let parsed = match parse(
            "src 198.18.0.0/15 dns-name a.example dport 53 proto udp set-mark 1\n\
             dns query dns-type A set-mark 2\n",
            "t.rules",
        ) {
            Ok(p) => p,
            Err(d) => panic!("{d:#?}"),
        };
        let m = Matcher::build(&parsed.rules);
        let kinds =
            |i: usize| -> Vec<u8> { m.rules[i].checks.iter().map(|(_, c)| c.cost()).collect() };
        // Filed under its name: proto, then the port, then the address.
        assert_eq!(kinds(0), vec![0, 2, 3]);
        assert!(matches!(m.rules[0].checks[0].1, Check::Proto(_)));
        // Nothing to index on: every matcher stays.
        assert_eq!(kinds(1), vec![1, 1]);
        assert_eq!(m.index.any, vec![1]);
    }

    #[test]
    fn rules_in_several_lists_are_examined_once() {
        // Rule 0 is in two mark maps (two masks), rule 1 in the exact and the wildcard lists.
        let rs = rules(
            "mark 0x10/0xf0, 0x100/0xf00 proto tcp set-mark 1\n\
             dns-name a.example, *.example set-mark 2\n\
             dns query set-mark 3\n",
        );
        let run = |name: &str, mark: u32| {
            query(name, RecordType::A).mark(mark).with(|ctx| {
                let mut n = 0;
                let o = rs.matcher.first_match(ctx, &mut n);
                (o.and_then(|o| o.rule), n)
            })
        };
        assert_eq!(run("a.example.", 0x110), (Some(1), 2));
        assert_eq!(run("b.example.", 0x110), (Some(1), 2));
        assert_eq!(run("a.other.", 0x110), (Some(2), 2));
        assert_eq!(run("a.other.", 0), (Some(2), 1));
    }

    fn random_cond(rng: &mut Rng) -> (String, String) {
        let field = *rng.pick(&[
            "hook", "dir", "iif", "oif", "src", "dst", "src", "dst", "proto", "sport", "dport",
            "dport", "mark", "dns", "dns-name", "dns-name", "dns-type", "src-mac",
        ]);
        let values = match field {
            "hook" => random_values(
                rng,
                &["prerouting", "input", "forward", "output", "postrouting"],
            ),
            "dir" => random_values(rng, &["in", "out", "forward"]),
            "iif" | "oif" => random_values(
                rng,
                &[
                    "lan0", "wan0", "ppp0", "lan+", "wan+", "+", "eth9", "ppp1", "lo",
                ],
            ),
            "src-mac" if rng.chance(15) => "@macs".to_string(),
            "src-mac" => random_values(rng, &MAC_TEXT),
            "src" | "dst" if rng.chance(15) => "@nets".to_string(),
            "src" | "dst" => random_values(rng, ADDR_PATTERNS),
            "proto" => random_values(rng, &["tcp", "udp", "icmp", "icmpv6"]),
            "sport" | "dport" if rng.chance(15) => "@ports".to_string(),
            "sport" | "dport" => random_values(rng, PORT_PATTERNS),
            "mark" => random_values(rng, MARK_PATTERNS),
            "dns" => random_values(rng, &["query", "response", "any"]),
            "dns-name" if rng.chance(15) => "@names".to_string(),
            "dns-name" => random_values(rng, NAME_PATTERNS),
            _ => random_values(rng, &["A", "AAAA", "TXT", "65"]),
        };
        (field.to_string(), values)
    }

    fn random_rules(rng: &mut Rng, count: usize) -> String {
        let mut text = String::from(
            "set nets addrs { 198.18.0.0/24, 2001:db8::/64, 203.0.113.5 }\n\
             set ports ports { 53, 1000-1499 }\n\
             set names names { *.a.example, portal.example }\n\
             set macs macs { 02:00:00:00:00:01, 02:00:00:00:00:02 }\n",
        );
        for _ in 0..count {
            let mut conds: Vec<(bool, String, String)> = (0..1 + rng.below(3))
                .map(|_| {
                    let (f, v) = random_cond(rng);
                    (rng.chance(20), f, v)
                })
                .collect();
            // A positive proto without tcp/udp beside a positive port is (rightly) an error.
            let portless = conds.iter().any(|(neg, f, v)| {
                !neg && f == "proto" && !v.contains("tcp") && !v.contains("udp")
            });
            let ports = conds
                .iter()
                .any(|(neg, f, _)| !neg && (f == "sport" || f == "dport"));
            if portless && ports {
                conds.retain(|(_, f, _)| f != "proto");
            }
            for (neg, f, v) in conds {
                text.push_str(&format!("{}{f} {v} ", if neg { "! " } else { "" }));
            }
            let action = match rng.below(5) {
                0 => "drop".to_string(),
                1 => "accept nopair".to_string(),
                2 => format!("set-mark {:#x}/0xff repeat", rng.below(256)),
                _ => format!("set-mark {}", rng.below(1000)),
            };
            text.push_str(&action);
            text.push('\n');
        }
        text.push_str("default set-mark 0x5/0xf\n");
        text
    }

    fn random_packet(rng: &mut Rng) -> Pkt {
        let v6 = rng.chance(40);
        let hosts = if v6 { V6_HOSTS } else { V4_HOSTS };
        let (src, dst) = (ip(rng.pick::<&str>(hosts)), ip(rng.pick::<&str>(hosts)));
        let (mut sport, mut dport) = (*rng.pick(PORTS), *rng.pick(PORTS));
        let name = rng
            .pick(NAMES)
            .chars()
            .map(|c| {
                if rng.chance(50) {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect::<String>();
        let qtype = *rng.pick(&[
            RecordType::A,
            RecordType::AAAA,
            RecordType::TXT,
            RecordType::MX,
        ]);
        let response = rng.chance(40);
        let bytes = match rng.below(10) {
            0 => icmp_bytes(src, dst),
            n => {
                let dns = n <= 6;
                if dns {
                    if response {
                        sport = 53;
                    } else {
                        dport = 53;
                    }
                }
                let msg = fixtures::dns_message(7, &format!("{name}."), qtype, response);
                let payload: &[u8] = if dns { &msg } else { b"not dns" };
                if rng.chance(30) {
                    let framed = fixtures::tcp_framed(payload);
                    fixtures::tcp(src, sport, dst, dport, &framed)
                } else {
                    fixtures::udp(src, sport, dst, dport, payload)
                }
            }
        };
        let hook = *rng.pick(&[
            Hook::PreRouting,
            Hook::Input,
            Hook::Forward,
            Hook::Output,
            Hook::PostRouting,
            Hook::Other(7),
        ]);
        let mac = match rng.below(4) {
            0 => None,
            _ => Some(*rng.pick(&MACS)),
        };
        Pkt::new(bytes)
            .hook(hook)
            .mark(*rng.pick(MARKS))
            .devs(
                *rng.pick(&[0, 1, 2, 3, 4, 9]),
                *rng.pick(&[0, 1, 2, 3, 4, 9]),
            )
            .src_mac(mac)
    }

    /// Source MACs of the random packets, and how the random rules write them.
    const MACS: [[u8; 6]; 3] = [[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 3]];
    const MAC_TEXT: [&str; 3] = [
        "02:00:00:00:00:01",
        "02:00:00:00:00:02",
        "02:00:00:00:00:03",
    ];

    /// The obvious reading of the rules, written without any index or precomputed set.
    fn naive(parsed: &Parsed, ctx: &Ctx<'_>) -> Outcome {
        let outcome = |a: &Action, rule| Outcome {
            verdict: a.verdict,
            set_mark: a.set_mark,
            pairing: a.pairing,
            rule,
        };
        for (i, r) in parsed.rules.iter().enumerate() {
            if r.conds
                .iter()
                .all(|c| naive_test(&c.test, ctx) != c.negated)
            {
                return outcome(&r.action, Some(i));
            }
        }
        outcome(&parsed.default, None)
    }

    fn naive_test(test: &defs::Test, ctx: &Ctx<'_>) -> bool {
        use defs::Test as T;
        let p = ctx.packet;
        let in_range = |r: &AddrRange, a: IpAddr| match (r, a) {
            (AddrRange::V4(lo, hi), IpAddr::V4(a)) => (*lo..=*hi).contains(&u32::from(a)),
            (AddrRange::V6(lo, hi), IpAddr::V6(a)) => (*lo..=*hi).contains(&u128::from(a)),
            _ => false,
        };
        let ports = matches!(p.proto, Proto::Tcp | Proto::Udp);
        let question = ctx.dns.and_then(|d| d.question.as_ref());
        match test {
            T::Hook(v) => v.contains(&ctx.meta.hook),
            T::Dir(v) => v.contains(&ctx.meta.direction()),
            // By name, through the test machine's links, with string operations of its own.
            T::Iif(v) | T::Oif(v) => {
                let index = if matches!(test, T::Iif(_)) {
                    ctx.meta.indev
                } else {
                    ctx.meta.outdev
                };
                link_name(index).is_some_and(|name| {
                    v.iter().any(|p| {
                        if p.prefix {
                            name.get(..p.name.len()) == Some(&*p.name)
                        } else {
                            name == &*p.name
                        }
                    })
                })
            }
            T::SrcMac(v) => ctx.meta.src_mac.is_some_and(|m| {
                let n = m.iter().fold(0u64, |acc, b| acc * 256 + u64::from(*b));
                v.contains(&n)
            }),
            T::Src(v) => v.iter().any(|r| in_range(r, p.src)),
            T::Dst(v) => v.iter().any(|r| in_range(r, p.dst)),
            T::Proto(v) => v.contains(&p.proto.number()),
            T::Sport(v) => ports && v.iter().any(|r| (r.lo..=r.hi).contains(&p.sport)),
            T::Dport(v) => ports && v.iter().any(|r| (r.lo..=r.hi).contains(&p.dport)),
            T::Mark(v) => v.iter().any(|(val, mask)| ctx.meta.mark & mask == *val),
            T::Dns(v) => ctx.dns.is_some_and(|d| {
                v.iter().any(|k| match k {
                    DnsKind::Any => true,
                    DnsKind::Query => !d.response,
                    DnsKind::Response => d.response,
                })
            }),
            T::DnsName(v) => question.is_some_and(|q| {
                // Text comparison on the name as sent, independent of the wire-form code.
                let name = q.name().to_ascii().to_ascii_lowercase();
                let name = name.trim_end_matches('.');
                v.iter().any(|pat| {
                    let text = wire_to_text(&pat.wire);
                    if pat.wildcard {
                        name.ends_with(&format!(".{text}"))
                    } else {
                        name == text
                    }
                })
            }),
            T::DnsType(v) => question.is_some_and(|q| v.contains(&q.qtype())),
        }
    }

    #[test]
    fn index_agrees_with_a_linear_scan_on_random_rules_and_packets() {
        let mut rng = Rng(0x5eed_1234_abcd_0042);
        let mut matched = 0usize;
        let mut examined_total = 0usize;
        let mut evaluations = 0usize;
        for round in 0..25 {
            let count = [1, 5, 40, 300][round % 4];
            let text = random_rules(&mut rng, count);
            let parsed = match parse(&text, "r.rules") {
                Ok(p) => p,
                Err(d) => panic!("generated rules do not parse: {d:#?}\n{text}"),
            };
            let rs = rules(&text);
            for _ in 0..600 {
                let p = random_packet(&mut rng);
                p.with(|ctx| {
                    let want = naive(&parsed, ctx);
                    let got = rs.evaluate(ctx);
                    assert_eq!(
                        got, want,
                        "round {round}: packet {:?} {:?}\nrules:\n{text}",
                        ctx.packet, ctx.meta
                    );
                    let mut n = 0;
                    rs.matcher.first_match(ctx, &mut n);
                    examined_total += n;
                    evaluations += 1;
                    matched += usize::from(want.rule.is_some());
                });
            }
        }
        // The test is only worth something if rules do match, and not always the first.
        assert!(matched > evaluations / 4, "{matched} of {evaluations}");
        assert!(matched < evaluations, "{matched} of {evaluations}");
        eprintln!("{evaluations} evaluations, {matched} matched, {examined_total} candidates");
    }
}
