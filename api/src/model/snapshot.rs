//! Snapshot request bodies (`PUT /snapshot/create`, `PUT /snapshot/load`).

use serde::{Deserialize, Serialize};

/// `PUT /snapshot/create` (post-boot, VM paused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// `Full` (all of memory) or `Diff` (pages dirtied since the last snapshot; needs
    /// `track_dirty_pages`).
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the VM state goes.
    pub snapshot_path: String,
    /// Where guest memory goes.
    pub mem_file_path: String,
    /// Accepted and ignored (older Firecracker clients send it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Firecracker's snapshot types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only pages dirtied since the last snapshot.
    Diff,
}

/// `PUT /snapshot/load` (in a fresh process, before anything is configured).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The VM state file.
    pub snapshot_path: String,
    /// Older form of `mem_backend` (a memory file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    /// Where guest memory comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemBackend>,
    /// Older name of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Track dirty pages after the restore (for diff snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Resume the VM once loaded (default: stay paused).
    #[serde(default)]
    pub resume_vm: bool,
    /// Other TAP devices for the snapshot's network interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
}

/// Where guest memory comes from on load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// `File` (Kiln: the only one; `Uffd` is refused).
    pub backend_type: MemBackendType,
    /// The memory file.
    pub backend_path: String,
}

/// Memory backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// A memory file, mapped copy-on-write.
    File,
    /// A userfaultfd handler's socket (not supported by Kiln).
    Uffd,
}

/// A network interface of the snapshot put on another TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface's id in the snapshot.
    pub iface_id: String,
    /// The TAP to use instead.
    pub host_dev_name: String,
}

impl SnapshotLoadParams {
    /// The memory file, from either form; an error message when neither or both are
    /// given or the backend is not a file.
    pub fn mem_file(&self) -> Result<&str, String> {
        match (&self.mem_file_path, &self.mem_backend) {
            (Some(p), None) => Ok(p),
            (None, Some(b)) if b.backend_type == MemBackendType::File => Ok(&b.backend_path),
            (None, Some(_)) => Err(
                "Kiln does not support the Uffd memory backend: use \"backend_type\": \"File\"."
                    .into(),
            ),
            (Some(_), Some(_)) => {
                Err("Give either mem_backend or the older mem_file_path, not both.".into())
            }
            (None, None) => Err("Missing the memory file: give mem_backend.".into()),
        }
    }

    /// Whether dirty pages are tracked after the load, from either field.
    pub fn tracks_dirty_pages(&self) -> bool {
        self.track_dirty_pages
            .or(self.enable_diff_snapshots)
            .unwrap_or(false)
    }
}
