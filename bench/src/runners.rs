//! The things `kiln bench` times: a Kiln VM (a child `kiln run`), a runc container,
//! a plain fork/exec and any other command; run one after another or `C` at a time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::api::ApiTimes;
use super::proc::{run_timed, Ended};
use util::time::monotonic_ns;

use vmm::timings::RunTimings;

/// One timed run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Run number within its batch.
    pub index: usize,
    /// Parent-clock exec→exit, µs.
    pub wall_us: f64,
    /// Child user + system CPU, µs.
    pub cpu_us: f64,
    /// Exit code (`None`: killed by a signal or not started).
    pub exit_code: Option<i32>,
    /// Whether the run counts (exit code 0, no timeout).
    pub ok: bool,
    /// What went wrong, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Kiln's own timings (VM runs only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<RunTimings>,
    /// What the bench measured over the API socket (`--api` runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiTimes>,
}

/// What a runner starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Workload {
    /// `kiln run --serial none --timings FILE` plus these arguments.
    Kiln {
        /// The kiln binary.
        exe: PathBuf,
        /// Arguments after `run`.
        args: Vec<String>,
    },
    /// `runc run --bundle BUNDLE <unique id>`.
    Runc {
        /// The runc binary.
        runc: PathBuf,
        /// The OCI bundle directory.
        bundle: PathBuf,
    },
    /// Any command, exec'd directly.
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

/// A named workload to time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Runner {
    /// Label in the table and plot.
    pub name: String,
    /// What it runs.
    pub workload: Workload,
}

impl Runner {
    /// The command line of run `id`, with `scratch` for its files.
    fn command(&self, id: &str, scratch: &Path) -> Command {
        match &self.workload {
            Workload::Kiln { exe, args } => {
                let mut c = Command::new(exe);
                c.arg("run").args(args).arg("--serial").arg("none");
                c.arg("--timings").arg(scratch.join(format!("{id}.json")));
                c
            }
            Workload::Runc { runc, bundle } => {
                let mut c = Command::new(runc);
                c.arg("run").arg("--bundle").arg(bundle).arg(id);
                c
            }
            Workload::Exec { argv } => {
                let mut c = Command::new(argv.first().map_or("", String::as_str));
                c.args(argv.iter().skip(1));
                c
            }
        }
    }

    /// Runs once and times it. Never fails: problems end up in [`Sample::error`].
    pub fn run_once(&self, index: usize, scratch: &Path, timeout: Duration) -> Sample {
        let id = run_id();
        let err_path = scratch.join(format!("{id}.err"));
        let timings_path = scratch.join(format!("{id}.json"));
        let _ = std::fs::remove_file(&timings_path);
        let mut cmd = self.command(&id, scratch);
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        match std::fs::File::create(&err_path) {
            Ok(f) => cmd.stderr(f),
            Err(_) => cmd.stderr(Stdio::null()),
        };
        let mut s = Sample {
            index,
            ..Sample::default()
        };
        match run_timed(&mut cmd, timeout) {
            Ok(e) => record_end(&mut s, &e, timeout),
            Err(e) => s.error = Some(format!("cannot start {:?}: {e}", cmd.get_program())),
        }
        if let Workload::Kiln { .. } = self.workload {
            s.vm = read_timings(&timings_path);
        }
        add_stderr_tail(&mut s, &err_path);
        if let (Workload::Runc { runc, .. }, false) = (&self.workload, s.ok) {
            // A killed or failed run can leave container state behind.
            let _ = Command::new(runc)
                .args(["delete", "-f", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_file(&err_path);
        let _ = std::fs::remove_file(&timings_path);
        s
    }
}

/// Fills `s` from how the child ended: wall and CPU time, exit code, `ok`, the error.
pub(crate) fn record_end(s: &mut Sample, e: &Ended, timeout: Duration) {
    s.wall_us = e.wall_us();
    s.cpu_us = e.cpu_us as f64;
    s.exit_code = e.code;
    s.ok = e.code == Some(0) && !e.timed_out;
    if e.timed_out {
        s.error = Some(format!("timed out after {timeout:?}"));
    } else if let Some(sig) = e.signal {
        s.error = Some(format!("killed by signal {sig}"));
    } else if let Some(code) = e.code.filter(|&c| c != 0) {
        s.error = Some(format!("exit code {code}"));
    }
}

/// For a failed run: appends the last line of the child's stderr (in `err_path`) to the
/// error.
pub(crate) fn add_stderr_tail(s: &mut Sample, err_path: &Path) {
    if s.ok {
        return;
    }
    let text = std::fs::read_to_string(err_path).unwrap_or_default();
    let why = s.error.take().unwrap_or_else(|| "failed".into());
    s.error = Some(match last_line(&text) {
        Some(line) => format!("{why}: {line}"),
        None => why,
    });
}

/// A name for one run (its files in the scratch directory, its runc container id),
/// unique across this process's runs even when batches or tests run at the same time.
pub(crate) fn run_id() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("kiln-bench-{}-{n}", std::process::id())
}

pub(crate) fn read_timings(path: &Path) -> Option<RunTimings> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().rev().map(str::trim).find(|l| !l.is_empty())
}

/// The runs of one runner in one mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Runner label.
    pub runner: String,
    /// Runs at a time (1 = one after another).
    pub concurrency: usize,
    /// Wall time of the whole batch, µs.
    pub total_us: f64,
    /// Every run, in start order.
    pub samples: Vec<Sample>,
}

