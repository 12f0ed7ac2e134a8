//! Host-side network helpers for tests that give guests a virtio-net on a TAP: whether
//! TAPs can be made here, a persistent TAP deleted on drop, and a peer that echoes the
//! test guest's frames back (see resources/guest/README.md, `kiln.mode=net`).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The ethertype of the test guest's frames.
pub const GUEST_ETHERTYPE: u16 = 0x88b5;

/// Whether TAP tests can run here (root, /dev/net/tun, iproute2). Prints `skipped:` and
/// returns false when not; under `CI=true` that is a failure instead.
pub fn tap_capable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok =
        root && Path::new("/dev/net/tun").exists() && Command::new("ip").arg("-V").output().is_ok();
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "CI must run as root with /dev/net/tun and iproute2"
        );
        eprintln!("skipped: needs root, /dev/net/tun and the ip command");
    }
    ok
}

/// Runs `ip ARGS`, asserting success.
pub fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("running ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// A persistent TAP made by the test, up, without IPv6 traffic; deleted on drop.
pub struct TestTap(pub String);

impl TestTap {
    /// A new TAP with a unique name from `tag`.
    pub fn new(tag: &str) -> Self {
        let name = harness::unique_tap_name(tag);
        if Path::new("/sys/class/net").join(&name).exists() {
            ip(&["link", "del", &name]); // left over from a killed run
        }
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"]);
        let tap = Self(name);
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", tap.0),
            "1",
        );
        ip(&["link", "set", &tap.0, "up"]);
        tap
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Echoes every test-guest frame arriving on an interface back with its MACs swapped
/// (so it goes to the guest, from the broadcast address), until stopped.
pub struct EchoPeer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<usize>>,
}

impl EchoPeer {
    /// Starts echoing on `ifname`.
    pub fn start(ifname: &str) -> Self {
        let sock = packet_socket(ifname);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || echo_until(&sock, &flag));
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops echoing; returns how many frames were echoed.
    pub fn stop(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An AF_PACKET socket bound to `ifname` for the guest's ethertype, with a 100 ms
/// receive timeout.
fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = GUEST_ETHERTYPE.to_be();
    // SAFETY: socket() with constant arguments; the fd is owned by the OwnedFd at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh socket nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = CString::new(ifname).unwrap();
    // SAFETY: sockaddr_ll is plain data; zero is a valid initial value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    // SAFETY: a NUL-terminated name that outlives the call.
    sll.sll_ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: bind with a sockaddr_ll of the given length that outlives the call.
    let rc = unsafe { libc::bind(sock.as_raw_fd(), &sll as *const _ as *const _, len) };
    assert_eq!(
        rc,
        0,
        "bind to {ifname}: {}",
        std::io::Error::last_os_error()
    );
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    let tv_len = std::mem::size_of::<libc::timeval>() as u32;
    // SAFETY: setsockopt with a timeval of the given length that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const libc::c_void,
            tv_len,
        )
    };
    assert_eq!(rc, 0, "SO_RCVTIMEO: {}", std::io::Error::last_os_error());
    sock
}

fn echo_until(sock: &OwnedFd, stop: &AtomicBool) -> usize {
    let mut echoed = 0;
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: sockaddr_ll is plain data; zero is a valid initial value.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: recvfrom into buffers we own, with their true lengths.
        let n = unsafe {
            libc::recvfrom(
                sock.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut from_len,
            )
        };
        // Timeouts, short frames and our own transmissions are skipped.
        if n < 14 || from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        let frame = &mut buf[..n as usize];
        let (dst, rest) = frame.split_at_mut(6);
        dst.swap_with_slice(&mut rest[..6]);
        // SAFETY: send from a buffer we own, with its true length.
        unsafe {
            libc::send(
                sock.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        echoed += 1;
    }
    echoed
}
