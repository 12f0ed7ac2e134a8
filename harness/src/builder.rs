//! [`VmBuilder`]: what a test configures, and starting the VM (child or in-process).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vmm_sys_util::tempdir::TempDir;

use vmm::config::{
    BootProtocol, DiskConfig, MemSize, NetConfig, SerialConfig, VmConfig, VsockConfig,
};
use vmm::device_manager::SerialIo;
use vmm::vm::{RunOptions, Vm};

use crate::running::{Backend, RunningVm};
use crate::serial_log::SerialLog;
use crate::vsock::VsockSocket;
use crate::{io_err, HResult, HarnessError};

/// The vsock device's host socket in a VM's temp dir.
const VSOCK_SOCKET: &str = "vsock.sock";

/// Configures a VM for a test.
#[derive(Clone, Debug)]
pub struct VmBuilder {
    cfg: VmConfig,
    kiln: Option<PathBuf>,
    args: Vec<String>,
    api: bool,
    vsock: Option<u64>,
}

impl VmBuilder {
    /// A VM booting `kernel` with Kiln's defaults (1 vCPU, 128 MiB).
    pub fn new(kernel: impl AsRef<Path>) -> Self {
        let cfg = VmConfig {
            kernel: Some(kernel.as_ref().to_path_buf()),
            ..VmConfig::default()
        };
        Self {
            cfg,
            kiln: None,
            args: Vec::new(),
            api: false,
            vsock: None,
        }
    }

    /// Initial ramdisk.
    pub fn initrd(mut self, path: impl AsRef<Path>) -> Self {
        self.cfg.initrd = Some(path.as_ref().to_path_buf());
        self
    }

    /// Kernel command line (replaces the default).
    pub fn cmdline(mut self, cmdline: impl Into<String>) -> Self {
        self.cfg.cmdline = cmdline.into();
        self
    }

    /// vCPU count.
    pub fn cpus(mut self, n: u32) -> Self {
        self.cfg.cpus = n;
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.cfg.memory = MemSize(mib << 20);
        self
    }

    /// Entry point choice for ELF kernels.
    pub fn boot_protocol(mut self, p: BootProtocol) -> Self {
        self.cfg.boot_protocol = p;
        self
    }

    /// Adds a virtio-blk disk.
    pub fn disk(mut self, disk: DiskConfig) -> Self {
        self.cfg.disks.push(disk);
        self
    }

    /// Adds a virtio-net interface.
    pub fn net(mut self, net: NetConfig) -> Self {
        self.cfg.nets.push(net);
        self
    }

    /// The `kiln` binary for [`VmBuilder::spawn`] (default: `$KILN_BIN`, else `kiln` on PATH).
    pub fn kiln_binary(mut self, path: impl AsRef<Path>) -> Self {
        self.kiln = Some(path.as_ref().to_path_buf());
        self
    }

    /// Log the pages the guest dirties, so that [`RunningVm::snapshot_diff`] works.
    pub fn track_dirty_pages(mut self, on: bool) -> Self {
        self.cfg.track_dirty_pages = on;
        self
    }

    /// Serve Firecracker's API on a socket in the VM's temp dir (`kiln run --api-sock`),
    /// for [`RunningVm::pause`], [`RunningVm::resume`], [`RunningVm::snapshot`] and
    /// [`RunningVm::api_call`]. Child processes only ([`VmBuilder::spawn`]).
    pub fn api(mut self, on: bool) -> Self {
        self.api = on;
        self
    }

    /// Adds a virtio-vsock device with guest CID `cid` (3 or more) whose host socket is
    /// created in the VM's temp dir (`kiln run --vsock cid=N,uds=<dir>/vsock.sock`), for
    /// [`RunningVm::vsock_connect`] and [`RunningVm::vsock_listen`].
    pub fn vsock(mut self, cid: u64) -> Self {
        self.vsock = Some(cid);
        self
    }

    /// Extra `kiln run` arguments (e.g. `--log-level debug`).
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// The configuration built so far.
    pub fn config(&self) -> &VmConfig {
        &self.cfg
    }

