#!/usr/bin/env python3
"""Helpers for fetch-debian-kernel.sh: bzImage parsing, vmlinux extraction, ELF checks.

Subcommands (all print machine-readable key=value lines on stdout, errors on stderr):
  bzinfo BZIMAGE          -> version=<uname -r> (from the boot-protocol kernel_version field)
  extract BZIMAGE OUT     -> compression=<name>; writes the decompressed ELF vmlinux to OUT
  elfinfo VMLINUX         -> pt_load_16m=yes|no, pvh_note=yes|no, pvh_entry=0x..., entry=0x...
  check OUTDIR            -> exit 0 if OUTDIR/{vmlinuz,vmlinux,version} exist and are consistent

The extraction follows the idea of the kernel's scripts/extract-vmlinux: locate a compressed
payload by its magic, decompress from there, keep the first result that is a complete ELF.
The x86 boot protocol (Documentation/arch/x86/boot.rst, protocol >= 2.08) also records the
payload's exact offset and length (payload_offset 0x248, payload_length 0x24c); that location is
tried first, then a scan of the whole image.
"""

import bz2
import lzma
import os
import shutil
import struct
import subprocess
import sys
import zlib

# Boot protocol header fields (offsets into the bzImage file), boot.rst "The real-mode kernel header".
OFF_SETUP_SECTS = 0x1F1
OFF_HDRS = 0x202
OFF_VERSION = 0x206
OFF_KERNEL_VERSION = 0x20E
OFF_PAYLOAD_OFFSET = 0x248
OFF_PAYLOAD_LENGTH = 0x24C

# (name, magic) in the order the brief asks them to be tried.
MAGICS = [
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("gzip", b"\x1f\x8b\x08"),
    ("lz4", b"\x02\x21\x4c\x18"),  # lz4 "legacy" frame, as used by the kernel's lz4 compressor
    ("lzma", b"\x5d\x00\x00\x00"),
    ("bzip2", b"BZh"),
]
# Give up on a method after this many candidate offsets (short magics occur by chance).
MAX_CANDIDATES = 64

PT_LOAD = 1
PT_NOTE = 4
XEN_ELFNOTE_PHYS32_ENTRY = 18  # xen/include/public/elfnote.h
KERNEL_PHYS_START = 0x1000000  # CONFIG_PHYSICAL_START default


class ToolError(Exception):
    """A user-facing failure (bad input file, missing decompressor)."""


def die(msg):
    print(f"kernel_tool: {msg}", file=sys.stderr)
    sys.exit(1)


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ToolError(f"cannot read {path}: {e.strerror}") from e


def bz_header(img):
    """Returns (protocol version, protected-mode code offset) or raises ToolError."""
    if len(img) < 0x250 or img[OFF_HDRS:OFF_HDRS + 4] != b"HdrS":
        raise ToolError("not a bzImage (no HdrS signature at 0x202)")
    proto = struct.unpack_from("<H", img, OFF_VERSION)[0]
    setup_sects = img[OFF_SETUP_SECTS] or 4
    return proto, (setup_sects + 1) * 512


def bz_version(img):
    """The first word of the kernel_version string (what `uname -r` prints)."""
    bz_header(img)
    ptr = struct.unpack_from("<H", img, OFF_KERNEL_VERSION)[0]
    if ptr == 0:
        raise ToolError("bzImage has no kernel_version string")
    start = ptr + 0x200
    end = img.find(b"\0", start, start + 256)
    if end < 0:
        raise ToolError("unterminated kernel_version string")
    words = img[start:end].decode("ascii", "replace").split()
    if not words:
        raise ToolError("empty kernel_version string")
    return words[0]


