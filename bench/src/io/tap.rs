//! The network side on the host: a TAP for the VM (made with iproute2, deleted on drop)
//! and an echo peer on an `AF_PACKET` socket bound to it that sends every frame of the
//! test ethertype back with the MAC addresses swapped.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The test guest's ethertype (IEEE 802 local experimental 1).
pub const ETHERTYPE: u16 = 0x88b5;

/// Why the TAP or the peer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// TAPs and raw sockets need CAP_NET_ADMIN / CAP_NET_RAW.
    #[error("--io net needs root (to create a TAP and an AF_PACKET socket)")]
    NotRoot,
    /// An interface name the kernel would refuse.
    #[error("bad TAP name {0:?} (1..15 bytes, no '/', whitespace or ':')")]
    BadName(String),
    /// `ip` failed or is missing.
    #[error("`ip {args}` failed: {detail}")]
    Ip {
        /// The arguments.
        args: String,
        /// Its stderr or the spawn error.
        detail: String,
    },
    /// The echo peer's socket.
    #[error("echo peer on {ifname}: {source}")]
    Socket {
        /// The TAP.
        ifname: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Whether `name` is a usable interface name (`IFNAMSIZ` − 1 bytes).
pub fn valid_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace())
}

fn ip(args: &[&str]) -> Result<(), TapError> {
    let fail = |detail: String| TapError::Ip {
        args: args.join(" "),
        detail,
    };
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(e.to_string()))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )),
    }
}

/// A TAP, up, with IPv6 off (no router solicitations on the wire); deleted on drop if we
/// created it.
#[derive(Debug)]
pub struct Tap {
    /// Interface name.
    pub name: String,
    /// Whether it existed before (then it is left alone).
    pub existed: bool,
}

impl Tap {
    /// Uses `name` if it exists, else creates it.
    pub fn open(name: &str) -> Result<Self, TapError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(TapError::NotRoot);
        }
        if !valid_ifname(name) {
            return Err(TapError::BadName(name.into()));
        }
        let existed = Path::new("/sys/class/net").join(name).exists();
        if !existed {
            ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        }
        let tap = Tap {
            name: name.into(),
            existed,
        };
        let knob = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
        if let Err(e) = std::fs::write(&knob, "1") {
            log::debug!("{knob}: {e}");
        }
        ip(&["link", "set", name, "up"])?;
        Ok(tap)
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if !self.existed {
            if let Err(e) = ip(&["link", "del", &self.name]) {
                log::warn!("{e}");
            }
        }
    }
}

/// The running echo peer.
pub struct EchoPeer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<u64>,
}

fn socket_err(ifname: &str) -> impl Fn(std::io::Error) -> TapError + '_ {
    move |source| TapError::Socket {
        ifname: ifname.into(),
        source,
    }
}

fn open_socket(ifname: &str) -> std::io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(ifname).map_err(std::io::Error::other)?;
    let proto = ETHERTYPE.to_be();
    // SAFETY: socket() takes no pointers.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: a valid sockaddr_ll and its length.
    let r = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(sll).cast(), len) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: a valid timeval and its length.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Swaps destination and source MAC; false when the frame is too short.
pub fn swap_macs(frame: &mut [u8]) -> bool {
    if frame.len() < 14 {
        return false;
    }
    let (dst, rest) = frame.split_at_mut(6);
    dst.swap_with_slice(&mut rest[..6]);
    true
}

fn echo_loop(fd: OwnedFd, stop: &AtomicBool) -> u64 {
    let mut n = 0;
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut flen = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buffer, sockaddr and length pointers valid for the call.
        let r = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                std::ptr::addr_of_mut!(from).cast(),
                &mut flen,
            )
        };
        // Our own echoes show up as outgoing: skip them.
        if r <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let frame = &mut buf[..r as usize];
        if !swap_macs(frame) {
            continue;
        }
        // SAFETY: a valid buffer and its length.
        let s = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if s > 0 {
            n += 1;
        }
    }
    n
}

impl EchoPeer {
    /// Binds to `ifname` and starts echoing on a thread.
    pub fn start(ifname: &str) -> Result<Self, TapError> {
        let fd = open_socket(ifname).map_err(socket_err(ifname))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("kiln-echo".into())
            .spawn(move || echo_loop(fd, &flag))
            .map_err(socket_err(ifname))?;
        Ok(EchoPeer { stop, handle })
    }

    /// Stops the peer; returns how many frames it echoed.
    pub fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_ifname("kb123"));
        assert!(valid_ifname("a23456789012345"));
        assert!(!valid_ifname("a234567890123456"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a/b") && !valid_ifname("a b") && !valid_ifname("a:1"));
    }

    #[test]
    fn swaps() {
        let mut f: Vec<u8> = (0..20).collect();
        assert!(swap_macs(&mut f));
        assert_eq!(&f[..12], &[6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]);
        assert_eq!(f[12], 12);
        assert!(!swap_macs(&mut [0u8; 13]));
    }

    #[test]
    fn bad_name_or_not_root() {
        match Tap::open("bad name") {
            Err(TapError::NotRoot) | Err(TapError::BadName(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}
