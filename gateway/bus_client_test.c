/*
 * kfg_bus_* (the consumer side of spec/bus.md) against an in-process fake
 * gateway: pub0 feed, rep0 replay and rep0 outbound over ipc:// in a temp
 * dir, each rep in its own thread, with a journal in memory. The fake can
 * "lose" a batch (journal it, advance prev, never send it), publish
 * heartbeats on demand, drop old records (retention), stall or refuse
 * replay requests. No timing assertions: timeouts only guard against hangs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/reqrep0/rep.h>

#include "kfgate/bus.h"

#define WAIT_MS 3000
#define MAX_REC 512
#define MAX_TOPICS 16

struct jrec {
    uint64_t seq;
    char topic[64];
    uint8_t env[128];
    size_t env_len;
};

struct fgw {
    char dir[64];
    char feed[128], replay[128], out[128];
    nng_socket pub, rep, outs;
    pthread_t rthr, othr;
    pthread_mutex_t mu;
    struct jrec j[MAX_REC];
    size_t n;
    uint64_t first;                 /* oldest seq still kept */
    uint32_t replay_cap;            /* gateway-side cap on max */
    uint32_t examine;               /* records examined per answer (0: all) */
    atomic_ullong committed_cap;    /* replay's "last" lags at most here (0: none) */
    struct {
        char name[64];
        uint64_t last;
    } topics[MAX_TOPICS];
    size_t ntopics;
    atomic_int stop, pipes, replay_reqs, replay_pause, replay_error;
    struct {
        char idem[64], id[40];
        uint64_t seq;
    } idem[256];
    size_t nidem;
};

struct fixture {
    struct fgw *f;
    struct kfg_bus *bus;
    struct kfg_bus_sub *sub;
};

/* ------------------------------------------------------------------------ */
/* msgpack helpers (trusted data: our own client's requests) */

static void pk_cstr(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

static const msgpack_object *map_get(const msgpack_object *m, const char *k)
{
    if (m->type != MSGPACK_OBJECT_MAP)
        return NULL;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object_kv *kv = &m->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(k) &&
            memcmp(kv->key.via.str.ptr, k, strlen(k)) == 0)
            return &kv->val;
    }
    return NULL;
}

static void send_sbuf(nng_socket s, const void *head, size_t hlen, const msgpack_sbuffer *sb)
{
    nng_msg *m;
    assert_int_equal(nng_msg_alloc(&m, 0), 0);
    if (hlen)
        assert_int_equal(nng_msg_append(m, head, hlen), 0);
    assert_int_equal(nng_msg_append(m, sb->data, sb->size), 0);
    assert_int_equal(nng_sendmsg(s, m, 0), 0);
}

/* ------------------------------------------------------------------------ */
/* The fake gateway */

static uint64_t *topic_last(struct fgw *f, const char *t)
{
    for (size_t i = 0; i < f->ntopics; i++)
        if (strcmp(f->topics[i].name, t) == 0)
            return &f->topics[i].last;
    assert_true(f->ntopics < MAX_TOPICS);
    snprintf(f->topics[f->ntopics].name, sizeof(f->topics[0].name), "%s", t);
    f->topics[f->ntopics].last = 0;
    return &f->topics[f->ntopics++].last;
}

/* Under mu. The envelope is a small msgpack map naming seq and topic. */
static struct jrec *commit(struct fgw *f, const char *topic)
{
    assert_true(f->n < MAX_REC);
    struct jrec *r = &f->j[f->n];
    r->seq = ++f->n;
    snprintf(r->topic, sizeof(r->topic), "%s", topic);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    pk_cstr(&pk, "seq");
    msgpack_pack_uint64(&pk, r->seq);
    pk_cstr(&pk, "topic");
    pk_cstr(&pk, topic);
    assert_true(sb.size <= sizeof(r->env));
    memcpy(r->env, sb.data, sb.size);
    r->env_len = sb.size;
    msgpack_sbuffer_destroy(&sb);
    return r;
}

/* Journals n records of topic as one batch and publishes it, unless lose:
 * then it is "dropped by the network" (prev still advances). Returns the
 * first seq. */
static uint64_t fgw_batch(struct fgw *f, const char *topic, int n, int lose)
{
    pthread_mutex_lock(&f->mu);
    uint64_t *last = topic_last(f, topic);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    pk_cstr(&pk, "v");
    msgpack_pack_uint32(&pk, 1);
    pk_cstr(&pk, "prev");
    msgpack_pack_uint64(&pk, *last);
    pk_cstr(&pk, "recs");
    msgpack_pack_array(&pk, (size_t)n);
    uint64_t first = 0;
    for (int i = 0; i < n; i++) {
        struct jrec *r = commit(f, topic);
        if (!first)
            first = r->seq;
        msgpack_pack_array(&pk, 2);
        msgpack_pack_uint64(&pk, r->seq);
        msgpack_pack_bin(&pk, r->env_len);
        msgpack_pack_bin_body(&pk, r->env, r->env_len);
        *last = r->seq;
    }
    if (!lose)
        send_sbuf(f->pub, topic, strlen(topic) + 1, &sb);
    msgpack_sbuffer_destroy(&sb);
    pthread_mutex_unlock(&f->mu);
    return first;
}

