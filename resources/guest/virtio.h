/*
 * Minimal polled virtio-mmio (virtio 1.2 §4.2, version 2 "modern" only) driver core with
 * split virtqueues (§2.7). Interrupts stay off: completions are found by polling the used
 * ring, and the InterruptStatus register is checked/acked to verify the device raised the
 * used-buffer notification.
 */
#ifndef KILN_GUEST_VIRTIO_H
#define KILN_GUEST_VIRTIO_H

#include "types.h"

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_RNG 4
#define VIRTIO_ID_VSOCK 19
#define VIRTIO_F_VERSION_1 (1ULL << 32)

/* Default queue size of the check modes; the bench modes ask for up to VQ_RING_MAX. */
#define VQ_MAX_SIZE 8
#define VQ_RING_MAX 32
/* Queues per device the driver can set up (vsock has three: rx, tx, event). */
#define VDEV_MAX_QUEUES 3

/* §2.7.5 / §2.7.6 / §2.7.8 */
struct virtq_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2

struct virtq_avail {
    u16 flags;
    u16 idx;
    u16 ring[VQ_RING_MAX];
    u16 used_event;
};

struct virtq_used_elem {
    u32 id;
    u32 len;
};

struct virtq_used {
    u16 flags;
    u16 idx;
    struct virtq_used_elem ring[VQ_RING_MAX];
    u16 avail_event;
};

struct vdev;

struct virtq {
    struct vdev *dev;
    u16 index;      /* queue number on the device */
    u16 num;        /* queue size (power of two, <= VQ_RING_MAX) */
    u16 free_head;  /* free descriptor list, linked through .next */
    u16 num_free;
    u16 last_used;  /* next used-ring slot to consume */
    volatile struct virtq_desc *desc;
    volatile struct virtq_avail *avail;
    volatile struct virtq_used *used;
};

struct vdev {
    u64 base;           /* MMIO base */
    u32 irq;            /* from the command line (informational) */
    u32 device_id;
    u64 offered;        /* device feature bits */
    u64 features;       /* negotiated */
    const char *name;   /* check-name prefix, e.g. "blk" */
    struct virtq *queues[VDEV_MAX_QUEUES];
    u16 ack_snapshot[VDEV_MAX_QUEUES]; /* used idx of each queue at the last interrupt ack */
    unsigned irq_seen, irq_missing;
};

/* One buffer of a request: guest-physical address, length, device-writable or not. */
struct vbuf {
    const volatile void *addr;
    u32 len;
    bool write;
};

/* Number of "virtio_mmio.device=" tokens on the command line. */
unsigned virtio_count(void);
/*
 * Locate the n-th (0-based) "virtio_mmio.device=<size>@<addr>:<irq>" token. Returns false
 * when there are fewer tokens; reports "<name>_init FAIL" for a malformed one.
 */
bool virtio_find(unsigned n, struct vdev *dev, const char *name);
/*
 * Locate the first "virtio_mmio.device=" token whose registers show the virtio magic and
 * DeviceID `device_id`. Returns false (silently) when there is none.
 */
bool virtio_find_id(u32 device_id, struct vdev *dev, const char *name);
/*
 * Reset, check magic/version/device id, negotiate VERSION_1 plus (wanted & offered),
 * FEATURES_OK. Reports "<name>_init FAIL ..." and returns false on any problem.
 */
bool virtio_init(struct vdev *dev, u32 device_id, u64 wanted);
/* Set up queue `index` (size: VQ_MAX_SIZE or the largest power of two <= QueueNumMax). */
bool virtio_setup_queue(struct vdev *dev, u16 index, struct virtq *q);
/* The same with a size of at most `max` (clamped to VQ_RING_MAX). */
bool virtio_setup_queue_n(struct vdev *dev, u16 index, struct virtq *q, u16 max);
/* Set DRIVER_OK: reports "<name>_init ok" or FAIL (device needs reset / failed). */
bool virtio_driver_ok(struct vdev *dev);
/* Mark the device FAILED (§3.1.1 on an unrecoverable driver error). */
void virtio_fail_device(struct vdev *dev);

/* Expose one descriptor chain to the device; returns its head id or -1 when full. */
int vq_add(struct virtq *q, const struct vbuf *bufs, unsigned n);
/* QueueNotify. */
void vq_notify(struct virtq *q);
/* Pop one used element if available (non-blocking); frees its chain. */
bool vq_poll(struct virtq *q, u32 *id, u32 *len);
/*
 * Spin until a used element is available, at most kiln.spin=<iterations> (default 500000,
 * about 4 s under the PVM host's instruction emulator).
 */
bool vq_wait(struct virtq *q, u32 *id, u32 *len);
/* After used-ring progress: wait (bounded) for InterruptStatus bit 0, then ack it. */
void virtio_check_irq(struct vdev *dev);
/* Report "<name>_irq" from the irq_seen / irq_missing counters. */
void virtio_report_irq(struct vdev *dev, const char *check);

/* Device config space (offset from 0x100). */
u8 virtio_cfg8(struct vdev *dev, u32 off);
u32 virtio_cfg32(struct vdev *dev, u32 off);
/* 64-bit field read as two 32-bit reads inside a ConfigGeneration retry loop (§2.5.1). */
u64 virtio_cfg64(struct vdev *dev, u32 off);

/* Poll bound for used-ring waits: kiln.spin=<n> or the default. */
u64 virtio_spin_limit(void);

#endif
