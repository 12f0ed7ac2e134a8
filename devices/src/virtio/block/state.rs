//! What a virtio-blk device keeps across a snapshot.
//!
//! The disk itself is reopened from the configuration by the VMM ([`Block::new`]); its
//! capacity must be the one the guest saw, or the restore fails. The negotiated
//! features (FLUSH, and with it write-back or write-through; DISCARD; WRITE_ZEROES)
//! travel in the transport's state ([`crate::virtio::MmioState::driver_features`]) and
//! are applied again through [`crate::virtio::VirtioDevice::ack_features`].
//!
//! No request is ever half done: a queue pass completes every request it pops (a
//! request the rate limiter refuses goes back on the ring), and the state is taken
//! with the device locked, between passes, so the queue's ring positions say exactly
//! which requests the device has answered. The rate limiter restarts with full buckets.

use serde::{Deserialize, Serialize};

use super::Block;
use crate::snapshot::{DeviceState, StateError};
use crate::virtio::QueuePosition;

/// A virtio-blk device's own state in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockState {
    /// The capacity the guest saw, in 512-byte sectors.
    pub capacity_sectors: u64,
    /// The serial `VIRTIO_BLK_T_GET_ID` answers (zero-padded): the guest keeps seeing
    /// the same one, even when it was derived from an image file that is now a copy.
    pub id: [u8; 20],
}

impl Block {
    pub(super) fn save(&self) -> BlockState {
        BlockState {
            capacity_sectors: self.disk.nsectors,
            id: self.disk.id,
        }
    }

    pub(super) fn restore(&mut self, state: &DeviceState) -> Result<(), StateError> {
        let DeviceState::Block(s) = state else {
            return Err(StateError::DeviceKind {
                saved: state.kind(),
                actual: "virtio-blk",
            });
        };
        if s.capacity_sectors != self.disk.nsectors {
            return Err(StateError::Capacity {
                path: self.disk.path.clone(),
                saved: s.capacity_sectors,
                actual: self.disk.nsectors,
            });
        }
        self.disk.id = s.id;
        Ok(())
    }

    pub(super) fn positions(&self) -> Option<Vec<QueuePosition>> {
        let act = self.active.as_ref()?;
        Some(vec![QueuePosition::of(&act.queue)])
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::VIRTIO_BLK_T_IN;
    use super::super::tests::{image, rig, DATA, HDR, STATUS};
    use super::super::*;
    use crate::snapshot::{DeviceState, StateError};
    use crate::virtio::test_utils::*;
    use crate::virtio::QueuePosition;

    fn block(file: &vmm_sys_util::tempfile::TempFile, id: Option<&str>) -> Block {
        Block::new(BlockConfig {
            path: file.as_path().to_path_buf(),
            id: id.map(str::to_string),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn state_holds_capacity_and_serial() {
        let file = image(8 * 512);
        let blk = block(&file, Some("disk-one"));
        let DeviceState::Block(s) = blk.device_state().unwrap() else {
            panic!("not a block state");
        };
        assert_eq!(s.capacity_sectors, 8);
        assert_eq!(&s.id[..8], b"disk-one");
        assert!(s.id[8..].iter().all(|&b| b == 0));
    }

    #[test]
    fn capacity_mismatch_is_refused_naming_the_disk() {
        let small = image(128 * 512);
        let big = image(256 * 512);
        let saved = block(&small, None).device_state().unwrap();
        let mut other = block(&big, None);
        let err = other.restore_device_state(&saved).unwrap_err();
        assert!(matches!(
            err,
            StateError::Capacity {
                saved: 128,
                actual: 256,
                ..
            }
        ));
        let msg = err.to_string();
        assert!(msg.contains(&big.as_path().display().to_string()), "{msg}");
        assert!(
            msg.contains("128 sectors") && msg.contains("256 sectors"),
            "{msg}"
        );
    }

    #[test]
    fn restore_keeps_the_serial_the_guest_saw() {
        let file = image(8 * 512);
        let saved = block(&file, Some("old-serial")).device_state().unwrap();
        let mut blk = block(&file, Some("new-serial"));
        blk.restore_device_state(&saved).unwrap();
        assert_eq!(&blk.disk.id[..10], b"old-serial");
    }

    #[test]
    fn net_state_is_refused() {
        let file = image(8 * 512);
        let mut blk = block(&file, None);
        let net = DeviceState::Net(crate::snapshot::NetState {
            mac: [2, 0, 0, 0, 0, 1],
        });
        assert!(matches!(
            blk.restore_device_state(&net),
            Err(StateError::DeviceKind {
                saved: "virtio-net",
                ..
            })
        ));
    }

    #[test]
    fn positions_follow_processed_requests() {
        let file = image(8 * 512);
        assert_eq!(block(&file, None).queue_positions(), None);
        let mut r = rig(false, 8 * 512, 0);
        for _ in 0..3 {
            r.header(VIRTIO_BLK_T_IN, 0);
            r.run(0, &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        }
        assert_eq!(
            r.blk.queue_positions(),
            Some(vec![QueuePosition {
                next_avail: 3,
                next_used: 3
            }])
        );
        assert_eq!(used_idx(r.vq), 3);
    }
}
