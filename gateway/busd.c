/*
 * The embedded bus: journal + NNG (spec/bus.md). Threads involved:
 *   - worker loops call kfg_busd_emit; the journal's encode callback runs
 *     there, under the journal's lock;
 *   - the journal's writer thread runs every commit callback, in sequence
 *     order, then on_batch: it publishes on the feed and answers outbound
 *     requests, and posts the rest back to a loop;
 *   - NNG's threads run the replay and outbound context callbacks; replay is
 *     answered right there (journal reads are preads), outbound hops to the
 *     control loop, which owns instances and deliveries;
 *   - the control loop runs deliveries, retries, receipts and the heartbeat.
 * The feed state (topics, open batches) is shared by the writer thread and
 * the heartbeat under `mu`.
 */
#include "busd.h"

#include <errno.h>
#include <event2/event.h>
#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/pub.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/transport/ipc/ipc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>

#include "config.h"
#include "envelope.h"
#include "gateway.h"
#include "instance.h"
#include "journal.h"
#include "log.h"
#include "loop.h"
#include "metrics.h"
#include "msg.h"

#define HB_TOPIC "~hb"
/* An answer stops growing past this (it always holds one record), so it
 * stays well under the client's receive limit (spec/bus.md, Limits). */
#define REPLAY_MAX_BYTES (4u << 20)
/* Largest request the replay and outbound endpoints take. */
#define REQ_MAX_BYTES ((size_t)2 << 20)
#define NBUCKETS 256

struct topic {
    struct topic *next, *next_dirty;
    uint64_t last;           /* last seq published (or found in the journal) */
    uint64_t batch_prev;     /* `prev` of the open batch */
    uint32_t n;              /* records in the open batch */
    int dirty;
    struct kfg_buf body;     /* packed [seq, bin] pairs of the open batch */
    size_t len;
    char name[];
};

/* One NNG REP context with its aio. */
struct rctx {
    nng_ctx ctx;
    nng_aio *aio;
    int sending;
    int outbound;
};

struct bus {
    struct kfg_gateway *gw;
    struct kfg_journal *j;
    nng_socket pub, replay, out;
    int have_pub, have_replay, have_out;
    struct rctx *ctxs;
    size_t nctx;
    pthread_mutex_t mu;
    struct topic *buckets[NBUCKETS];
    struct topic *dirty, **dirty_tail;   /* FIFO: flushed in the order their
                                           first record came, so a subscriber
                                           to several topics sees batches in
                                           the order of their first seq */
    size_t ntopics;
    uint32_t batch_max, replay_max, retry_max;
    size_t batch_bytes;
    uint32_t retry_base_ms, retry_cap_ms;
    struct event *hb;
    pthread_t linger_th;         /* flushes open batches batch_linger_us after
                                    the first record went into one */
    pthread_cond_t linger_cv;    /* with mu. A thread of our own, not an NNG
                                    timer: NNG 1.5.2's expire thread polls the
                                    clock while a 1 ms sleep is pending, which
                                    cost a third of a core under load */
    int linger_started, linger_quit;
    struct timespec linger_due;  /* CLOCK_MONOTONIC */
    int linger_armed;            /* under mu */
    uint32_t linger_us;
    int validate;                /* [bus] validate_inbound */
    struct kfg_delivery *deliveries;    /* in progress; control loop */
    struct undelivered {
        uint64_t seq;
        int accepted;                   /* its "accepted" receipt is stored */
    } *undelivered;                     /* outbound found without an outcome */
    size_t nundelivered, capundelivered;
    atomic_int stopping;
    struct kfg_metric *m_published, *m_batches, *m_pending, *m_commit, *m_dup;
    struct kfg_metric *m_replay, *m_out_ok, *m_out_dup, *m_out_rej, *m_last;
    struct kfg_metric *m_rc_sent, *m_rc_failed, *m_retries;
};

static struct bus B;

/* ------------------------------------------------------------------------ */
/* msgpack into a kfg_buf */

static int buf_write(void *data, const char *p, size_t len)
{
    struct kfg_buf *b = data;
    kfg_buf_append(b, p, len);
    return b->oom ? -1 : 0;
}

static void pk_str(msgpack_packer *pk, const char *s, size_t len)
{
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

#define PK_LIT(pk, s) pk_str(pk, s, sizeof(s) - 1)

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------------ */
/* Topics and the feed */

static uint32_t hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* Under mu. */
static struct topic *topic_get(const char *name, size_t len)
{
    uint32_t h = hash(name, len) % NBUCKETS;
    for (struct topic *t = B.buckets[h]; t; t = t->next)
        if (t->len == len && memcmp(t->name, name, len) == 0)
            return t;
    struct topic *t = calloc(1, sizeof(*t) + len + 1);
    if (!t)
        return NULL;
    memcpy(t->name, name, len);
    t->len = len;
    t->next = B.buckets[h];
    B.buckets[h] = t;
    B.ntopics++;
    return t;
}

/* Sends topic NUL payload-head payload-body as one NNG message. pub0 never
 * blocks: a full subscriber queue drops, which the spec's prev/heartbeat
 * checks and replay make good. */
static void feed_send(const char *topic, size_t tlen, const struct kfg_buf *head,
                      const struct kfg_buf *body)
{
    if (!B.have_pub)
        return;
    nng_msg *msg;
    size_t blen = body ? body->len : 0;
    if (nng_msg_alloc(&msg, tlen + 1 + head->len + blen) != 0)
        return;
    char *p = nng_msg_body(msg);
    memcpy(p, topic, tlen);
    p[tlen] = '\0';
    memcpy(p + tlen + 1, head->p, head->len);
    if (blen)
        memcpy(p + tlen + 1 + head->len, body->p, blen);
    if (nng_sendmsg(B.pub, msg, NNG_FLAG_NONBLOCK) != 0)
        nng_msg_free(msg);
}

/* Under mu. */
static void topic_flush(struct topic *t)
{
    if (!t->n)
        return;
    struct kfg_buf head = { 0 };
    msgpack_packer pk;
    msgpack_packer_init(&pk, &head, buf_write);
    msgpack_pack_map(&pk, 3);
    PK_LIT(&pk, "v");
    msgpack_pack_uint32(&pk, 1);
    PK_LIT(&pk, "prev");
    msgpack_pack_uint64(&pk, t->batch_prev);
    PK_LIT(&pk, "recs");
    msgpack_pack_array(&pk, t->n);
    if (!head.oom && !t->body.oom) {
        feed_send(t->name, t->len, &head, &t->body);
        kfg_metric_add(B.m_batches, 1);
        kfg_metric_add(B.m_published, t->n);
    }
    kfg_buf_free(&head);
    kfg_buf_reset(&t->body);
    t->body.oom = 0;
    t->n = 0;
}

/* Writer thread, in seq order. */
static void feed_publish(struct topic *t, uint64_t seq, const char *env, size_t len)
{
    pthread_mutex_lock(&B.mu);
    if (!t->n) {
        t->batch_prev = t->last;
        if (!t->dirty) {
            t->dirty = 1;
            t->next_dirty = NULL;
            if (!B.dirty)
                B.dirty_tail = &B.dirty;
            *B.dirty_tail = t;
            B.dirty_tail = &t->next_dirty;
        }
        if (!B.linger_armed && B.linger_started) {
            B.linger_armed = 1;
            clock_gettime(CLOCK_MONOTONIC, &B.linger_due);
            B.linger_due.tv_nsec += (long)B.linger_us * 1000;
            while (B.linger_due.tv_nsec >= 1000000000L) {
                B.linger_due.tv_sec++;
                B.linger_due.tv_nsec -= 1000000000L;
            }
            pthread_cond_signal(&B.linger_cv);
        }
    }
    msgpack_packer pk;
    msgpack_packer_init(&pk, &t->body, buf_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint64(&pk, seq);
    msgpack_pack_bin(&pk, len);
    msgpack_pack_bin_body(&pk, env, len);
    t->n++;
    t->last = seq;
    if (t->n >= B.batch_max || t->body.len >= B.batch_bytes)
        topic_flush(t);
    pthread_mutex_unlock(&B.mu);
}

/* The journal's end of a commit batch: flush every open batch, so a record
 * never waits for more traffic. */
static void flush_dirty(void)
{
    for (struct topic *t = B.dirty, *nx; t; t = nx) {
        nx = t->next_dirty;
        topic_flush(t);
        t->dirty = 0;
        t->next_dirty = NULL;
    }
    B.dirty = NULL;
    B.dirty_tail = &B.dirty;
}

static void on_commit_batch(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&B.mu);
    flush_dirty();
    pthread_mutex_unlock(&B.mu);
}

/* The linger thread: sleeps until a batch opens, then until its linger
 * ran out, and flushes whatever is still open then. */
static void *linger_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&B.mu);
    while (!B.linger_quit) {
        if (!B.linger_armed) {
            pthread_cond_wait(&B.linger_cv, &B.mu);
            continue;
        }
        if (pthread_cond_timedwait(&B.linger_cv, &B.mu, &B.linger_due) == ETIMEDOUT) {
            B.linger_armed = 0;
            flush_dirty();
        }
    }
    pthread_mutex_unlock(&B.mu);
    return NULL;
}

