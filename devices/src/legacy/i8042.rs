//! A minimal i8042 keyboard controller: enough for Linux's probe and for the CPU
//! reset it uses to reboot (`reboot=k`: command 0xfe on port 0x64). A reset ends the VM.
//!
//! The device sits on the port bus at 0x60 (offset 0, data) and 0x64 (offset 4,
//! status/command), registered as one 5-port range.

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

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

/// The i8042 controller.
pub struct I8042 {
    reset_evt: EventFd,
    status: u8,
    ctr: u8,
    output: Option<u8>,
    pending_cmd: Option<u8>,
}

impl I8042 {
    /// A controller that writes `reset_evt` when the guest asks for a CPU reset.
    pub fn new(reset_evt: EventFd) -> Self {
        Self {
            reset_evt,
            status: SR_SYSTEM_FLAG,
            ctr: 0x47,
            output: None,
            pending_cmd: None,
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
            OFS_DATA => self.output.take().unwrap_or(0),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
