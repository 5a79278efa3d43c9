//! Checked rules -> an index, and the per-packet evaluation: first matching rule wins.
//!
//! This module owns the hot path of the rule language. Each rule is filed in the index under one
//! of its (non-negated) matchers, the one expected to select the fewest packets: exact DNS names
//! in a hash map, `*.suffix` names in a hash map of wire-form suffixes, addresses and ports in
//! interval tables (a sorted partition of the key space, each cell listing the rules that cover
//! it), interfaces, protocols, hooks and directions in small maps, marks in one hash map per
//! mask (for the few most used masks); rules with nothing to index on go to a catch-all list. A packet looks up one list per kind of key (at most [`LISTS`] lists), and
//! the lists, each sorted by rule number, are merged in rule order while each candidate's full
//! conjunction is checked: the first candidate that matches is the first rule that matches,
//! because a rule can only match a packet that lies in the list it was filed under.
//!
//! Flow rules are matched here too ([`Flows`]): filed by their names in the same kind of name
//! index, they answer "which flow rule, if any, learns this answer for this client", first flow
//! rule in file order winning, apart from the packet rules.
//!
//! Evaluation never allocates, never panics and never reads a clock; building the index happens
//! once per load, off the packet path. Nothing here parses text (that is `parse.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::Name;

use super::parse::{AddrRange, Cond, DnsKind, FlowDef, NamePattern, PortRange, RuleDef, Test};
use super::{Ctx, Outcome};
use crate::engine::{Direction, Hook};
use crate::flows::FlowTarget;
use crate::packet::Proto;

/// How many distinct `mark` masks get an index of their own; rules with other masks are filed
/// under another matcher or in the catch-all list.
const MARK_MASKS: usize = 4;

/// How many candidate lists one packet can draw from the index.
pub(crate) const LISTS: usize = 12 + MARK_MASKS;

// ------------------------------------------------------------------------------------------------
// Hashing.

/// The multiply-rotate hash rustc uses (FxHash): a few cycles per 8 bytes, against SipHash's
/// tens of nanoseconds per lookup. It is not keyed, which is safe here: every key stored in these
/// maps comes from the rules file, so a packet can pick the key it looks up but cannot create
/// collisions between stored keys; a lookup costs one hash and one probe sequence either way.
#[derive(Debug, Clone, Copy, Default)]
struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x517c_c1b7_2722_0a95;

    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            for (w, b) in word.iter_mut().zip(chunk) {
                *w = *b;
            }
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;
type FxMap<K, V> = HashMap<K, V, FxBuild>;
type FxSet<K> = HashSet<K, FxBuild>;

// ------------------------------------------------------------------------------------------------
// Value sets used inside matchers (membership in O(log n) or O(1), whatever their size).

/// Key types of interval tables: ports, IPv4 and IPv6 addresses as integers.
trait Key: Copy + Ord + std::fmt::Debug {
    const MIN: Self;
    fn succ(self) -> Option<Self>;
}

impl Key for u16 {
    const MIN: Self = 0;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Key for u32 {
    const MIN: Self = 0;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

impl Key for u128 {
    const MIN: Self = 0;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// Disjoint, sorted inclusive ranges.
#[derive(Debug, Clone, Default)]
struct RangeSet<K> {
    ranges: Vec<(K, K)>,
}

impl<K: Key> RangeSet<K> {
    fn new(mut ranges: Vec<(K, K)>) -> RangeSet<K> {
        ranges.sort_unstable();
        let mut merged: Vec<(K, K)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                // Overlapping or adjacent: extend.
                Some(last) if last.1.succ().is_none_or(|next| lo <= next) => {
                    last.1 = last.1.max(hi);
                }
                _ => merged.push((lo, hi)),
            }
        }
        RangeSet { ranges: merged }
    }

    fn contains(&self, k: K) -> bool {
        let i = self.ranges.partition_point(|r| r.0 <= k);
        i.checked_sub(1)
            .and_then(|j| self.ranges.get(j))
            .is_some_and(|r| k <= r.1)
    }
}

#[derive(Debug, Clone, Default)]
struct AddrSet {
    v4: RangeSet<u32>,
    v6: RangeSet<u128>,
}

impl AddrSet {
    fn new(ranges: &[AddrRange]) -> AddrSet {
        let v4 = ranges
            .iter()
            .filter_map(|r| match r {
                AddrRange::V4(a, b) => Some((*a, *b)),
                AddrRange::V6(..) => None,
            })
            .collect();
        let v6 = ranges
            .iter()
            .filter_map(|r| match r {
                AddrRange::V6(a, b) => Some((*a, *b)),
                AddrRange::V4(..) => None,
            })
            .collect();
        AddrSet {
            v4: RangeSet::new(v4),
            v6: RangeSet::new(v6),
        }
    }

    fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }
}

fn port_set(ranges: &[PortRange]) -> RangeSet<u16> {
    RangeSet::new(ranges.iter().map(|r| (r.lo, r.hi)).collect())
}

