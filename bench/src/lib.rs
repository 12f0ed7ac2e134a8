//! `kiln bench`: VM start-up against containers and plain processes.
//!
//! Boots the same VM `--runs` times as child `kiln run` processes (one at a time, then
//! `--concurrency` at a time), reads each run's `--timings` JSON (process start → VMM
//! ready → first `KVM_RUN` → boot-timer write → exit, VMM RSS/PSS) and times every
//! exec→exit from the parent's clock. Next to it: `runc run` of a busybox OCI bundle, a
//! plain fork/exec and any `--other` command. Prints a table; writes JSON and SVG.
//! With `--io blk|net` it measures virtio I/O throughput instead (see [`io`]); with
//! `--api`, start-up through Firecracker's process interface (see [`api`]); with
//! `--restore`, snapshot restore (see [`restore`]); with `--vsock`, virtio-vsock
//! throughput and round trips (see [`vsock`]).
//! This module is the `kiln bench` command itself, so it writes its table to stdout
//! and its progress to stderr.

pub mod api;
mod args;
pub mod io;
pub mod min_guest;
pub mod plot;
pub mod proc;
pub mod report;
pub mod restore;
pub mod runners;
pub mod stats;
pub mod vsock;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use vmm_sys_util::tempdir::TempDir;

#[cfg(test)]
pub(crate) use args::test_args;
pub use args::BenchArgs;
use report::{BatchReport, TargetCheck};
use runners::{run_batch, Runner, Timed, Workload};

/// The test guest (`--io` runs drive its virtio benchmark modes), relative to the repository.
pub const DEFAULT_KERNEL: &str = "resources/out/guest/kiln-test-guest.elf";
/// Where `resources/bench/setup-container.sh` puts the OCI bundle.
pub const DEFAULT_BUNDLE: &str = "resources/out/bench/bundle";

