//! `chargectl`: command-line client of the charging cluster.
//!
//! Exit codes: 0 when the result is OK (or the call has no result code),
//! 1 on a business rejection (the result is still printed), 2 on a gRPC or
//! transport error (status code and message on stderr; with `--json` also as
//! JSON on stdout).
//!
//! Mutating commands print their request id. Pass it back with `--request-id`
//! to retry a call whose outcome is unknown without applying it twice, or use
//! it as the original request of a `refund`.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use charging_client::json::ToJson;
use charging_client::parse::{
    parse_amount, parse_bucket, parse_bucket_amount, parse_count, parse_kind, parse_price,
    parse_report, parse_size, parse_state,
};
use charging_client::proto::{
    AccountState, BalanceResponse, BucketKind, BucketSpec, Grant, Price, StatusResponse, Tariff,
    Units, UsageReport,
};
use charging_client::{
    account_state_name, bucket_kind_name, is_ok, new_request_id, result_name, Client, ClientConfig,
    Error, Uuid, DEFAULT_ENDPOINT,
};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use tonic::Code;

#[derive(Parser, Debug)]
#[command(
    name = "chargectl",
    version,
    about = "Command-line client of the convergent charging cluster",
    after_help = "Exit status: 0 = OK, 1 = business rejection, 2 = gRPC/transport error."
)]
struct Cli {
    /// Public gRPC endpoint of any node of the cluster.
    #[arg(long, global = true, default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
    /// Print the response as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Overall deadline of the call in ms, retries included.
    #[arg(long, global = true, default_value_t = 2000)]
    deadline_ms: u64,
    /// How many times to retry on UNAVAILABLE (always with the same request id).
    #[arg(long, global = true, default_value_t = 5)]
    max_retries: u32,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct IdArg {
    /// Send this request id instead of a fresh UUIDv7 (to retry a call safely).
    #[arg(long, value_name = "UUID")]
    request_id: Option<Uuid>,
}

#[derive(Args, Debug, Clone)]
struct UnitArgs {
    /// Volume, e.g. 10MB, 6MB, 1GiB, 1500000.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    bytes: Option<u64>,
    /// Time in seconds.
    #[arg(long, value_name = "N", value_parser = parse_count)]
    seconds: Option<u64>,
    /// Service-specific units (events).
    #[arg(long, value_name = "N", value_parser = parse_count)]
    units: Option<u64>,
}

impl UnitArgs {
    fn to_units(&self) -> Units {
        Units {
            time_s: self.seconds.unwrap_or(0),
            volume_bytes: self.bytes.unwrap_or(0),
            service_units: self.units.unwrap_or(0),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
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
enum NodeCmd {
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
    fn request_id(&self) -> Option<Uuid> {
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
            | Command::Status { .. }
            | Command::Node { .. } => return None,
        };
        Some(id.request_id.unwrap_or_else(new_request_id))
    }
}

/// What a command produced: its result code (if the response has one), its
/// JSON form and its text form.
struct Outcome {
    code: Option<i32>,
    json: Value,
    /// `key: value` lines, printed aligned after the request id.
    lines: Vec<(&'static str, String)>,
    /// Free text (tables) printed after the lines.
    text: String,
}

impl Outcome {
    fn new(code: Option<i32>, json: Value, lines: Vec<(&'static str, String)>) -> Outcome {
        Outcome {
            code,
            json,
            lines,
            text: String::new(),
        }
    }

    fn with_text(mut self, extra: String) -> Outcome {
        self.text = extra;
        self
    }

    fn render(&self, request_id: Option<Uuid>) -> String {
        let mut lines = Vec::new();
        if let Some(id) = request_id {
            lines.push(("request-id", id.to_string()));
        }
        lines.extend(self.lines.iter().cloned());
        match (lines.is_empty(), self.text.is_empty()) {
            (true, _) => self.text.clone(),
            (false, true) => kv(&lines),
            (false, false) => format!("{}\n{}", kv(&lines), self.text),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = ClientConfig {
        deadline_ms: cli.deadline_ms,
        max_retries: cli.max_retries,
        ..ClientConfig::default()
    };
    let request_id = cli.command.request_id();
    let result = match Client::connect_lazy(cli.endpoint.clone(), config) {
        Ok(client) => run(&client, cli.command, request_id).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(mut out) => {
            if cli.json {
                if let (Some(id), Value::Object(m)) = (request_id, &mut out.json) {
                    m.insert("request_id".into(), json!(id.to_string()));
                }
                print_out(&serde_json::to_string_pretty(&out.json).unwrap_or_default());
            } else {
                print_out(&out.render(request_id));
            }
            match out.code {
                Some(c) if !is_ok(c) => ExitCode::from(1),
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            let (code, grpc_code, message) = match &e {
                Error::Status(s) => (
                    code_name(s.code()),
                    Some(s.code() as i32),
                    s.message().to_string(),
                ),
                Error::Transport(_) => ("TRANSPORT".to_string(), None, e.to_string()),
                Error::InvalidEndpoint { .. } => {
                    ("INVALID_ENDPOINT".to_string(), None, e.to_string())
                }
                Error::InvalidArgument(_) => ("INVALID_ARGUMENT".to_string(), None, e.to_string()),
            };
            if cli.json {
                let mut v = json!({ "error": { "code": code, "message": message } });
                if let Some(c) = grpc_code {
                    v["error"]["grpc_code"] = json!(c);
                }
                if let Some(id) = request_id {
                    v["request_id"] = json!(id.to_string());
                }
                print_out(&serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            eprintln!("error: {code}: {message}");
            if let Some(id) = request_id {
                eprintln!("request-id: {id}");
                let unknown = matches!(
                    e.code(),
                    Some(
                        Code::Unavailable
                            | Code::DeadlineExceeded
                            | Code::Cancelled
                            | Code::Unknown
                    )
                );
                if unknown {
                    eprintln!(
                        "the outcome is unknown: retry with --request-id {id} to apply it at most once"
                    );
                }
            }
            ExitCode::from(2)
        }
    }
}

async fn run(client: &Client, cmd: Command, rid: Option<Uuid>) -> Result<Outcome, Error> {
    let id = rid.unwrap_or_else(new_request_id);
    Ok(match cmd {
        Command::CreateAccount {
            account,
            currency,
            balance,
            credit_limit,
            buckets,
            ..
        } => {
            let r = client
                .create_account_with_id(id, account, currency, balance, credit_limit, buckets)
                .await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![
                    ("result", result_name(r.result).into()),
                    ("version", r.version.to_string()),
                ],
            )
        }
        Command::AddBucket {
            account,
            kind,
            amount,
            rating_groups,
            priority,
            from,
            until,
            ..
        } => {
            let amount = parse_bucket_amount(kind, &amount).map_err(Error::InvalidArgument)?;
            let spec = BucketSpec {
                kind: kind as i32,
                amount,
                valid_from_ms: from,
                valid_until_ms: until,
                priority,
                rating_groups,
            };
            let r = client.add_bucket_with_id(id, account, spec).await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![
                    ("result", result_name(r.result).into()),
                    ("bucket-id", r.bucket_id.to_string()),
                ],
            )
        }
        Command::TopUp {
            account,
            amount,
            bucket,
            ..
        } => {
            let r = client.top_up_with_id(id, account, bucket, amount).await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![
                    ("result", result_name(r.result).into()),
                    ("balance", r.balance.to_string()),
                ],
            )
        }
        Command::Reserve {
            account,
            session,
            seq,
            rg,
            units,
            ..
        } => {
            let r = client
                .reserve_with_id(id, account, session, seq, rg, units.to_units())
                .await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![
                    ("result", result_name(r.result).into()),
                    ("reservation-id", r.reservation_id.to_string()),
                    ("granted", fmt_units(&r.granted.unwrap_or_default())),
                    ("final-units", yes_no(r.final_units)),
                    ("expires-at", fmt_ts(r.expires_at_ms)),
                ],
            )
        }
        Command::Update {
            account,
            session,
            seq,
            reports,
            ..
        } => {
            let r = client
                .update_with_id(id, account, session, seq, reports)
                .await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![
                    ("result", result_name(r.result).into()),
                    ("charged", r.charged.to_string()),
                    ("debt", r.debt.to_string()),
                ],
            )
            .with_text(grants_table(&r.grants))
        }
        Command::Terminate {
            account,
            session,
            seq,
            reports,
            ..
        } => {
            let r = client
                .terminate_with_id(id, account, session, seq, reports)
                .await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![
                    ("result", result_name(r.result).into()),
                    ("charged", r.charged.to_string()),
                    ("debt", r.debt.to_string()),
                ],
            )
        }
        Command::Commit {
            account,
            reservation_id,
            units,
            final_,
            ..
        } => {
            let r = client
                .commit_with_id(id, account, reservation_id, units.to_units(), final_)
                .await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![
                    ("result", result_name(r.result).into()),
                    ("charged", r.charged.to_string()),
                    ("debt", r.debt.to_string()),
                ],
            )
        }
        Command::Release {
            account,
            reservation_id,
            ..
        } => {
            let r = client.release_with_id(id, account, reservation_id).await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![("result", result_name(r.result).into())],
            )
        }
        Command::Refund {
            account,
            original_request_id,
            amount,
            ..
        } => {
            let r = client
                .refund_with_id(id, account, original_request_id, amount)
                .await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![
                    ("result", result_name(r.result).into()),
                    ("refunded-total", r.refunded_total.to_string()),
                ],
            )
        }
        Command::Debit {
            account, rg, units, ..
        } => {
            let r = client
                .debit_with_id(id, account, rg, units.to_units())
                .await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![
                    ("result", result_name(r.result).into()),
                    ("charged", r.charged.to_string()),
                ],
            )
        }
        Command::Balance { account } => {
            let r = client.balance(account.clone()).await?;
            let mut json = r.to_json();
            json["account_id"] = json!(account);
            Outcome::new(Some(r.result), json, vec![]).with_text(balance_text(&account, &r))
        }
        Command::SetState { account, state, .. } => {
            let r = client.set_account_state_with_id(id, account, state).await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![("result", result_name(r.result).into())],
            )
        }
        Command::SetTariff { rg, prices, .. } => {
            let tariff = Tariff {
                rating_group: rg,
                version: 0,
                prices,
            };
            let r = client.set_tariff_with_id(id, tariff).await?;
            Outcome::new(
                Some(r.result),
                r.to_json(),
                vec![
                    ("result", result_name(r.result).into()),
                    ("version", r.version.to_string()),
                ],
            )
        }
        Command::Tariffs => {
            let r = client.get_tariffs().await?;
            Outcome::new(None, r.to_json(), vec![]).with_text(tariffs_text(&r.tariffs))
        }
        Command::Status { digest } => {
            let r = if digest {
                client.status_digest().await?
            } else {
                client.status().await?
            };
            Outcome::new(None, r.to_json(), vec![]).with_text(status_text(&r))
        }
        Command::Node { cmd } => {
            let r = match cmd {
                NodeCmd::List => {
                    let mut r = client.status().await?;
                    // The metadata leader polls every node: its view of
                    // reachability is the complete one.
                    let leader = r.nodes.iter().find(|n| n.node_id == r.meta_leader);
                    if let Some(l) = leader.filter(|_| r.meta_leader != r.node_id) {
                        let url = format!("http://{}", l.public_addr);
                        let cfg = ClientConfig {
                            deadline_ms: 2_000,
                            ..ClientConfig::default()
                        };
                        if let Ok(c) = Client::connect_lazy(url, cfg) {
                            if let Ok(s) = c.status().await {
                                r = s;
                            }
                        }
                    }
                    let nodes: Vec<_> = r.nodes.iter().map(ToJson::to_json).collect();
                    return Ok(
                        Outcome::new(None, serde_json::json!({ "nodes": nodes }), vec![])
                            .with_text(nodes_text(&r)),
                    );
                }
                NodeCmd::Add {
                    node_id,
                    public,
                    internal,
                } => client.add_node(node_id, &public, &internal).await?,
                NodeCmd::Drain { node_id } => client.drain_node(node_id).await?,
                NodeCmd::Remove { node_id, force } => client.remove_node(node_id, force).await?,
            };
            Outcome::new(
                None,
                r.to_json(),
                vec![("map-version", r.map_version.to_string())],
            )
        }
    })
}

