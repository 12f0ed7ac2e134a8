//! One token bucket, on a clock the caller passes in (so tests control time).
//!
//! The bucket starts full. `size` tokens come back linearly over `refill_time`; the
//! refill is exact: the fraction of a token earned so far is kept (in token-nanoseconds)
//! and counted towards the next one. `one_time_burst` tokens are spent first and never
//! come back.
//!
//! A request larger than `size` would never fit. It passes once the bucket is full and
//! leaves it in debt (a negative balance) that the refill pays back before anything
//! else passes: the long-run rate stays `size` per `refill_time` whatever the request
//! sizes.

use std::time::{Duration, Instant};

use super::TokenBucketConfig;

const NS_PER_MS: u128 = 1_000_000;

/// A limited bucket (an unlimited one is not represented: it never refuses).
#[derive(Debug, Clone)]
pub(super) struct TokenBucket {
    size: u64,
    refill_ns: u128,
    /// Tokens available now; negative while a request larger than `size` is paid back.
    budget: i128,
    /// What is left of the one-time burst.
    burst: u64,
    /// Refill earned since `last` but not yet a whole token, in token-nanoseconds
    /// (always below `refill_ns`).
    partial: u128,
    last: Instant,
}

impl TokenBucket {
    /// The bucket `cfg` describes, full at `now`; `None` when it does not limit.
    pub(super) fn new(cfg: &TokenBucketConfig, now: Instant) -> Option<Self> {
        if cfg.size == 0 || cfg.refill_time == 0 {
            return None;
        }
        Some(Self {
            size: cfg.size,
            refill_ns: u128::from(cfg.refill_time) * NS_PER_MS,
            budget: i128::from(cfg.size),
            burst: cfg.one_time_burst.unwrap_or(0),
            partial: 0,
            last: now,
        })
    }

    /// Adds what was earned between the last refill and `now` (an earlier `now` adds
    /// nothing).
    fn refill(&mut self, now: Instant) {
        let size = i128::from(self.size);
        if self.budget >= size {
            self.last = now.max(self.last);
            self.partial = 0;
            return;
        }
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        self.last = now.max(self.last);
        let earned = elapsed
            .saturating_mul(u128::from(self.size))
            .saturating_add(self.partial);
        let tokens = earned / self.refill_ns;
        self.partial = earned % self.refill_ns;
        // tokens may be huge after a long idle time: clamp before converting.
        let room = (size - self.budget) as u128;
        if tokens >= room {
            self.budget = size;
            self.partial = 0;
        } else {
            self.budget += tokens as i128;
        }
    }

    /// Tokens `n` must find in the refilled budget after the burst is used.
    fn needed(&self, n: u64) -> i128 {
        i128::from(n.saturating_sub(self.burst).min(self.size))
    }

    /// Refills to `now` and answers whether `n` tokens may be taken.
    pub(super) fn can_take(&mut self, n: u64, now: Instant) -> bool {
        self.refill(now);
        n <= self.burst || self.budget >= self.needed(n)
    }

    /// Takes `n` tokens (after [`TokenBucket::can_take`] said yes): the burst first,
    /// then the budget, which may go into debt.
    pub(super) fn take(&mut self, n: u64) {
        let from_burst = n.min(self.burst);
        self.burst -= from_burst;
        self.budget -= i128::from(n - from_burst);
    }

    /// How long after the last refill until `n` tokens may be taken (at least 1 ns).
    pub(super) fn wait_for(&self, n: u64) -> Duration {
        let deficit = self.needed(n) - self.budget;
        if n <= self.burst || deficit <= 0 {
            return Duration::from_nanos(1);
        }
        // Smallest t with t * size + partial >= deficit * refill_ns.
        let want = (deficit as u128).saturating_mul(self.refill_ns);
        let left = want.saturating_sub(self.partial);
        let ns = left.div_ceil(u128::from(self.size)).max(1);
        Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
    }

    #[cfg(test)]
    pub(super) fn budget(&self) -> i128 {
        self.budget
    }

