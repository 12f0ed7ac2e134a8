//! Host stand-ins: files that live in memory only and an interrupt line that counts.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use devices::irq::IrqTrigger;

/// An anonymous in-memory file (`memfd_create`), reachable by path through
/// `/proc/self/fd`: APIs that open paths get a real file, and nothing is left on disk
/// when the fuzzer stops, however it stops. tmpfs semantics: `fdatasync` costs nothing
/// and hole punching works.
pub struct MemFile {
    file: File,
}

impl MemFile {
    /// A new empty file; `name` only shows up in `/proc/self/fd` links.
    pub fn new(name: &str) -> std::io::Result<Self> {
        let c = std::ffi::CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
        let fd = unsafe { libc::memfd_create(c.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        Ok(Self { file })
    }

    /// A path that opens this file (a new open file description each time).
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// Replaces the contents with `data`.
    pub fn set(&self, data: &[u8]) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.write_all_at(data, 0)
    }

    /// Sets the length (new bytes read as zero).
    pub fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
}

/// The path of this process's disk image, `size` bytes of zeros again on every call so
/// that each input starts from the same disk (one in-memory file per process).
pub fn fresh_disk(size: u64) -> PathBuf {
    static DISK: OnceLock<MemFile> = OnceLock::new();
    let f = DISK.get_or_init(|| MemFile::new("kiln-fuzz-disk").expect("memfd"));
    f.set_len(0).expect("memfd truncate");
    f.set_len(size).expect("memfd size");
    f.path()
}

/// An interrupt line that only counts how often it was raised.
#[derive(Debug, Default)]
pub struct CountingIrq(AtomicU64);

impl CountingIrq {
    /// Times raised.
    pub fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl IrqTrigger for CountingIrq {
    fn trigger(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