static void heartbeat(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    struct kfg_buf head = { 0 };
    msgpack_packer pk;
    msgpack_packer_init(&pk, &head, buf_write);
    uint64_t last = kfg_journal_committed_seq(B.j);
    pthread_mutex_lock(&B.mu);
    /* topics[T] must mean "sent": nothing it names may sit in a batch. */
    flush_dirty();
    msgpack_pack_map(&pk, 3);
    PK_LIT(&pk, "v");
    msgpack_pack_uint32(&pk, 1);
    PK_LIT(&pk, "last");
    msgpack_pack_uint64(&pk, last);
    PK_LIT(&pk, "topics");
    msgpack_pack_map(&pk, B.ntopics);
    for (size_t i = 0; i < NBUCKETS; i++)
        for (struct topic *t = B.buckets[i]; t; t = t->next) {
            pk_str(&pk, t->name, t->len);
            msgpack_pack_uint64(&pk, t->last);
        }
    pthread_mutex_unlock(&B.mu);
    if (!head.oom)
        feed_send(HB_TOPIC, sizeof(HB_TOPIC) - 1, &head, NULL);
    kfg_buf_free(&head);
    struct kfg_journal_stats st;
    kfg_journal_stats(B.j, &st);
    kfg_metric_set(B.m_pending, (int64_t)st.pending);
    kfg_metric_set(B.m_last, (int64_t)last);
}

/* ------------------------------------------------------------------------ */
/* Appending: a record is topic NUL envelope. */

enum pend_kind { P_EMIT, P_OUT, P_RECEIPT };

struct pend {
    enum pend_kind kind;
    struct kfg_msg *m;           /* only during append */
    struct topic *t;
    struct kfg_buf rec;
    double t0;
    int result, duplicate;
    uint64_t seq;
    char id[40];
    /* P_EMIT */
    struct kfg_instance *ins;
    kfg_emit_done done;          /* one of done, done2 */
    kfg_emit_done2 done2;
    void *arg;
    struct kfg_loop *loop;
    /* P_OUT */
    struct rctx *rc;             /* answer here, or */
    kfg_busd_accept_fn accept;    /* here (on the control loop) */
    kfg_busd_final_fn final;
    void *accept_arg;
    unsigned max_attempts;
    struct kfg_msg *out;         /* the outbound message, delivered after commit */
    char instance[72], tenant[72], channel[72];
};

static void pend_free(struct pend *p)
{
    if (p->ins)
        kfg_instance_unref(p->ins);
    kfg_msg_free(p->out);
    kfg_buf_free(&p->rec);
    free(p);
}

static struct topic *topic_for(const char *tenant, const char *channel, const char *instance)
{
    char name[256];
    int n = snprintf(name, sizeof name, "%s/%s/%s", tenant ? tenant : "default",
                     channel ? channel : "", instance ? instance : "");
    if (n < 0 || (size_t)n >= sizeof name)
        return NULL;
    pthread_mutex_lock(&B.mu);
    struct topic *t = topic_get(name, (size_t)n);
    pthread_mutex_unlock(&B.mu);
    return t;
}

static int encode_rec(void *arg, uint64_t seq, int64_t accepted_ms, struct kfg_buf *out)
{
    struct pend *p = arg;
    (void)accepted_ms;
    kfg_msg_accept(p->m, seq);
    memcpy(p->id, p->m->id, sizeof(p->m->id));
    kfg_buf_append(&p->rec, p->t->name, p->t->len);
    kfg_buf_putc(&p->rec, '\0');
    if (kfg_env_encode(p->m, &p->rec) != 0 || p->rec.oom)
        return KFG_ENOMEM;
    if (p->kind == P_EMIT && B.validate) {
        /* A plugin's mistake (a part without its required field, a size
         * that is not a number) stops here, named, not on the core's side. */
        char why[200];
        size_t tl = p->t->len + 1;
        if (kfg_env_validate(p->rec.p + tl, p->rec.len - tl, KFG_ENV_INBOUND, why,
                             sizeof why) != 0) {
            kfg_log(KFG_LOG_WARN, p->ins->name, NULL, "message refused: %s", why);
            return KFG_EINVAL;
        }
    }
    kfg_buf_append(out, p->rec.p, p->rec.len);
    return out->oom ? KFG_ENOMEM : KFG_OK;
}

static void committed(void *arg, int result, uint64_t seq, int duplicate);

/* A journal record is topic NUL envelope: decodes its envelope (no rules
 * applied: the gateway wrote it). NULL when it does not decode. */
static struct kfg_msg *record_msg(const void *payload, size_t len)
{
    const char *nul = memchr(payload, '\0', len);
    struct kfg_msg *m = NULL;
    char why[8];
    if (!nul)
        return NULL;
    size_t off = (size_t)(nul + 1 - (const char *)payload);
    if (kfg_env_decode((const char *)payload + off, len - off, 0, &m, why, sizeof why) != 0)
        return NULL;
    return m;
}

struct id_lookup {
    char *out;
    size_t cap;
};

/* The envelope's "id" of one journaled record: a duplicate is answered with
 * the original's identity. */
static int id_of(void *arg, uint64_t seq, int64_t accepted_ms, const void *key, size_t keylen,
                 const void *payload, size_t len)
{
    struct id_lookup *l = arg;
    (void)seq, (void)accepted_ms, (void)key, (void)keylen;
    struct kfg_msg *m = record_msg(payload, len);
    if (m) {
        snprintf(l->out, l->cap, "%s", m->id);
        kfg_msg_free(m);
    }
    return 0;
}

static void original_id(uint64_t seq, char *out, size_t cap)
{
    struct id_lookup l = { out, cap };
    out[0] = '\0';
    kfg_journal_read(B.j, seq, 1, id_of, &l);
}

static void journal_kick(void *arg)
{
    (void)arg;
    if (B.j)
        kfg_journal_kick(B.j);
}

static int append(struct pend *p, struct kfg_msg *m)
{
    struct kfg_str key = kfg_msg_get(m, KFG_ENV_IDEM);
    char kbuf[400];
    size_t klen = 0;
    if (key.ptr && key.len && p->t->len + 1 + key.len < sizeof kbuf) {
        /* Keys are per instance: two channels may use the same MsgId. */
        memcpy(kbuf, p->t->name, p->t->len);
        kbuf[p->t->len] = '\0';
        memcpy(kbuf + p->t->len + 1, key.ptr, key.len);
        klen = p->t->len + 1 + key.len;
    }
    p->m = m;
    p->t0 = mono_s();
    /* On a loop, wake the writer once at the end of the loop's pass. */
    struct kfg_loop *loop = kfg_loop_current();
    int r = loop ? kfg_journal_append_deferred(B.j, klen ? kbuf : NULL, klen, encode_rec, p,
                                               committed, p)
                 : kfg_journal_append(B.j, klen ? kbuf : NULL, klen, encode_rec, p, committed, p);
    if (loop && r == KFG_OK && kfg_loop_at_pass_end(loop, journal_kick, NULL) != 0)
        kfg_journal_kick(B.j);
    /* On success p may already be committed and freed by the writer. */
    if (r != KFG_OK)
        p->m = NULL;
    return r;
}

/* ------------------------------------------------------------------------ */
/* Emit */

static void emit_complete(void *arg)
{
    struct pend *p = arg;
    if (p->done2) {
        struct kfg_emit_result r = {
            .result = p->result,
            .seq = p->seq,
            .id = p->result == KFG_OK && p->id[0] ? p->id : NULL,
            .duplicate = p->duplicate,
            .reason = p->result == KFG_OK ? NULL : "the journal could not store it",
        };
        p->done2(p->arg, &r);
    } else {
        p->done(p->arg, p->result, p->seq, NULL);
    }
    pend_free(p);
}

