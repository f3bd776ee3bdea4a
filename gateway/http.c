/*
 * HTTP/1.1 server connections on raw non-blocking sockets.
 *
 * Why not bufferevents: the whole request head must sit in one contiguous
 * buffer for the zero-copy parser and for plugins, and a connection needs
 * exactly one read buffer and one write buffer; evbuffer chains would add a
 * copy (pullup) per request and allocations we do not need.
 *
 * Buffer layout of a connection: in[0 .. in_len) holds unread input; the
 * request being served starts at in[req_off]. The head and the (decoded)
 * body of that request stay in place until it is answered, which is why a
 * connection stops reading while a request is with a handler.
 */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "http_parse.h"
#include "instance.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"

#define READ_CHUNK 16384
#define MAX_OUT_PENDING (256u * 1024)   /* stop serving pipelined requests */

/* ------------------------------------------------------------------------ */
/* Routes */

struct route {
    char *method;               /* NULL = any */
    char *path;
    size_t plen;
    unsigned flags;
    kfg_http_handler fn;
    void *ctx;
    struct kfg_instance *ins;
};

struct kfg_routes {
    struct route *v;
    size_t n, cap;
};

struct kfg_routes *kfg_routes_new(void)
{
    return calloc(1, sizeof(struct kfg_routes));
}

static int same_method(const char *a, const char *b)
{
    return a == NULL || b == NULL || strcmp(a, b) == 0;
}

int kfg_routes_add(struct kfg_routes *r, const char *method, const char *path,
                   unsigned flags, kfg_http_handler fn, void *ctx,
                   struct kfg_instance *ins)
{
    if (!r || !path || path[0] != '/' || !fn ||
        (flags & ~(KFG_ROUTE_PREFIX | KFG_ROUTE_UPGRADE)))
        return KFG_EINVAL;
    for (size_t i = 0; i < r->n; i++) {
        const struct route *o = &r->v[i];
        if ((o->flags & KFG_ROUTE_PREFIX) == (flags & KFG_ROUTE_PREFIX) &&
            strcmp(o->path, path) == 0 && same_method(o->method, method))
            return KFG_EEXIST;
    }
    if (r->n == r->cap) {
        size_t nc = r->cap ? r->cap * 2 : 8;
        struct route *nv = realloc(r->v, nc * sizeof(*nv));
        if (!nv)
            return KFG_ENOMEM;
        r->v = nv;
        r->cap = nc;
    }
    struct route *rt = &r->v[r->n];
    memset(rt, 0, sizeof(*rt));
    rt->path = strdup(path);
    rt->method = method ? strdup(method) : NULL;
    if (!rt->path || (method && !rt->method)) {
        free(rt->path);
        free(rt->method);
        return KFG_ENOMEM;
    }
    rt->plen = strlen(path);
    rt->flags = flags;
    rt->fn = fn;
    rt->ctx = ctx;
    rt->ins = ins;
    r->n++;
    return KFG_OK;
}

void kfg_routes_remove_instance(struct kfg_routes *r, const struct kfg_instance *ins)
{
    size_t j = 0;
    for (size_t i = 0; i < r->n; i++) {
        if (r->v[i].ins == ins) {
            free(r->v[i].path);
            free(r->v[i].method);
        } else {
            r->v[j++] = r->v[i];
        }
    }
    r->n = j;
}

size_t kfg_routes_count(const struct kfg_routes *r)
{
    return r ? r->n : 0;
}

void kfg_routes_free(struct kfg_routes *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n; i++) {
        free(r->v[i].path);
        free(r->v[i].method);
    }
    free(r->v);
    free(r);
}

/* Exact routes win over prefixes; the longest prefix wins among prefixes.
 * *path_matched tells a 405 from a 404. */
static const struct route *route_find(const struct kfg_routes *r,
                                      struct kfg_http_slice method,
                                      struct kfg_http_slice path,
                                      int *path_matched)
{
    const struct route *best = NULL;
    *path_matched = 0;
    for (size_t i = 0; i < r->n; i++) {
        const struct route *rt = &r->v[i];
        int hit;
        if (rt->flags & KFG_ROUTE_PREFIX)
            hit = path.n >= rt->plen && memcmp(path.p, rt->path, rt->plen) == 0;
        else
            hit = path.n == rt->plen && memcmp(path.p, rt->path, rt->plen) == 0;
        if (!hit)
            continue;
        *path_matched = 1;
        if (rt->method && (strlen(rt->method) != method.n ||
                           memcmp(rt->method, method.p, method.n) != 0))
            continue;
        if (!(rt->flags & KFG_ROUTE_PREFIX))
            return rt;
        if (!best || rt->plen > best->plen)
            best = rt;
    }
    return best;
}

/* ------------------------------------------------------------------------ */
/* Snapshots: routes + limits, published together */

struct snapshot {
    atomic_int refs;
    struct kfg_routes *routes;
    struct kfg_http_config cfg;
};

static void snapshot_unref(struct snapshot *s)
{
    if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    for (size_t i = 0; i < s->routes->n; i++)
        if (s->routes->v[i].ins)
            kfg_instance_unref(s->routes->v[i].ins);
    kfg_routes_free(s->routes);
    free(s);
}

/* ------------------------------------------------------------------------ */
/* Server and per-loop state */

struct worker;

