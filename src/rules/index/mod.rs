//! The candidate index: each packet rule filed under one of its (non-negated) matchers, the one
//! expected to select the fewest packets, so a packet looks at a few short lists of rules instead
//! of all of them.
//!
//! DNS names go in a trie of labels read from the right (`names.rs`: exact names and `*.suffix`
//! patterns together, one hash probe per label, stopping at the first label no pattern names),
//! addresses and ports in interval tables (`interval.rs`), marks (one map per mask, for the few
//! most used masks) and source MACs in key maps (`keymap.rs`), protocols, hooks and directions
//! in arrays; rules with nothing to index on go to a catch-all list. Rules filed under an
//! interface are listed by interface pattern; which interface indexes those are changes with the
//! link table, so those lists go to the binding (`../iface.rs`), which hands a packet the lists
//! of its interfaces. A packet draws one list per
//! kind of key (at most [`LISTS`]); a rule can only match a packet that lies in the list it was
//! filed under, which is what lets `matcher.rs` merge the lists in rule order and skip the filed
//! matcher's check.
//!
//! This module owns where each rule is filed and which lists a packet draws. Drawing never
//! allocates, never panics and never reads a clock; building happens once per load. It never
//! decides whether a rule matches (that is `matcher.rs`).

mod interval;
mod keymap;
mod names;
mod sets;

use std::collections::HashMap;
use std::net::IpAddr;

pub(crate) use interval::IntervalIndex;
pub(crate) use keymap::KeyMap;
pub(crate) use names::{NameIndex, NameSet};
pub(crate) use sets::{AddrSet, RangeSet, port_set};

use super::iface::{Interner, View};
use crate::packet::Proto;
use crate::rules::Ctx;
use crate::rules::defs::{AddrRange, Cond, IfPattern, NamePattern, PortRange, RuleDef, Test};
use crate::types::{Direction, Hook};

/// How many distinct `mark` masks get an index of their own; rules with other masks are filed
/// under another matcher or in the catch-all list.
const MARK_MASKS: usize = 4;

/// How many candidate lists one packet can draw from the index (its interfaces' included).
pub(crate) const LISTS: usize = 13 + MARK_MASKS;

/// A MAC address as the key maps hold it: 48 bits, the first byte highest.
pub(crate) fn mac_key(mac: [u8; 6]) -> u64 {
    let [a, b, c, d, e, f] = mac;
    u64::from_be_bytes([0, 0, a, b, c, d, e, f])
}

/// Ports exist only for TCP and UDP.
pub(crate) fn has_ports(proto: Proto) -> bool {
    matches!(proto, Proto::Tcp | Proto::Udp)
}

/// How many packets (as a fraction of all) a positive matcher is expected to let through; the
/// rule is filed under the matcher with the smallest. Only performance depends on this guess.
fn selectivity(test: &Test, masks: &[u32]) -> Option<f64> {
    let addr_fraction = |v: &[AddrRange]| {
        v.iter()
            .map(|r| match r {
                AddrRange::V4(a, b) => (f64::from(b - a) + 1.0) / 4_294_967_296.0,
                AddrRange::V6(a, b) => ((b - a) as f64 + 1.0) / 3.402_823_669_209_385e38,
            })
            .sum::<f64>()
    };
    let port_fraction = |v: &[PortRange]| {
        v.iter()
            .map(|r| (f64::from(r.hi - r.lo) + 1.0) / 65_536.0)
            .sum::<f64>()
    };
    let n = |len: usize| len as f64;
    let ifaces = |v: &[IfPattern]| {
        v.iter()
            .map(|p| if p.prefix { 0.1 } else { 0.05 })
            .sum::<f64>()
    };
    match test {
        Test::DnsName(v) if v.iter().all(|p| !p.wildcard) => Some(1e-6 * n(v.len())),
        Test::DnsName(v) => Some(1e-4 * n(v.len())),
        Test::Src(v) => Some(addr_fraction(v)),
        Test::Dst(v) => Some(addr_fraction(v)),
        Test::Sport(v) => Some(port_fraction(v)),
        Test::Dport(v) => Some(port_fraction(v)),
        Test::Iif(v) => Some(ifaces(v)),
        Test::Oif(v) => Some(ifaces(v)),
        Test::SrcMac(v) => Some(1e-3 * n(v.len())),
        Test::Proto(v) => Some(0.3 * n(v.len())),
        Test::Hook(v) => Some(0.2 * n(v.len())),
        Test::Dir(v) => Some(0.33 * n(v.len())),
        // Mark 0 under a mask is what most packets carry; other values are rarer the more
        // bits the mask holds.
        Test::Mark(v) if v.iter().all(|(_, m)| masks.contains(m)) => Some(
            v.iter()
                .map(|(value, mask)| {
                    if *value == 0 {
                        0.5
                    } else {
                        0.5f64.powi(mask.count_ones().try_into().unwrap_or(32))
                    }
                })
                .sum(),
        ),
        Test::Mark(_) | Test::Dns(_) | Test::DnsType(_) => None,
    }
}

