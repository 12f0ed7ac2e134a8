//! The host baseline: the same three measurements over a Unix socket pair, a thread
//! standing in for the guest (echo peer, then a sender of the pattern stream).

use std::os::unix::net::UnixStream;
use std::time::Duration;

use super::workload::{drain, echo_bulk, echo_peer, ping_pong, send_pattern, WorkloadError};
use super::{Measured, VsockSettings};

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> WorkloadError {
    move |source| WorkloadError::Io { what, source }
}

fn join<T>(
    t: std::thread::JoinHandle<std::io::Result<T>>,
    what: &'static str,
) -> Result<T, WorkloadError> {
    t.join()
        .map_err(|_| WorkloadError::Thread)?
        .map_err(io(what))
}

/// One run; `timeout` bounds every read.
pub fn run_once(s: &VsockSettings, timeout: Duration) -> Result<Measured, WorkloadError> {
    let (mut a, b) = UnixStream::pair().map_err(io("socketpair"))?;
    a.set_read_timeout(Some(timeout))
        .map_err(io("setting a read timeout"))?;
    let msg = s.msg;
    let peer = std::thread::spawn(move || echo_peer(b, msg));
    let rtt = ping_pong(&mut a, s.ping, s.rounds)?;
    let echo = echo_bulk(&mut a, s.bytes, s.msg)?;
    drop(a);
    join(peer, "echo peer")?;
    let (mut c, d) = UnixStream::pair().map_err(io("socketpair"))?;
    c.set_read_timeout(Some(timeout))
        .map_err(io("setting a read timeout"))?;
    let bytes = s.bytes;
    let sender = std::thread::spawn(move || send_pattern(d, bytes, msg));
    let to_host = drain(&mut c, s.bytes)?;
    join(sender, "sender")?;
    Ok(Measured { rtt, echo, to_host })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_run_measures_all_three() {
        let s = VsockSettings {
            runs: 1,
            bytes: 50_000,
            msg: 4096,
            ping: 64,
            rounds: 3,
        };
        let m = run_once(&s, Duration::from_secs(10)).unwrap();
        assert_eq!(m.rtt.len(), 3);
        assert!(m.echo > Duration::ZERO && m.to_host > Duration::ZERO);
    }
}
