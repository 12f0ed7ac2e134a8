//! The request parser: pure (bytes in, a verdict out), so the server, the unit tests and
//! the fuzz target share it. The request line and headers go through `httparse`; the
//! body is framed by `Content-Length` alone (no chunked encoding, as in Firecracker).

use httparse::Status;

use super::{Response, MAX_HEADERS, MAX_HEADER_BYTES};

/// A request method. Firecracker's API uses GET, PUT and PATCH; anything else is kept by
/// name so the router can answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// Any other method, as sent (methods are case-sensitive).
    Other(String),
}

impl Method {
    fn from_token(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            other => Method::Other(other.to_string()),
        }
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The path, starting with `/`, without the query string (an absolute-form target,
    /// `http://host/path`, is reduced to its path).
    pub path: String,
    /// What followed the first `?` of the target, if there was one (possibly empty).
    pub query: Option<String>,
    /// The body: exactly `Content-Length` bytes (empty without the header).
    pub body: Vec<u8>,
}

/// What [`parse`] made of the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet: read more.
    Incomplete,
    /// A whole request, taking the first `consumed` bytes of the buffer (what follows
    /// is the next, pipelined request). `close`: the client asked to close the
    /// connection after the response (`Connection: close`, or HTTP/1.0 without
    /// `Connection: keep-alive`).
    Complete {
        /// The request.
        request: Request,
        /// How many bytes of the buffer it took.
        consumed: usize,
        /// Whether to close the connection after answering it.
        close: bool,
    },
    /// Not a request that will be served: send this response (a 400 with a fault
    /// message naming the problem), then close the connection.
    Invalid(Response),
}

/// What the request line and header section say.
struct Head {
    method: Method,
    path: String,
    query: Option<String>,
    /// Length of the request line and headers, with the empty line ending them.
    len: usize,
    content_length: usize,
    close: bool,
    expect_continue: bool,
}

/// Parses the request at the start of `buf`; a body longer than `max_payload` bytes is
/// refused (with Firecracker's message) as soon as the headers announce it.
pub fn parse(buf: &[u8], max_payload: usize) -> Parsed {
    parse_with_continue(buf, max_payload).0
}

/// [`parse`], and whether the request's head is complete and asks for
/// `100 Continue` (`Expect: 100-continue` in an HTTP/1.1 request).
pub(crate) fn parse_with_continue(buf: &[u8], max_payload: usize) -> (Parsed, bool) {
    let head = match parse_head(buf, max_payload) {
        Ok(Some(head)) => head,
        Ok(None) => return (Parsed::Incomplete, false),
        Err(msg) => return (Parsed::Invalid(Response::fault(400, msg)), false),
    };
    // The head is at most MAX_HEADER_BYTES and the body at most max_payload: no overflow
    // on any real buffer, but a checked sum costs nothing.
    let Some(end) = head.len.checked_add(head.content_length) else {
        return (
            Parsed::Invalid(Response::fault(400, "request too large")),
            false,
        );
    };
    if buf.len() < end {
        return (Parsed::Incomplete, head.expect_continue);
    }
    let request = Request {
        method: head.method,
        path: head.path,
        query: head.query,
        body: buf[head.len..end].to_vec(),
    };
    let parsed = Parsed::Complete {
        request,
        consumed: end,
        close: head.close,
    };
    (parsed, false)
}

