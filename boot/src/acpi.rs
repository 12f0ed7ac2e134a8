//! Minimal ACPI tables, so kernels without MP-table support (`CONFIG_X86_MPPARSE=n`) find
//! the vCPUs and the IOAPIC.
//!
//! Written at `ACPI_RSDP_START` (0xe0000, inside the BIOS area Linux scans for the RSDP and
//! that the e820 map reports reserved), each table 16-byte aligned, all below `HIMEM_START`:
//! RSDP (ACPI 6.4 §5.2.5, revision 2) → XSDT (§5.2.8) listing the FADT and the MADT; the
//! FADT (§5.2.9, revision 6.4) sets `HW_REDUCED_ACPI` and points at an empty DSDT (§5.2.11.1,
//! header only: no AML); the MADT (§5.2.12) holds one Processor Local APIC per vCPU
//! (ACPI id = APIC id = index), the I/O APIC (id = `cpus`, GSI base 0) and a Local APIC NMI
//! on LINT1 of every processor.
//!
//! No Interrupt Source Override: Kiln keeps KVM's default GSI routing (GSI n → IOAPIC pin n
//! and, for n < 16, PIC input n), and the in-kernel PIT raises GSI 0, so ISA IRQ 0 really is
//! on IOAPIC pin 0, the identity mapping ACPI assumes when no override is present (§5.2.12.5).
//! An IRQ0 → GSI 2 override (QEMU's layout, which re-routes GSI 0 to pin 2) would point the
//! guest at a pin nothing drives. The MP table describes the same 1:1 routing.
//!
//! `HW_REDUCED_ACPI` means no PM timer, SCI, GPEs or fixed-feature registers. The FADT's
//! IA-PC boot flags say an 8042 is present (Kiln emulates one; Linux keeps probing it and
//! `reboot=k` uses it) and VGA is not.

use vm_memory::{Bytes, GuestAddress};

use crate::checksum::checksum;
use crate::layout::{ACPI_RSDP_START, APIC_START, HIMEM_START, IOAPIC_START};
use crate::mptable::MAX_CPUS;
use crate::{BootError, GuestMemoryMmap};

/// OEM id written into every table (6 bytes).
pub const OEM_ID: [u8; 6] = *b"KILN  ";
/// Creator id and revision of every table.
const CREATOR_ID: [u8; 4] = *b"KILN";
const CREATOR_REVISION: u32 = 1;
const OEM_REVISION: u32 = 1;
/// System description table header size (§5.2.6).
pub const HEADER_SIZE: usize = 36;
/// RSDP size for revision 2 (§5.2.5.3).
pub const RSDP_SIZE: usize = 36;
/// FADT size for revision 6 (§5.2.9, table 5.9).
pub const FADT_SIZE: usize = 276;
/// FADT major revision and minor version (ACPI 6.4).
const FADT_REVISION: u8 = 6;
const FADT_MINOR: u8 = 4;
/// MADT revision (ACPI 6.4).
const MADT_REVISION: u8 = 5;
/// DSDT revision 2: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;
/// XSDT revision.
const XSDT_REVISION: u8 = 1;
/// FADT flags bit 20: HW_REDUCED_ACPI.
pub const FADT_HW_REDUCED_ACPI: u32 = 1 << 20;
/// FADT flags bit 10: RESET_REG_SUP (the reset register below is valid).
pub const FADT_RESET_REG_SUP: u32 = 1 << 10;
/// The ACPI reset register: a byte write of 0xfe to I/O port 0x64, the i8042 pulse-reset
/// command Kiln already treats as a guest reset (§5.2.3.2 Generic Address Structure:
/// space 1 = system I/O, 8-bit register, offset 0, byte access, address).
const RESET_REG_GAS: [u8; 12] = [1, 8, 0, 1, 0x64, 0, 0, 0, 0, 0, 0, 0];
/// Value written to the reset register.
const RESET_VALUE: u8 = 0xfe;
/// IA-PC boot architecture flags (table 5.10): bit 1 "8042", bit 2 "VGA Not Present".
pub const IAPC_BOOT_ARCH: u16 = (1 << 1) | (1 << 2);
/// MADT flags bit 0: PCAT_COMPAT (dual 8259s present; KVM's in-kernel PIC is).
pub const MADT_PCAT_COMPAT: u32 = 1;
/// MADT structure types (table 5.45).
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// Local APIC flags bit 0: Enabled.
const LAPIC_ENABLED: u32 = 1;
/// ACPI processor UID 0xff in a Local APIC NMI entry: all processors.
const ALL_PROCESSORS: u8 = 0xff;
/// Structure lengths.
const LOCAL_APIC_LEN: usize = 8;
const IO_APIC_LEN: usize = 12;
const LOCAL_APIC_NMI_LEN: usize = 6;
/// MADT fixed part: header, local APIC address, flags.
const MADT_FIXED: usize = HEADER_SIZE + 8;
/// Every table starts on this boundary.
const ALIGN: usize = 16;

