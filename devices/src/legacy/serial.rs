//! 16550A UART (COM1) built on `vm-superio`, and the event-loop subscriber that feeds
//! host input (stdin or any readable fd) into its receive FIFO.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, Events, MutEventSubscriber};
use vm_superio::serial::SerialEvents;
use vm_superio::Serial;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::irq::IrqLine;
use util::sync::lock;

/// Ctrl-A: escape prefix on an interactive terminal; Ctrl-A x quits the VM.
pub const ESCAPE_BYTE: u8 = 0x01;

/// Serial events: tells the input side when the guest has drained the receive FIFO.
pub struct RxDrained(EventFd);

impl SerialEvents for RxDrained {
    fn buffer_read(&self) {
        if let Err(e) = self.0.write(1) {
            log::warn!("serial: cannot signal drained FIFO: {e}");
        }
    }
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {
        // Only a failed write loses a byte, and SerialOutput reports those (once).
    }
    fn in_buffer_empty(&self) {}
}

/// Guest console output with Kiln's write-error policy, so a guest cannot turn a broken
/// output into a flood of log lines: the first error is logged once and every later byte
/// is dropped (the guest sees no error and the VM keeps running). When that error is
/// `EPIPE` (the reader is gone) and [`SerialOutput::on_reader_gone`] set a hook, the hook
/// runs instead, once: `kiln run` stops the VM there. A would-block error drops that
/// output only (logged once).
pub struct SerialOutput {
    out: Box<dyn Write + Send>,
    failed: bool,
    warned_would_block: bool,
    on_reader_gone: Option<Box<dyn FnOnce() + Send>>,
}

impl SerialOutput {
    /// Output to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out,
            failed: false,
            warned_would_block: false,
            on_reader_gone: None,
        }
    }

    /// Runs `hook` (once) when a write fails with `EPIPE`.
    pub fn on_reader_gone(mut self, hook: impl FnOnce() + Send + 'static) -> Self {
        self.on_reader_gone = Some(Box::new(hook));
        self
    }

    /// Whether output is being dropped after an error.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// Applies the policy to one result of the underlying writer.
    fn check<T>(&mut self, r: std::io::Result<T>, dropped: T) -> std::io::Result<T> {
        use std::io::ErrorKind;
        let e = match r {
            Ok(v) => return Ok(v),
            Err(e) if e.kind() == ErrorKind::Interrupted => return Err(e),
            Err(e) => e,
        };
        if e.kind() == ErrorKind::WouldBlock {
            if !std::mem::replace(&mut self.warned_would_block, true) {
                log::warn!("serial: console output would block: dropping output while it does");
            }
            return Ok(dropped);
        }
        self.failed = true;
        match (e.kind(), self.on_reader_gone.take()) {
            (ErrorKind::BrokenPipe, Some(hook)) => {
                log::warn!("serial: the console output's reader is gone (EPIPE): stopping the VM");
                hook();
            }
            _ => log::warn!(
                "serial: writing console output failed: {e}; dropping further output (the VM \
                 keeps running)"
            ),
        }
        Ok(dropped)
    }
}

impl Write for SerialOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.failed {
            return Ok(buf.len());
        }
        let r = self.out.write(buf);
        self.check(r, buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.failed {
            return Ok(());
        }
        let r = self.out.flush();
        self.check(r, ())
    }
}

/// The UART as a bus device (8 ports from its base).
pub struct SerialDevice {
    uart: Serial<IrqLine, RxDrained, SerialOutput>,
}

impl SerialDevice {
    /// A UART raising `irq`, writing guest output to `out` under the [`SerialOutput`]
    /// policy (an `out` that is itself a `SerialOutput` keeps its own hook), and
    /// signalling `drained` whenever the guest reads from the receive FIFO.
    pub fn new(irq: IrqLine, out: Box<dyn Write + Send>, drained: EventFd) -> Self {
        Self {
            uart: Serial::with_events(irq, RxDrained(drained), SerialOutput::new(out)),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.uart.fifo_capacity());
        if n == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: cannot queue input: {e:?}");
                0
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Some(b), Ok(ofs)) = (data.first_mut(), u8::try_from(offset)) {
            *b = self.uart.read(ofs);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Some(&b), Ok(ofs)) = (data.first(), u8::try_from(offset)) {
            // Output errors are handled (and logged once) by SerialOutput.
            if let Err(vm_superio::serial::Error::Trigger(e)) = self.uart.write(ofs, b) {
                log::debug!("serial: cannot raise the interrupt: {e}");
            }
            if ofs == 0 {
                let _ = self.uart.writer_mut().flush();
            }
        }
    }
}

