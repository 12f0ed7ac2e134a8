//! Firecracker's process interface (`kiln api`, the binary run as `firecracker`), and
//! the API on a VM started from the command line (`kiln run --api-sock`) or restored
//! from a snapshot (`kiln restore`).
//!
//! Threads: the main thread owns the VM ([`main_thread`]). It binds the API socket,
//! builds the VM if it is already known (`--config-file`, `kiln run`, `kiln restore`),
//! starts the API thread (`kiln-api`, which owns the [`Controller`]) and a metrics
//! thread, then runs the VM or waits for `InstanceStart` / `PUT /snapshot/load` (or a
//! stop signal). When the VM ends the API thread is stopped, the socket removed, and
//! Kiln exits with the VM's status, as Firecracker does.

mod main_thread;
mod ticker;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use api::http::{self, Response, Server};
use api::model::VmResources;
use api::{Controller, Hooks, Reply};
use vmm::config::VmConfig;
use vmm::confine::{self, Confinement};
use vmm::event_loop;
use vmm::seccomp::{SeccompLevel, ThreadKind};
use vmm::snapshot::{RestoreOptions, VmSnapshot};
use vmm::{RunOptions, Vm, VmHandle};
use vmm_sys_util::eventfd::EventFd;

use crate::fc_cli::FcArgs;
use crate::{fail, logger, RunEnd};
use main_thread::MainThread;
use ticker::MetricsTicker;

/// `kiln api` flags besides Firecracker's.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Firecracker's flags.
    #[command(flatten)]
    pub fc: FcArgs,
    /// Write start-up timings as JSON to this file when the VM ends.
    #[arg(long)]
    pub timings: Option<PathBuf>,
}

/// `kiln restore` flags.
#[derive(clap::Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The snapshot's state file.
    #[arg(long)]
    pub snapshot: PathBuf,
    /// The snapshot's memory file.
    #[arg(long)]
    pub mem: PathBuf,
    /// Serve Firecracker's API on this socket (to resume, snapshot again, ...).
    #[arg(long)]
    pub api_sock: Option<PathBuf>,
    /// Run at once (without it the VM waits, paused, for `PATCH /vm` on the API).
    #[arg(long)]
    pub resume: bool,
    /// Log dirty pages (for diff snapshots of the restored VM).
    #[arg(long)]
    pub track_dirty_pages: bool,
    /// Back disk number N (0 = the first) with another image of the same size, e.g. a
    /// copy for a clone: `--disk 0=clone1.img` (repeatable).
    #[arg(long = "disk", value_name = "N=PATH", value_parser = parse_disk_override)]
    pub disks: Vec<(usize, PathBuf)>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "warn")]
    pub log_level: log::LevelFilter,
    /// Write timings as JSON to this file when the VM ends.
    #[arg(long)]
    pub timings: Option<PathBuf>,
}

type BuildReply = SyncSender<Result<VmHandle, String>>;

/// What the API asks the main thread to build.
enum Build {
    /// The machine configuration changed: prepare a VM with this much memory.
    Prepare {
        size: u64,
        track: bool,
    },
    Start(Box<VmConfig>),
    Restore(Box<VmSnapshot>, RestoreOptions),
}

struct BuildRequest(Build, Option<BuildReply>);

/// The API side of a process: the socket, the controller, the main thread's state.
struct Session {
    main: MainThread,
    server: Option<Server>,
    signals: OwnedFd,
    builds: Receiver<BuildRequest>,
    wake: EventFd,
    confine: Arc<Confinement>,
    metrics_anyway: bool,
}

