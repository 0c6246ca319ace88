//! A map that stays a sorted `Vec` while small and becomes a persistent
//! B-tree (`imbl::OrdMap`) beyond [`SMALL`] entries.
//!
//! Why small: most accounts hold one or two entries in their per-account maps
//! (the request id that created them, say), and a one-entry tree allocates a
//! whole leaf node, over a kilobyte with our entry sizes: the bulk of an idle
//! account's memory.
//!
//! Why persistent when large: a busy account's dedup table and charge index
//! hold up to hundreds of thousands of entries, and the account is copied on
//! write whenever something else holds it (the shard actor activating it, a
//! snapshot being written). A `BTreeMap` made each such write copy every
//! entry; `imbl::OrdMap` shares its nodes, so the copy is O(1) and a write
//! copies one path of 16-slot nodes. The representation is a function of the
//! length alone (≤ `SMALL` entries: `Vec`), so replicas that reach the same
//! content by different paths, or through a snapshot, are identical; `Hash`,
//! `Eq` and serde see only the sorted pairs.
use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use std::hash::{Hash, Hasher};

/// Entries kept in the sorted `Vec` form.
pub const SMALL: usize = 8;

#[derive(Clone)]
pub enum SmallMap<K, V> {
    Small(Vec<(K, V)>),
    Large(imbl::OrdMap<K, V>),
}

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap::Small(Vec::new())
    }
}

impl<K, V> SmallMap<K, V> {
    /// An empty map (no allocation).
    pub const fn new() -> Self {
        SmallMap::Small(Vec::new())
    }
}

impl<K: Ord + Clone, V: Clone> SmallMap<K, V> {
    pub fn len(&self) -> usize {
        match self {
            SmallMap::Small(v) => v.len(),
            SmallMap::Large(m) => m.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        match self {
            SmallMap::Small(v) => v.binary_search_by(|(x, _)| x.cmp(k)).ok().map(|i| &v[i].1),
            SmallMap::Large(m) => m.get(k),
        }
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    pub fn insert(&mut self, k: K, val: V) -> Option<V> {
        match self {
            SmallMap::Small(v) => match v.binary_search_by(|(x, _)| x.cmp(&k)) {
                Ok(i) => Some(std::mem::replace(&mut v[i].1, val)),
                Err(i) => {
                    if v.len() < SMALL {
                        v.insert(i, (k, val));
                    } else {
                        let mut m: imbl::OrdMap<K, V> = std::mem::take(v).into_iter().collect();
                        m.insert(k, val);
                        *self = SmallMap::Large(m);
                    }
                    None
                }
            },
            SmallMap::Large(m) => m.insert(k, val),
        }
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let out = match self {
            SmallMap::Small(v) => v
                .binary_search_by(|(x, _)| x.cmp(k))
                .ok()
                .map(|i| v.remove(i).1),
            SmallMap::Large(m) => m.remove(k),
        };
        self.normalize();
        out
    }

    pub fn retain(&mut self, mut f: impl FnMut(&K, &V) -> bool) {
        match self {
            SmallMap::Small(v) => v.retain(|(k, val)| f(k, val)),
            SmallMap::Large(m) => {
                let gone: Vec<K> = m
                    .iter()
                    .filter(|&(k, val)| !f(k, val))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in &gone {
                    m.remove(k);
                }
            }
        }
        self.normalize();
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = (&K, &V)> + '_> {
        match self {
            SmallMap::Small(v) => Box::new(v.iter().map(|(k, val)| (k, val))),
            SmallMap::Large(m) => Box::new(m.iter()),
        }
    }

    pub fn values(&self) -> Box<dyn Iterator<Item = &V> + '_> {
        Box::new(self.iter().map(|(_, v)| v))
    }

    pub fn keys(&self) -> Box<dyn Iterator<Item = &K> + '_> {
        Box::new(self.iter().map(|(k, _)| k))
    }

    /// The entry with the least key.
    pub fn first(&self) -> Option<(&K, &V)> {
        match self {
            SmallMap::Small(v) => v.first().map(|(k, val)| (k, val)),
            SmallMap::Large(m) => m.get_min().map(|(k, val)| (k, val)),
        }
    }

    /// Whether two large maps share their tree (a clone not written since).
    #[cfg(test)]
    pub fn shares_tree_with(&self, other: &Self) -> bool {
        matches!((self, other), (SmallMap::Large(a), SmallMap::Large(b)) if a.ptr_eq(b))
    }

