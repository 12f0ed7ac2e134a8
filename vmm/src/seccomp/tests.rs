use super::*;

use std::io::Read;
use std::os::fd::FromRawFd;

/// Runs `body` in a forked child whose stderr is a pipe; returns (wait status, stderr).
fn in_child(body: impl FnOnce()) -> (libc::c_int, String) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two fds into the array we own.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: fork in a test; the child only makes async-signal-safe calls (dup2, the
    // seccomp install of a pre-built program, raw system calls) and then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: fds are ours; the child's stderr becomes the pipe.
        unsafe {
            libc::dup2(fds[1], 2);
            libc::close(fds[0]);
        }
        body();
        // SAFETY: leave the child without running the test harness's exit code.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: the parent owns fds[1] and closes it; fds[0] becomes a File.
    unsafe { libc::close(fds[1]) };
    let mut err = String::new();
    // SAFETY: fds[0] is an open pipe end owned by nobody else.
    let mut f = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let _ = f.read_to_string(&mut err);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    (status, err)
}

#[test]
fn every_kind_compiles_in_each_level() {
    for level in [SeccompLevel::On, SeccompLevel::Log] {
        for kind in [ThreadKind::Main, ThreadKind::Vcpu, ThreadKind::Device] {
            compile(kind, level).unwrap();
        }
    }
    let off = Filters::new(SeccompLevel::Off).unwrap();
    assert!(off.main.is_none() && off.vcpu.is_none() && off.device.is_none());
}

#[test]
fn forbidden_call_stops_with_one_line_naming_thread_and_call() {
    let filters = Filters::new(SeccompLevel::On).unwrap();
    let (status, err) = in_child(|| {
        // SAFETY: naming the child's thread; a NUL-terminated literal.
        unsafe { libc::prctl(libc::PR_SET_NAME, c"kiln-vcpu7".as_ptr()) };
        filters.install(ThreadKind::Vcpu).unwrap();
        // SAFETY: a raw socket() call, which no vCPU thread may make.
        unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) };
    });
    assert!(libc::WIFEXITED(status), "status {status:#x}");
    assert_eq!(libc::WEXITSTATUS(status), SECCOMP_EXIT_STATUS);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("thread kiln-vcpu7"), "{err}");
    assert!(
        err.contains(&format!("system call {}", libc::SYS_socket)),
        "{err}"
    );
}

#[test]
fn allowed_calls_pass() {
    let filters = Filters::new(SeccompLevel::On).unwrap();
    let (status, err) = in_child(|| {
        filters.install(ThreadKind::Device).unwrap();
        let buf = [0u8; 1];
        // SAFETY: pwrite64 of one byte to a bad fd: allowed by the device filter, EBADF.
        unsafe { libc::syscall(libc::SYS_pwrite64, -1, buf.as_ptr(), 1, 0) };
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{err}"
    );
}

#[test]
fn ioctl_arguments_are_checked() {
    let filters = Filters::new(SeccompLevel::On).unwrap();
    let (status, _) = in_child(|| {
        filters.install(ThreadKind::Vcpu).unwrap();
        // SAFETY: TCSETS on a bad fd: not a vCPU ioctl.
        unsafe { libc::syscall(libc::SYS_ioctl, -1, libc::TCSETS, 0) };
    });
    assert_eq!(libc::WEXITSTATUS(status), SECCOMP_EXIT_STATUS);
}

#[test]
fn log_level_lets_the_call_through() {
    let filters = Filters::new(SeccompLevel::Log).unwrap();
    let (status, err) = in_child(|| {
        filters.install(ThreadKind::Vcpu).unwrap();
        // SAFETY: getppid takes no arguments.
        unsafe { libc::syscall(libc::SYS_getppid) };
    });
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{err}"
    );
}

#[test]
fn levels_parse() {
    assert_eq!("on".parse(), Ok(SeccompLevel::On));
    assert_eq!("log".parse(), Ok(SeccompLevel::Log));
    assert_eq!("off".parse(), Ok(SeccompLevel::Off));
    assert!("strict"
        .parse::<SeccompLevel>()
        .unwrap_err()
        .contains("on, log or off"));
}
