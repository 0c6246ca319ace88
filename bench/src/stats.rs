//! Latency recording (HdrHistogram, µs), per-second timeline, error counts,
//! and the open-loop schedule with coordinated-omission correction.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Highest latency the histograms track: 1 hour in µs (larger values saturate).
pub const MAX_US: u64 = 3_600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Whole microseconds, at least 1.
pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_US)
}

/// The open-loop send schedule: operation `i` is due at `t0 + i / rate`.
/// Latency is measured from that due time, not from when it was really sent,
/// so a stalled server is charged for the requests the generator could not
/// send meanwhile (coordinated omission, as wrk2 and HdrHistogram describe it).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub t0: Instant,
    pub interval: Duration,
}

impl Schedule {
    /// `rate` events per second (> 0).
    pub fn new(t0: Instant, rate: f64) -> Schedule {
        let ns = (1e9 / rate.max(1e-6)).max(1.0);
        Schedule {
            t0,
            interval: Duration::from_nanos(ns as u64),
        }
    }

    /// When event `i` (0-based) is due.
    pub fn due(&self, i: u64) -> Instant {
        self.t0 + self.interval.saturating_mul(i.min(u32::MAX as u64) as u32)
    }
}

/// Latency corrected for coordinated omission: from the intended send time
/// when the op went out late, from the real send when it went out early (the
/// generator wakes up to 1 ms before the due time because tokio timers tick in
/// milliseconds; it is not charged for that jitter either way).
pub fn corrected_latency(intended: Instant, sent: Instant, done: Instant) -> Duration {
    done.saturating_duration_since(intended.min(sent))
}

/// How early the open-loop generator may wake for a due time.
pub const EARLY_WAKE: Duration = Duration::from_millis(1);

/// A last timeline interval shorter than this is folded into the one before
/// it: over a few milliseconds (the in-flight ops that finish after the
/// stop) a rate says nothing.
pub const MIN_LAST_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Interval {
    ops: u64,
    errors: BTreeMap<String, u64>,
    hist: Option<Histogram<u64>>,
    raw: Option<Histogram<u64>>,
}

/// One point of the per-second timeline: the interval that ends `t_s`
/// seconds after the start and lasts `dt_s` seconds (about 1, except the
/// last one, which ends when the load does).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub t_s: f64,
    pub dt_s: f64,
    /// Operations completed in the interval.
    pub ops: u64,
    /// `ops / dt_s`: the rate over the interval's real length, so that a
    /// short last interval is not drawn as a dip.
    pub ops_per_sec: f64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// A thread-safe recorder, sharded to keep lock contention low. Intervals are
/// drained by [`Recorder::flush`] (once a second) into the totals.
pub struct Recorder {
    shards: Vec<Mutex<Interval>>,
    ops: AtomicU64,
    max_ops: u64,
    pub stop: AtomicBool,
    totals: Mutex<Totals>,
}

/// Everything recorded so far.
pub struct Totals {
    pub start: Instant,
    pub ops: u64,
    pub errors: BTreeMap<String, u64>,
    /// Latency per op (corrected for coordinated omission in open loop).
    pub hist: Histogram<u64>,
    /// Latency from the actual send (equal to `hist` in closed loop).
    pub raw: Histogram<u64>,
    pub timeline: Vec<Point>,
    last_flush: Instant,
    /// Latencies of the last timeline point (to fold a short last interval in).
    last_hist: Option<Histogram<u64>>,
}

impl Point {
    fn new(t_s: f64, dt_s: f64, ops: u64, errors: u64, h: &Histogram<u64>) -> Point {
        let q = |q: f64| if ops > 0 { h.value_at_quantile(q) } else { 0 };
        Point {
            t_s,
            dt_s,
            ops,
            ops_per_sec: if dt_s > 0.0 { ops as f64 / dt_s } else { 0.0 },
            errors,
            p50_us: q(0.5),
            p99_us: q(0.99),
            max_us: h.max(),
        }
    }
}

