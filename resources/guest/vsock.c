/*
 * A polled virtio-vsock (virtio 1.2 §5.10) driver for kiln.mode=vsock (roles in
 * vsock_mode.c): the virtio-mmio device with DeviceID 19, queues rx 0, tx 1, event 2, only
 * VIRTIO_F_VERSION_1 negotiated, one stream connection at a time.
 *   RX: NRX device-writable buffers of RX_BUF_LEN bytes, one descriptor each: the header,
 *       then up to 4052 payload bytes. Re-posted as soon as handled (payload copied out).
 *   TX: VSOCK_NTX packets in flight; each a 44-byte header descriptor, then (RW only) one
 *       payload descriptor of up to 4096 bytes. Every header carries buf_alloc 65536 and
 *       the current fwd_cnt.
 *   event: NEV buffers of EV_LEN bytes; TRANSPORT_RESET resets the connection.
 * Buffers live at VSOCK_AREA (outside .bss, which every boot zeroes). See README.md.
 */
#include "boot.h"
#include "lib.h"
#include "modes.h"
#include "virtio.h"
#include "vsock.h"

#define RXQ 0
#define TXQ 1
#define EVQ 2

#define NRX 8                    /* posted receive buffers, one 4 KiB descriptor each */
#define RX_BUF_LEN 4096          /* header + up to 4052 payload bytes */
#define NEV 4                    /* posted event buffers (struct virtio_vsock_event: le32) */
#define EV_LEN 8
#define RX_OFF 0x0
#define TXH_OFF 0x8000           /* VSOCK_NTX headers, 64 bytes apart */
#define TXD_OFF 0x9000           /* VSOCK_NTX payload buffers */
#define RING_OFF 0x10000         /* VSOCK_BUF_ALLOC bytes */
#define EV_OFF 0x20000

#define POLL_DELAY 600           /* pause loops per idle poll (~1 ms) */
#define MAX_NOISE 16             /* "ignored packet" lines per boot */

struct vsock vsk;
struct vsock_conn vsock_cn;

static u8 *area(u32 off) { return (u8 *)(uintptr_t)(VSOCK_AREA + off); }
static u8 *rx_buf(int b) { return area(RX_OFF + (u32)b * RX_BUF_LEN); }
static struct vsock_hdr *tx_hdr(int s) { return (struct vsock_hdr *)area(TXH_OFF + (u32)s * 64); }
u8 *vsock_tx_data(int s) { return area(TXD_OFF + (u32)s * VSOCK_TX_DATA_MAX); }
u8 *vsock_ring(void) { return area(RING_OFF); }

static void delay(u64 loops)
{
    for (u64 i = 0; i < loops; i++)
        cpu_pause();
}

void vsock_fail(const char *what, u64 n)
{
    vsk.failed = true;
    check_fail("vsock", "%s %lu", what, (unsigned long)n);
}

void vsock_timeout(const char *what)
{
    kprintf("KILN-GUEST vsock timeout %s\n", what);
    vsk.failed = true;
    check_fail("vsock", "timeout %s", what);
}

/* The host's credit for our data: peer buf_alloc - bytes in flight (0 if it is confused). */
u32 vsock_peer_credit(const struct vsock_conn *c)
{
    u32 in_flight = c->tx_cnt - c->peer_fwd_cnt;
    return in_flight > c->peer_buf_alloc ? 0 : c->peer_buf_alloc - in_flight;
}

static bool post_rx(int b)
{
    struct vbuf buf = { rx_buf(b), RX_BUF_LEN, true };
    int head = vq_add(&vsk.rxq, &buf, 1);
    if (head < 0)
        return false;
    vsk.rx_of_head[head] = b;
    return true;
}

static bool post_event(int e)
{
    struct vbuf buf = { area(EV_OFF + (u32)e * EV_LEN), EV_LEN, true };
    int head = vq_add(&vsk.evq, &buf, 1);
    if (head < 0)
        return false;
    vsk.ev_of_head[head] = e;
    return true;
}

/* Free the slots of completed TX packets; true when one completed. */
static bool reclaim_tx(void)
{
    u32 id, len;
    bool any = false;
    while (vq_poll(&vsk.txq, &id, &len)) {
        int s = id < VQ_MAX_SIZE ? vsk.tx_of_head[id] : -1;
        if (s >= 0 && s < VSOCK_NTX)
            vsk.tx_busy[s] = false;
        any = true;
    }
    return any;
}

/* A free TX slot, waiting (TX completions only) up to kiln.wait polls; -1 on timeout. */
int vsock_tx_slot(void)
{
    for (u64 idle = 0;; idle++) {
        reclaim_tx();
        for (int s = 0; s < VSOCK_NTX; s++)
            if (!vsk.tx_busy[s])
                return s;
        if (idle >= vsk.wait) {
            vsock_timeout("tx");
            return -1;
        }
        delay(POLL_DELAY);
    }
}

