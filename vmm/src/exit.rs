//! Why a VM stopped, and the latch every thread uses to report it first.

use std::fmt;
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (i8042 reset, triple fault or a KVM reset event).
    Reset,
    /// The guest powered off (KVM system event).
    PowerOff,
    /// The host asked Kiln to stop with this signal (SIGINT, SIGTERM).
    Signal(i32),
    /// The user pressed Ctrl-A x on the console, or the embedding program stopped the VM.
    Stopped,
    /// The guest hit something the host could not run; see the fault.
    GuestFault(GuestFault),
}

impl VmExit {
    /// The process exit status Kiln uses for this exit: 0 for a guest reset, power-off or
    /// user stop, 128+N for signal N, 2 for a guest fault.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::Reset | VmExit::PowerOff | VmExit::Stopped => 0,
            VmExit::Signal(n) => 128 + n,
            VmExit::GuestFault(_) => 2,
        }
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::Reset => write!(f, "guest reset the VM"),
            VmExit::PowerOff => write!(f, "guest powered off"),
            VmExit::Signal(n) => write!(f, "stopped by signal {n}"),
            VmExit::Stopped => write!(f, "stopped on request"),
            VmExit::GuestFault(g) => write!(f, "{g}"),
        }
    }
}

/// A vCPU exit Kiln cannot continue from, with the state needed to understand it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFault {
    /// The vCPU index.
    pub vcpu: u32,
    /// The exit, e.g. `KVM_EXIT_INTERNAL_ERROR`.
    pub reason: String,
    /// `internal.suberror` for internal errors (1 = emulation failure).
    pub suberror: Option<u32>,
    /// Guest RIP at the exit.
    pub rip: u64,
    /// The bytes at RIP (up to 16), empty when they could not be read.
    pub insn: Vec<u8>,
    /// Whether the host is PVM-backed (adds the emulator explanation).
    pub pvm_host: bool,
}

impl fmt::Display for GuestFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vCPU {} stopped: {}", self.vcpu, self.reason)?;
        if let Some(s) = self.suberror {
            let what = match s {
                1 => " (emulation failure)",
                2 => " (simultaneous exceptions)",
                3 => " (delivery event failed)",
                _ => "",
            };
            write!(f, ", suberror {s}{what}")?;
        }
        write!(f, ", RIP {:#x}, instruction bytes:", self.rip)?;
        if self.insn.is_empty() {
            write!(f, " (unreadable)")?;
        }
        for b in &self.insn {
            write!(f, " {b:02x}")?;
        }
        if self.pvm_host && self.suberror == Some(1) {
            write!(
                f,
                "\n{}; this guest stopped at such an instruction",
                crate::host::PVM_NOTE
            )?;
        }
        Ok(())
    }
}

/// First-reporter-wins record of why the VM stops, plus an eventfd that wakes the
/// event loop when it is set.
#[derive(Debug)]
pub struct ExitLatch {
    reason: Mutex<Option<VmExit>>,
    evt: EventFd,
}

impl ExitLatch {
    /// An unset latch.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `exit` unless a reason is already recorded, and wakes the event loop.
    pub fn set(&self, exit: VmExit) {
        let mut r = util::sync::lock(&self.reason);
        if r.is_none() {
            log::debug!("VM exit: {exit}");
            *r = Some(exit);
        }
        drop(r);
        if let Err(e) = self.evt.write(1) {
            log::error!("cannot wake the event loop: {e}");
        }
    }

    /// The recorded reason, if any.
    pub fn get(&self) -> Option<VmExit> {
        util::sync::lock(&self.reason).clone()
    }

    /// The wake-up eventfd (watched by the event loop).
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_codes() {
        let l = ExitLatch::new().unwrap();
        assert!(l.get().is_none());
        l.set(VmExit::Reset);
        l.set(VmExit::Signal(15));
        assert_eq!(l.get(), Some(VmExit::Reset));
        assert_eq!(l.event().read().unwrap(), 2);
        assert_eq!(VmExit::Signal(15).exit_code(), 143);
        let g = GuestFault {
            vcpu: 0,
            reason: "KVM_EXIT_INTERNAL_ERROR".into(),
            suberror: Some(1),
            rip: 0x100200,
            insn: vec![0x0f, 0xae, 0x27],
            pvm_host: true,
        };
        let s = g.to_string();
        assert!(s.contains("RIP 0x100200"), "{s}");
        assert!(s.contains("0f ae 27"), "{s}");
        assert!(s.contains("emulation failure"), "{s}");
        assert!(s.contains("PVM"), "{s}");
        assert_eq!(VmExit::GuestFault(g).exit_code(), 2);
    }
}
