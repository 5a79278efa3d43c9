//! The name trie: rules filed by DNS name (exact names and `*.suffix` patterns), shared by the
//! packet rules' index, the `dns-name` check and the flow rules.
//!
//! This module owns the trie and its lookup of a lower-case wire-form name. A lookup never
//! allocates, copies nothing, never panics, and treats a malformed name as matching nothing;
//! building happens once per load.

use std::hash::Hasher;

use crate::rules::defs::NamePattern;
use crate::rules::hash::{self, FxMap};

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
        let mut h = hash::hasher();
        h.write_u64((u64::from(parent) << 8) | u64::from(len));
        h.write_u64(head);
        let mut off = 8;
        while off < n {
            h.write_u64(word(wire, at + off, (n - off).min(8)));
            off += 8;
        }
        Edge {
            hash: h.finish(),
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
pub(crate) struct NameIndex {
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

/// A trie's nodes as patterns name them, before their rule lists are laid out: parents before
/// their children, each with the rules that name it exactly or as `*.` it.
#[derive(Default)]
struct RawTrie {
    nodes: Vec<RawNode>,
    root_exact: Vec<u32>,
    root_below: Vec<u32>,
}

struct RawNode {
    edge: Edge,
    tail: Box<[u8]>,
    exact: Vec<u32>,
    below: Vec<u32>,
}

impl RawTrie {
    /// One node per distinct suffix of the entries' names; patterns that are not wire-form
    /// names are left out.
    fn collect<'p>(entries: impl IntoIterator<Item = (&'p NamePattern, u32)>) -> RawTrie {
        let mut ids: FxMap<(u32, Box<[u8]>), u32> = FxMap::default();
        let mut raw = RawTrie::default();
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
                let next = u32::try_from(raw.nodes.len()).unwrap_or(ROOT);
                let id = *ids.entry((node, label.into())).or_insert_with(|| {
                    raw.nodes.push(RawNode {
                        edge: Edge::new(node, &p.wire, start),
                        tail: label.get(8..).unwrap_or_default().into(),
                        exact: Vec::new(),
                        below: Vec::new(),
                    });
                    next
                });
                node = id;
            }
            let (exact, below) = match raw.nodes.get_mut(node as usize) {
                Some(r) => (&mut r.exact, &mut r.below),
                None => (&mut raw.root_exact, &mut raw.root_below),
            };
            if p.wildcard {
                below.push(rule);
            } else {
                exact.push(rule);
            }
        }
        raw
    }
}

impl NameIndex {
    /// From (pattern, rule) entries. Patterns that are not wire-form names are left out.
    pub(crate) fn build<'p>(
        entries: impl IntoIterator<Item = (&'p NamePattern, u32)>,
    ) -> NameIndex {
        let raw = RawTrie::collect(entries);
        let mut ix = NameIndex::default();
        ix.root_exact = ix.push_list(raw.root_exact);
        ix.root_below = ix.push_list(raw.root_below);
        let mut hashes = Vec::with_capacity(raw.nodes.len());
        for r in raw.nodes {
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
        ix.fill_slots(&hashes);
        ix
    }

    /// The hash table over the nodes: node `id` (0-based) has hash `hashes[id]`.
    fn fill_slots(&mut self, hashes: &[u64]) {
        let size = (self.nodes.len() * 2).next_power_of_two().max(8);
        let mask = size - 1;
        self.shift = 64 - size.trailing_zeros();
        let mut slots = vec![0u64; size];
        for (id, hash) in (1u32..).zip(hashes.iter().copied()) {
            let mut s = (hash >> self.shift) as usize;
            while let Some(slot) = slots.get_mut(s & mask) {
                if *slot == 0 {
                    *slot = (u64::from(tag(hash)) << 32) | u64::from(id);
                    break;
                }
                s = (s & mask) + 1;
            }
        }
        if !self.nodes.is_empty() {
            self.slots = slots.into_boxed_slice();
        }
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
    pub(crate) fn lookup(&self, wire: &[u8]) -> (&[u32], &[u32]) {
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
    pub(crate) fn entries(&self) -> usize {
        self.lists.len()
    }
}

/// Exact names and `*.suffix` patterns, for the `dns-name` check.
#[derive(Debug, Clone, Default)]
pub(crate) struct NameSet {
    index: NameIndex,
}

impl NameSet {
    pub(crate) fn new(patterns: &[NamePattern]) -> NameSet {
        NameSet {
            index: NameIndex::build(patterns.iter().map(|p| (p, 0))),
        }
    }

    pub(crate) fn contains(&self, wire: &[u8]) -> bool {
        let (exact, below) = self.index.lookup(wire);
        !exact.is_empty() || !below.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testutil::{Rng, pattern, wire};

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
}
