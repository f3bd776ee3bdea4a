/*
 * kfgate-toml: decode TOML from stdin and print it as toml-test's tagged
 * JSON on stdout. On invalid input, print "line L, col C: message" on
 * stderr and exit 1. Used to run the toml-test suite against kfg_toml.
 */
#include "toml.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void put_json_string(const char *s, size_t len)
{
    putchar('"');
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        switch (c) {
        case '"': fputs("\\\"", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        case '\b': fputs("\\b", stdout); break;
        case '\f': fputs("\\f", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\t': fputs("\\t", stdout); break;
        default:
            if (c < 0x20 || c == 0x7F)
                printf("\\u%04x", c);
            else
                putchar(c);     /* the decoder guarantees valid UTF-8 */
        }
    }
    putchar('"');
}

/* Shortest text that reads back as the same double. */
static void format_float(double d, char *buf, size_t cap)
{
    if (isnan(d)) {
        snprintf(buf, cap, "nan");
        return;
    }
    if (isinf(d)) {
        snprintf(buf, cap, d < 0 ? "-inf" : "inf");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            return;
    }
}

static void put_value(const struct kfg_toml_value *v);

static void put_table(const struct kfg_toml_value *t)
{
    putchar('{');
    for (size_t i = 0; i < kfg_toml_table_len(t); i++) {
        const struct kfg_toml_entry *e = kfg_toml_table_at(t, i);

        if (i)
            putchar(',');
        put_json_string(e->key, e->key_len);
        putchar(':');
        put_value(e->value);
    }
    putchar('}');
}

/* Recursion is bounded by KFG_TOML_MAX_DEPTH. */
static void put_value(const struct kfg_toml_value *v)
{
    char buf[64];
    const char *text = buf;

    switch (v->type) {
    case KFG_TOML_TABLE:
        put_table(v);
        return;
    case KFG_TOML_ARRAY:
        putchar('[');
        for (size_t i = 0; i < kfg_toml_array_len(v); i++) {
            if (i)
                putchar(',');
            put_value(kfg_toml_array_at(v, i));
        }
        putchar(']');
        return;
    case KFG_TOML_STRING:
        fputs("{\"type\":\"string\",\"value\":", stdout);
        put_json_string(v->u.str.ptr, v->u.str.len);
        putchar('}');
        return;
    case KFG_TOML_INTEGER:
        snprintf(buf, sizeof buf, "%" PRId64, v->u.i);
        break;
    case KFG_TOML_FLOAT:
        format_float(v->u.f, buf, sizeof buf);
        break;
    case KFG_TOML_BOOL:
        text = v->u.b ? "true" : "false";
        break;
    default:
        text = kfg_toml_get_datetime(v)->text;
        break;
    }
    printf("{\"type\":\"%s\",\"value\":", kfg_toml_type_name(v->type));
    put_json_string(text, strlen(text));
    putchar('}');
}

int main(void)
{
    static char iobuf[1 << 16];
    struct kfg_toml_value *root;
    struct kfg_toml_error err;
    size_t len = 0, cap = 1 << 16;
    char *src = malloc(cap);
    int rc;

    setvbuf(stdout, iobuf, _IOFBF, sizeof iobuf);
    for (;;) {
        size_t n;

        if (!src) {
            fputs("kfgate-toml: out of memory\n", stderr);
            return 2;
        }
        n = fread(src + len, 1, cap - len, stdin);
        len += n;
        if (n == 0)
            break;
        if (len == cap) {
            char *p = realloc(src, cap *= 2);

            if (!p)
                free(src);
            src = p;
        }
    }
    if (ferror(stdin)) {
        perror("kfgate-toml: stdin");
        free(src);
        return 2;
    }
    rc = kfg_toml_parse(src, len, &root, &err);
    free(src);
    if (rc != 0) {
        fprintf(stderr, "line %" PRIu32 ", col %" PRIu32 ": %s\n", err.line, err.col, err.msg);
        return 1;
    }
    put_table(root);
    putchar('\n');
    kfg_toml_free(root);
    return fflush(stdout) == 0 ? 0 : 2;
}
