use super::*;
use crate::virtio::test_utils::*;
use crate::virtio::{INT_USED_RING, TYPE_BLOCK};
use std::sync::Mutex;

const SIZES: [u16; 2] = [16, 8];

#[derive(Default)]
struct Log {
    acked: Option<u64>,
    activated: usize,
    resets: usize,
}

struct Dummy(Arc<Mutex<Log>>);

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &SIZES
    }
    fn features(&self) -> u64 {
        features::VIRTIO_F_VERSION_1 | 1 << 3
    }
    fn ack_features(&mut self, f: u64) {
        self.0.lock().unwrap().acked = Some(f);
    }
    fn config_space(&self) -> &[u8] {
        &[1, 2, 3, 4, 5, 6, 7, 8]
    }
    fn activate(&mut self, _m: Mem, q: Vec<Queue>, i: Arc<Interrupt>) -> Result<(), Error> {
        assert_eq!(q.len(), 2);
        i.signal_used();
        self.0.lock().unwrap().activated += 1;
        Ok(())
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
    }
    fn process_queue(&mut self, _index: usize) -> bool {
        false
    }
}

fn transport() -> (MmioTransport<Dummy>, Arc<Mutex<Log>>, Arc<CountingIrq>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let irq = Arc::new(CountingIrq::default());
    let t = MmioTransport::new(Dummy(log.clone()), mem(), irq.clone()).unwrap();
    (t, log, irq)
}

