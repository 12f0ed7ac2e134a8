//! Rate limiting, cache modes and metrics of the block device.

use super::request::*;
use super::tests::{image, rig, rig_with, Rig, DATA, HDR, STATUS};
use super::*;
use crate::rate_limiter::TokenBucketConfig;
use crate::virtio::test_utils::*;

fn limited(ops: Option<(u64, u64)>, bytes: Option<(u64, u64)>) -> RateLimiterConfig {
    let b = |(size, refill_time)| TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time,
    };
    RateLimiterConfig {
        bandwidth: bytes.map(b),
        ops: ops.map(b),
    }
}

fn rig_cfg(rate_limiter: RateLimiterConfig, cache: CacheType, features: u64) -> Rig {
    let file = image(8 * 512);
    let blk = Block::new(BlockConfig {
        path: file.as_path().to_path_buf(),
        rate_limiter: Some(rate_limiter),
        cache,
        ..Default::default()
    })
    .unwrap();
    rig_with(file, blk, features)
}

impl Rig {
    /// Publishes a 512-byte read of sector 0 at table index `start`, without processing.
    fn queue_read(&self, start: u16) {
        self.header(VIRTIO_BLK_T_IN, 0);
        let d = [(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)];
        add_chain(self.vq, start, &d);
    }

    /// Waits up to `ms` for the limiter's timer, then hands its event to the device.
    fn timer_event(&mut self, ms: i32) -> bool {
        let fd = self.blk.backend_fds()[0];
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd that lives for the call.
        if unsafe { libc::poll(&mut p, 1, ms) } != 1 {
            return false;
        }
        self.blk.process_backend(0, EventSet::IN);
        true
    }
}

#[test]
fn the_limiter_timer_is_a_backend_fd_watched_while_active() {
    let mut r = rig(false, 512, 0);
    assert_eq!(r.blk.backend_fds().len(), 1);
    assert_eq!(r.blk.backend_interest(0), EventSet::IN);
    r.blk.reset();
    assert_eq!(r.blk.backend_interest(0), EventSet::empty());
}

#[test]
fn a_throttled_request_stays_on_the_ring() {
    let mut r = rig_cfg(limited(Some((1, 60_000)), None), CacheType::Writeback, 0);
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 0, 512, true).0, VIRTIO_BLK_S_OK);
    r.queue_read(3);
    assert!(!r.blk.process_queue(0));
    assert_eq!(used_idx(r.vq), 1, "used ring unchanged");
    assert_eq!(r.blk.active.as_ref().unwrap().queue.next_avail(), 1);
    assert_eq!(r.irq.count(), 1, "no interrupt for a throttled pass");
    // A notification while throttled does nothing either.
    assert!(!r.blk.process_queue(0));
    assert_eq!(used_idx(r.vq), 1);
    let m = r.blk.metrics().snapshot();
    assert_eq!(m.rate_limiter_throttled_events, 1);
    assert_eq!(m.read_count, 1);
}

#[test]
fn the_timer_resumes_a_throttled_queue() {
    let mut r = rig_cfg(limited(Some((1, 20)), None), CacheType::Writeback, 0);
    r.queue_read(0);
    r.queue_read(3);
    r.blk.process_queue(0);
    assert_eq!(used_idx(r.vq), 1);
    assert!(r.timer_event(1000), "timer never fired");
    assert_eq!(used_idx(r.vq), 2);
    assert_eq!(used(r.vq, 1), (3, 513));
    assert_eq!(r.blk.metrics().snapshot().rate_limiter_event_count, 1);
}

#[test]
fn bandwidth_is_charged_the_data_bytes() {
    let mut r = rig_cfg(limited(None, Some((1024, 60_000))), CacheType::Writeback, 0);
    r.queue_read(0);
    r.queue_read(3);
    r.queue_read(6);
    r.blk.process_queue(0);
    assert_eq!(used_idx(r.vq), 2, "two 512-byte reads fit in 1024 bytes");
}

#[test]
fn malformed_chains_are_not_charged() {
    let mut r = rig_cfg(limited(Some((1, 60_000)), None), CacheType::Writeback, 0);
    // No status byte, then a short header: both answered, no op charged.
    add_chain(r.vq, 0, &[(HDR, 16, false)]);
    r.blk.process_queue(0);
    let (s, _) = r.run(0, &[(HDR, 8, false), (STATUS, 1, true)]);
    assert_eq!(s, VIRTIO_BLK_S_IOERR);
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 0, 512, true).0, VIRTIO_BLK_S_OK);
}