struct kfg_http_server {
    char *name;
    pthread_mutex_t mu;                 /* guards `current` swaps */
    _Atomic(struct snapshot *) current;
    struct worker **workers;
    size_t nworkers;
    int port;
    atomic_uint nconns;
    atomic_int draining;
    void (*drain_done)(void *arg);
    void *drain_arg;
    atomic_uint workers_busy;           /* workers not yet drained */
    struct kfg_loop *control;
    struct kfg_metric *m_conns, *m_rejected[6];
};

struct conn;

struct worker {
    struct kfg_http_server *srv;
    struct kfg_loop *loop;
    struct event_base *base;
    struct evconnlistener *lst;
    struct snapshot *snap;              /* this loop's reference */
    struct conn *conns;                 /* all open connections */
    const struct timeval *tv_header, *tv_body, *tv_idle, *tv_write;
    struct kfg_http_config tv_for;      /* the limits the timevals encode */
    time_t date_sec;
    char date[40];
    uint64_t req_counter;
    int drained;
};

enum conn_state { C_IDLE, C_HEAD, C_BODY, C_HANDLER, C_CLOSING };

struct kfg_request {
    struct conn *c;
    struct kfg_http_request h;
    struct kfg_str body;
    kfg_http_handler fn;
    void *ctx;
    struct kfg_instance *ins;
    uint64_t t0_ns;
    char id[32];
};

struct conn {
    struct worker *w;
    struct conn *prev, *next;
    int fd;
    enum conn_state state;
    struct event *rev, *wev, *timer;
    char *in;
    size_t in_len, in_cap;
    size_t req_off;           /* start of the current request */
    size_t head_len;          /* its head, once parsed */
    size_t body_raw;          /* chunked: next undecoded byte, from req_off */
    size_t body_len;          /* decoded body bytes so far */
    size_t req_end;           /* end of the request being handled */
    const char *head_at;      /* where the head was when parsed */
    struct kfg_http_chunked chunked;
    struct kfg_http_parser ps;
    struct kfg_http_header *hdrs;
    unsigned hdr_cap;
    struct kfg_buf out;
    size_t out_off;           /* already written part of out */
    struct kfg_request req;
    int keep_alive;
    int sent_continue;
    int close_after;          /* close once out is flushed */
    int detached;             /* the fd belongs to a plugin now */
    int reading;
    int in_handler;           /* handler running: no flush, no free */
    char peer[64];
};

static void conn_process(struct conn *c);
static int conn_flush(struct conn *c);
static void conn_close(struct conn *c);
static void worker_maybe_drained(struct worker *w);

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void kfg_http_config_defaults(struct kfg_http_config *c)
{
    c->max_head_bytes = 16384;
    c->max_headers = 100;
    c->max_body_bytes = 1u << 20;
    c->max_connections = 10000;
    c->header_timeout_ms = 10000;
    c->body_timeout_ms = 30000;
    c->idle_timeout_ms = 60000;
    c->write_timeout_ms = 30000;
}

const char *kfg_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

/* A worker adopts the newest snapshot between requests. The pointer compare
 * is the hot-path cost; the mutex is taken only when a reload happened. */
static const struct snapshot *worker_snapshot(struct worker *w)
{
    struct kfg_http_server *s = w->srv;
    if (atomic_load_explicit(&s->current, memory_order_acquire) == w->snap)
        return w->snap;
    pthread_mutex_lock(&s->mu);
    struct snapshot *n = atomic_load_explicit(&s->current, memory_order_relaxed);
    atomic_fetch_add_explicit(&n->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&s->mu);
    struct snapshot *old = w->snap;
    w->snap = n;
    snapshot_unref(old);
    if (memcmp(&w->tv_for, &n->cfg, sizeof(n->cfg)) != 0) {
        struct timeval tv;
#define COMMON_TV(field, ms)                                                  \
        tv.tv_sec = (ms) / 1000;                                              \
        tv.tv_usec = ((ms) % 1000) * 1000;                                    \
        w->field = event_base_init_common_timeout(w->base, &tv);
        COMMON_TV(tv_header, n->cfg.header_timeout_ms)
        COMMON_TV(tv_body, n->cfg.body_timeout_ms)
        COMMON_TV(tv_idle, n->cfg.idle_timeout_ms)
        COMMON_TV(tv_write, n->cfg.write_timeout_ms)
#undef COMMON_TV
        w->tv_for = n->cfg;
    }
    return n;
}

