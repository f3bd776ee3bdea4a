#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* ------------------------------------------------------------------------ */
/* Schema of the gateway's own sections. */

enum key_type { K_STR, K_U32, K_SIZE, K_LEVEL, K_FORMAT, K_FSYNC, K_BOOL };

struct key_spec {
    const char *name;
    enum key_type type;
    size_t off;               /* into struct kfg_config */
    int64_t min, max;
};

#define OFF(f) offsetof(struct kfg_config, f)

static const struct key_spec gateway_keys[] = {
    { "workers", K_U32, OFF(workers), 0, 256 },
    { "plugin_dir", K_STR, OFF(plugin_dir), 0, 0 },
    { "drain_timeout_ms", K_U32, OFF(drain_timeout_ms), 0, 3600000 },
    { NULL, 0, 0, 0, 0 },
};

static const struct key_spec http_keys[] = {
    { "listen", K_STR, OFF(http_listen), 0, 0 },
    { "max_head_bytes", K_SIZE, OFF(http.max_head_bytes), 256, 1 << 20 },
    { "max_headers", K_U32, OFF(http.max_headers), 4, 10000 },
    { "max_body_bytes", K_SIZE, OFF(http.max_body_bytes), 0, (int64_t)1 << 32 },
    { "max_connections", K_U32, OFF(http.max_connections), 1, 1000000 },
    { "header_timeout_ms", K_U32, OFF(http.header_timeout_ms), 1, 3600000 },
    { "body_timeout_ms", K_U32, OFF(http.body_timeout_ms), 1, 3600000 },
    { "idle_timeout_ms", K_U32, OFF(http.idle_timeout_ms), 1, 86400000 },
    { "write_timeout_ms", K_U32, OFF(http.write_timeout_ms), 1, 3600000 },
    { NULL, 0, 0, 0, 0 },
};

static const struct key_spec admin_keys[] = {
    { "listen", K_STR, OFF(admin_listen), 0, 0 },
    { NULL, 0, 0, 0, 0 },
};

static const struct key_spec log_keys[] = {
    { "format", K_FORMAT, OFF(log_format), 0, 0 },
    { "level", K_LEVEL, OFF(log_level), 0, 0 },
    { NULL, 0, 0, 0, 0 },
};

static const struct key_spec client_keys[] = {
    { "timeout_ms", K_U32, OFF(client_timeout_ms), 1, 3600000 },
    { "connect_timeout_ms", K_U32, OFF(client_connect_timeout_ms), 1, 600000 },
    { "max_response_bytes", K_SIZE, OFF(client_max_response_bytes), 1024, (int64_t)1 << 32 },
    { NULL, 0, 0, 0, 0 },
};

static const struct key_spec journal_keys[] = {
    { "dir", K_STR, OFF(journal.dir), 0, 0 },
    { "segment_bytes", K_SIZE, OFF(journal.segment_bytes), 4096, (int64_t)1 << 30 },
    { "fsync", K_FSYNC, OFF(journal.fsync), 0, 0 },
    { "fsync_interval_ms", K_U32, OFF(journal.fsync_interval_ms), 1, 60000 },
    { "max_bytes", K_SIZE, OFF(journal.max_bytes), 0, INT64_MAX },
    { "max_age_s", K_U32, OFF(journal.max_age_s), 0, UINT32_MAX },
    { "dedupe_window_s", K_U32, OFF(journal.dedupe_window_s), 0, 31 * 86400 },
    { "max_pending", K_U32, OFF(journal.max_pending), 1, 10000000 },
    { NULL, 0, 0, 0, 0 },
};

static const struct key_spec bus_keys[] = {
    { "feed", K_STR, OFF(bus.feed), 0, 0 },
    { "replay", K_STR, OFF(bus.replay), 0, 0 },
    { "outbound", K_STR, OFF(bus.outbound), 0, 0 },
    { "ipc_mode", K_U32, OFF(bus.ipc_mode), 0, 0777 },
    { "batch_max", K_U32, OFF(bus.batch_max), 1, 4096 },
    { "batch_bytes", K_SIZE, OFF(bus.batch_bytes), 1024, 16 << 20 },
    { "batch_linger_us", K_U32, OFF(bus.batch_linger_us), 0, 1000000 },
    { "validate_inbound", K_BOOL, OFF(bus.validate_inbound), 0, 0 },
    { "heartbeat_ms", K_U32, OFF(bus.heartbeat_ms), 10, 3600000 },
    { "replay_max", K_U32, OFF(bus.replay_max), 1, 65536 },
    { "replay_contexts", K_U32, OFF(bus.replay_contexts), 1, 256 },
    { "outbound_contexts", K_U32, OFF(bus.outbound_contexts), 1, 256 },
    { "retry_max", K_U32, OFF(bus.retry_max), 1, 1000 },
    { "retry_base_ms", K_U32, OFF(bus.retry_base_ms), 1, 3600000 },
    { "retry_cap_ms", K_U32, OFF(bus.retry_cap_ms), 1, 86400000 },
    { NULL, 0, 0, 0, 0 },
};

