/* The polled virtio-blk driver of blk.c, shared with the API modes (api_modes.c). */
#ifndef KILN_GUEST_BLK_H
#define KILN_GUEST_BLK_H

#include "virtio.h"

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_S_OK 0
#define SECTOR 512
#define BLK_DATA_BYTES (4 * SECTOR)

struct blk {
    struct vdev dev;
    struct virtq q;
    bool dead; /* a request timed out: skip the remaining ones */
};

/* The data buffer of every blk_request (BLK_DATA_BYTES). */
extern u8 blk_data[BLK_DATA_BYTES];

/* Initialise the index-th virtio_mmio.device as a disk (check prefix `name`): one queue. */
bool blk_open(struct blk *b, unsigned index, const char *name);
/*
 * One request of `len` bytes (at most BLK_DATA_BYTES) to or from blk_data, waited for with
 * the kiln.spin bound and the interrupt-status check; returns the status byte, or a
 * negative value (timed out / queue full).
 */
int blk_request(struct blk *b, u32 type, u64 sector, u32 len, bool device_writes);

#endif
