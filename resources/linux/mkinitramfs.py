#!/usr/bin/env python3
"""Build or verify the gzip-compressed newc cpio initramfs for Kiln's real-Linux tests.

  mkinitramfs.py build BUSYBOX INIT OUT   write OUT (deterministic: uid/gid 0, mtime 0)
  mkinitramfs.py check ARCHIVE INIT       exit 0 if ARCHIVE is complete and its /init equals INIT
  mkinitramfs.py list ARCHIVE             print the archive's entries

Format: the "newc" (SVR4, magic 070701) cpio layout the kernel unpacks
(Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte ASCII header of
13 8-digit hex fields, the NUL-terminated name, padding to 4 bytes, the data, padding to 4,
ended by an entry named TRAILER!!!. Writing it here needs no root for the device node.
"""

import gzip
import stat
import sys
import zlib

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
# Applets /init and a debugging shell use; all are symlinks to /bin/busybox.
APPLETS = ["sh", "mount", "umount", "mkdir", "uname", "cat", "echo", "grep", "ls", "sync",
           "sleep", "dmesg", "mknod", "reboot", "poweroff"]
DIRS = ["bin", "dev", "proc", "sys", "tmp", "root"]
# (path, major, minor, permissions): the kernel opens /dev/console for PID 1 before /init runs.
NODES = [("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666)]


class CpioError(Exception):
    """Malformed or incomplete archive."""


def pad4(n):
    return (4 - n % 4) % 4


def entry(ino, name, mode, data=b"", rdev=(0, 0)):
    """One newc record."""
    bname = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(bname), 0]
    hdr = MAGIC + b"".join(b"%08x" % f for f in fields)
    out = hdr + bname + b"\0" * pad4(len(hdr) + len(bname))
    return out + data + b"\0" * pad4(len(data))


def build(busybox, init):
    recs = []
    ino = 1

    def add(name, mode, data=b"", rdev=(0, 0)):
        nonlocal ino
        recs.append(entry(ino, name, mode, data, rdev))
        ino += 1

    for d in DIRS:
        add(d, stat.S_IFDIR | 0o755)
    for path, major, minor, perm in NODES:
        add(path, stat.S_IFCHR | perm, rdev=(major, minor))
    add("bin/busybox", stat.S_IFREG | 0o755, busybox)
    for a in APPLETS:
        add("bin/" + a, stat.S_IFLNK | 0o777, b"busybox")
    add("init", stat.S_IFREG | 0o755, init)
    recs.append(entry(0, TRAILER, 0))
    return gzip.compress(b"".join(recs), compresslevel=9, mtime=0)


def parse(raw):
    """Returns {name: (mode, data, (rdevmajor, rdevminor))}; raises CpioError."""
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise CpioError(f"bad gzip stream: {e}") from e
    files = {}
    off = 0
    while True:
        if data[off:off + 6] != MAGIC or off + 110 > len(data):
            raise CpioError(f"bad newc header at offset {off}")
        try:
            f = [int(data[off + 6 + 8 * i:off + 14 + 8 * i], 16) for i in range(13)]
        except ValueError as e:
            raise CpioError(f"bad header field at offset {off}") from e
        mode, size, namesize = f[1], f[6], f[11]
        nstart = off + 110
        name = data[nstart:nstart + namesize - 1].decode("utf-8", "replace")
        dstart = nstart + namesize + pad4(110 + namesize)
        if dstart + size > len(data):
            raise CpioError(f"truncated entry {name!r}")
        if name == TRAILER:
            return files
        files[name] = (mode, data[dstart:dstart + size], (f[9], f[10]))
        off = dstart + size + pad4(size)


def check(raw, init):
    files = parse(raw)
    mode, data, _ = files.get("init", (0, b"", None))
    if not stat.S_ISREG(mode) or data != init:
        raise CpioError("/init missing or differs from the current init script")
    mode, data, _ = files.get("bin/busybox", (0, b"", None))
    if not stat.S_ISREG(mode) or data[:4] != b"\x7fELF":
        raise CpioError("/bin/busybox missing or not an ELF")
    mode, _, rdev = files.get("dev/console", (0, b"", None))
    if not stat.S_ISCHR(mode) or rdev != (5, 1):
        raise CpioError("/dev/console node missing")
    for a in APPLETS:
        if "bin/" + a not in files:
            raise CpioError(f"applet link bin/{a} missing")
    return files


def main(argv):
    try:
        if len(argv) == 5 and argv[1] == "build":
            with open(argv[2], "rb") as b, open(argv[3], "rb") as i:
                out = build(b.read(), i.read())
            with open(argv[4], "wb") as o:
                o.write(out)
        elif len(argv) == 4 and argv[1] == "check":
            with open(argv[2], "rb") as a, open(argv[3], "rb") as i:
                files = check(a.read(), i.read())
            print(f"entries={len(files)}")
        elif len(argv) == 3 and argv[1] == "list":
            with open(argv[2], "rb") as a:
                for name, (mode, data, rdev) in parse(a.read()).items():
                    print(f"{stat.filemode(mode)} {len(data):>9} {rdev[0]}:{rdev[1]} {name}")
        else:
            print("usage: mkinitramfs.py build BUSYBOX INIT OUT | check ARCHIVE INIT | list ARCHIVE",
                  file=sys.stderr)
            return 2
    except (OSError, CpioError) as e:
        print(f"mkinitramfs: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
