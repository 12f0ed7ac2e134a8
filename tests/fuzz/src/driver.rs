//! A virtio driver working a device only through the virtio-mmio registers
//! (`BusDevice::read`/`write`), as the guest does (virtio 1.2 §4.2.3.1 initialization).

use devices::bus::BusDevice;
use devices::virtio::{MmioTransport, VirtioDevice};

use crate::ring::DriverRing;

/// Register offsets (virtio 1.2 §4.2.2, table "MMIO Device Register Layout").
pub mod reg {
    pub const MAGIC: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
}

/// Device status bits (§2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
}

/// `VIRTIO_F_VERSION_1`.
pub const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_RING_F_EVENT_IDX`.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// `MagicValue`.
pub const MAGIC: u32 = 0x7472_6976;

/// The driver side of one transport.
pub struct Driver<D: VirtioDevice> {
    /// The transport under test.
    pub t: MmioTransport<D>,
}

impl<D: VirtioDevice> Driver<D> {
    /// Drives `t`.
    pub fn new(t: MmioTransport<D>) -> Self {
        Self { t }
    }

    /// A 4-byte register read.
    pub fn read(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// A 4-byte register write.
    pub fn write(&mut self, offset: u64, v: u32) {
        self.t.write(offset, &v.to_le_bytes());
    }

    fn write64(&mut self, low: u64, v: u64) {
        self.write(low, v as u32);
        self.write(low + 4, (v >> 32) as u32);
    }

    /// The features the device offers.
    pub fn device_features(&mut self) -> u64 {
        self.write(reg::DEVICE_FEATURES_SEL, 0);
        let low = self.read(reg::DEVICE_FEATURES);
        self.write(reg::DEVICE_FEATURES_SEL, 1);
        u64::from(low) | (u64::from(self.read(reg::DEVICE_FEATURES)) << 32)
    }

    /// Resets the device and initializes it (§3.1.1) with `features` (whatever the
    /// device offers or not) and the queues in `rings`. Returns whether the device
    /// accepted DRIVER_OK.
    pub fn setup(&mut self, features: u64, rings: &[DriverRing]) -> bool {
        use status::*;
        self.write(reg::STATUS, 0);
        if self.read(reg::MAGIC) != MAGIC || self.read(reg::VERSION) != 2 {
            return false;
        }
        self.write(reg::STATUS, ACKNOWLEDGE);
        self.write(reg::STATUS, ACKNOWLEDGE | DRIVER);
        self.write(reg::DRIVER_FEATURES_SEL, 0);
        self.write(reg::DRIVER_FEATURES, features as u32);
        self.write(reg::DRIVER_FEATURES_SEL, 1);
        self.write(reg::DRIVER_FEATURES, (features >> 32) as u32);
        self.write(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        if self.read(reg::STATUS) & FEATURES_OK == 0 {
            return false;
        }
        for (i, r) in rings.iter().enumerate() {
            self.write(reg::QUEUE_SEL, i as u32);
            if self.read(reg::QUEUE_READY) != 0 {
                return false;
            }
            let _ = self.read(reg::QUEUE_NUM_MAX);
            self.write(reg::QUEUE_NUM, u32::from(r.size));
            self.write64(reg::QUEUE_DESC_LOW, r.desc);
            self.write64(reg::QUEUE_DRIVER_LOW, r.avail);
            self.write64(reg::QUEUE_DEVICE_LOW, r.used);
            self.write(reg::QUEUE_READY, 1);
        }
        self.write(reg::STATUS, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        self.read(reg::STATUS) & (DRIVER_OK | DEVICE_NEEDS_RESET) == DRIVER_OK
    }

    /// Writes `QueueNotify` and runs the notified queues on this thread.
    pub fn notify(&mut self, value: u32) -> usize {
        self.write(reg::QUEUE_NOTIFY, value);
        self.run()
    }

    /// One pass of every notified queue; then checks what must hold whatever the
    /// driver did: `InterruptStatus` has only the two defined bits.
    pub fn run(&mut self) -> usize {
        let n = self.t.run_queues();
        let isr = self.read(reg::INTERRUPT_STATUS);
        assert_eq!(isr & !3, 0, "InterruptStatus {isr:#x} has undefined bits");
        n
    }
}
