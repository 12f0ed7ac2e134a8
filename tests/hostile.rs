//! A hostile guest against virtio-blk and virtio-net: the test guest's `kiln.mode=hostile`
//! feeds the devices looping and oversized descriptor chains, rings and buffers outside
//! RAM, notify storms, resets in the middle of I/O and malformed register accesses; after
//! each case it resets the device and checks that it still works (blk: a read and a write;
//! net: a TX frame). The host side checks the guest's verdicts, that Kiln's log stayed
//! small, that only the valid writes reached the disk, that two vCPUs hammering one disk
//! at once do no harm, and that SIGTERM still ends a VM whose guest keeps the disk busy.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::net::tap_capable;
use common::*;
use vmm::config::{DiskConfig, NetConfig};

/// Disk of the case run: 4 MiB, so a reset can land among 1 MiB reads.
const SECTORS: u64 = 8192;
/// Disk of the busy run (16 MiB reads, wrapping).
const BUSY_DISK_BYTES: u64 = 32 << 20;
/// What "small" means for Kiln's stderr over a whole hostile run.
const MAX_STDERR_BYTES: usize = 8 << 10;
/// How long SIGTERM may take to end a VM under load.
const SIGTERM_BOUND: Duration = Duration::from_millis(500);

/// Every case of the guest's hostile mode, in the order it runs them.
const CASES: &[&str] = &[
    "chain_loop",
    "chain_too_long",
    "next_oob",
    "next_far",
    "head_oob",
    "head_far",
    "avail_ahead",
    "avail_ahead_event_idx",
    "ring_desc_odd",
    "ring_avail_odd",
    "ring_used_odd",
    "ring_beyond_ram",
    "ring_ram_end",
    "ring_in_mmio",
    "ring_at_zero",
    "ring_unset",
    "buf_beyond_ram",
    "buf_ram_end",
    "buf_in_mmio",
    "buf_wraps",
    "write_from_beyond_ram",
    "huge_len_read",
    "huge_len_write",
    "chain_over_4gib",
    "zero_len_data",
    "zero_len_status",
    "zero_len_only",
    "hdr_beyond_ram",
    "hdr_writable",
    "readable_after_writable",
    "status_read_only",
    "status_read_only_write",
    "storm_missing_queue",
    "storm_idle_queue",
    "reset_mid_io",
    "mmio_narrow",
    "mmio_write_only_reads",
    "mmio_read_only_writes",
    "mmio_beyond_config",
    "config_writes",
    "queue_regs_while_live",
    "status_abuse",
    "unassigned_mmio",
    "unassigned_pio",
];

/// The virtio-net cases (`kiln.hostile=net`), in order.
const NET_CASES: &[&str] = &[
    "net_tx_loop",
    "net_tx_next_oob",
    "net_tx_beyond_ram",
    "net_tx_huge_len",
    "net_tx_short",
    "net_tx_zero_len",
    "net_tx_writable",
    "net_tx_head_oob",
    "net_tx_avail_ahead",
    "net_storm",
    "net_reset_mid_tx",
];

/// Byte `i` of sector `s` as the host prepares the disk.
fn host_byte(s: u64, i: u64) -> u8 {
    ((s * 31 + i * 7 + 1) & 0xff) as u8
}

/// Byte `i` of sector `s` as the guest writes it in its recovery step.
fn guest_byte(s: u64, i: u64) -> u8 {
    ((s * 13 + i * 3 + 0x5a) & 0xff) as u8
}

fn disk(path: &Path) -> DiskConfig {
    DiskConfig {
        path: path.to_path_buf(),
        readonly: false,
        id: None,
        ..Default::default()
    }
}

/// The disk every hostile run starts from: SECTORS sectors of `host_byte`, in `dir`.
fn host_disk(dir: &TestDir) -> std::path::PathBuf {
    let img = dir.join("disk.img");
    let data: Vec<u8> = (0..SECTORS)
        .flat_map(|s| (0..512).map(move |i| host_byte(s, i)))
        .collect();
    std::fs::write(&img, data).expect("writing the disk image");
    img
}

/// What one hostile run left behind.
struct CaseRun {
    code: Option<i32>,
    serial: Vec<String>,
    stderr: String,
    disk: Vec<u8>,
}

