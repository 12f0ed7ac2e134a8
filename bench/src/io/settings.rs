//! What an `--io` run does: its kind, sizes, queue depth and their checks.

use std::path::PathBuf;

use serde::Serialize;

use super::host::BlkOp;
use super::tap::TapError;
use crate::BenchArgs;

/// Default `--runs` with `--io`.
pub const DEFAULT_IO_RUNS: usize = 3;
/// The MAC the benchmark gives the guest.
pub const GUEST_MAC: &str = "02:4b:00:00:00:01";
/// Largest guest request and queue depth (`resources/guest/bench.c`: 1 MiB buffer area,
/// three descriptors per request in a 32-entry ring).
pub(crate) const MAX_REQ_AREA: u64 = 1 << 20;
pub(crate) const MAX_QD: u64 = 10;

/// Which device `--io` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IoKind {
    /// virtio-blk on a raw file.
    Blk,
    /// virtio-net through a TAP to a host echo peer.
    Net,
}

/// Why `--io` could not run.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// A flag value the guest cannot do.
    #[error("{0}")]
    BadArgs(String),
    /// The disk file.
    #[error("disk file {path}: {source}")]
    Disk {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// TAP or echo peer.
    #[error(transparent)]
    Tap(#[from] TapError),
}

/// The `--io` settings (JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IoSettings {
    /// Device.
    pub kind: IoKind,
    /// Block operation.
    pub op: BlkOp,
    /// Block: KiB per run.
    pub kib: u64,
    /// Block: bytes per request.
    pub req: u64,
    /// Block: requests in flight.
    pub qd: u64,
    /// Net: frames per run.
    pub frames: u64,
    /// Net: frame bytes (no FCS).
    pub len: u64,
    /// Runs.
    pub runs: usize,
}

impl IoSettings {
    /// From the flags; checks the limits of the guest's bench modes.
    pub fn from_args(args: &BenchArgs, kind: IoKind) -> Result<Self, IoError> {
        let s = IoSettings {
            kind,
            op: args.io_op,
            kib: args.io_kib,
            req: args.io_req,
            qd: args.io_qd,
            frames: args.io_frames,
            len: args.io_len,
            runs: args.runs.unwrap_or(DEFAULT_IO_RUNS),
        };
        let bad = |m: String| Err(IoError::BadArgs(m));
        match kind {
            IoKind::Blk if s.req < 512 || !s.req.is_multiple_of(512) => {
                bad(format!("--io-req {} must be a multiple of 512", s.req))
            }
            IoKind::Blk if !(1..=MAX_QD).contains(&s.qd) => {
                bad(format!("--io-qd {} must be 1..={MAX_QD}", s.qd))
            }
            IoKind::Blk if s.req * s.qd > MAX_REQ_AREA => bad(format!(
                "--io-req × --io-qd must be at most {MAX_REQ_AREA} (the guest's buffer area)"
            )),
            IoKind::Blk if s.kib.saturating_mul(1024) < s.req => {
                bad("--io-kib must cover at least one request".into())
            }
            IoKind::Net if !(60..=1514).contains(&s.len) => {
                bad(format!("--io-len {} must be 60..=1514", s.len))
            }
            IoKind::Net if s.frames == 0 => bad("--io-frames must be at least 1".into()),
            _ => Ok(s),
        }
    }

    /// Block requests per run.
    pub fn requests(&self) -> u64 {
        self.kib.saturating_mul(1024) / self.req.max(1)
    }

    /// The guest command-line tokens of the bench mode.
    pub fn guest_tokens(&self) -> String {
        match self.kind {
            IoKind::Blk => format!(
                "kiln.mode=blkbench kiln.bench_op={} kiln.bench_kib={} kiln.bench_req={} \
                 kiln.bench_qd={}",
                self.op.name(),
                self.kib,
                self.req,
                self.qd
            ),
            IoKind::Net => format!(
                "kiln.mode=netbench kiln.bench_frames={} kiln.bench_len={}",
                self.frames, self.len
            ),
        }
    }

    /// One-line description for the table.
    pub fn title(&self) -> String {
        match self.kind {
            IoKind::Blk => format!(
                "virtio-blk {}: {} KiB in {}-byte requests, queue depth {}, {} runs",
                self.op.name(),
                self.kib,
                self.req,
                self.qd,
                self.runs
            ),
            IoKind::Net => format!(
                "virtio-net: {} frames of {} bytes sent and echoed, {} runs",
                self.frames, self.len, self.runs
            ),
        }
    }
}
