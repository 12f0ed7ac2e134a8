use super::*;
use crate::virtio::test_utils::*;
use crate::virtio::{has, TYPE_BLOCK};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub(super) const DATA: u64 = 0x10000;
pub(super) const DATA2: u64 = 0x40000;
pub(super) const HDR: u64 = 0x80000;
/// Bytes tests pre-fill buffers with, to see what the device wrote.
const FILL: u8 = 0xa5;

pub(super) type Vq = &'static MockSplitQueue<'static, GuestMemoryMmap<()>>;

pub(super) struct Rig {
    pub(super) rng: Rng,
    pub(super) mem: Mem,
    pub(super) irq: Arc<CountingIrq>,
    pub(super) vq: Vq,
}

pub(super) fn rig_with(mut rng: Rng, features: u64) -> Rig {
    let mem = mem();
    let irq = Arc::new(CountingIrq::default());
    rng.ack_features(features & rng.features());
    let leaked: &'static Mem = Box::leak(Box::new(mem.clone()));
    let vq: Vq = Box::leak(Box::new(MockSplitQueue::create(
        &**leaked,
        GuestAddress(0),
        16,
    )));
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_event_idx(has(features, VIRTIO_RING_F_EVENT_IDX));
    rng.activate(mem.clone(), vec![q], Arc::new(Interrupt::new(irq.clone())))
        .unwrap();
    Rig { rng, mem, irq, vq }
}

pub(super) fn rig() -> Rig {
    rig_with(Rng::new(None).unwrap(), 0)
}

impl Rig {
    fn needs_reset(&self) -> bool {
        self.rng.active.as_ref().unwrap().interrupt.needs_reset()
    }

    /// `len` bytes of guest memory at `addr`, after filling them with [`FILL`].
    fn prefill(&self, addr: u64, len: usize) {
        self.mem
            .write_slice(&vec![FILL; len], GuestAddress(addr))
            .unwrap();
    }

    pub(super) fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    /// Submits `descs` at table index `start`, processes, returns the used entry.
    pub(super) fn run(&mut self, start: u16, descs: &[(u64, u32, bool)]) -> (u32, u32) {
        let before = used_idx(self.vq);
        add_chain(self.vq, start, descs);
        self.rng.process_queue(0);
        assert_eq!(
            used_idx(self.vq),
            before.wrapping_add(1),
            "request not done"
        );
        used(self.vq, usize::from(before % 16))
    }
}

/// Whether `v` holds something other than the pre-fill pattern (random bytes all equal
/// to it: probability 2^-8n).
fn written(v: &[u8]) -> bool {
    v.iter().any(|&b| b != FILL)
}

