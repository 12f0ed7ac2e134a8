use super::*;
use std::os::unix::net::UnixListener;
use vmm_sys_util::tempdir::TempDir;

const LONG: Duration = Duration::from_secs(10);

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
    let raw = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 22\r\n\r\n{\"fault_message\":\"no\"}";
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
            matches!(parse_reply(raw), Err(ClientError::Malformed(_))),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn an_overlong_head_is_an_error_with_or_without_its_end() {
    assert!(parse_reply(&vec![b'a'; MAX_HEAD + 1]).is_err());
    let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
    long.resize(MAX_HEAD + 10, b'a');
    long.extend_from_slice(b"\r\n\r\n");
    assert!(parse_reply(&long).is_err());
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
fn fault_is_shortened() {
    let r = Reply {
        status: 400,
        body: vec![b'x'; 1000],
    };
    assert_eq!(r.fault().len(), MAX_FAULT);
}

#[test]
fn expect_passes_the_wanted_status() {
    let r = Reply {
        status: 204,
        body: Vec::new(),
    };
    assert_eq!(r.clone().expect(204, "PATCH /vm").unwrap(), r);
}

#[test]
fn expect_names_the_request_and_the_fault() {
    let r = Reply {
        status: 400,
        body: br#"{"fault_message":"the VM is not paused"}"#.to_vec(),
    };
    let e = r.expect(204, "PUT /snapshot/create").unwrap_err();
    assert!(matches!(e, ClientError::Status { status: 400, .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "PUT /snapshot/create answered 400: the VM is not paused"
    );
}

/// A server on one end of a socket pair: reads one request ending in `{}`, writes
/// `reply`, returns what it read, then closes.
fn one_shot(mut b: UnixStream, reply: &'static [u8]) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut chunk = [0u8; 256];
        while !got.ends_with(b"{}") {
            let n = b.read(&mut chunk).unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        b.write_all(reply).unwrap();
        String::from_utf8(got).unwrap()
    })
}

#[test]
fn client_round_trip_over_a_socket_pair() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = one_shot(b, b"HTTP/1.1 204 No Content\r\n\r\n");
    let mut c = Client::new(a, monotonic_ns() + 10_000_000_000);
    let r = c.call("PUT", "/machine-config", "{}").unwrap();
    assert_eq!(r.status, 204);
    assert!(server.join().unwrap().starts_with("PUT /machine-config "));
    assert!(matches!(c.reply(), Err(ClientError::Closed)));
}

#[test]
fn call_json_gives_status_and_text() {
    let (a, b) = UnixStream::pair().unwrap();
    let server = one_shot(
        b,
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"id\":\"x\"}\n",
    );
    let mut c = Client::new(a, monotonic_ns() + 10_000_000_000);
    let (status, body) = c.call_json("GET", "/", "{}").unwrap();
    assert_eq!((status, body.as_str()), (200, "{\"id\":\"x\"}\n"));
    server.join().unwrap();
}

#[test]
fn a_silent_server_times_out() {
    let (a, _b) = UnixStream::pair().unwrap();
    let mut c = Client::new(a, monotonic_ns());
    c.set_timeout(Duration::from_millis(20));
    let e = c.call("GET", "/", "").unwrap_err();
    assert!(matches!(e, ClientError::Timeout("reading a reply")), "{e}");
}

#[test]
fn a_passed_deadline_fails_before_sending() {
    let (a, _b) = UnixStream::pair().unwrap();
    let mut c = Client::new(a, monotonic_ns().saturating_sub(1));
    let e = c.send(b"x").unwrap_err();
    assert!(
        matches!(e, ClientError::Timeout("writing a request")),
        "{e}"
    );
}

#[test]
fn connect_reaches_a_listening_socket() {
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-client-")).unwrap();
    let path = dir.as_path().join("api.sock");
    let l = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        one_shot(s, b"HTTP/1.1 204 No Content\r\n\r\n")
            .join()
            .unwrap()
    });
    let mut c = Client::connect(&path, LONG).unwrap();
    let r = c.call("PATCH", "/vm", "{}").unwrap();
    assert_eq!(r.expect(204, "PATCH /vm").unwrap().status, 204);
    assert!(server.join().unwrap().starts_with("PATCH /vm "));
}

#[test]
fn connect_names_a_missing_socket() {
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-client-")).unwrap();
    let path = dir.as_path().join("none.sock");
    let e = Client::connect(&path, LONG).err().unwrap();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
    assert!(e.to_string().contains("none.sock"), "{e}");
}
