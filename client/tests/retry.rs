//! Retry, request-id and leader-hint behaviour against tiny in-process servers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::charging_client::proto::charging_server::{Charging, ChargingServer};
use ::charging_client::proto::*;
use ::charging_client::{headers, Client, ClientConfig, Uuid};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// What the fake server does on each call.
#[derive(Clone)]
enum Behaviour {
    /// UNAVAILABLE for the first n calls (with an optional leader hint), then OK.
    UnavailableThenOk { n: usize, hint: Option<String> },
    /// Always this status.
    Always(Code),
    /// Sleep, then OK.
    Slow(Duration),
}

#[derive(Clone)]
struct Fake {
    behaviour: Behaviour,
    /// Request ids seen, in order (empty vec for reads).
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    /// grpc-timeout header of each call.
    timeouts: Arc<Mutex<Vec<Option<String>>>>,
    /// authorization header of each call.
    auths: Arc<Mutex<Vec<Option<String>>>>,
}

impl Fake {
    fn new(behaviour: Behaviour) -> Fake {
        Fake {
            behaviour,
            seen: Arc::default(),
            timeouts: Arc::default(),
            auths: Arc::default(),
        }
    }

    fn seen(&self) -> Vec<Vec<u8>> {
        self.seen.lock().unwrap().clone()
    }

    async fn answer<T, R>(
        &self,
        req: Request<T>,
        id: Vec<u8>,
        ok: R,
    ) -> Result<Response<R>, Status> {
        let n = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(id);
            seen.len()
        };
        self.auths.lock().unwrap().push(
            req.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        );
        self.timeouts.lock().unwrap().push(
            req.metadata()
                .get("grpc-timeout")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        );
        match &self.behaviour {
            Behaviour::UnavailableThenOk { n: fail, hint } if n <= *fail => {
                let mut md = tonic::metadata::MetadataMap::new();
                if let Some(h) = hint {
                    md.insert(headers::LEADER_ADDR, h.parse().unwrap());
                }
                Err(Status::with_metadata(
                    Code::Unavailable,
                    "not the leader",
                    md,
                ))
            }
            Behaviour::UnavailableThenOk { .. } => Ok(Response::new(ok)),
            Behaviour::Always(code) => Err(Status::new(*code, "nope")),
            Behaviour::Slow(d) => {
                tokio::time::sleep(*d).await;
                Ok(Response::new(ok))
            }
        }
    }
}

#[tonic::async_trait]
impl Charging for Fake {
    async fn create_account(
        &self,
        _: Request<CreateAccountRequest>,
    ) -> Result<Response<CreateAccountResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn add_bucket(
        &self,
        _: Request<AddBucketRequest>,
    ) -> Result<Response<AddBucketResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn top_up(&self, r: Request<TopUpRequest>) -> Result<Response<TopUpResponse>, Status> {
        let id = r.get_ref().request_id.clone();
        let balance = r.get_ref().amount;
        self.answer(r, id, TopUpResponse { result: 1, balance })
            .await
    }
    async fn reserve(
        &self,
        r: Request<ReserveRequest>,
    ) -> Result<Response<ReserveResponse>, Status> {
        let id = r.get_ref().request_id.clone();
        let ok = ReserveResponse {
            result: 1,
            reservation_id: 7,
            granted: r.get_ref().requested,
            final_units: false,
            expires_at_ms: 1,
        };
        self.answer(r, id, ok).await
    }
    async fn update(&self, _: Request<UpdateRequest>) -> Result<Response<UpdateResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn terminate(
        &self,
        _: Request<TerminateRequest>,
    ) -> Result<Response<TerminateResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn commit(&self, _: Request<CommitRequest>) -> Result<Response<CommitResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn release(
        &self,
        _: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn refund(&self, _: Request<RefundRequest>) -> Result<Response<RefundResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn debit(&self, r: Request<DebitRequest>) -> Result<Response<DebitResponse>, Status> {
        let id = r.get_ref().request_id.clone();
        self.answer(
            r,
            id,
            DebitResponse {
                result: 8,
                charged: 0,
            },
        )
        .await
    }
    async fn balance(
        &self,
        r: Request<BalanceRequest>,
    ) -> Result<Response<BalanceResponse>, Status> {
        let ok = BalanceResponse {
            result: 1,
            currency: "EUR".into(),
            ..Default::default()
        };
        self.answer(r, Vec::new(), ok).await
    }
    async fn set_account_state(
        &self,
        _: Request<SetAccountStateRequest>,
    ) -> Result<Response<SetAccountStateResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn set_tariff(
        &self,
        _: Request<SetTariffRequest>,
    ) -> Result<Response<SetTariffResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn get_tariffs(
        &self,
        _: Request<GetTariffsRequest>,
    ) -> Result<Response<GetTariffsResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn bulk_create_accounts(
        &self,
        _: Request<charging_proto::v1::BulkCreateAccountsRequest>,
    ) -> Result<Response<charging_proto::v1::BulkCreateAccountsResponse>, Status> {
        Err(Status::unimplemented("test"))
    }
}

/// Serves `fake` on 127.0.0.1:0; returns its `http://` address.
async fn serve(fake: Fake) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ChargingServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    format!("http://{addr}")
}

