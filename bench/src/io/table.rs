//! `--io` results: samples, rows and the printed table.

use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;

use super::settings::{IoKind, IoSettings};

/// One measured pass.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IoSample {
    /// Run number.
    pub run: usize,
    /// Whether it counts.
    pub ok: bool,
    /// What went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Measured window, ns.
    pub elapsed_ns: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Block requests or transmitted frames.
    pub ops: u64,
    /// Received frames (net).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rx: Option<u64>,
}

impl IoSample {
    pub(crate) fn secs(&self) -> f64 {
        self.elapsed_ns.max(1) as f64 / 1e9
    }

    /// MiB/s.
    pub fn mib_s(&self) -> f64 {
        self.bytes as f64 / (1u64 << 20) as f64 / self.secs()
    }

    /// Requests or transmitted frames per second.
    pub fn ops_s(&self) -> f64 {
        self.ops as f64 / self.secs()
    }

    /// Received frames per second.
    pub fn rx_s(&self) -> Option<f64> {
        self.rx.map(|r| r as f64 / self.secs())
    }

    pub(crate) fn failed(run: usize, error: String) -> Self {
        IoSample {
            run,
            error: Some(error),
            ..IoSample::default()
        }
    }
}

/// One row of the table: a way of doing the I/O, over all runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IoRow {
    /// Label.
    pub name: String,
    /// Every run.
    pub samples: Vec<IoSample>,
    /// Over the successful runs.
    pub elapsed_ms: Option<Summary>,
    /// MiB/s.
    pub mib_s: Option<Summary>,
    /// Requests/s (blk) or transmitted frames/s (net).
    pub ops_s: Option<Summary>,
    /// Received frames/s (net).
    pub rx_s: Option<Summary>,
}

impl IoRow {
    /// Summarises `samples`.
    pub fn new(name: &str, samples: Vec<IoSample>) -> Self {
        let ok: Vec<&IoSample> = samples.iter().filter(|s| s.ok).collect();
        let of = |f: &dyn Fn(&IoSample) -> Option<f64>| {
            Summary::of(&ok.iter().filter_map(|s| f(s)).collect::<Vec<_>>())
        };
        IoRow {
            name: name.into(),
            elapsed_ms: of(&|s| Some(s.elapsed_ns as f64 / 1e6)),
            mib_s: of(&|s| Some(s.mib_s())),
            ops_s: of(&|s| Some(s.ops_s())),
            rx_s: of(&|s| s.rx_s()),
            samples,
        }
    }
}

/// `median [min–max]`, or `-`.
pub(crate) fn cell(s: Option<&Summary>, prec: usize) -> String {
    match s {
        Some(s) => format!("{:.p$} [{:.p$}–{:.p$}]", s.median, s.min, s.max, p = prec),
        None => "-".into(),
    }
}

/// The stdout table.
pub fn table(settings: &IoSettings, rows: &[IoRow], notes: &[String]) -> String {
    let mut t = String::new();
    let _ = writeln!(t, "kiln bench --io: {}", settings.title());
    let _ = writeln!(t, "(median [min–max] over the successful runs)");
    let (ops, rx) = match settings.kind {
        IoKind::Blk => ("IOPS", None),
        IoKind::Net => ("tx frames/s", Some("rx frames/s")),
    };
    let _ = write!(
        t,
        "{:<34} {:>5} {:>24} {:>26} {:>24}",
        "", "ok", "elapsed ms", "MiB/s", ops
    );
    let _ = writeln!(t, " {}", rx.map_or(String::new(), |r| format!("{r:>24}")));
    for r in rows {
        let ok = r.samples.iter().filter(|s| s.ok).count();
        let _ = write!(
            t,
            "{:<34} {:>5} {:>24} {:>26} {:>24}",
            r.name,
            format!("{ok}/{}", r.samples.len()),
            cell(r.elapsed_ms.as_ref(), 2),
            cell(r.mib_s.as_ref(), 2),
            cell(r.ops_s.as_ref(), 0),
        );
        let rx_cell = rx.map_or(String::new(), |_| {
            format!("{:>24}", cell(r.rx_s.as_ref(), 0))
        });
        let _ = writeln!(t, " {rx_cell}");
        for s in r.samples.iter().filter(|s| !s.ok) {
            let why = s.error.as_deref().unwrap_or("failed");
            let _ = writeln!(t, "  run {}: {why}", s.run);
        }
    }
    for n in notes {
        let _ = writeln!(t, "note: {n}");
    }
    t
}
