#include "msg.h"

#include "envelope.h"

#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static const char *const reserved_keys[] = {
    "v", "id", "seq", "tenant", "channel", "instance", "type", "parts",
    "ts.accepted", NULL,
};

/* 1 when a and b are the same key, 2 when one is a map holding the other
 * ("a.b" vs "a", "a" vs "a.b.c"; never "ab" vs "a"), else 0. */
static inline int key_rel(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    if (!*a && !*b)
        return 1;
    return (!*a && *b == '.') || (!*b && *a == '.') ? 2 : 0;
}

int kfg_msg_reserved(const char *key)
{
    if (!key)
        return 1;
    for (const char *const *k = reserved_keys; *k; k++)
        if ((*k)[0] == key[0] && key_rel(*k, key))
            return 1;
    return 0;
}

/* The key's length when it is a valid key, else 0: one pass for both. */
static size_t key_check(const char *key)
{
    if (!key || !*key)
        return 0;
    size_t n = 0, segs = 1;
    char prev = '.';
    for (const char *p = key; *p; p++, n++) {
        if (*p == '.') {
            if (prev == '.')
                return 0;
            segs++;
        }
        prev = *p;
    }
    return prev != '.' && n <= KFG_MSG_KEY_MAX && segs <= KFG_MSG_KEY_DEPTH ? n : 0;
}

int kfg_msg_key_valid(const char *key)
{
    return key_check(key) != 0;
}

static const char *const aliases[][2] = {
    { "conversation", "conversation.id" },
    { "sender", "sender.id" },
    { "recipient", "recipient.id" },
    { "idempotency_key", "idem" },
    { "direction", "dir" },
};

const char *kfg_msg_canon_key(const char *key)
{
    if (!key)
        return NULL;
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
        if (key[0] == aliases[i][0][0] && strcmp(key, aliases[i][0]) == 0)
            return aliases[i][1];
    return key;
}

struct kfg_msg_blk {
    struct kfg_msg_blk *next;
    _Alignas(16) char data[];
};

/* n bytes from the message's arena, 8-aligned; NULL when out of memory. */
static void *arena_alloc(struct kfg_msg *m, size_t n)
{
    size_t need = (n + 7) & ~(size_t)7;
    if (need < n)
        return NULL;
    if (need > m->a_left) {
        size_t sz = m->a_next;
        if (sz < need)
            sz = need;
        struct kfg_msg_blk *b = malloc(sizeof(*b) + sz);
        if (!b)
            return NULL;
        b->next = m->blocks;
        m->blocks = b;
        m->a_p = b->data;
        m->a_left = sz;
        if (m->a_next < 64 * 1024)
            m->a_next *= 2;
    }
    void *r = m->a_p;
    m->a_p += need;
    m->a_left -= need;
    return r;
}

static char *arena_strndup(struct kfg_msg *m, const char *s, size_t n)
{
    char *c = arena_alloc(m, n + 1);
    if (c) {
        if (n)
            memcpy(c, s, n);
        c[n] = '\0';
    }
    return c;
}

int kfg_msg_set_type(struct kfg_msg *m, const char *t, size_t n)
{
    char *c = arena_strndup(m, t, n);
    if (!c)
        return KFG_ENOMEM;
    m->type = c;
    return KFG_OK;
}

struct kfg_msg *kfg_msg_new(const char *type, const char *tenant,
                            const char *channel, const char *instance)
{
    if (!type || !*type)
        return NULL;
    /* Not calloc: the inline arrays and arena need no zeroing. */
    struct kfg_msg *m = malloc(sizeof(*m));
    if (!m)
        return NULL;
    memset(m, 0, offsetof(struct kfg_msg, fields0));
    m->fields = m->fields0;
    m->cap = KFG_MSG_INLINE_FIELDS;
    m->parts = m->parts0;
    m->partcap = KFG_MSG_INLINE_PARTS;
    m->a_p = m->arena0;
    m->a_left = sizeof(m->arena0);
    m->a_next = 2 * sizeof(m->arena0);
    if (kfg_msg_set_type(m, type, strlen(type)) != KFG_OK) {
        free(m);
        return NULL;
    }
    m->tenant = tenant;
    m->channel = channel;
    m->instance = instance;
    return m;
}

