//! Responses: a status and an optional JSON body, serialized with the headers clients
//! need (`Content-Length` framing and whether the connection stays open).

use std::fmt::Display;
use std::io::Write;

use serde::Serialize;

/// An HTTP response. A body is always JSON (`Content-Type: application/json`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, if any.
    pub body: Option<Vec<u8>>,
}

impl Response {
    /// `204 No Content`: Firecracker's answer to a successful PUT or PATCH.
    pub fn no_content() -> Response {
        Response {
            status: 204,
            body: None,
        }
    }

    /// `status` with `value` as the JSON body. Should `value` not serialize (a map with
    /// non-string keys), the answer is a 500 fault saying so.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Response {
        match serde_json::to_vec(value) {
            Ok(body) => Response {
                status,
                body: Some(body),
            },
            Err(e) => Response::fault(500, format_args!("cannot serialize the response: {e}")),
        }
    }

    /// `status` with Firecracker's error body, `{"fault_message":"<msg>"}`.
    pub fn fault(status: u16, msg: impl Display) -> Response {
        let body = serde_json::json!({ "fault_message": msg.to_string() });
        Response {
            status,
            body: Some(body.to_string().into_bytes()),
        }
    }

    /// Appends the response, status line to body, to `out`. `close`: tells the client
    /// the connection closes after it (`Connection: close`), else `keep-alive`.
    pub fn write_to(&self, out: &mut Vec<u8>, close: bool) {
        let connection = if close { "close" } else { "keep-alive" };
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nServer: Kiln API\r\nConnection: {connection}\r\n",
            self.status,
            reason(self.status)
        );
        match &self.body {
            Some(body) => {
                let _ = write!(
                    out,
                    "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                out.extend_from_slice(body);
            }
            // 1xx, 204 and 304 responses carry no body and may not announce one.
            None if matches!(self.status, 100..=199 | 204 | 304) => {
                out.extend_from_slice(b"\r\n");
            }
            None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
        }
    }
}

/// The reason phrase of a status code (empty for codes Kiln does not send).
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: &Response, close: bool) -> String {
        let mut out = Vec::new();
        r.write_to(&mut out, close);
        String::from_utf8(out).expect("responses are ASCII here")
    }

    #[test]
    fn no_content_has_no_body_and_no_length() {
        let t = text(&Response::no_content(), false);
        assert_eq!(
            t,
            "HTTP/1.1 204 No Content\r\nServer: Kiln API\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn json_body_is_framed_and_typed() {
        let r = Response::json(200, &serde_json::json!({"state": "Running"}));
        let t = text(&r, false);
        assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
        assert!(t.contains("Content-Type: application/json\r\n"), "{t}");
        assert!(
            t.ends_with("Content-Length: 19\r\n\r\n{\"state\":\"Running\"}"),
            "{t}"
        );
    }

    #[test]
    fn fault_body_is_firecrackers() {
        let r = Response::fault(400, "bad \"thing\"");
        assert_eq!(r.status, 400);
        assert_eq!(
            r.body.as_deref(),
            Some(&br#"{"fault_message":"bad \"thing\""}"#[..])
        );
    }

    #[test]
    fn close_is_announced() {
        assert!(text(&Response::no_content(), true).contains("Connection: close\r\n"));
    }

    #[test]
    fn bodiless_200_announces_zero_length() {
        let r = Response {
            status: 200,
            body: None,
        };
        assert!(text(&r, false).ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn unserializable_value_gives_a_500_fault() {
        let mut m = std::collections::HashMap::new();
        m.insert(vec![1u8], 1);
        let r = Response::json(200, &m);
        assert_eq!(r.status, 500);
    }
}
