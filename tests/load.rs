//! Load: dozens of VMs at once (minimal guests, test guests doing virtio-blk I/O and, as
//! root, virtio-net I/O through TAPs), all must succeed, and nothing may leak: no kiln
//! process left, no extra fd in this process, no TAP left, no temp file left.
//!
//! `KILN_LOAD_VMS=N` sets the number of minimal guests (default 40); disk guests are one
//! per 7 of them (at least 1), net guests 4. `resources/load-test.sh [N]` runs this test.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use common::net::{tap_capable, EchoPeer, TestTap};
use common::*;
use harness::{Outcome, RunningVm};
use vmm::config::{DiskConfig, NetConfig};

const SECTORS: u64 = 64;
const NET_VMS: usize = 4;

fn counts() -> (usize, usize) {
    let minimal = std::env::var("KILN_LOAD_VMS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    (minimal, minimal.div_ceil(7).max(1))
}

/// Byte `i` of sector `s` as the test guest expects to read it (`blk_read`).
fn host_byte(s: u64, i: u64) -> u8 {
    ((s * 31 + i * 7 + 1) & 0xff) as u8
}

/// Byte `i` of sector `s` as the test guest writes it (sectors 4 and 5).
fn guest_byte(s: u64, i: u64) -> u8 {
    ((s * 13 + i * 3 + 0x5a) & 0xff) as u8
}

fn disk_bytes(guest_wrote: bool) -> Vec<u8> {
    (0..SECTORS)
        .flat_map(|s| {
            (0..512).map(move |i| match guest_wrote && (4..6).contains(&s) {
                true => guest_byte(s, i),
                false => host_byte(s, i),
            })
        })
        .collect()
}

fn open_fds() -> BTreeSet<String> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            Some(format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            ))
        })
        .collect()
}

fn interfaces() -> BTreeSet<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// This process's live child processes (pid and name).
fn children() -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| {
            let status = std::fs::read_to_string(e.ok()?.path().join("status")).ok()?;
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            };
            if field("PPid:")? != me {
                return None;
            }
            Some(format!("{} {}", field("Pid:")?, field("Name:")?))
        })
        .collect()
}

/// Asserts a test-guest run ended well: exit 0, a reset, all checks passed.
fn assert_guest_ok(what: &str, out: &Outcome) {
    assert_eq!(out.code, Some(0), "{what}: {}\n{:#?}", out.log, out.serial);
    let fails: Vec<&String> = out.serial.iter().filter(|l| l.contains(" FAIL")).collect();
    assert!(fails.is_empty(), "{what}: {fails:#?}");
    assert!(
        out.serial
            .iter()
            .any(|l| l.starts_with("KILN-GUEST done ok=") && l.ends_with(" fail=0")),
        "{what}: {:#?}",
        out.serial
    );
}

struct Dirs {
    root: PathBuf,
    tmp: PathBuf,
    disks: PathBuf,
    saved_tmpdir: Option<std::ffi::OsString>,
}