/// Boots the guest once in hostile mode (all cases) and keeps what the tests look at.
fn case_run() -> &'static CaseRun {
    static RUN: OnceLock<CaseRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = temp_dir("hostile");
        let img = host_disk(&dir);
        let out = vm(&guest().elf)
            .cmdline("console=ttyS0 kiln.mode=hostile kiln.spin=200000")
            .disk(disk(&img))
            .spawn()
            .expect("starting kiln")
            .wait(VM_TIMEOUT)
            .expect("the hostile guest did not finish");
        CaseRun {
            code: out.code,
            serial: out.serial,
            stderr: out.log,
            disk: std::fs::read(&img).expect("reading the disk image back"),
        }
    })
}

#[test]
fn every_hostile_case_leaves_the_device_usable() {
    let run = case_run();
    assert_eq!(run.code, Some(0), "{}\n{:#?}", run.stderr, run.serial);
    let failed: Vec<&String> = run
        .serial
        .iter()
        .filter(|l| l.starts_with("KILN-CHECK") && !l.ends_with(" ok"))
        .collect();
    assert!(failed.is_empty(), "failed cases: {failed:#?}");
    for case in CASES {
        let line = format!("KILN-CHECK hostile_{case} ok");
        assert!(
            run.serial.contains(&line),
            "missing '{line}': {:#?}",
            run.serial
        );
    }
    let done = format!("KILN-GUEST done ok={} fail=0", CASES.len());
    assert!(run.serial.contains(&done), "no '{done}': {:#?}", run.serial);
}

#[test]
fn hostile_guest_keeps_kiln_stderr_small() {
    let run = case_run();
    assert_finished_with_small_stderr(&run.serial, &run.stderr);
}

/// The guest got to its done line, and Kiln's stderr stayed within the bound.
fn assert_finished_with_small_stderr(serial: &[String], stderr: &str) {
    assert!(
        serial.iter().any(|l| l.starts_with("KILN-GUEST done")),
        "the guest did not finish: {serial:#?}"
    );
    assert!(
        stderr.len() <= MAX_STDERR_BYTES,
        "kiln wrote {} bytes to stderr (at most {MAX_STDERR_BYTES}); first lines:\n{}",
        stderr.len(),
        stderr.lines().take(40).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn disk_holds_exactly_the_valid_writes() {
    let run = case_run();
    let written: BTreeSet<u64> = run
        .serial
        .iter()
        .filter_map(|l| l.strip_prefix("KILN-GUEST hostile wrote sector "))
        .map(|n| n.parse().expect("sector number"))
        .collect();
    assert_eq!(
        written.len(),
        CASES.len(),
        "one valid write per case expected: {:#?}",
        run.serial
    );
    assert_eq!(run.disk.len() as u64, SECTORS * 512, "disk size changed");
    for s in 0..SECTORS {
        for i in 0..512 {
            let want = match written.contains(&s) {
                true => guest_byte(s, i),
                false => host_byte(s, i),
            };
            let got = run.disk[(s * 512 + i) as usize];
            assert_eq!(got, want, "sector {s} byte {i}");
        }
    }
}

/// What the busy run measured.
struct BusyRun {
    code: Option<i32>,
    took: Duration,
    stderr: String,
}

/// Boots the guest in `kiln.hostile=busy` (128 reads of 16 MiB re-posted forever,
/// notifications while it waits), waits until it is busy, sends SIGTERM and times the exit.
fn busy_run() -> &'static BusyRun {
    static RUN: OnceLock<BusyRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = temp_dir("hostile-busy");
        let img = dir.join("disk.img");
        let f = std::fs::File::create(&img).expect("creating the disk image");
        f.set_len(BUSY_DISK_BYTES).expect("sizing the disk image");
        drop(f);
        let mut vm = vm(&guest().elf)
            .cmdline("console=ttyS0 kiln.mode=hostile kiln.hostile=busy")
            .disk(disk(&img))
            .spawn()
            .expect("starting kiln");
        vm.wait_for("^KILN-GUEST hostile busy$", VM_TIMEOUT)
            .expect("the guest never got busy");
        // Let the load run for a moment so the signal lands in the middle of it.
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let out = vm
            .stop(Duration::from_secs(60))
            .expect("kiln did not exit after SIGTERM");
        BusyRun {
            code: out.code,
            took: start.elapsed(),
            stderr: out.log,
        }
    })
}

