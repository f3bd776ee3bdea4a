/*
 * kfgate SOAP adapter: SOAP 1.1 and 1.2 endpoints for legacy systems
 * (banks, insurers, telecoms, government) and SOAP callbacks to them.
 *
 *   POST {path}        kfgate's operations (spec/soap/kfgate.wsdl) and, when
 *                      configured, one foreign operation mapped by XPath
 *   GET  {path}?wsdl   the WSDL with this instance's address filled in
 *
 * A push is answered from the emit completion only, i.e. once the gateway
 * journaled it (the ack rule, spec/plugin-abi.md §10). Outbound envelopes
 * are POSTed as SOAP requests to endpoint_url through the host's libcurl
 * client; each attempt ends in KFG_OK / KFG_RETRY / KFG_EFAIL and the host
 * retries, backs off, dead-letters and publishes the receipts.
 *
 * The pure parts (parser, security, operations, mapping, status table) are
 * in soap_xml.c, soap_sec.c, soap_ops.c and soap_store.c.
 *
 * Threads: handlers and emit completions run on workers (shared state is
 * read-only config, atomics and the locked pools/tables); deliver, HTTP
 * completions of deliveries and the lifecycle on the control loop.
 */
#define _GNU_SOURCE
#include <kfgate/envelope.h>
#include <kfgate/plugin.h>

#include "soap.h"

#include <libxml/parser.h>
#include <openssl/rand.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define SOAP_VERSION "0.1.0"
#define WSDL_PLACEHOLDER "http://kfgate.invalid/soap"

/* spec/soap/kfgate.wsdl, embedded at build time (Makefile: SOAP_WSDL). */
__asm__(".section .rodata\n"
        ".balign 16\n"
        ".hidden soap_wsdl_start\n"
        "soap_wsdl_start:\n"
        ".incbin \"" SOAP_WSDL "\"\n"
        ".hidden soap_wsdl_end\n"
        "soap_wsdl_end:\n"
        ".byte 0\n"
        ".previous\n");
extern const char soap_wsdl_start[], soap_wsdl_end[];

static const struct kfg_config_key soap_config[] = {
    { "path", KFG_CFG_STRING, KFG_CFG_REQUIRED, NULL,
      "endpoint path, e.g. \"/soap\": POST SOAP requests there, GET <path>?wsdl" },
    { "public_url", KFG_CFG_STRING, 0, NULL,
      "address written into the served WSDL (default http://<Host header><path>)" },
    { "wsdl_file", KFG_CFG_STRING, 0, NULL,
      "serve this WSDL at ?wsdl instead of kfgate's (a mapped legacy service's own); "
      "http://kfgate.invalid/soap in it is replaced by the address" },
    { "auth", KFG_CFG_STRING, 0, "wsse",
      "\"wsse\" (UsernameToken), \"basic\" (HTTP Basic), \"either\", \"both\" or \"none\"" },
    { "users", KFG_CFG_STRING_ARRAY, 0, NULL,
      "\"name=password\" entries; the password may be \"env:NAME\"" },
    { "allow_password_text", KFG_CFG_BOOL, 0, "true",
      "accept wsse PasswordText (only behind TLS); PasswordDigest is always accepted" },
    { "text_requires_nonce", KFG_CFG_BOOL, 0, "false",
      "PasswordText tokens must also carry Nonce and Created (replay protection)" },
    { "wsse_window_s", KFG_CFG_INT, 0, "300",
      "largest |now - wsu:Created| in seconds; nonces are remembered that long" },
    { "nonce_cache", KFG_CFG_INT, 0, "100000", "nonces remembered to refuse replays" },
    { "max_body", KFG_CFG_INT, 0, "1048576", "largest request in bytes" },
    { "max_depth", KFG_CFG_INT, 0, "32", "deepest element nesting" },
    { "max_elements", KFG_CFG_INT, 0, "10000", "most elements in one request" },
    { "max_text", KFG_CFG_INT, 0, "65536", "longest text value in bytes" },
    { "status_records", KFG_CFG_INT, 0, "10000",
      "messages GetMessageStatus remembers (in memory, about 1 KiB each, since the "
      "instance started)" },
    { "retry_after_s", KFG_CFG_INT, 0, "1", "Retry-After of overload faults (HTTP 503)" },
    { "keep_raw", KFG_CFG_BOOL, 0, "false", "keep the request envelope in raw.body" },
    { "native", KFG_CFG_BOOL, 0, "true", "serve kfgate's own operations" },
    { "namespaces", KFG_CFG_STRING_ARRAY, 0, NULL,
      "foreign schema: \"prefix=uri\" for map_operation and the XPath expressions" },
    { "map_operation", KFG_CFG_STRING, 0, NULL,
      "foreign schema: the request element, \"prefix:Name\" (enables mapping)" },
    { "map_action", KFG_CFG_STRING, 0, NULL,
      "foreign schema: expected SOAPAction / action (unset = any)" },
    { "map_type", KFG_CFG_STRING, 0, "message", "foreign schema: envelope type" },
    { "map_conversation", KFG_CFG_STRING, 0, NULL,
      "foreign schema: XPath (relative to the request element) to conversation.id" },
    { "map_sender", KFG_CFG_STRING, 0, NULL, "foreign schema: XPath to sender.id" },
    { "map_text", KFG_CFG_STRING, 0, NULL, "foreign schema: XPath to a text part" },
    { "map_event", KFG_CFG_STRING, 0, NULL, "foreign schema: XPath to an event name" },
    { "map_idem", KFG_CFG_STRING, 0, NULL,
      "foreign schema: XPath to a natural key (used when there is no wsa:MessageID)" },
    { "map_fields", KFG_CFG_STRING_ARRAY, 0, NULL,
      "foreign schema: more fields, \"envelope.key=xpath\"" },
    { "map_response", KFG_CFG_STRING, 0, NULL,
      "foreign schema: the answer element; {id} {envelope_id} {seq} {status} {idem}" },
    { "endpoint_url", KFG_CFG_STRING, 0, NULL, "outbound: the legacy system's SOAP endpoint" },
    { "endpoint_version", KFG_CFG_STRING, 0, "1.1", "outbound: SOAP \"1.1\" or \"1.2\"" },
    { "endpoint_action", KFG_CFG_STRING, 0, "urn:kfgate:soap:1/DeliverMessage",
      "outbound: SOAPAction / action" },
    { "endpoint_template", KFG_CFG_STRING, 0, NULL,
      "outbound: Body element template (default kfgate's DeliverMessage); {envelope_id} "
      "{attempt} {instance} {conversation} {recipient} {reply_to} {idem} {text}" },
    { "endpoint_auth", KFG_CFG_STRING, 0, "none", "outbound: \"none\", \"wsse\" or \"basic\"" },
    { "endpoint_username", KFG_CFG_STRING, 0, NULL, "outbound: user for endpoint_auth" },
    { "endpoint_password", KFG_CFG_SECRET, 0, NULL,
      "outbound: password for endpoint_auth (\"env:NAME\")" },
    { "endpoint_timeout_ms", KFG_CFG_INT, 0, "10000", "outbound: one attempt's time limit" },
    { "endpoint_concurrency", KFG_CFG_INT, 0, "8", "outbound: calls in flight at once" },
    { "endpoint_queue", KFG_CFG_INT, 0, "1000",
      "outbound: deliveries waiting for a free call; beyond it they are retried later" },
    { "endpoint_max_attempts", KFG_CFG_INT, 0, "0",
      "outbound: give up after this many attempts (0 = the gateway's [bus] retry_max)" },
    { NULL, 0, 0, NULL, NULL },
};

enum outcome { O_ACCEPTED, O_DUPLICATE, O_STATUS, O_WSDL, O_CLIENT, O_AUTH, O_BUSY, O_ERROR,
               O__N };
static const char *const outcome_label[O__N] = {
    "outcome=\"accepted\"", "outcome=\"duplicate\"", "outcome=\"status\"", "outcome=\"wsdl\"",
    "outcome=\"client_fault\"", "outcome=\"auth\"", "outcome=\"busy\"",
    "outcome=\"server_fault\"",
};
enum ob_outcome { B_OK, B_RETRY, B_FAIL, B__N };
static const char *const ob_label[B__N] = {
    "outcome=\"ok\"", "outcome=\"retry\"", "outcome=\"failed\"",
};

