//! The state KVM holds for a VM: per vCPU ([`VcpuState`]: registers, FPU/SSE, LAPIC,
//! MSRs, pending events, CPUID) and per VM ([`VmState`]: PICs, IOAPIC, PIT, kvmclock),
//! saved and restored through kvm-ioctls. Every type is serde-serializable (kvm-bindings'
//! `serde` feature; Kiln's own wrappers where that feature has none).
//!
//! Restoring needs a fresh VM whose guest memory, in-kernel irqchip and PIT exist
//! (as [`crate::vm`] builds them) and fresh vCPUs that have not run; [`restore_vm`] and
//! [`restore_vcpu`] then load the saved state before any vCPU runs.

mod vcpu;
mod vm;

#[cfg(test)]
mod tests;

pub use vcpu::{
    complete_pending_io, msr_indices_readable, msr_indices_to_save, restore_vcpu, save_vcpu,
    tell_guest_paused, FpuState, LegacyFpu, MsrValue, VcpuState, XsaveArea,
};
pub use vm::{restore_vm, save_vm, Irqchip, VmState};

/// Errors from saving or restoring KVM state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A KVM ioctl failed.
    #[error("{ioctl} failed: {source}{}", errno_hint(source.errno()))]
    Ioctl {
        /// The ioctl, e.g. `KVM_GET_XSAVE`.
        ioctl: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// `KVM_GET_MSRS` stopped at an MSR KVM refuses to read.
    #[error("KVM_GET_MSRS read {read} of {wanted} MSRs: this host's KVM refuses MSR {index:#x}")]
    MsrNotRead {
        /// MSRs read before the refused one.
        read: usize,
        /// MSRs asked for.
        wanted: usize,
        /// The refused MSR.
        index: u32,
    },
    /// `KVM_SET_MSRS` stopped at an MSR KVM rejects.
    #[error("KVM_SET_MSRS set {set} of {wanted} MSRs: this host's KVM rejects MSR {index:#x} = {data:#x}")]
    MsrNotSet {
        /// MSRs set before the rejected one.
        set: usize,
        /// MSRs to set.
        wanted: usize,
        /// The rejected MSR.
        index: u32,
        /// The value it was given.
        data: u64,
    },
    /// An MSR or CPUID list did not fit KVM's structure.
    #[error("building the {what} list for KVM: {source}")]
    List {
        /// `MSR` or `CPUID`.
        what: &'static str,
        /// Why (too many entries).
        source: vmm_sys_util::fam::Error,
    },
    /// The saved TSC frequency cannot be given to the vCPU on this host.
    #[error("KVM_SET_TSC_KHZ to the snapshot's {saved} kHz failed (this host's vCPUs run at {host} kHz; without KVM_CAP_TSC_CONTROL KVM cannot run a guest TSC slower than the host's): {source}")]
    TscKhz {
        /// The snapshot's guest TSC frequency, kHz.
        saved: u32,
        /// This host's, kHz.
        host: u32,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// A saved irqchip state is for a different chip than its place in [`VmState`].
    #[error("the saved {slot} state is for irqchip {found}, not {expected}: the state is corrupt")]
    WrongIrqchip {
        /// Which field of [`VmState`].
        slot: &'static str,
        /// The chip id the field must have.
        expected: u32,
        /// The chip id it has.
        found: u32,
    },
    /// `KVM_RUN` with `immediate_exit` set returned an exit instead of `EINTR`.
    #[error("completing the vCPU's pending I/O returned a new exit (reason {0}) instead of EINTR: handle it and retry")]
    UnexpectedExit(u32),
}

/// What an errno from a state ioctl most likely means.
fn errno_hint(errno: i32) -> &'static str {
    match errno {
        libc::ENOTTY => " (this host's KVM does not have this ioctl)",
        libc::EINVAL => " (this host's KVM rejects it: unsupported here, or invalid state)",
        _ => "",
    }
}

/// Maps a kvm-ioctls error to [`StateError::Ioctl`] naming `ioctl`.
fn ioctl(ioctl: &'static str) -> impl Fn(kvm_ioctls::Error) -> StateError {
    move |source| StateError::Ioctl { ioctl, source }
}