int kfg_busd_emit(struct kfg_instance *ins, struct kfg_msg *m, kfg_emit_done done,
                  kfg_emit_done2 done2, void *arg)
{
    struct kfg_loop *loop = kfg_loop_current();
    if (!B.j || atomic_load(&B.stopping))
        return KFG_ESTOPPED;
    struct pend *p = calloc(1, sizeof(*p));
    if (!p)
        return KFG_ENOMEM;
    p->kind = P_EMIT;
    /* The topic never changes for an instance: look it up (snprintf, hash,
     * lock) once. Workers may race to store the same pointer. */
    p->t = __atomic_load_n((struct topic **)&ins->bus_topic, __ATOMIC_ACQUIRE);
    if (!p->t) {
        p->t = topic_for(ins->tenant, ins->plugin->name, ins->name);
        __atomic_store_n((struct topic **)&ins->bus_topic, p->t, __ATOMIC_RELEASE);
    }
    if (!p->t) {
        free(p);
        return KFG_EINVAL;
    }
    p->ins = ins;
    p->done = done;
    p->done2 = done2;
    p->arg = arg;
    p->loop = loop;
    kfg_instance_ref(ins);
    /* An adapter's emit is inbound, whatever it set. */
    static const struct kfg_field dir_in = { .key = (char *)KFG_ENV_DIR,
                                             .val = (char *)KFG_ENV_DIR_IN, .len = 2,
                                             .type = KFG_F_STR };
    kfg_msg_put(m, -1, &dir_in);
    int r = append(p, m);
    if (r != KFG_OK) {
        pend_free(p);
        return r;
    }
    kfg_msg_free(m);
    return KFG_OK;
}

/* ------------------------------------------------------------------------ */
/* Outbound: answers, deliveries, retries, receipts */

struct kfg_delivery {
    struct kfg_msg *m;           /* its tenant/channel/instance are re-pointed
                                    at the live instance for every attempt */
    char id[40];
    uint64_t seq;
    char instance[72], tenant[72], channel[72];
    struct kfg_instance *ins;
    unsigned attempt, max_attempts;
    struct event *timer;
    int finished;
    const char *result_status;
    char result_code[64], result_detail[160];
    kfg_busd_final_fn final;     /* told the outcome, for /admin/deliver */
    void *final_arg;
    struct kfg_delivery *prev, *next;   /* B.deliveries, control loop */
};

static void rctx_reply(struct rctx *c, const struct kfg_buf *b)
{
    nng_msg *msg;
    if (b->oom || nng_msg_alloc(&msg, b->len) != 0) {
        /* Nothing to answer with: let the REQ side resend. */
        c->sending = 0;
        if (!atomic_load(&B.stopping))
            nng_ctx_recv(c->ctx, c->aio);
        return;
    }
    memcpy(nng_msg_body(msg), b->p, b->len);
    nng_aio_set_msg(c->aio, msg);
    c->sending = 1;
    nng_ctx_send(c->ctx, c->aio);
}

static void out_answer(struct rctx *c, int ok, const char *id, uint64_t seq, int dup,
                       const char *error, const char *reason)
{
    struct kfg_buf b = { 0 };
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, buf_write);
    if (ok) {
        msgpack_pack_map(&pk, 5);
        PK_LIT(&pk, "v");
        msgpack_pack_uint32(&pk, 1);
        PK_LIT(&pk, "ok");
        msgpack_pack_true(&pk);
        PK_LIT(&pk, "id");
        pk_str(&pk, id, strlen(id));
        PK_LIT(&pk, "seq");
        msgpack_pack_uint64(&pk, seq);
        PK_LIT(&pk, "duplicate");
        if (dup)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
    } else {
        msgpack_pack_map(&pk, 4);
        PK_LIT(&pk, "v");
        msgpack_pack_uint32(&pk, 1);
        PK_LIT(&pk, "ok");
        msgpack_pack_false(&pk);
        PK_LIT(&pk, "error");
        pk_str(&pk, error, strlen(error));
        PK_LIT(&pk, "reason");
        pk_str(&pk, reason ? reason : "", reason ? strlen(reason) : 0);
    }
    rctx_reply(c, &b);
    kfg_buf_free(&b);
}

static struct kfg_instance *live_adapter(const char *name)
{
    for (struct kfg_instance *i = B.gw->live; i; i = i->next)
        if (strcmp(i->name, name) == 0)
            return i->kind == KFG_KIND_ADAPTER && i->state == KFG_INS_RUNNING ? i : NULL;
    return NULL;
}

static void receipt(struct kfg_delivery *d, const char *status, const char *code,
                    const char *detail, int retriable);
static void delivery_attempt(struct kfg_delivery *d);

static void delivery_link(struct kfg_delivery *d)
{
    d->next = B.deliveries;
    if (d->next)
        d->next->prev = d;
    B.deliveries = d;
}

static void delivery_free(struct kfg_delivery *d)
{
    if (d->prev)
        d->prev->next = d->next;
    else if (B.deliveries == d)
        B.deliveries = d->next;
    if (d->next)
        d->next->prev = d->prev;
    if (d->final)
        d->final(d->final_arg, d->id, d->seq,
                 d->result_status ? d->result_status : KFG_ENV_STATUS_FAILED,
                 d->result_code, d->result_detail);
    if (d->timer)
        event_free(d->timer);
    if (d->ins)
        kfg_instance_unref(d->ins);
    kfg_msg_free(d->m);
    free(d);
}

/* The envelope's deadline (ms since the epoch), 0 = none. */
static int64_t delivery_deadline(const struct kfg_delivery *d)
{
    struct kfg_str dl = kfg_msg_get(d->m, KFG_ENV_DEADLINE);
    const struct kfg_field *dlf = kfg_msg_field(d->m, KFG_ENV_DEADLINE);
    return dlf && (dlf->type == KFG_F_INT || dlf->type == KFG_F_UINT) ? dlf->ival
           : dl.ptr ? strtoll(dl.ptr, NULL, 10) : 0;
}

static void retry_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    delivery_attempt(arg);
}

/* Control loop. The instance is looked up by name at every attempt, so a
 * retry after a reload goes to the instance's new generation. */
static void delivery_attempt(struct kfg_delivery *d)
{
    if (d->ins) {
        kfg_instance_unref(d->ins);
        d->ins = NULL;
    }
    struct kfg_instance *ins = atomic_load(&B.stopping) ? NULL : live_adapter(d->instance);
    if (!ins) {
        d->m->tenant = d->tenant;
        d->m->channel = d->channel;
        d->m->instance = d->instance;
        receipt(d, "failed", "instance_unavailable",
                "the delivering instance is not running", 1);
        delivery_free(d);
        return;
    }
    int64_t deadline = delivery_deadline(d);
    if (deadline > 0 && now_ms() > deadline) {
        d->m->tenant = d->tenant;
        d->m->channel = d->channel;
        d->m->instance = d->instance;
        receipt(d, KFG_ENV_STATUS_FAILED, "expired", "the envelope's deadline passed", 0);
        delivery_free(d);
        return;
    }
    kfg_instance_ref(ins);
    d->ins = ins;
    d->attempt++;
    d->finished = 0;
    d->m->tenant = ins->tenant;
    d->m->channel = ins->plugin->name;
    d->m->instance = ins->name;
    int r = ins->plugin->deliver(ins->ctx, d->m, d);
    if (r != KFG_OK && !d->finished)
        kfg_busd_delivered(d, r == KFG_RETRY || r == KFG_AGAIN ? KFG_RETRY : KFG_EFAIL, NULL,
                          "the adapter refused the message");
}

void kfg_busd_delivered(struct kfg_delivery *d, int result, const char *channel_code,
                       const char *detail)
{
    kfg_busd_delivered2(d, result, channel_code, detail, 0);
}

unsigned kfg_busd_delivery_attempt(const struct kfg_delivery *d)
{
    return d ? d->attempt : 0;
}

