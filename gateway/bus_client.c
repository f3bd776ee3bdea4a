/*
 * The consumer side of spec/bus.md: see kfgate/bus.h for the API and its
 * ownership rules.
 *
 * A subscription is a small state machine driven by kfg_bus_next on the
 * caller's thread, no threads of its own:
 *
 *   probe (KFG_BUS_LIVE only: learn the node's last seq, C = last)
 *   catch-up (replay from C + 1 with the prefix until next > last)
 *   gap fills (a queue of (topic, until): replay topic from last[topic] + 1)
 *   a held batch (the feed batch whose `prev` opened the gap being filled)
 *   the feed (one message at a time: batch or heartbeat)
 *
 * Every step does at most one network round trip and leaves its records in
 * an output queue that kfg_bus_next drains one per call; a step that fails
 * leaves the state as it was, so calling again resumes. last[topic] is set
 * when a record enters the queue, so each record enters it once.
 *
 * Decoding uses a small bounded msgpack reader of our own rather than
 * msgpack-c's unpacker: msgpack-c allocates `n * sizeof(msgpack_object)` for
 * an array header before reading its elements, so five untrusted bytes can
 * ask for 100 GB. Here every count is checked against the bytes left, nesting
 * is limited, and nothing is allocated but the record array. msgpack-c packs
 * the requests.
 */
#include "kfgate/bus.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <msgpack.h>
#include <nng/nng.h>
#include <nng/protocol/pubsub0/sub.h>
#include <nng/protocol/reqrep0/req.h>

#define DEFAULT_TIMEOUT_MS 5000
#define DEFAULT_REPLAY_MAX 256
#define DEFAULT_MAX_MSG (64u * 1024 * 1024)
#define FEED_RECVBUF 1024
#define REPLAY_RESEND_MS 1000
#define MAX_DEPTH 32
#define MAX_TOPIC 255

const char *kfg_bus_strerror(int err)
{
    switch (err) {
    case KFG_BUS_OK: return "ok";
    case KFG_BUS_ETIMEDOUT: return "timed out";
    case KFG_BUS_ENOMEM: return "out of memory";
    case KFG_BUS_EINVAL: return "invalid argument";
    case KFG_BUS_ECONN: return "connection failed";
    case KFG_BUS_EPROTO: return "protocol error";
    case KFG_BUS_ECLOSED: return "closed";
    default: return "unknown error";
    }
}

static int map_nng(int rv)
{
    switch (rv) {
    case 0: return 0;
    case NNG_ETIMEDOUT: return KFG_BUS_ETIMEDOUT;
    case NNG_ENOMEM: return KFG_BUS_ENOMEM;
    case NNG_ECLOSED: return KFG_BUS_ECLOSED;
    case NNG_EINVAL:
    case NNG_EADDRINVAL:
    case NNG_ENOTSUP: return KFG_BUS_EINVAL;
    default: return KFG_BUS_ECONN;
    }
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------ */
/* Bounded msgpack reader */

struct mpr {
    const uint8_t *p, *e;
};

static size_t mp_left(const struct mpr *r)
{
    return (size_t)(r->e - r->p);
}

static uint64_t mp_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Reads a big-endian length of n bytes after the type byte. */
static int mp_len(struct mpr *r, int n, uint64_t *v)
{
    if (mp_left(r) < (size_t)n + 1)
        return -1;
    *v = mp_be(r->p + 1, n);
    r->p += 1 + n;
    return 0;
}

static int mp_uint(struct mpr *r, uint64_t *v)
{
    if (mp_left(r) < 1)
        return -1;
    uint8_t c = *r->p;
    if (c <= 0x7f) {
        *v = c;
        r->p++;
        return 0;
    }
    int n, sign = 0;
    switch (c) {
    case 0xcc: n = 1; break;
    case 0xcd: n = 2; break;
    case 0xce: n = 4; break;
    case 0xcf: n = 8; break;
    case 0xd0: n = 1, sign = 1; break;
    case 0xd1: n = 2, sign = 1; break;
    case 0xd2: n = 4, sign = 1; break;
    case 0xd3: n = 8, sign = 1; break;
    default: return -1;
    }
    if (mp_left(r) < (size_t)n + 1)
        return -1;
    /* A signed encoding of a non-negative value is accepted. */
    if (sign && (r->p[1] & 0x80))
        return -1;
    return mp_len(r, n, v);
}

static int mp_bool(struct mpr *r, int *v)
{
    if (mp_left(r) < 1 || (*r->p != 0xc2 && *r->p != 0xc3))
        return -1;
    *v = *r->p == 0xc3;
    r->p++;
    return 0;
}

static int mp_bytes(struct mpr *r, uint64_t n, const uint8_t **out)
{
    if (mp_left(r) < n)
        return -1;
    *out = r->p;
    r->p += n;
    return 0;
}

static int mp_str(struct mpr *r, const char **s, size_t *len)
{
    uint64_t n;
    if (mp_left(r) < 1)
        return -1;
    uint8_t c = *r->p;
    if (c >= 0xa0 && c <= 0xbf) {
        n = c & 0x1f;
        r->p++;
    } else if (c == 0xd9 || c == 0xda || c == 0xdb) {
        if (mp_len(r, c == 0xd9 ? 1 : c == 0xda ? 2 : 4, &n) < 0)
            return -1;
    } else {
        return -1;
    }
    const uint8_t *p;
    if (mp_bytes(r, n, &p) < 0)
        return -1;
    *s = (const char *)p;
    *len = (size_t)n;
    return 0;
}

static int mp_bin(struct mpr *r, const uint8_t **b, size_t *len)
{
    uint64_t n;
    if (mp_left(r) < 1)
        return -1;
    uint8_t c = *r->p;
    if (c != 0xc4 && c != 0xc5 && c != 0xc6)
        return -1;
    if (mp_len(r, c == 0xc4 ? 1 : c == 0xc5 ? 2 : 4, &n) < 0 || mp_bytes(r, n, b) < 0)
        return -1;
    *len = (size_t)n;
    return 0;
}

static int mp_container(struct mpr *r, uint8_t fix, uint8_t b16, uint8_t b32, uint64_t *n)
{
    if (mp_left(r) < 1)
        return -1;
    uint8_t c = *r->p;
    if ((c & 0xf0) == fix) {
        *n = c & 0x0f;
        r->p++;
        return 0;
    }
    if (c == b16)
        return mp_len(r, 2, n);
    if (c == b32)
        return mp_len(r, 4, n);
    return -1;
}

static int mp_map(struct mpr *r, uint64_t *n)
{
    return mp_container(r, 0x80, 0xde, 0xdf, n);
}

static int mp_array(struct mpr *r, uint64_t *n)
{
    return mp_container(r, 0x90, 0xdc, 0xdd, n);
}

/* Skips one object of any type. Work is bounded by the bytes left: every
 * element consumes at least one byte. */
static int mp_skip(struct mpr *r, int depth)
{
    if (depth > MAX_DEPTH || mp_left(r) < 1)
        return -1;
    uint8_t c = *r->p;
    uint64_t n;
    const uint8_t *dummy;
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) {
        r->p++;
        return 0;
    }
    if ((c & 0xf0) == 0x80 || c == 0xde || c == 0xdf) {
        if (mp_map(r, &n) < 0)
            return -1;
        for (uint64_t i = 0; i < n; i++)
            if (mp_skip(r, depth + 1) < 0 || mp_skip(r, depth + 1) < 0)
                return -1;
        return 0;
    }
    if ((c & 0xf0) == 0x90 || c == 0xdc || c == 0xdd) {
        if (mp_array(r, &n) < 0)
            return -1;
        for (uint64_t i = 0; i < n; i++)
            if (mp_skip(r, depth + 1) < 0)
                return -1;
        return 0;
    }
    if (c >= 0xa0 && c <= 0xbf) {
        r->p++;
        return mp_bytes(r, c & 0x1f, &dummy);
    }
    switch (c) {
    case 0xc4: case 0xd9: return mp_len(r, 1, &n) < 0 ? -1 : mp_bytes(r, n, &dummy);
    case 0xc5: case 0xda: return mp_len(r, 2, &n) < 0 ? -1 : mp_bytes(r, n, &dummy);
    case 0xc6: case 0xdb: return mp_len(r, 4, &n) < 0 ? -1 : mp_bytes(r, n, &dummy);
    case 0xc7: return mp_len(r, 1, &n) < 0 ? -1 : mp_bytes(r, n + 1, &dummy);
    case 0xc8: return mp_len(r, 2, &n) < 0 ? -1 : mp_bytes(r, n + 1, &dummy);
    case 0xc9: return mp_len(r, 4, &n) < 0 ? -1 : mp_bytes(r, n + 1, &dummy);
    case 0xca: n = 4; break;
    case 0xcb: n = 8; break;
    case 0xcc: case 0xd0: n = 1; break;
    case 0xcd: case 0xd1: n = 2; break;
    case 0xce: case 0xd2: n = 4; break;
    case 0xcf: case 0xd3: n = 8; break;
    case 0xd4: n = 2; break;
    case 0xd5: n = 3; break;
    case 0xd6: n = 5; break;
    case 0xd7: n = 9; break;
    case 0xd8: n = 17; break;
    default: return -1;    /* 0xc1 */
    }
    r->p++;
    return mp_bytes(r, n, &dummy);
}

