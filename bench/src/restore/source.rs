//! Making the snapshot the restore runs load: boot the spinning guest through a VMM's
//! API (`kiln api --api-sock`, or Firecracker's `--api-sock`), wait until it has touched
//! its pages, pause it, time `PUT /snapshot/create`, stop the VMM.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use api::client::{Client, ClientError};
use serde::Serialize;
use util::time::monotonic_ns;

use super::child::{OutputError, Vmm};
use super::guest::READY;
use crate::api::socket::SocketWatch;
use crate::api::{ApiError, Flavor, GuestSpec, INSTANCE_START};

/// The `PATCH /vm` body that pauses the VM.
pub const PAUSE: &str = r#"{"state":"Paused"}"#;

/// A snapshot on disk and how it was made.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// The state file.
    pub state: PathBuf,
    /// The memory file.
    pub mem: PathBuf,
    /// How it was made.
    #[serde(flatten)]
    pub info: SnapshotInfo,
}

impl Snapshot {
    /// Removes both files.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.state);
        let _ = std::fs::remove_file(&self.mem);
    }
}

/// How long making a snapshot took and what it left on disk.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SnapshotInfo {
    /// The VMM that made it (a table label).
    pub vmm: String,
    /// Guest memory, MiB.
    pub mem_mib: u64,
    /// exec → the guest printed that its pages are written (µs).
    pub boot_us: f64,
    /// `PATCH /vm {"state":"Paused"}` → 204 (µs).
    pub pause_us: f64,
    /// `PUT /snapshot/create` → 204 (µs).
    pub create_us: f64,
    /// State file size, bytes.
    pub state_bytes: u64,
    /// Memory file size, bytes.
    pub mem_file_bytes: u64,
    /// Memory file blocks on disk, bytes (less than its size when sparse).
    pub mem_file_allocated_bytes: u64,
}

