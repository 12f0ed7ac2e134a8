//! The server and the API thread over real sockets, in a temporary directory each.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("kiln-api-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create the test directory");
        TempDir(p)
    }

    fn sock(&self) -> PathBuf {
        self.0.join("api.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The test handler: GET answers 200 with the path and query, PUT/PATCH 204, others
/// 400; `PUT /count` answers with how many requests it saw before.
fn handler() -> Box<dyn FnMut(Request) -> Response + Send> {
    let mut seen = 0usize;
    Box::new(move |req: Request| {
        seen += 1;
        match req.method {
            Method::Get => Response::json(
                200,
                &serde_json::json!({"path": req.path, "query": req.query, "n": seen}),
            ),
            Method::Put | Method::Patch if req.path == "/echo" => {
                Response::json(200, &serde_json::json!({"len": req.body.len()}))
            }
            Method::Put | Method::Patch => Response::no_content(),
            Method::Other(m) => Response::fault(400, format!("method {m} not allowed")),
        }
    })
}

/// A server on its thread in a fresh directory, idle timeout `idle`.
fn start(idle: Duration) -> (TempDir, ApiThread) {
    let dir = TempDir::new();
    let server = Server::bind(&dir.sock())
        .expect("bind")
        .with_idle_timeout(idle)
        .with_max_payload(1024);
    let api = spawn(server, handler(), Box::new(|| Ok(()))).expect("spawn");
    (dir, api)
}

fn connect(path: &Path) -> UnixStream {
    let s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    s
}

/// One response read from `s` (buffering what follows in `buf`): status, headers
/// (lowercased names), body.
fn read_response(s: &mut UnixStream, buf: &mut Vec<u8>) -> (u16, Vec<(String, String)>, Vec<u8>) {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(n) = resp.parse(buf).expect("a valid response") {
            let status = resp.code.expect("status");
            let hs: Vec<(String, String)> = resp
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let len: usize = hs
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().expect("numeric length"));
            if buf.len() >= n + len {
                let body = buf[n..n + len].to_vec();
                buf.drain(..n + len);
                return (status, hs, body);
            }
        }
        let mut chunk = [0u8; 4096];
        let got = s.read(&mut chunk).expect("read a response");
        assert!(got > 0, "connection closed before a whole response");
        buf.extend_from_slice(&chunk[..got]);
    }
}

fn header<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("a JSON body")
}

/// Asserts the server closes `s` (EOF) with nothing more to read.
fn assert_closed(s: &mut UnixStream) {
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).expect("read to EOF");
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
}

/// Asserts `s` is closed: EOF, or a reset when the server dropped it with input unread.
fn assert_dropped(s: &mut UnixStream) {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "unexpected bytes: {rest:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
}

/// A GET on a new connection; returns the response's JSON.
fn get(path: &Path, target: &str) -> serde_json::Value {
    let mut s = connect(path);
    s.write_all(format!("GET {target} HTTP/1.1\r\n\r\n").as_bytes())
        .expect("write");
    let (status, _, body) = read_response(&mut s, &mut Vec::new());
    assert_eq!(status, 200);
    json(&body)
}

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(30);

#[test]
fn get_round_trip() {
    let (dir, _api) = start(LONG);
    let v = get(&dir.sock(), "/machine-config?x=1");
    assert_eq!(v["path"], "/machine-config");
    assert_eq!(v["query"], "x=1");
}

#[test]
fn keep_alive_serves_two_requests() {
    let (dir, _api) = start(LONG);
    let mut s = connect(&dir.sock());
    let mut buf = Vec::new();
    s.write_all(b"GET /a HTTP/1.1\r\n\r\n").expect("write");
    let (_, hs, body) = read_response(&mut s, &mut buf);
    assert_eq!(header(&hs, "connection"), Some("keep-alive"));
    assert_eq!(json(&body)["path"], "/a");
    s.write_all(b"PUT /b HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}")
        .expect("write");
    let (status, _, body) = read_response(&mut s, &mut buf);
    assert_eq!(status, 204);
    assert!(body.is_empty());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let (dir, _api) = start(LONG);
    let mut s = connect(&dir.sock());
    s.write_all(
        b"GET /1 HTTP/1.1\r\n\r\nPUT /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /3 HTTP/1.1\r\n\r\n",
    )
    .expect("write");
    let mut buf = Vec::new();
    assert_eq!(json(&read_response(&mut s, &mut buf).2)["path"], "/1");
    assert_eq!(json(&read_response(&mut s, &mut buf).2)["len"], 3);
    assert_eq!(json(&read_response(&mut s, &mut buf).2)["path"], "/3");
}

#[test]
fn oversized_body_gets_400_with_firecrackers_message() {
    let (dir, _api) = start(LONG);
    let mut s = connect(&dir.sock());
    let mut req = b"PUT /drives/rootfs HTTP/1.1\r\nContent-Length: 2000\r\n\r\n".to_vec();
    req.resize(req.len() + 2000, b'x');
    // The server may close before taking the whole body: that write may fail.
    let _ = s.write_all(&req);
    let (status, hs, body) = read_response(&mut s, &mut Vec::new());
    assert_eq!(status, 400);
    assert_eq!(header(&hs, "connection"), Some("close"));
    assert_eq!(
        json(&body)["fault_message"],
        "Request payload with size 2000 is larger than the limit of 1024 allowed by server."
    );
}

