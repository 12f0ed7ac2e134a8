//! `kiln bench --api`: start-up through Firecracker's process interface.
//!
//! Each run of an API runner execs the VMM with `--api-sock <scratch>/<id>.sock` and
//! times, from the bench's clock (`CLOCK_MONOTONIC`, 0 = just before exec, as
//! `KILN_START_NS`): exec → the socket accepting a connection, exec → the reply to the
//! first request (`PUT /machine-config`), then after `PUT /boot-source` the
//! `PUT /actions {"action_type": "InstanceStart"}` request → its 204, and exec → exit.
//! Where the VMM's side comes from:
//!
//! - Kiln (`kiln api ... --timings FILE`): the timings file gives the first `KVM_RUN`
//!   and the boot-timer write since exec, so request → first `KVM_RUN` is exact.
//! - Another binary ([`Flavor::Firecracker`], `--api-other`): it writes no timings, so it
//!   runs with `--boot-timer --level Info --log-path <scratch>/<id>.log` and the bench
//!   reads the boot-timer line from the log (see [`boot_log`]): Firecracker's
//!   `Guest-boot-time` (VM build start → boot-timer write), or, for Kiln run as
//!   `firecracker`, its own line (process start → first `KVM_RUN` and boot timer).
//!
//! Runners in `--no-api` mode exec `--no-api --config-file <scratch>/<id>.config.json`
//! with the same guest and are timed exec → exit (plus Kiln's timings or the log line).

pub mod boot_log;
pub mod socket;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use api::client::{request_bytes, Client, ClientError, Reply};
use serde::{Deserialize, Serialize};
use util::time::monotonic_ns;
use vmm::timings::RunTimings;

use super::proc::{spawn_timed, wait_timed};
use super::report::{BatchReport, TargetCheck};
use super::runners::{add_stderr_tail, read_timings, record_end, run_id, Sample, Timed};
use super::BenchArgs;
use boot_log::{read_log, BootLine};
use socket::SocketWatch;

/// Label of Kiln's API runner.
pub const KILN_API: &str = "kiln api";
/// Label of Kiln's `--no-api --config-file` runner.
pub const KILN_NO_API: &str = "kiln api --no-api";
/// Label of the `kiln run` runner the `--no-api` path is compared with.
pub const KILN_RUN: &str = "kiln VM";
/// The `InstanceStart` action.
pub const INSTANCE_START: &str = r#"{"action_type":"InstanceStart"}"#;
/// `--no-api --config-file` may be this much slower than `kiln run` and still meet its target.
pub const NO_API_SLACK: f64 = 1.10;

/// Why the `--api` runners cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `--api-other` names no file.
    #[error("--api-other {0}: no such program")]
    OtherMissing(PathBuf),
    /// `--memory` is not a whole number of MiB, which Firecracker's API needs.
    #[error("--memory {0}: --api needs a whole number of MiB (Firecracker's mem_size_mib)")]
    Memory(String),
}

/// Why one API run failed (ends up in [`Sample::error`]).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The VMM exited before its socket accepted a connection.
    #[error("the VMM exited before its API socket accepted a connection")]
    Exited,
    /// The run's deadline passed.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Talking to the API failed, or a request was refused.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// What the bench timed over the API socket, in µs; "exec" is just before the spawn.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiTimes {
    /// exec → the API socket accepted a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_ready_us: Option<f64>,
    /// exec → the reply to the first request (`PUT /machine-config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_reply_us: Option<f64>,
    /// exec → the `InstanceStart` request was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_request_us: Option<f64>,
    /// `InstanceStart` request → its reply (204).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_reply_us: Option<f64>,
    /// `InstanceStart` request → first `KVM_RUN` (from the VMM's timings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_to_first_kvm_run_us: Option<f64>,
    /// `InstanceStart` request → the guest's boot-timer write (from the VMM's timings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_to_boot_timer_us: Option<f64>,
    /// Firecracker's `Guest-boot-time`: VM build start → boot-timer write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_boot_time_us: Option<f64>,
}

impl ApiTimes {
    /// Fills the request → VMM milestones from `vm` (a process started at `start_ns`).
    fn add_vm(&mut self, vm: &RunTimings, start_ns: u64) {
        let Some(req) = self.start_request_us else {
            return;
        };
        let after_req = |us: Option<u64>| Some(since_exec_us(vm, start_ns, us?)? - req);
        self.start_to_first_kvm_run_us = after_req(vm.first_kvm_run_us);
        self.start_to_boot_timer_us = after_req(vm.boot_timer_us);
    }
}

