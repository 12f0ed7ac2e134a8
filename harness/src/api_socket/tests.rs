use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::thread::JoinHandle;

use super::*;
use crate::builder::{spawn_child, temp_dir};

/// A child that is not Kiln: `sh -c SCRIPT` (the harness's own flags land in `$0...`).
fn sh(script: &str, api: bool) -> RunningVm {
    let args: Vec<OsString> = vec!["-c".into(), script.into()];
    spawn_child(Path::new("/bin/sh"), args, &[], temp_dir().unwrap(), api).unwrap()
}

/// Serves `replies` in order, one request each, on `sock`; returns the requests.
fn fake_server(sock: &Path, replies: &'static [&'static str]) -> JoinHandle<Vec<String>> {
    let l = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        for reply in replies {
            let (mut s, _) = l.accept().unwrap();
            got.push(read_request(&mut s));
            s.write_all(reply.as_bytes()).unwrap();
        }
        got
    })
}

/// Reads one request with a `Content-Length` body.
fn read_request(s: &mut UnixStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.parse().unwrap());
            if body.len() >= len {
                return text;
            }
        }
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "client closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
    }
}

const NO_CONTENT: &str = "HTTP/1.1 204 No Content\r\n\r\n";
const NOT_PAUSED: &str = "HTTP/1.1 400 Bad Request\r\nContent-Length: 42\r\n\r\n\
                          {\"fault_message\":\"The VM is not paused.\"}\n";

#[test]
fn try_connect_waits_for_a_missing_socket() {
    let d = temp_dir().unwrap();
    let sock = d.as_path().join("api.sock");
    assert!(try_connect(&sock, API_TIMEOUT).unwrap().is_none());
    let _l = UnixListener::bind(&sock).unwrap();
    assert!(try_connect(&sock, API_TIMEOUT).unwrap().is_some());
}

#[test]
fn pause_and_resume_send_patch_vm() {
    let mut vm = sh("sleep 30", true);
    let sock = vm.api_socket().unwrap().to_path_buf();
    let server = fake_server(&sock, &[NO_CONTENT, NO_CONTENT]);
    vm.pause().unwrap();
    vm.resume().unwrap();
    let got = server.join().unwrap();
    assert!(got[0].starts_with("PATCH /vm HTTP/1.1\r\n"), "{}", got[0]);
    assert!(got[0].ends_with(r#"{"state":"Paused"}"#), "{}", got[0]);
    assert!(got[1].ends_with(r#"{"state":"Resumed"}"#), "{}", got[1]);
}

#[test]
fn a_refused_request_carries_the_fault_message() {
    let mut vm = sh("sleep 30", true);
    let sock = vm.api_socket().unwrap().to_path_buf();
    let server = fake_server(&sock, &[NOT_PAUSED]);
    let e = vm.resume().unwrap_err();
    server.join().unwrap();
    assert!(matches!(e, HarnessError::Api { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("resuming the VM"), "{msg}");
    assert!(msg.contains("400: The VM is not paused."), "{msg}");
}

#[test]
fn snapshot_pauses_then_creates_in_the_directory() {
    let mut vm = sh("sleep 30", true);
    let sock = vm.api_socket().unwrap().to_path_buf();
    let server = fake_server(&sock, &[NO_CONTENT, NO_CONTENT]);
    let d = temp_dir().unwrap();
    let snap = vm.snapshot(&d.as_path().join("s1")).unwrap();
    let got = server.join().unwrap();
    assert!(got[0].starts_with("PATCH /vm "), "{}", got[0]);
    assert!(got[1].starts_with("PUT /snapshot/create "), "{}", got[1]);
    assert!(got[1].contains(r#""snapshot_type":"Full""#), "{}", got[1]);
    assert_eq!(snap.state, d.as_path().join("s1/state"));
    assert_eq!(snap.mem, d.as_path().join("s1/mem"));
    assert_eq!(vm.base.as_ref(), Some(&snap));
}

#[test]
fn a_diff_snapshot_needs_a_base() {
    let mut vm = sh("sleep 30", true);
    let d = temp_dir().unwrap();
    let e = vm.snapshot_diff(d.as_path()).unwrap_err();
    assert!(matches!(e, HarnessError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("full snapshot"), "{e}");
}

#[test]
fn a_diff_snapshot_starts_from_a_copy_of_the_base_memory() {
    let mut vm = sh("sleep 30", true);
    let d = temp_dir().unwrap();
    let base = Snapshot::in_dir(&d.as_path().join("base"), None).unwrap();
    let mut page = vec![0u8; 8192];
    page[4096] = 7;
    std::fs::write(&base.mem, &page).unwrap();
    vm.base = Some(base.clone());
    let sock = vm.api_socket().unwrap().to_path_buf();
    let server = fake_server(&sock, &[NO_CONTENT, NO_CONTENT]);
    let snap = vm.snapshot_diff(&d.as_path().join("diff")).unwrap();
    let got = server.join().unwrap();
    assert!(got[1].contains(r#""snapshot_type":"Diff""#), "{}", got[1]);
    assert_eq!(std::fs::read(&snap.mem).unwrap(), page);
    assert_eq!(vm.base.as_ref(), Some(&snap));
}

#[test]
fn same_file_compares_inodes() {
    let d = temp_dir().unwrap();
    let a = d.as_path().join("a");
    std::fs::write(&a, b"x").unwrap();
    let via_dot = d.as_path().join(".").join("a");
    assert!(same_file(&a, &via_dot));
    assert!(!same_file(&a, &d.as_path().join("missing")));
}

#[test]
fn a_vm_without_api_says_how_to_get_one() {
    let mut vm = sh("sleep 30", false);
    let e = vm.pause().unwrap_err();
    assert!(matches!(e, HarnessError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("VmBuilder::api(true)"), "{e}");
}

#[test]
fn kiln_exiting_before_its_socket_is_reported_with_its_log() {
    let mut vm = sh("echo 'error: unexpected argument' >&2; exit 2", true);
    let e = vm.pause().unwrap_err();
    assert!(matches!(e, HarnessError::ApiGone { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("unexpected argument"), "{msg}");
    assert!(msg.contains("exit status: 2"), "{msg}");
}
