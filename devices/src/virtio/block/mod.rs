//! virtio-blk (virtio 1.2 §5.2) backed by a raw image file on the host.
//!
//! The image is `flock`ed (exclusive read-write, shared read-only) so two VMs cannot
//! write one disk. Requests run synchronously on the device thread.
//!
//! Caching ([`CacheType`]): a `Writeback` disk offers `VIRTIO_BLK_F_FLUSH`, and when the
//! driver does not negotiate it the device is write-through: each write is followed by
//! `fdatasync` before it completes. An `Unsafe` disk offers no FLUSH and never syncs.
//!
//! Each request is charged to the disk's [`RateLimiter`] (one operation plus its data
//! bytes) before it runs; a refused request goes back on the queue and the pass stops
//! until the limiter's timerfd (the device's backend fd 0) fires.
//!
//! Snapshots: [`BlockState`] (capacity, serial); the disk is reopened and must have the
//! saved capacity.

mod disk_file;
mod guest_io;
mod request;
mod state;
mod update;

use std::fs::File;
use std::os::fd::RawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::EventSet;
use log::warn;
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_blk::{self as vb, virtio_blk_config};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::ByteValued;

use super::{
    features::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX},
    has,
    queue::{self, PassBudget, PassEnd},
    Error, Interrupt, Mem, QueuePosition, VirtioDevice, TYPE_BLOCK,
};
use crate::metrics::{inc, BlockMetrics};
use crate::rate_limiter::{RateLimiter, RateLimiterConfig};
use crate::snapshot::{DeviceState, StateError};

pub use state::BlockState;

/// `VIRTIO_BLK_F_SEG_MAX`: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << vb::VIRTIO_BLK_F_SEG_MAX;
/// `VIRTIO_BLK_F_RO`: the device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << vb::VIRTIO_BLK_F_RO;
/// `VIRTIO_BLK_F_BLK_SIZE`: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << vb::VIRTIO_BLK_F_BLK_SIZE;
/// `VIRTIO_BLK_F_FLUSH`: the flush command is supported.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << vb::VIRTIO_BLK_F_FLUSH;
/// `VIRTIO_BLK_F_DISCARD`: the discard command is supported.
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << vb::VIRTIO_BLK_F_DISCARD;
/// `VIRTIO_BLK_F_WRITE_ZEROES`: the write-zeroes command is supported.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 1 << vb::VIRTIO_BLK_F_WRITE_ZEROES;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;
/// Maximum size of the single request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the configuration space Kiln exposes: `struct virtio_blk_config` up to
/// `write_zeroes_may_unmap` and its padding (no secure erase, no zones).
const CONFIG_LEN: usize = std::mem::offset_of!(virtio_blk_config, max_secure_erase_sectors);
/// Sectors per discard / write-zeroes segment Kiln accepts.
const MAX_DISCARD_SECTORS: u32 = 1 << 22;

/// How a disk's writes reach the host's storage (Firecracker's `cache_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CacheType {
    /// `VIRTIO_BLK_F_FLUSH` is offered and FLUSH syncs the image; a driver that does not
    /// negotiate it gets write-through writes (`fdatasync` after each).
    #[default]
    Writeback,
    /// No FLUSH is offered and nothing is ever synced: writes sit in the host's page
    /// cache (fast; a host crash loses them).
    Unsafe,
}

/// What the VMM configures for one disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockConfig {
    /// Host path of the raw image (a file or a block device).
    pub path: PathBuf,
    /// Expose the disk read-only (and open the file read-only).
    pub read_only: bool,
    /// Serial returned by `VIRTIO_BLK_T_GET_ID` (at most 20 bytes); default derived from
    /// the file's device and inode numbers.
    pub id: Option<String>,
    /// Limits on requests and bytes (`None`: unlimited).
    pub rate_limiter: Option<RateLimiterConfig>,
    /// Caching mode.
    pub cache: CacheType,
}

/// The host side of the disk, used by the request handler.
struct Disk {
    file: File,
    path: PathBuf,
    read_only: bool,
    nsectors: u64,
    id: [u8; 20],
    /// `id` was derived from the image (not configured): it follows a replaced image.
    id_derived: bool,
    cache: CacheType,
    flush_negotiated: bool,
    discard: bool,
    write_zeroes: bool,
    buf: Vec<u8>,
}

