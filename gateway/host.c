/*
 * struct kfg_host: the gateway as seen from a plugin. Each entry is a thin
 * adapter from the ABI to the module that owns the mechanism; anything that
 * starts work on behalf of an instance holds a reference on it until the
 * work completes, so a draining instance is destroyed only when idle.
 */
#include <event2/event.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busd.h"
#include "config.h"
#include "gateway.h"
#include "http.h"
#include "httpc.h"
#include "instance.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "msg.h"

static const char *h_instance_name(const struct kfg_instance *ins)
{
    return ins->name;
}

static const char *h_instance_tenant(const struct kfg_instance *ins)
{
    return ins->tenant;
}

static const char *h_config_string(const struct kfg_instance *ins, const char *key)
{
    return kfg_icfg_string(ins->cfg, key);
}

static int64_t h_config_int(const struct kfg_instance *ins, const char *key)
{
    return kfg_icfg_int(ins->cfg, key);
}

static int h_config_bool(const struct kfg_instance *ins, const char *key)
{
    return kfg_icfg_bool(ins->cfg, key);
}

static double h_config_float(const struct kfg_instance *ins, const char *key)
{
    return kfg_icfg_float(ins->cfg, key);
}

static size_t h_config_array_len(const struct kfg_instance *ins, const char *key)
{
    return kfg_icfg_array_len(ins->cfg, key);
}

static const char *h_config_array_string(const struct kfg_instance *ins, const char *key,
                                         size_t i)
{
    return kfg_icfg_array_string(ins->cfg, key, i);
}

static void h_vlog(const struct kfg_instance *ins, const struct kfg_request *req, int level,
                   const char *fmt, va_list ap)
{
    int max = ins ? ins->log_level : -1;
    if (level > (max >= 0 ? max : kfg_log_level()))
        return;
    kfg_logv(level, max, ins ? ins->name : NULL, req ? kfg_req_id(req) : NULL, NULL, fmt, ap);
}

static void h_log(const struct kfg_instance *ins, const struct kfg_request *req, int level,
                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void h_log(const struct kfg_instance *ins, const struct kfg_request *req, int level,
                  const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    h_vlog(ins, req, level, fmt, ap);
    va_end(ap);
}

static struct kfg_metric *metric(struct kfg_instance *ins, enum kfg_metric_type t,
                                 const char *name, const char *help, const char *labels)
{
    char esc[100], l[512];
    kfg_metrics_label_escape(esc, sizeof(esc), ins->name);
    if (labels && *labels)
        snprintf(l, sizeof(l), "instance=\"%s\",%s", esc, labels);
    else
        snprintf(l, sizeof(l), "instance=\"%s\"", esc);
    return kfg_metric_get(t, name, help, l);
}

static struct kfg_metric *h_metric_counter(struct kfg_instance *ins, const char *name,
                                           const char *help, const char *labels)
{
    return metric(ins, KFG_METRIC_COUNTER, name, help, labels);
}

static struct kfg_metric *h_metric_gauge(struct kfg_instance *ins, const char *name,
                                         const char *help, const char *labels)
{
    return metric(ins, KFG_METRIC_GAUGE, name, help, labels);
}

static struct kfg_metric *h_metric_histogram(struct kfg_instance *ins, const char *name,
                                             const char *help, const char *labels)
{
    return metric(ins, KFG_METRIC_HISTOGRAM, name, help, labels);
}

static void h_metric_add(struct kfg_metric *m, int64_t d)
{
    if (m)
        kfg_metric_add(m, d);
}

static void h_metric_set(struct kfg_metric *m, int64_t v)
{
    if (m)
        kfg_metric_set(m, v);
}

static void h_metric_observe(struct kfg_metric *m, double s)
{
    if (m)
        kfg_metric_observe(m, s);
}

static struct kfg_loop *h_loop_current(void)
{
    return kfg_loop_current();
}

static struct event_base *h_loop_base(struct kfg_loop *loop)
{
    return loop ? kfg_loop_base(loop) : NULL;
}

static int h_post(struct kfg_loop *loop, void (*fn)(void *), void *arg)
{
    if (!loop || !fn)
        return KFG_EINVAL;
    return kfg_loop_post(loop, fn, arg) == 0 ? KFG_OK : KFG_ESTOPPED;
}

/* ------------------------------------------------------------------------ */
/* Timers */

struct kfg_timer {
    struct event *ev;
    struct kfg_loop *loop;
    struct kfg_instance *ins;
    void (*fn)(void *);
    void *arg;
    int repeat;
    int running;      /* inside fn */
    int freed;        /* timer_free called inside fn */
};

static void timer_release(struct kfg_timer *t)
{
    event_free(t->ev);
    if (t->ins)
        kfg_instance_unref(t->ins);
    free(t);
}

static void timer_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kfg_timer *t = arg;
    t->running = 1;
    t->fn(t->arg);
    t->running = 0;
    if (t->freed)
        timer_release(t);
}

