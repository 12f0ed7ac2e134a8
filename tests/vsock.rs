//! virtio-vsock through real KVM exits, with Firecracker's host side: a host program
//! connects to the Unix socket, writes `CONNECT <port>`, gets `OK <port>` and talks to
//! the test guest's echo server; the guest connects to host port P, which Kiln forwards
//! to the Unix socket `<uds>_<P>`, and streams more than the advertised buffers hold.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::api::ApiVm;
use common::{guest, kiln_bin, temp_dir};

const T: Duration = Duration::from_secs(60);

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + 3) & 0xff) as u8).collect()
}

/// Connects to the vsock socket once Kiln has created it.
fn connect(path: &Path) -> UnixStream {
    let deadline = Instant::now() + T;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("{}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// `CONNECT port` on the hybrid socket; returns the stream after the `OK` line.
fn vsock_connect(uds: &Path, port: u32) -> (UnixStream, String) {
    let mut s = connect(uds);
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone().unwrap());
    r.read_line(&mut line).unwrap();
    (s, line)
}

fn spawn_guest(uds: &Path, cmdline: &str) -> Child {
    Command::new(kiln_bin())
        .args(["run", "--memory", "64", "--kernel"])
        .arg(&guest().elf)
        .args(["--cmdline", cmdline, "--vsock"])
        .arg(format!("cid=3,uds={}", uds.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn host_connects_to_the_guest_and_guest_connects_to_the_host() {
    let dir = temp_dir("vsock-both");
    let uds = dir.join("v.sock");
    let listener = UnixListener::bind(dir.join("v.sock_7000")).unwrap();
    let child = spawn_guest(
        &uds,
        "console=ttyS0 kiln.mode=vsock kiln.vsock_port=1234 kiln.vsock_connect=7000 kiln.vsock_bytes=600000",
    );
    // Host → guest: the echo server. Retried until the guest listens.
    let deadline = Instant::now() + T;
    let (mut s, ok) = loop {
        let (s, ok) = vsock_connect(&uds, 1234);
        if ok.starts_with("OK ") || Instant::now() > deadline {
            break (s, ok);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(ok.starts_with("OK ") && ok.ends_with('\n'), "{ok:?}");
    let data = pattern(100_000);
    let mut back = vec![0u8; data.len()];
    let reader = {
        let mut r = s.try_clone().unwrap();
        std::thread::spawn(move || r.read_exact(&mut back).map(|()| back))
    };
    s.write_all(&data).unwrap();
    let back = reader.join().unwrap().expect("the echo");
    assert!(back == data, "echoed bytes differ");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // Guest → host: 600 000 bytes, more than twice the 256 KiB Kiln advertises.
    listener.set_nonblocking(false).unwrap();
    let (mut c, _) = listener.accept().unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 600_000);
    assert!(got == pattern(600_000), "the guest's stream differs");
    let out = child.wait_with_output().unwrap();
    let serial = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(serial.contains("KILN-CHECK vsock ok"), "{serial}");
    assert!(serial.contains("echo closed bytes=100000"), "{serial}");
    assert!(!uds.exists(), "the vsock socket was left behind");
}

#[test]
fn connect_to_a_port_nobody_listens_on_is_refused() {
    let dir = temp_dir("vsock-refused");
    let uds = dir.join("v.sock");
    let mut child = spawn_guest(
        &uds,
        "console=ttyS0 kiln.mode=vsock kiln.vsock_port=1234 kiln.end=spin",
    );
    let (mut s, line) = vsock_connect(&uds, 4321);
    // No OK: the guest answers RST, the host stream is closed.
    assert!(!line.starts_with("OK"), "{line:?}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    // A malformed CONNECT line is refused the same way.
    let mut s = connect(&uds);
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"HELLO\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).starts_with("OK"));
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn put_vsock_configures_it_through_the_api() {
    let vm = ApiVm::spawn("vsock-api", &[]);
    let uds = vm.dir.join("v.sock");
    let m = vm.fault("PUT", "/vsock", r#"{"guest_cid":2,"uds_path":"/x"}"#);
    assert!(m.contains("reserved"), "{m}");
    let body = serde_json::json!({"guest_cid": 3, "uds_path": uds});
    vm.ok("PUT", "/vsock", &body.to_string());
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":64}"#,
    );
    vm.boot_source(
        &guest().elf,
        "console=ttyS0 kiln.mode=vsock kiln.vsock_port=1234 kiln.end=spin",
    );
    vm.start();
    assert!(
        vm.wait_serial("KILN-GUEST vsock listening 1234", T),
        "{}",
        vm.serial()
    );
    let (mut s, ok) = vsock_connect(&uds, 1234);
    assert!(ok.starts_with("OK "), "{ok:?}");
    s.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    assert_eq!(vm.get("/vm/config")["vsock"]["guest_cid"], 3);
}

#[test]
fn a_restored_guest_is_told_its_connections_are_gone() {
    let mut vm = ApiVm::spawn("vsock-snap", &[]);
    let uds = vm.dir.join("v.sock");
    vm.ok(
        "PUT",
        "/vsock",
        &serde_json::json!({"guest_cid": 3, "uds_path": uds}).to_string(),
    );
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":64}"#,
    );
    vm.boot_source(
        &guest().elf,
        "console=ttyS0 kiln.mode=vsock kiln.vsock_port=1234",
    );
    vm.start();
    assert!(
        vm.wait_serial("KILN-GUEST vsock listening 1234", T),
        "{}",
        vm.serial()
    );
    vm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let (state, mem) = (vm.dir.join("state"), vm.dir.join("mem"));
    let body = serde_json::json!({"snapshot_path": state, "mem_file_path": mem});
    vm.ok("PUT", "/snapshot/create", &body.to_string());
    vm.kill();
    let args = [
        "--snapshot",
        state.to_str().unwrap(),
        "--mem",
        mem.to_str().unwrap(),
        "--resume",
    ];
    let restored = ApiVm::spawn_in(
        temp_dir("vsock-snap-restore"),
        kiln_bin().as_ref(),
        &["restore"],
        &args,
    );
    assert!(
        restored.wait_serial("KILN-GUEST vsock event id=0", T),
        "{}",
        restored.serial()
    );
    // The restored device serves new connections: the guest, still listening, echoes.
    let (mut s, ok) = vsock_connect(&uds, 1234);
    assert!(ok.starts_with("OK "), "{ok:?}: {}", restored.serial());
    s.write_all(b"again").unwrap();
    let mut back = [0u8; 5];
    let r = s.read_exact(&mut back);
    assert!(r.is_ok(), "{r:?}: {}", restored.serial());
    assert_eq!(&back, b"again");
}
