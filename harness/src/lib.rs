//! A test-harness API for booting guest kernels from Rust tests.
//!
//! [`VmBuilder`] configures a VM; [`VmBuilder::spawn`] starts it as a child `kiln`
//! process and [`VmBuilder::start_in_process`] runs it on a thread of the calling
//! process. Either way you get a [`RunningVm`]: read serial output as lines, wait for a
//! pattern with a timeout, write to the serial input, and wait for the exit.
//! Nothing is global: every VM has its own pipes, temp files and (for nets) the TAP
//! names you give it, so tests can run VMs in parallel.
//!
//! ```no_run
//! use std::time::Duration;
//! use harness::VmBuilder;
//!
//! let mut vm = VmBuilder::new("/path/to/vmlinux")
//!     .cmdline("console=ttyS0 reboot=k panic=1")
//!     .memory_mib(256)
//!     .spawn()?;
//! vm.wait_for(r"Linux version \S+", Duration::from_secs(30))?;
//! let outcome = vm.wait(Duration::from_secs(60))?;
//! assert_eq!(outcome.code, Some(0));
//! # Ok::<(), harness::HarnessError>(())
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use regex::Regex;
use vmm_sys_util::tempdir::TempDir;

use vmm::config::{BootProtocol, DiskConfig, MemSize, NetConfig, SerialConfig, VmConfig};
use vmm::device_manager::SerialIo;
use vmm::exit::{ExitKind, VmExit};
use vmm::vm::{RunOptions, StopHandle, Vm};

/// Harness errors. Timeouts carry the serial tail so a failing test shows what the
/// guest last said.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The pattern did not appear in time.
    #[error("timed out after {timeout:?} waiting for /{pattern}/; last serial lines:\n{tail}")]
    Timeout {
        /// The pattern.
        pattern: String,
        /// The timeout.
        timeout: Duration,
        /// The last serial lines.
        tail: String,
    },
    /// The VM ended before the pattern appeared.
    #[error("VM exited ({exit}) before /{pattern}/ appeared; last serial lines:\n{tail}\nkiln said:\n{log}")]
    ExitedEarly {
        /// The pattern.
        pattern: String,
        /// How it ended.
        exit: String,
        /// The last serial lines.
        tail: String,
        /// Kiln's log (child processes) or error.
        log: String,
    },
    /// The VM did not exit in time (it was killed).
    #[error("VM did not exit within {timeout:?} (killed); last serial lines:\n{tail}")]
    ExitTimeout {
        /// The timeout.
        timeout: Duration,
        /// The last serial lines.
        tail: String,
    },
    /// A bad pattern.
    #[error("invalid pattern: {0}")]
    Pattern(#[from] regex::Error),
    /// Starting or talking to the VM failed.
    #[error("{what}: {source}")]
    Io {
        /// The operation.
        what: String,
        /// Why.
        source: std::io::Error,
    },
    /// Building the in-process VM failed.
    #[error("VM setup failed: {0}")]
    Vm(#[from] vmm::Error),
}

type HResult<T> = std::result::Result<T, HarnessError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// Configures a VM for a test.
#[derive(Clone, Debug)]
pub struct VmBuilder {
    cfg: VmConfig,
    kiln: Option<PathBuf>,
    args: Vec<String>,
}

impl VmBuilder {
    /// A VM booting `kernel` with Kiln's defaults (1 vCPU, 128 MiB).
    pub fn new(kernel: impl AsRef<Path>) -> Self {
        let cfg = VmConfig {
            kernel: Some(kernel.as_ref().to_path_buf()),
            ..VmConfig::default()
        };
        Self {
            cfg,
            kiln: None,
            args: Vec::new(),
        }
    }

    /// Initial ramdisk.
    pub fn initrd(mut self, path: impl AsRef<Path>) -> Self {
        self.cfg.initrd = Some(path.as_ref().to_path_buf());
        self
    }

    /// Kernel command line (replaces the default).
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cfg.cmdline = cmdline.into();
        self
    }

    /// vCPU count.
    pub fn cpus(mut self, n: u32) -> Self {
        self.cfg.cpus = n;
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.cfg.memory = MemSize(mib << 20);
        self
    }

    /// Entry point choice for ELF kernels.
    pub fn boot_protocol(mut self, p: BootProtocol) -> Self {
        self.cfg.boot_protocol = p;
        self
    }

    /// Adds a virtio-blk disk.
    pub fn disk(mut self, disk: DiskConfig) -> Self {
        self.cfg.disks.push(disk);
        self
    }

    /// Adds a virtio-net interface.
    pub fn net(mut self, net: NetConfig) -> Self {
        self.cfg.nets.push(net);
        self
    }

    /// The `kiln` binary for [`VmBuilder::spawn`] (default: `$KILN_BIN`, else `kiln` on PATH).
    pub fn kiln_binary(mut self, path: impl AsRef<Path>) -> Self {
        self.kiln = Some(path.as_ref().to_path_buf());
        self
    }

    /// Extra `kiln run` arguments (e.g. `--log-level debug`).
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// Starts the VM as a child `kiln run` process, serial on its stdin/stdout.
    pub fn spawn(&self) -> HResult<RunningVm> {
        let dir = temp_dir().map_err(io_err("creating a temp dir"))?;
        let mut cfg = self.cfg.clone();
        cfg.serial = SerialConfig::Stdio;
        let cfg_path = dir.as_path().join("vm.json");
        let json = serde_json::to_string(&cfg).map_err(|e| HarnessError::Io {
            what: "writing the VM config".into(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&cfg_path, json).map_err(io_err("writing the VM config"))?;
        let timings = dir.as_path().join("timings.json");
        let kiln = self
            .kiln
            .clone()
            .or_else(|| std::env::var_os("KILN_BIN").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("kiln"));
        let mut child = Command::new(&kiln)
            .arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .arg("--timings")
            .arg(&timings)
            .arg("--boot-timer")
            .args(&self.args)
            .env("KILN_START_NS", util::time::monotonic_ns().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err(format!("starting {}", kiln.display())))?;
        let serial = SerialLog::new();
        let out = child.stdout.take().map(|o| serial.collect(o));
        let log = SerialLog::new();
        let err = child.stderr.take().map(|e| log.collect(e));
        let stdin = child.stdin.take();
        Ok(RunningVm {
            serial,
            log,
            readers: out.into_iter().chain(err).collect(),
            backend: Backend::Child {
                child,
                stdin,
                timings,
                _dir: dir,
            },
        })
    }

    /// Runs the VM on a thread of this process (no child process; serial through pipes).
    pub fn start_in_process(&self) -> HResult<RunningVm> {
        let (out_r, out_w) = pipe().map_err(io_err("creating the serial pipe"))?;
        let (in_r, in_w) = pipe().map_err(io_err("creating the serial pipe"))?;
        let io = SerialIo {
            out: Box::new(out_w),
            input: Some(Box::new(in_r)),
            escape: false,
        };
        let vm = Vm::new(&self.cfg, io, RunOptions::default())?;
        let stop = vm.stop_handle();
        let times = vm.timestamps();
        let thread = std::thread::Builder::new()
            .name("kiln-vm".into())
            .spawn(move || vm.run())
            .map_err(io_err("spawning the VM thread"))?;
        let serial = SerialLog::new();
        let reader = serial.collect(out_r);
        let log = SerialLog::new();
        // No separate log stream in process: it is closed from the start.
        util::sync::lock(&log.0 .0).closed = true;
        Ok(RunningVm {
            serial,
            log,
            readers: vec![reader],
            backend: Backend::InProcess {
                thread: Some(thread),
                stop,
                input: Some(in_w),
                times,
            },
        })
    }
}

/// A TAP interface name unique to this process and call (at most 15 characters), for
/// tests that create network devices in parallel: `<prefix><pid><n>`.
pub fn unique_tap_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let prefix: String = prefix
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(4)
        .collect();
    let mut name = format!("{prefix}{}x{n}", std::process::id());
    name.truncate(15);
    name
}

fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that we immediately take ownership of.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// A fresh private directory (unique `mkdtemp` name) for one spawned VM's files,
/// removed on drop.
fn temp_dir() -> std::io::Result<TempDir> {
    Ok(TempDir::new_with_prefix(
        std::env::temp_dir().join("kiln-harness-"),
    )?)
}

/// Lines read from a stream, shared with a reader thread.
#[derive(Clone)]
struct SerialLog(Arc<(Mutex<LogState>, Condvar)>);

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    partial: String,
    closed: bool,
}