/// A milestone `us` after `vm`'s process start, as µs after `start_ns`.
fn since_exec_us(vm: &RunTimings, start_ns: u64, us: u64) -> Option<f64> {
    let abs_ns = vm.process_start_ns? as i128 + us as i128 * 1000;
    Some((abs_ns - start_ns as i128) as f64 / 1000.0)
}

/// The guest every API runner boots (the same as the `kiln run` runner's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestSpec {
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest memory, MiB.
    pub mem_mib: u64,
}

impl GuestSpec {
    /// The body of `PUT /machine-config`.
    pub fn machine_config(&self) -> String {
        self.machine_config_value().to_string()
    }

    fn machine_config_value(&self) -> serde_json::Value {
        serde_json::json!({ "vcpu_count": 1, "mem_size_mib": self.mem_mib })
    }

    fn boot_source_value(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "kernel_image_path": self.kernel.display().to_string(),
            "boot_args": self.cmdline,
        });
        if let Some(i) = &self.initrd {
            v["initrd_path"] = i.display().to_string().into();
        }
        v
    }

    /// The body of `PUT /boot-source`.
    pub fn boot_source(&self) -> String {
        self.boot_source_value().to_string()
    }

    /// A Firecracker `--config-file` for the same VM.
    pub fn config_file(&self) -> String {
        serde_json::json!({
            "boot-source": self.boot_source_value(),
            "drives": [],
            "machine-config": self.machine_config_value(),
        })
        .to_string()
    }
}

/// Whose process interface: how the bench learns the VMM's side of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavor {
    /// `kiln api ... --timings FILE`.
    Kiln,
    /// Firecracker's flags only; timings from the `--boot-timer` log line.
    Firecracker,
}

/// How the VM is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Over the API socket, then `InstanceStart`.
    Api,
    /// `--no-api --config-file`.
    NoApi,
}

/// One API runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiRunner {
    /// Label in the table.
    pub name: String,
    /// The binary.
    pub exe: PathBuf,
    /// Kiln or another binary.
    pub flavor: Flavor,
    /// API or config file.
    pub mode: Mode,
    /// The guest.
    pub guest: GuestSpec,
}

/// The files of one run in the scratch directory, removed afterwards.
struct RunFiles {
    sock: PathBuf,
    timings: PathBuf,
    log: PathBuf,
    err: PathBuf,
    config: PathBuf,
}

impl RunFiles {
    fn new(scratch: &Path, id: &str) -> Self {
        let f = |ext: &str| scratch.join(format!("{id}.{ext}"));
        RunFiles {
            sock: f("sock"),
            timings: f("json"),
            log: f("log"),
            err: f("err"),
            config: f("config.json"),
        }
    }