struct section_spec {
    const char *name;
    const struct key_spec *keys;
};

static const struct section_spec sections[] = {
    { "gateway", gateway_keys }, { "http", http_keys }, { "admin", admin_keys },
    { "log", log_keys }, { "client", client_keys },
    { "journal", journal_keys }, { "bus", bus_keys },
    { NULL, NULL },
};

static const char *const top_level[] = {
    "gateway", "http", "admin", "log", "client", "journal", "bus", "adapter",
    "filter", NULL,
};

static const char *const host_instance_keys[] = {
    "type", "name", "tenant", "log_level", NULL,
};

/* ------------------------------------------------------------------------ */

static void err_at(struct kfg_buf *errs, const char *file, struct kfg_toml_pos pos,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void err_at(struct kfg_buf *errs, const char *file, struct kfg_toml_pos pos,
                   const char *fmt, ...)
{
    kfg_buf_printf(errs, "%s:%u:%u: ", file, pos.line, pos.col);
    va_list ap;
    va_start(ap, fmt);
    kfg_buf_vprintf(errs, fmt, ap);
    va_end(ap);
    kfg_buf_putc(errs, '\n');
}

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return (size_t)-1;
    size_t prev[65], cur[65];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof(size_t));
    }
    return prev[lb];
}

const char *kfg_nearest(const char *word, const char *const *cands)
{
    const char *best = NULL;
    size_t bestd = (size_t)-1;
    for (const char *const *c = cands; *c; c++) {
        size_t d = edit_distance(word, *c);
        if (d < bestd) {
            bestd = d;
            best = *c;
        }
    }
    size_t len = strlen(word);
    size_t limit = len < 4 ? 1 : len < 9 ? 2 : 3;
    return bestd <= limit ? best : NULL;
}

/* A key (or other text from the file) fit for an error line: control bytes
 * (a key may hold "\n" or "\u0000") become \xHH, long text is cut. */
static const char *shown(char buf[static 280], const char *s, size_t len)
{
    size_t o = 0, i;
    for (i = 0; i < len && o < 256; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f || ch == '\\')
            o += (size_t)snprintf(buf + o, 8, "\\x%02x", ch);
        else
            buf[o++] = (char)ch;
    }
    if (i < len)
        o += (size_t)snprintf(buf + o, 8, "...");
    buf[o] = '\0';
    return buf;
}

/* Exact key match: a key may contain NUL bytes, so strcmp is not enough. */
static int key_is(const struct kfg_toml_entry *e, const char *name)
{
    return e->key_len == strlen(name) && memcmp(e->key, name, e->key_len) == 0;
}

static void unknown_key(struct kfg_buf *errs, const char *file,
                        const struct kfg_toml_entry *e, const char *where,
                        const char *const *known)
{
    const char *near = kfg_nearest(e->key, known);
    char kb[280];
    if (near)
        err_at(errs, file, e->key_pos, "%sunknown key '%s' (did you mean '%s'?)",
               where, shown(kb, e->key, e->key_len), near);
    else
        err_at(errs, file, e->key_pos, "%sunknown key '%s'", where,
               shown(kb, e->key, e->key_len));
}

/* "env:NAME" → the variable's value, for keys that may hold secrets. */
static const char *resolve_env(const char *v, struct kfg_buf *errs, const char *file,
                               struct kfg_toml_pos pos, const char *key)
{
    if (strncmp(v, "env:", 4) != 0)
        return v;
    const char *name = v + 4;
    const char *val = *name ? getenv(name) : NULL;
    if (!val) {
        char nb[280];
        err_at(errs, file, pos, "key '%s': environment variable '%s' is not set",
               key, shown(nb, name, strlen(name)));
        return NULL;
    }
    return val;
}

