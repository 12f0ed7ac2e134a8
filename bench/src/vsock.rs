//! `kiln bench --vsock`: virtio-vsock throughput and round trips as the test guest sees
//! them, next to a Unix socket pair on the host doing the same.
//!
//! Each run boots the test guest in `kiln.mode=vsock` (resources/guest/README.md) with
//! Firecracker's hybrid host side ([`guest`]): the host connects to the guest's echo
//! server (`CONNECT 1234`) and times `--vsock-rounds` round trips of `--vsock-ping`
//! bytes (write, read the echo), then echoes `--vsock-kib` KiB in `--vsock-msg`-byte
//! writes (host → guest → host, first write to last byte back); the guest's client then
//! streams the same byte count to host port 7000 (`<uds>_7000`), timed from accepting
//! its connection to the end of the stream. The host baseline ([`host`]) runs the same
//! code ([`workload`]) over a socket pair with a thread as the peer. Every byte is
//! checked. On a PVM host the guest's driver runs in the host's instruction emulator,
//! so the guest-side figures are emulator-bound.

pub mod guest;
pub mod host;
pub mod workload;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{find_in_repo, progress, write_file, BenchArgs, BenchError, HostFacts};
use crate::stats::Summary;
use guest::GuestSpec;

/// Largest `--vsock-kib` (the guest's client sends at most 64 MiB).
pub const MAX_KIB: u64 = 64 << 10;
/// Largest `--vsock-ping` (one guest RX buffer holds 4052 payload bytes).
pub const MAX_PING: usize = 4052;
/// Largest `--vsock-msg`.
pub const MAX_MSG: usize = 1 << 20;

/// Why `--vsock` cannot run.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// A flag is out of range.
    #[error("{flag} {value}: {why}")]
    Flag {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: u64,
        /// The allowed range.
        why: &'static str,
    },
}

/// What one run measures.
#[derive(Debug, Clone, Serialize)]
pub struct VsockSettings {
    /// Runs per side.
    pub runs: usize,
    /// Bytes per direction.
    pub bytes: u64,
    /// Bytes per write in the bulk phases.
    pub msg: usize,
    /// Bytes per round trip.
    pub ping: usize,
    /// Round trips per run.
    pub rounds: usize,
}

impl VsockSettings {
    /// The settings of `args`, checked.
    pub fn from_args(args: &BenchArgs) -> Result<Self, VsockError> {
        let flag = |flag, value, ok: bool, why| match ok {
            true => Ok(()),
            false => Err(VsockError::Flag { flag, value, why }),
        };
        let (kib, msg, ping) = (args.vsock_kib, args.vsock_msg, args.vsock_ping);
        flag(
            "--vsock-kib",
            kib,
            (1..=MAX_KIB).contains(&kib),
            "1..=65536",
        )?;
        let ok = (1..=MAX_MSG as u64).contains(&msg);
        flag("--vsock-msg", msg, ok, "1..=1048576")?;
        let ok = (1..=MAX_PING as u64).contains(&ping);
        flag("--vsock-ping", ping, ok, "1..=4052")?;
        let rounds = args.vsock_rounds as u64;
        flag("--vsock-rounds", rounds, rounds >= 1, "at least 1")?;
        let runs = args.runs.unwrap_or(3);
        flag("--runs", runs as u64, runs >= 1, "at least 1")?;
        Ok(VsockSettings {
            runs,
            bytes: kib << 10,
            msg: msg as usize,
            ping: ping as usize,
            rounds: args.vsock_rounds,
        })
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Every round trip.
    pub rtt: Vec<Duration>,
    /// The bulk echo.
    pub echo: Duration,
    /// The peer's stream to the host.
    pub to_host: Duration,
}

/// One run's figures (`error` set when it failed).
#[derive(Debug, Clone, Serialize)]
pub struct VsockSample {
    /// Run number.
    pub run: usize,
    /// Why the run failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Peer → host MiB/s.
    pub to_host_mib_s: f64,
    /// Host → peer → host MiB/s (bytes / time).
    pub echo_mib_s: f64,
    /// Every round trip, µs.
    pub rtt_us: Vec<f64>,
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(1e-9)
}

impl VsockSample {
    fn new(run: usize, bytes: u64, r: Result<Measured, String>) -> Self {
        match r {
            Ok(m) => VsockSample {
                run,
                error: None,
                to_host_mib_s: mib_s(bytes, m.to_host),
                echo_mib_s: mib_s(bytes, m.echo),
                rtt_us: m.rtt.iter().map(|d| d.as_secs_f64() * 1e6).collect(),
            },
            Err(e) => VsockSample {
                run,
                error: Some(e),
                to_host_mib_s: f64::NAN,
                echo_mib_s: f64::NAN,
                rtt_us: Vec::new(),
            },
        }
    }
}

/// One runner's samples and their summaries.
#[derive(Debug, Clone, Serialize)]
pub struct VsockRow {
    /// The runner.
    pub name: String,
    /// Every run.
    pub samples: Vec<VsockSample>,
    /// Over the runs that succeeded.
    pub to_host_mib_s: Option<Summary>,
    /// Over the runs that succeeded.
    pub echo_mib_s: Option<Summary>,
    /// Over every round trip of the runs that succeeded.
    pub rtt_us: Option<Summary>,
}

impl VsockRow {
    fn new(name: &str, samples: Vec<VsockSample>) -> Self {
        let ok: Vec<&VsockSample> = samples.iter().filter(|s| s.error.is_none()).collect();
        let of =
            |f: fn(&VsockSample) -> f64| Summary::of(&ok.iter().map(|s| f(s)).collect::<Vec<_>>());
        let rtts: Vec<f64> = ok.iter().flat_map(|s| s.rtt_us.iter().copied()).collect();
        VsockRow {
            name: name.into(),
            to_host_mib_s: of(|s| s.to_host_mib_s),
            echo_mib_s: of(|s| s.echo_mib_s),
            rtt_us: Summary::of(&rtts),
            samples,
        }
    }