    fn remove(&self) {
        for p in [
            &self.sock,
            &self.timings,
            &self.log,
            &self.err,
            &self.config,
        ] {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl ApiRunner {
    fn command(&self, f: &RunFiles) -> Command {
        let mut c = Command::new(&self.exe);
        if self.flavor == Flavor::Kiln {
            c.arg("api");
        }
        match self.mode {
            Mode::Api => c.arg("--api-sock").arg(&f.sock),
            Mode::NoApi => c.arg("--no-api").arg("--config-file").arg(&f.config),
        };
        match self.flavor {
            Flavor::Kiln => c.arg("--timings").arg(&f.timings),
            Flavor::Firecracker => c
                .args(["--boot-timer", "--level", "Info", "--log-path"])
                .arg(&f.log),
        };
        c.stdin(Stdio::null()).stdout(Stdio::null());
        match std::fs::File::create(&f.err) {
            Ok(file) => c.stderr(file),
            Err(_) => c.stderr(Stdio::null()),
        };
        c
    }

    /// Files the child needs before it starts.
    fn prepare(&self, f: &RunFiles) -> Result<(), ApiError> {
        let io = |what| move |source| ApiError::Io { what, source };
        if self.mode == Mode::NoApi {
            std::fs::write(&f.config, self.guest.config_file())
                .map_err(io("writing the config file"))?;
        }
        if self.flavor == Flavor::Firecracker {
            // Older Firecrackers open --log-path without creating it.
            std::fs::File::create(&f.log).map_err(io("creating the log file"))?;
        }
        Ok(())
    }

    /// Runs once and times it. Never fails: problems end up in [`Sample::error`].
    pub fn run_once(&self, index: usize, scratch: &Path, timeout: Duration) -> Sample {
        let f = RunFiles::new(scratch, &run_id());
        let mut s = Sample {
            index,
            ..Sample::default()
        };
        self.run_files(&mut s, &f, scratch, timeout);
        add_stderr_tail(&mut s, &f.err);
        f.remove();
        s
    }

    fn run_files(&self, s: &mut Sample, f: &RunFiles, scratch: &Path, timeout: Duration) {
        let watch = match self.mode {
            Mode::Api => SocketWatch::new(scratch).map(Some),
            Mode::NoApi => Ok(None),
        };
        let ready = watch
            .map_err(|source| ApiError::Io {
                what: "watching the scratch directory",
                source,
            })
            .and_then(|w| self.prepare(f).map(|()| w));
        let watch = match ready {
            Ok(w) => w,
            Err(e) => return s.error = Some(e.to_string()),
        };
        let mut cmd = self.command(f);
        let (mut child, start_ns) = match spawn_timed(&mut cmd) {
            Ok(c) => c,
            Err(e) => return s.error = Some(format!("cannot start {:?}: {e}", cmd.get_program())),
        };
        let deadline = start_ns.saturating_add(timeout.as_nanos() as u64);
        let mut times = ApiTimes::default();
        let driven = match &watch {
            Some(w) => self.drive(w, &mut child, &f.sock, (start_ns, deadline), &mut times),
            None => Ok(()),
        };
        if driven.is_err() {
            let _ = child.kill();
        }
        let left = Duration::from_nanos(deadline.saturating_sub(monotonic_ns()));
        match wait_timed(child, left.max(Duration::from_millis(1))) {
            Ok(mut e) => {
                e.start_ns = start_ns;
                record_end(s, &e, timeout);
            }
            Err(e) => s.error = Some(format!("waiting for the VMM: {e}")),
        }
        if let Err(e) = driven {
            s.ok = false;
            s.error = Some(e.to_string());
        }
        s.vm = match self.flavor {
            Flavor::Kiln => read_timings(&f.timings),
            Flavor::Firecracker => {
                let line = BootLine::find(&read_log(&f.log));
                times.guest_boot_time_us =
                    line.and_then(|l| l.guest_boot_time_us()).map(|v| v as f64);
                line.and_then(|l| l.timings(start_ns))
            }
        };
        if let Some(vm) = &s.vm {
            times.add_vm(vm, start_ns);
        }
        if self.mode == Mode::Api || times != ApiTimes::default() {
            s.api = Some(times);
        }
    }

    /// Configures and starts the VM over the socket, filling `t`.
    fn drive(
        &self,
        watch: &SocketWatch,
        child: &mut Child,
        sock: &Path,
        (start_ns, deadline): (u64, u64),
        t: &mut ApiTimes,
    ) -> Result<(), ApiError> {
        let since = |ns: u64| ns.saturating_sub(start_ns) as f64 / 1000.0;
        let (stream, ready_ns) = watch.connect(sock, child.id() as libc::pid_t, deadline)?;
        t.socket_ready_us = Some(since(ready_ns));
        let mut c = Client::new(stream, deadline);
        let body = self.guest.machine_config();
        expect(
            c.call("PUT", "/machine-config", &body)?,
            "PUT /machine-config",
        )?;
        t.first_reply_us = Some(since(monotonic_ns()));
        let body = self.guest.boot_source();
        expect(c.call("PUT", "/boot-source", &body)?, "PUT /boot-source")?;
        let request = request_bytes("PUT", "/actions", INSTANCE_START);
        let t_req = monotonic_ns();
        c.send(&request)?;
        let reply = c.reply()?;
        let t_reply = monotonic_ns();
        t.start_request_us = Some(since(t_req));
        t.start_reply_us = Some(t_reply.saturating_sub(t_req) as f64 / 1000.0);
        expect(reply, "PUT /actions InstanceStart")
    }
}

fn expect(r: Reply, what: &'static str) -> Result<(), ApiError> {
    r.expect(204, what)?;
    Ok(())
}

impl Timed for ApiRunner {
    fn name(&self) -> &str {
        &self.name
    }

    fn run_once(&self, index: usize, scratch: &Path, timeout: Duration) -> Sample {
        ApiRunner::run_once(self, index, scratch, timeout)
    }
}

/// The guest of `--api` runs: `kernel` and the bench flags.
pub fn guest(args: &BenchArgs, kernel: &Path) -> Result<GuestSpec, SetupError> {
    let mem_mib = match &args.memory {
        None => 128,
        Some(m) => {
            let bytes = vmm::config::parse_size(m).map_err(|_| SetupError::Memory(m.clone()))?;
            match bytes % (1 << 20) {
                0 => bytes >> 20,
                _ => return Err(SetupError::Memory(m.clone())),
            }
        }
    };
    Ok(GuestSpec {
        kernel: kernel.to_path_buf(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        mem_mib,
    })
}

/// The `--api` runners booting `kernel`: Kiln's `--no-api` and API paths, then
/// `--api-other`'s.
pub fn runners(args: &BenchArgs, exe: &Path, kernel: &Path) -> Result<Vec<ApiRunner>, SetupError> {
    let guest = &guest(args, kernel)?;
    let runner = |name: String, exe: &Path, flavor, mode| ApiRunner {
        name,
        exe: exe.to_path_buf(),
        flavor,
        mode,
        guest: guest.clone(),
    };
    let mut out = vec![
        runner(KILN_NO_API.into(), exe, Flavor::Kiln, Mode::NoApi),
        runner(KILN_API.into(), exe, Flavor::Kiln, Mode::Api),
    ];
    if let Some(other) = &args.api_other {
        let path = super::which(other).ok_or_else(|| SetupError::OtherMissing(other.clone()))?;
        let prog = other
            .file_name()
            .map_or("other".into(), |n| n.to_string_lossy());
        out.push(runner(
            format!("other --no-api: {prog}"),
            &path,
            Flavor::Firecracker,
            Mode::NoApi,
        ));
        out.push(runner(
            format!("other api: {prog}"),
            &path,
            Flavor::Firecracker,
            Mode::Api,
        ));
    }
    Ok(out)
}

/// Whether Kiln's API runner had a successful run.
pub fn succeeded(batches: &[BatchReport]) -> bool {
    batches
        .iter()
        .any(|b| b.batch.runner == KILN_API && b.ok > 0)
}

/// Notes on what the other binary's batches could not measure.
pub fn notes(batches: &[BatchReport], runners: &[ApiRunner]) -> Vec<String> {
    let mut out = Vec::new();
    for r in runners.iter().filter(|r| r.flavor == Flavor::Firecracker) {
        let Some(b) = batches.iter().find(|b| b.batch.runner == r.name) else {
            continue;
        };
        let has = |k: &str| b.metric(k).is_some();
        let mut missing = vec!["VMM ready", "VMM done", "RSS/PSS"];
        if !has("first_kvm_run_us") {
            missing.insert(0, "first KVM_RUN");
        }
        if !has("boot_timer_us") && !has("guest_boot_time_us") {
            missing.insert(0, "boot-timer write");
        }
        let source = match (has("boot_timer_us"), has("guest_boot_time_us")) {
            (true, _) => "first KVM_RUN and boot timer come from Kiln's boot-timer log line",
            (_, true) => "Guest-boot-time is Firecracker's own (VM build start → boot-timer write)",
            _ => "no boot-timer line in its log",
        };
        out.push(format!(
            "{}: no --timings, so not measured: {}; {source}",
            r.name,
            missing.join(", ")
        ));
    }
    out
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The issue's targets: socket ready ≤ 2 ms after exec, `InstanceStart` → first
/// `KVM_RUN` ≤ 1 ms, `--no-api --config-file` as fast as `kiln run` (within
/// [`NO_API_SLACK`]), on the one-at-a-time batches.
pub fn check_targets(batches: &[BatchReport]) -> Vec<TargetCheck> {
    let seq = |name: &str| {
        batches
            .iter()
            .find(|b| b.batch.runner == name && b.batch.concurrency == 1)
    };
    let ms = |b: Option<&BatchReport>, key: &str| {
        let s = b?.metric(key)?;
        Some((s.median / 1000.0, s.p90 / 1000.0))
    };
    let check = |what, metric, limit: f64, got: Option<(f64, f64)>| TargetCheck {
        what,
        metric,
        limit: round3(limit),
        median: got.map(|g| g.0),
        p90: got.map(|g| g.1),
        met: got.is_some_and(|g| g.0 < limit),
    };
    let api = seq(KILN_API);
    let mut out = vec![
        check(
            "kiln api: exec → API socket accepting",
            "socket_ready_us",
            2.0,
            ms(api, "socket_ready_us"),
        ),
        check(
            "kiln api: InstanceStart → first KVM_RUN",
            "start_to_first_kvm_run_us",
            1.0,
            ms(api, "start_to_first_kvm_run_us"),
        ),
    ];
    let (run, no_api) = (seq(KILN_RUN), seq(KILN_NO_API));
    for (what, key) in [
        ("--no-api: exec → exit (kiln run's + 10 %)", "wall_us"),
        (
            "--no-api: first KVM_RUN (kiln run's + 10 %)",
            "first_kvm_run_us",
        ),
    ] {
        if let Some((base, _)) = ms(run, key) {
            out.push(check(what, key, base * NO_API_SLACK, ms(no_api, key)));
        }
    }
    out
}

#[cfg(test)]
mod tests;
