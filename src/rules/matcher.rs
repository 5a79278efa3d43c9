//! Checked rules -> an index, and the per-packet evaluation: first matching rule wins.
//!
//! This module owns the hot path of the rule language. Each rule is filed in the index under one
//! of its (non-negated) matchers, the one expected to select the fewest packets: DNS names in a
//! trie of labels read from the right (exact names and `*.suffix` patterns together: one hash
//! probe per label, stopping at the first label no pattern names), addresses and ports in
//! interval tables (a sorted partition of the key space, each cell listing the rules that cover
//! it, with a bitmap of the keys' high bits that answers most misses at once), interfaces and
//! marks (one map per mask, for the few most used masks) in small maps, protocols, hooks and
//! directions in arrays; rules with nothing to index on go to a catch-all list. A packet looks
//! up one list per kind of key (at most [`LISTS`] lists), keeps those that are not empty, and
//! merges them in rule order while each candidate's conjunction is checked: the first candidate
//! that matches is the first rule that matches, because a rule can only match a packet that lies
//! in the list it was filed under. For the same reason the matcher a rule is filed under is not
//! checked again: reaching the rule through its list proves it.
//!
//! Flow rules are matched here too ([`Flows`]): filed by their names in the same kind of name
//! index, they answer "which flow rule, if any, learns this answer for this client", first flow
//! rule in file order winning, apart from the packet rules.
//!
//! Evaluation never allocates, never panics and never reads a clock; building the index happens
//! once per load, off the packet path. Nothing here parses text (that is `parse.rs`).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::rr::Name;

use super::defs::{AddrRange, Cond, DnsKind, FlowDef, NamePattern, PortRange, RuleDef, Test};
use super::{Ctx, Outcome};
use crate::flows::FlowTarget;
use crate::packet::Proto;
use crate::types::{Direction, Hook};

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
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            if let Some(word) = chunk.first_chunk::<8>() {
                self.add(u64::from_le_bytes(*word));
            }
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            for (w, b) in word.iter_mut().zip(rest) {
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

    /// hashbrown picks the bucket with the low bits of the hash, where a product holds little
    /// of its inputs (keys like `mark & 0xffff0000` would share one bucket): bring the well
    /// mixed high bits down, as rustc-hash 2 does.
    fn finish(&self) -> u64 {
        self.hash.rotate_left(26)
    }
}

type FxBuild = BuildHasherDefault<FxHasher>;
type FxMap<K, V> = HashMap<K, V, FxBuild>;

// ------------------------------------------------------------------------------------------------
// Value sets used inside matchers (membership in O(log n) or O(1), whatever their size).

/// Key types of interval tables: ports, IPv4 and IPv6 addresses as integers.
trait Key: Copy + Ord + Default + std::fmt::Debug {
    const MIN: Self;
    const MAX: Self;
    fn succ(self) -> Option<Self>;
    fn pred(self) -> Option<Self>;
    /// The key's 16 high bits, for an occupancy bitmap; `None` where they tell nothing
    /// (IPv6: most addresses share them).
    fn bucket(self) -> Option<usize>;
    /// The first and last key of a bucket.
    fn bucket_keys(bucket: usize) -> Option<(Self, Self)>;
}

impl Key for u16 {
    const MIN: Self = 0;
    const MAX: Self = u16::MAX;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn pred(self) -> Option<Self> {
        self.checked_sub(1)
    }
    fn bucket(self) -> Option<usize> {
        Some(usize::from(self))
    }
    fn bucket_keys(bucket: usize) -> Option<(Self, Self)> {
        let k = u16::try_from(bucket).ok()?;
        Some((k, k))
    }
}

impl Key for u32 {
    const MIN: Self = 0;
    const MAX: Self = u32::MAX;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn pred(self) -> Option<Self> {
        self.checked_sub(1)
    }
    fn bucket(self) -> Option<usize> {
        Some((self >> 16) as usize)
    }
    fn bucket_keys(bucket: usize) -> Option<(Self, Self)> {
        let first = u32::try_from(bucket).ok()?.checked_mul(1 << 16)?;
        Some((first, first | 0xffff))
    }
}