/// FADT field offsets (table 5.9).
mod fadt_off {
    pub const DSDT: usize = 40;
    pub const IAPC_BOOT_ARCH: usize = 109;
    pub const FLAGS: usize = 112;
    pub const RESET_REG: usize = 116;
    pub const RESET_VALUE: usize = 128;
    pub const MINOR_VERSION: usize = 131;
    pub const X_DSDT: usize = 140;
    pub const HYPERVISOR_ID: usize = 268;
}

fn align(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Starts a table: the §5.2.6 header with length and checksum still zero.
fn header(signature: &[u8; 4], revision: u8, table_id: &[u8; 8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(HEADER_SIZE);
    t.extend_from_slice(signature);
    t.extend_from_slice(&[0; 4]); // length, set by `finish`
    t.extend_from_slice(&[revision, 0]); // checksum, set by `finish`
    t.extend_from_slice(&OEM_ID);
    t.extend_from_slice(table_id);
    t.extend_from_slice(&OEM_REVISION.to_le_bytes());
    t.extend_from_slice(&CREATOR_ID);
    t.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
    t
}

/// Fills in a table's length and checksum.
fn finish(mut t: Vec<u8>) -> Vec<u8> {
    let len = t.len() as u32; // tables here are a few KiB at most
    t[4..8].copy_from_slice(&len.to_le_bytes());
    t[9] = 0;
    t[9] = checksum(&t);
    t
}

/// The revision-2 RSDP pointing at the XSDT (no RSDT), both checksums set (§5.2.5.3).
pub fn rsdp(xsdt_addr: u64) -> Vec<u8> {
    let mut r = Vec::with_capacity(RSDP_SIZE);
    r.extend_from_slice(b"RSD PTR ");
    r.push(0); // checksum over the first 20 bytes
    r.extend_from_slice(&OEM_ID);
    r.push(2); // revision
    r.extend_from_slice(&0u32.to_le_bytes()); // RsdtAddress: none
    r.extend_from_slice(&(RSDP_SIZE as u32).to_le_bytes());
    r.extend_from_slice(&xsdt_addr.to_le_bytes());
    r.extend_from_slice(&[0; 4]); // extended checksum, reserved
    r[8] = checksum(&r[..20]);
    r[32] = checksum(&r);
    r
}

/// The XSDT listing `tables` (64-bit physical addresses, §5.2.8).
pub fn xsdt(tables: &[u64]) -> Vec<u8> {
    let mut t = header(b"XSDT", XSDT_REVISION, b"KILNXSDT");
    for a in tables {
        t.extend_from_slice(&a.to_le_bytes());
    }
    finish(t)
}

/// The FADT: hardware-reduced, DSDT at `dsdt_addr`, everything else zero (§5.2.9).
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut t = header(b"FACP", FADT_REVISION, b"KILNFACP");
    t.resize(FADT_SIZE, 0);
    let mut put = |off: usize, bytes: &[u8]| t[off..off + bytes.len()].copy_from_slice(bytes);
    // The 32-bit field too, for older readers; ACPICA accepts both when they agree.
    put(fadt_off::DSDT, &(dsdt_addr as u32).to_le_bytes());
    put(fadt_off::IAPC_BOOT_ARCH, &IAPC_BOOT_ARCH.to_le_bytes());
    let flags = FADT_HW_REDUCED_ACPI | FADT_RESET_REG_SUP;
    put(fadt_off::FLAGS, &flags.to_le_bytes());
    // So `reboot=acpi` (Linux's first choice) resets through the i8042 too.
    put(fadt_off::RESET_REG, &RESET_REG_GAS);
    put(fadt_off::RESET_VALUE, &[RESET_VALUE]);
    put(fadt_off::MINOR_VERSION, &[FADT_MINOR]);
    put(fadt_off::X_DSDT, &dsdt_addr.to_le_bytes());
    put(fadt_off::HYPERVISOR_ID, b"KILNVMM\0");
    finish(t)
}

/// A DSDT with no AML: the guest has no ACPI-enumerated devices (§5.2.11.1).
pub fn dsdt() -> Vec<u8> {
    finish(header(b"DSDT", DSDT_REVISION, b"KILNDSDT"))
}

/// Size of the MADT for `cpus` vCPUs.
pub fn madt_size(cpus: u8) -> usize {
    MADT_FIXED + LOCAL_APIC_LEN * usize::from(cpus) + IO_APIC_LEN + LOCAL_APIC_NMI_LEN
}

/// The MADT for `cpus` vCPUs (§5.2.12): see the module docs.
pub fn madt(cpus: u8) -> Result<Vec<u8>, BootError> {
    check_cpus(cpus)?;
    let mut t = header(b"APIC", MADT_REVISION, b"KILNMADT");
    t.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    t.extend_from_slice(&MADT_PCAT_COMPAT.to_le_bytes());
    for id in 0..cpus {
        // type, length, ACPI processor UID, APIC id, flags (§5.2.12.2).
        t.extend_from_slice(&[MADT_LOCAL_APIC, LOCAL_APIC_LEN as u8, id, id]);
        t.extend_from_slice(&LAPIC_ENABLED.to_le_bytes());
    }
    // type, length, I/O APIC id, reserved, address, GSI base (§5.2.12.3).
    t.extend_from_slice(&[MADT_IO_APIC, IO_APIC_LEN as u8, cpus, 0]);
    t.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    t.extend_from_slice(&0u32.to_le_bytes());
    // type, length, UID (all), flags (conforms to bus), LINT# 1 (§5.2.12.7).
    t.extend_from_slice(&[
        MADT_LOCAL_APIC_NMI,
        LOCAL_APIC_NMI_LEN as u8,
        ALL_PROCESSORS,
    ]);
    t.extend_from_slice(&0u16.to_le_bytes());
    t.push(1);
    Ok(finish(t))
}

fn check_cpus(cpus: u8) -> Result<(), BootError> {
    if cpus == 0 {
        return Err(BootError::NoCpus);
    }
    if cpus > MAX_CPUS {
        return Err(BootError::TooManyCpus {
            cpus,
            max: MAX_CPUS,
        });
    }
    Ok(())
}

/// Offsets of the tables inside the blob [`build`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Offsets {
    xsdt: usize,
    fadt: usize,
    dsdt: usize,
    madt: usize,
    end: usize,
}

