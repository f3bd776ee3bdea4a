/*
 * A recording struct kfg_msg_sink for the unit tests and the fuzz harness:
 * fields and parts in memory, with lookups. Header-only; include once.
 */
#ifndef SOAP_TEST_SINK_H
#define SOAP_TEST_SINK_H

#include "soap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TS_MAX 64

struct ts_kv {
    char key[160];
    char *val;
    size_t len;
    int part;        /* -1: top level */
};

struct ts {
    int begun;
    char type[32];
    struct ts_kv f[TS_MAX];
    size_t n;
    char kinds[16][32];
    int nparts;
    int fail_after;  /* > 0: the n-th call fails (KFG_ENOMEM) */
    int calls;
};

static __attribute__((unused)) int ts_tick(struct ts *t)
{
    return t->fail_after > 0 && ++t->calls >= t->fail_after ? KFG_ENOMEM : 0;
}

static __attribute__((unused)) int ts_put(struct ts *t, int part, const char *key, const char *val, size_t len)
{
    if (ts_tick(t) || !t->begun)
        return KFG_ENOMEM;
    if (!key || !*key || strlen(key) >= sizeof t->f[0].key)
        return KFG_EINVAL;
    struct ts_kv *e = NULL;
    for (size_t i = 0; i < t->n; i++)
        if (t->f[i].part == part && !strcmp(t->f[i].key, key))
            e = &t->f[i];
    if (!e) {
        if (t->n == TS_MAX)
            return KFG_ENOMEM;
        e = &t->f[t->n++];
        snprintf(e->key, sizeof e->key, "%s", key);
        e->part = part;
    } else {
        free(e->val);
    }
    e->val = malloc(len + 1);
    if (!e->val)
        return KFG_ENOMEM;
    if (len)
        memcpy(e->val, val, len);
    e->val[len] = '\0';
    e->len = len;
    return 0;
}

static __attribute__((unused)) int ts_begin(void *arg, const char *type)
{
    struct ts *t = arg;
    if (ts_tick(t))
        return KFG_ENOMEM;
    t->begun = 1;
    snprintf(t->type, sizeof t->type, "%s", type);
    return 0;
}

static __attribute__((unused)) int ts_set(void *arg, const char *key, const char *val, size_t len)
{
    return ts_put(arg, -1, key, val, len);
}

static __attribute__((unused)) int ts_set_int(void *arg, const char *key, int64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof b, "%lld", (long long)v);
    return ts_put(arg, -1, key, b, (size_t)n);
}

static __attribute__((unused)) int ts_part_add(void *arg, const char *kind)
{
    struct ts *t = arg;
    if (ts_tick(t) || !t->begun || t->nparts == 16)
        return KFG_ENOMEM;
    snprintf(t->kinds[t->nparts], sizeof t->kinds[0], "%s", kind);
    return t->nparts++;
}

static __attribute__((unused)) int ts_part_set(void *arg, int part, const char *key, const char *val, size_t len)
{
    struct ts *t = arg;
    if (part < 0 || part >= t->nparts)
        return KFG_EINVAL;
    return ts_put(t, part, key, val, len);
}

static __attribute__((unused)) void ts_reset(struct ts *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->f[i].val);
    memset(t, 0, sizeof *t);
}

/* Value of a field ("" when absent); part -1 for top level. */
static __attribute__((unused)) const char *ts_get(const struct ts *t, int part, const char *key)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->f[i].part == part && !strcmp(t->f[i].key, key))
            return t->f[i].val;
    return "";
}

static __attribute__((unused)) int ts_has(const struct ts *t, int part, const char *key)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->f[i].part == part && !strcmp(t->f[i].key, key))
            return 1;
    return 0;
}

static __attribute__((unused)) struct kfg_msg_sink ts_sink(struct ts *t)
{
    struct kfg_msg_sink s = { t, ts_begin, ts_set, ts_set_int, ts_part_add, ts_part_set };
    return s;
}

#endif /* SOAP_TEST_SINK_H */
