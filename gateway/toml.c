/*
 * Strict TOML 1.0.0 decoder; see toml.h for the contract.
 *
 * One forward pass over the source. Values are parsed by recursive descent
 * whose depth is bounded by KFG_TOML_MAX_DEPTH, so hostile nesting fails
 * cleanly instead of exhausting the stack. Tables keep entries in document
 * order and grow a hash index once they get big, so lookups stay cheap on
 * tables with many keys.
 */
#include "toml.h"

#include <errno.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* kfg_toml_value.flags */
enum {
    F_DEFINED = 1,      /* table opened by [header] or [[header]] */
    F_FROZEN = 2,       /* inline table or array literal: never extended */
    F_AOT = 4,          /* array created by [[header]] */
};

#define INDEX_MIN 8     /* tables up to this size are scanned linearly */
#define SHOW_MAX 48     /* longest token or key quoted in a message */

struct sbuf {
    char *p;
    size_t len, cap;
};

/* One part of a (dotted) key; the bytes live in parser.keys at off. */
struct keypart {
    size_t off, len;
    uint32_t hash;
    const char *at;
    struct kfg_toml_pos pos;
};

struct parser {
    const char *begin, *p, *end;
    struct kfg_toml_error *err;
    bool failed;
    /* position cache: line/col of mark; positions are asked in order */
    const char *mark;
    uint32_t line, col;
    /* Bumped at every header. A table that dotted keys created or walked
     * through in an earlier section counts as defined (TOML 1.0 forbids
     * reopening it); within its own section it can still be extended. */
    uint32_t section;
    struct kfg_toml_value *root, *cur;
    unsigned cur_depth;
    struct sbuf str;    /* scratch for decoded values */
    struct sbuf keys;   /* decoded bytes of the key being parsed */
    struct keypart parts[KFG_TOML_MAX_DEPTH];
    size_t nparts;
};

static struct kfg_toml_value *parse_value(struct parser *P, unsigned depth);

/* ---- positions and errors ---- */

static struct kfg_toml_pos pos_at(struct parser *P, const char *at)
{
    if (at < P->mark) {             /* only error paths look backwards */
        P->mark = P->begin;
        P->line = P->col = 1;
    }
    for (const char *s = P->mark; s < at; s++) {
        if (*s == '\n') {
            P->line++;
            P->col = 1;
        } else if ((*s & 0xC0) != 0x80) {
            P->col++;
        }
    }
    P->mark = at;
    return (struct kfg_toml_pos){P->line, P->col};
}

__attribute__((format(printf, 3, 4)))
static bool fail(struct parser *P, const char *at, const char *fmt, ...)
{
    if (!P->failed) {
        struct kfg_toml_pos pos = pos_at(P, at);
        va_list ap;
        P->err->line = pos.line;
        P->err->col = pos.col;
        va_start(ap, fmt);
        vsnprintf(P->err->msg, sizeof P->err->msg, fmt, ap);
        va_end(ap);
        P->failed = true;
    }
    return false;
}

static bool oom(struct parser *P)
{
    return fail(P, P->p, "out of memory");
}

/* ---- bytes and characters ---- */

static int peek(const struct parser *P, size_t i)
{
    return (size_t)(P->end - P->p) > i ? (unsigned char)P->p[i] : -1;
}

static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static bool is_bare(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) ||
           c == '_' || c == '-';
}

