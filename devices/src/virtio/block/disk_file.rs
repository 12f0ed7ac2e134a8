//! Opening a disk image: only a regular file or a block device is a disk, and opening
//! one must never block start-up.
//!
//! The path is checked with `stat` before it is opened (a FIFO or a device node is
//! never opened), opened with `O_NONBLOCK` (a FIFO swapped in meanwhile cannot block the
//! `open`), checked again with `fstat` on the opened fd (what is checked is what is
//! used), and only then switched back to blocking I/O and `flock`ed (exclusive
//! read-write, shared read-only).

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::super::Error;

/// An opened, locked disk image and its size in bytes.
pub struct DiskFile {
    /// The image, open read-only or read-write, blocking.
    pub file: File,
    /// Size in bytes (a block device's capacity).
    pub size: u64,
}

/// What the fix for an open error is, if Kiln can tell (starts with "; ").
fn open_hint(kind: std::io::ErrorKind, raw: Option<i32>, read_only: bool) -> &'static str {
    use std::io::ErrorKind::*;
    match (kind, raw) {
        (NotFound, _) => "; check the path",
        (_, Some(libc::EROFS)) => {
            "; the filesystem is read-only: open the disk read-only (--disk path=FILE,readonly=on, \
             or readonly = true in the config file)"
        }
        (PermissionDenied, _) if !read_only => {
            "; make the file readable and writable by this user, or open the disk read-only \
             (--disk path=FILE,readonly=on, or readonly = true in the config file)"
        }
        (PermissionDenied, _) => "; make the file readable by this user",
        _ => "",
    }
}

/// What a file type is, for files that are not disks; `None` for a regular file or a
/// block device.
fn not_a_disk(t: std::fs::FileType) -> Option<&'static str> {
    if t.is_file() || t.is_block_device() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

/// Opens `path` as a disk image (read-only or read-write) and locks it.
pub fn open(path: &Path, read_only: bool) -> Result<DiskFile, Error> {
    let open_err = |source: std::io::Error| Error::DiskOpen {
        hint: open_hint(source.kind(), source.raw_os_error(), read_only),
        path: path.to_path_buf(),
        source,
    };
    let not_disk = |what| Error::DiskNotAFile {
        path: path.to_path_buf(),
        what,
    };
    let meta = std::fs::metadata(path).map_err(open_err)?;
    if let Some(what) = not_a_disk(meta.file_type()) {
        return Err(not_disk(what));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EISDIR) => not_disk("a directory"),
            _ => open_err(e),
        })?;
    let meta = file.metadata().map_err(open_err)?;
    if let Some(what) = not_a_disk(meta.file_type()) {
        return Err(not_disk(what));
    }
    set_blocking(&file).map_err(open_err)?;
    lock(&file, path, read_only)?;
    let size = size_of(&file, &meta, path)?;
    Ok(DiskFile { file, size })
}

/// The current size in bytes of the image open as `file` (for a resized image).
pub fn size(file: &File, path: &Path) -> Result<u64, Error> {
    let meta = file.metadata().map_err(|source| Error::DiskSize {
        path: path.to_path_buf(),
        source,
    })?;
    size_of(file, &meta, path)
}

fn size_of(file: &File, meta: &std::fs::Metadata, path: &Path) -> Result<u64, Error> {
    if meta.file_type().is_file() {
        return Ok(meta.len());
    }
    // A block device's st_size is 0: its size is where its end is.
    (&*file)
        .seek(SeekFrom::End(0))
        .map_err(|source| Error::DiskSize {
            path: path.to_path_buf(),
            source,
        })
}

