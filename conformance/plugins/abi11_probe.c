/*
 * abi11-probe: a test adapter for the conformance suite (not shipped) that
 * exercises every host entry added in ABI 1.1 through HTTP, so
 * conformance/test_abi11.py can check them black-box.
 *
 * Keys:  path            route prefix (required)
 *        fail_first      deliver answers KFG_RETRY for this many attempts
 *        retry_after_ms  the hint passed to delivered2 with those retries
 *
 * Routes under path:
 *   POST emit        emit2 of a text message (X-Conversation, Idempotency-Key)
 *                    -> {"result","seq","id","duplicate"}
 *   GET  replay?from=N&max=M&dirs=in|out|both&conv=C
 *                    -> {"result","next","more","recs":[[seq,dir,conv,text],...]}
 *   GET  http?url=U  http_call2 GET U -> {"result","status","x_probe",
 *                    "retry_after","nheaders","elapsed_us"}
 *   GET  attempts    the deliveries seen: [[attempt,seq,conv,ms],...]
 * Query values are used raw (the test sends nothing that needs decoding).
 */
#include <kfgate/plugin.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

struct probe {
    struct kfg_instance *ins;
    const struct kfg_host *host;
    const char *path;
    int64_t fail_first, retry_after_ms;
    pthread_mutex_t mu;
    char attempts[16384];
    size_t alen;
};

static const struct kfg_config_key probe_config[] = {
    {"path", KFG_CFG_STRING, KFG_CFG_REQUIRED, NULL, "route prefix"},
    {"fail_first", KFG_CFG_INT, 0, "0", "attempts answered KFG_RETRY"},
    {"retry_after_ms", KFG_CFG_INT, 0, "0", "hint given with those retries"},
    {NULL, 0, 0, NULL, NULL},
};

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Copies query parameter `name` into out; 0 when present. */
static int qparam(struct kfg_str q, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > nl && memcmp(p, name, nl) == 0 && p[nl] == '=') {
            size_t vl = (size_t)(stop - p - nl - 1);
            if (vl >= cap)
                vl = cap - 1;
            memcpy(out, p + nl + 1, vl);
            out[vl] = '\0';
            return 0;
        }
        p = amp ? amp + 1 : NULL;
    }
    return -1;
}

static void reply(struct probe *p, struct kfg_request *req, int status, const char *body)
{
    static const struct kfg_header h[] = {{"Content-Type", "application/json"}};
    p->host->req_respond(req, status, h, 1, body, strlen(body));
}

/* -- emit2 */

struct emit_ctx {
    struct probe *p;
    struct kfg_request *req;
};

static void emit_done(void *arg, const struct kfg_emit_result *r)
{
    struct emit_ctx *e = arg;
    char body[256];
    snprintf(body, sizeof body, "{\"result\":%d,\"seq\":%llu,\"id\":\"%s\",\"duplicate\":%s}",
             r->result, (unsigned long long)r->seq, r->id ? r->id : "",
             r->duplicate ? "true" : "false");
    reply(e->p, e->req, 200, body);
    free(e);
}

static void on_emit(struct probe *p, struct kfg_request *req)
{
    const struct kfg_host *h = p->host;
    struct kfg_msg *m = h->msg_new(p->ins, "message");
    struct kfg_str conv = h->req_header(req, "X-Conversation");
    struct kfg_str key = h->req_header(req, "Idempotency-Key");
    struct kfg_str body = h->req_body(req);
    struct emit_ctx *e = malloc(sizeof(*e));
    if (!m || !e) {
        free(e);
        h->msg_free(m);
        reply(p, req, 500, "{\"error\":\"oom\"}");
        return;
    }
    h->msg_set(m, "conversation.id", conv.ptr ? conv.ptr : "c1", conv.ptr ? conv.len : 2);
    h->msg_set(m, "sender.id", "u1", 2);
    if (key.ptr)
        h->msg_set(m, "idem", key.ptr, key.len);
    int part = h->msg_part_add(m, "text");
    h->msg_part_set(m, (size_t)part, "text", body.ptr ? body.ptr : "", body.len);
    e->p = p;
    e->req = req;
    int r = h->emit2(p->ins, m, emit_done, e);
    if (r != KFG_OK) {
        h->msg_free(m);
        free(e);
        char b[64];
        snprintf(b, sizeof b, "{\"result\":%d}", r);
        reply(p, req, 503, b);
    }
}

/* -- replay */

struct replay_ctx {
    struct probe *p;
    struct kfg_request *req;
    char *out;
    size_t len, cap;
    int n;
};

