use super::super::reg;
use super::*;
use crate::bus::BusDevice;
use crate::virtio::block::{Block, BlockConfig, VIRTIO_BLK_F_FLUSH};
use crate::virtio::test_utils::*;
use crate::virtio::{Error, Interrupt, INT_USED_RING, TYPE_BLOCK};
use std::io::Write as _;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::tempfile::TempFile;

const HDR: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;
const SECTORS: usize = 16;
const T_IN: u32 = virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
const DRIVER_OK_ALL: u32 =
    status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

type Vq = &'static MockSplitQueue<'static, GuestMemoryMmap<()>>;

/// A disk whose sector `i` is filled with byte `i`.
fn image(sectors: usize) -> TempFile {
    let f = TempFile::new().unwrap();
    let data: Vec<u8> = (0..sectors * 512).map(|i| (i / 512) as u8).collect();
    f.as_file().write_all(&data).unwrap();
    f
}

fn block(file: &TempFile) -> Block {
    Block::new(BlockConfig {
        path: file.as_path().to_path_buf(),
        ..Default::default()
    })
    .unwrap()
}

fn w<D: VirtioDevice>(t: &mut MmioTransport<D>, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r<D: VirtioDevice>(t: &mut MmioTransport<D>, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

/// The driver's side up to FEATURES_OK with `features`.
fn negotiate<D: VirtioDevice>(t: &mut MmioTransport<D>, features: u64) {
    w(t, reg::STATUS, status::ACKNOWLEDGE);
    w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    w(t, reg::DRIVER_FEATURES_SEL, 0);
    w(t, reg::DRIVER_FEATURES, features as u32);
    w(t, reg::DRIVER_FEATURES_SEL, 1);
    w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
    w(t, reg::STATUS, DRIVER_OK_ALL & !status::DRIVER_OK);
    assert_ne!(r(t, reg::STATUS) & status::FEATURES_OK, 0);
}

/// Queue 0's registers for `vq`, without `QueueReady`.
fn queue_regs<D: VirtioDevice>(t: &mut MmioTransport<D>, vq: Vq) {
    w(t, reg::QUEUE_SEL, 0);
    w(t, reg::QUEUE_NUM, 16);
    w(t, reg::QUEUE_DESC_LOW, vq.desc_table_addr().0 as u32);
    w(t, reg::QUEUE_DRIVER_LOW, vq.avail_addr().0 as u32);
    w(t, reg::QUEUE_DEVICE_LOW, vq.used_addr().0 as u32);
}

fn leak_vq(mem: &Mem) -> Vq {
    let leaked: &'static Mem = Box::leak(Box::new(mem.clone()));
    Box::leak(Box::new(MockSplitQueue::create(
        &**leaked,
        GuestAddress(0),
        16,
    )))
}

/// A disk behind a transport the driver brought to DRIVER_OK.
struct Rig {
    file: TempFile,
    mem: Mem,
    vq: Vq,
    t: MmioTransport<Block>,
}

fn rig() -> Rig {
    let file = image(SECTORS);
    let mem = mem();
    let vq = leak_vq(&mem);
    let mut t =
        MmioTransport::new(block(&file), mem.clone(), Arc::new(CountingIrq::default())).unwrap();
    negotiate(&mut t, features::VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH);
    queue_regs(&mut t, vq);
    w(&mut t, reg::QUEUE_READY, 1);
    w(&mut t, reg::STATUS, DRIVER_OK_ALL);
    assert!(t.is_activated());
    t.run_queues(); // the kick of activation: nothing queued yet
    Rig { file, mem, vq, t }
}

impl Rig {
    /// Reads `sector` with a chain at table index `4 * (n % 4)`; returns the used index
    /// after.
    fn read_sector(&mut self, n: u16, sector: u64) -> u16 {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&T_IN.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let chain = [(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)];
        add_chain(self.vq, 4 * (n % 4), &chain);
        w(&mut self.t, reg::QUEUE_NOTIFY, 0);
        self.t.run_queues();
        let st: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        assert_eq!(st, 0, "VIRTIO_BLK_S_OK");
        let data: u8 = self.mem.read_obj(GuestAddress(DATA + 511)).unwrap();
        assert_eq!(u64::from(data), sector);
        used_idx(self.vq)
    }
}

#[test]
fn restored_transport_continues_at_the_saved_ring_position() {
    let mut rig = rig();
    for n in 0..3 {
        assert_eq!(rig.read_sector(n, u64::from(n) + 1), n + 1);
    }
    let saved = rig.t.state().unwrap();
    assert!(saved.activated);
    assert_eq!(
        (saved.queues[0].next_avail, saved.queues[0].next_used),
        (3, 3)
    );
    assert_eq!(saved.status, DRIVER_OK_ALL);

    // The old device goes (its flock with it); a new one opens the same disk.
    let Rig { file, mem, vq, t } = rig;
    drop(t);
    let irq = Arc::new(CountingIrq::default());
    let t = MmioTransport::restore(block(&file), mem.clone(), irq.clone(), &saved).unwrap();
    let mut rig = Rig { file, mem, vq, t };
    assert!(rig.t.is_activated());
    assert_eq!(r(&mut rig.t, reg::STATUS), DRIVER_OK_ALL);
    assert_eq!(rig.t.state().unwrap(), saved);
    // Every queue was kicked once: the pass finds nothing new and returns nothing.
    assert_eq!(rig.t.run_queues(), 1);
    assert_eq!(used_idx(vq), 3);
    // The next request is taken from ring slot 3 and completes as used entry 3.
    assert_eq!(rig.read_sector(3, 9), 4);
    assert_eq!(used(vq, 3), (12, 513));
    assert_eq!(rig.read_sector(4, 10), 5);
    assert!(irq.count() >= 2);
}

#[test]
fn restore_raises_a_pending_interrupt_again() {
    let mut rig = rig();
    rig.read_sector(0, 1);
    assert_eq!(r(&mut rig.t, reg::INTERRUPT_STATUS), INT_USED_RING);
    let saved = rig.t.state().unwrap();
    assert_eq!(saved.interrupt_status, INT_USED_RING);
    drop(rig.t);
    let irq = Arc::new(CountingIrq::default());
    let mut t = MmioTransport::restore(block(&rig.file), rig.mem, irq.clone(), &saved).unwrap();
    assert_eq!(irq.count(), 1);
    assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), INT_USED_RING);
}