static void fgw_heartbeat(struct fgw *f)
{
    pthread_mutex_lock(&f->mu);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 3);
    pk_cstr(&pk, "v");
    msgpack_pack_uint32(&pk, 1);
    pk_cstr(&pk, "last");
    msgpack_pack_uint64(&pk, f->n);
    pk_cstr(&pk, "topics");
    msgpack_pack_map(&pk, f->ntopics);
    for (size_t i = 0; i < f->ntopics; i++) {
        pk_cstr(&pk, f->topics[i].name);
        msgpack_pack_uint64(&pk, f->topics[i].last);
    }
    send_sbuf(f->pub, "~hb", 4, &sb);
    msgpack_sbuffer_destroy(&sb);
    pthread_mutex_unlock(&f->mu);
}

static void fgw_raw(struct fgw *f, const void *p, size_t len)
{
    nng_msg *m;
    assert_int_equal(nng_msg_alloc(&m, 0), 0);
    assert_int_equal(nng_msg_append(m, p, len), 0);
    assert_int_equal(nng_sendmsg(f->pub, m, 0), 0);
}

static void replay_error(msgpack_packer *pk, const char *why)
{
    msgpack_pack_map(pk, 2);
    pk_cstr(pk, "v");
    msgpack_pack_uint32(pk, 1);
    pk_cstr(pk, "error");
    pk_cstr(pk, why);
}

/* Answers one replay request as spec/bus.md section 3 says. */
static void replay_answer(struct fgw *f, const void *req, size_t len, msgpack_sbuffer *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    if (atomic_load(&f->replay_error) ||
        msgpack_unpack_next(&u, req, len, &off) != MSGPACK_UNPACK_SUCCESS) {
        replay_error(&pk, "refused by the test");
        msgpack_unpacked_destroy(&u);
        return;
    }
    const msgpack_object *o_from = map_get(&u.data, "from"), *o_max = map_get(&u.data, "max"),
                         *o_topic = map_get(&u.data, "topic"),
                         *o_until = map_get(&u.data, "until");
    if (!o_from || o_from->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        replay_error(&pk, "missing required field 'from'");
        msgpack_unpacked_destroy(&u);
        return;
    }
    uint64_t from = o_from->via.u64, until = o_until ? o_until->via.u64 : 0;
    uint64_t max = o_max ? o_max->via.u64 : 256;
    const char *topic = o_topic ? o_topic->via.str.ptr : "";
    size_t tlen = o_topic ? o_topic->via.str.size : 0;
    pthread_mutex_lock(&f->mu);
    if (f->replay_cap && max > f->replay_cap)
        max = f->replay_cap;
    if (from == 0)
        from = 1;
    uint64_t next = from, last = f->n, examined = 0, cap = atomic_load(&f->committed_cap);
    if (cap && last > cap)
        last = cap;
    const struct jrec *hit[MAX_REC];
    size_t nhit = 0;
    for (uint64_t s = from < f->first ? f->first : from; s <= last; s++) {
        const struct jrec *r = &f->j[s - 1];
        if (until && s > until)
            break;
        if (f->examine && examined == f->examine)
            break;
        examined++;
        next = s + 1;
        if (strlen(r->topic) >= tlen && memcmp(r->topic, topic, tlen) == 0) {
            hit[nhit++] = r;
            if (nhit >= max)
                break;
        }
    }
    msgpack_pack_map(&pk, 5);
    pk_cstr(&pk, "v");
    msgpack_pack_uint32(&pk, 1);
    pk_cstr(&pk, "recs");
    msgpack_pack_array(&pk, nhit);
    for (size_t i = 0; i < nhit; i++) {
        msgpack_pack_array(&pk, 3);
        msgpack_pack_uint64(&pk, hit[i]->seq);
        pk_cstr(&pk, hit[i]->topic);
        msgpack_pack_bin(&pk, hit[i]->env_len);
        msgpack_pack_bin_body(&pk, hit[i]->env, hit[i]->env_len);
    }
    pk_cstr(&pk, "next");
    msgpack_pack_uint64(&pk, next);
    pk_cstr(&pk, "last");
    msgpack_pack_uint64(&pk, last);
    pk_cstr(&pk, "first");
    msgpack_pack_uint64(&pk, f->first);
    pthread_mutex_unlock(&f->mu);
    msgpack_unpacked_destroy(&u);
}

static void *replay_thread(void *arg)
{
    struct fgw *f = arg;
    while (!atomic_load(&f->stop)) {
        nng_msg *m;
        if (nng_recvmsg(f->rep, &m, 0) != 0)
            continue;
        atomic_fetch_add(&f->replay_reqs, 1);
        if (atomic_load(&f->replay_pause)) {
            nng_msg_free(m);
            continue;
        }
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        replay_answer(f, nng_msg_body(m), nng_msg_len(m), &sb);
        nng_msg_free(m);
        nng_msg *a;
        if (nng_msg_alloc(&a, 0) == 0 && nng_msg_append(a, sb.data, sb.size) == 0) {
            if (nng_sendmsg(f->rep, a, 0) != 0)
                nng_msg_free(a);
        }
        msgpack_sbuffer_destroy(&sb);
    }
    return NULL;
}

static void out_answer(msgpack_packer *pk, int ok, const char *id, uint64_t seq, int dup,
                       const char *error, const char *reason)
{
    msgpack_pack_map(pk, ok ? 5 : 4);
    pk_cstr(pk, "v");
    msgpack_pack_uint32(pk, 1);
    pk_cstr(pk, "ok");
    if (ok) {
        msgpack_pack_true(pk);
        pk_cstr(pk, "id");
        pk_cstr(pk, id);
        pk_cstr(pk, "seq");
        msgpack_pack_uint64(pk, seq);
        pk_cstr(pk, "duplicate");
        if (dup)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
    } else {
        msgpack_pack_false(pk);
        pk_cstr(pk, "error");
        pk_cstr(pk, error);
        pk_cstr(pk, "reason");
        pk_cstr(pk, reason);
    }
}

