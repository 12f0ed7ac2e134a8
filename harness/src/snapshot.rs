//! [`Snapshot`]: the state and memory files of a snapshot, and [`RestoreBuilder`], which
//! starts a VM from them as a child `kiln restore` process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::builder::{kiln_binary, spawn_child, temp_dir};
use crate::running::RunningVm;
use crate::{io_err, HResult, HarnessError};

/// The state file's name in a snapshot directory ([`crate::RunningVm::snapshot`]).
pub const STATE_FILE: &str = "state";
/// The memory file's name in a snapshot directory.
pub const MEM_FILE: &str = "mem";

/// A snapshot on disk: the state file and the memory file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The state file (`snapshot_path`).
    pub state: PathBuf,
    /// The memory file (`mem_file_path`).
    pub mem: PathBuf,
    /// The `kiln` binary that made it, the default for restoring it.
    kiln: Option<PathBuf>,
}

impl Snapshot {
    /// A snapshot made elsewhere (e.g. through the API directly).
    pub fn new(state: impl AsRef<Path>, mem: impl AsRef<Path>) -> Self {
        Snapshot {
            state: state.as_ref().to_path_buf(),
            mem: mem.as_ref().to_path_buf(),
            kiln: None,
        }
    }

    /// `<dir>/state` and `<dir>/mem` as absolute paths (the VMM may run elsewhere),
    /// creating `dir` if needed.
    pub(crate) fn in_dir(dir: &Path, kiln: Option<PathBuf>) -> HResult<Self> {
        let what = || format!("creating the snapshot directory {}", dir.display());
        std::fs::create_dir_all(dir).map_err(io_err(what()))?;
        let dir = std::path::absolute(dir).map_err(io_err(what()))?;
        Ok(Snapshot {
            state: dir.join(STATE_FILE),
            mem: dir.join(MEM_FILE),
            kiln,
        })
    }

    /// The body of `PUT /snapshot/create` for this snapshot; `kind` is `"Full"` or
    /// `"Diff"`.
    pub(crate) fn create_body(&self, kind: &str) -> HResult<String> {
        let text = |p: &Path| {
            p.to_str().map(String::from).ok_or_else(|| {
                HarnessError::Unsupported(format!(
                    "snapshot path {} is not UTF-8, which the API's JSON needs",
                    p.display()
                ))
            })
        };
        Ok(serde_json::json!({
            "snapshot_path": text(&self.state)?,
            "mem_file_path": text(&self.mem)?,
            "snapshot_type": kind,
        })
        .to_string())
    }

    /// Starts configuring a restore of this snapshot (by default: resumed at once, no
    /// API socket, the `kiln` binary that made the snapshot).
    pub fn restore(&self) -> RestoreBuilder {
        RestoreBuilder {
            snapshot: self.clone(),
            kiln: self.kiln.clone(),
            resume: true,
            api: false,
            track_dirty_pages: false,
            args: Vec::new(),
        }
    }
}

/// Configures a VM restored from a [`Snapshot`] (`kiln restore`).
#[derive(Debug, Clone)]
pub struct RestoreBuilder {
    snapshot: Snapshot,
    kiln: Option<PathBuf>,
    resume: bool,
    api: bool,
    track_dirty_pages: bool,
    args: Vec<String>,
}

impl RestoreBuilder {
    /// The `kiln` binary (default: the one that made the snapshot, else `$KILN_BIN`,
    /// else `kiln` on PATH).
    pub fn kiln_binary(mut self, path: impl AsRef<Path>) -> Self {
        self.kiln = Some(path.as_ref().to_path_buf());
        self
    }

    /// Run at once (default), or stay paused until [`RunningVm::resume`] (needs
    /// [`RestoreBuilder::api`]).
    pub fn resume(mut self, on: bool) -> Self {
        self.resume = on;
        self
    }

    /// Serve Firecracker's API on a socket in the VM's temp dir (`--api-sock`), for
    /// pause, resume and further snapshots.
    pub fn api(mut self, on: bool) -> Self {
        self.api = on;
        self
    }

    /// Log dirty pages, so that [`RunningVm::snapshot_diff`] works on the restored VM.
    pub fn track_dirty_pages(mut self, on: bool) -> Self {
        self.track_dirty_pages = on;
        self
    }

