//! `chargebench nchf`: the Nchf create → update → release flow (issue 18)
//! over HTTP/2 (h2c, prior knowledge), and the same flow over gRPC unary
//! (OpenSession → Update → Terminate) in the same run, closed loop, for
//! comparison: ops/s and per-operation p50 / p99 of each.
use charging_client::proto::{ResultCode, Units, UsageReport};
use charging_client::{Client, ClientConfig};
use clap::Args;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client as HttpClient};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Args, Debug, Clone)]
pub struct NchfArgs {
    /// A node's gRPC endpoint (accounts, and the gRPC half of the run).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub endpoint: String,
    /// A node's Nchf API root.
    #[arg(long, default_value = "http://127.0.0.1:50081")]
    pub nchf: String,
    /// Accounts the flows are spread over (created if missing).
    #[arg(long, default_value_t = 1000)]
    pub accounts: u64,
    /// Flows in flight at once (each a worker).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds of each half (Nchf, then gRPC).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// The rating group the flows charge (it needs a tariff).
    #[arg(long, default_value_t = 32)]
    pub rating_group: u32,
    /// Skip the gRPC half.
    #[arg(long)]
    pub no_grpc: bool,
}

/// Latency (µs) of each operation kind, and the errors.
struct Half {
    ops: u64,
    errors: u64,
    secs: f64,
    hist: [Histogram<u64>; 3],
}

const OPS: [&str; 3] = ["create", "update", "release"];

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn rfc3339(ms: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

fn account(i: u64) -> String {
    format!("nchfbench-{i}")
}

pub async fn nchf(a: NchfArgs) -> anyhow::Result<Value> {
    let client = Client::connect_with_config(a.endpoint.clone(), ClientConfig::default()).await?;
    for i in 0..a.accounts {
        let r = client
            .create_account(account(i), "EUR", 1_000_000_000_000, 0, Vec::new())
            .await?;
        if r.result != ResultCode::Ok as i32 && r.result != ResultCode::AccountExists as i32 {
            anyhow::bail!("create {}: result {}", account(i), r.result);
        }
    }
    // TCP_NODELAY, as gRPC channels have it (Nagle would hold each small
    // request for the peer's delayed ACK: ~40 ms).
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let http: HttpClient<HttpConnector, Full<Bytes>> = HttpClient::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    // Distinct, past invocationTimeStamps: one session per flow.
    #[allow(clippy::disallowed_methods)]
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64
        - 3_600_000;
    let clock = Arc::new(AtomicU64::new(0));
    let root = format!("{}/nchf-convergedcharging/v3/chargingdata", a.nchf);
    let rg = a.rating_group;
    let n = run_half(&a, move |w, k| {
        let http = http.clone();
        let root = root.clone();
        let ts = base + clock.fetch_add(1, Ordering::Relaxed) % 3_000_000;
        let supi = account(k);
        async move { nchf_flow(&http, &root, &supi, rg, ts, w).await }
    })
    .await;
    print_half("nchf (h2c)", &n);
    let mut out = json!({"nchf": summary(&n)});
    if !a.no_grpc {
        let counter = Arc::new(AtomicU64::new(0));
        let client = client.clone();
        // Session names fresh per run (a closed session is not reopened).
        let run = base;
        let g = run_half(&a, move |_w, k| {
            let client = client.clone();
            let session = format!("grpc-{run}-{}", counter.fetch_add(1, Ordering::Relaxed));
            async move { grpc_flow(&client, &account(k), &session, rg).await }
        })
        .await;
        print_half("grpc unary", &g);
        out["grpc"] = summary(&g);
    }
    println!("{out}");
    Ok(out)
}

fn summary(h: &Half) -> Value {
    let mut v = json!({
        "ops": h.ops, "errors": h.errors, "ops_per_sec": h.ops as f64 / h.secs,
    });
    for (i, op) in OPS.iter().enumerate() {
        v[op] = json!({
            "p50_us": h.hist[i].value_at_quantile(0.5),
            "p99_us": h.hist[i].value_at_quantile(0.99),
        });
    }
    v
}

fn print_half(name: &str, h: &Half) {
    println!(
        "{name}: {} ops in {:.1} s = {:.0} ops/s, {} errors",
        h.ops,
        h.secs,
        h.ops as f64 / h.secs,
        h.errors
    );
    for (i, op) in OPS.iter().enumerate() {
        println!(
            "  {op:8} p50 {:>7} µs  p99 {:>7} µs",
            h.hist[i].value_at_quantile(0.5),
            h.hist[i].value_at_quantile(0.99)
        );
    }
}

/// `concurrency` workers doing flows for `duration`; `flow(worker, account)`
/// returns each operation's latency (µs), or an error.
async fn run_half<F, Fut>(a: &NchfArgs, flow: F) -> Half
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<[u64; 3], String>> + Send + 'static,
{
    let flow = Arc::new(flow);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs(a.duration);
    let accounts = a.accounts.max(1);
    let mut tasks = Vec::new();
    for w in 0..a.concurrency.max(1) {
        let flow = flow.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut hs = [hist(), hist(), hist()];
            let (mut ops, mut errors) = (0u64, 0u64);
            while Instant::now() < until {
                let k = next.fetch_add(1, Ordering::Relaxed) % accounts;
                match flow(w, k).await {
                    Ok(lat) => {
                        ops += 3;
                        for (h, l) in hs.iter_mut().zip(lat) {
                            let _ = h.record(l.max(1));
                        }
                    }
                    Err(e) => {
                        if errors < 3 {
                            eprintln!("flow failed: {e}");
                        }
                        errors += 1;
                    }
                }
            }
            (hs, ops, errors)
        }));
    }
    let mut half = Half {
        ops: 0,
        errors: 0,
        secs: 0.0,
        hist: [hist(), hist(), hist()],
    };
    for t in tasks {
        if let Ok((hs, ops, errors)) = t.await {
            half.ops += ops;
            half.errors += errors;
            for (m, h) in half.hist.iter_mut().zip(hs.iter()) {
                let _ = m.add(h);
            }
        }
    }
    half.secs = started.elapsed().as_secs_f64();
    half
}

