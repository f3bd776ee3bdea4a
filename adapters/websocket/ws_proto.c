/*
 * The widget protocol (spec/websocket.md §3, §5): client frames in, server
 * frames out, in JSON (jansson) or msgpack. Both encodings go through one
 * json_t model, so validation is written once.
 *
 * The msgpack reader is our own rather than msgpack-c's unpacker, for the
 * same reason as the bus client's: msgpack-c allocates what a header claims
 * before it has the bytes, and a client frame is untrusted. Here every count
 * is checked against the bytes left (each element needs at least one), and
 * depth is bounded.
 */
#include "ws.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int ws_sub_pick(const char *v, size_t len)
{
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < len && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
            i++;
        size_t n = i - s;
        if (n == sizeof WS_SUB_JSON_NAME - 1 && !memcmp(v + s, WS_SUB_JSON_NAME, n))
            return WS_SUB_JSON;
        if (n == sizeof WS_SUB_MSGPACK_NAME - 1 && !memcmp(v + s, WS_SUB_MSGPACK_NAME, n))
            return WS_SUB_MSGPACK;
    }
    return -1;
}

/* ------------------------------------------------------------------------ */
/* msgpack <-> json_t */

#define MP_DEPTH 16

struct mprd {
    const uint8_t *p, *end;
    char *err;
    size_t errcap;
};

static json_t *mp_fail(struct mprd *r, const char *what)
{
    if (r->err && !r->err[0])
        snprintf(r->err, r->errcap, "msgpack: %s", what);
    return NULL;
}

static int mp_need(struct mprd *r, size_t n)
{
    return (size_t)(r->end - r->p) >= n;
}

static uint64_t mp_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static json_t *mp_value(struct mprd *r, int depth);

static json_t *mp_str(struct mprd *r, size_t n)
{
    if (!mp_need(r, n))
        return mp_fail(r, "truncated string");
    json_t *s = json_stringn((const char *)r->p, n);   /* checks UTF-8 */
    if (!s)
        return mp_fail(r, "string is not valid UTF-8");
    r->p += n;
    return s;
}

static json_t *mp_container(struct mprd *r, uint64_t n, int is_map, int depth)
{
    if (depth >= MP_DEPTH)
        return mp_fail(r, "nested too deep");
    if (n > (uint64_t)(r->end - r->p) / (is_map ? 2 : 1))
        return mp_fail(r, "count larger than the data");
    json_t *c = is_map ? json_object() : json_array();
    if (!c)
        return mp_fail(r, "out of memory");
    for (uint64_t i = 0; i < n; i++) {
        if (is_map) {
            if (!mp_need(r, 1))
                goto bad;
            uint8_t b = *r->p;
            size_t kl;
            if ((b & 0xE0) == 0xA0) { kl = b & 0x1F; r->p++; }
            else if (b == 0xD9 && mp_need(r, 2)) { kl = r->p[1]; r->p += 2; }
            else if (b == 0xDA && mp_need(r, 3)) { kl = mp_be(r->p + 1, 2); r->p += 3; }
            else { mp_fail(r, "map key is not a string"); goto bad; }
            if (!mp_need(r, kl)) { mp_fail(r, "truncated key"); goto bad; }
            const char *k = (const char *)r->p;
            if (!ws_utf8_valid(r->p, kl) || memchr(k, 0, kl)) {
                mp_fail(r, "map key is not valid UTF-8");
                goto bad;
            }
            if (json_object_getn(c, k, kl)) { mp_fail(r, "duplicate key"); goto bad; }
            r->p += kl;
            json_t *v = mp_value(r, depth + 1);
            if (!v || json_object_setn_new_nocheck(c, k, kl, v) < 0)
                goto bad;
        } else {
            json_t *v = mp_value(r, depth + 1);
            if (!v || json_array_append_new(c, v) < 0)
                goto bad;
        }
    }
    return c;
bad:
    json_decref(c);
    return mp_fail(r, "invalid map or array");
}

