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
                .filter(|p| p["ops"].as_u64().unwrap_or(0) > 0 || key == "ops")
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
            pts: timeline(r, "", "ops"),
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
}
