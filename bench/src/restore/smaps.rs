//! Memory use of a running VMM from `/proc/PID/smaps_rollup` (the whole process) and
//! `/proc/PID/smaps` (the mapping of the snapshot's memory file: guest RAM).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Resident memory of a process or mapping, KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemUse {
    /// Resident set.
    pub rss_kib: u64,
    /// Proportional set: each page divided by the number of processes mapping it.
    pub pss_kib: u64,
    /// Resident pages no other process maps (clean or dirty).
    pub private_kib: u64,
    /// Anonymous pages: in a `MAP_PRIVATE` file mapping, the pages the process wrote
    /// (its own copies).
    #[serde(default)]
    pub anon_kib: u64,
}

impl MemUse {
    fn add_field(&mut self, key: &str, kib: u64) {
        match key {
            "Rss" => self.rss_kib += kib,
            "Pss" => self.pss_kib += kib,
            "Private_Clean" | "Private_Dirty" => self.private_kib += kib,
            "Anonymous" => self.anon_kib += kib,
            _ => {}
        }
    }

    /// Sums the `Key: N kB` lines of an smaps entry (or of smaps_rollup).
    fn add_lines<'a>(&mut self, lines: impl Iterator<Item = &'a str>) {
        for line in lines {
            if let Some((key, kib)) = field(line) {
                self.add_field(key, kib);
            }
        }
    }
}

/// `Key:   N kB` → `(Key, N)`.
fn field(line: &str) -> Option<(&str, u64)> {
    let (key, rest) = line.split_once(':')?;
    let n = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some((key, n))
}

/// The pathname of an smaps entry header (`start-end perms offset dev inode [path]`), or
/// `None` when `line` is not a header.
fn header_path(line: &str) -> Option<&str> {
    let mut parts = line.splitn(6, ' ');
    let range = parts.next()?;
    let (a, b) = range.split_once('-')?;
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_hexdigit());
    if !hex(a) || !hex(b) {
        return None;
    }
    // perms, offset, dev, inode, then the path (padded with spaces; may be absent).
    let _ = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    Some(parts.next().unwrap_or("").trim_start())
}

/// Sums the entries of smaps text `text` whose pathname is `path`.
pub fn parse_mapping(text: &str, path: &str) -> MemUse {
    let mut m = MemUse::default();
    let mut inside = false;
    for line in text.lines() {
        match header_path(line) {
            Some(p) => inside = p == path,
            None if inside => m.add_lines(std::iter::once(line)),
            None => {}
        }
    }
    m
}

/// Memory of the whole process `pid`.
pub fn process(pid: libc::pid_t) -> Option<MemUse> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let mut m = MemUse::default();
    m.add_lines(text.lines().skip(1));
    Some(m)
}

/// Memory of `pid`'s mappings of `file` (canonicalised, as the kernel names it).
pub fn mapping(pid: libc::pid_t, file: &Path) -> Option<MemUse> {
    let file = std::fs::canonicalize(file).ok()?;
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(parse_mapping(&text, file.to_str()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fd:00 1234                       /usr/bin/kiln
Rss:                 100 kB
Pss:                  50 kB
Private_Clean:         4 kB
7f0000000000-7f0008000000 rw-p 00000000 fd:00 99                         /tmp/k b/mem
Size:             131072 kB
Rss:                8200 kB
Pss:                2100 kB
Shared_Clean:       8160 kB
Private_Clean:         0 kB
Private_Dirty:        40 kB
Anonymous:            40 kB
7f0008000000-7f0010000000 rw-p 00000000 00:00 0 
Rss:                  12 kB
Pss:                  12 kB
7f0010000000-7f0010001000 rw-p 08000000 fd:00 99                         /tmp/k b/mem
Rss:                   4 kB
Pss:                   1 kB
Private_Dirty:         0 kB
";

    #[test]
    fn sums_the_mappings_of_one_file() {
        let m = parse_mapping(SMAPS, "/tmp/k b/mem");
        assert_eq!(
            m,
            MemUse {
                rss_kib: 8204,
                pss_kib: 2101,
                private_kib: 40,
                anon_kib: 40,
            }
        );
        assert_eq!(parse_mapping(SMAPS, "/tmp/k"), MemUse::default());
    }

    #[test]
    fn anonymous_headers_end_a_mapping() {
        assert_eq!(
            header_path("7f0008000000-7f0010000000 rw-p 00000000 00:00 0 "),
            Some("")
        );
        assert_eq!(header_path("Rss:   4 kB"), None);
        assert_eq!(header_path("VmFlags: rd wr mr mw me ac sd"), None);
        assert_eq!(field("Pss:   12 kB"), Some(("Pss", 12)));
        assert_eq!(field("THPeligible:    0"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as libc::pid_t;
        let m = process(me).unwrap();
        assert!(
            m.rss_kib > 0 && m.pss_kib > 0 && m.pss_kib <= m.rss_kib,
            "{m:?}"
        );
        let exe = std::env::current_exe().unwrap();
        assert!(mapping(me, &exe).unwrap().rss_kib > 0);
    }
}
