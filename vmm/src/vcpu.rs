//! vCPUs: per-vCPU register set-up and the `KVM_RUN` loop, one thread each.
//!
//! Each vCPU thread owns its `VcpuFd`. Port and MMIO exits go to the shared buses; exits
//! that end the VM are reported through the [`ExitLatch`]. To stop a vCPU the VMM sets
//! the shared stop flag and sends [`kick_signal`] to the thread: its handler sets
//! `immediate_exit` in that thread's `kvm_run`, so a `KVM_RUN` in progress or about to
//! start returns `EINTR` at once.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use boot::x86;
use boot::{EntryPoint, GuestMemoryMmap};
use devices::Bus;
use kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN;
use kvm_bindings::{
    kvm_msr_entry, kvm_run, kvm_sregs, CpuId, Msrs, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use util::time::BootTimestamps;
use vm_memory::{Bytes, GuestAddress};

use crate::error::{kvm_err, Error, Result};
use crate::exit::{ExitLatch, GuestFault, VmExit};
use crate::snapshot::kvm_state;
use crate::vcpu_control::{VcpuControl, VcpuMetrics};

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    libc::SIGRTMIN()
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let _ = KVM_RUN.try_with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, set by the vCPU
            // loop and cleared before the VcpuFd is dropped; a byte store is signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick handler (idempotent, process-wide).
pub fn install_kick_handler() -> Result<()> {
    // SAFETY: a zeroed sigaction is valid; we set a handler that only touches its own
    // thread's kvm_run through a thread-local pointer.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(kick_signal(), &sa, std::ptr::null_mut()) != 0 {
            return Err(Error::Io {
                what: "installing the vCPU kick handler",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// What a vCPU thread needs besides its fd.
pub struct VcpuContext {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// Guest memory (read when reporting a fault).
    pub mem: Arc<GuestMemoryMmap>,
    /// Set to stop every vCPU.
    pub stop: Arc<AtomicBool>,
    /// Where a VM-ending exit is reported.
    pub latch: Arc<ExitLatch>,
    /// Start-up timestamps (vCPU 0 marks the first `KVM_RUN`).
    pub times: Arc<BootTimestamps>,
    /// Whether the host is PVM-backed (for fault messages).
    pub pvm_host: bool,
    /// Pause requests and exit counters.
    pub control: Arc<VcpuControl>,
    /// The KVM handle (a snapshot lists the MSRs to save with it).
    pub kvm: Arc<Kvm>,
}

/// KVM's supported CPUID, queried once per VM and fixed up per vCPU by [`configure`].
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId> {
    kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))
}

/// Sets CPUID (from `supported`, fixed up for this vCPU), MSRs, FPU, LAPIC LINT pins and,
/// for the boot CPU, the entry registers.
pub fn configure(
    supported: &CpuId,
    vcpu: &VcpuFd,
    id: u8,
    cpus: u8,
    entry: Option<&EntryPoint>,
) -> Result<()> {
    let mut cpuid = supported.clone();
    x86::cpuid::fixup(&mut cpuid, id, cpus);
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    let entries = x86::msr::boot_msr_entries();
    let msrs = Msrs::from_entries(&entries).map_err(Error::MsrList)?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    check_msrs_set(&entries, set)?;
    vcpu.set_fpu(&x86::fpu::boot_fpu())
        .map_err(kvm_err("KVM_SET_FPU"))?;
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    x86::lapic::set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
    if let Some(entry) = entry {
        let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&x86::regs::boot_sregs(entry, sregs))
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        vcpu.set_regs(&x86::regs::boot_regs(entry))
            .map_err(kvm_err("KVM_SET_REGS"))?;
    }
    Ok(())
}

/// `KVM_SET_MSRS` stops at the first MSR KVM rejects and returns how many it set.
fn check_msrs_set(entries: &[kvm_msr_entry], set: usize) -> Result<()> {
    match entries.get(set) {
        None => Ok(()),
        Some(rejected) => Err(Error::MsrsNotSet {
            set,
            wanted: entries.len(),
            rejected: rejected.index,
        }),
    }
}

enum Step {
    Continue,
    Stop(VmExit),
    Fault(&'static str, Option<u32>),
    TripleFault,
}

/// Runs vCPU `id` until the VM stops. Called on the vCPU's own thread.
pub fn run(mut vcpu: VcpuFd, id: u32, ctx: VcpuContext) {
    KVM_RUN.with(|p| p.set(vcpu.get_kvm_run() as *mut kvm_run));
    if id == 0 {
        // Taken once, just before the first KVM_RUN (not on every exit).
        BootTimestamps::mark(&ctx.times.first_kvm_run);
    }
    loop {
        if ctx.stop.load(Ordering::Acquire) {
            break;
        }
        ctx.control
            .park_if_paused(id as usize, &mut |_| save_state(&mut vcpu, &ctx.kvm));
        if ctx.stop.load(Ordering::Acquire) {
            break;
        }
        let step = match vcpu.run() {
            Ok(exit) => handle_exit(exit, &ctx),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                Step::Continue
            }
            Err(e) => {
                log::error!("vCPU {id}: KVM_RUN failed: {e}");
                Step::Fault("KVM_RUN failed", Some(e.errno() as u32))
            }
        };
        match step {
            Step::Continue => {}
            Step::Stop(exit) => {
                ctx.latch.set(exit);
                break;
            }
            Step::TripleFault => {
                let rip = vcpu.get_regs().ok().map(|r| r.rip);
                ctx.latch.set(VmExit::TripleFault { vcpu: id, rip });
                break;
            }
            Step::Fault(reason, suberror) => {
                VcpuMetrics::count(&ctx.control.metrics.failures);
                let suberror = suberror.or_else(|| internal_suberror(&mut vcpu));
                let fault = describe_fault(&vcpu, id, reason, suberror, &ctx);
                log::debug!("{fault}");
                ctx.latch.set(VmExit::GuestFault(fault));
                break;
            }
        }
    }
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
}

/// This vCPU's state for a snapshot: its last exit's I/O completed first, then every
/// MSR this host lets it read.
fn save_state(
    vcpu: &mut VcpuFd,
    kvm: &Kvm,
) -> std::result::Result<kvm_state::VcpuState, kvm_state::StateError> {
    kvm_state::complete_pending_io(vcpu)?;
    let msrs = kvm_state::msr_indices_readable(kvm, vcpu)?;
    kvm_state::save_vcpu(vcpu, &msrs)
}

fn handle_exit(exit: VcpuExit, ctx: &VcpuContext) -> Step {
    let m = &ctx.control.metrics;
    match exit {
        VcpuExit::IoIn(port, data) => {
            VcpuMetrics::count(&m.exit_io_in);
            data.fill(0xff);
            if !ctx.pio.read(u64::from(port), data) {
                log::trace!("unhandled port read {port:#x}");
            }
            Step::Continue
        }
        VcpuExit::IoOut(port, data) => {
            VcpuMetrics::count(&m.exit_io_out);
            if !ctx.pio.write(u64::from(port), data) {
                log::trace!("unhandled port write {port:#x}");
            }
            Step::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            VcpuMetrics::count(&m.exit_mmio_read);
            data.fill(0);
            if !ctx.mmio.read(addr, data) {
                log::debug!("unhandled MMIO read {addr:#x}");
            }
            Step::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            VcpuMetrics::count(&m.exit_mmio_write);
            if !ctx.mmio.write(addr, data) {
                log::debug!("unhandled MMIO write {addr:#x}");
            }
            Step::Continue
        }
        VcpuExit::Hlt => Step::Stop(VmExit::PowerOff),
        VcpuExit::Shutdown => Step::TripleFault,
        VcpuExit::SystemEvent(kind, _) => match kind {
            KVM_SYSTEM_EVENT_SHUTDOWN => Step::Stop(VmExit::PowerOff),
            KVM_SYSTEM_EVENT_RESET => Step::Stop(VmExit::Reset),
            KVM_SYSTEM_EVENT_CRASH => Step::Fault("guest crash (KVM_SYSTEM_EVENT_CRASH)", None),
            other => {
                log::debug!("ignoring system event {other}");
                Step::Continue
            }
        },
        VcpuExit::InternalError => Step::Fault("KVM_EXIT_INTERNAL_ERROR", None),
        VcpuExit::FailEntry(reason, _) => Step::Fault(
            "KVM_EXIT_FAIL_ENTRY (hardware entry failure)",
            u32::try_from(reason).ok(),
        ),
        VcpuExit::Intr => Step::Continue,
        other => {
            log::error!("unexpected vCPU exit {other:?}");
            Step::Fault("unexpected KVM exit", None)
        }
    }
}

fn internal_suberror(vcpu: &mut VcpuFd) -> Option<u32> {
    let run = vcpu.get_kvm_run();
    if run.exit_reason != kvm_bindings::KVM_EXIT_INTERNAL_ERROR {
        return None;
    }
    // SAFETY: exit_reason says the `internal` member of the union is the valid one.
    Some(unsafe { run.__bindgen_anon_1.internal.suberror })
}

fn describe_fault(
    vcpu: &VcpuFd,
    id: u32,
    reason: &str,
    suberror: Option<u32>,
    ctx: &VcpuContext,
) -> GuestFault {
    let rip = vcpu.get_regs().map(|r| r.rip).unwrap_or(0);
    let insn = vcpu
        .get_sregs()
        .ok()
        .and_then(|s| {
            let gva = s.cs.base.wrapping_add(rip);
            vcpu.translate_gva(gva)
                .ok()
                .filter(|t| t.valid != 0)
                .map(|t| t.physical_address)
                .or_else(|| walk_page_tables(&ctx.mem, &s, gva))
        })
        .map(|gpa| read_bytes(&ctx.mem, gpa, 16))
        .unwrap_or_default();
    GuestFault {
        vcpu: id,
        reason: reason.to_string(),
        suberror,
        rip,
        insn,
        pvm_host: ctx.pvm_host,
    }
}

/// Reads up to `len` bytes at `gpa`, stopping at the first unreadable byte.
fn read_bytes(mem: &GuestMemoryMmap, gpa: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map_while(|i| mem.read_obj::<u8>(GuestAddress(gpa.checked_add(i)?)).ok())
        .collect()
}

/// Translates a guest-virtual address by walking the guest's page tables (paging off,
/// or 4-level long-mode paging); `None` when a level is not present.
pub fn walk_page_tables(mem: &GuestMemoryMmap, sregs: &kvm_sregs, gva: u64) -> Option<u64> {
    const PG: u64 = 1 << 31;
    const LMA: u64 = 1 << 10;
    const PRESENT: u64 = 1;
    const HUGE: u64 = 1 << 7;
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    if sregs.cr0 & PG == 0 {
        return Some(gva & 0xffff_ffff);
    }
    if sregs.efer & LMA == 0 {
        return None;
    }
    let mut table = sregs.cr3 & ADDR;
    for level in (0..4).rev() {
        let shift = 12 + 9 * level;
        let index = (gva >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PRESENT == 0 {
            return None;
        }
        let base = entry & ADDR;
        if level == 0 || (level < 3 && entry & HUGE != 0) {
            let mask = (1u64 << shift) - 1;
            return Some((base & !mask) | (gva & mask));
        }
        table = base;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_walk_identity_2m() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        // PML4 at 0x9000 -> PDPT at 0xa000 -> PD at 0xb000, 2 MiB pages.
        mem.write_obj(0xa000u64 | 3, GuestAddress(0x9000)).unwrap();
        mem.write_obj(0xb000u64 | 3, GuestAddress(0xa000)).unwrap();
        mem.write_obj(0x20_0000u64 | 0x83, GuestAddress(0xb008))
            .unwrap();
        let mut s = kvm_sregs::default();
        assert_eq!(walk_page_tables(&mem, &s, 0x1234), Some(0x1234));
        s.cr0 = 1 << 31 | 1;
        s.efer = 1 << 10 | 1 << 8;
        s.cr3 = 0x9000;
        assert_eq!(walk_page_tables(&mem, &s, 0x20_1234), Some(0x20_1234));
        assert_eq!(walk_page_tables(&mem, &s, 0x1234), None);
        assert!(read_bytes(&mem, 0x1f_fffe, 16).len() == 2);
    }

    #[test]
    fn all_msrs_set_is_ok() {
        let entries = x86::msr::boot_msr_entries();
        check_msrs_set(&entries, entries.len()).unwrap();
    }

    #[test]
    fn fewer_msrs_set_names_the_rejected_one() {
        let entries = x86::msr::boot_msr_entries();
        let err = check_msrs_set(&entries, 3).unwrap_err();
        assert!(
            matches!(err, Error::MsrsNotSet { set: 3, wanted, rejected }
                if wanted == entries.len() && rejected == entries[3].index),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("3 of"), "{msg}");
        assert!(msg.contains(&format!("{:#x}", entries[3].index)), "{msg}");
    }
}
