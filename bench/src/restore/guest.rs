//! The guest `kiln bench --restore` snapshots: a PVH guest that keeps running (the
//! start-up bench's minimal guest resets at once, so there is nothing to pause), built
//! into `kiln` like [`crate::min_guest`] so that the bench runs from any directory and
//! needs neither the C test guest nor a toolchain.
//!
//! It writes the boot-timer byte, then writes one word into each 4 KiB page of
//! [`TOUCH_START`]`..`[`TOUCH_END`] (8 MiB: the memory a snapshot holds besides the code)
//! and prints [`READY`] on the serial port: the bench snapshots it after that. Then it
//! loops forever: it reads one word of every one of those pages, increments a counter
//! in the page at [`COUNTER`] and prints [`PASS`]. A restored VM therefore prints
//! [`PASS`] once it has run one pass (which maps every touched page of the memory file
//! into the process, so clones show what they share) and writes one page of its own.
//!
//! [`SOURCE`] is the assembly; `segment_matches_the_source` assembles it with gcc/ld
//! (when installed) and compares with the checked-in [`SEGMENT`].

use std::path::{Path, PathBuf};

/// Where the segment is loaded (guest-physical), which is also the PVH entry: the
/// minimal guest's address, as [`crate::min_guest::pvh_elf_image`] places it.
pub const LOAD_ADDR: u64 = crate::min_guest::LOAD_ADDR;
/// First page the guest writes before the snapshot and reads after it.
pub const TOUCH_START: u64 = 0x20_0000;
/// End of the touched pages (exclusive).
pub const TOUCH_END: u64 = 0xa0_0000;
/// The page the restored guest writes (its counter).
pub const COUNTER: u64 = 0x1f_f000;
/// Printed once every touched page holds its word: snapshot now.
pub const READY: u8 = b'R';
/// Printed after each pass over the touched pages.
pub const PASS: u8 = b'.';
/// The least guest memory the guest needs (it touches up to [`TOUCH_END`]).
pub const MIN_MEMORY: u64 = 16 << 20;

/// The guest's source (GNU as, linked at [`LOAD_ADDR`] like min.ld links min.S).
pub const SOURCE: &str = r#"
    .text
    .code32
    .globl spin_start
spin_start:
    mov     $0x3f8, %dx
    movb    $123, 0xc0000000
    mov     $0x200000, %edi
1:  mov     %edi, (%edi)
    add     $0x1000, %edi
    cmp     $0xa00000, %edi
    jb      1b
    mov     $'R', %al
    out     %al, %dx
2:  mov     $0x200000, %esi
3:  mov     (%esi), %eax
    add     $0x1000, %esi
    cmp     $0xa00000, %esi
    jb      3b
    incl    0x1ff000
    mov     $'.', %al
    out     %al, %dx
    jmp     2b

    .section .note.Xen, "a", @note
    .balign 4
    .long   4, 4, 18
    .asciz  "Xen"
    .balign 4
    .long   spin_start
"#;

/// The one PT_LOAD segment of [`SOURCE`]: 67 bytes of 32-bit code, one byte of padding,
/// then the 4-aligned `XEN_ELFNOTE_PHYS32_ENTRY` note.
#[rustfmt::skip]
pub const SEGMENT: [u8; 88] = [
    0x66, 0xba, 0xf8, 0x03,                     // mov $0x3f8, %dx
    0xc6, 0x05, 0x00, 0x00, 0x00, 0xc0, 0x7b,   // movb $123, 0xc0000000
    0xbf, 0x00, 0x00, 0x20, 0x00,               // mov $0x200000, %edi
    0x89, 0x3f,                                 // 1: mov %edi, (%edi)
    0x81, 0xc7, 0x00, 0x10, 0x00, 0x00,         // add $0x1000, %edi
    0x81, 0xff, 0x00, 0x00, 0xa0, 0x00,         // cmp $0xa00000, %edi
    0x72, 0xf0,                                 // jb 1b
    0xb0, 0x52,                                 // mov $'R', %al
    0xee,                                       // out %al, %dx
    0xbe, 0x00, 0x00, 0x20, 0x00,               // 2: mov $0x200000, %esi
    0x8b, 0x06,                                 // 3: mov (%esi), %eax
    0x81, 0xc6, 0x00, 0x10, 0x00, 0x00,         // add $0x1000, %esi
    0x81, 0xfe, 0x00, 0x00, 0xa0, 0x00,         // cmp $0xa00000, %esi
    0x72, 0xf0,                                 // jb 3b
    0xff, 0x05, 0x00, 0xf0, 0x1f, 0x00,         // incl 0x1ff000
    0xb0, 0x2e,                                 // mov $'.', %al
    0xee,                                       // out %al, %dx
    0xeb, 0xe0,                                 // jmp 2b
    0x00,                                       // (note alignment)
    0x04, 0x00, 0x00, 0x00,                     // n_namesz = 4
    0x04, 0x00, 0x00, 0x00,                     // n_descsz = 4
    0x12, 0x00, 0x00, 0x00,                     // n_type = 18 (XEN_ELFNOTE_PHYS32_ENTRY)
    b'X', b'e', b'n', 0x00,                     // "Xen"
    0x00, 0x00, 0x10, 0x00,                     // entry: 0x100000
];