static int key_is(const char *k, size_t kl, const char *want)
{
    size_t wl = strlen(want);
    return kl == wl && memcmp(k, want, wl) == 0;
}

/* ------------------------------------------------------------------------ */
/* Wire decoders */

static int topic_ok(const char *t, size_t n)
{
    if (n < 1 || n > MAX_TOPIC)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)t[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-' || c == '/'))
            return 0;
    }
    return 1;
}

void kfg_bus_wire_clear(struct kfg_bus_wire *w)
{
    if (!w)
        return;
    free(w->recs);
    memset(w, 0, sizeof(*w));
}

static int wire_fail(struct kfg_bus_wire *w, int err)
{
    kfg_bus_wire_clear(w);
    return err;
}

/* Allocates w->recs for n entries of at least min_bytes each. */
static int recs_alloc(struct kfg_bus_wire *w, const struct mpr *r, uint64_t n, size_t min_bytes)
{
    if (w->recs)
        return KFG_BUS_EPROTO;   /* duplicate key */
    if (n > mp_left(r) / min_bytes)
        return KFG_BUS_EPROTO;
    if (n == 0)
        return 0;
    w->recs = calloc((size_t)n, sizeof(*w->recs));
    return w->recs ? 0 : KFG_BUS_ENOMEM;
}

static int check_v(struct mpr *r, int *have_v)
{
    uint64_t v;
    if (*have_v || mp_uint(r, &v) < 0 || v != 1)
        return -1;
    *have_v = 1;
    return 0;
}

static int decode_batch(struct mpr *r, struct kfg_bus_wire *w)
{
    uint64_t n, m;
    int have_v = 0, have_prev = 0, have_recs = 0, rv;
    if (mp_map(r, &n) < 0)
        return KFG_BUS_EPROTO;
    for (uint64_t i = 0; i < n; i++) {
        const char *k;
        size_t kl;
        if (mp_str(r, &k, &kl) < 0)
            return KFG_BUS_EPROTO;
        if (key_is(k, kl, "v")) {
            if (check_v(r, &have_v) < 0)
                return KFG_BUS_EPROTO;
        } else if (key_is(k, kl, "prev")) {
            if (have_prev++ || mp_uint(r, &w->prev) < 0)
                return KFG_BUS_EPROTO;
        } else if (key_is(k, kl, "recs")) {
            /* [seq, bin]: at least 0x92, a fixint, 0xc4 0x00. */
            if (have_recs++ || mp_array(r, &m) < 0)
                return KFG_BUS_EPROTO;
            if ((rv = recs_alloc(w, r, m, 4)) != 0)
                return rv;
            for (uint64_t j = 0; j < m; j++) {
                struct kfg_bus_wrec *x = &w->recs[j];
                uint64_t an;
                if (mp_array(r, &an) < 0 || an < 2 || mp_uint(r, &x->seq) < 0 ||
                    mp_bin(r, &x->env, &x->env_len) < 0)
                    return KFG_BUS_EPROTO;
                for (uint64_t e = 2; e < an; e++)
                    if (mp_skip(r, 2) < 0)
                        return KFG_BUS_EPROTO;
                x->topic = w->topic;
                x->topic_len = w->topic_len;
            }
            w->n = (size_t)m;
        } else if (mp_skip(r, 1) < 0) {
            return KFG_BUS_EPROTO;
        }
    }
    if (!have_v || !have_prev || !have_recs)
        return KFG_BUS_EPROTO;
    for (size_t j = 0; j < w->n; j++)
        if (w->recs[j].seq <= (j ? w->recs[j - 1].seq : w->prev))
            return KFG_BUS_EPROTO;
    w->kind = KFG_BUS_WIRE_BATCH;
    return 0;
}

