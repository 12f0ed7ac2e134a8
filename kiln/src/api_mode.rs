//! `kiln api` and the binary run as `firecracker`: Firecracker's process interface.
//!
//! Threads: the main thread owns the VM. It binds the API socket, builds the VM from
//! `--config-file` if given, starts the API thread (`kiln-api`, which owns the
//! [`Controller`]) and a metrics thread, then waits for `InstanceStart` (or a stop
//! signal), builds the VM the controller asks for, hands back its [`VmHandle`] and runs
//! it. When the VM ends the API thread is stopped, the socket removed, and Kiln exits
//! with the VM's status, as Firecracker does.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};

use api::http::{self, Response, Server};
use api::model::VmResources;
use api::{Controller, Hooks, Reply};
use vmm::config::VmConfig;
use vmm::confine::{self, Confinement};
use vmm::event_loop;
use vmm::seccomp::{SeccompLevel, ThreadKind};
use vmm::{Prepared, RunOptions, Vm, VmHandle};
use vmm_sys_util::eventfd::EventFd;

use crate::fc_cli::FcArgs;
use crate::{fail, logger, RunEnd};

/// `kiln api` flags besides Firecracker's.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// Firecracker's flags.
    #[command(flatten)]
    pub fc: FcArgs,
    /// Write start-up timings as JSON to this file when the VM ends.
    #[arg(long)]
    pub timings: Option<std::path::PathBuf>,
}

type StartReply = SyncSender<Result<VmHandle, String>>;

/// What the API thread asks of the main thread.
struct StartRequest(VmConfig, StartReply);

/// Runs Firecracker's process interface; returns the process status.
pub fn run(args: &FcArgs, timings: Option<&std::path::Path>, main_entry: u64) -> ExitCode {
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
    let seccomp = match args.no_seccomp {
        true => SeccompLevel::Off,
        false => SeccompLevel::On,
    };
    // Blocked before any thread starts, so every thread inherits the mask.
    let signals = match event_loop::block_stop_signals() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let resources = match args.config_file.as_deref().map(read_config).transpose() {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let server = match args.no_api {
        true => None,
        false => match Server::bind(&args.api_sock) {
            Ok(s) => Some(s.with_max_payload(args.http_api_max_payload_size)),
            Err(e) => return fail(&e),
        },
    };
    let (start_tx, start_rx) = mpsc::sync_channel::<StartRequest>(1);
    let wake = match EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) {
        Ok(e) => e,
        Err(e) => return fail(&format!("creating an eventfd: {e}")),
    };
    let controller = match build_controller(args, start_tx, &wake) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let confine = match Confinement::new(seccomp, true) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(&e),
    };
    let mut main = MainThread {
        controller: Arc::new(Mutex::new(controller)),
        opts: run_options(seccomp, main_entry),
        timings: timings.map(std::path::Path::to_path_buf),
        confine: confine.clone(),
    };
    // --config-file: the VM is built before the API serves, as Firecracker boots it.
    let built = match resources {
        Some(r) => match main.build_from_file(r) {
            Ok(vm) => Some(vm),
            Err(e) => return fail(&e),
        },
        None => None,
    };
    let api_thread = match server {
        Some(s) => match spawn_api(s, main.controller.clone(), confine.clone()) {
            Ok(t) => Some(t),
            Err(e) => return fail(&format!("starting the API thread: {e}")),
        },
        None => None,
    };
    // Without the API, metrics can only come from the command line or the config file.
    let ticker = match args.no_api && !util::sync::lock(&main.controller).has_metrics() {
        true => None,
        false => Some(MetricsTicker::spawn(main.controller.clone(), confine)),
    };
    let code = match built {
        Some(vm) => main.run_vm(vm),
        None => main.serve(&start_rx, &wake, &signals),
    };
    drop(api_thread); // stops the server and removes the socket
    drop(ticker);
    util::sync::lock(&main.controller).flush_metrics();
    code
}

