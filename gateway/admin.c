/*
 * The admin listener (loopback by default), served on the control loop so
 * that handlers may read gateway state and call plugin health callbacks
 * without locks: /healthz, /readyz, /metrics, /plugins, POST /admin/reload
 * and POST /admin/deliver (an outbound test message for one adapter until
 * the bus delivers the core's answers).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busd.h"
#include "envelope.h"
#include "gateway.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "msg.h"

static const struct kfg_header json_ct[] = { { "Content-Type", "application/json" } };
static const struct kfg_header text_ct[] = { { "Content-Type", "text/plain; charset=utf-8" } };

static void reply_buf(struct kfg_request *req, int status, const struct kfg_header *ct,
                      struct kfg_buf *b)
{
    if (b->oom)
        kfg_req_respond(req, 500, text_ct, 1, "out of memory\n", 14);
    else
        kfg_req_respond(req, status, ct, 1, b->p ? b->p : "", b->len);
    kfg_buf_free(b);
}

static void a_healthz(void *ctx, struct kfg_request *req)
{
    (void)ctx;
    kfg_req_respond(req, 200, text_ct, 1, "ok\n", 3);
}

static int instance_health(struct kfg_instance *ins, char *detail, size_t cap)
{
    detail[0] = '\0';
    if (ins->state != KFG_INS_RUNNING) {
        snprintf(detail, cap, "not running");
        return KFG_EFAIL;
    }
    if (!ins->plugin->health)
        return KFG_OK;
    int r = ins->plugin->health(ins->ctx, detail, cap);
    detail[cap - 1] = '\0';
    return r;
}

static void a_readyz(void *ctx, struct kfg_request *req)
{
    (void)ctx;
    struct kfg_gateway *gw = kfg_gw;
    struct kfg_buf b = { 0 };
    int ready = !gw->shutting_down;
    kfg_buf_puts(&b, "{\"instances\":[");
    int first = 1;
    for (struct kfg_instance *i = gw->live; i; i = i->next) {
        char detail[256];
        int r = instance_health(i, detail, sizeof(detail));
        if (r != KFG_OK)
            ready = 0;
        kfg_buf_puts(&b, first ? "{\"name\":" : ",{\"name\":");
        first = 0;
        kfg_buf_json_str(&b, i->name, strlen(i->name));
        kfg_buf_printf(&b, ",\"healthy\":%s", r == KFG_OK ? "true" : "false");
        if (detail[0]) {
            kfg_buf_puts(&b, ",\"detail\":");
            kfg_buf_json_str(&b, detail, strlen(detail));
        }
        kfg_buf_putc(&b, '}');
    }
    kfg_buf_printf(&b, "],\"ready\":%s}\n", ready ? "true" : "false");
    reply_buf(req, ready ? 200 : 503, json_ct, &b);
}

static void a_metrics(void *ctx, struct kfg_request *req)
{
    (void)ctx;
    struct kfg_buf b = { 0 };
    kfg_metrics_render(&b);
    static const struct kfg_header ct[] = {
        { "Content-Type", "text/plain; version=0.0.4; charset=utf-8" } };
    reply_buf(req, 200, ct, &b);
}

static const char *state_name(enum kfg_instance_state s)
{
    static const char *const names[] = { "new", "ready", "running", "stopping", "stopped", "dead" };
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "?";
}

static void json_instance(struct kfg_buf *b, struct kfg_instance *i, int draining)
{
    char detail[256];
    int r = draining ? KFG_EFAIL : instance_health(i, detail, sizeof(detail));
    kfg_buf_puts(b, "{\"name\":");
    kfg_buf_json_str(b, i->name, strlen(i->name));
    kfg_buf_puts(b, ",\"type\":");
    kfg_buf_json_str(b, i->plugin->name, strlen(i->plugin->name));
    if (i->tenant) {
        kfg_buf_puts(b, ",\"tenant\":");
        kfg_buf_json_str(b, i->tenant, strlen(i->tenant));
    }
    kfg_buf_printf(b, ",\"state\":\"%s\",\"generation\":%u,\"healthy\":%s,\"routes\":[",
                   state_name(i->state), i->so->generation, r == KFG_OK ? "true" : "false");
    for (size_t k = 0; k < i->nroutes; k++) {
        if (k)
            kfg_buf_putc(b, ',');
        kfg_buf_puts(b, "{\"method\":");
        if (i->routes[k].method)
            kfg_buf_json_str(b, i->routes[k].method, strlen(i->routes[k].method));
        else
            kfg_buf_puts(b, "null");
        kfg_buf_puts(b, ",\"path\":");
        kfg_buf_json_str(b, i->routes[k].path, strlen(i->routes[k].path));
        kfg_buf_printf(b, ",\"prefix\":%s}",
                       i->routes[k].flags & KFG_ROUTE_PREFIX ? "true" : "false");
    }
    kfg_buf_puts(b, "]}");
}

static void a_plugins(void *ctx, struct kfg_request *req)
{
    (void)ctx;
    struct kfg_gateway *gw = kfg_gw;
    struct kfg_buf b = { 0 };
    kfg_buf_printf(&b, "{\"gateway\":{\"version\":\"%s\",\"abi\":\"%d.%d\",\"generation\":%u},"
                   "\"plugins\":[", KFG_VERSION, KFG_ABI_MAJOR, KFG_ABI_MINOR, gw->generation);
    for (size_t k = 0; k < gw->plugins.n; k++) {
        const struct kfg_so *so = gw->plugins.v[k];
        if (k)
            kfg_buf_putc(&b, ',');
        kfg_buf_puts(&b, "{\"name\":");
        kfg_buf_json_str(&b, so->desc.name, strlen(so->desc.name));
        const char *v = so->desc.version ? so->desc.version : "";
        kfg_buf_puts(&b, ",\"version\":");
        kfg_buf_json_str(&b, v, strlen(v));
        kfg_buf_printf(&b, ",\"kind\":\"%s\",\"abi\":\"%u.%u\",\"generation\":%u,\"file\":",
                       so->desc.kind == KFG_KIND_ADAPTER ? "adapter" : "filter",
                       so->desc.abi_major, so->desc.abi_minor, so->generation);
        kfg_buf_json_str(&b, so->path, strlen(so->path));
        kfg_buf_putc(&b, '}');
    }
    kfg_buf_puts(&b, "],\"refused\":[");
    for (size_t k = 0; k < gw->plugins.nrefused; k++) {
        if (k)
            kfg_buf_putc(&b, ',');
        kfg_buf_puts(&b, "{\"file\":");
        kfg_buf_json_str(&b, gw->plugins.refused[k].path, strlen(gw->plugins.refused[k].path));
        kfg_buf_puts(&b, ",\"reason\":");
        kfg_buf_json_str(&b, gw->plugins.refused[k].reason, strlen(gw->plugins.refused[k].reason));
        kfg_buf_putc(&b, '}');
    }
    kfg_buf_puts(&b, "],\"instances\":[");
    int first = 1;
    for (struct kfg_instance *i = gw->live; i; i = i->next) {
        if (!first)
            kfg_buf_putc(&b, ',');
        first = 0;
        json_instance(&b, i, 0);
    }
    kfg_buf_puts(&b, "],\"draining\":[");
    first = 1;
    for (struct kfg_instance *i = gw->draining; i; i = i->next) {
        if (!first)
            kfg_buf_putc(&b, ',');
        first = 0;
        json_instance(&b, i, 1);
    }
    kfg_buf_puts(&b, "]}\n");
    reply_buf(req, 200, json_ct, &b);
}

static void a_reload(void *ctx, struct kfg_request *req)
{
    (void)ctx;
    struct kfg_buf errs = { 0 }, b = { 0 };
    int r = kfg_gateway_reload(kfg_gw, &errs);
    kfg_buf_printf(&b, "{\"ok\":%s,\"generation\":%u", r == 0 ? "true" : "false",
                   kfg_gw->generation);
    if (r != 0) {
        kfg_buf_puts(&b, ",\"errors\":");
        kfg_buf_json_str(&b, kfg_buf_cstr(&errs), errs.len);
    }
    kfg_buf_puts(&b, "}\n");
    kfg_buf_free(&errs);
    reply_buf(req, r == 0 ? 200 : 422, json_ct, &b);
}

/* ------------------------------------------------------------------------ */
/* Test deliveries: POST /admin/deliver?instance=NAME&conversation=ID with
 * the text as body goes through the bus's outbound path (journal, receipts)
 * with one attempt, and is answered with its outcome. */

