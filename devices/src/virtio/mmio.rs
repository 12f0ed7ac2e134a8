//! The virtio-mmio transport, modern register layout (version 2, virtio 1.2 §4.2.2).

use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, error, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{
    features, has, read_config_bytes, status, Error, Interrupt, Mem, VirtioDevice,
    VirtioSubscriber, INT_CONFIG,
};
use crate::bus::BusDevice;
use crate::irq::IrqTrigger;
use util::sync::lock;

/// `MagicValue`: "virt" little-endian.
pub const MMIO_MAGIC: u32 = 0x7472_6976;
/// `Version` of the modern (non-legacy) layout.
pub const MMIO_VERSION: u32 = 2;
/// `VendorID` Kiln reports: "KILN" as little-endian bytes.
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"KILN");
/// Size of one virtio-mmio slot.
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// Offset of `QueueNotify` (where ioeventfds are registered).
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;
/// Offset of the device configuration space.
pub const CONFIG_OFFSET: u64 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_CONFIG as u64;

/// Register offsets (virtio-bindings names them; Kiln matches on u64 offsets).
mod reg {
    use virtio_bindings::virtio_mmio as m;
    pub const MAGIC: u64 = m::VIRTIO_MMIO_MAGIC_VALUE as u64;
    pub const VERSION: u64 = m::VIRTIO_MMIO_VERSION as u64;
    pub const DEVICE_ID: u64 = m::VIRTIO_MMIO_DEVICE_ID as u64;
    pub const VENDOR_ID: u64 = m::VIRTIO_MMIO_VENDOR_ID as u64;
    pub const DEVICE_FEATURES: u64 = m::VIRTIO_MMIO_DEVICE_FEATURES as u64;
    pub const DEVICE_FEATURES_SEL: u64 = m::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
    pub const DRIVER_FEATURES: u64 = m::VIRTIO_MMIO_DRIVER_FEATURES as u64;
    pub const DRIVER_FEATURES_SEL: u64 = m::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
    pub const QUEUE_SEL: u64 = m::VIRTIO_MMIO_QUEUE_SEL as u64;
    pub const QUEUE_NUM_MAX: u64 = m::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
    pub const QUEUE_NUM: u64 = m::VIRTIO_MMIO_QUEUE_NUM as u64;
    pub const QUEUE_READY: u64 = m::VIRTIO_MMIO_QUEUE_READY as u64;
    pub const QUEUE_NOTIFY: u64 = m::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
    pub const INTERRUPT_STATUS: u64 = m::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
    pub const INTERRUPT_ACK: u64 = m::VIRTIO_MMIO_INTERRUPT_ACK as u64;
    pub const STATUS: u64 = m::VIRTIO_MMIO_STATUS as u64;
    pub const QUEUE_DESC_LOW: u64 = m::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
    pub const QUEUE_DESC_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
    pub const QUEUE_DRIVER_LOW: u64 = m::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
    pub const QUEUE_DRIVER_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
    pub const QUEUE_DEVICE_LOW: u64 = m::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
    pub const QUEUE_DEVICE_HIGH: u64 = m::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
    pub const SHM_SEL: u64 = m::VIRTIO_MMIO_SHM_SEL as u64;
    pub const SHM_LEN_LOW: u64 = m::VIRTIO_MMIO_SHM_LEN_LOW as u64;
    pub const SHM_LEN_HIGH: u64 = m::VIRTIO_MMIO_SHM_LEN_HIGH as u64;
    pub const SHM_BASE_LOW: u64 = m::VIRTIO_MMIO_SHM_BASE_LOW as u64;
    pub const SHM_BASE_HIGH: u64 = m::VIRTIO_MMIO_SHM_BASE_HIGH as u64;
    pub const CONFIG_GENERATION: u64 = m::VIRTIO_MMIO_CONFIG_GENERATION as u64;
}

/// What the driver wrote for one queue; applied to the `Queue` at `QueueReady = 1`.
#[derive(Debug, Default, Clone, Copy)]
struct QueueRegs {
    num: u32,
    desc: u64,
    driver: u64,
    device: u64,
}