/* Queue one packet from slot s (payload already in vsock_tx_data(s)). */
static bool submit(int s, u32 src_port, u32 dst_port, u16 op, u32 flags, u32 len, u32 fwd)
{
    struct vsock_hdr *h = tx_hdr(s);
    h->src_cid = vsk.cid;
    h->dst_cid = VSOCK_HOST_CID;
    h->src_port = src_port;
    h->dst_port = dst_port;
    h->len = len;
    h->type = VSOCK_TYPE_STREAM;
    h->op = op;
    h->flags = flags;
    h->buf_alloc = VSOCK_BUF_ALLOC;
    h->fwd_cnt = fwd;
    struct vbuf bufs[2] = { { h, VSOCK_HDR_LEN, false }, { vsock_tx_data(s), len, false } };
    int head = vq_add(&vsk.txq, bufs, len ? 2 : 1);
    if (head < 0) {
        vsock_fail("tx queue full with free slots: descriptors", vsk.txq.num_free);
        return false;
    }
    vsk.tx_of_head[head] = s;
    vsk.tx_busy[s] = true;
    vsk.tx_pkts++;
    vq_notify(&vsk.txq);
    return true;
}

/* A control packet (no payload) on connection c. */
bool vsock_send_ctl(struct vsock_conn *c, u16 op, u32 flags)
{
    int s = vsock_tx_slot();
    if (s < 0)
        return false;
    c->last_fwd_sent = c->fwd_cnt;
    if (op == VSOCK_OP_CREDIT_UPDATE)
        vsk.updates_sent++;
    if (op == VSOCK_OP_CREDIT_REQUEST)
        vsk.requests_sent++;
    return submit(s, c->local_port, c->peer_port, op, flags, 0, c->fwd_cnt);
}

/* RW with `len` bytes already written to vsock_tx_data(s). */
bool vsock_send_rw(struct vsock_conn *c, int s, u32 len)
{
    c->tx_cnt += len;
    c->last_fwd_sent = c->fwd_cnt;
    return submit(s, c->local_port, c->peer_port, VSOCK_OP_RW, 0, len, c->fwd_cnt);
}

/* Answer a packet for no connection of ours with RST (§5.10.6.6), never an RST with RST. */
static void refuse(const struct vsock_hdr *h)
{
    if (vsk.noise < MAX_NOISE) {
        vsk.noise++;
        kprintf("KILN-GUEST vsock ignored op=%u type=%u src=%lu:%u dst=%lu:%u\n", h->op, h->type,
                (unsigned long)h->src_cid, h->src_port, (unsigned long)h->dst_cid, h->dst_port);
    }
    if (h->op == VSOCK_OP_RST || h->src_cid != VSOCK_HOST_CID || h->dst_cid != vsk.cid)
        return;
    int s = vsock_tx_slot();
    if (s >= 0)
        submit(s, h->dst_port, h->src_port, VSOCK_OP_RST, 0, 0, 0);
}

/* RW payload for the echo ring (host beyond our credit: overflow, data dropped). */
static void ring_put(struct vsock_conn *c, const u8 *p, u32 n)
{
    if (n > VSOCK_BUF_ALLOC - c->ring_len) {
        c->overflow = true;
        return;
    }
    u32 tail = (c->ring_head + c->ring_len) % VSOCK_BUF_ALLOC;
    u32 first = n < VSOCK_BUF_ALLOC - tail ? n : VSOCK_BUF_ALLOC - tail;
    memcpy(vsock_ring() + tail, p, first);
    memcpy(vsock_ring(), p + first, n - first);
    c->ring_len += n;
}

static void handle(struct vsock_conn *c, const struct vsock_hdr *h, const u8 *payload)
{
    bool ours = h->src_cid == VSOCK_HOST_CID && h->dst_cid == vsk.cid &&
                h->type == VSOCK_TYPE_STREAM && h->dst_port == c->local_port;
    if (ours && c->state == VSOCK_LISTEN && h->op == VSOCK_OP_REQUEST) {
        c->peer_port = h->src_port;
        c->peer_buf_alloc = h->buf_alloc;
        c->peer_fwd_cnt = h->fwd_cnt;
        c->state = VSOCK_OPEN;
        if (vsock_send_ctl(c, VSOCK_OP_RESPONSE, 0))
            kprintf("KILN-GUEST vsock accepted %u\n", c->peer_port);
        return;
    }
    if (!ours || c->state == VSOCK_LISTEN || h->src_port != c->peer_port) {
        refuse(h);
        return;
    }
    c->peer_buf_alloc = h->buf_alloc;
    c->peer_fwd_cnt = h->fwd_cnt;
    switch (h->op) {
    case VSOCK_OP_RESPONSE:
        if (c->state == VSOCK_CONNECTING)
            c->state = VSOCK_OPEN;
        break;
    case VSOCK_OP_RW:
        c->rx_bytes += h->len;
        if (c->echo && !c->shut_rcv) {
            ring_put(c, payload, h->len);
        } else {
            c->fwd_cnt += h->len; /* the client role reads and drops what it gets */
        }
        break;
    case VSOCK_OP_CREDIT_UPDATE:
        vsk.updates_rx++;
        break;
    case VSOCK_OP_CREDIT_REQUEST:
        vsock_send_ctl(c, VSOCK_OP_CREDIT_UPDATE, 0);
        break;
    case VSOCK_OP_SHUTDOWN:
        c->shut_rcv = c->shut_rcv || (h->flags & VSOCK_SHUTDOWN_RCV);
        c->shut_send = c->shut_send || (h->flags & VSOCK_SHUTDOWN_SEND);
        break;
    case VSOCK_OP_RST:
        c->reset = true;
        break;
    default: /* REQUEST on an open connection, unknown ops: nothing to do */
        break;
    }
}

