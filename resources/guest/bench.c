/*
 * kiln.mode=blkbench / kiln.mode=netbench: throughput loops for `kiln bench --io`.
 *
 * Both print "KILN-BENCH start", run a tight polled I/O loop on the first virtio-mmio
 * device and print one "KILN-BENCH end ..." line; the host times the two lines as they
 * arrive. The hot loops do no data checks and no interrupt-status reads: completions are
 * found by polling the used ring, the driver asks the device not to interrupt
 * (VIRTQ_AVAIL_F_NO_INTERRUPT, virtio 1.2 §2.7.7) and skips notifications the device
 * declines (VIRTQ_USED_F_NO_NOTIFY, §2.7.10). Data buffers live at a fixed guest-physical
 * address (BENCH_BUF_ADDR, identity-mapped) so they do not grow .bss, which every boot
 * zeroes. See README.md for the tokens.
 */
#include "boot.h"
#include "lib.h"
#include "modes.h"
#include "virtio.h"

#define BENCH_BUF_ADDR 0x1000000ULL /* 16 MiB */
#define BENCH_BUF_SIZE (1u << 20)
#define AVAIL_F_NO_INTERRUPT 1
#define USED_F_NO_NOTIFY 1

/* virtio-blk (§5.2.6). */
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define SECTOR 512
#define BLK_MAX_QD 10 /* three descriptors per request in a 32-entry ring */

/* virtio-net (§5.1.6). */
#define VIRTIO_NET_F_MAC 5
#define NET_HDR_LEN 12
#define ETH_HLEN 14
#define NET_BUF_STRIDE 1536
#define ETHERTYPE_KILN 0x88b5
#define RXQ 0
#define TXQ 1

/* Knuth's MMIX LCG; `kiln bench` replays the same sequence for its host baseline. */
#define LCG_MUL 6364136223846793005ULL
#define LCG_ADD 1442695040888963407ULL
#define LCG_SEED 0x4b494c4eULL

static u8 *bench_buf(void) { return (u8 *)(uintptr_t)BENCH_BUF_ADDR; }

/* Token `key` in [lo, hi] (default `def` when absent); reports `check` FAIL when bad. */
bool bench_arg(const char *check, const char *key, u64 def, u64 lo, u64 hi, u64 *out)
{
    const char *v;
    size_t n;
    *out = def;
    if (!cmdline_get(key, &v, &n))
        return true;
    if (parse_u64(v, n, out) && *out >= lo && *out <= hi)
        return true;
    check_fail(check, "bad value %s=%.*s (%lu..%lu)", key, (int)n, v, (unsigned long)lo,
               (unsigned long)hi);
    return false;
}

/* The buffer area must be RAM (type-1 e820 entry). */
static bool buf_in_ram(const char *check, const struct boot_info *bi)
{
    for (u32 i = 0; i < bi->nr_memmap; i++) {
        const struct mem_range *r = &bi->memmap[i];
        if (r->type == E820_RAM && r->addr <= BENCH_BUF_ADDR &&
            r->addr + r->size >= BENCH_BUF_ADDR + BENCH_BUF_SIZE)
            return true;
    }
    check_fail(check, "guest RAM does not cover 0x%lx..0x%lx (give the VM more memory)",
               (unsigned long)BENCH_BUF_ADDR, (unsigned long)(BENCH_BUF_ADDR + BENCH_BUF_SIZE));
    return false;
}

static void notify(struct virtq *q)
{
    if (!(q->used->flags & USED_F_NO_NOTIFY))
        vq_notify(q);
}

/* ---- virtio-blk ---- */

enum blk_op { OP_READ, OP_WRITE, OP_RANDREAD };

struct blk_req_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

static struct blk_req_hdr bb_hdr[BLK_MAX_QD] __attribute__((aligned(16)));
static volatile u8 bb_status[BLK_MAX_QD];
static u8 bb_slot_of[VQ_RING_MAX];
static u8 bb_free[BLK_MAX_QD];

