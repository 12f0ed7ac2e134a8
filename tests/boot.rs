//! End-to-end boots of the test guest on real KVM, through the same loader paths a
//! Linux kernel takes: ELF via the 64-bit boot protocol, ELF via PVH, and bzImage.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use vmm::config::BootProtocol;
use vmm::VmExit;

const MEM_MIB: u64 = 128;

/// Boots `kernel` with an initrd, 2 vCPUs and expectations on the command line; checks
/// the guest's report, the echoed command line and the exit.
fn boot_and_check(name: &str, kernel: &Path, proto: BootProtocol, entry: &str, mem_mib: u64) {
    let dir = temp_dir(name);
    let initrd = dir.join("initrd.img");
    let data = pattern_bytes(3000 + name.len(), 7);
    std::fs::write(&initrd, &data).unwrap();
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 kiln.ram={} kiln.cpus=2 kiln.initrd_size={} \
         kiln.initrd_fnv={:08x} kiln.expect_entry={entry}",
        e820_ram(mem_mib << 20),
        data.len(),
        fnv1a(&data)
    );
    let vm = vm(kernel)
        .cmdline(cmdline.clone())
        .cpus(2)
        .memory_mib(mem_mib)
        .initrd(&initrd)
        .boot_protocol(proto)
        .spawn()
        .unwrap();
    let out = vm.wait(VM_TIMEOUT).unwrap();
    assert_eq!(
        out.code,
        Some(0),
        "kiln failed: {}\nserial: {:#?}",
        out.log,
        out.serial
    );
    let echoed = format!("KILN-GUEST cmdline={cmdline}");
    assert!(
        out.serial.contains(&echoed),
        "cmdline not echoed exactly: {:#?}",
        out.serial
    );
    assert_checks(&out.serial, 4);
    assert!(
        out.timings.boot_timer_us.is_some(),
        "boot timer not reached: {:?}",
        out.timings
    );
    assert!(
        out.log.contains("boot-timer"),
        "no boot-timer log: {}",
        out.log
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn elf_linux64_boot_protocol() {
    boot_and_check(
        "elf64",
        &guest().elf,
        BootProtocol::Linux64,
        "linux64",
        MEM_MIB,
    );
}

#[test]
fn elf_pvh_entry() {
    boot_and_check("pvh", &guest().elf, BootProtocol::Auto, "pvh", MEM_MIB);
}

#[test]
fn bzimage_format() {
    boot_and_check(
        "bzimage",
        &guest().bzimage,
        BootProtocol::Auto,
        "linux64",
        MEM_MIB,
    );
}

#[test]
fn memory_above_the_mmio_gap() {
    // 3.5 GiB: RAM continues above 4 GiB, the e820 total still counts all of it.
    boot_and_check(
        "himem",
        &guest().elf,
        BootProtocol::Linux64,
        "linux64",
        3584,
    );
}

#[test]
fn minimal_benchmark_guest() {
    // The start-up benchmark's guest: one serial byte, the boot timer, an i8042 reset.
    let out = vm(&guest().min).spawn().unwrap().wait(VM_TIMEOUT).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.log);
    assert_eq!(out.serial, vec!["K".to_string()]);
    let t = &out.timings;
    let (run, timer) = (t.first_kvm_run_us.unwrap(), t.boot_timer_us.unwrap());
    assert!(run <= timer, "{t:?}");
}

#[test]
fn emulation_failure_is_reported() {
    let vm = vm(&guest().elf)
        .cmdline("console=ttyS0 kiln.mode=fault")
        .spawn()
        .unwrap();
    let out = vm.wait(VM_TIMEOUT).unwrap();
    assert!(
        out.serial.iter().any(|l| l == "KILN-GUEST about to fault"),
        "{:#?}",
        out.serial
    );
    assert_eq!(out.code, Some(2), "log: {}", out.log);
    for needle in ["KVM_EXIT_INTERNAL_ERROR", "RIP 0x", "instruction bytes:"] {
        assert!(
            out.log.contains(needle),
            "missing '{needle}' in: {}",
            out.log
        );
    }
    assert!(
        !out.log.contains("(unreadable)"),
        "bytes at RIP unreadable: {}",
        out.log
    );
    if pvm_host() {
        assert!(out.log.contains("PVM"), "no PVM note: {}", out.log);
    }
}

