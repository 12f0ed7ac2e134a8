//! virtio-mmio transport (virtio 1.2 §4.2) and the block, net and entropy (rng) devices.
//!
//! # Public API (for the VMM)
//!
//! Guest memory is shared as `Arc<GuestMemoryMmap<()>>` ([`Mem`]); Kiln's memory map is
//! fixed for the VM's lifetime, so no `GuestMemoryAtomic` is needed.
//!
//! ```ignore
//! use std::sync::{Arc, Mutex};
//! use devices::virtio::{block::{Block, BlockConfig}, net::{Net, tap::Tap}};
//! use devices::virtio::{DeviceThread, MmioTransport};
//!
//! // 1. A device (errors are `virtio::Error`, naming the path / interface and the fix).
//! let blk = Block::new(BlockConfig { path: "disk.img".into(), ..Default::default() })?;
//!
//! // 2. Wrap it in the transport with the guest memory and its interrupt line.
//! let irq = Arc::new(IrqLine::new(gsi)?);          // register irq.evt with KVM_IRQFD on gsi
//! let t = MmioTransport::new(blk, mem.clone(), irq)?;
//!
//! // 3. ioeventfds: one per queue, datamatch = queue index, on base + 0x50 (QueueNotify).
//! for (addr, datamatch, evt) in t.ioevents(base) {
//!     vm.register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)?;
//! }
//!
//! // 4. The device's own thread (queue eventfds, backend fds such as a TAP).
//! let worker = DeviceThread::spawn("blk0", t.worker()?, Box::new(|| Ok(())))?;
//!
//! // 5. The bus device: vCPUs reach the registers through it.
//! mmio_bus.insert(Arc::new(Mutex::new(t)), base, 0x1000)?;
//! ```
//!
//! The kernel command line gets `virtio_mmio.device=4K@0x<base>:<gsi>` per device.
//!
//! # Threads and locks
//!
//! Each device runs its queues on its own thread ([`DeviceThread`]), so disk or network
//! I/O never delays the event loop (signals, serial input) or another device. The
//! device model sits behind its own mutex, shared by the transport and the device
//! thread. Register accesses a vCPU makes while the device works (`InterruptStatus`,
//! `InterruptACK`, `QueueNotify`, configuration space, feature and queue registers)
//! never take that mutex: only status writes that activate or reset the device do, and
//! a queue pass is bounded ([`queue::PassBudget`]), so they wait at most one pass.
//!
//! # Errors the driver causes
//!
//! A malformed request (bad chain, buffer outside guest memory) fails that request. An
//! error the driver cannot recover from (an available index more than the queue size
//! ahead, a head index outside the ring) puts the device in `DEVICE_NEEDS_RESET`
//! (§2.1.2): a configuration-change interrupt is raised and the device processes
//! nothing more until the driver resets it.
//!
//! # Snapshots
//!
//! [`MmioTransport::save_state`] captures a paused device ([`MmioState`]: registers,
//! queues at their live ring positions, interrupt status and the device's own state
//! through [`VirtioDevice::device_state`]) and keeps the device locked until guest
//! memory is saved; [`MmioTransport::restore`] rebuilds it around a device freshly built
//! from the same configuration and, if it was active, activates it again without the
//! driver's help. See [`crate::snapshot`].
//!
//! At VMM exit dropping the [`DeviceThread`] stops and joins it; dropping the transport
//! closes the disk file (its `flock` is released) and the TAP fd (a TAP created by Kiln
//! disappears with it, a pre-existing persistent one stays).

pub mod block;
mod chain;
pub mod mmio;
pub mod net;
pub mod queue;
pub mod rng;
mod subscriber;
pub mod vsock;
mod worker;

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use crate::irq::IrqTrigger;
use crate::snapshot::{DeviceState, StateError};

pub use mmio::{MmioState, MmioTransport};
pub use subscriber::VirtioSubscriber;
pub use worker::{DeviceThread, ThreadSetup};

