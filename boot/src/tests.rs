//! End-to-end tests of [`load`] with crafted kernels.

use super::*;
use crate::test_images::{bzimage, file, simple_elf, Bz};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{hvm_modlist_entry, hvm_start_info};
use vm_memory::Bytes;

const MEM: u64 = 128 << 20;

fn mem(size: u64) -> GuestMemoryMmap {
    let ranges: Vec<_> = ram_regions(size)
        .into_iter()
        .map(|(s, n)| (GuestAddress(s), n as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).unwrap()
}

fn cfg<'a>(kernel: &'a Path, initrd: Option<&'a Path>, cmdline: &'a str) -> BootConfig<'a> {
    BootConfig {
        kernel,
        initrd,
        cmdline,
        mem_size: MEM,
        cpus: 2,
        protocol: BootProtocol::Auto,
    }
}

#[test]
fn elf_linux64_full() {
    let m = mem(MEM);
    let k = file(&simple_elf(None));
    let i = file(&[7u8; 5000]);
    let info = load(&m, &cfg(k.as_path(), Some(i.as_path()), "console=ttyS0")).unwrap();
    assert_eq!(
        info.entry,
        EntryPoint::Linux64 {
            rip: 0x100_0000,
            zero_page: layout::ZERO_PAGE_START
        }
    );
    assert_eq!(info.format, KernelFormat::Elf);
    assert_eq!(
        (info.kernel_start, info.kernel_end),
        (0x100_0000, 0x100_3000)
    );
    assert_eq!(info.initrd, Some((MEM - 0x2000, 5000)));
    assert_eq!((info.cmdline_addr, info.cmdline_len), (CMDLINE_START, 13));

    let p: boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
    let (cl, ri, rs, flag) = (
        p.hdr.cmd_line_ptr,
        p.hdr.ramdisk_image,
        p.hdr.ramdisk_size,
        p.hdr.boot_flag,
    );
    assert_eq!(
        (u64::from(cl), u64::from(ri), rs, flag),
        (CMDLINE_START, MEM - 0x2000, 5000, 0xaa55)
    );
    assert_eq!(p.e820_entries, 3);
    let ram: u64 = p.e820_table[..3]
        .iter()
        .filter(|e| e.r#type == 1)
        .map(|e| e.size)
        .sum();
    assert_eq!(ram, MEM - (0x10_0000 - 0x9fc00));
    assert_eq!(
        m.read_obj::<u8>(GuestAddress(MEM - 0x2000 + 4999)).unwrap(),
        7
    );
    let mut mp = [0u8; 4];
    m.read_slice(&mut mp, GuestAddress(MPTABLE_START)).unwrap();
    assert_eq!(&mp, b"_MP_");
    assert_eq!(
        m.read_obj::<u64>(GuestAddress(layout::PML4_START)).unwrap(),
        layout::PDPTE_START | 3
    );
    assert_eq!(
        m.read_obj::<u64>(GuestAddress(GDT_START + 8)).unwrap(),
        x86::gdt::table(false)[1]
    );
}

#[test]
fn pvh_auto_and_forced() {
    let m = mem(MEM);
    let k = file(&simple_elf(Some(0x100_0040)));
    let i = file(&[1u8; 100]);
    let info = load(&m, &cfg(k.as_path(), Some(i.as_path()), "x")).unwrap();
    assert_eq!(
        info.entry,
        EntryPoint::Pvh {
            eip: 0x100_0040,
            start_info: layout::PVH_INFO_START
        }
    );
    let si: hvm_start_info = m.read_obj(GuestAddress(layout::PVH_INFO_START)).unwrap();
    assert_eq!(
        (si.magic, si.nr_modules, si.cmdline_paddr, si.memmap_entries),
        (0x336e_c578, 1, CMDLINE_START, 3)
    );
    let md: hvm_modlist_entry = m.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
    assert_eq!((md.paddr, md.size), (MEM - 0x1000, 100));
    assert_eq!(
        m.read_obj::<u64>(GuestAddress(GDT_START + 8)).unwrap(),
        x86::gdt::table(true)[1]
    );

    let forced = BootConfig {
        protocol: BootProtocol::Pvh,
        ..cfg(k.as_path(), None, "")
    };
    assert!(matches!(
        load(&mem(MEM), &forced).unwrap().entry,
        EntryPoint::Pvh { .. }
    ));
    let linux = BootConfig {
        protocol: BootProtocol::Linux64,
        ..cfg(k.as_path(), None, "")
    };
    assert!(matches!(
        load(&mem(MEM), &linux).unwrap().entry,
        EntryPoint::Linux64 {
            rip: 0x100_0000,
            ..
        }
    ));
}

#[test]
fn pvh_unavailable() {
    for img in [simple_elf(None), bzimage(&Bz::default())] {
        let k = file(&img);
        let c = BootConfig {
            protocol: BootProtocol::Pvh,
            ..cfg(k.as_path(), None, "")
        };
        let e = load(&mem(MEM), &c).unwrap_err();
        assert!(matches!(e, BootError::PvhUnavailable { .. }));
        assert!(e.to_string().contains("CONFIG_PVH"), "{e}");
    }
}

#[test]
fn bzimage_full() {
    let m = mem(MEM);
    let k = file(&bzimage(&Bz {
        initrd_addr_max: 0x3ff_ffff,
        ..Default::default()
    }));
    let i = file(&[3u8; 0x3000]);
    let info = load(&m, &cfg(k.as_path(), Some(i.as_path()), "quiet")).unwrap();
    assert_eq!(
        info.entry,
        EntryPoint::Linux64 {
            rip: 0x10_0200,
            zero_page: layout::ZERO_PAGE_START
        }
    );
    assert_eq!(info.format, KernelFormat::BzImage);
    assert_eq!(
        (info.kernel_start, info.kernel_end),
        (0x10_0000, 0x180_0000)
    );
    // Highest page-aligned spot ending at or below initrd_addr_max + 1.
    assert_eq!(info.initrd, Some((0x400_0000 - 0x3000, 0x3000)));
    let p: boot_params = m.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
    let (v, c32, lt, cls, init) = (
        p.hdr.version,
        p.hdr.code32_start,
        p.hdr.type_of_loader,
        p.hdr.cmdline_size,
        p.hdr.init_size,
    );
    assert_eq!(
        (v, c32, lt, cls, init),
        (0x20f, 0x10_0000, 0xff, 0x7ff, 0x80_0000)
    );
}

#[test]
fn bzimage_limits() {
    let k = file(&bzimage(&Bz {
        cmdline_size: 10,
        ..Default::default()
    }));
    assert!(load(&mem(MEM), &cfg(k.as_path(), None, "0123456789")).is_ok());
    let e = load(&mem(MEM), &cfg(k.as_path(), None, "0123456789a")).unwrap_err();
    assert!(
        matches!(e, BootError::CmdlineTooLong { len: 11, max: 10 }),
        "{e}"
    );

    // 32 MiB VM: the bzImage reserves up to 24 MiB, so a 9 MiB initrd cannot fit.
    let small = 32 << 20;
    let k = file(&bzimage(&Bz::default()));
    let i = file(&vec![0u8; 9 << 20]);
    let c = BootConfig {
        mem_size: small,
        ..cfg(k.as_path(), Some(i.as_path()), "")
    };
    let e = load(&mem(small), &c).unwrap_err();
    assert!(
        matches!(
            e,
            BootError::InitrdTooLarge {
                floor: 0x180_0000,
                ceiling: 0x200_0000,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn elf_cmdline_limit_and_nul() {
    let k = file(&simple_elf(None));
    let ok = "a".repeat(2047);
    assert!(load(&mem(MEM), &cfg(k.as_path(), None, &ok)).is_ok());
    let long = "a".repeat(2048);
    assert!(matches!(
        load(&mem(MEM), &cfg(k.as_path(), None, &long)),
        Err(BootError::CmdlineTooLong {
            len: 2048,
            max: 2047
        })
    ));
    assert!(matches!(
        load(&mem(MEM), &cfg(k.as_path(), None, "a\0")),
        Err(BootError::CmdlineNul { offset: 1 })
    ));
}

#[test]
fn cpu_and_memory_errors() {
    let k = file(&simple_elf(None));
    let c = BootConfig {
        cpus: 0,
        ..cfg(k.as_path(), None, "")
    };
    assert!(matches!(load(&mem(MEM), &c), Err(BootError::NoCpus)));
    let c = BootConfig {
        cpus: 255,
        ..cfg(k.as_path(), None, "")
    };
    assert!(matches!(
        load(&mem(MEM), &c),
        Err(BootError::TooManyCpus { .. })
    ));
    // Memory smaller than mem_size says.
    let e = load(&mem(64 << 20), &cfg(k.as_path(), None, "")).unwrap_err();
    assert!(matches!(e, BootError::MemoryLayout { .. }), "{e}");
    // Too small to boot at all.
    let c = BootConfig {
        mem_size: 1 << 20,
        ..cfg(k.as_path(), None, "")
    };
    assert!(matches!(
        load(&mem(1 << 20), &c),
        Err(BootError::MemoryLayout { .. })
    ));
    // Kernel at 16 MiB does not fit in 8 MiB.
    let c = BootConfig {
        mem_size: 8 << 20,
        ..cfg(k.as_path(), None, "")
    };
    assert!(matches!(
        load(&mem(8 << 20), &c),
        Err(BootError::KernelDoesNotFit { .. })
    ));
    let i = Path::new("/nonexistent/initrd.img");
    let e = load(&mem(MEM), &cfg(k.as_path(), Some(i), "")).unwrap_err();
    assert!(matches!(e, BootError::InitrdRead { .. }), "{e}");
}

#[test]
fn overlaps_detected() {
    assert!(check_overlaps(&[("a", 0, 10), ("b", 10, 20), ("c", 30, 40)]).is_ok());
    let e = check_overlaps(&[("a", 0, 10), ("b", 20, 30), ("c", 25, 26)]).unwrap_err();
    assert!(matches!(e, BootError::Overlap { a: "b", b: "c", .. }));
}

#[test]
fn protocol_names() {
    assert_eq!("PVH".parse::<BootProtocol>().unwrap(), BootProtocol::Pvh);
    assert_eq!(
        "linux64".parse::<BootProtocol>().unwrap(),
        BootProtocol::Linux64
    );
    assert_eq!("auto".parse::<BootProtocol>().unwrap(), BootProtocol::Auto);
    assert!(matches!(
        "uefi".parse::<BootProtocol>(),
        Err(BootError::UnknownProtocol { .. })
    ));
    assert_eq!(BootProtocol::default(), BootProtocol::Auto);
}
