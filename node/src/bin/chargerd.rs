//! chargerd: the charging cluster node.
//!
//! `chargerd start --config node.toml` runs one node of a cluster (one per
//! machine or container); `chargerd config-example --node-id N` prints a
//! commented config.
//!
//! `chargerd dev` runs an embedded 3-node cluster in one process (every shard
//! replicated on all 3 nodes over real gRPC on loopback), with demo tariffs
//! and accounts, until Ctrl-C.

/// mimalloc: glibc's malloc/free was 11% (unary) to 16% (stream) of node
/// samples, and the per-thread caches suit tokio's work stealing.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use charging_node::cluster::{ClusterOptions, LocalCluster};
use charging_node::metrics_http;
use charging_proto::v1 as pb;
use clap::{Parser, Subcommand};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(name = "chargerd", version, about = "Convergent charging cluster node")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node of a cluster, configured by a TOML file.
    Start {
        /// The node's config file (see `chargerd config-example`).
        #[arg(long, short)]
        config: std::path::PathBuf,
        /// Join a running cluster through this node's public address
        /// (overrides `join` in the file).
        #[arg(long)]
        join: Option<String>,
    },
    /// Make an ES256 (P-256) key pair for bearer tokens: `<out>.pem`
    /// (private, PKCS#8, mode 0600) and `<out>.pub.pem` (public: the node
    /// config's `auth.keys`).
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, default_value = "jwt")]
        out: std::path::PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print a signed bearer token (JWT) for a role.
    Token {
        /// Private key (PEM): EC P-256 (ES256) or RSA (RS256, or --alg RS512).
        #[arg(long)]
        key: std::path::PathBuf,
        /// charging, billing or admin (repeat for several).
        #[arg(long, required = true)]
        role: Vec<String>,
        /// Lifetime, e.g. 30s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Audience (`aud`); repeat for several.
        #[arg(long, default_value = "charging")]
        aud: Vec<String>,
        /// Issuer (`iss`).
        #[arg(long)]
        iss: Option<String>,
        /// Subject (`sub`).
        #[arg(long, default_value = "chargerd-token")]
        sub: String,
        /// The service scope the nodes require (`auth.scope`).
        #[arg(long, default_value = "nchf-convergedcharging")]
        scope: String,
        /// Key id (`kid` header), if the nodes' keys have one.
        #[arg(long)]
        kid: Option<String>,
        /// ES256, RS256 or RS512 (default: from the key).
        #[arg(long)]
        alg: Option<String>,
    },
    /// Print a commented config for node N of a local 3-node cluster.
    ConfigExample {
        #[arg(long, default_value_t = 1)]
        node_id: u64,
    },
    /// Make a local CA (once) and certificates issued by it: one per node
    /// (`node<N>.pem` / `.key`, naming the node) and per client name.
    /// Existing files are kept, so it can run on every start.
    Certs {
        /// Folder of `ca.pem`, `ca.key` and the certificates.
        #[arg(long, default_value = "certs")]
        dir: std::path::PathBuf,
        /// Node ids, e.g. `1,2,3`.
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<u64>,
        /// Extra names or addresses every node certificate carries (each
        /// node's also carries `node<N>`, `localhost`, 127.0.0.1, `chargerd`).
        #[arg(long, value_delimiter = ',')]
        hosts: Vec<String>,
        /// Client certificates for mutual TLS on the public port, by name.
        #[arg(long, value_delimiter = ',')]
        clients: Vec<String>,
    },
    /// Run a local 3-node cluster in this process, with demo data.
    Dev {
        /// Public port of node 1; nodes 2 and 3 use the next two.
        #[arg(long, default_value_t = 50051)]
        base_port: u16,
        /// Logical shards.
        #[arg(long, default_value_t = 16)]
        shards: u32,
        /// Skip the demo tariffs and accounts.
        #[arg(long)]
        no_demo: bool,
    },
}

fn rid() -> Vec<u8> {
    uuid::Uuid::now_v7().as_bytes().to_vec()
}

