//! The snapshot-specific steps of building a VM from a snapshot ([`crate::Vm::restore`]):
//! guest memory mapped from the memory file, and KVM state loaded into the fresh vCPUs
//! and VM before any vCPU runs.

use boot::GuestMemoryMmap;
use kvm_ioctls::{VcpuFd, VmFd};

use super::{kvm_state, memory, RestoreOptions, VmSnapshot};
use crate::error::{Error, Result};

/// Maps guest memory from the memory file (copy-on-write) and registers it with KVM.
pub(crate) fn map_memory(
    fd: &VmFd,
    snapshot: &VmSnapshot,
    opts: &RestoreOptions,
) -> Result<GuestMemoryMmap> {
    let expected: u64 = snapshot.regions.iter().map(|r| r.1).sum();
    if expected != snapshot.config.memory.0 {
        return Err(Error::Memory(memory::MemoryError::Layout(format!(
            "the snapshot's regions hold {expected} bytes but its configuration {}",
            snapshot.config.memory.0
        ))));
    }
    let file = std::fs::File::open(&opts.mem_file).map_err(|source| Error::Io {
        what: "opening the snapshot's memory file",
        source,
    })?;
    let mem = memory::map_memory(&file, &snapshot.memory_regions())?;
    crate::vm::register_memory(fd, &mem, opts.track_dirty_pages)?;
    Ok(mem)
}

/// Loads each vCPU's and the VM's saved KVM state.
pub(crate) fn kvm_state(fd: &VmFd, vcpus: &[VcpuFd], snapshot: &VmSnapshot) -> Result<()> {
    if snapshot.vcpus.len() != vcpus.len() {
        return Err(Error::SnapshotVcpus {
            states: snapshot.vcpus.len(),
            cpus: vcpus.len(),
        });
    }
    for (v, state) in vcpus.iter().zip(&snapshot.vcpus) {
        kvm_state::restore_vcpu(v, state)?;
    }
    kvm_state::restore_vm(fd, &snapshot.vm)?;
    Ok(())
}
