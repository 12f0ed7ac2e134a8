/*
 * kiln.mode=net: virtio-net (virtio 1.2 §5.1) checks on the first virtio_mmio.device.
 * Negotiates only VERSION_1 and MAC (12-byte virtio_net_hdr_v1, no offloads, no mergeable
 * buffers), keeps NRX receive buffers posted, sends kiln.net_frames test frames and expects
 * the host to echo each one back with the MAC addresses swapped. See README.md.
 */
#include "boot.h"
#include "lib.h"
#include "modes.h"
#include "virtio.h"
#include "net.h"

#define VIRTIO_NET_F_MAC 5
#define RX_BUF_LEN (NET_HDR_LEN + ETH_MAX_FRAME) /* 1526 */
#define NRX 4
#define DEFAULT_FRAMES 4
#define MAX_FRAMES 256
#define RXQ 0
#define TXQ 1

static u8 rx_bufs[NRX][RX_BUF_LEN] __attribute__((aligned(64)));
static u8 tx_buf[RX_BUF_LEN] __attribute__((aligned(64)));
static int rx_of_desc[VQ_MAX_SIZE];
static bool seen[MAX_FRAMES];

/* Frame length (no FCS) for sequence number seq: 64..120 bytes. */
static u32 frame_len(unsigned seq) { return 64 + (seq % 8) * 8; }

/* "KILN-NET <seq>" at offset 14; returns its length. */
static u32 put_text(u8 *p, unsigned seq)
{
    static const char pre[] = "KILN-NET ";
    char digits[12];
    u32 n = 0, d = 0;
    for (; pre[n]; n++)
        p[n] = (u8)pre[n];
    do {
        digits[d++] = (char)('0' + seq % 10);
        seq /= 10;
    } while (seq);
    while (d)
        p[n++] = (u8)digits[--d];
    return n;
}

static void build_frame(struct net *nt, unsigned seq, u8 *f)
{
    memset(f, 0xff, 6);
    memcpy(f + 6, nt->mac, 6);
    f[12] = ETHERTYPE_KILN >> 8;
    f[13] = ETHERTYPE_KILN & 0xff;
    u32 i = ETH_HLEN + put_text(f + ETH_HLEN, seq);
    for (; i < frame_len(seq); i++)
        f[i] = (u8)((seq + i) & 0xff);
}

static bool post_rx(struct net *nt, int b)
{
    struct vbuf buf = { rx_bufs[b], RX_BUF_LEN, true };
    int id = vq_add(&nt->rxq, &buf, 1);
    if (id < 0)
        return false;
    rx_of_desc[id] = b;
    return true;
}

/* Validate one echoed frame (dst = our MAC, src = broadcast, same payload). */
static void check_rx_frame(struct net *nt, const u8 *buf, u32 len)
{
    static const u8 bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
    u8 want[ETH_MAX_FRAME];
    const u8 *f = buf + NET_HDR_LEN;
    if (len < NET_HDR_LEN + ETH_HLEN + 10) {
        kprintf("KILN-GUEST net rx bad frame: length %u\n", len);
        nt->bad++;
        return;
    }
    u32 flen = len - NET_HDR_LEN;
    if (((u32)f[12] << 8 | f[13]) != ETHERTYPE_KILN) {
        /* Unrelated traffic (e.g. from a host tap): not ours, not an error. */
        kprintf("KILN-GUEST net rx ignored frame: ethertype 0x%02x%02x length %u\n", f[12],
                f[13], flen);
        nt->ignored++;
        return;
    }
    /* Parse the decimal sequence number after "KILN-NET ". */
    unsigned seq = 0, i = ETH_HLEN + 9, digits = 0;
    while (i < flen && f[i] >= '0' && f[i] <= '9' && digits < 6) {
        seq = seq * 10 + (f[i++] - '0');
        digits++;
    }
    if (memcmp(f + ETH_HLEN, "KILN-NET ", 9) != 0 || digits == 0 || seq >= nt->frames) {
        kprintf("KILN-GUEST net rx bad frame: no valid \"KILN-NET <seq>\" payload\n");
        nt->bad++;
        return;
    }
    if (seen[seq]) {
        kprintf("KILN-GUEST net rx bad frame: duplicate seq %u\n", seq);
        nt->bad++;
        return;
    }
    build_frame(nt, seq, want);
    if (flen != frame_len(seq)) {
        kprintf("KILN-GUEST net rx bad frame: seq %u length expected %u got %u\n", seq,
                frame_len(seq), flen);
        nt->bad++;
        return;
    }
    if (memcmp(f, nt->mac, 6) != 0 || memcmp(f + 6, bcast, 6) != 0) {
        kprintf("KILN-GUEST net rx bad frame: seq %u addresses not swapped\n", seq);
        nt->bad++;
        return;
    }
    for (i = 12; i < flen; i++)
        if (f[i] != want[i]) {
            kprintf("KILN-GUEST net rx bad frame: seq %u byte %u expected 0x%02x got 0x%02x\n",
                    seq, i, want[i], f[i]);
            nt->bad++;
            return;
        }
    seen[seq] = true;
    nt->received++;
}

