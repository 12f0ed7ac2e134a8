//! Kiln's VMM: configuration, the KVM VM and its vCPUs, device wiring and the event
//! loop. The `kiln` binary, the test harness (`kiln-harness`) and `kiln bench`
//! (`kiln-bench`) are built on it.

#![warn(missing_docs)]

pub mod config;
pub mod confine;
pub mod device_manager;
pub mod error;
pub mod event_loop;
pub mod exit;
pub mod handle;
pub mod host;
pub mod log_limit;
pub mod memstats;
pub mod prepare;
pub mod seccomp;
pub mod snapshot;
pub mod timings;
pub mod vcpu;
pub mod vcpu_control;
pub mod vcpu_thread;
pub mod virtio;
pub mod vm;

pub use config::VmConfig;
pub use error::{Error, Result};
pub use exit::{GuestFault, VmExit};
pub use handle::VmHandle;
pub use prepare::Prepared;
pub use vm::{RunOptions, StopHandle, Vm};
