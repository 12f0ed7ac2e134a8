/*
 * kiln.mode=hostile: a deliberately misbehaving virtio driver (hostile_driver.c: driver
 * core; hostile.c: runner and descriptor/ring/buffer cases; hostile_io.c: register, storm,
 * reset and busy cases; hostile_net.c: virtio-net cases; hostile_smp.c + hostile_smp.S:
 * two vCPUs at once). Every case misbehaves once, then the runner resets the device,
 * initialises it properly and checks that it still serves normal requests. See README.md.
 */
#ifndef KILN_GUEST_HOSTILE_H
#define KILN_GUEST_HOSTILE_H

#include "types.h"

/* Fixed guest-physical work area (identity mapped, outside the image; RAM checked). */
#define H_AREA 0x2000000ULL              /* 32 MiB */
#define H_RING (H_AREA + 0x0000)         /* desc +0, avail +0x1000, used +0x2000 */
#define H_RING2 (H_AREA + 0x8000)        /* a second ring set (same layout) */
#define H_HDR (H_AREA + 0x3000)          /* request header (16 bytes) */
#define H_STATUS (H_AREA + 0x3100)       /* status byte */
#define H_DATA (H_AREA + 0x4000)         /* 16 sectors */
#define H_DATA2 (H_AREA + 0x6000)        /* 16 sectors */
#define H_BUSY (H_AREA + 0x100000)       /* busy and reset cases: data buffers */
#define H_BUSY_SIZE (16ULL << 20)
#define H_AREA_END (H_BUSY + H_BUSY_SIZE + 0x1000) /* + a status byte */
#define H_FAR 0x4000000000ULL            /* 256 GiB: never guest RAM here */
#define H_MMIO_WINDOW 0xd0000000ULL      /* virtio-mmio slots */

#define H_QSIZE 8
#define SECTOR 512

/* virtio 1.2 register offsets (§4.2.2). */
#define R_MAGIC 0x000
#define R_VERSION 0x004
#define R_DEVICE_ID 0x008
#define R_VENDOR_ID 0x00c
#define R_DEV_FEATURES 0x010
#define R_DEV_FEATURES_SEL 0x014
#define R_DRV_FEATURES 0x020
#define R_DRV_FEATURES_SEL 0x024
#define R_QUEUE_SEL 0x030
#define R_QUEUE_NUM_MAX 0x034
#define R_QUEUE_NUM 0x038
#define R_QUEUE_READY 0x044
#define R_QUEUE_NOTIFY 0x050
#define R_INT_STATUS 0x060
#define R_INT_ACK 0x064
#define R_STATUS 0x070
#define R_QUEUE_DESC_LO 0x080
#define R_QUEUE_DESC_HI 0x084
#define R_QUEUE_DRIVER_LO 0x090
#define R_QUEUE_DRIVER_HI 0x094
#define R_QUEUE_DEVICE_LO 0x0a0
#define R_QUEUE_DEVICE_HI 0x0a4
#define R_CONFIG_GEN 0x0fc
#define R_CONFIG 0x100

#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40
#define S_FAILED 0x80
#define INT_CONFIG 2

#define F_VERSION_1 (1ULL << 32)
#define F_EVENT_IDX (1ULL << 29)

#define D_NEXT 1
#define D_WRITE 2

#define T_IN 0
#define T_OUT 1
#define BLK_S_OK 0
#define BLK_S_IOERR 1

/* The device under test and the one split queue the driver currently gave it. */
struct hdev {
    u64 base;
    u64 ram_top;      /* end of the highest RAM range below 4 GiB */
    u64 capacity;     /* sectors */
    u64 desc, avail, used;
    u16 qsel;         /* the queue this view drives (QueueSel, QueueNotify value) */
    u16 num;
    u16 avail_idx;    /* driver's copy of avail->idx */
    u16 last_used;
};

/* A case's result: why == 0 means it behaved acceptably; val is shown on failure. */
struct verdict {
    const char *why;
    u64 val;
};
#define PASS ((struct verdict){ 0, 0 })
#define FAILV(w, v) ((struct verdict){ (w), (u64)(v) })

struct hcase {
    const char *name;
    struct verdict (*run)(struct hdev *d);
};

/* What a malformed request may legitimately lead to. */
enum expect {
    EXP_ERR,     /* completed with status IOERR, or DEVICE_NEEDS_RESET */
    EXP_ANY,     /* completed (status byte unusable), or DEVICE_NEEDS_RESET */
    EXP_OK_ERR,  /* completed with OK or IOERR, or DEVICE_NEEDS_RESET */
    EXP_RESET,   /* DEVICE_NEEDS_RESET only */
};

/* Results of h_wait. */
#define W_NONE 0
#define W_DONE 1
#define W_RESET 2

