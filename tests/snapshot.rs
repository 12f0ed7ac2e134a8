//! Snapshots end to end with the test guest's `snap` mode (a counter in a register and
//! in memory, a running checksum, disk writes and reads, some in flight when paused):
//! pause, snapshot, kill, restore in a fresh process (API and CLI), continue exactly;
//! clones; diff snapshots; and every bad-snapshot case refused with one clear line.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::api::ApiVm;
use common::{guest, kiln_bin, temp_dir};

const T: Duration = Duration::from_secs(60);

/// The checksum the guest prints on line `n` (FNV-1a over the little-endian counters).
fn snap_sum(n: u64) -> u64 {
    let mut s: u64 = 0xcbf2_9ce4_8422_2325;
    for k in 1..=n {
        for i in 0..8 {
            s ^= (k >> (8 * i)) & 0xff;
            s = s.wrapping_mul(0x0100_0000_01b3);
        }
    }
    s
}

/// Checks a serial stream of `snap` lines: consecutive counters from 1, each with its
/// checksum and memory copy, no failure. Returns the last counter.
fn check_stream(out: &str) -> u64 {
    assert!(!out.contains("FAIL"), "{out}");
    // Only complete lines: the guest may be in the middle of one.
    let out = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
    let mut last = 0;
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("KILN-GUEST snap ") else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let (Some(n), Some(sum), Some(mem)) = (f.first(), f.get(1), f.get(2)) else {
            continue; // start, nodisk, blk lines
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        assert_eq!(n, last + 1, "line {line:?} after {last}:\n{out}");
        assert_eq!(*sum, format!("sum={:016x}", snap_sum(n)), "{line}");
        assert_eq!(*mem, format!("mem={n}"), "{line}");
        last = n;
    }
    last
}

