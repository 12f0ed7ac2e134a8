//! `kiln bench` as an installed binary runs it: from a directory outside the repository,
//! with the minimal guest built into the binary, leaving no files behind; and
//! `kiln bench --api` and `--restore`, with kiln itself (as `firecracker`) standing in
//! for Firecracker; and `kiln bench --vsock` with the test guest.

mod common;

use std::process::Command;

use vmm_sys_util::tempdir::TempDir;

/// Whether /dev/kvm is there; prints the skip line when not (and fails under CI=true).
fn have_kvm() -> bool {
    if std::fs::metadata("/dev/kvm").is_ok() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "no /dev/kvm (CI=true)"
    );
    eprintln!("skipped: no /dev/kvm");
    false
}

#[test]
fn bench_runs_the_built_in_guest_from_any_directory() {
    if !have_kvm() {
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

/// The median of metric `key` of the batch `runner` in a `--json` document, in µs.
fn median(doc: &serde_json::Value, runner: &str, key: &str) -> f64 {
    let batch = doc["batches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["runner"] == runner)
        .unwrap_or_else(|| panic!("no batch {runner}"));
    let m = batch["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == key)
        .unwrap_or_else(|| panic!("{runner}: no metric {key}"));
    m["median"].as_f64().unwrap()
}

#[test]
fn bench_api_times_the_socket_and_instance_start() {
    if !have_kvm() {
        return;
    }
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-bench-api-")).unwrap();
    let tmp = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-bench-tmp-")).unwrap();
    // No Firecracker here: kiln answers Firecracker's flags under that name.
    let fc = dir.as_path().join("firecracker");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kiln"), &fc).unwrap();
    let json = dir.as_path().join("b.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "bench",
            "--api",
            "--runs",
            "2",
            "--warmup",
            "0",
            "--api-other",
        ])
        .arg(&fc)
        .arg("--json")
        .arg(&json)
        .current_dir(dir.as_path())
        .env("TMPDIR", tmp.as_path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    for heading in [
        "kiln VM (one at a time): 2/2 ok",
        "kiln api --no-api (one at a time): 2/2 ok",
        "kiln api (one at a time): 2/2 ok",
        "other --no-api: firecracker (one at a time): 2/2 ok",
        "other api: firecracker (one at a time): 2/2 ok",
    ] {
        assert!(stdout.contains(heading), "{heading}: {stdout}");
    }
    for label in [
        "exec → API socket accepting",
        "InstanceStart → reply (204)",
        "InstanceStart → first KVM_RUN",
        "kiln api: InstanceStart → first KVM_RUN",
    ] {
        assert!(stdout.contains(label), "{label}: {stdout}");
    }
    assert!(!stdout.contains("runc container"), "{stdout}");

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["settings"]["api"], true);
    for runner in ["kiln api", "other api: firecracker"] {
        let socket = median(&doc, runner, "socket_ready_us");
        let first = median(&doc, runner, "first_reply_us");
        let reply = median(&doc, runner, "start_reply_us");
        let to_run = median(&doc, runner, "start_to_first_kvm_run_us");
        let wall = median(&doc, runner, "wall_us");
        assert!(socket > 0.0 && socket < first, "{runner}: {socket} {first}");
        assert!(reply > 0.0 && to_run > 0.0, "{runner}: {reply} {to_run}");
        assert!(
            first + to_run < wall,
            "{runner}: {first} + {to_run} vs {wall}"
        );
    }
    for runner in ["kiln api --no-api", "other --no-api: firecracker"] {
        let first = median(&doc, runner, "first_kvm_run_us");
        let wall = median(&doc, runner, "wall_us");
        assert!(first > 0.0 && first < wall, "{runner}: {first} {wall}");
    }
    let left: Vec<_> = std::fs::read_dir(tmp.as_path()).unwrap().collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
}

#[test]
fn bench_restore_times_restores_and_measures_clones() {
    if !have_kvm() {
        return;
    }
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-bench-restore-")).unwrap();
    let tmp = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-bench-tmp-")).unwrap();
    let fc = dir.as_path().join("firecracker");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_kiln"), &fc).unwrap();
    let json = dir.as_path().join("b.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["bench", "--restore", "--runs", "2", "--warmup", "0"])
        .args(["--restore-mem", "32M", "--clones", "2", "--api-other"])
        .arg(&fc)
        .arg("--json")
        .arg(&json)
        .current_dir(dir.as_path())
        .env("TMPDIR", tmp.as_path())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    for heading in [
        "kiln restore --resume [32M] (one at a time): 2/2 ok",
        "kiln api /snapshot/load [32M] (one at a time): 2/2 ok",
        "kiln restore clones [32M] (2 at a time): 2/2 ok",
        "other /snapshot/load: firecracker [32M] (one at a time): 2/2 ok",
        "32M (kiln): boot → pages written",
        "32M (other: firecracker): boot → pages written",
        "32M: 2 of 2 clones measured",
    ] {
        assert!(stdout.contains(heading), "{heading}: {stdout}");
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["settings"]["restore_mem"], serde_json::json!(["32M"]));
    let cli = "kiln restore --resume [32M]";
    let first = median(&doc, cli, "first_kvm_run_us");
    let output = median(&doc, cli, "first_output_us");
    assert!(first > 0.0 && first < output, "{first} {output}");
    for runner in [
        "kiln api /snapshot/load [32M]",
        "other /snapshot/load: firecracker [32M]",
    ] {
        let sent = median(&doc, runner, "load_request_us");
        let reply = median(&doc, runner, "load_reply_us");
        let output = median(&doc, runner, "first_output_us");
        assert!(
            sent > 0.0 && sent + reply < output,
            "{runner}: {sent} {reply} {output}"
        );
    }
    let size = &doc["restore"]["sizes"][0];
    let snap = &size["snapshots"][0];
    assert_eq!(snap["mem_file_bytes"], 32 << 20);
    // Sparse: the guest wrote 8 MiB of its 32.
    let alloc = snap["mem_file_allocated_bytes"].as_u64().unwrap();
    assert!((8 << 20..16 << 20).contains(&alloc), "{alloc}");
    assert!(snap["create_us"].as_f64().unwrap() > 0.0);
    // Two clones share the 8 MiB they only read: close to half of their Σ RSS.
    let shared = size["clones"]["guest_shared_fraction"].as_f64().unwrap();
    assert!((0.4..=0.5).contains(&shared), "{shared}");
    let left: Vec<_> = std::fs::read_dir(tmp.as_path()).unwrap().collect();
    assert!(left.is_empty(), "left behind in TMPDIR: {left:?}");
}

#[test]
fn bench_vsock_reports_both_directions_and_round_trips() {
    if !have_kvm() {
        return;
    }
    let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-bench-vsock-")).unwrap();
    let json = dir.as_path().join("vsock.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["bench", "--vsock", "--runs", "1", "--vsock-kib", "16"])
        .args(["--vsock-rounds", "5", "--timeout", "120", "--kernel"])
        .arg(&common::guest().elf)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("kiln VM (virtio-vsock)"), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for row in doc["rows"].as_array().unwrap() {
        let name = &row["name"];
        for key in ["to_host_mib_s", "echo_mib_s", "rtt_us"] {
            let m = row[key]["median"].as_f64();
            assert!(m.is_some_and(|m| m > 0.0), "{name} {key}: {}", row[key]);
        }
        assert_eq!(row["samples"][0]["rtt_us"].as_array().unwrap().len(), 5);
    }
}
