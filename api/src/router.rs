//! Maps an HTTP method, path and body to an [`ApiRequest`], or to the fault message
//! Firecracker gives for a bad path, method, id or body. Pure: no state, no I/O (the
//! fuzz target `api_http` drives it with arbitrary input).

use serde::de::DeserializeOwned;

use crate::model::{
    BootSource, Drive, EntropyDevice, InstanceActionInfo, Logger, MachineConfig,
    MachineConfigPatch, Metrics, NetworkInterface, PartialDrive, PartialNetworkInterface,
    SnapshotCreateParams, SnapshotLoadParams, VmStateChange, VsockDevice,
};

/// A request the controller acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiRequest {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigPatch),
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /drives/{id}`.
    PutDrive(Drive),
    /// `PATCH /drives/{id}`.
    PatchDrive(PartialDrive),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(PartialNetworkInterface),
    /// `PUT /actions`.
    Action(InstanceActionInfo),
    /// `PATCH /vm`.
    PatchVm(VmStateChange),
    /// `GET /vm/config`.
    GetVmConfig,
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /entropy`.
    PutEntropy(EntropyDevice),
    /// `PUT /vsock`.
    PutVsock(VsockDevice),
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoadParams),
}

/// Every method and path Kiln serves (path parameters as `{name}`), the list
/// `api/openapi.yaml` describes.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/version"),
    ("GET", "/machine-config"),
    ("PUT", "/machine-config"),
    ("PATCH", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/{drive_id}"),
    ("PATCH", "/drives/{drive_id}"),
    ("PUT", "/network-interfaces/{iface_id}"),
    ("PATCH", "/network-interfaces/{iface_id}"),
    ("PUT", "/actions"),
    ("PATCH", "/vm"),
    ("GET", "/vm/config"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PUT", "/entropy"),
    ("PUT", "/vsock"),
    ("PUT", "/snapshot/create"),
    ("PUT", "/snapshot/load"),
];

/// Firecracker resources Kiln answers with "not supported" (first path segment).
const UNSUPPORTED: &[(&str, &str)] = &[
    ("balloon", "the balloon device (/balloon)"),
    ("mmds", "MMDS (/mmds)"),
    ("cpu-config", "custom CPU templates (/cpu-config)"),
    ("pmem", "pmem devices (/pmem)"),
    ("serial", "serial output configuration (/serial)"),
    ("hotplug", "memory hotplug (/hotplug)"),
];

/// Resolves a request. `Err` holds the fault message (answered with 400).
pub fn route(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, String> {
    let trimmed = path.trim_end_matches('/');
    let mut parts = trimmed.trim_start_matches('/').splitn(2, '/');
    let first = parts.next().unwrap_or("");
    let rest = parts.next();
    let invalid = || format!("Invalid request method and/or path: {method} {path}.");
    if let Some((_, what)) = UNSUPPORTED.iter().find(|(p, _)| *p == first) {
        return Err(format!(
            "Kiln does not support {what} yet; see the README's endpoint table for what it serves."
        ));
    }
    match (method, first, rest) {
        ("GET", "", None) => Ok(ApiRequest::GetInstanceInfo),
        ("GET", "version", None) => Ok(ApiRequest::GetVersion),
        ("GET", "machine-config", None) => Ok(ApiRequest::GetMachineConfig),
        ("PUT", "machine-config", None) => body_of(body).map(ApiRequest::PutMachineConfig),
        ("PATCH", "machine-config", None) => body_of(body).map(ApiRequest::PatchMachineConfig),
        ("PUT", "boot-source", None) => body_of(body).map(ApiRequest::PutBootSource),
        ("PUT", "drives", Some(id)) => {
            let d: Drive = body_of(body)?;
            same_id(id, &d.drive_id)?;
            Ok(ApiRequest::PutDrive(d))
        }
        ("PATCH", "drives", Some(id)) => {
            let d: PartialDrive = body_of(body)?;
            same_id(id, &d.drive_id)?;
            Ok(ApiRequest::PatchDrive(d))
        }
        ("PUT", "network-interfaces", Some(id)) => {
            let n: NetworkInterface = body_of(body)?;
            same_id(id, &n.iface_id)?;
            Ok(ApiRequest::PutNetworkInterface(n))
        }
        ("PATCH", "network-interfaces", Some(id)) => {
            let n: PartialNetworkInterface = body_of(body)?;
            same_id(id, &n.iface_id)?;
            Ok(ApiRequest::PatchNetworkInterface(n))
        }
        ("PUT", "actions", None) => body_of(body).map(ApiRequest::Action),
        ("PATCH", "vm", None) => body_of(body).map(ApiRequest::PatchVm),
        ("GET", "vm", Some("config")) => Ok(ApiRequest::GetVmConfig),
        ("PUT", "logger", None) => body_of(body).map(ApiRequest::PutLogger),
        ("PUT", "metrics", None) => body_of(body).map(ApiRequest::PutMetrics),
        ("PUT", "entropy", None) => body_of(body).map(ApiRequest::PutEntropy),
        ("PUT", "vsock", None) => body_of(body).map(ApiRequest::PutVsock),
        ("PUT", "snapshot", Some("create")) => body_of(body).map(ApiRequest::CreateSnapshot),
        ("PUT", "snapshot", Some("load")) => body_of(body).map(ApiRequest::LoadSnapshot),
        (_, "drives" | "network-interfaces", None) => Err(format!(
            "{method} {path}: the {first} path needs an id, e.g. /{first}/rootfs."
        )),
        _ => Err(invalid()),
    }
}

/// Parses a JSON body; an empty one gets Firecracker's "Empty request." answer.
fn body_of<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err("Empty request.".into());
    }
    // Every body is a JSON object (serde would also take a struct's fields in an array).
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("The request body must be a JSON object.".into());
    }
    serde_json::from_slice(body).map_err(|e| {
        format!("An error occurred when deserializing the json body of a request: {e}.")
    })
}

/// The id in the path must be the id in the body, and a usable one.
fn same_id(path_id: &str, body_id: &str) -> Result<(), String> {
    if path_id != body_id {
        return Err(format!(
            "The id from the path [{path_id}] does not match the id from the body [{body_id}]!"
        ));
    }
    let ok = !body_id.is_empty()
        && body_id.len() <= 64
        && body_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !ok {
        return Err(format!(
            "Invalid id [{body_id}]: use 1 to 64 letters, digits, '_', '-' or '.'."
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
