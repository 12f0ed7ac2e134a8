//! Everything configured before the VM starts, in Firecracker's layout: the body of
//! `GET /vm/config` and the format of `--config-file`. Converted into Kiln's own
//! [`VmConfig`] at `InstanceStart`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vmm::config::{
    DiskCache, DiskConfig, MemSize, NetConfig, RngConfig, SerialConfig, VmConfig, VsockConfig,
};

use super::{
    BootSource, Drive, DriveCache, EntropyDevice, IoEngine, Logger, MachineConfig, Metrics,
    NetworkInterface, VsockDevice,
};

/// Firecracker's kernel command line when `boot_args` is not given.
pub const DEFAULT_BOOT_ARGS: &str =
    "reboot=k panic=1 nomodule 8250.nr_uarts=0 i8042.noaux i8042.nomux i8042.dumbkbd swiotlb=noforce";

/// The pre-boot configuration. Members Kiln does not serve are accepted in a config
/// file only when null.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmResources {
    /// Kernel, initrd and command line.
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSource>,
    /// Drives, in the order they were added.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: MachineConfig,
    /// Network interfaces, in the order they were added.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// Where the log goes.
    #[serde(default)]
    pub logger: Option<Logger>,
    /// Where metrics go.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// Not supported (null only).
    #[serde(default)]
    pub balloon: Unsupported,
    /// Not supported (null only).
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Unsupported,
    /// Not supported (null only).
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Unsupported,
    /// The virtio-vsock device.
    #[serde(default)]
    pub vsock: Option<VsockDevice>,
    /// The virtio-rng device.
    #[serde(default)]
    pub entropy: Option<EntropyDevice>,
    /// Not supported (null only).
    #[serde(default)]
    pub pmem: Unsupported,
    /// Not supported (null only).
    #[serde(rename = "memory-hotplug", default)]
    pub memory_hotplug: Unsupported,
}

/// A member Kiln does not serve: `null` (or absent) is accepted, anything else refused
/// with a message naming it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unsupported;

impl Serialize for Unsupported {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_none()
    }
}

impl<'de> Deserialize<'de> for Unsupported {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        match v {
            serde_json::Value::Null => Ok(Unsupported),
            _ => Err(serde::de::Error::custom(
                "Kiln does not support this device or setting yet: remove it or set it to null",
            )),
        }
    }
}

/// Top-level keys that only Firecracker's layout has (Kiln's own uses `kernel`,
/// `disks`, …).
const FIRECRACKER_KEYS: &[&str] = &[
    "boot-source",
    "machine-config",
    "drives",
    "network-interfaces",
];

