use super::*;
use crate::model::{ActionType, VmStateName};

fn fault(method: &str, path: &str, body: &str) -> String {
    route(method, path, body.as_bytes()).unwrap_err()
}

#[test]
fn every_listed_route_is_served() {
    let bodies = [
        ("machine-config", r#"{"vcpu_count":1,"mem_size_mib":64}"#),
        ("boot-source", r#"{"kernel_image_path":"/k"}"#),
        (
            "drives",
            r#"{"drive_id":"x","path_on_host":"/d","is_root_device":false}"#,
        ),
        (
            "network-interfaces",
            r#"{"iface_id":"x","host_dev_name":"tap0"}"#,
        ),
        ("actions", r#"{"action_type":"FlushMetrics"}"#),
        ("vm", r#"{"state":"Paused"}"#),
        ("logger", r#"{"level":"Info"}"#),
        ("metrics", r#"{"metrics_path":"/m"}"#),
        (
            "entropy",
            r#"{"rate_limiter":{"ops":{"size":10,"refill_time":100}}}"#,
        ),
        ("vsock", r#"{"guest_cid":3,"uds_path":"/v.sock"}"#),
    ];
    let snapshot = |p: &str| match p {
        "/snapshot/create" => r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#,
        _ => r#"{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"}}"#,
    };
    for (method, template) in ROUTES {
        let path = template
            .replace("{drive_id}", "x")
            .replace("{iface_id}", "x");
        let first = path.trim_start_matches('/').split('/').next().unwrap();
        let body = match (*method, first) {
            ("GET", _) => "",
            ("PATCH", "drives") => r#"{"drive_id":"x"}"#,
            ("PATCH", "network-interfaces") => r#"{"iface_id":"x"}"#,
            ("PATCH", "machine-config") => r#"{"vcpu_count":2}"#,
            ("PUT", "snapshot") => snapshot(&path),
            _ => bodies.iter().find(|(p, _)| *p == first).unwrap().1,
        };
        route(method, &path, body.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path} not served: {e}"));
    }
}

#[test]
fn bodies_become_typed_requests() {
    assert_eq!(
        route("PUT", "/actions", br#"{"action_type":"InstanceStart"}"#).unwrap(),
        ApiRequest::Action(crate::model::InstanceActionInfo {
            action_type: ActionType::InstanceStart
        })
    );
    match route("PATCH", "/vm", br#"{"state":"Resumed"}"#).unwrap() {
        ApiRequest::PatchVm(v) => assert_eq!(v.state, VmStateName::Resumed),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unknown_paths_and_methods_get_firecrackers_message() {
    assert_eq!(
        fault("GET", "/nothing", ""),
        "Invalid request method and/or path: GET /nothing."
    );
    assert_eq!(
        fault("DELETE", "/machine-config", ""),
        "Invalid request method and/or path: DELETE /machine-config."
    );
    assert!(fault("GET", "/boot-source", "").starts_with("Invalid request"));
}

#[test]
fn unsupported_resources_say_so() {
    for p in [
        "/balloon",
        "/mmds/config",
        "/cpu-config",
        "/pmem/a",
        "/serial",
        "/hotplug/memory",
    ] {
        let m = fault("PUT", p, "{}");
        assert!(m.contains("Kiln does not support"), "{p}: {m}");
    }
}

#[test]
fn unknown_fields_are_rejected() {
    let m = fault(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":64,"foo":1}"#,
    );
    assert!(m.contains("unknown field `foo`"), "{m}");
}

#[test]
fn empty_and_malformed_bodies_are_rejected() {
    assert_eq!(fault("PUT", "/boot-source", ""), "Empty request.");
    assert!(fault("PUT", "/boot-source", "{").contains("deserializing"));
    assert!(fault("PUT", "/machine-config", r#"{"vcpu_count":1}"#).contains("mem_size_mib"));
}

#[test]
fn path_and_body_ids_must_match() {
    let m = fault(
        "PUT",
        "/drives/a",
        r#"{"drive_id":"b","path_on_host":"/d","is_root_device":false}"#,
    );
    assert_eq!(
        m,
        "The id from the path [a] does not match the id from the body [b]!"
    );
}

#[test]
fn ids_are_restricted_to_safe_characters() {
    let m = fault(
        "PUT",
        "/drives/a%2f",
        r#"{"drive_id":"a%2f","path_on_host":"/d","is_root_device":false}"#,
    );
    assert!(m.starts_with("Invalid id"), "{m}");
}

#[test]
fn a_missing_id_is_named() {
    assert!(fault("PUT", "/drives", "{}").contains("needs an id"));
}

#[test]
fn trailing_slashes_are_ignored() {
    assert_eq!(
        route("GET", "/version/", b"").unwrap(),
        ApiRequest::GetVersion
    );
}

/// `(METHOD, path)` of every operation in `api/openapi.yaml` (Swagger 2.0: paths at
/// two spaces of indent, their methods at four).
fn openapi_operations() -> Vec<(String, String)> {
    let text = include_str!("../../openapi.yaml");
    let mut ops = Vec::new();
    let mut in_paths = false;
    let mut path = String::new();
    for line in text.lines() {
        if !line.starts_with(' ') && !line.is_empty() {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            path = format!("/{p}");
        } else if let Some(m) = line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')) {
            if ["get", "put", "patch", "post", "delete"].contains(&m) {
                ops.push((m.to_uppercase(), path.clone()));
            }
        }
    }
    ops
}

#[test]
fn openapi_description_lists_exactly_the_served_routes() {
    let mut described = openapi_operations();
    described.sort();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(described, served);
}

#[test]
fn bodies_must_be_json_objects() {
    let m = fault("PUT", "/machine-config", "[1, 64]");
    assert_eq!(m, "The request body must be a JSON object.");
}
