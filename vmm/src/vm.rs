//! A VM: built from a [`VmConfig`], then run until the guest or the host ends it.
//!
//! Ownership: the [`Vm`] owns the KVM handles, guest memory (shared read-only with vCPU
//! threads and devices through `Arc`), the buses and the event loop. [`Vm::run`] moves
//! each `VcpuFd` to its own thread and runs the event loop on the calling thread.

use std::os::fd::OwnedFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use boot::{layout, BootInfo, GuestMemoryMmap};
use event_manager::SubscriberOps;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use util::time::BootTimestamps;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::config::VmConfig;
use crate::confine::Confinement;
use crate::device_manager::{DeviceManager, SerialIo};
use crate::error::{io, kvm_err, Error, Result};
use crate::event_loop::{self, ExitSubscriber, Manager};
use crate::exit::{ExitLatch, VmExit};
use crate::handle::VmHandle;
use crate::host;
use crate::memstats::{self, MemStats};
use crate::prepare::Prepared;
use crate::seccomp::{SeccompLevel, ThreadKind};
use crate::snapshot::{self, RestoreOptions, VmSnapshot};
use crate::vcpu::{self, VcpuContext};
use crate::vcpu_control::VcpuControl;
use crate::vcpu_thread::{SetupError, VcpuThread};

/// Options for running a VM that depend on the embedding program, not the guest.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    /// Stop on SIGINT/SIGTERM/SIGHUP (the `kiln` binary sets this; library users
    /// usually leave it off and call [`StopHandle::stop`]).
    pub handle_signals: bool,
    /// When the process started, in `CLOCK_MONOTONIC` ns (0 = now).
    pub process_start_ns: u64,
    /// Seccomp filters for the VM's threads (the `kiln` binary: on by default; library
    /// users own their threads and default to off).
    pub seccomp: SeccompLevel,
    /// Each VM thread drops every capability before the guest runs (the `kiln` binary
    /// does; a process embedding the VMM may need its capabilities).
    pub drop_capabilities: bool,
}

/// A built VM, ready to run.
pub struct Vm {
    pub(crate) kvm: Arc<Kvm>,
    pub(crate) fd: Arc<VmFd>,
    pub(crate) mem: Arc<GuestMemoryMmap>,
    pub(crate) devices: DeviceManager,
    vcpus: Vec<VcpuFd>,
    vcpu_threads: Vec<VcpuThread>,
    setup_error: SetupError,
    em: Manager,
    latch: Arc<ExitLatch>,
    times: Arc<BootTimestamps>,
    boot: Option<BootInfo>,
    pub(crate) cmdline: String,
    signals: Option<OwnedFd>,
    pvm_host: bool,
    mem_stats: Arc<std::sync::Mutex<Option<MemStats>>>,
    smaps: Option<memstats::Smaps>,
    confine: Arc<Confinement>,
    pub(crate) control: Arc<VcpuControl>,
    pub(crate) config: Arc<VmConfig>,
    pub(crate) track_dirty_pages: bool,
}

/// A snapshot being restored, and how.
pub(crate) type Restore<'a> = Option<(&'a VmSnapshot, &'a RestoreOptions)>;

/// Stops a running VM from another thread.
#[derive(Clone)]
pub struct StopHandle(Arc<ExitLatch>);

impl StopHandle {
    /// Asks the VM to stop; [`Vm::run`] then returns [`VmExit::Stopped`].
    pub fn stop(&self) {
        self.stop_with(VmExit::Stopped);
    }

    /// Asks the VM to stop with `exit` as the reason [`Vm::run`] returns (the first
    /// reason recorded wins).
    pub fn stop_with(&self, exit: VmExit) {
        self.0.set(exit);
    }
}

impl Vm {
    /// Builds a VM: KVM VM, memory, devices, kernel loaded, vCPUs configured.
    pub fn new(cfg: &VmConfig, serial: SerialIo, opts: RunOptions) -> Result<Self> {
        Self::build_with(cfg, serial, opts, None, None)
    }

