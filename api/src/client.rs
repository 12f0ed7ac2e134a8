//! A tiny HTTP/1.1 client for Firecracker's API socket (Kiln's or Firecracker's): one
//! request at a time on one kept-alive connection, JSON bodies, replies framed by
//! `Content-Length` (what both servers send; chunked replies are refused). Shared by
//! `kiln bench --api`, the test harness and the integration tests.
//!
//! ```no_run
//! use std::time::Duration;
//! use api::client::Client;
//!
//! let mut c = Client::connect("/tmp/fc.sock", Duration::from_secs(5))?;
//! let (status, body) = c.call_json("GET", "/", "")?;
//! c.call("PATCH", "/vm", r#"{"state":"Paused"}"#)?.expect(204, "PATCH /vm")?;
//! # Ok::<(), api::client::ClientError>(())
//! ```

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use util::time::monotonic_ns;

/// The longest status line plus headers accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// The longest reply body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// The longest fault message kept from a reply.
pub const MAX_FAULT: usize = 200;

/// Why a request got no (acceptable) reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting to the socket failed.
    #[error("connecting to the API socket {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The client's deadline passed.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// A socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The server closed the connection before replying.
    #[error("the VMM closed the API connection before replying")]
    Closed,
    /// The reply was not HTTP/1.1 as expected.
    #[error("malformed API reply: {0}")]
    Malformed(String),
    /// The reply had another status than the caller wanted.
    #[error("{what} answered {status}: {fault}")]
    Status {
        /// The request.
        what: String,
        /// The status code.
        status: u16,
        /// Firecracker's `fault_message`, or the body.
        fault: String,
    },
}

/// One HTTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body (empty for 204).
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Firecracker's `fault_message`, or the body as text, shortened to [`MAX_FAULT`]
    /// characters.
    pub fn fault(&self) -> String {
        let text = self.text();
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("fault_message")?.as_str().map(String::from))
            .unwrap_or_else(|| text.trim().to_string());
        msg.chars().take(MAX_FAULT).collect()
    }

    /// The reply itself when its status is `want`, else [`ClientError::Status`] naming
    /// the request `what` (e.g. `"PUT /snapshot/create"`) and the fault.
    pub fn expect(self, want: u16, what: impl Into<String>) -> Result<Reply, ClientError> {
        match self.status == want {
            true => Ok(self),
            false => Err(ClientError::Status {
                what: what.into(),
                status: self.status,
                fault: self.fault(),
            }),
        }
    }
}

/// The bytes of a request with a JSON body.
pub fn request_bytes(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Parses one reply from the start of `buf`: `Ok(None)` while it is incomplete, else the
/// reply and how many bytes it took.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ClientError> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return match buf.len() > MAX_HEAD {
            true => Err(ClientError::Malformed("reply header too long".into())),
            false => Ok(None),
        };
    };
    if head_end > MAX_HEAD {
        return Err(ClientError::Malformed("reply header too long".into()));
    }
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ClientError::Malformed("reply header is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line)?;
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ClientError::Malformed(format!("header line {line:?}")));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .map_err(|_| ClientError::Malformed(format!("Content-Length {value:?}")))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ClientError::Malformed(format!(
                "Transfer-Encoding {value:?} (only Content-Length is supported)"
            )));
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        length = 0;
    }
    if length > MAX_BODY {
        return Err(ClientError::Malformed(format!("{length}-byte reply body")));
    }
    let start = head_end + 4;
    if buf.len() < start + length {
        return Ok(None);
    }
    let body = buf[start..start + length].to_vec();
    Ok(Some((Reply { status, body }, start + length)))
}

fn parse_status_line(line: &str) -> Result<u16, ClientError> {
    let bad = || ClientError::Malformed(format!("status line {line:?}"));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad());
    }
    let code = parts.next().ok_or_else(bad)?;
    match code.len() == 3 {
        true => code.parse().map_err(|_| bad()),
        false => Err(bad()),
    }
}

/// One connection to the API socket; every operation ends by one deadline.
pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    deadline_ns: u64,
}

impl Client {
    /// Talks over `stream` until `deadline_ns` (`CLOCK_MONOTONIC`).
    pub fn new(stream: UnixStream, deadline_ns: u64) -> Self {
        Client {
            stream,
            buf: Vec::new(),
            deadline_ns,
        }
    }

    /// Connects to the socket at `path`; requests on it must be answered within
    /// `timeout` from now (see [`Client::set_timeout`]).
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Client::new(stream, deadline_after(timeout)))
    }

    /// Moves the deadline to `timeout` from now.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.deadline_ns = deadline_after(timeout);
    }

    /// Sends pre-built request bytes (see [`request_bytes`]).
    pub fn send(&mut self, request: &[u8]) -> Result<(), ClientError> {
        self.arm("writing a request")?;
        self.stream
            .write_all(request)
            .map_err(|source| match timed_out(&source) {
                true => ClientError::Timeout("writing a request"),
                false => ClientError::Io {
                    what: "writing a request",
                    source,
                },
            })
    }

    /// Reads the next reply.
    pub fn reply(&mut self) -> Result<Reply, ClientError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            self.arm("reading a reply")?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ClientError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if timed_out(&e) => return Err(ClientError::Timeout("reading a reply")),
                Err(source) => {
                    return Err(ClientError::Io {
                        what: "reading a reply",
                        source,
                    })
                }
            }
        }
    }

    /// One request and its reply.
    pub fn call(&mut self, method: &str, path: &str, body: &str) -> Result<Reply, ClientError> {
        self.send(&request_bytes(method, path, body))?;
        self.reply()
    }

    /// One request: the reply's status and its body as text.
    pub fn call_json(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<(u16, String), ClientError> {
        let r = self.call(method, path, body)?;
        Ok((r.status, r.text()))
    }

    /// Sets the socket's timeouts to what is left before the deadline.
    fn arm(&self, what: &'static str) -> Result<(), ClientError> {
        let left = self.deadline_ns.saturating_sub(monotonic_ns());
        if left == 0 {
            return Err(ClientError::Timeout(what));
        }
        let t = Some(Duration::from_nanos(left));
        self.stream
            .set_read_timeout(t)
            .and_then(|()| self.stream.set_write_timeout(t))
            .map_err(|source| ClientError::Io { what, source })
    }
}

fn deadline_after(timeout: Duration) -> u64 {
    let ns = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
    monotonic_ns().saturating_add(ns)
}

/// The errors a socket timeout shows up as.
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests;
