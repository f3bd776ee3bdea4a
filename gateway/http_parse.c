/*
 * HTTP/1.1 request-head parser and chunked decoder. See http_parse.h for the
 * contract and the policy decisions.
 *
 * The head is parsed line by line within a window of at most max_head_bytes.
 * Every decision looks only at bytes up to the point it is made, and running
 * into the end of the window means "incomplete", never an error: so a
 * prefix of a stream yields either 0 or the result of the whole stream, and
 * resuming at a line boundary gives the same result as one pass.
 */
#include "http_parse.h"

#include <limits.h>
#include <string.h>

/* Byte classes. */
enum {
    C_TCHAR = 1,    /* token (RFC 9110 5.6.2) */
    C_TARGET = 2,   /* request-target: VCHAR except '#' */
    C_VALUE = 4,    /* field value: VCHAR, obs-text, SP, HTAB */
    C_QDTEXT = 8,   /* quoted-string text: C_VALUE except '"' and '\\' */
    C_HOST = 16,    /* uri-host and port: unreserved, sub-delims, %, :, [ ] */
};

#define V (C_VALUE | C_QDTEXT)
#define P (V | C_TARGET)
#define PT (P | C_TCHAR)
#define PH (P | C_HOST)
#define PTH (P | C_TCHAR | C_HOST)

static const unsigned char cls[256] = {
    ['\t'] = V, [' '] = V,
    ['!'] = PTH, ['"'] = C_VALUE | C_TARGET, ['#'] = V | C_TCHAR,
    ['$'] = PTH, ['%'] = PTH, ['&'] = PTH, ['\''] = PTH,
    ['('] = PH, [')'] = PH, ['*'] = PTH, ['+'] = PTH, [','] = PH,
    ['-'] = PTH, ['.'] = PTH, ['/'] = P,
    ['0' ... '9'] = PTH,
    [':'] = PH, [';'] = PH, ['<'] = P, ['='] = PH, ['>'] = P, ['?'] = P,
    ['@'] = P,
    ['A' ... 'Z'] = PTH,
    ['['] = PH, ['\\'] = C_VALUE | C_TARGET, [']'] = PH, ['^'] = PT,
    ['_'] = PTH, ['`'] = PT,
    ['a' ... 'z'] = PTH,
    ['{'] = P, ['|'] = PT, ['}'] = P, ['~'] = PTH,
    [0x80 ... 0xff] = V,
};

#undef V
#undef P
#undef PT
#undef PH
#undef PTH

static inline int is(char c, unsigned mask)
{
    return cls[(unsigned char)c] & mask;
}

static inline int ows(char c)
{
    return c == ' ' || c == '\t';
}

static inline unsigned char lower(unsigned char c)
{
    return (unsigned)(c - 'A') < 26 ? c | 0x20 : c;
}

static int ieq(struct kfg_http_slice s, const char *lit, size_t n)
{
    if (s.n != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)s.p[i]) != lower((unsigned char)lit[i]))
            return 0;
    return 1;
}

#define IEQ(s, lit) ieq((s), (lit), sizeof(lit) - 1)

static const char *span(const char *p, const char *end, unsigned mask)
{
    while (p < end && is(*p, mask))
        p++;
    return p;
}

/*
 * Field values are the bulk of a head: skip them eight bytes at a time while
 * no byte is below 0x20 (CR, LF, HTAB, other controls) or is DEL.
 */
static const char *span_value(const char *p, const char *end)
{
    const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;

    for (;;) {
        while (end - p >= 8) {
            uint64_t x, del;
            memcpy(&x, p, 8);
            del = x ^ (0x7f * ones);
            if (((x - 0x20 * ones) & ~x & highs) | ((del - ones) & ~del & highs))
                break;
            p += 8;
        }
        const char *stop = end - p >= 8 ? p + 8 : end;
        while (p < stop && is(*p, C_VALUE))
            p++;
        if (p < stop || p == end)
            return p;
    }
}

