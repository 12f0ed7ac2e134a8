/*
 * kiln.mode=blk: virtio-blk (virtio 1.2 §5.2) checks on the first virtio_mmio.device
 * (read-write disk, check prefix "blk") and, if present, the second (read-only disk,
 * prefix "blk_ro"). See README.md for the data patterns the host test provides/verifies.
 */
#include "boot.h"
#include "lib.h"
#include "modes.h"
#include "virtio.h"
#include "blk.h"

#define VIRTIO_BLK_F_RO 5
#define VIRTIO_BLK_F_FLUSH 9
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_ID_BYTES 20
#define STATUS_TIMEOUT (-1)
#define STATUS_QUEUE_FULL (-2)

struct blk_req_hdr {
    u32 type;
    u32 reserved;
    u64 sector;
};

static struct blk_req_hdr req_hdr __attribute__((aligned(16)));
u8 blk_data[BLK_DATA_BYTES] __attribute__((aligned(512)));
static volatile u8 req_status;

static u8 read_pattern(u64 s, u32 i) { return (u8)((s * 31 + i * 7 + 1) & 0xff); }
static u8 write_pattern(u64 s, u32 i) { return (u8)((s * 13 + i * 3 + 0x5a) & 0xff); }

/* One request; returns the status byte, STATUS_TIMEOUT or STATUS_QUEUE_FULL. */
int blk_request(struct blk *b, u32 type, u64 sector, u32 len, bool device_writes)
{
    if (b->dead)
        return STATUS_TIMEOUT;
    struct vbuf bufs[3];
    unsigned n = 0;
    req_hdr.type = type;
    req_hdr.reserved = 0;
    req_hdr.sector = sector;
    req_status = 0xff;
    bufs[n++] = (struct vbuf){ &req_hdr, sizeof(req_hdr), false };
    if (len)
        bufs[n++] = (struct vbuf){ blk_data, len, device_writes };
    bufs[n++] = (struct vbuf){ &req_status, 1, true };
    if (vq_add(&b->q, bufs, n) < 0)
        return STATUS_QUEUE_FULL;
    vq_notify(&b->q);
    u32 id, used_len;
    if (!vq_wait(&b->q, &id, &used_len)) {
        b->dead = true;
        return STATUS_TIMEOUT;
    }
    virtio_check_irq(&b->dev);
    return req_status;
}

/* Report a failed status; true when the status was `want`. */
static bool status_is(const char *check, int got, int want)
{
    if (got == want)
        return true;
    if (got == STATUS_TIMEOUT)
        check_fail(check, "request timed out (no used-ring entry)");
    else if (got == STATUS_QUEUE_FULL)
        check_fail(check, "virtqueue full");
    else
        check_fail(check, "status expected %d got %d", want, got);
    return false;
}

/* Compare `blk_data` with a per-sector pattern starting at `first`; report the result. */
static void verify(const char *check, u64 first, u32 sectors, u8 (*pat)(u64, u32))
{
    for (u32 s = 0; s < sectors; s++)
        for (u32 i = 0; i < SECTOR; i++) {
            u8 want = pat(first + s, i), got = blk_data[s * SECTOR + i];
            if (want != got) {
                check_fail(check, "sector %lu byte %u expected 0x%02x got 0x%02x",
                           (unsigned long)(first + s), i, want, got);
                return;
            }
        }
    check_ok(check);
}

bool blk_open(struct blk *b, unsigned index, const char *name)
{
    memset(b, 0, sizeof(*b));
    if (!virtio_find(index, &b->dev, name))
        return false;
    u64 want = (1ULL << VIRTIO_BLK_F_RO) | (1ULL << VIRTIO_BLK_F_FLUSH);
    if (!virtio_init(&b->dev, VIRTIO_ID_BLOCK, want))
        return false;
    if (!virtio_setup_queue(&b->dev, 0, &b->q)) {
        virtio_fail_device(&b->dev);
        return false;
    }
    return virtio_driver_ok(&b->dev);
}