void kfg_busd_delivered2(struct kfg_delivery *d, int result, const char *channel_code,
                         const char *detail, uint64_t retry_after_ms)
{
    if (!d || d->finished)
        return;
    d->finished = 1;
    struct kfg_instance *ins = d->ins;
    if (result == KFG_OK) {
        kfg_metric_add(ins->m_delivered, 1);
        receipt(d, "sent", channel_code, detail, 0);
        delivery_free(d);
        return;
    }
    kfg_metric_add(ins->m_delivery_failed, 1);
    unsigned max = d->max_attempts ? d->max_attempts : B.retry_max;
    if (result == KFG_RETRY && d->attempt < max && !atomic_load(&B.stopping)) {
        /* Exponential backoff with full jitter in [cap/2, cap]. */
        uint64_t cap = (uint64_t)B.retry_base_ms << (d->attempt - 1 < 20 ? d->attempt - 1 : 20);
        if (cap > B.retry_cap_ms)
            cap = B.retry_cap_ms;
        uint32_t rnd = 0;
        if (getrandom(&rnd, sizeof rnd, 0) != sizeof rnd)
            rnd = (uint32_t)now_ms();
        uint64_t ms = cap / 2 + (cap / 2 ? rnd % (cap / 2 + 1) : 0);
        /* The channel's own Retry-After wins over a shorter backoff, but a
         * wait past the deadline would only end in "expired": fail now. */
        if (retry_after_ms > ms)
            ms = retry_after_ms;
        int64_t deadline = delivery_deadline(d);
        if (deadline > 0 && now_ms() + (int64_t)ms > deadline) {
            kfg_log(KFG_LOG_WARN, ins->name, NULL,
                    "delivery of %s failed (attempt %u, code %s: %s); the next attempt "
                    "would fall after its deadline", d->id, d->attempt,
                    channel_code ? channel_code : "-", detail ? detail : "-");
            receipt(d, KFG_ENV_STATUS_FAILED, "expired",
                    "the envelope's deadline falls before the next attempt", 0);
            delivery_free(d);
            return;
        }
        kfg_log(KFG_LOG_WARN, ins->name, NULL,
                "delivery of %s failed (attempt %u, code %s: %s); retrying in %llu ms", d->id,
                d->attempt, channel_code ? channel_code : "-", detail ? detail : "-",
                (unsigned long long)ms);
        kfg_metric_add(B.m_retries, 1);
        if (!d->timer)
            d->timer = evtimer_new(kfg_loop_base(B.gw->control), retry_fire, d);
        struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000 };
        if (d->timer && evtimer_add(d->timer, &tv) == 0)
            return;
    }
    kfg_log(KFG_LOG_WARN, ins->name, NULL, "delivery of %s failed for good (code %s: %s)",
            d->id, channel_code ? channel_code : "-", detail ? detail : "-");
    receipt(d, "failed", channel_code, detail, result == KFG_RETRY);
    delivery_free(d);
}

static void delivery_start(void *arg)
{
    struct pend *p = arg;
    struct kfg_delivery *d = calloc(1, sizeof(*d));
    if (!d) {
        kfg_error("out of memory: outbound %s is journaled but not delivered", p->id);
        pend_free(p);
        return;
    }
    d->m = p->out;
    p->out = NULL;
    memcpy(d->id, p->id, sizeof(d->id));
    d->seq = p->seq;
    memcpy(d->instance, p->instance, sizeof(d->instance));
    memcpy(d->tenant, p->tenant, sizeof(d->tenant));
    memcpy(d->channel, p->channel, sizeof(d->channel));
    d->final = p->final;
    d->final_arg = p->accept_arg;
    d->max_attempts = p->max_attempts;
    d->m->tenant = d->tenant;
    d->m->channel = d->channel;
    d->m->instance = d->instance;
    delivery_link(d);
    receipt(d, "accepted", NULL, NULL, 0);
    pend_free(p);
    delivery_attempt(d);
}

static void accept_complete(void *arg)
{
    struct pend *p = arg;
    p->accept(p->accept_arg, p->result, p->id, p->seq, p->duplicate,
              p->result == KFG_OK ? NULL : "busy",
              p->result == KFG_OK ? NULL : "the journal could not store it");
    if (p->result == KFG_OK && !p->duplicate)
        delivery_start(p);
    else
        pend_free(p);
}

static void receipt_done(struct pend *p, int result)
{
    if (result != KFG_OK)
        kfg_error("status receipt could not be journaled (%d)", result);
    pend_free(p);
}

/* Writer thread, in sequence order. */
static void committed(void *arg, int result, uint64_t seq, int duplicate)
{
    struct pend *p = arg;
    p->result = result;
    p->seq = seq;
    p->duplicate = duplicate;
    if (result == KFG_OK && !duplicate) {
        size_t tl = p->t->len + 1;
        feed_publish(p->t, seq, p->rec.p + tl, p->rec.len - tl);
        kfg_metric_observe(B.m_commit, mono_s() - p->t0);
    } else if (duplicate) {
        kfg_metric_add(B.m_dup, 1);
        if (p->kind == P_OUT || (p->kind == P_EMIT && p->done2))
            original_id(seq, p->id, sizeof p->id);
    }
    /* With no linger, a batch goes out as soon as the newest record is
     * done (nothing else is on its way); otherwise the linger timer (or a
     * full batch) sends it, so bursts travel in few NNG messages. */
    if (!B.linger_us && !duplicate && seq >= kfg_journal_last_seq(B.j))
        on_commit_batch(NULL);
    switch (p->kind) {
    case P_EMIT:
        if (kfg_loop_post(p->loop, emit_complete, p) < 0)
            pend_free(p);
        return;
    case P_RECEIPT:
        receipt_done(p, result);
        return;
    case P_OUT:
        break;
    }
    if (duplicate)
        kfg_metric_add(B.m_out_dup, 1);
    else if (result == KFG_OK)
        kfg_metric_add(B.m_out_ok, 1);
    if (p->rc) {
        if (result == KFG_OK)
            out_answer(p->rc, 1, p->id, seq, duplicate, NULL, NULL);
        else
            out_answer(p->rc, 0, NULL, 0, 0, "busy", "the journal could not store it");
        p->rc = NULL;
        if (result != KFG_OK || duplicate || kfg_loop_post(B.gw->control, delivery_start, p) < 0)
            pend_free(p);
        return;
    }
    if (kfg_loop_post(B.gw->control, accept_complete, p) < 0)
        pend_free(p);
}

static void receipt(struct kfg_delivery *d, const char *status, const char *code,
                    const char *detail, int retriable)
{
    d->result_status = status;
    snprintf(d->result_code, sizeof d->result_code, "%s", code ? code : "");
    snprintf(d->result_detail, sizeof d->result_detail, "%s", detail ? detail : "");
    const char *tenant = d->tenant, *channel = d->channel;
    struct kfg_msg *r = kfg_msg_new(KFG_ENV_TYPE_STATUS, tenant, channel, d->instance);
    struct pend *p = calloc(1, sizeof(*p));
    if (!r || !p)
        goto fail;
    p->kind = P_RECEIPT;
    p->t = topic_for(tenant, channel, d->instance);
    if (!p->t)
        goto fail;
    kfg_msg_set(r, KFG_ENV_DIR, "out", 3);
    kfg_msg_set(r, KFG_ENV_STATUS, status, strlen(status));
    kfg_msg_set(r, KFG_ENV_REF, d->id, strlen(d->id));
    kfg_msg_set_int(r, KFG_ENV_REF_SEQ, (int64_t)d->seq);
    if (code)
        kfg_msg_set(r, KFG_ENV_CODE, code, strlen(code));
    if (detail)
        kfg_msg_set(r, KFG_ENV_DETAIL, detail, strlen(detail));
    if (!strcmp(status, "failed"))
        kfg_msg_set_bool(r, KFG_ENV_RETRIABLE, retriable);
    kfg_msg_set_int(r, KFG_ENV_ATTEMPTS, (int64_t)d->attempt);
    static const char *const copy[] = { KFG_ENV_CONVERSATION_ID, KFG_ENV_REPLY_TO,
                                        KFG_ENV_RECIPIENT_ID, NULL };
    for (const char *const *k = copy; *k; k++) {
        struct kfg_str v = kfg_msg_get(d->m, *k);
        if (v.ptr)
            kfg_msg_set(r, *k, v.ptr, v.len);
    }
    if (append(p, r) != KFG_OK)
        goto fail;
    kfg_metric_add(!strcmp(status, "sent") ? B.m_rc_sent
                   : !strcmp(status, "failed") ? B.m_rc_failed : NULL, 1);
    kfg_msg_free(r);
    return;
fail:
    kfg_error("status receipt '%s' for %s could not be journaled", status, d->id);
    kfg_msg_free(r);
    if (p)
        pend_free(p);
}

/* An outbound envelope the core (or /admin/deliver) handed us. Control loop. */
struct admit {
    struct kfg_msg *m;
    struct rctx *rc;
    kfg_busd_accept_fn accept;
    kfg_busd_final_fn final;
    unsigned max_attempts;
    void *accept_arg;
};

static void admit_fail(struct admit *a, const char *error, const char *reason)
{
    kfg_metric_add(B.m_out_rej, 1);
    kfg_log(KFG_LOG_INFO, NULL, NULL, "outbound envelope rejected: %s: %s", error, reason);
    if (a->rc)
        out_answer(a->rc, 0, NULL, 0, 0, error, reason);
    else
        a->accept(a->accept_arg, KFG_EINVAL, NULL, 0, 0, error, reason);
    kfg_msg_free(a->m);
    free(a);
}

