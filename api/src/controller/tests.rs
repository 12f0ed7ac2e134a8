use super::*;

fn controller(start_error: &'static str) -> Controller {
    let hooks = Hooks {
        start: Box::new(move |_| Err(start_error.to_string())),
        logger: Box::new(|_| Ok(())),
        restore: Box::new(move |_, _| Err(start_error.to_string())),
        memory: Box::new(|_, _| {}),
    };
    Controller::new("test-id".into(), false, hooks)
}

fn fault_of(r: Reply) -> String {
    match r {
        Reply::Fault(m) => m,
        other => panic!("not a fault: {other:?}"),
    }
}

#[test]
fn instance_info_reports_not_started() {
    let mut c = controller("");
    let Reply::Json(body) = c.handle("GET", "/", b"") else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["state"], "Not started");
    assert_eq!(v["id"], "test-id");
}

#[test]
fn put_replies_204_and_get_reflects_it() {
    let mut c = controller("");
    let r = c.handle(
        "PUT",
        "/machine-config",
        br#"{"vcpu_count":2,"mem_size_mib":64}"#,
    );
    assert_eq!(r, Reply::NoContent);
    assert_eq!(r.status(), 204);
    let Reply::Json(body) = c.handle("GET", "/machine-config", b"") else {
        panic!()
    };
    assert!(body.contains(r#""vcpu_count":2"#), "{body}");
}

#[test]
fn start_without_a_kernel_names_the_missing_step() {
    let mut c = controller("");
    let m = fault_of(c.handle("PUT", "/actions", br#"{"action_type":"InstanceStart"}"#));
    assert!(m.contains("PUT /boot-source"), "{m}");
}

#[test]
fn a_failed_start_is_a_fault_and_leaves_the_state() {
    let mut c = controller("no KVM");
    let r = c.handle(
        "PUT",
        "/boot-source",
        br#"{"kernel_image_path":"/dev/null"}"#,
    );
    assert_eq!(r, Reply::NoContent);
    let m = fault_of(c.handle("PUT", "/actions", br#"{"action_type":"InstanceStart"}"#));
    assert_eq!(m, "Start microvm error: no KVM");
    assert!(matches!(c.handle("GET", "/", b""), Reply::Json(b) if b.contains("Not started")));
}

#[test]
fn root_drive_adds_root_to_the_command_line() {
    let mut r = VmResources {
        boot_source: Some(crate::model::BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: Some("console=ttyS0".into()),
        }),
        ..VmResources::default()
    };
    let drive = |id: &str, root: bool| Drive {
        drive_id: id.into(),
        path_on_host: format!("/{id}.img"),
        is_root_device: root,
        is_read_only: root,
        partuuid: None,
        cache_type: crate::model::DriveCache::Unsafe,
        rate_limiter: None,
        io_engine: crate::model::IoEngine::Sync,
    };
    r.put_drive(drive("data", false)).unwrap();
    r.put_drive(drive("root", true)).unwrap();
    let cfg = r.to_vm_config(false).unwrap();
    assert_eq!(cfg.cmdline, "console=ttyS0 root=/dev/vda ro");
    assert_eq!(cfg.disks[0].path, std::path::PathBuf::from("/root.img"));
    assert_eq!(cfg.disks[1].path, std::path::PathBuf::from("/data.img"));
}

#[test]
fn default_boot_args_are_firecrackers() {
    let r = VmResources {
        boot_source: Some(crate::model::BootSource {
            kernel_image_path: "/k".into(),
            initrd_path: None,
            boot_args: None,
        }),
        ..VmResources::default()
    };
    assert_eq!(
        r.to_vm_config(false).unwrap().cmdline,
        crate::model::DEFAULT_BOOT_ARGS
    );
}

#[test]
fn rate_limiter_patches_keep_unnamed_buckets() {
    use devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
    let bucket = |size| TokenBucketConfig {
        size,
        one_time_burst: None,
        refill_time: 100,
    };
    let cur = RateLimiterConfig {
        bandwidth: Some(bucket(1000)),
        ops: Some(bucket(10)),
    };
    let patch = RateLimiterConfig {
        bandwidth: None,
        ops: Some(bucket(20)),
    };
    let merged = merge_limits(Some(cur), &patch);
    assert_eq!(merged.bandwidth, Some(bucket(1000)));
    assert_eq!(merged.ops, Some(bucket(20)));
}

#[test]
fn a_config_file_must_be_a_json_object() {
    let e = VmResources::from_json("[]").unwrap_err().to_string();
    assert!(e.contains("JSON object"), "{e}");
    assert!(VmResources::from_json(r#"{"boot-source":{"kernel_image_path":"/k"}}"#).is_ok());
}

#[test]
fn a_kernel_that_cannot_be_opened_is_refused_at_put() {
    let mut c = controller("");
    let m = fault_of(c.handle(
        "PUT",
        "/boot-source",
        br#"{"kernel_image_path":"/nonexistent/k"}"#,
    ));
    assert!(m.starts_with("The kernel file cannot be opened"), "{m}");
    let m = fault_of(c.handle(
        "PUT",
        "/boot-source",
        br#"{"kernel_image_path":"/dev/null","initrd_path":"/nonexistent/i"}"#,
    ));
    assert!(m.starts_with("The initrd file cannot be opened"), "{m}");
}
