/*
 * kfgate REST adapter: a JSON ingest API for business systems (order
 * systems, CRMs, ticketing, mobile back ends) and signed outbound webhooks.
 *
 *   POST {path}/messages       one message, or {"messages": [...]}; 202 with
 *                              id and seq once the gateway journaled it
 *   GET  {path}/messages/{id}  the receipts this instance has seen for id
 *   GET  {path}/health         liveness and webhook queue figures (no auth)
 *
 * Errors are application/problem+json (RFC 9457) naming the field by JSON
 * pointer. The API is spec/rest-openapi.yaml; the pure parts live in
 * rest_auth.c, rest_json.c and rest_store.c (unit-tested without a host).
 *
 * Outbound envelopes for an instance are POSTed to its webhook_url through
 * the host's libcurl multi client, signed (Kfgate-Timestamp,
 * Kfgate-Signature over timestamp "." delivery id "." body), with the
 * envelope id as a stable Kfgate-Delivery-Id. Retries and dead letters are
 * the host's (spec/plugin-abi.md §12): this file maps each attempt to
 * KFG_OK / KFG_RETRY / KFG_EFAIL and limits concurrency per instance (one
 * destination each), so one slow receiver only queues its own deliveries.
 *
 * Threads: handlers and emit completions run on workers (shared state is
 * config, atomics and the locked stores); deliver, webhook completions and
 * the lifecycle on the control loop.
 */
#include <kfgate/envelope.h>
#include <kfgate/plugin.h>

#include "rest.h"

#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define REST_VERSION "0.2.0"
#define WEBHOOK_UNHEALTHY 10

/* An ABI 1.1 host entry this host really provides (an older host's table
 * is shorter; a 1.1 host may still leave an entry NULL). */
#define HOST_HAS(h, fn)                                                      \
    ((h)->abi_minor >= 1 && (h)->struct_size >= offsetof(struct kfg_host, fn) + sizeof((h)->fn) && \
     (h)->fn)

static const struct kfg_config_key rest_config[] = {
    { "path", KFG_CFG_STRING, KFG_CFG_REQUIRED, NULL,
      "API prefix, e.g. \"/api/acme\": POST <path>/messages, GET <path>/messages/{id}, "
      "GET <path>/health" },
    { "api_keys", KFG_CFG_STRING_ARRAY, 0, NULL,
      "bearer keys with write access; \"env:NAME\" reads the environment" },
    { "read_keys", KFG_CFG_STRING_ARRAY, 0, NULL,
      "bearer keys that may only GET; \"env:NAME\" allowed" },
    { "hmac_secrets", KFG_CFG_STRING_ARRAY, 0, NULL,
      "secrets for Kfgate-Signature request signatures; \"env:NAME\" allowed" },
    { "hmac_tolerance_s", KFG_CFG_INT, 0, "300",
      "largest allowed |now - Kfgate-Timestamp| in seconds" },
    { "replay_cache", KFG_CFG_INT, 0, "65536",
      "signatures remembered inside the window to refuse replays" },
    { "max_body", KFG_CFG_INT, 0, "1048576", "largest request body in bytes (413 above)" },
    { "max_batch", KFG_CFG_INT, 0, "100", "most messages in one POST (413 above)" },
    { "max_text", KFG_CFG_INT, 0, "65536", "longest text part in bytes" },
    { "rate_limit", KFG_CFG_INT, 0, "0", "POSTs per second for the instance, 0 = no limit" },
    { "rate_burst", KFG_CFG_INT, 0, "0", "token bucket size, 0 = rate_limit" },
    { "retry_after_s", KFG_CFG_INT, 0, "1", "Retry-After of 429/503 answers" },
    { "idempotency_keys", KFG_CFG_INT, 0, "10000", "Idempotency-Key answers remembered" },
    { "status_records", KFG_CFG_INT, 0, "10000", "message status records remembered" },
    { "keep_raw", KFG_CFG_BOOL, 0, "false", "keep the request body in raw.body" },
    { "map_conversation", KFG_CFG_STRING, 0, NULL,
      "foreign schema: JSON pointer to the conversation id (enables mapping)" },
    { "map_sender", KFG_CFG_STRING, 0, NULL, "foreign schema: JSON pointer to the sender id" },
    { "map_text", KFG_CFG_STRING, 0, NULL, "foreign schema: JSON pointer to a text" },
    { "map_event", KFG_CFG_STRING, 0, NULL,
      "foreign schema: JSON pointer to an event name (event part)" },
    { "map_parts", KFG_CFG_STRING, 0, NULL,
      "foreign schema: JSON pointer to an array of parts in the native form" },
    { "map_type", KFG_CFG_STRING, 0, "message", "foreign schema: envelope type" },
    { "map_fields", KFG_CFG_STRING_ARRAY, 0, NULL,
      "foreign schema: more fields, \"envelope.key=/json/pointer\"" },
    { "webhook_url", KFG_CFG_STRING, 0, NULL, "where outbound envelopes are POSTed" },
    { "webhook_secrets", KFG_CFG_STRING_ARRAY, 0, NULL,
      "webhook signing secrets (one signature each); \"env:NAME\" allowed" },
    { "webhook_timeout_ms", KFG_CFG_INT, 0, "5000", "one webhook attempt's time limit" },
    { "webhook_concurrency", KFG_CFG_INT, 0, "8", "webhook calls in flight at once" },
    { "webhook_queue", KFG_CFG_INT, 0, "1000",
      "deliveries waiting for a free call; beyond it they are retried later" },
    { "webhook_max_attempts", KFG_CFG_INT, 0, "0",
      "give up after this many attempts (0 = the gateway's [bus] retry_max)" },
    { "webhook_max_age_ms", KFG_CFG_INT, 0, "0",
      "give up once the first attempt is older than this (0 = no limit)" },
    { "webhook_retry_after_max_s", KFG_CFG_INT, 0, "3600",
      "longest Retry-After of a receiver's 429/503 that is honoured (longer: capped); "
      "never past the envelope's deadline or webhook_max_age_ms" },
    { "webhook_allow_private", KFG_CFG_BOOL, 0, "false",
      "allow loopback/private webhook destinations (tests, in-cluster receivers)" },
    { NULL, 0, 0, NULL, NULL },
};

enum outcome { O_ACCEPTED, O_REPLAYED, O_CLIENT_ERROR, O_AUTH, O_BUSY, O_ERROR, O__N };
static const char *const outcome_label[O__N] = {
    "outcome=\"accepted\"", "outcome=\"idempotent_replay\"", "outcome=\"client_error\"",
    "outcome=\"auth\"", "outcome=\"busy\"", "outcome=\"error\"",
};
enum wh_outcome { W_OK, W_RETRY, W_FAIL, W__N };
static const char *const wh_label[W__N] = {
    "outcome=\"ok\"", "outcome=\"retry\"", "outcome=\"failed\"",
};

struct secrets {
    char **v;
    size_t n;
};

struct wh_job;

struct rest {
    struct kfg_instance *ins;
    const struct kfg_host *host;
    struct kfg_loop *control;
    const char *name;

    char path[256];                 /* no trailing '/' */
    char route_messages[300], route_message[300], route_health[300], route_any[300];
    struct secrets keys, read_keys, hmac, wh_secrets;
    struct rest_auth auth;
    struct rest_map map;
    struct rest_limits lim;
    size_t max_body;
    int keep_raw;
    int retry_after;

    /* token bucket */
    pthread_mutex_t rate_mu;
    double rate, burst, tokens;
    struct timespec rate_last;

    struct rest_idem *idem;
    struct rest_status *status;

