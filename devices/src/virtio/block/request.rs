//! One virtio-blk request: chain validation and execution (virtio 1.2 §5.2.6).

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use log::warn;
use virtio_bindings::virtio_blk::{virtio_blk_discard_write_zeroes, virtio_blk_outhdr};
use virtio_queue::DescriptorChain;
use vm_memory::{ByteValued, Bytes, GuestMemoryMmap};

use super::{guest_io, CacheType, Disk, MAX_DISCARD_SECTORS, SECTOR_SIZE};
use crate::metrics::{add, inc, BlockMetrics};
use crate::virtio::chain::{self, Chain};

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR as S_IOERR, VIRTIO_BLK_S_OK as S_OK, VIRTIO_BLK_S_UNSUPP as S_UNSUPP,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
pub use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};

/// Status: success (the status byte).
pub const VIRTIO_BLK_S_OK: u8 = S_OK as u8;
/// Status: I/O error (also malformed requests).
pub const VIRTIO_BLK_S_IOERR: u8 = S_IOERR as u8;
/// Status: unsupported request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = S_UNSUPP as u8;

/// Header size (`struct virtio_blk_outhdr`).
const HEADER_LEN: u64 = std::mem::size_of::<virtio_blk_outhdr>() as u64;
/// Largest request Kiln accepts (data plus header and status).
pub const MAX_REQUEST_BYTES: u64 = 1 << 30;
/// Chunk of zeros written when the file system cannot zero a range itself.
const CHUNK: usize = 256 << 10;
/// Length of a discard / write-zeroes segment.
const DWZ_SEG_LEN: u64 = std::mem::size_of::<virtio_blk_discard_write_zeroes>() as u64;

/// The request header, readable as bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct OutHdr(virtio_blk_outhdr);
// SAFETY: repr(C) u32, u32, u64: no padding, every bit pattern valid.
unsafe impl ByteValued for OutHdr {}

/// A discard / write-zeroes segment, readable as bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct DwzSeg(virtio_blk_discard_write_zeroes);
// SAFETY: repr(C) u64, u32, u32: no padding, every bit pattern valid.
unsafe impl ByteValued for DwzSeg {}

/// Outcome of a request: status byte and number of data bytes written to the guest.
struct Outcome(u8, u32);

/// A request the driver got wrong: counted, logged, answered IOERR.
fn invalid(m: &BlockMetrics, why: impl std::fmt::Display) -> Outcome {
    inc(&m.invalid_reqs_count);
    warn!("virtio-blk: invalid request: {why}");
    Outcome(VIRTIO_BLK_S_IOERR, 0)
}

/// A request type or flag Kiln does not support: counted as invalid, answered UNSUPP.
fn unsupported(m: &BlockMetrics) -> Outcome {
    inc(&m.invalid_reqs_count);
    Outcome(VIRTIO_BLK_S_UNSUPP, 0)
}

/// A request that failed on the host: counted, logged, answered IOERR.
fn failed(m: &BlockMetrics, why: impl std::fmt::Display) -> Outcome {
    inc(&m.execute_fails);
    warn!("virtio-blk: request failed: {why}");
    Outcome(VIRTIO_BLK_S_IOERR, 0)
}

/// A well-formed chain with its header read.
pub(super) struct Request {
    c: Chain,
    /// Flat offset of the status byte in the writable buffers (= data bytes there).
    status_off: u64,
    rtype: u32,
    sector: u64,
}

/// A popped chain, checked: what [`run`] executes or answers.
pub(super) enum Parsed {
    /// A request to execute.
    Valid(Request),
    /// A chain with a status byte whose header is missing or unreadable.
    BadHeader(Chain, u64, String),
    /// A chain without a usable status byte: returned with this used length.
    Dropped(u32, u64),
}

impl Parsed {
    /// What the rate limiter charges: one operation, plus the data bytes of a read or
    /// write. A chain without a status byte or a readable header is not charged: it is
    /// answered without any I/O.
    pub(super) fn cost(&self) -> Option<(u64, u64)> {
        let Parsed::Valid(r) = self else {
            return None;
        };
        let bytes = match r.rtype {
            VIRTIO_BLK_T_IN => r.status_off,
            VIRTIO_BLK_T_OUT => r.c.readable.len().saturating_sub(HEADER_LEN),
            _ => 0,
        };
        Some((1, bytes))
    }
}