static struct kfg_timer *h_timer_start(struct kfg_instance *ins, uint64_t ms, int repeat,
                                       void (*fn)(void *), void *arg)
{
    struct kfg_loop *loop = kfg_loop_current();
    if (!loop || !fn)
        return NULL;
    struct kfg_timer *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->loop = loop;
    t->fn = fn;
    t->arg = arg;
    t->repeat = repeat;
    t->ev = event_new(kfg_loop_base(loop), -1, repeat ? EV_PERSIST : 0, timer_fire, t);
    struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };
    if (!t->ev || event_add(t->ev, &tv) < 0) {
        if (t->ev)
            event_free(t->ev);
        free(t);
        return NULL;
    }
    /* A pending timer is work in flight: it keeps its instance alive. */
    t->ins = ins;
    if (ins)
        kfg_instance_ref(ins);
    return t;
}

static void timer_free_on_loop(void *arg)
{
    timer_release(arg);
}

static void h_timer_free(struct kfg_timer *t)
{
    if (!t)
        return;
    if (t->running) {
        t->freed = 1;
        event_del(t->ev);
        return;
    }
    if (kfg_loop_current() == t->loop) {
        timer_release(t);
        return;
    }
    /* Another thread owns the event; hand the free to it. */
    if (kfg_loop_post(t->loop, timer_free_on_loop, t) < 0)
        timer_release(t);   /* loop gone: nothing can fire any more */
}

/* ------------------------------------------------------------------------ */
/* Routes and requests */

static int h_route_add(struct kfg_instance *ins, const char *method, const char *path,
                       unsigned flags, kfg_http_handler fn)
{
    struct kfg_gateway *gw = kfg_gw;
    if (!gw->building || kfg_loop_current() != gw->control)
        return KFG_EINVAL;  /* only from start */
    int r = kfg_routes_add(gw->building, method, path, flags, fn, ins->ctx, ins);
    if (r == KFG_EEXIST) {
        kfg_log(KFG_LOG_ERROR, ins->name, NULL, "route %s %s is already taken by another instance",
                method ? method : "*", path);
        return r;
    }
    if (r != KFG_OK)
        return r;
    struct kfg_ins_route *nv = realloc(ins->routes, (ins->nroutes + 1) * sizeof(*nv));
    if (!nv)
        return KFG_ENOMEM;
    ins->routes = nv;
    nv[ins->nroutes].method = method ? strdup(method) : NULL;
    nv[ins->nroutes].path = strdup(path);
    nv[ins->nroutes].flags = flags;
    nv[ins->nroutes].fn = fn;
    ins->nroutes++;
    return KFG_OK;
}

/* ------------------------------------------------------------------------ */
/* Outbound HTTP */

struct call {
    struct kfg_instance *ins;
    kfg_http_done done;
    void *arg;
};

static void call_done(void *arg, int result, int status, struct kfg_str body, const char *err)
{
    struct call *c = arg;
    c->done(c->arg, result, status, body, err);
    kfg_instance_unref(c->ins);
    free(c);
}

