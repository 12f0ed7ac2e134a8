//! The boot-timer line in the log of a VMM run with `--boot-timer`, for binaries that
//! write no `--timings` file:
//!
//! - Firecracker logs `Guest-boot-time = <N> us <M> ms, <C> CPU us <D> CPU ms` (info
//!   level), N counted from the start of building the microVM (the `InstanceStart`
//!   request's handling, or the config file's build with `--no-api`) to the guest's
//!   boot-timer write.
//! - Kiln (also when run as `firecracker`) logs `boot-timer: guest booted <N> us after
//!   process start, <M> us after the first KVM_RUN`, N counted from `KILN_START_NS`.

use vmm::timings::RunTimings;

/// The most log text read from one run.
pub const MAX_LOG: u64 = 1 << 20;

/// What a boot-timer line said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootLine {
    /// Firecracker's `Guest-boot-time`: VM build start → boot-timer write, µs.
    Firecracker {
        /// µs from the start of the VM build.
        since_build_us: u64,
    },
    /// Kiln's line.
    Kiln {
        /// µs from process start (`KILN_START_NS`).
        since_start_us: u64,
        /// µs from the first `KVM_RUN`.
        since_first_run_us: u64,
    },
}

impl BootLine {
    /// The first boot-timer line in `log`, if any.
    pub fn find(log: &str) -> Option<Self> {
        log.lines().find_map(Self::parse)
    }

    /// One log line (any prefix before the message).
    pub fn parse(line: &str) -> Option<Self> {
        if let Some((_, rest)) = line.split_once("Guest-boot-time") {
            let rest = rest.trim_start().strip_prefix('=')?.trim_start();
            let (n, rest) = number(rest)?;
            rest.trim_start()
                .starts_with("us")
                .then_some(BootLine::Firecracker { since_build_us: n })
        } else {
            let (_, rest) = line.split_once("boot-timer: guest booted ")?;
            let (start, rest) = number(rest)?;
            let rest = rest.strip_prefix(" us after process start, ")?;
            let (run, rest) = number(rest)?;
            rest.starts_with(" us after the first KVM_RUN")
                .then_some(BootLine::Kiln {
                    since_start_us: start,
                    since_first_run_us: run,
                })
        }
    }

    /// Kiln's line as start-up timings of a process started at `start_ns` (first
    /// `KVM_RUN` and boot-timer write since then); `None` for Firecracker's line, which
    /// has no process-start reference.
    pub fn timings(&self, start_ns: u64) -> Option<RunTimings> {
        match *self {
            BootLine::Firecracker { .. } => None,
            BootLine::Kiln {
                since_start_us,
                since_first_run_us,
            } => Some(RunTimings {
                process_start_ns: Some(start_ns),
                first_kvm_run_us: since_start_us.checked_sub(since_first_run_us),
                boot_timer_us: Some(since_start_us),
                ..RunTimings::default()
            }),
        }
    }

    /// Firecracker's `Guest-boot-time`, µs.
    pub fn guest_boot_time_us(&self) -> Option<u64> {
        match *self {
            BootLine::Firecracker { since_build_us } => Some(since_build_us),
            BootLine::Kiln { .. } => None,
        }
    }
}

/// A leading decimal number and what follows it.
fn number(s: &str) -> Option<(u64, &str)> {
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    Some((s[..end].parse().ok()?, &s[end..]))
}

/// The log file of one run, at most [`MAX_LOG`] bytes of it, as text.
pub fn read_log(path: &std::path::Path) -> String {
    use std::io::Read;
    let mut text = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_LOG).read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firecrackers_line() {
        let line = "2024-05-02T10:00:00.123456789 [anonymous-instance:fc_vcpu 0:INFO:src/vmm/src/\
                    devices/pseudo/boot_timer.rs:40] Guest-boot-time =   1234 us 1 ms,    987 CPU us 0 CPU ms";
        assert_eq!(
            BootLine::parse(line),
            Some(BootLine::Firecracker {
                since_build_us: 1234
            })
        );
        let l = BootLine::parse(line).unwrap();
        assert_eq!(l.guest_boot_time_us(), Some(1234));
        assert_eq!(l.timings(5), None);
    }

    #[test]
    fn kilns_line() {
        let line = "1764500000.000000001 [anonymous-instance:kiln-vcpu0] boot-timer: guest booted \
                    2500 us after process start, 400 us after the first KVM_RUN";
        let l = BootLine::parse(line).unwrap();
        assert_eq!(
            l,
            BootLine::Kiln {
                since_start_us: 2500,
                since_first_run_us: 400
            }
        );
        let t = l.timings(7_000).unwrap();
        assert_eq!(t.process_start_ns, Some(7_000));
        assert_eq!(t.first_kvm_run_us, Some(2100));
        assert_eq!(t.boot_timer_us, Some(2500));
        assert_eq!(l.guest_boot_time_us(), None);
    }

    #[test]
    fn other_and_broken_lines_are_ignored() {
        for line in [
            "Running Firecracker v1.7.0",
            "Guest-boot-time = us",
            "Guest-boot-time: 12 us",
            "Guest-boot-time = 12 ms",
            "Guest-boot-time = 99999999999999999999999 us",
            "boot-timer: guest booted 12 us after process start",
            "boot-timer: guest booted x us after process start, 1 us after the first KVM_RUN",
        ] {
            assert_eq!(BootLine::parse(line), None, "{line}");
        }
    }

    #[test]
    fn the_first_line_counts() {
        let log = "a\nGuest-boot-time = 5 us 0 ms, 1 CPU us 0 CPU ms\nGuest-boot-time = 9 us\n";
        assert_eq!(
            BootLine::find(log),
            Some(BootLine::Firecracker { since_build_us: 5 })
        );
        assert_eq!(BootLine::find("nothing here\n"), None);
    }

    #[test]
    fn kiln_line_with_run_after_timer_has_no_first_run() {
        let l = BootLine::Kiln {
            since_start_us: 10,
            since_first_run_us: 20,
        };
        assert_eq!(l.timings(0).unwrap().first_kvm_run_us, None);
    }
}
