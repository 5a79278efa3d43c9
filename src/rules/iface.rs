//! Interfaces by name: the interface patterns a rule set names (`iif lan0`, `oif ppp+`) and
//! their binding to the link table, which says what each interface index is called right now.
//!
//! A queued packet carries interface indexes; rules name interfaces, as iptables' `-i`/`-o` and
//! nftables' `iifname` do, so a rule keeps matching when its interface is deleted and created
//! again with a new index, and starts matching when it first appears. The binding ([`Bound`])
//! is computed from the link table whenever the table changes, never per packet: for each index
//! that exists, which of the rule set's patterns its name matches (a bit per pattern, for the
//! `iif`/`oif` checks) and which rules are filed under those patterns (the candidate lists the
//! index would otherwise keep by index). A packet costs one lookup per interface it has.
//!
//! The binding lives in [`Ifaces`], shared by a rule set's clones, and is replaced when the link
//! table changes (on the link table's thread: `crate::links`). Readers never wait for that
//! thread. A packet whose interfaces both lie outside the range of indexes the binding holds (the
//! rules name only the uplinks, the packet came in on the LAN) needs one atomic load and no
//! binding at all; otherwise
//! each thread keeps the binding it last used and its generation, and takes the lock only when
//! the generation moved (once per change): an atomic load and a thread-local access, no lock, no
//! reference count, no allocation.
//!
//! This module owns what an interface pattern matches and how the binding is built, stored and
//! read. It never parses text (patterns come checked from `values.rs`), never talks to the kernel
//! (the table is `crate::links`'s) and never panics.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::defs::IfPattern;
use super::hash::FxMap;
use crate::links::{LinkMap, LinkWatcher};

/// Whether interface `name` matches `pattern`.
pub(crate) fn matches(pattern: &IfPattern, name: &str) -> bool {
    if pattern.prefix {
        name.starts_with(&*pattern.name)
    } else {
        *name == *pattern.name
    }
}

/// A pattern as written in the rules: `lan0`, `ppp+`.
pub(crate) fn text(pattern: &IfPattern) -> String {
    if pattern.prefix {
        format!("{}+", pattern.name)
    } else {
        pattern.name.to_string()
    }
}

/// Numbers for the distinct patterns of a rule set, in the order first seen.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    ids: FxMap<IfPattern, u32>,
    patterns: Vec<IfPattern>,
}

impl Interner {
    pub(crate) fn id(&mut self, pattern: &IfPattern) -> u32 {
        if let Some(id) = self.ids.get(pattern) {
            return *id;
        }
        let id = u32::try_from(self.patterns.len()).unwrap_or(u32::MAX);
        self.ids.insert(pattern.clone(), id);
        self.patterns.push(pattern.clone());
        id
    }

    /// The pattern ids of `patterns`, sorted, without repeats.
    pub(crate) fn ids(&mut self, patterns: &[IfPattern]) -> Box<[u32]> {
        let mut ids: Vec<u32> = patterns.iter().map(|p| self.id(p)).collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_boxed_slice()
    }

    pub(crate) fn len(&self) -> usize {
        self.patterns.len()
    }

    pub(crate) fn into_patterns(self) -> Vec<IfPattern> {
        self.patterns
    }
}

/// What one interface index means to the rules, for the current link table.
#[derive(Debug, Default)]
pub(crate) struct LinkRules {
    /// Bit `id` set when the interface's name matches pattern `id`.
    bits: Box<[u64]>,
    /// Rules filed under an `iif` with one of those patterns, ascending.
    pub(crate) iif: Box<[u32]>,
    /// Rules filed under an `oif` with one of those patterns, ascending.
    pub(crate) oif: Box<[u32]>,
}

impl LinkRules {
    /// Whether the interface's name matches any of the patterns `ids`.
    #[inline]
    pub(crate) fn any(&self, ids: &[u32]) -> bool {
        ids.iter().any(|&id| {
            self.bits
                .get((id / 64) as usize)
                .is_some_and(|w| w & (1 << (id % 64)) != 0)
        })
    }
}

/// What a packet's interfaces mean to the rules (`None`: no interface, or one no pattern
/// matches).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct View<'b> {
    pub(crate) indev: Option<&'b LinkRules>,
    pub(crate) outdev: Option<&'b LinkRules>,
}

/// Largest span of indexes (`max - min`) a binding keeps in a plain array; wider spans (a host
/// that has created hundreds of thousands of links) go in a hash map.
const DENSE_SPAN: u32 = 4096;

