use super::*;
use crate::test_images::{bzimage, elf, file, simple_elf, Bz, Seg};

const MEM: u64 = 64 << 20;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap()
}

fn load_bytes(bytes: &[u8]) -> Result<LoadedKernel, BootError> {
    let f = file(bytes);
    load_kernel(&mem(), f.as_path(), MEM)
}

#[test]
fn elf_loads_and_zeroes_bss() {
    let m = mem();
    m.write_slice(&[0xffu8; 0x1000], GuestAddress(0x100_2000))
        .unwrap();
    let f = file(&simple_elf(None));
    let k = load_kernel(&m, f.as_path(), MEM).unwrap();
    assert_eq!(k.format, KernelFormat::Elf);
    assert_eq!(
        (k.entry64, k.start, k.end, k.reserved_end),
        (0x100_0000, 0x100_0000, 0x100_3000, 0x100_3000)
    );
    assert_eq!(k.pvh_entry, None);
    assert!(k.setup_header.is_none());
    assert_eq!(
        m.read_obj::<u8>(GuestAddress(0x100_0000 + 300)).unwrap(),
        (300 % 251) as u8
    );
    let mut bss = [1u8; 0x1000];
    m.read_slice(&mut bss, GuestAddress(0x100_2000)).unwrap();
    assert!(bss.iter().all(|&b| b == 0));
}

