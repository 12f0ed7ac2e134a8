//! Address-range buses for port I/O and MMIO exits.
//!
//! A [`Bus`] maps non-overlapping `[base, base + len)` ranges to devices. A vCPU thread
//! looks up the device for each exit and calls it with the offset inside its range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use util::sync::lock;

/// A device that answers reads and writes on a bus.
///
/// `offset` is relative to the base the device was inserted at; `data` is the access
/// (1, 2, 4 or 8 bytes, as the guest issued it).
pub trait BusDevice: Send {
    /// Guest read: fill `data`. Bytes left untouched read as whatever the caller
    /// initialised them to (the vCPU zero-fills).
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus (vCPU threads) and its other owner (the event loop).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// A range of length zero or one that wraps the address space.
    #[error("invalid bus range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
}

/// A set of devices keyed by address range.
#[derive(Default, Clone)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        if let Some((&b, &(l, _))) = self.devices.range(..end).next_back() {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    /// The device covering `addr` and the offset of `addr` inside its range.
    pub fn resolve(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let (&base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < *len).then_some((dev, offset))
    }

    /// Dispatches a read; returns false when no device covers `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                lock(dev).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device covers `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((dev, offset)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<u8>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0.extend_from_slice(data);
        }
    }

    #[test]
    fn insert_resolve_and_overlap() {
        let mut bus = Bus::new();
        let d: SharedDevice = Arc::new(Mutex::new(Echo(vec![])));
        bus.insert(d.clone(), 0x3f8, 8).unwrap();
        bus.insert(d.clone(), 0x400, 8).unwrap();
        assert_eq!(
            bus.insert(d.clone(), 0x3f0, 9),
            Err(BusError::Overlap {
                base: 0x3f0,
                len: 9
            })
        );
        assert!(bus.insert(d.clone(), 0x3fc, 1).is_err());
        assert!(bus.insert(d.clone(), 0x0, 0).is_err());
        assert!(bus.insert(d, u64::MAX, 2).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b[0], 5);
        assert!(!bus.read(0x3f7, &mut b));
        assert!(!bus.read(0x400 + 8, &mut b));
        assert!(bus.write(0x3f8, &[1, 2]));
    }
}