impl Key for u128 {
    const MIN: Self = 0;
    const MAX: Self = u128::MAX;
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn pred(self) -> Option<Self> {
        self.checked_sub(1)
    }
    fn bucket(self) -> Option<usize> {
        None
    }
    fn bucket_keys(_: usize) -> Option<(Self, Self)> {
        None
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

// ------------------------------------------------------------------------------------------------
// Names: a trie of labels, read from the right, with hashed edges.
//
// `www.a.example` is found by following `example`, then `a` under it, then `www` under that: the
// walk hashes each label once, copies nothing and stops at the first label the rules never
// named below the suffix walked so far, so a name under no pattern costs one or two probes
// whatever its length. Each node keeps the rules naming it exactly and the rules of every
// `*.suffix` at or above it, so the deepest node reached answers for all wildcards at once.

/// The most labels a wire-form name of at most 255 bytes can have (each takes at least 2).
const MAX_LABELS: usize = 127;

/// The offset of each label's length byte in a wire-form name, left to right, written into
/// `starts`, and the number of labels (the root not counted). `None` unless `wire` is exactly one
/// name of at most 255 bytes: labels within the bytes, ending in the root label, nothing after.
fn label_starts(wire: &[u8], starts: &mut [u8; MAX_LABELS]) -> Option<usize> {
    if wire.len() > 255 {
        return None;
    }
    let (mut pos, mut n) = (0usize, 0usize);
    loop {
        let len = usize::from(*wire.get(pos)?);
        if len == 0 {
            return (pos + 1 == wire.len()).then_some(n);
        }
        *starts.get_mut(n)? = u8::try_from(pos).ok()?;
        n += 1;
        pos += 1 + len;
    }
}

/// `n` (at most 8) bytes of `wire` from `at`, as a little-endian word, the other bytes zero:
/// one 8-byte load when the name goes on that far, which it does for all but its last labels.
fn word(wire: &[u8], at: usize, n: usize) -> u64 {
    let tail = wire.get(at..).unwrap_or_default();
    let raw = match tail.first_chunk::<8>() {
        Some(bytes) => u64::from_le_bytes(*bytes),
        None => {
            let mut bytes = [0u8; 8];
            for (d, s) in bytes.iter_mut().zip(tail) {
                *d = *s;
            }
            u64::from_le_bytes(bytes)
        }
    };
    if n >= 8 {
        raw
    } else {
        raw & ((1u64 << (8 * n)) - 1)
    }
}

/// The parent of the nodes of top-level labels (`example` in `www.a.example`).
const ROOT: u32 = u32::MAX;

/// A label under a node, as the trie compares it: the hash of (parent, label), and the parent,
/// length and first 8 bytes, which settle equality for labels of up to 8 bytes.
#[derive(Debug, Clone, Copy)]
struct Edge {
    hash: u64,
    parent: u32,
    len: u8,
    head: u64,
}

impl Edge {
    /// The label whose length byte is `wire[start]`, under `parent`.
    fn new(parent: u32, wire: &[u8], start: usize) -> Edge {
        let len = wire.get(start).copied().unwrap_or(0);
        let (n, at) = (usize::from(len), start + 1);
        let head = word(wire, at, n.min(8));
        let mut h = FxHasher::default();
        h.add((u64::from(parent) << 8) | u64::from(len));
        h.add(head);
        let mut off = 8;
        while off < n {
            h.add(word(wire, at + off, (n - off).min(8)));
            off += 8;
        }
        Edge {
            hash: h.hash,
            parent,
            len,
            head,
        }
    }
}

/// The part of a hash kept in a slot, to pass over most other nodes without reading them.
fn tag(hash: u64) -> u32 {
    (hash >> 16) as u32
}

/// A run of rule numbers in [`NameIndex::lists`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    len: u32,
}

#[derive(Debug, Clone)]
struct Node {
    parent: u32,
    len: u8,
    head: u64,
    /// The label's bytes after the first 8.
    tail: Box<[u8]>,
    /// No pattern names anything below this node.
    leaf: bool,
    /// Rules that name this node's name exactly.
    exact: Span,
    /// Rules with `*.S` for S this node's name or any suffix of it: all the wildcard rules of
    /// any name below this node.
    below: Span,
}

/// Rules filed by name (exact names and `*.suffix` patterns), in a trie of labels: shared by the
/// packet-rule index (`dns-name`), the `dns-name` check itself, and flow rules (`names`).
#[derive(Debug, Clone, Default)]
struct NameIndex {
    /// Open addressing, linear probing, at most half full: `tag << 32 | (node + 1)`, 0 for an
    /// empty slot. A power of two long, or empty when there are no nodes.
    slots: Box<[u64]>,
    /// 64 - log2(slots.len()): the first slot of a hash is its top bits.
    shift: u32,
    nodes: Vec<Node>,
    /// Every node's rule lists, end to end; each list is sorted, without duplicates.
    lists: Vec<u32>,
    /// Rules naming the root exactly, and `*.` rules (any name but the root).
    root_exact: Span,
    root_below: Span,
}

impl NameIndex {
    /// From (pattern, rule) entries. Patterns that are not wire-form names are left out.
    fn build<'p>(entries: impl IntoIterator<Item = (&'p NamePattern, u32)>) -> NameIndex {
        struct Raw {
            edge: Edge,
            tail: Box<[u8]>,
            exact: Vec<u32>,
            below: Vec<u32>,
        }
        let mut ids: FxMap<(u32, Box<[u8]>), u32> = FxMap::default();
        let mut raw: Vec<Raw> = Vec::new();
        let (mut root_exact, mut root_below) = (Vec::new(), Vec::new());
        let mut starts = [0u8; MAX_LABELS];
        for (p, rule) in entries {
            let Some(n) = label_starts(&p.wire, &mut starts) else {
                continue;
            };
            let mut node = ROOT;
            for start in starts.get(..n).unwrap_or_default().iter().rev() {
                let start = usize::from(*start);
                let len = usize::from(p.wire.get(start).copied().unwrap_or(0));
                let label = p.wire.get(start + 1..start + 1 + len).unwrap_or_default();
                let next = u32::try_from(raw.len()).unwrap_or(ROOT);
                let id = *ids.entry((node, label.into())).or_insert_with(|| {
                    raw.push(Raw {
                        edge: Edge::new(node, &p.wire, start),
                        tail: label.get(8..).unwrap_or_default().into(),
                        exact: Vec::new(),
                        below: Vec::new(),
                    });
                    next
                });
                node = id;
            }
            let (exact, below) = match raw.get_mut(node as usize) {
                Some(r) => (&mut r.exact, &mut r.below),
                None => (&mut root_exact, &mut root_below),
            };
            if p.wildcard {
                below.push(rule);
            } else {
                exact.push(rule);
            }
        }

        let mut ix = NameIndex::default();
        ix.root_exact = ix.push_list(root_exact);
        ix.root_below = ix.push_list(root_below);
        let mut hashes = Vec::with_capacity(raw.len());
        for r in raw {
            // Parents come before their children: a node's parent is complete already.
            let inherited = match ix.nodes.get_mut(r.edge.parent as usize) {
                Some(p) => {
                    p.leaf = false;
                    p.below
                }
                None => ix.root_below,
            };
            let below = if r.below.is_empty() {
                inherited
            } else {
                let mut all = ix.list(inherited).to_vec();
                all.extend(r.below);
                ix.push_list(all)
            };
            let exact = ix.push_list(r.exact);
            hashes.push(r.edge.hash);
            ix.nodes.push(Node {
                parent: r.edge.parent,
                len: r.edge.len,
                head: r.edge.head,
                tail: r.tail,
                leaf: true,
                exact,
                below,
            });
        }

        let size = (ix.nodes.len() * 2).next_power_of_two().max(8);
        let mask = size - 1;
        ix.shift = 64 - size.trailing_zeros();
        let mut slots = vec![0u64; size];
        for (id, hash) in (1u32..).zip(hashes) {
            let mut s = (hash >> ix.shift) as usize;
            while let Some(slot) = slots.get_mut(s & mask) {
                if *slot == 0 {
                    *slot = (u64::from(tag(hash)) << 32) | u64::from(id);
                    break;
                }
                s = (s & mask) + 1;
            }
        }
        if !ix.nodes.is_empty() {
            ix.slots = slots.into_boxed_slice();
        }
        ix
    }

    /// Sort and deduplicate `rules` and append them to the lists.
    fn push_list(&mut self, mut rules: Vec<u32>) -> Span {
        rules.sort_unstable();
        rules.dedup();
        let start = u32::try_from(self.lists.len()).unwrap_or(u32::MAX);
        let len = u32::try_from(rules.len()).unwrap_or(0);
        self.lists.extend(rules);
        Span { start, len }
    }

    fn list(&self, span: Span) -> &[u32] {
        let start = span.start as usize;
        self.lists
            .get(start..start + span.len as usize)
            .unwrap_or_default()
    }

    /// The node for the label whose length byte is `wire[start]`, under `parent`.
    fn find(&self, parent: u32, wire: &[u8], start: usize) -> Option<(u32, &Node)> {
        let mask = self.slots.len().checked_sub(1)?;
        let edge = Edge::new(parent, wire, start);
        let tag = tag(edge.hash);
        let mut s = (edge.hash >> self.shift) as usize;
        loop {
            // At most half the slots are taken: the probe ends at an empty one.
            let slot = *self.slots.get(s & mask)?;
            if slot == 0 {
                return None;
            }
            if (slot >> 32) as u32 == tag {
                let id = (slot as u32).wrapping_sub(1);
                if let Some(node) = self.nodes.get(id as usize)
                    && node.parent == parent
                    && node.len == edge.len
                    && node.head == edge.head
                    && (edge.len <= 8
                        || wire.get(start + 9..start + 1 + usize::from(edge.len))
                            == Some(&node.tail[..]))
                {
                    return Some((id, node));
                }
            }
            s = (s & mask) + 1;
        }
    }

    /// The rules that name `wire` (a lower-case wire-form name) exactly, and those with a
    /// `*.suffix` above it; each sorted. A malformed name matches nothing.
    fn lookup(&self, wire: &[u8]) -> (&[u32], &[u32]) {
        if self.lists.is_empty() {
            return (&[], &[]);
        }
        let mut starts = [0u8; MAX_LABELS];
        let Some(n) = label_starts(wire, &mut starts) else {
            return (&[], &[]);
        };
        if n == 0 {
            return (self.list(self.root_exact), &[]);
        }
        let (mut exact, mut below) = (Span::default(), self.root_below);
        let mut parent = ROOT;
        for (k, start) in starts.get(..n).unwrap_or_default().iter().enumerate().rev() {
            let Some((id, node)) = self.find(parent, wire, usize::from(*start)) else {
                break;
            };
            if k == 0 {
                exact = node.exact;
            } else {
                below = node.below;
            }
            if node.leaf {
                break;
            }
            parent = id;
        }
        (self.list(exact), self.list(below))
    }

    /// Rule numbers stored (memory use, in tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.lists.len()
    }
}