static struct kfg_http_slice slice(const char *p, const char *e)
{
    return (struct kfg_http_slice){ p, (size_t)(e - p) };
}

static const struct kfg_http_slice empty = { "", 0 };

static int fail(const char **why, int status, const char *msg)
{
    *why = msg;
    return -status;
}

/* Splits a comma-separated list: each element with OWS trimmed, possibly
 * empty. *pp becomes NULL after the last one. */
static int list_next(const char **pp, const char *end,
                     struct kfg_http_slice *el)
{
    const char *p = *pp, *q, *e;

    if (!p)
        return 0;
    q = memchr(p, ',', (size_t)(end - p));
    if (!q)
        q = end;
    e = q;
    while (p < e && ows(*p))
        p++;
    while (e > p && ows(e[-1]))
        e--;
    *el = slice(p, e);
    *pp = q < end ? q + 1 : NULL;
    return 1;
}

int kfg_http_list_has(struct kfg_http_slice value, const char *token)
{
    const char *p = value.p;
    struct kfg_http_slice el;
    size_t n = strlen(token);

    while (list_next(&p, value.p + value.n, &el))
        if (ieq(el, token, n))
            return 1;
    return 0;
}

/* ---- head ------------------------------------------------------------- */

enum { LINE_FIELD, LINE_END, LINE_MORE };   /* or -(status) */

static enum kfg_http_method method_of(const char *m, size_t n)
{
#define IS(lit) (n == sizeof(lit) - 1 && memcmp(m, lit, n) == 0)
    switch (m[0]) {
    case 'G': return IS("GET") ? KFG_HTTP_GET : KFG_HTTP_OTHER;
    case 'H': return IS("HEAD") ? KFG_HTTP_HEAD : KFG_HTTP_OTHER;
    case 'P': return IS("POST") ? KFG_HTTP_POST : IS("PUT") ? KFG_HTTP_PUT
                   : IS("PATCH") ? KFG_HTTP_PATCH : KFG_HTTP_OTHER;
    case 'D': return IS("DELETE") ? KFG_HTTP_DELETE : KFG_HTTP_OTHER;
    case 'O': return IS("OPTIONS") ? KFG_HTTP_OPTIONS : KFG_HTTP_OTHER;
    case 'T': return IS("TRACE") ? KFG_HTTP_TRACE : KFG_HTTP_OTHER;
    case 'C': return IS("CONNECT") ? KFG_HTTP_CONNECT : KFG_HTTP_OTHER;
    }
    return KFG_HTTP_OTHER;
#undef IS
}

/* origin-form path and query, or absolute-form; t..e is the whole target. */
static int target_form(struct kfg_http_request *req, const char *t,
                       const char *e, const char **why)
{
    const char *path = t, *q;

    req->host = empty;
    if (*t == '*' && e - t == 1) {
        if (req->method != KFG_HTTP_OPTIONS)
            return fail(why, 400, "'*' target is only for OPTIONS");
        req->path = slice(t, e);
        req->query = slice(e, e);
        return 0;
    }
    if (*t != '/') {
        struct kfg_http_slice scheme;
        const char *a = memchr(t, ':', (size_t)(e - t)), *ae;

        if (!a || e - a < 3 || a[1] != '/' || a[2] != '/')
            return fail(why, 400, "invalid request-target");
        scheme = slice(t, a);
        if (!IEQ(scheme, "http") && !IEQ(scheme, "https"))
            return fail(why, 400, "unsupported URI scheme");
        a += 3;
        ae = span(a, e, C_HOST);
        if (ae == a || (ae < e && *ae != '/' && *ae != '?'))
            return fail(why, 400, "invalid authority in request-target");
        req->host = slice(a, ae);
        path = ae;
    }
    q = memchr(path, '?', (size_t)(e - path));
    if (!q)
        q = e;
    req->path = q > path ? slice(path, q) : (struct kfg_http_slice){ "/", 1 };
    req->query = q < e ? slice(q + 1, e) : slice(e, e);
    return 0;
}

