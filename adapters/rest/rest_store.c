/*
 * REST adapter: bounded maps (idempotency keys, status records, the replay
 * cache), each behind its own mutex, and UUIDv7s.
 */
#include "rest.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* ---------------------------------------------------------------------------
 * Engine.
 */
static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

int rest_bmap_init(struct rest_bmap *m, size_t cap, void (*free_val)(void *))
{
    memset(m, 0, sizeof *m);
    m->cap = cap ? cap : 1;
    m->nbuckets = 16;
    while (m->nbuckets < m->cap)
        m->nbuckets <<= 1;
    m->buckets = calloc(m->nbuckets, sizeof *m->buckets);
    if (!m->buckets)
        return -1;
    m->free_val = free_val;
    pthread_mutex_init(&m->mu, NULL);
    return 0;
}

static void ent_free(struct rest_bmap *m, struct rest_bent *e)
{
    if (m->free_val && e->val)
        m->free_val(e->val);
    free(e);     /* the key lives in the same block */
}

void rest_bmap_destroy(struct rest_bmap *m)
{
    struct rest_bent *e = m->oldest;
    while (e) {
        struct rest_bent *n = e->newer;
        ent_free(m, e);
        e = n;
    }
    free(m->buckets);
    pthread_mutex_destroy(&m->mu);
    memset(m, 0, sizeof *m);
}

