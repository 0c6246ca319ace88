//! The text form of results: aligned `key: value` lines and tables, in
//! words a person reads.
use super::*;

/// What `chargectl` prints of a response with a result code: the result's
/// name, then the `key: value` lines the operation table's `shows` column
/// names, each in its word's form (see [`charging_proto::charging_ops!`]).
pub(crate) trait Describe {
    fn code(&self) -> i32;
    fn lines(&self) -> Vec<(&'static str, String)>;
}

macro_rules! describe {
    ($( $(#[doc = $doc:literal])* $op:ident($Req:ident -> $Resp:ident) on $on:tt serve $serve:tt
        stream $stream:tt client $client:tt decide $decide:tt shows [$($shows:tt)*]; )*) => {
        $( describe!(@one $Resp $($shows)*); )*
    };
    (@one $Resp:ident result $(, $label:literal: $field:ident as $how:ident)*) => {
        impl Describe for charging_client::proto::$Resp {
            fn code(&self) -> i32 {
                self.result
            }
            fn lines(&self) -> Vec<(&'static str, String)> {
                vec![
                    ("result", result_name(self.result).into()),
                    $(($label, describe!(@how $how self.$field)),)*
                ]
            }
        }
    };
    // Printed by its own text (balance, tariffs).
    (@one $Resp:ident) => {};
    (@how number $v:expr) => { $v.to_string() };
    (@how units $v:expr) => { fmt_units(&$v.unwrap_or_default()) };
    (@how yes_no $v:expr) => { yes_no($v) };
    (@how time $v:expr) => { fmt_ts($v) };
}
charging_proto::charging_ops!(describe);

/// A gRPC code as its canonical name, e.g. `UNAVAILABLE`, `DEADLINE_EXCEEDED`.
pub(crate) fn code_name(code: Code) -> String {
    let mut out = String::new();
    for (i, ch) in format!("{code:?}").chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_uppercase());
    }
    out
}