#[test]
fn bad_request_line_gets_400_then_close() {
    let (dir, _api) = start(LONG);
    let mut s = connect(&dir.sock());
    s.write_all(b"GARBAGE\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .expect("write");
    let (status, _, body) = read_response(&mut s, &mut Vec::new());
    assert_eq!(status, 400);
    assert!(json(&body)["fault_message"].is_string());
    assert_closed(&mut s);
}

#[test]
fn connection_close_is_honoured() {
    let (dir, _api) = start(LONG);
    let mut s = connect(&dir.sock());
    s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .expect("write");
    let (_, hs, _) = read_response(&mut s, &mut Vec::new());
    assert_eq!(header(&hs, "connection"), Some("close"));
    assert_closed(&mut s);
}

#[test]
fn expect_100_continue_gets_an_interim_response() {
    let (dir, _api) = start(LONG);
    let mut s = connect(&dir.sock());
    s.write_all(b"PUT /echo HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
        .expect("write");
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf).0, 100);
    s.write_all(b"abcd").expect("write");
    assert_eq!(json(&read_response(&mut s, &mut buf).2)["len"], 4);
}

#[test]
fn client_leaving_mid_request_does_not_disturb_another() {
    let (dir, _api) = start(LONG);
    let mut gone = connect(&dir.sock());
    gone.write_all(b"PUT /x HTTP/1.1\r\nContent-Length: 100\r\n\r\nabc")
        .expect("write");
    drop(gone);
    assert_eq!(get(&dir.sock(), "/after")["path"], "/after");
}

#[test]
fn client_leaving_mid_response_does_not_disturb_another() {
    let (dir, _api) = start(LONG);
    let mut gone = connect(&dir.sock());
    // Many answers, none read: the server's output to it fills up, then it leaves.
    let many = "GET /x HTTP/1.1\r\n\r\n".repeat(2000);
    gone.write_all(many.as_bytes()).expect("write");
    drop(gone);
    assert_eq!(get(&dir.sock(), "/after")["path"], "/after");
}

#[test]
fn slow_client_does_not_block_another() {
    let (dir, _api) = start(LONG);
    let mut slow = connect(&dir.sock());
    slow.write_all(b"GET /slow HTTP/1.1\r\nHost: x")
        .expect("write");
    let t = Instant::now();
    assert_eq!(get(&dir.sock(), "/fast")["path"], "/fast");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The slow one is still served when it finishes.
    slow.write_all(b"\r\n\r\n").expect("write");
    let (_, _, body) = read_response(&mut slow, &mut Vec::new());
    assert_eq!(json(&body)["path"], "/slow");
}

