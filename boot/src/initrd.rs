//! Initrd placement and loading.
//!
//! Following Documentation/arch/x86/boot.rst ("initrd_addr_max", "ramdisk_image"), the
//! initrd goes page-aligned as high as possible below `min(initrd_addr_max + 1, end of the
//! first RAM region)` and above everything the kernel uses while booting.

use std::fs::File;
use std::path::Path;

use vm_memory::{Bytes, GuestAddress};

use crate::{BootError, GuestMemoryMmap};

/// Page size used to align the initrd.
pub const PAGE_SIZE: u64 = 0x1000;
/// `initrd_addr_max` default when the kernel does not state one (boot.rst: 0x37ffffff).
pub const DEFAULT_INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

/// Chooses the initrd address: page-aligned, `>= floor`, ending at or below `ceiling`.
/// `floor` is the end of the kernel's boot-time footprint (rounded up to a page here).
pub fn place(path: &Path, size: u64, floor: u64, ceiling: u64) -> Result<u64, BootError> {
    let floor_aligned = floor
        .checked_add(PAGE_SIZE - 1)
        .map_or(u64::MAX, |v| v & !(PAGE_SIZE - 1));
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        floor: floor_aligned,
        ceiling,
        available: ceiling.saturating_sub(floor_aligned),
    };
    let addr = ceiling.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < floor_aligned {
        return Err(too_large());
    }
    Ok(addr)
}

/// Loads the initrd at `path` as high as allowed (see [`place`]); returns `(addr, size)`.
pub fn load(
    mem: &GuestMemoryMmap,
    path: &Path,
    floor: u64,
    ceiling: u64,
) -> Result<(u64, u64), BootError> {
    let io_err = |source| BootError::InitrdRead {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size == 0 {
        return Err(BootError::InitrdEmpty {
            path: path.to_owned(),
        });
    }
    let addr = place(path, size, floor, ceiling)?;
    let len = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        floor,
        ceiling,
        available: ceiling.saturating_sub(floor),
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(source) => BootError::InitrdRead {
                path: path.to_owned(),
                source,
            },
            source => BootError::GuestWrite {
                what: "initrd",
                addr,
                source,
            },
        })?;
    log::debug!(
        "loaded initrd {} at {addr:#x}, {size} bytes",
        path.display()
    );
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::tempfile::TempFile;

    #[test]
    fn placed_high_and_aligned() {
        let p = Path::new("i");
        assert_eq!(
            place(p, 0x1800, 0x20_0000, 0x800_0000).unwrap(),
            0x800_0000 - 0x2000
        );
        assert_eq!(
            place(p, 0x1000, 0x20_0000, 0x800_0000).unwrap(),
            0x800_0000 - 0x1000
        );
        // Exactly fits.
        assert!(place(p, 0x1000, 0x7ff_f001, 0x800_0000).is_err());
        assert_eq!(
            place(p, 0x1000, 0x7ff_f000, 0x800_0000).unwrap(),
            0x7ff_f000
        );
    }

    #[test]
    fn too_large() {
        let e = place(Path::new("/x/initrd"), 0x900_0000, 0x20_0000, 0x800_0000).unwrap_err();
        assert!(matches!(
            e,
            BootError::InitrdTooLarge {
                size: 0x900_0000,
                ..
            }
        ));
        let s = e.to_string();
        assert!(s.contains("/x/initrd") && s.contains("--memory"), "{s}");
    }

    #[test]
    fn loads_file() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let f = TempFile::new().unwrap();
        std::fs::write(f.as_path(), b"initrd-bytes").unwrap();
        let (addr, size) = load(&mem, f.as_path(), 0x20_0000, 0x40_0000).unwrap();
        assert_eq!((addr, size), (0x3f_f000, 12));
        let mut buf = [0u8; 12];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        assert_eq!(&buf, b"initrd-bytes");
    }

    #[test]
    fn missing_and_empty() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap();
        let e = load(&mem, Path::new("/nonexistent/initrd"), 0, 0x40_0000).unwrap_err();
        assert!(matches!(e, BootError::InitrdRead { .. }));
        assert!(e.to_string().contains("/nonexistent/initrd"));
        let f = TempFile::new().unwrap();
        let e = load(&mem, f.as_path(), 0, 0x40_0000).unwrap_err();
        assert!(matches!(e, BootError::InitrdEmpty { .. }));
    }
}