impl SerialLog {
    fn new() -> Self {
        Self(Arc::new((Mutex::new(LogState::default()), Condvar::new())))
    }

    fn collect(&self, r: impl Read + Send + 'static) -> JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf);
                        let (state, cv) = &*log.0;
                        let mut s = util::sync::lock(state);
                        match text.strip_suffix('\n') {
                            Some(line) => {
                                let mut full = std::mem::take(&mut s.partial);
                                full.push_str(line.trim_end_matches('\r'));
                                s.lines.push(full);
                            }
                            None => s.partial.push_str(&text),
                        }
                        cv.notify_all();
                    }
                }
            }
            let (state, cv) = &*log.0;
            let mut s = util::sync::lock(state);
            if !s.partial.is_empty() {
                let p = std::mem::take(&mut s.partial);
                s.lines.push(p);
            }
            s.closed = true;
            cv.notify_all();
        })
    }

    /// Waits until the writer side has closed, or `deadline`.
    fn wait_closed(&self, deadline: Instant) {
        let (state, cv) = &*self.0;
        let mut s = util::sync::lock(state);
        while !s.closed {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            s = match cv.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    fn lines(&self) -> Vec<String> {
        util::sync::lock(&self.0 .0).lines.clone()
    }

    fn tail(&self, n: usize) -> String {
        let s = util::sync::lock(&self.0 .0);
        let start = s.lines.len().saturating_sub(n);
        let mut t = s.lines[start..].join("\n");
        if !s.partial.is_empty() {
            t.push('\n');
            t.push_str(&s.partial);
        }
        t
    }

    /// Waits for a line matching `re` after line index `from`; returns (index, line) or
    /// None on timeout / close.
    fn wait(&self, re: &Regex, from: usize, deadline: Instant) -> (Option<(usize, String)>, bool) {
        let (state, cv) = &*self.0;
        let mut s = util::sync::lock(state);
        loop {
            if let Some((i, l)) = s
                .lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| re.is_match(l))
            {
                return (Some((i, l.clone())), s.closed);
            }
            let now = Instant::now();
            if s.closed || now >= deadline {
                return (None, s.closed);
            }
            s = match cv.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

enum Backend {
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

/// A VM started by a [`VmBuilder`]. Dropping it kills / stops the VM.
pub struct RunningVm {
    serial: SerialLog,
    log: SerialLog,
    readers: Vec<JoinHandle<()>>,
    backend: Backend,
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
                log: {
                    // Kiln's last words go to stderr just before exit: let them arrive.
                    self.log
                        .wait_closed(Instant::now() + Duration::from_secs(2));
                    self.log.tail(20)
                },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_are_unique_and_short() {
        let a = unique_tap_name("kiln-test");
        let b = unique_tap_name("kiln-test");
        assert_ne!(a, b);
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert!(a.starts_with("kiln"));
        assert!(unique_tap_name("ü").len() <= 15);
    }
}
