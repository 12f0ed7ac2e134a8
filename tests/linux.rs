//! Real Linux through Kiln.
//!
//! `debian_kernel_early_boot`: Debian's cloud kernel (fetched by
//! `resources/linux/fetch-all.sh`) boots with `earlyprintk=ttyS0`; its banner, the exact
//! command line and an e820 map matching the configured memory must appear. On a
//! PVM-backed host the kernel then stops in the host's emulator and Kiln must report
//! the emulation failure; on hardware KVM it must reach the initramfs.
//!
//! `full_linux_boot`: boots `KILN_TEST_KERNEL` (and `KILN_TEST_INITRD`, default: the
//! busybox initramfs) to an init that prints a marker and reboots.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn linux_dir() -> PathBuf {
    repo().join("resources/out/linux")
}

/// The Debian artifacts, or `None` (skip) when not fetched outside CI.
fn debian_artifacts() -> Option<(PathBuf, PathBuf)> {
    let (k, rd) = (
        linux_dir().join("vmlinux"),
        linux_dir().join("initramfs.cpio.gz"),
    );
    if k.exists() && rd.exists() {
        return Some((k, rd));
    }
    assert!(
        std::env::var("CI").is_err(),
        "CI must fetch the Debian kernel first: run resources/linux/fetch-all.sh"
    );
    eprintln!(
        "skipped: {} missing; run resources/linux/fetch-all.sh",
        k.display()
    );
    None
}

/// The e820 lines Linux prints for Kiln's map of `mem` bytes (below the MMIO gap).
fn expected_e820(mem: u64) -> Vec<String> {
    vec![
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable".to_string(),
        "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved".to_string(),
        format!(
            "BIOS-e820: [mem 0x0000000000100000-0x{:016x}] usable",
            mem - 1
        ),
    ]
}

fn early_boot(kernel_is_elf: bool) {
    let Some((vmlinux, initrd)) = debian_artifacts() else {
        return;
    };
    let kernel = if kernel_is_elf {
        vmlinux
    } else {
        linux_dir().join("vmlinuz")
    };
    let mem_mib = 256;
    let cmdline = "console=ttyS0 earlyprintk=ttyS0 reboot=k panic=1 kiln.marker=early";
    let mut vm = vm(&kernel)
        .cmdline(cmdline)
        .memory_mib(mem_mib)
        .cpus(2)
        .initrd(&initrd)
        .spawn()
        .unwrap();
    let timeout = Duration::from_secs(600);
    vm.wait_for(r"Linux version \d+\.\d+", timeout).unwrap();
    vm.wait_for(
        &format!("Command line: {}$", regex_escape(cmdline)),
        timeout,
    )
    .unwrap();
    for line in expected_e820(mem_mib << 20) {
        vm.wait_for(&regex_escape(&line), timeout).unwrap();
    }
    // Both vCPUs found through Kiln's ACPI MADT (Debian's cloud kernel has no MP-table parser).
    vm.wait_for("ACPI: Using ACPI \\(MADT\\) for SMP", timeout)
        .unwrap();
    vm.wait_for("smpboot: Allowing 2 CPUs", timeout).unwrap();
    if pvm_host() {
        let out = vm.wait(timeout).unwrap();
        assert_eq!(
            out.code,
            Some(2),
            "expected an emulation failure; log: {}",
            out.log
        );
        assert!(out.log.contains("KVM_EXIT_INTERNAL_ERROR"), "{}", out.log);
        assert!(out.log.contains("PVM"), "{}", out.log);
    } else {
        vm.wait_for("KILN-LINUX init reached", timeout).unwrap();
        let out = vm.wait(timeout).unwrap();
        assert_eq!(out.code, Some(0), "{}", out.log);
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$' => {
                vec!['\\', c]
            }
            _ => vec![c],
        })
        .collect()
}

#[test]
fn debian_kernel_early_boot_elf() {
    early_boot(true);
}

#[test]
fn debian_kernel_early_boot_bzimage() {
    // The bzImage's own decompressor runs first (about 30 s more under emulation).
    early_boot(false);
}

#[test]
fn full_linux_boot() {
    let Some(kernel) = std::env::var_os("KILN_TEST_KERNEL") else {
        eprintln!("skipped: set KILN_TEST_KERNEL (and optionally KILN_TEST_INITRD) to a kernel that boots fully on this host");
        return;
    };
    let initrd = std::env::var_os("KILN_TEST_INITRD")
        .map(PathBuf::from)
        .unwrap_or_else(|| linux_dir().join("initramfs.cpio.gz"));
    let mut vm = vm(PathBuf::from(kernel).as_path())
        .cmdline("console=ttyS0 reboot=k panic=1 quiet")
        .memory_mib(256)
        .initrd(&initrd)
        .spawn()
        .unwrap();
    vm.wait_for("KILN-LINUX init reached", Duration::from_secs(120))
        .unwrap();
    let out = vm.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(out.code, Some(0), "{}", out.log);
}