static void admit(void *arg)
{
    struct admit *a = arg;
    char reason[200];
    struct kfg_str name = kfg_msg_get(a->m, KFG_ENV_INSTANCE);
    if (atomic_load(&B.stopping))
        return admit_fail(a, "stopping", "the gateway is shutting down");
    if (!name.ptr || !name.len || name.len >= 72)
        return admit_fail(a, "invalid", "missing required field 'instance'");
    char iname[72];
    memcpy(iname, name.ptr, name.len);
    iname[name.len] = '\0';
    struct kfg_instance *ins = live_adapter(iname);
    if (!ins) {
        snprintf(reason, sizeof reason, "no running adapter instance '%s'", iname);
        return admit_fail(a, "unknown_instance", reason);
    }
    if (!ins->plugin->deliver) {
        snprintf(reason, sizeof reason, "instance '%s' cannot deliver", iname);
        return admit_fail(a, "not_deliverable", reason);
    }
    struct kfg_str tenant = kfg_msg_get(a->m, KFG_ENV_TENANT);
    if (tenant.ptr && (strlen(ins->tenant) != tenant.len ||
                       memcmp(ins->tenant, tenant.ptr, tenant.len) != 0)) {
        snprintf(reason, sizeof reason, "field 'tenant': instance '%s' belongs to tenant '%s'",
                 iname, ins->tenant);
        return admit_fail(a, "invalid", reason);
    }
    struct pend *p = calloc(1, sizeof(*p));
    if (!p)
        return admit_fail(a, "busy", "out of memory");
    p->kind = P_OUT;
    p->t = topic_for(ins->tenant, ins->plugin->name, ins->name);
    p->rc = a->rc;
    p->accept = a->accept;
    p->final = a->final;
    p->max_attempts = a->max_attempts;
    p->accept_arg = a->accept_arg;
    snprintf(p->instance, sizeof p->instance, "%s", iname);
    snprintf(p->tenant, sizeof p->tenant, "%s", ins->tenant);
    snprintf(p->channel, sizeof p->channel, "%s", ins->plugin->name);
    /* Delivered after commit, possibly after a reload destroyed `ins`: the
     * message borrows the pend's copies, never the instance's strings. It
     * is in place before append because the commit may run at once. */
    a->m->tenant = p->tenant;
    a->m->channel = p->channel;
    a->m->instance = p->instance;
    p->out = a->m;
    int r = p->t ? append(p, a->m) : KFG_EINVAL;
    if (r != KFG_OK) {
        p->rc = NULL;
        p->out = NULL;
        pend_free(p);
        return admit_fail(a, r == KFG_AGAIN ? "busy" : "stopping",
                          r == KFG_AGAIN ? "the journal is over its queue limit; retry later"
                                         : "the journal is closed");
    }
    free(a);
}

void kfg_busd_submit(const void *envelope, size_t len, unsigned max_attempts,
                     kfg_busd_accept_fn done, kfg_busd_final_fn final, void *arg)
{
    char reason[200] = "";
    struct admit *a = calloc(1, sizeof(*a));
    if (!a) {
        done(arg, KFG_ENOMEM, NULL, 0, 0, "busy", "out of memory");
        return;
    }
    a->accept = done;
    a->final = final;
    a->max_attempts = max_attempts;
    a->accept_arg = arg;
    if (kfg_env_decode_outbound(envelope, len, &a->m, reason, sizeof reason) != 0) {
        done(arg, KFG_EINVAL, NULL, 0, 0, "invalid", reason);
        free(a);
        return;
    }
    admit(a);
}

/* ------------------------------------------------------------------------ */
/* host->replay: an instance reads its own records back (a channel resuming
 * a client). Journal reads may touch the disk, so they run on one replay
 * thread, never on a loop; results hop back to the caller's loop. One thread
 * keeps a reconnect storm from becoming a thread storm: jobs queue. */

#define HREPLAY_DEFAULT_MAX 1000u
#define HREPLAY_MAX 100000u
#define HREPLAY_SCAN_MAX 1000000u    /* records examined per job */

struct hreplay {
    struct hreplay *next;
    struct kfg_instance *ins;
    struct kfg_loop *loop;
    struct topic *t;
    uint64_t from, next_seq;
    uint32_t max, dirs, scanned;
    char *conv;
    kfg_replay_each each;
    kfg_replay_done done;
    void *arg;
    int result, more;
    struct kfg_msg **msgs;
    uint64_t *seqs;
    size_t n;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t th;
    int started, quit;
    struct hreplay *head, **tail;
} HR = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static void hreplay_free(struct hreplay *h)
{
    for (size_t i = 0; i < h->n; i++)
        kfg_msg_free(h->msgs[i]);
    free(h->msgs);
    free(h->seqs);
    free(h->conv);
    kfg_instance_unref(h->ins);
    free(h);
}

/* On the caller's loop. */
static void hreplay_deliver(void *arg)
{
    struct hreplay *h = arg;
    size_t i = 0;
    for (; i < h->n; i++)
        if (h->each(h->arg, h->seqs[i], h->msgs[i]) != 0)
            break;
    uint64_t next = h->next_seq;
    int more = h->more;
    if (i < h->n) {
        next = h->seqs[i] + 1;
        more = 1;
    }
    h->done(h->arg, h->result, next, more);
    hreplay_free(h);
}

static int hreplay_rec(void *arg, uint64_t seq, int64_t accepted_ms, const void *key,
                       size_t keylen, const void *payload, size_t len)
{
    struct hreplay *h = arg;
    (void)accepted_ms, (void)key, (void)keylen;
    h->next_seq = seq + 1;
    if (++h->scanned >= HREPLAY_SCAN_MAX)
        h->more = 1;
    const char *p = payload, *nul = memchr(p, '\0', len);
    if (!nul || (size_t)(nul - p) != h->t->len || memcmp(p, h->t->name, h->t->len) != 0)
        return h->more;
    struct kfg_msg *m = record_msg(payload, len);
    if (!m)
        return h->more;
    struct kfg_str dir = kfg_msg_get(m, KFG_ENV_DIR);
    int out = dir.len == 3 && memcmp(dir.ptr, "out", 3) == 0;
    int status = strcmp(m->type, KFG_ENV_TYPE_STATUS) == 0;
    int keep = !status && (h->dirs & (out ? KFG_REPLAY_OUT : KFG_REPLAY_IN));
    if (keep && h->conv) {
        struct kfg_str c = kfg_msg_get(m, "conversation.id");
        keep = c.ptr && c.len == strlen(h->conv) && memcmp(c.ptr, h->conv, c.len) == 0;
    }
    if (!keep) {
        kfg_msg_free(m);
        return h->more;
    }
    h->msgs[h->n] = m;
    h->seqs[h->n] = seq;
    if (++h->n >= h->max) {
        h->more = 1;
        return 1;
    }
    return h->more;
}

static void *hreplay_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&HR.mu);
    for (;;) {
        while (!HR.head && !HR.quit)
            pthread_cond_wait(&HR.cv, &HR.mu);
        struct hreplay *h = HR.head;
        if (!h)
            break;
        HR.head = h->next;
        if (!HR.head)
            HR.tail = &HR.head;
        pthread_mutex_unlock(&HR.mu);
        h->next_seq = h->from;
        if (HR.quit) {
            h->result = KFG_ESTOPPED;
        } else {
            int r = kfg_journal_read(B.j, h->from, 0, hreplay_rec, h);
            h->result = r < 0 ? r : KFG_OK;
            /* A stop at the end of what is committed is not "more". */
            if (h->more && h->next_seq > kfg_journal_committed_seq(B.j))
                h->more = 0;
        }
        if (kfg_loop_post(h->loop, hreplay_deliver, h) < 0)
            hreplay_free(h);
        pthread_mutex_lock(&HR.mu);
    }
    pthread_mutex_unlock(&HR.mu);
    return NULL;
}