#[test]
fn idle_partial_request_is_closed_after_the_timeout() {
    let (dir, _api) = start(SHORT);
    let mut s = connect(&dir.sock());
    s.write_all(b"GET / HTTP/1.1\r\n").expect("write");
    let t = Instant::now();
    let (status, _, _) = read_response(&mut s, &mut Vec::new());
    assert_eq!(status, 408);
    assert_closed(&mut s);
    assert!(
        t.elapsed() >= SHORT - Duration::from_millis(50),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn silent_new_connection_is_closed_after_the_timeout() {
    let (dir, _api) = start(SHORT);
    let mut s = connect(&dir.sock());
    assert_closed(&mut s);
}

#[test]
fn client_not_reading_its_answers_is_closed_after_the_timeout() {
    let (dir, _api) = start(SHORT);
    let mut s = connect(&dir.sock());
    s.set_write_timeout(Some(Duration::from_millis(500)))
        .expect("write timeout");
    // Far more answers than the socket holds: the server stops reading, and this write
    // stops with it.
    let many = "GET /x HTTP/1.1\r\n\r\n".repeat(20000);
    let _ = s.write_all(many.as_bytes());
    std::thread::sleep(SHORT * 2);
    // The server gave up on it: what was sent can be read, then the connection ends
    // (with a reset: the server left input unread). Else the read times out.
    let mut rest = Vec::new();
    if let Err(e) = s.read_to_end(&mut rest) {
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    }
    assert_eq!(get(&dir.sock(), "/ok")["path"], "/ok");
}

#[test]
fn idle_keep_alive_connection_stays_open() {
    let (dir, _api) = start(SHORT);
    let mut s = connect(&dir.sock());
    let mut buf = Vec::new();
    s.write_all(b"GET /1 HTTP/1.1\r\n\r\n").expect("write");
    read_response(&mut s, &mut buf);
    std::thread::sleep(SHORT * 2);
    s.write_all(b"GET /2 HTTP/1.1\r\n\r\n").expect("write");
    assert_eq!(json(&read_response(&mut s, &mut buf).2)["path"], "/2");
}

#[test]
fn hundred_concurrent_clients_are_all_served() {
    let (dir, _api) = start(LONG);
    let sock = dir.sock();
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let sock = sock.clone();
            std::thread::spawn(move || {
                let v = get(&sock, &format!("/c{i}"));
                assert_eq!(v["path"], format!("/c{i}"));
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client failed");
    }
}

#[test]
fn idle_connection_gives_way_when_all_slots_are_taken() {
    let (dir, _api) = start(LONG);
    let mut idle = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut s = connect(&dir.sock());
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        read_response(&mut s, &mut Vec::new());
        idle.push(s);
    }
    assert_eq!(get(&dir.sock(), "/new")["path"], "/new");
    // The oldest idle connection was closed for it.
    assert_closed(&mut idle[0]);
}

#[test]
fn connections_over_the_limit_wait_for_a_slot() {
    let (dir, _api) = start(SHORT);
    let mut busy = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let mut s = connect(&dir.sock());
        s.write_all(b"GET").expect("write");
        busy.push(s);
    }
    // Served once the partial requests time out and free their slots.
    let t = Instant::now();
    assert_eq!(get(&dir.sock(), "/late")["path"], "/late");
    assert!(
        t.elapsed() >= SHORT / 2,
        "served too early: {:?}",
        t.elapsed()
    );
}

#[test]
fn stop_returns_promptly_with_clients_connected() {
    let (dir, api) = start(LONG);
    let mut s = connect(&dir.sock());
    s.write_all(b"GET / HTTP/1.1\r\n").expect("write");
    let t = Instant::now();
    api.stop();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(!dir.sock().exists(), "socket file left behind");
    assert_dropped(&mut s);
}

#[test]
fn stale_socket_file_is_replaced_and_removed_at_drop() {
    let dir = TempDir::new();
    let sock = dir.sock();
    drop(UnixListener::bind(&sock).expect("bind a stale socket"));
    assert!(sock.exists(), "the stale socket file should exist");
    let server = Server::bind(&sock).expect("bind over the stale socket");
    assert_eq!(server.socket_path(), sock);
    connect(&sock);
    drop(server);
    assert!(!sock.exists(), "socket file left behind");
}

#[test]
fn bind_refuses_a_regular_file() {
    let dir = TempDir::new();
    let path = dir.0.join("not-a-socket");
    std::fs::write(&path, b"keep me").expect("write a file");
    let err = Server::bind(&path).expect_err("bind over a regular file");
    assert!(matches!(err, HttpError::NotASocket { .. }), "{err}");
    assert!(err.to_string().contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).expect("file kept"), b"keep me");
}

#[test]
fn bind_in_a_missing_directory_names_the_fix() {
    let dir = TempDir::new();
    let path = dir.0.join("missing/api.sock");
    let err = Server::bind(&path).expect_err("bind in a missing directory");
    let msg = err.to_string();
    assert!(msg.contains(&*path.to_string_lossy()), "{msg}");
    assert!(
        msg.contains("the directory does not exist: create it"),
        "{msg}"
    );
}

#[test]
fn drop_leaves_a_socket_bound_by_someone_else_since() {
    let dir = TempDir::new();
    let sock = dir.sock();
    let server = Server::bind(&sock).expect("bind");
    std::fs::remove_file(&sock).expect("remove");
    let _other = UnixListener::bind(&sock).expect("another bind");
    drop(server);
    let kind = std::fs::symlink_metadata(&sock)
        .expect("still there")
        .file_type();
    assert!(kind.is_socket());
}

#[test]
fn failing_setup_is_reported_and_removes_the_socket() {
    let dir = TempDir::new();
    let server = Server::bind(&dir.sock()).expect("bind");
    let setup = Box::new(|| Err(std::io::Error::other("no seccomp today")));
    let err = spawn(server, handler(), setup).expect_err("setup fails");
    assert_eq!(err.to_string(), "no seccomp today");
    assert!(!dir.sock().exists(), "socket file left behind");
}

#[test]
fn api_thread_is_named() {
    let dir = TempDir::new();
    let server = Server::bind(&dir.sock()).expect("bind");
    let setup = Box::new(|| {
        let name = std::thread::current().name().map(str::to_string);
        if name.as_deref() == Some(THREAD_NAME) {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("thread name {name:?}")))
        }
    });
    spawn(server, handler(), setup).expect("spawn").stop();
}

#[test]
fn clients_leaving_before_their_answer_do_not_stop_the_server() {
    let (dir, _api) = start(LONG);
    for _ in 0..20 {
        let mut s = connect(&dir.sock());
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
    }
    assert_eq!(get(&dir.sock(), "/ok")["path"], "/ok");
}

#[test]
fn refused_body_is_drained_so_the_client_reads_the_answer_then_eof() {
    let (dir, _api) = start(LONG);
    let mut s = connect(&dir.sock());
    s.write_all(b"PUT /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n")
        .expect("write the head");
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf).0, 400);
    // The rest of the refused body still goes in, and the server ends with EOF.
    s.write_all(&[b'x'; 5000]).expect("write the body");
    assert!(buf.is_empty());
    assert_closed(&mut s);
}
