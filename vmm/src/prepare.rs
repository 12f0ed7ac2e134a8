//! [`Prepared`]: the parts of a VM that do not depend on its configuration, made ahead of
//! time. `kiln run` makes them just before the rest; an API server makes them while it
//! waits for `InstanceStart`, so that start only pays for what the configuration decides
//! (memory, devices, kernel, vCPUs).

use std::sync::Arc;

use boot::GuestMemoryMmap;
use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VmFd};

use crate::confine::{self, Confinement};
use crate::error::{kvm_err, Result};
use crate::seccomp::SeccompLevel;
use crate::{host, vcpu, RunOptions};

/// An open `/dev/kvm`, an empty KVM VM, KVM's CPUID and the compiled seccomp filters;
/// with [`Prepared::with_memory`] also guest memory, the in-kernel irqchip and the PIT.
pub struct Prepared {
    pub(crate) kvm: Kvm,
    pub(crate) fd: VmFd,
    pub(crate) cpuid: CpuId,
    pub(crate) confine: Arc<Confinement>,
    pub(crate) memory: Option<PreparedMemory>,
}

/// Guest memory registered with the prepared VM (whose irqchip and PIT then exist too).
pub(crate) struct PreparedMemory {
    pub(crate) size: u64,
    pub(crate) track_dirty_pages: bool,
    pub(crate) mem: GuestMemoryMmap,
}

impl Prepared {
    /// Prepares a VM confined as `opts` says. Sets `no_new_privs` on the calling thread
    /// (inherited by the threads it creates later) when there is any confinement.
    pub fn new(opts: &RunOptions) -> Result<Self> {
        if opts.drop_capabilities || opts.seccomp != SeccompLevel::Off {
            confine::set_no_new_privs()?;
        }
        let confine = Confinement::new(opts.seccomp, opts.drop_capabilities)?;
        Self::with_confinement(Arc::new(confine))
    }

    /// Prepares a VM whose threads `confine` confines (shared with other threads of the
    /// process, e.g. the API server's).
    pub fn with_confinement(confine: Arc<Confinement>) -> Result<Self> {
        let kvm = host::open_kvm()?;
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        let cpuid = vcpu::supported_cpuid(&kvm)?;
        vcpu::install_kick_handler()?;
        Ok(Self {
            kvm,
            fd,
            cpuid,
            confine,
            memory: None,
        })
    }

    /// Also creates guest memory of `size` bytes (logging dirty pages if asked), then the
    /// irqchip and PIT, as [`crate::Vm`] would: a VM built from this with that memory
    /// configuration skips those steps. Only on a `Prepared` without memory.
    pub fn with_memory(mut self, size: u64, track_dirty_pages: bool) -> Result<Self> {
        if self.memory.is_none() {
            let mem = crate::vm::create_memory(&self.fd, size, track_dirty_pages)?;
            crate::vm::setup_vm(&self.fd)?;
            self.memory = Some(PreparedMemory {
                size,
                track_dirty_pages,
                mem,
            });
        }
        Ok(self)
    }

    /// Whether what was prepared can serve a VM with `size` bytes of memory and this
    /// dirty-page setting (true when no memory was prepared).
    pub fn fits(&self, size: u64, track_dirty_pages: bool) -> bool {
        self.memory
            .as_ref()
            .is_none_or(|m| m.size == size && m.track_dirty_pages == track_dirty_pages)
    }

    /// The confinement the VM's threads will enter.
    pub fn confinement(&self) -> Arc<Confinement> {
        self.confine.clone()
    }
}
