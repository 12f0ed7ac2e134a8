//! A tiny HTTP/1.1 client for Firecracker's API socket: one request at a time on one
//! kept-alive connection, JSON bodies, replies framed by `Content-Length` (what Kiln's
//! and Firecracker's servers send; chunked replies are refused).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use util::time::monotonic_ns;

use super::ApiError;

/// The longest status line plus headers accepted.
pub const MAX_HEAD: usize = 16 * 1024;
/// The longest reply body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// One HTTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The body (empty for 204).
    pub body: Vec<u8>,
}

impl Reply {
    /// Firecracker's `fault_message`, or the body as text, shortened.
    pub fn fault(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("fault_message")?.as_str().map(String::from))
            .unwrap_or_else(|| text.trim().to_string());
        msg.chars().take(200).collect()
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
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Reply, usize)>, ApiError> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return match buf.len() > MAX_HEAD {
            true => Err(ApiError::Malformed("reply header too long".into())),
            false => Ok(None),
        };
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ApiError::Malformed("reply header is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line)?;
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ApiError::Malformed(format!("header line {line:?}")));
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .parse()
                .map_err(|_| ApiError::Malformed(format!("Content-Length {value:?}")))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::Malformed(format!(
                "Transfer-Encoding {value:?} (only Content-Length is supported)"
            )));
        }
    }
    if status == 204 || status == 304 || (100..200).contains(&status) {
        length = 0;
    }
    if length > MAX_BODY {
        return Err(ApiError::Malformed(format!("{length}-byte reply body")));
    }
    let start = head_end + 4;
    if buf.len() < start + length {
        return Ok(None);
    }
    let body = buf[start..start + length].to_vec();
    Ok(Some((Reply { status, body }, start + length)))
}

fn parse_status_line(line: &str) -> Result<u16, ApiError> {
    let bad = || ApiError::Malformed(format!("status line {line:?}"));
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

/// One connection to the API socket.
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

    /// Sends pre-built request bytes (see [`request_bytes`]).
    pub fn send(&mut self, request: &[u8]) -> Result<(), ApiError> {
        self.set_timeout("writing a request")?;
        self.stream
            .write_all(request)
            .map_err(|source| ApiError::Io {
                what: "writing a request",
                source,
            })
    }

    /// Reads the next reply.
    pub fn reply(&mut self) -> Result<Reply, ApiError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, used)) = parse_reply(&self.buf)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            self.set_timeout("reading a reply")?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(ApiError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(ApiError::Timeout("reading a reply"))
                }
                Err(source) => {
                    return Err(ApiError::Io {
                        what: "reading a reply",
                        source,
                    })
                }
            }
        }
    }

    /// One request and its reply.
    pub fn call(&mut self, method: &str, path: &str, body: &str) -> Result<Reply, ApiError> {
        self.send(&request_bytes(method, path, body))?;
        self.reply()
    }

    fn set_timeout(&self, what: &'static str) -> Result<(), ApiError> {
        let left = self.deadline_ns.saturating_sub(monotonic_ns());
        if left == 0 {
            return Err(ApiError::Timeout(what));
        }
        let t = Some(Duration::from_nanos(left));
        self.stream
            .set_read_timeout(t)
            .and_then(|()| self.stream.set_write_timeout(t))
            .map_err(|source| ApiError::Io { what, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_has_length_and_body() {
        let r = request_bytes("PUT", "/actions", "{\"a\":1}");
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("PUT /actions HTTP/1.1\r\n"));
        assert!(text.contains("\r\nContent-Length: 7\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"));
    }

    #[test]
    fn no_content_reply_is_complete_without_body() {
        let raw = b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\nHTTP/1.1 200";
        let (r, used) = parse_reply(raw).unwrap().unwrap();
        assert_eq!(r.status, 204);
        assert!(r.body.is_empty());
        assert_eq!(&raw[used..], b"HTTP/1.1 200");
    }

    #[test]
    fn body_waits_for_content_length() {
        let raw =
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 22\r\n\r\n{\"fault_message\":\"no\"}";
        assert_eq!(parse_reply(&raw[..raw.len() - 3]).unwrap(), None);
        let (r, used) = parse_reply(raw).unwrap().unwrap();
        assert_eq!((r.status, used), (400, raw.len()));
        assert_eq!(r.fault(), "no");
    }

    #[test]
    fn incomplete_head_is_not_an_error() {
        assert_eq!(parse_reply(b"HTTP/1.1 204 No Cont").unwrap(), None);
        assert_eq!(parse_reply(b"").unwrap(), None);
    }

    #[test]
    fn malformed_replies_are_errors() {
        for raw in [
            &b"SPDY/3 204 x\r\n\r\n"[..],
            b"HTTP/1.1 20 x\r\n\r\n",
            b"HTTP/1.1 abc x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 999999999\r\n\r\n",
        ] {
            assert!(
                parse_reply(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(parse_reply(&vec![b'a'; MAX_HEAD + 1]).is_err());
    }

    #[test]
    fn fault_falls_back_to_the_text() {
        let r = Reply {
            status: 500,
            body: b" oops \n".to_vec(),
        };
        assert_eq!(r.fault(), "oops");
    }

    #[test]
    fn client_round_trip_over_a_socket_pair() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut chunk = [0u8; 256];
            while !got.ends_with(b"{}") {
                let n = b.read(&mut chunk).unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            b.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            got
        });
        let mut c = Client::new(a, monotonic_ns() + 10_000_000_000);
        let r = c.call("PUT", "/machine-config", "{}").unwrap();
        assert_eq!(r.status, 204);
        let got = String::from_utf8(server.join().unwrap()).unwrap();
        assert!(got.starts_with("PUT /machine-config "));
        assert!(matches!(c.reply(), Err(ApiError::Closed)));
    }
}
