//! Applies API requests to the VM: before `InstanceStart` they edit the pre-boot
//! [`VmResources`]; `InstanceStart` hands Kiln's [`VmConfig`] to the VM's owner (the
//! process's main thread) and gets back a [`VmHandle`]; afterwards requests act through
//! that handle. Firecracker's pre-/post-boot rules and fault messages.

use serde::Serialize;
use vmm::config::VmConfig;
use vmm::snapshot::{RestoreOptions, VmSnapshot};
use vmm::VmHandle;

use crate::metrics::{ApiCounters, MetricsSink};
use crate::model::{
    ActionType, Drive, Fault, InstanceInfo, Logger, NetworkInterface, PartialDrive,
    PartialNetworkInterface, Version, VmResources, VmStateName, FIRECRACKER_API_VERSION,
};
use crate::router::{self, ApiRequest};

const BEFORE_START: &str = "The requested operation is not supported before starting the microVM.";
const AFTER_START: &str = "The requested operation is not supported after starting the microVM.";

/// An answer: 204, 200 with a JSON body, or 400 with a fault message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// 204 No Content.
    NoContent,
    /// 200 with this JSON body.
    Json(String),
    /// 400 with `{"fault_message": ...}`.
    Fault(String),
}

impl Reply {
    /// The HTTP status code.
    pub fn status(&self) -> u16 {
        match self {
            Reply::NoContent => 204,
            Reply::Json(_) => 200,
            Reply::Fault(_) => 400,
        }
    }

    /// The body, if any.
    pub fn body(&self) -> Option<String> {
        match self {
            Reply::NoContent => None,
            Reply::Json(s) => Some(s.clone()),
            Reply::Fault(m) => Some(json(&Fault {
                fault_message: m.clone(),
            })),
        }
    }
}

