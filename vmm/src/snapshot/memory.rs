//! The snapshot memory file: guest RAM, region after region, one byte per guest byte.
//!
//! Region `i` lives at the sum of the sizes of the regions before it (one region below
//! 3 GiB, two around the MMIO gap: see `boot::layout::ram_regions`). A full snapshot
//! writes only the non-zero pages into a freshly truncated file, so zero pages stay
//! holes; a diff snapshot writes only the pages KVM's dirty log marks, in place, into a
//! file the caller made from the base snapshot's. A restore maps the file `MAP_PRIVATE`
//! ([`map_memory`]): its cost does not grow with the memory size, guest writes stay in
//! the process, and VMs restored from one file share the pages none of them wrote.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::Arc;

use boot::GuestMemoryMmap;
use kvm_ioctls::VmFd;
use vm_memory::mmap::{GuestRegionMmap, MmapRegionBuilder};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

/// The page size of guest memory, of the file's holes and of KVM's dirty log (x86-64).
pub const PAGE_SIZE: usize = 4096;

/// Pages copied out of guest memory per write (1 MiB).
const CHUNK_PAGES: usize = 256;

/// What a zero page is compared with (a slice comparison is a `memcmp`).
static ZERO_PAGE: [u8; PAGE_SIZE] = [0; PAGE_SIZE];

/// Which pages [`write_memory`] writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageSelection {
    /// Full snapshot: the file is truncated to the guest memory size and every
    /// non-zero page is written; zero pages are left as holes.
    All,
    /// Diff snapshot: one bitmap per region (bit `p % 64` of word `p / 64` is page `p`,
    /// as [`dirty_bitmaps`] returns them); only those pages are written, into a file
    /// that already has the guest memory size.
    Dirty(Vec<Vec<u64>>),
}

/// What [`write_memory`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Guest memory size (the file's size), bytes.
    pub guest_bytes: u64,
    /// Pages written to the file.
    pub pages_written: u64,
    /// Zero pages left as holes (full snapshots only).
    pub zero_pages_skipped: u64,
    /// Of those, pages known to be zero without reading them: never populated in an
    /// anonymous mapping, per `/proc/self/pagemap`.
    pub pages_never_touched: u64,
}

/// Why guest memory cannot be written to or mapped from a memory file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The file's size is not the guest memory size.
    #[error("the memory file is {actual} bytes but the snapshot's guest memory is {expected}: it belongs to another snapshot or is truncated")]
    FileSize {
        /// Guest memory size.
        expected: u64,
        /// File size.
        actual: u64,
    },
    /// A region does not start and end on a page boundary, or is empty.
    #[error(
        "guest memory region at {start:#x} of {size:#x} bytes is not a whole number of 4 KiB pages"
    )]
    Unaligned {
        /// Guest physical start.
        start: u64,
        /// Size in bytes.
        size: u64,
    },
    /// The number of dirty bitmaps is not the number of regions.
    #[error("{bitmaps} dirty bitmaps for {regions} guest memory regions")]
    BitmapCount {
        /// Bitmaps given.
        bitmaps: usize,
        /// Regions in guest memory.
        regions: usize,
    },
    /// A dirty bitmap's length does not fit its region.
    #[error(
        "dirty bitmap of region {region} has {actual} words, its {pages} pages need {expected}"
    )]
    BitmapLength {
        /// Region index.
        region: usize,
        /// Pages in the region.
        pages: u64,
        /// Words needed.
        expected: usize,
        /// Words given.
        actual: usize,
    },
    /// The target file is the one guest memory is mapped from (a restored VM).
    #[error("the memory file is the file this VM's memory is mapped from: write the snapshot to a new file")]
    SameFile,
    /// [`copy_sparse`] was given the same file twice.
    #[error("cannot copy a memory file onto itself: name a new file for the diff snapshot")]
    CopyOntoItself,
    /// A file operation failed.
    #[error("cannot {op} the memory file: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Guest memory could not be read (a Kiln bug: the ranges come from its regions).
    #[error("cannot read guest memory at region offset {offset:#x}: {source}")]
    Read {
        /// Offset in the region.
        offset: u64,
        /// The error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// `mmap` of a region failed.
    #[error("cannot map guest memory region {region} from the memory file: {source}")]
    Map {
        /// Region index.
        region: usize,
        /// The error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// The mapped regions do not form guest memory (overlap, wrap-around).
    #[error("invalid guest memory layout: {0}")]
    Layout(String),
    /// `KVM_GET_DIRTY_LOG` failed.
    #[error(
        "KVM_GET_DIRTY_LOG of memory slot {slot} failed: {source}{}",
        dirty_log_hint(source)
    )]
    DirtyLog {
        /// The slot (region index).
        slot: u32,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
}

