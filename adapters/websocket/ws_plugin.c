/*
 * kfgate WebSocket adapter (spec/websocket.md): RFC 6455 on the gateway's
 * HTTP port through the upgrade hand-off, the widget protocol, resume from
 * the journal, and the widget page itself at {path}/widget.
 *
 * Threads. A connection lives on the worker loop that accepted it: its
 * event, timers-by-sweep, reads, writes and emit completions all run there.
 * deliver runs on the control loop; it finds the conversation's connections
 * in the registry (a locked hash table) and hops to each connection's loop
 * with host->post, carrying one reference to a frame rendered once for all
 * of them. Connections are reference counted so a post or a replay in
 * flight never sees freed memory; the registry is only changed under its
 * lock, and references are only taken under it.
 *
 * Memory. An idle open connection is one struct ws_conn (its libevent event
 * inside) plus a small identity block: the receiver keeps bytes only for an
 * incomplete frame, the send queue exists only while the socket is full,
 * reads go to one scratch buffer per loop, and timeouts are driven by one
 * sweep timer per loop over lists kept in deadline order.
 */
#define _GNU_SOURCE
#include "ws.h"

#include <kfgate/envelope.h>
#include <kfgate/plugin.h>

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WS_VERSION "0.1.0"
#define SCRATCH (64 * 1024)
#define SWEEP_MS 250
#define MAX_LOOPS 256
#define REPLAY_CHUNK 64

/* The widget files, embedded by ws_embed.S (see the Makefile). */
extern const char ws_widget_html[], ws_widget_html_end[];
extern const char ws_widget_js[], ws_widget_js_end[];

static const struct kfg_config_key ws_config[] = {
    { "path", KFG_CFG_STRING, 0, "/ws",
      "WebSocket endpoint; the widget is served at <path>/widget and <path>/widget.js" },
    { "allowed_origins", KFG_CFG_STRING_ARRAY, 0, NULL,
      "Origins allowed to connect (\"https://shop.example\", \"*\" = any); "
      "empty = same origin only; requests without Origin are allowed" },
    { "allow_anonymous", KFG_CFG_BOOL, 0, "false", "accept a hello without a token" },
    { "token_secret", KFG_CFG_SECRET, 0, NULL,
      "HMAC-SHA256 key of visitor tokens (spec/websocket.md §4); \"env:NAME\" allowed" },
    { "max_message_bytes", KFG_CFG_INT, 0, "65536", "largest message (all fragments); close 1009 above" },
    { "max_connections", KFG_CFG_INT, 0, "100000", "open connections of the instance; 503 above" },
    { "max_connections_per_ip", KFG_CFG_INT, 0, "1000", "open connections per client IP; 503 above" },
    { "rate_per_sec", KFG_CFG_INT, 0, "20", "messages and events per second per connection" },
    { "rate_burst", KFG_CFG_INT, 0, "40", "token bucket size of rate_per_sec" },
    { "max_inflight", KFG_CFG_INT, 0, "32", "messages awaiting their ack before reading pauses" },
    { "send_queue_max", KFG_CFG_INT, 0, "256", "frames queued for a client that does not read; close 1013 above" },
    { "send_queue_bytes", KFG_CFG_INT, 0, "1048576", "bytes queued for a client that does not read; close 1013 above" },
    { "ping_interval_ms", KFG_CFG_INT, 0, "30000", "ping a connection silent for this long" },
    { "idle_timeout_ms", KFG_CFG_INT, 0, "75000", "close (1001) a connection silent for this long" },
    { "hello_timeout_ms", KFG_CFG_INT, 0, "10000", "close (4008) without a hello after this long" },
    { "close_timeout_ms", KFG_CFG_INT, 0, "2000", "wait this long for the client's close frame" },
    { "resume_max", KFG_CFG_INT, 0, "1000", "most frames one resume replays" },
    { "resume_concurrency", KFG_CFG_INT, 0, "16",
      "journal reads for resumes at once per worker loop; more hellos wait their turn" },
    { "sndbuf_bytes", KFG_CFG_INT, 0, "0", "SO_SNDBUF of each connection (kernel memory); 0 = system default" },
    { NULL, 0, 0, NULL, NULL },
};

/* ------------------------------------------------------------------------ */
/* Types */

struct ws_link {
    struct ws_link *prev, *next;
};

static void link_init(struct ws_link *h) { h->prev = h->next = h; }
static int link_empty(const struct ws_link *h) { return h->next == h; }
static void link_del(struct ws_link *l)
{
    if (l->next) {
        l->prev->next = l->next;
        l->next->prev = l->prev;
    }
    l->prev = l->next = NULL;
}
static void link_tail(struct ws_link *h, struct ws_link *l)
{
    l->prev = h->prev;
    l->next = h;
    h->prev->next = l;
    h->prev = l;
}

#define CONTAINER(p, type, member) ((type *)(void *)((char *)(p) - offsetof(type, member)))

/* One outbound frame, rendered once, shared by every connection it goes to. */
struct ws_out {
    atomic_uint ref;
    uint64_t seq;
    uint8_t *frame[2];          /* per subprotocol, NULL when not needed */
    uint32_t len[2];
};

struct ws_qent {
    struct ws_qent *next;
    struct ws_out *o;           /* shared frame, or NULL: data[] is private */
    uint32_t off, len;
    uint8_t data[];
};

struct ws_sq {
    struct ws_qent *head, *tail;
    uint32_t n;
    size_t bytes;
};

/* A resume in progress (spec §6). */
struct ws_replay {
    uint64_t next;              /* journal position to continue from */
    uint32_t count;
    int waiting;                /* the next chunk waits for the queue to drain */
    int running;                /* a host->replay call is out */
    struct ws_qent *held, *held_tail;   /* live pushes held until the end */
    uint32_t nheld;
};

struct ws_conv {
    struct ws_conv *next;       /* hash chain */
    struct ws_link conns;
    uint32_t hash;
    char id[];
};

struct ws_ipent {
    struct ws_ipent *next;
    uint32_t count;
    char ip[];
};

/* Identity, one allocation: origin, visitor id, display name (each NUL-ended). */
struct ws_sess {
    uint16_t olen, slen, nlen;
    char data[];
};

enum { S_HELLO = 1, S_OPEN, S_CLOSING, S_DEAD };

struct ws_loopst;

struct ws_conn {
    struct event ev;
    struct ws_link lnk;         /* in its loop's hello/open/closing list */
    struct ws_link clnk;        /* in conv->conns once registered */
    struct ws_loopst *ls;
    struct ws_conv *conv;
    struct ws_ipent *ip;
    struct ws_sess *sess;
    struct ws_sq *sq;
    struct ws_replay *rp;
    struct ws_rx rx;
    uint64_t t;                 /* ms: last frame in (open) / state entered */
    uint64_t last_seq;          /* highest outbound seq sent */
    atomic_uint ref;
    int fd;
    uint32_t rl_tokens, rl_t;   /* rate bucket in milli-messages; ms */
    uint16_t inflight;
    uint8_t state, sub;
    uint8_t pinged : 1, rd_paused : 1, wr_armed : 1, in_rx : 1, close_when_drained : 1,
        anonymous : 1, shut_when_drained : 1, resume_slot : 1;
};

struct ws_inst;

struct ws_loopst {
    struct ws_inst *wi;
    struct kfg_loop *loop;
    struct event_base *base;
    struct kfg_timer *sweep;
    struct ws_link hello, open, closing;
    uint8_t *scratch;
    int stopped;
    /* Resumes read the journal on the gateway's replay thread, from wherever
     * the client says: at most resume_concurrency at once per loop, the
     * others wait here in hello order (each holding a connection ref). */
    uint32_t resumes;
    struct ws_wait *wait_head, *wait_tail;
};

struct ws_wait {
    struct ws_wait *next;
    struct ws_conn *c;
};

#define CONV_BUCKETS 4096
#define IP_BUCKETS 1024

struct ws_inst {
    struct kfg_instance *ins;
    const struct kfg_host *host;
    struct kfg_loop *control;
    const char *name;
    char path[200], path_widget[220], path_js[220];

    char **origins;
    size_t norigins;
    int any_origin, allow_anon;
    uint8_t *secret;
    size_t secret_len;

    uint32_t max_message, max_conns, max_per_ip, rate, burst, max_inflight;
    uint32_t sq_max, resume_max, sndbuf, resume_conc;
    size_t sq_bytes;
    uint64_t ping_ms, idle_ms, hello_ms, close_ms;
    int have_11;

    atomic_uint nconns;
    atomic_uint nalloc;         /* ws_conn structs alive */
    atomic_int stopping;
    atomic_int loops_pending;
    atomic_int stopped_sent;

    pthread_mutex_t lock;       /* registry + ip table + loops */
    struct ws_conv *conv[CONV_BUCKETS];
    struct ws_ipent *ipt[IP_BUCKETS];
    struct ws_loopst *loops[MAX_LOOPS];
    size_t nloops;

    struct kfg_metric *m_conns, *m_hs_ok, *m_hs_refused, *m_in, *m_out, *m_slow,
        *m_proto_err, *m_resumes;
};

