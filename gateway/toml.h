/*
 * A strict TOML 1.0.0 decoder (https://toml.io/en/v1.0.0).
 *
 * kfg_toml_parse() turns a whole document into a tree of kfg_toml_value
 * nodes. The root is always a TABLE.
 *
 * Ownership: the tree returned through *root belongs to the caller and is
 * released with kfg_toml_free(root), which frees every node, string and key
 * below it. Every pointer obtained from the tree (values, entries, strings,
 * keys) stays valid until then and must not be freed on its own. The tree
 * does not reference the source buffer; it may be freed right after parsing.
 * Only a root returned by kfg_toml_parse may be passed to kfg_toml_free.
 *
 * Positions are 1-based; columns count Unicode characters (a tab is one).
 * Each value records where it starts; a table made by a [header] or
 * [[header]] records the header's opening bracket; a table created
 * implicitly (by a dotted key or as a header's parent) records the key that
 * created it. Each table entry also records where its key was written.
 *
 * Strings and keys are valid UTF-8, NUL-terminated for convenience, and may
 * contain NUL bytes (from \u0000), so use the lengths.
 *
 * The decoder is safe on hostile input: nesting is limited to
 * KFG_TOML_MAX_DEPTH containers, recursion is bounded by that limit, and
 * key lookups are hashed. It is reentrant; there is no global state.
 */
#ifndef KFG_TOML_H
#define KFG_TOML_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KFG_TOML_MAX_DEPTH 128

enum kfg_toml_type {
    KFG_TOML_STRING = 1,
    KFG_TOML_INTEGER,
    KFG_TOML_FLOAT,
    KFG_TOML_BOOL,
    KFG_TOML_DATETIME,          /* offset date-time: 1979-05-27T07:32:00Z */
    KFG_TOML_DATETIME_LOCAL,    /* 1979-05-27T07:32:00 */
    KFG_TOML_DATE_LOCAL,        /* 1979-05-27 */
    KFG_TOML_TIME_LOCAL,        /* 07:32:00 */
    KFG_TOML_ARRAY,
    KFG_TOML_TABLE,
};

struct kfg_toml_pos {
    uint32_t line, col;
};

struct kfg_toml_datetime {
    int year, month, day;           /* 0 for TIME_LOCAL */
    int hour, minute, second;       /* 0 for DATE_LOCAL; second may be 60 */
    uint32_t nanosecond;            /* fraction, truncated to nanoseconds */
    int offset_minutes;             /* east of UTC; DATETIME only */
    /* Normalized RFC 3339 text: 'T' separator, 'Z' for UTC, fraction
     * digits as written (at most 9). */
    char text[40];
};

struct kfg_toml_value;

struct kfg_toml_entry {
    const char *key;                /* key_len bytes + NUL */
    size_t key_len;
    struct kfg_toml_pos key_pos;
    uint32_t hash;                  /* internal */
    struct kfg_toml_value *value;
};

struct kfg_toml_value {
    enum kfg_toml_type type;
    struct kfg_toml_pos pos;
    uint32_t flags, section;        /* internal: table definition state */
    union {
        struct {
            char *ptr;              /* len bytes + NUL */
            size_t len;
        } str;
        int64_t i;
        double f;
        bool b;
        struct kfg_toml_datetime dt;    /* the four date/time types */
        struct {
            struct kfg_toml_value **items;
            size_t len, cap;
        } arr;
        struct {
            struct kfg_toml_entry *items;   /* in document order */
            size_t len, cap;
            uint32_t *index;        /* internal hash index, NULL if small */
            size_t index_cap;
        } tab;
    } u;
};

struct kfg_toml_error {
    uint32_t line, col;             /* 1-based; where the problem is */
    char msg[160];                  /* no position prefix, no newline */
};

/* Parse len bytes of src (no NUL terminator needed). Returns 0 and stores
 * the root TABLE in *root, or returns -1, sets *root to NULL and fills
 * *err (which may be NULL if the caller does not care). */
int kfg_toml_parse(const char *src, size_t len, struct kfg_toml_value **root,
                   struct kfg_toml_error *err);
void kfg_toml_free(struct kfg_toml_value *root);  /* NULL is a no-op */

/* "string", "integer", "float", "bool", "datetime", "datetime-local",
 * "date-local", "time-local", "array", "table" (toml-test's names). */
const char *kfg_toml_type_name(enum kfg_toml_type t);

/* Accessors are NULL-safe and never abort: lookups on the wrong type
 * return NULL / 0, and the kfg_toml_get_* functions return false and leave
 * *out untouched when v is NULL or of another type. */
const struct kfg_toml_value *kfg_toml_table_get(const struct kfg_toml_value *table,
                                                const char *key);
const struct kfg_toml_entry *kfg_toml_table_find(const struct kfg_toml_value *table,
                                                 const char *key, size_t key_len);
size_t kfg_toml_table_len(const struct kfg_toml_value *table);
const struct kfg_toml_entry *kfg_toml_table_at(const struct kfg_toml_value *table,
                                               size_t i);
size_t kfg_toml_array_len(const struct kfg_toml_value *array);
const struct kfg_toml_value *kfg_toml_array_at(const struct kfg_toml_value *array,
                                               size_t i);

bool kfg_toml_get_string(const struct kfg_toml_value *v, const char **out,
                         size_t *len);             /* len may be NULL */
bool kfg_toml_get_int(const struct kfg_toml_value *v, int64_t *out);
bool kfg_toml_get_float(const struct kfg_toml_value *v, double *out); /* also accepts INTEGER */
bool kfg_toml_get_bool(const struct kfg_toml_value *v, bool *out);
/* Any of the four date/time types, else NULL. */
const struct kfg_toml_datetime *kfg_toml_get_datetime(const struct kfg_toml_value *v);

#endif
