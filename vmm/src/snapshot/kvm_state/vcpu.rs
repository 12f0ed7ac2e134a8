//! One vCPU's KVM state: saved on the vCPU's own thread while it is parked outside
//! `KVM_RUN`, restored into a fresh vCPU before it first runs.

use std::fmt;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::{ioctl, StateError};

/// IA32_MTRRCAP: bits 7:0 give the number of variable-range MTRRs.
const MSR_MTRR_CAP: u32 = 0xfe;
/// MTRR MSRs KVM emulates but leaves out of `KVM_GET_MSR_INDEX_LIST` (Kiln's boot set-up
/// writes MTRRdefType, so they are guest state): MTRRdefType and the 11 fixed ranges.
const MTRR_MSRS: [u32; 12] = [
    0x2ff, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
];
/// IA32_MTRR_PHYSBASE0; variable range n is BASE0 + 2n (base) and + 2n + 1 (mask).
const MSR_MTRR_PHYS_BASE0: u32 = 0x200;
/// KVM refuses `KVM_GET_MSRS`/`KVM_SET_MSRS` with 256 or more entries (E2BIG).
const MSRS_PER_IOCTL: usize = 255;

/// A vCPU's KVM state.
///
/// Not saved: nested-virtualization state (`KVM_GET_NESTED_STATE`: a guest running its
/// own VMs on a host that offers VMX/SVM would lose them; PVM hosts have neither
/// `KVM_CAP_NESTED_STATE` nor VMX/SVM in the guest CPUID), and XSAVE components beyond
/// `kvm_xsave`'s 4 KiB (AMX; KVM offers them only after
/// `arch_prctl(ARCH_REQ_XCOMP_GUEST_PERM)`, which Kiln never calls).
///
/// Saved but not restorable everywhere: IA32_TSC. Where KVM offsets the guest TSC, the
/// restored guest's TSC continues from the saved value. On PVM hosts KVM accepts the
/// write and ignores it (the guest TSC is the host's), so the guest sees its TSC jump by
/// the host TSC difference between save and restore; kvmclock, which Linux guests keep
/// time with, continues from its saved value ([`super::restore_vm`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VcpuState {
    /// The CPUID the vCPU was given; [`restore_vcpu`] sets it first.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// General-purpose registers, RIP, RFLAGS.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers, EFER, APIC base.
    pub sregs: kvm_sregs,
    /// x87/SSE/AVX state.
    pub fpu: FpuState,
    /// Extended control registers (XCR0); `nr_xcrs` is 0 on hosts without XSAVE.
    pub xcrs: kvm_xcrs,
    /// Local APIC registers.
    pub lapic: kvm_lapic_state,
    /// MSR values, in the order they were asked for.
    pub msrs: Vec<MsrValue>,
    /// Run state (runnable, halted, waiting for SIPI, ...).
    pub mp_state: kvm_mp_state,
    /// Pending exception, interrupt, NMI and SMI; interrupt shadow.
    pub events: kvm_vcpu_events,
    /// DR0-DR3, DR6, DR7.
    pub debug_regs: kvm_debugregs,
    /// Guest TSC frequency in kHz; `None` when the host's KVM could not say
    /// (`KVM_GET_TSC_KHZ` failed or answered 0): the restored vCPU keeps the new host's.
    pub tsc_khz: Option<u32>,
}

/// The FPU/SSE/AVX state and which ioctl it came from.
///
/// `Xsave` (`KVM_GET_XSAVE`) is complete and is what every current KVM gives. `Legacy`
/// (`KVM_GET_FPU`) is the fallback when `KVM_GET_XSAVE` fails: it has x87 and SSE
/// registers only (no AVX upper halves), and KVM's `KVM_GET_FPU` does not report MXCSR
/// (observed on Linux 6.18: it reads back 0), so a restore from it sets MXCSR to 0.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum FpuState {
    /// The XSAVE image (4 KiB, standard format).
    Xsave(Box<XsaveArea>),
    /// The legacy x87/SSE registers.
    Legacy(Box<LegacyFpu>),
}

/// `kvm_xsave` with the traits kvm-bindings does not derive for it.
#[derive(Serialize, Deserialize)]
#[serde(transparent)]
pub struct XsaveArea(pub kvm_xsave);