static bool blk_parse_op(enum blk_op *op)
{
    const char *v;
    size_t n;
    *op = OP_READ;
    if (!cmdline_get("kiln.bench_op", &v, &n) || span_eq(v, n, "read"))
        return true;
    if (span_eq(v, n, "write"))
        *op = OP_WRITE;
    else if (span_eq(v, n, "randread"))
        *op = OP_RANDREAD;
    else {
        check_fail("blkbench", "bad value kiln.bench_op=%.*s (read|write|randread)", (int)n, v);
        return false;
    }
    return true;
}

static const char *op_name(enum blk_op op)
{
    return op == OP_WRITE ? "write" : op == OP_RANDREAD ? "randread" : "read";
}

static int blk_add(struct virtq *q, unsigned slot, u32 type, u64 sector, u32 len, bool dev_writes)
{
    struct vbuf bufs[3];
    unsigned n = 0;
    bb_hdr[slot].type = type;
    bb_hdr[slot].reserved = 0;
    bb_hdr[slot].sector = sector;
    bb_status[slot] = 0xff;
    bufs[n++] = (struct vbuf){ &bb_hdr[slot], sizeof(bb_hdr[slot]), false };
    if (len)
        bufs[n++] = (struct vbuf){ bench_buf() + (u64)slot * len, len, dev_writes };
    bufs[n++] = (struct vbuf){ &bb_status[slot], 1, true };
    int head = vq_add(q, bufs, n);
    if (head >= 0)
        bb_slot_of[head] = (u8)slot;
    return head;
}

