//! Node CPU per operation (issue 14): the user + system CPU time of the node
//! processes (`--node-pids`) over the measured window, read from
//! `/proc/<pid>/stat`, divided by the operations completed in that window.
//!
//! Throughput alone cannot tell a cheaper node from a machine with more idle
//! cores; CPU µs per operation can, and it is comparable between runs on a
//! shared, noisy machine where ops/s is not.

use std::time::Instant;

/// The node processes to account, and the kernel's clock tick.
#[derive(Debug, Clone)]
pub struct NodeCpu {
    pub pids: Vec<u32>,
    /// Clock ticks per second (`getconf CLK_TCK`; 100 if that cannot be read,
    /// which is what Linux uses on every common architecture).
    tck: u64,
}

/// One process's counters at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcTimes {
    /// utime + stime, in clock ticks (all threads of the process).
    pub ticks: u64,
    /// Start time since boot, in clock ticks: tells a restarted process (a
    /// reused pid) from the one sampled before.
    pub start: u64,
}

/// All processes at one instant.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    procs: Vec<ProcTimes>,
}

/// The figures of one measured window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Figures {
    /// CPU time of all node processes in the window, µs.
    pub cpu_us: f64,
    /// Wall time of the window, s.
    pub wall_s: f64,
    /// Operations completed in the window.
    pub ops: u64,
    /// `cpu_us / ops` (`None` when no operation completed).
    pub us_per_op: Option<f64>,
    /// CPU seconds per wall second: how many cores the nodes kept busy.
    pub cores: f64,
}

/// What a run reports: the pids, and the figures or why there are none.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub pids: Vec<u32>,
    pub result: Result<Figures, String>,
}

/// Parses a pid list: separated by commas and/or whitespace (so both
/// `1,2,3` and the output of `bench/cluster3.sh pids`, `1 2 3 `, work).
/// An empty list is `Ok(vec![])`.
pub fn parse_pids(s: &str) -> Result<Vec<u32>, String> {
    let mut out = Vec::new();
    for tok in s.split(|c: char| c == ',' || c.is_whitespace()) {
        if tok.is_empty() {
            continue;
        }
        let pid: u32 = tok
            .parse()
            .map_err(|_| format!("node pid {tok:?} is not a process id"))?;
        if pid == 0 {
            return Err("node pid 0 is not a process id".into());
        }
        if !out.contains(&pid) {
            out.push(pid);
        }
    }
    Ok(out)
}

/// utime + stime and starttime from the text of `/proc/<pid>/stat`.
///
/// Field 2, the command name, is in parentheses and may itself contain
/// spaces and `)`, so the fields are counted from the *last* `)`: after it
/// come field 3 (state) onwards, which puts utime (14) at index 11, stime
/// (15) at 12 and starttime (22) at 19.
pub fn parse_stat(text: &str) -> Option<ProcTimes> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i)?.parse::<u64>().ok();
    Some(ProcTimes {
        ticks: num(11)?.checked_add(num(12)?)?,
        start: num(19)?,
    })
}

/// The figures of a window from its two samples, or why there are none:
/// a process that disappeared or was replaced (its start time changed)
/// makes the sum meaningless, so there is no figure rather than a wrong one.
pub fn figures(
    pids: &[u32],
    tck: u64,
    start: &Sample,
    end: &Sample,
    ops: u64,
) -> Result<Figures, String> {
    let mut ticks = 0u64;
    for ((pid, a), b) in pids.iter().zip(&start.procs).zip(&end.procs) {
        if a.start != b.start {
            return Err(format!("node pid {pid} was restarted during the run"));
        }
        ticks += b.ticks.saturating_sub(a.ticks);
    }
    let cpu_us = ticks as f64 * 1e6 / tck.max(1) as f64;
    let wall_s = end.at.saturating_duration_since(start.at).as_secs_f64();
    Ok(Figures {
        cpu_us,
        wall_s,
        ops,
        us_per_op: (ops > 0).then(|| cpu_us / ops as f64),
        cores: if wall_s > 0.0 {
            cpu_us / 1e6 / wall_s
        } else {
            0.0
        },
    })
}

fn read_clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

impl NodeCpu {
    /// For these pids; checks that each one can be read now.
    pub fn new(pids: Vec<u32>) -> Result<NodeCpu, String> {
        let n = NodeCpu {
            pids,
            tck: read_clk_tck(),
        };
        n.sample()?;
        Ok(n)
    }

    /// From `--node-pids`, else `CHARGEBENCH_NODE_PIDS`; `None` when neither
    /// names a pid.
    pub fn from_option(flag: Option<&str>) -> Result<Option<NodeCpu>, String> {
        let env = std::env::var("CHARGEBENCH_NODE_PIDS").ok();
        let Some(list) = flag.or(env.as_deref()) else {
            return Ok(None);
        };
        let pids = parse_pids(list)?;
        if pids.is_empty() {
            eprintln!("warning: the node pid list is empty; node CPU is not measured");
            return Ok(None);
        }
        NodeCpu::new(pids).map(Some)
    }