/* Outbound: needs "instance" ("nope" is unknown); "idem" dedupes. */
static void outbound_answer(struct fgw *f, const void *req, size_t len, msgpack_sbuffer *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    if (msgpack_unpack_next(&u, req, len, &off) != MSGPACK_UNPACK_SUCCESS ||
        u.data.type != MSGPACK_OBJECT_MAP) {
        out_answer(&pk, 0, NULL, 0, 0, "invalid", "not a msgpack map");
        goto done;
    }
    const msgpack_object *ins = map_get(&u.data, "instance"), *idem = map_get(&u.data, "idem");
    if (!ins || ins->type != MSGPACK_OBJECT_STR) {
        out_answer(&pk, 0, NULL, 0, 0, "invalid", "field 'instance': missing");
        goto done;
    }
    if (ins->via.str.size == 4 && memcmp(ins->via.str.ptr, "nope", 4) == 0) {
        out_answer(&pk, 0, NULL, 0, 0, "unknown_instance", "no instance 'nope'");
        goto done;
    }
    pthread_mutex_lock(&f->mu);
    if (idem && idem->type == MSGPACK_OBJECT_STR) {
        for (size_t i = 0; i < f->nidem; i++)
            if (strlen(f->idem[i].idem) == idem->via.str.size &&
                memcmp(f->idem[i].idem, idem->via.str.ptr, idem->via.str.size) == 0) {
                out_answer(&pk, 1, f->idem[i].id, f->idem[i].seq, 1, NULL, NULL);
                pthread_mutex_unlock(&f->mu);
                goto done;
            }
    }
    struct jrec *r = commit(f, "acme/wechat/wx");
    char id[40];
    snprintf(id, sizeof id, "0190aaaa-0000-7000-8000-%012llu", (unsigned long long)r->seq);
    if (idem && idem->type == MSGPACK_OBJECT_STR && f->nidem < 256) {
        snprintf(f->idem[f->nidem].idem, sizeof(f->idem[0].idem), "%.*s",
                 (int)idem->via.str.size, idem->via.str.ptr);
        snprintf(f->idem[f->nidem].id, sizeof(f->idem[0].id), "%s", id);
        f->idem[f->nidem++].seq = r->seq;
    }
    out_answer(&pk, 1, id, r->seq, 0, NULL, NULL);
    pthread_mutex_unlock(&f->mu);
done:
    msgpack_unpacked_destroy(&u);
}

static void *outbound_thread(void *arg)
{
    struct fgw *f = arg;
    while (!atomic_load(&f->stop)) {
        nng_msg *m;
        if (nng_recvmsg(f->outs, &m, 0) != 0)
            continue;
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        outbound_answer(f, nng_msg_body(m), nng_msg_len(m), &sb);
        nng_msg_free(m);
        nng_msg *a;
        if (nng_msg_alloc(&a, 0) == 0 && nng_msg_append(a, sb.data, sb.size) == 0) {
            if (nng_sendmsg(f->outs, a, 0) != 0)
                nng_msg_free(a);
        }
        msgpack_sbuffer_destroy(&sb);
    }
    return NULL;
}

static void pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
    struct fgw *f = arg;
    (void)p;
    atomic_fetch_add(&f->pipes, ev == NNG_PIPE_EV_ADD_POST ? 1 : -1);
}

static struct fgw *fgw_start(void)
{
    struct fgw *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof f->dir, "/tmp/kfgbus.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->feed, sizeof f->feed, "ipc://%s/feed.ipc", f->dir);
    snprintf(f->replay, sizeof f->replay, "ipc://%s/replay.ipc", f->dir);
    snprintf(f->out, sizeof f->out, "ipc://%s/outbound.ipc", f->dir);
    f->first = 1;
    pthread_mutex_init(&f->mu, NULL);
    assert_int_equal(nng_pub0_open(&f->pub), 0);
    assert_int_equal(nng_socket_set_int(f->pub, NNG_OPT_SENDBUF, 1024), 0);
    assert_int_equal(nng_pipe_notify(f->pub, NNG_PIPE_EV_ADD_POST, pipe_cb, f), 0);
    assert_int_equal(nng_pipe_notify(f->pub, NNG_PIPE_EV_REM_POST, pipe_cb, f), 0);
    assert_int_equal(nng_listen(f->pub, f->feed, NULL, 0), 0);
    assert_int_equal(nng_rep0_open(&f->rep), 0);
    assert_int_equal(nng_rep0_open(&f->outs), 0);
    assert_int_equal(nng_socket_set_ms(f->rep, NNG_OPT_RECVTIMEO, 50), 0);
    assert_int_equal(nng_socket_set_ms(f->outs, NNG_OPT_RECVTIMEO, 50), 0);
    assert_int_equal(nng_socket_set_ms(f->rep, NNG_OPT_SENDTIMEO, 1000), 0);
    assert_int_equal(nng_socket_set_ms(f->outs, NNG_OPT_SENDTIMEO, 1000), 0);
    assert_int_equal(nng_listen(f->rep, f->replay, NULL, 0), 0);
    assert_int_equal(nng_listen(f->outs, f->out, NULL, 0), 0);
    assert_int_equal(pthread_create(&f->rthr, NULL, replay_thread, f), 0);
    assert_int_equal(pthread_create(&f->othr, NULL, outbound_thread, f), 0);
    return f;
}