    /// Removes entries from the least key up while `expired` holds for
    /// them; stops at the first entry it does not hold for. Cost: the
    /// entries removed, not the map's size.
    pub fn pop_first_while(&mut self, mut expired: impl FnMut(&V) -> bool) {
        match self {
            SmallMap::Small(v) => {
                let n = v.iter().take_while(|(_, val)| expired(val)).count();
                v.drain(..n);
            }
            SmallMap::Large(m) => {
                while let Some((k, val)) = m.get_min() {
                    if !expired(val) {
                        break;
                    }
                    let k = k.clone();
                    m.remove(&k);
                }
            }
        }
        self.normalize();
    }

    /// Removes entries from the least key up until at most `max` are left.
    pub fn truncate_first(&mut self, max: usize) {
        let mut excess = self.len().saturating_sub(max);
        self.pop_first_while(|_| {
            let pop = excess > 0;
            excess = excess.saturating_sub(1);
            pop
        });
    }

    /// Back to the `Vec` form once small again, so the form depends only on
    /// the length.
    fn normalize(&mut self) {
        if let SmallMap::Large(m) = self {
            if m.len() <= SMALL {
                let v: Vec<(K, V)> = std::mem::take(m).into_iter().collect();
                debug_assert!(v.is_sorted_by(|a, b| a.0 < b.0));
                *self = SmallMap::Small(v);
            }
        }
    }
}

impl<K: Ord + Clone + std::fmt::Debug, V: Clone + std::fmt::Debug> std::fmt::Debug
    for SmallMap<K, V>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// As `BTreeMap`'s: panics when the key is absent.
impl<K: Ord + Clone, V: Clone> std::ops::Index<&K> for SmallMap<K, V> {
    type Output = V;
    fn index(&self, k: &K) -> &V {
        self.get(k).expect("key in SmallMap")
    }
}

impl<'a, K: Ord + Clone, V: Clone> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = SmallMap::default();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<K: Ord + Clone + PartialEq, V: PartialEq + Clone> PartialEq for SmallMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl<K: Ord + Clone + Eq, V: Eq + Clone> Eq for SmallMap<K, V> {}

impl<K: Ord + Clone + Hash, V: Hash + Clone> Hash for SmallMap<K, V> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.len().hash(state);
        for (k, v) in self.iter() {
            k.hash(state);
            v.hash(state);
        }
    }
}

impl<K: Ord + Clone + Serialize, V: Serialize + Clone> Serialize for SmallMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.len()))?;
        for (k, v) in self.iter() {
            seq.serialize_element(&(k, v))?;
        }
        seq.end()
    }
}

impl<'de, K, V> Deserialize<'de> for SmallMap<K, V>
where
    K: Ord + Clone + Deserialize<'de>,
    V: Clone + Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs: Vec<(K, V)> = Vec::deserialize(d)?;
        Ok(pairs.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    proptest! {
        /// Behaves like a BTreeMap through any sequence of inserts, removes
        /// and retains, and its form depends only on its length.
        #[test]
        fn matches_btreemap(ops in proptest::collection::vec((0u8..3, 0u16..40, any::<u32>()), 0..300)) {
            let mut s: SmallMap<u16, u32> = SmallMap::default();
            let mut b: BTreeMap<u16, u32> = BTreeMap::new();
            for (op, k, v) in ops {
                match op {
                    0 => prop_assert_eq!(s.insert(k, v), b.insert(k, v)),
                    1 => prop_assert_eq!(s.remove(&k), b.remove(&k)),
                    2 if v % 2 == 0 => {
                        // Pop from the least key while the value is odd.
                        s.pop_first_while(|x| x % 2 == 1);
                        while b.first_key_value().is_some_and(|(_, x)| x % 2 == 1) {
                            b.pop_first();
                        }
                    }
                    2 if v % 3 == 0 => {
                        let max = (k % 12) as usize;
                        s.truncate_first(max);
                        while b.len() > max {
                            b.pop_first();
                        }
                    }
                    _ => {
                        s.retain(|x, _| x % 3 != k % 3);
                        b.retain(|x, _| x % 3 != k % 3);
                    }
                }
                prop_assert_eq!(s.len(), b.len());
                prop_assert_eq!(matches!(s, SmallMap::Small(_)), b.len() <= SMALL);
                prop_assert!(s.iter().map(|(k, v)| (*k, *v)).eq(b.iter().map(|(k, v)| (*k, *v))));
                prop_assert_eq!(s.get(&k), b.get(&k));
            }
            let bytes = crate::tests_codec::encode(&s);
            let back: SmallMap<u16, u32> = crate::tests_codec::decode(&bytes);
            prop_assert_eq!(&back, &s);
            prop_assert_eq!(crate::hash::stable_hash(&back), crate::hash::stable_hash(&s));
        }
    }
}