static const char *worker_date(struct worker *w)
{
    struct timeval tv;
    event_base_gettimeofday_cached(w->base, &tv);
    if (tv.tv_sec != w->date_sec) {
        struct tm tm;
        time_t t = tv.tv_sec;
        gmtime_r(&t, &tm);
        strftime(w->date, sizeof(w->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        w->date_sec = tv.tv_sec;
    }
    return w->date;
}

/* A string literal into a buffer, its length counted by the compiler. */
#define PUTLIT(b, lit) kfg_buf_append((b), (lit), sizeof(lit) - 1)

/* ------------------------------------------------------------------------ */
/* Connections */

static void conn_timer_set(struct conn *c, const struct timeval *tv)
{
    if (tv)
        event_add(c->timer, tv);
    else
        event_del(c->timer);
}

static void conn_reading(struct conn *c, int on)
{
    if (on == c->reading)
        return;
    c->reading = on;
    if (on)
        event_add(c->rev, NULL);
    else
        event_del(c->rev);
}

static void conn_free(struct conn *c)
{
    struct worker *w = c->w;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    event_free(c->rev);
    event_free(c->wev);
    event_free(c->timer);
    if (c->fd >= 0 && !c->detached)
        close(c->fd);
    kfg_buf_free(&c->out);
    free(c->in);
    free(c->hdrs);
    free(c);
    atomic_fetch_sub_explicit(&w->srv->nconns, 1, memory_order_relaxed);
    kfg_metric_add(w->srv->m_conns, -1);
    worker_maybe_drained(w);
}

/* Closes now unless a handler still holds the request: then the socket is
 * closed and the connection lingers until the handler answers. */
static void conn_close(struct conn *c)
{
    if (c->state == C_HANDLER || c->in_handler) {
        c->state = C_HANDLER;
        c->close_after = 1;
        conn_reading(c, 0);
        event_del(c->wev);
        event_del(c->timer);
        if (c->fd >= 0 && !c->detached) {
            close(c->fd);
            c->fd = -1;
        }
        return;
    }
    conn_free(c);
}

static void append_head(struct conn *c, int status, const char *extra,
                        size_t body_len)
{
    struct kfg_buf *o = &c->out;
    /* Draining: tell the client this is the last answer, so it does not
     * send another request into a connection about to close. */
    if (atomic_load(&c->w->srv->draining))
        c->keep_alive = 0;
    kfg_buf_printf(o, "HTTP/1.1 %d %s\r\nServer: kfgate\r\nDate: %s\r\n"
                   "Content-Length: %zu\r\n", status, kfg_http_reason(status),
                   worker_date(c->w), body_len);
    if (!c->keep_alive)
        kfg_buf_puts(o, "Connection: close\r\n");
    else if (c->req.h.version_minor == 0)
        kfg_buf_puts(o, "Connection: keep-alive\r\n");
    if (extra)
        kfg_buf_puts(o, extra);
}

/* The body of one of the gateway's own answers. A response to HEAD has no
 * content (RFC 9110 9.3.2): sending one would be read as the start of the
 * next response. req.h is only trusted once the head was parsed. */
static void append_body(struct conn *c, const char *body, size_t n)
{
    if (c->head_len && c->req.h.method == KFG_HTTP_HEAD)
        return;
    kfg_buf_append(&c->out, body, n);
}

/* The gateway's own error answers: a short text body, logged with the
 * cause, and the connection closed when the stream can't be trusted. */
static void conn_error(struct conn *c, int status, const char *why, int close_it)
{
    struct kfg_http_server *s = c->w->srv;
    kfg_log(status >= 500 ? KFG_LOG_WARN : KFG_LOG_INFO, s->name, NULL,
            "%d %s: %s (peer %s)", status, kfg_http_reason(status),
            why ? why : "", c->peer);
    int idx = status == 400 ? 0 : status == 408 ? 1 : status == 413 ? 2
            : status == 431 ? 3 : status == 503 ? 4 : 5;
    kfg_metric_add(s->m_rejected[idx], 1);
    if (close_it)
        c->keep_alive = 0;
    char body[128];
    int n = snprintf(body, sizeof(body), "%d %s\n", status, kfg_http_reason(status));
    const char *extra = status == 503 ? "Content-Type: text/plain\r\nRetry-After: 1\r\n\r\n"
                                      : "Content-Type: text/plain\r\n\r\n";
    append_head(c, status, extra, (size_t)n);
    append_body(c, body, (size_t)n);
    if (close_it) {
        c->close_after = 1;
        c->state = C_CLOSING;
        conn_reading(c, 0);
    }
    conn_flush(c);
}

static void conn_on_write(evutil_socket_t fd, short what, void *arg);

/* Writes what is pending. Returns 0 when the connection was freed. */
static int conn_flush(struct conn *c)
{
    if (c->in_handler)
        return 1;  /* the dispatcher flushes once the handler returns */
    while (c->out_off < c->out.len && c->fd >= 0) {
        ssize_t n = write(c->fd, c->out.p + c->out_off, c->out.len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            event_add(c->wev, c->w->tv_write);
            return 1;
        }
        int lingers = c->state == C_HANDLER;
        conn_close(c);      /* peer gone */
        return lingers;
    }
    kfg_buf_reset(&c->out);
    c->out_off = 0;
    event_del(c->wev);
    if (c->close_after) {
        if (c->state != C_HANDLER) {
            /* Half-close and let the peer read our answer before the RST
             * that unread input would trigger. */
            if (c->fd >= 0)
                shutdown(c->fd, SHUT_WR);
            conn_free(c);
            return 0;
        }
    }
    return 1;
}

static void conn_on_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    struct conn *c = arg;
    if (what & EV_TIMEOUT) {
        kfg_log(KFG_LOG_INFO, c->w->srv->name, NULL,
                "closing connection from %s: client stopped reading", c->peer);
        conn_close(c);
        return;
    }
    /* A pipelining client that had to wait for us to drain is served on. */
    if (conn_flush(c) && c->out.len == 0 && !c->reading &&
        (c->state == C_IDLE || c->state == C_HEAD || c->state == C_BODY))
        conn_process(c);
}

static void conn_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    switch (c->state) {
    case C_IDLE:
        conn_free(c);
        break;
    case C_HEAD:
        conn_error(c, 408, "request head not received in time", 1);
        break;
    case C_BODY:
        conn_error(c, 408, "request body not received in time", 1);
        break;
    default:
        break;
    }
}