/// The positive matcher a rule is filed under (its index in `conds`), or `None` for the
/// catch-all list. `masks` are the mark masks that have an index.
fn choose(conds: &[Cond], masks: &[u32]) -> Option<usize> {
    conds
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.negated)
        .filter_map(|(i, c)| selectivity(&c.test, masks).map(|s| (s, i)))
        .filter(|(s, _)| *s < 1.0)
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, i)| i)
}

/// The masks of positive `mark` matchers, most used first, at most [`MARK_MASKS`].
fn busiest_masks(rules: &[RuleDef]) -> Vec<u32> {
    let mut uses: HashMap<u32, usize> = HashMap::new();
    for rule in rules {
        for c in rule.conds.iter().filter(|c| !c.negated) {
            if let Test::Mark(v) = &c.test {
                for (_, mask) in v {
                    *uses.entry(*mask).or_default() += 1;
                }
            }
        }
    }
    let mut masks: Vec<(usize, u32)> = uses.into_iter().map(|(m, n)| (n, m)).collect();
    // Most used first; ties by mask, so the choice does not depend on hash order.
    masks.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    masks.into_iter().take(MARK_MASKS).map(|(_, m)| m).collect()
}

fn dir_slot(dir: Direction) -> usize {
    match dir {
        Direction::Incoming => 0,
        Direction::LocalOut => 1,
        Direction::Forwarded => 2,
    }
}

fn hook_slot(hook: Hook) -> Option<usize> {
    match hook {
        Hook::PreRouting => Some(0),
        Hook::Input => Some(1),
        Hook::Forward => Some(2),
        Hook::Output => Some(3),
        Hook::PostRouting => Some(4),
        Hook::Other(_) => None,
    }
}

