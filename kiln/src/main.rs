//! The `kiln` binary: parses the command line and runs a VM or a host check.

mod api_mode;
mod cli;
mod fc_cli;
mod jail;
mod logger;
mod terminal;

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use clap::Parser;
use devices::legacy::serial::SerialOutput;
use vmm::config::{SerialConfig, VmConfig};
use vmm::device_manager::SerialIo;
use vmm::timings::RunTimings;
use vmm::{RunOptions, StopHandle, Vm, VmExit};

use cli::{Cli, Command, RunArgs};

fn main() -> ExitCode {
    let start = util::time::monotonic_ns();
    if fc_cli::invoked_as_firecracker() {
        return firecracker_main(start);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap's message as clap prints it (help and version on stdout), but a usage
            // error exits 1 like every configuration error: 2 means an emulation failure.
            let _ = e.print();
            return ExitCode::from(u8::from(e.exit_code() != 0));
        }
    };
    match cli.command {
        Command::Check => match vmm::host::check_report() {
            Ok(report) => {
                print!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Run(args) => run(&args, start),
        Command::Api(args) => api_mode::run(&args.fc, args.timings.as_deref(), start),
        Command::Restore(args) => api_mode::restore(&args, start),
        Command::Bench(args) => bench::run(&args),
    }
}

/// The binary run under the name `firecracker`: Firecracker's flags only.
fn firecracker_main(start: u64) -> ExitCode {
    let cli = match fc_cli::FirecrackerCli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::from(e.exit_code() != 0));
        }
    };
    if cli.version {
        println!(
            "Firecracker v{} (Kiln {})",
            api::model::FIRECRACKER_API_VERSION,
            env!("CARGO_PKG_VERSION")
        );
        return ExitCode::SUCCESS;
    }
    api_mode::run(&cli.args, None, start)
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "kiln: error: {e}");
    ExitCode::from(1)
}

/// `KILN_START_NS`: a launcher's `CLOCK_MONOTONIC` timestamp taken just before exec.
pub(crate) fn process_start(main_entry: u64) -> u64 {
    std::env::var("KILN_START_NS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&t| t > 0 && t <= main_entry)
        .unwrap_or(main_entry)
}

fn run(args: &RunArgs, main_entry: u64) -> ExitCode {
    let cfg = match args.to_config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    logger::init(args.log_level, cfg.boot_timer, "kiln");
    if let Some(sock) = &args.api_sock {
        return api_mode::run_with_api(
            &cfg,
            sock,
            args.seccomp,
            main_entry,
            args.timings.as_deref(),
        );
    }
    let opts = RunOptions {
        handle_signals: true,
        process_start_ns: process_start(main_entry),
        seccomp: args.seccomp,
        drop_capabilities: true,
    };
    // Opened before the VM runs: the main thread's seccomp filter allows no open().
    let mut end = match RunEnd::prepare(args.timings.as_deref()) {
        Ok(e) => e,
        Err(e) => return fail(&e),
    };
    let serial = match end.serial_io(&cfg) {
        Ok(s) => s,
        Err(e) => {
            end.discard();
            return fail(&e);
        }
    };
    let cfg = match &args.jail {
        None => cfg,
        Some(dir) => {
            let spec = jail::JailSpec {
                dir: dir.clone(),
                ids: args.uid.zip(args.gid),
                cgroup: args.cgroup.clone(),
            };
            match jail::enter(&spec, &cfg) {
                Ok(jailed) => jailed,
                // The parent outside the namespaces: the jailed Kiln's status.
                Err(Ok(code)) => return ExitCode::from(code),
                Err(Err(e)) => {
                    end.discard();
                    return fail(&e);
                }
            }
        }
    };
    match Vm::new(&cfg, serial, opts) {
        Ok(vm) => end.run(vm),
        Err(e) => {
            end.discard();
            fail(&e)
        }
    }
}

/// What surrounds one VM run in the binary: the serial console (and the terminal's raw
/// mode), the `--timings` file, and the exit status the VM's end maps to.
pub(crate) struct RunEnd {
    reader_gone: Arc<ReaderGone>,
    raw: Option<terminal::RawMode>,
    timings: Option<TimingsFile>,
}

impl RunEnd {
    /// Creates the `--timings` file, if asked for.
    pub(crate) fn prepare(timings: Option<&std::path::Path>) -> Result<Self, vmm::Error> {
        Ok(Self {
            reader_gone: Arc::new(ReaderGone::default()),
            raw: None,
            timings: timings.map(TimingsFile::create).transpose()?,
        })
    }

    /// The guest's serial console as `cfg` asks for it.
    pub(crate) fn serial_io(&mut self, cfg: &VmConfig) -> vmm::Result<SerialIo> {
        let (io, raw) = serial_io(cfg, &self.reader_gone)?;
        self.raw = raw;
        Ok(io)
    }

    /// The VM was not built: removes what was prepared for it.
    pub(crate) fn discard(mut self) {
        self.raw = None;
        if let Some(t) = self.timings.take() {
            t.discard();
        }
    }

    /// Runs `vm` to its end and returns Kiln's exit status for it.
    pub(crate) fn run(mut self, vm: Vm) -> ExitCode {
        let _ = self.reader_gone.stop.set(vm.stop_handle());
        let times = vm.timestamps();
        let mem_stats = vm.mem_stats();
        let result = vm.run();
        let end = util::time::monotonic_ns();
        log::logger().flush(); // how many lines rate limiting held back, if any
        self.raw = None;
        if let Some(t) = self.timings.as_mut() {
            let stats = *util::sync::lock(&mem_stats);
            let record = RunTimings::collect(&times, Some(end), result.as_ref().ok(), stats);
            t.write(&record);
        }
        match result {
            Ok(exit) => {
                if exit.is_guest_failure() {
                    let _ = writeln!(std::io::stderr(), "kiln: error: {exit}");
                } else {
                    log::info!("VM ended: {exit}");
                }
                ExitCode::from(exit.exit_code() as u8)
            }
            Err(e) => fail(&e),
        }
    }
}

/// The `--timings` file: created before the VM starts, written when it ends, removed
/// again if the VM could not be built and the file was Kiln's own.
struct TimingsFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    created: bool,
}