/* ------------------------------------------------------------------------ */
/* Small helpers */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint32_t fnv1a(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

#define LOG(wi, lvl, ...) (wi)->host->log((wi)->ins, NULL, (lvl), __VA_ARGS__)

static void out_unref(struct ws_out *o)
{
    if (o && atomic_fetch_sub_explicit(&o->ref, 1, memory_order_acq_rel) == 1) {
        free(o->frame[0]);
        free(o->frame[1]);
        free(o);
    }
}

static void qent_free(struct ws_qent *q)
{
    out_unref(q->o);
    free(q);
}

static void check_stopped(struct ws_inst *wi);

static void conn_ref(struct ws_conn *c)
{
    atomic_fetch_add_explicit(&c->ref, 1, memory_order_relaxed);
}

static void conn_unref(struct ws_conn *c)
{
    if (atomic_fetch_sub_explicit(&c->ref, 1, memory_order_acq_rel) != 1)
        return;
    struct ws_inst *wi = c->ls->wi;
    free(c);
    atomic_fetch_sub(&wi->nalloc, 1);
    check_stopped(wi);
}

static const char *sess_origin(const struct ws_conn *c)
{
    return c->sess && c->sess->olen ? c->sess->data : NULL;
}
static const char *sess_sub(const struct ws_conn *c)
{
    return c->sess->data + c->sess->olen + 1;
}
static const char *sess_name(const struct ws_conn *c)
{
    return c->sess->data + c->sess->olen + 1 + c->sess->slen + 1;
}

/* ------------------------------------------------------------------------ */
/* Registry: conversation -> connections, and the per-IP counts */

static void conv_register(struct ws_inst *wi, struct ws_conn *c, const char *id)
{
    size_t n = strlen(id);
    uint32_t h = fnv1a(id, n);
    pthread_mutex_lock(&wi->lock);
    struct ws_conv **pp = &wi->conv[h % CONV_BUCKETS], *v;
    for (v = *pp; v; v = v->next)
        if (v->hash == h && !strcmp(v->id, id))
            break;
    if (!v) {
        v = malloc(sizeof *v + n + 1);
        if (v) {
            v->hash = h;
            link_init(&v->conns);
            memcpy(v->id, id, n + 1);
            v->next = *pp;
            *pp = v;
        }
    }
    if (v) {
        link_tail(&v->conns, &c->clnk);
        c->conv = v;
    }
    pthread_mutex_unlock(&wi->lock);
}

/* The conversation entry (and its id) stays valid until the last connection
 * leaves; a connection reads c->conv->id only while registered. */
static void conv_unregister(struct ws_inst *wi, struct ws_conn *c)
{
    if (!c->conv)
        return;
    pthread_mutex_lock(&wi->lock);
    struct ws_conv *v = c->conv;
    link_del(&c->clnk);
    c->conv = NULL;
    if (link_empty(&v->conns)) {
        struct ws_conv **pp = &wi->conv[v->hash % CONV_BUCKETS];
        while (*pp != v)
            pp = &(*pp)->next;
        *pp = v->next;
        free(v);
    }
    pthread_mutex_unlock(&wi->lock);
}

/* Takes a slot for ip; NULL when over the limit (or out of memory). */
static struct ws_ipent *ip_take(struct ws_inst *wi, const char *ip)
{
    size_t n = strlen(ip);
    uint32_t h = fnv1a(ip, n) % IP_BUCKETS;
    pthread_mutex_lock(&wi->lock);
    struct ws_ipent *e;
    for (e = wi->ipt[h]; e; e = e->next)
        if (!strcmp(e->ip, ip))
            break;
    if (!e && (e = malloc(sizeof *e + n + 1))) {
        e->count = 0;
        memcpy(e->ip, ip, n + 1);
        e->next = wi->ipt[h];
        wi->ipt[h] = e;
    }
    if (e && e->count >= wi->max_per_ip)
        e = NULL;
    else if (e)
        e->count++;
    pthread_mutex_unlock(&wi->lock);
    return e;
}

static void ip_release(struct ws_inst *wi, struct ws_ipent *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&wi->lock);
    if (--e->count == 0) {
        struct ws_ipent **pp = &wi->ipt[fnv1a(e->ip, strlen(e->ip)) % IP_BUCKETS];
        while (*pp != e)
            pp = &(*pp)->next;
        *pp = e->next;
        free(e);
    }
    pthread_mutex_unlock(&wi->lock);
}

/* ------------------------------------------------------------------------ */
/* Writing */

static void conn_finish(struct ws_conn *c);
static void conn_update_events(struct ws_conn *c);
static void conn_close(struct ws_conn *c, unsigned code, const char *why);
static void replay_next(struct ws_conn *c);
static void resume_release(struct ws_conn *c);
static const struct ws_rx_ops ws_ops;

/* The slow-reader rule: the queue is over its limits. The close frame can
 * only go out at a frame boundary, and the socket is full anyway, so this is
 * best effort; the frames it held stay in the journal for a resume. */
static void conn_overflow(struct ws_conn *c)
{
    struct ws_inst *wi = c->ls->wi;
    wi->host->metric_add(wi->m_slow, 1);
    LOG(wi, KFG_LOG_INFO, "websocket: closing a client that does not read (1013): send queue "
        "%u frames / %zu bytes over send_queue_max %u / send_queue_bytes %zu",
        c->sq ? c->sq->n : 0, c->sq ? c->sq->bytes : 0, wi->sq_max, wi->sq_bytes);
    if (c->sq && c->sq->head && c->sq->head->off == 0) {
        static const uint8_t f[] = { 0x88, 0x02, 0x03, 0xF5 };   /* close 1013 */
        ssize_t w = send(c->fd, f, sizeof f, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)w;
    }
    conn_finish(c);
}

static int sq_add(struct ws_conn *c, const uint8_t *p, size_t n, struct ws_out *o)
{
    struct ws_inst *wi = c->ls->wi;
    if (!c->sq && !(c->sq = calloc(1, sizeof *c->sq)))
        return -1;
    struct ws_sq *q = c->sq;
    if (q->n + 1 > wi->sq_max || q->bytes + n > wi->sq_bytes) {
        conn_overflow(c);
        return -1;
    }
    struct ws_qent *e = malloc(sizeof *e + (o ? 0 : n));
    if (!e)
        return -1;
    e->next = NULL;
    e->o = o;
    if (o) {
        atomic_fetch_add_explicit(&o->ref, 1, memory_order_relaxed);
        e->off = (uint32_t)(p - o->frame[c->sub]);
        e->len = (uint32_t)n + e->off;
    } else {
        e->off = 0;
        e->len = (uint32_t)n;
        memcpy(e->data, p, n);
    }
    if (q->tail)
        q->tail->next = e;
    else
        q->head = e;
    q->tail = e;
    q->n++;
    q->bytes += n;
    return 0;
}

/* Sends one frame (p inside o's frame when o is given). Never blocks. */
static void conn_send(struct ws_conn *c, const uint8_t *p, size_t n, struct ws_out *o)
{
    if (c->state == S_DEAD || c->fd < 0)
        return;
    if (!c->sq || !c->sq->head) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w == (ssize_t)n)
            return;
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_finish(c);
                return;
            }
            w = 0;
        }
        p += w;
        n -= (size_t)w;
    }
    if (sq_add(c, p, n, o) < 0) {
        if (c->state != S_DEAD)
            conn_finish(c);
        return;
    }
    if (!c->wr_armed) {
        c->wr_armed = 1;
        conn_update_events(c);
    }
}

static void conn_send_json(struct ws_conn *c, json_t *obj)
{
    struct ws_obuf b = { 0 };
    if (obj && ws_encode(obj, c->sub, &b) == 0)
        conn_send(c, b.p, b.len, NULL);
    ws_obuf_free(&b);
    json_decref(obj);
}

static void conn_error(struct ws_conn *c, const char *code, const struct ws_cstr *id,
                       const char *detail, int64_t retry_ms)
{
    json_t *e = json_pack("{s:s, s:s}", "type", "error", "code", code);
    if (!e)
        return;
    if (id && id->p)
        json_object_set_new(e, "id", json_stringn(id->p, id->n));
    if (detail)
        json_object_set_new(e, "detail", json_string(detail));
    if (retry_ms >= 0)
        json_object_set_new(e, "retry_after_ms", json_integer(retry_ms));
    conn_send_json(c, e);
}

static void flush(struct ws_conn *c)
{
    struct ws_sq *q = c->sq;
    while (q && q->head) {
        struct ws_qent *e = q->head;
        const uint8_t *base = e->o ? e->o->frame[c->sub] : e->data;
        size_t left = e->len - e->off;
        ssize_t w = send(c->fd, base + e->off, left, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
                return;
            conn_finish(c);
            return;
        }
        e->off += (uint32_t)w;
        q->bytes -= (size_t)w;
        if ((size_t)w < left)
            return;
        q->head = e->next;
        if (!q->head)
            q->tail = NULL;
        q->n--;
        qent_free(e);
    }
    free(c->sq);                /* drained: an idle connection keeps no queue */
    c->sq = NULL;
    c->wr_armed = 0;
    conn_update_events(c);
    if (c->close_when_drained) {
        conn_finish(c);
        return;
    }
    if (c->shut_when_drained) {
        c->shut_when_drained = 0;
        shutdown(c->fd, SHUT_WR);
    }
    if (c->rp && c->rp->waiting && c->state == S_OPEN)
        replay_next(c);
}

/* ------------------------------------------------------------------------ */
/* Lifecycle of a connection */

static void on_event(evutil_socket_t fd, short what, void *arg);

static void conn_update_events(struct ws_conn *c)
{
    if (c->state == S_DEAD)
        return;
    short want = EV_PERSIST | (c->rd_paused ? 0 : EV_READ) | (c->wr_armed ? EV_WRITE : 0);
    if (event_initialized(&c->ev)) {
        if (event_get_events(&c->ev) == want && event_pending(&c->ev, EV_READ | EV_WRITE, NULL))
            return;
        event_del(&c->ev);
    }
    event_assign(&c->ev, c->ls->base, c->fd, want, on_event, c);
    if (want & (EV_READ | EV_WRITE))
        event_add(&c->ev, NULL);
}

static void list_move(struct ws_conn *c, struct ws_link *to)
{
    link_del(&c->lnk);
    link_tail(to, &c->lnk);
}

/* Closes TCP and releases everything but the struct (references may still
 * point at it). Safe from inside the receiver: rx buffers are then freed
 * when ws_rx_input has returned. */
static void conn_finish(struct ws_conn *c)
{
    if (c->state == S_DEAD)
        return;
    struct ws_inst *wi = c->ls->wi;
    c->state = S_DEAD;
    conv_unregister(wi, c);
    link_del(&c->lnk);
    if (event_initialized(&c->ev))
        event_del(&c->ev);
    if (c->fd >= 0) {
        /* close alone sends the FIN (no shutdown: one syscall less per
         * connection; the fd is never shared). */
        close(c->fd);
        c->fd = -1;
    }
    if (!c->in_rx)
        ws_rx_free(&c->rx);
    if (c->sq) {
        while (c->sq->head) {
            struct ws_qent *e = c->sq->head;
            c->sq->head = e->next;
            qent_free(e);
        }
        free(c->sq);
        c->sq = NULL;
    }
    if (c->rp) {
        if (!c->rp->running)
            resume_release(c);   /* else replay_done gives the slot back */
        while (c->rp->held) {
            struct ws_qent *e = c->rp->held;
            c->rp->held = e->next;
            qent_free(e);
        }
        free(c->rp);
        c->rp = NULL;
    }
    free(c->sess);
    c->sess = NULL;
    ip_release(wi, c->ip);
    c->ip = NULL;
    atomic_fetch_sub(&wi->nconns, 1);
    wi->host->metric_add(wi->m_conns, -1);
    conn_unref(c);              /* the loop's own reference */
}

