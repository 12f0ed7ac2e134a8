//! Boot-timer device, compatible with Firecracker's: the guest writes the byte
//! [`BOOT_TIMER_MAGIC`] to the first byte of the device's MMIO slot to say "booted".
//!
//! Snapshots: the device has no guest-visible state (reads return nothing; it only
//! records the first magic write in the process's [`BootTimestamps`]), so it saves
//! nothing. A restored VM gets a new `BootTimer` recording into the new process's
//! timestamps; a guest that already booted does not write the magic again.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use util::time::BootTimestamps;

use crate::bus::BusDevice;

/// The byte a guest writes to signal that it has booted.
pub const BOOT_TIMER_MAGIC: u8 = 123;

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
    use util::time::monotonic_ns;

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
