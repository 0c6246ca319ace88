//! The Admin service: cluster status as this node sees it.
use super::FrontDoor;
use crate::raft::node_of;
use charging_proto::v1 as pb;
use charging_proto::v1::admin_server::Admin;
use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub struct AdminService(pub Arc<FrontDoor>);

fn nodes(fd: &FrontDoor) -> Vec<pb::NodeStatus> {
    fd.public_addrs
        .iter()
        .map(|(id, addr)| pb::NodeStatus {
            node_id: *id,
            public_addr: addr.clone(),
            internal_addr: fd.internal_addrs.get(id).cloned().unwrap_or_default(),
            // This node, or a peer heard from within the last 3 s
            // (heartbeats go out every 100 ms).
            reachable: *id == fd.node
                || fd
                    .heard
                    .get(id)
                    .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(3)),
        })
        .collect()
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn shard_map(
        &self,
        _r: Request<pb::ShardMapRequest>,
    ) -> Result<Response<pb::ShardMapResponse>, Status> {
        let fd = &self.0;
        let map = fd.meta.as_ref().map(|(_, store)| store.view());
        let map = map
            .as_ref()
            .and_then(|v| crate::meta::map_of(&v.state).cloned());
        let routes = fd
            .shards
            .iter()
            .map(|h| {
                let (leader, term, voters) = {
                    let m = h.raft.metrics();
                    let m = m.borrow_watched();
                    (
                        m.current_leader.map(node_of).unwrap_or(0),
                        m.current_term,
                        m.membership_config
                            .membership()
                            .voter_ids()
                            .map(node_of)
                            .collect::<Vec<_>>(),
                    )
                };
                let intended = map
                    .as_ref()
                    .and_then(|m| m.placement.get(&h.shard))
                    .map(|r| r.iter().map(|r| node_of(*r)).collect())
                    .unwrap_or_default();
                pb::ShardRoute {
                    intended,
                    shard_id: h.shard,
                    leader,
                    leader_addr: fd.public_addrs.get(&leader).cloned().unwrap_or_default(),
                    term,
                    voters,
                }
            })
            .collect();
        Ok(Response::new(pb::ShardMapResponse {
            version: map.as_ref().map(|m| m.version).unwrap_or(0),
            shards: fd.shards.len() as u32,
            routes,
            nodes: nodes(fd),
        }))
    }

    async fn status(
        &self,
        _r: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let fd = &self.0;
        let nodes = nodes(fd);
        let shard_status = fd
            .shards
            .iter()
            .map(|h| {
                let m = h.raft.metrics().borrow_watched().clone();
                let view = h.store.view();
                let last_log = m.last_log_index.unwrap_or(0);
                let lag = m
                    .replication
                    .as_ref()
                    .map(|r| {
                        r.iter()
                            .map(|(id, matched)| {
                                (
                                    node_of(*id),
                                    last_log.saturating_sub(
                                        matched.as_ref().map(|l| l.index).unwrap_or(0),
                                    ),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                pb::ShardStatus {
                    shard_id: h.shard,
                    leader: m.current_leader.map(node_of).unwrap_or(0),
                    term: m.current_term,
                    applied_index: m.last_applied.map(|l| l.index).unwrap_or(0),
                    voters: m
                        .membership_config
                        .membership()
                        .voter_ids()
                        .map(node_of)
                        .collect(),
                    accounts: view.state.accounts.len() as u64,
                    lag,
                }
            })
            .collect();
        let (map_version, meta_leader) = match &fd.meta {
            Some((raft, store)) => (
                crate::meta::map_of(&store.view().state)
                    .map(|m| m.version)
                    .unwrap_or(0),
                raft.metrics()
                    .borrow_watched()
                    .current_leader
                    .map(node_of)
                    .unwrap_or(0),
            ),
            None => (0, 0),
        };
        Ok(Response::new(pb::StatusResponse {
            map_version,
            meta_leader,
            node_id: fd.node,
            shards: fd.shards.len() as u32,
            nodes,
            shard_status,
        }))
    }
}
