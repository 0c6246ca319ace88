//! Pacing of snapshot bytes: one token bucket per node.
use super::*;

/// Token bucket pacing snapshot bytes. A sender reserves before it sends:
/// the balance may go negative, and the debt is the reserving sender's wait,
/// so concurrent snapshots share the rate in reservation order.
#[derive(Debug)]
pub(super) struct TokenBucket {
    pub(super) state: Mutex<BucketState>,
}

#[derive(Debug)]
pub(super) struct BucketState {
    pub(super) rate_per_s: u64,
    pub(super) burst: u64,
    pub(super) tokens: f64,
    pub(super) at: Instant,
}

impl TokenBucket {
    pub(super) fn new(rate_per_s: u64, burst: u64, now: Instant) -> Self {
        TokenBucket {
            state: Mutex::new(BucketState {
                rate_per_s,
                burst,
                tokens: burst as f64,
                at: now,
            }),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BucketState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set(&self, rate_per_s: u64, burst: u64) {
        let mut s = self.lock();
        s.rate_per_s = rate_per_s;
        s.burst = burst;
        s.tokens = s.tokens.min(burst as f64);
    }

    /// Takes `n` bytes at `now`; returns how long to wait before sending them.
    pub(super) fn reserve(&self, n: u64, now: Instant) -> Duration {
        let mut s = self.lock();
        if s.rate_per_s == 0 {
            return Duration::ZERO;
        }
        let rate = s.rate_per_s as f64;
        let elapsed = now.saturating_duration_since(s.at).as_secs_f64();
        s.at = s.at.max(now);
        s.tokens = (s.tokens + elapsed * rate).min(s.burst as f64) - n as f64;
        if s.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.tokens / rate)
        }
    }
}
