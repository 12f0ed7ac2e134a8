//! One client connection: its bounded input and output buffers, reading, answering the
//! complete requests in order, and writing without blocking.

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::parse::parse_with_continue;
use super::{Parsed, Request, Response, MAX_HEADER_BYTES};

/// Most bytes read from a connection per readiness event (fairness between clients).
const READ_CHUNK: usize = 16 * 1024;
/// Requests are answered only while less than this much output waits to be sent; a
/// client that does not read its answers is not read from either.
pub(crate) const OUTPUT_HIGH: usize = 64 * 1024;
/// Room in the input buffer beyond the largest possible request.
const INPUT_SLACK: usize = 1024;
/// Buffers larger than this are given back once empty.
const KEEP_CAPACITY: usize = 16 * 1024;
/// Longest a closing connection is drained (see [`Conn::start_linger`]).
const MAX_LINGER: Duration = Duration::from_secs(2);
/// Most reads per readiness event while draining.
const DRAIN_READS: usize = 16;

/// The server's limits, as a connection sees them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_payload: usize,
    pub idle_timeout: Duration,
}

impl Limits {
    /// The input buffer's bound: the largest request (head and body) and some slack.
    fn input_cap(&self) -> usize {
        MAX_HEADER_BYTES
            .saturating_add(self.max_payload)
            .saturating_add(INPUT_SLACK)
    }
}

/// The connection is finished: drop it (which closes the socket).
#[derive(Debug)]
pub(crate) struct Done;

pub(crate) struct Conn {
    stream: UnixStream,
    /// Bytes received and not yet consumed by a request.
    input: Vec<u8>,
    /// `input.len()` when it last parsed as incomplete: no new parse until it changes.
    parsed_incomplete_at: Option<usize>,
    /// Bytes to send; `output[..sent]` went out already.
    output: Vec<u8>,
    sent: usize,
    /// Last time bytes moved either way.
    last_active: Instant,
    /// The client shut its side down: answer what is complete, then close.
    eof: bool,
    /// No more requests: close once the output is sent.
    closing: bool,
    /// A `100 Continue` went out for the request being received.
    sent_continue: bool,
    /// At least one request was answered.
    answered: bool,
    /// Closing: our side is shut down and input is discarded until the client closes
    /// or this instant passes.
    linger_until: Option<Instant>,
    /// The interest set registered with epoll.
    pub(crate) registered: EventSet,
    /// Generation, so a stale epoll event for a reused slot is recognized.
    pub(crate) generation: u32,
}

impl Conn {
    pub(crate) fn new(stream: UnixStream, generation: u32, now: Instant) -> Conn {
        Conn {
            stream,
            input: Vec::new(),
            parsed_incomplete_at: None,
            output: Vec::new(),
            sent: 0,
            last_active: now,
            eof: false,
            closing: false,
            sent_continue: false,
            answered: false,
            linger_until: None,
            registered: EventSet::IN,
            generation,
        }
    }

    pub(crate) fn fd(&self) -> i32 {
        self.stream.as_raw_fd()
    }

    fn pending_output(&self) -> usize {
        self.output.len() - self.sent
    }

    /// Whether the connection was answered and is between requests with nothing to
    /// send: an idle keep-alive connection, which may be given up for a new one.
    pub(crate) fn is_idle(&self) -> bool {
        self.answered
            && self.input.is_empty()
            && self.pending_output() == 0
            && !self.closing
            && !self.eof
    }

    pub(crate) fn last_active(&self) -> Instant {
        self.last_active
    }

    /// When the connection is closed for want of progress: it holds part of a request,
    /// output the client does not read, or has not sent a first request. `None` for an
    /// idle keep-alive connection.
    pub(crate) fn deadline(&self, lim: &Limits) -> Option<Instant> {
        if self.linger_until.is_some() {
            return self.linger_until;
        }
        (!self.answered || !self.input.is_empty() || self.pending_output() > 0)
            .then(|| self.last_active + lim.idle_timeout)
    }

    /// Whether a partial request is what it waits on (not unread output).
    pub(crate) fn has_partial_request(&self) -> bool {
        !self.input.is_empty() && self.pending_output() == 0 && !self.closing
    }

    fn wants_read(&self, lim: &Limits) -> bool {
        !self.eof
            && !self.closing
            && self.input.len() < lim.input_cap()
            && self.pending_output() < OUTPUT_HIGH
    }

    /// The epoll interest the connection needs now.
    pub(crate) fn interest(&self, lim: &Limits) -> EventSet {
        let mut set = EventSet::empty();
        if self.wants_read(lim) || self.linger_until.is_some() {
            set |= EventSet::IN;
        }
        if self.pending_output() > 0 {
            set |= EventSet::OUT;
        }
        set
    }

    /// Handles readiness: sends what waits, reads, answers every complete request,
    /// sends. `Err(Done)` when the connection is to be closed.
    pub(crate) fn on_ready(
        &mut self,
        readable: bool,
        lim: &Limits,
        handler: &mut dyn FnMut(Request) -> Response,
        now: Instant,
    ) -> Result<(), Done> {
        if self.linger_until.is_some() {
            return if readable { self.drain() } else { Ok(()) };
        }
        self.flush(now)?;
        if readable && self.wants_read(lim) {
            self.fill(lim, now)?;
        }
        self.answer(lim, handler);
        self.flush(now)?;
        if self.pending_output() == 0 {
            if self.eof {
                return Err(Done);
            }
            if self.closing {
                self.start_linger(lim, now)?;
            }
        }
        Ok(())
    }

