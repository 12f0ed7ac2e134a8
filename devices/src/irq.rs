//! Interrupt lines: an `EventFd` registered with KVM as an irqfd on one GSI.

use vmm_sys_util::eventfd::EventFd;

/// Something that raises an interrupt (edge) when called.
pub trait IrqTrigger: Send + Sync {
    /// Raises the interrupt.
    fn trigger(&self) -> std::io::Result<()>;
}

/// An irqfd-backed interrupt line: writing the `EventFd` injects the GSI in KVM.
#[derive(Debug)]
pub struct IrqLine {
    /// The GSI (IOAPIC pin) the eventfd is registered on.
    pub gsi: u32,
    /// The eventfd registered with `KVM_IRQFD`.
    pub evt: EventFd,
}

impl IrqLine {
    /// A new line for `gsi`; the caller registers [`IrqLine::evt`] with KVM.
    pub fn new(gsi: u32) -> std::io::Result<Self> {
        Ok(Self {
            gsi,
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// A second handle on the same line.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(Self {
            gsi: self.gsi,
            evt: self.evt.try_clone()?,
        })
    }
}

impl IrqTrigger for IrqLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }
}

impl vm_superio::Trigger for IrqLine {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.evt.write(1)
    }
}