    #[cfg(test)]
    pub(super) fn burst(&self) -> u64 {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(size: u64, refill_ms: u64, burst: Option<u64>, t0: Instant) -> TokenBucket {
        let cfg = TokenBucketConfig {
            size,
            one_time_burst: burst,
            refill_time: refill_ms,
        };
        TokenBucket::new(&cfg, t0).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn zero_size_or_zero_refill_is_unlimited() {
        let now = Instant::now();
        let cfg = |size, refill_time| TokenBucketConfig {
            size,
            one_time_burst: Some(5),
            refill_time,
        };
        assert!(TokenBucket::new(&cfg(0, 100), now).is_none());
        assert!(TokenBucket::new(&cfg(100, 0), now).is_none());
    }

    #[test]
    fn starts_full_and_refuses_when_empty() {
        let t0 = Instant::now();
        let mut b = bucket(100, 1000, None, t0);
        assert!(b.can_take(60, t0));
        b.take(60);
        assert!(b.can_take(40, t0));
        b.take(40);
        assert!(!b.can_take(1, t0));
    }

    #[test]
    fn refills_linearly() {
        let t0 = Instant::now();
        let mut b = bucket(100, 1000, None, t0);
        b.take(100);
        // 10 ms of a 1000 ms refill for 100 tokens: one token.
        assert!(!b.can_take(2, t0 + ms(10)));
        assert!(b.can_take(1, t0 + ms(10)));
        assert!(b.can_take(50, t0 + ms(500)));
        assert!(!b.can_take(51, t0 + ms(500)));
    }

    #[test]
    fn refill_stops_at_size() {
        let t0 = Instant::now();
        let mut b = bucket(100, 1000, None, t0);
        b.take(50);
        b.can_take(0, t0 + Duration::from_secs(3600));
        assert_eq!(b.budget(), 100);
    }

    #[test]
    fn fractions_of_a_token_are_not_lost() {
        let t0 = Instant::now();
        // 3 tokens per 10 ms: each ms earns 0.3 token.
        let mut b = bucket(3, 10, None, t0);
        b.take(3);
        let mut got = 0;
        for i in 1..=10 {
            if b.can_take(1, t0 + ms(i)) {
                b.take(1);
                got += 1;
            }
        }
        assert_eq!(got, 3, "10 steps of 0.3 tokens make 3 tokens");
    }

    #[test]
    fn burst_is_used_first_and_never_refilled() {
        let t0 = Instant::now();
        let mut b = bucket(10, 100, Some(25), t0);
        assert!(b.can_take(20, t0));
        b.take(20);
        assert_eq!((b.burst(), b.budget()), (5, 10));
        assert!(b.can_take(15, t0));
        b.take(15);
        assert_eq!((b.burst(), b.budget()), (0, 0));
        b.can_take(0, t0 + Duration::from_secs(10));
        assert_eq!((b.burst(), b.budget()), (0, 10));
    }

    #[test]
    fn request_larger_than_size_passes_when_full_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = bucket(100, 1000, None, t0);
        assert!(b.can_take(250, t0));
        b.take(250);
        assert_eq!(b.budget(), -150);
        // The debt is paid back first: 1.5 s to get to 0, then 1 s per 100.
        assert!(!b.can_take(1, t0 + ms(1500)));
        assert!(b.can_take(1, t0 + ms(1510)));
        assert_eq!(b.wait_for(100), ms(990));
    }

    #[test]
    fn oversized_request_waits_for_a_full_bucket() {
        let t0 = Instant::now();
        let mut b = bucket(100, 1000, None, t0);
        b.take(1);
        assert!(!b.can_take(500, t0));
        assert_eq!(b.wait_for(500), ms(10));
        assert!(b.can_take(500, t0 + ms(10)));
    }

    #[test]
    fn wait_for_is_exact_and_rounds_up() {
        let t0 = Instant::now();
        let mut b = bucket(3, 10, None, t0);
        b.take(3);
        // One token takes 10/3 ms: rounded up to the next nanosecond.
        assert_eq!(b.wait_for(1), Duration::from_nanos(3_333_334));
        assert!(!b.can_take(1, t0 + Duration::from_nanos(3_333_333)));
        assert!(b.can_take(1, t0 + Duration::from_nanos(3_333_334)));
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let t0 = Instant::now() + ms(100);
        let mut b = bucket(10, 100, None, t0);
        b.take(10);
        assert!(!b.can_take(1, t0 - ms(50)));
        assert!(b.can_take(1, t0 + ms(10)));
    }
}
