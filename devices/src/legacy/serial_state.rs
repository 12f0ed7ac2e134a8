//! Snapshot and restore of the UART: its registers and receive FIFO, as vm-superio's
//! `SerialState` holds them (mirrored here: that type has no serde support).
//!
//! The host side (interrupt line, console output, drained eventfd) is the VMM's, built
//! afresh and handed to [`SerialDevice::restore`]. Host input that
//! [`super::SerialInput`] read but had not yet put in the FIFO is not saved.

use std::io::Write;

use serde::{Deserialize, Serialize};
use vm_superio::serial::SerialState as UartState;
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use super::{RxDrained, SerialDevice, SerialOutput};
use crate::irq::IrqLine;
use crate::snapshot::StateError;

/// The receive FIFO's size in vm-superio's UART.
const FIFO_LEN: usize = 64;

/// The 16550A's guest-visible state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte (DLL).
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte (DLM).
    pub baud_divisor_high: u8,
    /// Interrupt Enable Register.
    pub interrupt_enable: u8,
    /// Interrupt Identification Register.
    pub interrupt_identification: u8,
    /// Line Control Register.
    pub line_control: u8,
    /// Line Status Register.
    pub line_status: u8,
    /// Modem Control Register.
    pub modem_control: u8,
    /// Modem Status Register.
    pub modem_status: u8,
    /// Scratch Register.
    pub scratch: u8,
    /// Received bytes the guest has not read yet (at most 64).
    pub in_buffer: Vec<u8>,
}

impl From<UartState> for SerialState {
    fn from(s: UartState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialState> for UartState {
    fn from(s: &SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl SerialDevice {
    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn state(&self) -> SerialState {
        self.uart.state().into()
    }

    /// A UART in the saved `state`, with the host side [`SerialDevice::new`] takes: it
    /// raises `irq`, writes to `out` and signals `drained`. When the saved registers
    /// have an interrupt pending and enabled, `irq` is raised once (a lost edge would
    /// leave the guest's driver waiting; a spurious one costs it a register read).
    ///
    /// Fails when the saved FIFO is longer than the UART's or the interrupt cannot be
    /// raised.
    pub fn restore(
        irq: IrqLine,
        out: Box<dyn Write + Send>,
        drained: EventFd,
        state: &SerialState,
    ) -> Result<Self, StateError> {
        let len = state.in_buffer.len();
        if len > FIFO_LEN {
            return Err(StateError::SerialFifo { len, max: FIFO_LEN });
        }
        let uart = Serial::from_state(
            &state.into(),
            irq,
            RxDrained(drained),
            SerialOutput::new(out),
        )
        .map_err(|e| match e {
            vm_superio::serial::Error::Trigger(e) | vm_superio::serial::Error::IOError(e) => {
                StateError::SerialIrq(e)
            }
            vm_superio::serial::Error::FullFifo => StateError::SerialFifo { len, max: FIFO_LEN },
        })?;
        Ok(Self { uart })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    fn parts() -> (IrqLine, EventFd) {
        (
            IrqLine::new(4).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        )
    }

    fn device() -> SerialDevice {
        let (irq, drained) = parts();
        SerialDevice::new(irq, Box::new(std::io::sink()), drained)
    }

    #[test]
    fn round_trip_keeps_fifo_bytes_and_registers() {
        let mut dev = device();
        dev.write(3, &[0x80]); // LCR: DLAB on
        dev.write(0, &[0x0c]); // DLL: 9600 baud
        dev.write(1, &[0x00]);
        dev.write(3, &[0x03]); // LCR: 8N1, DLAB off
        dev.write(1, &[0x01]); // IER: received data available
        dev.write(7, &[0x5a]); // scratch
        assert_eq!(dev.enqueue_input(b"hello"), 5);

        let saved = dev.state();
        assert_eq!(saved.in_buffer, b"hello");
        let (irq, drained) = parts();
        let mut back = SerialDevice::restore(
            irq.try_clone().unwrap(),
            Box::new(std::io::sink()),
            drained,
            &saved,
        )
        .unwrap();
        assert_eq!(back.state(), saved);
        // The pending received-data interrupt was raised again.
        assert_eq!(irq.evt.read().unwrap(), 1);
        let mut b = [0u8];
        for (ofs, want) in [(3u64, 0x03u8), (1, 0x01), (7, 0x5a)] {
            back.read(ofs, &mut b);
            assert_eq!(b[0], want, "register {ofs}");
        }
        let mut got = Vec::new();
        for _ in 0..5 {
            back.read(0, &mut b);
            got.push(b[0]);
        }
        assert_eq!(got, b"hello");
        back.write(3, &[0x83]);
        back.read(0, &mut b);
        assert_eq!(b[0], 0x0c, "divisor latch");
    }

    #[test]
    fn oversized_fifo_is_refused() {
        let mut s = device().state();
        s.in_buffer = vec![0; FIFO_LEN + 1];
        let (irq, drained) = parts();
        let err = SerialDevice::restore(irq, Box::new(std::io::sink()), drained, &s);
        assert!(matches!(
            err,
            Err(StateError::SerialFifo { len: 65, max: 64 })
        ));
    }

    #[test]
    fn serde_round_trip() {
        let mut dev = device();
        dev.enqueue_input(b"abc");
        let s = dev.state();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<SerialState>(&json).unwrap(), s);
    }
}
