/*
 * Modes for the tests of Kiln's Firecracker-compatible API (see README.md):
 *   count      counts forever, one line every kiln.every pause loops (pause / resume);
 *   kbd        prints the bytes the i8042 delivers (SendCtrlAltDel);
 *   blkresize  waits for the configuration-change interrupt of the first disk (a drive
 *              replaced after boot) and reports the new capacity and sector 0;
 *   netrate    sends frames one at a time on the first NIC (TX rate limiter).
 * The block-device rate limiter is timed with kiln.mode=blkbench (bench.c).
 * Waits poll about once a millisecond under the PVM host's instruction emulator and give
 * up after kiln.wait polls.
 */
#include "blk.h"
#include "boot.h"
#include "lib.h"
#include "modes.h"
#include "net.h"
#include "virtio.h"

/* i8042 (PC keyboard controller). */
#define I8042_DATA 0x60
#define I8042_STATUS 0x64
#define I8042_OUTPUT_FULL 0x01

/* virtio-mmio registers (virtio 1.2 §4.2.2) that virtio.c keeps to itself. */
#define MMIO_INTERRUPT_STATUS 0x060
#define MMIO_INTERRUPT_ACK 0x064
#define MMIO_CONFIG_GENERATION 0x0fc
#define INT_CONFIG 2 /* InterruptStatus: configuration change */

/* ~2.2 µs per pause loop under the emulator: ~15 lines/s with the default kiln.every. */
#define DEFAULT_EVERY 30000
/* Pause loops between two polls: ~1 ms with the register read (~1.6 µs per loop). */
#define POLL_DELAY 600
/* kiln.wait default: ~60 s of polls, well inside the tests' VM timeout. */
#define DEFAULT_WAIT 60000
/* After the config generation moved: polls granted to the interrupt bit (~0.5 s). */
#define CONFIG_IRQ_POLLS 500

#define DEFAULT_KBD_BYTES 8
#define DEFAULT_COUNT 64
#define DEFAULT_FRAME_SIZE 1000
#define MIN_FRAME_SIZE 60

static void delay(u64 loops)
{
    for (u64 i = 0; i < loops; i++)
        cpu_pause();
}

static bool wait_arg(const char *check, u64 *polls)
{
    return bench_arg(check, "kiln.wait", DEFAULT_WAIT, 1, 1ULL << 32, polls);
}

void count_run(void)
{
    u64 every;
    if (!bench_arg("count", "kiln.every", DEFAULT_EVERY, 1, 1ULL << 40, &every))
        return;
    for (u64 n = 1;; n++) {
        delay(every);
        kprintf("KILN-GUEST count %lu\n", (unsigned long)n);
    }
}

void kbd_run(void)
{
    u64 want, wait, got = 0, idle = 0;
    if (!bench_arg("kbd", "kiln.kbd_bytes", DEFAULT_KBD_BYTES, 1, 4096, &want) ||
        !wait_arg("kbd", &wait))
        return;
    kprintf("KILN-GUEST kbd ready\n");
    while (got < want) {
        if (inb(I8042_STATUS) & I8042_OUTPUT_FULL) {
            kprintf("KILN-GUEST kbd %02x\n", inb(I8042_DATA));
            got++;
            continue;
        }
        if (++idle > wait) {
            kprintf("KILN-GUEST kbd timeout got=%lu\n", (unsigned long)got);
            return;
        }
        delay(POLL_DELAY);
    }
    kprintf("KILN-GUEST kbd done\n");
}

/* "KILN-GUEST blkresize[ changed] capacity <sectors> first <16 hex digits>". */
static bool report_disk(struct blk *b, const char *what)
{
    u64 cap = virtio_cfg64(&b->dev, 0);
    memset(blk_data, 0, SECTOR);
    int st = blk_request(b, VIRTIO_BLK_T_IN, 0, SECTOR, true);
    if (st != VIRTIO_BLK_S_OK) {
        check_fail("blkresize", "read of sector 0: status expected 0 got %d (capacity %lu)", st,
                   (unsigned long)cap);
        return false;
    }
    kprintf("KILN-GUEST blkresize%s capacity %lu first ", what, (unsigned long)cap);
    for (int i = 0; i < 8; i++)
        kprintf("%02x", blk_data[i]);
    kprintf("\n");
    return true;
}

