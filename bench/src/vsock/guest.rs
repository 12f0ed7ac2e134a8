//! One bench VM: the test guest in `kiln.mode=vsock` as a child `kiln run`. The host
//! connects to the guest's echo server through Firecracker's `CONNECT`/`OK` protocol
//! (round trips, then the bulk echo), shuts down, and takes the guest client's stream on
//! `<uds>_<port>`. (The bench drives the child itself: depending on the test harness
//! would put its regex engine into the `kiln` binary, and its relocations into every
//! VMM's resident memory.)

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::workload::{drain, echo_bulk, ping_pong, WorkloadError};
use super::{Measured, VsockSettings};

/// The guest's echo-server port.
pub const ECHO_PORT: u32 = 1234;
/// The host port the guest's client connects to.
pub const HOST_PORT: u32 = 7000;
/// The guest's CID.
const CID: u64 = 3;

/// What to boot.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    /// The kiln binary.
    pub exe: PathBuf,
    /// The test guest.
    pub kernel: PathBuf,
    /// `--cmdline` (the mode's tokens are appended).
    pub cmdline: String,
    /// `--memory`.
    pub memory: Option<String>,
}

/// Why a VM run failed.
#[derive(Debug, thiserror::Error)]
pub enum GuestRunError {
    /// The VM did not get where the run needs it in time, or ended early.
    #[error("{0}; last serial lines:\n{1}")]
    Vm(String, String),
    /// A measurement failed.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// Waiting for the guest's connection failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The guest did not connect to the host port in time.
    #[error("the guest's client did not connect to host port {HOST_PORT} within {0:?}")]
    NoConnection(Duration),
    /// The guest did not end with `KILN-CHECK vsock ok`.
    #[error("the guest did not report `KILN-CHECK vsock ok`; last serial lines:\n{0}")]
    GuestFailed(String),
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> GuestRunError {
    move |source| GuestRunError::Io { what, source }
}

/// The kernel command line of a bench VM.
pub fn cmdline(base: &str, bytes: u64) -> String {
    format!(
        "{base} kiln.mode=vsock kiln.vsock_port={ECHO_PORT} kiln.vsock_connect={HOST_PORT} \
         kiln.vsock_bytes={bytes}"
    )
}

/// Waits up to `timeout` for a connection on `l`.
fn accept(l: &UnixListener, timeout: Duration) -> Result<UnixStream, GuestRunError> {
    let mut pfd = libc::pollfd {
        fd: l.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `pfd` is one valid pollfd for the listener's open fd, alive for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    match n {
        n if n < 0 => Err(io("waiting for the guest's connection")(
            std::io::Error::last_os_error(),
        )),
        0 => Err(GuestRunError::NoConnection(timeout)),
        _ => l
            .accept()
            .map(|(s, _)| s)
            .map_err(io("accepting the guest's connection")),
    }
}

/// A child `kiln run` with its serial output collected line by line.
struct Child2 {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Child2 {
    fn spawn(spec: &GuestSpec, s: &VsockSettings, uds: &Path) -> Result<Self, GuestRunError> {
        let mut cmd = Command::new(&spec.exe);
        cmd.args(["run", "--serial", "stdio", "--kernel"])
            .arg(&spec.kernel)
            .arg("--cmdline")
            .arg(cmdline(&spec.cmdline, s.bytes))
            .arg("--vsock")
            .arg(format!("cid={CID},uds={}", uds.display()));
        if let Some(m) = &spec.memory {
            cmd.args(["--memory", m]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io("starting kiln run"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let l = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    util::sync::lock(&l).push(line);
                }
            });
        }
        Ok(Self { child, lines })
    }

    fn has(&self, line: &str) -> bool {
        util::sync::lock(&self.lines).iter().any(|l| l == line)
    }

