//! Rate limiting and metrics of the net device.

use super::tests::{frame, rig, Rig, BUF};
use super::*;
use crate::rate_limiter::TokenBucketConfig;
use crate::virtio::test_utils::*;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};

const RX_TIMER: usize = 1;
const TX_TIMER: usize = 2;

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

fn none() -> RateLimiterConfig {
    RateLimiterConfig::default()
}

impl Rig {
    /// Waits up to `ms` for backend fd `index` (a timer), then hands its event over.
    fn timer_event(&mut self, index: usize, ms: i32) -> bool {
        let mut p = libc::pollfd {
            fd: self.net.backend_fds()[index],
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd that lives for the call.
        if unsafe { libc::poll(&mut p, 1, ms) } != 1 {
            return false;
        }
        self.net.process_backend(index, EventSet::IN);
        true
    }

    /// Queues `n` TX frames of `len` bytes at table indexes 0, 1, ...
    fn queue_tx(&self, n: u16, len: u32) {
        let f = frame(len as usize, 0x5a);
        self.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        for i in 0..n {
            add_chain(self.tx, i, &[(BUF, len, false)]);
        }
    }

    /// Gives the backend `n` RX frames of `len` bytes (filled with their index) and
    /// posts `n` RX buffers.
    fn queue_rx(&self, n: u16, len: usize) {
        for i in 0..n {
            self.st
                .lock()
                .unwrap()
                .rx
                .push_back(frame(len, i as u8 + 1));
            add_chain(self.rx, i, &[(BUF + u64::from(i) * 0x1000, 2048, true)]);
        }
    }

    fn rx_payload(&self, i: u16, len: usize) -> Vec<u8> {
        let mut got = vec![0u8; len];
        let at = BUF + u64::from(i) * 0x1000;
        self.mem.read_slice(&mut got, GuestAddress(at)).unwrap();
        got
    }
}

#[test]
fn backend_fds_are_the_tap_and_two_timers() {
    let mut r = rig();
    let fds = r.net.backend_fds();
    assert_eq!(fds.len(), 3);
    assert_eq!(fds[0], r.net.backend().as_raw_fd());
    assert_eq!(r.net.backend_interest(RX_TIMER), EventSet::IN);
    assert_eq!(r.net.backend_interest(TX_TIMER), EventSet::IN);
    assert_eq!(r.net.backend_interest(3), EventSet::empty());
    r.net.reset();
    assert_eq!(r.net.backend_interest(RX_TIMER), EventSet::empty());
}

#[test]
fn a_throttled_tx_frame_stays_on_the_ring() {
    let mut r = rig();
    r.net
        .set_rate_limiters(&none(), &limited(Some((1, 60_000)), None))
        .unwrap();
    r.queue_tx(2, 60);
    assert!(!r.net.process_queue(TX_QUEUE));
    assert_eq!(r.st.lock().unwrap().tx.len(), 1);
    assert_eq!(used_idx(r.tx), 1, "the second chain is not returned");
    assert_eq!(r.net.active.as_ref().unwrap().tx.next_avail(), 1);
    assert!(
        !r.net.backend_interest(0).contains(EventSet::OUT),
        "no EPOLLOUT while throttled"
    );
    let m = r.net.metrics().snapshot();
    assert_eq!(m.tx_rate_limiter_throttled, 1);
}

#[test]
fn the_tx_timer_sends_the_held_frame() {
    let mut r = rig();
    r.net
        .set_rate_limiters(&none(), &limited(Some((1, 20)), None))
        .unwrap();
    r.queue_tx(2, 60);
    r.net.process_queue(TX_QUEUE);
    assert!(r.timer_event(TX_TIMER, 1000), "TX timer never fired");
    assert_eq!(r.st.lock().unwrap().tx.len(), 2);
    assert_eq!(used_idx(r.tx), 2);
    assert_eq!(r.net.metrics().snapshot().tx_rate_limiter_event_count, 1);
}

#[test]
fn tx_bandwidth_counts_whole_frames() {
    let mut r = rig();
    r.net
        .set_rate_limiters(&none(), &limited(None, Some((200, 60_000))))
        .unwrap();
    r.queue_tx(3, 100);
    r.net.process_queue(TX_QUEUE);
    assert_eq!(r.st.lock().unwrap().tx.len(), 2);
}

#[test]
fn a_throttled_rx_frame_waits_without_watching_the_tap() {
    let mut r = rig();
    r.net
        .set_rate_limiters(&limited(Some((1, 60_000)), None), &none())
        .unwrap();
    r.queue_rx(2, 60);
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(r.rx), 1);
    assert_eq!(
        r.st.lock().unwrap().reads,
        2,
        "the second frame is read and held"
    );
    assert!(
        !r.net.backend_interest(0).contains(EventSet::IN),
        "EPOLLIN dropped while throttled"
    );
    // A notification meanwhile neither delivers nor reads more.
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(r.rx), 1);
    assert_eq!(r.st.lock().unwrap().reads, 2);
    assert_eq!(r.net.metrics().snapshot().rx_rate_limiter_throttled, 1);
}