/// Guest memory as the virtio devices hold it.
pub type Mem = Arc<GuestMemoryMmap<()>>;

/// Device status bits (virtio 1.2 §2.1), as Kiln names them.
pub mod status {
    use virtio_bindings::virtio_config as c;
    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = c::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = c::VIRTIO_CONFIG_S_DRIVER;
    /// The driver is ready: the device may process queues.
    pub const DRIVER_OK: u32 = c::VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = c::VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = c::VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The driver gave up on the device.
    pub const FAILED: u32 = c::VIRTIO_CONFIG_S_FAILED;
}

/// Feature bits shared by every device type (virtio 1.2 §6), as masks.
pub mod features {
    use virtio_bindings::{virtio_config as c, virtio_ring as r};
    /// Indirect descriptors (not offered by Kiln).
    pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << r::VIRTIO_RING_F_INDIRECT_DESC;
    /// `used_event` / `avail_event` notification suppression.
    pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << r::VIRTIO_RING_F_EVENT_IDX;
    /// Compliance with virtio 1.x (mandatory for the modern MMIO layout).
    pub const VIRTIO_F_VERSION_1: u64 = 1 << c::VIRTIO_F_VERSION_1;
}

/// virtio device ID of a network card (§5.1).
pub const TYPE_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// virtio device ID of a block device (§5.2).
pub const TYPE_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// virtio device ID of an entropy device (§5.4).
pub const TYPE_RNG: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_RNG;