void blkbench_run(const struct boot_info *bi)
{
    static struct vdev dev;
    static struct virtq q;
    enum blk_op op;
    u64 kib, req, qd;
    if (!blk_parse_op(&op) ||
        !bench_arg("blkbench", "kiln.bench_kib", 1024, 1, 1ULL << 32, &kib) ||
        !bench_arg("blkbench", "kiln.bench_req", 4096, SECTOR, BENCH_BUF_SIZE, &req) ||
        !bench_arg("blkbench", "kiln.bench_qd", 1, 1, BLK_MAX_QD, &qd))
        return;
    if (req % SECTOR || req * qd > BENCH_BUF_SIZE || kib * 1024 < req) {
        check_fail("blkbench", "kiln.bench_req=%lu must be a multiple of %u, at most %u / qd "
                   "and at most kiln.bench_kib", (unsigned long)req, SECTOR,
                   BENCH_BUF_SIZE);
        return;
    }
    if (!buf_in_ram("blkbench", bi))
        return;
    if (virtio_count() == 0 || !virtio_find(0, &dev, "blk")) {
        check_fail("blkbench", "no virtio_mmio.device= token on the command line");
        return;
    }
    if (!virtio_init(&dev, VIRTIO_ID_BLOCK, 1ULL << VIRTIO_BLK_F_FLUSH))
        return;
    if (!virtio_setup_queue_n(&dev, 0, &q, VQ_RING_MAX)) {
        virtio_fail_device(&dev);
        return;
    }
    if (!virtio_driver_ok(&dev))
        return;
    if (q.num < 3 * qd) {
        check_fail("blkbench", "queue of %u descriptors cannot hold %lu requests", q.num,
                   (unsigned long)qd);
        return;
    }
    q.avail->flags = AVAIL_F_NO_INTERRUPT;
    u64 cap = virtio_cfg64(&dev, 0);
    u64 slots = cap * SECTOR / req, total = kib * 1024 / req, spin_max = virtio_spin_limit();
    u64 sectors_per_req = req / SECTOR;
    if (slots == 0) {
        check_fail("blkbench", "disk of %lu sectors is smaller than one request",
                   (unsigned long)cap);
        return;
    }
    kprintf("KILN-GUEST blkbench op=%s kib=%lu req=%lu qd=%lu capacity=%lu queue=%u\n",
            op_name(op), (unsigned long)kib, (unsigned long)req, (unsigned long)qd,
            (unsigned long)cap, q.num);
    u32 type = op == OP_WRITE ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN;
    bool dev_writes = op != OP_WRITE;
    unsigned nfree = (unsigned)qd;
    for (unsigned i = 0; i < nfree; i++)
        bb_free[i] = (u8)i;
    u64 issued = 0, done = 0, errors = 0, next = 0, x = LCG_SEED, spins = 0, idle = 0;
    bool timed_out = false;

    kprintf("KILN-BENCH start\n");
    while (done < total) {
        bool added = false;
        while (issued < total && nfree > 0) {
            u64 pos;
            if (op == OP_RANDREAD) {
                x = x * LCG_MUL + LCG_ADD;
                pos = (x >> 33) % slots;
            } else {
                pos = next;
                if (++next == slots)
                    next = 0;
            }
            unsigned slot = bb_free[--nfree];
            if (blk_add(&q, slot, type, pos * sectors_per_req, (u32)req, dev_writes) < 0) {
                nfree++;
                break;
            }
            issued++;
            added = true;
        }
        if (added)
            notify(&q);
        u32 id, len;
        if (!vq_poll(&q, &id, &len)) {
            idle++;
            if (++spins > spin_max) {
                timed_out = true;
                break;
            }
            cpu_pause();
            continue;
        }
        spins = 0;
        unsigned slot = bb_slot_of[id % VQ_RING_MAX];
        if (bb_status[slot] != 0)
            errors++;
        bb_free[nfree++] = (u8)slot;
        done++;
    }
    if (!timed_out && op == OP_WRITE && (dev.features & (1ULL << VIRTIO_BLK_F_FLUSH))) {
        /* Make the writes durable inside the timed region, as the host baseline does. */
        u32 id, len;
        blk_add(&q, 0, VIRTIO_BLK_T_FLUSH, 0, 0, false);
        notify(&q);
        spins = 0;
        while (!vq_poll(&q, &id, &len) && !timed_out)
            timed_out = ++spins > spin_max;
        if (!timed_out && bb_status[0] != 0)
            errors++;
    }
    if (timed_out)
        errors += total - done;
    kprintf("KILN-BENCH end op=%s bytes=%lu requests=%lu errors=%lu\n", op_name(op),
            (unsigned long)(done * req), (unsigned long)done, (unsigned long)errors);
    kprintf("KILN-GUEST blkbench empty_polls=%lu\n", (unsigned long)idle);
    if (timed_out)
        check_fail("blkbench", "timed out after %lu of %lu requests", (unsigned long)done,
                   (unsigned long)total);
    else if (errors)
        check_fail("blkbench", "%lu requests failed", (unsigned long)errors);
    else
        check_ok("blkbench");
}

/* ---- virtio-net ---- */

static u8 nb_rx_of[VQ_RING_MAX];

static u8 *net_rx_buf(unsigned i) { return bench_buf() + (u64)i * NET_BUF_STRIDE; }
static u8 *net_tx_buf(unsigned i) { return bench_buf() + (u64)(VQ_RING_MAX + i) * NET_BUF_STRIDE; }

static void net_post_rx(struct virtq *q, unsigned b)
{
    struct vbuf buf = { net_rx_buf(b), NET_BUF_STRIDE, true };
    int id = vq_add(q, &buf, 1);
    if (id >= 0)
        nb_rx_of[id] = (u8)b;
}