static int decode_heartbeat(struct mpr *r, struct kfg_bus_wire *w)
{
    uint64_t n, m;
    int have_v = 0, have_last = 0, have_topics = 0, rv;
    if (mp_map(r, &n) < 0)
        return KFG_BUS_EPROTO;
    for (uint64_t i = 0; i < n; i++) {
        const char *k;
        size_t kl;
        if (mp_str(r, &k, &kl) < 0)
            return KFG_BUS_EPROTO;
        if (key_is(k, kl, "v")) {
            if (check_v(r, &have_v) < 0)
                return KFG_BUS_EPROTO;
        } else if (key_is(k, kl, "last")) {
            if (have_last++ || mp_uint(r, &w->last) < 0)
                return KFG_BUS_EPROTO;
        } else if (key_is(k, kl, "topics")) {
            /* str -> uint: at least 0xa1 'x' and a fixint. */
            if (have_topics++ || mp_map(r, &m) < 0)
                return KFG_BUS_EPROTO;
            if ((rv = recs_alloc(w, r, m, 3)) != 0)
                return rv;
            for (uint64_t j = 0; j < m; j++) {
                struct kfg_bus_wrec *x = &w->recs[j];
                if (mp_str(r, &x->topic, &x->topic_len) < 0 ||
                    !topic_ok(x->topic, x->topic_len) || mp_uint(r, &x->seq) < 0)
                    return KFG_BUS_EPROTO;
            }
            w->n = (size_t)m;
        } else if (mp_skip(r, 1) < 0) {
            return KFG_BUS_EPROTO;
        }
    }
    if (!have_v || !have_last || !have_topics)
        return KFG_BUS_EPROTO;
    w->kind = KFG_BUS_WIRE_HEARTBEAT;
    return 0;
}

int kfg_bus_decode_feed(const void *msg, size_t len, struct kfg_bus_wire *w)
{
    if (!w)
        return KFG_BUS_EINVAL;
    memset(w, 0, sizeof(*w));
    if (!msg)
        return KFG_BUS_EPROTO;
    const uint8_t *p = msg;
    const uint8_t *nul = memchr(p, 0, len);
    if (!nul)
        return KFG_BUS_EPROTO;
    struct mpr r = { nul + 1, p + len };
    w->topic = (const char *)p;
    w->topic_len = (size_t)(nul - p);
    int rv;
    if (key_is(w->topic, w->topic_len, KFG_BUS_HB_TOPIC))
        rv = decode_heartbeat(&r, w);
    else if (!topic_ok(w->topic, w->topic_len))
        rv = KFG_BUS_EPROTO;
    else
        rv = decode_batch(&r, w);
    if (rv == 0 && r.p != r.e)
        rv = KFG_BUS_EPROTO;     /* trailing bytes */
    return rv ? wire_fail(w, rv) : 0;
}

int kfg_bus_decode_replay(const void *msg, size_t len, struct kfg_bus_wire *w)
{
    if (!w)
        return KFG_BUS_EINVAL;
    memset(w, 0, sizeof(*w));
    if (!msg)
        return KFG_BUS_EPROTO;
    struct mpr r = { msg, (const uint8_t *)msg + len };
    uint64_t n, m;
    int have_v = 0, have_recs = 0, have_next = 0, have_last = 0, have_first = 0, rv;
    if (mp_map(&r, &n) < 0)
        return wire_fail(w, KFG_BUS_EPROTO);
    for (uint64_t i = 0; i < n; i++) {
        const char *k;
        size_t kl;
        if (mp_str(&r, &k, &kl) < 0)
            return wire_fail(w, KFG_BUS_EPROTO);
        if (key_is(k, kl, "v")) {
            if (check_v(&r, &have_v) < 0)
                return wire_fail(w, KFG_BUS_EPROTO);
        } else if (key_is(k, kl, "error")) {
            if (w->error || mp_str(&r, &w->error, &w->error_len) < 0)
                return wire_fail(w, KFG_BUS_EPROTO);
        } else if (key_is(k, kl, "next")) {
            if (have_next++ || mp_uint(&r, &w->next) < 0)
                return wire_fail(w, KFG_BUS_EPROTO);
        } else if (key_is(k, kl, "last")) {
            if (have_last++ || mp_uint(&r, &w->last) < 0)
                return wire_fail(w, KFG_BUS_EPROTO);
        } else if (key_is(k, kl, "first")) {
            if (have_first++ || mp_uint(&r, &w->first) < 0)
                return wire_fail(w, KFG_BUS_EPROTO);
        } else if (key_is(k, kl, "recs")) {
            /* [seq, topic, bin]: at least 0x93, fixint, 0xa1 'x', 0xc4 0x00. */
            if (have_recs++ || mp_array(&r, &m) < 0)
                return wire_fail(w, KFG_BUS_EPROTO);
            if ((rv = recs_alloc(w, &r, m, 6)) != 0)
                return wire_fail(w, rv);
            for (uint64_t j = 0; j < m; j++) {
                struct kfg_bus_wrec *x = &w->recs[j];
                uint64_t an;
                if (mp_array(&r, &an) < 0 || an < 3 || mp_uint(&r, &x->seq) < 0 ||
                    mp_str(&r, &x->topic, &x->topic_len) < 0 ||
                    !topic_ok(x->topic, x->topic_len) ||
                    mp_bin(&r, &x->env, &x->env_len) < 0)
                    return wire_fail(w, KFG_BUS_EPROTO);
                for (uint64_t e = 3; e < an; e++)
                    if (mp_skip(&r, 2) < 0)
                        return wire_fail(w, KFG_BUS_EPROTO);
            }
            w->n = (size_t)m;
        } else if (mp_skip(&r, 1) < 0) {
            return wire_fail(w, KFG_BUS_EPROTO);
        }
    }
    if (r.p != r.e || !have_v)
        return wire_fail(w, KFG_BUS_EPROTO);
    if (w->error) {
        free(w->recs);
        w->recs = NULL;
        w->n = 0;
        w->kind = KFG_BUS_WIRE_ERROR;
        return 0;
    }
    if (!have_recs || !have_next || !have_last)
        return wire_fail(w, KFG_BUS_EPROTO);
    for (size_t j = 0; j < w->n; j++)
        if (w->recs[j].seq == 0 || (j && w->recs[j].seq <= w->recs[j - 1].seq))
            return wire_fail(w, KFG_BUS_EPROTO);
    /* Every record lies below next ("one past the last record examined"). */
    if (w->n && w->recs[w->n - 1].seq >= w->next)
        return wire_fail(w, KFG_BUS_EPROTO);
    w->kind = KFG_BUS_WIRE_REPLAY;
    return 0;
}

static void copy_str(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
    /* The strings are printed by tools: no embedded NUL or control bytes. */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)dst[i] < 0x20)
            dst[i] = '?';
}