/* Makes room for at least `need` more bytes after in_len, compacting the
 * consumed prefix away first. */
static int conn_in_reserve(struct conn *c, size_t need)
{
    if (c->req_off > 0 && (c->state == C_IDLE || c->state == C_HEAD ||
                           c->state == C_BODY)) {
        memmove(c->in, c->in + c->req_off, c->in_len - c->req_off);
        c->in_len -= c->req_off;
        c->req_off = 0;
    }
    if (c->in_cap - c->in_len >= need)
        return 0;
    size_t cap = c->in_cap ? c->in_cap : READ_CHUNK;
    while (cap - c->in_len < need)
        cap *= 2;
    char *n = realloc(c->in, cap);
    if (!n)
        return -1;
    c->in = n;
    c->in_cap = cap;
    return 0;
}

static void conn_on_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct conn *c = arg;
    const struct snapshot *snap = c->w->snap;
    if (c->state == C_HANDLER) {
        /* A pipelined request or a close while a handler works: leave it
         * in the socket until the answer is out (conn_process resumes). */
        conn_reading(c, 0);
        return;
    }
    /* Reading never grows the buffer past what the current request may
     * legitimately need; a bigger request was already refused. */
    size_t want = READ_CHUNK;
    if (c->state == C_BODY && !c->req.h.chunked && c->req.h.content_length > 0) {
        size_t have = c->in_len - c->req_off - c->head_len;
        size_t need = (size_t)c->req.h.content_length - have;
        if (need > want)
            want = need;
    }
    (void)snap;
    if (conn_in_reserve(c, want) < 0) {
        conn_error(c, 503, "out of memory", 1);
        return;
    }
    ssize_t n = read(fd, c->in + c->in_len, c->in_cap - c->in_len);
    if (n == 0) {
        if (c->state == C_HEAD || c->state == C_BODY)
            kfg_log(KFG_LOG_DEBUG, c->w->srv->name, NULL,
                    "client %s closed mid-request", c->peer);
        conn_free(c);
        return;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        conn_free(c);
        return;
    }
    c->in_len += (size_t)n;
    if (c->state == C_IDLE) {
        c->state = C_HEAD;
        conn_timer_set(c, c->w->tv_header);
    }
    conn_process(c);
}

static void dispatch(struct conn *c, const struct route *rt);

static void request_reset(struct conn *c)
{
    memset(&c->req, 0, sizeof(c->req));
    c->req.c = c;
    c->head_len = 0;
    c->body_raw = 0;
    c->body_len = 0;
    c->sent_continue = 0;
}

static void respond_405(struct conn *c, const struct kfg_routes *r)
{
    struct kfg_buf allow = { 0 };
    struct kfg_http_slice path = c->req.h.path;
    for (size_t i = 0; i < r->n; i++) {
        const struct route *rt = &r->v[i];
        int hit = (rt->flags & KFG_ROUTE_PREFIX)
            ? path.n >= rt->plen && memcmp(path.p, rt->path, rt->plen) == 0
            : path.n == rt->plen && memcmp(path.p, rt->path, rt->plen) == 0;
        if (hit && rt->method && !strstr(kfg_buf_cstr(&allow), rt->method)) {
            if (allow.len)
                kfg_buf_puts(&allow, ", ");
            kfg_buf_puts(&allow, rt->method);
        }
    }
    if (strstr(kfg_buf_cstr(&allow), "GET") && !strstr(kfg_buf_cstr(&allow), "HEAD"))
        kfg_buf_puts(&allow, ", HEAD");     /* served by the GET route */
    struct kfg_buf extra = { 0 };
    kfg_buf_printf(&extra, "Allow: %s\r\nContent-Type: text/plain\r\n\r\n",
                   kfg_buf_cstr(&allow));
    static const char body[] = "405 Method Not Allowed\n";
    append_head(c, 405, kfg_buf_cstr(&extra), sizeof(body) - 1);
    append_body(c, body, sizeof(body) - 1);
    kfg_buf_free(&allow);
    kfg_buf_free(&extra);
}

/* The parse/route/dispatch loop: serves every complete request in the input,
 * in order, until one goes asynchronous or the input runs out. */