/* Starts the closing handshake: our close frame, then wait (closing list)
 * for the client's, at most close_timeout_ms. */
static void conn_close(struct ws_conn *c, unsigned code, const char *why)
{
    if (c->state == S_DEAD || c->state == S_CLOSING)
        return;
    struct ws_inst *wi = c->ls->wi;
    if (code == WS_CLOSE_PROTOCOL || code == WS_CLOSE_INVALID || code == WS_CLOSE_TOO_BIG ||
        code == WS_CLOSE_UNSUPPORTED)
        wi->host->metric_add(wi->m_proto_err, 1);
    LOG(wi, code == WS_CLOSE_NORMAL || code == WS_CLOSE_GOING_AWAY ? KFG_LOG_DEBUG : KFG_LOG_INFO,
        "websocket: closing %s with %u: %s", c->conv ? c->conv->id : "(no hello)", code,
        why ? why : "");
    conv_unregister(wi, c);     /* no pushes into a closing connection */
    uint8_t f[2 + 125];
    size_t rl = why ? strlen(why) : 0;
    if (rl > 123)
        rl = 123;
    while (rl && ((uint8_t)why[rl] & 0xC0) == 0x80)
        rl--;                    /* do not cut a UTF-8 sequence */
    if (rl && !ws_utf8_valid((const uint8_t *)why, rl)) {
        why = "invalid frame";   /* a parser's text quoting the input */
        rl = strlen(why);
    }
    f[0] = 0x88;
    f[1] = (uint8_t)(2 + rl);
    uint8_t pl[125] = { (uint8_t)(code >> 8), (uint8_t)code };
    if (rl)
        memcpy(pl + 2, why, rl);
    memcpy(f + 2, pl, 2 + rl);
    c->state = S_CLOSING;
    c->t = now_ms();
    list_move(c, &c->ls->closing);
    if (c->rd_paused) {          /* read on: the client's close frame must be seen */
        c->rd_paused = 0;
        conn_update_events(c);
    }
    conn_send(c, f, 4 + rl, NULL);
}

/* Fails the connection (RFC 6455 §7.1.7) after a violation of the framing:
 * the receiver discards everything from here on, so the client's close frame
 * would not be seen; our close frame is followed by a FIN, and the client's
 * FIN (or close_timeout_ms) ends it. */
static void conn_fail(struct ws_conn *c, unsigned code, const char *why)
{
    conn_close(c, code, why);
    if (c->state != S_CLOSING)
        return;
    if (c->sq && c->sq->head)
        c->shut_when_drained = 1;
    else
        shutdown(c->fd, SHUT_WR);
}

/* ------------------------------------------------------------------------ */
/* Outbound frames: rendering an envelope */

/* The string fields worth asking for, per kind (each msg_part_get is a
 * lookup in the host; a text part needs two, not fourteen). */
static const char *const strs_text[] = { "text", "format", NULL };
static const char *const strs_media[] = { "url", "media_id", "mime", "name", "thumb_url",
                                          "thumb_media_id", "sha256", NULL };
static const char *const strs_link[] = { "url", "title", "description", "thumb_url", NULL };
static const char *const strs_location[] = { "label", NULL };
static const char *const strs_event[] = { "name", "key", "value", NULL };
static const char *const strs_any[] = {
    "text", "format", "url", "media_id", "mime", "name", "title", "description",
    "label", "thumb_url", "thumb_media_id", "key", "value", "sha256", NULL,
};

static const char *const *part_strs(const char *kind)
{
    if (!kind)
        return strs_any;
    if (!strcmp(kind, "text"))
        return strs_text;
    if (!strcmp(kind, "image") || !strcmp(kind, "voice") || !strcmp(kind, "video") ||
        !strcmp(kind, "file"))
        return strs_media;
    if (!strcmp(kind, "link"))
        return strs_link;
    if (!strcmp(kind, "location"))
        return strs_location;
    if (!strcmp(kind, "event"))
        return strs_event;
    return strs_any;
}

static json_t *render(struct ws_inst *wi, const struct kfg_msg *m, uint64_t seq)
{
    const struct kfg_host *h = wi->host;
    struct kfg_str type = h->msg_get(m, KFG_ENV_TYPE);
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "type", type.ptr ? json_stringn(type.ptr, type.len)
                                            : json_string("message"));
    if (seq)
        json_object_set_new(o, "seq", json_integer((json_int_t)seq));
    struct kfg_str s = h->msg_get(m, KFG_ENV_ID);
    if (s.ptr)
        json_object_set_new(o, "msg_id", json_stringn(s.ptr, s.len));
    s = h->msg_get(m, KFG_ENV_REPLY_TO);
    if (s.ptr)
        json_object_set_new(o, "reply_to", json_stringn(s.ptr, s.len));
    static const char *const skeys[][2] = {
        { "id", KFG_ENV_SENDER_ID }, { "name", KFG_ENV_SENDER_NAME }, { "role", KFG_ENV_SENDER_ROLE },
    };
    json_t *snd = NULL;
    for (size_t i = 0; i < 3; i++) {
        s = h->msg_get(m, skeys[i][1]);
        if (!s.ptr)
            continue;
        if (!snd)
            snd = json_object();
        json_object_set_new(snd, skeys[i][0], json_stringn(s.ptr, s.len));
    }
    if (snd)
        json_object_set_new(o, "sender", snd);
    int64_t ts;
    if (wi->have_11 && h->msg_get_int(m, KFG_ENV_TS_ACCEPTED, &ts) == KFG_OK)
        json_object_set_new(o, "ts", json_integer(ts));
    size_t np = h->msg_part_count(m);
    json_t *parts = np ? json_array() : NULL;
    int have_text = 0, have_event = 0;
    for (size_t i = 0; i < np; i++) {
        const char *kind = h->msg_part_kind(m, i);
        json_t *p = json_pack("{s:s}", "kind", kind ? kind : "");
        if (!p)
            continue;
        const char *const *keys = part_strs(kind);
        for (size_t k = 0; keys[k]; k++) {
            s = h->msg_part_get(m, i, keys[k]);
            if (s.ptr)
                json_object_set_new(p, keys[k], json_stringn(s.ptr, s.len));
        }
        if (kind && !strcmp(kind, "text") && !have_text && json_object_get(p, "text")) {
            json_object_set(o, "text", json_object_get(p, "text"));
            have_text = 1;
        }
        if (kind && !strcmp(kind, "event") && !have_event) {
            have_event = 1;
            if (json_object_get(p, "name"))
                json_object_set(o, "name", json_object_get(p, "name"));
            if (json_object_get(p, "value"))
                json_object_set(o, "value", json_object_get(p, "value"));
        }
        json_array_append_new(parts, p);
    }
    if (parts)
        json_object_set_new(o, "parts", parts);
    return o;
}

static struct ws_out *out_make(json_t *obj, uint64_t seq, int need_json, int need_mp)
{
    struct ws_out *o = calloc(1, sizeof *o);
    if (!o)
        return NULL;
    atomic_init(&o->ref, 1);
    o->seq = seq;
    for (int sub = 0; sub < 2; sub++) {
        if (!(sub ? need_mp : need_json))
            continue;
        struct ws_obuf b = { 0 };
        if (ws_encode(obj, sub, &b) < 0) {
            ws_obuf_free(&b);
            out_unref(o);
            return NULL;
        }
        o->frame[sub] = b.p;
        o->len[sub] = (uint32_t)b.len;
    }
    return o;
}

/* A live or replayed frame for c: in seq order, never twice. */
static void conn_push(struct ws_conn *c, struct ws_out *o)
{
    if (c->state != S_OPEN || !o->frame[c->sub])
        return;
    if (o->seq && o->seq <= c->last_seq)
        return;
    if (o->seq)
        c->last_seq = o->seq;
    c->ls->wi->host->metric_add(c->ls->wi->m_out, 1);
    conn_send(c, o->frame[c->sub], o->len[c->sub], o);
}

/* ------------------------------------------------------------------------ */
/* Resume (spec §6) */

/* Gives the loop's resume slot back and starts the next waiting resume. */
static void resume_release(struct ws_conn *c)
{
    struct ws_loopst *ls = c->ls;
    if (!c->resume_slot)
        return;
    c->resume_slot = 0;
    ls->resumes--;
    int stopping = atomic_load(&ls->wi->stopping);
    while (ls->wait_head && (stopping || ls->resumes < ls->wi->resume_conc)) {
        struct ws_wait *w = ls->wait_head;
        ls->wait_head = w->next;
        if (!ls->wait_head)
            ls->wait_tail = NULL;
        struct ws_conn *n = w->c;
        free(w);
        if (n->state == S_OPEN && n->rp && !stopping) {
            n->resume_slot = 1;
            ls->resumes++;
            replay_next(n);
        }
        conn_unref(n);
    }
}

/* Starts c's resume now or queues it behind the others of its loop. */
static void resume_start(struct ws_conn *c)
{
    struct ws_loopst *ls = c->ls;
    if (ls->resumes < ls->wi->resume_conc) {
        c->resume_slot = 1;
        ls->resumes++;
        replay_next(c);
        return;
    }
    struct ws_wait *w = malloc(sizeof *w);
    if (!w) {
        conn_close(c, WS_CLOSE_TRY_AGAIN, "out of memory");
        return;
    }
    conn_ref(c);
    w->c = c;
    w->next = NULL;
    if (ls->wait_tail)
        ls->wait_tail->next = w;
    else
        ls->wait_head = w;
    ls->wait_tail = w;
}

