/* Tiny runtime: string helpers, serial console, formatted output, check reporting. */
#ifndef KILN_GUEST_LIB_H
#define KILN_GUEST_LIB_H

#include "types.h"

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);

/* COM1, polled. */
void serial_init(void);
void serial_putc(char c);
void serial_write(const char *s, size_t n);
/* Blocks until a byte is received. */
u8 serial_getc(void);

/*
 * printf subset: %s %c %d %u %x %X %p, with 'l' modifier and a zero-padded width
 * ("%08x"). "%.*s" prints exactly n bytes of a (not necessarily terminated) string.
 */
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Each prints one line "KILN-CHECK <name> ok" / "KILN-CHECK <name> FAIL <detail>". */
void check_ok(const char *name);
void check_fail(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Pass iff cond; on failure the detail is "expected <exp> got <got>" (decimal). */
void check_eq_u64(const char *name, u64 expected, u64 got);
/* "<prefix>_<suffix>" in one of a few rotating static buffers (names up to 47 chars). */
const char *check_name(const char *prefix, const char *suffix);
extern unsigned checks_ok, checks_failed;

/* Parse an unsigned decimal number (or 0x-prefixed hex); false on junk/overflow. */
bool parse_u64(const char *s, size_t n, u64 *out);
/* Parse hex digits (optional 0x prefix). */
bool parse_hex(const char *s, size_t n, u64 *out);

#endif