static json_t *mp_value(struct mprd *r, int depth)
{
    if (!mp_need(r, 1))
        return mp_fail(r, "truncated");
    uint8_t b = *r->p++;
    if (b <= 0x7F)
        return json_integer(b);
    if (b >= 0xE0)
        return json_integer((int8_t)b);
    if ((b & 0xE0) == 0xA0)
        return mp_str(r, b & 0x1F);
    if ((b & 0xF0) == 0x80)
        return mp_container(r, b & 0x0F, 1, depth);
    if ((b & 0xF0) == 0x90)
        return mp_container(r, b & 0x0F, 0, depth);
    static const int width[] = {
        [0xCC - 0xC0] = 1, [0xCD - 0xC0] = 2, [0xCE - 0xC0] = 4, [0xCF - 0xC0] = 8,
        [0xD0 - 0xC0] = 1, [0xD1 - 0xC0] = 2, [0xD2 - 0xC0] = 4, [0xD3 - 0xC0] = 8,
        [0xCA - 0xC0] = 4, [0xCB - 0xC0] = 8, [0xD9 - 0xC0] = 1, [0xDA - 0xC0] = 2,
        [0xDB - 0xC0] = 4, [0xDC - 0xC0] = 2, [0xDD - 0xC0] = 4, [0xDE - 0xC0] = 2,
        [0xDF - 0xC0] = 4,
    };
    switch (b) {
    case 0xC0: return json_null();
    case 0xC2: return json_false();
    case 0xC3: return json_true();
    case 0xC4: case 0xC5: case 0xC6: return mp_fail(r, "bin values are not allowed");
    case 0xC7: case 0xC8: case 0xC9: case 0xD4: case 0xD5: case 0xD6: case 0xD7: case 0xD8:
        return mp_fail(r, "ext values are not allowed");
    case 0xC1: return mp_fail(r, "reserved byte 0xc1");
    default: break;
    }
    int w = width[b - 0xC0];
    if (!mp_need(r, (size_t)w))
        return mp_fail(r, "truncated");
    uint64_t v = mp_be(r->p, w);
    r->p += w;
    switch (b) {
    case 0xCC: case 0xCD: case 0xCE: case 0xCF:
        if (v > INT64_MAX)
            return mp_fail(r, "integer above 2^63-1");
        return json_integer((json_int_t)v);
    case 0xD0: return json_integer((int8_t)v);
    case 0xD1: return json_integer((int16_t)v);
    case 0xD2: return json_integer((int32_t)v);
    case 0xD3: return json_integer((int64_t)v);
    case 0xCA: {
        uint32_t u = (uint32_t)v;
        float f;
        memcpy(&f, &u, 4);
        if (!isfinite(f))
            return mp_fail(r, "non-finite float");
        return json_real(f);
    }
    case 0xCB: {
        double d;
        memcpy(&d, &v, 8);
        if (!isfinite(d))
            return mp_fail(r, "non-finite float");
        return json_real(d);
    }
    case 0xD9: case 0xDA: case 0xDB: return mp_str(r, (size_t)v);
    case 0xDC: case 0xDD: return mp_container(r, v, 0, depth);
    default: return mp_container(r, v, 1, depth);   /* 0xDE, 0xDF */
    }
}

json_t *ws_mp_decode(const uint8_t *p, size_t n, char *err, size_t errcap)
{
    struct mprd r = { p, p + n, err, errcap };
    if (err && errcap)
        err[0] = 0;
    json_t *v = mp_value(&r, 0);
    if (v && r.p != r.end) {
        json_decref(v);
        return mp_fail(&r, "bytes after the map");
    }
    return v;
}

static void mp_put_hdr(struct ws_obuf *o, uint8_t fix, uint8_t fixmax, uint8_t b16,
                       uint8_t b32, size_t n)
{
    uint8_t h[5];
    if (n <= fixmax) {
        h[0] = (uint8_t)(fix | n);
        ws_obuf_put(o, h, 1);
    } else if (n <= 0xFFFF) {
        h[0] = b16; h[1] = (uint8_t)(n >> 8); h[2] = (uint8_t)n;
        ws_obuf_put(o, h, 3);
    } else {
        h[0] = b32; h[1] = (uint8_t)(n >> 24); h[2] = (uint8_t)(n >> 16);
        h[3] = (uint8_t)(n >> 8); h[4] = (uint8_t)n;
        ws_obuf_put(o, h, 5);
    }
}