static void replay_finish(struct ws_conn *c, int truncated)
{
    struct ws_replay *rp = c->rp;
    c->rp = NULL;
    json_t *r = json_pack("{s:s, s:I, s:I, s:b}", "type", "resumed", "last_seq",
                          (json_int_t)c->last_seq, "count", (json_int_t)rp->count,
                          "truncated", truncated);
    resume_release(c);
    conn_send_json(c, r);
    while (rp->held) {
        struct ws_qent *e = rp->held;
        rp->held = e->next;
        if (c->state == S_OPEN)
            conn_push(c, e->o);
        qent_free(e);
    }
    free(rp);
}

static int replay_each(void *arg, uint64_t seq, const struct kfg_msg *m)
{
    struct ws_conn *c = arg;
    if (c->state != S_OPEN || !c->rp)
        return 1;
    struct ws_inst *wi = c->ls->wi;
    if (seq <= c->last_seq)
        return 0;
    struct kfg_str type = wi->host->msg_get(m, KFG_ENV_TYPE);
    if (type.ptr && type.len == 6 && !memcmp(type.ptr, "typing", 6)) {
        c->last_seq = seq;       /* a stale typing indication is worth nothing */
        return 0;
    }
    json_t *obj = render(wi, m, seq);
    struct ws_out *o = obj ? out_make(obj, seq, c->sub == WS_SUB_JSON, c->sub == WS_SUB_MSGPACK)
                           : NULL;
    json_decref(obj);
    if (!o)
        return 1;
    c->rp->count++;
    conn_push(c, o);
    out_unref(o);
    if (c->state != S_OPEN || c->rp->count >= wi->resume_max)
        return 1;
    /* A replay must never trip the slow-reader rule by itself: past half the
     * queue's limits the chunk ends here and goes on once the queue drained. */
    return c->sq && (c->sq->n * 2 >= wi->sq_max || c->sq->bytes * 2 >= wi->sq_bytes);
}

static void replay_done(void *arg, int result, uint64_t next, int more)
{
    struct ws_conn *c = arg;
    struct ws_inst *wi = c->ls->wi;
    if (c->state == S_OPEN && c->rp) {
        c->rp->running = 0;
        c->rp->next = next;
        if (result != KFG_OK) {
            LOG(wi, KFG_LOG_WARN, "websocket: resume of %s failed (%d); the client gets "
                "resumed with truncated=true", c->conv ? c->conv->id : "?", result);
            replay_finish(c, 1);
        } else if (!more) {
            replay_finish(c, 0);
        } else if (c->rp->count >= wi->resume_max) {
            replay_finish(c, 1);
        } else if (c->sq && c->sq->head) {
            c->rp->waiting = 1;  /* paced by the send queue: flush() goes on */
        } else {
            replay_next(c);
        }
    } else {
        resume_release(c);       /* it closed while its chunk was read */
    }
    conn_unref(c);
}

static void replay_next(struct ws_conn *c)
{
    struct ws_inst *wi = c->ls->wi;
    struct ws_replay *rp = c->rp;
    rp->waiting = 0;
    uint32_t left = wi->resume_max - rp->count;
    struct kfg_replay_query q = {
        .from_seq = rp->next,
        .max = left < REPLAY_CHUNK ? left : REPLAY_CHUNK,
        .directions = KFG_REPLAY_OUT,
        .conversation = c->conv->id,
    };
    conn_ref(c);
    rp->running = 1;
    int r = wi->host->replay(wi->ins, &q, replay_each, replay_done, c);
    if (r != KFG_OK) {
        rp->running = 0;
        conn_unref(c);
        LOG(wi, KFG_LOG_WARN, "websocket: resume of %s could not start (%d)", c->conv->id, r);
        replay_finish(c, 1);
    }
}

/* ------------------------------------------------------------------------ */
/* Inbound: hello, messages, events */

struct ws_emit {
    struct ws_conn *c;
    uint8_t idlen;
    char id[WS_ID_MAX + 1];
};

static void emit_finish(struct ws_emit *e, int result, uint64_t seq, const char *id,
                        int duplicate, const char *reason)
{
    struct ws_conn *c = e->c;
    if (c->state == S_OPEN && e->idlen) {
        struct ws_cstr cid = { e->id, e->idlen };
        if (result == KFG_OK) {
            json_t *a = json_pack("{s:s, s:s#, s:I, s:b}", "type", "ack", "id", e->id,
                                  (int)e->idlen, "seq", (json_int_t)seq, "duplicate", duplicate);
            if (a && id)
                json_object_set_new(a, "msg_id", json_string(id));
            conn_send_json(c, a);
        } else if (result == KFG_EDROPPED) {
            json_t *a = json_pack("{s:s, s:s#, s:b}", "type", "ack", "id", e->id,
                                  (int)e->idlen, "dropped", 1);
            if (a && reason)
                json_object_set_new(a, "reason", json_string(reason));
            conn_send_json(c, a);
        } else if (result == KFG_AGAIN || result == KFG_ESTOPPED) {
            conn_error(c, "unavailable", &cid, reason ? reason : "the gateway is busy", 1000);
        } else {
            conn_error(c, "internal", &cid, reason ? reason : "emit failed", 1000);
        }
    }
    if (c->inflight)
        c->inflight--;
    if (c->state == S_OPEN && c->rd_paused && c->inflight < c->ls->wi->max_inflight) {
        c->rd_paused = 0;
        conn_update_events(c);
        /* frames read before the pause: go on with them */
        const char *why;
        c->in_rx = 1;
        int r = ws_rx_input(&c->rx, NULL, 0, &ws_ops, c, &why);
        c->in_rx = 0;
        if (r == WS_RX_PAUSE && c->state == S_OPEN) {
            c->rd_paused = 1;
            conn_update_events(c);
        } else if (r >= 1000) {
            conn_fail(c, (unsigned)r, why);
        }
        if (c->state == S_DEAD)
            ws_rx_free(&c->rx);
    }
    free(e);
    conn_unref(c);
}

static void on_emitted2(void *arg, const struct kfg_emit_result *r)
{
    emit_finish(arg, r->result, r->seq, r->id, r->duplicate, r->reason);
}

static void on_emitted(void *arg, int result, uint64_t seq, const char *reason)
{
    emit_finish(arg, result, seq, NULL, 0, reason);
}

static int set_part(const struct kfg_host *h, struct kfg_msg *m, int pi, const char *key,
                    json_t *v)
{
    if (json_is_string(v))
        return h->msg_part_set(m, (size_t)pi, key, json_string_value(v), json_string_length(v));
    char b[40];
    int n = json_is_integer(v) ? snprintf(b, sizeof b, "%" JSON_INTEGER_FORMAT, json_integer_value(v))
                               : snprintf(b, sizeof b, "%.17g", json_number_value(v));
    return h->msg_part_set(m, (size_t)pi, key, b, (size_t)n);
}

/* Builds and emits the envelope of a message or event frame. Returns 0, or
 * WS_RX_PAUSE when the in-flight limit is reached. */
static int handle_inbound(struct ws_conn *c, struct ws_cframe *f)
{
    struct ws_inst *wi = c->ls->wi;
    const struct kfg_host *h = wi->host;
    /* the rate bucket */
    uint32_t t = (uint32_t)now_ms();
    uint64_t tok = c->rl_tokens + (uint64_t)(uint32_t)(t - c->rl_t) * wi->rate;
    uint64_t cap = (uint64_t)wi->burst * 1000;
    c->rl_tokens = (uint32_t)(tok > cap ? cap : tok);
    c->rl_t = t;
    if (c->rl_tokens < 1000) {
        int64_t wait = (1000 - c->rl_tokens + wi->rate - 1) / wi->rate;
        char d[64];
        snprintf(d, sizeof d, "over %u messages/s", wi->rate);
        conn_error(c, "rate_limited", &f->id, d, wait);
        return 0;
    }
    c->rl_tokens -= 1000;

    struct kfg_msg *m = h->msg_new(wi->ins, f->type == WS_C_EVENT ? KFG_ENV_TYPE_EVENT
                                                                  : KFG_ENV_TYPE_MESSAGE);
    if (!m) {
        conn_error(c, "internal", &f->id, "out of memory", 1000);
        return 0;
    }
    const char *conv = c->conv->id;
    const char *name = c->anonymous ? NULL : sess_name(c);
    int r = kfg_env_set_conversation(h, m, conv, strlen(conv), KFG_ENV_CONV_DIRECT);
    if (r == KFG_OK)
        r = kfg_env_set_sender(h, m, sess_sub(c), strlen(sess_sub(c)),
                               name && *name ? name : NULL, KFG_ENV_ROLE_CUSTOMER);
    if (r == KFG_OK && sess_origin(c))
        r = kfg_env_set_channel_data(h, m, "origin", sess_origin(c), c->sess->olen);
    if (r == KFG_OK && f->id.p) {
        struct kfg_str parts[2] = { { conv, strlen(conv) }, { f->id.p, f->id.n } };
        r = kfg_env_set_idem_parts(h, m, parts, 2);
        if (r == KFG_OK)
            r = kfg_env_set_channel_msg_id(h, m, f->id.p, f->id.n);
    }
    if (r == KFG_OK && f->reply_to.p)
        r = h->msg_set(m, KFG_ENV_REPLY_TO, f->reply_to.p, f->reply_to.n);
    if (r == KFG_OK && f->type == WS_C_MESSAGE && f->text.p) {
        int pi = h->msg_part_add(m, "text");
        r = pi < 0 ? pi : h->msg_part_set(m, (size_t)pi, "text", f->text.p, f->text.n);
    } else if (r == KFG_OK && f->type == WS_C_MESSAGE) {
        size_t i;
        json_t *p;
        json_array_foreach(f->parts, i, p) {
            int pi = h->msg_part_add(m, json_string_value(json_object_get(p, "kind")));
            if (pi < 0) {
                r = pi;
                break;
            }
            const char *k;
            json_t *v;
            json_object_foreach(p, k, v) {
                if (strcmp(k, "kind") && (r = set_part(h, m, pi, k, v)) != KFG_OK)
                    break;
            }
            if (r != KFG_OK)
                break;
        }
    } else if (r == KFG_OK) {
        int pi = h->msg_part_add(m, "event");
        r = pi < 0 ? pi : h->msg_part_set(m, (size_t)pi, "name", f->name.p, f->name.n);
        if (r == KFG_OK && f->value.p)
            r = h->msg_part_set(m, (size_t)pi, "value", f->value.p, f->value.n);
        else if (r == KFG_OK && f->has_seq) {
            char b[24];
            int n = snprintf(b, sizeof b, "%llu", (unsigned long long)f->seq);
            r = h->msg_part_set(m, (size_t)pi, "value", b, (size_t)n);
        }
    }
    if (r != KFG_OK) {
        h->msg_free(m);
        conn_error(c, "bad_request", &f->id, "the gateway refused a field of this frame", -1);
        return 0;
    }
    struct ws_emit *e = malloc(sizeof *e);
    if (!e) {
        h->msg_free(m);
        conn_error(c, "internal", &f->id, "out of memory", 1000);
        return 0;
    }
    e->c = c;
    e->idlen = (uint8_t)f->id.n;
    if (f->id.p)
        memcpy(e->id, f->id.p, f->id.n);
    e->id[e->idlen] = 0;
    conn_ref(c);
    r = wi->have_11 ? h->emit2(wi->ins, m, on_emitted2, e) : h->emit(wi->ins, m, on_emitted, e);
    if (r != KFG_OK) {
        h->msg_free(m);
        free(e);
        conn_unref(c);
        if (r == KFG_AGAIN || r == KFG_ESTOPPED)
            conn_error(c, "unavailable", &f->id, "the gateway is over a limit; resend later", 1000);
        else
            conn_error(c, "internal", &f->id, "emit failed", 1000);
        return 0;
    }
    h->metric_add(wi->m_in, 1);
    c->inflight++;
    return c->inflight >= wi->max_inflight ? WS_RX_PAUSE : 0;
}

