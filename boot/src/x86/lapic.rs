//! Local APIC LVT setup for the virtual-wire mode the MP table describes: LINT0 delivers
//! ExtINT (the PIC), LINT1 delivers NMI. Registers per Intel SDM vol. 3, 11.5.1 "Local Vector
//! Table" (LVT LINT0 at offset 0x350, LINT1 at 0x360; delivery mode in bits 8-10).

use kvm_bindings::kvm_lapic_state;

/// LVT LINT0 register offset.
pub const APIC_LVT0: usize = 0x350;
/// LVT LINT1 register offset.
pub const APIC_LVT1: usize = 0x360;
/// Delivery mode ExtINT.
pub const APIC_MODE_EXTINT: u32 = 0x7;
/// Delivery mode NMI.
pub const APIC_MODE_NMI: u32 = 0x4;

fn get_reg(lapic: &kvm_lapic_state, off: usize) -> u32 {
    let r = &lapic.regs[off..off + 4];
    u32::from_le_bytes([r[0] as u8, r[1] as u8, r[2] as u8, r[3] as u8])
}

fn set_reg(lapic: &mut kvm_lapic_state, off: usize, v: u32) {
    for (d, b) in lapic.regs[off..off + 4].iter_mut().zip(v.to_le_bytes()) {
        *d = b as _;
    }
}

fn set_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Sets LINT0 = ExtINT and LINT1 = NMI in `lapic` (from `KVM_GET_LAPIC`), keeping other bits.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let l0 = get_reg(lapic, APIC_LVT0);
    set_reg(lapic, APIC_LVT0, set_mode(l0, APIC_MODE_EXTINT));
    let l1 = get_reg(lapic, APIC_LVT1);
    set_reg(lapic, APIC_LVT1, set_mode(l1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_modes() {
        let mut s = kvm_lapic_state::default();
        set_reg(&mut s, APIC_LVT0, 0x0001_0000 | 0x400); // masked, NMI mode
        set_reg(&mut s, APIC_LVT1, 0x0001_00ff);
        set_reg(&mut s, 0x340, 0xdead_beef);
        set_lint(&mut s);
        assert_eq!(get_reg(&s, APIC_LVT0), 0x0001_0700);
        assert_eq!(get_reg(&s, APIC_LVT1), 0x0001_04ff);
        assert_eq!(get_reg(&s, 0x340), 0xdead_beef);
    }
}
