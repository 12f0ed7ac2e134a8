//! virtio-rng, the entropy device (virtio 1.2 §5.4): one queue, `requestq`, no
//! configuration space and no device-specific features.
//!
//! The driver posts device-writable buffers; the device fills them with bytes from the
//! host's `getrandom(2)` and returns how many it wrote as the used length. A request
//! gets at most [`MAX_REQUEST_BYTES`] (the spec lets the device write less than the
//! buffer: "one or more random bytes"); a larger buffer just gets less.
//!
//! The spec has the driver post only device-writable buffers. A chain that also has
//! device-readable descriptors (before the writable ones) has them ignored; a chain
//! Kiln cannot use at all (a buffer outside guest memory, a readable descriptor after a
//! writable one, a broken link, no writable byte) is answered with 0 bytes. A queue the
//! driver broke (a bad available index or head) puts the device in `DEVICE_NEEDS_RESET`.
//!
//! Each request is charged to the device's [`RateLimiter`] (one operation plus the
//! bytes it will get) before it is filled; a refused request goes back on the queue and
//! the pass stops until the limiter's timerfd (backend fd 0) fires.
//!
//! Snapshots: the device has no state of its own ([`DeviceState::Rng`]); everything is
//! in the transport's state and the ring positions.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use event_manager::EventSet;
use log::{debug, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::{
    chain,
    features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX},
    queue::{self, PassBudget, PassEnd},
    Error, Interrupt, Mem, QueuePosition, VirtioDevice, TYPE_RNG,
};
use crate::metrics::{add, inc, RngMetrics};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::snapshot::{DeviceState, StateError};

/// Maximum size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The most random bytes one request gets.
pub const MAX_REQUEST_BYTES: u32 = 64 << 10;
/// `getrandom` calls one request may make before it gives up (EINTR / EAGAIN / short
/// reads): a request's cost stays bounded.
const GETRANDOM_TRIES: usize = 8;

struct Active {
    mem: Mem,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio entropy device fed by the host's `getrandom(2)`.
pub struct Rng {
    active: Option<Active>,
    limiter: RateLimiter,
    metrics: Arc<RngMetrics>,
    /// Random bytes for one request, reused.
    buf: Vec<u8>,
}

/// Fills `buf` from the host's `getrandom(2)` (flags 0: the urandom source, which does
/// not block once the host's pool is initialized). Retries EINTR, EAGAIN and short
/// reads a bounded number of times.
fn host_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    for _ in 0..GETRANDOM_TRIES {
        if done == buf.len() {
            return Ok(());
        }
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes that lives
        // for the call; getrandom writes at most that many bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n >= 0 {
            done += n as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
            _ => return Err(e),
        }
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "getrandom gave {done} of {} bytes after {GETRANDOM_TRIES} tries",
            buf.len()
        )))
    }
}

/// What one request came to.
enum Request {
    /// A usable chain: fill `len` bytes of its writable buffers.
    Fill(chain::Chain, u32),
    /// Answer with 0 bytes (malformed, or no writable byte).
    Empty,
}

impl Rng {
    /// A device limited by `rate_limiter` (`None`: unlimited).
    pub fn new(rate_limiter: Option<RateLimiterConfig>) -> Result<Self, Error> {
        let limiter =
            RateLimiter::new(&rate_limiter.unwrap_or_default()).map_err(Error::RateLimiter)?;
        Ok(Self {
            active: None,
            limiter,
            metrics: Arc::new(RngMetrics::default()),
            buf: vec![0; MAX_REQUEST_BYTES as usize],
        })
    }

    /// The device's counters (shared: the device keeps counting into them).
    pub fn metrics(&self) -> Arc<RngMetrics> {
        self.metrics.clone()
    }

    /// Replaces the rate limits (an all-`None` config removes them). A request held
    /// back by the old limits is retried at once.
    pub fn update_rate_limiter(&mut self, cfg: &RateLimiterConfig) {
        self.limiter.update(cfg);
    }

    /// Validates a popped chain (no guest error panics or stops the pass).
    fn parse(mem: &Mem, c: queue::Chain<'_>, m: &RngMetrics) -> Request {
        // No length limit here: a bigger buffer is served in part, not refused.
        match chain::parse(mem, c, u64::MAX) {
            Ok(ch) if ch.writable.len() > 0 => {
                let len = ch.writable.len().min(u64::from(MAX_REQUEST_BYTES)) as u32;
                Request::Fill(ch, len)
            }
            Ok(_) => {
                debug!("virtio-rng: request without a device-writable buffer");
                inc(&m.entropy_event_fails);
                Request::Empty
            }
            Err(r) => {
                debug!("virtio-rng: malformed request {}: {}", r.head, r.error);
                inc(&m.entropy_event_fails);
                Request::Empty
            }
        }
    }

