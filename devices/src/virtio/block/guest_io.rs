//! Disk I/O straight between the image file and guest memory (no bounce buffer).
//!
//! vm-memory moves bytes between guest memory and any `ReadVolatile` / `WriteVolatile`,
//! but its `File` implementations use the file position; [`FileAt`] adds the offset
//! (`pread` / `pwrite`), which no crate we use provides for volatile slices.

use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::volatile_memory::{Error as VolatileError, VolatileSlice};
use vm_memory::{Bytes, GuestMemoryError, GuestMemoryMmap, ReadVolatile, WriteVolatile};

use crate::virtio::chain::Segments;

/// `file` at byte offset `pos`, advancing as bytes move.
struct FileAt<'a> {
    file: &'a File,
    pos: u64,
}

impl FileAt<'_> {
    fn offset(&self) -> Result<libc::off_t, VolatileError> {
        libc::off_t::try_from(self.pos)
            .map_err(|_| VolatileError::IOError(std::io::ErrorKind::InvalidInput.into()))
    }

    fn advance(&mut self, n: isize) -> Result<usize, VolatileError> {
        let n = usize::try_from(n)
            .map_err(|_| VolatileError::IOError(std::io::Error::last_os_error()))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileError> {
        let off = self.offset()?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the guard keeps `buf`'s guest memory mapped for the call, and pread
        // writes at most `buf.len()` bytes at its start; the fd is ours.
        let n =
            unsafe { libc::pread(self.file.as_raw_fd(), guard.as_ptr().cast(), buf.len(), off) };
        let n = self.advance(n)?;
        buf.bitmap().mark_dirty(0, n);
        Ok(n)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileError> {
        let off = self.offset()?;
        let guard = buf.ptr_guard();
        // SAFETY: the guard keeps `buf`'s guest memory mapped for the call, and pwrite
        // reads at most `buf.len()` bytes from its start; the fd is ours.
        let n =
            unsafe { libc::pwrite(self.file.as_raw_fd(), guard.as_ptr().cast(), buf.len(), off) };
        self.advance(n)
    }
}

/// Reads `len` bytes of `file` at `pos` into `segs` from flat offset `at`.
pub fn read_file_into(
    mem: &GuestMemoryMmap<()>,
    segs: &Segments,
    at: u64,
    file: &File,
    pos: u64,
    len: usize,
) -> Result<(), GuestMemoryError> {
    let mut src = FileAt { file, pos };
    segs.walk(at, len, |addr, r| {
        mem.read_exact_volatile_from(addr, &mut src, r.len())
    })
}

/// Writes `len` bytes of `segs` from flat offset `at` to `file` at `pos`.
pub fn write_file_from(
    mem: &GuestMemoryMmap<()>,
    segs: &Segments,
    at: u64,
    file: &File,
    pos: u64,
    len: usize,
) -> Result<(), GuestMemoryError> {
    let mut dst = FileAt { file, pos };
    segs.walk(at, len, |addr, r| {
        mem.write_all_volatile_to(addr, &mut dst, r.len())
    })
}
