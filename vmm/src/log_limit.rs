//! Rate limiting for log lines: a guest can trigger many of them (a malformed request,
//! a notify of a missing queue), and each must cost the host a bounded amount of output.
//!
//! Every call site (file and line) may log [`SITE_BURST`] lines per [`SITE_WINDOW`];
//! on top, all sites together share a token bucket of [`GLOBAL_BURST`] lines refilled
//! at [`GLOBAL_PER_SEC`] per second. What is dropped is counted; the next line that
//! passes from the same site says how many of its lines were suppressed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Lines one call site may log per window.
pub const SITE_BURST: u32 = 5;
/// The per-site window.
pub const SITE_WINDOW: Duration = Duration::from_secs(10);
/// Lines all sites together may log in a burst.
pub const GLOBAL_BURST: u32 = 50;
/// Lines per second the global bucket refills.
pub const GLOBAL_PER_SEC: u32 = 5;

/// A call site: source file and line.
pub type Site = (&'static str, u32);

#[derive(Debug)]
struct SiteState {
    window_start: Instant,
    in_window: u32,
    suppressed: u64,
}

/// What to do with a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Drop it.
    Drop,
    /// Log it, after saying that this many lines of its site were dropped before it.
    Log {
        /// Lines of this site suppressed since the last one logged.
        suppressed_before: u64,
    },
}

/// Per-site windows plus a global token bucket.
#[derive(Debug)]
pub struct LogLimiter {
    sites: HashMap<Site, SiteState>,
    tokens: u32,
    refilled: Instant,
    suppressed_total: u64,
}

impl LogLimiter {
    /// A limiter with a full global bucket at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            sites: HashMap::new(),
            tokens: GLOBAL_BURST,
            refilled: now,
            suppressed_total: 0,
        }
    }

    /// Lines dropped so far, over all sites.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled);
        let add = elapsed.as_millis() * u128::from(GLOBAL_PER_SEC) / 1000;
        if add > 0 {
            let add = u32::try_from(add).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(add).min(GLOBAL_BURST);
            // Keep the remainder: advance by the time the added tokens stand for.
            self.refilled +=
                Duration::from_millis(u64::from(add) * 1000 / u64::from(GLOBAL_PER_SEC));
            if self.tokens == GLOBAL_BURST {
                self.refilled = now;
            }
        }
    }

    /// Decides about one line from `site` at `now`.
    pub fn check(&mut self, site: Site, now: Instant) -> Verdict {
        self.refill(now);
        let s = self.sites.entry(site).or_insert(SiteState {
            window_start: now,
            in_window: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(s.window_start) >= SITE_WINDOW {
            s.window_start = now;
            s.in_window = 0;
        }
        if s.in_window >= SITE_BURST || self.tokens == 0 {
            s.suppressed += 1;
            self.suppressed_total += 1;
            return Verdict::Drop;
        }
        s.in_window += 1;
        self.tokens -= 1;
        Verdict::Log {
            suppressed_before: std::mem::take(&mut s.suppressed),
        }
    }

    /// Sites with lines suppressed since their last logged line (and clears them), for
    /// a closing summary.
    pub fn take_pending(&mut self) -> u64 {
        self.sites
            .values_mut()
            .map(|s| std::mem::take(&mut s.suppressed))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Site = ("a.rs", 1);
    const B: Site = ("b.rs", 2);

    fn logged(v: Verdict) -> bool {
        matches!(v, Verdict::Log { .. })
    }

    #[test]
    fn a_site_logs_its_burst_then_drops() {
        let t = Instant::now();
        let mut l = LogLimiter::new(t);
        for _ in 0..SITE_BURST {
            assert!(logged(l.check(A, t)));
        }
        assert_eq!(l.check(A, t), Verdict::Drop);
        assert_eq!(l.suppressed_total(), 1);
    }

    #[test]
    fn other_sites_are_not_starved_by_one() {
        let t = Instant::now();
        let mut l = LogLimiter::new(t);
        for _ in 0..1000 {
            l.check(A, t);
        }
        assert!(logged(l.check(B, t)));
    }

    #[test]
    fn next_window_reports_what_was_suppressed() {
        let t = Instant::now();
        let mut l = LogLimiter::new(t);
        for _ in 0..SITE_BURST + 3 {
            l.check(A, t);
        }
        assert_eq!(
            l.check(A, t + SITE_WINDOW),
            Verdict::Log {
                suppressed_before: 3
            }
        );
    }

    #[test]
    fn global_bucket_caps_all_sites_together() {
        let t = Instant::now();
        let mut l = LogLimiter::new(t);
        let passed = (0..1000u32)
            .filter(|&i| logged(l.check(("many.rs", i), t)))
            .count();
        assert_eq!(passed, GLOBAL_BURST as usize);
        // One second later the bucket has refilled GLOBAL_PER_SEC lines.
        let t1 = t + Duration::from_secs(1);
        let passed = (1000..2000u32)
            .filter(|&i| logged(l.check(("many.rs", i), t1)))
            .count();
        assert_eq!(passed, GLOBAL_PER_SEC as usize);
    }

    #[test]
    fn output_over_a_minute_of_flooding_is_bounded() {
        let t = Instant::now();
        let mut l = LogLimiter::new(t);
        let mut lines = 0u64;
        for ms in 0..60_000u64 {
            let now = t + Duration::from_millis(ms);
            for site in 0..20u32 {
                lines += u64::from(logged(l.check(("flood.rs", site), now)));
            }
        }
        assert!(
            lines <= u64::from(GLOBAL_BURST + 60 * GLOBAL_PER_SEC),
            "{lines}"
        );
        assert!(l.take_pending() > 0);
    }
}