/* Unaligned-tolerant guest-physical accessors (x86 allows any alignment). */
typedef u16 u16_ua __attribute__((aligned(1)));
typedef u32 u32_ua __attribute__((aligned(1)));
typedef u64 u64_ua __attribute__((aligned(1)));
static inline void pw8(u64 a, u8 v) { *(volatile u8 *)PHYS(a) = v; }
static inline void pw16(u64 a, u16 v) { *(volatile u16_ua *)PHYS(a) = v; }
static inline void pw32(u64 a, u32 v) { *(volatile u32_ua *)PHYS(a) = v; }
static inline void pw64(u64 a, u64 v) { *(volatile u64_ua *)PHYS(a) = v; }
static inline u8 pr8(u64 a) { return *(volatile u8 *)PHYS(a); }
static inline u16 pr16(u64 a) { return *(volatile u16_ua *)PHYS(a); }
static inline u32 pr32(u64 a) { return *(volatile u32_ua *)PHYS(a); }

/* The case being run (for KILN-GUEST lines). */
const char *h_case(void);
void h_set_case(const char *name);
/* Registers of the device under test (4-byte accesses). */
u32 h_rd(struct hdev *d, u32 off);
void h_wr(struct hdev *d, u32 off, u32 v);
/* Status 0 .. FEATURES_OK with `features`; false (and a KILN-GUEST line) on failure. */
bool h_negotiate(struct hdev *d, u64 features);
/* Queue d->qsel registers (size num, the three ring addresses), then QueueReady = 1; returns
 * what QueueReady reads back. Nothing in guest memory is touched. */
u32 h_queue(struct hdev *d, u16 num, u64 desc, u64 avail, u64 used);
/* Zero the rings at `ring` (H_RING layout) for `num` entries and use them. */
u32 h_queue_at(struct hdev *d, u16 num, u64 ring);
/* DRIVER_OK; returns the Status register read afterwards. */
u32 h_driver_ok(struct hdev *d);
/* Full proper initialisation with the rings at H_RING; false on any problem. */
bool h_open(struct hdev *d);
/* Descriptor i of the current queue. */
void h_desc(struct hdev *d, u16 i, u64 addr, u32 len, u16 flags, u16 next);
/* Put `head` in the next avail slot and publish the index (no notification). */
void h_post(struct hdev *d, u16 head);
void h_notify(struct hdev *d);
/* Header at H_HDR; the status byte at H_STATUS is set to 0xff. */
void h_hdr(u32 type, u64 sector);
/* Poll the used ring (bounded by kiln.spin) watching Status for DEVICE_NEEDS_RESET. */
int h_wait(struct hdev *d, u32 *id, u32 *len);
/* Acknowledge whatever InterruptStatus shows; returns it. */
u32 h_ack(struct hdev *d);
/* Post `head`, notify, wait and judge the outcome against `exp` (prints what happened). */
struct verdict h_submit(struct hdev *d, u16 head, enum expect exp);
/* A well-formed request (hdr, data, status in descriptors 0..2): status byte, or -1 for
 * no completion, -2 for DEVICE_NEEDS_RESET. */
int h_request(struct hdev *d, u32 type, u64 sector, u64 buf, u32 len);
/* After a misbehaviour on a live device: a normal read of sectors 0..3 either works or the
 * device reports DEVICE_NEEDS_RESET (no reset in between). */
struct verdict h_still_serves(struct hdev *d);
/* Zero [addr, addr + len) as far as it is guest RAM below ram_top. */
void h_zero_ram(struct hdev *d, u64 addr, u64 len);
/* Judge a wait result `w` (W_*) with used element id/len against `exp`; acks interrupts. */
struct verdict h_judge(struct hdev *d, int w, u32 id, u32 len, enum expect exp);
/* DEVICE_NEEDS_RESET was seen: it must come with the config-change interrupt bit. */
struct verdict h_needs_reset_seen(u32 isr, const char *when);
/* Failure for a request status st (-1 no completion, -2 DEVICE_NEEDS_RESET). */
struct verdict h_status_verdict(const char *what, int st);
/* Compare `sectors` sectors at H_DATA with pattern `pat` from sector `first`. */
struct verdict h_verify(u64 first, u32 sectors, u8 (*pat)(u64, u32));
/* Host pattern of sector s byte i (the host test writes the disk so). */
u8 h_host_byte(u64 s, u32 i);
/* The pattern the recovery step writes. */
u8 h_write_byte(u64 s, u32 i);

/* The register, storm and reset cases (hostile_io.c). */
extern const struct hcase hostile_io_cases[];
extern const unsigned hostile_io_ncases;
/* kiln.hostile=smp (hostile_smp.c): needs a second vCPU. */
extern const struct hcase hostile_smp_case;
/* kiln.hostile=busy: 16 MiB reads forever (hostile_io.c). */
void hostile_busy(struct hdev *d);
/* The virtio-net cases (hostile_net.c) against the device at `base`: all of them when
 * `only` is NULL or "net", else the one named; returns how many ran. */
unsigned hostile_net_run(u64 base, u64 ram_top, const char *only, size_t only_len);

#endif
