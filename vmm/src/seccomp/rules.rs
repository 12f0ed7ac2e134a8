//! The allowlists: which system calls (and, for `ioctl` and `tgkill`, which arguments)
//! each kind of Kiln thread makes once its filter is in place. Found by tracing every
//! path the tests exercise (boot, virtio-blk, virtio-net, serial input and output,
//! signals, every exit reason, `--timings`) with `strace -f`.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid2, kvm_debugregs, kvm_dirty_log, kvm_fpu, kvm_irqchip,
    kvm_lapic_state, kvm_mp_state, kvm_msr_list, kvm_msrs, kvm_pit_state2, kvm_regs, kvm_sregs,
    kvm_translation, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use seccompiler::{SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition, SeccompRule};
use vmm_sys_util::{ioctl_io_nr, ioctl_ior_nr, ioctl_iow_nr, ioctl_iowr_nr};

use super::{SeccompError, ThreadKind};

const KVMIO: u32 = 0xae;
ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
// What a snapshot reads: on the vCPU threads (each saves its own vCPU) …
ioctl_iowr_nr!(KVM_GET_MSR_INDEX_LIST, KVMIO, 0x02, kvm_msr_list);
ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
ioctl_iowr_nr!(KVM_GET_CPUID2, KVMIO, 0x91, kvm_cpuid2);
ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
ioctl_io_nr!(KVM_GET_TSC_KHZ, KVMIO, 0xa3);
ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
// … and on the API thread (the VM's in-kernel devices, the dirty log, host features).
ioctl_io_nr!(KVM_CHECK_EXTENSION, KVMIO, 0x03);
ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);
ioctl_iow_nr!(KVM_GET_DIRTY_LOG, KVMIO, 0x42, kvm_dirty_log);

/// Rules by syscall number; an empty rule list allows every use.
pub type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// `arg == value` on argument `arg` (its low 32 bits).
fn arg_eq(arg: u8, value: u64) -> Result<SeccompRule, SeccompError> {
    let cond = SeccompCondition::new(arg, Len::Dword, Op::Eq, value)?;
    Ok(SeccompRule::new(vec![cond])?)
}

/// One rule per allowed value of argument `arg`.
fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    values.iter().map(|&v| arg_eq(arg, v)).collect()
}

/// What every Kiln thread needs: memory management for the allocator, locks, signal
/// return, thread exit, stderr, and what the SIGSYS handler itself calls.
fn common(rules: &mut Rules) -> Result<(), SeccompError> {
    for nr in [
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_mprotect,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_sigaltstack,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_restart_syscall,
        libc::SYS_clock_gettime,
        libc::SYS_getrandom,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_write,
        libc::SYS_close,
    ] {
        rules.insert(nr, Vec::new());
    }
    // The SIGSYS handler names the thread; nothing else may change thread attributes.
    rules.insert(libc::SYS_prctl, vec![arg_eq(0, libc::PR_GET_NAME as u64)?]);
    // Debug builds of std check a descriptor is open before closing it.
    rules.insert(libc::SYS_fcntl, vec![arg_eq(1, libc::F_GETFD as u64)?]);
    // abort() on a panic signals the thread itself.
    rules.insert(libc::SYS_tgkill, one_of(2, &[libc::SIGABRT as u64])?);
    Ok(())
}

