//! Firecracker's request and response bodies (field names, types and defaults from its
//! OpenAPI description, `api/openapi.yaml` for what Kiln serves). Every request body
//! rejects unknown fields, as Firecracker does.

mod devices;
mod machine;
mod resources;
mod snapshot;

use serde::{Deserialize, Serialize};

pub use devices::{
    Drive, DriveCache, EntropyDevice, IoEngine, NetworkInterface, PartialDrive,
    PartialNetworkInterface, VsockDevice,
};
pub use machine::{
    BootSource, HugePages, LogLevel, Logger, MachineConfig, MachineConfigPatch, Metrics,
};
pub use resources::{VmResources, DEFAULT_BOOT_ARGS};
pub use snapshot::{
    MemBackend, MemBackendType, NetworkOverride, SnapshotCreateParams, SnapshotLoadParams,
    SnapshotType,
};

/// The Firecracker API version whose paths and bodies Kiln answers.
pub const FIRECRACKER_API_VERSION: &str = "1.10.0";

/// An error answer: `{"fault_message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What went wrong and, where it helps, what to do.
    pub fault_message: String,
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    /// The `--id` given at start (default `anonymous-instance`).
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: &'static str,
    /// Kiln's version.
    pub vmm_version: &'static str,
    /// `Kiln`.
    pub app_name: &'static str,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    /// The Firecracker API version Kiln implements.
    pub firecracker_version: &'static str,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// What to do.
    pub action_type: ActionType,
}

/// The actions of `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    /// Build and start the VM (pre-boot only).
    InstanceStart,
    /// Press Ctrl+Alt+Del on the i8042 keyboard (post-boot only).
    SendCtrlAltDel,
    /// Write a metrics line now.
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmStateChange {
    /// The state to move to.
    pub state: VmStateName,
}

/// The states `PATCH /vm` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VmStateName {
    /// Stop running guest code.
    Paused,
    /// Run guest code again.
    Resumed,
}