static void apply_section(struct kfg_config *c, const struct section_spec *sec,
                          const struct kfg_toml_value *t, struct kfg_buf *errs)
{
    const char *names[32];
    size_t nn = 0;
    for (const struct key_spec *k = sec->keys; k->name && nn < 31; k++)
        names[nn++] = k->name;
    names[nn] = NULL;
    char where[64];
    snprintf(where, sizeof(where), "[%s] ", sec->name);

    for (size_t i = 0; i < kfg_toml_table_len(t); i++) {
        const struct kfg_toml_entry *e = kfg_toml_table_at(t, i);
        const struct key_spec *k = sec->keys;
        while (k->name && !key_is(e, k->name))
            k++;
        if (!k->name) {
            unknown_key(errs, c->path, e, where, names);
            continue;
        }
        char *field = (char *)c + k->off;
        const struct kfg_toml_value *v = e->value;
        int64_t iv;
        const char *sv;
        switch (k->type) {
        case K_STR:
            if (!kfg_toml_get_string(v, &sv, NULL)) {
                err_at(errs, c->path, v->pos, "%skey '%s' must be a string, not %s",
                       where, e->key, kfg_toml_type_name(v->type));
                break;
            }
            *(const char **)field = sv;
            break;
        case K_U32:
        case K_SIZE:
            if (!kfg_toml_get_int(v, &iv)) {
                err_at(errs, c->path, v->pos, "%skey '%s' must be an integer, not %s",
                       where, e->key, kfg_toml_type_name(v->type));
                break;
            }
            if (iv < k->min || iv > k->max) {
                err_at(errs, c->path, v->pos,
                       "%skey '%s' = %lld is out of range %lld..%lld", where, e->key,
                       (long long)iv, (long long)k->min, (long long)k->max);
                break;
            }
            if (k->type == K_U32)
                *(uint32_t *)field = (uint32_t)iv;
            else
                *(size_t *)field = (size_t)iv;
            break;
        case K_LEVEL:
        case K_FORMAT: {
            int r = -1;
            if (kfg_toml_get_string(v, &sv, NULL))
                r = k->type == K_LEVEL ? kfg_log_level_parse(sv) : kfg_log_format_parse(sv);
            if (r < 0) {
                err_at(errs, c->path, v->pos, "%skey '%s' must be one of %s", where,
                       e->key, k->type == K_LEVEL ? "\"error\", \"warn\", \"info\", \"debug\""
                                                  : "\"logfmt\", \"json\"");
                break;
            }
            *(int *)field = r;
            break;
        }
        case K_BOOL: {
            bool bv;
            if (!kfg_toml_get_bool(v, &bv)) {
                err_at(errs, c->path, v->pos, "%skey '%s' must be a boolean, not %s",
                       where, e->key, kfg_toml_type_name(v->type));
                break;
            }
            *(int *)field = bv;
            break;
        }
        case K_FSYNC: {
            static const char *const policies[] = { "always", "interval", "never" };
            int r = -1;
            if (kfg_toml_get_string(v, &sv, NULL))
                for (int pi = 0; pi < 3; pi++)
                    if (strcmp(sv, policies[pi]) == 0)
                        r = pi;
            if (r < 0) {
                err_at(errs, c->path, v->pos,
                       "%skey '%s' must be one of \"always\", \"interval\", \"never\"",
                       where, e->key);
                break;
            }
            *(int *)field = r;
            break;
        }
        }
    }
}

static int valid_name(const char *s)
{
    if (!*s || strlen(s) > 64)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
              (*s >= '0' && *s <= '9') || *s == '_' || *s == '-' || *s == '.'))
            return 0;
    return 1;
}