fn json<T: Serialize>(v: &T) -> String {
    // Kiln's own response types always serialize.
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// Builds and starts the VM (on the thread that owns it): its handle or why not.
pub type StartHook = Box<dyn FnMut(VmConfig) -> Result<VmHandle, String> + Send>;
/// Points the log at a file and sets its level and format.
pub type LoggerHook = Box<dyn FnMut(&Logger) -> Result<(), String> + Send>;
/// Builds a VM from a snapshot (on the thread that owns VMs): its handle or why not.
pub type RestoreHook =
    Box<dyn FnMut(VmSnapshot, RestoreOptions) -> Result<VmHandle, String> + Send>;

/// Told the guest memory size (bytes) and dirty-page tracking whenever the machine
/// configuration changes, so the VM's owner can prepare memory before `InstanceStart`.
pub type MemoryHook = Box<dyn FnMut(u64, bool) + Send>;

/// What the controller needs from the process it runs in.
pub struct Hooks {
    /// See [`StartHook`].
    pub start: StartHook,
    /// See [`LoggerHook`].
    pub logger: LoggerHook,
    /// See [`RestoreHook`].
    pub restore: RestoreHook,
    /// See [`MemoryHook`].
    pub memory: MemoryHook,
}

/// The API's state: the instance id, the pre-boot resources, then the running VM.
pub struct Controller {
    id: String,
    boot_timer: bool,
    resources: VmResources,
    vm: Option<Running>,
    hooks: Hooks,
    counters: ApiCounters,
    metrics: Option<MetricsSink>,
}

struct Running {
    handle: VmHandle,
    drive_ids: Vec<String>,
}

impl Controller {
    /// A controller for instance `id` (`--boot-timer` passed on to the VM).
    pub fn new(id: String, boot_timer: bool, hooks: Hooks) -> Self {
        Self {
            id,
            boot_timer,
            resources: VmResources::default(),
            vm: None,
            hooks,
            counters: ApiCounters::default(),
            metrics: None,
        }
    }

    /// Handles one HTTP request.
    pub fn handle(&mut self, method: &str, path: &str, body: &[u8]) -> Reply {
        let reply = match router::route(method, path, body) {
            Ok(req) => {
                let group = req_group(&req);
                let reply = self.apply(req);
                if let Some((verb, name)) = group {
                    self.counters
                        .count(verb, name, matches!(reply, Reply::Fault(_)));
                }
                reply
            }
            Err(msg) => Reply::Fault(msg),
        };
        if let Reply::Fault(m) = &reply {
            log::debug!("API {method} {path}: 400 {m}");
        }
        reply
    }

    /// Takes the pre-boot resources of a Firecracker config file (`--config-file`):
    /// checks them as the API would, applies the logger and metrics settings and
    /// returns Kiln's configuration to build the VM from; then call [`Self::adopt`].
    pub fn configure_from(&mut self, resources: VmResources) -> Result<VmConfig, String> {
        if let Some(l) = &resources.logger {
            (self.hooks.logger)(l)?;
        }
        if let Some(m) = &resources.metrics {
            self.metrics = Some(MetricsSink::open(&m.metrics_path)?);
        }
        resources.machine_config.check()?;
        if let Some(b) = &resources.boot_source {
            check_boot_files(b)?;
        }
        let mut checked = VmResources {
            boot_source: resources.boot_source.clone(),
            machine_config: resources.machine_config.clone(),
            logger: resources.logger.clone(),
            metrics: resources.metrics.clone(),
            ..VmResources::default()
        };
        for d in resources.drives {
            check_file(&d)?;
            checked.put_drive(d)?;
        }
        for n in resources.network_interfaces {
            checked.put_network_interface(n)?;
        }
        let cfg = checked.to_vm_config(self.boot_timer)?;
        self.resources = checked;
        Ok(cfg)
    }

    /// Records the VM built from [`Self::configure_from`]'s configuration as running.
    pub fn adopt(&mut self, handle: VmHandle) {
        let drive_ids = self.drive_ids();
        self.vm = Some(Running { handle, drive_ids });
    }

    /// Records a VM built from Kiln's own configuration (`kiln run --api-sock`) as
    /// running; the API describes it in Firecracker's layout (drives `disk0`, …,
    /// interfaces `net0`, …).
    pub fn adopt_config(&mut self, cfg: &VmConfig, handle: VmHandle) {
        self.resources = VmResources::from_vm_config(cfg);
        self.adopt(handle);
    }

    /// Records a VM restored from a snapshot (`kiln restore`) as running, with the
    /// API's view of its configuration saved in the snapshot.
    pub fn adopt_snapshot(&mut self, api: Option<serde_json::Value>, handle: VmHandle) {
        self.resources = api
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        self.adopt(handle);
    }

    /// Opens the metrics file given on the command line (`--metrics-path`).
    pub fn set_metrics_path(&mut self, path: &str) -> Result<(), String> {
        self.metrics = Some(MetricsSink::open(path)?);
        self.resources.metrics = Some(crate::model::Metrics {
            metrics_path: path.to_string(),
        });
        Ok(())
    }

    fn drive_ids(&self) -> Vec<String> {
        self.resources
            .drives_in_guest_order()
            .iter()
            .map(|d| d.drive_id.clone())
            .collect()
    }

    /// Guest memory (bytes) and dirty-page tracking of the current machine configuration.
    pub fn memory_config(&self) -> (u64, bool) {
        let m = &self.resources.machine_config;
        (m.mem_size_mib << 20, m.track_dirty_pages)
    }

    fn set_machine_config(&mut self, m: crate::model::MachineConfig) {
        let changed = (m.mem_size_mib, m.track_dirty_pages)
            != (
                self.resources.machine_config.mem_size_mib,
                self.resources.machine_config.track_dirty_pages,
            );
        self.resources.machine_config = m;
        if changed {
            let (size, track) = self.memory_config();
            (self.hooks.memory)(size, track);
        }
    }

    /// Whether metrics are configured.
    pub fn has_metrics(&self) -> bool {
        self.metrics.is_some()
    }

    /// Writes a metrics line if metrics are configured (the periodic flush).
    pub fn flush_metrics(&mut self) {
        if let Some(m) = self.metrics.as_mut() {
            let vm = self
                .vm
                .as_ref()
                .map(|r| (r.handle.metrics(), r.drive_ids.clone()));
            let ifaces: Vec<String> = self
                .resources
                .network_interfaces
                .iter()
                .map(|n| n.iface_id.clone())
                .collect();
            m.write(
                &self.counters,
                vm.as_ref()
                    .map(|(v, d)| (v, d.as_slice(), ifaces.as_slice())),
            );
        }
    }

    fn started(&self) -> bool {
        self.vm.is_some()
    }

    fn pre_boot(&self) -> Result<(), Reply> {
        match self.started() {
            true => Err(Reply::Fault(AFTER_START.into())),
            false => Ok(()),
        }
    }

    fn running(&self) -> Result<&Running, Reply> {
        self.vm
            .as_ref()
            .ok_or_else(|| Reply::Fault(BEFORE_START.into()))
    }

    fn apply(&mut self, req: ApiRequest) -> Reply {
        match self.dispatch(req) {
            Ok(r) | Err(r) => r,
        }
    }

    fn dispatch(&mut self, req: ApiRequest) -> Result<Reply, Reply> {
        let fault = |m: String| Reply::Fault(m);
        Ok(match req {
            ApiRequest::GetInstanceInfo => Reply::Json(json(&InstanceInfo {
                id: self.id.clone(),
                state: self.state_name(),
                vmm_version: env!("CARGO_PKG_VERSION"),
                app_name: "Kiln",
            })),
            ApiRequest::GetVersion => Reply::Json(json(&Version {
                firecracker_version: FIRECRACKER_API_VERSION,
            })),
            ApiRequest::GetMachineConfig => Reply::Json(json(&self.resources.machine_config)),
            ApiRequest::GetVmConfig => Reply::Json(json(&self.resources)),
            ApiRequest::PutMachineConfig(m) => {
                self.pre_boot()?;
                m.check().map_err(fault)?;
                self.set_machine_config(m);
                Reply::NoContent
            }
            ApiRequest::PatchMachineConfig(p) => {
                self.pre_boot()?;
                let m = self.resources.machine_config.patched(&p);
                m.check().map_err(fault)?;
                self.set_machine_config(m);
                Reply::NoContent
            }
            ApiRequest::PutBootSource(b) => {
                self.pre_boot()?;
                check_boot_files(&b).map_err(fault)?;
                self.resources.boot_source = Some(b);
                Reply::NoContent
            }
            ApiRequest::PutDrive(d) => {
                self.pre_boot()?;
                check_file(&d).map_err(fault)?;
                self.resources.put_drive(d).map_err(fault)?;
                Reply::NoContent
            }
            ApiRequest::PatchDrive(p) => self.patch_drive(p)?,
            ApiRequest::PutNetworkInterface(n) => {
                self.pre_boot()?;
                self.resources.put_network_interface(n).map_err(fault)?;
                Reply::NoContent
            }
            ApiRequest::PatchNetworkInterface(p) => self.patch_net(p)?,
            ApiRequest::PutLogger(l) => {
                self.pre_boot()?;
                (self.hooks.logger)(&l).map_err(fault)?;
                self.resources.logger = Some(l);
                Reply::NoContent
            }
            ApiRequest::PutMetrics(m) => {
                self.pre_boot()?;
                if self.metrics.is_some() {
                    return Err(fault("Reinitialization of metrics not allowed.".into()));
                }
                self.metrics = Some(MetricsSink::open(&m.metrics_path).map_err(fault)?);
                self.resources.metrics = Some(m);
                Reply::NoContent
            }
            ApiRequest::Action(a) => self.action(a.action_type)?,
            ApiRequest::PutEntropy(e) => {
                self.pre_boot()?;
                self.resources.entropy = Some(e);
                Reply::NoContent
            }
            ApiRequest::PutVsock(v) => {
                self.pre_boot()?;
                let cfg = vmm::config::VsockConfig {
                    cid: v.guest_cid,
                    uds_path: v.uds_path.clone().into(),
                };
                cfg.check().map_err(|e| fault(e.to_string()))?;
                self.resources.vsock = Some(v);
                Reply::NoContent
            }
            ApiRequest::CreateSnapshot(p) => self.create_snapshot(&p)?,
            ApiRequest::LoadSnapshot(p) => self.load_snapshot(&p)?,
            ApiRequest::PatchVm(v) => {
                let vm = self.running()?;
                match v.state {
                    VmStateName::Paused => vm.handle.pause().map_err(|e| fault(e.to_string()))?,
                    VmStateName::Resumed => vm.handle.resume(),
                }
                Reply::NoContent
            }
        })
    }

    fn state_name(&self) -> &'static str {
        match &self.vm {
            None => "Not started",
            Some(r) if r.handle.is_paused() => "Paused",
            Some(_) => "Running",
        }
    }

    fn action(&mut self, action: ActionType) -> Result<Reply, Reply> {
        match action {
            ActionType::InstanceStart => {
                self.pre_boot()?;
                self.start().map_err(Reply::Fault)?;
            }
            ActionType::SendCtrlAltDel => {
                if !self.running()?.handle.send_ctrl_alt_del() {
                    return Err(Reply::Fault(
                        "The guest has not read the keys sent before: try again later.".into(),
                    ));
                }
            }
            ActionType::FlushMetrics => {
                if self.metrics.is_none() {
                    return Err(Reply::Fault(
                        "The metrics system is not initialized: PUT /metrics first.".into(),
                    ));
                }
                self.flush_metrics();
            }
        }
        Ok(Reply::NoContent)
    }

    fn start(&mut self) -> Result<(), String> {
        let cfg = self.resources.to_vm_config(self.boot_timer)?;
        let drive_ids = self.drive_ids();
        let handle = (self.hooks.start)(cfg).map_err(|e| format!("Start microvm error: {e}"))?;
        self.vm = Some(Running { handle, drive_ids });
        Ok(())
    }

    fn patch_drive(&mut self, p: PartialDrive) -> Result<Reply, Reply> {
        let vm = self.running()?;
        let fault = |m: String| Reply::Fault(m);
        let index = vm
            .drive_ids
            .iter()
            .position(|id| *id == p.drive_id)
            .ok_or_else(|| {
                fault(format!(
                    "Drive {} does not exist: PUT it before starting.",
                    p.drive_id
                ))
            })?;
        let handle = vm.handle.clone();
        let drive = self
            .resources
            .drives
            .iter_mut()
            .find(|d| d.drive_id == p.drive_id)
            .ok_or_else(|| fault(format!("Drive {} does not exist.", p.drive_id)))?;
        if let Some(path) = &p.path_on_host {
            handle
                .replace_drive(index, std::path::Path::new(path))
                .map_err(|e| fault(format!("Unable to patch the block device: {e}")))?;
            drive.path_on_host = path.clone();
        }
        if let Some(rl) = &p.rate_limiter {
            let merged = merge_limits(drive.rate_limiter, rl);
            handle
                .update_drive_rate_limiter(index, &merged)
                .map_err(|e| fault(format!("Unable to patch the block device: {e}")))?;
            drive.rate_limiter = Some(merged);
        }
        Ok(Reply::NoContent)
    }

    fn patch_net(&mut self, p: PartialNetworkInterface) -> Result<Reply, Reply> {
        let handle = self.running()?.handle.clone();
        let fault = |m: String| Reply::Fault(m);
        let index = self
            .resources
            .network_interfaces
            .iter()
            .position(|n| n.iface_id == p.iface_id)
            .ok_or_else(|| fault(format!("Network interface {} does not exist.", p.iface_id)))?;
        let iface: &mut NetworkInterface = &mut self.resources.network_interfaces[index];
        let rx = p
            .rx_rate_limiter
            .map(|r| merge_limits(iface.rx_rate_limiter, &r))
            .or(iface.rx_rate_limiter);
        let tx = p
            .tx_rate_limiter
            .map(|r| merge_limits(iface.tx_rate_limiter, &r))
            .or(iface.tx_rate_limiter);
        handle
            .update_net_rate_limiters(index, &rx.unwrap_or_default(), &tx.unwrap_or_default())
            .map_err(|e| fault(format!("Unable to patch the network interface: {e}")))?;
        iface.rx_rate_limiter = rx;
        iface.tx_rate_limiter = tx;
        Ok(Reply::NoContent)
    }
}

