//! The VMM's event loop: one `event-manager` instance on the main thread, driving serial
//! input, virtio device queues and backends, and everything that ends the VM (guest
//! reset, Ctrl-A x, SIGINT/SIGTERM, vCPU exits reported through the latch).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};
use crate::exit::{ExitLatch, VmExit};

/// The event manager type Kiln uses: subscribers shared with other owners.
pub type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Signals that stop the VM when Kiln handles signals.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Watches the sources that end the VM and records the reason in the latch.
pub struct ExitSubscriber {
    latch: Arc<ExitLatch>,
    reset_evt: EventFd,
    quit_evt: EventFd,
    signals: Option<OwnedFd>,
}

impl ExitSubscriber {
    /// Watches `reset_evt` (i8042), `quit_evt` (console escape / embedder stop) and,
    /// when given, a signalfd.
    pub fn new(
        latch: Arc<ExitLatch>,
        reset_evt: EventFd,
        quit_evt: EventFd,
        signals: Option<OwnedFd>,
    ) -> Self {
        Self {
            latch,
            reset_evt,
            quit_evt,
            signals,
        }
    }
}

/// Reads one signal from a signalfd (non-blocking): its number, if one was pending.
pub fn read_signal(fd: &OwnedFd) -> Option<i32> {
    // SAFETY: signalfd_siginfo is plain data; read() fills at most its size.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: reading into a buffer of exactly `size` bytes that we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), &mut info as *mut _ as *mut _, size) };
    (n == size as isize).then_some(info.ssi_signo as i32)
}

impl MutEventSubscriber for ExitSubscriber {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            self.latch.set(VmExit::Reset);
        } else if fd == self.quit_evt.as_raw_fd() {
            let _ = self.quit_evt.read();
            self.latch.set(VmExit::Stopped);
        } else if fd == self.latch.event().as_raw_fd() {
            let _ = self.latch.event().read();
        } else if let Some(sfd) = self.signals.as_ref().filter(|s| s.as_raw_fd() == fd) {
            if let Some(sig) = read_signal(sfd) {
                log::info!("received signal {sig}, stopping the VM");
                self.latch.set(VmExit::Signal(sig));
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let mut fds = vec![
            self.reset_evt.as_raw_fd(),
            self.quit_evt.as_raw_fd(),
            self.latch.event().as_raw_fd(),
        ];
        fds.extend(self.signals.as_ref().map(|s| s.as_raw_fd()));
        for fd in fds {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                log::error!("cannot watch exit source fd {fd}: {e:?}");
            }
        }
    }
}

/// Blocks [`STOP_SIGNALS`] in the calling thread (threads spawned later inherit the
/// mask) and returns a signalfd that reads them.
pub fn block_stop_signals() -> Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local set; pthread_sigmask and signalfd are
    // called with valid pointers; the returned fd is owned by the OwnedFd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(Error::Io {
                what: "blocking SIGINT/SIGTERM",
                source: std::io::Error::from_raw_os_error(rc),
            });
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(Error::Io {
                what: "creating a signalfd",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Unblocks [`STOP_SIGNALS`] in the calling thread (undoes [`block_stop_signals`]).
pub fn unblock_stop_signals() {
    // SAFETY: as in block_stop_signals, on a local signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in STOP_SIGNALS {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
}

/// Runs the event loop until the latch holds a reason.
pub fn run_until_exit(em: &mut Manager, latch: &ExitLatch) -> Result<VmExit> {
    loop {
        if let Some(exit) = latch.get() {
            return Ok(exit);
        }
        em.run_with_timeout(1000)?;
    }
}
