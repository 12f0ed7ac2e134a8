//! One timed restore: exec a VMM that restores the snapshot and resumes it, wait until
//! the guest prints (it runs), read its memory, stop it with SIGTERM, read its timings.
//!
//! Two ways in ([`Via`]): `kiln restore --snapshot S --mem M --resume --timings T`, or
//! the API: exec `kiln api --api-sock P --timings T` (or another binary with
//! Firecracker's flags, `--api-other`), then `PUT /snapshot/load` with
//! `"resume_vm": true`. Clock: `CLOCK_MONOTONIC`, 0 = just before exec (`KILN_START_NS`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use api::client::{request_bytes, Client};
use serde::{Deserialize, Serialize};
use util::time::monotonic_ns;
use vmm::timings::RunTimings;

use super::child::{stopped_by_sigterm, OutputError, Vmm};
use super::guest::PASS;
use super::smaps::{self, MemUse};
use super::source::{last_line, Snapshot};
use crate::api::socket::SocketWatch;
use crate::api::{ApiError, Flavor};
use crate::runners::{read_timings, record_end, run_id, Sample};

/// How the snapshot is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `kiln restore --resume`.
    Cli,
    /// `PUT /snapshot/load` with `resume_vm` over the API socket.
    Api,
}

/// What the bench timed and read besides [`Sample`], µs since exec unless said.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RestoreTimes {
    /// Run number within its batch (the [`Sample::index`] it belongs to).
    pub index: usize,
    /// exec → the API socket accepted a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_ready_us: Option<f64>,
    /// exec → `PUT /snapshot/load` sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_request_us: Option<f64>,
    /// `PUT /snapshot/load` sent → its reply (204).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_reply_us: Option<f64>,
    /// `PUT /snapshot/load` sent → first `KVM_RUN` (from Kiln's timings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_to_first_kvm_run_us: Option<f64>,
    /// exec → the guest's first output read by the bench.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_output_us: Option<f64>,
    /// SIGTERM → the VMM exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term_to_exit_us: Option<f64>,
    /// The whole VMM process while the guest runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<MemUse>,
    /// Its mapping of the memory file (guest RAM) while the guest runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<MemUse>,
}