/// A PATCH's rate limiter: buckets it names replace the current ones, others stay.
fn merge_limits(
    current: Option<devices::rate_limiter::RateLimiterConfig>,
    patch: &devices::rate_limiter::RateLimiterConfig,
) -> devices::rate_limiter::RateLimiterConfig {
    let cur = current.unwrap_or_default();
    devices::rate_limiter::RateLimiterConfig {
        bandwidth: patch.bandwidth.or(cur.bandwidth),
        ops: patch.ops.or(cur.ops),
    }
}

/// The kernel and initrd must open when the boot source is set, as in Firecracker.
fn check_boot_files(b: &crate::model::BootSource) -> Result<(), String> {
    std::fs::File::open(&b.kernel_image_path)
        .map_err(|e| format!("The kernel file cannot be opened: {e}"))?;
    if let Some(initrd) = &b.initrd_path {
        std::fs::File::open(initrd).map_err(|e| {
            format!(
                "The initrd file cannot be opened due to invalid path or invalid permissions. {e}"
            )
        })?;
    }
    Ok(())
}

/// A drive's file must exist when it is added (Firecracker checks it then too).
fn check_file(d: &Drive) -> Result<(), String> {
    std::fs::metadata(&d.path_on_host).map(drop).map_err(|e| {
        format!(
            "Unable to add drive {}: cannot use {}: {e}.",
            d.drive_id, d.path_on_host
        )
    })
}