static void fgw_stop(struct fgw *f)
{
    atomic_store(&f->stop, 1);
    pthread_join(f->rthr, NULL);
    pthread_join(f->othr, NULL);
    nng_close(f->pub);
    nng_close(f->rep);
    nng_close(f->outs);
    char p[160];
    snprintf(p, sizeof p, "%s/feed.ipc", f->dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/replay.ipc", f->dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/outbound.ipc", f->dir);
    unlink(p);
    rmdir(f->dir);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static void wait_pipes(struct fgw *f, int n)
{
    for (int i = 0; i < WAIT_MS && atomic_load(&f->pipes) < n; i++)
        usleep(1000);
    assert_true(atomic_load(&f->pipes) >= n);
}

/* ------------------------------------------------------------------------ */
/* Fixture and helpers */

static int open_bus(struct fixture *x, uint32_t replay_max, int timeout_ms)
{
    struct kfg_bus_opts o = {
        .feed_url = x->f->feed,
        .replay_url = x->f->replay,
        .outbound_url = x->f->out,
        .request_timeout_ms = timeout_ms,
        .replay_max = replay_max,
    };
    return kfg_bus_open(&x->bus, &o);
}

static int setup(void **state)
{
    struct fixture *x = calloc(1, sizeof(*x));
    assert_non_null(x);
    x->f = fgw_start();
    assert_int_equal(open_bus(x, 0, 2000), 0);
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *x = *state;
    kfg_bus_sub_free(x->sub);
    kfg_bus_close(x->bus);
    fgw_stop(x->f);
    free(x);
    return 0;
}

static void subscribe(struct fixture *x, const char *prefix, uint64_t cursor)
{
    assert_int_equal(kfg_bus_sub(x->bus, prefix, cursor, &x->sub), 0);
    wait_pipes(x->f, 1);
}

/* The next record must be seq on topic, with the journal's envelope bytes. */
static void expect(struct fixture *x, uint64_t seq, const char *topic, int replayed)
{
    struct kfg_bus_rec r;
    int rv = kfg_bus_next(x->sub, &r, WAIT_MS);
    if (rv != 0)
        fail_msg("expected seq %llu, got %s (%s)", (unsigned long long)seq, kfg_bus_strerror(rv),
                 kfg_bus_sub_errmsg(x->sub));
    assert_int_equal(r.kind, KFG_BUS_RECORD);
    if (r.seq != seq)
        fail_msg("expected seq %llu, got %llu (%s)", (unsigned long long)seq,
                 (unsigned long long)r.seq, r.topic);
    assert_int_equal(r.seq_to, seq);
    assert_string_equal(r.topic, topic);
    assert_int_equal(r.topic_len, strlen(topic));
    assert_int_equal(r.replayed, replayed);
    const struct jrec *j = &x->f->j[seq - 1];
    assert_int_equal(r.env_len, j->env_len);
    assert_memory_equal(r.env, j->env, j->env_len);
}

static void expect_quiet(struct fixture *x)
{
    struct kfg_bus_rec r;
    int rv = kfg_bus_next(x->sub, &r, 150);
    if (rv != KFG_BUS_ETIMEDOUT)
        fail_msg("expected nothing, got rv %d seq %llu", rv, (unsigned long long)r.seq);
}

static struct kfg_bus_stats stats(struct fixture *x)
{
    struct kfg_bus_stats st;
    kfg_bus_sub_stats(x->sub, &st);
    return st;
}

#define WX "acme/wechat/wx"
#define WX2 "acme/wechat/wx2"
#define LINE "acme/line/l1"
#define OTHER "other/wechat/x"

/* ------------------------------------------------------------------------ */
/* Tests */

static void test_live_follow(void **state)
{
    struct fixture *x = *state;
    fgw_batch(x->f, WX, 2, 1);          /* history: not wanted live */
    subscribe(x, "", KFG_BUS_LIVE);
    assert_int_equal(stats(x).cursor, 2);
    fgw_batch(x->f, WX, 3, 0);
    fgw_batch(x->f, LINE, 1, 0);
    fgw_heartbeat(x->f);
    expect(x, 3, WX, 0);
    expect(x, 4, WX, 0);
    expect(x, 5, WX, 0);
    expect(x, 6, LINE, 0);
    expect_quiet(x);
    struct kfg_bus_stats st = stats(x);
    assert_int_equal(st.delivered, 4);
    assert_int_equal(st.from_feed, 4);
    assert_int_equal(st.replayed, 0);
    assert_int_equal(st.gaps, 0);
    assert_int_equal(st.batches, 2);
    assert_int_equal(st.heartbeats, 1);
    assert_true(st.last_heartbeat_ms > 0);
    assert_int_equal(st.node_last, 6);
}

static void test_catchup_from_cursor(void **state)
{
    struct fixture *x = *state;
    kfg_bus_close(x->bus);
    assert_int_equal(open_bus(x, 2, 2000), 0);      /* pages of 2 */
    x->f->examine = 3;                              /* and short pages */
    fgw_batch(x->f, WX, 3, 1);                      /* 1-3 */
    fgw_batch(x->f, LINE, 2, 1);                    /* 4-5 */
    fgw_batch(x->f, WX, 2, 1);                      /* 6-7 */
    subscribe(x, "acme/", 2);
    expect(x, 3, WX, 1);
    expect(x, 4, LINE, 1);
    expect(x, 5, LINE, 1);
    expect(x, 6, WX, 1);
    expect(x, 7, WX, 1);
    assert_true(stats(x).replay_requests >= 3);
    fgw_batch(x->f, LINE, 2, 0);                    /* 8-9, live, prev 5 */
    fgw_batch(x->f, WX, 1, 0);                      /* 10, prev 7 */
    expect(x, 8, LINE, 0);
    expect(x, 9, LINE, 0);
    expect(x, 10, WX, 0);
    expect_quiet(x);
    struct kfg_bus_stats st = stats(x);
    assert_int_equal(st.replayed, 5);
    assert_int_equal(st.from_feed, 3);
    assert_int_equal(st.gaps, 0);
    assert_int_equal(st.duplicates, 0);
    assert_int_equal(st.cursor, 7);
}

static void test_lost_batch_filled(void **state)
{
    struct fixture *x = *state;
    subscribe(x, "", KFG_BUS_LIVE);
    fgw_batch(x->f, WX, 2, 0);          /* 1-2 */
    fgw_batch(x->f, LINE, 1, 0);        /* 3 */
    fgw_batch(x->f, WX, 3, 1);          /* 4-6 lost */
    fgw_batch(x->f, LINE, 1, 0);        /* 7 */
    fgw_batch(x->f, WX, 1, 0);          /* 8, prev 6 */
    expect(x, 1, WX, 0);
    expect(x, 2, WX, 0);
    expect(x, 3, LINE, 0);
    expect(x, 7, LINE, 0);
    expect(x, 4, WX, 1);
    expect(x, 5, WX, 1);
    expect(x, 6, WX, 1);
    expect(x, 8, WX, 0);
    expect_quiet(x);
    struct kfg_bus_stats st = stats(x);
    assert_int_equal(st.gaps, 1);
    assert_int_equal(st.gaps_by_heartbeat, 0);
    assert_int_equal(st.gap_records, 3);
    assert_int_equal(st.replayed, 3);
    assert_int_equal(st.delivered, 8);
}

static void test_lost_tail_heartbeat(void **state)
{
    struct fixture *x = *state;
    subscribe(x, "acme/wechat/", KFG_BUS_LIVE);
    fgw_batch(x->f, WX, 1, 0);          /* 1 */
    fgw_batch(x->f, WX, 2, 1);          /* 2-3 lost, end of the burst */
    fgw_batch(x->f, WX2, 1, 1);         /* 4 lost, a topic never seen */
    expect(x, 1, WX, 0);
    expect_quiet(x);
    fgw_heartbeat(x->f);
    expect(x, 2, WX, 1);
    expect(x, 3, WX, 1);
    expect(x, 4, WX2, 1);
    fgw_heartbeat(x->f);                /* nothing new */
    expect_quiet(x);
    struct kfg_bus_stats st = stats(x);
    assert_int_equal(st.gaps, 2);
    assert_int_equal(st.gaps_by_heartbeat, 2);
    assert_int_equal(st.gap_records, 3);
    assert_int_equal(st.heartbeats, 2);
}

static void test_topic_prefix(void **state)
{
    struct fixture *x = *state;
    subscribe(x, "acme/wechat/", KFG_BUS_LIVE);
    fgw_batch(x->f, WX, 1, 0);          /* 1 */
    fgw_batch(x->f, WX2, 1, 0);         /* 2 */
    fgw_batch(x->f, WX, 1, 1);          /* 3 lost */
    fgw_batch(x->f, WX2, 1, 1);         /* 4 lost: inside WX's gap, another chain */
    fgw_batch(x->f, WX, 1, 1);          /* 5 lost */
    fgw_batch(x->f, LINE, 1, 0);        /* 6 other channel */
    fgw_batch(x->f, OTHER, 1, 1);       /* 7 other tenant, lost */
    fgw_batch(x->f, WX, 1, 0);          /* 8, prev 5 */
    fgw_heartbeat(x->f);
    expect(x, 1, WX, 0);
    expect(x, 2, WX2, 0);
    /* The fill of "acme/wechat/wx" also sees wx2's record 4 (the replay
     * filter is a prefix) and must leave it to wx2's own chain. */
    expect(x, 3, WX, 1);
    expect(x, 5, WX, 1);
    expect(x, 8, WX, 0);
    expect(x, 4, WX2, 1);               /* from the heartbeat */
    expect_quiet(x);
    struct kfg_bus_stats st = stats(x);
    assert_int_equal(st.delivered, 6);
    assert_int_equal(st.gaps, 2);
    assert_int_equal(st.batches, 3);    /* LINE is filtered by NNG or by us */
}

static void test_duplicates_once(void **state)
{
    struct fixture *x = *state;
    fgw_batch(x->f, WX, 3, 1);          /* 1-3 before we came */
    subscribe(x, "", 0);
    /* Published while the catch-up has not run yet: these arrive both in
     * the replay answer and on the feed. */
    fgw_batch(x->f, WX, 2, 0);          /* 4-5 */
    fgw_heartbeat(x->f);
    for (uint64_t s = 1; s <= 5; s++)
        expect(x, s, WX, 1);
    expect_quiet(x);
    struct kfg_bus_stats st = stats(x);
    assert_int_equal(st.delivered, 5);
    assert_int_equal(st.duplicates, 2);
    assert_int_equal(st.gaps, 0);
    fgw_batch(x->f, WX, 1, 0);          /* 6 */
    expect(x, 6, WX, 0);
}

static void test_retention_loss(void **state)
{
    struct fixture *x = *state;
    fgw_batch(x->f, WX, 5, 1);          /* 1-5 */
    x->f->first = 4;                    /* 1-3 deleted */
    subscribe(x, "acme/", 0);
    struct kfg_bus_rec r;
    assert_int_equal(kfg_bus_next(x->sub, &r, WAIT_MS), 0);
    assert_int_equal(r.kind, KFG_BUS_LOSS);
    assert_int_equal(r.seq, 1);
    assert_int_equal(r.seq_to, 3);
    assert_string_equal(r.topic, "acme/");
    assert_null(r.env);
    expect(x, 4, WX, 1);
    expect(x, 5, WX, 1);
    /* A gap whose start was deleted meanwhile is reported too. */
    fgw_batch(x->f, WX, 2, 1);          /* 6-7 lost */
    x->f->first = 7;
    fgw_batch(x->f, WX, 1, 0);          /* 8, prev 7 */
    assert_int_equal(kfg_bus_next(x->sub, &r, WAIT_MS), 0);
    assert_int_equal(r.kind, KFG_BUS_LOSS);
    assert_int_equal(r.seq, 6);
    assert_int_equal(r.seq_to, 6);
    assert_string_equal(r.topic, WX);
    expect(x, 7, WX, 1);
    expect(x, 8, WX, 0);
    assert_int_equal(stats(x).lost, 4);
}

static void test_replay_failures_resume(void **state)
{
    struct fixture *x = *state;
    kfg_bus_close(x->bus);
    assert_int_equal(open_bus(x, 0, 200), 0);
    fgw_batch(x->f, WX, 2, 1);          /* 1-2 */
    atomic_store(&x->f->replay_error, 1);
    subscribe(x, "", 0);
    struct kfg_bus_rec r;
    assert_int_equal(kfg_bus_next(x->sub, &r, WAIT_MS), KFG_BUS_EPROTO);
    assert_non_null(strstr(kfg_bus_sub_errmsg(x->sub), "refused by the test"));
    atomic_store(&x->f->replay_error, 0);
    atomic_store(&x->f->replay_pause, 1);
    assert_int_equal(kfg_bus_next(x->sub, &r, WAIT_MS), KFG_BUS_ECONN);
    atomic_store(&x->f->replay_pause, 0);
    expect(x, 1, WX, 1);
    expect(x, 2, WX, 1);
    /* A failing gap fill holds its batch back, then delivers it in order. */
    fgw_batch(x->f, WX, 1, 1);          /* 3 lost */
    atomic_store(&x->f->replay_pause, 1);
    fgw_batch(x->f, WX, 1, 0);          /* 4, prev 3 */
    assert_int_equal(kfg_bus_next(x->sub, &r, WAIT_MS), KFG_BUS_ECONN);
    atomic_store(&x->f->replay_pause, 0);
    expect(x, 3, WX, 1);
    expect(x, 4, WX, 0);
    expect_quiet(x);
}

static void *uncap_later(void *arg)
{
    struct fgw *f = arg;
    usleep(100000);
    atomic_store(&f->committed_cap, 0);
    return NULL;
}

/* The feed may announce records the replay endpoint does not serve yet
 * (committed later). No record may be skipped because of it. */
static void test_replay_behind_feed(void **state)
{
    struct fixture *x = *state;
    subscribe(x, "", KFG_BUS_LIVE);
    fgw_batch(x->f, WX, 1, 0);                  /* 1 */
    fgw_batch(x->f, WX, 2, 1);                  /* 2-3 lost */
    atomic_store(&x->f->committed_cap, 1);
    fgw_heartbeat(x->f);
    expect(x, 1, WX, 0);
    expect_quiet(x);                            /* nothing to fill from yet */
    assert_int_equal(stats(x).delivered, 1);
    /* A held batch waits for replay to catch up. */
    fgw_batch(x->f, WX, 1, 0);                  /* 4, prev 3 */
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, uncap_later, x->f), 0);
    expect(x, 2, WX, 1);
    expect(x, 3, WX, 1);
    expect(x, 4, WX, 0);
    pthread_join(t, NULL);
    /* ... and reports the loss when replay never catches up. */
    kfg_bus_sub_free(x->sub);
    x->sub = NULL;
    kfg_bus_close(x->bus);
    assert_int_equal(open_bus(x, 0, 200), 0);
    subscribe(x, "", KFG_BUS_LIVE);
    atomic_store(&x->f->committed_cap, 4);
    fgw_batch(x->f, WX, 2, 1);                  /* 5-6 lost */
    fgw_batch(x->f, WX, 1, 0);                  /* 7, prev 6 */
    struct kfg_bus_rec r;
    assert_int_equal(kfg_bus_next(x->sub, &r, WAIT_MS), 0);
    assert_int_equal(r.kind, KFG_BUS_LOSS);
    assert_int_equal(r.seq, 5);
    assert_int_equal(r.seq_to, 6);
    expect(x, 7, WX, 0);
    atomic_store(&x->f->committed_cap, 0);
}