/*
 * request-line, after any empty lines. Fills method, target, path, query,
 * host (absolute-form) and version_minor.
 */
static int request_line(const char **pp, const char *end,
                        struct kfg_http_request *req, const char **why)
{
    static const char ver[] = "HTTP/d.d\r\n";
    const char *p = *pp, *m, *t, *te, *v;
    int r;

    while (p < end && *p == '\r') {
        if (end - p < 2)
            return LINE_MORE;
        if (p[1] != '\n')
            return fail(why, 400, "bare CR");
        p += 2;
    }
    m = p;
    p = span(p, end, C_TCHAR);
    if (p == end)
        return LINE_MORE;
    if (p == m || *p != ' ')
        return fail(why, 400, "invalid method");
    t = ++p;
    p = span(p, end, C_TARGET);
    if (p == end)
        return LINE_MORE;
    if (p == t || *p != ' ')
        return fail(why, 400, "invalid request-target");
    te = p++;

    v = p;
    if (end - v >= 10 && memcmp(v, "HTTP/1.1\r\n", 10) == 0) {
        p += 10;
    } else {
        for (; p - v < 10; p++) {
            if (p == end)
                return LINE_MORE;
            if (ver[p - v] == 'd' ? *p < '0' || *p > '9' : *p != ver[p - v])
                return fail(why, 400, p - v < 8 ? "invalid HTTP version"
                                      : *p == '\n' ? "bare LF"
                                      : p - v == 8 ? "invalid request line"
                                      : "bare CR");
        }
        if (v[5] != '1' || v[7] > '1')
            return fail(why, 505, "unsupported HTTP version");
    }

    req->method_name = slice(m, t - 1);
    req->method = method_of(m, (size_t)(t - 1 - m));
    req->target = slice(t, te);
    req->version_minor = v[7] - '0';
    if (req->method == KFG_HTTP_CONNECT)
        return fail(why, 501, "CONNECT is not supported");
    if ((r = target_form(req, t, te, why)) < 0)
        return r;
    *pp = p;
    return LINE_FIELD;
}

/* One field line or the empty line ending the head. room: may it be a field? */
static int field_line(const char **pp, const char *end, int room,
                      struct kfg_http_header *h, const char **why)
{
    const char *p = *pp, *n, *v, *e, *ve;

    if (p == end)
        return LINE_MORE;
    if (*p == '\r') {
        if (end - p < 2)
            return LINE_MORE;
        if (p[1] != '\n')
            return fail(why, 400, "bare CR");
        *pp = p + 2;
        return LINE_END;
    }
    if (!room)
        return fail(why, 431, "too many header fields");
    if (ows(*p))
        return fail(why, 400, "obs-fold or whitespace before a field");
    n = span(p, end, C_TCHAR);
    if (n == end)
        return LINE_MORE;
    if (*n != ':')
        return fail(why, 400, n == p && *n == '\n' ? "bare LF"
                              : ows(*n) ? "whitespace before colon"
                              : "invalid field name");
    if (n == p)
        return fail(why, 400, "empty field name");
    v = n + 1;
    while (v < end && ows(*v))
        v++;
    e = span_value(v, end);
    if (e == end)
        return LINE_MORE;
    if (*e != '\r')
        return fail(why, 400, *e == '\n' ? "bare LF"
                              : "control character in field value");
    if (end - e < 2)
        return LINE_MORE;
    if (e[1] != '\n')
        return fail(why, 400, "bare CR");
    for (ve = e; ve > v && ows(ve[-1]); ve--)
        ;
    h->name = slice(p, n);
    h->value = slice(v, ve);
    *pp = e + 2;
    return LINE_FIELD;
}

/* What the fields say, gathered while walking them in full mode. */
struct sem {
    unsigned hosts, upgrades, te_chunked;
    unsigned te : 1, te_last_chunked : 1, te_other : 1, absolute : 1;
    unsigned close : 1, keep : 1, conn_upgrade : 1;
    unsigned expect : 1, expect_bad : 1;
};

