//! [`RunningVm`]: a started VM a test reads, writes, waits for and stops.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use regex::Regex;
use vmm_sys_util::tempdir::TempDir;

use vmm::exit::{ExitKind, VmExit};
use vmm::vm::StopHandle;

use crate::serial_log::SerialLog;
use crate::snapshot::Snapshot;
use crate::{io_err, HResult, HarnessError};

pub(crate) enum Backend {
    Child {
        child: Child,
        stdin: Option<ChildStdin>,
        timings: PathBuf,
        _dir: TempDir,
    },
    InProcess {
        thread: Option<JoinHandle<vmm::Result<VmExit>>>,
        stop: StopHandle,
        input: Option<std::fs::File>,
        times: Arc<util::time::BootTimestamps>,
    },
}

/// Start-up milestones and memory of a run (the `kiln run --timings` record).
pub use vmm::timings::RunTimings as Timings;

/// How a VM ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Process exit code (child) or [`VmExit::exit_code`] (in-process); `None` if killed
    /// by a signal.
    pub code: Option<i32>,
    /// In-process runs: the exit reason; child runs: `None` (see `log`).
    pub exit: Option<VmExit>,
    /// All serial output lines.
    pub serial: Vec<String>,
    /// Kiln's stderr (child runs) or the error (in-process).
    pub log: String,
    /// Start-up timings, when available.
    pub timings: Timings,
    /// How the VM ended (e.g. [`ExitKind::TripleFault`] apart from a guest reset), for
    /// child runs from the `--timings` record; `None` when Kiln did not say.
    pub kind: Option<ExitKind>,
}

/// A VM started by a [`crate::VmBuilder`]. Dropping it kills / stops the VM.
pub struct RunningVm {
    pub(crate) serial: SerialLog,
    pub(crate) log: SerialLog,
    pub(crate) readers: Vec<JoinHandle<()>>,
    /// The API socket (`--api-sock`), when the VM serves one.
    pub(crate) api: Option<PathBuf>,
    /// The `kiln` binary of a child VM (restores default to it).
    pub(crate) kiln: Option<PathBuf>,
    /// The snapshot the VM's dirty-page log counts from: the last one taken of it, or
    /// the one it was restored from (the base of [`RunningVm::snapshot_diff`]).
    pub(crate) base: Option<Snapshot>,
    /// The vsock device's host socket ([`crate::VmBuilder::vsock`]).
    pub(crate) vsock: Option<crate::vsock::VsockSocket>,
    pub(crate) backend: Backend,
}

impl RunningVm {
    /// Serial lines so far.
    pub fn serial_lines(&self) -> Vec<String> {
        self.serial.lines()
    }

