//! Kernel image detection, validation and loading (ELF vmlinux or bzImage).
//!
//! The images are checked here first, so that every problem gets a precise error, and then
//! loaded with `linux-loader`. linux-loader 0.14 does not check the ELF class or machine,
//! segment bounds against the file or guest RAM, segments below high memory, the bzImage
//! protocol version beyond 2.00, the 64-bit entry flag, or the decompression footprint;
//! those checks are done here.
//!
//! References: ELF-64 Object File Format 1.5 (headers), Documentation/arch/x86/boot.rst
//! (bzImage setup header, "64-bit Boot Protocol"), the Xen PVH doc (PVH ELF note).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Phdr, EI_CLASS, EI_DATA, ELFCLASS32, ELFCLASS64, ELFDATA2LSB, EM_X86_64,
    PT_LOAD,
};
use linux_loader::loader::bootparam::{setup_header, LOADED_HIGH, XLF_KERNEL_64};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::layout::{ram_regions, HIMEM_START};
use crate::{BootError, GuestMemoryMmap};

/// The kernel image formats Kiln understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// Uncompressed ELF64 vmlinux.
    Elf,
    /// Compressed x86 bzImage (boot protocol >= 2.06).
    BzImage,
}

/// What loading a kernel produced.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// Image format.
    pub format: KernelFormat,
    /// 64-bit entry point (ELF `e_entry`, or bzImage load address + 0x200).
    pub entry64: u64,
    /// PVH 32-bit entry point, if the ELF has the `XEN_ELFNOTE_PHYS32_ENTRY` note.
    pub pvh_entry: Option<u64>,
    /// Lowest guest address the image occupies.
    pub start: u64,
    /// End (exclusive) of the loaded image, including ELF bss.
    pub end: u64,
    /// End of the memory the kernel uses while booting (for a bzImage, the decompression
    /// buffer of `init_size` bytes); nothing else may be placed below it.
    pub reserved_end: u64,
    /// The bzImage setup header (with `code32_start` = load address); `None` for ELF.
    pub setup_header: Option<setup_header>,
}

/// Offset of the "HdrS" magic in a bzImage (boot.rst, "The Real-Mode Kernel Header").
const HDRS_OFFSET: usize = 0x202;
/// Offset of the setup header in a bzImage / boot_params.
const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// Offset of the 64-bit entry from the protected-mode load address (boot.rst, 64-bit protocol).
pub const BZIMAGE_ENTRY64_OFFSET: u64 = 0x200;
/// ELF header size (ELF64).
const EHDR_SIZE: u64 = std::mem::size_of::<Elf64_Ehdr>() as u64;
/// Program header size (ELF64).
const PHDR_SIZE: u64 = std::mem::size_of::<Elf64_Phdr>() as u64;

/// Copies a header struct out of the front of `bytes` (at least `size_of::<T>()` long);
/// a copy, because `bytes` need not be aligned for `T`.
fn read_header<T: ByteValued + Default>(bytes: &[u8]) -> T {
    let mut v = T::default();
    let n = std::mem::size_of::<T>();
    v.as_mut_slice().copy_from_slice(&bytes[..n]);
    v
}

/// Reads as many bytes as are available, up to `buf.len()`, from `offset`.
fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    file.seek(SeekFrom::Start(offset))?;
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Checks that `[start, end)` lies inside one RAM region of a `mem_size` VM.
fn check_in_ram(path: &Path, mem_size: u64, start: u64, end: u64) -> Result<(), BootError> {
    let regions = ram_regions(mem_size);
    if regions
        .iter()
        .any(|&(s, n)| start >= s && end <= s.saturating_add(n))
    {
        return Ok(());
    }
    let ram = regions
        .iter()
        .map(|&(s, n)| format!("[{s:#x}, {:#x})", s.saturating_add(n)))
        .collect::<Vec<_>>()
        .join(" + ");
    Err(BootError::KernelDoesNotFit {
        path: path.to_owned(),
        start,
        end,
        ram: format!("is {ram}"),
    })
}