static int content_length(struct kfg_http_request *req,
                          struct kfg_http_slice val, const char **why)
{
    const char *p = val.p;
    struct kfg_http_slice el;

    while (list_next(&p, val.p + val.n, &el)) {
        int64_t v = 0;

        if (el.n == 0)
            return fail(why, 400, "invalid Content-Length");
        for (size_t i = 0; i < el.n; i++) {
            int d = el.p[i] - '0';
            if (d < 0 || d > 9)
                return fail(why, 400, "invalid Content-Length");
            if (v > (INT64_MAX - d) / 10)
                return fail(why, 400, "Content-Length overflow");
            v = v * 10 + d;
        }
        if (req->content_length >= 0 && req->content_length != v)
            return fail(why, 400, "conflicting Content-Length");
        req->content_length = v;
    }
    return 0;
}

static int transfer_encoding(struct sem *s, struct kfg_http_slice val,
                             const char **why)
{
    const char *p = val.p;
    struct kfg_http_slice el;

    s->te = 1;
    while (list_next(&p, val.p + val.n, &el)) {
        const char *e = el.p + el.n, *t = span(el.p, e, C_TCHAR), *r = t;
        int chunked;

        while (r < e && ows(*r))
            r++;
        if (t == el.p || (r < e && *r != ';'))
            return fail(why, 400, "invalid Transfer-Encoding");
        chunked = IEQ(slice(el.p, t), "chunked");
        if (chunked && r < e)
            return fail(why, 400, "chunked with parameters");
        s->te_chunked += chunked ? 1 : 0;
        s->te_other |= !chunked;
        s->te_last_chunked = chunked ? 1 : 0;
    }
    return 0;
}

static void connection(struct sem *s, struct kfg_http_slice val)
{
    const char *p = val.p;
    struct kfg_http_slice el;

    while (list_next(&p, val.p + val.n, &el)) {
        s->close |= IEQ(el, "close");
        s->keep |= IEQ(el, "keep-alive");
        s->conn_upgrade |= IEQ(el, "upgrade");
    }
}

/* Dispatches on the name length first: most fields match no known name. */
static int apply_field(struct kfg_http_request *req, struct sem *s,
                       const struct kfg_http_header *h, const char **why)
{
    struct kfg_http_slice v = h->value;

    switch (h->name.n) {
    case 4:
        if (!IEQ(h->name, "host"))
            break;
        if (++s->hosts > 1)
            return fail(why, 400, "duplicate Host");
        if (span(v.p, v.p + v.n, C_HOST) != v.p + v.n)
            return fail(why, 400, "invalid Host");
        req->has_host = 1;
        if (!s->absolute)
            req->host = v;
        break;
    case 6:
        if (!IEQ(h->name, "expect"))
            break;
        if (IEQ(v, "100-continue"))
            s->expect = 1;
        else
            s->expect_bad = 1;
        break;
    case 7:
        if (!IEQ(h->name, "upgrade"))
            break;
        if (++s->upgrades > 1)
            return fail(why, 400, "duplicate Upgrade");
        req->upgrade_proto = v;
        break;
    case 10:
        if (IEQ(h->name, "connection"))
            connection(s, v);
        break;
    case 14:
        if (IEQ(h->name, "content-length"))
            return content_length(req, v, why);
        break;
    case 17:
        if (IEQ(h->name, "transfer-encoding"))
            return transfer_encoding(s, v, why);
        break;
    }
    return 0;
}