#[test]
fn harness_reports_a_failing_guest() {
    // Child process: waiting for a line that never comes reports the exit and Kiln's log.
    let mut vm = vm(&guest().elf)
        .cmdline("console=ttyS0 kiln.mode=fault")
        .spawn()
        .unwrap();
    let err = vm
        .wait_for("never printed", VM_TIMEOUT)
        .unwrap_err()
        .to_string();
    assert!(err.contains("exited"), "{err}");
    assert!(
        err.contains("KILN-GUEST about to fault"),
        "no serial tail: {err}"
    );
    assert!(
        err.contains("KVM_EXIT_INTERNAL_ERROR"),
        "no exit reason: {err}"
    );
    // In process: the outcome carries the fault itself.
    let out = vm_in_process_fault();
    match out.exit {
        Some(VmExit::GuestFault(f)) => {
            assert_eq!(f.suberror, Some(1), "{f}");
            assert!(!f.insn.is_empty(), "{f}");
        }
        other => panic!("expected a guest fault, got {other:?}: {}", out.log),
    }
    assert_eq!(out.code, Some(2));
}

fn vm_in_process_fault() -> harness::Outcome {
    vm(&guest().elf)
        .cmdline("console=ttyS0 kiln.mode=fault")
        .start_in_process()
        .unwrap()
        .wait(VM_TIMEOUT)
        .unwrap()
}

#[test]
fn sigterm_stops_a_spinning_guest() {
    let mut vm = vm(&guest().elf)
        .cmdline("console=ttyS0 kiln.mode=spin")
        .spawn()
        .unwrap();
    vm.wait_for("KILN-GUEST spinning", VM_TIMEOUT).unwrap();
    let t = std::time::Instant::now();
    let out = vm.stop(Duration::from_secs(10)).unwrap();
    assert_eq!(out.code, Some(128 + 15), "log: {}", out.log);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn serial_input_reaches_the_guest() {
    let mut vm = vm(&guest().elf)
        .cmdline("console=ttyS0 kiln.mode=echo")
        .spawn()
        .unwrap();
    vm.write_serial(b"hello kiln\n").unwrap();
    vm.wait_for("^KILN-ECHO hello kiln$", VM_TIMEOUT).unwrap();
    vm.write_serial(b"quit\n").unwrap();
    let out = vm.wait(VM_TIMEOUT).unwrap();
    assert_eq!(out.code, Some(0), "log: {}", out.log);
}

#[test]
fn in_process_vm_and_harness_timeout() {
    let mut vm = vm(&guest().elf)
        .cmdline("console=ttyS0 kiln.mode=spin")
        .start_in_process()
        .unwrap();
    vm.wait_for("KILN-GUEST spinning", VM_TIMEOUT).unwrap();
    let err = vm
        .wait_for("never printed", Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    assert!(err.contains("timed out"), "{err}");
    assert!(
        err.contains("KILN-GUEST spinning"),
        "no serial tail in: {err}"
    );
    let out = vm.stop(Duration::from_secs(10)).unwrap();
    assert_eq!(out.exit, Some(VmExit::Stopped));
}

#[test]
fn in_process_boot_reports_reset() {
    let vm = vm(&guest().bzimage)
        .cmdline("console=ttyS0 kiln.cpus=1")
        .start_in_process()
        .unwrap();
    let out = vm.wait(VM_TIMEOUT).unwrap();
    assert_eq!(out.exit, Some(VmExit::Reset), "log: {}", out.log);
    assert_checks(&out.serial, 1);
    assert!(out.timings.boot_timer_us.is_some());
}

#[test]
fn parallel_vms_do_not_collide() {
    let vms: Vec<_> = (0..3)
        .map(|i| {
            vm(&guest().elf)
                .cmdline(format!("console=ttyS0 kiln.cpus={} kiln.id={i}", i + 1))
                .cpus(i + 1)
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, vm) in vms.into_iter().enumerate() {
        let out = vm.wait(VM_TIMEOUT).unwrap();
        assert_eq!(out.code, Some(0), "vm {i}: {}", out.log);
        assert!(out
            .serial
            .iter()
            .any(|l| l.contains(&format!("kiln.id={i}"))));
        assert_checks(&out.serial, 1);
    }
}

#[test]
fn config_file_and_serial_file() {
    // A TOML config gives the VM; --serial file=PATH overrides its serial setting.
    let d = temp_dir("cfgfile");
    let cfg = d.join("vm.toml");
    let log = d.join("serial.log");
    std::fs::write(
        &cfg,
        format!(
            "kernel = \"{}\"\ncmdline = \"console=ttyS0 kiln.cpus=2\"\ncpus = 2\n\
             memory = \"64M\"\nserial = \"none\"\n",
            guest().elf.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(kiln_bin())
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--serial")
        .arg(format!("file={}", log.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "serial leaked to stdout");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<String> = text.lines().map(String::from).collect();
    assert_checks(&lines, 1);
    assert!(
        text.contains("size=0x3f00000 type=1"),
        "64M from the file: {text}"
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn kiln_check_reports_the_host() {
    let out = std::process::Command::new(kiln_bin())
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("API version:      12"), "{text}");
    assert!(text.contains("max vCPUs:"), "{text}");
    let pvm = if pvm_host() { "yes" } else { "no" };
    assert!(text.contains(&format!("PVM-backed KVM:   {pvm}")), "{text}");
}