int kfg_bus_decode_ack(const void *msg, size_t len, struct kfg_bus_ack *ack)
{
    if (!ack)
        return KFG_BUS_EINVAL;
    memset(ack, 0, sizeof(*ack));
    if (!msg)
        return KFG_BUS_EPROTO;
    struct mpr r = { msg, (const uint8_t *)msg + len };
    uint64_t n;
    int have_v = 0, have_ok = 0;
    if (mp_map(&r, &n) < 0)
        goto bad;
    for (uint64_t i = 0; i < n; i++) {
        const char *k, *s;
        size_t kl, sl;
        if (mp_str(&r, &k, &kl) < 0)
            goto bad;
        if (key_is(k, kl, "v")) {
            if (check_v(&r, &have_v) < 0)
                goto bad;
        } else if (key_is(k, kl, "ok")) {
            if (mp_bool(&r, &ack->ok) < 0)
                goto bad;
            have_ok = 1;
        } else if (key_is(k, kl, "duplicate")) {
            if (mp_bool(&r, &ack->duplicate) < 0)
                goto bad;
        } else if (key_is(k, kl, "seq")) {
            if (mp_uint(&r, &ack->seq) < 0)
                goto bad;
        } else if (key_is(k, kl, "id") || key_is(k, kl, "error") || key_is(k, kl, "reason")) {
            if (mp_str(&r, &s, &sl) < 0)
                goto bad;
            if (key_is(k, kl, "id"))
                copy_str(ack->id, sizeof(ack->id), s, sl);
            else if (key_is(k, kl, "error"))
                copy_str(ack->error, sizeof(ack->error), s, sl);
            else
                copy_str(ack->reason, sizeof(ack->reason), s, sl);
        } else if (mp_skip(&r, 1) < 0) {
            goto bad;
        }
    }
    if (r.p != r.e || !have_v || !have_ok)
        goto bad;
    if (!ack->ok && !ack->error[0])
        goto bad;
    return 0;
bad:
    memset(ack, 0, sizeof(*ack));
    return KFG_BUS_EPROTO;
}

/* ------------------------------------------------------------------------ */
/* Connection */

struct kfg_bus {
    char *feed_url, *replay_url, *out_url;
    int timeout_ms;
    uint32_t replay_max;
    size_t max_msg;
    int recvbuf;
    pthread_mutex_t mu;
    int have_replay, have_out;
    nng_socket replay, out;
};

int kfg_bus_open(struct kfg_bus **out, const struct kfg_bus_opts *opts)
{
    static const struct kfg_bus_opts defaults;
    if (!out)
        return KFG_BUS_EINVAL;
    *out = NULL;
    if (!opts)
        opts = &defaults;
    if (opts->request_timeout_ms < 0 || opts->recvbuf < 0 || opts->recvbuf > 8192)
        return KFG_BUS_EINVAL;
    struct kfg_bus *b = calloc(1, sizeof(*b));
    if (!b)
        return KFG_BUS_ENOMEM;
    b->feed_url = strdup(opts->feed_url ? opts->feed_url : KFG_BUS_DEFAULT_FEED);
    b->replay_url = strdup(opts->replay_url ? opts->replay_url : KFG_BUS_DEFAULT_REPLAY);
    b->out_url = strdup(opts->outbound_url ? opts->outbound_url : KFG_BUS_DEFAULT_OUTBOUND);
    b->timeout_ms = opts->request_timeout_ms ? opts->request_timeout_ms : DEFAULT_TIMEOUT_MS;
    b->replay_max = opts->replay_max ? opts->replay_max : DEFAULT_REPLAY_MAX;
    b->max_msg = opts->max_msg ? opts->max_msg : DEFAULT_MAX_MSG;
    b->recvbuf = opts->recvbuf ? opts->recvbuf : FEED_RECVBUF;
    pthread_mutex_init(&b->mu, NULL);
    if (!b->feed_url || !b->replay_url || !b->out_url) {
        kfg_bus_close(b);
        return KFG_BUS_ENOMEM;
    }
    *out = b;
    return 0;
}

void kfg_bus_close(struct kfg_bus *b)
{
    if (!b)
        return;
    if (b->have_replay)
        nng_close(b->replay);
    if (b->have_out)
        nng_close(b->out);
    pthread_mutex_destroy(&b->mu);
    free(b->feed_url);
    free(b->replay_url);
    free(b->out_url);
    free(b);
}

/* Dials synchronously when the peer is there (so the pipe exists when this
 * returns); otherwise leaves a background dialer that keeps retrying. */
static int dial(nng_socket s, const char *url)
{
    int rv = nng_dial(s, url, NULL, 0);
    if (rv == 0)
        return 0;
    if (rv == NNG_EADDRINVAL || rv == NNG_EINVAL || rv == NNG_ENOTSUP || rv == NNG_ENOMEM)
        return rv;
    return nng_dial(s, url, NULL, NNG_FLAG_NONBLOCK);
}

/* The replay or outbound REQ socket, opened and dialled on first use. */
static int req_socket(struct kfg_bus *b, int outbound, nng_socket *sock)
{
    int rv = 0;
    pthread_mutex_lock(&b->mu);
    int *have = outbound ? &b->have_out : &b->have_replay;
    nng_socket *s = outbound ? &b->out : &b->replay;
    if (!*have) {
        nng_socket n;
        if ((rv = nng_req0_open(&n)) != 0)
            goto out;
        /* Replays are idempotent: resend one lost in a reconnect. An
         * outbound envelope without `idem` must never be sent twice behind
         * the caller's back: no resend; the caller sees a timeout and decides. */
        nng_duration resend = outbound ? NNG_DURATION_INFINITE
                              : b->timeout_ms < REPLAY_RESEND_MS ? b->timeout_ms
                                                                 : REPLAY_RESEND_MS;
        if ((rv = nng_socket_set_ms(n, NNG_OPT_REQ_RESENDTIME, resend)) != 0 ||
            (rv = nng_socket_set_ms(n, NNG_OPT_SENDTIMEO, b->timeout_ms)) != 0 ||
            (rv = nng_socket_set_ms(n, NNG_OPT_RECVTIMEO, b->timeout_ms)) != 0 ||
            (rv = nng_socket_set_size(n, NNG_OPT_RECVMAXSZ, b->max_msg)) != 0 ||
            (rv = dial(n, outbound ? b->out_url : b->replay_url)) != 0) {
            nng_close(n);
            goto out;
        }
        *s = n;
        *have = 1;
    }
    *sock = *s;
out:
    pthread_mutex_unlock(&b->mu);
    return rv;
}

/* One request/answer on ctx through aio, within timeout_ms in total. Takes
 * req in all cases; *reply on 0. */