/// Validates `desc_chain` and reads its header.
pub(super) fn parse(
    mem: &GuestMemoryMmap<()>,
    desc_chain: DescriptorChain<&GuestMemoryMmap<()>>,
    m: &BlockMetrics,
) -> Parsed {
    let c = match chain::parse(mem, desc_chain, MAX_REQUEST_BYTES) {
        Ok(c) => c,
        Err(rej) => {
            inc(&m.invalid_reqs_count);
            warn!(
                "virtio-blk: malformed request (head {}): {}",
                rej.head, rej.error
            );
            return match rej.status_addr {
                Some(addr) if mem.write_obj(VIRTIO_BLK_S_IOERR, addr).is_ok() => {
                    Parsed::Dropped(1, 0)
                }
                _ => Parsed::Dropped(0, 0),
            };
        }
    };
    let moved = c.readable.len() + c.writable.len();
    let Some(status_off) = c.writable.len().checked_sub(1) else {
        inc(&m.invalid_reqs_count);
        warn!(
            "virtio-blk: request (head {}) has no status byte; dropped",
            c.head
        );
        return Parsed::Dropped(0, moved);
    };
    if c.readable.len() < HEADER_LEN {
        let why = format!("header is {} bytes, needs {HEADER_LEN}", c.readable.len());
        return Parsed::BadHeader(c, status_off, why);
    }
    let mut hdr = OutHdr::default();
    if let Err(e) = c.readable.read_at(mem, 0, hdr.as_mut_slice()) {
        return Parsed::BadHeader(c, status_off, e.to_string());
    }
    Parsed::Valid(Request {
        c,
        status_off,
        rtype: u32::from_le(hdr.0.type_),
        sector: u64::from_le(hdr.0.sector),
    })
}

/// Executes or answers `req`; returns the used length to report and the bytes of
/// guest buffers the request covered (what a queue pass budgets).
pub(super) fn run(
    disk: &mut Disk,
    mem: &GuestMemoryMmap<()>,
    req: Parsed,
    m: &BlockMetrics,
) -> (u32, u64) {
    let (c, status_off, Outcome(status, written)) = match req {
        Parsed::Dropped(len, moved) => return (len, moved),
        Parsed::BadHeader(c, status_off, why) => (c, status_off, invalid(m, why)),
        Parsed::Valid(r) => {
            let out = execute(disk, mem, &r, m);
            (r.c, r.status_off, out)
        }
    };
    let moved = c.readable.len() + c.writable.len();
    if let Err(e) = c.writable.write_at(mem, status_off, &[status]) {
        warn!("virtio-blk: cannot write status: {e}");
        return (0, moved);
    }
    (written.saturating_add(1), moved)
}

/// Checks that `[sector, sector + len / 512)` is on the disk; returns the byte offset.
fn disk_offset(disk: &Disk, sector: u64, len: u64) -> Result<u64, String> {
    if len & (SECTOR_SIZE - 1) != 0 {
        return Err(format!(
            "data length {len} is not a multiple of {SECTOR_SIZE}"
        ));
    }
    match sector.checked_add(len / SECTOR_SIZE) {
        Some(end) if end <= disk.nsectors => Ok(sector * SECTOR_SIZE),
        _ => Err(format!(
            "sectors {sector}+{} beyond the end of the disk ({} sectors)",
            len / SECTOR_SIZE,
            disk.nsectors
        )),
    }
}

fn execute(disk: &mut Disk, mem: &GuestMemoryMmap<()>, r: &Request, m: &BlockMetrics) -> Outcome {
    let (c, sector, data_len) = (&r.c, r.sector, r.status_off);
    let out_len = c.readable.len() - HEADER_LEN;

    match r.rtype {
        VIRTIO_BLK_T_IN => {
            if out_len != 0 {
                return invalid(m, "read request with device-readable data buffers");
            }
            let pos = match disk_offset(disk, sector, data_len) {
                Ok(p) => p,
                Err(e) => return invalid(m, e),
            };
            // data_len <= MAX_REQUEST_BYTES < 4 GiB.
            let n = data_len as usize;
            if let Err(e) = guest_io::read_file_into(mem, &c.writable, 0, &disk.file, pos, n) {
                return failed(m, format_args!("read {}: {e}", disk.path.display()));
            }
            inc(&m.read_count);
            add(&m.read_bytes, data_len);
            // data_len <= MAX_REQUEST_BYTES < 4 GiB.
            Outcome(VIRTIO_BLK_S_OK, data_len as u32)
        }
        VIRTIO_BLK_T_OUT => {
            if disk.read_only {
                return invalid(m, "write to a read-only disk");
            }
            if data_len != 0 {
                return invalid(m, "write request with device-writable data buffers");
            }
            let pos = match disk_offset(disk, sector, out_len) {
                Ok(p) => p,
                Err(e) => return invalid(m, e),
            };
            let n = out_len as usize;
            let res = guest_io::write_file_from(mem, &c.readable, HEADER_LEN, &disk.file, pos, n);
            if let Err(e) = res {
                return failed(m, format_args!("write {}: {e}", disk.path.display()));
            }
            if disk.write_through() {
                if let Err(e) = disk.file.sync_data() {
                    return failed(m, format_args!("fdatasync {}: {e}", disk.path.display()));
                }
            }
            inc(&m.write_count);
            add(&m.write_bytes, out_len);
            Outcome(VIRTIO_BLK_S_OK, 0)
        }
        VIRTIO_BLK_T_FLUSH => {
            inc(&m.flush_count);
            if disk.read_only || disk.cache == CacheType::Unsafe {
                return Outcome(VIRTIO_BLK_S_OK, 0);
            }
            match disk.file.sync_data() {
                Ok(()) => Outcome(VIRTIO_BLK_S_OK, 0),
                Err(e) => failed(m, format_args!("fdatasync {}: {e}", disk.path.display())),
            }
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = data_len.min(disk.id.len() as u64) as usize;
            match c.writable.write_at(mem, 0, &disk.id[..n]) {
                Ok(()) => Outcome(VIRTIO_BLK_S_OK, n as u32),
                Err(e) => failed(m, e),
            }
        }
        t @ (VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES) => {
            discard_or_write_zeroes(disk, mem, c, t, m)
        }
        t => {
            warn!("virtio-blk: unsupported request type {t}");
            unsupported(m)
        }
    }
}

