#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/<target>/ (small, hand-made inputs in
each target's input format; see the doc comment of each fuzz target).

Run from anywhere: python3 tests/fuzz/make_seeds.py. Re-running rewrites the seeds."""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- config: selector byte (0 JSON, 1 TOML, 2 --disk, 3 --net, 4 size, 5 MAC, 6 --serial)
def config_seeds():
    s = [
        (0, "json-full", '{"kernel":"/k","initrd":"/i","cmdline":"console=ttyS0","cpus":2,'
            '"memory":"256M","serial":"file=/tmp/s","boot_protocol":"pvh","boot_timer":true,'
            '"disks":[{"path":"/d.img","readonly":true,"id":"d0"}],'
            '"nets":[{"tap":"kiln0","mac":"02:00:00:00:00:01"}]}'),
        (0, "json-int-memory", '{"kernel":"/k","memory":64}'),
        (1, "toml-full", 'kernel = "vmlinux"\ninitrd = "initramfs.cpio.gz"\ncpus = 2\n'
            'memory = "1G"\nserial = "none"\nboot_protocol = "linux"\n'
            '[[disks]]\npath = "rootfs.img"\nreadonly = true\n'
            '[[nets]]\ntap = "tap0"\n'),
        (2, "disk", "path=/a.img,readonly=on,id=disk0"),
        (2, "disk-bare", "/b.img,ro=off"),
        (3, "net", "tap=kiln0,mac=02:00:00:00:00:0a"),
        (4, "size", "65536K"),
        (5, "mac", "52:54:00:12:34:56"),
        (6, "serial", "file=/tmp/console.log"),
    ]
    for sel, name, text in s:
        out("config", name, bytes([sel]) + text.encode())


# ---- kernel_loader: flags, cpus, u16 mem step, u8 cmdline len + cmdline,
#      [u16 initrd len + initrd], kernel image
HIMEM = 0x100000


def elf(pvh):
    code = b"\xf4" * 16  # hlt
    note = b""
    if pvh:  # Xen note, type 18 (XEN_ELFNOTE_PHYS32_ENTRY), 32-bit entry
        note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", HIMEM)
    phnum = 2 if pvh else 1
    note_off = 64 + 56 * phnum
    code_off = 0x100
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, HIMEM, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, code_off, 0xFFFFFFFF81000000, HIMEM,
                       len(code), 0x1000, 0x1000)
    phdrs = load
    if pvh:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, note_off, 0, 0, len(note), len(note), 4)
    img = ehdr + phdrs + note
    img += bytes(code_off - len(img)) + code
    return img


def bzimage():
    setup_sects, syssize = 1, 0x40
    img = bytearray((setup_sects + 1) * 512 + syssize * 16)
    struct.pack_into("<BHI", img, 0x1F1, setup_sects, 0, syssize)
    struct.pack_into("<H", img, 0x1FE, 0xAA55)
    img[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", img, 0x206, 0x020F)            # protocol 2.15
    img[0x211] = 1                                        # LOADED_HIGH
    struct.pack_into("<I", img, 0x214, HIMEM)             # code32_start
    struct.pack_into("<I", img, 0x22C, 0x37FFFFFF)        # initrd_addr_max
    struct.pack_into("<I", img, 0x230, 0x1000)            # kernel_alignment
    struct.pack_into("<H", img, 0x236, 1)                 # XLF_KERNEL_64
    struct.pack_into("<I", img, 0x238, 0x7FF)             # cmdline_size
    struct.pack_into("<I", img, 0x260, 0x10000)           # init_size
    return bytes(img)


def loader_seeds():
    cmd = b"console=ttyS0 reboot=k"
    head = lambda flags, cpus: bytes([flags, cpus]) + struct.pack("<H", 0x1000) + bytes([len(cmd)]) + cmd
    out("kernel_loader", "elf-pvh", head(0, 0) + elf(True))
    out("kernel_loader", "elf-linux64", head(1, 1) + elf(False))
    initrd = b"070701" + bytes(58)
    out("kernel_loader", "bzimage-initrd", head(4, 3) + struct.pack("<H", len(initrd)) + initrd + bzimage())


# ---- device targets: kiln_fuzz::script header and ops
F_NEXT, F_WRITE = 1, 2


class Script:
    def __init__(self, layout, features, queues):
        self.b = bytearray([layout]) + struct.pack("<I", features)
        for size_sel, desc, avail, used in queues:
            self.b += bytes([size_sel]) + struct.pack("<HHH", desc, avail, used)

    def mem(self, addr, data):
        assert len(data) < 256
        self.b += bytes([0]) + struct.pack("<HB", addr, len(data)) + data

    def desc(self, q, index, addr, length, flags, nxt):
        self.b += bytes([1, q]) + struct.pack("<HIIHH", index, addr, length, flags, nxt)

    def chain(self, q, first, bufs):
        """bufs: (addr, len, writable); descriptors first, first+1, ... linked."""
        for i, (addr, length, w) in enumerate(bufs):
            last = i + 1 == len(bufs)
            flags = (F_WRITE if w else 0) | (0 if last else F_NEXT)
            self.desc(q, first + i, addr, length, flags, 0 if last else first + i + 1)

    def publish(self, q, head):
        self.b += bytes([2, q]) + struct.pack("<H", head)

    def suppress(self, q, flags, used_event):
        self.b += bytes([4, q]) + struct.pack("<HH", flags, used_event)

    def notify(self, q):
        self.b += bytes([5, q])

    def reg_write(self, offset, value):
        self.b += bytes([7, offset // 4]) + struct.pack("<I", value)

    def reg_read(self, offset, width):
        self.b += bytes([8]) + struct.pack("<HB", offset, width)

    def op(self, op, *raw):
        self.b += bytes([op, *raw])


BLK_FEATURES = (1 << 2) | (1 << 6) | (1 << 9) | (1 << 13) | (1 << 14)
EVENT_IDX = 4
QUEUE16 = (4, 0x0000, 0x1000, 0x2000)  # size 16: desc, avail, used


def blk_req(s, first, rtype, sector, data, status, extra=b""):
    """A request at descriptor `first`: header at 0x3000 + 0x100 * first, `extra`
    device-readable payload after it, `data` = (addr, len, writable) or None, status
    byte at `status`."""
    hdr_addr = 0x3000 + 0x100 * first
    s.mem(hdr_addr, struct.pack("<IIQ", rtype, 0, sector) + extra)
    bufs = [(hdr_addr, 16 + len(extra), False)]
    if data:
        bufs.append(data)
    bufs.append((status, 1, True))
    s.chain(0, first, bufs)
    s.publish(0, first)


def blk_seeds():
    for name, layout in (("write-read-evidx", EVENT_IDX), ("write-read", 0), ("write-read-split", 1)):
        s = Script(layout, BLK_FEATURES, [QUEUE16])
        blk_req(s, 0, 1, 2, (0x7e00, 1024, False), 0x5000)       # OUT, crosses 0x8000 when split
        s.notify(0)
        blk_req(s, 3, 0, 2, (0x6000, 1024, True), 0x5001)        # IN
        s.notify(0)
        out("virtio_blk", name, bytes(s.b))
    s = Script(EVENT_IDX, BLK_FEATURES, [QUEUE16])
    blk_req(s, 0, 8, 0, (0x6000, 20, True), 0x5000)              # GET_ID
    blk_req(s, 3, 4, 0, None, 0x5001)                            # FLUSH
    seg = struct.pack("<QII", 4, 8, 0)
    blk_req(s, 6, 11, 0, None, 0x5002, seg)                      # DISCARD
    blk_req(s, 9, 13, 0, None, 0x5003, struct.pack("<QII", 16, 8, 1))  # WRITE_ZEROES, unmap
    s.suppress(0, 0, 2)
    s.notify(0)
    s.op(10, 0, 8)                                               # config: capacity
    out("virtio_blk", "getid-flush-discard-wz", bytes(s.b))
    s = Script(EVENT_IDX | 8, BLK_FEATURES & ~((1 << 13) | (1 << 14)) | (1 << 5), [QUEUE16])
    blk_req(s, 0, 1, 0, (0x6000, 512, False), 0x5000)            # write to a read-only disk
    s.notify(0)
    s.op(9)                                                      # reset and set up again
    blk_req(s, 0, 0, 0, (0x6000, 512, True), 0x5000)
    s.notify(0)
    out("virtio_blk", "readonly-reset", bytes(s.b))


NET_FEATURES = (1 << 5) | (1 << 16)
NET_OFFLOADS = (1 << 0) | (1 << 1) | (1 << 7) | (1 << 8) | (1 << 11) | (1 << 12)
NET_QUEUES = [(4, 0x0000, 0x0800, 0x1000), (4, 0x2000, 0x2800, 0x3000)]  # RX, TX; size 16
RX, TX = 0, 1


def net_tx(s, first, frame_addr, length):
    s.mem(frame_addr, bytes(12) + bytes(range(min(length - 12, 200))))
    s.chain(TX, first, [(frame_addr, length, False)])
    s.publish(TX, first)


def net_rx_buffer(s, first, addr, length):
    s.chain(RX, first, [(addr, length, True)])
    s.publish(RX, first)


def net_frame(s, length, content):
    s.b += bytes([10]) + struct.pack("<HB", length, len(content)) + content


def net_backend(s, mode):
    s.op(11, mode)


def net_seeds():
    for name, layout in (("tx-rx-evidx", EVENT_IDX), ("tx-rx", 0)):
        s = Script(layout, NET_FEATURES, NET_QUEUES)
        net_tx(s, 0, 0x4000, 72)
        s.notify(TX)
        net_rx_buffer(s, 0, 0x8000, 1526)
        net_rx_buffer(s, 1, 0x8800, 1526)
        net_frame(s, 72, bytes(12) + b"\xff" * 12 + b"\x08\x00")
        s.notify(RX)
        net_frame(s, 60, bytes(12))
        net_backend(s, 8)                      # IN readiness
        out("virtio_net", name, bytes(s.b))
    s = Script(EVENT_IDX, NET_FEATURES, NET_QUEUES)
    net_backend(s, 1)                          # TX would block
    net_tx(s, 0, 0x4000, 100)
    net_tx(s, 1, 0x4100, 12)
    s.notify(TX)
    net_backend(s, 16)                         # accept again, OUT readiness
    net_tx(s, 2, 0x4200, 11)                   # too short: no header
    s.notify(TX)
    out("virtio_net", "tx-backpressure", bytes(s.b))
    s = Script(EVENT_IDX | 8, NET_FEATURES | NET_OFFLOADS, NET_QUEUES)
    net_rx_buffer(s, 0, 0x8000, 1526)
    net_frame(s, 3000, bytes(12))              # larger than the buffer: dropped
    net_frame(s, 1000, bytes(12))
    s.notify(RX)
    net_backend(s, 4 | 8)                      # a failing read
    out("virtio_net", "offloads-rx-drop", bytes(s.b))


class Regs:
    """mmio_transport ops."""

    def __init__(self, layout):
        self.b = bytearray([layout])

    def w(self, offset, value, width=4):
        self.b += bytes([0]) + struct.pack("<HBQ", offset, width, value)

    def r(self, offset, width=4):
        self.b += bytes([1]) + struct.pack("<HB", offset, width)

    def run(self):
        self.b += bytes([2])

    def mem(self, addr, data):
        self.b += bytes([3]) + struct.pack("<HB", addr, len(data)) + data

    def setup(self, features, size_sel, desc, avail, used):
        self.b += bytes([4]) + struct.pack("<IBHHH", features, size_sel, desc, avail, used)


def mmio_seeds():
    s = Regs(0)
    s.setup(BLK_FEATURES | (1 << 29), 4, 0x0000, 0x1000, 0x2000)
    s.mem(0x3000, struct.pack("<IIQ", 8, 0, 0))                       # GET_ID header
    s.mem(0x0000, struct.pack("<QIHH", 0x3000, 16, 1, 1)
          + struct.pack("<QIHH", 0x4000, 20, 3, 2)
          + struct.pack("<QIHH", 0x5000, 1, 2, 0))
    s.mem(0x1000, struct.pack("<HHH", 0, 1, 0))                       # avail: idx 1, ring[0] = 0
    s.w(0x50, 0)                                                      # QueueNotify
    s.run()
    for off in (0x0, 0x4, 0x8, 0xC, 0x10, 0x34, 0x44, 0x60, 0x70, 0xB0, 0xFC):
        s.r(off)
    s.r(0x100, 8)
    s.r(0x120, 1)
    s.w(0x64, 1)                                                      # InterruptACK
    s.w(0x38, 8)                                                      # QueueNum after DRIVER_OK
    s.w(0x70, 0)                                                      # reset
    s.r(0x70)
    out("mmio_transport", "setup-getid-reset", bytes(s.b))
    s = Regs(1)
    for st in (1, 3):
        s.w(0x70, st)
    s.w(0x14, 1)
    s.r(0x10)
    s.w(0x24, 0)
    s.w(0x20, BLK_FEATURES)
    s.w(0x24, 1)
    s.w(0x20, 1)
    s.w(0x70, 0xB)
    s.w(0x30, 0)
    s.w(0x38, 16)
    s.w(0x80, 0x0000)
    s.w(0x90, 0x1000)
    s.w(0x94, 0)
    s.w(0xA0, 0x2000)
    s.w(0x44, 1)
    s.w(0x70, 0xF)
    s.w(0x70, 2, 2)                                                   # 2-byte register write
    s.w(0x71, 0xFF, 1)                                                # unaligned
    s.w(0x80, 0x1234_0000_5678, 8)                                    # 8-byte write
    s.w(0x1004, 1)                                                    # past the slot
    s.w(0x30, 7)                                                      # nonexistent queue
    s.r(0x34)
    s.w(0x50, 9)                                                      # notify nonexistent queue
    s.w(0x70, 0x80)                                                   # FAILED
    s.run()
    out("mmio_transport", "registers-by-hand", bytes(s.b))


RNG_QUEUE = (8, 0x0000, 0x1000, 0x2000)  # size 256: desc, avail, used
LIMITED = 8                               # target bit 3: small rate limiter


def rng_seeds():
    for name, layout in (("requests-evidx", EVENT_IDX), ("requests-split", 1)):
        s = Script(layout, 0, [RNG_QUEUE])
        s.chain(0, 0, [(0x4000, 64, True)])
        s.publish(0, 0)
        s.notify(0)
        s.chain(0, 1, [(0x3000, 16, False), (0x7f00, 512, True)])   # crosses 0x8000 when split
        s.publish(0, 1)
        s.chain(0, 3, [(0x5000, 32, False)])                        # nothing writable
        s.publish(0, 3)
        s.notify(0)
        out("virtio_rng", name, bytes(s.b))
    s = Script(EVENT_IDX | LIMITED, 0, [RNG_QUEUE])
    for i in range(4):
        s.chain(0, i, [(0x4000 + 0x400 * i, 0x400, True)])
        s.publish(0, i)
    s.notify(0)
    s.op(10)                                                        # limiter timer
    s.b += bytes([11, 0]) + struct.pack("<HB", 0, 0)                # remove the limits
    s.op(10)
    out("virtio_rng", "rate-limited", bytes(s.b))
    s = Script(0, 0, [RNG_QUEUE])
    s.chain(0, 0, [(0x4000, 0x8000, True)] * 3)                      # 96 KiB: over the cap
    s.publish(0, 0)
    s.chain(0, 3, [(0xfff0, 64, True)])                             # past guest memory
    s.publish(0, 3)
    s.notify(0)
    s.op(9)                                                         # reset and set up again
    s.chain(0, 0, [(0x4000, 8, True)])
    s.publish(0, 0)
    s.notify(0)
    out("virtio_rng", "cap-outside-reset", bytes(s.b))


VSOCK_QUEUES = [(4, 0x0000, 0x0400, 0x0800), (4, 0x1000, 0x1400, 0x1800),
                (4, 0x2000, 0x2400, 0x2800)]  # RX, TX, event; size 16
VRX, VTX, VEV = 0, 1, 2
HOST_PORT0 = 1 << 30  # the first port the device hands to host-initiated connections


def vsock_hdr(op, src_port, dst_port, length=0, flags=0, src_cid=3, dst_cid=2, typ=1):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, typ,
                       op, flags, 1 << 16, 0)


def vsock_tx(s, first, addr, pkt, chain_len=None):
    s.mem(addr, pkt)
    s.chain(VTX, first, [(addr, chain_len or len(pkt), False)])
    s.publish(VTX, first)
    s.notify(VTX)


def vsock_rx(s, first, count):
    for i in range(count):
        s.chain(VRX, first + i, [(0x4000 + 0x400 * (first + i), 0x400, True)])
        s.publish(VRX, first + i)
    s.notify(VRX)


def vsock_seeds():
    # Guest-initiated: listener on port 5, REQUEST, data both ways, SHUTDOWN, RST.
    s = Script(EVENT_IDX, 0, VSOCK_QUEUES)
    vsock_rx(s, 0, 8)
    s.op(11, 2, 5)                                          # host listener <uds>_5
    vsock_tx(s, 0, 0x3000, vsock_hdr(1, 7000, 5))            # REQUEST
    s.op(11, 4 | 1)                                         # accept, host writes, pass
    vsock_tx(s, 1, 0x3100, vsock_hdr(5, 7000, 5, 4) + b"ping")
    vsock_tx(s, 2, 0x3200, vsock_hdr(7, 7000, 5))            # CREDIT_REQUEST
    vsock_tx(s, 3, 0x3300, vsock_hdr(4, 7000, 5, flags=3))   # SHUTDOWN both
    vsock_tx(s, 4, 0x3400, vsock_hdr(1, 7001, 6))            # no listener: RST
    out("virtio_vsock", "guest-connect", bytes(s.b))
    # Host-initiated: CONNECT 9, guest RESPONSE, data, host close.
    s = Script(0, 0, VSOCK_QUEUES)
    vsock_rx(s, 0, 8)
    s.op(10, 0, 9)                                          # client: CONNECT 9
    s.op(11, 1)                                             # backend pass: REQUEST
    vsock_tx(s, 0, 0x3000, vsock_hdr(2, 9, HOST_PORT0))      # RESPONSE
    s.op(10, 3, 0)                                          # client reads OK
    s.b += bytes([10, 1, 0, 5]) + b"hello"                  # client writes
    s.op(11, 1)
    vsock_tx(s, 1, 0x3100, vsock_hdr(5, 9, HOST_PORT0, 5) + b"world")
    s.op(10, 2, 0)                                          # client closes
    s.op(11, 1)
    vsock_tx(s, 2, 0x3200, vsock_hdr(3, 9, HOST_PORT0))      # RST
    out("virtio_vsock", "host-connect", bytes(s.b))
    # Malformed packets, then a transport reset with an event buffer.
    s = Script(EVENT_IDX, 0, VSOCK_QUEUES)
    vsock_rx(s, 0, 8)
    vsock_tx(s, 0, 0x3000, vsock_hdr(1, 1, 2, src_cid=4))      # wrong source CID
    vsock_tx(s, 1, 0x3100, vsock_hdr(5, 1, 2, length=100), 54)  # len beyond the chain
    vsock_tx(s, 2, 0x3200, vsock_hdr(1, 1, 2, typ=2))          # not STREAM
    vsock_tx(s, 3, 0x3300, vsock_hdr(99, 1, 2))                # unknown op
    vsock_tx(s, 4, 0x3400, bytes(8))                           # shorter than the header
    s.chain(VEV, 0, [(0x3800, 4, True)])
    s.publish(VEV, 0)
    s.notify(VEV)
    s.op(11, 8)                                              # transport reset
    out("virtio_vsock", "malformed-reset", bytes(s.b))


SEEDS = {
    "config": config_seeds,
    "mmio_transport": mmio_seeds,
    "kernel_loader": loader_seeds,
    "virtio_blk": blk_seeds,
    "virtio_net": net_seeds,
    "virtio_rng": rng_seeds,
    "virtio_vsock": vsock_seeds,
}

if __name__ == "__main__":
    for name in sys.argv[1:] or SEEDS:
        SEEDS[name]()