void kfg_msg_free(struct kfg_msg *m)
{
    if (!m)
        return;
    for (struct kfg_msg_blk *b = m->blocks, *nx; b; b = nx) {
        nx = b->next;
        free(b);
    }
    free(m);
}

/* Sets v->key in a field list, replacing an existing value of the same key
 * in place (so the order of first set is kept). A key that would be both a
 * value and a map next to an existing one is KFG_EINVAL. */
static int field_set(struct kfg_msg *m, struct kfg_field **fs, size_t *n, size_t *cap,
                     const struct kfg_field *v)
{
    size_t klen = key_check(v->key);
    if (!klen)
        return KFG_EINVAL;
    size_t at = *n;
    const char *key = v->key;
    for (size_t i = 0; i < *n; i++) {
        const char *k = (*fs)[i].key;
        /* Differing first bytes can neither match nor overlap. */
        if (k[0] != key[0])
            continue;
        int rel = key_rel(k, key);
        if (rel == 1) {
            at = i;
            break;
        }
        if (rel == 2)
            return KFG_EINVAL;
    }
    int has_bytes = v->type == KFG_F_STR || v->type == KFG_F_RAW;
    if (has_bytes && !v->val && v->len)
        return KFG_EINVAL;
    if (at < *n) {
        struct kfg_field *f = &(*fs)[at];
        /* A new copy: the old bytes stay valid until kfg_msg_free. */
        char *val = NULL;
        if (has_bytes && !(val = arena_strndup(m, v->val ? v->val : "", v->len)))
            return KFG_ENOMEM;
        char *k = f->key;
        *f = *v;
        f->key = k;
        f->val = val;
        return KFG_OK;
    }
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        struct kfg_field *nf = arena_alloc(m, nc * sizeof(*nf));
        if (!nf)
            return KFG_ENOMEM;
        if (*n)
            memcpy(nf, *fs, *n * sizeof(*nf));
        *fs = nf;
        *cap = nc;
    }
    char *k = arena_strndup(m, key, klen);
    char *val = NULL;
    if (k && has_bytes)
        val = arena_strndup(m, v->val ? v->val : "", v->len);
    if (!k || (has_bytes && !val))
        return KFG_ENOMEM;
    (*fs)[*n] = *v;
    (*fs)[*n].key = k;
    (*fs)[*n].val = val;
    (*n)++;
    return KFG_OK;
}

static const struct kfg_field *field_find(const struct kfg_field *fs, size_t n,
                                          const char *key)
{
    /* The first byte rules out almost every field without a call. */
    for (size_t i = 0; i < n; i++)
        if (fs[i].key[0] == key[0] && strcmp(fs[i].key, key) == 0)
            return &fs[i];
    return NULL;
}

static struct kfg_str field_get(const struct kfg_field *fs, size_t n,
                                const char *key)
{
    const struct kfg_field *f = field_find(fs, n, key);
    if (f && f->type == KFG_F_STR)
        return (struct kfg_str){ f->val, f->len };
    return (struct kfg_str){ NULL, 0 };
}

/* The plugin-facing setters: aliases apply, reserved keys are refused. */
static int top_set(struct kfg_msg *m, const char *key, struct kfg_field v)
{
    if (!m || !key)
        return KFG_EINVAL;
    key = kfg_msg_canon_key(key);
    if (kfg_msg_reserved(key))
        return KFG_EINVAL;
    v.key = (char *)key;
    return field_set(m, &m->fields, &m->nfields, &m->cap, &v);
}

int kfg_msg_set(struct kfg_msg *m, const char *key, const char *val, size_t len)
{
    if (!val && len)
        return KFG_EINVAL;
    return top_set(m, key, (struct kfg_field){ .type = KFG_F_STR,
                                              .val = (char *)(val ? val : ""), .len = len });
}

int kfg_msg_set_int(struct kfg_msg *m, const char *key, int64_t val)
{
    return top_set(m, key, (struct kfg_field){ .type = KFG_F_INT, .ival = val });
}