    /* webhooks: control loop only, except the atomics read by /health */
    const char *webhook_url;
    uint32_t wh_timeout;
    unsigned wh_concurrency, wh_queue_max;
    unsigned wh_max_attempts;
    int64_t wh_max_age_ms;
    int64_t wh_retry_after_max_ms;
    atomic_uint wh_inflight, wh_queued;
    atomic_int wh_failures;
    struct wh_job *q_head, *q_tail;
    int stopping;                   /* control loop */
    atomic_int running;
    char wh_last_error[160];        /* control loop */

    struct kfg_metric *m_req[O__N], *m_lat, *m_wh[W__N], *m_wh_lat;
};

/* ---------------------------------------------------------------------------
 * Helpers.
 */
static int64_t wall_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static struct timespec mono(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t;
}

static double since(struct timespec t0)
{
    struct timespec t = mono();
    return (double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) / 1e9;
}

static void sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len = 32;
    if (EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) != 1)
        memset(out, 0, 32);
}

static int str_is(struct kfg_str s, const char *z)
{
    size_t n = strlen(z);
    return s.ptr && s.len == n && memcmp(s.ptr, z, n) == 0;
}

static void secrets_free(struct secrets *s)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i]) {
            /* Secrets do not linger in freed memory. */
            volatile char *p = s->v[i];
            for (size_t j = 0; p[j]; j++)
                p[j] = 0;
            free(s->v[i]);
        }
    }
    free(s->v);
    s->v = NULL;
    s->n = 0;
}

/* A string array whose entries may be "env:NAME". */
static int secrets_load(struct rest *r, const char *key, struct secrets *out)
{
    const struct kfg_host *h = r->host;
    size_t n = h->config_array_len(r->ins, key);
    out->v = calloc(n ? n : 1, sizeof *out->v);
    if (!out->v)
        return KFG_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const char *v = h->config_array_string(r->ins, key, i);
        if (v && strncmp(v, "env:", 4) == 0) {
            const char *e = getenv(v + 4);
            if (!e || !*e) {
                h->log(r->ins, NULL, KFG_LOG_ERROR,
                       "%s[%zu]: environment variable %s is not set or empty", key, i, v + 4);
                return KFG_EINVAL;
            }
            v = e;
        }
        if (!v || !*v) {
            h->log(r->ins, NULL, KFG_LOG_ERROR, "%s[%zu] is empty", key, i);
            return KFG_EINVAL;
        }
        out->v[i] = strdup(v);
        if (!out->v[i])
            return KFG_ENOMEM;
        out->n = i + 1;
    }
    return KFG_OK;
}

static void respond(struct rest *r, struct kfg_request *req, int status, const char *ctype,
                    const char *body, const struct kfg_header *extra, size_t nextra)
{
    struct kfg_header h[8];
    size_t n = 0;
    h[n++] = (struct kfg_header){ "Content-Type", ctype };
    h[n++] = (struct kfg_header){ "Cache-Control", "no-store" };
    for (size_t i = 0; i < nextra && n < 8; i++)
        h[n++] = extra[i];
    r->host->req_respond(req, status, h, n, body, body ? strlen(body) : 0);
}

static void problem(struct rest *r, struct kfg_request *req, const struct rest_problem *p,
                    json_t *extra)
{
    char inst[96], ra[16];
    snprintf(inst, sizeof inst, "urn:kfgate:request:%s", r->host->req_id(req));
    char *doc = rest_problem_json(p, inst, extra);
    struct kfg_header h[3];
    size_t n = 0;
    if (p->retry_after) {
        snprintf(ra, sizeof ra, "%d", p->retry_after);
        h[n++] = (struct kfg_header){ "Retry-After", ra };
    }
    if (p->status == 401)
        h[n++] = (struct kfg_header){ "WWW-Authenticate", "Bearer realm=\"kfgate\"" };
    if (p->status == 415)
        h[n++] = (struct kfg_header){ "Accept-Post", "application/json" };
    respond(r, req, p->status, "application/problem+json",
            doc ? doc : "{\"title\":\"Internal error\",\"status\":500}", h, n);
    free(doc);
}

static void count(struct rest *r, enum outcome o, struct timespec t0)
{
    r->host->metric_add(r->m_req[o], 1);
    r->host->metric_observe(r->m_lat, since(t0));
}

static enum outcome outcome_of(int status)
{
    return status == 401 || status == 403 ? O_AUTH
           : status == 429 || status == 503 ? O_BUSY
           : status >= 500 ? O_ERROR : O_CLIENT_ERROR;
}

/* Token bucket shared by the workers. Returns 0, or the seconds to wait. */
static int rate_take(struct rest *r)
{
    if (r->rate <= 0)
        return 0;
    pthread_mutex_lock(&r->rate_mu);
    struct timespec t = mono();
    double dt = (double)(t.tv_sec - r->rate_last.tv_sec) +
                (double)(t.tv_nsec - r->rate_last.tv_nsec) / 1e9;
    r->rate_last = t;
    r->tokens += dt * r->rate;
    if (r->tokens > r->burst)
        r->tokens = r->burst;
    int wait = 0;
    if (r->tokens >= 1)
        r->tokens -= 1;
    else
        wait = (int)((1 - r->tokens) / r->rate) + 1;
    pthread_mutex_unlock(&r->rate_mu);
    return wait;
}

/* W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>, lowercase, version != ff. */
static int traceparent_ok(struct kfg_str v)
{
    if (!v.ptr || v.len != 55)
        return 0;
    for (size_t i = 0; i < 55; i++) {
        int dash = i == 2 || i == 35 || i == 52;
        char c = v.ptr[i];
        if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
    }
    return !(v.ptr[0] == 'f' && v.ptr[1] == 'f');
}

/* ---------------------------------------------------------------------------
 * Ingest: a kfg_host_sink per item, emit and its completion.
 */
/* One POST between its emits and their completions (one worker). */
struct call;

struct item {
    struct call *c;
    struct kfg_msg *m;           /* until emitted */
    char id[40];                 /* the adapter's UUIDv7, replaced by the
                                    envelope id once accepted (ABI 1.1) */
    int state;                   /* 0 waiting, 1 done, 2 not sent */
    int result;
    int dup;                     /* the journal knew its idempotency key */
    uint64_t seq;
    char reason[160];
};

struct call {
    struct rest *r;
    struct kfg_request *req;
    struct timespec t0;
    int batch;
    int have_idem;
    char idem[256];
    size_t idem_len;
    size_t n, left;
    struct item it[];
};

static json_t *item_json(const struct item *it)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(it->id));
    if (it->state == 1 && it->result == KFG_OK) {
        json_object_set_new(o, "seq", json_integer((json_int_t)it->seq));
        json_object_set_new(o, "status", json_string("accepted"));
    } else if (it->state == 1 && it->result == KFG_EDROPPED) {
        json_object_set_new(o, "status", json_string("dropped"));
        json_object_set_new(o, "reason", json_string(it->reason));
    } else {
        json_object_set_new(o, "status", json_string(it->state == 2 ? "not_sent" : "error"));
        if (it->state == 1)
            json_object_set_new(o, "error", json_integer(it->result));
    }
    return o;
}

