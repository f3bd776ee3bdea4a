/*
 * A growable byte buffer for text the gateway builds (log lines, metrics
 * pages, JSON, responses). The buffer owns `p`; kfg_buf_free releases it.
 * Appends never fail silently: on allocation failure the buffer is marked
 * `oom` and further appends are ignored, so callers check once at the end.
 */
#ifndef KFG_BUF_H
#define KFG_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct kfg_buf {
    char *p;        /* NUL-terminated when len > 0 or after kfg_buf_cstr */
    size_t len;
    size_t cap;
    int oom;
};

void kfg_buf_free(struct kfg_buf *b);
void kfg_buf_reset(struct kfg_buf *b);                 /* len = 0, keeps memory */
int kfg_buf_reserve(struct kfg_buf *b, size_t extra);  /* 0 or -1 (oom) */
void kfg_buf_append(struct kfg_buf *b, const void *data, size_t len);
void kfg_buf_puts(struct kfg_buf *b, const char *s);
void kfg_buf_putc(struct kfg_buf *b, char c);
void kfg_buf_printf(struct kfg_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void kfg_buf_vprintf(struct kfg_buf *b, const char *fmt, va_list ap);
/* JSON string literal with quotes; invalid UTF-8 bytes become U+FFFD. */
void kfg_buf_json_str(struct kfg_buf *b, const char *s, size_t len);
const char *kfg_buf_cstr(struct kfg_buf *b);           /* "" when empty */
/* Length of the valid UTF-8 sequence at s (1..4, s holds n > 0 bytes), or
 * 0 when it is not one: shared by every escaper. */
size_t kfg_utf8_seq(const unsigned char *s, size_t n);

#endif
