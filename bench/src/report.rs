//! Turning batches into per-metric summaries, the stdout table and the JSON report.

use std::fmt::Write as _;

use serde::Serialize;

use super::api::ApiTimes;
use super::runners::{Batch, Sample};
use super::stats::Summary;
use vmm::timings::RunTimings;

/// How a metric's raw values (µs or KiB) are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Raw µs, shown as ms.
    Us,
    /// Raw KiB, shown as MiB.
    Kib,
}

impl Unit {
    /// The table's unit label.
    pub fn shown(self) -> &'static str {
        match self {
            Unit::Us => "ms",
            Unit::Kib => "MiB",
        }
    }

    /// A raw value in the table's unit.
    pub fn scale(self, raw: f64) -> f64 {
        match self {
            Unit::Us => raw / 1000.0,
            Unit::Kib => raw / 1024.0,
        }
    }
}

/// One metric of one batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    /// Stable key (JSON).
    pub key: &'static str,
    /// Human label (table).
    pub label: &'static str,
    /// Unit of the raw values.
    pub unit: Unit,
    /// Over the successful runs that have the metric.
    #[serde(flatten)]
    pub summary: Summary,
}

type Extract = fn(&Sample, &RunTimings) -> Option<f64>;

fn diff(a: Option<u64>, b: Option<u64>) -> Option<f64> {
    Some(b? as f64 - a? as f64)
}

type ApiExtract = fn(&ApiTimes) -> Option<f64>;

/// `--api` metrics, timed by the bench (see [`ApiTimes`]).
const API_METRICS: &[(&str, &str, ApiExtract)] = &[
    ("socket_ready_us", "exec → API socket accepting", |a| {
        a.socket_ready_us
    }),
    ("first_reply_us", "exec → first API reply", |a| {
        a.first_reply_us
    }),
    ("start_request_us", "exec → InstanceStart sent", |a| {
        a.start_request_us
    }),
    ("start_reply_us", "  InstanceStart → reply (204)", |a| {
        a.start_reply_us
    }),
    (
        "start_to_first_kvm_run_us",
        "  InstanceStart → first KVM_RUN",
        |a| a.start_to_first_kvm_run_us,
    ),
    (
        "start_to_boot_timer_us",
        "  InstanceStart → boot timer",
        |a| a.start_to_boot_timer_us,
    ),
    (
        "guest_boot_time_us",
        "Guest-boot-time (build → timer)",
        |a| a.guest_boot_time_us,
    ),
];

/// VM metrics: milestones since process start, then the phases between them, then memory.
const VM_METRICS: &[(&str, &str, Unit, Extract)] = &[
    ("vmm_ready_us", "exec → VMM ready", Unit::Us, |_, t| {
        t.vmm_ready_us.map(|v| v as f64)
    }),
    (
        "first_kvm_run_us",
        "exec → first KVM_RUN",
        Unit::Us,
        |_, t| t.first_kvm_run_us.map(|v| v as f64),
    ),
    (
        "boot_timer_us",
        "exec → boot-timer write",
        Unit::Us,
        |_, t| t.boot_timer_us.map(|v| v as f64),
    ),
    (
        "exit_us",
        "exec → VMM done (own clock)",
        Unit::Us,
        |_, t| t.exit_us.map(|v| v as f64),
    ),
    (
        "ready_to_run_us",
        "  VMM ready → first KVM_RUN",
        Unit::Us,
        |_, t| diff(t.vmm_ready_us, t.first_kvm_run_us),
    ),
    (
        "run_to_timer_us",
        "  first KVM_RUN → boot timer",
        Unit::Us,
        |_, t| diff(t.first_kvm_run_us, t.boot_timer_us),
    ),
    (
        "timer_to_stop_us",
        "  boot timer → VM stopped",
        Unit::Us,
        |_, t| diff(t.boot_timer_us, t.vm_stopped_us),
    ),
    (
        "stop_to_exit_us",
        "  VM stopped → VMM done (KVM teardown)",
        Unit::Us,
        |_, t| diff(t.vm_stopped_us, t.exit_us),
    ),
    (
        "teardown_us",
        "  VMM done → reaped by parent",
        Unit::Us,
        |s, t| t.exit_us.map(|e| s.wall_us - e as f64),
    ),
    (
        "vmm_rss_kib",
        "VMM RSS (excl. guest RAM)",
        Unit::Kib,
        |_, t| t.vmm_rss_kib.map(|v| v as f64),
    ),
    (
        "vmm_pss_kib",
        "VMM PSS (excl. guest RAM)",
        Unit::Kib,
        |_, t| t.vmm_pss_kib.map(|v| v as f64),
    ),
    ("guest_rss_kib", "guest RAM resident", Unit::Kib, |_, t| {
        t.guest_rss_kib.map(|v| v as f64)
    }),
];

/// A batch with its summaries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchReport {
    /// The raw runs.
    #[serde(flatten)]
    pub batch: Batch,
    /// Successful runs.
    pub ok: usize,
    /// Successful runs per second of batch wall time.
    pub per_second: f64,
    /// Summaries, in table order.
    pub metrics: Vec<Metric>,
}

