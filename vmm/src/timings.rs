//! The start-up record of one VM run: what `kiln run --timings FILE` writes, what the
//! harness returns and what `kiln bench` reads. Times in µs since process start,
//! memory in KiB; `None` where a milestone was not reached or not measured.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use util::time::BootTimestamps;

use crate::exit::{ExitKind, VmExit};
use crate::memstats::MemStats;

/// One VM run's milestones, memory use and exit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTimings {
    /// Process start, `CLOCK_MONOTONIC` ns.
    pub process_start_ns: Option<u64>,
    /// VM built, vCPUs about to start.
    pub vmm_ready_us: Option<u64>,
    /// vCPU 0 entered `KVM_RUN`.
    pub first_kvm_run_us: Option<u64>,
    /// The guest wrote the boot-timer byte.
    pub boot_timer_us: Option<u64>,
    /// The VM stopped (before vCPU and KVM teardown).
    pub vm_stopped_us: Option<u64>,
    /// The VMM finished running the VM.
    pub exit_us: Option<u64>,
    /// VMM resident memory outside guest RAM.
    pub vmm_rss_kib: Option<u64>,
    /// VMM proportional set size outside guest RAM.
    pub vmm_pss_kib: Option<u64>,
    /// Resident guest RAM.
    pub guest_rss_kib: Option<u64>,
    /// How the VM ended, in words.
    pub exit: Option<String>,
    /// How the VM ended, as a keyword (`reset`, `power-off`, `signal`, `stopped`,
    /// `guest-fault`, `triple-fault`, `output-closed`).
    #[serde(default)]
    pub exit_kind: Option<ExitKind>,
}

impl RunTimings {
    /// The record of a run from its timestamps; `end_ns` is when the VMM finished
    /// (`CLOCK_MONOTONIC`), if it has.
    pub fn collect(
        t: &BootTimestamps,
        end_ns: Option<u64>,
        exit: Option<&VmExit>,
        mem: Option<MemStats>,
    ) -> Self {
        let start = t.process_start.load(Ordering::Relaxed);
        let us = |f: &AtomicU64| t.since_start_us(f);
        Self {
            process_start_ns: Some(start),
            vmm_ready_us: us(&t.vmm_ready),
            first_kvm_run_us: us(&t.first_kvm_run),
            boot_timer_us: us(&t.boot_timer),
            vm_stopped_us: us(&t.vm_stopped),
            exit_us: end_ns.map(|e| e.saturating_sub(start) / 1000),
            vmm_rss_kib: mem.map(|m| m.vmm_rss_kib),
            vmm_pss_kib: mem.map(|m| m.vmm_pss_kib),
            guest_rss_kib: mem.map(|m| m.guest_rss_kib),
            exit: exit.map(|e| e.to_string()),
            exit_kind: exit.map(VmExit::kind),
        }
    }

    /// Parses a `--timings` file; anything unreadable gives the empty record.
    pub fn parse(json: &str) -> Self {
        serde_json::from_str(json).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kiln_timings() {
        let t = RunTimings::parse(
            r#"{"process_start_ns":5,"vmm_ready_us":900,"first_kvm_run_us":950,
                "boot_timer_us":null,"exit_us":12000,"vmm_rss_kib":2100,"vmm_pss_kib":1500,
                "guest_rss_kib":300,"exit":"reset"}"#,
        );
        assert_eq!(t.first_kvm_run_us, Some(950));
        assert_eq!(t.boot_timer_us, None);
        assert_eq!(t.exit.as_deref(), Some("reset"));
        assert_eq!(t.exit_kind, None);
        assert_eq!(RunTimings::parse("garbage"), RunTimings::default());
    }

    #[test]
    fn records_a_triple_fault_as_its_own_kind() {
        let times = BootTimestamps::new(1_000_000);
        let exit = VmExit::TripleFault {
            vcpu: 0,
            rip: Some(0x1000),
        };
        let t = RunTimings::collect(&times, None, Some(&exit), None);
        assert_eq!(t.exit_kind, Some(ExitKind::TripleFault));
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains(r#""exit_kind":"triple-fault""#), "{json}");
        assert!(json.contains("triple-faulted"), "{json}");
        assert_eq!(RunTimings::parse(&json), t);
    }

    #[test]
    fn collect_round_trips() {
        let times = BootTimestamps::new(1_000_000);
        times.vmm_ready.store(3_000_000, Ordering::Relaxed);
        let mem = MemStats {
            vmm_rss_kib: 2048,
            vmm_pss_kib: 1024,
            guest_rss_kib: 64,
        };
        let t = RunTimings::collect(&times, Some(9_000_000), Some(&VmExit::Reset), Some(mem));
        assert_eq!(t.vmm_ready_us, Some(2000));
        assert_eq!(t.boot_timer_us, None);
        assert_eq!(t.exit_us, Some(8000));
        assert_eq!(t.vmm_pss_kib, Some(1024));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(RunTimings::parse(&json), t);
    }
}