/// Feeds a host input fd (stdin, a pipe) into the UART from the event loop.
///
/// Bytes that do not fit in the 64-byte FIFO wait here; while any wait, the input fd is
/// not watched, so a guest that does not read costs no CPU. With `escape` set (an
/// interactive terminal), Ctrl-A x writes `quit_evt` instead of reaching the guest.
pub struct SerialInput {
    serial: Arc<Mutex<SerialDevice>>,
    input: Box<dyn ReadFd>,
    drained: EventFd,
    pending: VecDeque<u8>,
    escape: Option<EventFd>,
    saw_escape: bool,
    input_watched: bool,
}

/// A readable host fd.
pub trait ReadFd: Read + AsRawFd + Send {}
impl<T: Read + AsRawFd + Send> ReadFd for T {}

impl SerialInput {
    /// Input from `input` into `serial`; `drained` is the fd given to [`SerialDevice::new`].
    pub fn new(
        serial: Arc<Mutex<SerialDevice>>,
        input: Box<dyn ReadFd>,
        drained: EventFd,
        escape: Option<EventFd>,
    ) -> Self {
        Self {
            serial,
            input,
            drained,
            pending: VecDeque::new(),
            escape,
            saw_escape: false,
            input_watched: false,
        }
    }

    fn input_fd(&self) -> RawFd {
        self.input.as_raw_fd()
    }

    /// Applies the Ctrl-A escape: returns the bytes meant for the guest.
    fn filter_escape(&mut self, bytes: &[u8]) -> Vec<u8> {
        let Some(quit) = &self.escape else {
            return bytes.to_vec();
        };
        let mut out = Vec::with_capacity(bytes.len());
        for &b in bytes {
            if self.saw_escape {
                self.saw_escape = false;
                match b {
                    b'x' | b'X' => {
                        log::info!("serial: Ctrl-A x pressed, stopping the VM");
                        let _ = quit.write(1);
                    }
                    _ => out.push(b),
                }
            } else if b == ESCAPE_BYTE {
                self.saw_escape = true;
            } else {
                out.push(b);
            }
        }
        out
    }

    fn flush_pending(&mut self) {
        let (a, b) = self.pending.as_slices();
        let mut dev = lock(&self.serial);
        let mut n = dev.enqueue_input(a);
        if n == a.len() {
            n += dev.enqueue_input(b);
        }
        drop(dev);
        self.pending.drain(..n);
    }

    fn set_watch(&mut self, ops: &mut EventOps, want: bool) {
        if want == self.input_watched {
            return;
        }
        let ev = event_manager::Events::new_raw(self.input_fd(), EventSet::IN);
        let res = if want { ops.add(ev) } else { ops.remove(ev) };
        match res {
            Ok(()) => self.input_watched = want,
            Err(e) => log::warn!("serial: cannot change input watch: {e:?}"),
        }
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; 256];
        match self.input.read(&mut buf) {
            Ok(0) => {
                log::debug!("serial: input closed");
                self.set_watch(ops, false);
                return;
            }
            Ok(n) => {
                let bytes = self.filter_escape(&buf[..n]);
                self.pending.extend(bytes);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("serial: input read failed, ignoring further input: {e}");
                self.set_watch(ops, false);
                return;
            }
        }
        self.flush_pending();
        if !self.pending.is_empty() {
            self.set_watch(ops, false);
        }
    }
}

