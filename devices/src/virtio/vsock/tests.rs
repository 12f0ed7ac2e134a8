use super::connection::BUF_ALLOC;
use super::packet::{op, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::virtio::test_utils::{mem, CountingIrq, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::tempdir::TempDir;

const QSIZE: u16 = 16;
const SLOT: u64 = 0x11000;
const TXBUF: u64 = 0x10_0000;
const RXBUF: u64 = 0x40_0000;
const EVBUF: u64 = 0x80_0000;
const GUEST_CID: u64 = 3;

/// A split virtqueue as the driver sees it: descriptor table at `base`, available
/// ring at `base + 0x100`, used ring at `base + 0x200`.
struct Ring {
    base: u64,
    next_desc: u16,
    avail: u16,
    seen: u16,
}

impl Ring {
    fn new(at: u64) -> Self {
        Self {
            base: at,
            next_desc: 0,
            avail: 0,
            seen: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.set_size(QSIZE);
        q.set_desc_table_address(Some(self.base as u32), Some((self.base >> 32) as u32));
        let avail = self.base + 0x100;
        q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        let used = self.base + 0x200;
        q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Posts a chain of `(addr, len, write)`; returns its head.
    fn post(&mut self, mem: &Mem, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = self.base + 16 * u64::from(idx);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj((idx + 1) % QSIZE, GuestAddress(at + 14))
                .unwrap();
        }
        self.next_desc = (head + descs.len() as u16) % QSIZE;
        let slot = self.base + 0x104 + 2 * u64::from(self.avail % QSIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        mem.write_obj(self.avail, GuestAddress(self.base + 0x102))
            .unwrap();
        head
    }

    /// Used entries since the last call, as `(id, len)`.
    fn take_used(&mut self, mem: &Mem) -> Vec<(u32, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.base + 0x202)).unwrap();
        let mut out = Vec::new();
        while self.seen != idx {
            let at = self.base + 0x204 + 8 * u64::from(self.seen % QSIZE);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id, len));
            self.seen = self.seen.wrapping_add(1);
        }
        out
    }
}

struct Rig {
    dev: Vsock,
    mem: Mem,
    rx: Ring,
    tx: Ring,
    ev: Ring,
    dir: TempDir,
    /// Guest-side credit fields put in every packet.
    guest_buf_alloc: u32,
    guest_fwd_cnt: u32,
}

fn rig() -> Rig {
    let dir = TempDir::new_with_prefix("/tmp/kiln-vsock-test-").unwrap();
    let mut dev = Vsock::new(GUEST_CID, &dir.as_path().join("v.sock")).unwrap();
    let mem = mem();
    let (rx, tx, ev) = (Ring::new(0), Ring::new(0x4000), Ring::new(0x8000));
    dev.ack_features(dev.features());
    let queues = vec![rx.queue(), tx.queue(), ev.queue()];
    let irq = Arc::new(CountingIrq::default());
    dev.activate(mem.clone(), queues, Arc::new(Interrupt::new(irq)))
        .unwrap();
    Rig {
        dev,
        mem,
        rx,
        tx,
        ev,
        dir,
        guest_buf_alloc: 1 << 20,
        guest_fwd_cnt: 0,
    }
}

impl Rig {
    fn uds(&self) -> PathBuf {
        self.dir.as_path().join("v.sock")
    }

