//! The start-up benchmark's default guest, built into `kiln` so that `kiln bench` runs
//! from any directory: the minimal PVH guest of `resources/guest/minimal/min.S` (one
//! serial byte, the boot-timer write, an i8042 reset), as an ELF image written to the
//! bench's scratch directory for the child `kiln run`s.
//!
//! The loadable bytes are checked in rather than assembled by a build script, so that
//! building Kiln needs no C toolchain; `segment_matches_a_fresh_build` assembles min.S
//! with gcc/ld (as `resources/build-guest.sh` does) and compares.

use std::path::{Path, PathBuf};

use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Phdr, EI_CLASS, EI_DATA, EI_VERSION, ELFCLASS64, ELFDATA2LSB, ELFMAG,
    EM_X86_64, ET_EXEC, EV_CURRENT, PF_R, PF_X, PT_LOAD, PT_NOTE, SELFMAG,
};
use vm_memory::ByteValued;

/// Where min.ld places the segment (guest-physical), which is also the PVH entry.
pub const LOAD_ADDR: u64 = 0x10_0000;

/// The one PT_LOAD segment of min.S linked by min.ld: 22 bytes of 32-bit code, two bytes
/// of padding, then the 4-aligned `XEN_ELFNOTE_PHYS32_ENTRY` note.
#[rustfmt::skip]
pub const SEGMENT: [u8; 44] = [
    0x66, 0xba, 0xf8, 0x03,                     // mov $0x3f8, %dx
    0xb0, 0x4b,                                 // mov $'K', %al
    0xee,                                       // out %al, %dx
    0xc6, 0x05, 0x00, 0x00, 0x00, 0xc0, 0x7b,   // movb $123, 0xc0000000
    0xb0, 0xfe,                                 // mov $0xfe, %al
    0xe6, 0x64,                                 // out %al, $0x64
    0xf3, 0x90,                                 // 1: pause
    0xeb, 0xfc,                                 // jmp 1b
    0x00, 0x00,                                 // (note alignment)
    0x04, 0x00, 0x00, 0x00,                     // n_namesz = 4
    0x04, 0x00, 0x00, 0x00,                     // n_descsz = 4
    0x12, 0x00, 0x00, 0x00,                     // n_type = 18 (XEN_ELFNOTE_PHYS32_ENTRY)
    b'X', b'e', b'n', 0x00,                     // "Xen"
    0x00, 0x00, 0x10, 0x00,                     // entry: 0x100000
];

/// Offset of the PVH note within [`SEGMENT`].
const NOTE_OFFSET: u64 = 0x18;

/// The ELF image: header, a PT_LOAD and a PT_NOTE program header, then [`SEGMENT`].
pub fn image() -> Vec<u8> {
    pvh_elf_image(&SEGMENT, NOTE_OFFSET)
}

/// An ELF image of one segment loaded at [`LOAD_ADDR`] and entered there (also by
/// PVH): header, a PT_LOAD and a PT_NOTE program header (the PVH note at `note_offset`
/// within the segment), then the segment. The bench's built-in guests are made with it.
pub fn pvh_elf_image(segment: &[u8], note_offset: u64) -> Vec<u8> {
    let ehsize = std::mem::size_of::<Elf64_Ehdr>();
    let phsize = std::mem::size_of::<Elf64_Phdr>();
    let seg_off = (ehsize + 2 * phsize) as u64;
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
        e_entry: LOAD_ADDR,
        e_phoff: ehsize as u64,
        e_ehsize: ehsize as u16,
        e_phentsize: phsize as u16,
        e_phnum: 2,
        ..Default::default()
    };
    let len = segment.len() as u64;
    let load = Elf64_Phdr {
        p_type: PT_LOAD,
        p_flags: PF_R | PF_X,
        p_offset: seg_off,
        p_vaddr: LOAD_ADDR,
        p_paddr: LOAD_ADDR,
        p_filesz: len,
        p_memsz: len,
        // p_offset ≡ p_vaddr (mod p_align), as the ELF spec wants.
        p_align: 16,
    };
    let note = Elf64_Phdr {
        p_type: PT_NOTE,
        p_flags: PF_R,
        p_offset: seg_off + note_offset,
        p_vaddr: LOAD_ADDR + note_offset,
        p_paddr: LOAD_ADDR + note_offset,
        p_filesz: len - note_offset,
        p_memsz: len - note_offset,
        p_align: 4,
    };
    let mut out = Vec::with_capacity(seg_off as usize + segment.len());
    out.extend_from_slice(ehdr.as_slice());
    out.extend_from_slice(load.as_slice());
    out.extend_from_slice(note.as_slice());
    out.extend_from_slice(segment);
    out
}