fn dirty_log_hint(e: &kvm_ioctls::Error) -> &'static str {
    if e.errno() == libc::ENOENT {
        " (dirty page tracking is off for this slot: enable track_dirty_pages)"
    } else {
        ""
    }
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> MemoryError {
    move |source| MemoryError::Io { op, source }
}

/// Writes guest memory into `file` (see [`PageSelection`]). Guest memory must not change
/// meanwhile (the VM is paused). The file is not synced: the caller decides.
pub fn write_memory(
    file: &File,
    mem: &GuestMemoryMmap,
    pages: PageSelection,
) -> Result<MemoryStats, MemoryError> {
    let total = checked_size(mem.iter().map(|r| (r.start_addr().0, r.len())))?;
    refuse_backing_file(file, mem)?;
    let mut stats = MemoryStats {
        guest_bytes: total,
        ..Default::default()
    };
    let mut buf = vec![0u8; CHUNK_PAGES * PAGE_SIZE];
    match pages {
        PageSelection::All => {
            file.set_len(0).map_err(io_err("truncate"))?;
            file.set_len(total).map_err(io_err("resize"))?;
            let mut file_off = 0;
            for region in mem.iter() {
                write_nonzero(file, region, file_off, &mut buf, &mut stats)?;
                file_off += region.len();
            }
        }
        PageSelection::Dirty(bitmaps) => {
            let actual = file.metadata().map_err(io_err("stat"))?.len();
            if actual != total {
                return Err(MemoryError::FileSize {
                    expected: total,
                    actual,
                });
            }
            if bitmaps.len() != mem.num_regions() {
                return Err(MemoryError::BitmapCount {
                    bitmaps: bitmaps.len(),
                    regions: mem.num_regions(),
                });
            }
            let mut file_off = 0;
            for (i, (region, bitmap)) in mem.iter().zip(&bitmaps).enumerate() {
                let pages = region.len() / PAGE_SIZE as u64;
                let expected = pages.div_ceil(64) as usize;
                if bitmap.len() != expected {
                    return Err(MemoryError::BitmapLength {
                        region: i,
                        pages,
                        expected,
                        actual: bitmap.len(),
                    });
                }
                for (first, count) in dirty_runs(bitmap, pages) {
                    let at = first * PAGE_SIZE as u64;
                    let len = count * PAGE_SIZE;
                    copy_out(region, at, &mut buf[..len])?;
                    file.write_all_at(&buf[..len], file_off + at)
                        .map_err(io_err("write"))?;
                    stats.pages_written += count as u64;
                }
                file_off += region.len();
            }
        }
    }
    Ok(stats)
}

/// Writes a region's non-zero pages at `file_off` onwards, one chunk at a time. Pages
/// an anonymous region never populated (per `pagemap`) are zero and are not read.
fn write_nonzero(
    file: &File,
    region: &GuestRegionMmap<()>,
    file_off: u64,
    buf: &mut [u8],
    stats: &mut MemoryStats,
) -> Result<(), MemoryError> {
    let anon = libc::MAP_ANONYMOUS | libc::MAP_PRIVATE;
    let pagemap = if region.file_offset().is_none() && region.flags() & anon == anon {
        Pagemap::open()
    } else {
        None
    };
    let mut populated = [true; CHUNK_PAGES];
    let mut at = 0;
    while at < region.len() {
        let len = (region.len() - at).min(buf.len() as u64) as usize;
        let pages = len / PAGE_SIZE;
        let host_addr = region.as_ptr() as usize + at as usize;
        if let Some(pm) = &pagemap {
            if pm.populated(host_addr, &mut populated[..pages]).is_err() {
                populated.fill(true);
            }
        }
        let chunk = &mut buf[..len];
        for (p, page) in chunk.chunks_exact_mut(PAGE_SIZE).enumerate() {
            if populated[p] {
                copy_out(region, at + (p * PAGE_SIZE) as u64, page)?;
            } else {
                stats.pages_never_touched += 1;
            }
        }
        let mut run_start = None;
        // One step past the end closes the last run.
        for p in 0..=pages {
            let nonzero = p < pages
                && populated[p]
                && chunk[p * PAGE_SIZE..(p + 1) * PAGE_SIZE] != ZERO_PAGE[..];
            match (nonzero, run_start) {
                (true, None) => run_start = Some(p),
                (false, Some(s)) => {
                    let off = file_off + at + (s * PAGE_SIZE) as u64;
                    file.write_all_at(&chunk[s * PAGE_SIZE..p * PAGE_SIZE], off)
                        .map_err(io_err("write"))?;
                    stats.pages_written += (p - s) as u64;
                    run_start = None;
                }
                _ => {}
            }
            if p < pages && !nonzero {
                stats.zero_pages_skipped += 1;
            }
        }
        at += len as u64;
    }
    Ok(())
}

