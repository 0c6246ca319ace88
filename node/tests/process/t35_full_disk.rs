//! A node whose disk fills up under load: it stops at its free-space floor
//! (health NOT_SERVING, exit non-zero, the reason in its log), and the
//! other two go on serving with every acknowledged operation kept.
use super::support::*;
use charging_client::proto::charging_client::ChargingClient;
use charging_client::proto::BulkCreateAccountsRequest;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Unmounts the test's tmpfs however the test ends.
struct Mounted(std::path::PathBuf);
impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Node 3's data dir is a 64 MiB tmpfs with a 40 MiB floor; 1 MiB bulk
/// loads (written to every node's log) fill it while top-ups run. Needs
/// root to mount the tmpfs (CI runs as root); without it, says so and
/// checks nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_whose_disk_fills_stops_at_its_floor_and_nothing_acknowledged_is_lost() {
    let mut c = ProcCluster::configure(3, "never", "snapshot_logs = 200");
    let data3 = c.data_dir(3);
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        .arg(&data3)
        .output()
        .expect("run mount");
    if !mount.status.success() {
        let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        assert!(
            !root,
            "mount tmpfs as root failed: {}",
            String::from_utf8_lossy(&mount.stderr)
        );
        println!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let _mounted = Mounted(data3.clone());
    c.add_config(3, "disk_free_min_mb = 40");
    for id in 1..=3 {
        c.launch(id);
    }
    for id in 1..=3 {
        c.wait_ready(id, Duration::from_secs(30)).await;
    }
    let cl = connect(&c.url(1)).await;
    let accounts = Arc::new(accounts("disk", 2));
    for a in accounts.iter() {
        let r = cl.create_account(a, "EUR", 0, 0, Vec::new()).await.unwrap();
        assert!(charging_client::is_ok(r.result), "create {a}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(top_up_load(
        vec![connect(&c.url(1)).await, connect(&c.url(2)).await],
        accounts.clone(),
        100_000,
        stop.clone(),
        acks.clone(),
    ));
    wait_acks(&acks, 50, Duration::from_secs(30)).await;

    // Fill: 1 MiB bulk loads of new accounts through node 1, until node 3
    // stops (bounded: 60 loads, 90 s).
    let tls = client_config().tls.unwrap();
    let mut bulk = ChargingClient::new(tls.endpoint(&c.url(1)).unwrap().connect().await.unwrap());
    let started = Instant::now();
    let mut status = None;
    for i in 0..60 {
        let ids: Vec<String> = (0..16_000)
            .map(|n| format!("fill-{i:0>3}-{n:0>54}"))
            .collect();
        let r = bulk
            .bulk_create_accounts(BulkCreateAccountsRequest {
                account_ids: ids,
                currency: "EUR".into(),
                credit_limit: 0,
                initial_balance: 0,
            })
            .await;
        if let Err(s) = r {
            assert!(
                matches!(
                    s.code(),
                    tonic::Code::Unavailable | tonic::Code::ResourceExhausted
                ),
                "bulk load {i}: {s:?}"
            );
        }
        status = c.wait_exit(3, Duration::ZERO);
        if status.is_some() || started.elapsed() > Duration::from_secs(90) {
            break;
        }
    }
    let status = match status {
        Some(s) => s,
        None => c
            .wait_exit(3, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("node 3 did not stop:\n{}", c.log(3))),
    };
    let free = free_bytes(&data3);
    println!(
        "node 3 stopped after {:.1} s with {status}, {} MiB free on its tmpfs",
        started.elapsed().as_secs_f64(),
        free >> 20
    );
    assert!(!status.success(), "exits non-zero");
    let log = c.log(3);
    assert!(
        log.contains("below the floor disk_free_min_mb = 40 MiB"),
        "the log says why:\n{log}"
    );

    // The others go on: more top-ups acknowledged after the stop.
    let n = acks.load(Ordering::Relaxed);
    wait_acks(&acks, n + 50, Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ledger = load.await.unwrap();
    settle(&cl, &mut ledger).await;
    assert_exact(&cl, &accounts, &ledger).await;
    println!(
        "{} top-ups acknowledged, balances exact on the two nodes left",
        ledger.acked.len()
    );
}

fn free_bytes(dir: &std::path::Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0)
}