/// The proper suffixes of a wire-form name, longest first, at label boundaries, without the
/// root: for `www.a.example` that is `a.example`, then `example`.
struct Suffixes<'a> {
    wire: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Suffixes<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let len = usize::from(*self.wire.get(self.pos)?);
        if len == 0 {
            return None;
        }
        self.pos += 1 + len;
        let rest = self.wire.get(self.pos..)?;
        match rest.first() {
            Some(0) | None => None,
            Some(_) => Some(rest),
        }
    }
}

fn suffixes(wire: &[u8]) -> Suffixes<'_> {
    Suffixes { wire, pos: 0 }
}

/// Exact names and `*.suffix` patterns, in lower-case wire form.
#[derive(Debug, Clone, Default)]
struct NameSet {
    exact: FxSet<Box<[u8]>>,
    below: FxSet<Box<[u8]>>,
}

impl NameSet {
    fn new(patterns: &[NamePattern]) -> NameSet {
        let mut set = NameSet::default();
        for p in patterns {
            if p.wildcard {
                set.below.insert(p.wire.clone());
            } else {
                set.exact.insert(p.wire.clone());
            }
        }
        set
    }

    fn contains(&self, wire: &[u8]) -> bool {
        self.exact.contains(wire)
            || (!self.below.is_empty() && suffixes(wire).any(|s| self.below.contains(s)))
    }
}

// ------------------------------------------------------------------------------------------------
// Compiled rules.

#[derive(Debug, Clone)]
enum Check {
    Hook(Vec<Hook>),
    Dir(Vec<Direction>),
    Iif(Vec<u32>),
    Oif(Vec<u32>),
    Src(AddrSet),
    Dst(AddrSet),
    Proto(Vec<u8>),
    Sport(RangeSet<u16>),
    Dport(RangeSet<u16>),
    Mark(Vec<(u32, u32)>),
    Dns { query: bool, response: bool },
    DnsName(NameSet),
    DnsType(Vec<u16>),
}

fn has_ports(proto: Proto) -> bool {
    matches!(proto, Proto::Tcp | Proto::Udp)
}

impl Check {
    fn new(test: &Test) -> Check {
        match test {
            Test::Hook(v) => Check::Hook(v.clone()),
            Test::Dir(v) => Check::Dir(v.clone()),
            Test::Iif(v) => Check::Iif(v.clone()),
            Test::Oif(v) => Check::Oif(v.clone()),
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
            Test::DnsName(v) => Check::DnsName(NameSet::new(v)),
            Test::DnsType(v) => Check::DnsType(v.clone()),
        }
    }