void blkresize_run(void)
{
    static struct blk disk;
    u64 wait, polls;
    if (!wait_arg("blkresize", &wait))
        return;
    if (virtio_count() == 0) {
        check_fail("blkresize", "no virtio_mmio.device= token on the command line");
        return;
    }
    if (!blk_open(&disk, 0, "blk") || !report_disk(&disk, ""))
        return;
    u64 isr_reg = disk.dev.base + MMIO_INTERRUPT_STATUS;
    u64 gen_reg = disk.dev.base + MMIO_CONFIG_GENERATION;
    u32 gen = mmio_read32(gen_reg), now = gen, isr = 0;
    for (polls = 0; polls < wait; polls++) {
        isr = mmio_read32(isr_reg);
        now = mmio_read32(gen_reg);
        if ((isr & INT_CONFIG) || now != gen)
            break;
        if (isr) /* a late used-buffer bit: not what we wait for */
            mmio_write32(disk.dev.base + MMIO_INTERRUPT_ACK, isr);
        delay(POLL_DELAY);
    }
    if (polls == wait) {
        kprintf("KILN-GUEST blkresize timeout\n");
        return;
    }
    /* A device may bump the generation just before it raises the interrupt. */
    for (unsigned i = 0; i < CONFIG_IRQ_POLLS && !(isr & INT_CONFIG); i++) {
        delay(POLL_DELAY);
        isr |= mmio_read32(isr_reg);
    }
    mmio_write32(disk.dev.base + MMIO_INTERRUPT_ACK, isr);
    now = mmio_read32(gen_reg);
    kprintf("KILN-GUEST blkresize config interrupt_status=0x%x generation %u->%u\n", isr, gen,
            now);
    if (isr & INT_CONFIG)
        check_ok("blkresize_config_irq");
    else
        check_fail("blkresize_config_irq", "InterruptStatus bit 1 expected set got 0x%x", isr);
    report_disk(&disk, " changed");
}

void netrate_run(void)
{
    static struct net nt;
    static u8 frame[NET_HDR_LEN + ETH_MAX_FRAME] __attribute__((aligned(64)));
    u64 count, size, sent;
    if (!bench_arg("netrate", "kiln.count", DEFAULT_COUNT, 1, 1ULL << 32, &count) ||
        !bench_arg("netrate", "kiln.size", DEFAULT_FRAME_SIZE, MIN_FRAME_SIZE, ETH_MAX_FRAME,
                   &size))
        return;
    if (virtio_count() == 0) {
        check_fail("netrate", "no virtio_mmio.device= token on the command line");
        return;
    }
    if (!net_open(&nt))
        return;
    net_mac(&nt);
    /* virtio_net_hdr_v1 all zero; dst broadcast, src our MAC, ethertype 0x88b5; then the
     * sequence number (big-endian u32 at frame offset 14) and byte i = i. */
    u8 *f = frame + NET_HDR_LEN;
    memset(frame, 0, NET_HDR_LEN);
    memset(f, 0xff, 6);
    memcpy(f + 6, nt.mac, 6);
    f[12] = ETHERTYPE_KILN >> 8;
    f[13] = ETHERTYPE_KILN & 0xff;
    for (u32 i = ETH_HLEN + 4; i < size; i++)
        f[i] = (u8)i;
    kprintf("KILN-GUEST netrate start\n");
    for (sent = 0; sent < count; sent++) {
        struct vbuf buf = { frame, NET_HDR_LEN + (u32)size, false };
        u32 id, len;
        for (int i = 0; i < 4; i++)
            f[ETH_HLEN + i] = (u8)(sent >> (24 - 8 * i));
        if (vq_add(&nt.txq, &buf, 1) < 0)
            break;
        vq_notify(&nt.txq);
        if (!vq_wait(&nt.txq, &id, &len))
            break;
        virtio_check_irq(&nt.dev);
    }
    kprintf("KILN-GUEST netrate done n=%lu\n", (unsigned long)sent);
    if (sent < count)
        check_fail("netrate", "TX completion timed out after %lu of %lu frames",
                   (unsigned long)sent, (unsigned long)count);
}
