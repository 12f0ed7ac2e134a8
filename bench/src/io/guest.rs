//! One benchmark VM: a child `kiln run --serial stdio` whose console is read in the parent
//! and timestamped on the host's `CLOCK_MONOTONIC` as the bytes arrive (Kiln flushes every
//! serial byte), then the `KILN-BENCH start` / `KILN-BENCH end ...` lines the test guest's
//! `blkbench` / `netbench` modes print around their I/O loop.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use util::time::monotonic_ns;

/// Longest console line kept (the rest is dropped).
const MAX_LINE: usize = 4096;
/// How much of the child's stderr is kept for error messages.
const MAX_STDERR: usize = 8192;

/// One console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// When its first byte arrived (ns, `CLOCK_MONOTONIC`).
    pub first_ns: u64,
    /// When its newline arrived.
    pub last_ns: u64,
    /// The text without the newline.
    pub text: String,
}

/// How a benchmark VM ended.
#[derive(Debug, Clone, Default)]
pub struct GuestRun {
    /// Console lines in order.
    pub lines: Vec<Line>,
    /// Exit code (`None`: killed).
    pub exit_code: Option<i32>,
    /// Killed after the timeout.
    pub timed_out: bool,
    /// The tail of the child's stderr.
    pub stderr: String,
}

/// Splits a byte stream into [`Line`]s, stamping each read as it returns.
fn read_lines(mut r: impl Read, tx: &mpsc::Sender<Line>) {
    let mut buf = [0u8; 4096];
    let mut cur = Vec::new();
    let mut first = None;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let now = monotonic_ns();
        for &b in &buf[..n] {
            let start = *first.get_or_insert(now);
            if b == b'\n' {
                let text = String::from_utf8_lossy(&cur)
                    .trim_end_matches('\r')
                    .to_string();
                let line = Line {
                    first_ns: start,
                    last_ns: now,
                    text,
                };
                if tx.send(line).is_err() {
                    return;
                }
                cur.clear();
                first = None;
            } else if cur.len() < MAX_LINE {
                cur.push(b);
            }
        }
    }
}

/// `exe run ARGS`.
pub fn kiln_run(exe: &Path, args: &[String]) -> Command {
    let mut c = Command::new(exe);
    c.arg("run").args(args);
    c
}

/// Runs `cmd` (stdin closed, stdout and stderr on pipes) for at most `timeout`.
pub fn run_vm(mut cmd: Command, timeout: Duration) -> std::io::Result<GuestRun> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(std::io::Error::other("child pipes missing"));
    };
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || read_lines(out, &tx));
    let err_reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = err.take(1 << 20).read_to_end(&mut bytes);
        let tail = bytes.len().saturating_sub(MAX_STDERR);
        String::from_utf8_lossy(&bytes[tail..]).into_owned()
    });
    let deadline = Instant::now() + timeout;
    let mut run = GuestRun::default();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => run.lines.push(l),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                run.timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    let _ = reader.join();
    run.lines.extend(rx.try_iter());
    run.exit_code = status.code();
    run.stderr = err_reader.join().unwrap_or_default();
    Ok(run)
}

/// The fields of `KILN-BENCH end op=<op> key=<n> ...`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndLine {
    /// `read`, `write`, `randread` or `net`.
    pub op: String,
    /// Bytes moved (blk: completed requests × size; net: tx + rx frame bytes).
    pub bytes: u64,
    /// Completed block requests.
    pub requests: Option<u64>,
    /// Failed or unfinished block requests.
    pub errors: Option<u64>,
    /// Transmitted frames.
    pub tx: Option<u64>,
    /// Echoed frames received.
    pub rx: Option<u64>,
}

/// Parses an end line; `None` when it is not one or `op`/`bytes` are missing or bad.
pub fn parse_end(text: &str) -> Option<EndLine> {
    let rest = text.strip_prefix("KILN-BENCH end ")?;
    let mut e = EndLine::default();
    let mut bytes = None;
    for tok in rest.split_whitespace() {
        let (k, v) = tok.split_once('=')?;
        let num = || v.parse::<u64>().ok();
        match k {
            "op" => e.op = v.to_string(),
            "bytes" => bytes = Some(num()?),
            "requests" => e.requests = Some(num()?),
            "errors" => e.errors = Some(num()?),
            "tx" => e.tx = Some(num()?),
            "rx" => e.rx = Some(num()?),
            _ => {}
        }
    }
    e.bytes = bytes?;
    (!e.op.is_empty()).then_some(e)
}

/// The measured window of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The newline of `KILN-BENCH start` arrived (the guest starts its loop right after).
    pub start_ns: u64,
    /// The first byte of `KILN-BENCH end` arrived (the guest left its loop just before).
    pub end_ns: u64,
    /// What the guest reported.
    pub end: EndLine,
}

