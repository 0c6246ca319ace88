//! The command line: `chargebench run` and `chargebench sweep`.

use crate::cluster::{self, Preload};
use crate::echo::EchoServer;
use crate::exec::Channel;
use crate::exec::{connect, Exec, Target};
use crate::nodecpu::NodeCpu;
use crate::report::{put_baseline, put_measured, round1, table, Measured};
use crate::stats::Recorder;
use crate::workload::{run_load, Engine, Expect, LoadOpts, LoadResult, WorkCfg, Workload};
use crate::zipf::Distribution;
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

mod setup;
pub use setup::*;

#[derive(Parser, Debug)]
#[command(
    name = "chargebench",
    version,
    about = "Load generator for the charging cluster: throughput, latency (HdrHistogram, \
             coordinated-omission corrected), and a zero-drift check of every acknowledged charge"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// One measured run (closed loop by default, open loop with --rate).
    Run(RunArgs),
    /// Open-loop rates stepping up until p99 exceeds the target.
    Sweep(SweepArgs),
    /// Merge run JSON reports into one (the first run's fields on top, all
    /// runs under `runs`) and optionally one HTML page.
    Report(ReportArgs),
    /// The Nchf_ConvergedCharging create → update → release flow over h2c,
    /// then the same flow over gRPC unary, in the same run (issue 18).
    Nchf(crate::nchf::NchfArgs),
    /// Only preload `--accounts` accounts (no load, no read-back); prints
    /// the preload line and a JSON object with its figures.
    Preload(Common),
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// JSON reports of `chargebench run` / `sweep`.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Write the merged JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write one HTML page with every run here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Extra top-level string fields, KEY=VALUE (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Merges run reports: the first one's fields on top, every run in `runs`.
pub fn merge(runs: Vec<Value>) -> Value {
    let mut o = match runs.first() {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    for k in [
        "timeline",
        "baseline_timeline",
        "percentiles",
        "baseline_percentiles",
    ] {
        o.remove(k);
    }
    o.insert("runs".into(), Value::Array(runs));
    Value::Object(o)
}

/// `chargebench report`.
pub fn report(a: ReportArgs) -> anyhow::Result<Value> {
    let mut runs = Vec::new();
    for p in &a.inputs {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        runs.push(
            serde_json::from_str::<Value>(&text)
                .with_context(|| format!("parsing {}", p.display()))?,
        );
    }
    let mut v = merge(runs.clone());
    if let Value::Object(o) = &mut v {
        for kv in &a.set {
            let (k, val) = kv.split_once('=').context("--set wants KEY=VALUE")?;
            o.insert(k.into(), json!(val));
        }
    }
    for r in &runs {
        println!(
            "{:<15} {:<7} {:<55} {:>10} ops/s  p50 {:>7} µs  p99 {:>8} µs  errors {:>6}  drift {}",
            r["workload"].as_str().unwrap_or("?"),
            r["transport"].as_str().unwrap_or("?"),
            format!(
                "{} {}",
                r["mode_desc"].as_str().unwrap_or(""),
                r["distribution"].as_str().unwrap_or("")
            ),
            r["ops_per_sec"],
            r["p50_us"],
            r["p99_us"],
            r["errors"],
            r["drift"]
        );
        if r.get("baseline_ops_per_sec").is_some() {
            println!(
                "{:<15} {:<7} {:<55} {:>10} ops/s  p50 {:>7} µs  p99 {:>8} µs  ratios: ops/s {}x p50 {}x p99 {}x",
                "  echo",
                "",
                "",
                r["baseline_ops_per_sec"],
                r["baseline_p50_us"],
                r["baseline_p99_us"],
                r["ratio_ops_per_sec"],
                r["ratio_p50"],
                r["ratio_p99"]
            );
        }
        if let Some(line) = crate::report::node_cpu_line(r, "") {
            println!("{:<15} {line}", "");
        }
    }
    if let Some(p) = &a.json {
        if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(p, serde_json::to_string_pretty(&v)? + "\n")?;
        println!("json: {}", p.display());
    }
    if let Some(p) = &a.html {
        if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(p, crate::html::page("chargebench profile", &runs))?;
        println!("html: {}", p.display());
    }
    Ok(v)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreloadMode {
    Bulk,
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// One gRPC call per operation.
    Unary,
    /// The bidirectional Stream RPC: --batch ops per message, --pipeline messages in flight.
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Baseline {
    /// A bare in-process tonic echo server with the same messages.
    Echo,
}

/// How ops reach the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    /// Straight to each shard's leader (shard map).
    Leader,
    /// Spread over the given endpoints (they forward).
    Any,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// Public API endpoint of a node (repeatable; load is spread over all).
    #[arg(long = "endpoint", value_name = "URL")]
    pub endpoints: Vec<String>,
    /// Bearer token (JWT) for nodes with [auth] on; the preload and tariffs
    /// need an admin token (`chargerd token --role admin`). Default: the
    /// environment variable CHARGING_TOKEN.
    #[arg(long, value_name = "JWT")]
    pub token: Option<String>,
    /// Allow endpoints that are not on loopback.
    #[arg(long)]
    pub allow_remote: bool,
    /// How ops reach the cluster: `leader` sends each op straight to its
    /// shard's leader (the shard map is read from the first endpoint and
    /// refreshed every second; connects to every node in it); `any` spreads
    /// ops over the given endpoints, which forward to the leader.
    #[arg(long, value_enum, default_value = "leader")]
    pub route: Route,
    #[arg(long, value_enum, default_value = "reserve-commit")]
    pub workload: Workload,
    /// Accounts to preload and pick from.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: u64,
    /// Account id prefix (default: bench-<unix seconds>-<random>, fresh per run).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Initial money balance of each preloaded account, in minor units.
    #[arg(long, default_value_t = 1_000_000_000)]
    pub initial_balance: i64,
    #[arg(long, default_value = "EUR")]
    pub currency: String,
    /// uniform or zipf:S (e.g. zipf:0.99).
    #[arg(long, default_value = "uniform")]
    pub distribution: Distribution,
    #[arg(long, value_enum, default_value = "unary")]
    pub transport: Transport,
    /// Operations per stream message (at most; stream transport).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Stream messages in flight per stream (stream transport).
    #[arg(long, default_value_t = 64)]
    pub pipeline: usize,
    /// HTTP/2 connections per endpoint (one stream each with --transport stream).
    /// Default: 2 for unary, 1 for stream.
    #[arg(long)]
    pub connections: Option<usize>,
    /// Session workload: updates between the reserve and the terminate.
    #[arg(long, default_value_t = 3)]
    pub updates: u32,
    /// Units requested per reserve / update and per debit, in the rating
    /// group's unit (bytes for rating group 32: 1 MB = 1 cent in the demo).
    #[arg(long, default_value_t = 1_000_000)]
    pub units: u64,
    /// Rating groups (comma-separated); reserve-commit and debit use the first.
    #[arg(long, value_delimiter = ',', default_value = "32")]
    pub rating_groups: Vec<u32>,
    /// Retries of one op on UNAVAILABLE (same request id).
    #[arg(long, default_value_t = 8)]
    pub retries: u32,
    /// How accounts are preloaded: `bulk` (BulkCreateAccounts, one Raft
    /// entry per shard and call: millions in seconds) or `stream`
    /// (CreateAccount ops over the Stream RPC, one dedup entry per account).
    #[arg(long, value_enum, default_value = "bulk")]
    pub preload_mode: PreloadMode,
    /// Accounts per BulkCreateAccounts call (bulk) or create_account ops per
    /// stream message (stream; at most 4096).
    #[arg(long)]
    pub preload_batch: Option<usize>,
    /// Bulk calls in flight (bulk) or messages in flight per stream (stream).
    #[arg(long, default_value_t = 4)]
    pub preload_pipeline: usize,
    /// Do not wait 3 s after a bulk preload (the nodes compact their logs then).
    #[arg(long)]
    pub no_settle: bool,
    /// Skip the preload (the accounts of --prefix exist already).
    #[arg(long)]
    pub no_preload: bool,
    /// Skip the balance read-back (drift is then not reported).
    #[arg(long)]
    pub no_verify: bool,
    /// No live progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// PIDs of the node processes (separated by commas or spaces, e.g.
    /// "$(bench/cluster3.sh pids)"; default: $CHARGEBENCH_NODE_PIDS). Their
    /// user + system CPU time over the measured window (not the preload, not
    /// the read-back) is reported as node CPU µs per operation and cores.
    #[arg(long, value_name = "PID,PID,...")]
    pub node_pids: Option<String>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: Common,
    /// Closed loop: virtual users, one transaction at a time each.
    /// Default: 16 (unary), batch × pipeline × streams (stream).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Open loop: target operations per second; latency from the due time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: transactions in flight at most.
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
    /// Seconds of load (every run stops by itself).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Stop after this many operations.
    #[arg(long)]
    pub max_ops: Option<u64>,
    /// Also measure a baseline with the same transport, concurrency and duration.
    #[arg(long, value_enum)]
    pub baseline: Option<Baseline>,
}

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    #[command(flatten)]
    pub common: Common,
    /// The p99 latency (µs) a rate must meet.
    #[arg(long)]
    pub p99_target_us: u64,
    /// First rate, ops/s.
    #[arg(long, default_value_t = 1000.0)]
    pub start_rate: f64,
    /// Each next rate is this times the last.
    #[arg(long, default_value_t = 1.5)]
    pub step_factor: f64,
    /// Seconds per rate.
    #[arg(long, default_value_t = 5.0)]
    pub step_duration: f64,
    #[arg(long, default_value_t = 10_000_000.0)]
    pub max_rate: f64,
    #[arg(long, default_value_t = 20)]
    pub max_steps: u32,
    #[arg(long, default_value_t = 10_000)]
    pub max_in_flight: usize,
}

/// Whether `url`'s host is loopback (127.0.0.0/8, ::1, localhost).
pub fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

impl Common {
    /// The bearer token: `--token`, else `CHARGING_TOKEN`, else none.
    pub fn bearer(&self) -> anyhow::Result<crate::exec::Bearer> {
        let env = std::env::var(charging_client::TOKEN_ENV).ok();
        crate::exec::Bearer::new(self.token.as_deref().or(env.as_deref()))
    }

    pub fn endpoints(&self) -> anyhow::Result<Vec<String>> {
        let eps = if self.endpoints.is_empty() {
            vec![charging_client::DEFAULT_ENDPOINT.to_string()]
        } else {
            self.endpoints.clone()
        };
        for e in &eps {
            if !self.allow_remote && !is_loopback(e) {
                bail!("endpoint {e} is not on loopback; pass --allow-remote to target it");
            }
        }
        Ok(eps)
    }

    pub fn connections(&self) -> usize {
        self.connections.unwrap_or(match self.transport {
            Transport::Unary => 2,
            Transport::Stream => 1,
        })
    }

    fn prefix(&self) -> String {
        self.prefix.clone().unwrap_or_else(|| {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("bench-{secs}-{:04x}", rand::random::<u16>())
        })
    }

    fn progress(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }

    /// The node processes to measure (`--node-pids`, else
    /// `CHARGEBENCH_NODE_PIDS`); an error if one cannot be read now.
    pub fn node_cpu(&self) -> anyhow::Result<Option<NodeCpu>> {
        NodeCpu::from_option(self.node_pids.as_deref())
            .map_err(|e| anyhow::anyhow!("--node-pids / CHARGEBENCH_NODE_PIDS: {e}"))
    }
}

/// Builds the transport over `channels`.
pub async fn make_exec(c: &Common, target: Target, channels: &[Channel]) -> anyhow::Result<Exec> {
    Ok(match c.transport {
        Transport::Unary => Exec::unary(target, channels),
        Transport::Stream => Exec::stream(target, channels, c.batch, c.pipeline).await?,
    })
}

fn common_fields(o: &mut Map<String, Value>, c: &Common, s: &Setup) {
    o.insert("workload".into(), json!(c.workload.name()));
    o.insert(
        "transport".into(),
        json!(match c.transport {
            Transport::Unary => "unary",
            Transport::Stream => "stream",
        }),
    );
    o.insert("endpoints".into(), json!(s.endpoints));
    o.insert("connections".into(), json!(s.exec.width()));
    if c.transport == Transport::Stream {
        o.insert("batch".into(), json!(c.batch));
        o.insert("pipeline".into(), json!(c.pipeline));
    }
    o.insert("accounts".into(), json!(s.cfg.accounts));
    o.insert("distribution".into(), json!(c.distribution.to_string()));
    o.insert("prefix".into(), json!(s.cfg.prefix));
    o.insert("rating_groups".into(), json!(c.rating_groups));
    o.insert("units".into(), json!(c.units));
    if c.workload == Workload::Session || c.workload == Workload::Mixed {
        o.insert("updates".into(), json!(c.updates));
    }
    if let Some(p) = &s.preload {
        o.insert(
            "preload".into(),
            json!({"accounts": p.accounts, "created": p.created, "existed": p.existed.len(),
                   "seconds": p.elapsed.as_secs_f64(), "accounts_per_sec": round1(p.per_sec())}),
        );
    }
}

async fn verify_into(o: &mut Map<String, Value>, c: &Common, s: &Setup) -> anyhow::Result<()> {
    let Some(expect) = &s.expect else {
        o.insert("drift".into(), Value::Null);
        return Ok(());
    };
    let v = cluster::verify(
        &s.admin,
        &s.cfg,
        expect.clone(),
        c.initial_balance,
        s.base.clone(),
    )
    .await?;
    o.insert("drift".into(), json!(v.drift));
    o.insert("drift_accounts_checked".into(), json!(v.checked));
    o.insert("drift_mismatched".into(), json!(v.mismatched));
    o.insert("drift_unverified".into(), json!(v.unverified));
    o.insert("drift_unread".into(), json!(v.unread));
    o.insert("open_reservations".into(), json!(v.open_reservations));
    o.insert("drift_examples".into(), json!(v.examples));
    o.insert("verify_seconds".into(), json!(v.elapsed.as_secs_f64()));
    Ok(())
}

fn write_outputs(c: &Common, v: &Value, title: &str) -> anyhow::Result<()> {
    if let Some(p) = &c.json {
        if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(p, serde_json::to_string_pretty(v)? + "\n")
            .with_context(|| format!("writing {}", p.display()))?;
        println!("json: {}", p.display());
    }
    if let Some(p) = &c.html {
        if let Some(d) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d)?;
        }
        let reports = match v.get("steps") {
            Some(Value::Array(steps)) => steps.clone(),
            _ => vec![v.clone()],
        };
        std::fs::write(p, crate::html::page(title, &reports))
            .with_context(|| format!("writing {}", p.display()))?;
        println!("html: {}", p.display());
    }
    Ok(())
}

