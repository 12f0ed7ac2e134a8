/*
 * kiln.mode=snap: a guest whose output proves that a snapshot restored in a new process
 * continues exactly where the paused VM stopped (see README.md, "Snapshot mode").
 *
 * It counts forever. The counter lives twice: in a register (the loop variable) and in
 * memory (a global the loop increments on its own); each line prints both and a running
 * FNV-1a checksum of the sequence, a pure function of the line number. With a virtio-blk
 * disk it also keeps one write-then-read-back request cycle going, each request submitted
 * (QueueNotify) and only polled for about 100 ms later, so a pause often lands while a
 * request is in flight; after a restore the guest just goes on polling.
 */
#include "blk.h"
#include "lib.h"
#include "modes.h"
#include "virtio.h"

/* ~2.2 µs per pause loop under the emulator: ~15 lines a second (as kiln.mode=count). */
#define DEFAULT_EVERY 30000
#define DEFAULT_BLK_EVERY 4
/* Pause loops between submitting a request and the first poll of the used ring (~100 ms). */
#define BLK_SPIN 45000
/* Pause loops between two looks at the disk state (~1 ms). */
#define CHUNK 500
/* kiln.wait default: polls (one per CHUNK) after BLK_SPIN before a request times out. */
#define DEFAULT_WAIT 60000
/* Sectors the writes cycle through: sector = n mod SNAP_SECTORS. */
#define SNAP_SECTORS 64

#define FNV64_OFFSET 0xcbf29ce484222325ULL
#define FNV64_PRIME 0x100000001b3ULL

enum snap_state { SNAP_IDLE, SNAP_WRITING, SNAP_READING, SNAP_OFF };

struct snap_req_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

/* The memory copy of the counter: read and written through memory on every line. */
static volatile u64 snap_count_mem;

static struct blk snap_disk;
static struct snap_req_hdr snap_hdr __attribute__((aligned(16)));
static u8 snap_buf[SECTOR] __attribute__((aligned(512)));
static volatile u8 snap_status;

/* The request cycle in progress. */
static struct {
    enum snap_state state;
    u64 n;       /* line number that started it: sector n mod 64, pattern of n */
    u32 head;    /* descriptor id of the request in flight */
    u64 waited;  /* pause loops since the request was submitted */
    u64 polls;   /* used-ring polls after BLK_SPIN that found nothing */
    u64 wait;    /* kiln.wait */
} op;

/* Checksum step: FNV-1a 64 over the 8 little-endian bytes of n. */
static u64 fnv_step(u64 sum, u64 n)
{
    for (int i = 0; i < 8; i++) {
        sum ^= (n >> (8 * i)) & 0xff;
        sum *= FNV64_PRIME;
    }
    return sum;
}

/* Byte i of the sector written for line n. */
static u8 snap_pattern(u64 n, u32 i)
{
    if (i < 8)
        return (u8)(n >> (8 * i));
    return (u8)((n * 31 + i * 7 + 0x33) & 0xff);
}

/* Start "KILN-GUEST snap blk <n> FAIL "; the caller prints the detail and "\n". */
static void fail_begin(void)
{
    kprintf("KILN-GUEST snap blk %lu FAIL ", (unsigned long)op.n);
    op.state = SNAP_OFF; /* the device's state is unknown: no more requests */
}

/* Make one request available and notify; the caller polls for it later. */
static bool submit(u32 type)
{
    struct vbuf bufs[3] = {
        { &snap_hdr, sizeof(snap_hdr), false },
        { snap_buf, SECTOR, type == VIRTIO_BLK_T_IN },
        { &snap_status, 1, true },
    };
    snap_hdr.type = type;
    snap_hdr.reserved = 0;
    snap_hdr.sector = op.n % SNAP_SECTORS;
    snap_status = 0xff;
    u16 extra = (u16)(snap_disk.q.used->idx - snap_disk.q.last_used);
    if (extra) {
        fail_begin();
        kprintf("%u used-ring entries nothing was waiting for\n", extra);
        return false;
    }
    int head = vq_add(&snap_disk.q, bufs, 3);
    if (head < 0) {
        fail_begin();
        kprintf("virtqueue full\n");
        return false;
    }
    op.head = (u32)head;
    vq_notify(&snap_disk.q);
    op.waited = 0;
    op.polls = 0;
    return true;
}

static void start_cycle(u64 n)
{
    op.n = n;
    for (u32 i = 0; i < SECTOR; i++)
        snap_buf[i] = snap_pattern(n, i);
    if (submit(VIRTIO_BLK_T_OUT))
        op.state = SNAP_WRITING;
}

