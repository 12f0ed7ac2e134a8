//! Device state for VM snapshots: what each of Kiln's devices saves and how it is
//! restored, and the errors a restore reports.
//!
//! Every state type is serde-serializable and owned by the device's module; this module
//! gathers them and defines [`StateError`].
//!
//! | device | state | save | restore |
//! |---|---|---|---|
//! | 16550 UART | [`SerialState`] | [`SerialDevice::state`] | [`SerialDevice::restore`] |
//! | i8042 | [`I8042State`] | [`I8042::state`] | [`I8042::restore_state`] |
//! | boot timer | none (see [`crate::boot_timer`]) | | |
//! | virtio-mmio + device | [`MmioState`] | [`MmioTransport::save_state`] | [`MmioTransport::restore`] |
//! | virtio-blk | [`BlockState`] (in [`MmioState::device`]) | through the transport | through the transport |
//! | virtio-net | [`NetState`] (in [`MmioState::device`]) | through the transport | through the transport |
//! | virtio-rng | none ([`DeviceState::Rng`] in [`MmioState::device`]) | through the transport | through the transport |
//!
//! # Consistency with guest memory
//!
//! A virtio device's ring positions and the rings in guest memory must be captured at
//! the same instant. A queue pass always completes every request it pops, and it runs
//! with the device model's lock held; [`MmioTransport::save_state`] returns that lock
//! with the state, so no pass can run (and change guest memory or the positions) until
//! the caller drops it. The VMM keeps it until guest memory has been written.
//!
//! # What is not saved
//!
//! Host-side plumbing (eventfds, irqfds, ioeventfds, the console output, the disk file,
//! the TAP) is created afresh by the VMM and handed to the restore functions. Rate
//! limiters restart with full buckets. Frames virtio-net read from the TAP but had not
//! delivered are dropped (the network is lossy anyway); serial input read from the host
//! but not yet in the UART's FIFO is dropped.
//!
//! [`SerialDevice::state`]: crate::legacy::SerialDevice::state
//! [`SerialDevice::restore`]: crate::legacy::SerialDevice::restore
//! [`I8042::state`]: crate::legacy::I8042::state
//! [`I8042::restore_state`]: crate::legacy::I8042::restore_state
//! [`MmioTransport::save_state`]: crate::virtio::MmioTransport::save_state
//! [`MmioTransport::restore`]: crate::virtio::MmioTransport::restore

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::legacy::i8042::I8042State;
pub use crate::legacy::serial::SerialState;
pub use crate::virtio::block::BlockState;
pub use crate::virtio::mmio::{MmioState, QueueRegsState, VirtqueueState};
pub use crate::virtio::net::NetState;
pub use crate::virtio::QueuePosition;

/// The state of a virtio device model (the part behind the transport).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    /// A virtio-blk device.
    Block(BlockState),
    /// A virtio-net device.
    Net(NetState),
    /// A virtio-rng device (no state beyond the transport's).
    Rng,
    /// A virtio-vsock device: its CID (connections do not survive a snapshot; the
    /// restored device tells the guest with a TRANSPORT_RESET event).
    Vsock {
        /// The guest's CID.
        cid: u64,
    },
}

impl DeviceState {
    /// The device kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            DeviceState::Block(_) => "virtio-blk",
            DeviceState::Net(_) => "virtio-net",
            DeviceState::Rng => "virtio-rng",
            DeviceState::Vsock { .. } => "virtio-vsock",
        }
    }
}