static void conn_process(struct conn *c)
{
    struct worker *w = c->w;
    for (;;) {
        if (c->state == C_HANDLER || c->state == C_CLOSING)
            break;
        if (c->out.len - c->out_off > MAX_OUT_PENDING) {
            /* A client that pipelines without reading: stop serving it
             * until it drains what it already has. */
            conn_reading(c, 0);
            break;
        }
        const struct snapshot *snap = worker_snapshot(w);
        const struct kfg_http_config *cfg = &snap->cfg;
        if (c->state == C_IDLE) {
            if (c->in_len == c->req_off)
                break;
            c->state = C_HEAD;
            conn_timer_set(c, w->tv_header);
        }
        if (c->state == C_HEAD) {
            if (c->hdr_cap < cfg->max_headers) {
                struct kfg_http_header *h = realloc(c->hdrs, cfg->max_headers * sizeof(*h));
                if (!h) {
                    conn_error(c, 503, "out of memory", 1);
                    return;
                }
                c->hdrs = h;
                c->hdr_cap = cfg->max_headers;
            }
            request_reset(c);
            c->req.h.headers = c->hdrs;
            struct kfg_http_limits lim = {
                .max_head_bytes = cfg->max_head_bytes,
                .max_headers = cfg->max_headers,
            };
            const char *why = NULL;
            int r = kfg_http_parse_request(&c->ps, c->in + c->req_off,
                                           c->in_len - c->req_off, &lim, &c->req.h, &why);
            if (r == 0)
                break;                      /* need more */
            if (r < 0) {
                conn_error(c, -r, why, 1);
                return;
            }
            c->head_len = (size_t)r;
            c->head_at = c->in + c->req_off;
            c->keep_alive = c->req.h.keep_alive && !atomic_load(&w->srv->draining);
            if (c->req.h.content_length > 0 &&
                (uint64_t)c->req.h.content_length > cfg->max_body_bytes) {
                conn_error(c, 413, "Content-Length over max_body_bytes", 1);
                return;
            }
            if (c->req.h.chunked)
                kfg_http_chunked_init(&c->chunked, cfg->max_body_bytes);
            c->body_raw = c->head_len;
            c->state = C_BODY;
            conn_timer_set(c, w->tv_body);
        }
        /* C_BODY */
        size_t avail = c->in_len - c->req_off - c->head_len;
        size_t consumed;     /* bytes of this request incl. head */
        if (c->req.h.chunked) {
            size_t used = 0, outn = 0;
            const char *why = NULL;
            char *raw = c->in + c->req_off + c->body_raw;
            size_t rawn = c->in_len - c->req_off - c->body_raw;
            int r = kfg_http_chunked_decode(&c->chunked, raw, rawn, &used, &outn, &why);
            if (r < 0) {
                conn_error(c, -r, why, 1);
                return;
            }
            memmove(c->in + c->req_off + c->head_len + c->body_len, raw, outn);
            c->body_len += outn;
            c->body_raw += used;
            if (r == 0) {
                if (c->req.h.expect_continue && !c->sent_continue &&
                    c->body_len == 0) {
                    kfg_buf_puts(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
                    c->sent_continue = 1;
                    conn_flush(c);
                }
                break;
            }
            consumed = c->body_raw;
        } else {
            size_t cl = c->req.h.content_length > 0 ? (size_t)c->req.h.content_length : 0;
            if (avail < cl) {
                if (c->req.h.expect_continue && !c->sent_continue && avail == 0) {
                    kfg_buf_puts(&c->out, "HTTP/1.1 100 Continue\r\n\r\n");
                    c->sent_continue = 1;
                    conn_flush(c);
                }
                break;
            }
            c->body_len = cl;
            consumed = c->head_len + cl;
        }
        if (c->head_at != c->in + c->req_off) {
            /* The buffer moved while the body arrived: re-point the parsed
             * slices by parsing the (unchanged) head again. */
            struct kfg_http_limits lim = { cfg->max_head_bytes, cfg->max_headers };
            const char *why;
            int chunked = c->req.h.chunked;
            kfg_http_parse_request(NULL, c->in + c->req_off, c->head_len, &lim, &c->req.h, &why);
            c->req.h.chunked = chunked;
            c->head_at = c->in + c->req_off;
        }
        c->req.body.ptr = c->in + c->req_off + c->head_len;
        c->req.body.len = c->body_len;
        conn_timer_set(c, NULL);

        int path_matched;
        const struct route *rt = route_find(snap->routes, c->req.h.method_name,
                                            c->req.h.path, &path_matched);
        if (!rt && c->req.h.method == KFG_HTTP_HEAD) {
            /* A server MUST support HEAD wherever it supports GET (RFC 9110
             * 9.1): the GET handler answers, req_respond drops the body. */
            static const struct kfg_http_slice get = { "GET", 3 };
            rt = route_find(snap->routes, get, c->req.h.path, &path_matched);
        }
        size_t next_off = c->req_off + consumed;
        if (!rt) {
            if (path_matched) {
                respond_405(c, snap->routes);
            } else {
                static const char body[] = "404 Not Found\n";
                append_head(c, 404, "Content-Type: text/plain\r\n\r\n", sizeof(body) - 1);
                append_body(c, body, sizeof(body) - 1);
            }
            c->req_off = next_off;
        } else {
            c->state = C_HANDLER;
            c->req_end = next_off;
            dispatch(c, rt);
            if (c->detached) {
                conn_free(c);
                return;
            }
            if (c->state == C_HANDLER) {
                /* Answered later: keep the request's bytes where they are.
                 * Reading stops only if the client sends more meanwhile
                 * (conn_on_read), which saves two epoll_ctl calls per
                 * request for clients that wait for their answer. */
                return;
            }
            c->req_off = next_off;
        }
        if (!c->keep_alive) {
            c->close_after = 1;
            c->state = C_CLOSING;
            break;
        }
        c->state = C_IDLE;
    }
    if (c->state == C_IDLE) {
        if (c->req_off == c->in_len)
            c->req_off = c->in_len = 0;
        if (atomic_load(&w->srv->draining) && c->out.len == c->out_off) {
            conn_free(c);
            return;
        }
        conn_timer_set(c, w->tv_idle);
    }
    if (c->state != C_CLOSING && c->out.len - c->out_off <= MAX_OUT_PENDING)
        conn_reading(c, 1);
    conn_flush(c);
}

static void dispatch(struct conn *c, const struct route *rt)
{
    struct kfg_request *req = &c->req;
    req->fn = rt->fn;
    req->ctx = rt->ctx;
    req->ins = rt->ins;
    req->t0_ns = now_ns();
    if (req->ins)
        kfg_instance_ref(req->ins);
    c->in_handler = 1;
    rt->fn(rt->ctx, req);
    c->in_handler = 0;
}

/* Called once the handler's answer is in c->out. */
static void request_done(struct conn *c, int status)
{
    struct kfg_request *req = &c->req;
    struct kfg_instance *ins = req->ins;
    if (ins) {
        int cls = status / 100 - 1;
        if (cls >= 0 && cls < KFG_STATUS_CLASSES)
            kfg_metric_add(ins->m_requests[cls], 1);
        kfg_metric_observe(ins->m_latency, (double)(now_ns() - req->t0_ns) / 1e9);
        req->ins = NULL;
        kfg_instance_unref(ins);
    }
}

int kfg_req_respond(struct kfg_request *req, int status,
                    const struct kfg_header *headers, size_t nheaders,
                    const void *body, size_t len)
{
    struct conn *c = req->c;
    if (c->state != C_HANDLER || status < 200 || status > 999 || (!body && len))
        return KFG_EINVAL;
    int sync = c->in_handler;
    if (atomic_load(&c->w->srv->draining))
        c->keep_alive = 0;      /* the last answer on this connection */
    if (c->fd >= 0) {
        struct kfg_buf *o = &c->out;
        /* Built by hand: printf was 4% of a REST request's CPU. */
        char code[3] = { (char)('0' + status / 100), (char)('0' + status / 10 % 10),
                         (char)('0' + status % 10) };
        PUTLIT(o, "HTTP/1.1 ");
        kfg_buf_append(o, code, 3);
        kfg_buf_putc(o, ' ');
        kfg_buf_puts(o, kfg_http_reason(status));
        PUTLIT(o, "\r\nServer: kfgate\r\nDate: ");
        kfg_buf_puts(o, worker_date(c->w));
        PUTLIT(o, "\r\n");
        /* 204 and 304 end at their head (RFC 9112 6.3): a body would be
         * read as the next response. 204 has no Content-Length (RFC 9110
         * 8.6); a 304's would describe the selected representation, which
         * the host does not know, so none is sent either. */
        int no_content = status == 204 || status == 304;
        if (no_content)
            len = 0;
        else if (req->h.method != KFG_HTTP_HEAD || len) {
            char num[24], *e = num + sizeof num, *d = e;
            size_t v = len;
            do
                *--d = (char)('0' + v % 10);
            while (v /= 10);
            PUTLIT(o, "Content-Length: ");
            kfg_buf_append(o, d, (size_t)(e - d));
            PUTLIT(o, "\r\n");
        }
        if (!c->keep_alive)
            kfg_buf_puts(o, "Connection: close\r\n");
        else if (req->h.version_minor == 0)
            kfg_buf_puts(o, "Connection: keep-alive\r\n");
        for (size_t i = 0; i < nheaders; i++) {
            const char *n = headers[i].name, *v = headers[i].value;
            /* A plugin must not be able to split the response. */
            if (!n || !v || strpbrk(n, "\r\n:") || strpbrk(v, "\r\n") ||
                !strcasecmp(n, "content-length") || !strcasecmp(n, "connection") ||
                !strcasecmp(n, "transfer-encoding"))
                continue;
            kfg_buf_puts(o, n);
            PUTLIT(o, ": ");
            kfg_buf_puts(o, v);
            PUTLIT(o, "\r\n");
        }
        kfg_buf_puts(o, "\r\n");
        if (req->h.method != KFG_HTTP_HEAD)
            kfg_buf_append(o, body, len);
    }
    request_done(c, status);
    c->state = C_IDLE;          /* answered */
    if (sync)
        return KFG_OK;          /* conn_process moves on to the next request */
    c->req_off = c->req_end;
    if (c->fd < 0) {            /* the client left while we worked */
        conn_free(c);
        return KFG_OK;
    }
    if (c->close_after || !c->keep_alive) {
        c->close_after = 1;
        c->state = C_CLOSING;
        conn_flush(c);
        return KFG_OK;
    }
    conn_process(c);
    return KFG_OK;
}

int kfg_req_upgrade(struct kfg_request *req, struct kfg_upgraded *out)
{
    struct conn *c = req->c;
    if (!c->in_handler || !req->h.upgrade || c->fd < 0 || !out)
        return KFG_EINVAL;
    size_t start = c->req_off + c->head_len + c->body_len;
    out->fd = c->fd;
    out->pending.ptr = c->in + start;
    out->pending.len = c->in_len - start;
    out->loop = c->w->loop;
    c->detached = 1;
    request_done(c, 101);
    c->state = C_CLOSING;
    return KFG_OK;
}

/* ------------------------------------------------------------------------ */
/* Accepting */

static void on_accept(struct evconnlistener *l, evutil_socket_t fd,
                      struct sockaddr *sa, int salen, void *arg)
{
    (void)l;
    (void)salen;
    struct worker *w = arg;
    struct kfg_http_server *s = w->srv;
    const struct snapshot *snap = worker_snapshot(w);
    unsigned n = atomic_fetch_add_explicit(&s->nconns, 1, memory_order_relaxed);
    if (n >= snap->cfg.max_connections || atomic_load(&s->draining)) {
        static const char busy[] =
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 24\r\n"
            "Retry-After: 1\r\nConnection: close\r\n\r\n503 Service Unavailable\n";
        ssize_t wr = write(fd, busy, sizeof(busy) - 1);
        (void)wr;
        close(fd);
        atomic_fetch_sub_explicit(&s->nconns, 1, memory_order_relaxed);
        kfg_metric_add(s->m_rejected[4], 1);
        kfg_log(KFG_LOG_WARN, s->name, NULL,
                "503: max_connections (%u) reached, connection refused",
                snap->cfg.max_connections);
        return;
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        atomic_fetch_sub_explicit(&s->nconns, 1, memory_order_relaxed);
        return;
    }
    c->w = w;
    c->fd = fd;
    c->req.c = c;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->sa_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        port = ntohs(in->sin_port);
    } else if (sa->sa_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
    }
    snprintf(c->peer, sizeof(c->peer), "%s:%d", host, port);
    c->rev = event_new(w->base, fd, EV_READ | EV_PERSIST, conn_on_read, c);
    c->wev = event_new(w->base, fd, EV_WRITE | EV_PERSIST, conn_on_write, c);
    c->timer = evtimer_new(w->base, conn_on_timer, c);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    if (!c->rev || !c->wev || !c->timer) {
        conn_free(c);
        return;
    }
    kfg_metric_add(s->m_conns, 1);
    c->state = C_IDLE;
    conn_reading(c, 1);
    conn_timer_set(c, w->tv_idle);
}