fn units(bytes: u64) -> Units {
    Units {
        volume_bytes: bytes,
        ..Default::default()
    }
}

#[tokio::test]
async fn retries_unavailable_with_the_same_request_id() {
    let fake = Fake::new(Behaviour::UnavailableThenOk { n: 3, hint: None });
    let addr = serve(fake.clone()).await;
    let client = Client::connect(addr).await.unwrap();
    let r = client
        .reserve("acc", "s1", 0, 32, units(10_000_000))
        .await
        .unwrap();
    assert_eq!(r.result, 1);
    assert_eq!(r.granted.unwrap().volume_bytes, 10_000_000);
    let seen = fake.seen();
    assert_eq!(seen.len(), 4, "3 failures + 1 success");
    assert_eq!(seen[0].len(), 16);
    assert_eq!(Uuid::from_slice(&seen[0]).unwrap().get_version_num(), 7);
    assert!(
        seen.iter().all(|id| *id == seen[0]),
        "same id on every retry"
    );
    // Every attempt carried a timeout.
    assert!(fake.timeouts.lock().unwrap().iter().all(Option::is_some));

    // A second call gets a fresh id.
    client.reserve("acc", "s1", 1, 32, units(1)).await.unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 5);
    assert_ne!(seen[4], seen[0]);
}

#[tokio::test]
async fn explicit_request_id_is_sent_verbatim() {
    let fake = Fake::new(Behaviour::UnavailableThenOk { n: 1, hint: None });
    let addr = serve(fake.clone()).await;
    let client = Client::connect(addr).await.unwrap();
    let id = Uuid::now_v7();
    client.top_up_with_id(id, "acc", 0, 100).await.unwrap();
    client.top_up_with_id(id, "acc", 0, 100).await.unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.as_slice() == id.as_bytes()));
}

#[tokio::test]
async fn retries_are_bounded_by_max_retries() {
    let fake = Fake::new(Behaviour::Always(Code::Unavailable));
    let addr = serve(fake.clone()).await;
    let config = ClientConfig {
        max_retries: 3,
        ..ClientConfig::default()
    };
    let client = Client::connect_with_config(addr, config).await.unwrap();
    let err = client.top_up("acc", 0, 1).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable));
    let seen = fake.seen();
    assert_eq!(seen.len(), 4, "1 attempt + 3 retries");
    assert!(seen.iter().all(|id| *id == seen[0]));
}

#[tokio::test]
async fn other_codes_are_not_retried() {
    for code in [
        Code::InvalidArgument,
        Code::ResourceExhausted,
        Code::Internal,
    ] {
        let fake = Fake::new(Behaviour::Always(code));
        let addr = serve(fake.clone()).await;
        let client = Client::connect(addr).await.unwrap();
        let err = client
            .reserve("acc", "s", 0, 1, units(1))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(code));
        assert_eq!(fake.seen().len(), 1, "{code:?} must not be retried");
    }
}

#[tokio::test]
async fn business_rejections_are_results_not_errors() {
    let fake = Fake::new(Behaviour::UnavailableThenOk { n: 0, hint: None });
    let addr = serve(fake.clone()).await;
    let client = Client::connect(addr).await.unwrap();
    let r = client.debit("acc", 1, units(1)).await.unwrap();
    assert_eq!(
        ::charging_client::result_name(r.result),
        "INSUFFICIENT_BALANCE"
    );
    assert_eq!(fake.seen().len(), 1);
}

/// A failover takes longer than a few quick retries: by default a call
/// keeps retrying (same request id) until its deadline, not for a count.
#[tokio::test]
async fn by_default_retries_last_until_the_deadline() {
    let fake = Fake::new(Behaviour::UnavailableThenOk { n: 12, hint: None });
    let addr = serve(fake.clone()).await;
    let client = Client::connect(addr).await.unwrap();
    let r = client.top_up("acc", 0, 7).await.unwrap();
    assert_eq!(r.balance, 7);
    let seen = fake.seen();
    assert_eq!(seen.len(), 13, "12 refusals, then the answer");
    assert!(seen.iter().all(|id| *id == seen[0]), "one request id");
}

