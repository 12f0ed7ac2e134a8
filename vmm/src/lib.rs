//! Kiln's VMM: configuration, KVM VM and vCPUs, devices on an event loop, and the
//! pieces the `kiln` binary and test harnesses are built from.

#![warn(missing_docs)]

pub mod bench;
pub mod config;
pub mod device_manager;
pub mod error;
pub mod event_loop;
pub mod exit;
pub mod host;
pub mod log_limit;
pub mod memstats;
pub mod timings;
pub mod vcpu;
pub mod virtio;
pub mod vm;

pub use config::VmConfig;
pub use error::{Error, Result};
pub use exit::{GuestFault, VmExit};
pub use vm::{RunOptions, StopHandle, Vm};
pub mod harness;

/// Locks a mutex, carrying on through poisoning.
pub(crate) use devices::bus::lock as devices_lock;
pub(crate) use devices::legacy::boot_timer as devices_time;