static void rc_append(struct replay_ctx *c, const char *s, size_t n)
{
    if (c->len + n + 1 > c->cap) {
        size_t nc = (c->cap ? c->cap * 2 : 1024) + n;
        char *np = realloc(c->out, nc);
        if (!np)
            return;
        c->out = np;
        c->cap = nc;
    }
    memcpy(c->out + c->len, s, n);
    c->len += n;
    c->out[c->len] = '\0';
}

static int replay_each(void *arg, uint64_t seq, const struct kfg_msg *m)
{
    struct replay_ctx *c = arg;
    const struct kfg_host *h = c->p->host;
    struct kfg_str dir = h->msg_get(m, "dir");
    struct kfg_str conv = h->msg_get(m, "conversation.id");
    struct kfg_str text = h->msg_part_count(m) ? h->msg_part_get(m, 0, "text")
                                               : (struct kfg_str){ NULL, 0 };
    int64_t mseq = 0;
    if (h->msg_get_int(m, "seq", &mseq) != KFG_OK || (uint64_t)mseq != seq)
        mseq = -1;  /* the test sees the mismatch */
    char b[512];
    int n = snprintf(b, sizeof b, "%s[%lld,\"%.*s\",\"%.*s\",\"%.*s\"]", c->n++ ? "," : "",
                     (long long)mseq, (int)dir.len, dir.ptr ? dir.ptr : "", (int)conv.len,
                     conv.ptr ? conv.ptr : "", (int)(text.len > 200 ? 200 : text.len),
                     text.ptr ? text.ptr : "");
    rc_append(c, b, n > 0 && (size_t)n < sizeof b ? (size_t)n : 0);
    return 0;
}

static void replay_done(void *arg, int result, uint64_t next, int more)
{
    struct replay_ctx *c = arg;
    char b[128];
    int n = snprintf(b, sizeof b, "],\"result\":%d,\"next\":%llu,\"more\":%s}", result,
                     (unsigned long long)next, more ? "true" : "false");
    rc_append(c, b, (size_t)n);
    reply(c->p, c->req, 200, c->out ? c->out : "{}");
    free(c->out);
    free(c);
}

static void on_replay(struct probe *p, struct kfg_request *req)
{
    struct kfg_str q = p->host->req_query(req);
    char from[32] = "1", max[32] = "0", dirs[16] = "both", conv[128];
    qparam(q, "from", from, sizeof from);
    qparam(q, "max", max, sizeof max);
    qparam(q, "dirs", dirs, sizeof dirs);
    int have_conv = qparam(q, "conv", conv, sizeof conv) == 0;
    struct kfg_replay_query rq = {
        .from_seq = strtoull(from, NULL, 10),
        .max = (uint32_t)strtoul(max, NULL, 10),
        .directions = !strcmp(dirs, "in") ? KFG_REPLAY_IN
                      : !strcmp(dirs, "out") ? KFG_REPLAY_OUT : 0,
        .conversation = have_conv ? conv : NULL,
    };
    struct replay_ctx *c = calloc(1, sizeof(*c));
    if (!c) {
        reply(p, req, 500, "{}");
        return;
    }
    c->p = p;
    c->req = req;
    rc_append(c, "{\"recs\":[", 9);
    int r = p->host->replay(p->ins, &rq, replay_each, replay_done, c);
    if (r != KFG_OK) {
        free(c->out);
        free(c);
        char b[64];
        snprintf(b, sizeof b, "{\"result\":%d}", r);
        reply(p, req, 500, b);
    }
}

/* -- http_call2 */

static void http_done(void *arg, const struct kfg_http_response *r)
{
    struct emit_ctx *e = arg;
    struct kfg_str xp = { "", 0 }, ra = { "", 0 };
    for (size_t i = 0; i < r->nheaders; i++) {
        if (r->header_names[i].len == 7 &&
            !strncasecmp(r->header_names[i].ptr, "X-Probe", 7))
            xp = r->header_values[i];
        if (r->header_names[i].len == 11 &&
            !strncasecmp(r->header_names[i].ptr, "Retry-After", 11))
            ra = r->header_values[i];
    }
    char body[512];
    snprintf(body, sizeof body,
             "{\"result\":%d,\"status\":%d,\"x_probe\":\"%.*s\",\"retry_after\":\"%.*s\","
             "\"nheaders\":%zu,\"elapsed_us\":%llu,\"body\":\"%.*s\"}",
             r->result, r->status, (int)(xp.len > 100 ? 100 : xp.len), xp.ptr,
             (int)(ra.len > 100 ? 100 : ra.len), ra.ptr, r->nheaders,
             (unsigned long long)r->elapsed_us, (int)(r->body.len > 100 ? 100 : r->body.len),
             r->body.ptr ? r->body.ptr : "");
    reply(e->p, e->req, 200, body);
    free(e);
}