static int req_call(nng_ctx ctx, nng_aio *aio, nng_msg *req, int timeout_ms, nng_msg **reply)
{
    int64_t deadline = now_ms() + timeout_ms;
    nng_aio_set_msg(aio, req);
    nng_aio_set_timeout(aio, timeout_ms);
    nng_ctx_send(ctx, aio);
    nng_aio_wait(aio);
    int rv = nng_aio_result(aio);
    if (rv != 0) {
        nng_msg_free(nng_aio_get_msg(aio));
        nng_aio_set_msg(aio, NULL);
        return rv;
    }
    int64_t left = deadline - now_ms();
    nng_aio_set_timeout(aio, left > 0 ? (nng_duration)left : 1);
    nng_ctx_recv(ctx, aio);
    nng_aio_wait(aio);
    if ((rv = nng_aio_result(aio)) != 0)
        return rv;
    *reply = nng_aio_get_msg(aio);
    nng_aio_set_msg(aio, NULL);
    return 0;
}

int kfg_bus_send(struct kfg_bus *b, const void *env, size_t len, struct kfg_bus_ack *ack,
                 int timeout_ms)
{
    if (ack)
        memset(ack, 0, sizeof(*ack));
    if (!b || !env || !len || !ack)
        return KFG_BUS_EINVAL;
    nng_socket s;
    nng_ctx ctx;
    nng_aio *aio = NULL;
    nng_msg *req = NULL, *reply = NULL;
    int rv;
    if ((rv = req_socket(b, 1, &s)) != 0)
        return map_nng(rv);
    if ((rv = nng_ctx_open(&ctx, s)) != 0)
        return map_nng(rv);
    if ((rv = nng_aio_alloc(&aio, NULL, NULL)) != 0 || (rv = nng_msg_alloc(&req, 0)) != 0 ||
        (rv = nng_msg_append(req, env, len)) != 0) {
        if (req)
            nng_msg_free(req);
        goto out;
    }
    rv = req_call(ctx, aio, req, timeout_ms > 0 ? timeout_ms : b->timeout_ms, &reply);
    if (rv == 0) {
        int e = kfg_bus_decode_ack(nng_msg_body(reply), nng_msg_len(reply), ack);
        nng_msg_free(reply);
        nng_ctx_close(ctx);
        nng_aio_free(aio);
        return e;
    }
out:
    nng_ctx_close(ctx);
    nng_aio_free(aio);
    return map_nng(rv);
}

/* ------------------------------------------------------------------------ */
/* Subscription state */

struct topic_ent {
    char *name;          /* NULL: empty slot */
    size_t len;
    uint64_t last;
};

struct orec {
    int kind;
    uint64_t seq, seq_to;
    char *topic;
    size_t topic_len;
    uint8_t *env;
    size_t env_len;
    int replayed, gap;
};

struct fill {
    char *topic;
    size_t len;
    uint64_t until;
    int by_hb;
    int64_t behind_since;       /* when replay first lagged behind `until` */
};

struct kfg_bus_sub {
    struct kfg_bus *b;
    char *prefix;
    size_t plen;
    nng_socket feed;
    int have_feed, have_ctx;
    nng_ctx rctx;
    nng_aio *raio, *faio;

    uint64_t cursor;                /* C */
    int probe, catchup;
    uint64_t cu_from;

    struct topic_ent *tab;          /* last[topic], open addressing */
    size_t tcap, tn;

    struct fill *fills;             /* FIFO [fhead, fhead + fn) */
    size_t fhead, fn, fcap;
    uint64_t fill_from;             /* 0: head fill not started */

    nng_msg *held;                  /* the batch waiting for its gap fill */
    struct kfg_bus_wire held_w;

    struct orec *oq;                /* FIFO [ohead, ohead + on) */
    size_t ohead, on, ocap;
    struct orec cur;                /* the record last returned */

    struct kfg_bus_stats st;
    char err[256];
};

static uint64_t hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static struct topic_ent *tab_find(const struct kfg_bus_sub *s, const char *t, size_t n)
{
    if (!s->tcap)
        return NULL;
    for (size_t i = hash(t, n) & (s->tcap - 1);; i = (i + 1) & (s->tcap - 1)) {
        struct topic_ent *e = &s->tab[i];
        if (!e->name)
            return NULL;
        if (e->len == n && memcmp(e->name, t, n) == 0)
            return e;
    }
}

/* last[T] if known, else C. */
static uint64_t last_of(const struct kfg_bus_sub *s, const char *t, size_t n)
{
    const struct topic_ent *e = tab_find(s, t, n);
    return e ? e->last : s->cursor;
}

/* The entry for t, added with last = C (the same as unknown) when absent. */
static struct topic_ent *tab_get(struct kfg_bus_sub *s, const char *t, size_t n)
{
    struct topic_ent *e = tab_find(s, t, n);
    if (e)
        return e;
    if ((s->tn + 1) * 2 > s->tcap) {
        size_t cap = s->tcap ? s->tcap * 2 : 16;
        struct topic_ent *tab = calloc(cap, sizeof(*tab));
        if (!tab)
            return NULL;
        for (size_t i = 0; i < s->tcap; i++) {
            struct topic_ent *o = &s->tab[i];
            if (!o->name)
                continue;
            size_t j = hash(o->name, o->len) & (cap - 1);
            while (tab[j].name)
                j = (j + 1) & (cap - 1);
            tab[j] = *o;
        }
        free(s->tab);
        s->tab = tab;
        s->tcap = cap;
    }
    char *name = malloc(n + 1);
    if (!name)
        return NULL;
    memcpy(name, t, n);
    name[n] = '\0';
    size_t i = hash(t, n) & (s->tcap - 1);
    while (s->tab[i].name)
        i = (i + 1) & (s->tcap - 1);
    s->tab[i] = (struct topic_ent){ name, n, s->cursor };
    s->tn++;
    return &s->tab[i];
}

static void orec_free(struct orec *o)
{
    free(o->topic);
    free(o->env);
    memset(o, 0, sizeof(*o));
}

static int oq_reserve(struct kfg_bus_sub *s)
{
    if (s->ohead + s->on < s->ocap)
        return 0;
    if (s->ohead) {
        memmove(s->oq, s->oq + s->ohead, s->on * sizeof(*s->oq));
        s->ohead = 0;
        return 0;
    }
    size_t cap = s->ocap ? s->ocap * 2 : 64;
    struct orec *q = realloc(s->oq, cap * sizeof(*q));
    if (!q)
        return -1;
    s->oq = q;
    s->ocap = cap;
    return 0;
}

static int set_err(struct kfg_bus_sub *s, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int set_err(struct kfg_bus_sub *s, int err, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof(s->err), fmt, ap);
    va_end(ap);
    return err;
}

