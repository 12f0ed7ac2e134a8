//! The e820 memory map Kiln reports to the guest (same map for the zero page and PVH).
//!
//! Layout: RAM `[0, EBDA_START)`, reserved `[EBDA_START, HIMEM_START)` (EBDA, VGA hole,
//! BIOS area; the MP table lives there), RAM from `HIMEM_START` to the end of the first
//! RAM region, and RAM for the region above 4 GiB if there is one.
//! See Documentation/arch/x86/zero-page.rst (`e820_table`) and the ACPI spec's
//! address range types.

use crate::layout::{ram_regions, EBDA_START, HIMEM_START};
use crate::BootError;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One e820 range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// `E820_RAM` or `E820_RESERVED`.
    pub kind: u32,
}

/// Builds the e820 map for a VM with `mem_size` bytes of RAM laid out by
/// [`ram_regions`]. The first region must extend past `HIMEM_START`.
pub fn build(mem_size: u64) -> Result<Vec<E820Entry>, BootError> {
    let regions = ram_regions(mem_size);
    let (first_start, first_size) = regions.first().copied().unwrap_or((0, 0));
    let first_end = first_start.saturating_add(first_size);
    if first_start != 0 || first_end <= HIMEM_START {
        return Err(BootError::MemoryLayout {
            detail: format!("{mem_size:#x} bytes of RAM is not more than {HIMEM_START:#x}"),
        });
    }
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: HIMEM_START,
            size: first_end - HIMEM_START,
            kind: E820_RAM,
        },
    ];
    for &(addr, size) in regions.iter().skip(1) {
        map.push(E820Entry {
            addr,
            size,
            kind: E820_RAM,
        });
    }
    Ok(map)
}

/// Total bytes of RAM in `map`.
pub fn ram_total(map: &[E820Entry]) -> u64 {
    map.iter()
        .filter(|e| e.kind == E820_RAM)
        .map(|e| e.size)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

    #[test]
    fn map_128m() {
        let map = build(128 << 20).unwrap();
        assert_eq!(map.len(), 3);
        assert_eq!(ram_total(&map), (128 << 20) - (0x10_0000 - 0x9fc00));
        assert_eq!(
            map[1],
            E820Entry {
                addr: 0x9fc00,
                size: 0x60400,
                kind: E820_RESERVED
            }
        );
        assert_eq!(map[2].addr + map[2].size, 128 << 20);
    }

    #[test]
    fn map_above_4g() {
        let mem = 4u64 << 30;
        let map = build(mem).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(map[2].addr + map[2].size, MMIO_GAP_START);
        assert_eq!(
            map[3],
            E820Entry {
                addr: MMIO_GAP_END,
                size: mem - MMIO_GAP_START,
                kind: E820_RAM
            }
        );
        assert_eq!(ram_total(&map), mem - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn too_small() {
        assert!(matches!(
            build(HIMEM_START),
            Err(BootError::MemoryLayout { .. })
        ));
        assert!(matches!(build(0), Err(BootError::MemoryLayout { .. })));
    }
}