struct ob_job;

struct soap {
    struct kfg_instance *ins;
    const struct kfg_host *host;
    const char *name;
    char path[256];
    const char *public_url;
    char *wsdl;                     /* template; NULL = the embedded one */
    size_t wsdl_len;
    char *wsdl_fixed;               /* with public_url filled in */
    size_t wsdl_fixed_len;

    struct soap_cfg cfg;
    struct soap_user *users;
    size_t nusers;
    struct soap_map map;
    struct soap_store *store;
    size_t store_cap;
    int retry_after;
    int have_emit2, have_http2, have_delivered2, have_attempt;

    /* outbound: control loop only, except the atomics */
    const char *ep_url;
    int ep_version;
    const char *ep_action;
    const char *ep_template;
    int ep_auth;                    /* 0 none, 1 wsse, 2 basic */
    const char *ep_user, *ep_pass;
    char *ep_basic;                 /* "Authorization: Basic ..." */
    uint32_t ep_timeout;
    unsigned ep_concurrency, ep_queue_max, ep_max_attempts;
    atomic_uint ob_inflight, ob_queued;
    atomic_int ob_failures;         /* consecutive failed attempts (health) */
    char ob_last_error[200];        /* control loop */
    struct ob_job *q_head, *q_tail;
    int stopping;
    atomic_int running;

