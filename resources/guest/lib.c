/* Tiny runtime for the Kiln test guest: memory/string helpers, COM1, kprintf, checks. */
#include <stdarg.h>

#include "lib.h"

#define COM1 0x3f8
#define UART_RBR 0 /* receive buffer (read) / transmit holding (write) */
#define UART_IER 1
#define UART_LSR 5
#define LSR_DR 0x01   /* data ready */
#define LSR_THRE 0x20 /* transmit holding register empty */

unsigned checks_ok, checks_failed;

/* rep-string forms keep gcc from turning these loops into calls to themselves. */
void *memset(void *dst, int c, size_t n)
{
    void *d = dst;
    __asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
    return dst;
}

void *memcpy(void *dst, const void *src, size_t n)
{
    void *d = dst;
    __asm__ volatile("rep movsb" : "+D"(d), "+S"(src), "+c"(n) : : "memory");
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const u8 *x = a, *y = b;
    for (size_t i = 0; i < n; i++)
        if (x[i] != y[i])
            return x[i] < y[i] ? -1 : 1;
    return 0;
}

size_t strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

void serial_init(void)
{
    outb(COM1 + UART_IER, 0); /* no UART interrupts: everything is polled */
}

void serial_putc(char c)
{
    /* Bounded wait so a VMM without LSR emulation cannot hang the guest here. */
    for (unsigned i = 0; i < 100000 && !(inb(COM1 + UART_LSR) & LSR_THRE); i++)
        cpu_pause();
    outb(COM1 + UART_RBR, (u8)c);
}

void serial_write(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        serial_putc(s[i]);
}

u8 serial_getc(void)
{
    while (!(inb(COM1 + UART_LSR) & LSR_DR))
        cpu_pause();
    return inb(COM1 + UART_RBR);
}

static void put_num(u64 v, unsigned base, bool upper, int width, char pad)
{
    char buf[24];
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    int n = 0;
    do {
        buf[n++] = digits[v % base];
        v /= base;
    } while (v);
    while (width > n) {
        serial_putc(pad);
        width--;
    }
    while (n)
        serial_putc(buf[--n]);
}

static void vkprintf(const char *fmt, va_list ap)
{
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            serial_putc(*fmt);
            continue;
        }
        fmt++;
        char pad = ' ';
        int width = 0;
        bool prec_star = false, lng = false;
        if (*fmt == '0') {
            pad = '0';
            fmt++;
        }
        while (*fmt >= '0' && *fmt <= '9')
            width = width * 10 + (*fmt++ - '0');
        if (fmt[0] == '.' && fmt[1] == '*') {
            prec_star = true;
            fmt += 2;
        }
        while (*fmt == 'l') {
            lng = true;
            fmt++;
        }
        switch (*fmt) {
        case 's': {
            if (prec_star) {
                int len = va_arg(ap, int);
                const char *s = va_arg(ap, const char *);
                serial_write(s, (size_t)len);
            } else {
                const char *s = va_arg(ap, const char *);
                serial_write(s, strlen(s));
            }
            break;
        }
        case 'c':
            serial_putc((char)va_arg(ap, int));
            break;
        case 'd': {
            long long v = lng ? va_arg(ap, long) : va_arg(ap, int);
            if (v < 0) {
                serial_putc('-');
                v = -v;
            }
            put_num((u64)v, 10, false, width, pad);
            break;
        }
        case 'u':
            put_num(lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned), 10, false, width, pad);
            break;
        case 'x':
        case 'X':
            put_num(lng ? va_arg(ap, unsigned long) : va_arg(ap, unsigned), 16, *fmt == 'X', width,
                    pad);
            break;
        case 'p':
            serial_write("0x", 2);
            put_num((u64)(uintptr_t)va_arg(ap, void *), 16, false, width, pad);
            break;
        case '%':
            serial_putc('%');
            break;
        case 0:
            return;
        default:
            serial_putc('%');
            serial_putc(*fmt);
        }
    }
}

void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vkprintf(fmt, ap);
    va_end(ap);
}

void check_ok(const char *name)
{
    checks_ok++;
    kprintf("KILN-CHECK %s ok\n", name);
}

void check_fail(const char *name, const char *fmt, ...)
{
    va_list ap;
    checks_failed++;
    kprintf("KILN-CHECK %s FAIL ", name);
    va_start(ap, fmt);
    vkprintf(fmt, ap);
    va_end(ap);
    serial_putc('\n');
}

const char *check_name(const char *prefix, const char *suffix)
{
    static char bufs[4][48];
    static unsigned next;
    char *b = bufs[next++ % 4];
    size_t n = 0;
    for (const char *p = prefix; *p && n < 46; p++)
        b[n++] = *p;
    b[n++] = '_';
    for (const char *p = suffix; *p && n < 47; p++)
        b[n++] = *p;
    b[n] = 0;
    return b;
}

void check_eq_u64(const char *name, u64 expected, u64 got)
{
    if (expected == got)
        check_ok(name);
    else
        check_fail(name, "expected %lu got %lu", (unsigned long)expected, (unsigned long)got);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool parse_hex(const char *s, size_t n, u64 *out)
{
    if (n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
        s += 2;
        n -= 2;
    }
    if (n == 0 || n > 16)
        return false;
    u64 v = 0;
    for (size_t i = 0; i < n; i++) {
        int d = hexval(s[i]);
        if (d < 0)
            return false;
        v = (v << 4) | (u64)d;
    }
    *out = v;
    return true;
}

bool parse_u64(const char *s, size_t n, u64 *out)
{
    if (n >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        return parse_hex(s, n, out);
    if (n == 0)
        return false;
    u64 v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        u64 d = (u64)(s[i] - '0');
        if (v > (~0ULL - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}
