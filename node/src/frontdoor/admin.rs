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

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        _r: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let fd = &self.0;
        let nodes = fd
            .public_addrs
            .iter()
            .map(|(id, addr)| pb::NodeStatus {
                node_id: *id,
                public_addr: addr.clone(),
                internal_addr: String::new(),
                reachable: true,
            })
            .collect();
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
        Ok(Response::new(pb::StatusResponse {
            node_id: fd.node,
            shards: fd.shards.len() as u32,
            nodes,
            shard_status,
        }))
    }
}