    struct kfg_metric *m_req[O__N], *m_lat, *m_ob[B__N], *m_ob_lat;
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

static const char *opt_string(struct soap *s, const char *key)
{
    const char *v = s->host->config_string(s->ins, key);
    return v && *v ? v : NULL;
}

static void wipe_free(char *p)
{
    if (!p)
        return;
    volatile char *v = p;
    while (*v)
        *v++ = 0;
    free(p);
}

static void count(struct soap *s, enum outcome o, struct timespec t0)
{
    s->host->metric_add(s->m_req[o], 1);
    s->host->metric_observe(s->m_lat, since(t0));
}

static void respond_xml(struct soap *s, struct kfg_request *req, int status, int version,
                        const struct soap_buf *b, const struct kfg_header *extra, size_t nextra)
{
    struct kfg_header h[6];
    size_t n = 0;
    h[n++] = (struct kfg_header){ "Content-Type", soap_ctype(version) };
    h[n++] = (struct kfg_header){ "Cache-Control", "no-store" };
    for (size_t i = 0; i < nextra && n < 6; i++)
        h[n++] = extra[i];
    s->host->req_respond(req, status, h, n, b->p, b->len);
}

static void fault(struct soap *s, struct kfg_request *req, int version,
                  const struct soap_fault *f, struct timespec t0)
{
    const struct kfg_host *h = s->host;
    struct soap_buf b = { 0 };
    soap_fault_xml(&b, version, f, h->req_id(req));
    struct kfg_header x[2];
    size_t n = 0;
    char ra[16];
    if (f->retry_after) {
        snprintf(ra, sizeof ra, "%d", f->retry_after);
        x[n++] = (struct kfg_header){ "Retry-After", ra };
    }
    if (f->http == 401)
        x[n++] = (struct kfg_header){ "WWW-Authenticate", "Basic realm=\"kfgate\", charset=\"UTF-8\"" };
    int auth = f->sub && (strstr(f->sub, "Authentication") || !strcmp(f->sub, "NonceReplayed") ||
                          !strcmp(f->sub, "MessageExpired") ||
                          !strcmp(f->sub, "InvalidSecurityToken") ||
                          !strcmp(f->sub, "UnsupportedPasswordType"));
    h->log(s->ins, req, auth ? KFG_LOG_WARN : KFG_LOG_INFO, "SOAP %s fault %s (HTTP %d): %s",
           version == 12 ? "1.2" : "1.1", f->sub ? f->sub : "?", f->http, f->reason);
    if (b.oom) {
        static const char oom[] = "out of memory";
        h->req_respond(req, 500, NULL, 0, oom, sizeof oom - 1);
    } else {
        respond_xml(s, req, f->http, version, &b, x, n);
    }
    sb_free(&b);
    count(s, auth ? O_AUTH : f->http == 503 ? O_BUSY
             : f->code == SOAP_FC_SERVER ? O_ERROR : O_CLIENT, t0);
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
 * WSDL.
 */
static int host_ok(struct kfg_str h)
{
    if (!h.ptr || !h.len || h.len > 255)
        return 0;
    for (size_t i = 0; i < h.len; i++) {
        char c = h.ptr[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '[' || c == ']'))
            return 0;
    }
    return 1;
}

static char *wsdl_with(const char *tpl, size_t len, const char *addr, size_t alen, size_t *out)
{
    struct soap_buf b = { 0 };
    const char *p = tpl, *end = tpl + len;
    const size_t pl = sizeof WSDL_PLACEHOLDER - 1;
    while (p < end) {
        const char *q = memmem(p, (size_t)(end - p), WSDL_PLACEHOLDER, pl);
        if (!q) {
            sb_put(&b, p, (size_t)(end - p));
            break;
        }
        sb_put(&b, p, (size_t)(q - p));
        sb_esc(&b, addr, alen);
        p = q + pl;
    }
    if (b.oom) {
        sb_free(&b);
        return NULL;
    }
    *out = b.len;
    return b.p;
}

static void serve_wsdl(struct soap *s, struct kfg_request *req, struct timespec t0)
{
    const struct kfg_host *h = s->host;
    struct kfg_header x[2] = { { "Content-Type", "text/xml; charset=utf-8" },
                               { "Cache-Control", "max-age=60" } };
    if (s->wsdl_fixed) {
        h->req_respond(req, 200, x, 2, s->wsdl_fixed, s->wsdl_fixed_len);
        count(s, O_WSDL, t0);
        return;
    }
    struct kfg_str host = h->req_header(req, "Host");
    if (!host_ok(host)) {
        static const char msg[] = "a valid Host header is needed to fill in the WSDL address "
                                  "(or set public_url)\n";
        struct kfg_header t[1] = { { "Content-Type", "text/plain; charset=utf-8" } };
        h->req_respond(req, 400, t, 1, msg, sizeof msg - 1);
        h->log(s->ins, req, KFG_LOG_INFO, "WSDL request without a usable Host header");
        count(s, O_CLIENT, t0);
        return;
    }
    char addr[600];
    int n = snprintf(addr, sizeof addr, "http://%.*s%s", (int)host.len, host.ptr,
                     s->path[0] ? s->path : "/");
    size_t len = 0;
    const char *tpl = s->wsdl ? s->wsdl : soap_wsdl_start;
    size_t tl = s->wsdl ? s->wsdl_len : (size_t)(soap_wsdl_end - soap_wsdl_start);
    char *doc = wsdl_with(tpl, tl, addr, (size_t)n, &len);
    if (!doc) {
        h->req_respond(req, 500, NULL, 0, "out of memory", 13);
        count(s, O_ERROR, t0);
        return;
    }
    h->req_respond(req, 200, x, 2, doc, len);
    free(doc);
    count(s, O_WSDL, t0);
}

/* ---------------------------------------------------------------------------
 * Pushes: a kfg_host_sink, emit and its completion.
 */
/* One push between emit and its completion (one worker). */
struct push {
    struct soap *s;
    struct kfg_request *req;
    struct timespec t0;
    int version, op;
    char msg_id[37];
    char idem[512];
};

static void push_answer(struct push *p, int result, uint64_t seq, const char *env_id,
                        int duplicate, const char *reason)
{
    struct soap *s = p->s;
    struct soap_fault f;
    if (result != KFG_OK && result != KFG_EDROPPED) {
        if (result == KFG_AGAIN) {
            soap_fault_set(&f, 503, SOAP_FC_SERVER, "Overloaded",
                           "the gateway is over a limit and did not store the message; retry "
                           "after %d s", s->retry_after);
            f.retry_after = s->retry_after;
        } else if (result == KFG_ESTOPPED) {
            soap_fault_set(&f, 503, SOAP_FC_SERVER, "Unavailable",
                           "the instance is stopping; retry after %d s", s->retry_after);
            f.retry_after = s->retry_after;
        } else if (result == KFG_EINVAL) {
            soap_fault_set(&f, 500, SOAP_FC_CLIENT, "Rejected",
                           "the gateway refused the message%s%s", reason ? ": " : "",
                           reason ? reason : "");
        } else {
            soap_fault_set(&f, 500, SOAP_FC_SERVER, "Internal",
                           "the message could not be stored (%d)", result);
        }
        fault(s, p->req, p->version, &f, p->t0);
        free(p);
        return;
    }
    /* The instance's messageId: the original one for a resend of a known
     * wsa:MessageID (the journal answered with the original seq). */
    struct soap_rec old;
    const char *mid = p->msg_id;
    int known = 0;
    if (p->idem[0] && soap_store_get(s->store, p->idem, strlen(p->idem), &old) == 0 &&
        !strcmp(old.dir, "in") && (old.seq == seq || duplicate)) {
        known = 1;
        mid = old.id;
        if (!env_id && old.envelope_id[0])
            env_id = old.envelope_id;
    }
    int dup = duplicate || known;
    const char *status = result == KFG_EDROPPED ? "dropped" : dup ? "duplicate" : "accepted";
    if (!known) {
        struct soap_rec r = { 0 };
        snprintf(r.id, sizeof r.id, "%s", p->msg_id);
        snprintf(r.envelope_id, sizeof r.envelope_id, "%s", env_id ? env_id : "");
        snprintf(r.idem, sizeof r.idem, "%s", p->idem);
        snprintf(r.dir, sizeof r.dir, "in");
        snprintf(r.status, sizeof r.status, "%s", result == KFG_EDROPPED ? "dropped" : "accepted");
        snprintf(r.detail, sizeof r.detail, "%s", result == KFG_EDROPPED && reason ? reason : "");
        r.seq = result == KFG_OK ? seq : 0;
        r.updated_ms = wall_ms();
        soap_store_put(s->store, &r);
    }
    char seqs[24];
    snprintf(seqs, sizeof seqs, "%llu", (unsigned long long)seq);
    struct soap_buf b = { 0 };
    soap_env_begin(&b, p->version);
    if (p->op == SOAP_OP_MAPPED) {
        struct soap_vals v = { mid, env_id ? env_id : "", result == KFG_OK ? seqs : "", status,
                               p->idem };
        soap_template(&b, s->map.response, &v);
    } else {
        const char *el = p->op == SOAP_OP_PUSH_EVENT ? "PushEventResponse" : "PushMessageResponse";
        sb_printf(&b, "<kfg:%s><kfg:messageId>%s</kfg:messageId>", el, mid);
        if (env_id && *env_id) {
            sb_puts(&b, "<kfg:envelopeId>");
            sb_esc(&b, env_id, strlen(env_id));
            sb_puts(&b, "</kfg:envelopeId>");
        }
        if (result == KFG_OK)
            sb_printf(&b, "<kfg:seq>%s</kfg:seq>", seqs);
        sb_printf(&b, "<kfg:status>%s</kfg:status>", status);
        if (result == KFG_EDROPPED && reason) {
            sb_puts(&b, "<kfg:reason>");
            sb_esc(&b, reason, strlen(reason));
            sb_puts(&b, "</kfg:reason>");
        }
        sb_printf(&b, "</kfg:%s>", el);
    }
    soap_env_end(&b, p->version);
    if (b.oom) {
        s->host->req_respond(p->req, 500, NULL, 0, "out of memory", 13);
        count(s, O_ERROR, p->t0);
    } else {
        respond_xml(s, p->req, 200, p->version, &b, NULL, 0);
        count(s, dup ? O_DUPLICATE : O_ACCEPTED, p->t0);
    }
    sb_free(&b);
    free(p);
}

static void on_emitted(void *arg, int result, uint64_t seq, const char *reason)
{
    push_answer(arg, result, seq, NULL, 0, reason);
}

static void on_emitted2(void *arg, const struct kfg_emit_result *r)
{
    push_answer(arg, r->result, r->seq, r->id, r->duplicate, r->reason);
}

static void status_answer(struct soap *s, struct kfg_request *req, const struct soap_out *o,
                          struct timespec t0)
{
    struct soap_rec r;
    int found = soap_store_get(s->store, o->query, strlen(o->query), &r) == 0;
    if (!found) {
        /* A raw wsa:MessageID: look it up the way it was stored (escaped). */
        char esc[512];
        size_t n = 0;
        for (const char *p = o->query; *p && n + 3 < sizeof esc; p++) {
            if (*p == ':' || *p == '%') {
                n += (size_t)snprintf(esc + n, 4, "%%%s", *p == ':' ? "3A" : "25");
            } else {
                esc[n++] = *p;
            }
        }
        found = soap_store_get(s->store, esc, n, &r) == 0;
    }
    if (!found) {
        struct soap_fault f;
        soap_fault_set(&f, 500, SOAP_FC_CLIENT, "UnknownMessage",
                       "no message \"%.100s\" is known to this instance (it remembers the last "
                       "%zu messages since it started)", o->query, s->store_cap);
        fault(s, req, o->version, &f, t0);
        return;
    }
    char cr[25], up[25];
    soap_datetime_fmt(r.created_ms, cr);
    soap_datetime_fmt(r.updated_ms, up);
    struct soap_buf b = { 0 };
    soap_env_begin(&b, o->version);
    sb_puts(&b, "<kfg:GetMessageStatusResponse><kfg:messageId>");
    sb_esc(&b, r.id, strlen(r.id));
    sb_printf(&b, "</kfg:messageId><kfg:direction>%s</kfg:direction><kfg:status>%s</kfg:status>",
              r.dir, r.status);
    if (r.envelope_id[0]) {
        sb_puts(&b, "<kfg:envelopeId>");
        sb_esc(&b, r.envelope_id, strlen(r.envelope_id));
        sb_puts(&b, "</kfg:envelopeId>");
    }
    if (r.seq)
        sb_printf(&b, "<kfg:seq>%llu</kfg:seq>", (unsigned long long)r.seq);
    if (r.idem[0]) {
        sb_puts(&b, "<kfg:idem>");
        sb_esc(&b, r.idem, strlen(r.idem));
        sb_puts(&b, "</kfg:idem>");
    }
    if (r.attempts)
        sb_printf(&b, "<kfg:attempts>%u</kfg:attempts>", r.attempts);
    if (r.code[0]) {
        sb_puts(&b, "<kfg:code>");
        sb_esc(&b, r.code, strlen(r.code));
        sb_puts(&b, "</kfg:code>");
    }
    if (r.detail[0]) {
        sb_puts(&b, "<kfg:detail>");
        sb_esc(&b, r.detail, strlen(r.detail));
        sb_puts(&b, "</kfg:detail>");
    }
    sb_printf(&b, "<kfg:created>%s</kfg:created><kfg:updated>%s</kfg:updated>"
                  "</kfg:GetMessageStatusResponse>", cr, up);
    soap_env_end(&b, o->version);
    respond_xml(s, req, 200, o->version, &b, NULL, 0);
    sb_free(&b);
    count(s, O_STATUS, t0);
}

static void post_soap(struct soap *s, struct kfg_request *req, struct timespec t0)
{
    const struct kfg_host *h = s->host;
    struct kfg_str body = h->req_body(req);
    struct push *p = malloc(sizeof *p);
    if (!p) {
        h->req_respond(req, 500, NULL, 0, "out of memory", 13);
        count(s, O_ERROR, t0);
        return;
    }
    int64_t now = wall_ms();
    soap_uuid7(p->msg_id, now);
    struct soap_in in = {
        .body = body.ptr, .len = body.len, .ctype = h->req_header(req, "Content-Type"),
        .soapaction = h->req_header(req, "SOAPAction"),
        .authz = h->req_header(req, "Authorization"), .now_ms = now, .msg_id = p->msg_id,
    };
    struct kfg_host_sink ms = { h, s->ins, NULL };
    struct kfg_msg_sink sink = kfg_host_sink(&ms);
    struct soap_out o;
    soap_process(&s->cfg, &in, &sink, &o);
    if (!o.fault.http && o.built) {
        struct kfg_str tp = h->req_header(req, "traceparent");
        if (traceparent_ok(tp)) {
            int e = h->msg_set(ms.m, KFG_ENV_TRACEPARENT, tp.ptr, tp.len);
            struct kfg_str ts = h->req_header(req, "tracestate");
            if (e == KFG_OK && ts.ptr && ts.len && ts.len <= 512)
                e = h->msg_set(ms.m, KFG_ENV_TRACESTATE, ts.ptr, ts.len);
            if (e != KFG_OK)
                soap_fault_set(&o.fault, 500, SOAP_FC_SERVER, "Internal",
                               "the message could not be built (%d)", e);
        }
    }
    if (o.fault.http) {
        if (ms.m)
            h->msg_free(ms.m);
        free(p);
        fault(s, req, o.version, &o.fault, t0);
        return;
    }
    if (o.op == SOAP_OP_GET_STATUS) {
        free(p);
        status_answer(s, req, &o, t0);
        return;
    }
    p->s = s;
    p->req = req;
    p->t0 = t0;
    p->version = o.version;
    p->op = o.op;
    memcpy(p->idem, o.idem, o.idem_len + 1);
    int rc = s->have_emit2 ? h->emit2(s->ins, ms.m, on_emitted2, p)
                           : h->emit(s->ins, ms.m, on_emitted, p);
    if (rc != KFG_OK) {
        h->msg_free(ms.m);
        push_answer(p, rc, 0, NULL, 0, NULL);
    }
}

static void on_request(void *ctx, struct kfg_request *req)
{
    struct soap *s = ctx;
    const struct kfg_host *h = s->host;
    struct timespec t0 = mono();
    struct kfg_str m = h->req_method(req);
    if (m.len == 4 && !memcmp(m.ptr, "POST", 4)) {
        post_soap(s, req, t0);
        return;
    }
    if ((m.len == 3 && !memcmp(m.ptr, "GET", 3)) || (m.len == 4 && !memcmp(m.ptr, "HEAD", 4))) {
        struct kfg_str q = h->req_query(req);
        if (q.len >= 4 && !strncasecmp(q.ptr, "wsdl", 4) &&
            (q.len == 4 || q.ptr[4] == '&' || q.ptr[4] == '=')) {
            serve_wsdl(s, req, t0);
            return;
        }
        static const char msg[] = "this is a SOAP endpoint: POST SOAP 1.1 or 1.2 requests, "
                                  "GET ?wsdl for the service description\n";
        struct kfg_header x[1] = { { "Content-Type", "text/plain; charset=utf-8" } };
        h->req_respond(req, 400, x, 1, msg, sizeof msg - 1);
        count(s, O_CLIENT, t0);
        return;
    }
    struct kfg_header x[2] = { { "Allow", "POST, GET" },
                               { "Content-Type", "text/plain; charset=utf-8" } };
    h->req_respond(req, 405, x, 2, "method not allowed\n", 19);
    h->log(s->ins, req, KFG_LOG_INFO, "method %.*s not allowed", (int)m.len, m.ptr);
    count(s, O_CLIENT, t0);
}

/* ---------------------------------------------------------------------------
 * Outbound.
 */
struct ob_job {
    struct soap *s;
    struct kfg_delivery *d;
    struct ob_job *next;
    char id[64];
    unsigned attempt;
    char *body;
    size_t len;
    struct timespec t0;
};

static void job_free(struct ob_job *j)
{
    free(j->body);
    free(j);
}

static void ob_record(struct soap *s, const char *id, const char *status, unsigned attempt,
                      const char *code, const char *detail)
{
    struct soap_rec r = { 0 };
    snprintf(r.id, sizeof r.id, "%s", id);
    snprintf(r.dir, sizeof r.dir, "out");
    snprintf(r.status, sizeof r.status, "%s", status);
    snprintf(r.code, sizeof r.code, "%s", code ? code : "");
    snprintf(r.detail, sizeof r.detail, "%s", detail ? detail : "");
    r.attempts = attempt;
    r.updated_ms = wall_ms();
    soap_store_put(s->store, &r);
}

static void ob_finish(struct ob_job *j, int result, const char *code, const char *detail,
                      uint64_t retry_after_ms)
{
    struct soap *s = j->s;
    ob_record(s, j->id, result == KFG_OK ? "sent" : result == KFG_RETRY ? "retrying" : "failed",
              j->attempt, code, detail);
    s->host->metric_add(s->m_ob[result == KFG_OK ? B_OK : result == KFG_RETRY ? B_RETRY
                                                                              : B_FAIL], 1);
    if (result == KFG_OK) {
        atomic_store(&s->ob_failures, 0);
    } else {
        atomic_fetch_add(&s->ob_failures, 1);
        snprintf(s->ob_last_error, sizeof s->ob_last_error, "%s %s", code ? code : "",
                 detail ? detail : "");
    }
    if (result != KFG_OK)
        s->host->log(s->ins, NULL, result == KFG_RETRY ? KFG_LOG_INFO : KFG_LOG_WARN,
                     "delivery %s attempt %u %s: %s %s", j->id, j->attempt,
                     result == KFG_RETRY ? "will be retried" : "failed", code ? code : "",
                     detail ? detail : "");
    if (s->have_delivered2 && retry_after_ms)
        s->host->delivered2(j->d, result, code, detail, retry_after_ms);
    else
        s->host->delivered(j->d, result, code, detail);
}

static void ob_start(struct ob_job *j);

static void ob_next(struct soap *s)
{
    while (s->q_head && atomic_load(&s->ob_inflight) < s->ep_concurrency) {
        struct ob_job *j = s->q_head;
        s->q_head = j->next;
        if (!s->q_head)
            s->q_tail = NULL;
        atomic_fetch_sub(&s->ob_queued, 1);
        ob_start(j);
    }
    if (s->stopping && !s->q_head && atomic_load(&s->ob_inflight) == 0) {
        s->stopping = 0;
        s->host->log(s->ins, NULL, KFG_LOG_INFO, "drained");
        s->host->stopped(s->ins);
    }
}

static uint64_t retry_after_ms(const struct kfg_http_response *r)
{
    for (size_t i = 0; r && i < r->nheaders; i++) {
        struct kfg_str n = r->header_names[i], v = r->header_values[i];
        if (n.len == 11 && !strncasecmp(n.ptr, "Retry-After", 11)) {
            uint64_t x = 0;
            size_t k = 0;
            for (; k < v.len && v.ptr[k] >= '0' && v.ptr[k] <= '9' && k < 9; k++)
                x = x * 10 + (uint64_t)(v.ptr[k] - '0');
            return k && k == v.len ? x * 1000 : 0;
        }
    }
    return 0;
}

static void ob_done(struct ob_job *j, int result, int status, struct kfg_str body,
                    const char *error, const struct kfg_http_response *r2)
{
    struct soap *s = j->s;
    s->host->metric_observe(s->m_ob_lat, since(j->t0));
    atomic_fetch_sub(&s->ob_inflight, 1);
    char code[80], detail[200];
    int res;
    uint64_t ra = 0;
    if (result != KFG_OK) {
        snprintf(code, sizeof code, result == KFG_ETIMEDOUT ? "http:timeout" : "http:network");
        snprintf(detail, sizeof detail, "%s", error ? error : "no response");
        res = KFG_RETRY;
    } else {
        struct soap_reply rep;
        int soapish = soap_reply_parse(s->cfg.pool, body.ptr, body.len, &rep) == 0;
        if (soapish && rep.fault) {
            snprintf(code, sizeof code, "soap:%s", rep.code == SOAP_FC_SERVER ? "Server" : "Client");
            snprintf(detail, sizeof detail, "HTTP %d, fault %.60s: %.120s", status, rep.faultcode,
                     rep.reason);
            res = rep.code == SOAP_FC_SERVER ? KFG_RETRY : KFG_EFAIL;
        } else if (status >= 200 && status < 300) {
            snprintf(code, sizeof code, "http:%d", status);
            snprintf(detail, sizeof detail, "endpoint answered %d%s", status,
                     soapish || status == 202 || status == 204 ? "" : " (not a SOAP envelope)");
            res = KFG_OK;
        } else if (status == 408 || status == 429 || status >= 500) {
            snprintf(code, sizeof code, "http:%d", status);
            snprintf(detail, sizeof detail, "endpoint answered %d without a SOAP fault", status);
            res = KFG_RETRY;
        } else {
            snprintf(code, sizeof code, "http:%d", status);
            snprintf(detail, sizeof detail, "endpoint answered %d%s", status,
                     status >= 300 && status < 400 ? " (redirects are not followed)" : "");
            res = KFG_EFAIL;
        }
        if (res == KFG_RETRY)
            ra = retry_after_ms(r2);
    }
    if (res == KFG_RETRY && s->ep_max_attempts && j->attempt >= s->ep_max_attempts) {
        res = KFG_EFAIL;
        size_t l = strlen(detail);
        snprintf(detail + l, sizeof detail - l, "; gave up after %u attempts", j->attempt);
    }
    ob_finish(j, res, code, detail, ra);
    job_free(j);
    ob_next(s);
}

static void on_ob_done(void *arg, int result, int status, struct kfg_str body,
                       const char *error)
{
    ob_done(arg, result, status, body, error, NULL);
}

static void on_ob_done2(void *arg, const struct kfg_http_response *r)
{
    ob_done(arg, r->result, r->status, r->body, r->error, r);
}

static void ob_start(struct ob_job *j)
{
    struct soap *s = j->s;
    const struct kfg_host *h = s->host;
    char ct[600], act[600];
    const char *hdrs[6];
    size_t n = 0;
    if (s->ep_version == 12) {
        snprintf(ct, sizeof ct, "Content-Type: " SOAP_CT12 "; action=\"%s\"", s->ep_action);
        hdrs[n++] = ct;
    } else {
        hdrs[n++] = "Content-Type: " SOAP_CT11;
        snprintf(act, sizeof act, "SOAPAction: \"%s\"", s->ep_action);
        hdrs[n++] = act;
    }
    hdrs[n++] = "User-Agent: kfgate-soap/" SOAP_VERSION;
    if (s->ep_basic)
        hdrs[n++] = s->ep_basic;
    hdrs[n] = NULL;
    struct kfg_http_call call = {
        .method = "POST", .url = s->ep_url, .headers = hdrs, .body = j->body,
        .body_len = j->len, .timeout_ms = s->ep_timeout,
    };
    j->t0 = mono();
    atomic_fetch_add(&s->ob_inflight, 1);
    int rc = s->have_http2 ? h->http_call2(s->ins, &call, on_ob_done2, j)
                           : h->http_call(s->ins, &call, on_ob_done, j);
    if (rc != KFG_OK) {
        atomic_fetch_sub(&s->ob_inflight, 1);
        char detail[64];
        snprintf(detail, sizeof detail, "cannot start the HTTP call (%d)", rc);
        ob_finish(j, KFG_RETRY, "http:client", detail, 0);
        job_free(j);
    }
}

/* The request: envelope, WS-Addressing (MessageID stable across attempts,
 * so the endpoint can deduplicate), optional UsernameToken, and the body
 * element from the template. */
static char *ob_body(struct soap *s, const struct kfg_msg *m, const char *id, unsigned attempt,
                     size_t *len)
{
    const struct kfg_host *h = s->host;
    struct soap_buf b = { 0 };
    const char *env = s->ep_version == 12 ? SOAP_NS12 : SOAP_NS11;
    sb_printf(&b, "<?xml version=\"1.0\" encoding=\"utf-8\"?><e:Envelope xmlns:e=\"%s\" "
                  "xmlns:wsa=\"" SOAP_WSA_NS "\"><e:Header><wsa:MessageID>urn:uuid:", env);
    sb_esc(&b, id, strlen(id));
    sb_puts(&b, "</wsa:MessageID><wsa:Action>");
    sb_esc(&b, s->ep_action, strlen(s->ep_action));
    sb_puts(&b, "</wsa:Action><wsa:To>");
    sb_esc(&b, s->ep_url, strlen(s->ep_url));
    sb_puts(&b, "</wsa:To>");
    if (s->ep_auth == 1) {
        unsigned char nonce[16];
        if (RAND_bytes(nonce, sizeof nonce) != 1) {
            sb_free(&b);
            return NULL;
        }
        char created[25], n64[32], dig[29];
        soap_datetime_fmt(wall_ms(), created);
        soap_b64_encode(nonce, sizeof nonce, n64);
        soap_digest_b64(nonce, sizeof nonce, created, strlen(created), s->ep_pass,
                        strlen(s->ep_pass), dig);
        sb_puts(&b, "<wsse:Security xmlns:wsse=\"" SOAP_WSSE_NS "\" xmlns:wsu=\"" SOAP_WSU_NS
                    "\"><wsse:UsernameToken><wsse:Username>");
        sb_esc(&b, s->ep_user, strlen(s->ep_user));
        sb_printf(&b, "</wsse:Username><wsse:Password Type=\"" SOAP_UTP_NS
                      "#PasswordDigest\">%s</wsse:Password><wsse:Nonce EncodingType=\""
                      "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-"
                      "security-1.0#Base64Binary\">%s</wsse:Nonce><wsu:Created>%s</wsu:Created>"
                      "</wsse:UsernameToken></wsse:Security>", dig, n64, created);
    }
    sb_puts(&b, "</e:Header><e:Body>");
    /* All text parts, one per line: what a template's {text} means. */
    struct soap_buf text = { 0 };
    size_t np = h->msg_part_count(m);
    for (size_t i = 0; i < np; i++) {
        const char *k = h->msg_part_kind(m, i);
        struct kfg_str t = h->msg_part_get(m, i, KFG_ENV_P_TEXT);
        if (k && !strcmp(k, KFG_ENV_KIND_TEXT) && t.ptr) {
            if (text.len)
                sb_put(&text, "\n", 1);
            sb_put(&text, t.ptr, t.len);
        }
    }
    struct kfg_str conv = h->msg_get(m, KFG_ENV_CONVERSATION_ID);
    struct kfg_str rcpt = h->msg_get(m, KFG_ENV_RECIPIENT_ID);
    struct kfg_str rto = h->msg_get(m, KFG_ENV_REPLY_TO);
    struct kfg_str idem = h->msg_get(m, KFG_ENV_IDEM);
    char att[16];
    snprintf(att, sizeof att, "%u", attempt);
    if (s->ep_template) {
        struct soap_kv kv[] = {
            { "envelope_id", id, 0 }, { "attempt", att, 0 }, { "instance", s->name, 0 },
            { "conversation", conv.ptr ? conv.ptr : "", conv.len },
            { "recipient", rcpt.ptr ? rcpt.ptr : "", rcpt.len },
            { "reply_to", rto.ptr ? rto.ptr : "", rto.len },
            { "idem", idem.ptr ? idem.ptr : "", idem.len },
            { "text", text.p ? text.p : "", text.len },
        };
        soap_template_kv(&b, s->ep_template, kv, sizeof kv / sizeof kv[0]);
    } else {
        sb_puts(&b, "<k:DeliverMessage xmlns:k=\"" SOAP_KFG_NS "\"><k:envelopeId>");
        sb_esc(&b, id, strlen(id));
        sb_printf(&b, "</k:envelopeId><k:attempt>%u</k:attempt><k:instance>", attempt);
        sb_esc(&b, s->name, strlen(s->name));
        sb_puts(&b, "</k:instance>");
#define EL(name, v)                                      \
    if (v.ptr && v.len) {                                \
        sb_puts(&b, "<k:" name ">");                    \
        sb_esc(&b, v.ptr, v.len);                        \
        sb_puts(&b, "</k:" name ">");                   \
    }
        EL("conversationId", conv)
        EL("recipientId", rcpt)
        EL("replyTo", rto)
        EL("idem", idem)
        struct kfg_str tx = { text.p, text.len };
        EL("text", tx)
        static const char *const pf[][2] = {
            { "text", "text" }, { "format", "format" }, { "url", "url" },
            { "media_id", "mediaId" }, { "mime", "mime" }, { "size", "size" },
            { "name", "name" }, { "title", "title" }, { "description", "description" },
            { "lat", "lat" }, { "lon", "lon" }, { "label", "label" },
        };
        for (size_t i = 0; i < np; i++) {
            const char *k = h->msg_part_kind(m, i);
            sb_puts(&b, "<k:part><k:kind>");
            sb_esc(&b, k ? k : "", k ? strlen(k) : 0);
            sb_puts(&b, "</k:kind>");
            for (size_t f = 0; f < sizeof pf / sizeof pf[0]; f++) {
                struct kfg_str v = h->msg_part_get(m, i, pf[f][0]);
                if (v.ptr) {
                    sb_printf(&b, "<k:%s>", pf[f][1]);
                    sb_esc(&b, v.ptr, v.len);
                    sb_printf(&b, "</k:%s>", pf[f][1]);
                }
            }
            sb_puts(&b, "</k:part>");
        }
#undef EL
        sb_puts(&b, "</k:DeliverMessage>");
    }
    sb_free(&text);
    sb_puts(&b, "</e:Body></e:Envelope>");
    if (b.oom) {
        sb_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.p;
}

static int soap_deliver(void *ctx, const struct kfg_msg *m, struct kfg_delivery *d)
{
    struct soap *s = ctx;
    const struct kfg_host *h = s->host;
    if (!s->ep_url) {
        h->delivered(d, KFG_EFAIL, "soap:no_endpoint", "the instance has no endpoint_url");
        return KFG_OK;
    }
    if (!atomic_load(&s->running))
        return KFG_RETRY;
    struct ob_job *j = calloc(1, sizeof *j);
    if (!j)
        return KFG_ENOMEM;
    j->s = s;
    j->d = d;
    struct kfg_str id = h->msg_get(m, KFG_ENV_ID);
    snprintf(j->id, sizeof j->id, "%.*s", id.ptr ? (int)(id.len < 63 ? id.len : 63) : 0,
             id.ptr ? id.ptr : "");
    struct soap_rec old;
    unsigned prev = soap_store_get(s->store, j->id, strlen(j->id), &old) == 0 ? old.attempts : 0;
    j->attempt = s->have_attempt ? h->delivery_attempt(d) : prev + 1;
    j->body = ob_body(s, m, j->id, j->attempt, &j->len);
    if (!j->body) {
        free(j);
        return KFG_ENOMEM;
    }
    ob_record(s, j->id, "sending", j->attempt, NULL, NULL);
    if (atomic_load(&s->ob_inflight) < s->ep_concurrency && !s->q_head) {
        ob_start(j);
        return KFG_OK;
    }
    if (atomic_load(&s->ob_queued) >= s->ep_queue_max) {
        ob_finish(j, KFG_RETRY, "soap:queue_full", "the instance's outbound queue is full", 0);
        job_free(j);
        return KFG_OK;
    }
    if (s->q_tail)
        s->q_tail->next = j;
    else
        s->q_head = j;
    s->q_tail = j;
    atomic_fetch_add(&s->ob_queued, 1);
    return KFG_OK;
}

/* ---------------------------------------------------------------------------
 * Lifecycle.
 */
static void soap_cleanup(struct soap *s)
{
    for (size_t i = 0; i < s->nusers; i++) {
        free(s->users[i].name);
        wipe_free(s->users[i].pass);
    }
    free(s->users);
    s->users = NULL;
    s->nusers = 0;
    soap_map_free(&s->map);
    soap_store_free(s->store);
    s->store = NULL;
    soap_nonces_free(s->cfg.sec.nonces);
    s->cfg.sec.nonces = NULL;
    soap_pool_free(s->cfg.pool);
    s->cfg.pool = NULL;
    free(s->wsdl);
    free(s->wsdl_fixed);
    s->wsdl = s->wsdl_fixed = NULL;
    wipe_free(s->ep_basic);
    s->ep_basic = NULL;
}

static int cfg_int(struct soap *s, const char *key, int64_t min, int64_t max, int64_t *out)
{
    int64_t v = s->host->config_int(s->ins, key);
    if (v < min || v > max) {
        s->host->log(s->ins, NULL, KFG_LOG_ERROR, "%s must be in %lld..%lld, not %lld", key,
                     (long long)min, (long long)max, (long long)v);
        return KFG_EINVAL;
    }
    *out = v;
    return KFG_OK;
}

static int load_users(struct soap *s)
{
    const struct kfg_host *h = s->host;
    size_t n = h->config_array_len(s->ins, "users");
    s->users = calloc(n ? n : 1, sizeof *s->users);
    if (!s->users)
        return KFG_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const char *e = h->config_array_string(s->ins, "users", i);
        const char *eq = e ? strchr(e, '=') : NULL;
        if (!eq || eq == e || !eq[1]) {
            h->log(s->ins, NULL, KFG_LOG_ERROR, "users[%zu] must be \"name=password\"", i);
            return KFG_EINVAL;
        }
        const char *pw = eq + 1;
        if (!strncmp(pw, "env:", 4)) {
            const char *v = getenv(pw + 4);
            if (!v || !*v) {
                h->log(s->ins, NULL, KFG_LOG_ERROR,
                       "users[%zu]: environment variable %s is not set or empty", i, pw + 4);
                return KFG_EINVAL;
            }
            pw = v;
        }
        struct soap_user *u = &s->users[s->nusers];
        u->nlen = (size_t)(eq - e);
        u->name = strndup(e, u->nlen);
        u->pass = strdup(pw);
        if (!u->name || !u->pass) {
            free(u->name);
            free(u->pass);
            return KFG_ENOMEM;
        }
        u->plen = strlen(pw);
        s->nusers++;
        for (size_t k = 0; k + 1 < s->nusers; k++)
            if (s->users[k].nlen == u->nlen && !memcmp(s->users[k].name, u->name, u->nlen)) {
                h->log(s->ins, NULL, KFG_LOG_ERROR, "users: \"%s\" is listed twice", u->name);
                return KFG_EINVAL;
            }
    }
    return KFG_OK;
}

static int load_map(struct soap *s)
{
    const struct kfg_host *h = s->host;
    struct soap_map *m = &s->map;
    char why[300] = "";
    m->x_conv = m->x_sender = m->x_text = m->x_event = m->x_idem = -1;
    size_t nns = h->config_array_len(s->ins, "namespaces");
    for (size_t i = 0; i < nns; i++)
        if (soap_map_add_ns(m, h->config_array_string(s->ins, "namespaces", i), why,
                            sizeof why) != 0)
            goto bad;
    const char *op = opt_string(s, "map_operation");
    if (!op) {
        const char *const any[] = { "map_conversation", "map_sender", "map_text", "map_event",
                                    "map_idem", "map_response", "map_action" };
        for (size_t i = 0; i < sizeof any / sizeof any[0]; i++)
            if (opt_string(s, any[i])) {
                snprintf(why, sizeof why, "%s is set but map_operation is not", any[i]);
                goto bad;
            }
        if (h->config_array_len(s->ins, "map_fields")) {
            snprintf(why, sizeof why, "map_fields is set but map_operation is not");
            goto bad;
        }
        return KFG_OK;
    }
    if (soap_map_set_op(m, op, why, sizeof why) != 0)
        goto bad;
    m->type = h->config_string(s->ins, "map_type");
    if (!m->type || (strcmp(m->type, "message") && strcmp(m->type, "event"))) {
        snprintf(why, sizeof why, "map_type must be \"message\" or \"event\"");
        goto bad;
    }
    const char *act = opt_string(s, "map_action");
    if (act && !(m->action = strdup(act)))
        return KFG_ENOMEM;
    const char *resp = opt_string(s, "map_response");
    if (resp && !(m->response = strdup(resp)))
        return KFG_ENOMEM;
    struct {
        const char *key;
        int *slot;
    } ex[] = {
        { "map_conversation", &m->x_conv }, { "map_sender", &m->x_sender },
        { "map_text", &m->x_text }, { "map_event", &m->x_event }, { "map_idem", &m->x_idem },
    };
    for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++)
        if (soap_map_add_expr(m, ex[i].key, opt_string(s, ex[i].key), ex[i].slot, why,
                              sizeof why) != 0)
            goto bad;
    size_t nf = h->config_array_len(s->ins, "map_fields");
    for (size_t i = 0; i < nf; i++)
        if (soap_map_add_field(m, h->config_array_string(s->ins, "map_fields", i), why,
                               sizeof why) != 0)
            goto bad;
    if (soap_map_finish(m, why, sizeof why) != 0)
        goto bad;
    return KFG_OK;
bad:
    h->log(s->ins, NULL, KFG_LOG_ERROR, "%s", why[0] ? why : "out of memory");
    return KFG_EINVAL;
}

