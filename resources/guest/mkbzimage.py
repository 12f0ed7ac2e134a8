#!/usr/bin/env python3
"""Wrap the Kiln test guest ELF into a bzImage (Documentation/arch/x86/boot.rst).

Usage: mkbzimage.py GUEST.elf OUT.bzImage

The file is: boot sector + SETUP_SECTS setup sectors holding the setup header, then the
flat protected-mode payload (the ELF's single PT_LOAD, linked at 0x100000) whose 64-bit
entry is at payload offset 0x200. There is no real-mode setup code: the jump at 0x200 spins.
"""
import struct
import sys

LOAD_ADDR = 0x100000
ENTRY64_OFFSET = 0x200
KERNEL_INFO_OFFSET = 0x1C0
SETUP_SECTS = 1


def fail(msg):
    sys.stderr.write(f"mkbzimage: {msg}\n")
    sys.exit(1)


def load_segment(elf):
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        fail("not a little-endian ELF64 file")
    (e_entry, e_phoff) = struct.unpack_from("<QQ", elf, 0x18)
    (e_phentsize, e_phnum) = struct.unpack_from("<HH", elf, 0x36)
    loads = []
    for i in range(e_phnum):
        p_type, _flags, off, vaddr, paddr, filesz, memsz, _align = struct.unpack_from(
            "<IIQQQQQQ", elf, e_phoff + i * e_phentsize
        )
        if p_type == 1:
            loads.append((off, vaddr, paddr, filesz, memsz))
    if len(loads) != 1:
        fail(f"expected exactly one PT_LOAD, found {len(loads)}")
    off, vaddr, paddr, filesz, memsz = loads[0]
    if paddr != LOAD_ADDR or vaddr != LOAD_ADDR:
        fail(f"PT_LOAD at {paddr:#x}, expected {LOAD_ADDR:#x}")
    if e_entry != LOAD_ADDR + ENTRY64_OFFSET:
        fail(f"e_entry {e_entry:#x}, expected {LOAD_ADDR + ENTRY64_OFFSET:#x}")
    return elf[off : off + filesz], memsz


def build(payload, memsz):
    # Pad the payload to whole 16-byte paragraphs, as Linux's build tool does, so the
    # file is as long as syssize says.
    payload = payload + bytes(-len(payload) % 16)
    if payload[KERNEL_INFO_OFFSET : KERNEL_INFO_OFFSET + 4] != b"LToP":
        fail("kernel_info not found at payload offset 0x1c0")
    setup = bytearray((SETUP_SECTS + 1) * 512)
    version = b"kiln-test-guest\0"
    version_off = 0x280  # inside the setup sector, after the header
    setup[version_off : version_off + len(version)] = version
    spin_off = 0x270  # real-mode "jmp ." for a loader that runs the setup code
    setup[spin_off : spin_off + 2] = b"\xeb\xfe"
    init_size = (max(memsz, len(payload)) + 0xFFF) & ~0xFFF

    def put(fmt, off, val):
        struct.pack_into("<" + fmt, setup, off, val)

    put("B", 0x1F1, SETUP_SECTS)  # setup_sects
    put("H", 0x1F2, 0)  # root_flags
    put("I", 0x1F4, (len(payload) + 15) // 16)  # syssize (16-byte paragraphs)
    put("H", 0x1FA, 0xFFFF)  # vid_mode: normal
    put("H", 0x1FE, 0xAA55)  # boot_flag
    setup[0x200] = 0xEB  # jump: short jmp to spin_off
    setup[0x201] = spin_off - 0x202
    setup[0x202:0x206] = b"HdrS"  # header
    put("H", 0x206, 0x020F)  # version 2.15
    put("H", 0x20C, 0x1000)  # start_sys_seg (obsolete)
    put("H", 0x20E, version_off - 0x200)  # kernel_version
    put("B", 0x211, 0x01)  # loadflags: LOADED_HIGH
    put("H", 0x212, 0x8000)  # setup_move_size
    put("I", 0x214, LOAD_ADDR)  # code32_start
    put("I", 0x22C, 0x37FFFFFF)  # initrd_addr_max
    put("I", 0x230, 0x200000)  # kernel_alignment
    put("B", 0x234, 0)  # relocatable_kernel: no
    put("B", 0x235, 12)  # min_alignment (log2)
    put("H", 0x236, 0x0001)  # xloadflags: XLF_KERNEL_64
    put("I", 0x238, 2047)  # cmdline_size
    put("Q", 0x258, LOAD_ADDR)  # pref_address
    put("I", 0x260, init_size)  # init_size
    put("I", 0x268, KERNEL_INFO_OFFSET)  # kernel_info_offset
    return bytes(setup) + payload


def main():
    if len(sys.argv) != 3:
        fail("usage: mkbzimage.py GUEST.elf OUT.bzImage")
    with open(sys.argv[1], "rb") as f:
        elf = f.read()
    payload, memsz = load_segment(elf)
    with open(sys.argv[2], "wb") as f:
        f.write(build(payload, memsz))


if __name__ == "__main__":
    main()
