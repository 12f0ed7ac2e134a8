use super::*;
use crate::virtio::test_utils::*;
use crate::virtio::{status, MmioTransport};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::sync::Mutex;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

pub(super) type Vq = &'static MockSplitQueue<'static, GuestMemoryMmap<()>>;
pub(super) const RXQ: u64 = 0;
pub(super) const TXQ: u64 = 0x8000;
pub(super) const BUF: u64 = 0x10000;

#[derive(Default)]
pub(super) struct FakeState {
    pub(super) rx: VecDeque<Vec<u8>>,
    pub(super) tx: Vec<Vec<u8>>,
    pub(super) block_tx: bool,
    pub(super) reads: usize,
}

pub(super) struct Fake {
    st: Arc<Mutex<FakeState>>,
    evt: EventFd,
}

impl AsRawFd for Fake {
    fn as_raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

impl NetBackend for Fake {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut st = self.st.lock().unwrap();
        st.reads += 1;
        match st.rx.pop_front() {
            Some(f) => {
                buf[..f.len()].copy_from_slice(&f);
                Ok(f.len())
            }
            None => Err(ErrorKind::WouldBlock.into()),
        }
    }
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut st = self.st.lock().unwrap();
        if st.block_tx {
            return Err(ErrorKind::WouldBlock.into());
        }
        st.tx.push(buf.to_vec());
        Ok(buf.len())
    }
}

pub(super) struct Rig {
    pub(super) net: Net<Fake>,
    pub(super) st: Arc<Mutex<FakeState>>,
    pub(super) mem: Mem,
    pub(super) irq: Arc<CountingIrq>,
    pub(super) rx: Vq,
    pub(super) tx: Vq,
}

fn leak_vq(mem: &Mem, at: u64) -> Vq {
    let leaked: &'static Mem = Box::leak(Box::new(mem.clone()));
    Box::leak(Box::new(MockSplitQueue::create(
        &**leaked,
        GuestAddress(at),
        16,
    )))
}

pub(super) fn rig() -> Rig {
    let st = Arc::new(Mutex::new(FakeState::default()));
    let fake = Fake {
        st: st.clone(),
        evt: EventFd::new(0).unwrap(),
    };
    let mut net = Net::new(fake, [2, 0, 0, 0, 0, 1]).unwrap();
    let mem = mem();
    let (rx, tx) = (leak_vq(&mem, RXQ), leak_vq(&mem, TXQ));
    let irq = Arc::new(CountingIrq::default());
    net.ack_features(net.features());
    let queues = vec![rx.create_queue().unwrap(), tx.create_queue().unwrap()];
    net.activate(mem.clone(), queues, Arc::new(Interrupt::new(irq.clone())))
        .unwrap();
    Rig {
        net,
        st,
        mem,
        irq,
        rx,
        tx,
    }
}

pub(super) fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut f = vec![fill; len];
    f[..VNET_HDR_LEN].fill(0);
    f
}

#[test]
fn config_and_features() {
    let r = rig();
    assert_eq!(r.net.config_space(), [2, 0, 0, 0, 0, 1, 1, 0]);
    assert!(has(r.net.features(), VIRTIO_NET_F_MAC | VIRTIO_F_VERSION_1));
    assert!(
        !has(r.net.features(), VIRTIO_NET_F_CSUM),
        "fake has no offloads"
    );
}

#[test]
fn tx_frame_and_eagain() {
    let mut r = rig();
    let f = frame(100, 0x11);
    r.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    // Header and payload split across two descriptors.
    add_chain(r.tx, 0, &[(BUF, 12, false), (BUF + 12, 88, false)]);
    r.net.process_queue(TX_QUEUE);
    assert_eq!(r.st.lock().unwrap().tx, vec![f.clone()]);
    assert_eq!(used_idx(r.tx), 1);
    assert_eq!(used(r.tx, 0), (0, 0));
    assert_eq!(r.irq.count(), 1);

    r.st.lock().unwrap().block_tx = true;
    add_chain(r.tx, 2, &[(BUF, 100, false)]);
    add_chain(r.tx, 3, &[(BUF, 100, false)]);
    r.net.process_queue(TX_QUEUE);
    assert_eq!(used_idx(r.tx), 1, "blocked frame keeps its chain");
    assert!(r.net.backend_interest(0).contains(EventSet::OUT));
    r.net.process_backend(0, EventSet::OUT);
    assert_eq!(used_idx(r.tx), 1);
    r.st.lock().unwrap().block_tx = false;
    r.net.process_backend(0, EventSet::OUT);
    assert_eq!(used_idx(r.tx), 3);
    assert_eq!(r.st.lock().unwrap().tx.len(), 3);
    assert!(!r.net.backend_interest(0).contains(EventSet::OUT));
}