#[test]
fn sigterm_ends_a_busy_guest_promptly() {
    let run = busy_run();
    assert_eq!(run.code, Some(128 + 15), "{}", run.stderr);
    assert!(
        run.took <= SIGTERM_BOUND,
        "kiln took {:?} to exit after SIGTERM (at most {SIGTERM_BOUND:?})",
        run.took
    );
}

#[test]
fn busy_guest_keeps_kiln_stderr_small() {
    let run = busy_run();
    assert!(
        run.stderr.len() <= MAX_STDERR_BYTES,
        "kiln wrote {} bytes to stderr (at most {MAX_STDERR_BYTES}); first lines:\n{}",
        run.stderr.len(),
        run.stderr.lines().take(40).collect::<Vec<_>>().join("\n")
    );
}

/// Boots the guest with two vCPUs in `kiln.hostile=smp` (vCPU 1, started by INIT/SIPI,
/// storms the device's registers while vCPU 0 reads and checks sectors 0..3); returns
/// (serial, stderr, exit code).
fn smp_run() -> &'static (Vec<String>, String, Option<i32>) {
    static RUN: OnceLock<(Vec<String>, String, Option<i32>)> = OnceLock::new();
    RUN.get_or_init(|| {
        let dir = temp_dir("hostile-smp");
        let img = host_disk(&dir);
        let out = vm(&guest().elf)
            .cmdline("console=ttyS0 kiln.mode=hostile kiln.hostile=smp kiln.spin=200000")
            .cpus(2)
            .disk(disk(&img))
            .spawn()
            .expect("starting kiln")
            .wait(VM_TIMEOUT)
            .expect("the hostile guest did not finish");
        (out.serial, out.log, out.code)
    })
}

#[test]
fn two_vcpus_hammering_the_disk_leave_it_usable() {
    let (serial, log, code) = smp_run();
    assert_eq!(*code, Some(0), "{log}\n{serial:#?}");
    let line = "KILN-CHECK hostile_smp ok".to_string();
    assert!(serial.contains(&line), "missing '{line}': {serial:#?}");
    let done = "KILN-GUEST done ok=1 fail=0".to_string();
    assert!(serial.contains(&done), "no '{done}': {serial:#?}");
}

#[test]
fn two_vcpus_hammering_the_disk_keep_kiln_stderr_small() {
    let (serial, log, _) = smp_run();
    assert_finished_with_small_stderr(serial, log);
}

/// Boots the guest once in `kiln.hostile=net` with a TAP Kiln creates (down, no peer:
/// TX frames only have to be consumed); returns (serial, stderr, exit code).
fn net_run() -> &'static (Vec<String>, String, Option<i32>) {
    static RUN: OnceLock<(Vec<String>, String, Option<i32>)> = OnceLock::new();
    RUN.get_or_init(|| {
        let out = vm(&guest().elf)
            .cmdline("console=ttyS0 kiln.mode=hostile kiln.hostile=net kiln.spin=200000")
            .net(NetConfig {
                tap: harness::unique_tap_name("khn"),
                mac: None,
                ..Default::default()
            })
            .spawn()
            .expect("starting kiln")
            .wait(VM_TIMEOUT)
            .expect("the hostile guest did not finish");
        (out.serial, out.log, out.code)
    })
}

#[test]
fn every_hostile_net_case_leaves_the_device_usable() {
    if !tap_capable() {
        return;
    }
    let (serial, log, code) = net_run();
    assert_eq!(*code, Some(0), "{log}\n{serial:#?}");
    for case in NET_CASES {
        let line = format!("KILN-CHECK hostile_{case} ok");
        assert!(serial.contains(&line), "missing '{line}': {serial:#?}");
    }
    let done = format!("KILN-GUEST done ok={} fail=0", NET_CASES.len());
    assert!(serial.contains(&done), "no '{done}': {serial:#?}");
}

#[test]
fn hostile_net_guest_keeps_kiln_stderr_small() {
    if !tap_capable() {
        return;
    }
    let (serial, log, _) = net_run();
    assert_finished_with_small_stderr(serial, log);
}