    /// One bounded pass over the request queue, raising at most one interrupt.
    /// Returns true when requests are left for another pass.
    fn process(&mut self) -> bool {
        let Some(act) = self.active.as_mut() else {
            return false;
        };
        // A throttled device waits for its timer, whatever the driver says meanwhile.
        if act.interrupt.needs_reset() || self.limiter.is_blocked() {
            return false;
        }
        let mem = act.mem.clone();
        let q = &mut act.queue;
        let m = &*self.metrics;
        let mut budget = PassBudget::new(q.size());
        let mut used = false;
        let end = loop {
            match queue::pop(q, &mem) {
                Ok(Some(c)) => {
                    let head = c.head_index();
                    let len = match Self::parse(&mem, c, m) {
                        Request::Fill(ch, len) => {
                            if !self.limiter.consume(1, u64::from(len)) {
                                // Back on the ring: the same request is popped after the timer.
                                q.go_to_previous_position();
                                inc(&m.entropy_rate_limiter_throttled);
                                break PassEnd::Blocked;
                            }
                            fill(&mem, &ch, &mut self.buf[..len as usize], m)
                        }
                        Request::Empty => 0,
                    };
                    if let Err(e) = queue::add_used(q, &mem, head, len) {
                        break PassEnd::Broken(e);
                    }
                    used = true;
                    if !budget.spend(u64::from(len)) {
                        break PassEnd::Yielded;
                    }
                }
                // Publish avail_event and catch requests that arrived meanwhile.
                Ok(None) => match queue::rearm(q, &mem) {
                    Ok(true) if budget.turn() => continue,
                    Ok(true) => break PassEnd::Yielded,
                    Ok(false) => break PassEnd::Drained,
                    Err(e) => break PassEnd::Broken(e),
                },
                Err(e) => break PassEnd::Broken(e),
            }
        };
        queue::end_pass(q, &mem, &act.interrupt, (used, end), "virtio-rng")
    }
}

/// Fills `ch`'s writable buffers with `buf.len()` random bytes; returns the bytes
/// written (0 when the host's generator or guest memory failed).
fn fill(mem: &Mem, ch: &chain::Chain, buf: &mut [u8], m: &RngMetrics) -> u32 {
    if let Err(e) = host_random(buf) {
        // Logged once at warn level: a guest can keep asking.
        if m.host_rng_fails.fetch_add(1, Ordering::Relaxed) == 0 {
            warn!("virtio-rng: host getrandom failed: {e} (further failures at debug level)");
        } else {
            debug!("virtio-rng: host getrandom failed: {e}");
        }
        return 0;
    }
    match ch.writable.write_at(mem, 0, buf) {
        Ok(()) => {
            add(&m.entropy_bytes, buf.len() as u64);
            // At most MAX_REQUEST_BYTES.
            buf.len() as u32
        }
        Err(e) => {
            // Unreachable with validated segments; answer 0 bytes to be safe.
            inc(&m.entropy_event_fails);
            debug!("virtio-rng: cannot write guest memory: {e}");
            0
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn ack_features(&mut self, _features: u64) {}

    fn config_space(&self) -> &[u8] {
        &[]
    }

    fn activate(
        &mut self,
        mem: Mem,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), Error> {
        let queue = super::single_queue(queues, "virtio-rng")
            .inspect_err(|_| inc(&self.metrics.activate_fails))?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        if index != 0 {
            return false;
        }
        inc(&self.metrics.entropy_event_count);
        self.process()
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        self.limiter.timer_fd().into_iter().collect()
    }

    fn backend_interest(&self, _index: usize) -> EventSet {
        if self.active.is_some() {
            EventSet::IN
        } else {
            EventSet::empty()
        }
    }

    fn process_backend(&mut self, _index: usize, _events: EventSet) -> bool {
        // The rate limiter's timer: a throttled request may go now.
        self.limiter.on_timer();
        inc(&self.metrics.rate_limiter_event_count);
        self.process()
    }

    fn device_state(&self) -> Result<DeviceState, StateError> {
        Ok(DeviceState::Rng)
    }

    fn queue_positions(&self) -> Option<Vec<QueuePosition>> {
        let act = self.active.as_ref()?;
        Some(vec![QueuePosition::of(&act.queue)])
    }

    fn restore_device_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        match state {
            DeviceState::Rng => Ok(()),
            other => Err(StateError::DeviceKind {
                saved: other.kind(),
                actual: "virtio-rng",
            }),
        }
    }
}

#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod tests;
