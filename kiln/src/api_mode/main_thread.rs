//! The main thread in API mode: it owns the VM. It prepares the KVM VM ahead of time,
//! waits for the API's `InstanceStart` or `PUT /snapshot/load` (or a stop signal),
//! builds the VM and runs it.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use api::model::VmResources;
use api::Controller;
use vmm::config::VmConfig;
use vmm::confine::{self, Confinement};
use vmm::event_loop;
use vmm::snapshot::{RestoreOptions, VmSnapshot};
use vmm::{Prepared, RunOptions, Vm};
use vmm_sys_util::eventfd::EventFd;

use super::{Build, BuildRequest};
use crate::{fail, RunEnd};

pub(super) struct MainThread {
    pub(super) controller: Arc<Mutex<Controller>>,
    pub(super) opts: RunOptions,
    pub(super) timings: Option<std::path::PathBuf>,
    pub(super) confine: Arc<Confinement>,
}

impl MainThread {
    pub(super) fn build_from_file(
        &mut self,
        resources: VmResources,
    ) -> Result<(Vm, RunEnd), String> {
        let cfg = util::sync::lock(&self.controller).configure_from(resources)?;
        let prepared = self.prepare();
        let (vm, end) = self.build(&cfg, prepared)?;
        util::sync::lock(&self.controller).adopt(vm.handle());
        Ok((vm, end))
    }

    /// The KVM VM and what else does not depend on the configuration, made while the
    /// API waits for `InstanceStart` (so the start pays only for the rest).
    pub(super) fn prepare(&self) -> Option<Prepared> {
        let setup = confine::set_no_new_privs().map_err(vmm::Error::from);
        match setup.and_then(|()| Prepared::with_confinement(self.confine.clone())) {
            Ok(p) => Some(p),
            Err(e) => {
                log::debug!("cannot prepare the VM ahead of InstanceStart: {e}");
                None
            }
        }
    }

    pub(super) fn build(
        &mut self,
        cfg: &VmConfig,
        prepared: Option<Prepared>,
    ) -> Result<(Vm, RunEnd), String> {
        let opts = self.opts;
        self.with_serial(cfg, |serial| match prepared {
            Some(p) => Vm::from_prepared(p, cfg, serial, opts),
            None => Vm::new(cfg, serial, opts),
        })
    }

    /// Builds the VM of a snapshot.
    pub(super) fn restore(
        &mut self,
        snapshot: &VmSnapshot,
        restore: &RestoreOptions,
        prepared: Option<Prepared>,
    ) -> Result<(Vm, RunEnd), String> {
        let opts = self.opts;
        self.with_serial(&snapshot.config, |serial| {
            Vm::restore(snapshot, restore, serial, opts, prepared)
        })
    }

    /// Builds a VM with `cfg`'s serial console and this run's timings file; on failure
    /// removes what was prepared for it and blocks the stop signals again (the VM's
    /// build unblocked them; the API keeps serving).
    fn with_serial(
        &mut self,
        cfg: &VmConfig,
        build: impl FnOnce(vmm::device_manager::SerialIo) -> vmm::Result<Vm>,
    ) -> Result<(Vm, RunEnd), String> {
        let mut end = RunEnd::prepare(self.timings.as_deref()).map_err(|e| e.to_string())?;
        let built = end.serial_io(cfg).and_then(build);
        match built {
            Ok(vm) => Ok((vm, end)),
            Err(e) => {
                let _ = event_loop::block_stop_signals();
                end.discard();
                Err(e.to_string())
            }
        }
    }

    pub(super) fn run_vm(&mut self, (vm, end): (Vm, RunEnd)) -> ExitCode {
        end.run(vm)
    }

    /// Waits for `InstanceStart` or `PUT /snapshot/load`, or a stop signal. Meanwhile
    /// keeps a VM prepared for the machine configuration the API holds (memory,
    /// irqchip and PIT included), redone when the API says it changed.
    pub(super) fn serve(
        &mut self,
        starts: &Receiver<BuildRequest>,
        wake: &EventFd,
        signals: &OwnedFd,
        memory: (u64, bool),
    ) -> ExitCode {
        // `memory` was read before the API thread started: locking the controller here
        // could wait for a request that waits for this thread.
        let mut prepared = self.prepare_for(memory.0, memory.1);
        loop {
            match wait_readable(wake, signals) {
                Woken::Signal(sig) => {
                    log::info!("received signal {sig} before the VM started, exiting");
                    return ExitCode::from((128 + sig) as u8);
                }
                Woken::Error(e) => return fail(&format!("waiting for the API: {e}")),
                Woken::Start => {}
            }
            while let Ok(BuildRequest(what, reply)) = starts.try_recv() {
                let (size, track) = match &what {
                    Build::Prepare { size, track } => (*size, *track),
                    Build::Start(cfg) => (cfg.memory.0, cfg.track_dirty_pages),
                    Build::Restore(..) => (0, false),
                };
                let p = match prepared.take() {
                    Some(p) if p.fits(size, track) => Some(p),
                    // Memory prepared for another size: start from a fresh VM.
                    _ => self.prepare(),
                };
                let built = match what {
                    Build::Prepare { size, track } => {
                        prepared = p.and_then(|p| with_memory(p, size, track));
                        continue;
                    }
                    Build::Start(cfg) => self.build(&cfg, p),
                    Build::Restore(s, o) => self.restore(&s, &o, p),
                };
                let reply = match reply {
                    Some(r) => r,
                    None => continue,
                };
                match built {
                    Ok((vm, end)) => {
                        let _ = reply.send(Ok(vm.handle()));
                        return self.run_vm((vm, end));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    /// A prepared VM with `size` bytes of memory (without memory when the host has
    /// less, so the build reports that).
    fn prepare_for(&self, size: u64, track: bool) -> Option<Prepared> {
        self.prepare().and_then(|p| with_memory(p, size, track))
    }
}

/// `p` with its memory, irqchip and PIT made; on failure the VM is built without them.
fn with_memory(p: Prepared, size: u64, track: bool) -> Option<Prepared> {
    if vmm::host::host_memory().is_some_and(|host| size > host) {
        return Some(p);
    }
    match p.with_memory(size, track) {
        Ok(p) => Some(p),
        Err(e) => {
            log::debug!("cannot prepare guest memory ahead of InstanceStart: {e}");
            None
        }
    }
}

enum Woken {
    Start,
    Signal(i32),
    Error(std::io::Error),
}

fn wait_readable(wake: &EventFd, signals: &OwnedFd) -> Woken {
    let mut fds = [
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: signals.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Woken::Error(e);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            if let Some(sig) = event_loop::read_signal(signals) {
                return Woken::Signal(sig);
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let _ = wake.read();
            return Woken::Start;
        }
    }
}
