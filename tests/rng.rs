//! virtio-rng through real KVM exits: the test guest's `rng` mode posts four 64-byte
//! buffers and checks they come back filled, not zero and all different.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::api::ApiVm;
use common::{guest, kiln_bin};

#[test]
fn the_guest_gets_random_bytes_with_rng() {
    let out = Command::new(kiln_bin())
        .args(["run", "--rng", "--memory", "32", "--kernel"])
        .arg(&guest().elf)
        .args(["--cmdline", "console=ttyS0 kiln.mode=rng"])
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(serial.contains("KILN-CHECK rng ok"), "{serial}");
    assert_eq!(serial.matches("len=64").count(), 4, "{serial}");
}

#[test]
fn put_entropy_adds_the_device_with_its_rate_limit_and_metrics() {
    let vm = ApiVm::spawn("rng-api", &[]);
    let metrics = vm.dir.join("metrics.json");
    vm.ok(
        "PUT",
        "/metrics",
        &serde_json::json!({"metrics_path": metrics}).to_string(),
    );
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":32}"#,
    );
    vm.boot_source(&guest().elf, "console=ttyS0 kiln.mode=rng kiln.end=spin");
    // One request at once, then one every 500 ms: four take at least 1.5 s.
    vm.ok(
        "PUT",
        "/entropy",
        r#"{"rate_limiter":{"ops":{"size":1,"refill_time":500}}}"#,
    );
    assert_eq!(
        vm.get("/vm/config")["entropy"]["rate_limiter"]["ops"]["size"],
        1
    );
    let t0 = Instant::now();
    vm.start();
    assert!(
        vm.wait_serial("KILN-CHECK rng ok", Duration::from_secs(60)),
        "{}",
        vm.serial()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        t0.elapsed()
    );
    let m = vm.fault("PUT", "/entropy", "{}");
    assert!(m.contains("after starting"), "{m}");
    vm.ok("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(line["entropy"]["entropy_bytes"], 256, "{line}");
    assert!(
        line["entropy"]["entropy_rate_limiter_throttled"]
            .as_u64()
            .unwrap()
            > 0,
        "{line}"
    );
}