/// Opens, validates and loads the kernel at `path` into `mem` (laid out for `mem_size`).
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
) -> Result<LoadedKernel, BootError> {
    let io_err = |source| BootError::KernelRead {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    if size == 0 {
        return Err(BootError::KernelEmpty {
            path: path.to_owned(),
        });
    }
    let mut head = vec![0u8; 0x400];
    let got = read_at(&mut file, 0, &mut head).map_err(io_err)?;
    head.truncate(got);
    if head.starts_with(b"\x7fELF") {
        load_elf(mem, path, &mut file, size, &head, mem_size)
    } else if head.len() >= HDRS_OFFSET + 4 && &head[HDRS_OFFSET..HDRS_OFFSET + 4] == b"HdrS" {
        load_bzimage(mem, path, &mut file, size, &head, mem_size)
    } else {
        Err(BootError::KernelUnknownFormat {
            path: path.to_owned(),
        })
    }
}

fn elf_invalid(path: &Path, detail: impl Into<String>) -> BootError {
    BootError::ElfInvalid {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

/// Validates the ELF headers and returns `(e_entry, program headers)`.
// linux-loader's `Elf::load` checks none of these (class, machine, segment bounds): they
// give every bad image a precise error before anything is written to guest memory.
fn parse_elf(
    path: &Path,
    file: &mut File,
    size: u64,
    head: &[u8],
) -> Result<(u64, Vec<Elf64_Phdr>), BootError> {
    let truncated = |what: &str, needed: u64| BootError::ElfTruncated {
        path: path.to_owned(),
        what: what.to_owned(),
        needed,
        size,
    };
    if (head.len() as u64) < EHDR_SIZE {
        return Err(truncated("the ELF header", EHDR_SIZE));
    }
    let ehdr: Elf64_Ehdr = read_header(head);
    match ehdr.e_ident[EI_CLASS] {
        ELFCLASS64 => {}
        ELFCLASS32 => {
            return Err(BootError::Elf32Bit {
                path: path.to_owned(),
            })
        }
        c => return Err(elf_invalid(path, format!("unknown ELF class {c}"))),
    }
    if ehdr.e_ident[EI_DATA] != ELFDATA2LSB {
        return Err(elf_invalid(
            path,
            "it is not little-endian (EI_DATA != ELFDATA2LSB)",
        ));
    }
    let machine = ehdr.e_machine;
    if machine != EM_X86_64 {
        return Err(elf_invalid(
            path,
            format!("e_machine is {machine}, not x86-64 ({EM_X86_64})"),
        ));
    }
    let (entry, phoff) = (ehdr.e_entry, ehdr.e_phoff);
    let (phentsize, phnum) = (ehdr.e_phentsize, ehdr.e_phnum);
    if u64::from(phentsize) != PHDR_SIZE {
        return Err(elf_invalid(
            path,
            format!("e_phentsize is {phentsize}, not {PHDR_SIZE}"),
        ));
    }
    if phnum == 0 {
        return Err(elf_invalid(path, "it has no program headers"));
    }
    if phoff < EHDR_SIZE {
        return Err(elf_invalid(
            path,
            format!("e_phoff {phoff:#x} overlaps the ELF header"),
        ));
    }
    let table_len = u64::from(phnum) * PHDR_SIZE;
    let table_end = phoff
        .checked_add(table_len)
        .ok_or_else(|| elf_invalid(path, "e_phoff overflows"))?;
    if table_end > size {
        return Err(truncated("the program header table", table_end));
    }
    // phnum <= 65535, so the table is at most ~3.5 MiB.
    let mut table = vec![0u8; table_len as usize];
    let got = read_at(file, phoff, &mut table).map_err(|source| BootError::KernelRead {
        path: path.to_owned(),
        source,
    })?;
    if got < table.len() {
        return Err(truncated("the program header table", table_end));
    }
    let mut phdrs = Vec::with_capacity(usize::from(phnum));
    for (i, p) in table.chunks_exact(PHDR_SIZE as usize).enumerate() {
        let ph: Elf64_Phdr = read_header(p);
        let file_end = ph
            .p_offset
            .checked_add(ph.p_filesz)
            .ok_or_else(|| elf_invalid(path, format!("segment {i} file range overflows")))?;
        if file_end > size {
            return Err(truncated(&format!("segment {i}"), file_end));
        }
        if ph.p_type == PT_LOAD && ph.p_filesz > ph.p_memsz {
            return Err(elf_invalid(
                path,
                format!("segment {i} has p_filesz > p_memsz"),
            ));
        }
        phdrs.push(ph);
    }
    Ok((entry, phdrs))
}

fn load_elf(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut File,
    size: u64,
    head: &[u8],
    mem_size: u64,
) -> Result<LoadedKernel, BootError> {
    let (entry, phdrs) = parse_elf(path, file, size, head)?;
    let mut start = u64::MAX;
    let mut end = 0u64;
    let mut bss = Vec::new();
    for ph in phdrs
        .iter()
        .filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0)
    {
        let seg_end = ph
            .p_paddr
            .checked_add(ph.p_memsz)
            .ok_or_else(|| elf_invalid(path, format!("segment at {:#x} overflows", ph.p_paddr)))?;
        if ph.p_paddr < HIMEM_START {
            return Err(BootError::KernelTooLow {
                path: path.to_owned(),
                start: ph.p_paddr,
                end: seg_end,
            });
        }
        check_in_ram(path, mem_size, ph.p_paddr, seg_end)?;
        start = start.min(ph.p_paddr);
        end = end.max(seg_end);
        // linux-loader copies p_filesz bytes only; the rest (bss) is zeroed here.
        bss.push((ph.p_paddr + ph.p_filesz, ph.p_memsz - ph.p_filesz));
    }
    if end == 0 {
        return Err(elf_invalid(path, "it has no loadable (PT_LOAD) segments"));
    }
    if entry < start || entry >= end {
        return Err(BootError::BadEntry {
            path: path.to_owned(),
            which: "64-bit",
            addr: entry,
            start,
            end,
        });
    }
    let res = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
        BootError::KernelLoad {
            path: path.to_owned(),
            source,
        }
    })?;
    for (addr, len) in bss {
        zero(mem, addr, len)?;
    }
    let pvh_entry = match res.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => {
            let a = a.0;
            if a < start || a >= end {
                return Err(BootError::BadEntry {
                    path: path.to_owned(),
                    which: "PVH",
                    addr: a,
                    start,
                    end,
                });
            }
            Some(a)
        }
        _ => None,
    };
    log::debug!(
        "loaded ELF kernel {}: [{start:#x}, {end:#x}), entry {entry:#x}, PVH entry {pvh_entry:x?}",
        path.display()
    );
    Ok(LoadedKernel {
        format: KernelFormat::Elf,
        entry64: entry,
        pvh_entry,
        start,
        end,
        reserved_end: end,
        setup_header: None,
    })
}

