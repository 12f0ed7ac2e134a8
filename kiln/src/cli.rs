//! The `kiln` command line (clap): `kiln run`, `kiln check`, `kiln bench`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use vmm::config::{
    parse_size, BootProtocol, ConfigError, DiskConfig, MemSize, NetConfig, SerialConfig, VmConfig,
};
use vmm::seccomp::SeccompLevel;

/// Kiln: a microVM monitor on KVM.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about, args_override_self = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a VM and attach its serial console.
    Run(RunArgs),
    /// Serve Firecracker's REST API on a Unix socket (Firecracker's flags; also what
    /// the binary does when run as `firecracker`).
    Api(crate::api_mode::ApiArgs),
    /// Restore a VM from a snapshot (state file + memory file).
    Restore(crate::api_mode::RestoreArgs),
    /// Check /dev/kvm and the host's KVM features.
    Check,
    /// Time VM start-up (phases, memory, VMs/s) against runc and fork/exec.
    Bench(bench::BenchArgs),
}

/// `kiln run` flags; each overrides the config file.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Kernel image: an ELF vmlinux or a bzImage.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=1"].
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Guest memory, e.g. 256M or 2G (no suffix = MiB) [default: 128M].
    #[arg(long, value_parser = parse_mem)]
    pub memory: Option<MemSize>,
    /// Serial console: stdio, file=PATH or none [default: stdio].
    #[arg(long)]
    pub serial: Option<SerialConfig>,
    /// Entry point for ELF kernels with a PVH note: auto, linux or pvh [default: auto].
    #[arg(long)]
    pub boot_protocol: Option<BootProtocol>,
    /// virtio-blk disk: `path=FILE[,readonly=on][,id=NAME]` (repeatable).
    #[arg(long = "disk")]
    pub disks: Vec<DiskConfig>,
    /// virtio-net on a TAP: tap=NAME[,mac=AA:BB:CC:DD:EE:FF] (repeatable).
    #[arg(long = "net")]
    pub nets: Vec<NetConfig>,
    /// A virtio-rng device: the guest gets entropy from the host's getrandom.
    #[arg(long)]
    pub rng: bool,
    /// A virtio-vsock device: cid=N,uds=PATH (host programs connect to PATH and write
    /// `CONNECT <port>`; guest connections to host port P go to PATH_P).
    #[arg(long)]
    pub vsock: Option<vmm::config::VsockConfig>,
    /// JSON or TOML file with the same fields (kernel, initrd, cmdline, cpus, memory,
    /// serial, boot_protocol, boot_timer, disks, nets).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "warn", ignore_case = true, value_parser = clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(["off", "error", "warn", "info", "debug", "trace"]), |s| s.parse::<log::LevelFilter>().unwrap_or(log::LevelFilter::Warn)))]
    pub log_level: log::LevelFilter,
    /// Report the boot-timer signal (guest writes 123 to MMIO 0xc0000000).
    #[arg(long)]
    pub boot_timer: bool,
    /// Write start-up timings as JSON to this file when the VM ends.
    #[arg(long)]
    pub timings: Option<PathBuf>,
    /// Seccomp filters on every thread: on (stop on a forbidden call), log (let it
    /// through, the kernel logs it) or off.
    #[arg(long, default_value = "on", value_parser = clap::builder::TypedValueParser::map(clap::builder::PossibleValuesParser::new(["on", "log", "off"]), |s| s.parse::<SeccompLevel>().unwrap_or(SeccompLevel::On)))]
    pub seccomp: SeccompLevel,
    /// Run jailed: new mount/PID/IPC/UTS namespaces with DIR as the root, holding only
    /// what the VM needs (needs root; see README "Security model").
    #[arg(long, value_name = "DIR")]
    pub jail: Option<PathBuf>,
    /// With --jail: the user to run as.
    #[arg(long, requires_all = ["jail", "gid"])]
    pub uid: Option<u32>,
    /// With --jail: the group to run as.
    #[arg(long, requires_all = ["jail", "uid"])]
    pub gid: Option<u32>,
    /// With --jail: join this cgroup (its directory, e.g. /sys/fs/cgroup/kiln/vm0).
    #[arg(long, requires = "jail")]
    pub cgroup: Option<PathBuf>,
    /// Serve Firecracker's API for the running VM on this Unix socket (pause, resume,
    /// snapshot, metrics, ...).
    #[arg(long, conflicts_with = "jail")]
    pub api_sock: Option<PathBuf>,
}