static void mp_put_str(struct ws_obuf *o, const char *s, size_t n)
{
    if (n < 32) {
        uint8_t h = (uint8_t)(0xA0 | n);
        ws_obuf_put(o, &h, 1);
    } else if (n <= 0xFF) {
        uint8_t h[2] = { 0xD9, (uint8_t)n };
        ws_obuf_put(o, h, 2);
    } else {
        mp_put_hdr(o, 0, 0, 0xDA, 0xDB, n);
    }
    ws_obuf_put(o, s, n);
}

static int mp_enc(const json_t *v, struct ws_obuf *o, int depth)
{
    if (depth > MP_DEPTH)
        return -1;
    uint8_t b[9];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        mp_put_hdr(o, 0x80, 15, 0xDE, 0xDF, json_object_size(v));
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x) {
            mp_put_str(o, k, strlen(k));
            if (mp_enc(x, o, depth + 1) < 0)
                return -1;
        }
        return 0;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *x;
        mp_put_hdr(o, 0x90, 15, 0xDC, 0xDD, json_array_size(v));
        json_array_foreach(v, i, x)
            if (mp_enc(x, o, depth + 1) < 0)
                return -1;
        return 0;
    }
    case JSON_STRING:
        mp_put_str(o, json_string_value(v), json_string_length(v));
        return 0;
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        if (i >= 0 && i <= 0x7F) {
            b[0] = (uint8_t)i;
            ws_obuf_put(o, b, 1);
        } else if (i < 0 && i >= -32) {
            b[0] = (uint8_t)(int8_t)i;
            ws_obuf_put(o, b, 1);
        } else {
            uint64_t u = (uint64_t)i;
            int w;
            if (i > 0)
                w = i <= 0xFF ? 1 : i <= 0xFFFF ? 2 : i <= 0xFFFFFFFFll ? 4 : 8;
            else
                w = i >= INT8_MIN ? 1 : i >= INT16_MIN ? 2 : i >= INT32_MIN ? 4 : 8;
            static const uint8_t pos[9] = { [1] = 0xCC, [2] = 0xCD, [4] = 0xCE, [8] = 0xCF };
            static const uint8_t neg[9] = { [1] = 0xD0, [2] = 0xD1, [4] = 0xD2, [8] = 0xD3 };
            b[0] = i > 0 ? pos[w] : neg[w];
            for (int k = 0; k < w; k++)
                b[1 + k] = (uint8_t)(u >> (8 * (w - 1 - k)));
            ws_obuf_put(o, b, 1 + (size_t)w);
        }
        return 0;
    }
    case JSON_REAL: {
        double d = json_real_value(v);
        uint64_t u;
        memcpy(&u, &d, 8);
        b[0] = 0xCB;
        for (int k = 0; k < 8; k++)
            b[1 + k] = (uint8_t)(u >> (56 - 8 * k));
        ws_obuf_put(o, b, 9);
        return 0;
    }
    case JSON_TRUE: b[0] = 0xC3; ws_obuf_put(o, b, 1); return 0;
    case JSON_FALSE: b[0] = 0xC2; ws_obuf_put(o, b, 1); return 0;
    case JSON_NULL: b[0] = 0xC0; ws_obuf_put(o, b, 1); return 0;
    }
    return -1;
}

int ws_mp_encode(const json_t *v, struct ws_obuf *out)
{
    return mp_enc(v, out, 0) < 0 || out->oom ? -1 : 0;
}

static int dump_cb(const char *buf, size_t size, void *data)
{
    ws_obuf_put(data, buf, size);
    return ((struct ws_obuf *)data)->oom ? -1 : 0;
}

