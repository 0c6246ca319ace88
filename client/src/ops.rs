//! One method per operation: with a fresh request id, and `_with_id` to
//! retry one whose outcome is unknown. The `Charging` calls are made from
//! the operation table ([`charging_proto::charging_ops!`], its `on` and
//! `client` columns); the `Admin` calls are written below.
use super::*;

/// The client's columns of the operation table: where a request is routed
/// ([`OnAccount`]) and its calls.
macro_rules! client_calls {
    ($( $(#[doc = $doc:literal])* $op:ident($Req:ident -> $Resp:ident) on [$on:ident]
        serve $serve:tt stream $stream:tt client [$($client:tt)*] decide $decide:tt
        shows $shows:tt; )*) => {
        $( client_calls!(@on $on $Req); )*
        impl Client {
            $( client_calls!(@call $op $Req $Resp [$(#[doc = $doc])*] $($client)*); )*
        }
    };
    (@on account $Req:ident) => {
        impl OnAccount for proto::$Req {
            fn account(&self) -> Option<&str> {
                Some(&self.account_id)
            }
        }
    };
    (@on cluster $Req:ident) => {
        impl OnAccount for proto::$Req {
            fn account(&self) -> Option<&str> {
                None
            }
        }
    };
    (@call $op:ident $Req:ident $Resp:ident [$($doc:tt)*]
        pair $with_id:ident ($($arg:ident: $ty:ty),*) { $($field:tt)* }) => {
        $($doc)*
        pub async fn $op(&self, $($arg: $ty),*) -> Result<proto::$Resp, Error> {
            self.$with_id(new_request_id(), $($arg),*).await
        }

        #[doc = concat!("[`Client::", stringify!($op), "`] with an explicit request id.")]
        pub async fn $with_id(
            &self,
            request_id: Uuid,
            $($arg: $ty),*
        ) -> Result<proto::$Resp, Error> {
            let msg = proto::$Req {
                request_id: request_id_bytes(request_id),
                $($field)*
            };
            self.call(stringify!($op), msg, |ch, r| async move {
                ChargingClient::new(ch).$op(r).await
            })
            .await
        }
    };
    (@call $op:ident $Req:ident $Resp:ident [$($doc:tt)*]
        read ($($arg:ident: $ty:ty),*) { $($field:tt)* }) => {
        $($doc)*
        pub async fn $op(&self, $($arg: $ty),*) -> Result<proto::$Resp, Error> {
            let msg = proto::$Req { $($field)* };
            self.call(stringify!($op), msg, |ch, r| async move {
                ChargingClient::new(ch).$op(r).await
            })
            .await
        }
    };
    // No client call (bulk creation is for loaders, which use tonic).
    (@call $op:ident $Req:ident $Resp:ident [$($doc:tt)*]) => {};
}
charging_proto::charging_ops!(client_calls);

impl Client {
    // ---- Admin service ----------------------------------------------------------

    /// The node's `grpc.health.v1` status for the whole server, e.g.
    /// `"SERVING"` (`"NOT_SERVING"` while it stops). The health service is
    /// open: no token needed, so a container's health check can ask it.
    pub async fn health(&self) -> Result<&'static str, Error> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let r = self
            .call(
                "health",
                HealthCheckRequest::default(),
                |ch, r| async move { HealthClient::new(ch).check(r).await },
            )
            .await?;
        Ok(ServingStatus::try_from(r.status)
            .map(|s| s.as_str_name())
            .unwrap_or("UNKNOWN"))
    }

    /// Cluster status as seen by the node the client is connected to.
    pub async fn status(&self) -> Result<StatusResponse, Error> {
        self.status_request(StatusRequest::default()).await
    }

    /// [`Client::status`] with a digest of each replica the node hosts
    /// (`state_hash` at `state_index`): replicas of a shard at one index
    /// must agree. Walks every account of each replica, so it costs more.
    pub async fn status_digest(&self) -> Result<StatusResponse, Error> {
        self.status_request(StatusRequest {
            with_state_hash: true,
        })
        .await
    }

    async fn status_request(&self, req: StatusRequest) -> Result<StatusResponse, Error> {
        self.call("status", req, |ch, r| async move {
            AdminClient::new(ch).status(r).await
        })
        .await
    }

    /// Adds a node to the cluster map; the placement driver then moves
    /// replicas onto it. Idempotent for the same id and addresses.
    pub async fn add_node(
        &self,
        node_id: u64,
        public_addr: &str,
        internal_addr: &str,
    ) -> Result<proto::NodeChangeResponse, Error> {
        let req = proto::AddNodeRequest {
            node_id,
            public_addr: public_addr.to_string(),
            internal_addr: internal_addr.to_string(),
            shards: 0,
            fresh: false,
            disk_id: 0,
        };
        self.call("add_node", req, |ch, r| async move {
            AdminClient::new(ch).add_node(r).await
        })
        .await
    }

    /// Marks a node draining: every replica moves off it.
    pub async fn drain_node(&self, node_id: u64) -> Result<proto::NodeChangeResponse, Error> {
        self.call(
            "drain_node",
            proto::NodeRequest { node_id },
            |ch, r| async move { AdminClient::new(ch).drain_node(r).await },
        )
        .await
    }

    /// Takes a node out of the cluster map (refused while it holds replicas,
    /// unless `force`).
    pub async fn remove_node(
        &self,
        node_id: u64,
        force: bool,
    ) -> Result<proto::NodeChangeResponse, Error> {
        let req = proto::RemoveNodeRequest { node_id, force };
        self.call("remove_node", req, |ch, r| async move {
            AdminClient::new(ch).remove_node(r).await
        })
        .await
    }
}