/// Append `rule` to a list unless it is already last (rules are filed in ascending order).
fn file(list: &mut Vec<u32>, rule: u32) {
    if list.last() != Some(&rule) {
        list.push(rule);
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    names: NameIndex,
    src4: IntervalIndex<u32>,
    dst4: IntervalIndex<u32>,
    src6: IntervalIndex<u128>,
    dst6: IntervalIndex<u128>,
    sport: IntervalIndex<u16>,
    dport: IntervalIndex<u16>,
    macs: KeyMap<u64>,
    /// By protocol number; 256 entries once built.
    proto: Vec<Vec<u32>>,
    hook: [Vec<u32>; 5],
    dir: [Vec<u32>; 3],
    /// (mask, rules by `mark & mask`), at most [`MARK_MASKS`].
    marks: Vec<(u32, KeyMap)>,
    pub(crate) any: Vec<u32>,
}

#[derive(Default)]
struct Entries {
    src4: Vec<(u32, u32, u32)>,
    dst4: Vec<(u32, u32, u32)>,
    src6: Vec<(u128, u128, u32)>,
    dst6: Vec<(u128, u128, u32)>,
    sport: Vec<(u16, u16, u32)>,
    dport: Vec<(u16, u16, u32)>,
}

/// Rules filed under an interface, by pattern id (`iface::Interner`), ascending: the binding
/// turns them into lists by interface index.
#[derive(Debug, Default)]
pub(crate) struct ByPattern {
    pub(crate) iif: Vec<Vec<u32>>,
    pub(crate) oif: Vec<Vec<u32>>,
}

impl ByPattern {
    fn file(lists: &mut Vec<Vec<u32>>, id: u32, rule: u32) {
        let id = id as usize;
        if lists.len() <= id {
            lists.resize_with(id + 1, Vec::new);
        }
        if let Some(list) = lists.get_mut(id) {
            file(list, rule);
        }
    }
}

impl Index {
    /// The index of `rules`, for each rule the condition it is filed under (its index in the
    /// rule's conditions, `None` for rules in the catch-all list), and the rules filed under an
    /// interface by pattern (numbered by `patterns`).
    pub(crate) fn build(
        rules: &[RuleDef],
        patterns: &mut Interner,
    ) -> (Index, Vec<Option<usize>>, ByPattern) {
        let mut by_pattern = ByPattern::default();
        let mut ix = Index {
            proto: vec![Vec::new(); 256],
            ..Index::default()
        };
        let masks = busiest_masks(rules);
        ix.marks = masks.iter().map(|m| (*m, KeyMap::default())).collect();
        let mut e = Entries::default();
        let mut names: Vec<(&NamePattern, u32)> = Vec::new();
        let mut filed = Vec::with_capacity(rules.len());
        for (i, rule) in rules.iter().enumerate() {
            let Ok(r) = u32::try_from(i) else { break };
            let addrs = |v: &[AddrRange], four: &mut Vec<_>, six: &mut Vec<_>| {
                for a in v {
                    match *a {
                        AddrRange::V4(lo, hi) => four.push((lo, hi, r)),
                        AddrRange::V6(lo, hi) => six.push((lo, hi, r)),
                    }
                }
            };
            let chosen = choose(&rule.conds, &masks);
            match chosen.and_then(|c| rule.conds.get(c)).map(|c| &c.test) {
                Some(Test::DnsName(v)) => names.extend(v.iter().map(|p| (p, r))),
                Some(Test::Src(v)) => addrs(v, &mut e.src4, &mut e.src6),
                Some(Test::Dst(v)) => addrs(v, &mut e.dst4, &mut e.dst6),
                Some(Test::Sport(v)) => e.sport.extend(v.iter().map(|p| (p.lo, p.hi, r))),
                Some(Test::Dport(v)) => e.dport.extend(v.iter().map(|p| (p.lo, p.hi, r))),
                Some(Test::Iif(v)) => {
                    for p in v {
                        ByPattern::file(&mut by_pattern.iif, patterns.id(p), r);
                    }
                }
                Some(Test::Oif(v)) => {
                    for p in v {
                        ByPattern::file(&mut by_pattern.oif, patterns.id(p), r);
                    }
                }
                Some(Test::SrcMac(v)) => v.iter().for_each(|m| ix.macs.file(*m, r)),
                Some(Test::Proto(v)) => {
                    for p in v {
                        if let Some(list) = ix.proto.get_mut(usize::from(*p)) {
                            file(list, r);
                        }
                    }
                }
                Some(Test::Hook(v)) => {
                    for h in v {
                        if let Some(list) = hook_slot(*h).and_then(|s| ix.hook.get_mut(s)) {
                            file(list, r);
                        }
                    }
                }
                Some(Test::Dir(v)) => {
                    for d in v {
                        if let Some(list) = ix.dir.get_mut(dir_slot(*d)) {
                            file(list, r);
                        }
                    }
                }
                Some(Test::Mark(v)) => {
                    for (value, mask) in v {
                        if let Some((_, map)) = ix.marks.iter_mut().find(|(m, _)| m == mask) {
                            map.file(*value, r);
                        }
                    }
                }
                Some(_) | None => {
                    ix.any.push(r);
                    filed.push(None);
                    continue;
                }
            }
            filed.push(chosen);
        }
        ix.names = NameIndex::build(names);
        ix.src4 = IntervalIndex::build(&e.src4);
        ix.dst4 = IntervalIndex::build(&e.dst4);
        ix.src6 = IntervalIndex::build(&e.src6);
        ix.dst6 = IntervalIndex::build(&e.dst6);
        ix.sport = IntervalIndex::build(&e.sport);
        ix.dport = IntervalIndex::build(&e.dport);
        (ix, filed, by_pattern)
    }

    /// Add the candidate lists for one packet that are not empty, each sorted by rule number,
    /// to `c` (filled in place: the lists are too big to return by value cheaply); `links` is
    /// what the packet's interfaces mean to the rules.
    #[inline(always)]
    pub(crate) fn candidates<'s>(&'s self, ctx: &Ctx<'_>, links: View<'s>, c: &mut Candidates<'s>) {
        let p = ctx.packet;
        let meta = ctx.meta;
        if let Some(q) = ctx.dns.and_then(|d| d.question.as_ref()) {
            let (exact, below) = self.names.lookup(q.key.wire_name());
            c.push(exact);
            c.push(below);
        }
        match (p.src, p.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                c.push(self.src4.lookup(u32::from(s)));
                c.push(self.dst4.lookup(u32::from(d)));
            }
            (s, d) => {
                c.push(self.lookup6(s, true));
                c.push(self.lookup6(d, false));
            }
        }
        if has_ports(p.proto) {
            c.push(self.sport.lookup(p.sport));
            c.push(self.dport.lookup(p.dport));
        }
        c.push(links.indev.map_or(&[], |l| &l.iif));
        c.push(links.outdev.map_or(&[], |l| &l.oif));
        if let Some(mac) = meta.src_mac {
            c.push(self.macs.get(mac_key(mac)));
        }
        c.push(
            self.proto
                .get(usize::from(p.proto.number()))
                .map_or(&[], Vec::as_slice),
        );
        c.push(
            hook_slot(meta.hook)
                .and_then(|s| self.hook.get(s))
                .map_or(&[], Vec::as_slice),
        );
        c.push(
            self.dir
                .get(dir_slot(meta.direction()))
                .map_or(&[], Vec::as_slice),
        );
        for (mask, rules) in &self.marks {
            c.push(rules.get(meta.mark & mask));
        }
        c.push(&self.any);
    }

    fn lookup6(&self, addr: IpAddr, src: bool) -> &[u32] {
        let table = if src { &self.src6 } else { &self.dst6 };
        match addr {
            IpAddr::V6(a) => table.lookup(u128::from(a)),
            IpAddr::V4(a) => {
                // Mixed families do not occur on the wire; keep to the address's own family.
                let t4 = if src { &self.src4 } else { &self.dst4 };
                t4.lookup(u32::from(a))
            }
        }
    }

    /// Rule numbers stored across all lists (memory use, in tests).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.names.entries()
            + self.macs.entries()
            + self.src4.cells()
            + self.dst4.cells()
            + self.src6.cells()
            + self.dst6.cells()
            + self.sport.cells()
            + self.dport.cells()
            + self.proto.iter().map(Vec::len).sum::<usize>()
            + self.hook.iter().map(Vec::len).sum::<usize>()
            + self.dir.iter().map(Vec::len).sum::<usize>()
            + self.marks.iter().map(|(_, m)| m.entries()).sum::<usize>()
            + self.any.len()
    }
}

/// The non-empty candidate lists of one packet.
pub(crate) struct Candidates<'s> {
    pub(crate) lists: [&'s [u32]; LISTS],
    pub(crate) len: usize,
}

impl<'s> Candidates<'s> {
    pub(crate) fn push(&mut self, list: &'s [u32]) {
        if !list.is_empty()
            && let Some(slot) = self.lists.get_mut(self.len)
        {
            *slot = list;
            self.len += 1;
        }
    }
}
