/*
 * kiln.mode=hostile against virtio-net (virtio 1.2 §5.1): malformed TX chains, an avail
 * index far ahead, notify storms on both queues and a missing one, and a reset while
 * frames are in flight. After each case the device is reset and initialised properly (4
 * RX buffers posted) and one valid frame must be consumed from the TX queue. Nothing
 * needs a peer: TX frames only have to be taken by the device.
 */
#include "boot.h"
#include "hostile.h"
#include "lib.h"
#include "virtio.h"

#define NET_RX_RING (H_AREA + 0xc000)
#define NET_TX_RING (H_AREA + 0x10000)
#define NET_RX_BUF (H_AREA + 0x14000) /* RX_BUFS x 2 KiB */
#define NET_FRAME (H_AREA + 0x18000)  /* TX frames, 128 bytes apart */
#define NET_HDR_LEN 12                /* virtio_net_hdr_v1 */
#define FRAME_LEN (NET_HDR_LEN + 60)
#define RX_BUFS 4
#define RX_BUF_LEN 1526
#define INFLIGHT 4

struct hnet {
    struct hdev rx, tx; /* two views of one device: queue 0 (RX) and queue 1 (TX) */
};

struct net_case {
    const char *name;
    struct verdict (*run)(struct hnet *n);
};

/* Frame `seq` at `a`: zero header, broadcast, ethertype 0x88b5, payload bytes = seq. */
static void frame_at(u64 a, u8 seq)
{
    static const u8 head[14] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x4b,
                                 0x49, 0x4c, 0x4e, 0x01, 0x88, 0xb5 };
    memset(PHYS(a), 0, NET_HDR_LEN);
    memcpy(PHYS(a + NET_HDR_LEN), head, sizeof(head));
    memset(PHYS(a + NET_HDR_LEN + sizeof(head)), seq, FRAME_LEN - NET_HDR_LEN - sizeof(head));
}

static bool net_open(struct hnet *n)
{
    n->rx.qsel = 0;
    n->tx.qsel = 1;
    if (!h_negotiate(&n->rx, F_VERSION_1))
        return false;
    u32 rr = h_queue_at(&n->rx, H_QSIZE, NET_RX_RING);
    u32 tr = h_queue_at(&n->tx, H_QSIZE, NET_TX_RING);
    u32 st = h_driver_ok(&n->rx);
    if (rr != 1 || tr != 1 || !(st & S_DRIVER_OK) || (st & (S_NEEDS_RESET | S_FAILED))) {
        kprintf("KILN-GUEST hostile %s: net init: ready %u/%u status 0x%x\n", h_case(), rr, tr,
                st);
        return false;
    }
    for (u16 i = 0; i < RX_BUFS; i++) {
        h_desc(&n->rx, i, NET_RX_BUF + 2048 * (u64)i, RX_BUF_LEN, D_WRITE, 0);
        h_post(&n->rx, i);
    }
    h_notify(&n->rx);
    frame_at(NET_FRAME, 0);
    return true;
}

/* One valid frame on TX (descriptor 0): it must be consumed. */
static struct verdict net_sends(struct hnet *n)
{
    u32 id, len;
    h_desc(&n->tx, 0, NET_FRAME, FRAME_LEN, 0, 0);
    h_post(&n->tx, 0);
    h_notify(&n->tx);
    int w = h_wait(&n->tx, &id, &len);
    h_ack(&n->tx);
    if (w == W_DONE)
        return PASS;
    return FAILV(w == W_RESET ? "valid TX frame: DEVICE_NEEDS_RESET"
                              : "valid TX frame: no completion, status",
                 h_rd(&n->tx, R_STATUS));
}

/* One TX descriptor with the given fields; the device completes it or needs a reset. */
static struct verdict bad_tx(struct hnet *n, u64 addr, u32 len, u16 flags, u16 next)
{
    h_desc(&n->tx, 0, addr, len, flags, next);
    return h_submit(&n->tx, 0, EXP_ANY);
}
static struct verdict c_tx_loop(struct hnet *n)
{
    return bad_tx(n, NET_FRAME, FRAME_LEN, D_NEXT, 0);
}
static struct verdict c_tx_next_oob(struct hnet *n)
{
    return bad_tx(n, NET_FRAME, FRAME_LEN, D_NEXT, 0xffff);
}
static struct verdict c_tx_beyond_ram(struct hnet *n)
{
    return bad_tx(n, H_FAR, FRAME_LEN, 0, 0);
}
static struct verdict c_tx_huge_len(struct hnet *n)
{
    return bad_tx(n, NET_FRAME, 0xffffffffu - 1, 0, 0);
}
static struct verdict c_tx_short(struct hnet *n) { return bad_tx(n, NET_FRAME, 4, 0, 0); }
static struct verdict c_tx_zero_len(struct hnet *n) { return bad_tx(n, NET_FRAME, 0, 0, 0); }
static struct verdict c_tx_writable(struct hnet *n)
{
    return bad_tx(n, NET_FRAME, FRAME_LEN, D_WRITE, 0);
}

