//! Attaches the configured virtio-blk, virtio-net and virtio-rng devices: one virtio-mmio slot and
//! GSI each, QueueNotify on ioeventfds, interrupts on irqfds, queues on a thread of the
//! device's own (so disk and network I/O never hold up the event loop or a vCPU).

use std::sync::{Arc, Mutex};

use boot::GuestMemoryMmap;
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::net::tap::Tap;
use devices::virtio::net::Net;
use devices::virtio::rng::Rng;
use devices::virtio::vsock::Vsock;
use devices::virtio::{DeviceThread, MmioTransport, ThreadSetup, VirtioDevice};
use kvm_ioctls::{IoEventAddress, VmFd};

use crate::config::{parse_mac, NetConfig, VmConfig};
use crate::confine::Confinement;
use crate::device_manager::DeviceManager;
use crate::error::{io, kvm_err, Error, Result};
use crate::seccomp::ThreadKind;
use crate::snapshot::DevicesState;
use devices::snapshot::MmioState;

/// Attaches every disk and net from `cfg`, disks first, in the order given; with
/// `restore`, each transport and device takes its saved state (the guest sees no
/// re-negotiation).
pub fn attach_all(
    cfg: &VmConfig,
    vm: &VmFd,
    mem: &Arc<GuestMemoryMmap>,
    devices: &mut DeviceManager,
    confine: &Arc<Confinement>,
    restore: Option<&DevicesState>,
) -> Result<()> {
    if let Some(r) = restore {
        if r.blocks.len() != cfg.disks.len()
            || r.nets.len() != cfg.nets.len()
            || r.rng.is_some() != cfg.rng.is_some()
            || r.vsock.is_some() != cfg.vsock.is_some()
        {
            return Err(Error::SnapshotDevices {
                disks: r.blocks.len(),
                nets: r.nets.len(),
            });
        }
    }
    let wiring = Wiring { vm, mem, confine };
    for (i, disk) in cfg.disks.iter().enumerate() {
        let dev = Block::new(BlockConfig {
            path: disk.path.clone(),
            read_only: disk.readonly,
            id: disk.id.clone(),
            rate_limiter: disk.rate_limiter,
            cache: disk.cache.into(),
        })?;
        let state = restore.and_then(|r| r.blocks.get(i));
        let t = wiring.attach(dev, &format!("kiln-blk{i}"), devices, state)?;
        devices.blocks.push(t);
    }
    for (i, net) in cfg.nets.iter().enumerate() {
        let tap = Tap::open(&net.tap)?;
        let mut dev = Net::new(tap, mac_for(net))?;
        if net.rx_rate_limiter.is_some() || net.tx_rate_limiter.is_some() {
            dev.set_rate_limiters(
                &net.rx_rate_limiter.unwrap_or_default(),
                &net.tx_rate_limiter.unwrap_or_default(),
            )
            .map_err(io("setting up a rate limiter"))?;
        }
        let state = restore.and_then(|r| r.nets.get(i));
        let t = wiring.attach(dev, &format!("kiln-net{i}"), devices, state)?;
        devices.nets.push(t);
    }
    if let Some(rng) = &cfg.rng {
        let dev = Rng::new(rng.rate_limiter)?;
        let state = restore.and_then(|r| r.rng.as_ref());
        devices.rng = Some(wiring.attach(dev, "kiln-rng", devices, state)?);
    }
    if let Some(v) = &cfg.vsock {
        let dev = Vsock::new(v.cid, &v.uds_path).map_err(Error::Vsock)?;
        let state = restore.and_then(|r| r.vsock.as_ref());
        devices.vsock = Some(wiring.attach(dev, "kiln-vsock", devices, state)?);
    }
    Ok(())
}

/// The configured MAC, or a locally administered one derived from the TAP name.
pub fn mac_for(net: &NetConfig) -> [u8; 6] {
    if let Some(mac) = net.mac.as_deref().and_then(parse_mac) {
        return mac;
    }
    let h = net.tap.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let b = h.to_be_bytes();
    [0x02, 0x4b, b[0], b[1], b[2], b[3]]
}

/// A device thread's first act: give up its capabilities and install its filter.
fn device_setup(confine: &Arc<Confinement>) -> ThreadSetup {
    let confine = confine.clone();
    Box::new(move || {
        confine
            .enter(ThreadKind::Device)
            .map_err(std::io::Error::other)
    })
}

/// What every virtio device is wired to: the VM, guest memory, the threads' confinement.
struct Wiring<'a> {
    vm: &'a VmFd,
    mem: &'a Arc<GuestMemoryMmap>,
    confine: &'a Arc<Confinement>,
}

impl Wiring<'_> {
    /// Puts `dev` in the next virtio-mmio slot (restored from `restore` if given), with
    /// its ioeventfds, irqfd and device thread `name`.
    fn attach<D: VirtioDevice + Send + 'static>(
        &self,
        dev: D,
        name: &str,
        devices: &mut DeviceManager,
        restore: Option<&MmioState>,
    ) -> Result<Arc<Mutex<MmioTransport<D>>>> {
        let (vm, mem, confine) = (self.vm, self.mem, self.confine);
        let (base, gsi) = devices.next_virtio_slot()?;
        let irq = Arc::new(DeviceManager::irq_line(vm, gsi)?);
        let transport = match restore {
            None => MmioTransport::new(dev, mem.clone(), irq)?,
            Some(state) => {
                MmioTransport::restore(dev, mem.clone(), irq, state).map_err(Error::DeviceState)?
            }
        };
        for (addr, datamatch, evt) in transport.ioevents(base) {
            vm.register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
                .map_err(kvm_err("KVM_IOEVENTFD"))?;
        }
        let worker = transport
            .worker()
            .and_then(|w| DeviceThread::spawn(name, w, device_setup(confine)))?;
        devices.device_threads.push(worker);
        let transport = Arc::new(Mutex::new(transport));
        devices
            .mmio
            .insert(transport.clone(), base, boot::layout::VIRTIO_MMIO_SIZE)?;
        log::debug!("virtio-mmio device at {base:#x}, GSI {gsi}, thread {name}");
        Ok(transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_stable_and_local() {
        let n = NetConfig {
            tap: "kiln0".into(),
            ..Default::default()
        };
        let m = mac_for(&n);
        assert_eq!(m, mac_for(&n));
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
        let n2 = NetConfig {
            tap: "kiln0".into(),
            mac: Some("aa:bb:cc:dd:ee:ff".into()),
            ..Default::default()
        };
        assert_eq!(mac_for(&n2), [0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]);
    }
}