/// Waits until the guest has finished `n` disk cycles (`snap blk <k> ok` lines).
fn wait_blk_oks(vm: &ApiVm, n: usize) -> bool {
    let deadline = std::time::Instant::now() + T;
    while std::time::Instant::now() < deadline {
        let s = vm.serial();
        let oks = s
            .lines()
            .filter(|l| l.starts_with("KILN-GUEST snap blk ") && l.ends_with(" ok"))
            .count();
        if oks >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Boots the snap guest with a disk through the API, lets it run, pauses it and writes
/// a snapshot into the VM's directory; returns the paused VM and `(state, mem, disk)`.
fn snapshotted(name: &str, extra_machine: &str) -> (ApiVm, PathBuf, PathBuf, PathBuf) {
    let vm = ApiVm::spawn(name, &[]);
    let disk = vm.dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 1024]).unwrap();
    vm.ok(
        "PUT",
        "/machine-config",
        &format!(r#"{{"vcpu_count":1,"mem_size_mib":32{extra_machine}}}"#),
    );
    vm.boot_source(&guest().elf, "console=ttyS0 kiln.mode=snap kiln.every=6000");
    let d = serde_json::json!({"drive_id":"data","path_on_host":disk,"is_root_device":false,"cache_type":"Writeback"});
    vm.ok("PUT", "/drives/data", &d.to_string());
    vm.start();
    assert!(wait_blk_oks(&vm, 2), "{}", vm.serial());
    let m = vm.fault(
        "PUT",
        "/snapshot/create",
        r#"{"snapshot_path":"/x","mem_file_path":"/y"}"#,
    );
    assert!(m.contains("not paused"), "{m}");
    vm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let (state, mem) = (vm.dir.join("state"), vm.dir.join("mem"));
    let body = serde_json::json!({"snapshot_path": state, "mem_file_path": mem});
    vm.ok("PUT", "/snapshot/create", &body.to_string());
    (vm, state, mem, disk)
}

/// `kiln restore` with `args`: (status code, stderr).
fn restore_output(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(kiln_bin())
        .arg("restore")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_snapshot_loaded_in_a_fresh_process_continues_exactly() {
    let (mut vm, state, mem, _disk) = snapshotted("snap-api", "");
    let before = vm.serial();
    let last = check_stream(&before);
    // Holes stay holes: far less allocated than the guest's 32 MiB.
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&mem).unwrap();
    assert_eq!(m.len(), 32 << 20);
    assert!(
        m.blocks() * 512 < 8 << 20,
        "{} bytes allocated",
        m.blocks() * 512
    );
    // Kill the original: the snapshot must stand on its own.
    vm.kill();
    let fresh = ApiVm::spawn_in(
        common::temp_dir("snap-api-load"),
        kiln_bin().as_ref(),
        &["api"],
        &[],
    );
    let load = serde_json::json!({
        "snapshot_path": state,
        "mem_backend": {"backend_type": "File", "backend_path": mem},
        "resume_vm": true,
    });
    fresh.ok("PUT", "/snapshot/load", &load.to_string());
    assert_eq!(fresh.get("/")["state"], "Running");
    let want = format!("KILN-GUEST snap {} sum=", last + 6);
    assert!(fresh.wait_serial(&want, T), "{}", fresh.serial());
    assert!(wait_blk_oks(&fresh, 1), "{}", fresh.serial());
    let end = check_stream(&format!("{before}{}", fresh.serial()));
    assert!(end >= last + 6, "{end}");
    // The API knows the restored VM's configuration.
    assert_eq!(fresh.get("/vm/config")["drives"][0]["drive_id"], "data");
    let m = fresh.fault("PUT", "/snapshot/load", &load.to_string());
    assert!(m.contains("after starting"), "{m}");
}

#[test]
fn kiln_restore_waits_paused_until_resumed() {
    let (mut vm, state, mem, _disk) = snapshotted("snap-cli", "");
    let before = vm.serial();
    vm.kill();
    let args = ["--snapshot", p(&state), "--mem", p(&mem)];
    let restored = ApiVm::spawn_in(
        temp_dir("snap-cli-restore"),
        kiln_bin().as_ref(),
        &["restore"],
        &args,
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(restored.get("/")["state"], "Paused");
    assert!(
        !restored.serial().contains("KILN-GUEST snap"),
        "{}",
        restored.serial()
    );
    restored.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    let last = check_stream(&before);
    assert!(
        restored.wait_serial(&format!("KILN-GUEST snap {} sum=", last + 4), T),
        "{}",
        restored.serial()
    );
    check_stream(&format!("{before}{}", restored.serial()));
    // Snapshotting into the memory file the restored VM runs from is refused (it would
    // pull the guest's memory from under it), and the VM carries on.
    restored.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let body = serde_json::json!({"snapshot_path": restored.dir.join("s2"), "mem_file_path": mem});
    let m = restored.fault("PUT", "/snapshot/create", &body.to_string());
    assert!(m.contains("memory"), "{m}");
    restored.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    let now = check_stream(&format!("{before}{}", restored.serial()));
    let next = format!("KILN-GUEST snap {} sum=", now + 2);
    assert!(restored.wait_serial(&next, T), "{}", restored.serial());
}

#[test]
fn two_clones_from_one_snapshot_run_side_by_side_on_their_own_disks() {
    let (mut vm, state, mem, disk) = snapshotted("snap-clones", "");
    let before = vm.serial();
    vm.kill();
    let last = check_stream(&before);
    let clones: Vec<ApiVm> = (0..2)
        .map(|i| {
            let dir = temp_dir(&format!("snap-clone{i}"));
            let copy = dir.join("disk.img");
            std::fs::copy(&disk, &copy).unwrap();
            let d = format!("0={}", copy.display());
            let args = [
                "--snapshot",
                p(&state),
                "--mem",
                p(&mem),
                "--resume",
                "--disk",
                &d,
            ];
            ApiVm::spawn_in(dir, kiln_bin().as_ref(), &["restore"], &args)
        })
        .collect();
    for c in &clones {
        assert!(wait_blk_oks(c, 2), "{}", c.serial());
        assert!(check_stream(&format!("{before}{}", c.serial())) > last);
    }
    // Each clone wrote its own copy; the original disk saw nothing after the snapshot.
    let orig = std::fs::read(&disk).unwrap();
    for c in &clones {
        assert_ne!(std::fs::read(c.dir.join("disk.img")).unwrap(), orig);
    }
}

#[test]
fn a_diff_snapshot_over_a_copy_of_the_full_one_restores_the_later_state() {
    let (mut vm, state, mem, _disk) = snapshotted("snap-diff", r#","track_dirty_pages":true"#);
    let first = check_stream(&vm.serial());
    vm.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    assert!(
        vm.wait_serial(&format!("KILN-GUEST snap {} sum=", first + 5), T),
        "{}",
        vm.serial()
    );
    vm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    let before = vm.serial();
    let mem2 = vm.dir.join("mem2");
    std::fs::copy(&mem, &mem2).unwrap();
    let state2 = vm.dir.join("state2");
    let body =
        serde_json::json!({"snapshot_type":"Diff","snapshot_path":state2,"mem_file_path":mem2});
    vm.ok("PUT", "/snapshot/create", &body.to_string());
    assert!(std::fs::read(&state).unwrap() != std::fs::read(&state2).unwrap());
    let dir = temp_dir("snap-diff-restore");
    let args = ["--snapshot", p(&state2), "--mem", p(&mem2), "--resume"];
    vm.kill();
    let restored = ApiVm::spawn_in(dir, kiln_bin().as_ref(), &["restore"], &args);
    let last = check_stream(&before);
    assert!(
        restored.wait_serial(&format!("KILN-GUEST snap {} sum=", last + 4), T),
        "{}",
        restored.serial()
    );
    check_stream(&format!("{before}{}", restored.serial()));
}

#[test]
fn a_diff_snapshot_needs_dirty_page_tracking() {
    let (vm, _state, mem, _disk) = snapshotted("snap-diff-untracked", "");
    let body = serde_json::json!({"snapshot_type":"Diff","snapshot_path":vm.dir.join("s2"),"mem_file_path":mem});
    let m = vm.fault("PUT", "/snapshot/create", &body.to_string());
    assert!(m.contains("track_dirty_pages"), "{m}");
}

#[test]
fn bad_snapshots_are_refused_with_one_clear_line() {
    let (mut vm, state, mem, disk) = snapshotted("snap-bad", "");
    vm.kill();
    let dir = temp_dir("snap-bad-cases");
    let good = std::fs::read(&state).unwrap();
    let case = |name: &str, bytes: &[u8]| {
        let f = dir.join(name);
        std::fs::write(&f, bytes).unwrap();
        f
    };
    let mut corrupt = good.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x20;
    let mut newer = good.clone();
    newer[8..12].copy_from_slice(&999u32.to_le_bytes());
    let cases = [
        (case("truncated", &good[..good.len() / 2]), "truncated"),
        (case("corrupt", &corrupt), "corrupted"),
        (case("text", b"hello, world\n"), "not a Kiln snapshot"),
        (case("newer", &newer), "newer"),
    ];
    for (file, expect) in &cases {
        let (code, err) = restore_output(&["--snapshot", p(file), "--mem", p(&mem), "--resume"]);
        assert_eq!(code, Some(1), "{expect}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{expect}: {err}");
    }
    // A memory file of the wrong size.
    let short = dir.join("short-mem");
    std::fs::write(&short, vec![0u8; 4096]).unwrap();
    let (code, err) = restore_output(&["--snapshot", p(&state), "--mem", p(&short), "--resume"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("memory file") && err.contains("4096"), "{err}");
    // The disk resized, then missing.
    std::fs::write(&disk, vec![0u8; 128 * 1024]).unwrap();
    let (code, err) = restore_output(&["--snapshot", p(&state), "--mem", p(&mem), "--resume"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("capacity") && err.contains(p(&disk)), "{err}");
    std::fs::remove_file(&disk).unwrap();
    let (code, err) = restore_output(&["--snapshot", p(&state), "--mem", p(&mem), "--resume"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(p(&disk)), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn snapshot_load_refuses_bad_requests_and_a_configured_process() {
    let vm = ApiVm::spawn("snap-load-bad", &[]);
    let m = vm.fault(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path":"/nonexistent/state","mem_backend":{"backend_type":"File","backend_path":"/nonexistent/mem"}}"#,
    );
    assert!(m.contains("/nonexistent/state"), "{m}");
    let m = vm.fault(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"Uffd","backend_path":"/u"}}"#,
    );
    assert!(m.contains("Uffd"), "{m}");
    let m = vm.fault("PUT", "/snapshot/load", r#"{"snapshot_path":"/s"}"#);
    assert!(m.contains("mem_backend"), "{m}");
    vm.boot_source(&guest().elf, "console=ttyS0");
    let m = vm.fault(
        "PUT",
        "/snapshot/load",
        r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"}}"#,
    );
    assert!(m.contains("fresh process"), "{m}");
    assert_eq!(vm.get("/")["state"], "Not started");
}
