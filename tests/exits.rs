//! How a VM ends, as Kiln reports it: a triple fault apart from a guest reset, and the
//! serial console's output going away (closed pipe) or failing (full disk).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vmm::exit::ExitKind;
use vmm::VmExit;

fn triple_fault_cmdline() -> &'static str {
    "console=ttyS0 kiln.mode=fault kiln.fault=triple"
}

#[test]
fn triple_fault_has_its_own_exit_status_and_kind() {
    let out = vm(&guest().elf)
        .cmdline(triple_fault_cmdline())
        .spawn()
        .unwrap()
        .wait(VM_TIMEOUT)
        .unwrap();
    assert!(
        out.serial.iter().any(|l| l == "KILN-GUEST about to fault"),
        "{:#?}",
        out.serial
    );
    assert_eq!(out.code, Some(3), "log: {}", out.log);
    assert_eq!(out.kind, Some(ExitKind::TripleFault), "{:?}", out.timings);
    assert_eq!(out.timings.exit_kind, Some(ExitKind::TripleFault));
    let lines: Vec<&str> = out.log.lines().filter(|l| l.contains("triple")).collect();
    assert_eq!(lines.len(), 1, "log: {}", out.log);
    assert!(
        lines[0].starts_with("kiln: error: vCPU 0 triple-faulted"),
        "{}",
        lines[0]
    );
}

#[test]
fn triple_fault_in_process_is_its_own_exit() {
    let out = vm(&guest().elf)
        .cmdline(triple_fault_cmdline())
        .start_in_process()
        .unwrap()
        .wait(VM_TIMEOUT)
        .unwrap();
    assert!(
        matches!(out.exit, Some(VmExit::TripleFault { vcpu: 0, .. })),
        "{:?}: {}",
        out.exit,
        out.log
    );
    assert_eq!(out.code, Some(3));
    assert_eq!(out.kind, Some(ExitKind::TripleFault));
}

#[test]
fn guest_reset_is_reported_as_a_reset() {
    let out = vm(&guest().min).spawn().unwrap().wait(VM_TIMEOUT).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.log);
    assert_eq!(out.kind, Some(ExitKind::Reset), "{:?}", out.timings);
}

/// Waits up to `VM_TIMEOUT` for `child`; kills it and fails on timeout.
fn wait_child(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + VM_TIMEOUT;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kiln did not exit within {VM_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_string(&mut s).unwrap();
    }
    s
}

#[test]
fn closed_stdout_stops_the_vm_with_status_141() {
    let d = temp_dir("epipe");
    let timings = d.join("timings.json");
    let mut child = Command::new(kiln_bin())
        .args(["run", "--kernel", guest().elf.to_str().unwrap()])
        .args(["--cmdline", "console=ttyS0 kiln.mode=echo"])
        .arg("--timings")
        .arg(&timings)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read until the guest waits for input, then close the read end, as `| head` does.
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("KILN-GUEST echo ready") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "stdout closed early");
    }
    drop(out);
    // Each line makes the guest write: the first write finds no reader.
    let mut stdin = child.stdin.take().unwrap();
    for _ in 0..3 {
        if stdin.write_all(b"more output please\n").is_err() {
            break;
        }
    }
    let status = wait_child(&mut child);
    let err = stderr_of(&mut child);
    assert_eq!(status.code(), Some(141), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.contains("EPIPE"), "{err}");
    let t = vmm::timings::RunTimings::parse(&std::fs::read_to_string(&timings).unwrap());
    assert_eq!(t.exit_kind, Some(ExitKind::OutputClosed), "{t:?}");
}

#[test]
fn full_serial_file_logs_once_and_the_vm_runs_on() {
    let mut child = Command::new(kiln_bin())
        .args(["run", "--kernel", guest().elf.to_str().unwrap()])
        .args(["--cmdline", "console=ttyS0 kiln.cpus=1"])
        .args(["--serial", "file=/dev/full"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child);
    let err = stderr_of(&mut child);
    // The guest printed many lines and still reached its reset: exit 0.
    assert_eq!(status.code(), Some(0), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("dropping further output"), "{err}");
}
