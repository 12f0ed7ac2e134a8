//! A minimal i8042 keyboard controller: enough for Linux's probe, for the CPU reset it
//! uses to reboot (`reboot=k`: command 0xfe on port 0x64; a reset ends the VM) and for
//! the host to press Ctrl+Alt+Del (Firecracker's `SendCtrlAltDel`), which asks a Linux
//! guest to shut down cleanly.
//!
//! The device sits on the port bus at 0x60 (offset 0, data) and 0x64 (offset 4,
//! status/command), registered as one 5-port range.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::irq::IrqTrigger;

const OFS_DATA: u64 = 0;
const OFS_CMD: u64 = 4;

const SR_OUTPUT_FULL: u8 = 0x01;
const SR_SYSTEM_FLAG: u8 = 0x04;
const SR_CMD_DATA: u8 = 0x08;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_PULSE_RESET: u8 = 0xfe;

/// Controller configuration byte: keyboard interrupt (IRQ 1) enabled.
const CTR_KBD_INT: u8 = 0x01;

/// Ctrl, Alt and Del pressed, then released, as a keyboard sends them (scan code set 2:
/// Ctrl 0x14, Alt 0x11, Del 0xe0 0x71; a release is the code after 0xf0).
pub const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// Keyboard bytes waiting for the guest, at most: a guest that never reads cannot make
/// the host queue more.
const KBD_QUEUE_MAX: usize = 64;

/// The i8042 controller.
pub struct I8042 {
    reset_evt: EventFd,
    irq: Option<Box<dyn IrqTrigger>>,
    status: u8,
    ctr: u8,
    output: Option<u8>,
    keys: VecDeque<u8>,
    pending_cmd: Option<u8>,
}

impl I8042 {
    /// A controller that writes `reset_evt` when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        Self {
            reset_evt,
            irq: None,
            status: SR_SYSTEM_FLAG,
            ctr: 0x47,
            output: None,
            keys: VecDeque::new(),
            pending_cmd: None,
        }
    }

    /// Raises `irq` (IRQ 1) when keyboard bytes arrive and the guest enabled it.
    pub fn with_keyboard_irq(mut self, irq: Box<dyn IrqTrigger>) -> Self {
        self.irq = Some(irq);
        self
    }

    /// Presses and releases Ctrl+Alt+Del. Returns false (nothing queued) when the guest
    /// has not read earlier keys and the queue is full.
    pub fn send_ctrl_alt_del(&mut self) -> bool {
        if self.keys.len() + CTRL_ALT_DEL.len() > KBD_QUEUE_MAX {
            return false;
        }
        self.keys.extend(CTRL_ALT_DEL);
        self.next_key();
        true
    }

    /// Moves the next keyboard byte into the output buffer when it is free.
    fn next_key(&mut self) {
        if self.output.is_some() {
            return;
        }
        if let Some(k) = self.keys.pop_front() {
            self.output = Some(k);
            if self.ctr & CTR_KBD_INT != 0 {
                if let Some(irq) = &self.irq {
                    if let Err(e) = irq.trigger() {
                        log::debug!("i8042: cannot raise IRQ 1: {e}");
                    }
                }
            }
        }
    }

    fn reset(&mut self) {
        log::info!("i8042: guest requested a CPU reset");
        if let Err(e) = self.reset_evt.write(1) {
            log::error!("i8042: cannot signal reset: {e}");
        }
    }

    fn push(&mut self, byte: u8) {
        self.output = Some(byte);
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SR_CMD_DATA;
        match cmd {
            CMD_READ_CTR => self.push(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT => self.pending_cmd = Some(cmd),
            CMD_SELF_TEST => self.push(0x55),
            CMD_TEST_KBD | CMD_TEST_AUX => self.push(0x00),
            CMD_DISABLE_KBD | CMD_ENABLE_KBD | CMD_DISABLE_AUX | CMD_ENABLE_AUX => {}
            CMD_PULSE_RESET => self.reset(),
            other => log::debug!("i8042: ignoring command {other:#x}"),
        }
    }

    fn data(&mut self, byte: u8) {
        self.status &= !SR_CMD_DATA;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.ctr = byte,
            // Output port bit 0 low holds the CPU in reset.
            Some(CMD_WRITE_OUTPUT) if byte & 1 == 0 => self.reset(),
            _ => log::debug!("i8042: ignoring data byte {byte:#x}"),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(b) = data.first_mut() else { return };
        *b = match offset {
            OFS_DATA => {
                let b = self.output.take().unwrap_or(0);
                self.next_key();
                b
            }
            OFS_CMD if self.output.is_some() => self.status | SR_OUTPUT_FULL,
            OFS_CMD => self.status,
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&b) = data.first() else { return };
        match offset {
            OFS_DATA => self.data(b),
            OFS_CMD => self.command(b),
            _ => {}
        }
    }
}

