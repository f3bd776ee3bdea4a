/*
 * REST adapter: JSON pointers, ingest validation and mapping, problems.
 *
 * Validation is strict: an unknown member, a wrong type or an out-of-range
 * value is a 400 that names the member by its JSON pointer, so a client's
 * typo never becomes a silently ignored field. The body schema is
 * spec/rest-openapi.yaml (components/schemas/Message and Part).
 */
#include "rest.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---------------------------------------------------------------------------
 * Problems.
 */
void rest_problem_set(struct rest_problem *p, int status, const char *type,
                      const char *title, const char *pointer, const char *fmt, ...)
{
    p->status = status;
    p->type = type;
    p->title = title;
    p->header[0] = '\0';
    p->retry_after = 0;
    snprintf(p->pointer, sizeof p->pointer, "%s", pointer ? pointer : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->detail, sizeof p->detail, fmt, ap);
    va_end(ap);
}

char *rest_problem_json(const struct rest_problem *p, const char *instance_path, json_t *extra)
{
    json_t *o = json_object();
    char type[160];
    snprintf(type, sizeof type, REST_PROBLEM_BASE "%s", p->type ? p->type : "error");
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "title", json_string(p->title ? p->title : "Error"));
    json_object_set_new(o, "status", json_integer(p->status));
    /* detail may hold client text cut mid-sequence: json_string refuses
     * invalid UTF-8, so fall back to a lossless-enough ASCII copy. */
    json_t *d = json_string(p->detail);
    if (!d) {
        char a[sizeof p->detail];
        size_t i = 0;
        for (; p->detail[i] && i + 1 < sizeof a; i++)
            a[i] = (unsigned char)p->detail[i] < 0x80 ? p->detail[i] : '?';
        a[i] = '\0';
        d = json_string(a);
    }
    json_object_set_new(o, "detail", d);
    if (instance_path)
        json_object_set_new(o, "instance", json_string(instance_path));
    if (p->pointer[0] || p->header[0]) {
        json_t *e = json_object();
        json_object_set(e, "detail", d);
        if (p->pointer[0]) {
            json_t *ptr = json_string(p->pointer);
            json_object_set_new(e, "pointer", ptr ? ptr : json_string("?"));
        }
        if (p->header[0])
            json_object_set_new(e, "header", json_string(p->header));
        json_t *arr = json_array();
        json_array_append_new(arr, e);
        json_object_set_new(o, "errors", arr);
    }
    if (extra)
        json_object_update(o, extra);
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* ---------------------------------------------------------------------------
 * JSON pointers (RFC 6901).
 */
int rest_pointer_valid(const char *ptr)
{
    if (!ptr)
        return 0;
    if (*ptr == '\0')
        return 1;
    if (*ptr != '/')
        return 0;
    for (const char *c = ptr; *c; c++)
        if (*c == '~' && c[1] != '0' && c[1] != '1')
            return 0;
    return 1;
}

json_t *rest_pointer_get(json_t *root, const char *ptr)
{
    if (!rest_pointer_valid(ptr))
        return NULL;
    json_t *cur = root;
    const char *p = ptr;
    char tok[512];
    while (cur && *p == '/') {
        p++;
        size_t n = 0;
        while (*p && *p != '/') {
            char c = *p++;
            if (c == '~')
                c = *p++ == '0' ? '~' : '/';
            if (n + 1 >= sizeof tok)
                return NULL;
            tok[n++] = c;
        }
        tok[n] = '\0';
        if (json_is_object(cur)) {
            cur = json_object_getn(cur, tok, n);
        } else if (json_is_array(cur)) {
            /* Array index: "0" or digits without a leading zero. */
            if (n == 0 || n > 9 || (n > 1 && tok[0] == '0'))
                return NULL;
            size_t idx = 0;
            for (size_t i = 0; i < n; i++) {
                if (tok[i] < '0' || tok[i] > '9')
                    return NULL;
                idx = idx * 10 + (size_t)(tok[i] - '0');
            }
            cur = json_array_get(cur, idx);
        } else {
            return NULL;
        }
    }
    return cur;
}

void rest_pointer_push(char *buf, size_t cap, const char *token)
{
    size_t o = strlen(buf);
    if (o + 1 < cap)
        buf[o++] = '/';
    for (const char *t = token; *t && o + 2 < cap; t++) {
        if (*t == '~' || *t == '/') {
            buf[o++] = '~';
            buf[o++] = *t == '~' ? '0' : '1';
        } else {
            buf[o++] = *t;
        }
    }
    buf[o < cap ? o : cap - 1] = '\0';
}

