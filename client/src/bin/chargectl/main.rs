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

mod args;
mod text;

use args::*;
use text::*;

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

/// The outcome of a call whose response has a result code: its lines are
/// the operation table's description of it (see [`Describe`]).
fn shown<R: Describe + ToJson>(r: &R) -> Outcome {
    Outcome::new(Some(r.code()), r.to_json(), r.lines())
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
    let token = cli
        .token
        .clone()
        .or_else(|| std::env::var(charging_client::TOKEN_ENV).ok())
        .filter(|t| !t.trim().is_empty())
        .map(|t| charging_client::BearerToken::new(&t))
        .transpose();
    let request_id = cli.command.request_id();
    let result = match token.and_then(|token| {
        let config = ClientConfig {
            deadline_ms: cli.deadline_ms,
            max_retries: cli.max_retries,
            token,
            tls: cli.tls.client_tls()?,
            ..ClientConfig::default()
        };
        Client::connect_lazy(cli.endpoint.clone(), config)
    }) {
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
        } => shown(
            &client
                .create_account_with_id(id, account, currency, balance, credit_limit, buckets)
                .await?,
        ),
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
            shown(&client.add_bucket_with_id(id, account, spec).await?)
        }
        Command::TopUp {
            account,
            amount,
            bucket,
            ..
        } => shown(&client.top_up_with_id(id, account, bucket, amount).await?),
        Command::Reserve {
            account,
            session,
            seq,
            rg,
            units,
            ..
        } => shown(
            &client
                .reserve_with_id(id, account, session, seq, rg, units.to_units())
                .await?,
        ),
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
            shown(&r).with_text(grants_table(&r.grants))
        }
        Command::Terminate {
            account,
            session,
            seq,
            reports,
            ..
        } => shown(
            &client
                .terminate_with_id(id, account, session, seq, reports)
                .await?,
        ),
        Command::Commit {
            account,
            reservation_id,
            units,
            final_,
            ..
        } => shown(
            &client
                .commit_with_id(id, account, reservation_id, units.to_units(), final_)
                .await?,
        ),
        Command::Release {
            account,
            reservation_id,
            ..
        } => shown(&client.release_with_id(id, account, reservation_id).await?),
        Command::Refund {
            account,
            original_request_id,
            amount,
            ..
        } => shown(
            &client
                .refund_with_id(id, account, original_request_id, amount)
                .await?,
        ),
        Command::Debit {
            account, rg, units, ..
        } => shown(
            &client
                .debit_with_id(id, account, rg, units.to_units())
                .await?,
        ),
        Command::Balance { account } => {
            let r = client.balance(account.clone()).await?;
            let mut json = r.to_json();
            json["account_id"] = json!(account);
            Outcome::new(Some(r.result), json, vec![]).with_text(balance_text(&account, &r))
        }
        Command::SetState { account, state, .. } => {
            shown(&client.set_account_state_with_id(id, account, state).await?)
        }
        Command::SetTariff { rg, prices, .. } => {
            let tariff = Tariff {
                rating_group: rg,
                version: 0,
                prices,
            };
            shown(&client.set_tariff_with_id(id, tariff).await?)
        }
        Command::Tariffs => {
            let r = client.get_tariffs().await?;
            Outcome::new(None, r.to_json(), vec![]).with_text(tariffs_text(&r.tariffs))
        }
        Command::Health => {
            let status = client.health().await?;
            // Exit 1 unless SERVING: the result-code path does that.
            let code = if status == "SERVING" {
                charging_client::proto::ResultCode::Ok
            } else {
                charging_client::proto::ResultCode::Unspecified
            };
            Outcome::new(
                Some(code as i32),
                json!({ "status": status }),
                vec![("status", status.to_string())],
            )
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
                            ..client.config().clone()
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

    /// Each response's lines are its row's `shows` column: the same keys
    /// and forms the hand-written printing had.
    #[test]
    fn lines_come_from_the_operation_table() {
        use charging_client::proto::{ReleaseResponse, ReserveResponse, ResultCode, TopUpResponse};
        let r = ReserveResponse {
            result: ResultCode::Ok as i32,
            reservation_id: 7,
            granted: Some(Units {
                volume_bytes: 10_000_000,
                time_s: 60,
                service_units: 0,
            }),
            final_units: true,
            expires_at_ms: 0,
        };
        let lines: Vec<(&str, String)> = vec![
            ("result", "OK".into()),
            ("reservation-id", "7".into()),
            ("granted", "10000000 bytes (10.0 MB), 60 s".into()),
            ("final-units", "yes".into()),
            ("expires-at", "-".into()),
        ];
        assert_eq!(r.lines(), lines);
        assert_eq!(r.code(), ResultCode::Ok as i32);
        let t = TopUpResponse {
            result: ResultCode::BucketNotFound as i32,
            balance: 0,
        };
        assert_eq!(
            t.lines(),
            vec![
                ("result", "BUCKET_NOT_FOUND".into()),
                ("balance", "0".into())
            ]
        );
        let r = ReleaseResponse {
            result: ResultCode::ReservationNotFound as i32,
        };
        assert_eq!(r.lines(), vec![("result", "RESERVATION_NOT_FOUND".into())]);
        let out = shown(&r);
        assert_eq!(out.code, Some(ResultCode::ReservationNotFound as i32));
        assert_eq!(out.render(None), "result: RESERVATION_NOT_FOUND");
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
        assert_eq!(fmt_priority(u32::MAX), "lowest");
        assert_eq!(fmt_priority(0), "0");
    }
}
