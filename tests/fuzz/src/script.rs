//! The op script the device targets share: a header choosing guest memory layout,
//! features and queue placement, then driver actions read one by one off the input.
//!
//! Header: `layout` (bits 0-1 memory: 0/3 one 64 KiB region, 1 two adjacent 32 KiB
//! regions, 2 two regions with a hole at 0x7000..0x8000; bit 2 EVENT_IDX; bits 3-7 for
//! the target), `features` u32 (low feature word the driver accepts, masked by nothing:
//! offering what the device did not is part of the game), then per queue `size` u8
//! (< 0x80: 1 << (size % 9), else size & 0x7f) and `desc`, `avail`, `used` u16 addresses.
//!
//! Ops (`op % 12`, at most [`MAX_OPS`]): 0 write guest memory (`addr` u16, `len` u8,
//! bytes); 1 descriptor (`queue` u8, `index` u16, `addr` u32, `len` u32, `flags` u16,
//! `next` u16); 2 publish a head (`queue` u8, `head` u16); 3 set the available index
//! (`queue` u8, `idx` u16); 4 suppression (`queue` u8, avail `flags` u16, `used_event`
//! u16); 5 QueueNotify (`value` u8) and run; 6 run; 7 register write (`offset` u8 * 4,
//! `value` u32); 8 register read (`offset` u16, `width` u8 % 9); 9 reset and set up
//! again; 10, 11 target-specific.

use std::sync::Arc;

use devices::bus::BusDevice;
use devices::virtio::{Mem, MmioTransport, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::driver::{Driver, F_EVENT_IDX, F_VERSION_1};
use crate::host::CountingIrq;
use crate::input::Input;
use crate::ring::{Desc, DriverRing};

/// Ops run per input at most.
pub const MAX_OPS: usize = 512;
/// Guest memory size.
pub const MEM_SIZE: u64 = 0x1_0000;

/// Guest memory for layout bits `sel` (see the module doc).
pub fn guest_memory(sel: u8) -> Mem {
    let half = (MEM_SIZE / 2) as usize;
    let ranges: Vec<(GuestAddress, usize)> = match sel & 3 {
        1 => vec![(GuestAddress(0), half), (GuestAddress(half as u64), half)],
        2 => vec![(GuestAddress(0), 0x7000), (GuestAddress(0x8000), half)],
        _ => vec![(GuestAddress(0), MEM_SIZE as usize)],
    };
    Arc::new(GuestMemoryMmap::from_ranges(&ranges).expect("guest memory"))
}

/// A driver session on one device.
pub struct Session<D: VirtioDevice> {
    /// The driver and its transport.
    pub drv: Driver<D>,
    /// Guest memory.
    pub mem: Mem,
    /// The queues as the driver placed them.
    pub rings: Vec<DriverRing>,
    /// The target's header bits (3-7 of `layout`).
    pub target_bits: u8,
    features: u64,
}

/// Queue size for selector `sel` (see the module doc).
pub fn queue_size(sel: u8) -> u16 {
    if sel < 0x80 {
        1 << (sel % 9)
    } else {
        u16::from(sel & 0x7f)
    }
}

impl<D: VirtioDevice> Session<D> {
    /// Reads the header, builds the transport around `make(target_bits)` and sets it up.
    pub fn start(inp: &mut Input, nqueues: usize, make: impl FnOnce(u8) -> D) -> Self {
        let layout = inp.u8();
        let mem = guest_memory(layout);
        let device = make(layout >> 3);
        let irq = Arc::new(CountingIrq::default());
        let t = MmioTransport::new(device, mem.clone(), irq).expect("transport");
        let mut drv = Driver::new(t);
        let offered = drv.device_features();
        let low = u64::from(inp.u32()) & !F_EVENT_IDX;
        let mut features = F_VERSION_1 | low | (offered & !0xffff_ffff);
        if layout & 4 != 0 {
            features |= F_EVENT_IDX;
        }
        let rings = (0..nqueues)
            .map(|_| DriverRing {
                size: queue_size(inp.u8()),
                desc: u64::from(inp.u16()),
                avail: u64::from(inp.u16()),
                used: u64::from(inp.u16()),
                avail_idx: 0,
            })
            .collect::<Vec<_>>();
        let mut s = Self {
            drv,
            mem,
            rings,
            target_bits: layout >> 3,
            features,
        };
        s.setup();
        s
    }

    fn setup(&mut self) {
        for r in &mut self.rings {
            r.avail_idx = 0;
            r.set_avail_idx(&self.mem, 0);
        }
        self.drv.setup(self.features, &self.rings);
    }

    fn ring(&mut self, inp: &mut Input) -> Option<&mut DriverRing> {
        let n = self.rings.len();
        self.rings.get_mut(usize::from(inp.u8()) % n.max(1))
    }

    /// Runs ops until the input ends; ops 10 and 11 go to `extra(op, session, input)`.
    pub fn run(&mut self, inp: &mut Input, mut extra: impl FnMut(u8, &mut Self, &mut Input)) {
        for _ in 0..MAX_OPS {
            if inp.is_empty() {
                break;
            }
            let op = inp.u8() % 12;
            self.step(op, inp, &mut extra);
        }
        self.drv.run();
        if crate::verbose() {
            let used: Vec<_> = self.rings.iter().map(|r| r.used_idx(&self.mem)).collect();
            let status = self.drv.read(crate::driver::reg::STATUS);
            eprintln!("session: status {status:#x}, used indexes {used:?}");
        }
    }

    fn step(&mut self, op: u8, inp: &mut Input, extra: &mut impl FnMut(u8, &mut Self, &mut Input)) {
        let mem = self.mem.clone();
        match op {
            0 => {
                let addr = u64::from(inp.u16());
                let len = usize::from(inp.u8());
                let _ = mem.write_slice(inp.bytes(len), GuestAddress(addr));
            }
            1 => {
                let Some(r) = self.ring(inp) else { return };
                let index = inp.u16();
                let d = Desc {
                    addr: u64::from(inp.u32()),
                    len: inp.u32(),
                    flags: inp.u16(),
                    next: inp.u16(),
                };
                r.set_desc(&mem, index, d);
            }
            2 => {
                let Some(r) = self.ring(inp) else { return };
                let head = inp.u16();
                r.publish(&mem, head);
            }
            3 => {
                let Some(r) = self.ring(inp) else { return };
                let idx = inp.u16();
                r.set_avail_idx(&mem, idx);
            }
            4 => {
                let Some(r) = self.ring(inp) else { return };
                let (flags, used_event) = (inp.u16(), inp.u16());
                r.set_suppression(&mem, flags, used_event);
            }
            5 => {
                let q = inp.u8();
                self.drv.notify(u32::from(q));
            }
            6 => {
                self.drv.run();
            }
            7 => {
                let offset = u64::from(inp.u8()) * 4;
                let v = inp.u32();
                self.drv.write(offset, v);
            }
            8 => {
                let offset = u64::from(inp.u16());
                let mut buf = [0u8; 8];
                let w = usize::from(inp.u8() % 9);
                self.drv.t.read(offset, &mut buf[..w]);
            }
            9 => self.setup(),
            _ => extra(op, self, inp),
        }
    }
}
