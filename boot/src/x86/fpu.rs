//! Initial x87/SSE state: FCW 0x37f (FNINIT default, all exceptions masked) and
//! MXCSR 0x1f80 (power-on default), per Intel SDM vol. 1, 8.1.5 and 10.2.3.

use kvm_bindings::kvm_fpu;

/// FNINIT default control word.
pub const FCW_DEFAULT: u16 = 0x37f;
/// MXCSR reset value.
pub const MXCSR_DEFAULT: u32 = 0x1f80;

/// FPU state for a booting vCPU.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FCW_DEFAULT,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn defaults() {
        let f = super::boot_fpu();
        assert_eq!((f.fcw, f.mxcsr, f.fsw), (0x37f, 0x1f80, 0));
    }
}