static int h_http_call(struct kfg_instance *ins, const struct kfg_http_call *call,
                       kfg_http_done done, void *arg)
{
    struct kfg_loop *loop = kfg_loop_current();
    if (!loop || !call || !done)
        return KFG_EINVAL;
    struct kfg_httpc *hc = kfg_loop_httpc(loop);
    struct call *c = malloc(sizeof(*c));
    if (!hc || !c) {
        free(c);
        return KFG_ENOMEM;
    }
    c->ins = ins;
    c->done = done;
    c->arg = arg;
    kfg_instance_ref(ins);
    int r = kfg_httpc_call(hc, ins, call, call_done, c);
    if (r != KFG_OK) {
        kfg_instance_unref(ins);
        free(c);
    }
    return r;
}

struct call2 {
    struct kfg_instance *ins;
    kfg_http_done2 done;
    void *arg;
};

static void call2_done(void *arg, const struct kfg_http_response *r)
{
    struct call2 *c = arg;
    c->done(c->arg, r);
    kfg_instance_unref(c->ins);
    free(c);
}

static int h_http_call2(struct kfg_instance *ins, const struct kfg_http_call *call,
                        kfg_http_done2 done, void *arg)
{
    struct kfg_loop *loop = kfg_loop_current();
    if (!loop || !call || !done)
        return KFG_EINVAL;
    struct kfg_httpc *hc = kfg_loop_httpc(loop);
    struct call2 *c = malloc(sizeof(*c));
    if (!hc || !c) {
        free(c);
        return KFG_ENOMEM;
    }
    *c = (struct call2){ ins, done, arg };
    kfg_instance_ref(ins);
    int r = kfg_httpc_call2(hc, ins, call, call2_done, c);
    if (r != KFG_OK) {
        kfg_instance_unref(ins);
        free(c);
    }
    return r;
}

/* ------------------------------------------------------------------------ */
/* Messages */

static struct kfg_msg *h_msg_new(struct kfg_instance *ins, const char *type)
{
    return kfg_msg_new(type, ins->tenant, ins->plugin->name, ins->name);
}

/* ------------------------------------------------------------------------ */
/* Emit: the filters, then the bus (journal, dedupe, feed). */

struct emit_done {
    struct kfg_instance *ins;
    kfg_emit_done done;
    kfg_emit_done2 done2;
    void *arg;
    char reason[160];
};

/* A dropped message is answered like an accepted one, later and on the
 * calling loop, as the ABI promises for every completion. */
static void emit_dropped(void *arg)
{
    struct emit_done *e = arg;
    if (e->done2) {
        struct kfg_emit_result r = { .result = KFG_EDROPPED, .reason = e->reason };
        e->done2(e->arg, &r);
    } else {
        e->done(e->arg, KFG_EDROPPED, 0, e->reason);
    }
    kfg_instance_unref(e->ins);
    free(e);
}

static int emit_any(struct kfg_instance *ins, struct kfg_msg *m, kfg_emit_done done,
                    kfg_emit_done2 done2, void *arg)
{
    struct kfg_loop *loop = kfg_loop_current();
    if (!ins || !m || !(done || done2) || !loop)
        return KFG_EINVAL;
    char reason[160];
    const struct kfg_chain *chain = kfg_chain_current();
    for (size_t i = 0; chain && i < chain->n; i++) {
        struct kfg_instance *f = chain->v[i];
        reason[0] = '\0';
        int r = f->plugin->filter(f->ctx, m, reason, sizeof(reason));
        if (r == KFG_OK)
            continue;
        if (r == KFG_EDROPPED) {
            reason[sizeof(reason) - 1] = '\0';
            struct emit_done *e = calloc(1, sizeof(*e));
            if (!e)
                return KFG_ENOMEM;
            kfg_log(KFG_LOG_INFO, ins->name, NULL, "message dropped by filter %s: %s",
                    f->name, reason);
            kfg_metric_add(ins->m_dropped, 1);
            memcpy(e->reason, reason, sizeof(reason));
            e->ins = ins;
            e->done = done;
            e->done2 = done2;
            e->arg = arg;
            kfg_instance_ref(ins);
            if (kfg_loop_post(loop, emit_dropped, e) < 0) {
                kfg_instance_unref(ins);
                free(e);
                return KFG_ESTOPPED;
            }
            kfg_msg_free(m);
            return KFG_OK;
        }
        /* A failing filter must not let a message it could not judge
         * through, nor silently lose it: the channel is told to retry. */
        kfg_log(KFG_LOG_ERROR, ins->name, NULL, "filter %s failed (%d); message refused",
                f->name, r);
        kfg_metric_add(ins->m_rejected, 1);
        return KFG_EFAIL;
    }
    int r = kfg_busd_emit(ins, m, done, done2, arg);
    kfg_metric_add(r == KFG_OK ? ins->m_emitted : ins->m_rejected, 1);
    return r;
}