static void test_bad_feed_ignored(void **state)
{
    struct fixture *x = *state;
    subscribe(x, "", KFG_BUS_LIVE);
    static const uint8_t junk1[] = "acme/wechat/wx\0\xc1";
    static const uint8_t junk2[] = { 'a', '/', 'b', 0, 0x83, 0xa1, 'v', 0x01, 0xa4, 'p', 'r', 'e',
                                     'v', 0x00, 0xa4, 'r', 'e', 'c', 's', 0xdd, 0xff, 0xff,
                                     0xff, 0xff };
    static const uint8_t junk3[] = "no-nul-at-all";
    fgw_raw(x->f, junk1, sizeof(junk1) - 1);
    fgw_raw(x->f, junk2, sizeof(junk2));
    fgw_raw(x->f, junk3, sizeof(junk3) - 1);
    fgw_raw(x->f, "~hb\0\x80", 5);
    fgw_batch(x->f, WX, 1, 0);
    expect(x, 1, WX, 0);
    assert_int_equal(stats(x).bad_messages, 4);
}

static void test_outbound(void **state)
{
    struct fixture *x = *state;
    struct kfg_bus_ack a;
    /* {"instance":"wx-main","idem":"k1"} */
    static const uint8_t env1[] = { 0x82, 0xa8, 'i', 'n', 's', 't', 'a', 'n', 'c', 'e', 0xa7,
                                    'w', 'x', '-', 'm', 'a', 'i', 'n', 0xa4, 'i', 'd', 'e',
                                    'm', 0xa2, 'k', '1' };
    assert_int_equal(kfg_bus_send(x->bus, env1, sizeof env1, &a, 0), 0);
    assert_true(a.ok);
    assert_false(a.duplicate);
    assert_int_equal(a.seq, 1);
    assert_string_equal(a.id, "0190aaaa-0000-7000-8000-000000000001");
    assert_string_equal(a.error, "");
    assert_int_equal(kfg_bus_send(x->bus, env1, sizeof env1, &a, 0), 0);
    assert_true(a.ok);
    assert_true(a.duplicate);
    assert_int_equal(a.seq, 1);
    assert_string_equal(a.id, "0190aaaa-0000-7000-8000-000000000001");
    /* {"text":"x"}: rejected */
    static const uint8_t env2[] = { 0x81, 0xa4, 't', 'e', 'x', 't', 0xa1, 'x' };
    assert_int_equal(kfg_bus_send(x->bus, env2, sizeof env2, &a, 0), 0);
    assert_false(a.ok);
    assert_string_equal(a.error, "invalid");
    assert_string_equal(a.reason, "field 'instance': missing");
    assert_string_equal(a.id, "");
    /* {"instance":"nope"} */
    static const uint8_t env3[] = { 0x81, 0xa8, 'i', 'n', 's', 't', 'a', 'n', 'c', 'e', 0xa4,
                                    'n', 'o', 'p', 'e' };
    assert_int_equal(kfg_bus_send(x->bus, env3, sizeof env3, &a, 0), 0);
    assert_false(a.ok);
    assert_string_equal(a.error, "unknown_instance");
    assert_int_equal(kfg_bus_send(x->bus, NULL, 0, &a, 0), KFG_BUS_EINVAL);
}

