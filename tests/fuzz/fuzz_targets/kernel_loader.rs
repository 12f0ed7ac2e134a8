//! The kernel loaders (ELF vmlinux with or without the PVH note, bzImage) and the rest
//! of `boot::load` (command line, initrd, boot tables) over arbitrary images.
//!
//! Input: `flags` (bits 0-1 protocol: auto, linux64, pvh, auto; bit 2: an initrd
//! follows; bit 3: raw vCPU count), `cpus`, `u16` memory size step (2 MiB + n * 512
//! bytes), `u8` command-line length and the command line, then if bit 2 a `u16` initrd
//! length and the initrd, then the kernel image (everything left).
//! Checked beyond "no panic": a successful load places kernel and initrd inside RAM,
//! apart, and the entry point inside the kernel's footprint.

#![no_main]

use std::sync::OnceLock;

use boot::layout::{ram_regions, HIMEM_START};
use boot::{BootConfig, BootProtocol, EntryPoint, GuestMemoryMmap};
use kiln_fuzz::host::MemFile;
use kiln_fuzz::input::Input;
use libfuzzer_sys::fuzz_target;
use vm_memory::GuestAddress;

const MIN_MEM: u64 = 2 << 20;
const MAX_MEM: u64 = MIN_MEM + (u16::MAX as u64) * 512;

struct Host {
    mem: GuestMemoryMmap,
    kernel: MemFile,
    initrd: MemFile,
}

fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let ranges: Vec<_> = ram_regions(MAX_MEM)
            .into_iter()
            .map(|(s, n)| (GuestAddress(s), n as usize))
            .collect();
        Host {
            mem: GuestMemoryMmap::from_ranges(&ranges).expect("guest memory"),
            kernel: MemFile::new("kiln-fuzz-kernel").expect("memfd"),
            initrd: MemFile::new("kiln-fuzz-initrd").expect("memfd"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let h = host();
    let mut inp = Input::new(data);
    let flags = inp.u8();
    let protocol = match flags & 3 {
        1 => BootProtocol::Linux64,
        2 => BootProtocol::Pvh,
        _ => BootProtocol::Auto,
    };
    let cpus = match inp.u8() {
        c if flags & 8 != 0 => c,
        c => c % 8 + 1,
    };
    let mem_size = MIN_MEM + u64::from(inp.u16()) * 512;
    let cmdline_len = usize::from(inp.u8());
    let cmdline = String::from_utf8_lossy(inp.bytes(cmdline_len)).into_owned();
    let initrd_path = if flags & 4 != 0 {
        let n = usize::from(inp.u16());
        h.initrd.set(inp.bytes(n)).expect("memfd write");
        Some(h.initrd.path())
    } else {
        None
    };
    h.kernel.set(inp.rest()).expect("memfd write");
    let kernel_path = h.kernel.path();
    let cfg = BootConfig {
        kernel: &kernel_path,
        initrd: initrd_path.as_deref(),
        cmdline: &cmdline,
        mem_size,
        cpus,
        protocol,
    };
    let res = boot::load(&h.mem, &cfg);
    if kiln_fuzz::verbose() {
        eprintln!("kernel_loader: {res:x?}");
    }
    let Ok(info) = res else { return };
    let (start, end) = (info.kernel_start, info.kernel_end);
    assert!(
        HIMEM_START <= start && start < end && end <= mem_size,
        "{info:x?}"
    );
    let entry = match info.entry {
        EntryPoint::Linux64 { rip, .. } => rip,
        EntryPoint::Pvh { eip, .. } => eip,
    };
    assert!(
        start <= entry && entry < end,
        "entry outside the kernel: {info:x?}"
    );
    if let Some((addr, size)) = info.initrd {
        let iend = addr + size;
        assert!(
            iend <= mem_size && (iend <= start || addr >= end),
            "{info:x?}"
        );
    }
});
