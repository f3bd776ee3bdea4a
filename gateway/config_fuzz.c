/*
 * libFuzzer harness for configuration validation (config.h) on top of the
 * TOML decoder, through kfg_config_load_buf. Every plugin instance found is
 * also resolved against a fixed schema with every key type (a secret read
 * from "env:NAME", required and defaulted keys). Besides the sanitizers and
 * LeakSanitizer it checks:
 *   - load fails <=> it reported errors, and then *out is NULL; every
 *     error line reads "fuzz.toml:LINE:COL: message" with LINE, COL >= 1;
 *   - a loaded config holds only values inside the schema's ranges;
 *   - resolving an instance twice gives equal results (kfg_icfg_equal) and
 *     the same errors, and the accessors agree with the schema's types.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"

#define NAME "fuzz.toml"

static void check(int cond)
{
    if (!cond)
        abort();
}

static const struct kfg_config_key keys[] = {
    { "url", KFG_CFG_STRING, KFG_CFG_REQUIRED, NULL, "where to post" },
    { "secret", KFG_CFG_SECRET, 0, "", NULL },
    { "port", KFG_CFG_INT, 0, "4500", NULL },
    { "enabled", KFG_CFG_BOOL, 0, "true", NULL },
    { "ratio", KFG_CFG_FLOAT, 0, "0.5", NULL },
    { "allow", KFG_CFG_STRING_ARRAY, 0, NULL, NULL },
    { NULL, 0, 0, NULL, NULL },
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    setenv("KFG_FUZZ_SECRET", "s3cr3t", 1);
    unsetenv("KFG_FUZZ_UNSET");
    char why[128];
    check(kfg_config_keys_check(keys, why, sizeof why) == 0);
    return 0;
}

/* Every line of errs is "NAME:line:col: msg" (or a bare "out of memory"). */
static void check_errors(const struct kfg_buf *errs)
{
    const char *p = errs->p, *end = errs->p + errs->len;

    check(errs->len > 0 && end[-1] == '\n');
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        unsigned line = 0, col = 0;
        int n = 0;

        check(nl != NULL && nl > p);
        if (strncmp(p, "out of memory\n", 14) != 0) {
            check(strncmp(p, NAME ":", sizeof NAME) == 0);
            check(sscanf(p + sizeof NAME, "%u:%u: %n", &line, &col, &n) == 2 && n > 0);
            check(line >= 1 && col >= 1);
            check(p + sizeof NAME + n < nl);
        }
        p = nl + 1;
    }
}

static void check_loaded(const struct kfg_config *c)
{
    check(c->root != NULL && strcmp(c->path, NAME) == 0);
    check(c->workers >= 1 && c->plugin_dir && c->http_listen && c->admin_listen);
    check(c->http.max_head_bytes >= 256 && c->http.max_head_bytes <= (1 << 20));
    check(c->http.max_headers >= 4 && c->http.max_headers <= 10000);
    check(c->journal.fsync >= KFG_FSYNC_CFG_ALWAYS && c->journal.fsync <= KFG_FSYNC_CFG_NEVER);
    check(c->journal.dir && c->bus.feed && c->bus.replay && c->bus.outbound);
    check(c->bus.ipc_mode <= 0777);
    for (size_t i = 0; i < c->ninstances; i++) {
        const struct kfg_instance_cfg *ic = &c->instances[i];
        check(ic->type && ic->type[0] && ic->name && ic->name[0] && ic->tenant);
        check(ic->table && ic->table->type == KFG_TOML_TABLE);
        for (size_t j = 0; j < i; j++)
            check(strcmp(c->instances[j].name, ic->name) != 0);
    }
}

static void resolve(const struct kfg_config *c, const struct kfg_instance_cfg *ic)
{
    struct kfg_buf e1 = { 0 }, e2 = { 0 };
    struct kfg_icfg *a = kfg_icfg_resolve(c, ic, keys, &e1);
    struct kfg_icfg *b = kfg_icfg_resolve(c, ic, keys, &e2);

    check((a == NULL) == (e1.len > 0));
    check(e1.len == e2.len && (e1.len == 0 || memcmp(e1.p, e2.p, e1.len) == 0));
    if (a) {
        check(kfg_icfg_equal(a, b));
        check(kfg_icfg_string(a, "url") != NULL);
        check(kfg_icfg_string(a, "secret") != NULL);
        check(kfg_icfg_string(a, "port") == NULL);
        check(kfg_icfg_int(a, "url") == 0);
        (void)kfg_icfg_int(a, "port");
        (void)kfg_icfg_bool(a, "enabled");
        (void)kfg_icfg_float(a, "ratio");
        for (size_t i = 0; i < kfg_icfg_array_len(a, "allow"); i++)
            check(kfg_icfg_array_string(a, "allow", i) != NULL);
        check(kfg_icfg_array_string(a, "allow", kfg_icfg_array_len(a, "allow")) == NULL);
    } else {
        check_errors(&e1);
    }
    kfg_icfg_free(a);
    kfg_icfg_free(b);
    kfg_buf_free(&e1);
    kfg_buf_free(&e2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kfg_config *c = (struct kfg_config *)&c;
    struct kfg_buf errs = { 0 };
    char *src;

    if (size > 65536)
        return 0;
    src = malloc(size ? size : 1);
    check(src != NULL);
    memcpy(src, data, size);
    int r = kfg_config_load_buf(NAME, src, size, &c, &errs);
    free(src);
    check(r == 0 || r == -1);
    if (r != 0) {
        check(c == NULL);
        check_errors(&errs);
    } else {
        check(c != NULL && errs.len == 0);
        check_loaded(c);
        for (size_t i = 0; i < c->ninstances; i++)
            resolve(c, &c->instances[i]);
    }
    kfg_config_free(c);
    kfg_buf_free(&errs);
    return 0;
}