/// `/proc/self/pagemap`: which pages of this process are in RAM or swap. A page of a
/// private anonymous mapping that is neither was never written (or was discarded): it
/// reads as zero.
struct Pagemap(File);

impl Pagemap {
    const PRESENT: u64 = 1 << 63;
    const SWAPPED: u64 = 1 << 62;

    /// None when this process cannot read its pagemap (e.g. no /proc in a jail).
    fn open() -> Option<Self> {
        File::open("/proc/self/pagemap").ok().map(Pagemap)
    }

    /// Sets `out[i]` to whether the page at `addr + i * PAGE_SIZE` is in RAM or swap.
    fn populated(&self, addr: usize, out: &mut [bool]) -> io::Result<()> {
        let mut raw = [0u8; CHUNK_PAGES * 8];
        let raw = &mut raw[..out.len() * 8];
        self.0.read_exact_at(raw, (addr / PAGE_SIZE) as u64 * 8)?;
        for (flag, entry) in out.iter_mut().zip(raw.chunks_exact(8)) {
            let mut e = [0u8; 8];
            e.copy_from_slice(entry);
            *flag = u64::from_ne_bytes(e) & (Self::PRESENT | Self::SWAPPED) != 0;
        }
        Ok(())
    }
}

/// Copies `buf.len()` bytes of the region from offset `at` with volatile reads.
fn copy_out(region: &GuestRegionMmap<()>, at: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
    let slice = region
        .get_slice(MemoryRegionAddress(at), buf.len())
        .map_err(|source| MemoryError::Read { offset: at, source })?;
    slice.copy_to(buf);
    Ok(())
}

/// Runs of set bits `(first page, count)` among the first `pages` bits, each run at
/// most [`CHUNK_PAGES`] long.
fn dirty_runs(bitmap: &[u64], pages: u64) -> Vec<(u64, usize)> {
    let mut runs: Vec<(u64, usize)> = Vec::new();
    for (w, &word) in bitmap.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let page = w as u64 * 64 + u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            if page >= pages {
                break;
            }
            match runs.last_mut() {
                Some((first, count)) if *first + *count as u64 == page && *count < CHUNK_PAGES => {
                    *count += 1
                }
                _ => runs.push((page, 1)),
            }
        }
    }
    runs
}

/// Refuses to write into the file a region of `mem` is mapped from: truncating or
/// rewriting it would change (or fault) the running VM's memory.
fn refuse_backing_file(file: &File, mem: &GuestMemoryMmap) -> Result<(), MemoryError> {
    let target = file.metadata().map_err(io_err("stat"))?;
    for region in mem.iter() {
        if let Some(fo) = region.file_offset() {
            let m = fo.file().metadata().map_err(io_err("stat"))?;
            if m.dev() == target.dev() && m.ino() == target.ino() {
                return Err(MemoryError::SameFile);
            }
        }
    }
    Ok(())
}

/// The total size of regions `(start, size)`, each a non-empty whole number of pages.
fn checked_size(regions: impl Iterator<Item = (u64, u64)>) -> Result<u64, MemoryError> {
    let mut total: u64 = 0;
    for (start, size) in regions {
        let page = PAGE_SIZE as u64;
        if size == 0 || start % page != 0 || size % page != 0 {
            return Err(MemoryError::Unaligned { start, size });
        }
        total = total
            .checked_add(size)
            .ok_or_else(|| MemoryError::Layout("sizes overflow".into()))?;
    }
    Ok(total)
}

