//! Waiting for a child's API socket to accept connections, timed from the parent.
//!
//! An inotify watch on the socket's directory, made before the child is spawned, wakes
//! the bench when the child `bind`s the socket (the file appears), so waiting costs no
//! CPU that the child could use; between the `bind` and the `listen` the bench retries
//! `connect` every [`RETRY`]. Every [`POLL`] it also checks, without reaping it, that
//! the child is still alive.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use util::time::monotonic_ns;

use super::ApiError;

/// How long to sleep between `connect` attempts once the socket file exists.
pub const RETRY: Duration = Duration::from_micros(10);
/// The longest wait for an inotify event before re-checking the child.
pub const POLL: Duration = Duration::from_millis(1);

/// An inotify watch for files created in one directory.
pub struct SocketWatch {
    fd: OwnedFd,
}

impl SocketWatch {
    /// Watches `dir` for created files.
    pub fn new(dir: &Path) -> io::Result<Self> {
        // SAFETY: inotify_init1 takes flags and returns a new fd or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut path = dir.as_os_str().as_bytes().to_vec();
        path.push(0);
        // SAFETY: `path` is NUL-terminated and outlives the call; `fd` is our inotify fd.
        let wd = unsafe {
            libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr().cast(), libc::IN_CREATE)
        };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SocketWatch { fd })
    }

    /// Connects to `sock` as soon as it accepts: the connection and when `connect`
    /// succeeded (`CLOCK_MONOTONIC` ns). Fails when the child `pid` exits first, at
    /// `deadline_ns`, or on an error other than "not there yet".
    pub fn connect(
        &self,
        sock: &Path,
        pid: libc::pid_t,
        deadline_ns: u64,
    ) -> Result<(UnixStream, u64), ApiError> {
        loop {
            match UnixStream::connect(sock) {
                Ok(s) => return Ok((s, monotonic_ns())),
                Err(e) if not_yet(&e) => {}
                Err(source) => {
                    return Err(ApiError::Io {
                        what: "connecting to the API socket",
                        source,
                    })
                }
            }
            if exited(pid) {
                return Err(ApiError::Exited);
            }
            if monotonic_ns() >= deadline_ns {
                return Err(ApiError::Timeout("waiting for the API socket"));
            }
            match sock.exists() {
                // Bound but not listening yet.
                true => std::thread::sleep(RETRY),
                false => self.wait(POLL),
            }
        }
    }

    /// Waits up to `timeout` for an event, then drains the queue.
    fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, and its count.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is writable for its length; the fd is non-blocking.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }
}

/// `connect` errors that mean "the server has not bound or is not listening yet".
fn not_yet(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

/// Whether child `pid` has exited, without reaping it (`waitid` with `WNOWAIT`).
pub fn exited(pid: libc::pid_t) -> bool {
    // SAFETY: siginfo_t is plain old data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT;
    // SAFETY: a valid out-pointer; WNOWAIT leaves the child for the caller to reap.
    let r = unsafe { libc::waitid(libc::P_PID, pid as libc::id_t, &mut info, flags) };
    // SAFETY: waitid filled `info` (or left it zeroed: si_pid 0, "still running").
    r == 0 && unsafe { info.si_pid() } != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::process::Command;
    use vmm_sys_util::tempdir::TempDir;

    fn dir() -> TempDir {
        TempDir::new_with_prefix(std::env::temp_dir().join("kiln-api-sock-")).unwrap()
    }

    #[test]
    fn connects_once_the_socket_listens() {
        let d = dir();
        let sock = d.as_path().join("s");
        let w = SocketWatch::new(d.as_path()).unwrap();
        let s2 = sock.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            let l = UnixListener::bind(&s2).unwrap();
            l.accept().unwrap()
        });
        let before = monotonic_ns();
        let me = std::process::id() as libc::pid_t;
        let (_s, at) = w.connect(&sock, me, before + 10_000_000_000).unwrap();
        assert!(at - before >= 20_000_000);
        t.join().unwrap();
    }

    #[test]
    fn an_exited_child_ends_the_wait() {
        let d = dir();
        let w = SocketWatch::new(d.as_path()).unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        let far = monotonic_ns() + 10_000_000_000;
        let e = w.connect(&d.as_path().join("s"), pid, far).unwrap_err();
        assert!(matches!(e, ApiError::Exited), "{e}");
        // Not reaped by the check: the caller still can.
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn the_deadline_ends_the_wait() {
        let d = dir();
        let w = SocketWatch::new(d.as_path()).unwrap();
        let mut child = Command::new("sleep").arg("10").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        assert!(!exited(pid));
        let soon = monotonic_ns() + 5_000_000;
        let e = w.connect(&d.as_path().join("s"), pid, soon).unwrap_err();
        assert!(matches!(e, ApiError::Timeout(_)), "{e}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
