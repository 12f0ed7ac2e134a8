//! virtio-blk behind the virtio-mmio transport, driven like a guest driver would:
//! registers for initialization, then descriptor chains and requests written into
//! guest memory from the input, QueueNotify, and the queue run on this thread.
//!
//! Input: the `kiln_fuzz::script` header (one queue; target bit 3 of `layout` opens
//! the disk read-only) and ops; ops 10 and 11 read the device configuration space
//! (`offset` u8, `width` u8 % 9). The disk: 64 KiB of zeros at the start of every input.

#![no_main]

use devices::bus::BusDevice;
use devices::virtio::block::{Block, BlockConfig};
use kiln_fuzz::host::fresh_disk;
use kiln_fuzz::input::Input;
use kiln_fuzz::script::Session;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const DISK_SIZE: u64 = 64 << 10;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    let mut s = Session::start(&mut inp, 1, |bits| {
        Block::new(BlockConfig {
            path: fresh_disk(DISK_SIZE),
            read_only: bits & 1 != 0,
            id: None,
            ..Default::default()
        })
        .expect("disk opens")
    });
    s.run(&mut inp, |_, s, inp| {
        let offset = 0x100 + u64::from(inp.u8());
        let mut buf = [0u8; 8];
        let w = usize::from(inp.u8() % 9);
        s.drv.t.read(offset, &mut buf[..w]);
    });
    if kiln_fuzz::verbose() {
        let mut st = [0u8; 4];
        let _ = s.mem.read_slice(&mut st, GuestAddress(0x5000));
        eprintln!("virtio_blk: status bytes at 0x5000 (as the seeds place them): {st:?}");
    }
});
