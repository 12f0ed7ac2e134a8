/*
 * kiln.hostile=smp: two vCPUs on one virtio-blk device at once. The BSP starts vCPU 1
 * through the local APIC (INIT, SIPI, SIPI; start-up code in hostile_smp.S); vCPU 1 then
 * storms QueueNotify (the real queue and a missing one) and reads Status, InterruptStatus
 * and the capacity, while the BSP keeps doing normal reads of sectors 0..3 and checks the
 * data. Needs `--cpus 2` (APIC ID 1).
 */
#include "boot.h"
#include "hostile.h"
#include "lib.h"
#include "virtio.h"

#define TRAMP 0x10000ULL
#define LAPIC 0xfee00000ULL
#define ICR_LO 0x300
#define ICR_HI 0x310
#define ICR_PENDING (1u << 12)
#define ICR_INIT 0x4500    /* INIT, level assert */
#define ICR_STARTUP 0x4600 /* start-up IPI; low byte = vector */
#define AP_ID 1
#define AP_ROUNDS 20000
#define SPIN_START 2000000

extern const u8 hostile_tramp_start[], hostile_tramp_end[];
extern const u64 hostile_tramp_cr3, hostile_tramp_stack, hostile_tramp_entry;

static u8 ap_stack[8192] __attribute__((aligned(16)));
static struct hdev *ap_dev;
static volatile u32 ap_state; /* 1 started, 2 done */
static volatile u32 ap_bad_capacity;

static void ap_main(void)
{
    struct hdev *d = ap_dev;
    ap_state = 1;
    for (u32 i = 0; i < AP_ROUNDS; i++) {
        h_wr(d, R_QUEUE_NOTIFY, 0);
        h_wr(d, R_QUEUE_NOTIFY, 5);
        (void)h_rd(d, R_STATUS);
        (void)h_rd(d, R_INT_STATUS);
        u64 cap = h_rd(d, R_CONFIG) | ((u64)h_rd(d, R_CONFIG + 4) << 32);
        if (cap != d->capacity)
            ap_bad_capacity++;
    }
    ap_state = 2;
}

static void set_slot(const u64 *slot, u64 v)
{
    pw64(TRAMP + (u64)((const u8 *)slot - hostile_tramp_start), v);
}

static bool send_ipi(u32 lo)
{
    mmio_write32(LAPIC + ICR_HI, (u32)AP_ID << 24);
    mmio_write32(LAPIC + ICR_LO, lo);
    for (u32 i = 0; i < 100000; i++)
        if (!(mmio_read32(LAPIC + ICR_LO) & ICR_PENDING))
            return true;
    return false;
}

static struct verdict start_ap(struct hdev *d)
{
    u64 cr3;
    __asm__ volatile("mov %%cr3, %0" : "=r"(cr3));
    if (cr3 >= FOUR_GIB)
        return FAILV("page tables above 4 GiB, cr3", cr3);
    memcpy(PHYS(TRAMP), hostile_tramp_start, (size_t)(hostile_tramp_end - hostile_tramp_start));
    set_slot(&hostile_tramp_cr3, cr3);
    set_slot(&hostile_tramp_stack, (u64)(uintptr_t)(ap_stack + sizeof(ap_stack)));
    set_slot(&hostile_tramp_entry, (u64)(uintptr_t)ap_main);
    ap_dev = d;
    barrier();
    if (!send_ipi(ICR_INIT) || !send_ipi(ICR_STARTUP | (u32)(TRAMP >> 12)))
        return FAILV("IPI stuck pending, ICR", mmio_read32(LAPIC + ICR_LO));
    for (u32 i = 0; i < SPIN_START && ap_state == 0; i++) {
        if (i == SPIN_START / 2)
            send_ipi(ICR_STARTUP | (u32)(TRAMP >> 12)); /* the second SIPI of the protocol */
        cpu_pause();
    }
    if (ap_state == 0)
        return FAILV("vCPU 1 did not start, ap_state", ap_state);
    return PASS;
}

static struct verdict c_smp(struct hdev *d)
{
    struct verdict v = start_ap(d);
    if (v.why)
        return v;
    unsigned reads = 0, overlapped = 0;
    u64 limit = virtio_spin_limit() * 4;
    for (u64 i = 0; (ap_state != 2 || reads < 10) && i < limit; i++) {
        if (ap_state == 1)
            overlapped++;
        memset(PHYS(H_DATA), 0, 4 * SECTOR);
        int st = h_request(d, T_IN, 0, H_DATA, 4 * SECTOR);
        if (st != BLK_S_OK)
            return h_status_verdict("read while vCPU 1 hammers the device", st);
        v = h_verify(0, 4, h_host_byte);
        if (v.why)
            return v;
        reads++;
    }
    kprintf("KILN-GUEST hostile %s: %u reads, %u while vCPU 1 ran (state %u)\n", h_case(),
            reads, overlapped, ap_state);
    if (ap_state != 2)
        return FAILV("vCPU 1 did not finish its rounds, state", ap_state);
    if (overlapped == 0)
        return FAILV("vCPU 1 finished before any read overlapped it, reads", reads);
    if (ap_bad_capacity)
        return FAILV("vCPU 1 read a wrong capacity, times", ap_bad_capacity);
    return PASS;
}

const struct hcase hostile_smp_case = { "smp", c_smp };
