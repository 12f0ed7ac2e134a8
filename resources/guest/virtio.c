/* Polled virtio-mmio transport (virtio 1.2 §4.2.2, version 2) and split virtqueues (§2.7). */
#include "virtio.h"
#include "boot.h"
#include "lib.h"

/* §4.2.2 register layout. */
#define VIRTIO_MMIO_MAGIC_VALUE 0x000
#define VIRTIO_MMIO_VERSION 0x004
#define VIRTIO_MMIO_DEVICE_ID 0x008
#define VIRTIO_MMIO_DEVICE_FEATURES 0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES 0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL 0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX 0x034
#define VIRTIO_MMIO_QUEUE_NUM 0x038
#define VIRTIO_MMIO_QUEUE_READY 0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY 0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS 0x060
#define VIRTIO_MMIO_INTERRUPT_ACK 0x064
#define VIRTIO_MMIO_STATUS 0x070
#define VIRTIO_MMIO_QUEUE_DESC_LOW 0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH 0x084
#define VIRTIO_MMIO_QUEUE_DRIVER_LOW 0x090
#define VIRTIO_MMIO_QUEUE_DRIVER_HIGH 0x094
#define VIRTIO_MMIO_QUEUE_DEVICE_LOW 0x0a0
#define VIRTIO_MMIO_QUEUE_DEVICE_HIGH 0x0a4
#define VIRTIO_MMIO_CONFIG_GENERATION 0x0fc
#define VIRTIO_MMIO_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC 0x74726976 /* "virt" */

/* §2.1 device status bits. */
#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_NEEDS_RESET 64
#define STATUS_FAILED 128

#define INT_USED_BUFFER 1

#define DEFAULT_SPIN 500000
#define IRQ_SPIN 20000
#define MAX_QUEUES 4 /* ring pages in total, handed out once per boot */

/* Static ring memory: one page per queue (desc at 0, avail at 0x400, used at 0x800). */
struct vq_page {
    struct virtq_desc desc[VQ_RING_MAX];
    u8 pad0[0x400 - sizeof(struct virtq_desc) * VQ_RING_MAX];
    struct virtq_avail avail;
    u8 pad1[0x400 - sizeof(struct virtq_avail)];
    struct virtq_used used;
} __attribute__((aligned(4096)));
_Static_assert(sizeof(struct vq_page) == 4096, "one page per queue");
static struct vq_page vq_pages[MAX_QUEUES];
static unsigned vq_pages_used;

static u32 rd(struct vdev *d, u32 off) { return mmio_read32(d->base + off); }
static void wr(struct vdev *d, u32 off, u32 v) { mmio_write32(d->base + off, v); }

u64 virtio_spin_limit(void)
{
    const char *v;
    size_t n;
    u64 x;
    if (cmdline_get("kiln.spin", &v, &n) && parse_u64(v, n, &x) && x > 0)
        return x;
    return DEFAULT_SPIN;
}

static void init_fail(struct vdev *d, const char *what, u64 expected, u64 got)
{
    check_fail(check_name(d->name, "init"), "%s expected 0x%lx got 0x%lx", what,
               (unsigned long)expected, (unsigned long)got);
}

/* "<size>[K|M|G]@<addr>:<irq>[:<id>]" (Linux virtio_mmio.device= syntax). */
static bool parse_device(const char *s, size_t n, struct vdev *d)
{
    size_t at = 0, colon;
    while (at < n && s[at] != '@')
        at++;
    if (at == 0 || at >= n)
        return false;
    colon = at + 1;
    while (colon < n && s[colon] != ':')
        colon++;
    u64 base, irq;
    if (!parse_u64(s + at + 1, colon - at - 1, &base))
        return false;
    size_t end = colon + 1;
    while (end < n && s[end] != ':')
        end++;
    if (colon >= n || !parse_u64(s + colon + 1, end - colon - 1, &irq))
        return false;
    if (base == 0 || base >= FOUR_GIB - 0x1000)
        return false;
    d->base = base;
    d->irq = (u32)irq;
    return true;
}

