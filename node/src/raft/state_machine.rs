//! The shard state machine: decodes nothing itself (entries arrive typed),
//! applies each [`Batch`] to the shard's [`ShardState`] with log time, and
//! publishes a frozen copy-on-write view after every entry.
//!
//! Publishing happens before the entry's responder fires, so a shard actor
//! that hears "applied" always finds the new account versions in the view.
//! Balance reads use the view too: they never queue behind apply.
use super::{Batch, BatchResult, TypeConfig};
use crate::codec;
use crate::ledger::{Limits, ShardState};
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use std::io::{self, Cursor};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// A frozen view of a shard's applied state.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub state: ShardState,
    pub applied: Option<LogIdOf<TypeConfig>>,
    pub log_ts_ms: u64,
}

#[derive(Debug)]
struct Inner {
    state: ShardState,
    applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    /// `max` of every applied batch's log_ts: log time never goes backwards.
    log_ts_ms: u64,
    current: Option<(SnapshotMetaOf<TypeConfig>, Arc<Vec<u8>>)>,
}

/// Shard state machine handle (cheap to clone).
#[derive(Clone)]
pub struct ShardStore {
    inner: Arc<Mutex<Inner>>,
    published: Arc<watch::Sender<Arc<Published>>>,
}

impl ShardStore {
    pub fn new(limits: Limits) -> Self {
        let state = ShardState::new(limits);
        let (tx, _) = watch::channel(Arc::new(Published {
            state: state.clone(),
            applied: None,
            log_ts_ms: 0,
        }));
        ShardStore {
            inner: Arc::new(Mutex::new(Inner {
                state,
                applied: None,
                membership: Default::default(),
                log_ts_ms: 0,
                current: None,
            })),
            published: Arc::new(tx),
        }
    }

    /// The latest frozen view of the applied state.
    pub fn view(&self) -> Arc<Published> {
        self.published.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.published.subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, g: &Inner) {
        self.published.send_replace(Arc::new(Published {
            state: g.state.clone(),
            applied: g.applied,
            log_ts_ms: g.log_ts_ms,
        }));
    }
}

/// Snapshot body: the shard state plus its log time.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotBody {
    state: ShardState,
    log_ts_ms: u64,
}

/// Builds a snapshot from a frozen view taken when the builder was made, so
/// serialization runs without holding the state machine.
pub struct Builder {
    store: ShardStore,
    meta: SnapshotMetaOf<TypeConfig>,
    body: SnapshotBody,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<SnapshotOf<TypeConfig, Self::SnapshotData>, io::Error> {
        let data = codec::encode(&self.body).map_err(codec::to_io)?;
        let data = Arc::new(data);
        {
            let mut g = self.store.lock();
            let newer = match &g.current {
                Some((m, _)) => m.last_log_id < self.meta.last_log_id,
                None => true,
            };
            if newer {
                g.current = Some((self.meta.clone(), data.clone()));
            }
        }
        Ok(SnapshotOf::<TypeConfig, _> {
            meta: self.meta.clone(),
            snapshot: Cursor::new((*data).clone()),
        })
    }
}

impl RaftStateMachine<TypeConfig> for ShardStore {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        let g = self.lock();
        Ok((g.applied, g.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let result = {
                let mut g = self.lock();
                g.applied = Some(entry.log_id);
                let result = match &entry.payload {
                    EntryPayload::Blank => BatchResult::default(),
                    EntryPayload::Normal(Batch { log_ts_ms, events }) => {
                        g.log_ts_ms = g.log_ts_ms.max(*log_ts_ms);
                        let ts = g.log_ts_ms;
                        let mut out = Vec::with_capacity(events.len());
                        for ev in events {
                            out.push(g.state.apply(ev, ts));
                        }
                        BatchResult(out)
                    }
                    EntryPayload::Membership(m) => {
                        g.membership =
                            StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                        BatchResult::default()
                    }
                };
                self.publish(&g);
                result
            };
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let g = self.lock();
        Builder {
            store: self.clone(),
            meta: SnapshotMetaOf::<TypeConfig> {
                last_log_id: g.applied,
                last_membership: g.membership.clone(),
            },
            body: SnapshotBody {
                state: g.state.clone(),
                log_ts_ms: g.log_ts_ms,
            },
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let body: SnapshotBody = codec::decode(&data).map_err(codec::to_io)?;
        let mut g = self.lock();
        g.state = body.state;
        g.log_ts_ms = body.log_ts_ms;
        g.applied = meta.last_log_id;
        g.membership = meta.last_membership.clone();
        g.current = Some((meta.clone(), Arc::new(data)));
        self.publish(&g);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error> {
        let g = self.lock();
        Ok(g.current
            .as_ref()
            .map(|(meta, data)| SnapshotOf::<TypeConfig, _> {
                meta: meta.clone(),
                snapshot: Cursor::new((**data).clone()),
            }))
    }
}