impl Window {
    /// Length in ns (at least 1).
    pub fn elapsed_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns).max(1)
    }
}

/// Finds the window in a run's console, or says why there is none (failed checks first).
pub fn window(run: &GuestRun) -> Result<Window, String> {
    let fails: Vec<&str> = run
        .lines
        .iter()
        .map(|l| l.text.as_str())
        .filter(|t| t.starts_with("KILN-CHECK ") && t.contains(" FAIL"))
        .collect();
    if !fails.is_empty() {
        return Err(fails.join("; "));
    }
    let start = run.lines.iter().find(|l| l.text == "KILN-BENCH start");
    let end = run
        .lines
        .iter()
        .find_map(|l| parse_end(&l.text).map(|e| (l.first_ns, e)));
    match (start, end) {
        (Some(s), Some((end_ns, end))) => Ok(Window {
            start_ns: s.last_ns,
            end_ns,
            end,
        }),
        _ => {
            let last = run.lines.last().map_or("", |l| l.text.as_str());
            let err = run.stderr.lines().rev().find(|l| !l.trim().is_empty());
            Err(format!(
                "no KILN-BENCH start/end lines (last console line: {last:?}{})",
                err.map_or(String::new(), |e| format!("; stderr: {e}"))
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(t: u64, text: &str) -> Line {
        Line {
            first_ns: t,
            last_ns: t + 5,
            text: text.into(),
        }
    }

    #[test]
    fn parses_end_lines() {
        let e = parse_end("KILN-BENCH end op=read bytes=1048576 requests=256 errors=0").unwrap();
        assert_eq!(e.op, "read");
        assert_eq!(
            (e.bytes, e.requests, e.errors),
            (1 << 20, Some(256), Some(0))
        );
        let e = parse_end("KILN-BENCH end op=net tx=200 rx=199 bytes=600").unwrap();
        assert_eq!((e.tx, e.rx, e.bytes), (Some(200), Some(199), 600));
        assert!(parse_end("KILN-BENCH end op=read").is_none());
        assert!(parse_end("KILN-BENCH end bytes=5").is_none());
        assert!(parse_end("KILN-BENCH end op=read bytes=x").is_none());
        assert!(parse_end("KILN-BENCH end op=read bytes").is_none());
        assert!(parse_end("KILN-BENCH start").is_none());
    }

    #[test]
    fn window_uses_start_newline_and_end_first_byte() {
        let run = GuestRun {
            lines: vec![
                line(10, "KILN-GUEST boot entry=pvh"),
                line(100, "KILN-BENCH start"),
                line(1000, "KILN-BENCH end op=write bytes=8 requests=1 errors=0"),
                line(2000, "KILN-CHECK blkbench ok"),
            ],
            ..GuestRun::default()
        };
        let w = window(&run).unwrap();
        assert_eq!((w.start_ns, w.end_ns, w.elapsed_ns()), (105, 1000, 895));
        assert_eq!(w.end.op, "write");
    }

    #[test]
    fn window_errors() {
        let mut run = GuestRun {
            lines: vec![line(1, "KILN-CHECK blkbench FAIL timed out")],
            stderr: "kiln: error: boom\n\n".into(),
            ..GuestRun::default()
        };
        assert!(window(&run).unwrap_err().contains("timed out"));
        run.lines = vec![line(1, "KILN-BENCH start")];
        let e = window(&run).unwrap_err();
        assert!(e.contains("no KILN-BENCH") && e.contains("boom"), "{e}");
    }

    #[test]
    fn splits_and_stamps_lines() {
        let (tx, rx) = mpsc::channel();
        read_lines(&b"a\r\nbc\npartial"[..], &tx);
        drop(tx);
        let v: Vec<Line> = rx.iter().collect();
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].text.as_str(), v[1].text.as_str()), ("a", "bc"));
        assert!(v[0].first_ns <= v[0].last_ns);
    }

    #[test]
    fn runs_a_child_and_times_out() {
        let script = "echo KILN-BENCH start; \
                      echo 'KILN-BENCH end op=read bytes=4 requests=1 errors=0'; \
                      echo oops >&2; exit 3";
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        let run = run_vm(cmd, Duration::from_secs(10)).unwrap();
        assert_eq!(run.exit_code, Some(3));
        assert_eq!(run.stderr.trim(), "oops");
        assert_eq!(window(&run).unwrap().end.bytes, 4);
        let mut cmd = Command::new("sleep");
        cmd.arg("10");
        let run = run_vm(cmd, Duration::from_millis(100)).unwrap();
        assert!(run.timed_out && run.exit_code.is_none());
        let cmd = kiln_run(Path::new("/k"), &["--x".into()]);
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args, ["run", "--x"]);
    }
}