#[test]
fn save_state_keeps_the_device_locked() {
    let rig = rig();
    let (_, guard) = rig.t.save_state().unwrap();
    assert!(rig.t.device.try_lock().is_err());
    drop(guard);
    assert!(rig.t.device.try_lock().is_ok());
}

#[test]
fn a_device_in_setup_is_restored_in_setup() {
    let file = image(SECTORS);
    let mem = mem();
    let vq = leak_vq(&mem);
    let irq = Arc::new(CountingIrq::default());
    let mut t = MmioTransport::new(block(&file), mem.clone(), irq.clone()).unwrap();
    negotiate(&mut t, features::VIRTIO_F_VERSION_1);
    queue_regs(&mut t, vq);
    let saved = t.state().unwrap();
    assert!(!saved.activated);
    assert_eq!(saved.queues[0].regs.num, 16);
    drop(t);

    let mut t = MmioTransport::restore(block(&file), mem, irq.clone(), &saved).unwrap();
    assert!(!t.is_activated());
    assert_eq!(irq.count(), 0);
    assert_eq!(t.state().unwrap(), saved);
    // The driver carries on where it was: QueueReady, then DRIVER_OK.
    w(&mut t, reg::QUEUE_READY, 1);
    assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
    w(&mut t, reg::STATUS, DRIVER_OK_ALL);
    assert!(t.is_activated());
}

#[test]
fn a_different_disk_size_is_refused() {
    let rig = rig();
    let saved = rig.t.state().unwrap();
    let bigger = image(2 * SECTORS);
    let irq = Arc::new(CountingIrq::default());
    let res = MmioTransport::restore(block(&bigger), rig.mem.clone(), irq, &saved);
    let Err(e) = res else {
        panic!("restored over a bigger disk")
    };
    assert!(
        matches!(
            e,
            StateError::Capacity {
                saved: 16,
                actual: 32,
                ..
            }
        ),
        "{e}"
    );
}

