//! Creating a snapshot of a paused VM ([`crate::VmHandle::snapshot`]).

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use boot::GuestMemoryMmap;
use devices::legacy::{SerialDevice, I8042};
use devices::virtio::{MmioTransport, VirtioDevice};
use kvm_ioctls::{Kvm, VmFd};

use vm_memory::GuestMemoryBackend;

use super::memory::{self, PageSelection};
use super::{format, kvm_state, DevicesState, SnapshotError, SnapshotKind, VmSnapshot};
use crate::config::VmConfig;
use crate::device_manager::LegacyState;
use crate::vcpu_control::VcpuControl;

/// What a snapshot reads from a running VM; shared with [`crate::VmHandle`].
pub struct SnapshotSource {
    pub(crate) kvm: Arc<Kvm>,
    pub(crate) fd: Arc<VmFd>,
    pub(crate) mem: Arc<GuestMemoryMmap>,
    pub(crate) config: Arc<VmConfig>,
    pub(crate) cmdline: String,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    pub(crate) track_dirty_pages: bool,
}

/// A virtio-blk transport as the VM shares it.
pub(crate) type BlockTransport = Arc<Mutex<MmioTransport<devices::virtio::block::Block>>>;
/// A virtio-rng transport as the VM shares it.
pub(crate) type RngTransport = Arc<Mutex<MmioTransport<devices::virtio::rng::Rng>>>;
/// A virtio-vsock transport as the VM shares it.
pub(crate) type VsockTransport = Arc<Mutex<MmioTransport<devices::virtio::vsock::Vsock>>>;
/// The virtio transports a snapshot saves: disks, nets, the rng and vsock (zero or one).
pub(crate) type Virtio<'a> = (
    &'a [BlockTransport],
    &'a [NetTransport],
    &'a [RngTransport],
    &'a [VsockTransport],
);
/// A virtio-net transport as the VM shares it.
pub(crate) type NetTransport =
    Arc<Mutex<MmioTransport<devices::virtio::net::Net<devices::virtio::net::tap::Tap>>>>;

fn lock_all<D: VirtioDevice>(
    transports: &[Arc<Mutex<MmioTransport<D>>>],
) -> Vec<MutexGuard<'_, MmioTransport<D>>> {
    transports.iter().map(|t| util::sync::lock(t)).collect()
}

/// Saves every transport's state; the returned device guards keep the device threads
/// from running a pass until they are dropped.
fn save_all<'a, D: VirtioDevice>(
    locked: &'a [MutexGuard<'_, MmioTransport<D>>],
) -> Result<(Vec<devices::snapshot::MmioState>, Vec<MutexGuard<'a, D>>), SnapshotError> {
    let mut states = Vec::with_capacity(locked.len());
    let mut guards = Vec::with_capacity(locked.len());
    for t in locked {
        let (state, guard) = t.save_state()?;
        states.push(state);
        guards.push(guard);
    }
    Ok((states, guards))
}

impl SnapshotSource {
    /// Writes the snapshot of the paused VM: memory to `mem_path`, then the state to
    /// `state_path` (atomically).
    pub(crate) fn create(
        &self,
        control: &VcpuControl,
        kind: SnapshotKind,
        paths: (&Path, &Path),
        api: Option<serde_json::Value>,
        virtio: Virtio<'_>,
    ) -> Result<(), SnapshotError> {
        let (state_path, mem_path) = paths;
        let (blocks, nets, rng, vsock) = virtio;
        if kind == SnapshotKind::Diff && !self.track_dirty_pages {
            return Err(SnapshotError::NoDirtyTracking);
        }
        let vcpus = control.save_vcpus(Vec::new())?;
        let vm = kvm_state::save_vm(&self.fd)?;
        let block_locks = lock_all(blocks);
        let net_locks = lock_all(nets);
        let (block_states, block_guards) = save_all(&block_locks)?;
        let (net_states, net_guards) = save_all(&net_locks)?;
        let rng_locks = lock_all(rng);
        let (mut rng_states, rng_guards) = save_all(&rng_locks)?;
        let vsock_locks = lock_all(vsock);
        let (mut vsock_states, vsock_guards) = save_all(&vsock_locks)?;
        let legacy = LegacyState {
            serial: util::sync::lock(&self.serial).state(),
            i8042: util::sync::lock(&self.i8042).state(),
        };
        self.write_memory(kind, mem_path)?;
        drop((block_guards, net_guards, rng_guards, vsock_guards));
        drop((block_locks, net_locks, rng_locks, vsock_locks));
        let snapshot = VmSnapshot {
            config: (*self.config).clone(),
            cmdline: self.cmdline.clone(),
            regions: self.mem.iter().map(region).collect(),
            vcpus,
            vm,
            devices: DevicesState {
                legacy,
                blocks: block_states,
                nets: net_states,
                rng: rng_states.pop(),
                vsock: vsock_states.pop(),
            },
            api,
        };
        let host = format::HostFeatures::from_kvm(&self.kvm);
        format::write_state(state_path, &snapshot, &host)?;
        Ok(())
    }

    fn write_memory(&self, kind: SnapshotKind, path: &Path) -> Result<(), SnapshotError> {
        let open_err = |source| SnapshotError::MemFile {
            path: path.to_path_buf(),
            source,
        };
        let (file, pages) = match kind {
            SnapshotKind::Full => {
                // Not truncated here: write_memory first checks that this is not the
                // file the VM's own memory is mapped from (a restored VM), then sizes it.
                #[allow(clippy::suspicious_open_options)]
                let f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .open(path)
                    .map_err(open_err)?;
                // The next diff snapshot starts from here.
                if self.track_dirty_pages {
                    memory::dirty_bitmaps(&self.fd, &self.mem)?;
                }
                (f, PageSelection::All)
            }
            SnapshotKind::Diff => {
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(open_err)?;
                (
                    f,
                    PageSelection::Dirty(memory::dirty_bitmaps(&self.fd, &self.mem)?),
                )
            }
        };
        memory::write_memory(&file, &self.mem, pages)?;
        file.sync_all().map_err(open_err)?;
        Ok(())
    }
}

fn region(r: &vm_memory::GuestRegionMmap) -> (u64, u64) {
    use vm_memory::GuestMemoryRegion;
    (r.start_addr().0, r.len())
}
