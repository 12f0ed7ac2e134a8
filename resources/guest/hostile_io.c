/*
 * kiln.mode=hostile, second half: notify storms, reset during I/O, register abuse (narrow,
 * unaligned, out-of-range accesses; reads of write-only and writes to read-only registers;
 * config-space writes; status and feature abuse), accesses to unassigned MMIO and ports,
 * and the endless load of kiln.hostile=busy. Driver core and runner: hostile.c.
 */
#include "boot.h"
#include "hostile.h"
#include "lib.h"
#include "virtio.h"

#define DEFAULT_STORM 20000
#define STRAY_ROUNDS 300
#define RESET_REQS 5 /* four reads, one write */
#define RESET_SECTOR 120 /* rewritten with the host's own pattern: unchanged either way */
#define BUSY_REQ (16u << 20)
#define RESET_REQ (1u << 20)
#define BUSY_SLOTS (H_BUSY_SIZE / BUSY_REQ) /* data areas in H_BUSY */
#define BUSY_QSIZE 256                 /* Kiln's largest queue */
#define BUSY_INFLIGHT (BUSY_QSIZE / 2) /* two descriptors per request */
#define BUSY_HDR (H_AREA + 0x20000)    /* 16 bytes per request */
#define RESET_HDR (H_AREA + 0x3200)    /* 16 bytes per request */
#define RESET_STATUS (H_AREA + 0x3400) /* one byte per request */

static inline u16 mmio_read16(u64 a) { return *(volatile u16 *)PHYS(a); }
static inline u64 mmio_read64(u64 a) { return *(volatile u64 *)PHYS(a); }
static inline void mmio_write16(u64 a, u16 v) { *(volatile u16 *)PHYS(a) = v; }
static inline void mmio_write64(u64 a, u64 v) { *(volatile u64 *)PHYS(a) = v; }
static inline u16 inw(u16 port)
{
    u16 v;
    __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}