/// Restores `saved` after `edit` over a fresh device on `rig`'s memory.
fn restore_edited(rig: &Rig, edit: impl FnOnce(&mut MmioState)) -> Result<(), StateError> {
    let mut s = rig.t.state().unwrap();
    edit(&mut s);
    let irq = Arc::new(CountingIrq::default());
    let other = image(SECTORS);
    MmioTransport::restore(block(&other), rig.mem.clone(), irq, &s).map(|_| ())
}

#[test]
fn state_for_another_device_is_refused() {
    let rig = rig();
    let e = restore_edited(&rig, |s| s.device_type = crate::virtio::TYPE_NET);
    assert!(matches!(
        e,
        Err(StateError::DeviceType {
            saved: 1,
            actual: TYPE_BLOCK
        })
    ));
    let e = restore_edited(&rig, |s| s.device_features |= 1 << 20);
    assert!(matches!(e, Err(StateError::Features { .. })));
    let e = restore_edited(&rig, |s| {
        s.device = DeviceState::Net(crate::snapshot::NetState {
            mac: [2, 0, 0, 0, 0, 1],
        })
    });
    assert!(matches!(e, Err(StateError::DeviceKind { .. })));
}

#[test]
fn corrupt_queue_state_is_refused() {
    let rig = rig();
    let e = restore_edited(&rig, |s| s.queues.push(s.queues[0]));
    assert!(matches!(
        e,
        Err(StateError::QueueCount {
            saved: 2,
            actual: 1,
            ..
        })
    ));
    let e = restore_edited(&rig, |s| s.queues[0].max_size = 128);
    assert!(matches!(e, Err(StateError::QueueMaxSize { index: 0, .. })));
    let e = restore_edited(&rig, |s| s.queues[0].size = 3);
    assert!(matches!(e, Err(StateError::Queue { index: 0, .. })));
    let e = restore_edited(&rig, |s| s.queues[0].used_ring = 0x7fff_0000);
    assert!(matches!(
        e,
        Err(StateError::QueueOutsideMemory { index: 0 })
    ));
    let e = restore_edited(&rig, |s| s.queues[0].ready = false);
    assert!(matches!(e, Err(StateError::Inconsistent(_))));
}

#[test]
fn corrupt_status_or_features_are_refused() {
    let rig = rig();
    let e = restore_edited(&rig, |s| s.status = status::ACKNOWLEDGE);
    assert!(matches!(e, Err(StateError::Inconsistent(_))));
    let e = restore_edited(&rig, |s| s.driver_features &= !features::VIRTIO_F_VERSION_1);
    assert!(matches!(e, Err(StateError::DriverFeatures { .. })));
    let e = restore_edited(&rig, |s| s.driver_features |= 1 << 40);
    assert!(matches!(e, Err(StateError::DriverFeatures { .. })));
}

#[test]
fn mmio_state_serde_round_trip() {
    let mut rig = rig();
    rig.read_sector(0, 2);
    let s = rig.t.state().unwrap();
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<MmioState>(&json).unwrap(), s);
}

/// A device without snapshot support.
struct Plain;

impl VirtioDevice for Plain {
    fn device_type(&self) -> u32 {
        99
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        features::VIRTIO_F_VERSION_1
    }
    fn ack_features(&mut self, _: u64) {}
    fn config_space(&self) -> &[u8] {
        &[]
    }
    fn activate(&mut self, _: Mem, _: Vec<Queue>, _: Arc<Interrupt>) -> Result<(), Error> {
        Ok(())
    }
    fn reset(&mut self) {}
    fn process_queue(&mut self, _: usize) -> bool {
        false
    }
}

#[test]
fn a_device_without_support_cannot_be_saved() {
    let t = MmioTransport::new(Plain, mem(), Arc::new(CountingIrq::default())).unwrap();
    assert!(matches!(t.state(), Err(StateError::Unsupported(99))));
}

#[test]
fn an_active_device_without_positions_cannot_be_saved() {
    let mem = mem();
    let vq = leak_vq(&mem);
    let mut t = MmioTransport::new(Plain, mem, Arc::new(CountingIrq::default())).unwrap();
    negotiate(&mut t, features::VIRTIO_F_VERSION_1);
    queue_regs(&mut t, vq);
    w(&mut t, reg::QUEUE_READY, 1);
    w(&mut t, reg::STATUS, DRIVER_OK_ALL);
    assert!(t.is_activated());
    assert!(matches!(
        t.state(),
        Err(StateError::QueuePositions { device_type: 99 })
    ));
}