static int load_wsdl_file(struct soap *s, const char *file)
{
    FILE *f = fopen(file, "rb");
    if (!f) {
        s->host->log(s->ins, NULL, KFG_LOG_ERROR, "wsdl_file %s cannot be read", file);
        return KFG_EINVAL;
    }
    struct soap_buf b = { 0 };
    char tmp[8192];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0 && b.len <= (4u << 20))
        sb_put(&b, tmp, n);
    fclose(f);
    if (b.oom || b.len > (4u << 20) || !b.len) {
        s->host->log(s->ins, NULL, KFG_LOG_ERROR, "wsdl_file %s is empty or over 4 MiB", file);
        sb_free(&b);
        return KFG_EINVAL;
    }
    s->wsdl = b.p;
    s->wsdl_len = b.len;
    return KFG_OK;
}

static int soap_init_inner(struct soap *s)
{
    const struct kfg_host *h = s->host;
    struct kfg_instance *ins = s->ins;
    s->have_emit2 = h->abi_minor >= 1 && h->struct_size > offsetof(struct kfg_host, emit2) &&
                    h->emit2;
    s->have_http2 = h->abi_minor >= 1 &&
                    h->struct_size > offsetof(struct kfg_host, http_call2) && h->http_call2;
    s->have_delivered2 = h->abi_minor >= 1 &&
                         h->struct_size > offsetof(struct kfg_host, delivered2) && h->delivered2;
    s->have_attempt = h->abi_minor >= 1 &&
                      h->struct_size > offsetof(struct kfg_host, delivery_attempt) &&
                      h->delivery_attempt;
    const char *path = h->config_string(ins, "path");
    size_t pl = path ? strlen(path) : 0;
    while (pl > 1 && path[pl - 1] == '/')
        pl--;
    if (!path || path[0] != '/' || pl >= 200 || strpbrk(path, "?# ")) {
        h->log(ins, NULL, KFG_LOG_ERROR, "path must start with '/' and be a plain path: \"%s\"",
               path ? path : "");
        return KFG_EINVAL;
    }
    memcpy(s->path, path, pl);
    s->path[pl] = '\0';

    int rc;
    int64_t v;
    if ((rc = load_users(s)) != KFG_OK)
        return rc;
    const char *auth = h->config_string(ins, "auth");
    static const char *const modes[] = { "none", "wsse", "basic", "either", "both" };
    s->cfg.sec.mode = -1;
    for (int i = 0; i < 5; i++)
        if (auth && !strcmp(auth, modes[i]))
            s->cfg.sec.mode = i;
    if (s->cfg.sec.mode < 0) {
        h->log(ins, NULL, KFG_LOG_ERROR,
               "auth must be \"wsse\", \"basic\", \"either\", \"both\" or \"none\"");
        return KFG_EINVAL;
    }
    if (s->cfg.sec.mode != SOAP_AUTH_NONE && !s->nusers) {
        h->log(ins, NULL, KFG_LOG_ERROR,
               "auth = \"%s\" needs users (\"name=password\"); set auth = \"none\" to run an "
               "open endpoint", auth);
        return KFG_EINVAL;
    }
    if (s->cfg.sec.mode == SOAP_AUTH_NONE)
        h->log(ins, NULL, KFG_LOG_WARN, "auth = \"none\": the endpoint accepts anyone");
    s->cfg.sec.users = s->users;
    s->cfg.sec.nusers = s->nusers;
    s->cfg.sec.allow_text = h->config_bool(ins, "allow_password_text");
    s->cfg.sec.text_needs_created = h->config_bool(ins, "text_requires_nonce");
    if ((rc = cfg_int(s, "wsse_window_s", 1, 86400, &s->cfg.sec.window_s)) != KFG_OK)
        return rc;
    if ((rc = cfg_int(s, "nonce_cache", 1, 1 << 24, &v)) != KFG_OK)
        return rc;
    if (s->cfg.sec.mode != SOAP_AUTH_NONE && s->cfg.sec.mode != SOAP_AUTH_BASIC &&
        !(s->cfg.sec.nonces = soap_nonces_new((size_t)v)))
        return KFG_ENOMEM;
    if ((rc = cfg_int(s, "max_body", 1, 64 << 20, &v)) != KFG_OK)
        return rc;
    s->cfg.lim.max_body = (size_t)v;
    if ((rc = cfg_int(s, "max_depth", 4, 256, &v)) != KFG_OK)
        return rc;
    s->cfg.lim.max_depth = (unsigned)v;
    if ((rc = cfg_int(s, "max_elements", 4, 10000000, &v)) != KFG_OK)
        return rc;
    s->cfg.lim.max_elements = (unsigned)v;
    if ((rc = cfg_int(s, "max_text", 1, 16 << 20, &v)) != KFG_OK)
        return rc;
    s->cfg.lim.max_field = (size_t)v;
    if ((rc = cfg_int(s, "status_records", 1, 10000000, &v)) != KFG_OK)
        return rc;
    s->store_cap = (size_t)v;
    if (!(s->store = soap_store_new((size_t)v)))
        return KFG_ENOMEM;
    if ((rc = cfg_int(s, "retry_after_s", 1, 3600, &v)) != KFG_OK)
        return rc;
    s->retry_after = (int)v;
    s->cfg.keep_raw = h->config_bool(ins, "keep_raw");
    s->cfg.native = h->config_bool(ins, "native");
    if (!(s->cfg.pool = soap_pool_new()))
        return KFG_ENOMEM;
    if ((rc = load_map(s)) != KFG_OK)
        return rc;
    s->cfg.map = s->map.enabled ? &s->map : NULL;
    if (!s->cfg.native && !s->cfg.map) {
        h->log(ins, NULL, KFG_LOG_ERROR, "native = false needs a mapped operation (map_operation)");
        return KFG_EINVAL;
    }

    const char *wf = opt_string(s, "wsdl_file");
    if (wf && (rc = load_wsdl_file(s, wf)) != KFG_OK)
        return rc;
    s->public_url = opt_string(s, "public_url");
    if (s->public_url) {
        if (strncmp(s->public_url, "http://", 7) && strncmp(s->public_url, "https://", 8)) {
            h->log(ins, NULL, KFG_LOG_ERROR, "public_url must be an http(s) URL");
            return KFG_EINVAL;
        }
        const char *tpl = s->wsdl ? s->wsdl : soap_wsdl_start;
        size_t tl = s->wsdl ? s->wsdl_len : (size_t)(soap_wsdl_end - soap_wsdl_start);
        if (!(s->wsdl_fixed = wsdl_with(tpl, tl, s->public_url, strlen(s->public_url),
                                        &s->wsdl_fixed_len)))
            return KFG_ENOMEM;
    }

    /* Outbound. */
    s->ep_url = opt_string(s, "endpoint_url");
    if (s->ep_url && strncmp(s->ep_url, "http://", 7) && strncmp(s->ep_url, "https://", 8)) {
        h->log(ins, NULL, KFG_LOG_ERROR, "endpoint_url must be an http(s) URL");
        return KFG_EINVAL;
    }
    const char *ver = h->config_string(ins, "endpoint_version");
    s->ep_version = ver && !strcmp(ver, "1.2") ? 12 : ver && !strcmp(ver, "1.1") ? 11 : 0;
    if (!s->ep_version) {
        h->log(ins, NULL, KFG_LOG_ERROR, "endpoint_version must be \"1.1\" or \"1.2\"");
        return KFG_EINVAL;
    }
    s->ep_action = h->config_string(ins, "endpoint_action");
    if (!s->ep_action)
        s->ep_action = "";
    if (strpbrk(s->ep_action, "\"\r\n") || strlen(s->ep_action) > 500) {
        h->log(ins, NULL, KFG_LOG_ERROR, "endpoint_action must not hold quotes or line breaks");
        return KFG_EINVAL;
    }
    s->ep_template = opt_string(s, "endpoint_template");
    if (s->ep_template) {
        struct soap_buf b = { 0 };
        struct soap_kv kv[] = { { "text", "t", 0 } };
        soap_template_kv(&b, s->ep_template, kv, 1);
        xmlDocPtr t = b.p ? xmlReadMemory(b.p, (int)b.len, NULL, "UTF-8",
                                          XML_PARSE_NONET | XML_PARSE_NOERROR |
                                              XML_PARSE_NOWARNING)
                          : NULL;
        int good = t && !t->intSubset && !strstr(s->ep_template, "<!");
        if (t)
            xmlFreeDoc(t);
        sb_free(&b);
        if (!good) {
            h->log(ins, NULL, KFG_LOG_ERROR,
                   "endpoint_template is not one well-formed XML element");
            return KFG_EINVAL;
        }
    }
    const char *ea = h->config_string(ins, "endpoint_auth");
    s->ep_auth = ea && !strcmp(ea, "wsse") ? 1 : ea && !strcmp(ea, "basic") ? 2
                 : ea && !strcmp(ea, "none") ? 0 : -1;
    if (s->ep_auth < 0) {
        h->log(ins, NULL, KFG_LOG_ERROR, "endpoint_auth must be \"none\", \"wsse\" or \"basic\"");
        return KFG_EINVAL;
    }
    s->ep_user = opt_string(s, "endpoint_username");
    s->ep_pass = opt_string(s, "endpoint_password");
    if (s->ep_auth && (!s->ep_user || !s->ep_pass)) {
        h->log(ins, NULL, KFG_LOG_ERROR,
               "endpoint_auth needs endpoint_username and endpoint_password");
        return KFG_EINVAL;
    }
    if (s->ep_auth == 2) {
        size_t ul = strlen(s->ep_user), pl2 = strlen(s->ep_pass);
        char *cred = malloc(ul + pl2 + 2);
        char *enc = malloc(4 * ((ul + pl2 + 3) / 3) + 1);
        s->ep_basic = malloc(4 * ((ul + pl2 + 3) / 3) + 32);
        if (!cred || !enc || !s->ep_basic) {
            free(cred);
            free(enc);
            return KFG_ENOMEM;
        }
        memcpy(cred, s->ep_user, ul);
        cred[ul] = ':';
        memcpy(cred + ul + 1, s->ep_pass, pl2 + 1);
        soap_b64_encode((unsigned char *)cred, ul + 1 + pl2, enc);
        sprintf(s->ep_basic, "Authorization: Basic %s", enc);
        wipe_free(cred);
        wipe_free(enc);
    }
    if ((rc = cfg_int(s, "endpoint_timeout_ms", 1, 600000, &v)) != KFG_OK)
        return rc;
    s->ep_timeout = (uint32_t)v;
    if ((rc = cfg_int(s, "endpoint_concurrency", 1, 10000, &v)) != KFG_OK)
        return rc;
    s->ep_concurrency = (unsigned)v;
    if ((rc = cfg_int(s, "endpoint_queue", 0, 10000000, &v)) != KFG_OK)
        return rc;
    s->ep_queue_max = (unsigned)v;
    if ((rc = cfg_int(s, "endpoint_max_attempts", 0, 1000, &v)) != KFG_OK)
        return rc;
    s->ep_max_attempts = (unsigned)v;

    for (int o = 0; o < O__N; o++)
        if (!(s->m_req[o] = h->metric_counter(ins, "soap_requests_total",
                                              "SOAP requests by outcome.", outcome_label[o])))
            return KFG_ENOMEM;
    for (int o = 0; o < B__N; o++)
        if (!(s->m_ob[o] = h->metric_counter(ins, "soap_deliveries_total",
                                             "Outbound SOAP attempts by outcome.", ob_label[o])))
            return KFG_ENOMEM;
    s->m_lat = h->metric_histogram(ins, "soap_request_duration_seconds",
                                   "Time from request to answer.", NULL);
    s->m_ob_lat = h->metric_histogram(ins, "soap_delivery_duration_seconds",
                                      "Time of one outbound SOAP call.", NULL);
    if (!s->m_lat || !s->m_ob_lat)
        return KFG_ENOMEM;
    return KFG_OK;
}