// The counter page and the touched pages lie above the code, within the least memory.
const _: () = assert!(
    LOAD_ADDR + (SEGMENT.len() as u64) < COUNTER
        && COUNTER < TOUCH_START
        && TOUCH_END <= MIN_MEMORY
);

/// Offset of the PVH note within [`SEGMENT`].
const NOTE_OFFSET: u64 = 0x44;

/// The ELF image: header, a PT_LOAD and a PT_NOTE program header, then [`SEGMENT`].
pub fn image() -> Vec<u8> {
    crate::min_guest::pvh_elf_image(&SEGMENT, NOTE_OFFSET)
}

/// Writes the image to `dir/kiln-spin.elf` and returns its path.
pub fn write(dir: &Path) -> std::io::Result<PathBuf> {
    let path = dir.join("kiln-spin.elf");
    std::fs::write(&path, image())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::min_guest::tests::{load_segment, tool};
    use linux_loader::elf::{Elf64_Phdr, PT_NOTE};
    use std::process::Command;
    use vm_memory::ByteValued;
    use vmm_sys_util::tempdir::TempDir;

    /// The linker script: one loadable segment at [`LOAD_ADDR`] with code and note.
    const LINK: &str = "ENTRY(spin_start)
PHDRS { load PT_LOAD; note PT_NOTE; }
SECTIONS {
    . = 0x100000;
    .text : { *(.text) } :load
    .note.Xen : { *(.note.Xen) } :load :note
    /DISCARD/ : { *(.note.GNU-stack) *(.comment) }
}
";

    #[test]
    fn segment_matches_the_source() {
        let dir = TempDir::new_with_prefix(std::env::temp_dir().join("kiln-spin-")).unwrap();
        let p = |name: &str| dir.as_path().join(name);
        std::fs::write(p("spin.S"), SOURCE).unwrap();
        std::fs::write(p("spin.ld"), LINK).unwrap();
        let built = tool(
            Command::new("gcc")
                .args(["-m64", "-c"])
                .arg(p("spin.S"))
                .arg("-o")
                .arg(p("spin.o")),
        )
        .and_then(|()| {
            tool(
                Command::new("ld")
                    .args(["-nostdlib", "-static", "-no-pie", "--build-id=none"])
                    .args(["-z", "max-page-size=0x1000", "-z", "noexecstack", "-T"])
                    .arg(p("spin.ld"))
                    .arg("-o")
                    .arg(p("spin.elf"))
                    .arg(p("spin.o")),
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
        let fresh = std::fs::read(p("spin.elf")).unwrap();
        assert_eq!(load_segment(&fresh), load_segment(&image()));
    }

    #[test]
    fn image_has_the_pvh_note() {
        let img = image();
        let (entry, paddr, seg) = load_segment(&img);
        assert_eq!((entry, paddr), (LOAD_ADDR, LOAD_ADDR));
        let note = Elf64_Phdr::from_slice(&img[64 + 56..64 + 112]).unwrap();
        assert_eq!(note.p_type, PT_NOTE);
        let n = &img[note.p_offset as usize..][..note.p_filesz as usize];
        assert_eq!(&n[..12], &[4, 0, 0, 0, 4, 0, 0, 0, 18, 0, 0, 0]);
        assert_eq!(&n[12..16], b"Xen\0");
        assert_eq!(u32::from_le_bytes([n[16], n[17], n[18], n[19]]), 0x10_0000);
        assert_eq!(seg.len(), SEGMENT.len());
    }

    #[test]
    fn the_constants_are_the_codes() {
        let code = &SEGMENT[..NOTE_OFFSET as usize];
        let has = |v: u32| code.windows(4).any(|w| w == v.to_le_bytes());
        assert!(has(TOUCH_START as u32) && has(TOUCH_END as u32) && has(COUNTER as u32));
        assert!(code.contains(&READY) && code.contains(&PASS));
    }
}