static int anon_conv_ok(const char *s, size_t n)
{
    if (n < 5 + 16 || n > 5 + 128 || memcmp(s, "anon:", 5))
        return 0;
    for (size_t i = 5; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-'))
            return 0;
    }
    return 1;
}

static void refuse_hello(struct ws_conn *c, const char *code, unsigned close_code, const char *why)
{
    conn_error(c, code, NULL, why, -1);
    conn_close(c, close_code, why);
}

static void handle_hello(struct ws_conn *c, struct ws_cframe *f)
{
    struct ws_inst *wi = c->ls->wi;
    struct ws_visitor v;
    char conv[5 + WS_IDENT_MAX + 1];
    const char *sub, *name = "";
    if (f->token.p) {
        const char *why = NULL;
        int r = ws_token_verify(wi->secret, wi->secret_len, f->token.p, f->token.n,
                                (int64_t)time(NULL), wi->name, &v, &why);
        if (r == WS_TOK_EXPIRED)
            return refuse_hello(c, "token_expired", WS_CLOSE_TOKEN_EXPIRED, why);
        if (r != WS_TOK_OK)
            return refuse_hello(c, "token_invalid", WS_CLOSE_TOKEN_INVALID, why);
        if (f->conversation.p && (f->conversation.n != strlen(v.conv) ||
                                  memcmp(f->conversation.p, v.conv, f->conversation.n)))
            return refuse_hello(c, "forbidden", WS_CLOSE_FORBIDDEN,
                                "conversation does not match the token");
        snprintf(conv, sizeof conv, "%s", v.conv);
        sub = v.sub;
        name = v.name;
    } else {
        if (!wi->allow_anon)
            return refuse_hello(c, "forbidden", WS_CLOSE_FORBIDDEN,
                                "anonymous visitors are not allowed: send a token");
        if (f->conversation.p) {
            if (!anon_conv_ok(f->conversation.p, f->conversation.n))
                return refuse_hello(c, "forbidden", WS_CLOSE_FORBIDDEN,
                                    "an anonymous conversation is anon: + 16..128 of [A-Za-z0-9_-]");
            snprintf(conv, sizeof conv, "%.*s", (int)f->conversation.n, f->conversation.p);
        } else {
            static const char a[] =
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            uint8_t rnd[22];
            if (RAND_bytes(rnd, sizeof rnd) != 1)
                return refuse_hello(c, "internal", WS_CLOSE_INTERNAL, "no randomness");
            memcpy(conv, "anon:", 5);
            for (size_t i = 0; i < 22; i++)
                conv[5 + i] = a[rnd[i] & 63];
            conv[27] = 0;
        }
        sub = conv;
        c->anonymous = 1;
    }
    /* the identity block grows from the origin the handshake stored */
    size_t olen = c->sess ? c->sess->olen : 0, slen = strlen(sub), nlen = strlen(name);
    struct ws_sess *s = malloc(sizeof *s + olen + 1 + slen + 1 + nlen + 1);
    if (!s)
        return refuse_hello(c, "internal", WS_CLOSE_INTERNAL, "out of memory");
    s->olen = (uint16_t)olen;
    s->slen = (uint16_t)slen;
    s->nlen = (uint16_t)nlen;
    if (olen)
        memcpy(s->data, c->sess->data, olen);
    s->data[olen] = 0;
    memcpy(s->data + olen + 1, sub, slen + 1);
    memcpy(s->data + olen + 1 + slen + 1, name, nlen + 1);
    free(c->sess);
    c->sess = s;

    conv_register(wi, c, conv);
    if (!c->conv)
        return refuse_hello(c, "internal", WS_CLOSE_INTERNAL, "out of memory");
    c->state = S_OPEN;
    c->t = now_ms();
    list_move(c, &c->ls->open);
    c->rl_tokens = wi->burst * 1000;
    c->rl_t = (uint32_t)c->t;

    int resume = f->has_resume && wi->have_11;
    json_t *w = json_pack("{s:s, s:s, s:s, s:b, s:b, s:I, s:I, s:I}", "type", "welcome",
                          "conversation", conv, "visitor", sub, "anonymous", c->anonymous,
                          "resume", resume, "max_message", (json_int_t)wi->max_message,
                          "rate", (json_int_t)wi->rate, "ping_interval_ms",
                          (json_int_t)wi->ping_ms);
    conn_send_json(c, w);
    if (c->state != S_OPEN)
        return;
    if (resume) {
        c->rp = calloc(1, sizeof *c->rp);
        if (!c->rp)
            return conn_close(c, WS_CLOSE_INTERNAL, "out of memory");
        c->last_seq = f->resume_from;
        c->rp->next = f->resume_from + 1;
        wi->host->metric_add(wi->m_resumes, 1);
        resume_start(c);
    }
}

/* ------------------------------------------------------------------------ */
/* Receiver callbacks */

static int rx_result(struct ws_conn *c)
{
    return c->state == S_DEAD ? WS_RX_CLOSED : 0;
}

static int on_message(void *arg, int op, uint8_t *data, size_t len)
{
    struct ws_conn *c = arg;
    if (c->state == S_CLOSING || c->state == S_DEAD)
        return rx_result(c);     /* after our close frame data means nothing */
    if ((op == WS_OP_TEXT) != (c->sub == WS_SUB_JSON)) {
        conn_close(c, WS_CLOSE_UNSUPPORTED, c->sub == WS_SUB_JSON
                                                ? "binary frame on kfgate.v1.json"
                                                : "text frame on kfgate.v1.msgpack");
        return rx_result(c);
    }
    struct ws_cframe f;
    char err[160];
    int ok = ws_cframe_parse(data, len, c->sub, &f, err, sizeof err) == 0;
    int r = 0;
    if (c->state == S_HELLO) {
        if (ok && f.type == WS_C_HELLO) {
            handle_hello(c, &f);
        } else {
            conn_error(c, ok ? "hello_required" : "bad_request", NULL,
                       ok ? "the first frame must be a hello" : err, -1);
            conn_close(c, WS_CLOSE_POLICY, ok ? "the first frame must be a hello" : err);
        }
    } else if (!ok) {
        conn_error(c, "bad_request", &f.id, err, -1);
    } else if (f.type == WS_C_HELLO) {
        conn_error(c, "bad_request", NULL, "hello was already sent", -1);
    } else {
        r = handle_inbound(c, &f);
    }
    ws_cframe_free(&f);
    return c->state == S_DEAD ? WS_RX_CLOSED : r;
}

static int on_control(void *arg, int op, unsigned code, uint8_t *data, size_t len)
{
    struct ws_conn *c = arg;
    if (op == WS_OP_PING) {
        if (c->state == S_HELLO || c->state == S_OPEN) {
            uint8_t f[2 + 125];
            f[0] = 0x80 | WS_OP_PONG;
            f[1] = (uint8_t)len;
            memcpy(f + 2, data, len);
            conn_send(c, f, 2 + len, NULL);
        }
        return rx_result(c);
    }
    if (op == WS_OP_PONG)
        return rx_result(c);
    /* close */
    if (c->state == S_CLOSING) {     /* the answer to ours */
        if (c->sq && c->sq->head)
            c->close_when_drained = 1;
        else
            conn_finish(c);
        return WS_RX_CLOSED;
    }
    uint8_t f[4] = { 0x88, 0 };
    size_t fl = 2;
    if (code != WS_CLOSE_NO_STATUS) {
        f[1] = 2;
        f[2] = (uint8_t)(code >> 8);
        f[3] = (uint8_t)code;
        fl = 4;
    }
    conv_unregister(c->ls->wi, c);
    c->state = S_CLOSING;
    c->t = now_ms();
    list_move(c, &c->ls->closing);
    conn_send(c, f, fl, NULL);
    if (c->state != S_DEAD) {
        if (c->sq && c->sq->head)
            c->close_when_drained = 1;
        else
            conn_finish(c);
    }
    return WS_RX_CLOSED;
}

static const struct ws_rx_ops ws_ops = { on_message, on_control };

static void conn_input(struct ws_conn *c, uint8_t *buf, size_t n)
{
    const char *why;
    c->in_rx = 1;
    int r = ws_rx_input(&c->rx, buf, n, &ws_ops, c, &why);
    c->in_rx = 0;
    if (c->state == S_DEAD) {
        ws_rx_free(&c->rx);
        return;
    }
    if (r >= 1000) {
        conn_fail(c, (unsigned)r, why);
    } else if (r == WS_RX_PAUSE && !c->rd_paused) {
        c->rd_paused = 1;
        conn_update_events(c);
    }
}