    fn tail(&self) -> String {
        let l = util::sync::lock(&self.lines);
        l.iter()
            .rev()
            .take(12)
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn fail(&self, what: String) -> GuestRunError {
        GuestRunError::Vm(what, self.tail())
    }

    /// Waits for `line` on the serial console.
    fn wait_for(&mut self, line: &str, timeout: Duration) -> Result<(), GuestRunError> {
        let deadline = Instant::now() + timeout;
        while !self.has(line) {
            if Instant::now() > deadline {
                return Err(self.fail(format!("no `{line}` within {timeout:?}")));
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(self.fail(format!("the VM ended ({st}) before `{line}`")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits for the VM to end by itself.
    fn wait(&mut self, timeout: Duration) -> Result<(), GuestRunError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                // Let the reader take the last lines.
                std::thread::sleep(Duration::from_millis(20));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(self.fail(format!("the VM did not end within {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Child2 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects to guest port `port` through the hybrid socket: `CONNECT`, then `OK`.
fn vsock_connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, GuestRunError> {
    let mut s = UnixStream::connect(uds).map_err(io("connecting to the vsock socket"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(io("setting a read timeout"))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io("writing CONNECT"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') && line.len() < 64 {
        match s.read(&mut byte) {
            Ok(1) => line.push(byte[0]),
            Ok(_) => break,
            Err(e) => return Err(io("reading the OK line")(e)),
        }
    }
    match line.starts_with(b"OK ") {
        true => Ok(s),
        false => Err(GuestRunError::Vm(
            format!("the guest refused vsock port {port}"),
            String::from_utf8_lossy(&line).into_owned(),
        )),
    }
}

/// Boots one VM and measures; `timeout` bounds every wait.
pub fn run_once(
    spec: &GuestSpec,
    s: &VsockSettings,
    timeout: Duration,
) -> Result<Measured, GuestRunError> {
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix(
        std::env::temp_dir().join("kiln-bench-vsock-"),
    )
    .map_err(|e| io("creating a temp dir")(std::io::Error::other(e.to_string())))?;
    let uds = dir.as_path().join("v.sock");
    // Bound before the guest's client connects (after the echo phase).
    let listener = UnixListener::bind(dir.as_path().join(format!("v.sock_{HOST_PORT}")))
        .map_err(io("binding the host port's socket"))?;
    let mut vm = Child2::spawn(spec, s, &uds)?;
    vm.wait_for(&format!("KILN-GUEST vsock listening {ECHO_PORT}"), timeout)?;
    let mut conn = vsock_connect(&uds, ECHO_PORT, timeout)?;
    let rtt = ping_pong(&mut conn, s.ping, s.rounds)?;
    let echo = echo_bulk(&mut conn, s.bytes, s.msg)?;
    conn.shutdown(std::net::Shutdown::Write)
        .map_err(io("shutting down the echo connection"))?;
    let start = Instant::now();
    let mut from_guest = accept(&listener, timeout)?;
    from_guest
        .set_read_timeout(Some(timeout.saturating_sub(start.elapsed())))
        .map_err(io("setting a read timeout"))?;
    let to_host = drain(&mut from_guest, s.bytes)?;
    vm.wait(timeout)?;
    if !vm.has("KILN-CHECK vsock ok") {
        return Err(GuestRunError::GuestFailed(vm.tail()));
    }
    Ok(Measured { rtt, echo, to_host })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cmdline_names_both_ports_and_the_byte_count() {
        let c = cmdline("console=ttyS0", 4096);
        assert!(c.starts_with("console=ttyS0 kiln.mode=vsock "), "{c}");
        for t in [
            "kiln.vsock_port=1234",
            "kiln.vsock_connect=7000",
            "kiln.vsock_bytes=4096",
        ] {
            assert!(c.split(' ').any(|w| w == t), "{t} missing: {c}");
        }
    }

    #[test]
    fn accept_times_out_without_a_connection() {
        let d = vmm_sys_util::tempdir::TempDir::new_with_prefix(
            std::env::temp_dir().join("kiln-bench-vsock-"),
        )
        .unwrap();
        let l = UnixListener::bind(d.as_path().join("l")).unwrap();
        let e = accept(&l, Duration::from_millis(20)).unwrap_err();
        assert!(matches!(e, GuestRunError::NoConnection(_)), "{e}");
        let _c = UnixStream::connect(d.as_path().join("l")).unwrap();
        assert!(accept(&l, Duration::from_secs(5)).is_ok());
    }
}
