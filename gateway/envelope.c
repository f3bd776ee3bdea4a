/*
 * Envelope v1 codec (spec/envelope.md). Encoding writes msgpack straight
 * into a kfg_buf, in the forms msgpack-c's packer picks (msgpack-c still
 * packs the JSON -> msgpack path). Decoding and the JSON conversion read the
 * bytes with a small bounds-checked reader of our own instead of
 * msgpack_unpack: it never allocates for a length the input merely claims,
 * it keeps the exact bytes of values we store raw, and it knows the path of
 * every value for the rejection reason.
 */
#include "envelope.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Schema: the types of the fields the spec names. */

enum st {
    S_ANY = 0,
    S_STR,
    S_UINT,
    S_INT,
    S_NUM,      /* float64; integers accepted on decode */
    S_BOOL,
    S_BIN,
    S_MAP,
    S_ARRAY,
};

struct schema {
    const char *key;
    enum st type;
    size_t len;             /* filled in by schema_len */
};

static struct schema top_schema[] = {
    { "v", S_UINT, 0 }, { "id", S_STR, 0 }, { "seq", S_UINT, 0 }, { "tenant", S_STR, 0 },
    { "channel", S_STR, 0 }, { "instance", S_STR, 0 }, { "dir", S_STR, 0 }, { "type", S_STR, 0 },
    { "parts", S_ARRAY, 0 },
    { "conversation", S_MAP, 0 }, { "conversation.id", S_STR, 0 }, { "conversation.kind", S_STR, 0 },
    { "conversation.thread", S_STR, 0 }, { "conversation.name", S_STR, 0 },
    { "sender", S_MAP, 0 }, { "sender.id", S_STR, 0 }, { "sender.name", S_STR, 0 },
    { "sender.role", S_STR, 0 },
    { "recipient", S_MAP, 0 }, { "recipient.id", S_STR, 0 }, { "recipient.name", S_STR, 0 },
    { "recipient.role", S_STR, 0 },
    { "ts", S_MAP, 0 }, { "ts.channel", S_INT, 0 }, { "ts.accepted", S_INT, 0 },
    { "reply_to", S_STR, 0 }, { "idem", S_STR, 0 }, { "channel_msg_id", S_STR, 0 },
    { "deadline", S_INT, 0 },
    { "trace", S_MAP, 0 }, { "trace.traceparent", S_STR, 0 }, { "trace.tracestate", S_STR, 0 },
    { "raw", S_MAP, 0 }, { "raw.ctype", S_STR, 0 }, { "raw.body", S_BIN, 0 },
    { "channel_data", S_MAP, 0 },
    { "status", S_STR, 0 }, { "ref", S_STR, 0 }, { "ref_seq", S_UINT, 0 }, { "code", S_STR, 0 },
    { "detail", S_STR, 0 }, { "retriable", S_BOOL, 0 }, { "attempts", S_UINT, 0 },
    { NULL, S_ANY, 0 },
};

static struct schema part_schema[] = {
    { "kind", S_STR, 0 }, { "text", S_STR, 0 }, { "format", S_STR, 0 }, { "url", S_STR, 0 },
    { "media_id", S_STR, 0 }, { "mime", S_STR, 0 }, { "size", S_UINT, 0 }, { "name", S_STR, 0 },
    { "duration_ms", S_UINT, 0 }, { "width", S_UINT, 0 }, { "height", S_UINT, 0 },
    { "sha256", S_STR, 0 }, { "thumb_url", S_STR, 0 }, { "thumb_media_id", S_STR, 0 },
    { "expires", S_INT, 0 }, { "lat", S_NUM, 0 }, { "lon", S_NUM, 0 }, { "label", S_STR, 0 },
    { "scale", S_INT, 0 }, { "title", S_STR, 0 }, { "description", S_STR, 0 }, { "key", S_STR, 0 },
    { NULL, S_ANY, 0 },
};

/* Lookups go by key length: each table is sorted by length once, and
 * by_len[t][n] .. by_len[t][n + 1] is the run of its keys of n bytes. */
#define SCHEMA_LEN_MAX 32
static uint8_t by_len[2][SCHEMA_LEN_MAX + 1];

static int schema_len_cmp(const void *a, const void *b)
{
    const struct schema *x = a, *y = b;
    return (x->len > y->len) - (x->len < y->len);
}

static void schema_index(struct schema *t, uint8_t *idx)
{
    size_t n = 0;
    for (; t[n].key; n++)
        t[n].len = strlen(t[n].key);
    qsort(t, n, sizeof(*t), schema_len_cmp);
    size_t i = 0;
    for (size_t len = 0; len <= SCHEMA_LEN_MAX; len++) {
        idx[len] = (uint8_t)i;
        while (i < n && t[i].len == len)
            i++;
    }
}

__attribute__((constructor)) static void schema_init(void)
{
    schema_index(top_schema, by_len[0]);
    schema_index(part_schema, by_len[1]);
}

static enum st schema_type(int in_part, const char *key, size_t len)
{
    if (len >= SCHEMA_LEN_MAX)
        return S_ANY;
    const struct schema *t = in_part ? part_schema : top_schema;
    const uint8_t *idx = by_len[in_part ? 1 : 0];
    for (size_t i = idx[len]; i < idx[len + 1]; i++)
        if (memcmp(t[i].key, key, len) == 0)
            return t[i].type;
    return S_ANY;
}

static const char *const types[] = { "message", "event", "status", "typing", NULL };
static const char *const kinds[] = { "text", "image", "voice", "video", "file",
                                     "location", "link", "event", NULL };
static const char *const formats[] = { "plain", "markdown", "html", NULL };
static const char *const states[] = { "accepted", "sent", "delivered", "read", "failed",
                                      NULL };

static int in_list(const char *const *l, const char *s, size_t n)
{
    for (; *l; l++)
        if (strlen(*l) == n && memcmp(*l, s, n) == 0)
            return 1;
    return 0;
}

/* "x-" names are extensions: kept and passed on, never rejected. */
static int is_name(const char *s, size_t n);

static int is_ext_name(const char *s, size_t n)
{
    return n > 2 && s[0] == 'x' && s[1] == '-' && is_name(s, n);
}

/* ------------------------------------------------------------------------ */
/* Encoding */

/* msgpack-c writes an envelope in many pieces of a few bytes: copy them
 * straight in while there is room (the buffer stays NUL-terminated). Used
 * by the JSON -> msgpack path; the envelope encoder below writes directly. */
static int buf_write(void *data, const char *p, size_t len)
{
    struct kfg_buf *b = data;
    if (b->len + len < b->cap) {
        memcpy(b->p + b->len, p, len);
        b->len += len;
        b->p[b->len] = '\0';
        return 0;
    }
    kfg_buf_append(b, p, len);
    return b->oom ? -1 : 0;
}

/* Direct msgpack writers for the envelope encoder: no callback per piece.
 * Each picks the smallest form, exactly as msgpack-c's packer does (the
 * unit tests re-encode msgpack-c's bytes and compare). n bytes of room, or
 * NULL with b->oom set; the caller NUL-terminates once at the end. */
static inline uint8_t *mp_room(struct kfg_buf *b, size_t n)
{
    if (b->len + n >= b->cap && kfg_buf_reserve(b, n) != 0)
        return NULL;
    uint8_t *p = (uint8_t *)b->p + b->len;
    b->len += n;
    return p;
}

static int mp_byte(struct kfg_buf *b, uint8_t c)
{
    uint8_t *p = mp_room(b, 1);
    if (!p)
        return -1;
    p[0] = c;
    return 0;
}

/* tag, then the low n bytes of v, big-endian: every fixed-width form. */
static int mp_tagged(struct kfg_buf *b, uint8_t tag, uint64_t v, int n)
{
    uint8_t *p = mp_room(b, 1 + (size_t)n);
    if (!p)
        return -1;
    p[0] = tag;
    for (int i = n; i >= 1; i--, v >>= 8)
        p[i] = (uint8_t)v;
    return 0;
}

/* A header with a fixed form for n <= fix_max, else 8/16/32-bit counts
 * (c8 0 when the type has no 8-bit form). */
static int mp_hdr(struct kfg_buf *b, uint8_t fix, size_t fix_max, uint8_t c8, uint8_t c16,
                  uint8_t c32, size_t n)
{
    if (fix && n <= fix_max)
        return mp_byte(b, (uint8_t)(fix | n));
    if (c8 && n <= 0xff)
        return mp_tagged(b, c8, n, 1);
    if (n <= 0xffff)
        return mp_tagged(b, c16, n, 2);
    return n <= 0xffffffffu ? mp_tagged(b, c32, n, 4) : -1;
}

