#include "gateway.h"

#include <errno.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"

struct kfg_gateway *kfg_gw;

/* ------------------------------------------------------------------------ */
/* Instances */

void kfg_instance_ref(struct kfg_instance *ins)
{
    atomic_fetch_add_explicit(&ins->refs, 1, memory_order_relaxed);
}

/* The gateway's own reference keeps refs >= 1 until destroy, so the last
 * release never happens here: the drain timer sees refs == 1 and finishes. */
void kfg_instance_unref(struct kfg_instance *ins)
{
    atomic_fetch_sub_explicit(&ins->refs, 1, memory_order_acq_rel);
}

static void instance_metrics(struct kfg_instance *ins)
{
    char l[160], esc[100];
    kfg_metrics_label_escape(esc, sizeof(esc), ins->name);
    static const char *const classes[] = { "1xx", "2xx", "3xx", "4xx", "5xx" };
    for (int i = 0; i < KFG_STATUS_CLASSES; i++) {
        snprintf(l, sizeof(l), "instance=\"%s\",code=\"%s\"", esc, classes[i]);
        ins->m_requests[i] = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_http_requests_total",
                                            "HTTP requests answered, by instance and status class.", l);
    }
    snprintf(l, sizeof(l), "instance=\"%s\"", esc);
    ins->m_latency = kfg_metric_get(KFG_METRIC_HISTOGRAM, "kfgate_http_request_duration_seconds",
                                    "Time from a complete request to its answer.", l);
    snprintf(l, sizeof(l), "instance=\"%s\",outcome=\"accepted\"", esc);
    ins->m_emitted = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_messages_total",
                                    "Inbound messages emitted by adapters, by outcome.", l);
    snprintf(l, sizeof(l), "instance=\"%s\",outcome=\"dropped\"", esc);
    ins->m_dropped = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_messages_total", NULL, l);
    snprintf(l, sizeof(l), "instance=\"%s\",outcome=\"rejected\"", esc);
    ins->m_rejected = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_messages_total", NULL, l);
    snprintf(l, sizeof(l), "instance=\"%s\",outcome=\"ok\"", esc);
    ins->m_delivered = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_deliveries_total",
                                      "Outbound deliveries finished, by outcome.", l);
    snprintf(l, sizeof(l), "instance=\"%s\",outcome=\"failed\"", esc);
    ins->m_delivery_failed = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_deliveries_total", NULL, l);
}

static struct kfg_instance *instance_new(struct kfg_so *so, const struct kfg_instance_cfg *ic,
                                         struct kfg_icfg *icfg, int default_level)
{
    struct kfg_instance *ins = calloc(1, sizeof(*ins));
    if (!ins)
        return NULL;
    ins->name = strdup(ic->name);
    ins->tenant = ic->kind == KFG_KIND_ADAPTER ? strdup(ic->tenant) : NULL;
    ins->kind = ic->kind;
    ins->plugin = &so->desc;
    ins->so = so;
    kfg_so_ref(so);
    ins->cfg = icfg;
    ins->log_level = ic->log_level >= 0 ? ic->log_level : default_level;
    ins->ctx = calloc(1, so->desc.ctx_size ? so->desc.ctx_size : 1);
    atomic_init(&ins->refs, 1);
    instance_metrics(ins);
    return ins;
}

static void instance_free(struct kfg_instance *ins)
{
    for (size_t i = 0; i < ins->nroutes; i++) {
        free(ins->routes[i].method);
        free(ins->routes[i].path);
    }
    free(ins->routes);
    kfg_icfg_free(ins->cfg);
    free(ins->ctx);
    kfg_so_unref(ins->so);
    free(ins->name);
    free(ins->tenant);
    free(ins);
}

static void instance_destroy(struct kfg_instance *ins)
{
    if (ins->state >= KFG_INS_READY && ins->plugin->destroy)
        ins->plugin->destroy(ins->ctx);
    ins->state = KFG_INS_DEAD;
    kfg_log(KFG_LOG_INFO, ins->name, NULL, "instance destroyed");
    instance_free(ins);
}

static void instance_stop(struct kfg_instance *ins)
{
    if (ins->state != KFG_INS_RUNNING && ins->state != KFG_INS_READY) {
        ins->plugin_stopped = 1;
        ins->state = KFG_INS_STOPPING;
        return;
    }
    int was_running = ins->state == KFG_INS_RUNNING;
    ins->state = KFG_INS_STOPPING;
    int r = was_running && ins->plugin->stop ? ins->plugin->stop(ins->ctx) : KFG_OK;
    ins->plugin_stopped = r != KFG_AGAIN;
}