#[test]
fn identity_queue_and_empty_config() {
    let rng = Rng::new(None).unwrap();
    assert_eq!(rng.device_type(), 4);
    assert_ne!(rng.device_type(), TYPE_BLOCK);
    assert_eq!(rng.queue_max_sizes(), &[QUEUE_SIZE]);
    assert!(rng.config_space().is_empty());
    assert_eq!(rng.features(), VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
}

#[test]
fn host_random_fills_the_whole_buffer() {
    let mut a = vec![0u8; MAX_REQUEST_BYTES as usize];
    host_random(&mut a).unwrap();
    // 64 KiB of random bytes has every 4 KiB block non-zero.
    assert!(a.chunks(4096).all(|c| c.iter().any(|&b| b != 0)));
}

#[test]
fn bytes_are_written_and_used_len_set() {
    let mut r = rig();
    r.prefill(DATA, 512);
    assert_eq!(r.run(0, &[(DATA, 512, true)]), (0, 512));
    assert!(written(&r.read(DATA, 512)));
    let m = r.rng.metrics().snapshot();
    assert_eq!((m.entropy_bytes, m.entropy_event_count), (512, 1));
    assert_eq!(r.irq.count(), 1);
}

#[test]
fn two_requests_get_different_bytes() {
    let mut r = rig();
    r.run(0, &[(DATA, 64, true)]);
    r.run(1, &[(DATA2, 64, true)]);
    assert_ne!(r.read(DATA, 64), r.read(DATA2, 64));
}

#[test]
fn every_writable_descriptor_is_filled() {
    let mut r = rig();
    r.prefill(DATA, 32);
    r.prefill(DATA2, 32);
    assert_eq!(r.run(0, &[(DATA, 32, true), (DATA2, 32, true)]), (0, 64));
    assert!(written(&r.read(DATA, 32)));
    assert!(written(&r.read(DATA2, 32)));
}

#[test]
fn a_request_gets_at_most_the_cap() {
    let mut r = rig();
    let cap = MAX_REQUEST_BYTES as usize;
    r.prefill(DATA, cap + 4096);
    let (_, len) = r.run(0, &[(DATA, 2 * MAX_REQUEST_BYTES, true)]);
    assert_eq!(len, MAX_REQUEST_BYTES);
    assert!(
        written(&r.read(DATA + cap as u64 - 64, 64)),
        "end of the cap"
    );
    assert!(
        !written(&r.read(DATA + cap as u64, 4096)),
        "nothing past the cap"
    );
}

#[test]
fn readable_descriptors_before_the_buffer_are_ignored() {
    let mut r = rig();
    r.prefill(HDR, 16);
    assert_eq!(r.run(0, &[(HDR, 16, false), (DATA, 32, true)]), (0, 32));
    assert!(!written(&r.read(HDR, 16)), "readable buffer untouched");
}

#[test]
fn a_chain_without_writable_buffer_gets_zero_bytes() {
    let mut r = rig();
    r.prefill(DATA, 32);
    assert_eq!(r.run(0, &[(DATA, 32, false)]), (0, 0));
    assert!(!written(&r.read(DATA, 32)));
    let m = r.rng.metrics().snapshot();
    assert_eq!((m.entropy_event_fails, m.entropy_bytes), (1, 0));
}

#[test]
fn a_zero_length_buffer_gets_zero_bytes() {
    let mut r = rig();
    assert_eq!(r.run(0, &[(DATA, 0, true)]), (0, 0));
    assert_eq!(r.rng.metrics().snapshot().entropy_event_fails, 1);
}

#[test]
fn a_buffer_outside_memory_fails_only_that_request() {
    let mut r = rig();
    let end = 16u64 << 20;
    r.prefill(DATA, 32);
    assert_eq!(r.run(0, &[(DATA, 32, true), (end - 8, 32, true)]), (0, 0));
    assert!(
        !written(&r.read(DATA, 32)),
        "nothing written for a bad chain"
    );
    assert!(!r.needs_reset());
    assert_eq!(r.run(2, &[(DATA, 32, true)]), (2, 32));
}

#[test]
fn a_readable_buffer_after_a_writable_one_fails_the_request() {
    let mut r = rig();
    assert_eq!(r.run(0, &[(DATA, 32, true), (HDR, 16, false)]), (0, 0));
    assert!(!r.needs_reset());
}

#[test]
fn a_link_out_of_the_table_fails_the_request() {
    let mut r = rig();
    let vq = r.vq;
    let d = SplitDescriptor::new(
        DATA,
        32,
        (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
        999,
    );
    vq.desc_table().store(3, RawDescriptor::from(d)).unwrap();
    vq.avail().ring().ref_at(0).unwrap().store(3);
    vq.avail().idx().store(1);
    r.rng.process_queue(0);
    assert_eq!(used(r.vq, 0), (3, 0));
    assert_eq!(r.run(0, &[(DATA, 32, true)]), (0, 32));
}

#[test]
fn a_head_beyond_the_queue_needs_reset() {
    let mut r = rig();
    let vq = r.vq;
    vq.avail().ring().ref_at(0).unwrap().store(200);
    vq.avail().idx().store(1);
    assert!(!r.rng.process_queue(0));
    assert!(r.needs_reset());
    assert_eq!(r.irq.count(), 1, "one config-change interrupt");
    add_chain(vq, 0, &[(DATA, 32, true)]);
    r.rng.process_queue(0);
    assert_eq!(used_idx(r.vq), 0, "stopped until reset");
}

#[test]
fn an_avail_index_far_ahead_needs_reset() {
    for features in [0, VIRTIO_RING_F_EVENT_IDX] {
        let mut r = rig_with(Rng::new(None).unwrap(), features);
        r.vq.avail().idx().store(1000);
        assert!(!r.rng.process_queue(0), "no work left once broken");
        assert!(r.needs_reset());
    }
}

#[test]
fn a_pass_yields_after_queue_size_requests() {
    // The mock lays its used ring over the end of its available ring: move the used
    // ring away so that 16 published heads stay intact.
    const USED: u64 = 0x8000;
    let mem = mem();
    let leaked: &'static Mem = Box::leak(Box::new(mem.clone()));
    let vq = MockSplitQueue::create(&**leaked, GuestAddress(0), 16);
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_used_ring_address(Some(USED as u32), Some(0));
    let mut rng = Rng::new(None).unwrap();
    let irq = Arc::new(Interrupt::new(Arc::new(CountingIrq::default())));
    rng.activate(mem.clone(), vec![q], irq).unwrap();
    for i in 0..16u16 {
        add_chain(&vq, i, &[(DATA + u64::from(i) * 64, 64, true)]);
    }
    let used_idx = || mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap();
    assert!(rng.process_queue(0), "budget spent: work reported left");
    assert_eq!(used_idx(), 16);
    assert!(!rng.process_queue(0), "nothing left");
    assert_eq!(used_idx(), 16);
}

#[test]
fn an_inactive_device_does_nothing() {
    let mut rng = Rng::new(None).unwrap();
    assert!(!rng.process_queue(0));
    assert_eq!(rng.backend_interest(0), EventSet::empty());
    assert_eq!(rng.queue_positions(), None);
}

#[test]
fn other_queue_indexes_are_ignored() {
    let mut r = rig();
    add_chain(r.vq, 0, &[(DATA, 32, true)]);
    assert!(!r.rng.process_queue(1));
    assert_eq!(used_idx(r.vq), 0);
}

#[test]
fn activation_wants_exactly_one_queue() {
    let mut rng = Rng::new(None).unwrap();
    let irq = Arc::new(Interrupt::new(Arc::new(CountingIrq::default())));
    let e = rng.activate(mem(), Vec::new(), irq).unwrap_err();
    assert!(matches!(e, Error::QueueCount { want: 1, .. }), "{e}");
    assert_eq!(rng.metrics().snapshot().activate_fails, 1);
}

#[test]
fn reset_deactivates() {
    let mut r = rig();
    r.rng.reset();
    add_chain(r.vq, 0, &[(DATA, 32, true)]);
    assert!(!r.rng.process_queue(0));
    assert_eq!(used_idx(r.vq), 0);
    assert_eq!(r.rng.backend_interest(0), EventSet::empty());
}

#[test]
fn state_round_trip() {
    let saved = Rng::new(None).unwrap().device_state().unwrap();
    assert_eq!(saved, DeviceState::Rng);
    let mut fresh = Rng::new(None).unwrap();
    fresh.restore_device_state(&saved).unwrap();
}

#[test]
fn state_of_another_device_is_refused() {
    let mut rng = Rng::new(None).unwrap();
    let net = DeviceState::Net(crate::snapshot::NetState {
        mac: [2, 0, 0, 0, 0, 1],
    });
    assert!(matches!(
        rng.restore_device_state(&net),
        Err(StateError::DeviceKind {
            saved: "virtio-net",
            actual: "virtio-rng"
        })
    ));
}

#[test]
fn positions_follow_processed_requests() {
    let mut r = rig();
    for i in 0..3 {
        r.run(i, &[(DATA, 16, true)]);
    }
    assert_eq!(
        r.rng.queue_positions(),
        Some(vec![QueuePosition {
            next_avail: 3,
            next_used: 3
        }])
    );
}
