/*
 * The gateway's configuration: a TOML file validated against a schema.
 * Every error names file, line, column and key; unknown keys are errors with
 * a suggestion of the nearest known key. Plugin instance tables are checked
 * in two steps: the host-owned keys (type, name, tenant, log_level) here,
 * the plugin's own keys by kfg_icfg_resolve once the plugin is loaded.
 */
#ifndef KFG_CONFIG_H
#define KFG_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "http.h"
#include "kfgate/plugin.h"
#include "toml.h"

struct kfg_instance_cfg {
    int kind;                          /* KFG_KIND_ADAPTER / FILTER */
    const char *type, *name, *tenant;  /* point into the TOML tree */
    int log_level;                     /* -1: the gateway's level */
    const struct kfg_toml_value *table;
    struct kfg_toml_pos pos;
};

enum { KFG_FSYNC_CFG_ALWAYS = 0, KFG_FSYNC_CFG_INTERVAL = 1, KFG_FSYNC_CFG_NEVER = 2 };

struct kfg_journal_config {
    const char *dir;
    size_t segment_bytes;
    int fsync;                         /* KFG_FSYNC_CFG_* */
    uint32_t fsync_interval_ms;
    size_t max_bytes;                  /* retention; 0 = no limit */
    uint32_t max_age_s;                /* retention; 0 = no limit */
    uint32_t dedupe_window_s;
    uint32_t max_pending;
};

struct kfg_bus_config {
    const char *feed, *replay, *outbound;   /* NNG listen URLs */
    uint32_t ipc_mode;
    uint32_t batch_max;
    size_t batch_bytes;
    uint32_t batch_linger_us;
    int validate_inbound;
    uint32_t heartbeat_ms;
    uint32_t replay_max, replay_contexts, outbound_contexts;
    uint32_t retry_max, retry_base_ms, retry_cap_ms;
};

struct kfg_config {
    char *path;
    struct kfg_toml_value *root;       /* owns every string below */

    unsigned workers;                  /* resolved: 0 means one per core */
    const char *plugin_dir;
    uint32_t drain_timeout_ms;

    const char *http_listen;
    struct kfg_http_config http;

    const char *admin_listen;          /* "" disables the admin listener */

    int log_format, log_level;


    uint32_t client_timeout_ms, client_connect_timeout_ms;
    size_t client_max_response_bytes;

    struct kfg_journal_config journal;
    struct kfg_bus_config bus;

    struct kfg_instance_cfg *instances;   /* adapters, then filters, in order */
    size_t ninstances;
};

/* Loads and validates path. Returns 0, or -1 with every error found
 * appended to errs, one per line ("file:line:col: message"). */
int kfg_config_load(const char *path, struct kfg_config **out, struct kfg_buf *errs);
/* The same from src[0..len) already in memory (no NUL needed); `path` only
 * names the source in errors and becomes c->path. The tree does not
 * reference src, which may be freed on return. */
int kfg_config_load_buf(const char *path, const char *src, size_t len,
                        struct kfg_config **out, struct kfg_buf *errs);
void kfg_config_free(struct kfg_config *c);

/* A plugin instance's resolved keys (defaults applied, env: secrets read). */
struct kfg_icfg;
struct kfg_icfg *kfg_icfg_resolve(const struct kfg_config *c,
                                  const struct kfg_instance_cfg *ic,
                                  const struct kfg_config_key *keys,
                                  struct kfg_buf *errs);
void kfg_icfg_free(struct kfg_icfg *ic);
/* Equal when every resolved value is equal: an unchanged instance. */
int kfg_icfg_equal(const struct kfg_icfg *a, const struct kfg_icfg *b);
const char *kfg_icfg_string(const struct kfg_icfg *ic, const char *key);
int64_t kfg_icfg_int(const struct kfg_icfg *ic, const char *key);
int kfg_icfg_bool(const struct kfg_icfg *ic, const char *key);
double kfg_icfg_float(const struct kfg_icfg *ic, const char *key);
size_t kfg_icfg_array_len(const struct kfg_icfg *ic, const char *key);
const char *kfg_icfg_array_string(const struct kfg_icfg *ic, const char *key, size_t i);
/* Checks a plugin's declared keys and defaults; 0 or -1 with a reason. */
int kfg_config_keys_check(const struct kfg_config_key *keys, char *why, size_t cap);

/* Nearest of `cands` (NULL-terminated) to `word` by edit distance, or NULL
 * when nothing is close enough to be a plausible typo. */
const char *kfg_nearest(const char *word, const char *const *cands);

#endif
