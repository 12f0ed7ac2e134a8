/*
 * kiln.mode=hostile: a virtio-blk driver that misbehaves on purpose (virtio 1.2 §2.7, §4.2,
 * §5.2). This file holds the runner and the descriptor, ring and buffer cases; hostile_io.c
 * the register, storm, reset and busy cases; hostile_net.c the virtio-net cases;
 * hostile_smp.c the two-vCPU case; hostile_driver.c the driver core. After each case the
 * runner resets the device, initialises it properly and checks that a read of sectors 0..3
 * (host pattern) and a write + read-back of sector 16 + <case number> work; each case is
 * one "KILN-CHECK hostile_<case>" line. kiln.hostile=<case> runs one case, =net the net
 * cases, =smp the two-vCPU case, =busy the endless read load.
 */
#include "boot.h"
#include "hostile.h"
#include "lib.h"
#include "modes.h"
#include "virtio.h"

#define SECTOR_FIRST_WRITE 16  /* recovery writes go to sector 16 + case number */
#define SECTOR_BAD_WRITE 100   /* malformed writes aim here; it must stay untouched */
#define MIN_SECTORS 128
#define SMP_CASE_NUMBER 60     /* after every other case: its write goes to sector 76 */

/* Reset, proper init, read sectors 0..3, write and read back sector 16 + k. */
static struct verdict recover(struct hdev *d, unsigned k)
{
    if (!h_open(d))
        return FAILV("re-initialisation failed, status", h_rd(d, R_STATUS));
    memset(PHYS(H_DATA), 0, 4 * SECTOR);
    int st = h_request(d, T_IN, 0, H_DATA, 4 * SECTOR);
    if (st != BLK_S_OK)
        return h_status_verdict("read after re-init", st);
    struct verdict v = h_verify(0, 4, h_host_byte);
    if (v.why)
        return v;
    u64 s = SECTOR_FIRST_WRITE + k;
    u8 *p = PHYS(H_DATA);
    for (u32 i = 0; i < SECTOR; i++)
        p[i] = h_write_byte(s, i);
    st = h_request(d, T_OUT, s, H_DATA, SECTOR);
    if (st != BLK_S_OK)
        return h_status_verdict("write after re-init", st);
    kprintf("KILN-GUEST hostile wrote sector %lu\n", (unsigned long)s);
    memset(p, 0, SECTOR);
    st = h_request(d, T_IN, s, H_DATA, SECTOR);
    if (st != BLK_S_OK)
        return h_status_verdict("read-back after re-init", st);
    return h_verify(s, 1, h_write_byte);
}

/* ---- descriptor chains ---- */

/* hdr -> status (W), and the status descriptor links to itself. */
static struct verdict c_chain_loop(struct hdev *d)
{
    h_hdr(T_IN, 0);
    h_desc(d, 0, H_HDR, 16, D_NEXT, 1);
    h_desc(d, 1, H_STATUS, 1, D_WRITE | D_NEXT, 1);
    return h_submit(d, 0, EXP_ERR);
}

/* hdr -> 1 -> 2 -> ... -> 7 -> 1 ...: longer than the queue (every W buffer is the status). */
static struct verdict c_chain_too_long(struct hdev *d)
{
    h_hdr(T_IN, 0);
    h_desc(d, 0, H_HDR, 16, D_NEXT, 1);
    for (u16 i = 1; i < H_QSIZE; i++)
        h_desc(d, i, H_STATUS, 1, D_WRITE | D_NEXT, i + 1 < H_QSIZE ? i + 1 : 1);
    return h_submit(d, 0, EXP_ERR);
}

static struct verdict next_out_of_table(struct hdev *d, u16 next)
{
    h_hdr(T_IN, 0);
    h_desc(d, 0, H_HDR, 16, D_NEXT, 1);
    h_desc(d, 1, H_STATUS, 1, D_WRITE | D_NEXT, next);
    return h_submit(d, 0, EXP_ERR);
}
static struct verdict c_next_oob(struct hdev *d) { return next_out_of_table(d, H_QSIZE); }
static struct verdict c_next_far(struct hdev *d) { return next_out_of_table(d, 0xffff); }

