//! The Firecracker-compatible API driving a running test guest: start, describe,
//! pause and resume, Ctrl+Alt+Del, a drive swapped under the guest, rate limits,
//! metrics and the logger; a `--config-file` boot with the API serving.

mod common;

use std::time::{Duration, Instant};

use common::api::ApiVm;
use common::guest;

const T: Duration = Duration::from_secs(60);

fn count_lines(s: &str) -> usize {
    s.lines()
        .filter(|l| l.starts_with("KILN-GUEST count "))
        .count()
}

#[test]
fn start_pause_resume_and_stop() {
    let mut vm = ApiVm::spawn("apivm-pause", &[]);
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":32}"#,
    );
    vm.boot_source(&guest().elf, "console=ttyS0 kiln.mode=count");
    vm.start();
    assert_eq!(vm.get("/")["state"], "Running");
    assert!(vm.wait_serial("KILN-GUEST count 3", T), "{}", vm.serial());
    // Pre-boot-only requests are refused now.
    let m = vm.fault("PUT", "/boot-source", r#"{"kernel_image_path":"/x"}"#);
    assert!(m.contains("not supported after starting"), "{m}");
    let m = vm.fault("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    assert!(m.contains("not supported after starting"), "{m}");

    vm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    assert_eq!(vm.get("/")["state"], "Paused");
    std::thread::sleep(Duration::from_millis(100)); // output already in flight
    let paused = count_lines(&vm.serial());
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        count_lines(&vm.serial()),
        paused,
        "the guest ran while paused"
    );
    vm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#); // pausing again is fine
    vm.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    assert_eq!(vm.get("/")["state"], "Running");
    let next = format!("KILN-GUEST count {}", paused + 2);
    assert!(
        vm.wait_serial(&next, T),
        "no progress after resume: {}",
        vm.serial()
    );
    // The numbers continue: nothing was lost or repeated across the pause.
    let out = vm.serial();
    // Complete lines only: the guest may be in the middle of one.
    let done = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
    let nums: Vec<u64> = done
        .lines()
        .filter_map(|l| l.strip_prefix("KILN-GUEST count ")?.trim().parse().ok())
        .collect();
    assert!(nums.windows(2).all(|w| w[1] == w[0] + 1), "{nums:?}");

    let status = vm.terminate();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", vm.stderr());
    assert!(!vm.sock.exists(), "socket left behind");
    assert!(!vm.stderr().contains("seccomp"), "{}", vm.stderr());
}

#[test]
fn the_guest_ending_ends_the_process_and_removes_the_socket() {
    let mut vm = ApiVm::spawn("apivm-end", &[]);
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":32}"#,
    );
    vm.boot_source(&guest().elf, "console=ttyS0 kiln.mode=boot");
    vm.start();
    let status = vm.wait(T).expect("the VM did not end");
    assert!(status.success(), "{}", vm.stderr());
    assert!(vm.serial().contains("KILN-GUEST done"), "{}", vm.serial());
    assert!(!vm.sock.exists(), "socket left behind");
}

#[test]
fn send_ctrl_alt_del_reaches_the_guest_keyboard() {
    let vm = ApiVm::spawn("apivm-cad", &[]);
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":32}"#,
    );
    vm.boot_source(
        &guest().elf,
        "console=ttyS0 kiln.mode=kbd kiln.kbd_bytes=11",
    );
    vm.start();
    assert!(vm.wait_serial("KILN-GUEST kbd ready", T), "{}", vm.serial());
    vm.ok("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
    assert!(vm.wait_serial("KILN-GUEST kbd done", T), "{}", vm.serial());
    let bytes: Vec<String> = vm
        .serial()
        .lines()
        .filter_map(|l| l.strip_prefix("KILN-GUEST kbd ").filter(|b| b.len() == 2))
        .map(str::to_lowercase)
        .collect();
    assert_eq!(
        bytes,
        ["14", "11", "e0", "71", "e0", "f0", "71", "f0", "11", "f0", "14"]
    );
}

#[test]
fn a_drive_swapped_after_start_is_seen_by_the_guest() {
    let vm = ApiVm::spawn("apivm-swap", &[]);
    let a = vm.dir.join("a.img");
    let b = vm.dir.join("b.img");
    let mut da = vec![0u8; 64 * 1024];
    da[..8].copy_from_slice(b"AAAAAAAA");
    let mut db = vec![0u8; 128 * 1024];
    db[..8].copy_from_slice(b"BBBBBBBB");
    std::fs::write(&a, &da).unwrap();
    std::fs::write(&b, &db).unwrap();
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":32}"#,
    );
    vm.boot_source(
        &guest().elf,
        "console=ttyS0 kiln.mode=blkresize kiln.end=spin",
    );
    let d = serde_json::json!({"drive_id":"data","path_on_host":a,"is_root_device":false});
    vm.ok("PUT", "/drives/data", &d.to_string());
    vm.start();
    assert!(
        vm.wait_serial(
            "KILN-GUEST blkresize capacity 128 first 4141414141414141",
            T
        ),
        "{}",
        vm.serial()
    );
    let m = vm.fault(
        "PATCH",
        "/drives/data",
        r#"{"drive_id":"data","path_on_host":"/nonexistent.img"}"#,
    );
    assert!(m.contains("nonexistent"), "{m}");
    let m = vm.fault("PATCH", "/drives/other", r#"{"drive_id":"other"}"#);
    assert!(m.contains("other"), "{m}");
    let p = serde_json::json!({"drive_id":"data","path_on_host":b});
    vm.ok("PATCH", "/drives/data", &p.to_string());
    assert!(
        vm.wait_serial(
            "KILN-GUEST blkresize changed capacity 256 first 4242424242424242",
            T
        ),
        "{}",
        vm.serial()
    );
    assert_eq!(
        vm.get("/vm/config")["drives"][0]["path_on_host"],
        b.to_str().unwrap()
    );
}