int kfg_busd_replay(struct kfg_instance *ins, const struct kfg_replay_query *q,
                    kfg_replay_each each, kfg_replay_done done, void *arg)
{
    struct kfg_loop *loop = kfg_loop_current();
    if (!ins || !q || !each || !done || !loop)
        return KFG_EINVAL;
    if (!B.j || atomic_load(&B.stopping))
        return KFG_ESTOPPED;
    struct topic *t = __atomic_load_n((struct topic **)&ins->bus_topic, __ATOMIC_ACQUIRE);
    if (!t) {
        t = topic_for(ins->tenant, ins->plugin->name, ins->name);
        __atomic_store_n((struct topic **)&ins->bus_topic, t, __ATOMIC_RELEASE);
    }
    struct hreplay *h = calloc(1, sizeof(*h));
    if (!t || !h) {
        free(h);
        return t ? KFG_ENOMEM : KFG_EINVAL;
    }
    h->t = t;
    h->loop = loop;
    h->from = q->from_seq ? q->from_seq : 1;
    h->max = q->max ? (q->max > HREPLAY_MAX ? HREPLAY_MAX : q->max) : HREPLAY_DEFAULT_MAX;
    h->dirs = q->directions ? q->directions : KFG_REPLAY_IN | KFG_REPLAY_OUT;
    h->each = each;
    h->done = done;
    h->arg = arg;
    h->msgs = malloc(h->max * sizeof(*h->msgs));
    h->seqs = malloc(h->max * sizeof(*h->seqs));
    if (q->conversation)
        h->conv = strdup(q->conversation);
    h->ins = ins;
    kfg_instance_ref(ins);
    if (!h->msgs || !h->seqs || (q->conversation && !h->conv)) {
        hreplay_free(h);
        return KFG_ENOMEM;
    }
    pthread_mutex_lock(&HR.mu);
    int r = KFG_OK;
    if (HR.quit) {
        r = KFG_ESTOPPED;
    } else if (!HR.started) {
        HR.tail = &HR.head;
        if (pthread_create(&HR.th, NULL, hreplay_main, NULL) != 0)
            r = KFG_ENOMEM;
        else
            HR.started = 1;
    }
    if (r == KFG_OK) {
        *HR.tail = h;
        HR.tail = &h->next;
        pthread_cond_signal(&HR.cv);
    }
    pthread_mutex_unlock(&HR.mu);
    if (r != KFG_OK)
        hreplay_free(h);
    return r;
}

/* Before the journal closes: queued jobs finish with KFG_ESTOPPED. */
static void hreplay_stop(void)
{
    pthread_mutex_lock(&HR.mu);
    HR.quit = 1;
    int started = HR.started;
    pthread_cond_broadcast(&HR.cv);
    pthread_mutex_unlock(&HR.mu);
    if (started)
        pthread_join(HR.th, NULL);
    pthread_mutex_lock(&HR.mu);
    HR.started = 0;
    HR.quit = 0;
    pthread_mutex_unlock(&HR.mu);
}

/* ------------------------------------------------------------------------ */
/* Replay */

struct replay_q {
    uint64_t from, until;
    uint32_t max;
    const char *topic;
    size_t tlen;
    int exact;
    uint32_t n;
    uint64_t next;
    struct kfg_buf body;
    msgpack_packer pk;
};

static int replay_rec(void *arg, uint64_t seq, int64_t accepted_ms, const void *key,
                      size_t keylen, const void *payload, size_t len)
{
    struct replay_q *q = arg;
    (void)accepted_ms, (void)key, (void)keylen;
    if (q->until && seq > q->until)
        return 1;
    q->next = seq + 1;
    const char *p = payload, *nul = memchr(p, '\0', len);
    if (!nul)
        return 0;
    size_t tl = (size_t)(nul - p);
    if (tl < q->tlen || memcmp(p, q->topic, q->tlen) != 0 || (q->exact && tl != q->tlen))
        return 0;
    if (q->body.len + len > REPLAY_MAX_BYTES && q->n > 0) {
        q->next = seq;      /* this one starts the next answer */
        return 1;
    }
    msgpack_pack_array(&q->pk, 3);
    msgpack_pack_uint64(&q->pk, seq);
    pk_str(&q->pk, p, tl);
    msgpack_pack_bin(&q->pk, len - tl - 1);
    msgpack_pack_bin_body(&q->pk, nul + 1, len - tl - 1);
    return ++q->n >= q->max;
}

static void replay_error(struct kfg_buf *b, const char *why)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, b, buf_write);
    msgpack_pack_map(&pk, 2);
    PK_LIT(&pk, "v");
    msgpack_pack_uint32(&pk, 1);
    PK_LIT(&pk, "error");
    pk_str(&pk, why, strlen(why));
}

static int obj_key(const msgpack_object_kv *kv, const char *k)
{
    return kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(k) &&
           memcmp(kv->key.via.str.ptr, k, kv->key.via.str.size) == 0;
}

/* NNG thread. */
static void replay_answer(const void *req, size_t len, struct kfg_buf *out)
{
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    struct replay_q q = { .max = UINT32_MAX, .topic = "" };
    int have_from = 0;
    if (msgpack_unpack_next(&u, req, len, &off) != MSGPACK_UNPACK_SUCCESS ||
        u.data.type != MSGPACK_OBJECT_MAP) {
        replay_error(out, "request is not a msgpack map");
        goto done;
    }
    for (uint32_t i = 0; i < u.data.via.map.size; i++) {
        const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
        const msgpack_object *v = &kv->val;
        if (obj_key(kv, "from") || obj_key(kv, "max") || obj_key(kv, "until")) {
            if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
                replay_error(out, "'from', 'max' and 'until' must be unsigned integers");
                goto done;
            }
            if (obj_key(kv, "from"))
                q.from = v->via.u64, have_from = 1;
            else if (obj_key(kv, "max"))
                q.max = v->via.u64 > UINT32_MAX ? UINT32_MAX : (uint32_t)v->via.u64;
            else
                q.until = v->via.u64;
        } else if (obj_key(kv, "exact")) {
            if (v->type != MSGPACK_OBJECT_BOOLEAN) {
                replay_error(out, "'exact' must be a boolean");
                goto done;
            }
            q.exact = v->via.boolean;
        } else if (obj_key(kv, "topic")) {
            if (v->type != MSGPACK_OBJECT_STR) {
                replay_error(out, "'topic' must be a string");
                goto done;
            }
            q.topic = v->via.str.ptr;
            q.tlen = v->via.str.size;
        }
    }
    if (!have_from) {
        replay_error(out, "missing required field 'from'");
        goto done;
    }
    if (q.max > B.replay_max)
        q.max = B.replay_max;
    if (q.from == 0)
        q.from = 1;
    uint64_t first = kfg_journal_first_seq(B.j), last = kfg_journal_committed_seq(B.j);
    q.next = q.from;
    msgpack_packer_init(&q.pk, &q.body, buf_write);
    /* max 0 asks only for first/last. Otherwise examine a bounded number of
     * records per answer, so a narrow topic over a long journal cannot pin
     * an NNG thread; `next` says where to go on. */
    if (q.max > 0)
        kfg_journal_read(B.j, q.from, (size_t)q.max * 64, replay_rec, &q);
    if (q.next < q.from)
        q.next = q.from;
    if (q.next <= last && q.n < q.max && !(q.until && q.next > q.until) && q.next < first)
        q.next = first;
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write);
    msgpack_pack_map(&pk, 5);
    PK_LIT(&pk, "v");
    msgpack_pack_uint32(&pk, 1);
    PK_LIT(&pk, "recs");
    msgpack_pack_array(&pk, q.n);
    kfg_buf_append(out, q.body.p, q.body.len);
    PK_LIT(&pk, "next");
    msgpack_pack_uint64(&pk, q.next);
    PK_LIT(&pk, "last");
    msgpack_pack_uint64(&pk, last);
    PK_LIT(&pk, "first");
    msgpack_pack_uint64(&pk, first);
    kfg_metric_add(B.m_replay, 1);
done:
    kfg_buf_free(&q.body);
    msgpack_unpacked_destroy(&u);
}

static void outbound_request(struct rctx *c, const void *req, size_t len)
{
    char reason[200] = "";
    struct admit *a = calloc(1, sizeof(*a));
    if (!a) {
        out_answer(c, 0, NULL, 0, 0, "busy", "out of memory");
        return;
    }
    a->rc = c;
    if (kfg_env_decode_outbound(req, len, &a->m, reason, sizeof reason) != 0) {
        free(a);
        kfg_metric_add(B.m_out_rej, 1);
        kfg_log(KFG_LOG_INFO, NULL, NULL, "outbound envelope rejected: invalid: %s", reason);
        out_answer(c, 0, NULL, 0, 0, "invalid", reason);
        return;
    }
    if (kfg_loop_post(B.gw->control, admit, a) < 0) {
        kfg_msg_free(a->m);
        free(a);
        out_answer(c, 0, NULL, 0, 0, "stopping", "the gateway is shutting down");
    }
}

