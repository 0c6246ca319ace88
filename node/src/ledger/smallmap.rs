//! A map that stays a sorted `Vec` while small and becomes a `BTreeMap`
//! beyond [`SMALL`] entries.
//!
//! Why: most accounts hold one or two entries in their per-account maps (the
//! request id that created them, say), and a one-entry `BTreeMap` allocates a
//! whole 11-slot leaf node, over a kilobyte with our entry sizes: the bulk
//! of an idle account's memory. The representation is a function of the
//! length alone (≤ `SMALL` entries: `Vec`), so replicas that reach the same
//! content by different paths, or through a snapshot, are identical; `Hash`,
//! `Eq` and serde see only the sorted pairs.
use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, SerializeSeq, Serializer};
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

/// Entries kept in the sorted `Vec` form.
pub const SMALL: usize = 8;

#[derive(Clone, Debug)]
pub enum SmallMap<K, V> {
    Small(Vec<(K, V)>),
    Large(BTreeMap<K, V>),
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

impl<K: Ord + Clone, V> SmallMap<K, V> {
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
                        let mut m: BTreeMap<K, V> = std::mem::take(v).into_iter().collect();
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

    pub fn retain(&mut self, mut f: impl FnMut(&K, &mut V) -> bool) {
        match self {
            SmallMap::Small(v) => v.retain_mut(|(k, val)| f(k, val)),
            SmallMap::Large(m) => m.retain(|k, val| f(k, val)),
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

    /// Back to the `Vec` form once small again, so the form depends only on
    /// the length.
    fn normalize(&mut self) {
        if let SmallMap::Large(m) = self {
            if m.len() <= SMALL {
                let v: Vec<(K, V)> = std::mem::take(m).into_iter().collect();
                *self = SmallMap::Small(v);
            }
        }
    }
}

/// As `BTreeMap`'s: panics when the key is absent.
impl<K: Ord + Clone, V> std::ops::Index<&K> for SmallMap<K, V> {
    type Output = V;
    fn index(&self, k: &K) -> &V {
        self.get(k).expect("key in SmallMap")
    }
}

impl<'a, K: Ord + Clone, V> IntoIterator for &'a SmallMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Box<dyn Iterator<Item = (&'a K, &'a V)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Ord + Clone, V> FromIterator<(K, V)> for SmallMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = SmallMap::default();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<K: Ord + Clone + PartialEq, V: PartialEq> PartialEq for SmallMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().zip(other.iter()).all(|(a, b)| a == b)
    }
}

impl<K: Ord + Clone + Eq, V: Eq> Eq for SmallMap<K, V> {}

impl<K: Ord + Clone + Hash, V: Hash> Hash for SmallMap<K, V> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.len().hash(state);
        for (k, v) in self.iter() {
            k.hash(state);
            v.hash(state);
        }
    }
}

impl<K: Ord + Clone + Serialize, V: Serialize> Serialize for SmallMap<K, V> {
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
    V: Deserialize<'de>,
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

    proptest! {
        /// Behaves like a BTreeMap through any sequence of inserts, removes
        /// and retains, and its form depends only on its length.
        #[test]
        fn matches_btreemap(ops in proptest::collection::vec((0u8..3, 0u16..40, any::<u32>()), 0..200)) {
            let mut s: SmallMap<u16, u32> = SmallMap::default();
            let mut b: BTreeMap<u16, u32> = BTreeMap::new();
            for (op, k, v) in ops {
                match op {
                    0 => prop_assert_eq!(s.insert(k, v), b.insert(k, v)),
                    1 => prop_assert_eq!(s.remove(&k), b.remove(&k)),
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
            let bytes = crate::codec::encode(&s).unwrap();
            let back: SmallMap<u16, u32> = crate::codec::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &s);
            prop_assert_eq!(crate::ledger::hash::stable_hash(&back), crate::ledger::hash::stable_hash(&s));
        }
    }
}
