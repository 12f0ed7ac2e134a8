//! virtio-net TX and RX behind the virtio-mmio transport, driven like a guest driver
//! would, on a mock backend that delivers frames taken from the input and accepts,
//! refuses (`WouldBlock`) or fails TX writes as the input says.
//!
//! Input: the `kiln_fuzz::script` header (queue 0 RX, queue 1 TX; target bit 3 of
//! `layout`: the backend supports offloads, bit 4: setting them fails) and ops. Op 10
//! queues a received frame (`len` u16, `n` u8 and `n` content bytes, zero-padded to
//! `len`); op 11 sets the backend (`mode` u8: bits 0-1 TX writes accept / would block /
//! fail, bit 2 the next read fails, bits 3-5 deliver IN, OUT, ERROR readiness).
//! Checked beyond "no panic": every frame the device sends has a header and fits
//! `MAX_FRAME_LEN`.

#![no_main]

use std::collections::VecDeque;
use std::io::{Error, ErrorKind};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use devices::virtio::net::{Net, NetBackend, MAX_FRAME_LEN, VNET_HDR_LEN};
use devices::virtio::VirtioDevice;
use event_manager::EventSet;
use kiln_fuzz::input::Input;
use kiln_fuzz::script::Session;
use libfuzzer_sys::fuzz_target;
use vmm_sys_util::eventfd::EventFd;

#[derive(Default)]
struct State {
    rx: VecDeque<Vec<u8>>,
    rx_fail: bool,
    tx_mode: u8,
    sent: usize,
}

struct MockBackend {
    state: Arc<Mutex<State>>,
    fd: EventFd,
    offloads: bool,
    offload_fails: bool,
}

fn state(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AsRawFd for MockBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl NetBackend for MockBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut s = state(&self.state);
        if std::mem::take(&mut s.rx_fail) {
            return Err(Error::other("mock read failure"));
        }
        let f = s.rx.pop_front().ok_or(ErrorKind::WouldBlock)?;
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        assert!(
            (VNET_HDR_LEN..=MAX_FRAME_LEN).contains(&buf.len()),
            "TX frame of {} bytes",
            buf.len()
        );
        let mut s = state(&self.state);
        match s.tx_mode & 3 {
            1 => Err(ErrorKind::WouldBlock.into()),
            2 => Err(Error::other("mock write failure")),
            _ => {
                s.sent += 1;
                Ok(buf.len())
            }
        }
    }

    fn offloads_supported(&self) -> bool {
        self.offloads
    }

    fn set_offload(&mut self, _flags: u32) -> std::io::Result<()> {
        if self.offload_fails {
            return Err(Error::other("mock TUNSETOFFLOAD failure"));
        }
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let st = Arc::new(Mutex::new(State::default()));
    let backend_state = st.clone();
    let mut s = Session::start(&mut inp, 2, move |bits| {
        let backend = MockBackend {
            state: backend_state,
            fd: EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"),
            offloads: bits & 1 != 0,
            offload_fails: bits & 2 != 0,
        };
        Net::new(backend, [2, 0, 0, 0, 0, 1]).expect("net device")
    });
    s.run(&mut inp, |op, s, inp| {
        if op == 10 {
            let len = usize::from(inp.u16());
            let n = usize::from(inp.u8());
            let mut f = inp.bytes(n).to_vec();
            f.resize(len, 0);
            state(&st).rx.push_back(f);
            return;
        }
        let mode = inp.u8();
        {
            let mut b = state(&st);
            b.tx_mode = mode & 3;
            b.rx_fail = mode & 4 != 0;
        }
        let mut ev = EventSet::empty();
        for (bit, e) in [
            (8, EventSet::IN),
            (16, EventSet::OUT),
            (32, EventSet::ERROR),
        ] {
            if mode & bit != 0 {
                ev |= e;
            }
        }
        // As an event loop would: readiness the device asked for, errors always, and
        // only on an activated device (its interest is empty otherwise).
        let mut dev = s.drv.t.device();
        let want = dev.backend_interest(0);
        if !want.is_empty() {
            ev &= want | EventSet::ERROR;
            if !ev.is_empty() {
                dev.process_backend(0, ev);
            }
        }
    });
    if kiln_fuzz::verbose() {
        let b = state(&st);
        eprintln!(
            "virtio_net: {} frames sent, {} left to receive",
            b.sent,
            b.rx.len()
        );
    }
});