static int soap_init(struct kfg_instance *ins, const struct kfg_host *host, void *ctx)
{
    struct soap *s = ctx;
    s->ins = ins;
    s->host = host;
    s->name = host->instance_name(ins);
    atomic_init(&s->running, 0);
    atomic_init(&s->ob_inflight, 0);
    atomic_init(&s->ob_queued, 0);
    atomic_init(&s->ob_failures, 0);
    xmlInitParser();
    int rc = soap_init_inner(s);
    if (rc != KFG_OK)
        soap_cleanup(s);
    return rc;
}

static int soap_start(void *ctx)
{
    struct soap *s = ctx;
    const struct kfg_host *h = s->host;
    int rc = h->route_add(s->ins, NULL, s->path[0] ? s->path : "/", KFG_ROUTE_EXACT, on_request);
    if (rc != KFG_OK) {
        h->log(s->ins, NULL, KFG_LOG_ERROR, "cannot claim the route %s: %d", s->path, rc);
        return rc;
    }
    atomic_store(&s->running, 1);
    h->log(s->ins, NULL, KFG_LOG_INFO, "SOAP 1.1/1.2 endpoint on %s (auth %s%s%s)%s%s",
           s->path[0] ? s->path : "/",
           (const char *[]){ "none", "wsse", "basic", "either", "both" }[s->cfg.sec.mode],
           s->map.enabled ? ", mapped operation " : "", s->map.enabled ? s->map.op_local : "",
           s->ep_url ? ", callbacks to " : "", s->ep_url ? s->ep_url : "");
    return KFG_OK;
}