impl VmResources {
    /// Reads a Firecracker config file: a JSON object (serde would also take the
    /// fields in an array; Firecracker's layout is an object, so nothing else is).
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        if !text.trim_start().starts_with('{') {
            return Err(serde::de::Error::custom(
                "a Firecracker configuration is a JSON object: {\"boot-source\": ..., ...}",
            ));
        }
        serde_json::from_str(text)
    }

    /// Whether `text` is a JSON object in Firecracker's layout rather than Kiln's.
    pub fn is_firecracker_layout(text: &str) -> bool {
        serde_json::from_str::<serde_json::Value>(text)
            .ok()
            .and_then(|v| {
                v.as_object()
                    .map(|o| o.keys().any(|k| FIRECRACKER_KEYS.contains(&k.as_str())))
            })
            .unwrap_or(false)
    }

    /// Adds a drive or replaces the one with the same id. At most one root device.
    pub fn put_drive(&mut self, drive: Drive) -> Result<(), String> {
        if drive.io_engine == IoEngine::Async {
            return Err(
                "Kiln does not support the Async io_engine: use \"Sync\" or leave it out.".into(),
            );
        }
        if drive.partuuid.is_some() && !drive.is_root_device {
            return Err("partuuid is only used with is_root_device: true.".into());
        }
        if drive.is_root_device {
            if let Some(other) = self
                .drives
                .iter()
                .find(|d| d.is_root_device && d.drive_id != drive.drive_id)
            {
                return Err(format!(
                    "A root block device already exists ({}): only one drive can have \
                     is_root_device: true.",
                    other.drive_id
                ));
            }
        }
        match self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(d) => *d = drive,
            None => self.drives.push(drive),
        }
        Ok(())
    }

    /// Adds an interface or replaces the one with the same id; MACs and TAP names are
    /// checked as Kiln's own configuration checks them, and no two interfaces may share
    /// a TAP or a MAC.
    pub fn put_network_interface(&mut self, iface: NetworkInterface) -> Result<(), String> {
        if !(1..=15).contains(&iface.host_dev_name.len()) {
            return Err(format!(
                "host_dev_name '{}' is not a valid TAP name: use 1 to 15 characters.",
                iface.host_dev_name
            ));
        }
        net_config(&iface).check().map_err(|e| e.to_string())?;
        let clash = self.network_interfaces.iter().find(|n| {
            n.iface_id != iface.iface_id
                && (n.host_dev_name == iface.host_dev_name
                    || (iface.guest_mac.is_some() && n.guest_mac == iface.guest_mac))
        });
        if let Some(other) = clash {
            return Err(format!(
                "The host device or guest MAC of {} is already used by network interface {}.",
                iface.iface_id, other.iface_id
            ));
        }
        match self
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == iface.iface_id)
        {
            Some(n) => *n = iface,
            None => self.network_interfaces.push(iface),
        }
        Ok(())
    }

    /// The drives in the order the guest sees them: the root device first (`/dev/vda`).
    pub fn drives_in_guest_order(&self) -> Vec<&Drive> {
        let mut v: Vec<&Drive> = self.drives.iter().filter(|d| d.is_root_device).collect();
        v.extend(self.drives.iter().filter(|d| !d.is_root_device));
        v
    }

    /// Kiln's own configuration described in Firecracker's layout (drives `disk0`, …,
    /// interfaces `net0`, …), for the API of a VM started by `kiln run --api-sock`.
    pub fn from_vm_config(cfg: &VmConfig) -> Self {
        let path = |p: &std::path::Path| p.display().to_string();
        Self {
            boot_source: cfg.kernel.as_deref().map(|k| BootSource {
                kernel_image_path: path(k),
                initrd_path: cfg.initrd.as_deref().map(path),
                boot_args: Some(cfg.cmdline.clone()),
            }),
            drives: cfg
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| Drive {
                    drive_id: format!("disk{i}"),
                    path_on_host: path(&d.path),
                    is_root_device: false,
                    is_read_only: d.readonly,
                    partuuid: None,
                    cache_type: match d.cache {
                        DiskCache::Unsafe => DriveCache::Unsafe,
                        DiskCache::Writeback => DriveCache::Writeback,
                    },
                    rate_limiter: d.rate_limiter,
                    io_engine: IoEngine::Sync,
                })
                .collect(),
            machine_config: MachineConfig {
                vcpu_count: u8::try_from(cfg.cpus).unwrap_or(u8::MAX),
                mem_size_mib: cfg.memory.0 >> 20,
                track_dirty_pages: cfg.track_dirty_pages,
                ..MachineConfig::default()
            },
            network_interfaces: cfg
                .nets
                .iter()
                .enumerate()
                .map(|(i, n)| NetworkInterface {
                    iface_id: format!("net{i}"),
                    host_dev_name: n.tap.clone(),
                    guest_mac: n.mac.clone(),
                    rx_rate_limiter: n.rx_rate_limiter,
                    tx_rate_limiter: n.tx_rate_limiter,
                })
                .collect(),
            entropy: cfg.rng.map(|r| EntropyDevice {
                rate_limiter: r.rate_limiter,
            }),
            vsock: cfg.vsock.as_ref().map(|v| VsockDevice {
                guest_cid: v.cid,
                uds_path: path(&v.uds_path),
                vsock_id: None,
            }),
            ..Self::default()
        }
    }

    /// Kiln's configuration for these resources; serial on stdio as Firecracker's.
    pub fn to_vm_config(&self, boot_timer: bool) -> Result<VmConfig, String> {
        let boot = self
            .boot_source
            .as_ref()
            .ok_or("Cannot start microvm without kernel configuration: PUT /boot-source first.")?;
        self.machine_config.check()?;
        let mut cmdline = boot
            .boot_args
            .clone()
            .unwrap_or_else(|| DEFAULT_BOOT_ARGS.to_string());
        let drives = self.drives_in_guest_order();
        if let Some(root) = drives.first().filter(|d| d.is_root_device) {
            let dev = match &root.partuuid {
                Some(uuid) => format!("PARTUUID={uuid}"),
                None => "/dev/vda".to_string(),
            };
            let mode = if root.is_read_only { "ro" } else { "rw" };
            cmdline.push_str(&format!(" root={dev} {mode}"));
        }
        let cfg = VmConfig {
            kernel: Some(PathBuf::from(&boot.kernel_image_path)),
            initrd: boot.initrd_path.as_ref().map(PathBuf::from),
            cmdline,
            cpus: u32::from(self.machine_config.vcpu_count),
            memory: MemSize(self.machine_config.mem_size_mib << 20),
            serial: SerialConfig::Stdio,
            boot_timer,
            disks: drives.iter().map(|d| disk_config(d)).collect(),
            nets: self.network_interfaces.iter().map(net_config).collect(),
            track_dirty_pages: self.machine_config.track_dirty_pages,
            rng: self.entropy.map(|e| RngConfig {
                rate_limiter: e.rate_limiter,
            }),
            vsock: self.vsock.as_ref().map(|v| VsockConfig {
                cid: v.guest_cid,
                uds_path: PathBuf::from(&v.uds_path),
            }),
            ..VmConfig::default()
        };
        cfg.validate().map_err(|e| e.to_string())?;
        Ok(cfg)
    }
}

fn disk_config(d: &Drive) -> DiskConfig {
    DiskConfig {
        path: PathBuf::from(&d.path_on_host),
        readonly: d.is_read_only,
        id: None,
        rate_limiter: d.rate_limiter,
        cache: match d.cache_type {
            DriveCache::Unsafe => DiskCache::Unsafe,
            DriveCache::Writeback => DiskCache::Writeback,
        },
    }
}

fn net_config(n: &NetworkInterface) -> NetConfig {
    NetConfig {
        tap: n.host_dev_name.clone(),
        mac: n.guest_mac.clone(),
        rx_rate_limiter: n.rx_rate_limiter,
        tx_rate_limiter: n.tx_rate_limiter,
    }
}