    /// Builds a VM from a snapshot: memory mapped from the memory file, devices and
    /// vCPUs in their saved state; it runs from where it was paused (or stays paused
    /// unless `restore.resume`). `prepared` as for [`Vm::from_prepared`].
    pub fn restore(
        snapshot: &VmSnapshot,
        restore: &RestoreOptions,
        serial: SerialIo,
        opts: RunOptions,
        prepared: Option<Prepared>,
    ) -> Result<Self> {
        Self::build_with(
            &snapshot.config,
            serial,
            opts,
            prepared,
            Some((snapshot, restore)),
        )
    }

    /// [`Vm::new`] from parts made ahead of time ([`Prepared`]).
    pub fn from_prepared(
        prepared: Prepared,
        cfg: &VmConfig,
        serial: SerialIo,
        opts: RunOptions,
    ) -> Result<Self> {
        Self::build_with(cfg, serial, opts, Some(prepared), None)
    }

    fn build_with(
        cfg: &VmConfig,
        serial: SerialIo,
        opts: RunOptions,
        prepared: Option<Prepared>,
        restore: Restore<'_>,
    ) -> Result<Self> {
        cfg.validate()?;
        let start = match opts.process_start_ns {
            0 => util::time::monotonic_ns(),
            t => t,
        };
        let times = Arc::new(BootTimestamps::new(start));
        // Block stop signals before any thread exists so every thread inherits the mask.
        let signals = match opts.handle_signals {
            true => Some(event_loop::block_stop_signals()?),
            false => None,
        };
        let prepared = match prepared {
            Some(p) => Ok(p),
            None => Prepared::new(&opts),
        };
        let built = prepared.and_then(|p| Self::build(cfg, serial, times, signals, p, restore));
        if built.is_err() && opts.handle_signals {
            event_loop::unblock_stop_signals();
        }
        built
    }

    fn build(
        cfg: &VmConfig,
        serial: SerialIo,
        times: Arc<BootTimestamps>,
        signals: Option<OwnedFd>,
        prepared: Prepared,
        restore: Restore<'_>,
    ) -> Result<Self> {
        let Prepared {
            kvm,
            fd,
            cpuid,
            confine,
            memory: ready,
        } = prepared;
        let track_dirty_pages = match restore {
            Some((_, r)) => r.track_dirty_pages,
            None => cfg.track_dirty_pages,
        };
        let max = host::max_vcpus(&kvm);
        if cfg.cpus > max {
            return Err(Error::TooManyCpus {
                asked: cfg.cpus,
                max,
            });
        }
        let mem_size = cfg.memory.0;
        if let Some(host_mem) = host::host_memory() {
            if mem_size > host_mem {
                return Err(Error::MemoryTooLarge {
                    asked_mib: mem_size >> 20,
                    host_mib: host_mem >> 20,
                });
            }
        }
        // The vCPU threads confine themselves while the rest is built.
        let setup_error = SetupError::default();
        let vcpu_threads = (0..cfg.cpus)
            .map(|id| VcpuThread::spawn(id, confine.clone(), setup_error.clone()))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io("spawning a vCPU thread"))?;
        // Memory slots first: on some hosts (PVM) adding a slot after the irqchip exists
        // waits for an SRCU grace period (milliseconds); before, it takes microseconds.
        let mem = Arc::new(match (restore, ready) {
            (None, Some(m)) if m.size == mem_size && m.track_dirty_pages == track_dirty_pages => {
                m.mem // the irqchip and PIT exist already
            }
            (_, Some(_)) => return Err(Error::PreparedMismatch),
            (None, None) => {
                let mem = create_memory(&fd, mem_size, track_dirty_pages)?;
                setup_vm(&fd)?;
                mem
            }
            (Some((s, r)), None) => {
                let mem = snapshot::restore::map_memory(&fd, s, r)?;
                setup_vm(&fd)?;
                mem
            }
        });
        let latch = Arc::new(ExitLatch::new().map_err(io("creating exit eventfd"))?);
        let mut em = Manager::new()?;
        let mut devices = DeviceManager::new()?;
        let legacy = restore.map(|(s, _)| &s.devices.legacy);
        devices.attach_legacy(&fd, &mut em, serial, times.clone(), legacy)?;
        let virtio = restore.map(|(s, _)| &s.devices);
        crate::virtio::attach_all(cfg, &fd, &mem, &mut devices, &confine, virtio)?;

