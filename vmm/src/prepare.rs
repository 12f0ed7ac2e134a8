//! [`Prepared`]: the parts of a VM that do not depend on its configuration, made ahead of
//! time. `kiln run` makes them just before the rest; an API server makes them while it
//! waits for `InstanceStart`, so that start only pays for what the configuration decides
//! (memory, devices, kernel, vCPUs).

use std::sync::Arc;

use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VmFd};

use crate::confine::{self, Confinement};
use crate::error::{kvm_err, Result};
use crate::seccomp::SeccompLevel;
use crate::{host, vcpu, RunOptions};

/// An open `/dev/kvm`, an empty KVM VM, KVM's CPUID and the compiled seccomp filters.
pub struct Prepared {
    pub(crate) kvm: Kvm,
    pub(crate) fd: VmFd,
    pub(crate) cpuid: CpuId,
    pub(crate) confine: Arc<Confinement>,
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
        })
    }

    /// The confinement the VM's threads will enter.
    pub fn confinement(&self) -> Arc<Confinement> {
        self.confine.clone()
    }
}
