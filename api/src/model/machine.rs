//! Machine configuration, boot source, logger and metrics bodies.

use serde::{Deserialize, Serialize};

/// `PUT /machine-config` and `GET /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// vCPUs (1 to 32 in Firecracker; Kiln's own limit may be lower).
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (Kiln: false only).
    #[serde(default)]
    pub smt: bool,
    /// Track dirty pages for diff snapshots (stored; snapshots are not served yet).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Huge pages backing guest memory (Kiln: `None` only).
    #[serde(default)]
    pub huge_pages: HugePages,
    /// CPU template (Kiln: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
            cpu_template: None,
        }
    }
}

/// `PATCH /machine-config`: any subset of the fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    /// vCPUs.
    pub vcpu_count: Option<u8>,
    /// Guest memory in MiB.
    pub mem_size_mib: Option<u64>,
    /// Simultaneous multithreading.
    pub smt: Option<bool>,
    /// Dirty page tracking.
    pub track_dirty_pages: Option<bool>,
    /// Huge pages.
    pub huge_pages: Option<HugePages>,
    /// CPU template.
    pub cpu_template: Option<String>,
}

impl MachineConfig {
    /// This configuration with `patch` applied.
    pub fn patched(&self, patch: &MachineConfigPatch) -> Self {
        Self {
            vcpu_count: patch.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: patch.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: patch.smt.unwrap_or(self.smt),
            track_dirty_pages: patch.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: patch.huge_pages.unwrap_or(self.huge_pages),
            cpu_template: patch.cpu_template.clone().or(self.cpu_template.clone()),
        }
    }

    /// Firecracker's checks plus what Kiln does not offer.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=32).contains(&self.vcpu_count) {
            return Err(format!(
                "The vCPU number is invalid: {}. It must be between 1 and 32.",
                self.vcpu_count
            ));
        }
        let max = vmm::host::KILN_MAX_VCPUS;
        if u32::from(self.vcpu_count) > max {
            return Err(format!(
                "vcpu_count {} is above Kiln's limit of {max} vCPUs: use {max} or fewer.",
                self.vcpu_count
            ));
        }
        if self.mem_size_mib < 2 {
            return Err(format!(
                "The memory size (MiB) is invalid: {}. Kiln needs at least 2 MiB.",
                self.mem_size_mib
            ));
        }
        if self.mem_size_mib.checked_mul(1 << 20).is_none() {
            return Err(format!(
                "The memory size (MiB) is invalid: {}.",
                self.mem_size_mib
            ));
        }
        if self.smt {
            return Err("Kiln does not support SMT (smt: true): set smt to false.".into());
        }
        if self.huge_pages != HugePages::None {
            return Err("Kiln does not support huge pages yet: set huge_pages to \"None\".".into());
        }
        match self.cpu_template.as_deref() {
            None | Some("None") => Ok(()),
            Some(t) => Err(format!(
                "Kiln does not support CPU templates ({t}): leave cpu_template out."
            )),
        }
    }
}

/// Huge pages backing guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum HugePages {
    /// Normal 4 KiB pages.
    #[default]
    None,
    /// 2 MiB hugetlbfs pages (not supported by Kiln).
    #[serde(rename = "2M")]
    Hugetlbfs2M,
    /// Transparent huge pages (not supported by Kiln).
    Transparent,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Kernel image: an ELF vmlinux or a bzImage.
    pub kernel_image_path: String,
    /// Initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
    /// Kernel command line (Firecracker's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// File or named pipe the log goes to (appended).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// Most verbose level written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Prefix lines with their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix lines with the source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only lines from this module path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// Log levels as Firecracker names them (any letter case accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    /// Nothing.
    #[serde(alias = "off", alias = "OFF")]
    Off,
    /// Errors.
    #[serde(alias = "error", alias = "ERROR")]
    Error,
    /// Warnings and errors.
    #[serde(alias = "warning", alias = "WARNING", alias = "Warn", alias = "warn")]
    Warning,
    /// Information.
    #[serde(alias = "info", alias = "INFO")]
    Info,
    /// Debugging detail.
    #[serde(alias = "debug", alias = "DEBUG")]
    Debug,
    /// Everything.
    #[serde(alias = "trace", alias = "TRACE")]
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Off => Self::Off,
            LogLevel::Error => Self::Error,
            LogLevel::Warning => Self::Warn,
            LogLevel::Info => Self::Info,
            LogLevel::Debug => Self::Debug,
            LogLevel::Trace => Self::Trace,
        }
    }
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File or named pipe the metrics lines go to (appended).
    pub metrics_path: String,
}