impl XsaveArea {
    /// XSTATE_BV: which components the image holds (the others are in their initial state).
    pub fn xstate_bv(&self) -> u64 {
        // The XSAVE header starts at byte 512 of the image.
        u64::from(self.0.region[128]) | u64::from(self.0.region[129]) << 32
    }
}

impl Clone for XsaveArea {
    fn clone(&self) -> Self {
        Self(kvm_xsave {
            region: self.0.region,
            ..Default::default()
        })
    }
}

impl PartialEq for XsaveArea {
    fn eq(&self, other: &Self) -> bool {
        self.0.region == other.0.region
    }
}

impl fmt::Debug for XsaveArea {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XsaveArea")
            .field("xstate_bv", &format_args!("{:#x}", self.xstate_bv()))
            .finish_non_exhaustive()
    }
}

/// `kvm_fpu`'s fields (kvm-bindings has no serde for `kvm_fpu`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct LegacyFpu {
    /// ST0-ST7 / MM0-MM7, 16 bytes each (80 bits used).
    pub fpr: [[u8; 16]; 8],
    /// x87 control word.
    pub fcw: u16,
    /// x87 status word.
    pub fsw: u16,
    /// Abridged x87 tag word.
    pub ftwx: u8,
    /// Last x87 opcode.
    pub last_opcode: u16,
    /// Last x87 instruction pointer.
    pub last_ip: u64,
    /// Last x87 data pointer.
    pub last_dp: u64,
    /// XMM0-XMM15.
    pub xmm: [[u8; 16]; 16],
    /// SSE control/status.
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for LegacyFpu {
    fn from(f: &kvm_fpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
        }
    }
}

impl From<&LegacyFpu> for kvm_fpu {
    fn from(f: &LegacyFpu) -> Self {
        Self {
            fpr: f.fpr,
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm,
            mxcsr: f.mxcsr,
            ..Default::default()
        }
    }
}

/// One MSR's value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrValue {
    /// The MSR index.
    pub index: u32,
    /// Its value.
    pub data: u64,
}

/// Reads a vCPU's state. Call it on the vCPU's thread while the vCPU is outside
/// `KVM_RUN`, after [`complete_pending_io`]. `msr_indices` comes from
/// [`msr_indices_to_save`] (or [`msr_indices_readable`]); an MSR KVM refuses is an error
/// naming it, never dropped silently.
pub fn save_vcpu(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, StateError> {
    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_CPUID2"))?;
    Ok(VcpuState {
        cpuid: cpuid.as_slice().to_vec(),
        regs: vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
        fpu: save_fpu(vcpu)?,
        xcrs: vcpu.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?,
        lapic: vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?,
        msrs: save_msrs(vcpu, msr_indices)?,
        mp_state: vcpu.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?,
        events: vcpu
            .get_vcpu_events()
            .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?,
        debug_regs: vcpu.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?,
        tsc_khz: match vcpu.get_tsc_khz() {
            Ok(0) | Err(_) => None,
            Ok(khz) => Some(khz),
        },
    })
}

fn save_fpu(vcpu: &VcpuFd) -> Result<FpuState, StateError> {
    match vcpu.get_xsave() {
        Ok(x) => Ok(FpuState::Xsave(Box::new(XsaveArea(x)))),
        Err(e) => {
            let fpu = vcpu.get_fpu().map_err(ioctl("KVM_GET_FPU"))?;
            log::warn!(
                "KVM_GET_XSAVE failed ({e}): saving x87/SSE registers only (no AVX, no MXCSR)"
            );
            Ok(FpuState::Legacy(Box::new(LegacyFpu::from(&fpu))))
        }
    }
}

fn save_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<MsrValue>, StateError> {
    let mut values = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(MSRS_PER_IOCTL) {
        let entries: Vec<kvm_msr_entry> = chunk.iter().map(|&i| msr_entry(i, 0)).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(msr_list)?;
        let read = vcpu.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        if let Some(refused) = entries.get(read) {
            return Err(StateError::MsrNotRead {
                read: values.len() + read,
                wanted: indices.len(),
                index: refused.index,
            });
        }
        values.extend(msrs.as_slice().iter().map(|e| MsrValue {
            index: e.index,
            data: e.data,
        }));
    }
    Ok(values)
}

/// Loads `state` into a vCPU that has not run yet. Guest memory must be in place (the
/// kvmclock and steal-time MSRs make KVM write to the guest pages they name), and so
/// must the VM's irqchip. The order below is what KVM needs:
pub fn restore_vcpu(vcpu: &VcpuFd, state: &VcpuState) -> Result<(), StateError> {
    // CPUID first: KVM checks MSR writes and XSAVE components against it.
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|source| StateError::List {
        what: "CPUID",
        source,
    })?;
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
    // TSC frequency before the TSC MSR, so the TSC value is written at the final rate.
    restore_tsc_khz(vcpu, state.tsc_khz)?;
    // SREGS before LAPIC and MSRs: it sets CR0/CR4/EFER and the APIC base (xAPIC/x2APIC).
    vcpu.set_sregs(&state.sregs)
        .map_err(ioctl("KVM_SET_SREGS"))?;
    // REGS before VCPU_EVENTS: KVM_SET_REGS discards a pending exception.
    vcpu.set_regs(&state.regs).map_err(ioctl("KVM_SET_REGS"))?;
    // XCRS before the XSAVE image: XCR0 enables the components the image holds.
    vcpu.set_xcrs(&state.xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
    restore_fpu(vcpu, &state.fpu)?;
    // LAPIC after SREGS (APIC base decides how KVM reads the LAPIC ID register).
    vcpu.set_lapic(&state.lapic)
        .map_err(ioctl("KVM_SET_LAPIC"))?;
    // MSRs after LAPIC: KVM keeps IA32_TSC_DEADLINE only when the LAPIC timer is in
    // TSC-deadline mode.
    restore_msrs(vcpu, &state.msrs)?;
    vcpu.set_debug_regs(&state.debug_regs)
        .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
    // VCPU_EVENTS after REGS and SREGS, which clear or queue events of their own.
    vcpu.set_vcpu_events(&state.events)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))?;
    // MP_STATE last: KVM checks it against the SMM/latched-INIT state VCPU_EVENTS set,
    // and turns SIPI-received into a pending event in the LAPIC.
    vcpu.set_mp_state(state.mp_state)
        .map_err(ioctl("KVM_SET_MP_STATE"))?;
    Ok(())
}