    fn holds(&self, ctx: &Ctx<'_>) -> bool {
        let p = ctx.packet;
        let question = ctx.dns.and_then(|d| d.question.as_ref());
        match self {
            Check::Hook(v) => v.contains(&ctx.meta.hook),
            Check::Dir(v) => v.contains(&ctx.meta.direction()),
            Check::Iif(v) => v.contains(&ctx.meta.indev),
            Check::Oif(v) => v.contains(&ctx.meta.outdev),
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

#[derive(Debug, Clone)]
struct Compiled {
    /// (negated, check): all must hold.
    checks: Vec<(bool, Check)>,
    outcome: Outcome,
}

impl Compiled {
    fn matches(&self, ctx: &Ctx<'_>) -> bool {
        self.checks.iter().all(|(neg, c)| c.holds(ctx) != *neg)
    }
}

// ------------------------------------------------------------------------------------------------
// The index.

/// A partition of the key space into cells; each cell lists (sorted, no duplicates) the rules
/// whose ranges cover all of it. Lookup is a binary search.
#[derive(Debug, Clone, Default)]
struct IntervalIndex<K> {
    /// Cell starts, ascending; a cell runs to the next start.
    starts: Vec<K>,
    lists: Vec<Vec<u32>>,
}

impl<K: Key> IntervalIndex<K> {
    /// From (lo, hi, rule) entries, rules ascending.
    fn build(entries: &[(K, K, u32)]) -> IntervalIndex<K> {
        if entries.is_empty() {
            return IntervalIndex {
                starts: Vec::new(),
                lists: Vec::new(),
            };
        }
        let mut bounds: Vec<K> = Vec::with_capacity(entries.len() * 2 + 1);
        bounds.push(K::MIN);
        for (lo, hi, _) in entries {
            bounds.push(*lo);
            bounds.extend(hi.succ());
        }
        bounds.sort_unstable();
        bounds.dedup();
        let mut by_lo: Vec<&(K, K, u32)> = entries.iter().collect();
        by_lo.sort_unstable_by_key(|e| e.0);
        let mut by_end: Vec<(K, u32)> = entries
            .iter()
            .filter_map(|(_, hi, r)| hi.succ().map(|end| (end, *r)))
            .collect();
        by_end.sort_unstable();
        let (mut a, mut b) = (0, 0);
        let mut active: BTreeMap<u32, usize> = BTreeMap::new();
        let mut index = IntervalIndex {
            starts: Vec::with_capacity(bounds.len()),
            lists: Vec::with_capacity(bounds.len()),
        };
        for bound in bounds {
            while let Some((lo, _, rule)) = by_lo.get(a).copied().copied() {
                if lo != bound {
                    break;
                }
                *active.entry(rule).or_insert(0) += 1;
                a += 1;
            }
            while let Some(&(end, rule)) = by_end.get(b) {
                if end != bound {
                    break;
                }
                if let Some(n) = active.get_mut(&rule) {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(&rule);
                    }
                }
                b += 1;
            }
            let list: Vec<u32> = active.keys().copied().collect();
            // Neighbouring cells with the same rules are one cell.
            if index.lists.last() != Some(&list) {
                index.starts.push(bound);
                index.lists.push(list);
            }
        }
        index
    }

    fn lookup(&self, k: K) -> &[u32] {
        let i = self.starts.partition_point(|s| *s <= k);
        i.checked_sub(1)
            .and_then(|j| self.lists.get(j))
            .map_or(&[], Vec::as_slice)
    }

    #[cfg(test)]
    fn cells(&self) -> usize {
        self.lists.iter().map(Vec::len).sum()
    }
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
    match test {
        Test::DnsName(v) if v.iter().all(|p| !p.wildcard) => Some(1e-6 * n(v.len())),
        Test::DnsName(v) => Some(1e-4 * n(v.len())),
        Test::Src(v) => Some(addr_fraction(v)),
        Test::Dst(v) => Some(addr_fraction(v)),
        Test::Sport(v) => Some(port_fraction(v)),
        Test::Dport(v) => Some(port_fraction(v)),
        Test::Iif(v) => Some(0.05 * n(v.len())),
        Test::Oif(v) => Some(0.05 * n(v.len())),
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

/// The positive matcher a rule is filed under, or `None` for the catch-all list. `masks` are
/// the mark masks that have an index.
fn choose<'r>(conds: &'r [Cond], masks: &[u32]) -> Option<&'r Test> {
    conds
        .iter()
        .filter(|c| !c.negated)
        .filter_map(|c| selectivity(&c.test, masks).map(|s| (s, &c.test)))
        .filter(|(s, _)| *s < 1.0)
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, t)| t)
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

/// Rules filed by name: exact names in one hash map, `*.suffix` patterns in another. Shared by
/// the packet-rule index (`dns-name`) and the flow rules (`names`).
#[derive(Debug, Clone, Default)]
struct NameIndex {
    exact: FxMap<Box<[u8]>, Vec<u32>>,
    /// `*.S` patterns by the wire form of S; each list also holds the rules of every shorter
    /// suffix of S, so the longest suffix of a name found here gives all its wildcard rules.
    below: FxMap<Box<[u8]>, Vec<u32>>,
}

impl NameIndex {
    /// From (pattern, rule) entries, rules ascending.
    fn build<'p>(entries: impl IntoIterator<Item = (&'p NamePattern, u32)>) -> NameIndex {
        let mut ix = NameIndex::default();
        let mut below_raw: FxMap<Box<[u8]>, Vec<u32>> = FxMap::default();
        for (p, r) in entries {
            let map = if p.wildcard {
                &mut below_raw
            } else {
                &mut ix.exact
            };
            file(map.entry(p.wire.clone()).or_default(), r);
        }
        ix.below = below_raw
            .keys()
            .map(|key| {
                let mut list: Vec<u32> = std::iter::once(&key[..])
                    .chain(suffixes(key))
                    .filter_map(|s| below_raw.get(s))
                    .flatten()
                    .copied()
                    .collect();
                list.sort_unstable();
                list.dedup();
                (key.clone(), list)
            })
            .collect();
        ix
    }

    /// The rules that name `wire` exactly, and those with a `*.suffix` above it; each sorted.
    fn lookup(&self, wire: &[u8]) -> (&[u32], &[u32]) {
        let exact = self.exact.get(wire).map_or(&[][..], Vec::as_slice);
        let below = if self.below.is_empty() {
            &[][..]
        } else {
            suffixes(wire)
                .find_map(|s| self.below.get(s))
                .map_or(&[][..], Vec::as_slice)
        };
        (exact, below)
    }

    #[cfg(test)]
    fn entries(&self) -> usize {
        map_entries(&self.exact) + map_entries(&self.below)
    }
}

