#include "log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

/* Longest line we emit, newline included; anything longer is cut and marked
 * so one runaway message cannot flood the log or the heap. */
#define LOG_LINE_MAX 16384
/* Most lines fit here, so the common case never touches malloc. */
#define LOG_STACK 2048
/* Kept free at all times for what must close a cut line: a quote, the
 * truncation mark, '}' and '\n'. */
#define LOG_TAIL 24

/* Settings are read by every worker on every call and rewritten on reload;
 * relaxed atomics are enough because each one is meaningful on its own. */
static atomic_int g_level = KFG_LOG_INFO;
static atomic_int g_format = KFG_LOG_LOGFMT;
static atomic_int g_fd = 2;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

void kfg_log_setup(enum kfg_log_format format, int level, int fd)
{
    atomic_store_explicit(&g_format, format == KFG_LOG_JSON ? KFG_LOG_JSON : KFG_LOG_LOGFMT,
                          memory_order_relaxed);
    atomic_store_explicit(&g_level, level, memory_order_relaxed);
    atomic_store_explicit(&g_fd, fd < 0 ? 2 : fd, memory_order_relaxed);
}

int kfg_log_level(void)
{
    return atomic_load_explicit(&g_level, memory_order_relaxed);
}

int kfg_log_level_parse(const char *s)
{
    for (int i = 0; s && i < 4; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

int kfg_log_format_parse(const char *s)
{
    if (s && strcasecmp(s, "logfmt") == 0)
        return KFG_LOG_LOGFMT;
    if (s && strcasecmp(s, "json") == 0)
        return KFG_LOG_JSON;
    return -1;
}

/* A line under construction: on the stack, moved to a heap kfg_buf of
 * LOG_LINE_MAX bytes the first time it outgrows the stack. */
struct line {
    char *p;
    size_t len;
    size_t cap;         /* bytes available at p */
    size_t limit;       /* len never passes this; cap - limit >= LOG_TAIL */
    int trunc;
    int json;
    int fields;
    struct kfg_buf heap;
    char stack[LOG_STACK];
};

static void grow(struct line *l)
{
    if (l->p != l->stack)
        return;
    if (kfg_buf_reserve(&l->heap, LOG_LINE_MAX) == 0) {
        memcpy(l->heap.p, l->p, l->len);
        l->p = l->heap.p;
        l->cap = LOG_LINE_MAX;
    } else {
        l->limit = l->cap - LOG_TAIL;   /* out of memory: keep what fits */
    }
}

/* Appends s, or as much of it as fits when `partial` (cut on a UTF-8
 * character boundary, s being valid UTF-8). Returns -1 once the line is
 * truncated; nothing is appended after that except through force(). */
static int put_n(struct line *l, const char *s, size_t n, int partial)
{
    if (l->trunc)
        return -1;
    if (l->len + n > l->cap - LOG_TAIL)
        grow(l);
    size_t room = l->limit - l->len;
    if (n > room) {
        l->trunc = 1;
        if (!partial)
            return -1;
        n = room;
        while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80)
            n--;
    }
    memcpy(l->p + l->len, s, n);
    l->len += n;
    return l->trunc ? -1 : 0;
}

static int put(struct line *l, const char *s, size_t n)
{
    return put_n(l, s, n, 0);
}

/* Only for the closing bytes of a line, which LOG_TAIL reserves room for. */
static void force(struct line *l, const char *s, size_t n)
{
    memcpy(l->p + l->len, s, n);
    l->len += n;
}


/* The escapes of kfg_buf_json_str (so a JSON line matches what buf.c would
 * produce), written straight into the line so the stack buffer and the
 * length cap apply. The same escapes serve logfmt's quoted values: no raw
 * control byte, and above all no newline, ever reaches the log. */
static void put_escaped(struct line *l, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t run = 0;
    size_t i = 0;
    while (i < n) {
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
            memcpy(ubuf, "\\u00", 4);
            ubuf[4] = hex[c >> 4];
            ubuf[5] = hex[c & 15];
            ubuf[6] = '\0';
            esc = ubuf;
        } else if (c >= 0x80) {
            step = kfg_utf8_seq(u + i, n - i);
            if (step == 0) {
                esc = "\xef\xbf\xbd";   /* U+FFFD */
                step = 1;
            }
        }
        if (esc) {
            if (put_n(l, s + run, i - run, 1) < 0 || put(l, esc, strlen(esc)) < 0)
                return;
            run = i + step;
        }
        i += step;
    }
    put_n(l, s + run, n - run, 1);
}

static int logfmt_needs_quote(const char *s, size_t n)
{
    if (n == 0)
        return 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == '=' || c == '"' || c == '\\' || c == 0x7f)
            return 1;
    }
    return 0;
}