impl Dirs {
    /// A private root with `tmp/` (TMPDIR of this process and its kiln children, so every
    /// temp file the harness or Kiln makes lands there) and `disks/`.
    fn new() -> Self {
        let root = std::env::temp_dir().join(format!("kiln-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (tmp, disks) = (root.join("tmp"), root.join("disks"));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::create_dir_all(&disks).unwrap();
        let saved_tmpdir = std::env::var_os("TMPDIR");
        // This binary has one test: no other thread reads the environment meanwhile.
        std::env::set_var("TMPDIR", &tmp);
        Self {
            root,
            tmp,
            disks,
            saved_tmpdir,
        }
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        match &self.saved_tmpdir {
            Some(v) => std::env::set_var("TMPDIR", v),
            None => std::env::remove_var("TMPDIR"),
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn spawn_disk_vm(disks: &Path, i: usize) -> (PathBuf, RunningVm) {
    let img = disks.join(format!("disk{i}.img"));
    std::fs::write(&img, disk_bytes(false)).unwrap();
    let vm = vm(&guest().elf)
        .cmdline(format!(
            "console=ttyS0 kiln.mode=blk kiln.blk_sectors={SECTORS} kiln.blk_id=load{i}"
        ))
        .memory_mib(32)
        .disk(DiskConfig {
            path: img.clone(),
            readonly: false,
            id: Some(format!("load{i}")),
            ..Default::default()
        })
        .spawn()
        .unwrap();
    (img, vm)
}

#[test]
fn dozens_of_concurrent_vms_succeed_and_leak_nothing() {
    let (minimal, disk) = counts();
    let guest = guest();
    let net = tap_capable();
    let dirs = Dirs::new();
    let ifaces_before = interfaces();
    let fds_before = open_fds();
    let start = Instant::now();

    let taps: Vec<TestTap> = match net {
        true => (0..NET_VMS).map(|_| TestTap::new("kl")).collect(),
        false => Vec::new(),
    };
    let peers: Vec<EchoPeer> = taps.iter().map(|t| EchoPeer::start(&t.0)).collect();
    let mut net_vms = Vec::new();
    for (i, tap) in taps.iter().enumerate() {
        let mac = format!("02:4b:00:00:01:{i:02x}");
        let vm = vm(&guest.elf)
            .cmdline(format!("console=ttyS0 kiln.mode=net kiln.mac={mac}"))
            .memory_mib(32)
            .net(NetConfig {
                tap: tap.0.clone(),
                mac: Some(mac),
                ..Default::default()
            })
            .spawn()
            .unwrap();
        net_vms.push(vm);
    }
    // Minimal guests; as root every fourth also gets a TAP Kiln creates (and must remove).
    let kiln_taps: Vec<String> = (0..minimal)
        .filter(|i| net && i % 4 == 0)
        .map(|_| harness::unique_tap_name("kl"))
        .collect();
    let min_vms: Vec<RunningVm> = (0..minimal)
        .map(|i| {
            let mut b = vm(&guest.min).memory_mib(16);
            if net && i % 4 == 0 {
                b = b.net(NetConfig {
                    tap: kiln_taps[i / 4].clone(),
                    mac: None,
                    ..Default::default()
                });
            }
            b.spawn().unwrap()
        })
        .collect();
    let disk_vms: Vec<(PathBuf, RunningVm)> =
        (0..disk).map(|i| spawn_disk_vm(&dirs.disks, i)).collect();

    for (i, vm) in min_vms.into_iter().enumerate() {
        let out = vm.wait(VM_TIMEOUT).unwrap();
        assert_eq!(out.code, Some(0), "minimal VM {i}: {}", out.log);
        assert_eq!(out.serial, vec!["K".to_string()], "minimal VM {i}");
    }
    for (i, (img, vm)) in disk_vms.into_iter().enumerate() {
        let out = vm.wait(VM_TIMEOUT).unwrap();
        assert_guest_ok(&format!("disk VM {i}"), &out);
        assert!(out
            .serial
            .contains(&"KILN-CHECK blk_readback ok".to_string()));
        let data = std::fs::read(&img).unwrap();
        assert!(
            data == disk_bytes(true),
            "disk VM {i}: disk contents differ"
        );
    }
    for (i, vm) in net_vms.into_iter().enumerate() {
        let out = vm.wait(VM_TIMEOUT).unwrap();
        assert_guest_ok(&format!("net VM {i}"), &out);
        assert!(out.serial.contains(&"KILN-CHECK net_rx ok".to_string()));
    }
    let echoed: usize = peers.into_iter().map(EchoPeer::stop).sum();
    let elapsed = start.elapsed();
    drop(taps);
    if !net {
        eprintln!("skipped: net guests (need root and a TAP)");
    } else {
        assert!(echoed >= 4 * NET_VMS, "peers echoed {echoed} frames");
    }

    assert_eq!(children(), Vec::<String>::new(), "processes left behind");
    assert_eq!(open_fds(), fds_before, "fds leaked in the test process");
    assert_eq!(
        interfaces(),
        ifaces_before,
        "network interfaces left behind"
    );
    let left: Vec<PathBuf> = std::fs::read_dir(&dirs.tmp)
        .unwrap()
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    assert!(left.is_empty(), "temp files left behind: {left:?}");
    eprintln!(
        "load: {minimal} minimal + {disk} disk + {} net VMs concurrently in {:.1} s",
        if net { NET_VMS } else { 0 },
        elapsed.as_secs_f64()
    );
}