int kfg_emit(struct kfg_instance *ins, struct kfg_msg *m, kfg_emit_done done, void *arg)
{
    return done ? emit_any(ins, m, done, NULL, arg) : KFG_EINVAL;
}

static int h_emit2(struct kfg_instance *ins, struct kfg_msg *m, kfg_emit_done2 done, void *arg)
{
    return done ? emit_any(ins, m, NULL, done, arg) : KFG_EINVAL;
}


static void h_stopped(struct kfg_instance *ins)
{
    kfg_instance_stopped(ins);
}

static const struct kfg_host host = {
    .abi_major = KFG_ABI_MAJOR,
    .abi_minor = KFG_ABI_MINOR,
    .struct_size = sizeof(struct kfg_host),
    .version = KFG_VERSION,
    .instance_name = h_instance_name,
    .instance_tenant = h_instance_tenant,
    .config_string = h_config_string,
    .config_int = h_config_int,
    .config_bool = h_config_bool,
    .config_float = h_config_float,
    .config_array_len = h_config_array_len,
    .config_array_string = h_config_array_string,
    .log = h_log,
    .vlog = h_vlog,
    .metric_counter = h_metric_counter,
    .metric_gauge = h_metric_gauge,
    .metric_histogram = h_metric_histogram,
    .metric_add = h_metric_add,
    .metric_set = h_metric_set,
    .metric_observe = h_metric_observe,
    .loop_current = h_loop_current,
    .loop_base = h_loop_base,
    .post = h_post,
    .timer_start = h_timer_start,
    .timer_free = h_timer_free,
    .route_add = h_route_add,
    .req_method = kfg_req_method,
    .req_path = kfg_req_path,
    .req_query = kfg_req_query,
    .req_header = kfg_req_header,
    .req_header_count = kfg_req_header_count,
    .req_header_at = kfg_req_header_at,
    .req_body = kfg_req_body,
    .req_id = kfg_req_id,
    .req_peer = kfg_req_peer,
    .req_loop = kfg_req_loop,
    .req_respond = kfg_req_respond,
    .req_upgrade = kfg_req_upgrade,
    .http_call = h_http_call,
    .msg_new = h_msg_new,
    .msg_free = kfg_msg_free,
    .msg_set = kfg_msg_set,
    .msg_set_int = kfg_msg_set_int,
    .msg_get = kfg_msg_get,
    .msg_part_add = kfg_msg_part_add,
    .msg_part_set = kfg_msg_part_set,
    .msg_part_count = kfg_msg_part_count,
    .msg_part_kind = kfg_msg_part_kind,
    .msg_part_get = kfg_msg_part_get,
    .emit = kfg_emit,
    .delivered = kfg_busd_delivered,
    .stopped = h_stopped,
    .msg_get_int = kfg_msg_get_int,
    .emit2 = h_emit2,
    .http_call2 = h_http_call2,
    .delivered2 = kfg_busd_delivered2,
    .delivery_attempt = kfg_busd_delivery_attempt,
    .replay = kfg_busd_replay,
};

const struct kfg_host *kfg_host_table(void)
{
    return &host;
}
