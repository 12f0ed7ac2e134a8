//! A small stderr logger for the `kiln` binary: `kiln: LEVEL: message`.

use std::io::Write;

use log::{Level, LevelFilter, Metadata, Record};

/// Logs to stderr at `level`; boot-timer reports pass at info when `boot_timer` is set.
pub struct Logger {
    level: LevelFilter,
    boot_timer: bool,
}

const BOOT_TIMER_TARGET: &str = "devices::legacy::boot_timer";

impl log::Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        m.level() <= self.level
            || (self.boot_timer && m.level() <= Level::Info && m.target() == BOOT_TIMER_TARGET)
    }

    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            let level = r.level().to_string().to_lowercase();
            let _ = writeln!(std::io::stderr().lock(), "kiln: {level}: {}", r.args());
        }
    }

    fn flush(&self) {}
}

/// Installs the logger.
pub fn init(level: LevelFilter, boot_timer: bool) {
    let max = if boot_timer {
        level.max(LevelFilter::Info)
    } else {
        level
    };
    if log::set_boxed_logger(Box::new(Logger { level, boot_timer })).is_ok() {
        log::set_max_level(max);
    }
}
