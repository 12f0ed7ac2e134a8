//! virtio-blk and virtio-net end to end: the test guest drives Kiln's devices through
//! their registers and split rings over real KVM exits (ioeventfds, irqfds); the host
//! side checks the disk files and plays the network peer on a TAP.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::net::{tap_capable, EchoPeer, TestTap};
use common::*;
use vmm::config::{DiskConfig, NetConfig};

const SECTORS: u64 = 64;

/// Byte `i` of sector `s` as the host prepares it.
fn host_byte(s: u64, i: u64) -> u8 {
    ((s * 31 + i * 7 + 1) & 0xff) as u8
}

/// Byte `i` of sector `s` as the guest writes it (sectors 4 and 5).
fn guest_byte(s: u64, i: u64) -> u8 {
    ((s * 13 + i * 3 + 0x5a) & 0xff) as u8
}

fn make_disk(path: &Path) {
    let data: Vec<u8> = (0..SECTORS)
        .flat_map(|s| (0..512).map(move |i| host_byte(s, i)))
        .collect();
    std::fs::write(path, data).unwrap();
}

fn assert_disk(path: &Path, guest_wrote: bool) {
    let data = std::fs::read(path).unwrap();
    assert_eq!(data.len() as u64, SECTORS * 512, "disk size changed");
    for s in 0..SECTORS {
        for i in 0..512 {
            let want = match guest_wrote && (4..6).contains(&s) {
                true => guest_byte(s, i),
                false => host_byte(s, i),
            };
            let got = data[(s * 512 + i) as usize];
            assert_eq!(got, want, "{}: sector {s} byte {i}", path.display());
        }
    }
}

fn blk_cmdline() -> String {
    format!("console=ttyS0 kiln.mode=blk kiln.blk_sectors={SECTORS} kiln.blk_id=kilndisk0")
}

fn disk(path: &Path, readonly: bool, id: Option<&str>) -> DiskConfig {
    DiskConfig {
        path: path.to_path_buf(),
        readonly,
        id: id.map(String::from),
        ..Default::default()
    }
}

fn assert_guest_ok(serial: &[String]) {
    let fails: Vec<&String> = serial.iter().filter(|l| l.contains(" FAIL")).collect();
    assert!(
        fails.is_empty(),
        "guest checks failed: {fails:#?}\n{serial:#?}"
    );
    assert!(
        serial
            .iter()
            .any(|l| l.starts_with("KILN-GUEST done ok=") && l.ends_with(" fail=0")),
        "{serial:#?}"
    );
}

#[test]
fn block_read_write_flush_id_and_readonly() {
    let d = temp_dir("blk");
    let (rw, ro) = (d.join("rw.img"), d.join("ro.img"));
    make_disk(&rw);
    make_disk(&ro);
    let out = vm(&guest().elf)
        .cmdline(blk_cmdline())
        .disk(disk(&rw, false, Some("kilndisk0")))
        .disk(disk(&ro, true, None))
        .spawn()
        .unwrap()
        .wait(VM_TIMEOUT)
        .unwrap();
    assert_eq!(out.code, Some(0), "{}\n{:#?}", out.log, out.serial);
    assert_guest_ok(&out.serial);
    for name in [
        "blk_read",
        "blk_write",
        "blk_flush",
        "blk_readback",
        "blk_id",
        "blk_eof",
    ] {
        let line = format!("KILN-CHECK {name} ok");
        assert!(
            out.serial.contains(&line),
            "missing '{line}': {:#?}",
            out.serial
        );
    }
    for name in ["blk_ro_feature", "blk_ro_write", "blk_ro_read", "blk_irq"] {
        let line = format!("KILN-CHECK {name} ok");
        assert!(
            out.serial.contains(&line),
            "missing '{line}': {:#?}",
            out.serial
        );
    }
    assert_disk(&rw, true);
    assert_disk(&ro, false);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn flushed_writes_survive_sigkill() {
    let d = temp_dir("blk-kill");
    let rw = d.join("rw.img");
    make_disk(&rw);
    let mut vm = vm(&guest().elf)
        .cmdline(format!("{} kiln.end=spin", blk_cmdline()))
        .disk(disk(&rw, false, Some("kilndisk0")))
        .spawn()
        .unwrap();
    vm.wait_for("^KILN-CHECK blk_flush ok$", VM_TIMEOUT)
        .unwrap();
    vm.wait_for("^KILN-GUEST spinning$", VM_TIMEOUT).unwrap();
    // The VMM is still running: SIGKILL it, no clean shutdown.
    let out = vm.kill().unwrap();
    assert_eq!(out.code, None, "kiln was not killed by the signal");
    assert_disk(&rw, true);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn disk_errors_leave_nothing_behind() {
    let d = temp_dir("blk-err");
    let missing = d.join("missing.img");
    let out = Command::new(kiln_bin())
        .args([
            "run",
            "--kernel",
            guest().elf.to_str().unwrap(),
            "--serial",
            "none",
        ])
        .arg("--disk")
        .arg(format!("path={}", missing.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(missing.to_str().unwrap()), "{err}");
    assert!(!missing.exists(), "kiln created the missing disk");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn net_frames_round_trip_through_a_tap() {
    if !tap_capable() {
        return;
    }
    let tap = TestTap::new("kt");
    let peer = EchoPeer::start(&tap.0);
    let mac = "02:4b:00:00:00:07";
    let out = vm(&guest().elf)
        .cmdline(format!(
            "console=ttyS0 kiln.mode=net kiln.mac={mac} kiln.net_frames=8"
        ))
        .net(NetConfig {
            tap: tap.0.clone(),
            mac: Some(mac.into()),
            ..Default::default()
        })
        .spawn()
        .unwrap()
        .wait(VM_TIMEOUT)
        .unwrap();
    let echoed = peer.stop();
    assert_eq!(out.code, Some(0), "{}\n{:#?}", out.log, out.serial);
    assert_guest_ok(&out.serial);
    for name in ["net_mac", "net_tx", "net_rx"] {
        let line = format!("KILN-CHECK {name} ok");
        assert!(
            out.serial.contains(&line),
            "missing '{line}': {:#?}",
            out.serial
        );
    }
    assert!(echoed >= 8, "peer echoed {echoed} frames");
    // The TAP existed before Kiln: Kiln must leave it in place.
    assert!(Path::new(&format!("/sys/class/net/{}", tap.0)).exists());
}

#[test]
fn tap_created_by_kiln_is_removed_on_exit_and_on_error() {
    if !tap_capable() {
        return;
    }
    let name = harness::unique_tap_name("kc");
    let sys = PathBuf::from(format!("/sys/class/net/{name}"));
    let mut vm = vm(&guest().elf)
        .cmdline("console=ttyS0 kiln.mode=spin")
        .net(NetConfig {
            tap: name.clone(),
            mac: None,
            ..Default::default()
        })
        .spawn()
        .unwrap();
    vm.wait_for("KILN-GUEST spinning", VM_TIMEOUT).unwrap();
    assert!(sys.exists(), "Kiln did not create TAP {name}");
    let out = vm.stop(Duration::from_secs(10)).unwrap();
    assert_eq!(out.code, Some(143));
    assert!(!sys.exists(), "TAP {name} left behind after exit");
    // A later device fails to attach (the same TAP twice): the first TAP goes too.
    let out = Command::new(kiln_bin())
        .args([
            "run",
            "--kernel",
            guest().elf.to_str().unwrap(),
            "--serial",
            "none",
        ])
        .args([
            "--net",
            &format!("tap={name}"),
            "--net",
            &format!("tap={name}"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sys.exists(), "TAP {name} left behind after an error");
}