fn read_config(path: &std::path::Path) -> Result<VmResources, String> {
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

fn build_controller(
    args: &FcArgs,
    start_tx: SyncSender<StartRequest>,
    wake: &EventFd,
) -> Result<Controller, String> {
    let wake = wake
        .try_clone()
        .map_err(|e| format!("cloning an eventfd: {e}"))?;
    let start = move |cfg: VmConfig| {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        start_tx
            .send(StartRequest(cfg, reply_tx))
            .map_err(|_| "the VMM is shutting down".to_string())?;
        let _ = wake.write(1);
        reply_rx
            .recv()
            .map_err(|_| "the VMM is shutting down".to_string())?
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

struct MainThread {
    controller: Arc<Mutex<Controller>>,
    opts: RunOptions,
    timings: Option<std::path::PathBuf>,
    confine: Arc<Confinement>,
}

impl MainThread {
    fn build_from_file(&mut self, resources: VmResources) -> Result<(Vm, RunEnd), String> {
        let cfg = util::sync::lock(&self.controller).configure_from(resources)?;
        let prepared = self.prepare();
        let (vm, end) = self.build(&cfg, prepared)?;
        util::sync::lock(&self.controller).adopt(vm.handle());
        Ok((vm, end))
    }

    /// The KVM VM and what else does not depend on the configuration, made while the
    /// API waits for `InstanceStart` (so the start pays only for the rest).
    fn prepare(&self) -> Option<Prepared> {
        let setup = confine::set_no_new_privs().map_err(vmm::Error::from);
        match setup.and_then(|()| Prepared::with_confinement(self.confine.clone())) {
            Ok(p) => Some(p),
            Err(e) => {
                log::debug!("cannot prepare the VM ahead of InstanceStart: {e}");
                None
            }
        }
    }

    fn build(
        &mut self,
        cfg: &VmConfig,
        prepared: Option<Prepared>,
    ) -> Result<(Vm, RunEnd), String> {
        let mut end = RunEnd::prepare(self.timings.as_deref()).map_err(|e| e.to_string())?;
        let serial = match end.serial_io(cfg) {
            Ok(s) => s,
            Err(e) => {
                end.discard();
                return Err(e.to_string());
            }
        };
        let vm = match prepared {
            Some(p) => Vm::from_prepared(p, cfg, serial, self.opts),
            None => Vm::new(cfg, serial, self.opts),
        };
        match vm {
            Ok(vm) => Ok((vm, end)),
            Err(e) => {
                // Vm::new unblocked the stop signals on failure: the API keeps serving.
                let _ = event_loop::block_stop_signals();
                end.discard();
                Err(e.to_string())
            }
        }
    }

    fn run_vm(&mut self, (vm, end): (Vm, RunEnd)) -> ExitCode {
        end.run(vm)
    }

    /// Waits for `InstanceStart` or a stop signal.
    fn serve(
        &mut self,
        starts: &Receiver<StartRequest>,
        wake: &EventFd,
        signals: &OwnedFd,
    ) -> ExitCode {
        let mut prepared = self.prepare();
        loop {
            match wait_readable(wake, signals) {
                Woken::Signal(sig) => {
                    log::info!("received signal {sig} before the VM started, exiting");
                    return ExitCode::from((128 + sig) as u8);
                }
                Woken::Error(e) => return fail(&format!("waiting for the API: {e}")),
                Woken::Start => {}
            }
            while let Ok(StartRequest(cfg, reply)) = starts.try_recv() {
                let p = prepared.take().or_else(|| self.prepare());
                match self.build(&cfg, p) {
                    Ok((vm, end)) => {
                        let _ = reply.send(Ok(vm.handle()));
                        return self.run_vm((vm, end));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }
}

enum Woken {
    Start,
    Signal(i32),
    Error(std::io::Error),
}

fn wait_readable(wake: &EventFd, signals: &OwnedFd) -> Woken {
    let mut fds = [
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: signals.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Woken::Error(e);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            if let Some(sig) = event_loop::read_signal(signals) {
                return Woken::Signal(sig);
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let _ = wake.read();
            return Woken::Start;
        }
    }
}

/// Writes a metrics line every [`api::metrics::PERIOD`] while the process runs.
struct MetricsTicker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl MetricsTicker {
    fn spawn(controller: Arc<Mutex<Controller>>, confine: Arc<Confinement>) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = stop.clone();
        let handle = std::thread::Builder::new()
            .name("kiln-metrics".into())
            .spawn(move || {
                if let Err(e) =
                    confine::set_no_new_privs().and_then(|()| confine.enter(ThreadKind::Api))
                {
                    log::error!("metrics thread: {e}; no periodic metrics");
                    return;
                }
                let (lock, cv) = &*s;
                let mut stopped = util::sync::lock(lock);
                while !*stopped {
                    let (g, timeout) = match cv.wait_timeout(stopped, api::metrics::PERIOD) {
                        Ok(r) => r,
                        Err(p) => p.into_inner(),
                    };
                    stopped = g;
                    if timeout.timed_out() && !*stopped {
                        util::sync::lock(&controller).flush_metrics();
                    }
                }
            })
            .map_err(|e| log::warn!("cannot start the metrics thread: {e}"))
            .ok();
        Self { stop, handle }
    }
}

impl Drop for MetricsTicker {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *util::sync::lock(lock) = true;
        cv.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