/// Zeroes `len` bytes of guest memory at `addr`.
fn zero(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<(), BootError> {
    const CHUNK: u64 = 64 * 1024;
    let buf = [0u8; CHUNK as usize];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(CHUNK);
        mem.write_slice(&buf[..n as usize], GuestAddress(addr + off))
            .map_err(BootError::write("kernel bss", addr + off))?;
        off += n;
    }
    Ok(())
}

fn bz_unsupported(path: &Path, detail: &str) -> BootError {
    BootError::BzImageUnsupported {
        path: path.to_owned(),
        detail: detail.to_owned(),
    }
}

/// Parses and validates a bzImage setup header; returns it with the setup size in bytes.
fn parse_bzimage(path: &Path, size: u64, head: &[u8]) -> Result<(setup_header, u64), BootError> {
    let hdr_end = SETUP_HEADER_OFFSET + std::mem::size_of::<setup_header>();
    if head.len() < hdr_end {
        return Err(BootError::BzImageTruncated {
            path: path.to_owned(),
            needed: hdr_end as u64,
            size,
        });
    }
    let mut hdr = setup_header::default();
    hdr.as_mut_slice()
        .copy_from_slice(&head[SETUP_HEADER_OFFSET..hdr_end]);
    let version = hdr.version;
    if version < 0x0206 {
        return Err(BootError::BzImageTooOld {
            path: path.to_owned(),
            version,
        });
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(bz_unsupported(
            path,
            "it is a zImage loaded low (LOADED_HIGH clear): build a bzImage (make bzImage)",
        ));
    }
    if version >= 0x020c {
        if hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(bz_unsupported(
                path,
                "it has no 64-bit entry point (XLF_KERNEL_64 clear): build an x86_64 kernel",
            ));
        }
    } else {
        log::warn!(
            "bzImage {} (protocol {:#x}) predates xloadflags: assuming a 64-bit entry at +0x200",
            path.display(),
            version
        );
    }
    let sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_size = (sects + 1) * 512;
    let needed = setup_size + u64::from(hdr.syssize).saturating_mul(16).max(1);
    if size < needed {
        return Err(BootError::BzImageTruncated {
            path: path.to_owned(),
            needed,
            size,
        });
    }
    Ok((hdr, setup_size))
}

