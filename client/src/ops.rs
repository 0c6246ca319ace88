//! One method per operation: with a fresh request id, and `_with_id` to
//! retry one whose outcome is unknown.
use super::*;

impl Client {
    /// Creates an account. `initial_balance` goes to money bucket 1;
    /// `credit_limit` 0 means prepaid.
    pub async fn create_account(
        &self,
        account: impl Into<String>,
        currency: impl Into<String>,
        initial_balance: i64,
        credit_limit: i64,
        buckets: Vec<BucketSpec>,
    ) -> Result<CreateAccountResponse, Error> {
        let id = new_request_id();
        self.create_account_with_id(
            id,
            account,
            currency,
            initial_balance,
            credit_limit,
            buckets,
        )
        .await
    }

    /// [`Client::create_account`] with an explicit request id.
    pub async fn create_account_with_id(
        &self,
        request_id: Uuid,
        account: impl Into<String>,
        currency: impl Into<String>,
        initial_balance: i64,
        credit_limit: i64,
        buckets: Vec<BucketSpec>,
    ) -> Result<CreateAccountResponse, Error> {
        let msg = CreateAccountRequest {
            account_id: account.into(),
            request_id: request_id_bytes(request_id),
            currency: currency.into(),
            credit_limit,
            initial_balance,
            buckets,
        };
        self.call("create_account", msg, |ch, r| async move {
            ChargingClient::new(ch).create_account(r).await
        })
        .await
    }

    /// Adds a bucket to an account.
    pub async fn add_bucket(
        &self,
        account: impl Into<String>,
        bucket: BucketSpec,
    ) -> Result<AddBucketResponse, Error> {
        self.add_bucket_with_id(new_request_id(), account, bucket)
            .await
    }

    /// [`Client::add_bucket`] with an explicit request id.
    pub async fn add_bucket_with_id(
        &self,
        request_id: Uuid,
        account: impl Into<String>,
        bucket: BucketSpec,
    ) -> Result<AddBucketResponse, Error> {
        let msg = AddBucketRequest {
            account_id: account.into(),
            request_id: request_id_bytes(request_id),
            bucket: Some(bucket),
        };
        self.call("add_bucket", msg, |ch, r| async move {
            ChargingClient::new(ch).add_bucket(r).await
        })
        .await
    }

    /// Tops up a bucket (`bucket_id` 0 = the main money bucket).
    pub async fn top_up(
        &self,
        account: impl Into<String>,
        bucket_id: u32,
        amount: i64,
    ) -> Result<TopUpResponse, Error> {
        self.top_up_with_id(new_request_id(), account, bucket_id, amount)
            .await
    }

    /// [`Client::top_up`] with an explicit request id.
    pub async fn top_up_with_id(
        &self,
        request_id: Uuid,
        account: impl Into<String>,
        bucket_id: u32,
        amount: i64,
    ) -> Result<TopUpResponse, Error> {
        let msg = TopUpRequest {
            account_id: account.into(),
            request_id: request_id_bytes(request_id),
            bucket_id,
            amount,
        };
        self.call("top_up", msg, |ch, r| async move {
            ChargingClient::new(ch).top_up(r).await
        })
        .await
    }

    /// Reserves units on a rating group within a session (3GPP initial request).
    pub async fn reserve(
        &self,
        account: impl Into<String>,
        session: impl Into<String>,
        seq: u64,
        rating_group: u32,
        requested: Units,
    ) -> Result<ReserveResponse, Error> {
        self.reserve_with_id(
            new_request_id(),
            account,
            session,
            seq,
            rating_group,
            requested,
        )
        .await
    }

    /// [`Client::reserve`] with an explicit request id.
    pub async fn reserve_with_id(
        &self,
        request_id: Uuid,
        account: impl Into<String>,
        session: impl Into<String>,
        seq: u64,
        rating_group: u32,
        requested: Units,
    ) -> Result<ReserveResponse, Error> {
        let msg = ReserveRequest {
            account_id: account.into(),
            request_id: request_id_bytes(request_id),
            session_id: session.into(),
            seq,
            rating_group,
            requested: Some(requested),
        };
        self.call("reserve", msg, |ch, r| async move {
            ChargingClient::new(ch).reserve(r).await
        })
        .await
    }

