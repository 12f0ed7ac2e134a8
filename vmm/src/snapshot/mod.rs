//! Snapshots: a paused VM's state (vCPUs, in-kernel devices, Kiln's devices, its
//! configuration) in a versioned, checksummed state file ([`format`]), and its memory
//! in a sparse memory file ([`memory`]) that a restore maps `MAP_PRIVATE`, so restoring
//! costs the same for any memory size and clones share unmodified pages.
//!
//! Creating ([`crate::VmHandle::snapshot`]) runs on the thread that asks (the API's),
//! with the vCPUs paused: each parked vCPU thread saves its own vCPU
//! ([`crate::vcpu_control::VcpuControl::save_vcpus`]); the device locks are held until
//! guest memory is written, so no device changes memory or ring positions meanwhile.
//! The memory file is written first, the state file last (atomically): a state file
//! always has its memory. Restoring ([`crate::Vm::restore`]) builds the VM from the
//! snapshot's configuration with memory, devices and vCPUs in their saved state.

mod create;
pub mod format;
pub mod kvm_state;
pub mod memory;
pub(crate) mod restore;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::VmConfig;
use crate::device_manager::LegacyState;
use devices::snapshot::MmioState;

pub use create::SnapshotSource;

/// Everything but guest memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The configuration the VM was built from (disks and TAPs are reopened from it).
    pub config: VmConfig,
    /// The command line the guest booted with.
    pub cmdline: String,
    /// Guest memory regions `(guest address, size)`, in memory-file order.
    pub regions: Vec<(u64, u64)>,
    /// Each vCPU's state, in index order.
    pub vcpus: Vec<kvm_state::VcpuState>,
    /// PICs, IOAPIC, PIT and clock.
    pub vm: kvm_state::VmState,
    /// Kiln's devices.
    pub devices: DevicesState,
    /// The API's view of the configuration (Firecracker's layout), when it made the
    /// snapshot: restored with the VM so `GET /vm/config` and ids keep working.
    #[serde(default)]
    pub api: Option<serde_json::Value>,
}

/// Kiln's devices in a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DevicesState {
    /// COM1 and the i8042.
    pub legacy: LegacyState,
    /// virtio-blk transports, in configuration order.
    pub blocks: Vec<MmioState>,
    /// virtio-net transports, in configuration order.
    pub nets: Vec<MmioState>,
    /// The virtio-rng transport.
    #[serde(default)]
    pub rng: Option<MmioState>,
    /// The virtio-vsock transport.
    #[serde(default)]
    pub vsock: Option<MmioState>,
}

/// Full or diff snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotKind {
    /// All of guest memory (zero pages as holes).
    Full,
    /// Only pages dirtied since the last snapshot (or since boot), written into an
    /// existing memory file of the right size, e.g. a copy of the previous one.
    Diff,
}

/// How to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOptions {
    /// The memory file.
    pub mem_file: PathBuf,
    /// Log dirty pages after the restore (for diff snapshots).
    pub track_dirty_pages: bool,
    /// Run at once (otherwise the VM stays paused until resumed).
    pub resume: bool,
}

/// Errors from creating or reading snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The state file.
    #[error(transparent)]
    Format(#[from] format::FormatError),
    /// The memory file.
    #[error(transparent)]
    Memory(#[from] memory::MemoryError),
    /// KVM state.
    #[error(transparent)]
    Kvm(#[from] kvm_state::StateError),
    /// Pausing or the vCPUs' part.
    #[error(transparent)]
    Vcpus(#[from] crate::vcpu_control::PauseError),
    /// A device's state.
    #[error("saving a device: {0}")]
    Device(#[from] devices::snapshot::StateError),
    /// A diff snapshot without dirty-page tracking.
    #[error("a Diff snapshot needs dirty-page tracking: set track_dirty_pages in the machine configuration (or on snapshot load)")]
    NoDirtyTracking,
    /// The state file is well-formed but does not describe a VM Kiln can build.
    #[error("the snapshot is inconsistent: {0}")]
    Inconsistent(String),
    /// The memory file could not be opened.
    #[error("cannot open the memory file {path}: {source}")]
    MemFile {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl VmSnapshot {
    /// Reads and checks a state file (magic, version, checksum, host features).
    pub fn read(path: &Path) -> Result<Self, SnapshotError> {
        let host = format::HostFeatures::current()?;
        let snapshot: Self = format::read_state(path, &host)?;
        snapshot.check()?;
        Ok(snapshot)
    }

    /// What a state file says is checked like user input: a valid configuration, the
    /// memory layout Kiln gives that configuration, one state per vCPU and device.
    pub fn check(&self) -> Result<(), SnapshotError> {
        let bad = |m: String| Err(SnapshotError::Inconsistent(m));
        if let Err(e) = self.config.validate() {
            return bad(format!("its configuration is invalid: {e}"));
        }
        let layout = boot::layout::ram_regions(self.config.memory.0);
        if self.regions != layout {
            return bad(format!(
                "its memory regions {:x?} are not Kiln's layout {:x?} for {} bytes",
                self.regions, layout, self.config.memory.0
            ));
        }
        if self.vcpus.len() != self.config.cpus as usize {
            return bad(format!(
                "{} vCPU states for {} vCPUs",
                self.vcpus.len(),
                self.config.cpus
            ));
        }
        let d = &self.devices;
        if d.blocks.len() != self.config.disks.len()
            || d.nets.len() != self.config.nets.len()
            || d.rng.is_some() != self.config.rng.is_some()
            || d.vsock.is_some() != self.config.vsock.is_some()
        {
            return bad(format!(
                "{} disk and {} network device states for {} disks and {} interfaces",
                d.blocks.len(),
                d.nets.len(),
                self.config.disks.len(),
                self.config.nets.len()
            ));
        }
        Ok(())
    }

    /// The regions as `(GuestAddress, usize)` for mapping.
    pub fn memory_regions(&self) -> Vec<(vm_memory::GuestAddress, usize)> {
        self.regions
            .iter()
            .map(|&(a, s)| (vm_memory::GuestAddress(a), s as usize))
            .collect()
    }
}
