//! The vsock packet header (`struct virtio_vsock_hdr`, virtio 1.2 §5.10.6) and the
//! checks a TX packet from the driver must pass.
//!
//! virtio-bindings 0.2.7 has no vsock header or op constants (only
//! `virtio_ids::VIRTIO_ID_VSOCK`), so the 44-byte little-endian layout is written out
//! here from the specification.

use vm_memory::GuestMemoryMmap;

use crate::virtio::chain::Segments;

/// Length of `struct virtio_vsock_hdr`.
pub const HDR_LEN: usize = 44;
/// Largest payload accepted from or sent to the driver in one packet.
pub const MAX_PAYLOAD: u32 = 64 << 10;
/// The host's CID (§5.10.4: 2 is the host).
pub const HOST_CID: u64 = 2;

/// `type`: a stream socket (the only type Kiln supports).
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (`op`, §5.10.6).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Connection reset (refused or aborted).
    pub const RST: u16 = 3;
    /// Half- or full close; `flags` says which directions.
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's `buf_alloc` / `fwd_cnt` changed.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the peer for a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// `struct virtio_vsock_hdr`, decoded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source CID.
    pub src_cid: u64,
    /// Destination CID.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// Operation ([`op`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN).
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer (wrapping).
    pub fwd_cnt: u32,
}

fn u16_at(b: &[u8; HDR_LEN], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8; HDR_LEN], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8; HDR_LEN], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Header {
    /// Decodes the wire layout.
    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Self {
        Self {
            src_cid: u64_at(b, 0),
            dst_cid: u64_at(b, 8),
            src_port: u32_at(b, 16),
            dst_port: u32_at(b, 20),
            len: u32_at(b, 24),
            type_: u16_at(b, 28),
            op: u16_at(b, 30),
            flags: u32_at(b, 32),
            buf_alloc: u32_at(b, 36),
            fwd_cnt: u32_at(b, 40),
        }
    }

    /// Encodes the wire layout.
    pub fn to_bytes(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The RST answering `self` (ports and CIDs swapped), with no payload.
    pub fn reset_reply(&self) -> Self {
        Self {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Default::default()
        }
    }
}

/// Why a TX packet was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The chain has device-writable buffers or is shorter than the header.
    #[error("TX chain is not a readable buffer of at least {HDR_LEN} bytes")]
    Shape,
    /// Reading the chain from guest memory failed.
    #[error("cannot read the TX chain from guest memory")]
    Memory,
    /// `len` is larger than the chain or [`MAX_PAYLOAD`].
    #[error("payload length {len} exceeds the chain or the {MAX_PAYLOAD}-byte maximum")]
    Length {
        /// The header's `len`.
        len: u32,
    },
    /// The source CID is not the guest's or the destination is not the host.
    #[error("packet from CID {src} to CID {dst}: not guest to host")]
    Cid {
        /// Source CID.
        src: u64,
        /// Destination CID.
        dst: u64,
    },
    /// `type` is not [`TYPE_STREAM`].
    #[error("socket type {0} is not STREAM")]
    Type(u16),
    /// `op` is not one the driver may send.
    #[error("unknown op {0}")]
    Op(u16),
}

impl PacketError {
    /// Whether the driver gets a RST for the packet (it addressed a connection the
    /// host could answer); the others are dropped silently.
    pub fn deserves_rst(&self) -> bool {
        matches!(self, Self::Type(_) | Self::Op(_) | Self::Length { .. })
    }
}

/// Reads and checks the header of a TX packet whose device-readable buffers are `rd`
/// (`wr_len` device-writable bytes, which must be 0); `guest_cid` is the only valid
/// source. On success `payload` holds the `len` payload bytes. On an error the header
/// is returned too when it could be read.
pub fn read_tx(
    mem: &GuestMemoryMmap<()>,
    rd: &Segments,
    wr_len: u64,
    guest_cid: u64,
    payload: &mut Vec<u8>,
) -> Result<Header, (PacketError, Option<Header>)> {
    payload.clear();
    if wr_len != 0 || rd.len() < HDR_LEN as u64 {
        return Err((PacketError::Shape, None));
    }
    let mut raw = [0u8; HDR_LEN];
    rd.read_at(mem, 0, &mut raw)
        .map_err(|_| (PacketError::Memory, None))?;
    let hdr = Header::from_bytes(&raw);
    let err = |e| Err((e, Some(hdr)));
    if hdr.src_cid != guest_cid || hdr.dst_cid != HOST_CID {
        return err(PacketError::Cid {
            src: hdr.src_cid,
            dst: hdr.dst_cid,
        });
    }
    let room = rd.len() - HDR_LEN as u64;
    if hdr.len > MAX_PAYLOAD || u64::from(hdr.len) > room {
        return err(PacketError::Length { len: hdr.len });
    }
    if hdr.type_ != TYPE_STREAM {
        return err(PacketError::Type(hdr.type_));
    }
    if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&hdr.op) {
        return err(PacketError::Op(hdr.op));
    }
    if hdr.op == op::RW && hdr.len > 0 {
        // Bounded by MAX_PAYLOAD above.
        payload.resize(hdr.len as usize, 0);
        if rd.read_at(mem, HDR_LEN as u64, payload).is_err() {
            payload.clear();
            return err(PacketError::Memory);
        }
    }
    Ok(hdr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_wire_order() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234,
            dst_port: 0x5678,
            len: 9,
            type_: TYPE_STREAM,
            op: op::RW,
            flags: 3,
            buf_alloc: 0x4_0000,
            fwd_cnt: 77,
        };
        let b = h.to_bytes();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[16..20], &0x1234u32.to_le_bytes());
        assert_eq!(&b[30..32], &op::RW.to_le_bytes());
        assert_eq!(&b[40..44], &77u32.to_le_bytes());
        assert_eq!(Header::from_bytes(&b), h);
    }

    #[test]
    fn reset_reply_swaps_ends() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 10,
            dst_port: 20,
            op: op::RW,
            len: 5,
            ..Default::default()
        };
        let r = h.reset_reply();
        assert_eq!(
            (r.src_cid, r.dst_cid, r.src_port, r.dst_port),
            (2, 3, 20, 10)
        );
        assert_eq!((r.op, r.len, r.type_), (op::RST, 0, TYPE_STREAM));
    }
}