        let cpus = cfg.cpus as u8;
        let (cmdline, boot) = match restore {
            Some((s, _)) => (s.cmdline.clone(), None),
            None => {
                let cmdline = cmdline_with_devices(cfg, &devices);
                let boot = load_kernel(cfg, &mem, &cmdline)?;
                (cmdline, Some(boot))
            }
        };
        let mut vcpus = Vec::with_capacity(cpus as usize);
        for id in 0..cpus {
            let v = fd
                .create_vcpu(u64::from(id))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let entry = boot.as_ref().filter(|_| id == 0).map(|b| &b.entry);
            vcpu::configure(&cpuid, &v, id, cpus, entry)?;
            vcpus.push(v);
        }
        let control = Arc::new(VcpuControl::default());
        if let Some((s, r)) = restore {
            snapshot::restore::kvm_state(&fd, &vcpus, s)?;
            if !r.resume {
                control.start_paused();
            }
        }
        Ok(Self {
            kvm: Arc::new(kvm),
            fd: Arc::new(fd),
            mem,
            devices,
            vcpus,
            vcpu_threads,
            setup_error,
            em,
            latch,
            times,
            boot,
            cmdline,
            signals,
            pvm_host: host::is_pvm_host(),
            mem_stats: Arc::default(),
            // Opened now: the main thread's seccomp filter allows no open() later.
            smaps: memstats::Smaps::open().ok(),
            confine,
            control,
            config: Arc::new(cfg.clone()),
            track_dirty_pages,
        })
    }

    /// The command line the guest receives (user's plus Kiln's device entries).
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Where the kernel, initrd and entry point ended up (`None` for a restored VM).
    pub fn boot_info(&self) -> Option<&BootInfo> {
        self.boot.as_ref()
    }

    /// Start-up timestamps (shared; filled in while the VM runs).
    pub fn timestamps(&self) -> Arc<BootTimestamps> {
        self.times.clone()
    }

    /// Where [`Vm::run`] stores the VMM's memory use, measured when the VM ends.
    pub fn mem_stats(&self) -> Arc<std::sync::Mutex<Option<MemStats>>> {
        self.mem_stats.clone()
    }

    /// A handle that stops the VM from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.latch.clone())
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// A handle that pauses, resumes, changes devices of and stops the VM from another
    /// thread while it runs.
    pub fn handle(&self) -> VmHandle {
        VmHandle::new(self)
    }

    /// Runs the VM to its end: starts the vCPU threads, runs the event loop, then stops
    /// and joins every vCPU. Returns why the VM ended.
    pub fn run(mut self) -> Result<VmExit> {
        let exit_sub = ExitSubscriber::new(
            self.latch.clone(),
            self.devices
                .reset_evt
                .try_clone()
                .map_err(io("cloning eventfd"))?,
            self.devices
                .quit_evt
                .try_clone()
                .map_err(io("cloning eventfd"))?,
            self.signals.take(),
        );
        self.em
            .add_subscriber(Arc::new(std::sync::Mutex::new(exit_sub)));
        let stop = Arc::new(AtomicBool::new(false));
        let pio = Arc::new(std::mem::take(&mut self.devices.pio));
        let mmio = Arc::new(std::mem::take(&mut self.devices.mmio));
        BootTimestamps::mark(&self.times.vmm_ready);
        // Each vCPU thread confined itself while the VM was built; it gets its vCPU
        // now. This thread confines itself meanwhile, before it handles anything a guest
        // can trigger (the event loop). A failed set-up stops the VM and is returned.
        let vcpus = std::mem::take(&mut self.vcpus);
        let waiting = std::mem::take(&mut self.vcpu_threads);
        let mut threads = Vec::with_capacity(vcpus.len());
        for (fd, thread) in vcpus.into_iter().zip(waiting) {
            let ctx = VcpuContext {
                pio: pio.clone(),
                mmio: mmio.clone(),
                mem: self.mem.clone(),
                stop: stop.clone(),
                latch: self.latch.clone(),
                times: self.times.clone(),
                pvm_host: self.pvm_host,
                control: self.control.clone(),
                kvm: self.kvm.clone(),
            };
            threads.push(thread.start(fd, ctx));
        }
        self.control
            .set_threads(threads.iter().map(|t| t.as_pthread_t()).collect());
        if let Err(e) = self.confine.enter(ThreadKind::Main) {
            self.latch.set(VmExit::Stopped);
            stop_vcpus(&stop, &self.control, threads);
            return Err(e.into());
        }
        let result = event_loop::run_until_exit(&mut self.em, &self.latch);
        BootTimestamps::mark(&self.times.vm_stopped);
        self.record_mem_stats();
        stop_vcpus(&stop, &self.control, threads);
        if let Some(e) = util::sync::lock(&self.setup_error).take() {
            return Err(e.into());
        }
        result
    }
}

