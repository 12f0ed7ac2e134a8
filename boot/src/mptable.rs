//! Intel MultiProcessor Specification 1.4 tables, so the guest finds its CPUs and IOAPIC
//! without ACPI.
//!
//! At `MPTABLE_START` (639 KiB, which Linux scans as "the last KiB of base memory"): the MP
//! Floating Pointer Structure ("_MP_", spec 4.1), then the MP Configuration Table ("PCMP",
//! spec 4.2) with one Processor entry per vCPU (4.3.1), an ISA Bus entry (4.3.2), an I/O
//! APIC entry (4.3.3), I/O Interrupt Assignment entries mapping ISA IRQs 0..23 1:1 to the
//! IOAPIC pins (4.3.4) and Local Interrupt Assignment entries LINT0 = ExtINT, LINT1 = NMI
//! (4.3.5). Both structures carry checksums making their bytes sum to zero.

use vm_memory::{Bytes, GuestAddress};

use crate::checksum::checksum;
use crate::layout::{APIC_START, HIMEM_START, IOAPIC_START, MPTABLE_START};
use crate::{BootError, GuestMemoryMmap};

/// Most vCPUs the table describes: APIC ids 0..cpus-1, the IOAPIC takes id `cpus`, 0xff is
/// the broadcast id.
pub const MAX_CPUS: u8 = 254;
/// MP spec revision 1.4.
const SPEC_REV: u8 = 4;
/// Local APIC version reported (KVM's in-kernel LAPIC is 0x14).
const APIC_VERSION: u8 = 0x14;
/// IOAPIC version (82093AA: 0x11).
const IOAPIC_VERSION: u8 = 0x11;
/// Processor signature: family 6.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID feature flags reported: FPU and APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// Number of ISA IRQs routed (= IOAPIC pins).
pub const IRQ_COUNT: u8 = 24;
/// Entry type codes (spec table 4-3).
const ENTRY_CPU: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
/// Interrupt types (spec table 4-8).
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Sizes.
const FLOATING_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const CPU_ENTRY_SIZE: usize = 20;
const SMALL_ENTRY_SIZE: usize = 8;

/// Bytes the floating pointer plus configuration table take for `cpus` vCPUs.
pub fn size(cpus: u8) -> usize {
    FLOATING_SIZE
        + HEADER_SIZE
        + CPU_ENTRY_SIZE * usize::from(cpus)
        + SMALL_ENTRY_SIZE * (2 + usize::from(IRQ_COUNT) + 2)
}

