//! Bad input: every case gives one clear error line naming the problem and the fix,
//! a non-zero exit, and leaves nothing running.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

fn kiln(args: &[&str]) -> Output {
    Command::new(kiln_bin())
        .arg("run")
        .args(args)
        .args(["--serial", "none"])
        .output()
        .expect("running kiln")
}

/// Asserts a failed run whose error mentions every needle.
fn assert_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("kiln: error: "), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "'{n}' not in: {err}");
    }
}

fn elf() -> String {
    guest().elf.display().to_string()
}

#[test]
fn missing_kernel_file() {
    let out = kiln(&["--kernel", "/nonexistent/vmlinux"]);
    assert_error(&out, &["/nonexistent/vmlinux"]);
}

#[test]
fn kernel_not_given() {
    assert_error(&kiln(&[]), &["no kernel", "--kernel"]);
}

#[test]
fn unreadable_kernel() {
    // A directory cannot be read as a file, even by root.
    let d = temp_dir("unreadable");
    let out = kiln(&["--kernel", d.to_str().unwrap()]);
    assert_error(&out, &[d.to_str().unwrap()]);
}

fn bad_kernel(name: &str, bytes: &[u8], needles: &[&str]) {
    let d = temp_dir(name);
    let k = d.join("kernel");
    std::fs::write(&k, bytes).unwrap();
    let out = kiln(&["--kernel", k.to_str().unwrap()]);
    let mut all = vec![k.to_str().unwrap()];
    all.extend_from_slice(needles);
    assert_error(&out, &all);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn empty_kernel() {
    bad_kernel("empty", b"", &["empty"]);
}

#[test]
fn random_bytes_kernel() {
    bad_kernel("random", &pattern_bytes(8192, 3), &["bzImage"]);
}

#[test]
fn truncated_elf_kernel() {
    let full = std::fs::read(&guest().elf).unwrap();
    bad_kernel("trunc-elf", &full[..100], &[]);
    bad_kernel("trunc-elf2", &full[..full.len() / 2], &[]);
}

#[test]
fn truncated_bzimage_kernel() {
    let full = std::fs::read(&guest().bzimage).unwrap();
    bad_kernel("trunc-bz", &full[..0x300], &[]);
}

#[test]
fn initrd_too_large_for_memory() {
    let d = temp_dir("bigrd");
    let rd = d.join("initrd");
    std::fs::File::create(&rd)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let out = kiln(&[
        "--kernel",
        &elf(),
        "--initrd",
        rd.to_str().unwrap(),
        "--memory",
        "64M",
    ]);
    assert_error(&out, &["initrd", "--memory"]);
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn missing_initrd() {
    let out = kiln(&["--kernel", &elf(), "--initrd", "/nonexistent/initrd"]);
    assert_error(&out, &["/nonexistent/initrd"]);
}

#[test]
fn command_line_too_long() {
    let long = format!("console=ttyS0 {}", "x".repeat(70_000));
    let out = kiln(&["--kernel", &elf(), "--cmdline", &long]);
    assert_error(&out, &["command line"]);
}

#[test]
fn memory_zero_unparseable_and_too_large() {
    let out = kiln(&["--kernel", &elf(), "--memory", "0"]);
    assert_error(&out, &["--memory"]);
    // clap reports parse errors itself; the status is 1 as for every configuration
    // error (2 means the guest hit something KVM could not run).
    let out = kiln(&["--kernel", &elf(), "--memory", "lots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("invalid size 'lots'"), "{err}");
    let out = kiln(&["--kernel", &elf(), "--memory", "100000G"]);
    assert_error(&out, &["host", "--memory"]);
}

#[test]
fn cpus_zero_and_too_many() {
    assert_error(&kiln(&["--kernel", &elf(), "--cpus", "0"]), &["--cpus"]);
    assert_error(&kiln(&["--kernel", &elf(), "--cpus", "5000"]), &["--cpus"]);
}

#[test]
fn bad_config_file() {
    let d = temp_dir("badcfg");
    let f = d.join("vm.json");
    std::fs::write(&f, r#"{"kernel": "/k", "cpuz": 2}"#).unwrap();
    assert_error(
        &kiln(&["--config", f.to_str().unwrap()]),
        &["vm.json", "cpuz"],
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn kvm_device_missing() {
    let out = Command::new(kiln_bin())
        .args(["run", "--kernel", &elf(), "--serial", "none"])
        .env("KILN_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .unwrap();
    assert_error(&out, &["/dev/kvm not found", "modprobe"]);
    let out = Command::new(kiln_bin())
        .arg("check")
        .env("KILN_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn kvm_device_not_permitted() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run kiln as an unprivileged user");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let meta = std::fs::metadata(Path::new("/dev/kvm")).unwrap();
    if meta.permissions().mode() & 0o006 != 0 {
        eprintln!("skipped: /dev/kvm is world-accessible here");
        return;
    }
    // The checkout may sit where an unprivileged user cannot reach it (e.g. under
    // /root): run a copy of the binary from a world-readable temp dir.
    let d = temp_dir("noperm");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = d.join("kiln");
    std::fs::copy(kiln_bin(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = output_of_copied_binary(
        Command::new(&bin)
            .args(["run", "--kernel", &elf(), "--serial", "none"])
            .current_dir("/")
            .uid(65534)
            .gid(65534),
    );
    assert_error(&out, &["permission denied", "kvm"]);
    std::fs::remove_dir_all(d).unwrap();
}

/// Runs `kiln run ARGS --serial none` and kills it if it has not ended within 20 s
/// (start-up must never block on a bad input).
fn kiln_within_20s(args: &[&str]) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = Command::new(kiln_bin())
        .arg("run")
        .args(args)
        .args(["--serial", "none"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kiln");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kiln {args:?} still running after 20 s: start-up blocked");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = Vec::new();
    if let Some(mut e) = child.stderr.take() {
        e.read_to_end(&mut stderr).unwrap();
    }
    Output {
        status,
        stdout: Vec::new(),
        stderr,
    }
}

/// Asserts exactly one line on stderr.
fn assert_one_line(out: &Output) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn disk_fifo_is_refused_without_blocking() {
    let d = temp_dir("disk-fifo");
    let fifo = d.join("fifo");
    mkfifo(&fifo);
    for opts in [",readonly=on", ""] {
        let disk = format!("path={}{opts}", fifo.display());
        let out = kiln_within_20s(&["--kernel", &elf(), "--disk", &disk]);
        assert_error(&out, &[fifo.to_str().unwrap(), "FIFO", "regular file"]);
        assert_one_line(&out);
    }
}

#[test]
fn disk_directory_is_refused() {
    let d = temp_dir("disk-dir");
    for opts in [",readonly=on", ""] {
        let disk = format!("path={}{opts}", d.display());
        let out = kiln_within_20s(&["--kernel", &elf(), "--disk", &disk]);
        assert_error(&out, &[d.to_str().unwrap(), "a directory", "regular file"]);
        assert_one_line(&out);
    }
}

#[test]
fn disk_character_device_is_refused() {
    let out = kiln_within_20s(&["--kernel", &elf(), "--disk", "path=/dev/null"]);
    assert_error(&out, &["/dev/null", "character device", "regular file"]);
    assert_one_line(&out);
}

#[test]
fn config_file_mac_is_validated() {
    let d = temp_dir("cfg-mac");
    let tap = harness::unique_tap_name("km");
    let f = d.join("vm.toml");
    std::fs::write(
        &f,
        format!(
            "kernel = \"{}\"\n[[nets]]\ntap = \"{tap}\"\nmac = \"02:00:00:00:00\"\n",
            elf()
        ),
    )
    .unwrap();
    let out = kiln_within_20s(&["--config", f.to_str().unwrap()]);
    assert_error(&out, &["02:00:00:00:00", &tap, "AA:BB:CC:DD:EE:FF"]);
    assert_one_line(&out);
    assert!(
        !Path::new(&format!("/sys/class/net/{tap}")).exists(),
        "TAP {tap} created for an invalid config"
    );
}

#[test]
fn memory_not_page_aligned() {
    let out = kiln_within_20s(&["--kernel", &elf(), "--memory", "2049K"]);
    assert_error(&out, &["4 KiB", "--memory 2048K"]);
    assert_one_line(&out);
}
