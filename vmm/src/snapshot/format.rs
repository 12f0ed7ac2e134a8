//! The snapshot state file: a small container around the serde state of a paused VM.
//!
//! Layout (integers little-endian):
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | magic `KILNSNAP` |
//! | 4 | format version ([`FORMAT_VERSION`]) |
//! | 4 | header length `H` (at most [`MAX_HEADER_LEN`]) |
//! | `H` | header: JSON [`SnapshotHeader`] (Kiln version, format version, host features) |
//! | 8 | body length `B` |
//! | 4 | CRC-32 (IEEE) of every byte before it and of the body |
//! | `B` | body: the state as JSON |
//!
//! The magic, the version field and the header's encoding stay as they are in every
//! format version, so that any Kiln can say which Kiln made a snapshot it cannot read.
//! Every refusal is one [`FormatError`] line naming what is wrong. Writes are atomic.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use kvm_ioctls::{Cap, Kvm};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The first 8 bytes of every Kiln snapshot state file.
pub const MAGIC: [u8; 8] = *b"KILNSNAP";
/// The state-file format this Kiln writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The Kiln version recorded in the files this Kiln writes.
pub const KILN_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Largest header accepted (the real one is a few hundred bytes).
pub const MAX_HEADER_LEN: u32 = 64 << 10;
/// Largest state file written or read (a VM's state is tens of KiB).
pub const MAX_FILE_LEN: u64 = 64 << 20;

/// KVM capabilities whose state a snapshot carries: a snapshot made on a host with one
/// of them needs it on the host that restores it.
pub const SNAPSHOT_CAPS: &[(Cap, &str)] = &[
    (Cap::Xsave, "KVM_CAP_XSAVE"),
    (Cap::Xcrs, "KVM_CAP_XCRS"),
    (Cap::VcpuEvents, "KVM_CAP_VCPU_EVENTS"),
    (Cap::Debugregs, "KVM_CAP_DEBUGREGS"),
    (Cap::AdjustClock, "KVM_CAP_ADJUST_CLOCK"),
];

const PREFIX_LEN: usize = 16; // magic, version, header length
const TRAILER_LEN: usize = 12; // body length, checksum

/// What a snapshot needs from the host that restores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFeatures {
    /// KVM is PVM-backed (vCPU state differs from hardware virtualization's).
    pub pvm: bool,
    /// CPUID vendor string, e.g. `GenuineIntel` (the saved CPUID and MSRs are vendor's).
    pub cpu_vendor: String,
    /// The [`SNAPSHOT_CAPS`] the host has, by name.
    pub kvm_caps: Vec<String>,
}

impl HostFeatures {
    /// This host's features: opens the KVM device (`/dev/kvm` or `KILN_KVM_DEVICE`).
    pub fn current() -> Result<Self, FormatError> {
        let path = crate::host::kvm_device_path();
        let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| FormatError::Kvm(io::ErrorKind::InvalidInput.into()))?;
        let kvm = Kvm::new_with_path(&cpath)
            .map_err(|e| FormatError::Kvm(io::Error::from_raw_os_error(e.errno())))?;
        Ok(Self::from_kvm(&kvm))
    }

    /// The features of the host behind an open KVM handle.
    pub fn from_kvm(kvm: &Kvm) -> Self {
        HostFeatures {
            pvm: crate::host::is_pvm_host(),
            cpu_vendor: cpu_vendor(),
            kvm_caps: SNAPSHOT_CAPS
                .iter()
                .filter(|(cap, _)| kvm.check_extension(*cap))
                .map(|(_, name)| (*name).to_string())
                .collect(),
        }
    }

    /// Whether a snapshot made on a host with `self`'s features can be restored on `host`.
    pub fn check_restorable_on(&self, host: &HostFeatures) -> Result<(), FormatError> {
        let kind = |pvm: bool| {
            if pvm {
                "PVM"
            } else {
                "hardware virtualization"
            }
            .to_string()
        };
        if self.pvm != host.pvm {
            return Err(FormatError::HostMismatch {
                feature: "the KVM kind".into(),
                snapshot: kind(self.pvm),
                host: kind(host.pvm),
            });
        }
        if self.cpu_vendor != host.cpu_vendor {
            return Err(FormatError::HostMismatch {
                feature: "CPU vendor".into(),
                snapshot: self.cpu_vendor.clone(),
                host: host.cpu_vendor.clone(),
            });
        }
        if let Some(cap) = self.kvm_caps.iter().find(|c| !host.kvm_caps.contains(c)) {
            return Err(FormatError::HostMismatch {
                feature: cap.clone(),
                snapshot: "present".into(),
                host: "missing".into(),
            });
        }
        Ok(())
    }
}

