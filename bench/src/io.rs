//! `kiln bench --io blk|net`: virtio I/O throughput as the test guest sees it.
//!
//! Each run boots the test guest in `kiln.mode=blkbench` or `kiln.mode=netbench` as a
//! child `kiln run --serial stdio`, reads its console in the parent and times the guest's
//! I/O loop from the host's `CLOCK_MONOTONIC` (from the newline of `KILN-BENCH start` to
//! the first byte of `KILN-BENCH end`). Block runs use a fresh raw disk file and are shown
//! next to the same requests done with `pread`/`pwrite` on that file by the host (page
//! cache warm and, for reads, cold); network runs go through a TAP to an echo peer on the
//! host. Guest-side figures include the guest driver's own instructions: on a PVM host
//! those run in the host's instruction emulator.

pub mod guest;
pub mod host;
pub mod settings;
pub mod table;
pub mod tap;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::{find_in_repo, progress, scratch_dir, write_file, BenchArgs, BenchError, HostFacts};
use guest::{kiln_run, run_vm, window, GuestRun, Window};
use host::{BlkOp, Cache};
pub use settings::*;
pub use table::*;
use tap::{EchoPeer, Tap};

/// The `--json` document.
#[derive(Debug, Serialize)]
struct IoReport<'a> {
    tool: &'static str,
    version: &'static str,
    host: HostFacts,
    settings: &'a IoSettings,
    kernel: &'a Path,
    rows: &'a [IoRow],
    notes: &'a [String],
}

fn kernel_path(args: &BenchArgs) -> Result<PathBuf, BenchError> {
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => find_in_repo(super::DEFAULT_KERNEL)
            .unwrap_or_else(|| PathBuf::from(super::DEFAULT_KERNEL)),
    };
    match kernel.is_file() {
        true => Ok(kernel),
        false => Err(BenchError::KernelMissing(kernel)),
    }
}

/// `kiln run` arguments for one bench VM plus `device` (`--disk ...` / `--net ...`).
fn vm_args(args: &BenchArgs, s: &IoSettings, kernel: &Path, device: [String; 2]) -> Vec<String> {
    let mut a = vec![
        "--kernel".to_string(),
        kernel.display().to_string(),
        "--serial".into(),
        "stdio".into(),
        "--cmdline".into(),
        format!("{} {}", args.cmdline, s.guest_tokens()),
    ];
    if let Some(m) = &args.memory {
        a.extend(["--memory".to_string(), m.clone()]);
    }
    a.extend(device);
    a
}

/// Turns a finished VM into a sample.
fn guest_sample(run_no: usize, r: std::io::Result<GuestRun>, timeout: Duration) -> IoSample {
    let run = match r {
        Ok(run) => run,
        Err(e) => return IoSample::failed(run_no, format!("cannot start kiln: {e}")),
    };
    let w: Window = match window(&run) {
        Ok(w) => w,
        Err(e) if run.timed_out => {
            return IoSample::failed(run_no, format!("timed out after {timeout:?}: {e}"))
        }
        Err(e) => return IoSample::failed(run_no, e),
    };
    let mut s = IoSample {
        run: run_no,
        ok: true,
        elapsed_ns: w.elapsed_ns(),
        bytes: w.end.bytes,
        ops: w.end.requests.or(w.end.tx).unwrap_or(0),
        rx: w.end.rx,
        error: None,
    };
    if run.exit_code != Some(0) {
        s.ok = false;
        s.error = Some(format!("kiln exited with {:?}", run.exit_code));
    }
    s
}

fn host_sample(run: usize, s: &IoSettings, r: std::io::Result<u64>) -> IoSample {
    match r {
        Ok(ns) => IoSample {
            run,
            ok: true,
            error: None,
            elapsed_ns: ns,
            bytes: s.requests() * s.req,
            ops: s.requests(),
            rx: None,
        },
        Err(e) => IoSample::failed(run, e.to_string()),
    }
}

