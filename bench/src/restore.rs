//! `kiln bench --restore`: snapshot restore time, flat in guest memory size, next to
//! Firecracker's `PUT /snapshot/load`; snapshot-create time; memory shared by clones.
//!
//! Per `--restore-mem` size: boot the built-in spinning guest ([`guest`]) through `kiln
//! api`, pause it and time `PUT /snapshot/create` ([`source`]); then `--runs` times each
//! (one at a time, after `--warmup` untimed runs):
//!
//! - `kiln restore --snapshot S --mem M --resume --timings T`, and
//! - `kiln api --api-sock P --timings T` with `PUT /snapshot/load` (`resume_vm`),
//!
//! each stopped with SIGTERM once the guest prints ([`runner`]); then `--clones` VMs
//! restored at once ([`clones`]). With `--api-other`, that binary boots and snapshots the
//! guest through its own API (Firecracker cannot read Kiln's snapshots) and its
//! `PUT /snapshot/load` is timed the same way.

pub mod child;
pub mod clones;
pub mod guest;
pub mod metrics;
pub mod runner;
pub mod smaps;
pub mod source;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::api::{Flavor, GuestSpec};
use super::report::{BatchReport, TargetCheck};
use super::runners::Batch;
use super::{progress, BenchArgs};
use clones::CloneReport;
use runner::{RestoreRunner, RestoreTimes, Via};
use source::{SnapshotError, SnapshotInfo, Source};

/// Restore → running (exec → first `KVM_RUN`) target, ms.
pub const RESTORE_TARGET_MS: f64 = 3.0;
/// "Flat in memory size": the largest size's median may be this much of the smallest's.
pub const FLAT_SLACK: f64 = 1.25;
/// Kiln's `PUT /snapshot/load` may take this share of the other binary's.
pub const OTHER_SHARE: f64 = 0.5;
/// Firecracker's `PUT /snapshot/load` with `resume_vm` on a 128 MiB guest on this
/// machine kind, lower end (ms; /work/shared/anchors.md: 7.5–12.8 ms).
pub const FIRECRACKER_LOAD_ANCHOR_MS: f64 = 7.5;

/// Why `--restore` cannot run.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// A `--restore-mem` size is not a whole number of MiB or too small.
    #[error(
        "--restore-mem {0}: needs a whole number of MiB (Firecracker's mem_size_mib), \
         at least {min} MiB",
        min = guest::MIN_MEMORY >> 20
    )]
    Memory(String),
    /// `--api-other` names no program.
    #[error("--api-other {0}: no such program")]
    OtherMissing(PathBuf),
    /// The guest image could not be written to the scratch directory.
    #[error("cannot write the guest image to {dir}: {source}")]
    Guest {
        /// The scratch directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Kiln could not make the snapshot.
    #[error("snapshotting the {mem} guest with kiln failed: {source}")]
    Snapshot {
        /// The memory size.
        mem: String,
        /// What failed.
        #[source]
        source: SnapshotError,
    },
}

/// The `restore` section of the `--json` document.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RestoreReport {
    /// One entry per `--restore-mem` size.
    pub sizes: Vec<SizeReport>,
}

/// What one memory size measured besides its batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SizeReport {
    /// The size as given.
    pub mem: String,
    /// In MiB.
    pub mem_mib: u64,
    /// The snapshots made (Kiln's, then `--api-other`'s).
    pub snapshots: Vec<SnapshotInfo>,
    /// The restore runners of this size.
    pub runners: Vec<RestoreRunner>,
    /// Per runner (same order), every run's restore times (same `index` as the batch's
    /// samples).
    pub times: Vec<Vec<RestoreTimes>>,
    /// `--clones` at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clones: Option<CloneReport>,
}

/// What `--restore` measured, for the table, plot and JSON.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every batch, per size: Kiln's CLI and API paths, the clones, the other binary.
    pub batches: Vec<BatchReport>,
    /// Target checks.
    pub targets: Vec<TargetCheck>,
    /// Notes under the table.
    pub notes: Vec<String>,
    /// Lines before the table: snapshots and clones.
    pub preamble: String,
    /// The JSON section.
    pub report: RestoreReport,
    /// Kiln's CLI restore worked on every size.
    pub ok: bool,
}

/// Label of Kiln's `kiln restore` runner for memory size `mem`.
pub fn cli_name(mem: &str) -> String {
    format!("kiln restore --resume [{mem}]")
}

