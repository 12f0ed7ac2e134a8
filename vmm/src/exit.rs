//! Why a VM stopped, and the latch every thread uses to report it first.

use std::fmt;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest reset the machine (i8042 reset or a KVM reset event).
    Reset,
    /// The guest powered off (KVM system event).
    PowerOff,
    /// The host asked Kiln to stop with this signal (SIGINT, SIGTERM).
    Signal(i32),
    /// The user pressed Ctrl-A x on the console, or the embedding program stopped the VM.
    Stopped,
    /// The guest hit something the host could not run; see the fault.
    GuestFault(GuestFault),
    /// A vCPU triple-faulted (`KVM_EXIT_SHUTDOWN`): the guest crashed, it did not ask
    /// for a reset.
    TripleFault {
        /// The vCPU index.
        vcpu: u32,
        /// Guest RIP after the fault, when KVM reported it.
        rip: Option<u64>,
    },
    /// The reader of the serial console output went away (`EPIPE`), so Kiln stopped the
    /// VM the way a command-line tool ends on a closed pipe.
    OutputClosed,
}

/// Exit status for a triple fault.
pub const EXIT_TRIPLE_FAULT: i32 = 3;
/// Exit status when the console output's reader is gone: 128 + SIGPIPE, what a shell
/// reports for a pipeline stage killed by SIGPIPE.
pub const EXIT_OUTPUT_CLOSED: i32 = 128 + libc::SIGPIPE;

/// How a VM ended, without the details: what `--timings` and the harness report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitKind {
    /// [`VmExit::Reset`].
    Reset,
    /// [`VmExit::PowerOff`].
    PowerOff,
    /// [`VmExit::Signal`].
    Signal,
    /// [`VmExit::Stopped`].
    Stopped,
    /// [`VmExit::GuestFault`].
    GuestFault,
    /// [`VmExit::TripleFault`].
    TripleFault,
    /// [`VmExit::OutputClosed`].
    OutputClosed,
}

impl VmExit {
    /// The process exit status Kiln uses for this exit: 0 for a guest reset, power-off or
    /// user stop, 128+N for signal N, 2 for a guest fault, 3 for a triple fault, 141
    /// (128 + SIGPIPE) when the console output's reader is gone.
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::Reset | VmExit::PowerOff | VmExit::Stopped => 0,
            VmExit::Signal(n) => 128 + n,
            VmExit::GuestFault(_) => 2,
            VmExit::TripleFault { .. } => EXIT_TRIPLE_FAULT,
            VmExit::OutputClosed => EXIT_OUTPUT_CLOSED,
        }
    }

    /// The kind of exit, without its details.
    pub fn kind(&self) -> ExitKind {
        match self {
            VmExit::Reset => ExitKind::Reset,
            VmExit::PowerOff => ExitKind::PowerOff,
            VmExit::Signal(_) => ExitKind::Signal,
            VmExit::Stopped => ExitKind::Stopped,
            VmExit::GuestFault(_) => ExitKind::GuestFault,
            VmExit::TripleFault { .. } => ExitKind::TripleFault,
            VmExit::OutputClosed => ExitKind::OutputClosed,
        }
    }

    /// Whether Kiln reports this exit as an error (on stderr, whatever the log level):
    /// the guest crashed or stopped on something the host could not run.
    pub fn is_guest_failure(&self) -> bool {
        matches!(self, VmExit::GuestFault(_) | VmExit::TripleFault { .. })
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
            VmExit::TripleFault { vcpu, rip } => {
                write!(f, "vCPU {vcpu} triple-faulted (KVM_EXIT_SHUTDOWN)")?;
                if let Some(rip) = rip {
                    write!(f, " at RIP {rip:#x}")?;
                }
                write!(
                    f,
                    ": the guest crashed on a fault it could not handle (not a reset)"
                )
            }
            VmExit::OutputClosed => write!(
                f,
                "the serial console output's reader is gone (EPIPE): VM stopped"
            ),
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

    #[test]
    fn triple_fault_has_its_own_status_and_kind() {
        let t = VmExit::TripleFault {
            vcpu: 1,
            rip: Some(0x1034df),
        };
        assert_eq!(t.exit_code(), 3);
        assert_eq!(t.kind(), ExitKind::TripleFault);
        assert!(t.is_guest_failure());
        let s = t.to_string();
        assert!(s.contains("vCPU 1 triple-faulted"), "{s}");
        assert!(s.contains("RIP 0x1034df"), "{s}");
        let no_rip = VmExit::TripleFault { vcpu: 0, rip: None }.to_string();
        assert!(!no_rip.contains("RIP"), "{no_rip}");
    }

    #[test]
    fn guest_requested_reset_and_power_off_stay_zero() {
        for e in [VmExit::Reset, VmExit::PowerOff, VmExit::Stopped] {
            assert_eq!(e.exit_code(), 0, "{e}");
            assert!(!e.is_guest_failure(), "{e}");
        }
    }

    #[test]
    fn closed_output_ends_like_a_pipeline_stage() {
        assert_eq!(VmExit::OutputClosed.exit_code(), 141);
        assert_eq!(VmExit::OutputClosed.kind(), ExitKind::OutputClosed);
        assert!(VmExit::OutputClosed.to_string().contains("EPIPE"));
    }

    #[test]
    fn exit_kinds_serialize_as_kebab_case() {
        let json = serde_json::to_string(&ExitKind::TripleFault).unwrap();
        assert_eq!(json, "\"triple-fault\"");
        let back: ExitKind = serde_json::from_str("\"output-closed\"").unwrap();
        assert_eq!(back, ExitKind::OutputClosed);
    }
}