fn r(t: &mut MmioTransport<Dummy>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn w(t: &mut MmioTransport<Dummy>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn negotiate(t: &mut MmioTransport<Dummy>) {
    w(t, reg::STATUS, status::ACKNOWLEDGE);
    w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(t, reg::DRIVER_FEATURES, 1);
    w(
        t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(r(t, reg::STATUS) & status::FEATURES_OK, 0);
}

/// Sets queue `i` (size `n`) at `base` with standard split-ring layout.
fn queue(t: &mut MmioTransport<Dummy>, i: u32, n: u32, base: u64) {
    w(t, reg::QUEUE_SEL, i);
    w(t, reg::QUEUE_NUM, n);
    w(t, reg::QUEUE_DESC_LOW, base as u32);
    w(t, reg::QUEUE_DESC_HIGH, (base >> 32) as u32);
    w(t, reg::QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    w(t, reg::QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    w(t, reg::QUEUE_READY, 1);
}

const DRIVER_OK_ALL: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

#[test]
fn identity_registers() {
    let (mut t, _, _) = transport();
    assert_eq!(r(&mut t, reg::MAGIC), 0x7472_6976);
    assert_eq!(r(&mut t, reg::VERSION), 2);
    assert_eq!(r(&mut t, reg::DEVICE_ID), TYPE_BLOCK);
    assert_eq!(r(&mut t, reg::VENDOR_ID).to_le_bytes(), *b"KILN");
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1 << 3);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
    w(&mut t, reg::DEVICE_FEATURES_SEL, 7);
    assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
    w(&mut t, reg::QUEUE_SEL, 1);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 8);
    w(&mut t, reg::QUEUE_SEL, 5);
    assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
    assert_eq!(r(&mut t, reg::CONFIG_GENERATION), 0);
}

#[test]
fn bad_accesses_are_ignored() {
    let (mut t, _, _) = transport();
    let mut b2 = [0xffu8; 2];
    t.read(0, &mut b2);
    assert_eq!(b2, [0, 0]);
    let mut b8 = [0xffu8; 8];
    t.read(2, &mut b8[..4]);
    assert_eq!(&b8[..4], &[0; 4]);
    t.read(0x1000, &mut b8);
    t.read(u64::MAX, &mut b8);
    t.write(reg::STATUS, &[1]);
    t.write(reg::STATUS + 1, &[1, 0, 0, 0]);
    t.write(u64::MAX, &[1, 0, 0, 0]);
    t.write(0x1000, &[1]);
    w(&mut t, reg::MAGIC, 5);
    w(&mut t, 0x0e0, 5);
    assert_eq!(r(&mut t, reg::STATUS), 0);
    assert_eq!(r(&mut t, 0x0e0), 0);
    // Config space: any width.
    let mut b = [0u8; 3];
    t.read(CONFIG_OFFSET + 2, &mut b);
    assert_eq!(b, [3, 4, 5]);
    t.read(CONFIG_OFFSET + 7, &mut b);
    assert_eq!(b, [8, 0, 0]);
    // Config writes are ignored: no Kiln device has a driver-writable field.
    t.write(CONFIG_OFFSET + 1, &[9]);
    t.read(CONFIG_OFFSET, &mut b);
    assert_eq!(b, [1, 2, 3]);
}

#[test]
fn status_order_enforced() {
    let (mut t, log, _) = transport();
    w(&mut t, reg::STATUS, status::DRIVER);
    assert_eq!(r(&mut t, reg::STATUS), 0);
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER_OK);
    assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE);
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    // DRIVER_OK before FEATURES_OK is refused.
    w(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    );
    assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
    // FEATURES_OK without VERSION_1.
    w(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    // With a feature not offered.
    w(&mut t, reg::DRIVER_FEATURES_SEL, 1);
    w(&mut t, reg::DRIVER_FEATURES, 1);
    w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
    w(&mut t, reg::DRIVER_FEATURES, 1 << 4);
    w(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    assert_eq!(log.lock().unwrap().acked, None);
    w(&mut t, reg::DRIVER_FEATURES, 1 << 3);
    w(
        &mut t,
        reg::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    assert_ne!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    assert_eq!(log.lock().unwrap().acked, Some(1 << 32 | 1 << 3));
    // Features are frozen now.
    w(&mut t, reg::DRIVER_FEATURES, 0);
    assert_eq!(t.driver_features, 1 << 32 | 1 << 3);
    // Clearing bits without reset is ignored; FAILED is accepted.
    w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
    assert_ne!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
    let s = r(&mut t, reg::STATUS);
    w(&mut t, reg::STATUS, s | status::FAILED);
    assert_ne!(r(&mut t, reg::STATUS) & status::FAILED, 0);
    w(&mut t, reg::STATUS, 0);
    assert_eq!(r(&mut t, reg::STATUS), 0);
    assert_eq!(log.lock().unwrap().resets, 1);
}

#[test]
fn queue_validation() {
    let (mut t, _, _) = transport();
    // Queue registers before FEATURES_OK are ignored.
    w(&mut t, reg::QUEUE_NUM, 16);
    w(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    negotiate(&mut t);
    for bad in [0u32, 3, 32, 0x10000] {
        queue(&mut t, 0, bad, 0x10000);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0, "size {bad}");
    }
    queue(&mut t, 0, 16, 0x10008); // misaligned descriptor table
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    queue(&mut t, 0, 16, 0xfff_f000); // outside the 16 MiB of memory
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    queue(&mut t, 0, 16, 0x1_0000_0000);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    queue(&mut t, 0, 4, 0x10000);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    // Reconfiguring a ready queue is ignored; QueueReady = 0 disables it.
    w(&mut t, reg::QUEUE_NUM, 8);
    assert_eq!(t.regs[0].num, 4);
    w(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    queue(&mut t, 5, 4, 0x10000); // nonexistent queue
}

#[test]
fn activation_and_reset() {
    let (mut t, log, irq) = transport();
    negotiate(&mut t);
    queue(&mut t, 0, 16, 0x10000);
    // Queue 1 not ready: DRIVER_OK fails with DEVICE_NEEDS_RESET.
    w(&mut t, reg::STATUS, DRIVER_OK_ALL);
    assert!(!t.is_activated());
    assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
    w(&mut t, reg::STATUS, 0);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);

    negotiate(&mut t);
    queue(&mut t, 0, 16, 0x10000);
    queue(&mut t, 1, 8, 0x20000);
    w(&mut t, reg::STATUS, DRIVER_OK_ALL);
    assert!(t.is_activated());
    assert_eq!(r(&mut t, reg::STATUS), DRIVER_OK_ALL);
    assert_eq!(log.lock().unwrap().activated, 1);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_USED_RING);
    assert!(irq.count() >= 2);
    w(&mut t, reg::INTERRUPT_ACK, INT_USED_RING);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
    // Queue registers are frozen after DRIVER_OK.
    w(&mut t, reg::QUEUE_SEL, 0);
    w(&mut t, reg::QUEUE_READY, 0);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    // Activation kicked every queue and the event loop.
    assert_eq!(t.queue_evts()[1].read().unwrap(), 1);
    assert_eq!(t.activate_evt().read().unwrap(), 1);

    w(&mut t, reg::STATUS, 0);
    assert!(!t.is_activated());
    assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    assert_eq!(log.lock().unwrap().resets, 2);
    assert_eq!(t.activate_evt().read().unwrap(), 1);
}

#[test]
fn notify_and_ioevents() {
    let (mut t, _, _) = transport();
    w(&mut t, reg::QUEUE_NOTIFY, 1);
    w(&mut t, reg::QUEUE_NOTIFY, 1);
    w(&mut t, reg::QUEUE_NOTIFY, 9);
    assert_eq!(t.queue_evts()[1].read().unwrap(), 2);
    assert!(t.queue_evts()[0].read().is_err());
    let ev = t.ioevents(0xd000_0000);
    assert_eq!(ev.len(), 2);
    assert_eq!((ev[1].0, ev[1].1), (0xd000_0050, 1));
    t.notify_config_change();
    assert_eq!(r(&mut t, reg::CONFIG_GENERATION), 1);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_CONFIG);
}
