/*
 * libFuzzer harness for the HTTP/1.1 request-head parser and the chunked
 * decoder (http_parse.h). The first byte picks the mode and limits, the
 * rest is the input. Besides the sanitizers it checks the properties the
 * connection code relies on:
 *   - the result depends only on the bytes: one call on the whole input,
 *     byte-by-byte feeding with a resumed parser (the buffer moving between
 *     calls), and one split at an arbitrary point all give the same status
 *     and the same request;
 *   - a shorter prefix never yields another result than 0 or the final one;
 *   - every slice lies inside the buffer (or is static), the head length is
 *     within the input and the limits, and the framing fields are coherent;
 *   - the chunked decoder gives the same status, payload and consumed count
 *     whether it gets the body in one piece or one byte per call, and stays
 *     sticky once finished or failed;
 *   - after a head (and its chunked or sized body) the next pipelined
 *     request parses from where the previous one ended.
 * Every parse gets a heap copy of exactly the bytes it may read, so ASan
 * catches any read past len.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http_parse.h"

#define MAX_INPUT 8192
#define MAX_HDRS 128

struct result {
    int r;
    struct kfg_http_request req;
    struct kfg_http_header hdrs[MAX_HDRS];
    const char *base;
};

static void check(int cond)
{
    if (!cond)
        abort();
}

static char *copy(const uint8_t *p, size_t n)
{
    char *b = malloc(n ? n : 1);
    check(b != NULL);
    if (n)
        memcpy(b, p, n);
    return b;
}

static int is_static(struct kfg_http_slice s)
{
    return s.n == 0 || (s.n == 1 && s.p[0] == '/');
}

/* A slice either lies in base[0..len) or is one of the static ones. */
static void check_slice(struct kfg_http_slice s, const char *base, size_t len)
{
    check(s.p != NULL);
    if (s.p >= base && s.p <= base + len) {
        check(s.n <= (size_t)(base + len - s.p));
        return;
    }
    check(is_static(s));
}

/* Slice offset relative to base, or a marker for static storage. */
static long rel(struct kfg_http_slice s, const char *base, size_t len)
{
    if (s.p >= base && s.p <= base + len)
        return (long)(s.p - base);
    return -1 - (long)s.n;
}

static int slice_eq(struct kfg_http_slice a, const char *abase, size_t alen,
                    struct kfg_http_slice b, const char *bbase, size_t blen)
{
    if (a.n != b.n)
        return 0;
    if (a.n == 0)
        return 1;
    if (rel(a, abase, alen) != rel(b, bbase, blen))
        return 0;
    return memcmp(a.p, b.p, a.n) == 0;
}

static void check_request(const struct result *res, size_t len,
                          const struct kfg_http_limits *lim)
{
    const struct kfg_http_request *q = &res->req;

    check(res->r > 0 && (size_t)res->r <= len);
    check((size_t)res->r <= lim->max_head_bytes);
    check(q->nheaders <= lim->max_headers);
    check(q->version_minor == 0 || q->version_minor == 1);
    check(q->method >= KFG_HTTP_GET && q->method <= KFG_HTTP_OTHER);
    check(q->method != KFG_HTTP_CONNECT);
    check(q->method_name.n > 0 && q->target.n > 0);
    check(!(q->chunked && q->content_length >= 0));
    check(q->content_length >= -1);
    check(!q->chunked || q->version_minor == 1);
    check(q->version_minor == 0 || q->has_host);
    check(!q->upgrade || q->upgrade_proto.n > 0);
    check(q->upgrade || q->upgrade_proto.n == 0);
    check_slice(q->method_name, res->base, len);
    check_slice(q->target, res->base, len);
    check_slice(q->path, res->base, len);
    check_slice(q->query, res->base, len);
    check_slice(q->host, res->base, len);
    check_slice(q->upgrade_proto, res->base, len);
    for (unsigned i = 0; i < q->nheaders; i++) {
        const struct kfg_http_header *h = &q->headers[i];
        char name[256];

        check_slice(h->name, res->base, len);
        check_slice(h->value, res->base, len);
        check(h->name.n > 0);
        if (h->value.n)
            check(h->value.p[0] != ' ' && h->value.p[0] != '\t' &&
                  h->value.p[h->value.n - 1] != ' ' &&
                  h->value.p[h->value.n - 1] != '\t');
        for (size_t j = 0; j < h->value.n; j++)
            check(h->value.p[j] != '\r' && h->value.p[j] != '\n' &&
                  h->value.p[j] != '\0');
        if (h->name.n < sizeof name) {
            memcpy(name, h->name.p, h->name.n);
            name[h->name.n] = '\0';
            check(kfg_http_header_get(q, name) != NULL);
        }
        (void)kfg_http_list_has(h->value, "close");
    }
}