static void ptr_join(char *out, size_t cap, const char *base, const char *tok)
{
    snprintf(out, cap, "%s", base);
    rest_pointer_push(out, cap, tok);
}

static void ptr_index(char *out, size_t cap, const char *base, size_t i)
{
    char t[24];
    snprintf(t, sizeof t, "%zu", i);
    ptr_join(out, cap, base, t);
}

/* ---------------------------------------------------------------------------
 * Small checks.
 */
int rest_ctype_json(const char *ct, size_t len)
{
    if (!ct)
        return 0;
    size_t i = 0;
    while (i < len && (ct[i] == ' ' || ct[i] == '\t'))
        i++;
    static const char want[] = "application/json";
    size_t wl = sizeof want - 1;
    if (len - i < wl || strncasecmp(ct + i, want, wl) != 0)
        return 0;
    i += wl;
    while (i < len) {
        while (i < len && (ct[i] == ' ' || ct[i] == '\t'))
            i++;
        if (i == len)
            break;
        if (ct[i] != ';')
            return 0;
        i++;
        while (i < len && (ct[i] == ' ' || ct[i] == '\t'))
            i++;
        size_t ns = i;
        while (i < len && ct[i] != '=' && ct[i] != ';')
            i++;
        size_t nl = i - ns;
        while (nl && (ct[ns + nl - 1] == ' ' || ct[ns + nl - 1] == '\t'))
            nl--;
        if (i == len || ct[i] != '=')
            return 0;
        i++;
        size_t vs = i;
        while (i < len && ct[i] != ';')
            i++;
        size_t vl = i - vs;
        while (vl && (ct[vs + vl - 1] == ' ' || ct[vs + vl - 1] == '\t'))
            vl--;
        if (vl >= 2 && ct[vs] == '"' && ct[vs + vl - 1] == '"')
            vs++, vl -= 2;
        if (nl == 7 && strncasecmp(ct + ns, "charset", 7) == 0 &&
            !(vl == 5 && strncasecmp(ct + vs, "utf-8", 5) == 0))
            return 0;
    }
    return 1;
}

int rest_idem_key_valid(const char *k, size_t len)
{
    if (!k || len == 0 || len > 255 || k[0] == ' ' || k[len - 1] == ' ')
        return 0;
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)k[i] < 0x20 || (unsigned char)k[i] > 0x7e)
            return 0;
    return 1;
}

static int name_token(const char *s, size_t max)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

static int is_http_url(const char *s)
{
    return strncasecmp(s, "https://", 8) == 0 || strncasecmp(s, "http://", 7) == 0;
}

/* ---------------------------------------------------------------------------
 * Mapping.
 */
#define BAD(p, ptr, ...)                                                       \
    (rest_problem_set((p), 400, "invalid-field", "Invalid request field", (ptr), \
                      __VA_ARGS__),                                            \
     -1)

struct ctx {
    const struct kfg_msg_sink *s;
    const struct rest_limits *lim;
    struct rest_problem *p;
};

static int sink_fail(struct ctx *c, const char *ptr, int rc)
{
    rest_problem_set(c->p, 400, "invalid-field", "Invalid request field", ptr,
                     "the gateway refused this value (%d)", rc);
    return -1;
}

static int put(struct ctx *c, const char *key, const char *val, size_t len, const char *ptr)
{
    int rc = c->s->set(c->s->arg, key, val, len);
    return rc < 0 ? sink_fail(c, ptr, rc) : 0;
}

static int pput(struct ctx *c, int part, const char *key, const char *val, size_t len,
                const char *ptr)
{
    int rc = c->s->part_set(c->s->arg, part, key, val, len);
    return rc < 0 ? sink_fail(c, ptr, rc) : 0;
}

/* A string member, 1..max bytes. */
static int want_str(struct ctx *c, json_t *v, const char *ptr, size_t max, const char **out,
                    size_t *len)
{
    if (!json_is_string(v))
        return BAD(c->p, ptr, "expected a string, got %s",
                   json_is_null(v) ? "null" : json_is_number(v) ? "a number"
                   : json_is_boolean(v) ? "a boolean" : json_is_array(v) ? "an array"
                   : "an object");
    *len = json_string_length(v);
    *out = json_string_value(v);
    if (*len == 0)
        return BAD(c->p, ptr, "must not be empty");
    if (*len > max)
        return BAD(c->p, ptr, "longer than %zu bytes", max);
    return 0;
}