/// Exact names and `*.suffix` patterns, for the `dns-name` check.
#[derive(Debug, Clone, Default)]
struct NameSet {
    index: NameIndex,
}

impl NameSet {
    fn new(patterns: &[NamePattern]) -> NameSet {
        NameSet {
            index: NameIndex::build(patterns.iter().map(|p| (p, 0))),
        }
    }

    fn contains(&self, wire: &[u8]) -> bool {
        let (exact, below) = self.index.lookup(wire);
        !exact.is_empty() || !below.is_empty()
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
    Dns {
        query: bool,
        response: bool,
    },
    /// Shared by the rules that name the same patterns (a named set used by many rules).
    DnsName(Arc<NameSet>),
    DnsType(Vec<u16>),
}

fn has_ports(proto: Proto) -> bool {
    matches!(proto, Proto::Tcp | Proto::Udp)
}

impl Check {
    fn new(test: &Test, name_sets: &mut NameSets) -> Check {
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
            Check::Dns { .. } | Check::Mark(_) | Check::DnsType(_) => 1,
            Check::Sport(_) | Check::Dport(_) => 2,
            Check::Src(_) | Check::Dst(_) => 3,
            Check::DnsName(_) => 4,
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
    ) -> Compiled {
        let mut checks: Vec<(bool, Check)> = rule
            .conds
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != proven)
            .map(|(_, c)| (c.negated, Check::new(&c.test, name_sets)))
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

