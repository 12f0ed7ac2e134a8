//! Token-bucket rate limiting for virtio devices (Firecracker's `rate_limiter` objects).
//!
//! A [`RateLimiter`] has up to two buckets: `ops` (one token per request or frame) and
//! `bandwidth` (one token per byte). A request passes only when both buckets can pay
//! for it; then both pay, else neither does. The bucket rules are in [`bucket`]'s
//! documentation: a bucket starts full, refills linearly, spends its one-time burst
//! first, and lets a request larger than its size through once full, going into debt.
//!
//! When a request is refused the limiter arms its timerfd for the moment both buckets
//! can pay, and is *blocked* until the device sees that timerfd fire and calls
//! [`RateLimiter::on_timer`]: a device registers [`RateLimiter::timer_fd`] with its
//! event loop (a backend fd), stops its queue pass on a refusal and retries the same
//! request after the timer. Nothing waits or polls.
//!
//! Every limiter owns its timerfd, even an unlimited one, so a post-boot
//! [`RateLimiter::update`] finds it already registered; an unlimited limiter costs one
//! branch per request.

mod bucket;

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vmm_sys_util::timerfd::TimerFd;

use bucket::TokenBucket;

/// One token bucket as Firecracker's API describes it: `size` tokens, refilled from
/// empty to full in `refill_time` milliseconds, plus an initial `one_time_burst` that is
/// used first and never refilled. A size or refill time of 0 means "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Bucket size in tokens (bytes or operations).
    pub size: u64,
    /// Extra tokens available once, at the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill the bucket from empty to full.
    pub refill_time: u64,
}

/// A device's limits: bytes (`bandwidth`) and requests or frames (`ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes per refill period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations per refill period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

/// How soon the timer fires after an [`RateLimiter::update`] of a blocked limiter.
const WAKE_SOON: Duration = Duration::from_micros(1);

/// A device's rate limiter: its buckets, its timerfd and whether it is blocked.
#[derive(Debug)]
pub struct RateLimiter {
    ops: Option<TokenBucket>,
    bandwidth: Option<TokenBucket>,
    timer: TimerFd,
    blocked: bool,
}

impl RateLimiter {
    /// A limiter with the limits of `cfg` (buckets full) and a non-blocking timerfd.
    pub fn new(cfg: &RateLimiterConfig) -> std::io::Result<Self> {
        let timer = TimerFd::new()?;
        let fd = timer.as_raw_fd();
        // SAFETY: fcntl F_GETFL / F_SETFL on the timerfd we just created; no memory is
        // passed.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        let now = Instant::now();
        Ok(Self {
            ops: cfg.ops.as_ref().and_then(|b| TokenBucket::new(b, now)),
            bandwidth: cfg
                .bandwidth
                .as_ref()
                .and_then(|b| TokenBucket::new(b, now)),
            timer,
            blocked: false,
        })
    }

    /// Whether any bucket limits.
    pub fn is_limited(&self) -> bool {
        self.ops.is_some() || self.bandwidth.is_some()
    }

    /// Takes `ops` operation tokens and `bytes` bandwidth tokens, or none of them.
    ///
    /// Returns false when a bucket cannot pay: the limiter is then blocked (every
    /// further call refuses at once) until [`RateLimiter::on_timer`], and its timer is
    /// armed for when both buckets can pay. If the timer cannot be armed the request
    /// passes (logged): a limiter never stalls a device for good.
    pub fn consume(&mut self, ops: u64, bytes: u64) -> bool {
        if !self.is_limited() {
            return true;
        }
        self.consume_at(ops, bytes, Instant::now())
    }

    fn consume_at(&mut self, ops: u64, bytes: u64, now: Instant) -> bool {
        if self.blocked {
            return false;
        }
        let ops_ok = self.ops.as_mut().is_none_or(|b| b.can_take(ops, now));
        let bytes_ok = self
            .bandwidth
            .as_mut()
            .is_none_or(|b| b.can_take(bytes, now));
        if ops_ok && bytes_ok {
            if let Some(b) = self.ops.as_mut() {
                b.take(ops);
            }
            if let Some(b) = self.bandwidth.as_mut() {
                b.take(bytes);
            }
            return true;
        }
        // Both buckets were refilled to `now` above: wait for the slower one.
        let wait = [(&self.ops, ops), (&self.bandwidth, bytes)]
            .iter()
            .filter_map(|(b, n)| b.as_ref().map(|b| b.wait_for(*n)))
            .max()
            .unwrap_or(WAKE_SOON);
        match self.timer.reset(wait, None) {
            Ok(()) => {
                self.blocked = true;
                false
            }
            Err(e) => {
                log::error!("rate limiter: cannot arm its timer ({e}); not limiting this request");
                true
            }
        }
    }

    /// Whether a refused request waits for the timer.
    pub fn is_blocked(&self) -> bool {
        self.blocked
    }

    /// The timerfd a device watches for readability while it is active.
    pub fn timer_fd(&self) -> Option<RawFd> {
        Some(self.timer.as_raw_fd())
    }

    /// The timerfd fired (or the device was told it did): reads it and unblocks.
    pub fn on_timer(&mut self) {
        // Non-blocking: EAGAIN only means it had not expired (a spurious call).
        if let Err(e) = self.timer.wait() {
            if e.errno() != libc::EAGAIN {
                log::error!("rate limiter: cannot read its timer: {e}");
            }
        }
        self.blocked = false;
    }

    /// Replaces the limits with those of `cfg` (new buckets start full). The timerfd
    /// stays the same; a blocked limiter has its timer fire at once so that the device
    /// retries under the new limits.
    pub fn update(&mut self, cfg: &RateLimiterConfig) {
        let now = Instant::now();
        self.ops = cfg.ops.as_ref().and_then(|b| TokenBucket::new(b, now));
        self.bandwidth = cfg
            .bandwidth
            .as_ref()
            .and_then(|b| TokenBucket::new(b, now));
        if self.blocked {
            if let Err(e) = self.timer.reset(WAKE_SOON, None) {
                log::error!("rate limiter: cannot arm its timer ({e}); unblocked at once");
                self.blocked = false;
            }
        }
    }
}

#[cfg(test)]
mod tests;
