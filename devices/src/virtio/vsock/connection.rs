//! One vsock stream connection between a guest port and a host Unix stream: its state
//! and the credit accounting of both directions (virtio 1.2 §5.10.6.3).
//!
//! Guest → host: the device advertises [`BUF_ALLOC`] bytes of receive buffer. Data the
//! host stream does not take at once is kept in `tx_buf`, which the guest cannot
//! overflow without breaking the credit rules (a packet that would is a protocol
//! violation: the connection is reset). `fwd_cnt` counts bytes written to the host.
//!
//! Host → guest: nothing is buffered. The host stream is read only into an RX buffer
//! the driver posted, never more than the guest's free credit
//! (`buf_alloc - (rx_cnt - fwd_cnt)` from its latest header); with no credit the stream
//! is not read (not watched for input) until the guest sends a CREDIT_UPDATE.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::{op, Header, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};

/// Receive buffer the device advertises per connection (guest → host bytes in flight).
pub const BUF_ALLOC: u32 = 256 << 10;
/// Send a CREDIT_UPDATE once the guest's view of our free buffer drops below this.
const CREDIT_LOW: u32 = MAX_PAYLOAD;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for its RESPONSE.
    HostInit,
    /// Data flows.
    Established,
}

/// The guest broke the credit rules: it sent more than the free buffer advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditViolation;

/// A connection.
#[derive(Debug)]
pub struct Connection {
    /// The host side.
    pub stream: UnixStream,
    /// Life-cycle state.
    pub state: State,
    /// The host-side port (source port of what the device sends).
    pub local_port: u32,
    /// The guest's port.
    pub peer_port: u32,
    guest_cid: u64,
    /// Guest data not yet written to the host stream.
    tx_buf: VecDeque<u8>,
    /// Bytes received from the guest (wrapping).
    recv_cnt: u32,
    /// Bytes written to the host stream (wrapping).
    fwd_cnt: u32,
    /// The `fwd_cnt` last advertised to the guest.
    sent_fwd_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes sent to the guest (wrapping).
    rx_cnt: u32,
    /// SHUTDOWN flags received from the guest.
    pub peer_shut: u32,
    /// The host stream hit end-of-file (and the guest was told with SHUTDOWN SEND).
    pub host_eof: bool,
    /// The host write side was shut down (after the guest's SHUTDOWN SEND).
    pub host_wr_shut: bool,
    /// Epoll reported the stream readable and it was not read dry yet.
    pub readable: bool,
    /// In the muxer's ready list.
    pub queued: bool,
    /// A CREDIT_REQUEST was sent since the guest last gave credit.
    pub credit_requested: bool,
    /// Events the stream is registered for in the muxer's epoll (empty: not registered).
    pub registered: EventSet,
    /// The stream's epoll token (set by the muxer).
    pub token: u64,
}

impl Connection {
    /// A connection over `stream` between host port `local_port` and guest port
    /// `peer_port` of guest `guest_cid`.
    pub fn new(
        stream: UnixStream,
        state: State,
        local_port: u32,
        peer_port: u32,
        guest_cid: u64,
    ) -> Self {
        Self {
            stream,
            state,
            local_port,
            peer_port,
            guest_cid,
            tx_buf: VecDeque::new(),
            recv_cnt: 0,
            fwd_cnt: 0,
            sent_fwd_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            rx_cnt: 0,
            peer_shut: 0,
            host_eof: false,
            host_wr_shut: false,
            readable: false,
            queued: false,
            credit_requested: false,
            registered: EventSet::empty(),
            token: 0,
        }
    }

    /// Takes the guest's credit fields from a packet it sent on this connection.
    pub fn update_peer(&mut self, hdr: &Header) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// Bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Counts `n` bytes sent to the guest.
    pub fn sent_to_guest(&mut self, n: u32) {
        self.rx_cnt = self.rx_cnt.wrapping_add(n);
    }