/* An identity: "id" or {"id": ..., <optional string members>}. */
static int map_identity(struct ctx *c, json_t *v, const char *base, const char *name,
                        const char *const *optional)
{
    char ptr[256], key[64];
    const char *s;
    size_t n;
    ptr_join(ptr, sizeof ptr, base, name);
    snprintf(key, sizeof key, "%s.id", name);
    if (json_is_string(v)) {
        if (want_str(c, v, ptr, c->lim->max_id, &s, &n) < 0)
            return -1;
        return put(c, key, s, n, ptr);
    }
    if (!json_is_object(v))
        return BAD(c->p, ptr, "expected an object with \"id\" (or the id as a string)");
    const char *k;
    json_t *m;
    json_object_foreach(v, k, m) {
        int known = strcmp(k, "id") == 0;
        for (size_t i = 0; optional[i] && !known; i++)
            known = strcmp(k, optional[i]) == 0;
        char mp[256];
        ptr_join(mp, sizeof mp, ptr, k);
        if (!known)
            return BAD(c->p, mp, "unknown field");
    }
    json_t *id = json_object_get(v, "id");
    char idp[256];
    ptr_join(idp, sizeof idp, ptr, "id");
    if (!id)
        return BAD(c->p, idp, "required");
    if (want_str(c, id, idp, c->lim->max_id, &s, &n) < 0 || put(c, key, s, n, idp) < 0)
        return -1;
    for (size_t i = 0; optional[i]; i++) {
        json_t *o = json_object_get(v, optional[i]);
        if (!o)
            continue;
        char op[256];
        ptr_join(op, sizeof op, ptr, optional[i]);
        snprintf(key, sizeof key, "%s.%s", name, optional[i]);
        if (want_str(c, o, op, 1024, &s, &n) < 0 || put(c, key, s, n, op) < 0)
            return -1;
    }
    return 0;
}

enum ftype { F_STR, F_URL, F_UINT, F_INT, F_LAT, F_LON, F_SHA, F_FORMAT, F_ANY };

struct fdef {
    const char *name;
    enum ftype t;
};

static const struct fdef f_text[] = { { "text", F_STR }, { "format", F_FORMAT }, { NULL, 0 } };
static const struct fdef f_media[] = {
    { "media_id", F_STR }, { "url", F_URL }, { "mime", F_STR }, { "size", F_UINT },
    { "name", F_STR }, { "duration_ms", F_UINT }, { "width", F_UINT }, { "height", F_UINT },
    { "sha256", F_SHA }, { "thumb_url", F_URL }, { "thumb_media_id", F_STR },
    { "expires", F_INT }, { NULL, 0 }
};
static const struct fdef f_location[] = {
    { "lat", F_LAT }, { "lon", F_LON }, { "label", F_STR }, { "scale", F_INT }, { NULL, 0 }
};
static const struct fdef f_link[] = {
    { "url", F_URL }, { "title", F_STR }, { "description", F_STR }, { "thumb_url", F_URL },
    { NULL, 0 }
};
static const struct fdef f_event[] = {
    { "name", F_STR }, { "key", F_STR }, { "value", F_ANY }, { NULL, 0 }
};

static const struct {
    const char *kind;
    const struct fdef *f;
    const char *required[3];   /* all of these ... */
    int one_of;                /* ... or, when set, at least one of them */
} kinds[] = {
    { "text", f_text, { "text", NULL, NULL }, 0 },
    { "image", f_media, { "media_id", "url", NULL }, 1 },
    { "voice", f_media, { "media_id", "url", NULL }, 1 },
    { "video", f_media, { "media_id", "url", NULL }, 1 },
    { "file", f_media, { "media_id", "url", NULL }, 1 },
    { "location", f_location, { "lat", "lon", NULL }, 0 },
    { "link", f_link, { "url", NULL, NULL }, 0 },
    { "event", f_event, { "name", NULL, NULL }, 0 },
};