/// The binding of a rule set's patterns to one link table: the indexes whose names match a
/// pattern, and what each means.
#[derive(Debug, Default)]
pub(crate) struct Bound {
    links: Vec<LinkRules>,
    /// By `index - min`: the place in `links` plus one (0: nothing), when the span is small.
    dense: Box<[u32]>,
    /// By index, the place in `links`, when the span is wide.
    sparse: FxMap<u32, u32>,
    /// The range of indexes held: most misses need no lookup.
    min: u32,
    max: u32,
}

impl Bound {
    /// What interface `index` means to the rules; `None` for an index no pattern matches (and
    /// for 0, no interface).
    #[inline]
    pub(crate) fn get(&self, index: u32) -> Option<&LinkRules> {
        if index < self.min || index > self.max {
            return None;
        }
        let place = if self.dense.is_empty() {
            *self.sparse.get(&index)?
        } else {
            self.dense
                .get((index - self.min) as usize)?
                .checked_sub(1)?
        };
        self.links.get(place as usize)
    }

    /// What the packet's input and output interfaces mean.
    #[inline]
    pub(crate) fn view(&self, indev: u32, outdev: u32) -> View<'_> {
        View {
            indev: self.get(indev),
            outdev: self.get(outdev),
        }
    }

    /// Interfaces with a meaning (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.links.len()
    }
}

/// A rule set's interface patterns and their current binding; shared by the rule set's clones.
/// Subscribed to the link table as a [`LinkWatcher`] when the rule set follows one.
pub(crate) struct Ifaces {
    /// Tells this rule set's binding from another's in the per-thread cache.
    id: u64,
    patterns: Vec<IfPattern>,
    /// By pattern id: the rules filed under an `iif` naming it.
    filed_iif: Vec<Vec<u32>>,
    /// By pattern id: the rules filed under an `oif` naming it.
    filed_oif: Vec<Vec<u32>>,
    /// The binding in force and its generation.
    current: RwLock<(u64, Arc<Bound>)>,
    /// The generation in `current`, readable without the lock.
    generation: AtomicU64,
    /// The range of indexes the binding in force holds, `min << 32 | max` (empty: min > max).
    range: AtomicU64,
}

impl std::fmt::Debug for Ifaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ifaces")
            .field("patterns", &self.patterns)
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish()
    }
}

/// [`Ifaces::range`] holding no index (0 is no interface).
const EMPTY_RANGE: u64 = 1 << 32;

/// Source of [`Ifaces::id`]s: never reused within a process.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The binding this thread used last: whose it is, of which generation.
struct Cached {
    owner: u64,
    generation: u64,
    bound: Arc<Bound>,
}

thread_local! {
    static CACHE: RefCell<Option<Cached>> = const { RefCell::new(None) };
}

impl Ifaces {
    /// `patterns` by id, with the rules filed under each (ascending); bound to no interface
    /// until [`Ifaces::bind`].
    pub(crate) fn new(
        patterns: Vec<IfPattern>,
        filed_iif: Vec<Vec<u32>>,
        filed_oif: Vec<Vec<u32>>,
    ) -> Ifaces {
        Ifaces {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            patterns,
            filed_iif,
            filed_oif,
            current: RwLock::new((0, Arc::new(Bound::default()))),
            generation: AtomicU64::new(0),
            range: AtomicU64::new(EMPTY_RANGE),
        }
    }