static void on_event(evutil_socket_t fd, short what, void *arg)
{
    struct ws_conn *c = arg;
    conn_ref(c);
    if ((what & EV_WRITE) && c->state != S_DEAD)
        flush(c);
    if ((what & EV_READ) && c->state != S_DEAD && !c->rd_paused) {
        ssize_t n = recv(fd, c->ls->scratch, SCRATCH, 0);
        if (n > 0) {
            if (c->state == S_OPEN) {
                c->t = now_ms();
                c->pinged = 0;
                list_move(c, &c->ls->open);   /* LRU: the sweep looks at the head */
            }
            conn_input(c, c->ls->scratch, (size_t)n);
        } else if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            conn_finish(c);      /* the peer is gone without a close frame */
        }
    }
    conn_unref(c);
}

/* ------------------------------------------------------------------------ */
/* Per-loop state and the sweep */

static void sweep(void *arg)
{
    struct ws_loopst *ls = arg;
    struct ws_inst *wi = ls->wi;
    uint64_t now = now_ms();
    while (!link_empty(&ls->hello)) {
        struct ws_conn *c = CONTAINER(ls->hello.next, struct ws_conn, lnk);
        if (now - c->t < wi->hello_ms)
            break;
        conn_ref(c);
        conn_error(c, "hello_required", NULL, "no hello in time", -1);
        conn_close(c, WS_CLOSE_HELLO_TIMEOUT, "no hello in time");   /* leaves the list */
        conn_unref(c);
    }
    for (struct ws_link *l = ls->open.next, *nx; l != &ls->open; l = nx) {
        nx = l->next;
        struct ws_conn *c = CONTAINER(l, struct ws_conn, lnk);
        uint64_t quiet = now - c->t;
        if (quiet < wi->ping_ms)
            break;
        if (quiet < wi->idle_ms && c->pinged)
            continue;
        conn_ref(c);             /* a failed send may finish it */
        if (quiet >= wi->idle_ms) {
            conn_close(c, WS_CLOSE_GOING_AWAY, "idle timeout");
        } else {
            static const uint8_t ping[2] = { 0x80 | WS_OP_PING, 0 };
            c->pinged = 1;
            conn_send(c, ping, 2, NULL);
        }
        conn_unref(c);
    }
    while (!link_empty(&ls->closing)) {
        struct ws_conn *c = CONTAINER(ls->closing.next, struct ws_conn, lnk);
        if (now - c->t < wi->close_ms)
            break;
        conn_finish(c);
    }
}

static struct ws_loopst *loop_state(struct ws_inst *wi, struct kfg_loop *loop)
{
    pthread_mutex_lock(&wi->lock);
    struct ws_loopst *ls = NULL;
    if (atomic_load(&wi->stopping)) {    /* stop has counted the loops already */
        pthread_mutex_unlock(&wi->lock);
        return NULL;
    }
    for (size_t i = 0; i < wi->nloops; i++)
        if (wi->loops[i]->loop == loop)
            ls = wi->loops[i];
    if (!ls && wi->nloops < MAX_LOOPS && (ls = calloc(1, sizeof *ls))) {
        ls->wi = wi;
        ls->loop = loop;
        ls->base = wi->host->loop_base(loop);
        ls->scratch = malloc(SCRATCH);
        link_init(&ls->hello);
        link_init(&ls->open);
        link_init(&ls->closing);
        /* we run on `loop` (the handler's worker): the timer belongs there */
        ls->sweep = wi->host->timer_start(wi->ins, SWEEP_MS, 1, sweep, ls);
        if (!ls->base || !ls->scratch || !ls->sweep) {
            if (ls->sweep)
                wi->host->timer_free(ls->sweep);
            free(ls->scratch);
            free(ls);
            ls = NULL;
        } else {
            wi->loops[wi->nloops++] = ls;
        }
    }
    pthread_mutex_unlock(&wi->lock);
    return ls;
}

/* ------------------------------------------------------------------------ */
/* HTTP: handshake and widget */

static struct kfg_str trim(struct kfg_str s)
{
    while (s.len && (s.ptr[0] == ' ' || s.ptr[0] == '\t'))
        s.ptr++, s.len--;
    while (s.len && (s.ptr[s.len - 1] == ' ' || s.ptr[s.len - 1] == '\t'))
        s.len--;
    return s;
}

/* 1 when some header `name` lists `token` (comma lists, any case). */
static int header_has_token(const struct kfg_host *h, const struct kfg_request *req,
                            const char *name, const char *token)
{
    size_t n = h->req_header_count(req), tl = strlen(token);
    for (size_t i = 0; i < n; i++) {
        struct kfg_str k, v;
        if (h->req_header_at(req, i, &k, &v) != KFG_OK || k.len != strlen(name) ||
            strncasecmp(k.ptr, name, k.len))
            continue;
        size_t a = 0;
        while (a <= v.len) {
            size_t b = a;
            while (b < v.len && v.ptr[b] != ',')
                b++;
            struct kfg_str t = trim((struct kfg_str){ v.ptr + a, b - a });
            if (t.len == tl && !strncasecmp(t.ptr, token, tl))
                return 1;
            a = b + 1;
        }
    }
    return 0;
}

/* Counts header lines called name; *first gets the first. */
static size_t header_lines(const struct kfg_host *h, const struct kfg_request *req,
                           const char *name, struct kfg_str *first)
{
    size_t n = h->req_header_count(req), c = 0;
    for (size_t i = 0; i < n; i++) {
        struct kfg_str k, v;
        if (h->req_header_at(req, i, &k, &v) == KFG_OK && k.len == strlen(name) &&
            !strncasecmp(k.ptr, name, k.len)) {
            if (!c++ && first)
                *first = trim(v);
        }
    }
    return c;
}

static void refuse(struct ws_inst *wi, struct kfg_request *req, int status, const char *why,
                   const struct kfg_header *hdrs, size_t nh)
{
    wi->host->metric_add(wi->m_hs_refused, 1);
    wi->host->log(wi->ins, req, KFG_LOG_INFO, "websocket handshake refused with %d: %s", status,
                  why);
    char body[256];
    int n = snprintf(body, sizeof body, "%d %s\n", status, why);
    struct kfg_header h[4];
    size_t k = 0;
    h[k++] = (struct kfg_header){ "Content-Type", "text/plain; charset=utf-8" };
    for (size_t i = 0; i < nh && k < 4; i++)
        h[k++] = hdrs[i];
    wi->host->req_respond(req, status, h, k, body, (size_t)n);
}

static int origin_allowed(struct ws_inst *wi, const struct kfg_request *req, struct kfg_str o)
{
    if (wi->any_origin)
        return 1;
    for (size_t i = 0; i < wi->norigins; i++)
        if (strlen(wi->origins[i]) == o.len && !strncasecmp(wi->origins[i], o.ptr, o.len))
            return 1;
    if (wi->norigins)
        return 0;
    /* same origin: scheme://host[:port] whose host[:port] is our Host */
    struct kfg_str host = trim(wi->host->req_header(req, "Host"));
    const char *sep = memmem(o.ptr, o.len, "://", 3);
    if (!host.ptr || !sep)
        return 0;
    size_t off = (size_t)(sep - o.ptr) + 3;
    return o.len - off == host.len && !strncasecmp(o.ptr + off, host.ptr, host.len);
}

static void peer_ip(const char *peer, char *out, size_t cap)
{
    /* "ip:port" or "[v6]:port" */
    if (!peer) {
        snprintf(out, cap, "?");
        return;
    }
    const char *end = strrchr(peer, ':');
    size_t n = end ? (size_t)(end - peer) : strlen(peer);
    if (n >= 2 && peer[0] == '[' && peer[n - 1] == ']')
        peer++, n -= 2;
    snprintf(out, cap, "%.*s", (int)n, peer);
}

