/*
 * example-adapter: the smallest complete kfgate channel adapter.
 *
 * Copy this directory to start a new adapter. It builds from
 * the public headers <kfgate/plugin.h> and <kfgate/envelope.h> alone
 * (header-only), links nothing of the gateway, and shows every
 * callback a channel adapter has:
 *
 *   init     read and check the instance's config keys, create metrics
 *   start    claim an HTTP route prefix on the gateway's front door
 *   (route)  GET  <path>...  -> 200 with the configured `reply` text
 *            POST <path>...  -> one inbound message per request body;
 *                               the channel is answered only once the
 *                               gateway has accepted (journaled) it
 *   deliver  "send" an outbound message to the channel (here: log it) and
 *            finish asynchronously with host->delivered
 *   health   report whether the channel works
 *   stop     take no new work; report in-flight work with KFG_AGAIN and
 *            call host->stopped when the last piece finishes
 *   destroy  release everything
 *
 * Try it (see spec/plugin-abi.md, "Walk-through"):
 *
 *   [[adapter]]
 *   type = "example"
 *   name = "ex0"
 *   tenant = "demo"
 *   path = "/example/"
 *
 *   curl -d 'hello' -H 'X-Conversation: c1' -H 'X-Sender: u1' \
 *        http://127.0.0.1:8080/example/        -> {"seq":1}
 *   curl 'http://127.0.0.1:8080/example/'     -> ok
 *
 * An `Idempotency-Key` header (or, older clients, `X-Message-Id`) becomes
 * the envelope's `idem`: a resend with the same key is answered with the
 * original seq and not published again (spec/envelope.md section 5).
 *
 * Threading, in one paragraph (the full rule is in plugin.h): init, start,
 * stop, destroy, health and deliver run on the control loop; the route
 * handlers run on whichever worker loop owns the connection, possibly on
 * several workers at once. So everything the handlers share is either
 * read-only after init (config, metric handles) or atomic (the in-flight
 * counter below).
 */
#include <kfgate/plugin.h>
#include <kfgate/envelope.h>

#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Envelope field names, see spec/envelope.md. Kept in one place so a copy of
 * this file follows a rename in one edit. */
#define F_CONVERSATION "conversation"
#define F_SENDER "sender"

/* How long a "delivery" takes. A real adapter would start an outbound call
 * (host->http_call) instead and finish in its completion; the timer only
 * shows that delivered() may be called later, from another callback. */
#define DELIVER_DELAY_MS 5

/* Longest conversation/sender id taken from the query string (decoded). */
#define ID_MAX 256

/* health turns bad after this many emits in a row failed. */
#define EMIT_FAIL_UNHEALTHY 10

/* ---------------------------------------------------------------------------
 * Configuration. The host validates every [[adapter]] table against this
 * list before init: unknown keys, wrong types and missing required keys are
 * config errors reported with file:line:column, so init never sees a typo.
 * Keys `type`, `name`, `tenant` and `log_level` belong to the host.
 */
static const struct kfg_config_key example_config[] = {
    {"path", KFG_CFG_STRING, KFG_CFG_REQUIRED, NULL,
     "route prefix on the front door, e.g. \"/example/\""},
    {"reply", KFG_CFG_STRING, 0, "ok", "body of the answer to GET <path>"},
    {"greeting", KFG_CFG_STRING, 0, NULL,
     "optional text put before every delivered message in the log"},
    {"max_body", KFG_CFG_INT, 0, "65536", "largest accepted POST body, bytes"},
    {NULL, 0, 0, NULL, NULL},
};

/* Request outcomes, one counter each: requests_total{outcome="..."}. */
enum outcome {
    OUT_OK,          /* accepted, answered {"seq":N} */
    OUT_DROPPED,     /* a filter dropped it, answered {"dropped":...} */
    OUT_BUSY,        /* gateway over a limit or stopping: 503 */
    OUT_ERROR,       /* emit failed: 500 */
    OUT_BAD,         /* our own validation: 4xx */
    OUT_GET,         /* the trivial GET route */
    OUT__COUNT
};

