//! Pausing and resuming the vCPUs of a running VM from another thread (the API's
//! `PATCH /vm`), and the per-exit counters the metrics report.
//!
//! A pause sets a flag, kicks every vCPU thread out of `KVM_RUN` ([`vcpu::kick_signal`])
//! and waits until each has parked on a condition variable; a resume clears the flag
//! and wakes them. The registry of vCPU threads is emptied (under its lock) before the
//! threads are joined, so a pause never signals a thread that is gone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::snapshot::kvm_state::{StateError, VcpuState};
use crate::vcpu;
use std::sync::Arc;

/// How long a pause waits for every vCPU to park before it gives up.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Errors from pausing or resuming.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PauseError {
    /// The VM has stopped (or has not started its vCPUs).
    #[error("the VM is not running")]
    NotRunning,
    /// A vCPU did not leave `KVM_RUN` in time.
    #[error("{parked} of {total} vCPUs paused within {PAUSE_TIMEOUT:?}; the VM was resumed")]
    Timeout {
        /// vCPUs that parked.
        parked: usize,
        /// vCPUs of the VM.
        total: usize,
    },
    /// Saving state needs a paused VM.
    #[error("the VM is not paused: pause it first (PATCH /vm {{\"state\": \"Paused\"}})")]
    NotPaused,
    /// A vCPU could not save its state.
    #[error("vCPU {vcpu}: {msg}")]
    Save {
        /// The vCPU index.
        vcpu: usize,
        /// What failed.
        msg: String,
    },
    /// The vCPUs did not save their state in time.
    #[error("the vCPUs did not save their state within {PAUSE_TIMEOUT:?}")]
    SaveTimeout,
}

#[derive(Default)]
struct State {
    /// pthread_t of each running vCPU thread; empty once they are being joined.
    threads: Vec<libc::pthread_t>,
    paused: bool,
    parked: usize,
    stopping: bool,
    /// A request to the parked vCPU threads to save their state.
    save: Option<SaveRequest>,
    generation: u64,
}

/// What parked vCPU threads are asked to do: save their state with these MSRs.
struct SaveRequest {
    generation: u64,
    msrs: Arc<Vec<u32>>,
    results: Vec<Option<Result<VcpuState, String>>>,
}

/// Saves one vCPU's state given the MSR indices to save (run on the vCPU's thread).
pub type SaveFn<'a> = &'a mut dyn FnMut(&[u32]) -> Result<VcpuState, StateError>;

/// Shared by the VM's vCPU threads and whoever pauses them.
#[derive(Default)]
pub struct VcpuControl {
    state: Mutex<State>,
    changed: Condvar,
    pause_requested: std::sync::atomic::AtomicBool,
    /// Exit counters.
    pub metrics: VcpuMetrics,
}

impl VcpuControl {
    /// Records the running vCPU threads (called once they are started).
    pub fn set_threads(&self, threads: Vec<libc::pthread_t>) {
        util::sync::lock(&self.state).threads = threads;
    }

    /// Forgets the threads and releases parked vCPUs for good (called before joining).
    pub fn stopping(&self) {
        let mut s = util::sync::lock(&self.state);
        s.threads.clear();
        s.stopping = true;
        s.paused = false;
        self.pause_requested.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        util::sync::lock(&self.state).paused
    }

