//! The harness's pause / snapshot / restore API against the test guest in snapshot mode
//! (`kiln.mode=snap`, resources/guest/README.md): a restored VM goes on counting exactly
//! where the snapshot was taken, a paused restore stays silent until resumed, a diff
//! snapshot on top of a full one restores the later state, and in-process VMs refuse.

mod common;

use std::time::Duration;

use common::{guest, temp_dir};
use harness::{HarnessError, RunningVm};

const T: Duration = Duration::from_secs(60);
const SNAP: &str = "console=ttyS0 reboot=k panic=1 kiln.mode=snap";

/// The guest's `sum` for line `n`: FNV-1a 64 over the little-endian bytes of 1..=n.
fn snap_sum(n: u64) -> u64 {
    let mut s = 0xcbf2_9ce4_8422_2325u64;
    for k in 1..=n {
        for b in k.to_le_bytes() {
            s = (s ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    s
}

/// `n` of a `KILN-GUEST snap <n> sum=<hex> mem=<m>` line, checking `sum` and `m`;
/// `None` for the guest's other lines.
fn count_of(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("KILN-GUEST snap ")?;
    let mut parts = rest.split(' ');
    let n: u64 = parts.next()?.parse().ok()?;
    let sum = parts.next().and_then(|p| p.strip_prefix("sum="));
    let mem = parts.next().and_then(|p| p.strip_prefix("mem="));
    assert_eq!(
        sum,
        Some(format!("{:016x}", snap_sum(n)).as_str()),
        "bad sum: {line:?}"
    );
    assert_eq!(mem, Some(n.to_string().as_str()), "bad mem count: {line:?}");
    assert_eq!(parts.next(), None, "trailing text: {line:?}");
    Some(n)
}

/// The counts in `lines`, checked to run 1, 2, 3, ... without a gap or a repeat.
fn counts(lines: &[String]) -> Vec<u64> {
    assert!(
        !lines.iter().any(|l| l.starts_with("KILN-CHECK snap FAIL")),
        "the guest found a fault: {lines:#?}"
    );
    let nums: Vec<u64> = lines.iter().filter_map(|l| count_of(l)).collect();
    let want: Vec<u64> = (1..=nums.len() as u64).collect();
    assert_eq!(nums, want, "counts not consecutive: {lines:#?}");
    nums
}

/// The serial lines of a VM followed by those of its restore. A snapshot may fall
/// inside a line: the original's last line is then the first part and the restored
/// VM's first line the rest (every line of the guest starts with `KILN-`).
fn join(before: &[String], after: &[String]) -> Vec<String> {
    let mut all = before.to_vec();
    let mut rest = after;
    if let (Some(last), Some(first)) = (all.last_mut(), after.first()) {
        if !first.starts_with("KILN-") {
            last.push_str(first);
            rest = &after[1..];
        }
        let trimmed = last.trim_end_matches('\r').len();
        last.truncate(trimmed);
    }
    all.extend_from_slice(rest);
    all
}

/// A snapshot-mode guest with the API on.
fn snap_vm(track_dirty_pages: bool) -> RunningVm {
    common::vm(&guest().elf)
        .cmdline(SNAP)
        .memory_mib(32)
        .api(true)
        .track_dirty_pages(track_dirty_pages)
        .spawn()
        .expect("spawning the snapshot guest")
}

fn line_pattern(n: u64) -> String {
    format!("^KILN-GUEST snap {n} ")
}

/// Kills `vm` and returns its serial lines; the last count it printed.
fn kill(vm: RunningVm) -> (Vec<String>, u64) {
    let serial = vm.kill().expect("killing the VM").serial;
    let last = counts(&serial).last().copied().unwrap_or(0);
    (serial, last)
}

#[test]
fn a_restored_vm_counts_on_from_the_snapshot() {
    let dir = temp_dir("hsnap-cont");
    let mut vm = snap_vm(false);
    vm.wait_for(&line_pattern(3), T).unwrap();
    let snap = vm.snapshot(&dir.join("s")).unwrap();
    assert_eq!(vm.vm_state().unwrap(), "Paused");
    assert!(snap.state.is_file() && snap.mem.is_file(), "{snap:?}");
    let (before, last) = kill(vm);
    assert!(last >= 3, "{before:#?}");

    let mut restored = snap.restore().spawn().unwrap();
    restored.wait_for(&line_pattern(last + 3), T).unwrap();
    let after = restored.kill().unwrap().serial;
    let all = join(&before, &after);
    assert!(counts(&all).len() as u64 >= last + 3, "{all:#?}");
}

#[test]
fn a_paused_restore_is_silent_until_resumed() {
    let dir = temp_dir("hsnap-paused");
    let mut vm = snap_vm(false);
    vm.wait_for(&line_pattern(2), T).unwrap();
    let snap = vm.snapshot(&dir.join("s")).unwrap();
    let (before, last) = kill(vm);

    let mut restored = snap.restore().resume(false).api(true).spawn().unwrap();
    assert_eq!(restored.vm_state().unwrap(), "Paused");
    // Running, the guest prints a line every ~100 ms here.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(restored.serial_lines(), Vec::<String>::new());
    restored.resume().unwrap();
    assert_eq!(restored.vm_state().unwrap(), "Running");
    restored.wait_for(&line_pattern(last + 2), T).unwrap();
    let after = restored.kill().unwrap().serial;
    counts(&join(&before, &after));
}

#[test]
fn a_diff_snapshot_restores_the_later_state() {
    let dir = temp_dir("hsnap-diff");
    let mut vm = snap_vm(true);
    vm.wait_for(&line_pattern(2), T).unwrap();
    let full = vm.snapshot(&dir.join("full")).unwrap();
    vm.resume().unwrap();
    let (i, _) = vm.wait_for_from(&line_pattern(5), 0, T).unwrap();
    let diff = vm.snapshot_diff(&dir.join("diff")).unwrap();
    assert_ne!(diff.mem, full.mem);
    let (before, last) = kill(vm);
    assert!(last >= 5, "line {i}: {before:#?}");

    let mut restored = diff.restore().spawn().unwrap();
    restored.wait_for(&line_pattern(last + 2), T).unwrap();
    let after = restored.kill().unwrap().serial;
    counts(&join(&before, &after));
}

#[test]
fn in_process_vms_have_no_api() {
    let dir = temp_dir("hsnap-inproc");
    let mut vm = common::vm(&guest().elf)
        .cmdline(SNAP)
        .memory_mib(32)
        .start_in_process()
        .unwrap();
    for e in [
        vm.pause().unwrap_err(),
        vm.snapshot(&dir.join("s")).unwrap_err(),
    ] {
        assert!(matches!(e, HarnessError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains("in this process"), "{e}");
    }
    vm.stop(T).unwrap();
}

#[test]
fn join_mends_a_line_split_by_the_snapshot() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let line = |n: u64| format!("KILN-GUEST snap {n} sum={:016x} mem={n}", snap_sum(n));
    let (l1, l2, l3) = (line(1), line(2), line(3));
    let (head, tail) = l2.split_at(20);
    assert_eq!(
        join(&s(&[&l1, head]), &s(&[tail, &l3])),
        s(&[&l1, &l2, &l3])
    );
    assert_eq!(join(&s(&[&l1, &l2]), &s(&[&l3])), s(&[&l1, &l2, &l3]));
    // Split between "\r" and "\n": the restore starts with an empty line.
    let cr = format!("{l2}\r");
    assert_eq!(join(&s(&[&l1, &cr]), &s(&["", &l3])), s(&[&l1, &l2, &l3]));
}

#[test]
fn sums_are_the_guests() {
    assert_eq!(format!("{:016x}", snap_sum(1)), "89cd31291d2aefa4");
    assert_eq!(format!("{:016x}", snap_sum(2)), "7717980363c8e066");
}
