//! The API thread, `kiln-api`: a set-up step (the seccomp filter goes there), then the
//! server's loop until stopped.
//!
//! System calls the thread makes after `setup` (seen with strace over every path: keep-
//! alive, pipelining, 100-continue, refusals, timeouts, more than 64 clients, stop):
//! `epoll_wait` (`epoll_pwait` on some libcs), `epoll_ctl`, `accept4`, `recvfrom`,
//! `sendto`, `shutdown`, `close`, `futex` (reporting set-up, the stop), memory
//! management by malloc (`mmap`, `munmap`, `mremap`, `mprotect`, `madvise`, `brk`),
//! `clock_gettime` (when the vDSO is not used), and at thread exit `sigaltstack`,
//! `rt_sigprocmask`, `munmap`, `madvise`, `exit`; plus `write` for log lines and
//! whatever the handler does. The socket file is removed by the [`ApiThread`]'s owner,
//! not on this thread (no `unlink` or `statx` here).

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};

use vmm_sys_util::eventfd::EventFd;

use super::socket::SocketFile;
use super::{Request, Response, Server};

/// The name of the API thread.
pub const THREAD_NAME: &str = "kiln-api";

/// A running API thread. [`ApiThread::stop`], or dropping it, stops the server and
/// waits for the thread (a request being handled is finished first); the thread removes
/// the socket file as it ends (or the owner does, if the thread could not).
#[derive(Debug)]
pub struct ApiThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
    socket: SocketFile,
    /// Set by the thread once it removed the socket file itself.
    removed: Arc<AtomicBool>,
}

/// Starts `server` on a new thread named `kiln-api`. The thread first runs `setup`
/// (e.g. installs its seccomp filter) and reports the result: an error from `setup`
/// is returned here, after the thread has ended and the socket file is removed. Then it
/// calls `handler` for each request until stopped.
pub fn spawn(
    mut server: Server,
    mut handler: Box<dyn FnMut(Request) -> Response + Send>,
    setup: Box<dyn FnOnce() -> io::Result<()> + Send>,
) -> io::Result<ApiThread> {
    let stop = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    let thread_stop = stop.try_clone()?;
    let socket = server.take_socket();
    let thread_socket = socket.clone();
    let removed = Arc::new(AtomicBool::new(false));
    let thread_removed = removed.clone();
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let spawned = thread::Builder::new()
        .name(THREAD_NAME.to_string())
        .spawn(move || {
            let ready = setup();
            let proceed = ready.is_ok();
            // The receiver waits for this message; it cannot be gone.
            let _ = ready_tx.send(ready);
            if proceed {
                if let Err(e) = server.run(&mut *handler, &thread_stop) {
                    log::error!("{e}");
                }
                // Removed here, under this thread's own seccomp filter: the owner may
                // be confined more tightly by the time it stops the server.
                thread_socket.remove_logged();
                thread_removed.store(true, Ordering::Release);
            }
        });
    let handle = match spawned {
        Ok(handle) => handle,
        Err(e) => {
            socket.remove_logged();
            return Err(e);
        }
    };
    let api = ApiThread {
        stop,
        handle: Some(handle),
        socket,
        removed,
    };
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(api),
        // Dropping `api` joins the thread (which has returned) and removes the socket.
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::other("the API thread panicked in its set-up")),
    }
}

impl ApiThread {
    /// Stops the server and waits for the thread; removes the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// The path of the socket file.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Removes the socket file now, if it is still the one the server bound (for exit
    /// paths that skip destructors, e.g. `std::process::exit` from another thread).
    /// Idempotent.
    pub fn remove_socket(&self) -> io::Result<()> {
        self.socket.remove().map(|_| ())
    }

    /// Whether the thread has ended (it does so by itself only if epoll fails, which
    /// it logs, or if the handler panics).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    fn shutdown(&mut self) {
        if let Some(handle) = self.handle.take() {
            match self.stop.write(1) {
                Ok(()) => {
                    if handle.join().is_err() {
                        log::error!("the API thread panicked");
                    }
                }
                // Not joining: the thread would not see the stop. (An eventfd write of 1
                // fails only if the counter is near its maximum, which nothing does.)
                Err(e) => log::warn!("cannot stop the API thread: {e}"),
            }
        }
        if !self.removed.load(Ordering::Acquire) {
            self.socket.remove_logged();
        }
    }
}

impl Drop for ApiThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}