static const char device_key[] = "virtio_mmio.device=";

unsigned virtio_count(void)
{
    size_t pos = 0, len, klen = sizeof(device_key) - 1;
    const char *tok;
    unsigned count = 0;
    while (cmdline_next(&pos, &tok, &len))
        if (len > klen && memcmp(tok, device_key, klen) == 0)
            count++;
    return count;
}

bool virtio_find(unsigned n, struct vdev *dev, const char *name)
{
    size_t pos = 0, len, klen = sizeof(device_key) - 1;
    const char *tok;
    unsigned seen = 0;
    memset(dev, 0, sizeof(*dev));
    dev->name = name;
    while (cmdline_next(&pos, &tok, &len)) {
        if (len <= klen || memcmp(tok, device_key, klen) != 0)
            continue;
        if (seen++ != n)
            continue;
        if (!parse_device(tok + klen, len - klen, dev)) {
            check_fail(check_name(name, "init"), "bad token %.*s", (int)len, tok);
            return false;
        }
        return true;
    }
    return false;
}

bool virtio_find_id(u32 device_id, struct vdev *dev, const char *name)
{
    unsigned n = virtio_count();
    for (unsigned i = 0; i < n; i++) {
        if (!virtio_find(i, dev, name))
            continue;
        if (rd(dev, VIRTIO_MMIO_MAGIC_VALUE) == VIRTIO_MMIO_MAGIC &&
            rd(dev, VIRTIO_MMIO_DEVICE_ID) == device_id)
            return true;
    }
    memset(dev, 0, sizeof(*dev));
    dev->name = name;
    return false;
}

void virtio_fail_device(struct vdev *dev)
{
    wr(dev, VIRTIO_MMIO_STATUS, rd(dev, VIRTIO_MMIO_STATUS) | STATUS_FAILED);
}