impl Disk {
    /// Whether each write must be synced before it completes.
    fn write_through(&self) -> bool {
        self.cache == CacheType::Writeback && !self.flush_negotiated
    }
}

/// An opened, locked image: what [`Block::new`] and [`Block::replace_disk`] install.
struct Image {
    file: File,
    nsectors: u64,
    /// The serial derived from the file's device and inode numbers.
    derived_id: String,
}

impl Image {
    fn open(path: &Path, read_only: bool) -> Result<Self, Error> {
        let disk_file::DiskFile { file, size } = disk_file::open(path, read_only)?;
        let derived_id = match file.metadata() {
            Ok(m) => format!("kiln{:x}-{:x}", m.dev(), m.ino()),
            Err(_) => "kiln".to_string(),
        };
        Ok(Self {
            file,
            nsectors: sectors(size, path),
            derived_id,
        })
    }
}

/// The whole sectors in an image of `size` bytes (warns about a partial last one).
fn sectors(size: u64, path: &Path) -> u64 {
    if size & (SECTOR_SIZE - 1) != 0 {
        warn!(
            "virtio-blk: {} is {size} bytes, not a multiple of {SECTOR_SIZE}: the last \
             {} bytes are not visible to the guest",
            path.display(),
            size % SECTOR_SIZE
        );
    }
    size / SECTOR_SIZE
}

/// A serial as the 20 bytes `VIRTIO_BLK_T_GET_ID` returns (cut, zero-padded).
fn serial(id: &str) -> [u8; 20] {
    let mut out = [0u8; 20];
    let n = id.len().min(20);
    out[..n].copy_from_slice(&id.as_bytes()[..n]);
    out
}