fn mode_desc(rate: Option<f64>, concurrency: usize, max_in_flight: usize) -> String {
    match rate {
        Some(r) => format!("open loop {r} ops/s (≤{max_in_flight} in flight, CO-corrected)"),
        None => format!("closed loop, concurrency {concurrency}"),
    }
}

/// `chargebench run`.
pub async fn run(a: RunArgs) -> anyhow::Result<Value> {
    let c = &a.common;
    if a.duration.is_nan() || a.duration <= 0.0 {
        bail!("--duration must be > 0");
    }
    let cpu = c.node_cpu()?;
    let s = setup(c).await?;
    let width = s.exec.width();
    let concurrency = a
        .concurrency
        .unwrap_or_else(|| default_concurrency(c, width));
    let opts = LoadOpts {
        concurrency,
        rate: a.rate,
        max_in_flight: a.max_in_flight,
        duration: Duration::from_secs_f64(a.duration),
        drain: Duration::from_secs(30),
        progress: c.progress(),
        label: c.workload.name().into(),
    };
    let ours = load_measured(
        s.exec.clone(),
        s.cfg.clone(),
        s.expect.clone(),
        &opts,
        a.max_ops,
        cpu.as_ref(),
    )
    .await;
    let mut o = Map::new();
    common_fields(&mut o, c, &s);
    o.insert(
        "mode".into(),
        json!(if a.rate.is_some() { "open" } else { "closed" }),
    );
    o.insert(
        "mode_desc".into(),
        json!(mode_desc(a.rate, concurrency, a.max_in_flight)),
    );
    o.insert(
        "concurrency".into(),
        json!(if a.rate.is_some() {
            a.max_in_flight
        } else {
            concurrency
        }),
    );
    o.insert("rate".into(), json!(a.rate));
    put_measured(&mut o, "", &ours);
    if c.workload == Workload::ReserveCommit {
        o.insert(
            "pairs_per_sec".into(),
            json!(round1(ours.ops_per_sec / 2.0)),
        );
    }
    verify_into(&mut o, c, &s).await?;
    if let Some(Baseline::Echo) = a.baseline {
        let b = echo_baseline(c, s.cfg.clone(), &opts, a.max_ops, width).await?;
        put_baseline(&mut o, &ours, &Measured::from_load(&b));
    }
    let v = Value::Object(o);
    print!("{}", table(&v));
    write_outputs(c, &v, &format!("chargebench {}", c.workload.name()))?;
    Ok(v)
}

