//! What a virtio-net device keeps across a snapshot.
//!
//! The TAP is opened again by the VMM ([`Net::new`]); the MAC address the guest saw is
//! restored into the configuration space. The negotiated features (and with them the
//! TAP's offloads, set again at activation) travel in the transport's state
//! ([`crate::virtio::MmioState::driver_features`]).
//!
//! Ring positions are exact: the state is taken with the device locked, between passes.
//! A TX frame the TAP refused (`EAGAIN`) is the last chain the device popped and has
//! not returned: the saved TX position is moved back by one, so the restored device
//! pops and sends that frame again. A frame read from the TAP but not yet delivered to
//! an RX buffer is dropped (no RX chain was taken for it; the network is lossy anyway).
//! Both rate limiters restart with full buckets.

use serde::{Deserialize, Serialize};
use virtio_queue::QueueT;

use super::{Net, NetBackend};
use crate::snapshot::{DeviceState, StateError};
use crate::virtio::QueuePosition;

/// A virtio-net device's own state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The MAC address in the configuration space.
    pub mac: [u8; 6],
}

impl<B: NetBackend> Net<B> {
    pub(super) fn save(&self) -> NetState {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        NetState { mac }
    }

    pub(super) fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Net(s) = state else {
            return Err(StateError::DeviceKind {
                saved: state.kind(),
                actual: "virtio-net",
            });
        };
        if self.config[..6] != s.mac {
            log::info!(
                "virtio-net: restoring the snapshot's MAC address {:02x?}",
                s.mac
            );
        }
        self.config[..6].copy_from_slice(&s.mac);
        Ok(())
    }

    pub(super) fn positions(&self) -> Option<Vec<QueuePosition>> {
        let act = self.active.as_ref()?;
        let mut tx = QueuePosition::of(&act.tx);
        if self.tx_pending.is_some() {
            // Not sent and not returned: the restored device pops it again.
            tx.next_avail = act.tx.next_avail().wrapping_sub(1);
        }
        Some(vec![QueuePosition::of(&act.rx), tx])
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{frame, rig, BUF};
    use super::super::*;
    use crate::snapshot::{BlockState, DeviceState, StateError};
    use crate::virtio::test_utils::*;
    use crate::virtio::QueuePosition;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn state_holds_the_mac() {
        let r = rig();
        assert_eq!(
            r.net.device_state().unwrap(),
            DeviceState::Net(NetState {
                mac: [2, 0, 0, 0, 0, 1]
            })
        );
    }

    #[test]
    fn restore_sets_the_saved_mac() {
        let mut r = rig();
        let saved = DeviceState::Net(NetState {
            mac: [2, 0x4b, 9, 8, 7, 6],
        });
        r.net.restore_device_state(&saved).unwrap();
        assert_eq!(&r.net.config_space()[..6], &[2, 0x4b, 9, 8, 7, 6]);
    }

    #[test]
    fn block_state_is_refused() {
        let mut r = rig();
        let blk = DeviceState::Block(BlockState {
            capacity_sectors: 8,
            id: [0; 20],
        });
        assert!(matches!(
            r.net.restore_device_state(&blk),
            Err(StateError::DeviceKind {
                saved: "virtio-blk",
                ..
            })
        ));
    }

    #[test]
    fn a_refused_tx_frame_is_saved_as_not_yet_popped() {
        let mut r = rig();
        let f = frame(100, 0x11);
        r.mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        add_chain(r.tx, 0, &[(BUF, 100, false)]);
        r.net.process_queue(TX_QUEUE);
        assert_eq!(used_idx(r.tx), 1);
        r.st.lock().unwrap().block_tx = true;
        add_chain(r.tx, 1, &[(BUF, 100, false)]);
        r.net.process_queue(TX_QUEUE);
        assert!(r.net.tx_pending.is_some());
        let p = r.net.queue_positions().unwrap();
        assert_eq!(
            p[TX_QUEUE],
            QueuePosition {
                next_avail: 1,
                next_used: 1
            }
        );
        let none = QueuePosition {
            next_avail: 0,
            next_used: 0,
        };
        assert_eq!(p[RX_QUEUE], none);
    }

    /// A backend that records sent frames and refuses them while `blocked`.
    struct Sent {
        frames: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
        blocked: Arc<std::sync::atomic::AtomicBool>,
        evt: vmm_sys_util::eventfd::EventFd,
    }

    impl Sent {
        fn new() -> Self {
            Self {
                frames: Arc::default(),
                blocked: Arc::default(),
                evt: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            }
        }
    }

    impl AsRawFd for Sent {
        fn as_raw_fd(&self) -> RawFd {
            self.evt.as_raw_fd()
        }
    }

    impl NetBackend for Sent {
        fn read_frame(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
        fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.blocked.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            self.frames.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
    }

    #[test]
    fn a_restored_device_sends_the_refused_tx_frame_again() {
        use crate::bus::BusDevice;
        use crate::virtio::{status, MmioTransport};
        const DRIVER_OK_ALL: u32 =
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
        let mem = mem();
        let leaked: &'static Mem = Box::leak(Box::new(mem.clone()));
        let rx = Box::leak(Box::new(MockSplitQueue::create(
            &**leaked,
            GuestAddress(0),
            16,
        )));
        let tx = Box::leak(Box::new(MockSplitQueue::create(
            &**leaked,
            GuestAddress(0x8000),
            16,
        )));
        let irq = Arc::new(CountingIrq::default());
        let mac = [2, 0, 0, 0, 0, 7];
        let backend = Sent::new();
        let blocked = backend.blocked.clone();
        let mut t =
            MmioTransport::new(Net::new(backend, mac).unwrap(), mem.clone(), irq.clone()).unwrap();
        fn w(t: &mut MmioTransport<Net<Sent>>, off: u64, v: u32) {
            t.write(off, &v.to_le_bytes());
        }
        w(&mut t, 0x70, status::ACKNOWLEDGE);
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1); // VERSION_1
        w(&mut t, 0x70, DRIVER_OK_ALL & !status::DRIVER_OK);
        for (i, vq) in [&*rx, &*tx].iter().enumerate() {
            w(&mut t, 0x30, i as u32);
            w(&mut t, 0x38, 16);
            w(&mut t, 0x80, vq.desc_table_addr().0 as u32);
            w(&mut t, 0x90, vq.avail_addr().0 as u32);
            w(&mut t, 0xa0, vq.used_addr().0 as u32);
            w(&mut t, 0x44, 1);
        }
        w(&mut t, 0x70, DRIVER_OK_ALL);
        assert!(t.is_activated());

        let (first, second) = (frame(64, 0x11), frame(80, 0x22));
        r_write(&mem, &first, BUF);
        r_write(&mem, &second, BUF + 0x1000);
        add_chain(tx, 0, &[(BUF, 64, false)]);
        w(&mut t, 0x50, TX_QUEUE as u32);
        t.run_queues();
        assert_eq!(used_idx(tx), 1);
        blocked.store(true, std::sync::atomic::Ordering::SeqCst);
        add_chain(tx, 1, &[(BUF + 0x1000, 80, false)]);
        w(&mut t, 0x50, TX_QUEUE as u32);
        t.run_queues();
        assert_eq!(used_idx(tx), 1, "the refused frame is not returned");

        let saved = t.state().unwrap();
        assert_eq!(
            (
                saved.queues[TX_QUEUE].next_avail,
                saved.queues[TX_QUEUE].next_used
            ),
            (1, 1)
        );
        drop(t);
        let backend = Sent::new();
        let sent = backend.frames.clone();
        let mut t =
            MmioTransport::restore(Net::new(backend, mac).unwrap(), mem, irq, &saved).unwrap();
        t.run_queues();
        assert_eq!(*sent.lock().unwrap(), vec![second]);
        assert_eq!(used_idx(tx), 2);
        assert_eq!(used(tx, 1), (1, 0));
    }

    fn r_write(mem: &Mem, data: &[u8], at: u64) {
        mem.write_slice(data, GuestAddress(at)).unwrap();
    }
}