fn load_bzimage(
    mem: &GuestMemoryMmap,
    path: &Path,
    file: &mut File,
    size: u64,
    head: &[u8],
    mem_size: u64,
) -> Result<LoadedKernel, BootError> {
    let (hdr, setup_size) = parse_bzimage(path, size, head)?;
    let load = u64::from(hdr.code32_start);
    let end = load + (size - setup_size);
    if load < HIMEM_START {
        return Err(BootError::KernelTooLow {
            path: path.to_owned(),
            start: load,
            end,
        });
    }
    // startup_64 is 0x200 into the protected-mode image (boot.rst, 64-bit boot protocol):
    // an image shorter than that would have the vCPU start in whatever follows it.
    let entry64 = load + BZIMAGE_ENTRY64_OFFSET;
    if entry64 >= end {
        return Err(BootError::BadEntry {
            path: path.to_owned(),
            which: "64-bit",
            addr: entry64,
            start: load,
            end,
        });
    }
    // 64-bit protocol: startup_64 decompresses into [max(align_up(load, kernel_alignment),
    // pref_address), + init_size) (boot.rst fields pref_address and init_size, 2.10+).
    let mut reserved_end = end;
    if hdr.version >= 0x020a && hdr.init_size != 0 {
        let align = u64::from(hdr.kernel_alignment);
        let aligned = if align.is_power_of_two() {
            load.checked_add(align - 1)
                .map(|v| v & !(align - 1))
                .unwrap_or(u64::MAX)
        } else {
            load
        };
        let base = aligned.max(hdr.pref_address);
        reserved_end = reserved_end.max(base.saturating_add(u64::from(hdr.init_size)));
    } else {
        log::warn!(
            "bzImage {} does not state init_size: decompression footprint unknown",
            path.display()
        );
    }
    check_in_ram(path, mem_size, load, reserved_end)?;
    let res =
        BzImage::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(|source| {
            BootError::KernelLoad {
                path: path.to_owned(),
                source,
            }
        })?;
    let version = hdr.version;
    log::debug!(
        "loaded bzImage {} (protocol {version:#x}) at {load:#x}, image end {end:#x}, reserved to {reserved_end:#x}",
        path.display()
    );
    Ok(LoadedKernel {
        format: KernelFormat::BzImage,
        entry64,
        pvh_entry: None,
        start: load,
        end,
        reserved_end,
        setup_header: Some(res.setup_header.unwrap_or(hdr)),
    })
}

#[cfg(test)]
#[path = "loader_tests.rs"]
mod tests;