int kfg_msg_set_uint(struct kfg_msg *m, const char *key, uint64_t val)
{
    return top_set(m, key, (struct kfg_field){ .type = KFG_F_UINT, .ival = (int64_t)val });
}

int kfg_msg_set_bool(struct kfg_msg *m, const char *key, int val)
{
    return top_set(m, key, (struct kfg_field){ .type = KFG_F_BOOL, .ival = val != 0 });
}

int kfg_msg_set_float(struct kfg_msg *m, const char *key, double val)
{
    return top_set(m, key, (struct kfg_field){ .type = KFG_F_FLOAT, .dval = val });
}

int kfg_msg_set_raw(struct kfg_msg *m, const char *key, const void *mp, size_t len)
{
    if (!mp || !len)
        return KFG_EINVAL;
    return top_set(m, key, (struct kfg_field){ .type = KFG_F_RAW, .val = (char *)mp,
                                              .len = len });
}

int kfg_msg_put(struct kfg_msg *m, long part, const struct kfg_field *f)
{
    if (!m || !f || !f->key)
        return KFG_EINVAL;
    if (part < 0)
        return field_set(m, &m->fields, &m->nfields, &m->cap, f);
    if ((size_t)part >= m->nparts || strcmp(f->key, "kind") == 0)
        return KFG_EINVAL;
    struct kfg_part *p = &m->parts[part];
    return field_set(m, &p->fields, &p->nfields, &p->cap, f);
}

const struct kfg_field *kfg_msg_field(const struct kfg_msg *m, const char *key)
{
    if (!m || !key)
        return NULL;
    return field_find(m->fields, m->nfields, kfg_msg_canon_key(key));
}

const struct kfg_field *kfg_msg_part_field(const struct kfg_msg *m, size_t part,
                                           const char *key)
{
    if (!m || part >= m->nparts || !key)
        return NULL;
    return field_find(m->parts[part].fields, m->parts[part].nfields, key);
}

struct kfg_str kfg_msg_get(const struct kfg_msg *m, const char *key)
{
    if (!m || !key)
        return (struct kfg_str){ NULL, 0 };
    if (strcmp(key, "type") == 0)
        return (struct kfg_str){ m->type, strlen(m->type) };
    if (strcmp(key, "id") == 0 && m->id[0])
        return (struct kfg_str){ m->id, strlen(m->id) };
    if (strcmp(key, "tenant") == 0 && m->tenant)
        return (struct kfg_str){ m->tenant, strlen(m->tenant) };
    if (strcmp(key, "channel") == 0 && m->channel)
        return (struct kfg_str){ m->channel, strlen(m->channel) };
    if (strcmp(key, "instance") == 0 && m->instance)
        return (struct kfg_str){ m->instance, strlen(m->instance) };
    return field_get(m->fields, m->nfields, kfg_msg_canon_key(key));
}

int kfg_msg_get_int(const struct kfg_msg *m, const char *key, int64_t *out)
{
    if (!m || !key || !out)
        return KFG_EINVAL;
    if (strcmp(key, "seq") == 0 && m->seq) {
        *out = (int64_t)m->seq;
        return KFG_OK;
    }
    if (strcmp(key, "ts.accepted") == 0 && m->accepted_ms) {
        *out = m->accepted_ms;
        return KFG_OK;
    }
    const struct kfg_field *f = kfg_msg_field(m, key);
    if (!f || (f->type != KFG_F_INT && f->type != KFG_F_UINT))
        return KFG_ENOTFOUND;
    *out = f->ival;
    return KFG_OK;
}

int kfg_msg_part_add(struct kfg_msg *m, const char *kind)
{
    if (!m || !kind || !*kind)
        return KFG_EINVAL;
    if (m->nparts == m->partcap) {
        size_t nc = m->partcap * 2;
        struct kfg_part *np = arena_alloc(m, nc * sizeof(*np));
        if (!np)
            return KFG_ENOMEM;
        memcpy(np, m->parts, m->nparts * sizeof(*np));
        m->parts = np;
        m->partcap = nc;
    }
    char *k = arena_strndup(m, kind, strlen(kind));
    if (!k)
        return KFG_ENOMEM;
    m->parts[m->nparts] = (struct kfg_part){ .kind = k };
    return (int)m->nparts++;
}