/// Writes the image to `dir/kiln-min.elf` and returns its path.
pub fn write(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("kiln-min.elf");
    std::fs::write(&path, image())?;
    Ok(path)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;
    use vmm_sys_util::tempdir::TempDir;

    /// `(e_entry, p_paddr, bytes)` of an ELF image's one PT_LOAD segment.
    pub(crate) fn load_segment(elf: &[u8]) -> (u64, u64, Vec<u8>) {
        let ehdr = Elf64_Ehdr::from_slice(&elf[..64]).unwrap();
        let phoff = ehdr.e_phoff as usize;
        let loads: Vec<_> = (0..usize::from(ehdr.e_phnum))
            .map(|i| Elf64_Phdr::from_slice(&elf[phoff + i * 56..phoff + (i + 1) * 56]).unwrap())
            .filter(|p| p.p_type == PT_LOAD)
            .collect();
        assert_eq!(loads.len(), 1, "{loads:?}");
        let p = loads[0];
        let bytes = elf[p.p_offset as usize..(p.p_offset + p.p_filesz) as usize].to_vec();
        (ehdr.e_entry, p.p_paddr, bytes)
    }

    /// Runs a build step; `None` when the tool is not installed.
    pub(crate) fn tool(cmd: &mut Command) -> Option<()> {
        match cmd.status() {
            Ok(s) => {
                assert!(s.success(), "{cmd:?} failed");
                Some(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("{cmd:?}: {e}"),
        }
    }

    #[test]
    fn segment_matches_a_fresh_build() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../resources/guest/minimal");
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-min-")).unwrap();
        let (obj, elf) = (dir.as_path().join("min.o"), dir.as_path().join("min.elf"));
        let built = tool(
            Command::new("gcc")
                .arg("-m64")
                .arg("-c")
                .arg(src.join("min.S"))
                .arg("-o")
                .arg(&obj),
        )
        .and_then(|()| {
            tool(
                Command::new("ld")
                    .args(["-nostdlib", "-static", "-no-pie", "--build-id=none"])
                    .args(["-z", "max-page-size=0x1000", "-z", "noexecstack", "-T"])
                    .arg(src.join("min.ld"))
                    .arg("-o")
                    .arg(&elf)
                    .arg(&obj),
            )
        });
        if built.is_none() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "gcc/ld not installed (CI=true)"
            );
            eprintln!("skipped: gcc or ld not installed (apt-get install gcc binutils)");
            return;
        }
        let fresh = std::fs::read(&elf).unwrap();
        assert_eq!(load_segment(&fresh), load_segment(&image()));
    }

    #[test]
    fn image_has_the_pvh_note() {
        let img = image();
        let (entry, paddr, seg) = load_segment(&img);
        assert_eq!((entry, paddr), (LOAD_ADDR, LOAD_ADDR));
        let ehdr = Elf64_Ehdr::from_slice(&img[..64]).unwrap();
        let note = Elf64_Phdr::from_slice(&img[64 + 56..64 + 112]).unwrap();
        assert_eq!((ehdr.e_phnum, note.p_type), (2, PT_NOTE));
        let n = &img[note.p_offset as usize..][..note.p_filesz as usize];
        assert_eq!(&n[..12], &[4, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0]);
        assert_eq!(&n[12..16], b"Xen\0");
        assert_eq!(u32::from_le_bytes([n[16], n[17], n[18], n[19]]), 0x10_0000);
        assert_eq!(seg.len(), SEGMENT.len());
    }
}
