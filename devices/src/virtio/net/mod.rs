//! virtio-net (virtio 1.2 §5.1) backed by a TAP (or any [`NetBackend`]).
//!
//! Queue 0 is RX, queue 1 TX. Frames carry the 12-byte `virtio_net_hdr_v1`, passed
//! through to and from the TAP unchanged (except `num_buffers`, set to 1 on RX).
//! `VIRTIO_NET_F_MRG_RXBUF` is not offered: each received frame goes into one chain.
//!
//! Flow control: a frame the backend refuses with `EAGAIN` stays pending (its chain is
//! not returned) and is retried when the fd becomes writable (EPOLLOUT is watched only
//! then). The TAP is read only while the driver has RX buffers posted; when it runs out,
//! EPOLLIN is dropped until the driver notifies the RX queue.
//!
//! Rate limiting: each direction has a [`RateLimiter`], charged one operation plus the
//! frame's bytes (virtio-net header included) per frame. A refused TX frame goes back on
//! the ring; a refused RX frame stays read but undelivered, and EPOLLIN is dropped. Both
//! resume when the limiter's timerfd fires. Backend fds: 0 the TAP, 1 the RX limiter's
//! timer, 2 the TX limiter's timer.
//!
//! Snapshots: [`NetState`] (the MAC); TX ring positions are exact, an undelivered RX
//! frame is dropped.

mod rx;
mod state;
pub mod tap;
mod tx;

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use event_manager::EventSet;
use log::{error, warn};
use virtio_bindings::virtio_net as vn;
use virtio_queue::Queue;
use vm_memory::ByteValued;

use super::features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use super::queue::{self, PassEnd};
use super::{has, Error, Interrupt, Mem, QueuePosition, VirtioDevice, TYPE_NET};
use crate::metrics::{inc, NetMetrics};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::snapshot::{DeviceState, StateError};
use tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};

pub use state::NetState;

/// Device handles partial checksums from the driver.
pub const VIRTIO_NET_F_CSUM: u64 = 1 << vn::VIRTIO_NET_F_CSUM;
/// Driver handles partial checksums.
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << vn::VIRTIO_NET_F_GUEST_CSUM;
/// `mac` in config space is valid.
pub const VIRTIO_NET_F_MAC: u64 = 1 << vn::VIRTIO_NET_F_MAC;
/// Driver can receive TSOv4.
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << vn::VIRTIO_NET_F_GUEST_TSO4;
/// Driver can receive TSOv6.
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << vn::VIRTIO_NET_F_GUEST_TSO6;
/// Device can receive TSOv4 from the driver.
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << vn::VIRTIO_NET_F_HOST_TSO4;
/// Device can receive TSOv6 from the driver.
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << vn::VIRTIO_NET_F_HOST_TSO6;
/// `status` in config space is valid.
pub const VIRTIO_NET_F_STATUS: u64 = 1 << vn::VIRTIO_NET_F_STATUS;

/// RX queue index.
pub const RX_QUEUE: usize = 0;
/// TX queue index.
pub const TX_QUEUE: usize = 1;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of `struct virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: usize = std::mem::size_of::<vn::virtio_net_hdr_v1>();
/// Length of the configuration space Kiln exposes: `mac` and `status`.
const CONFIG_LEN: usize = std::mem::offset_of!(vn::virtio_net_config, max_virtqueue_pairs);
/// Largest frame (header included) moved in either direction: 64 KiB GSO packets.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65_550;

/// The host side of a virtio-net device.
pub trait NetBackend: AsRawFd + Send {
    /// Reads one frame (with its vnet header); `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame (with its vnet header); `WouldBlock` when the backend is full.
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize>;
    /// Whether checksum / TSO offloads can be enabled.
    fn offloads_supported(&self) -> bool {
        false
    }
    /// Sets `TUN_F_*` receive offloads.
    fn set_offload(&mut self, _flags: u32) -> std::io::Result<()> {
        Ok(())
    }
}

/// `virtio_net_config` as bytes (virtio-bindings has the layout, vm-memory the bytes).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct NetConfig(vn::virtio_net_config);

