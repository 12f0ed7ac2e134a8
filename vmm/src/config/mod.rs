//! VM configuration: one validated struct built from a JSON/TOML file and CLI flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Default kernel command line.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Default guest memory (128 MiB).
pub const DEFAULT_MEMORY: u64 = 128 << 20;
/// Smallest guest memory Kiln accepts: room for the boot structures and a kernel.
pub const MIN_MEMORY: u64 = 2 << 20;
/// Guest memory is a whole number of pages of this size (KVM maps memory by pages).
pub const PAGE_SIZE: u64 = 4096;

/// Errors in the configuration (file or flags).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid JSON/TOML for Kiln.
    #[error("config file {path} is invalid: {msg}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        msg: String,
    },
    /// A size such as `--memory` could not be parsed.
    #[error("invalid size '{0}': use a number with an optional K, M, G suffix (no suffix = MiB), e.g. 256M or 2G")]
    Size(String),
    /// No kernel was given.
    #[error("no kernel given: pass --kernel PATH (a vmlinux ELF or a bzImage) or set \"kernel\" in the config file")]
    NoKernel,
    /// Memory is out of range.
    #[error("memory {0} bytes is too small: give at least 2M (e.g. --memory 128M)")]
    MemoryTooSmall(u64),
    /// The vCPU count is zero.
    #[error("cpus must be at least 1 (e.g. --cpus 1)")]
    ZeroCpus,
    /// More vCPUs than Kiln supports.
    #[error("cpus {0} is above Kiln's limit of {max} vCPUs: use --cpus {max} or fewer", max = crate::host::KILN_MAX_VCPUS)]
    TooManyCpus(u32),
    /// A `--serial` value that is not stdio, file=PATH or none.
    #[error("invalid --serial '{0}': use stdio, file=PATH or none")]
    Serial(String),
    /// Memory that is not a whole number of 4 KiB pages.
    #[error("memory {bytes} bytes is not a multiple of 4 KiB (the page size): give whole pages, e.g. --memory {}K", bytes / 4096 * 4)]
    MemoryNotPageAligned {
        /// The size asked for.
        bytes: u64,
    },
    /// A net's MAC address (from the config file) is invalid.
    #[error("invalid MAC '{mac}' for net tap={tap}: {why}")]
    Mac {
        /// The TAP the net is on.
        tap: String,
        /// The MAC as given.
        mac: String,
        /// What is wrong and how to write it.
        why: &'static str,
    },
    /// A net's TAP name (from the config file) is invalid.
    #[error(
        "invalid tap name '{0}' in the config file: use 1 to 15 characters, e.g. tap = \"kiln0\""
    )]
    TapName(String),
    /// A vsock CID a guest cannot have.
    #[error("vsock cid {0} is reserved: give the guest 3 or more (below 4294967295), e.g. cid=3")]
    VsockCid(u64),
    /// A `--disk`/`--net` option string that could not be parsed.
    #[error("invalid {what} '{value}': {why}")]
    DeviceOption {
        /// `--disk` or `--net`.
        what: &'static str,
        /// The option string.
        value: String,
        /// What is wrong and how to write it.
        why: String,
    },
}

/// Where guest serial output goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SerialConfig {
    /// Kiln's stdout (and stdin to the guest).
    #[default]
    Stdio,
    /// Appended to a file.
    File(PathBuf),
    /// Discarded.
    None,
}

impl std::str::FromStr for SerialConfig {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "stdio" => Ok(Self::Stdio),
            "none" => Ok(Self::None),
            _ => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
                _ => Err(ConfigError::Serial(s.to_string())),
            },
        }
    }
}

impl TryFrom<String> for SerialConfig {
    type Error = ConfigError;
    fn try_from(s: String) -> Result<Self, ConfigError> {
        s.parse()
    }
}

impl From<SerialConfig> for String {
    fn from(s: SerialConfig) -> String {
        match s {
            SerialConfig::Stdio => "stdio".into(),
            SerialConfig::None => "none".into(),
            SerialConfig::File(p) => format!("file={}", p.display()),
        }
    }
}

/// Which entry point to use for ELF kernels that offer PVH: the boot crate's own type.
pub use boot::BootProtocol;

mod devices;
pub use self::devices::{
    parse_kv, parse_mac, DiskCache, DiskConfig, NetConfig, RngConfig, VsockConfig,
};

/// A guest memory size: an integer (MiB) or a string with a K/M/G suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "String")]
pub struct MemSize(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Int(u64),
    Str(String),
}