/// A config file in Kiln's layout (JSON or TOML) or in Firecracker's (JSON with
/// `boot-source`, `machine-config`, `drives`, `network-interfaces`, …).
fn config_file(path: &std::path::Path) -> Result<VmConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    if !api::model::VmResources::is_firecracker_layout(&text) {
        return VmConfig::from_file(path);
    }
    let parse_err = |msg: String| ConfigError::Parse {
        path: path.to_path_buf(),
        msg,
    };
    let resources = api::model::VmResources::from_json(&text)
        .map_err(|e| parse_err(format!("{e} (read as a Firecracker configuration)")))?;
    resources.to_vm_config(false).map_err(parse_err)
}

fn parse_mem(s: &str) -> Result<MemSize, ConfigError> {
    parse_size(s).map(MemSize)
}

impl RunArgs {
    /// The VM configuration: config file (if any), then flags on top.
    pub fn to_config(&self) -> Result<VmConfig, ConfigError> {
        let mut c = match &self.config {
            Some(p) => config_file(p)?,
            None => VmConfig::default(),
        };
        if let Some(k) = &self.kernel {
            c.kernel = Some(k.clone());
        }
        if let Some(i) = &self.initrd {
            c.initrd = Some(i.clone());
        }
        if let Some(s) = &self.cmdline {
            c.cmdline = s.clone();
        }
        if let Some(n) = self.cpus {
            c.cpus = n;
        }
        if let Some(m) = self.memory {
            c.memory = m;
        }
        if let Some(s) = &self.serial {
            c.serial = s.clone();
        }
        if let Some(p) = self.boot_protocol {
            c.boot_protocol = p;
        }
        c.boot_timer |= self.boot_timer;
        c.disks.extend(self.disks.iter().cloned());
        c.nets.extend(self.nets.iter().cloned());
        if let Some(v) = &self.vsock {
            c.vsock = Some(v.clone());
        }
        if self.rng && c.rng.is_none() {
            c.rng = Some(vmm::config::RngConfig::default());
        }
        c.validate()?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file() {
        let dir = std::env::temp_dir().join(format!("kiln-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("vm.json");
        std::fs::write(
            &f,
            r#"{"kernel":"/a","cpus":2,"memory":"1G","cmdline":"x"}"#,
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "kiln",
            "run",
            "--config",
            f.to_str().unwrap(),
            "--cpus",
            "3",
            "--memory",
            "256M",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        let c = args.to_config().unwrap();
        assert_eq!(c.kernel, Some(PathBuf::from("/a")));
        assert_eq!(c.cpus, 3);
        assert_eq!(c.memory.0, 256 << 20);
        assert_eq!(c.cmdline, "x");
        std::fs::remove_dir_all(dir).unwrap();
        assert!(Cli::try_parse_from(["kiln", "run", "--memory", "lots"]).is_err());
    }

    #[test]
    fn firecracker_layout_config_files_are_read_too() {
        let dir = std::env::temp_dir().join(format!("kiln-cli-fc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("vm.json");
        std::fs::write(
            &f,
            r#"{"boot-source":{"kernel_image_path":"/k","boot_args":"console=ttyS0"},
                "machine-config":{"vcpu_count":2,"mem_size_mib":64},
                "drives":[{"drive_id":"root","path_on_host":"/r.img","is_root_device":true,"is_read_only":false}]}"#,
        )
        .unwrap();
        let c = config_file(&f).unwrap();
        let bad = dir.join("bad.json");
        std::fs::write(
            &bad,
            r#"{"machine-config":{"vcpu_count":1,"mem_size_mib":64},"x":1}"#,
        )
        .unwrap();
        let err = config_file(&bad).unwrap_err().to_string();
        std::fs::remove_dir_all(dir).unwrap();
        assert_eq!(c.kernel, Some(PathBuf::from("/k")));
        assert_eq!((c.cpus, c.memory.0), (2, 64 << 20));
        assert_eq!(c.cmdline, "console=ttyS0 root=/dev/vda rw");
        assert_eq!(c.disks[0].path, PathBuf::from("/r.img"));
        assert!(err.contains("unknown field `x`"), "{err}");
        assert!(err.contains("Firecracker"), "{err}");
    }
}