impl Vm {
    fn record_mem_stats(&mut self) {
        let guest: Vec<(u64, u64)> = self
            .mem
            .iter()
            .map(|r| (r.as_ptr() as u64, r.as_ptr() as u64 + r.len()))
            .collect();
        let Some(smaps) = self.smaps.as_mut() else {
            return;
        };
        match smaps.measure(&guest) {
            Ok(s) => {
                log::info!(
                    "memory: VMM RSS {} KiB, PSS {} KiB (excluding guest RAM); guest RAM resident {} KiB",
                    s.vmm_rss_kib,
                    s.vmm_pss_kib,
                    s.guest_rss_kib
                );
                *util::sync::lock(&self.mem_stats) = Some(s);
            }
            Err(e) => log::debug!("cannot read /proc/self/smaps: {e}"),
        }
    }
}

/// Sets the stop flag, releases paused vCPUs and kicks every vCPU thread until it has
/// left `KVM_RUN`, then joins.
fn stop_vcpus(stop: &AtomicBool, control: &VcpuControl, threads: Vec<std::thread::JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    control.stopping();
    for t in threads {
        while !t.is_finished() {
            // SAFETY: the thread is alive (not finished, not joined), so its pthread_t is valid.
            unsafe { libc::pthread_kill(t.as_pthread_t(), vcpu::kick_signal()) };
            std::thread::sleep(Duration::from_micros(200));
        }
        if t.join().is_err() {
            log::error!("a vCPU thread panicked");
        }
    }
}

/// TSS and identity-map addresses, in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT.
pub(crate) fn setup_vm(fd: &VmFd) -> Result<()> {
    fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
        .map_err(kvm_err("KVM_SET_IDENTITY_MAP_ADDR"))?;
    fd.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(())
}

/// The user's command line plus Kiln's virtio-mmio device entries.
fn cmdline_with_devices(cfg: &VmConfig, devices: &DeviceManager) -> String {
    let mut cmdline = cfg.cmdline.trim().to_string();
    for extra in &devices.cmdline_extra {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

fn load_kernel(cfg: &VmConfig, mem: &GuestMemoryMmap, cmdline: &str) -> Result<BootInfo> {
    Ok(boot::load(
        mem,
        &boot::BootConfig {
            kernel: cfg
                .kernel
                .as_deref()
                .ok_or(crate::config::ConfigError::NoKernel)?,
            initrd: cfg.initrd.as_deref(),
            cmdline,
            mem_size: cfg.memory.0,
            cpus: cfg.cpus as u8,
            protocol: cfg.boot_protocol,
        },
    )?)
}

/// Creates guest memory laid out by [`layout::ram_regions`] and registers it with KVM.
pub(crate) fn create_memory(
    fd: &VmFd,
    mem_size: u64,
    track_dirty_pages: bool,
) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = layout::ram_regions(mem_size)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::GuestMemory {
        mib: mem_size >> 20,
        msg: e.to_string(),
    })?;
    register_memory(fd, &mem, track_dirty_pages)?;
    Ok(mem)
}

/// Registers every region of `mem` as KVM memory slot `i`, logging dirty pages if asked.
pub(crate) fn register_memory(
    fd: &VmFd,
    mem: &GuestMemoryMmap,
    track_dirty_pages: bool,
) -> Result<()> {
    let flags = match track_dirty_pages {
        true => kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES,
        false => 0,
    };
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags,
        };
        // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM fd
        // use (the Vm keeps both; guest memory is dropped after the vCPUs are joined).
        unsafe { fd.set_user_memory_region(r) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}