    /// Guest data buffered for the host stream.
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// A header from this connection's host end to the guest, advertising the current
    /// credit (which counts as sent).
    pub fn header(&mut self, op: u16, len: u32, flags: u32) -> Header {
        self.sent_fwd_cnt = self.fwd_cnt;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// Whether the guest should be told about buffer space freed since the last header.
    pub fn wants_credit_update(&self) -> bool {
        if self.fwd_cnt == self.sent_fwd_cnt {
            return false;
        }
        let guest_view_used = self.recv_cnt.wrapping_sub(self.sent_fwd_cnt);
        BUF_ALLOC.saturating_sub(guest_view_used) < CREDIT_LOW
    }

    /// Takes guest data for the host stream: written at once as far as the stream
    /// takes it, the rest buffered. Fails when it exceeds the advertised buffer.
    pub fn push_guest_data(&mut self, data: &[u8]) -> Result<std::io::Result<()>, CreditViolation> {
        let free = (BUF_ALLOC as usize).saturating_sub(self.tx_buf.len());
        if data.len() > free {
            return Err(CreditViolation);
        }
        self.recv_cnt = self.recv_cnt.wrapping_add(data.len() as u32);
        let mut rest = data;
        if self.tx_buf.is_empty() {
            match write_some(&mut self.stream, rest) {
                Ok(n) => {
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                    rest = &rest[n..];
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        self.tx_buf.extend(rest);
        Ok(Ok(()))
    }

    /// Writes buffered guest data to the host stream until it is empty or full.
    pub fn flush(&mut self) -> std::io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = write_some(&mut self.stream, front)?;
            if n == 0 {
                break;
            }
            self.tx_buf.drain(..n);
            self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
        }
        Ok(())
    }

    /// Reads host data for the guest into `buf` (the caller bounds it by the credit).
    pub fn read_host(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// Whether data from the host may go to the guest now (credit aside).
    pub fn may_send_data(&self) -> bool {
        self.state == State::Established && !self.host_eof && self.peer_shut & SHUTDOWN_RCV == 0
    }

    /// Whether both directions are finished: the connection can be closed with a RST.
    pub fn is_done(&self) -> bool {
        let guest_done = self.peer_shut & SHUTDOWN_SEND != 0 && self.tx_buf.is_empty();
        let host_done = self.host_eof || self.peer_shut & SHUTDOWN_RCV != 0;
        guest_done && host_done
    }

    /// What the stream should be watched for now.
    pub fn interest(&self) -> EventSet {
        let mut s = EventSet::empty();
        if self.may_send_data() && !self.readable && self.peer_credit() > 0 {
            s |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            s |= EventSet::OUT;
        }
        s
    }

    /// The CREDIT_UPDATE / RESPONSE / ... header for control op `op`.
    pub fn control(&mut self, op: u16) -> Header {
        self.header(op, 0, 0)
    }

    /// The RST for this connection.
    pub fn rst(&mut self) -> Header {
        self.control(op::RST)
    }
}

/// Writes what the stream takes now: 0 when it is full.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> std::io::Result<usize> {
    loop {
        match stream.write(data) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(0),
            r => return r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Connection::new(a, State::Established, 1024, 5000, 3), b)
    }

    fn peer(buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            buf_alloc,
            fwd_cnt,
            ..Default::default()
        }
    }

    #[test]
    fn credit_is_buf_alloc_minus_in_flight() {
        let (mut c, _b) = conn();
        assert_eq!(c.peer_credit(), 0, "no credit before the guest says so");
        c.update_peer(&peer(1000, 0));
        c.sent_to_guest(600);
        assert_eq!(c.peer_credit(), 400);
        c.update_peer(&peer(1000, 500));
        assert_eq!(c.peer_credit(), 900);
        // A guest that shrinks its buffer below what is in flight has no credit.
        c.update_peer(&peer(50, 500));
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn credit_survives_counter_wrap() {
        let (mut c, _b) = conn();
        c.sent_to_guest(u32::MAX - 10);
        c.update_peer(&peer(100, u32::MAX - 10));
        c.sent_to_guest(30);
        assert_eq!(c.peer_credit(), 70);
    }

    #[test]
    fn guest_data_over_advertised_buffer_is_a_violation() {
        let (mut c, _b) = conn();
        // The peer never reads: fill its socket, then our buffer.
        let chunk = vec![7u8; 64 << 10];
        let mut total = 0usize;
        while c.buffered() + chunk.len() <= BUF_ALLOC as usize {
            c.push_guest_data(&chunk).unwrap().unwrap();
            total += chunk.len();
            assert!(total < 64 << 20, "stream never filled up");
        }
        let free = BUF_ALLOC as usize - c.buffered();
        assert_eq!(
            c.push_guest_data(&vec![0; free + 1]).err(),
            Some(CreditViolation)
        );
    }

    #[test]
    fn flush_advances_fwd_cnt_and_credit_update_when_low() {
        let (mut c, mut b) = conn();
        let big = vec![1u8; BUF_ALLOC as usize];
        c.push_guest_data(&big).unwrap().unwrap();
        assert!(c.buffered() > 0, "socket buffer smaller than 256 KiB");
        assert!(c.interest().contains(EventSet::OUT));
        let mut sink = vec![0u8; BUF_ALLOC as usize];
        let mut read = 0;
        while c.buffered() > 0 {
            read += b.read(&mut sink).unwrap();
            c.flush().unwrap();
        }
        assert!(c.wants_credit_update());
        let h = c.control(op::CREDIT_UPDATE);
        assert_eq!(h.fwd_cnt, BUF_ALLOC);
        assert!(!c.wants_credit_update());
        assert!(!c.interest().contains(EventSet::OUT));
        let _ = read;
    }

    #[test]
    fn no_input_interest_without_credit_or_after_eof() {
        let (mut c, _b) = conn();
        assert!(!c.interest().contains(EventSet::IN));
        c.update_peer(&peer(4096, 0));
        assert!(c.interest().contains(EventSet::IN));
        c.host_eof = true;
        assert!(!c.interest().contains(EventSet::IN));
    }

    #[test]
    fn done_after_both_directions_close() {
        let (mut c, _b) = conn();
        c.peer_shut = SHUTDOWN_SEND;
        assert!(!c.is_done());
        c.host_eof = true;
        assert!(c.is_done());
    }
}
