//! `chargechaos`: seeded simulations and fault runs, checked by the checker.
//!
//! - `chargechaos sim --layer fast --seed S --iterations K`: transport-free
//!   layer, seeds S..S+K.
//! - `chargechaos sim --seed S --iterations K`: full stack on turmoil (build
//!   with `RUSTFLAGS="--cfg tokio_unstable"` for deterministic runtimes).
//!
//! A failing seed prints the exact command that reproduces it; the exit
//! status is 1 when any violation was found.
use charging_chaos::checker::Report;
use charging_chaos::fast;
use clap::{Parser, Subcommand, ValueEnum};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "chargechaos",
    about = "Chaos runs of the charging cluster, checked"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Layer {
    /// Transport-free: ledger decide/apply with simulated replicas.
    Fast,
    /// Full stack on turmoil: real node code, gRPC, openraft.
    Turmoil,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RealTarget {
    /// Processes of scripts/cluster.sh (kill -9 / restart, SIGSTOP / SIGCONT).
    Local,
    /// Containers of scripts/compose.sh (docker kill / start, pause /
    /// unpause, network disconnect / connect).
    Compose,
}

#[derive(Subcommand)]
enum Cmd {
    /// Load and faults against a running cluster, then the checker.
    Real {
        #[arg(long, value_enum, default_value = "local")]
        target: RealTarget,
        /// scripts/cluster.sh's folder (local target).
        #[arg(long, default_value = ".cluster")]
        cluster_dir: std::path::PathBuf,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Seconds of load and faults.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        #[arg(long, default_value_t = 4)]
        clients: u32,
        #[arg(long, default_value_t = 8)]
        accounts: usize,
        #[arg(long, default_value_t = 20_000)]
        max_ops_per_client: u32,
    },
    /// Run seeded simulations.
    Sim {
        #[arg(long, value_enum, default_value = "turmoil")]
        layer: Layer,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 1)]
        iterations: u64,
        /// Scheduler steps per seed (fast layer).
        #[arg(long, default_value_t = 600)]
        steps: u32,
        /// Nodes (turmoil layer; 0 = 3 or 5 by seed).
        #[arg(long, default_value_t = 0)]
        nodes: u64,
        /// Print every seed's figures.
        #[arg(long)]
        verbose: bool,
        /// Turmoil layer: no scale-out among the faults (no spare added, no
        /// drain).
        #[arg(long)]
        no_scale: bool,
    },
}

#[derive(Default)]
struct Totals {
    seeds: u64,
    failed: Vec<u64>,
    faults: u64,
    ops: u64,
    acked: u64,
    unknown: u64,
    inconclusive: u64,
    violations: u64,
}

impl Totals {
    fn add(&mut self, seed: u64, r: &Report, faults: u64, repro: &str, verbose: bool) {
        self.seeds += 1;
        self.faults += faults;
        self.ops += r.ops as u64;
        self.acked += r.acked as u64;
        self.unknown += r.unknown as u64;
        self.inconclusive += r.inconclusive as u64;
        self.violations += r.violations.len() as u64;
        if verbose {
            println!(
                "seed {seed}: ops {} (acked {}, rejected {}, unknown {}), faults {faults}, accounts {}, search steps {}, inconclusive {}, violations {}",
                r.ops, r.acked, r.rejected, r.unknown, r.accounts, r.search_steps, r.inconclusive, r.violations.len()
            );
        }
        if !r.ok() {
            self.failed.push(seed);
            println!("seed {seed}: {} violation(s)", r.violations.len());
            for v in r.violations.iter().take(20) {
                println!("  {v}");
            }
            println!("reproduce: {repro}");
        }
    }
}