def elf_ok(data):
    """True when data is a complete x86-64 ELF64 whose PT_LOAD segments all lie inside it."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    e_machine = struct.unpack_from("<H", data, 18)[0]
    if e_machine != 62:
        return False
    try:
        for p_type, _flags, off, _va, _pa, filesz, _memsz in phdrs(data):
            if p_type == PT_LOAD and off + filesz > len(data):
                return False
    except struct.error:
        return False
    return True


def phdrs(data):
    """Yields (type, flags, offset, vaddr, paddr, filesz, memsz) for each program header."""
    e_phoff = struct.unpack_from("<Q", data, 32)[0]
    e_phentsize, e_phnum = struct.unpack_from("<HH", data, 54)
    for i in range(e_phnum):
        yield struct.unpack_from("<IIQQQQQ", data, e_phoff + i * e_phentsize)


def notes(data, off, size):
    """Yields (name, type, desc) for each ELF note in data[off:off+size]."""
    end = off + size
    while off + 12 <= end:
        namesz, descsz, ntype = struct.unpack_from("<III", data, off)
        off += 12
        name = data[off:off + namesz].rstrip(b"\0")
        off += (namesz + 3) & ~3
        desc = data[off:off + descsz]
        off += (descsz + 3) & ~3
        yield name, ntype, desc


def decompress_builtin(name, blob):
    """Decompress with the Python standard library; trailing garbage is ignored."""
    if name == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(blob)
    if name == "xz":
        return lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(blob)
    if name == "lzma":
        return lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(blob)
    if name == "bzip2":
        return bz2.BZ2Decompressor().decompress(blob)
    raise ToolError(f"no builtin decompressor for {name}")


def decompress_cli(name, blob):
    """Decompress with the lz4/zstd command-line tools (output kept even on a non-zero exit,
    as trailing data after the stream makes them complain)."""
    tool = {"lz4": "lz4", "zstd": "zstd"}[name]
    if shutil.which(tool) is None:
        raise ToolError(f"'{tool}' not found: install the '{tool}' package")
    proc = subprocess.run([tool, "-dc"], input=blob, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, check=False)
    return proc.stdout


def try_decompress(name, blob):
    """Decompressed bytes, or b"" when the data is not a valid stream (ToolError propagates)."""
    try:
        if name in ("lz4", "zstd"):
            return decompress_cli(name, blob)
        return decompress_builtin(name, blob)
    except (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError):
        return b""


def extract(img):
    """Returns (compression name, vmlinux bytes)."""
    proto, pm_start = bz_header(img)
    missing = set()
    # 1. The payload location the boot protocol records.
    if proto >= 0x208:
        poff, plen = struct.unpack_from("<II", img, OFF_PAYLOAD_OFFSET)
        start = pm_start + poff
        blob = img[start:start + plen]
        for name, magic in MAGICS:
            if blob.startswith(magic):
                try:
                    out = try_decompress(name, blob)
                except ToolError as e:
                    missing.add(str(e))
                    break
                if elf_ok(out):
                    return name, out
                break
    # 2. Scan for every magic, like scripts/extract-vmlinux.
    for name, magic in MAGICS:
        pos = img.find(magic)
        tries = 0
        while pos >= 0 and tries < MAX_CANDIDATES:
            try:
                out = try_decompress(name, img[pos:])
            except ToolError as e:
                missing.add(str(e))
                break
            if elf_ok(out):
                return name, out
            tries += 1
            pos = img.find(magic, pos + 1)
    hint = ("; " + "; ".join(sorted(missing))) if missing else ""
    raise ToolError("no compressed ELF payload found in the bzImage" + hint)


def elf_info(data):
    """Facts the VMM cares about: a PT_LOAD at 16 MiB physical and the Xen PVH entry note."""
    if not elf_ok(data):
        raise ToolError("not a complete x86-64 ELF64 file")
    info = {"entry": hex(struct.unpack_from("<Q", data, 24)[0]),
            "pt_load_16m": "no", "pvh_note": "no"}
    for p_type, _f, off, _va, paddr, filesz, _m in phdrs(data):
        if p_type == PT_LOAD and paddr == KERNEL_PHYS_START:
            info["pt_load_16m"] = "yes"
        if p_type == PT_NOTE:
            for name, ntype, desc in notes(data, off, filesz):
                if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY and len(desc) >= 4:
                    info["pvh_note"] = "yes"
                    fmt = "<Q" if len(desc) >= 8 else "<I"
                    info["pvh_entry"] = hex(struct.unpack_from(fmt, desc)[0])
    return info


def check(outdir):
    """Raises ToolError unless OUTDIR holds a consistent vmlinuz/vmlinux/version triple."""
    img = read(os.path.join(outdir, "vmlinuz"))
    ver = bz_version(img)
    with open(os.path.join(outdir, "version"), encoding="ascii") as f:
        if f.read().strip() != ver:
            raise ToolError("version file does not match the bzImage")
    with open(os.path.join(outdir, "vmlinux"), "rb") as f:
        if not elf_ok(f.read()):
            raise ToolError("vmlinux is not a complete ELF")


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    try:
        if cmd == "bzinfo" and len(argv) == 3:
            print(f"version={bz_version(read(argv[2]))}")
        elif cmd == "extract" and len(argv) == 4:
            name, out = extract(read(argv[2]))
            with open(argv[3], "wb") as f:
                f.write(out)
            print(f"compression={name}")
        elif cmd == "elfinfo" and len(argv) == 3:
            for k, v in elf_info(read(argv[2])).items():
                print(f"{k}={v}")
        elif cmd == "check" and len(argv) == 3:
            check(argv[2])
        else:
            die("usage: kernel_tool.py bzinfo IMG | extract IMG OUT | elfinfo ELF | check DIR")
    except (ToolError, OSError) as e:
        die(str(e))


if __name__ == "__main__":
    main(sys.argv)
