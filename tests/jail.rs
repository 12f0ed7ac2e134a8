//! `kiln run --jail`: the jailed Kiln sees only what its VM needs, runs as the given
//! user in its own PID namespace, joins a cgroup, still boots with a disk and a TAP,
//! answers SIGTERM through its supervisor, and leaves the jail directory empty.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::*;

const NOBODY: u32 = 65534;

fn root_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but not root: the jail tests need root"
    );
    eprintln!("skipped: --jail needs root");
    false
}

fn chown(p: &Path, uid: u32) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: chown on a path of our own temp dir.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), uid, uid) }, 0);
}

/// A world-readable work dir with an empty jail, the kernel and a disk the user owns.
struct Setup {
    _dir: TestDir,
    jail: PathBuf,
    kernel: PathBuf,
    disk: PathBuf,
}

fn setup(name: &str) -> Setup {
    let dir = temp_dir(name);
    let d = dir.as_ref().to_path_buf();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let jail = d.join("jail");
    std::fs::create_dir(&jail).unwrap();
    let kernel = d.join("guest.elf");
    std::fs::copy(&guest().elf, &kernel).unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o644)).unwrap();
    let disk = d.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    chown(&disk, NOBODY);
    Setup {
        _dir: dir,
        jail,
        kernel,
        disk,
    }
}

/// Starts a jailed, spinning test guest; returns the supervisor once the guest spins.
fn spawn_jailed(s: &Setup, extra: &[String]) -> Child {
    let mut cmd = Command::new(kiln_bin());
    cmd.arg("run")
        .arg("--jail")
        .arg(&s.jail)
        .args(["--uid", "65534", "--gid", "65534", "--kernel"])
        .arg(&s.kernel)
        .args(["--cmdline", "console=ttyS0 kiln.end=spin", "--disk"])
        .arg(format!("path={}", s.disk.display()))
        .args(extra);
    spawn_until_line(&mut cmd, "KILN-GUEST spinning")
}

/// The jailed Kiln: the supervisor's only child.
fn jailed_pid(supervisor: &Child) -> u32 {
    let pid = supervisor.id();
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    kids.split_whitespace().next().unwrap().parse().unwrap()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn stop(mut supervisor: Child) -> Option<i32> {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(supervisor.id() as i32, libc::SIGTERM) };
    supervisor.wait().unwrap().code()
}

#[test]
fn jailed_kiln_sees_only_its_files_and_runs_as_the_user() {
    if !root_or_skip() {
        return;
    }
    let s = setup("jail");
    // A persistent TAP the jailed user may open (it cannot create one).
    let tap = harness::unique_tap_name("kj");
    let made = Command::new("ip")
        .args([
            "tuntap", "add", "dev", &tap, "mode", "tap", "user", "65534", "vnet_hdr",
        ])
        .status()
        .unwrap();
    assert!(made.success(), "creating TAP {tap}");
    let sup = spawn_jailed(&s, &["--net".into(), format!("tap={tap}")]);
    let pid = jailed_pid(&sup);
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let seen = (
        listing(&root),
        listing(&root.join("dev")),
        listing(&root.join("dev/net")),
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let code = stop(sup);
    let _ = Command::new("ip").args(["link", "del", &tap]).status();
    assert_eq!(code, Some(128 + libc::SIGTERM));
    assert_eq!(seen.0, ["dev", "disk0", "kernel", "proc"]);
    assert_eq!(seen.1, ["kvm", "net"]);
    assert_eq!(seen.2, ["tun"]);
    assert!(
        status.contains("Uid:\t65534\t65534\t65534\t65534"),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.ends_with("\t1")),
        "{status}"
    );
    assert!(status.contains("Seccomp:\t2"), "{status}");
    assert!(
        listing(&s.jail).is_empty(),
        "jail left {:?}",
        listing(&s.jail)
    );
}

#[test]
fn jailed_kiln_joins_the_cgroup() {
    if !root_or_skip() {
        return;
    }
    let base = Path::new("/sys/fs/cgroup/unified");
    let base = if base.join("cgroup.procs").exists() {
        base
    } else {
        Path::new("/sys/fs/cgroup")
    };
    let cg = base.join(format!("kiln-test-{}", std::process::id()));
    if std::fs::create_dir(&cg).is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot create a cgroup under {}",
            base.display()
        );
        eprintln!("skipped: cannot create a cgroup under {}", base.display());
        return;
    }
    let s = setup("jail-cg");
    let sup = spawn_jailed(&s, &["--cgroup".into(), cg.display().to_string()]);
    let pid = jailed_pid(&sup);
    let member = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    let code = stop(sup);
    let _ = std::fs::remove_dir(&cg);
    assert_eq!(code, Some(128 + libc::SIGTERM));
    assert!(
        member.lines().any(|l| l == pid.to_string()),
        "{member} lacks {pid}"
    );
}

#[test]
fn jail_directory_must_be_empty() {
    if !root_or_skip() {
        return;
    }
    let s = setup("jail-full");
    std::fs::write(s.jail.join("stray"), b"x").unwrap();
    let out = Command::new(kiln_bin())
        .arg("run")
        .arg("--jail")
        .arg(&s.jail)
        .arg("--kernel")
        .arg(&s.kernel)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not empty") && err.contains("empty directory"),
        "{err}"
    );
    assert_eq!(listing(&s.jail), ["stray"]);
}

#[test]
fn uid_without_jail_is_a_usage_error() {
    let out = Command::new(kiln_bin())
        .args(["run", "--kernel", "x", "--uid", "1", "--gid", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jail"));
}
