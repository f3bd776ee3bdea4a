/*
 * libFuzzer harness for the TOML decoder (toml.h). Besides the sanitizers
 * (and LeakSanitizer on kfg_toml_free) it checks:
 *   - a failure sets *root to NULL and gives a 1-based position inside the
 *     document and a non-empty, NUL-terminated message;
 *   - a success gives a TABLE root whose tree is well formed: keys and
 *     strings are NUL-terminated, every entry is found again by
 *     kfg_toml_table_find / kfg_toml_table_get (hash index included),
 *     accessors agree with the node types, positions are 1-based;
 *   - the tree re-serialized as TOML (inline tables, basic strings) parses
 *     again to an equal tree, and serializing that gives the same bytes.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "toml.h"

static void check(int cond)
{
    if (!cond)
        abort();
}

static void put_str(struct kfg_buf *b, const char *s, size_t n)
{
    kfg_buf_putc(b, '"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"': kfg_buf_puts(b, "\\\""); break;
        case '\\': kfg_buf_puts(b, "\\\\"); break;
        case '\b': kfg_buf_puts(b, "\\b"); break;
        case '\t': kfg_buf_puts(b, "\\t"); break;
        case '\n': kfg_buf_puts(b, "\\n"); break;
        case '\f': kfg_buf_puts(b, "\\f"); break;
        case '\r': kfg_buf_puts(b, "\\r"); break;
        default:
            if (c < 0x20 || c == 0x7f)
                kfg_buf_printf(b, "\\u%04X", c);
            else
                kfg_buf_putc(b, (char)c);
        }
    }
    kfg_buf_putc(b, '"');
}

static void put_value(struct kfg_buf *b, const struct kfg_toml_value *v);

static void put_entries(struct kfg_buf *b, const struct kfg_toml_value *t,
                        const char *sep)
{
    for (size_t i = 0; i < kfg_toml_table_len(t); i++) {
        const struct kfg_toml_entry *e = kfg_toml_table_at(t, i);
        if (i)
            kfg_buf_puts(b, sep);
        put_str(b, e->key, e->key_len);
        kfg_buf_puts(b, " = ");
        put_value(b, e->value);
    }
}

static void put_value(struct kfg_buf *b, const struct kfg_toml_value *v)
{
    char num[64];

    switch (v->type) {
    case KFG_TOML_STRING:
        put_str(b, v->u.str.ptr, v->u.str.len);
        break;
    case KFG_TOML_INTEGER:
        kfg_buf_printf(b, "%lld", (long long)v->u.i);
        break;
    case KFG_TOML_FLOAT:
        if (isnan(v->u.f)) {
            kfg_buf_puts(b, "nan");
        } else if (isinf(v->u.f)) {
            kfg_buf_puts(b, v->u.f < 0 ? "-inf" : "inf");
        } else {
            snprintf(num, sizeof num, "%.17g", v->u.f);
            kfg_buf_puts(b, num);
            if (!strpbrk(num, ".e"))
                kfg_buf_puts(b, ".0");
        }
        break;
    case KFG_TOML_BOOL:
        kfg_buf_puts(b, v->u.b ? "true" : "false");
        break;
    case KFG_TOML_DATETIME:
    case KFG_TOML_DATETIME_LOCAL:
    case KFG_TOML_DATE_LOCAL:
    case KFG_TOML_TIME_LOCAL:
        kfg_buf_puts(b, v->u.dt.text);
        break;
    case KFG_TOML_ARRAY:
        kfg_buf_putc(b, '[');
        for (size_t i = 0; i < kfg_toml_array_len(v); i++) {
            if (i)
                kfg_buf_puts(b, ", ");
            put_value(b, kfg_toml_array_at(v, i));
        }
        kfg_buf_putc(b, ']');
        break;
    case KFG_TOML_TABLE:
        kfg_buf_puts(b, "{");
        put_entries(b, v, ", ");
        kfg_buf_puts(b, "}");
        break;
    }
}

static void serialize(struct kfg_buf *b, const struct kfg_toml_value *root)
{
    kfg_buf_reset(b);
    put_entries(b, root, "\n");
    kfg_buf_putc(b, '\n');
    check(!b->oom);
}

static void check_tree(const struct kfg_toml_value *v, unsigned depth)
{
    const char *s;
    size_t n;
    int64_t i;
    double f;
    bool bo;

    check(depth <= KFG_TOML_MAX_DEPTH + 1);
    check(v->pos.line >= 1 && v->pos.col >= 1);
    check(kfg_toml_type_name(v->type) != NULL);
    check(kfg_toml_get_string(v, &s, &n) == (v->type == KFG_TOML_STRING));
    check(kfg_toml_get_int(v, &i) == (v->type == KFG_TOML_INTEGER));
    check(kfg_toml_get_bool(v, &bo) == (v->type == KFG_TOML_BOOL));
    check(kfg_toml_get_float(v, &f) ==
          (v->type == KFG_TOML_FLOAT || v->type == KFG_TOML_INTEGER));
    check((kfg_toml_get_datetime(v) != NULL) ==
          (v->type >= KFG_TOML_DATETIME && v->type <= KFG_TOML_TIME_LOCAL));
    switch (v->type) {
    case KFG_TOML_STRING:
        check(s[n] == '\0');
        break;
    case KFG_TOML_DATETIME:
    case KFG_TOML_DATETIME_LOCAL:
    case KFG_TOML_DATE_LOCAL:
    case KFG_TOML_TIME_LOCAL:
        check(memchr(v->u.dt.text, '\0', sizeof v->u.dt.text) != NULL);
        check(v->u.dt.nanosecond < 1000000000u);
        break;
    case KFG_TOML_ARRAY:
        check(kfg_toml_table_len(v) == 0);
        for (size_t k = 0; k < kfg_toml_array_len(v); k++)
            check_tree(kfg_toml_array_at(v, k), depth + 1);
        check(kfg_toml_array_at(v, kfg_toml_array_len(v)) == NULL);
        break;
    case KFG_TOML_TABLE:
        check(kfg_toml_array_len(v) == 0);
        for (size_t k = 0; k < kfg_toml_table_len(v); k++) {
            const struct kfg_toml_entry *e = kfg_toml_table_at(v, k);
            check(e->key[e->key_len] == '\0');
            check(e->key_pos.line >= 1 && e->key_pos.col >= 1);
            check(kfg_toml_table_find(v, e->key, e->key_len) == e);
            if (strlen(e->key) == e->key_len)
                check(kfg_toml_table_get(v, e->key) == e->value);
            check_tree(e->value, depth + 1);
        }
        check(kfg_toml_table_at(v, kfg_toml_table_len(v)) == NULL);
        break;
    default:
        break;
    }
}

static void check_equal(const struct kfg_toml_value *a, const struct kfg_toml_value *b)
{
    check(a->type == b->type);
    switch (a->type) {
    case KFG_TOML_STRING:
        check(a->u.str.len == b->u.str.len &&
              memcmp(a->u.str.ptr, b->u.str.ptr, a->u.str.len) == 0);
        break;
    case KFG_TOML_INTEGER:
        check(a->u.i == b->u.i);
        break;
    case KFG_TOML_FLOAT:
        if (isnan(a->u.f))
            check(isnan(b->u.f));
        else
            check(memcmp(&a->u.f, &b->u.f, sizeof(double)) == 0);
        break;
    case KFG_TOML_BOOL:
        check(a->u.b == b->u.b);
        break;
    case KFG_TOML_DATETIME:
    case KFG_TOML_DATETIME_LOCAL:
    case KFG_TOML_DATE_LOCAL:
    case KFG_TOML_TIME_LOCAL:
        check(strcmp(a->u.dt.text, b->u.dt.text) == 0);
        check(a->u.dt.year == b->u.dt.year && a->u.dt.month == b->u.dt.month &&
              a->u.dt.day == b->u.dt.day && a->u.dt.hour == b->u.dt.hour &&
              a->u.dt.minute == b->u.dt.minute && a->u.dt.second == b->u.dt.second &&
              a->u.dt.nanosecond == b->u.dt.nanosecond &&
              a->u.dt.offset_minutes == b->u.dt.offset_minutes);
        break;
    case KFG_TOML_ARRAY:
        check(kfg_toml_array_len(a) == kfg_toml_array_len(b));
        for (size_t i = 0; i < kfg_toml_array_len(a); i++)
            check_equal(kfg_toml_array_at(a, i), kfg_toml_array_at(b, i));
        break;
    case KFG_TOML_TABLE:
        check(kfg_toml_table_len(a) == kfg_toml_table_len(b));
        for (size_t i = 0; i < kfg_toml_table_len(a); i++) {
            const struct kfg_toml_entry *x = kfg_toml_table_at(a, i),
                                        *y = kfg_toml_table_at(b, i);
            check(x->key_len == y->key_len && memcmp(x->key, y->key, x->key_len) == 0);
            check_equal(x->value, y->value);
        }
        break;
    }
}

static void check_error(const struct kfg_toml_error *err, const uint8_t *data, size_t size)
{
    uint32_t lines = 1;

    for (size_t i = 0; i < size; i++)
        lines += data[i] == '\n';
    check(err->line >= 1 && err->line <= lines);
    check(err->col >= 1 && err->col <= size + 1);
    check(memchr(err->msg, '\0', sizeof err->msg) != NULL && err->msg[0] != '\0');
    check(strchr(err->msg, '\n') == NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kfg_toml_value *root = (struct kfg_toml_value *)&root, *again = NULL;
    struct kfg_toml_error err;
    struct kfg_buf a = { 0 }, b = { 0 };
    char *src;

    if (size > 65536)
        return 0;
    /* An exact-size copy so ASan sees any read past the end. */
    src = malloc(size ? size : 1);
    check(src != NULL);
    memcpy(src, data, size);
    memset(&err, 0x5a, sizeof err);
    if (kfg_toml_parse(src, size, &root, &err) != 0) {
        check(root == NULL);
        check_error(&err, data, size);
        free(src);
        return 0;
    }
    free(src);      /* the tree must not reference the source */
    check(root != NULL && root->type == KFG_TOML_TABLE);
    check_tree(root, 0);

    serialize(&a, root);
    if (kfg_toml_parse(a.p, a.len, &again, &err) != 0) {
        /* Inline tables nest one level per table, headers may not. */
        check(strstr(err.msg, "nesting is deeper") != NULL);
    } else {
        check_equal(root, again);
        serialize(&b, again);
        check(a.len == b.len && memcmp(a.p, b.p, a.len) == 0);
        kfg_toml_free(again);
    }
    kfg_toml_free(root);
    kfg_buf_free(&a);
    kfg_buf_free(&b);
    return 0;
}