    fn hdr(&self, op: u16, src_port: u32, dst_port: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: packet::HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: self.guest_buf_alloc,
            fwd_cnt: self.guest_fwd_cnt,
            ..Default::default()
        }
    }

    /// Sends a raw TX chain made of `bytes` in one readable descriptor.
    fn send_raw(&mut self, bytes: &[u8], chain_len: u32) {
        self.mem.write_slice(bytes, GuestAddress(TXBUF)).unwrap();
        self.tx.post(&self.mem, &[(TXBUF, chain_len, false)]);
        self.dev.process_queue(TX_QUEUE);
        assert_eq!(self.tx.take_used(&self.mem).len(), 1, "TX chain returned");
    }

    fn send(&mut self, mut h: Header, data: &[u8]) {
        h.len = data.len() as u32;
        let mut b = h.to_bytes().to_vec();
        b.extend_from_slice(data);
        let n = b.len() as u32;
        self.send_raw(&b, n);
    }

    /// Posts `n` RX buffers of `size` bytes.
    fn post_rx(&mut self, n: usize, size: u32) {
        for _ in 0..n {
            let addr = RXBUF + u64::from(self.rx.next_desc) * SLOT;
            self.rx.post(&self.mem, &[(addr, size, true)]);
        }
        self.dev.process_queue(RX_QUEUE);
    }

    /// Runs backend passes until nothing changes.
    fn pump(&mut self) {
        for _ in 0..8 {
            self.dev.process_backend(0, EventSet::IN);
        }
    }

    /// Packets the device put in RX buffers since the last call.
    fn recv(&mut self) -> Vec<(Header, Vec<u8>)> {
        self.rx
            .take_used(&self.mem)
            .into_iter()
            .map(|(id, len)| {
                let addr = RXBUF + u64::from(id) * SLOT;
                let mut raw = [0u8; HDR_LEN];
                self.mem.read_slice(&mut raw, GuestAddress(addr)).unwrap();
                let h = Header::from_bytes(&raw);
                assert_eq!(len as usize, HDR_LEN + h.len as usize);
                let mut data = vec![0u8; h.len as usize];
                self.mem
                    .read_slice(&mut data, GuestAddress(addr + HDR_LEN as u64))
                    .unwrap();
                (h, data)
            })
            .collect()
    }

    /// A guest-initiated connection from guest port 7000 to a host listener on `port`.
    fn guest_connect(&mut self, port: u32) -> (std::os::unix::net::UnixListener, UnixStream) {
        let mut p = self.uds().into_os_string();
        p.push(format!("_{port}"));
        let l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        self.post_rx(4, 4096);
        self.send(self.hdr(op::REQUEST, 7000, port), &[]);
        let got = self.recv();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.op, op::RESPONSE);
        let (s, _) = l.accept().unwrap();
        (l, s)
    }
}

fn ops(p: &[(Header, Vec<u8>)]) -> Vec<u16> {
    p.iter().map(|(h, _)| h.op).collect()
}

#[test]
fn config_is_guest_cid_and_three_queues() {
    let r = rig();
    assert_eq!(r.dev.device_type(), 19);
    assert_eq!(r.dev.config_space(), &3u64.to_le_bytes());
    assert_eq!(r.dev.queue_max_sizes().len(), 3);
}

#[test]
fn host_initiated_connect_and_data_both_ways() {
    let mut r = rig();
    let mut client = UnixStream::connect(r.uds()).unwrap();
    client.write_all(b"CONNECT 5000\n").unwrap();
    r.post_rx(4, 4096);
    r.pump();
    let got = r.recv();
    assert_eq!(ops(&got), [op::REQUEST]);
    let req = got[0].0;
    assert_eq!((req.dst_cid, req.dst_port, req.src_cid), (3, 5000, 2));
    assert!(req.src_port >= 1 << 30);
    assert_eq!(req.buf_alloc, BUF_ALLOC);

    r.send(r.hdr(op::RESPONSE, 5000, req.src_port), &[]);
    let mut line = [0u8; 64];
    let n = client.read(&mut line).unwrap();
    assert_eq!(&line[..n], format!("OK {}\n", req.src_port).as_bytes());

    client.write_all(b"hello").unwrap();
    r.pump();
    let got = r.recv();
    assert_eq!(ops(&got), [op::RW]);
    assert_eq!(got[0].1, b"hello");
    assert_eq!(got[0].0.dst_port, 5000);

    r.send(r.hdr(op::RW, 5000, req.src_port), b"world");
    let n = client.read(&mut line).unwrap();
    assert_eq!(&line[..n], b"world");
}

