//! Shared helpers for Kiln's integration tests: guest artifacts and the harness.
#![allow(dead_code)]

pub mod api;
pub mod net;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use harness::VmBuilder;
use vmm_sys_util::tempdir::TempDir;

/// Repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The `kiln` binary under test.
pub fn kiln_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kiln")
}

/// Generous per-VM timeout: guests run in the host's emulator here.
pub const VM_TIMEOUT: Duration = Duration::from_secs(120);

/// The test-guest images, built on first use by `resources/build-guest.sh`.
pub struct Guest {
    /// ELF (vmlinux-style, with a PVH note).
    pub elf: PathBuf,
    /// bzImage format.
    pub bzimage: PathBuf,
    /// The minimal PVH guest of the start-up benchmarks.
    pub min: PathBuf,
}

/// Builds (if needed) and returns the test guest.
pub fn guest() -> &'static Guest {
    static GUEST: OnceLock<Guest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let out = repo().join("resources/out/guest");
        let status = Command::new("bash")
            .arg(repo().join("resources/build-guest.sh"))
            .arg(&out)
            .status()
            .expect("running resources/build-guest.sh");
        assert!(status.success(), "building the test guest failed");
        Guest {
            elf: out.join("kiln-test-guest.elf"),
            bzimage: out.join("kiln-test-guest.bzImage"),
            min: out.join("kiln-min.elf"),
        }
    })
}

/// A builder for `kernel` using the kiln binary under test.
pub fn vm(kernel: &Path) -> VmBuilder {
    VmBuilder::new(kernel).kiln_binary(kiln_bin())
}

/// RAM the e820 map reports for `mem` bytes: all of it minus the legacy hole
/// 0x9fc00..0x100000 (the MMIO gap is not part of guest memory).
pub fn e820_ram(mem: u64) -> u64 {
    mem - (0x10_0000 - 0x9_fc00)
}

/// 32-bit FNV-1a, as the test guest computes it.
pub fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A test's own temp dir: a fresh `mkdtemp` directory, removed when the value is dropped,
/// so a test leaves nothing behind even when it fails half-way.
pub struct TestDir(TempDir);

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.as_path()
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        self.0.as_path()
    }
}

/// A unique temp dir for one test (`kiln-test-<name>-XXXXXX`), removed on drop.
pub fn temp_dir(name: &str) -> TestDir {
    let prefix = std::env::temp_dir().join(format!("kiln-test-{name}-"));
    TestDir(TempDir::new_with_prefix(prefix).expect("creating temp dir"))
}

/// Deterministic pseudo-random bytes.
pub fn pattern_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Asserts every `KILN-CHECK` line is `ok`, that there are `n` of them, and that the
/// guest reported done with no failures.
pub fn assert_checks(serial: &[String], n: usize) {
    let checks: Vec<&String> = serial
        .iter()
        .filter(|l| l.starts_with("KILN-CHECK"))
        .collect();
    let failed: Vec<&&String> = checks.iter().filter(|l| !l.ends_with(" ok")).collect();
    assert!(
        failed.is_empty(),
        "guest checks failed: {failed:#?}\nserial: {serial:#?}"
    );
    assert_eq!(checks.len(), n, "expected {n} checks, serial: {serial:#?}");
    let done = format!("KILN-GUEST done ok={n} fail=0");
    assert!(
        serial.iter().any(|l| l == &done),
        "no '{done}' line: {serial:#?}"
    );
}

/// Whether this host's KVM is PVM-backed.
pub fn pvm_host() -> bool {
    vmm::host::is_pvm_host()
}

/// Spawns `cmd` with stdout piped and returns once it printed the line `line`; the rest
/// of its output is drained on a thread, so the child never meets a closed pipe.
pub fn spawn_until_line(cmd: &mut Command, line: &str) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning kiln");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l == line => break,
            Some(Ok(_)) => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no {line:?} line: {other:?}");
            }
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// `cmd.output()`, retried while exec fails with ETXTBSY: a binary the test just copied
/// can still be open for writing in a child that another test thread forked meanwhile
/// (until that child execs and its close-on-exec descriptors go).
pub fn output_of_copied_binary(cmd: &mut Command) -> std::process::Output {
    for _ in 0..100 {
        match cmd.output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.expect("running the copied kiln"),
        }
    }
    panic!("the copied kiln stayed busy (ETXTBSY) for 2 s");
}
