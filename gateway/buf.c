#include "buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void kfg_buf_free(struct kfg_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

void kfg_buf_reset(struct kfg_buf *b)
{
    b->len = 0;
    b->oom = 0;
    if (b->p)
        b->p[0] = '\0';
}

int kfg_buf_reserve(struct kfg_buf *b, size_t extra)
{
    if (b->oom)
        return -1;
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra + 1) {
        if (cap > ((size_t)-1) / 2) {
            b->oom = 1;
            return -1;
        }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void kfg_buf_append(struct kfg_buf *b, const void *data, size_t len)
{
    if (kfg_buf_reserve(b, len) < 0)
        return;
    if (len)
        memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
}

void kfg_buf_puts(struct kfg_buf *b, const char *s)
{
    kfg_buf_append(b, s, strlen(s));
}

void kfg_buf_putc(struct kfg_buf *b, char c)
{
    kfg_buf_append(b, &c, 1);
}

void kfg_buf_vprintf(struct kfg_buf *b, const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    char tmp[256];
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        kfg_buf_append(b, tmp, (size_t)n);
        return;
    }
    if (kfg_buf_reserve(b, (size_t)n) < 0)
        return;
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
}

void kfg_buf_printf(struct kfg_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    kfg_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

size_t kfg_utf8_seq(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    unsigned cp = c & (0x3f >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

void kfg_buf_json_str(struct kfg_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    kfg_buf_putc(b, '"');
    size_t run = 0;     /* start of the pending run of plain bytes */
    size_t i = 0;
    while (i < len) {
        unsigned c = u[i];
        const char *esc = NULL;
        char ubuf[7];
        size_t step = 1;
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20 || c == 0x7f) {
            ubuf[0] = '\\'; ubuf[1] = 'u'; ubuf[2] = '0'; ubuf[3] = '0';
            ubuf[4] = hex[c >> 4]; ubuf[5] = hex[c & 15]; ubuf[6] = '\0';
            esc = ubuf;
        } else if (c >= 0x80) {
            step = kfg_utf8_seq(u + i, len - i);
            if (step == 0) {
                esc = "\xef\xbf\xbd";
                step = 1;
            }
        }
        if (esc) {
            kfg_buf_append(b, s + run, i - run);
            kfg_buf_puts(b, esc);
            run = i + step;
        }
        i += step;
    }
    kfg_buf_append(b, s + run, len - run);
    kfg_buf_putc(b, '"');
}

const char *kfg_buf_cstr(struct kfg_buf *b)
{
    return b->p ? b->p : "";
}