static void load_instances(struct kfg_config *c, const char *section, int kind,
                           struct kfg_buf *errs)
{
    const struct kfg_toml_entry *e = kfg_toml_table_find(c->root, section, strlen(section));
    if (!e)
        return;
    const struct kfg_toml_value *arr = e->value;
    if (arr->type != KFG_TOML_ARRAY) {
        err_at(errs, c->path, e->key_pos, "'%s' must be an array of tables: write [[%s]]",
               section, section);
        return;
    }
    size_t n = kfg_toml_array_len(arr);
    struct kfg_instance_cfg *v = realloc(c->instances, (c->ninstances + n) * sizeof(*v));
    if (!v && n) {
        kfg_buf_puts(errs, "out of memory\n");
        return;
    }
    c->instances = v;
    for (size_t i = 0; i < n; i++) {
        const struct kfg_toml_value *t = kfg_toml_array_at(arr, i);
        if (t->type != KFG_TOML_TABLE) {
            err_at(errs, c->path, t->pos, "%s[%zu] must be a table", section, i);
            continue;
        }
        struct kfg_instance_cfg ic = { .kind = kind, .table = t, .pos = t->pos,
                                       .tenant = "default", .log_level = -1 };
        const char *sv;
        const struct kfg_toml_entry *te;
        char where[48];
        snprintf(where, sizeof(where), "%s[%zu]", section, i);
        if (!(te = kfg_toml_table_find(t, "type", 4)) ||
            !kfg_toml_get_string(te->value, &sv, NULL) || !*sv) {
            err_at(errs, c->path, te ? te->value->pos : t->pos,
                   "%s: key 'type' (the plugin's name) is required and must be a string", where);
            continue;
        }
        ic.type = sv;
        if (!(te = kfg_toml_table_find(t, "name", 4)) ||
            !kfg_toml_get_string(te->value, &sv, NULL) || !valid_name(sv)) {
            err_at(errs, c->path, te ? te->value->pos : t->pos,
                   "%s: key 'name' is required: 1-64 characters of A-Z a-z 0-9 _ - .", where);
            continue;
        }
        ic.name = sv;
        if ((te = kfg_toml_table_find(t, "tenant", 6))) {
            if (kind != KFG_KIND_ADAPTER) {
                err_at(errs, c->path, te->key_pos, "%s '%s': 'tenant' applies to adapters only",
                       section, ic.name);
            } else if (!kfg_toml_get_string(te->value, &sv, NULL) || !valid_name(sv)) {
                err_at(errs, c->path, te->value->pos,
                       "%s '%s': key 'tenant' must be 1-64 characters of A-Z a-z 0-9 _ - .",
                       section, ic.name);
            } else {
                ic.tenant = sv;
            }
        }
        if ((te = kfg_toml_table_find(t, "log_level", 9))) {
            if (!kfg_toml_get_string(te->value, &sv, NULL) ||
                (ic.log_level = kfg_log_level_parse(sv)) < 0)
                err_at(errs, c->path, te->value->pos,
                       "%s '%s': key 'log_level' must be one of \"error\", \"warn\", "
                       "\"info\", \"debug\"", section, ic.name);
        }
        for (size_t j = 0; j < c->ninstances; j++) {
            if (strcmp(c->instances[j].name, ic.name) == 0) {
                err_at(errs, c->path, ic.pos,
                       "%s: name '%s' is already used by the instance at line %u",
                       where, ic.name, c->instances[j].pos.line);
                break;
            }
        }
        c->instances[c->ninstances++] = ic;
    }
}

static char *read_file(const char *path, size_t *len, struct kfg_buf *errs)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        kfg_buf_printf(errs, "%s: cannot open: %s\n", path, strerror(errno));
        return NULL;
    }
    struct kfg_buf b = { 0 };
    char tmp[8192];
    size_t n;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0) {
        kfg_buf_append(&b, tmp, n);
        if (b.len > (64u << 20)) {
            kfg_buf_printf(errs, "%s: larger than 64 MiB\n", path);
            fclose(f);
            kfg_buf_free(&b);
            return NULL;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad || b.oom) {
        kfg_buf_printf(errs, "%s: read error\n", path);
        kfg_buf_free(&b);
        return NULL;
    }
    *len = b.len;
    if (!b.p)
        return strdup("");
    return b.p;
}

int kfg_config_load(const char *path, struct kfg_config **out, struct kfg_buf *errs)
{
    *out = NULL;
    size_t len = 0;
    char *src = read_file(path, &len, errs);
    if (!src)
        return -1;
    int r = kfg_config_load_buf(path, src, len, out, errs);
    free(src);
    return r;
}

int kfg_config_load_buf(const char *path, const char *src, size_t len,
                        struct kfg_config **out, struct kfg_buf *errs)
{
    *out = NULL;
    struct kfg_config *c = calloc(1, sizeof(*c));
    if (!c || !(c->path = strdup(path))) {
        kfg_buf_puts(errs, "out of memory\n");
        free(c);
        return -1;
    }
    struct kfg_toml_error terr;
    if (kfg_toml_parse(src, len, &c->root, &terr) < 0) {
        kfg_buf_printf(errs, "%s:%u:%u: %s\n", path, terr.line, terr.col, terr.msg);
        kfg_config_free(c);
        return -1;
    }