struct admin_delivery {
    struct kfg_request *req;
    int answered;
};

/* code/detail are the channel's for a delivery, the bus's error/reason for
 * a rejection. */
static void deliver_answer(struct admin_delivery *ad, int status, const char *result,
                           const char *id, uint64_t seq, const char *code,
                           const char *detail)
{
    int rejected = !strcmp(result, "rejected");
    struct kfg_buf b = { 0 };
    kfg_buf_printf(&b, "{\"result\":\"%s\"", result);
    if (id && *id) {
        kfg_buf_puts(&b, ",\"id\":");
        kfg_buf_json_str(&b, id, strlen(id));
        kfg_buf_printf(&b, ",\"seq\":%llu", (unsigned long long)seq);
    }
    if (code && *code) {
        kfg_buf_puts(&b, rejected ? ",\"error\":" : ",\"channel_code\":");
        kfg_buf_json_str(&b, code, strlen(code));
    }
    if (detail && *detail) {
        kfg_buf_puts(&b, rejected ? ",\"reason\":" : ",\"detail\":");
        kfg_buf_json_str(&b, detail, strlen(detail));
    }
    kfg_buf_puts(&b, "}\n");
    reply_buf(ad->req, status, json_ct, &b);
    ad->answered = 1;
}

static void deliver_accepted(void *arg, int result, const char *id, uint64_t seq,
                             int duplicate, const char *error, const char *reason)
{
    struct admin_delivery *ad = arg;
    (void)duplicate;
    if (result == KFG_OK)
        return;     /* the outcome follows in deliver_final */
    int status = error && !strcmp(error, "unknown_instance") ? 404
                 : error && !strcmp(error, "invalid") ? 400 : 503;
    deliver_answer(ad, status, "rejected", id, seq, error, reason);
    free(ad);
}

