//! The server: the listening socket and a single non-blocking epoll loop over at most
//! [`MAX_CONNECTIONS`] connections.

use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::ptr;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::conn::{Conn, Done, Limits};
use super::socket::SocketFile;
use super::{
    HttpError, Request, Response, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_PAYLOAD, MAX_CONNECTIONS,
};

/// Epoll token of the listening socket.
const LISTENER: u64 = 0;
/// Epoll token of the stop event.
const STOP: u64 = 1;
/// Epoll tokens of connections: `generation << 32 | (FIRST_CONN + slot)`.
const FIRST_CONN: u64 = 2;
/// Most connections accepted per wake-up, so a connect flood cannot starve the others.
const MAX_ACCEPTS_PER_WAKE: usize = 16;
/// How long accepting pauses when `accept4` fails for want of resources (EMFILE...):
/// the listener stays readable, and polling it meanwhile would spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// An HTTP/1.1 server on a Unix socket.
///
/// Connections: at most [`MAX_CONNECTIONS`] are served. When all slots are taken, a new
/// connection replaces the idle keep-alive connection (one that was answered and has
/// nothing pending since) that has been quiet longest; when none is idle, new
/// connections wait in the listen backlog (the listener is not polled) until a slot
/// frees. A connection that makes no progress for the idle timeout (default 10 s) while
/// it holds part of a request, output its client does not read, or has not sent its
/// first request yet, is closed. Each connection's buffers are bounded: input by the
/// largest request (8 KiB of headers plus the payload limit), output by no longer
/// answering (nor reading) once 64 KiB wait to be sent. A connection closed after a
/// response (`Connection: close`, a refused request) first shuts its write side down and
/// discards what the client still sends, for 2 s at most, so the client reads the
/// response and EOF rather than a reset. A client that leaves mid-request or
/// mid-response is dropped with a debug-level log line at most.
///
/// The socket file is removed when the server is dropped (unless [`spawn`](super::spawn)
/// took it over: then the [`ApiThread`](super::ApiThread) removes it).
#[derive(Debug)]
pub struct Server {
    epoll: Epoll,
    listener: UnixListener,
    socket: SocketFile,
    remove_on_drop: bool,
    limits: Limits,
}

impl Server {
    /// Binds a listening socket at `path` (close-on-exec, non-blocking). A socket file
    /// already there (left by an earlier run) is replaced, as Firecracker does; anything
    /// else there is refused ([`HttpError::NotASocket`]).
    pub fn bind(path: &Path) -> Result<Server, HttpError> {
        let epoll = Epoll::new().map_err(|source| HttpError::Io {
            what: "creating the epoll instance",
            source,
        })?;
        let (listener, socket) = SocketFile::bind(path)?;
        // From here on, dropping `server` removes the socket file.
        let server = Server {
            epoll,
            listener,
            socket,
            remove_on_drop: true,
            limits: Limits {
                max_payload: DEFAULT_MAX_PAYLOAD,
                idle_timeout: DEFAULT_IDLE_TIMEOUT,
            },
        };
        let ev = EpollEvent::new(EventSet::IN, LISTENER);
        server
            .epoll
            .ctl(ControlOperation::Add, server.listener.as_raw_fd(), ev)
            .map_err(|source| HttpError::Io {
                what: "adding the API socket to epoll",
                source,
            })?;
        Ok(server)
    }