/// Errors from building or activating virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The disk image could not be opened.
    #[error("cannot open disk image {path}: {source}{hint}")]
    DiskOpen {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
        /// What to do about it (starts with "; " when present).
        hint: &'static str,
    },
    /// Another process holds a conflicting lock on the disk image.
    #[error(
        "disk image {path} is in use by another process (flock); stop the other VM or \
         open the image read-only everywhere"
    )]
    DiskLocked {
        /// The image path.
        path: PathBuf,
    },
    /// Reading the disk image's size failed.
    #[error("cannot get the size of disk image {path}: {source}")]
    DiskSize {
        /// The image path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The block device `id` is longer than the 20 bytes virtio allows.
    #[error("block device id {0:?} is longer than 20 bytes")]
    BlockIdTooLong(String),
    /// A TAP interface name is empty, too long (15 bytes max) or has invalid characters.
    #[error("invalid TAP interface name {0:?}: use 1-15 characters without '/' or NUL")]
    TapName(String),
    /// Opening or configuring the TAP failed.
    #[error("cannot set up TAP interface {name}: {op}: {source}{hint}")]
    Tap {
        /// The interface name.
        name: String,
        /// The step that failed.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
        /// What to do about it (starts with "; " when present).
        hint: &'static str,
    },
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    /// A device declared an invalid queue size.
    #[error("invalid virtio queue maximum size {0}")]
    QueueMaxSize(u16),
    /// Activation found a queue that is not ready or not valid.
    #[error("virtio queue {0} is not ready or invalid at DRIVER_OK")]
    QueueInvalid(usize),
    /// The driver readied a different number of queues than the device has.
    #[error("{device} needs exactly {want} queue(s)")]
    QueueCount {
        /// The device.
        device: &'static str,
        /// How many it has.
        want: usize,
    },
    /// The TAP refused the offloads the driver negotiated.
    #[error("virtio-net: TUNSETOFFLOAD {flags:#x}: {source}")]
    Offload {
        /// The `TUN_F_*` flags.
        flags: u32,
        /// Why.
        source: std::io::Error,
    },
    /// A device thread could not be started.
    #[error("cannot start a device thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A device thread's set-up (e.g. its seccomp filter) failed.
    #[error("device thread set-up failed: {0}")]
    ThreadSetup(#[source] std::io::Error),
    /// A device thread's event loop could not be built.
    #[error("cannot build a device thread's event loop: {0}")]
    EventLoop(#[source] event_manager::Error),
    /// A device's rate limiter (its timerfd) could not be created.
    #[error("cannot create a rate limiter's timerfd: {0}")]
    RateLimiter(#[source] std::io::Error),
    /// The disk path is not a regular file or a block device.
    #[error("disk image {path} is {what}, not a regular file or a block device: give an image file (e.g. made with truncate -s 1G disk.img) or a block device")]
    DiskNotAFile {
        /// The image path.
        path: PathBuf,
        /// What it is instead ("a directory", "a FIFO (named pipe)", ...).
        what: &'static str,
    },
}

/// A device's interrupt: the MMIO `InterruptStatus` register plus the line it raises.
///
/// Shared between the transport (which reads and acknowledges the status) and the
/// activated device (which sets bits and triggers).
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irq: Arc<dyn IrqTrigger>,
}

/// `InterruptStatus` bit 0: a used buffer was added (§4.2.2).
pub const INT_USED_RING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// `InterruptStatus` bit 1: the configuration space changed (§4.2.2).
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

impl Interrupt {
    /// A new interrupt with a clear status, raising `irq`.
    pub fn new(irq: Arc<dyn IrqTrigger>) -> Self {
        Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq,
        }
    }

    /// Sets `bits` in `InterruptStatus` and raises the line (errors are logged).
    pub fn signal(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        if let Err(e) = self.irq.trigger() {
            log::error!("virtio: cannot raise interrupt: {e}");
        }
    }

    /// Signals a used-buffer notification.
    pub fn signal_used(&self) {
        self.signal(INT_USED_RING);
    }

    /// The current `InterruptStatus`.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// `InterruptACK`: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Puts the device in `DEVICE_NEEDS_RESET` (§2.1.2) and raises a configuration-change
    /// interrupt. Returns false when it already was (the caller logs only the first time).
    pub fn set_needs_reset(&self) -> bool {
        let first = !self.needs_reset.swap(true, Ordering::SeqCst);
        if first {
            self.signal(INT_CONFIG);
        }
        first
    }

    /// Whether the device asked for a reset since the last one.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// A virtio device model behind [`MmioTransport`].
///
/// Queue and backend processing runs on the device's own thread through
/// [`VirtioSubscriber`]; activation and reset come from the transport's status register.
/// The identity, features and configuration space are read once, when the transport is
/// built, so register reads never wait for the device.
pub trait VirtioDevice: Send {
    /// The virtio device ID (§5).
    fn device_type(&self) -> u32;
    /// The maximum size of each queue (their number is the slice length).
    fn queue_max_sizes(&self) -> &[u16];
    /// The features the device offers.
    fn features(&self) -> u64;
    /// The features the driver accepted (a subset of [`VirtioDevice::features`] that
    /// includes `VIRTIO_F_VERSION_1`), at FEATURES_OK.
    fn ack_features(&mut self, features: u64);
    /// The device configuration space (§4.2.2 offset 0x100 on); Kiln's devices have no
    /// driver-writable fields, so the transport ignores configuration writes.
    fn config_space(&self) -> &[u8];
    /// Starts the device at DRIVER_OK with validated, ready queues.
    fn activate(
        &mut self,
        mem: Mem,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), Error>;
    /// Returns the device to its pre-activation state (drops queues and memory).
    fn reset(&mut self);
    /// Handles a driver notification of queue `index`: one bounded pass. Returns true
    /// when work is left for another pass (the caller comes back after other events).
    fn process_queue(&mut self, index: usize) -> bool;
    /// Host fds the device wants watched (e.g. a TAP); index = position in the list.
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// What to watch on backend fd `index` right now (empty: not watched).
    fn backend_interest(&self, _index: usize) -> EventSet {
        EventSet::empty()
    }
    /// Handles readiness `events` on backend fd `index` (one bounded pass; a device that
    /// is not active ignores them). Returns true when queue work is left for another
    /// pass (every queue is then signalled again).
    fn process_backend(&mut self, _index: usize, _events: EventSet) -> bool {
        false
    }
    /// The device's own state for a snapshot (see [`crate::snapshot`]); the default: the
    /// device cannot be snapshotted. Called with the device locked, between passes.
    fn device_state(&self) -> Result<DeviceState, StateError> {
        Err(StateError::Unsupported(self.device_type()))
    }
    /// The ring positions of the active device's queues, by queue index, for a
    /// snapshot: where the next pass resumes. `None` when the device is not active (or
    /// cannot tell, which makes a snapshot of an active device fail).
    fn queue_positions(&self) -> Option<Vec<QueuePosition>> {
        None
    }
    /// Applies a saved [`VirtioDevice::device_state`] to a device freshly built from the
    /// same configuration, before it is activated (by
    /// [`MmioTransport::restore`]) with queues at the saved positions.
    fn restore_device_state(&mut self, _state: &DeviceState) -> Result<(), StateError> {
        Err(StateError::Unsupported(self.device_type()))
    }
}

/// Where an active queue's next pass resumes (virtio-queue's `next_avail`/`next_used`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePosition {
    /// The next available-ring entry the device will pop.
    pub next_avail: u16,
    /// The next used-ring entry the device will fill.
    pub next_used: u16,
}

impl QueuePosition {
    /// The position of `q`.
    pub fn of(q: &Queue) -> Self {
        use virtio_queue::QueueT;
        Self {
            next_avail: q.next_avail(),
            next_used: q.next_used(),
        }
    }
}

/// Whether `features` has every bit of `bit`.
/// The one queue of a single-queue device (virtio-blk, virtio-rng) from what
/// activation hands over, or the error naming the device.
pub(crate) fn single_queue(mut queues: Vec<Queue>, device: &'static str) -> Result<Queue, Error> {
    queues
        .pop()
        .filter(|_| queues.is_empty())
        .ok_or(Error::QueueCount { device, want: 1 })
}

pub(crate) fn has(features: u64, bit: u64) -> bool {
    features & bit == bit
}

/// Copies the slice of `config` at `offset` into `data` (zeros past the end).
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off >= config.len() {
        return;
    }
    let n = data.len().min(config.len() - off);
    data[..n].copy_from_slice(&config[off..off + n]);
}