/* An event's "value": any JSON; strings and numbers under dotted keys. */
static int put_value(struct ctx *c, int part, json_t *v, const char *key, const char *ptr,
                     int depth)
{
    char b[40];
    if (json_is_string(v))
        return pput(c, part, key, json_string_value(v), json_string_length(v), ptr);
    if (json_is_integer(v)) {
        int n = snprintf(b, sizeof b, "%lld", (long long)json_integer_value(v));
        return pput(c, part, key, b, (size_t)n, ptr);
    }
    if (json_is_real(v)) {
        int n = snprintf(b, sizeof b, "%.17g", json_real_value(v));
        return pput(c, part, key, b, (size_t)n, ptr);
    }
    if (json_is_boolean(v))
        return pput(c, part, key, json_is_true(v) ? "true" : "false",
                    json_is_true(v) ? 4 : 5, ptr);
    if (json_is_object(v) && depth < 4) {
        const char *k;
        json_t *m;
        if (json_object_size(v) > 64)
            return BAD(c->p, ptr, "more than 64 members");
        json_object_foreach(v, k, m) {
            char mp[256], mk[256];
            ptr_join(mp, sizeof mp, ptr, k);
            if (!name_token(k, 64))
                return BAD(c->p, mp, "member names must be 1..64 of A-Z a-z 0-9 _ -");
            int n = snprintf(mk, sizeof mk, "%s.%s", key, k);
            if (n < 0 || (size_t)n >= sizeof mk)
                return BAD(c->p, mp, "nested too deep");
            if (put_value(c, part, m, mk, mp, depth + 1) < 0)
                return -1;
        }
        return 0;
    }
    return BAD(c->p, ptr, json_is_object(v) ? "nested too deep"
                          : "expected a string, number, boolean or object");
}

static int map_field(struct ctx *c, int part, const struct fdef *f, json_t *v, const char *ptr)
{
    char b[48];
    int n;
    const char *s;
    size_t len;
    switch (f->t) {
    case F_STR:
        if (want_str(c, v, ptr, strcmp(f->name, "text") == 0 ? c->lim->max_text : 4096, &s,
                     &len) < 0)
            return -1;
        return pput(c, part, f->name, s, len, ptr);
    case F_URL:
        if (want_str(c, v, ptr, 4096, &s, &len) < 0)
            return -1;
        if (!is_http_url(s))
            return BAD(c->p, ptr, "expected an http:// or https:// URL");
        return pput(c, part, f->name, s, len, ptr);
    case F_FORMAT:
        if (want_str(c, v, ptr, 16, &s, &len) < 0)
            return -1;
        if (strcmp(s, "plain") && strcmp(s, "markdown") && strcmp(s, "html"))
            return BAD(c->p, ptr, "expected \"plain\", \"markdown\" or \"html\"");
        return pput(c, part, f->name, s, len, ptr);
    case F_SHA:
        if (want_str(c, v, ptr, 64, &s, &len) < 0)
            return -1;
        if (len != 64 || strspn(s, "0123456789abcdef") != 64)
            return BAD(c->p, ptr, "expected 64 lowercase hex digits");
        return pput(c, part, f->name, s, len, ptr);
    case F_UINT:
    case F_INT:
        if (!json_is_integer(v))
            return BAD(c->p, ptr, "expected an integer");
        if (f->t == F_UINT && json_integer_value(v) < 0)
            return BAD(c->p, ptr, "must not be negative");
        n = snprintf(b, sizeof b, "%lld", (long long)json_integer_value(v));
        return pput(c, part, f->name, b, (size_t)n, ptr);
    case F_LAT:
    case F_LON: {
        if (!json_is_number(v))
            return BAD(c->p, ptr, "expected a number");
        double d = json_number_value(v), lim = f->t == F_LAT ? 90 : 180;
        if (!(d >= -lim && d <= lim))
            return BAD(c->p, ptr, "out of range -%g..%g", lim, lim);
        /* Always with a '.' or exponent: the envelope types these as float. */
        n = snprintf(b, sizeof b, "%.17g", d);
        if (!strpbrk(b, ".e"))
            n = snprintf(b, sizeof b, "%.1f", d);
        return pput(c, part, f->name, b, (size_t)n, ptr);
    }
    case F_ANY:
        return put_value(c, part, v, f->name, ptr, 0);
    }
    return -1;
}

