//! Tiny crafted kernel images for the unit tests.

use linux_loader::loader::bootparam::setup_header;
use vm_memory::ByteValued;
use vmm_sys_util::tempfile::TempFile;

/// One PT_LOAD segment.
pub struct Seg {
    pub paddr: u64,
    pub data: Vec<u8>,
    pub memsz: u64,
}

/// Builds an x86-64 ELF with `segs`, `entry`, and optionally a PVH note for `pvh`.
pub fn elf(entry: u64, segs: &[Seg], pvh: Option<u32>) -> Vec<u8> {
    let phnum = segs.len() + usize::from(pvh.is_some());
    let mut data_off = 64 + 56 * phnum;
    let mut out = vec![0u8; 64];
    out[..4].copy_from_slice(b"\x7fELF");
    out[4] = 2; // ELFCLASS64
    out[5] = 1; // little endian
    out[6] = 1; // EV_CURRENT
    out[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out[20..24].copy_from_slice(&1u32.to_le_bytes());
    out[24..32].copy_from_slice(&entry.to_le_bytes());
    out[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    out[52..54].copy_from_slice(&64u16.to_le_bytes());
    out[54..56].copy_from_slice(&56u16.to_le_bytes());
    out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
    let mut payload = Vec::new();
    let phdr = |p_type: u32, off: usize, paddr: u64, filesz: u64, memsz: u64| {
        let mut p = vec![0u8; 56];
        p[0..4].copy_from_slice(&p_type.to_le_bytes());
        p[8..16].copy_from_slice(&(off as u64).to_le_bytes());
        p[16..24].copy_from_slice(&paddr.to_le_bytes());
        p[24..32].copy_from_slice(&paddr.to_le_bytes());
        p[32..40].copy_from_slice(&filesz.to_le_bytes());
        p[40..48].copy_from_slice(&memsz.to_le_bytes());
        p
    };
    let mut phdrs = Vec::new();
    for s in segs {
        phdrs.extend(phdr(1, data_off, s.paddr, s.data.len() as u64, s.memsz));
        payload.extend_from_slice(&s.data);
        data_off += s.data.len();
    }
    if let Some(e) = pvh {
        // A dummy note first, then XEN_ELFNOTE_PHYS32_ENTRY (18) with name "Xen".
        let mut note = Vec::new();
        for (name, ty, desc) in [(&b"GNU\0"[..], 3u32, 0xabcdu32), (&b"Xen\0"[..], 18, e)] {
            note.extend_from_slice(&(name.len() as u32).to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&ty.to_le_bytes());
            note.extend_from_slice(name);
            note.extend_from_slice(&desc.to_le_bytes());
        }
        phdrs.extend(phdr(4, data_off, 0, note.len() as u64, note.len() as u64));
        payload.extend_from_slice(&note);
    }
    out.extend(phdrs);
    out.extend(payload);
    out
}

/// A simple valid ELF kernel at 16 MiB: 0x2000 bytes of code, 0x3000 total, entry at start.
pub fn simple_elf(pvh: Option<u32>) -> Vec<u8> {
    let data: Vec<u8> = (0..0x2000u32).map(|i| (i % 251) as u8).collect();
    elf(
        0x100_0000,
        &[Seg {
            paddr: 0x100_0000,
            data,
            memsz: 0x3000,
        }],
        pvh,
    )
}

/// bzImage parameters.
pub struct Bz {
    pub version: u16,
    pub setup_sects: u8,
    pub loadflags: u8,
    pub xloadflags: u16,
    pub code32_start: u32,
    pub payload_len: usize,
    pub init_size: u32,
    pub pref_address: u64,
    pub kernel_alignment: u32,
    pub cmdline_size: u32,
    pub initrd_addr_max: u32,
}

impl Default for Bz {
    fn default() -> Self {
        Bz {
            version: 0x020f,
            setup_sects: 4,
            loadflags: 1,
            xloadflags: 1,
            code32_start: 0x10_0000,
            payload_len: 0x4000,
            init_size: 0x80_0000,
            pref_address: 0x100_0000,
            kernel_alignment: 0x20_0000,
            cmdline_size: 0x7ff,
            initrd_addr_max: 0x7fff_ffff,
        }
    }
}

/// Builds a bzImage: setup sectors with the header at 0x1f1, then the payload.
pub fn bzimage(b: &Bz) -> Vec<u8> {
    let sects = if b.setup_sects == 0 {
        4
    } else {
        usize::from(b.setup_sects)
    };
    let setup = (sects + 1) * 512;
    let mut out = vec![0u8; setup];
    let hdr = setup_header {
        setup_sects: b.setup_sects,
        syssize: (b.payload_len as u32).div_ceil(16),
        boot_flag: 0xaa55,
        jump: 0x66eb,
        header: 0x5372_6448,
        version: b.version,
        loadflags: b.loadflags,
        code32_start: b.code32_start,
        initrd_addr_max: b.initrd_addr_max,
        kernel_alignment: b.kernel_alignment,
        relocatable_kernel: 1,
        xloadflags: b.xloadflags,
        cmdline_size: b.cmdline_size,
        pref_address: b.pref_address,
        init_size: b.init_size,
        ..Default::default()
    };
    out[0x1f1..0x1f1 + std::mem::size_of::<setup_header>()].copy_from_slice(hdr.as_slice());
    out.extend((0..b.payload_len).map(|i| (i % 253) as u8));
    out
}

/// Writes `bytes` to a fresh temporary file.
pub fn file(bytes: &[u8]) -> TempFile {
    let f = TempFile::new().unwrap();
    std::fs::write(f.as_path(), bytes).unwrap();
    f
}

/// Reads `len` bytes of guest memory at `addr` (test helper).
pub fn read_guest(mem: &crate::GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    use vm_memory::{Bytes, GuestAddress};
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}
