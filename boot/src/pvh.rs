//! PVH boot: `hvm_start_info`, its memory map and module list.
//!
//! Layout per Xen's docs/misc/pvh.pandoc ("PVH boot protocol") and
//! xen/include/public/arch-x86/hvm/start_info.h (also Linux's
//! arch/x86/include/asm/xen/hvm_start_info.h). Version 1 adds the memory map.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info, XEN_HVM_START_MAGIC_VALUE,
};
use vm_memory::{Bytes, GuestAddress};

use crate::e820::E820Entry;
use crate::layout::{PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START};
use crate::{BootError, GuestMemoryMmap};

/// Writes the start info (at `PVH_INFO_START`), the memory map (at `PVH_MEMMAP_START`) and,
/// with an initrd `(addr, size)`, a one-entry module list (at `PVH_MODLIST_START`).
/// `rsdp` is the ACPI RSDP address (0: none). Returns the start-info address, to be
/// passed in EBX.
// Not linux-loader's `PvhBootConfigurator::write_bootparams`: its errors name neither the
// structure nor the guest address, which `BootError::GuestWrite` reports.
pub fn write(
    mem: &GuestMemoryMmap,
    cmdline_addr: u64,
    initrd: Option<(u64, u64)>,
    e820: &[E820Entry],
    rsdp: u64,
) -> Result<u64, BootError> {
    let entry_size = std::mem::size_of::<hvm_memmap_table_entry>() as u64;
    let map_end = PVH_MEMMAP_START + entry_size * e820.len() as u64;
    if map_end > PVH_MODLIST_START {
        return Err(BootError::MemoryLayout {
            detail: format!("{} memory-map entries overflow the PVH area", e820.len()),
        });
    }
    for (i, e) in e820.iter().enumerate() {
        let addr = PVH_MEMMAP_START + entry_size * i as u64;
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        mem.write_obj(entry, GuestAddress(addr))
            .map_err(BootError::write("PVH memory map", addr))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: cmdline_addr,
        rsdp_paddr: rsdp,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        let m = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        mem.write_obj(m, GuestAddress(PVH_MODLIST_START))
            .map_err(BootError::write("PVH module list", PVH_MODLIST_START))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(BootError::write("PVH start info", PVH_INFO_START))?;
    Ok(PVH_INFO_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e820;

    #[test]
    fn sizes_match_spec() {
        assert_eq!(std::mem::size_of::<hvm_start_info>(), 56);
        assert_eq!(std::mem::size_of::<hvm_modlist_entry>(), 32);
        assert_eq!(std::mem::size_of::<hvm_memmap_table_entry>(), 24);
        const { assert!(PVH_INFO_START + 56 <= PVH_MEMMAP_START) };
    }

    #[test]
    fn writes_all() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let map = e820::build(128 << 20).unwrap();
        let at = write(&mem, 0x20000, Some((0x700_0000, 0x1234)), &map, 0xe0000).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(info.magic, 0x336e_c578);
        assert_eq!(info.version, 1);
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.modlist_paddr, PVH_MODLIST_START);
        assert_eq!(info.cmdline_paddr, 0x20000);
        assert_eq!(info.rsdp_paddr, 0xe0000);
        assert_eq!(info.memmap_entries, 3);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), (0x700_0000, 0x1234));
        let e: hvm_memmap_table_entry = mem.read_obj(GuestAddress(info.memmap_paddr + 24)).unwrap();
        assert_eq!((e.addr, e.size, e.type_), (0x9fc00, 0x60400, 2));
    }

    #[test]
    fn no_initrd_no_modules() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&mem, 0x20000, None, &[], 0).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
    }

    #[test]
    fn map_overflow_and_missing_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let map = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: 1
            };
            200
        ];
        assert!(matches!(
            write(&mem, 0, None, &map, 0),
            Err(BootError::MemoryLayout { .. })
        ));
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            write(&small, 0, None, &[], 0),
            Err(BootError::GuestWrite { .. })
        ));
    }
}