/// Why `kiln bench` could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The kiln binary's own path is unknown.
    #[error("cannot find the kiln binary: {0}")]
    CurrentExe(#[source] std::io::Error),
    /// `--json` could not be serialised.
    #[error("cannot encode the JSON report: {0}")]
    Json(#[from] serde_json::Error),
    /// The guest kernel does not exist.
    #[error(
        "guest kernel {0} not found: build the test guest with `bash resources/build-guest.sh` \
         (from the repository root) or pass --kernel"
    )]
    KernelMissing(PathBuf),
    /// `--other` was empty.
    #[error("--other needs a command")]
    OtherEmpty,
    /// `--api` could not be set up.
    #[error(transparent)]
    Api(#[from] api::SetupError),
    /// `--io` could not run.
    #[error(transparent)]
    Io(#[from] io::IoError),
    /// `--restore` could not run.
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    /// `--vsock` could not run.
    #[error(transparent)]
    Vsock(#[from] vsock::VsockError),
    /// `--runs 0`.
    #[error("--runs must be at least 1")]
    NoRuns,
    /// The scratch directory could not be made.
    #[error("cannot create scratch directory {path}: {source}")]
    Scratch {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file to read (e.g. `--replot`) could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A `--replot` file is not a `kiln bench --json` document.
    #[error("{path} is not a `kiln bench --json` file: {source}")]
    Saved {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// An output file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// `rel` under the current directory, one of its ancestors or an ancestor of the kiln
/// binary (e.g. `<repo>/target/release/kiln` → `<repo>`), if it exists there.
pub fn find_in_repo(rel: &str) -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok();
    let exe = std::env::current_exe().ok();
    let roots = cwd.iter().chain(exe.iter()).flat_map(|p| p.ancestors());
    roots.map(|r| r.join(rel)).find(|p| p.exists())
}

/// Finds `name` on `PATH` (or checks it when it contains a `/`).
fn which(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Bench settings recorded in the JSON.
#[derive(Debug, Clone, Serialize)]
struct Settings {
    runs: usize,
    concurrency: usize,
    warmup: usize,
    timeout_s: u64,
    /// `--kernel`; `None`: the built-in minimal guest.
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    cmdline: String,
    memory: Option<String>,
    api: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_other: Option<PathBuf>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    restore: bool,
    /// `--restore-mem` (with `--restore`).
    #[serde(skip_serializing_if = "Option::is_none")]
    restore_mem: Option<Vec<String>>,
    /// `--clones` (with `--restore`).
    #[serde(skip_serializing_if = "Option::is_none")]
    clones: Option<usize>,
}

/// Host facts recorded in the JSON.
#[derive(Debug, Clone, Serialize)]
struct HostFacts {
    cpus: usize,
    kernel_release: String,
    pvm: bool,
    kiln_check: String,
}

impl HostFacts {
    fn probe() -> Self {
        HostFacts {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            pvm: vmm::host::is_pvm_host(),
            kiln_check: vmm::host::check_report().unwrap_or_else(|e| format!("error: {e}")),
        }
    }
}

/// The `--json` document.
#[derive(Debug, Clone, Serialize)]
struct BenchReport {
    tool: &'static str,
    version: &'static str,
    host: HostFacts,
    settings: Settings,
    runners: Vec<Runner>,
    /// The `--api` runners.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    api_runners: Vec<api::ApiRunner>,
    batches: Vec<BatchReport>,
    targets: Vec<TargetCheck>,
    notes: Vec<String>,
    /// `--restore`: snapshots, restore times per run, clones.
    #[serde(skip_serializing_if = "Option::is_none")]
    restore: Option<restore::RestoreReport>,
}

/// What a bench measured, for the table, the plot and the JSON.
#[derive(Default)]
struct Results {
    runners: Vec<Runner>,
    api_runners: Vec<api::ApiRunner>,
    batches: Vec<BatchReport>,
    targets: Vec<TargetCheck>,
    notes: Vec<String>,
    /// Printed before the table.
    preamble: String,
    restore: Option<restore::RestoreReport>,
}

fn progress(msg: &str) {
    let _ = writeln!(std::io::stderr(), "kiln bench: {msg}");
}

/// The guest kernel: `--kernel`, or the built-in minimal guest written to `scratch`.
fn kernel_path(args: &BenchArgs, scratch: &Path) -> Result<PathBuf, BenchError> {
    match &args.kernel {
        Some(k) if !k.is_file() => Err(BenchError::KernelMissing(k.clone())),
        Some(k) => Ok(k.clone()),
        None => min_guest::write(scratch).map_err(|source| BenchError::Write {
            path: scratch.join("kiln-min.elf"),
            source,
        }),
    }
}

/// The Kiln VM runner, or why not. Without `--kernel` it boots the built-in minimal
/// guest, written to `scratch`.
fn vm_runner(args: &BenchArgs, exe: &Path, scratch: &Path) -> Result<Runner, BenchError> {
    let kernel = kernel_path(args, scratch)?;
    let mut a = vec!["--kernel".to_string(), kernel.display().to_string()];
    if let Some(i) = &args.initrd {
        a.extend(["--initrd".to_string(), i.display().to_string()]);
    }
    a.extend(["--cmdline".to_string(), args.cmdline.clone()]);
    if let Some(m) = &args.memory {
        a.extend(["--memory".to_string(), m.clone()]);
    }
    let workload = Workload::Kiln {
        exe: exe.to_path_buf(),
        args: a,
    };
    let name = api::KILN_RUN.to_string();
    Ok(Runner { name, workload })
}

/// The other runners; `notes` collects the skipped ones.
fn other_runners(args: &BenchArgs, notes: &mut Vec<String>) -> Result<Vec<Runner>, BenchError> {
    let mut out = Vec::new();
    let bundle = args.bundle.clone().or_else(|| find_in_repo(DEFAULT_BUNDLE));
    if !args.no_container {
        let runc = which(&args.runc);
        let have_bundle = bundle
            .as_ref()
            .is_some_and(|b| b.join("config.json").is_file());
        match (runc, &bundle) {
            (Some(runc), Some(b)) if have_bundle => out.push(Runner {
                name: "runc container".into(),
                workload: Workload::Runc {
                    runc,
                    bundle: b.clone(),
                },
            }),
            (None, _) => notes.push(format!(
                "container runner skipped: {} not found; install it with \
                 `bash resources/bench/setup-container.sh` (Debian: apt-get install runc)",
                args.runc.display()
            )),
            _ => notes.push(format!(
                "container runner skipped: no OCI bundle at {}; make it with \
                 `bash resources/bench/setup-container.sh` or pass --bundle",
                bundle
                    .as_ref()
                    .map_or(DEFAULT_BUNDLE.into(), |b| b.display().to_string())
            )),
        }
    }
    if !args.no_baseline {
        let bb = bundle
            .map(|b| b.join("rootfs/bin/busybox"))
            .filter(|p| p.is_file());
        let (name, argv) = match bb {
            Some(bb) => (
                "fork/exec busybox echo",
                vec![bb.display().to_string(), "echo".into(), "hi".into()],
            ),
            None => ("fork/exec /bin/true", vec!["/bin/true".to_string()]),
        };
        out.push(Runner {
            name: name.into(),
            workload: Workload::Exec { argv },
        });
    }
    for cmd in &args.other {
        let argv: Vec<String> = cmd.split_whitespace().map(String::from).collect();
        let Some(first) = argv.first() else {
            return Err(BenchError::OtherEmpty);
        };
        let prog = Path::new(first)
            .file_name()
            .map_or(first.clone(), |n| n.to_string_lossy().into());
        out.push(Runner {
            name: format!("other: {prog}"),
            workload: Workload::Exec { argv },
        });
    }
    Ok(out)
}

/// A fresh private directory under the temp dir for one bench's files (a unique name
/// from `mkdtemp`, so parallel benches and tests never share one); removed on drop.
fn scratch_dir(prefix: &str) -> Result<TempDir, BenchError> {
    let path = std::env::temp_dir().join(prefix);
    TempDir::new_with_prefix(&path).map_err(|e| BenchError::Scratch {
        path,
        source: e.into(),
    })
}

fn write_file(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(|source| BenchError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs warm-ups and timed batches for every runner.
fn measure<R: Timed>(
    args: &BenchArgs,
    runners: &[R],
    scratch: &Path,
    notes: &mut Vec<String>,
) -> Vec<BatchReport> {
    let timeout = Duration::from_secs(args.timeout.max(1));
    let mut usable = Vec::new();
    for r in runners {
        let failed = (0..args.warmup)
            .map(|i| r.run_once(usize::MAX - i, scratch, timeout))
            .find(|s| !s.ok);
        match failed {
            Some(s) => {
                let why = s.error.unwrap_or_else(|| "failed".into());
                notes.push(format!("{} skipped: warm-up run failed: {why}", r.name()));
            }
            None => usable.push(r),
        }
    }
    let mut reports = Vec::new();
    let mut modes = vec![1];
    if args.concurrency > 1 {
        modes.push(args.concurrency);
    }
    for c in modes {
        for r in &usable {
            let runs = args.startup_runs();
            progress(&format!("{}: {runs} runs, {c} at a time", r.name()));
            let b = run_batch(*r, runs, c, scratch, timeout);
            reports.push(BatchReport::new(b));
        }
    }
    reports
}

fn bench(args: &BenchArgs) -> Result<bool, BenchError> {
    if let (Some(json), Some(svg)) = (&args.replot, &args.plot) {
        plot::replot(json, svg)?;
        return Ok(true);
    }
    if let Some(kind) = args.io {
        return io::run(args, kind);
    }
    if args.vsock {
        return vsock::run(args);
    }
    if args.startup_runs() == 0 {
        return Err(BenchError::NoRuns);
    }
    let exe = std::env::current_exe().map_err(BenchError::CurrentExe)?;
    let scratch = scratch_dir("kiln-bench-")?;
    if args.restore {
        let out = restore::run(args, &exe, scratch.as_path())?;
        drop(scratch);
        let results = Results {
            batches: out.batches,
            targets: out.targets,
            notes: out.notes,
            preamble: out.preamble,
            restore: Some(out.report),
            ..Results::default()
        };
        output(args, results)?;
        return Ok(out.ok);
    }
    let mut notes = Vec::new();
    let mut runners = Vec::new();
    if !args.no_vm {
        runners.push(vm_runner(args, &exe, scratch.as_path())?);
    }
    let api_runners = match args.api {
        true => api::runners(args, &exe, &kernel_path(args, scratch.as_path())?)?,
        false => {
            runners.extend(other_runners(args, &mut notes)?);
            Vec::new()
        }
    };
    let mut batches = measure(args, &runners, scratch.as_path(), &mut notes);
    batches.extend(measure(args, &api_runners, scratch.as_path(), &mut notes));
    drop(scratch);

    let vm_seq = batches
        .iter()
        .find(|b| b.batch.runner == api::KILN_RUN && b.batch.concurrency == 1);
    let mut targets = vm_seq.map(report::check_targets).unwrap_or_default();
    if args.api {
        targets.extend(api::check_targets(&batches));
        notes.extend(api::notes(&batches, &api_runners));
    }
    let api_ok = !args.api || api::succeeded(&batches);
    let vm_ok = (args.no_vm || vm_seq.is_some_and(|b| b.ok > 0)) && api_ok;
    let results = Results {
        runners,
        api_runners,
        batches,
        targets,
        notes,
        ..Results::default()
    };
    output(args, results)?;
    Ok(vm_ok)
}

/// Prints the table and writes `--plot` and `--json`.
fn output(args: &BenchArgs, mut r: Results) -> Result<(), BenchError> {
    if vmm::host::is_pvm_host() {
        r.notes.push(
            "PVM host: a non-PVM guest runs in the host's instruction emulator, so the \
             guest-side phases (first KVM_RUN → exit) are emulator-bound"
                .into(),
        );
    }
    let table = report::table(&r.batches, &r.targets, &r.notes);
    let _ = write!(std::io::stdout(), "{}{table}", r.preamble);
    if let Some(path) = &args.plot {
        let title = format!("kiln bench: {} runs per runner", args.startup_runs());
        write_file(path, &plot::svg(&title, &r.batches))?;
    }
    if let Some(path) = &args.json {
        let restore = args.restore;
        let doc = BenchReport {
            tool: "kiln bench",
            version: env!("CARGO_PKG_VERSION"),
            host: HostFacts::probe(),
            settings: Settings {
                runs: args.startup_runs(),
                concurrency: args.concurrency,
                warmup: args.warmup,
                timeout_s: args.timeout,
                kernel: args.kernel.clone(),
                initrd: args.initrd.clone(),
                cmdline: args.cmdline.clone(),
                memory: args.memory.clone(),
                api: args.api,
                api_other: args.api_other.clone(),
                restore,
                restore_mem: restore.then(|| args.restore_mem.clone()),
                clones: restore.then_some(args.clones),
            },
            runners: r.runners,
            api_runners: r.api_runners,
            batches: r.batches,
            targets: r.targets,
            notes: r.notes,
            restore: r.restore,
        };
        write_file(path, &serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(())
}

/// Runs `kiln bench`: exit 0 when the VM runner produced results (or was skipped).
pub fn run(args: &BenchArgs) -> ExitCode {
    match bench(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            progress("error: no VM run succeeded");
            ExitCode::from(1)
        }
        Err(e) => {
            progress(&format!("error: {e}"));
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_args::T;
    use super::*;
    use clap::Parser;

    #[test]
    fn missing_kernel_is_explained() {
        let t = T::try_parse_from(["t", "--kernel", "/nonexistent/k.elf"]).unwrap();
        let e = vm_runner(&t.b, Path::new("/x"), Path::new("/nonexistent")).unwrap_err();
        assert!(e.to_string().contains("build-guest.sh"));
    }

    #[test]
    fn skipped_runners_leave_notes() {
        let t = T::try_parse_from([
            "t",
            "--runc",
            "/nonexistent/runc",
            "--bundle",
            "/nonexistent",
        ])
        .unwrap();
        let mut notes = Vec::new();
        let r = other_runners(&t.b, &mut notes).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "fork/exec /bin/true");
        assert!(notes[0].contains("setup-container.sh"));
        let t =
            T::try_parse_from(["t", "--no-container", "--no-baseline", "--other", " "]).unwrap();
        assert!(matches!(
            other_runners(&t.b, &mut notes),
            Err(BenchError::OtherEmpty)
        ));
    }
}