    c->workers = 0;
    c->plugin_dir = "build/plugins";
    c->drain_timeout_ms = 10000;
    c->http_listen = "0.0.0.0:8080";
    kfg_http_config_defaults(&c->http);
    c->admin_listen = "127.0.0.1:9090";
    c->log_format = KFG_LOG_LOGFMT;
    c->log_level = KFG_LOG_INFO;
    c->client_timeout_ms = 10000;
    c->client_connect_timeout_ms = 3000;
    c->client_max_response_bytes = 4u << 20;
    c->journal.dir = "var/journal";
    c->journal.segment_bytes = 64u << 20;
    c->journal.fsync = KFG_FSYNC_CFG_INTERVAL;
    c->journal.fsync_interval_ms = 10;
    c->journal.max_bytes = (size_t)10 << 30;
    c->journal.max_age_s = 7 * 86400;
    c->journal.dedupe_window_s = 86400;
    c->journal.max_pending = 65536;
    c->bus.feed = "ipc:///tmp/kfgate/feed.ipc";
    c->bus.replay = "ipc:///tmp/kfgate/replay.ipc";
    c->bus.outbound = "ipc:///tmp/kfgate/outbound.ipc";
    c->bus.ipc_mode = 0600;
    c->bus.batch_max = 32;
    c->bus.batch_bytes = 64u << 10;
    c->bus.batch_linger_us = 1000;
    c->bus.validate_inbound = 0;
    c->bus.heartbeat_ms = 1000;
    c->bus.replay_max = 256;
    c->bus.replay_contexts = 8;
    c->bus.outbound_contexts = 16;
    c->bus.retry_max = 8;
    c->bus.retry_base_ms = 500;
    c->bus.retry_cap_ms = 60000;

