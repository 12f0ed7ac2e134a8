//! The `kiln` binary: parses the command line and runs a VM or a host check.

mod cli;
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
        Command::Bench(args) => bench::run(&args),
    }
}

fn fail(e: &dyn std::fmt::Display) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "kiln: error: {e}");
    ExitCode::from(1)
}

/// `KILN_START_NS`: a launcher's `CLOCK_MONOTONIC` timestamp taken just before exec.
fn process_start(main_entry: u64) -> u64 {
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
    logger::init(args.log_level, cfg.boot_timer);
    let reader_gone = Arc::new(ReaderGone::default());
    let (serial, _raw) = match serial_io(&cfg, &reader_gone) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let opts = RunOptions {
        handle_signals: true,
        process_start_ns: process_start(main_entry),
        seccomp: args.seccomp,
        drop_capabilities: true,
    };
    // Opened before the VM runs: the main thread's seccomp filter allows no open().
    let mut timings = match args.timings.as_deref().map(TimingsFile::create).transpose() {
        Ok(t) => t,
        Err(e) => return fail(&e),
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
                    if let Some(t) = timings.take() {
                        t.discard();
                    }
                    return fail(&e);
                }
            }
        }
    };
    let vm = match Vm::new(&cfg, serial, opts) {
        Ok(vm) => vm,
        Err(e) => {
            if let Some(t) = timings.take() {
                t.discard();
            }
            return fail(&e);
        }
    };
    let _ = reader_gone.stop.set(vm.stop_handle());
    let times = vm.timestamps();
    let mem_stats = vm.mem_stats();
    let result = vm.run();
    let end = util::time::monotonic_ns();
    log::logger().flush(); // how many lines rate limiting held back, if any
    drop(_raw);
    if let Some(t) = timings.as_mut() {
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