static void same_result(const struct result *a, size_t alen,
                        const struct result *b, size_t blen)
{
    const struct kfg_http_request *x = &a->req, *y = &b->req;

    check(a->r == b->r);
    if (a->r <= 0)
        return;
    check(x->nheaders == y->nheaders && x->method == y->method &&
          x->version_minor == y->version_minor &&
          x->content_length == y->content_length && x->chunked == y->chunked &&
          x->keep_alive == y->keep_alive &&
          x->expect_continue == y->expect_continue &&
          x->upgrade == y->upgrade && x->has_host == y->has_host);
#define SL(f) check(slice_eq(x->f, a->base, alen, y->f, b->base, blen))
    SL(method_name);
    SL(target);
    SL(path);
    SL(query);
    SL(host);
    SL(upgrade_proto);
#undef SL
    for (unsigned i = 0; i < x->nheaders; i++) {
        check(slice_eq(x->headers[i].name, a->base, alen,
                       y->headers[i].name, b->base, blen));
        check(slice_eq(x->headers[i].value, a->base, alen,
                       y->headers[i].value, b->base, blen));
    }
}

static void parse(struct result *res, struct kfg_http_parser *ps, const char *buf,
                  size_t len, const struct kfg_http_limits *lim)
{
    const char *why = NULL;

    memset(&res->req, 0x5a, sizeof res->req);
    res->req.headers = res->hdrs;
    res->base = buf;
    res->r = kfg_http_parse_request(ps, buf, len, lim, &res->req, &why);
    if (res->r < 0) {
        int s = -res->r;
        check(why != NULL && why[0] != '\0');
        check(s == 400 || s == 417 || s == 431 || s == 501 || s == 505);
    }
    if (ps && res->r != 0)
        check(ps->off == 0 && ps->line == 0);
}

/* The head at p[0..n): three ways of feeding it must agree. Returns the
 * one-shot result (its buffer in *keep, to be freed by the caller). */
static int head(const uint8_t *p, size_t n, const struct kfg_http_limits *lim,
                size_t split, struct result *one, char **keep)
{
    static struct result inc, two;
    char *whole = copy(p, n);
    struct kfg_http_parser ps = { 0 };

    parse(one, NULL, whole, n, lim);
    if (one->r > 0)
        check_request(one, n, lim);

    /* Byte by byte, the bytes moving to a fresh buffer at every call. */
    inc.r = 0;
    size_t k;
    char *b = NULL;
    for (k = 1; k <= n; k++) {
        free(b);
        b = copy(p, k);
        parse(&inc, &ps, b, k, lim);
        if (inc.r != 0)
            break;
    }
    if (inc.r == 0) {
        check(one->r == 0);
    } else {
        /* The first prefix that decides gives the final answer. */
        same_result(one, n, &inc, k);
        if (inc.r > 0)
            check((size_t)inc.r == k);
    }
    free(b);

    /* Two calls split at `split`, without and with a resumed parser. */
    if (split <= n) {
        struct kfg_http_parser ps2 = { 0 };
        char *b1 = copy(p, split);
        parse(&two, &ps2, b1, split, lim);
        if (two.r != 0) {
            same_result(one, n, &two, split);
        } else {
            char *b2 = copy(p, n);
            parse(&two, &ps2, b2, n, lim);
            same_result(one, n, &two, n);
            free(b2);
        }
        free(b1);
        b1 = copy(p, split);
        parse(&two, NULL, b1, split, lim);
        check(two.r == 0 || two.r == one->r);
        free(b1);
    }
    *keep = whole;
    return one->r;
}