/* Queues one entry; copies topic and env. */
static int oq_push(struct kfg_bus_sub *s, const struct orec *tmpl, const char *topic,
                   size_t tlen, const void *env, size_t elen)
{
    if (oq_reserve(s) < 0)
        return KFG_BUS_ENOMEM;
    struct orec o = *tmpl;
    o.topic = malloc(tlen + 1);
    o.env = elen ? malloc(elen) : NULL;
    if (!o.topic || (elen && !o.env)) {
        free(o.topic);
        free(o.env);
        return KFG_BUS_ENOMEM;
    }
    memcpy(o.topic, topic, tlen);
    o.topic[tlen] = '\0';
    o.topic_len = tlen;
    if (elen)
        memcpy(o.env, env, elen);
    o.env_len = elen;
    s->oq[s->ohead + s->on++] = o;
    return 0;
}

/* Queues a record unless already delivered; sets last[topic]. */
static int deliver(struct kfg_bus_sub *s, const struct kfg_bus_wrec *r, int replayed, int gap)
{
    struct topic_ent *e = tab_get(s, r->topic, r->topic_len);
    if (!e)
        return set_err(s, KFG_BUS_ENOMEM, "out of memory");
    if (r->seq <= e->last) {
        s->st.duplicates++;
        return 0;
    }
    struct orec o = { .kind = KFG_BUS_RECORD, .seq = r->seq, .seq_to = r->seq,
                      .replayed = replayed, .gap = gap };
    if (oq_push(s, &o, r->topic, r->topic_len, r->env, r->env_len) != 0)
        return set_err(s, KFG_BUS_ENOMEM, "out of memory");
    e->last = r->seq;
    return 0;
}

static int report_loss(struct kfg_bus_sub *s, uint64_t from, uint64_t to, const char *topic,
                       size_t tlen)
{
    struct orec o = { .kind = KFG_BUS_LOSS, .seq = from, .seq_to = to };
    if (oq_push(s, &o, topic, tlen, NULL, 0) != 0)
        return set_err(s, KFG_BUS_ENOMEM, "out of memory");
    return 0;
}

static int push_fill(struct kfg_bus_sub *s, const char *t, size_t n, uint64_t until, int by_hb)
{
    if (s->fhead + s->fn == s->fcap) {
        if (s->fhead) {
            memmove(s->fills, s->fills + s->fhead, s->fn * sizeof(*s->fills));
            s->fhead = 0;
        } else {
            size_t cap = s->fcap ? s->fcap * 2 : 16;
            struct fill *f = realloc(s->fills, cap * sizeof(*f));
            if (!f)
                return KFG_BUS_ENOMEM;
            s->fills = f;
            s->fcap = cap;
        }
    }
    char *name = malloc(n + 1);
    if (!name)
        return KFG_BUS_ENOMEM;
    memcpy(name, t, n);
    name[n] = '\0';
    s->fills[s->fhead + s->fn++] = (struct fill){ name, n, until, by_hb, 0 };
    return 0;
}

static void pop_fill(struct kfg_bus_sub *s)
{
    free(s->fills[s->fhead].topic);
    s->fhead++;
    s->fn--;
    s->fill_from = 0;
    if (!s->fn)
        s->fhead = 0;
}

static int prefix_match(const struct kfg_bus_sub *s, const char *t, size_t n)
{
    return n >= s->plen && memcmp(t, s->prefix, s->plen) == 0;
}

/* ------------------------------------------------------------------------ */
/* Replay */

static int pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
}

/* One replay request; on 0, *reply holds the message *w points into. */
static int replay_call(struct kfg_bus_sub *s, uint64_t from, const char *topic, size_t tlen,
                       uint64_t until, uint32_t max, nng_msg **reply, struct kfg_bus_wire *w)
{
    msgpack_sbuffer sb;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    int bad = msgpack_pack_map(&pk, 2 + (tlen > 0) + (until > 0)) ||
              pack_str(&pk, "from", 4) || msgpack_pack_uint64(&pk, from) ||
              pack_str(&pk, "max", 3) || msgpack_pack_uint32(&pk, max);
    if (!bad && tlen)
        bad = pack_str(&pk, "topic", 5) || pack_str(&pk, topic, tlen);
    if (!bad && until)
        bad = pack_str(&pk, "until", 5) || msgpack_pack_uint64(&pk, until);
    nng_msg *req = NULL;
    if (bad || nng_msg_alloc(&req, 0) != 0 || nng_msg_append(req, sb.data, sb.size) != 0) {
        msgpack_sbuffer_destroy(&sb);
        if (req)
            nng_msg_free(req);
        return set_err(s, KFG_BUS_ENOMEM, "out of memory");
    }
    msgpack_sbuffer_destroy(&sb);
    s->st.replay_requests++;
    int rv = req_call(s->rctx, s->raio, req, s->b->timeout_ms, reply);
    /* From kfg_bus_next, KFG_BUS_ETIMEDOUT only ever means a quiet feed. */
    if (rv != 0)
        return set_err(s, rv == NNG_ETIMEDOUT ? KFG_BUS_ECONN : map_nng(rv), "replay %s: %s",
                       s->b->replay_url, nng_strerror(rv));
    rv = kfg_bus_decode_replay(nng_msg_body(*reply), nng_msg_len(*reply), w);
    if (rv == 0 && w->kind == KFG_BUS_WIRE_ERROR) {
        set_err(s, KFG_BUS_EPROTO, "replay error: %.*s", (int)(w->error_len > 200 ? 200 : w->error_len),
                w->error);
        rv = KFG_BUS_EPROTO;
        kfg_bus_wire_clear(w);
    } else if (rv != 0) {
        set_err(s, rv, "replay: malformed answer");
    } else if (w->next <= from && from <= w->last) {
        /* Nothing examined though records exist: would loop forever. */
        set_err(s, KFG_BUS_EPROTO, "replay: no progress at %llu", (unsigned long long)from);
        rv = KFG_BUS_EPROTO;
        kfg_bus_wire_clear(w);
    }
    if (rv != 0) {
        nng_msg_free(*reply);
        *reply = NULL;
        return rv;
    }
    if (w->last > s->st.node_last)
        s->st.node_last = w->last;
    return 0;
}

/* KFG_BUS_LIVE: C = the node's last committed seq. */
static int step_probe(struct kfg_bus_sub *s)
{
    nng_msg *reply;
    struct kfg_bus_wire w;
    int rv = replay_call(s, 1, s->prefix, s->plen, 1, 1, &reply, &w);
    if (rv)
        return rv;
    s->cursor = w.last;
    s->probe = 0;
    kfg_bus_wire_clear(&w);
    nng_msg_free(reply);
    return 0;
}