/// Label of Kiln's API runner for `mem`.
pub fn api_name(mem: &str) -> String {
    format!("kiln api /snapshot/load [{mem}]")
}

/// Label of the `--clones` batch for `mem`.
pub fn clones_name(mem: &str) -> String {
    format!("kiln restore clones [{mem}]")
}

/// `size` in MiB, if a whole number of them and at least [`guest::MIN_MEMORY`].
fn mem_mib(size: &str) -> Result<u64, RestoreError> {
    let bytes = vmm::config::parse_size(size).map_err(|_| RestoreError::Memory(size.into()))?;
    match bytes % (1 << 20) == 0 && bytes >= guest::MIN_MEMORY {
        true => Ok(bytes >> 20),
        false => Err(RestoreError::Memory(size.into())),
    }
}

/// Everything one run of `--restore` needs.
struct Plan<'a> {
    args: &'a BenchArgs,
    exe: &'a Path,
    other: Option<PathBuf>,
    scratch: &'a Path,
    kernel: PathBuf,
    timeout: Duration,
}

/// Runs `kiln bench --restore` with `exe` (this kiln) and files in `scratch`.
pub fn run(args: &BenchArgs, exe: &Path, scratch: &Path) -> Result<Outcome, RestoreError> {
    let sizes = args
        .restore_mem
        .iter()
        .map(|m| mem_mib(m).map(|mib| (m.as_str(), mib)))
        .collect::<Result<Vec<_>, _>>()?;
    let other = match &args.api_other {
        Some(o) => Some(super::which(o).ok_or_else(|| RestoreError::OtherMissing(o.clone()))?),
        None => None,
    };
    let kernel = guest::write(scratch).map_err(|source| RestoreError::Guest {
        dir: scratch.to_path_buf(),
        source,
    })?;
    let plan = Plan {
        args,
        exe,
        other,
        scratch,
        kernel,
        timeout: Duration::from_secs(args.timeout.max(1)),
    };
    let mut out = Outcome {
        ok: true,
        ..Outcome::default()
    };
    let _ = writeln!(
        out.preamble,
        "Snapshots (PATCH /vm Paused, then PUT /snapshot/create):"
    );
    let mut clone_lines = Vec::new();
    for (mem, mib) in sizes {
        let size = plan.size(mem, mib, &mut out)?;
        for s in &size.snapshots {
            let _ = writeln!(out.preamble, "{}", snapshot_line(mem, s));
        }
        if let Some(c) = &size.clones {
            clone_lines.push(c.line(mem));
        }
        out.report.sizes.push(size);
    }
    if !clone_lines.is_empty() {
        let _ = writeln!(
            out.preamble,
            "Clones ({} restored at once from one snapshot, each after {} passes over 8 MiB):",
            args.clones,
            clones::PASSES
        );
        for l in clone_lines {
            let _ = writeln!(out.preamble, "{l}");
        }
    }
    let _ = writeln!(out.preamble);
    out.targets = check_targets(&out.batches, &args.restore_mem, plan.other.is_some());
    out.notes.extend(notes(&plan));
    Ok(out)
}