/// Block runs: guest, then the host baselines on the same file.
fn run_blk(
    args: &BenchArgs,
    s: &IoSettings,
    kernel: &Path,
    notes: &mut Vec<String>,
) -> Result<Vec<IoRow>, BenchError> {
    let scratch = scratch_dir("kiln-bench-io-")?;
    let dir = scratch.as_path();
    let disk = dir.join("disk.img");
    let size = host::disk_bytes(s.kib, s.req);
    let result = (|| {
        progress(&format!("making a {} MiB disk file", size >> 20));
        host::make_disk(&disk, size).map_err(|source| IoError::Disk {
            path: disk.clone(),
            source,
        })?;
        if host::fs_magic(dir) == Some(libc::TMPFS_MAGIC as u64) {
            notes.push(format!(
                "{} is tmpfs: the cold-cache baseline is not cold",
                dir.display()
            ));
        }
        let slots = host::request_slots(s.op, s.requests(), size / s.req);
        let timeout = Duration::from_secs(args.timeout.max(1));
        let dev = ["--disk".to_string(), format!("path={}", disk.display())];
        let exe = std::env::current_exe().map_err(BenchError::CurrentExe)?;
        let (mut vm, mut warm, mut cold) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..s.runs {
            progress(&format!("run {}/{}", i + 1, s.runs));
            // Cold first: it empties the cache, the warm pass refills it for the VM.
            if s.op != BlkOp::Write {
                let r = host::host_pass(&disk, s.op, &slots, s.req, Cache::Cold);
                cold.push(host_sample(i, s, r));
            }
            let r = host::host_pass(&disk, s.op, &slots, s.req, Cache::Warm);
            warm.push(host_sample(i, s, r));
            let cmd = kiln_run(&exe, &vm_args(args, s, kernel, dev.clone()));
            vm.push(guest_sample(i, run_vm(cmd, timeout), timeout));
        }
        let host_op = match s.op {
            BlkOp::Write => "pwrite+fdatasync",
            _ => "pread",
        };
        let mut rows = vec![
            IoRow::new("guest virtio-blk (kiln)", vm),
            IoRow::new(&format!("host {host_op}, warm cache"), warm),
        ];
        if s.op != BlkOp::Write {
            rows.push(IoRow::new(&format!("host {host_op}, cold cache"), cold));
        }
        Ok::<_, BenchError>(rows)
    })();
    drop(scratch);
    if s.qd > 1 {
        notes.push("the host baseline issues one request at a time".into());
    }
    notes.push(format!(
        "disk file of {} MiB, {} requests per run; writes end with one flush (guest) / \
         fdatasync (host)",
        size >> 20,
        s.requests()
    ));
    result
}

/// Network runs through a TAP to the echo peer.
fn run_net(
    args: &BenchArgs,
    s: &IoSettings,
    kernel: &Path,
    notes: &mut Vec<String>,
) -> Result<Vec<IoRow>, BenchError> {
    let name = args
        .tap
        .clone()
        .unwrap_or_else(|| format!("kb{}", std::process::id() % 1_000_000));
    let tap = Tap::open(&name).map_err(IoError::from)?;
    let peer = EchoPeer::start(&tap.name).map_err(IoError::from)?;
    let timeout = Duration::from_secs(args.timeout.max(1));
    let dev = [
        "--net".to_string(),
        format!("tap={},mac={GUEST_MAC}", tap.name),
    ];
    let exe = std::env::current_exe().map_err(BenchError::CurrentExe);
    let mut vm = Vec::new();
    if let Ok(exe) = &exe {
        for i in 0..s.runs {
            progress(&format!("run {}/{}", i + 1, s.runs));
            let cmd = kiln_run(exe, &vm_args(args, s, kernel, dev.clone()));
            vm.push(guest_sample(i, run_vm(cmd, timeout), timeout));
        }
    }
    let echoed = peer.stop();
    notes.push(format!(
        "TAP {}{}; the host echo peer sent back {echoed} frames; MiB/s counts both \
         directions (frame bytes without virtio header or FCS)",
        tap.name,
        if tap.existed { " (existing)" } else { "" }
    ));
    drop(tap);
    exe?;
    Ok(vec![IoRow::new("guest virtio-net (kiln)", vm)])
}

