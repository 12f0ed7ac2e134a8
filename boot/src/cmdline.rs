//! Kernel command-line checks and placement.
//!
//! The command line is written NUL-terminated at `CMDLINE_START`. Its limit comes from the
//! kernel: a bzImage (boot protocol >= 2.06) states `cmdline_size`, "the maximum size of the
//! command line without the terminating zero" (Documentation/arch/x86/boot.rst); an ELF
//! vmlinux states nothing, so Kiln uses Linux x86's default `COMMAND_LINE_SIZE` of 2048
//! bytes including the NUL. Neither may exceed `CMDLINE_MAX_SIZE` including the NUL.
//!
//! Not linux-loader's `Cmdline`/`load_cmdline`: this crate gets a finished line (assembled
//! by the VMM), and `Cmdline` trims it, rejects tabs and UTF-8 that Linux accepts, and its
//! `TooLarge` names neither the length nor the kernel's limit.

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{CMDLINE_MAX_SIZE, CMDLINE_START};
use crate::{BootError, GuestMemoryMmap};

/// Linux x86 `COMMAND_LINE_SIZE` default (bytes including the NUL), used for ELF kernels.
pub const ELF_COMMAND_LINE_SIZE: usize = 2048;

/// Longest command line (without the NUL) a kernel accepts: `hdr_cmdline_size` is the
/// bzImage's `cmdline_size` field, `None` for ELF kernels.
pub fn max_len(hdr_cmdline_size: Option<u32>) -> usize {
    let kernel = match hdr_cmdline_size {
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => ELF_COMMAND_LINE_SIZE - 1,
    };
    kernel.min(CMDLINE_MAX_SIZE - 1)
}

/// Checks `cmdline` against `max` (length without the NUL) and for embedded NULs.
pub fn validate(cmdline: &str, max: usize) -> Result<(), BootError> {
    if let Some(offset) = cmdline.bytes().position(|b| b == 0) {
        return Err(BootError::CmdlineNul { offset });
    }
    if cmdline.len() > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    Ok(())
}

/// Validates and writes `cmdline` NUL-terminated at `CMDLINE_START`; returns its address.
pub fn write(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<u64, BootError> {
    validate(cmdline, max)?;
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(BootError::write("kernel command line", CMDLINE_START))?;
    Ok(CMDLINE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn limits() {
        assert_eq!(max_len(None), 2047);
        assert_eq!(max_len(Some(255)), 255);
        assert_eq!(max_len(Some(u32::MAX)), CMDLINE_MAX_SIZE - 1);
    }

    #[test]
    fn writes_nul_terminated() {
        let m = mem();
        write(&m, "console=ttyS0 reboot=k", 100).unwrap();
        let mut buf = [0u8; 23];
        m.read_slice(&mut buf, GuestAddress(CMDLINE_START)).unwrap();
        assert_eq!(&buf, b"console=ttyS0 reboot=k\0");
    }

    #[test]
    fn empty_is_fine() {
        let m = mem();
        m.write_obj(0xffu8, GuestAddress(CMDLINE_START)).unwrap();
        write(&m, "", 10).unwrap();
        assert_eq!(m.read_obj::<u8>(GuestAddress(CMDLINE_START)).unwrap(), 0);
    }

    #[test]
    fn rejects_nul_and_long() {
        assert!(matches!(
            validate("a\0b", 10),
            Err(BootError::CmdlineNul { offset: 1 })
        ));
        assert!(matches!(
            validate("abcd", 3),
            Err(BootError::CmdlineTooLong { len: 4, max: 3 })
        ));
        assert!(validate("abc", 3).is_ok());
        let e = validate("abcd", 3).unwrap_err().to_string();
        assert!(e.contains("4 bytes") && e.contains("3 bytes"), "{e}");
    }

    #[test]
    fn write_fails_without_memory() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            write(&m, "x", 10),
            Err(BootError::GuestWrite { .. })
        ));
    }
}