    /// Reports usage and asks for more on several rating groups at once.
    pub async fn update(
        &self,
        account: impl Into<String>,
        session: impl Into<String>,
        seq: u64,
        reports: Vec<UsageReport>,
    ) -> Result<UpdateResponse, Error> {
        self.update_with_id(new_request_id(), account, session, seq, reports)
            .await
    }

    /// [`Client::update`] with an explicit request id.
    pub async fn update_with_id(
        &self,
        request_id: Uuid,
        account: impl Into<String>,
        session: impl Into<String>,
        seq: u64,
        reports: Vec<UsageReport>,
    ) -> Result<UpdateResponse, Error> {
        let msg = UpdateRequest {
            account_id: account.into(),
            request_id: request_id_bytes(request_id),
            session_id: session.into(),
            seq,
            reports,
        };
        self.call("update", msg, |ch, r| async move {
            ChargingClient::new(ch).update(r).await
        })
        .await
    }

    /// Charges the final usage of a session and releases all it holds.
    pub async fn terminate(
        &self,
        account: impl Into<String>,
        session: impl Into<String>,
        seq: u64,
        reports: Vec<UsageReport>,
    ) -> Result<TerminateResponse, Error> {
        self.terminate_with_id(new_request_id(), account, session, seq, reports)
            .await
    }

    /// [`Client::terminate`] with an explicit request id.
    pub async fn terminate_with_id(
        &self,
        request_id: Uuid,
        account: impl Into<String>,
        session: impl Into<String>,
        seq: u64,
        reports: Vec<UsageReport>,
    ) -> Result<TerminateResponse, Error> {
        let msg = TerminateRequest {
            account_id: account.into(),
            request_id: request_id_bytes(request_id),
            session_id: session.into(),
            seq,
            reports,
        };
        self.call("terminate", msg, |ch, r| async move {
            ChargingClient::new(ch).terminate(r).await
        })
        .await
    }

    /// Commits usage against one reservation; `final_` resolves it.
    pub async fn commit(
        &self,
        account: impl Into<String>,
        reservation_id: u64,
        used: Units,
        final_: bool,
    ) -> Result<CommitResponse, Error> {
        self.commit_with_id(new_request_id(), account, reservation_id, used, final_)
            .await
    }

    /// [`Client::commit`] with an explicit request id.
    pub async fn commit_with_id(
        &self,
        request_id: Uuid,
        account: impl Into<String>,
        reservation_id: u64,
        used: Units,
        final_: bool,
    ) -> Result<CommitResponse, Error> {
        let msg = CommitRequest {
            account_id: account.into(),
            request_id: request_id_bytes(request_id),
            reservation_id,
            used: Some(used),
            r#final: final_,
        };
        self.call("commit", msg, |ch, r| async move {
            ChargingClient::new(ch).commit(r).await
        })
        .await
    }

    /// Releases a reservation without charging.
    pub async fn release(
        &self,
        account: impl Into<String>,
        reservation_id: u64,
    ) -> Result<ReleaseResponse, Error> {
        self.release_with_id(new_request_id(), account, reservation_id)
            .await
    }

    /// [`Client::release`] with an explicit request id.
    pub async fn release_with_id(
        &self,
        request_id: Uuid,
        account: impl Into<String>,
        reservation_id: u64,
    ) -> Result<ReleaseResponse, Error> {
        let msg = ReleaseRequest {
            account_id: account.into(),
            request_id: request_id_bytes(request_id),
            reservation_id,
        };
        self.call("release", msg, |ch, r| async move {
            ChargingClient::new(ch).release(r).await
        })
        .await
    }

