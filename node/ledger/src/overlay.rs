//! Copy-on-write overlay over an account's map, used by `decide` to stage
//! the entries a decision touches without cloning the account: the decision
//! reads through the overlay, and only an acceptance writes it back.
//!
//! A decision writes a handful of entries at most, so the writes are a
//! `Vec` searched linearly: a `BTreeMap` allocated a whole node (11 slots of
//! key and value, over a kilobyte for sessions) on every decision.
use super::smallmap::SmallMap;

#[derive(Debug)]
pub(crate) struct Overlay<K, V> {
    /// The last write of each key (`None`: removed), one entry per key.
    writes: Vec<(K, Option<V>)>,
}

impl<K, V> Default for Overlay<K, V> {
    fn default() -> Self {
        Overlay { writes: Vec::new() }
    }
}

impl<K: Ord + Clone, V: Clone> Overlay<K, V> {
    fn write(&self, k: &K) -> Option<&Option<V>> {
        self.writes.iter().find(|(x, _)| x == k).map(|(_, w)| w)
    }

    pub(crate) fn get<'a>(&'a self, base: &'a SmallMap<K, V>, k: &K) -> Option<&'a V> {
        match self.write(k) {
            Some(w) => w.as_ref(),
            None => base.get(k),
        }
    }

    fn put(&mut self, k: K, w: Option<V>) {
        match self.writes.iter_mut().find(|(x, _)| *x == k) {
            Some(slot) => slot.1 = w,
            None => self.writes.push((k, w)),
        }
    }

    pub(crate) fn insert(&mut self, k: K, v: V) {
        self.put(k, Some(v));
    }

    pub(crate) fn remove(&mut self, k: &K) {
        self.put(k.clone(), None);
    }

    /// Entries as seen through the overlay, in no particular order.
    pub(crate) fn iter<'a>(
        &'a self,
        base: &'a SmallMap<K, V>,
    ) -> impl Iterator<Item = (&'a K, &'a V)> {
        let from_base = base.iter().filter(|(k, _)| self.write(k).is_none());
        let from_writes = self
            .writes
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)));
        from_base.chain(from_writes)
    }

    /// Number of entries seen through the overlay.
    pub(crate) fn len(&self, base: &SmallMap<K, V>) -> usize {
        let mut n = base.len();
        for (k, w) in &self.writes {
            match (base.contains_key(k), w.is_some()) {
                (true, false) => n -= 1,
                (false, true) => n += 1,
                _ => {}
            }
        }
        n
    }

    pub(crate) fn apply_to(self, base: &mut SmallMap<K, V>) {
        for (k, w) in self.writes {
            match w {
                Some(v) => {
                    base.insert(k, v);
                }
                None => {
                    base.remove(&k);
                }
            }
        }
    }
}