/* Whole-head checks once every field has been seen. */
static int finish(struct kfg_http_request *req, const struct sem *s,
                  const char **why)
{
    int v11 = req->version_minor == 1;

    if (s->te) {
        if (req->content_length >= 0)
            return fail(why, 400, "Transfer-Encoding with Content-Length");
        if (!v11)
            return fail(why, 400, "Transfer-Encoding in HTTP/1.0");
        if (!s->te_last_chunked)
            return fail(why, 400, "final transfer coding is not chunked");
        if (s->te_chunked > 1)
            return fail(why, 400, "chunked applied more than once");
        if (s->te_other)
            return fail(why, 501, "unsupported transfer coding");
        req->chunked = 1;
    }
    if (v11 && !req->has_host)
        return fail(why, 400, "missing Host");
    if (s->expect_bad)
        return fail(why, 417, "unsupported expectation");
    req->keep_alive = !s->close && (v11 || s->keep);
    req->expect_continue = v11 && s->expect;
    req->upgrade = v11 && s->conn_upgrade && req->upgrade_proto.n > 0;
    if (!req->upgrade)
        req->upgrade_proto = empty;
    return 0;
}

/*
 * Walks lines from buf + *off (line number *line; 0 is the request-line)
 * within buf[0..w). With req == NULL it only validates syntax and limits;
 * otherwise it also fills *req. Returns the head length, 0 if the window
 * ends first (*off, *line then name the incomplete line), or -(status).
 */
static int walk(const char *buf, size_t w, size_t *off, unsigned *line,
                unsigned max_headers, struct kfg_http_request *req,
                const char **why)
{
    const char *p = buf + *off, *end = buf + w;
    struct kfg_http_request scratch;
    struct sem s = { 0 };
    const char *field_why = NULL;
    int r, field_err = 0;

    if (*line == 0) {
        r = request_line(&p, end, req ? req : &scratch, why);
        if (r != LINE_FIELD)
            return r == LINE_MORE ? 0 : r;
        *off = (size_t)(p - buf);
        *line = 1;
    }
    if (req) {
        s.absolute = req->host.n > 0;
        req->nheaders = 0;
        req->content_length = -1;
        req->upgrade_proto = empty;
        req->chunked = req->keep_alive = req->expect_continue = 0;
        req->upgrade = req->has_host = 0;
    }
    for (;;) {
        struct kfg_http_header h;

        r = field_line(&p, end, *line <= max_headers, &h, why);
        if (r == LINE_MORE)
            return 0;
        if (r < 0)
            return r;
        if (r == LINE_END)
            break;
        if (req) {
            req->headers[req->nheaders++] = h;
            if (!field_err)
                field_err = apply_field(req, &s, &h, &field_why);
        }
        *off = (size_t)(p - buf);
        ++*line;
    }
    if (field_err) {
        *why = field_why;
        return field_err;
    }
    if (req && (r = finish(req, &s, why)) < 0)
        return r;
    return (int)(p - buf);
}

int kfg_http_parse_request(struct kfg_http_parser *ps, const char *buf,
                           size_t len, const struct kfg_http_limits *lim,
                           struct kfg_http_request *req, const char **why)
{
    size_t max = lim->max_head_bytes < INT_MAX ? lim->max_head_bytes : INT_MAX;
    size_t w = len < max ? len : max, off = 0;
    unsigned line = 0;
    const char *msg = NULL;
    int r = 1;

    /* A resumed head is only validated until its end is in the buffer; then
     * it is parsed once in full, as the bytes may have moved. */
    if (ps && ps->off <= w && (ps->off || ps->line)) {
        off = ps->off;
        line = ps->line;
        r = walk(buf, w, &off, &line, lim->max_headers, NULL, &msg);
    }
    if (r > 0) {
        off = 0;
        line = 0;
        r = walk(buf, w, &off, &line, lim->max_headers, req, &msg);
    }
    if (r == 0 && len >= max)
        r = fail(&msg, 431, "request head too large");
    if (ps) {
        ps->off = r == 0 ? off : 0;
        ps->line = r == 0 ? line : 0;
    }
    if (r < 0 && why)
        *why = msg;
    return r;
}

const struct kfg_http_slice *
kfg_http_header_get(const struct kfg_http_request *req, const char *name)
{
    size_t n = strlen(name);

    for (unsigned i = 0; i < req->nheaders; i++)
        if (ieq(req->headers[i].name, name, n))
            return &req->headers[i].value;
    return NULL;
}