static struct verdict head_out_of_table(struct hdev *d, u16 head)
{
    h_hdr(T_IN, 0);
    return h_submit(d, head, EXP_ANY);
}
static struct verdict c_head_oob(struct hdev *d) { return head_out_of_table(d, H_QSIZE); }
static struct verdict c_head_far(struct hdev *d) { return head_out_of_table(d, 0xffff); }

/* A valid request, then avail->idx 1000 ahead of what the device has seen. */
static struct verdict avail_ahead(struct hdev *d, u64 features)
{
    if (!h_negotiate(d, features) || h_queue_at(d, H_QSIZE, H_RING) != 1 ||
        (h_driver_ok(d) & S_NEEDS_RESET))
        return FAILV("setup failed, status", h_rd(d, R_STATUS));
    h_hdr(T_IN, 0);
    h_desc(d, 0, H_HDR, 16, D_NEXT, 1);
    h_desc(d, 1, H_DATA, SECTOR, D_WRITE | D_NEXT, 2);
    h_desc(d, 2, H_STATUS, 1, D_WRITE, 0);
    pw16(d->avail + 4, 0);
    d->avail_idx = 1000;
    pw16(d->avail + 2, d->avail_idx);
    h_notify(d);
    u32 id = 0, len = 0;
    return h_judge(d, h_wait(d, &id, &len), id, len, EXP_RESET);
}
static struct verdict c_avail_ahead(struct hdev *d) { return avail_ahead(d, F_VERSION_1); }
static struct verdict c_avail_ahead_event_idx(struct hdev *d)
{
    return avail_ahead(d, F_VERSION_1 | F_EVENT_IDX);
}

/* ---- rings where they must not be ---- */

/*
 * Queue 0 at the given addresses (queue size 8). Acceptable: QueueReady reads 0, or
 * DEVICE_NEEDS_RESET at DRIVER_OK or after a request; a completion only when `used_ok`.
 */
static struct verdict bad_rings(struct hdev *d, u64 desc, u64 avail, u64 used, bool used_ok)
{
    if (!h_negotiate(d, F_VERSION_1))
        return FAILV("feature negotiation failed, status", h_rd(d, R_STATUS));
    h_zero_ram(d, desc, 16 * H_QSIZE);
    h_zero_ram(d, avail, 6 + 2 * H_QSIZE);
    h_zero_ram(d, used, 6 + 8 * H_QSIZE);
    u32 ready = h_queue(d, H_QSIZE, desc, avail, used);
    if (ready == 0) {
        kprintf("KILN-GUEST hostile %s: QueueReady reads 0\n", h_case());
        return PASS;
    }
    u32 st = h_driver_ok(d);
    if (st & S_NEEDS_RESET)
        return h_needs_reset_seen(h_ack(d), "at DRIVER_OK");
    bool writable = desc + 16 * H_QSIZE <= d->ram_top && avail + 6 + 2 * H_QSIZE <= d->ram_top;
    if (writable) {
        h_hdr(T_IN, 0);
        h_desc(d, 0, H_HDR, 16, D_NEXT, 1);
        h_desc(d, 1, H_DATA, SECTOR, D_WRITE | D_NEXT, 2);
        h_desc(d, 2, H_STATUS, 1, D_WRITE, 0);
        return h_submit(d, 0, used_ok ? EXP_OK_ERR : EXP_RESET);
    }
    h_notify(d);
    u32 id = 0, len = 0;
    return h_judge(d, h_wait(d, &id, &len), id, len, EXP_RESET);
}

static struct verdict c_ring_desc_odd(struct hdev *d)
{
    return bad_rings(d, H_RING + 8, H_RING + 0x1000, H_RING + 0x2000, false);
}
static struct verdict c_ring_avail_odd(struct hdev *d)
{
    return bad_rings(d, H_RING, H_RING + 0x1001, H_RING + 0x2000, false);
}
static struct verdict c_ring_used_odd(struct hdev *d)
{
    return bad_rings(d, H_RING, H_RING + 0x1000, H_RING + 0x2002, false);
}
static struct verdict c_ring_beyond_ram(struct hdev *d)
{
    return bad_rings(d, H_FAR, H_FAR + 0x1000, H_FAR + 0x2000, false);
}
/* The used ring straddles the end of RAM (its index is inside, its elements are not). */
static struct verdict c_ring_ram_end(struct hdev *d)
{
    return bad_rings(d, H_RING, H_RING + 0x1000, d->ram_top - 8, false);
}
/* The avail ring on the device's own registers. */
static struct verdict c_ring_in_mmio(struct hdev *d)
{
    return bad_rings(d, H_RING, d->base, H_RING + 0x2000, false);
}

