//! One bench VM: the test guest in `kiln.mode=vsock` through the harness. The host
//! connects to the guest's echo server (round trips, then the bulk echo), shuts down,
//! and takes the guest client's stream on `<uds>_<port>`.

use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harness::{HarnessError, VmBuilder};

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
    /// Starting the VM, waiting for it or connecting failed.
    #[error(transparent)]
    Harness(#[from] HarnessError),
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

/// Boots one VM and measures; `timeout` bounds every wait.
pub fn run_once(
    spec: &GuestSpec,
    s: &VsockSettings,
    timeout: Duration,
) -> Result<Measured, GuestRunError> {
    let mut b = VmBuilder::new(&spec.kernel)
        .kiln_binary(&spec.exe)
        .cmdline(cmdline(&spec.cmdline, s.bytes))
        .vsock(CID);
    if let Some(m) = &spec.memory {
        b = b.arg("--memory").arg(m.clone());
    }
    let mut vm = b.spawn()?;
    // Bound before the guest's client connects (after the echo phase).
    let listener = vm.vsock_listen(HOST_PORT)?;
    vm.wait_for(&format!("KILN-GUEST vsock listening {ECHO_PORT}"), timeout)?;
    let mut conn = vm.vsock_connect_timeout(ECHO_PORT, timeout)?;
    conn.set_read_timeout(Some(timeout))
        .map_err(io("setting a read timeout"))?;
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
    let out = vm.wait(timeout)?;
    if !out.serial.iter().any(|l| l == "KILN-CHECK vsock ok") {
        let tail = out.serial.iter().rev().take(12).rev().cloned();
        return Err(GuestRunError::GuestFailed(
            tail.collect::<Vec<_>>().join("\n"),
        ));
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