static void deliver_final(void *arg, const char *id, uint64_t seq, const char *status,
                          const char *code, const char *detail)
{
    struct admin_delivery *ad = arg;
    int ok = !strcmp(status, KFG_ENV_STATUS_SENT);
    deliver_answer(ad, ok ? 200 : 502, ok ? "delivered" : "failed", id, seq, code, detail);
    free(ad);
}

static struct kfg_str query_param(struct kfg_str q, const char *name)
{
    size_t nl = strlen(name);
    const char *p = q.ptr, *end = q.ptr + q.len;
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *stop = amp ? amp : end;
        if ((size_t)(stop - p) > nl && memcmp(p, name, nl) == 0 && p[nl] == '=')
            return (struct kfg_str){ p + nl + 1, (size_t)(stop - p - nl - 1) };
        p = amp ? amp + 1 : NULL;
    }
    return (struct kfg_str){ NULL, 0 };
}

static void a_deliver(void *ctx, struct kfg_request *req)
{
    (void)ctx;
    struct kfg_str name = query_param(kfg_req_query(req), "instance");
    struct kfg_str conv = query_param(kfg_req_query(req), "conversation");
    struct kfg_str body = kfg_req_body(req);
    struct kfg_msg *m = kfg_msg_new(KFG_ENV_TYPE_MESSAGE, NULL, NULL, NULL);
    struct admin_delivery *ad = calloc(1, sizeof(*ad));
    struct kfg_buf env = { 0 };
    if (!m || !ad) {
        kfg_msg_free(m);
        free(ad);
        kfg_req_respond(req, 500, text_ct, 1, "out of memory\n", 14);
        return;
    }
    ad->req = req;
    kfg_msg_set(m, KFG_ENV_DIR, KFG_ENV_DIR_OUT, 3);
    char iname[72];
    snprintf(iname, sizeof iname, "%.*s", name.ptr ? (int)name.len : 0,
             name.ptr ? name.ptr : "");
    m->instance = iname;    /* host-set field: only the struct carries it */
    if (conv.ptr)
        kfg_msg_set(m, KFG_ENV_CONVERSATION_ID, conv.ptr, conv.len);
    int p = kfg_msg_part_add(m, KFG_ENV_KIND_TEXT);
    if (p >= 0)
        kfg_msg_part_set(m, (size_t)p, KFG_ENV_P_TEXT, body.ptr ? body.ptr : "", body.len);
    int r = kfg_env_encode(m, &env);
    kfg_msg_free(m);
    if (r != 0) {
        kfg_buf_free(&env);
        free(ad);
        kfg_req_respond(req, 500, text_ct, 1, "out of memory\n", 14);
        return;
    }
    kfg_busd_submit(env.p, env.len, 1, deliver_accepted, deliver_final, ad);
    kfg_buf_free(&env);
}

void kfg_admin_routes(struct kfg_routes *r)
{
    kfg_routes_add(r, "GET", "/healthz", 0, a_healthz, NULL, NULL);
    kfg_routes_add(r, "GET", "/readyz", 0, a_readyz, NULL, NULL);
    kfg_routes_add(r, "GET", "/metrics", 0, a_metrics, NULL, NULL);
    kfg_routes_add(r, "GET", "/plugins", 0, a_plugins, NULL, NULL);
    kfg_routes_add(r, "POST", "/admin/reload", 0, a_reload, NULL, NULL);
    kfg_routes_add(r, "POST", "/admin/deliver", 0, a_deliver, NULL, NULL);
}