/* NNG thread: one context's state machine, receive -> answer -> receive. */
static void rctx_cb(void *arg)
{
    struct rctx *c = arg;
    int rv = nng_aio_result(c->aio);
    if (c->sending) {
        c->sending = 0;
        if (rv != 0)
            nng_msg_free(nng_aio_get_msg(c->aio));
        if (!atomic_load(&B.stopping))
            nng_ctx_recv(c->ctx, c->aio);
        return;
    }
    if (rv != 0) {
        if (rv != NNG_ECLOSED && rv != NNG_ECANCELED && !atomic_load(&B.stopping))
            nng_ctx_recv(c->ctx, c->aio);
        return;
    }
    nng_msg *req = nng_aio_get_msg(c->aio);
    if (c->outbound) {
        outbound_request(c, nng_msg_body(req), nng_msg_len(req));
        nng_msg_free(req);
        return;
    }
    struct kfg_buf b = { 0 };
    replay_answer(nng_msg_body(req), nng_msg_len(req), &b);
    nng_msg_free(req);
    rctx_reply(c, &b);
    kfg_buf_free(&b);
}

/* ------------------------------------------------------------------------ */
/* Start and stop */

static int mkdir_for_ipc(const char *url, struct kfg_buf *errs)
{
    if (strncmp(url, "ipc://", 6) != 0)
        return 0;
    const char *path = url + 6;
    if (strlen(path) > 107) {
        kfg_buf_printf(errs, "bus: ipc path '%s' is longer than 107 bytes\n", path);
        return -1;
    }
    char dir[128];
    snprintf(dir, sizeof dir, "%s", path);
    for (char *s = dir + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
            kfg_buf_printf(errs, "bus: cannot create %s: %s\n", dir, strerror(errno));
            return -1;
        }
        *s = '/';
    }
    return 0;
}

/* mkdir -p for the journal directory. */
static int mkdirs(const char *path, struct kfg_buf *errs)
{
    char dir[4096];
    if (snprintf(dir, sizeof dir, "%s/", path) >= (int)sizeof dir)
        return -1;
    for (char *s = dir + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
            kfg_buf_printf(errs, "journal: cannot create %s: %s\n", dir, strerror(errno));
            return -1;
        }
        *s = '/';
    }
    return 0;
}

static int listen_on(nng_socket s, const char *what, const char *url, int mode,
                     struct kfg_buf *errs)
{
    nng_listener l;
    int rv;
    if (mkdir_for_ipc(url, errs) < 0)
        return -1;
    if ((rv = nng_listener_create(&l, s, url)) != 0)
        goto fail;
    if (strncmp(url, "ipc://", 6) == 0 &&
        (rv = nng_listener_set_int(l, NNG_OPT_IPC_PERMISSIONS, mode)) != 0)
        goto fail;
    if ((rv = nng_listener_start(l, 0)) != 0)
        goto fail;
    return 0;
fail:
    kfg_buf_printf(errs, "bus: cannot listen for %s on %s: %s%s\n", what, url,
                   nng_strerror(rv),
                   rv == NNG_EADDRINUSE ? " (is another kfgate running?)" : "");
    return -1;
}

/* Outbound records whose delivery ended (a sent/delivered/failed receipt
 * names them) are done; the others were accepted but the gateway stopped
 * before their outcome, and are delivered again after the start. Receipts
 * follow their envelope closely, so the search runs from the newest. */
static void undelivered_add(uint64_t seq)
{
    if (B.nundelivered == B.capundelivered) {
        size_t cap = B.capundelivered ? 2 * B.capundelivered : 64;
        struct undelivered *v = realloc(B.undelivered, cap * sizeof(*v));
        if (!v)
            return;
        B.undelivered = v;
        B.capundelivered = cap;
    }
    B.undelivered[B.nundelivered++] = (struct undelivered){ seq, 0 };
}

static void undelivered_done(uint64_t seq, int accepted_only)
{
    for (size_t i = B.nundelivered; i-- > 0;)
        if (B.undelivered[i].seq == seq) {
            if (accepted_only) {
                B.undelivered[i].accepted = 1;
                return;
            }
            memmove(&B.undelivered[i], &B.undelivered[i + 1],
                    (B.nundelivered - i - 1) * sizeof(*B.undelivered));
            B.nundelivered--;
            return;
        }
}

static int scan_rec(void *arg, uint64_t seq, int64_t accepted_ms, const void *key,
                    size_t keylen, const void *payload, size_t len)
{
    uint64_t *next = arg;
    (void)accepted_ms, (void)key, (void)keylen;
    *next = seq + 1;
    const char *nul = memchr(payload, '\0', len);
    if (!nul)
        return 0;
    size_t tl = (size_t)(nul - (const char *)payload);
    struct topic *t = topic_get(payload, tl);
    if (t)
        t->last = seq;
    /* Only outbound records and receipts (dir "out", as fixstrs) are decoded. */
    const char *env = nul + 1;
    size_t elen = len - tl - 1;
    if (!memmem(env, elen, "\xa3" "dir" "\xa3" "out", 8))
        return 0;
    struct kfg_msg *m = record_msg(payload, len);
    if (!m)
        return 0;
    if (strcmp(m->type, KFG_ENV_TYPE_STATUS) != 0) {
        undelivered_add(seq);
    } else {
        struct kfg_str st = kfg_msg_get(m, KFG_ENV_STATUS);
        const struct kfg_field *rs = kfg_msg_field(m, KFG_ENV_REF_SEQ);
        if (st.ptr && rs)
            undelivered_done((uint64_t)rs->ival, !strcmp(st.ptr, KFG_ENV_STATUS_ACCEPTED));
    }
    kfg_msg_free(m);
    return 0;
}

static int redeliver_rec(void *arg, uint64_t seq, int64_t accepted_ms, const void *key,
                         size_t keylen, const void *payload, size_t len)
{
    const struct undelivered *u = arg;
    (void)accepted_ms, (void)key, (void)keylen;
    struct kfg_msg *m = record_msg(payload, len);
    if (!m)
        return 0;
    struct kfg_delivery *d = calloc(1, sizeof(*d));
    struct kfg_str tenant = kfg_msg_get(m, KFG_ENV_TENANT);
    struct kfg_str channel = kfg_msg_get(m, KFG_ENV_CHANNEL);
    struct kfg_str inst = kfg_msg_get(m, KFG_ENV_INSTANCE);
    if (!d || !tenant.ptr || !channel.ptr || !inst.ptr) {
        free(d);
        kfg_msg_free(m);
        return 0;
    }
    d->m = m;
    snprintf(d->id, sizeof d->id, "%s", m->id);
    d->seq = seq;
    snprintf(d->instance, sizeof d->instance, "%.*s", (int)inst.len, inst.ptr);
    snprintf(d->tenant, sizeof d->tenant, "%.*s", (int)tenant.len, tenant.ptr);
    snprintf(d->channel, sizeof d->channel, "%.*s", (int)channel.len, channel.ptr);
    kfg_info("outbound %s (seq %llu) was accepted before the last stop without an "
             "outcome: delivering it again", d->id, (unsigned long long)seq);
    delivery_link(d);
    if (!u->accepted) {
        /* Stopped between its commit and its "accepted" receipt: every
         * outbound gets that receipt first, once. */
        d->m->tenant = d->tenant;
        d->m->channel = d->channel;
        d->m->instance = d->instance;
        receipt(d, KFG_ENV_STATUS_ACCEPTED, NULL, NULL, 0);
    }
    delivery_attempt(d);
    return 0;
}

/* Posted at start: runs once the control loop turns, after the instances of
 * the first generation started. */
static void redeliver(void *arg)
{
    (void)arg;
    for (size_t i = 0; i < B.nundelivered && !atomic_load(&B.stopping); i++)
        kfg_journal_read(B.j, B.undelivered[i].seq, 1, redeliver_rec, &B.undelivered[i]);
    free(B.undelivered);
    B.undelivered = NULL;
    B.nundelivered = B.capundelivered = 0;
}

static int open_rep(nng_socket *s, const char *what, const char *url, int mode, int outbound,
                    size_t nctx, size_t at, struct kfg_buf *errs)
{
    int rv = nng_rep0_open(s);
    if (rv != 0) {
        kfg_buf_printf(errs, "bus: %s socket: %s\n", what, nng_strerror(rv));
        return -1;
    }
    nng_socket_set_size(*s, NNG_OPT_RECVMAXSZ, REQ_MAX_BYTES);
    if (listen_on(*s, what, url, mode, errs) < 0)
        return -1;
    for (size_t i = at; i < at + nctx; i++) {
        struct rctx *c = &B.ctxs[i];
        c->outbound = outbound;
        if ((rv = nng_ctx_open(&c->ctx, *s)) != 0 ||
            (rv = nng_aio_alloc(&c->aio, rctx_cb, c)) != 0) {
            kfg_buf_printf(errs, "bus: %s context: %s\n", what, nng_strerror(rv));
            return -1;
        }
    }
    return 0;
}

