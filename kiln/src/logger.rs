//! The `kiln` binary's logger. By default `kiln: LEVEL: message` on stderr; in API mode
//! it can be pointed at a file or named pipe with Firecracker's options (`PUT /logger`,
//! `--log-path`, `--level`, `--show-level`, `--show-log-origin`, `--module`), one line
//! per record: `<time> [<id>:<thread>] [<LEVEL>] [<file>:<line>] message`. Every line is
//! rate-limited per call site and overall ([`vmm::log_limit`]) so no guest can flood it.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Metadata, Record};

use vmm::log_limit::{LogLimiter, Verdict};

const BOOT_TIMER_TARGET: &str = "devices::boot_timer";

/// Firecracker-style log settings (each `None` keeps the current value).
#[derive(Debug, Default, Clone)]
pub struct Settings {
    /// File or named pipe to append to.
    pub path: Option<String>,
    /// Most verbose level written.
    pub level: Option<LevelFilter>,
    /// Prefix lines with their level.
    pub show_level: Option<bool>,
    /// Prefix lines with their source file and line.
    pub show_origin: Option<bool>,
    /// Only records whose module path starts with this.
    pub module: Option<String>,
}

struct Sink {
    level: LevelFilter,
    file: Option<File>,
    instance: String,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

struct Logger {
    boot_timer: bool,
    sink: Mutex<Sink>,
    limiter: Mutex<LogLimiter>,
}

static LOGGER: OnceLock<&'static Logger> = OnceLock::new();

impl Logger {
    fn sink(&self) -> std::sync::MutexGuard<'_, Sink> {
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl log::Log for Logger {
    fn enabled(&self, m: &Metadata) -> bool {
        let s = self.sink();
        let wanted = m.level() <= s.level
            || (self.boot_timer && m.level() <= Level::Info && m.target() == BOOT_TIMER_TARGET);
        wanted
            && s.module
                .as_deref()
                .is_none_or(|p| m.target().starts_with(p))
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
        let mut s = self.sink();
        if suppressed_before > 0 {
            let note = format!("({suppressed_before} more like the next line suppressed)");
            s.write(r.level(), None, &note);
        }
        let origin = s
            .show_origin
            .then(|| format!("{}:{}", r.file().unwrap_or("?"), r.line().unwrap_or(0)));
        s.write(r.level(), origin.as_deref(), &r.args().to_string());
    }

    fn flush(&self) {
        let pending = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_pending();
        if pending > 0 {
            let msg = format!("{pending} log lines suppressed by rate limiting");
            self.sink().write(Level::Warn, None, &msg);
        }
    }
}

impl Sink {
    fn write(&mut self, level: Level, origin: Option<&str>, msg: &str) {
        let Some(file) = self.file.as_mut() else {
            let level = level.to_string().to_lowercase();
            let _ = writeln!(std::io::stderr().lock(), "kiln: {level}: {msg}");
            return;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let thread = std::thread::current();
        let mut line = format!(
            "{}.{:09} [{}:{}]",
            now.as_secs(),
            now.subsec_nanos(),
            self.instance,
            thread.name().unwrap_or("?")
        );
        if self.show_level {
            line.push_str(&format!(" [{level}]"));
        }
        if let Some(o) = origin {
            line.push_str(&format!(" [{o}]"));
        }
        let _ = writeln!(file, "{line} {msg}");
    }
}

/// Installs the logger: stderr at `level`; boot-timer reports pass at info when
/// `boot_timer` is set. `instance` names the VM in file output.
pub fn init(level: LevelFilter, boot_timer: bool, instance: &str) {
    let logger: &'static Logger = Box::leak(Box::new(Logger {
        boot_timer,
        sink: Mutex::new(Sink {
            level,
            file: None,
            instance: instance.to_string(),
            show_level: false,
            show_origin: false,
            module: None,
        }),
        limiter: Mutex::new(LogLimiter::new(Instant::now())),
    }));
    if log::set_logger(logger).is_ok() {
        let _ = LOGGER.set(logger);
        set_max_level(level, boot_timer);
    }
}

fn set_max_level(level: LevelFilter, boot_timer: bool) {
    log::set_max_level(match boot_timer {
        true => level.max(LevelFilter::Info),
        false => level,
    });
}

/// Changes where and how the log is written. The file is opened for appending (and
/// created when missing); on error nothing changes.
pub fn configure(settings: &Settings) -> Result<(), String> {
    let logger = LOGGER.get().ok_or("the logger is not initialized")?;
    let file = match &settings.path {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(p)
                .map_err(|e| format!("cannot open the log file {p}: {e}"))?,
        ),
        None => None,
    };
    let mut s = logger.sink();
    if file.is_some() {
        s.file = file;
    }
    if let Some(l) = settings.level {
        s.level = l;
        set_max_level(l, logger.boot_timer);
    }
    if let Some(b) = settings.show_level {
        s.show_level = b;
    }
    if let Some(b) = settings.show_origin {
        s.show_origin = b;
    }
    if settings.module.is_some() {
        s.module = settings.module.clone();
    }
    Ok(())
}
