//! `kiln bench` flags.

use std::path::PathBuf;

use super::io;

/// `kiln bench` flags.
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("api_modes").args(["api", "restore"])))]
pub struct BenchArgs {
    /// Guest kernel [default: the minimal PVH guest of resources/guest/minimal, built into
    /// kiln; with --io, the test guest resources/out/guest/kiln-test-guest.elf].
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = "console=ttyS0")]
    pub cmdline: String,
    /// Guest memory, e.g. 128M [default: kiln run's].
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<String>,
    /// Runs per runner and mode [default: 20; 3 with --io].
    #[arg(long)]
    pub runs: Option<usize>,
    /// Also run a batch this many at a time and report runs per second (when > 1).
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Untimed runs per runner first (warm caches; a failing warm-up skips the runner).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Kill a run after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Write all raw samples and summaries as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG chart here.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Do not measure: redraw --plot from the raw samples of this earlier --json file.
    #[arg(long, requires = "plot", value_name = "JSON")]
    pub replot: Option<PathBuf>,
    /// Skip the Kiln VM runner.
    #[arg(long)]
    pub no_vm: bool,
    /// Skip the runc container runner.
    #[arg(long)]
    pub no_container: bool,
    /// Skip the fork/exec baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// OCI bundle for runc [default: resources/out/bench/bundle in the repository; make it
    /// with resources/bench/setup-container.sh].
    #[arg(long)]
    pub bundle: Option<PathBuf>,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    /// Another command to time exec→exit, split on whitespace (repeatable), e.g.
    /// "qemu-system-x86_64 -M microvm ...".
    #[arg(long = "other")]
    pub other: Vec<String>,
    /// Measure virtio I/O instead of start-up: blk (virtio-blk on a temp file, next to
    /// the host doing the same I/O) or net (virtio-net through a TAP; needs root).
    #[arg(long, value_enum)]
    pub io: Option<io::IoKind>,
    /// --io blk: operation.
    #[arg(long, value_enum, default_value = "read")]
    pub io_op: io::host::BlkOp,
    /// --io blk: KiB per run.
    #[arg(long, default_value_t = 1024)]
    pub io_kib: u64,
    /// --io blk: bytes per request (multiple of 512).
    #[arg(long, default_value_t = 4096)]
    pub io_req: u64,
    /// --io blk: requests in flight (1..=10).
    #[arg(long, default_value_t = 1)]
    pub io_qd: u64,
    /// --io net: frames per run.
    #[arg(long, default_value_t = 200)]
    pub io_frames: u64,
    /// --io net: frame length in bytes (60..=1514, no FCS).
    #[arg(long, default_value_t = 1514)]
    pub io_len: u64,
    /// --io net: TAP to use (created and deleted unless it exists) [default: kb followed by
    /// the process ID].
    #[arg(long)]
    pub tap: Option<String>,
    /// Time start-up through Firecracker's interface instead of runc/fork/exec/--other:
    /// `kiln run` (unless --no-vm), `kiln api --no-api --config-file`, and `kiln api` driven
    /// over its socket (exec → socket accepting, InstanceStart → 204 and → first KVM_RUN).
    #[arg(long, conflicts_with = "io")]
    pub api: bool,
    /// With --api: time this Firecracker binary the same way, with --boot-timer (no
    /// timings file: its Guest-boot-time log line instead). With --restore: boot,
    /// snapshot and `PUT /snapshot/load` the same guest through its API (it makes its
    /// own snapshot: Firecracker cannot read Kiln's). A symlink named `firecracker` to
    /// kiln stands in for one (kiln answers Firecracker's flags under that name).
    #[arg(long, requires = "api_modes", value_name = "FIRECRACKER")]
    pub api_other: Option<PathBuf>,
    /// Time snapshot restore instead of start-up: per --restore-mem size, boot a guest
    /// that keeps running, pause it and time `PUT /snapshot/create`, then time `kiln
    /// restore --resume` (exec → first KVM_RUN), `kiln api` + `PUT /snapshot/load`, and
    /// --clones restores at once (memory they share); --runs and --warmup apply,
    /// --concurrency does not.
    #[arg(long, conflicts_with_all = ["io", "api"])]
    pub restore: bool,
    /// --restore: guest memory sizes, comma-separated (K/M/G suffixes; whole MiB).
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_memory,
        default_value = "128M,4G",
        requires = "restore"
    )]
    pub restore_mem: Vec<String>,
    /// Measure virtio-vsock instead of start-up: round trips and throughput both ways
    /// between the host and the test guest (kiln.mode=vsock, Firecracker's hybrid Unix
    /// sockets), next to a Unix socket pair on the host doing the same; --runs applies
    /// [default: 3].
    #[arg(long, conflicts_with_all = ["io", "api", "restore"])]
    pub vsock: bool,
    /// --vsock: KiB per direction (guest → host stream and host → guest → host echo).
    #[arg(long, default_value_t = 256, requires = "vsock")]
    pub vsock_kib: u64,
    /// --vsock: bytes per write in the bulk phases.
    #[arg(long, default_value_t = 4096, requires = "vsock")]
    pub vsock_msg: u64,
    /// --vsock: bytes per round trip.
    #[arg(long, default_value_t = 64, requires = "vsock")]
    pub vsock_ping: u64,
    /// --vsock: round trips per run.
    #[arg(long, default_value_t = 100, requires = "vsock")]
    pub vsock_rounds: usize,
    /// --restore: VMs restored at once from one snapshot to measure shared memory
    /// (0: skip).
    #[arg(long, default_value_t = 4, requires = "restore")]
    pub clones: usize,
}

