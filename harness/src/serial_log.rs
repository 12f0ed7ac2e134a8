//! The serial console (and a child's log) as lines, shared between its reader thread
//! and the test.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use regex::Regex;

/// Lines read from a stream, shared with a reader thread.
#[derive(Clone)]
pub(crate) struct SerialLog(Arc<(Mutex<LogState>, Condvar)>);

#[derive(Default)]
pub(crate) struct LogState {
    pub(crate) lines: Vec<String>,
    pub(crate) partial: String,
    pub(crate) closed: bool,
}

impl SerialLog {
    pub(crate) fn new() -> Self {
        Self(Arc::new((Mutex::new(LogState::default()), Condvar::new())))
    }

    pub(crate) fn collect(&self, r: impl Read + Send + 'static) -> JoinHandle<()> {
        let log = self.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf);
                        let (state, cv) = &*log.0;
                        let mut s = util::sync::lock(state);
                        match text.strip_suffix('\n') {
                            Some(line) => {
                                let mut full = std::mem::take(&mut s.partial);
                                full.push_str(line.trim_end_matches('\r'));
                                s.lines.push(full);
                            }
                            None => s.partial.push_str(&text),
                        }
                        cv.notify_all();
                    }
                }
            }
            let (state, cv) = &*log.0;
            let mut s = util::sync::lock(state);
            if !s.partial.is_empty() {
                let p = std::mem::take(&mut s.partial);
                s.lines.push(p);
            }
            s.closed = true;
            cv.notify_all();
        })
    }

    /// A log with no writer: closed from the start.
    pub(crate) fn closed() -> Self {
        let log = Self::new();
        util::sync::lock(&log.0 .0).closed = true;
        log
    }

    /// Waits until the writer side has closed, or `deadline`.
    pub(crate) fn wait_closed(&self, deadline: Instant) {
        let (state, cv) = &*self.0;
        let mut s = util::sync::lock(state);
        while !s.closed {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            s = match cv.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        util::sync::lock(&self.0 .0).lines.clone()
    }

    pub(crate) fn tail(&self, n: usize) -> String {
        let s = util::sync::lock(&self.0 .0);
        let start = s.lines.len().saturating_sub(n);
        let mut t = s.lines[start..].join("\n");
        if !s.partial.is_empty() {
            t.push('\n');
            t.push_str(&s.partial);
        }
        t
    }

    /// Waits for a line matching `re` after line index `from`; returns (index, line) or
    /// None on timeout / close.
    pub(crate) fn wait(
        &self,
        re: &Regex,
        from: usize,
        deadline: Instant,
    ) -> (Option<(usize, String)>, bool) {
        let (state, cv) = &*self.0;
        let mut s = util::sync::lock(state);
        loop {
            if let Some((i, l)) = s
                .lines
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| re.is_match(l))
            {
                return (Some((i, l.clone())), s.closed);
            }
            let now = Instant::now();
            if s.closed || now >= deadline {
                return (None, s.closed);
            }
            s = match cv.wait_timeout(s, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}