#[test]
fn bad_connect_line_closes_host_stream() {
    let mut r = rig();
    let mut client = UnixStream::connect(r.uds()).unwrap();
    client.write_all(b"HELLO 5\n").unwrap();
    r.post_rx(2, 4096);
    r.pump();
    assert!(r.recv().is_empty());
    let mut b = [0u8; 8];
    assert_eq!(client.read(&mut b).unwrap(), 0);
}

#[test]
fn guest_initiated_connect_and_data() {
    let mut r = rig();
    let (_l, mut s) = r.guest_connect(1234);
    r.send(r.hdr(op::RW, 7000, 1234), b"ping");
    let mut b = [0u8; 16];
    let n = s.read(&mut b).unwrap();
    assert_eq!(&b[..n], b"ping");
    s.write_all(b"pong").unwrap();
    r.pump();
    let got = r.recv();
    assert_eq!(ops(&got), [op::RW]);
    assert_eq!(got[0].1, b"pong");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (1234, 7000));
}

#[test]
fn guest_connect_without_listener_gets_rst() {
    let mut r = rig();
    r.post_rx(2, 4096);
    r.send(r.hdr(op::REQUEST, 7000, 99), &[]);
    let got = r.recv();
    assert_eq!(ops(&got), [op::RST]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (99, 7000));
    assert_eq!(r.dev.connections(), 0);
}

#[test]
fn host_data_never_exceeds_guest_credit() {
    let mut r = rig();
    r.guest_buf_alloc = 8192;
    let (_l, mut s) = r.guest_connect(1);
    s.write_all(&vec![0x5a; 100_000]).unwrap();
    r.post_rx(12, 4096 + HDR_LEN as u32);
    r.pump();
    let got = r.recv();
    let data: usize = got.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(data, 8192, "exactly the guest's credit");
    assert_eq!(ops(&got).last(), Some(&op::CREDIT_REQUEST));
    r.pump();
    assert!(r.recv().is_empty(), "nothing more without credit");

    // The guest consumed it all: another 8 KiB may come.
    r.guest_fwd_cnt = 8192;
    r.send(r.hdr(op::CREDIT_UPDATE, 7000, 1), &[]);
    r.pump();
    let data: usize = r.recv().iter().map(|(_, d)| d.len()).sum();
    assert_eq!(data, 8192);
}

