#include "msg.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static const char *const reserved_keys[] = {
    "v", "id", "seq", "tenant", "channel", "instance", "ts_accepted",
    "type", "parts", NULL,
};

int kfg_msg_reserved(const char *key)
{
    for (const char *const *k = reserved_keys; *k; k++)
        if (strcmp(*k, key) == 0)
            return 1;
    return 0;
}

struct kfg_msg *kfg_msg_new(const char *type, const char *tenant,
                            const char *channel, const char *instance)
{
    if (!type || !*type)
        return NULL;
    struct kfg_msg *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->type = strdup(type);
    if (!m->type) {
        free(m);
        return NULL;
    }
    m->tenant = tenant;
    m->channel = channel;
    m->instance = instance;
    return m;
}

static void fields_free(struct kfg_field *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(f[i].key);
        free(f[i].val);
    }
    free(f);
}

void kfg_msg_free(struct kfg_msg *m)
{
    if (!m)
        return;
    fields_free(m->fields, m->nfields);
    for (size_t i = 0; i < m->nparts; i++) {
        free(m->parts[i].kind);
        fields_free(m->parts[i].fields, m->parts[i].nfields);
    }
    free(m->parts);
    free(m->type);
    free(m);
}

/* Sets key in a field list, replacing an existing value. */
static int field_set(struct kfg_field **fs, size_t *n, size_t *cap,
                     const char *key, const char *val, size_t len, int64_t ival)
{
    if (!key || !*key)
        return KFG_EINVAL;
    char *copy = NULL;
    if (val) {
        copy = malloc(len + 1);
        if (!copy)
            return KFG_ENOMEM;
        memcpy(copy, val, len);
        copy[len] = '\0';
    }
    for (size_t i = 0; i < *n; i++) {
        if (strcmp((*fs)[i].key, key) == 0) {
            free((*fs)[i].val);
            (*fs)[i].val = copy;
            (*fs)[i].len = len;
            (*fs)[i].ival = ival;
            return KFG_OK;
        }
    }
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        struct kfg_field *nf = realloc(*fs, nc * sizeof(*nf));
        if (!nf) {
            free(copy);
            return KFG_ENOMEM;
        }
        *fs = nf;
        *cap = nc;
    }
    char *k = strdup(key);
    if (!k) {
        free(copy);
        return KFG_ENOMEM;
    }
    (*fs)[*n] = (struct kfg_field){ .key = k, .val = copy, .len = len, .ival = ival };
    (*n)++;
    return KFG_OK;
}

static struct kfg_str field_get(const struct kfg_field *fs, size_t n,
                                const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(fs[i].key, key) == 0 && fs[i].val)
            return (struct kfg_str){ fs[i].val, fs[i].len };
    return (struct kfg_str){ NULL, 0 };
}

int kfg_msg_set(struct kfg_msg *m, const char *key, const char *val, size_t len)
{
    if (!m || !key || kfg_msg_reserved(key) || (!val && len))
        return KFG_EINVAL;
    return field_set(&m->fields, &m->nfields, &m->cap, key, val ? val : "", len, 0);
}

int kfg_msg_set_int(struct kfg_msg *m, const char *key, int64_t val)
{
    if (!m || !key || kfg_msg_reserved(key))
        return KFG_EINVAL;
    return field_set(&m->fields, &m->nfields, &m->cap, key, NULL, 0, val);
}

struct kfg_str kfg_msg_get(const struct kfg_msg *m, const char *key)
{
    if (!m || !key)
        return (struct kfg_str){ NULL, 0 };
    if (strcmp(key, "type") == 0)
        return (struct kfg_str){ m->type, strlen(m->type) };
    if (strcmp(key, "tenant") == 0 && m->tenant)
        return (struct kfg_str){ m->tenant, strlen(m->tenant) };
    if (strcmp(key, "channel") == 0 && m->channel)
        return (struct kfg_str){ m->channel, strlen(m->channel) };
    if (strcmp(key, "instance") == 0 && m->instance)
        return (struct kfg_str){ m->instance, strlen(m->instance) };
    return field_get(m->fields, m->nfields, key);
}

int kfg_msg_part_add(struct kfg_msg *m, const char *kind)
{
    if (!m || !kind || !*kind)
        return KFG_EINVAL;
    if (m->nparts == m->partcap) {
        size_t nc = m->partcap ? m->partcap * 2 : 4;
        struct kfg_part *np = realloc(m->parts, nc * sizeof(*np));
        if (!np)
            return KFG_ENOMEM;
        m->parts = np;
        m->partcap = nc;
    }
    char *k = strdup(kind);
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
    return field_set(&p->fields, &p->nfields, &p->cap, key, val ? val : "", len, 0);
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
static __thread int64_t last_ms;
static __thread uint16_t last_seq;

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
    /* RFC 9562 method 1: a 12-bit counter in rand_a keeps ids from one
     * thread ordered within the same millisecond. */
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
    uint8_t b[16];
    for (int i = 0; i < 6; i++)
        b[i] = (uint8_t)((uint64_t)ms >> (40 - 8 * i));
    b[6] = (uint8_t)(0x70 | (last_seq >> 8));
    b[7] = (uint8_t)last_seq;
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

static void fields_json(const struct kfg_field *fs, size_t n, struct kfg_buf *out)
{
    for (size_t i = 0; i < n; i++) {
        kfg_buf_putc(out, ',');
        kfg_buf_json_str(out, fs[i].key, strlen(fs[i].key));
        kfg_buf_putc(out, ':');
        if (fs[i].val)
            kfg_buf_json_str(out, fs[i].val, fs[i].len);
        else
            kfg_buf_printf(out, "%lld", (long long)fs[i].ival);
    }
}

static void json_kv(struct kfg_buf *out, const char *k, const char *v)
{
    kfg_buf_printf(out, ",\"%s\":", k);
    if (v)
        kfg_buf_json_str(out, v, strlen(v));
    else
        kfg_buf_puts(out, "null");
}

void kfg_msg_to_json(const struct kfg_msg *m, struct kfg_buf *out)
{
    kfg_buf_printf(out, "{\"v\":1,\"seq\":%llu", (unsigned long long)m->seq);
    json_kv(out, "id", m->id);
    json_kv(out, "tenant", m->tenant);
    json_kv(out, "channel", m->channel);
    json_kv(out, "instance", m->instance);
    json_kv(out, "type", m->type);
    kfg_buf_printf(out, ",\"ts_accepted\":%lld", (long long)m->accepted_ms);
    fields_json(m->fields, m->nfields, out);
    kfg_buf_puts(out, ",\"parts\":[");
    for (size_t i = 0; i < m->nparts; i++) {
        if (i)
            kfg_buf_putc(out, ',');
        kfg_buf_puts(out, "{\"kind\":");
        kfg_buf_json_str(out, m->parts[i].kind, strlen(m->parts[i].kind));
        fields_json(m->parts[i].fields, m->parts[i].nfields, out);
        kfg_buf_putc(out, '}');
    }
    kfg_buf_puts(out, "]}");
}
