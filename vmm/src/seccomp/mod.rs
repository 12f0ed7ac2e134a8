//! Kiln confines itself with seccomp: one filter per kind of thread (the main thread's
//! event loop, each vCPU, each device thread), built once with rust-vmm's seccompiler
//! and installed by each thread itself before the guest runs its first instruction.
//!
//! - `on` (the default of `kiln run`): a system call outside the thread's allowlist
//!   raises SIGSYS; Kiln's handler writes one line naming the thread and the call and
//!   ends the process with status 159 (128 + SIGSYS).
//! - `log`: such a call is allowed and the kernel logs it (audit log / `dmesg`), to find
//!   what a filter misses.
//! - `off`: no filter.
//!
//! Every filter sets `no_new_privs` first (seccompiler does so when it installs).

mod rules;

use std::fmt;
use std::str::FromStr;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Exit status of a process a filter stopped: 128 + SIGSYS.
pub const SECCOMP_EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// Errors from building or installing filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// A filter could not be compiled (a bug in the allowlists).
    #[error("building a seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// The kernel refused a filter.
    #[error("installing the seccomp filter of a {kind} thread: {source}; run with --seccomp off on a kernel without seccomp")]
    Install {
        /// The thread kind.
        kind: ThreadKind,
        /// Why.
        source: seccompiler::Error,
    },
    /// The SIGSYS handler could not be installed.
    #[error("installing the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
}

/// How strictly Kiln confines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompLevel {
    /// Filters that stop Kiln on a call outside a thread's allowlist.
    On,
    /// Filters that let such a call through and have the kernel log it.
    Log,
    /// No filters (library users' default: they own their threads).
    #[default]
    Off,
}

impl FromStr for SeccompLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(Self::On),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            _ => Err(format!("unknown seccomp level {s:?}: use on, log or off")),
        }
    }
}

/// The kinds of Kiln threads, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop (signals, serial input, exit sources), VM teardown.
    Main,
    /// A vCPU thread: `KVM_RUN` and the exits it dispatches to devices.
    Vcpu,
    /// A virtio device thread: queues and the backend (disk image, TAP).
    Device,
    /// The API server thread (Firecracker-compatible API): its socket, and the files a
    /// request names (a drive's new image, the metrics file).
    Api,
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Main => "main",
            Self::Vcpu => "vCPU",
            Self::Device => "device",
            Self::Api => "API",
        })
    }
}

/// The compiled filters of one VM (empty when the level is `off`).
#[derive(Debug, Default)]
pub struct Filters {
    level: SeccompLevel,
    main: Option<BpfProgram>,
    vcpu: Option<BpfProgram>,
    device: Option<BpfProgram>,
}

fn compile(kind: ThreadKind, level: SeccompLevel) -> Result<BpfProgram, SeccompError> {
    let mismatch = match level {
        SeccompLevel::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let filter = SeccompFilter::new(
        rules::rules(kind)?,
        mismatch,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

impl Filters {
    /// Compiles the filters for `level`; with `on`, also installs the SIGSYS handler.
    pub fn new(level: SeccompLevel) -> Result<Self, SeccompError> {
        if level == SeccompLevel::Off {
            return Ok(Self::default());
        }
        if level == SeccompLevel::On {
            install_sigsys_handler()?;
        }
        Ok(Self {
            level,
            main: Some(compile(ThreadKind::Main, level)?),
            vcpu: Some(compile(ThreadKind::Vcpu, level)?),
            device: Some(compile(ThreadKind::Device, level)?),
        })
    }

    /// Installs the filter of `kind` on the calling thread (nothing when off).
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        // Only API mode has an API thread: its filter is compiled when it is installed.
        let api = match (kind, self.level) {
            (ThreadKind::Api, SeccompLevel::On | SeccompLevel::Log) => {
                Some(compile(kind, self.level)?)
            }
            _ => None,
        };
        let prog = match kind {
            ThreadKind::Main => &self.main,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Device => &self.device,
            ThreadKind::Api => &api,
        };
        match prog {
            Some(p) => seccompiler::apply_filter(p)
                .map_err(|source| SeccompError::Install { kind, source }),
            None => Ok(()),
        }
    }
}

/// Writes `n` in decimal into `buf` from `at`; returns the new end.
fn put_num(buf: &mut [u8], mut at: usize, n: i64) -> usize {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        if at < buf.len() {
            buf[at] = d;
            at += 1;
        }
    }
    at
}

fn put(buf: &mut [u8], at: usize, s: &[u8]) -> usize {
    let n = s.len().min(buf.len() - at);
    buf[at..at + n].copy_from_slice(&s[..n]);
    at + n
}

/// The SIGSYS handler: one line on stderr, then exit. Async-signal-safe: a stack
/// buffer, `prctl(PR_GET_NAME)`, `write`, `_exit` (all in every allowlist).
extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for a SA_SIGINFO handler; for SIGSYS
    // from seccomp, si_syscall sits right after si_call_addr in the union (see
    // sigaction(2)), i.e. at byte offset 16 + 8 of the union on x86_64.
    let nr = unsafe {
        let base = info as *const u8;
        std::ptr::read_unaligned(base.add(24) as *const libc::c_int)
    };
    let mut name = [0u8; 17];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the 17-byte buffer we own.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    let name_len = name.iter().position(|&b| b == 0).unwrap_or(16);
    let mut buf = [0u8; 256];
    let mut at = put(&mut buf, 0, b"kiln: error: seccomp: thread ");
    at = put(&mut buf, at, &name[..name_len]);
    at = put(&mut buf, at, b" made system call ");
    at = put_num(&mut buf, at, i64::from(nr));
    at = put(
        &mut buf,
        at,
        b", which its filter does not allow; stopping (a Kiln bug: report it, or run with --seccomp log to find more)\n",
    );
    // SAFETY: write and _exit are async-signal-safe; buf[..at] is initialised.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), at);
        libc::_exit(SECCOMP_EXIT_STATUS);
    }
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    // SAFETY: a zeroed sigaction is valid; the handler only makes async-signal-safe
    // calls and touches no shared state.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigsys as *const () as usize;
        sa.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGSYS, &sa, std::ptr::null_mut()) != 0 {
            return Err(SeccompError::Handler(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
