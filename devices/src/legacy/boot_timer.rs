//! Boot-timer device, compatible with Firecracker's: the guest writes the byte
//! [`BOOT_TIMER_MAGIC`] to the first byte of the device's MMIO slot to say "booted".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::bus::BusDevice;

/// The byte a guest writes to signal that it has booted.
pub const BOOT_TIMER_MAGIC: u8 = 123;

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

/// The boot-timer MMIO device.
pub struct BootTimer {
    times: Arc<BootTimestamps>,
}

impl BootTimer {
    /// A boot timer recording into `times`.
    pub fn new(times: Arc<BootTimestamps>) -> Self {
        Self { times }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, _data: &mut [u8]) {}

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_TIMER_MAGIC) {
            return;
        }
        if BootTimestamps::mark(&self.times.boot_timer) {
            let t = &self.times;
            let since_start = t.since_start_us(&t.boot_timer).unwrap_or(0);
            let first_run = t.first_kvm_run.load(Ordering::Relaxed);
            let since_run = t
                .boot_timer
                .load(Ordering::Relaxed)
                .saturating_sub(first_run)
                / 1000;
            log::info!(
                "boot-timer: guest booted {since_start} us after process start, \
                 {since_run} us after the first KVM_RUN"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_magic_once() {
        let times = Arc::new(BootTimestamps::new(monotonic_ns()));
        let mut bt = BootTimer::new(times.clone());
        bt.write(0, &[1]);
        bt.write(1, &[BOOT_TIMER_MAGIC]);
        assert_eq!(times.boot_timer.load(Ordering::Relaxed), 0);
        bt.write(0, &[BOOT_TIMER_MAGIC]);
        let first = times.boot_timer.load(Ordering::Relaxed);
        assert_ne!(first, 0);
        bt.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(times.boot_timer.load(Ordering::Relaxed), first);
        assert!(times.since_start_us(&times.boot_timer).is_some());
    }
}