static void call_finish(struct call *c)
{
    struct rest *r = c->r;
    int worst = KFG_OK;
    for (size_t i = 0; i < c->n; i++) {
        struct item *it = &c->it[i];
        int res = it->state == 2 ? KFG_ESTOPPED : it->result;
        if (res == KFG_OK || res == KFG_EDROPPED)
            continue;
        /* AGAIN beats STOPPED beats the rest: the client's best advice. */
        if (worst == KFG_OK || res == KFG_AGAIN || (res == KFG_ESTOPPED && worst != KFG_AGAIN))
            worst = res;
    }
    int64_t now = wall_ms();
    for (size_t i = 0; i < c->n; i++)
        /* A duplicate's record is the original's, made when it was new. */
        if (c->it[i].state == 1 && c->it[i].result == KFG_OK && !c->it[i].dup)
            rest_status_add(r->status, c->it[i].id, "in", "accepted", c->it[i].seq, NULL,
                            NULL, now, NULL);
    if (worst == KFG_OK) {
        char *body;
        if (!c->batch && c->it[0].result == KFG_OK) {
            /* The common answer, without building a JSON tree: the id is
             * hex and dashes, nothing to escape. */
            body = malloc(128);     /* 7 + id < 40 + 9 + 20 digits + 22 */
            if (body) {
                static const char a[] = "{\"id\":\"", b[] = "\",\"seq\":",
                                  z[] = ",\"status\":\"accepted\"}";
                char dg[20];
                size_t nd = 0, o = 0, il = strlen(c->it[0].id);   /* 36 */
                for (uint64_t v = c->it[0].seq; nd == 0 || v; v /= 10)
                    dg[nd++] = (char)('0' + v % 10);
                memcpy(body, a, sizeof a - 1);
                o = sizeof a - 1;
                memcpy(body + o, c->it[0].id, il);
                o += il;
                memcpy(body + o, b, sizeof b - 1);
                o += sizeof b - 1;
                while (nd)
                    body[o++] = dg[--nd];
                memcpy(body + o, z, sizeof z);      /* with its NUL */
            }
        } else {
            json_t *o;
            if (c->batch) {
                o = json_object();
                json_t *a = json_array();
                for (size_t i = 0; i < c->n; i++)
                    json_array_append_new(a, item_json(&c->it[i]));
                json_object_set_new(o, "messages", a);
            } else {
                o = item_json(&c->it[0]);
            }
            body = json_dumps(o, JSON_COMPACT);
            json_decref(o);
        }
        if (c->have_idem) {
            if (body)
                rest_idem_finish(r->idem, c->idem, c->idem_len, 202, body);
            else
                rest_idem_abort(r->idem, c->idem, c->idem_len);
        }
        char loc[400];
        size_t pl = strlen(r->path);    /* < 256: fits with the id */
        memcpy(loc, r->path, pl);
        memcpy(loc + pl, "/messages/", 10);
        rest_copy(loc + pl + 10, sizeof loc - pl - 10, c->it[0].id);
        struct kfg_header h[1] = { { "Location", loc } };
        respond(r, c->req, 202, "application/json", body ? body : "{}", h, c->batch ? 0 : 1);
        free(body);
        count(r, O_ACCEPTED, c->t0);
    } else {
        if (c->have_idem)
            rest_idem_abort(r->idem, c->idem, c->idem_len);
        struct rest_problem p;
        if (worst == KFG_AGAIN) {
            rest_problem_set(&p, 429, "busy", "Too many requests", NULL,
                             "the gateway is over a limit; retry after %d s", r->retry_after);
            p.retry_after = r->retry_after;
        } else if (worst == KFG_ESTOPPED) {
            rest_problem_set(&p, 503, "unavailable", "Service unavailable", NULL,
                             "the instance is stopping; retry after %d s", r->retry_after);
            p.retry_after = r->retry_after;
        } else if (worst == KFG_EINVAL) {
            rest_problem_set(&p, 400, "rejected", "Message rejected by the gateway", NULL,
                             "the gateway refused the envelope (%d)", worst);
        } else {
            rest_problem_set(&p, 500, "internal", "Internal error", NULL,
                             "the message could not be stored (%d)", worst);
        }
        json_t *extra = NULL;
        if (c->batch) {
            extra = json_object();
            json_t *a = json_array();
            for (size_t i = 0; i < c->n; i++)
                json_array_append_new(a, item_json(&c->it[i]));
            json_object_set_new(extra, "messages", a);
        }
        problem(r, c->req, &p, extra);
        json_decref(extra);
        count(r, outcome_of(p.status), c->t0);
    }
    for (size_t i = 0; i < c->n; i++)
        if (c->it[i].m)
            r->host->msg_free(c->it[i].m);
    free(c);
}

/* emit completion; arg is the item, on the worker of the request. */
static void on_emitted(void *arg, int result, uint64_t seq, const char *reason)
{
    struct item *it = arg;
    struct call *c = it->c;
    it->state = 1;
    it->result = result;
    it->seq = seq;
    rest_copy(it->reason, sizeof it->reason, reason ? reason : "");
    if (--c->left == 0)
        call_finish(c);
}

/* ABI 1.1: the same, with the envelope id (the original's for a duplicate). */
static void on_emitted2(void *arg, const struct kfg_emit_result *res)
{
    struct item *it = arg;
    if (res->result == KFG_OK && res->id && strlen(res->id) < sizeof it->id)
        rest_copy(it->id, sizeof it->id, res->id);
    it->dup = res->duplicate;
    on_emitted(arg, res->result, res->seq, res->reason);
}

