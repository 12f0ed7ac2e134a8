/*
 * Kiln test guest: prints what it was booted with, runs the checks requested on the
 * command line (kiln.* tokens) and reports each as a KILN-CHECK line on COM1, then signals
 * the boot timer and resets through the i8042. See README.md for the protocol.
 */
#include "boot.h"
#include "lib.h"
#include "modes.h"

#define BOOT_TIMER_ADDR 0xc0000000ULL
#define BOOT_TIMER_MAGIC 123
#define I8042_COMMAND 0x64
#define I8042_RESET 0xfe

static struct boot_info bi;

static __attribute__((noreturn)) void finish(void)
{
    const char *v;
    size_t n;
    kprintf("KILN-GUEST done ok=%u fail=%u\n", checks_ok, checks_failed);
    /* kiln.end=spin: stay alive after the checks (for tests that kill the VMM). */
    if (cmdline_get("kiln.end", &v, &n) && span_eq(v, n, "spin")) {
        kprintf("KILN-GUEST spinning\n");
        for (;;)
            cpu_pause();
    }
    mmio_write8(BOOT_TIMER_ADDR, BOOT_TIMER_MAGIC);
    outb(I8042_COMMAND, I8042_RESET);
    for (;;)
        cpu_pause();
}

static void print_memmap(void)
{
    for (u32 i = 0; i < bi.nr_memmap; i++)
        kprintf("KILN-GUEST e820 addr=0x%lx size=0x%lx type=%u\n",
                (unsigned long)bi.memmap[i].addr, (unsigned long)bi.memmap[i].size,
                bi.memmap[i].type);
}

/* kiln.mode=fault: an instruction the hypervisor's emulator cannot handle. */
static void do_fault(void)
{
    static u8 xsave_area[1024] __attribute__((aligned(64)));
    const char *v;
    size_t n;
    bool ud2 = cmdline_get("kiln.fault", &v, &n) && span_eq(v, n, "ud2");
    bool triple = cmdline_get("kiln.fault", &v, &n) && span_eq(v, n, "triple");
    kprintf("KILN-GUEST about to fault\n");
    if (triple) {
        /* An empty IDT: the #UD cannot be delivered (#GP), nor can that (#DF),
         * nor that: the CPU shuts down (a triple fault). */
        static const struct __attribute__((packed)) {
            u16 limit;
            u64 base;
        } no_idt = {0, 0};
        __asm__ volatile("lidt %0\n\tud2" : : "m"(no_idt) : "memory");
    }
    if (!ud2)
        __asm__ volatile("xsave (%0)" : : "r"(xsave_area), "a"(3), "d"(0) : "memory");
    __asm__ volatile("ud2" ::: "memory");
    check_fail("fault", "still running after the faulting instruction");
}

/* kiln.mode=echo: echo each received line as "KILN-ECHO <line>" until the line "quit". */
static void do_echo(void)
{
    char line[256];
    size_t n = 0;
    kprintf("KILN-GUEST echo ready\n");
    for (;;) {
        char c = (char)serial_getc();
        /* A terminal's Enter sends '\r', a pipe '\n': either ends a line; the empty
         * line between the two bytes of "\r\n" is skipped. */
        if ((c == '\r' || c == '\n') && n == 0)
            continue;
        if (c != '\r' && c != '\n') {
            if (n < sizeof(line))
                line[n++] = c;
            continue;
        }
        kprintf("KILN-ECHO %.*s\n", (int)n, line);
        if (span_eq(line, n, "quit"))
            return;
        n = 0;
    }
}

void kiln_main(u64 info_paddr, u64 via_pvh)
{
    serial_init();
    boot_info_read(&bi, info_paddr, via_pvh != 0);
    cmdline_set(bi.cmdline, bi.cmdline_len);
    kprintf("KILN-GUEST boot entry=%s\n", bi.pvh ? "pvh" : "linux64");
    kprintf("KILN-GUEST cmdline=%.*s\n", (int)bi.cmdline_len, bi.cmdline);
    print_memmap();

    check_e820(&bi);
    check_cpus();
    check_initrd(&bi);
    check_entry(&bi);

    const char *mode = "boot";
    size_t mlen = 4;
    cmdline_get("kiln.mode", &mode, &mlen);
    if (span_eq(mode, mlen, "boot")) {
        /* nothing more */
    } else if (span_eq(mode, mlen, "blk")) {
        blk_run();
    } else if (span_eq(mode, mlen, "net")) {
        net_run();
    } else if (span_eq(mode, mlen, "blkbench")) {
        blkbench_run(&bi);
    } else if (span_eq(mode, mlen, "netbench")) {
        netbench_run(&bi);
    } else if (span_eq(mode, mlen, "hostile")) {
        hostile_run(&bi);
    } else if (span_eq(mode, mlen, "fault")) {
        do_fault();
    } else if (span_eq(mode, mlen, "spin")) {
        kprintf("KILN-GUEST spinning\n");
        for (;;)
            cpu_pause();
    } else if (span_eq(mode, mlen, "echo")) {
        do_echo();
    } else if (span_eq(mode, mlen, "count")) {
        count_run();
    } else if (span_eq(mode, mlen, "kbd")) {
        kbd_run();
    } else if (span_eq(mode, mlen, "blkresize")) {
        blkresize_run();
    } else if (span_eq(mode, mlen, "netrate")) {
        netrate_run();
    } else if (span_eq(mode, mlen, "snap")) {
        snap_run();
    } else if (span_eq(mode, mlen, "vsock")) {
        vsock_run(&bi);
    } else if (span_eq(mode, mlen, "rng")) {
        rng_run();
    } else {
        check_fail("mode", "unknown mode %.*s", (int)mlen, mode);
    }
    finish();
}