static int parse_addr(const char *addr, char *host, size_t hcap, char *port, size_t pcap)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || !colon[1])
        return -1;
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl >= hcap || strlen(colon + 1) >= pcap)
        return -1;
    memcpy(host, h, hl);
    host[hl] = '\0';
    strcpy(port, colon + 1);
    return 0;
}

static int open_listener(const char *addr, int port_override, int *port_out)
{
    char host[256], port[16];
    if (parse_addr(addr, host, sizeof(host), port, sizeof(port)) < 0) {
        kfg_error("listen address '%s' is not host:port", addr);
        return -1;
    }
    if (port_override > 0)
        snprintf(port, sizeof(port), "%d", port_override);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
    if (rc != 0) {
        kfg_error("listen address '%s': %s", addr, gai_strerror(rc));
        return -1;
    }
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 4096) < 0) {
        kfg_error("cannot listen on %s: %s", addr, strerror(errno));
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return -1;
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *port_out = ntohs(ss.ss_family == AF_INET6
                          ? ((struct sockaddr_in6 *)&ss)->sin6_port
                          : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

struct kfg_http_server *kfg_http_server_new(const char *name)
{
    struct kfg_http_server *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->name = strdup(name);
    pthread_mutex_init(&s->mu, NULL);
    struct snapshot *snap = calloc(1, sizeof(*snap));
    snap->routes = kfg_routes_new();
    atomic_init(&snap->refs, 1);
    kfg_http_config_defaults(&snap->cfg);
    atomic_init(&s->current, snap);
    s->control = kfg_loop_current();
    char labels[96];
    snprintf(labels, sizeof(labels), "server=\"%s\"", name);
    s->m_conns = kfg_metric_get(KFG_METRIC_GAUGE, "kfgate_http_open_connections",
                                "Open client connections.", labels);
    static const char *const reasons[] = { "bad_request", "timeout", "too_large",
                                           "header_too_large", "unavailable", "other" };
    for (int i = 0; i < 6; i++) {
        char l[160];
        snprintf(l, sizeof(l), "server=\"%s\",reason=\"%s\"", name, reasons[i]);
        s->m_rejected[i] = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_http_rejected_total",
                                          "Requests the gateway refused itself, by reason.", l);
    }
    return s;
}

int kfg_http_server_listen(struct kfg_http_server *s, const char *addr,
                           struct kfg_loop **loops, size_t nloops)
{
    s->workers = calloc(nloops, sizeof(*s->workers));
    if (!s->workers)
        return -1;
    for (size_t i = 0; i < nloops; i++) {
        struct worker *w = calloc(1, sizeof(*w));
        if (!w)
            return -1;
        w->srv = s;
        w->loop = loops[i];
        w->base = kfg_loop_base(loops[i]);
        s->workers[s->nworkers++] = w;
        worker_snapshot(w);
        int port = 0;
        int fd = open_listener(addr, s->port, &port);
        if (fd < 0)
            return -1;
        if (!s->port)
            s->port = port;
        w->lst = evconnlistener_new(w->base, on_accept, w,
                                    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                                    -1, fd);
        if (!w->lst) {
            close(fd);
            return -1;
        }
    }
    return 0;
}

int kfg_http_server_port(const struct kfg_http_server *s)
{
    return s->port;
}

unsigned kfg_http_server_connections(const struct kfg_http_server *s)
{
    return atomic_load(&s->nconns);
}

static void worker_refresh(void *arg)
{
    struct worker *w = arg;
    worker_snapshot(w);
}

void kfg_http_server_publish(struct kfg_http_server *s, struct kfg_routes *r,
                             const struct kfg_http_config *cfg)
{
    struct snapshot *snap = calloc(1, sizeof(*snap));
    if (!snap) {
        kfg_error("%s: out of memory publishing routes", s->name);
        return;
    }
    atomic_init(&snap->refs, 1);
    snap->routes = r;
    snap->cfg = *cfg;
    for (size_t i = 0; i < r->n; i++)
        if (r->v[i].ins)
            kfg_instance_ref(r->v[i].ins);
    pthread_mutex_lock(&s->mu);
    struct snapshot *old = atomic_load(&s->current);
    atomic_store_explicit(&s->current, snap, memory_order_release);
    pthread_mutex_unlock(&s->mu);
    snapshot_unref(old);
    /* Idle workers would otherwise hold the old routes (and the instances
     * they reference) until their next request. */
    for (size_t i = 0; i < s->nworkers; i++)
        kfg_loop_post(s->workers[i]->loop, worker_refresh, s->workers[i]);
}

/* Draining: each worker closes its listener and idle connections, then
 * reports once its last connection is gone. */
static void drain_report(void *arg)
{
    struct kfg_http_server *s = arg;
    if (s->drain_done)
        s->drain_done(s->drain_arg);
}

static void worker_maybe_drained(struct worker *w)
{
    if (!atomic_load(&w->srv->draining) || w->drained || w->conns)
        return;
    w->drained = 1;
    if (atomic_fetch_sub(&w->srv->workers_busy, 1) == 1)
        kfg_loop_post(w->srv->control, drain_report, w->srv);
}

static void worker_drain(void *arg)
{
    struct worker *w = arg;
    if (w->lst) {
        evconnlistener_free(w->lst);
        w->lst = NULL;
    }
    struct conn *c = w->conns;
    while (c) {
        struct conn *next = c->next;
        if (c->state == C_IDLE && c->out.len == c->out_off)
            conn_free(c);
        else
            c->keep_alive = 0;
        c = next;
    }
    worker_maybe_drained(w);
}

void kfg_http_server_drain(struct kfg_http_server *s, void (*done)(void *arg),
                           void *arg)
{
    s->drain_done = done;
    s->drain_arg = arg;
    atomic_store(&s->workers_busy, (unsigned)s->nworkers);
    atomic_store(&s->draining, 1);
    if (s->nworkers == 0) {
        kfg_loop_post(s->control, drain_report, s);
        return;
    }
    for (size_t i = 0; i < s->nworkers; i++)
        kfg_loop_post(s->workers[i]->loop, worker_drain, s->workers[i]);
}

void kfg_http_server_free(struct kfg_http_server *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nworkers; i++) {
        struct worker *w = s->workers[i];
        while (w->conns) {
            struct conn *c = w->conns;
            c->state = C_CLOSING;
            conn_free(c);
        }
        if (w->lst)
            evconnlistener_free(w->lst);
        snapshot_unref(w->snap);
        free(w);
    }
    free(s->workers);
    snapshot_unref(atomic_load(&s->current));
    pthread_mutex_destroy(&s->mu);
    free(s->name);
    free(s);
}