fn offsets(cpus: u8) -> Offsets {
    let xsdt = align(RSDP_SIZE);
    let fadt = align(xsdt + HEADER_SIZE + 2 * 8);
    let dsdt = align(fadt + FADT_SIZE);
    let madt = align(dsdt + HEADER_SIZE);
    let end = madt + madt_size(cpus);
    Offsets {
        xsdt,
        fadt,
        dsdt,
        madt,
        end,
    }
}

/// Bytes all tables take for `cpus` vCPUs, RSDP first.
pub fn size(cpus: u8) -> usize {
    offsets(cpus).end
}

/// Builds RSDP, XSDT, FADT, DSDT and MADT as one blob for placement at `base`.
pub fn build(base: u64, cpus: u8) -> Result<Vec<u8>, BootError> {
    let o = offsets(cpus);
    let at = |off: usize| base + off as u64;
    let parts = [
        (0, rsdp(at(o.xsdt))),
        (o.xsdt, xsdt(&[at(o.fadt), at(o.madt)])),
        (o.fadt, fadt(at(o.dsdt))),
        (o.dsdt, dsdt()),
        (o.madt, madt(cpus)?),
    ];
    let mut blob = vec![0; o.end];
    for (off, bytes) in parts {
        blob[off..off + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(blob)
}

/// Writes the tables at `base`, refusing to run past `limit`; returns the RSDP address.
fn write_at(mem: &GuestMemoryMmap, base: u64, limit: u64, cpus: u8) -> Result<u64, BootError> {
    let blob = build(base, cpus)?;
    let end = base + blob.len() as u64;
    if end > limit {
        return Err(BootError::MemoryLayout {
            detail: format!(
                "ACPI tables for {cpus} vCPUs need [{base:#x}, {end:#x}), past {limit:#x}"
            ),
        });
    }
    mem.write_slice(&blob, GuestAddress(base))
        .map_err(BootError::write("ACPI tables", base))?;
    log::debug!("ACPI tables for {cpus} vCPUs at [{base:#x}, {end:#x}), RSDP at {base:#x}");
    Ok(base)
}

/// Writes the ACPI tables for `cpus` vCPUs at `ACPI_RSDP_START` (below `HIMEM_START`);
/// returns the RSDP address for `boot_params.acpi_rsdp_addr` / `hvm_start_info.rsdp_paddr`.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<u64, BootError> {
    write_at(mem, ACPI_RSDP_START, HIMEM_START, cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    use crate::test_images::read_guest as read;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    /// Reads a whole table at `addr`, checking signature, length, checksum and header ids.
    fn table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        assert!((ACPI_RSDP_START..HIMEM_START).contains(&addr));
        assert_eq!(addr % 8, 0, "{sig:?} misaligned");
        let h = read(mem, addr, HEADER_SIZE);
        assert_eq!(&h[..4], sig);
        let len = u32_at(&h, 4) as usize;
        assert!(len >= HEADER_SIZE);
        assert!(addr + len as u64 <= HIMEM_START);
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "{sig:?} checksum");
        assert_eq!(&t[10..16], b"KILN  ");
        assert_eq!(&t[28..32], b"KILN");
        t
    }

    /// Parses everything back from guest memory; returns the MADT.
    fn parse(mem: &GuestMemoryMmap, rsdp_addr: u64) -> Vec<u8> {
        let r = read(mem, rsdp_addr, RSDP_SIZE);
        assert_eq!(&r[..8], b"RSD PTR ");
        assert_eq!(sum(&r[..20]), 0, "RSDP checksum");
        assert_eq!(sum(&r), 0, "RSDP extended checksum");
        assert_eq!(&r[9..15], b"KILN  ");
        assert_eq!(r[15], 2);
        assert_eq!(u32_at(&r, 20) as usize, RSDP_SIZE);

        let x = table(mem, u64_at(&r, 24), b"XSDT");
        assert_eq!(x.len(), HEADER_SIZE + 16);
        let entries: Vec<u64> = (HEADER_SIZE..x.len())
            .step_by(8)
            .map(|o| u64_at(&x, o))
            .collect();
        assert_eq!(entries.len(), 2);

        let f = table(mem, entries[0], b"FACP");
        assert_eq!(f.len(), FADT_SIZE);
        assert_eq!((f[8], f[131]), (6, 4), "FADT revision 6.4");
        assert_ne!(u32_at(&f, 112) & FADT_HW_REDUCED_ACPI, 0);
        assert_ne!(u32_at(&f, 112) & FADT_RESET_REG_SUP, 0);
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64::from_le_bytes(f[120..128].try_into().unwrap()), 0x64);
        assert_eq!(f[128], 0xfe);
        assert_eq!(u16_at(&f, 109), IAPC_BOOT_ARCH);
        assert_eq!(u16_at(&f, 46), 0, "no SCI");
        let dsdt_addr = u64_at(&f, 140);
        assert_eq!(u64::from(u32_at(&f, 40)), dsdt_addr);
        let d = table(mem, dsdt_addr, b"DSDT");
        assert_eq!(d.len(), HEADER_SIZE);

        let m = table(mem, entries[1], b"APIC");
        assert_eq!(u32_at(&m, 36), 0xfee0_0000);
        assert_eq!(u32_at(&m, 40), 1);
        m
    }

    /// Walks the MADT structures: (lapics as (uid, apic id, flags), ioapics as
    /// (id, addr, gsi base), NMIs as (uid, flags, lint), other count).
    #[allow(clippy::type_complexity)]
    fn madt_entries(
        m: &[u8],
    ) -> (
        Vec<(u8, u8, u32)>,
        Vec<(u8, u32, u32)>,
        Vec<(u8, u16, u8)>,
        usize,
    ) {
        let (mut lapic, mut ioapic, mut nmi, mut other) = (vec![], vec![], vec![], 0);
        let mut o = MADT_FIXED;
        while o < m.len() {
            let (ty, len) = (m[o], usize::from(m[o + 1]));
            assert!(len >= 2 && o + len <= m.len());
            let e = &m[o..o + len];
            match ty {
                0 => {
                    assert_eq!(len, 8);
                    lapic.push((e[2], e[3], u32_at(e, 4)));
                }
                1 => {
                    assert_eq!(len, 12);
                    ioapic.push((e[2], u32_at(e, 4), u32_at(e, 8)));
                }
                4 => {
                    assert_eq!(len, 6);
                    nmi.push((e[2], u16_at(e, 3), e[5]));
                }
                _ => other += 1,
            }
            o += len;
        }
        assert_eq!(o, m.len());
        (lapic, ioapic, nmi, other)
    }

    #[test]
    fn tables_parse_back() {
        for cpus in [1u8, 2, 8, MAX_CPUS] {
            let mem = mem();
            let at = write(&mem, cpus).unwrap();
            assert_eq!(at, ACPI_RSDP_START);
            let m = parse(&mem, at);
            let (lapic, ioapic, nmi, other) = madt_entries(&m);
            let want: Vec<_> = (0..cpus).map(|i| (i, i, 1)).collect();
            assert_eq!(lapic, want, "cpus={cpus}");
            assert_eq!(ioapic, vec![(cpus, 0xfec0_0000, 0)]);
            assert_eq!(nmi, vec![(0xff, 0, 1)]);
            assert_eq!(other, 0, "no interrupt source overrides");
            assert_eq!(m.len(), madt_size(cpus));
            assert!(ACPI_RSDP_START + size(cpus) as u64 <= HIMEM_START);
        }
    }

    #[test]
    fn rsdp_found_by_bios_area_scan() {
        // Linux scans 0xe0000..0x100000 on 16-byte boundaries.
        assert_eq!(ACPI_RSDP_START % 16, 0);
        assert!((0xe0000..0x10_0000).contains(&ACPI_RSDP_START));
        let r = rsdp(0x1234);
        assert_eq!(r.len(), RSDP_SIZE);
        assert_eq!(u64_at(&r, 24), 0x1234);
    }

    #[test]
    fn bad_cpu_counts() {
        assert!(matches!(write(&mem(), 0), Err(BootError::NoCpus)));
        assert!(matches!(
            write(&mem(), 255),
            Err(BootError::TooManyCpus { .. })
        ));
    }

    #[test]
    fn limit_and_missing_memory() {
        let m = mem();
        assert!(matches!(
            write_at(&m, 0xff000, 0xff100, 8),
            Err(BootError::MemoryLayout { .. })
        ));
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(matches!(
            write(&small, 1),
            Err(BootError::GuestWrite { .. })
        ));
    }
}