    fn matches(&self, ctx: &Ctx<'_>) -> bool {
        self.checks.iter().all(|(neg, c)| c.holds(ctx) != *neg)
    }
}

// ------------------------------------------------------------------------------------------------
// The index.

/// A partition of the key space into cells; each cell lists (sorted, no duplicates) the rules
/// whose ranges cover all of it. Lookup is a binary search. For ports and IPv4 addresses, a
/// bitmap of the key's 16 high bits first rules out the keys no rule covers (one load instead
/// of ten probes), and narrows the search to the few cells of the key's bucket.
#[derive(Debug, Clone, Default)]
struct IntervalIndex<K> {
    /// Cell starts, ascending; a cell runs to the next start.
    starts: Vec<K>,
    lists: Vec<Vec<u32>>,
    /// Bit `Key::bucket(k)` is set when a cell with rules holds keys of that bucket; empty when
    /// there is no bitmap (no rules, or keys without buckets).
    occupied: Box<[u64]>,
    /// Per word of `occupied`, the set bits in the words before it.
    rank: Box<[u32]>,
    /// Per set bit of `occupied`, in order, the cells that hold keys of its bucket (first,
    /// last + 1); empty when too many buckets are set to be worth it.
    spans: Box<[(u32, u32)]>,
}

/// Buckets: 16 bits' worth.
const BUCKETS: usize = 1 << 16;

/// Above this many set buckets, an interval index keeps no spans (at 8 bytes each).
const MAX_SPANS: usize = 8192;

impl<K: Key> IntervalIndex<K> {
    /// From (lo, hi, rule) entries, rules ascending.
    fn build(entries: &[(K, K, u32)]) -> IntervalIndex<K> {
        if entries.is_empty() {
            return IntervalIndex::default();
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
            ..IntervalIndex::default()
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
        if K::MIN.bucket().is_some() {
            index.bucket_map();
        }
        index
    }

    /// Fill `occupied`, `rank` and `spans` from the cells.
    fn bucket_map(&mut self) {
        let mut bits = vec![0u64; BUCKETS / 64];
        for (j, (start, list)) in self.starts.iter().zip(&self.lists).enumerate() {
            let end = match self.starts.get(j + 1) {
                Some(next) => next.pred(),
                None => Some(K::MAX),
            };
            if let (false, Some(first), Some(last)) =
                (list.is_empty(), start.bucket(), end.and_then(Key::bucket))
            {
                for b in first..=last {
                    if let Some(word) = bits.get_mut(b / 64) {
                        *word |= 1 << (b % 64);
                    }
                }
            }
        }
        let mut rank = Vec::with_capacity(bits.len());
        let mut set = 0u32;
        for word in &bits {
            rank.push(set);
            set += word.count_ones();
        }
        let mut spans = Vec::new();
        if set as usize <= MAX_SPANS {
            // The cell holding a key: the last one starting at or below it.
            let cell = |k: K| self.starts.partition_point(|s| *s <= k).saturating_sub(1);
            for b in
                (0..BUCKETS).filter(|b| bits.get(b / 64).is_some_and(|w| w >> (b % 64) & 1 == 1))
            {
                if let Some((first, last)) = K::bucket_keys(b) {
                    let span = (cell(first), cell(last) + 1);
                    spans.push((
                        u32::try_from(span.0).unwrap_or(0),
                        u32::try_from(span.1).unwrap_or(u32::MAX),
                    ));
                }
            }
        }
        self.occupied = bits.into_boxed_slice();
        self.rank = rank.into_boxed_slice();
        self.spans = spans.into_boxed_slice();
    }

    #[inline]
    fn lookup(&self, k: K) -> &[u32] {
        let (mut lo, mut hi) = (0, self.starts.len());
        if hi == 0 {
            return &[];
        }
        if let Some(b) = k.bucket()
            && let Some(&word) = self.occupied.get(b / 64)
        {
            let bit = 1u64 << (b % 64);
            if word & bit == 0 {
                return &[];
            }
            let before =
                self.rank.get(b / 64).copied().unwrap_or(0) + (word & (bit - 1)).count_ones();
            if let Some(&(first, end)) = self.spans.get(before as usize) {
                (lo, hi) = (first as usize, end as usize);
            }
        }
        // Every cell in lo..hi starts at or below the key's bucket: the key is in one of them.
        let cells = self.starts.get(lo..hi).unwrap_or_default();
        let i = lo + cells.partition_point(|s| *s <= k);
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
struct Index {
    names: NameIndex,
    src4: IntervalIndex<u32>,
    dst4: IntervalIndex<u32>,
    src6: IntervalIndex<u128>,
    dst6: IntervalIndex<u128>,
    sport: IntervalIndex<u16>,
    dport: IntervalIndex<u16>,
    iif: KeyMap,
    oif: KeyMap,
    /// By protocol number; 256 entries once built.
    proto: Vec<Vec<u32>>,
    hook: [Vec<u32>; 5],
    dir: [Vec<u32>; 3],
    /// (mask, rules by `mark & mask`), at most [`MARK_MASKS`].
    marks: Vec<(u32, KeyMap)>,
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
    /// The index of `rules`, and for each rule the condition it is filed under (its index in
    /// the rule's conditions), `None` for rules in the catch-all list.
    fn build(rules: &[RuleDef]) -> (Index, Vec<Option<usize>>) {
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
                Some(Test::Iif(v)) => v.iter().for_each(|x| ix.iif.file(*x, r)),
                Some(Test::Oif(v)) => v.iter().for_each(|x| ix.oif.file(*x, r)),
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
        (ix, filed)
    }

    /// Add the candidate lists for one packet that are not empty, each sorted by rule number,
    /// to `c` (filled in place: the lists are too big to return by value cheaply).
    fn candidates<'s>(&'s self, ctx: &Ctx<'_>, c: &mut Candidates<'s>) {
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
        c.push(self.iif.get(meta.indev));
        c.push(self.oif.get(meta.outdev));
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
    fn entries(&self) -> usize {
        self.names.entries()
            + self.iif.entries()
            + self.oif.entries()
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

/// Rules by a 32-bit key (an interface index, a mark under a mask), with the range of keys the
/// rules name: most misses (mark 0, an interface no rule names) need no hashing.
#[derive(Debug, Clone, Default)]
struct KeyMap {
    map: FxMap<u32, Vec<u32>>,
    min: u32,
    max: u32,
}

impl KeyMap {
    /// File `rule` under `key` (rules ascending).
    fn file(&mut self, key: u32, rule: u32) {
        if self.map.is_empty() {
            (self.min, self.max) = (key, key);
        }
        self.min = self.min.min(key);
        self.max = self.max.max(key);
        file(self.map.entry(key).or_default(), rule);
    }

    fn get(&self, key: u32) -> &[u32] {
        if key < self.min || key > self.max {
            return &[];
        }
        self.map.get(&key).map_or(&[], Vec::as_slice)
    }

    /// Rule numbers stored (memory use, in tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.map.values().map(Vec::len).sum()
    }
}

/// The non-empty candidate lists of one packet.
struct Candidates<'s> {
    lists: [&'s [u32]; LISTS],
    len: usize,
}

impl<'s> Candidates<'s> {
    fn push(&mut self, list: &'s [u32]) {
        if !list.is_empty()
            && let Some(slot) = self.lists.get_mut(self.len)
        {
            *slot = list;
            self.len += 1;
        }
    }
}

/// The rules, compiled and indexed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    rules: Vec<Compiled>,
    index: Index,
}

impl Matcher {
    pub(crate) fn build(rules: &[RuleDef]) -> Matcher {
        let (index, filed) = Index::build(rules);
        let mut name_sets = NameSets::default();
        let compiled = rules
            .iter()
            .enumerate()
            .map(|(i, r)| Compiled::new(r, i, filed.get(i).copied().flatten(), &mut name_sets))
            .collect();
        Matcher {
            rules: compiled,
            index,
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
        let mut check = |r: u32| {
            *examined += 1;
            self.rules
                .get(r as usize)
                .filter(|rule| rule.matches(ctx))
                .map(|rule| rule.outcome)
        };
        let mut c = Candidates {
            lists: [&[]; LISTS],
            len: 0,
        };
        self.index.candidates(ctx, &mut c);
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

    use super::super::defs::{self, Action, Parsed};
    use super::super::parse;
    use super::super::{Ctx, Outcome, RuleSet};
    use super::*;
    use crate::types::{Meta, Verdict};
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
                meta: Meta::new(Hook::Input, 0, 2, 0),
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

    // --- names, interval tables and key maps on their own ---------------------------------------

    /// Wire form of a dotted name (no checks: tests feed it what they mean).
    fn wire(name: &str) -> Box<[u8]> {
        let mut out = Vec::new();
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(u8::try_from(label.len()).unwrap_or(0));
            out.extend(label.bytes());
        }
        out.push(0);
        out.into_boxed_slice()
    }

    fn pattern(text: &str) -> NamePattern {
        match text.strip_prefix("*.") {
            Some(rest) => NamePattern {
                wire: wire(rest),
                wildcard: true,
            },
            None if text == "*" => NamePattern {
                wire: wire(""),
                wildcard: true,
            },
            None => NamePattern {
                wire: wire(text),
                wildcard: false,
            },
        }
    }

    /// A name trie of `patterns`, rule i for pattern i.
    fn trie(patterns: &[&str]) -> NameIndex {
        let owned: Vec<NamePattern> = patterns.iter().map(|p| pattern(p)).collect();
        NameIndex::build(owned.iter().zip(0u32..))
    }

    /// What the trie should answer, by comparing byte strings: the patterns equal to the name,
    /// and the wildcards whose suffix is a proper suffix of it at a label boundary.
    fn naive_names(patterns: &[NamePattern], name: &[u8]) -> (Vec<u32>, Vec<u32>) {
        let mut suffixes = Vec::new();
        let mut pos = 0;
        while let Some(&len) = name.get(pos) {
            if len == 0 {
                break;
            }
            pos += 1 + usize::from(len);
            if let Some(rest) = name.get(pos..) {
                suffixes.push(rest);
            }
        }
        let (mut exact, mut below) = (Vec::new(), Vec::new());
        for (p, r) in patterns.iter().zip(0u32..) {
            if !p.wildcard && *p.wire == *name {
                exact.push(r);
            }
            if p.wildcard && suffixes.contains(&&p.wire[..]) {
                below.push(r);
            }
        }
        (exact, below)
    }

    #[test]
    fn label_starts_take_exactly_one_well_formed_name() {
        let mut starts = [0u8; MAX_LABELS];
        assert_eq!(
            label_starts(b"\x03www\x01a\x07example\x00", &mut starts),
            Some(3)
        );
        assert_eq!(&starts[..3], &[0, 4, 6]);
        assert_eq!(label_starts(b"\x00", &mut starts), Some(0));
        // Truncated, without its root label, with bytes after it, empty, too long.
        assert_eq!(label_starts(b"\x09ab", &mut starts), None);
        assert_eq!(label_starts(b"\x07example", &mut starts), None);
        assert_eq!(label_starts(b"\x07example\x00\x00", &mut starts), None);
        assert_eq!(label_starts(b"", &mut starts), None);
        let mut long = b"\x01a".repeat(127);
        long.push(0);
        assert_eq!(label_starts(&long, &mut starts), Some(127));
        long.insert(0, b'a');
        long.insert(0, 1);
        assert_eq!(label_starts(&long, &mut starts), None);
    }

    #[test]
    fn word_reads_at_most_n_bytes_and_never_past_the_name() {
        let name = b"\x03www\x0aabcdefghij\x00";
        assert_eq!(word(name, 1, 3), u64::from_le_bytes(*b"www\0\0\0\0\0"));
        assert_eq!(word(name, 5, 8), u64::from_le_bytes(*b"abcdefgh"));
        assert_eq!(word(name, 13, 2), u64::from_le_bytes(*b"ij\0\0\0\0\0\0"));
        assert_eq!(word(name, 13, 8), u64::from_le_bytes(*b"ij\0\0\0\0\0\0"));
        assert_eq!(word(name, 99, 4), 0);
        assert_eq!(word(name, 0, 0), 0);
    }

    #[test]
    fn name_trie_files_exact_names_and_wildcards_by_label() {
        let long = "a-label-longer-than-sixteen-bytes";
        let ix = trie(&[
            "a.example",                 // 0
            "*.a.example",               // 1
            "*.example",                 // 2
            "www.a.example",             // 3
            &format!("{long}.example"),  // 4
            &format!("{long}x.example"), // 5: same first 8 and 16 bytes, one longer
            "abcdefgh.example",          // 6: exactly 8 bytes
            "abcdefgi.example",          // 7
            "*.test",                    // 8
            "a.example",                 // 9: the same name again
        ]);
        let look = |name: &str| {
            let (e, b) = ix.lookup(&wire(name));
            (e.to_vec(), b.to_vec())
        };
        assert_eq!(look("a.example"), (vec![0, 9], vec![2]));
        assert_eq!(look("www.a.example"), (vec![3], vec![1, 2]));
        assert_eq!(look("x.www.a.example"), (vec![], vec![1, 2]));
        assert_eq!(look("b.example"), (vec![], vec![2]));
        assert_eq!(look("example"), (vec![], vec![]));
        assert_eq!(look(&format!("{long}.example")), (vec![4], vec![2]));
        assert_eq!(look(&format!("{long}x.example")), (vec![5], vec![2]));
        assert_eq!(look(&format!("{long}y.example")), (vec![], vec![2]));
        assert_eq!(look("abcdefgh.example"), (vec![6], vec![2]));
        assert_eq!(look("abcdefgi.example"), (vec![7], vec![2]));
        assert_eq!(look("abcdefg.example"), (vec![], vec![2]));
        assert_eq!(look("deep.under.test"), (vec![], vec![8]));
        assert_eq!(look("test"), (vec![], vec![]));
        assert_eq!(look("other"), (vec![], vec![]));
        assert_eq!(look(""), (vec![], vec![]));
        // A label of 63 bytes, and names that are not wire-form names.
        let max = "m".repeat(63);
        let ix63 = trie(&[&format!("{max}.{max}.example")]);
        assert_eq!(ix63.lookup(&wire(&format!("{max}.{max}.example"))).0, &[0]);
        assert_eq!(ix.lookup(b"\x01a\x07example").0, &[] as &[u32]);
        assert_eq!(ix.lookup(b"\x01a\x07example\x00\x00").1, &[] as &[u32]);
        // One node per distinct suffix; the rules of shared wildcards are stored once.
        assert_eq!(ix.nodes.len(), 8);
        assert!(ix.nodes.iter().filter(|n| n.leaf).count() >= 6);
    }

    #[test]
    fn name_trie_handles_the_root() {
        let ix = trie(&[".", "*", "a.example"]);
        assert_eq!(ix.lookup(b"\x00"), (&[0u32][..], &[][..]));
        assert_eq!(ix.lookup(&wire("x")), (&[][..], &[1u32][..]));
        assert_eq!(ix.lookup(&wire("a.example")), (&[2u32][..], &[1u32][..]));
        let empty = NameIndex::default();
        assert_eq!(empty.lookup(&wire("a.example")), (&[][..], &[][..]));
        assert_eq!(trie(&["*.example"]).lookup(b"\x00"), (&[][..], &[][..]));
    }

    #[test]
    fn name_trie_agrees_with_suffix_comparison_on_random_names() {
        let mut rng = Rng(0x7e1e_5eed_0000_0007);
        // Labels that share prefixes of 8 bytes and more, short and long ones.
        let labels = [
            "a",
            "b",
            "www",
            "example",
            "examples",
            "abcdefgh",
            "abcdefghi",
            "abcdefghijklmnopq",
            "abcdefghijklmnopr",
            "x-y",
        ];
        let name = |rng: &mut Rng| {
            (0..1 + rng.below(4))
                .map(|_| *rng.pick(&labels))
                .collect::<Vec<_>>()
                .join(".")
        };
        let (mut exact_hits, mut below_hits) = (0, 0);
        for round in 0..40 {
            let patterns: Vec<NamePattern> = (0..1 + rng.below(30))
                .map(|_| {
                    let n = name(&mut rng);
                    pattern(&if rng.chance(40) { format!("*.{n}") } else { n })
                })
                .collect();
            let ix = NameIndex::build(patterns.iter().zip(0u32..));
            for _ in 0..300 {
                let q = wire(&name(&mut rng));
                let (exact, below) = ix.lookup(&q);
                let want = naive_names(&patterns, &q);
                assert_eq!(
                    (exact.to_vec(), below.to_vec()),
                    want,
                    "round {round}: {q:?} in {patterns:?}"
                );
                exact_hits += usize::from(!exact.is_empty());
                below_hits += usize::from(!below.is_empty());
            }
        }
        // Worth something only if both kinds match, and not always.
        assert!(
            exact_hits > 200 && below_hits > 500,
            "{exact_hits} {below_hits}"
        );
        assert!(below_hits < 40 * 300, "{below_hits}");
    }

    #[test]
    fn name_set_is_the_trie_as_a_set() {
        let set = NameSet::new(&[pattern("portal.example"), pattern("*.cdn.example")]);
        assert!(set.contains(&wire("portal.example")));
        assert!(set.contains(&wire("a.b.cdn.example")));
        assert!(!set.contains(&wire("cdn.example")));
        assert!(!set.contains(&wire("www.portal.example")));
        assert!(!NameSet::new(&[]).contains(&wire("portal.example")));
    }

    /// The rules of `entries` whose range holds `k`, by a scan.
    fn naive_cells<K: Key>(entries: &[(K, K, u32)], k: K) -> Vec<u32> {
        let mut v: Vec<u32> = entries
            .iter()
            .filter(|(lo, hi, _)| *lo <= k && k <= *hi)
            .map(|e| e.2)
            .collect();
        v.dedup();
        v
    }

    #[test]
    fn interval_bitmap_and_spans_agree_with_a_scan() {
        let mut rng = Rng(0xb17_5eed_0000_0003);
        for round in 0..30 {
            // Ports: one bucket per port.
            let mut e16: Vec<(u16, u16, u32)> = (0..1 + rng.below(20))
                .map(|r| {
                    let lo = *rng.pick(&[0u16, 1, 22, 53, 1023, 1024, 40000, 65534, 65535]);
                    let hi = lo.saturating_add(*rng.pick(&[0u16, 1, 10, 1000, 65535]));
                    (lo, hi, u32::try_from(r).unwrap_or(0))
                })
                .collect();
            e16.sort_by_key(|e| e.2);
            let ix = IntervalIndex::build(&e16);
            for k in [
                0u16, 1, 2, 21, 22, 23, 53, 1023, 1024, 1025, 2047, 40000, 65534, 65535,
            ] {
                assert_eq!(
                    ix.lookup(k),
                    naive_cells(&e16, k),
                    "round {round}: {k} {e16:?}"
                );
            }
            // IPv4: buckets of /16; wide ranges (over MAX_SPANS buckets) on some rounds.
            let e32: Vec<(u32, u32, u32)> = (0..1 + rng.below(20))
                .map(|r| {
                    let base =
                        *rng.pick(&[0u32, 0x0a00_0000, 0x0a01_ff00, 0xc612_0100, 0xffff_ff00]);
                    let size = *rng.pick(&[1u32, 256, 0x1_0000, 0x1_0100, 0x4000_0000]);
                    let size = if round % 3 == 0 {
                        size
                    } else {
                        size.min(0x1_0100)
                    };
                    (
                        base,
                        base.saturating_add(size - 1),
                        u32::try_from(r).unwrap_or(0),
                    )
                })
                .collect();
            let ix = IntervalIndex::build(&e32);
            let keys = [
                0u32,
                1,
                0xffff,
                0x1_0000,
                0x0a00_0000,
                0x0a00_00ff,
                0x0a00_0100,
                0x0a01_ffff,
                0x0a02_0000,
                0x0a02_00ff,
                0x4a00_0000,
                0xc612_0101,
                0xc612_0200,
                0xc613_0000,
                0xffff_feff,
                0xffff_ffff,
            ];
            for k in keys {
                assert_eq!(
                    ix.lookup(k),
                    naive_cells(&e32, k),
                    "round {round}: {k:#x} {e32:?}"
                );
            }
        }
        // The bitmap answers for addresses no rule covers; a wide range keeps no spans.
        let ix = IntervalIndex::build(&[(0x0a00_0000u32, 0x0a00_00ff, 0)]);
        assert_eq!(ix.occupied.iter().map(|w| w.count_ones()).sum::<u32>(), 1);
        assert_eq!(ix.spans.len(), 1);
        let wide = IntervalIndex::build(&[(0u32, 0x3fff_ffff, 0), (0x0a00_0000, 0x0a00_00ff, 1)]);
        assert!(wide.spans.is_empty());
        assert_eq!(wide.lookup(0x0a00_0001), &[0, 1]);
        assert_eq!(wide.lookup(0x4000_0000), &[] as &[u32]);
        // IPv6 has no bitmap.
        let v6 = IntervalIndex::build(&[(1u128, 2, 0)]);
        assert!(v6.occupied.is_empty());
        assert_eq!(v6.lookup(2), &[0]);
    }

    #[test]
    fn key_map_holds_its_keys_and_their_range() {
        let mut m = KeyMap::default();
        assert_eq!(m.get(0), &[] as &[u32]);
        for (key, rule) in [(7u32 << 16, 0u32), (3 << 16, 1), (7 << 16, 2), (7 << 16, 2)] {
            m.file(key, rule);
        }
        assert_eq!((m.min, m.max), (3 << 16, 7 << 16));
        assert_eq!(m.get(7 << 16), &[0, 2]);
        assert_eq!(m.get(3 << 16), &[1]);
        assert_eq!(m.get(5 << 16), &[] as &[u32]);
        assert_eq!(m.get(0), &[] as &[u32]);
        assert_eq!(m.get(u32::MAX), &[] as &[u32]);
    }

    #[test]
    fn fx_hash_spreads_keys_that_differ_only_in_high_bits() {
        let low = |key: u32| {
            let mut h = FxHasher::default();
            h.write_u32(key);
            h.finish() & 0x3ff
        };
        let buckets: std::collections::BTreeSet<u64> = (1..=256u32).map(|i| low(i << 16)).collect();
        assert!(buckets.len() > 128, "{}", buckets.len());
    }

    #[test]
    fn filed_matcher_is_not_checked_again_and_cheap_checks_come_first() {
        let parsed = match parse(
            "src 198.18.0.0/15 dns-name a.example dport 53 proto udp set-mark 1\n\
             dns query dns-type A set-mark 2\n",
            "t.rules",
            &ifaces,
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
            let parsed = match parse(&text, "r.rules", &ifaces) {
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
            let parsed = match parse(&text, "r.rules", &ifaces) {
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