#[test]
fn guest_to_host_transfer_larger_than_credit() {
    let mut r = rig();
    let (_l, mut s) = r.guest_connect(2);
    s.set_nonblocking(true).unwrap();
    r.post_rx(8, 4096);
    const TOTAL: usize = 2 << 20;
    let chunk_len = 64 << 10;
    let (mut sent, mut got) = (0usize, 0usize);
    let mut fwd_cnt = 0u32; // the device's, from its latest header
    let mut updates = 0;
    let mut b = vec![0u8; 1 << 16];
    for _ in 0..100_000 {
        for (h, _) in r.recv() {
            assert_ne!(h.op, op::RST);
            assert_eq!(h.buf_alloc, BUF_ALLOC);
            updates += usize::from(h.op == op::CREDIT_UPDATE);
            fwd_cnt = h.fwd_cnt;
            r.post_rx(1, 4096);
        }
        // The guest sends only within the credit it was given.
        let credit = BUF_ALLOC - (sent as u32).wrapping_sub(fwd_cnt);
        if sent < TOTAL && credit as usize >= chunk_len {
            let fill = (sent / chunk_len) as u8;
            r.send(r.hdr(op::RW, 7000, 2), &vec![fill; chunk_len]);
            sent += chunk_len;
            continue;
        }
        match s.read(&mut b) {
            Ok(n) => {
                for (i, &x) in b[..n].iter().enumerate() {
                    assert_eq!(x, ((got + i) / chunk_len) as u8, "byte {}", got + i);
                }
                got += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => r.pump(),
            Err(e) => panic!("{e}"),
        }
        if got == TOTAL {
            break;
        }
    }
    assert_eq!(got, TOTAL);
    assert!(updates > 0, "the guest was told about freed buffer space");
}

#[test]
fn guest_exceeding_credit_is_reset() {
    let mut r = rig();
    let (_l, _s) = r.guest_connect(3);
    r.post_rx(8, 4096);
    let chunk = vec![1u8; 64 << 10];
    let mut reset = false;
    // The host never reads: socket buffer + 256 KiB fill up, then the guest cheats.
    for _ in 0..64 {
        r.send(r.hdr(op::RW, 7000, 3), &chunk);
        if ops(&r.recv()).contains(&op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset);
    assert_eq!(r.dev.connections(), 0);
}

#[test]
fn guest_shutdown_send_then_host_close_ends_with_rst() {
    let mut r = rig();
    let (_l, mut s) = r.guest_connect(4);
    r.send(r.hdr(op::RW, 7000, 4), b"last");
    let mut h = r.hdr(op::SHUTDOWN, 7000, 4);
    h.flags = SHUTDOWN_SEND;
    r.send(h, &[]);
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"last", "host sees EOF after the data");
    assert_eq!(r.dev.connections(), 1, "the other direction is still open");
    s.write_all(b"reply").unwrap();
    drop(s);
    r.pump();
    let got = r.recv();
    assert_eq!(ops(&got), [op::RW, op::SHUTDOWN, op::RST]);
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    assert_eq!(r.dev.connections(), 0);
}

#[test]
fn guest_full_shutdown_gets_rst() {
    let mut r = rig();
    let (_l, _s) = r.guest_connect(5);
    let mut h = r.hdr(op::SHUTDOWN, 7000, 5);
    h.flags = SHUTDOWN_SEND | SHUTDOWN_RCV;
    r.send(h, &[]);
    assert_eq!(ops(&r.recv()), [op::RST]);
    assert_eq!(r.dev.connections(), 0);
}

#[test]
fn guest_rst_closes_host_stream() {
    let mut r = rig();
    let (_l, mut s) = r.guest_connect(6);
    r.send(r.hdr(op::RST, 7000, 6), &[]);
    let mut b = [0u8; 4];
    assert_eq!(s.read(&mut b).unwrap(), 0);
    assert_eq!(r.dev.connections(), 0);
    assert!(r.recv().is_empty(), "no answer to a RST");
}

#[test]
fn malformed_packets_dropped_or_reset() {
    let mut r = rig();
    r.post_rx(8, 4096);
    let base = r.hdr(op::REQUEST, 7000, 1);
    let mut bad_src = base;
    bad_src.src_cid = 4;
    let mut bad_dst = base;
    bad_dst.dst_cid = 5;
    for h in [bad_src, bad_dst] {
        r.send(h, &[]);
        assert!(r.recv().is_empty(), "wrong CIDs are dropped");
    }
    // len beyond the chain, above the maximum, wrong type, unknown op: RST.
    let mut long = r.hdr(op::RW, 7000, 1);
    long.len = 100;
    r.send_raw(&long.to_bytes(), HDR_LEN as u32 + 10);
    long.len = MAX_PAYLOAD + 1;
    r.send_raw(&long.to_bytes(), HDR_LEN as u32 + 10);
    let mut dgram = base;
    dgram.type_ = 2;
    r.send(dgram, &[]);
    let mut unknown = base;
    unknown.op = 99;
    r.send(unknown, &[]);
    let got = r.recv();
    assert_eq!(ops(&got), [op::RST; 4]);
    // Data for no connection: RST; a RST for none: nothing.
    r.send(r.hdr(op::RW, 7000, 77), b"x");
    r.send(r.hdr(op::RST, 7000, 77), &[]);
    assert_eq!(ops(&r.recv()), [op::RST]);
    // Chains of the wrong shape: dropped.
    r.send_raw(&[0u8; 8], 8);
    r.mem
        .write_slice(&base.to_bytes(), GuestAddress(TXBUF))
        .unwrap();
    r.tx.post(
        &r.mem,
        &[(TXBUF, HDR_LEN as u32, false), (TXBUF + 0x1000, 16, true)],
    );
    r.dev.process_queue(TX_QUEUE);
    r.tx.post(&r.mem, &[(0x4000_0000, 64, false)]);
    r.dev.process_queue(TX_QUEUE);
    r.tx.post(&r.mem, &[(TXBUF, 0x2_0000, false)]);
    r.dev.process_queue(TX_QUEUE);
    assert_eq!(r.tx.take_used(&r.mem).len(), 3);
    assert!(r.recv().is_empty());
    assert_eq!(r.dev.connections(), 0);
}

#[test]
fn connection_cap_refuses_with_rst() {
    let mut r = rig();
    r.dev.muxer.set_max_conns(2);
    let mut p = r.uds().into_os_string();
    p.push("_10");
    let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
    r.post_rx(8, 4096);
    for port in 0..3 {
        r.send(r.hdr(op::REQUEST, 7000 + port, 10), &[]);
    }
    assert_eq!(ops(&r.recv()), [op::RESPONSE, op::RESPONSE, op::RST]);
    assert_eq!(r.dev.connections(), 2);
    // Host-initiated connections beyond the cap are closed at once.
    let mut c = UnixStream::connect(r.uds()).unwrap();
    r.pump();
    let mut b = [0u8; 4];
    assert_eq!(c.read(&mut b).unwrap(), 0);
}

#[test]
fn transport_reset_event_and_connections_dropped() {
    let mut r = rig();
    let (_l, mut s) = r.guest_connect(8);
    r.ev.post(&r.mem, &[(EVBUF, 4, true)]);
    r.mem
        .write_obj(0xffff_ffffu32, GuestAddress(EVBUF))
        .unwrap();
    r.dev.send_transport_reset();
    assert_eq!(r.ev.take_used(&r.mem), [(0, 4)]);
    assert_eq!(r.mem.read_obj::<u32>(GuestAddress(EVBUF)).unwrap(), 0);
    assert_eq!(r.dev.connections(), 0);
    let mut b = [0u8; 4];
    assert_eq!(s.read(&mut b).unwrap(), 0);
}

#[test]
fn transport_reset_waits_for_an_event_buffer() {
    let mut r = rig();
    r.dev.send_transport_reset();
    assert!(r.ev.take_used(&r.mem).is_empty());
    r.ev.post(&r.mem, &[(EVBUF, 4, true)]);
    r.dev.process_queue(EVENT_QUEUE);
    assert_eq!(r.ev.take_used(&r.mem), [(0, 4)]);
}

#[test]
fn new_replaces_stale_socket_and_drop_removes_it() {
    let dir = TempDir::new_with_prefix("/tmp/kiln-vsock-test-").unwrap();
    let path = dir.as_path().join("s.sock");
    let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
    drop(stale);
    let dev = Vsock::new(3, &path).unwrap();
    assert!(path.exists());
    drop(dev);
    assert!(!path.exists());
}

#[test]
fn new_refuses_a_regular_file_and_reserved_cids() {
    let dir = TempDir::new_with_prefix("/tmp/kiln-vsock-test-").unwrap();
    let path = dir.as_path().join("file");
    std::fs::write(&path, b"x").unwrap();
    assert!(matches!(Vsock::new(3, &path), Err(Error::NotASocket(_))));
    assert!(path.exists(), "not removed");
    let sock = dir.as_path().join("s.sock");
    for cid in [0, 1, 2, u64::from(u32::MAX)] {
        assert!(matches!(Vsock::new(cid, &sock), Err(Error::Cid(_))));
    }
}