/// Maps guest memory `MAP_PRIVATE` from a memory file: region `i` from the offset that
/// is the sum of the sizes before it. Nothing is read: pages come in from the file (or
/// the page cache other VMs share) when touched, and guest writes stay private. The
/// file may be opened read-only; it must be exactly the regions' total size.
pub fn map_memory(
    file: &File,
    regions: &[(GuestAddress, usize)],
) -> Result<GuestMemoryMmap, MemoryError> {
    let expected = checked_size(regions.iter().map(|&(a, s)| (a.0, s as u64)))?;
    let actual = file.metadata().map_err(io_err("stat"))?.len();
    if actual != expected {
        return Err(MemoryError::FileSize { expected, actual });
    }
    let shared = Arc::new(file.try_clone().map_err(io_err("duplicate"))?);
    let mut mapped = Vec::with_capacity(regions.len());
    let mut offset = 0u64;
    for (i, &(addr, size)) in regions.iter().enumerate() {
        let region = MmapRegionBuilder::new(size)
            .with_file_offset(FileOffset::from_arc(Arc::clone(&shared), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| MemoryError::Map { region: i, source })?;
        let region = GuestRegionMmap::new(region, addr)
            .ok_or_else(|| MemoryError::Layout(format!("region {i} wraps around")))?;
        mapped.push(region);
        offset += size as u64;
    }
    GuestMemoryMmap::from_regions(mapped).map_err(|e| MemoryError::Layout(e.to_string()))
}

/// Copies a memory file into `dst` keeping it sparse (`std::fs::copy` fills holes):
/// the base of a diff snapshot. Only the source's data extents are read
/// (`SEEK_DATA`/`SEEK_HOLE`) and only their non-zero pages written. Returns the number
/// of pages written.
pub fn copy_sparse(src: &File, dst: &File) -> Result<u64, MemoryError> {
    let meta = src.metadata().map_err(io_err("stat"))?;
    let dst_meta = dst.metadata().map_err(io_err("stat"))?;
    if meta.dev() == dst_meta.dev() && meta.ino() == dst_meta.ino() {
        return Err(MemoryError::CopyOntoItself);
    }
    let len = meta.len();
    dst.set_len(0).map_err(io_err("truncate"))?;
    dst.set_len(len).map_err(io_err("resize"))?;
    let mut buf = vec![0u8; CHUNK_PAGES * PAGE_SIZE];
    let mut pages = 0;
    let mut at = 0;
    while at < len {
        let Some(data) = seek(src, at, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(src, data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        // Extents are block-aligned; widen to pages so that page tests line up.
        let mut off = data - data % PAGE_SIZE as u64;
        while off < end {
            let n = (end - off).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..n];
            src.read_exact_at(chunk, off).map_err(io_err("read"))?;
            for (p, page) in chunk.chunks(PAGE_SIZE).enumerate() {
                if page != &ZERO_PAGE[..page.len()] {
                    let page_off = off + (p * PAGE_SIZE) as u64;
                    dst.write_all_at(page, page_off).map_err(io_err("write"))?;
                    pages += 1;
                }
            }
            off += n as u64;
        }
        at = end;
    }
    Ok(pages)
}

/// `lseek(file, offset, whence)`; `None` when there is no more data (`ENXIO`).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> Result<Option<u64>, MemoryError> {
    let off = libc::off_t::try_from(offset)
        .map_err(|_| MemoryError::Layout("offset too large".into()))?;
    // SAFETY: lseek only moves the file's offset (unused here: all I/O is positional).
    let r = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(MemoryError::Io {
            op: "seek in",
            source: e,
        })
    }
}

/// Reads and clears KVM's dirty log: one bitmap per region (slot `i` is region `i`),
/// the pages the guest wrote since the previous call. The slots must have been
/// registered with `KVM_MEM_LOG_DIRTY_PAGES`.
pub fn dirty_bitmaps(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<Vec<Vec<u64>>, MemoryError> {
    mem.iter()
        .enumerate()
        .map(|(slot, region)| {
            let slot = slot as u32;
            vm.get_dirty_log(slot, region.len() as usize)
                .map_err(|source| MemoryError::DirtyLog { slot, source })
        })
        .collect()
}

#[cfg(test)]
mod dirty_log_tests;
#[cfg(test)]
mod tests;