// SAFETY: virtio_net_config is repr(C, packed) plain integers: no padding, and every
// bit pattern is a valid value.
unsafe impl ByteValued for NetConfig {}

struct Active {
    mem: Mem,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio network device.
pub struct Net<B: NetBackend> {
    backend: B,
    avail_features: u64,
    acked_features: u64,
    config: Vec<u8>,
    active: Option<Active>,
    rx_buf: Vec<u8>,
    /// Length of a frame read from the backend but not yet delivered.
    rx_len: Option<usize>,
    /// The driver may have RX buffers: watch the backend for input.
    rx_wanted: bool,
    /// The TX frame being sent (reused for every frame).
    tx_buf: Vec<u8>,
    /// A TX frame in `tx_buf` the backend refused with `EAGAIN`: its chain head and length.
    tx_pending: Option<(u16, usize)>,
    /// The frame in `rx_buf` was charged to the RX limiter.
    rx_paid: bool,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    metrics: Arc<NetMetrics>,
    /// The backend failed (error or hang-up): it is no longer watched.
    broken: bool,
}

/// What a backend fd of the device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fd {
    Backend,
    RxTimer,
    TxTimer,
}

impl<B: NetBackend> Net<B> {
    /// A device with MAC address `mac` on `backend`.
    pub fn new(backend: B, mac: [u8; 6]) -> Result<Self, Error> {
        let mut avail_features =
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;
        if backend.offloads_supported() {
            avail_features |= VIRTIO_NET_F_CSUM
                | VIRTIO_NET_F_GUEST_CSUM
                | VIRTIO_NET_F_GUEST_TSO4
                | VIRTIO_NET_F_GUEST_TSO6
                | VIRTIO_NET_F_HOST_TSO4
                | VIRTIO_NET_F_HOST_TSO6;
        }
        let config = NetConfig(vn::virtio_net_config {
            mac,
            status: (vn::VIRTIO_NET_S_LINK_UP as u16).to_le(),
            ..Default::default()
        });
        let config = config.as_slice()[..CONFIG_LEN].to_vec();
        Ok(Self {
            backend,
            avail_features,
            acked_features: 0,
            config,
            active: None,
            rx_buf: vec![0; MAX_FRAME_LEN],
            rx_len: None,
            rx_wanted: false,
            tx_buf: vec![0; MAX_FRAME_LEN],
            tx_pending: None,
            rx_paid: false,
            rx_limiter: unlimited()?,
            tx_limiter: unlimited()?,
            metrics: Arc::new(NetMetrics::default()),
            broken: false,
        })
    }

    /// Sets the receive and transmit limits (an all-`None` config removes them), before
    /// activation or while running; a frame held back by the old limits is retried at
    /// once.
    pub fn set_rate_limiters(
        &mut self,
        rx: &RateLimiterConfig,
        tx: &RateLimiterConfig,
    ) -> std::io::Result<()> {
        self.rx_limiter.update(rx);
        self.tx_limiter.update(tx);
        Ok(())
    }

    /// The device's counters (shared: the device keeps counting into them).
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// The backend fds in [`VirtioDevice::backend_fds`] order, with what each is.
    fn fds(&self) -> impl Iterator<Item = (Fd, RawFd)> {
        let rx = self.rx_limiter.timer_fd().map(|fd| (Fd::RxTimer, fd));
        let tx = self.tx_limiter.timer_fd().map(|fd| (Fd::TxTimer, fd));
        std::iter::once((Fd::Backend, self.backend.as_raw_fd()))
            .chain(rx)
            .chain(tx)
    }

    fn fd_kind(&self, index: usize) -> Option<Fd> {
        self.fds().nth(index).map(|(kind, _)| kind)
    }