/// Whether `path` names the file open as `file` (same device and inode).
pub fn is_same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Clears `O_NONBLOCK` (requests do blocking `pread`/`pwrite`).
fn set_blocking(file: &File) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: fcntl F_GETFL/F_SETFL on a file descriptor we own; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `flock`s the image: exclusive read-write, shared read-only. A lock held by someone
/// else is an error; a filesystem without locks only gets a warning.
fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), Error> {
    let op = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on a file descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(Error::DiskLocked {
                path: path.to_path_buf(),
            });
        }
        log::warn!(
            "virtio-blk: cannot lock {}: {e}; continuing unlocked",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use super::*;

    /// A temp dir removed on drop.
    struct Dir(PathBuf);
    impl Dir {
        fn new(name: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("kiln-disk-file-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    fn not_a_file(r: Result<DiskFile, Error>) -> String {
        match r {
            Err(e @ Error::DiskNotAFile { .. }) => e.to_string(),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("accepted as a disk"),
        }
    }

    #[test]
    fn regular_file_is_opened_with_its_size_and_blocking() {
        let d = Dir::new("reg");
        let p = d.0.join("disk.img");
        std::fs::write(&p, vec![0u8; 4096 + 100]).unwrap();
        let disk = open(&p, false).unwrap();
        assert_eq!(disk.size, 4196);
        // SAFETY: F_GETFL on an fd we own.
        let flags = unsafe { libc::fcntl(disk.file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "O_NONBLOCK left set");
    }

    #[test]
    fn fifo_is_refused_without_blocking() {
        let d = Dir::new("fifo");
        let p = d.0.join("fifo");
        mkfifo(&p);
        for read_only in [true, false] {
            let t = Instant::now();
            let msg = not_a_file(open(&p, read_only));
            assert!(msg.contains("FIFO"), "{msg}");
            assert!(t.elapsed() < Duration::from_secs(2));
        }
    }

    #[test]
    fn directory_is_refused() {
        let d = Dir::new("dir");
        for read_only in [true, false] {
            let msg = not_a_file(open(&d.0, read_only));
            assert!(msg.contains("a directory"), "{msg}");
        }
    }

    #[test]
    fn character_device_is_refused() {
        let msg = not_a_file(open(Path::new("/dev/null"), true));
        assert!(msg.contains("character device"), "{msg}");
        assert!(msg.contains("/dev/null"), "{msg}");
    }

    #[test]
    fn a_written_disk_is_locked_against_a_second_writer() {
        let d = Dir::new("lock");
        let p = d.0.join("disk.img");
        std::fs::write(&p, [0u8; 512]).unwrap();
        let _first = open(&p, false).unwrap();
        assert!(matches!(open(&p, false), Err(Error::DiskLocked { .. })));
        assert!(matches!(open(&p, true), Err(Error::DiskLocked { .. })));
    }

    #[test]
    fn read_only_hint_gives_the_real_syntax() {
        let h = open_hint(
            std::io::ErrorKind::PermissionDenied,
            Some(libc::EACCES),
            false,
        );
        assert!(h.contains("readonly=on"), "{h}");
        assert!(h.contains("readonly = true"), "{h}");
        assert!(!h.contains("read_only"), "{h}");
        let h = open_hint(std::io::ErrorKind::Other, Some(libc::EROFS), false);
        assert!(h.contains("readonly=on"), "{h}");
    }

    /// The block devices under /dev with their sizes in bytes, from /sys/block.
    fn block_devices() -> Vec<(PathBuf, u64)> {
        let Ok(dir) = std::fs::read_dir("/sys/block") else {
            return Vec::new();
        };
        dir.filter_map(|e| {
            let name = e.ok()?.file_name();
            let size = Path::new("/sys/block").join(&name).join("size");
            let sectors: u64 = std::fs::read_to_string(size).ok()?.trim().parse().ok()?;
            let dev = Path::new("/dev").join(&name);
            let is_blk = std::fs::metadata(&dev).ok()?.file_type().is_block_device();
            is_blk.then_some((dev, sectors * 512))
        })
        .collect()
    }

    #[test]
    fn block_device_is_accepted_with_its_capacity() {
        // The first block device this process may open, read-only (a shared lock, no
        // writes); containers often forbid some (EPERM) or all of them.
        for (dev, bytes) in block_devices() {
            match open(&dev, true) {
                Ok(disk) => {
                    assert_eq!(disk.size, bytes, "{}", dev.display());
                    return;
                }
                Err(Error::DiskOpen { source, .. })
                    if matches!(source.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert!(
            std::env::var("CI").is_err(),
            "CI needs an openable block device"
        );
        eprintln!("skipped: no block device under /dev that this process may open");
    }
}
