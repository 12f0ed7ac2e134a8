//! virtio-vsock (virtio 1.2 §5.10) with Firecracker's hybrid host side on Unix sockets.
//!
//! Queues: 0 RX (device → driver packets), 1 TX (driver → device), 2 event
//! (TRANSPORT_RESET). Configuration space: `guest_cid` (u64). Only stream sockets.
//!
//! The host side ([`muxer`]) owns an epoll over the listening socket and every
//! connection's stream; that epoll fd is the device's only backend fd, so connections
//! come and go without the device thread's event loop (or [`super::VirtioSubscriber`])
//! knowing about them.
//!
//! The guest is hostile: a TX packet with a wrong CID is dropped; one with a bad
//! length, type or op is answered with RST; a guest that sends more than the credit
//! it was given loses the connection. Each pass is bounded by [`PassBudget`]; every
//! packet queued for the guest is bounded (`muxer::MAX_CONNS` connections, a bounded
//! control queue); guest data waits on the host side only up to the credit the device
//! advertised ([`connection::BUF_ALLOC`] per connection).
//!
//! ```ignore
//! let vsock = Vsock::new(3, Path::new("/tmp/v.sock"))?;  // guest CID 3
//! let t = MmioTransport::new(vsock, mem, irq)?;
//! // after a snapshot restore: t.device().send_transport_reset();
//! ```

pub mod connection;
pub mod muxer;
pub mod packet;

use std::os::fd::RawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::EventSet;
use log::{debug, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};

use super::features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};
use super::queue::{self, PassBudget, PassEnd};
use super::{chain, Interrupt, Mem, QueuePosition, VirtioDevice};
use crate::snapshot::{DeviceState, StateError};
use muxer::Muxer;
use packet::{Header, HDR_LEN, MAX_PAYLOAD};

/// virtio device ID of a socket device (§5.10.1).
pub const TYPE_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
/// RX queue index.
pub const RX_QUEUE: usize = 0;
/// TX queue index.
pub const TX_QUEUE: usize = 1;
/// Event queue index.
pub const EVENT_QUEUE: usize = 2;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `virtio_vsock_event.id` of a transport reset (§5.10.6.7).
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// Errors from building a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest CID is reserved (0-2 and `u32::MAX` are not guest CIDs).
    #[error("invalid vsock guest CID {0}: use a number from 3 to 4294967294")]
    Cid(u64),
    /// Something other than a socket is at `uds_path`.
    #[error("vsock uds path {0} exists and is not a socket: remove it or choose another path")]
    NotASocket(PathBuf),
    /// Removing a stale socket or binding the listening socket failed.
    #[error("cannot listen on vsock uds path {path}: {source}: check that its directory exists and is writable, or choose another uds= path")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The device's epoll could not be set up.
    #[error("cannot set up the vsock device's epoll: {0}")]
    Epoll(#[source] std::io::Error),
}

struct Active {
    mem: Mem,
    rx: Queue,
    tx: Queue,
    evq: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio-vsock device.
pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    config: [u8; 8],
    acked_features: u64,
    muxer: Muxer,
    active: Option<Active>,
    /// A TRANSPORT_RESET event waits for an event-queue buffer.
    reset_pending: bool,
    payload: Vec<u8>,
    rx_buf: Vec<u8>,
}