impl BatchReport {
    /// Summarises the successful runs of `batch`.
    pub fn new(batch: Batch) -> Self {
        let ok: Vec<&Sample> = batch.samples.iter().filter(|s| s.ok).collect();
        let mut metrics = Vec::new();
        let mut push = |key, label, unit, values: Vec<f64>| {
            if let Some(summary) = Summary::of(&values) {
                metrics.push(Metric {
                    key,
                    label,
                    unit,
                    summary,
                });
            }
        };
        push(
            "wall_us",
            "exec → exit (parent clock)",
            Unit::Us,
            ok.iter().map(|s| s.wall_us).collect(),
        );
        push(
            "cpu_us",
            "CPU user+sys",
            Unit::Us,
            ok.iter().map(|s| s.cpu_us).collect(),
        );
        for &(key, label, f) in API_METRICS {
            let v = ok.iter().filter_map(|s| f(s.api.as_ref()?)).collect();
            push(key, label, Unit::Us, v);
        }
        for &(key, label, unit, f) in VM_METRICS {
            let v = ok.iter().filter_map(|s| f(s, s.vm.as_ref()?)).collect();
            push(key, label, unit, v);
        }
        BatchReport {
            ok: ok.len(),
            per_second: batch.per_second(),
            batch,
            metrics,
        }
    }

    /// The summary of `key`, if any run had it.
    pub fn metric(&self, key: &str) -> Option<&Summary> {
        self.metrics
            .iter()
            .find(|m| m.key == key)
            .map(|m| &m.summary)
    }

    /// Table heading: runner, mode, counts, throughput.
    pub fn title(&self) -> String {
        let b = &self.batch;
        let mode = match b.concurrency {
            1 => "one at a time".to_string(),
            c => format!("{c} at a time"),
        };
        format!(
            "{} ({mode}): {}/{} ok in {:.2} s = {:.1}/s",
            b.runner,
            self.ok,
            b.samples.len(),
            b.total_us / 1e6,
            self.per_second
        )
    }
}

/// A pass/fail check of a median against a limit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetCheck {
    /// What is checked.
    pub what: &'static str,
    /// Metric key.
    pub metric: &'static str,
    /// Limit in the shown unit (ms or MiB).
    pub limit: f64,
    /// Measured median in the shown unit.
    pub median: Option<f64>,
    /// Measured p90 in the shown unit.
    pub p90: Option<f64>,
    /// Median below the limit.
    pub met: bool,
}

/// Kiln's start-up targets, checked on a VM batch.
pub fn check_targets(vm: &BatchReport) -> Vec<TargetCheck> {
    let targets: [(&str, &str, Unit, f64); 3] = [
        (
            "exec → first guest instruction (first KVM_RUN)",
            "first_kvm_run_us",
            Unit::Us,
            3.5,
        ),
        ("exec → exit, minimal guest", "wall_us", Unit::Us, 25.0),
        ("VMM RSS overhead", "vmm_rss_kib", Unit::Kib, 3.0),
    ];
    targets
        .iter()
        .map(|&(what, metric, unit, limit)| {
            let s = vm.metric(metric);
            let median = s.map(|s| unit.scale(s.median));
            TargetCheck {
                what,
                metric,
                limit,
                median,
                p90: s.map(|s| unit.scale(s.p90)),
                met: median.is_some_and(|m| m < limit),
            }
        })
        .collect()
}