static void post_messages(struct rest *r, struct kfg_request *req, struct timespec t0)
{
    const struct kfg_host *h = r->host;
    struct rest_problem p;
    struct kfg_str body = h->req_body(req);

    if (body.len > r->max_body) {
        rest_problem_set(&p, 413, "too-large", "Request body too large", NULL,
                         "%zu bytes, at most %zu", body.len, r->max_body);
        goto fail;
    }
    struct kfg_str authz = h->req_header(req, "Authorization");
    struct kfg_str ts = h->req_header(req, REST_HDR_TIMESTAMP);
    struct kfg_str sig = h->req_header(req, REST_HDR_SIGNATURE);
    if (rest_auth_check(&r->auth, authz.ptr, authz.len, ts.ptr, ts.len, sig.ptr, sig.len,
                        body.ptr, body.len, wall_ms() / 1000, 1, &p) != 0)
        goto fail;
    struct kfg_str ct = h->req_header(req, "Content-Type");
    if (!rest_ctype_json(ct.ptr, ct.len)) {
        rest_problem_set(&p, 415, "unsupported-media-type", "Unsupported media type", NULL,
                         "send Content-Type: application/json (UTF-8)");
        snprintf(p.header, sizeof p.header, "Content-Type");
        goto fail;
    }
    int wait = rate_take(r);
    if (wait) {
        rest_problem_set(&p, 429, "rate-limited", "Too many requests", NULL,
                         "over %g requests per second; retry after %d s", r->rate, wait);
        p.retry_after = wait;
        goto fail;
    }
    struct kfg_str ik = h->req_header(req, "Idempotency-Key");
    int have_idem = 0;
    if (ik.ptr) {
        if (!rest_idem_key_valid(ik.ptr, ik.len)) {
            rest_problem_set(&p, 400, "invalid-header", "Invalid request header", NULL,
                             "Idempotency-Key must be 1..255 printable ASCII characters");
            snprintf(p.header, sizeof p.header, "Idempotency-Key");
            goto fail;
        }
        unsigned char hash[32];
        sha256(body.ptr, body.len, hash);
        int ostatus = 0;
        char *answer = NULL;
        switch (rest_idem_begin(r->idem, ik.ptr, ik.len, hash, &ostatus, &answer)) {
        case REST_IDEM_NEW:
            have_idem = 1;
            break;
        case REST_IDEM_DONE: {
            struct kfg_header x[1] = { { "Idempotent-Replayed", "true" } };
            respond(r, req, ostatus, "application/json", answer ? answer : "{}", x, 1);
            free(answer);
            count(r, O_REPLAYED, t0);
            return;
        }
        case REST_IDEM_MISMATCH:
            rest_problem_set(&p, 409, "idempotency-key-reused", "Idempotency key reused",
                             NULL, "this Idempotency-Key was used with a different body");
            snprintf(p.header, sizeof p.header, "Idempotency-Key");
            goto fail;
        case REST_IDEM_PENDING:
            rest_problem_set(&p, 409, "idempotency-key-in-use", "Request in progress", NULL,
                             "a request with this Idempotency-Key is still being processed");
            snprintf(p.header, sizeof p.header, "Idempotency-Key");
            p.retry_after = 1;
            goto fail;
        case REST_IDEM_FULL:
            rest_problem_set(&p, 503, "unavailable", "Service unavailable", NULL,
                             "too many requests with idempotency keys in progress");
            p.retry_after = r->retry_after;
            goto fail;
        }
    }

    json_t **items = NULL;
    size_t n = 0;
    int batch = 0;
    json_t *root = rest_parse_body(body.ptr, body.len, &r->map, &r->lim, &items, &n, &batch, &p);
    if (!root) {
        if (have_idem)
            rest_idem_abort(r->idem, ik.ptr, ik.len);
        goto fail;
    }
    struct call *c = calloc(1, sizeof *c + n * sizeof(struct item));
    if (!c) {
        json_decref(root);
        free(items);
        if (have_idem)
            rest_idem_abort(r->idem, ik.ptr, ik.len);
        rest_problem_set(&p, 500, "internal", "Internal error", NULL, "out of memory");
        goto fail;
    }
    c->r = r;
    c->req = req;
    c->t0 = t0;
    c->batch = batch;
    c->n = n;
    if (have_idem) {
        c->have_idem = 1;
        memcpy(c->idem, ik.ptr, ik.len);
        c->idem_len = ik.len;
    }
    struct kfg_str tp = h->req_header(req, "traceparent");
    struct kfg_str tstate = h->req_header(req, "tracestate");
    int64_t now = wall_ms();
    int bad = 0;
    for (size_t i = 0; i < n && !bad; i++) {
        struct kfg_host_sink ms = { h, r->ins, NULL };
        struct kfg_msg_sink sink = kfg_host_sink(&ms);
        char base[32] = "";
        if (batch)
            snprintf(base, sizeof base, "/messages/%zu", i);
        int rc = rest_map_message(items[i], base, &r->map, &r->lim, &sink, &p);
        c->it[i].m = ms.m;
        rest_uuid7(c->it[i].id, now);
        if (rc != 0) {
            bad = 1;
            break;
        }
        struct kfg_msg *m = ms.m;
        /* The adapter's own id for the message: the channel's message id
         * in the envelope, and the answer's id where no envelope id comes
         * back (a 1.0 host, a dropped or refused item). */
        int e = kfg_env_set_channel_msg_id(h, m, c->it[i].id, 36);
        if (e == KFG_OK && have_idem) {
            char idx[24];
            int il = snprintf(idx, sizeof idx, "%zu", i);
            struct kfg_str comp[2] = { { ik.ptr, ik.len }, { idx, (size_t)il } };
            e = kfg_env_set_idem_parts(h, m, comp, batch ? 2 : 1);
        }
        if (e == KFG_OK && traceparent_ok(tp)) {
            e = h->msg_set(m, KFG_ENV_TRACEPARENT, tp.ptr, tp.len);
            if (e == KFG_OK && tstate.ptr && tstate.len && tstate.len <= 512)
                e = h->msg_set(m, KFG_ENV_TRACESTATE, tstate.ptr, tstate.len);
        }
        if (e == KFG_OK && r->keep_raw && !batch)
            e = kfg_env_set_raw(h, m, "application/json", body.ptr, body.len);
        if (e != KFG_OK) {
            rest_problem_set(&p, 500, "internal", "Internal error", NULL,
                             "the message could not be built (%d)", e);
            bad = 1;
        }
    }
    json_decref(root);
    free(items);
    if (bad) {
        for (size_t i = 0; i < n; i++)
            if (c->it[i].m)
                h->msg_free(c->it[i].m);
        if (have_idem)
            rest_idem_abort(r->idem, c->idem, c->idem_len);
        free(c);
        goto fail;
    }
    /* Emit in order; after a refusal the rest is not sent (state 2). */
    c->left = 1;        /* held by this function until the loop ends */
    for (size_t i = 0; i < n; i++) {
        struct item *it = &c->it[i];
        struct kfg_msg *m = it->m;
        it->m = NULL;
        it->c = c;
        c->left++;
        int rc = HOST_HAS(h, emit2) ? h->emit2(r->ins, m, on_emitted2, it)
                                    : h->emit(r->ins, m, on_emitted, it);
        if (rc != KFG_OK) {
            c->left--;
            it->m = m;     /* ours again: freed in call_finish */
            it->state = 1;
            it->result = rc;
            for (size_t j = i + 1; j < n; j++)
                c->it[j].state = 2;
            break;
        }
    }
    if (--c->left == 0)
        call_finish(c);
    return;
fail:
    problem(r, req, &p, NULL);
    count(r, outcome_of(p.status), t0);
}

static void get_message(struct rest *r, struct kfg_request *req, struct kfg_str id,
                        struct timespec t0)
{
    const struct kfg_host *h = r->host;
    struct rest_problem p;
    struct kfg_str authz = h->req_header(req, "Authorization");
    struct kfg_str ts = h->req_header(req, REST_HDR_TIMESTAMP);
    struct kfg_str sig = h->req_header(req, REST_HDR_SIGNATURE);
    struct kfg_str body = h->req_body(req);
    if (rest_auth_check(&r->auth, authz.ptr, authz.len, ts.ptr, ts.len, sig.ptr, sig.len,
                        body.ptr, body.len, wall_ms() / 1000, 0, &p) != 0)
        goto fail;
    char key[64];
    if (id.len == 0 || id.len >= sizeof key || memchr(id.ptr, '/', id.len)) {
        rest_problem_set(&p, 404, "not-found", "Not found", NULL, "no such message");
        goto fail;
    }
    memcpy(key, id.ptr, id.len);
    key[id.len] = '\0';
    json_t *o = rest_status_get(r->status, key);
    if (!o) {
        rest_problem_set(&p, 404, "not-found", "Not found", NULL,
                         "no message %s known to this instance (records are kept for the "
                         "last status_records messages since the instance started)", key);
        goto fail;
    }
    char *doc = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    respond(r, req, 200, "application/json", doc ? doc : "{}", NULL, 0);
    free(doc);
    count(r, O_ACCEPTED, t0);
    return;
fail:
    problem(r, req, &p, NULL);
    count(r, outcome_of(p.status), t0);
}

static void get_health(struct rest *r, struct kfg_request *req)
{
    json_t *o = json_object();
    int running = atomic_load(&r->running);
    json_object_set_new(o, "status", json_string(running ? "ok" : "stopping"));
    json_object_set_new(o, "instance", json_string(r->name));
    json_t *w = json_object();
    json_object_set_new(w, "configured", json_boolean(r->webhook_url != NULL));
    json_object_set_new(w, "in_flight", json_integer(atomic_load(&r->wh_inflight)));
    json_object_set_new(w, "queued", json_integer(atomic_load(&r->wh_queued)));
    json_object_set_new(w, "consecutive_failures", json_integer(atomic_load(&r->wh_failures)));
    json_object_set_new(o, "webhook", w);
    char *doc = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    respond(r, req, running ? 200 : 503, "application/json", doc ? doc : "{}", NULL, 0);
    free(doc);
}