    /// Starts the VM as a child `kiln run` process, serial on its stdin/stdout.
    pub fn spawn(&self) -> HResult<RunningVm> {
        let dir = temp_dir().map_err(io_err("creating a temp dir"))?;
        let mut cfg = self.cfg.clone();
        cfg.serial = SerialConfig::Stdio;
        let cfg_path = dir.as_path().join("vm.json");
        let json = serde_json::to_string(&cfg).map_err(|e| HarnessError::Io {
            what: "writing the VM config".into(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&cfg_path, json).map_err(io_err("writing the VM config"))?;
        let args: Vec<OsString> = vec!["run".into(), "--config".into(), cfg_path.into()];
        let kiln = kiln_binary(self.kiln.as_deref());
        let mut extra = vec!["--boot-timer".to_string()];
        let uds = dir.as_path().join(VSOCK_SOCKET);
        if let Some(cid) = self.vsock {
            extra.extend(["--vsock".into(), format!("cid={cid},uds={}", uds.display())]);
        }
        extra.extend(self.args.iter().cloned());
        let mut vm = spawn_child(&kiln, args, &extra, dir, self.api)?;
        vm.vsock = self.vsock.map(|_| VsockSocket { uds, _dir: None });
        Ok(vm)
    }

    /// Runs the VM on a thread of this process (no child process; serial through pipes).
    pub fn start_in_process(&self) -> HResult<RunningVm> {
        let (out_r, out_w) = pipe().map_err(io_err("creating the serial pipe"))?;
        let (in_r, in_w) = pipe().map_err(io_err("creating the serial pipe"))?;
        let io = SerialIo {
            out: Box::new(out_w),
            input: Some(Box::new(in_r)),
            escape: false,
        };
        let mut cfg = self.cfg.clone();
        let vsock = match self.vsock {
            Some(cid) => {
                let dir = temp_dir().map_err(io_err("creating a temp dir"))?;
                let uds = dir.as_path().join(VSOCK_SOCKET);
                cfg.vsock = Some(VsockConfig {
                    cid,
                    uds_path: uds.clone(),
                });
                Some(VsockSocket {
                    uds,
                    _dir: Some(dir),
                })
            }
            None => None,
        };
        let vm = Vm::new(&cfg, io, RunOptions::default())?;
        let stop = vm.stop_handle();
        let times = vm.timestamps();
        let thread = std::thread::Builder::new()
            .name("kiln-vm".into())
            .spawn(move || vm.run())
            .map_err(io_err("spawning the VM thread"))?;
        let serial = SerialLog::new();
        let reader = serial.collect(out_r);
        // No separate log stream in process.
        let log = SerialLog::closed();
        Ok(RunningVm {
            serial,
            log,
            readers: vec![reader],
            api: None,
            kiln: None,
            base: None,
            vsock,
            backend: Backend::InProcess {
                thread: Some(thread),
                stop,
                input: Some(in_w),
                times,
            },
        })
    }
}

/// The `kiln` binary: `explicit`, else `$KILN_BIN`, else `kiln` on PATH.
pub(crate) fn kiln_binary(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("KILN_BIN").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("kiln"))
}

/// Starts `kiln <args> --timings <dir>/timings.json [--api-sock <dir>/api.sock] <extra>`
/// with the serial console on its stdin/stdout; `dir` lives as long as the VM.
pub(crate) fn spawn_child(
    kiln: &Path,
    mut args: Vec<OsString>,
    extra: &[String],
    dir: TempDir,
    api: bool,
) -> HResult<RunningVm> {
    let timings = dir.as_path().join("timings.json");
    args.push("--timings".into());
    args.push(timings.clone().into());
    let sock = api.then(|| dir.as_path().join("api.sock"));
    if let Some(s) = &sock {
        args.push("--api-sock".into());
        args.push(s.into());
    }
    args.extend(extra.iter().map(OsString::from));
    let mut child = Command::new(kiln)
        .args(&args)
        .env("KILN_START_NS", util::time::monotonic_ns().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err(format!("starting {}", kiln.display())))?;
    let serial = SerialLog::new();
    let out = child.stdout.take().map(|o| serial.collect(o));
    let log = SerialLog::new();
    let err = child.stderr.take().map(|e| log.collect(e));
    let stdin = child.stdin.take();
    Ok(RunningVm {
        serial,
        log,
        readers: out.into_iter().chain(err).collect(),
        api: sock,
        kiln: Some(kiln.to_path_buf()),
        base: None,
        vsock: None,
        backend: Backend::Child {
            child,
            stdin,
            timings,
            _dir: dir,
        },
    })
}

/// A TAP interface name unique to this process and call (at most 15 characters), for
/// tests that create network devices in parallel: `<prefix><pid><n>`.
pub fn unique_tap_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let prefix: String = prefix
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(4)
        .collect();
    let mut name = format!("{prefix}{}x{n}", std::process::id());
    name.truncate(15);
    name
}

pub(crate) fn pipe() -> std::io::Result<(std::fs::File, std::fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds that we immediately take ownership of.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// A fresh private directory (unique `mkdtemp` name) for one spawned VM's files,
/// removed on drop.
pub(crate) fn temp_dir() -> std::io::Result<TempDir> {
    Ok(TempDir::new_with_prefix(
        std::env::temp_dir().join("kiln-harness-"),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_names_are_unique_and_short() {
        let a = unique_tap_name("kiln-test");
        let b = unique_tap_name("kiln-test");
        assert_ne!(a, b);
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert!(a.starts_with("kiln"));
        assert!(unique_tap_name("ü").len() <= 15);
    }
}
