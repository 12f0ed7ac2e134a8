use super::request::*;
use super::*;
use crate::virtio::test_utils::*;
use std::io::Write;
use std::os::unix::fs::FileExt;
use vm_memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

pub(super) const HDR: u64 = 0x10000;
pub(super) const DATA: u64 = 0x20000;
pub(super) const STATUS: u64 = 0x30000;

pub(super) type Vq = &'static MockSplitQueue<'static, GuestMemoryMmap<()>>;

pub(super) struct Rig {
    pub(super) _file: TempFile,
    pub(super) blk: Block,
    pub(super) mem: Mem,
    pub(super) irq: Arc<CountingIrq>,
    pub(super) vq: Vq,
}

pub(super) fn image(size: usize) -> TempFile {
    let f = TempFile::new().unwrap();
    let mut data = vec![0u8; size];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i / 512) as u8;
    }
    f.as_file().write_all(&data).unwrap();
    f
}

pub(super) fn rig(ro: bool, size: usize, features: u64) -> Rig {
    let file = image(size);
    let blk = Block::new(BlockConfig {
        path: file.as_path().to_path_buf(),
        read_only: ro,
        id: Some("disk-one".into()),
        ..Default::default()
    })
    .unwrap();
    rig_with(file, blk, features)
}

pub(super) fn rig_with(file: TempFile, mut blk: Block, features: u64) -> Rig {
    let mem = mem();
    let irq = Arc::new(CountingIrq::default());
    blk.ack_features(features & blk.features());
    let leaked: &'static Mem = Box::leak(Box::new(mem.clone()));
    let vq: Vq = Box::leak(Box::new(MockSplitQueue::create(
        &**leaked,
        GuestAddress(0),
        16,
    )));
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_event_idx(has(features, VIRTIO_RING_F_EVENT_IDX));
    blk.activate(mem.clone(), vec![q], Arc::new(Interrupt::new(irq.clone())))
        .unwrap();
    Rig {
        _file: file,
        blk,
        mem,
        irq,
        vq,
    }
}

impl Rig {
    pub(super) fn needs_reset(&self) -> bool {
        self.blk.active.as_ref().unwrap().interrupt.needs_reset()
    }

    pub(super) fn header(&self, t: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&t.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    /// Submits `descs` at table index `start`, processes, returns (status, used len).
    pub(super) fn run(&mut self, start: u16, descs: &[(u64, u32, bool)]) -> (u8, u32) {
        let vq = self.vq;
        let before = used_idx(vq);
        add_chain(vq, start, descs);
        self.blk.process_queue(0);
        let vq = self.vq;
        assert_eq!(
            used_idx(vq),
            before.wrapping_add(1),
            "request not completed"
        );
        let (id, len) = used(vq, usize::from(before % 16));
        assert_eq!(id, u32::from(start));
        (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), len)
    }

    pub(super) fn req(
        &mut self,
        t: u32,
        sector: u64,
        data_len: u32,
        data_write: bool,
    ) -> (u8, u32) {
        self.header(t, sector);
        let mut d = vec![(HDR, 16, false)];
        if data_len > 0 {
            d.push((DATA, data_len, data_write));
        }
        d.push((STATUS, 1, true));
        self.run(0, &d)
    }
}

#[test]
fn read_write_roundtrip() {
    let mut r = rig(false, 8 * 512, VIRTIO_BLK_F_FLUSH);
    assert_eq!(r.blk.capacity(), 8);
    let (s, len) = r.req(VIRTIO_BLK_T_IN, 2, 1024, true);
    assert_eq!((s, len), (VIRTIO_BLK_S_OK, 1025));
    let mut buf = [0u8; 1024];
    r.mem.read_slice(&mut buf, GuestAddress(DATA)).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 2) && buf[512..].iter().all(|&b| b == 3));

    r.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(r.req(VIRTIO_BLK_T_OUT, 7, 512, false), (VIRTIO_BLK_S_OK, 1));
    r.mem.write_slice(&[0; 512], GuestAddress(DATA)).unwrap();
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 7, 512, true).0, VIRTIO_BLK_S_OK);
    r.mem
        .read_slice(&mut buf[..512], GuestAddress(DATA))
        .unwrap();
    assert!(buf[..512].iter().all(|&b| b == 0xab));
    assert_eq!(r.req(VIRTIO_BLK_T_FLUSH, 0, 0, false), (VIRTIO_BLK_S_OK, 1));
    // One interrupt per processing pass.
    assert_eq!(r.irq.count(), 4);
}

