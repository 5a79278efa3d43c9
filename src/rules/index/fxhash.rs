//! FxHash: the multiply-rotate hash rustc uses, for the index's maps and the name trie's edges.
//!
//! This module owns the one hash function of the rule index (keys from the rules file only). It
//! never hashes anything a packet can choose to store, and never allocates.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The multiply-rotate hash rustc uses (FxHash): a few cycles per 8 bytes, against SipHash's
/// tens of nanoseconds per lookup. It is not keyed, which is safe here: every key stored in these
/// maps comes from the rules file, so a packet can pick the key it looks up but cannot create
/// collisions between stored keys; a lookup costs one hash and one probe sequence either way.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FxHasher {
    pub(crate) hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x517c_c1b7_2722_0a95;

    pub(crate) fn add(&mut self, word: u64) {
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
pub(crate) type FxMap<K, V> = HashMap<K, V, FxBuild>;

#[cfg(test)]
mod tests {
    use super::*;

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
}