impl TryFrom<SizeRepr> for MemSize {
    type Error = ConfigError;
    fn try_from(r: SizeRepr) -> Result<Self, ConfigError> {
        match r {
            SizeRepr::Int(mib) => mib
                .checked_mul(1 << 20)
                .map(MemSize)
                .ok_or_else(|| ConfigError::Size(mib.to_string())),
            SizeRepr::Str(s) => parse_size(&s).map(MemSize),
        }
    }
}

impl From<MemSize> for String {
    fn from(m: MemSize) -> String {
        match m.0 {
            b if b % (1 << 20) == 0 => format!("{}M", b >> 20),
            b => format!("{b}B"),
        }
    }
}

/// Parses `256M`, `2G`, `65536K`, `512` (MiB) or `1024B` into bytes.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let err = || ConfigError::Size(s.to_string());
    let t = s.trim();
    let (num, shift) = match t.char_indices().last().ok_or_else(err)? {
        (i, 'k' | 'K') => (&t[..i], 10),
        (i, 'm' | 'M') => (&t[..i], 20),
        (i, 'g' | 'G') => (&t[..i], 30),
        (i, 'b' | 'B') => (&t[..i], 0),
        _ => (t, 20),
    };
    let n: u64 = num.trim().parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// The whole VM configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VmConfig {
    /// Kernel image (vmlinux ELF or bzImage).
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (Kiln appends its virtio-mmio device entries).
    pub cmdline: String,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Guest memory in bytes.
    pub memory: MemSize,
    /// Serial console destination.
    pub serial: SerialConfig,
    /// Boot protocol choice for ELF kernels.
    pub boot_protocol: BootProtocol,
    /// Report the boot-timer signal on stderr (the device itself is always mapped).
    pub boot_timer: bool,
    /// virtio-blk disks.
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces.
    pub nets: Vec<NetConfig>,
    /// Log the pages the guest dirties, for diff snapshots.
    pub track_dirty_pages: bool,
    /// A virtio-rng device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
    /// A virtio-vsock device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            kernel: None,
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            cpus: 1,
            memory: MemSize(DEFAULT_MEMORY),
            serial: SerialConfig::Stdio,
            boot_protocol: BootProtocol::Auto,
            boot_timer: false,
            disks: Vec::new(),
            nets: Vec::new(),
            track_dirty_pages: false,
            rng: None,
            vsock: None,
        }
    }
}