impl Batch {
    /// Successful runs per second of batch wall time.
    pub fn per_second(&self) -> f64 {
        let ok = self.samples.iter().filter(|s| s.ok).count();
        match self.total_us > 0.0 {
            true => ok as f64 / (self.total_us / 1e6),
            false => 0.0,
        }
    }
}

/// Something [`run_batch`] can time: a named workload, run once per call.
pub trait Timed: Sync {
    /// Label in the table and plot.
    fn name(&self) -> &str;
    /// Runs once and times it; problems end up in [`Sample::error`].
    fn run_once(&self, index: usize, scratch: &Path, timeout: Duration) -> Sample;
}

impl Timed for Runner {
    fn name(&self) -> &str {
        &self.name
    }

    fn run_once(&self, index: usize, scratch: &Path, timeout: Duration) -> Sample {
        Runner::run_once(self, index, scratch, timeout)
    }
}

/// Runs `runner` `runs` times, `concurrency` at a time (at least 1).
pub fn run_batch<R: Timed + ?Sized>(
    runner: &R,
    runs: usize,
    concurrency: usize,
    scratch: &Path,
    timeout: Duration,
) -> Batch {
    let workers = concurrency.clamp(1, runs.max(1));
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(runs));
    let start = monotonic_ns();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= runs {
                    break;
                }
                let s = runner.run_once(i, scratch, timeout);
                util::sync::lock(&samples).push(s);
            });
        }
    });
    let total_us = monotonic_ns().saturating_sub(start) as f64 / 1000.0;
    let mut samples = samples.into_inner().unwrap_or_else(|p| p.into_inner());
    samples.sort_by_key(|s| s.index);
    Batch {
        runner: runner.name().to_string(),
        concurrency: workers,
        total_us,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    fn scratch() -> TempDir {
        TempDir::new_with_prefix(std::env::temp_dir().join("kiln-runners-")).unwrap()
    }

    fn exec(argv: &[&str]) -> Runner {
        Runner {
            name: "t".into(),
            workload: Workload::Exec {
                argv: argv.iter().map(|s| s.to_string()).collect(),
            },
        }
    }

    #[test]
    fn batch_counts_and_orders() {
        let dir = scratch();
        let b = run_batch(
            &exec(&["true"]),
            5,
            2,
            dir.as_path(),
            Duration::from_secs(10),
        );
        assert_eq!(b.samples.len(), 5);
        assert_eq!(b.concurrency, 2);
        assert!(b
            .samples
            .iter()
            .enumerate()
            .all(|(i, s)| s.index == i && s.ok));
        assert!(b.per_second() > 0.0);
    }

    #[test]
    fn failures_are_samples() {
        let dir = scratch();
        let s = exec(&["sh", "-c", "echo boom >&2; exit 3"]).run_once(
            0,
            dir.as_path(),
            Duration::from_secs(10),
        );
        assert!(!s.ok);
        assert_eq!(s.exit_code, Some(3));
        assert_eq!(s.error.as_deref(), Some("exit code 3: boom"));
        let s = exec(&["/nonexistent/kiln-x"]).run_once(1, dir.as_path(), Duration::from_secs(10));
        assert!(!s.ok && s.error.unwrap_or_default().contains("cannot start"));
    }
}