fn discard_or_write_zeroes(
    disk: &mut Disk,
    mem: &GuestMemoryMmap<()>,
    c: &Chain,
    rtype: u32,
    m: &BlockMetrics,
) -> Outcome {
    let out_len = c.readable.len() - HEADER_LEN;
    let negotiated = if rtype == VIRTIO_BLK_T_DISCARD {
        disk.discard
    } else {
        disk.write_zeroes
    };
    if !negotiated {
        return unsupported(m);
    }
    if disk.read_only {
        return invalid(m, "discard / write-zeroes on a read-only disk");
    }
    if out_len == 0 || out_len & (DWZ_SEG_LEN - 1) != 0 || out_len / DWZ_SEG_LEN > 1 {
        return invalid(
            m,
            format_args!("bad discard / write-zeroes payload of {out_len} bytes"),
        );
    }
    let mut seg = DwzSeg::default();
    if let Err(e) = c.readable.read_at(mem, HEADER_LEN, seg.as_mut_slice()) {
        return invalid(m, e);
    }
    let start = u64::from_le(seg.0.sector);
    let num = u32::from_le(seg.0.num_sectors);
    let flags = u32::from_le(seg.0.flags);
    if num > MAX_DISCARD_SECTORS {
        return invalid(
            m,
            format_args!("{num} sectors exceeds the advertised maximum"),
        );
    }
    if rtype == VIRTIO_BLK_T_DISCARD && flags != 0 {
        return unsupported(m);
    }
    if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0 {
        return unsupported(m);
    }
    let len = u64::from(num) * SECTOR_SIZE;
    let pos = match disk_offset(disk, start, len) {
        Ok(p) => p,
        Err(e) => return invalid(m, e),
    };
    if rtype == VIRTIO_BLK_T_DISCARD {
        // Discard is a hint: an unsupported hole punch is not an error.
        if let Err(e) = punch_hole(disk, pos, len) {
            log::debug!("virtio-blk: discard not done: {e}");
        }
        Outcome(VIRTIO_BLK_S_OK, 0)
    } else {
        match write_zeroes(disk, pos, len) {
            Ok(()) => Outcome(VIRTIO_BLK_S_OK, 0),
            Err(e) => failed(m, format_args!("write zeroes {}: {e}", disk.path.display())),
        }
    }
}

fn fallocate(disk: &Disk, mode: i32, pos: u64, len: u64) -> std::io::Result<()> {
    let (Ok(off), Ok(l)) = (libc::off_t::try_from(pos), libc::off_t::try_from(len)) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on a file descriptor we own; no memory is passed.
    if unsafe { libc::fallocate(disk.file.as_raw_fd(), mode, off, l) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn punch_hole(disk: &Disk, pos: u64, len: u64) -> std::io::Result<()> {
    fallocate(
        disk,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        pos,
        len,
    )
}

fn write_zeroes(disk: &mut Disk, pos: u64, len: u64) -> std::io::Result<()> {
    let r = fallocate(
        disk,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        pos,
        len,
    )
    .or_else(|_| punch_hole(disk, pos, len));
    if r.is_err() {
        // Neither is supported (e.g. a block device): write the zeros.
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(CHUNK as u64) as usize;
            disk.buf.clear();
            disk.buf.resize(n, 0);
            disk.file.write_all_at(&disk.buf, pos + done)?;
            done += n as u64;
        }
    }
    if disk.write_through() {
        disk.file.sync_data()?;
    }
    Ok(())
}
