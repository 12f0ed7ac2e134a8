//! The VMM's error type: everything that can stop Kiln from building or running a VM.

use std::path::PathBuf;

use crate::config::ConfigError;

/// Errors from building or running a VM. Each message names the problem and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `/dev/kvm` does not exist.
    #[error("/dev/kvm not found: load the KVM module (modprobe kvm_intel or kvm_amd) or run on a host with virtualization enabled")]
    KvmMissing,
    /// `/dev/kvm` exists but cannot be opened.
    #[error("cannot open /dev/kvm: permission denied: add your user to the 'kvm' group (sudo usermod -aG kvm $USER, then log in again) or run as root")]
    KvmPermission,
    /// Opening `/dev/kvm` failed otherwise.
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(std::io::Error),
    /// The device answered no KVM ioctl.
    #[error("{0} is not a KVM device: point KILN_KVM_DEVICE at /dev/kvm or unset it")]
    NotKvm(String),
    /// The KVM API version is not 12.
    #[error("KVM API version {0} is not supported (need 12): upgrade the host kernel")]
    KvmApiVersion(i32),
    /// A KVM capability Kiln needs is missing.
    #[error("the host KVM lacks {0}: Kiln needs it; upgrade the host kernel")]
    KvmCapability(&'static str),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {source}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The errno.
        source: kvm_ioctls::Error,
    },
    /// More vCPUs than KVM allows.
    #[error("cpus {asked} is above this host's KVM limit of {max}: use --cpus {max} or fewer")]
    TooManyCpus {
        /// Requested.
        asked: u32,
        /// KVM_CAP_MAX_VCPUS (capped at 254).
        max: u32,
    },
    /// More memory than the host has.
    #[error("memory {asked_mib} MiB is more than this host's {host_mib} MiB of RAM: use a smaller --memory")]
    MemoryTooLarge {
        /// Requested, MiB.
        asked_mib: u64,
        /// Host RAM, MiB.
        host_mib: u64,
    },
    /// Guest memory could not be created.
    #[error("cannot allocate {mib} MiB of guest memory: {msg}; use a smaller --memory")]
    GuestMemory {
        /// Size, MiB.
        mib: u64,
        /// The allocator's message.
        msg: String,
    },
    /// Loading the kernel, initrd or command line failed.
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    /// A virtio device could not be set up.
    #[error(transparent)]
    Virtio(#[from] devices::virtio::Error),
    /// A device did not fit on a bus.
    #[error("device setup: {0}")]
    Bus(#[from] devices::BusError),
    /// More virtio devices than there are slots and interrupt lines.
    #[error("too many virtio devices: Kiln supports {max} (disks + nets); remove some")]
    TooManyDevices {
        /// The number of slots.
        max: u32,
    },
    /// KVM's MSR list could not be built.
    #[error("building the MSR list for KVM_SET_MSRS: {0:?}")]
    MsrList(vmm_sys_util::fam::Error),
    /// The `--timings` file could not be created.
    #[error(
        "cannot create timings file {path}: {source}; check the directory exists and is writable"
    )]
    TimingsFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The serial output file could not be opened.
    #[error("cannot open serial output file {path}: {source}")]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Host I/O (eventfds, threads, epoll).
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A thread could not give up its capabilities or install its seccomp filter.
    #[error(transparent)]
    Confine(#[from] crate::confine::ConfineError),
    /// The event loop failed.
    #[error("event loop: {0}")]
    EventLoop(#[from] event_manager::Error),
    /// `KVM_SET_MSRS` set fewer MSRs than asked.
    #[error("KVM_SET_MSRS set only {set} of {wanted} MSRs: this host's KVM rejects MSR {rejected:#x}; upgrade the host kernel or report it with `kiln check` output")]
    MsrsNotSet {
        /// How many KVM set (the entries before the rejected one).
        set: usize,
        /// How many Kiln asked for.
        wanted: usize,
        /// The index of the first MSR KVM rejected.
        rejected: u32,
    },
    /// The snapshot's device states do not match its configuration.
    #[error("the snapshot holds {disks} disk and {nets} network device states, which its configuration does not match: the snapshot is corrupt")]
    SnapshotDevices {
        /// Disk states.
        disks: usize,
        /// Net states.
        nets: usize,
    },
    /// The snapshot's vCPU states do not match its vCPU count.
    #[error("the snapshot holds {states} vCPU states for {cpus} vCPUs: the snapshot is corrupt")]
    SnapshotVcpus {
        /// vCPU states.
        states: usize,
        /// vCPUs configured.
        cpus: usize,
    },
    /// The vsock device could not be set up (its Unix socket).
    #[error(transparent)]
    Vsock(devices::virtio::vsock::Error),
    /// A VM was built from parts prepared for another memory configuration (a Kiln bug:
    /// the caller checks `Prepared::fits`).
    #[error("the prepared VM has another memory configuration than the one asked for")]
    PreparedMismatch,
    /// A device's saved state could not be restored.
    #[error("restoring a device: {0}")]
    DeviceState(#[source] devices::snapshot::StateError),
    /// KVM state could not be saved or restored.
    #[error(transparent)]
    KvmState(#[from] crate::snapshot::kvm_state::StateError),
    /// Guest memory could not be written or mapped.
    #[error(transparent)]
    Memory(#[from] crate::snapshot::memory::MemoryError),
}

/// Result with the VMM's error.
pub type Result<T> = std::result::Result<T, Error>;

/// Wraps a KVM ioctl error with what was being done.
pub fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { what, source }
}

/// Wraps a host I/O error with what was being done.
pub fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}