impl Vsock {
    /// A device for guest CID `cid` listening on `uds_path` (a stale socket there is
    /// replaced; any other file is an error).
    pub fn new(cid: u64, uds_path: &Path) -> Result<Self, Error> {
        if cid <= 2 || cid >= u64::from(u32::MAX) {
            return Err(Error::Cid(cid));
        }
        let bind_err = |source| Error::Bind {
            path: uds_path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(uds_path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(uds_path).map_err(bind_err)?;
            }
            Ok(_) => return Err(Error::NotASocket(uds_path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(uds_path).map_err(bind_err)?;
        let muxer = Muxer::new(cid, uds_path, listener).map_err(|e| {
            let _ = std::fs::remove_file(uds_path);
            Error::Epoll(e)
        })?;
        Ok(Self {
            cid,
            uds_path: uds_path.to_path_buf(),
            config: cid.to_le_bytes(),
            acked_features: 0,
            muxer,
            active: None,
            reset_pending: false,
            payload: Vec::with_capacity(MAX_PAYLOAD as usize),
            rx_buf: vec![0; MAX_PAYLOAD as usize],
        })
    }

    /// The guest CID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.muxer.connections()
    }

    /// Tells the driver its connections are gone (event TRANSPORT_RESET, e.g. after a
    /// snapshot restore) and drops every host connection. Delivered now if the driver
    /// posted an event buffer, otherwise when it does.
    pub fn send_transport_reset(&mut self) {
        self.muxer.clear();
        self.reset_pending = true;
        self.process_events();
    }

    fn process_events(&mut self) {
        let Some(act) = self.active.as_mut().filter(|a| !a.interrupt.needs_reset()) else {
            return;
        };
        if !self.reset_pending {
            return;
        }
        let mem = act.mem.clone();
        let end = loop {
            let c = match queue::pop(&mut act.evq, &mem) {
                Ok(Some(c)) => c,
                Ok(None) => match queue::rearm(&mut act.evq, &mem) {
                    Ok(true) => continue,
                    Ok(false) => break PassEnd::Drained,
                    Err(e) => break PassEnd::Broken(e),
                },
                Err(e) => break PassEnd::Broken(e),
            };
            let head = c.head_index();
            let written = match chain::parse(&mem, c, u64::from(u32::MAX)) {
                Ok(p) if p.writable.len() >= 4 => p
                    .writable
                    .write_at(&mem, 0, &EVENT_TRANSPORT_RESET.to_le_bytes())
                    .map(|()| 4)
                    .unwrap_or(0),
                _ => 0,
            };
            if let Err(e) = queue::add_used(&mut act.evq, &mem, head, written) {
                break PassEnd::Broken(e);
            }
            queue::notify_used(&mut act.evq, &mem, &act.interrupt);
            if written == 4 {
                self.reset_pending = false;
                break PassEnd::Drained;
            }
            debug!("virtio-vsock: event buffer {head} too small");
        };
        end_pass(&mut act.evq, &act.mem, &act.interrupt, false, end);
    }

    /// Consumes TX packets (one bounded pass). The guest's TX never waits for the host:
    /// what a host stream does not take is buffered within the advertised credit.
    fn process_tx(&mut self) -> bool {
        let Some(act) = self.active.as_mut().filter(|a| !a.interrupt.needs_reset()) else {
            return false;
        };
        let mem = act.mem.clone();
        let mut budget = PassBudget::new(act.tx.size());
        let mut used = false;
        let max_len = (HDR_LEN as u64) + u64::from(MAX_PAYLOAD);
        let end = loop {
            let c = match queue::pop(&mut act.tx, &mem) {
                Ok(Some(c)) => c,
                Ok(None) => match queue::rearm(&mut act.tx, &mem) {
                    Ok(true) if budget.turn() => continue,
                    Ok(true) => break PassEnd::Yielded,
                    Ok(false) => break PassEnd::Drained,
                    Err(e) => break PassEnd::Broken(e),
                },
                Err(e) => break PassEnd::Broken(e),
            };
            let head = c.head_index();
            let mut bytes = 0;
            match chain::parse(&mem, c, max_len) {
                Ok(p) => {
                    let wr = p.writable.len();
                    match packet::read_tx(&mem, &p.readable, wr, self.cid, &mut self.payload) {
                        Ok(h) => {
                            bytes = self.payload.len() as u64;
                            self.muxer.guest_packet(&h, &self.payload);
                        }
                        Err((e, h)) => self.muxer.reject(&e, h),
                    }
                }
                Err(rej) => debug!("virtio-vsock: malformed TX chain {head}: {}", rej.error),
            }
            if let Err(e) = queue::add_used(&mut act.tx, &mem, head, 0) {
                break PassEnd::Broken(e);
            }
            used = true;
            if !budget.spend(bytes) {
                break PassEnd::Yielded;
            }
        };
        end_pass(&mut act.tx, &act.mem, &act.interrupt, used, end)
    }

    /// Fills RX buffers with packets for the guest (one bounded pass).
    fn process_rx(&mut self) -> bool {
        let Some(act) = self.active.as_mut().filter(|a| !a.interrupt.needs_reset()) else {
            return false;
        };
        let mem = act.mem.clone();
        let mut budget = PassBudget::new(act.rx.size());
        let mut used = false;
        let end = loop {
            if !self.muxer.has_rx_work() {
                break PassEnd::Drained;
            }
            if !budget.turn() {
                break PassEnd::Yielded;
            }
            let c = match queue::pop(&mut act.rx, &mem) {
                Ok(Some(c)) => c,
                Ok(None) => match queue::rearm(&mut act.rx, &mem) {
                    Ok(true) => continue,
                    Ok(false) => break PassEnd::Blocked,
                    Err(e) => break PassEnd::Broken(e),
                },
                Err(e) => break PassEnd::Broken(e),
            };
            let head = c.head_index();
            let p = match chain::parse(&mem, c, u64::from(u32::MAX)) {
                Ok(p) if p.readable.len() == 0 && p.writable.len() >= HDR_LEN as u64 => p,
                Ok(_) => {
                    debug!("virtio-vsock: RX chain {head} is not a writable buffer of >= 44 bytes");
                    if let Err(e) = queue::add_used(&mut act.rx, &mem, head, 0) {
                        break PassEnd::Broken(e);
                    }
                    used = true;
                    continue;
                }
                Err(rej) => {
                    debug!("virtio-vsock: malformed RX chain {head}: {}", rej.error);
                    if let Err(e) = queue::add_used(&mut act.rx, &mem, head, 0) {
                        break PassEnd::Broken(e);
                    }
                    used = true;
                    continue;
                }
            };
            let room = (p.writable.len() - HDR_LEN as u64).min(u64::from(MAX_PAYLOAD)) as usize;
            let Some((hdr, n)) = self.muxer.next_rx(&mut self.rx_buf[..room]) else {
                act.rx.go_to_previous_position();
                break PassEnd::Drained;
            };
            let len = write_rx(&mem, &p.writable, &hdr, &self.rx_buf[..n]);
            if let Err(e) = queue::add_used(&mut act.rx, &mem, head, len) {
                break PassEnd::Broken(e);
            }
            used = true;
            if !budget.spend(u64::from(len)) {
                break PassEnd::Yielded;
            }
        };
        end_pass(&mut act.rx, &act.mem, &act.interrupt, used, end)
    }
}

/// Writes a packet into an RX chain's writable buffers; the used length.
fn write_rx(mem: &Mem, wr: &chain::Segments, hdr: &Header, data: &[u8]) -> u32 {
    let ok = wr.write_at(mem, 0, &hdr.to_bytes()).is_ok()
        && wr.write_at(mem, HDR_LEN as u64, data).is_ok();
    if ok {
        (HDR_LEN + data.len()) as u32
    } else {
        // Cannot happen: parse() checked the buffers lie in guest memory.
        warn!("virtio-vsock: cannot write an RX packet; dropped");
        0
    }
}

/// Notifies used buffers of `q` and turns a broken queue into `DEVICE_NEEDS_RESET`.
/// Returns true when work is left for another pass.
fn end_pass(q: &mut Queue, mem: &Mem, irq: &Interrupt, used: bool, end: PassEnd) -> bool {
    queue::end_pass(q, mem, irq, (used, end), "virtio-vsock: queue")
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn activate(
        &mut self,
        mem: Mem,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), super::Error> {
        let [rx, tx, evq]: [Queue; 3] =
            queues.try_into().map_err(|_| super::Error::QueueCount {
                device: "virtio-vsock",
                want: 3,
            })?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            evq,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.muxer.clear();
        self.reset_pending = false;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        match index {
            RX_QUEUE => self.process_rx(),
            TX_QUEUE => {
                let more_tx = self.process_tx();
                self.process_rx() | more_tx
            }
            EVENT_QUEUE => {
                self.process_events();
                false
            }
            _ => false,
        }
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.epoll_fd()]
    }

    fn backend_interest(&self, _index: usize) -> EventSet {
        if self.active.is_some() {
            EventSet::IN
        } else {
            EventSet::empty()
        }
    }

    fn process_backend(&mut self, _index: usize, _events: EventSet) -> bool {
        if self.active.is_none() {
            return false;
        }
        self.muxer.process_events();
        self.process_rx()
    }

    fn device_state(&self) -> Result<DeviceState, StateError> {
        Ok(DeviceState::Vsock { cid: self.cid })
    }

    fn queue_positions(&self) -> Option<Vec<QueuePosition>> {
        let act = self.active.as_ref()?;
        Some(vec![
            QueuePosition::of(&act.rx),
            QueuePosition::of(&act.tx),
            QueuePosition::of(&act.evq),
        ])
    }

    /// The host side's connections are gone after a restore: the guest is told with a
    /// TRANSPORT_RESET event as soon as it has an event buffer posted.
    fn restore_device_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        match state {
            DeviceState::Vsock { cid } if *cid == self.cid => {
                self.reset_pending = true;
                Ok(())
            }
            DeviceState::Vsock { .. } => Err(StateError::Inconsistent(
                "the snapshot's vsock CID is not this device's: restore with the same CID",
            )),
            other => Err(StateError::DeviceKind {
                saved: other.kind(),
                actual: "virtio-vsock",
            }),
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
mod tests;