void kfg_instance_stopped(struct kfg_instance *ins)
{
    ins->plugin_stopped = 1;
}

/* Removed instances wait here until nothing references them. */
static void drain_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kfg_gateway *gw = arg;
    uint64_t now = (uint64_t)time(NULL) * 1000;
    struct kfg_instance **pp = &gw->draining;
    while (*pp) {
        struct kfg_instance *ins = *pp;
        int refs = atomic_load(&ins->refs);
        if (ins->plugin_stopped && refs == 1) {
            *pp = ins->next;
            instance_destroy(ins);
            continue;
        }
        if (ins->stop_deadline_ms && now >= ins->stop_deadline_ms) {
            /* Destroying now would free state the plugin's pending work
             * still uses; report the stuck instance and keep waiting. */
            kfg_log(KFG_LOG_WARN, ins->name, NULL,
                    "drain timeout: %d request(s)/operation(s) still in flight%s; "
                    "the instance is destroyed when they finish", refs - 1,
                    ins->plugin_stopped ? "" : ", plugin has not reported stopped");
            ins->stop_deadline_ms = 0;
        }
        pp = &ins->next;
    }
    if (!gw->draining)
        event_del(gw->drain_timer);
}

static void drain_instance(struct kfg_gateway *gw, struct kfg_instance *ins)
{
    instance_stop(ins);
    ins->stop_deadline_ms = (uint64_t)time(NULL) * 1000 + gw->cfg->drain_timeout_ms;
    ins->next = gw->draining;
    gw->draining = ins;
    if (!gw->drain_timer)
        gw->drain_timer = event_new(kfg_loop_base(gw->control), -1, EV_PERSIST, drain_tick, gw);
    struct timeval tv = { 0, 20000 };
    event_add(gw->drain_timer, &tv);
}

/* ------------------------------------------------------------------------ */
/* Filter chain snapshots */

static __thread struct kfg_chain *tl_chain;

static void chain_unref(struct kfg_chain *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    for (size_t i = 0; i < c->n; i++)
        kfg_instance_unref(c->v[i]);
    free(c);
}

const struct kfg_chain *kfg_chain_current(void)
{
    struct kfg_gateway *gw = kfg_gw;
    if (atomic_load_explicit(&gw->chain, memory_order_acquire) == tl_chain)
        return tl_chain;
    pthread_mutex_lock(&gw->chain_mu);
    struct kfg_chain *n = atomic_load(&gw->chain);
    if (n)
        atomic_fetch_add(&n->refs, 1);
    pthread_mutex_unlock(&gw->chain_mu);
    chain_unref(tl_chain);
    tl_chain = n;
    return n;
}

static void chain_refresh(void *arg)
{
    (void)arg;
    kfg_chain_current();
}

static void chain_release_local(void *arg)
{
    (void)arg;
    chain_unref(tl_chain);
    tl_chain = NULL;
}

static void chain_publish(struct kfg_gateway *gw, struct kfg_chain *c)
{
    pthread_mutex_lock(&gw->chain_mu);
    struct kfg_chain *old = atomic_load(&gw->chain);
    atomic_store_explicit(&gw->chain, c, memory_order_release);
    pthread_mutex_unlock(&gw->chain_mu);
    chain_unref(old);
    chain_refresh(NULL);
    for (size_t i = 0; i < gw->nworkers; i++)
        kfg_loop_post(gw->workers[i], chain_refresh, NULL);
}

/* ------------------------------------------------------------------------ */
/* Generations */

struct resolved {
    struct kfg_so *so;
    struct kfg_icfg *icfg;
};

static void plugin_names(const struct kfg_plugin_set *set, const char **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < set->n && n + 1 < cap; i++)
        out[n++] = set->v[i]->desc.name;
    out[n] = NULL;
}