static void blk_rw_disk(struct blk *b)
{
    const char *v;
    size_t n;
    u64 cap = virtio_cfg64(&b->dev, 0), want;
    kprintf("KILN-GUEST blk capacity=%lu\n", (unsigned long)cap);
    if (cmdline_get("kiln.blk_sectors", &v, &n)) {
        if (parse_u64(v, n, &want))
            check_eq_u64("blk_capacity", want, cap);
        else
            check_fail("blk_capacity", "bad value kiln.blk_sectors=%.*s", (int)n, v);
    }

    /* Sectors 0..3 carry the host pattern. */
    memset(blk_data, 0, sizeof(blk_data));
    if (status_is("blk_read", blk_request(b, VIRTIO_BLK_T_IN, 0, 4 * SECTOR, true),
                  VIRTIO_BLK_S_OK))
        verify("blk_read", 0, 4, read_pattern);

    /* Write sectors 4..5, flush, read back. */
    for (u32 s = 0; s < 2; s++)
        for (u32 i = 0; i < SECTOR; i++)
            blk_data[s * SECTOR + i] = write_pattern(4 + s, i);
    if (status_is("blk_write", blk_request(b, VIRTIO_BLK_T_OUT, 4, 2 * SECTOR, false),
                  VIRTIO_BLK_S_OK))
        check_ok("blk_write");
    if (b->dev.features & (1ULL << VIRTIO_BLK_F_FLUSH)) {
        if (status_is("blk_flush", blk_request(b, VIRTIO_BLK_T_FLUSH, 0, 0, false),
                      VIRTIO_BLK_S_OK))
            check_ok("blk_flush");
    } else {
        kprintf("KILN-GUEST blk flush not offered\n");
    }
    memset(blk_data, 0, sizeof(blk_data));
    if (status_is("blk_readback", blk_request(b, VIRTIO_BLK_T_IN, 4, 2 * SECTOR, true),
                  VIRTIO_BLK_S_OK))
        verify("blk_readback", 4, 2, write_pattern);

    /* GET_ID: up to 20 bytes, NUL-padded when shorter. */
    memset(blk_data, 0, sizeof(blk_data));
    int st = blk_request(b, VIRTIO_BLK_T_GET_ID, 0, VIRTIO_BLK_ID_BYTES, true);
    bool has_id = cmdline_get("kiln.blk_id", &v, &n);
    if (st == VIRTIO_BLK_S_OK) {
        size_t idlen = 0;
        while (idlen < VIRTIO_BLK_ID_BYTES && blk_data[idlen])
            idlen++;
        kprintf("KILN-GUEST blk id=%.*s\n", (int)idlen, (const char *)blk_data);
        if (has_id) {
            size_t wl = n < VIRTIO_BLK_ID_BYTES ? n : VIRTIO_BLK_ID_BYTES;
            if (idlen == wl && memcmp(blk_data, v, wl) == 0)
                check_ok("blk_id");
            else
                check_fail("blk_id", "expected %.*s got %.*s", (int)wl, v, (int)idlen,
                           (const char *)blk_data);
        }
    } else if (has_id) {
        status_is("blk_id", st, VIRTIO_BLK_S_OK);
    }

    /* A read at sector == capacity is past the end: IOERR. */
    if (status_is("blk_eof", blk_request(b, VIRTIO_BLK_T_IN, cap, SECTOR, true),
                  VIRTIO_BLK_S_IOERR))
        check_ok("blk_eof");
    virtio_report_irq(&b->dev, "blk_irq");
}

static void blk_ro_disk(struct blk *b)
{
    if (b->dev.offered & (1ULL << VIRTIO_BLK_F_RO))
        check_ok("blk_ro_feature");
    else
        check_fail("blk_ro_feature", "VIRTIO_BLK_F_RO expected offered got not offered");
    memset(blk_data, 0xee, SECTOR);
    if (status_is("blk_ro_write", blk_request(b, VIRTIO_BLK_T_OUT, 0, SECTOR, false),
                  VIRTIO_BLK_S_IOERR))
        check_ok("blk_ro_write");
    memset(blk_data, 0, SECTOR);
    if (status_is("blk_ro_read", blk_request(b, VIRTIO_BLK_T_IN, 0, SECTOR, true),
                  VIRTIO_BLK_S_OK)) {
        kprintf("KILN-GUEST blk_ro sector0=");
        for (int i = 0; i < 16; i++)
            kprintf("%02x", blk_data[i]);
        kprintf("\n");
        check_ok("blk_ro_read");
    }
    virtio_report_irq(&b->dev, "blk_ro_irq");
}

void blk_run(void)
{
    static struct blk disk;
    if (virtio_count() == 0) {
        check_fail("blk_init", "no virtio_mmio.device= token on the command line");
        return;
    }
    if (blk_open(&disk, 0, "blk"))
        blk_rw_disk(&disk);
    if (virtio_count() > 1 && blk_open(&disk, 1, "blk_ro"))
        blk_ro_disk(&disk);
}
