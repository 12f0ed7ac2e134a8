//! The event-loop side of a virtio device: queue eventfds and backend fds.

use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};

use super::{MmioTransport, VirtioDevice};
use crate::bus::lock;

/// `Events::data` of the activation eventfd.
const TOKEN_ACTIVATE: u32 = 0x1_0000;
/// `Events::data` of backend fd `i` is `TOKEN_BACKEND + i`.
const TOKEN_BACKEND: u32 = 0x2_0000;

/// An `event_manager` subscriber driving one [`MmioTransport`]'s device.
///
/// `init` registers every queue eventfd (`data` = queue index) and the transport's
/// activation eventfd. Backend fds (a TAP) are added, modified and removed after each
/// event to match [`VirtioDevice::backend_interest`]; before activation none is watched.
pub struct VirtioSubscriber<D: VirtioDevice> {
    transport: Arc<Mutex<MmioTransport<D>>>,
    backend: Vec<EventSet>,
}

impl<D: VirtioDevice> VirtioSubscriber<D> {
    /// A subscriber for `transport` (the same `Arc` the bus holds).
    pub fn new(transport: Arc<Mutex<MmioTransport<D>>>) -> Self {
        Self {
            transport,
            backend: Vec::new(),
        }
    }

    /// Brings the epoll registration of the backend fds in line with the device's wishes.
    fn sync_backends(&mut self, t: &MmioTransport<D>, ops: &mut EventOps) {
        let fds = t.device().backend_fds();
        self.backend.resize(fds.len(), EventSet::empty());
        for (i, &fd) in fds.iter().enumerate() {
            let want = if t.is_activated() {
                t.device().backend_interest(i)
            } else {
                EventSet::empty()
            };
            let have = self.backend[i];
            if want == have {
                continue;
            }
            let ev = Events::with_data_raw(fd, TOKEN_BACKEND + i as u32, want);
            let res = if have.is_empty() {
                ops.add(ev)
            } else if want.is_empty() {
                ops.remove(Events::with_data_raw(fd, TOKEN_BACKEND + i as u32, have))
            } else {
                ops.modify(ev)
            };
            match res {
                Ok(()) => self.backend[i] = want,
                Err(e) => error!("virtio: cannot update epoll for backend fd {fd}: {e}"),
            }
        }
    }
}

impl<D: VirtioDevice> MutEventSubscriber for VirtioSubscriber<D> {
    fn init(&mut self, ops: &mut EventOps) {
        let transport = self.transport.clone();
        let t = lock(&transport);
        for (i, evt) in t.queue_evts().iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                error!("virtio: cannot watch queue {i} eventfd: {e}");
            }
        }
        if let Err(e) = ops.add(Events::with_data(
            t.activate_evt(),
            TOKEN_ACTIVATE,
            EventSet::IN,
        )) {
            error!("virtio: cannot watch the activation eventfd: {e}");
        }
        self.sync_backends(&t, ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let transport = self.transport.clone();
        let mut t = lock(&transport);
        let token = events.data();
        let nq = t.queue_evts().len();
        if (token as usize) < nq {
            let i = token as usize;
            // Drain the counter; EAGAIN just means another pass already did.
            let _ = t.queue_evts()[i].read();
            if t.is_activated() {
                t.device_mut().process_queue(i);
            }
        } else if token == TOKEN_ACTIVATE {
            let _ = t.activate_evt().read();
        } else if token >= TOKEN_BACKEND {
            let i = (token - TOKEN_BACKEND) as usize;
            if t.is_activated() {
                t.device_mut().process_backend(i, events.event_set());
            }
        } else {
            warn!("virtio: event with unknown token {token:#x}");
        }
        self.sync_backends(&t, ops);
    }
}