    /// Reads every process's counters now.
    pub fn sample(&self) -> Result<Sample, String> {
        let at = Instant::now();
        let mut procs = Vec::with_capacity(self.pids.len());
        for pid in &self.pids {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    format!("no process {pid}")
                } else {
                    format!("/proc/{pid}/stat: {e}")
                }
            })?;
            procs.push(
                parse_stat(&text).ok_or_else(|| format!("/proc/{pid}/stat: unexpected format"))?,
            );
        }
        Ok(Sample { at, procs })
    }

    /// The report of a window that started with `start` (its error if that
    /// sample failed) and ends now, with `ops` operations in it. Warns on
    /// stderr when there is no figure.
    pub fn finish(&self, start: Result<Sample, String>, ops: u64) -> Report {
        let result = start
            .map_err(|e| format!("{e} at the start of the measured window"))
            .and_then(|s| {
                let end = self.sample().map_err(|e| {
                    format!("{e} at the end of the measured window: a node exited during the run")
                })?;
                Ok((s, end))
            })
            .and_then(|(s, e)| figures(&self.pids, self.tck, &s, &e, ops));
        if let Err(w) = &result {
            eprintln!("warning: node CPU not reported: {w}");
        }
        Report {
            pids: self.pids.clone(),
            result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stat_is_parsed_from_the_last_paren() {
        let line = "6422 (cat) R 6419 6419 3489 0 -1 4194304 103 0 0 0 17 4 0 0 20 0 1 0 13911 \
                    3133440 417 18446744073709551615 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcTimes {
                ticks: 21,
                start: 13911
            })
        );
        // A command name with spaces and parentheses of its own.
        let odd = "77 (a) b (c) d) S 1 77 77 0 -1 4194560 5 0 0 0 250 50 0 0 20 0 9 0 424242 \
                   1000 10 18446744073709551615";
        assert_eq!(
            parse_stat(odd),
            Some(ProcTimes {
                ticks: 300,
                start: 424242
            })
        );
        assert_eq!(parse_stat("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("no parens at all"), None);
    }

    #[test]
    fn our_own_stat_parses() {
        let text = std::fs::read_to_string("/proc/self/stat").unwrap();
        let t = parse_stat(&text).expect("parses");
        assert!(t.start > 0);
        let n = NodeCpu::new(vec![std::process::id()]).unwrap();
        assert!(n.tck > 0);
        let s = n.sample().unwrap();
        // Burn a little CPU: the delta is not negative and the report exists.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let r = n.finish(Ok(s), 10);
        let f = r.result.unwrap();
        assert!(f.cpu_us >= 0.0 && f.wall_s > 0.0);
    }

    #[test]
    fn pid_lists() {
        assert_eq!(parse_pids("1,2,3"), Ok(vec![1, 2, 3]));
        assert_eq!(parse_pids("4 5 6 "), Ok(vec![4, 5, 6]));
        assert_eq!(parse_pids(" 7, 8\n9,,7"), Ok(vec![7, 8, 9]));
        assert_eq!(parse_pids(""), Ok(vec![]));
        assert!(parse_pids("12,abc").is_err());
        assert!(parse_pids("0").is_err());
        assert!(parse_pids("-3").is_err());
    }

    fn sample(at: Instant, procs: &[(u64, u64)]) -> Sample {
        Sample {
            at,
            procs: procs
                .iter()
                .map(|&(ticks, start)| ProcTimes { ticks, start })
                .collect(),
        }
    }

    #[test]
    fn figures_sum_over_processes() {
        let t0 = Instant::now();
        let a = sample(t0, &[(1000, 5), (2000, 6), (0, 7)]);
        let b = sample(
            t0 + Duration::from_secs(2),
            &[(1100, 5), (2150, 6), (50, 7)],
        );
        // 300 ticks at 100/s = 3 s of CPU in 2 s, over 10,000 ops.
        let f = figures(&[1, 2, 3], 100, &a, &b, 10_000).unwrap();
        assert!((f.cpu_us - 3e6).abs() < 1e-6);
        assert!((f.us_per_op.unwrap() - 300.0).abs() < 1e-9);
        assert!((f.cores - 1.5).abs() < 1e-9);
        assert_eq!(f.ops, 10_000);
        // No ops: no per-op figure, cores still known.
        let f = figures(&[1, 2, 3], 100, &a, &b, 0).unwrap();
        assert_eq!(f.us_per_op, None);
        // A replaced process (same pid, other start time): no figure.
        let c = sample(t0 + Duration::from_secs(2), &[(1100, 5), (3, 99), (50, 7)]);
        let e = figures(&[1, 2, 3], 100, &a, &c, 10_000).unwrap_err();
        assert!(e.contains("pid 2"), "{e}");
    }

    #[test]
    fn a_vanished_pid_gives_no_figure() {
        // A child that exits between the two samples.
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        let n = NodeCpu::new(vec![std::process::id(), pid]).unwrap();
        let s = n.sample();
        assert!(s.is_ok());
        child.kill().unwrap();
        child.wait().unwrap();
        let r = n.finish(s, 100);
        assert_eq!(r.pids, vec![std::process::id(), pid]);
        let e = r.result.unwrap_err();
        assert!(e.contains(&format!("no process {pid} at the end")), "{e}");
        // And one that is gone before the start.
        let e = NodeCpu::new(vec![pid]).unwrap_err();
        assert_eq!(e, format!("no process {pid}"));
    }
}
