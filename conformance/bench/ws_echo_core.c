/*
 * ws_echo_core: the echo core of the WebSocket bench, pipelined. It answers
 * like build/kfgate-echo (every inbound text message gets an outbound
 * "echo: <text>" on the same instance and conversation, reply_to = the
 * inbound id, idem "echo:<id>"), but keeps up to SLOTS outbound requests in
 * flight on NNG REQ contexts instead of one at a time, and builds the reply in
 * msgpack directly instead of through JSON: kfgate-echo is an example, this
 * one must not be what limits the gateway's measured rate.
 *
 *   ws_echo_core FEED_URL REPLAY_URL OUTBOUND_URL [SLOTS]
 * Prints "answered=N failed=M" on SIGTERM.
 */
#define _GNU_SOURCE
#include <kfgate/bus.h>
#include <kfgate/envelope.h>

#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../../gateway/tools/tool_exit.h"

#define MAX_SLOTS 256

struct slot {
    nng_ctx ctx;
    nng_aio *aio;
    int sending;            /* 1: the send is in progress, 0: the receive */
    struct slot *next_free;
};

static struct slot slots[MAX_SLOTS];
static struct slot *free_list;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static unsigned long answered, failed;
static volatile sig_atomic_t stop;

static void on_signal(int s)
{
    (void)s;
    stop = 1;
}

static void release(struct slot *s, int ok)
{
    pthread_mutex_lock(&mu);
    if (ok)
        answered++;
    else
        failed++;
    s->next_free = free_list;
    free_list = s;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

static void on_aio(void *arg)
{
    struct slot *s = arg;
    int rv = nng_aio_result(s->aio);
    if (s->sending) {
        if (rv != 0) {
            nng_msg_free(nng_aio_get_msg(s->aio));
            release(s, 0);
            return;
        }
        s->sending = 0;
        nng_ctx_recv(s->ctx, s->aio);
        return;
    }
    int ok = 0;
    if (rv == 0) {
        nng_msg *m = nng_aio_get_msg(s->aio);
        struct kfg_bus_ack a;
        ok = kfg_bus_decode_ack(nng_msg_body(m), nng_msg_len(m), &a) == 0 && a.ok;
        nng_msg_free(m);
    }
    release(s, ok);
}

static const msgpack_object *get(const msgpack_object *map, const char *key)
{
    if (map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t kl = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object_kv *kv = &map->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == kl &&
            memcmp(kv->key.via.str.ptr, key, kl) == 0)
            return &kv->val;
    }
    return NULL;
}

static int is_str(const msgpack_object *o, const char *want)
{
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(want) &&
           memcmp(o->via.str.ptr, want, o->via.str.size) == 0;
}

static void pack_str(msgpack_packer *pk, const char *p, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, p, n);
}

static void pack_key(msgpack_packer *pk, const char *k)
{
    pack_str(pk, k, strlen(k));
}

