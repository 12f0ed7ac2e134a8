//! A spawned VM's API socket (`kiln run|restore --api-sock`): any request, pause,
//! resume, full and diff snapshots, through the shared client [`api::client`].

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use api::client::{Client, ClientError};

use crate::running::{Backend, RunningVm};
use crate::snapshot::Snapshot;
use crate::{io_err, HResult, HarnessError};

/// How long one API request may take, writing a snapshot included; also how long the
/// harness waits for the socket to accept its first connection.
pub const API_TIMEOUT: Duration = Duration::from_secs(60);
/// How often to retry connecting while the socket is not there yet.
const CONNECT_RETRY: Duration = Duration::from_millis(5);

/// The body of `PATCH /vm`.
fn vm_state_body(paused: bool) -> &'static str {
    match paused {
        true => r#"{"state":"Paused"}"#,
        false => r#"{"state":"Resumed"}"#,
    }
}

/// A connection, or `Ok(None)` while the socket is not bound or not listening yet.
pub(crate) fn try_connect(sock: &Path, timeout: Duration) -> Result<Option<Client>, ClientError> {
    match Client::connect(sock, timeout) {
        Ok(c) => Ok(Some(c)),
        Err(ClientError::Connect { source, .. })
            if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// One request that must answer `want`; the reply's body.
pub(crate) fn expect(
    c: &mut Client,
    (method, path, body): (&str, &str, &str),
    want: u16,
) -> Result<String, ClientError> {
    let reply = c.call(method, path, body)?;
    reply
        .expect(want, format!("{method} {path}"))
        .map(|r| r.text())
}

fn api_err(what: &str) -> impl FnOnce(ClientError) -> HarnessError {
    let what = what.to_string();
    move |source| HarnessError::Api { what, source }
}

/// Whether `a` and `b` are the same existing file.
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Copies `src` to `dst` keeping it sparse (the start of a diff snapshot's memory file).
fn copy_mem(src: &Path, dst: &Path) -> HResult<()> {
    let what = format!("copying memory file {} to {}", src.display(), dst.display());
    let from = File::open(src).map_err(io_err(what.clone()))?;
    let to = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dst)
        .map_err(io_err(what.clone()))?;
    vmm::snapshot::memory::copy_sparse(&from, &to)
        .map(drop)
        .map_err(|source| HarnessError::SnapshotMemory { what, source })
}

impl RunningVm {
    /// A connection to the API socket: waits up to [`API_TIMEOUT`] for it to accept,
    /// failing early, with Kiln's last words, when Kiln exits first. `what` names the
    /// operation in errors.
    fn api_client(&mut self, what: &str) -> HResult<Client> {
        let sock = self.require_api(what)?;
        let deadline = Instant::now() + API_TIMEOUT;
        loop {
            if let Some(c) = try_connect(&sock, API_TIMEOUT).map_err(api_err(what))? {
                return Ok(c);
            }
            if let Some(exit) = self.child_exit() {
                return Err(HarnessError::ApiGone {
                    what: what.into(),
                    exit,
                    log: self.log_tail(Duration::from_secs(2)),
                });
            }
            if Instant::now() >= deadline {
                return Err(api_err(what)(ClientError::Timeout(
                    "waiting for the API socket",
                )));
            }
            std::thread::sleep(CONNECT_RETRY);
        }
    }

    /// The API socket's path, or why there is none.
    fn require_api(&self, what: &str) -> HResult<PathBuf> {
        match (&self.api, &self.backend) {
            (Some(s), _) => Ok(s.clone()),
            (None, Backend::InProcess { .. }) => Err(HarnessError::Unsupported(format!(
                "{what}: the VM runs in this process, without an API socket; spawn it \
                 (VmBuilder::spawn) with VmBuilder::api(true)"
            ))),
            (None, Backend::Child { .. }) => Err(HarnessError::Unsupported(format!(
                "{what}: the VM has no API socket; build it with VmBuilder::api(true) \
                 (or RestoreBuilder::api(true))"
            ))),
        }
    }

    /// One request that must answer `want`: the reply's body.
    fn api_expect(&mut self, what: &str, req: (&str, &str, &str), want: u16) -> HResult<String> {
        let mut c = self.api_client(what)?;
        expect(&mut c, req, want).map_err(api_err(what))
    }

    /// One request on the VM's API socket (see [`crate::VmBuilder::api`]): the reply's
    /// status and body, whatever the status.
    pub fn api_call(&mut self, method: &str, path: &str, body: &str) -> HResult<(u16, String)> {
        let what = format!("{method} {path}");
        let mut c = self.api_client(&what)?;
        c.call_json(method, path, body).map_err(api_err(&what))
    }

    /// The VM's state as `GET /` reports it: `"Running"`, `"Paused"`, ...
    pub fn vm_state(&mut self) -> HResult<String> {
        let what = "reading the VM state";
        let body = self.api_expect(what, ("GET", "/", ""), 200)?;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| HarnessError::Api {
            what: what.into(),
            source: ClientError::Malformed(format!("GET / body {body:?}: {e}")),
        })?;
        Ok(v["state"].as_str().unwrap_or_default().to_string())
    }

    /// Pauses the vCPUs (`PATCH /vm {"state":"Paused"}`); pausing a paused VM is fine.
    pub fn pause(&mut self) -> HResult<()> {
        let req = ("PATCH", "/vm", vm_state_body(true));
        self.api_expect("pausing the VM", req, 204).map(drop)
    }

    /// Lets the vCPUs run again (`PATCH /vm {"state":"Resumed"}`).
    pub fn resume(&mut self) -> HResult<()> {
        let req = ("PATCH", "/vm", vm_state_body(false));
        self.api_expect("resuming the VM", req, 204).map(drop)
    }

    /// Pauses the VM if it runs and writes a full snapshot to `dir/state` and `dir/mem`
    /// (`PUT /snapshot/create`; `dir` is created if needed). The VM stays paused:
    /// [`RunningVm::resume`] lets it go on.
    pub fn snapshot(&mut self, dir: &Path) -> HResult<Snapshot> {
        let snap = Snapshot::in_dir(dir, self.kiln.clone())?;
        self.create_snapshot(snap, "Full")
    }

    /// Like [`RunningVm::snapshot`], but a diff snapshot: `dir/mem` starts as a sparse
    /// copy of the memory file of the last snapshot taken of this VM (or of the one it
    /// was restored from), and only the pages the guest dirtied since are written. The
    /// VM must log dirty pages ([`crate::VmBuilder::track_dirty_pages`],
    /// [`crate::RestoreBuilder::track_dirty_pages`]). `dir` may be that last
    /// snapshot's directory: its files are then updated in place.
    pub fn snapshot_diff(&mut self, dir: &Path) -> HResult<Snapshot> {
        let what = "taking a diff snapshot";
        let Some(base) = self.base.clone() else {
            return Err(HarnessError::Unsupported(format!(
                "{what}: no base; take a full snapshot() of this VM first, or restore it \
                 from one"
            )));
        };
        self.require_api(what)?;
        let snap = Snapshot::in_dir(dir, self.kiln.clone())?;
        if !same_file(&base.mem, &snap.mem) {
            copy_mem(&base.mem, &snap.mem)?;
        }
        self.create_snapshot(snap, "Diff")
    }

    fn create_snapshot(&mut self, snap: Snapshot, kind: &str) -> HResult<Snapshot> {
        let body = snap.create_body(kind)?;
        self.pause()?;
        let what = format!("creating a {kind} snapshot in {}", snap.state.display());
        self.api_expect(&what, ("PUT", "/snapshot/create", &body), 204)?;
        self.base = Some(snap.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests;
