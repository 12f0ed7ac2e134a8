//! Snapshot and restore of the i8042: everything the guest can see (status, controller
//! configuration byte, output buffer, a command waiting for its data byte, keyboard
//! bytes not yet read). The reset eventfd and the keyboard interrupt line are the
//! VMM's, given to [`I8042::new`] and [`I8042::with_keyboard_irq`] as for a new VM.

use serde::{Deserialize, Serialize};

use super::{CTR_KBD_INT, I8042, KBD_QUEUE_MAX};
use crate::snapshot::StateError;

/// The i8042's guest-visible state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct I8042State {
    /// The status register (without the output-full bit, which follows `output`).
    pub status: u8,
    /// The controller configuration byte.
    pub ctr: u8,
    /// The byte in the output buffer, if any.
    pub output: Option<u8>,
    /// A command waiting for its data byte (write CTR, write output port).
    pub pending_cmd: Option<u8>,
    /// Keyboard bytes queued behind the output buffer (at most 64).
    pub keys: Vec<u8>,
}

impl I8042 {
    /// The controller's state, for a snapshot.
    pub fn state(&self) -> I8042State {
        I8042State {
            status: self.status,
            ctr: self.ctr,
            output: self.output,
            pending_cmd: self.pending_cmd,
            keys: self.keys.iter().copied().collect(),
        }
    }

    /// Puts a freshly built controller in the saved `state`. When a keyboard byte waits
    /// in the output buffer and the guest enabled the keyboard interrupt, IRQ 1 is
    /// raised once (a lost edge would leave the byte unread; a spurious one costs the
    /// guest a status read).
    ///
    /// Fails when the saved keyboard queue is longer than the device keeps.
    pub fn restore_state(&mut self, state: &I8042State) -> Result<(), StateError> {
        let len = state.keys.len();
        if len > KBD_QUEUE_MAX {
            return Err(StateError::KeyboardQueue {
                len,
                max: KBD_QUEUE_MAX,
            });
        }
        self.status = state.status;
        self.ctr = state.ctr;
        self.output = state.output;
        self.pending_cmd = state.pending_cmd;
        self.keys = state.keys.iter().copied().collect();
        if self.output.is_some() && self.ctr & CTR_KBD_INT != 0 {
            if let Some(irq) = &self.irq {
                if let Err(e) = irq.trigger() {
                    log::warn!("i8042: cannot raise the restored IRQ 1: {e}");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{OFS_CMD, OFS_DATA, SR_OUTPUT_FULL};
    use super::*;
    use crate::bus::BusDevice;
    use crate::irq::IrqLine;
    use vmm_sys_util::eventfd::EventFd;

    fn dev() -> I8042 {
        I8042::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    fn read(d: &mut I8042, ofs: u64) -> u8 {
        let mut b = [0u8];
        d.read(ofs, &mut b);
        b[0]
    }

    #[test]
    fn round_trip_keeps_keys_ctr_and_pending_command() {
        let mut d = dev();
        d.write(OFS_CMD, &[0x60]); // write CTR
        d.write(OFS_DATA, &[0x65]);
        assert!(d.send_ctrl_alt_del());
        assert_eq!(read(&mut d, OFS_DATA), 0x14);
        d.write(OFS_CMD, &[0x60]); // a command waiting for its data byte
        let saved = d.state();
        assert_eq!(saved.output, Some(0x11));
        assert_eq!(saved.pending_cmd, Some(0x60));

        let irq = IrqLine::new(1).unwrap();
        let mut back = dev().with_keyboard_irq(Box::new(irq.try_clone().unwrap()));
        back.restore_state(&saved).unwrap();
        assert_eq!(back.state(), saved);
        assert_eq!(
            irq.evt.read().unwrap(),
            1,
            "IRQ 1 raised for the waiting byte"
        );
        assert_ne!(read(&mut back, OFS_CMD) & SR_OUTPUT_FULL, 0);
        let mut keys = Vec::new();
        while read(&mut back, OFS_CMD) & SR_OUTPUT_FULL != 0 {
            keys.push(read(&mut back, OFS_DATA));
        }
        assert_eq!(keys, &super::super::CTRL_ALT_DEL[1..]);
        back.write(OFS_DATA, &[0x47]); // completes the pending write-CTR
        back.write(OFS_CMD, &[0x20]);
        assert_eq!(read(&mut back, OFS_DATA), 0x47);
    }

    #[test]
    fn oversized_keyboard_queue_is_refused() {
        let mut s = dev().state();
        s.keys = vec![0; KBD_QUEUE_MAX + 1];
        assert!(matches!(
            dev().restore_state(&s),
            Err(StateError::KeyboardQueue { len: 65, max: 64 })
        ));
    }

    #[test]
    fn serde_round_trip() {
        let mut d = dev();
        assert!(d.send_ctrl_alt_del());
        let s = d.state();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<I8042State>(&json).unwrap(), s);
    }
}
