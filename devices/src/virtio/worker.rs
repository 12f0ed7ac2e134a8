//! A virtio device's own thread: an event loop over its queue eventfds and backend fds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use super::Error;

type Manager = EventManager<Box<dyn MutEventSubscriber + Send>>;

/// Watches the stop eventfd of a [`DeviceThread`].
struct StopWatch {
    evt: EventFd,
    stop: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopWatch {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            // Without it the thread could not be stopped: make it stop at once instead.
            log::error!("virtio: cannot watch a device thread's stop eventfd: {e:?}");
            self.stop.store(true, Ordering::SeqCst);
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A running device thread; dropping it stops the thread after its current (bounded)
/// pass and joins it.
pub struct DeviceThread {
    stop_evt: EventFd,
    handle: Option<JoinHandle<()>>,
}

/// What a device thread runs first, before any guest-driven work: e.g. installing the
/// VMM's seccomp filter for device threads. Its error fails [`DeviceThread::spawn`].
pub type ThreadSetup = Box<dyn FnOnce() -> std::io::Result<()> + Send>;

impl DeviceThread {
    /// Runs `subscriber` (a [`super::VirtioSubscriber`]) on a new thread named `name`,
    /// after `setup` succeeded on that thread (`spawn` waits for it). The thread
    /// inherits the caller's signal mask.
    pub fn spawn<S>(name: &str, subscriber: S, setup: ThreadSetup) -> Result<Self, Error>
    where
        S: MutEventSubscriber + Send + 'static,
    {
        let stop_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut em = Manager::new().map_err(Error::EventLoop)?;
        em.add_subscriber(Box::new(subscriber));
        em.add_subscriber(Box::new(StopWatch {
            evt: stop_evt.try_clone().map_err(Error::EventFd)?,
            stop: stop.clone(),
        }));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let ready = setup();
                let ok = ready.is_ok();
                let _ = tx.send(ready);
                if ok {
                    run(em, &stop);
                }
            })
            .map_err(Error::Thread)?;
        let ready = rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("device thread ended during set-up")));
        if let Err(e) = ready {
            let _ = handle.join();
            return Err(Error::ThreadSetup(e));
        }
        Ok(Self {
            stop_evt,
            handle: Some(handle),
        })
    }
}

fn run(mut em: Manager, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        if let Err(e) = em.run() {
            log::error!("virtio: device thread event loop failed: {e:?}; device stopped");
            return;
        }
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        if let Err(e) = self.stop_evt.write(1) {
            log::error!("virtio: cannot stop a device thread: {e}");
            return; // joining would hang: leave the thread to process exit
        }
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Counter {
        evt: EventFd,
        seen: Arc<AtomicUsize>,
    }
    impl MutEventSubscriber for Counter {
        fn init(&mut self, ops: &mut EventOps) {
            ops.add(Events::new(&self.evt, EventSet::IN)).unwrap();
        }
        fn process(&mut self, _e: Events, _ops: &mut EventOps) {
            let _ = self.evt.read();
            self.seen.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn runs_events_and_stops_on_drop() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let t = DeviceThread::spawn(
            "test-dev",
            Counter {
                evt: evt.try_clone().unwrap(),
                seen: seen.clone(),
            },
            Box::new(|| Ok(())),
        )
        .unwrap();
        evt.write(1).unwrap();
        for _ in 0..200 {
            if seen.load(Ordering::SeqCst) > 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        drop(t); // joins: returns only once the thread has stopped
    }

    #[test]
    fn failed_setup_fails_spawn() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let sub = Counter { evt, seen };
        let setup: ThreadSetup = Box::new(|| Err(std::io::Error::other("no filter")));
        let e = DeviceThread::spawn("test-dev", sub, setup).err().unwrap();
        assert!(e.to_string().contains("no filter"), "{e}");
    }
}
