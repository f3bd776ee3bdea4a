/* The bounded status table; see soap.h. Records live in a ring (the
 * oldest is overwritten when full); each has up to three keys, chained in
 * one hash table as (record index * 3 + which). */
#include "soap.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

struct srec {
    struct soap_rec r;
    int used;
    int32_t next[3];
    uint64_t hash[3];
};

struct soap_store {
    pthread_mutex_t mu;
    size_t cap, n, head, nb;
    int32_t *buckets;
    struct srec *rec;
};

static uint64_t fnv(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static const char *key_of(const struct srec *e, int w)
{
    return w == 0 ? e->r.id : w == 1 ? e->r.envelope_id : e->r.idem;
}

struct soap_store *soap_store_new(size_t cap)
{
    if (!cap || cap > (1u << 24))
        return NULL;
    struct soap_store *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->cap = cap;
    s->nb = 64;
    while (s->nb < cap * 3)
        s->nb <<= 1;
    s->buckets = malloc(s->nb * sizeof *s->buckets);
    s->rec = calloc(cap, sizeof *s->rec);
    if (!s->buckets || !s->rec) {
        free(s->buckets);
        free(s->rec);
        free(s);
        return NULL;
    }
    for (size_t i = 0; i < s->nb; i++)
        s->buckets[i] = -1;
    pthread_mutex_init(&s->mu, NULL);
    return s;
}

void soap_store_free(struct soap_store *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->mu);
    free(s->buckets);
    free(s->rec);
    free(s);
}

static void link_key(struct soap_store *s, size_t idx, int w)
{
    struct srec *e = &s->rec[idx];
    const char *k = key_of(e, w);
    if (!*k)
        return;
    e->hash[w] = fnv(k, strlen(k));
    size_t b = e->hash[w] & (s->nb - 1);
    e->next[w] = s->buckets[b];
    s->buckets[b] = (int32_t)(idx * 3 + (size_t)w);
}

static void unlink_key(struct soap_store *s, size_t idx, int w)
{
    struct srec *e = &s->rec[idx];
    if (!*key_of(e, w))
        return;
    int32_t want = (int32_t)(idx * 3 + (size_t)w);
    int32_t *pp = &s->buckets[e->hash[w] & (s->nb - 1)];
    while (*pp != -1) {
        if (*pp == want) {
            *pp = e->next[w];
            return;
        }
        pp = &s->rec[*pp / 3].next[*pp % 3];
    }
}

static struct srec *find(struct soap_store *s, const char *key, size_t klen, size_t *idx)
{
    uint64_t h = fnv(key, klen);
    for (int32_t i = s->buckets[h & (s->nb - 1)]; i != -1; i = s->rec[i / 3].next[i % 3]) {
        struct srec *e = &s->rec[i / 3];
        const char *k = key_of(e, i % 3);
        if (e->hash[i % 3] == h && strlen(k) == klen && !memcmp(k, key, klen)) {
            if (idx)
                *idx = (size_t)(i / 3);
            return e;
        }
    }
    return NULL;
}

void soap_store_put(struct soap_store *s, const struct soap_rec *r)
{
    if (!r->id[0])
        return;
    pthread_mutex_lock(&s->mu);
    size_t idx;
    struct srec *e = find(s, r->id, strlen(r->id), &idx);
    /* Only a record's own id finds it for an update; a key that is some
     * other record's envelope id or idem makes a new record. */
    if (e && strcmp(e->r.id, r->id) != 0)
        e = NULL;
    if (e) {
        int64_t created = e->r.created_ms;
        uint64_t seq = e->r.seq;
        unsigned attempts = e->r.attempts;
        for (int w = 1; w < 3; w++) {
            const char *nk = w == 1 ? r->envelope_id : r->idem;
            if (*nk && strcmp(nk, key_of(e, w)) != 0) {
                unlink_key(s, idx, w);
                if (w == 1)
                    memcpy(e->r.envelope_id, r->envelope_id, sizeof e->r.envelope_id);
                else
                    memcpy(e->r.idem, r->idem, sizeof e->r.idem);
                link_key(s, idx, w);
            }
        }
        char env[64], idem[512];
        memcpy(env, e->r.envelope_id, sizeof env);
        memcpy(idem, e->r.idem, sizeof idem);
        e->r = *r;
        memcpy(e->r.envelope_id, env, sizeof env);
        memcpy(e->r.idem, idem, sizeof idem);
        e->r.created_ms = created;
        if (!r->seq)
            e->r.seq = seq;
        if (!r->attempts)
            e->r.attempts = attempts;
        pthread_mutex_unlock(&s->mu);
        return;
    }
    if (s->n == s->cap) {
        for (int w = 0; w < 3; w++)
            unlink_key(s, s->head, w);
        s->rec[s->head].used = 0;
        s->head = (s->head + 1) % s->cap;
        s->n--;
    }
    idx = (s->head + s->n) % s->cap;
    e = &s->rec[idx];
    memset(e, 0, sizeof *e);
    e->r = *r;
    e->r.id[sizeof e->r.id - 1] = e->r.envelope_id[sizeof e->r.envelope_id - 1] =
        e->r.idem[sizeof e->r.idem - 1] = '\0';
    if (!e->r.created_ms)
        e->r.created_ms = e->r.updated_ms;
    e->used = 1;
    for (int w = 0; w < 3; w++)
        link_key(s, idx, w);
    s->n++;
    pthread_mutex_unlock(&s->mu);
}

int soap_store_get(struct soap_store *s, const char *key, size_t klen, struct soap_rec *out)
{
    pthread_mutex_lock(&s->mu);
    struct srec *e = find(s, key, klen, NULL);
    if (e)
        *out = e->r;
    pthread_mutex_unlock(&s->mu);
    return e ? 0 : -1;
}

size_t soap_store_count(struct soap_store *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

void soap_uuid7(char out[37], int64_t now_ms)
{
    unsigned char b[16];
    if (getrandom(b + 6, 10, 0) != 10) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        uint64_t x = (uint64_t)t.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)(uintptr_t)out;
        for (int i = 6; i < 16; i++, x = x * 6364136223846793005ull + 1)
            b[i] = (unsigned char)(x >> 56);
    }
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
