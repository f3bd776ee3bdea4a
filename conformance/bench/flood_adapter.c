/* flood: a bench-only channel adapter that emits `count` text messages as
 * fast as the bus accepts them (or at `rate` per second), at most `window`
 * in flight, so `make bench` measures the bus (filters, journal, feed) and
 * not an HTTP client. Each text starts with "T0=<CLOCK_MONOTONIC ns>;" so a
 * subscriber on the same machine can compute the end-to-end latency.
 * Built from <kfgate/plugin.h> alone, like any third-party plugin. */
#include <kfgate/plugin.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

static const struct kfg_config_key flood_config[] = {
    {"count", KFG_CFG_INT, 0, "1000000", "messages to emit in all"},
    {"rate", KFG_CFG_INT, 0, "0", "messages per second, 0 = as fast as accepted"},
    {"window", KFG_CFG_INT, 0, "4096", "most emits waiting for their commit"},
    {"text_bytes", KFG_CFG_INT, 0, "120", "length of each text part"},
    {"start_delay_ms", KFG_CFG_INT, 0, "1000", "wait before the first emit"},
    {NULL, 0, 0, NULL, NULL},
};

struct flood {
    struct kfg_instance *ins;
    const struct kfg_host *h;
    struct kfg_timer *tick, *delay_timer;
    int64_t count, rate, window, text_bytes, delay;
    int64_t sent, done, inflight, busy, failed;
    uint64_t t_start;
    char text[4096];
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void on_done(void *arg, int result, uint64_t seq, const char *reason)
{
    struct flood *f = arg;
    (void)seq, (void)reason;
    f->inflight--;
    f->done++;
    if (result != KFG_OK)
        f->failed++;
    if (f->done == f->count)
        f->h->log(f->ins, NULL, KFG_LOG_INFO, "flood done: %lld emitted, %lld failed, %lld busy",
                  (long long)f->done, (long long)f->failed, (long long)f->busy);
}

static void tick(void *arg)
{
    struct flood *f = arg;
    const struct kfg_host *h = f->h;
    uint64_t now = mono_ns();
    if (!f->t_start)
        f->t_start = now;
    int64_t due = f->count;
    if (f->rate > 0) {
        due = (int64_t)((now - f->t_start) / 1000000u) * f->rate / 1000 + 1;
        if (due > f->count)
            due = f->count;
    }
    /* Bounded per tick so the loop keeps turning (completions run on it). */
    for (int burst = 0; burst < 2048 && f->sent < due && f->inflight < f->window; burst++) {
        struct kfg_msg *m = h->msg_new(f->ins, "message");
        if (!m)
            return;
        char conv[32];
        int cl = snprintf(conv, sizeof conv, "c%lld", (long long)(f->sent % 64));
        h->msg_set(m, "conversation.id", conv, (size_t)cl);
        h->msg_set(m, "sender.id", "bench-user", 10);
        int n = snprintf(f->text, sizeof f->text, "T0=%llu;", (unsigned long long)mono_ns());
        size_t len = (size_t)f->text_bytes > (size_t)n ? (size_t)f->text_bytes : (size_t)n;
        int p = h->msg_part_add(m, "text");
        h->msg_part_set(m, (size_t)p, "text", f->text, len);
        int r = h->emit(f->ins, m, on_done, f);
        if (r != KFG_OK) {
            h->msg_free(m);
            f->busy++;
            return;     /* over a limit: try again next tick */
        }
        f->sent++;
        f->inflight++;
    }
}

static int flood_init(struct kfg_instance *ins, const struct kfg_host *h, void *ctx)
{
    struct flood *f = ctx;
    f->ins = ins;
    f->h = h;
    f->count = h->config_int(ins, "count");
    f->rate = h->config_int(ins, "rate");
    f->window = h->config_int(ins, "window");
    f->text_bytes = h->config_int(ins, "text_bytes");
    f->delay = h->config_int(ins, "start_delay_ms");
    if (f->text_bytes < 24 || f->text_bytes >= (int64_t)sizeof f->text || f->window < 1) {
        h->log(ins, NULL, KFG_LOG_ERROR, "text_bytes must be 24..4095 and window >= 1");
        return KFG_EINVAL;
    }
    memset(f->text, 'x', sizeof f->text);
    return KFG_OK;
}

static void start_ticking(void *arg)
{
    struct flood *f = arg;
    f->tick = f->h->timer_start(f->ins, 1, 1, tick, f);
}

static int flood_start(void *ctx)
{
    struct flood *f = ctx;
    f->delay_timer = f->h->timer_start(f->ins, (uint64_t)f->delay, 0, start_ticking, f);
    return f->delay_timer ? KFG_OK : KFG_ENOMEM;
}

static int flood_stop(void *ctx)
{
    struct flood *f = ctx;
    if (f->tick)
        f->h->timer_free(f->tick);
    f->tick = NULL;
    return KFG_OK;
}

static void flood_destroy(void *ctx)
{
    struct flood *f = ctx;
    if (f->delay_timer)
        f->h->timer_free(f->delay_timer);
    f->delay_timer = NULL;
}

static int flood_deliver(void *ctx, const struct kfg_msg *m, struct kfg_delivery *d)
{
    struct flood *f = ctx;
    (void)m;
    f->h->delivered(d, KFG_OK, NULL, NULL);
    return KFG_OK;
}

KFG_PLUGIN_EXPORT = {
    KFG_PLUGIN_HEADER,
    .kind = KFG_KIND_ADAPTER,
    .name = "flood",
    .version = "1.0.0",
    .description = "bench load generator: emits messages as fast as the bus takes them",
    .config = flood_config,
    .ctx_size = sizeof(struct flood),
    .init = flood_init,
    .start = flood_start,
    .stop = flood_stop,
    .destroy = flood_destroy,
    .deliver = flood_deliver,
};