static inline u32 inl(u16 port)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port) : "memory");
    return v;
}
static inline void outw(u16 port, u16 v)
{
    __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port) : "memory");
}
static inline void outl(u16 port, u32 v)
{
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static u64 storm_count(void)
{
    const char *v;
    size_t n;
    u64 x;
    if (cmdline_get("kiln.storm", &v, &n) && parse_u64(v, n, &x))
        return x;
    return DEFAULT_STORM;
}

/* ---- notify storms (on a live device; then it must still serve a read) ---- */

static struct verdict storm(struct hdev *d, u32 queue)
{
    u64 n = storm_count();
    for (u64 i = 0; i < n; i++)
        h_wr(d, R_QUEUE_NOTIFY, queue);
    kprintf("KILN-GUEST hostile %s: %lu notifications of queue %u sent\n", h_case(),
            (unsigned long)n, queue);
    return h_still_serves(d);
}
static struct verdict c_storm_missing_queue(struct hdev *d) { return storm(d, 5); }
static struct verdict c_storm_idle_queue(struct hdev *d) { return storm(d, 0); }

/* ---- reset during I/O ---- */

/*
 * Four reads of up to 1 MiB and one write (of the host's own bytes) posted on a second
 * ring set and notified, then Status = 0 at once. After a proper init elsewhere and a
 * read, the old used ring must be as it was right after the reset: nothing completes late.
 */
static struct verdict c_reset_mid_io(struct hdev *d)
{
    if (!h_negotiate(d, F_VERSION_1) || h_queue_at(d, 16, H_RING2) != 1 ||
        (h_driver_ok(d) & S_NEEDS_RESET))
        return FAILV("setup failed, status", h_rd(d, R_STATUS));
    u64 per = d->capacity / RESET_REQS;
    if (per > RESET_REQ / SECTOR)
        per = RESET_REQ / SECTOR;
    u8 *w = PHYS(H_BUSY + (RESET_REQS - 1) * (u64)RESET_REQ);
    for (u32 s = 0; s < 2; s++)
        for (u32 i = 0; i < SECTOR; i++)
            w[s * SECTOR + i] = h_host_byte(RESET_SECTOR + s, i);
    for (u16 j = 0; j < RESET_REQS; j++) {
        bool wr = j == RESET_REQS - 1;
        u64 hdr = RESET_HDR + 16 * (u64)j, st = RESET_STATUS + j;
        pw32(hdr, wr ? T_OUT : T_IN);
        pw32(hdr + 4, 0);
        pw64(hdr + 8, wr ? RESET_SECTOR : per * j);
        pw8(st, 0xff);
        u64 buf = H_BUSY + (u64)RESET_REQ * j;
        u32 len = wr ? 2 * SECTOR : (u32)(per * SECTOR);
        h_desc(d, 3 * j, hdr, 16, D_NEXT, 3 * j + 1);
        h_desc(d, 3 * j + 1, buf, len, (u16)(D_NEXT | (wr ? 0 : D_WRITE)), 3 * j + 2);
        h_desc(d, 3 * j + 2, st, 1, D_WRITE, 0);
        h_post(d, 3 * j);
    }
    h_notify(d);
    h_wr(d, R_STATUS, 0);
    u32 st = h_rd(d, R_STATUS);
    if (st != 0)
        return FAILV("status after reset", st);
    u64 used = d->used;
    u16 idx = pr16(used + 2);
    u64 snap[RESET_REQS];
    for (unsigned j = 0; j < RESET_REQS; j++)
        snap[j] = pr32(used + 4 + 8 * j) | ((u64)pr32(used + 8 + 8 * j) << 32);
    kprintf("KILN-GUEST hostile %s: %u of %u requests completed before the reset\n", h_case(),
            idx, RESET_REQS);
    if (!h_open(d))
        return FAILV("re-initialisation failed, status", h_rd(d, R_STATUS));
    struct verdict v = h_still_serves(d);
    if (v.why)
        return v;
    if (pr16(used + 2) != idx)
        return FAILV("device completed requests of the old rings after reset, used idx",
                     pr16(used + 2));
    for (unsigned j = 0; j < RESET_REQS; j++)
        if (snap[j] != (pr32(used + 4 + 8 * j) | ((u64)pr32(used + 8 + 8 * j) << 32)))
            return FAILV("device wrote the old used ring after reset, element", j);
    return PASS;
}

/* ---- register abuse (live device; afterwards it serves a read or needs reset) ---- */

static struct verdict identity_intact(struct hdev *d, u64 features)
{
    if (h_rd(d, R_MAGIC) != 0x74726976)
        return FAILV("MagicValue changed to", h_rd(d, R_MAGIC));
    if (h_rd(d, R_VERSION) != 2)
        return FAILV("Version changed to", h_rd(d, R_VERSION));
    if (h_rd(d, R_DEVICE_ID) != VIRTIO_ID_BLOCK)
        return FAILV("DeviceID changed to", h_rd(d, R_DEVICE_ID));
    h_wr(d, R_DEV_FEATURES_SEL, 0);
    u64 f = h_rd(d, R_DEV_FEATURES);
    h_wr(d, R_DEV_FEATURES_SEL, 1);
    f |= (u64)h_rd(d, R_DEV_FEATURES) << 32;
    if (f != features)
        return FAILV("DeviceFeatures changed to", f);
    u64 cap = h_rd(d, R_CONFIG) | ((u64)h_rd(d, R_CONFIG + 4) << 32);
    if (cap != d->capacity)
        return FAILV("capacity changed to", cap);
    return PASS;
}

static u64 features_of(struct hdev *d)
{
    h_wr(d, R_DEV_FEATURES_SEL, 0);
    u64 f = h_rd(d, R_DEV_FEATURES);
    h_wr(d, R_DEV_FEATURES_SEL, 1);
    return f | ((u64)h_rd(d, R_DEV_FEATURES) << 32);
}

static struct verdict after_abuse(struct hdev *d, u64 features, u64 sink)
{
    kprintf("KILN-GUEST hostile %s: status 0x%x (reads folded 0x%lx)\n", h_case(),
            h_rd(d, R_STATUS), (unsigned long)sink);
    struct verdict v = identity_intact(d, features);
    return v.why ? v : h_still_serves(d);
}

/* 1-, 2- and 8-byte and unaligned accesses to the registers. */
static struct verdict c_mmio_narrow(struct hdev *d)
{
    u64 f = features_of(d), b = d->base, sink = 0;
    static const u32 offs[] = { R_MAGIC, R_DEVICE_ID, R_QUEUE_NUM_MAX, R_STATUS,
                                R_INT_STATUS, R_CONFIG_GEN };
    for (unsigned i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
        sink ^= mmio_read8(b + offs[i]) ^ mmio_read8(b + offs[i] + 3);
        sink ^= mmio_read16(b + offs[i]) ^ mmio_read16(b + offs[i] + 2);
        sink ^= mmio_read64(b + offs[i]);
        sink ^= mmio_read32(b + offs[i] + 1);
    }
    mmio_write8(b + R_STATUS, 0x7f);
    mmio_write8(b + R_STATUS + 1, 0xff);
    mmio_write16(b + R_QUEUE_SEL, 5);
    mmio_write16(b + R_QUEUE_NOTIFY, 0);
    mmio_write8(b + R_QUEUE_NOTIFY, 0);
    mmio_write64(b + R_DRV_FEATURES_SEL, ~0ULL);
    mmio_write64(b + R_QUEUE_DESC_LO, 0);
    mmio_write32(b + R_STATUS + 2, 0);
    mmio_write32(b + R_QUEUE_NOTIFY + 1, 0);
    mmio_write64(b + R_INT_ACK - 4, ~0ULL);
    return after_abuse(d, f, sink);
}

/* Reads of write-only and undefined registers. */
static struct verdict c_mmio_write_only_reads(struct hdev *d)
{
    static const u32 offs[] = { R_DEV_FEATURES_SEL, R_DRV_FEATURES, R_DRV_FEATURES_SEL,
                                R_QUEUE_SEL, R_QUEUE_NUM, R_QUEUE_NOTIFY, R_INT_ACK,
                                R_QUEUE_DESC_LO, R_QUEUE_DESC_HI, R_QUEUE_DRIVER_LO,
                                R_QUEUE_DRIVER_HI, R_QUEUE_DEVICE_LO, R_QUEUE_DEVICE_HI,
                                0x018, 0x03c, 0x048, 0x074, 0x0a8, 0x0c0, 0x0f0, 0x0f8 };
    u64 f = features_of(d), sink = 0;
    for (unsigned i = 0; i < sizeof(offs) / sizeof(offs[0]); i++)
        sink = (sink << 1) ^ h_rd(d, offs[i]);
    return after_abuse(d, f, sink);
}

/* Writes to read-only and undefined registers. */
static struct verdict c_mmio_read_only_writes(struct hdev *d)
{
    static const u32 offs[] = { R_MAGIC, R_VERSION, R_DEVICE_ID, R_VENDOR_ID, R_DEV_FEATURES,
                                R_QUEUE_NUM_MAX, R_INT_STATUS, R_CONFIG_GEN,
                                0x018, 0x03c, 0x048, 0x074, 0x0a8, 0x0c0, 0x0f0, 0x0f8 };
    u64 f = features_of(d);
    u32 gen = h_rd(d, R_CONFIG_GEN);
    for (unsigned i = 0; i < sizeof(offs) / sizeof(offs[0]); i++)
        h_wr(d, offs[i], 0xffffffffu);
    if (h_rd(d, R_CONFIG_GEN) != gen)
        return FAILV("ConfigGeneration writable, now", h_rd(d, R_CONFIG_GEN));
    return after_abuse(d, f, gen);
}

/* Accesses past the end of the config space, up to the end of the 4 KiB slot. */
static struct verdict c_mmio_beyond_config(struct hdev *d)
{
    static const u32 offs[] = { 0x13c, 0x140, 0x200, 0x800, 0xff8, 0xffc };
    u64 f = features_of(d), b = d->base, sink = 0;
    for (unsigned i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
        sink ^= h_rd(d, offs[i]) ^ mmio_read8(b + offs[i] + 3);
        h_wr(d, offs[i], 0xffffffffu);
        mmio_write8(b + offs[i] + 1, 0xff);
    }
    sink ^= mmio_read64(b + 0xff8);
    mmio_write64(b + 0xff8, ~0ULL);
    return after_abuse(d, f, sink);
}

/* Writes all over virtio-blk's (read-only) config space. */
static struct verdict c_config_writes(struct hdev *d)
{
    u64 f = features_of(d), b = d->base;
    u32 blk_size = h_rd(d, R_CONFIG + 0x14);
    h_wr(d, R_CONFIG, 0);
    h_wr(d, R_CONFIG + 4, 0);
    for (u32 off = 0; off < 0x40; off++)
        mmio_write8(b + R_CONFIG + off, 0xff);
    for (u32 off = 0; off < 0x40; off += 2)
        mmio_write16(b + R_CONFIG + off, 0x1234);
    mmio_write64(b + R_CONFIG + 0x20, ~0ULL);
    if (h_rd(d, R_CONFIG + 0x14) != blk_size)
        return FAILV("config blk_size changed to", h_rd(d, R_CONFIG + 0x14));
    return after_abuse(d, f, blk_size);
}

/* Queue registers rewritten while the device runs. */
static struct verdict c_queue_regs_while_live(struct hdev *d)
{
    u64 f = features_of(d);
    h_wr(d, R_QUEUE_NUM, 0);
    h_wr(d, R_QUEUE_DESC_LO, 0x1234);
    h_wr(d, R_QUEUE_DESC_HI, 0xffff);
    h_wr(d, R_QUEUE_DRIVER_LO, 0);
    h_wr(d, R_QUEUE_DEVICE_LO, 0x10);
    h_wr(d, R_QUEUE_SEL, 7);
    h_wr(d, R_QUEUE_NUM, 4);
    h_wr(d, R_QUEUE_READY, 1);
    h_wr(d, R_QUEUE_SEL, 0);
    return after_abuse(d, f, h_rd(d, R_QUEUE_READY));
}

/* Status bits out of order, features never offered, FAILED, all bits. */
static struct verdict c_status_abuse(struct hdev *d)
{
    static const u32 seqs[][3] = {
        { S_DRIVER_OK, 0, 0 },
        { S_ACK, S_ACK | S_DRIVER | S_DRIVER_OK, 0 },
        { S_ACK, S_ACK | S_DRIVER, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK },
        { S_FAILED, 0xff, 0 },
        { S_NEEDS_RESET, S_ACK | S_NEEDS_RESET, 0 },
    };
    for (unsigned i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
        h_wr(d, R_STATUS, 0);
        for (unsigned j = 0; j < 3 && seqs[i][j]; j++)
            h_wr(d, R_STATUS, seqs[i][j]);
        h_wr(d, R_QUEUE_NOTIFY, 0);
        kprintf("KILN-GUEST hostile %s: sequence %u leaves status 0x%x\n", h_case(), i,
                h_rd(d, R_STATUS));
    }
    /* Accept a feature the device never offers (bit 63): FEATURES_OK must not stick. */
    h_wr(d, R_STATUS, 0);
    h_wr(d, R_STATUS, S_ACK);
    h_wr(d, R_STATUS, S_ACK | S_DRIVER);
    u64 f = features_of(d);
    if (f & (1ULL << 63))
        return FAILV("device offers feature bit 63, features", f);
    h_wr(d, R_DRV_FEATURES_SEL, 0);
    h_wr(d, R_DRV_FEATURES, (u32)f);
    h_wr(d, R_DRV_FEATURES_SEL, 1);
    h_wr(d, R_DRV_FEATURES, (u32)(f >> 32) | 0x80000000u);
    h_wr(d, R_DRV_FEATURES_SEL, 2);
    h_wr(d, R_DRV_FEATURES, 0xffffffffu);
    h_wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    u32 st = h_rd(d, R_STATUS);
    if (st & S_FEATURES_OK)
        return FAILV("FEATURES_OK accepted with a feature never offered, status", st);
    h_wr(d, R_STATUS, 0);
    return PASS;
}

/* ---- nobody home ---- */

/* MMIO to unused virtio slots and elsewhere in the window, the device live meanwhile. */
static struct verdict c_unassigned_mmio(struct hdev *d)
{
    u64 addrs[] = { H_MMIO_WINDOW + 0x1000ULL * virtio_count(),
                    H_MMIO_WINDOW + 0x1000ULL * virtio_count() + R_QUEUE_NOTIFY,
                    H_MMIO_WINDOW + 0x1f000, H_MMIO_WINDOW + 0x800000, H_MMIO_WINDOW + 0xffff000 };
    u64 sink = 0;
    for (unsigned r = 0; r < STRAY_ROUNDS; r++)
        for (unsigned i = 0; i < sizeof(addrs) / sizeof(addrs[0]); i++) {
            sink ^= mmio_read32(addrs[i]);
            mmio_write32(addrs[i], r);
        }
    return after_abuse(d, features_of(d), sink);
}

/* Port I/O to ports nothing claims (not COM1, not the i8042). */
static struct verdict c_unassigned_pio(struct hdev *d)
{
    u64 sink = 0;
    for (unsigned r = 0; r < STRAY_ROUNDS; r++) {
        outb(0x1234, (u8)r);
        sink ^= inb(0x1234);
        outw(0x510, (u16)r);
        sink ^= inw(0x511);
        outl(0xcf8, 0x80000000u | r);
        sink ^= inl(0xcfc);
        outb(0xe9, 'x');
        sink ^= inb(0xfff0);
    }
    return after_abuse(d, features_of(d), sink);
}

const struct hcase hostile_io_cases[] = {
    { "storm_missing_queue", c_storm_missing_queue },
    { "storm_idle_queue", c_storm_idle_queue },
    { "reset_mid_io", c_reset_mid_io },
    { "mmio_narrow", c_mmio_narrow },
    { "mmio_write_only_reads", c_mmio_write_only_reads },
    { "mmio_read_only_writes", c_mmio_read_only_writes },
    { "mmio_beyond_config", c_mmio_beyond_config },
    { "config_writes", c_config_writes },
    { "queue_regs_while_live", c_queue_regs_while_live },
    { "status_abuse", c_status_abuse },
    { "unassigned_mmio", c_unassigned_mmio },
    { "unassigned_pio", c_unassigned_pio },
};
const unsigned hostile_io_ncases = sizeof(hostile_io_cases) / sizeof(hostile_io_cases[0]);

/* ---- kiln.hostile=busy ---- */

/*
 * Request j: header, then one device-writable descriptor of BUSY_REQ + 1 bytes whose last
 * byte is the status. Requests share the BUSY_SLOTS data areas (nothing is checked), so
 * 2 GiB can be in flight in 16 MiB of RAM.
 */
static void busy_post(struct hdev *d, u16 j, u64 *next)
{
    u64 hdr = BUSY_HDR + 16 * (u64)j, per = BUSY_REQ / SECTOR;
    if (*next + per > d->capacity)
        *next = 0;
    pw32(hdr, T_IN);
    pw32(hdr + 4, 0);
    pw64(hdr + 8, *next);
    *next += per;
    h_desc(d, 2 * j, hdr, 16, D_NEXT, 2 * j + 1);
    h_desc(d, 2 * j + 1, H_BUSY + (j % BUSY_SLOTS) * BUSY_REQ, BUSY_REQ + 1, D_WRITE, 0);
    h_post(d, 2 * j);
}

/*
 * BUSY_INFLIGHT 16 MiB reads in flight forever, each re-posted when it completes; while
 * nothing completes, QueueNotify again and again. EVENT_IDX is negotiated: a device that
 * drains "until the ring stays empty" never gets to anything else. Prints
 * "KILN-GUEST hostile busy" once every request has completed once. Never returns unless
 * setup fails or the device asks for a reset.
 */
void hostile_busy(struct hdev *d)
{
    if (d->capacity < BUSY_REQ / SECTOR) {
        check_fail("hostile_busy", "disk has %lu sectors, need at least %u",
                   (unsigned long)d->capacity, BUSY_REQ / SECTOR);
        return;
    }
    if (!h_negotiate(d, F_VERSION_1 | F_EVENT_IDX) || h_queue_at(d, BUSY_QSIZE, H_RING) != 1 ||
        (h_driver_ok(d) & S_NEEDS_RESET)) {
        check_fail("hostile_busy", "setup failed, status 0x%x", h_rd(d, R_STATUS));
        return;
    }
    u64 next = 0, done = 0, idle = 0;
    for (u16 j = 0; j < BUSY_INFLIGHT; j++)
        busy_post(d, j, &next);
    h_notify(d);
    for (;;) {
        if (pr16(d->used + 2) != d->last_used) {
            barrier();
            u32 id = pr32(d->used + 4 + 8 * (u64)(d->last_used % d->num));
            d->last_used++;
            if (id % 2 == 0 && id / 2 < BUSY_INFLIGHT)
                busy_post(d, (u16)(id / 2), &next);
            h_notify(d);
            if (++done == BUSY_INFLIGHT)
                kprintf("KILN-GUEST hostile busy\n");
            continue;
        }
        if ((++idle & 63) == 0)
            h_notify(d);
        if ((idle & 0xffff) == 0 && (h_rd(d, R_STATUS) & S_NEEDS_RESET)) {
            check_fail("hostile_busy", "DEVICE_NEEDS_RESET under a valid load");
            return;
        }
        cpu_pause();
    }
}
