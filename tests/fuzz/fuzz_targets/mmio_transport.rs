//! The virtio-mmio register block itself: arbitrary sequences of reads and writes at any
//! offset and width (inside the slot and past it), interleaved with queue passes, on a
//! transport around a virtio-blk device.
//!
//! Input: `layout` u8 (guest memory as in `kiln_fuzz::script`; bit 2 read-only disk),
//! then ops (`op % 5`, at most 1024): 0 write (`offset` u16 % 0x1200, `width` u8 % 9,
//! `value` u64, little-endian bytes); 1 read (`offset`, `width`); 2 run the notified
//! queues; 3 write guest memory (`addr` u16, `len` u8, bytes); 4 the whole driver
//! initialization with one queue (`features` u32, `size` u8, `desc`, `avail`, `used`
//! u16), to get past it quickly.
//! Checked beyond "no panic": the identification registers still read right at the end;
//! `InterruptStatus` has only the two defined bits after every pass.

#![no_main]

use std::sync::Arc;

use devices::bus::BusDevice;
use devices::virtio::block::{Block, BlockConfig};
use devices::virtio::MmioTransport;
use kiln_fuzz::driver::{reg, Driver, F_VERSION_1, MAGIC};
use kiln_fuzz::host::{fresh_disk, CountingIrq};
use kiln_fuzz::input::Input;
use kiln_fuzz::ring::DriverRing;
use kiln_fuzz::script::{guest_memory, queue_size};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const MAX_OPS: usize = 1024;

fn check_identity(d: &mut Driver<Block>) {
    assert_eq!(d.read(reg::MAGIC), MAGIC);
    assert_eq!(d.read(reg::VERSION), 2);
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let layout = inp.u8();
    let mem = guest_memory(layout);
    let blk = Block::new(BlockConfig {
        path: fresh_disk(16 << 10),
        read_only: layout & 4 != 0,
        id: Some("fuzz".into()),
        ..Default::default()
    })
    .expect("disk opens");
    let irq = Arc::new(CountingIrq::default());
    let t = MmioTransport::new(blk, mem.clone(), irq).expect("transport");
    let mut d = Driver::new(t);
    for _ in 0..MAX_OPS {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 5 {
            0 => {
                let offset = u64::from(inp.u16() % 0x1200);
                let w = usize::from(inp.u8() % 9);
                let v = inp.u64().to_le_bytes();
                d.t.write(offset, &v[..w]);
            }
            1 => {
                let offset = u64::from(inp.u16() % 0x1200);
                let w = usize::from(inp.u8() % 9);
                let mut buf = [0u8; 8];
                d.t.read(offset, &mut buf[..w]);
            }
            2 => {
                d.run();
            }
            3 => {
                let addr = u64::from(inp.u16());
                let len = usize::from(inp.u8());
                let _ = mem.write_slice(inp.bytes(len), GuestAddress(addr));
            }
            _ => {
                let features = F_VERSION_1 | u64::from(inp.u32());
                let size = inp.u8();
                let ring = DriverRing {
                    size: queue_size(size),
                    desc: u64::from(inp.u16()),
                    avail: u64::from(inp.u16()),
                    used: u64::from(inp.u16()),
                    avail_idx: 0,
                };
                d.setup(features, &[ring]);
            }
        }
    }
    check_identity(&mut d);
    d.run();
    if kiln_fuzz::verbose() {
        let used: Option<u16> = mem.read_obj(GuestAddress(0x2002)).ok();
        let st = d.read(reg::STATUS);
        eprintln!("mmio_transport: status {st:#x}, used idx at 0x2002 {used:?}");
    }
});