/// The request line and headers: `Ok(None)` while incomplete, `Err(fault message)` when
/// the request is refused.
fn parse_head(buf: &[u8], max_payload: usize) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(Status::Complete(len)) => len,
        // A head that would end past the limit is refused without waiting for the rest.
        Ok(Status::Partial) if buf.len() >= MAX_HEADER_BYTES => return Err(head_too_large()),
        Ok(Status::Partial) => return Ok(None),
        Err(e) => return Err(describe(e)),
    };
    if len > MAX_HEADER_BYTES {
        return Err(head_too_large());
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err("malformed request line".to_string());
    };
    let http11 = match version {
        0 => false,
        1 => true,
        v => return Err(format!("unsupported HTTP version 1.{v}: use HTTP/1.1")),
    };
    let (path, query) = split_target(target)?;

    let mut content_length = None;
    let (mut conn_close, mut conn_keep_alive, mut expect_continue) = (false, false, false);
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err("more than one Content-Length header".to_string());
            }
            content_length = Some(content_length_value(h.value, max_payload)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(
                "Transfer-Encoding is not supported: send the body with a Content-Length header"
                    .to_string(),
            );
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                conn_close |= token.eq_ignore_ascii_case(b"close");
                conn_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    Ok(Some(Head {
        method: Method::from_token(method),
        path,
        query,
        len,
        content_length: content_length.unwrap_or(0),
        close: conn_close || (!http11 && !conn_keep_alive),
        expect_continue: http11 && expect_continue,
    }))
}

fn head_too_large() -> String {
    format!("request line and headers larger than {MAX_HEADER_BYTES} bytes")
}

/// A fault message for an `httparse` error.
fn describe(e: httparse::Error) -> String {
    let what = match e {
        httparse::Error::TooManyHeaders => {
            return format!("too many headers (at most {MAX_HEADERS})");
        }
        httparse::Error::Version => {
            return "unsupported or malformed HTTP version: use HTTP/1.1".to_string();
        }
        httparse::Error::Token => "invalid method or request target",
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
    };
    format!("malformed request: {what}")
}

/// The path and query of a request target: origin form (`/path?query`) or absolute form
/// (`http://host/path?query`, which the server must accept too).
fn split_target(target: &str) -> Result<(String, Option<String>), String> {
    let origin = if target.starts_with('/') {
        target.to_string()
    } else if let Some(after) = strip_scheme(target) {
        match after.find(['/', '?']) {
            Some(i) if after[i..].starts_with('/') => after[i..].to_string(),
            Some(i) => format!("/{}", &after[i..]),
            None => "/".to_string(),
        }
    } else {
        return Err(format!(
            "invalid request target {}: expected a path starting with '/'",
            excerpt(target)
        ));
    };
    Ok(match origin.split_once('?') {
        Some((path, query)) => (path.to_string(), Some(query.to_string())),
        None => (origin, None),
    })
}

/// What follows `http://` or `https://` (any case) in `target`.
fn strip_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let head = target.get(..scheme.len())?;
        head.eq_ignore_ascii_case(scheme)
            .then(|| &target[scheme.len()..])
    })
}

/// The value of a Content-Length header, checked against the payload limit.
fn content_length_value(value: &[u8], max_payload: usize) -> Result<usize, String> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "invalid Content-Length {}: expected a number of bytes",
            excerpt(&String::from_utf8_lossy(value))
        ));
    }
    // All ASCII digits: valid UTF-8.
    let text = std::str::from_utf8(digits).unwrap_or("0");
    match text.parse::<usize>() {
        Ok(n) if n <= max_payload => Ok(n),
        // Too large, or past usize (then the digits, without leading zeros, stand for it).
        parsed => {
            let size = match parsed {
                Ok(n) => n.to_string(),
                Err(_) => text.trim_start_matches('0').to_string(),
            };
            Err(format!(
                "Request payload with size {size} is larger than the limit of {max_payload} allowed by server."
            ))
        }
    }
}

