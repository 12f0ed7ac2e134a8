//! The metrics thread: a Firecracker-style metrics line every minute.

use std::sync::{Arc, Condvar, Mutex};

use api::Controller;
use vmm::confine::{self, Confinement};
use vmm::seccomp::ThreadKind;

/// Writes a metrics line every [`api::metrics::PERIOD`] while the process runs.
pub(super) struct MetricsTicker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl MetricsTicker {
    pub(super) fn spawn(controller: Arc<Mutex<Controller>>, confine: Arc<Confinement>) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("kiln-metrics".into())
            .spawn(move || {
                if let Err(e) =
                    confine::set_no_new_privs().and_then(|()| confine.enter(ThreadKind::Api))
                {
                    log::error!("metrics thread: {e}; no periodic metrics");
                    return;
                }
                let (lock, cv) = &*s;
                let mut stopped = util::sync::lock(lock);
                while !*stopped {
                    let (g, timeout) = match cv.wait_timeout(stopped, api::metrics::PERIOD) {
                        Ok(r) => r,
                        Err(p) => p.into_inner(),
                    };
                    stopped = g;
                    if timeout.timed_out() && !*stopped {
                        util::sync::lock(&controller).flush_metrics();
                    }
                }
            })
            .map_err(|e| log::warn!("cannot start the metrics thread: {e}"))
            .ok();
        Self { stop, handle }
    }
}

impl Drop for MetricsTicker {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *util::sync::lock(lock) = true;
        cv.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