/* ---- chunked body ----------------------------------------------------- */

enum {
    /* chunk-size line: counted against KFG_HTTP_CHUNK_LINE_MAX */
    CH_SIZE0,       /* first hex digit */
    CH_SIZE,        /* further hex digits */
    CH_ITEM_END,    /* after the size or an extension: CR, BWS ';', ';' */
    CH_WS_SEMI,     /* BWS that must be followed by ';' */
    CH_NAME0,       /* BWS, then an extension name */
    CH_NAME,
    CH_WS_NAME,     /* BWS after a name: '=' or ';' must follow */
    CH_VAL0,        /* BWS, then token or quoted-string */
    CH_VAL_TOKEN,
    CH_VAL_QUOTED,
    CH_VAL_QPAIR,
    CH_SIZE_LF,
    /* chunk data and its CRLF */
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    /* trailer section: counted against KFG_HTTP_TRAILER_MAX */
    CH_TRAILER,     /* start of a trailer line, or the final CRLF */
    CH_T_NAME,
    CH_T_VALUE,
    CH_T_LF,
    CH_END_LF,
    CH_DONE,
};

void kfg_http_chunked_init(struct kfg_http_chunked *c, size_t max_body)
{
    *c = (struct kfg_http_chunked){ .max_body = max_body, .state = CH_SIZE0 };
}

static int hexval(char ch)
{
    unsigned char c = (unsigned char)ch;

    if ((unsigned)(c - '0') < 10)
        return c - '0';
    c |= 0x20;
    return (unsigned)(c - 'a') < 6 ? c - 'a' + 10 : -1;
}

static int ch_fail(struct kfg_http_chunked *c, int status, const char *why)
{
    c->status = -status;
    c->why = why;
    return -status;
}

