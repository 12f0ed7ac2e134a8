//! The command line itself: clap's usage errors exit 1 (the configuration-error status;
//! 2 is reserved for a guest stopped on an emulation failure), `--help` and `--version`
//! exit 0, and a bad value names the valid ones.

use std::process::{Command, Output};

fn kiln(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .output()
        .expect("running kiln")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn usage_error_exits_1_with_clap_message() {
    let out = kiln(&["run", "--memory"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("error:") && err.contains("--memory"), "{err}");
}

#[test]
fn unknown_subcommand_exits_1() {
    let out = kiln(&["launch"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
}

#[test]
fn help_exits_0_on_stdout() {
    let out = kiln(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: kiln"));
}

#[test]
fn version_exits_0() {
    let out = kiln(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let version = format!("kiln {}", env!("CARGO_PKG_VERSION"));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&version));
}

#[test]
fn bad_log_level_lists_the_valid_ones() {
    let out = kiln(&["run", "--log-level", "loud"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("possible values: off, error, warn, info, debug, trace"),
        "{err}"
    );
}

#[test]
fn log_level_is_case_insensitive() {
    // Parsing succeeds, so kiln gets as far as the missing kernel (a config error).
    let out = kiln(&["run", "--log-level", "DEBUG", "--serial", "none"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.starts_with("kiln: error: "), "{err}");
}
