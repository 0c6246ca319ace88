//! A self-contained HTML report (inline SVG, no scripts, no CDN) built from
//! a run's JSON report.

use serde_json::Value;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

struct Series {
    name: String,
    color: &'static str,
    pts: Vec<(f64, f64)>,
}

/// A line chart. `y_log`: log10 y axis; `x_nines`: x values are percentiles
/// drawn on the "number of nines" axis HdrHistogram plots use.
fn chart(title: &str, xl: &str, yl: &str, series: &[Series], y_log: bool, x_nines: bool) -> String {
    let (w, h, ml, mr, mt, mb) = (760.0, 300.0, 70.0, 150.0, 30.0, 40.0);
    let fx = |x: f64| {
        if x_nines {
            (1.0 / (1.0 - (x / 100.0).min(0.99999))).log10()
        } else {
            x
        }
    };
    let fy = |y: f64| if y_log { y.max(1.0).log10() } else { y };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.pts.iter().map(|&(x, y)| (fx(x), fy(y))))
        .collect();
    let mut out = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' viewBox='0 0 {w} {h}'>\
         <text x='{ml}' y='18' font-size='14' font-weight='bold'>{}</text>",
        esc(title)
    );
    if all.is_empty() {
        out += "<text x='100' y='150'>no data</text></svg>";
        return out;
    }
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for &(x, y) in &all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if y_log {
        y0 = y0.floor();
        y1 = y1.ceil().max(y0 + 1.0);
    } else {
        y0 = 0.0;
        y1 = (y1 * 1.1).max(1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let pw = w - ml - mr;
    let ph = h - mt - mb;
    let px = |x: f64| ml + (x - x0) / (x1 - x0) * pw;
    let py = |y: f64| mt + ph - (y - y0) / (y1 - y0) * ph;
    out +=
        &format!("<rect x='{ml}' y='{mt}' width='{pw}' height='{ph}' fill='none' stroke='#999'/>");
    // Y ticks.
    let yt: Vec<f64> = if y_log {
        (y0 as i64..=y1 as i64).map(|e| e as f64).collect()
    } else {
        (0..=4).map(|i| y0 + (y1 - y0) * i as f64 / 4.0).collect()
    };
    for t in yt {
        let label = if y_log { 10f64.powf(t) } else { t };
        let y = py(t);
        out += &format!(
            "<line x1='{ml}' x2='{}' y1='{y}' y2='{y}' stroke='#eee'/>\
             <text x='{}' y='{}' font-size='11' text-anchor='end'>{}</text>",
            ml + pw,
            ml - 5.0,
            y + 4.0,
            fmt_num(label),
        );
    }
    // X ticks.
    let xt: Vec<(f64, String)> = if x_nines {
        [0.0, 90.0, 99.0, 99.9, 99.99, 99.999]
            .iter()
            .map(|&p| (fx(p), format!("{p}%")))
            .filter(|(x, _)| *x <= x1 + 1e-9)
            .collect()
    } else {
        (0..=5)
            .map(|i| {
                let x = x0 + (x1 - x0) * i as f64 / 5.0;
                (x, fmt_num(x))
            })
            .collect()
    };
    for (x, l) in xt {
        out += &format!(
            "<text x='{}' y='{}' font-size='11' text-anchor='middle'>{}</text>",
            px(x),
            mt + ph + 15.0,
            esc(&l)
        );
    }
    out += &format!(
        "<text x='{}' y='{}' font-size='12' text-anchor='middle'>{}</text>\
         <text x='14' y='{}' font-size='12' transform='rotate(-90 14 {})' text-anchor='middle'>{}</text>",
        ml + pw / 2.0,
        h - 6.0,
        esc(xl),
        mt + ph / 2.0,
        mt + ph / 2.0,
        esc(yl)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .pts
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(fx(x)), py(fy(y))))
            .collect();
        out += &format!(
            "<polyline fill='none' stroke='{}' stroke-width='2' points='{}'/>",
            s.color,
            pts.join(" ")
        );
        let ly = mt + 15.0 + 18.0 * i as f64;
        out += &format!(
            "<line x1='{}' x2='{}' y1='{ly}' y2='{ly}' stroke='{}' stroke-width='3'/>\
             <text x='{}' y='{}' font-size='12'>{}</text>",
            ml + pw + 10.0,
            ml + pw + 30.0,
            s.color,
            ml + pw + 35.0,
            ly + 4.0,
            esc(&s.name)
        );
    }
    out += "</svg>";
    out
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if x.abs() >= 1e4 {
        format!("{:.0}k", x / 1e3)
    } else if x.fract() == 0.0 || x.abs() >= 100.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn timeline(r: &Value, prefix: &str, key: &str) -> Vec<(f64, f64)> {
    r.get(format!("{prefix}timeline"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter(|p| p["ops"].as_u64().unwrap_or(0) > 0)
                .map(|p| {
                    (
                        p["t_s"].as_f64().unwrap_or(0.0),
                        p[key].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// (end of interval s, ops/s) of the timeline: each interval's ops over its
/// real length, so the last, partial second is not drawn as a dip. Reports
/// without `ops_per_sec` (older JSON) get the length from consecutive `t_s`,
/// and lose a last interval too short for a rate (the recorder now folds
/// that one into the interval before).
fn throughput(r: &Value, prefix: &str) -> Vec<(f64, f64)> {
    let Some(a) = r.get(format!("{prefix}timeline")).and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut prev_t = 0.0;
    let mut pts: Vec<(f64, f64, f64)> = a
        .iter()
        .map(|p| {
            let t = p["t_s"].as_f64().unwrap_or(0.0);
            let dt = p["dt_s"].as_f64().unwrap_or(t - prev_t);
            prev_t = t;
            let rate = p["ops_per_sec"].as_f64().unwrap_or_else(|| {
                let ops = p["ops"].as_f64().unwrap_or(0.0);
                if dt > 0.0 {
                    ops / dt
                } else {
                    0.0
                }
            });
            (t, dt, rate)
        })
        .collect();
    let min_dt = crate::stats::MIN_LAST_INTERVAL.as_secs_f64();
    if pts.len() > 1 && pts.last().is_some_and(|&(_, dt, _)| dt < min_dt) {
        pts.pop();
    }
    pts.into_iter().map(|(t, _, rate)| (t, rate)).collect()
}

fn percentiles(r: &Value, prefix: &str) -> Vec<(f64, f64)> {
    r.get(format!("{prefix}percentiles"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|p| {
                    (
                        p["percentile"].as_f64().unwrap_or(0.0),
                        p["us"].as_f64().unwrap_or(0.0),
                    )
                })
                .filter(|(p, _)| *p < 100.0)
                .collect()
        })
        .unwrap_or_default()
}

/// The HTML page for one run report (or several, e.g. a profile).
pub fn page(title: &str, reports: &[Value]) -> String {
    let mut body = String::new();
    for r in reports {
        body += &section(r);
    }
    format!(
        "<!doctype html><html><head><meta charset='utf-8'><title>{t}</title>\
         <style>body{{font-family:sans-serif;margin:20px;max-width:980px}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
         pre{{background:#f6f6f6;padding:8px}}section{{margin-bottom:40px}}</style></head>\
         <body><h1>{t}</h1>{body}</body></html>\n",
        t = esc(title)
    )
}

fn section(r: &Value) -> String {
    let s = |k: &str| {
        r.get(k)
            .map(|v| v.to_string().trim_matches('"').to_string())
            .unwrap_or_default()
    };
    let mut h = format!(
        "<section><h2>{} · {} · {}</h2>",
        esc(&s("workload")),
        esc(&s("transport")),
        esc(&s("mode_desc"))
    );
    h += "<table><tr><th></th><th>ops/s</th><th>p50 µs</th><th>p90 µs</th><th>p99 µs</th><th>p99.9 µs</th><th>max µs</th><th>errors</th></tr>";
    let row = |name: &str, p: &str| {
        format!(
            "<tr><th>{name}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s(&format!("{p}ops_per_sec")),
            s(&format!("{p}p50_us")),
            s(&format!("{p}p90_us")),
            s(&format!("{p}p99_us")),
            s(&format!("{p}p999_us")),
            s(&format!("{p}max_us")),
            s(&format!("{p}errors"))
        )
    };
    h += &row("charging", "");
    let has_base = r.get("baseline_ops_per_sec").is_some();
    if has_base {
        h += &row("echo", "baseline_");
        h += &format!(
            "<tr><th>ratio</th><td>{}×</td><td>{}×</td><td></td><td>{}×</td><td></td><td></td><td></td></tr>",
            s("ratio_ops_per_sec"),
            s("ratio_p50"),
            s("ratio_p99")
        );
    }
    if let Some(line) = crate::report::node_cpu_line(r, "") {
        let pids = r
            .get("node_pids")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let text = line.strip_prefix("node cpu: ").unwrap_or(&line);
        h += &format!(
            "<tr><th>node cpu</th><td colspan='7' style='text-align:left'>{} \
             <small>(user + system CPU of node pids {} over the measured window)</small></td></tr>",
            esc(text),
            esc(&pids)
        );
    }
    h += "</table>";
    h += &format!(
        "<p>drift: <b>{}</b> · errors by code: {} · accounts {} ({})</p>",
        esc(&s("drift")),
        esc(&s("errors_by_code")),
        esc(&s("accounts")),
        esc(&s("distribution"))
    );
    let mut lat = vec![
        Series {
            name: "p50".into(),
            color: "#1f77b4",
            pts: timeline(r, "", "p50_us"),
        },
        Series {
            name: "p99".into(),
            color: "#d62728",
            pts: timeline(r, "", "p99_us"),
        },
    ];
    if has_base {
        lat.push(Series {
            name: "echo p99".into(),
            color: "#999999",
            pts: timeline(r, "baseline_", "p99_us"),
        });
    }
    h += &chart(
        "Latency over time",
        "seconds",
        "µs (log)",
        &lat,
        true,
        false,
    );
    h += "<br>";
    h += &chart(
        "Throughput over time",
        "seconds",
        "ops per second",
        &[Series {
            name: "ops/s".into(),
            color: "#2ca02c",
            pts: throughput(r, ""),
        }],
        false,
        false,
    );
    h += "<br>";
    let mut dist = vec![Series {
        name: "charging".into(),
        color: "#d62728",
        pts: percentiles(r, ""),
    }];
    if has_base {
        dist.push(Series {
            name: "echo".into(),
            color: "#999999",
            pts: percentiles(r, "baseline_"),
        });
    }
    h += &chart(
        "Latency by percentile",
        "percentile",
        "µs (log)",
        &dist,
        true,
        true,
    );
    h += "</section>";
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn html_is_self_contained_svg() {
        let r = json!({"workload": "debit", "transport": "unary", "ops_per_sec": 10.0,
            "timeline": [{"t_s": 1.0, "ops": 5, "p50_us": 100, "p99_us": 900},
                         {"t_s": 2.0, "ops": 6, "p50_us": 120, "p99_us": 1500}],
            "percentiles": [{"percentile": 50.0, "us": 100}, {"percentile": 99.0, "us": 900},
                            {"percentile": 99.9, "us": 1200}],
            "drift": 0});
        let p = page("t <x>", &[r]);
        assert!(p.contains("<svg") && p.contains("polyline"));
        assert!(p.contains("t &lt;x&gt;"));
        assert!(!p.contains(" src=") && !p.contains(" href="));
        assert!(!p.contains("<script"));
    }

    /// The throughput plot of a steady 1000 ops/s run whose last interval
    /// lasted 0.25 s: 1000/s throughout (it was drawn as 250).
    #[test]
    fn throughput_of_the_partial_last_second_is_a_rate() {
        let new = json!({"timeline": [
            {"t_s": 1.0, "dt_s": 1.0, "ops": 1000, "ops_per_sec": 1000.0},
            {"t_s": 2.0, "dt_s": 1.0, "ops": 1000, "ops_per_sec": 1000.0},
            {"t_s": 2.25, "dt_s": 0.25, "ops": 250, "ops_per_sec": 1000.0}]});
        assert_eq!(
            throughput(&new, ""),
            vec![(1.0, 1000.0), (2.0, 1000.0), (2.25, 1000.0)]
        );
        // An older report, without dt_s / ops_per_sec: from the t_s steps.
        let old = json!({"timeline": [
            {"t_s": 1.0, "ops": 1000}, {"t_s": 2.0, "ops": 1000},
            {"t_s": 2.25, "ops": 250}]});
        assert_eq!(throughput(&old, ""), throughput(&new, ""));
        // ... and a last interval of 4 ms is no rate at all: left out.
        let old = json!({"timeline": [
            {"t_s": 1.0, "ops": 1000}, {"t_s": 2.0, "ops": 1000},
            {"t_s": 2.004, "ops": 3}]});
        assert_eq!(throughput(&old, ""), vec![(1.0, 1000.0), (2.0, 1000.0)]);
    }

    #[test]
    fn node_cpu_row() {
        let r = json!({"workload": "debit", "ops_per_sec": 10.0, "node_pids": [11, 12],
            "node_cpu_us_per_op": 123.4, "node_cpu_cores": 1.5});
        let p = page("t", &[r]);
        assert!(p.contains("<th>node cpu</th>"), "{p}");
        assert!(p.contains("123.4 µs/op (1.50 cores)"), "{p}");
        assert!(p.contains("node pids 11, 12"), "{p}");
        let r = json!({"workload": "debit", "node_pids": [11],
            "node_cpu_us_per_op": null, "node_cpu_cores": null,
            "node_cpu_warning": "node pid 11 cannot be read"});
        let p = page("t", &[r]);
        assert!(p.contains("absent (node pid 11 cannot be read)"), "{p}");
        let p = page("t", &[json!({"workload": "debit"})]);
        assert!(!p.contains("node cpu"));
    }
}
