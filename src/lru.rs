//! A slab of entries kept in the order they were last touched: O(1) insert, touch, remove, and
//! look at the oldest, with no per-operation allocation once the slab has grown.
//!
//! This module owns the bookkeeping that bounded tables share (pairing's client and upstream
//! entries, TCP intents): a fixed capacity, the oldest entry first for expiry and eviction, and
//! handles ([`Id`]) that other indexes may keep and that go stale, detectably, when their entry
//! is removed. It knows nothing about DNS or packets, reads no clock (times are passed in) and
//! never panics: a stale or foreign handle is simply not found.

use std::time::Instant;

/// A handle to an entry. Stale once the entry is removed (its slot may be reused under a new
/// generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Id {
    index: u32,
    generation: u32,
}

const NONE: u32 = u32::MAX;

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    /// The time the entry was inserted or last touched.
    at: Instant,
    prev: u32,
    next: u32,
    value: Option<T>,
}

/// Entries in last-touched order, oldest first.
#[derive(Debug)]
pub struct Lru<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    len: usize,
}

impl<T> Default for Lru<T> {
    fn default() -> Self {
        Lru::new()
    }
}

impl<T> Lru<T> {
    pub fn new() -> Lru<T> {
        Lru {
            slots: Vec::new(),
            free: Vec::new(),
            head: NONE,
            tail: NONE,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add an entry as the newest. `None` only if the slab cannot grow further (2^32 - 1
    /// slots); callers bound their tables far below that.
    pub fn insert(&mut self, value: T, now: Instant) -> Option<Id> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&i| i != NONE)?;
                self.slots.push(Slot {
                    generation: 0,
                    at: now,
                    prev: NONE,
                    next: NONE,
                    value: None,
                });
                i
            }
        };
        let slot = self.slots.get_mut(index as usize)?;
        slot.value = Some(value);
        slot.at = now;
        let generation = slot.generation;
        self.link_back(index);
        self.len += 1;
        Some(Id { index, generation })
    }

    fn slot(&self, id: Id) -> Option<&Slot<T>> {
        self.slots
            .get(id.index as usize)
            .filter(|s| s.generation == id.generation && s.value.is_some())
    }

    fn slot_mut(&mut self, id: Id) -> Option<&mut Slot<T>> {
        self.slots
            .get_mut(id.index as usize)
            .filter(|s| s.generation == id.generation && s.value.is_some())
    }

    pub fn get(&self, id: Id) -> Option<&T> {
        self.slot(id).and_then(|s| s.value.as_ref())
    }

    pub fn get_mut(&mut self, id: Id) -> Option<&mut T> {
        self.slot_mut(id).and_then(|s| s.value.as_mut())
    }

    /// When the entry was inserted or last touched.
    pub fn touched_at(&self, id: Id) -> Option<Instant> {
        self.slot(id).map(|s| s.at)
    }

    /// Make the entry the newest, as of `now`.
    pub fn touch(&mut self, id: Id, now: Instant) -> bool {
        let Some(slot) = self.slot_mut(id) else {
            return false;
        };
        slot.at = now;
        self.unlink(id.index);
        self.link_back(id.index);
        true
    }

    /// Take an entry out. Its handle, and every copy of it, goes stale.
    pub fn remove(&mut self, id: Id) -> Option<T> {
        self.slot(id)?;
        self.unlink(id.index);
        let slot = self.slots.get_mut(id.index as usize)?;
        let value = slot.value.take();
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.len -= 1;
        value
    }

    /// The oldest entry: its handle, when it was last touched, and the entry.
    pub fn oldest(&self) -> Option<(Id, Instant, &T)> {
        let slot = self.slots.get(self.head as usize)?;
        let value = slot.value.as_ref()?;
        let id = Id {
            index: self.head,
            generation: slot.generation,
        };
        Some((id, slot.at, value))
    }

    /// Remove and return the oldest entry if it was last touched at or before `cutoff`.
    pub fn pop_due(&mut self, cutoff: Instant) -> Option<(Id, T)> {
        let (id, at, _) = self.oldest()?;
        if at > cutoff {
            return None;
        }
        self.remove(id).map(|v| (id, v))
    }

    /// Remove and return the oldest entry.
    pub fn pop_oldest(&mut self) -> Option<(Id, T)> {
        let (id, _, _) = self.oldest()?;
        self.remove(id).map(|v| (id, v))
    }

    fn link_back(&mut self, index: u32) {
        let tail = self.tail;
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.prev = tail;
            slot.next = NONE;
        }
        match self.slots.get_mut(tail as usize) {
            Some(t) => t.next = index,
            None => self.head = index,
        }
        self.tail = index;
    }

    fn unlink(&mut self, index: u32) {
        let Some((prev, next)) = self.slots.get(index as usize).map(|s| (s.prev, s.next)) else {
            return;
        };
        match self.slots.get_mut(prev as usize) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.slots.get_mut(next as usize) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
        if let Some(slot) = self.slots.get_mut(index as usize) {
            slot.prev = NONE;
            slot.next = NONE;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn oldest_first_and_touch_moves_to_the_back() {
        let t0 = Instant::now();
        let mut l = Lru::new();
        let a = l.insert("a", at(t0, 0)).unwrap();
        let b = l.insert("b", at(t0, 1)).unwrap();
        let _c = l.insert("c", at(t0, 2)).unwrap();
        assert_eq!(l.oldest().map(|(_, _, v)| *v), Some("a"));
        assert!(l.touch(a, at(t0, 3)));
        assert_eq!(l.oldest().map(|(_, _, v)| *v), Some("b"));
        assert_eq!(l.remove(b), Some("b"));
        assert_eq!(l.pop_oldest().map(|(_, v)| v), Some("c"));
        assert_eq!(l.pop_oldest().map(|(_, v)| v), Some("a"));
        assert!(l.pop_oldest().is_none());
        assert!(l.is_empty());
    }

    #[test]
    fn stale_handles_find_nothing_after_reuse() {
        let t0 = Instant::now();
        let mut l = Lru::new();
        let a = l.insert(1, t0).unwrap();
        assert_eq!(l.remove(a), Some(1));
        let b = l.insert(2, t0).unwrap();
        assert_ne!(a, b, "the slot is reused under a new generation");
        assert_eq!(l.get(a), None);
        assert_eq!(l.remove(a), None);
        assert!(!l.touch(a, t0));
        assert_eq!(l.get(b), Some(&2));
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn pop_due_stops_at_the_first_fresh_entry() {
        let t0 = Instant::now();
        let mut l = Lru::new();
        for i in 0..5u64 {
            l.insert(i, at(t0, i * 10));
        }
        let mut due = Vec::new();
        while let Some((_, v)) = l.pop_due(at(t0, 25)) {
            due.push(v);
        }
        assert_eq!(due, vec![0, 1, 2]);
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn matches_a_model_under_random_operations() {
        // A VecDeque model: same order, same contents, after 20,000 random operations.
        let t0 = Instant::now();
        let mut l = Lru::new();
        let mut model: std::collections::VecDeque<(Id, u32)> = Default::default();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for step in 0..20_000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let now = at(t0, u64::from(step));
            match x % 4 {
                0 | 1 => {
                    let id = l.insert(step, now).unwrap();
                    model.push_back((id, step));
                }
                2 if !model.is_empty() => {
                    let i = (x >> 8) as usize % model.len();
                    let (id, v) = model.remove(i).unwrap();
                    assert_eq!(l.remove(id), Some(v));
                }
                3 if !model.is_empty() => {
                    let i = (x >> 8) as usize % model.len();
                    let (id, v) = model.remove(i).unwrap();
                    assert!(l.touch(id, now));
                    model.push_back((id, v));
                }
                _ => {}
            }
            assert_eq!(l.len(), model.len());
            assert_eq!(
                l.oldest().map(|(id, _, v)| (id, *v)),
                model.front().copied()
            );
        }
        while let Some((id, v)) = l.pop_oldest() {
            assert_eq!(model.pop_front(), Some((id, v)));
        }
        assert!(model.is_empty());
    }
}