static void on_request(void *ctx, struct kfg_request *req)
{
    struct rest *r = ctx;
    struct timespec t0 = mono();
    const struct kfg_host *h = r->host;
    struct rest_problem p;
    if (!atomic_load(&r->running)) {
        rest_problem_set(&p, 503, "unavailable", "Service unavailable", NULL,
                         "the instance is stopping");
        p.retry_after = r->retry_after;
        problem(r, req, &p, NULL);
        count(r, O_BUSY, t0);
        return;
    }
    struct kfg_str path = h->req_path(req), method = h->req_method(req);
    size_t pl = strlen(r->path);
    struct kfg_str sub = { "", 0 };
    if (path.len > pl && memcmp(path.ptr, r->path, pl) == 0 && path.ptr[pl] == '/')
        sub = (struct kfg_str){ path.ptr + pl + 1, path.len - pl - 1 };
    const char *allow = NULL;
    if (str_is(sub, "messages")) {
        if (str_is(method, "POST")) {
            post_messages(r, req, t0);
            return;
        }
        allow = "POST";
    } else if (sub.len > 9 && memcmp(sub.ptr, "messages/", 9) == 0) {
        if (str_is(method, "GET")) {
            get_message(r, req, (struct kfg_str){ sub.ptr + 9, sub.len - 9 }, t0);
            return;
        }
        allow = "GET";
    } else if (str_is(sub, "health")) {
        if (str_is(method, "GET")) {
            get_health(r, req);
            return;
        }
        allow = "GET";
    }
    if (allow) {
        rest_problem_set(&p, 405, "method-not-allowed", "Method not allowed", NULL,
                         "allowed: %s", allow);
        char inst[96];
        snprintf(inst, sizeof inst, "urn:kfgate:request:%s", h->req_id(req));
        char *doc = rest_problem_json(&p, inst, NULL);
        struct kfg_header x[1] = { { "Allow", allow } };
        respond(r, req, 405, "application/problem+json", doc ? doc : "{}", x, 1);
        free(doc);
    } else {
        rest_problem_set(&p, 404, "not-found", "Not found", NULL,
                         "no such resource (POST %s/messages, GET %s/messages/{id}, "
                         "GET %s/health)", r->path, r->path, r->path);
        problem(r, req, &p, NULL);
    }
    count(r, O_CLIENT_ERROR, t0);
}

/* ---------------------------------------------------------------------------
 * Outbound webhooks. Control loop.
 */
struct wh_job {
    struct rest *r;
    struct kfg_delivery *d;
    char id[64];
    char *body;
    size_t len;
    int attempt;
    int64_t deadline_ms;         /* the envelope's "deadline", 0 = none */
    struct timespec t0;
    struct wh_job *next;
};

static void jset(json_t *o, const char *name, struct kfg_str v)
{
    if (v.ptr)
        json_object_set_new(o, name, json_stringn(v.ptr, v.len));
}

static void jident(const struct kfg_host *h, const struct kfg_msg *m, json_t *o,
                   const char *name, const char *const *subs)
{
    json_t *x = json_object();
    char key[64];
    for (size_t i = 0; subs[i]; i++) {
        snprintf(key, sizeof key, "%s.%s", name, subs[i]);
        jset(x, subs[i], h->msg_get(m, key));
    }
    if (json_object_size(x))
        json_object_set_new(o, name, x);
    else
        json_decref(x);
}

/* The webhook body: the outbound envelope's string fields in the JSON
 * mapping of spec/envelope.md §9 (see ABI gaps: msg_get reads strings
 * only, and there is no way to list a message's keys). */
