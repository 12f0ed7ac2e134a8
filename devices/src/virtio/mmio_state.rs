//! Snapshot and restore of a virtio-mmio transport and the device behind it.
//!
//! The transport's registers, its copies of the queue configuration and the interrupt
//! status are saved here; the device model adds its own state
//! ([`VirtioDevice::device_state`]) and, when active, the live ring positions of its
//! queues ([`VirtioDevice::queue_positions`]): the transport's queue copies do not
//! advance after activation.
//!
//! A device that was active is activated again by [`MmioTransport::restore`] with its
//! queues at the saved positions, without the driver negotiating anything: the guest
//! does not know it was restored.

use std::sync::{Arc, MutexGuard};

use log::debug;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use super::{MmioTransport, QueueRegs};
use crate::irq::IrqTrigger;
use crate::snapshot::{DeviceState, StateError};
use crate::virtio::{features, has, status, Mem, VirtioDevice};
use util::sync::lock;

/// A virtio-mmio transport with its device, as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// The virtio device type (§5).
    pub device_type: u32,
    /// The features the device offered.
    pub device_features: u64,
    /// The `Status` register as the transport keeps it (a failed activation left
    /// `DRIVER_OK | DEVICE_NEEDS_RESET` in it).
    pub status: u32,
    /// `DeviceFeaturesSel`.
    pub device_features_sel: u32,
    /// `DriverFeaturesSel`.
    pub driver_features_sel: u32,
    /// The features the driver wrote (negotiated once `status` has FEATURES_OK).
    pub driver_features: u64,
    /// `QueueSel`.
    pub queue_sel: u32,
    /// `ConfigGeneration`.
    pub config_generation: u32,
    /// `InterruptStatus`.
    pub interrupt_status: u32,
    /// The device asked for a reset (`DEVICE_NEEDS_RESET`, §2.1.2).
    pub needs_reset: bool,
    /// The device was activated (DRIVER_OK accepted).
    pub activated: bool,
    /// Each queue, by index; ring positions are the device's live ones when activated.
    pub queues: Vec<VirtqueueState>,
    /// The device model's own state.
    pub device: DeviceState,
}

/// One virtqueue: virtio-queue's `QueueState` (mirrored: it has no serde support) and
/// the queue registers the driver wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VirtqueueState {
    /// The maximum size the device offers.
    pub max_size: u16,
    /// The next available-ring entry the device pops.
    pub next_avail: u16,
    /// The next used-ring entry the device fills.
    pub next_used: u16,
    /// `VIRTIO_RING_F_EVENT_IDX` is in use.
    pub event_idx_enabled: bool,
    /// The size the driver chose.
    pub size: u16,
    /// `QueueReady`.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// The queue registers as the driver wrote them (applied at `QueueReady = 1`).
    pub regs: QueueRegsState,
}

/// The queue registers the driver wrote (`QueueNum`, `QueueDesc`, `QueueDriver`,
/// `QueueDevice`), kept apart from the queue until `QueueReady = 1`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegsState {
    /// `QueueNum`.
    pub num: u32,
    /// `QueueDescLow/High`.
    pub desc: u64,
    /// `QueueDriverLow/High`.
    pub driver: u64,
    /// `QueueDeviceLow/High`.
    pub device: u64,
}

