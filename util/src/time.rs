//! The clock and the start-up milestones shared by the boot-timer device, the VMM,
//! the harness and the benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic clock (`CLOCK_MONOTONIC`) in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass it.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Start-up milestones of one VM, in `CLOCK_MONOTONIC` nanoseconds (0 = not reached).
///
/// Shared between the VMM (process start, VMM ready), vCPU 0 (first `KVM_RUN`) and the
/// boot-timer device.
#[derive(Debug, Default)]
pub struct BootTimestamps {
    /// When the process started (or when the launcher says it exec'd us).
    pub process_start: AtomicU64,
    /// When the VM was fully built and vCPUs were about to start.
    pub vmm_ready: AtomicU64,
    /// When vCPU 0 first entered `KVM_RUN`.
    pub first_kvm_run: AtomicU64,
    /// When the guest wrote the boot-timer byte.
    pub boot_timer: AtomicU64,
    /// When the VM stopped (guest exit seen), before vCPU and KVM teardown.
    pub vm_stopped: AtomicU64,
}

impl BootTimestamps {
    /// Timestamps starting at `process_start`.
    pub fn new(process_start: u64) -> Self {
        let t = Self::default();
        t.process_start.store(process_start, Ordering::Relaxed);
        t
    }

    /// Records `field` now if it has not been recorded yet; returns true if it recorded.
    pub fn mark(field: &AtomicU64) -> bool {
        field
            .compare_exchange(0, monotonic_ns(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Microseconds from process start to `field`, if `field` was reached.
    pub fn since_start_us(&self, field: &AtomicU64) -> Option<u64> {
        let t = field.load(Ordering::Relaxed);
        let s = self.process_start.load(Ordering::Relaxed);
        (t != 0).then(|| t.saturating_sub(s) / 1000)
    }
}
