//! What each Kiln thread gives up before the guest can reach it: every capability (when
//! Kiln was started with some, e.g. as root) and every system call outside its
//! seccomp allowlist. `no_new_privs` is set for the whole process.

use crate::seccomp::{Filters, SeccompError, SeccompLevel, ThreadKind};

/// Errors from confining a thread.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// Setting `no_new_privs` failed.
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
    /// Dropping capabilities failed.
    #[error("dropping capabilities: {0}")]
    Capabilities(#[source] std::io::Error),
    /// The seccomp filter failed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
}

/// How a VM's threads confine themselves.
#[derive(Debug, Default)]
pub struct Confinement {
    filters: Filters,
    drop_caps: bool,
}

impl Confinement {
    /// Compiles the filters for `seccomp`; `drop_caps` drops every capability in each
    /// thread as it confines itself.
    pub fn new(seccomp: SeccompLevel, drop_caps: bool) -> Result<Self, ConfineError> {
        Ok(Self {
            filters: Filters::new(seccomp)?,
            drop_caps,
        })
    }

    /// Confines the calling thread as a `kind` thread: capabilities, then the filter.
    pub fn enter(&self, kind: ThreadKind) -> Result<(), ConfineError> {
        if self.drop_caps {
            drop_capabilities()?;
        }
        Ok(self.filters.install(kind)?)
    }
}

/// Sets `no_new_privs` for the calling thread and the threads it creates afterwards:
/// no exec can gain privileges (set-uid bits, file capabilities).
pub fn set_no_new_privs() -> Result<(), ConfineError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(ConfineError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `_LINUX_CAPABILITY_VERSION_3` (linux/capability.h; libc has the call but no types).
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops every capability of the calling thread: the ambient set, then effective,
/// permitted and inheritable. The bounding set is left alone: it only limits what an
/// `execve` could gain, and `no_new_privs` plus the filters (no `execve` at all) already
/// close that door; shrinking it costs one call per capability at every start.
fn drop_capabilities() -> Result<(), ConfineError> {
    let err = ConfineError::Capabilities;
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset reads one header and two data structs of the v3 layout we pass.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap_eff() -> String {
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn dropping_leaves_no_effective_capability() {
        // On a thread of its own: capabilities are per thread.
        std::thread::spawn(|| {
            drop_capabilities().unwrap();
            assert_eq!(cap_eff(), "0000000000000000");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn confinement_without_filters_or_caps_is_a_no_op() {
        let c = Confinement::new(SeccompLevel::Off, false).unwrap();
        c.enter(ThreadKind::Main).unwrap();
    }
}
