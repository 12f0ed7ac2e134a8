//! The Firecracker-compatible API before the VM starts: every endpoint's answers, the
//! pre-/post-boot rules, bad input, and the process interface (`kiln api`, the
//! `firecracker` name, the socket's life).

mod common;

use std::time::Duration;

use common::api::{request, ApiVm};
use common::{guest, kiln_bin, temp_dir};

#[test]
fn instance_info_and_version() {
    let vm = ApiVm::spawn("api-info", &["--id", "test-vm-1"]);
    let info = vm.get("/");
    assert_eq!(info["id"], "test-vm-1");
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "Kiln");
    assert!(info["vmm_version"].is_string());
    let v = vm.get("/version");
    assert!(v["firecracker_version"].as_str().unwrap().starts_with("1."));
}

#[test]
fn machine_config_defaults_put_and_patch() {
    let vm = ApiVm::spawn("api-machine", &[]);
    let m = vm.get("/machine-config");
    assert_eq!(m["vcpu_count"], 1);
    assert_eq!(m["mem_size_mib"], 128);
    assert_eq!(m["smt"], false);
    vm.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":2,"mem_size_mib":256}"#,
    );
    vm.ok("PATCH", "/machine-config", r#"{"mem_size_mib":64}"#);
    let m = vm.get("/machine-config");
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(2), Some(64))
    );
    assert_eq!(vm.get("/vm/config")["machine-config"], m);
}