impl TimingsFile {
    fn create(path: &std::path::Path) -> Result<Self, vmm::Error> {
        let created = !path.exists();
        let file = std::fs::File::create(path).map_err(|source| vmm::Error::TimingsFile {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
            created,
        })
    }

    fn write(&mut self, record: &RunTimings) {
        let json = serde_json::to_string(record).unwrap_or_default();
        if let Err(e) = writeln!(self.file, "{json}") {
            log::warn!("cannot write timings to {}: {e}", self.path.display());
        }
    }

    fn discard(self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Stops the VM with [`VmExit::OutputClosed`] when the serial output's reader is gone
/// (`EPIPE`). The output is built before the VM, so the handle is set afterwards.
#[derive(Default)]
struct ReaderGone {
    stop: OnceLock<StopHandle>,
}

impl ReaderGone {
    /// Serial output to `out` that stops the VM on `EPIPE`.
    fn output(self: &Arc<Self>, out: Box<dyn Write + Send>) -> Box<dyn Write + Send> {
        let me = self.clone();
        Box::new(SerialOutput::new(out).on_reader_gone(move || {
            if let Some(stop) = me.stop.get() {
                stop.stop_with(VmExit::OutputClosed);
            }
        }))
    }
}

fn serial_io(
    cfg: &VmConfig,
    reader_gone: &Arc<ReaderGone>,
) -> vmm::Result<(SerialIo, Option<terminal::RawMode>)> {
    Ok(match &cfg.serial {
        SerialConfig::Stdio => {
            let stdin = std::io::stdin();
            let raw = terminal::RawMode::enable(&stdin);
            let input: Option<Box<dyn devices::legacy::serial::ReadFd>> =
                match terminal::is_pollable(&stdin) {
                    true => Some(Box::new(stdin)),
                    false => None,
                };
            let io = SerialIo {
                out: reader_gone.output(Box::new(std::io::stdout())),
                input,
                escape: raw.is_some(),
            };
            (io, raw)
        }
        SerialConfig::File(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| vmm::Error::SerialFile {
                    path: path.clone(),
                    source,
                })?;
            let io = SerialIo {
                out: reader_gone.output(Box::new(f)),
                input: None,
                escape: false,
            };
            (io, None)
        }
        SerialConfig::None => {
            let io = SerialIo {
                out: Box::new(std::io::sink()),
                input: None,
                escape: false,
            };
            (io, None)
        }
    })
}
