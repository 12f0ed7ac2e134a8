//! The receive path: frames from the backend into the driver's RX buffers.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;

use log::{error, warn};
use virtio_queue::{QueueOwnedT, QueueT};

use super::{Net, NetBackend, VNET_HDR_LEN};
use crate::metrics::{add, inc};
use crate::virtio::chain;
use crate::virtio::queue::{self, PassBudget, PassEnd, QueueBroken};

impl<B: NetBackend> Net<B> {
    /// Moves frames from the backend into RX buffers while both exist and the rate
    /// limiter lets them through (one bounded pass).
    ///
    /// A frame is read from the backend only when a buffer is posted for it, and charged
    /// to the RX limiter once, before it is delivered; a refused frame stays in `rx_buf`
    /// until the limiter's timer fires (the backend is not watched meanwhile).
    pub(super) fn process_rx(&mut self) -> bool {
        let Some(act) = self.active.as_mut().filter(|a| !a.interrupt.needs_reset()) else {
            return false;
        };
        let mem = act.mem.clone();
        let q = &mut act.rx;
        let m = &*self.metrics;
        let mut budget = PassBudget::new(q.size());
        let mut used = false;
        let end = loop {
            if !budget.turn() {
                break PassEnd::Yielded;
            }
            if self.rx_len.is_none() {
                // Take a frame from the backend only when a buffer is there for it.
                let avail = match q.avail_idx(&*mem, Ordering::Acquire) {
                    Ok(i) => i.0 != q.next_avail(),
                    Err(e) => break PassEnd::Broken(QueueBroken::Avail(e)),
                };
                if !avail {
                    // Out of buffers: ask for a notification, re-checking for a race.
                    match queue::rearm(q, &mem) {
                        Ok(true) => continue,
                        Ok(false) => {
                            self.rx_wanted = false;
                            break PassEnd::Drained;
                        }
                        Err(e) => break PassEnd::Broken(e),
                    }
                }
                match self.backend.read_frame(&mut self.rx_buf) {
                    Ok(n) => {
                        self.rx_len = Some(n);
                        self.rx_paid = false;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break PassEnd::Blocked,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        inc(&m.rx_fails);
                        error!("virtio-net: backend read failed: {e}");
                        break PassEnd::Blocked;
                    }
                }
            }
            let Some(n) = self.rx_len else {
                break PassEnd::Blocked;
            };
            if !self.rx_paid {
                if self.rx_limiter.is_blocked() {
                    break PassEnd::Blocked;
                }
                if !self.rx_limiter.consume(1, n as u64) {
                    inc(&m.rx_rate_limiter_throttled);
                    break PassEnd::Blocked;
                }
                self.rx_paid = true;
            }
            let c = match queue::pop(q, &mem) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    inc(&m.no_rx_avail_buffer);
                    self.rx_wanted = false;
                    break PassEnd::Drained;
                }
                Err(e) => break PassEnd::Broken(e),
            };
            let head = c.head_index();
            let len = match chain::parse(&mem, c, u64::from(u32::MAX)) {
                Ok(p) if p.readable.len() == 0 && p.writable.len() >= VNET_HDR_LEN as u64 => {
                    if (n as u64) > p.writable.len() || n < VNET_HDR_LEN {
                        warn!(
                            "virtio-net: dropping a {n}-byte frame: RX buffer holds {} bytes",
                            p.writable.len()
                        );
                        inc(&m.rx_fails);
                        q.go_to_previous_position();
                        self.rx_len = None;
                        continue;
                    }
                    // num_buffers = 1 (§5.1.6.4).
                    self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
                    self.rx_len = None;
                    match p.writable.write_at(&mem, 0, &self.rx_buf[..n]) {
                        Ok(()) => {
                            inc(&m.rx_packets_count);
                            add(&m.rx_bytes_count, n as u64);
                            n as u32
                        }
                        Err(e) => {
                            inc(&m.rx_fails);
                            warn!("virtio-net: cannot write RX frame: {e}");
                            0
                        }
                    }
                }
                Ok(_) => {
                    inc(&m.rx_fails);
                    warn!("virtio-net: RX chain {head} is not a device-writable buffer of >= 12 bytes");
                    0
                }
                Err(rej) => {
                    inc(&m.rx_fails);
                    warn!("virtio-net: malformed RX chain {head}: {}", rej.error);
                    0
                }
            };
            if let Err(e) = queue::add_used(q, &mem, head, len) {
                break PassEnd::Broken(e);
            }
            used = true;
            budget.spend(u64::from(len));
        };
        Self::end_pass(act, true, used, end, m)
    }
}
