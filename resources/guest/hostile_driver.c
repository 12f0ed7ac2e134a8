/*
 * kiln.mode=hostile: the driver core. Unlike virtio.c it lets a case put rings, descriptors
 * and indices anywhere, and its waits watch Status for DEVICE_NEEDS_RESET so a device
 * that gives up on a broken queue does not cost the full poll bound. Cases: hostile.c,
 * hostile_io.c.
 */
#include "boot.h"
#include "hostile.h"
#include "lib.h"
#include "virtio.h"

static const char *cur_case = "init";

const char *h_case(void) { return cur_case; }
void h_set_case(const char *name) { cur_case = name; }

u32 h_rd(struct hdev *d, u32 off) { return mmio_read32(d->base + off); }
void h_wr(struct hdev *d, u32 off, u32 v) { mmio_write32(d->base + off, v); }

u8 h_host_byte(u64 s, u32 i) { return (u8)((s * 31 + i * 7 + 1) & 0xff); }
u8 h_write_byte(u64 s, u32 i) { return (u8)((s * 13 + i * 3 + 0x5a) & 0xff); }

/* Zero [addr, addr + len) as far as it is guest RAM (never past ram_top). */
void h_zero_ram(struct hdev *d, u64 addr, u64 len)
{
    if (addr >= d->ram_top)
        return;
    if (addr + len > d->ram_top)
        len = d->ram_top - addr;
    memset(PHYS(addr), 0, len);
}

bool h_negotiate(struct hdev *d, u64 features)
{
    h_wr(d, R_STATUS, 0);
    u32 st = h_rd(d, R_STATUS);
    if (st != 0) {
        kprintf("KILN-GUEST hostile %s: status 0x%x after reset\n", cur_case, st);
        return false;
    }
    h_wr(d, R_STATUS, S_ACK);
    h_wr(d, R_STATUS, S_ACK | S_DRIVER);
    h_wr(d, R_DEV_FEATURES_SEL, 0);
    u64 offered = h_rd(d, R_DEV_FEATURES);
    h_wr(d, R_DEV_FEATURES_SEL, 1);
    offered |= (u64)h_rd(d, R_DEV_FEATURES) << 32;
    features &= offered;
    h_wr(d, R_DRV_FEATURES_SEL, 0);
    h_wr(d, R_DRV_FEATURES, (u32)features);
    h_wr(d, R_DRV_FEATURES_SEL, 1);
    h_wr(d, R_DRV_FEATURES, (u32)(features >> 32));
    h_wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    st = h_rd(d, R_STATUS);
    if (!(st & S_FEATURES_OK)) {
        kprintf("KILN-GUEST hostile %s: FEATURES_OK refused (status 0x%x)\n", cur_case, st);
        return false;
    }
    return true;
}

u32 h_queue(struct hdev *d, u16 num, u64 desc, u64 avail, u64 used)
{
    d->num = num;
    d->desc = desc;
    d->avail = avail;
    d->used = used;
    d->avail_idx = 0;
    d->last_used = 0;
    h_wr(d, R_QUEUE_SEL, d->qsel);
    h_wr(d, R_QUEUE_NUM, num);
    h_wr(d, R_QUEUE_DESC_LO, (u32)desc);
    h_wr(d, R_QUEUE_DESC_HI, (u32)(desc >> 32));
    h_wr(d, R_QUEUE_DRIVER_LO, (u32)avail);
    h_wr(d, R_QUEUE_DRIVER_HI, (u32)(avail >> 32));
    h_wr(d, R_QUEUE_DEVICE_LO, (u32)used);
    h_wr(d, R_QUEUE_DEVICE_HI, (u32)(used >> 32));
    barrier();
    h_wr(d, R_QUEUE_READY, 1);
    return h_rd(d, R_QUEUE_READY);
}

u32 h_queue_at(struct hdev *d, u16 num, u64 ring)
{
    h_zero_ram(d, ring, 16 * (u64)num);
    h_zero_ram(d, ring + 0x1000, 6 + 2 * (u64)num);
    h_zero_ram(d, ring + 0x2000, 6 + 8 * (u64)num);
    return h_queue(d, num, ring, ring + 0x1000, ring + 0x2000);
}

