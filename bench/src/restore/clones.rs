//! Clones: K VMs restored at once from one snapshot, and the guest memory they share.
//!
//! Each clone maps the memory file `MAP_PRIVATE`: the pages it only reads stay the file's
//! page-cache pages, mapped by every clone (their PSS is divided among them); a page it
//! writes becomes its own. The spinning guest reads its 8 MiB of touched pages on every
//! pass and writes one counter page, so once every clone has run a full pass, the sum
//! of the clones' guest-RAM PSS against the sum of their RSS shows what they share.

use std::path::Path;
use std::sync::{Barrier, Mutex};
use std::time::Duration;

use serde::Serialize;
use util::time::monotonic_ns;

use super::runner::{RestoreRunner, RestoreTimes};
use crate::runners::{Batch, Sample};

/// Passes each clone runs before its memory is read: the first may start mid-pass (where
/// the snapshot paused it), the second reads every touched page.
pub const PASSES: usize = 2;

/// What the clones share, summed over the clones that ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CloneReport {
    /// Clones started.
    pub clones: usize,
    /// Clones that ran and were measured.
    pub measured: usize,
    /// Σ guest-RAM RSS (the memory file's mapping), KiB.
    pub guest_rss_kib: u64,
    /// Σ guest-RAM PSS, KiB.
    pub guest_pss_kib: u64,
    /// Σ guest RAM no other clone maps, KiB.
    pub guest_private_kib: u64,
    /// Σ guest RAM the clones wrote (their own copies of file pages), KiB.
    pub guest_written_kib: u64,
    /// Σ RSS of the whole VMM processes, KiB.
    pub process_rss_kib: u64,
    /// Σ PSS of the whole VMM processes, KiB.
    pub process_pss_kib: u64,
    /// 1 − Σ guest PSS / Σ guest RSS: the part of the clones' resident guest RAM that is
    /// shared (1 − 1/K when everything is).
    pub guest_shared_fraction: Option<f64>,
}

impl CloneReport {
    /// Sums the memory of the measured clones.
    pub fn of(clones: usize, times: &[&RestoreTimes]) -> Self {
        let mut r = CloneReport {
            clones,
            ..CloneReport::default()
        };
        for t in times {
            let (Some(g), Some(p)) = (t.guest, t.process) else {
                continue;
            };
            r.measured += 1;
            r.guest_rss_kib += g.rss_kib;
            r.guest_pss_kib += g.pss_kib;
            r.guest_private_kib += g.private_kib;
            r.guest_written_kib += g.anon_kib;
            r.process_rss_kib += p.rss_kib;
            r.process_pss_kib += p.pss_kib;
        }
        if r.guest_rss_kib > 0 {
            r.guest_shared_fraction = Some(1.0 - r.guest_pss_kib as f64 / r.guest_rss_kib as f64);
        }
        r
    }

    /// One line for the table.
    pub fn line(&self, mem: &str) -> String {
        let mib = |k: u64| k as f64 / 1024.0;
        let shared = self
            .guest_shared_fraction
            .map_or("n/a".into(), |f| format!("{:.0} %", f * 100.0));
        format!(
            "  {mem}: {} of {} clones measured; guest RAM Σ RSS {:.1} MiB, Σ PSS {:.1} MiB \
             ({shared} shared), Σ written {:.2} MiB; whole VMMs Σ RSS {:.1} MiB, Σ PSS {:.1} MiB",
            self.measured,
            self.clones,
            mib(self.guest_rss_kib),
            mib(self.guest_pss_kib),
            mib(self.guest_written_kib),
            mib(self.process_rss_kib),
            mib(self.process_pss_kib),
        )
    }
}

/// Restores `k` clones with `runner` at once, lets each run [`PASSES`] passes, reads
/// every clone's memory while all of them run, then stops them.
pub fn run(
    runner: &RestoreRunner,
    k: usize,
    scratch: &Path,
    timeout: Duration,
) -> (Batch, Vec<RestoreTimes>) {
    let t0 = monotonic_ns();
    let started: Vec<_> = (0..k).map(|i| runner.start(i, scratch, timeout)).collect();
    let live = started.iter().filter(|s| s.is_ok()).count();
    let barrier = Barrier::new(live);
    let out = Mutex::new(Vec::with_capacity(k));
    std::thread::scope(|scope| {
        for (i, s) in started.into_iter().enumerate() {
            let mut s = match s {
                Ok(s) => s,
                Err(why) => {
                    let sample = Sample {
                        index: i,
                        error: Some(why.to_string()),
                        ..Sample::default()
                    };
                    let times = RestoreTimes {
                        index: i,
                        ..RestoreTimes::default()
                    };
                    util::sync::lock(&out).push((sample, times));
                    continue;
                }
            };
            let (barrier, out) = (&barrier, &out);
            scope.spawn(move || {
                let running = s.wait_running(PASSES);
                // Every clone is measured while all of them run.
                barrier.wait();
                if running.is_ok() {
                    s.read_memory(&runner.mem);
                }
                barrier.wait();
                let r = s.stop(running);
                util::sync::lock(out).push(r);
            });
        }
    });
    let total_us = monotonic_ns().saturating_sub(t0) as f64 / 1000.0;
    let mut runs = out.into_inner().unwrap_or_else(|p| p.into_inner());
    runs.sort_by_key(|(s, _)| s.index);
    let (samples, times): (Vec<_>, Vec<_>) = runs.into_iter().unzip();
    let batch = Batch {
        runner: runner.name.clone(),
        concurrency: k,
        total_us,
        samples,
    };
    (batch, times)
}

#[cfg(test)]
mod tests {
    use super::super::smaps::MemUse;
    use super::*;

    fn times(i: usize, rss: u64, pss: u64) -> RestoreTimes {
        let m = |rss, pss| MemUse {
            rss_kib: rss,
            pss_kib: pss,
            private_kib: 4,
            anon_kib: 4,
        };
        RestoreTimes {
            index: i,
            guest: Some(m(rss, pss)),
            process: Some(m(rss + 3000, pss + 2000)),
            ..RestoreTimes::default()
        }
    }

    #[test]
    fn sums_and_shared_fraction() {
        let (a, b) = (times(0, 8192, 2052), times(1, 8192, 2052));
        let none = RestoreTimes::default();
        let r = CloneReport::of(4, &[&a, &b, &none]);
        assert_eq!((r.clones, r.measured), (4, 2));
        assert_eq!(
            (r.guest_rss_kib, r.guest_pss_kib, r.guest_private_kib),
            (16384, 4104, 8)
        );
        assert_eq!((r.process_rss_kib, r.process_pss_kib), (22384, 8104));
        let f = r.guest_shared_fraction.unwrap();
        assert!((f - (1.0 - 4104.0 / 16384.0)).abs() < 1e-12);
        let line = r.line("128M");
        assert!(
            line.contains("2 of 4 clones") && line.contains("(75 % shared)"),
            "{line}"
        );
    }

    #[test]
    fn nothing_measured_has_no_fraction() {
        let r = CloneReport::of(2, &[]);
        assert_eq!(r.guest_shared_fraction, None);
        assert!(r.line("64M").contains("(n/a shared)"));
    }
}
