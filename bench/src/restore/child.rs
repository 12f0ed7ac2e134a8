//! One VMM child of `kiln bench --restore`: spawned with its serial console (stdout) on a
//! pipe, so the bench sees when the guest runs (it prints), then stopped with SIGTERM.

use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use util::time::monotonic_ns;

use crate::proc::{spawn_timed, wait_timed, Ended};

/// Why waiting for the guest failed.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The VMM closed its stdout (it exited) first.
    #[error("the VMM exited before the guest printed {0:?}")]
    Exited(char),
    /// The deadline passed.
    #[error("timed out waiting for the guest to print {0:?}")]
    Timeout(char),
    /// Reading the pipe failed.
    #[error("reading the guest's serial output: {0}")]
    Read(#[source] io::Error),
}

/// A running VMM child.
pub struct Vmm {
    child: Child,
    stdout: ChildStdout,
    /// `CLOCK_MONOTONIC` ns just before the spawn (the child's `KILN_START_NS`).
    pub start_ns: u64,
    /// How often each byte value was printed so far.
    counts: Box<[usize; 256]>,
}

impl Vmm {
    /// Spawns `cmd` with stdin closed, stdout on a pipe and stderr into `err`.
    pub fn spawn(mut cmd: Command, err: &Path) -> io::Result<Self> {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        match std::fs::File::create(err) {
            Ok(f) => cmd.stderr(f),
            Err(_) => cmd.stderr(Stdio::null()),
        };
        let (mut child, start_ns) = spawn_timed(&mut cmd)?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("no stdout pipe"));
        };
        Ok(Vmm {
            child,
            stdout,
            start_ns,
            counts: Box::new([0; 256]),
        })
    }

    /// The child's process ID.
    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    /// The child, e.g. to watch for its exit while connecting to its socket.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits until the guest has printed `byte` `count` times in all (counting what came
    /// before the call); returns when the last one arrived (`CLOCK_MONOTONIC` ns, the
    /// time the bench read it).
    pub fn wait_for(
        &mut self,
        byte: u8,
        count: usize,
        deadline_ns: u64,
    ) -> Result<u64, OutputError> {
        let mut chunk = [0u8; 512];
        loop {
            if self.counts[usize::from(byte)] >= count {
                return Ok(monotonic_ns());
            }
            let left_ms = deadline_ns
                .saturating_sub(monotonic_ns())
                .div_ceil(1_000_000);
            if left_ms == 0 {
                return Err(OutputError::Timeout(char::from(byte)));
            }
            let mut pfd = libc::pollfd {
                fd: self.stdout.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, and its count.
            let r = unsafe { libc::poll(&mut pfd, 1, left_ms.min(1000) as i32) };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(OutputError::Read(e)),
                }
            }
            if r == 0 {
                continue;
            }
            match self.stdout.read(&mut chunk) {
                Ok(0) => return Err(OutputError::Exited(char::from(byte))),
                Ok(n) => {
                    for &b in &chunk[..n] {
                        let c = &mut self.counts[usize::from(b)];
                        *c = c.saturating_add(1);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(OutputError::Read(e)),
            }
        }
    }

    /// Sends SIGTERM and waits up to `timeout` (then SIGKILL); returns when SIGTERM was
    /// sent (`CLOCK_MONOTONIC` ns) and how the child ended. The console pipe stays open
    /// until the child is reaped: closing it first would end a VMM that writes the
    /// console on EPIPE instead of on the signal (the guest prints a few bytes a
    /// second, far from filling the pipe within a run's timeout).
    pub fn terminate(self, timeout: Duration) -> io::Result<(u64, Ended)> {
        let term_ns = monotonic_ns();
        // SAFETY: kill takes a pid and a signal; the child is not reaped yet, so the pid
        // still names it.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        let Vmm {
            child,
            stdout,
            start_ns,
            ..
        } = self;
        let mut ended = wait_timed(child, timeout)?;
        drop(stdout);
        ended.start_ns = start_ns;
        Ok((term_ns, ended))
    }

    /// Kills the child at once and reaps it (after a failed step).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether a VMM stopped by [`Vmm::terminate`] ended as asked: Kiln exits with
/// 128 + SIGTERM after stopping the VM cleanly; a VMM without a handler dies of it.
pub fn stopped_by_sigterm(e: &Ended) -> bool {
    !e.timed_out && (e.code == Some(128 + libc::SIGTERM) || e.signal == Some(libc::SIGTERM))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    fn err_file() -> (vmm_sys_util::tempdir::TempDir, std::path::PathBuf) {
        let d = vmm_sys_util::tempdir::TempDir::new_with_prefix(
            std::env::temp_dir().join("kiln-restore-child-"),
        )
        .unwrap();
        let p = d.as_path().join("err");
        (d, p)
    }

    #[test]
    fn waits_for_the_nth_byte() {
        let (_d, err) = err_file();
        let mut v = Vmm::spawn(sh("printf R; sleep 0.05; printf ..; exec sleep 10"), &err).unwrap();
        let far = monotonic_ns() + 10_000_000_000;
        let r = v.wait_for(b'R', 1, far).unwrap();
        let dots = v.wait_for(b'.', 2, far).unwrap();
        assert!(dots >= r + 40_000_000, "{}", dots - r);
        let (term, e) = v.terminate(Duration::from_secs(10)).unwrap();
        assert!(term >= dots);
        assert!(stopped_by_sigterm(&e), "{e:?}");
    }

    #[test]
    fn an_exit_or_the_deadline_ends_the_wait() {
        let (_d, err) = err_file();
        let mut v = Vmm::spawn(sh("printf x"), &err).unwrap();
        let far = monotonic_ns() + 10_000_000_000;
        assert!(matches!(
            v.wait_for(b'R', 1, far),
            Err(OutputError::Exited('R'))
        ));
        let (_, e) = v.terminate(Duration::from_secs(10)).unwrap();
        assert_eq!(e.code, Some(0));
        assert!(!stopped_by_sigterm(&e));
        let mut v = Vmm::spawn(sh("exec sleep 10"), &err).unwrap();
        let soon = monotonic_ns() + 20_000_000;
        assert!(matches!(
            v.wait_for(b'R', 1, soon),
            Err(OutputError::Timeout('R'))
        ));
        v.kill();
    }

    #[test]
    fn a_vmm_that_ignores_sigterm_is_killed() {
        let (_d, err) = err_file();
        let mut v = Vmm::spawn(sh("trap '' TERM; printf R; exec sleep 10"), &err).unwrap();
        v.wait_for(b'R', 1, monotonic_ns() + 10_000_000_000)
            .unwrap();
        let (_, e) = v.terminate(Duration::from_millis(100)).unwrap();
        assert!(e.timed_out && !stopped_by_sigterm(&e), "{e:?}");
    }
}