/* One received packet in RX buffer b (used length len). */
static void rx_packet(struct vsock_conn *c, int b, u32 len)
{
    struct vsock_hdr h;
    const u8 *buf = rx_buf(b);
    vsk.rx_pkts++;
    if (len < VSOCK_HDR_LEN || len > RX_BUF_LEN) {
        vsock_fail("rx used length out of 44..4096:", len);
        return;
    }
    memcpy(&h, buf, VSOCK_HDR_LEN);
    if (h.len > len - VSOCK_HDR_LEN) {
        kprintf("KILN-GUEST vsock rx op=%u len=%u but only %u bytes written\n", h.op, h.len,
                len);
        vsock_fail("rx payload truncated: used length", len);
        return;
    }
    handle(c, &h, buf + VSOCK_HDR_LEN);
}

/* Everything the device completed: TX slots, received packets (buffers re-posted), events.
 * True when anything happened. */
bool vsock_poll(struct vsock_conn *c)
{
    u32 id, len;
    bool any = reclaim_tx(), rx = false, ev = false;
    /* At most NRX packets per call, so a busy host cannot starve the echo pump. */
    for (int k = 0; k < NRX && vq_poll(&vsk.rxq, &id, &len); k++) {
        int b = id < VQ_MAX_SIZE ? vsk.rx_of_head[id] : -1;
        if (b < 0 || b >= NRX) {
            vsock_fail("rx used id not posted:", id);
            continue;
        }
        rx_packet(c, b, len);
        post_rx(b);
        rx = true;
    }
    for (int k = 0; k < NEV && vq_poll(&vsk.evq, &id, &len); k++) {
        int e = id < VQ_MAX_SIZE ? vsk.ev_of_head[id] : -1;
        if (e < 0 || e >= NEV) {
            vsock_fail("event used id not posted:", id);
            continue;
        }
        u32 ev_id = len >= 4 ? rd32(area(EV_OFF + (u32)e * EV_LEN)) : 0xffffffff;
        kprintf("KILN-GUEST vsock event id=%u\n", ev_id);
        /* A reset ends established or pending connections; a listener keeps
         * listening (the host reconnects after a snapshot restore). */
        if (ev_id == VSOCK_EVENT_TRANSPORT_RESET && c->state != VSOCK_LISTEN)
            c->reset = true;
        post_event(e);
        ev = true;
    }
    if (rx)
        vq_notify(&vsk.rxq);
    if (ev)
        vq_notify(&vsk.evq);
    any = any || rx || ev;
    if (any)
        virtio_check_irq(&vsk.dev);
    return any;
}

/* Idle bookkeeping of the wait loops: false (and a timeout line) after kiln.wait polls. */
bool vsock_idle(u64 *idle, bool progress, const char *what)
{
    if (progress) {
        *idle = 0;
        return true;
    }
    if (++*idle > vsk.wait) {
        vsock_timeout(what);
        return false;
    }
    delay(POLL_DELAY);
    return true;
}

bool vsock_open(void)
{
    if (!virtio_init(&vsk.dev, VIRTIO_ID_VSOCK, 0))
        return false;
    if (!virtio_setup_queue(&vsk.dev, RXQ, &vsk.rxq) ||
        !virtio_setup_queue(&vsk.dev, TXQ, &vsk.txq) ||
        !virtio_setup_queue(&vsk.dev, EVQ, &vsk.evq)) {
        virtio_fail_device(&vsk.dev);
        return false;
    }
    if (!virtio_driver_ok(&vsk.dev))
        return false;
    vsk.cid = virtio_cfg64(&vsk.dev, 0);
    kprintf("KILN-GUEST vsock cid %lu\n", (unsigned long)vsk.cid);
    for (int b = 0; b < NRX; b++)
        post_rx(b);
    for (int e = 0; e < NEV; e++)
        post_event(e);
    vq_notify(&vsk.rxq);
    vq_notify(&vsk.evq);
    return true;
}