/// Runs Firecracker's process interface; returns the process status.
pub fn run(args: &FcArgs, timings: Option<&Path>, main_entry: u64) -> ExitCode {
    if args.seccomp_filter.is_some() {
        return fail(&"--seccomp-filter is not supported: Kiln installs its own filter on each thread; leave the flag out (or pass --no-seccomp)");
    }
    logger::init(
        args.level.unwrap_or(log::LevelFilter::Warn),
        args.boot_timer,
        &args.id,
    );
    let settings = logger::Settings {
        path: args.log_path.as_ref().map(|p| p.display().to_string()),
        show_level: Some(args.show_level),
        show_origin: Some(args.show_log_origin),
        module: args.module.clone(),
        level: None,
    };
    if let Err(e) = logger::configure(&settings) {
        return fail(&e);
    }
    let resources = match args.config_file.as_deref().map(read_config).transpose() {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let mut session = match Session::new(args, timings, main_entry) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    // --config-file: the VM is built before the API serves, as Firecracker boots it.
    let built = match resources {
        Some(r) => match session.main.build_from_file(r) {
            Ok(vm) => Some(vm),
            Err(e) => return fail(&e),
        },
        None => None,
    };
    session.metrics_anyway = !args.no_api;
    session.run(built)
}

/// `kiln run … --api-sock PATH`: the VM from the command line, with the API serving it.
pub fn run_with_api(
    cfg: &VmConfig,
    sock: &Path,
    seccomp: SeccompLevel,
    main_entry: u64,
    timings: Option<&Path>,
) -> ExitCode {
    let args = fc_args_for(sock, seccomp);
    let mut session = match Session::new(&args, timings, main_entry) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let prepared = session.main.prepare();
    let built = match session.main.build(cfg, prepared) {
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    util::sync::lock(&session.main.controller).adopt_config(cfg, built.0.handle());
    session.metrics_anyway = true;
    session.run(Some(built))
}

/// `kiln restore`: a VM from a snapshot, with the API serving it if asked.
pub fn restore(args: &RestoreArgs, main_entry: u64) -> ExitCode {
    if args.api_sock.is_none() && !args.resume {
        return fail(&"without --api-sock nothing could resume the restored VM: add --resume, or --api-sock PATH to resume it with PATCH /vm");
    }
    logger::init(args.log_level, false, fc_cli_default_id());
    let mut snapshot = match VmSnapshot::read(&args.snapshot) {
        Ok(s) => s,
        Err(e) => {
            return fail(&format!(
                "cannot load snapshot {}: {e}",
                args.snapshot.display()
            ))
        }
    };
    for (n, path) in &args.disks {
        match snapshot.config.disks.get_mut(*n) {
            Some(d) => d.path = path.clone(),
            None => {
                return fail(&format!(
                    "--disk {n}={}: the snapshot has {} disk(s), numbered from 0",
                    path.display(),
                    snapshot.config.disks.len()
                ))
            }
        }
    }
    let mut fc = fc_args_for(
        args.api_sock.as_deref().unwrap_or(Path::new("")),
        SeccompLevel::On,
    );
    fc.no_api = args.api_sock.is_none();
    let mut session = match Session::new(&fc, args.timings.as_deref(), main_entry) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let opts = RestoreOptions {
        mem_file: args.mem.clone(),
        track_dirty_pages: args.track_dirty_pages,
        resume: args.resume,
    };
    let prepared = session.main.prepare();
    let built = match session.main.restore(&snapshot, &opts, prepared) {
        Ok(b) => b,
        Err(e) => {
            return fail(&format!(
                "cannot restore snapshot {}: {e}",
                args.snapshot.display()
            ))
        }
    };
    util::sync::lock(&session.main.controller)
        .adopt_snapshot(snapshot.api.clone(), built.0.handle());
    session.metrics_anyway = !fc.no_api;
    session.run(Some(built))
}

fn parse_disk_override(s: &str) -> Result<(usize, PathBuf), String> {
    let (n, path) = s.split_once('=').ok_or("use N=PATH, e.g. 0=clone.img")?;
    let n = n
        .parse()
        .map_err(|_| format!("'{n}' is not a disk number: use N=PATH, e.g. 0=clone.img"))?;
    if path.is_empty() {
        return Err("missing path: use N=PATH, e.g. 0=clone.img".into());
    }
    Ok((n, PathBuf::from(path)))
}

fn fc_cli_default_id() -> &'static str {
    crate::fc_cli::DEFAULT_ID
}

/// Firecracker flags for a session started by another Kiln command.
fn fc_args_for(sock: &Path, seccomp: SeccompLevel) -> FcArgs {
    use clap::Parser;
    let mut fc = crate::fc_cli::FirecrackerCli::parse_from(["firecracker"]).args;
    fc.api_sock = sock.to_path_buf();
    fc.no_seccomp = seccomp == SeccompLevel::Off;
    fc
}

impl Session {
    fn new(args: &FcArgs, timings: Option<&Path>, main_entry: u64) -> Result<Self, String> {
        let seccomp = match args.no_seccomp {
            true => SeccompLevel::Off,
            false => SeccompLevel::On,
        };
        // Blocked before any thread starts, so every thread inherits the mask.
        let signals = event_loop::block_stop_signals().map_err(|e| e.to_string())?;
        let server = match args.no_api {
            true => None,
            false => Some(
                Server::bind(&args.api_sock)
                    .map_err(|e| e.to_string())?
                    .with_max_payload(args.http_api_max_payload_size),
            ),
        };
        let (build_tx, builds) = mpsc::channel::<BuildRequest>();
        let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|e| format!("creating an eventfd: {e}"))?;
        let controller = build_controller(args, build_tx, &wake)?;
        let confine = Arc::new(Confinement::new(seccomp, true).map_err(|e| e.to_string())?);
        let main = MainThread {
            controller: Arc::new(Mutex::new(controller)),
            opts: run_options(seccomp, main_entry),
            timings: timings.map(Path::to_path_buf),
            confine: confine.clone(),
        };
        Ok(Self {
            main,
            server,
            signals,
            builds,
            wake,
            confine,
            metrics_anyway: false,
        })
    }

    /// Starts the API and metrics threads, then runs `built` or waits for the API to
    /// start or load a VM; cleans up and returns the exit status.
    fn run(mut self, built: Option<(Vm, RunEnd)>) -> ExitCode {
        let memory = util::sync::lock(&self.main.controller).memory_config();
        let api_thread = match self.server.take() {
            Some(s) => match spawn_api(s, self.main.controller.clone(), self.confine.clone()) {
                Ok(t) => Some(t),
                Err(e) => return fail(&format!("starting the API thread: {e}")),
            },
            None => None,
        };
        // Without the API, metrics can only come from the command line or config file.
        let wanted = self.metrics_anyway || util::sync::lock(&self.main.controller).has_metrics();
        let ticker = wanted
            .then(|| MetricsTicker::spawn(self.main.controller.clone(), self.confine.clone()));
        let code = match built {
            Some(vm) => self.main.run_vm(vm),
            None => self
                .main
                .serve(&self.builds, &self.wake, &self.signals, memory),
        };
        drop(api_thread); // stops the server; its thread removes the socket
        drop(ticker);
        util::sync::lock(&self.main.controller).flush_metrics();
        code
    }
}

