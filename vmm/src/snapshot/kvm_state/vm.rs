//! The VM-wide KVM state: the in-kernel PICs and IOAPIC, the PIT and kvmclock.

use std::fmt;

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::{ioctl, StateError};

/// The VM-wide KVM state.
///
/// After a restore the PIT channels' `count_load_time` is the new host's (KVM reloads
/// each count when it is set) and `clock.clock` has advanced by the time since
/// [`restore_vm`]; everything else reads back as saved.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VmState {
    /// The master 8259 PIC (IRQs 0-7).
    pub pic_master: Irqchip,
    /// The slave 8259 PIC (IRQs 8-15).
    pub pic_slave: Irqchip,
    /// The IOAPIC (redirection table).
    pub ioapic: Irqchip,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock: nanoseconds of guest time at the save.
    pub clock: kvm_clock_data,
}

/// One in-kernel interrupt controller's state (`KVM_GET_IRQCHIP`). Made only by
/// [`save_vm`] or deserialization, so every byte of it is initialized.
#[derive(Serialize, Deserialize, Clone, Copy)]
#[serde(transparent)]
pub struct Irqchip(kvm_irqchip);

impl Irqchip {
    /// `KVM_IRQCHIP_PIC_MASTER`, `KVM_IRQCHIP_PIC_SLAVE` or `KVM_IRQCHIP_IOAPIC`.
    pub fn chip_id(&self) -> u32 {
        self.0.chip_id
    }

    /// The raw KVM structure.
    pub fn raw(&self) -> &kvm_irqchip {
        &self.0
    }

    /// The chip state as bytes (the union viewed through its byte-array member).
    fn bytes(&self) -> [u8; 512] {
        // SAFETY: every bit pattern is a valid `[c_char; 512]`, the member spans the
        // whole 512-byte union, and all its bytes are initialized: an `Irqchip` is only
        // made from a zeroed `kvm_irqchip` that KVM filled in, or by serde from a full
        // byte image.
        let raw = unsafe { self.0.chip.dummy };
        raw.map(|c| c as u8)
    }

    fn read(vm: &VmFd, chip_id: u32) -> Result<Self, StateError> {
        let mut chip = kvm_irqchip {
            chip_id,
            ..Default::default()
        };
        vm.get_irqchip(&mut chip)
            .map_err(ioctl("KVM_GET_IRQCHIP"))?;
        Ok(Self(chip))
    }

    fn write(&self, vm: &VmFd, slot: &'static str, expected: u32) -> Result<(), StateError> {
        if self.chip_id() != expected {
            return Err(StateError::WrongIrqchip {
                slot,
                expected,
                found: self.chip_id(),
            });
        }
        vm.set_irqchip(&self.0).map_err(ioctl("KVM_SET_IRQCHIP"))
    }
}

impl PartialEq for Irqchip {
    fn eq(&self, other: &Self) -> bool {
        self.chip_id() == other.chip_id() && self.bytes() == other.bytes()
    }
}

impl fmt::Debug for Irqchip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.bytes();
        let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        f.debug_struct("Irqchip")
            .field("chip_id", &self.chip_id())
            .field("state", &&bytes[..used])
            .finish()
    }
}

/// Reads the VM-wide state. The vCPUs must be outside `KVM_RUN` (paused).
pub fn save_vm(vm: &VmFd) -> Result<VmState, StateError> {
    Ok(VmState {
        pic_master: Irqchip::read(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: Irqchip::read(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: Irqchip::read(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(ioctl("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?,
    })
}

/// Loads `state` into a fresh VM that has its irqchip (`KVM_CREATE_IRQCHIP`) and PIT
/// (`KVM_CREATE_PIT2`), before any vCPU runs.
///
/// kvmclock is set with flags 0: the guest's clock continues from the saved
/// `clock.clock` nanoseconds, so guest time does not jump over the time the snapshot
/// spent on disk. (`KVM_CLOCK_REALTIME` would instead advance it by the host wall time
/// elapsed since the save; this PVM host's `KVM_GET_CLOCK` does not even provide the
/// `realtime` needed for that: it answers flags 0.)
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<(), StateError> {
    state
        .pic_master
        .write(vm, "PIC master", KVM_IRQCHIP_PIC_MASTER)?;
    state
        .pic_slave
        .write(vm, "PIC slave", KVM_IRQCHIP_PIC_SLAVE)?;
    state.ioapic.write(vm, "IOAPIC", KVM_IRQCHIP_IOAPIC)?;
    vm.set_pit2(&state.pit).map_err(ioctl("KVM_SET_PIT2"))?;
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(ioctl("KVM_SET_CLOCK"))
}