/// The API thread: an epoll loop over its listening socket and connections; requests
/// open files (a drive's new image: open, stat, flock, seek to its end), change rate limiters
/// (timerfds), pause vCPUs (the kick signal) and write metrics.
fn api(r: &mut Rules) -> Result<(), SeccompError> {
    for nr in [
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        libc::SYS_accept4,
        libc::SYS_read,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_writev,
        libc::SYS_shutdown,
        libc::SYS_openat,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_lseek,
        libc::SYS_flock,
        // Removing the API socket file as the thread ends.
        libc::SYS_unlink,
        libc::SYS_unlinkat,
        libc::SYS_timerfd_settime,
        libc::SYS_timerfd_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        // Snapshots: the memory file (which pages are present: /proc/self/pagemap) and
        // the state file (written to a temporary file, synced, renamed).
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_ftruncate,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_rename,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_getrandom,
    ] {
        r.insert(nr, Vec::new());
    }
    r.insert(
        libc::SYS_ioctl,
        one_of(
            1,
            &[
                KVM_CHECK_EXTENSION(),
                KVM_GET_IRQCHIP(),
                KVM_GET_PIT2(),
                KVM_GET_CLOCK(),
                KVM_GET_DIRTY_LOG(),
            ],
        )?,
    );
    r.insert(
        libc::SYS_tgkill,
        one_of(2, &[libc::SIGABRT as u64, libc::SIGRTMIN() as u64])?,
    );
    r.insert(
        libc::SYS_fcntl,
        one_of(
            1,
            &[
                libc::F_GETFD as u64,
                libc::F_GETFL as u64,
                libc::F_SETFL as u64,
            ],
        )?,
    );
    Ok(())
}

/// The allowlist of `kind`.
pub fn rules(kind: ThreadKind) -> Result<Rules, SeccompError> {
    let mut r = Rules::new();
    common(&mut r)?;
    match kind {
        ThreadKind::Main => {
            // The event loop: epoll over eventfds, the signalfd, stdin and sockets.
            for nr in [
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                libc::SYS_read,
                libc::SYS_pread64,
                libc::SYS_lseek,
                libc::SYS_clock_nanosleep,
                libc::SYS_nanosleep,
                // Tearing the VM down removes the vsock device's socket file.
                libc::SYS_unlink,
                libc::SYS_unlinkat,
            ] {
                r.insert(nr, Vec::new());
            }
            // Stopping vCPUs: the kick signal to each vCPU thread; abort on panic.
            r.insert(
                libc::SYS_tgkill,
                one_of(2, &[libc::SIGABRT as u64, libc::SIGRTMIN() as u64])?,
            );
            // Restoring the terminal's mode.
            r.insert(libc::SYS_ioctl, one_of(1, &[libc::TCGETS, libc::TCSETS])?);
        }
        ThreadKind::Vcpu => {
            r.insert(
                libc::SYS_ioctl,
                one_of(
                    1,
                    &[
                        KVM_RUN(),
                        KVM_GET_REGS(),
                        KVM_GET_SREGS(),
                        KVM_TRANSLATE(),
                        // virtio-net activation (a status write) sets the TAP's offloads.
                        libc::TUNSETOFFLOAD,
                        // Saving the vCPU's state for a snapshot.
                        KVM_GET_MSR_INDEX_LIST(),
                        KVM_GET_MSRS(),
                        KVM_GET_FPU(),
                        KVM_GET_LAPIC(),
                        KVM_GET_CPUID2(),
                        KVM_GET_MP_STATE(),
                        KVM_GET_VCPU_EVENTS(),
                        KVM_GET_DEBUGREGS(),
                        KVM_GET_TSC_KHZ(),
                        KVM_GET_XSAVE(),
                        KVM_GET_XCRS(),
                    ],
                )?,
            );
        }
        ThreadKind::Device => {
            // Queue eventfds, the TAP, the disk image.
            for nr in [
                libc::SYS_epoll_wait,
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                libc::SYS_read,
                libc::SYS_readv,
                libc::SYS_writev,
                libc::SYS_pread64,
                libc::SYS_pwrite64,
                libc::SYS_fdatasync,
                libc::SYS_fsync,
                libc::SYS_fallocate,
                // Rate limiters' timers.
                libc::SYS_timerfd_settime,
                libc::SYS_timerfd_gettime,
                // virtio-vsock's host side: Unix sockets accepted from its listener and
                // connected to `<uds>_<port>`.
                libc::SYS_accept4,
                libc::SYS_connect,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                libc::SYS_shutdown,
            ] {
                r.insert(nr, Vec::new());
            }
            r.insert(libc::SYS_socket, vec![arg_eq(0, libc::AF_UNIX as u64)?]);
            // Non-blocking accepted vsock streams.
            r.insert(libc::SYS_ioctl, one_of(1, &[libc::FIONBIO])?);
        }
        ThreadKind::Api => api(&mut r)?,
    }
    Ok(r)
}
