//! Attaches the configured virtio-blk and virtio-net devices.

use boot::GuestMemoryMmap;
use kvm_ioctls::VmFd;

use crate::config::VmConfig;
use crate::device_manager::DeviceManager;
use crate::error::{Error, Result};
use crate::event_loop::Manager;

/// Attaches every disk and net from `cfg`, in that order.
pub fn attach_all(
    cfg: &VmConfig,
    _vm: &VmFd,
    _mem: &std::sync::Arc<GuestMemoryMmap>,
    _devices: &mut DeviceManager,
    _em: &mut Manager,
) -> Result<()> {
    if !cfg.disks.is_empty() || !cfg.nets.is_empty() {
        return Err(Error::Device("virtio devices are not available yet".into()));
    }
    Ok(())
}