#[test]
fn machine_config_bad_values_change_nothing() {
    let vm = ApiVm::spawn("api-machine-bad", &[]);
    let before = vm.get("/machine-config");
    for (body, expect) in [
        (
            r#"{"vcpu_count":0,"mem_size_mib":64}"#,
            "vCPU number is invalid",
        ),
        (r#"{"vcpu_count":1,"mem_size_mib":1}"#, "memory size"),
        (r#"{"vcpu_count":1,"mem_size_mib":64,"smt":true}"#, "SMT"),
        (
            r#"{"vcpu_count":1,"mem_size_mib":64,"huge_pages":"2M"}"#,
            "huge pages",
        ),
        (
            r#"{"vcpu_count":1,"mem_size_mib":64,"bogus":1}"#,
            "unknown field `bogus`",
        ),
        (r#"{"vcpu_count":1}"#, "mem_size_mib"),
        ("{", "deserializing"),
        ("", "Empty request."),
    ] {
        let m = vm.fault("PUT", "/machine-config", body);
        assert!(m.contains(expect), "{body}: {m}");
    }
    assert_eq!(vm.get("/machine-config"), before);
}

#[test]
fn drives_and_interfaces_are_recorded_in_vm_config() {
    let vm = ApiVm::spawn("api-devices", &[]);
    let disk = vm.dir.join("root.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let d = serde_json::json!({
        "drive_id": "rootfs", "path_on_host": disk, "is_root_device": true,
        "is_read_only": true, "cache_type": "Writeback",
        "rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}
    });
    vm.ok("PUT", "/drives/rootfs", &d.to_string());
    vm.ok(
        "PUT",
        "/network-interfaces/eth0",
        r#"{"iface_id":"eth0","host_dev_name":"kilntap9","guest_mac":"02:00:00:00:00:09"}"#,
    );
    let cfg = vm.get("/vm/config");
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(cfg["drives"][0]["rate_limiter"]["ops"]["size"], 100);
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "kilntap9");
    for k in ["balloon", "vsock", "entropy", "mmds-config"] {
        assert!(cfg[k].is_null(), "{k}");
    }
}

#[test]
fn drive_bad_input() {
    let vm = ApiVm::spawn("api-drive-bad", &[]);
    let disk = vm.dir.join("d.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let drive = |id: &str, path: &str, root: bool| {
        serde_json::json!({"drive_id": id, "path_on_host": path, "is_root_device": root})
            .to_string()
    };
    let p = disk.to_str().unwrap();
    let m = vm.fault("PUT", "/drives/a", &drive("b", p, false));
    assert!(m.contains("does not match"), "{m}");
    let m = vm.fault("PUT", "/drives/a", &drive("a", "/nonexistent/x.img", false));
    assert!(m.contains("/nonexistent/x.img"), "{m}");
    vm.ok("PUT", "/drives/a", &drive("a", p, true));
    let m = vm.fault("PUT", "/drives/b", &drive("b", p, true));
    assert!(m.contains("root"), "{m}");
    let m = vm.fault(
        "PUT",
        "/drives/c",
        &serde_json::json!({"drive_id":"c","path_on_host":p,"is_root_device":false,"io_engine":"Async"}).to_string(),
    );
    assert!(m.contains("Async"), "{m}");
    let m = vm.fault(
        "PUT",
        "/network-interfaces/n",
        r#"{"iface_id":"n","host_dev_name":"t","guest_mac":"01:00:00:00:00:01"}"#,
    );
    assert!(m.contains("multicast"), "{m}");
    let m = vm.fault(
        "PUT",
        "/network-interfaces/n",
        r#"{"iface_id":"n","host_dev_name":"averyveryverylongtapname"}"#,
    );
    assert!(m.contains("host_dev_name") && m.contains("1 to 15"), "{m}");
    let m = vm.fault(
        "PUT",
        "/boot-source",
        r#"{"kernel_image_path":"/nonexistent/vmlinux"}"#,
    );
    assert!(m.starts_with("The kernel file cannot be opened"), "{m}");
}

#[test]
fn post_boot_requests_are_refused_before_start() {
    let vm = ApiVm::spawn("api-preboot", &[]);
    for (method, path, body) in [
        ("PATCH", "/vm", r#"{"state":"Paused"}"#),
        ("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#),
        (
            "PATCH",
            "/drives/a",
            r#"{"drive_id":"a","path_on_host":"/x"}"#,
        ),
        ("PATCH", "/network-interfaces/n", r#"{"iface_id":"n"}"#),
    ] {
        let m = vm.fault(method, path, body);
        assert!(m.contains("not supported before starting"), "{path}: {m}");
    }
    let m = vm.fault("PUT", "/actions", r#"{"action_type":"FlushMetrics"}"#);
    assert!(m.contains("PUT /metrics"), "{m}");
    let m = vm.fault("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    assert!(m.contains("boot-source"), "{m}");
}

#[test]
fn unsupported_and_unknown_paths_get_a_fault() {
    let vm = ApiVm::spawn("api-unsupported", &[]);
    for path in ["/balloon", "/mmds", "/cpu-config", "/serial"] {
        let m = vm.fault("PUT", path, "{}");
        assert!(m.contains("Kiln does not support"), "{path}: {m}");
    }
    assert!(vm
        .fault("GET", "/nope", "")
        .contains("Invalid request method and/or path"));
    assert!(vm
        .fault("DELETE", "/machine-config", "")
        .contains("DELETE /machine-config"));
}

#[test]
fn a_failed_start_leaves_the_api_serving() {
    let vm = ApiVm::spawn("api-bad-kernel", &[]);
    let k = vm.dir.join("not-a-kernel");
    std::fs::write(&k, b"hello").unwrap();
    vm.boot_source(&k, "console=ttyS0");
    let m = vm.fault("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#);
    assert!(m.starts_with("Start microvm error"), "{m}");
    assert_eq!(vm.get("/")["state"], "Not started");
}

#[test]
fn oversized_bodies_are_refused_with_the_limit() {
    let vm = ApiVm::spawn("api-payload", &["--http-api-max-payload-size", "100"]);
    let body = format!(r#"{{"kernel_image_path":"{}"}}"#, "x".repeat(200));
    let (status, reply) = vm.req("PUT", "/boot-source", &body);
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("larger than the limit of 100"), "{reply}");
    assert_eq!(vm.get("/")["state"], "Not started");
}

#[test]
fn sigterm_before_start_removes_the_socket() {
    let mut vm = ApiVm::spawn("api-sigterm", &[]);
    let status = vm.terminate();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{}", vm.stderr());
    assert!(!vm.sock.exists(), "socket left behind");
}

#[test]
fn a_stale_socket_is_replaced() {
    let dir = temp_dir("api-stale");
    let stale = std::os::unix::net::UnixListener::bind(dir.join("api.sock")).unwrap();
    drop(stale); // the file stays, nobody listens
    let vm = ApiVm::spawn_in(dir, kiln_bin().as_ref(), &["api"], &[]);
    assert_eq!(vm.get("/")["state"], "Not started");
}

#[test]
fn a_socket_path_that_cannot_be_used_is_one_clear_line() {
    let dir = temp_dir("api-badsock");
    let file = dir.join("regular");
    std::fs::write(&file, b"x").unwrap();
    for (sock, expect) in [
        (dir.join("missing/dir/api.sock"), "api.sock"),
        (file.clone(), "not a socket"),
    ] {
        let out = std::process::Command::new(kiln_bin())
            .args(["api", "--api-sock"])
            .arg(&sock)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{err}");
    }
    assert_eq!(
        std::fs::read(&file).unwrap(),
        b"x",
        "a regular file was touched"
    );
}

#[test]
fn an_invalid_config_file_is_one_clear_line() {
    let dir = temp_dir("api-badcfg");
    let sock = dir.join("api.sock");
    for (text, expect) in [
        (
            r#"{"machine-config":{"vcpu_count":1,"mem_size_mib":64},"bogus":1}"#,
            "unknown field `bogus`",
        ),
        (r#"{"balloon":{"amount_mib":1}}"#, "does not support"),
        ("{", "not a valid Firecracker configuration"),
    ] {
        let cfg = dir.join("vm.json");
        std::fs::write(&cfg, text).unwrap();
        let out = std::process::Command::new(kiln_bin())
            .args(["api", "--api-sock"])
            .arg(&sock)
            .arg("--config-file")
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{text}: {err}");
        assert!(!sock.exists(), "socket left behind");
    }
}

#[test]
fn firecracker_symlink_speaks_firecrackers_flags() {
    let dir = temp_dir("api-symlink");
    let fc = dir.join("firecracker");
    std::os::unix::fs::symlink(kiln_bin(), &fc).unwrap();
    let out = std::process::Command::new(&fc)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Firecracker v1."));
    let out = std::process::Command::new(&fc)
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--frobnicate"));
    let out = std::process::Command::new(&fc)
        .args(["--seccomp-filter", "/x.bpf"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seccomp-filter is not supported"));
    let vm = ApiVm::spawn_in(
        dir,
        &fc,
        &[],
        &["--id", "fc-compat", "--level", "Info", "--show-level"],
    );
    assert_eq!(vm.get("/")["id"], "fc-compat");
}

#[test]
fn no_api_boots_from_the_config_file() {
    let dir = temp_dir("api-noapi");
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": guest().elf, "boot_args": "console=ttyS0 kiln.mode=boot"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = std::process::Command::new(kiln_bin())
        .args(["api", "--no-api", "--config-file"])
        .arg(&path)
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(serial.contains("KILN-GUEST done"), "{serial}");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    use std::io::{Read, Write};
    let vm = ApiVm::spawn("api-pipeline", &[]);
    let mut s = std::os::unix::net::UnixStream::connect(&vm.sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let one = "GET /version HTTP/1.1\r\nHost: x\r\n\r\n";
    let last = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    s.write_all(format!("{one}{one}{last}").as_bytes()).unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert_eq!(all.matches("HTTP/1.1 200").count(), 3, "{all}");
    assert!(
        all.rfind("firecracker_version") < all.find("anonymous-instance"),
        "{all}"
    );
    // The server still answers after the pipelined connection closed.
    assert_eq!(request(&vm.sock, "GET", "/", "").0, 200);
}

#[test]
fn kiln_run_reads_a_firecracker_config_file() {
    let dir = temp_dir("api-run-fccfg");
    let cfg = serde_json::json!({
        "boot-source": {"kernel_image_path": guest().elf, "boot_args": "console=ttyS0 kiln.mode=boot"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 32},
    });
    let path = dir.join("vm.json");
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = std::process::Command::new(kiln_bin())
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("KILN-GUEST done"));
}