/// `s` quoted, cut to 64 characters: fault messages echo client input only briefly.
fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{:?}...", &s[..i]),
        None => format!("{s:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 51200;

    fn complete(buf: &[u8]) -> (Request, usize, bool) {
        match parse(buf, LIMIT) {
            Parsed::Complete {
                request,
                consumed,
                close,
            } => (request, consumed, close),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    /// The fault message of an Invalid verdict (asserting status 400).
    fn fault(buf: &[u8], limit: usize) -> String {
        match parse(buf, limit) {
            Parsed::Invalid(r) => {
                assert_eq!(r.status, 400);
                let v: serde_json::Value =
                    serde_json::from_slice(r.body.as_deref().expect("a fault has a body"))
                        .expect("the fault body is JSON");
                v["fault_message"]
                    .as_str()
                    .expect("fault_message is a string")
                    .to_string()
            }
            other => panic!("expected an invalid request, got {other:?}"),
        }
    }

    #[test]
    fn get_without_body_is_complete() {
        let buf = b"GET /machine-config HTTP/1.1\r\nHost: localhost\r\n\r\n";
        let (req, consumed, close) = complete(buf);
        assert_eq!(req.method, Method::Get);
        assert_eq!(req.path, "/machine-config");
        assert_eq!(req.query, None);
        assert!(req.body.is_empty());
        assert_eq!(consumed, buf.len());
        assert!(!close);
    }

    #[test]
    fn put_body_is_framed_by_content_length() {
        let buf = b"PUT /actions HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET";
        let (req, consumed, _) = complete(buf);
        assert_eq!(req.method, Method::Put);
        assert_eq!(req.body, b"hello");
        assert_eq!(consumed, buf.len() - 3);
    }

    #[test]
    fn methods_are_recognized_and_others_kept() {
        let m = |line: &str| {
            complete(format!("{line} / HTTP/1.1\r\n\r\n").as_bytes())
                .0
                .method
        };
        assert_eq!(m("PATCH"), Method::Patch);
        assert_eq!(m("DELETE"), Method::Other("DELETE".into()));
        assert_eq!(m("get"), Method::Other("get".into()));
    }

    #[test]
    fn query_string_is_split_off() {
        let (req, _, _) = complete(b"GET /vm?a=1&b=2 HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/vm");
        assert_eq!(req.query.as_deref(), Some("a=1&b=2"));
    }

    #[test]
    fn absolute_form_target_is_reduced_to_its_path() {
        let (req, _, _) = complete(b"GET http://localhost/version?x HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/version");
        assert_eq!(req.query.as_deref(), Some("x"));
        let (req, _, _) = complete(b"GET HTTP://localhost HTTP/1.1\r\n\r\n");
        assert_eq!(req.path, "/");
    }

    #[test]
    fn target_without_slash_is_refused() {
        let msg = fault(b"GET version HTTP/1.1\r\n\r\n", LIMIT);
        assert!(msg.contains("invalid request target"), "{msg}");
    }

    #[test]
    fn partial_head_is_incomplete() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n", LIMIT),
            Parsed::Incomplete
        );
        assert_eq!(parse(b"", LIMIT), Parsed::Incomplete);
    }

    #[test]
    fn partial_body_is_incomplete() {
        let buf = b"PUT /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345";
        assert_eq!(parse(buf, LIMIT), Parsed::Incomplete);
    }

    #[test]
    fn bad_request_line_is_refused() {
        let msg = fault(b"GET /\x01 HTTP/1.1\r\n\r\n", LIMIT);
        assert!(msg.starts_with("malformed request"), "{msg}");
    }

    #[test]
    fn http_2_and_0_9_are_refused() {
        let msg = fault(b"GET / HTTP/2.0\r\n\r\n", LIMIT);
        assert!(msg.contains("HTTP version"), "{msg}");
        fault(b"GET /\r\n\r\n", LIMIT);
    }

    #[test]
    fn http_1_0_closes_unless_keep_alive() {
        assert!(complete(b"GET / HTTP/1.0\r\n\r\n").2);
        assert!(!complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").2);
    }

    #[test]
    fn connection_close_closes_http_1_1() {
        assert!(complete(b"GET / HTTP/1.1\r\nConnection: foo, close\r\n\r\n").2);
    }

    #[test]
    fn more_than_32_headers_are_refused() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..33 {
            buf.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        assert_eq!(fault(&buf, LIMIT), "too many headers (at most 32)");
    }

    #[test]
    fn exactly_32_headers_are_accepted() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..32 {
            buf.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        buf.extend_from_slice(b"\r\n");
        complete(&buf);
    }

    #[test]
    fn head_over_8_kib_is_refused_before_it_ends() {
        let mut buf = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        buf.resize(MAX_HEADER_BYTES, b'a');
        let msg = fault(&buf, LIMIT);
        assert!(msg.contains("larger than 8192 bytes"), "{msg}");
    }

    #[test]
    fn complete_head_over_8_kib_is_refused() {
        let mut buf = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        buf.resize(MAX_HEADER_BYTES, b'a');
        buf.extend_from_slice(b"\r\n\r\n");
        let msg = fault(&buf, LIMIT);
        assert!(msg.contains("larger than 8192 bytes"), "{msg}");
    }

    #[test]
    fn head_of_exactly_8_kib_is_accepted() {
        let mut buf = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        buf.resize(MAX_HEADER_BYTES - 4, b'a');
        buf.extend_from_slice(b"\r\n\r\n");
        assert_eq!(complete(&buf).1, MAX_HEADER_BYTES);
    }

    #[test]
    fn duplicate_content_length_is_refused() {
        let buf = b"PUT / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\nx";
        assert_eq!(fault(buf, LIMIT), "more than one Content-Length header");
    }

    #[test]
    fn non_numeric_content_length_is_refused() {
        for v in ["abc", "-1", "+1", "1 2", "0x10", ""] {
            let buf = format!("PUT / HTTP/1.1\r\nContent-Length: {v}\r\n\r\n");
            let msg = fault(buf.as_bytes(), LIMIT);
            assert!(msg.starts_with("invalid Content-Length"), "{v:?}: {msg}");
        }
    }

    #[test]
    fn body_over_the_limit_is_refused_with_firecrackers_message() {
        let buf = b"PUT /drives/x HTTP/1.1\r\nContent-Length: 51201\r\n\r\n";
        assert_eq!(
            fault(buf, LIMIT),
            "Request payload with size 51201 is larger than the limit of 51200 allowed by server."
        );
    }

    #[test]
    fn body_at_the_limit_is_accepted() {
        let mut buf = b"PUT / HTTP/1.1\r\nContent-Length: 16\r\n\r\n".to_vec();
        buf.extend_from_slice(&[b'x'; 16]);
        match parse(&buf, 16) {
            Parsed::Complete { request, .. } => assert_eq!(request.body.len(), 16),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn content_length_past_usize_is_refused_as_too_large() {
        let buf = b"PUT / HTTP/1.1\r\nContent-Length: 000123456789012345678901234567890\r\n\r\n";
        assert_eq!(
            fault(buf, 10),
            "Request payload with size 123456789012345678901234567890 is larger than the limit of 10 allowed by server."
        );
    }

    #[test]
    fn transfer_encoding_is_refused() {
        let buf = b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert!(fault(buf, LIMIT).contains("not supported"));
    }

    #[test]
    fn expect_100_continue_is_reported_while_the_body_is_missing() {
        let head = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(parse_with_continue(head, LIMIT), (Parsed::Incomplete, true));
        let mut full = head.to_vec();
        full.extend_from_slice(b"{}");
        assert!(!parse_with_continue(&full, LIMIT).1);
    }

    #[test]
    fn expect_100_continue_is_ignored_for_http_1_0() {
        let head = b"PUT /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert!(!parse_with_continue(head, LIMIT).1);
    }

    #[test]
    fn pipelined_requests_parse_one_at_a_time() {
        let buf = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let (first, n, _) = complete(buf);
        assert_eq!(first.path, "/a");
        let (second, m, _) = complete(&buf[n..]);
        assert_eq!(second.path, "/b");
        assert_eq!(n + m, buf.len());
    }

    #[test]
    fn long_client_input_is_cut_in_messages() {
        let target = "x".repeat(1000);
        let msg = fault(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes(), LIMIT);
        assert!(msg.len() < 150, "{msg}");
    }
}
