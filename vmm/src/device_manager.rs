//! Puts devices on the buses: legacy devices at their fixed ports, the boot timer, and
//! virtio-mmio devices in consecutive slots from `VIRTIO_MMIO_BASE` with one GSI each.
//! It owns the interrupt wiring (irqfds) and the command-line entries that announce
//! virtio devices to Linux (`virtio_mmio.device=<size>@<base>:<irq>`).

use std::io::Write;
use std::sync::{Arc, Mutex};

use boot::layout;
use devices::legacy::serial::ReadFd;
use devices::legacy::{SerialDevice, SerialInput, I8042};
use devices::virtio::block::Block;
use devices::virtio::net::tap::Tap;
use devices::virtio::net::Net;
use devices::virtio::rng::Rng;
use devices::virtio::vsock::Vsock;
use devices::virtio::MmioTransport;
use devices::BootTimer;
use devices::{Bus, IrqLine};
use event_manager::SubscriberOps;
use kvm_ioctls::VmFd;
use util::time::BootTimestamps;
use vmm_sys_util::eventfd::EventFd;

use crate::error::{io, kvm_err, Error, Result};
use crate::event_loop::Manager;

/// Guest serial console I/O.
pub struct SerialIo {
    /// Where guest output goes.
    pub out: Box<dyn Write + Send>,
    /// Host input for the guest, if any.
    pub input: Option<Box<dyn ReadFd>>,
    /// Whether Ctrl-A x on `input` stops the VM (interactive terminals).
    pub escape: bool,
}

/// The legacy devices' state in a snapshot.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LegacyState {
    /// COM1.
    pub serial: devices::snapshot::SerialState,
    /// The keyboard controller.
    pub i8042: devices::snapshot::I8042State,
}

/// Devices attached to one VM.
pub struct DeviceManager {
    /// Port I/O bus.
    pub pio: Bus,
    /// MMIO bus.
    pub mmio: Bus,
    /// Command-line entries for the virtio-mmio devices.
    pub cmdline_extra: Vec<String>,
    /// Written by the i8042 on a guest reset.
    pub reset_evt: EventFd,
    /// Written on Ctrl-A x.
    pub quit_evt: EventFd,
    /// The virtio devices' threads (stopped and joined when dropped).
    pub device_threads: Vec<devices::virtio::DeviceThread>,
    /// The virtio-blk transports, in attach order (for post-boot changes and metrics).
    pub blocks: Vec<Arc<Mutex<MmioTransport<Block>>>>,
    /// The virtio-net transports, in attach order.
    pub nets: Vec<Arc<Mutex<MmioTransport<Net<Tap>>>>>,
    /// The virtio-rng transport, if there is one.
    pub rng: Option<Arc<Mutex<MmioTransport<Rng>>>>,
    /// The virtio-vsock transport, if there is one.
    pub vsock: Option<Arc<Mutex<MmioTransport<Vsock>>>>,
    /// The keyboard controller (the host presses Ctrl+Alt+Del through it).
    pub i8042: Option<Arc<Mutex<I8042>>>,
    /// COM1 (its state goes into snapshots).
    pub serial: Option<Arc<Mutex<SerialDevice>>>,
    next_slot: u64,
    next_irq: u32,
}

impl DeviceManager {
    /// An empty device manager.
    pub fn new() -> Result<Self> {
        Ok(Self {
            pio: Bus::new(),
            mmio: Bus::new(),
            cmdline_extra: Vec::new(),
            reset_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating reset eventfd"))?,
            quit_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating quit eventfd"))?,
            device_threads: Vec::new(),
            blocks: Vec::new(),
            nets: Vec::new(),
            rng: None,
            vsock: None,
            i8042: None,
            serial: None,
            next_slot: 0,
            next_irq: layout::VIRTIO_IRQ_BASE,
        })
    }

    /// An irqfd-backed interrupt line on `gsi`.
    pub fn irq_line(vm: &VmFd, gsi: u32) -> Result<IrqLine> {
        let line = IrqLine::new(gsi).map_err(io("creating irq eventfd"))?;
        vm.register_irqfd(&line.evt, gsi)
            .map_err(kvm_err("KVM_IRQFD"))?;
        Ok(line)
    }

    /// COM1, the i8042 and the boot timer; with `restore`, COM1 and the i8042 take the
    /// saved guest-visible state.
    pub fn attach_legacy(
        &mut self,
        vm: &VmFd,
        em: &mut Manager,
        serial: SerialIo,
        times: Arc<BootTimestamps>,
        restore: Option<&LegacyState>,
    ) -> Result<()> {
        let drained = EventFd::new(libc::EFD_NONBLOCK).map_err(io("creating serial eventfd"))?;
        let irq = Self::irq_line(vm, layout::COM1_IRQ)?;
        let drained2 = drained.try_clone().map_err(io("cloning eventfd"))?;
        let uart = match restore {
            None => SerialDevice::new(irq, serial.out, drained2),
            Some(r) => SerialDevice::restore(irq, serial.out, drained2, &r.serial)
                .map_err(Error::DeviceState)?,
        };
        let uart = Arc::new(Mutex::new(uart));
        self.serial = Some(uart.clone());
        self.insert_pio(uart.clone(), layout::COM1_PORT, 8)?;
        if let Some(input) = serial.input {
            let quit = match serial.escape {
                true => Some(self.quit_evt.try_clone().map_err(io("cloning eventfd"))?),
                false => None,
            };
            let sub = SerialInput::new(uart, input, drained, quit);
            em.add_subscriber(Arc::new(Mutex::new(sub)));
        }
        let reset = self.reset_evt.try_clone().map_err(io("cloning eventfd"))?;
        let kbd_irq = Self::irq_line(vm, layout::I8042_KBD_IRQ)?;
        let mut kbd = I8042::new(reset).with_keyboard_irq(Box::new(kbd_irq));
        if let Some(r) = restore {
            kbd.restore_state(&r.i8042).map_err(Error::DeviceState)?;
        }
        let i8042 = Arc::new(Mutex::new(kbd));
        self.insert_pio(i8042.clone(), layout::I8042_DATA_PORT, 5)?;
        self.i8042 = Some(i8042);
        self.mmio
            .insert(
                Arc::new(Mutex::new(BootTimer::new(times))),
                layout::BOOT_TIMER_ADDR,
                0x1000,
            )
            .map_err(Error::from)
    }

    fn insert_pio(&mut self, dev: devices::bus::SharedDevice, port: u16, len: u64) -> Result<()> {
        self.pio
            .insert(dev, u64::from(port), len)
            .map_err(Error::from)
    }

    /// Reserves the next virtio-mmio slot: `(base, gsi)`.
    pub fn next_virtio_slot(&mut self) -> Result<(u64, u32)> {
        if self.next_irq > layout::VIRTIO_IRQ_LAST {
            let max = layout::VIRTIO_IRQ_LAST - layout::VIRTIO_IRQ_BASE + 1;
            return Err(Error::TooManyDevices { max });
        }
        let base = layout::VIRTIO_MMIO_BASE + self.next_slot * layout::VIRTIO_MMIO_SIZE;
        let irq = self.next_irq;
        self.next_slot += 1;
        self.next_irq += 1;
        // Formatted here, not with linux-loader's add_virtio_mmio_device: that needs its
        // Cmdline, which Kiln does not use (see boot/src/cmdline.rs for why).
        self.cmdline_extra.push(format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            layout::VIRTIO_MMIO_SIZE >> 10,
            base,
            irq
        ));
        Ok((base, irq))
    }
}