/// Why a restore run failed (ends up in [`Sample::error`], with the VMM's last stderr
/// line).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The scratch directory could not be watched for the API socket.
    #[error("watching the scratch directory: {0}")]
    Watch(#[source] std::io::Error),
    /// The VMM could not be started.
    #[error("cannot start {exe}: {source}")]
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The API socket or `PUT /snapshot/load` failed.
    #[error(transparent)]
    Load(#[from] ApiError),
    /// The guest did not print.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// A run that could not start: why, and the VMM's last stderr line.
#[derive(Debug, thiserror::Error)]
#[error("{source}{}", .stderr.as_ref().map_or_else(String::new, |l| format!(": {l}")))]
pub struct StartError {
    /// What failed.
    #[source]
    pub source: RunError,
    /// The VMM's last stderr line, if any.
    pub stderr: Option<String>,
}

/// A restore runner: one binary, one way in, one snapshot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestoreRunner {
    /// Label in the table.
    pub name: String,
    /// The binary.
    pub exe: PathBuf,
    /// Kiln, or Firecracker's flags only (no timings file).
    pub flavor: Flavor,
    /// How it restores.
    pub via: Via,
    /// The snapshot's state file.
    pub state: PathBuf,
    /// The snapshot's memory file.
    pub mem: PathBuf,
}

/// The files of one run in the scratch directory, removed afterwards.
struct RunFiles {
    sock: PathBuf,
    timings: PathBuf,
    err: PathBuf,
}

impl RunFiles {
    fn new(scratch: &Path) -> Self {
        let id = run_id();
        let f = |ext: &str| scratch.join(format!("{id}.{ext}"));
        RunFiles {
            sock: f("sock"),
            timings: f("json"),
            err: f("err"),
        }
    }

    fn remove(&self) {
        for p in [&self.sock, &self.timings, &self.err] {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A started restore, running once [`Started::wait_running`] returns.
pub struct Started {
    vmm: Vmm,
    files: RunFiles,
    /// What was timed so far.
    pub times: RestoreTimes,
    deadline_ns: u64,
    timeout: Duration,
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

impl RestoreRunner {
    /// A runner restoring `snap` with `exe`.
    pub fn new(name: String, exe: &Path, flavor: Flavor, via: Via, snap: &Snapshot) -> Self {
        RestoreRunner {
            name,
            exe: exe.to_path_buf(),
            flavor,
            via,
            state: snap.state.clone(),
            mem: snap.mem.clone(),
        }
    }

    fn command(&self, f: &RunFiles) -> Command {
        let mut c = Command::new(&self.exe);
        match (self.via, self.flavor) {
            (Via::Cli, _) => {
                c.arg("restore").arg("--snapshot").arg(&self.state);
                c.arg("--mem").arg(&self.mem).arg("--resume");
            }
            (Via::Api, Flavor::Kiln) => {
                c.arg("api").arg("--api-sock").arg(&f.sock);
            }
            (Via::Api, Flavor::Firecracker) => {
                c.arg("--api-sock").arg(&f.sock);
            }
        }
        if self.flavor == Flavor::Kiln {
            c.arg("--timings").arg(&f.timings);
        }
        c
    }

    /// The body of `PUT /snapshot/load`.
    pub fn load_body(&self) -> String {
        serde_json::json!({
            "snapshot_path": self.state.display().to_string(),
            "mem_backend": {
                "backend_type": "File",
                "backend_path": self.mem.display().to_string(),
            },
            "resume_vm": true,
        })
        .to_string()
    }

    /// Execs the VMM and, on the API path, loads the snapshot; the error (with the
    /// VMM's last stderr line) is for [`Sample::error`].
    pub fn start(
        &self,
        index: usize,
        scratch: &Path,
        timeout: Duration,
    ) -> Result<Started, StartError> {
        let files = RunFiles::new(scratch);
        let r = self.start_with(index, &files, scratch, timeout);
        r.map_err(|(source, vmm)| {
            if let Some(v) = vmm {
                v.kill();
            }
            let stderr = last_line(&files.err);
            files.remove();
            StartError { source, stderr }
        })
        .map(|(vmm, times, deadline_ns)| Started {
            vmm,
            files,
            times,
            deadline_ns,
            timeout,
        })
    }

    /// [`RestoreRunner::start`] up to the `Started`; on failure, the VMM if it runs.
    fn start_with(
        &self,
        index: usize,
        files: &RunFiles,
        scratch: &Path,
        timeout: Duration,
    ) -> Result<(Vmm, RestoreTimes, u64), (RunError, Option<Vmm>)> {
        let watch = match self.via {
            Via::Api => Some(SocketWatch::new(scratch).map_err(|e| (RunError::Watch(e), None))?),
            Via::Cli => None,
        };
        let mut vmm = Vmm::spawn(self.command(files), &files.err).map_err(|source| {
            let exe = self.exe.clone();
            (RunError::Spawn { exe, source }, None)
        })?;
        let deadline_ns = vmm.start_ns.saturating_add(timeout.as_nanos() as u64);
        let mut times = RestoreTimes {
            index,
            ..RestoreTimes::default()
        };
        if let Some(w) = &watch {
            if let Err(e) = self.load(w, &mut vmm, &files.sock, deadline_ns, &mut times) {
                return Err((e.into(), Some(vmm)));
            }
        }
        Ok((vmm, times, deadline_ns))
    }

    /// `PUT /snapshot/load` over the socket, timed into `t`.
    fn load(
        &self,
        watch: &SocketWatch,
        vmm: &mut Vmm,
        sock: &Path,
        deadline: u64,
        t: &mut RestoreTimes,
    ) -> Result<(), ApiError> {
        let start = vmm.start_ns;
        let (stream, ready) = watch.connect(sock, vmm.pid(), deadline)?;
        t.socket_ready_us = Some(us(ready.saturating_sub(start)));
        let mut c = Client::new(stream, deadline);
        let request = request_bytes("PUT", "/snapshot/load", &self.load_body());
        let t_req = monotonic_ns();
        c.send(&request)?;
        let reply = c.reply()?;
        let t_reply = monotonic_ns();
        t.load_request_us = Some(us(t_req.saturating_sub(start)));
        t.load_reply_us = Some(us(t_reply.saturating_sub(t_req)));
        reply.expect(204, "PUT /snapshot/load")?;
        Ok(())
    }

    /// Runs once: start, wait for the guest, read memory, stop. Never fails: problems
    /// end up in [`Sample::error`].
    pub fn run_once(
        &self,
        index: usize,
        scratch: &Path,
        timeout: Duration,
    ) -> (Sample, RestoreTimes) {
        match self.start(index, scratch, timeout) {
            Ok(mut s) => {
                let running = s.wait_running(1);
                if running.is_ok() {
                    s.read_memory(&self.mem);
                }
                s.stop(running)
            }
            Err(e) => (
                failed(index, e.to_string()),
                RestoreTimes {
                    index,
                    ..RestoreTimes::default()
                },
            ),
        }
    }
}

fn failed(index: usize, why: String) -> Sample {
    Sample {
        index,
        error: Some(why),
        ..Sample::default()
    }
}

fn with_stderr(why: String, err: &Path) -> String {
    match last_line(err) {
        Some(l) => format!("{why}: {l}"),
        None => why,
    }
}

impl Started {
    /// Waits until the guest has printed `passes` passes since the restore (the first
    /// means it runs; a pass after that has read every touched page); the first is
    /// recorded as [`RestoreTimes::first_output_us`].
    pub fn wait_running(&mut self, passes: usize) -> Result<(), RunError> {
        for n in 1..=passes.max(1) {
            let at = self.vmm.wait_for(PASS, n, self.deadline_ns)?;
            if n == 1 {
                self.times.first_output_us = Some(us(at.saturating_sub(self.vmm.start_ns)));
            }
        }
        Ok(())
    }

    /// Reads the process's and the guest mapping's memory use now.
    pub fn read_memory(&mut self, mem_file: &Path) {
        let pid = self.vmm.pid();
        self.times.process = smaps::process(pid);
        self.times.guest = smaps::mapping(pid, mem_file);
    }

    /// Stops the VMM with SIGTERM and collects the sample; `running` is how waiting for
    /// the guest went.
    pub fn stop(self, running: Result<(), RunError>) -> (Sample, RestoreTimes) {
        let Started {
            vmm,
            files,
            mut times,
            timeout,
            ..
        } = self;
        let (index, start_ns) = (times.index, vmm.start_ns);
        let mut s = Sample {
            index,
            ..Sample::default()
        };
        match vmm.terminate(timeout) {
            Ok((term_ns, e)) => {
                record_end(&mut s, &e, timeout);
                times.term_to_exit_us = Some(us(e.end_ns.saturating_sub(term_ns)));
                if running.is_ok() && stopped_by_sigterm(&e) {
                    s.ok = true;
                    s.error = None;
                } else if running.is_ok() && s.ok {
                    s.ok = false;
                    s.error = Some("the VMM exited before it was stopped".into());
                }
            }
            Err(e) => s.error = Some(format!("waiting for the VMM: {e}")),
        }
        if let Err(why) = running {
            s.ok = false;
            s.error = Some(why.to_string());
        }
        s.vm = read_timings(&files.timings);
        if let (Some(vm), Some(req)) = (&s.vm, times.load_request_us) {
            times.load_to_first_kvm_run_us = first_run_after(vm, start_ns, req);
        }
        if !s.ok {
            let why = s.error.take().unwrap_or_else(|| "failed".into());
            s.error = Some(with_stderr(why, &files.err));
        }
        files.remove();
        (s, times)
    }
}

/// `PUT /snapshot/load` (sent `load_request_us` after `start_ns`) → first `KVM_RUN`, from
/// Kiln's timings of a process started at `start_ns`.
fn first_run_after(vm: &RunTimings, start_ns: u64, load_request_us: f64) -> Option<f64> {
    let abs_ns = vm.process_start_ns? as i128 + vm.first_kvm_run_us? as i128 * 1000;
    Some((abs_ns - start_ns as i128) as f64 / 1000.0 - load_request_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner(via: Via, flavor: Flavor) -> RestoreRunner {
        RestoreRunner {
            name: "t".into(),
            exe: "/k".into(),
            flavor,
            via,
            state: "/s/state".into(),
            mem: "/s/m em".into(),
        }
    }

    fn argv(r: &RestoreRunner) -> Vec<String> {
        let f = RunFiles {
            sock: "/x/a.sock".into(),
            timings: "/x/a.json".into(),
            err: "/x/a.err".into(),
        };
        let c = r.command(&f);
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn commands_per_way_in() {
        assert_eq!(
            argv(&runner(Via::Cli, Flavor::Kiln)),
            [
                "restore",
                "--snapshot",
                "/s/state",
                "--mem",
                "/s/m em",
                "--resume",
                "--timings",
                "/x/a.json"
            ]
        );
        assert_eq!(
            argv(&runner(Via::Api, Flavor::Kiln)),
            ["api", "--api-sock", "/x/a.sock", "--timings", "/x/a.json"]
        );
        assert_eq!(
            argv(&runner(Via::Api, Flavor::Firecracker)),
            ["--api-sock", "/x/a.sock"]
        );
    }

    #[test]
    fn load_body_is_firecrackers() {
        let v: serde_json::Value =
            serde_json::from_str(&runner(Via::Api, Flavor::Kiln).load_body()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "snapshot_path": "/s/state",
                "mem_backend": {"backend_type": "File", "backend_path": "/s/m em"},
                "resume_vm": true,
            })
        );
        // Kiln's API model accepts it.
        let p: api::model::SnapshotLoadParams = serde_json::from_value(v).unwrap();
        assert_eq!(p.mem_file(), Ok("/s/m em"));
    }

    #[test]
    fn first_run_is_timed_from_the_load_request() {
        let vm = RunTimings {
            process_start_ns: Some(1_000_000),
            first_kvm_run_us: Some(2500),
            ..RunTimings::default()
        };
        // exec at 0.5 ms, so the first KVM_RUN is 3.0 ms after exec; load sent at 2.0 ms.
        assert_eq!(first_run_after(&vm, 500_000, 2000.0), Some(1000.0));
        assert_eq!(first_run_after(&RunTimings::default(), 0, 1.0), None);
    }

    #[test]
    fn a_missing_binary_is_a_failed_sample() {
        let d = vmm_sys_util::tempdir::TempDir::new_with_prefix(
            std::env::temp_dir().join("kiln-restore-run-"),
        )
        .unwrap();
        let mut r = runner(Via::Cli, Flavor::Kiln);
        r.exe = "/nonexistent/kiln".into();
        let (s, t) = r.run_once(3, d.as_path(), Duration::from_secs(5));
        assert!(!s.ok && s.error.unwrap().contains("cannot start"));
        assert_eq!((s.index, t.index), (3, 3));
        assert_eq!(std::fs::read_dir(d.as_path()).unwrap().count(), 0);
    }
}