/* One framing byte. Returns 1 when the body is complete, 0 or -(status). */
static int ch_step(struct kfg_http_chunked *c, char ch)
{
    int d;

    if (c->state <= CH_SIZE_LF) {
        if (++c->line > KFG_HTTP_CHUNK_LINE_MAX)
            return ch_fail(c, 400, "chunk-size line too long");
    } else if (c->state >= CH_TRAILER) {
        if (++c->line > KFG_HTTP_TRAILER_MAX)
            return ch_fail(c, 431, "trailer section too large");
    }
    for (;;) {
        switch (c->state) {
        case CH_SIZE0:
        case CH_SIZE:
            if ((d = hexval(ch)) < 0) {
                if (c->state == CH_SIZE0)
                    return ch_fail(c, 400, "invalid chunk size");
                c->state = CH_ITEM_END;
                continue;
            }
            if (c->size >> 60)
                return ch_fail(c, 400, "chunk size overflow");
            c->size = c->size << 4 | (unsigned)d;
            if (c->size > c->max_body - c->total)
                return ch_fail(c, 413, "body too large");
            c->state = CH_SIZE;
            return 0;
        case CH_ITEM_END:
            if (ch == '\r')
                c->state = CH_SIZE_LF;
            else if (ch == ';')
                c->state = CH_NAME0;
            else if (ows(ch))
                c->state = CH_WS_SEMI;
            else
                return ch_fail(c, 400, ch == '\n' ? "bare LF"
                                       : "invalid chunk extension");
            return 0;
        case CH_WS_SEMI:
            if (ch == ';')
                c->state = CH_NAME0;
            else if (!ows(ch))
                return ch_fail(c, 400, "invalid chunk extension");
            return 0;
        case CH_NAME0:
            if (is(ch, C_TCHAR))
                c->state = CH_NAME;
            else if (!ows(ch))
                return ch_fail(c, 400, "invalid chunk extension");
            return 0;
        case CH_NAME:
            if (is(ch, C_TCHAR))
                return 0;
            if (ch == '=')
                c->state = CH_VAL0;
            else if (ows(ch))
                c->state = CH_WS_NAME;
            else {
                c->state = CH_ITEM_END;
                continue;
            }
            return 0;
        case CH_WS_NAME:
            if (ch == '=')
                c->state = CH_VAL0;
            else if (ch == ';')
                c->state = CH_NAME0;
            else if (!ows(ch))
                return ch_fail(c, 400, "invalid chunk extension");
            return 0;
        case CH_VAL0:
            if (is(ch, C_TCHAR))
                c->state = CH_VAL_TOKEN;
            else if (ch == '"')
                c->state = CH_VAL_QUOTED;
            else if (!ows(ch))
                return ch_fail(c, 400, "invalid chunk extension");
            return 0;
        case CH_VAL_TOKEN:
            if (is(ch, C_TCHAR))
                return 0;
            c->state = CH_ITEM_END;
            continue;
        case CH_VAL_QUOTED:
            if (ch == '"')
                c->state = CH_ITEM_END;
            else if (ch == '\\')
                c->state = CH_VAL_QPAIR;
            else if (!is(ch, C_QDTEXT))
                return ch_fail(c, 400, "invalid chunk extension");
            return 0;
        case CH_VAL_QPAIR:
            if (!is(ch, C_VALUE))
                return ch_fail(c, 400, "invalid chunk extension");
            c->state = CH_VAL_QUOTED;
            return 0;
        case CH_SIZE_LF:
            if (ch != '\n')
                return ch_fail(c, 400, "bare CR");
            c->line = 0;
            if (c->size == 0) {
                c->state = CH_TRAILER;
            } else {
                c->total += c->size;
                c->state = CH_DATA;
            }
            return 0;
        case CH_DATA_CR:
            if (ch != '\r')
                return ch_fail(c, 400, "missing CRLF after chunk data");
            c->state = CH_DATA_LF;
            return 0;
        case CH_DATA_LF:
            if (ch != '\n')
                return ch_fail(c, 400, "bare CR");
            c->state = CH_SIZE0;
            return 0;
        case CH_TRAILER:
            if (ch == '\r')
                c->state = CH_END_LF;
            else if (is(ch, C_TCHAR))
                c->state = CH_T_NAME;
            else
                return ch_fail(c, 400, ows(ch) ? "obs-fold in trailer"
                                       : ch == '\n' ? "bare LF"
                                       : "invalid trailer field");
            return 0;
        case CH_T_NAME:
            if (ch == ':')
                c->state = CH_T_VALUE;
            else if (!is(ch, C_TCHAR))
                return ch_fail(c, 400, "invalid trailer field");
            return 0;
        case CH_T_VALUE:
            if (ch == '\r')
                c->state = CH_T_LF;
            else if (!is(ch, C_VALUE))
                return ch_fail(c, 400, ch == '\n' ? "bare LF"
                                       : "invalid trailer field");
            return 0;
        case CH_T_LF:
            if (ch != '\n')
                return ch_fail(c, 400, "bare CR");
            c->state = CH_TRAILER;
            return 0;
        case CH_END_LF:
            if (ch != '\n')
                return ch_fail(c, 400, "bare CR");
            c->state = CH_DONE;
            return 1;
        default:    /* CH_DATA and CH_DONE never get here */
            return ch_fail(c, 500, "chunked decoder state");
        }
    }
}

int kfg_http_chunked_decode(struct kfg_http_chunked *c, char *buf, size_t len,
                            size_t *consumed, size_t *out_len,
                            const char **why)
{
    size_t i = 0, o = 0;
    int r = c->status;

    while (r == 0 && i < len && c->state != CH_DONE) {
        if (c->state == CH_DATA) {
            size_t n = len - i < c->size ? len - i : (size_t)c->size;
            if (o != i)
                memmove(buf + o, buf + i, n);
            o += n;
            i += n;
            c->size -= n;
            if (c->size == 0)
                c->state = CH_DATA_CR;
            continue;
        }
        r = ch_step(c, buf[i++]);
    }
    if (c->state == CH_DONE)
        r = 1;
    *consumed = i;
    *out_len = o;
    if (r < 0 && why)
        *why = c->why;
    return r;
}
