//! The hash of the rules' maps: the rule index's maps and name trie edges, and the interface
//! bindings (`iface`). A leaf of `rules/`: `index` and `iface` both use it, and it uses neither.
//!
//! This module owns the choice of hash function for keys that come from the rules file: FxHash
//! from the `rustc-hash` crate (the multiply-rotate hash rustc uses, a few cycles per key against
//! SipHash's tens of nanoseconds per lookup). It measured as fast as the hand-written copy it
//! replaces on `benches/decide`; foldhash's fixed-seed variant (already a dependency, for
//! `pairing`) was 3-5% slower per DNS packet with 1,000 rules. Being unkeyed is safe here: every
//! key stored in these maps comes from the rules file, so a packet can pick the key it looks up
//! but cannot create collisions between stored keys; a lookup costs one hash and one probe
//! sequence either way. It never hashes anything a packet can choose to store, and never
//! allocates.

use rustc_hash::{FxBuildHasher, FxHasher};
use std::collections::HashMap;

/// A map keyed by values from the rules file.
pub(crate) type FxMap<K, V> = HashMap<K, V, FxBuildHasher>;

/// A hasher for words taken from the rules file or a packet (the name trie's edges).
pub(crate) fn hasher() -> FxHasher {
    FxHasher::default()
}

#[cfg(test)]
mod tests {
    use std::hash::Hasher;

    use super::*;

    #[test]
    fn fx_hash_spreads_keys_that_differ_only_in_high_bits() {
        let low = |key: u32| {
            let mut h = hasher();
            h.write_u32(key);
            h.finish() & 0x3ff
        };
        let buckets: std::collections::BTreeSet<u64> = (1..=256u32).map(|i| low(i << 16)).collect();
        assert!(buckets.len() > 128, "{}", buckets.len());
    }
}
