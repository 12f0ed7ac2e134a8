//! The transmit path: frames from the driver's TX buffers to the backend.

use std::io::ErrorKind;

use log::warn;
use virtio_queue::{QueueOwnedT, QueueT};

use super::{Net, NetBackend, MAX_FRAME_LEN, VNET_HDR_LEN};
use crate::metrics::{add, inc};
use crate::virtio::queue::{self, PassBudget, PassEnd};
use crate::virtio::{chain, Mem};

impl<B: NetBackend> Net<B> {
    /// Reads TX chain `c` into `tx_buf`; the frame's length, or None for a bad chain.
    fn read_tx(&mut self, mem: &Mem, c: queue::Chain<'_>) -> Option<usize> {
        let head = c.head_index();
        let n = match chain::parse(mem, c, MAX_FRAME_LEN as u64) {
            Ok(p) if p.writable.len() == 0 && p.readable.len() >= VNET_HDR_LEN as u64 => {
                // parse() bounded the length by MAX_FRAME_LEN == tx_buf.len().
                let n = p.readable.len() as usize;
                match p.readable.read_at(mem, 0, &mut self.tx_buf[..n]) {
                    Ok(()) => Some(n),
                    Err(e) => {
                        warn!("virtio-net: cannot read TX chain {head}: {e}");
                        None
                    }
                }
            }
            Ok(_) => {
                warn!("virtio-net: TX chain {head} is not a readable frame of >= 12 bytes");
                None
            }
            Err(rej) => {
                warn!("virtio-net: malformed TX chain {head}: {}", rej.error);
                None
            }
        };
        if n.is_none() {
            inc(&self.metrics.tx_malformed_frames);
        }
        n
    }

    /// Sends the frame in `tx_buf`; false when the backend is full (keep it pending).
    fn send_tx(&mut self, len: usize) -> bool {
        match self.backend.write_frame(&self.tx_buf[..len]) {
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => {
                inc(&self.metrics.tx_fails);
                warn!("virtio-net: dropping TX frame: {e}");
                true
            }
            Ok(_) => {
                inc(&self.metrics.tx_packets_count);
                add(&self.metrics.tx_bytes_count, len as u64);
                true
            }
        }
    }

    /// Sends TX chains to the backend until the queue is empty, the backend is full,
    /// the rate limiter refuses a frame or the pass budget is spent.
    ///
    /// A frame is charged to the TX limiter before it is written; a refused one goes
    /// back on the ring and is read again after the limiter's timer fires.
    pub(super) fn process_tx(&mut self) -> bool {
        let Some(act) = self.active.as_ref().filter(|a| !a.interrupt.needs_reset()) else {
            return false;
        };
        let mem = act.mem.clone();
        let mut budget = PassBudget::new(act.tx.size());
        let mut used = false;
        let end = loop {
            let (head, len) = match self.tx_pending.take() {
                Some(pending) => pending,
                None => {
                    if self.tx_limiter.is_blocked() {
                        break PassEnd::Blocked;
                    }
                    let Some(act) = self.active.as_mut() else {
                        break PassEnd::Drained;
                    };
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
                    let len = self.read_tx(&mem, c).unwrap_or(0);
                    if len > 0 && !self.tx_limiter.consume(1, len as u64) {
                        if let Some(act) = self.active.as_mut() {
                            act.tx.go_to_previous_position();
                        }
                        inc(&self.metrics.tx_rate_limiter_throttled);
                        break PassEnd::Blocked;
                    }
                    (head, len)
                }
            };
            if len > 0 && !self.send_tx(len) {
                self.tx_pending = Some((head, len));
                break PassEnd::Blocked;
            }
            let Some(act) = self.active.as_mut() else {
                break PassEnd::Drained;
            };
            if let Err(e) = queue::add_used(&mut act.tx, &mem, head, 0) {
                break PassEnd::Broken(e);
            }
            used = true;
            if !budget.spend(len as u64) {
                break PassEnd::Yielded;
            }
        };
        match self.active.as_mut() {
            Some(act) => Self::end_pass(act, false, used, end, &self.metrics),
            None => false,
        }
    }
}