#[derive(Debug, Clone, Default)]
struct Index {
    names: NameIndex,
    src4: IntervalIndex<u32>,
    dst4: IntervalIndex<u32>,
    src6: IntervalIndex<u128>,
    dst6: IntervalIndex<u128>,
    sport: IntervalIndex<u16>,
    dport: IntervalIndex<u16>,
    iif: FxMap<u32, Vec<u32>>,
    oif: FxMap<u32, Vec<u32>>,
    /// By protocol number; 256 entries once built.
    proto: Vec<Vec<u32>>,
    hook: [Vec<u32>; 5],
    dir: [Vec<u32>; 3],
    /// (mask, rules by `mark & mask`), at most [`MARK_MASKS`].
    marks: Vec<(u32, FxMap<u32, Vec<u32>>)>,
    any: Vec<u32>,
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

impl Index {
    fn build(rules: &[RuleDef]) -> Index {
        let mut ix = Index {
            proto: vec![Vec::new(); 256],
            ..Index::default()
        };
        let masks = busiest_masks(rules);
        ix.marks = masks.iter().map(|m| (*m, FxMap::default())).collect();
        let mut e = Entries::default();
        let mut names: Vec<(&NamePattern, u32)> = Vec::new();
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
            match choose(&rule.conds, &masks) {
                Some(Test::DnsName(v)) => names.extend(v.iter().map(|p| (p, r))),
                Some(Test::Src(v)) => addrs(v, &mut e.src4, &mut e.src6),
                Some(Test::Dst(v)) => addrs(v, &mut e.dst4, &mut e.dst6),
                Some(Test::Sport(v)) => e.sport.extend(v.iter().map(|p| (p.lo, p.hi, r))),
                Some(Test::Dport(v)) => e.dport.extend(v.iter().map(|p| (p.lo, p.hi, r))),
                Some(Test::Iif(v)) => v
                    .iter()
                    .for_each(|x| file(ix.iif.entry(*x).or_default(), r)),
                Some(Test::Oif(v)) => v
                    .iter()
                    .for_each(|x| file(ix.oif.entry(*x).or_default(), r)),
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
                            file(map.entry(*value).or_default(), r);
                        }
                    }
                }
                Some(_) | None => ix.any.push(r),
            }
        }
        ix.names = NameIndex::build(names);
        ix.src4 = IntervalIndex::build(&e.src4);
        ix.dst4 = IntervalIndex::build(&e.dst4);
        ix.src6 = IntervalIndex::build(&e.src6);
        ix.dst6 = IntervalIndex::build(&e.dst6);
        ix.sport = IntervalIndex::build(&e.sport);
        ix.dport = IntervalIndex::build(&e.dport);
        ix
    }

    /// The candidate lists for one packet, each sorted by rule number.
    fn lists<'s>(&'s self, ctx: &Ctx<'_>) -> [&'s [u32]; LISTS] {
        let p = ctx.packet;
        let wire = ctx
            .dns
            .and_then(|d| d.question.as_ref())
            .map(|q| q.key.wire_name());
        let (exact, below) = wire.map_or((&[][..], &[][..]), |w| self.names.lookup(w));
        let (src, dst) = match (p.src, p.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (
                self.src4.lookup(u32::from(s)),
                self.dst4.lookup(u32::from(d)),
            ),
            (s, d) => (self.lookup6(s, true), self.lookup6(d, false)),
        };
        let (sport, dport) = if has_ports(p.proto) {
            (self.sport.lookup(p.sport), self.dport.lookup(p.dport))
        } else {
            (&[][..], &[][..])
        };
        let iif = self.iif.get(&ctx.meta.indev).map_or(&[][..], Vec::as_slice);
        let oif = self
            .oif
            .get(&ctx.meta.outdev)
            .map_or(&[][..], Vec::as_slice);
        let proto = self
            .proto
            .get(usize::from(p.proto.number()))
            .map_or(&[][..], Vec::as_slice);
        let hook = hook_slot(ctx.meta.hook)
            .and_then(|s| self.hook.get(s))
            .map_or(&[][..], Vec::as_slice);
        let dir = self
            .dir
            .get(dir_slot(ctx.meta.direction()))
            .map_or(&[][..], Vec::as_slice);
        let mark = |k: usize| {
            self.marks
                .get(k)
                .and_then(|(mask, map)| map.get(&(ctx.meta.mark & mask)))
                .map_or(&[][..], Vec::as_slice)
        };
        [
            exact,
            below,
            src,
            dst,
            sport,
            dport,
            iif,
            oif,
            proto,
            hook,
            dir,
            mark(0),
            mark(1),
            mark(2),
            mark(3),
            &self.any,
        ]
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
    fn entries(&self) -> usize {
        self.names.entries()
            + map_entries(&self.iif)
            + map_entries(&self.oif)
            + self.src4.cells()
            + self.dst4.cells()
            + self.src6.cells()
            + self.dst6.cells()
            + self.sport.cells()
            + self.dport.cells()
            + self.proto.iter().map(Vec::len).sum::<usize>()
            + self.hook.iter().map(Vec::len).sum::<usize>()
            + self.dir.iter().map(Vec::len).sum::<usize>()
            + self
                .marks
                .iter()
                .map(|(_, m)| map_entries(m))
                .sum::<usize>()
            + self.any.len()
    }
}

/// Rule numbers stored in a map's lists.
#[cfg(test)]
fn map_entries<K>(m: &FxMap<K, Vec<u32>>) -> usize {
    m.values().map(Vec::len).sum()
}

/// The rules, compiled and indexed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    rules: Vec<Compiled>,
    index: Index,
}

