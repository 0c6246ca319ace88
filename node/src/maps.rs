//! Hash maps with a fixed hasher (DESIGN §4b: hashers are fixed).
//!
//! std's `RandomState` and dashmap's default draw their keys from the OS per
//! process, so the order a map iterates in (and which dashmap shard a key
//! lands in) changes from run to run: a simulator seed would not replay its
//! run. Every map in the node uses these aliases instead (clippy's
//! `disallowed-methods` in `node/clippy.toml` refuses `HashMap::new` and
//! `DashMap::new`). Keys are account ids, shard, node and session ids from
//! the network functions and peers of the cluster, not from the open
//! internet, and each map is bounded by its own limit.
pub type FixedState = foldhash::fast::FixedState;
pub type HashMap<K, V> = std::collections::HashMap<K, V, FixedState>;
pub type HashSet<K> = std::collections::HashSet<K, FixedState>;
pub type DashMap<K, V> = dashmap::DashMap<K, V, FixedState>;