u32 h_driver_ok(struct hdev *d)
{
    h_wr(d, R_STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
    return h_rd(d, R_STATUS);
}

bool h_open(struct hdev *d)
{
    if (!h_negotiate(d, F_VERSION_1))
        return false;
    u32 ready = h_queue_at(d, H_QSIZE, H_RING);
    if (ready != 1) {
        kprintf("KILN-GUEST hostile %s: proper queue setup: QueueReady reads %u\n", cur_case,
                ready);
        return false;
    }
    u32 st = h_driver_ok(d);
    if (!(st & S_DRIVER_OK) || (st & (S_NEEDS_RESET | S_FAILED))) {
        kprintf("KILN-GUEST hostile %s: status 0x%x after DRIVER_OK\n", cur_case, st);
        return false;
    }
    return true;
}

void h_desc(struct hdev *d, u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
    u64 a = d->desc + 16 * (u64)i;
    pw64(a, addr);
    pw32(a + 8, len);
    pw16(a + 12, flags);
    pw16(a + 14, next);
}

void h_post(struct hdev *d, u16 head)
{
    pw16(d->avail + 4 + 2 * (u64)(d->avail_idx % d->num), head);
    barrier(); /* ring entry before the index (§2.7.13) */
    d->avail_idx++;
    pw16(d->avail + 2, d->avail_idx);
    barrier();
}

void h_notify(struct hdev *d)
{
    barrier();
    h_wr(d, R_QUEUE_NOTIFY, d->qsel);
}

void h_hdr(u32 type, u64 sector)
{
    pw32(H_HDR, type);
    pw32(H_HDR + 4, 0);
    pw64(H_HDR + 8, sector);
    pw8(H_STATUS, 0xff);
}

int h_wait(struct hdev *d, u32 *id, u32 *len)
{
    u64 limit = virtio_spin_limit();
    bool readable = d->used + 4 + 8 * (u64)d->num <= d->ram_top;
    for (u64 i = 0; i < limit; i++) {
        if (readable && pr16(d->used + 2) != d->last_used) {
            barrier(); /* the element only after the index */
            u64 e = d->used + 4 + 8 * (u64)(d->last_used % d->num);
            *id = pr32(e);
            *len = pr32(e + 4);
            d->last_used++;
            return W_DONE;
        }
        if ((i & 63) == 0 && (h_rd(d, R_STATUS) & S_NEEDS_RESET))
            return W_RESET;
        cpu_pause();
    }
    return (h_rd(d, R_STATUS) & S_NEEDS_RESET) ? W_RESET : W_NONE;
}

u32 h_ack(struct hdev *d)
{
    u32 isr = h_rd(d, R_INT_STATUS);
    if (isr)
        h_wr(d, R_INT_ACK, isr);
    return isr;
}

/* DEVICE_NEEDS_RESET must come with the configuration-change interrupt (§2.1.2). */
struct verdict h_needs_reset_seen(u32 isr, const char *when)
{
    kprintf("KILN-GUEST hostile %s: DEVICE_NEEDS_RESET %s (InterruptStatus 0x%x)\n", cur_case,
            when, isr);
    if (!(isr & INT_CONFIG))
        return FAILV("DEVICE_NEEDS_RESET without the config-change interrupt bit, isr", isr);
    return PASS;
}

struct verdict h_judge(struct hdev *d, int w, u32 id, u32 len, enum expect exp)
{
    u32 isr = h_ack(d);
    if (w == W_RESET)
        return h_needs_reset_seen(isr, "after the request");
    if (w == W_NONE) {
        kprintf("KILN-GUEST hostile %s: no completion, status 0x%x\n", cur_case,
                h_rd(d, R_STATUS));
        return FAILV("no completion and no DEVICE_NEEDS_RESET after the poll bound", 0);
    }
    u8 st = pr8(H_STATUS);
    kprintf("KILN-GUEST hostile %s: completed id %u len %u status %u\n", cur_case, id, len, st);
    switch (exp) {
    case EXP_RESET:
        return FAILV("completed instead of DEVICE_NEEDS_RESET, status byte", st);
    case EXP_ERR:
        return st == BLK_S_IOERR ? PASS : FAILV("status byte expected IOERR (1) got", st);
    case EXP_OK_ERR:
        return st <= BLK_S_IOERR ? PASS : FAILV("status byte expected OK or IOERR got", st);
    case EXP_ANY:
        break;
    }
    return PASS;
}

struct verdict h_submit(struct hdev *d, u16 head, enum expect exp)
{
    u32 id = 0, len = 0;
    h_post(d, head);
    h_notify(d);
    return h_judge(d, h_wait(d, &id, &len), id, len, exp);
}

int h_request(struct hdev *d, u32 type, u64 sector, u64 buf, u32 len)
{
    u32 id, ulen;
    h_hdr(type, sector);
    h_desc(d, 0, H_HDR, 16, D_NEXT, 1);
    h_desc(d, 1, buf, len, (u16)(D_NEXT | (type == T_IN ? D_WRITE : 0)), 2);
    h_desc(d, 2, H_STATUS, 1, D_WRITE, 0);
    h_post(d, 0);
    h_notify(d);
    int w = h_wait(d, &id, &ulen);
    h_ack(d);
    if (w == W_NONE)
        return -1;
    if (w == W_RESET)
        return -2;
    return pr8(H_STATUS);
}

struct verdict h_status_verdict(const char *what, int st)
{
    kprintf("KILN-GUEST hostile %s: %s: %s %d\n", cur_case, what,
            st == -1 ? "no completion" : st == -2 ? "DEVICE_NEEDS_RESET" : "status", st);
    return FAILV(what, (u64)(long)st);
}

/* Compare `sectors` sectors at H_DATA with pattern `pat` from sector `first`. */
struct verdict h_verify(u64 first, u32 sectors, u8 (*pat)(u64, u32))
{
    const u8 *p = PHYS(H_DATA);
    for (u32 s = 0; s < sectors; s++)
        for (u32 i = 0; i < SECTOR; i++)
            if (p[s * SECTOR + i] != pat(first + s, i))
                return FAILV("data mismatch at byte", s * SECTOR + i);
    return PASS;
}

struct verdict h_still_serves(struct hdev *d)
{
    memset(PHYS(H_DATA), 0, 4 * SECTOR);
    int st = h_request(d, T_IN, 0, H_DATA, 4 * SECTOR);
    if (st == -2) {
        kprintf("KILN-GUEST hostile %s: live device now needs reset\n", cur_case);
        return PASS;
    }
    if (st != BLK_S_OK)
        return h_status_verdict("normal read on the live device", st);
    return h_verify(0, 4, h_host_byte);
}