static const char *const outcome_label[OUT__COUNT] = {
    [OUT_OK] = "outcome=\"ok\"",
    [OUT_DROPPED] = "outcome=\"dropped\"",
    [OUT_BUSY] = "outcome=\"busy\"",
    [OUT_ERROR] = "outcome=\"error\"",
    [OUT_BAD] = "outcome=\"bad_request\"",
    [OUT_GET] = "outcome=\"get\"",
};

/* One delivery waiting for its timer. Only the control loop touches these
 * (deliver, timers started there, destroy), so the list needs no lock. */
struct pending_delivery {
    struct example *ex;
    struct kfg_delivery *d;
    struct kfg_timer *timer;
    struct pending_delivery *prev, *next;
};

/* The instance context. The host allocates ctx_size zeroed bytes per
 * instance and passes them to every callback; there are no globals, so one
 * .so can serve many instances, and an old and a new copy of it can run side
 * by side during a reload. */
struct example {
    struct kfg_instance *ins;
    const struct kfg_host *host;     /* valid until destroy returns */
    struct kfg_loop *control;        /* where host->stopped must be called */

    /* Config strings are owned by the host and live until destroy. */
    const char *path;
    const char *reply;
    size_t reply_len;
    const char *greeting;
    size_t max_body;

    /* RUNNING bit + 2 x work in flight; see acquire/release/stop. */
    atomic_long inflight;
    atomic_int emit_failures;        /* consecutive, for health */

    struct kfg_metric *requests[OUT__COUNT];
    struct kfg_metric *latency;
    struct kfg_metric *deliveries;

    struct pending_delivery *pending; /* control loop only */
};

/* One POST between emit and its completion. */
struct call {
    struct example *ex;
    struct kfg_request *req;
    struct timespec t0;
};

/* ---------------------------------------------------------------------------
 * Small helpers.
 */
static struct timespec now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t;
}