/* Section 2, step 1: one page of the catch-up replay. */
static int step_catchup(struct kfg_bus_sub *s)
{
    nng_msg *reply;
    struct kfg_bus_wire w;
    int rv = replay_call(s, s->cu_from, s->prefix, s->plen, 0, s->b->replay_max, &reply, &w);
    if (rv)
        return rv;
    if (w.first > s->cu_from && (rv = report_loss(s, s->cu_from, w.first - 1, s->prefix,
                                                  s->plen)) != 0)
        goto out;
    for (size_t i = 0; i < w.n; i++) {
        if (w.recs[i].seq < s->cu_from || !prefix_match(s, w.recs[i].topic, w.recs[i].topic_len))
            continue;   /* not what we asked for */
        if ((rv = deliver(s, &w.recs[i], 1, 0)) != 0)
            goto out;
    }
    if (w.next > s->cu_from)
        s->cu_from = w.next;
    if (w.next > w.last) {
        s->catchup = 0;
        if (s->cu_from - 1 > s->cursor)
            s->cursor = s->cu_from - 1;
    }
out:
    kfg_bus_wire_clear(&w);
    nng_msg_free(reply);
    return rv;
}

/* Section 2, steps 2 and 3: one page of the head gap fill. */
static int step_fill(struct kfg_bus_sub *s)
{
    struct fill *f = &s->fills[s->fhead];
    if (!s->fill_from) {
        uint64_t l = last_of(s, f->topic, f->len);
        if (l >= f->until) {
            pop_fill(s);         /* covered meanwhile */
            return 0;
        }
        s->st.gaps++;
        if (f->by_hb)
            s->st.gaps_by_heartbeat++;
        s->fill_from = l + 1;
    }
    nng_msg *reply;
    struct kfg_bus_wire w;
    int rv = replay_call(s, s->fill_from, f->topic, f->len, f->until, s->b->replay_max, &reply,
                         &w);
    if (rv)
        return rv;
    if (w.first > s->fill_from) {
        uint64_t to = w.first - 1 < f->until ? w.first - 1 : f->until;
        if ((rv = report_loss(s, s->fill_from, to, f->topic, f->len)) != 0)
            goto out;
    }
    for (size_t i = 0; i < w.n; i++) {
        const struct kfg_bus_wrec *r = &w.recs[i];
        /* The replay filter is a prefix: "a/b/wx" also returns "a/b/wx2",
         * whose own chain is checked separately. */
        if (r->seq < s->fill_from || r->seq > f->until ||
            !key_is(r->topic, r->topic_len, f->topic))
            continue;
        if ((rv = deliver(s, r, 1, 1)) != 0)
            goto out;
    }
    if (w.next > s->fill_from)
        s->fill_from = w.next;
    if (w.next > f->until) {
        /* (L, until] is covered: what replay did not return does not exist. */
        struct topic_ent *e = tab_get(s, f->topic, f->len);
        if (!e) {
            rv = set_err(s, KFG_BUS_ENOMEM, "out of memory");
            goto out;
        }
        if (e->last < f->until)
            e->last = f->until;
        pop_fill(s);
    } else if (w.next > w.last) {
        /* The journal's committed end is behind what the feed announced. A
         * heartbeat's gap is left to the records' own batch or the next
         * heartbeat (last[T] is not raised). A held batch waits for replay
         * to catch up, at most one request timeout, then the rest of
         * (L, prev] is reported lost and the batch goes on. */
        int64_t now = now_ms();
        if (f->by_hb) {
            pop_fill(s);
        } else if (!f->behind_since) {
            f->behind_since = now;
        } else if (now - f->behind_since >= s->b->timeout_ms) {
            struct topic_ent *e = tab_get(s, f->topic, f->len);
            if (!e || (rv = report_loss(s, s->fill_from, f->until, f->topic, f->len)) != 0) {
                rv = set_err(s, KFG_BUS_ENOMEM, "out of memory");
                goto out;
            }
            if (e->last < f->until)
                e->last = f->until;
            pop_fill(s);
        } else {
            nanosleep(&(struct timespec){ .tv_nsec = 10 * 1000000 }, NULL);
        }
    }
out:
    kfg_bus_wire_clear(&w);
    nng_msg_free(reply);
    return rv;
}

static void drop_held(struct kfg_bus_sub *s)
{
    kfg_bus_wire_clear(&s->held_w);
    if (s->held)
        nng_msg_free(s->held);
    s->held = NULL;
}

static int deliver_batch(struct kfg_bus_sub *s, const struct kfg_bus_wire *w)
{
    for (size_t i = 0; i < w->n; i++) {
        int rv = deliver(s, &w->recs[i], 0, 0);
        if (rv)
            return rv;
    }
    return 0;
}

/* One feed message. Takes msg. */
static int on_feed(struct kfg_bus_sub *s, nng_msg *msg)
{
    struct kfg_bus_wire w;
    int rv = kfg_bus_decode_feed(nng_msg_body(msg), nng_msg_len(msg), &w);
    if (rv == KFG_BUS_ENOMEM) {
        nng_msg_free(msg);
        return set_err(s, rv, "out of memory");
    }
    if (rv != 0) {
        s->st.bad_messages++;
        nng_msg_free(msg);
        return 0;
    }
    if (w.kind == KFG_BUS_WIRE_HEARTBEAT) {
        s->st.heartbeats++;
        s->st.last_heartbeat_ms = now_ms();
        if (w.last > s->st.node_last)
            s->st.node_last = w.last;
        for (size_t i = 0; i < w.n && rv == 0; i++) {
            const struct kfg_bus_wrec *t = &w.recs[i];
            if (prefix_match(s, t->topic, t->topic_len) &&
                t->seq > last_of(s, t->topic, t->topic_len))
                rv = push_fill(s, t->topic, t->topic_len, t->seq, 1);
        }
        kfg_bus_wire_clear(&w);
        nng_msg_free(msg);
        return rv ? set_err(s, rv, "out of memory") : 0;
    }
    if (!prefix_match(s, w.topic, w.topic_len)) {
        kfg_bus_wire_clear(&w);
        nng_msg_free(msg);
        return 0;
    }
    s->st.batches++;
    /* Step 2: records of this topic in (L, prev] were lost; fill them first. */
    if (w.prev > last_of(s, w.topic, w.topic_len) &&
        (rv = push_fill(s, w.topic, w.topic_len, w.prev, 0)) != 0) {
        kfg_bus_wire_clear(&w);
        nng_msg_free(msg);
        return set_err(s, rv, "out of memory");
    }
    /* Delivered by kfg_bus_next after the fills, with the same retry path. */
    s->held = msg;
    s->held_w = w;
    return 0;
}