static int map_part(struct ctx *c, json_t *v, const char *ptr)
{
    if (!json_is_object(v))
        return BAD(c->p, ptr, "expected an object with \"kind\"");
    char kp[256];
    ptr_join(kp, sizeof kp, ptr, "kind");
    json_t *kv = json_object_get(v, "kind");
    const char *kind;
    size_t klen;
    if (!kv)
        return BAD(c->p, kp, "required");
    if (want_str(c, kv, kp, 64, &kind, &klen) < 0)
        return -1;
    size_t ki;
    for (ki = 0; ki < sizeof kinds / sizeof kinds[0]; ki++)
        if (strcmp(kinds[ki].kind, kind) == 0)
            break;
    if (ki == sizeof kinds / sizeof kinds[0]) {
        /* Extension kinds: x-<name>, scalar members passed on as text. */
        if (strncmp(kind, "x-", 2) != 0 || !name_token(kind + 2, 62))
            return BAD(c->p, kp, "unknown kind \"%s\" (text, image, voice, video, file, "
                                 "location, link, event, or x-<name>)", kind);
        int part = c->s->part_add(c->s->arg, kind);
        if (part < 0)
            return sink_fail(c, kp, part);
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m) {
            if (strcmp(k, "kind") == 0)
                continue;
            char mp[256];
            ptr_join(mp, sizeof mp, ptr, k);
            if (!name_token(k, 64))
                return BAD(c->p, mp, "member names must be 1..64 of A-Z a-z 0-9 _ -");
            if (put_value(c, part, m, k, mp, 0) < 0)
                return -1;
        }
        return 0;
    }
    const struct fdef *f = kinds[ki].f;
    const char *k;
    json_t *m;
    json_object_foreach(v, k, m) {
        if (strcmp(k, "kind") == 0)
            continue;
        size_t i;
        for (i = 0; f[i].name; i++)
            if (strcmp(f[i].name, k) == 0)
                break;
        if (!f[i].name) {
            char mp[256];
            ptr_join(mp, sizeof mp, ptr, k);
            return BAD(c->p, mp, "unknown field for kind \"%s\"", kind);
        }
    }
    int have = 0;
    for (size_t r = 0; r < 3 && kinds[ki].required[r]; r++) {
        int got = json_object_get(v, kinds[ki].required[r]) != NULL;
        if (!kinds[ki].one_of && !got) {
            char mp[256];
            ptr_join(mp, sizeof mp, ptr, kinds[ki].required[r]);
            return BAD(c->p, mp, "required for kind \"%s\"", kind);
        }
        have |= got;
    }
    if (kinds[ki].one_of && !have) {
        char mp[256];
        ptr_join(mp, sizeof mp, ptr, "media_id");
        return BAD(c->p, mp, "kind \"%s\" needs media_id or url (media travel by reference)",
                   kind);
    }
    int part = c->s->part_add(c->s->arg, kind);
    if (part < 0)
        return sink_fail(c, kp, part);
    /* In the order of the definition, so the envelope does not depend on
     * the order of the client's members. */
    for (size_t i = 0; f[i].name; i++) {
        json_t *fv = json_object_get(v, f[i].name);
        if (!fv)
            continue;
        char mp[256];
        ptr_join(mp, sizeof mp, ptr, f[i].name);
        if (map_field(c, part, &f[i], fv, mp) < 0)
            return -1;
    }
    return 0;
}

static int map_parts(struct ctx *c, json_t *arr, const char *ptr)
{
    if (!json_is_array(arr))
        return BAD(c->p, ptr, "expected an array of parts");
    size_t n = json_array_size(arr);
    if (n == 0)
        return BAD(c->p, ptr, "at least one part");
    if (n > c->lim->max_parts)
        return BAD(c->p, ptr, "%zu parts, at most %zu", n, c->lim->max_parts);
    for (size_t i = 0; i < n; i++) {
        char pp[256];
        ptr_index(pp, sizeof pp, ptr, i);
        if (map_part(c, json_array_get(arr, i), pp) < 0)
            return -1;
    }
    return 0;
}

static int put_text_part(struct ctx *c, json_t *v, const char *ptr)
{
    const char *s;
    size_t n;
    if (want_str(c, v, ptr, c->lim->max_text, &s, &n) < 0)
        return -1;
    int part = c->s->part_add(c->s->arg, "text");
    if (part < 0)
        return sink_fail(c, ptr, part);
    return pput(c, part, "text", s, n, ptr);
}

static const char *const conv_opt[] = { "kind", "thread", "name", NULL };
static const char *const person_opt[] = { "name", "role", NULL };