/* Binds every instance of cfg to a plugin of set and resolves its keys. */
static struct resolved *resolve_all(const struct kfg_config *cfg,
                                    const struct kfg_plugin_set *set, struct kfg_buf *errs)
{
    struct resolved *res = calloc(cfg->ninstances + 1, sizeof(*res));
    if (!res)
        return NULL;
    const char *names[128];
    plugin_names(set, names, 128);
    size_t before = errs->len;
    for (size_t i = 0; i < cfg->ninstances; i++) {
        const struct kfg_instance_cfg *ic = &cfg->instances[i];
        const char *what = ic->kind == KFG_KIND_ADAPTER ? "adapter" : "filter";
        struct kfg_so *so = kfg_plugin_set_find(set, ic->type);
        if (!so) {
            const struct kfg_refused *rf = kfg_plugin_set_refused_for(set, ic->type);
            const char *near = kfg_nearest(ic->type, names);
            kfg_buf_printf(errs, "%s:%u:%u: %s '%s': no plugin of type '%s' in plugin_dir '%s'",
                           cfg->path, ic->pos.line, ic->pos.col, what, ic->name, ic->type,
                           cfg->plugin_dir);
            if (rf)
                kfg_buf_printf(errs, " (%s was refused: %s)", rf->path, rf->reason);
            else if (near)
                kfg_buf_printf(errs, " (did you mean '%s'?)", near);
            kfg_buf_putc(errs, '\n');
            continue;
        }
        if ((int)so->desc.kind != ic->kind) {
            kfg_buf_printf(errs, "%s:%u:%u: %s '%s': plugin '%s' is a%s, configure it as [[%s]]\n",
                           cfg->path, ic->pos.line, ic->pos.col, what, ic->name, ic->type,
                           so->desc.kind == KFG_KIND_ADAPTER ? "n adapter" : " filter",
                           so->desc.kind == KFG_KIND_ADAPTER ? "adapter" : "filter");
            continue;
        }
        res[i].so = so;
        res[i].icfg = kfg_icfg_resolve(cfg, ic, so->desc.config, errs);
    }
    if (errs->len != before) {
        for (size_t i = 0; i < cfg->ninstances; i++)
            kfg_icfg_free(res[i].icfg);
        free(res);
        return NULL;
    }
    return res;
}

int kfg_gateway_check(struct kfg_config *cfg, struct kfg_buf *errs)
{
    struct kfg_plugin_set set;
    if (kfg_loader_scan(cfg->plugin_dir, NULL, &set) < 0) {
        kfg_buf_printf(errs, "%s: plugin_dir '%s' cannot be read: %s\n", cfg->path,
                       cfg->plugin_dir, strerror(errno));
        return -1;
    }
    struct resolved *res = resolve_all(cfg, &set, errs);
    int rc = res ? 0 : -1;
    if (res) {
        for (size_t i = 0; i < cfg->ninstances; i++)
            kfg_icfg_free(res[i].icfg);
        free(res);
    }
    kfg_plugin_set_release(&set);
    return rc;
}

static int routes_replay(struct kfg_routes *r, struct kfg_instance *ins)
{
    for (size_t i = 0; i < ins->nroutes; i++) {
        const struct kfg_ins_route *rt = &ins->routes[i];
        if (kfg_routes_add(r, rt->method, rt->path, rt->flags, rt->fn, ins->ctx, ins) != KFG_OK)
            return -1;
    }
    return 0;
}

static struct kfg_instance *find_live(struct kfg_gateway *gw, const char *name)
{
    for (struct kfg_instance *i = gw->live; i; i = i->next)
        if (strcmp(i->name, name) == 0)
            return i;
    return NULL;
}