#[test]
fn write_through_without_flush_and_any_layout() {
    let mut r = rig(false, 4 * 512, 0);
    // Header and data in one readable descriptor, status after it.
    let mut h = [0u8; 16 + 512];
    h[0..4].copy_from_slice(&VIRTIO_BLK_T_OUT.to_le_bytes());
    h[8..16].copy_from_slice(&1u64.to_le_bytes());
    h[16..].fill(0x5a);
    r.mem.write_slice(&h, GuestAddress(HDR)).unwrap();
    let (s, _) = r.run(0, &[(HDR, 16 + 512, false), (STATUS, 1, true)]);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    let mut back = [0u8; 512];
    r._file.as_file().read_exact_at(&mut back, 512).unwrap();
    assert!(back.iter().all(|&b| b == 0x5a));
}

#[test]
fn get_id_and_default_id() {
    let mut r = rig(false, 512, 0);
    assert_eq!(
        r.req(VIRTIO_BLK_T_GET_ID, 0, 20, true),
        (VIRTIO_BLK_S_OK, 21)
    );
    let mut id = [0u8; 20];
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..9], b"disk-one\0");

    let f = image(512);
    let blk = Block::new(BlockConfig {
        path: f.as_path().to_path_buf(),
        read_only: true,
        id: None,
        ..Default::default()
    })
    .unwrap();
    let mut r = rig_with(f, blk, 0);
    assert_eq!(r.req(VIRTIO_BLK_T_GET_ID, 0, 20, true).0, VIRTIO_BLK_S_OK);
    r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..4], b"kiln");
    assert!(Block::new(BlockConfig {
        path: "/nonexistent".into(),
        read_only: true,
        id: Some("x".repeat(21)),
        ..Default::default()
    })
    .is_err());
}

#[test]
fn read_only_and_range_and_unsupported() {
    let mut r = rig(true, 4 * 512 + 100, u64::MAX);
    assert_eq!(r.blk.capacity(), 4);
    assert!(has(r.blk.features(), VIRTIO_BLK_F_RO));
    assert!(!has(r.blk.features(), VIRTIO_BLK_F_DISCARD));
    assert_eq!(r.req(VIRTIO_BLK_T_OUT, 0, 512, false).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 3, 512, true).0, VIRTIO_BLK_S_OK);
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 3, 1024, true).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(
        r.req(VIRTIO_BLK_T_IN, u64::MAX, 512, true).0,
        VIRTIO_BLK_S_IOERR
    );
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 0, 100, true).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(r.req(99, 0, 0, false).0, VIRTIO_BLK_S_UNSUPP);
    assert_eq!(
        r.req(VIRTIO_BLK_T_DISCARD, 0, 16, false).0,
        VIRTIO_BLK_S_UNSUPP
    );
}

#[test]
fn write_zeroes_and_discard() {
    let feats = VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES | VIRTIO_BLK_F_FLUSH;
    let mut r = rig(false, 64 * 512, feats);
    let seg = |s: u64, n: u32, flags: u32| {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&s.to_le_bytes());
        b[8..12].copy_from_slice(&n.to_le_bytes());
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b
    };
    r.mem
        .write_slice(&seg(8, 16, 0), GuestAddress(DATA))
        .unwrap();
    assert_eq!(
        r.req(VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, false).0,
        VIRTIO_BLK_S_OK
    );
    let mut back = vec![0u8; 16 * 512];
    r._file.as_file().read_exact_at(&mut back, 8 * 512).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    let mut other = [0u8; 1];
    r._file
        .as_file()
        .read_exact_at(&mut other, 24 * 512)
        .unwrap();
    assert_eq!(other[0], 24);
    r.mem
        .write_slice(&seg(60, 8, 0), GuestAddress(DATA))
        .unwrap();
    assert_eq!(
        r.req(VIRTIO_BLK_T_DISCARD, 0, 16, false).0,
        VIRTIO_BLK_S_IOERR
    );
    r.mem
        .write_slice(&seg(0, 8, 1), GuestAddress(DATA))
        .unwrap();
    assert_eq!(
        r.req(VIRTIO_BLK_T_DISCARD, 0, 16, false).0,
        VIRTIO_BLK_S_UNSUPP
    );
    r.mem
        .write_slice(&seg(0, 8, 0), GuestAddress(DATA))
        .unwrap();
    assert_eq!(r.req(VIRTIO_BLK_T_DISCARD, 0, 16, false).0, VIRTIO_BLK_S_OK);
    assert_eq!(r._file.as_file().metadata().unwrap().len(), 64 * 512);
}

