//! The boot GDT (at `GDT_START`) and the empty IDT (at `IDT_START`).
//!
//! Four entries, as Linux boot loaders use them: null, code, data, TSS. The 64-bit boot
//! protocol (Documentation/arch/x86/boot.rst) wants a 64-bit code segment and flat data
//! segments; the PVH protocol (Xen pvh doc) wants a flat 32-bit code segment, flat data
//! segments and a 32-bit TSS with base 0 and limit 0x67. Descriptor format: Intel SDM vol. 3,
//! 3.4.5 "Segment Descriptors".

use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{GDT_START, IDT_START};
use crate::{BootError, GuestMemoryMmap};

/// Flags of a 64-bit code segment (G, L, P, S, type execute/read accessed).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Flags of a flat 32-bit code segment (G, D/B, P, S, execute/read accessed).
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Flags of a flat data segment (G, D/B, P, S, read/write accessed).
pub const DATA_FLAGS: u16 = 0xc093;
/// Flags of the TSS for the 64-bit protocol (G, P, busy TSS).
pub const TSS64_FLAGS: u16 = 0x808b;
/// Flags of the PVH TSS (byte granular, P, busy 32-bit TSS).
pub const TSS32_FLAGS: u16 = 0x008b;
/// Code selector (GDT index 1).
pub const CODE_SELECTOR: u16 = 0x08;
/// Data selector (GDT index 2).
pub const DATA_SELECTOR: u16 = 0x10;
/// TSS selector (GDT index 3).
pub const TSS_SELECTOR: u16 = 0x18;
/// Number of GDT entries.
pub const GDT_ENTRIES: usize = 4;

/// Encodes a segment descriptor from `flags` (access byte in bits 0-7, G/DB/L/AVL in bits
/// 12-15), `base` and a 20-bit `limit`.
pub const fn entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT: 64-bit code segment, or flat 32-bit code segment when `pvh`.
pub const fn table(pvh: bool) -> [u64; GDT_ENTRIES] {
    if pvh {
        [
            0,
            entry(CODE32_FLAGS, 0, 0xfffff),
            entry(DATA_FLAGS, 0, 0xfffff),
            entry(TSS32_FLAGS, 0, 0x67),
        ]
    } else {
        [
            0,
            entry(CODE64_FLAGS, 0, 0xfffff),
            entry(DATA_FLAGS, 0, 0xfffff),
            entry(TSS64_FLAGS, 0, 0xfffff),
        ]
    }
}

/// Decodes descriptor `entry` (loaded through selector index `index`) into KVM's form.
pub fn segment(entry: u64, index: u16) -> kvm_segment {
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Writes the GDT (`table(pvh)`) at `GDT_START` and a zero IDT entry at `IDT_START`.
pub fn write(mem: &GuestMemoryMmap, pvh: bool) -> Result<(), BootError> {
    for (i, e) in table(pvh).iter().enumerate() {
        let addr = GDT_START + 8 * i as u64;
        mem.write_obj(*e, GuestAddress(addr))
            .map_err(BootError::write("GDT", addr))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(BootError::write("IDT", IDT_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_known_values() {
        assert_eq!(entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(entry(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(entry(0x8093, 0x1234_5678, 0xabcde), 0x128a_9334_5678_bcde);
    }

    #[test]
    fn decodes_segments() {
        let t = table(false);
        let cs = segment(t[1], 1);
        assert_eq!(
            (cs.selector, cs.type_, cs.l, cs.db, cs.g, cs.present, cs.s),
            (8, 0xb, 1, 0, 1, 1, 1)
        );
        assert_eq!((cs.base, cs.limit, cs.unusable), (0, 0xffff_ffff, 0));
        let ds = segment(t[2], 2);
        assert_eq!(
            (ds.selector, ds.type_, ds.l, ds.db, ds.s),
            (0x10, 3, 0, 1, 1)
        );
        let tr = segment(t[3], 3);
        assert_eq!((tr.selector, tr.type_, tr.s), (0x18, 0xb, 0));
        let p = table(true);
        let cs32 = segment(p[1], 1);
        assert_eq!((cs32.l, cs32.db, cs32.limit), (0, 1, 0xffff_ffff));
        let tr32 = segment(p[3], 3);
        assert_eq!(
            (tr32.limit, tr32.g, tr32.base, tr32.type_),
            (0x67, 0, 0, 0xb)
        );
        assert_eq!(segment(0, 0).unusable, 1);
        let t2 = segment(entry(0x8093, 0x1234_5678, 0xabcde), 2);
        assert_eq!((t2.base, t2.limit), (0x1234_5678, 0xabcd_efff));
    }

    #[test]
    fn written() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        write(&mem, false).unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(GDT_START + 8)).unwrap(),
            table(false)[1]
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress(IDT_START)).unwrap(), 0);
        let none = GuestMemoryMmap::from_ranges(&[(GuestAddress(0x1000), 0x1000)]).unwrap();
        assert!(matches!(
            write(&none, true),
            Err(BootError::GuestWrite { .. })
        ));
    }
}