#[path = "i8042_state.rs"]
mod state;
pub use state::I8042State;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn dev() -> (I8042, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(evt.try_clone().unwrap()), evt)
    }

    #[test]
    fn pulse_reset_signals() {
        let (mut d, evt) = dev();
        assert!(evt.read().is_err());
        d.write(OFS_CMD, &[CMD_PULSE_RESET]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn output_port_reset_and_ctr() {
        let (mut d, evt) = dev();
        d.write(OFS_CMD, &[CMD_WRITE_CTR]);
        d.write(OFS_DATA, &[0x65]);
        d.write(OFS_CMD, &[CMD_READ_CTR]);
        let mut b = [0u8];
        d.read(OFS_CMD, &mut b);
        assert_eq!(b[0] & SR_OUTPUT_FULL, SR_OUTPUT_FULL);
        d.read(OFS_DATA, &mut b);
        assert_eq!(b[0], 0x65);
        d.read(OFS_CMD, &mut b);
        assert_eq!(b[0] & SR_OUTPUT_FULL, 0);
        d.write(OFS_CMD, &[CMD_WRITE_OUTPUT]);
        d.write(OFS_DATA, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
        d.write(OFS_CMD, &[CMD_SELF_TEST]);
        d.read(OFS_DATA, &mut b);
        assert_eq!(b[0], 0x55);
    }

    #[test]
    fn ctrl_alt_del_is_read_byte_by_byte_with_an_interrupt_each() {
        let (d, _evt) = dev();
        let irq = Arc::new(Count::default());
        let mut d = d.with_keyboard_irq(Box::new(irq.clone()));
        assert!(d.send_ctrl_alt_del());
        let mut got = Vec::new();
        let mut b = [0u8];
        loop {
            d.read(OFS_CMD, &mut b);
            if b[0] & SR_OUTPUT_FULL == 0 {
                break;
            }
            d.read(OFS_DATA, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, CTRL_ALT_DEL);
        assert_eq!(irq.0.load(Ordering::Relaxed), CTRL_ALT_DEL.len());
    }

    #[test]
    fn keys_a_guest_never_reads_are_bounded() {
        let (mut d, _evt) = dev();
        let accepted = (0..100).filter(|_| d.send_ctrl_alt_del()).count();
        assert_eq!(accepted, (KBD_QUEUE_MAX + 1) / CTRL_ALT_DEL.len());
    }

    #[test]
    fn no_interrupt_when_the_guest_disabled_it() {
        let (d, _evt) = dev();
        let irq = Arc::new(Count::default());
        let mut d = d.with_keyboard_irq(Box::new(irq.clone()));
        d.write(OFS_CMD, &[CMD_WRITE_CTR]);
        d.write(OFS_DATA, &[0x46]);
        assert!(d.send_ctrl_alt_del());
        assert_eq!(irq.0.load(Ordering::Relaxed), 0);
    }

    #[derive(Default)]
    struct Count(AtomicUsize);

    impl IrqTrigger for Arc<Count> {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }
}