struct Active {
    mem: Mem,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio block device.
pub struct Block {
    disk: Disk,
    avail_features: u64,
    config: Vec<u8>,
    active: Option<Active>,
    limiter: RateLimiter,
    metrics: Arc<BlockMetrics>,
}

impl Block {
    /// Opens and locks the image described by `cfg`.
    pub fn new(cfg: BlockConfig) -> Result<Self, Error> {
        let BlockConfig {
            path,
            read_only,
            id,
            rate_limiter,
            cache,
        } = cfg;
        if let Some(id) = &id {
            if id.len() > 20 {
                return Err(Error::BlockIdTooLong(id.clone()));
            }
        }
        let limiter =
            RateLimiter::new(&rate_limiter.unwrap_or_default()).map_err(Error::RateLimiter)?;
        let image = Image::open(&path, read_only)?;
        let id_derived = id.is_none();
        let disk_id = serial(id.as_deref().unwrap_or(&image.derived_id));

        let mut avail_features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_BLK_F_SEG_MAX
            | VIRTIO_BLK_F_BLK_SIZE;
        if cache == CacheType::Writeback {
            avail_features |= VIRTIO_BLK_F_FLUSH;
        }
        if read_only {
            avail_features |= VIRTIO_BLK_F_RO;
        } else {
            avail_features |= VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES;
        }
        let config = config_space(image.nsectors);

        Ok(Self {
            disk: Disk {
                file: image.file,
                path,
                read_only,
                nsectors: image.nsectors,
                id: disk_id,
                id_derived,
                cache,
                flush_negotiated: false,
                discard: false,
                write_zeroes: false,
                buf: Vec::new(),
            },
            avail_features,
            config,
            active: None,
            limiter,
            metrics: Arc::new(BlockMetrics::default()),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.disk.nsectors
    }

    /// One bounded pass over the request queue, raising at most one interrupt.
    /// Returns true when requests are left for another pass.
    fn process(&mut self) -> bool {
        let Some(act) = self.active.as_mut() else {
            return false;
        };
        // A throttled device waits for its timer, whatever the driver says meanwhile.
        if act.interrupt.needs_reset() || self.limiter.is_blocked() {
            return false;
        }
        let mem = act.mem.clone();
        let q = &mut act.queue;
        let m = &*self.metrics;
        let mut budget = PassBudget::new(q.size());
        let mut used = false;
        let end = loop {
            match queue::pop(q, &mem) {
                Ok(Some(chain)) => {
                    let head = chain.head_index();
                    let req = request::parse(&mem, chain, m);
                    if let Some((ops, bytes)) = req.cost() {
                        if !self.limiter.consume(ops, bytes) {
                            // Back on the ring: the same request is popped after the timer.
                            q.go_to_previous_position();
                            inc(&m.rate_limiter_throttled_events);
                            break PassEnd::Blocked;
                        }
                    }
                    let (len, moved) = request::run(&mut self.disk, &mem, req, m);
                    if let Err(e) = queue::add_used(q, &mem, head, len) {
                        break PassEnd::Broken(e);
                    }
                    used = true;
                    if !budget.spend(moved) {
                        break PassEnd::Yielded;
                    }
                }
                // Publish avail_event and catch requests that arrived meanwhile.
                Ok(None) => {
                    if !used {
                        inc(&m.no_avail_buffer);
                    }
                    match queue::rearm(q, &mem) {
                        Ok(true) if budget.turn() => continue,
                        Ok(true) => break PassEnd::Yielded,
                        Ok(false) => break PassEnd::Drained,
                        Err(e) => break PassEnd::Broken(e),
                    }
                }
                Err(e) => break PassEnd::Broken(e),
            }
        };
        queue::end_pass(q, &mem, &act.interrupt, (used, end), "virtio-blk")
    }
}

/// `virtio_blk_config` as bytes (virtio-bindings has the layout, vm-memory the bytes).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct BlkConfig(virtio_blk_config);

// SAFETY: virtio_blk_config is repr(C, packed) plain integers: no padding, and every
// bit pattern is a valid value.
unsafe impl ByteValued for BlkConfig {}

/// The configuration space of a disk of `nsectors` sectors.
fn config_space(nsectors: u64) -> Vec<u8> {
    let cfg = BlkConfig(virtio_blk_config {
        capacity: nsectors,
        seg_max: u32::from(QUEUE_SIZE - 2),
        blk_size: SECTOR_SIZE as u32,
        num_queues: 1,
        max_discard_sectors: MAX_DISCARD_SECTORS,
        max_discard_seg: 1,
        discard_sector_alignment: 8,
        max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
        max_write_zeroes_seg: 1,
        write_zeroes_may_unmap: 1,
        ..Default::default()
    });
    cfg.as_slice()[..CONFIG_LEN].to_vec()
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        let features = features & self.avail_features;
        self.disk.flush_negotiated = has(features, VIRTIO_BLK_F_FLUSH);
        self.disk.discard = has(features, VIRTIO_BLK_F_DISCARD);
        self.disk.write_zeroes = has(features, VIRTIO_BLK_F_WRITE_ZEROES);
        if self.disk.write_through() && !self.disk.read_only {
            log::info!(
                "virtio-blk: {}: driver did not negotiate FLUSH, writes are write-through",
                self.disk.path.display()
            );
        }
    }

    fn config_space(&self) -> &[u8] {
        &self.config
    }

    fn activate(
        &mut self,
        mem: Mem,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), Error> {
        let queue = super::single_queue(queues, "virtio-blk")
            .inspect_err(|_| inc(&self.metrics.activate_fails))?;
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.disk.flush_negotiated = false;
        self.disk.discard = false;
        self.disk.write_zeroes = false;
    }

    fn process_queue(&mut self, index: usize) -> bool {
        if index != 0 {
            return false;
        }
        inc(&self.metrics.queue_event_count);
        self.process()
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        self.limiter.timer_fd().into_iter().collect()
    }

    fn backend_interest(&self, _index: usize) -> EventSet {
        if self.active.is_some() {
            EventSet::IN
        } else {
            EventSet::empty()
        }
    }

    fn process_backend(&mut self, _index: usize, _events: EventSet) -> bool {
        // The rate limiter's timer: a throttled request may go now.
        self.limiter.on_timer();
        inc(&self.metrics.rate_limiter_event_count);
        self.process()
    }

    fn device_state(&self) -> Result<DeviceState, StateError> {
        Ok(DeviceState::Block(self.save()))
    }

    fn queue_positions(&self) -> Option<Vec<QueuePosition>> {
        self.positions()
    }

    fn restore_device_state(&mut self, state: &DeviceState) -> Result<(), StateError> {
        self.restore(state)
    }
}

#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod tests;
