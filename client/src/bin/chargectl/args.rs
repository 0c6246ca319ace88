//! The command line: every command and its arguments (clap).
use super::*;

#[derive(Parser, Debug)]
#[command(
    name = "chargectl",
    version,
    about = "Command-line client of the convergent charging cluster",
    after_help = "Exit status: 0 = OK, 1 = business rejection, 2 = gRPC/transport error."
)]
pub(crate) struct Cli {
    /// Public gRPC endpoint of any node of the cluster.
    #[arg(long, global = true, default_value = DEFAULT_ENDPOINT)]
    pub(crate) endpoint: String,
    /// Print the response as JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Overall deadline of the call in ms, retries included.
    #[arg(long, global = true, default_value_t = 2000)]
    pub(crate) deadline_ms: u64,
    /// How many times to retry on UNAVAILABLE (always with the same request
    /// id); by default as many as fit in the deadline.
    #[arg(long, global = true, default_value_t = u32::MAX, hide_default_value = true)]
    pub(crate) max_retries: u32,
    #[command(flatten)]
    pub(crate) tls: TlsArgs,
    /// Bearer token (JWT) sent on every call, for nodes with [auth] on
    /// (`chargerd token`); default: the environment variable CHARGING_TOKEN.
    #[arg(long, global = true, value_name = "JWT")]
    pub(crate) token: Option<String>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// TLS to the cluster: an `https://` endpoint needs `--ca`.
#[derive(Args, Debug, Clone)]
pub(crate) struct TlsArgs {
    /// PEM of the CA that issued the nodes' certificates (TLS on).
    #[arg(long, global = true, env = "CHARGING_CA", value_name = "PEM")]
    pub(crate) ca: Option<std::path::PathBuf>,
    /// PEM of this client's certificate (mutual TLS), with --key.
    #[arg(
        long,
        global = true,
        env = "CHARGING_CERT",
        value_name = "PEM",
        requires = "key"
    )]
    pub(crate) cert: Option<std::path::PathBuf>,
    /// PEM of this client's private key, with --cert.
    #[arg(
        long,
        global = true,
        env = "CHARGING_KEY",
        value_name = "PEM",
        requires = "cert"
    )]
    pub(crate) key: Option<std::path::PathBuf>,
    /// Name to check on the node's certificate (default: the endpoint's host).
    #[arg(long, global = true, value_name = "NAME")]
    pub(crate) tls_name: Option<String>,
}

impl TlsArgs {
    /// The client's TLS settings; `None` without `--ca`.
    pub(crate) fn client_tls(&self) -> Result<Option<charging_client::ClientTls>, Error> {
        let Some(ca) = &self.ca else {
            return Ok(None);
        };
        let mut t =
            charging_client::ClientTls::from_files(ca, self.cert.as_deref(), self.key.as_deref())?;
        t.domain = self.tls_name.clone();
        Ok(Some(t))
    }
}