impl Recorder {
    /// `max_ops`: stop (set `stop`) once this many ops completed; 0 = no limit.
    pub fn new(max_ops: u64) -> Recorder {
        let now = Instant::now();
        Recorder {
            shards: (0..32).map(|_| Mutex::new(Interval::default())).collect(),
            ops: AtomicU64::new(0),
            max_ops,
            stop: AtomicBool::new(false),
            totals: Mutex::new(Totals {
                start: now,
                ops: 0,
                errors: BTreeMap::new(),
                hist: new_hist(),
                raw: new_hist(),
                timeline: Vec::new(),
                last_flush: now,
                last_hist: None,
            }),
        }
    }

    /// Restarts the clock (call right before the load starts).
    pub fn start_now(&self) {
        self.start_at(Instant::now());
    }

    fn start_at(&self, at: Instant) {
        let mut t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        t.start = at;
        t.last_flush = at;
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Records one completed op: `lat` (corrected), `raw` (from the actual
    /// send), and its error name if it was not OK.
    pub fn record(&self, key: usize, lat: Duration, raw: Duration, error: Option<&str>) {
        {
            let mut s = self.shards[key % self.shards.len()]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            s.ops += 1;
            s.hist
                .get_or_insert_with(new_hist)
                .saturating_record(micros(lat));
            s.raw
                .get_or_insert_with(new_hist)
                .saturating_record(micros(raw));
            if let Some(e) = error {
                *s.errors.entry(e.to_string()).or_default() += 1;
            }
        }
        let n = self.ops.fetch_add(1, Ordering::Relaxed) + 1;
        if self.max_ops > 0 && n >= self.max_ops {
            self.stop.store(true, Ordering::Relaxed);
        }
    }

    /// Drains the shards into the totals and appends a timeline point.
    /// Returns that point.
    pub fn flush(&self) -> Point {
        self.flush_at(Instant::now(), false)
    }

    /// [`Recorder::flush`] at `now`; `last`: the final interval, folded into
    /// the previous point if shorter than [`MIN_LAST_INTERVAL`].
    fn flush_at(&self, now: Instant, last: bool) -> Point {
        let mut ih = new_hist();
        let mut iraw = new_hist();
        let mut ops = 0;
        let mut errs: BTreeMap<String, u64> = BTreeMap::new();
        for s in &self.shards {
            let taken = std::mem::take(&mut *s.lock().unwrap_or_else(|e| e.into_inner()));
            ops += taken.ops;
            if let Some(h) = taken.hist {
                let _ = ih.add(&h);
            }
            if let Some(h) = taken.raw {
                let _ = iraw.add(&h);
            }
            for (k, v) in taken.errors {
                *errs.entry(k).or_default() += v;
            }
        }
        let mut t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let now = now.max(t.last_flush);
        let errors: u64 = errs.values().sum();
        t.ops += ops;
        for (k, v) in errs {
            *t.errors.entry(k).or_default() += v;
        }
        let _ = t.hist.add(&ih);
        let _ = t.raw.add(&iraw);
        let t_s = now.duration_since(t.start).as_secs_f64();
        let dt = now.duration_since(t.last_flush);
        let fold = last && dt < MIN_LAST_INTERVAL && !t.timeline.is_empty();
        let p = match (fold, t.timeline.pop(), t.last_hist.take()) {
            (true, Some(prev), Some(mut h)) => {
                let _ = h.add(&ih);
                let p = Point::new(
                    t_s,
                    prev.dt_s + dt.as_secs_f64(),
                    prev.ops + ops,
                    prev.errors + errors,
                    &h,
                );
                t.last_hist = Some(h);
                p
            }
            (_, prev, _) => {
                t.timeline.extend(prev);
                let p = Point::new(t_s, dt.as_secs_f64(), ops, errors, &ih);
                t.last_hist = Some(ih);
                p
            }
        };
        t.last_flush = now;
        t.timeline.push(p.clone());
        p
    }

    /// Final flush; returns the totals and the elapsed time since start.
    pub fn finish(&self) -> (Totals, Duration) {
        self.finish_at(Instant::now())
    }

    fn finish_at(&self, now: Instant) -> (Totals, Duration) {
        self.flush_at(now, true);
        let t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = t.last_flush.duration_since(t.start);
        let out = Totals {
            start: t.start,
            ops: t.ops,
            errors: t.errors.clone(),
            hist: t.hist.clone(),
            raw: t.raw.clone(),
            timeline: t.timeline.clone(),
            last_flush: t.last_flush,
            last_hist: None,
        };
        (out, elapsed)
    }
}

/// The percentiles the report lists.
pub const PERCENTILES: &[f64] = &[
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// Summary of a latency histogram, in µs.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Summary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    Summary {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
        mean: h.mean(),
    }
}

/// (percentile, µs) pairs for the distribution plot.
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    PERCENTILES
        .iter()
        .map(|&p| {
            let v = if p >= 100.0 {
                h.max()
            } else if p <= 0.0 {
                h.min()
            } else {
                h.value_at_quantile(p / 100.0)
            };
            (p, v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0);
        assert_eq!(s.interval, Duration::from_millis(1));
        assert_eq!(s.due(0), t0);
        assert_eq!(s.due(1000), t0 + Duration::from_secs(1));
        let s = Schedule::new(t0, 3.0);
        assert_eq!(s.due(3).duration_since(t0).as_millis(), 999);
    }

    /// A 100 ms stall at 1000 ops/s: the 100 ops due during the stall go out
    /// when it ends and complete 1 ms later. Uncorrected they all look like
    /// 1 ms; corrected, they wait up to 101 ms, and p99 shows it.
    #[test]
    fn coordinated_omission_correction() {
        let t0 = Instant::now();
        let s = Schedule::new(t0, 1000.0);
        let (mut corrected, mut raw) = (new_hist(), new_hist());
        let stall_end = t0 + Duration::from_millis(100);
        for i in 0..1000u64 {
            let due = s.due(i);
            let sent = due.max(stall_end);
            let done = sent + Duration::from_millis(1);
            corrected
                .record(micros(corrected_latency(due, sent, done)))
                .unwrap();
            raw.record(micros(done - sent)).unwrap();
        }
        let (c, r) = (summarize(&corrected), summarize(&raw));
        assert_eq!(r.p99, 1000);
        assert!(r.max < 1002);
        assert!((100_000..=101_100).contains(&c.max), "max {}", c.max);
        // 10% of the ops were delayed; the corrected p99 sits among them.
        assert!(c.p99 > 80_000, "p99 {}", c.p99);
        assert!(c.p50 <= 1001, "p50 {}", c.p50);
        // Sent 0.5 ms early: measured from the real send, not the due time.
        let early = corrected_latency(
            t0 + Duration::from_micros(500),
            t0,
            t0 + Duration::from_millis(1),
        );
        assert_eq!(early, Duration::from_millis(1));
        // Mean of the stalled ones ≈ 50 ms, 1/10 of all: ≈ 6 ms overall.
        assert!((5_500.0..6_600.0).contains(&c.mean), "mean {}", c.mean);
    }

    #[test]
    fn recorder_totals_errors_and_timeline() {
        let r = Recorder::new(5);
        r.start_now();
        for i in 0..4u64 {
            let d = Duration::from_micros(100 * (i + 1));
            r.record(i as usize, d, d, (i == 3).then_some("INSUFFICIENT_BALANCE"));
        }
        assert!(!r.stopped());
        let p = r.flush();
        assert_eq!((p.ops, p.errors), (4, 1));
        assert!((199..=201).contains(&p.p50_us), "{p:?}");
        r.record(
            9,
            Duration::from_millis(5),
            Duration::from_millis(5),
            Some("grpc:UNAVAILABLE"),
        );
        assert!(r.stopped(), "max_ops reached");
        let (t, _) = r.finish();
        assert_eq!(t.ops, 5);
        assert_eq!(t.errors.len(), 2);
        // The last interval lasted microseconds: folded into the first.
        assert_eq!(t.timeline.len(), 1);
        assert_eq!((t.timeline[0].ops, t.timeline[0].errors), (5, 2));
        let s = summarize(&t.hist);
        assert_eq!(s.count, 5);
        assert!((4990..=5010).contains(&s.max));
        let d = distribution(&t.hist);
        assert_eq!(d.first().unwrap().1, 100);
        assert_eq!(d.last().unwrap().0, 100.0);
    }

    fn record_n(r: &Recorder, n: u64) {
        for i in 0..n {
            let d = Duration::from_micros(100 + i % 100);
            r.record(i as usize, d, d, None);
        }
    }

    /// A recorder that has seen two whole seconds of 1000 ops each.
    fn two_steady_seconds() -> (Recorder, Instant) {
        let r = Recorder::new(0);
        let t0 = Instant::now();
        r.start_at(t0);
        record_n(&r, 1000);
        r.flush_at(t0 + Duration::from_secs(1), false);
        record_n(&r, 1000);
        r.flush_at(t0 + Duration::from_secs(2), false);
        (r, t0)
    }

    /// A steady 1000 ops/s for 2.25 s: the last, partial interval (0.25 s,
    /// 250 ops) is a rate of 1000/s, not a dip to 250.
    #[test]
    fn the_last_partial_second_is_a_rate_over_its_length() {
        let (r, t0) = two_steady_seconds();
        record_n(&r, 250);
        let (t, elapsed) = r.finish_at(t0 + Duration::from_millis(2250));
        assert_eq!(elapsed, Duration::from_millis(2250));
        assert_eq!(t.timeline.len(), 3);
        let last = t.timeline.last().unwrap();
        assert_eq!(last.ops, 250);
        assert!((last.dt_s - 0.25).abs() < 1e-9, "{last:?}");
        assert!((last.t_s - 2.25).abs() < 1e-9, "{last:?}");
        for p in &t.timeline {
            assert!((p.ops_per_sec - 1000.0).abs() < 1e-6, "{p:?}");
        }
        assert_eq!(t.timeline.iter().map(|p| p.ops).sum::<u64>(), t.ops);
    }

    /// A last interval of a few ms (the in-flight ops finishing after the
    /// stop) is folded into the one before: no spike, no dip, no op lost.
    #[test]
    fn a_very_short_last_interval_is_folded_in() {
        let (r, t0) = two_steady_seconds();
        let d = Duration::from_millis(50);
        r.record(0, d, d, Some("grpc:UNAVAILABLE"));
        r.record(1, d, d, None);
        let (t, _) = r.finish_at(t0 + Duration::from_millis(2005));
        assert_eq!(t.timeline.len(), 2, "{:?}", t.timeline);
        let last = t.timeline.last().unwrap();
        assert_eq!((last.ops, last.errors), (1002, 1));
        assert!((last.t_s - 2.005).abs() < 1e-9 && (last.dt_s - 1.005).abs() < 1e-9);
        assert!((last.ops_per_sec - 1002.0 / 1.005).abs() < 1e-6, "{last:?}");
        // The folded-in latencies count in the point's percentiles.
        assert!((49_000..=51_000).contains(&last.max_us), "{last:?}");
        assert_eq!(t.timeline.iter().map(|p| p.ops).sum::<u64>(), t.ops);
        // A run shorter than that keeps its only interval.
        let r = Recorder::new(0);
        r.start_at(t0);
        record_n(&r, 10);
        let (t, _) = r.finish_at(t0 + Duration::from_millis(20));
        assert_eq!(t.timeline.len(), 1);
        assert!((t.timeline[0].ops_per_sec - 500.0).abs() < 1e-6);
    }
}