/// Builds the floating pointer followed by the configuration table, for placement at `base`.
pub fn build(base: u64, cpus: u8) -> Result<Vec<u8>, BootError> {
    if cpus == 0 {
        return Err(BootError::NoCpus);
    }
    if cpus > MAX_CPUS {
        return Err(BootError::TooManyCpus {
            cpus,
            max: MAX_CPUS,
        });
    }
    let ioapic_id = cpus;
    // Configuration table body (after the 44-byte header).
    let mut body = Vec::new();
    for id in 0..cpus {
        body.extend_from_slice(&[ENTRY_CPU, id, APIC_VERSION, 1 | if id == 0 { 2 } else { 0 }]);
        body.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        body.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        body.extend_from_slice(&[0; 8]);
    }
    body.extend_from_slice(&[ENTRY_BUS, 0]);
    body.extend_from_slice(b"ISA   ");
    body.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    body.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for irq in 0..IRQ_COUNT {
        // type, irq type, flags (0: conforms to bus), source bus 0, source irq, IOAPIC, pin.
        body.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    // Destination 0xff: all local APICs.
    body.extend_from_slice(&[ENTRY_LINT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    body.extend_from_slice(&[ENTRY_LINT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = u16::from(cpus) + 2 + u16::from(IRQ_COUNT) + 2;
    let table_len =
        u16::try_from(HEADER_SIZE + body.len()).map_err(|_| BootError::TooManyCpus {
            cpus,
            max: MAX_CPUS,
        })?;

    let mut table = Vec::with_capacity(usize::from(table_len));
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]); // checksum patched below
    table.extend_from_slice(b"KILN    "); // OEM id, 8 bytes
    table.extend_from_slice(b"KILN MICROVM"); // product id, 12 bytes
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&body);
    table[7] = checksum(&table);

    let table_addr = base + FLOATING_SIZE as u64;
    let mut out = Vec::with_capacity(FLOATING_SIZE + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    // length in 16-byte units, spec rev, checksum, feature bytes 1..5 (0: table present).
    out.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP tables at `base`, refusing to run past `limit`.
fn write_at(mem: &GuestMemoryMmap, base: u64, limit: u64, cpus: u8) -> Result<(), BootError> {
    let bytes = build(base, cpus)?;
    if base + bytes.len() as u64 > limit {
        let fit = (limit.saturating_sub(base) as usize).saturating_sub(size(0)) / CPU_ENTRY_SIZE;
        return Err(BootError::TooManyCpus {
            cpus,
            max: fit.min(usize::from(MAX_CPUS)) as u8,
        });
    }
    mem.write_slice(&bytes, GuestAddress(base))
        .map_err(BootError::write("MP table", base))
}

/// Writes the MP tables for `cpus` vCPUs at `MPTABLE_START` (below `HIMEM_START`).
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), BootError> {
    write_at(mem, MPTABLE_START, HIMEM_START, cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    use crate::test_images::read_guest as read;

    /// Parses the tables back: returns (cpu apic ids, bsp flags, ioapic id, entries by type).
    fn parse(mem: &GuestMemoryMmap) -> (Vec<u8>, Vec<bool>, u8, [usize; 5]) {
        let fp = read(mem, MPTABLE_START, 16);
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(
            fp.iter().fold(0u8, |a, &b| a.wrapping_add(b)),
            0,
            "floating checksum"
        );
        assert_eq!(fp[8], 1);
        assert_eq!(fp[9], 4);
        let table_addr = u64::from(u32::from_le_bytes(fp[4..8].try_into().unwrap()));
        let hdr = read(mem, table_addr, 44);
        assert_eq!(&hdr[..4], b"PCMP");
        let len = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
        let table = read(mem, table_addr, len);
        assert_eq!(
            table.iter().fold(0u8, |a, &b| a.wrapping_add(b)),
            0,
            "table checksum"
        );
        assert_eq!(
            u32::from_le_bytes(table[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        let count = u16::from_le_bytes([table[34], table[35]]);
        let (mut ids, mut bsp, mut ioapic, mut kinds) = (vec![], vec![], 0, [0; 5]);
        let mut off = 44;
        for _ in 0..count {
            let t = table[off];
            kinds[usize::from(t)] += 1;
            match t {
                0 => {
                    ids.push(table[off + 1]);
                    bsp.push(table[off + 3] & 2 != 0);
                    off += 20;
                }
                2 => {
                    ioapic = table[off + 1];
                    assert_eq!(
                        u32::from_le_bytes(table[off + 4..off + 8].try_into().unwrap()),
                        0xfec0_0000
                    );
                    off += 8;
                }
                4 => {
                    let (ty, lint) = (table[off + 1], table[off + 7]);
                    assert_eq!((ty, lint), if lint == 0 { (3, 0) } else { (1, 1) });
                    off += 8;
                }
                _ => off += 8,
            }
        }
        assert_eq!(off, len);
        (ids, bsp, ioapic, kinds)
    }

    #[test]
    fn round_trip() {
        for cpus in [1u8, 2, 7, MAX_CPUS] {
            let m = mem();
            write(&m, cpus).unwrap();
            let (ids, bsp, ioapic, kinds) = parse(&m);
            assert_eq!(ids, (0..cpus).collect::<Vec<_>>());
            assert_eq!(bsp.iter().filter(|&&b| b).count(), 1);
            assert!(bsp[0]);
            assert_eq!(ioapic, cpus);
            assert_eq!(kinds, [usize::from(cpus), 1, 1, 24, 2]);
            assert_eq!(build(MPTABLE_START, cpus).unwrap().len(), size(cpus));
        }
    }

    #[test]
    fn cpu_count_errors() {
        let m = mem();
        assert!(matches!(write(&m, 0), Err(BootError::NoCpus)));
        assert!(matches!(
            write(&m, 255),
            Err(BootError::TooManyCpus {
                cpus: 255,
                max: 254
            })
        ));
        // Not enough room before the limit.
        let limit = MPTABLE_START + size(4) as u64;
        assert!(write_at(&m, MPTABLE_START, limit, 4).is_ok());
        let e = write_at(&m, MPTABLE_START, limit, 5).unwrap_err();
        assert!(
            matches!(e, BootError::TooManyCpus { cpus: 5, max: 4 }),
            "{e}"
        );
    }

    #[test]
    fn needs_memory() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(write(&m, 1), Err(BootError::GuestWrite { .. })));
    }
}
