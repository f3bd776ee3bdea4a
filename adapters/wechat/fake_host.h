/*
 * A fake host for the unit tests and the fuzz harness: just the msg_* part
 * of struct kfg_host, recording fields and parts in memory, plus lookups.
 * Header-only; include it once per test program.
 */
#ifndef WX_FAKE_HOST_H
#define WX_FAKE_HOST_H

#include <kfgate/plugin.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FH_MAX 64        /* top-level fields */
#define FH_PARTS 16      /* parts */
#define FH_PFIELDS 32    /* fields of one part */

struct fh_field {
    char *key;
    char *val;
    size_t len;
    int is_int;
    int64_t i;
};

struct fh_part {
    char kind[32];
    struct fh_field f[FH_PFIELDS];
    size_t n;
};

struct kfg_msg {
    char type[32];
    struct fh_field f[FH_MAX];
    size_t n;
    struct fh_part p[FH_PARTS];
    size_t np;
};

static int fh_live;   /* messages alive, for leak checks */

static struct kfg_msg *fh_new(struct kfg_instance *ins, const char *type)
{
    (void)ins;
    struct kfg_msg *m = calloc(1, sizeof *m);
    if (m) {
        snprintf(m->type, sizeof m->type, "%s", type);
        fh_live++;
    }
    return m;
}

static void fh_fields_free(struct fh_field *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(f[i].val);
        free(f[i].key);
    }
}

static void fh_free(struct kfg_msg *m)
{
    if (!m)
        return;
    fh_fields_free(m->f, m->n);
    for (size_t i = 0; i < m->np; i++)
        fh_fields_free(m->p[i].f, m->p[i].n);
    free(m);
    fh_live--;
}

static const char *fh_canon(const char *key)
{
    if (!strcmp(key, "conversation")) return "conversation.id";
    if (!strcmp(key, "sender")) return "sender.id";
    if (!strcmp(key, "recipient")) return "recipient.id";
    if (!strcmp(key, "idempotency_key")) return "idem";
    return key;
}

static int fh_put(struct fh_field *f, size_t *n, size_t max, const char *key, const char *val,
                  size_t len, int is_int, int64_t iv)
{
    if (!key || !*key || strlen(key) > 256)
        return KFG_EINVAL;
    struct fh_field *t = NULL;
    for (size_t i = 0; i < *n; i++)
        if (!strcmp(f[i].key, key))
            t = &f[i];
    if (!t) {
        if (*n == max)
            return KFG_ENOMEM;
        t = &f[*n];
        t->key = strdup(key);
        if (!t->key)
            return KFG_ENOMEM;
        (*n)++;
    } else {
        free(t->val);
    }
    t->val = NULL;
    t->len = 0;
    t->is_int = is_int;
    t->i = iv;
    if (!is_int) {
        t->val = malloc(len + 1);
        if (!t->val)
            return KFG_ENOMEM;
        if (len)
            memcpy(t->val, val, len);
        t->val[len] = '\0';
        t->len = len;
    }
    return KFG_OK;
}

static int fh_set(struct kfg_msg *m, const char *key, const char *val, size_t len)
{
    return fh_put(m->f, &m->n, FH_MAX, fh_canon(key), val, len, 0, 0);
}

static int fh_set_int(struct kfg_msg *m, const char *key, int64_t v)
{
    return fh_put(m->f, &m->n, FH_MAX, fh_canon(key), NULL, 0, 1, v);
}

static struct kfg_str fh_get(const struct kfg_msg *m, const char *key)
{
    key = fh_canon(key);
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->f[i].key, key) && !m->f[i].is_int)
            return (struct kfg_str){m->f[i].val, m->f[i].len};
    return (struct kfg_str){NULL, 0};
}

static int fh_part_add(struct kfg_msg *m, const char *kind)
{
    if (m->np == FH_PARTS)
        return KFG_ENOMEM;
    snprintf(m->p[m->np].kind, sizeof m->p[m->np].kind, "%s", kind);
    return (int)m->np++;
}

static int fh_part_set(struct kfg_msg *m, size_t part, const char *key, const char *val,
                       size_t len)
{
    if (part >= m->np)
        return KFG_EINVAL;
    return fh_put(m->p[part].f, &m->p[part].n, FH_PFIELDS, key, val, len, 0, 0);
}

static size_t fh_part_count(const struct kfg_msg *m)
{
    return m->np;
}

static const char *fh_part_kind(const struct kfg_msg *m, size_t part)
{
    return part < m->np ? m->p[part].kind : NULL;
}

static struct kfg_str fh_part_get(const struct kfg_msg *m, size_t part, const char *key)
{
    if (part < m->np)
        for (size_t i = 0; i < m->p[part].n; i++)
            if (!strcmp(m->p[part].f[i].key, key))
                return (struct kfg_str){m->p[part].f[i].val, m->p[part].f[i].len};
    return (struct kfg_str){NULL, 0};
}

static const struct kfg_host fake_host = {
    .abi_major = KFG_ABI_MAJOR,
    .abi_minor = KFG_ABI_MINOR,
    .struct_size = sizeof(struct kfg_host),
    .version = "fake",
    .msg_new = fh_new,
    .msg_free = fh_free,
    .msg_set = fh_set,
    .msg_set_int = fh_set_int,
    .msg_get = fh_get,
    .msg_part_add = fh_part_add,
    .msg_part_set = fh_part_set,
    .msg_part_count = fh_part_count,
    .msg_part_kind = fh_part_kind,
    .msg_part_get = fh_part_get,
};

/* Test lookups: a string field ("" when absent), an int field. */
static inline const char *fh_s(const struct kfg_msg *m, const char *key)
{
    struct kfg_str s = fh_get(m, key);
    return s.ptr ? s.ptr : "";
}

static inline int fh_has(const struct kfg_msg *m, const char *key)
{
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->f[i].key, key))
            return 1;
    return 0;
}

static inline int64_t fh_i(const struct kfg_msg *m, const char *key)
{
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->f[i].key, key) && m->f[i].is_int)
            return m->f[i].i;
    return INT64_MIN;
}

static inline const char *fh_ps(const struct kfg_msg *m, size_t part, const char *key)
{
    struct kfg_str s = fh_part_get(m, part, key);
    return s.ptr ? s.ptr : "";
}

#endif /* WX_FAKE_HOST_H */