    /// Refunds part or all of the charge made by the request `original_request_id`.
    pub async fn refund(
        &self,
        account: impl Into<String>,
        original_request_id: Uuid,
        amount: i64,
    ) -> Result<RefundResponse, Error> {
        self.refund_with_id(new_request_id(), account, original_request_id, amount)
            .await
    }

    /// [`Client::refund`] with an explicit request id.
    pub async fn refund_with_id(
        &self,
        request_id: Uuid,
        account: impl Into<String>,
        original_request_id: Uuid,
        amount: i64,
    ) -> Result<RefundResponse, Error> {
        let msg = RefundRequest {
            account_id: account.into(),
            request_id: request_id_bytes(request_id),
            original_request_id: request_id_bytes(original_request_id),
            amount,
        };
        self.call("refund", msg, |ch, r| async move {
            ChargingClient::new(ch).refund(r).await
        })
        .await
    }

    /// A one-shot event charge, without a reservation.
    pub async fn debit(
        &self,
        account: impl Into<String>,
        rating_group: u32,
        units: Units,
    ) -> Result<DebitResponse, Error> {
        self.debit_with_id(new_request_id(), account, rating_group, units)
            .await
    }

    /// [`Client::debit`] with an explicit request id.
    pub async fn debit_with_id(
        &self,
        request_id: Uuid,
        account: impl Into<String>,
        rating_group: u32,
        units: Units,
    ) -> Result<DebitResponse, Error> {
        let msg = DebitRequest {
            account_id: account.into(),
            request_id: request_id_bytes(request_id),
            rating_group,
            units: Some(units),
        };
        self.call("debit", msg, |ch, r| async move {
            ChargingClient::new(ch).debit(r).await
        })
        .await
    }

    /// Reads an account's balance (a read: no request id).
    pub async fn balance(&self, account: impl Into<String>) -> Result<BalanceResponse, Error> {
        let msg = BalanceRequest {
            account_id: account.into(),
        };
        self.call("balance", msg, |ch, r| async move {
            ChargingClient::new(ch).balance(r).await
        })
        .await
    }

    /// Changes an account's lifecycle state.
    pub async fn set_account_state(
        &self,
        account: impl Into<String>,
        state: AccountState,
    ) -> Result<SetAccountStateResponse, Error> {
        self.set_account_state_with_id(new_request_id(), account, state)
            .await
    }

    /// [`Client::set_account_state`] with an explicit request id.
    pub async fn set_account_state_with_id(
        &self,
        request_id: Uuid,
        account: impl Into<String>,
        state: AccountState,
    ) -> Result<SetAccountStateResponse, Error> {
        let msg = SetAccountStateRequest {
            account_id: account.into(),
            request_id: request_id_bytes(request_id),
            state: state as i32,
        };
        self.call("set_account_state", msg, |ch, r| async move {
            ChargingClient::new(ch).set_account_state(r).await
        })
        .await
    }

    /// Sets the tariff of a rating group (its `version` is assigned by the server).
    pub async fn set_tariff(&self, tariff: Tariff) -> Result<SetTariffResponse, Error> {
        self.set_tariff_with_id(new_request_id(), tariff).await
    }

    /// [`Client::set_tariff`] with an explicit request id.
    pub async fn set_tariff_with_id(
        &self,
        request_id: Uuid,
        tariff: Tariff,
    ) -> Result<SetTariffResponse, Error> {
        let msg = SetTariffRequest {
            request_id: request_id_bytes(request_id),
            tariff: Some(tariff),
        };
        self.call("set_tariff", msg, |ch, r| async move {
            ChargingClient::new(ch).set_tariff(r).await
        })
        .await
    }

    /// Lists all tariffs.
    pub async fn get_tariffs(&self) -> Result<GetTariffsResponse, Error> {
        self.call("get_tariffs", GetTariffsRequest {}, |ch, r| async move {
            ChargingClient::new(ch).get_tariffs(r).await
        })
        .await
    }

    // ---- Admin service ----------------------------------------------------------

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
