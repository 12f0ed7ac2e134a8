use super::*;

fn bucket(size: u64, refill_time: u64) -> Option<TokenBucketConfig> {
    Some(TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time,
    })
}

fn limiter(ops: Option<TokenBucketConfig>, bandwidth: Option<TokenBucketConfig>) -> RateLimiter {
    RateLimiter::new(&RateLimiterConfig { bandwidth, ops }).unwrap()
}

/// Time left on the limiter's timer (zero when disarmed).
fn timer_left(l: &RateLimiter) -> Duration {
    // SAFETY: all-zero is a valid itimerspec.
    let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: timerfd_gettime on the limiter's open timerfd writes only `spec`.
    let r = unsafe { libc::timerfd_gettime(l.timer_fd().unwrap(), &mut spec) };
    assert_eq!(r, 0);
    Duration::new(spec.it_value.tv_sec as u64, spec.it_value.tv_nsec as u32)
}

/// Waits up to `ms` for the timerfd to be readable.
fn fires_within(l: &RateLimiter, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: l.timer_fd().unwrap(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd that lives for the call.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

#[test]
fn unlimited_passes_everything_and_never_arms() {
    let mut l = limiter(None, bucket(0, 100));
    assert!(!l.is_limited());
    for _ in 0..1000 {
        assert!(l.consume(1, u64::MAX));
    }
    assert!(!l.is_blocked());
    assert_eq!(timer_left(&l), Duration::ZERO);
}

#[test]
fn timerfd_is_non_blocking() {
    let l = limiter(None, None);
    // SAFETY: F_GETFL on the limiter's open timerfd.
    let flags = unsafe { libc::fcntl(l.timer_fd().unwrap(), libc::F_GETFL) };
    assert_ne!(flags & libc::O_NONBLOCK, 0);
}

#[test]
fn a_refusal_takes_from_neither_bucket() {
    let t0 = Instant::now();
    let mut l = limiter(bucket(2, 1000), bucket(100, 1000));
    assert!(l.consume_at(1, 60, t0));
    assert!(!l.consume_at(1, 60, t0), "only 40 bytes left");
    l.blocked = false;
    // The refused request took no op: one op is left, and only one.
    assert!(l.consume_at(1, 40, t0));
    l.blocked = false;
    assert!(!l.consume_at(1, 0, t0));
}

#[test]
fn refusal_blocks_and_arms_the_timer_for_the_slower_bucket() {
    let t0 = Instant::now();
    // Ops: 1 per 10 ms. Bytes: 1000 per 1000 ms.
    let mut l = limiter(bucket(1, 10), bucket(1000, 1000));
    assert!(l.consume_at(1, 1000, t0));
    assert!(!l.consume_at(1, 500, t0));
    assert!(l.is_blocked());
    let left = timer_left(&l);
    assert!(
        left > Duration::from_millis(400) && left <= Duration::from_millis(500),
        "{left:?}"
    );
}

#[test]
fn blocked_refuses_until_the_timer() {
    let t0 = Instant::now();
    let mut l = limiter(bucket(1, 10), None);
    assert!(l.consume_at(1, 0, t0));
    assert!(!l.consume_at(1, 0, t0));
    // The tokens are back, but the device has not seen the timer yet.
    assert!(!l.consume_at(1, 0, t0 + Duration::from_secs(1)));
    l.on_timer();
    assert!(!l.is_blocked());
    assert!(l.consume_at(1, 0, t0 + Duration::from_secs(1)));
}

#[test]
fn the_timer_fires_when_tokens_are_back() {
    let mut l = limiter(bucket(1, 20), None);
    assert!(l.consume(1, 0));
    assert!(!l.consume(1, 0));
    assert!(!fires_within(&l, 5), "fired before the refill");
    assert!(fires_within(&l, 1000));
    l.on_timer();
    assert!(l.consume(1, 0));
}

#[test]
fn on_timer_without_expiry_does_not_block() {
    let mut l = limiter(bucket(1, 1000), None);
    l.on_timer();
    assert!(!l.is_blocked());
}

#[test]
fn update_keeps_the_timerfd_and_refills() {
    let t0 = Instant::now();
    let mut l = limiter(bucket(1, 1000), None);
    let fd = l.timer_fd();
    assert!(l.consume_at(1, 0, t0));
    l.update(&RateLimiterConfig {
        bandwidth: None,
        ops: bucket(5, 1000),
    });
    assert_eq!(l.timer_fd(), fd);
    for _ in 0..5 {
        assert!(l.consume(1, 0));
    }
    assert!(!l.consume(1, 0));
}

#[test]
fn update_wakes_a_blocked_limiter() {
    let mut l = limiter(bucket(1, 60_000), None);
    assert!(l.consume(1, 0));
    assert!(!l.consume(1, 0));
    assert!(!fires_within(&l, 0));
    l.update(&RateLimiterConfig::default());
    assert!(fires_within(&l, 1000), "the timer fires at once");
    l.on_timer();
    assert!(!l.is_blocked());
    assert!(l.consume(1, 1 << 40));
}

#[test]
fn update_of_an_unblocked_limiter_does_not_arm() {
    let mut l = limiter(None, None);
    l.update(&RateLimiterConfig {
        bandwidth: bucket(10, 10),
        ops: None,
    });
    assert!(l.is_limited());
    assert_eq!(timer_left(&l), Duration::ZERO);
}
