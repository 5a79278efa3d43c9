//! Key maps: rules by a key (a mark under a mask, a MAC address), with the range of keys named,
//! so most misses need no hashing.
//!
//! This module owns [`KeyMap`]. A lookup never allocates and never panics.

use std::hash::Hash;

use super::file;
use crate::rules::hash::FxMap;

/// Rules by a key (a mark under a mask, a MAC address), with the range of keys the rules name:
/// most misses (mark 0, a MAC no rule names) need no hashing.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyMap<K = u32> {
    map: FxMap<K, Vec<u32>>,
    min: K,
    max: K,
}

impl<K: Copy + Ord + Hash> KeyMap<K> {
    /// File `rule` under `key` (rules ascending).
    pub(crate) fn file(&mut self, key: K, rule: u32) {
        if self.map.is_empty() {
            (self.min, self.max) = (key, key);
        }
        self.min = self.min.min(key);
        self.max = self.max.max(key);
        file(self.map.entry(key).or_default(), rule);
    }

    pub(crate) fn get(&self, key: K) -> &[u32] {
        if key < self.min || key > self.max {
            return &[];
        }
        self.map.get(&key).map_or(&[], Vec::as_slice)
    }

    /// Rule numbers stored (memory use, in tests).
    #[cfg(test)]
    pub(crate) fn entries(&self) -> usize {
        self.map.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_map_holds_its_keys_and_their_range() {
        let mut m = KeyMap::<u32>::default();
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
}