/// Why a device's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The device model has no snapshot support.
    #[error("virtio device type {0} does not support snapshots")]
    Unsupported(u32),
    /// The snapshot's device is of another type than the one built for it.
    #[error(
        "snapshot holds a virtio device of type {saved} where this VM has type {actual}: \
         restore with the snapshot's device configuration"
    )]
    DeviceType {
        /// The type in the snapshot.
        saved: u32,
        /// The type of the device built for the restore.
        actual: u32,
    },
    /// The snapshot's device state belongs to another kind of device.
    #[error("snapshot holds {saved} state for a {actual} device")]
    DeviceKind {
        /// The kind in the snapshot.
        saved: &'static str,
        /// The kind of the device built for the restore.
        actual: &'static str,
    },
    /// The device built for the restore offers other features than the saved one did.
    #[error(
        "snapshot's virtio device (type {device_type}) offered features {saved:#x}, this one \
         offers {actual:#x}: restore with the snapshot's device configuration (disk \
         read-only setting and cache type, TAP offload support)"
    )]
    Features {
        /// The virtio device type.
        device_type: u32,
        /// The features offered when the snapshot was taken.
        saved: u64,
        /// The features the new device offers.
        actual: u64,
    },
    /// The saved negotiated features are not valid for the device.
    #[error(
        "snapshot's virtio device (type {device_type}) has negotiated features {features:#x} \
         that it did not offer or that lack VIRTIO_F_VERSION_1: the snapshot is corrupt"
    )]
    DriverFeatures {
        /// The virtio device type.
        device_type: u32,
        /// The saved negotiated features.
        features: u64,
    },
    /// The saved queues do not match the device's.
    #[error(
        "snapshot's virtio device (type {device_type}) has {saved} queue(s), this one has \
         {actual}"
    )]
    QueueCount {
        /// The virtio device type.
        device_type: u32,
        /// Queues in the snapshot.
        saved: usize,
        /// Queues of the new device.
        actual: usize,
    },
    /// A saved queue's maximum size differs from the device's.
    #[error("snapshot's virtio queue {index} has maximum size {saved}, the device's is {actual}")]
    QueueMaxSize {
        /// The queue index.
        index: usize,
        /// The saved maximum.
        saved: u16,
        /// The device's maximum.
        actual: u16,
    },
    /// A saved queue cannot be rebuilt (size, alignment).
    #[error("snapshot's virtio queue {index} is invalid: {source}")]
    Queue {
        /// The queue index.
        index: usize,
        /// What virtio-queue said.
        source: virtio_queue::Error,
    },
    /// A saved ready queue's rings are not in guest memory.
    #[error(
        "snapshot's virtio queue {index} has rings outside guest memory: restore with the \
         snapshot's memory"
    )]
    QueueOutsideMemory {
        /// The queue index.
        index: usize,
    },
    /// An active device reported ring positions for another number of queues.
    #[error("virtio device (type {device_type}) reported no or wrong ring positions")]
    QueuePositions {
        /// The virtio device type.
        device_type: u32,
    },
    /// The saved transport state contradicts itself.
    #[error("snapshot's virtio-mmio state is inconsistent: {0}")]
    Inconsistent(&'static str),
    /// The disk's size is not the capacity the guest saw.
    #[error(
        "snapshot's virtio-blk capacity {saved} sectors does not match disk {} ({actual} \
         sectors): restore with the same disk",
        path.display()
    )]
    Capacity {
        /// The disk image.
        path: PathBuf,
        /// The capacity in the snapshot, in 512-byte sectors.
        saved: u64,
        /// The image's capacity now.
        actual: u64,
    },
    /// Rebuilding the transport or activating the restored device failed.
    #[error("cannot restore the virtio device: {0}")]
    Virtio(#[from] crate::virtio::Error),
    /// The saved serial receive FIFO is longer than the UART's.
    #[error("snapshot's serial receive FIFO holds {len} bytes, more than the UART's {max}")]
    SerialFifo {
        /// Bytes in the snapshot.
        len: usize,
        /// The FIFO size.
        max: usize,
    },
    /// The restored UART could not raise its pending interrupt.
    #[error("cannot raise the restored serial port's interrupt: {0}")]
    SerialIrq(#[source] std::io::Error),
    /// The saved i8042 keyboard queue is longer than the device keeps.
    #[error("snapshot's i8042 keyboard queue holds {len} bytes, more than the {max} kept")]
    KeyboardQueue {
        /// Bytes in the snapshot.
        len: usize,
        /// The most the device queues.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_error_names_the_disk_and_both_sizes() {
        let e = StateError::Capacity {
            path: "/x.img".into(),
            saved: 128,
            actual: 256,
        };
        assert_eq!(
            e.to_string(),
            "snapshot's virtio-blk capacity 128 sectors does not match disk /x.img \
             (256 sectors): restore with the same disk"
        );
    }

    #[test]
    fn device_state_serde_round_trip() {
        let states = [
            DeviceState::Block(BlockState {
                capacity_sectors: 2048,
                id: *b"disk-one\0\0\0\0\0\0\0\0\0\0\0\0",
            }),
            DeviceState::Net(NetState {
                mac: [2, 0x4b, 1, 2, 3, 4],
            }),
            DeviceState::Rng,
        ];
        for s in states {
            let json = serde_json::to_string(&s).unwrap();
            let back: DeviceState = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s);
        }
    }
}
