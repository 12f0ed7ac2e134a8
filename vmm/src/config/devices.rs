//! Device entries of the VM configuration: virtio-blk disks and virtio-net interfaces,
//! from a config file or `--disk` / `--net` option strings.

use std::path::PathBuf;

use devices::rate_limiter::RateLimiterConfig;
use devices::virtio::block::CacheType;
use serde::{Deserialize, Serialize};

use super::ConfigError;

/// How a disk uses the host's page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskCache {
    /// Flush requests are offered and honoured; without them every write is synced.
    #[default]
    Writeback,
    /// No flush offered, nothing synced: fastest, a host crash can lose writes.
    Unsafe,
}

impl From<DiskCache> for CacheType {
    fn from(c: DiskCache) -> Self {
        match c {
            DiskCache::Writeback => CacheType::Writeback,
            DiskCache::Unsafe => CacheType::Unsafe,
        }
    }
}

/// A virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Guest cannot write.
    #[serde(default)]
    pub readonly: bool,
    /// Serial number reported by GET_ID (20 bytes max).
    #[serde(default)]
    pub id: Option<String>,
    /// Limits on the disk's requests and bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// Host page-cache use.
    #[serde(default)]
    pub cache: DiskCache,
}

/// A virtio-net interface on a TAP.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// TAP interface name (opened if it exists, created and removed on exit if not).
    pub tap: String,
    /// Guest MAC address; generated from the TAP name if absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// Limits on frames the guest receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Limits on frames the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Splits `key=value,key=value` device options (a first bare value is `first_key`).
pub fn parse_kv(
    what: &'static str,
    s: &str,
    first_key: &str,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, part) in s.split(',').enumerate() {
        match part.split_once('=') {
            Some((k, v)) if !k.is_empty() => out.push((k.to_string(), v.to_string())),
            None if i == 0 && !part.is_empty() => out.push((first_key.to_string(), part.into())),
            _ => {
                return Err(ConfigError::DeviceOption {
                    what,
                    value: s.to_string(),
                    why: format!("'{part}' is not key=value"),
                })
            }
        }
    }
    Ok(out)
}

impl std::str::FromStr for DiskConfig {
    type Err = ConfigError;
    /// Parses `path=FILE[,readonly=on][,id=NAME]`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::DeviceOption {
            what: "--disk",
            value: s.to_string(),
            why,
        };
        let mut disk = DiskConfig::default();
        for (k, v) in parse_kv("--disk", s, "path")? {
            match k.as_str() {
                "path" => disk.path = PathBuf::from(v),
                "readonly" | "ro" => {
                    disk.readonly = match v.as_str() {
                        "on" | "true" | "yes" | "1" => true,
                        "off" | "false" | "no" | "0" => false,
                        _ => return Err(bad(format!("readonly={v}: use readonly=on or off"))),
                    }
                }
                "id" => disk.id = Some(v),
                _ => return Err(bad(format!("unknown key '{k}': use path, readonly, id"))),
            }
        }
        if disk.path.as_os_str().is_empty() {
            return Err(bad("missing path: use --disk path=FILE".into()));
        }
        Ok(disk)
    }
}

impl std::str::FromStr for NetConfig {
    type Err = ConfigError;
    /// Parses `tap=NAME[,mac=AA:BB:CC:DD:EE:FF]`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::DeviceOption {
            what: "--net",
            value: s.to_string(),
            why,
        };
        let mut net = NetConfig::default();
        for (k, v) in parse_kv("--net", s, "tap")? {
            match k.as_str() {
                "tap" => net.tap = v,
                "mac" => net.mac = Some(v),
                _ => return Err(bad(format!("unknown key '{k}': use tap, mac"))),
            }
        }
        if !tap_name_ok(&net.tap) {
            return Err(bad(
                "tap name must be 1 to 15 characters: use --net tap=NAME".into(),
            ));
        }
        if let Some(m) = &net.mac {
            check_mac(m).map_err(|why| bad(format!("mac '{m}': {why}")))?;
        }
        Ok(net)
    }
}

impl NetConfig {
    /// The checks `--net` applies, for nets from a config file: a valid TAP name and,
    /// when given, a valid MAC.
    pub fn check(&self) -> Result<(), ConfigError> {
        if !tap_name_ok(&self.tap) {
            return Err(ConfigError::TapName(self.tap.clone()));
        }
        match &self.mac {
            Some(m) => check_mac(m).map(drop).map_err(|why| ConfigError::Mac {
                tap: self.tap.clone(),
                mac: m.clone(),
                why,
            }),
            None => Ok(()),
        }
    }
}

fn tap_name_ok(name: &str) -> bool {
    (1..=15).contains(&name.len())
}

/// A MAC a NIC can have: six hex bytes, not multicast (bit 0 of the first byte clear).
fn check_mac(s: &str) -> Result<[u8; 6], &'static str> {
    let mac = parse_mac(s).ok_or(
        "write it as six hex bytes AA:BB:CC:DD:EE:FF, e.g. 02:00:00:00:00:01, or leave it out",
    )?;
    if mac[0] & 1 != 0 {
        return Err(
            "it is a multicast address: clear bit 0 of the first byte, e.g. 02:00:00:00:00:01",
        );
    }
    Ok(mac)
}

/// Parses a MAC address `AA:BB:CC:DD:EE:FF`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A virtio-rng device (entropy from the host's `getrandom`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngConfig {
    /// Limits on the bytes and requests the guest gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// A virtio-vsock device with Firecracker's host side on Unix sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u64,
    /// Host programs connect here (then write `CONNECT <port>`); a guest connection to
    /// host port P goes to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
}

impl std::str::FromStr for VsockConfig {
    type Err = ConfigError;
    /// Parses `cid=N,uds=PATH`.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        let bad = |why: String| ConfigError::DeviceOption {
            what: "--vsock",
            value: s.to_string(),
            why,
        };
        let (mut cid, mut uds) = (None, None);
        for (k, v) in parse_kv("--vsock", s, "cid")? {
            match k.as_str() {
                "cid" => {
                    cid = Some(
                        v.parse::<u64>()
                            .map_err(|_| bad(format!("cid={v} is not a number: use e.g. cid=3")))?,
                    )
                }
                "uds" | "uds_path" => uds = Some(PathBuf::from(v)),
                _ => return Err(bad(format!("unknown key '{k}': use cid, uds"))),
            }
        }
        let cfg = VsockConfig {
            cid: cid.ok_or_else(|| bad("missing cid: use --vsock cid=3,uds=PATH".into()))?,
            uds_path: uds.ok_or_else(|| bad("missing uds: use --vsock cid=3,uds=PATH".into()))?,
        };
        cfg.check().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }
}

impl VsockConfig {
    /// The CID is one a guest may have (not 0, 1, 2 or the 32-bit wildcard) and there
    /// is a socket path.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.cid < 3 || self.cid >= u64::from(u32::MAX) {
            return Err(ConfigError::VsockCid(self.cid));
        }
        if self.uds_path.as_os_str().is_empty() {
            return Err(ConfigError::DeviceOption {
                what: "--vsock",
                value: String::new(),
                why: "missing uds: use --vsock cid=3,uds=PATH".into(),
            });
        }
        Ok(())
    }
}