async fn demo(c: &LocalCluster) -> anyhow::Result<()> {
    let fd = &c.nodes[&1].front_door;
    let price = |unit: pb::BucketKind, increment: u64, nano: u64| pb::Price {
        unit: unit as i32,
        increment,
        nano_per_increment: nano,
    };
    let tariffs = [
        (
            32,
            vec![price(pb::BucketKind::Bytes, 1_000_000, 1_000_000_000)],
            "data: 1 cent per started MB",
        ),
        (
            10,
            vec![price(pb::BucketKind::Seconds, 60, 5_000_000_000)],
            "voice: 5 cents per started minute",
        ),
        (
            100,
            vec![price(pb::BucketKind::Units, 1, 10_000_000_000)],
            "sms: 10 cents each",
        ),
    ];
    println!("demo tariffs:");
    for (rg, prices, what) in tariffs {
        let t = pb::Tariff {
            rating_group: rg,
            version: 0,
            prices,
        };
        fd.set_tariff(
            pb::SetTariffRequest {
                request_id: rid(),
                tariff: Some(t),
            },
            None,
        )
        .await?;
        println!("  rating group {rg:>3}: {what}");
    }
    let accounts = [
        (
            "imsi-001010000000001",
            10_000,
            0,
            vec![],
            "prepaid, EUR 100.00",
        ),
        (
            "imsi-001010000000002",
            500,
            0,
            vec![pb::BucketSpec {
                kind: pb::BucketKind::Bytes as i32,
                amount: 10_000_000_000,
                rating_groups: vec![32],
                ..Default::default()
            }],
            "prepaid, EUR 5.00 + 10 GB for rating group 32",
        ),
        (
            "msisdn-46700000003",
            0,
            50_000,
            vec![],
            "postpaid, credit limit EUR 500.00",
        ),
    ];
    println!("demo accounts:");
    for (id, balance, credit, buckets, what) in accounts {
        let r = fd
            .mutate(
                pb::CreateAccountRequest {
                    account_id: id.into(),
                    request_id: rid(),
                    currency: "EUR".into(),
                    credit_limit: credit,
                    initial_balance: balance,
                    buckets,
                },
                false,
            )
            .await?;
        println!(
            "  {id:<22} {what} [{}]",
            pb::ResultCode::try_from(r.result)
                .map(|c| c.as_str_name())
                .unwrap_or("?")
        );
    }
    Ok(())
}