/* ------------------------------------------------------------------------ */
/* Request accessors */

static struct kfg_str sl(struct kfg_http_slice s)
{
    return (struct kfg_str){ s.p, s.n };
}

struct kfg_str kfg_req_method(const struct kfg_request *req)
{
    return sl(req->h.method_name);
}

struct kfg_str kfg_req_path(const struct kfg_request *req)
{
    return sl(req->h.path);
}

struct kfg_str kfg_req_query(const struct kfg_request *req)
{
    return sl(req->h.query);
}

struct kfg_str kfg_req_header(const struct kfg_request *req, const char *name)
{
    size_t n = strlen(name);
    for (unsigned i = 0; i < req->h.nheaders; i++) {
        const struct kfg_http_header *h = &req->h.headers[i];
        if (h->name.n == n && strncasecmp(h->name.p, name, n) == 0)
            return sl(h->value);
    }
    return (struct kfg_str){ NULL, 0 };
}

size_t kfg_req_header_count(const struct kfg_request *req)
{
    return req->h.nheaders;
}

int kfg_req_header_at(const struct kfg_request *req, size_t i,
                      struct kfg_str *name, struct kfg_str *value)
{
    if (i >= req->h.nheaders)
        return KFG_ENOTFOUND;
    *name = sl(req->h.headers[i].name);
    *value = sl(req->h.headers[i].value);
    return KFG_OK;
}