/*
 * Rings at guest address 0 (desc 0, avail 0x80, used 0x100) holding one valid request,
 * avail->idx already 1 before QueueReady. Address 0 is RAM: serving it is fine too.
 */
static struct verdict c_ring_at_zero(struct hdev *d)
{
    static u8 saved[0x200];
    memcpy(saved, PHYS(0), sizeof(saved));
    if (!h_negotiate(d, F_VERSION_1))
        return FAILV("feature negotiation failed, status", h_rd(d, R_STATUS));
    memset(PHYS(0), 0, sizeof(saved));
    d->desc = 0;
    d->avail = 0x80;
    d->used = 0x100;
    d->num = H_QSIZE;
    d->avail_idx = 0;
    d->last_used = 0;
    h_hdr(T_IN, 0);
    h_desc(d, 0, H_HDR, 16, D_NEXT, 1);
    h_desc(d, 1, H_DATA, SECTOR, D_WRITE | D_NEXT, 2);
    h_desc(d, 2, H_STATUS, 1, D_WRITE, 0);
    h_post(d, 0);
    struct verdict v = PASS;
    u32 ready = h_queue(d, H_QSIZE, 0, 0x80, 0x100);
    if (ready == 0) {
        kprintf("KILN-GUEST hostile %s: QueueReady reads 0\n", h_case());
    } else if (h_driver_ok(d) & S_NEEDS_RESET) {
        v = h_needs_reset_seen(h_ack(d), "at DRIVER_OK");
    } else {
        h_notify(d);
        u32 id = 0, len = 0;
        v = h_judge(d, h_wait(d, &id, &len), id, len, EXP_OK_ERR);
    }
    h_wr(d, R_STATUS, 0);
    memcpy(PHYS(0), saved, sizeof(saved));
    return v;
}

/* QueueNum and QueueReady only: the addresses stay whatever reset left (0, overlapping). */
static struct verdict c_ring_unset(struct hdev *d)
{
    if (!h_negotiate(d, F_VERSION_1))
        return FAILV("feature negotiation failed, status", h_rd(d, R_STATUS));
    h_wr(d, R_QUEUE_SEL, 0);
    h_wr(d, R_QUEUE_NUM, H_QSIZE);
    h_wr(d, R_QUEUE_READY, 1);
    u32 ready = h_rd(d, R_QUEUE_READY);
    u32 st = h_driver_ok(d);
    kprintf("KILN-GUEST hostile %s: QueueReady %u, status 0x%x\n", h_case(), ready, st);
    /* Whatever happens, the device must not wedge: only the recovery decides. */
    h_wr(d, R_QUEUE_NOTIFY, 0);
    h_ack(d);
    return PASS;
}

/* ---- buffers ---- */

/* hdr, one data buffer, status; `write` = device-writable data (IN). */
static struct verdict one_buffer(struct hdev *d, u32 type, u64 sector, u64 addr, u32 len,
                                 enum expect exp)
{
    h_hdr(type, sector);
    h_desc(d, 0, H_HDR, 16, D_NEXT, 1);
    h_desc(d, 1, addr, len, (u16)(D_NEXT | (type == T_IN ? D_WRITE : 0)), 2);
    h_desc(d, 2, H_STATUS, 1, D_WRITE, 0);
    return h_submit(d, 0, exp);
}

