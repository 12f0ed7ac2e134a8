/*
 * kiln.mode=rng: virtio-rng (virtio 1.2 §5.4) check on the virtio-mmio device with DeviceID
 * 4. One requestq; the driver posts RNG_REQS device-writable buffers of RNG_LEN bytes at
 * once, the device fills them with random bytes and returns the length written. See
 * README.md for the output lines.
 */
#include "boot.h"
#include "lib.h"
#include "modes.h"
#include "virtio.h"

#define RNG_REQS 4
#define RNG_LEN 64
#define REQUESTQ 0

static u8 rng_bufs[RNG_REQS][RNG_LEN] __attribute__((aligned(64)));

/* KILN-CHECK rng: every length in 1..RNG_LEN, no buffer all zero, no two buffers equal
 * (over the bytes both were given). */
static void rng_judge(const u32 *lens)
{
    for (int i = 0; i < RNG_REQS; i++) {
        if (lens[i] == 0 || lens[i] > RNG_LEN) {
            check_fail("rng", "request %d length expected 1..%d got %u", i, RNG_LEN, lens[i]);
            return;
        }
        bool zero = true;
        for (u32 k = 0; k < lens[i] && zero; k++)
            zero = rng_bufs[i][k] == 0;
        if (zero) {
            check_fail("rng", "request %d all zero", i);
            return;
        }
    }
    for (int i = 0; i < RNG_REQS; i++)
        for (int j = i + 1; j < RNG_REQS; j++) {
            u32 n = lens[i] < lens[j] ? lens[i] : lens[j];
            if (memcmp(rng_bufs[i], rng_bufs[j], n) == 0) {
                check_fail("rng", "requests %d and %d returned the same bytes", i, j);
                return;
            }
        }
    check_ok("rng");
}

void rng_run(void)
{
    static struct vdev dev;
    static struct virtq q;
    u32 lens[RNG_REQS];
    int buf_of_head[VQ_MAX_SIZE];
    bool done[RNG_REQS] = { false };
    if (!virtio_find_id(VIRTIO_ID_RNG, &dev, "rng")) {
        check_fail("rng", "no device");
        return;
    }
    if (!virtio_init(&dev, VIRTIO_ID_RNG, 0))
        return;
    if (!virtio_setup_queue(&dev, REQUESTQ, &q)) {
        virtio_fail_device(&dev);
        return;
    }
    if (!virtio_driver_ok(&dev))
        return;
    memset(rng_bufs, 0, sizeof(rng_bufs));
    for (int i = 0; i < VQ_MAX_SIZE; i++)
        buf_of_head[i] = -1;
    for (int i = 0; i < RNG_REQS; i++) {
        struct vbuf b = { rng_bufs[i], RNG_LEN, true };
        int head = vq_add(&q, &b, 1);
        if (head < 0 || head >= VQ_MAX_SIZE) {
            check_fail("rng", "queue of %u entries has no room for request %d", q.num, i);
            return;
        }
        buf_of_head[head] = i;
        lens[i] = 0;
    }
    vq_notify(&q);
    for (int got = 0; got < RNG_REQS; got++) {
        u32 id, len;
        if (!vq_wait(&q, &id, &len)) {
            check_fail("rng", "timeout: %d of %d requests completed", got, RNG_REQS);
            return;
        }
        virtio_check_irq(&dev);
        int i = id < VQ_MAX_SIZE ? buf_of_head[id] : -1;
        if (i < 0 || done[i]) {
            check_fail("rng", "used id %u is no pending request", id);
            return;
        }
        done[i] = true;
        lens[i] = len;
    }
    for (int i = 0; i < RNG_REQS; i++) {
        kprintf("KILN-GUEST rng %d len=%u first=", i, lens[i]);
        for (int k = 0; k < 8; k++)
            kprintf("%02x", rng_bufs[i][k]);
        kprintf("\n");
    }
    rng_judge(lens);
}
