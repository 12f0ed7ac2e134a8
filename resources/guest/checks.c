/* The base checks: e820 RAM total, MP-table CPU count, initrd size/hash, entry path. */
#include "boot.h"
#include "lib.h"

/* Parse a numeric token value; on junk, report the check as failed and return false. */
static bool get_num(const char *check, const char *key, u64 *out, bool *present)
{
    const char *v;
    size_t n;
    *present = cmdline_get(key, &v, &n);
    if (!*present)
        return false;
    if (!parse_u64(v, n, out)) {
        check_fail(check, "bad value %s=%.*s", key, (int)n, v);
        return false;
    }
    return true;
}

void check_e820(const struct boot_info *bi)
{
    u64 want, sum = 0;
    bool present;
    if (!get_num("e820", "kiln.ram", &want, &present))
        return;
    for (u32 i = 0; i < bi->nr_memmap; i++)
        if (bi->memmap[i].type == E820_RAM)
            sum += bi->memmap[i].size;
    check_eq_u64("e820", want, sum);
}

/* ---- Intel MultiProcessor Specification 1.4, chapter 4 ---- */

static u8 sum_bytes(const u8 *p, u32 n)
{
    u8 s = 0;
    for (u32 i = 0; i < n; i++)
        s += p[i];
    return s;
}

#define MP_SIG 0x5f504d5f   /* "_MP_" */
#define PCMP_SIG 0x504d4350 /* "PCMP" */

static const u8 *find_mpf(u64 start, u64 end)
{
    for (u64 a = start; a + 16 <= end; a += 16) {
        const u8 *p = PHYS(a);
        if (rd32(p) != MP_SIG)
            continue;
        u32 len = p[8] * 16u;
        if (len >= 16 && a + len <= end && sum_bytes(p, len) == 0)
            return p;
    }
    return NULL;
}

void check_cpus(void)
{
    u64 want;
    bool present;
    if (!get_num("cpus", "kiln.cpus", &want, &present))
        return;
    const u8 *mpf = find_mpf(0x9fc00, 0xa0000);
    if (!mpf)
        mpf = find_mpf(0xf0000, 0x100000);
    if (!mpf) {
        check_fail("cpus", "no valid _MP_ floating pointer found");
        return;
    }
    u32 cfg = rd32(mpf + 4);
    if (cfg == 0) {
        check_fail("cpus", "MP default configuration %u, no PCMP table", mpf[11]);
        return;
    }
    const u8 *t = PHYS(cfg);
    if (rd32(t) != PCMP_SIG) {
        check_fail("cpus", "no PCMP signature at 0x%x", cfg);
        return;
    }
    u16 len = rd16(t + 4);
    if (len < 0x2c || sum_bytes(t, len) != 0) {
        check_fail("cpus", "bad PCMP checksum or length %u at 0x%x", len, cfg);
        return;
    }
    u16 count = rd16(t + 0x22);
    u32 off = 0x2c, cpus = 0;
    for (u16 i = 0; i < count; i++) {
        if (off >= len) {
            check_fail("cpus", "PCMP entry %u beyond table length %u", i, len);
            return;
        }
        u8 type = t[off];
        if (type == 0) {
            if (off + 20 > len) {
                check_fail("cpus", "truncated processor entry %u", i);
                return;
            }
            if (t[off + 3] & 1)
                cpus++;
            off += 20;
        } else if (type <= 4) {
            off += 8;
        } else {
            check_fail("cpus", "unknown PCMP entry type %u at entry %u", type, i);
            return;
        }
    }
    kprintf("KILN-GUEST mptable addr=0x%x entries=%u cpus=%u\n", cfg, count, cpus);
    check_eq_u64("cpus", want, cpus);
}

/* 32-bit FNV-1a (http://www.isthe.com/chongo/tech/comp/fnv/). */
static u32 fnv1a(const u8 *p, u64 n)
{
    u32 h = 0x811c9dc5u;
    for (u64 i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x01000193u;
    }
    return h;
}

void check_initrd(const struct boot_info *bi)
{
    u64 want_size = 0, want_fnv = 0;
    bool has_size, has_fnv;
    const char *v;
    size_t n;
    bool size_ok = get_num("initrd", "kiln.initrd_size", &want_size, &has_size);
    if (has_size && !size_ok)
        return;
    has_fnv = cmdline_get("kiln.initrd_fnv", &v, &n);
    if (has_fnv && !parse_hex(v, n, &want_fnv)) {
        check_fail("initrd", "bad value kiln.initrd_fnv=%.*s", (int)n, v);
        return;
    }
    if (!has_size && !has_fnv)
        return;
    kprintf("KILN-GUEST initrd addr=0x%lx size=%lu\n", (unsigned long)bi->initrd_addr,
            (unsigned long)bi->initrd_size);
    if (has_size && bi->initrd_size != want_size) {
        check_fail("initrd", "size expected %lu got %lu", (unsigned long)want_size,
                   (unsigned long)bi->initrd_size);
        return;
    }
    if (has_fnv) {
        if (bi->initrd_size && (bi->initrd_addr == 0 ||
                                bi->initrd_addr + bi->initrd_size > FOUR_GIB ||
                                bi->initrd_addr + bi->initrd_size < bi->initrd_addr)) {
            check_fail("initrd", "initrd at 0x%lx size %lu is not below 4 GiB",
                       (unsigned long)bi->initrd_addr, (unsigned long)bi->initrd_size);
            return;
        }
        u32 h = fnv1a(PHYS(bi->initrd_addr), bi->initrd_size);
        if (h != (u32)want_fnv || want_fnv > 0xffffffffu) {
            check_fail("initrd", "fnv expected %08lx got %08x", (unsigned long)want_fnv, h);
            return;
        }
    }
    check_ok("initrd");
}

void check_entry(const struct boot_info *bi)
{
    const char *v;
    size_t n;
    if (!cmdline_get("kiln.expect_entry", &v, &n))
        return;
    const char *got = bi->pvh ? "pvh" : "linux64";
    if (span_eq(v, n, got))
        check_ok("entry");
    else
        check_fail("entry", "expected %.*s got %s", (int)n, v, got);
}
