//! `kiln bench` as an installed binary runs it: from a directory outside the repository,
//! with the minimal guest built into the binary, leaving no files behind.

use std::process::Command;

use vmm_sys_util::tempdir::TempDir;

#[test]
fn bench_runs_the_built_in_guest_from_any_directory() {
    if std::fs::metadata("/dev/kvm").is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no /dev/kvm (CI=true)"
        );
        eprintln!("skipped: no /dev/kvm");
        return;
    }
    // The bench's own temp files go under TMPDIR: a fresh directory that must stay empty.
    let cwd = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-bench-cwd-")).unwrap();
    let tmp = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-bench-tmp-")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["bench", "--runs", "2", "--warmup", "0"])
        .args(["--no-container", "--no-baseline"])
        .current_dir(cwd.as_path())
        .env("TMPDIR", tmp.as_path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("kiln VM"), "{stdout}");
    let left: Vec<_> = std::fs::read_dir(tmp.as_path()).unwrap().collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
    assert_eq!(std::fs::read_dir(cwd.as_path()).unwrap().count(), 0);
}