#[test]
fn malformed_chains() {
    let mut r = rig(false, 64 * 512, 0);
    // Wrong direction: IN with a device-readable data buffer.
    assert_eq!(
        r.req(VIRTIO_BLK_T_IN, 0, 512, false),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    // OUT with a device-writable data buffer.
    assert_eq!(
        r.req(VIRTIO_BLK_T_OUT, 0, 512, true),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    // Header too short.
    r.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(
        r.run(0, &[(HDR, 8, false), (STATUS, 1, true)]),
        (VIRTIO_BLK_S_IOERR, 1)
    );
    // Status descriptor read-only: nothing can be written.
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(r.run(0, &[(HDR, 16, false), (STATUS, 1, false)]), (0xff, 0));
    // Data outside guest memory.
    r.header(VIRTIO_BLK_T_IN, 0);
    let s = r.run(
        0,
        &[
            (HDR, 16, false),
            (0x2000_0000, 512, true),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(s, (VIRTIO_BLK_S_IOERR, 1));
    // Huge length crossing the end of memory.
    r.header(VIRTIO_BLK_T_IN, 0);
    let s = r.run(
        0,
        &[
            (HDR, 16, false),
            (DATA, u32::MAX - 64, true),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(s, (VIRTIO_BLK_S_IOERR, 1));
    // A chain over 4 GiB is cut short by the iterator: no status can be trusted.
    r.header(VIRTIO_BLK_T_IN, 0);
    let s = r.run(
        0,
        &[(HDR, 16, false), (DATA, u32::MAX, true), (STATUS, 1, true)],
    );
    assert_eq!(s, (0xff, 0));
    // Zero-length descriptors are skipped.
    r.header(VIRTIO_BLK_T_IN, 1);
    let s = r.run(
        0,
        &[
            (HDR, 16, false),
            (DATA, 0, true),
            (DATA, 512, true),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(s, (VIRTIO_BLK_S_OK, 513));
    // Readable after writable.
    r.header(VIRTIO_BLK_T_IN, 0);
    let s = r.run(
        0,
        &[
            (HDR, 16, false),
            (DATA, 512, true),
            (HDR, 16, false),
            (STATUS, 1, true),
        ],
    );
    assert_eq!(s, (VIRTIO_BLK_S_IOERR, 1));
    // Status byte outside memory.
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(
        r.run(0, &[(HDR, 16, false), (0x2000_0000, 1, true)]),
        (0xff, 0)
    );
    // Header-only chain (no status byte).
    assert_eq!(r.run(0, &[(HDR, 16, false)]), (0xff, 0));
    // Everything still works.
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 0, 512, true), (VIRTIO_BLK_S_OK, 513));
}

#[test]
fn descriptor_loop_is_answered() {
    let mut r = rig(false, 8 * 512, 0);
    let vq = r.vq;
    r.header(VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 0 -> ...
    let d0 = SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 1);
    let d1 = SplitDescriptor::new(
        DATA,
        512,
        (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
        0,
    );
    vq.desc_table().store(0, RawDescriptor::from(d0)).unwrap();
    vq.desc_table().store(1, RawDescriptor::from(d1)).unwrap();
    vq.avail().ring().ref_at(0).unwrap().store(0);
    vq.avail().idx().store(1);
    r.blk.process_queue(0);
    assert_eq!(used_idx(r.vq), 1);
    assert_eq!(used(r.vq, 0).0, 0);
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 0, 512, true).0, VIRTIO_BLK_S_OK);
}

#[test]
fn link_out_of_table_is_answered() {
    let mut r = rig(false, 8 * 512, 0);
    let vq = r.vq;
    r.header(VIRTIO_BLK_T_IN, 0);
    let d = SplitDescriptor::new(HDR, 16, VRING_DESC_F_NEXT as u16, 999);
    vq.desc_table().store(3, RawDescriptor::from(d)).unwrap();
    vq.avail().ring().ref_at(0).unwrap().store(3);
    vq.avail().idx().store(1);
    r.blk.process_queue(0);
    assert_eq!(used_idx(r.vq), 1);
    assert_eq!(used(r.vq, 0), (3, 0));
    assert_eq!(r.req(VIRTIO_BLK_T_IN, 0, 512, true).0, VIRTIO_BLK_S_OK);
}

#[test]
fn head_beyond_queue_needs_reset() {
    let mut r = rig(false, 8 * 512, 0);
    let vq = r.vq;
    vq.avail().ring().ref_at(0).unwrap().store(200);
    vq.avail().idx().store(1);
    assert!(!r.blk.process_queue(0));
    assert_eq!(used_idx(r.vq), 0);
    assert!(r.needs_reset());
    assert_eq!(r.irq.count(), 1, "one config-change interrupt");
    // Stopped until reset: a valid request is not served.
    add_chain(vq, 0, &[(HDR, 16, false), (STATUS, 1, true)]);
    r.blk.process_queue(0);
    assert_eq!(used_idx(r.vq), 0);
}

#[test]
fn avail_index_far_ahead_needs_reset_without_spinning() {
    for features in [0, VIRTIO_RING_F_EVENT_IDX] {
        let mut r = rig(false, 8 * 512, features);
        r.vq.avail().idx().store(1000);
        assert!(!r.blk.process_queue(0), "no work left once broken");
        assert!(r.needs_reset());
        assert_eq!(used_idx(r.vq), 0);
    }
}

#[test]
fn pass_yields_after_queue_size_requests() {
    let mut r = rig(false, 8 * 512, 0);
    let vq = r.vq;
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    for i in 0..8u16 {
        add_chain(vq, i * 2, &[(HDR, 16, false), (STATUS, 1, true)]);
    }
    // Entries 8..15 lie over the mock's used ring (its layout), read as small valid heads.
    vq.avail().idx().store(16);
    assert!(
        r.blk.process_queue(0),
        "16 chains: the pass yields with the budget spent"
    );
    assert_eq!(used_idx(r.vq), 16);
    assert!(!r.blk.process_queue(0), "nothing left");
}

#[test]
fn event_idx_one_interrupt_per_pass() {
    let mut r = rig(false, 8 * 512, VIRTIO_RING_F_EVENT_IDX);
    let vq = r.vq;
    r.header(VIRTIO_BLK_T_FLUSH, 0);
    for i in 0..3u16 {
        add_chain(
            vq,
            i * 2,
            &[(HDR, 16, false), (STATUS + u64::from(i), 1, true)],
        );
    }
    r.blk.process_queue(0);
    assert_eq!(used_idx(r.vq), 3);
    assert_eq!(r.irq.count(), 1);
}

#[test]
fn open_errors_and_lock() {
    let e = Block::new(BlockConfig {
        path: "/nonexistent/disk.img".into(),
        read_only: false,
        id: None,
        ..Default::default()
    })
    .err()
    .unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/disk.img") && msg.contains("check the path"),
        "{msg}"
    );

    let f = image(4096);
    let cfg = BlockConfig {
        path: f.as_path().to_path_buf(),
        read_only: false,
        id: None,
        ..Default::default()
    };
    let first = Block::new(cfg.clone()).unwrap();
    assert!(matches!(
        Block::new(cfg.clone()),
        Err(Error::DiskLocked { .. })
    ));
    let ro = BlockConfig {
        read_only: true,
        ..cfg.clone()
    };
    assert!(matches!(
        Block::new(ro.clone()),
        Err(Error::DiskLocked { .. })
    ));
    drop(first);
    let a = Block::new(ro.clone()).unwrap();
    let _b = Block::new(ro).unwrap();
    assert!(matches!(Block::new(cfg), Err(Error::DiskLocked { .. })));
    drop(a);
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn addr() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(HDR),
            Just(DATA),
            Just(STATUS),
            Just(0u64),
            Just((16 << 20) - 1),
            Just(u64::MAX - 7),
            any::<u64>(),
            0u64..(17 << 20),
        ]
    }

    fn len() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(16),
            Just(512),
            Just(u32::MAX),
            any::<u32>(),
            0u32..4096
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn random_descriptor_tables_never_panic(
            descs in proptest::collection::vec((addr(), len(), 0u16..8, 0u16..20), 16),
            // At most 8 heads: the mock lays the used ring over avail ring entries 8..
            heads in proptest::collection::vec(0u16..20, 1..8),
            rtype in prop_oneof![Just(0u32), Just(1), Just(4), Just(8), Just(11), Just(13), any::<u32>()],
            sector in prop_oneof![Just(0u64), Just(7), Just(u64::MAX), any::<u64>()],
        ) {
            let mut r = rig(false, 8 * 512, u64::MAX);
            r.header(rtype, sector);
            let vq = r.vq;
            for (i, &(a, l, f, n)) in descs.iter().enumerate() {
                let d = SplitDescriptor::new(a, l, f, n);
                vq.desc_table().store(i as u16, RawDescriptor::from(d)).unwrap();
            }
            for (i, &h) in heads.iter().enumerate() {
                vq.avail().ring().ref_at(i).unwrap().store(h);
            }
            vq.avail().idx().store(heads.len() as u16);
            r.blk.process_queue(0);
            prop_assert!(used_idx(r.vq) <= heads.len() as u16);
        }
    }
}

#[test]
fn config_space_layout() {
    let c = config_space(8);
    assert_eq!(c.len(), 60, "up to write_zeroes_may_unmap and its padding");
    assert_eq!(c[0..8], 8u64.to_le_bytes(), "capacity");
    assert_eq!(c[12..16], 254u32.to_le_bytes(), "seg_max");
    assert_eq!(c[20..24], 512u32.to_le_bytes(), "blk_size");
    assert_eq!(c[34..36], 1u16.to_le_bytes(), "num_queues");
    assert_eq!(
        c[36..40],
        MAX_DISCARD_SECTORS.to_le_bytes(),
        "max_discard_sectors"
    );
    assert_eq!(c[56], 1, "write_zeroes_may_unmap");
}