#[derive(Args, Debug, Clone)]
pub(crate) struct IdArg {
    /// Send this request id instead of a fresh UUIDv7 (to retry a call safely).
    #[arg(long, value_name = "UUID")]
    pub(crate) request_id: Option<Uuid>,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct UnitArgs {
    /// Volume, e.g. 10MB, 6MB, 1GiB, 1500000.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub(crate) bytes: Option<u64>,
    /// Time in seconds.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub(crate) seconds: Option<u64>,
    /// Service-specific units (events).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    pub(crate) units: Option<u64>,
}

impl UnitArgs {
    pub(crate) fn to_units(&self) -> Units {
        Units {
            time_s: self.seconds.unwrap_or(0),
            volume_bytes: self.bytes.unwrap_or(0),
            service_units: self.units.unwrap_or(0),
        }
    }
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Create an account.
    CreateAccount {
        account: String,
        /// ISO 4217 currency code.
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Initial money balance in minor units (money bucket 1).
        #[arg(long, default_value_t = 0, value_parser = parse_amount)]
        balance: i64,
        /// Postpaid credit limit in minor units (0 = prepaid).
        #[arg(long, default_value_t = 0, value_parser = parse_amount)]
        credit_limit: i64,
        /// Extra bucket: kind=bytes,amount=10MB,rg=32,priority=0,from=MS,until=MS (repeatable).
        #[arg(long = "bucket", value_name = "SPEC", value_parser = parse_bucket)]
        buckets: Vec<BucketSpec>,
        #[command(flatten)]
        id: IdArg,
    },
    /// Add a bucket to an account.
    AddBucket {
        account: String,
        /// money, bytes, seconds or units.
        #[arg(long, value_parser = parse_kind)]
        kind: BucketKind,
        /// Amount (a size like 10GB for bytes buckets).
        #[arg(long)]
        amount: String,
        /// Rating group the bucket applies to (repeatable; none = all).
        #[arg(long = "rg", value_name = "RG")]
        rating_groups: Vec<u32>,
        /// Lower is consumed first.
        #[arg(long, default_value_t = 0)]
        priority: u32,
        /// Valid from (unix ms; 0 = unbounded).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Valid until (unix ms; 0 = unbounded).
        #[arg(long, default_value_t = 0)]
        until: u64,
        #[command(flatten)]
        id: IdArg,
    },
    /// Top up a bucket (default: the main money bucket).
    TopUp {
        account: String,
        #[arg(value_parser = parse_amount)]
        amount: i64,
        /// Bucket id (0 = main money bucket).
        #[arg(long, default_value_t = 0)]
        bucket: u32,
        #[command(flatten)]
        id: IdArg,
    },
    /// Reserve units on a rating group within a session.
    Reserve {
        account: String,
        #[arg(long)]
        session: String,
        /// Invocation sequence number.
        #[arg(long, default_value_t = 0)]
        seq: u64,
        /// Rating group.
        #[arg(long)]
        rg: u32,
        #[command(flatten)]
        units: UnitArgs,
        #[command(flatten)]
        id: IdArg,
    },
    /// Report usage and request more, on one or more rating groups.
    Update {
        account: String,
        #[arg(long)]
        session: String,
        #[arg(long)]
        seq: u64,
        /// rg=32,used-bytes=6MB,req-bytes=10MB,used-seconds=N,req-seconds=N,used-units=N,req-units=N
        #[arg(long = "report", value_name = "REPORT", value_parser = parse_report, required = true)]
        reports: Vec<UsageReport>,
        #[command(flatten)]
        id: IdArg,
    },
    /// Charge final usage and close a session.
    Terminate {
        account: String,
        #[arg(long)]
        session: String,
        #[arg(long)]
        seq: u64,
        /// rg=32,used-bytes=6MB,used-seconds=N,used-units=N (repeatable).
        #[arg(long = "report", value_name = "REPORT", value_parser = parse_report)]
        reports: Vec<UsageReport>,
        #[command(flatten)]
        id: IdArg,
    },
    /// Commit usage against a reservation.
    Commit {
        account: String,
        reservation_id: u64,
        #[command(flatten)]
        units: UnitArgs,
        /// Resolve the reservation and release its unused remainder.
        #[arg(long = "final")]
        final_: bool,
        #[command(flatten)]
        id: IdArg,
    },
    /// Release a reservation without charging.
    Release {
        account: String,
        reservation_id: u64,
        #[command(flatten)]
        id: IdArg,
    },
    /// Refund part or all of an earlier charge (commit, update, terminate, debit).
    Refund {
        account: String,
        /// Request id of the charging call, as printed by it.
        original_request_id: Uuid,
        #[arg(value_parser = parse_amount)]
        amount: i64,
        #[command(flatten)]
        id: IdArg,
    },
    /// One-shot event charge, without a reservation.
    Debit {
        account: String,
        #[arg(long)]
        rg: u32,
        #[command(flatten)]
        units: UnitArgs,
        #[command(flatten)]
        id: IdArg,
    },
    /// Show an account's balance, buckets and state.
    Balance { account: String },
    /// Change an account's state: active, suspended or closed.
    SetState {
        account: String,
        #[arg(value_parser = parse_state)]
        state: AccountState,
        #[command(flatten)]
        id: IdArg,
    },
    /// Set the tariff of a rating group.
    SetTariff {
        #[arg(long)]
        rg: u32,
        /// unit:increment:nano_per_increment, e.g. bytes:1MB:1000000000 (repeatable).
        #[arg(long = "price", value_name = "PRICE", value_parser = parse_price, required = true)]
        prices: Vec<Price>,
        #[command(flatten)]
        id: IdArg,
    },
    /// List the tariffs.
    Tariffs,
    /// The node's health (grpc.health.v1, needs no token): exit 0 when
    /// SERVING, 1 when not, 2 when it cannot be asked. For container health
    /// checks.
    Health,
    /// Cluster status: nodes, shards, leaders, applied index, lag, moves.
    Status {
        /// Also digest each replica this node hosts (state hash at its
        /// applied index): replicas of a shard at one index must agree.
        #[arg(long)]
        digest: bool,
    },
    /// Cluster membership: list, add, drain, remove nodes.
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum NodeCmd {
    /// Nodes with their state, replicas and preferred leaders.
    List,
    /// Add a node (a node started with `--join` adds itself).
    Add {
        node_id: u64,
        /// Its public (client) address, host:port.
        #[arg(long)]
        public: String,
        /// Its internal (Raft) address, host:port.
        #[arg(long)]
        internal: String,
    },
    /// Move every replica off a node (watch `chargectl node list`).
    Drain { node_id: u64 },
    /// Take a node out of the cluster (refused while it holds replicas).
    Remove {
        node_id: u64,
        /// Remove even though replicas remain (they are re-created elsewhere).
        #[arg(long)]
        force: bool,
    },
}

impl Command {
    /// For mutating commands, the request id to send (the given one or a fresh
    /// UUIDv7); `None` for reads.
    pub(crate) fn request_id(&self) -> Option<Uuid> {
        let id = match self {
            Command::CreateAccount { id, .. }
            | Command::AddBucket { id, .. }
            | Command::TopUp { id, .. }
            | Command::Reserve { id, .. }
            | Command::Update { id, .. }
            | Command::Terminate { id, .. }
            | Command::Commit { id, .. }
            | Command::Release { id, .. }
            | Command::Refund { id, .. }
            | Command::Debit { id, .. }
            | Command::SetState { id, .. }
            | Command::SetTariff { id, .. } => id,
            Command::Balance { .. }
            | Command::Tariffs
            | Command::Health
            | Command::Status { .. }
            | Command::Node { .. } => return None,
        };
        Some(id.request_id.unwrap_or_else(new_request_id))
    }
}