static void on_upgrade(void *ctx, struct kfg_request *req)
{
    struct ws_inst *wi = ctx;
    const struct kfg_host *h = wi->host;
    struct kfg_str method = h->req_method(req);
    if (method.len != 3 || memcmp(method.ptr, "GET", 3)) {
        static const struct kfg_header allow[] = { { "Allow", "GET" } };
        return refuse(wi, req, 405, "a WebSocket handshake is a GET", allow, 1);
    }
    static const struct kfg_header upg[] = { { "Upgrade", "websocket" },
                                             { "Sec-WebSocket-Version", "13" } };
    if (!header_has_token(h, req, "Upgrade", "websocket") ||
        !header_has_token(h, req, "Connection", "upgrade"))
        return refuse(wi, req, 426, "this is a WebSocket endpoint: send Upgrade: websocket and "
                      "Connection: Upgrade", upg, 2);
    struct kfg_str ver = { 0 };
    if (header_lines(h, req, "Sec-WebSocket-Version", &ver) != 1 || ver.len != 2 ||
        memcmp(ver.ptr, "13", 2))
        return refuse(wi, req, 426, "Sec-WebSocket-Version must be 13", upg + 1, 1);
    struct kfg_str key = { 0 };
    if (header_lines(h, req, "Sec-WebSocket-Key", &key) != 1 || !ws_key_valid(key.ptr, key.len))
        return refuse(wi, req, 400, "Sec-WebSocket-Key must be one base64 value of 16 bytes",
                      NULL, 0);
    struct kfg_str origin = { 0 };
    size_t norigin = header_lines(h, req, "Origin", &origin);
    if (norigin > 1 || (norigin && !origin_allowed(wi, req, origin)))
        return refuse(wi, req, 403, "Origin not allowed", NULL, 0);
    int sub = WS_SUB_JSON, offered = 0;
    {
        size_t n = h->req_header_count(req);
        int pick = -1;
        for (size_t i = 0; i < n && pick < 0; i++) {
            struct kfg_str k, v;
            if (h->req_header_at(req, i, &k, &v) == KFG_OK && k.len == 22 &&
                !strncasecmp(k.ptr, "Sec-WebSocket-Protocol", 22)) {
                offered = 1;
                pick = ws_sub_pick(v.ptr, v.len);
            }
        }
        if (offered && pick < 0)
            return refuse(wi, req, 400, "no supported subprotocol: offer " WS_SUB_JSON_NAME
                          " or " WS_SUB_MSGPACK_NAME, NULL, 0);
        if (pick >= 0)
            sub = pick;
    }
    static const struct kfg_header retry[] = { { "Retry-After", "1" } };
    if (atomic_load(&wi->stopping))
        return refuse(wi, req, 503, "the instance is stopping", retry, 1);
    if (atomic_fetch_add(&wi->nconns, 1) >= wi->max_conns) {
        atomic_fetch_sub(&wi->nconns, 1);
        return refuse(wi, req, 503, "max_connections reached", retry, 1);
    }
    char ip[64];
    peer_ip(h->req_peer(req), ip, sizeof ip);
    struct ws_ipent *ipe = ip_take(wi, ip);
    if (!ipe) {
        atomic_fetch_sub(&wi->nconns, 1);
        return refuse(wi, req, 503, "max_connections_per_ip reached", retry, 1);
    }
    struct ws_loopst *ls = loop_state(wi, h->req_loop(req));
    struct ws_conn *c = ls ? calloc(1, sizeof *c) : NULL;
    struct ws_sess *sess = NULL;
    if (c && norigin && origin.len < 1024 && (sess = malloc(sizeof *sess + origin.len + 1))) {
        sess->olen = (uint16_t)origin.len;
        sess->slen = sess->nlen = 0;
        memcpy(sess->data, origin.ptr, origin.len);
        sess->data[origin.len] = 0;
    }
    if (!c || (norigin && origin.len < 1024 && !sess)) {
        free(c);
        free(sess);
        ip_release(wi, ipe);
        atomic_fetch_sub(&wi->nconns, 1);
        return refuse(wi, req, 503, "out of memory", retry, 1);
    }
    char accept[29];
    ws_accept_key(key.ptr, key.len, accept);
    struct kfg_upgraded up;
    if (h->req_upgrade(req, &up) != KFG_OK) {
        free(c);
        free(sess);
        ip_release(wi, ipe);
        atomic_fetch_sub(&wi->nconns, 1);
        return refuse(wi, req, 426, "the upgrade needs HTTP/1.1", upg, 2);
    }
    atomic_init(&c->ref, 1);
    atomic_fetch_add(&wi->nalloc, 1);
    c->ls = ls;
    c->fd = up.fd;
    c->ip = ipe;
    c->sess = sess;
    c->sub = (uint8_t)sub;
    c->state = S_HELLO;
    c->t = now_ms();
    c->rx.max_message = wi->max_message;
    link_tail(&ls->hello, &c->lnk);
    h->metric_add(wi->m_conns, 1);
    h->metric_add(wi->m_hs_ok, 1);
    /* up.fd is non-blocking already (plugin.h): no fcntl per connection. */
    if (wi->sndbuf) {
        int sb = (int)wi->sndbuf;
        setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb);
    }
    char resp[256];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                     accept, offered ? "Sec-WebSocket-Protocol: " : "",
                     offered ? (sub == WS_SUB_JSON ? WS_SUB_JSON_NAME : WS_SUB_MSGPACK_NAME) : "",
                     offered ? "\r\n" : "");
    conn_update_events(c);
    conn_ref(c);
    conn_send(c, (const uint8_t *)resp, (size_t)n, NULL);
    if (c->state != S_DEAD && up.pending.len) {
        /* bytes the client sent right after its request head come first */
        size_t left = up.pending.len;
        const char *p = up.pending.ptr;
        while (left && c->state != S_DEAD && !c->rd_paused) {
            size_t k = left < SCRATCH ? left : SCRATCH;
            memcpy(ls->scratch, p, k);
            conn_input(c, ls->scratch, k);
            p += k;
            left -= k;
        }
    }
    conn_unref(c);
}

static void serve_file(struct ws_inst *wi, struct kfg_request *req, const char *type,
                       const char *start, const char *end)
{
    struct kfg_header hd[] = {
        { "Content-Type", type },
        { "Cache-Control", "no-cache" },
        { "X-Content-Type-Options", "nosniff" },
    };
    wi->host->req_respond(req, 200, hd, 3, start, (size_t)(end - start));
}

static void on_widget(void *ctx, struct kfg_request *req)
{
    serve_file(ctx, req, "text/html; charset=utf-8", ws_widget_html, ws_widget_html_end);
}

static void on_widget_js(void *ctx, struct kfg_request *req)
{
    serve_file(ctx, req, "text/javascript; charset=utf-8", ws_widget_js, ws_widget_js_end);
}

/* ------------------------------------------------------------------------ */
/* Outbound: deliver on the control loop */

struct ws_push {
    struct ws_conn *c;
    struct ws_out *o;
};

static void push_run(void *arg)
{
    struct ws_push *p = arg;
    struct ws_conn *c = p->c;
    if (c->state == S_OPEN) {
        if (c->rp) {             /* resume running: hold it for the end */
            struct ws_qent *e = malloc(sizeof *e);
            if (e && c->rp->nheld < c->ls->wi->sq_max) {
                e->next = NULL;
                e->o = p->o;
                e->off = e->len = 0;
                p->o = NULL;
                if (c->rp->held_tail)
                    c->rp->held_tail->next = e;
                else
                    c->rp->held = e;
                c->rp->held_tail = e;
                c->rp->nheld++;
            } else {
                free(e);
                conn_overflow(c);
            }
        } else {
            conn_push(c, p->o);
        }
    }
    out_unref(p->o);
    conn_unref(c);
    free(p);
}

static int ws_deliver(void *ctx, const struct kfg_msg *m, struct kfg_delivery *d)
{
    struct ws_inst *wi = ctx;
    const struct kfg_host *h = wi->host;
    struct kfg_str conv = h->msg_get(m, KFG_ENV_CONVERSATION_ID);
    if (!conv.ptr)
        conv = h->msg_get(m, KFG_ENV_RECIPIENT_ID);
    if (!conv.ptr || !conv.len || conv.len > WS_IDENT_MAX + 5) {
        h->delivered(d, KFG_EFAIL, "ws:bad_envelope", "no usable conversation.id or recipient.id");
        return KFG_OK;
    }
    int64_t seq = 0;
    if (wi->have_11 && h->msg_get_int(m, KFG_ENV_SEQ, &seq) != KFG_OK)
        seq = 0;
    char id[WS_IDENT_MAX + 6];
    memcpy(id, conv.ptr, conv.len);
    id[conv.len] = 0;
    uint32_t hash = fnv1a(id, conv.len);

    struct ws_conn *stack[16], **cs = stack;
    size_t n = 0, cap = 16;
    int need[2] = { 0, 0 };
    pthread_mutex_lock(&wi->lock);
    struct ws_conv *v;
    for (v = wi->conv[hash % CONV_BUCKETS]; v; v = v->next)
        if (v->hash == hash && !strcmp(v->id, id))
            break;
    for (struct ws_link *l = v ? v->conns.next : NULL; v && l != &v->conns; l = l->next) {
        struct ws_conn *c = CONTAINER(l, struct ws_conn, clnk);
        if (n == cap) {
            struct ws_conn **nc = malloc(2 * cap * sizeof *nc);
            if (!nc)
                break;
            memcpy(nc, cs, n * sizeof *nc);
            if (cs != stack)
                free(cs);
            cs = nc;
            cap *= 2;
        }
        conn_ref(c);
        need[c->sub] = 1;
        cs[n++] = c;
    }
    pthread_mutex_unlock(&wi->lock);
    if (!n) {
        h->delivered(d, KFG_OK, NULL, "no open connection: kept in the journal for resume");
        return KFG_OK;
    }
    json_t *obj = render(wi, m, (uint64_t)seq);
    struct ws_out *o = obj ? out_make(obj, (uint64_t)seq, need[0], need[1]) : NULL;
    json_decref(obj);
    size_t pushed = 0;
    for (size_t i = 0; i < n; i++) {
        struct ws_push *p = o ? malloc(sizeof *p) : NULL;
        if (p) {
            p->c = cs[i];
            p->o = o;
            atomic_fetch_add(&o->ref, 1);
            if (h->post(cs[i]->ls->loop, push_run, p) == KFG_OK) {
                pushed++;
                continue;
            }
            out_unref(o);
            free(p);
        }
        conn_unref(cs[i]);
    }
    out_unref(o);
    if (cs != stack)
        free(cs);
    if (!o) {
        h->delivered(d, KFG_RETRY, "ws:internal", "out of memory rendering the frame");
        return KFG_OK;
    }
    char detail[64];
    snprintf(detail, sizeof detail, "queued on %zu connection(s)", pushed);
    h->delivered(d, KFG_OK, NULL, detail);
    return KFG_OK;
}

/* ------------------------------------------------------------------------ */
/* Instance lifecycle */