/// Runs `kiln bench --io KIND`; true when at least one guest run succeeded.
pub fn run(args: &BenchArgs, kind: IoKind) -> Result<bool, BenchError> {
    let s = IoSettings::from_args(args, kind)?;
    if s.runs == 0 {
        return Err(BenchError::NoRuns);
    }
    let kernel = kernel_path(args)?;
    let mut notes = Vec::new();
    let rows = match kind {
        IoKind::Blk => run_blk(args, &s, &kernel, &mut notes)?,
        IoKind::Net => run_net(args, &s, &kernel, &mut notes)?,
    };
    if vmm::host::is_pvm_host() {
        notes.push(
            "PVM host: the guest driver runs in the host's instruction emulator, so the \
             guest rows measure the emulator more than Kiln's device path"
                .into(),
        );
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout(), table(&s, &rows, &notes).as_bytes());
    if let Some(path) = &args.json {
        let doc = IoReport {
            tool: "kiln bench --io",
            version: env!("CARGO_PKG_VERSION"),
            host: HostFacts::probe(),
            settings: &s,
            kernel: &kernel,
            rows: &rows,
            notes: &notes,
        };
        write_file(path, &serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(rows.first().is_some_and(|r| r.samples.iter().any(|s| s.ok)))
}

#[cfg(test)]
mod tests {
    use super::super::test_args::T;
    use super::*;
    use clap::Parser;

    fn settings(argv: &[&str]) -> Result<IoSettings, IoError> {
        let t = T::try_parse_from(argv).unwrap();
        IoSettings::from_args(&t.b, t.b.io.unwrap())
    }

    #[test]
    fn flags_and_guest_tokens() {
        let s = settings(&["t", "--io", "blk"]).unwrap();
        assert_eq!(
            (s.op, s.kib, s.req, s.qd, s.runs),
            (BlkOp::Read, 1024, 4096, 1, 3)
        );
        assert_eq!(s.requests(), 256);
        assert_eq!(
            s.guest_tokens(),
            "kiln.mode=blkbench kiln.bench_op=read kiln.bench_kib=1024 kiln.bench_req=4096 \
             kiln.bench_qd=1"
        );
        let s = settings(&[
            "t", "--io", "blk", "--io-op", "randread", "--io-req", "65536", "--io-qd", "4",
            "--runs", "5",
        ])
        .unwrap();
        assert_eq!((s.op, s.req, s.qd, s.runs), (BlkOp::Randread, 65536, 4, 5));
        assert!(s.title().contains("randread"));
        let s = settings(&["t", "--io", "net", "--io-frames", "7", "--io-len", "60"]).unwrap();
        assert_eq!(
            s.guest_tokens(),
            "kiln.mode=netbench kiln.bench_frames=7 kiln.bench_len=60"
        );
        assert!(T::try_parse_from(["t", "--io", "disk"]).is_err());
    }

    #[test]
    fn rejects_what_the_guest_cannot_do() {
        for argv in [
            &["t", "--io", "blk", "--io-req", "1000"][..],
            &["t", "--io", "blk", "--io-qd", "0"],
            &["t", "--io", "blk", "--io-qd", "11"],
            &["t", "--io", "blk", "--io-req", "524288", "--io-qd", "4"],
            &["t", "--io", "blk", "--io-kib", "4", "--io-req", "8192"],
            &["t", "--io", "net", "--io-len", "59"],
            &["t", "--io", "net", "--io-len", "1515"],
            &["t", "--io", "net", "--io-frames", "0"],
        ] {
            assert!(settings(argv).is_err(), "{argv:?}");
        }
    }

    #[test]
    fn sample_rates() {
        let s = IoSample {
            ok: true,
            elapsed_ns: 500_000_000,
            bytes: 1 << 20,
            ops: 256,
            rx: Some(100),
            ..IoSample::default()
        };
        assert!((s.mib_s() - 2.0).abs() < 1e-9);
        assert!((s.ops_s() - 512.0).abs() < 1e-9);
        assert_eq!(s.rx_s(), Some(200.0));
        let z = IoSample::default();
        assert!(z.mib_s() == 0.0 && z.rx_s().is_none());
    }

    #[test]
    fn rows_summarise_successful_runs_only() {
        let ok = |run, ms: u64| IoSample {
            run,
            ok: true,
            elapsed_ns: ms * 1_000_000,
            bytes: 1 << 20,
            ops: 10,
            ..IoSample::default()
        };
        let r = IoRow::new(
            "x",
            vec![ok(0, 100), IoSample::failed(1, "boom".into()), ok(2, 300)],
        );
        let e = r.elapsed_ms.unwrap();
        assert_eq!((e.n, e.median, e.min, e.max), (2, 200.0, 100.0, 300.0));
        assert!(r.rx_s.is_none());
        let s = IoSettings::from_args(
            &T::try_parse_from(["t", "--io", "blk"]).unwrap().b,
            IoKind::Blk,
        )
        .unwrap();
        let t = table(&s, &[r], &["n1".into()]);
        assert!(t.contains("2/3") && t.contains("run 1: boom") && t.contains("note: n1"));
        assert!(t.contains("200.00 [100.00–300.00]"), "{t}");
    }

    #[test]
    fn guest_samples() {
        let line = |t: u64, text: &str| guest::Line {
            first_ns: t,
            last_ns: t,
            text: text.into(),
        };
        let run = GuestRun {
            lines: vec![
                line(1_000, "KILN-BENCH start"),
                line(
                    1_001_000,
                    "KILN-BENCH end op=read bytes=1048576 requests=256 errors=0",
                ),
            ],
            exit_code: Some(0),
            ..GuestRun::default()
        };
        let t = Duration::from_secs(1);
        let s = guest_sample(0, Ok(run.clone()), t);
        assert!(s.ok);
        assert_eq!((s.elapsed_ns, s.ops, s.bytes), (1_000_000, 256, 1 << 20));
        let mut bad = run;
        bad.exit_code = Some(1);
        assert!(!guest_sample(0, Ok(bad), t).ok);
        let e = guest_sample(0, Err(std::io::Error::other("x")), t);
        assert!(e.error.unwrap().contains("cannot start"));
    }
}