int ws_encode(const json_t *obj, int sub, struct ws_obuf *out)
{
    static const uint8_t room[10];
    size_t base = out->len;
    ws_obuf_put(out, room, sizeof room);      /* the header goes here */
    int r;
    if (sub == WS_SUB_MSGPACK)
        r = ws_mp_encode(obj, out);
    else
        r = json_dump_callback(obj, dump_cb, out, JSON_COMPACT | JSON_REAL_PRECISION(17));
    if (r < 0 || out->oom) {
        out->len = base;
        return -1;
    }
    size_t plen = out->len - base - sizeof room;
    uint8_t h[10];
    size_t hl = ws_frame_header(h, sub == WS_SUB_MSGPACK ? WS_OP_BINARY : WS_OP_TEXT, plen);
    memmove(out->p + base + hl, out->p + base + sizeof room, plen);
    memcpy(out->p + base, h, hl);
    out->len = base + hl + plen;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Client frames */

#define BAD(...) do { snprintf(err, errcap, __VA_ARGS__); return -1; } while (0)

static int id_ok(const char *s, size_t n)
{
    if (n < 1 || n > WS_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

static int event_name_ok(const char *s, size_t n)
{
    if (n < 1 || n > 32 || s[0] < 'a' || s[0] > 'z')
        return 0;
    for (size_t i = 1; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
              c == '-'))
            return 0;
    }
    return 1;
}

/* key absent: 0; a string within [min,max] bytes: 1 with *out set; else -1 */
static int get_str(json_t *o, const char *key, size_t min, size_t max, struct ws_cstr *out)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_string(v))
        return -1;
    size_t n = json_string_length(v);
    if (n < min || n > max || memchr(json_string_value(v), 0, n))
        return -1;
    out->p = json_string_value(v);
    out->n = n;
    return 1;
}

static int get_uint(json_t *o, const char *key, uint64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 1;
}

struct kind_rule {
    const char *kind;
    const char *req;             /* a required string field, or NULL */
    const char *strs[5];         /* optional string fields */
};
static const struct kind_rule kinds[] = {
    { "text", "text", { "format" } },
    { "link", "url", { "title", "description" } },
    { "image", "url", { "mime", "name" } },
    { "file", "url", { "mime", "name" } },
    { "voice", "url", { "mime", "name" } },
    { "video", "url", { "mime", "name" } },
    { "location", NULL, { "label" } },
};

static int part_ok(json_t *p, size_t i, char *err, size_t errcap)
{
    if (!json_is_object(p))
        BAD("parts[%zu] is not an object", i);
    struct ws_cstr kind = { 0 };
    if (get_str(p, "kind", 1, 32, &kind) != 1)
        BAD("parts[%zu].kind missing or not a string", i);
    const struct kind_rule *k = NULL;
    for (size_t j = 0; j < sizeof kinds / sizeof kinds[0]; j++)
        if (strlen(kinds[j].kind) == kind.n && !memcmp(kinds[j].kind, kind.p, kind.n))
            k = &kinds[j];
    if (!k)
        BAD("parts[%zu].kind \"%.*s\" is not supported", i, (int)kind.n, kind.p);
    const char *key;
    json_t *v;
    json_object_foreach(p, key, v) {
        if (!strcmp(key, "kind"))
            continue;
        int known = k->req && !strcmp(key, k->req);
        for (size_t j = 0; !known && j < 5 && k->strs[j]; j++)
            known = !strcmp(key, k->strs[j]);
        if (known) {
            struct ws_cstr s;
            if (get_str(p, key, 1, 65536, &s) != 1)
                BAD("parts[%zu].%s must be a non-empty string", i, key);
            continue;
        }
        if (k->req && !strcmp(k->req, "url") && !strcmp(key, "size")) {
            if (!json_is_integer(v) || json_integer_value(v) < 0)
                BAD("parts[%zu].size must be a non-negative integer", i);
            continue;
        }
        if (!strcmp(k->kind, "location") && (!strcmp(key, "lat") || !strcmp(key, "lon"))) {
            double lim = key[1] == 'a' ? 90 : 180;
            if (!json_is_number(v) || fabs(json_number_value(v)) > lim)
                BAD("parts[%zu].%s must be a number in [-%g, %g]", i, key, lim, lim);
            continue;
        }
        BAD("parts[%zu].%s is not a field of kind %s", i, key, k->kind);
    }
    if (k->req && !json_object_get(p, k->req))
        BAD("parts[%zu].%s is required", i, k->req);
    if (!strcmp(k->kind, "location") &&
        (!json_object_get(p, "lat") || !json_object_get(p, "lon")))
        BAD("parts[%zu]: location needs lat and lon", i);
    return 0;
}

