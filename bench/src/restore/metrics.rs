//! The table rows of a restore batch: the usual ones ([`BatchReport::new`]: exec → exit,
//! CPU, Kiln's timings) with the restore's own ([`RestoreTimes`]) after the CPU time.

use std::collections::HashSet;

use super::runner::RestoreTimes;
use crate::report::{BatchReport, Metric, Unit};
use crate::runners::Batch;
use crate::stats::Summary;

type Extract = fn(&RestoreTimes) -> Option<f64>;

/// Restore metrics: key (JSON), label (table), unit, value of one run.
const METRICS: &[(&str, &str, Unit, Extract)] = &[
    (
        "socket_ready_us",
        "exec → API socket accepting",
        Unit::Us,
        |t| t.socket_ready_us,
    ),
    (
        "load_request_us",
        "exec → /snapshot/load sent",
        Unit::Us,
        |t| t.load_request_us,
    ),
    (
        "load_reply_us",
        "  /snapshot/load → reply (204)",
        Unit::Us,
        |t| t.load_reply_us,
    ),
    (
        "load_to_first_kvm_run_us",
        "  /snapshot/load → first KVM_RUN",
        Unit::Us,
        |t| t.load_to_first_kvm_run_us,
    ),
    (
        "first_output_us",
        "exec → first guest output",
        Unit::Us,
        |t| t.first_output_us,
    ),
    ("term_to_exit_us", "SIGTERM → exit", Unit::Us, |t| {
        t.term_to_exit_us
    }),
    (
        "process_rss_kib",
        "VMM RSS, guest running",
        Unit::Kib,
        |t| t.process.map(|m| m.rss_kib as f64),
    ),
    (
        "process_pss_kib",
        "VMM PSS, guest running",
        Unit::Kib,
        |t| t.process.map(|m| m.pss_kib as f64),
    ),
    (
        "guest_map_rss_kib",
        "guest RAM RSS, running",
        Unit::Kib,
        |t| t.guest.map(|m| m.rss_kib as f64),
    ),
    (
        "guest_map_pss_kib",
        "guest RAM PSS, running",
        Unit::Kib,
        |t| t.guest.map(|m| m.pss_kib as f64),
    ),
    (
        "guest_written_kib",
        "guest RAM written (own copies)",
        Unit::Kib,
        |t| t.guest.map(|m| m.anon_kib as f64),
    ),
];

/// Summarises `batch` with the restore metrics of its successful runs in `times`.
pub fn batch_report(batch: Batch, times: &[RestoreTimes]) -> BatchReport {
    let ok: HashSet<usize> = batch
        .samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.index)
        .collect();
    let mut r = BatchReport::new(batch);
    let extra = METRICS.iter().filter_map(|&(key, label, unit, f)| {
        let v: Vec<f64> = times
            .iter()
            .filter(|t| ok.contains(&t.index))
            .filter_map(f)
            .collect();
        Summary::of(&v).map(|summary| Metric {
            key,
            label,
            unit,
            summary,
        })
    });
    let at = r
        .metrics
        .iter()
        .position(|m| m.key == "cpu_us")
        .map_or(0, |p| p + 1);
    r.metrics.splice(at..at, extra.collect::<Vec<_>>());
    r
}

#[cfg(test)]
mod tests {
    use super::super::smaps::MemUse;
    use super::*;
    use crate::runners::Sample;

    #[test]
    fn restore_rows_follow_cpu_time_and_skip_failures() {
        let sample = |index, ok| Sample {
            index,
            ok,
            wall_us: 10_000.0,
            cpu_us: 2000.0,
            ..Sample::default()
        };
        let batch = Batch {
            runner: "r".into(),
            concurrency: 1,
            total_us: 1e6,
            samples: vec![sample(0, true), sample(1, false), sample(2, true)],
        };
        let t = |index, out| RestoreTimes {
            index,
            first_output_us: Some(out),
            guest: Some(MemUse {
                rss_kib: 8192,
                pss_kib: 2048,
                private_kib: 4,
                anon_kib: 4,
            }),
            ..RestoreTimes::default()
        };
        let r = batch_report(batch, &[t(0, 3000.0), t(1, 99_000.0), t(2, 5000.0)]);
        let keys: Vec<&str> = r.metrics.iter().map(|m| m.key).collect();
        assert_eq!(
            keys,
            [
                "wall_us",
                "cpu_us",
                "first_output_us",
                "guest_map_rss_kib",
                "guest_map_pss_kib",
                "guest_written_kib"
            ]
        );
        let out = r.metric("first_output_us").unwrap();
        assert_eq!((out.n, out.median, out.max), (2, 4000.0, 5000.0));
    }
}