impl Matcher {
    pub(crate) fn build(rules: &[RuleDef]) -> Matcher {
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(i, r)| Compiled {
                checks: r
                    .conds
                    .iter()
                    .map(|c| (c.negated, Check::new(&c.test)))
                    .collect(),
                outcome: Outcome {
                    verdict: r.action.verdict,
                    set_mark: r.action.set_mark,
                    pairing: r.action.pairing,
                    rule: Some(i),
                },
            })
            .collect();
        Matcher {
            rules: compiled,
            index: Index::build(rules),
        }
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
        let mut lists = self.index.lists(ctx);
        loop {
            let next = lists.iter().filter_map(|l| l.first()).min().copied()?;
            for list in lists.iter_mut() {
                if let Some((&head, rest)) = list.split_first()
                    && head == next
                {
                    *list = rest;
                }
            }
            *examined += 1;
            if let Some(rule) = self.rules.get(next as usize)
                && rule.matches(ctx)
            {
                return Some(rule.outcome);
            }
        }
    }

    /// Rule numbers stored in the index (memory use, roughly, in units of 4 bytes).
    #[cfg(test)]
    pub(crate) fn index_entries(&self) -> usize {
        self.index.entries()
    }
}

// ------------------------------------------------------------------------------------------------
// Flow rules.

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

/// Source prefixes as text, per family (see [`Flows::clients`]).
pub(crate) type FlowClients = (Option<Vec<String>>, Option<Vec<String>>);

/// The flow rules, compiled and filed by name.
#[derive(Debug, Clone, Default)]
pub(crate) struct Flows {
    rules: Vec<CompiledFlow>,
    names: NameIndex,
    clients: FlowClients,
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
            clients: flow_clients(defs),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    /// The first flow rule whose client matchers hold and whose names match any of `names`.
    /// Does not allocate: each name is put in wire form on the stack, then looked up.
    pub(crate) fn target(&self, client: IpAddr, mark: u32, names: &[Name]) -> Option<FlowTarget> {
        if self.rules.is_empty() {
            return None;
        }
        let mut best: Option<u32> = None;
        let mut buf = [0u8; 256];
        for name in names {
            let Some(wire) = wire_form(name, &mut buf) else {
                continue;
            };
            let (exact, below) = self.names.lookup(wire);
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

    /// Source prefixes the flow rules can match, per family (IPv4, IPv6): `None` when no flow
    /// rule can match a client of that family, an empty list when one matches every client.
    pub(crate) fn clients(&self) -> &FlowClients {
        &self.clients
    }
}

/// `name` in lower-case wire form (length-prefixed labels, ending in 0), written into `buf`;
/// `None` if it cannot be a DNS name (longer than 255 bytes, or a label over 63).
fn wire_form<'b>(name: &Name, buf: &'b mut [u8; 256]) -> Option<&'b [u8]> {
    let mut n = 0;
    for label in name.iter() {
        let len = u8::try_from(label.len()).ok().filter(|l| *l <= 63)?;
        let (head, rest) = buf.get_mut(n..=n + label.len())?.split_first_mut()?;
        *head = len;
        for (d, s) in rest.iter_mut().zip(label) {
            *d = s.to_ascii_lowercase();
        }
        n += 1 + label.len();
    }
    *buf.get_mut(n)? = 0;
    buf.get(..=n).filter(|w| w.len() <= 255)
}