static int hex_val(int c)
{
    if (is_digit(c))
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool at_newline(const struct parser *P)
{
    int c = peek(P, 0);
    return c == '\n' || (c == '\r' && peek(P, 1) == '\n');
}

static void skip_newline(struct parser *P)
{
    P->p += *P->p == '\r' ? 2 : 1;
}

static void skip_ws(struct parser *P)
{
    while (P->p < P->end && (*P->p == ' ' || *P->p == '\t'))
        P->p++;
}

/* Length (1-4) of the UTF-8 sequence at s, or 0 if it is truncated,
 * malformed, overlong, a surrogate or above U+10FFFF. */
static size_t utf8_len(const char *s, const char *end, uint32_t *cp_out)
{
    const unsigned char *u = (const unsigned char *)s;
    uint32_t cp = u[0];
    size_t n;

    if (cp < 0x80)
        n = 1;
    else if (cp < 0xC2)
        return 0;
    else if (cp < 0xE0)
        n = 2, cp &= 0x1F;
    else if (cp < 0xF0)
        n = 3, cp &= 0x0F;
    else if (cp < 0xF5)
        n = 4, cp &= 0x07;
    else
        return 0;
    if ((size_t)(end - s) < n)
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((u[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (u[i] & 0x3F);
    }
    if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    if (cp_out)
        *cp_out = cp;
    return n;
}

static size_t utf8_put(char *d, uint32_t cp)
{
    if (cp < 0x80) {
        d[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        d[0] = (char)(0xC0 | cp >> 6);
        d[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        d[0] = (char)(0xE0 | cp >> 12);
        d[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        d[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    d[0] = (char)(0xF0 | cp >> 18);
    d[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    d[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    d[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* What is at `at`, for "expected X, found Y" messages. */
static const char *describe(const struct parser *P, const char *at, char buf[32])
{
    unsigned char c;
    uint32_t cp;

    if (at >= P->end)
        return "end of file";
    c = (unsigned char)*at;
    if (c == '\n' || (c == '\r' && at + 1 < P->end && at[1] == '\n'))
        return "end of line";
    if (c == '\r')
        return "carriage return without line feed";
    if (c == ' ' || c == '\t')
        return "whitespace";
    if (c > ' ' && c < 0x7F)
        snprintf(buf, 32, "'%c'", c);
    else if (c < 0x80)
        snprintf(buf, 32, "control character U+%04X", c);
    else if (utf8_len(at, P->end, &cp))
        snprintf(buf, 32, "U+%04X", (unsigned)cp);
    else
        snprintf(buf, 32, "invalid UTF-8 byte 0x%02X", c);
    return buf;
}

/* Appends key bytes for a message: bare keys as written, others quoted. */
static void show_key(char *buf, size_t cap, size_t *n, const char *k, size_t len)
{
    bool bare = len > 0;
    char tmp[8];

    for (size_t i = 0; i < len && bare; i++)
        bare = is_bare((unsigned char)k[i]);
    if (!bare && *n + 1 < cap)
        buf[(*n)++] = '"';
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)k[i];
        const char *s = tmp;
        size_t sl = 1;

        tmp[0] = (char)c;
        if (c < 0x20 || c == 0x7F)
            sl = (size_t)snprintf(tmp, sizeof tmp, "\\u%04X", c);
        else if (c == '"' || c == '\\')
            tmp[0] = '\\', tmp[1] = (char)c, sl = 2;
        if (*n + sl + 4 >= cap) {
            /* do not cut a UTF-8 sequence in half */
            while (*n > 0 && ((unsigned char)buf[*n - 1] & 0xC0) == 0x80)
                (*n)--;
            if (*n > 0 && (unsigned char)buf[*n - 1] >= 0xC0)
                (*n)--;
            memcpy(buf + *n, "...", 3);
            *n += 3;
            break;
        }
        memcpy(buf + *n, s, sl);
        *n += sl;
    }
    if (!bare && *n + 1 < cap)
        buf[(*n)++] = '"';
    buf[*n] = '\0';
}

static const char *key_bytes(const struct parser *P, const struct keypart *kp)
{
    return P->keys.p ? P->keys.p + kp->off : "";
}

/* The parts 0..last of the current key, dotted, for messages. */
static const char *key_path(const struct parser *P, size_t last, char buf[SHOW_MAX + 8])
{
    size_t n = 0;

    buf[0] = '\0';
    for (size_t i = 0; i <= last; i++) {
        if (n >= SHOW_MAX) {
            memcpy(buf + n, "...", 4);
            break;
        }
        if (i > 0)
            buf[n++] = '.';
        show_key(buf, SHOW_MAX + 4, &n, key_bytes(P, &P->parts[i]), P->parts[i].len);
    }
    return buf;
}

static const char *a_type(const struct kfg_toml_value *v)
{
    switch (v->type) {
    case KFG_TOML_STRING: return "a string";
    case KFG_TOML_INTEGER: return "an integer";
    case KFG_TOML_FLOAT: return "a float";
    case KFG_TOML_BOOL: return "a boolean";
    case KFG_TOML_DATETIME: return "an offset date-time";
    case KFG_TOML_DATETIME_LOCAL: return "a local date-time";
    case KFG_TOML_DATE_LOCAL: return "a local date";
    case KFG_TOML_TIME_LOCAL: return "a local time";
    case KFG_TOML_ARRAY:
        return v->flags & F_AOT ? "an array of tables" : "an array";
    case KFG_TOML_TABLE:
        return v->flags & F_FROZEN ? "an inline table" : "a table";
    }
    return "a value";
}

/* ---- buffers and nodes ---- */

static bool put(struct parser *P, struct sbuf *b, const char *d, size_t n)
{
    if (b->cap - b->len < n) {
        size_t cap = b->cap ? b->cap : 64;
        char *np;

        while (cap - b->len < n)
            cap *= 2;
        np = realloc(b->p, cap);
        if (!np)
            return oom(P);
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, d, n);
    b->len += n;
    return true;
}

static char *dup_bytes(struct parser *P, const char *s, size_t n)
{
    char *d = malloc(n + 1);

    if (!d) {
        oom(P);
        return NULL;
    }
    if (n)
        memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static uint32_t hash_bytes(const char *s, size_t n)
{
    uint32_t h = 2166136261u;      /* FNV-1a */

    while (n--) {
        h ^= (unsigned char)*s++;
        h *= 16777619u;
    }
    return h;
}

static struct kfg_toml_value *new_value(struct parser *P, enum kfg_toml_type type,
                                        struct kfg_toml_pos pos, uint32_t flags)
{
    struct kfg_toml_value *v = calloc(1, sizeof *v);

    if (!v) {
        oom(P);
        return NULL;
    }
    v->type = type;
    v->pos = pos;
    v->flags = flags;
    return v;
}

static void free_value(struct kfg_toml_value *v)
{
    if (!v)
        return;
    switch (v->type) {
    case KFG_TOML_STRING:
        free(v->u.str.ptr);
        break;
    case KFG_TOML_ARRAY:
        for (size_t i = 0; i < v->u.arr.len; i++)
            free_value(v->u.arr.items[i]);     /* depth is bounded */
        free(v->u.arr.items);
        break;
    case KFG_TOML_TABLE:
        for (size_t i = 0; i < v->u.tab.len; i++) {
            free((void *)v->u.tab.items[i].key);
            free_value(v->u.tab.items[i].value);
        }
        free(v->u.tab.items);
        free(v->u.tab.index);
        break;
    default:
        break;
    }
    free(v);
}

static struct kfg_toml_entry *table_find_h(const struct kfg_toml_value *t, const char *k,
                                           size_t n, uint32_t h)
{
    struct kfg_toml_entry *items = t->u.tab.items;

    if (!t->u.tab.index) {
        for (size_t i = 0; i < t->u.tab.len; i++)
            if (items[i].hash == h && items[i].key_len == n && !memcmp(items[i].key, k, n))
                return &items[i];
        return NULL;
    }
    for (size_t mask = t->u.tab.index_cap - 1, i = h & mask;; i = (i + 1) & mask) {
        uint32_t x = t->u.tab.index[i];
        struct kfg_toml_entry *e;

        if (!x)
            return NULL;
        e = &items[x - 1];
        if (e->hash == h && e->key_len == n && !memcmp(e->key, k, n))
            return e;
    }
}

static struct kfg_toml_entry *find_part(const struct parser *P, const struct kfg_toml_value *t,
                                        const struct keypart *kp)
{
    return table_find_h(t, key_bytes(P, kp), kp->len, kp->hash);
}

static void index_put(struct kfg_toml_value *t, size_t i)
{
    size_t mask = t->u.tab.index_cap - 1, j = t->u.tab.items[i].hash & mask;

    while (t->u.tab.index[j])
        j = (j + 1) & mask;
    t->u.tab.index[j] = (uint32_t)(i + 1);
}

/* Takes ownership of key and v in all cases (either may be NULL after an
 * earlier allocation failure). Returns v, or NULL on failure. */
static struct kfg_toml_value *table_add(struct parser *P, struct kfg_toml_value *t, char *key,
                                        const struct keypart *kp, struct kfg_toml_value *v)
{
    size_t len = t->u.tab.len;

    if (!key || !v)
        goto fail;
    if (len == t->u.tab.cap) {
        size_t cap = len ? len * 2 : 4;
        struct kfg_toml_entry *items;

        if (cap >= UINT32_MAX / 4) {
            fail(P, kp->at, "too many keys in one table");
            goto fail;
        }
        items = realloc(t->u.tab.items, cap * sizeof *items);
        if (!items) {
            oom(P);
            goto fail;
        }
        t->u.tab.items = items;
        t->u.tab.cap = cap;
    }
    t->u.tab.items[len] = (struct kfg_toml_entry){key, kp->len, kp->pos, kp->hash, v};
    t->u.tab.len = ++len;
    if (t->u.tab.index && len * 2 <= t->u.tab.index_cap) {
        index_put(t, len - 1);
    } else if (len > INDEX_MIN) {
        size_t cap = 16;
        uint32_t *ix;

        while (cap < len * 4)
            cap *= 2;
        ix = calloc(cap, sizeof *ix);
        if (!ix) {
            oom(P);
            return NULL;        /* the entry is in the tree; the caller aborts */
        }
        free(t->u.tab.index);
        t->u.tab.index = ix;
        t->u.tab.index_cap = cap;
        for (size_t i = 0; i < len; i++)
            index_put(t, i);
    }
    return v;
fail:
    free(key);
    free_value(v);
    return NULL;
}

static struct kfg_toml_value *add_table(struct parser *P, struct kfg_toml_value *t,
                                        const struct keypart *kp, struct kfg_toml_pos pos,
                                        uint32_t flags)
{
    return table_add(P, t, dup_bytes(P, key_bytes(P, kp), kp->len), kp,
                     new_value(P, KFG_TOML_TABLE, pos, flags));
}

/* Takes ownership of item. */
static bool array_push(struct parser *P, struct kfg_toml_value *a, struct kfg_toml_value *item)
{
    if (a->u.arr.len == a->u.arr.cap) {
        size_t cap = a->u.arr.cap ? a->u.arr.cap * 2 : 4;
        struct kfg_toml_value **items = realloc(a->u.arr.items, cap * sizeof *items);

        if (!items) {
            free_value(item);
            return oom(P);
        }
        a->u.arr.items = items;
        a->u.arr.cap = cap;
    }
    a->u.arr.items[a->u.arr.len++] = item;
    return true;
}

/* ---- comments, line ends ---- */

static bool skip_comment(struct parser *P)
{
    char buf[32];

    for (P->p++; P->p < P->end;) {
        unsigned char c = (unsigned char)*P->p;
        size_t n;

        if (c == '\t' || (c >= 0x20 && c < 0x7F)) {
            P->p++;
        } else if (c >= 0x80 && (n = utf8_len(P->p, P->end, NULL)) > 0) {
            P->p += n;
        } else if (at_newline(P)) {
            return true;
        } else {
            return fail(P, P->p, "%s is not allowed in a comment", describe(P, P->p, buf));
        }
    }
    return true;
}

/* Whitespace, then an optional comment, then a newline or the end. */
static bool end_line(struct parser *P, const char *after)
{
    char buf[32];

    skip_ws(P);
    if (peek(P, 0) == '#' && !skip_comment(P))
        return false;
    if (P->p >= P->end)
        return true;
    if (at_newline(P)) {
        skip_newline(P);
        return true;
    }
    if (!after)
        return fail(P, P->p, "unexpected %s", describe(P, P->p, buf));
    return fail(P, P->p, "expected end of line after %s, found %s", after,
                describe(P, P->p, buf));
}

/* Whitespace, newlines and comments, as allowed inside arrays. */
static bool skip_blank(struct parser *P)
{
    for (;;) {
        skip_ws(P);
        if (peek(P, 0) == '#') {
            if (!skip_comment(P))
                return false;
        } else if (at_newline(P)) {
            skip_newline(P);
        } else {
            return true;
        }
    }
}

/* ---- strings ---- */

static bool parse_escape(struct parser *P, struct sbuf *out, bool ml)
{
    const char *bs = P->p++;       /* the backslash */
    int c = peek(P, 0);
    char buf[32], u[4];
    const char *simple = NULL;

    switch (c) {
    case 'b': simple = "\b"; break;
    case 't': simple = "\t"; break;
    case 'n': simple = "\n"; break;
    case 'f': simple = "\f"; break;
    case 'r': simple = "\r"; break;
    case '"': simple = "\""; break;
    case '\\': simple = "\\"; break;
    case 'u':
    case 'U': {
        int nd = c == 'u' ? 4 : 8;
        uint32_t cp = 0;

        for (int i = 1; i <= nd; i++) {
            int h = hex_val(peek(P, (size_t)i));

            if (h < 0)
                return fail(P, bs, "\\%c escape needs exactly %d hex digits", c, nd);
            cp = cp << 4 | (uint32_t)h;
        }
        if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return fail(P, bs, "\\%c%.*s is not a Unicode scalar value", c, nd, P->p + 1);
        P->p += 1 + nd;
        return put(P, out, u, utf8_put(u, cp));
    }
    default:
        break;
    }
    if (simple) {
        P->p++;
        return put(P, out, simple, 1);
    }
    if (ml && (c == ' ' || c == '\t' || c == '\n' || c == '\r')) {
        /* line-ending backslash: trims up to the next non-blank character,
         * but only whitespace may follow it on its own line */
        skip_ws(P);
        if (!at_newline(P))
            return fail(P, bs, "a line-ending backslash must be the last thing on its line");
        while (P->p < P->end && (*P->p == ' ' || *P->p == '\t' || at_newline(P)))
            P->p += at_newline(P) ? (*P->p == '\r' ? 2 : 1) : 1;
        return true;
    }
    if (c > ' ' && c < 0x7F)
        return fail(P, bs, "invalid escape '\\%c' in string", c);
    return fail(P, bs, "invalid escape: '\\' followed by %s", describe(P, P->p, buf));
}

/* Any of the four string forms, at the opening quote; appends the
 * decoded text to out. */
static bool parse_string(struct parser *P, struct sbuf *out)
{
    const char *open = P->p;
    const char q = *open;
    const bool ml = peek(P, 1) == q && peek(P, 2) == q;
    char buf[32];

    P->p += ml ? 3 : 1;
    if (ml && at_newline(P))
        skip_newline(P);    /* a newline right after the opening is trimmed */
    for (;;) {
        const char *run = P->p;
        int c;

        for (;;) {
            size_t n;

            c = peek(P, 0);
            if (c == '\t' || (c >= 0x20 && c < 0x7F && c != q && c != '\\') ||
                (c == '\\' && q == '\'')) {
                P->p++;
            } else if (c >= 0x80 && (n = utf8_len(P->p, P->end, NULL)) > 0) {
                P->p += n;
            } else {
                break;
            }
        }
        if (!put(P, out, run, (size_t)(P->p - run)))
            return false;
        if (c == q) {
            size_t n = 1;

            if (!ml) {
                P->p++;
                return true;
            }
            while (peek(P, n) == q)
                n++;
            if (n < 3) {
                P->p += n;
                if (!put(P, out, open, n))   /* open holds n quote chars */
                    return false;
                continue;
            }
            if (n > 5)
                return fail(P, P->p, "too many quotes at the end of a multi-line string");
            P->p += n;
            return put(P, out, open, n - 3);
        }
        if (c == '\\') {
            if (!parse_escape(P, out, ml))
                return false;
        } else if (c == -1) {
            return fail(P, open, ml ? "unterminated multi-line string"
                                    : "unterminated string");
        } else if (at_newline(P)) {
            if (!ml)
                return fail(P, open, "unterminated string (strings in %s quotes cannot "
                            "span lines)", q == '"' ? "double" : "single");
            skip_newline(P);
            if (!put(P, out, "\n", 1))
                return false;
        } else if (c >= 0x80) {
            return fail(P, P->p, "invalid UTF-8 byte 0x%02X in string", c);
        } else {
            return fail(P, P->p, "%s must be escaped in a string",
                        describe(P, P->p, buf));
        }
    }
}

/* ---- keys ---- */

/* Parses a possibly dotted key into P->parts. */
static bool parse_key(struct parser *P)
{
    char buf[32];

    P->nparts = 0;
    P->keys.len = 0;
    for (;;) {
        struct keypart *kp;
        int c;

        skip_ws(P);
        if (P->nparts == KFG_TOML_MAX_DEPTH)
            return fail(P, P->p, "key has more than %d dotted parts", KFG_TOML_MAX_DEPTH);
        kp = &P->parts[P->nparts];
        kp->at = P->p;
        kp->pos = pos_at(P, P->p);
        kp->off = P->keys.len;
        c = peek(P, 0);
        if (c == '"' || c == '\'') {
            if (peek(P, 1) == c && peek(P, 2) == c)
                return fail(P, P->p, "multi-line strings cannot be used as keys");
            if (!parse_string(P, &P->keys))
                return false;
        } else if (is_bare(c)) {
            const char *s = P->p;

            while (P->p < P->end && is_bare((unsigned char)*P->p))
                P->p++;
            if (!put(P, &P->keys, s, (size_t)(P->p - s)))
                return false;
        } else {
            return fail(P, P->p, "expected a key, found %s", describe(P, P->p, buf));
        }
        kp->len = P->keys.len - kp->off;
        kp->hash = hash_bytes(key_bytes(P, kp), kp->len);
        P->nparts++;
        skip_ws(P);
        if (peek(P, 0) != '.')
            return true;
        P->p++;
    }
}

/* ---- scalars ---- */

static struct kfg_toml_value *parse_string_value(struct parser *P, struct kfg_toml_pos pos)
{
    struct kfg_toml_value *v;
    char *s;

    P->str.len = 0;
    if (!parse_string(P, &P->str))
        return NULL;
    s = dup_bytes(P, P->str.p ? P->str.p : "", P->str.len);
    if (!s)
        return NULL;
    v = new_value(P, KFG_TOML_STRING, pos, 0);
    if (!v) {
        free(s);
        return NULL;
    }
    v->u.str.ptr = s;
    v->u.str.len = P->str.len;
    return v;
}

enum digits_rc { DIGITS_OK, DIGITS_NONE, DIGITS_US };

static bool is_digit_base(int c, int base)
{
    switch (base) {
    case 2: return c == '0' || c == '1';
    case 8: return c >= '0' && c <= '7';
    case 16: return hex_val(c) >= 0;
    default: return is_digit(c);
    }
}

/* One or more digits, with single underscores only between digits. */
static enum digits_rc scan_digits(const char **q, const char *e, int base)
{
    const char *s = *q;

    if (s == e || !is_digit_base((unsigned char)*s, base))
        return s < e && *s == '_' ? DIGITS_US : DIGITS_NONE;
    for (;;) {
        while (s < e && is_digit_base((unsigned char)*s, base))
            s++;
        if (s == e || *s != '_')
            break;
        if (s + 1 == e || !is_digit_base((unsigned char)s[1], base))
            return DIGITS_US;
        s++;
    }
    *q = s;
    return DIGITS_OK;
}

static struct kfg_toml_value *number_fail(struct parser *P, const char *s, size_t n,
                                          const char *why)
{
    fail(P, s, "%s '%.*s%s'", why, (int)(n > SHOW_MAX ? SHOW_MAX : n), s,
         n > SHOW_MAX ? "..." : "");
    return NULL;
}

static struct kfg_toml_value *parse_float(struct parser *P, const char *s, size_t n,
                                          struct kfg_toml_pos pos)
{
    const char *dp = localeconv()->decimal_point;   /* strtod obeys LC_NUMERIC */
    struct kfg_toml_value *v;
    double d;
    char *end;

    P->str.len = 0;
    for (size_t i = 0; i < n; i++) {
        bool ok = true;

        if (s[i] == '.')
            ok = put(P, &P->str, dp, strlen(dp));
        else if (s[i] != '_')
            ok = put(P, &P->str, s + i, 1);
        if (!ok)
            return NULL;
    }
    if (!put(P, &P->str, "", 1))
        return NULL;
    errno = 0;
    d = strtod(P->str.p, &end);
    if (*end != '\0')
        return number_fail(P, s, n, "invalid float");
    if (errno == ERANGE && isinf(d))
        return number_fail(P, s, n, "float out of range");
    v = new_value(P, KFG_TOML_FLOAT, pos, 0);
    if (v)
        v->u.f = d;
    return v;
}

static struct kfg_toml_value *parse_number(struct parser *P, const char *s, size_t n,
                                           struct kfg_toml_pos pos)
{
    const char *t = s, *e = s + n, *q;
    struct kfg_toml_value *v;
    int sign = 0, base = 10;
    enum digits_rc rc;
    bool is_float = false;
    uint64_t mag = 0, limit = INT64_MAX;

    if (*t == '+' || *t == '-')
        sign = *t++;
    if (e - t == 3 && (!memcmp(t, "inf", 3) || !memcmp(t, "nan", 3))) {
        v = new_value(P, KFG_TOML_FLOAT, pos, 0);
        if (v) {
            v->u.f = t[0] == 'i' ? (double)INFINITY : (double)NAN;
            if (sign == '-')
                v->u.f = -v->u.f;
        }
        return v;
    }
    if (e - t > 2 && t[0] == '0' && (t[1] == 'x' || t[1] == 'o' || t[1] == 'b')) {
        if (sign)
            return number_fail(P, s, n, "hex, octal and binary integers cannot have a sign:");
        base = t[1] == 'x' ? 16 : t[1] == 'o' ? 8 : 2;
        t += 2;
    }
    q = t;
    rc = scan_digits(&q, e, base);
    if (rc == DIGITS_OK && base == 10 && *t == '0' && q - t > 1)
        return number_fail(P, s, n, "leading zeros are not allowed in");
    if (rc == DIGITS_OK && base == 10 && q < e && *q == '.') {
        q++;
        rc = scan_digits(&q, e, 10);
        is_float = true;
    }
    if (rc == DIGITS_OK && base == 10 && q < e && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < e && (*q == '+' || *q == '-'))
            q++;
        rc = scan_digits(&q, e, 10);
        is_float = true;
    }
    if (rc == DIGITS_US)
        return number_fail(P, s, n, "underscores must sit between digits in");
    if (rc != DIGITS_OK || q != e) {
        int c0 = n > (size_t)(sign != 0) ? (unsigned char)s[sign != 0] : 0;  /* "+" alone */

        if (base == 10 && ((c0 >= 'a' && c0 <= 'z') || (c0 >= 'A' && c0 <= 'Z')))
            return number_fail(P, s, n, "invalid value");
        return number_fail(P, s, n, base == 10 ? "invalid number" : "invalid integer");
    }
    if (is_float)
        return parse_float(P, s, n, pos);

    if (sign == '-')
        limit = (uint64_t)INT64_MAX + 1;
    for (; t < e; t++) {
        unsigned d;

        if (*t == '_')
            continue;
        d = (unsigned)hex_val((unsigned char)*t);
        if (mag > (limit - d) / (unsigned)base)
            return number_fail(P, s, n, "integer out of 64-bit range:");
        mag = mag * (unsigned)base + d;
    }
    v = new_value(P, KFG_TOML_INTEGER, pos, 0);
    if (v)
        v->u.i = sign != '-' ? (int64_t)mag : mag == limit ? INT64_MIN : -(int64_t)mag;
    return v;
}

static int fixed_num(const char *s, const char *e, int n)
{
    int v = 0;

    if (e - s < n)
        return -1;
    for (int i = 0; i < n; i++) {
        if (!is_digit((unsigned char)s[i]))
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int days_in_month(int y, int m)
{
    static const unsigned char days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;

    return m == 2 && leap ? 29 : days[m - 1];
}

static char *put_num(char *t, int v, int width)
{
    for (int i = width - 1; i >= 0; i--, v /= 10)
        t[i] = (char)('0' + v % 10);
    return t + width;
}

/* A date, a time or both, at P->p (the caller saw 4 digits and '-', or
 * 2 digits and ':'). The caller checks what follows. */
static struct kfg_toml_value *parse_datetime(struct parser *P, struct kfg_toml_pos pos,
                                             bool has_date)
{
    const char *s = P->p, *e = P->end;
    struct kfg_toml_datetime dt;
    enum kfg_toml_type type;
    bool has_time = !has_date;
    struct kfg_toml_value *v;
    char *t = dt.text;

    memset(&dt, 0, sizeof dt);
    if (has_date) {
        dt.year = fixed_num(s, e, 4);
        dt.month = e - s > 4 && s[4] == '-' ? fixed_num(s + 5, e, 2) : -1;
        dt.day = e - s > 7 && s[7] == '-' ? fixed_num(s + 8, e, 2) : -1;
        if (dt.year < 0 || dt.month < 0 || dt.day < 0 || (e - s > 10 && is_digit(s[10]))) {
            fail(P, s, "invalid date (expected YYYY-MM-DD)");
            return NULL;
        }
        if (dt.month < 1 || dt.month > 12) {
            fail(P, s + 5, "month %02d is out of range", dt.month);
            return NULL;
        }
        if (dt.day < 1 || dt.day > days_in_month(dt.year, dt.month)) {
            fail(P, s + 8, "day %02d is out of range for %04d-%02d", dt.day, dt.year, dt.month);
            return NULL;
        }
        t = put_num(t, dt.year, 4);
        *t++ = '-';
        t = put_num(t, dt.month, 2);
        *t++ = '-';
        t = put_num(t, dt.day, 2);
        s += 10;
        if (s < e && (*s == 'T' || *s == 't' || (*s == ' ' && s + 1 < e && is_digit(s[1])))) {
            s++;
            has_time = true;
            *t++ = 'T';
        }
    }
    if (has_time) {
        dt.hour = fixed_num(s, e, 2);
        dt.minute = e - s > 2 && s[2] == ':' ? fixed_num(s + 3, e, 2) : -1;
        dt.second = e - s > 5 && s[5] == ':' ? fixed_num(s + 6, e, 2) : -1;
        if (dt.hour < 0 || dt.minute < 0 || dt.second < 0 || (e - s > 8 && is_digit(s[8]))) {
            fail(P, s, "invalid time (expected HH:MM:SS; seconds are required)");
            return NULL;
        }
        if (dt.hour > 23 || dt.minute > 59 || dt.second > 60) {
            fail(P, s, "time %02d:%02d:%02d is out of range", dt.hour, dt.minute, dt.second);
            return NULL;
        }
        t = put_num(t, dt.hour, 2);
        *t++ = ':';
        t = put_num(t, dt.minute, 2);
        *t++ = ':';
        t = put_num(t, dt.second, 2);
        s += 8;
        if (s < e && *s == '.') {
            const char *f = ++s;

            while (s < e && is_digit(*s))
                s++;
            if (s == f) {
                fail(P, f - 1, "expected digits after the decimal point in a time");
                return NULL;
            }
            *t++ = '.';
            for (int i = 0; i < 9; i++) {   /* excess precision is truncated */
                dt.nanosecond *= 10;
                if (f + i < s) {
                    dt.nanosecond += (uint32_t)(f[i] - '0');
                    *t++ = f[i];
                }
            }
        }
    }
    if (!has_date) {
        type = KFG_TOML_TIME_LOCAL;
    } else if (!has_time) {
        type = KFG_TOML_DATE_LOCAL;
    } else if (s < e && (*s == 'Z' || *s == 'z')) {
        type = KFG_TOML_DATETIME;
        *t++ = 'Z';
        s++;
    } else if (s < e && (*s == '+' || *s == '-')) {
        int oh = fixed_num(s + 1, e, 2);
        int om = e - s > 3 && s[3] == ':' ? fixed_num(s + 4, e, 2) : -1;

        if (oh < 0 || om < 0 || (e - s > 6 && is_digit(s[6]))) {
            fail(P, s, "invalid UTC offset (expected Z, +HH:MM or -HH:MM)");
            return NULL;
        }
        if (oh > 23 || om > 59) {
            fail(P, s, "UTC offset %c%02d:%02d is out of range", *s, oh, om);
            return NULL;
        }
        type = KFG_TOML_DATETIME;
        dt.offset_minutes = (*s == '-' ? -1 : 1) * (oh * 60 + om);
        *t++ = *s;
        t = put_num(t, oh, 2);
        *t++ = ':';
        t = put_num(t, om, 2);
        s += 6;
    } else {
        type = KFG_TOML_DATETIME_LOCAL;
    }
    *t = '\0';
    P->p = s;
    v = new_value(P, type, pos, 0);
    if (v)
        v->u.dt = dt;
    return v;
}

static struct kfg_toml_value *parse_scalar(struct parser *P, struct kfg_toml_pos pos)
{
    const char *s = P->p, *e = s;
    struct kfg_toml_value *v;
    size_t n;
    char buf[32];

    if (is_digit(peek(P, 0)) && is_digit(peek(P, 1))) {
        if (peek(P, 2) == ':')
            return parse_datetime(P, pos, false);
        if (is_digit(peek(P, 2)) && is_digit(peek(P, 3)) && peek(P, 4) == '-')
            return parse_datetime(P, pos, true);
    }
    while (e < P->end && (is_bare((unsigned char)*e) || *e == '+' || *e == '.'))
        e++;
    n = (size_t)(e - s);
    if (n == 0) {
        fail(P, s, "expected a value, found %s", describe(P, s, buf));
        return NULL;
    }
    P->p = e;
    if ((n == 4 && !memcmp(s, "true", 4)) || (n == 5 && !memcmp(s, "false", 5))) {
        v = new_value(P, KFG_TOML_BOOL, pos, 0);
        if (v)
            v->u.b = n == 4;
        return v;
    }
    return parse_number(P, s, n, pos);
}

/* ---- arrays, inline tables, key/values ---- */

static struct kfg_toml_value *parse_array(struct parser *P, struct kfg_toml_pos pos,
                                          unsigned depth)
{
    const char *open = P->p;
    struct kfg_toml_value *v = new_value(P, KFG_TOML_ARRAY, pos, F_FROZEN);
    char buf[32];

    if (!v)
        return NULL;
    P->p++;
    for (;;) {
        struct kfg_toml_value *item;

        if (!skip_blank(P))
            break;
        if (peek(P, 0) == ']') {
            P->p++;
            return v;
        }
        if (P->p >= P->end) {
            fail(P, open, "unterminated array");
            break;
        }
        item = parse_value(P, depth + 1);
        if (!item || !array_push(P, v, item) || !skip_blank(P))
            break;
        if (peek(P, 0) == ',') {
            P->p++;
        } else if (peek(P, 0) == ']') {
            P->p++;
            return v;
        } else {
            if (P->p >= P->end)
                fail(P, open, "unterminated array");
            else
                fail(P, P->p, "expected ',' or ']' in array, found %s", describe(P, P->p, buf));
            break;
        }
    }
    free_value(v);
    return NULL;
}

static bool parse_keyval(struct parser *P, struct kfg_toml_value *t, unsigned depth);

static bool inline_space(struct parser *P)
{
    skip_ws(P);
    if (at_newline(P))
        return fail(P, P->p, "newlines are not allowed in an inline table (TOML 1.0)");
    return true;
}

static struct kfg_toml_value *parse_inline_table(struct parser *P, struct kfg_toml_pos pos,
                                                 unsigned depth)
{
    const char *open = P->p;
    struct kfg_toml_value *v = new_value(P, KFG_TOML_TABLE, pos, 0);
    char buf[32];

    if (!v)
        return NULL;
    P->p++;
    if (!inline_space(P))
        goto fail;
    if (peek(P, 0) != '}') {
        for (;;) {
            if (!parse_keyval(P, v, depth) || !inline_space(P))
                goto fail;
            if (peek(P, 0) == '}')
                break;
            if (peek(P, 0) != ',') {
                if (P->p >= P->end)
                    fail(P, open, "unterminated inline table");
                else
                    fail(P, P->p, "expected ',' or '}' in inline table, found %s",
                         describe(P, P->p, buf));
                goto fail;
            }
            P->p++;
            if (!inline_space(P))
                goto fail;
            if (peek(P, 0) == '}') {
                fail(P, P->p, "trailing comma in an inline table (not allowed in TOML 1.0)");
                goto fail;
            }
        }
    }
    P->p++;
    v->flags |= F_FROZEN;
    return v;
fail:
    free_value(v);
    return NULL;
}

static struct kfg_toml_value *parse_value(struct parser *P, unsigned depth)
{
    struct kfg_toml_pos pos = pos_at(P, P->p);
    int c = peek(P, 0);

    switch (c) {
    case '"':
    case '\'':
        return parse_string_value(P, pos);
    case '[':
    case '{':
        if (depth > KFG_TOML_MAX_DEPTH) {
            fail(P, P->p, "nesting is deeper than %d levels", KFG_TOML_MAX_DEPTH);
            return NULL;
        }
        return c == '[' ? parse_array(P, pos, depth) : parse_inline_table(P, pos, depth);
    default:
        return parse_scalar(P, pos);
    }
}

static bool too_deep(struct parser *P, const struct keypart *kp)
{
    return fail(P, kp->at, "nesting is deeper than %d levels", KFG_TOML_MAX_DEPTH);
}

/* key = value, into table t at nesting depth `depth`. */
static bool parse_keyval(struct parser *P, struct kfg_toml_value *t, unsigned depth)
{
    char kbuf[SHOW_MAX + 8], pbuf[SHOW_MAX + 8], buf[32];
    struct kfg_toml_value *v;
    struct kfg_toml_entry *e;
    struct keypart last;
    size_t n;
    char *key;

    if (!parse_key(P))
        return false;
    n = P->nparts;
    if (peek(P, 0) != '=')
        return fail(P, P->p, "expected '=' after key '%s', found %s",
                    key_path(P, n - 1, kbuf), describe(P, P->p, buf));
    P->p++;
    skip_ws(P);
    for (size_t i = 0; i + 1 < n; i++) {
        const struct keypart *kp = &P->parts[i];

        if (++depth > KFG_TOML_MAX_DEPTH)
            return too_deep(P, kp);
        e = find_part(P, t, kp);
        if (!e) {
            t = add_table(P, t, kp, kp->pos, 0);
            if (!t)
                return false;
            t->section = P->section;
            continue;
        }
        v = e->value;
        if (v->type != KFG_TOML_TABLE)
            return fail(P, kp->at, "cannot set '%s': '%s' is %s (line %u), not a table",
                        key_path(P, n - 1, kbuf), key_path(P, i, pbuf), a_type(v),
                        e->key_pos.line);
        if (v->flags & F_FROZEN)
            return fail(P, kp->at, "cannot add keys to inline table '%s' (line %u)",
                        key_path(P, i, pbuf), v->pos.line);
        if ((v->flags & F_DEFINED) || (v->section && v->section != P->section))
            return fail(P, kp->at, "cannot add to table '%s' with dotted keys here: it "
                        "was defined at line %u", key_path(P, i, pbuf), v->pos.line);
        v->section = P->section;
        t = v;
    }
    last = P->parts[n - 1];
    e = find_part(P, t, &last);
    if (e)
        return fail(P, last.at, "duplicate key '%s' (first defined at line %u, col %u)",
                    key_path(P, n - 1, kbuf), e->key_pos.line, e->key_pos.col);
    /* the value may contain keys of its own, which reuse P->parts/keys */
    key = dup_bytes(P, key_bytes(P, &last), last.len);
    if (!key)
        return false;
    v = parse_value(P, depth + 1);
    if (!v) {
        free(key);
        return false;
    }
    return table_add(P, t, key, &last, v) != NULL;
}

/* ---- headers and the document ---- */

static bool parse_header(struct parser *P)
{
    const char *open = P->p;
    struct kfg_toml_pos hpos = pos_at(P, open);
    const bool aot = peek(P, 1) == '[';
    char kbuf[SHOW_MAX + 8], pbuf[SHOW_MAX + 8], buf[32];
    const char *lb = aot ? "[[" : "[", *rb = aot ? "]]" : "]";
    struct kfg_toml_value *t = P->root, *v;
    struct kfg_toml_entry *e;
    const struct keypart *kp;
    unsigned depth = 0;
    size_t n;

    P->p += aot ? 2 : 1;
    if (!parse_key(P))
        return false;
    n = P->nparts;
    if (peek(P, 0) != ']' || (aot && peek(P, 1) != ']'))
        return fail(P, P->p, "expected '%s' to close the header, found %s", rb,
                    describe(P, P->p, buf));
    P->p += aot ? 2 : 1;
    P->section++;
    key_path(P, n - 1, kbuf);

    for (size_t i = 0; i + 1 < n; i++) {
        kp = &P->parts[i];
        if (++depth > KFG_TOML_MAX_DEPTH)
            return too_deep(P, kp);
        e = find_part(P, t, kp);
        if (!e) {
            t = add_table(P, t, kp, kp->pos, 0);
            if (!t)
                return false;
            continue;
        }
        v = e->value;
        if (v->type == KFG_TOML_ARRAY && (v->flags & F_AOT)) {
            /* [[a]] then [a.b]: b goes into the latest element of a */
            if (++depth > KFG_TOML_MAX_DEPTH)
                return too_deep(P, kp);
            v = v->u.arr.items[v->u.arr.len - 1];
        }
        if (v->type != KFG_TOML_TABLE || (v->flags & F_FROZEN))
            return fail(P, kp->at, "cannot define %s%s%s: '%s' is %s (line %u)", lb, kbuf, rb,
                        key_path(P, i, pbuf), a_type(v), v->pos.line);
        t = v;
    }

    kp = &P->parts[n - 1];
    if (++depth > KFG_TOML_MAX_DEPTH)
        return too_deep(P, kp);
    e = find_part(P, t, kp);
    if (!aot) {
        if (!e) {
            t = add_table(P, t, kp, hpos, F_DEFINED);
            if (!t)
                return false;
        } else {
            v = e->value;
            if (v->type != KFG_TOML_TABLE || (v->flags & F_FROZEN))
                return fail(P, kp->at, "cannot define [%s]: it is already %s (line %u)",
                            kbuf, a_type(v), v->pos.line);
            if (v->flags & F_DEFINED)
                return fail(P, open, "table [%s] defined twice (first at line %u)",
                            kbuf, v->pos.line);
            if (v->section)
                return fail(P, open, "table [%s] was already defined by dotted keys "
                            "(line %u)", kbuf, v->pos.line);
            v->flags |= F_DEFINED;
            v->pos = hpos;
            t = v;
        }
    } else {
        struct kfg_toml_value *arr, *elem;

        if (!e) {
            arr = table_add(P, t, dup_bytes(P, key_bytes(P, kp), kp->len), kp,
                            new_value(P, KFG_TOML_ARRAY, hpos, F_AOT));
            if (!arr)
                return false;
        } else {
            arr = e->value;
            if (arr->type != KFG_TOML_ARRAY || !(arr->flags & F_AOT))
                return fail(P, kp->at, "cannot define [[%s]]: it is already %s (line %u)",
                            kbuf, a_type(arr), arr->pos.line);
        }
        if (++depth > KFG_TOML_MAX_DEPTH)
            return too_deep(P, kp);
        elem = new_value(P, KFG_TOML_TABLE, hpos, F_DEFINED);
        if (!elem || !array_push(P, arr, elem))
            return false;
        t = elem;
    }
    P->cur = t;
    P->cur_depth = depth;
    return true;
}

static bool parse_document(struct parser *P)
{
    while (P->p < P->end) {
        int c;

        skip_ws(P);
        c = peek(P, 0);
        if (c == '[') {
            if (!parse_header(P) || !end_line(P, "the table header"))
                return false;
        } else if (c == '#' || c == '\n' || c == '\r' || c == -1) {
            if (!end_line(P, NULL))
                return false;
        } else {
            if (!parse_keyval(P, P->cur, P->cur_depth) || !end_line(P, "the value"))
                return false;
        }
    }
    return true;
}

int kfg_toml_parse(const char *src, size_t len, struct kfg_toml_value **root,
                   struct kfg_toml_error *err)
{
    struct kfg_toml_error scratch;
    struct parser P;
    bool ok;

    if (!err)
        err = &scratch;
    memset(err, 0, sizeof *err);
    if (!root || (!src && len)) {
        snprintf(err->msg, sizeof err->msg, "invalid arguments");
        return -1;
    }
    *root = NULL;
    memset(&P, 0, sizeof P);
    if (!src)
        src = "";
    P.begin = src;
    P.end = src + len;
    if (len >= 3 && !memcmp(src, "\xEF\xBB\xBF", 3))
        P.begin += 3;           /* a UTF-8 byte order mark is allowed at the start */
    P.p = P.mark = P.begin;
    P.line = P.col = 1;
    P.err = err;
    P.section = 1;
    P.root = P.cur = new_value(&P, KFG_TOML_TABLE, (struct kfg_toml_pos){1, 1}, F_DEFINED);
    ok = P.root && parse_document(&P);
    free(P.str.p);
    free(P.keys.p);
    if (!ok) {
        free_value(P.root);
        return -1;
    }
    *root = P.root;
    return 0;
}

void kfg_toml_free(struct kfg_toml_value *root)
{
    free_value(root);
}

/* ---- accessors ---- */

const char *kfg_toml_type_name(enum kfg_toml_type t)
{
    switch (t) {
    case KFG_TOML_STRING: return "string";
    case KFG_TOML_INTEGER: return "integer";
    case KFG_TOML_FLOAT: return "float";
    case KFG_TOML_BOOL: return "bool";
    case KFG_TOML_DATETIME: return "datetime";
    case KFG_TOML_DATETIME_LOCAL: return "datetime-local";
    case KFG_TOML_DATE_LOCAL: return "date-local";
    case KFG_TOML_TIME_LOCAL: return "time-local";
    case KFG_TOML_ARRAY: return "array";
    case KFG_TOML_TABLE: return "table";
    }
    return "unknown";
}

const struct kfg_toml_entry *kfg_toml_table_find(const struct kfg_toml_value *table,
                                                 const char *key, size_t key_len)
{
    if (!table || table->type != KFG_TOML_TABLE || (!key && key_len))
        return NULL;
    if (!key)
        key = "";
    return table_find_h(table, key, key_len, hash_bytes(key, key_len));
}

const struct kfg_toml_value *kfg_toml_table_get(const struct kfg_toml_value *table,
                                                const char *key)
{
    const struct kfg_toml_entry *e = key ? kfg_toml_table_find(table, key, strlen(key)) : NULL;

    return e ? e->value : NULL;
}

size_t kfg_toml_table_len(const struct kfg_toml_value *table)
{
    return table && table->type == KFG_TOML_TABLE ? table->u.tab.len : 0;
}

const struct kfg_toml_entry *kfg_toml_table_at(const struct kfg_toml_value *table, size_t i)
{
    return i < kfg_toml_table_len(table) ? &table->u.tab.items[i] : NULL;
}

size_t kfg_toml_array_len(const struct kfg_toml_value *array)
{
    return array && array->type == KFG_TOML_ARRAY ? array->u.arr.len : 0;
}

const struct kfg_toml_value *kfg_toml_array_at(const struct kfg_toml_value *array, size_t i)
{
    return i < kfg_toml_array_len(array) ? array->u.arr.items[i] : NULL;
}

bool kfg_toml_get_string(const struct kfg_toml_value *v, const char **out, size_t *len)
{
    if (!v || v->type != KFG_TOML_STRING)
        return false;
    *out = v->u.str.ptr;
    if (len)
        *len = v->u.str.len;
    return true;
}

bool kfg_toml_get_int(const struct kfg_toml_value *v, int64_t *out)
{
    if (!v || v->type != KFG_TOML_INTEGER)
        return false;
    *out = v->u.i;
    return true;
}

bool kfg_toml_get_float(const struct kfg_toml_value *v, double *out)
{
    if (v && v->type == KFG_TOML_FLOAT)
        *out = v->u.f;
    else if (v && v->type == KFG_TOML_INTEGER)
        *out = (double)v->u.i;
    else
        return false;
    return true;
}

bool kfg_toml_get_bool(const struct kfg_toml_value *v, bool *out)
{
    if (!v || v->type != KFG_TOML_BOOL)
        return false;
    *out = v->u.b;
    return true;
}

const struct kfg_toml_datetime *kfg_toml_get_datetime(const struct kfg_toml_value *v)
{
    if (!v || v->type < KFG_TOML_DATETIME || v->type > KFG_TOML_TIME_LOCAL)
        return NULL;
    return &v->u.dt;
}