/// The CPUID vendor string (leaf 0: EBX, EDX, ECX).
fn cpu_vendor() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        // `__cpuid` is an unsafe fn in Rust 1.87 (Kiln's minimum), safe in newer Rust.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86-64 CPU; leaf 0 only reads identification.
        let r = unsafe { std::arch::x86_64::__cpuid(0) };
        let mut v = Vec::with_capacity(12);
        for reg in [r.ebx, r.edx, r.ecx] {
            v.extend_from_slice(&reg.to_le_bytes());
        }
        String::from_utf8_lossy(&v).into_owned()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        String::from("unknown")
    }
}

/// The state file's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The Kiln that wrote the file.
    pub kiln_version: String,
    /// Repeats the format-version field (a mismatch means corruption).
    pub format_version: u32,
    /// What the snapshot needs from the restoring host.
    pub host: HostFeatures,
}

/// Why a state file cannot be written or read. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file does not start with [`MAGIC`].
    #[error("not a Kiln snapshot state file (it does not start with \"KILNSNAP\")")]
    NotSnapshot,
    /// The file ends early.
    #[error("the snapshot state file is truncated: {actual} bytes where {expected} are needed")]
    Truncated {
        /// Bytes needed (at least).
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// Bytes after the body.
    #[error(
        "the snapshot state file is corrupted: {actual} bytes where its header says {expected}"
    )]
    TrailingData {
        /// Bytes the header accounts for.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The checksum does not match.
    #[error("the snapshot state file is corrupted: checksum {computed:#010x} does not match the stored {stored:#010x}")]
    Checksum {
        /// Stored in the file.
        stored: u32,
        /// Computed over the file.
        computed: u32,
    },
    /// The format-version field and the header disagree, or the header length is absurd.
    #[error("the snapshot state file is corrupted: {0}")]
    Corrupted(String),
    /// Made by a newer Kiln.
    #[error("snapshot format version {found} is newer than this Kiln's ({ours}); it was made by {made_by}: restore it with that Kiln or a newer one")]
    NewerFormat {
        /// The file's format version.
        found: u32,
        /// [`FORMAT_VERSION`].
        ours: u32,
        /// "Kiln X.Y.Z", or "an unknown Kiln".
        made_by: String,
    },
    /// Made by an older Kiln.
    #[error("snapshot format version {found} is older than this Kiln's ({ours}); it was made by {made_by}: restore it with that Kiln, or create the snapshot again with this one")]
    OlderFormat {
        /// The file's format version.
        found: u32,
        /// [`FORMAT_VERSION`].
        ours: u32,
        /// "Kiln X.Y.Z", or "an unknown Kiln".
        made_by: String,
    },
    /// The header's JSON does not parse (checksum fine: a Kiln bug).
    #[error("the snapshot state header is unreadable: {0}")]
    Header(#[source] serde_json::Error),
    /// This host lacks something the snapshot needs.
    #[error("host mismatch: {feature} is {snapshot} in the snapshot and {host} on this host: restore it on a host like the one that made it")]
    HostMismatch {
        /// The feature, e.g. "CPU vendor" or a KVM capability name.
        feature: String,
        /// Its value where the snapshot was made.
        snapshot: String,
        /// Its value here.
        host: String,
    },
    /// The body does not deserialize into the expected state.
    #[error("the snapshot state does not match this Kiln's state layout: {0}")]
    Body(#[source] serde_json::Error),
    /// The state does not serialize.
    #[error("cannot serialize the snapshot state: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The file (or the state to write) is larger than [`MAX_FILE_LEN`].
    #[error("the snapshot state file would be {len} bytes, more than the {max} allowed: not a Kiln snapshot state file")]
    TooLarge {
        /// Its size.
        len: u64,
        /// [`MAX_FILE_LEN`].
        max: u64,
    },
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The KVM device could not be opened to read the host's features.
    #[error("cannot open the KVM device to read the host's features: {0}")]
    Kvm(#[source] io::Error),
}

/// Serializes `state` into a complete state file image.
pub fn to_bytes<T: Serialize>(state: &T, host: &HostFeatures) -> Result<Vec<u8>, FormatError> {
    let header = SnapshotHeader {
        kiln_version: KILN_VERSION.to_string(),
        format_version: FORMAT_VERSION,
        host: host.clone(),
    };
    let header = serde_json::to_vec(&header).map_err(FormatError::Serialize)?;
    let body = serde_json::to_vec(state).map_err(FormatError::Serialize)?;
    let len = (PREFIX_LEN + header.len() + TRAILER_LEN + body.len()) as u64;
    if len > MAX_FILE_LEN || header.len() > MAX_HEADER_LEN as usize {
        return Err(FormatError::TooLarge {
            len,
            max: MAX_FILE_LEN,
        });
    }
    let mut out = Vec::with_capacity(len as usize);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out);
    crc.update(&body);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Parses a state file image: checks magic, version, length, checksum and `host`, then
/// deserializes the body.
pub fn from_bytes<T: DeserializeOwned>(
    bytes: &[u8],
    host: &HostFeatures,
) -> Result<T, FormatError> {
    let (header, body) = split(bytes)?;
    header.host.check_restorable_on(host)?;
    serde_json::from_slice(body).map_err(FormatError::Body)
}

/// Reads a state file's header without checking the host (for `kiln` to describe a
/// snapshot). The file is still checked whole (magic, version, length, checksum).
pub fn header_from_bytes(bytes: &[u8]) -> Result<SnapshotHeader, FormatError> {
    split(bytes).map(|(header, _)| header)
}

/// Writes `state` to `path` atomically: a temporary file in the same directory is
/// written, synced and renamed over `path`; on error nothing is left behind.
pub fn write_state<T: Serialize>(
    path: &Path,
    state: &T,
    host: &HostFeatures,
) -> Result<(), FormatError> {
    let bytes = to_bytes(state, host)?;
    write_atomic(path, &bytes)
}

/// Reads the state file at `path` (see [`from_bytes`]).
pub fn read_state<T: DeserializeOwned>(path: &Path, host: &HostFeatures) -> Result<T, FormatError> {
    from_bytes(&read_file(path)?, host)
}

/// Reads a whole state file, refusing one larger than [`MAX_FILE_LEN`].
pub fn read_file(path: &Path) -> Result<Vec<u8>, FormatError> {
    let io_err = |op| {
        move |source| FormatError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let file = File::open(path).map_err(io_err("open"))?;
    let len = file.metadata().map_err(io_err("stat"))?.len();
    if len > MAX_FILE_LEN {
        return Err(FormatError::TooLarge {
            len,
            max: MAX_FILE_LEN,
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err("read"))?;
    Ok(bytes)
}

/// Checks everything but the host and splits the image into its header and body.
fn split(bytes: &[u8]) -> Result<(SnapshotHeader, &[u8]), FormatError> {
    let actual = bytes.len() as u64;
    let need = |expected: usize| -> Result<(), FormatError> {
        if bytes.len() < expected {
            Err(FormatError::Truncated {
                expected: expected as u64,
                actual,
            })
        } else {
            Ok(())
        }
    };
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(FormatError::NotSnapshot);
    }
    need(PREFIX_LEN)?;
    let version = u32_at(bytes, 8);
    let header_len = u32_at(bytes, 12);
    if header_len > MAX_HEADER_LEN {
        return Err(FormatError::Corrupted(format!(
            "header length {header_len} is over the {MAX_HEADER_LEN} allowed"
        )));
    }
    let header_end = PREFIX_LEN + header_len as usize;
    if version != FORMAT_VERSION {
        return Err(version_error(version, bytes.get(PREFIX_LEN..header_end)));
    }
    need(header_end + TRAILER_LEN)?;
    let body_len = u64_at(bytes, header_end);
    let crc_at = header_end + 8;
    let body_start = crc_at + 4;
    let expected = (body_start as u64).saturating_add(body_len);
    if actual < expected {
        return Err(FormatError::Truncated { expected, actual });
    }
    if actual > expected {
        return Err(FormatError::TrailingData { expected, actual });
    }
    let body = &bytes[body_start..];
    let stored = u32_at(bytes, crc_at);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[..crc_at]);
    crc.update(body);
    let computed = crc.finalize();
    if stored != computed {
        return Err(FormatError::Checksum { stored, computed });
    }
    let header: SnapshotHeader =
        serde_json::from_slice(&bytes[PREFIX_LEN..header_end]).map_err(FormatError::Header)?;
    if header.format_version != version {
        return Err(FormatError::Corrupted(format!(
            "format version field {version} but header says {}",
            header.format_version
        )));
    }
    Ok((header, body))
}

/// The error for a file of another format version, naming the Kiln that made it when
/// its header is readable (a header that disagrees with the version field is corruption).
fn version_error(found: u32, header: Option<&[u8]>) -> FormatError {
    #[derive(Deserialize)]
    struct Made {
        kiln_version: String,
        format_version: u32,
    }
    let made = header.and_then(|h| serde_json::from_slice::<Made>(h).ok());
    if let Some(m) = &made {
        if m.format_version != found {
            return FormatError::Corrupted(format!(
                "format version field {found} but header says {}",
                m.format_version
            ));
        }
    }
    let made_by = match made {
        Some(m) => {
            let v: String = m.kiln_version.chars().take(64).collect();
            format!("Kiln {}", v.escape_debug())
        }
        None => "an unknown Kiln".to_string(),
    };
    if found > FORMAT_VERSION {
        FormatError::NewerFormat {
            found,
            ours: FORMAT_VERSION,
            made_by,
        }
    } else {
        FormatError::OlderFormat {
            found,
            ours: FORMAT_VERSION,
            made_by,
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(v)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// Writes `bytes` to `path` through a synced temporary file in the same directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FormatError> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let io_err = |op, p: &Path| {
        let p = p.to_path_buf();
        move |source| FormatError::Io {
            op,
            path: p,
            source,
        }
    };
    let name = path.file_name().ok_or_else(|| FormatError::Io {
        op: "write",
        path: path.to_path_buf(),
        source: io::ErrorKind::InvalidInput.into(),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut tmp = TempPath {
        path: dir.join(tmp_name),
        renamed: false,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp.path)
        .map_err(io_err("create", &tmp.path))?;
    file.write_all(bytes).map_err(io_err("write", &tmp.path))?;
    file.sync_all().map_err(io_err("sync", &tmp.path))?;
    drop(file);
    fs::rename(&tmp.path, path).map_err(io_err("rename a temporary file to", path))?;
    tmp.renamed = true;
    // Make the rename itself durable.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync the directory", dir))
}

/// A temporary file, removed on drop unless it was renamed into place.
struct TempPath {
    path: PathBuf,
    renamed: bool,
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if !self.renamed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests;