fn read_config(path: &Path) -> Result<VmResources, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    VmResources::from_json(&text).map_err(|e| {
        format!(
            "config file {} is not a valid Firecracker configuration: {e}",
            path.display()
        )
    })
}

fn run_options(seccomp: SeccompLevel, main_entry: u64) -> RunOptions {
    RunOptions {
        handle_signals: true,
        process_start_ns: crate::process_start(main_entry),
        seccomp,
        drop_capabilities: true,
    }
}

/// Sends `what` to the main thread and waits for its answer.
fn ask_main(tx: &Sender<BuildRequest>, wake: &EventFd, what: Build) -> Result<VmHandle, String> {
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    tx.send(BuildRequest(what, Some(reply_tx)))
        .map_err(|_| "the VMM is shutting down".to_string())?;
    let _ = wake.write(1);
    reply_rx
        .recv()
        .map_err(|_| "the VMM is shutting down".to_string())?
}

fn build_controller(
    args: &FcArgs,
    build_tx: Sender<BuildRequest>,
    wake: &EventFd,
) -> Result<Controller, String> {
    let clone = || {
        wake.try_clone()
            .map_err(|e| format!("cloning an eventfd: {e}"))
    };
    let (wake1, wake2) = (clone()?, clone()?);
    let tx2 = build_tx.clone();
    let (tx3, wake3) = (build_tx.clone(), clone()?);
    let start = move |cfg: VmConfig| ask_main(&build_tx, &wake1, Build::Start(Box::new(cfg)));
    let memory = move |size: u64, track: bool| {
        if tx3
            .send(BuildRequest(Build::Prepare { size, track }, None))
            .is_ok()
        {
            let _ = wake3.write(1);
        }
    };
    let restore = move |s: VmSnapshot, o: RestoreOptions| {
        ask_main(&tx2, &wake2, Build::Restore(Box::new(s), o))
    };
    let logger = |l: &api::model::Logger| {
        logger::configure(&logger::Settings {
            path: l.log_path.clone(),
            level: l.level.map(Into::into),
            show_level: l.show_level,
            show_origin: l.show_log_origin,
            module: l.module.clone(),
        })
    };
    let hooks = Hooks {
        start: Box::new(start),
        logger: Box::new(logger),
        restore: Box::new(restore),
        memory: Box::new(memory),
    };
    let mut c = Controller::new(args.id.clone(), args.boot_timer, hooks);
    if let Some(p) = &args.metrics_path {
        c.set_metrics_path(&p.display().to_string())?;
    }
    Ok(c)
}

fn spawn_api(
    server: Server,
    controller: Arc<Mutex<Controller>>,
    confine: Arc<Confinement>,
) -> std::io::Result<http::ApiThread> {
    let handler = move |req: http::Request| {
        let method = match &req.method {
            http::Method::Get => "GET",
            http::Method::Put => "PUT",
            http::Method::Patch => "PATCH",
            http::Method::Other(m) => m.as_str(),
        };
        let reply = util::sync::lock(&controller).handle(method, &req.path, &req.body);
        to_response(&reply)
    };
    let setup = move || {
        confine::set_no_new_privs()
            .and_then(|()| confine.enter(ThreadKind::Api))
            .map_err(std::io::Error::other)
    };
    http::spawn(server, Box::new(handler), Box::new(setup))
}

fn to_response(reply: &Reply) -> Response {
    match reply {
        Reply::NoContent => Response::no_content(),
        Reply::Json(body) => Response {
            status: 200,
            body: Some(body.clone().into_bytes()),
        },
        Reply::Fault(msg) => Response::fault(400, msg),
    }
}