struct sender {
    struct kfg_bus *bus;
    int id, ok;
    uint64_t seqs[25];
};

static void *send_many(void *arg)
{
    struct sender *t = arg;
    for (int i = 0; i < 25; i++) {
        /* {"instance":"wx","idem":"t<id>-<i>"} */
        char idem[16];
        int n = snprintf(idem, sizeof idem, "t%d-%d", t->id, i);
        uint8_t env[64] = { 0x82, 0xa8, 'i', 'n', 's', 't', 'a', 'n', 'c', 'e', 0xa2, 'w', 'x',
                            0xa4, 'i', 'd', 'e', 'm', (uint8_t)(0xa0 | n) };
        memcpy(env + 19, idem, (size_t)n);
        struct kfg_bus_ack a;
        if (kfg_bus_send(t->bus, env, 19 + (size_t)n, &a, 0) == 0 && a.ok && !a.duplicate)
            t->seqs[t->ok++] = a.seq;
    }
    return NULL;
}

/* kfg_bus_send from several threads at once: one REQ context each. */
static void test_outbound_threads(void **state)
{
    struct fixture *x = *state;
    struct sender t[8];
    pthread_t th[8];
    for (int i = 0; i < 8; i++) {
        t[i] = (struct sender){ .bus = x->bus, .id = i };
        assert_int_equal(pthread_create(&th[i], NULL, send_many, &t[i]), 0);
    }
    uint8_t seen[256] = { 0 };
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(t[i].ok, 25);
        for (int j = 0; j < 25; j++) {
            assert_true(t[i].seqs[j] >= 1 && t[i].seqs[j] <= 200);
            assert_false(seen[t[i].seqs[j]]);
            seen[t[i].seqs[j]] = 1;
        }
    }
}