    /// Waits up to `timeout` for a serial line matching `pattern`; returns the line.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> HResult<String> {
        self.wait_for_from(pattern, 0, timeout).map(|(_, l)| l)
    }

    /// Like [`RunningVm::wait_for`], only looking at lines from index `from` on;
    /// returns the line's index too.
    pub fn wait_for_from(
        &mut self,
        pattern: &str,
        from: usize,
        timeout: Duration,
    ) -> HResult<(usize, String)> {
        let re = Regex::new(pattern)?;
        let (found, closed) = self.serial.wait(&re, from, Instant::now() + timeout);
        match found {
            Some(hit) => Ok(hit),
            None if closed => Err(HarnessError::ExitedEarly {
                // Kiln's last words go to stderr just before exit: let them arrive.
                log: self.log_tail(Duration::from_secs(2)),
                pattern: pattern.into(),
                exit: self.exit_description(),
                tail: self.serial.tail(20),
            }),
            None => Err(HarnessError::Timeout {
                pattern: pattern.into(),
                timeout,
                tail: self.serial.tail(20),
            }),
        }
    }

    /// The API socket, when the VM serves one ([`crate::VmBuilder::api`]).
    pub fn api_socket(&self) -> Option<&Path> {
        self.api.as_deref()
    }

    /// How a child `kiln` ended, if it has; `None` while it runs (and in process).
    pub(crate) fn child_exit(&mut self) -> Option<String> {
        match &mut self.backend {
            Backend::Child { child, .. } => match child.try_wait() {
                Ok(Some(s)) => Some(s.to_string()),
                Ok(None) => None,
                Err(e) => Some(format!("unknown ({e})")),
            },
            Backend::InProcess { .. } => None,
        }
    }

    /// Kiln's last log lines, once it has closed its stderr (or after `wait`).
    pub(crate) fn log_tail(&self, wait: Duration) -> String {
        self.log.wait_closed(Instant::now() + wait);
        self.log.tail(20)
    }

    fn exit_description(&mut self) -> String {
        match &mut self.backend {
            Backend::Child { child, .. } => match child.try_wait() {
                Ok(Some(s)) => s.to_string(),
                _ => "serial closed".into(),
            },
            Backend::InProcess { .. } => "serial closed".into(),
        }
    }

    /// Writes bytes to the guest's serial input.
    pub fn write_serial(&mut self, bytes: &[u8]) -> HResult<()> {
        let w: &mut dyn Write = match &mut self.backend {
            Backend::Child { stdin: Some(s), .. } => s,
            Backend::InProcess { input: Some(f), .. } => f,
            _ => {
                return Err(HarnessError::Io {
                    what: "serial input".into(),
                    source: std::io::ErrorKind::BrokenPipe.into(),
                })
            }
        };
        w.write_all(bytes)
            .and_then(|_| w.flush())
            .map_err(io_err("writing serial input"))
    }

    /// SIGKILLs a child `kiln` (no clean shutdown) and collects what it left; in process,
    /// same as [`RunningVm::stop`].
    pub fn kill(mut self) -> HResult<Outcome> {
        match &mut self.backend {
            Backend::Child { child, .. } => {
                child.kill().map_err(io_err("killing kiln"))?;
            }
            Backend::InProcess { stop, .. } => stop.stop(),
        }
        self.wait(Duration::from_secs(10))
    }

    /// Stops the VM (SIGTERM to a child; the stop handle in-process) and waits for it.
    pub fn stop(mut self, timeout: Duration) -> HResult<Outcome> {
        match &mut self.backend {
            Backend::Child { child, .. } => {
                // SAFETY: sending SIGTERM to our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
            Backend::InProcess { stop, .. } => stop.stop(),
        }
        self.wait(timeout)
    }

    /// Waits up to `timeout` for the VM to end; on timeout kills it and reports
    /// [`HarnessError::ExitTimeout`].
    pub fn wait(mut self, timeout: Duration) -> HResult<Outcome> {
        let deadline = Instant::now() + timeout;
        let (code, exit, log, timings) = match &mut self.backend {
            Backend::Child { child, timings, .. } => {
                let status = loop {
                    match child.try_wait().map_err(io_err("waiting for kiln"))? {
                        Some(s) => break s,
                        None if Instant::now() >= deadline => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(HarnessError::ExitTimeout {
                                timeout,
                                tail: self.serial.tail(20),
                            });
                        }
                        None => std::thread::sleep(Duration::from_millis(5)),
                    }
                };
                let t = std::fs::read_to_string(&*timings).unwrap_or_default();
                (status.code(), None, String::new(), Timings::parse(&t))
            }
            Backend::InProcess {
                thread,
                stop,
                times,
                ..
            } => {
                let Some(t) = thread.take() else {
                    return Err(io_err("waiting for the VM")(
                        std::io::ErrorKind::Other.into(),
                    ));
                };
                while !t.is_finished() {
                    if Instant::now() >= deadline {
                        stop.stop();
                        let _ = t.join();
                        return Err(HarnessError::ExitTimeout {
                            timeout,
                            tail: self.serial.tail(20),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let timings = Timings::collect(times, None, None, None);
                match t.join() {
                    Ok(Ok(exit)) => (Some(exit.exit_code()), Some(exit), String::new(), timings),
                    Ok(Err(e)) => (Some(1), None, e.to_string(), timings),
                    Err(_) => (None, None, "VM thread panicked".into(), timings),
                }
            }
        };
        // The VMM is gone: its output pipes close, so the readers finish.
        if let Backend::InProcess { input, .. } = &mut self.backend {
            input.take();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let mut log_text = self.log.lines().join("\n");
        if !log.is_empty() {
            log_text = log;
        }
        let kind = exit.as_ref().map(VmExit::kind).or(timings.exit_kind);
        Ok(Outcome {
            code,
            kind,
            exit,
            serial: self.serial.lines(),
            log: log_text,
            timings,
        })
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        match &mut self.backend {
            Backend::Child { child, .. } => {
                if let Ok(None) = child.try_wait() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Backend::InProcess { thread, stop, .. } => {
                if let Some(t) = thread.take() {
                    stop.stop();
                    let _ = t.join();
                }
            }
        }
    }
}