static int mp_map(struct kfg_buf *b, size_t n) { return mp_hdr(b, 0x80, 15, 0, 0xde, 0xdf, n); }
static int mp_array(struct kfg_buf *b, size_t n) { return mp_hdr(b, 0x90, 15, 0, 0xdc, 0xdd, n); }

static int mp_bytes(struct kfg_buf *b, const void *v, size_t n)
{
    uint8_t *p = n ? mp_room(b, n) : NULL;
    if (n && !p)
        return -1;
    if (n)
        memcpy(p, v, n);
    return 0;
}

static int mp_str(struct kfg_buf *b, const char *v, size_t n)
{
    return mp_hdr(b, 0xa0, 31, 0xd9, 0xda, 0xdb, n) || mp_bytes(b, v, n) ? -1 : 0;
}

static int mp_bin(struct kfg_buf *b, const char *v, size_t n)
{
    return mp_hdr(b, 0, 0, 0xc4, 0xc5, 0xc6, n) || mp_bytes(b, v, n) ? -1 : 0;
}

static int mp_uint(struct kfg_buf *b, uint64_t u)
{
    if (u < 0x80)
        return mp_byte(b, (uint8_t)u);
    if (u <= 0xff)
        return mp_tagged(b, 0xcc, u, 1);
    if (u <= 0xffff)
        return mp_tagged(b, 0xcd, u, 2);
    return u <= 0xffffffffu ? mp_tagged(b, 0xce, u, 4) : mp_tagged(b, 0xcf, u, 8);
}

static int mp_int(struct kfg_buf *b, int64_t i)
{
    if (i >= 0)
        return mp_uint(b, (uint64_t)i);
    if (i >= -32)
        return mp_byte(b, (uint8_t)(int8_t)i);
    if (i >= INT8_MIN)
        return mp_tagged(b, 0xd0, (uint64_t)i, 1);
    if (i >= INT16_MIN)
        return mp_tagged(b, 0xd1, (uint64_t)i, 2);
    return mp_tagged(b, i >= INT32_MIN ? 0xd2 : 0xd3, (uint64_t)i, i >= INT32_MIN ? 4 : 8);
}

static int mp_double(struct kfg_buf *b, double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    return mp_tagged(b, 0xcb, u, 8);
}

static int mp_float(struct kfg_buf *b, float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return mp_tagged(b, 0xca, u, 4);
}

struct ent {
    const char *rest;               /* the key from the current level on */
    const struct kfg_field *f;      /* NULL: the parts array */
    uint32_t sl;                    /* length of rest's first segment */
    char c0;                        /* rest[0] */
    char dot;                       /* rest goes on past that segment */
};

/* Keys are short: a plain loop beats a strcspn call on this hot path. */
static size_t seg_len(const char *s)
{
    const char *p = s;
    while (*p && *p != '.')
        p++;
    return (size_t)(p - s);
}

/* Strict decimal integer, optional '-' (signed) ; 1 on success. */
static int parse_i64(const char *s, size_t n, int64_t *out)
{
    if (!n || n > 20)
        return 0;
    char b[24];
    memcpy(b, s, n);
    b[n] = '\0';
    if (!((b[0] >= '0' && b[0] <= '9') || (b[0] == '-' && n > 1)))
        return 0;
    char *end;
    errno = 0;
    long long v = strtoll(b, &end, 10);
    if (errno || *end)
        return 0;
    *out = v;
    return 1;
}

static int parse_u64(const char *s, size_t n, uint64_t *out)
{
    if (!n || n > 20 || s[0] < '0' || s[0] > '9')
        return 0;
    char b[24];
    memcpy(b, s, n);
    b[n] = '\0';
    char *end;
    errno = 0;
    unsigned long long v = strtoull(b, &end, 10);
    if (errno || *end)
        return 0;
    *out = v;
    return 1;
}

static int parse_num(const char *s, size_t n, double *out)
{
    if (!n || n > 64)
        return 0;
    char b[72];
    memcpy(b, s, n);
    b[n] = '\0';
    if (!((b[0] >= '0' && b[0] <= '9') || b[0] == '-' || b[0] == '.'))
        return 0;
    char *end;
    errno = 0;
    double v = strtod(b, &end);
    if (errno || *end || !isfinite(v))
        return 0;
    *out = v;
    return 1;
}

static int pack_field(struct kfg_buf *pk, int in_part, const struct kfg_field *f)
{
    switch (f->type) {
    case KFG_F_STR: {
        enum st want = schema_type(in_part, f->key, strlen(f->key));
        int64_t i;
        uint64_t u;
        double d;
        if (want == S_UINT && parse_u64(f->val, f->len, &u))
            return mp_uint(pk, u);
        if (want == S_INT && parse_i64(f->val, f->len, &i))
            return mp_int(pk, i);
        if (want == S_NUM && parse_num(f->val, f->len, &d))
            return mp_double(pk, d);
        if (want == S_BOOL && f->len == 4 && memcmp(f->val, "true", 4) == 0)
            return mp_byte(pk, 0xc3);
        if (want == S_BOOL && f->len == 5 && memcmp(f->val, "false", 5) == 0)
            return mp_byte(pk, 0xc2);
        if (want == S_BIN)
            return mp_bin(pk, f->val, f->len);
        return mp_str(pk, f->val, f->len);
    }
    case KFG_F_INT:
        return mp_int(pk, f->ival);
    case KFG_F_UINT:
        return mp_uint(pk, (uint64_t)f->ival);
    case KFG_F_BOOL:
        return mp_byte(pk, f->ival ? 0xc3 : 0xc2);
    case KFG_F_FLOAT:
        return f->f32 ? mp_float(pk, (float)f->dval) : mp_double(pk, f->dval);
    case KFG_F_RAW:
        return mp_bytes(pk, f->val, f->len);
    }
    return mp_byte(pk, 0xc0);
}

static int pack_parts(struct kfg_buf *pk, const struct kfg_msg *m);

/* Emits ents[0..n) as one map: entries whose next segment is the same form
 * one nested map, at the place of the first of them. */
static int pack_level(struct kfg_buf *pk, struct ent *ents, size_t n, int in_part,
                      const struct kfg_msg *m)
{
    uint64_t dotted[4] = { 0 };     /* first bytes of the dotted keys */
    size_t ndot = 0;
    for (size_t i = 0; i < n; i++) {
        size_t sl = seg_len(ents[i].rest);
        unsigned char c = (unsigned char)ents[i].rest[0];
        ents[i].sl = (uint32_t)sl;
        ents[i].c0 = (char)c;
        ents[i].dot = ents[i].rest[sl] == '.';
        if (ents[i].dot) {
            dotted[c >> 6] |= (uint64_t)1 << (c & 63);
            ndot++;
        }
    }
    /* Group entries with the same first segment, at the place of the first
     * of them. Two leaves never share one (keys are unique), so only an
     * entry whose first byte starts some dotted key can have company, and
     * pairs are compared by length and first byte before their bytes. */
    size_t groups = ndot ? 0 : n;
    for (size_t i = 0; ndot && i < n;) {
        size_t k = i + 1;
        const struct ent *a = &ents[i];
        unsigned char c = (unsigned char)a->c0;
        if (dotted[c >> 6] >> (c & 63) & 1) {
            for (size_t j = i + 1; j < n; j++) {
                const struct ent *b = &ents[j];
                if ((!a->dot && !b->dot) || b->sl != a->sl || b->c0 != a->c0 ||
                    memcmp(a->rest, b->rest, a->sl) != 0)
                    continue;
                struct ent e = ents[j];
                memmove(&ents[k + 1], &ents[k], (j - k) * sizeof(*ents));
                ents[k++] = e;
            }
        }
        groups++;
        i = k;
    }
    int r = mp_map(pk, groups);
    for (size_t i = 0; i < n && !r;) {
        size_t sl = ents[i].sl, k = i + 1;
        while (k < n && ents[k].sl == sl && ents[k].c0 == ents[i].c0 &&
               (ents[k].dot || ents[i].dot) && !memcmp(ents[k].rest, ents[i].rest, sl))
            k++;
        r = mp_str(pk, ents[i].rest, sl);
        /* A leaf next to deeper keys cannot happen through msg.c (a key is
         * never both a value and a map); if it does, the map wins. */
        size_t deep = 0;
        for (size_t j = i; j < k; j++)
            if (ents[j].dot)
                ents[i + deep++] = (struct ent){ ents[j].rest + sl + 1, ents[j].f, 0, 0, 0 };
        if (r) {
        } else if (deep) {
            r = pack_level(pk, &ents[i], deep, in_part, m);
        } else if (!ents[i].f) {
            r = pack_parts(pk, m);
        } else {
            r = pack_field(pk, in_part, ents[i].f);
        }
        i = k;
    }
    return r;
}

/* The most synthetic top-level fields kfg_env_encode passes (v, id, seq,
 * tenant, channel, instance, dir, type, ts.accepted), with room to spare. */