    fn ok_runs(&self) -> usize {
        self.samples.iter().filter(|s| s.error.is_none()).count()
    }
}

/// The table.
pub fn table(s: &VsockSettings, rows: &[VsockRow], notes: &[String]) -> String {
    let mut t = format!(
        "kiln bench --vsock: {} runs; {} KiB each way in {}-byte writes; {} round trips of {} bytes\n",
        s.runs,
        s.bytes >> 10,
        s.msg,
        s.rounds,
        s.ping
    );
    let _ = writeln!(
        t,
        "{:<26} {:>5} {:>17} {:>17} {:>22}",
        "runner", "ok", "to host MiB/s", "echo MiB/s", "round trip µs med/p90"
    );
    let med = |x: &Option<Summary>| x.map_or("-".into(), |s| format!("{:.2}", s.median));
    for r in rows {
        let rtt = r
            .rtt_us
            .map_or("-".into(), |s| format!("{:.1} / {:.1}", s.median, s.p90));
        let _ = writeln!(
            t,
            "{:<26} {:>5} {:>17} {:>17} {:>22}",
            r.name,
            format!("{}/{}", r.ok_runs(), r.samples.len()),
            med(&r.to_host_mib_s),
            med(&r.echo_mib_s),
            rtt
        );
    }
    for r in rows {
        for e in r
            .samples
            .iter()
            .filter_map(|s| s.error.as_ref().map(|e| (s.run, e)))
        {
            let _ = writeln!(t, "{} run {}: failed: {}", r.name, e.0, e.1);
        }
    }
    for n in notes {
        let _ = writeln!(t, "note: {n}");
    }
    t
}

/// The `--json` document.
#[derive(Debug, Serialize)]
struct VsockReport<'a> {
    tool: &'static str,
    version: &'static str,
    host: HostFacts,
    settings: &'a VsockSettings,
    kernel: &'a std::path::Path,
    rows: &'a [VsockRow],
    notes: &'a [String],
}

/// The test guest: `--kernel`, else the repository's build.
fn kernel_path(args: &BenchArgs) -> Result<PathBuf, BenchError> {
    let kernel = args.kernel.clone().unwrap_or_else(|| {
        find_in_repo(super::DEFAULT_KERNEL).unwrap_or_else(|| super::DEFAULT_KERNEL.into())
    });
    match kernel.is_file() {
        true => Ok(kernel),
        false => Err(BenchError::KernelMissing(kernel)),
    }
}