/* Chunked body at p[0..n): one call vs one byte per call. Returns the
 * one-shot result; *used is what it consumed. */
static int chunked(const uint8_t *p, size_t n, size_t max_body, size_t *used)
{
    struct kfg_http_chunked c1, c2;
    char *a = copy(p, n), *outb = malloc(n ? n : 1);
    size_t cons = 0, out = 0, o2 = 0, c2used = 0, x, y;
    const char *why = NULL;
    int r1, r2 = 0;

    check(outb != NULL);
    kfg_http_chunked_init(&c1, max_body);
    r1 = kfg_http_chunked_decode(&c1, a, n, &cons, &out, &why);
    check(cons <= n && out <= cons);
    check(r1 == 0 || r1 == 1 || r1 == -400 || r1 == -413 || r1 == -431);
    check(r1 != 0 || cons == n);
    check(cons == n || r1 == 1 || r1 < 0);
    if (r1 < 0)
        check(why != NULL && why[0] != '\0');

    kfg_http_chunked_init(&c2, max_body);
    for (size_t i = 0; i < n && r2 == 0; i++) {
        char ch = (char)p[i];
        r2 = kfg_http_chunked_decode(&c2, &ch, 1, &x, &y, NULL);
        check(x <= 1 && y <= x);
        if (y)
            outb[o2++] = ch;
        c2used += x;
    }
    check(r1 == r2);
    check(o2 == out && memcmp(outb, a, out) == 0);
    if (r1 != 0)
        check(c2used == cons);

    /* Sticky after the end or an error. */
    if (r1 != 0) {
        char ch = 'x';
        check(kfg_http_chunked_decode(&c1, &ch, 1, &x, &y, NULL) == r1);
        check(y == 0 && (r1 < 0 || x == 0));
    }
    *used = cons;
    free(a);
    free(outb);
    return r1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const size_t heads[] = { 16384, 64, 256, 1024 };
    static const unsigned nh[] = { 100, 2, 8, MAX_HDRS };
    static const size_t bodies[] = { 1 << 20, 0, 16, (size_t)-1 / 2 };
    static struct result one;

    if (size < 2 || size > MAX_INPUT)
        return 0;
    unsigned mode = data[0];
    size_t split = data[1];
    data += 2;
    size -= 2;
    struct kfg_http_limits lim = { heads[mode & 3], nh[mode >> 2 & 3] };
    size_t max_body = bodies[mode >> 4 & 3];

    if (mode & 0x80) {          /* the chunked decoder on its own */
        size_t used;
        chunked(data, size, max_body, &used);
        return 0;
    }
    /* Up to four pipelined requests. */
    for (int i = 0; i < 4 && size > 0; i++) {
        char *keep = NULL;
        int r = head(data, size, &lim, split, &one, &keep);
        if (r <= 0) {
            free(keep);
            break;
        }
        int is_chunked = one.req.chunked;
        int64_t cl = one.req.content_length;
        free(keep);
        data += r;
        size -= (size_t)r;
        if (is_chunked) {
            size_t used = 0;
            if (chunked(data, size, max_body, &used) != 1)
                break;
            data += used;
            size -= used;
        } else if (cl > 0) {
            if ((uint64_t)cl > size)
                break;
            data += cl;
            size -= (size_t)cl;
        }
    }
    return 0;
}