impl Plan<'_> {
    fn guest(&self, mem_mib: u64) -> GuestSpec {
        GuestSpec {
            kernel: self.kernel.clone(),
            initrd: None,
            cmdline: "console=ttyS0".into(),
            mem_mib,
        }
    }

    /// One memory size: snapshots, runs, clones.
    fn size(&self, mem: &str, mib: u64, out: &mut Outcome) -> Result<SizeReport, RestoreError> {
        let guest = self.guest(mib);
        let mut size = SizeReport {
            mem: mem.into(),
            mem_mib: mib,
            ..SizeReport::default()
        };
        progress(&format!("{mem}: booting the guest and snapshotting it"));
        let tag = format!("kiln-{mib}m");
        let src = Source {
            exe: self.exe,
            flavor: Flavor::Kiln,
            vmm: "kiln".into(),
            guest: &guest,
            dir: self.scratch,
            tag: &tag,
        };
        let snap = src
            .make(self.timeout)
            .map_err(|source| RestoreError::Snapshot {
                mem: mem.into(),
                source,
            })?;
        size.snapshots.push(snap.info.clone());
        let runners = [
            RestoreRunner::new(cli_name(mem), self.exe, Flavor::Kiln, Via::Cli, &snap),
            RestoreRunner::new(api_name(mem), self.exe, Flavor::Kiln, Via::Api, &snap),
        ];
        for r in runners {
            let worked = self.measure(&r, out, &mut size);
            out.ok &= worked || r.via != Via::Cli;
        }
        if self.args.clones > 0 {
            let k = self.args.clones;
            progress(&format!("{mem}: {k} clones at once"));
            let r = RestoreRunner::new(clones_name(mem), self.exe, Flavor::Kiln, Via::Cli, &snap);
            let (batch, times) = clones::run(&r, k, self.scratch, self.timeout);
            let refs: Vec<&RestoreTimes> = ok_times(&batch, &times);
            size.clones = Some(CloneReport::of(k, &refs));
            out.batches.push(metrics::batch_report(batch, &times));
            size.runners.push(r);
            size.times.push(times);
        }
        snap.remove();
        if let Some(other) = &self.other {
            self.other_size(other, mem, &guest, out, &mut size);
        }
        Ok(size)
    }

    /// The `--api-other` binary: its own snapshot, then its `PUT /snapshot/load`.
    fn other_size(
        &self,
        other: &Path,
        mem: &str,
        guest: &GuestSpec,
        out: &mut Outcome,
        size: &mut SizeReport,
    ) {
        let prog = other_prog(other);
        let tag = format!("other-{}m", guest.mem_mib);
        let src = Source {
            exe: other,
            flavor: Flavor::Firecracker,
            vmm: format!("other: {prog}"),
            guest,
            dir: self.scratch,
            tag: &tag,
        };
        progress(&format!("{mem}: snapshotting with {prog}"));
        let snap = match src.make(self.timeout) {
            Ok(s) => s,
            Err(e) => {
                out.notes
                    .push(format!("{prog} [{mem}] skipped: snapshot failed: {e}"));
                return;
            }
        };
        size.snapshots.push(snap.info.clone());
        let name = other_name(&prog, mem);
        let r = RestoreRunner::new(name, other, Flavor::Firecracker, Via::Api, &snap);
        self.measure(&r, out, size);
        snap.remove();
    }

    /// Warm-ups, then `--runs` timed runs of `r`, one at a time; false when skipped or
    /// no run succeeded.
    fn measure(&self, r: &RestoreRunner, out: &mut Outcome, size: &mut SizeReport) -> bool {
        let scratch = self.scratch;
        for i in 0..self.args.warmup {
            let (s, _) = r.run_once(usize::MAX - i, scratch, self.timeout);
            if !s.ok {
                let why = s.error.unwrap_or_else(|| "failed".into());
                out.notes
                    .push(format!("{} skipped: warm-up run failed: {why}", r.name));
                return false;
            }
        }
        let runs = self.args.startup_runs();
        progress(&format!("{}: {runs} runs, one at a time", r.name));
        let t0 = util::time::monotonic_ns();
        let (samples, times): (Vec<_>, Vec<_>) = (0..runs)
            .map(|i| r.run_once(i, scratch, self.timeout))
            .unzip();
        let total_us = util::time::monotonic_ns().saturating_sub(t0) as f64 / 1000.0;
        let batch = Batch {
            runner: r.name.clone(),
            concurrency: 1,
            total_us,
            samples,
        };
        let report = metrics::batch_report(batch, &times);
        let worked = report.ok > 0;
        out.batches.push(report);
        size.runners.push(r.clone());
        size.times.push(times);
        worked
    }
}

/// The times of `batch`'s successful runs.
fn ok_times<'a>(batch: &Batch, times: &'a [RestoreTimes]) -> Vec<&'a RestoreTimes> {
    times
        .iter()
        .filter(|t| batch.samples.iter().any(|s| s.index == t.index && s.ok))
        .collect()
}

fn other_prog(other: &Path) -> String {
    other
        .file_name()
        .map_or("other".into(), |n| n.to_string_lossy().into_owned())
}

/// Label of the `--api-other` runner.
pub fn other_name(prog: &str, mem: &str) -> String {
    format!("other /snapshot/load: {prog} [{mem}]")
}