#[test]
fn the_rx_timer_delivers_the_held_frame() {
    let mut r = rig();
    r.net
        .set_rate_limiters(&limited(Some((1, 20)), None), &none())
        .unwrap();
    r.queue_rx(2, 60);
    r.net.process_queue(RX_QUEUE);
    add_chain(r.rx, 2, &[(BUF + 0x2000, 2048, true)]); // room for more
    assert!(r.timer_event(RX_TIMER, 1000), "RX timer never fired");
    assert_eq!(used_idx(r.rx), 2);
    assert_eq!(used(r.rx, 1), (1, 60));
    assert!(r.rx_payload(1, 60)[12..].iter().all(|&b| b == 2));
    assert!(
        r.net.backend_interest(0).contains(EventSet::IN),
        "the TAP is watched again"
    );
    assert_eq!(r.net.metrics().snapshot().rx_event_rate_limiter_count, 1);
}

#[test]
fn a_frame_is_charged_once() {
    let mut r = rig();
    r.net
        .set_rate_limiters(&limited(Some((1, 60_000)), None), &none())
        .unwrap();
    r.st.lock().unwrap().rx.push_back(frame(60, 1));
    // A malformed (read-only) RX chain, then a good one: the one frame pays once.
    add_chain(r.rx, 0, &[(BUF, 100, false)]);
    add_chain(r.rx, 1, &[(BUF, 2048, true)]);
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(r.rx), 2);
    assert_eq!(used(r.rx, 1), (1, 60));
    let m = r.net.metrics().snapshot();
    assert_eq!((m.rx_fails, m.rx_packets_count), (1, 1));
}

#[test]
fn new_limits_wake_a_throttled_device() {
    let mut r = rig();
    let slow = limited(Some((1, 60_000)), None);
    r.net.set_rate_limiters(&slow, &slow).unwrap();
    r.queue_rx(2, 60);
    r.queue_tx(2, 60);
    r.net.process_queue(RX_QUEUE);
    r.net.process_queue(TX_QUEUE);
    r.net.set_rate_limiters(&none(), &none()).unwrap();
    assert!(r.timer_event(RX_TIMER, 1000));
    assert!(r.timer_event(TX_TIMER, 1000));
    assert_eq!((used_idx(r.rx), used_idx(r.tx)), (2, 2));
}

#[test]
fn limits_set_before_activation_apply() {
    let mut r = rig();
    r.net.reset();
    let one = limited(Some((1, 60_000)), None);
    r.net.set_rate_limiters(&one, &one).unwrap();
    assert!(r.net.rx_limiter.is_limited() && r.net.tx_limiter.is_limited());
}

#[test]
fn metrics_count_frames_bytes_and_errors() {
    let mut r = rig();
    r.queue_tx(2, 60);
    add_chain(r.tx, 2, &[(BUF, 8, false)]); // shorter than the header
    r.net.process_queue(TX_QUEUE);
    r.queue_rx(1, 80);
    r.net.process_queue(RX_QUEUE);
    let m = r.net.metrics().snapshot();
    assert_eq!((m.tx_packets_count, m.tx_bytes_count), (2, 120));
    assert_eq!(m.tx_malformed_frames, 1);
    assert_eq!((m.rx_packets_count, m.rx_bytes_count), (1, 80));
    assert_eq!((m.tx_queue_event_count, m.rx_queue_event_count), (1, 1));
    assert_eq!((m.tx_count, m.rx_count), (1, 1));
    assert_eq!((m.rx_fails, m.tx_fails), (0, 0));
}
