//! Copy-on-write overlay over a `BTreeMap`, used by `decide` to stage the
//! entries a decision touches without cloning the account: the decision reads
//! through the overlay, and only an acceptance writes it back.
use std::collections::BTreeMap;

#[derive(Debug)]
pub(crate) struct Overlay<K, V> {
    writes: BTreeMap<K, Option<V>>,
}

impl<K, V> Default for Overlay<K, V> {
    fn default() -> Self {
        Overlay {
            writes: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Clone, V> Overlay<K, V> {
    pub(crate) fn get<'a>(&'a self, base: &'a BTreeMap<K, V>, k: &K) -> Option<&'a V> {
        match self.writes.get(k) {
            Some(w) => w.as_ref(),
            None => base.get(k),
        }
    }

    pub(crate) fn insert(&mut self, k: K, v: V) {
        self.writes.insert(k, Some(v));
    }

    pub(crate) fn remove(&mut self, k: &K) {
        self.writes.insert(k.clone(), None);
    }

    /// Entries as seen through the overlay, in no particular order.
    pub(crate) fn iter<'a>(
        &'a self,
        base: &'a BTreeMap<K, V>,
    ) -> impl Iterator<Item = (&'a K, &'a V)> {
        let from_base = base.iter().filter(|(k, _)| !self.writes.contains_key(k));
        let from_writes = self
            .writes
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k, v)));
        from_base.chain(from_writes)
    }

    /// Number of entries seen through the overlay.
    pub(crate) fn len(&self, base: &BTreeMap<K, V>) -> usize {
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

    pub(crate) fn apply_to(self, base: &mut BTreeMap<K, V>) {
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
