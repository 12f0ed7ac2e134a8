//! Kiln's emulated devices: the I/O buses a vCPU dispatches exits to, the legacy PC
//! devices (16550 serial, i8042), the boot timer and the virtio-mmio devices.

#![warn(missing_docs)]

pub mod boot_timer;
pub mod bus;
pub mod irq;
pub mod legacy;
pub mod metrics;
pub mod rate_limiter;
pub mod snapshot;
pub mod virtio;

pub use boot_timer::BootTimer;
pub use bus::{Bus, BusDevice, BusError};
pub use irq::{IrqLine, IrqTrigger};