int ws_cframe_parse(const uint8_t *p, size_t n, int sub, struct ws_cframe *f,
                    char *err, size_t errcap)
{
    memset(f, 0, sizeof *f);
    err[0] = 0;
    if (sub == WS_SUB_MSGPACK) {
        f->root = ws_mp_decode(p, n, err, errcap);
        if (!f->root)
            return -1;
    } else {
        json_error_t je;
        f->root = json_loadb((const char *)p, n, JSON_REJECT_DUPLICATES,
                             &je);
        if (!f->root)
            BAD("JSON: %s at offset %d", je.text, je.position);
    }
    json_t *o = f->root;
    if (!json_is_object(o))
        BAD("a frame must be an object");
    if (get_str(o, "id", 1, 1024, &f->id) < 0)
        BAD("id must be a string");
    if (f->id.p && !id_ok(f->id.p, f->id.n)) {
        f->id.p = NULL;
        BAD("id must be 1..%d characters of [A-Za-z0-9_.:-]", WS_ID_MAX);
    }
    struct ws_cstr type = { 0 };
    if (get_str(o, "type", 1, 32, &type) != 1)
        BAD("type missing or not a string");
#define IS(lit) (type.n == sizeof(lit) - 1 && !memcmp(type.p, lit, type.n))
    if (IS("hello")) {
        f->type = WS_C_HELLO;
        if (get_str(o, "token", 1, WS_TOKEN_MAX, &f->token) < 0)
            BAD("token must be a string of at most %d bytes", WS_TOKEN_MAX);
        if (get_str(o, "conversation", 1, WS_IDENT_MAX, &f->conversation) < 0)
            BAD("conversation must be a string of 1..%d bytes", WS_IDENT_MAX);
        int r = get_uint(o, "resume_from", &f->resume_from);
        if (r < 0)
            BAD("resume_from must be a non-negative integer");
        f->has_resume = r;
        return 0;
    }
    if (IS("message")) {
        f->type = WS_C_MESSAGE;
        if (!f->id.p)
            BAD("message needs an id");
        int t = get_str(o, "text", 1, SIZE_MAX, &f->text);
        if (t < 0)
            BAD("text must be a non-empty string");
        if (get_str(o, "reply_to", 1, 128, &f->reply_to) < 0)
            BAD("reply_to must be a string of 1..128 bytes");
        json_t *parts = json_object_get(o, "parts");
        if (t && parts)
            BAD("give text or parts, not both");
        if (!t && !parts)
            BAD("message needs text or parts");
        if (parts) {
            if (!json_is_array(parts) || json_array_size(parts) < 1 ||
                json_array_size(parts) > WS_PARTS_MAX)
                BAD("parts must be an array of 1..%d parts", WS_PARTS_MAX);
            size_t i;
            json_t *x;
            json_array_foreach(parts, i, x)
                if (part_ok(x, i, err, errcap) < 0)
                    return -1;
            f->parts = parts;
        }
        return 0;
    }
    if (IS("event")) {
        f->type = WS_C_EVENT;
        if (get_str(o, "name", 1, 32, &f->name) != 1 || !event_name_ok(f->name.p, f->name.n))
            BAD("event name must match [a-z][a-z0-9_.-]{0,31}");
        if (get_str(o, "value", 0, 1024, &f->value) < 0)
            BAD("value must be a string of at most 1024 bytes");
        int r = get_uint(o, "seq", &f->seq);
        if (r < 0)
            BAD("seq must be a non-negative integer");
        f->has_seq = r;
        return 0;
    }
    BAD("unknown frame type \"%.*s\"", (int)type.n, type.p);
#undef IS
}

void ws_cframe_free(struct ws_cframe *f)
{
    json_decref(f->root);
    f->root = NULL;
}