/// One line per snapshot for the table.
fn snapshot_line(mem: &str, s: &SnapshotInfo) -> String {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    format!(
        "  {mem} ({}): boot → pages written {:.1} ms; pause {:.3} ms; create {:.3} ms; \
         state file {:.1} KiB; memory file {:.0} MiB, {:.1} MiB allocated",
        s.vmm,
        s.boot_us / 1000.0,
        s.pause_us / 1000.0,
        s.create_us / 1000.0,
        s.state_bytes as f64 / 1024.0,
        mib(s.mem_file_bytes),
        mib(s.mem_file_allocated_bytes),
    )
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The targets on the one-at-a-time batches: exec → first `KVM_RUN` ≤ 3 ms on
/// the smallest and largest sizes, flat in memory size (largest ≤ [`FLAT_SLACK`] ×
/// smallest), and Kiln's `PUT /snapshot/load` → 204 ≤ half the other binary's (or of
/// Firecracker's anchor figure) on the smallest size.
pub fn check_targets(
    batches: &[BatchReport],
    sizes: &[String],
    have_other: bool,
) -> Vec<TargetCheck> {
    let ms = |runner: &str, key: &str| {
        let b = batches.iter().find(|b| b.batch.runner == runner)?;
        let s = b.metric(key)?;
        Some((s.median / 1000.0, s.p90 / 1000.0))
    };
    let check = |what, metric, limit: f64, got: Option<(f64, f64)>| TargetCheck {
        what,
        metric,
        limit: round3(limit),
        median: got.map(|g| g.0),
        p90: got.map(|g| g.1),
        met: got.is_some_and(|g| g.0 <= limit),
    };
    let (Some(small), Some(large)) = (sizes.first(), sizes.last()) else {
        return Vec::new();
    };
    let run = "first_kvm_run_us";
    let first_small = ms(&cli_name(small), run);
    let first_large = ms(&cli_name(large), run);
    let mut out = vec![check(
        "kiln restore: exec → first KVM_RUN, first size",
        run,
        RESTORE_TARGET_MS,
        first_small,
    )];
    if sizes.len() > 1 {
        out.push(check(
            "kiln restore: exec → first KVM_RUN, last size",
            run,
            RESTORE_TARGET_MS,
            first_large,
        ));
        if let Some((base, _)) = first_small {
            out.push(check(
                "flat: last size's first KVM_RUN (first's +25 %)",
                run,
                base * FLAT_SLACK,
                first_large,
            ));
        }
    }
    let load = "load_reply_us";
    let kiln_load = ms(&api_name(small), load);
    let other_load = batches
        .iter()
        .find(|b| {
            b.batch.runner.starts_with("other /snapshot/load")
                && b.batch.runner.ends_with(&format!("[{small}]"))
        })
        .and_then(|b| b.metric(load))
        .map(|s| s.median / 1000.0);
    match (have_other, other_load) {
        (true, Some(o)) => out.push(check(
            "kiln api: /snapshot/load → 204, first size (½ other's)",
            load,
            o * OTHER_SHARE,
            kiln_load,
        )),
        (true, None) => {}
        (false, _) => out.push(check(
            "kiln api: /snapshot/load → 204 (½ Firecracker's 7.5 ms)",
            load,
            FIRECRACKER_LOAD_ANCHOR_MS * OTHER_SHARE,
            kiln_load,
        )),
    }
    out
}

/// Notes on how to read the restore table.
fn notes(plan: &Plan) -> Vec<String> {
    let sizes = &plan.args.restore_mem;
    let mut out = vec![
        format!(
            "targets: first size = {}, last size = {}",
            sizes.first().map_or("-", String::as_str),
            sizes.last().map_or("-", String::as_str)
        ),
        "restore runs are stopped with SIGTERM once the guest prints, so exec → exit \
         includes that wait and the stop; exec → first KVM_RUN is the restore time"
            .to_string(),
    ];
    if plan.other.is_none() {
        out.push(format!(
            "no --api-other: Kiln's /snapshot/load is checked against Firecracker's \
             {FIRECRACKER_LOAD_ANCHOR_MS} ms (the low end of 7.5–12.8 ms measured on a \
             128 MiB guest on this machine kind; anchors.md)"
        ));
    }
    let same = |a: &Path, b: &Path| matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y);
    if let Some(o) = plan.other.as_deref().filter(|o| same(o, plan.exe)) {
        out.push(format!(
            "--api-other {} is this kiln binary (a stand-in for Firecracker): its figures \
             are Kiln's own",
            o.display()
        ));
    }
    out
}

#[cfg(test)]
mod tests;