#define SYN_MAX 12

/* nsyn <= SYN_MAX. */
static int pack_fields(struct kfg_buf *pk, const struct kfg_field *syn, size_t nsyn,
                       const struct kfg_field *fs, size_t nf, int with_parts,
                       int in_part, const struct kfg_msg *m)
{
    size_t n = nsyn + nf + (with_parts ? 1 : 0);
    struct ent stack[48];
    struct ent *ents = n <= 48 ? stack : malloc(n * sizeof(*ents));
    if (!ents)
        return -1;
    size_t k = 0;
    for (size_t i = 0; i < nsyn; i++)
        ents[k++] = (struct ent){ syn[i].key, &syn[i], 0, 0, 0 };
    /* Only a key that starts like one of syn's, and is as long, can be
     * shadowed by it (most keys start like one: channel_*, sender, ts.*). */
    uint64_t first[4] = { 0 };
    size_t synlen[SYN_MAX];
    for (size_t i = 0; i < nsyn; i++) {
        unsigned char c = (unsigned char)syn[i].key[0];
        first[c >> 6] |= (uint64_t)1 << (c & 63);
        synlen[i] = strlen(syn[i].key);
    }
    for (size_t i = 0; i < nf; i++) {
        int shadowed = 0;
        unsigned char c = (unsigned char)fs[i].key[0];
        if (first[c >> 6] >> (c & 63) & 1) {
            size_t kl = strlen(fs[i].key);
            for (size_t j = 0; j < nsyn && !shadowed; j++)
                shadowed = synlen[j] == kl && syn[j].key[0] == (char)c &&
                           memcmp(syn[j].key, fs[i].key, kl) == 0;
        }
        if (!shadowed)
            ents[k++] = (struct ent){ fs[i].key, &fs[i], 0, 0, 0 };
    }
    if (with_parts)
        ents[k++] = (struct ent){ "parts", NULL, 0, 0, 0 };
    int r = pack_level(pk, ents, k, in_part, m);
    if (ents != stack)
        free(ents);
    return r;
}

static int pack_parts(struct kfg_buf *pk, const struct kfg_msg *m)
{
    int r = mp_array(pk, m->nparts);
    for (size_t i = 0; i < m->nparts && !r; i++) {
        const struct kfg_part *p = &m->parts[i];
        struct kfg_field kind = { .key = "kind", .type = KFG_F_STR, .val = p->kind,
                                  .len = strlen(p->kind) };
        r = pack_fields(pk, &kind, 1, p->fields, p->nfields, 0, 1, m);
    }
    return r;
}

static struct kfg_field syn_str(const char *key, const char *v)
{
    return (struct kfg_field){ .key = (char *)key, .type = KFG_F_STR, .val = (char *)v,
                               .len = strlen(v) };
}

