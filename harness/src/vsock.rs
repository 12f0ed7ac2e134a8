//! A VM's virtio-vsock device from the host side (Firecracker's hybrid Unix sockets):
//! [`RunningVm::vsock_connect`] reaches a guest port through `CONNECT <port>` / `OK
//! <host port>` on the device's socket, [`RunningVm::vsock_listen`] binds `<uds>_<port>`
//! so that guest connections to host (CID 2) port `port` arrive there.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::tempdir::TempDir;

use crate::running::RunningVm;
use crate::{io_err, HResult, HarnessError};

/// How long [`RunningVm::vsock_connect`] waits for the socket to appear and for the
/// guest's answer (the guest runs in the host's emulator on PVM hosts).
pub const VSOCK_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest `OK <port>\n` line we accept.
const MAX_REPLY: usize = 64;
/// How often to retry while Kiln has not bound the socket yet.
const CONNECT_RETRY: Duration = Duration::from_millis(5);

/// A VM's vsock socket, and the temp dir holding it for an in-process VM.
pub(crate) struct VsockSocket {
    pub(crate) uds: PathBuf,
    pub(crate) _dir: Option<TempDir>,
}

/// `<uds>_<port>`: where Kiln forwards a guest connection to host port `port`.
pub fn listen_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = uds.as_os_str().to_os_string();
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// The host port of an `OK <port>\n` reply; `None` for anything else.
fn parse_ok(reply: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(reply).ok()?.strip_suffix('\n')?;
    line.strip_prefix("OK ")?.parse().ok()
}

/// Reads one line byte by byte (so no byte after it is consumed), at most
/// [`MAX_REPLY`] bytes; stops early at end of stream.
fn read_reply(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < MAX_REPLY && line.last() != Some(&b'\n') {
        match s.read(&mut b)? {
            0 => break,
            _ => line.push(b[0]),
        }
    }
    Ok(line)
}

/// Connects to `uds`, retrying until `deadline` while it is not bound or not listening.
fn connect_uds(uds: &Path, deadline: Instant) -> std::io::Result<UnixStream> {
    loop {
        match UnixStream::connect(uds) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(CONNECT_RETRY)
            }
            Err(e) => return Err(e),
        }
    }
}

/// `CONNECT port` on the hybrid socket `uds`; the stream after the `OK` line (no read
/// timeout left set), or [`HarnessError::VsockRefused`] when the guest does not accept.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> HResult<UnixStream> {
    let what = format!("vsock CONNECT {port} on {}", uds.display());
    let mut s = connect_uds(uds, Instant::now() + timeout).map_err(io_err(&what))?;
    s.set_read_timeout(Some(timeout)).map_err(io_err(&what))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_err(&what))?;
    let reply = match read_reply(&mut s) {
        Ok(r) => r,
        // Kiln closed the connection with the guest's RST while we wrote.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Vec::new(),
        Err(e) => return Err(io_err(what)(e)),
    };
    if parse_ok(&reply).is_none() {
        return Err(HarnessError::VsockRefused {
            port,
            reply: String::from_utf8_lossy(&reply).into_owned(),
        });
    }
    s.set_read_timeout(None).map_err(io_err(what))?;
    Ok(s)
}

impl RunningVm {
    /// The vsock device's host socket, when the VM has one ([`crate::VmBuilder::vsock`]).
    pub fn vsock_path(&self) -> Option<&Path> {
        self.vsock.as_ref().map(|v| v.uds.as_path())
    }

    fn vsock_uds(&self) -> HResult<&Path> {
        self.vsock_path().ok_or_else(|| {
            HarnessError::Unsupported(
                "this VM has no vsock device: build it with VmBuilder::vsock(cid)".into(),
            )
        })
    }

    /// Connects to guest port `port` (`CONNECT port`, `OK ...`), waiting up to
    /// [`VSOCK_TIMEOUT`] for Kiln's socket and the guest's answer. A guest that does
    /// not listen on `port` (yet) refuses: [`HarnessError::VsockRefused`]; wait for the
    /// guest to say it listens first.
    pub fn vsock_connect(&self, port: u32) -> HResult<UnixStream> {
        self.vsock_connect_timeout(port, VSOCK_TIMEOUT)
    }

    /// [`RunningVm::vsock_connect`] with another timeout.
    pub fn vsock_connect_timeout(&self, port: u32, timeout: Duration) -> HResult<UnixStream> {
        connect(self.vsock_uds()?, port, timeout)
    }

    /// Listens for guest connections to host port `port` (binds `<uds>_<port>`, in the
    /// VM's temp dir). Call it before the guest connects: Kiln refuses a guest
    /// connection (RST) when nothing listens on that path yet.
    pub fn vsock_listen(&self, port: u32) -> HResult<UnixListener> {
        let path = listen_path(self.vsock_uds()?, port);
        UnixListener::bind(&path).map_err(io_err(format!("binding {}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> TempDir {
        TempDir::new_with_prefix(std::env::temp_dir().join("kiln-harness-vsock-")).unwrap()
    }

    /// A stand-in for Kiln's socket: accepts one connection, checks the CONNECT line,
    /// answers `reply` and then echoes one message.
    fn fake_kiln(uds: &Path, reply: &'static [u8]) -> std::thread::JoinHandle<String> {
        let l = UnixListener::bind(uds).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let line = read_reply(&mut s).unwrap();
            if reply.is_empty() {
                return String::from_utf8(line).unwrap(); // closes: a refusal
            }
            s.write_all(reply).unwrap();
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).is_ok() {
                s.write_all(&buf).unwrap();
            }
            String::from_utf8(line).unwrap()
        })
    }

    #[test]
    fn listen_path_appends_the_port() {
        assert_eq!(
            listen_path(Path::new("/t/v.sock"), 7000),
            Path::new("/t/v.sock_7000")
        );
    }

    #[test]
    fn only_an_ok_line_with_a_port_is_accepted() {
        assert_eq!(parse_ok(b"OK 1073741824\n"), Some(1_073_741_824));
        assert_eq!(parse_ok(b"OK 5"), None);
        assert_eq!(parse_ok(b"OK x\n"), None);
        assert_eq!(parse_ok(b""), None);
        assert_eq!(parse_ok(b"ERR\n"), None);
    }

    #[test]
    fn connect_sends_connect_and_keeps_the_bytes_after_ok() {
        let d = dir();
        let uds = d.as_path().join("v.sock");
        let server = fake_kiln(&uds, b"OK 77\n");
        let mut s = connect(&uds, 1234, Duration::from_secs(10)).unwrap();
        s.write_all(b"ping").unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"ping");
        assert_eq!(server.join().unwrap(), "CONNECT 1234\n");
    }

    #[test]
    fn a_closed_connection_is_a_refusal_naming_the_port() {
        let d = dir();
        let uds = d.as_path().join("v.sock");
        let server = fake_kiln(&uds, b"");
        let e = connect(&uds, 99, Duration::from_secs(10)).unwrap_err();
        assert!(
            matches!(&e, HarnessError::VsockRefused { port: 99, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("99"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn a_socket_that_never_appears_times_out() {
        let d = dir();
        let t = Instant::now();
        let e = connect(&d.as_path().join("none"), 1, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, HarnessError::Io { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