impl BenchArgs {
    /// `--runs` for the start-up benchmark.
    pub fn startup_runs(&self) -> usize {
        self.runs.unwrap_or(20)
    }
}

fn parse_memory(s: &str) -> Result<String, vmm::config::ConfigError> {
    vmm::config::parse_size(s).map(|_| s.to_string())
}

/// `kiln bench` flags parsed from `argv` (tests of this crate).
#[cfg(test)]
pub(crate) mod test_args {
    use super::BenchArgs;

    /// A command whose only arguments are the bench flags.
    #[derive(clap::Parser)]
    pub(crate) struct T {
        #[command(flatten)]
        pub(crate) b: BenchArgs,
    }
}

#[cfg(test)]
mod tests {
    use super::test_args::T;
    use clap::Parser;

    #[test]
    fn defaults_and_flags() {
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!(
            (t.b.startup_runs(), t.b.concurrency, t.b.warmup),
            (20, 1, 1)
        );
        assert_eq!(t.b.cmdline, "console=ttyS0");
        let t = T::try_parse_from([
            "t",
            "--runs",
            "5",
            "--memory",
            "64M",
            "--other",
            "a b",
            "--other",
            "c",
            "--no-container",
        ])
        .unwrap();
        assert_eq!(t.b.other, ["a b", "c"]);
        assert!(t.b.no_container);
        assert!(T::try_parse_from(["t", "--memory", "lots"]).is_err());
    }

    #[test]
    fn restore_flags() {
        let t = T::try_parse_from(["t", "--restore"]).unwrap();
        assert!(t.b.restore);
        assert_eq!(t.b.restore_mem, ["128M", "4G"]);
        assert_eq!(t.b.clones, 4);
        let t = T::try_parse_from(["t", "--restore", "--restore-mem", "64M,1G", "--clones", "0"])
            .unwrap();
        assert_eq!(
            (t.b.restore_mem.as_slice(), t.b.clones),
            (&["64M".to_string(), "1G".into()][..], 0)
        );
        assert!(T::try_parse_from(["t", "--restore", "--restore-mem", "64M,lots"]).is_err());
        assert!(T::try_parse_from(["t", "--restore-mem", "64M"]).is_err());
        assert!(T::try_parse_from(["t", "--restore", "--api"]).is_err());
        assert!(T::try_parse_from(["t", "--restore", "--io", "blk"]).is_err());
    }

    #[test]
    fn vsock_flags() {
        let t = T::try_parse_from(["t", "--vsock"]).unwrap();
        assert!(t.b.vsock);
        assert_eq!(
            (
                t.b.vsock_kib,
                t.b.vsock_msg,
                t.b.vsock_ping,
                t.b.vsock_rounds
            ),
            (256, 4096, 64, 100)
        );
        assert!(T::try_parse_from(["t", "--vsock-kib", "8"]).is_err());
        assert!(T::try_parse_from(["t", "--vsock", "--io", "blk"]).is_err());
        assert!(T::try_parse_from(["t", "--vsock", "--restore"]).is_err());
    }

    #[test]
    fn api_other_needs_api_or_restore() {
        assert!(T::try_parse_from(["t", "--api-other", "fc"]).is_err());
        for mode in ["--api", "--restore"] {
            let t = T::try_parse_from(["t", mode, "--api-other", "fc"]).unwrap();
            assert_eq!(t.b.api_other.as_deref(), Some(std::path::Path::new("fc")));
        }
    }
}