int kfg_msg_part_set(struct kfg_msg *m, size_t part, const char *key,
                     const char *val, size_t len)
{
    if (!m || part >= m->nparts || !key || strcmp(key, "kind") == 0 ||
        (!val && len))
        return KFG_EINVAL;
    struct kfg_part *p = &m->parts[part];
    struct kfg_field v = { .key = (char *)key, .type = KFG_F_STR,
                           .val = (char *)(val ? val : ""), .len = len };
    return field_set(m, &p->fields, &p->nfields, &p->cap, &v);
}

size_t kfg_msg_part_count(const struct kfg_msg *m)
{
    return m ? m->nparts : 0;
}

const char *kfg_msg_part_kind(const struct kfg_msg *m, size_t part)
{
    return m && part < m->nparts ? m->parts[part].kind : NULL;
}

struct kfg_str kfg_msg_part_get(const struct kfg_msg *m, size_t part,
                                const char *key)
{
    if (!m || part >= m->nparts || !key)
        return (struct kfg_str){ NULL, 0 };
    return field_get(m->parts[part].fields, m->parts[part].nfields, key);
}

/* xorshift128+ seeded per thread from getrandom: ids need uniqueness and
 * order, not secrecy, and a syscall per id would cost more than the id. */
static __thread uint64_t rng_s[2];
/* The clock and counter are shared by every thread, so ids from different
 * threads are ordered too: the journal assigns them under its lock in seq
 * order, and sorted ids then follow seq (spec/envelope.md, `id`). */
static pthread_mutex_t uuid_mu = PTHREAD_MUTEX_INITIALIZER;
static int64_t last_ms;
static uint16_t last_seq;

static uint64_t rng_next(void)
{
    if (!rng_s[0] && !rng_s[1]) {
        if (getrandom(rng_s, sizeof(rng_s), 0) != sizeof(rng_s) ||
            (!rng_s[0] && !rng_s[1])) {
            rng_s[0] = (uint64_t)time(NULL) ^ 0x9e3779b97f4a7c15ull;
            rng_s[1] = (uint64_t)(uintptr_t)&rng_s ^ 0xbf58476d1ce4e5b9ull;
        }
    }
    uint64_t s1 = rng_s[0];
    const uint64_t s0 = rng_s[1];
    rng_s[0] = s0;
    s1 ^= s1 << 23;
    rng_s[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return rng_s[1] + s0;
}

void kfg_uuid7(char out[37], int64_t *ms_out)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    /* RFC 9562 method 1: a 12-bit counter in rand_a keeps ids ordered
     * within the same millisecond. */
    pthread_mutex_lock(&uuid_mu);
    if (ms <= last_ms) {
        ms = last_ms;
        if (++last_seq > 0xfff) {
            ms = ++last_ms;
            last_seq = 0;
        }
    } else {
        last_ms = ms;
        last_seq = (uint16_t)(rng_next() & 0x3ff);
    }
    uint16_t seq = last_seq;
    pthread_mutex_unlock(&uuid_mu);
    uint8_t b[16];
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)((uint64_t)ms >> (40 - 8 * i));
    b[6] = (uint8_t)(0x70 | (seq >> 8));
    b[7] = (uint8_t)seq;
    uint64_t r = rng_next();
    for (int i = 0; i < 8; i++)
        b[8 + i] = (uint8_t)(r >> (8 * i));
    b[8] = (uint8_t)(0x80 | (b[8] & 0x3f));
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
    if (ms_out)
        *ms_out = ms;
}

void kfg_msg_accept(struct kfg_msg *m, uint64_t seq)
{
    kfg_uuid7(m->id, &m->accepted_ms);
    m->seq = seq;
}

void kfg_msg_to_json(const struct kfg_msg *m, struct kfg_buf *out)
{
    struct kfg_buf mp = { 0 };
    if (kfg_env_encode(m, &mp) != 0 || mp.oom || kfg_env_to_json(mp.p, mp.len, out) != 0)
        out->oom = 1;
    kfg_buf_free(&mp);
}