int kfg_gateway_apply(struct kfg_gateway *gw, struct kfg_config *cfg, struct kfg_buf *errs)
{
    size_t before = errs->len;
    struct kfg_plugin_set set;
    if (kfg_loader_scan(cfg->plugin_dir, &gw->plugins, &set) < 0) {
        kfg_buf_printf(errs, "%s: plugin_dir '%s' cannot be read\n", cfg->path, cfg->plugin_dir);
        return -1;
    }
    struct resolved *res = resolve_all(cfg, &set, errs);
    if (!res) {
        kfg_plugin_set_release(&set);
        return -1;
    }

    /* Decide, per instance, keep or create. */
    size_t n = cfg->ninstances;
    struct kfg_instance **gen = calloc(n + 1, sizeof(*gen));
    int *fresh = calloc(n + 1, sizeof(*fresh));
    gw->building = kfg_routes_new();
    for (struct kfg_instance *i = gw->live; i; i = i->next)
        i->kept = 0;
    for (size_t i = 0; i < n; i++) {
        const struct kfg_instance_cfg *ic = &cfg->instances[i];
        struct kfg_instance *old = find_live(gw, ic->name);
        int level = ic->log_level >= 0 ? ic->log_level : cfg->log_level;
        if (old && old->so == res[i].so && kfg_icfg_equal(old->cfg, res[i].icfg) &&
            (old->kind != KFG_KIND_ADAPTER || strcmp(old->tenant, ic->tenant) == 0)) {
            old->kept = 1;
            old->log_level = level;     /* safe to change in place */
            gen[i] = old;
            kfg_icfg_free(res[i].icfg);
            res[i].icfg = NULL;
            if (routes_replay(gw->building, old) < 0)
                kfg_buf_printf(errs, "instance '%s': its routes conflict\n", old->name);
            continue;
        }
        gen[i] = instance_new(res[i].so, ic, res[i].icfg, cfg->log_level);
        res[i].icfg = NULL;
        fresh[i] = 1;
        if (!gen[i])
            kfg_buf_printf(errs, "instance '%s': out of memory\n", ic->name);
    }
    /* init, then start; routes land in gw->building. */
    const struct kfg_host *host = kfg_host_table();
    for (size_t i = 0; i < n && errs->len == before; i++) {
        struct kfg_instance *ins = gen[i];
        if (!fresh[i])
            continue;
        int r = ins->plugin->init(ins, host, ins->ctx);
        if (r != KFG_OK) {
            kfg_buf_printf(errs, "%s:%u:%u: instance '%s' (%s): init failed (%d); see the log\n",
                           cfg->path, cfg->instances[i].pos.line, cfg->instances[i].pos.col,
                           ins->name, ins->plugin->name, r);
            break;
        }
        ins->state = KFG_INS_READY;
    }
    for (size_t i = 0; i < n && errs->len == before; i++) {
        struct kfg_instance *ins = gen[i];
        if (!fresh[i])
            continue;
        int r = ins->plugin->start ? ins->plugin->start(ins->ctx) : KFG_OK;
        if (r != KFG_OK) {
            kfg_buf_printf(errs, "%s:%u:%u: instance '%s' (%s): start failed (%d); see the log\n",
                           cfg->path, cfg->instances[i].pos.line, cfg->instances[i].pos.col,
                           ins->name, ins->plugin->name, r);
            break;
        }
        ins->state = KFG_INS_RUNNING;
    }
    struct kfg_routes *routes = gw->building;
    gw->building = NULL;

    if (errs->len != before) {
        /* Roll back: the new instances never saw traffic. */
        for (size_t i = 0; i < n; i++) {
            if (!fresh[i] || !gen[i])
                continue;
            if (gen[i]->state == KFG_INS_RUNNING && gen[i]->plugin->stop)
                gen[i]->plugin->stop(gen[i]->ctx);
            instance_destroy(gen[i]);
        }
        kfg_routes_free(routes);
        free(gen);
        free(fresh);
        free(res);
        kfg_plugin_set_release(&set);
        return -1;
    }

    /* Commit. */
    struct kfg_chain *chain = calloc(1, sizeof(*chain) + (n + 1) * sizeof(struct kfg_instance *));
    atomic_init(&chain->refs, 1);
    for (size_t i = 0; i < n; i++) {
        if (gen[i]->kind == KFG_KIND_FILTER) {
            kfg_instance_ref(gen[i]);
            chain->v[chain->n++] = gen[i];
        }
    }
    kfg_http_server_publish(gw->front, routes, &cfg->http);
    chain_publish(gw, chain);

    struct kfg_instance *old = gw->live;
    gw->live = NULL;
    while (old) {
        struct kfg_instance *next = old->next;
        if (!old->kept) {
            kfg_log(KFG_LOG_INFO, old->name, NULL, "instance stopping (removed or changed)");
            drain_instance(gw, old);
        }
        old = next;
    }
    for (size_t i = n; i-- > 0;) {
        gen[i]->next = gw->live;
        gw->live = gen[i];
        if (fresh[i])
            kfg_log(KFG_LOG_INFO, gen[i]->name, NULL, "instance started: %s %s (generation %u)",
                    gen[i]->plugin->name, gen[i]->plugin->version ? gen[i]->plugin->version : "",
                    gen[i]->so->generation);
    }
    kfg_plugin_set_release(&gw->plugins);
    gw->plugins = set;
    if (gw->cfg != cfg)
        kfg_config_free(gw->cfg);
    gw->cfg = cfg;
    kfg_log_setup(cfg->log_format, cfg->log_level, 2);
    kfg_metric_set(gw->m_instances, (int64_t)n);
    gw->generation++;
    free(gen);
    free(fresh);
    free(res);
    return 0;
}