/* The request completed: check it, go on with the read-back or report the cycle. */
static void completed(void)
{
    unsigned missing = snap_disk.dev.irq_missing;
    virtio_check_irq(&snap_disk.dev);
    if (snap_status != VIRTIO_BLK_S_OK) {
        const char *what = op.state == SNAP_WRITING ? "write" : "read";
        fail_begin();
        kprintf("%s status expected 0 got %u\n", what, snap_status);
        return;
    }
    if (snap_disk.dev.irq_missing != missing) {
        fail_begin();
        kprintf("InterruptStatus bit 0 not set after the completion\n");
        return;
    }
    if (op.state == SNAP_WRITING) {
        memset(snap_buf, 0, SECTOR);
        if (submit(VIRTIO_BLK_T_IN))
            op.state = SNAP_READING;
        return;
    }
    for (u32 i = 0; i < SECTOR; i++)
        if (snap_buf[i] != snap_pattern(op.n, i)) {
            u8 want = snap_pattern(op.n, i), got = snap_buf[i];
            fail_begin();
            kprintf("read-back byte %u expected 0x%02x got 0x%02x\n", i, want, got);
            return;
        }
    kprintf("KILN-GUEST snap blk %lu ok\n", (unsigned long)op.n);
    op.state = SNAP_IDLE;
}

/* Called after every CHUNK pause loops: poll the request in flight once it is due. */
static void blk_tick(void)
{
    if (op.state != SNAP_WRITING && op.state != SNAP_READING)
        return;
    if (op.waited < BLK_SPIN) {
        op.waited += CHUNK;
        return;
    }
    u32 id, len;
    u16 ready = (u16)(snap_disk.q.used->idx - snap_disk.q.last_used);
    if (ready > 1) {
        fail_begin();
        kprintf("%u used-ring entries for one request\n", ready);
        return;
    }
    if (vq_poll(&snap_disk.q, &id, &len)) {
        if (id != op.head) {
            fail_begin();
            kprintf("used id expected %u got %u\n", op.head, id);
            return;
        }
        completed();
        return;
    }
    if (++op.polls > op.wait) {
        const char *what = op.state == SNAP_WRITING ? "write" : "read";
        fail_begin();
        kprintf("%s timed out (no used-ring entry)\n", what);
    }
}

static bool open_disk(void)
{
    if (virtio_count() == 0 || !blk_open(&snap_disk, 0, "blk"))
        return false;
    u64 cap = virtio_cfg64(&snap_disk.dev, 0);
    if (cap < SNAP_SECTORS) {
        kprintf("KILN-GUEST snap blk capacity %lu FAIL need %u sectors\n", (unsigned long)cap,
                SNAP_SECTORS);
        return false;
    }
    return true;
}

void snap_run(void)
{
    u64 every, blk_every;
    if (!bench_arg("snap", "kiln.every", DEFAULT_EVERY, 1, 1ULL << 40, &every) ||
        !bench_arg("snap", "kiln.blk_every", DEFAULT_BLK_EVERY, 1, 1ULL << 32, &blk_every) ||
        !bench_arg("snap", "kiln.wait", DEFAULT_WAIT, 1, 1ULL << 32, &op.wait))
        return;
    kprintf("KILN-GUEST snap start\n");
    op.state = SNAP_OFF;
    if (open_disk())
        op.state = SNAP_IDLE;
    else
        kprintf("KILN-GUEST snap nodisk\n");
    snap_count_mem = 0;
    u64 sum = FNV64_OFFSET;
    for (u64 n = 1;; n++) {
        for (u64 done = 0; done < every; done += CHUNK) {
            u64 loops = every - done < CHUNK ? every - done : CHUNK;
            for (u64 i = 0; i < loops; i++)
                cpu_pause();
            blk_tick();
        }
        snap_count_mem = snap_count_mem + 1;
        u64 mem = snap_count_mem;
        sum = fnv_step(sum, n);
        kprintf("KILN-GUEST snap %lu sum=%016lx mem=%lu\n", (unsigned long)n,
                (unsigned long)sum, (unsigned long)mem);
        if (mem != n)
            kprintf("KILN-CHECK snap FAIL register count %lu memory count %lu\n",
                    (unsigned long)n, (unsigned long)mem);
        if (op.state == SNAP_IDLE && n % blk_every == 0)
            start_cycle(n);
    }
}