/// Thread CPU time (user + system, clock ticks) of `pid`'s thread named `name`.
fn thread_cpu_ticks(pid: u32, name: &str) -> Option<u64> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let p = t.ok()?.path();
        let comm = std::fs::read_to_string(p.join("comm")).ok()?;
        if comm.trim() == name {
            let stat = std::fs::read_to_string(p.join("stat")).ok()?;
            let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            return Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?);
        }
    }
    None
}

#[test]
fn a_drive_rate_limit_slows_the_guest_without_busy_waiting() {
    let vm = ApiVm::spawn("apivm-ratelimit", &[]);
    let disk = vm.dir.join("d.img");
    std::fs::write(&disk, vec![7u8; 1 << 20]).unwrap();
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":32}"#,
    );
    vm.boot_source(
        &guest().elf,
        "console=ttyS0 kiln.mode=blkbench kiln.bench_kib=96 kiln.end=spin",
    );
    // 4 requests at once, then 8 per second: 20 more take at least 2.5 s.
    let d = serde_json::json!({
        "drive_id": "d", "path_on_host": disk, "is_root_device": false,
        "rate_limiter": {"ops": {"size": 4, "refill_time": 500}}
    });
    vm.ok("PUT", "/drives/d", &d.to_string());
    vm.start();
    assert!(vm.wait_serial("KILN-BENCH start", T), "{}", vm.serial());
    let t0 = Instant::now();
    assert!(
        vm.wait_serial("requests=24 errors=0\n", T),
        "{}",
        vm.serial()
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(2300),
        "24 reads took only {took:?}"
    );
    // The device thread slept between refills: far less CPU than the wall time.
    let ticks = thread_cpu_ticks(vm.pid(), "kiln-blk0").expect("device thread");
    assert!(ticks < 50, "device thread used {ticks} ticks in {took:?}");
    let m = vm.fault(
        "PATCH",
        "/drives/d",
        r#"{"drive_id":"d","rate_limiter":{"ops":{"size":1}}}"#,
    );
    assert!(m.contains("refill_time"), "{m}");
    vm.ok(
        "PATCH",
        "/drives/d",
        r#"{"drive_id":"d","rate_limiter":{"ops":{"size":0,"refill_time":0}}}"#,
    );
}

