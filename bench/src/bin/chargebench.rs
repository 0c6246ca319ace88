//! chargebench: drive the charging cluster and report throughput, latency
//! and drift. See `chargebench --help` and issue 4.
use charging_bench::cli::{preload_only, report, run, sweep, Cli, Cmd};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let v = match cli.cmd {
        Cmd::Run(a) => run(a).await?,
        Cmd::Sweep(a) => sweep(a).await?,
        Cmd::Report(a) => report(a)?,
        Cmd::Preload(c) => preload_only(c).await?,
        Cmd::Nchf(a) => charging_bench::nchf::nchf(a).await?,
    };
    // A non-zero drift is a correctness failure: say so in the exit code.
    if v.get("drift").and_then(|d| d.as_i64()).unwrap_or(0) != 0 {
        eprintln!(
            "chargebench: DRIFT {} (balances differ from acknowledged operations)",
            v["drift"]
        );
        std::process::exit(2);
    }
    Ok(())
}