static int recv_feed(struct kfg_bus_sub *s, int64_t deadline, int forever, nng_msg **msg)
{
    nng_duration d;
    if (forever) {
        d = NNG_DURATION_INFINITE;
    } else {
        int64_t left = deadline - now_ms();
        d = left > 0 ? (nng_duration)left : NNG_DURATION_ZERO;
    }
    nng_aio_set_timeout(s->faio, d);
    nng_recv_aio(s->feed, s->faio);
    nng_aio_wait(s->faio);
    int rv = nng_aio_result(s->faio);
    if (rv != 0)
        return rv == NNG_ETIMEDOUT ? KFG_BUS_ETIMEDOUT
                                   : set_err(s, map_nng(rv), "feed: %s", nng_strerror(rv));
    *msg = nng_aio_get_msg(s->faio);
    nng_aio_set_msg(s->faio, NULL);
    return 0;
}

int kfg_bus_next(struct kfg_bus_sub *s, struct kfg_bus_rec *rec, int timeout_ms)
{
    if (!s || !rec)
        return KFG_BUS_EINVAL;
    memset(rec, 0, sizeof(*rec));
    orec_free(&s->cur);
    int64_t deadline = now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
    int rv;
    for (;;) {
        if (s->on) {
            s->cur = s->oq[s->ohead++];
            if (!--s->on)
                s->ohead = 0;
            struct orec *o = &s->cur;
            rec->kind = o->kind;
            rec->seq = o->seq;
            rec->seq_to = o->seq_to;
            rec->topic = o->topic;
            rec->topic_len = o->topic_len;
            rec->env = o->env;
            rec->env_len = o->env_len;
            rec->replayed = o->replayed;
            if (o->kind == KFG_BUS_LOSS) {
                s->st.lost += o->seq_to - o->seq + 1;
            } else {
                s->st.delivered++;
                if (o->replayed)
                    s->st.replayed++;
                else
                    s->st.from_feed++;
                if (o->gap)
                    s->st.gap_records++;
            }
            return 0;
        }
        if (s->probe) {
            if ((rv = step_probe(s)) != 0)
                return rv;
        } else if (s->catchup) {
            if ((rv = step_catchup(s)) != 0)
                return rv;
        } else if (s->fn) {
            if ((rv = step_fill(s)) != 0)
                return rv;
        } else if (s->held) {
            if ((rv = deliver_batch(s, &s->held_w)) != 0)
                return rv;
            drop_held(s);
        } else {
            nng_msg *msg = NULL;
            if ((rv = recv_feed(s, deadline, timeout_ms < 0, &msg)) != 0)
                return rv;
            if ((rv = on_feed(s, msg)) != 0)
                return rv;
        }
    }
}

int kfg_bus_sub(struct kfg_bus *b, const char *prefix, uint64_t cursor, struct kfg_bus_sub **out)
{
    if (!out)
        return KFG_BUS_EINVAL;
    *out = NULL;
    if (!b)
        return KFG_BUS_EINVAL;
    if (!prefix)
        prefix = "";
    struct kfg_bus_sub *s = calloc(1, sizeof(*s));
    if (!s)
        return KFG_BUS_ENOMEM;
    s->b = b;
    s->plen = strlen(prefix);
    s->prefix = strdup(prefix);
    int rv = s->prefix ? 0 : NNG_ENOMEM;
    nng_socket rs;
    if (rv || (rv = req_socket(b, 0, &rs)) != 0 || (rv = nng_ctx_open(&s->rctx, rs)) != 0)
        goto fail;
    s->have_ctx = 1;
    if ((rv = nng_aio_alloc(&s->raio, NULL, NULL)) != 0 ||
        (rv = nng_aio_alloc(&s->faio, NULL, NULL)) != 0 || (rv = nng_sub0_open(&s->feed)) != 0)
        goto fail;
    s->have_feed = 1;
    if ((rv = nng_socket_set_int(s->feed, NNG_OPT_RECVBUF, b->recvbuf)) != 0 ||
        (rv = nng_socket_set_size(s->feed, NNG_OPT_RECVMAXSZ, b->max_msg)) != 0 ||
        (rv = nng_socket_set_ms(s->feed, NNG_OPT_RECVTIMEO, b->timeout_ms)) != 0 ||
        (rv = nng_socket_set(s->feed, NNG_OPT_SUB_SUBSCRIBE, prefix, s->plen)) != 0)
        goto fail;
    /* The heartbeat, unless the prefix already covers it. */
    if (strncmp(KFG_BUS_HB_TOPIC, prefix, s->plen) != 0 &&
        (rv = nng_socket_set(s->feed, NNG_OPT_SUB_SUBSCRIBE, KFG_BUS_HB_TOPIC,
                             sizeof(KFG_BUS_HB_TOPIC) - 1)) != 0)
        goto fail;
    /* Subscribed before the catch-up starts, so the feed's queue holds what
     * is published meanwhile. */
    if ((rv = dial(s->feed, b->feed_url)) != 0)
        goto fail;
    if (cursor == KFG_BUS_LIVE) {
        /* Learn the node's end now, so "live" means from this call on. If
         * the replay endpoint does not answer, the first kfg_bus_next tries
         * again (and live then starts there). */
        s->probe = 1;
        (void)step_probe(s);
    } else {
        s->cursor = cursor;
        s->catchup = 1;
        s->cu_from = cursor + 1;
    }
    *out = s;
    return 0;
fail:
    kfg_bus_sub_free(s);
    return map_nng(rv);
}

void kfg_bus_sub_free(struct kfg_bus_sub *s)
{
    if (!s)
        return;
    if (s->raio)
        nng_aio_stop(s->raio);
    if (s->faio)
        nng_aio_stop(s->faio);
    if (s->have_ctx)
        nng_ctx_close(s->rctx);
    if (s->have_feed)
        nng_close(s->feed);
    if (s->raio)
        nng_aio_free(s->raio);
    if (s->faio)
        nng_aio_free(s->faio);
    drop_held(s);
    orec_free(&s->cur);
    for (size_t i = 0; i < s->on; i++)
        orec_free(&s->oq[s->ohead + i]);
    free(s->oq);
    for (size_t i = 0; i < s->fn; i++)
        free(s->fills[s->fhead + i].topic);
    free(s->fills);
    for (size_t i = 0; i < s->tcap; i++)
        free(s->tab[i].name);
    free(s->tab);
    free(s->prefix);
    free(s);
}

void kfg_bus_sub_stats(const struct kfg_bus_sub *s, struct kfg_bus_stats *st)
{
    if (!st)
        return;
    memset(st, 0, sizeof(*st));
    if (!s)
        return;
    *st = s->st;
    st->cursor = s->cursor;
}

const char *kfg_bus_sub_errmsg(const struct kfg_bus_sub *s)
{
    return s ? s->err : "";
}