/// Which request counter a request goes to: (`get`/`put`/`patch`, resource).
fn req_group(req: &ApiRequest) -> Option<(&'static str, &'static str)> {
    Some(match req {
        ApiRequest::GetInstanceInfo => ("get", "instance_info"),
        ApiRequest::GetVersion => ("get", "vmm_version"),
        ApiRequest::GetMachineConfig => ("get", "machine_cfg"),
        ApiRequest::GetVmConfig => ("get", "vm_config"),
        ApiRequest::PutMachineConfig(_) => ("put", "machine_cfg"),
        ApiRequest::PatchMachineConfig(_) => ("patch", "machine_cfg"),
        ApiRequest::PutBootSource(_) => ("put", "boot_source"),
        ApiRequest::PutDrive(_) => ("put", "drive"),
        ApiRequest::PatchDrive(_) => ("patch", "drive"),
        ApiRequest::PutNetworkInterface(_) => ("put", "network"),
        ApiRequest::PatchNetworkInterface(_) => ("patch", "network"),
        ApiRequest::Action(_) => ("put", "actions"),
        ApiRequest::PatchVm(_) => ("patch", "vm"),
        ApiRequest::PutLogger(_) => ("put", "logger"),
        ApiRequest::PutMetrics(_) => ("put", "metrics"),
        ApiRequest::PutEntropy(_) => ("put", "entropy"),
        ApiRequest::PutVsock(_) => ("put", "vsock"),
        ApiRequest::CreateSnapshot(_) => ("put", "create_snapshot"),
        ApiRequest::LoadSnapshot(_) => ("put", "load_snapshot"),
    })
}

mod snapshots;

#[cfg(test)]
mod tests;