fn main() {
    // Node logs on stderr when asked (RUST_LOG=charging_node=debug ...).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Real {
            target,
            cluster_dir,
            nodes,
            seed,
            duration,
            clients,
            accounts,
            max_ops_per_client,
        } => {
            let cfg = charging_chaos::real::RealConfig {
                target: match target {
                    RealTarget::Local => charging_chaos::real::Target::Local { dir: cluster_dir },
                    RealTarget::Compose => charging_chaos::real::Target::Compose,
                },
                nodes,
                seed,
                duration: std::time::Duration::from_secs(duration),
                clients,
                accounts,
                max_ops_per_client,
            };
            // A cluster with [auth] on: every request carries CHARGING_TOKEN.
            match charging_chaos::wire::token_from_env() {
                Ok(true) => println!("bearer token: from {}", charging_client::TOKEN_ENV),
                Ok(false) => {}
                Err(e) => {
                    eprintln!("chargechaos real: {e}");
                    std::process::exit(2);
                }
            }
            let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
            let run = rt.block_on(charging_chaos::real::run(cfg));
            let r = &run.report;
            for l in &run.faults.log {
                println!("fault {l}");
            }
            println!(
                "real {target:?}: {:.1}s, faults {} (kills {}, all killed at once {}, pauses {}, two paused {}, splits {}, disconnects {}, partitions {}, one-way {}, isolated {}, failed commands {}), ops {} (acked {}, rejected {}, unknown {}), accounts {}, inconclusive {}, replica digests compared {}, violations {}",
                run.elapsed.as_secs_f64(),
                run.faults.total(),
                run.faults.kills,
                run.faults.kill_alls,
                run.faults.pauses,
                run.faults.majority_pauses,
                run.faults.splits,
                run.faults.disconnects,
                run.faults.partitions,
                run.faults.oneway_partitions,
                run.faults.isolations,
                run.faults.command_errors,
                r.ops,
                r.acked,
                r.rejected,
                r.unknown,
                r.accounts,
                r.inconclusive,
                r.replicas_compared,
                r.violations.len()
            );
            for v in r.violations.iter().take(20) {
                println!("  {v}");
            }
            // A run without a fault, an acknowledged op or two replicas
            // compared at one index proved nothing.
            if !r.ok() || run.faults.total() == 0 || r.acked == 0 || r.replicas_compared == 0 {
                std::process::exit(1);
            }
        }
        Cmd::Sim {
            layer,
            seed,
            iterations,
            steps,
            nodes,
            verbose,
            no_scale,
        } => {
            let started = Instant::now();
            let mut t = Totals::default();
            for s in seed..seed.saturating_add(iterations) {
                match layer {
                    Layer::Fast => {
                        let cfg = fast::FastConfig {
                            steps,
                            ..Default::default()
                        };
                        let run = fast::run(s, &cfg);
                        let repro = format!(
                            "chargechaos sim --layer fast --seed {s} --iterations 1 --steps {steps} --verbose"
                        );
                        if verbose {
                            println!("seed {s}: {:?}", run.faults);
                        }
                        t.add(
                            s,
                            &run.report,
                            u64::from(run.faults.total()),
                            &repro,
                            verbose,
                        );
                    }
                    Layer::Turmoil => {
                        let run = charging_chaos::turmoil_sim::run(s, nodes, !no_scale);
                        let repro = format!(
                            "RUSTFLAGS=\"--cfg tokio_unstable\" CARGO_TARGET_DIR=target/sim cargo run -p charging-chaos --bin chargechaos -- sim --seed {s} --iterations 1 --nodes {nodes}{} --verbose",
                            if no_scale { " --no-scale" } else { "" }
                        );
                        if verbose {
                            println!(
                                "seed {s}: {}, fingerprint {:016x}",
                                run.summary(),
                                run.fingerprint()
                            );
                        }
                        t.add(s, &run.report, run.faults.total(), &repro, verbose);
                    }
                }
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{:?}: {} seeds in {secs:.1}s ({:.0}/min), faults {}, ops {} (acked {}, unknown {}), inconclusive accounts {}, violations {}, failed seeds {:?}",
                layer,
                t.seeds,
                t.seeds as f64 / secs.max(1e-9) * 60.0,
                t.faults,
                t.ops,
                t.acked,
                t.unknown,
                t.inconclusive,
                t.violations,
                t.failed
            );
            if !t.failed.is_empty() {
                std::process::exit(1);
            }
        }
    }
}
