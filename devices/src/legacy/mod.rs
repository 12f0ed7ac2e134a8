//! Legacy PC devices: 16550 serial, i8042 controller and the boot-timer MMIO device.

pub mod boot_timer;
pub mod i8042;
pub mod serial;

pub use boot_timer::{BootTimer, BootTimestamps};
pub use i8042::I8042;
pub use serial::{SerialDevice, SerialInput};
