//! Legacy PC devices: 16550 serial, i8042 controller and the boot-timer MMIO device.