/// `chargebench sweep`.
pub async fn sweep(a: SweepArgs) -> anyhow::Result<Value> {
    let c = &a.common;
    if a.start_rate.is_nan()
        || a.start_rate <= 0.0
        || a.step_factor.is_nan()
        || a.step_factor <= 1.0
        || a.step_duration.is_nan()
        || a.step_duration <= 0.0
    {
        bail!("--start-rate > 0, --step-factor > 1 and --step-duration > 0 please");
    }
    let cpu = c.node_cpu()?;
    let s = setup(c).await?;
    let mut rate = a.start_rate;
    let mut steps = Vec::new();
    let mut best: Option<(f64, Measured)> = None;
    println!(
        "sweep: p99 target {} µs, from {} ops/s ×{} for {} s each",
        a.p99_target_us, a.start_rate, a.step_factor, a.step_duration
    );
    for _ in 0..a.max_steps {
        let opts = LoadOpts {
            concurrency: 0,
            rate: Some(rate),
            max_in_flight: a.max_in_flight,
            duration: Duration::from_secs_f64(a.step_duration),
            drain: Duration::from_secs(30),
            progress: c.progress(),
            label: format!("{rate:.0}/s"),
        };
        let m = load_measured(
            s.exec.clone(),
            s.cfg.clone(),
            s.expect.clone(),
            &opts,
            None,
            cpu.as_ref(),
        )
        .await;
        let kept_up = m.ops_per_sec >= 0.9 * rate;
        let pass = m.lat.p99 <= a.p99_target_us && kept_up;
        println!(
            "  rate {:>10.0} ops/s: achieved {:>10.1} ops/s  p50 {:>7} µs  p99 {:>8} µs  errors {:>6}  {}",
            rate,
            m.ops_per_sec,
            m.lat.p50,
            m.lat.p99,
            m.error_count(),
            if pass {
                "pass"
            } else if kept_up {
                "FAIL (p99)"
            } else {
                "FAIL (could not keep up)"
            }
        );
        if let Some(c) = &m.node_cpu {
            match &c.result {
                Ok(f) => println!(
                    "  {:>16}  node cpu {:.1} µs/op ({:.2} cores)",
                    "",
                    f.us_per_op.unwrap_or(0.0),
                    f.cores
                ),
                Err(w) => println!("  {:>16}  node cpu absent ({w})", ""),
            }
        }
        let mut o = Map::new();
        common_fields(&mut o, c, &s);
        o.insert("mode".into(), json!("open"));
        o.insert(
            "mode_desc".into(),
            json!(mode_desc(Some(rate), 0, a.max_in_flight)),
        );
        o.insert("rate".into(), json!(rate));
        o.insert("concurrency".into(), json!(a.max_in_flight));
        o.insert("pass".into(), json!(pass));
        put_measured(&mut o, "", &m);
        steps.push(Value::Object(o));
        if !pass {
            break;
        }
        best = Some((rate, m));
        rate *= a.step_factor;
        if rate > a.max_rate {
            break;
        }
    }
    let mut o = Map::new();
    common_fields(&mut o, c, &s);
    o.insert("mode".into(), json!("sweep"));
    o.insert("p99_target_us".into(), json!(a.p99_target_us));
    o.insert("best_rate".into(), json!(best.as_ref().map(|b| b.0)));
    o.insert(
        "best_ops_per_sec".into(),
        json!(best.as_ref().map(|b| round1(b.1.ops_per_sec))),
    );
    o.insert(
        "best_p99_us".into(),
        json!(best.as_ref().map(|b| b.1.lat.p99)),
    );
    verify_into(&mut o, c, &s).await?;
    let drift = o.get("drift").cloned().unwrap_or(Value::Null);
    for st in steps.iter_mut() {
        if let Value::Object(m) = st {
            m.insert("drift".into(), drift.clone());
        }
    }
    o.insert("steps".into(), Value::Array(steps));
    match &best {
        Some((r, m)) => println!(
            "highest passing rate: {r:.0} ops/s (achieved {:.1}, p99 {} µs ≤ {} µs); drift {drift}",
            m.ops_per_sec, m.lat.p99, a.p99_target_us
        ),
        None => println!(
            "no rate met p99 ≤ {} µs (the first, {} ops/s, failed); drift {drift}",
            a.p99_target_us, a.start_rate
        ),
    }
    let v = Value::Object(o);
    write_outputs(c, &v, "chargebench sweep")?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only_by_default() {
        for ok in [
            "http://127.0.0.1:50051",
            "http://127.1.2.3:1",
            "http://localhost:50051",
            "http://[::1]:50051",
            "127.0.0.1:9",
        ] {
            assert!(is_loopback(ok), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:50051",
            "http://example.com",
            "http://[::2]:1",
        ] {
            assert!(!is_loopback(bad), "{bad}");
        }
        let cli = Cli::parse_from(["chargebench", "run", "--endpoint", "http://10.1.1.1:5"]);
        let Cmd::Run(a) = cli.cmd else { panic!() };
        assert!(a.common.endpoints().is_err());
        let cli = Cli::parse_from([
            "chargebench",
            "run",
            "--endpoint",
            "http://10.1.1.1:5",
            "--allow-remote",
            "--distribution",
            "zipf:0.99",
            "--rating-groups",
            "32,10",
        ]);
        let Cmd::Run(a) = cli.cmd else { panic!() };
        assert!(a.common.endpoints().is_ok());
        assert_eq!(a.common.distribution, Distribution::Zipf(0.99));
        assert_eq!(a.common.rating_groups, vec![32, 10]);
        assert_eq!(a.common.node_pids, None);
        // The pid list as bench/cluster3.sh prints it, or comma-separated.
        let me = std::process::id();
        let cli = Cli::parse_from(["chargebench", "run", "--node-pids", &format!("{me} {me} ")]);
        let Cmd::Run(a) = cli.cmd else { panic!() };
        let cpu = a.common.node_cpu().unwrap().expect("pids given");
        assert_eq!(cpu.pids, vec![me]);
        let cli = Cli::parse_from(["chargebench", "run", "--node-pids", "1,x"]);
        let Cmd::Run(a) = cli.cmd else { panic!() };
        assert!(a.common.node_cpu().is_err());
    }

    #[test]
    fn merge_puts_the_first_run_on_top() {
        let a =
            json!({"workload": "reserve-commit", "ops_per_sec": 10.0, "timeline": [], "drift": 0});
        let b = json!({"workload": "debit", "ops_per_sec": 20.0, "drift": 0});
        let m = merge(vec![a, b]);
        assert_eq!(m["workload"], json!("reserve-commit"));
        assert!(m.get("timeline").is_none());
        assert_eq!(m["runs"].as_array().unwrap().len(), 2);
        assert_eq!(m["runs"][1]["workload"], json!("debit"));
    }
}