async fn post(
    http: &HttpClient<HttpConnector, Full<Bytes>>,
    url: &str,
    body: &Value,
) -> Result<(u16, Option<String>, u64), String> {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    let resp = http.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let loc = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let _ = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((status, loc, t.elapsed().as_micros() as u64))
}

async fn nchf_flow(
    http: &HttpClient<HttpConnector, Full<Bytes>>,
    root: &str,
    supi: &str,
    rg: u32,
    ts: u64,
    _worker: usize,
) -> Result<[u64; 3], String> {
    let msg = |isn: u32, muu: Value, supi: Option<&str>| {
        let mut v = json!({
            "nfConsumerIdentification": {"nodeFunctionality": "SMF"},
            "invocationTimeStamp": rfc3339(ts),
            "invocationSequenceNumber": isn,
            "multipleUnitUsage": [muu]
        });
        if let Some(s) = supi {
            v["subscriberIdentifier"] = json!(s);
        }
        v
    };
    let (s, loc, t1) = post(
        http,
        root,
        &msg(
            0,
            json!({"ratingGroup": rg, "requestedUnit": {"totalVolume": 1_000_000}}),
            Some(supi),
        ),
    )
    .await?;
    let r = match (s, loc) {
        (201, Some(l)) => l.rsplit('/').next().unwrap_or("").to_string(),
        (s, _) => return Err(format!("create: {s}")),
    };
    let (s, _, t2) = post(
        http,
        &format!("{root}/{r}/update"),
        &msg(
            1,
            json!({"ratingGroup": rg, "requestedUnit": {"totalVolume": 1_000_000},
                "usedUnitContainer": [{"localSequenceNumber": 1, "totalVolume": 500_000}]}),
            None,
        ),
    )
    .await?;
    if s != 200 {
        return Err(format!("update: {s}"));
    }
    let (s, _, t3) = post(
        http,
        &format!("{root}/{r}/release"),
        &msg(
            2,
            json!({"ratingGroup": rg,
                "usedUnitContainer": [{"localSequenceNumber": 2, "totalVolume": 100_000}]}),
            None,
        ),
    )
    .await?;
    if s != 204 {
        return Err(format!("release: {s}"));
    }
    Ok([t1, t2, t3])
}

async fn grpc_flow(
    client: &Client,
    supi: &str,
    session: &str,
    rg: u32,
) -> Result<[u64; 3], String> {
    let bytes = |n: u64| Units {
        volume_bytes: n,
        ..Units::default()
    };
    let rep = |used: u64, req: u64| UsageReport {
        rating_group: rg,
        used: Some(bytes(used)),
        requested: Some(bytes(req)),
    };
    let t = Instant::now();
    let r = client
        .open_session(supi, session, 0, vec![rep(0, 1_000_000)])
        .await
        .map_err(|e| e.to_string())?;
    let t1 = t.elapsed().as_micros() as u64;
    if r.result != ResultCode::Ok as i32 {
        return Err(format!("open_session: {}", r.result));
    }
    let t = Instant::now();
    let r = client
        .update(supi, session, 1, vec![rep(500_000, 1_000_000)])
        .await
        .map_err(|e| e.to_string())?;
    let t2 = t.elapsed().as_micros() as u64;
    if r.result != ResultCode::Ok as i32 {
        return Err(format!("update: {}", r.result));
    }
    let t = Instant::now();
    let r = client
        .terminate(supi, session, 2, vec![rep(100_000, 0)])
        .await
        .map_err(|e| e.to_string())?;
    let t3 = t.elapsed().as_micros() as u64;
    if r.result != ResultCode::Ok as i32 {
        return Err(format!("terminate: {}", r.result));
    }
    Ok([t1, t2, t3])
}