static char *webhook_body(struct rest *r, const struct kfg_msg *m, const char *id)
{
    const struct kfg_host *h = r->host;
    json_t *o = json_object();
    json_object_set_new(o, "v", json_integer(1));
    json_object_set_new(o, "id", json_string(id));
    jset(o, "tenant", h->msg_get(m, KFG_ENV_TENANT));
    jset(o, "channel", h->msg_get(m, KFG_ENV_CHANNEL));
    jset(o, "instance", h->msg_get(m, KFG_ENV_INSTANCE));
    json_object_set_new(o, "dir", json_string("out"));
    jset(o, "type", h->msg_get(m, KFG_ENV_TYPE));
    static const char *const conv[] = { "id", "kind", "thread", "name", NULL };
    static const char *const person[] = { "id", "name", "role", NULL };
    jident(h, m, o, "conversation", conv);
    jident(h, m, o, "recipient", person);
    jident(h, m, o, "sender", person);
    jset(o, "reply_to", h->msg_get(m, KFG_ENV_REPLY_TO));
    jset(o, "idem", h->msg_get(m, KFG_ENV_IDEM));
    json_t *tr = json_object();
    jset(tr, "traceparent", h->msg_get(m, KFG_ENV_TRACEPARENT));
    jset(tr, "tracestate", h->msg_get(m, KFG_ENV_TRACESTATE));
    if (json_object_size(tr))
        json_object_set_new(o, "trace", tr);
    else
        json_decref(tr);
    static const char *const pf[] = {
        "text", "format", "url", "media_id", "mime", "size", "name", "duration_ms", "width",
        "height", "sha256", "thumb_url", "thumb_media_id", "expires", "lat", "lon", "label",
        "scale", "title", "description", "key", "value", NULL
    };
    json_t *parts = json_array();
    size_t np = h->msg_part_count(m);
    for (size_t i = 0; i < np; i++) {
        json_t *p = json_object();
        const char *kind = h->msg_part_kind(m, i);
        json_object_set_new(p, "kind", json_string(kind ? kind : ""));
        for (size_t f = 0; pf[f]; f++)
            jset(p, pf[f], h->msg_part_get(m, i, pf[f]));
        json_array_append_new(parts, p);
    }
    json_object_set_new(o, "parts", parts);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

static void wh_start(struct wh_job *j);

static void job_free(struct wh_job *j)
{
    free(j->body);
    free(j);
}

static void wh_next(struct rest *r)
{
    while (r->q_head && atomic_load(&r->wh_inflight) < r->wh_concurrency) {
        struct wh_job *j = r->q_head;
        r->q_head = j->next;
        if (!r->q_head)
            r->q_tail = NULL;
        atomic_fetch_sub(&r->wh_queued, 1);
        wh_start(j);
    }
    if (r->stopping && !r->q_head && atomic_load(&r->wh_inflight) == 0) {
        r->stopping = 0;
        r->host->log(r->ins, NULL, KFG_LOG_INFO, "drained");
        r->host->stopped(r->ins);
    }
}

/* Finishes one delivery; records the receipt this instance saw. For
 * KFG_RETRY, retry_after_ms > 0 is the receiver's Retry-After (already
 * capped), handed to a 1.1 host; an older host has only its backoff. */
static void wh_finish(struct wh_job *j, int result, const char *code, const char *detail,
                      int64_t retry_after_ms)
{
    struct rest *r = j->r;
    const char *st = result == KFG_OK ? "sent" : result == KFG_RETRY ? "retrying" : "failed";
    rest_status_add(r->status, j->id, "out", st, 0, code, detail, wall_ms(), NULL);
    r->host->metric_add(r->m_wh[result == KFG_OK ? W_OK : result == KFG_RETRY ? W_RETRY
                                                                            : W_FAIL], 1);
    if (result == KFG_OK) {
        atomic_store(&r->wh_failures, 0);
    } else {
        atomic_fetch_add(&r->wh_failures, 1);
        snprintf(r->wh_last_error, sizeof r->wh_last_error, "%s", detail ? detail : "");
    }
    if (HOST_HAS(r->host, delivered2))
        r->host->delivered2(j->d, result, code, detail,
                            result == KFG_RETRY && retry_after_ms > 0 ? (uint64_t)retry_after_ms
                                                                      : 0);
    else
        r->host->delivered(j->d, result, code, detail);
}

/* One attempt's answer, from either completion. ra/ra_len: the Retry-After
 * value of a 429/503 (ra NULL when there was none or the host cannot say). */
static void wh_done(struct wh_job *j, int result, int status, const char *error,
                    const char *ra, size_t ra_len)
{
    struct rest *r = j->r;
    r->host->metric_observe(r->m_wh_lat, since(j->t0));
    atomic_fetch_sub(&r->wh_inflight, 1);
    char code[32], detail[240];
    int res;
    if (result != KFG_OK) {
        snprintf(code, sizeof code, result == KFG_ETIMEDOUT ? "http:timeout" : "http:network");
        snprintf(detail, sizeof detail, "%s", error ? error : "no response");
        res = KFG_RETRY;
    } else {
        snprintf(code, sizeof code, "http:%d", status);
        if (status >= 200 && status < 300) {
            res = KFG_OK;
            snprintf(detail, sizeof detail, "receiver answered %d", status);
        } else if (status == 408 || status == 429 || status >= 500) {
            res = KFG_RETRY;
            snprintf(detail, sizeof detail, "receiver answered %d", status);
        } else {
            res = KFG_EFAIL;
            snprintf(detail, sizeof detail, "receiver answered %d%s", status,
                     status >= 300 && status < 400 ? " (redirects are not followed)" : "");
        }
    }
    int64_t hint = 0;
    if (res == KFG_RETRY) {
        int64_t first = 0, now = wall_ms();
        unsigned attempts = (unsigned)j->attempt;
        rest_status_add(r->status, j->id, "out", "attempt_failed", 0, code, detail, now,
                        &first);
        size_t l = strlen(detail);
        if (r->wh_max_attempts && attempts >= r->wh_max_attempts) {
            res = KFG_EFAIL;
            snprintf(detail + l, sizeof detail - l, "; gave up after %u attempts", attempts);
        } else if (r->wh_max_age_ms && now - first >= r->wh_max_age_ms) {
            res = KFG_EFAIL;
            snprintf(detail + l, sizeof detail - l, "; gave up after %lld ms",
                     (long long)(now - first));
        } else if (ra && (status == 429 || status == 503)) {
            int64_t want;
            if (rest_retry_after_ms(ra, ra_len, now, &want) != 0) {
                /* The receiver's bytes, made safe for a log line. */
                char shown[65];
                size_t k = 0;
                for (; k < ra_len && k < sizeof shown - 1; k++)
                    shown[k] = ra[k] >= 0x20 && ra[k] < 0x7f && ra[k] != '"' ? ra[k] : '?';
                shown[k] = '\0';
                r->host->log(r->ins, NULL, KFG_LOG_WARN,
                             "delivery %s: receiver sent a malformed Retry-After \"%s\"; "
                             "using the backoff", j->id, shown);
                snprintf(detail + l, sizeof detail - l, "; malformed Retry-After ignored");
            } else if (want > 0) {
                hint = rest_retry_cap(want, now, j->deadline_ms,
                                      r->wh_max_age_ms ? first + r->wh_max_age_ms : 0,
                                      r->wh_retry_after_max_ms);
                if (hint < 0) {
                    int64_t w = want < r->wh_retry_after_max_ms ? want : r->wh_retry_after_max_ms;
                    res = KFG_EFAIL;
                    hint = 0;
                    snprintf(detail + l, sizeof detail - l,
                             "; Retry-After %lld ms falls after the delivery's %s: gave up",
                             (long long)want,
                             j->deadline_ms && now + w > j->deadline_ms ? "deadline"
                                                                        : "webhook_max_age_ms");
                } else {
                    snprintf(detail + l, sizeof detail - l, "; Retry-After %lld ms%s",
                             (long long)want, hint < want ? " (capped at "
                                                            "webhook_retry_after_max_s)" : "");
                }
            }
        }
    }
    wh_finish(j, res, code, detail, hint);
    job_free(j);
    wh_next(r);
}

static void on_webhook_done(void *arg, int result, int status, struct kfg_str body,
                            const char *error)
{
    (void)body;
    wh_done(arg, result, status, error, NULL, 0);
}

static void on_webhook_done2(void *arg, const struct kfg_http_response *resp)
{
    const char *ra = NULL;
    size_t ra_len = 0;
    if (resp->result == KFG_OK && (resp->status == 429 || resp->status == 503)) {
        for (size_t i = 0; i < resp->nheaders; i++) {
            struct kfg_str n = resp->header_names[i];
            if (n.len == 11 && strncasecmp(n.ptr, "Retry-After", 11) == 0) {
                ra = resp->header_values[i].ptr ? resp->header_values[i].ptr : "";
                ra_len = resp->header_values[i].len;
                break;
            }
        }
    }
    wh_done(arg, resp->result, resp->status, resp->error, ra, ra_len);
}

static void wh_start(struct wh_job *j)
{
    struct rest *r = j->r;
    const struct kfg_host *h = r->host;
    int64_t now_s = wall_ms() / 1000;
    char hts[64], hid[128], hatt[48], hsig[24 + 68 * 8];
    snprintf(hts, sizeof hts, REST_HDR_TIMESTAMP ": %lld", (long long)now_s);
    snprintf(hid, sizeof hid, REST_HDR_DELIVERY ": %s", j->id);
    snprintf(hatt, sizeof hatt, REST_HDR_ATTEMPT ": %d", j->attempt);
    const char *hdrs[8];
    size_t n = 0;
    hdrs[n++] = "Content-Type: application/json";
    hdrs[n++] = "User-Agent: kfgate-rest/" REST_VERSION;
    hdrs[n++] = hts;
    hdrs[n++] = hid;
    hdrs[n++] = hatt;
    char *sig = NULL;
    if (r->wh_secrets.n) {
        size_t ns = r->wh_secrets.n > 8 ? 8 : r->wh_secrets.n;
        sig = rest_webhook_signature((const char *const *)r->wh_secrets.v, ns, now_s, j->id,
                                     j->body, j->len);
        snprintf(hsig, sizeof hsig, REST_HDR_SIGNATURE ": %s", sig ? sig : "");
        hdrs[n++] = hsig;
    }
    hdrs[n] = NULL;
    struct kfg_http_call call = {
        .method = "POST", .url = r->webhook_url, .headers = hdrs, .body = j->body,
        .body_len = j->len, .timeout_ms = r->wh_timeout,
    };
    j->t0 = mono();
    atomic_fetch_add(&r->wh_inflight, 1);
    int rc = HOST_HAS(h, http_call2) ? h->http_call2(r->ins, &call, on_webhook_done2, j)
                                     : h->http_call(r->ins, &call, on_webhook_done, j);
    free(sig);
    if (rc != KFG_OK) {
        atomic_fetch_sub(&r->wh_inflight, 1);
        char detail[64];
        snprintf(detail, sizeof detail, "cannot start the HTTP call (%d)", rc);
        wh_finish(j, KFG_RETRY, "http:client", detail, 0);
        job_free(j);
    }
}

static int rest_deliver(void *ctx, const struct kfg_msg *m, struct kfg_delivery *d)
{
    struct rest *r = ctx;
    const struct kfg_host *h = r->host;
    if (!r->webhook_url) {
        h->delivered(d, KFG_EFAIL, "rest:no_webhook", "the instance has no webhook_url");
        return KFG_OK;
    }
    if (!atomic_load(&r->running))
        return KFG_RETRY;
    struct wh_job *j = calloc(1, sizeof *j);
    if (!j)
        return KFG_ENOMEM;
    j->r = r;
    j->d = d;
    struct kfg_str id = h->msg_get(m, KFG_ENV_ID);
    if (id.ptr && id.len && id.len < sizeof j->id) {
        memcpy(j->id, id.ptr, id.len);
    } else {
        /* No id (should not happen): a stable one from the content. */
        char *tmp = webhook_body(r, m, "");
        unsigned char hs[32];
        sha256(tmp ? tmp : "", tmp ? strlen(tmp) : 0, hs);
        free(tmp);
        for (int i = 0; i < 16; i++)
            snprintf(j->id + 2 * i, 3, "%02x", hs[i]);
    }
    j->body = webhook_body(r, m, j->id);
    if (!j->body) {
        free(j);
        return KFG_ENOMEM;
    }
    j->len = strlen(j->body);
    int seen = rest_status_add(r->status, j->id, "out", "attempt", 0, NULL, NULL, wall_ms(),
                               NULL);
    /* The host's count survives an evicted status record and a reload. */
    j->attempt = HOST_HAS(h, delivery_attempt) ? (int)h->delivery_attempt(d) : seen;
    int64_t dl = 0;
    if (HOST_HAS(h, msg_get_int)) {
        if (h->msg_get_int(m, KFG_ENV_DEADLINE, &dl) != KFG_OK)
            dl = 0;
    } else {
        struct kfg_str v = h->msg_get(m, KFG_ENV_DEADLINE);
        if (v.ptr && v.len && v.len < 24) {
            char tmp[24];
            memcpy(tmp, v.ptr, v.len);
            tmp[v.len] = '\0';
            dl = strtoll(tmp, NULL, 10);
        }
    }
    j->deadline_ms = dl > 0 ? dl : 0;
    if (atomic_load(&r->wh_inflight) < r->wh_concurrency && !r->q_head) {
        wh_start(j);
        return KFG_OK;
    }
    if (atomic_load(&r->wh_queued) >= r->wh_queue_max) {
        wh_finish(j, KFG_RETRY, "rest:queue_full", "the instance's webhook queue is full", 0);
        job_free(j);
        return KFG_OK;
    }
    if (r->q_tail)
        r->q_tail->next = j;
    else
        r->q_head = j;
    r->q_tail = j;
    atomic_fetch_add(&r->wh_queued, 1);
    return KFG_OK;
}

/* ---------------------------------------------------------------------------
 * Lifecycle.
 */
static void rest_cleanup(struct rest *r)
{
    rest_idem_free(r->idem);
    rest_status_free(r->status);
    rest_replay_free(r->auth.replay);
    secrets_free(&r->keys);
    secrets_free(&r->read_keys);
    secrets_free(&r->hmac);
    secrets_free(&r->wh_secrets);
    if (r->rate > 0)
        pthread_mutex_destroy(&r->rate_mu);
    r->idem = NULL;
    r->status = NULL;
    r->auth.replay = NULL;
}

static int cfg_pos(struct rest *r, const char *key, int64_t min, int64_t max, int64_t *out)
{
    int64_t v = r->host->config_int(r->ins, key);
    if (v < min || v > max) {
        r->host->log(r->ins, NULL, KFG_LOG_ERROR, "%s must be in %lld..%lld, not %lld", key,
                     (long long)min, (long long)max, (long long)v);
        return KFG_EINVAL;
    }
    *out = v;
    return KFG_OK;
}

/* An optional string key; NULL when unset. (The host documents NULL for an
 * unset key without default, but hands out "" today: both mean unset.) */
static const char *opt_string(struct rest *r, const char *key)
{
    const char *v = r->host->config_string(r->ins, key);
    return v && *v ? v : NULL;
}

static int map_ptr(struct rest *r, const char *key, const char **out)
{
    const char *v = opt_string(r, key);
    *out = v;
    if (v && (!rest_pointer_valid(v) || !*v)) {
        r->host->log(r->ins, NULL, KFG_LOG_ERROR,
                     "%s = \"%s\" is not a JSON pointer (RFC 6901, e.g. \"/order/id\")", key, v);
        return KFG_EINVAL;
    }
    return KFG_OK;
}

static int rest_init_inner(struct rest *r)
{
    const struct kfg_host *h = r->host;
    struct kfg_instance *ins = r->ins;
    const char *path = h->config_string(ins, "path");
    size_t pl = path ? strlen(path) : 0;
    while (pl > 1 && path[pl - 1] == '/')
        pl--;
    if (!path || path[0] != '/' || pl >= 200 || strpbrk(path, "?# ")) {
        h->log(ins, NULL, KFG_LOG_ERROR, "path must start with '/' and be a plain path: \"%s\"",
               path ? path : "");
        return KFG_EINVAL;
    }
    if (pl == 1)
        pl = 0;     /* "/" : the API sits at the root */
    memcpy(r->path, path, pl);
    r->path[pl] = '\0';
    snprintf(r->route_messages, sizeof r->route_messages, "%s/messages", r->path);
    snprintf(r->route_message, sizeof r->route_message, "%s/messages/", r->path);
    snprintf(r->route_health, sizeof r->route_health, "%s/health", r->path);
    snprintf(r->route_any, sizeof r->route_any, "%s/", r->path);

    int rc;
    if ((rc = secrets_load(r, "api_keys", &r->keys)) != KFG_OK ||
        (rc = secrets_load(r, "read_keys", &r->read_keys)) != KFG_OK ||
        (rc = secrets_load(r, "hmac_secrets", &r->hmac)) != KFG_OK ||
        (rc = secrets_load(r, "webhook_secrets", &r->wh_secrets)) != KFG_OK)
        return rc;
    if (r->keys.n + r->read_keys.n + r->hmac.n == 0) {
        h->log(ins, NULL, KFG_LOG_ERROR,
               "no credentials: set api_keys and/or hmac_secrets (the API is never open)");
        return KFG_EINVAL;
    }
    r->auth.keys = (const char **)r->keys.v;
    r->auth.nkeys = r->keys.n;
    r->auth.read_keys = (const char **)r->read_keys.v;
    r->auth.nread = r->read_keys.n;
    r->auth.secrets = (const char **)r->hmac.v;
    r->auth.nsecrets = r->hmac.n;

    int64_t v;
    if ((rc = cfg_pos(r, "hmac_tolerance_s", 1, 86400, &r->auth.tolerance_s)) != KFG_OK)
        return rc;
    if ((rc = cfg_pos(r, "replay_cache", 0, 1 << 24, &v)) != KFG_OK)
        return rc;
    if (v && r->hmac.n && !(r->auth.replay = rest_replay_new((size_t)v)))
        return KFG_ENOMEM;
    if ((rc = cfg_pos(r, "max_body", 1, 64 << 20, &v)) != KFG_OK)
        return rc;
    r->max_body = (size_t)v;
    if ((rc = cfg_pos(r, "max_batch", 1, 10000, &v)) != KFG_OK)
        return rc;
    r->lim.max_batch = (size_t)v;
    if ((rc = cfg_pos(r, "max_text", 1, 1 << 20, &v)) != KFG_OK)
        return rc;
    r->lim.max_text = (size_t)v;
    r->lim.max_parts = 64;
    r->lim.max_id = 256;
    if ((rc = cfg_pos(r, "retry_after_s", 1, 3600, &v)) != KFG_OK)
        return rc;
    r->retry_after = (int)v;
    int64_t rate, burst;
    if ((rc = cfg_pos(r, "rate_limit", 0, 10000000, &rate)) != KFG_OK ||
        (rc = cfg_pos(r, "rate_burst", 0, 10000000, &burst)) != KFG_OK)
        return rc;
    r->rate = (double)rate;
    r->burst = burst ? (double)burst : (double)rate;
    r->tokens = r->burst;
    if (rate) {
        pthread_mutex_init(&r->rate_mu, NULL);
        r->rate_last = mono();
    }
    if ((rc = cfg_pos(r, "idempotency_keys", 1, 10000000, &v)) != KFG_OK)
        return rc;
    if (!(r->idem = rest_idem_new((size_t)v)))
        return KFG_ENOMEM;
    if ((rc = cfg_pos(r, "status_records", 1, 10000000, &v)) != KFG_OK)
        return rc;
    if (!(r->status = rest_status_new((size_t)v)))
        return KFG_ENOMEM;
    r->keep_raw = h->config_bool(ins, "keep_raw");

    /* Foreign schema. */
    if ((rc = map_ptr(r, "map_conversation", &r->map.conversation)) != KFG_OK ||
        (rc = map_ptr(r, "map_sender", &r->map.sender)) != KFG_OK ||
        (rc = map_ptr(r, "map_text", &r->map.text)) != KFG_OK ||
        (rc = map_ptr(r, "map_event", &r->map.event)) != KFG_OK ||
        (rc = map_ptr(r, "map_parts", &r->map.parts)) != KFG_OK)
        return rc;
    size_t nf = h->config_array_len(ins, "map_fields");
    int any = r->map.conversation || r->map.sender || r->map.text || r->map.event ||
              r->map.parts || nf;
    if (any) {
        if (!r->map.conversation || !r->map.sender ||
            !(r->map.text || r->map.event || r->map.parts)) {
            h->log(ins, NULL, KFG_LOG_ERROR,
                   "a foreign schema needs map_conversation, map_sender and at least one "
                   "of map_text, map_event, map_parts");
            return KFG_EINVAL;
        }
        r->map.enabled = 1;
        r->map.type = h->config_string(ins, "map_type");
        if (!r->map.type || (strcmp(r->map.type, "message") && strcmp(r->map.type, "event"))) {
            h->log(ins, NULL, KFG_LOG_ERROR, "map_type must be \"message\" or \"event\"");
            return KFG_EINVAL;
        }
        for (size_t i = 0; i < nf; i++) {
            char why[256];
            if (rest_map_add_field(&r->map, h->config_array_string(ins, "map_fields", i), why,
                                   sizeof why) != 0) {
                h->log(ins, NULL, KFG_LOG_ERROR, "%s", why);
                return KFG_EINVAL;
            }
        }
    }

    /* Webhooks. */
    r->webhook_url = opt_string(r, "webhook_url");
    if (r->webhook_url) {
        char why[160];
        int priv = 0;
        if (rest_url_check(r->webhook_url, &priv, why, sizeof why) != 0) {
            h->log(ins, NULL, KFG_LOG_ERROR, "%s", why);
            return KFG_EINVAL;
        }
        if (priv && !h->config_bool(ins, "webhook_allow_private")) {
            h->log(ins, NULL, KFG_LOG_ERROR,
                   "webhook_url points at a loopback or private address; set "
                   "webhook_allow_private = true if that is intended");
            return KFG_EINVAL;
        }
        if (!r->wh_secrets.n)
            h->log(ins, NULL, KFG_LOG_WARN,
                   "webhook_secrets is empty: receivers cannot verify deliveries");
    }
    if ((rc = cfg_pos(r, "webhook_timeout_ms", 1, 600000, &v)) != KFG_OK)
        return rc;
    r->wh_timeout = (uint32_t)v;
    if ((rc = cfg_pos(r, "webhook_concurrency", 1, 10000, &v)) != KFG_OK)
        return rc;
    r->wh_concurrency = (unsigned)v;
    if ((rc = cfg_pos(r, "webhook_queue", 0, 10000000, &v)) != KFG_OK)
        return rc;
    r->wh_queue_max = (unsigned)v;
    if ((rc = cfg_pos(r, "webhook_max_attempts", 0, 1000, &v)) != KFG_OK)
        return rc;
    r->wh_max_attempts = (unsigned)v;
    if ((rc = cfg_pos(r, "webhook_max_age_ms", 0, INT64_MAX / 2, &r->wh_max_age_ms)) != KFG_OK)
        return rc;
    if ((rc = cfg_pos(r, "webhook_retry_after_max_s", 1, 7 * 86400, &v)) != KFG_OK)
        return rc;
    r->wh_retry_after_max_ms = v * 1000;

    for (int o = 0; o < O__N; o++)
        if (!(r->m_req[o] = h->metric_counter(ins, "rest_requests_total",
                                              "REST API requests by outcome.",
                                              outcome_label[o])))
            return KFG_ENOMEM;
    for (int o = 0; o < W__N; o++)
        if (!(r->m_wh[o] = h->metric_counter(ins, "rest_webhook_attempts_total",
                                             "Webhook attempts by outcome.", wh_label[o])))
            return KFG_ENOMEM;
    r->m_lat = h->metric_histogram(ins, "rest_request_duration_seconds",
                                   "Time from request to answer.", NULL);
    r->m_wh_lat = h->metric_histogram(ins, "rest_webhook_duration_seconds",
                                      "Time of one webhook attempt.", NULL);
    if (!r->m_lat || !r->m_wh_lat)
        return KFG_ENOMEM;
    return KFG_OK;
}

static int rest_init(struct kfg_instance *ins, const struct kfg_host *host, void *ctx)
{
    struct rest *r = ctx;
    r->ins = ins;
    r->host = host;
    r->control = host->loop_current();
    r->name = host->instance_name(ins);
    atomic_init(&r->running, 0);
    atomic_init(&r->wh_inflight, 0);
    atomic_init(&r->wh_queued, 0);
    atomic_init(&r->wh_failures, 0);
    int rc = rest_init_inner(r);
    if (rc != KFG_OK)
        rest_cleanup(r);
    return rc;
}

static int rest_start(void *ctx)
{
    struct rest *r = ctx;
    const struct kfg_host *h = r->host;
    int rc = h->route_add(r->ins, "POST", r->route_messages, KFG_ROUTE_EXACT, on_request);
    if (rc == KFG_OK)
        rc = h->route_add(r->ins, "GET", r->route_message, KFG_ROUTE_PREFIX, on_request);
    if (rc == KFG_OK)
        rc = h->route_add(r->ins, "GET", r->route_health, KFG_ROUTE_EXACT, on_request);
    if (rc == KFG_OK)   /* everything else under the prefix: problem+json 404/405 */
        rc = h->route_add(r->ins, NULL, r->route_any, KFG_ROUTE_PREFIX, on_request);
    if (rc != KFG_OK) {
        h->log(r->ins, NULL, KFG_LOG_ERROR, "cannot claim routes under %s/: %d", r->path, rc);
        return rc;
    }
    atomic_store(&r->running, 1);
    h->log(r->ins, NULL, KFG_LOG_INFO, "REST API on %s/ (%s schema)%s%s", r->path,
           r->map.enabled ? "mapped" : "native", r->webhook_url ? ", webhooks to " : "",
           r->webhook_url ? r->webhook_url : "");
    return KFG_OK;
}

static void h_log_stop(struct rest *r, unsigned n)
{
    r->host->log(r->ins, NULL, KFG_LOG_INFO, "stopping, %u webhook call(s) in flight", n);
}

static int rest_stop(void *ctx)
{
    struct rest *r = ctx;
    atomic_store(&r->running, 0);
    /* Queued deliveries go back to the host, which retries them (on the
     * instance's next generation after a reload). */
    while (r->q_head) {
        struct wh_job *j = r->q_head;
        r->q_head = j->next;
        atomic_fetch_sub(&r->wh_queued, 1);
        wh_finish(j, KFG_RETRY, "rest:stopping", "the instance is stopping", 0);
        job_free(j);
    }
    r->q_tail = NULL;
    unsigned n = atomic_load(&r->wh_inflight);
    if (n == 0)
        return KFG_OK;
    h_log_stop(r, n);
    r->stopping = 1;
    return KFG_AGAIN;
}

static int rest_health(void *ctx, char *detail, size_t cap)
{
    struct rest *r = ctx;
    int f = atomic_load(&r->wh_failures);
    if (f >= WEBHOOK_UNHEALTHY) {
        snprintf(detail, cap, "last %d webhook attempts failed: %s", f, r->wh_last_error);
        return KFG_EFAIL;
    }
    return KFG_OK;
}

static void rest_destroy(void *ctx)
{
    struct rest *r = ctx;
    /* After a drain timeout jobs may still be queued; the host finishes
     * their deliveries itself. Calls in flight had their completions
     * cancelled by the host before destroy. */
    while (r->q_head) {
        struct wh_job *j = r->q_head;
        r->q_head = j->next;
        job_free(j);
    }
    rest_cleanup(r);
}

KFG_PLUGIN_EXPORT = {
    KFG_PLUGIN_HEADER,
    .kind = KFG_KIND_ADAPTER,
    .name = "rest",
    .version = REST_VERSION,
    .description = "REST/JSON ingest API and signed outbound webhooks",
    .config = rest_config,
    .ctx_size = sizeof(struct rest),
    .init = rest_init,
    .start = rest_start,
    .stop = rest_stop,
    .destroy = rest_destroy,
    .health = rest_health,
    .deliver = rest_deliver,
};