fn restore_tsc_khz(vcpu: &VcpuFd, saved: Option<u32>) -> Result<(), StateError> {
    let Some(saved) = saved else { return Ok(()) };
    let host = vcpu.get_tsc_khz().unwrap_or_default();
    if host == saved {
        return Ok(());
    }
    vcpu.set_tsc_khz(saved)
        .map_err(|source| StateError::TscKhz {
            saved,
            host,
            source,
        })
}

fn restore_fpu(vcpu: &VcpuFd, fpu: &FpuState) -> Result<(), StateError> {
    match fpu {
        FpuState::Xsave(area) => {
            // KVM_SET_XSAVE reads the vCPU's XSAVE size in bytes, more than kvm_xsave's
            // 4096 only if dynamic XSTATE features were enabled; KVM_GET_XSAVE then fails
            // with EINVAL, so a successful get proves the set reads only our 4096 bytes.
            vcpu.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?;
            // SAFETY: the get above succeeded after CPUID was set (the only thing that
            // resizes the vCPU's XSAVE buffer), so KVM reads at most size_of::<kvm_xsave>().
            unsafe { vcpu.set_xsave(&area.0) }.map_err(ioctl("KVM_SET_XSAVE"))
        }
        FpuState::Legacy(f) => vcpu
            .set_fpu(&kvm_fpu::from(&**f))
            .map_err(ioctl("KVM_SET_FPU")),
    }
}

fn restore_msrs(vcpu: &VcpuFd, values: &[MsrValue]) -> Result<(), StateError> {
    let mut done = 0;
    for chunk in values.chunks(MSRS_PER_IOCTL) {
        let entries: Vec<kvm_msr_entry> =
            chunk.iter().map(|m| msr_entry(m.index, m.data)).collect();
        let msrs = Msrs::from_entries(&entries).map_err(msr_list)?;
        let set = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        if let Some(rejected) = chunk.get(set) {
            return Err(StateError::MsrNotSet {
                set: done + set,
                wanted: values.len(),
                index: rejected.index,
                data: rejected.data,
            });
        }
        done += set;
    }
    Ok(())
}