    /// The backend (e.g. the [`tap::Tap`]).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Ends a pass: notifies the driver of used buffers and turns a broken queue into
    /// `DEVICE_NEEDS_RESET`. Returns true when work is left for another pass.
    fn end_pass(act: &mut Active, rx: bool, used: bool, end: PassEnd, m: &NetMetrics) -> bool {
        let q = if rx { &mut act.rx } else { &mut act.tx };
        if used {
            inc(if rx { &m.rx_count } else { &m.tx_count });
        }
        let what = if rx {
            "virtio-net: RX queue"
        } else {
            "virtio-net: TX queue"
        };
        queue::end_pass(q, &act.mem, &act.interrupt, (used, end), what)
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn activate(
        &mut self,
        mem: Mem,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), Error> {
        let [rx, tx]: [Queue; 2] = queues.try_into().map_err(|_| {
            inc(&self.metrics.activate_fails);
            Error::QueueCount {
                device: "virtio-net",
                want: 2,
            }
        })?;
        if self.backend.offloads_supported() {
            let f = self.acked_features;
            let mut flags = 0;
            if has(f, VIRTIO_NET_F_GUEST_CSUM) {
                flags |= TUN_F_CSUM;
                if has(f, VIRTIO_NET_F_GUEST_TSO4) {
                    flags |= TUN_F_TSO4;
                }
                if has(f, VIRTIO_NET_F_GUEST_TSO6) {
                    flags |= TUN_F_TSO6;
                }
            }
            self.backend.set_offload(flags).map_err(|source| {
                inc(&self.metrics.activate_fails);
                Error::Offload { flags, source }
            })?;
        }
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
        });
        self.rx_wanted = true;
        self.broken = false;
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.rx_len = None;
        self.rx_paid = false;
        self.rx_wanted = false;
        if self.tx_pending.take().is_some() {
            warn!("virtio-net: reset dropped a pending TX frame");
        }
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            RX_QUEUE => {
                inc(&self.metrics.rx_queue_event_count);
                self.rx_wanted = true;
                self.process_rx()
            }
            TX_QUEUE => {
                inc(&self.metrics.tx_queue_event_count);
                self.process_tx()
            }
            _ => false,
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        self.fds().map(|(_, fd)| fd).collect()
    }

    fn backend_interest(&self, index: usize) -> EventSet {
        let mut s = EventSet::empty();
        if self.active.is_none() {
            return s;
        }
        match self.fd_kind(index) {
            Some(Fd::Backend) if !self.broken => {
                // A frame held back by the RX limiter waits for the timer, not the TAP.
                if self.rx_wanted && !self.rx_limiter.is_blocked() {
                    s |= EventSet::IN;
                }
                if self.tx_pending.is_some() {
                    s |= EventSet::OUT;
                }
            }
            Some(Fd::RxTimer | Fd::TxTimer) => s |= EventSet::IN,
            Some(Fd::Backend) | None => {}
        }
        s
    }

    fn process_backend(&mut self, index: usize, events: EventSet) -> bool {
        match self.fd_kind(index) {
            Some(Fd::Backend) => {}
            Some(Fd::RxTimer) => {
                self.rx_limiter.on_timer();
                inc(&self.metrics.rx_event_rate_limiter_count);
                return self.process_rx();
            }
            Some(Fd::TxTimer) => {
                self.tx_limiter.on_timer();
                inc(&self.metrics.tx_rate_limiter_event_count);
                return self.process_tx();
            }
            None => return false,
        }
        if events.intersects(EventSet::ERROR | EventSet::HANG_UP) {
            error!("virtio-net: backend fd error or hang-up; no longer watched");
            self.broken = true;
            return false;
        }
        // A yielded RX pass needs nothing more: the backend stays readable (level-triggered).
        if events.contains(EventSet::IN) {
            self.process_rx();
        }
        events.contains(EventSet::OUT) && self.process_tx()
    }

    fn device_state(&self) -> Result<DeviceState, StateError> {
        Ok(DeviceState::Net(self.save()))
    }

    fn queue_positions(&self) -> Option<Vec<QueuePosition>> {
        self.positions()
    }

    fn restore_device_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        self.restore(state)
    }
}

/// A limiter without limits (the device's until [`Net::set_rate_limiters`]).
fn unlimited() -> Result<RateLimiter, Error> {
    RateLimiter::new(&RateLimiterConfig::default()).map_err(Error::RateLimiter)
}

#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod tests;