impl VmConfig {
    /// Reads a config file: TOML when it ends in `.toml`, JSON otherwise.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_err = |msg: String| ConfigError::Parse {
            path: path.to_path_buf(),
            msg,
        };
        if path.extension().is_some_and(|e| e == "toml") {
            toml::from_str(&text).map_err(|e| parse_err(e.to_string()))
        } else {
            serde_json::from_str(&text).map_err(|e| parse_err(e.to_string()))
        }
    }

    /// Checks what can be checked without the host: kernel given, sizes and counts
    /// in range. Host limits (KVM's vCPU maximum, memory) are checked when the VM is built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.is_none() {
            return Err(ConfigError::NoKernel);
        }
        if self.memory.0 < MIN_MEMORY {
            return Err(ConfigError::MemoryTooSmall(self.memory.0));
        }
        if !self.memory.0.is_multiple_of(PAGE_SIZE) {
            return Err(ConfigError::MemoryNotPageAligned {
                bytes: self.memory.0,
            });
        }
        match self.cpus {
            0 => return Err(ConfigError::ZeroCpus),
            n if n > crate::host::KILN_MAX_VCPUS => return Err(ConfigError::TooManyCpus(n)),
            _ => {}
        }
        self.nets.iter().try_for_each(NetConfig::check)?;
        self.vsock.as_ref().map_or(Ok(()), VsockConfig::check)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("512").unwrap(), 512 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        for bad in ["", "M", "abc", "-1M", "1.5G", "99999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn file_formats() {
        let dir = std::env::temp_dir().join(format!("kiln-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let toml_path = dir.join("vm.toml");
        std::fs::write(
            &toml_path,
            "kernel = \"/k\"\nmemory = \"256M\"\ncpus = 2\nserial = \"none\"\n\
             [[disks]]\npath = \"/d.img\"\nreadonly = true\n",
        )
        .unwrap();
        let c = VmConfig::from_file(&toml_path).unwrap();
        assert_eq!(c.memory.0, 256 << 20);
        assert_eq!(c.cpus, 2);
        assert_eq!(c.serial, SerialConfig::None);
        assert!(c.disks[0].readonly);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        let json_path = dir.join("vm.json");
        std::fs::write(
            &json_path,
            r#"{"kernel":"/k","memory":64,"serial":"file=/tmp/x"}"#,
        )
        .unwrap();
        let c = VmConfig::from_file(&json_path).unwrap();
        assert_eq!(c.memory.0, 64 << 20);
        assert_eq!(c.serial, SerialConfig::File("/tmp/x".into()));
        std::fs::write(&json_path, r#"{"kernel":"/k","memry":64}"#).unwrap();
        assert!(matches!(
            VmConfig::from_file(&json_path),
            Err(ConfigError::Parse { .. })
        ));
        let round: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(round, c);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn validation() {
        let mut c = VmConfig::default();
        assert!(matches!(c.validate(), Err(ConfigError::NoKernel)));
        c.kernel = Some("/k".into());
        c.validate().unwrap();
        c.cpus = 0;
        assert!(matches!(c.validate(), Err(ConfigError::ZeroCpus)));
        c.cpus = 1;
        c.memory = MemSize(0);
        assert!(matches!(c.validate(), Err(ConfigError::MemoryTooSmall(0))));
    }

    #[test]
    fn memory_must_be_whole_pages() {
        let mut c = VmConfig {
            kernel: Some("/k".into()),
            memory: MemSize(parse_size("2049K").unwrap()),
            ..VmConfig::default()
        };
        let err = c.validate().unwrap_err();
        assert!(
            matches!(err, ConfigError::MemoryNotPageAligned { bytes } if bytes == 2049 << 10),
            "{err:?}"
        );
        assert!(err.to_string().contains("--memory 2048K"), "{err}");
        c.memory = MemSize(parse_size("2052K").unwrap());
        c.validate().unwrap();
    }

    fn with_net(tap: &str, mac: Option<&str>) -> VmConfig {
        VmConfig {
            kernel: Some("/k".into()),
            nets: vec![NetConfig {
                tap: tap.into(),
                mac: mac.map(String::from),
                ..Default::default()
            }],
            ..VmConfig::default()
        }
    }

    #[test]
    fn config_file_macs_are_validated() {
        with_net("kiln0", Some("02:00:00:00:00:01"))
            .validate()
            .unwrap();
        with_net("kiln0", None).validate().unwrap();
        let err = with_net("kiln0", Some("zz")).validate().unwrap_err();
        assert!(
            matches!(&err, ConfigError::Mac { mac, .. } if mac == "zz"),
            "{err:?}"
        );
        assert!(err.to_string().contains("AA:BB:CC:DD:EE:FF"), "{err}");
    }

    #[test]
    fn multicast_macs_are_rejected() {
        let err = with_net("kiln0", Some("01:00:5e:00:00:01"))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("multicast"), "{err}");
        assert!("tap=kiln0,mac=03:00:00:00:00:01"
            .parse::<NetConfig>()
            .is_err());
    }

    #[test]
    fn config_file_tap_names_are_validated() {
        let err = with_net("", None).validate().unwrap_err();
        assert!(matches!(err, ConfigError::TapName(_)), "{err:?}");
        let err = with_net("averyveryverylongname", None)
            .validate()
            .unwrap_err();
        assert!(matches!(err, ConfigError::TapName(_)), "{err:?}");
    }

    #[test]
    fn device_options() {
        let d: DiskConfig = "path=/a.img,readonly=on,id=disk0".parse().unwrap();
        assert_eq!(d.path, PathBuf::from("/a.img"));
        assert!(d.readonly);
        assert_eq!(d.id.as_deref(), Some("disk0"));
        let d: DiskConfig = "/b.img".parse().unwrap();
        assert!(!d.readonly);
        assert!("readonly=on".parse::<DiskConfig>().is_err());
        assert!("path=/a,readonly=maybe".parse::<DiskConfig>().is_err());
        assert!("path=/a,size=3".parse::<DiskConfig>().is_err());
        let n: NetConfig = "tap=kiln0,mac=02:00:00:00:00:01".parse().unwrap();
        assert_eq!(n.tap, "kiln0");
        assert!("tap=kiln0,mac=zz".parse::<NetConfig>().is_err());
        assert!("tap=averyveryverylongname".parse::<NetConfig>().is_err());
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
    }
}
