//! The VMM's own memory footprint: RSS and PSS of the process excluding guest memory,
//! read from `/proc/self/smaps`.

/// Memory use of the VMM process at one moment, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Resident memory outside guest RAM.
    pub vmm_rss_kib: u64,
    /// Proportional set size outside guest RAM.
    pub vmm_pss_kib: u64,
    /// Resident guest RAM (pages the guest or the loader touched).
    pub guest_rss_kib: u64,
}

/// `/proc/self/smaps`, opened ahead of time (the main thread's seccomp filter allows
/// no `open` once the VM runs) and read anew at each [`Smaps::measure`].
#[derive(Debug)]
pub struct Smaps(std::fs::File);

impl Smaps {
    /// Opens `/proc/self/smaps`.
    pub fn open() -> std::io::Result<Self> {
        std::fs::File::open("/proc/self/smaps").map(Self)
    }

    /// Sums the mappings now, splitting those inside `guest` (host address ranges
    /// `[start, end)`) from the rest.
    pub fn measure(&mut self, guest: &[(u64, u64)]) -> std::io::Result<MemStats> {
        use std::io::{Read, Seek, SeekFrom};
        self.0.seek(SeekFrom::Start(0))?;
        // A plain read loop: read_to_string would stat the file first, a call the
        // main thread's filter does not allow.
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 16 << 10];
        loop {
            match self.0.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(parse_smaps(&String::from_utf8_lossy(&bytes), guest))
    }
}

fn parse_smaps(smaps: &str, guest: &[(u64, u64)]) -> MemStats {
    let mut s = MemStats::default();
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                in_guest = guest.iter().any(|&(gs, ge)| start >= gs && end <= ge);
                continue;
            }
        }
        let kib = || {
            words
                .clone()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match (first, in_guest) {
            ("Rss:", true) => s.guest_rss_kib += kib(),
            ("Rss:", false) => s.vmm_rss_kib += kib(),
            ("Pss:", false) => s.vmm_pss_kib += kib(),
            _ => {}
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_guest_from_vmm() {
        let smaps = "\
1000-3000 rw-p 00000000 00:00 0
Rss:                   8 kB
Pss:                   6 kB
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Rss:                 400 kB
Pss:                 400 kB
";
        let s = parse_smaps(smaps, &[(0x7f00_0000_0000, 0x7f00_0800_0000)]);
        assert_eq!(
            s,
            MemStats {
                vmm_rss_kib: 8,
                vmm_pss_kib: 6,
                guest_rss_kib: 400
            }
        );
        assert!(Smaps::open().unwrap().measure(&[]).unwrap().vmm_rss_kib > 0);
    }
}