async fn dev(base_port: u16, shards: u32, no_demo: bool) -> anyhow::Result<()> {
    metrics_http::recorder();
    let ports = vec![base_port, base_port + 1, base_port + 2];
    let cluster = LocalCluster::start(ClusterOptions {
        nodes: 3,
        shards,
        public_ports: Some(ports),
        // Nchf of node i on base_port + 30 + i - 1 (50081-50083 by default).
        nchf_ports: Some(vec![base_port + 30, base_port + 31, base_port + 32]),
        ..Default::default()
    })
    .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    println!("chargerd dev: 3 nodes, {shards} shards, every shard replicated on all 3 nodes");
    println!(
        "  INSECURE, for a laptop: plaintext, no tokens, bound to 127.0.0.1 only \
         (a real cluster: `chargerd start`, which serves TLS)"
    );
    println!("  auth: off (bearer tokens are not checked; enable [auth] with chargerd start)");
    for (id, a) in &cluster.addrs {
        let m = TcpListener::bind("127.0.0.1:0").await?;
        let maddr = m.local_addr()?;
        tokio::spawn(metrics_http::serve(m, stop_rx.clone()));
        println!(
            "  node {id}: api http://{}  raft {}  metrics http://{maddr}/metrics",
            a.public, a.internal
        );
        if let Some(n) = cluster.nchf_url(*id) {
            println!("          nchf {n}/nchf-convergedcharging/v3/chargingdata (HTTP/1.1, h2c)");
        }
    }
    cluster.wait_ready(Duration::from_secs(20)).await?;
    cluster.spread_leaders(Duration::from_secs(10)).await?;
    if !no_demo {
        demo(&cluster).await?;
    }
    println!(
        "ready. try (as in the README's tour): cargo build --release --bin chargectl && \
         ./target/release/chargectl balance imsi-001010000000001   (Ctrl-C to stop)"
    );
    // A node that stops itself (an unrecoverable failure) ends the dev
    // cluster with its error, rather than leave two nodes running quietly.
    let failed = {
        let failures = cluster.nodes.values().map(|n| Box::pin(n.failed()));
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r?; None }
            (why, i, _) = futures::future::select_all(failures) => Some((i, why)),
        }
    };
    println!("stopping...");
    let _ = stop_tx.send(true);
    let failed = failed.map(|(i, why)| {
        let id = cluster.nodes.keys().nth(i).copied().unwrap_or_default();
        anyhow::anyhow!("node {id} stopped: {why}")
    });
    cluster.shutdown().await;
    println!("stopped.");
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Ctrl-C or SIGTERM (what `docker stop` and `kill` send).
async fn stop_signal() {
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async {
                match term.as_mut() {
                    Some(t) => { t.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Writes `text` to `path` unless it exists; keys readable by the owner only.
fn write_new(path: &std::path::Path, text: &str, secret: bool) -> anyhow::Result<bool> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    match o.open(path) {
        Ok(mut f) => {
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

fn certs(
    dir: &std::path::Path,
    nodes: &[u64],
    hosts: &[String],
    clients: &[String],
) -> anyhow::Result<()> {
    use charging_node::tls::CertAuthority;
    std::fs::create_dir_all(dir)?;
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let ca = if ca_pem.exists() {
        CertAuthority::load(&ca_pem, &ca_key)?
    } else {
        let ca = CertAuthority::generate("chargerd local CA")?;
        write_new(&ca_key, &ca.key_pem, true)?;
        write_new(&ca_pem, &ca.cert_pem, false)?;
        println!("made {}", ca_pem.display());
        ca
    };
    let issue = |name: String, make: &dyn Fn() -> anyhow::Result<charging_node::tls::Issued>| {
        let (pem, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        if pem.exists() {
            return anyhow::Ok(());
        }
        let c = make()?;
        write_new(&key, &c.key_pem, true)?;
        write_new(&pem, &c.cert_pem, false)?;
        println!("made {}", pem.display());
        Ok(())
    };
    for &n in nodes {
        anyhow::ensure!(
            n > 0 && n < 1 << 31,
            "--nodes: {n} is not a node id (1..2^31)"
        );
        let mut names = hosts.to_vec();
        names.push(format!("node{n}"));
        issue(format!("node{n}"), &|| Ok(ca.node_cert(n, &names)?))?;
    }
    for c in clients {
        anyhow::ensure!(
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'),
            "--clients: `{c}` must be letters, digits, - or _"
        );
        issue(format!("client-{c}"), &|| Ok(ca.client_cert(c)?))?;
    }
    Ok(())
}

/// `30s`, `15m`, `1h`, `7d` (a bare number is seconds).
fn parse_ttl(s: &str) -> anyhow::Result<Duration> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("--ttl {s}: a number and s, m, h or d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("--ttl {s}: a number and s, m, h or d"),
    };
    if n == 0 {
        anyhow::bail!("--ttl {s}: must be > 0");
    }
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

fn keygen(out: &std::path::Path, force: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let (private, public) =
        charging_node::frontdoor::auth::generate_es256().map_err(|e| anyhow::anyhow!(e))?;
    let priv_path = std::path::PathBuf::from(format!("{}.pem", out.display()));
    let pub_path = std::path::PathBuf::from(format!("{}.pub.pem", out.display()));
    for p in [&priv_path, &pub_path] {
        if p.exists() && !force {
            anyhow::bail!("{} exists (--force to overwrite)", p.display());
        }
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    o.open(&priv_path)?.write_all(private.as_bytes())?;
    std::fs::write(&pub_path, public)?;
    println!(
        "private key: {} (signs tokens: chargerd token --key ...; node config auth.node_key)",
        priv_path.display()
    );
    println!(
        "public key:  {} (node config auth.keys)",
        pub_path.display()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,charging_node=info,openraft=error".into()),
        )
        // Colour only on a terminal: a log file (`.cluster/node*/log`, a
        // container's log) gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    match Cli::parse().cmd {
        Cmd::Start { config, join } => {
            let mut cfg = charging_node::config_file::ProcessConfig::load(&config)
                .map_err(|e| anyhow::anyhow!(e))?;
            if join.is_some() {
                cfg.node.join = join;
            }
            let id = cfg.node.node_id;
            println!(
                "chargerd node {id}: api {} raft {} data {} fsync {:?}",
                cfg.public_addr,
                cfg.internal_addr,
                cfg.data_dir.display(),
                cfg.fsync
            );
            charging_node::process::run(cfg, async move {
                stop_signal().await;
                println!("chargerd node {id}: stopping");
            })
            .await?;
            println!("chargerd node {id}: stopped");
            Ok(())
        }
        Cmd::Certs {
            dir,
            nodes,
            hosts,
            clients,
        } => certs(&dir, &nodes, &hosts, &clients),
        Cmd::Keygen { out, force } => keygen(&out, force),
        Cmd::Token {
            key,
            role,
            ttl,
            aud,
            iss,
            sub,
            scope,
            kid,
            alg,
        } => {
            use charging_node::frontdoor::auth::{Role, Signer, TokenSpec};
            let roles = role
                .iter()
                .map(|r| {
                    Role::parse(r).ok_or_else(|| {
                        anyhow::anyhow!("--role {r}: one of charging, billing, admin")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let alg = alg
                .map(|a| {
                    a.parse()
                        .map_err(|_| anyhow::anyhow!("--alg {a}: ES256, RS256 or RS512"))
                })
                .transpose()?;
            let pem =
                std::fs::read(&key).map_err(|e| anyhow::anyhow!("--key {}: {e}", key.display()))?;
            let signer = Signer::from_pem(&pem, alg)
                .map_err(|e| anyhow::anyhow!("--key {}: {e}", key.display()))?;
            let spec = TokenSpec {
                subject: sub,
                audience: aud,
                issuer: iss,
                scope: TokenSpec::for_roles(&scope, &roles),
                ttl: parse_ttl(&ttl)?,
                kid,
            };
            #[allow(clippy::disallowed_methods)] // a CLI, not the node core
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs();
            println!(
                "{}",
                signer.sign(&spec, now).map_err(|e| anyhow::anyhow!(e))?
            );
            Ok(())
        }
        Cmd::ConfigExample { node_id } => {
            print!("{}", charging_node::config_file::example(node_id));
            Ok(())
        }
        Cmd::Dev {
            base_port,
            shards,
            no_demo,
        } => dev(base_port, shards, no_demo).await,
    }
}