/// What the flow rules need queued, per family: see [`Flows::clients`]. A rule with positive
/// `src` matchers can only match clients inside each of them, so the one covering the fewest
/// addresses of a family stands for the rule (a superset of its clients when it has several);
/// a rule without one (no `src`, or only `! src`) can match any client. Rules without names
/// can never match and need nothing.
fn flow_clients(defs: &[FlowDef]) -> FlowClients {
    #[derive(Default)]
    struct Family<K> {
        all: bool,
        ranges: Vec<(K, K)>,
        any: bool,
    }
    let mut v4: Family<u32> = Family::default();
    let mut v6: Family<u128> = Family::default();
    for def in defs.iter().filter(|d| !d.names.is_empty()) {
        let positive: Vec<&[AddrRange]> = def
            .conds
            .iter()
            .filter(|c| !c.negated)
            .filter_map(|c| match &c.test {
                Test::Src(v) => Some(v.as_slice()),
                _ => None,
            })
            .collect();
        if positive.is_empty() {
            v4.all = true;
            v6.all = true;
            continue;
        }
        let pick4: Vec<Vec<(u32, u32)>> = positive
            .iter()
            .map(|v| {
                v.iter()
                    .filter_map(|r| match r {
                        AddrRange::V4(a, b) => Some((*a, *b)),
                        AddrRange::V6(..) => None,
                    })
                    .collect()
            })
            .collect();
        let pick6: Vec<Vec<(u128, u128)>> = positive
            .iter()
            .map(|v| {
                v.iter()
                    .filter_map(|r| match r {
                        AddrRange::V6(a, b) => Some((*a, *b)),
                        AddrRange::V4(..) => None,
                    })
                    .collect()
            })
            .collect();
        add_tightest(&mut v4, pick4, |(a, b)| f64::from(b - a) + 1.0);
        add_tightest(&mut v6, pick6, |(a, b)| (b - a) as f64 + 1.0);
    }

    /// Of one rule's positive `src` matchers (their ranges in this family), file the one that
    /// covers the fewest addresses; none if any of them has no range in this family.
    fn add_tightest<K: Key>(
        family: &mut Family<K>,
        matchers: Vec<Vec<(K, K)>>,
        size: impl Fn((K, K)) -> f64,
    ) {
        if matchers.iter().any(Vec::is_empty) {
            return;
        }
        let tightest = matchers.into_iter().min_by(|a, b| {
            let total = |v: &Vec<(K, K)>| v.iter().map(|r| size(*r)).sum::<f64>();
            total(a).total_cmp(&total(b))
        });
        if let Some(ranges) = tightest {
            family.any = true;
            family.ranges.extend(ranges);
        }
    }

    /// Sorted, without prefixes inside other prefixes; `None` for a whole family.
    fn outermost<K: Key>(mut ranges: Vec<(K, K)>, whole: (K, K)) -> Option<Vec<(K, K)>> {
        if ranges.contains(&whole) {
            return None;
        }
        ranges.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut out: Vec<(K, K)> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match out.last() {
                Some(last) if r.1 <= last.1 => {}
                _ => out.push(r),
            }
        }
        Some(out)
    }

    let text4 = |(a, b): (u32, u32)| format!("{}/{}", Ipv4Addr::from(a), (a ^ b).leading_zeros());
    let text6 = |(a, b): (u128, u128)| format!("{}/{}", Ipv6Addr::from(a), (a ^ b).leading_zeros());
    let v4 = match v4 {
        Family { all: true, .. } => Some(Vec::new()),
        Family { any: false, .. } => None,
        Family { ranges, .. } => Some(
            outermost(ranges, (0, u32::MAX))
                .map_or_else(Vec::new, |r| r.into_iter().map(text4).collect()),
        ),
    };
    let v6 = match v6 {
        Family { all: true, .. } => Some(Vec::new()),
        Family { any: false, .. } => None,
        Family { ranges, .. } => Some(
            outermost(ranges, (0, u128::MAX))
                .map_or_else(Vec::new, |r| r.into_iter().map(text6).collect()),
        ),
    };
    (v4, v6)
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use etherparse::PacketBuilder;
    use hickory_proto::rr::RecordType;

    use super::super::parse::{self, Action, Parsed};
    use super::super::{Ctx, Outcome, RuleSet};
    use super::*;
    use crate::engine::{Meta, Verdict};
    use crate::{dns, fixtures, packet};

    fn ifaces(name: &str) -> Option<u32> {
        match name {
            "lan0" => Some(2),
            "wan0" => Some(3),
            _ => None,
        }
    }

    fn rules(text: &str) -> RuleSet {
        match RuleSet::parse(text, "t.rules", &ifaces) {
            Ok(r) => r,
            Err(d) => panic!("{d:#?}"),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("bad test address {s}"))
    }

    /// A packet as the engine would hand it to the rules.
    struct Pkt {
        bytes: Vec<u8>,
        meta: Meta,
    }

    impl Pkt {
        fn new(bytes: Vec<u8>) -> Pkt {
            Pkt {
                bytes,
                meta: Meta {
                    hook: Hook::Input,
                    mark: 0,
                    indev: 2,
                    outdev: 0,
                },
            }
        }

        fn hook(mut self, hook: Hook) -> Pkt {
            self.meta.hook = hook;
            self
        }

        fn mark(mut self, mark: u32) -> Pkt {
            self.meta.mark = mark;
            self
        }

        fn devs(mut self, indev: u32, outdev: u32) -> Pkt {
            self.meta.indev = indev;
            self.meta.outdev = outdev;
            self
        }

        /// Parse it as the engine does (DNS read on port 53) and run `f` on the context.
        fn with<T>(&self, f: impl FnOnce(&Ctx<'_>) -> T) -> T {
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

        fn eval(&self, rs: &RuleSet) -> Outcome {
            self.with(|ctx| rs.evaluate(ctx))
        }

        /// Index of the rule that matched, `None` for the default.
        fn rule(&self, rs: &RuleSet) -> Option<usize> {
            self.eval(rs).rule
        }
    }

    fn udp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        Pkt::new(fixtures::udp(ip(src), sport, ip(dst), dport, b"hello"))
    }

    fn tcp(src: &str, sport: u16, dst: &str, dport: u16) -> Pkt {
        Pkt::new(fixtures::tcp(ip(src), sport, ip(dst), dport, b"hello"))
    }

    /// An ICMP (or ICMPv6) echo request.
    fn icmp_bytes(src: IpAddr, dst: IpAddr) -> Vec<u8> {
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

    fn icmp(src: &str, dst: &str) -> Pkt {
        Pkt::new(icmp_bytes(ip(src), ip(dst)))
    }

    /// A DNS query over UDP from a client to the resolver.
    fn query(name: &str, qtype: RecordType) -> Pkt {
        let msg = fixtures::dns_message(7, name, qtype, false);
        Pkt::new(fixtures::udp(
            ip("198.18.0.10"),
            40000,
            ip("198.18.0.1"),
            53,
            &msg,
        ))
    }

    fn answer(name: &str) -> Pkt {
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
    fn overlapping_ranges_are_split_into_cells() {
        let ix = IntervalIndex::build(&[(10u16, 20, 0), (15, 30, 1), (0, 65535, 2), (20, 20, 3)]);
        assert_eq!(ix.lookup(0), &[2]);
        assert_eq!(ix.lookup(10), &[0, 2]);
        assert_eq!(ix.lookup(15), &[0, 1, 2]);
        assert_eq!(ix.lookup(20), &[0, 1, 2, 3]);
        assert_eq!(ix.lookup(21), &[1, 2]);
        assert_eq!(ix.lookup(31), &[2]);
        assert_eq!(ix.lookup(65535), &[2]);
        let ix = IntervalIndex::<u32>::build(&[]);
        assert_eq!(ix.lookup(5), &[] as &[u32]);
    }

    #[test]
    fn range_sets_merge_and_find() {
        let s = RangeSet::new(vec![(5u16, 9), (1, 2), (3, 4), (20, 30), (25, 26)]);
        assert_eq!(s.ranges, vec![(1, 9), (20, 30)]);
        assert!(s.contains(1) && s.contains(9) && s.contains(25));
        assert!(!s.contains(0) && !s.contains(10) && !s.contains(31));
        let all = RangeSet::new(vec![(0u16, u16::MAX), (7, 8)]);
        assert!(all.contains(0) && all.contains(u16::MAX));
    }

    #[test]
    fn suffixes_walk_label_boundaries() {
        let wire = b"\x03www\x01a\x07example\x00";
        let got: Vec<&[u8]> = suffixes(wire).collect();
        assert_eq!(
            got,
            vec![&b"\x01a\x07example\x00"[..], &b"\x07example\x00"[..]]
        );
        assert_eq!(suffixes(b"\x00").count(), 0);
        assert_eq!(suffixes(b"\x07example\x00").count(), 0);
        // Malformed input ends the walk instead of panicking.
        assert_eq!(suffixes(b"\x09ab").count(), 0);
        assert_eq!(suffixes(b"").count(), 0);
    }

    // --- the index against a naive linear scan -------------------------------------------------

    /// splitmix64: small, deterministic, good enough to spread test cases.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }
    }

    const V4_HOSTS: &[&str] = &[
        "198.18.0.1",
        "198.18.0.2",
        "198.18.0.9",
        "198.18.1.1",
        "198.18.1.200",
        "198.19.255.254",
        "203.0.113.5",
    ];
    const V6_HOSTS: &[&str] = &[
        "2001:db8::1",
        "2001:db8::2",
        "2001:db8:0:1::9",
        "2001:db8:1::1",
        "2001:db8:ffff::5",
        "2001:db9::1",
    ];
    const ADDR_PATTERNS: &[&str] = &[
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
    const PORTS: &[u16] = &[25, 53, 80, 443, 1000, 1500, 2000, 40000, 65535];
    const PORT_PATTERNS: &[&str] = &[
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
    const NAMES: &[&str] = &[
        "a.example",
        "b.example",
        "www.a.example",
        "x.www.a.example",
        "portal.example",
        "login.portal.example",
        "example",
        "other.test",
    ];
    const NAME_PATTERNS: &[&str] = &[
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
    const MARK_PATTERNS: &[&str] = &[
        "0",
        "0x1",
        "0x1/0x1",
        "0/0x1",
        "0x100/0xff00",
        "0x2/0xf",
        "0x10/0x10",
    ];
    const MARKS: &[u32] = &[0, 1, 2, 0x101, 0x100, 0x1ff, 0x202, 0x10, 0xdead_beef];

    fn random_values(rng: &mut Rng, pool: &[&str]) -> String {
        let n = 1 + rng.below(3);
        (0..n)
            .map(|_| *rng.pick(pool))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn random_cond(rng: &mut Rng) -> (String, String) {
        let field = *rng.pick(&[
            "hook", "dir", "iif", "oif", "src", "dst", "src", "dst", "proto", "sport", "dport",
            "dport", "mark", "dns", "dns-name", "dns-name", "dns-type",
        ]);
        let values = match field {
            "hook" => random_values(
                rng,
                &["prerouting", "input", "forward", "output", "postrouting"],
            ),
            "dir" => random_values(rng, &["in", "out", "forward"]),
            "iif" | "oif" => random_values(rng, &["lan0", "wan0"]),
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
             set names names { *.a.example, portal.example }\n",
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
        Pkt::new(bytes)
            .hook(hook)
            .mark(*rng.pick(MARKS))
            .devs(*rng.pick(&[0, 2, 3]), *rng.pick(&[0, 2, 3]))
    }

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

    fn naive_test(test: &parse::Test, ctx: &Ctx<'_>) -> bool {
        use parse::Test as T;
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
            T::Iif(v) => v.contains(&ctx.meta.indev),
            T::Oif(v) => v.contains(&ctx.meta.outdev),
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

    fn wire_to_text(wire: &[u8]) -> String {
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

    #[test]
    fn index_agrees_with_a_linear_scan_on_random_rules_and_packets() {
        let mut rng = Rng(0x5eed_1234_abcd_0042);
        let mut matched = 0usize;
        let mut examined_total = 0usize;
        let mut evaluations = 0usize;
        for round in 0..25 {
            let count = [1, 5, 40, 300][round % 4];
            let text = random_rules(&mut rng, count);
            let parsed = match parse::parse(&text, "r.rules", &ifaces) {
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

    // --- flow rules ---------------------------------------------------------------------------

    /// Names as the engine passes them: lower-case, question first, then each CNAME target.
    fn chain(names: &[&str]) -> Vec<Name> {
        names
            .iter()
            .map(|n| match Name::from_ascii(n) {
                Ok(name) => name.to_lowercase(),
                Err(e) => panic!("bad test name {n}: {e}"),
            })
            .collect()
    }

    /// (rule index, mark, by_mark) of the flow target, for short assertions.
    fn flow(rs: &RuleSet, client: &str, mark: u32, names: &[&str]) -> Option<usize> {
        rs.flow_target(ip(client), mark, &chain(names))
            .map(|t| t.rule)
    }

    const VIDEO: &str = "\
flow src 198.18.1.0/24, 2001:db8:1::/64 names *.video.example, video.example set-mark 0x20/0xff
";

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
    fn flow_clients_per_family() {
        let clients = |text: &str| rules(text).flow_clients();
        let none: (Option<Vec<String>>, Option<Vec<String>>) = (None, None);
        assert_eq!(clients("dport 443 accept\n"), none);
        assert_eq!(
            clients(VIDEO),
            (
                Some(vec!["198.18.1.0/24".to_string()]),
                Some(vec!["2001:db8:1::/64".to_string()])
            )
        );
        // Mixed rules: v4 only from these, sorted, nested prefixes and repeats left out.
        assert_eq!(
            clients(
                "set lan addrs { 198.18.2.0/24, 198.18.1.7 }\n\
                 flow src 198.18.1.0/24 names a.example set-mark 1\n\
                 flow src @lan, 198.18.1.0/24 names b.example set-mark 2\n\
                 flow src 198.18.3.4 names c.example set-mark 3\n"
            ),
            (
                Some(vec![
                    "198.18.1.0/24".to_string(),
                    "198.18.2.0/24".to_string(),
                    "198.18.3.4/32".to_string()
                ]),
                None
            )
        );
        // A rule for every client of one family.
        assert_eq!(
            clients(
                "flow src 198.18.1.0/24 names a.example set-mark 1\n\
                 flow src ::/0 names b.example set-mark 2\n"
            ),
            (Some(vec!["198.18.1.0/24".to_string()]), Some(vec![]))
        );
        // No src, or only a negated one: every client of both families.
        for text in [
            "flow names a.example set-mark 1\n",
            "flow ! src 198.18.9.0/24 names a.example set-mark 1\n",
            "flow mark 0x1/0x1 names a.example set-mark 1\n\
             flow src 198.18.1.0/24 names a.example set-mark 1\n",
        ] {
            assert_eq!(clients(text), (Some(vec![]), Some(vec![])), "{text}");
        }
        // Several positive src matchers: the tightest stands for the rule; a family one of them
        // leaves out is out.
        assert_eq!(
            clients(
                "flow src 198.18.0.0/16, 2001:db8::/32 src 198.18.5.0/24 names a.example \
                 set-mark 1\n"
            ),
            (Some(vec!["198.18.5.0/24".to_string()]), None)
        );
        // A rule whose names are an empty set can never match.
        assert_eq!(
            clients("set none names { }\nflow names @none set-mark 1\n"),
            none
        );
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

    #[test]
    fn wire_form_lower_cases_and_refuses_nothing_real() {
        let mut buf = [0u8; 256];
        let n = Name::from_ascii("WWW.Example.COM").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            wire_form(&n, &mut buf),
            Some(&b"\x03www\x07example\x03com\x00"[..])
        );
        assert_eq!(wire_form(&Name::root(), &mut buf), Some(&b"\x00"[..]));
        let long = vec!["a".repeat(63); 3].join(".") + "." + &"b".repeat(61);
        let n = Name::from_ascii(&long).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(wire_form(&n, &mut buf).map(<[u8]>::len), Some(255));
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
                    parse::Test::Src(v) => v.iter().any(in_range),
                    parse::Test::Mark(v) => v.iter().any(|(value, mask)| mark & mask == *value),
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
            let parsed = match parse::parse(&text, "r.rules", &ifaces) {
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
                let hickory: Vec<Name> = names
                    .iter()
                    .map(|n| Name::from_ascii(n).unwrap_or_else(|e| panic!("{e}")))
                    .collect();
                let want = naive_flow(&parsed, client, mark, &names);
                let got = rs.flow_target(client, mark, &hickory);
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