int kfg_busd_start(struct kfg_gateway *gw, const struct kfg_config *cfg, struct kfg_buf *errs)
{
    char err[300];
    memset(&B, 0, sizeof B);
    B.gw = gw;
    pthread_mutex_init(&B.mu, NULL);
    B.batch_max = cfg->bus.batch_max;
    B.batch_bytes = cfg->bus.batch_bytes;
    B.linger_us = cfg->bus.batch_linger_us;
    B.validate = cfg->bus.validate_inbound;
    if (B.linger_us) {
        pthread_condattr_t ca;
        pthread_condattr_init(&ca);
        pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
        pthread_cond_init(&B.linger_cv, &ca);
        pthread_condattr_destroy(&ca);
        B.linger_quit = 0;
        if (pthread_create(&B.linger_th, NULL, linger_main, NULL) != 0) {
            kfg_buf_printf(errs, "bus: cannot start the batch linger thread\n");
            return -1;
        }
        B.linger_started = 1;
    }
    B.replay_max = cfg->bus.replay_max;
    B.retry_max = cfg->bus.retry_max;
    B.retry_base_ms = cfg->bus.retry_base_ms;
    B.retry_cap_ms = cfg->bus.retry_cap_ms;

    struct kfg_journal_opts jo;
    kfg_journal_opts_init(&jo);
    jo.dir = cfg->journal.dir;
    jo.segment_bytes = cfg->journal.segment_bytes;
    jo.fsync = cfg->journal.fsync == KFG_FSYNC_CFG_ALWAYS ? KFG_FSYNC_ALWAYS
               : cfg->journal.fsync == KFG_FSYNC_CFG_NEVER ? KFG_FSYNC_NEVER
                                                           : KFG_FSYNC_INTERVAL;
    jo.interval_ms = cfg->journal.fsync_interval_ms;
    jo.max_bytes = cfg->journal.max_bytes;
    jo.max_age_s = cfg->journal.max_age_s;
    jo.dedupe_window_s = cfg->journal.dedupe_window_s ? cfg->journal.dedupe_window_s
                                                      : KFG_JOURNAL_NO_DEDUPE;
    jo.max_pending = cfg->journal.max_pending;
    if (mkdirs(jo.dir, errs) < 0)
        return -1;
    if (kfg_journal_open(&jo, &B.j, err, sizeof err) != KFG_OK) {
        kfg_buf_printf(errs, "journal %s: %s\n", jo.dir, err);
        return -1;
    }
    /* Each topic's last sequence, for the `prev` of its first batch. */
    double t0 = mono_s();
    uint64_t next = kfg_journal_first_seq(B.j), last = kfg_journal_committed_seq(B.j);
    pthread_mutex_lock(&B.mu);
    while (next && next <= last) {
        uint64_t before = next;
        kfg_journal_read(B.j, next, 65536, scan_rec, &next);
        if (next == before)
            break;
    }
    pthread_mutex_unlock(&B.mu);
    kfg_info("journal %s: records %llu..%llu, %zu topic(s), %zu outbound to deliver again, "
             "scanned in %.0f ms", jo.dir, (unsigned long long)kfg_journal_first_seq(B.j),
             (unsigned long long)last, B.ntopics, B.nundelivered, (mono_s() - t0) * 1000);
    if (B.nundelivered)
        kfg_loop_post(gw->control, redeliver, NULL);

    B.m_published = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_bus_published_total",
                                   "Records published on the feed.", NULL);
    B.m_batches = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_bus_batches_total",
                                 "Feed messages (batches) published.", NULL);
    B.m_pending = kfg_metric_get(KFG_METRIC_GAUGE, "kfgate_journal_pending",
                                 "Appends waiting for their commit.", NULL);
    B.m_last = kfg_metric_get(KFG_METRIC_GAUGE, "kfgate_journal_last_seq",
                              "Last committed journal sequence.", NULL);
    B.m_commit = kfg_metric_get(KFG_METRIC_HISTOGRAM, "kfgate_journal_commit_seconds",
                                "From append to commit under the fsync policy.", NULL);
    B.m_dup = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_bus_duplicates_total",
                             "Appends answered from the dedupe index.", NULL);
    B.m_replay = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_bus_replay_requests_total",
                                "Replay requests answered.", NULL);
    B.m_out_ok = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_bus_outbound_total",
                                "Outbound envelopes, by outcome.", "outcome=\"accepted\"");
    B.m_out_dup = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_bus_outbound_total", NULL,
                                 "outcome=\"duplicate\"");
    B.m_out_rej = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_bus_outbound_total", NULL,
                                 "outcome=\"rejected\"");
    B.m_rc_sent = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_bus_receipts_total",
                                 "Status receipts published, by status.", "status=\"sent\"");
    B.m_rc_failed = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_bus_receipts_total", NULL,
                                   "status=\"failed\"");
    B.m_retries = kfg_metric_get(KFG_METRIC_COUNTER, "kfgate_bus_delivery_retries_total",
                                 "Delivery attempts scheduled again after a retriable failure.",
                                 NULL);

    int mode = (int)cfg->bus.ipc_mode;
    int rv = nng_pub0_open(&B.pub);
    if (rv != 0) {
        kfg_buf_printf(errs, "bus: feed socket: %s\n", nng_strerror(rv));
        return -1;
    }
    B.have_pub = 1;
    nng_socket_set_int(B.pub, NNG_OPT_SENDBUF, 1024);
    if (listen_on(B.pub, "the feed", cfg->bus.feed, mode, errs) < 0)
        return -1;
    size_t nr = cfg->bus.replay_contexts, no = cfg->bus.outbound_contexts;
    B.ctxs = calloc(nr + no, sizeof(*B.ctxs));
    if (!B.ctxs)
        return -1;
    B.nctx = nr + no;
    if (open_rep(&B.replay, "replay", cfg->bus.replay, mode, 0, nr, 0, errs) < 0)
        return -1;
    B.have_replay = 1;
    if (open_rep(&B.out, "outbound", cfg->bus.outbound, mode, 1, no, nr, errs) < 0)
        return -1;
    B.have_out = 1;
    for (size_t i = 0; i < B.nctx; i++)
        nng_ctx_recv(B.ctxs[i].ctx, B.ctxs[i].aio);

    B.hb = event_new(kfg_loop_base(gw->control), -1, EV_PERSIST, heartbeat, NULL);
    struct timeval tv = { cfg->bus.heartbeat_ms / 1000, (cfg->bus.heartbeat_ms % 1000) * 1000 };
    if (B.hb)
        event_add(B.hb, &tv);
    kfg_info("bus: feed on %s, replay on %s, outbound on %s", cfg->bus.feed, cfg->bus.replay,
             cfg->bus.outbound);
    return 0;
}

void kfg_busd_stop(struct kfg_gateway *gw)
{
    (void)gw;
    atomic_store(&B.stopping, 1);
    if (B.hb) {
        event_free(B.hb);
        B.hb = NULL;
    }
    /* Deliveries still waiting for a retry: they are journaled without an
     * outcome, so the next start delivers them again. */
    while (B.deliveries) {
        B.deliveries->final = NULL;
        delivery_free(B.deliveries);
    }
    free(B.undelivered);
    B.undelivered = NULL;
    /* Closing a socket from outside its callbacks is safe; the pending
     * receives complete with NNG_ECLOSED and are not re-armed. */
    if (B.have_out)
        nng_close(B.out);
    if (B.have_replay)
        nng_close(B.replay);
    B.have_out = B.have_replay = 0;
    hreplay_stop();
    if (B.j) {
        kfg_journal_close(B.j);
        B.j = NULL;
    }
    if (B.linger_started) {
        pthread_mutex_lock(&B.mu);
        B.linger_quit = 1;
        pthread_cond_signal(&B.linger_cv);
        pthread_mutex_unlock(&B.mu);
        pthread_join(B.linger_th, NULL);
        pthread_cond_destroy(&B.linger_cv);
        B.linger_started = 0;
        B.linger_armed = 0;
    }
    on_commit_batch(NULL);
    for (size_t i = 0; i < B.nctx; i++)
        if (B.ctxs[i].aio) {
            nng_aio_stop(B.ctxs[i].aio);
            nng_aio_free(B.ctxs[i].aio);
        }
    free(B.ctxs);
    B.ctxs = NULL;
    B.nctx = 0;
    if (B.have_pub)
        nng_close(B.pub);
    B.have_pub = 0;
    for (size_t i = 0; i < NBUCKETS; i++)
        for (struct topic *t = B.buckets[i], *nx; t; t = nx) {
            nx = t->next;
            kfg_buf_free(&t->body);
            free(t);
        }
    memset(B.buckets, 0, sizeof B.buckets);
    pthread_mutex_destroy(&B.mu);
}
