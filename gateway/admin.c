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
/* Test deliveries */

struct kfg_delivery {
    struct kfg_instance *ins;
    struct kfg_msg *msg;
    struct kfg_request *req;
    int finished;
};

void kfg_delivery_finish(struct kfg_delivery *d, int result, const char *code,
                         const char *detail);

void kfg_delivery_finish(struct kfg_delivery *d, int result, const char *code,
                         const char *detail)
{
    if (!d || d->finished)
        return;
    d->finished = 1;
    kfg_metric_add(result == KFG_OK ? d->ins->m_delivered : d->ins->m_delivery_failed, 1);
    struct kfg_buf b = { 0 };
    kfg_buf_printf(&b, "{\"result\":\"%s\"", result == KFG_OK ? "delivered"
                   : result == KFG_RETRY ? "retry" : "failed");
    if (code) {
        kfg_buf_puts(&b, ",\"channel_code\":");
        kfg_buf_json_str(&b, code, strlen(code));
    }
    if (detail) {
        kfg_buf_puts(&b, ",\"detail\":");
        kfg_buf_json_str(&b, detail, strlen(detail));
    }
    kfg_buf_puts(&b, "}\n");
    reply_buf(d->req, result == KFG_OK ? 200 : 502, json_ct, &b);
    kfg_msg_free(d->msg);
    kfg_instance_unref(d->ins);
    free(d);
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
    struct kfg_instance *ins = NULL;
    for (struct kfg_instance *i = kfg_gw->live; i && name.ptr; i = i->next)
        if (strlen(i->name) == name.len && memcmp(i->name, name.ptr, name.len) == 0)
            ins = i;
    if (!ins || ins->kind != KFG_KIND_ADAPTER || ins->state != KFG_INS_RUNNING) {
        static const char e[] = "{\"error\":\"no running adapter instance of that name "
                                "(?instance=NAME)\"}\n";
        kfg_req_respond(req, 404, json_ct, 1, e, sizeof(e) - 1);
        return;
    }
    struct kfg_delivery *d = calloc(1, sizeof(*d));
    struct kfg_msg *m = kfg_msg_new("message", ins->tenant, ins->plugin->name, ins->name);
    if (!d || !m) {
        free(d);
        kfg_msg_free(m);
        kfg_req_respond(req, 500, text_ct, 1, "out of memory\n", 14);
        return;
    }
    struct kfg_str conv = query_param(kfg_req_query(req), "conversation");
    if (conv.ptr)
        kfg_msg_set(m, "conversation", conv.ptr, conv.len);
    kfg_msg_set(m, "direction", "out", 3);
    struct kfg_str body = kfg_req_body(req);
    int p = kfg_msg_part_add(m, "text");
    if (p >= 0)
        kfg_msg_part_set(m, (size_t)p, "text", body.ptr, body.len);
    kfg_msg_accept(m, 0);
    d->ins = ins;
    d->msg = m;
    d->req = req;
    kfg_instance_ref(ins);
    int r = ins->plugin->deliver(ins->ctx, m, d);
    if (r != KFG_OK)
        kfg_delivery_finish(d, r == KFG_RETRY ? KFG_RETRY : KFG_EFAIL, NULL,
                            "deliver callback refused the message");
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