#[tokio::test]
async fn overall_deadline_bounds_retries() {
    let fake = Fake::new(Behaviour::Always(Code::Unavailable));
    let addr = serve(fake.clone()).await;
    let config = ClientConfig {
        deadline_ms: 300,
        max_retries: 1000,
        ..ClientConfig::default()
    };
    let client = Client::connect_with_config(addr, config).await.unwrap();
    let start = Instant::now();
    let err = client.balance("acc").await.unwrap_err();
    let took = start.elapsed();
    assert_eq!(err.code(), Some(Code::Unavailable));
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    let n = fake.seen().len();
    // 5+10+20+40+80 = 155 ms of backoff, then 200 ms steps: a handful of tries.
    assert!((3..20).contains(&n), "{n} attempts");
}

#[tokio::test]
async fn per_attempt_timeout_is_enforced() {
    let fake = Fake::new(Behaviour::Slow(Duration::from_secs(5)));
    let addr = serve(fake.clone()).await;
    let config = ClientConfig {
        deadline_ms: 200,
        ..ClientConfig::default()
    };
    let client = Client::connect_with_config(addr, config).await.unwrap();
    let start = Instant::now();
    let err = client.top_up("acc", 0, 1).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(
            err.code(),
            Some(Code::DeadlineExceeded) | Some(Code::Cancelled)
        ),
        "{err}"
    );
    assert_eq!(fake.seen().len(), 1, "a timeout is not retried");
}

#[tokio::test]
async fn leader_hint_redirects_the_retry() {
    let leader = Fake::new(Behaviour::UnavailableThenOk { n: 0, hint: None });
    let leader_addr = serve(leader.clone()).await;
    let follower = Fake::new(Behaviour::UnavailableThenOk {
        n: usize::MAX,
        // The node's form: host:port, as ShardMap.leader_addr.
        hint: Some(leader_addr.trim_start_matches("http://").to_string()),
    });
    let follower_addr = serve(follower.clone()).await;

    let client = Client::connect(follower_addr).await.unwrap();
    let id = Uuid::now_v7();
    let r = client
        .reserve_with_id(id, "acc", "s", 0, 32, units(5))
        .await
        .unwrap();
    assert_eq!(r.result, 1);
    assert_eq!(follower.seen(), vec![id.as_bytes().to_vec()]);
    assert_eq!(leader.seen(), vec![id.as_bytes().to_vec()]);
    assert_eq!(client.cached_channels(), 1);

    // The cache is reused, not grown, on the next redirect.
    client.top_up("acc", 0, 1).await.unwrap();
    assert_eq!(leader.seen().len(), 2);
    assert_eq!(follower.seen().len(), 2);
    assert_eq!(client.cached_channels(), 1);
}

#[tokio::test]
async fn dead_hint_falls_back_to_the_endpoint() {
    // A hint to a port nobody listens on: the connect fails with UNAVAILABLE (no
    // hint), so the next attempt goes back to the configured endpoint.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let node = Fake::new(Behaviour::UnavailableThenOk {
        n: 1,
        hint: Some(dead),
    });
    let addr = serve(node.clone()).await;
    let client = Client::connect(addr).await.unwrap();
    let r = client.top_up("acc", 0, 42).await.unwrap();
    assert_eq!(r.balance, 42);
    let seen = node.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], seen[1]);
}

