//! The Linux "zero page" (`struct boot_params`) for the 64-bit boot protocol.
//!
//! Documentation/arch/x86/boot.rst, "64-bit Boot Protocol": the loader fills
//! `boot_params`, copying the kernel's setup header into `hdr` when there is one (bzImage),
//! and passes its address in RSI. Field meanings per Documentation/arch/x86/zero-page.rst.
//! `CAN_USE_HEAP`/`heap_end_ptr` are left alone: they only matter to the real-mode setup
//! code, which the 64-bit protocol skips.

use linux_loader::loader::bootparam::{boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE};
use vm_memory::{Bytes, GuestAddress};

use crate::e820::E820Entry;
use crate::layout::ZERO_PAGE_START;
use crate::{BootError, GuestMemoryMmap};

/// `boot_flag` magic (boot.rst).
pub const BOOT_FLAG: u16 = 0xaa55;
/// "HdrS" as the little-endian `header` field.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// `type_of_loader` for a boot loader without an assigned ID.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// Kernel alignment stated for ELF kernels (no header of their own; Linux's default 16 MiB).
pub const ELF_KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// What goes into the zero page besides the setup header.
#[derive(Clone, Copy, Debug)]
pub struct ZeroPageInfo<'a> {
    /// The bzImage setup header, `None` for an ELF kernel.
    pub header: Option<setup_header>,
    /// Command-line address.
    pub cmdline_addr: u64,
    /// Command-line length without the NUL.
    pub cmdline_len: usize,
    /// Initrd `(addr, size)`.
    pub initrd: Option<(u64, u64)>,
    /// Memory map.
    pub e820: &'a [E820Entry],
    /// ACPI RSDP address (0: none), `boot_params.acpi_rsdp_addr` (boot protocol 2.14).
    pub acpi_rsdp: u64,
}

/// Builds `boot_params` (see the module docs).
pub fn build(info: &ZeroPageInfo) -> Result<boot_params, BootError> {
    let mut p = boot_params::default();
    match info.header {
        Some(h) => p.hdr = h,
        None => {
            p.hdr.kernel_alignment = ELF_KERNEL_ALIGNMENT;
            // No kernel-stated limit: state the size actually used (with the NUL).
            p.hdr.cmdline_size = u32::try_from(info.cmdline_len + 1).unwrap_or(u32::MAX);
        }
    }
    p.hdr.boot_flag = BOOT_FLAG;
    p.hdr.header = HDRS_MAGIC;
    p.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    p.hdr.cmd_line_ptr = info.cmdline_addr as u32;
    p.ext_cmd_line_ptr = (info.cmdline_addr >> 32) as u32;
    if let Some((addr, size)) = info.initrd {
        p.hdr.ramdisk_image = addr as u32;
        p.ext_ramdisk_image = (addr >> 32) as u32;
        p.hdr.ramdisk_size = size as u32;
        p.ext_ramdisk_size = (size >> 32) as u32;
    }
    if info.e820.len() > E820_MAX_ENTRIES_ZEROPAGE {
        return Err(BootError::MemoryLayout {
            detail: format!(
                "{} e820 entries exceed the zero page's {E820_MAX_ENTRIES_ZEROPAGE}",
                info.e820.len()
            ),
        });
    }
    for (slot, e) in p.e820_table.iter_mut().zip(info.e820) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    p.e820_entries = info.e820.len() as u8;
    p.acpi_rsdp_addr = info.acpi_rsdp;
    Ok(p)
}

/// Builds the zero page and writes it at `ZERO_PAGE_START`; returns that address.
pub fn write(mem: &GuestMemoryMmap, info: &ZeroPageInfo) -> Result<u64, BootError> {
    let p = build(info)?;
    mem.write_obj(p, GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::write("zero page", ZERO_PAGE_START))?;
    Ok(ZERO_PAGE_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820;

    #[test]
    fn elf_defaults() {
        let map = e820::build(128 << 20).unwrap();
        let info = ZeroPageInfo {
            header: None,
            cmdline_addr: 0x20000,
            cmdline_len: 10,
            initrd: Some((0x1_2345_6000, 0x1_0000_0100)),
            e820: &map,
            acpi_rsdp: 0,
        };
        let p = build(&info).unwrap();
        let (flag, magic, loader, cl, cls) = (
            p.hdr.boot_flag,
            p.hdr.header,
            p.hdr.type_of_loader,
            p.hdr.cmd_line_ptr,
            p.hdr.cmdline_size,
        );
        assert_eq!(
            (flag, magic, loader, cl, cls),
            (0xaa55, 0x5372_6448, 0xff, 0x20000, 11)
        );
        let (ri, eri, rs, ers) = (
            p.hdr.ramdisk_image,
            p.ext_ramdisk_image,
            p.hdr.ramdisk_size,
            p.ext_ramdisk_size,
        );
        assert_eq!((ri, eri, rs, ers), (0x2345_6000, 1, 0x100, 1));
        assert_eq!(p.e820_entries, 3);
        let t = p.e820_table[1];
        let (a, s, k) = (t.addr, t.size, t.r#type);
        assert_eq!((a, s, k), (0x9fc00, 0x60400, 2));
    }

    #[test]
    fn bzimage_header_kept() {
        let h = setup_header {
            version: 0x20f,
            cmdline_size: 255,
            loadflags: 1,
            ..Default::default()
        };
        let info = ZeroPageInfo {
            header: Some(h),
            cmdline_addr: 0x20000,
            cmdline_len: 3,
            initrd: None,
            e820: &[],
            acpi_rsdp: 0,
        };
        let p = build(&info).unwrap();
        let (v, cls, lf, ri) = (
            p.hdr.version,
            p.hdr.cmdline_size,
            p.hdr.loadflags,
            p.hdr.ramdisk_image,
        );
        assert_eq!((v, cls, lf, ri), (0x20f, 255, 1, 0));
    }

    #[test]
    fn written_to_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let info = ZeroPageInfo {
            header: None,
            cmdline_addr: 0x20000,
            cmdline_len: 0,
            initrd: None,
            e820: &[],
            acpi_rsdp: 0xe0000,
        };
        assert_eq!(write(&mem, &info).unwrap(), ZERO_PAGE_START);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(ZERO_PAGE_START + 0x70))
                .unwrap(),
            0xe0000
        );
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(ZERO_PAGE_START + 0x1fe))
                .unwrap(),
            0xaa55
        );
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(ZERO_PAGE_START + 0x202))
                .unwrap(),
            0x5372_6448
        );
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(ZERO_PAGE_START + 0x228))
                .unwrap(),
            0x20000
        );
    }

    #[test]
    fn too_many_e820() {
        let map = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: 1
            };
            129
        ];
        let info = ZeroPageInfo {
            header: None,
            cmdline_addr: 0,
            cmdline_len: 0,
            initrd: None,
            e820: &map,
            acpi_rsdp: 0,
        };
        assert!(matches!(build(&info), Err(BootError::MemoryLayout { .. })));
    }
}