/* The reply to env in sb, or 0 when env is not an inbound text message. */
static int reply_for(const void *env, size_t len, msgpack_zone *z, msgpack_sbuffer *sb)
{
    msgpack_object root;
    size_t off = 0;
    msgpack_zone_clear(z);
    if (msgpack_unpack((const char *)env, len, &off, z, &root) != MSGPACK_UNPACK_SUCCESS)
        return 0;
    const msgpack_object *parts = get(&root, KFG_ENV_PARTS), *id = get(&root, KFG_ENV_ID);
    if (!is_str(get(&root, KFG_ENV_DIR), KFG_ENV_DIR_IN) ||
        !is_str(get(&root, KFG_ENV_TYPE), KFG_ENV_TYPE_MESSAGE) || !id ||
        id->type != MSGPACK_OBJECT_STR || !parts || parts->type != MSGPACK_OBJECT_ARRAY)
        return 0;
    const msgpack_object *text = NULL;
    for (uint32_t i = 0; i < parts->via.array.size && !text; i++) {
        const msgpack_object *p = &parts->via.array.ptr[i];
        const msgpack_object *t = get(p, KFG_ENV_P_TEXT);
        if (is_str(get(p, KFG_ENV_P_KIND), KFG_ENV_KIND_TEXT) && t && t->type == MSGPACK_OBJECT_STR)
            text = t;
    }
    if (!text)
        return 0;
    static const char *const same[] = { KFG_ENV_TENANT, KFG_ENV_CHANNEL, KFG_ENV_INSTANCE,
                                        KFG_ENV_CONVERSATION };
    const msgpack_object *sv[4];
    uint32_t n = 6;
    for (int i = 0; i < 4; i++)
        n += (sv[i] = get(&root, same[i])) != NULL;
    msgpack_sbuffer_clear(sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, n);
    pack_key(&pk, KFG_ENV_V);
    msgpack_pack_uint32(&pk, KFG_ENV_VERSION);
    pack_key(&pk, KFG_ENV_TYPE);
    pack_key(&pk, KFG_ENV_TYPE_MESSAGE);
    pack_key(&pk, KFG_ENV_DIR);
    pack_key(&pk, KFG_ENV_DIR_OUT);
    for (int i = 0; i < 4; i++)
        if (sv[i]) {
            pack_key(&pk, same[i]);
            msgpack_pack_object(&pk, *sv[i]);
        }
    pack_key(&pk, KFG_ENV_REPLY_TO);
    msgpack_pack_object(&pk, *id);
    pack_key(&pk, KFG_ENV_IDEM);
    msgpack_pack_str(&pk, 5 + id->via.str.size);
    msgpack_pack_str_body(&pk, "echo:", 5);
    msgpack_pack_str_body(&pk, id->via.str.ptr, id->via.str.size);
    pack_key(&pk, KFG_ENV_PARTS);
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 2);
    pack_key(&pk, KFG_ENV_P_KIND);
    pack_key(&pk, KFG_ENV_KIND_TEXT);
    pack_key(&pk, KFG_ENV_P_TEXT);
    msgpack_pack_str(&pk, 6 + text->via.str.size);
    msgpack_pack_str_body(&pk, "echo: ", 6);
    msgpack_pack_str_body(&pk, text->via.str.ptr, text->via.str.size);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: ws_echo_core FEED REPLAY OUTBOUND [SLOTS]\n");
        return 2;
    }
    int nslots = argc > 4 ? atoi(argv[4]) : 128;
    if (nslots < 1 || nslots > MAX_SLOTS)
        nslots = 128;
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    nng_socket req;
    if (nng_req0_open(&req) != 0 || nng_setopt_ms(req, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE) != 0 ||
        nng_dial(req, argv[3], NULL, NNG_FLAG_NONBLOCK) != 0) {
        fprintf(stderr, "ws_echo_core: cannot dial %s\n", argv[3]);
        return 1;
    }
    for (int i = 0; i < nslots; i++) {
        if (nng_ctx_open(&slots[i].ctx, req) != 0 || nng_aio_alloc(&slots[i].aio, on_aio, &slots[i]) != 0)
            return 1;
        nng_aio_set_timeout(slots[i].aio, 5000);
        slots[i].next_free = free_list;
        free_list = &slots[i];
    }
    struct kfg_bus_opts o = { .feed_url = argv[1], .replay_url = argv[2] };
    struct kfg_bus *b;
    struct kfg_bus_sub *sub;
    if (kfg_bus_open(&b, &o) != 0 || kfg_bus_sub(b, "", KFG_BUS_LIVE, &sub) != 0) {
        fprintf(stderr, "ws_echo_core: cannot subscribe\n");
        return 1;
    }
    msgpack_zone z;
    msgpack_zone_init(&z, 4096);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    while (!stop) {
        struct kfg_bus_rec r;
        if (kfg_bus_next(sub, &r, 200) != 0 || r.kind != KFG_BUS_RECORD)
            continue;
        if (!reply_for(r.env, r.env_len, &z, &sb))
            continue;
        pthread_mutex_lock(&mu);
        while (!free_list && !stop) {
            struct timespec ts;       /* timed: SIGTERM must not wait for a slot */
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100000000;
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&cv, &mu, &ts);
        }
        struct slot *s = free_list;
        if (s)
            free_list = s->next_free;
        pthread_mutex_unlock(&mu);
        if (!s)
            break;
        nng_msg *m;
        if (nng_msg_alloc(&m, 0) != 0 || nng_msg_append(m, sb.data, sb.size) != 0) {
            release(s, 0);
            continue;
        }
        s->sending = 1;
        nng_aio_set_msg(s->aio, m);
        nng_ctx_send(s->ctx, s->aio);
    }
    for (int i = 0; i < nslots; i++)
        nng_aio_stop(slots[i].aio);
    printf("answered=%lu failed=%lu\n", answered, failed);
    tool_exit_guard(0);
    kfg_bus_sub_free(sub);
    kfg_bus_close(b);
    nng_close(req);
    return 0;
}
