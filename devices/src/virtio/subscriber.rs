//! The device-thread side of a virtio device: queue eventfds and backend fds.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::error;
use vmm_sys_util::eventfd::EventFd;

use super::VirtioDevice;
use util::sync::lock;

/// `Events::data` of the activation eventfd.
const TOKEN_ACTIVATE: u32 = 0x1_0000;
/// `Events::data` of backend fd `i` is `TOKEN_BACKEND + i`.
const TOKEN_BACKEND: u32 = 0x2_0000;

/// An `event_manager` subscriber driving one device model; built by
/// [`super::MmioTransport::worker`] and run by a [`super::DeviceThread`].
///
/// `init` registers every queue eventfd (`data` = queue index) and the transport's
/// activation eventfd. Backend fds (a TAP) are added, modified and removed after each
/// event to match [`VirtioDevice::backend_interest`] (empty while the device is not
/// active). It never takes the transport's lock, only the device model's.
pub struct VirtioSubscriber<D: VirtioDevice> {
    device: Arc<Mutex<D>>,
    queue_evts: Vec<EventFd>,
    activate_evt: EventFd,
    backend_fds: Vec<RawFd>,
    backend: Vec<EventSet>,
}

impl<D: VirtioDevice> VirtioSubscriber<D> {
    pub(super) fn new(
        device: Arc<Mutex<D>>,
        queue_evts: Vec<EventFd>,
        activate_evt: EventFd,
    ) -> Self {
        let backend_fds = lock(&device).backend_fds();
        Self {
            backend: vec![EventSet::empty(); backend_fds.len()],
            device,
            queue_evts,
            activate_evt,
            backend_fds,
        }
    }

    /// Brings the epoll registration of the backend fds in line with the device's wishes.
    fn sync_backends(&mut self, dev: &D, ops: &mut EventOps) {
        for (i, &fd) in self.backend_fds.iter().enumerate() {
            let want = dev.backend_interest(i);
            let have = self.backend[i];
            if want == have {
                continue;
            }
            let token = TOKEN_BACKEND + i as u32;
            let res = if have.is_empty() {
                ops.add(Events::with_data_raw(fd, token, want))
            } else if want.is_empty() {
                ops.remove(Events::with_data_raw(fd, token, have))
            } else {
                ops.modify(Events::with_data_raw(fd, token, want))
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
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                error!("virtio: cannot watch queue {i} eventfd: {e}");
            }
        }
        let activate = Events::with_data(&self.activate_evt, TOKEN_ACTIVATE, EventSet::IN);
        if let Err(e) = ops.add(activate) {
            error!("virtio: cannot watch the activation eventfd: {e}");
        }
        let device = self.device.clone();
        let dev = lock(&device);
        self.sync_backends(&dev, ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let device = self.device.clone();
        let mut dev = lock(&device);
        let token = events.data();
        if let Some(evt) = self.queue_evts.get(token as usize) {
            // Drain the counter; EAGAIN just means another pass already did.
            let _ = evt.read();
            if dev.process_queue(token as usize) {
                // Work left: come back after the other ready events.
                if let Err(e) = evt.write(1) {
                    error!("virtio: cannot re-signal queue {token}: {e}");
                }
            }
        } else if token == TOKEN_ACTIVATE {
            let _ = self.activate_evt.read();
        } else if let Some(i) = token.checked_sub(TOKEN_BACKEND) {
            if dev.process_backend(i as usize, events.event_set()) {
                for (q, evt) in self.queue_evts.iter().enumerate() {
                    if let Err(e) = evt.write(1) {
                        error!("virtio: cannot re-signal queue {q}: {e}");
                    }
                }
            }
        }
        self.sync_backends(&dev, ops);
    }
}