/* Consume one RX completion (waiting if `block`), validate it and re-post the buffer. */
static bool rx_one(struct net *nt, bool block)
{
    u32 id, len;
    bool got = block ? vq_wait(&nt->rxq, &id, &len) : vq_poll(&nt->rxq, &id, &len);
    if (!got)
        return false;
    virtio_check_irq(&nt->dev);
    int b = rx_of_desc[id % VQ_MAX_SIZE];
    if (len > RX_BUF_LEN) {
        kprintf("KILN-GUEST net rx bad frame: used length %u > buffer %u\n", len, RX_BUF_LEN);
        nt->bad++;
    } else {
        check_rx_frame(nt, rx_bufs[b], len);
    }
    if (post_rx(nt, b))
        vq_notify(&nt->rxq);
    return true;
}

bool net_open(struct net *nt)
{
    if (!virtio_find(0, &nt->dev, "net"))
        return false;
    if (!virtio_init(&nt->dev, VIRTIO_ID_NET, 1ULL << VIRTIO_NET_F_MAC))
        return false;
    if (!virtio_setup_queue(&nt->dev, RXQ, &nt->rxq) ||
        !virtio_setup_queue(&nt->dev, TXQ, &nt->txq)) {
        virtio_fail_device(&nt->dev);
        return false;
    }
    if (!virtio_driver_ok(&nt->dev))
        return false;
    for (int b = 0; b < NRX; b++)
        post_rx(nt, b);
    vq_notify(&nt->rxq);
    return true;
}

static bool parse_mac(const char *s, size_t n, u8 *mac)
{
    if (n != 17)
        return false;
    for (int i = 0; i < 6; i++) {
        u64 v;
        if ((i < 5 && s[i * 3 + 2] != ':') || !parse_hex(s + i * 3, 2, &v))
            return false;
        mac[i] = (u8)v;
    }
    return true;
}

void net_mac(struct net *nt)
{
    const char *v;
    size_t n;
    u8 want[6];
    for (int i = 0; i < 6; i++)
        nt->mac[i] = virtio_cfg8(&nt->dev, (u32)i);
    kprintf("KILN-GUEST net mac=%02x:%02x:%02x:%02x:%02x:%02x\n", nt->mac[0], nt->mac[1],
            nt->mac[2], nt->mac[3], nt->mac[4], nt->mac[5]);
    if (!cmdline_get("kiln.mac", &v, &n))
        return;
    if (!parse_mac(v, n, want))
        check_fail("net_mac", "bad value kiln.mac=%.*s", (int)n, v);
    else if (!(nt->dev.offered & (1ULL << VIRTIO_NET_F_MAC)))
        check_fail("net_mac", "VIRTIO_NET_F_MAC expected offered got not offered");
    else if (memcmp(want, nt->mac, 6) != 0)
        check_fail("net_mac", "expected %.*s got %02x:%02x:%02x:%02x:%02x:%02x", (int)n, v,
                   nt->mac[0], nt->mac[1], nt->mac[2], nt->mac[3], nt->mac[4], nt->mac[5]);
    else
        check_ok("net_mac");
}

void net_run(void)
{
    static struct net nt;
    const char *v;
    size_t n;
    u64 frames = DEFAULT_FRAMES;
    if (virtio_count() == 0) {
        check_fail("net_init", "no virtio_mmio.device= token on the command line");
        return;
    }
    if (cmdline_get("kiln.net_frames", &v, &n) &&
        (!parse_u64(v, n, &frames) || frames == 0 || frames > MAX_FRAMES)) {
        check_fail("net_tx", "bad value kiln.net_frames=%.*s (1..%u)", (int)n, v, MAX_FRAMES);
        return;
    }
    if (!net_open(&nt))
        return;
    nt.frames = (unsigned)frames;
    net_mac(&nt);

    unsigned sent = 0;
    bool rx_stalled = false;
    for (unsigned seq = 0; seq < nt.frames; seq++) {
        /* Never have more frames in flight than posted receive buffers. */
        while (!rx_stalled && sent - (nt.received + nt.bad) >= NRX)
            rx_stalled = !rx_one(&nt, true);
        if (rx_stalled)
            break;
        memset(tx_buf, 0, NET_HDR_LEN); /* virtio_net_hdr_v1: no offloads */
        build_frame(&nt, seq, tx_buf + NET_HDR_LEN);
        struct vbuf buf = { tx_buf, NET_HDR_LEN + frame_len(seq), false };
        u32 id, len;
        if (vq_add(&nt.txq, &buf, 1) < 0)
            break;
        vq_notify(&nt.txq);
        if (!vq_wait(&nt.txq, &id, &len))
            break;
        virtio_check_irq(&nt.dev);
        sent++;
        while (rx_one(&nt, false))
            ;
    }
    if (sent == nt.frames)
        check_ok("net_tx");
    else
        check_fail("net_tx", "expected %u transmitted frames got %u", nt.frames, sent);
    while (!rx_stalled && nt.received + nt.bad < sent)
        rx_stalled = !rx_one(&nt, true);
    if (nt.received == nt.frames && nt.bad == 0)
        check_ok("net_rx");
    else
        check_fail("net_rx", "expected %u echoed frames got %u (bad %u)", nt.frames,
                   nt.received, nt.bad);
    virtio_report_irq(&nt.dev, "net_irq");
}
