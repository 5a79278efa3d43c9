//! Interval tables: which rules' address or port ranges hold a key, by binary search over a
//! partition of the key space, with a bitmap of the keys' high bits that answers most misses at
//! once.
//!
//! This module owns the [`Key`] types (ports, IPv4 and IPv6 addresses as integers) and the
//! [`IntervalIndex`] built from (lo, hi, rule) entries. A lookup never allocates and never
//! panics; building happens once per load.

use std::collections::BTreeMap;

/// Key types of interval tables: ports, IPv4 and IPv6 addresses as integers.
pub(crate) trait Key: Copy + Ord + Default + std::fmt::Debug {
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

/// A partition of the key space into cells; each cell lists (sorted, no duplicates) the rules
/// whose ranges cover all of it. Lookup is a binary search. For ports and IPv4 addresses, a
/// bitmap of the key's 16 high bits first rules out the keys no rule covers (one load instead
/// of ten probes), and narrows the search to the few cells of the key's bucket.
#[derive(Debug, Clone, Default)]
pub(crate) struct IntervalIndex<K> {
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
    pub(crate) fn build(entries: &[(K, K, u32)]) -> IntervalIndex<K> {
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
    pub(crate) fn lookup(&self, k: K) -> &[u32] {
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
    pub(crate) fn cells(&self) -> usize {
        self.lists.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testutil::Rng;

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
}