/// The MSRs to save on this host: `KVM_GET_MSR_INDEX_LIST` plus the MTRRs KVM emulates
/// but does not list, keeping those a vCPU configured like Kiln's (the host's supported
/// CPUID, fixed up as for vCPU 0) can read. Creates a scratch VM and vCPU (about 1 ms),
/// so call it before the process's seccomp filter is in place.
pub fn msr_indices_to_save(kvm: &Kvm) -> Result<Vec<u32>, StateError> {
    let vm = kvm.create_vm().map_err(ioctl("KVM_CREATE_VM"))?;
    let vcpu = vm.create_vcpu(0).map_err(ioctl("KVM_CREATE_VCPU"))?;
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_SUPPORTED_CPUID"))?;
    boot::x86::cpuid::fixup(&mut cpuid, 0, 1);
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
    msr_indices_readable(kvm, &vcpu)
}

/// [`msr_indices_to_save`] probed on `vcpu` (already given its CPUID) instead of a
/// scratch vCPU: the candidate MSRs that `vcpu` can read.
pub fn msr_indices_readable(kvm: &Kvm, vcpu: &VcpuFd) -> Result<Vec<u32>, StateError> {
    let listed = kvm
        .get_msr_index_list()
        .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?;
    let mut candidates: Vec<u32> = listed.as_slice().to_vec();
    candidates.extend(MTRR_MSRS);
    let variable_ranges = read_msr(vcpu, MSR_MTRR_CAP)?.map_or(0, |cap| (cap & 0xff) as u32);
    candidates.extend(MSR_MTRR_PHYS_BASE0..MSR_MTRR_PHYS_BASE0 + 2 * variable_ranges);
    let mut keep = Vec::with_capacity(candidates.len());
    for index in candidates {
        if keep.contains(&index) {
            continue;
        }
        match read_msr(vcpu, index)? {
            Some(_) => keep.push(index),
            None => log::debug!("MSR {index:#x} is listed but KVM refuses to read it: not saved"),
        }
    }
    Ok(keep)
}

/// One MSR's value, `None` when KVM refuses it.
fn read_msr(vcpu: &VcpuFd, index: u32) -> Result<Option<u64>, StateError> {
    let mut msrs = Msrs::from_entries(&[msr_entry(index, 0)]).map_err(msr_list)?;
    let read = vcpu.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
    Ok((read == 1).then(|| msrs.as_slice()[0].data))
}

fn msr_entry(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

fn msr_list(source: vmm_sys_util::fam::Error) -> StateError {
    StateError::List {
        what: "MSR",
        source,
    }
}

/// Finishes the I/O or MMIO access of the vCPU's last exit without running guest code:
/// `KVM_RUN` with `immediate_exit` set. KVM completes an exit's instruction (e.g. puts
/// an `IN`'s data into RAX) only on the next `KVM_RUN`, and that pending work is in no
/// state KVM lets userspace save, so call this before [`save_vcpu`] on a vCPU that
/// stopped after an I/O or MMIO exit. An access that needs another exit to finish (an
/// MMIO write split in two) is returned as [`StateError::UnexpectedExit`].
pub fn complete_pending_io(vcpu: &mut VcpuFd) -> Result<(), StateError> {
    vcpu.set_kvm_immediate_exit(1);
    let ran = vcpu.run().map(|_| ());
    vcpu.set_kvm_immediate_exit(0);
    match ran {
        Err(e) if e.errno() == libc::EINTR => Ok(()),
        Err(e) => Err(StateError::Ioctl {
            ioctl: "KVM_RUN (immediate_exit)",
            source: e,
        }),
        Ok(()) => Err(StateError::UnexpectedExit(vcpu.get_kvm_run().exit_reason)),
    }
}

/// `KVM_KVMCLOCK_CTRL`: tells a guest that uses kvmclock it was stopped, so its soft-
/// lockup watchdog does not fire after a pause or restore. `Ok(false)` when the guest
/// has not enabled kvmclock (KVM then answers EINVAL and there is nothing to tell).
pub fn tell_guest_paused(vcpu: &VcpuFd) -> Result<bool, StateError> {
    match vcpu.kvmclock_ctrl() {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == libc::EINVAL => Ok(false),
        Err(e) => Err(StateError::Ioctl {
            ioctl: "KVM_KVMCLOCK_CTRL",
            source: e,
        }),
    }
}
