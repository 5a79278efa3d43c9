//! Value sets inside matchers: address and port ranges merged for membership in O(log n),
//! whatever their number.
//!
//! This module owns [`RangeSet`] (disjoint sorted ranges of one key type) and [`AddrSet`] (one
//! per family). Membership never allocates and never panics. Name sets are the name trie's
//! (`names.rs`).

use std::net::IpAddr;

use super::interval::Key;
use crate::rules::defs::{AddrRange, PortRange};

/// Disjoint, sorted inclusive ranges.
#[derive(Debug, Clone, Default)]
pub(crate) struct RangeSet<K> {
    pub(crate) ranges: Vec<(K, K)>,
}

impl<K: Key> RangeSet<K> {
    pub(crate) fn new(mut ranges: Vec<(K, K)>) -> RangeSet<K> {
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

    pub(crate) fn contains(&self, k: K) -> bool {
        let i = self.ranges.partition_point(|r| r.0 <= k);
        i.checked_sub(1)
            .and_then(|j| self.ranges.get(j))
            .is_some_and(|r| k <= r.1)
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct AddrSet {
    v4: RangeSet<u32>,
    v6: RangeSet<u128>,
}

impl AddrSet {
    pub(crate) fn new(ranges: &[AddrRange]) -> AddrSet {
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

    pub(crate) fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4.contains(u32::from(a)),
            IpAddr::V6(a) => self.v6.contains(u128::from(a)),
        }
    }
}

pub(crate) fn port_set(ranges: &[PortRange]) -> RangeSet<u16> {
    RangeSet::new(ranges.iter().map(|r| (r.lo, r.hi)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_sets_merge_and_find() {
        let s = RangeSet::new(vec![(5u16, 9), (1, 2), (3, 4), (20, 30), (25, 26)]);
        assert_eq!(s.ranges, vec![(1, 9), (20, 30)]);
        assert!(s.contains(1) && s.contains(9) && s.contains(25));
        assert!(!s.contains(0) && !s.contains(10) && !s.contains(31));
        let all = RangeSet::new(vec![(0u16, u16::MAX), (7, 8)]);
        assert!(all.contains(0) && all.contains(u16::MAX));
    }
}
