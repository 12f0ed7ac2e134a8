//! What the VMM changes on a disk after boot (Firecracker's `PATCH /drives/{id}`):
//! its rate limiter and its backing image.
//!
//! Both run with the device model's lock held, so never in the middle of a request.

use std::path::Path;
use std::sync::Arc;

use super::{config_space, disk_file, serial, Block, Image};
use crate::metrics::{inc, BlockMetrics};
use crate::rate_limiter::RateLimiterConfig;
use crate::virtio::Error;

impl Block {
    /// The device's counters (shared: the device keeps counting into them).
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.metrics.clone()
    }

    /// Replaces the rate limits (an all-`None` config removes them). A request held
    /// back by the old limits is retried at once.
    pub fn update_rate_limiter(&mut self, cfg: &RateLimiterConfig) {
        self.limiter.update(cfg);
        inc(&self.metrics.update_count);
    }

    /// Makes `path` the disk's image: opened and locked like [`Block::new`] does, with
    /// the disk's read-only setting. On success the capacity in the configuration space
    /// follows the new image (the caller then tells the driver through the transport's
    /// `notify_config_change`), so does a serial that was derived from the old image, and
    /// the old image is closed (its lock released). On error the old image stays in use.
    ///
    /// When `path` is the image already open (same device and inode), the open file and
    /// its lock are kept and only its size is read again (the image was resized).
    pub fn replace_disk(&mut self, path: &Path) -> Result<(), Error> {
        let res = if disk_file::is_same_file(&self.disk.file, path) {
            // Opening it again would conflict with our own lock.
            disk_file::size(&self.disk.file, path).map(|size| {
                self.disk.path = path.to_path_buf();
                self.set_nsectors(super::sectors(size, path));
            })
        } else {
            Image::open(path, self.disk.read_only).map(|image| self.install(image, path))
        };
        let counter = match res {
            Ok(()) => &self.metrics.update_count,
            Err(_) => &self.metrics.update_fails,
        };
        inc(counter);
        res
    }

    fn install(&mut self, image: Image, path: &Path) {
        let disk = &mut self.disk;
        disk.file = image.file;
        disk.path = path.to_path_buf();
        if disk.id_derived {
            disk.id = serial(&image.derived_id);
        }
        self.set_nsectors(image.nsectors);
    }

    fn set_nsectors(&mut self, nsectors: u64) {
        self.disk.nsectors = nsectors;
        self.config = config_space(nsectors);
    }
}

#[cfg(test)]
mod tests;
