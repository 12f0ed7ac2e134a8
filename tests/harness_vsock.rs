//! The harness's vsock calls against the test guest (`kiln.mode=vsock`,
//! resources/guest/README.md): `RunningVm::vsock_connect` reaches the guest's echo
//! server, `RunningVm::vsock_listen` takes the guest client's stream, and a port nobody
//! listens on is a clear refusal.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{fnv1a, guest, kiln_bin};
use harness::{HarnessError, VmBuilder};

const T: Duration = Duration::from_secs(120);

fn vsock_vm(cmdline: &str) -> VmBuilder {
    VmBuilder::new(&guest().elf)
        .kiln_binary(kiln_bin())
        .memory_mib(64)
        .cmdline(format!("console=ttyS0 kiln.mode=vsock {cmdline}"))
        .vsock(3)
}

/// Byte `i` of the guest client's stream.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + 3) & 0xff) as u8).collect()
}

#[test]
fn host_to_guest_and_guest_to_host_through_the_harness() {
    let mut vm = vsock_vm("kiln.vsock_port=1234 kiln.vsock_connect=7000 kiln.vsock_bytes=20000")
        .spawn()
        .unwrap();
    assert!(vm.vsock_path().is_some_and(|p| p.ends_with("vsock.sock")));
    // Before the guest's client connects.
    let listener = vm.vsock_listen(7000).unwrap();
    vm.wait_for("KILN-GUEST vsock listening 1234", T).unwrap();
    let mut s = vm.vsock_connect(1234).unwrap();
    s.write_all(b"hello, guest").unwrap();
    let mut back = [0u8; 12];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello, guest");
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (mut c, _) = listener.accept().unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).unwrap();
    assert!(got == pattern(20_000), "the guest's stream differs");
    let line = vm.wait_for("KILN-GUEST vsock sent ", T).unwrap();
    assert_eq!(
        line,
        format!("KILN-GUEST vsock sent 20000 fnv={:08x}", fnv1a(&got))
    );
    let out = vm.wait(T).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.log);
    assert!(out.serial.iter().any(|l| l == "KILN-CHECK vsock ok"));
}

#[test]
fn connecting_to_a_port_the_guest_does_not_listen_on_is_refused() {
    let mut vm = vsock_vm("kiln.vsock_port=1234 kiln.end=spin")
        .spawn()
        .unwrap();
    vm.wait_for("KILN-GUEST vsock listening 1234", T).unwrap();
    let e = vm.vsock_connect(4321).unwrap_err();
    assert!(
        matches!(e, HarnessError::VsockRefused { port: 4321, .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("does not listen on port 4321"),
        "{e}"
    );
    vm.kill().unwrap();
}

#[test]
fn a_vm_without_vsock_says_how_to_get_one() {
    let vm = VmBuilder::new(&guest().elf)
        .kiln_binary(kiln_bin())
        .memory_mib(64)
        .cmdline("console=ttyS0 kiln.mode=spin")
        .spawn()
        .unwrap();
    assert!(vm.vsock_path().is_none());
    let e = vm.vsock_connect(1).unwrap_err();
    assert!(e.to_string().contains("VmBuilder::vsock"), "{e}");
    assert!(matches!(
        vm.vsock_listen(1),
        Err(HarnessError::Unsupported(_))
    ));
    vm.kill().unwrap();
}