void netbench_run(const struct boot_info *bi)
{
    static struct vdev dev;
    static struct virtq rxq, txq;
    u64 frames, flen;
    u8 mac[6] = { 0x02, 0x4b, 0x49, 0x4c, 0x4e, 0x01 };
    if (!bench_arg("netbench", "kiln.bench_frames", 200, 1, 1ULL << 32, &frames) ||
        !bench_arg("netbench", "kiln.bench_len", 1514, 60, 1514, &flen))
        return;
    if (!buf_in_ram("netbench", bi))
        return;
    if (virtio_count() == 0 || !virtio_find(0, &dev, "net")) {
        check_fail("netbench", "no virtio_mmio.device= token on the command line");
        return;
    }
    if (!virtio_init(&dev, VIRTIO_ID_NET, 1ULL << VIRTIO_NET_F_MAC))
        return;
    if (!virtio_setup_queue_n(&dev, RXQ, &rxq, VQ_RING_MAX) ||
        !virtio_setup_queue_n(&dev, TXQ, &txq, VQ_RING_MAX)) {
        virtio_fail_device(&dev);
        return;
    }
    if (!virtio_driver_ok(&dev))
        return;
    if (dev.features & (1ULL << VIRTIO_NET_F_MAC))
        for (int i = 0; i < 6; i++)
            mac[i] = virtio_cfg8(&dev, (u32)i);
    rxq.avail->flags = AVAIL_F_NO_INTERRUPT;
    txq.avail->flags = AVAIL_F_NO_INTERRUPT;
    unsigned nrx = rxq.num, ntx = txq.num;
    /* Every TX buffer holds the same frame: header, broadcast dst, our MAC, 0x88b5. */
    for (unsigned b = 0; b < ntx; b++) {
        u8 *p = net_tx_buf(b), *f = p + NET_HDR_LEN;
        memset(p, 0, NET_HDR_LEN);
        memset(f, 0xff, 6);
        memcpy(f + 6, mac, 6);
        f[12] = ETHERTYPE_KILN >> 8;
        f[13] = ETHERTYPE_KILN & 0xff;
        for (u32 i = ETH_HLEN; i < flen; i++)
            f[i] = (u8)i;
    }
    for (unsigned b = 0; b < nrx; b++)
        net_post_rx(&rxq, b);
    vq_notify(&rxq);
    kprintf("KILN-GUEST netbench frames=%lu len=%lu rxq=%u txq=%u\n", (unsigned long)frames,
            (unsigned long)flen, nrx, ntx);

    u64 sent = 0, txd = 0, rx = 0, ignored = 0, bytes = 0, spins = 0, idle = 0;
    u64 spin_max = virtio_spin_limit();
    kprintf("KILN-BENCH start\n");
    while (txd < frames || rx < txd) {
        bool progress = false, added = false;
        while (sent < frames && txq.num_free > 0) {
            struct vbuf buf = { net_tx_buf((unsigned)(sent % ntx)), NET_HDR_LEN + (u32)flen,
                                false };
            if (vq_add(&txq, &buf, 1) < 0)
                break;
            sent++;
            added = true;
        }
        if (added)
            notify(&txq);
        u32 id, len;
        while (vq_poll(&txq, &id, &len)) {
            txd++;
            bytes += flen;
            progress = true;
        }
        bool reposted = false;
        while (vq_poll(&rxq, &id, &len)) {
            unsigned b = nb_rx_of[id % VQ_RING_MAX];
            const u8 *f = net_rx_buf(b) + NET_HDR_LEN;
            if (len >= NET_HDR_LEN + ETH_HLEN && f[12] == (ETHERTYPE_KILN >> 8) &&
                f[13] == (ETHERTYPE_KILN & 0xff)) {
                rx++;
                bytes += len - NET_HDR_LEN;
            } else {
                ignored++;
            }
            net_post_rx(&rxq, b);
            reposted = progress = true;
        }
        if (reposted)
            notify(&rxq);
        if (progress || added) {
            spins = 0;
        } else if (++spins > spin_max) {
            break;
        } else {
            idle++;
            cpu_pause();
        }
    }
    kprintf("KILN-BENCH end op=net tx=%lu rx=%lu bytes=%lu\n", (unsigned long)txd,
            (unsigned long)rx, (unsigned long)bytes);
    kprintf("KILN-GUEST netbench empty_polls=%lu\n", (unsigned long)idle);
    if (ignored)
        kprintf("KILN-GUEST netbench ignored %lu frames of another ethertype\n",
                (unsigned long)ignored);
    if (txd == frames && rx == frames)
        check_ok("netbench");
    else
        check_fail("netbench", "expected %lu frames sent and echoed got tx=%lu rx=%lu",
                   (unsigned long)frames, (unsigned long)txd, (unsigned long)rx);
}