static struct verdict c_buf_beyond_ram(struct hdev *d)
{
    return one_buffer(d, T_IN, 0, H_FAR, SECTOR, EXP_ERR);
}
static struct verdict c_buf_ram_end(struct hdev *d)
{
    return one_buffer(d, T_IN, 0, d->ram_top - 256, SECTOR, EXP_ERR);
}
static struct verdict c_buf_in_mmio(struct hdev *d)
{
    return one_buffer(d, T_IN, 0, H_MMIO_WINDOW + 0x1000 * 16, SECTOR, EXP_ERR);
}
static struct verdict c_buf_wraps(struct hdev *d)
{
    return one_buffer(d, T_IN, 0, 0xfffffffffffff000ULL, 0x2000, EXP_ERR);
}
static struct verdict c_write_from_beyond_ram(struct hdev *d)
{
    return one_buffer(d, T_OUT, SECTOR_BAD_WRITE, H_FAR, SECTOR, EXP_ERR);
}
/* The largest data length that keeps the chain within 2^32 bytes (§2.7.5.2). */
#define HUGE_LEN (0xffffffffu - 16 - 1)
static struct verdict c_huge_len_read(struct hdev *d)
{
    return one_buffer(d, T_IN, 0, H_DATA, HUGE_LEN, EXP_ERR);
}
static struct verdict c_huge_len_write(struct hdev *d)
{
    memset(PHYS(H_DATA), 0xee, SECTOR);
    return one_buffer(d, T_OUT, SECTOR_BAD_WRITE, H_DATA, HUGE_LEN, EXP_ERR);
}
/* Length 0xffffffff: the chain is longer than 2^32 bytes, so the status byte is past what
 * a device may walk; it must still complete the request or ask for a reset. */
static struct verdict c_chain_over_4gib(struct hdev *d)
{
    return one_buffer(d, T_IN, 0, H_DATA, 0xffffffffu, EXP_ANY);
}
static struct verdict c_zero_len_data(struct hdev *d)
{
    return one_buffer(d, T_IN, 0, H_DATA, 0, EXP_OK_ERR);
}

static struct verdict c_hdr_beyond_ram(struct hdev *d)
{
    h_hdr(T_IN, 0);
    h_desc(d, 0, H_FAR, 16, D_NEXT, 1);
    h_desc(d, 1, H_DATA, SECTOR, D_WRITE | D_NEXT, 2);
    h_desc(d, 2, H_STATUS, 1, D_WRITE, 0);
    return h_submit(d, 0, EXP_ERR);
}

/* The header descriptor is device-writable: no readable part at all. */
static struct verdict c_hdr_writable(struct hdev *d)
{
    h_hdr(T_IN, 0);
    h_desc(d, 0, H_HDR, 16, D_WRITE | D_NEXT, 1);
    h_desc(d, 1, H_DATA, SECTOR, D_WRITE | D_NEXT, 2);
    h_desc(d, 2, H_STATUS, 1, D_WRITE, 0);
    return h_submit(d, 0, EXP_ERR);
}

/* A zero-length status descriptor: the device must not write the byte behind it. */
static struct verdict c_zero_len_status(struct hdev *d)
{
    h_hdr(T_IN, 0);
    h_desc(d, 0, H_HDR, 16, D_NEXT, 1);
    h_desc(d, 1, H_DATA, SECTOR, D_WRITE | D_NEXT, 2);
    h_desc(d, 2, H_STATUS, 0, D_WRITE, 0);
    struct verdict v = h_submit(d, 0, EXP_ANY);
    if (!v.why && pr8(H_STATUS) != 0xff)
        return FAILV("device wrote behind a zero-length descriptor, byte", pr8(H_STATUS));
    return v;
}

/* One zero-length descriptor, nothing else. */
static struct verdict c_zero_len_only(struct hdev *d)
{
    h_hdr(T_IN, 0);
    h_desc(d, 0, H_HDR, 0, 0, 0);
    return h_submit(d, 0, EXP_ANY);
}

/* OUT with a device-readable buffer after a device-writable one: must not reach the disk. */
static struct verdict c_readable_after_writable(struct hdev *d)
{
    memset(PHYS(H_DATA), 0xee, 2 * SECTOR);
    h_hdr(T_OUT, SECTOR_BAD_WRITE);
    h_desc(d, 0, H_HDR, 16, D_NEXT, 1);
    h_desc(d, 1, H_DATA2, SECTOR, D_WRITE | D_NEXT, 2);
    h_desc(d, 2, H_DATA, SECTOR, D_NEXT, 3);
    h_desc(d, 3, H_STATUS, 1, D_WRITE, 0);
    return h_submit(d, 0, EXP_ERR);
}

