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

use libc::{IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, TUNSETIFF, TUNSETOFFLOAD, TUNSETVNETHDRSZ};
/// `TUNSETOFFLOAD` flags: partially checksummed frames, TCPv4 and TCPv6 segmentation.
pub use libc::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use virtio_bindings::virtio_net::virtio_net_hdr_v1;

/// Size of `struct virtio_net_hdr_v1` the TAP is told to use.
pub const VNET_HDR_LEN: libc::c_int = std::mem::size_of::<virtio_net_hdr_v1>() as libc::c_int;

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

/// `ioctl(fd, req, arg)` for a request that reads or writes `*arg`.
///
/// # Safety
///
/// `req` must be an ioctl whose argument is a pointer to a `T`: the kernel then reads and
/// writes at most `size_of::<T>()` bytes through it (e.g. `TUNSETIFF` with a
/// `libc::ifreq`, `TUNSETVNETHDRSZ` with a `c_int`).
unsafe fn ioctl_ptr<T>(fd: RawFd, req: libc::Ioctl, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: `arg` is a live, exclusive `T`, and the caller guarantees that `req` accesses
    // no more than a `T` through it.
    let r = unsafe { libc::ioctl(fd, req, arg as *mut T) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn set_offload(fd: RawFd, flags: u32) -> std::io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    let r = unsafe { libc::ioctl(fd, TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
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
        // SAFETY: `ifreq` is integers, byte arrays and a pointer in a union: all zeroes
        // is a valid value (an empty name, null pointer).
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        // `name` is at most 15 bytes (checked above): the 16-byte field stays NUL-terminated.
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `struct ifreq`.
        unsafe { ioctl_ptr(fd, TUNSETIFF, &mut ifr) }.map_err(|e| tap_err(name, "TUNSETIFF", e))?;
        let mut hdr = VNET_HDR_LEN;
        // SAFETY: TUNSETVNETHDRSZ reads one `int`.
        unsafe { ioctl_ptr(fd, TUNSETVNETHDRSZ, &mut hdr) }
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

    /// Why this host cannot create TAPs, if it cannot: the tests below then print
    /// `skipped: <why>` and return, except under CI=true where they fail.
    fn missing_capability() -> Option<&'static str> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Some("not root (creating a TAP needs CAP_NET_ADMIN)");
        }
        if !Path::new("/dev/net/tun").exists() {
            return Some("no /dev/net/tun (modprobe tun)");
        }
        None
    }

    /// True when the test should skip (after saying why); panics under CI=true.
    fn skip(why: Option<&str>) -> bool {
        let Some(why) = why else { return false };
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: must not skip ({why})"
        );
        eprintln!("skipped: {why}");
        true
    }

    /// An interface name unique to this process and test.
    fn test_name(tag: char) -> String {
        format!("kt{}{tag}", std::process::id())
    }

    #[test]
    fn created_tap_vanishes_on_close() {
        if skip(missing_capability()) {
            return;
        }
        let name = test_name('a');
        let mut tap = Tap::open(&name).unwrap();
        assert!(tap.created());
        assert!(Path::new("/sys/class/net").join(&name).exists());
        // Nothing to read on a down interface.
        let mut buf = [0u8; 64];
        let e = tap.read_frame(&mut buf).unwrap_err();
        assert!(matches!(
            e.raw_os_error(),
            Some(libc::EAGAIN) | Some(libc::EIO)
        ));
        drop(tap);
        // The kernel deletes it when the last reference to the TUN file goes: a child
        // forked by a parallel test holds one until its exec (O_CLOEXEC), so wait a bit.
        let sys = Path::new("/sys/class/net").join(&name);
        let gone = (0..500).any(|_| {
            let gone = !sys.exists();
            if !gone {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            gone
        });
        assert!(gone, "{} still exists 5 s after close", sys.display());
    }

    #[test]
    fn existing_persistent_tap_is_reused() {
        let ip_missing = std::process::Command::new("ip")
            .arg("-V")
            .output()
            .is_err()
            .then_some("no `ip` command (apt-get install iproute2)");
        if skip(missing_capability().or(ip_missing)) {
            return;
        }
        let name = test_name('b');
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr).into_owned();
            assert!(out.status.success(), "ip {args:?}: {err}");
        };
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        let tap = Tap::open(&name);
        let ok = matches!(&tap, Ok(t) if !t.created() && t.name() == name);
        drop(tap);
        let still_there = Path::new("/sys/class/net").join(&name).exists();
        ip(&["tuntap", "del", "dev", &name, "mode", "tap"]);
        assert!(ok, "persistent TAP not attached");
        assert!(still_there, "persistent TAP removed at close");
    }
}
