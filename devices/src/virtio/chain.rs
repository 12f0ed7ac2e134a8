//! Descriptor-chain validation and byte-level access to its buffers (virtio 1.2 §2.7.5).
//!
//! Not virtio-queue's `Reader`/`Writer`: they split a chain by direction but accept a
//! readable buffer after a writable one and cannot say where the status byte of a
//! rejected chain may go; Kiln checks and answers both.
//!
//! A chain is collected into its device-readable and device-writable segments; every
//! segment is checked to lie inside guest memory and the readable ones must all come
//! before the writable ones (§2.7.4.2). Devices then address the buffers as two flat
//! byte ranges, whatever the descriptor layout (`VIRTIO_F_ANY_LAYOUT` is implied by
//! `VIRTIO_F_VERSION_1`).

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Why a chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has no descriptor (head unreadable or out of range).
    #[error("empty descriptor chain")]
    Empty,
    /// A `next` link loops or points outside the table (the chain was cut short).
    #[error("descriptor chain loops, is too long or links outside the table")]
    Truncated,
    /// A device-readable descriptor follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    Order,
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// The chain carries more bytes than the device accepts.
    #[error("descriptor chain longer than {0} bytes")]
    TooLong(u64),
}

/// A guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// An ordered list of guest buffers addressed as one byte range.
#[derive(Debug, Default, Clone)]
pub struct Segments {
    list: Vec<Segment>,
    len: u64,
}

impl Segments {
    fn push(&mut self, s: Segment) {
        if s.len > 0 {
            self.len += u64::from(s.len);
            self.list.push(s);
        }
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Calls `f(addr, range_in_buf)` for each piece of `[offset, offset + len)`.
    pub(crate) fn walk(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(
            GuestAddress,
            std::ops::Range<usize>,
        ) -> Result<(), vm_memory::GuestMemoryError>,
    ) -> Result<(), vm_memory::GuestMemoryError> {
        let end = offset.saturating_add(len as u64);
        if end > self.len {
            return Err(vm_memory::GuestMemoryError::InvalidBackendAddress);
        }
        let mut pos = 0u64; // start of the current segment in the flat range
        let mut done = 0usize;
        for s in &self.list {
            let seg_end = pos + u64::from(s.len);
            let cur = offset + done as u64;
            if done == len {
                break;
            }
            if cur < seg_end {
                let in_seg = cur - pos;
                let n = ((seg_end - cur) as usize).min(len - done);
                f(s.addr.unchecked_add_u64(in_seg), done..done + n)?;
                done += n;
            }
            pos = seg_end;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at flat `offset` from guest memory.
    pub fn read_at(
        &self,
        mem: &GuestMemoryMmap<()>,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        let len = buf.len();
        self.walk(offset, len, |addr, r| mem.read_slice(&mut buf[r], addr))
    }

    /// Writes `buf` at flat `offset` to guest memory.
    pub fn write_at(
        &self,
        mem: &GuestMemoryMmap<()>,
        offset: u64,
        buf: &[u8],
    ) -> Result<(), vm_memory::GuestMemoryError> {
        self.walk(offset, buf.len(), |addr, r| mem.write_slice(&buf[r], addr))
    }
}

trait AddU64 {
    fn unchecked_add_u64(self, v: u64) -> Self;
}
impl AddU64 for GuestAddress {
    fn unchecked_add_u64(self, v: u64) -> Self {
        // Segments were range-checked against guest memory, so this cannot wrap.
        GuestAddress(self.0.wrapping_add(v))
    }
}

/// A validated descriptor chain.
#[derive(Debug, Default)]
pub struct Chain {
    /// Head index to return in the used ring.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Segments,
    /// Device-writable buffers, in order.
    pub writable: Segments,
}

/// Result of [`parse`]: the chain or the error plus where a status byte could go.
#[derive(Debug)]
pub struct Rejected {
    /// Head index.
    pub head: u16,
    /// Why it was rejected.
    pub error: ChainError,
    /// The last byte of the chain when it is device-writable and inside guest memory.
    pub status_addr: Option<GuestAddress>,
}

/// Walks `chain`, checking memory bounds, direction order, loops and `max_len`.
pub fn parse(
    mem: &GuestMemoryMmap<()>,
    chain: DescriptorChain<&GuestMemoryMmap<()>>,
    max_len: u64,
) -> Result<Chain, Rejected> {
    let head = chain.head_index();
    let mut descs = Vec::new();
    let mut last_has_next = false;
    // The iterator stops after `queue_size` descriptors (loop guard) or on an
    // unreadable / out-of-table link; a last descriptor still flagged NEXT means the
    // chain was cut short.
    for d in chain {
        last_has_next = d.has_next();
        descs.push((d.addr(), d.len(), d.is_write_only()));
    }
    let status_addr = descs.last().and_then(|&(addr, len, w)| {
        let last = addr.0.checked_add(u64::from(len))?.checked_sub(1)?;
        (w && len > 0 && mem.check_range(GuestAddress(last), 1)).then_some(GuestAddress(last))
    });
    let reject = |error| Rejected {
        head,
        error,
        status_addr,
    };
    if descs.is_empty() {
        return Err(reject(ChainError::Empty));
    }
    if last_has_next {
        return Err(reject(ChainError::Truncated));
    }
    let mut out = Chain {
        head,
        ..Default::default()
    };
    let mut total = 0u64;
    for &(addr, len, write) in &descs {
        if len > 0 && !mem.check_range(addr, len as usize) {
            return Err(reject(ChainError::OutOfMemory { addr: addr.0, len }));
        }
        total += u64::from(len);
        if total > max_len {
            return Err(reject(ChainError::TooLong(max_len)));
        }
        let seg = Segment { addr, len };
        if write {
            out.writable.push(seg);
        } else if out.writable.len() > 0 {
            return Err(reject(ChainError::Order));
        } else {
            out.readable.push(seg);
        }
    }
    Ok(out)
}
