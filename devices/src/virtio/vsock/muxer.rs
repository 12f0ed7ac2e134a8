//! The host side of the vsock device, Firecracker's hybrid scheme on Unix sockets.
//!
//! Host-initiated: a host program connects to the listening socket at `uds_path` and
//! writes `CONNECT <port>\n`; the device allocates a host-side port, sends REQUEST to
//! the guest's `port` and, on the guest's RESPONSE, writes `OK <host port>\n` back.
//! Guest-initiated: a REQUEST to CID 2 port P connects (non-blocking) to
//! `<uds_path>_<P>`; a failure is answered with RST.
//!
//! All sockets sit in one epoll of the muxer's own; its fd is the device's single
//! backend fd, so the set of sockets can change without the device thread's event loop
//! knowing. Streams are registered only for what they can make progress on (input
//! while the guest has credit, output while guest data is buffered); a readable stream
//! is dropped from the epoll until it is read dry, so no readiness spins the loop while
//! the guest has no RX buffers.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use log::debug;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, State};
use super::packet::{op, Header, PacketError, SHUTDOWN_RCV, SHUTDOWN_SEND};

/// Connections (plus host streams still handshaking) at most; more are refused.
pub const MAX_CONNS: usize = 1024;
/// Control packets waiting for RX buffers at most; more are dropped.
const MAX_CONTROL: usize = 4 * MAX_CONNS;
/// Epoll events handled per backend pass.
const EVENTS_PER_PASS: usize = 64;
/// Longest `CONNECT <port>\n` line.
const MAX_LINE: usize = 32;
/// First host-side port handed out to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const TOKEN_LISTENER: u64 = u64::MAX;

/// (host-side port, guest port).
type Key = (u32, u32);

/// A host stream that connected to `uds_path` and has not finished its CONNECT line.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The host side: listening socket, connections and packets waiting for the guest.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    conns: HashMap<Key, Connection>,
    /// Epoll token of each connection's stream.
    tokens: HashMap<u64, Key>,
    pending: HashMap<u64, Pending>,
    next_token: u64,
    next_local_port: u32,
    control: VecDeque<Header>,
    ready: VecDeque<Key>,
    max_conns: usize,
}

