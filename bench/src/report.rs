//! The final table, the JSON report and their numbers.

use crate::stats::{distribution, summarize, Point, Summary};
use crate::workload::LoadResult;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The measured side of one run (ours or the baseline's).
#[derive(Debug, Clone)]
pub struct Measured {
    pub ops: u64,
    pub duration_s: f64,
    pub ops_per_sec: f64,
    pub lat: Summary,
    pub raw: Summary,
    pub errors: BTreeMap<String, u64>,
    pub timeline: Vec<Point>,
    pub percentiles: Vec<(f64, u64)>,
    pub avg_batch: Option<f64>,
    /// Node CPU over the measured window (`None`: no `--node-pids`).
    pub node_cpu: Option<crate::nodecpu::Report>,
}

impl Measured {
    pub fn from_load(r: &LoadResult) -> Measured {
        let secs = r.elapsed.as_secs_f64().max(1e-9);
        Measured {
            ops: r.totals.ops,
            duration_s: secs,
            ops_per_sec: r.totals.ops as f64 / secs,
            lat: summarize(&r.totals.hist),
            raw: summarize(&r.totals.raw),
            errors: r.totals.errors.clone(),
            timeline: r.timeline.clone(),
            percentiles: distribution(&r.totals.hist),
            avg_batch: r.avg_batch,
            node_cpu: None,
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Adds the standard fields of `m` to `o`, names prefixed with `prefix`.
pub fn put_measured(o: &mut Map<String, Value>, prefix: &str, m: &Measured) {
    let mut put = |k: &str, v: Value| {
        o.insert(format!("{prefix}{k}"), v);
    };
    put("ops", json!(m.ops));
    put("duration_s", json!(round3(m.duration_s)));
    put("ops_per_sec", json!(round1(m.ops_per_sec)));
    put("p50_us", json!(m.lat.p50));
    put("p90_us", json!(m.lat.p90));
    put("p99_us", json!(m.lat.p99));
    put("p999_us", json!(m.lat.p999));
    put("max_us", json!(m.lat.max));
    put("mean_us", json!(round1(m.lat.mean)));
    put("uncorrected_p99_us", json!(m.raw.p99));
    put("errors", json!(m.error_count()));
    put("errors_by_code", json!(m.errors));
    if let Some(b) = m.avg_batch {
        put("avg_ops_per_message", json!(round1(b)));
    }
    // Absent without --node-pids; null, with the reason, when a node
    // process vanished or restarted during the window.
    if let Some(c) = &m.node_cpu {
        put("node_pids", json!(c.pids));
        match &c.result {
            Ok(f) => {
                put("node_cpu_us_per_op", json!(f.us_per_op.map(round1)));
                put("node_cpu_cores", json!(round3(f.cores)));
                put("node_cpu_seconds", json!(round3(f.cpu_us / 1e6)));
                put("node_cpu_window_s", json!(round3(f.wall_s)));
            }
            Err(w) => {
                put("node_cpu_us_per_op", Value::Null);
                put("node_cpu_cores", Value::Null);
                put("node_cpu_warning", json!(w));
            }
        }
    }
    put(
        "percentiles",
        Value::Array(
            m.percentiles
                .iter()
                .map(|(p, v)| json!({"percentile": p, "us": v}))
                .collect(),
        ),
    );
    put(
        "timeline",
        Value::Array(
            m.timeline
                .iter()
                .map(|p| {
                    json!({"t_s": round3(p.t_s), "dt_s": round3(p.dt_s), "ops": p.ops,
                           "ops_per_sec": round1(p.ops_per_sec), "errors": p.errors,
                           "p50_us": p.p50_us, "p99_us": p.p99_us, "max_us": p.max_us})
                })
                .collect(),
        ),
    );
}

/// The baseline fields and our/echo ratios.
pub fn put_baseline(o: &mut Map<String, Value>, ours: &Measured, base: &Measured) {
    put_measured(o, "baseline_", base);
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            json!(round3(a / b))
        } else {
            Value::Null
        }
    };
    o.insert(
        "ratio_ops_per_sec".into(),
        ratio(ours.ops_per_sec, base.ops_per_sec),
    );
    o.insert(
        "ratio_p50".into(),
        ratio(ours.lat.p50 as f64, base.lat.p50 as f64),
    );
    o.insert(
        "ratio_p99".into(),
        ratio(ours.lat.p99 as f64, base.lat.p99 as f64),
    );
}

pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// `node cpu: X µs/op (Y cores)` of a run report (fields prefixed with
/// `prefix`), or why it is absent; `None` when node CPU was not measured.
pub fn node_cpu_line(r: &Value, prefix: &str) -> Option<String> {
    let g = |k: &str| r.get(format!("{prefix}{k}"));
    g("node_cpu_us_per_op")?;
    if let Some(w) = g("node_cpu_warning").and_then(Value::as_str) {
        return Some(format!("node cpu: absent ({w})"));
    }
    let us = g("node_cpu_us_per_op").and_then(Value::as_f64);
    let cores = g("node_cpu_cores").and_then(Value::as_f64).unwrap_or(0.0);
    Some(match us {
        Some(us) => format!("node cpu: {us:.1} µs/op ({cores:.2} cores)"),
        None => format!("node cpu: no ops completed ({cores:.2} cores)"),
    })
}

/// The human-readable summary of a run report.
pub fn table(r: &Value) -> String {
    let g = |k: &str| r.get(k).cloned().unwrap_or(Value::Null);
    let n = |k: &str| g(k).as_f64().unwrap_or(0.0);
    let mut s = String::new();
    s += &format!(
        "{} | {} | {} | {} accounts ({})\n",
        g("workload").as_str().unwrap_or("?"),
        g("transport").as_str().unwrap_or("?"),
        g("mode_desc").as_str().unwrap_or(""),
        n("accounts"),
        g("distribution").as_str().unwrap_or("?"),
    );
    s += &format!(
        "{:<10} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}\n",
        "", "ops/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "ops", "errors"
    );
    let row = |name: &str, p: &str| {
        format!(
            "{:<10} {:>12.1} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}\n",
            name,
            n(&format!("{p}ops_per_sec")),
            n(&format!("{p}p50_us")),
            n(&format!("{p}p90_us")),
            n(&format!("{p}p99_us")),
            n(&format!("{p}p999_us")),
            n(&format!("{p}max_us")),
            n(&format!("{p}ops")),
            n(&format!("{p}errors")),
        )
    };
    s += &row("charging", "");
    if r.get("baseline_ops_per_sec").is_some() {
        s += &row("echo", "baseline_");
        s += &format!(
            "{:<10} {:>11.3}x {:>8.3}x {:>9} {:>8.3}x\n",
            "ratio",
            n("ratio_ops_per_sec"),
            n("ratio_p50"),
            "",
            n("ratio_p99")
        );
    }
    if let Some(line) = node_cpu_line(r, "") {
        s += &line;
        s += "\n";
    }
    if let Some(p) = r.get("pairs_per_sec") {
        s += &format!("pairs/s: {p}\n");
    }
    if let Some(Value::Object(e)) = r.get("errors_by_code") {
        if !e.is_empty() {
            let list: Vec<String> = e.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s += &format!("errors by code: {}\n", list.join(", "));
        }
    }
    if let Some(b) = r.get("avg_ops_per_message") {
        s += &format!("average ops per stream message: {b}\n");
    }
    match r.get("drift") {
        Some(Value::Null) | None => s += "drift: not checked\n",
        Some(d) => {
            s += &format!(
                "drift: {d} (accounts checked {}, mismatched {}, unverified {}, open reservations {})\n",
                n("drift_accounts_checked"),
                n("drift_mismatched"),
                n("drift_unverified"),
                n("open_reservations")
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Recorder;
    use std::time::Duration;

    #[test]
    fn json_has_the_required_fields() {
        let rec = Recorder::new(0);
        for us in 1..=1000u64 {
            let d = Duration::from_micros(us);
            rec.record(
                us as usize,
                d,
                d,
                (us % 100 == 0).then_some("INSUFFICIENT_BALANCE"),
            );
        }
        let (totals, _) = rec.finish();
        let load = LoadResult {
            timeline: totals.timeline.clone(),
            totals,
            elapsed: Duration::from_secs(2),
            avg_batch: None,
            txns_started: 0,
        };
        let m = Measured::from_load(&load);
        assert_eq!(m.ops, 1000);
        assert!((m.ops_per_sec - 500.0).abs() < 1e-6);
        assert_eq!(m.lat.p50, 500);
        assert_eq!(m.lat.p99, 990);
        assert_eq!(m.lat.p999, 999);
        assert_eq!(m.lat.max, 1000);
        let mut o = Map::new();
        o.insert("workload".into(), json!("debit"));
        o.insert("transport".into(), json!("unary"));
        o.insert("concurrency".into(), json!(4));
        o.insert("drift".into(), json!(0));
        put_measured(&mut o, "", &m);
        let half = Measured {
            ops_per_sec: 1000.0,
            lat: Summary {
                p50: 250,
                p99: 495,
                ..m.lat
            },
            ..m.clone()
        };
        put_baseline(&mut o, &m, &half);
        let v = Value::Object(o);
        for k in [
            "workload",
            "transport",
            "concurrency",
            "duration_s",
            "ops",
            "ops_per_sec",
            "p50_us",
            "p99_us",
            "p999_us",
            "max_us",
            "errors",
            "drift",
            "baseline_ops_per_sec",
            "baseline_p50_us",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["errors"], json!(10));
        assert_eq!(v["errors_by_code"]["INSUFFICIENT_BALANCE"], json!(10));
        assert_eq!(v["ratio_ops_per_sec"], json!(0.5));
        assert_eq!(v["ratio_p50"], json!(2.0));
        let t = table(&v);
        assert!(t.contains("INSUFFICIENT_BALANCE 10"), "{t}");
        assert!(t.contains("echo"), "{t}");
        // Round trip through text.
        let back: Value = serde_json::from_str(&v.to_string()).unwrap();
        assert_eq!(back["p99_us"], json!(990));
        for k in ["t_s", "dt_s", "ops", "ops_per_sec", "p99_us"] {
            assert!(back["timeline"][0].get(k).is_some(), "timeline: no {k}");
        }
    }

    #[test]
    fn node_cpu_fields_and_line() {
        use crate::nodecpu::{Figures, Report};
        let load = LoadResult {
            timeline: Vec::new(),
            totals: Recorder::new(0).finish().0,
            elapsed: Duration::from_secs(2),
            avg_batch: None,
            txns_started: 0,
        };
        let mut m = Measured::from_load(&load);
        // Without --node-pids: no field at all, no line.
        let mut o = Map::new();
        put_measured(&mut o, "", &m);
        assert!(o.get("node_cpu_us_per_op").is_none());
        assert!(!table(&Value::Object(o)).contains("node cpu"));
        m.node_cpu = Some(Report {
            pids: vec![5, 6],
            result: Ok(Figures {
                cpu_us: 3e6,
                wall_s: 2.0,
                ops: 12_345,
                us_per_op: Some(3e6 / 12_345.0),
                cores: 1.5,
            }),
        });
        let mut o = Map::new();
        put_measured(&mut o, "", &m);
        let v = Value::Object(o);
        assert_eq!(v["node_cpu_us_per_op"], json!(243.0));
        assert_eq!(v["node_cpu_cores"], json!(1.5));
        assert_eq!(v["node_pids"], json!([5, 6]));
        let t = table(&v);
        assert!(
            t.lines().any(|l| l == "node cpu: 243.0 µs/op (1.50 cores)"),
            "{t}"
        );
        // A node that vanished: null, and the reason.
        m.node_cpu = Some(Report {
            pids: vec![5],
            result: Err("node pid 5 cannot be read".into()),
        });
        let mut o = Map::new();
        put_measured(&mut o, "", &m);
        let v = Value::Object(o);
        assert_eq!(v["node_cpu_us_per_op"], Value::Null);
        assert_eq!(v["node_cpu_cores"], Value::Null);
        assert!(table(&v).contains("node cpu: absent (node pid 5 cannot be read)"));
    }
}