/* Status in a device-read-only descriptor: the device must not write it. */
static struct verdict status_read_only(struct hdev *d, u32 type, u64 sector)
{
    memset(PHYS(H_DATA), 0xee, SECTOR);
    h_hdr(type, sector);
    h_desc(d, 0, H_HDR, 16, D_NEXT, 1);
    h_desc(d, 1, H_DATA, SECTOR, (u16)(D_NEXT | (type == T_IN ? D_WRITE : 0)), 2);
    h_desc(d, 2, H_STATUS, 1, 0, 0);
    struct verdict v = h_submit(d, 0, EXP_ANY);
    if (!v.why && pr8(H_STATUS) != 0xff)
        return FAILV("device wrote a read-only status descriptor, byte", pr8(H_STATUS));
    return v;
}
static struct verdict c_status_read_only(struct hdev *d)
{
    return status_read_only(d, T_IN, 0);
}
static struct verdict c_status_read_only_write(struct hdev *d)
{
    return status_read_only(d, T_OUT, SECTOR_BAD_WRITE + 1);
}

/* Cases that start from a properly initialised device carry OPEN in the runner. */
struct ring_case {
    struct hcase c;
    bool open;
};

static const struct ring_case ring_cases[] = {
    { { "chain_loop", c_chain_loop }, true },
    { { "chain_too_long", c_chain_too_long }, true },
    { { "next_oob", c_next_oob }, true },
    { { "next_far", c_next_far }, true },
    { { "head_oob", c_head_oob }, true },
    { { "head_far", c_head_far }, true },
    { { "avail_ahead", c_avail_ahead }, false },
    { { "avail_ahead_event_idx", c_avail_ahead_event_idx }, false },
    { { "ring_desc_odd", c_ring_desc_odd }, false },
    { { "ring_avail_odd", c_ring_avail_odd }, false },
    { { "ring_used_odd", c_ring_used_odd }, false },
    { { "ring_beyond_ram", c_ring_beyond_ram }, false },
    { { "ring_ram_end", c_ring_ram_end }, false },
    { { "ring_in_mmio", c_ring_in_mmio }, false },
    { { "ring_at_zero", c_ring_at_zero }, false },
    { { "ring_unset", c_ring_unset }, false },
    { { "buf_beyond_ram", c_buf_beyond_ram }, true },
    { { "buf_ram_end", c_buf_ram_end }, true },
    { { "buf_in_mmio", c_buf_in_mmio }, true },
    { { "buf_wraps", c_buf_wraps }, true },
    { { "write_from_beyond_ram", c_write_from_beyond_ram }, true },
    { { "huge_len_read", c_huge_len_read }, true },
    { { "huge_len_write", c_huge_len_write }, true },
    { { "chain_over_4gib", c_chain_over_4gib }, true },
    { { "zero_len_data", c_zero_len_data }, true },
    { { "zero_len_status", c_zero_len_status }, true },
    { { "zero_len_only", c_zero_len_only }, true },
    { { "hdr_beyond_ram", c_hdr_beyond_ram }, true },
    { { "hdr_writable", c_hdr_writable }, true },
    { { "readable_after_writable", c_readable_after_writable }, true },
    { { "status_read_only", c_status_read_only }, true },
    { { "status_read_only_write", c_status_read_only_write }, true },
};

/* One case, then the recovery (also after a failed case, so later cases start clean). */
static void run_case(struct hdev *d, const struct hcase *c, bool open, unsigned k)
{
    h_set_case(c->name);
    const char *check = check_name("hostile", c->name);
    struct verdict v;
    if (open && !h_open(d))
        v = FAILV("initialisation before the case failed, status", h_rd(d, R_STATUS));
    else
        v = c->run(d);
    struct verdict r = recover(d, k);
    if (v.why)
        check_fail(check, "%s 0x%lx", v.why, (unsigned long)v.val);
    else if (r.why)
        check_fail(check, "afterwards: %s 0x%lx", r.why, (unsigned long)r.val);
    else
        check_ok(check);
}

