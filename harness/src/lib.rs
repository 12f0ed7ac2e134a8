//! A test-harness API for booting guest kernels from Rust tests.
//!
//! [`VmBuilder`] configures a VM; [`VmBuilder::spawn`] starts it as a child `kiln`
//! process and [`VmBuilder::start_in_process`] runs it on a thread of the calling
//! process. Either way you get a [`RunningVm`]: read serial output as lines, wait for a
//! pattern with a timeout, write to the serial input, and wait for the exit.
//! Nothing is global: every VM has its own pipes, temp files and (for nets) the TAP
//! names you give it, so tests can run VMs in parallel.
//!
//! A spawned VM built with [`VmBuilder::api`] serves Firecracker's API on a socket in
//! its temp dir: [`RunningVm::pause`], [`RunningVm::resume`], [`RunningVm::snapshot`]
//! (a [`Snapshot`]: state and memory files) and [`RunningVm::api_call`];
//! [`Snapshot::restore`] gives a [`RestoreBuilder`] that starts a VM from a snapshot
//! (`kiln restore`) as another [`RunningVm`].
//!
//! With [`VmBuilder::vsock`] the VM has a virtio-vsock device whose host socket lives in
//! its temp dir: [`RunningVm::vsock_connect`] reaches a guest port,
//! [`RunningVm::vsock_listen`] takes guest connections to a host port.
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
//!
//! Snapshot and restore:
//!
//! ```no_run
//! # use std::{path::Path, time::Duration};
//! # use harness::VmBuilder;
//! let mut vm = VmBuilder::new("/path/to/vmlinux").api(true).spawn()?;
//! vm.wait_for("ready", Duration::from_secs(30))?;
//! let snap = vm.snapshot(Path::new("/tmp/snap"))?; // pauses, writes state + mem
//! vm.kill()?;
//! let mut clone = snap.restore().spawn()?; // resumed at once
//! clone.wait_for("after", Duration::from_secs(30))?;
//! # Ok::<(), harness::HarnessError>(())
//! ```

mod api_socket;
mod builder;
mod running;
mod serial_log;
mod snapshot;
mod vsock;

use std::time::Duration;

pub use api_socket::API_TIMEOUT;
pub use builder::{unique_tap_name, VmBuilder};
pub use running::{Outcome, RunningVm, Timings};
pub use snapshot::{RestoreBuilder, Snapshot, MEM_FILE, STATE_FILE};
pub use vsock::{listen_path as vsock_listen_path, VSOCK_TIMEOUT};

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
    /// An API request failed or was refused (a refusal names the request, the status
    /// and the VMM's `fault_message`).
    #[error("{what}: {source}")]
    Api {
        /// The operation.
        what: String,
        /// Why.
        #[source]
        source: api::client::ClientError,
    },
    /// Kiln exited before its API socket answered.
    #[error("{what}: kiln exited ({exit}) before its API socket answered; kiln said:\n{log}")]
    ApiGone {
        /// The operation.
        what: String,
        /// How it ended.
        exit: String,
        /// Kiln's last log lines.
        log: String,
    },
    /// Copying the base snapshot's memory file for a diff snapshot failed.
    #[error("{what}: {source}")]
    SnapshotMemory {
        /// The copy.
        what: String,
        /// Why.
        #[source]
        source: vmm::snapshot::memory::MemoryError,
    },
    /// The guest did not accept a vsock connection (`CONNECT port` got no `OK`): nothing
    /// listens on that port yet.
    #[error(
        "vsock CONNECT {port} refused (reply {reply:?}): the guest does not listen on port \
         {port} (yet); wait for it to say it listens"
    )]
    VsockRefused {
        /// The guest port.
        port: u32,
        /// What came back instead of `OK <port>` (empty: the connection was closed).
        reply: String,
    },
    /// The VM cannot do this as configured (no API socket, in process, no base for a
    /// diff snapshot, ...); the message says what to change.
    #[error("{0}")]
    Unsupported(String),
    /// Building the in-process VM failed.
    #[error("VM setup failed: {0}")]
    Vm(#[from] vmm::Error),
}

type HResult<T> = std::result::Result<T, HarnessError>;

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}
