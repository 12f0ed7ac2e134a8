//! [`VmHandle`]: what another thread (the API server) may do to a running VM: pause and
//! resume it, press Ctrl+Alt+Del, swap a drive's backing file, change rate limits, read
//! the metrics and stop it. The VM's owner keeps running it; the handle only holds
//! shared references to the parts it touches.

use std::path::Path;
use std::sync::{Arc, Mutex};

use devices::legacy::I8042;
use devices::metrics::{
    BlockMetrics, BlockMetricsSnapshot, NetMetrics, NetMetricsSnapshot, RngMetrics,
    RngMetricsSnapshot,
};
use devices::rate_limiter::RateLimiterConfig;
use devices::virtio::block::Block;
use devices::virtio::net::{tap::Tap, Net};
use devices::virtio::rng::Rng;
use devices::virtio::vsock::Vsock;
use devices::virtio::MmioTransport;
use serde::Serialize;

use crate::snapshot::{SnapshotError, SnapshotKind, SnapshotSource};
use crate::vcpu_control::{PauseError, VcpuControl, VcpuMetricsSnapshot};
use crate::StopHandle;

/// Errors from changing a device of a running VM.
#[derive(Debug, thiserror::Error)]
pub enum DeviceUpdateError {
    /// No drive or interface at that index.
    #[error("the VM has no {what} number {index}")]
    NoSuchDevice {
        /// "drive" or "network interface".
        what: &'static str,
        /// The index asked for.
        index: usize,
    },
    /// The device refused the change (the new file cannot be opened, …).
    #[error(transparent)]
    Device(#[from] devices::virtio::Error),
    /// A rate limiter's timer could not be set up.
    #[error("cannot set up the rate limiter: {0}")]
    RateLimiter(#[source] std::io::Error),
}

/// Controls a running VM from another thread. Cheap to clone.
#[derive(Clone)]
pub struct VmHandle {
    stop: StopHandle,
    control: Arc<VcpuControl>,
    blocks: Vec<Arc<Mutex<MmioTransport<Block>>>>,
    nets: Vec<Arc<Mutex<MmioTransport<Net<Tap>>>>>,
    rng: Vec<Arc<Mutex<MmioTransport<Rng>>>>,
    vsock: Vec<Arc<Mutex<MmioTransport<Vsock>>>>,
    i8042: Option<Arc<Mutex<I8042>>>,
    block_metrics: Vec<Arc<BlockMetrics>>,
    net_metrics: Vec<Arc<NetMetrics>>,
    rng_metrics: Option<Arc<RngMetrics>>,
    snapshot: Option<Arc<SnapshotSource>>,
}

/// Every counter of a VM, grouped as Firecracker's metrics are.
#[derive(Debug, Clone, Serialize)]
pub struct VmMetrics {
    /// vCPU exits.
    pub vcpu: VcpuMetricsSnapshot,
    /// One entry per drive, in attach order.
    pub block: Vec<BlockMetricsSnapshot>,
    /// One entry per network interface, in attach order.
    pub net: Vec<NetMetricsSnapshot>,
    /// The entropy device's, if there is one.
    pub entropy: Option<RngMetricsSnapshot>,
}

impl VmHandle {
    pub(crate) fn new(vm: &crate::Vm) -> Self {
        let dm = &vm.devices;
        let snapshot = match (&dm.serial, &dm.i8042) {
            (Some(serial), Some(i8042)) => Some(Arc::new(SnapshotSource {
                kvm: vm.kvm.clone(),
                fd: vm.fd.clone(),
                mem: vm.mem.clone(),
                config: vm.config.clone(),
                cmdline: vm.cmdline.clone(),
                serial: serial.clone(),
                i8042: i8042.clone(),
                track_dirty_pages: vm.track_dirty_pages,
            })),
            _ => None,
        };
        let (stop, control) = (vm.stop_handle(), vm.control.clone());
        Self {
            snapshot,
            stop,
            control,
            blocks: dm.blocks.clone(),
            nets: dm.nets.clone(),
            rng: dm.rng.iter().cloned().collect(),
            vsock: dm.vsock.iter().cloned().collect(),
            rng_metrics: dm
                .rng
                .as_ref()
                .map(|t| util::sync::lock(t).device().metrics()),
            i8042: dm.i8042.clone(),
            block_metrics: dm
                .blocks
                .iter()
                .map(|t| util::sync::lock(t).device().metrics())
                .collect(),
            net_metrics: dm
                .nets
                .iter()
                .map(|t| util::sync::lock(t).device().metrics())
                .collect(),
        }
    }

    /// Stops the VM ([`crate::Vm::run`] returns [`crate::VmExit::Stopped`]).
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// Pauses every vCPU; returns once none runs guest code.
    pub fn pause(&self) -> Result<(), PauseError> {
        self.control.pause()
    }

    /// Lets the vCPUs run again.
    pub fn resume(&self) {
        self.control.resume();
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// Presses and releases Ctrl+Alt+Del on the i8042 keyboard. False when the guest
    /// has left earlier keys unread (the keyboard queue is full).
    pub fn send_ctrl_alt_del(&self) -> bool {
        self.i8042
            .as_ref()
            .is_some_and(|k| util::sync::lock(k).send_ctrl_alt_del())
    }

    fn block(&self, index: usize) -> Result<&Arc<Mutex<MmioTransport<Block>>>, DeviceUpdateError> {
        self.blocks
            .get(index)
            .ok_or(DeviceUpdateError::NoSuchDevice {
                what: "drive",
                index,
            })
    }

    /// Points drive `index` at another image and tells the guest (config-change interrupt).
    pub fn replace_drive(&self, index: usize, path: &Path) -> Result<(), DeviceUpdateError> {
        let mut t = util::sync::lock(self.block(index)?);
        t.device().replace_disk(path)?;
        t.notify_config_change();
        Ok(())
    }

    /// Changes drive `index`'s rate limiter.
    pub fn update_drive_rate_limiter(
        &self,
        index: usize,
        cfg: &RateLimiterConfig,
    ) -> Result<(), DeviceUpdateError> {
        let t = util::sync::lock(self.block(index)?);
        t.device().update_rate_limiter(cfg);
        Ok(())
    }

    /// Changes the RX and TX rate limiters of network interface `index`.
    pub fn update_net_rate_limiters(
        &self,
        index: usize,
        rx: &RateLimiterConfig,
        tx: &RateLimiterConfig,
    ) -> Result<(), DeviceUpdateError> {
        let t = self
            .nets
            .get(index)
            .ok_or(DeviceUpdateError::NoSuchDevice {
                what: "network interface",
                index,
            })?;
        let t = util::sync::lock(t);
        let result = t.device().set_rate_limiters(rx, tx);
        result.map_err(DeviceUpdateError::RateLimiter)
    }

    /// Writes a snapshot of the paused VM: guest memory to `mem_path` (all of it, or
    /// for [`SnapshotKind::Diff`] the pages dirtied since the last snapshot, into the
    /// existing file), then the state to `state_path`.
    pub fn snapshot(
        &self,
        kind: SnapshotKind,
        state_path: &Path,
        mem_path: &Path,
        api: Option<serde_json::Value>,
    ) -> Result<(), SnapshotError> {
        let source = self
            .snapshot
            .as_ref()
            .ok_or(SnapshotError::Vcpus(PauseError::NotRunning))?;
        source.create(
            &self.control,
            kind,
            (state_path, mem_path),
            api,
            (&self.blocks, &self.nets, &self.rng, &self.vsock),
        )
    }

    /// Changes the entropy device's rate limiter.
    pub fn update_rng_rate_limiter(
        &self,
        cfg: &RateLimiterConfig,
    ) -> Result<(), DeviceUpdateError> {
        let t = self.rng.first().ok_or(DeviceUpdateError::NoSuchDevice {
            what: "entropy device",
            index: 0,
        })?;
        util::sync::lock(t).device().update_rate_limiter(cfg);
        Ok(())
    }

    /// Every counter now (atomic reads: no device lock is taken).
    pub fn metrics(&self) -> VmMetrics {
        VmMetrics {
            vcpu: self.control.metrics.snapshot(),
            block: self.block_metrics.iter().map(|m| m.snapshot()).collect(),
            net: self.net_metrics.iter().map(|m| m.snapshot()).collect(),
            entropy: self.rng_metrics.as_ref().map(|m| m.snapshot()),
        }
    }
}