static double since(struct timespec t0)
{
    struct timespec t = now();
    return (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Finds `name` in a raw query string ("a=1&b=x%20y") and percent-decodes its
 * value into buf. Returns the decoded length, -1 when absent, -2 when the
 * value does not fit. The host hands the query over raw on purpose: only the
 * adapter knows its channel's encoding rules. */
static long query_param(struct kfg_str q, const char *name, char *buf, size_t cap)
{
    size_t nlen = strlen(name), i = 0;
    while (i < q.len) {
        size_t end = i;
        while (end < q.len && q.ptr[end] != '&') end++;
        if (end - i > nlen && memcmp(q.ptr + i, name, nlen) == 0 && q.ptr[i + nlen] == '=') {
            size_t n = 0;
            for (size_t j = i + nlen + 1; j < end; j++) {
                int c = (unsigned char)q.ptr[j];
                if (c == '+') {
                    c = ' ';
                } else if (c == '%' && j + 2 < end && hexval(q.ptr[j + 1]) >= 0 &&
                           hexval(q.ptr[j + 2]) >= 0) {
                    c = hexval(q.ptr[j + 1]) * 16 + hexval(q.ptr[j + 2]);
                    j += 2;
                }
                if (n == cap) return -2;
                buf[n++] = (char)c;
            }
            return (long)n;
        }
        i = end + 1;
    }
    return -1;
}

/* JSON-escapes s into out (always NUL-terminated), never splitting a UTF-8
 * sequence or an escape. Filter reasons are free text, so they need this. */
static void json_escape(const char *s, char *out, size_t cap)
{
    size_t n = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        size_t len;
        if (c == '"' || c == '\\') {
            esc[0] = '\\', esc[1] = (char)c, len = 2;
        } else if (c < 0x20) {
            len = (size_t)snprintf(esc, sizeof esc, "\\u%04x", c);
        } else {
            /* Copy a whole UTF-8 sequence or nothing. */
            len = 1;
            while ((s[len] & 0xC0) == 0x80 && len < 4) len++;
            if (n + len + 1 > cap) break;
            memcpy(out + n, s, len);
            n += len;
            s += len - 1;
            continue;
        }
        if (n + len + 1 > cap) break;
        memcpy(out + n, esc, len);
        n += len;
    }
    out[n] = '\0';
}

static void count(struct example *ex, enum outcome o, struct timespec t0)
{
    ex->host->metric_add(ex->requests[o], 1);
    ex->host->metric_observe(ex->latency, since(t0));
}

static void respond(struct example *ex, struct kfg_request *req, int status,
                    const char *ctype, const char *body, int retry_after)
{
    struct kfg_header h[2] = {{"Content-Type", ctype}, {"Retry-After", "1"}};
    ex->host->req_respond(req, status, h, retry_after ? 2 : 1, body, strlen(body));
}

/* ---------------------------------------------------------------------------
 * In-flight accounting for stop.
 *
 * One atomic word holds both facts stop needs, so that they change together:
 * bit 0 (RUNNING) is set until stop, and the rest counts work in flight in
 * steps of 2. acquire() adds a piece of work only while RUNNING is set, so
 * no work can start after stop has looked. stop clears RUNNING: if nothing
 * was in flight it returns KFG_OK, otherwise KFG_AGAIN, and the release()
 * that takes the count to zero tells the host with host->stopped.
 *
 * The host already waits for requests and deliveries it knows about; this
 * is the pattern for work the host cannot see (outbound calls, upgraded
 * connections, a channel's own long poll). Here it counts requests and
 * deliveries so that the pattern is visible in a small file.
 */
#define RUNNING 1L
#define ONE_WORK 2L

static int acquire(struct example *ex)
{
    long n = atomic_load(&ex->inflight);
    while (n & RUNNING)
        if (atomic_compare_exchange_weak(&ex->inflight, &n, n + ONE_WORK)) return 1;
    return 0;
}

static void on_drained(void *arg)
{
    struct example *ex = arg;
    ex->host->log(ex->ins, NULL, KFG_LOG_INFO, "drained");
    ex->host->stopped(ex->ins);
}

static void release(struct example *ex)
{
    if (atomic_fetch_sub(&ex->inflight, ONE_WORK) != ONE_WORK) return;
    /* The last piece of work finished after stop returned KFG_AGAIN.
     * host->stopped must run on the control loop, and we may be on a worker,
     * so hop there. post also defers the call past the current callback,
     * which keeps "never from inside the call that started it" true. */
    if (ex->host->post(ex->control, on_drained, ex) != KFG_OK)
        ex->host->log(ex->ins, NULL, KFG_LOG_WARN, "cannot post stopped: control loop gone");
}

/* ---------------------------------------------------------------------------
 * Inbound: the route handlers. They run on a worker loop.
 */

/* GET <path>...: a constant answer, for benchmarks of the front door. */
static void on_get(void *ctx, struct kfg_request *req)
{
    struct example *ex = ctx;
    struct timespec t0 = now();
    struct kfg_header h = {"Content-Type", "text/plain; charset=utf-8"};
    ex->host->req_respond(req, 200, &h, 1, ex->reply, ex->reply_len);
    count(ex, OUT_GET, t0);
}

/* Finishes a POST: answer the client, count, release the in-flight slot.
 * Called from the emit completion, or directly when emit refused the message;
 * both run on the worker that owns the request, as req_respond requires. */
static void finish(struct call *c, int result, uint64_t seq, const char *reason)
{
    struct example *ex = c->ex;
    char body[512];
    enum outcome o;

    switch (result) {
    case KFG_OK:
        /* Accepted: the message is durable in the journal. Only now may the
         * channel be told "received" (the ack rule). */
        snprintf(body, sizeof body, "{\"seq\":%llu}", (unsigned long long)seq);
        respond(ex, c->req, 200, "application/json", body, 0);
        atomic_store(&ex->emit_failures, 0);
        o = OUT_OK;
        break;
    case KFG_EDROPPED: {
        /* A filter refused it on purpose. For the channel this is final: ack
         * it (200) so it is not resent forever, and say why. */
        char esc[384];
        json_escape(reason ? reason : "", esc, sizeof esc);
        snprintf(body, sizeof body, "{\"dropped\":\"%s\"}", esc);
        respond(ex, c->req, 200, "application/json", body, 0);
        atomic_store(&ex->emit_failures, 0);
        o = OUT_DROPPED;
        break;
    }
    case KFG_AGAIN:      /* over a limit: back-pressure, the client retries */
    case KFG_ESTOPPED:   /* instance or gateway shutting down: same advice */
        respond(ex, c->req, 503, "application/json", "{\"error\":\"busy\"}", 1);
        o = OUT_BUSY;
        break;
    default:
        /* Not accepted: no ack. The client may resend; idempotency_key makes
         * a resend of an already journaled message harmless. */
        ex->host->log(ex->ins, c->req, KFG_LOG_WARN, "emit failed: %d", result);
        respond(ex, c->req, 500, "application/json", "{\"error\":\"internal\"}", 0);
        atomic_fetch_add(&ex->emit_failures, 1);
        o = OUT_ERROR;
        break;
    }
    count(ex, o, c->t0);
    free(c);
    release(ex);
}

/* emit completion: runs later, on the same worker as the handler. `reason`
 * is borrowed for the duration of this call only. */
static void on_emitted(void *arg, int result, uint64_t seq, const char *reason)
{
    finish(arg, result, seq, reason);
}

static void bad_request(struct example *ex, struct kfg_request *req,
                        struct timespec t0, int status, const char *msg)
{
    char body[128];
    snprintf(body, sizeof body, "{\"error\":\"%s\"}", msg);
    respond(ex, req, status, "application/json", body, 0);
    count(ex, OUT_BAD, t0);
}

/* Reads an id from `?name=` (decoded into buf) or else from the header;
 * returns ptr NULL when absent, and len SIZE_MAX when too long. */
static struct kfg_str get_id(struct example *ex, struct kfg_request *req,
                             const char *qname, const char *header, char *buf)
{
    long n = query_param(ex->host->req_query(req), qname, buf, ID_MAX);
    if (n >= 0) return (struct kfg_str){buf, (size_t)n};
    if (n == -2) return (struct kfg_str){buf, SIZE_MAX};
    struct kfg_str h = ex->host->req_header(req, header);  /* borrowed */
    if (h.ptr && h.len > ID_MAX) h.len = SIZE_MAX;
    return h;
}

/* POST <path>...: the body becomes one text message. */
static void on_post(void *ctx, struct kfg_request *req)
{
    struct example *ex = ctx;
    const struct kfg_host *h = ex->host;
    struct timespec t0 = now();
    char convbuf[ID_MAX], senderbuf[ID_MAX];

    /* Request data is borrowed until we respond; msg_set copies, so nothing
     * here needs to outlive the handler except `req` itself. */
    struct kfg_str body = h->req_body(req);
    struct kfg_str conv = get_id(ex, req, "conversation", "X-Conversation", convbuf);
    struct kfg_str sender = get_id(ex, req, "sender", "X-Sender", senderbuf);
    /* REST convention first (spec/envelope.md section 5), then the older
     * header this example used to read. */
    struct kfg_str msgid = h->req_header(req, "Idempotency-Key");
    if (!msgid.ptr || !msgid.len)
        msgid = h->req_header(req, "X-Message-Id");

    const char *bad = NULL;
    int status = 400;
    if (body.len == 0)
        bad = "empty body";
    else if (body.len > ex->max_body)
        bad = "body too large", status = 413;
    else if (!conv.ptr || conv.len == 0 || conv.len == SIZE_MAX)
        bad = "missing or bad conversation";
    else if (!sender.ptr || sender.len == 0 || sender.len == SIZE_MAX)
        bad = "missing or bad sender";
    if (bad) {
        bad_request(ex, req, t0, status, bad);
        return;
    }

    /* Refuse new work once stop has been called (see acquire). */
    if (!acquire(ex)) {
        respond(ex, req, 503, "application/json", "{\"error\":\"stopping\"}", 1);
        count(ex, OUT_BUSY, t0);
        return;
    }

    struct call *c = malloc(sizeof *c);
    if (!c) {
        respond(ex, req, 500, "application/json", "{\"error\":\"internal\"}", 0);
        count(ex, OUT_ERROR, t0);
        release(ex);
        return;
    }
    *c = (struct call){ex, req, t0};

    struct kfg_msg *m = h->msg_new(ex->ins, "message");
    if (!m) {
        finish(c, KFG_ENOMEM, 0, NULL);
        return;
    }

    int rc = h->msg_set(m, F_CONVERSATION, conv.ptr, conv.len);
    if (rc == KFG_OK) rc = h->msg_set(m, F_SENDER, sender.ptr, sender.len);
    /* The channel's own message id makes redelivery idempotent: a client
     * that resends after a lost answer gets the same message, not a copy. */
    if (rc == KFG_OK && msgid.ptr && msgid.len)
        rc = kfg_env_set_idem(h, m, msgid.ptr, msgid.len);
    if (rc == KFG_OK) {
        int part = h->msg_part_add(m, "text");   /* index, or an error */
        rc = part < 0 ? part : h->msg_part_set(m, (size_t)part, "text", body.ptr, body.len);
    }

    /* emit: on KFG_OK the message belongs to the host and on_emitted will
     * run later on this worker; on any error it is still ours to free. */
    if (rc == KFG_OK) rc = h->emit(ex->ins, m, on_emitted, c);
    if (rc != KFG_OK) {
        h->msg_free(m);
        finish(c, rc, 0, NULL);
    }
}

/* ---------------------------------------------------------------------------
 * Outbound: deliver runs on the control loop.
 */
static void on_deliver_timer(void *arg)
{
    struct pending_delivery *p = arg;
    struct example *ex = p->ex;

    /* One-shot timers are still ours to free; freeing from inside the
     * callback is allowed. */
    ex->host->timer_free(p->timer);
    if (p->prev) p->prev->next = p->next; else ex->pending = p->next;
    if (p->next) p->next->prev = p->prev;

    /* Finish the delivery exactly once: OK, RETRY (the host retries with
     * backoff) or EFAIL (the host dead-letters). Never retry here. */
    ex->host->delivered(p->d, KFG_OK, NULL, NULL);
    ex->host->metric_add(ex->deliveries, 1);
    free(p);
    release(ex);
}

static int example_deliver(void *ctx, const struct kfg_msg *m, struct kfg_delivery *d)
{
    struct example *ex = ctx;
    const struct kfg_host *h = ex->host;

    if (!acquire(ex)) return KFG_RETRY;   /* stopping: let the host retry */

    /* The message is borrowed until delivered(); we read what we need now. */
    struct kfg_str conv = h->msg_get(m, F_CONVERSATION);
    struct kfg_str text = {"", 0};
    for (size_t i = 0; i < h->msg_part_count(m); i++) {
        const char *kind = h->msg_part_kind(m, i);
        if (kind && strcmp(kind, "text") == 0) {
            text = h->msg_part_get(m, i, "text");
            break;
        }
    }
    h->log(ex->ins, NULL, KFG_LOG_INFO, "deliver conversation=%.*s text=%s%.*s",
           conv.ptr ? (int)(conv.len > INT_MAX ? INT_MAX : conv.len) : 0,
           conv.ptr ? conv.ptr : "",
           ex->greeting ? ex->greeting : "",
           text.ptr ? (int)(text.len > INT_MAX ? INT_MAX : text.len) : 0,
           text.ptr ? text.ptr : "");

    struct pending_delivery *p = calloc(1, sizeof *p);
    if (!p) { release(ex); return KFG_ENOMEM; }
    p->ex = ex;
    p->d = d;
    p->timer = h->timer_start(ex->ins, DELIVER_DELAY_MS, 0, on_deliver_timer, p);
    if (!p->timer) {
        free(p);
        release(ex);
        return KFG_RETRY;   /* not started: the host finishes it with this */
    }
    p->next = ex->pending;
    if (p->next) p->next->prev = p;
    ex->pending = p;
    return KFG_OK;          /* started; delivered() follows from the timer */
}

/* ---------------------------------------------------------------------------
 * Lifecycle. All on the control loop.
 */
static int example_init(struct kfg_instance *ins, const struct kfg_host *host, void *ctx)
{
    struct example *ex = ctx;
    ex->ins = ins;
    ex->host = host;
    ex->control = host->loop_current();   /* init runs on the control loop */
    atomic_init(&ex->inflight, RUNNING);
    atomic_init(&ex->emit_failures, 0);

    /* Types, presence and defaults were checked by the host; what is left
     * is the meaning. Log why, then fail: the host names the instance. */
    ex->path = host->config_string(ins, "path");
    if (!ex->path || ex->path[0] != '/') {
        host->log(ins, NULL, KFG_LOG_ERROR, "path must start with '/': \"%s\"",
                  ex->path ? ex->path : "");
        return KFG_EINVAL;
    }
    ex->reply = host->config_string(ins, "reply");
    ex->reply_len = strlen(ex->reply);
    ex->greeting = host->config_string(ins, "greeting");  /* NULL if unset */
    int64_t max_body = host->config_int(ins, "max_body");
    if (max_body <= 0) {
        host->log(ins, NULL, KFG_LOG_ERROR, "max_body must be > 0, not %lld",
                  (long long)max_body);
        return KFG_EINVAL;
    }
    ex->max_body = (size_t)max_body;

    /* Metric handles live until destroy and are released by the host. The
     * host adds instance="<name>" to every series. */
    for (int o = 0; o < OUT__COUNT; o++) {
        ex->requests[o] = host->metric_counter(ins, "example_requests_total",
                                               "Requests by outcome.", outcome_label[o]);
        if (!ex->requests[o]) return KFG_ENOMEM;
    }
    ex->latency = host->metric_histogram(ins, "example_request_duration_seconds",
                                         "Time from request to answer.", NULL);
    ex->deliveries = host->metric_counter(ins, "example_deliveries_total",
                                          "Outbound messages delivered.", NULL);
    if (!ex->latency || !ex->deliveries) return KFG_ENOMEM;
    return KFG_OK;
}

static int example_start(void *ctx)
{
    struct example *ex = ctx;
    /* Two routes on the same prefix, one per method: the host answers other
     * methods itself. KFG_EEXIST means another instance owns the path. */
    int rc = ex->host->route_add(ex->ins, "GET", ex->path, KFG_ROUTE_PREFIX, on_get);
    if (rc == KFG_OK)
        rc = ex->host->route_add(ex->ins, "POST", ex->path, KFG_ROUTE_PREFIX, on_post);
    if (rc != KFG_OK) {
        ex->host->log(ex->ins, NULL, KFG_LOG_ERROR, "cannot claim route %s: %d",
                      ex->path, rc);
        return rc;
    }
    if (ex->greeting)
        ex->host->log(ex->ins, NULL, KFG_LOG_DEBUG, "greeting \"%s\"", ex->greeting);
    ex->host->log(ex->ins, NULL, KFG_LOG_INFO, "listening on %s", ex->path);
    return KFG_OK;
}

static int example_stop(void *ctx)
{
    struct example *ex = ctx;
    /* The host removes our routes; requests already running finish, and
     * acquire() refuses any that slip in. */
    long was = atomic_fetch_sub(&ex->inflight, RUNNING);
    if (was == RUNNING) return KFG_OK;
    ex->host->log(ex->ins, NULL, KFG_LOG_INFO, "stopping, %ld in flight", was / ONE_WORK);
    return KFG_AGAIN;   /* release() calls host->stopped at zero */
}

static int example_health(void *ctx, char *detail, size_t cap)
{
    struct example *ex = ctx;
    int fails = atomic_load(&ex->emit_failures);
    if (fails >= EMIT_FAIL_UNHEALTHY) {
        snprintf(detail, cap, "last %d emits failed", fails);
        return KFG_EFAIL;
    }
    return KFG_OK;
}

static void example_destroy(void *ctx)
{
    struct example *ex = ctx;
    /* Normally nothing is pending here. After a drain timeout, deliveries
     * may still wait for their timers: cancel and free them. The host
     * finishes such deliveries itself (KFG_RETRY); delivered() must not be
     * called from destroy. Metrics are released by the host. */
    while (ex->pending) {
        struct pending_delivery *p = ex->pending;
        ex->pending = p->next;
        ex->host->timer_free(p->timer);
        free(p);
    }
}

/* ---------------------------------------------------------------------------
 * The descriptor: the only exported symbol (-fvisibility=hidden plus
 * KFG_PLUGIN_EXPORT). The loader checks abi_major/abi_minor/struct_size and
 * the required callbacks (init; deliver for adapters) before calling
 * anything.
 */
KFG_PLUGIN_EXPORT = {
    KFG_PLUGIN_HEADER,
    .kind = KFG_KIND_ADAPTER,
    .name = "example",
    .version = "1.0.0",
    .description = "Example adapter: POST a body to emit it, GET for a fixed reply",
    .config = example_config,
    .ctx_size = sizeof(struct example),
    .init = example_init,
    .start = example_start,
    .stop = example_stop,
    .destroy = example_destroy,
    .health = example_health,
    .deliver = example_deliver,
};