static int ws_init(struct kfg_instance *ins, const struct kfg_host *host, void *ctx)
{
    struct ws_inst *wi = ctx;
    wi->ins = ins;
    wi->host = host;
    wi->name = host->instance_name(ins);
    wi->control = host->loop_current();
    wi->have_11 = host->abi_minor >= 1 &&
                  host->struct_size >= offsetof(struct kfg_host, replay) + sizeof(void *) &&
                  host->emit2 && host->replay && host->msg_get_int;
    pthread_mutex_init(&wi->lock, NULL);
    const char *path = host->config_string(ins, "path");
    size_t pl = path ? strlen(path) : 0;
    if (pl < 2 || path[0] != '/' || path[pl - 1] == '/' || pl >= sizeof wi->path ||
        strpbrk(path, "?# ")) {
        host->log(ins, NULL, KFG_LOG_ERROR, "path must start with '/', not end with '/', "
                  "and be shorter than %zu bytes: \"%s\"", sizeof wi->path, path ? path : "");
        return KFG_EINVAL;
    }
    memcpy(wi->path, path, pl + 1);
    snprintf(wi->path_widget, sizeof wi->path_widget, "%s/widget", path);
    snprintf(wi->path_js, sizeof wi->path_js, "%s/widget.js", path);
    size_t no = host->config_array_len(ins, "allowed_origins");
    wi->origins = no ? calloc(no, sizeof *wi->origins) : NULL;
    for (size_t i = 0; i < no; i++) {
        const char *o = host->config_array_string(ins, "allowed_origins", i);
        if (o && !strcmp(o, "*")) {
            wi->any_origin = 1;
            continue;
        }
        if (!o || !strstr(o, "://") || o[strlen(o) - 1] == '/') {
            host->log(ins, NULL, KFG_LOG_ERROR, "allowed_origins: \"%s\" is not an origin "
                      "(scheme://host[:port], no path) nor \"*\"", o ? o : "");
            return KFG_EINVAL;
        }
        wi->origins[wi->norigins++] = (char *)o;   /* config strings live until destroy */
    }
    wi->allow_anon = host->config_bool(ins, "allow_anonymous");
    const char *sec = host->config_string(ins, "token_secret");
    if (sec && *sec) {
        wi->secret = (uint8_t *)sec;
        wi->secret_len = strlen(sec);
        if (wi->secret_len < 16) {
            host->log(ins, NULL, KFG_LOG_ERROR, "token_secret must be at least 16 bytes");
            return KFG_EINVAL;
        }
    }
    if (!wi->secret && !wi->allow_anon) {
        host->log(ins, NULL, KFG_LOG_ERROR, "nobody could connect: set token_secret or "
                  "allow_anonymous = true");
        return KFG_EINVAL;
    }
    struct { const char *key; int64_t lo, hi; uint64_t *u64; uint32_t *u32; } lim[] = {
        { "max_message_bytes", 64, 16 << 20, NULL, &wi->max_message },
        { "max_connections", 1, 10000000, NULL, &wi->max_conns },
        { "max_connections_per_ip", 1, 10000000, NULL, &wi->max_per_ip },
        { "rate_per_sec", 1, 1000000, NULL, &wi->rate },
        { "rate_burst", 1, 1000000, NULL, &wi->burst },
        { "max_inflight", 1, 10000, NULL, &wi->max_inflight },
        { "send_queue_max", 1, 1000000, NULL, &wi->sq_max },
        { "resume_max", 1, 100000, NULL, &wi->resume_max },
        { "resume_concurrency", 1, 10000, NULL, &wi->resume_conc },
        { "sndbuf_bytes", 0, 64 << 20, NULL, &wi->sndbuf },
        { "ping_interval_ms", 100, 86400000, &wi->ping_ms, NULL },
        { "idle_timeout_ms", 200, 86400000, &wi->idle_ms, NULL },
        { "hello_timeout_ms", 100, 600000, &wi->hello_ms, NULL },
        { "close_timeout_ms", 10, 600000, &wi->close_ms, NULL },
    };
    for (size_t i = 0; i < sizeof lim / sizeof lim[0]; i++) {
        int64_t v = host->config_int(ins, lim[i].key);
        if (v < lim[i].lo || v > lim[i].hi) {
            host->log(ins, NULL, KFG_LOG_ERROR, "%s must be in [%lld, %lld], not %lld", lim[i].key,
                      (long long)lim[i].lo, (long long)lim[i].hi, (long long)v);
            return KFG_EINVAL;
        }
        if (lim[i].u64)
            *lim[i].u64 = (uint64_t)v;
        else
            *lim[i].u32 = (uint32_t)v;
    }
    if ((uint64_t)wi->rate > (uint64_t)wi->burst * 1000) {
        host->log(ins, NULL, KFG_LOG_ERROR, "rate_per_sec must not exceed 1000 * rate_burst");
        return KFG_EINVAL;
    }
    int64_t qb = host->config_int(ins, "send_queue_bytes");
    if (qb < 1024 || qb > ((int64_t)1 << 32)) {
        host->log(ins, NULL, KFG_LOG_ERROR, "send_queue_bytes must be in [1024, 4294967296]");
        return KFG_EINVAL;
    }
    wi->sq_bytes = (size_t)qb;
    if (wi->idle_ms <= wi->ping_ms) {
        host->log(ins, NULL, KFG_LOG_ERROR, "idle_timeout_ms must be larger than ping_interval_ms");
        return KFG_EINVAL;
    }
    if (!wi->have_11)
        host->log(ins, NULL, KFG_LOG_WARN, "host ABI 1.%u: no resume (replay), no envelope ids "
                  "in acks, no seq in pushes", host->abi_minor);
    wi->m_conns = host->metric_gauge(ins, "kfg_ws_connections", "open WebSocket connections", NULL);
    wi->m_hs_ok = host->metric_counter(ins, "kfg_ws_handshakes_total", "WebSocket handshakes",
                                       "outcome=\"ok\"");
    wi->m_hs_refused = host->metric_counter(ins, "kfg_ws_handshakes_total",
                                            "WebSocket handshakes", "outcome=\"refused\"");
    wi->m_in = host->metric_counter(ins, "kfg_ws_inbound_total", "client frames emitted", NULL);
    wi->m_out = host->metric_counter(ins, "kfg_ws_pushes_total", "outbound frames sent", NULL);
    wi->m_slow = host->metric_counter(ins, "kfg_ws_slow_closed_total",
                                      "connections closed 1013 for not reading", NULL);
    wi->m_proto_err = host->metric_counter(ins, "kfg_ws_protocol_errors_total",
                                           "connections closed for protocol violations", NULL);
    wi->m_resumes = host->metric_counter(ins, "kfg_ws_resumes_total", "hellos with resume_from",
                                         NULL);
    return KFG_OK;
}

static int ws_start(void *ctx)
{
    struct ws_inst *wi = ctx;
    const struct kfg_host *h = wi->host;
    int r = h->route_add(wi->ins, NULL, wi->path, KFG_ROUTE_UPGRADE, on_upgrade);
    if (r == KFG_OK)
        r = h->route_add(wi->ins, "GET", wi->path_widget, KFG_ROUTE_EXACT, on_widget);
    if (r == KFG_OK)
        r = h->route_add(wi->ins, "GET", wi->path_js, KFG_ROUTE_EXACT, on_widget_js);
    if (r != KFG_OK)
        h->log(wi->ins, NULL, KFG_LOG_ERROR, "cannot register %s (%d)", wi->path, r);
    return r;
}

static void stopped_on_control(void *arg)
{
    struct ws_inst *wi = arg;
    wi->host->stopped(wi->ins);
}

/* The last of the loops' shutdown jobs and connection references to finish
 * reports the instance stopped, once, on the control loop. */
static void check_stopped(struct ws_inst *wi)
{
    if (atomic_load(&wi->stopping) && atomic_load(&wi->loops_pending) == 0 &&
        atomic_load(&wi->nalloc) == 0 && !atomic_exchange(&wi->stopped_sent, 1))
        wi->host->post(wi->control, stopped_on_control, wi);
}

static void loop_stop(void *arg)
{
    struct ws_loopst *ls = arg;
    struct ws_inst *wi = ls->wi;
    struct ws_link *lists[] = { &ls->hello, &ls->open, &ls->closing };
    for (size_t i = 0; i < 3; i++) {
        while (!link_empty(lists[i])) {
            struct ws_conn *c = CONTAINER(lists[i]->next, struct ws_conn, lnk);
            if (c->state == S_OPEN || c->state == S_HELLO) {
                static const uint8_t f[] = { 0x88, 0x02, 0x03, 0xE9 };   /* 1001 */
                if (!c->sq || !c->sq->head) {
                    ssize_t w = send(c->fd, f, sizeof f, MSG_NOSIGNAL | MSG_DONTWAIT);
                    (void)w;
                }
            }
            conn_finish(c);
        }
    }
    while (ls->wait_head) {       /* resumes that never got their turn */
        struct ws_wait *w = ls->wait_head;
        ls->wait_head = w->next;
        conn_unref(w->c);
        free(w);
    }
    ls->wait_tail = NULL;
    if (ls->sweep) {
        wi->host->timer_free(ls->sweep);
        ls->sweep = NULL;
    }
    ls->stopped = 1;
    atomic_fetch_sub(&wi->loops_pending, 1);
    check_stopped(wi);
}

static int ws_stop(void *ctx)
{
    struct ws_inst *wi = ctx;
    pthread_mutex_lock(&wi->lock);
    size_t n = wi->nloops;
    atomic_store(&wi->loops_pending, (int)n);
    atomic_store(&wi->stopping, 1);
    pthread_mutex_unlock(&wi->lock);
    if (!n)
        return KFG_OK;
    for (size_t i = 0; i < n; i++)
        if (wi->host->post(wi->loops[i]->loop, loop_stop, wi->loops[i]) != KFG_OK)
            atomic_fetch_sub(&wi->loops_pending, 1);   /* that loop is gone already */
    if (atomic_load(&wi->loops_pending) == 0 && atomic_load(&wi->nalloc) == 0 &&
        !atomic_exchange(&wi->stopped_sent, 1))
        return KFG_OK;
    return KFG_AGAIN;
}

static void ws_destroy(void *ctx)
{
    struct ws_inst *wi = ctx;
    for (size_t i = 0; i < wi->nloops; i++) {
        struct ws_loopst *ls = wi->loops[i];
        if (ls->sweep)
            wi->host->timer_free(ls->sweep);   /* only if stop never ran */
        free(ls->scratch);
        free(ls);
    }
    for (size_t i = 0; i < CONV_BUCKETS; i++)
        while (wi->conv[i]) {
            struct ws_conv *v = wi->conv[i];
            wi->conv[i] = v->next;
            free(v);
        }
    for (size_t i = 0; i < IP_BUCKETS; i++)
        while (wi->ipt[i]) {
            struct ws_ipent *e = wi->ipt[i];
            wi->ipt[i] = e->next;
            free(e);
        }
    free(wi->origins);
    pthread_mutex_destroy(&wi->lock);
}

static int ws_health(void *ctx, char *detail, size_t cap)
{
    struct ws_inst *wi = ctx;
    snprintf(detail, cap, "%u open connection(s)", atomic_load(&wi->nconns));
    return atomic_load(&wi->stopping) ? KFG_ESTOPPED : KFG_OK;
}

KFG_PLUGIN_EXPORT = {
    KFG_PLUGIN_HEADER,
    .kind = KFG_KIND_ADAPTER,
    .name = "websocket",
    .version = WS_VERSION,
    .description = "RFC 6455 web chat: widget protocol, visitor tokens, resume from the journal",
    .config = ws_config,
    .ctx_size = sizeof(struct ws_inst),
    .init = ws_init,
    .start = ws_start,
    .stop = ws_stop,
    .destroy = ws_destroy,
    .health = ws_health,
    .deliver = ws_deliver,
};