#[cfg(test)]
pub(crate) mod test_utils {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use vm_memory::GuestAddress;

    /// An `IrqTrigger` that counts.
    #[derive(Default)]
    pub struct CountingIrq(pub AtomicUsize);
    impl IrqTrigger for CountingIrq {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    impl CountingIrq {
        pub fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// 16 MiB of guest memory at 0.
    pub fn mem() -> Mem {
        Arc::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap())
    }

    /// Writes the chain `descs` = `(addr, len, write)` at table index `start` (linked
    /// in order) and publishes its head in the available ring.
    pub fn add_chain(
        vq: &MockSplitQueue<GuestMemoryMmap<()>>,
        start: u16,
        descs: &[(u64, u32, bool)],
    ) {
        let n = descs.len();
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, w))| {
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < n {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                RawDescriptor::from(SplitDescriptor::new(addr, len, flags, start + i as u16 + 1))
            })
            .collect();
        vq.add_desc_chains(&raw, start).unwrap();
    }

    /// Used-ring entry `i` as `(id, len)`.
    pub fn used(vq: &MockSplitQueue<GuestMemoryMmap<()>>, i: usize) -> (u32, u32) {
        let e = vq.used().ring().ref_at(i).unwrap().load();
        (e.id(), e.len())
    }

    /// The used ring's `idx`.
    pub fn used_idx(vq: &MockSplitQueue<GuestMemoryMmap<()>>) -> u16 {
        vq.used().idx().load()
    }

    pub use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    pub use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    pub use virtio_queue::mock::MockSplitQueue;
}