    /// True when the rules name no interface: nothing to bind.
    pub(crate) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The binding for the links `(index, name)` (an index may come more than once, with
    /// several names: it then matches what any of them matches).
    pub(crate) fn build<'n>(&self, links: impl Iterator<Item = (u32, &'n str)>) -> Bound {
        let words = self.patterns.len().div_ceil(64);
        let mut bits: FxMap<u32, Box<[u64]>> = FxMap::default();
        for (index, name) in links.filter(|(index, _)| *index != 0) {
            for (id, pattern) in self.patterns.iter().enumerate() {
                if matches(pattern, name) {
                    let slot = bits
                        .entry(index)
                        .or_insert_with(|| vec![0u64; words].into_boxed_slice());
                    if let Some(w) = slot.get_mut(id / 64) {
                        *w |= 1 << (id % 64);
                    }
                }
            }
        }
        let rules = |filed: &[Vec<u32>], set: &[u64]| -> Box<[u32]> {
            let mut out: Vec<u32> = filed
                .iter()
                .enumerate()
                .filter(|(id, _)| set.get(id / 64).is_some_and(|w| w & (1 << (id % 64)) != 0))
                .flat_map(|(_, rules)| rules.iter().copied())
                .collect();
            out.sort_unstable();
            out.dedup();
            out.into_boxed_slice()
        };
        let mut bound = Bound {
            min: bits.keys().copied().min().unwrap_or(1),
            max: bits.keys().copied().max().unwrap_or(0),
            ..Bound::default()
        };
        let dense = !bits.is_empty() && bound.max - bound.min < DENSE_SPAN;
        if dense {
            bound.dense = vec![0; (bound.max - bound.min) as usize + 1].into_boxed_slice();
        }
        for (index, set) in bits {
            let place = u32::try_from(bound.links.len()).unwrap_or(u32::MAX);
            bound.links.push(LinkRules {
                iif: rules(&self.filed_iif, &set),
                oif: rules(&self.filed_oif, &set),
                bits: set,
            });
            match bound.dense.get_mut((index - bound.min) as usize) {
                Some(slot) if dense => *slot = place + 1,
                _ => {
                    bound.sparse.insert(index, place);
                }
            }
        }
        bound
    }

    /// Put the binding for `links` in force: every thread's next packet sees it.
    pub(crate) fn bind<'n>(&self, links: impl Iterator<Item = (u32, &'n str)>) {
        if self.is_empty() {
            return;
        }
        let bound = Arc::new(self.build(links));
        let range = if bound.links.is_empty() {
            EMPTY_RANGE
        } else {
            u64::from(bound.min) << 32 | u64::from(bound.max)
        };
        let generation = {
            let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
            current.0 += 1;
            current.1 = bound;
            current.0
        };
        self.generation.store(generation, Ordering::Release);
        self.range.store(range, Ordering::Release);
    }

    fn read(&self) -> (u64, Arc<Bound>) {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        (current.0, Arc::clone(&current.1))
    }

    /// Whether interface `indev` or `outdev` may mean something under the binding in force:
    /// when neither lies in the binding's range of indexes, the packet needs no binding (its
    /// [`View`] is empty). The range and the binding may be of different generations around a
    /// change: each answer is the one of some binding in force meanwhile.
    #[inline]
    pub(crate) fn may_hold(&self, indev: u32, outdev: u32) -> bool {
        let range = self.range.load(Ordering::Acquire);
        let (min, max) = ((range >> 32) as u32, range as u32);
        (min..=max).contains(&indev) || (min..=max).contains(&outdev)
    }

    /// Run `f` with the binding in force. The thread's cached binding is used while its
    /// generation is current; the lock is taken only after a change (or when the cache is
    /// unusable: during thread teardown, or from inside `f`).
    #[inline]
    pub(crate) fn with_bound<R>(&self, mut f: impl FnMut(&Bound) -> R) -> R {
        let generation = self.generation.load(Ordering::Acquire);
        let cached = CACHE.try_with(|cell| {
            let mut slot = cell.try_borrow_mut().ok()?;
            let fresh = slot
                .as_ref()
                .is_some_and(|c| c.owner == self.id && c.generation == generation);
            if !fresh {
                let (generation, bound) = self.read();
                *slot = Some(Cached {
                    owner: self.id,
                    generation,
                    bound,
                });
            }
            slot.as_ref().map(|c| f(&c.bound))
        });
        match cached {
            Ok(Some(r)) => r,
            _ => f(&self.read().1),
        }
    }
}

