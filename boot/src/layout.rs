//! The guest-physical memory layout Kiln gives every x86-64 VM.
//!
//! Low memory holds the boot structures; RAM runs from 0 to the start of the 32-bit
//! MMIO gap (`MMIO_GAP_START`) and continues at 4 GiB when the VM has more memory
//! than fits below the gap. The legacy hole `[EBDA_START, HIMEM_START)` is reported
//! as reserved in the e820 map.

/// GDT used for the initial long-mode / protected-mode segments.
pub const GDT_START: u64 = 0x500;
/// Empty IDT loaded at start (interrupts stay off until the guest installs its own).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure (PVH boot only).
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory-map table, after the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// PVH module list (one entry: the initrd), at the end of the PVH page.
pub const PVH_MODLIST_START: u64 = 0x6f00;
/// Linux `boot_params` ("zero page"), 64-bit boot protocol only.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot CPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, then the PDPT, then four page directories.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table (first 4 GiB).
pub const PDPTE_START: u64 = 0xa000;
/// First of the four page directories mapping 0..4 GiB with 2 MiB pages.
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// The largest command line Kiln accepts (the kernel's own limit may be lower).
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
/// Start of the extended BIOS data area: from here to `HIMEM_START` is reserved.
pub const EBDA_START: u64 = 0x9fc00;
/// The MP table lives at the start of the EBDA.
pub const MPTABLE_START: u64 = EBDA_START;
/// ACPI RSDP, 16-byte aligned in the BIOS area Linux scans (0xe0000..0x100000); the other
/// ACPI tables follow it, all below `HIMEM_START` (a few KiB even for 254 vCPUs).
pub const ACPI_RSDP_START: u64 = 0xe_0000;
/// Start of high memory, where kernels are loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap below 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Boot-timer device (Firecracker-compatible): the guest writes 123 here.
pub const BOOT_TIMER_ADDR: u64 = MMIO_GAP_START;
/// First virtio-mmio device slot.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of each virtio-mmio slot.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// First GSI handed to virtio-mmio devices (one each).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last GSI usable for virtio-mmio devices (IOAPIC pins 5..=23, skipping none in use).
pub const VIRTIO_IRQ_LAST: u32 = 23;
/// IOAPIC MMIO base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's TSS area (three pages), inside the MMIO gap.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// KVM's identity-map page, just below the TSS.
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;
/// Serial port COM1 base and IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// IRQ line of COM1.
pub const COM1_IRQ: u32 = 4;
/// i8042 data and command ports.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command/status port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
/// IRQ line of the i8042 keyboard.
pub const I8042_KBD_IRQ: u32 = 1;

/// Guest RAM regions `(start, size)` for a VM with `mem_size` bytes of memory:
/// `[0, mem)` when it fits below the MMIO gap, otherwise split around the gap.
pub fn ram_regions(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_split_around_gap() {
        assert_eq!(ram_regions(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_regions(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_regions(4 << 30),
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
    }
}