    /// Sets how long a connection may hold a partial request, or unread output, before
    /// it is closed (default [`DEFAULT_IDLE_TIMEOUT`], 10 s).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Server {
        self.limits.idle_timeout = timeout;
        self
    }

    /// Sets the largest request body accepted, in bytes (default
    /// [`DEFAULT_MAX_PAYLOAD`], Firecracker's 51200; `--http-api-max-payload-size`).
    pub fn with_max_payload(mut self, bytes: usize) -> Server {
        self.limits.max_payload = bytes;
        self
    }

    /// The path of the socket file.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// Removes the socket file now, if it is still the one bound here (for exit paths
    /// that skip destructors). Idempotent.
    pub fn remove_socket(&self) -> io::Result<()> {
        self.socket.remove().map(|_| ())
    }

    /// Hands the removal of the socket file over to the caller (the API thread's owner).
    pub(crate) fn take_socket(&mut self) -> SocketFile {
        self.remove_on_drop = false;
        self.socket.clone()
    }

    /// Serves connections until `stop` is readable, calling `handler` for each request
    /// in the order of arrival. Errors only when epoll itself fails.
    pub fn run(
        self,
        handler: &mut dyn FnMut(Request) -> Response,
        stop: &EventFd,
    ) -> Result<(), HttpError> {
        let ev = EpollEvent::new(EventSet::IN, STOP);
        self.epoll
            .ctl(ControlOperation::Add, stop.as_raw_fd(), ev)
            .map_err(|source| HttpError::Io {
                what: "adding the stop event to epoll",
                source,
            })?;
        let mut lp = Loop {
            server: &self,
            slots: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            generation: 0,
            accept_paused_until: None,
            warned_accept: false,
            listener_polled: true,
        };
        let mut events = vec![EpollEvent::default(); MAX_CONNECTIONS + 2];
        loop {
            let timeout = lp.timeout_ms(Instant::now());
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(HttpError::Io {
                        what: "waiting for events (epoll_wait)",
                        source,
                    })
                }
            };
            let now = Instant::now();
            for ev in &events[..n] {
                match ev.data() {
                    STOP => return Ok(()),
                    LISTENER => lp.accept(now),
                    token => lp.serve(token, ev.event_set(), handler, now),
                }
            }
            lp.expire(now);
            lp.update_listener();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.remove_on_drop {
            self.socket.remove_logged();
        }
    }
}

/// The run loop's state.
struct Loop<'a> {
    server: &'a Server,
    slots: Vec<Option<Conn>>,
    generation: u32,
    accept_paused_until: Option<Instant>,
    warned_accept: bool,
    /// Whether the listener is registered for readiness (not while accepting pauses
    /// after a failure, nor while no slot can be had).
    listener_polled: bool,
}

fn token(slot: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | (FIRST_CONN + slot as u64)
}

