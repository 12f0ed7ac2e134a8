//! Initial BSP registers for each boot protocol.
//!
//! 64-bit protocol (Documentation/arch/x86/boot.rst, "64-bit Boot Protocol"): long mode with
//! paging on and an identity map covering the loaded kernel, zero page, command line and
//! initrd; a flat 64-bit execute/read code segment, flat
//! read/write data segments, interrupts off, RSI = `boot_params`.
//! PVH (Xen pvh doc, "x86/HVM direct boot ABI"): 32-bit protected mode, paging off, CR0 = PE
//! only, CR4 = 0, flat 32-bit CS/DS/ES/SS, a 32-bit TSS (base 0, limit 0x67), EFLAGS with
//! IF/TF/VM clear, EBX = `hvm_start_info`.

use kvm_bindings::{kvm_dtable, kvm_regs, kvm_sregs};

use super::gdt;
use crate::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START};
use crate::EntryPoint;

/// CR0.PE: protected mode.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (hard-wired on modern CPUs).
pub const X86_CR0_ET: u64 = 1 << 4;
/// CR0.NW: not write-through.
pub const X86_CR0_NW: u64 = 1 << 29;
/// CR0.CD: cache disable.
pub const X86_CR0_CD: u64 = 1 << 30;
/// CR0.PG: paging.
pub const X86_CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension.
pub const X86_CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
pub const EFER_LMA: u64 = 1 << 10;
/// RFLAGS with only the always-one bit 1 set (interrupts off).
pub const RFLAGS_BOOT: u64 = 0x2;

/// General registers for the BSP: see the module docs.
pub fn boot_regs(entry: &EntryPoint) -> kvm_regs {
    match *entry {
        EntryPoint::Linux64 { rip, zero_page } => kvm_regs {
            rip,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: zero_page,
            rflags: RFLAGS_BOOT,
            ..Default::default()
        },
        EntryPoint::Pvh { eip, start_info } => kvm_regs {
            rip: eip,
            rbx: start_info,
            rflags: RFLAGS_BOOT,
            ..Default::default()
        },
    }
}

/// Special registers for the BSP, starting from `base` (what `KVM_GET_SREGS` returned):
/// segments from the boot GDT, GDTR/IDTR, and CR0/CR3/CR4/EFER per protocol.
pub fn boot_sregs(entry: &EntryPoint, base: kvm_sregs) -> kvm_sregs {
    let pvh = matches!(entry, EntryPoint::Pvh { .. });
    let table = gdt::table(pvh);
    let mut s = base;
    s.gdt = kvm_dtable {
        base: GDT_START,
        limit: (gdt::GDT_ENTRIES * 8 - 1) as u16,
        ..Default::default()
    };
    s.idt = kvm_dtable {
        base: IDT_START,
        limit: 7,
        ..Default::default()
    };
    s.cs = gdt::segment(table[1], 1);
    let data = gdt::segment(table[2], 2);
    s.ds = data;
    s.es = data;
    s.fs = data;
    s.gs = data;
    s.ss = data;
    s.tr = gdt::segment(table[3], 3);
    if pvh {
        s.cr0 = X86_CR0_PE;
        s.cr3 = 0;
        s.cr4 = 0;
        s.efer = 0;
    } else {
        s.cr0 = (base.cr0 & !(X86_CR0_CD | X86_CR0_NW)) | X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
        s.cr3 = PML4_START;
        s.cr4 = base.cr4 | X86_CR4_PAE;
        s.efer = base.efer | EFER_LME | EFER_LMA;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset_sregs() -> kvm_sregs {
        // What KVM reports after vCPU creation (CR0 = CD | NW | ET).
        kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        }
    }

    #[test]
    fn linux64() {
        let e = EntryPoint::Linux64 {
            rip: 0x100_0000,
            zero_page: 0x7000,
        };
        let r = boot_regs(&e);
        assert_eq!(
            (r.rip, r.rsp, r.rbp, r.rsi, r.rflags),
            (0x100_0000, 0x8ff0, 0x8ff0, 0x7000, 2)
        );
        let s = boot_sregs(&e, reset_sregs());
        assert_eq!(s.cr0, X86_CR0_PE | X86_CR0_PG | X86_CR0_ET);
        assert_eq!(
            (s.cr3, s.cr4 & X86_CR4_PAE, s.efer),
            (0x9000, X86_CR4_PAE, EFER_LME | EFER_LMA)
        );
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (0x8, 1, 0));
        assert_eq!(
            (s.ds.selector, s.ss.selector, s.tr.selector),
            (0x10, 0x10, 0x18)
        );
        assert_eq!(
            (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit),
            (0x500, 31, 0x520, 7)
        );
    }

    #[test]
    fn pvh() {
        let e = EntryPoint::Pvh {
            eip: 0x100_0100,
            start_info: 0x6000,
        };
        let r = boot_regs(&e);
        assert_eq!((r.rip, r.rbx, r.rflags, r.rsi), (0x100_0100, 0x6000, 2, 0));
        let base = kvm_sregs {
            cr4: 0x20,
            efer: 0x500,
            ..reset_sregs()
        };
        let s = boot_sregs(&e, base);
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (X86_CR0_PE, 0, 0, 0));
        assert_eq!(
            (s.cs.l, s.cs.db, s.cs.limit, s.cs.base),
            (0, 1, 0xffff_ffff, 0)
        );
        assert_eq!((s.es.db, s.ss.type_), (1, 3));
        assert_eq!((s.tr.limit, s.tr.base), (0x67, 0));
    }
}
