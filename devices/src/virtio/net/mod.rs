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

pub mod tap;

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use event_manager::EventSet;
use log::{error, warn};
use virtio_bindings::virtio_net as vn;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::ByteValued;

use super::chain;
use super::features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use super::queue::{self, PassBudget, PassEnd, QueueBroken};
use super::{has, Error, Interrupt, Mem, VirtioDevice, TYPE_NET};
use tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};

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
    broken: bool,
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
            broken: false,
        })
    }

    /// The backend (e.g. the [`tap::Tap`]).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Ends a pass: notifies the driver of used buffers and turns a broken queue into
    /// `DEVICE_NEEDS_RESET`. Returns true when work is left for another pass.
    fn end_pass(act: &mut Active, rx: bool, used: bool, end: PassEnd) -> bool {
        let q = if rx { &mut act.rx } else { &mut act.tx };
        if used {
            queue::notify_used(q, &act.mem, &act.interrupt);
        }
        match end {
            PassEnd::Yielded => true,
            PassEnd::Broken(e) => {
                if act.interrupt.set_needs_reset() {
                    let which = if rx { "RX" } else { "TX" };
                    warn!("virtio-net: {which} queue: {e}; device needs a reset");
                }
                false
            }
            PassEnd::Drained | PassEnd::Blocked => false,
        }
    }

    /// Moves frames from the backend into RX buffers while both exist (one bounded pass).
    fn process_rx(&mut self) -> bool {
        let Some(act) = self.active.as_mut().filter(|a| !a.interrupt.needs_reset()) else {
            return false;
        };
        let mem = act.mem.clone();
        let q = &mut act.rx;
        let mut budget = PassBudget::new(q.size());
        let mut used = false;
        let end = loop {
            if !budget.turn() {
                break PassEnd::Yielded;
            }
            if self.rx_len.is_none() {
                // Take a frame from the backend only when a buffer is there for it.
                let avail = match q.avail_idx(&*mem, Ordering::Acquire) {
                    Ok(i) => i.0 != q.next_avail(),
                    Err(e) => break PassEnd::Broken(QueueBroken::Avail(e)),
                };
                if !avail {
                    // Out of buffers: ask for a notification, re-checking for a race.
                    match queue::rearm(q, &mem) {
                        Ok(true) => continue,
                        Ok(false) => {
                            self.rx_wanted = false;
                            break PassEnd::Drained;
                        }
                        Err(e) => break PassEnd::Broken(e),
                    }
                }
                match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(n) => self.rx_len = Some(n),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break PassEnd::Blocked,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        error!("virtio-net: backend read failed: {e}");
                        break PassEnd::Blocked;
                    }
                }
            }
            let Some(n) = self.rx_len else {
                break PassEnd::Blocked;
            };
            let c = match queue::pop(q, &mem) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    self.rx_wanted = false;
                    break PassEnd::Drained;
                }
                Err(e) => break PassEnd::Broken(e),
            };
            let head = c.head_index();
            let len = match chain::parse(&mem, c, u64::from(u32::MAX)) {
                Ok(p) if p.readable.len() == 0 && p.writable.len() >= VNET_HDR_LEN as u64 => {
                    if (n as u64) > p.writable.len() || n < VNET_HDR_LEN {
                        warn!(
                            "virtio-net: dropping a {n}-byte frame: RX buffer holds {} bytes",
                            p.writable.len()
                        );
                        q.go_to_previous_position();
                        self.rx_len = None;
                        continue;
                    }
                    // num_buffers = 1 (§5.1.6.4).
                    self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                    self.rx_len = None;
                    match p.writable.write_at(&mem, 0, &self.rx_buf[..n]) {
                        Ok(()) => n as u32,
                        Err(e) => {
                            warn!("virtio-net: cannot write RX frame: {e}");
                            0
                        }
                    }
                }
                Ok(_) => {
                    warn!("virtio-net: RX chain {head} is not a device-writable buffer of >= 12 bytes");
                    0
                }
                Err(rej) => {
                    warn!("virtio-net: malformed RX chain {head}: {}", rej.error);
                    0
                }
            };
            if let Err(e) = queue::add_used(q, &mem, head, len) {
                break PassEnd::Broken(e);
            }
            used = true;
            budget.spend(u64::from(len));
        };
        Self::end_pass(act, true, used, end)
    }

    /// Reads TX chain `c` into `tx_buf`; the frame's length, or None for a bad chain.
    fn read_tx(&mut self, mem: &Mem, c: queue::Chain<'_>) -> Option<usize> {
        let head = c.head_index();
        match chain::parse(mem, c, MAX_FRAME_LEN as u64) {
            Ok(p) if p.writable.len() == 0 && p.readable.len() >= VNET_HDR_LEN as u64 => {
                // parse() bounded the length by MAX_FRAME_LEN == tx_buf.len().
                let n = p.readable.len() as usize;
                match p.readable.read_at(mem, 0, &mut self.tx_buf[..n]) {
                    Ok(()) => Some(n),
                    Err(e) => {
                        warn!("virtio-net: cannot read TX chain {head}: {e}");
                        None
                    }
                }
            }
            Ok(_) => {
                warn!("virtio-net: TX chain {head} is not a readable frame of >= 12 bytes");
                None
            }
            Err(rej) => {
                warn!("virtio-net: malformed TX chain {head}: {}", rej.error);
                None
            }
        }
    }

    /// Sends the frame in `tx_buf`; false when the backend is full (keep it pending).
    fn send_tx(&mut self, len: usize) -> bool {
        match self.backend.write_frame(&self.tx_buf[..len]) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => {
                warn!("virtio-net: dropping TX frame: {e}");
                true
            }
            Ok(_) => true,
        }
    }

    /// Sends TX chains to the backend until the queue is empty, the backend is full or
    /// the pass budget is spent.
    fn process_tx(&mut self) -> bool {
        let Some(act) = self.active.as_ref().filter(|a| !a.interrupt.needs_reset()) else {
            return false;
        };
        let mem = act.mem.clone();
        let mut budget = PassBudget::new(act.tx.size());
        let mut used = false;
        let end = loop {
            let (head, len) = match self.tx_pending.take() {
                Some(pending) => pending,
                None => {
                    let Some(act) = self.active.as_mut() else {
                        break PassEnd::Drained;
                    };
                    let c = match queue::pop(&mut act.tx, &mem) {
                        Ok(Some(c)) => c,
                        Ok(None) => match queue::rearm(&mut act.tx, &mem) {
                            Ok(true) if budget.turn() => continue,
                            Ok(true) => break PassEnd::Yielded,
                            Ok(false) => break PassEnd::Drained,
                            Err(e) => break PassEnd::Broken(e),
                        },
                        Err(e) => break PassEnd::Broken(e),
                    };
                    let head = c.head_index();
                    (head, self.read_tx(&mem, c).unwrap_or(0))
                }
            };
            if len > 0 && !self.send_tx(len) {
                self.tx_pending = Some((head, len));
                break PassEnd::Blocked;
            }
            let Some(act) = self.active.as_mut() else {
                break PassEnd::Drained;
            };
            if let Err(e) = queue::add_used(&mut act.tx, &mem, head, 0) {
                break PassEnd::Broken(e);
            }
            used = true;
            if !budget.spend(len as u64) {
                break PassEnd::Yielded;
            }
        };
        match self.active.as_mut() {
            Some(act) => Self::end_pass(act, false, used, end),
            None => false,
        }
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
        let [rx, tx]: [Queue; 2] = queues.try_into().map_err(|_| Error::QueueCount {
            device: "virtio-net",
            want: 2,
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
            self.backend
                .set_offload(flags)
                .map_err(|source| Error::Offload { flags, source })?;
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
        self.rx_wanted = false;
        if self.tx_pending.take().is_some() {
            warn!("virtio-net: reset dropped a pending TX frame");
        }
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            RX_QUEUE => {
                self.rx_wanted = true;
                self.process_rx()
            }
            TX_QUEUE => self.process_tx(),
            _ => false,
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.backend.as_raw_fd()]
    }

    fn backend_interest(&self, _index: usize) -> EventSet {
        let mut s = EventSet::empty();
        if self.broken || self.active.is_none() {
            return s;
        }
        if self.rx_wanted {
            s |= EventSet::IN;
        }
        if self.tx_pending.is_some() {
            s |= EventSet::OUT;
        }
        s
    }

    fn process_backend(&mut self, _index: usize, events: EventSet) -> bool {
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
}

#[cfg(test)]
mod tests;