static void put_key(struct line *l, const char *key)
{
    if (l->json) {
        put(l, "\"", 1);
        put_escaped(l, key, strlen(key));
        put(l, "\"", 1);
        return;
    }
    /* A logfmt key cannot be quoted, so bytes that would end it become '_'. */
    if (!*key)
        key = "_";
    for (const unsigned char *k = (const unsigned char *)key; *k; k++) {
        char c = (*k > ' ' && *k < 0x7f && *k != '=' && *k != '"') ? (char)*k : '_';
        put(l, &c, 1);
    }
}

static void field(struct line *l, const char *key, const char *val, size_t vlen)
{
    if (l->trunc)
        return;
    size_t start = l->len;
    int quote = l->json || logfmt_needs_quote(val, vlen);
    if (l->fields)
        put(l, l->json ? "," : " ", 1);
    put_key(l, key);
    put(l, l->json ? ":" : "=", 1);
    if (quote)
        put(l, "\"", 1);
    if (l->trunc) {
        l->len = start;     /* the value would not fit at all: drop the field */
        return;
    }
    put_escaped(l, val, vlen);
    if (quote && put(l, "\"", 1) < 0)
        force(l, "\"", 1);
    l->fields++;
}

static void field_str(struct line *l, const char *key, const char *val)
{
    field(l, key, val ? val : "", val ? strlen(val) : 0);
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;     /* nowhere left to report a failing log */
        p += w;
        n -= (size_t)w;
    }
}

void kfg_logv(int level, int max_level, const char *instance,
              const char *req_id, const char *const *kv, const char *fmt,
              va_list ap)
{
    if (max_level < 0)
        max_level = atomic_load_explicit(&g_level, memory_order_relaxed);
    if (level > max_level)
        return;
    int saved_errno = errno;   /* callers log and then still look at errno */

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);
    char ts[64];
    size_t tslen = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + tslen, sizeof(ts) - tslen, ".%03dZ", (int)(now.tv_nsec / 1000000));

    /* Format first: the text must be escaped, so it cannot go straight into
     * the line. More than LOG_LINE_MAX could never be shown anyway. */
    char mstack[1024];
    char *msg = mstack;
    char *mheap = NULL;
    int cut = 0;
    va_list ap2;
    va_copy(ap2, ap);
    errno = saved_errno;    /* for %m */
    int r = vsnprintf(mstack, sizeof(mstack), fmt ? fmt : "", ap);
    size_t mlen = r < 0 ? 0 : (size_t)r;
    if (mlen >= sizeof(mstack)) {
        size_t want = mlen < LOG_LINE_MAX ? mlen : LOG_LINE_MAX;
        mheap = malloc(want + 1);
        if (mheap) {
            errno = saved_errno;
            vsnprintf(mheap, want + 1, fmt, ap2);
            msg = mheap;
        } else {
            want = sizeof(mstack) - 1;
        }
        cut = want < mlen;
        mlen = want;
    }
    va_end(ap2);

    struct line l;
    l.p = l.stack;
    l.len = 0;
    l.cap = sizeof(l.stack);
    l.limit = LOG_LINE_MAX - LOG_TAIL;
    l.trunc = 0;
    l.json = atomic_load_explicit(&g_format, memory_order_relaxed) == KFG_LOG_JSON;
    l.fields = 0;
    memset(&l.heap, 0, sizeof(l.heap));

    if (l.json)
        put(&l, "{", 1);
    field_str(&l, "ts", ts);
    field_str(&l, "level", level_names[level < 0 ? 0 : level > 3 ? 3 : level]);
    if (instance && *instance)
        field_str(&l, "instance", instance);
    if (req_id && *req_id)
        field_str(&l, "req", req_id);
    for (; kv && kv[0]; kv += 2) {
        field_str(&l, kv[0], kv[1]);
        if (!kv[1])
            break;
    }
    field(&l, "msg", msg, mlen);
    if (l.trunc || cut) {
        const char *mark = l.json ? ",\"truncated\":true" : " truncated=true";
        force(&l, mark, strlen(mark));
    }
    if (l.json)
        force(&l, "}", 1);
    force(&l, "\n", 1);

    write_all(atomic_load_explicit(&g_fd, memory_order_relaxed), l.p, l.len);
    kfg_buf_free(&l.heap);
    free(mheap);
    errno = saved_errno;
}

void kfg_log(int level, const char *instance, const char *req_id,
             const char *fmt, ...)
{
    if (level > atomic_load_explicit(&g_level, memory_order_relaxed))
        return;
    va_list ap;
    va_start(ap, fmt);
    kfg_logv(level, -1, instance, req_id, NULL, fmt, ap);
    va_end(ap);
}
