/* Whitespace-separated key=value tokens of the kernel command line. */
#include "boot.h"
#include "lib.h"

static const char *cl;
static size_t cl_len;

void cmdline_set(const char *s, size_t n)
{
    cl = s;
    cl_len = n;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

bool cmdline_next(size_t *pos, const char **tok, size_t *len)
{
    size_t i = *pos;
    while (i < cl_len && is_space(cl[i]))
        i++;
    if (i >= cl_len)
        return false;
    size_t start = i;
    while (i < cl_len && !is_space(cl[i]))
        i++;
    *tok = cl + start;
    *len = i - start;
    *pos = i;
    return true;
}

bool span_eq(const char *p, size_t n, const char *s)
{
    return strlen(s) == n && memcmp(p, s, n) == 0;
}

bool cmdline_get(const char *key, const char **val, size_t *len)
{
    size_t klen = strlen(key), pos = 0, n;
    const char *tok;
    bool found = false;
    while (cmdline_next(&pos, &tok, &n)) {
        if (n > klen && tok[klen] == '=' && memcmp(tok, key, klen) == 0) {
            *val = tok + klen + 1;
            *len = n - klen - 1;
            found = true;
        }
    }
    return found;
}
