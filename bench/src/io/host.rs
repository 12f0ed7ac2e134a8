//! The block side on the host: the raw disk file the VM reads and writes, the request
//! offsets the guest's `blkbench` mode issues (replayed here), and the host baseline that
//! does the same requests with `pread`/`pwrite` on the same file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::Serialize;

use util::time::monotonic_ns;

/// Smallest disk the benchmark makes (so sequential runs have room before wrapping).
pub const MIN_DISK_BYTES: u64 = 16 << 20;
/// Knuth's MMIX LCG, as in `resources/guest/bench.c` (`LCG_MUL`, `LCG_ADD`, `LCG_SEED`).
const LCG_MUL: u64 = 6_364_136_223_846_793_005;
const LCG_ADD: u64 = 1_442_695_040_888_963_407;
const LCG_SEED: u64 = 0x4b49_4c4e;

/// A block benchmark operation (`--io-op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BlkOp {
    /// Sequential reads from sector 0, wrapping at the end of the disk.
    Read,
    /// Sequential writes from sector 0 (then one flush), wrapping at the end.
    Write,
    /// Reads at pseudo-random request-aligned offsets.
    Randread,
}

impl BlkOp {
    /// The guest's `kiln.bench_op` value.
    pub fn name(self) -> &'static str {
        match self {
            BlkOp::Read => "read",
            BlkOp::Write => "write",
            BlkOp::Randread => "randread",
        }
    }
}

/// Disk size for `kib` KiB of I/O in `req`-byte requests: at least [`MIN_DISK_BYTES`],
/// rounded up to whole requests.
pub fn disk_bytes(kib: u64, req: u64) -> u64 {
    let want = kib.saturating_mul(1024).max(MIN_DISK_BYTES);
    want.div_ceil(req.max(1)).saturating_mul(req.max(1))
}

/// The request slots (offset / `req`) the guest visits, in order: `total` requests over a
/// disk of `slots` request-sized slots.
pub fn request_slots(op: BlkOp, total: u64, slots: u64) -> Vec<u64> {
    let slots = slots.max(1);
    let mut x = LCG_SEED;
    (0..total)
        .map(|i| match op {
            BlkOp::Randread => {
                x = x.wrapping_mul(LCG_MUL).wrapping_add(LCG_ADD);
                (x >> 33) % slots
            }
            BlkOp::Read | BlkOp::Write => i % slots,
        })
        .collect()
}

/// Creates `path` with `size` bytes of pseudo-random data (no holes) and syncs it.
pub fn make_disk(path: &Path, size: u64) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    let mut chunk = vec![0u8; 1 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = size;
    while left > 0 {
        for w in chunk.chunks_exact_mut(8) {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()
}

/// Drops `f`'s pages from the page cache (after writing back dirty ones).
fn drop_cache(f: &File) -> std::io::Result<()> {
    f.sync_all()?;
    // SAFETY: posix_fadvise on an fd we own; no memory is passed.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    match r {
        0 => Ok(()),
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// Page-cache state for a host pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// The file is read once, untimed, first.
    Warm,
    /// `posix_fadvise(DONTNEED)` first.
    Cold,
}

/// One host pass over `slots` with `req`-byte requests, one at a time; writes end with
/// `fdatasync` (as the guest ends with a FLUSH). Returns the elapsed ns.
pub fn host_pass(
    path: &Path,
    op: BlkOp,
    slots: &[u64],
    req: u64,
    cache: Cache,
) -> std::io::Result<u64> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let mut buf = vec![0u8; req as usize];
    match cache {
        Cache::Cold => drop_cache(&f)?,
        Cache::Warm => {
            let len = f.metadata()?.len();
            let mut off = 0;
            while off < len {
                let n = f.read_at(&mut buf, off)?;
                if n == 0 {
                    break;
                }
                off += n as u64;
            }
        }
    }
    let start = monotonic_ns();
    for &s in slots {
        let off = s * req;
        match op {
            BlkOp::Write => f.write_all_at(&buf, off)?,
            BlkOp::Read | BlkOp::Randread => f.read_exact_at(&mut buf, off)?,
        }
    }
    if op == BlkOp::Write {
        f.sync_data()?;
    }
    Ok(monotonic_ns().saturating_sub(start).max(1))
}

/// The file system type of `path` (`statfs` magic, e.g. 0xef53 for ext4), if known.
pub fn fs_magic(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-pointer.
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    (r == 0).then_some(st.f_type as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_size_rounds_up() {
        assert_eq!(disk_bytes(1024, 4096), MIN_DISK_BYTES);
        assert_eq!(disk_bytes(32 << 10, 65536), 32 << 20);
        assert_eq!(disk_bytes(1, 3 << 20), 18 << 20);
        assert_eq!(disk_bytes(0, 0), MIN_DISK_BYTES);
    }

    #[test]
    fn sequential_slots_wrap() {
        assert_eq!(request_slots(BlkOp::Read, 5, 3), [0, 1, 2, 0, 1]);
        assert_eq!(request_slots(BlkOp::Write, 2, 0), [0, 0]);
    }

    #[test]
    fn random_slots_follow_the_guest_lcg() {
        // x1 = seed·MUL + ADD (mod 2^64); the guest takes (x >> 33) % slots.
        let x1 = LCG_SEED.wrapping_mul(LCG_MUL).wrapping_add(LCG_ADD);
        let v = request_slots(BlkOp::Randread, 1000, 4096);
        assert_eq!(v[0], (x1 >> 33) % 4096);
        assert!(v.iter().all(|&s| s < 4096));
        let distinct: std::collections::BTreeSet<_> = v.iter().collect();
        assert!(distinct.len() > 800, "{}", distinct.len());
    }

    #[test]
    fn host_passes_read_and_write_the_file() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix(
            std::env::temp_dir().join("kiln-io-host-"),
        )
        .unwrap();
        let p = dir.as_path().join("d.img");
        make_disk(&p, 3 << 20 | 512).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 3 << 20 | 512);
        let slots = request_slots(BlkOp::Randread, 64, 768);
        for (op, cache) in [
            (BlkOp::Read, Cache::Warm),
            (BlkOp::Randread, Cache::Cold),
            (BlkOp::Write, Cache::Warm),
        ] {
            assert!(host_pass(&p, op, &slots, 4096, cache).unwrap() > 0);
        }
        assert!(host_pass(&p, BlkOp::Read, &[10_000], 4096, Cache::Warm).is_err());
        assert!(fs_magic(&p).is_some());
    }
}