#[test]
fn tx_malformed_chains() {
    let mut r = rig();
    add_chain(r.tx, 0, &[(BUF, 8, false)]); // shorter than the header
    add_chain(r.tx, 1, &[(BUF, 100, true)]); // device-writable
    add_chain(r.tx, 2, &[(0x2000_0000, 100, false)]); // outside memory
    add_chain(r.tx, 3, &[(BUF, 70_000, false)]); // too long
    r.net.process_queue(TX_QUEUE);
    assert_eq!(used_idx(r.tx), 4);
    assert!(r.st.lock().unwrap().tx.is_empty());
}

#[test]
fn rx_only_with_buffers() {
    let mut r = rig();
    r.st.lock().unwrap().rx.push_back(frame(60, 0x22));
    // No RX buffers: the backend is not read and input is no longer watched.
    r.net.process_queue(RX_QUEUE);
    r.net.process_backend(0, EventSet::IN);
    assert_eq!(r.st.lock().unwrap().reads, 0);
    assert!(!r.net.backend_interest(0).contains(EventSet::IN));

    add_chain(r.rx, 0, &[(BUF, 1526, true)]);
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(r.rx), 1);
    assert_eq!(used(r.rx, 0), (0, 60));
    let mut got = vec![0u8; 60];
    r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert_eq!(&got[10..12], &[1, 0], "num_buffers = 1");
    assert!(got[12..].iter().all(|&b| b == 0x22));
    assert_eq!(r.irq.count(), 1);
    // Ran out of buffers again.
    assert!(!r.net.backend_interest(0).contains(EventSet::IN));
}

#[test]
fn rx_oversized_frame_dropped() {
    let mut r = rig();
    {
        let mut st = r.st.lock().unwrap();
        st.rx.push_back(frame(200, 0x33));
        st.rx.push_back(frame(50, 0x44));
    }
    r.mem.write_slice(&[0xee; 128], GuestAddress(BUF)).unwrap();
    add_chain(r.rx, 0, &[(BUF, 64, true), (BUF + 64, 36, true)]);
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used_idx(r.rx), 1);
    assert_eq!(used(r.rx, 0), (0, 50));
    let mut got = [0u8; 128];
    r.mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
    assert!(got[12..50].iter().all(|&b| b == 0x44));
    assert!(
        got[50..].iter().all(|&b| b == 0xee),
        "nothing past the frame"
    );
    // Malformed RX chain (read-only) is returned empty.
    add_chain(r.rx, 2, &[(BUF, 100, false)]);
    r.st.lock().unwrap().rx.push_back(frame(50, 0x55));
    r.net.process_queue(RX_QUEUE);
    assert_eq!(used(r.rx, 1), (2, 0));
}

#[test]
fn reset_clears_state() {
    let mut r = rig();
    r.st.lock().unwrap().block_tx = true;
    add_chain(r.tx, 0, &[(BUF, 100, false)]);
    r.net.process_queue(TX_QUEUE);
    r.net.reset();
    assert_eq!(r.net.backend_interest(0), EventSet::empty());
    r.net.process_queue(TX_QUEUE);
    r.net.process_backend(0, EventSet::IN | EventSet::OUT);
}

/// A socketpair end as a backend: datagrams keep frame boundaries.
struct Sock(UnixDatagram);
impl AsRawFd for Sock {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
impl NetBackend for Sock {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.recv(buf)
    }
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.send(buf)
    }
}

impl Rig {
    pub(super) fn needs_reset(&self) -> bool {
        self.net.active.as_ref().unwrap().interrupt.needs_reset()
    }
}

#[test]
fn tx_avail_index_far_ahead_needs_reset() {
    let mut r = rig();
    r.tx.avail().idx().store(1000);
    assert!(!r.net.process_queue(TX_QUEUE), "no work left once broken");
    assert!(r.needs_reset());
    assert_eq!(used_idx(r.tx), 0);
    assert_eq!(r.irq.count(), 1, "one config-change interrupt");
    // Stopped until reset: nothing is sent, the backend is no longer watched.
    add_chain(r.tx, 0, &[(BUF, 60, false)]);
    r.net.process_queue(TX_QUEUE);
    assert!(r.st.lock().unwrap().tx.is_empty());
}

#[test]
fn rx_avail_index_far_ahead_needs_reset() {
    let mut r = rig();
    r.st.lock().unwrap().rx.push_back(frame(60, 0x22));
    r.rx.avail().idx().store(1000);
    assert!(!r.net.process_queue(RX_QUEUE));
    assert!(r.needs_reset());
    assert_eq!(used_idx(r.rx), 0);
}

