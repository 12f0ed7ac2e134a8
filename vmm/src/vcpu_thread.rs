//! vCPU threads, started while the VM is still being built: each gives up its
//! capabilities and installs its seccomp filter meanwhile (the filter's kernel-side
//! set-up would otherwise sit between "VMM ready" and the first `KVM_RUN`), then waits
//! for its vCPU and runs it.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use kvm_ioctls::VcpuFd;

use crate::confine::{ConfineError, Confinement};
use crate::exit::VmExit;
use crate::seccomp::ThreadKind;
use crate::vcpu::{self, VcpuContext};

/// A confined vCPU thread waiting for its vCPU. Dropping it (a VM never run) lets the
/// thread end.
pub struct VcpuThread {
    handle: JoinHandle<()>,
    work: SyncSender<(VcpuFd, VcpuContext)>,
}

/// Where a vCPU thread that could not confine itself leaves its error.
pub type SetupError = Arc<Mutex<Option<ConfineError>>>;

impl VcpuThread {
    /// Starts the thread of vCPU `id`; it confines itself at once.
    pub fn spawn(id: u32, confine: Arc<Confinement>, failed: SetupError) -> std::io::Result<Self> {
        let (work, rx) = sync_channel::<(VcpuFd, VcpuContext)>(1);
        let handle = std::thread::Builder::new()
            .name(format!("kiln-vcpu{id}"))
            .spawn(move || {
                let confined = confine.enter(ThreadKind::Vcpu);
                let Ok((fd, ctx)) = rx.recv() else {
                    return; // the VM was dropped before it ran
                };
                match confined {
                    Ok(()) => vcpu::run(fd, id, ctx),
                    Err(e) => {
                        *util::sync::lock(&failed) = Some(e);
                        ctx.latch.set(VmExit::Stopped);
                    }
                }
            })?;
        Ok(Self { handle, work })
    }

    /// Hands the thread its vCPU; returns the handle to join.
    pub fn start(self, fd: VcpuFd, ctx: VcpuContext) -> JoinHandle<()> {
        // A send fails only if the thread is gone; joining then returns at once.
        let _ = self.work.send((fd, ctx));
        self.handle
    }
}