/// Why a step of making the snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The VMM could not be started.
    #[error("cannot start {exe}: {source}")]
    Spawn {
        /// The binary.
        exe: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The scratch directory could not be watched for the API socket.
    #[error("watching {dir} for the API socket: {source}")]
    Watch {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The API socket did not come up.
    #[error(transparent)]
    Socket(#[from] ApiError),
    /// A request failed or was refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The guest did not print what it should.
    #[error(transparent)]
    Output(#[from] OutputError),
    /// A snapshot file is not there after `PUT /snapshot/create`.
    #[error("snapshot file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Making a snapshot failed: the step, and the last line of the VMM's stderr.
#[derive(Debug, thiserror::Error)]
#[error("{source}{}", tail(.stderr))]
pub struct SnapshotError {
    /// The step that failed.
    #[source]
    pub source: SourceError,
    /// The VMM's last stderr line, if any.
    pub stderr: Option<String>,
}

fn tail(stderr: &Option<String>) -> String {
    stderr
        .as_ref()
        .map_or_else(String::new, |l| format!(" (VMM stderr: {l})"))
}

/// The last non-empty line of the file at `path`.
pub fn last_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty())?;
    Some(line.chars().take(300).collect())
}

/// Who makes the snapshot, and where.
pub struct Source<'a> {
    /// The VMM binary.
    pub exe: &'a Path,
    /// Kiln (`kiln api`) or Firecracker's flags.
    pub flavor: Flavor,
    /// The VMM's label.
    pub vmm: String,
    /// The spinning guest.
    pub guest: &'a GuestSpec,
    /// Where the socket and snapshot files go.
    pub dir: &'a Path,
    /// File name prefix of this snapshot's files.
    pub tag: &'a str,
}

impl Source<'_> {
    /// Boots the guest, snapshots it and stops the VMM, all within `timeout`.
    pub fn make(&self, timeout: Duration) -> Result<Snapshot, SnapshotError> {
        let err = self.dir.join(format!("{}.src.err", self.tag));
        let sock = self.dir.join(format!("{}.src.sock", self.tag));
        let r = self.make_with(&sock, &err, timeout);
        let stderr = match r {
            Ok(_) => None,
            Err(_) => last_line(&err),
        };
        let _ = std::fs::remove_file(&err);
        let _ = std::fs::remove_file(&sock);
        r.map_err(|source| SnapshotError { source, stderr })
    }

    fn make_with(
        &self,
        sock: &Path,
        err: &Path,
        timeout: Duration,
    ) -> Result<Snapshot, SourceError> {
        let watch = SocketWatch::new(self.dir).map_err(|source| SourceError::Watch {
            dir: self.dir.to_path_buf(),
            source,
        })?;
        let mut cmd = Command::new(self.exe);
        if self.flavor == Flavor::Kiln {
            cmd.arg("api");
        }
        cmd.arg("--api-sock").arg(sock);
        let mut vmm = Vmm::spawn(cmd, err).map_err(|source| SourceError::Spawn {
            exe: self.exe.to_path_buf(),
            source,
        })?;
        let deadline = vmm.start_ns.saturating_add(timeout.as_nanos() as u64);
        let snap = Snapshot {
            state: self.dir.join(format!("{}.state", self.tag)),
            mem: self.dir.join(format!("{}.mem", self.tag)),
            info: SnapshotInfo {
                vmm: self.vmm.clone(),
                mem_mib: self.guest.mem_mib,
                ..SnapshotInfo::default()
            },
        };
        let made = self.drive(&watch, &mut vmm, sock, deadline, snap);
        match made {
            Ok(s) => {
                // The VMM's exit status does not matter once the files are written.
                let _ = vmm.terminate(timeout);
                s.stat()
            }
            Err(e) => {
                vmm.kill();
                Err(e)
            }
        }
    }

    fn drive(
        &self,
        watch: &SocketWatch,
        vmm: &mut Vmm,
        sock: &Path,
        deadline: u64,
        mut snap: Snapshot,
    ) -> Result<Snapshot, SourceError> {
        let (stream, _) = watch.connect(sock, vmm.pid(), deadline)?;
        let mut c = Client::new(stream, deadline);
        let g = self.guest;
        c.call("PUT", "/machine-config", &g.machine_config())?
            .expect(204, "PUT /machine-config")?;
        c.call("PUT", "/boot-source", &g.boot_source())?
            .expect(204, "PUT /boot-source")?;
        c.call("PUT", "/actions", INSTANCE_START)?
            .expect(204, "PUT /actions InstanceStart")?;
        let ready = vmm.wait_for(READY, 1, deadline)?;
        snap.info.boot_us = us(ready.saturating_sub(vmm.start_ns));
        let t0 = monotonic_ns();
        c.call("PATCH", "/vm", PAUSE)?
            .expect(204, "PATCH /vm Paused")?;
        let t1 = monotonic_ns();
        let body = serde_json::json!({
            "snapshot_type": "Full",
            "snapshot_path": snap.state.display().to_string(),
            "mem_file_path": snap.mem.display().to_string(),
        })
        .to_string();
        c.call("PUT", "/snapshot/create", &body)?
            .expect(204, "PUT /snapshot/create")?;
        let t2 = monotonic_ns();
        snap.info.pause_us = us(t1.saturating_sub(t0));
        snap.info.create_us = us(t2.saturating_sub(t1));
        Ok(snap)
    }
}

impl Snapshot {
    /// Fills the file sizes in.
    fn stat(mut self) -> Result<Self, SourceError> {
        let meta = |path: &Path| {
            std::fs::metadata(path).map_err(|source| SourceError::File {
                path: path.to_path_buf(),
                source,
            })
        };
        let state = meta(&self.state)?;
        let mem = meta(&self.mem)?;
        self.info.state_bytes = state.len();
        self.info.mem_file_bytes = mem.len();
        self.info.mem_file_allocated_bytes = mem.blocks() * 512;
        Ok(self)
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempdir::TempDir;

    #[test]
    fn stat_reports_sparse_files() {
        let d = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-restore-src-")).unwrap();
        let snap = Snapshot {
            state: d.as_path().join("s"),
            mem: d.as_path().join("m"),
            info: SnapshotInfo::default(),
        };
        std::fs::write(&snap.state, b"state").unwrap();
        let f = std::fs::File::create(&snap.mem).unwrap();
        f.set_len(64 << 20).unwrap();
        let s = snap.clone().stat().unwrap();
        assert_eq!((s.info.state_bytes, s.info.mem_file_bytes), (5, 64 << 20));
        assert!(s.info.mem_file_allocated_bytes < 1 << 20, "{:?}", s.info);
        s.remove();
        assert!(!snap.state.exists() && !snap.mem.exists());
        assert!(matches!(snap.stat(), Err(SourceError::File { .. })));
    }

    #[test]
    fn errors_carry_the_stderr_line() {
        let e = SnapshotError {
            source: SourceError::Output(OutputError::Exited('R')),
            stderr: Some("kiln: error: no KVM".into()),
        };
        assert_eq!(
            e.to_string(),
            "the VMM exited before the guest printed 'R' (VMM stderr: kiln: error: no KVM)"
        );
    }
}