/// The stdout table of all batches, then notes and target checks.
pub fn table(batches: &[BatchReport], targets: &[TargetCheck], notes: &[String]) -> String {
    let mut out = String::new();
    for r in batches {
        let _ = writeln!(out, "{}", r.title());
        let _ = writeln!(
            out,
            "  {:<32} {:>4} {:>4} {:>9} {:>9} {:>9} {:>9}",
            "metric", "unit", "n", "median", "p90", "min", "max"
        );
        for m in &r.metrics {
            let u = m.unit;
            let s = &m.summary;
            let _ = writeln!(
                out,
                "  {:<32} {:>4} {:>4} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                m.label,
                u.shown(),
                s.n,
                u.scale(s.median),
                u.scale(s.p90),
                u.scale(s.min),
                u.scale(s.max)
            );
        }
        for s in r.batch.samples.iter().filter(|s| !s.ok).take(3) {
            let why = s.error.as_deref().unwrap_or("failed");
            let _ = writeln!(out, "  run {} failed: {why}", s.index);
        }
        let _ = writeln!(out);
    }
    if !targets.is_empty() {
        let _ = writeln!(out, "Targets (median of the one-at-a-time VM runs):");
        for t in targets {
            let unit = if t.metric.ends_with("_kib") {
                "MiB"
            } else {
                "ms"
            };
            let got = t.median.map_or("n/a".into(), |m| format!("{m:.3} {unit}"));
            let verdict = if t.met { "met" } else { "NOT met" };
            let _ = writeln!(
                out,
                "  {:<48} < {} {unit}: {got} ({verdict})",
                t.what, t.limit
            );
        }
    }
    for n in notes {
        let _ = writeln!(out, "note: {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_sample(i: usize, wall: f64, ready: u64, run: u64, timer: u64, exit: u64) -> Sample {
        Sample {
            index: i,
            wall_us: wall,
            cpu_us: 1000.0,
            exit_code: Some(0),
            ok: true,
            error: None,
            vm: Some(RunTimings {
                vmm_ready_us: Some(ready),
                first_kvm_run_us: Some(run),
                boot_timer_us: Some(timer),
                exit_us: Some(exit),
                vmm_rss_kib: Some(2048),
                vmm_pss_kib: Some(1024),
                ..RunTimings::default()
            }),
            api: None,
        }
    }

    fn batch() -> Batch {
        let mut samples = vec![
            vm_sample(0, 20_000.0, 1000, 1100, 15_000, 18_000),
            vm_sample(1, 22_000.0, 1200, 1300, 16_000, 19_000),
            vm_sample(2, 24_000.0, 1400, 1500, 17_000, 20_000),
        ];
        samples.push(Sample {
            index: 3,
            exit_code: Some(1),
            error: Some("exit code 1: boom".into()),
            ..Sample::default()
        });
        Batch {
            runner: "kiln VM".into(),
            concurrency: 1,
            total_us: 2_000_000.0,
            samples,
        }
    }

    #[test]
    fn summaries_skip_failures() {
        let r = BatchReport::new(batch());
        assert_eq!(r.ok, 3);
        assert!((r.per_second - 1.5).abs() < 1e-9);
        assert_eq!(r.metric("wall_us").unwrap().median, 22_000.0);
        assert_eq!(r.metric("ready_to_run_us").unwrap().max, 100.0);
        assert_eq!(r.metric("teardown_us").unwrap().median, 3000.0);
        assert!(r.metric("guest_rss_kib").is_none());
        let t = check_targets(&r);
        assert!(t[0].met && t[1].met && t[2].met);
        assert_eq!(t[1].median, Some(22.0));
    }

    #[test]
    fn table_layout() {
        let r = BatchReport::new(batch());
        let t = check_targets(&r);
        let text = table(&[r], &t, &["runc skipped".into()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "kiln VM (one at a time): 3/4 ok in 2.00 s = 1.5/s"
        );
        assert!(lines[1].trim_start().starts_with("metric"));
        let wall = lines
            .iter()
            .find(|l| l.contains("exec → exit (parent clock)"))
            .unwrap();
        let cols: Vec<&str> = wall.split_whitespace().collect();
        assert_eq!(
            &cols[cols.len() - 6..],
            ["ms", "3", "22.000", "23.600", "20.000", "24.000"]
        );
        let rss = lines.iter().find(|l| l.contains("VMM RSS")).unwrap();
        assert!(rss.contains("2.000"));
        assert!(text.contains("run 3 failed: exit code 1: boom"));
        assert!(text.contains("< 3.5 ms: 1.300 ms (met)"));
        assert!(text.ends_with("note: runc skipped\n"));
    }

    #[test]
    fn api_metrics_follow_cpu_time() {
        let mut b = batch();
        for s in &mut b.samples {
            s.api = Some(ApiTimes {
                socket_ready_us: Some(1500.0),
                start_reply_us: Some(300.0),
                ..ApiTimes::default()
            });
        }
        let r = BatchReport::new(b);
        let keys: Vec<&str> = r.metrics.iter().take(5).map(|m| m.key).collect();
        assert_eq!(
            keys,
            [
                "wall_us",
                "cpu_us",
                "socket_ready_us",
                "start_reply_us",
                "vmm_ready_us"
            ]
        );
        // The failed run carries API times too, but does not count.
        assert_eq!(r.metric("socket_ready_us").unwrap().n, 3);
        let text = table(&[r], &[], &[]);
        let line = text
            .lines()
            .find(|l| l.contains("exec → API socket accepting"))
            .unwrap();
        assert!(line.contains("1.500"), "{line}");
    }

    #[test]
    fn no_api_metrics_without_api_times() {
        let r = BatchReport::new(batch());
        assert!(r.metric("socket_ready_us").is_none());
        assert!(r.metric("guest_boot_time_us").is_none());
    }

    #[test]
    fn json_has_samples_and_summaries() {
        let r = BatchReport::new(batch());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["runner"], "kiln VM");
        assert_eq!(v["samples"].as_array().unwrap().len(), 4);
        assert_eq!(v["samples"][0]["vm"]["first_kvm_run_us"], 1100);
        assert_eq!(v["samples"][3]["ok"], false);
        assert_eq!(v["metrics"][0]["key"], "wall_us");
        assert_eq!(v["metrics"][0]["unit"], "us");
        assert_eq!(v["metrics"][0]["median"], 22_000.0);
        assert_eq!(v["metrics"][0]["n"], 3);
    }
}
