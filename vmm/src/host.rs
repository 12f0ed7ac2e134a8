//! Host facts: opening `/dev/kvm` with clear errors, the capabilities Kiln needs,
//! PVM detection, and the `kiln check` report.

use std::fmt::Write as _;
use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

use crate::error::{Error, Result};

/// Kiln's own vCPU ceiling: what the MP table can describe (8-bit APIC ids, one
/// reserved for the IOAPIC). The one constant every vCPU-count check uses.
pub const KILN_MAX_VCPUS: u32 = boot::mptable::MAX_CPUS as u32;

/// Capabilities a VM needs, with the names errors use.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Opens `/dev/kvm` (or `KILN_KVM_DEVICE` when set, for tests), mapping failures to
/// actionable errors, and checks the API version and required capabilities.
pub fn open_kvm() -> Result<Kvm> {
    let path = kvm_device_path();
    let kvm = open_kvm_at(&path)?;
    let v = kvm.get_api_version();
    if v < 0 {
        return Err(Error::NotKvm(path.display().to_string()));
    }
    if v != 12 {
        return Err(Error::KvmApiVersion(v));
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(Error::KvmCapability(name));
        }
    }
    Ok(kvm)
}

/// The KVM device path: `/dev/kvm` unless `KILN_KVM_DEVICE` overrides it.
pub fn kvm_device_path() -> std::path::PathBuf {
    std::env::var_os("KILN_KVM_DEVICE")
        .map(Into::into)
        .unwrap_or_else(|| "/dev/kvm".into())
}

fn open_kvm_at(path: &Path) -> Result<Kvm> {
    use std::os::unix::ffi::OsStrExt;
    let cpath = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::KvmOpen(std::io::ErrorKind::InvalidInput.into()))?;
    match Kvm::new_with_path(&cpath) {
        Ok(k) => Ok(k),
        Err(e) => Err(match e.errno() {
            libc::ENOENT => Error::KvmMissing,
            libc::EACCES | libc::EPERM => Error::KvmPermission,
            _ => Error::KvmOpen(std::io::Error::from_raw_os_error(e.errno())),
        }),
    }
}

/// The vCPU limit on this host: KVM's maximum, capped at Kiln's.
pub fn max_vcpus(kvm: &Kvm) -> u32 {
    (kvm.get_max_vcpus() as u32).min(KILN_MAX_VCPUS)
}

/// Host RAM in bytes (MemTotal), if readable.
pub fn host_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Whether the host's KVM is PVM-backed: the `kvm_pvm` module is loaded, or the CPU
/// shows neither VMX nor SVM (nested KVM without hardware virtualization).
pub fn is_pvm_host() -> bool {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return true;
    }
    match std::fs::read_to_string("/proc/cpuinfo") {
        Ok(info) => !info
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm")),
        Err(_) => false,
    }
}

/// What a PVM host means for guest kernels (printed by `kiln check` and with guest faults).
pub const PVM_NOTE: &str = "this host's KVM is PVM-backed: guest kernels without PVM support run \
     under the host's instruction emulator (about 1.5 M instructions/s) and stop at the first \
     instruction it cannot emulate (XSAVE, SIMD, exception delivery)";

/// The `kiln check` report, or the error that makes KVM unusable.
pub fn check_report() -> Result<String> {
    let path = kvm_device_path();
    let mut r = String::new();
    let _ = writeln!(r, "KVM device:       {} (present)", path.display());
    let kvm = open_kvm_at(&path)?;
    let _ = writeln!(r, "access:           read/write ok");
    let v = kvm.get_api_version();
    let _ = writeln!(
        r,
        "API version:      {v}{}",
        if v == 12 { " (ok)" } else { " (need 12)" }
    );
    for (cap, name) in REQUIRED_CAPS {
        let ok = kvm.check_extension(*cap);
        let _ = writeln!(r, "{name:<24}{}", if ok { "yes" } else { "MISSING" });
    }
    let _ = writeln!(
        r,
        "max vCPUs:        {} (KVM), {} recommended; Kiln uses up to {}",
        kvm.get_max_vcpus(),
        kvm.get_nr_vcpus(),
        max_vcpus(&kvm)
    );
    if let Some(m) = host_memory() {
        let _ = writeln!(r, "host memory:      {} MiB", m >> 20);
    }
    let pvm = is_pvm_host();
    let _ = writeln!(r, "PVM-backed KVM:   {}", if pvm { "yes" } else { "no" });
    if pvm {
        let _ = writeln!(r, "note: {PVM_NOTE}.");
    } else {
        let _ = writeln!(
            r,
            "note: hardware virtualization: stock Linux guest kernels boot fully."
        );
    }
    if let Some((cap, name)) = REQUIRED_CAPS.iter().find(|(c, _)| !kvm.check_extension(*c)) {
        let _ = cap;
        return Err(Error::KvmCapability(name));
    }
    if v != 12 {
        return Err(Error::KvmApiVersion(v));
    }
    Ok(r)
}