#[tokio::test]
async fn invalid_endpoint_is_a_typed_error() {
    let err = Client::connect("not a uri").await.unwrap_err();
    assert!(
        matches!(err, ::charging_client::Error::InvalidEndpoint { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_token_goes_on_every_attempt() {
    let fake = Fake::new(Behaviour::UnavailableThenOk { n: 2, hint: None });
    let addr = serve(fake.clone()).await;
    let config = ClientConfig {
        token: Some(::charging_client::BearerToken::new("aaa.bbb.ccc").unwrap()),
        ..ClientConfig::default()
    };
    assert!(
        !format!("{config:?}").contains("aaa.bbb"),
        "Debug shows the token"
    );
    let client = Client::connect_with_config(addr.clone(), config)
        .await
        .unwrap();
    client.top_up("acc", 0, 100).await.unwrap();
    let auths = fake.auths.lock().unwrap().clone();
    assert_eq!(auths.len(), 3, "2 failures + 1 success");
    assert!(
        auths
            .iter()
            .all(|a| a.as_deref() == Some("Bearer aaa.bbb.ccc")),
        "{auths:?}"
    );
    // Without one, nothing is sent.
    let plain = Client::connect(addr).await.unwrap();
    plain.top_up("acc", 0, 100).await.unwrap();
    assert_eq!(fake.auths.lock().unwrap().last(), Some(&None));
    assert!(::charging_client::BearerToken::new(" ").is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn chargectl_sends_the_token_from_the_flag_or_the_environment() {
    let fake = Fake::new(Behaviour::UnavailableThenOk { n: 0, hint: None });
    let addr = serve(fake.clone()).await;
    let top_up = |extra: &[&str]| {
        let mut a = args(&["--endpoint", &addr]);
        a.extend(args(extra));
        a.extend(args(&["top-up", "acc", "5"]));
        a
    };
    let (code, out, err) = chargectl_env(top_up(&["--token", "x.y.z"]), &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = chargectl_env(top_up(&[]), &[("CHARGING_TOKEN", "e.n.v")]).await;
    assert_eq!(code, 0, "{out}{err}");
    let auths = fake.auths.lock().unwrap().clone();
    assert_eq!(
        auths,
        vec![
            Some("Bearer x.y.z".to_string()),
            Some("Bearer e.n.v".into())
        ]
    );
}

/// Runs the chargectl binary (blocking, so on a blocking thread).
async fn chargectl(args: Vec<String>) -> (i32, String, String) {
    chargectl_env(args, &[]).await
}

/// Runs the chargectl binary with extra environment variables (and without
/// an inherited CHARGING_TOKEN).
async fn chargectl_env(args: Vec<String>, env: &[(&str, &str)]) -> (i32, String, String) {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chargectl"))
            .args(&args)
            .env_remove("CHARGING_TOKEN")
            .envs(env)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn chargectl_exit_codes_and_request_ids() {
    let fake = Fake::new(Behaviour::UnavailableThenOk { n: 1, hint: None });
    let addr = serve(fake.clone()).await;

    // OK -> exit 0; the JSON carries the request id that was sent (twice).
    let (code, out, err) = chargectl(args(&[
        "--endpoint",
        &addr,
        "--json",
        "reserve",
        "acc",
        "--session",
        "s",
        "--rg",
        "32",
        "--bytes",
        "10MB",
    ]))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"], "OK");
    assert_eq!(v["granted"]["volume_bytes"], 10_000_000);
    let id = Uuid::parse_str(v["request_id"].as_str().unwrap()).unwrap();
    let seen = fake.seen();
    assert_eq!(seen, vec![id.as_bytes().to_vec(), id.as_bytes().to_vec()]);

    // --request-id is sent verbatim and printed in text mode.
    let forced = "01890a5d-ac96-774b-bcce-b302099a8057";
    let (code, out, _) = chargectl(args(&[
        "--endpoint",
        &addr,
        "top-up",
        "acc",
        "250",
        "--request-id",
        forced,
    ]))
    .await;
    assert_eq!(code, 0);
    assert!(out.contains(forced), "{out}");
    assert!(out.contains("250"), "{out}");
    assert_eq!(
        fake.seen().last().unwrap().as_slice(),
        Uuid::parse_str(forced).unwrap().as_bytes()
    );

    // Business rejection -> exit 1, result still printed.
    let (code, out, _) = chargectl(args(&[
        "--endpoint",
        &addr,
        "debit",
        "acc",
        "--rg",
        "1",
        "--units",
        "1",
    ]))
    .await;
    assert_eq!(code, 1);
    assert!(out.contains("INSUFFICIENT_BALANCE"), "{out}");

    // gRPC error -> exit 2 with code and message.
    let (code, _, err) = chargectl(args(&[
        "--endpoint",
        &addr,
        "--deadline-ms",
        "500",
        "release",
        "acc",
        "1",
    ]))
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("UNIMPLEMENTED"), "{err}");

    // Balance (a read) prints a table.
    let (code, out, _) = chargectl(args(&["--endpoint", &addr, "balance", "acc"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("EUR") && out.contains("BUCKET"), "{out}");
}

/// `chargectl health` asks grpc.health.v1 (what the compose cluster's
/// container health check runs, with no token): exit 0 and `SERVING` while
/// the server serves, exit 1 and `NOT_SERVING` once it says so, and a
/// server without the health service is an error (exit 2), not healthy.
#[tokio::test(flavor = "multi_thread")]
async fn chargectl_health_follows_the_health_service() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });

    let (code, out, err) = chargectl(args(&["--endpoint", &addr, "health"])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SERVING"), "{out}");

    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let (code, out, err) = chargectl(args(&["--endpoint", &addr, "--json", "health"])).await;
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"], "NOT_SERVING");

    // A server without the health service: UNIMPLEMENTED, exit 2 (an error).
    let other = serve(Fake::new(Behaviour::Always(Code::Internal))).await;
    let (code, out, err) = chargectl(args(&[
        "--endpoint",
        &other,
        "--max-retries",
        "0",
        "health",
    ]))
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("UNIMPLEMENTED") || out.contains("UNIMPLEMENTED"),
        "{out}{err}"
    );
}