static int soap_stop(void *ctx)
{
    struct soap *s = ctx;
    atomic_store(&s->running, 0);
    while (s->q_head) {
        struct ob_job *j = s->q_head;
        s->q_head = j->next;
        atomic_fetch_sub(&s->ob_queued, 1);
        ob_finish(j, KFG_RETRY, "soap:stopping", "the instance is stopping", 0);
        job_free(j);
    }
    s->q_tail = NULL;
    unsigned n = atomic_load(&s->ob_inflight);
    if (n == 0)
        return KFG_OK;
    s->host->log(s->ins, NULL, KFG_LOG_INFO, "stopping, %u outbound call(s) in flight", n);
    s->stopping = 1;
    return KFG_AGAIN;
}

/* Unhealthy after OB_UNHEALTHY failed callbacks in a row: the legacy
 * endpoint is down or refuses us, which an operator wants on /readyz. */
#define OB_UNHEALTHY 10

static int soap_health(void *ctx, char *detail, size_t cap)
{
    struct soap *s = ctx;
    int f = atomic_load(&s->ob_failures);
    if (f >= OB_UNHEALTHY) {
        snprintf(detail, cap, "last %d callback attempts to %s failed: %s", f, s->ep_url,
                 s->ob_last_error);
        return KFG_EFAIL;
    }
    return KFG_OK;
}

static void soap_destroy(void *ctx)
{
    struct soap *s = ctx;
    while (s->q_head) {
        struct ob_job *j = s->q_head;
        s->q_head = j->next;
        job_free(j);
    }
    soap_cleanup(s);
}

KFG_PLUGIN_EXPORT = {
    KFG_PLUGIN_HEADER,
    .kind = KFG_KIND_ADAPTER,
    .name = "soap",
    .version = SOAP_VERSION,
    .description = "SOAP 1.1/1.2 endpoint (WSDL, WS-Security, XPath-mapped legacy "
                   "operations) and SOAP callbacks",
    .config = soap_config,
    .ctx_size = sizeof(struct soap),
    .init = soap_init,
    .start = soap_start,
    .stop = soap_stop,
    .destroy = soap_destroy,
    .health = soap_health,
    .deliver = soap_deliver,
};