impl LinkWatcher for Ifaces {
    fn links_changed(&self, links: &LinkMap) {
        self.bind(links.iter());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> IfPattern {
        match s.strip_suffix('+') {
            Some(p) => IfPattern {
                name: p.into(),
                prefix: true,
            },
            None => IfPattern {
                name: s.into(),
                prefix: false,
            },
        }
    }

    #[test]
    fn exact_names_and_prefixes() {
        assert!(matches(&pat("ppp0"), "ppp0"));
        assert!(!matches(&pat("ppp0"), "ppp00"));
        assert!(!matches(&pat("ppp0"), "PPP0"));
        assert!(matches(&pat("ppp+"), "ppp"));
        assert!(matches(&pat("ppp+"), "ppp17"));
        assert!(!matches(&pat("ppp+"), "pp"));
        assert!(!matches(&pat("ppp+"), "xppp0"));
        assert!(matches(&pat("+"), "anything"));
        assert_eq!(text(&pat("wg+")), "wg+");
        assert_eq!(text(&pat("wg0")), "wg0");
    }

    fn ifaces(patterns: &[&str], iif: Vec<Vec<u32>>, oif: Vec<Vec<u32>>) -> Ifaces {
        Ifaces::new(patterns.iter().map(|p| pat(p)).collect(), iif, oif)
    }

    #[test]
    fn each_index_gets_the_rules_of_every_pattern_its_name_matches() {
        let ix = ifaces(
            &["ppp0", "ppp+", "lan0"],
            vec![vec![3, 9], vec![1, 3], vec![]],
            vec![vec![], vec![7], vec![2]],
        );
        let b = ix.build([(4, "ppp0"), (5, "ppp1"), (2, "lan0"), (1, "lo")].into_iter());
        assert_eq!(b.len(), 3, "lo matches nothing");
        let ppp0 = b.get(4).expect("ppp0");
        assert_eq!((&*ppp0.iif, &*ppp0.oif), (&[1, 3, 9][..], &[7][..]));
        assert!(ppp0.any(&[0]) && ppp0.any(&[1]) && !ppp0.any(&[2]));
        let ppp1 = b.get(5).expect("ppp1");
        assert_eq!((&*ppp1.iif, &*ppp1.oif), (&[1, 3][..], &[7][..]));
        assert!(!ppp1.any(&[0]) && ppp1.any(&[2, 1]));
        let lan = b.get(2).expect("lan0");
        assert_eq!((&*lan.iif, &*lan.oif), (&[][..], &[2][..]));
        assert!(b.get(1).is_none() && b.get(0).is_none() && b.get(99).is_none());
    }

    #[test]
    fn wide_spans_of_indexes_are_looked_up_by_hash() {
        let ix = ifaces(&["veth+"], vec![vec![7]], vec![vec![]]);
        for (near, far) in [(3, 4000), (3, 5000), (1, u32::MAX)] {
            let b = ix.build([(near, "veth0"), (far, "veth1"), (near + 1, "lo")].into_iter());
            assert_eq!(b.dense.is_empty(), far - near >= DENSE_SPAN, "{near}-{far}");
            assert_eq!(b.get(near).map(|l| &*l.iif), Some(&[7][..]));
            assert_eq!(b.get(far).map(|l| &*l.iif), Some(&[7][..]));
            assert!(b.get(near + 1).is_none() && b.get(far - 1).is_none() && b.get(0).is_none());
        }
    }

    #[test]
    fn more_than_64_patterns_use_more_words() {
        let names: Vec<String> = (0..130).map(|i| format!("if{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let filed: Vec<Vec<u32>> = (0..130).map(|i| vec![i]).collect();
        let ix = ifaces(&refs, filed.clone(), filed);
        let b = ix.build([(200, "if129"), (201, "if64")].into_iter());
        let l = b.get(200).expect("if129");
        assert!(l.any(&[129]) && !l.any(&[128, 64, 1]));
        assert_eq!(&*l.iif, &[129]);
        assert_eq!(&*b.get(201).expect("if64").oif, &[64]);
        // An id past the words is simply not matched.
        assert!(!l.any(&[10_000]));
    }

    #[test]
    fn a_new_binding_reaches_a_thread_that_cached_the_old_one() {
        let ix = Arc::new(ifaces(&["wg0"], vec![vec![0]], vec![vec![]]));
        let rules_of = |index: u32| ix.with_bound(|b| b.get(index).map(|l| l.iif.to_vec()));
        assert_eq!(rules_of(4), None, "unbound: nothing");
        ix.bind([(4, "wg0")].into_iter());
        assert_eq!(rules_of(4), Some(vec![0]));
        assert_eq!(rules_of(4), Some(vec![0]), "cached");
        // Deleted and created again with a new index.
        let watcher: Arc<dyn LinkWatcher> = ix.clone();
        watcher.links_changed(&[(9, "wg0".to_string())].into_iter().collect());
        assert_eq!((rules_of(4), rules_of(9)), (None, Some(vec![0])));
        // Another thread, and another rule set on this one, each see their own.
        let other = ifaces(&["lan0"], vec![vec![5]], vec![vec![]]);
        other.bind([(9, "lan0")].into_iter());
        assert_eq!(
            other.with_bound(|b| b.get(9).map(|l| l.iif.to_vec())),
            Some(vec![5])
        );
        assert_eq!(rules_of(9), Some(vec![0]));
        let theirs = std::thread::scope(|s| {
            s.spawn(|| rules_of(9))
                .join()
                .unwrap_or_else(|_| panic!("reader thread"))
        });
        assert_eq!(theirs, Some(vec![0]));
        // From inside a read, the cache is busy: the lock serves.
        let nested = ix.with_bound(|_| rules_of(9));
        assert_eq!(nested, Some(vec![0]));
        // The range says which indexes may mean something.
        assert!(ix.may_hold(9, 0) && ix.may_hold(0, 9));
        assert!(!ix.may_hold(8, 10) && !ix.may_hold(0, 0));
        ix.bind([(3, "wg0"), (12, "lo")].into_iter());
        assert!(ix.may_hold(3, 0) && !ix.may_hold(9, 0));
        ix.bind(std::iter::empty());
        assert!(!ix.may_hold(3, 0) && !ix.may_hold(0, 0) && !ix.may_hold(u32::MAX, 1));
    }
}