static void on_http(struct probe *p, struct kfg_request *req)
{
    char url[512];
    if (qparam(p->host->req_query(req), "url", url, sizeof url) != 0) {
        reply(p, req, 400, "{\"error\":\"url\"}");
        return;
    }
    struct kfg_http_call call = { .method = "GET", .url = url, .timeout_ms = 5000 };
    struct emit_ctx *e = malloc(sizeof(*e));
    if (!e) {
        reply(p, req, 500, "{}");
        return;
    }
    e->p = p;
    e->req = req;
    if (p->host->http_call2(p->ins, &call, http_done, e) != KFG_OK) {
        free(e);
        reply(p, req, 500, "{\"error\":\"call\"}");
    }
}

static void on_request(void *ctx, struct kfg_request *req)
{
    struct probe *p = ctx;
    struct kfg_str path = p->host->req_path(req);
    size_t pl = strlen(p->path);
    const char *rest = path.ptr + pl;
    size_t rl = path.len - pl;
#define IS(s) (rl == sizeof(s) - 1 && memcmp(rest, s, rl) == 0)
    if (IS("emit")) {
        on_emit(p, req);
    } else if (IS("replay")) {
        on_replay(p, req);
    } else if (IS("http")) {
        on_http(p, req);
    } else if (IS("attempts")) {
        char body[sizeof p->attempts + 4];
        pthread_mutex_lock(&p->mu);
        snprintf(body, sizeof body, "[%.*s]", (int)p->alen, p->attempts);
        pthread_mutex_unlock(&p->mu);
        reply(p, req, 200, body);
    } else {
        reply(p, req, 404, "{}");
    }
#undef IS
}

static int probe_init(struct kfg_instance *ins, const struct kfg_host *host, void *ctx)
{
    struct probe *p = ctx;
    if (!KFG_HOST_HAS(host, emit2) || !KFG_HOST_HAS(host, replay)) {
        host->log(ins, NULL, KFG_LOG_ERROR, "needs ABI 1.1");
        return KFG_EINVAL;
    }
    p->ins = ins;
    p->host = host;
    p->path = host->config_string(ins, "path");
    p->fail_first = host->config_int(ins, "fail_first");
    p->retry_after_ms = host->config_int(ins, "retry_after_ms");
    pthread_mutex_init(&p->mu, NULL);
    return KFG_OK;
}

static int probe_start(void *ctx)
{
    struct probe *p = ctx;
    return p->host->route_add(p->ins, NULL, p->path, KFG_ROUTE_PREFIX, on_request);
}

static void probe_destroy(void *ctx)
{
    struct probe *p = ctx;
    pthread_mutex_destroy(&p->mu);
}

static int probe_deliver(void *ctx, const struct kfg_msg *m, struct kfg_delivery *d)
{
    struct probe *p = ctx;
    const struct kfg_host *h = p->host;
    unsigned attempt = h->delivery_attempt(d);
    int64_t seq = -1;
    h->msg_get_int(m, "seq", &seq);
    struct kfg_str conv = h->msg_get(m, "conversation.id");
    pthread_mutex_lock(&p->mu);
    int n = snprintf(p->attempts + p->alen, sizeof p->attempts - p->alen,
                     "%s[%u,%lld,\"%.*s\",%lld]", p->alen ? "," : "", attempt, (long long)seq,
                     (int)conv.len, conv.ptr ? conv.ptr : "", (long long)wall_ms());
    if (n > 0 && (size_t)n < sizeof p->attempts - p->alen)
        p->alen += (size_t)n;
    pthread_mutex_unlock(&p->mu);
    if ((int64_t)attempt <= p->fail_first)
        h->delivered2(d, KFG_RETRY, "busy", "probe asked for a retry",
                      (uint64_t)p->retry_after_ms);
    else
        h->delivered2(d, KFG_OK, NULL, NULL, 0);
    return KFG_OK;
}

KFG_PLUGIN_EXPORT = {
    KFG_PLUGIN_HEADER,
    .kind = KFG_KIND_ADAPTER,
    .name = "abi11-probe",
    .version = "1.0",
    .description = "exercises the ABI 1.1 host entries (tests only)",
    .config = probe_config,
    .ctx_size = sizeof(struct probe),
    .init = probe_init,
    .start = probe_start,
    .destroy = probe_destroy,
    .deliver = probe_deliver,
};