#[test]
fn rx_head_beyond_queue_needs_reset() {
    let mut r = rig();
    r.st.lock().unwrap().rx.push_back(frame(60, 0x22));
    r.rx.avail().ring().ref_at(0).unwrap().store(200);
    r.rx.avail().idx().store(1);
    r.net.process_queue(RX_QUEUE);
    assert!(r.needs_reset());
    assert_eq!(used_idx(r.rx), 0);
}

#[test]
fn tx_pass_yields_after_queue_size_frames() {
    let mut r = rig();
    let f = frame(60, 0x33);
    r.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
    // Every descriptor is a whole frame, so any head below 16 is a valid chain: the
    // mock lays its used ring over avail entries 8..15, which then read as such heads.
    for i in 0..16u16 {
        let d = SplitDescriptor::new(BUF, 60, 0, 0);
        r.tx.desc_table().store(i, RawDescriptor::from(d)).unwrap();
    }
    for i in 0..8u16 {
        r.tx.avail().ring().ref_at(usize::from(i)).unwrap().store(i);
    }
    r.tx.avail().idx().store(16);
    assert!(r.net.process_queue(TX_QUEUE), "16 frames: the pass yields");
    assert_eq!(r.st.lock().unwrap().tx.len(), 16);
    assert!(!r.net.process_queue(TX_QUEUE), "nothing left");
}

#[test]
fn end_to_end_through_transport_and_event_loop() {
    let (ours, peer) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let mem = mem();
    let (rx, tx) = (leak_vq(&mem, RXQ), leak_vq(&mem, TXQ));
    let irq = Arc::new(CountingIrq::default());
    let net = Net::new(Sock(ours), [2, 0, 0, 0, 0, 2]).unwrap();
    let t = Arc::new(Mutex::new(
        MmioTransport::new(net, mem.clone(), irq.clone()).unwrap(),
    ));
    let mut em = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    em.add_subscriber(Arc::new(Mutex::new(t.lock().unwrap().worker().unwrap())));
    let bus: crate::bus::SharedDevice = t.clone();
    let w = |off: u64, v: u32| bus.lock().unwrap().write(off, &v.to_le_bytes());

    w(0x70, status::ACKNOWLEDGE);
    w(0x70, status::ACKNOWLEDGE | status::DRIVER);
    w(0x24, 1);
    w(0x20, 1); // VERSION_1
    w(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for (i, vq) in [rx, tx].iter().enumerate() {
        w(0x30, i as u32);
        w(0x38, 16);
        w(0x80, vq.desc_table_addr().0 as u32);
        w(0x90, vq.avail_addr().0 as u32);
        w(0xa0, vq.used_addr().0 as u32);
        w(0x44, 1);
    }
    add_chain(rx, 0, &[(BUF, 2048, true)]);
    w(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert!(t.lock().unwrap().is_activated());

    let f = frame(80, 0x66);
    peer.send(&f).unwrap();
    for _ in 0..5 {
        em.run_with_timeout(50).unwrap();
    }
    assert_eq!(used_idx(rx), 1);
    assert_eq!(used(rx, 0), (0, 80));

    // Guest TX through the slow path (QueueNotify on the bus).
    let g = frame(64, 0x77);
    mem.write_slice(&g, GuestAddress(BUF + 0x1000)).unwrap();
    add_chain(tx, 0, &[(BUF + 0x1000, 64, false)]);
    w(0x50, 1);
    for _ in 0..3 {
        em.run_with_timeout(50).unwrap();
    }
    let mut got = [0u8; 128];
    assert_eq!(peer.recv(&mut got).unwrap(), 64);
    assert_eq!(&got[..64], &g[..]);
    assert_eq!(used_idx(tx), 1);
    assert!(irq.count() >= 2);

    // No RX buffer left: a second frame waits in the socket, not lost.
    peer.send(&frame(40, 0x88)).unwrap();
    for _ in 0..3 {
        em.run_with_timeout(20).unwrap();
    }
    assert_eq!(used_idx(rx), 1);
    add_chain(rx, 1, &[(BUF, 2048, true)]);
    w(0x50, 0);
    for _ in 0..3 {
        em.run_with_timeout(50).unwrap();
    }
    assert_eq!(used_idx(rx), 2);
    assert_eq!(used(rx, 1), (1, 40));

    // Reset stops everything; events are ignored.
    w(0x70, 0);
    peer.send(&frame(40, 0x99)).unwrap();
    for _ in 0..3 {
        em.run_with_timeout(20).unwrap();
    }
    assert_eq!(used_idx(rx), 2);
}