fn set_low(v: &mut u64, low: u32) {
    *v = (*v & !0xffff_ffff) | u64::from(low);
}
fn set_high(v: &mut u64, high: u32) {
    *v = (*v & 0xffff_ffff) | (u64::from(high) << 32);
}

/// A virtio device behind the MMIO register block (one 4 KiB slot).
///
/// The MMIO bus owns it (as a [`crate::bus::SharedDevice`]); the device model inside is
/// shared with the device's thread ([`MmioTransport::worker`]). The device's identity,
/// features and configuration space are copied here once, so register reads never
/// wait for a queue pass.
pub struct MmioTransport<D: VirtioDevice> {
    device: Arc<Mutex<D>>,
    device_type: u32,
    device_features: u64,
    config: Vec<u8>,
    mem: Mem,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    regs: Vec<QueueRegs>,
    queue_evts: Vec<EventFd>,
    activate_evt: EventFd,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Wraps `device`; `irq` is the line its interrupts raise.
    pub fn new(device: D, mem: Mem, irq: Arc<dyn IrqTrigger>) -> Result<Self, Error> {
        let mut queues = Vec::new();
        let mut queue_evts = Vec::new();
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|_| Error::QueueMaxSize(max))?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?);
        }
        Ok(Self {
            regs: vec![QueueRegs::default(); queues.len()],
            queues,
            queue_evts,
            activate_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?,
            device_type: device.device_type(),
            device_features: device.features(),
            config: device.config_space().to_vec(),
            device: Arc::new(Mutex::new(device)),
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The ioeventfds to register with KVM: `(guest address, datamatch, eventfd)` for each
    /// queue, given the slot's `base` address (datamatch = queue index, 4-byte write).
    pub fn ioevents(&self, base: u64) -> Vec<(u64, u32, &EventFd)> {
        self.queue_evts
            .iter()
            .enumerate()
            .map(|(i, e)| (base + QUEUE_NOTIFY_OFFSET, i as u32, e))
            .collect()
    }

    /// The per-queue notification eventfds, by queue index.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// Signalled after every activation or reset, so the event loop re-syncs what it watches.
    pub fn activate_evt(&self) -> &EventFd {
        &self.activate_evt
    }

    /// Whether the driver set DRIVER_OK and the device accepted its queues.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device model (locked: waits for a queue pass in progress).
    pub fn device(&self) -> MutexGuard<'_, D> {
        lock(&self.device)
    }

    /// The subscriber that runs this device's queues and backend, for a
    /// [`super::DeviceThread`] (or any event loop).
    pub fn worker(&self) -> Result<VirtioSubscriber<D>, Error> {
        let evts = self
            .queue_evts
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::EventFd)?;
        let activate = self.activate_evt.try_clone().map_err(Error::EventFd)?;
        Ok(VirtioSubscriber::new(self.device.clone(), evts, activate))
    }

    /// Runs, on the calling thread, one pass of every queue notified since the last
    /// call (for tests and fuzzing; a running VM uses [`MmioTransport::worker`]).
    /// Returns the number of passes.
    pub fn run_queues(&mut self) -> usize {
        if !self.activated {
            return 0;
        }
        let mut dev = lock(&self.device);
        let mut passes = 0;
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if evt.read().is_ok() {
                dev.process_queue(i);
                passes += 1;
            }
        }
        passes
    }

    /// The current device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Tells the driver the configuration space changed (bumps `ConfigGeneration`).
    pub fn notify_config_change(&mut self) {
        self.config = lock(&self.device).config_space().to_vec();
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.signal(INT_CONFIG);
    }

    fn selected(&mut self) -> Option<(&mut Queue, &mut QueueRegs)> {
        let i = self.queue_sel as usize;
        match (self.queues.get_mut(i), self.regs.get_mut(i)) {
            (Some(q), Some(r)) => Some((q, r)),
            _ => None,
        }
    }

    fn reset(&mut self) {
        if self.activated || self.status != 0 {
            debug!("virtio-mmio: device type {} reset", self.device_type);
        }
        lock(&self.device).reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.regs.iter_mut().for_each(|r| *r = QueueRegs::default());
        self.interrupt.clear();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        let was_active = std::mem::take(&mut self.activated);
        if was_active {
            self.kick_event_loop();
        }
    }

    fn kick_event_loop(&self) {
        if let Err(e) = self.activate_evt.write(1) {
            error!("virtio-mmio: cannot signal the event loop: {e}");
        }
    }

    /// Applies the driver's queue registers and checks the queue (QueueReady = 1).
    fn ready_queue(&mut self, i: usize) -> bool {
        let mem = self.mem.clone();
        let (Some(q), Some(r)) = (self.queues.get_mut(i), self.regs.get(i).copied()) else {
            return false;
        };
        let num = u16::try_from(r.num).unwrap_or(0);
        let res = q
            .try_set_size(num)
            .and_then(|_| q.try_set_desc_table_address(GuestAddress(r.desc)))
            .and_then(|_| q.try_set_avail_ring_address(GuestAddress(r.driver)))
            .and_then(|_| q.try_set_used_ring_address(GuestAddress(r.device)));
        if let Err(e) = res {
            warn!(
                "virtio-mmio: queue {i} not enabled: {e} (size {}, max {})",
                r.num,
                q.max_size()
            );
            return false;
        }
        q.set_ready(true);
        if !q.is_valid(&*mem) {
            warn!("virtio-mmio: queue {i} not enabled: rings outside guest memory");
            q.set_ready(false);
            return false;
        }
        true
    }

    fn negotiate(&mut self) -> bool {
        let offered = self.device_features;
        let f = self.driver_features;
        if !has(f, features::VIRTIO_F_VERSION_1) {
            warn!("virtio-mmio: driver did not accept VIRTIO_F_VERSION_1; FEATURES_OK refused");
            return false;
        }
        if f & !offered != 0 {
            warn!(
                "virtio-mmio: driver accepted features {:#x} not offered; FEATURES_OK refused",
                f & !offered
            );
            return false;
        }
        lock(&self.device).ack_features(f);
        true
    }

    fn activate(&mut self) -> bool {
        let event_idx = has(self.driver_features, features::VIRTIO_RING_F_EVENT_IDX);
        for (i, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() || !q.is_valid(&*self.mem) {
                error!("virtio-mmio: {}", Error::QueueInvalid(i));
                return false;
            }
            q.set_event_idx(event_idx);
        }
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, q) in self.queues.iter().enumerate() {
            match Queue::try_from(q.state()) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    error!("virtio-mmio: queue {i}: {e}");
                    return false;
                }
            }
        }
        let res = lock(&self.device).activate(self.mem.clone(), queues, self.interrupt.clone());
        match res {
            Ok(()) => {
                self.activated = true;
                self.kick_event_loop();
                // Handle buffers the driver may have queued before DRIVER_OK.
                for e in &self.queue_evts {
                    let _ = e.write(1);
                }
                true
            }
            Err(e) => {
                error!("virtio-mmio: {e}");
                false
            }
        }
    }

    fn write_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            self.reset();
            return;
        }
        let old = self.status & !DEVICE_NEEDS_RESET;
        let new = v & !DEVICE_NEEDS_RESET;
        if new == old {
            return;
        }
        if new & FAILED != 0 {
            warn!("virtio-mmio: driver set FAILED (status {v:#x})");
            self.status |= FAILED;
            return;
        }
        if new & old != old {
            warn!("virtio-mmio: status {v:#x} clears bits of {old:#x} without reset; ignored");
            return;
        }
        let added = new & !old;
        let expect = match old {
            0 => ACKNOWLEDGE,
            x if x == ACKNOWLEDGE => DRIVER,
            x if x == ACKNOWLEDGE | DRIVER => FEATURES_OK,
            x if x == ACKNOWLEDGE | DRIVER | FEATURES_OK => DRIVER_OK,
            _ => 0,
        };
        if added != expect {
            warn!("virtio-mmio: status write {v:#x} out of order (status {old:#x}); ignored");
            return;
        }
        match added {
            FEATURES_OK if !self.negotiate() => return,
            DRIVER_OK if !self.activate() => {
                self.status |= DRIVER_OK | DEVICE_NEEDS_RESET;
                self.interrupt.signal(INT_CONFIG);
                return;
            }
            _ => {}
        }
        self.status |= added;
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset {
            reg::MAGIC => MMIO_MAGIC,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device_type,
            reg::VENDOR_ID => VENDOR_ID,
            reg::DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            reg::QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS if self.interrupt.needs_reset() => self.status | status::DEVICE_NEEDS_RESET,
            reg::STATUS => self.status,
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX, // no shared memory regions
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => u32::MAX,
            reg::CONFIG_GENERATION => self.config_generation,
            _ => {
                warn!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        let driver_ok = self.status & status::DRIVER_OK != 0;
        let features_ok = self.status & status::FEATURES_OK != 0;
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = v,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            reg::DRIVER_FEATURES => {
                if features_ok || self.status & status::DRIVER == 0 {
                    warn!("virtio-mmio: DriverFeatures write outside negotiation; ignored");
                    return;
                }
                match self.driver_features_sel {
                    0 => set_low(&mut self.driver_features, v),
                    1 => set_high(&mut self.driver_features, v),
                    s => debug!("virtio-mmio: DriverFeatures word {s} ignored"),
                }
            }
            reg::QUEUE_SEL => self.queue_sel = v,
            reg::QUEUE_NOTIFY => match self.queue_evts.get(v as usize) {
                Some(e) => {
                    if let Err(err) = e.write(1) {
                        error!("virtio-mmio: cannot signal queue {v}: {err}");
                    }
                }
                None => warn!("virtio-mmio: notify of nonexistent queue {v}"),
            },
            reg::INTERRUPT_ACK => self.interrupt.ack(v),
            reg::STATUS => self.write_status(v),
            reg::SHM_SEL => {}
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                if driver_ok || !features_ok {
                    warn!("virtio-mmio: queue register {offset:#x} written outside setup; ignored");
                    return;
                }
                let sel = self.queue_sel as usize;
                let Some((q, r)) = self.selected() else {
                    warn!("virtio-mmio: queue register write for nonexistent queue {sel}");
                    return;
                };
                if offset != reg::QUEUE_READY && q.ready() {
                    warn!("virtio-mmio: queue {sel} reconfigured while ready; ignored");
                    return;
                }
                match offset {
                    reg::QUEUE_NUM => r.num = v,
                    reg::QUEUE_DESC_LOW => set_low(&mut r.desc, v),
                    reg::QUEUE_DESC_HIGH => set_high(&mut r.desc, v),
                    reg::QUEUE_DRIVER_LOW => set_low(&mut r.driver, v),
                    reg::QUEUE_DRIVER_HIGH => set_high(&mut r.driver, v),
                    reg::QUEUE_DEVICE_LOW => set_low(&mut r.device, v),
                    reg::QUEUE_DEVICE_HIGH => set_high(&mut r.device, v),
                    _ => match v {
                        0 => q.set_ready(false),
                        1 => {
                            self.ready_queue(sel);
                        }
                        _ => warn!("virtio-mmio: QueueReady value {v} ignored"),
                    },
                }
            }
            _ => warn!("virtio-mmio: write of read-only or unknown register {offset:#x}"),
        }
    }
}

impl<D: VirtioDevice> BusDevice for MmioTransport<D> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            if offset >= MMIO_SLOT_SIZE {
                warn!("virtio-mmio: read at {offset:#x} outside the slot");
                data.fill(0);
                return;
            }
            read_config_bytes(&self.config, offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || offset & 3 != 0 {
            warn!(
                "virtio-mmio: {}-byte read at {offset:#x}: registers need aligned 4-byte access",
                data.len()
            );
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if offset >= MMIO_SLOT_SIZE {
                warn!("virtio-mmio: write at {offset:#x} outside the slot");
                return;
            }
            // No device of Kiln's has a driver-writable configuration field.
            warn!("virtio-mmio: configuration write at {offset:#x} ignored (read-only)");
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            warn!(
                "virtio-mmio: {}-byte write at {offset:#x}: registers need 4-byte access",
                data.len()
            );
            return;
        };
        if offset & 3 != 0 {
            warn!("virtio-mmio: unaligned register write at {offset:#x}");
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[path = "mmio_state.rs"]
mod state;
pub use state::{MmioState, QueueRegsState, VirtqueueState};

#[cfg(test)]
#[path = "mmio_tests.rs"]
mod tests;