static int map_native(struct ctx *c, json_t *obj, const char *base)
{
    static const char *const known[] = { "type", "conversation", "sender", "recipient",
                                         "parts", "text", "reply_to", "ts", "metadata",
                                         NULL };
    char ptr[256];
    const char *k;
    json_t *v;
    json_object_foreach(obj, k, v) {
        size_t i;
        for (i = 0; known[i]; i++)
            if (strcmp(known[i], k) == 0)
                break;
        if (!known[i]) {
            ptr_join(ptr, sizeof ptr, base, k);
            return BAD(c->p, ptr, "unknown field");
        }
    }
    const char *type = "message";
    json_t *t = json_object_get(obj, "type");
    if (t) {
        ptr_join(ptr, sizeof ptr, base, "type");
        if (!json_is_string(t) || (strcmp(json_string_value(t), "message") &&
                                   strcmp(json_string_value(t), "event")))
            return BAD(c->p, ptr, "expected \"message\" or \"event\"");
        type = json_string_value(t);
    }
    int rc = c->s->begin(c->s->arg, type);
    if (rc < 0)
        return sink_fail(c, base, rc);

    static const char *const need[] = { "conversation", "sender" };
    for (size_t i = 0; i < 2; i++) {
        json_t *id = json_object_get(obj, need[i]);
        if (!id) {
            ptr_join(ptr, sizeof ptr, base, need[i]);
            return BAD(c->p, ptr, "required");
        }
        if (map_identity(c, id, base, need[i], i == 0 ? conv_opt : person_opt) < 0)
            return -1;
    }
    json_t *rcp = json_object_get(obj, "recipient");
    if (rcp && map_identity(c, rcp, base, "recipient", person_opt) < 0)
        return -1;

    json_t *parts = json_object_get(obj, "parts"), *text = json_object_get(obj, "text");
    if (parts && text) {
        ptr_join(ptr, sizeof ptr, base, "text");
        return BAD(c->p, ptr, "give either \"text\" or \"parts\", not both");
    }
    if (!parts && !text) {
        ptr_join(ptr, sizeof ptr, base, "parts");
        return BAD(c->p, ptr, "required (or \"text\" for one text part)");
    }
    if (text) {
        ptr_join(ptr, sizeof ptr, base, "text");
        if (put_text_part(c, text, ptr) < 0)
            return -1;
    } else {
        ptr_join(ptr, sizeof ptr, base, "parts");
        if (map_parts(c, parts, ptr) < 0)
            return -1;
    }

    json_t *rt = json_object_get(obj, "reply_to");
    if (rt) {
        const char *s;
        size_t n;
        ptr_join(ptr, sizeof ptr, base, "reply_to");
        if (want_str(c, rt, ptr, 64, &s, &n) < 0 || put(c, "reply_to", s, n, ptr) < 0)
            return -1;
    }
    json_t *ts = json_object_get(obj, "ts");
    if (ts) {
        ptr_join(ptr, sizeof ptr, base, "ts");
        if (!json_is_integer(ts) || json_integer_value(ts) < 0)
            return BAD(c->p, ptr, "expected the channel time in ms since the epoch");
        rc = c->s->set_int(c->s->arg, "ts.channel", json_integer_value(ts));
        if (rc < 0)
            return sink_fail(c, ptr, rc);
    }
    json_t *md = json_object_get(obj, "metadata");
    if (md) {
        char mp[256];
        ptr_join(mp, sizeof mp, base, "metadata");
        if (!json_is_object(md))
            return BAD(c->p, mp, "expected an object");
        if (json_object_size(md) > 32)
            return BAD(c->p, mp, "at most 32 members");
        json_object_foreach(md, k, v) {
            char key[96];
            ptr_join(ptr, sizeof ptr, mp, k);
            if (!name_token(k, 64))
                return BAD(c->p, ptr, "member names must be 1..64 of A-Z a-z 0-9 _ -");
            snprintf(key, sizeof key, "channel_data.%s", k);
            if (json_is_integer(v)) {
                rc = c->s->set_int(c->s->arg, key, json_integer_value(v));
                if (rc < 0)
                    return sink_fail(c, ptr, rc);
            } else if (json_is_string(v)) {
                if (json_string_length(v) > 4096)
                    return BAD(c->p, ptr, "longer than 4096 bytes");
                if (put(c, key, json_string_value(v), json_string_length(v), ptr) < 0)
                    return -1;
            } else if (json_is_boolean(v)) {
                if (put(c, key, json_is_true(v) ? "true" : "false", json_is_true(v) ? 4 : 5,
                        ptr) < 0)
                    return -1;
            } else {
                return BAD(c->p, ptr, "expected a string, integer or boolean");
            }
        }
    }
    return 0;
}

