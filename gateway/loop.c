#include "loop.h"

#include <errno.h>
#include <event2/event.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "httpc.h"
#include "log.h"

struct post {
    struct post *next;
    kfg_post_fn fn;
    void *arg;
};

struct kfg_loop {
    struct event_base *base;
    unsigned id;
    pthread_t thread;
    int spawned;

    /* Cross-thread queue; the eventfd wakes the loop when it goes from
     * empty to non-empty, so a burst of posts costs one write. */
    pthread_mutex_t mu;
    struct post *head, *tail;
    int stopped;
    int efd;
    struct event *wake;

    struct kfg_httpc *httpc;
    void *http_state;

    /* kfg_loop_at_pass_end: a fixed set of hooks, run once after the
     * callbacks the current pass already activated. Loop thread only. */
    struct event *pass_end;
    struct { kfg_post_fn fn; void *arg; } hooks[KFG_LOOP_PASS_HOOKS];
    unsigned nhooks;
};

static __thread struct kfg_loop *current;

static void drain_posts(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct kfg_loop *loop = arg;
    uint64_t n;
    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        kfg_warn("loop %u: eventfd read: %s", loop->id, strerror(errno));
    pthread_mutex_lock(&loop->mu);
    struct post *p = loop->head;
    loop->head = loop->tail = NULL;
    int stop = loop->stopped;
    pthread_mutex_unlock(&loop->mu);
    while (p) {
        struct post *next = p->next;
        p->fn(p->arg);
        free(p);
        p = next;
    }
    if (stop)
        event_base_loopexit(loop->base, NULL);
}

static void run_pass_end(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    struct kfg_loop *loop = arg;
    /* A hook may register again; that one runs in a later pass. */
    unsigned n = loop->nhooks;
    loop->nhooks = 0;
    for (unsigned i = 0; i < n; i++)
        loop->hooks[i].fn(loop->hooks[i].arg);
}

int kfg_loop_at_pass_end(struct kfg_loop *loop, kfg_post_fn fn, void *arg)
{
    for (unsigned i = 0; i < loop->nhooks; i++)
        if (loop->hooks[i].fn == fn && loop->hooks[i].arg == arg)
            return 0;
    if (loop->nhooks == KFG_LOOP_PASS_HOOKS)
        return -1;
    if (!loop->pass_end &&
        !(loop->pass_end = event_new(loop->base, -1, 0, run_pass_end, loop)))
        return -1;
    loop->hooks[loop->nhooks].fn = fn;
    loop->hooks[loop->nhooks].arg = arg;
    if (loop->nhooks++ == 0)
        event_active(loop->pass_end, 0, 0);
    return 0;
}

struct kfg_loop *kfg_loop_new(unsigned id)
{
    struct kfg_loop *loop = calloc(1, sizeof(*loop));
    if (!loop)
        return NULL;
    loop->id = id;
    loop->efd = -1;
    pthread_mutex_init(&loop->mu, NULL);
    struct event_config *cfg = event_config_new();
    if (!cfg)
        goto fail;
    /* Each base is used by its own thread only: no libevent locking. */
    event_config_set_flag(cfg, EVENT_BASE_FLAG_NOLOCK);
    loop->base = event_base_new_with_config(cfg);
    event_config_free(cfg);
    if (!loop->base)
        goto fail;
    loop->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (loop->efd < 0)
        goto fail;
    loop->wake = event_new(loop->base, loop->efd, EV_READ | EV_PERSIST,
                           drain_posts, loop);
    if (!loop->wake || event_add(loop->wake, NULL) < 0)
        goto fail;
    return loop;
fail:
    kfg_loop_free(loop);
    return NULL;
}

void kfg_loop_free(struct kfg_loop *loop)
{
    if (!loop)
        return;
    if (loop->httpc)
        kfg_httpc_free(loop->httpc);
    struct post *p = loop->head;
    while (p) {
        struct post *next = p->next;
        free(p);
        p = next;
    }
    if (loop->wake)
        event_free(loop->wake);
    if (loop->pass_end)
        event_free(loop->pass_end);
    if (loop->efd >= 0)
        close(loop->efd);
    if (loop->base)
        event_base_free(loop->base);
    pthread_mutex_destroy(&loop->mu);
    free(loop);
}

unsigned kfg_loop_id(const struct kfg_loop *loop)
{
    return loop->id;
}

struct event_base *kfg_loop_base(struct kfg_loop *loop)
{
    return loop->base;
}

struct kfg_loop *kfg_loop_current(void)
{
    return current;
}

void kfg_loop_enter(struct kfg_loop *loop)
{
    current = loop;
}

void kfg_loop_run(struct kfg_loop *loop)
{
    current = loop;
    event_base_dispatch(loop->base);
}

static void *thread_main(void *arg)
{
    kfg_loop_run(arg);
    return NULL;
}

int kfg_loop_spawn(struct kfg_loop *loop)
{
    if (pthread_create(&loop->thread, NULL, thread_main, loop) != 0)
        return -1;
    loop->spawned = 1;
    return 0;
}

void kfg_loop_join(struct kfg_loop *loop)
{
    if (loop->spawned) {
        pthread_join(loop->thread, NULL);
        loop->spawned = 0;
    }
}

static void wake(struct kfg_loop *loop)
{
    uint64_t one = 1;
    ssize_t n;
    do {
        n = write(loop->efd, &one, sizeof(one));
    } while (n < 0 && errno == EINTR);
}

void kfg_loop_stop(struct kfg_loop *loop)
{
    pthread_mutex_lock(&loop->mu);
    loop->stopped = 1;
    pthread_mutex_unlock(&loop->mu);
    wake(loop);
}

int kfg_loop_post(struct kfg_loop *loop, kfg_post_fn fn, void *arg)
{
    struct post *p = malloc(sizeof(*p));
    if (!p)
        return -1;
    p->next = NULL;
    p->fn = fn;
    p->arg = arg;
    pthread_mutex_lock(&loop->mu);
    if (loop->stopped) {
        pthread_mutex_unlock(&loop->mu);
        free(p);
        return -1;
    }
    int was_empty = loop->head == NULL;
    if (loop->tail)
        loop->tail->next = p;
    else
        loop->head = p;
    loop->tail = p;
    pthread_mutex_unlock(&loop->mu);
    if (was_empty)
        wake(loop);
    return 0;
}

struct kfg_httpc *kfg_loop_httpc(struct kfg_loop *loop)
{
    if (!loop->httpc) {
        struct kfg_httpc_limits lim = {
            .default_timeout_ms = 10000,
            .connect_timeout_ms = 3000,
            .max_response_bytes = 4u << 20,
            .max_inflight = 10000,
        };
        loop->httpc = kfg_httpc_new(loop->base, &lim);
    }
    return loop->httpc;
}

void *kfg_loop_http_state(struct kfg_loop *loop)
{
    return loop->http_state;
}

void kfg_loop_set_http_state(struct kfg_loop *loop, void *state)
{
    loop->http_state = state;
}