impl VirtqueueState {
    fn new(q: QueueState, regs: QueueRegs) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            regs: QueueRegsState {
                num: regs.num,
                desc: regs.desc,
                driver: regs.driver,
                device: regs.device,
            },
        }
    }

    /// virtio-queue's view of it.
    pub fn queue_state(&self) -> QueueState {
        QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        }
    }

    fn regs(&self) -> QueueRegs {
        QueueRegs {
            num: self.regs.num,
            desc: self.regs.desc,
            driver: self.regs.driver,
            device: self.regs.device,
        }
    }
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// Captures the transport's and the device's state, and returns it with the device
    /// model still locked: its thread cannot run a queue pass (which would move ring
    /// positions and write guest memory) until the guard is dropped. Keep the guard
    /// until guest memory has been saved. Call it while the vCPUs are paused.
    ///
    /// Fails when the device has no snapshot support, or when it is active and cannot
    /// report its ring positions.
    pub fn save_state(&self) -> Result<(MmioState, MutexGuard<'_, D>), StateError> {
        let dev = lock(&self.device);
        let positions = match (self.activated, dev.queue_positions()) {
            (false, _) => None,
            (true, Some(p)) if p.len() == self.queues.len() => Some(p),
            (true, _) => {
                return Err(StateError::QueuePositions {
                    device_type: self.device_type,
                })
            }
        };
        let mut queues = Vec::with_capacity(self.queues.len());
        for (i, (q, r)) in self.queues.iter().zip(&self.regs).enumerate() {
            let mut s = VirtqueueState::new(q.state(), *r);
            if let Some(p) = positions.as_ref().and_then(|p| p.get(i)) {
                s.next_avail = p.next_avail;
                s.next_used = p.next_used;
            }
            queues.push(s);
        }
        let state = MmioState {
            device_type: self.device_type,
            device_features: self.device_features,
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
            activated: self.activated,
            queues,
            device: dev.device_state()?,
        };
        Ok((state, dev))
    }

    /// [`MmioTransport::save_state`] without keeping the device locked: for callers
    /// that have stopped the device's thread themselves (and for tests).
    pub fn state(&self) -> Result<MmioState, StateError> {
        self.save_state().map(|(s, _)| s)
    }

    /// Rebuilds a transport from `state` around `device`, freshly built from the same
    /// configuration (the disk reopened, a new TAP), over guest memory `mem` restored
    /// from the snapshot, raising `irq`.
    ///
    /// The registers, queues and interrupt status are the saved ones. A device that was
    /// active is activated again with its queues at the saved ring positions (the driver
    /// negotiates nothing again), every queue is kicked once (a notification that was
    /// pending in an old ioeventfd is not lost) and, when `InterruptStatus` is not zero,
    /// the line is raised once more (an interrupt in flight is not lost; at worst the
    /// driver sees one with nothing new). The queue and activation eventfds are new:
    /// register [`MmioTransport::ioevents`] and start [`MmioTransport::worker`] as for
    /// [`MmioTransport::new`].
    ///
    /// Fails, naming what differs, when the device does not match the saved one (type,
    /// offered features, queues, its own state such as a disk's capacity) or the state
    /// is inconsistent.
    pub fn restore(
        device: D,
        mem: Mem,
        irq: Arc<dyn IrqTrigger>,
        state: &MmioState,
    ) -> Result<Self, StateError> {
        check_device(&device, state)?;
        let mut t = Self::new(device, mem, irq)?;
        {
            let mut dev = lock(&t.device);
            dev.restore_device_state(&state.device)?;
            if state.status & status::FEATURES_OK != 0 {
                dev.ack_features(state.driver_features);
            }
            t.config = dev.config_space().to_vec();
        }
        t.queues = rebuild_queues(state, &t.mem)?;
        t.regs = state.queues.iter().map(VirtqueueState::regs).collect();
        t.status = state.status;
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.driver_features = state.driver_features;
        t.queue_sel = state.queue_sel;
        t.config_generation = state.config_generation;
        t.interrupt.status.store(state.interrupt_status, SEQ);
        t.interrupt.needs_reset.store(state.needs_reset, SEQ);
        if state.activated {
            t.reactivate()?;
        }
        if state.interrupt_status != 0 {
            if let Err(e) = t.interrupt.irq.trigger() {
                log::warn!("virtio-mmio: cannot raise the restored device's interrupt: {e}");
            }
        }
        debug!(
            "virtio-mmio: device type {} restored (status {:#x}, active: {})",
            t.device_type, t.status, t.activated
        );
        Ok(t)
    }

    /// Activates the device with the restored queues, as DRIVER_OK did before.
    fn reactivate(&mut self) -> Result<(), StateError> {
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                return Err(StateError::Inconsistent(
                    "an active device has a queue not ready",
                ));
            }
            queues.push(
                Queue::try_from(q.state()).map_err(|source| StateError::Queue { index, source })?,
            );
        }
        lock(&self.device).activate(self.mem.clone(), queues, self.interrupt.clone())?;
        self.activated = true;
        self.kick_event_loop();
        for e in &self.queue_evts {
            let _ = e.write(1);
        }
        Ok(())
    }
}

const SEQ: std::sync::atomic::Ordering = std::sync::atomic::Ordering::SeqCst;

/// Checks that `device` is the saved device and that the saved state holds together.
fn check_device<D: VirtioDevice>(device: &D, s: &MmioState) -> Result<(), StateError> {
    let actual = device.device_type();
    if s.device_type != actual {
        return Err(StateError::DeviceType {
            saved: s.device_type,
            actual,
        });
    }
    let offered = device.features();
    if s.device_features != offered {
        return Err(StateError::Features {
            device_type: actual,
            saved: s.device_features,
            actual: offered,
        });
    }
    let features_ok = s.status & status::FEATURES_OK != 0;
    let f = s.driver_features;
    if features_ok && (f & !offered != 0 || !has(f, features::VIRTIO_F_VERSION_1)) {
        return Err(StateError::DriverFeatures {
            device_type: actual,
            features: f,
        });
    }
    if s.activated && (!features_ok || s.status & status::DRIVER_OK == 0) {
        return Err(StateError::Inconsistent(
            "an active device without FEATURES_OK and DRIVER_OK",
        ));
    }
    let sizes = device.queue_max_sizes();
    if s.queues.len() != sizes.len() {
        return Err(StateError::QueueCount {
            device_type: actual,
            saved: s.queues.len(),
            actual: sizes.len(),
        });
    }
    for (index, (q, &max)) in s.queues.iter().zip(sizes).enumerate() {
        if q.max_size != max {
            return Err(StateError::QueueMaxSize {
                index,
                saved: q.max_size,
                actual: max,
            });
        }
    }
    Ok(())
}

/// The transport's queues from the saved ones; a ready queue must lie in `mem`.
fn rebuild_queues(s: &MmioState, mem: &Mem) -> Result<Vec<Queue>, StateError> {
    let mut out = Vec::with_capacity(s.queues.len());
    for (index, saved) in s.queues.iter().enumerate() {
        let q = Queue::try_from(saved.queue_state())
            .map_err(|source| StateError::Queue { index, source })?;
        if q.ready() && !q.is_valid(&**mem) {
            return Err(StateError::QueueOutsideMemory { index });
        }
        out.push(q);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "mmio_state_tests.rs"]
mod tests;