bool virtio_init(struct vdev *d, u32 device_id, u64 wanted)
{
    u32 magic = rd(d, VIRTIO_MMIO_MAGIC_VALUE);
    if (magic != VIRTIO_MMIO_MAGIC) {
        init_fail(d, "magic", VIRTIO_MMIO_MAGIC, magic);
        return false;
    }
    u32 version = rd(d, VIRTIO_MMIO_VERSION);
    if (version != 2) {
        init_fail(d, "version", 2, version);
        return false;
    }
    d->device_id = rd(d, VIRTIO_MMIO_DEVICE_ID);
    if (d->device_id != device_id) {
        init_fail(d, "device id", device_id, d->device_id);
        return false;
    }
    /* §3.1.1: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK. */
    wr(d, VIRTIO_MMIO_STATUS, 0);
    for (unsigned i = 0; i < 1000 && rd(d, VIRTIO_MMIO_STATUS) != 0; i++)
        cpu_pause();
    u32 st = rd(d, VIRTIO_MMIO_STATUS);
    if (st != 0) {
        init_fail(d, "status after reset", 0, st);
        return false;
    }
    wr(d, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE);
    wr(d, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    wr(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    u64 lo = rd(d, VIRTIO_MMIO_DEVICE_FEATURES);
    wr(d, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    u64 hi = rd(d, VIRTIO_MMIO_DEVICE_FEATURES);
    d->offered = lo | (hi << 32);
    if (!(d->offered & VIRTIO_F_VERSION_1)) {
        init_fail(d, "VIRTIO_F_VERSION_1 offered", 1, 0);
        virtio_fail_device(d);
        return false;
    }
    d->features = (wanted & d->offered) | VIRTIO_F_VERSION_1;
    wr(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    wr(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)d->features);
    wr(d, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    wr(d, VIRTIO_MMIO_DRIVER_FEATURES, (u32)(d->features >> 32));
    wr(d, VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    st = rd(d, VIRTIO_MMIO_STATUS);
    if (!(st & STATUS_FEATURES_OK)) {
        init_fail(d, "FEATURES_OK stuck", STATUS_FEATURES_OK, st);
        virtio_fail_device(d);
        return false;
    }
    kprintf("KILN-GUEST %s device at 0x%lx irq %u features offered=0x%lx accepted=0x%lx\n",
            d->name, (unsigned long)d->base, d->irq, (unsigned long)d->offered,
            (unsigned long)d->features);
    return true;
}

bool virtio_setup_queue(struct vdev *d, u16 index, struct virtq *q)
{
    return virtio_setup_queue_n(d, index, q, VQ_MAX_SIZE);
}

bool virtio_setup_queue_n(struct vdev *d, u16 index, struct virtq *q, u16 want)
{
    if (index >= VDEV_MAX_QUEUES || vq_pages_used >= MAX_QUEUES) {
        init_fail(d, "queue slot", 0, index);
        return false;
    }
    wr(d, VIRTIO_MMIO_QUEUE_SEL, index);
    u32 ready = rd(d, VIRTIO_MMIO_QUEUE_READY);
    if (ready != 0) {
        init_fail(d, "QueueReady before setup", 0, ready);
        return false;
    }
    u32 max = rd(d, VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (max == 0) {
        init_fail(d, "QueueNumMax", VQ_MAX_SIZE, 0);
        return false;
    }
    u16 num = VQ_RING_MAX;
    if (want == 0)
        want = 1;
    while (num > want || num > max)
        num >>= 1;
    struct vq_page *pg = &vq_pages[vq_pages_used++];
    memset(pg, 0, sizeof(*pg));
    memset(q, 0, sizeof(*q));
    q->dev = d;
    q->index = index;
    q->num = num;
    q->desc = pg->desc;
    q->avail = &pg->avail;
    q->used = &pg->used;
    for (u16 i = 0; i < num; i++)
        pg->desc[i].next = (u16)(i + 1);
    q->free_head = 0;
    q->num_free = num;
    u64 da = (u64)(uintptr_t)pg->desc, aa = (u64)(uintptr_t)&pg->avail,
        ua = (u64)(uintptr_t)&pg->used;
    wr(d, VIRTIO_MMIO_QUEUE_NUM, num);
    wr(d, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)da);
    wr(d, VIRTIO_MMIO_QUEUE_DESC_HIGH, (u32)(da >> 32));
    wr(d, VIRTIO_MMIO_QUEUE_DRIVER_LOW, (u32)aa);
    wr(d, VIRTIO_MMIO_QUEUE_DRIVER_HIGH, (u32)(aa >> 32));
    wr(d, VIRTIO_MMIO_QUEUE_DEVICE_LOW, (u32)ua);
    wr(d, VIRTIO_MMIO_QUEUE_DEVICE_HIGH, (u32)(ua >> 32));
    barrier();
    wr(d, VIRTIO_MMIO_QUEUE_READY, 1);
    d->queues[index] = q;
    return true;
}

bool virtio_driver_ok(struct vdev *d)
{
    wr(d, VIRTIO_MMIO_STATUS,
       STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    u32 st = rd(d, VIRTIO_MMIO_STATUS);
    if (!(st & STATUS_DRIVER_OK) || (st & (STATUS_NEEDS_RESET | STATUS_FAILED))) {
        init_fail(d, "status after DRIVER_OK", 0xf, st);
        return false;
    }
    check_ok(check_name(d->name, "init"));
    return true;
}

int vq_add(struct virtq *q, const struct vbuf *bufs, unsigned n)
{
    if (n == 0 || n > q->num_free)
        return -1;
    u16 head = q->free_head, idx = head, last = head;
    for (unsigned i = 0; i < n; i++) {
        volatile struct virtq_desc *dsc = &q->desc[idx];
        dsc->addr = (u64)(uintptr_t)bufs[i].addr;
        dsc->len = bufs[i].len;
        dsc->flags = (u16)((bufs[i].write ? VIRTQ_DESC_F_WRITE : 0) |
                           (i + 1 < n ? VIRTQ_DESC_F_NEXT : 0));
        last = idx;
        idx = dsc->next;
    }
    (void)last;
    q->free_head = idx;
    q->num_free = (u16)(q->num_free - n);
    u16 ai = q->avail->idx;
    q->avail->ring[ai % q->num] = head;
    barrier(); /* descriptors and ring entry before the index (§2.7.13) */
    q->avail->idx = (u16)(ai + 1);
    barrier();
    return head;
}

void vq_notify(struct virtq *q)
{
    barrier();
    wr(q->dev, VIRTIO_MMIO_QUEUE_NOTIFY, q->index);
}

static void free_chain(struct virtq *q, u16 head)
{
    u16 idx = head, n = 1;
    while ((q->desc[idx].flags & VIRTQ_DESC_F_NEXT) && n < q->num) {
        idx = q->desc[idx].next;
        n++;
    }
    q->desc[idx].next = q->free_head;
    q->free_head = head;
    q->num_free = (u16)(q->num_free + n);
}

bool vq_poll(struct virtq *q, u32 *id, u32 *len)
{
    if (q->used->idx == q->last_used)
        return false;
    barrier(); /* read the element only after seeing the index */
    volatile struct virtq_used_elem *e = &q->used->ring[q->last_used % q->num];
    u32 i = e->id, l = e->len;
    q->last_used++;
    if (i >= q->num) {
        kprintf("KILN-GUEST %s queue %u: used id %u out of range\n", q->dev->name, q->index, i);
        i = 0;
    } else {
        free_chain(q, (u16)i);
    }
    *id = i;
    *len = l;
    return true;
}

bool vq_wait(struct virtq *q, u32 *id, u32 *len)
{
    u64 limit = virtio_spin_limit();
    for (u64 i = 0; i < limit; i++) {
        if (vq_poll(q, id, len))
            return true;
        cpu_pause();
    }
    return false;
}

void virtio_check_irq(struct vdev *d)
{
    /* Was there used-ring progress since the last ack? Then bit 0 must be (or become) set. */
    bool progress = false;
    for (int i = 0; i < VDEV_MAX_QUEUES; i++)
        if (d->queues[i] && d->queues[i]->used->idx != d->ack_snapshot[i])
            progress = true;
    if (!progress)
        return;
    u32 isr = 0;
    for (unsigned i = 0; i < IRQ_SPIN; i++) {
        isr = rd(d, VIRTIO_MMIO_INTERRUPT_STATUS);
        if (isr & INT_USED_BUFFER)
            break;
        cpu_pause();
    }
    if (isr & INT_USED_BUFFER)
        d->irq_seen++;
    else
        d->irq_missing++;
    if (isr)
        wr(d, VIRTIO_MMIO_INTERRUPT_ACK, isr);
    for (int i = 0; i < VDEV_MAX_QUEUES; i++)
        if (d->queues[i])
            d->ack_snapshot[i] = d->queues[i]->used->idx;
}

void virtio_report_irq(struct vdev *d, const char *check)
{
    if (d->irq_missing == 0 && d->irq_seen > 0)
        check_ok(check);
    else
        check_fail(check, "used-buffer interrupt bit expected %u times got %u",
                   d->irq_seen + d->irq_missing, d->irq_seen);
}

u8 virtio_cfg8(struct vdev *d, u32 off)
{
    return mmio_read8(d->base + VIRTIO_MMIO_CONFIG + off);
}

u32 virtio_cfg32(struct vdev *d, u32 off)
{
    return rd(d, VIRTIO_MMIO_CONFIG + off);
}

u64 virtio_cfg64(struct vdev *d, u32 off)
{
    u32 before, after, lo, hi;
    unsigned tries = 0;
    do {
        before = rd(d, VIRTIO_MMIO_CONFIG_GENERATION);
        lo = virtio_cfg32(d, off);
        hi = virtio_cfg32(d, off + 4);
        after = rd(d, VIRTIO_MMIO_CONFIG_GENERATION);
    } while (before != after && ++tries < 100);
    return lo | ((u64)hi << 32);
}
