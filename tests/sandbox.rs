//! Kiln confines itself: every thread of a running `kiln run` has its seccomp filter
//! and no_new_privs, and the VM still boots, does disk I/O and stops on SIGTERM.

mod common;

use std::process::{Child, Command};

use common::*;

/// `(thread name, Seccomp:, NoNewPrivs:)` for every thread of `pid`.
fn threads(pid: u32) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((field("Name:"), field("Seccomp:"), field("NoNewPrivs:")));
    }
    out.sort();
    out
}

/// Starts the test guest with a disk, spinning after its checks; returns the child once
/// the guest says it spins (every thread exists by then).
fn spinning_vm(dir: &TestDir, seccomp: &str) -> Child {
    let disk = dir.as_ref().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut cmd = Command::new(kiln_bin());
    cmd.args(["run", "--kernel"])
        .arg(&guest().elf)
        .args([
            "--cmdline",
            "console=ttyS0 kiln.end=spin",
            "--seccomp",
            seccomp,
        ])
        .arg("--disk")
        .arg(format!("path={}", disk.display()));
    spawn_until_line(&mut cmd, "KILN-GUEST spinning")
}

fn stop(mut child: Child) -> Option<i32> {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap().code()
}

#[test]
fn every_thread_is_filtered_and_has_no_new_privs() {
    let dir = temp_dir("sandbox-on");
    let child = spinning_vm(&dir, "on");
    let t = threads(child.id());
    assert_eq!(stop(child), Some(128 + libc::SIGTERM), "{t:?}");
    let names: Vec<&str> = t.iter().map(|(n, _, _)| n.as_str()).collect();
    assert!(
        names.contains(&"kiln-vcpu0") && names.contains(&"kiln-blk0"),
        "{names:?}"
    );
    for (name, seccomp, nnp) in &t {
        assert_eq!(seccomp, "2", "thread {name} is not filtered: {t:?}");
        assert_eq!(nnp, "1", "thread {name} lacks no_new_privs: {t:?}");
    }
}

#[test]
fn seccomp_off_installs_no_filter() {
    let dir = temp_dir("sandbox-off");
    let child = spinning_vm(&dir, "off");
    let t = threads(child.id());
    assert_eq!(stop(child), Some(128 + libc::SIGTERM));
    assert!(t.iter().all(|(_, s, _)| s == "0"), "{t:?}");
}

#[test]
fn bad_seccomp_level_is_a_usage_error() {
    let out = Command::new(kiln_bin())
        .args(["run", "--kernel", "x", "--seccomp", "strict"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("possible values: on, log, off"), "{err}");
}

#[test]
fn started_as_root_every_thread_drops_its_capabilities() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("needs root to check that Kiln drops root's capabilities");
        return;
    }
    let dir = temp_dir("sandbox-caps");
    let child = spinning_vm(&dir, "on");
    let pid = child.id();
    let caps: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("status")).unwrap())
        .map(|s| {
            let f = |k: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .unwrap()
                    .trim()
                    .to_string()
            };
            format!("{} eff={} prm={}", f("Name:"), f("CapEff:"), f("CapPrm:"))
        })
        .collect();
    assert_eq!(stop(child), Some(128 + libc::SIGTERM));
    for c in &caps {
        assert!(
            c.ends_with("eff=0000000000000000 prm=0000000000000000"),
            "{caps:?}"
        );
    }
}

/// Skips (prints why) outside CI; fails under CI=true, where the environment is given.
fn skip_or_fail(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but {why}"
    );
    eprintln!("skipped: {why}");
}

#[test]
fn runs_as_an_unprivileged_user_with_only_kvm_access() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_or_fail("needs root to set up an unprivileged user's /dev/kvm access");
        return;
    }
    const NOBODY: u32 = 65534;
    let dir = temp_dir("sandbox-user");
    let d = dir.as_ref();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The user's own KVM device node (same major/minor as /dev/kvm), so the test grants
    // access without touching the host's /dev/kvm.
    let kvm = d.join("kvm");
    let path = std::ffi::CString::new(kvm.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mknod/chown on a path in our own temp dir.
    unsafe {
        assert_eq!(
            libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(10, 232)),
            0
        );
        assert_eq!(libc::chown(path.as_ptr(), NOBODY, NOBODY), 0);
    }
    // Binary, kernel and disk where the user can reach them (the checkout may not be).
    let bin = d.join("kiln");
    std::fs::copy(kiln_bin(), &bin).unwrap();
    let kernel = d.join("guest.elf");
    std::fs::copy(&guest().elf, &kernel).unwrap();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    for p in [&bin, &kernel] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let disk_c = std::ffi::CString::new(disk.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: chown on a file in our own temp dir.
    assert_eq!(unsafe { libc::chown(disk_c.as_ptr(), NOBODY, NOBODY) }, 0);
    let out = output_of_copied_binary(
        Command::new(&bin)
            .args(["run", "--kernel"])
            .arg(&kernel)
            .args(["--cmdline", "console=ttyS0"])
            .arg("--disk")
            .arg(format!("path={}", disk.display()))
            .env("KILN_KVM_DEVICE", &kvm)
            .current_dir("/")
            .uid(NOBODY)
            .gid(NOBODY),
    );
    let serial = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(serial.contains("KILN-GUEST done"), "{serial}");
}
