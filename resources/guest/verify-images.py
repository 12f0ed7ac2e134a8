#!/usr/bin/env python3
"""Structural check of the built test-guest images (no VMM needed).

Usage: verify-images.py [OUTDIR]     (default: <repo>/resources/out/guest)
Checks the ELF (single PT_LOAD at 0x100000 with p_paddr = p_vaddr, e_entry 0x100200, one
PT_NOTE holding the Xen PHYS32_ENTRY note pointing at the PVH code) and the bzImage setup
header fields, and that both images carry the same payload. Prints one line per image.
"""
import os
import struct
import sys

errors = []


def expect(what, got, want):
    if got != want:
        errors.append(f"{what}: got {got!r}, want {want!r}")


def check_elf(path):
    elf = open(path, "rb").read()
    expect("ELF magic", elf[:4], b"\x7fELF")
    expect("ELF class/endianness", elf[4:6], b"\x02\x01")
    expect("e_machine", struct.unpack_from("<H", elf, 0x12)[0], 62)
    entry, phoff = struct.unpack_from("<QQ", elf, 0x18)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    expect("e_entry", hex(entry), hex(0x100200))
    loads, notes = [], []
    for i in range(phnum):
        ph = struct.unpack_from("<IIQQQQQQ", elf, phoff + i * phentsize)
        (loads if ph[0] == 1 else notes if ph[0] == 4 else []).append(ph)
    expect("PT_LOAD count", len(loads), 1)
    expect("PT_NOTE count", len(notes), 1)
    _, _, off, vaddr, paddr, filesz, memsz, _ = loads[0]
    expect("p_vaddr", hex(vaddr), hex(0x100000))
    expect("p_paddr", hex(paddr), hex(0x100000))
    payload = elf[off : off + filesz]
    _, _, noff, _, _, nsz, _, _ = notes[0]
    namesz, descsz, ntype = struct.unpack_from("<III", elf, noff)
    expect("note name", elf[noff + 12 : noff + 16], b"Xen\0")
    expect("note type", ntype, 18)
    expect("note descsz", descsz, 4)
    pvh = struct.unpack_from("<I", elf, noff + 16)[0]
    expect("PVH entry", hex(pvh), hex(0x100000))
    expect("PVH entry code (cli; cld)", payload[pvh - 0x100000 : pvh - 0x100000 + 2], b"\xfa\xfc")
    expect("64-bit entry code (cli; cld)", payload[0x200:0x202], b"\xfa\xfc")
    print(f"{path}: ok (PT_LOAD 0x100000 filesz {filesz:#x} memsz {memsz:#x}, "
          f"entry {entry:#x}, PVH {pvh:#x})")
    return payload, memsz


def check_bz(path, elf_payload, memsz):
    d = open(path, "rb").read()
    u8 = lambda o: d[o]
    u16 = lambda o: struct.unpack_from("<H", d, o)[0]
    u32 = lambda o: struct.unpack_from("<I", d, o)[0]
    u64 = lambda o: struct.unpack_from("<Q", d, o)[0]
    setup_sects = u8(0x1F1) or 4
    expect("boot_flag", hex(u16(0x1FE)), hex(0xAA55))
    expect("header", d[0x202:0x206], b"HdrS")
    expect("version", hex(u16(0x206)), hex(0x020F))
    expect("loadflags & LOADED_HIGH", u8(0x211) & 1, 1)
    expect("code32_start", hex(u32(0x214)), hex(0x100000))
    expect("initrd_addr_max", hex(u32(0x22C)), hex(0x37FFFFFF))
    expect("kernel_alignment", hex(u32(0x230)), hex(0x200000))
    expect("xloadflags & XLF_KERNEL_64", u16(0x236) & 1, 1)
    expect("cmdline_size", u32(0x238), 2047)
    expect("pref_address", hex(u64(0x258)), hex(0x100000))
    payload = d[(setup_sects + 1) * 512 :]
    # mkbzimage pads the payload with zeros to whole 16-byte paragraphs (syssize).
    padded = elf_payload + bytes(-len(elf_payload) % 16)
    expect("payload == ELF PT_LOAD bytes (+ zero padding to 16)", payload == padded, True)
    expect("syssize * 16 == payload length", u32(0x1F4) * 16, len(payload))
    init_size = u32(0x260)
    expect("init_size covers image+bss", init_size >= max(memsz, len(payload)), True)
    expect("entry at payload+0x200 (cli; cld)", payload[0x200:0x202], b"\xfa\xfc")
    kio = u32(0x268)
    expect("kernel_info magic", payload[kio : kio + 4], b"LToP")
    print(f"{path}: ok (setup_sects {setup_sects}, payload {len(payload):#x} B, "
          f"init_size {init_size:#x})")


def main():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(repo, "resources/out/guest")
    payload, memsz = check_elf(os.path.join(out, "kiln-test-guest.elf"))
    check_bz(os.path.join(out, "kiln-test-guest.bzImage"), payload, memsz)
    for e in errors:
        sys.stderr.write(f"verify-images: {e}\n")
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
