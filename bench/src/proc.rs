//! Timing one child process from the parent's clock: spawn, wait with a timeout, and
//! collect its exit status and CPU time (`wait4` rusage, which includes descendants the
//! child waited for).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command};
use std::time::Duration;

use util::time::monotonic_ns;

/// How a timed child ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ended {
    /// `CLOCK_MONOTONIC` ns taken just before `spawn` (also passed as `KILN_START_NS`).
    pub start_ns: u64,
    /// `CLOCK_MONOTONIC` ns when the parent saw the exit (before reaping).
    pub end_ns: u64,
    /// Exit code, if it exited.
    pub code: Option<i32>,
    /// Terminating signal, if killed.
    pub signal: Option<i32>,
    /// User + system CPU time of the child and its waited-for descendants, µs.
    pub cpu_us: u64,
    /// Killed by us after the timeout.
    pub timed_out: bool,
}

/// Spawns `cmd` with `KILN_START_NS` set to the spawn time and waits up to `timeout`
/// (then kills it with SIGKILL).
pub fn run_timed(cmd: &mut Command, timeout: Duration) -> io::Result<Ended> {
    let (child, start_ns) = spawn_timed(cmd)?;
    let mut ended = wait_timed(child, timeout)?;
    ended.start_ns = start_ns;
    Ok(ended)
}

/// Spawns `cmd` with `KILN_START_NS` set to the spawn time, which it also returns, for a
/// caller that talks to the child before [`wait_timed`].
pub fn spawn_timed(cmd: &mut Command) -> io::Result<(Child, u64)> {
    let start_ns = monotonic_ns();
    cmd.env("KILN_START_NS", start_ns.to_string());
    Ok((cmd.spawn()?, start_ns))
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until the pidfd is readable (the child exited) or `timeout` passes.
fn poll_exit(fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let deadline = monotonic_ns().saturating_add(timeout.as_nanos() as u64);
    loop {
        let left_ms = deadline.saturating_sub(monotonic_ns()).div_ceil(1_000_000);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, and its count.
        let r = unsafe { libc::poll(&mut pfd, 1, left_ms.min(i32::MAX as u64) as i32) };
        match r {
            n if n > 0 => return Ok(true),
            0 if left_ms == 0 || monotonic_ns() >= deadline => return Ok(false),
            0 => continue,
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Reaps `pid` with `wait4`, returning the raw status and the rusage.
fn reap(pid: libc::pid_t) -> io::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid out-pointers for status and rusage; pid is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            return Ok((status, ru));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Waits up to `timeout` for `child` (then kills it with SIGKILL) and reaps it;
/// [`Ended::start_ns`] is left 0 for the caller to fill in.
pub fn wait_timed(mut child: Child, timeout: Duration) -> io::Result<Ended> {
    let pid = child.id() as libc::pid_t;
    let mut timed_out = false;
    let polled = match pidfd_open(pid) {
        Ok(fd) => {
            if !poll_exit(&fd, timeout)? {
                // Not reaped yet, so the pid still names our child.
                let _ = child.kill();
                timed_out = true;
            }
            true
        }
        // Kernels before 5.3: no pidfd; wait without a timeout.
        Err(e) => {
            log::debug!("pidfd_open: {e}; waiting without a timeout");
            false
        }
    };
    // With a pidfd the exit was seen when poll returned; without one, when wait4 returns.
    let seen = monotonic_ns();
    let (status, ru) = reap(pid)?;
    let end_ns = if polled && !timed_out {
        seen
    } else {
        monotonic_ns()
    };
    let tv_us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    let exited = libc::WIFEXITED(status);
    let signaled = libc::WIFSIGNALED(status);
    Ok(Ended {
        start_ns: 0,
        end_ns,
        code: exited.then(|| libc::WEXITSTATUS(status)),
        signal: signaled.then(|| libc::WTERMSIG(status)),
        cpu_us: tv_us(ru.ru_utime) + tv_us(ru.ru_stime),
        timed_out,
    })
}

impl Ended {
    /// Parent-clock exec→exit time in µs.
    pub fn wall_us(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    #[test]
    fn times_true_and_false() {
        let mut cmd = Command::new("true");
        let e = run_timed(&mut cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(e.code, Some(0));
        assert!(!e.timed_out);
        assert!(e.wall_us() > 0.0 && e.wall_us() < 10e6);
        let e = run_timed(&mut Command::new("false"), Duration::from_secs(10)).unwrap();
        assert_eq!(e.code, Some(1));
    }

    #[test]
    fn kills_after_timeout() {
        let mut cmd = Command::new("sleep");
        cmd.arg("10").stdout(Stdio::null());
        let e = run_timed(&mut cmd, Duration::from_millis(50)).unwrap();
        assert!(e.timed_out);
        assert_eq!(e.code, None);
        assert_eq!(e.signal, Some(libc::SIGKILL));
        assert!(e.wall_us() < 5e6);
    }

    #[test]
    fn passes_start_time() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "test -n \"$KILN_START_NS\""]);
        assert_eq!(
            run_timed(&mut cmd, Duration::from_secs(10)).unwrap().code,
            Some(0)
        );
    }
}
