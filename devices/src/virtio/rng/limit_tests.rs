//! Rate limiting of the entropy device.

use super::tests::{rig_with, Rig, DATA, DATA2};
use super::*;
use crate::rate_limiter::TokenBucketConfig;
use crate::virtio::test_utils::*;

fn limited(ops: Option<(u64, u64)>, bytes: Option<(u64, u64)>) -> Rng {
    let b = |(size, refill_time)| TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time,
    };
    Rng::new(Some(RateLimiterConfig {
        bandwidth: bytes.map(b),
        ops: ops.map(b),
    }))
    .unwrap()
}

impl Rig {
    /// Waits up to `ms` for the limiter's timer, then hands its event to the device.
    fn timer_event(&mut self, ms: i32) -> bool {
        let fd = self.rng.backend_fds()[0];
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd that lives for the call.
        if unsafe { libc::poll(&mut p, 1, ms) } != 1 {
            return false;
        }
        self.rng.process_backend(0, EventSet::IN);
        true
    }
}

#[test]
fn the_limiter_timer_is_a_backend_fd_watched_while_active() {
    let mut r = rig_with(Rng::new(None).unwrap(), 0);
    assert_eq!(r.rng.backend_fds().len(), 1);
    assert_eq!(r.rng.backend_interest(0), EventSet::IN);
    r.rng.reset();
    assert_eq!(r.rng.backend_interest(0), EventSet::empty());
}

#[test]
fn a_throttled_request_stays_on_the_ring() {
    let mut r = rig_with(limited(Some((1, 60_000)), None), 0);
    add_chain(r.vq, 0, &[(DATA, 32, true)]);
    add_chain(r.vq, 1, &[(DATA2, 32, true)]);
    assert!(!r.rng.process_queue(0));
    assert_eq!(used_idx(r.vq), 1);
    assert_eq!(r.rng.active.as_ref().unwrap().queue.next_avail(), 1);
    // A notification while throttled does nothing.
    assert!(!r.rng.process_queue(0));
    assert_eq!(used_idx(r.vq), 1);
    assert_eq!(r.irq.count(), 1, "one interrupt, for the first request");
    let m = r.rng.metrics().snapshot();
    assert_eq!(m.entropy_rate_limiter_throttled, 1);
    assert_eq!(m.entropy_bytes, 32);
}

#[test]
fn the_timer_resumes_a_throttled_queue() {
    let mut r = rig_with(limited(Some((1, 20)), None), 0);
    add_chain(r.vq, 0, &[(DATA, 32, true)]);
    add_chain(r.vq, 1, &[(DATA2, 48, true)]);
    r.rng.process_queue(0);
    assert_eq!(used_idx(r.vq), 1);
    assert!(r.timer_event(1000), "timer never fired");
    assert_eq!(used_idx(r.vq), 2);
    assert_eq!(used(r.vq, 1), (1, 48));
    assert_eq!(r.rng.metrics().snapshot().rate_limiter_event_count, 1);
}

#[test]
fn bandwidth_is_charged_the_bytes_given() {
    let mut r = rig_with(limited(None, Some((1024, 60_000))), 0);
    for i in 0..3u16 {
        add_chain(r.vq, i, &[(DATA + u64::from(i) * 512, 512, true)]);
    }
    r.rng.process_queue(0);
    assert_eq!(used_idx(r.vq), 2, "two 512-byte requests fit in 1024 bytes");
}

#[test]
fn bandwidth_is_charged_the_capped_length() {
    // A 1 MiB buffer costs MAX_REQUEST_BYTES, not 1 MiB: two fit in 128 KiB.
    let bucket = 2 * u64::from(MAX_REQUEST_BYTES);
    let mut r = rig_with(limited(None, Some((bucket, 60_000))), 0);
    add_chain(r.vq, 0, &[(DATA, 1 << 20, true)]);
    add_chain(r.vq, 1, &[(DATA, 1 << 20, true)]);
    r.rng.process_queue(0);
    assert_eq!(used_idx(r.vq), 2);
}

#[test]
fn malformed_requests_are_not_charged() {
    let mut r = rig_with(limited(Some((1, 60_000)), None), 0);
    add_chain(r.vq, 0, &[(DATA, 32, false)]);
    add_chain(r.vq, 1, &[(DATA2, 32, true)]);
    r.rng.process_queue(0);
    assert_eq!(used_idx(r.vq), 2);
    assert_eq!(used(r.vq, 1), (1, 32));
}

#[test]
fn updating_the_limiter_wakes_a_throttled_queue() {
    let mut r = rig_with(limited(Some((1, 60_000)), None), 0);
    add_chain(r.vq, 0, &[(DATA, 32, true)]);
    add_chain(r.vq, 1, &[(DATA2, 32, true)]);
    r.rng.process_queue(0);
    assert_eq!(used_idx(r.vq), 1);
    r.rng.update_rate_limiter(&RateLimiterConfig::default());
    assert!(r.timer_event(1000), "no wake-up after the update");
    assert_eq!(used_idx(r.vq), 2);
}
