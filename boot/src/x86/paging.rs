//! Identity page tables for the 64-bit boot protocol: one PML4 entry → one PDPT with four
//! entries → four page directories of 2 MiB pages, mapping 0..4 GiB 1:1 (RAM below the MMIO
//! gap and the gap itself, so devices are reachable). Entry format: Intel SDM vol. 3,
//! 4.5 "4-Level Paging".

use vm_memory::{Bytes, GuestAddress};

use crate::layout::{PDE_START, PDPTE_START, PML4_START};
use crate::{BootError, GuestMemoryMmap};

/// Present + writable.
const PRESENT_RW: u64 = 0x3;
/// Present + writable + page size (2 MiB leaf).
const PRESENT_RW_PS: u64 = 0x83;
/// Number of page directories (one per GiB).
pub const PD_COUNT: u64 = 4;

/// Writes the tables; returns the PML4 address (the CR3 value).
pub fn write(mem: &GuestMemoryMmap) -> Result<u64, BootError> {
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))
        .map_err(BootError::write("PML4", PML4_START))?;
    for pd in 0..PD_COUNT {
        let pd_addr = PDE_START + pd * 0x1000;
        let at = PDPTE_START + pd * 8;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(at))
            .map_err(BootError::write("PDPT", at))?;
        let mut page = [0u8; 4096];
        for (i, e) in page.chunks_exact_mut(8).enumerate() {
            let phys = ((pd << 9) + i as u64) << 21;
            e.copy_from_slice(&(phys | PRESENT_RW_PS).to_le_bytes());
        }
        mem.write_slice(&page, GuestAddress(pd_addr))
            .map_err(BootError::write("page directory", pd_addr))?;
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables like the MMU for a 2 MiB mapping.
    fn translate(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> u64 {
        let rd = |a: u64| mem.read_obj::<u64>(GuestAddress(a)).unwrap();
        let pml4e = rd(cr3 + ((va >> 39) & 511) * 8);
        assert_eq!(pml4e & 1, 1);
        let pdpte = rd((pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        assert_eq!(pdpte & 1, 1);
        let pde = rd((pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        assert_eq!(pde & 0x83, 0x83);
        (pde & !0x1f_ffff & !(1 << 63)) | (va & 0x1f_ffff)
    }

    #[test]
    fn identity_maps_4g() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let cr3 = write(&mem).unwrap();
        assert_eq!(cr3, PML4_START);
        for va in [
            0u64,
            0x1000,
            0x100_0000,
            0x1234_5678,
            0xc000_0000,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&mem, cr3, va), va);
        }
        // Only the first 4 GiB are mapped.
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(PDPTE_START + 32)).unwrap(),
            0
        );
    }

    #[test]
    fn needs_memory() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(write(&mem), Err(BootError::GuestWrite { .. })));
    }
}
