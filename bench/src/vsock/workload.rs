//! The three measurements, on any connected stream: ping-pong round trips against an
//! echo peer, a bulk echo (host → peer → host), and draining a stream the peer sends.
//! The guest run and the host Unix-socket pair run the very same functions.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Byte `i` of the test guest's client stream (resources/guest/vsock_mode.c).
pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(7).wrapping_add(3) & 0xff) as u8
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// A read or write failed (or timed out).
    #[error("{what}: {source}")]
    Io {
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent something else than expected.
    #[error("{what}: byte {at} differs")]
    Mismatch {
        /// The step.
        what: &'static str,
        /// Offset of the first wrong byte.
        at: u64,
    },
    /// The stream ended early or ran long.
    #[error("{what}: got {got} bytes, expected {want}")]
    Length {
        /// The step.
        what: &'static str,
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        want: u64,
    },
    /// A helper thread (writer, echo peer, sender) panicked.
    #[error("a helper thread panicked")]
    Thread,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> WorkloadError {
    move |source| WorkloadError::Io { what, source }
}

/// `rounds` times: write `len` bytes, read the `len` bytes echoed; one duration each.
pub fn ping_pong(
    s: &mut UnixStream,
    len: usize,
    rounds: usize,
) -> Result<Vec<Duration>, WorkloadError> {
    let mut out = Vec::with_capacity(rounds);
    let mut back = vec![0u8; len];
    for r in 0..rounds {
        let msg: Vec<u8> = (0..len).map(|i| (r + i) as u8).collect();
        let t = Instant::now();
        s.write_all(&msg).map_err(io("ping"))?;
        s.read_exact(&mut back).map_err(io("pong"))?;
        out.push(t.elapsed());
        if back != msg {
            let at = back.iter().zip(&msg).position(|(a, b)| a != b);
            return Err(WorkloadError::Mismatch {
                what: "ping-pong",
                at: at.unwrap_or(0) as u64,
            });
        }
    }
    Ok(out)
}

/// Writes `bytes` in `msg`-byte writes from a second thread while reading the echo
/// here; the time from the first write to the last byte back. Checks the bytes.
pub fn echo_bulk(s: &mut UnixStream, bytes: u64, msg: usize) -> Result<Duration, WorkloadError> {
    let mut w = s.try_clone().map_err(io("cloning the stream"))?;
    let t = Instant::now();
    let writer = std::thread::spawn(move || write_pattern(&mut w, bytes, msg));
    let got = read_pattern(s, bytes, "echo");
    let elapsed = t.elapsed();
    let wrote = writer.join().map_err(|_| WorkloadError::Thread)?;
    got?;
    wrote.map_err(io("echo write"))?;
    Ok(elapsed)
}

/// Reads exactly `want` bytes of the pattern (no more is read).
fn read_pattern(s: &mut UnixStream, want: u64, what: &'static str) -> Result<(), WorkloadError> {
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0u64;
    while got < want {
        let n = (want - got).min(buf.len() as u64) as usize;
        let r = s.read(&mut buf[..n]).map_err(io(what))?;
        if r == 0 {
            return Err(WorkloadError::Length { what, got, want });
        }
        check(&buf[..r], got, what)?;
        got += r as u64;
    }
    Ok(())
}

fn check(chunk: &[u8], offset: u64, what: &'static str) -> Result<(), WorkloadError> {
    match (0..chunk.len()).find(|&i| chunk[i] != pattern_byte(offset + i as u64)) {
        Some(i) => Err(WorkloadError::Mismatch {
            what,
            at: offset + i as u64,
        }),
        None => Ok(()),
    }
}

/// Reads the pattern stream to its end, expecting `want` bytes; the time from the call
/// to the end of the stream.
pub fn drain(s: &mut UnixStream, want: u64) -> Result<Duration, WorkloadError> {
    let t = Instant::now();
    read_pattern(s, want, "stream")?;
    let mut extra = [0u8; 1];
    match s.read(&mut extra).map_err(io("stream end"))? {
        0 => Ok(t.elapsed()),
        _ => Err(WorkloadError::Length {
            what: "stream",
            got: want + 1,
            want,
        }),
    }
}

/// Writes `bytes` of the pattern in `msg`-byte writes, then closes (the sending side
/// of [`drain`], as the test guest's client does).
pub fn send_pattern(mut s: UnixStream, bytes: u64, msg: usize) -> std::io::Result<()> {
    write_pattern(&mut s, bytes, msg)?;
    s.shutdown(std::net::Shutdown::Write)
}

/// Writes `bytes` of the pattern in writes of `msg` bytes.
fn write_pattern(s: &mut impl Write, bytes: u64, msg: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; msg.max(1)];
    let mut sent = 0u64;
    while sent < bytes {
        let n = (bytes - sent).min(buf.len() as u64) as usize;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern_byte(sent + i as u64);
        }
        s.write_all(&buf[..n])?;
        sent += n as u64;
    }
    Ok(())
}

/// Echoes everything it reads back until the stream ends (the host pair's stand-in
/// for the guest's echo server), in reads of up to `msg` bytes.
pub fn echo_peer(mut s: UnixStream, msg: usize) -> std::io::Result<u64> {
    let mut buf = vec![0u8; msg.max(1)];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        s.write_all(&buf[..n])?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_pair(msg: usize) -> (UnixStream, std::thread::JoinHandle<std::io::Result<u64>>) {
        let (a, b) = UnixStream::pair().unwrap();
        (a, std::thread::spawn(move || echo_peer(b, msg)))
    }

    #[test]
    fn the_pattern_matches_the_guest_formula() {
        assert_eq!(
            (0..4).map(pattern_byte).collect::<Vec<_>>(),
            [3, 10, 17, 24]
        );
        assert_eq!(pattern_byte(36), (36 * 7 + 3) as u8);
    }

    #[test]
    fn ping_pong_times_every_round() {
        let (mut a, peer) = echo_pair(4096);
        let d = ping_pong(&mut a, 64, 5).unwrap();
        assert_eq!(d.len(), 5);
        drop(a);
        assert_eq!(peer.join().unwrap().unwrap(), 5 * 64);
    }

    #[test]
    fn echo_bulk_moves_every_byte_through_the_peer() {
        let (mut a, peer) = echo_pair(4096);
        echo_bulk(&mut a, 100_000, 4096).unwrap();
        drop(a);
        assert_eq!(peer.join().unwrap().unwrap(), 100_000);
    }

    #[test]
    fn drain_checks_length_and_bytes() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || send_pattern(b, 10_000, 4096));
        drain(&mut a, 10_000).unwrap();
        t.join().unwrap().unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || send_pattern(b, 100, 4096));
        let e = drain(&mut a, 200).unwrap_err();
        assert!(matches!(e, WorkloadError::Length { got: 100, .. }), "{e}");
        t.join().unwrap().unwrap();
    }

    #[test]
    fn a_wrong_byte_is_reported_with_its_offset() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[3, 10, 0]).unwrap();
        drop(b);
        let e = drain(&mut a, 3).unwrap_err();
        assert!(matches!(e, WorkloadError::Mismatch { at: 2, .. }), "{e}");
    }
}