struct rest_bent *rest_bmap_find(struct rest_bmap *m, const char *key, size_t klen)
{
    uint64_t h = fnv(key, klen);
    for (struct rest_bent *e = m->buckets[h & (m->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return e;
    return NULL;
}

void rest_bmap_remove(struct rest_bmap *m, struct rest_bent *e)
{
    struct rest_bent **pp = &m->buckets[e->hash & (m->nbuckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    if (e->older)
        e->older->newer = e->newer;
    else
        m->oldest = e->newer;
    if (e->newer)
        e->newer->older = e->older;
    else
        m->newest = e->older;
    m->n--;
    ent_free(m, e);
}

struct rest_bent *rest_bmap_insert(struct rest_bmap *m, const char *key, size_t klen,
                                   int (*evictable)(const struct rest_bent *e))
{
    if (m->n >= m->cap) {
        struct rest_bent *v = m->oldest;
        while (v && evictable && !evictable(v))
            v = v->newer;
        if (!v)
            return NULL;
        rest_bmap_remove(m, v);
    }
    /* One block for the entry and its key: inserts are on the ingest path. */
    struct rest_bent *e = malloc(sizeof *e + klen + 1);
    if (!e)
        return NULL;
    memset(e, 0, sizeof *e);
    e->key = (char *)(e + 1);
    memcpy(e->key, key, klen);
    e->key[klen] = '\0';
    e->klen = klen;
    e->hash = fnv(key, klen);
    size_t b = e->hash & (m->nbuckets - 1);
    e->hnext = m->buckets[b];
    m->buckets[b] = e;
    e->older = m->newest;
    if (m->newest)
        m->newest->newer = e;
    else
        m->oldest = e;
    m->newest = e;
    m->n++;
    return e;
}

/* ---------------------------------------------------------------------------
 * Idempotency keys: key -> SHA-256 of the body + the original answer.
 */
struct idem_val {
    unsigned char hash[32];
    int done;
    int status;
    char *answer;
};

static void idem_val_free(void *v)
{
    struct idem_val *x = v;
    free(x->answer);
    free(x);
}

struct rest_idem {
    struct rest_bmap map;
};

struct rest_idem *rest_idem_new(size_t cap)
{
    struct rest_idem *m = calloc(1, sizeof *m);
    if (!m || rest_bmap_init(&m->map, cap, idem_val_free) != 0) {
        free(m);
        return NULL;
    }
    return m;
}

void rest_idem_free(struct rest_idem *m)
{
    if (!m)
        return;
    rest_bmap_destroy(&m->map);
    free(m);
}

static int idem_evictable(const struct rest_bent *e)
{
    return ((const struct idem_val *)e->val)->done;
}

enum rest_idem_state rest_idem_begin(struct rest_idem *m, const char *key, size_t klen,
                                     const unsigned char hash[32], int *status,
                                     char **answer)
{
    enum rest_idem_state st;
    pthread_mutex_lock(&m->map.mu);
    struct rest_bent *e = rest_bmap_find(&m->map, key, klen);
    if (e) {
        struct idem_val *v = e->val;
        if (!rest_ct_equal(v->hash, 32, hash, 32))
            st = REST_IDEM_MISMATCH;
        else if (!v->done)
            st = REST_IDEM_PENDING;
        else {
            st = REST_IDEM_DONE;
            *status = v->status;
            *answer = strdup(v->answer ? v->answer : "");
        }
    } else {
        struct idem_val *v = calloc(1, sizeof *v);
        e = v ? rest_bmap_insert(&m->map, key, klen, idem_evictable) : NULL;
        if (e) {
            memcpy(v->hash, hash, 32);
            e->val = v;
            st = REST_IDEM_NEW;
        } else {
            free(v);
            st = REST_IDEM_FULL;
        }
    }
    pthread_mutex_unlock(&m->map.mu);
    return st;
}

void rest_idem_finish(struct rest_idem *m, const char *key, size_t klen, int status,
                      const char *answer)
{
    pthread_mutex_lock(&m->map.mu);
    struct rest_bent *e = rest_bmap_find(&m->map, key, klen);
    if (e) {
        struct idem_val *v = e->val;
        free(v->answer);
        v->answer = strdup(answer);
        v->status = status;
        v->done = v->answer != NULL;
        if (!v->done)
            rest_bmap_remove(&m->map, e);
    }
    pthread_mutex_unlock(&m->map.mu);
}

void rest_idem_abort(struct rest_idem *m, const char *key, size_t klen)
{
    pthread_mutex_lock(&m->map.mu);
    struct rest_bent *e = rest_bmap_find(&m->map, key, klen);
    if (e && !((struct idem_val *)e->val)->done)
        rest_bmap_remove(&m->map, e);
    pthread_mutex_unlock(&m->map.mu);
}

size_t rest_idem_count(struct rest_idem *m)
{
    pthread_mutex_lock(&m->map.mu);
    size_t n = m->map.n;
    pthread_mutex_unlock(&m->map.mu);
    return n;
}

/* ---------------------------------------------------------------------------
 * Status records: id -> the receipts this instance has seen for it. Plain
 * structs, JSON only when asked (GET): every accepted message makes one, so
 * a record costs two allocations (entry + value), not a tree of JSON nodes.
 */
#define RECEIPTS_MAX 32
#define RECEIPTS_INLINE 2

struct rcpt {
    int64_t at;
    uint64_t seq;
    int attempts;               /* out: attempts so far, when > 0 */
    char status[16];            /* our own short words */
    char *code, *detail;        /* malloc'd or NULL */
};

struct status_val {
    char dir[4];
    uint64_t seq;
    int attempts;
    int64_t first_ms;
    size_t n, cap;
    struct rcpt *r;             /* `in` until more are needed */
    struct rcpt in[RECEIPTS_INLINE];
};

static void rcpt_clear(struct rcpt *r)
{
    free(r->code);
    free(r->detail);
}

static void status_val_free(void *p)
{
    struct status_val *v = p;
    for (size_t i = 0; i < v->n; i++)
        rcpt_clear(&v->r[i]);
    if (v->r != v->in)
        free(v->r);
    free(v);
}

struct rest_status {
    struct rest_bmap map;
};

struct rest_status *rest_status_new(size_t cap)
{
    struct rest_status *s = calloc(1, sizeof *s);
    if (!s || rest_bmap_init(&s->map, cap, status_val_free) != 0) {
        free(s);
        return NULL;
    }
    return s;
}

void rest_status_free(struct rest_status *s)
{
    if (!s)
        return;
    rest_bmap_destroy(&s->map);
    free(s);
}

/* A free slot at the end of v's receipts; NULL when out of memory. */
static struct rcpt *rcpt_slot(struct status_val *v)
{
    if (v->n >= RECEIPTS_MAX) {
        /* Bounded: the first receipt and the most recent ones are kept. */
        rcpt_clear(&v->r[1]);
        memmove(&v->r[1], &v->r[2], (v->n - 2) * sizeof *v->r);
        v->n--;
    } else if (v->n == v->cap) {
        size_t nc = v->cap * 4 > RECEIPTS_MAX ? RECEIPTS_MAX : v->cap * 4;
        struct rcpt *nr = malloc(nc * sizeof *nr);
        if (!nr)
            return NULL;
        memcpy(nr, v->r, v->n * sizeof *nr);
        if (v->r != v->in)
            free(v->r);
        v->r = nr;
        v->cap = nc;
    }
    struct rcpt *r = &v->r[v->n++];
    memset(r, 0, sizeof *r);
    return r;
}

int rest_status_add(struct rest_status *s, const char *id, const char *dir,
                    const char *status, uint64_t seq, const char *code,
                    const char *detail, int64_t at_ms, int64_t *first_ms)
{
    size_t idlen = strlen(id);
    /* Copies made outside the lock; only webhook receipts have them. */
    char *c = code ? strdup(code) : NULL, *d = detail ? strdup(detail) : NULL;
    pthread_mutex_lock(&s->map.mu);
    struct rest_bent *e = rest_bmap_find(&s->map, id, idlen);
    struct status_val *v = e ? e->val : NULL;
    if (!e) {
        v = malloc(sizeof *v);
        e = v ? rest_bmap_insert(&s->map, id, idlen, NULL) : NULL;
        if (!e) {
            pthread_mutex_unlock(&s->map.mu);
            free(v);
            free(c);
            free(d);
            if (first_ms)
                *first_ms = at_ms;
            return 1;
        }
        memset(v, 0, sizeof *v);
        rest_copy(v->dir, sizeof v->dir, dir);
        v->first_ms = at_ms;
        v->r = v->in;
        v->cap = RECEIPTS_INLINE;
        e->val = v;
    }
    if (seq && !v->seq)
        v->seq = seq;
    if (strcmp(status, "attempt") == 0)
        v->attempts++;
    int attempts = v->attempts;
    struct rcpt *r = rcpt_slot(v);
    if (r) {
        r->at = at_ms;
        r->seq = seq;
        rest_copy(r->status, sizeof r->status, status);
        r->code = c;
        r->detail = d;
        if (v->attempts && strcmp(v->dir, "out") == 0)
            r->attempts = v->attempts;
    } else {
        free(c);
        free(d);
    }
    if (first_ms)
        *first_ms = v->first_ms;
    pthread_mutex_unlock(&s->map.mu);
    return attempts;
}

json_t *rest_status_get(struct rest_status *s, const char *id)
{
    json_t *o = NULL;
    pthread_mutex_lock(&s->map.mu);
    struct rest_bent *e = rest_bmap_find(&s->map, id, strlen(id));
    if (e) {
        const struct status_val *v = e->val;
        o = json_object();
        json_object_set_new(o, "id", json_string(id));
        json_object_set_new(o, "direction", json_string(v->dir));
        if (v->seq)
            json_object_set_new(o, "seq", json_integer((json_int_t)v->seq));
        json_t *arr = json_array();
        for (size_t i = 0; i < v->n; i++) {
            const struct rcpt *r = &v->r[i];
            json_t *x = json_object();
            json_object_set_new(x, "status", json_string(r->status));
            json_object_set_new(x, "at", json_integer(r->at));
            if (r->seq)
                json_object_set_new(x, "seq", json_integer((json_int_t)r->seq));
            if (r->code)
                json_object_set_new(x, "code", json_string(r->code));
            if (r->detail)
                json_object_set_new(x, "detail", json_string(r->detail));
            if (r->attempts)
                json_object_set_new(x, "attempts", json_integer(r->attempts));
            json_array_append_new(arr, x);
        }
        json_object_set_new(o, "receipts", arr);
        if (v->n)
            json_object_set_new(o, "status", json_string(v->r[v->n - 1].status));
    }
    pthread_mutex_unlock(&s->map.mu);
    return o;
}

/* Random bytes for ids, per thread: one getrandom per 32 ids rather than a
 * syscall per message. Ids need to be unguessable-ish and unique, not secret. */
static __thread unsigned char rnd_pool[512];
static __thread size_t rnd_left;

static void rnd_bytes(unsigned char *b, size_t n)
{
    if (rnd_left < n) {
        if (getrandom(rnd_pool, sizeof rnd_pool, 0) != (ssize_t)sizeof rnd_pool &&
            RAND_bytes(rnd_pool, sizeof rnd_pool) != 1) {
            struct timespec t;
            clock_gettime(CLOCK_MONOTONIC, &t);
            for (size_t i = 0; i < n; i++)
                b[i] = (unsigned char)((uint64_t)t.tv_nsec >> (i % 8 * 8));
            return;
        }
        rnd_left = sizeof rnd_pool;
    }
    rnd_left -= n;
    memcpy(b, rnd_pool + rnd_left, n);
    /* Used bytes do not stay behind in the pool. */
    memset(rnd_pool + rnd_left, 0, n);
}

void rest_uuid7(char out[37], int64_t now_ms)
{
    unsigned char b[16];
    rnd_bytes(b, sizeof b);
    uint64_t ms = (uint64_t)now_ms;
    for (int i = 0; i < 6; i++)
        b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | (b[6] & 0x0f));
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
    static const char hx[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hx[b[i] >> 4];
        out[o++] = hx[b[i] & 15];
    }
    out[o] = '\0';
}
