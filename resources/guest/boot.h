/* What the guest learned from its boot entry (Linux 64-bit zero page or PVH start info). */
#ifndef KILN_GUEST_BOOT_H
#define KILN_GUEST_BOOT_H

#include "types.h"

#define MAX_MEMMAP 128
#define E820_RAM 1

struct mem_range {
    u64 addr;
    u64 size;
    u32 type;
};

struct boot_info {
    bool pvh;                 /* true: came through the PVH 32-bit entry */
    bool valid;               /* false when the start-info magic was wrong */
    const char *cmdline;      /* not NUL-terminated: use cmdline_len */
    size_t cmdline_len;
    u64 initrd_addr;
    u64 initrd_size;
    u32 nr_memmap;
    struct mem_range memmap[MAX_MEMMAP];
};

/* Fill *bi from the zero page (pvh == false) or hvm_start_info (pvh == true). */
void boot_info_read(struct boot_info *bi, u64 info_paddr, bool pvh);

/* Command-line tokens (whitespace separated). */
void cmdline_set(const char *s, size_t n);
/* Value of the LAST token "key=value"; false when absent. */
bool cmdline_get(const char *key, const char **val, size_t *len);
/* Iterate tokens: *pos starts at 0; returns false at the end. */
bool cmdline_next(size_t *pos, const char **tok, size_t *len);
/* true when the span equals the NUL-terminated string s. */
bool span_eq(const char *p, size_t n, const char *s);

/* Base checks (each runs only when its key is on the command line). */
void check_e820(const struct boot_info *bi);
void check_cpus(void);
void check_initrd(const struct boot_info *bi);
void check_entry(const struct boot_info *bi);

#endif