/* A mapped scalar as text: strings as they are, integers in decimal. */
static int scalar_text(json_t *v, char *b, size_t cap, const char **s, size_t *n)
{
    if (json_is_string(v)) {
        *s = json_string_value(v);
        *n = json_string_length(v);
        return *n ? 0 : -1;
    }
    if (json_is_integer(v)) {
        int k = snprintf(b, cap, "%lld", (long long)json_integer_value(v));
        *s = b;
        *n = (size_t)k;
        return 0;
    }
    if (json_is_boolean(v)) {
        *s = json_is_true(v) ? "true" : "false";
        *n = strlen(*s);
        return 0;
    }
    return -1;
}

static int map_foreign(struct ctx *c, json_t *obj, const struct rest_map *map)
{
    int rc = c->s->begin(c->s->arg, map->type ? map->type : "message");
    if (rc < 0)
        return sink_fail(c, "", rc);
    char b[32];
    const char *s;
    size_t n;
    const char *need[2] = { map->conversation, map->sender };
    const char *keys[2] = { "conversation.id", "sender.id" };
    for (int i = 0; i < 2; i++) {
        json_t *v = rest_pointer_get(obj, need[i]);
        if (!v)
            return BAD(c->p, need[i], "required (mapped to %s)", keys[i]);
        if (scalar_text(v, b, sizeof b, &s, &n) < 0)
            return BAD(c->p, need[i], "expected a non-empty string or an integer "
                                      "(mapped to %s)", keys[i]);
        if (n > c->lim->max_id)
            return BAD(c->p, need[i], "longer than %zu bytes", c->lim->max_id);
        if (put(c, keys[i], s, n, need[i]) < 0)
            return -1;
    }
    int parts = 0;
    if (map->text) {
        json_t *v = rest_pointer_get(obj, map->text);
        if (v) {
            if (put_text_part(c, v, map->text) < 0)
                return -1;
            parts++;
        }
    }
    if (map->event) {
        json_t *v = rest_pointer_get(obj, map->event);
        if (v) {
            if (scalar_text(v, b, sizeof b, &s, &n) < 0 || n > 256)
                return BAD(c->p, map->event, "expected an event name");
            int part = c->s->part_add(c->s->arg, "event");
            if (part < 0)
                return sink_fail(c, map->event, part);
            if (pput(c, part, "name", s, n, map->event) < 0)
                return -1;
            parts++;
        }
    }
    if (map->parts) {
        json_t *v = rest_pointer_get(obj, map->parts);
        if (v) {
            if (map_parts(c, v, map->parts) < 0)
                return -1;
            parts++;
        }
    }
    if (!parts) {
        const char *ptr = map->text ? map->text : map->event ? map->event
                          : map->parts ? map->parts : "";
        return BAD(c->p, ptr, "no content: nothing at the configured text/event/parts "
                              "pointers");
    }
    for (size_t i = 0; i < map->nfields; i++) {
        json_t *v = rest_pointer_get(obj, map->fields[i].pointer);
        if (!v || json_is_null(v))
            continue;
        const char *key = map->fields[i].key;
        if (strcmp(key, "ts.channel") == 0) {
            if (!json_is_integer(v) || json_integer_value(v) < 0)
                return BAD(c->p, map->fields[i].pointer, "expected ms since the epoch");
            rc = c->s->set_int(c->s->arg, key, json_integer_value(v));
            if (rc < 0)
                return sink_fail(c, map->fields[i].pointer, rc);
            continue;
        }
        if (scalar_text(v, b, sizeof b, &s, &n) < 0)
            return BAD(c->p, map->fields[i].pointer,
                       "expected a non-empty string, integer or boolean (mapped to %s)", key);
        if (n > 4096)
            return BAD(c->p, map->fields[i].pointer, "longer than 4096 bytes");
        if (put(c, key, s, n, map->fields[i].pointer) < 0)
            return -1;
    }
    return 0;
}

int rest_map_message(json_t *obj, const char *base, const struct rest_map *map,
                     const struct rest_limits *lim, const struct kfg_msg_sink *s,
                     struct rest_problem *p)
{
    struct ctx c = { s, lim, p };
    if (!json_is_object(obj))
        return BAD(p, base, "expected a message object");
    if (map && map->enabled)
        return map_foreign(&c, obj, map);
    return map_native(&c, obj, base);
}