impl MutEventSubscriber for SerialInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.drained.as_raw_fd() {
            let _ = self.drained.read();
            if !self.pending.is_empty() {
                self.flush_pending();
                if self.pending.is_empty() {
                    self.set_watch(ops, true);
                }
            }
        } else if events.fd() == self.input_fd() {
            if events.event_set().contains(EventSet::IN) {
                self.read_input(ops);
            } else {
                // HUP or ERR without data: the input is gone.
                self.set_watch(ops, false);
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.drained, EventSet::IN)) {
            log::warn!("serial: cannot watch the drained event: {e:?}");
        }
        self.set_watch(ops, true);
    }
}

#[path = "serial_state.rs"]
mod state;
pub use state::SerialState;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn device() -> (SerialDevice, Sink) {
        let sink = Sink::default();
        let irq = IrqLine::new(4).unwrap();
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            SerialDevice::new(irq, Box::new(sink.clone()), drained),
            sink,
        )
    }

    #[test]
    fn output_reaches_writer_and_input_is_bounded() {
        let (mut dev, sink) = device();
        dev.write(0, b"h");
        dev.write(0, b"i");
        assert_eq!(&*lock(&sink.0), b"hi");
        let big = [b'a'; 100];
        assert_eq!(dev.enqueue_input(&big), 64);
        assert_eq!(dev.enqueue_input(&big), 0);
        let mut b = [0u8];
        dev.read(0, &mut b);
        assert_eq!(b[0], b'a');
        assert_eq!(dev.enqueue_input(&big), 1);
    }

    /// A writer whose every call fails with `errno`, counting the calls.
    struct Failing(i32, Arc<std::sync::atomic::AtomicUsize>);
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(std::io::Error::from_raw_os_error(self.0))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn failing(errno: i32) -> (Box<Failing>, Arc<std::sync::atomic::AtomicUsize>) {
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (Box::new(Failing(errno, calls.clone())), calls)
    }

    #[test]
    fn full_disk_drops_output_after_the_first_error() {
        let (w, calls) = failing(libc::ENOSPC);
        let mut out = SerialOutput::new(w);
        assert_eq!(out.write(b"abc").unwrap(), 3);
        assert!(out.failed());
        assert_eq!(out.write(b"def").unwrap(), 3);
        out.flush().unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn closed_pipe_runs_the_hook_once() {
        let (w, calls) = failing(libc::EPIPE);
        let stops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s = stops.clone();
        let mut out = SerialOutput::new(w).on_reader_gone(move || {
            s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        for _ in 0..10 {
            assert_eq!(out.write(b"x").unwrap(), 1);
        }
        assert_eq!(stops.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn other_errors_do_not_run_the_reader_gone_hook() {
        let (w, _) = failing(libc::EIO);
        let stops = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s = stops.clone();
        let mut out = SerialOutput::new(w).on_reader_gone(move || {
            s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        out.write_all(b"xyz").unwrap();
        assert!(out.failed());
        assert_eq!(stops.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn would_block_drops_only_that_output() {
        let (w, calls) = failing(libc::EAGAIN);
        let mut out = SerialOutput::new(w);
        out.write_all(b"a").unwrap();
        out.write_all(b"b").unwrap();
        assert!(!out.failed());
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn uart_keeps_running_after_an_output_error() {
        let (w, calls) = failing(libc::ENOSPC);
        let irq = IrqLine::new(4).unwrap();
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut dev = SerialDevice::new(irq, w, drained);
        for b in b"many bytes" {
            dev.write(0, &[*b]);
        }
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        // The transmitter still reports empty (LSR bits 5 and 6): the guest is not stuck.
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn escape_sequence_quits() {
        let (dev, _) = device();
        let quit = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let drained = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let input = std::fs::File::open("/dev/null").unwrap();
        let mut si = SerialInput::new(
            Arc::new(Mutex::new(dev)),
            Box::new(input),
            drained,
            Some(quit.try_clone().unwrap()),
        );
        assert_eq!(si.filter_escape(b"ab\x01\x01c"), b"ab\x01c");
        assert!(quit.read().is_err());
        assert_eq!(si.filter_escape(b"\x01"), b"");
        assert_eq!(si.filter_escape(b"x"), b"");
        assert_eq!(quit.read().unwrap(), 1);
    }
}
