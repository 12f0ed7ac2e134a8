//! Firecracker's command line, for `kiln api` and for the binary run under the name
//! `firecracker` (a symlink): the same flags with the same meaning.

use std::path::PathBuf;

use clap::{Args, Parser};
use log::LevelFilter;

/// Firecracker's default API socket.
pub const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";
/// Firecracker's default instance id.
pub const DEFAULT_ID: &str = "anonymous-instance";
/// Firecracker's default request body limit.
pub const DEFAULT_MAX_PAYLOAD: usize = 51200;

/// The binary run as `firecracker`.
#[derive(Parser, Debug)]
#[command(
    name = "firecracker",
    about = "Kiln answering Firecracker's command line and API",
    disable_version_flag = true
)]
pub struct FirecrackerCli {
    /// Firecracker's flags.
    #[command(flatten)]
    pub args: FcArgs,
    /// Print the Firecracker API version Kiln implements, and Kiln's version.
    #[arg(long)]
    pub version: bool,
}

/// Firecracker's process flags.
#[derive(Args, Debug, Clone)]
pub struct FcArgs {
    /// Path of the API's Unix socket (an existing socket file is replaced).
    #[arg(long, default_value = DEFAULT_API_SOCK)]
    pub api_sock: PathBuf,
    /// Boot from this Firecracker JSON configuration at start.
    #[arg(long)]
    pub config_file: Option<PathBuf>,
    /// Serve no API: boot from --config-file and run until the guest ends.
    #[arg(long, requires = "config_file")]
    pub no_api: bool,
    /// The instance id (GET / reports it; log lines carry it).
    #[arg(long, default_value = DEFAULT_ID, value_parser = parse_id)]
    pub id: String,
    /// Log the guest's boot-timer write (MMIO 0xc0000000).
    #[arg(long)]
    pub boot_timer: bool,
    /// Log level: Error, Warning, Info, Debug, Trace or Off.
    #[arg(long, value_parser = parse_level)]
    pub level: Option<LevelFilter>,
    /// Append the log to this file or named pipe (default: stderr).
    #[arg(long)]
    pub log_path: Option<PathBuf>,
    /// Prefix log lines with their level.
    #[arg(long)]
    pub show_level: bool,
    /// Prefix log lines with their source file and line.
    #[arg(long)]
    pub show_log_origin: bool,
    /// Only log records from this module path.
    #[arg(long)]
    pub module: Option<String>,
    /// Append metrics lines to this file or named pipe.
    #[arg(long)]
    pub metrics_path: Option<PathBuf>,
    /// Run without seccomp filters.
    #[arg(long)]
    pub no_seccomp: bool,
    /// A custom seccomp filter file (not supported: Kiln builds its own per-thread filters).
    #[arg(long)]
    pub seccomp_filter: Option<PathBuf>,
    /// Largest request body the API accepts, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_PAYLOAD)]
    pub http_api_max_payload_size: usize,
    /// MMDS data store limit (accepted; Kiln has no MMDS).
    #[arg(long)]
    pub mmds_size_limit: Option<usize>,
    /// Process start time from the jailer, in microseconds (accepted).
    #[arg(long)]
    pub start_time_us: Option<u64>,
    /// Process start CPU time from the jailer, in microseconds (accepted).
    #[arg(long)]
    pub start_time_cpu_us: Option<u64>,
    /// The jailer's CPU time, in microseconds (accepted).
    #[arg(long)]
    pub parent_cpu_time_us: Option<u64>,
}

fn parse_id(s: &str) -> Result<String, String> {
    let ok =
        (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    match ok {
        true => Ok(s.to_string()),
        false => Err("use 1 to 64 letters, digits or '-'".into()),
    }
}

fn parse_level(s: &str) -> Result<LevelFilter, String> {
    match s.to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warning" | "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err("use Error, Warning, Info, Debug, Trace or Off".into()),
    }
}

/// Whether the binary was started under the name `firecracker`.
pub fn invoked_as_firecracker() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n == "firecracker"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_firecrackers() {
        let c = FirecrackerCli::try_parse_from(["firecracker"]).unwrap();
        assert_eq!(c.args.api_sock, PathBuf::from(DEFAULT_API_SOCK));
        assert_eq!(c.args.id, DEFAULT_ID);
        assert_eq!(c.args.http_api_max_payload_size, 51200);
        assert!(!c.args.no_api);
    }

    #[test]
    fn no_api_needs_a_config_file() {
        assert!(FirecrackerCli::try_parse_from(["firecracker", "--no-api"]).is_err());
        FirecrackerCli::try_parse_from(["firecracker", "--no-api", "--config-file", "x"]).unwrap();
    }

    #[test]
    fn unknown_flags_are_refused() {
        let e = FirecrackerCli::try_parse_from(["firecracker", "--frobnicate"]).unwrap_err();
        assert!(e.to_string().contains("--frobnicate"), "{e}");
    }

    #[test]
    fn levels_take_firecrackers_names_in_any_case() {
        let c = FirecrackerCli::try_parse_from(["firecracker", "--level", "Warning"]).unwrap();
        assert_eq!(c.args.level, Some(LevelFilter::Warn));
        let c = FirecrackerCli::try_parse_from(["firecracker", "--level", "debug"]).unwrap();
        assert_eq!(c.args.level, Some(LevelFilter::Debug));
        assert!(FirecrackerCli::try_parse_from(["firecracker", "--level", "loud"]).is_err());
    }

    #[test]
    fn ids_are_checked() {
        assert!(FirecrackerCli::try_parse_from(["firecracker", "--id", "a/b"]).is_err());
        let c = FirecrackerCli::try_parse_from(["firecracker", "--id", "vm-1"]).unwrap();
        assert_eq!(c.args.id, "vm-1");
    }
}
