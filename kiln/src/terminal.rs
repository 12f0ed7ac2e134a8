//! The host terminal: raw mode for an interactive console, always restored.

use std::os::fd::{AsRawFd, RawFd};

/// Puts a terminal in raw mode and restores the saved mode when dropped.
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

/// The saved mode, for the panic hook (a panic must not leave the terminal raw).
static SAVED: std::sync::Mutex<Option<(RawFd, libc::termios)>> = std::sync::Mutex::new(None);

fn restore_saved() {
    let saved = SAVED.lock().ok().and_then(|mut s| s.take());
    if let Some((fd, t)) = saved {
        // SAFETY: restoring attributes saved from the same fd.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
}

impl RawMode {
    /// Raw mode on `fd` if it is a terminal; `None` otherwise.
    pub fn enable(fd: &impl AsRawFd) -> Option<Self> {
        let fd = fd.as_raw_fd();
        // SAFETY: isatty/tcgetattr/tcsetattr on a valid fd with termios structs we own.
        unsafe {
            if libc::isatty(fd) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            // Keep output post-processing so guest "\n" still starts a new line.
            raw.c_oflag |= libc::OPOST;
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return None;
            }
            if let Ok(mut s) = SAVED.lock() {
                *s = Some((fd, saved));
            }
            let prev = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_saved();
                prev(info);
            }));
            Some(Self { fd, saved })
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes saved from the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
        if let Ok(mut s) = SAVED.lock() {
            s.take();
        }
    }
}

/// Whether `fd` can be watched with epoll: a terminal, pipe or socket (regular files
/// and `/dev/null` cannot).
pub fn is_pollable(fd: &impl AsRawFd) -> bool {
    // SAFETY: fstat into a stat struct we own.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
            return false;
        }
        let kind = st.st_mode & libc::S_IFMT;
        kind == libc::S_IFIFO || kind == libc::S_IFSOCK || libc::isatty(fd.as_raw_fd()) == 1
    }
}