// ---- text formatting ----------------------------------------------------------

/// A gRPC code as its canonical name, e.g. `UNAVAILABLE`, `DEADLINE_EXCEEDED`.
fn code_name(code: Code) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{code:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// Aligned `key: value` lines.
fn kv(lines: &[(&str, String)]) -> String {
    let w = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines
        .iter()
        .map(|(k, v)| format!("{:<w$} {v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A table with left-aligned columns.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn human_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "TB"),
        (1_000_000_000, "GB"),
        (1_000_000, "MB"),
        (1_000, "kB"),
    ];
    for (scale, name) in UNITS {
        if b >= scale {
            // Display only: one decimal, truncated.
            let tenths = (u128::from(b) * 10 / u128::from(scale)) as u64;
            return format!("{}.{} {name}", tenths / 10, tenths % 10);
        }
    }
    format!("{b} B")
}

fn fmt_units(u: &Units) -> String {
    let mut parts = Vec::new();
    if u.volume_bytes > 0 {
        let mut s = format!("{} bytes", u.volume_bytes);
        if u.volume_bytes >= 1000 {
            s.push_str(&format!(" ({})", human_bytes(u.volume_bytes)));
        }
        parts.push(s);
    }
    if u.time_s > 0 {
        parts.push(format!("{} s", u.time_s));
    }
    if u.service_units > 0 {
        parts.push(format!("{} units", u.service_units));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Unix ms as `2024-05-01T12:00:00.000Z`.
fn iso_utc(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        ms % 1000
    )
}

fn fmt_ts(ms: u64) -> String {
    if ms == 0 {
        return "-".to_string();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i128)
        .unwrap_or(0);
    let delta = i128::from(ms) - now;
    let rel = if delta >= 0 {
        format!("in {}.{:03} s", delta / 1000, delta % 1000)
    } else {
        format!("{}.{:03} s ago", -delta / 1000, -delta % 1000)
    };
    format!("{ms} ({}, {rel})", iso_utc(ms))
}

fn fmt_window(ms: u64) -> String {
    if ms == 0 {
        "-".to_string()
    } else {
        iso_utc(ms)
    }
}

fn fmt_rgs(rgs: &[u32]) -> String {
    if rgs.is_empty() {
        "all".to_string()
    } else {
        rgs.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    }
}

fn grants_table(grants: &[Grant]) -> String {
    if grants.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = grants
        .iter()
        .map(|g| {
            vec![
                g.rating_group.to_string(),
                result_name(g.result).to_string(),
                g.reservation_id.to_string(),
                fmt_units(&g.granted.unwrap_or_default()),
                yes_no(g.final_units),
                fmt_ts(g.expires_at_ms),
            ]
        })
        .collect();
    format!(
        "\n{}",
        table(
            &["RG", "RESULT", "RESERVATION", "GRANTED", "FINAL", "EXPIRES"],
            &rows
        )
    )
}

fn balance_text(account: &str, r: &BalanceResponse) -> String {
    let mut lines = vec![
        ("account", account.to_string()),
        ("result", result_name(r.result).into()),
    ];
    if !is_ok(r.result) {
        return kv(&lines);
    }
    lines.extend([
        ("currency", r.currency.clone()),
        ("state", account_state_name(r.state).into()),
        ("version", r.version.to_string()),
        ("available", r.available.to_string()),
        ("credit-limit", r.credit_limit.to_string()),
        ("debt", r.debt.to_string()),
        ("open-sessions", r.open_sessions.to_string()),
        ("open-reservations", r.open_reservations.to_string()),
    ]);
    let rows: Vec<Vec<String>> = r
        .buckets
        .iter()
        .map(|b| {
            vec![
                b.bucket_id.to_string(),
                bucket_kind_name(b.kind).to_string(),
                b.balance.to_string(),
                b.reserved.to_string(),
                b.priority.to_string(),
                fmt_rgs(&b.rating_groups),
                fmt_window(b.valid_from_ms),
                fmt_window(b.valid_until_ms),
            ]
        })
        .collect();
    format!(
        "{}\n\n{}",
        kv(&lines),
        table(
            &[
                "BUCKET",
                "KIND",
                "BALANCE",
                "RESERVED",
                "PRIORITY",
                "RG",
                "VALID-FROM",
                "VALID-UNTIL"
            ],
            &rows
        )
    )
}

fn tariffs_text(tariffs: &[Tariff]) -> String {
    if tariffs.is_empty() {
        return "no tariffs".to_string();
    }
    let mut rows = Vec::new();
    for t in tariffs {
        if t.prices.is_empty() {
            rows.push(vec![
                t.rating_group.to_string(),
                t.version.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for p in &t.prices {
            rows.push(vec![
                t.rating_group.to_string(),
                t.version.to_string(),
                bucket_kind_name(p.unit).to_string(),
                p.increment.to_string(),
                p.nano_per_increment.to_string(),
            ]);
        }
    }
    table(
        &["RG", "VERSION", "UNIT", "INCREMENT", "NANO/INCREMENT"],
        &rows,
    )
}

/// The node table: addresses, state, placement counts, reachability.
fn nodes_text(s: &StatusResponse) -> String {
    let nodes: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.to_string(),
                n.public_addr.clone(),
                n.internal_addr.clone(),
                if n.draining { "draining" } else { "active" }.to_string(),
                n.replicas.to_string(),
                n.leaders.to_string(),
                yes_no(n.reachable),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "PUBLIC",
            "INTERNAL",
            "STATE",
            "REPLICAS",
            "LEADERS",
            "REACHABLE",
        ],
        &nodes,
    )
}

/// Prints one result to stdout. A reader that went away (`chargectl status |
/// head -1`) is no error of ours: the rest is dropped quietly, where
/// `println!` would panic on the broken pipe.
fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

fn status_text(s: &StatusResponse) -> String {
    let shards: Vec<Vec<String>> = s
        .shard_status
        .iter()
        .map(|sh| {
            let mut lag: Vec<(u64, u64)> = sh.lag.iter().map(|(k, v)| (*k, *v)).collect();
            lag.sort();
            let lag_s = if lag.is_empty() {
                "-".to_string()
            } else {
                lag.iter()
                    .map(|(n, l)| format!("{n}:{l}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            vec![
                sh.shard_id.to_string(),
                if sh.leader == 0 {
                    "-".to_string()
                } else {
                    sh.leader.to_string()
                },
                sh.term.to_string(),
                sh.applied_index.to_string(),
                sh.voters
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                sh.accounts.to_string(),
                lag.iter().map(|(_, l)| *l).max().unwrap_or(0).to_string(),
                lag_s,
                sh.state_hash
                    .map(|h| format!("{h:016x}@{}", sh.state_index))
                    .unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    let meta = if s.meta_leader == 0 {
        "-".to_string()
    } else {
        format!("node {}", s.meta_leader)
    };
    format!(
        "answered by node {}; {} shards; cluster map version {} (metadata group led by {meta}); \
         replica moves in progress: {}\n\n{}\n\n{}",
        s.node_id,
        s.shards,
        s.map_version,
        s.moves_in_progress,
        nodes_text(s),
        table(
            &[
                "SHARD",
                "LEADER",
                "TERM",
                "APPLIED",
                "VOTERS",
                "ACCOUNTS",
                "MAX-LAG",
                "LAG (node:entries)",
                "DIGEST@INDEX"
            ],
            &shards
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "chargectl",
            "reserve",
            "acc",
            "--session",
            "s1",
            "--rg",
            "32",
            "--bytes",
            "10MB",
        ])
        .unwrap();
        match cli.command {
            Command::Reserve { seq, rg, units, .. } => {
                assert_eq!((seq, rg), (0, 32));
                assert_eq!(units.to_units().volume_bytes, 10_000_000);
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from([
            "chargectl",
            "--json",
            "update",
            "acc",
            "--session",
            "s",
            "--seq",
            "2",
            "--report",
            "rg=32,used-bytes=6MB,req-bytes=10MB",
            "--report",
            "rg=33,used-seconds=5",
            "--request-id",
            "01890a5d-ac96-774b-bcce-b302099a8057",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(
            cli.command.request_id().unwrap().to_string(),
            "01890a5d-ac96-774b-bcce-b302099a8057"
        );
        match cli.command {
            Command::Update { reports, .. } => assert_eq!(reports.len(), 2),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["chargectl", "balance", "acc"])
            .unwrap()
            .command
            .request_id()
            .is_none());
        assert!(Cli::try_parse_from(["chargectl", "set-state", "a", "frozen"]).is_err());
        assert!(
            Cli::try_parse_from(["chargectl", "update", "a", "--session", "s", "--seq", "1"])
                .is_err()
        );
    }

    #[test]
    fn code_names() {
        assert_eq!(code_name(Code::Unavailable), "UNAVAILABLE");
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(Code::Ok), "OK");
    }

    #[test]
    fn dates() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(iso_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn formatting() {
        assert_eq!(human_bytes(10_000_000), "10.0 MB");
        assert_eq!(human_bytes(1_500), "1.5 kB");
        assert_eq!(fmt_units(&Units::default()), "none");
        assert_eq!(
            fmt_units(&Units {
                time_s: 60,
                volume_bytes: 999,
                service_units: 0
            }),
            "999 bytes, 60 s"
        );
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1");
    }
}