impl Loop<'_> {
    fn limits(&self) -> &Limits {
        &self.server.limits
    }

    /// The epoll timeout until the next connection deadline or accept resumption.
    fn timeout_ms(&self, now: Instant) -> i32 {
        let next = self
            .slots
            .iter()
            .flatten()
            .filter_map(|c| c.deadline(self.limits()))
            .chain(self.accept_paused_until)
            .min();
        match next {
            None => -1,
            Some(t) => {
                let ms = t
                    .saturating_duration_since(now)
                    .as_nanos()
                    .div_ceil(1_000_000);
                i32::try_from(ms).unwrap_or(i32::MAX)
            }
        }
    }

    fn accept(&mut self, now: Instant) {
        let fd = self.server.listener.as_raw_fd();
        for _ in 0..MAX_ACCEPTS_PER_WAKE {
            if self.accept_paused_until.is_some() || !self.can_admit() {
                return;
            }
            // SAFETY: accept4 on our listening socket; null address pointers are allowed
            // (the peer's address is not wanted). The result is checked below.
            let rc = unsafe {
                libc::accept4(
                    fd,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => continue,
                    Some(libc::EAGAIN) => return,
                    _ => {
                        self.pause_accepting(now, &e);
                        return;
                    }
                }
            }
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            let stream = unsafe { UnixStream::from_raw_fd(rc) };
            self.admit(stream, now);
        }
    }

    /// Stops accepting for a moment after an accept failure (EMFILE...).
    fn pause_accepting(&mut self, now: Instant, e: &io::Error) {
        if self.warned_accept {
            log::debug!("cannot accept an API connection: {e}");
        } else {
            log::warn!("cannot accept an API connection: {e} (further failures at debug level)");
            self.warned_accept = true;
        }
        self.accept_paused_until = Some(now + ACCEPT_PAUSE);
    }

    /// Whether a new connection can have a slot (a free one or an idle one's).
    fn can_admit(&self) -> bool {
        self.slots
            .iter()
            .any(|c| c.as_ref().is_none_or(Conn::is_idle))
    }

    /// Polls the listener only while a connection can be accepted: otherwise new
    /// connections wait in the backlog.
    fn update_listener(&mut self) {
        let want = self.accept_paused_until.is_none() && self.can_admit();
        if want == self.listener_polled {
            return;
        }
        let events = if want {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        let listener = self.server.listener.as_raw_fd();
        let ev = EpollEvent::new(events, LISTENER);
        match self
            .server
            .epoll
            .ctl(ControlOperation::Modify, listener, ev)
        {
            Ok(()) => self.listener_polled = want,
            Err(e) => log::debug!("cannot update the API listener in epoll: {e}"),
        }
    }

    /// Gives a new connection a slot: a free one, else the longest-idle keep-alive
    /// connection's (closing it); with neither (the caller checked), drops it.
    fn admit(&mut self, stream: UnixStream, now: Instant) {
        let slot = self.slots.iter().position(Option::is_none).or_else(|| {
            let i = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, c)| c.as_ref().filter(|c| c.is_idle()).map(|c| (i, c)))
                .min_by_key(|(_, c)| c.last_active())
                .map(|(i, _)| i)?;
            log::debug!("closing an idle API connection to make room for a new one");
            self.slots[i] = None;
            Some(i)
        });
        let Some(i) = slot else {
            return;
        };
        self.generation = self.generation.wrapping_add(1);
        let conn = Conn::new(stream, self.generation, now);
        let ev = EpollEvent::new(conn.registered, token(i, self.generation));
        match self.server.epoll.ctl(ControlOperation::Add, conn.fd(), ev) {
            Ok(()) => self.slots[i] = Some(conn),
            Err(e) => log::debug!("cannot add an API connection to epoll: {e}"),
        }
    }

    /// Handles readiness of the connection behind `token`.
    fn serve(
        &mut self,
        token: u64,
        events: EventSet,
        handler: &mut dyn FnMut(Request) -> Response,
        now: Instant,
    ) {
        let generation = (token >> 32) as u32;
        let Some(i) = (token & 0xffff_ffff)
            .checked_sub(FIRST_CONN)
            .and_then(|i| usize::try_from(i).ok())
        else {
            return;
        };
        let limits = *self.limits();
        let epoll = &self.server.epoll;
        let Some(slot) = self.slots.get_mut(i) else {
            return;
        };
        // An event for a connection closed earlier in this batch (its slot maybe reused).
        let Some(conn) = slot.as_mut().filter(|c| c.generation == generation) else {
            return;
        };
        let readable = events.intersects(
            EventSet::IN | EventSet::HANG_UP | EventSet::ERROR | EventSet::READ_HANG_UP,
        );
        match conn.on_ready(readable, &limits, handler, now) {
            Ok(()) => {
                let want = conn.interest(&limits);
                if want != conn.registered {
                    let ev = EpollEvent::new(want, token);
                    match epoll.ctl(ControlOperation::Modify, conn.fd(), ev) {
                        Ok(()) => conn.registered = want,
                        Err(e) => {
                            log::debug!("cannot update an API connection in epoll: {e}");
                            *slot = None;
                        }
                    }
                }
            }
            Err(Done) => *slot = None,
        }
    }

    /// Closes connections past their deadline; ends a pause in accepting.
    fn expire(&mut self, now: Instant) {
        let limits = *self.limits();
        for slot in &mut self.slots {
            let Some(conn) = slot else { continue };
            if conn.deadline(&limits).is_some_and(|d| d <= now) {
                log::debug!(
                    "closing an API connection idle for {:?}",
                    limits.idle_timeout
                );
                if conn.has_partial_request() {
                    let msg = format!("request not completed within {:?}", limits.idle_timeout);
                    Conn::send_final(conn.stream(), &Response::fault(408, msg));
                }
                *slot = None;
            }
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept_paused_until = None;
        }
    }
}
