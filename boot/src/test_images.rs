//! Tiny crafted kernel images for the unit tests.

use std::mem::size_of;

use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Nhdr, Elf64_Phdr, EI_CLASS, EI_DATA, EI_VERSION, ELFCLASS64, ELFDATA2LSB,
    ELFMAG, EM_X86_64, ET_EXEC, EV_CURRENT, PT_LOAD, PT_NOTE, SELFMAG,
};
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
    let (ehsize, phsize) = (size_of::<Elf64_Ehdr>(), size_of::<Elf64_Phdr>());
    let phnum = segs.len() + usize::from(pvh.is_some());
    let mut data_off = (ehsize + phsize * phnum) as u64;
    let mut ident = [0u8; 16];
    ident[..SELFMAG].copy_from_slice(ELFMAG);
    ident[EI_CLASS] = ELFCLASS64;
    ident[EI_DATA] = ELFDATA2LSB;
    ident[EI_VERSION] = EV_CURRENT;
    let ehdr = Elf64_Ehdr {
        e_ident: ident,
        e_type: ET_EXEC,
        e_machine: EM_X86_64,
        e_version: u32::from(EV_CURRENT),
        e_entry: entry,
        e_phoff: ehsize as u64,
        e_ehsize: ehsize as u16,
        e_phentsize: phsize as u16,
        e_phnum: phnum as u16,
        ..Default::default()
    };
    let mut out = ehdr.as_slice().to_vec();
    let mut payload = Vec::new();
    let phdr = |p_type: u32, p_offset: u64, paddr: u64, p_filesz: u64, p_memsz: u64| Elf64_Phdr {
        p_type,
        p_offset,
        p_vaddr: paddr,
        p_paddr: paddr,
        p_filesz,
        p_memsz,
        ..Default::default()
    };
    for s in segs {
        let len = s.data.len() as u64;
        out.extend_from_slice(phdr(PT_LOAD, data_off, s.paddr, len, s.memsz).as_slice());
        payload.extend_from_slice(&s.data);
        data_off += len;
    }
    if let Some(e) = pvh {
        // A dummy note first, then XEN_ELFNOTE_PHYS32_ENTRY (18) with name "Xen".
        let mut note = Vec::new();
        for (name, n_type, desc) in [(&b"GNU\0"[..], 3u32, 0xabcdu32), (&b"Xen\0"[..], 18, e)] {
            let nhdr = Elf64_Nhdr {
                n_namesz: name.len() as u32,
                n_descsz: 4,
                n_type,
            };
            note.extend_from_slice(nhdr.as_slice());
            note.extend_from_slice(name);
            note.extend_from_slice(&desc.to_le_bytes());
        }
        let len = note.len() as u64;
        out.extend_from_slice(phdr(PT_NOTE, data_off, 0, len, len).as_slice());
        payload.extend_from_slice(&note);
    }
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