#[test]
fn updating_the_limiter_wakes_a_throttled_queue() {
    let mut r = rig_cfg(limited(Some((1, 60_000)), None), CacheType::Writeback, 0);
    r.queue_read(0);
    r.queue_read(3);
    r.blk.process_queue(0);
    assert_eq!(used_idx(r.vq), 1);
    r.blk.update_rate_limiter(&RateLimiterConfig::default());
    assert!(r.timer_event(1000), "no wake-up after the update");
    assert_eq!(used_idx(r.vq), 2);
    assert_eq!(r.blk.metrics().snapshot().update_count, 1);
}

#[test]
fn unsafe_cache_offers_no_flush_and_is_not_write_through() {
    let r = rig_cfg(RateLimiterConfig::default(), CacheType::Unsafe, !0);
    assert!(!has(r.blk.features(), VIRTIO_BLK_F_FLUSH));
    assert!(!r.blk.disk.flush_negotiated);
    assert!(!r.blk.disk.write_through());
}

#[test]
fn unsafe_cache_answers_a_stray_flush() {
    let mut r = rig_cfg(RateLimiterConfig::default(), CacheType::Unsafe, 0);
    assert_eq!(r.req(VIRTIO_BLK_T_FLUSH, 0, 0, false), (VIRTIO_BLK_S_OK, 1));
    assert_eq!(r.blk.metrics().snapshot().flush_count, 1);
}

#[test]
fn writeback_cache_offers_flush_and_is_write_through_without_it() {
    let r = rig(false, 512, 0);
    assert!(has(r.blk.features(), VIRTIO_BLK_F_FLUSH));
    assert!(r.blk.disk.write_through());
    let r = rig(false, 512, VIRTIO_BLK_F_FLUSH);
    assert!(!r.blk.disk.write_through());
}

#[test]
fn metrics_count_reads_writes_and_bytes() {
    let mut r = rig(false, 8 * 512, VIRTIO_BLK_F_FLUSH);
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 0, 1024, true).0, VIRTIO_BLK_S_OK);
    assert_eq!(r.req(VIRTIO_BLK_T_OUT, 1, 512, false).0, VIRTIO_BLK_S_OK);
    assert_eq!(r.req(VIRTIO_BLK_T_FLUSH, 0, 0, false).0, VIRTIO_BLK_S_OK);
    let m = r.blk.metrics().snapshot();
    assert_eq!((m.read_count, m.read_bytes), (1, 1024));
    assert_eq!((m.write_count, m.write_bytes), (1, 512));
    assert_eq!(m.flush_count, 1);
    assert_eq!(m.queue_event_count, 3);
    assert_eq!((m.invalid_reqs_count, m.execute_fails), (0, 0));
}

#[test]
fn metrics_count_invalid_requests() {
    let mut r = rig(true, 8 * 512, 0);
    let bad = [
        r.req(VIRTIO_BLK_T_IN, 8, 512, true),   // beyond the end
        r.req(VIRTIO_BLK_T_OUT, 0, 512, false), // read-only disk
        r.req(VIRTIO_BLK_T_IN, 0, 100, true),   // not whole sectors
        r.req(99, 0, 0, false),                 // unknown type
        r.run(0, &[(HDR, 8, false), (STATUS, 1, true)]), // short header
    ];
    assert!(bad.iter().all(|&(s, _)| s != VIRTIO_BLK_S_OK));
    add_chain(r.vq, 0, &[(0x2000_0000, 16, false), (STATUS, 1, true)]); // outside memory
    r.blk.process_queue(0);
    let m = r.blk.metrics().snapshot();
    assert_eq!(m.invalid_reqs_count, 6);
    assert_eq!((m.read_count, m.write_count, m.execute_fails), (0, 0, 0));
}

#[test]
fn metrics_count_an_empty_pass() {
    let mut r = rig(false, 512, 0);
    r.blk.process_queue(0);
    let m = r.blk.metrics().snapshot();
    assert_eq!((m.queue_event_count, m.no_avail_buffer), (1, 1));
}

#[test]
fn metrics_count_a_failed_activation() {
    let f = image(512);
    let mut blk = Block::new(BlockConfig {
        path: f.as_path().to_path_buf(),
        ..Default::default()
    })
    .unwrap();
    let irq = Arc::new(Interrupt::new(Arc::new(CountingIrq::default())));
    assert!(blk.activate(mem(), Vec::new(), irq).is_err());
    assert_eq!(blk.metrics().snapshot().activate_fails, 1);
}