json_t *rest_parse_body(const char *body, size_t len, const struct rest_map *map,
                        const struct rest_limits *lim, json_t ***items, size_t *n,
                        int *batch, struct rest_problem *p)
{
    json_error_t err;
    *items = NULL;
    *n = 0;
    *batch = 0;
    if (len == 0) {
        rest_problem_set(p, 400, "malformed-json", "Malformed JSON body", "",
                         "the body is empty");
        return NULL;
    }
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);
    if (!root) {
        rest_problem_set(p, 400, "malformed-json", "Malformed JSON body", "",
                         "line %d, column %d: %s", err.line, err.column, err.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        rest_problem_set(p, 400, "invalid-field", "Invalid request field", "",
                         "expected a JSON object (one message, or {\"messages\": [...]})");
        json_decref(root);
        return NULL;
    }
    json_t *msgs = (map && map->enabled) ? NULL : json_object_get(root, "messages");
    if (!msgs) {
        *items = malloc(sizeof **items);
        if (!*items)
            goto oom;
        (*items)[0] = root;
        *n = 1;
        return root;
    }
    *batch = 1;
    if (json_object_size(root) != 1) {
        const char *k;
        json_t *v;
        json_object_foreach(root, k, v) {
            if (strcmp(k, "messages") == 0)
                continue;
            char ptr[256] = "";
            rest_pointer_push(ptr, sizeof ptr, k);
            rest_problem_set(p, 400, "invalid-field", "Invalid request field", ptr,
                             "a batch has only \"messages\"");
            json_decref(root);
            return NULL;
        }
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        rest_problem_set(p, 400, "invalid-field", "Invalid request field", "/messages",
                         "expected a non-empty array of messages");
        json_decref(root);
        return NULL;
    }
    size_t cnt = json_array_size(msgs);
    if (cnt > lim->max_batch) {
        rest_problem_set(p, 413, "batch-too-large", "Batch too large", "/messages",
                         "%zu messages, at most %zu per request", cnt, lim->max_batch);
        json_decref(root);
        return NULL;
    }
    *items = malloc(cnt * sizeof **items);
    if (!*items)
        goto oom;
    for (size_t i = 0; i < cnt; i++)
        (*items)[i] = json_array_get(msgs, i);
    *n = cnt;
    return root;
oom:
    rest_problem_set(p, 500, "internal", "Internal error", NULL, "out of memory");
    json_decref(root);
    return NULL;
}

int rest_map_add_field(struct rest_map *map, const char *spec, char *why, size_t cap)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec) {
        snprintf(why, cap, "map_fields entry \"%s\": expected \"envelope.key=/json/pointer\"",
                 spec);
        return -1;
    }
    size_t kl = (size_t)(eq - spec);
    if (map->nfields >= REST_MAP_FIELDS_MAX || kl >= sizeof map->fields[0].key) {
        snprintf(why, cap, "map_fields: at most %d entries, keys under 128 bytes",
                 REST_MAP_FIELDS_MAX);
        return -1;
    }
    char key[128];
    memcpy(key, spec, kl);
    key[kl] = '\0';
    static const char *const allowed[] = {
        "conversation.kind", "conversation.thread", "conversation.name", "sender.name",
        "sender.role", "recipient.id", "recipient.name", "recipient.role", "reply_to",
        "ts.channel", NULL
    };
    int ok = strncmp(key, "channel_data.", 13) == 0 && key[13] && !strstr(key, "..") &&
             key[kl - 1] != '.';
    for (size_t i = 0; allowed[i] && !ok; i++)
        ok = strcmp(allowed[i], key) == 0;
    if (!ok) {
        snprintf(why, cap, "map_fields entry \"%s\": \"%s\" cannot be mapped (use "
                 "conversation.kind/thread/name, sender.name/role, recipient.*, reply_to, "
                 "ts.channel or channel_data.<name>)", spec, key);
        return -1;
    }
    if (!rest_pointer_valid(eq + 1) || eq[1] == '\0') {
        snprintf(why, cap, "map_fields entry \"%s\": \"%s\" is not a JSON pointer", spec, eq + 1);
        return -1;
    }
    memcpy(map->fields[map->nfields].key, key, kl + 1);
    map->fields[map->nfields].pointer = eq + 1;
    map->nfields++;
    return 0;
}