/// Aligned `key: value` lines.
pub(crate) fn kv(lines: &[(&str, String)]) -> String {
    let w = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines
        .iter()
        .map(|(k, v)| format!("{:<w$} {v}", format!("{k}:")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A table with left-aligned columns.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths.get(i).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(headers.to_vec())];
    for row in rows {
        out.push(line(row.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

pub(crate) fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

pub(crate) fn human_bytes(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1_000_000_000_000, "TB"),
        (1_000_000_000, "GB"),
        (1_000_000, "MB"),
        (1_000, "kB"),
    ];
    for (scale, name) in UNITS {
        if b >= scale {
            // Display only: one decimal, truncated.
            let tenths = (u128::from(b) * 10 / u128::from(scale)) as u64;
            return format!("{}.{} {name}", tenths / 10, tenths % 10);
        }
    }
    format!("{b} B")
}

pub(crate) fn fmt_units(u: &Units) -> String {
    let mut parts = Vec::new();
    if u.volume_bytes > 0 {
        let mut s = format!("{} bytes", u.volume_bytes);
        if u.volume_bytes >= 1000 {
            s.push_str(&format!(" ({})", human_bytes(u.volume_bytes)));
        }
        parts.push(s);
    }
    if u.time_s > 0 {
        parts.push(format!("{} s", u.time_s));
    }
    if u.service_units > 0 {
        parts.push(format!("{} units", u.service_units));
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's `civil_from_days`).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Unix ms as `2024-05-01T12:00:00.000Z`.
pub(crate) fn iso_utc(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60,
        ms % 1000
    )
}

pub(crate) fn fmt_ts(ms: u64) -> String {
    if ms == 0 {
        return "-".to_string();
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i128)
        .unwrap_or(0);
    let delta = i128::from(ms) - now;
    let rel = if delta >= 0 {
        format!("in {}.{:03} s", delta / 1000, delta % 1000)
    } else {
        format!("{}.{:03} s ago", -delta / 1000, -delta % 1000)
    };
    format!("{ms} ({}, {rel})", iso_utc(ms))
}

pub(crate) fn fmt_window(ms: u64) -> String {
    if ms == 0 {
        "-".to_string()
    } else {
        iso_utc(ms)
    }
}

/// A bucket's priority: lower is consumed first; the default (`u32::MAX`,
/// what the main bucket has) reads "lowest".
pub(crate) fn fmt_priority(p: u32) -> String {
    if p == u32::MAX {
        "lowest".into()
    } else {
        p.to_string()
    }
}

pub(crate) fn fmt_rgs(rgs: &[u32]) -> String {
    if rgs.is_empty() {
        "all".to_string()
    } else {
        rgs.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    }
}

pub(crate) fn grants_table(grants: &[Grant]) -> String {
    if grants.is_empty() {
        return String::new();
    }
    let rows: Vec<Vec<String>> = grants
        .iter()
        .map(|g| {
            vec![
                g.rating_group.to_string(),
                result_name(g.result).to_string(),
                g.reservation_id.to_string(),
                fmt_units(&g.granted.unwrap_or_default()),
                yes_no(g.final_units),
                fmt_ts(g.expires_at_ms),
            ]
        })
        .collect();
    format!(
        "\n{}",
        table(
            &["RG", "RESULT", "RESERVATION", "GRANTED", "FINAL", "EXPIRES"],
            &rows
        )
    )
}

pub(crate) fn balance_text(account: &str, r: &BalanceResponse) -> String {
    let mut lines = vec![
        ("account", account.to_string()),
        ("result", result_name(r.result).into()),
    ];
    if !is_ok(r.result) {
        return kv(&lines);
    }
    lines.extend([
        ("currency", r.currency.clone()),
        ("state", account_state_name(r.state).into()),
        ("version", r.version.to_string()),
        ("available", r.available.to_string()),
        ("credit-limit", r.credit_limit.to_string()),
        ("debt", r.debt.to_string()),
        ("open-sessions", r.open_sessions.to_string()),
        ("open-reservations", r.open_reservations.to_string()),
    ]);
    let rows: Vec<Vec<String>> = r
        .buckets
        .iter()
        .map(|b| {
            vec![
                b.bucket_id.to_string(),
                bucket_kind_name(b.kind).to_string(),
                b.balance.to_string(),
                b.reserved.to_string(),
                fmt_priority(b.priority),
                fmt_rgs(&b.rating_groups),
                fmt_window(b.valid_from_ms),
                fmt_window(b.valid_until_ms),
            ]
        })
        .collect();
    format!(
        "{}\n\n{}",
        kv(&lines),
        table(
            &[
                "BUCKET",
                "KIND",
                "BALANCE",
                "RESERVED",
                "PRIORITY",
                "RG",
                "VALID-FROM",
                "VALID-UNTIL"
            ],
            &rows
        )
    )
}

pub(crate) fn tariffs_text(tariffs: &[Tariff]) -> String {
    if tariffs.is_empty() {
        return "no tariffs".to_string();
    }
    let mut rows = Vec::new();
    for t in tariffs {
        if t.prices.is_empty() {
            rows.push(vec![
                t.rating_group.to_string(),
                t.version.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for p in &t.prices {
            rows.push(vec![
                t.rating_group.to_string(),
                t.version.to_string(),
                bucket_kind_name(p.unit).to_string(),
                p.increment.to_string(),
                p.nano_per_increment.to_string(),
            ]);
        }
    }
    table(
        &["RG", "VERSION", "UNIT", "INCREMENT", "NANO/INCREMENT"],
        &rows,
    )
}

/// The node table: addresses, state, placement counts, reachability.
pub(crate) fn nodes_text(s: &StatusResponse) -> String {
    let nodes: Vec<Vec<String>> = s
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.node_id.to_string(),
                n.public_addr.clone(),
                n.internal_addr.clone(),
                if n.draining { "draining" } else { "active" }.to_string(),
                n.replicas.to_string(),
                n.leaders.to_string(),
                yes_no(n.reachable),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "PUBLIC",
            "INTERNAL",
            "STATE",
            "REPLICAS",
            "LEADERS",
            "REACHABLE",
        ],
        &nodes,
    )
}

/// Prints one result to stdout. A reader that went away (`chargectl status |
/// head -1`) is no error of ours: the rest is dropped quietly, where
/// `println!` would panic on the broken pipe.
pub(crate) fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}").and_then(|()| out.flush());
}

pub(crate) fn status_text(s: &StatusResponse) -> String {
    let shards: Vec<Vec<String>> = s
        .shard_status
        .iter()
        .map(|sh| {
            let mut lag: Vec<(u64, u64)> = sh.lag.iter().map(|(k, v)| (*k, *v)).collect();
            lag.sort();
            let lag_s = if lag.is_empty() {
                "-".to_string()
            } else {
                lag.iter()
                    .map(|(n, l)| format!("{n}:{l}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            vec![
                sh.shard_id.to_string(),
                if sh.leader == 0 {
                    "-".to_string()
                } else {
                    sh.leader.to_string()
                },
                sh.term.to_string(),
                sh.applied_index.to_string(),
                sh.voters
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                sh.accounts.to_string(),
                lag.iter().map(|(_, l)| *l).max().unwrap_or(0).to_string(),
                lag_s,
                sh.state_hash
                    .map(|h| format!("{h:016x}@{}", sh.state_index))
                    .unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    let meta = if s.meta_leader == 0 {
        "-".to_string()
    } else {
        format!("node {}", s.meta_leader)
    };
    format!(
        "answered by node {}; {} shards; cluster map version {} (metadata group led by {meta}); \
         replica moves in progress: {}\n\n{}\n\n{}",
        s.node_id,
        s.shards,
        s.map_version,
        s.moves_in_progress,
        nodes_text(s),
        table(
            &[
                "SHARD",
                "LEADER",
                "TERM",
                "APPLIED",
                "VOTERS",
                "ACCOUNTS",
                "MAX-LAG",
                "LAG (node:entries)",
                "DIGEST@INDEX"
            ],
            &shards
        )
    )
}