int kfg_env_encode(const struct kfg_msg *m, struct kfg_buf *out)
{
    if (!m || !out)
        return KFG_EINVAL;
    struct kfg_field syn[SYN_MAX];
    size_t n = 0;
    syn[n++] = (struct kfg_field){ .key = "v", .type = KFG_F_UINT, .ival = KFG_ENV_VERSION };
    if (m->id[0])
        syn[n++] = syn_str("id", m->id);
    if (m->id[0] || m->seq)
        syn[n++] = (struct kfg_field){ .key = "seq", .type = KFG_F_UINT,
                                       .ival = (int64_t)m->seq };
    /* The struct's pointer, else a field of that name (a decoded
     * envelope), always at the same place so a canonical envelope decodes
     * and encodes to the same bytes. */
    const char *const names[] = { "tenant", "channel", "instance", "dir" };
    const char *const vals[] = { m->tenant, m->channel, m->instance, NULL };
    for (int i = 0; i < 4; i++) {
        const struct kfg_field *f;
        if (vals[i])
            syn[n++] = syn_str(names[i], vals[i]);
        else if ((f = kfg_msg_field(m, names[i])))
            syn[n++] = *f;
        else if (i == 3)
            syn[n++] = syn_str("dir", KFG_ENV_DIR_IN);
    }
    syn[n++] = syn_str("type", m->type);
    if (m->accepted_ms)
        syn[n++] = (struct kfg_field){ .key = "ts.accepted", .type = KFG_F_INT,
                                       .ival = m->accepted_ms };
    size_t start = out->len;
    int r = pack_fields(out, syn, n, m->fields, m->nfields, m->nparts > 0, 0, m);
    if (!r && !out->oom)
        out->p[out->len] = '\0';       /* mp_room leaves room for it */
    if (r || out->oom) {
        out->oom = 1;
        if (out->len >= start)
            out->len = start;
        return KFG_ENOMEM;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Reading msgpack */

enum mpt { MP_NIL, MP_BOOL, MP_UINT, MP_INT, MP_FLOAT, MP_STR, MP_BIN, MP_ARR, MP_MAP,
           MP_EXT };

static const char *const mpt_name[] = {
    [MP_NIL] = "nil", [MP_BOOL] = "boolean", [MP_UINT] = "integer", [MP_INT] = "integer",
    [MP_FLOAT] = "float", [MP_STR] = "string", [MP_BIN] = "binary", [MP_ARR] = "array",
    [MP_MAP] = "map", [MP_EXT] = "extension",
};

struct mpv {
    enum mpt t;
    const uint8_t *start;   /* first byte of the value's header */
    uint64_t u;             /* UINT, BOOL */
    int64_t i;              /* INT (negative) */
    double d;
    int f32;
    const char *p;          /* STR, BIN, EXT payload */
    uint32_t n;             /* STR/BIN/EXT length, ARR/MAP count */
    int8_t ext;
};

struct rd {
    const uint8_t *p, *end, *base;
};

static uint64_t be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

/* One header (and the payload of str/bin/ext). 0, -1 truncated, -2 the
 * never-used byte 0xc1. */
static int rd_head(struct rd *r, struct mpv *v)
{
    if (r->p >= r->end)
        return -1;
    size_t left = (size_t)(r->end - r->p);
    const uint8_t *p = r->p;
    uint8_t b = *p;
    size_t hl = 1, plen = 0;
    memset(v, 0, sizeof(*v));
    v->start = p;
    if (b <= 0x7f) {
        v->t = MP_UINT;
        v->u = b;
    } else if (b <= 0x8f) {
        v->t = MP_MAP;
        v->n = b & 0x0f;
    } else if (b <= 0x9f) {
        v->t = MP_ARR;
        v->n = b & 0x0f;
    } else if (b <= 0xbf) {
        v->t = MP_STR;
        plen = b & 0x1f;
    } else if (b >= 0xe0) {
        v->t = MP_INT;
        v->i = (int8_t)b;
    } else {
        static const uint8_t extra[32] = {
            [0x00] = 0, [0x02] = 0, [0x03] = 0,                 /* nil false true */
            [0x04] = 1, [0x05] = 2, [0x06] = 4,                 /* bin */
            [0x07] = 2, [0x08] = 3, [0x09] = 5,                 /* ext8/16/32 */
            [0x0a] = 4, [0x0b] = 8,                             /* float */
            [0x0c] = 1, [0x0d] = 2, [0x0e] = 4, [0x0f] = 8,     /* uint */
            [0x10] = 1, [0x11] = 2, [0x12] = 4, [0x13] = 8,     /* int */
            [0x14] = 1, [0x15] = 1, [0x16] = 1, [0x17] = 1, [0x18] = 1, /* fixext */
            [0x19] = 1, [0x1a] = 2, [0x1b] = 4,                 /* str */
            [0x1c] = 2, [0x1d] = 4, [0x1e] = 2, [0x1f] = 4,     /* array, map */
        };
        if (b == 0xc1)
            return -2;
        hl = 1 + extra[b - 0xc0];
        if (left < hl)
            return -1;
        const uint8_t *q = p + 1;
        switch (b) {
        case 0xc0: v->t = MP_NIL; break;
        case 0xc2: v->t = MP_BOOL; v->u = 0; break;
        case 0xc3: v->t = MP_BOOL; v->u = 1; break;
        case 0xc4: case 0xc5: case 0xc6:
            v->t = MP_BIN;
            plen = be(q, (int)(hl - 1));
            break;
        case 0xc7: case 0xc8: case 0xc9:
            v->t = MP_EXT;
            plen = be(q, (int)(hl - 2));
            v->ext = (int8_t)q[hl - 2];
            break;
        case 0xca: {
            uint32_t x = (uint32_t)be(q, 4);
            float f;
            memcpy(&f, &x, 4);
            v->t = MP_FLOAT;
            v->d = f;
            v->f32 = 1;
            break;
        }
        case 0xcb: {
            uint64_t x = be(q, 8);
            memcpy(&v->d, &x, 8);
            v->t = MP_FLOAT;
            break;
        }
        case 0xcc: case 0xcd: case 0xce: case 0xcf:
            v->t = MP_UINT;
            v->u = be(q, (int)(hl - 1));
            break;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
            int nb = (int)(hl - 1);
            uint64_t x = be(q, nb);
            int64_t s;
            if (nb == 8) {
                memcpy(&s, &x, 8);
            } else {
                uint64_t sign = 1ull << (nb * 8 - 1);
                s = (int64_t)(x ^ sign) - (int64_t)sign;
            }
            if (s >= 0) {
                v->t = MP_UINT;
                v->u = (uint64_t)s;
            } else {
                v->t = MP_INT;
                v->i = s;
            }
            break;
        }
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
            v->t = MP_EXT;
            plen = 1u << (b - 0xd4);
            v->ext = (int8_t)q[0];
            break;
        case 0xd9: case 0xda: case 0xdb:
            v->t = MP_STR;
            plen = be(q, (int)(hl - 1));
            break;
        case 0xdc: case 0xdd:
            v->t = MP_ARR;
            v->n = (uint32_t)be(q, (int)(hl - 1));
            break;
        case 0xde: case 0xdf:
            v->t = MP_MAP;
            v->n = (uint32_t)be(q, (int)(hl - 1));
            break;
        }
    }
    if (left < hl || left - hl < plen)
        return -1;
    if (v->t == MP_STR || v->t == MP_BIN || v->t == MP_EXT) {
        v->p = (const char *)p + hl;
        v->n = (uint32_t)plen;
    }
    /* Every element takes at least one byte: a count beyond what is left
     * is a truncation, found before anything is sized by it. */
    left -= hl + plen;
    if ((v->t == MP_ARR && v->n > left) || (v->t == MP_MAP && (uint64_t)v->n * 2 > left))
        return -1;
    r->p = p + hl + plen;
    return 0;
}

static int utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *e = p + n;
    while (p < e) {
        /* Eight ASCII bytes at a time: most text is all ASCII. */
        while (e - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            if (w & 0x8080808080808080ull)
                break;
            p += 8;
        }
        if (p == e)
            break;
        unsigned c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        size_t k;
        unsigned min, cp;
        if ((c & 0xe0) == 0xc0) {
            k = 1, min = 0x80, cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, min = 0x800, cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, min = 0x10000, cp = c & 0x07;
        } else {
            return 0;
        }
        if ((size_t)(e - p) <= k)
            return 0;
        for (size_t i = 1; i <= k; i++) {
            if ((p[i] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (p[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        p += k + 1;
    }
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Decoding */

struct dec {
    struct rd r;
    unsigned flags;
    struct kfg_msg *m;
    char *reason;
    size_t cap;
    int err;                        /* KFG_EINVAL / KFG_ENOMEM once failed */
    char path[320];                 /* for reasons: parts[1].value.x */
    size_t plen;
    char key[KFG_MSG_KEY_MAX + 1];  /* the dotted key within top or part */
    size_t klen;
    int in_part;
    long part;
    int have_v, have_type;
};

__attribute__((format(printf, 2, 3)))
static int fail(struct dec *d, const char *fmt, ...)
{
    if (d->err)
        return -1;
    d->err = KFG_EINVAL;
    if (d->reason && d->cap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->reason, d->cap, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static int oom(struct dec *d)
{
    if (!d->err) {
        d->err = KFG_ENOMEM;
        if (d->reason && d->cap)
            snprintf(d->reason, d->cap, "out of memory");
    }
    return -1;
}

static const char *pth(const struct dec *d)
{
    return d->plen ? d->path : "envelope";
}

static int read_fail(struct dec *d, int rc)
{
    size_t off = (size_t)(d->r.p - d->r.base);
    if (rc == -2)
        return fail(d, "not msgpack: invalid byte 0xc1 at offset %zu", off);
    return fail(d, "not msgpack: truncated value at '%s' (offset %zu)", pth(d), off);
}

/* Path bookkeeping: push returns the old lengths to pop back to. */
struct mark {
    size_t plen, klen;
};

/* Appends to the path, truncated (as snprintf would) and NUL-terminated. */
static void path_add(struct dec *d, const char *s, size_t n)
{
    size_t room = sizeof(d->path) - 1 - d->plen;
    if (n > room)
        n = room;
    memcpy(d->path + d->plen, s, n);
    d->plen += n;
    d->path[d->plen] = '\0';
}

static struct mark push_key(struct dec *d, const char *k, size_t n)
{
    struct mark mk = { d->plen, d->klen };
    /* The path is only read when a reason is written, but it is built for
     * every key: plain copies, no printf, on this hot path. */
    if (d->plen)
        path_add(d, ".", 1);
    path_add(d, k, n);
    if (d->klen + (d->klen ? 1 : 0) + n <= KFG_MSG_KEY_MAX) {
        if (d->klen)
            d->key[d->klen++] = '.';
        memcpy(d->key + d->klen, k, n);
        d->klen += n;
        d->key[d->klen] = '\0';
    } else {
        d->klen = KFG_MSG_KEY_MAX + 1;      /* too long: caught by the caller */
    }
    return mk;
}

static struct mark push_index(struct dec *d, size_t i)
{
    struct mark mk = { d->plen, d->klen };
    char num[24], *e = num + sizeof num, *q = e;
    *--q = ']';
    do
        *--q = (char)('0' + i % 10);
    while ((i /= 10) && q > num + 1);
    *--q = '[';
    path_add(d, q, (size_t)(e - q));
    return mk;
}

static void pop(struct dec *d, struct mark mk)
{
    d->plen = mk.plen;
    d->path[d->plen] = '\0';
    d->klen = mk.klen;
    if (d->klen <= KFG_MSG_KEY_MAX)
        d->key[d->klen] = '\0';
}

static const char *got(const struct mpv *v)
{
    if (v->t == MP_INT)
        return "negative integer";
    return mpt_name[v->t];
}

static int type_ok(struct dec *d, enum st want, const struct mpv *v)
{
    static const char *const wname[] = {
        [S_STR] = "string", [S_UINT] = "unsigned integer", [S_INT] = "integer",
        [S_NUM] = "number", [S_BOOL] = "boolean", [S_BIN] = "binary", [S_MAP] = "map",
        [S_ARRAY] = "array",
    };
    int ok;
    switch (want) {
    case S_ANY: ok = 1; break;
    case S_STR: ok = v->t == MP_STR; break;
    case S_UINT: ok = v->t == MP_UINT; break;
    case S_INT: ok = v->t == MP_UINT ? v->u <= INT64_MAX : v->t == MP_INT; break;
    case S_NUM: ok = v->t == MP_FLOAT || v->t == MP_UINT || v->t == MP_INT; break;
    case S_BOOL: ok = v->t == MP_BOOL; break;
    case S_BIN: ok = v->t == MP_BIN; break;
    case S_MAP: ok = v->t == MP_MAP; break;
    case S_ARRAY: ok = v->t == MP_ARR; break;
    default: ok = 0;
    }
    if (!ok)
        return fail(d, "field '%s': expected %s, got %s", pth(d), wname[want], got(v));
    return 0;
}

struct keyref {
    const char *p;
    uint32_t n;
};

static int keycmp(const void *a, const void *b)
{
    const struct keyref *x = a, *y = b;
    uint32_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

/* Reads a map key (the reader is at it) and checks it. */
static int read_key(struct dec *d, uint32_t idx, struct mpv *k)
{
    int rc = rd_head(&d->r, k);
    if (rc)
        return read_fail(d, rc);
    if (k->t != MP_STR)
        return fail(d, "field '%s': map key #%u is %s, not a string", pth(d), idx + 1,
                    mpt_name[k->t]);
    if (!k->n)
        return fail(d, "field '%s': map key #%u is empty", pth(d), idx + 1);
    /* One pass over the usual all-ASCII key; anything else takes the long
     * way, which names the precise fault. */
    const unsigned char *p = (const unsigned char *)k->p;
    uint32_t i = 0;
    while (i < k->n && p[i] < 0x80 && p[i] != '.' && p[i] != '\0')
        i++;
    if (i == k->n)
        return 0;
    if (!utf8_valid(k->p, k->n))
        return fail(d, "field '%s': map key #%u is not valid UTF-8", pth(d), idx + 1);
    if (memchr(k->p, '.', k->n))
        return fail(d, "field '%s': key '%.*s' contains '.'", pth(d), (int)k->n, k->p);
    if (memchr(k->p, '\0', k->n))
        return fail(d, "field '%s': map key #%u contains NUL", pth(d), idx + 1);
    return 0;
}

static int check_dups(struct dec *d, struct keyref *keys, uint32_t n)
{
    if (n < 2)
        return 0;
    if (n <= 16) {
        for (uint32_t i = 0; i < n; i++)
            for (uint32_t j = i + 1; j < n; j++)
                if (keys[i].n == keys[j].n && keys[i].p[0] == keys[j].p[0] &&
                    !memcmp(keys[i].p, keys[j].p, keys[i].n))
                    return fail(d, "field '%s': duplicate key '%.*s'", pth(d),
                                (int)keys[i].n, keys[i].p);
        return 0;
    }
    qsort(keys, n, sizeof(*keys), keycmp);
    for (uint32_t i = 1; i < n; i++)
        if (!keycmp(&keys[i - 1], &keys[i]))
            return fail(d, "field '%s': duplicate key '%.*s'", pth(d), (int)keys[i].n,
                        keys[i].p);
    return 0;
}

/* The keys of one map, gathered while it is walked and checked for
 * duplicates at its end (the map fails as a whole, so the order of the
 * checks changes nothing but which of two faults is named). */
struct keyset {
    struct keyref *k;
    struct keyref stack[24];
};

static int keyset_init(struct dec *d, struct keyset *ks, uint32_t n)
{
    ks->k = n <= 24 ? ks->stack : malloc(n * sizeof(*ks->k));
    return ks->k ? 0 : oom(d);
}

static int keyset_done(struct dec *d, struct keyset *ks, uint32_t n, int r)
{
    if (!r)
        r = check_dups(d, ks->k, n);
    if (ks->k != ks->stack)
        free(ks->k);
    return r;
}

/* Walks one value whose header is in v (payload consumed), checking
 * strings, keys and depth; the value is stored elsewhere (raw). */
static int skip_value(struct dec *d, const struct mpv *v, int depth)
{
    if ((v->t == MP_ARR || v->t == MP_MAP) && depth > KFG_ENV_MAX_DEPTH)
        return fail(d, "field '%s': nested deeper than %d levels", pth(d), KFG_ENV_MAX_DEPTH);
    if (v->t == MP_STR && !utf8_valid(v->p, v->n))
        return fail(d, "field '%s': invalid UTF-8", pth(d));
    if (v->t == MP_ARR) {
        for (uint32_t i = 0; i < v->n; i++) {
            struct mark mk = push_index(d, i);
            struct mpv e;
            int rc = rd_head(&d->r, &e);
            if (rc || skip_value(d, &e, depth + 1)) {
                if (rc)
                    read_fail(d, rc);
                return -1;
            }
            pop(d, mk);
        }
    } else if (v->t == MP_MAP) {
        struct keyset ks;
        if (keyset_init(d, &ks, v->n))
            return -1;
        int r = 0;
        for (uint32_t i = 0; i < v->n && !r; i++) {
            struct mpv k, e;
            if ((r = read_key(d, i, &k)))
                break;
            ks.k[i] = (struct keyref){ k.p, k.n };
            struct mark mk = push_key(d, k.p, k.n);
            int rc = rd_head(&d->r, &e);
            if (rc || skip_value(d, &e, depth + 1)) {
                if (rc)
                    read_fail(d, rc);
                r = -1;
                break;
            }
            pop(d, mk);
        }
        return keyset_done(d, &ks, v->n, r);
    }
    return 0;
}

static int put(struct dec *d, struct kfg_field *f)
{
    if (d->klen > KFG_MSG_KEY_MAX)
        return fail(d, "field '%s': key path longer than %d bytes", pth(d), KFG_MSG_KEY_MAX);
    f->key = d->key;
    int r = kfg_msg_put(d->m, d->in_part ? d->part : -1, f);
    if (r == KFG_ENOMEM)
        return oom(d);
    if (r != KFG_OK)
        return fail(d, "field '%s': key path too deep or conflicting", pth(d));
    return 0;
}

static int walk_map(struct dec *d, uint32_t n, int depth);

/* Stores (or descends into) one value at the current key. */
static int walk_value(struct dec *d, const struct mpv *v, int depth)
{
    if ((v->t == MP_ARR || v->t == MP_MAP) && depth > KFG_ENV_MAX_DEPTH)
        return fail(d, "field '%s': nested deeper than %d levels", pth(d), KFG_ENV_MAX_DEPTH);
    enum st want = schema_type(d->in_part, d->key, d->klen <= KFG_MSG_KEY_MAX ? d->klen : 0);
    if (d->in_part && d->klen == 5 && memcmp(d->key, "value", 5) == 0)
        want = S_ANY;
    if (type_ok(d, want, v))
        return -1;
    struct kfg_field f = { 0 };
    switch (v->t) {
    case MP_STR:
        if (!utf8_valid(v->p, v->n))
            return fail(d, "field '%s': invalid UTF-8", pth(d));
        f.type = KFG_F_STR;
        f.val = (char *)v->p;
        f.len = v->n;
        return put(d, &f);
    case MP_UINT:
        f.type = want == S_INT || want == S_NUM ? KFG_F_INT : KFG_F_UINT;
        if (v->u > INT64_MAX)
            f.type = KFG_F_UINT;
        f.ival = (int64_t)v->u;
        return put(d, &f);
    case MP_INT:
        f.type = KFG_F_INT;
        f.ival = v->i;
        return put(d, &f);
    case MP_BOOL:
        f.type = KFG_F_BOOL;
        f.ival = (int64_t)v->u;
        return put(d, &f);
    case MP_FLOAT:
        f.type = KFG_F_FLOAT;
        f.dval = v->d;
        f.f32 = (uint8_t)v->f32;
        return put(d, &f);
    case MP_MAP:
        if (v->n == 0) {
            if (want == S_MAP)
                return 0;           /* an empty known map says nothing */
            break;
        }
        return walk_map(d, v->n, depth);
    default:
        break;
    }
    /* nil, bin, ext, arrays, empty unknown maps: checked, kept verbatim. */
    if (skip_value(d, v, depth))
        return -1;
    f.type = KFG_F_RAW;
    f.val = (char *)v->start;
    f.len = (size_t)(d->r.p - v->start);
    return put(d, &f);
}

static int decode_parts(struct dec *d, const struct mpv *arr, int depth);

static int is_uuid(const char *s, size_t n)
{
    if (n != 36)
        return 0;
    for (size_t i = 0; i < 36; i++) {
        char c = s[i];
        if (i == 8 || i == 13 || i == 18 || i == 23 ? c != '-'
                                                     : !((c >= '0' && c <= '9') ||
                                                         (c >= 'a' && c <= 'f')))
            return 0;
    }
    return 1;
}

static int kmatch(const struct mpv *k, const char *s, uint32_t n)
{
    return k->n == n && !memcmp(k->p, s, n);
}

/* The reader is at the first key of a map of n entries; ks gathers them. */
static int walk_entries(struct dec *d, uint32_t n, int depth, struct keyset *ks)
{
    for (uint32_t i = 0; i < n; i++) {
        struct mpv k, v;
        if (read_key(d, i, &k))
            return -1;
        ks->k[i] = (struct keyref){ k.p, k.n };
        struct mark mk = push_key(d, k.p, k.n);
        int rc = rd_head(&d->r, &v);
        if (rc)
            return read_fail(d, rc);
        if (!d->in_part && mk.klen == 0 && k.n <= 5) {
            /* Top-level keys the struct holds, or that never come from the
             * wire on the outbound path. */
            if (kmatch(&k, "parts", 5)) {
                if (type_ok(d, S_ARRAY, &v) || decode_parts(d, &v, depth + 1))
                    return -1;
                pop(d, mk);
                continue;
            }
            if (kmatch(&k, "v", 1)) {
                if (type_ok(d, S_UINT, &v))
                    return -1;
                if (v.u != KFG_ENV_VERSION)
                    return fail(d, "field 'v': unsupported version %" PRIu64
                                   " (this gateway speaks %d)", v.u, KFG_ENV_VERSION);
                d->have_v = 1;
                pop(d, mk);
                continue;
            }
            if (kmatch(&k, "type", 4)) {
                if (type_ok(d, S_STR, &v))
                    return -1;
                if (!utf8_valid(v.p, v.n))
                    return fail(d, "field 'type': invalid UTF-8");
                if (!in_list(types, v.p, v.n) && !is_ext_name(v.p, v.n))
                    return fail(d, "unknown type '%.*s'", (int)(v.n > 64 ? 64 : v.n), v.p);
                if (kfg_msg_set_type(d->m, v.p, v.n) != KFG_OK)
                    return oom(d);
                d->have_type = 1;
                pop(d, mk);
                continue;
            }
            if (kmatch(&k, "id", 2)) {
                if (type_ok(d, S_STR, &v))
                    return -1;
                if (!(d->flags & KFG_ENV_OUTBOUND)) {
                    if (!is_uuid(v.p, v.n))
                        return fail(d, "field 'id': expected UUID text "
                                       "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, lowercase hex)");
                    memcpy(d->m->id, v.p, 36);
                    d->m->id[36] = '\0';
                }
                pop(d, mk);
                continue;
            }
            if (kmatch(&k, "seq", 3)) {
                if (type_ok(d, S_UINT, &v))
                    return -1;
                if (!(d->flags & KFG_ENV_OUTBOUND))
                    d->m->seq = v.u;
                pop(d, mk);
                continue;
            }
        }
        if (!d->in_part && d->klen == 11 && !memcmp(d->key, "ts.accepted", 11)) {
            if (type_ok(d, S_INT, &v))
                return -1;
            if (!(d->flags & KFG_ENV_OUTBOUND))
                d->m->accepted_ms = v.t == MP_INT ? v.i : (int64_t)v.u;
            pop(d, mk);
            continue;
        }
        if (walk_value(d, &v, depth + 1))
            return -1;
        pop(d, mk);
    }
    return 0;
}

static int walk_map(struct dec *d, uint32_t n, int depth)
{
    struct keyset ks;
    if (keyset_init(d, &ks, n))
        return -1;
    return keyset_done(d, &ks, n, walk_entries(d, n, depth, &ks));
}

static int decode_parts(struct dec *d, const struct mpv *arr, int depth)
{
    if (arr->n > KFG_ENV_MAX_PARTS)
        return fail(d, "field 'parts': %u parts, at most %d", arr->n, KFG_ENV_MAX_PARTS);
    if (depth > KFG_ENV_MAX_DEPTH)
        return fail(d, "field 'parts': nested deeper than %d levels", KFG_ENV_MAX_DEPTH);
    for (uint32_t i = 0; i < arr->n; i++) {
        struct mark mk = push_index(d, i);
        struct mpv pm;
        int rc = rd_head(&d->r, &pm);
        if (rc)
            return read_fail(d, rc);
        if (pm.t != MP_MAP)
            return fail(d, "field '%s': expected map, got %s", pth(d), got(&pm));
        /* First find the kind. */
        struct rd save = d->r;
        struct mpv kind = { .t = MP_NIL };
        int have_kind = 0;
        for (uint32_t j = 0; j < pm.n && !have_kind; j++) {
            struct mpv k, v;
            if (read_key(d, j, &k))
                return -1;
            rc = rd_head(&d->r, &v);
            if (rc)
                return read_fail(d, rc);
            if (k.n == 4 && !memcmp(k.p, "kind", 4)) {
                kind = v;
                have_kind = 1;
            }
            uint64_t pending = v.t == MP_ARR ? v.n : v.t == MP_MAP ? 2ull * v.n : 0;
            while (pending) {
                struct mpv x;
                rc = rd_head(&d->r, &x);
                if (rc)
                    return read_fail(d, rc);
                pending--;
                pending += x.t == MP_ARR ? x.n : x.t == MP_MAP ? 2ull * x.n : 0;
            }
        }
        if (!have_kind)
            return fail(d, "missing required field '%s.kind'", pth(d));
        struct mark mk2 = push_key(d, "kind", 4);
        if (kind.t != MP_STR)
            return fail(d, "field '%s': expected string, got %s", pth(d), got(&kind));
        if (!utf8_valid(kind.p, kind.n))
            return fail(d, "field '%s': invalid UTF-8", pth(d));
        if (!in_list(kinds, kind.p, kind.n) && !is_ext_name(kind.p, kind.n))
            return fail(d, "field '%s': unknown kind '%.*s'", pth(d),
                        (int)(kind.n > 64 ? 64 : kind.n), kind.p);
        pop(d, mk2);
        char kbuf[72], *kfull = kind.n < sizeof kbuf ? kbuf : malloc(kind.n + 1);
        if (!kfull)
            return oom(d);
        memcpy(kfull, kind.p, kind.n);
        kfull[kind.n] = '\0';
        int pi = kfg_msg_part_add(d->m, kfull);
        if (kfull != kbuf)
            free(kfull);
        if (pi < 0)
            return oom(d);
        d->r = save;
        d->in_part = 1;
        d->part = pi;
        size_t kl = d->klen;
        d->klen = 0;
        d->key[0] = '\0';
        struct keyset ks;
        if (keyset_init(d, &ks, pm.n))
            return -1;
        int r = 0;
        for (uint32_t j = 0; j < pm.n && !r; j++) {
            struct mpv k, v;
            if ((r = read_key(d, j, &k)))
                break;
            ks.k[j] = (struct keyref){ k.p, k.n };
            struct mark m3 = push_key(d, k.p, k.n);
            if ((rc = rd_head(&d->r, &v))) {
                r = read_fail(d, rc);
                break;
            }
            if (!kmatch(&k, "kind", 4) && (r = walk_value(d, &v, depth + 1)))
                break;
            pop(d, m3);
        }
        if (keyset_done(d, &ks, pm.n, r))
            return -1;
        d->in_part = 0;
        d->klen = kl;
        d->key[kl] = '\0';
        pop(d, mk);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Rules after the walk: values, required fields per direction and type. */

static int is_name(const char *s, size_t n)
{
    if (!n || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return 1;
}

static int is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static const struct kfg_field *fget(const struct kfg_msg *m, const char *key)
{
    return kfg_msg_field(m, key);
}

static int has_str(const struct kfg_msg *m, const char *key)
{
    const struct kfg_field *f = fget(m, key);
    return f && f->type == KFG_F_STR && f->len;
}

static int str_is(const struct kfg_field *f, const char *s)
{
    return f && f->type == KFG_F_STR && f->len == strlen(s) && !memcmp(f->val, s, f->len);
}

static int part_rules(struct dec *d, size_t i)
{
    const struct kfg_msg *m = d->m;
    const char *k = m->parts[i].kind;
    const struct kfg_field *f;
#define PF(key) kfg_msg_part_field(m, i, key)
#define NEED(key)                                                                  \
    do {                                                                           \
        if (!PF(key))                                                              \
            return fail(d, "missing required field 'parts[%zu].%s'", i, key);      \
    } while (0)
    if (!strcmp(k, "text")) {
        NEED("text");
        if ((f = PF("format")) && f->type == KFG_F_STR && !in_list(formats, f->val, f->len))
            return fail(d, "field 'parts[%zu].format': unknown format '%.*s'", i,
                        (int)(f->len > 64 ? 64 : f->len), f->val);
    } else if (!strcmp(k, "image") || !strcmp(k, "voice") || !strcmp(k, "video") ||
               !strcmp(k, "file")) {
        if (!PF("media_id") && !PF("url"))
            return fail(d, "missing required field 'parts[%zu].media_id' or 'parts[%zu].url'",
                        i, i);
        if ((f = PF("sha256")) && f->type == KFG_F_STR && (f->len != 64 || !is_hex(f->val, 64)))
            return fail(d, "field 'parts[%zu].sha256': expected 64 lowercase hex digits", i);
    } else if (!strcmp(k, "location")) {
        NEED("lat");
        NEED("lon");
        static const char *const ll[] = { "lat", "lon" };
        for (int j = 0; j < 2; j++) {
            f = PF(ll[j]);
            double v = f->type == KFG_F_FLOAT ? f->dval : (double)f->ival;
            if (f->type == KFG_F_UINT)
                v = (double)(uint64_t)f->ival;
            double lim = j ? 180 : 90;
            if (!(v >= -lim && v <= lim))
                return fail(d, "field 'parts[%zu].%s': out of range -%g..%g", i, ll[j], lim,
                            lim);
        }
    } else if (!strcmp(k, "link")) {
        NEED("url");
    } else if (!strcmp(k, "event")) {
        NEED("name");
    }
#undef NEED
#undef PF
    return 0;
}

static int rules(struct dec *d)
{
    const struct kfg_msg *m = d->m;
    const struct kfg_field *f;
    if (!d->have_v)
        return fail(d, "missing required field 'v'");
    if (!d->have_type)
        return fail(d, "missing required field 'type'");
    f = fget(m, "dir");
    if (!f)
        return fail(d, "missing required field 'dir'");
    if (!str_is(f, "in") && !str_is(f, "out"))
        return fail(d, "field 'dir': expected 'in' or 'out', got '%.*s'",
                    (int)(f->len > 64 ? 64 : f->len), f->val);
    static const char *const names[] = { "tenant", "channel", "instance" };
    for (int i = 0; i < 3; i++)
        if ((f = fget(m, names[i])) && !is_name(f->val, f->len))
            return fail(d, "field '%s': invalid name (1..64 of A-Z a-z 0-9 _ . -)", names[i]);
    if ((f = fget(m, "status")) && !in_list(states, f->val, f->len))
        return fail(d, "field 'status': unknown status '%.*s'",
                    (int)(f->len > 64 ? 64 : f->len), f->val);
    if ((f = fget(m, "trace.traceparent"))) {
        /* version "-" trace-id "-" parent-id "-" flags, lowercase hex */
        const char *s = f->val;
        if (f->len != 55 || s[2] != '-' || s[35] != '-' || s[52] != '-' || !is_hex(s, 2) ||
            !is_hex(s + 3, 32) || !is_hex(s + 36, 16) || !is_hex(s + 53, 2) ||
            !memcmp(s, "ff", 2))
            return fail(d, "field 'trace.traceparent': not a W3C traceparent "
                           "(00-<32 hex>-<16 hex>-<2 hex>)");
    }
    if ((f = fget(m, "idem")) && (f->len == 0 || f->len > 512))
        return fail(d, "field 'idem': expected 1..512 bytes");
    for (size_t i = 0; i < m->nparts; i++)
        if (part_rules(d, i))
            return -1;

    const char *type = m->type;
    int outbound = (d->flags & KFG_ENV_OUTBOUND) != 0;
    if (outbound) {
        if (!str_is(fget(m, "dir"), "out"))
            return fail(d, "field 'dir': must be 'out' on the outbound path, got '%.*s'",
                        (int)fget(m, "dir")->len, fget(m, "dir")->val);
        if (!strcmp(type, "status"))
            return fail(d, "type 'status' is the gateway's own: a core cannot send it");
        if (!has_str(m, "instance"))
            return fail(d, "missing required field 'instance'");
        if (!strcmp(type, "message") || !strcmp(type, "typing")) {
            if (!has_str(m, "conversation.id") && !has_str(m, "recipient.id"))
                return fail(d, "missing required field 'conversation.id' or 'recipient.id'");
        }
        if (!strcmp(type, "message") && !m->nparts)
            return fail(d, "missing required field 'parts' (a message needs at least one part)");
    } else if (d->flags & KFG_ENV_INBOUND) {
        if (!m->id[0])
            return fail(d, "missing required field 'id'");
        if (!m->seq)
            return fail(d, "missing required field 'seq'");
        if (!m->accepted_ms)
            return fail(d, "missing required field 'ts.accepted'");
        static const char *const req[] = { "tenant", "channel", "instance" };
        for (int i = 0; i < 3; i++)
            if (!has_str(m, req[i]))
                return fail(d, "missing required field '%s'", req[i]);
        if (!strcmp(type, "status")) {
            if (!has_str(m, "status"))
                return fail(d, "missing required field 'status'");
            if (!has_str(m, "ref"))
                return fail(d, "missing required field 'ref'");
            if (str_is(fget(m, "status"), "failed") && !fget(m, "retriable"))
                return fail(d, "missing required field 'retriable' (status 'failed')");
        } else if (!strcmp(type, "message") || !strcmp(type, "event")) {
            if (!has_str(m, "conversation.id"))
                return fail(d, "missing required field 'conversation.id'");
            if (!has_str(m, "sender.id"))
                return fail(d, "missing required field 'sender.id'");
            if (!m->nparts)
                return fail(d, "missing required field 'parts' (a %s needs at least one part)",
                            type);
        }
    }
    return 0;
}

int kfg_env_decode(const void *mp, size_t len, unsigned flags, struct kfg_msg **out,
                   char *reason, size_t reason_cap)
{
    struct dec d = { .flags = flags, .reason = reason, .cap = reason_cap };
    if (out)
        *out = NULL;
    if (reason && reason_cap)
        reason[0] = '\0';
    if (!mp && len)
        return fail(&d, "no data"), KFG_EINVAL;
    if (len > KFG_ENV_MAX_SIZE) {
        fail(&d, "envelope too large: %zu bytes (limit %u)", len, KFG_ENV_MAX_SIZE);
        return KFG_EINVAL;
    }
    d.r = (struct rd){ mp, (const uint8_t *)mp + len, mp };
    struct mpv top;
    int rc = rd_head(&d.r, &top);
    if (rc) {
        read_fail(&d, rc);
        return d.err;
    }
    if (top.t != MP_MAP) {
        fail(&d, "envelope: expected map, got %s", got(&top));
        return KFG_EINVAL;
    }
    d.m = kfg_msg_new("message", NULL, NULL, NULL);
    if (!d.m) {
        oom(&d);
        return KFG_ENOMEM;
    }
    if (walk_map(&d, top.n, 1) == 0) {
        if (d.r.p != d.r.end)
            fail(&d, "envelope: %zu trailing bytes after the map", (size_t)(d.r.end - d.r.p));
        else
            rules(&d);
    }
    if (d.err) {
        kfg_msg_free(d.m);
        return d.err;
    }
    if (out)
        *out = d.m;
    else
        kfg_msg_free(d.m);
    return 0;
}

int kfg_env_decode_outbound(const void *mp, size_t len, struct kfg_msg **out, char *reason,
                            size_t reason_cap)
{
    return kfg_env_decode(mp, len, KFG_ENV_OUTBOUND, out, reason, reason_cap);
}

int kfg_env_validate(const void *mp, size_t len, unsigned flags, char *reason,
                     size_t reason_cap)
{
    return kfg_env_decode(mp, len, flags, NULL, reason, reason_cap);
}

int kfg_env_check(const struct kfg_msg *m, char *reason, size_t reason_cap)
{
    struct kfg_buf b = { 0 };
    int r = kfg_env_encode(m, &b);
    if (r == 0) {
        r = kfg_env_validate(b.p, b.len, KFG_ENV_INBOUND, reason, reason_cap);
    } else if (reason && reason_cap) {
        snprintf(reason, reason_cap, "out of memory");
    }
    kfg_buf_free(&b);
    return r;
}

/* ------------------------------------------------------------------------ */
/* msgpack -> JSON */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void b64_put(struct kfg_buf *o, const unsigned char *p, size_t n)
{
    if (kfg_buf_reserve(o, (n + 2) / 3 * 4) < 0)
        return;
    char *w = o->p + o->len;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        *w++ = b64[v >> 18];
        *w++ = b64[(v >> 12) & 63];
        *w++ = b64[(v >> 6) & 63];
        *w++ = b64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        *w++ = b64[v >> 18];
        *w++ = b64[(v >> 12) & 63];
        *w++ = i + 1 < n ? b64[(v >> 6) & 63] : '=';
        *w++ = '=';
    }
    o->len = (size_t)(w - o->p);
    o->p[o->len] = '\0';
}

/* Strict standard base64 with padding; -1 when malformed. */
static long b64_decode(const char *s, size_t n, unsigned char *out)
{
    if (n % 4)
        return -1;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int j = 0; j < 4; j++) {
            char c = s[i + j];
            const char *q = c ? strchr(b64, c) : NULL;
            if (c == '=' && i + 4 == n && j >= 2) {
                pad++;
                v <<= 6;
                continue;
            }
            if (!q || pad)
                return -1;
            v = v << 6 | (uint32_t)(q - b64);
        }
        out[o++] = (unsigned char)(v >> 16);
        if (pad < 2)
            out[o++] = (unsigned char)(v >> 8);
        if (pad < 1)
            out[o++] = (unsigned char)v;
        /* Non-canonical padding bits are malformed. */
        if ((pad == 1 && (v & 0xff)) || (pad == 2 && (v & 0xffff)))
            return -1;
    }
    return (long)o;
}

static void json_double(struct kfg_buf *o, double v, int f32)
{
    if (isnan(v)) {
        kfg_buf_puts(o, "{\"$float\":\"NaN\"}");
        return;
    }
    if (isinf(v)) {
        kfg_buf_puts(o, v > 0 ? "{\"$float\":\"Infinity\"}" : "{\"$float\":\"-Infinity\"}");
        return;
    }
    char b[40];
    int n = snprintf(b, sizeof b, f32 ? "%.9g" : "%.17g", v);
    kfg_buf_append(o, b, (size_t)n);
    if (!strpbrk(b, ".eE"))
        kfg_buf_puts(o, ".0");
}

static int to_json_value(struct dec *d, struct kfg_buf *o, int depth)
{
    struct mpv v;
    int rc = rd_head(&d->r, &v);
    if (rc)
        return read_fail(d, rc);
    if ((v.t == MP_ARR || v.t == MP_MAP) && depth > KFG_ENV_MAX_DEPTH)
        return fail(d, "field '%s': nested deeper than %d levels", pth(d), KFG_ENV_MAX_DEPTH);
    char b[32];
    switch (v.t) {
    case MP_NIL: kfg_buf_puts(o, "null"); break;
    case MP_BOOL: kfg_buf_puts(o, v.u ? "true" : "false"); break;
    case MP_UINT:
        kfg_buf_append(o, b, (size_t)snprintf(b, sizeof b, "%" PRIu64, v.u));
        break;
    case MP_INT:
        kfg_buf_append(o, b, (size_t)snprintf(b, sizeof b, "%" PRId64, v.i));
        break;
    case MP_FLOAT: json_double(o, v.d, v.f32); break;
    case MP_STR: kfg_buf_json_str(o, v.p, v.n); break;
    case MP_BIN:
        kfg_buf_puts(o, "{\"$bin\":\"");
        b64_put(o, (const unsigned char *)v.p, v.n);
        kfg_buf_puts(o, "\"}");
        break;
    case MP_EXT:
        kfg_buf_printf(o, "{\"$ext\":[%d,\"", v.ext);
        b64_put(o, (const unsigned char *)v.p, v.n);
        kfg_buf_puts(o, "\"]}");
        break;
    case MP_ARR:
        kfg_buf_putc(o, '[');
        for (uint32_t i = 0; i < v.n; i++) {
            if (i)
                kfg_buf_putc(o, ',');
            struct mark mk = push_index(d, i);
            if (to_json_value(d, o, depth + 1))
                return -1;
            pop(d, mk);
        }
        kfg_buf_putc(o, ']');
        break;
    case MP_MAP:
        kfg_buf_putc(o, '{');
        for (uint32_t i = 0; i < v.n; i++) {
            struct mpv k;
            rc = rd_head(&d->r, &k);
            if (rc)
                return read_fail(d, rc);
            if (k.t != MP_STR)
                return fail(d, "field '%s': map key #%u is %s, not a string", pth(d), i + 1,
                            mpt_name[k.t]);
            if (i)
                kfg_buf_putc(o, ',');
            kfg_buf_json_str(o, k.p, k.n);
            kfg_buf_putc(o, ':');
            struct mark mk = push_key(d, k.p, k.n);
            if (to_json_value(d, o, depth + 1))
                return -1;
            pop(d, mk);
        }
        kfg_buf_putc(o, '}');
        break;
    }
    return 0;
}

int kfg_env_to_json_r(const void *mp, size_t len, struct kfg_buf *out, char *reason,
                      size_t reason_cap)
{
    struct dec d = { .reason = reason, .cap = reason_cap };
    if (reason && reason_cap)
        reason[0] = '\0';
    if (!mp || !len)
        return fail(&d, "envelope: empty");
    if (len > KFG_ENV_MAX_SIZE)
        return fail(&d, "envelope too large: %zu bytes (limit %u)", len, KFG_ENV_MAX_SIZE);
    d.r = (struct rd){ mp, (const uint8_t *)mp + len, mp };
    if (*(const uint8_t *)mp != 0xde && *(const uint8_t *)mp != 0xdf &&
        (*(const uint8_t *)mp & 0xf0) != 0x80)
        return fail(&d, "envelope: expected map");
    if (to_json_value(&d, out, 1))
        return -1;
    if (d.r.p != d.r.end)
        return fail(&d, "envelope: %zu trailing bytes after the map", (size_t)(d.r.end - d.r.p));
    return out->oom ? -1 : 0;
}

int kfg_env_to_json(const void *mp, size_t len, struct kfg_buf *out)
{
    return kfg_env_to_json_r(mp, len, out, NULL, 0);
}

/* ------------------------------------------------------------------------ */
/* JSON -> msgpack */

static int from_json_value(struct dec *d, msgpack_packer *pk, const json_t *j, int depth)
{
    if ((json_is_array(j) || json_is_object(j)) && depth > KFG_ENV_MAX_DEPTH)
        return fail(d, "field '%s': nested deeper than %d levels", pth(d), KFG_ENV_MAX_DEPTH);
    switch (json_typeof(j)) {
    case JSON_NULL: return msgpack_pack_nil(pk);
    case JSON_TRUE: return msgpack_pack_true(pk);
    case JSON_FALSE: return msgpack_pack_false(pk);
    case JSON_INTEGER: return msgpack_pack_int64(pk, (int64_t)json_integer_value(j));
    case JSON_REAL: return msgpack_pack_double(pk, json_real_value(j));
    case JSON_STRING: {
        size_t n = json_string_length(j);
        int r = msgpack_pack_str(pk, n);
        return r ? r : msgpack_pack_str_body(pk, json_string_value(j), n);
    }
    case JSON_ARRAY: {
        size_t n = json_array_size(j);
        int r = msgpack_pack_array(pk, n);
        for (size_t i = 0; i < n && !r; i++) {
            struct mark mk = push_index(d, i);
            r = from_json_value(d, pk, json_array_get(j, i), depth + 1);
            pop(d, mk);
        }
        return r;
    }
    case JSON_OBJECT: {
        if (json_object_size(j) == 1) {
            const json_t *x;
            if ((x = json_object_get(j, "$bin"))) {
                if (!json_is_string(x))
                    return fail(d, "field '%s': $bin must be a base64 string", pth(d));
                size_t n = json_string_length(x);
                unsigned char stack[256];
                unsigned char *buf = n / 4 * 3 <= sizeof stack ? stack : malloc(n / 4 * 3 + 3);
                if (!buf)
                    return oom(d);
                long bl = b64_decode(json_string_value(x), n, buf);
                int r = bl < 0 ? fail(d, "field '%s': invalid base64 in $bin", pth(d))
                               : msgpack_pack_bin(pk, (size_t)bl);
                if (!r)
                    r = msgpack_pack_bin_body(pk, buf, (size_t)bl);
                if (buf != stack)
                    free(buf);
                return r;
            }
            if ((x = json_object_get(j, "$ext"))) {
                const json_t *t = json_array_get(x, 0), *s = json_array_get(x, 1);
                if (!json_is_array(x) || json_array_size(x) != 2 || !json_is_integer(t) ||
                    json_integer_value(t) < -128 || json_integer_value(t) > 127 ||
                    !json_is_string(s))
                    return fail(d, "field '%s': $ext must be [type -128..127, base64]", pth(d));
                size_t n = json_string_length(s);
                unsigned char *buf = malloc(n / 4 * 3 + 3);
                if (!buf)
                    return oom(d);
                long bl = b64_decode(json_string_value(s), n, buf);
                int r = bl < 0 ? fail(d, "field '%s': invalid base64 in $ext", pth(d))
                               : msgpack_pack_ext(pk, (size_t)bl, (int8_t)json_integer_value(t));
                if (!r)
                    r = msgpack_pack_ext_body(pk, buf, (size_t)bl);
                free(buf);
                return r;
            }
            if ((x = json_object_get(j, "$float"))) {
                const char *s = json_string_value(x);
                if (s && !strcmp(s, "NaN"))
                    return msgpack_pack_double(pk, NAN);
                if (s && !strcmp(s, "Infinity"))
                    return msgpack_pack_double(pk, INFINITY);
                if (s && !strcmp(s, "-Infinity"))
                    return msgpack_pack_double(pk, -INFINITY);
                return fail(d, "field '%s': $float must be \"NaN\", \"Infinity\" or "
                               "\"-Infinity\"", pth(d));
            }
        }
        int r = msgpack_pack_map(pk, json_object_size(j));
        const char *k;
        json_t *v;
        void *it = json_object_iter((json_t *)j);
        while (it && !r) {
            k = json_object_iter_key(it);
            v = json_object_iter_value(it);
            size_t kl = json_object_iter_key_len(it);
            r = msgpack_pack_str(pk, kl);
            if (!r)
                r = msgpack_pack_str_body(pk, k, kl);
            struct mark mk = push_key(d, k, kl);
            if (!r)
                r = from_json_value(d, pk, v, depth + 1);
            pop(d, mk);
            it = json_object_iter_next((json_t *)j, it);
        }
        return r;
    }
    }
    return -1;
}

int kfg_env_from_json(const char *json, size_t len, struct kfg_buf *out, char *reason,
                      size_t reason_cap)
{
    struct dec d = { .reason = reason, .cap = reason_cap };
    if (reason && reason_cap)
        reason[0] = '\0';
    if (!json || !out)
        return fail(&d, "no data");
    if (len > KFG_ENV_MAX_JSON)
        return fail(&d, "JSON envelope too large: %zu bytes (limit %u)", len, KFG_ENV_MAX_JSON);
    json_error_t e;
    json_t *j = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &e);
    if (!j)
        return fail(&d, "JSON line %d column %d: %s", e.line, e.column, e.text);
    int r;
    if (!json_is_object(j)) {
        r = fail(&d, "JSON: expected an object");
    } else {
        size_t start = out->len;
        msgpack_packer pk;
        msgpack_packer_init(&pk, out, buf_write);
        r = from_json_value(&d, &pk, j, 1);
        if (r && !d.err)
            oom(&d);
        if (!r && out->len - start > KFG_ENV_MAX_SIZE)
            r = fail(&d, "envelope too large: %zu bytes (limit %u)", out->len - start,
                     KFG_ENV_MAX_SIZE);
        if (r) {
            if (!out->oom)
                out->len = start;
            r = -1;
        }
    }
    json_decref(j);
    return r;
}
