//! The API server's HTTP request parser, `api::http::parse`, and its dispatch
//! (`api::router::route`, the JSON bodies) on what a client could send down the socket:
//! requests parsed one after the other from the buffer, as the server does with
//! pipelined requests.
//!
//! Input: one selector byte (mod 4: payload limit 0, 1, 16 or 51200 bytes), then the
//! bytes received. Checked beyond "no panic": each complete request takes 1..=len bytes
//! (progress, so the loop ends), its body fits the limit and its path starts with `/`
//! and holds no `?`; the same bytes alone parse to the same request, and one byte fewer
//! is incomplete (the verdict does not depend on what follows); a refusal is a 400 with
//! a JSON `fault_message`, and serializes as an HTTP/1.1 response that closes.

#![no_main]

use api::http::{parse, Parsed, Response};
use libfuzzer_sys::fuzz_target;

const LIMITS: [usize; 4] = [0, 1, 16, 51200];

fn check_fault(r: &Response) {
    assert_eq!(r.status, 400, "a refusal is a 400");
    let body = r.body.as_deref().expect("a fault has a body");
    let v: serde_json::Value = serde_json::from_slice(body).expect("the fault body is JSON");
    assert!(v["fault_message"].is_string(), "fault body {v}");
    let mut out = Vec::new();
    r.write_to(&mut out, true);
    assert!(out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    assert!(out.ends_with(body));
    let head = &out[..out.len() - body.len()];
    let text = std::str::from_utf8(head).expect("an ASCII head");
    assert!(text.contains("\r\nConnection: close\r\n"), "{text}");
    assert!(
        text.contains(&format!("\r\nContent-Length: {}\r\n\r\n", body.len())),
        "{text}"
    );
}

/// What the API does next with a parsed request: route it to a typed request (pure; the
/// controller's effects, files and the VM, stay out of the fuzzer). A routed request
/// re-serializes where it has a body type that does.
fn dispatch(request: &api::http::Request) {
    use api::http::Method;
    let method = match &request.method {
        Method::Get => "GET",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Other(m) => m.as_str(),
    };
    match api::router::route(method, &request.path, &request.body) {
        Ok(api::router::ApiRequest::PutMachineConfig(m)) => {
            let json = serde_json::to_string(&m).expect("a machine config serializes");
            let back: api::model::MachineConfig = serde_json::from_str(&json).expect("and parses");
            assert_eq!(back, m);
            let _ = m.check();
        }
        Ok(api::router::ApiRequest::PutDrive(d)) => {
            let json = serde_json::to_string(&d).expect("a drive serializes");
            let back: api::model::Drive = serde_json::from_str(&json).expect("and parses");
            assert_eq!(back, d);
        }
        Ok(_) => {}
        Err(msg) => assert!(!msg.is_empty(), "an empty fault message"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut buf)) = data.split_first() else {
        return;
    };
    let limit = LIMITS[usize::from(sel % 4)];
    loop {
        match parse(buf, limit) {
            Parsed::Incomplete => break,
            Parsed::Invalid(r) => {
                check_fault(&r);
                break;
            }
            Parsed::Complete {
                request,
                consumed,
                close,
            } => {
                assert!(
                    consumed > 0 && consumed <= buf.len(),
                    "consumed {consumed} of {}",
                    buf.len()
                );
                assert!(request.body.len() <= limit, "body over the limit");
                assert!(request.path.starts_with('/'), "path {:?}", request.path);
                assert!(!request.path.contains('?'), "path {:?}", request.path);
                dispatch(&request);
                let alone = parse(&buf[..consumed], limit);
                assert_eq!(
                    alone,
                    Parsed::Complete {
                        request,
                        consumed,
                        close
                    },
                    "the request alone parses differently"
                );
                assert_eq!(
                    parse(&buf[..consumed - 1], limit),
                    Parsed::Incomplete,
                    "one byte short of a request is not incomplete"
                );
                buf = &buf[consumed..];
            }
        }
    }
});