static void test_outbound_no_gateway(void **state)
{
    (void)state;
    struct kfg_bus *b;
    struct kfg_bus_opts o = { .outbound_url = "ipc:///tmp/kfgbus-none/outbound.ipc",
                              .replay_url = "ipc:///tmp/kfgbus-none/replay.ipc",
                              .feed_url = "ipc:///tmp/kfgbus-none/feed.ipc",
                              .request_timeout_ms = 100 };
    assert_int_equal(kfg_bus_open(&b, &o), 0);
    struct kfg_bus_ack a;
    static const uint8_t env[] = { 0x80 };
    assert_int_equal(kfg_bus_send(b, env, sizeof env, &a, 0), KFG_BUS_ETIMEDOUT);
    /* A live subscription with nobody there still comes up and waits. */
    struct kfg_bus_sub *s;
    assert_int_equal(kfg_bus_sub(b, "", KFG_BUS_LIVE, &s), 0);
    struct kfg_bus_rec r;
    assert_int_equal(kfg_bus_next(s, &r, 50), KFG_BUS_ECONN);   /* the probe, again */
    assert_non_null(strstr(kfg_bus_sub_errmsg(s), "replay"));
    kfg_bus_sub_free(s);
    kfg_bus_close(b);
}

/* ------------------------------------------------------------------------ */
/* Decoders on hand-made bytes */