    /// Extra `kiln restore` arguments (e.g. `--log-level debug`).
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// The `kiln` arguments before the harness's own (`--timings`, `--api-sock`).
    fn command_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "restore".into(),
            "--snapshot".into(),
            self.snapshot.state.clone().into(),
            "--mem".into(),
            self.snapshot.mem.clone().into(),
        ];
        if self.resume {
            args.push("--resume".into());
        }
        if self.track_dirty_pages {
            args.push("--track-dirty-pages".into());
        }
        args
    }

    /// Starts the restored VM as a child `kiln restore` process; it works as a spawned
    /// [`crate::VmBuilder`] VM does (serial lines, wait, stop, kill; pause and resume
    /// with the API on). Its serial output starts where the snapshot was taken, which
    /// may be in the middle of a line.
    pub fn spawn(&self) -> HResult<RunningVm> {
        if !self.resume && !self.api {
            return Err(HarnessError::Unsupported(
                "a restore that does not resume needs RestoreBuilder::api(true): nothing \
                 else could resume the VM"
                    .into(),
            ));
        }
        let dir = temp_dir().map_err(io_err("creating a temp dir"))?;
        let kiln = kiln_binary(self.kiln.as_deref());
        let mut vm = spawn_child(&kiln, self.command_args(), &self.args, dir, self.api)?;
        vm.base = Some(self.snapshot.clone());
        Ok(vm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        Snapshot::new("/s/state", "/s/mem")
    }

    fn strings(args: &[OsString]) -> Vec<&str> {
        args.iter().map(|a| a.to_str().unwrap()).collect()
    }

    #[test]
    fn restore_defaults_to_resume_without_api() {
        let r = snap().restore();
        assert!(r.resume && !r.api && !r.track_dirty_pages);
        assert_eq!(
            strings(&r.command_args()),
            [
                "restore",
                "--snapshot",
                "/s/state",
                "--mem",
                "/s/mem",
                "--resume"
            ]
        );
    }

    #[test]
    fn restore_flags_follow_the_builder() {
        let r = snap().restore().resume(false).track_dirty_pages(true);
        assert_eq!(
            strings(&r.command_args()),
            [
                "restore",
                "--snapshot",
                "/s/state",
                "--mem",
                "/s/mem",
                "--track-dirty-pages"
            ]
        );
    }

    #[test]
    fn a_paused_restore_without_api_is_refused_before_starting() {
        let r = snap()
            .restore()
            .resume(false)
            .kiln_binary("/nonexistent/kiln");
        let e = r.spawn().err().unwrap();
        assert!(matches!(e, HarnessError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("api(true)"), "{e}");
    }

    #[test]
    fn the_kiln_binary_defaults_to_the_snapshots() {
        let mut s = snap();
        s.kiln = Some("/opt/kiln".into());
        assert_eq!(s.restore().kiln.as_deref(), Some(Path::new("/opt/kiln")));
        let r = s.restore().kiln_binary("/other/kiln");
        assert_eq!(r.kiln.as_deref(), Some(Path::new("/other/kiln")));
    }

    #[test]
    fn create_body_names_both_files_and_the_type() {
        let body = snap().create_body("Diff").unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "snapshot_path": "/s/state",
                "mem_file_path": "/s/mem",
                "snapshot_type": "Diff",
            })
        );
    }

    #[test]
    fn non_utf8_paths_are_refused() {
        use std::os::unix::ffi::OsStrExt;
        let bad = Path::new(std::ffi::OsStr::from_bytes(b"/s/\xff"));
        let e = Snapshot::new(bad, "/s/mem")
            .create_body("Full")
            .unwrap_err();
        assert!(matches!(e, HarnessError::Unsupported(_)), "{e}");
    }

    #[test]
    fn in_dir_makes_the_directory_and_absolute_paths() {
        let d = temp_dir().unwrap();
        let sub = d.as_path().join("a/b");
        let s = Snapshot::in_dir(&sub, None).unwrap();
        assert!(sub.is_dir());
        assert!(s.state.is_absolute() && s.mem.is_absolute());
        assert_eq!(s.state, sub.join(STATE_FILE));
        assert_eq!(s.mem, sub.join(MEM_FILE));
    }
}