#[test]
fn metrics_count_requests_exits_and_disk_io() {
    let vm = ApiVm::spawn("apivm-metrics", &[]);
    let metrics = vm.dir.join("metrics.json");
    let disk = vm.dir.join("d.img");
    std::fs::write(&disk, vec![1u8; 1 << 20]).unwrap();
    vm.ok(
        "PUT",
        "/metrics",
        &serde_json::json!({"metrics_path": metrics}).to_string(),
    );
    let m = vm.fault(
        "PUT",
        "/metrics",
        &serde_json::json!({"metrics_path": metrics}).to_string(),
    );
    assert!(m.contains("Reinitialization"), "{m}");
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":32}"#,
    );
    vm.boot_source(
        &guest().elf,
        "console=ttyS0 kiln.mode=blkbench kiln.bench_kib=32 kiln.end=spin",
    );
    let d = serde_json::json!({"drive_id":"scratch","path_on_host":disk,"is_root_device":false});
    vm.ok("PUT", "/drives/scratch", &d.to_string());
    vm.start();
    assert!(vm.wait_serial("KILN-GUEST spinning", T), "{}", vm.serial());
    vm.ok("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(line["utc_timestamp_ms"].as_u64().unwrap() > 0);
    assert_eq!(line["put_api_requests"]["metrics_count"], 2);
    assert_eq!(line["put_api_requests"]["metrics_fails"], 1);
    assert_eq!(
        line["block_scratch"]["read_count"].as_u64(),
        Some(8),
        "{line}"
    );
    assert_eq!(
        line["block"]["read_bytes"].as_u64(),
        Some(8 * 4096),
        "{line}"
    );
    assert!(
        line["vcpu"]["exit_mmio_write"].as_u64().unwrap() > 0,
        "{line}"
    );
    // The next line holds increments since this one.
    vm.ok("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#);
    let text = std::fs::read_to_string(&metrics).unwrap();
    let next: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(next["block_scratch"]["read_count"], 0, "{next}");
    assert_eq!(next["put_api_requests"]["actions_count"], 1, "{next}");
}

#[test]
fn the_logger_writes_to_its_file() {
    let vm = ApiVm::spawn("apivm-logger", &["--id", "logged"]);
    let log = vm.dir.join("kiln.log");
    let body = serde_json::json!({"log_path": log, "level": "Debug", "show_level": true});
    vm.ok("PUT", "/logger", &body.to_string());
    let _ = vm.fault("PUT", "/drives/x", r#"{"bad":1}"#); // logged at debug
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("[logged:kiln-api] [DEBUG]"), "{text}");
}

#[test]
fn config_file_boots_and_the_api_serves_the_running_vm() {
    let dir = common::temp_dir("apivm-cfgfile");
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": guest().elf, "boot_args": "console=ttyS0 kiln.mode=count"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let p = path.to_str().unwrap().to_string();
    let vm = ApiVm::spawn_in(
        dir,
        common::kiln_bin().as_ref(),
        &["api"],
        &["--config-file", &p],
    );
    assert_eq!(vm.get("/")["state"], "Running");
    assert!(vm.wait_serial("KILN-GUEST count 2", T), "{}", vm.serial());
    vm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    assert_eq!(vm.get("/")["state"], "Paused");
    assert_eq!(vm.get("/vm/config")["machine-config"]["mem_size_mib"], 32);
}

#[test]
fn a_network_rate_limit_holds_until_patched_away() {
    if !common::net::tap_capable() {
        return;
    }
    let tap = common::net::TestTap::new("kar");
    let vm = ApiVm::spawn("apivm-netrate", &[]);
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":32}"#,
    );
    vm.boot_source(
        &guest().elf,
        "console=ttyS0 kiln.mode=netrate kiln.count=40 kiln.size=200 kiln.end=spin",
    );
    // 2 frames at once, then 4 per second: 40 frames would take about 10 s.
    let n = serde_json::json!({
        "iface_id": "eth0", "host_dev_name": tap.0, "guest_mac": "02:4b:00:00:00:31",
        "tx_rate_limiter": {"ops": {"size": 2, "refill_time": 500}}
    });
    vm.ok("PUT", "/network-interfaces/eth0", &n.to_string());
    vm.start();
    assert!(
        vm.wait_serial("KILN-GUEST netrate start", T),
        "{}",
        vm.serial()
    );
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !vm.serial().contains("netrate done"),
        "not limited: {}",
        vm.serial()
    );
    let m = vm.fault(
        "PATCH",
        "/network-interfaces/eth9",
        r#"{"iface_id":"eth9"}"#,
    );
    assert!(m.contains("eth9"), "{m}");
    vm.ok(
        "PATCH",
        "/network-interfaces/eth0",
        r#"{"iface_id":"eth0","tx_rate_limiter":{"ops":{"size":0,"refill_time":0}}}"#,
    );
    assert!(
        vm.wait_serial("KILN-GUEST netrate done n=40", T),
        "{}",
        vm.serial()
    );
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "still limited after the PATCH: {took:?}"
    );
    let cfg = vm.get("/vm/config");
    assert_eq!(
        cfg["network-interfaces"][0]["tx_rate_limiter"]["ops"]["size"],
        0
    );
}

#[test]
fn in_api_mode_every_thread_is_confined() {
    let mut vm = ApiVm::spawn("apivm-confined", &[]);
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":32}"#,
    );
    vm.boot_source(&guest().elf, "console=ttyS0 kiln.mode=count");
    vm.start();
    assert!(vm.wait_serial("KILN-GUEST count 1", T), "{}", vm.serial());
    let mut seen = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", vm.pid())).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        seen.push((
            field("Name:"),
            field("Seccomp:"),
            field("NoNewPrivs:"),
            field("CapEff:"),
        ));
    }
    let names: Vec<&str> = seen.iter().map(|t| t.0.as_str()).collect();
    assert!(
        names.contains(&"kiln-api") && names.contains(&"kiln-vcpu0"),
        "{names:?}"
    );
    for (name, seccomp, nnp, caps) in &seen {
        assert_eq!(
            (seccomp.as_str(), nnp.as_str()),
            ("2", "1"),
            "thread {name}: {seen:?}"
        );
        assert_eq!(caps, "0000000000000000", "thread {name}: {seen:?}");
    }
    // Every API path still works under the filters.
    vm.ok("PATCH", "/vm", r#"{"state":"Paused"}"#);
    vm.ok("PATCH", "/vm", r#"{"state":"Resumed"}"#);
    assert_eq!(
        vm.terminate().code(),
        Some(128 + libc::SIGTERM),
        "{}",
        vm.stderr()
    );
    assert!(vm.stderr().is_empty(), "{}", vm.stderr());
}