#[test]
fn elf_pvh_note() {
    let k = load_bytes(&simple_elf(Some(0x100_0100))).unwrap();
    assert_eq!(k.pvh_entry, Some(0x100_0100));
    let e = load_bytes(&simple_elf(Some(0x50_0000))).unwrap_err();
    assert!(
        matches!(
            e,
            BootError::BadEntry {
                which: "PVH",
                addr: 0x50_0000,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn missing_empty_and_garbage() {
    let e = load_kernel(&mem(), Path::new("/nonexistent/vmlinux"), MEM).unwrap_err();
    assert!(matches!(e, BootError::KernelRead { .. }));
    assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
    assert!(matches!(
        load_bytes(&[]),
        Err(BootError::KernelEmpty { .. })
    ));
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let e = load_bytes(&garbage).unwrap_err();
    assert!(matches!(e, BootError::KernelUnknownFormat { .. }), "{e}");
    assert!(matches!(
        load_bytes(b"\x7fEL"),
        Err(BootError::KernelUnknownFormat { .. })
    ));
}

#[test]
fn elf_truncated() {
    let img = simple_elf(None);
    assert!(matches!(
        load_bytes(&img[..40]),
        Err(BootError::ElfTruncated { needed: 64, .. })
    ));
    assert!(matches!(
        load_bytes(&img[..100]),
        Err(BootError::ElfTruncated { needed: 120, .. })
    ));
    let e = load_bytes(&img[..img.len() - 1]).unwrap_err();
    assert!(matches!(e, BootError::ElfTruncated { .. }));
    assert!(e.to_string().contains("segment 0"), "{e}");
}

#[test]
fn elf_header_errors() {
    let img = simple_elf(None);
    let patched = |off: usize, bytes: &[u8]| {
        let mut v = img.clone();
        v[off..off + bytes.len()].copy_from_slice(bytes);
        load_bytes(&v).unwrap_err()
    };
    let e = patched(4, &[1]);
    assert!(matches!(e, BootError::Elf32Bit { .. }));
    assert!(e.to_string().contains("32-bit"), "{e}");
    assert!(matches!(patched(4, &[7]), BootError::ElfInvalid { .. }));
    let e = patched(5, &[2]);
    assert!(e.to_string().contains("little-endian"), "{e}");
    let e = patched(18, &3u16.to_le_bytes());
    assert!(e.to_string().contains("e_machine is 3"), "{e}");
    let e = patched(54, &32u16.to_le_bytes());
    assert!(e.to_string().contains("e_phentsize"), "{e}");
    let e = patched(56, &0u16.to_le_bytes());
    assert!(e.to_string().contains("no program headers"), "{e}");
    let e = patched(32, &16u64.to_le_bytes());
    assert!(e.to_string().contains("e_phoff"), "{e}");
    let e = patched(32, &u64::MAX.to_le_bytes());
    assert!(e.to_string().contains("overflows"), "{e}");
    // p_filesz > p_memsz.
    let e = patched(64 + 40, &0x100u64.to_le_bytes());
    assert!(e.to_string().contains("p_filesz > p_memsz"), "{e}");
}

#[test]
fn elf_placement_errors() {
    let seg = |paddr: u64, memsz: u64| Seg {
        paddr,
        data: vec![0x90; 0x100],
        memsz,
    };
    let e = load_bytes(&elf(0x8_0000, &[seg(0x8_0000, 0x1000)], None)).unwrap_err();
    assert!(
        matches!(
            e,
            BootError::KernelTooLow {
                start: 0x8_0000,
                ..
            }
        ),
        "{e}"
    );
    let e = load_bytes(&elf(MEM - 0x100, &[seg(MEM - 0x100, 0x1000)], None)).unwrap_err();
    assert!(matches!(e, BootError::KernelDoesNotFit { .. }), "{e}");
    assert!(e.to_string().contains("--memory"), "{e}");
    let e = load_bytes(&elf(0x100_0000, &[seg(0x100_0000, u64::MAX)], None)).unwrap_err();
    assert!(matches!(e, BootError::ElfInvalid { .. }), "{e}");
    let e = load_bytes(&elf(0x200_0000, &[seg(0x100_0000, 0x1000)], None)).unwrap_err();
    assert!(
        matches!(
            e,
            BootError::BadEntry {
                which: "64-bit",
                ..
            }
        ),
        "{e}"
    );
    let e = load_bytes(&elf(0x100_0000, &[], Some(0x100_0000))).unwrap_err();
    assert!(e.to_string().contains("no loadable"), "{e}");
}

#[test]
fn bzimage_loads() {
    let m = mem();
    let f = file(&bzimage(&Bz::default()));
    let k = load_kernel(&m, f.as_path(), MEM).unwrap();
    assert_eq!(k.format, KernelFormat::BzImage);
    assert_eq!(
        (k.entry64, k.start, k.end),
        (0x10_0200, 0x10_0000, 0x10_4000)
    );
    // Decompression buffer: max(align_up(1 MiB, 2 MiB), 16 MiB) + 8 MiB.
    assert_eq!(k.reserved_end, 0x180_0000);
    let h = k.setup_header.unwrap();
    let (v, c32) = (h.version, h.code32_start);
    assert_eq!((v, c32), (0x20f, 0x10_0000));
    assert_eq!(
        m.read_obj::<u8>(GuestAddress(0x10_0000 + 1000)).unwrap(),
        (1000 % 253) as u8
    );
    // setup_sects = 0 means 4.
    assert!(load_bytes(&bzimage(&Bz {
        setup_sects: 0,
        ..Default::default()
    }))
    .is_ok());
    // Protocol 2.11 predates xloadflags: accepted.
    assert!(load_bytes(&bzimage(&Bz {
        version: 0x20b,
        xloadflags: 0,
        ..Default::default()
    }))
    .is_ok());
    // Protocol 2.09 has no init_size: only the image is reserved.
    let k = load_bytes(&bzimage(&Bz {
        version: 0x209,
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(k.reserved_end, 0x10_4000);
}

#[test]
fn bzimage_errors() {
    let e = load_bytes(&bzimage(&Bz {
        version: 0x205,
        ..Default::default()
    }))
    .unwrap_err();
    assert!(matches!(e, BootError::BzImageTooOld { version: 0x205, .. }));
    assert!(e.to_string().contains("2.05"), "{e}");
    let e = load_bytes(&bzimage(&Bz {
        xloadflags: 0,
        ..Default::default()
    }))
    .unwrap_err();
    assert!(e.to_string().contains("XLF_KERNEL_64"), "{e}");
    let e = load_bytes(&bzimage(&Bz {
        loadflags: 0,
        ..Default::default()
    }))
    .unwrap_err();
    assert!(e.to_string().contains("LOADED_HIGH"), "{e}");
    let img = bzimage(&Bz::default());
    let e = load_bytes(&img[..img.len() - 16]).unwrap_err();
    assert!(
        matches!(
            e,
            BootError::BzImageTruncated {
                needed: 0x4a00,
                size: 0x49f0,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        load_bytes(&img[..0x210]),
        Err(BootError::BzImageTruncated { .. })
    ));
    let e = load_bytes(&bzimage(&Bz {
        code32_start: 0x8_0000,
        ..Default::default()
    }))
    .unwrap_err();
    assert!(matches!(e, BootError::KernelTooLow { .. }), "{e}");
    let big = Bz {
        init_size: 0x400_0000,
        ..Default::default()
    };
    let e = load_bytes(&bzimage(&big)).unwrap_err();
    assert!(
        matches!(
            e,
            BootError::KernelDoesNotFit {
                end: 0x500_0000,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bzimage_entry_beyond_image() {
    // Found by the kernel_loader fuzz target: 0x20 bytes of protected-mode code put
    // startup_64 (load + 0x200) past the end of what is loaded.
    let e = load_bytes(&bzimage(&Bz {
        payload_len: 0x20,
        ..Default::default()
    }))
    .unwrap_err();
    assert!(
        matches!(
            e,
            BootError::BadEntry {
                which: "64-bit",
                addr: 0x10_0200,
                start: 0x10_0000,
                end: 0x10_0020,
                ..
            }
        ),
        "{e}"
    );
}