    size_t before = errs->len;
    for (size_t i = 0; i < kfg_toml_table_len(c->root); i++) {
        const struct kfg_toml_entry *e = kfg_toml_table_at(c->root, i);
        const struct section_spec *sec = sections;
        while (sec->name && !key_is(e, sec->name))
            sec++;
        if (sec->name) {
            if (e->value->type != KFG_TOML_TABLE)
                err_at(errs, path, e->key_pos, "'%s' must be a table: write [%s]",
                       e->key, e->key);
            else
                apply_section(c, sec, e->value, errs);
        } else if (!key_is(e, "adapter") && !key_is(e, "filter")) {
            unknown_key(errs, path, e, "", top_level);
        }
    }
    load_instances(c, "adapter", KFG_KIND_ADAPTER, errs);
    load_instances(c, "filter", KFG_KIND_FILTER, errs);
    if (c->http.max_body_bytes > SIZE_MAX / 2)
        c->http.max_body_bytes = SIZE_MAX / 2;
    if (c->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        c->workers = n > 0 ? (unsigned)n : 1;
    }
    if (errs->len != before) {
        kfg_config_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

void kfg_config_free(struct kfg_config *c)
{
    if (!c)
        return;
    kfg_toml_free(c->root);
    free(c->instances);
    free(c->path);
    free(c);
}

/* ------------------------------------------------------------------------ */
/* Plugin instance keys */

struct ival {
    const char *key;
    uint32_t type;
    char *s;               /* STRING, SECRET */
    int64_t i;
    double f;
    int b;
    char **arr;
    size_t narr;
};

struct kfg_icfg {
    struct ival *v;
    size_t n;
};

static int parse_default(struct ival *iv, const char *def)
{
    char *end;
    switch (iv->type) {
    case KFG_CFG_STRING:
    case KFG_CFG_SECRET:
        iv->s = strdup(def ? def : "");
        return iv->s ? 0 : -1;
    case KFG_CFG_INT:
        if (!def)
            return 0;
        errno = 0;
        iv->i = strtoll(def, &end, 10);
        return errno || *end || end == def ? -1 : 0;
    case KFG_CFG_FLOAT:
        if (!def)
            return 0;
        iv->f = strtod(def, &end);
        return *end || end == def ? -1 : 0;
    case KFG_CFG_BOOL:
        if (!def)
            return 0;
        if (strcmp(def, "true") == 0)
            iv->b = 1;
        else if (strcmp(def, "false") == 0)
            iv->b = 0;
        else
            return -1;
        return 0;
    case KFG_CFG_STRING_ARRAY:
        return def ? -1 : 0;     /* arrays have no textual default */
    }
    return -1;
}

int kfg_config_keys_check(const struct kfg_config_key *keys, char *why, size_t cap)
{
    for (const struct kfg_config_key *k = keys; k && k->name; k++) {
        for (const char *const *h = host_instance_keys; *h; h++) {
            if (strcmp(*h, k->name) == 0) {
                snprintf(why, cap, "config key '%s' is reserved for the host", k->name);
                return -1;
            }
        }
        if (k->type < KFG_CFG_STRING || k->type > KFG_CFG_STRING_ARRAY) {
            snprintf(why, cap, "config key '%s' has unknown type %u", k->name, k->type);
            return -1;
        }
        struct ival iv = { .type = k->type };
        int r = parse_default(&iv, k->def);
        free(iv.s);
        if (r < 0) {
            snprintf(why, cap, "config key '%s' has an invalid default '%s'", k->name,
                     k->def ? k->def : "");
            return -1;
        }
        for (const struct kfg_config_key *o = keys; o != k; o++) {
            if (strcmp(o->name, k->name) == 0) {
                snprintf(why, cap, "config key '%s' is declared twice", k->name);
                return -1;
            }
        }
    }
    return 0;
}

void kfg_icfg_free(struct kfg_icfg *ic)
{
    if (!ic)
        return;
    for (size_t i = 0; i < ic->n; i++) {
        free(ic->v[i].s);
        for (size_t j = 0; j < ic->v[i].narr; j++)
            free(ic->v[i].arr[j]);
        free(ic->v[i].arr);
    }
    free(ic->v);
    free(ic);
}

static const char *cfg_type_name(uint32_t t)
{
    switch (t) {
    case KFG_CFG_STRING: return "a string";
    case KFG_CFG_SECRET: return "a string (or \"env:NAME\")";
    case KFG_CFG_INT: return "an integer";
    case KFG_CFG_FLOAT: return "a number";
    case KFG_CFG_BOOL: return "true or false";
    case KFG_CFG_STRING_ARRAY: return "an array of strings";
    default: return "?";
    }
}

struct kfg_icfg *kfg_icfg_resolve(const struct kfg_config *c,
                                  const struct kfg_instance_cfg *ic,
                                  const struct kfg_config_key *keys,
                                  struct kfg_buf *errs)
{
    size_t before = errs->len;
    size_t nkeys = 0;
    while (keys && keys[nkeys].name)
        nkeys++;
    struct kfg_icfg *r = calloc(1, sizeof(*r));
    const char **known = calloc(nkeys + 5, sizeof(*known));
    if (!r || !known || (nkeys && !(r->v = calloc(nkeys, sizeof(*r->v))))) {
        kfg_buf_puts(errs, "out of memory\n");
        free(known);
        kfg_icfg_free(r);
        return NULL;
    }
    size_t nk = 0;
    for (const char *const *h = host_instance_keys; *h; h++)
        known[nk++] = *h;
    for (size_t i = 0; i < nkeys; i++)
        known[nk++] = keys[i].name;
    char where[128], tb[280];
    snprintf(where, sizeof(where), "%s '%s' (type %s): ",
             ic->kind == KFG_KIND_ADAPTER ? "adapter" : "filter", ic->name,
             shown(tb, ic->type, strlen(ic->type)));

    for (size_t i = 0; i < kfg_toml_table_len(ic->table); i++) {
        const struct kfg_toml_entry *e = kfg_toml_table_at(ic->table, i);
        int ok = 0;
        for (size_t j = 0; j < nk && !ok; j++)
            ok = key_is(e, known[j]);
        if (!ok)
            unknown_key(errs, c->path, e, where, known);
    }
    for (size_t i = 0; i < nkeys; i++) {
        const struct kfg_config_key *k = &keys[i];
        struct ival *iv = &r->v[r->n++];
        iv->key = k->name;
        iv->type = k->type;
        const struct kfg_toml_entry *e = kfg_toml_table_find(ic->table, k->name, strlen(k->name));
        if (!e) {
            if (k->flags & KFG_CFG_REQUIRED)
                err_at(errs, c->path, ic->pos, "%skey '%s' is required (%s)", where,
                       k->name, k->help ? k->help : cfg_type_name(k->type));
            parse_default(iv, k->def);
            continue;
        }
        const struct kfg_toml_value *v = e->value;
        const char *sv;
        int ok = 1;
        switch (k->type) {
        case KFG_CFG_STRING:
            ok = kfg_toml_get_string(v, &sv, NULL);
            if (ok)
                iv->s = strdup(sv);
            break;
        case KFG_CFG_SECRET:
            ok = kfg_toml_get_string(v, &sv, NULL);
            if (ok) {
                const char *val = resolve_env(sv, errs, c->path, v->pos, k->name);
                iv->s = strdup(val ? val : "");
            }
            break;
        case KFG_CFG_INT:
            ok = kfg_toml_get_int(v, &iv->i);
            break;
        case KFG_CFG_FLOAT:
            ok = kfg_toml_get_float(v, &iv->f);
            break;
        case KFG_CFG_BOOL: {
            bool b = false;     /* untouched by get_bool on a non-bool */
            ok = kfg_toml_get_bool(v, &b);
            if (ok)
                iv->b = b;
            break;
        }
        case KFG_CFG_STRING_ARRAY:
            ok = v->type == KFG_TOML_ARRAY;
            if (ok) {
                size_t n = kfg_toml_array_len(v);
                iv->arr = calloc(n ? n : 1, sizeof(char *));
                for (size_t j = 0; j < n && iv->arr; j++) {
                    const struct kfg_toml_value *it = kfg_toml_array_at(v, j);
                    if (!kfg_toml_get_string(it, &sv, NULL)) {
                        err_at(errs, c->path, it->pos, "%skey '%s': item %zu must be a string",
                               where, k->name, j);
                        break;
                    }
                    iv->arr[iv->narr++] = strdup(sv);
                }
            }
            break;
        }
        if (!ok)
            err_at(errs, c->path, v->pos, "%skey '%s' must be %s, not %s", where, k->name,
                   cfg_type_name(k->type), kfg_toml_type_name(v->type));
    }
    free(known);
    if (errs->len != before) {
        kfg_icfg_free(r);
        return NULL;
    }
    return r;
}

int kfg_icfg_equal(const struct kfg_icfg *a, const struct kfg_icfg *b)
{
    if (!a || !b || a->n != b->n)
        return 0;
    for (size_t i = 0; i < a->n; i++) {
        const struct ival *x = &a->v[i], *y = &b->v[i];
        if (strcmp(x->key, y->key) || x->type != y->type || x->i != y->i ||
            x->b != y->b || x->f != y->f || x->narr != y->narr ||
            (x->s || y->s) != (x->s && y->s) || (x->s && strcmp(x->s, y->s)))
            return 0;
        for (size_t j = 0; j < x->narr; j++)
            if (strcmp(x->arr[j], y->arr[j]))
                return 0;
    }
    return 1;
}

static const struct ival *ifind(const struct kfg_icfg *ic, const char *key)
{
    for (size_t i = 0; ic && key && i < ic->n; i++)
        if (strcmp(ic->v[i].key, key) == 0)
            return &ic->v[i];
    return NULL;
}

const char *kfg_icfg_string(const struct kfg_icfg *ic, const char *key)
{
    const struct ival *v = ifind(ic, key);
    return v && (v->type == KFG_CFG_STRING || v->type == KFG_CFG_SECRET) ? v->s : NULL;
}

int64_t kfg_icfg_int(const struct kfg_icfg *ic, const char *key)
{
    const struct ival *v = ifind(ic, key);
    return v && v->type == KFG_CFG_INT ? v->i : 0;
}

int kfg_icfg_bool(const struct kfg_icfg *ic, const char *key)
{
    const struct ival *v = ifind(ic, key);
    return v && v->type == KFG_CFG_BOOL ? v->b : 0;
}

double kfg_icfg_float(const struct kfg_icfg *ic, const char *key)
{
    const struct ival *v = ifind(ic, key);
    return v && v->type == KFG_CFG_FLOAT ? v->f : 0.0;
}

size_t kfg_icfg_array_len(const struct kfg_icfg *ic, const char *key)
{
    const struct ival *v = ifind(ic, key);
    return v && v->type == KFG_CFG_STRING_ARRAY ? v->narr : 0;
}

const char *kfg_icfg_array_string(const struct kfg_icfg *ic, const char *key, size_t i)
{
    const struct ival *v = ifind(ic, key);
    return v && v->type == KFG_CFG_STRING_ARRAY && i < v->narr ? v->arr[i] : NULL;
}