struct kfg_str kfg_req_body(const struct kfg_request *req)
{
    return req->body;
}

/* A client-supplied X-Request-Id is kept when it is short and plain, so a
 * request can be followed across systems; otherwise the id is made here. */
const char *kfg_req_id(const struct kfg_request *req)
{
    struct kfg_request *r = (struct kfg_request *)req;
    if (r->id[0])
        return r->id;
    struct kfg_str x = kfg_req_header(req, "X-Request-Id");
    if (x.ptr && x.len > 0 && x.len < sizeof(r->id)) {
        size_t i;
        for (i = 0; i < x.len; i++) {
            char ch = x.ptr[i];
            if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= 'A' && ch <= 'Z') || ch == '-' || ch == '_' || ch == '.'))
                break;
        }
        if (i == x.len) {
            memcpy(r->id, x.ptr, x.len);
            r->id[x.len] = '\0';
            return r->id;
        }
    }
    struct worker *w = r->c->w;
    snprintf(r->id, sizeof(r->id), "%x-%llx", kfg_loop_id(w->loop),
             (unsigned long long)++w->req_counter);
    return r->id;
}

const char *kfg_req_peer(const struct kfg_request *req)
{
    return req->c->peer;
}

struct kfg_loop *kfg_req_loop(const struct kfg_request *req)
{
    return req->c->w->loop;
}

struct kfg_instance *kfg_req_instance(const struct kfg_request *req)
{
    return req->ins;
}