/* RAM must hold the work area; returns the end of the highest RAM range below 4 GiB. */
static u64 ram_top(const struct boot_info *bi, bool *area_ok)
{
    u64 top = 0;
    *area_ok = false;
    for (u32 i = 0; i < bi->nr_memmap; i++) {
        const struct mem_range *r = &bi->memmap[i];
        if (r->type != E820_RAM)
            continue;
        if (r->addr <= H_AREA && r->addr + r->size >= H_AREA_END)
            *area_ok = true;
        u64 end = r->addr + r->size;
        if (r->addr < FOUR_GIB && end > top)
            top = end < FOUR_GIB ? end : FOUR_GIB;
    }
    return top;
}

/* Base of the first virtio-mmio device with device ID `id`, or 0. */
static u64 find_device(u32 id)
{
    static struct vdev vd;
    for (unsigned i = 0; virtio_find(i, &vd, "hostile"); i++)
        if (mmio_read32(vd.base + R_MAGIC) == 0x74726976 &&
            mmio_read32(vd.base + R_DEVICE_ID) == id)
            return vd.base;
    return 0;
}

/* The blk cases (all, or the one named `sel`); returns how many ran. */
static unsigned blk_cases(struct hdev *d, const char *sel, size_t sn)
{
    unsigned nring = sizeof(ring_cases) / sizeof(ring_cases[0]), ran = 0;
    for (unsigned k = 0; k < nring + hostile_io_ncases; k++) {
        const struct hcase *c = k < nring ? &ring_cases[k].c : &hostile_io_cases[k - nring];
        if (sel && !span_eq(sel, sn, c->name))
            continue;
        run_case(d, c, k < nring && ring_cases[k].open, k);
        ran++;
    }
    h_wr(d, R_STATUS, 0);
    return ran;
}

/* Find and check the disk; false (with a hostile_init FAIL) when it is unusable. */
static bool blk_setup(struct hdev *d, bool busy)
{
    d->base = find_device(VIRTIO_ID_BLOCK);
    if (d->base == 0) {
        check_fail("hostile_init", "no virtio-blk device");
        return false;
    }
    if (!h_open(d)) {
        check_fail("hostile_init", "proper initialisation failed");
        return false;
    }
    d->capacity = h_rd(d, R_CONFIG) | ((u64)h_rd(d, R_CONFIG + 4) << 32);
    kprintf("KILN-GUEST hostile device at 0x%lx capacity=%lu ram_top=0x%lx\n",
            (unsigned long)d->base, (unsigned long)d->capacity, (unsigned long)d->ram_top);
    if (!busy && d->capacity < MIN_SECTORS) {
        check_fail("hostile_init", "disk has %lu sectors, need %u", (unsigned long)d->capacity,
                   MIN_SECTORS);
        return false;
    }
    return true;
}

void hostile_run(const struct boot_info *bi)
{
    static struct hdev dev;
    struct hdev *d = &dev;
    bool area_ok;
    d->ram_top = ram_top(bi, &area_ok);
    if (!area_ok) {
        check_fail("hostile_init", "RAM does not cover 0x%lx..0x%lx (give the VM more memory)",
                   (unsigned long)H_AREA, (unsigned long)H_AREA_END);
        return;
    }
    const char *sel = 0;
    size_t sn = 0;
    if (cmdline_get("kiln.hostile", &sel, &sn) && span_eq(sel, sn, "all"))
        sel = 0;
    bool busy = sel && span_eq(sel, sn, "busy");
    bool net_only = sel && sn >= 3 && memcmp(sel, "net", 3) == 0;
    unsigned ran = 0;
    if (!net_only) {
        if (!blk_setup(d, busy))
            return;
        if (busy) {
            hostile_busy(d);
            return;
        }
        if (sel && span_eq(sel, sn, "smp")) {
            run_case(d, &hostile_smp_case, true, SMP_CASE_NUMBER);
            return;
        }
        ran += blk_cases(d, sel, sn);
    }
    u64 net = find_device(VIRTIO_ID_NET);
    if (net && (!sel || net_only))
        ran += hostile_net_run(net, d->ram_top, sel, sn);
    else if (net_only)
        check_fail("hostile_init", "no virtio-net device");
    if (sel && ran == 0)
        check_fail("hostile_init", "unknown case kiln.hostile=%.*s", (int)sn, sel);
}