    /// Everything is sent and no more requests will be read: shuts our side down (the
    /// client reads EOF after the last response) and discards what the client still
    /// sends (a refused body, say) until it closes, for a short while at most. Closing
    /// with unread input instead would make the client's read after the response fail
    /// with ECONNRESET instead of reading EOF, and its writes fail with EPIPE.
    fn start_linger(&mut self, lim: &Limits, now: Instant) -> Result<(), Done> {
        if let Err(e) = self.stream.shutdown(Shutdown::Write) {
            log::debug!("API connection shutdown failed: {e}");
            return Err(Done);
        }
        self.linger_until = Some(now + lim.idle_timeout.min(MAX_LINGER));
        Ok(())
    }

    /// Reads and discards input while lingering; `Err(Done)` at EOF.
    fn drain(&mut self) -> Result<(), Done> {
        let mut scratch = [0u8; 4096];
        for _ in 0..DRAIN_READS {
            match (&self.stream).read(&mut scratch) {
                Ok(0) => return Err(Done),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(Done),
            }
        }
        Ok(())
    }

    /// One read into the input buffer, within its bound.
    fn fill(&mut self, lim: &Limits, now: Instant) -> Result<(), Done> {
        let old = self.input.len();
        let room = lim.input_cap().saturating_sub(old).min(READ_CHUNK);
        if room == 0 {
            // A read into no room would look like EOF.
            return Ok(());
        }
        self.input.resize(old + room, 0);
        let result = (&self.stream).read(&mut self.input[old..]);
        let got = match result {
            Ok(0) => {
                self.eof = true;
                0
            }
            Ok(n) => {
                self.last_active = now;
                n
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(e) => {
                log::debug!("API connection read failed: {e}");
                return Err(Done);
            }
        };
        self.input.truncate(old + got);
        Ok(())
    }

    /// Answers the complete requests at the head of the input, in order, while the
    /// output stays under its bound.
    fn answer(&mut self, lim: &Limits, handler: &mut dyn FnMut(Request) -> Response) {
        if self.sent > 0 {
            self.output.drain(..self.sent);
            self.sent = 0;
        }
        let mut used = 0;
        while !self.closing && self.output.len() < OUTPUT_HIGH && used < self.input.len() {
            let rest = &self.input[used..];
            if self.parsed_incomplete_at == Some(rest.len()) {
                break;
            }
            match parse_with_continue(rest, lim.max_payload) {
                (Parsed::Incomplete, expect_continue) => {
                    if expect_continue && !self.sent_continue {
                        self.output
                            .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        self.sent_continue = true;
                    }
                    if rest.len() >= lim.input_cap() {
                        // Cannot happen: a request fits the buffer. Refuse rather than stall.
                        let r = Response::fault(400, "request too large");
                        r.write_to(&mut self.output, true);
                        self.closing = true;
                    }
                    self.parsed_incomplete_at = Some(rest.len());
                    break;
                }
                (
                    Parsed::Complete {
                        request,
                        consumed,
                        close,
                    },
                    _,
                ) => {
                    used += consumed;
                    self.sent_continue = false;
                    self.parsed_incomplete_at = None;
                    self.answered = true;
                    handler(request).write_to(&mut self.output, close);
                    self.closing = close;
                }
                (Parsed::Invalid(response), _) => {
                    log::debug!("refused an API request: {:?}", response.status);
                    response.write_to(&mut self.output, true);
                    self.closing = true;
                }
            }
        }
        if self.closing {
            self.input = Vec::new();
            self.parsed_incomplete_at = None;
        } else if used > 0 {
            // parsed_incomplete_at, if set, was set for `input[used..]`: still right.
            self.input.drain(..used);
            if self.input.is_empty() && self.input.capacity() > KEEP_CAPACITY {
                self.input = Vec::new();
            }
        }
    }

    /// Sends pending output until done or the socket is full.
    fn flush(&mut self, now: Instant) -> Result<(), Done> {
        while self.sent < self.output.len() {
            let rest = &self.output[self.sent..];
            // SAFETY: `rest` is a live, initialized slice of `rest.len()` bytes and the
            // fd is our connected socket; MSG_NOSIGNAL turns a closed peer into EPIPE
            // instead of SIGPIPE, and the socket is non-blocking.
            let rc = unsafe {
                libc::send(
                    self.fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if rc >= 0 {
                // rc <= rest.len() (send never reports more than it was given).
                self.sent += rc as usize;
                self.last_active = now;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(()),
                _ => {
                    log::debug!("API connection write failed: {e}");
                    return Err(Done);
                }
            }
        }
        self.output.clear();
        self.sent = 0;
        if self.output.capacity() > KEEP_CAPACITY {
            self.output = Vec::new();
        }
        Ok(())
    }

    /// A last word before closing a connection (a timeout, a refusal): one
    /// non-blocking send, whatever becomes of it.
    pub(crate) fn send_final(stream: &UnixStream, response: &Response) {
        let mut out = Vec::new();
        response.write_to(&mut out, true);
        // SAFETY: `out` is a live buffer of `out.len()` bytes and the fd is a connected,
        // non-blocking socket; MSG_NOSIGNAL keeps a closed peer from raising SIGPIPE.
        let _ = unsafe {
            libc::send(
                stream.as_raw_fd(),
                out.as_ptr().cast(),
                out.len(),
                libc::MSG_NOSIGNAL,
            )
        };
    }

    pub(crate) fn stream(&self) -> &UnixStream {
        &self.stream
    }
}