int kfg_gateway_reload(struct kfg_gateway *gw, struct kfg_buf *errs)
{
    if (gw->shutting_down) {
        kfg_buf_puts(errs, "shutting down\n");
        return -1;
    }
    struct kfg_config *cfg;
    if (kfg_config_load(gw->cfg->path, &cfg, errs) < 0) {
        kfg_metric_add(gw->m_reloads_failed, 1);
        kfg_log(KFG_LOG_ERROR, NULL, NULL, "reload refused, nothing changed: %s",
                kfg_buf_cstr(errs));
        return -1;
    }
    if (strcmp(cfg->http_listen, gw->cfg->http_listen) ||
        strcmp(cfg->admin_listen, gw->cfg->admin_listen) || cfg->workers != gw->cfg->workers)
        kfg_log(KFG_LOG_WARN, NULL, NULL,
                "reload: listen addresses and workers take effect at the next restart");
    if (kfg_gateway_apply(gw, cfg, errs) < 0) {
        /* Counted here, not in apply: apply also fails before its rollback
         * (unknown plugin type, bad instance keys). */
        kfg_metric_add(gw->m_reloads_failed, 1);
        kfg_config_free(cfg);
        kfg_log(KFG_LOG_ERROR, NULL, NULL, "reload refused, nothing changed: %s",
                kfg_buf_cstr(errs));
        return -1;
    }
    kfg_metric_add(gw->m_reloads_ok, 1);
    kfg_log(KFG_LOG_INFO, NULL, NULL, "reload done (generation %u)", gw->generation);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Shutdown: stop accepting, let requests finish, stop instances, exit. */

static void finish_shutdown(struct kfg_gateway *gw, int forced)
{
    if (forced)
        kfg_log(KFG_LOG_WARN, NULL, NULL,
                "drain timeout reached with %u connection(s) open; exiting",
                kfg_http_server_connections(gw->front));
    for (size_t i = 0; i < gw->nworkers; i++) {
        kfg_loop_post(gw->workers[i], chain_release_local, NULL);
        kfg_loop_stop(gw->workers[i]);
    }
    event_base_loopexit(kfg_loop_base(gw->control), NULL);
}

static void shutdown_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct kfg_gateway *gw = arg;
    drain_tick(-1, 0, gw);
    if (!gw->draining) {
        event_del(gw->shutdown_tick);
        event_del(gw->shutdown_timer);
        finish_shutdown(gw, 0);
    }
}

static void front_drained(void *arg)
{
    struct kfg_gateway *gw = arg;
    /* No request is left; stop every instance and wait for their work. */
    struct kfg_instance *i = gw->live;
    gw->live = NULL;
    while (i) {
        struct kfg_instance *next = i->next;
        drain_instance(gw, i);
        i = next;
    }
    struct kfg_chain *none = NULL;
    chain_publish(gw, none);
    kfg_http_server_publish(gw->front, kfg_routes_new(), &gw->cfg->http);
    struct timeval tv = { 0, 20000 };
    gw->shutdown_tick = event_new(kfg_loop_base(gw->control), -1, EV_PERSIST, shutdown_tick, gw);
    event_add(gw->shutdown_tick, &tv);
}

static void shutdown_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    finish_shutdown(arg, 1);
}

void kfg_gateway_shutdown(struct kfg_gateway *gw)
{
    if (gw->shutting_down)
        return;
    gw->shutting_down = 1;
    kfg_log(KFG_LOG_INFO, NULL, NULL, "shutting down: draining for up to %u ms",
            gw->cfg->drain_timeout_ms);
    struct timeval tv = { gw->cfg->drain_timeout_ms / 1000,
                          (gw->cfg->drain_timeout_ms % 1000) * 1000 };
    gw->shutdown_timer = evtimer_new(kfg_loop_base(gw->control), shutdown_deadline, gw);
    event_add(gw->shutdown_timer, &tv);
    if (gw->admin)
        kfg_http_server_drain(gw->admin, NULL, NULL);
    kfg_http_server_drain(gw->front, front_drained, gw);
}

void kfg_gateway_free(struct kfg_gateway *gw)
{
    chain_release_local(NULL);
    struct kfg_chain *c = atomic_load(&gw->chain);
    atomic_store(&gw->chain, NULL);
    chain_unref(c);
    while (gw->draining) {
        struct kfg_instance *ins = gw->draining;
        gw->draining = ins->next;
        if (atomic_load(&ins->refs) == 1 && ins->plugin_stopped)
            instance_destroy(ins);
    }
    if (gw->drain_timer)
        event_free(gw->drain_timer);
    if (gw->shutdown_timer)
        event_free(gw->shutdown_timer);
    if (gw->shutdown_tick)
        event_free(gw->shutdown_tick);
}
