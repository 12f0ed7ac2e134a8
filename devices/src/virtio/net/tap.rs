//! A Linux TAP interface opened through `/dev/net/tun`.
//!
//! Lifetime: if the interface `name` does not exist, opening creates it without
//! `TUNSETPERSIST`, so the kernel deletes it when the fd closes (when the [`Tap`] is
//! dropped). An existing persistent TAP (e.g. `ip tuntap add NAME mode tap`) is
//! attached to and left in place at close. Kiln does not configure addresses or bring
//! the link up: that is the host administrator's job.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::NetBackend;
use crate::virtio::Error;

const TUNSETIFF: u64 = 0x4004_54ca;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;

/// `TUNSETOFFLOAD` flag: the TAP may hand us partially checksummed frames.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUNSETOFFLOAD` flag: TCPv4 segmentation offload.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUNSETOFFLOAD` flag: TCPv6 segmentation offload.
pub const TUN_F_TSO6: u32 = 0x04;

/// Size of `struct virtio_net_hdr_v1` the TAP is told to use.
pub const VNET_HDR_LEN: i32 = 12;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// An open TAP interface (nonblocking, with 12-byte virtio-net headers).
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
    offloads: bool,
}

fn tap_err(name: &str, op: &'static str, source: std::io::Error) -> Error {
    let hint = match source.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENODEV) => "; load the tun module (modprobe tun)",
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "; run as root / with CAP_NET_ADMIN, or pre-create the TAP for this user \
             (ip tuntap add NAME mode tap user USER)"
        }
        Some(libc::EBUSY) => "; the interface is already in use by another process",
        Some(libc::EINVAL) => "; an interface with this name exists and is not a TAP",
        _ => "",
    };
    Error::Tap {
        name: name.to_string(),
        op,
        source,
        hint,
    }
}

fn ioctl_ptr<T>(fd: RawFd, req: u64, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is a live, properly sized object for this TUN ioctl.
    let r = unsafe { libc::ioctl(fd, req as _, arg as *mut T) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_offload(fd: RawFd, flags: u32) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    let r = unsafe { libc::ioctl(fd, TUNSETOFFLOAD as _, libc::c_ulong::from(flags)) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Tap {
    /// Opens (creating it if needed) the TAP interface `name`.
    pub fn open(name: &str) -> Result<Self, Error> {
        if name.is_empty() || name.len() > 15 || name.contains(['/', '\0']) || name == "." {
            return Err(Error::TapName(name.to_string()));
        }
        let created = !Path::new("/sys/class/net").join(name).exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|e| tap_err(name, "open /dev/net/tun", e))?;
        let fd = file.as_raw_fd();
        let mut ifr = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        ifr.name[..name.len()].copy_from_slice(name.as_bytes());
        ioctl_ptr(fd, TUNSETIFF, &mut ifr).map_err(|e| tap_err(name, "TUNSETIFF", e))?;
        let mut hdr = VNET_HDR_LEN;
        ioctl_ptr(fd, TUNSETVNETHDRSZ, &mut hdr)
            .map_err(|e| tap_err(name, "TUNSETVNETHDRSZ", e))?;
        let offloads = set_offload(fd, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6).is_ok();
        if let Err(e) = set_offload(fd, 0) {
            log::warn!("tap {name}: cannot clear offloads: {e}");
        }
        log::info!(
            "tap {name}: {} (offloads {})",
            if created {
                "created"
            } else {
                "attached to existing interface"
            },
            if offloads { "available" } else { "unavailable" }
        );
        Ok(Self {
            file,
            name: name.to_string(),
            created,
            offloads,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether opening created the interface (it then disappears when dropped).
    pub fn created(&self) -> bool {
        self.created
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn offloads_supported(&self) -> bool {
        self.offloads
    }

    fn set_offload(&mut self, flags: u32) -> std::io::Result<()> {
        set_offload(self.file.as_raw_fd(), flags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names() {
        for n in ["", "a/b", "0123456789abcdef", "x\0"] {
            assert!(matches!(Tap::open(n), Err(Error::TapName(_))), "{n:?}");
        }
    }

    #[test]
    fn create_and_vanish() {
        if !Path::new("/dev/net/tun").exists() {
            eprintln!("SKIP create_and_vanish: /dev/net/tun missing");
            return;
        }
        let name = "kilntst0";
        let tap = match Tap::open(name) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("SKIP create_and_vanish: {e}");
                return;
            }
        };
        assert!(tap.created());
        assert!(Path::new("/sys/class/net").join(name).exists());
        // Nothing to read on a down interface.
        let mut t = tap;
        let mut buf = [0u8; 64];
        let e = t.read_frame(&mut buf).unwrap_err();
        assert!(matches!(
            e.raw_os_error(),
            Some(libc::EAGAIN) | Some(libc::EIO)
        ));
        drop(t);
        assert!(!Path::new("/sys/class/net").join(name).exists());
    }

    #[test]
    fn existing_persistent_tap_is_reused() {
        let name = "kilntst1";
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        };
        if !Path::new("/dev/net/tun").exists()
            || !ip(&["tuntap", "add", "dev", name, "mode", "tap"])
        {
            eprintln!("SKIP existing_persistent_tap_is_reused: no /dev/net/tun or `ip tuntap`");
            return;
        }
        let tap = Tap::open(name);
        let ok = matches!(&tap, Ok(t) if !t.created() && t.name() == name);
        drop(tap);
        let still_there = Path::new("/sys/class/net").join(name).exists();
        ip(&["tuntap", "del", "dev", name, "mode", "tap"]);
        assert!(ok, "persistent TAP not attached");
        assert!(still_there, "persistent TAP removed at close");
    }
}
