//! Drive and network-interface bodies.

use devices::rate_limiter::RateLimiterConfig;
use serde::{Deserialize, Serialize};

/// `PUT /drives/{drive_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's name (must match the path).
    pub drive_id: String,
    /// Host file or block device backing the drive.
    pub path_on_host: String,
    /// The guest's root file system: Kiln attaches it first and adds `root=` to the
    /// command line.
    pub is_root_device: bool,
    /// Guest cannot write.
    #[serde(default)]
    pub is_read_only: bool,
    /// With `is_root_device`: mount the partition with this UUID as root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Host page-cache use.
    #[serde(default)]
    pub cache_type: DriveCache,
    /// Limits on the drive's requests and bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// I/O engine (Kiln: `Sync` only).
    #[serde(default)]
    pub io_engine: IoEngine,
}

/// Firecracker's `cache_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DriveCache {
    /// No flush offered to the guest, nothing synced (Firecracker's default).
    #[default]
    Unsafe,
    /// Flush offered and honoured.
    Writeback,
}

/// Firecracker's `io_engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum IoEngine {
    /// Synchronous I/O on the device's thread.
    #[default]
    Sync,
    /// io_uring (not supported by Kiln).
    Async,
}

/// `PATCH /drives/{drive_id}` (post-boot).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialDrive {
    /// The drive's name (must match the path).
    pub drive_id: String,
    /// A new backing file; the guest gets a configuration-change interrupt.
    #[serde(default)]
    pub path_on_host: Option<String>,
    /// New limits.
    #[serde(default)]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /network-interfaces/{iface_id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's name (must match the path).
    pub iface_id: String,
    /// The host TAP device.
    pub host_dev_name: String,
    /// The guest's MAC address (Kiln picks one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Limits on frames the guest receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on frames the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{iface_id}` (post-boot).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialNetworkInterface {
    /// The interface's name (must match the path).
    pub iface_id: String,
    /// New receive limits.
    #[serde(default)]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// New transmit limits.
    #[serde(default)]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /entropy`: a virtio-rng device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    /// Limits on the bytes and requests the guest gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PUT /vsock`: a virtio-vsock device with Firecracker's host side on Unix sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDevice {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// Host programs connect here and write `CONNECT <port>`; a guest connection to host
    /// port P goes to `<uds_path>_<P>`.
    pub uds_path: String,
    /// Older clients send an id; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
}