static void test_decoders(void **state)
{
    (void)state;
    struct kfg_bus_wire w;
    /* a/b NUL {"v":1,"prev":1,"recs":[[2,bin"x"],[3,bin""]]} */
    static const uint8_t ok[] = { 'a', '/', 'b', 0, 0x83, 0xa1, 'v', 0x01, 0xa4, 'p', 'r', 'e', 'v',
                                  0x01, 0xa4, 'r', 'e', 'c', 's', 0x92, 0x92, 0x02, 0xc4, 0x01,
                                  'x', 0x92, 0x03, 0xc4, 0x00 };
    assert_int_equal(kfg_bus_decode_feed(ok, sizeof ok, &w), 0);
    assert_int_equal(w.kind, KFG_BUS_WIRE_BATCH);
    assert_int_equal(w.prev, 1);
    assert_int_equal(w.n, 2);
    assert_int_equal(w.recs[0].seq, 2);
    assert_int_equal(w.recs[0].env_len, 1);
    assert_memory_equal(w.recs[0].env, "x", 1);
    assert_int_equal(w.recs[1].seq, 3);
    kfg_bus_wire_clear(&w);
    uint8_t bad[64];
    /* prev >= first seq */
    memcpy(bad, ok, sizeof ok);
    bad[13] = 0x02;
    assert_int_equal(kfg_bus_decode_feed(bad, sizeof bad, &w), KFG_BUS_EPROTO);
    assert_null(w.recs);
    /* v = 2 */
    memcpy(bad, ok, sizeof ok);
    bad[7] = 0x02;
    assert_int_equal(kfg_bus_decode_feed(bad, sizeof bad, &w), KFG_BUS_EPROTO);
    /* bad topic character */
    memcpy(bad, ok, sizeof ok);
    bad[1] = ' ';
    assert_int_equal(kfg_bus_decode_feed(bad, sizeof bad, &w), KFG_BUS_EPROTO);
    /* truncated, trailing byte */
    assert_int_equal(kfg_bus_decode_feed(ok, sizeof ok - 1, &w), KFG_BUS_EPROTO);
    uint8_t longer[sizeof ok + 1];
    memcpy(longer, ok, sizeof ok);
    longer[sizeof ok] = 0xc0;
    assert_int_equal(kfg_bus_decode_feed(longer, sizeof longer, &w), KFG_BUS_EPROTO);
    /* A replay answer with an error, and one with a record at/after next. */
    static const uint8_t err[] = { 0x82, 0xa1, 'v', 0x01, 0xa5, 'e', 'r', 'r', 'o', 'r', 0xa3,
                                   'b', 'a', 'd' };
    assert_int_equal(kfg_bus_decode_replay(err, sizeof err, &w), 0);
    assert_int_equal(w.kind, KFG_BUS_WIRE_ERROR);
    assert_int_equal(w.error_len, 3);
    kfg_bus_wire_clear(&w);
    static const uint8_t rep[] = { 0x85, 0xa1, 'v', 0x01, 0xa4, 'r', 'e', 'c', 's', 0x91, 0x93,
                                   0x05, 0xa3, 'a', '/', 'b', 0xc4, 0x00, 0xa4, 'n', 'e', 'x',
                                   't', 0x06, 0xa4, 'l', 'a', 's', 't', 0x09, 0xa5, 'f', 'i',
                                   'r', 's', 't', 0x01 };
    assert_int_equal(kfg_bus_decode_replay(rep, sizeof rep, &w), 0);
    assert_int_equal(w.kind, KFG_BUS_WIRE_REPLAY);
    assert_int_equal(w.n, 1);
    assert_int_equal(w.recs[0].seq, 5);
    assert_int_equal(w.next, 6);
    assert_int_equal(w.last, 9);
    kfg_bus_wire_clear(&w);
    memcpy(bad, rep, sizeof rep);
    bad[23] = 0x05;                     /* next = 5: record 5 not below it */
    assert_int_equal(kfg_bus_decode_replay(bad, sizeof rep, &w), KFG_BUS_EPROTO);
    /* Deep nesting in an ignored key is refused, not recursed into. */
    uint8_t deep[64 + 8] = { 0x82, 0xa1, 'v', 0x01, 0xa1, 'z' };
    for (size_t i = 6; i < sizeof deep; i++)
        deep[i] = 0x91;
    assert_int_equal(kfg_bus_decode_replay(deep, sizeof deep, &w), KFG_BUS_EPROTO);
    struct kfg_bus_ack a;
    static const uint8_t ack_bad[] = { 0x81, 0xa2, 'o', 'k', 0xc3 };    /* no v */
    assert_int_equal(kfg_bus_decode_ack(ack_bad, sizeof ack_bad, &a), KFG_BUS_EPROTO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decoders),
        cmocka_unit_test_setup_teardown(test_live_follow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_catchup_from_cursor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_batch_filled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_tail_heartbeat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_topic_prefix, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicates_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_loss, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_failures_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replay_behind_feed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_feed_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_outbound_threads, setup, teardown),
        cmocka_unit_test(test_outbound_no_gateway),
    };
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    nng_fini();
    return failed;
}