/// Runs `kiln bench --vsock`: true when at least one VM run succeeded.
pub fn run(args: &BenchArgs) -> Result<bool, BenchError> {
    let s = VsockSettings::from_args(args)?;
    let spec = GuestSpec {
        exe: std::env::current_exe().map_err(BenchError::CurrentExe)?,
        kernel: kernel_path(args)?,
        cmdline: args.cmdline.clone(),
        memory: args.memory.clone(),
    };
    let timeout = Duration::from_secs(args.timeout.max(1));
    let mut vm = Vec::new();
    let mut pair = Vec::new();
    for run in 0..s.runs {
        progress(&format!("vsock: VM run {}/{}", run + 1, s.runs));
        let r = guest::run_once(&spec, &s, timeout).map_err(|e| e.to_string());
        vm.push(VsockSample::new(run, s.bytes, r));
        let r = host::run_once(&s, timeout).map_err(|e| e.to_string());
        pair.push(VsockSample::new(run, s.bytes, r));
    }
    let rows = [
        VsockRow::new("kiln VM (virtio-vsock)", vm),
        VsockRow::new("host Unix socket pair", pair),
    ];
    let mut notes = vec![
        "to host: the peer (guest client / thread) streams to the host; echo: host → peer → \
         host, bytes / time; round trip: write, read the echo"
            .to_string(),
    ];
    if vmm::host::is_pvm_host() {
        notes.push(
            "PVM host: the guest's driver runs in the host's instruction emulator (~1.5 M \
             instructions/s), so the VM figures are emulator-bound, not Kiln's device cost"
                .into(),
        );
    }
    let _ = write!(std::io::stdout(), "{}", table(&s, &rows, &notes));
    if let Some(path) = &args.json {
        let doc = VsockReport {
            tool: "kiln bench --vsock",
            version: env!("CARGO_PKG_VERSION"),
            host: HostFacts::probe(),
            settings: &s,
            kernel: &spec.kernel,
            rows: &rows,
            notes: &notes,
        };
        write_file(path, &serde_json::to_string_pretty(&doc)?)?;
    }
    Ok(rows[0].ok_runs() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_args::T;
    use clap::Parser;

    #[test]
    fn settings_come_from_the_flags() {
        let t = T::try_parse_from(["t", "--vsock", "--vsock-kib", "16", "--runs", "2"]).unwrap();
        let s = VsockSettings::from_args(&t.b).unwrap();
        assert_eq!((s.runs, s.bytes, s.msg, s.ping), (2, 16 << 10, 4096, 64));
    }

    #[test]
    fn out_of_range_flags_are_refused_by_name() {
        for (flag, v) in [
            ("--vsock-kib", "0"),
            ("--vsock-ping", "5000"),
            ("--vsock-msg", "0"),
        ] {
            let t = T::try_parse_from(["t", "--vsock", flag, v]).unwrap();
            let e = VsockSettings::from_args(&t.b).unwrap_err();
            assert!(e.to_string().starts_with(flag), "{e}");
        }
    }

    #[test]
    fn a_failed_run_shows_in_the_table_and_not_in_the_medians() {
        let s = VsockSettings {
            runs: 2,
            bytes: 1 << 20,
            msg: 4096,
            ping: 64,
            rounds: 1,
        };
        let ok = Measured {
            rtt: vec![Duration::from_micros(50)],
            echo: Duration::from_millis(500),
            to_host: Duration::from_millis(250),
        };
        let row = VsockRow::new(
            "vm",
            vec![
                VsockSample::new(0, s.bytes, Ok(ok)),
                VsockSample::new(1, s.bytes, Err("boom".into())),
            ],
        );
        assert_eq!(row.to_host_mib_s.map(|x| (x.n, x.median)), Some((1, 4.0)));
        assert_eq!(row.echo_mib_s.map(|x| x.median), Some(2.0));
        let t = table(&s, &[row], &[]);
        assert!(
            t.contains("1/2") && t.contains("vm run 1: failed: boom"),
            "{t}"
        );
    }
}