impl Muxer {
    /// A muxer for guest `guest_cid` serving `listener` (bound at `uds_path`).
    pub fn new(guest_cid: u64, uds_path: &Path, listener: UnixListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
        )?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            epoll,
            conns: HashMap::new(),
            tokens: HashMap::new(),
            pending: HashMap::new(),
            next_token: 0,
            next_local_port: FIRST_LOCAL_PORT,
            control: VecDeque::new(),
            ready: VecDeque::new(),
            max_conns: MAX_CONNS,
        })
    }

    /// The epoll fd covering every socket.
    pub fn epoll_fd(&self) -> i32 {
        self.epoll.as_raw_fd()
    }

    /// Open connections (for tests and metrics).
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Lowers the connection limit (tests).
    #[cfg(test)]
    pub fn set_max_conns(&mut self, n: usize) {
        self.max_conns = n;
    }

    /// Drops every connection and handshaking stream and every queued packet.
    pub fn clear(&mut self) {
        self.conns.clear();
        self.tokens.clear();
        self.pending.clear();
        self.control.clear();
        self.ready.clear();
    }

    /// Whether a packet for the guest may be ready (an RX buffer is worth taking).
    pub fn has_rx_work(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    fn push_control(&mut self, h: Header) {
        if self.control.len() < MAX_CONTROL {
            self.control.push_back(h);
        } else {
            debug!("virtio-vsock: control queue full, dropping op {}", h.op);
        }
    }

    /// Handles up to [`EVENTS_PER_PASS`] ready sockets. Returns true when more may be
    /// ready (the epoll fd stays readable, so the caller's loop comes back anyway).
    pub fn process_events(&mut self) -> bool {
        let mut events = [EpollEvent::default(); EVENTS_PER_PASS];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                debug!("virtio-vsock: epoll_wait: {e}");
                return false;
            }
        };
        for ev in &events[..n] {
            let (token, set) = (ev.data(), ev.event_set());
            if token == TOKEN_LISTENER {
                self.accept();
            } else if self.pending.contains_key(&token) {
                self.pending_input(token);
            } else if let Some(&key) = self.tokens.get(&token) {
                self.conn_event(key, set);
            }
        }
        n == EVENTS_PER_PASS
    }

    fn accept(&mut self) {
        for _ in 0..16 {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!("virtio-vsock: accept: {e}");
                    return;
                }
            };
            if self.conns.len() + self.pending.len() >= self.max_conns {
                debug!("virtio-vsock: connection limit reached, closing a host connection");
                continue;
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.token();
            let ev = EpollEvent::new(EventSet::IN, token);
            if self
                .epoll
                .ctl(ControlOperation::Add, stream.as_raw_fd(), ev)
                .is_ok()
            {
                let line = Vec::with_capacity(MAX_LINE);
                self.pending.insert(token, Pending { stream, line });
            }
        }
    }

    /// Reads the CONNECT line byte by byte (so no data after it is taken).
    fn pending_input(&mut self, token: u64) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut port = None;
        let mut drop_it = false;
        loop {
            let mut b = [0u8; 1];
            match p.stream.read(&mut b) {
                Ok(1) if b[0] == b'\n' => {
                    port = parse_connect(&p.line);
                    drop_it = port.is_none();
                    break;
                }
                Ok(1) if p.line.len() < MAX_LINE => p.line.push(b[0]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                _ => {
                    drop_it = true;
                    break;
                }
            }
        }
        if !drop_it && port.is_none() {
            return;
        }
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            p.stream.as_raw_fd(),
            EpollEvent::default(),
        );
        let Some(peer_port) = port else {
            debug!("virtio-vsock: bad CONNECT line from a host connection");
            return;
        };
        let Some(local) = self.alloc_local_port(peer_port) else {
            return;
        };
        let key = (local, peer_port);
        let mut c = Connection::new(p.stream, State::HostInit, local, peer_port, self.guest_cid);
        let req = c.control(op::REQUEST);
        self.insert(key, c);
        self.push_control(req);
    }

    /// A fresh epoll token (never the listener's).
    fn token(&mut self) -> u64 {
        self.next_token = (self.next_token + 1) % TOKEN_LISTENER;
        self.next_token
    }

    fn insert(&mut self, key: Key, mut c: Connection) {
        c.token = self.token();
        self.tokens.insert(c.token, key);
        self.conns.insert(key, c);
    }

    /// Forgets `key` (its stream closes, leaving the epoll with it).
    fn remove(&mut self, key: Key) -> Option<Connection> {
        let c = self.conns.remove(&key)?;
        self.tokens.remove(&c.token);
        Some(c)
    }

    fn alloc_local_port(&mut self, peer_port: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNS {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer_port)) {
                return Some(p);
            }
        }
        None
    }

    fn conn_event(&mut self, key: Key, set: EventSet) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let watched_in = c.registered.contains(EventSet::IN);
        if set.contains(EventSet::OUT)
            || (!watched_in && set.intersects(EventSet::HANG_UP | EventSet::ERROR))
        {
            let res = c.flush();
            let stuck = !watched_in && set.intersects(EventSet::HANG_UP | EventSet::ERROR);
            if res.is_err() || (stuck && c.buffered() > 0) {
                self.reset(key);
                return;
            }
        }
        if watched_in && set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            c.readable = true;
            if !c.queued {
                c.queued = true;
                self.ready.push_back(key);
            }
        }
        self.after_change(key);
    }

    /// Closes `key` and tells the guest with a RST.
    fn reset(&mut self, key: Key) {
        if let Some(mut c) = self.remove(key) {
            let h = c.rst();
            self.push_control(h);
        }
    }

    /// After anything changed on `key`: shuts the host write side once the guest is
    /// done sending, sends a due CREDIT_UPDATE, closes a finished connection and brings
    /// the epoll registration in line.
    fn after_change(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if c.peer_shut & SHUTDOWN_SEND != 0 && c.buffered() == 0 && !c.host_wr_shut {
            c.host_wr_shut = true;
            let _ = c.stream.shutdown(Shutdown::Write);
        }
        if c.is_done() {
            self.reset(key);
            return;
        }
        let update = (c.wants_credit_update() && c.state == State::Established)
            .then(|| c.control(op::CREDIT_UPDATE));
        if c.readable && !c.queued && c.may_send_data() && c.peer_credit() > 0 {
            c.queued = true;
            self.ready.push_back(key);
        }
        let want = c.interest();
        if let Some(h) = update {
            self.push_control(h);
        }
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if want == c.registered {
            return;
        }
        let fd = c.stream.as_raw_fd();
        let ev = EpollEvent::new(want, c.token);
        let res = if c.registered.is_empty() {
            self.epoll.ctl(ControlOperation::Add, fd, ev)
        } else if want.is_empty() {
            self.epoll.ctl(ControlOperation::Delete, fd, ev)
        } else {
            self.epoll.ctl(ControlOperation::Modify, fd, ev)
        };
        match res {
            Ok(()) => c.registered = want,
            Err(e) => {
                debug!("virtio-vsock: epoll_ctl: {e}");
                self.reset(key);
            }
        }
    }

    /// Answers a packet the device could not accept (see [`PacketError::deserves_rst`]).
    pub fn reject(&mut self, err: &PacketError, hdr: Option<Header>) {
        debug!("virtio-vsock: dropping TX packet: {err}");
        if let Some(h) = hdr.filter(|h| err.deserves_rst() && h.op != op::RST) {
            let key = (h.dst_port, h.src_port);
            if self.conns.contains_key(&key) {
                self.reset(key);
            } else {
                self.push_control(h.reset_reply());
            }
        }
    }

    /// Handles a valid packet from the guest (`payload`: the RW data).
    pub fn guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.op == op::REQUEST {
            self.guest_connect(hdr);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if hdr.op != op::RST {
                self.push_control(hdr.reset_reply());
            }
            return;
        };
        c.update_peer(hdr);
        match hdr.op {
            op::RESPONSE if c.state == State::HostInit => {
                c.state = State::Established;
                let line = format!("OK {}\n", c.local_port);
                // The stream is empty and the line tiny: a short write means it is gone.
                if !matches!(c.stream.write(line.as_bytes()), Ok(n) if n == line.len()) {
                    self.reset(key);
                    return;
                }
            }
            op::RST => {
                self.remove(key);
                return;
            }
            op::SHUTDOWN => c.peer_shut |= hdr.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND),
            op::RW if c.state == State::Established && c.peer_shut & SHUTDOWN_SEND == 0 => {
                match c.push_guest_data(payload) {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!("virtio-vsock: host stream write: {e}");
                        self.reset(key);
                        return;
                    }
                    Err(_) => {
                        debug!("virtio-vsock: guest exceeded its credit; resetting");
                        self.reset(key);
                        return;
                    }
                }
            }
            op::CREDIT_UPDATE => {}
            op::CREDIT_REQUEST => {
                let h = c.control(op::CREDIT_UPDATE);
                self.push_control(h);
            }
            _ => {
                // RESPONSE when established, RW before RESPONSE or after SHUTDOWN SEND.
                self.reset(key);
                return;
            }
        }
        self.after_change(key);
    }

    fn guest_connect(&mut self, hdr: &Header) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) {
            // A second REQUEST on a live connection: the guest lost track of it.
            self.reset(key);
            return;
        }
        if self.conns.len() + self.pending.len() >= self.max_conns {
            debug!("virtio-vsock: connection limit reached, refusing a guest connection");
            self.push_control(hdr.reset_reply());
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", hdr.dst_port));
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(e) => {
                debug!("virtio-vsock: connect to {path:?}: {e}");
                self.push_control(hdr.reset_reply());
                return;
            }
        };
        let mut c = Connection::new(
            stream,
            State::Established,
            hdr.dst_port,
            hdr.src_port,
            self.guest_cid,
        );
        c.update_peer(hdr);
        let resp = c.control(op::RESPONSE);
        self.insert(key, c);
        self.push_control(resp);
        self.after_change(key);
    }

    /// The next packet for the guest, its payload (if any) read into `buf` (whose
    /// length bounds it): control packets first, then data from ready streams in turn.
    pub fn next_rx(&mut self, buf: &mut [u8]) -> Option<(Header, usize)> {
        if let Some(h) = self.control.pop_front() {
            return Some((h, 0));
        }
        if buf.is_empty() {
            return None; // a header-only RX buffer carries no data
        }
        for _ in 0..self.ready.len() {
            let key = self.ready.pop_front()?;
            let Some(c) = self.conns.get_mut(&key) else {
                continue;
            };
            c.queued = false;
            if !c.may_send_data() {
                c.readable = false;
                self.after_change(key);
                continue;
            }
            let credit = c.peer_credit() as usize;
            if credit == 0 {
                if !c.credit_requested {
                    c.credit_requested = true;
                    return Some((c.control(op::CREDIT_REQUEST), 0));
                }
                continue; // stays readable; queued again when credit arrives
            }
            let n = credit.min(buf.len());
            match c.read_host(&mut buf[..n]) {
                Ok(0) if n > 0 => {
                    c.host_eof = true;
                    c.readable = false;
                    let h = c.header(op::SHUTDOWN, 0, SHUTDOWN_SEND);
                    self.after_change(key);
                    return Some((h, 0));
                }
                Ok(got) => {
                    c.sent_to_guest(got as u32);
                    let h = c.header(op::RW, got as u32, 0);
                    c.queued = true;
                    self.ready.push_back(key);
                    return Some((h, got));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.readable = false;
                    self.after_change(key);
                }
                Err(e) => {
                    debug!("virtio-vsock: host stream read: {e}");
                    self.reset(key);
                    return self.control.pop_front().map(|h| (h, 0));
                }
            }
        }
        None
    }
}

/// The port of a `CONNECT <port>` line (without its newline).
fn parse_connect(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?;
    let s = s.strip_suffix('\r').unwrap_or(s);
    let port = s.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Connects to the Unix stream socket at `path` without blocking: a listener whose
/// backlog is full refuses (`EAGAIN`) instead of stalling the device thread.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(std::io::Error::from(ErrorKind::InvalidInput));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of at least `len` bytes (NUL-terminated
    // path), alive for the call; `owned` is an open socket.
    let r = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect(b"CONNECT "), None);
        assert_eq!(parse_connect(b"CONNECT +5"), None);
        assert_eq!(parse_connect(b"connect 5"), None);
        assert_eq!(parse_connect(&[0xff, 0xfe]), None);
    }

    #[test]
    fn nonblocking_connect_to_missing_socket_fails() {
        let e = connect_nonblocking(Path::new("/nonexistent/kiln-vsock_5")).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