static struct verdict c_tx_head_oob(struct hnet *n)
{
    return h_submit(&n->tx, H_QSIZE, EXP_ANY);
}

static struct verdict c_tx_avail_ahead(struct hnet *n)
{
    u32 id = 0, len = 0;
    h_desc(&n->tx, 0, NET_FRAME, FRAME_LEN, 0, 0);
    pw16(n->tx.avail + 4, 0);
    n->tx.avail_idx = 1000;
    pw16(n->tx.avail + 2, n->tx.avail_idx);
    h_notify(&n->tx);
    return h_judge(&n->tx, h_wait(&n->tx, &id, &len), id, len, EXP_RESET);
}

/* Storms on RX, TX (nothing new in either) and a missing queue; then a frame must go. */
static struct verdict c_storm(struct hnet *n)
{
    const char *v;
    size_t len;
    u64 count = 20000;
    if (cmdline_get("kiln.storm", &v, &len))
        parse_u64(v, len, &count);
    static const u32 queues[] = { 0, 1, 5 };
    for (unsigned q = 0; q < 3; q++)
        for (u64 i = 0; i < count; i++)
            h_wr(&n->tx, R_QUEUE_NOTIFY, queues[q]);
    return net_sends(n);
}

/* Four frames notified, then Status 0 at once; the old used ring must not change later. */
static struct verdict c_reset_mid_tx(struct hnet *n)
{
    for (u16 i = 0; i < INFLIGHT; i++) {
        frame_at(NET_FRAME + 128 * (u64)(i + 1), (u8)(i + 1));
        h_desc(&n->tx, i, NET_FRAME + 128 * (u64)(i + 1), FRAME_LEN, 0, 0);
        h_post(&n->tx, i);
    }
    h_notify(&n->tx);
    h_wr(&n->tx, R_STATUS, 0);
    u32 st = h_rd(&n->tx, R_STATUS);
    if (st != 0)
        return FAILV("status after reset", st);
    u64 used = n->tx.used;
    u16 idx = pr16(used + 2);
    kprintf("KILN-GUEST hostile %s: %u of %u frames taken before the reset\n", h_case(), idx,
            INFLIGHT);
    /* Rings elsewhere for the re-init, so late writes to these would show. */
    n->rx.qsel = 0;
    n->tx.qsel = 1;
    if (!h_negotiate(&n->rx, F_VERSION_1) || h_queue_at(&n->rx, H_QSIZE, H_RING) != 1 ||
        h_queue_at(&n->tx, H_QSIZE, H_RING2) != 1 || (h_driver_ok(&n->rx) & S_NEEDS_RESET))
        return FAILV("re-initialisation failed, status", h_rd(&n->tx, R_STATUS));
    struct verdict v = net_sends(n);
    if (v.why)
        return v;
    if (pr16(used + 2) != idx)
        return FAILV("device used frames of the old ring after reset, used idx",
                     pr16(used + 2));
    return PASS;
}

static const struct net_case cases[] = {
    { "net_tx_loop", c_tx_loop },
    { "net_tx_next_oob", c_tx_next_oob },
    { "net_tx_beyond_ram", c_tx_beyond_ram },
    { "net_tx_huge_len", c_tx_huge_len },
    { "net_tx_short", c_tx_short },
    { "net_tx_zero_len", c_tx_zero_len },
    { "net_tx_writable", c_tx_writable },
    { "net_tx_head_oob", c_tx_head_oob },
    { "net_tx_avail_ahead", c_tx_avail_ahead },
    { "net_storm", c_storm },
    { "net_reset_mid_tx", c_reset_mid_tx },
};

unsigned hostile_net_run(u64 base, u64 ram_top, const char *only, size_t only_len)
{
    static struct hnet n;
    unsigned ran = 0;
    n.rx.base = n.tx.base = base;
    n.rx.ram_top = n.tx.ram_top = ram_top;
    for (unsigned k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
        const struct net_case *c = &cases[k];
        if (only && !span_eq(only, only_len, "net") && !span_eq(only, only_len, c->name))
            continue;
        h_set_case(c->name);
        ran++;
        const char *check = check_name("hostile", c->name);
        struct verdict v = net_open(&n) ? c->run(&n) : FAILV("initialisation failed", 0);
        /* The recovery runs after a failed case too, so later cases start clean. */
        struct verdict r = net_open(&n) ? net_sends(&n) : FAILV("re-initialisation failed", 0);
        if (v.why)
            check_fail(check, "%s 0x%lx", v.why, (unsigned long)v.val);
        else if (r.why)
            check_fail(check, "afterwards: %s 0x%lx", r.why, (unsigned long)r.val);
        else
            check_ok(check);
    }
    h_wr(&n.tx, R_STATUS, 0);
    return ran;
}
