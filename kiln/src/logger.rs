//! A small stderr logger for the `kiln` binary: `kiln: LEVEL: message`, rate-limited
//! per call site and overall ([`vmm::log_limit`]) so that no guest can flood stderr.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use log::{Level, LevelFilter, Metadata, Record};

use vmm::log_limit::{LogLimiter, Verdict};

/// Logs to stderr at `level`; boot-timer reports pass at info when `boot_timer` is set.
pub struct Logger {
    level: LevelFilter,
    boot_timer: bool,
    limiter: Mutex<LogLimiter>,
}

const BOOT_TIMER_TARGET: &str = "devices::boot_timer";

impl log::Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level
            || (self.boot_timer && m.level() <= Level::Info && m.target() == BOOT_TIMER_TARGET)
    }

    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let site = (r.file_static().unwrap_or("?"), r.line().unwrap_or(0));
        let verdict = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(site, Instant::now());
        let Verdict::Log { suppressed_before } = verdict else {
            return;
        };
        let level = r.level().to_string().to_lowercase();
        let mut err = std::io::stderr().lock();
        if suppressed_before > 0 {
            let _ = writeln!(
                err,
                "kiln: {level}: ({suppressed_before} more like the next line suppressed)"
            );
        }
        let _ = writeln!(err, "kiln: {level}: {}", r.args());
    }

    fn flush(&self) {
        let pending = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_pending();
        if pending > 0 {
            let _ = writeln!(
                std::io::stderr().lock(),
                "kiln: warn: {pending} log lines suppressed by rate limiting"
            );
        }
    }
}

/// Installs the logger.
pub fn init(level: LevelFilter, boot_timer: bool) {
    let max = if boot_timer {
        level.max(LevelFilter::Info)
    } else {
        level
    };
    let logger = Logger {
        level,
        boot_timer,
        limiter: Mutex::new(LogLimiter::new(Instant::now())),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}