    /// Stops every vCPU outside `KVM_RUN` and returns once all are parked. Pausing a
    /// paused VM succeeds at once.
    pub fn pause(&self) -> Result<(), PauseError> {
        let mut s = util::sync::lock(&self.state);
        if s.stopping || s.threads.is_empty() {
            return Err(PauseError::NotRunning);
        }
        if s.paused {
            return Ok(());
        }
        s.paused = true;
        self.pause_requested.store(true, Ordering::Release);
        for &t in &s.threads {
            // SAFETY: `threads` holds only threads that are running: it is cleared under
            // this lock before any of them is joined.
            unsafe { libc::pthread_kill(t, vcpu::kick_signal()) };
        }
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        while s.parked < s.threads.len() && !s.stopping {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let (parked, total) = (s.parked, s.threads.len());
                drop(s);
                self.resume();
                return Err(PauseError::Timeout { parked, total });
            }
            s = match self.changed.wait_timeout(s, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        if s.stopping {
            return Err(PauseError::NotRunning);
        }
        Ok(())
    }

    /// Lets paused vCPUs run again. Resuming a running VM succeeds at once.
    pub fn resume(&self) {
        let mut s = util::sync::lock(&self.state);
        s.paused = false;
        self.pause_requested.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    /// Makes the vCPUs park before their first `KVM_RUN` (a VM restored paused);
    /// call before they start.
    pub fn start_paused(&self) {
        util::sync::lock(&self.state).paused = true;
        self.pause_requested.store(true, Ordering::Release);
    }

    /// Called by vCPU `id`'s thread between `KVM_RUN`s: parks while a pause is in
    /// force, saving its state with `save` when asked. Cheap when no pause was asked
    /// for (one atomic load).
    pub fn park_if_paused(&self, id: usize, save: SaveFn<'_>) {
        if !self.pause_requested.load(Ordering::Acquire) {
            return;
        }
        let mut s = util::sync::lock(&self.state);
        if !s.paused {
            return;
        }
        s.parked += 1;
        self.changed.notify_all();
        while s.paused && !s.stopping {
            let todo = s
                .save
                .as_ref()
                .filter(|r| r.results.get(id).is_some_and(Option::is_none))
                .map(|r| (r.generation, r.msrs.clone()));
            if let Some((generation, msrs)) = todo {
                drop(s);
                let result = save(&msrs).map_err(|e| e.to_string());
                s = util::sync::lock(&self.state);
                if let Some(r) = s.save.as_mut().filter(|r| r.generation == generation) {
                    r.results[id] = Some(result);
                }
                self.changed.notify_all();
                continue;
            }
            s = match self.changed.wait(s) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
        s.parked -= 1;
    }

    /// Has every (parked) vCPU save its state with `msrs`; in vCPU order.
    pub fn save_vcpus(&self, msrs: Vec<u32>) -> Result<Vec<VcpuState>, PauseError> {
        let mut s = util::sync::lock(&self.state);
        let total = s.threads.len();
        if !s.paused || s.stopping || s.parked < total || total == 0 {
            return Err(PauseError::NotPaused);
        }
        s.generation += 1;
        s.save = Some(SaveRequest {
            generation: s.generation,
            msrs: Arc::new(msrs),
            results: (0..total).map(|_| None).collect(),
        });
        self.changed.notify_all();
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        loop {
            let done = s
                .save
                .as_ref()
                .is_some_and(|r| r.results.iter().all(Option::is_some));
            if done || s.stopping {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                s.save = None;
                return Err(PauseError::SaveTimeout);
            }
            s = match self.changed.wait_timeout(s, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        let results = s.save.take().map(|r| r.results).unwrap_or_default();
        if results.len() != total {
            return Err(PauseError::NotPaused);
        }
        results
            .into_iter()
            .enumerate()
            .map(|(vcpu, r)| match r {
                Some(Ok(state)) => Ok(state),
                Some(Err(msg)) => Err(PauseError::Save { vcpu, msg }),
                None => Err(PauseError::NotPaused),
            })
            .collect()
    }
}

/// Counters of vCPU exits, Firecracker's `vcpu` metric names.
#[derive(Default)]
pub struct VcpuMetrics {
    /// Port reads.
    pub exit_io_in: AtomicU64,
    /// Port writes.
    pub exit_io_out: AtomicU64,
    /// MMIO reads.
    pub exit_mmio_read: AtomicU64,
    /// MMIO writes.
    pub exit_mmio_write: AtomicU64,
    /// Exits that ended the VM with a fault.
    pub failures: AtomicU64,
}

/// A copy of [`VcpuMetrics`] for reporting.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct VcpuMetricsSnapshot {
    /// Port reads.
    pub exit_io_in: u64,
    /// Port writes.
    pub exit_io_out: u64,
    /// MMIO reads.
    pub exit_mmio_read: u64,
    /// MMIO writes.
    pub exit_mmio_write: u64,
    /// Exits that ended the VM with a fault.
    pub failures: u64,
}

impl VcpuMetrics {
    /// Counts one exit.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> VcpuMetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        VcpuMetricsSnapshot {
            exit_io_in: g(&self.exit_io_in),
            exit_io_out: g(&self.exit_io_out),
            exit_mmio_read: g(&self.exit_mmio_read),
            exit_mmio_write: g(&self.exit_mmio_write),
            failures: g(&self.failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_without_vcpus_is_refused() {
        let c = VcpuControl::default();
        assert_eq!(c.pause(), Err(PauseError::NotRunning));
    }

    #[test]
    fn pause_waits_for_every_vcpu_to_park_and_resume_releases_them() {
        crate::vcpu::install_kick_handler().unwrap();
        let c = Arc::new(VcpuControl::default());
        let runs = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (c, runs, stop) = (c.clone(), runs.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        c.park_if_paused(0, &mut |_| unreachable!("no save asked"));
                        runs.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(100));
                    }
                })
            })
            .collect();
        use std::os::unix::thread::JoinHandleExt;
        c.set_threads(threads.iter().map(|t| t.as_pthread_t()).collect());
        c.pause().unwrap();
        assert!(c.is_paused());
        let before = runs.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(runs.load(Ordering::Relaxed), before, "a paused vCPU ran");
        c.resume();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            runs.load(Ordering::Relaxed) > before,
            "resumed vCPUs did not run"
        );
        stop.store(true, Ordering::Release);
        c.stopping();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.pause(), Err(PauseError::NotRunning));
    }

    #[test]
    fn stopping_releases_parked_vcpus() {
        let c = Arc::new(VcpuControl::default());
        // Paused state set by hand: no thread to kick.
        util::sync::lock(&c.state).paused = true;
        c.pause_requested.store(true, Ordering::Release);
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.park_if_paused(0, &mut |_| unreachable!()));
        std::thread::sleep(Duration::from_millis(10));
        c.stopping();
        t.join().unwrap();
    }
}
