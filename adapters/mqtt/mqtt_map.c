/*
 * MQTT adapter: URLs, templates, topic filters with captures and the
 * payload mapping (JSON pointers over JSON, msgpack converted to the same
 * tree, raw bytes). Everything a device sends passes through here before
 * the host sees it, so every limit is checked and every refusal says which
 * field and why.
 */
#include "mqtt.h"

#include <ctype.h>
#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static int fail(char *why, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *why, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, cap, fmt, ap);
    va_end(ap);
    return -1;
}

static int prob(struct mqt_problem *p, enum mqt_err e, const char *ptr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int prob(struct mqt_problem *p, enum mqt_err e, const char *ptr, const char *fmt, ...)
{
    p->err = e;
    snprintf(p->pointer, sizeof p->pointer, "%s", ptr ? ptr : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->detail, sizeof p->detail, fmt, ap);
    va_end(ap);
    return -1;
}

const char *mqt_err_code(enum mqt_err e)
{
    static const char *const c[MQT_E__N] = { "none", "too_large", "invalid_json",
                                             "invalid_msgpack", "missing_field",
                                             "invalid_field", "refused" };
    return (unsigned)e < MQT_E__N ? c[e] : "unknown";
}

/* ---------------------------------------------------------------------------
 * URLs.
 */
int mqt_url_parse(const char *url, struct mqt_url *out, char *why, size_t cap)
{
    memset(out, 0, sizeof *out);
    const char *p;
    if (!url)
        return fail(why, cap, "empty broker URL");
    if (!strncasecmp(url, "mqtt://", 7) || !strncasecmp(url, "tcp://", 6)) {
        p = strstr(url, "://") + 3;
        out->port = 1883;
    } else if (!strncasecmp(url, "mqtts://", 8) || !strncasecmp(url, "ssl://", 6)) {
        p = strstr(url, "://") + 3;
        out->tls = 1;
        out->port = 8883;
    } else {
        return fail(why, cap, "broker URL \"%s\": expected mqtt://host[:port] or "
                              "mqtts://host[:port]", url);
    }
    const char *auth_end = p + strcspn(p, "/?#");
    if (memchr(p, '@', (size_t)(auth_end - p)))
        return fail(why, cap, "broker URL \"%s\": no credentials in the URL (use username "
                              "and password)", url);
    const char *hs = p, *he;
    if (*p == '[') {
        hs = ++p;
        he = strchr(p, ']');
        if (!he)
            return fail(why, cap, "broker URL \"%s\": unterminated IPv6 literal", url);
        p = he + 1;
    } else {
        while (*p && *p != ':' && *p != '/' && *p != '?' && *p != '#' && *p != '@')
            p++;
        he = p;
    }
    size_t hl = (size_t)(he - hs);
    if (hl == 0 || hl >= sizeof out->host)
        return fail(why, cap, "broker URL \"%s\": missing or too long host", url);
    for (size_t i = 0; i < hl; i++)
        if (!isalnum((unsigned char)hs[i]) && !strchr(".-_:%", hs[i]))
            return fail(why, cap, "broker URL \"%s\": invalid character in host", url);
    memcpy(out->host, hs, hl);
    out->host[hl] = '\0';
    if (*p == ':') {
        p++;
        long port = 0;
        const char *ds = p;
        while (*p >= '0' && *p <= '9' && port <= 65535)
            port = port * 10 + (*p++ - '0');
        if (p == ds || port < 1 || port > 65535)
            return fail(why, cap, "broker URL \"%s\": port must be 1..65535", url);
        out->port = (int)port;
    }
    if (*p == '/' && p[1] == '\0')
        p++;
    if (*p)
        return fail(why, cap, "broker URL \"%s\": unexpected \"%s\" after host and port", url,
                    p);
    return 0;
}

/* ---------------------------------------------------------------------------
 * Templates.
 */
static int name_ok(const char *s, size_t n)
{
    if (n == 0 || n >= MQT_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-')
            return 0;
    return 1;
}

int mqt_tmpl_parse(const char *s, size_t len, struct mqt_tmpl *t, char *why, size_t cap)
{
    memset(t, 0, sizeof *t);
    size_t o = 0, lit_start = 0, i = 0;
    while (i < len) {
        char c = s[i];
        if (c == '{' && i + 1 < len && s[i + 1] == '{') {
            if (o + 1 >= sizeof t->text)
                return fail(why, cap, "template \"%.*s\" too long", (int)len, s);
            t->text[o++] = '{';
            i += 2;
            continue;
        }
        if (c == '}' && i + 1 < len && s[i + 1] == '}') {
            if (o + 1 >= sizeof t->text)
                return fail(why, cap, "template \"%.*s\" too long", (int)len, s);
            t->text[o++] = '}';
            i += 2;
            continue;
        }
        if (c == '{') {
            const char *e = memchr(s + i + 1, '}', len - i - 1);
            if (!e)
                return fail(why, cap, "template \"%.*s\": unterminated '{'", (int)len, s);
            size_t nl = (size_t)(e - (s + i + 1));
            if (!name_ok(s + i + 1, nl))
                return fail(why, cap, "template \"%.*s\": variable names are 1..%d of "
                                      "A-Z a-z 0-9 _ -", (int)len, s, MQT_NAME_MAX - 1);
            if (t->nseg >= MQT_TMPL_MAX)
                return fail(why, cap, "template \"%.*s\": more than %d variables", (int)len,
                            s, MQT_TMPL_MAX);
            t->seg[t->nseg].lit_off = (uint16_t)lit_start;
            t->seg[t->nseg].lit_len = (uint16_t)(o - lit_start);
            memcpy(t->seg[t->nseg].name, s + i + 1, nl);
            t->nseg++;
            lit_start = o;
            i += nl + 2;
            continue;
        }
        if (c == '}')
            return fail(why, cap, "template \"%.*s\": stray '}' (write \"}}\")", (int)len, s);
        if (c == '\0')
            return fail(why, cap, "template contains NUL");
        if (o + 1 >= sizeof t->text)
            return fail(why, cap, "template \"%.*s\" too long", (int)len, s);
        t->text[o++] = c;
        i++;
    }
    t->seg[t->nseg].lit_off = (uint16_t)lit_start;
    t->seg[t->nseg].lit_len = (uint16_t)(o - lit_start);
    t->seg[t->nseg].name[0] = '\0';
    t->nseg++;
    return 0;
}

size_t mqt_tmpl_vars(const struct mqt_tmpl *t)
{
    return t->nseg ? t->nseg - 1 : 0;
}

int mqt_tmpl_render(const struct mqt_tmpl *t, mqt_resolve_fn fn, void *arg, int topic_safe,
                    char *out, size_t cap, char *why, size_t wcap)
{
    size_t o = 0;
    for (size_t i = 0; i < t->nseg; i++) {
        size_t ll = t->seg[i].lit_len;
        if (o + ll >= cap)
            return fail(why, wcap, "result longer than %zu bytes", cap - 1);
        memcpy(out + o, t->text + t->seg[i].lit_off, ll);
        o += ll;
        if (!t->seg[i].name[0])
            continue;
        const char *v;
        size_t vl;
        if (fn(arg, t->seg[i].name, &v, &vl) != 0)
            return fail(why, wcap, "no value for {%s}", t->seg[i].name);
        if (topic_safe) {
            if (vl == 0)
                return fail(why, wcap, "{%s} is empty", t->seg[i].name);
            for (size_t k = 0; k < vl; k++)
                if (v[k] == '/' || v[k] == '+' || v[k] == '#' || v[k] == '\0')
                    return fail(why, wcap, "{%s} contains '%c', which would change the "
                                           "topic's levels", t->seg[i].name,
                                v[k] ? v[k] : '0');
        }
        if (o + vl >= cap)
            return fail(why, wcap, "result longer than %zu bytes", cap - 1);
        memcpy(out + o, v, vl);
        o += vl;
    }
    out[o] = '\0';
    return (int)o;
}

/* ---------------------------------------------------------------------------
 * Topic filters.
 */
int mqt_key_mappable(const char *key)
{
    static const char *const allowed[] = {
        "conversation.id", "conversation.kind", "conversation.thread", "conversation.name",
        "sender.id", "sender.name", "sender.role", "recipient.id", "recipient.name",
        "recipient.role", NULL
    };
    for (size_t i = 0; allowed[i]; i++)
        if (!strcmp(allowed[i], key))
            return 1;
    size_t n = strlen(key);
    if (strncmp(key, "channel_data.", 13) || n == 13 || n > 200 || key[n - 1] == '.' ||
        strstr(key, ".."))
        return 0;
    for (size_t i = 13; i < n; i++)
        if (!isalnum((unsigned char)key[i]) && !strchr("_-.", key[i]))
            return 0;
    return 1;
}

static void trim(const char **s, size_t *n)
{
    while (*n && isspace((unsigned char)**s))
        (*s)++, (*n)--;
    while (*n && isspace((unsigned char)(*s)[*n - 1]))
        (*n)--;
}

int mqt_filter_cap(const struct mqt_filter *f, const char *name)
{
    for (size_t i = 0; i < f->ncaps; i++)
        if (!strcmp(f->caps[i], name))
            return (int)i;
    return -1;
}

static int tmpl_check_caps(const struct mqt_filter *f, const struct mqt_tmpl *t, char *why,
                           size_t cap, const char *what)
{
    for (size_t i = 0; i + 1 < t->nseg; i++)
        if (mqt_filter_cap(f, t->seg[i].name) < 0)
            return fail(why, cap, "filter \"%s\": %s uses {%s}, which the filter does not "
                                  "capture", f->sub, what, t->seg[i].name);
    return 0;
}

int mqt_filter_parse(const char *spec, struct mqt_filter *f, char *why, size_t cap)
{
    memset(f, 0, sizeof *f);
    const char *arrow = strstr(spec, "=>");
    const char *ps = spec;
    size_t pl = arrow ? (size_t)(arrow - spec) : strlen(spec);
    trim(&ps, &pl);
    if (pl == 0)
        return fail(why, cap, "topic filter \"%s\": empty", spec);
    size_t o = 0, i = 0;
    /* A shared subscription ($share/<group>/<filter>, MQTT 5 and Mosquitto
     * for 3.1.1 too): the broker delivers the plain topic, so only the
     * filter after the group is matched. */
    if (pl > 7 && !memcmp(ps, "$share/", 7)) {
        const char *g = ps + 7;
        const char *ge = memchr(g, '/', pl - 7);
        if (!ge || ge == g || ge + 1 >= ps + pl)
            return fail(why, cap, "topic filter \"%.*s\": expected $share/<group>/<filter>",
                        (int)pl, ps);
        for (const char *c = g; c < ge; c++)
            if (strchr("+#{}", *c))
                return fail(why, cap, "topic filter \"%.*s\": invalid share group", (int)pl,
                            ps);
        o = (size_t)(ge + 1 - ps);
        if (o >= sizeof f->sub)
            goto toolong;
        memcpy(f->sub, ps, o);
        i = o;
    }
    size_t first_level = i;
    while (i <= pl) {
        const char *ls = ps + i;
        const char *slash = memchr(ls, '/', pl - i);
        size_t ll = slash ? (size_t)(slash - ls) : pl - i;
        if (f->nlevels >= MQT_LEVELS_MAX)
            return fail(why, cap, "topic filter \"%.*s\": more than %d levels", (int)pl, ps,
                        MQT_LEVELS_MAX);
        if (i > first_level) {
            if (o + 1 >= sizeof f->sub)
                goto toolong;
            f->sub[o++] = '/';
        }
        uint8_t kind = MQT_LIT;
        if (ll >= 2 && ls[0] == '{' && ls[ll - 1] == '}') {
            if (!name_ok(ls + 1, ll - 2))
                return fail(why, cap, "topic filter \"%.*s\": capture names are 1..%d of "
                                      "A-Z a-z 0-9 _ -", (int)pl, ps, MQT_NAME_MAX - 1);
            if (f->ncaps >= MQT_CAPS_MAX)
                return fail(why, cap, "topic filter \"%.*s\": more than %d captures", (int)pl,
                            ps, MQT_CAPS_MAX);
            char nm[MQT_NAME_MAX];
            memcpy(nm, ls + 1, ll - 2);
            nm[ll - 2] = '\0';
            if (mqt_filter_cap(f, nm) >= 0)
                return fail(why, cap, "topic filter \"%.*s\": capture {%s} twice", (int)pl, ps,
                            nm);
            memcpy(f->caps[f->ncaps], nm, ll - 1);
            kind = MQT_CAP;
            f->lv[f->nlevels].cap = (uint8_t)f->ncaps++;
            if (o + 1 >= sizeof f->sub)
                goto toolong;
            f->sub[o++] = '+';
        } else if (ll == 1 && ls[0] == '+') {
            kind = MQT_PLUS;
            if (o + 1 >= sizeof f->sub)
                goto toolong;
            f->sub[o++] = '+';
        } else if (ll == 1 && ls[0] == '#') {
            if (slash)
                return fail(why, cap, "topic filter \"%.*s\": '#' must be the last level",
                            (int)pl, ps);
            kind = MQT_HASH;
            if (o + 1 >= sizeof f->sub)
                goto toolong;
            f->sub[o++] = '#';
        } else {
            for (size_t k = 0; k < ll; k++)
                if (strchr("+#{}", ls[k]) || ls[k] == '\0')
                    return fail(why, cap, "topic filter \"%.*s\": '%c' inside a level (a "
                                          "level is a literal, {name}, + or a final #)",
                                (int)pl, ps, ls[k]);
            if (o + ll >= sizeof f->sub)
                goto toolong;
            f->lv[f->nlevels].off = (uint16_t)o;
            f->lv[f->nlevels].len = (uint16_t)ll;
            memcpy(f->sub + o, ls, ll);
            o += ll;
        }
        f->lv[f->nlevels].kind = kind;
        f->nlevels++;
        if (!slash)
            break;
        i += ll + 1;
    }
    f->sub[o] = '\0';

    if (arrow) {
        const char *m = arrow + 2;
        while (*m) {
            const char *semi = strchr(m, ';');
            size_t el = semi ? (size_t)(semi - m) : strlen(m);
            const char *es = m;
            trim(&es, &el);
            m = semi ? semi + 1 : m + strlen(m);
            if (el == 0)
                continue;
            const char *eq = memchr(es, '=', el);
            if (!eq)
                return fail(why, cap, "filter \"%s\": mapping \"%.*s\" is not "
                                      "\"envelope.key={capture}\"", f->sub, (int)el, es);
            const char *ks = es;
            size_t kl = (size_t)(eq - es);
            trim(&ks, &kl);
            const char *vs = eq + 1;
            size_t vl = el - (size_t)(vs - es);
            trim(&vs, &vl);
            if (f->nmap >= MQT_FMAP_MAX)
                return fail(why, cap, "filter \"%s\": more than %d mappings", f->sub,
                            MQT_FMAP_MAX);
            if (kl == 0 || kl >= sizeof f->map[0].key)
                return fail(why, cap, "filter \"%s\": empty or too long key", f->sub);
            memcpy(f->map[f->nmap].key, ks, kl);
            f->map[f->nmap].key[kl] = '\0';
            if (!mqt_key_mappable(f->map[f->nmap].key))
                return fail(why, cap, "filter \"%s\": \"%s\" cannot be mapped (conversation.*, "
                                      "sender.*, recipient.* or channel_data.<name>)",
                            f->sub, f->map[f->nmap].key);
            for (size_t k = 0; k < f->nmap; k++)
                if (!strcmp(f->map[k].key, f->map[f->nmap].key))
                    return fail(why, cap, "filter \"%s\": \"%s\" mapped twice", f->sub,
                                f->map[k].key);
            if (mqt_tmpl_parse(vs, vl, &f->map[f->nmap].t, why, cap) != 0)
                return -1;
            if (tmpl_check_caps(f, &f->map[f->nmap].t, why, cap, f->map[f->nmap].key) != 0)
                return -1;
            f->nmap++;
        }
    }
    return 0;
toolong:
    return fail(why, cap, "topic filter \"%.*s\": longer than %zu bytes", (int)pl, ps,
                sizeof f->sub - 1);
}

int mqt_filter_match(const struct mqt_filter *f, const char *topic, size_t len,
                     struct mqt_caps *caps)
{
    caps->n = f->ncaps;
    size_t pos = 0;
    for (size_t l = 0; l < f->nlevels; l++) {
        if (f->lv[l].kind == MQT_HASH)
            return 1;   /* "a/#" also matches "a" (MQTT 3.1.1 4.7.1.2) */
        if (pos > len)
            return 0;
        const char *ls = topic + pos;
        const char *slash = memchr(ls, '/', len - pos);
        size_t ll = slash ? (size_t)(slash - ls) : len - pos;
        switch (f->lv[l].kind) {
        case MQT_LIT:
            if (ll != f->lv[l].len || memcmp(ls, f->sub + f->lv[l].off, ll))
                return 0;
            break;
        case MQT_CAP:
            caps->v[f->lv[l].cap].ptr = ls;
            caps->v[f->lv[l].cap].len = ll;
            break;
        default:
            break;
        }
        /* Past the last level: pos > len marks "no more levels". */
        pos += ll + 1;
        if (!slash && l + 1 < f->nlevels && f->lv[l + 1].kind == MQT_HASH)
            return 1;
    }
    return pos == len + 1;
}

/* ---------------------------------------------------------------------------
 * Small helpers.
 */
size_t mqt_base64(const void *in, size_t len, char *out)
{
    static const char tb[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *s = in;
    size_t o = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        out[o++] = tb[v >> 18];
        out[o++] = tb[(v >> 12) & 63];
        out[o++] = tb[(v >> 6) & 63];
        out[o++] = tb[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < len ? (uint32_t)s[i + 1] << 8 : 0);
        out[o++] = tb[v >> 18];
        out[o++] = tb[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tb[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

int mqt_utf8_ok(const void *buf, size_t len)
{
    const unsigned char *s = buf;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf)
            n = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            n = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            n = 3, cp = c & 0x07;
        else
            return 0;
        if (i + n >= len)
            return 0;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += n + 1;
    }
    return 1;
}

/* ---------------------------------------------------------------------------
 * JSON pointers (RFC 6901).
 */
int mqt_pointer_valid(const char *ptr)
{
    if (!ptr || (*ptr && *ptr != '/'))
        return 0;
    for (const char *c = ptr; *c; c++)
        if (*c == '~' && c[1] != '0' && c[1] != '1')
            return 0;
    return 1;
}

json_t *mqt_pointer_get(json_t *root, const char *ptr)
{
    if (!mqt_pointer_valid(ptr))
        return NULL;
    json_t *cur = root;
    const char *p = ptr;
    char tok[256];
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

/* ---------------------------------------------------------------------------
 * msgpack -> JSON.
 */
#define MP_DEPTH_MAX 32

static json_t *mp_conv(const msgpack_object *o, int depth, struct mqt_problem *p)
{
    if (depth > MP_DEPTH_MAX) {
        prob(p, MQT_E_MSGPACK, "", "nested deeper than %d levels", MP_DEPTH_MAX);
        return NULL;
    }
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return json_null();
    case MSGPACK_OBJECT_BOOLEAN:
        return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX) {
            prob(p, MQT_E_MSGPACK, "", "integer %llu above 2^63-1",
                 (unsigned long long)o->via.u64);
            return NULL;
        }
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: {
        double d = o->via.f64;
        if (d != d || d - d != 0) {
            prob(p, MQT_E_MSGPACK, "", "NaN or infinity");
            return NULL;
        }
        return json_real(d);
    }
    case MSGPACK_OBJECT_STR:
        if (!mqt_utf8_ok(o->via.str.ptr, o->via.str.size)) {
            prob(p, MQT_E_MSGPACK, "", "string is not UTF-8 (or contains NUL)");
            return NULL;
        }
        /* msgpack-c may hand out NULL for an empty string. */
        return json_stringn(o->via.str.size ? o->via.str.ptr : "", o->via.str.size);
    case MSGPACK_OBJECT_BIN: {
        char *b = malloc(4 * ((o->via.bin.size + 2) / 3) + 1);
        if (!b) {
            prob(p, MQT_E_MSGPACK, "", "out of memory");
            return NULL;
        }
        size_t n = mqt_base64(o->via.bin.ptr, o->via.bin.size, b);
        json_t *s = json_stringn(b, n);
        free(b);
        if (!s)
            prob(p, MQT_E_MSGPACK, "", "out of memory");
        return s;
    }
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < o->via.array.size; i++) {
            json_t *v = mp_conv(&o->via.array.ptr[i], depth + 1, p);
            if (!v || json_array_append_new(a, v)) {
                json_decref(a);
                if (v)
                    prob(p, MQT_E_MSGPACK, "", "cannot build the array");
                return NULL;
            }
        }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            const char *ks = k->via.str.size ? k->via.str.ptr : "";
            if (k->type != MSGPACK_OBJECT_STR) {
                prob(p, MQT_E_MSGPACK, "", "map key is not a string");
                json_decref(m);
                return NULL;
            }
            if (!mqt_utf8_ok(k->via.str.ptr, k->via.str.size)) {
                prob(p, MQT_E_MSGPACK, "", "map key is not UTF-8 (or contains NUL)");
                json_decref(m);
                return NULL;
            }
            if (json_object_getn(m, ks, k->via.str.size)) {
                prob(p, MQT_E_MSGPACK, "", "duplicate map key \"%.*s\"",
                     (int)(k->via.str.size > 64 ? 64 : k->via.str.size), k->via.str.ptr);
                json_decref(m);
                return NULL;
            }
            json_t *v = mp_conv(&o->via.map.ptr[i].val, depth + 1, p);
            if (!v) {
                json_decref(m);
                return NULL;
            }
            if (json_object_setn_new(m, ks, k->via.str.size, v)) {
                json_decref(m);
                prob(p, MQT_E_MSGPACK, "", "cannot build the map");
                return NULL;
            }
        }
        return m;
    }
    default:
        prob(p, MQT_E_MSGPACK, "", "extension types are not accepted");
        return NULL;
    }
}

/* Walks one msgpack value without allocating. msgpack-c sizes a container
 * from its header before reading it, so a 5-byte map header claiming 2^32
 * entries would ask for gigabytes: every count is checked against the
 * bytes that are left first (each element needs at least one). Returns the
 * offset after the value, or 0 on malformed input. */
static size_t mp_scan(const unsigned char *b, size_t len, size_t o, int depth)
{
    if (o >= len || depth > MP_DEPTH_MAX)
        return 0;
    unsigned c = b[o++];
    uint64_t n = 0, skip = 0;
    int kind = 0;   /* 0 scalar of `skip` bytes, 1 array, 2 map */
#define NEED(k) do { if (len - o < (k)) return 0; } while (0)
#define BE(k, out) do { NEED(k); out = 0; for (int i_ = 0; i_ < (k); i_++) out = out << 8 | b[o++]; } while (0)
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
        skip = 0;
    else if (c >= 0x80 && c <= 0x8f)
        kind = 2, n = c & 0x0f;
    else if (c >= 0x90 && c <= 0x9f)
        kind = 1, n = c & 0x0f;
    else if (c >= 0xa0 && c <= 0xbf)
        skip = c & 0x1f;
    else switch (c) {
    case 0xc4: case 0xd9: BE(1, skip); break;
    case 0xc5: case 0xda: BE(2, skip); break;
    case 0xc6: case 0xdb: BE(4, skip); break;
    case 0xc7: BE(1, skip); skip += 1; break;
    case 0xc8: BE(2, skip); skip += 1; break;
    case 0xc9: BE(4, skip); skip += 1; break;
    case 0xca: skip = 4; break;
    case 0xcb: skip = 8; break;
    case 0xcc: case 0xd0: skip = 1; break;
    case 0xcd: case 0xd1: skip = 2; break;
    case 0xce: case 0xd2: skip = 4; break;
    case 0xcf: case 0xd3: skip = 8; break;
    case 0xd4: skip = 2; break;
    case 0xd5: skip = 3; break;
    case 0xd6: skip = 5; break;
    case 0xd7: skip = 9; break;
    case 0xd8: skip = 17; break;
    case 0xdc: kind = 1; BE(2, n); break;
    case 0xdd: kind = 1; BE(4, n); break;
    case 0xde: kind = 2; BE(2, n); break;
    case 0xdf: kind = 2; BE(4, n); break;
    default: return 0;      /* 0xc1 */
    }
#undef BE
    if (kind == 0) {
        NEED(skip);
        return o + skip;
    }
    uint64_t elems = kind == 2 ? 2 * n : n;
    NEED(elems);
#undef NEED
    for (uint64_t i = 0; i < elems; i++)
        if (!(o = mp_scan(b, len, o, depth + 1)))
            return 0;
    return o;
}

json_t *mqt_msgpack_to_json(const void *buf, size_t len, struct mqt_problem *p)
{
    size_t end = mp_scan(buf, len, 0, 0);
    if (!end) {
        prob(p, MQT_E_MSGPACK, "", "not msgpack: truncated, malformed or nested deeper than "
                                   "%d levels", MP_DEPTH_MAX);
        return NULL;
    }
    if (end != len) {
        prob(p, MQT_E_MSGPACK, "", "%zu trailing bytes after the value", len - end);
        return NULL;
    }
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack_next(&u, buf, len, &off);
    json_t *out = NULL;
    if (r == MSGPACK_UNPACK_SUCCESS && off != len)
        prob(p, MQT_E_MSGPACK, "", "%zu trailing bytes after the value", len - off);
    else if (r == MSGPACK_UNPACK_CONTINUE)
        prob(p, MQT_E_MSGPACK, "", "truncated value");
    else if (r == MSGPACK_UNPACK_NOMEM_ERROR)
        prob(p, MQT_E_MSGPACK, "", "too large or too deep to decode");
    else if (r != MSGPACK_UNPACK_SUCCESS)
        prob(p, MQT_E_MSGPACK, "", "not msgpack");
    else
        out = mp_conv(&u.data, 0, p);
    msgpack_unpacked_destroy(&u);
    return out;
}

/* ---------------------------------------------------------------------------
 * Mapping.
 */
int mqt_map_add_field(struct mqt_map *map, const char *spec, char *why, size_t cap)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec)
        return fail(why, cap, "json_fields entry \"%s\": expected \"envelope.key=/pointer\"",
                    spec);
    size_t kl = (size_t)(eq - spec);
    if (map->nfields >= MQT_FIELDS_MAX || kl >= sizeof map->fields[0].key)
        return fail(why, cap, "json_fields: at most %d entries, keys under 64 bytes",
                    MQT_FIELDS_MAX);
    char key[64];
    memcpy(key, spec, kl);
    key[kl] = '\0';
    if (!mqt_key_mappable(key) && strcmp(key, "ts.channel") && strcmp(key, "reply_to"))
        return fail(why, cap, "json_fields entry \"%s\": \"%s\" cannot be mapped "
                              "(conversation.*, sender.*, recipient.*, reply_to, ts.channel "
                              "or channel_data.<name>)", spec, key);
    if (!mqt_pointer_valid(eq + 1) || !eq[1])
        return fail(why, cap, "json_fields entry \"%s\": \"%s\" is not a JSON pointer", spec,
                    eq + 1);
    memcpy(map->fields[map->nfields].key, key, kl + 1);
    map->fields[map->nfields].pointer = eq + 1;
    map->nfields++;
    return 0;
}

struct mctx {
    const struct mqt_map *map;
    const struct kfg_msg_sink *s;
    struct mqt_problem *p;
    size_t value_budget;        /* bytes left for event value members */
    size_t value_keys;
};

static int sink_rc(struct mctx *c, int rc, const char *ptr, const char *key)
{
    if (rc >= 0)
        return 0;
    return prob(c->p, MQT_E_SINK, ptr, "the gateway refused %s (%d)", key, rc);
}

static int put(struct mctx *c, const char *key, const char *v, size_t n, const char *ptr)
{
    return sink_rc(c, c->s->set(c->s->arg, key, v, n), ptr, key);
}

static int pput(struct mctx *c, int part, const char *key, const char *v, size_t n,
                const char *ptr)
{
    return sink_rc(c, c->s->part_set(c->s->arg, part, key, v, n), ptr, key);
}

static const char *jtype(const json_t *v)
{
    return json_is_null(v) ? "null" : json_is_string(v) ? "a string"
           : json_is_integer(v) ? "an integer" : json_is_real(v) ? "a number"
           : json_is_boolean(v) ? "a boolean" : json_is_array(v) ? "an array" : "an object";
}

/* A mapped scalar as text: strings as they are, integers in decimal. */
static int scalar(json_t *v, char *b, size_t cap, const char **s, size_t *n)
{
    if (json_is_string(v)) {
        *s = json_string_value(v);
        *n = json_string_length(v);
        return *n ? 0 : -1;
    }
    if (json_is_integer(v)) {
        *n = (size_t)snprintf(b, cap, "%lld", (long long)json_integer_value(v));
        *s = b;
        return 0;
    }
    if (json_is_boolean(v)) {
        *s = json_is_true(v) ? "true" : "false";
        *n = strlen(*s);
        return 0;
    }
    return -1;
}

/* The text of a number, always with '.' or an exponent for reals. */
static size_t num_text(json_t *v, char *b, size_t cap)
{
    if (json_is_integer(v))
        return (size_t)snprintf(b, cap, "%lld", (long long)json_integer_value(v));
    int n = snprintf(b, cap, "%.17g", json_real_value(v));
    if (!strpbrk(b, ".eE"))
        n = snprintf(b, cap, "%.1f", json_real_value(v));
    return (size_t)n;
}

static int key_segment_ok(const char *k, size_t n)
{
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (k[i] == '.' || (unsigned char)k[i] < 0x20)
            return 0;
    return 1;
}

/* An event value: objects become dotted keys (4 levels), everything else a
 * string; arrays and deeper objects as their compact JSON text. */
static int put_value(struct mctx *c, int part, json_t *v, const char *key, const char *ptr,
                     int depth)
{
    char b[48];
    const char *s;
    size_t n;
    char *dump = NULL;
    if (json_is_object(v) && depth < 4 && json_object_size(v) > 0) {
        const char *k;
        json_t *m;
        json_object_foreach(v, k, m) {
            char mk[256], mp[128];
            size_t kl = strlen(k);
            snprintf(mp, sizeof mp, "%s/%s", ptr, k);
            if (!key_segment_ok(k, kl))
                return prob(c->p, MQT_E_FIELD, mp, "member name must be 1..64 bytes without "
                                                   "'.' or control characters");
            int w = snprintf(mk, sizeof mk, "%s.%s", key, k);
            if (w < 0 || (size_t)w >= sizeof mk)
                return prob(c->p, MQT_E_FIELD, mp, "key path longer than %zu bytes",
                            sizeof mk - 1);
            if (put_value(c, part, m, mk, mp, depth + 1) < 0)
                return -1;
        }
        return 0;
    }
    if (json_is_string(v)) {
        s = json_string_value(v);
        n = json_string_length(v);
    } else if (json_is_number(v)) {
        n = num_text(v, b, sizeof b);
        s = b;
    } else if (json_is_boolean(v)) {
        s = json_is_true(v) ? "true" : "false";
        n = strlen(s);
    } else if (json_is_null(v)) {
        s = "null";
        n = 4;
    } else {
        dump = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!dump)
            return prob(c->p, MQT_E_FIELD, ptr, "cannot encode the value");
        s = dump;
        n = strlen(dump);
    }
    if (++c->value_keys > 128 || n > c->value_budget) {
        free(dump);
        return prob(c->p, MQT_E_FIELD, ptr, "the value is too large for an event (more than "
                                            "128 members or %zu bytes)", c->map->max_text);
    }
    c->value_budget -= n;
    int rc = pput(c, part, key, s, n, ptr);
    free(dump);
    return rc;
}

static int resolve_caps(void *arg, const char *name, const char **val, size_t *len)
{
    const void *const *a = arg;
    const struct mqt_filter *f = a[0];
    const struct mqt_caps *caps = a[1];
    int i = mqt_filter_cap(f, name);
    if (i < 0 || (size_t)i >= caps->n)
        return -1;
    *val = caps->v[i].ptr;
    *len = caps->v[i].len;
    return 0;
}

/* conversation.id / sender.id from the topic: the filter's own mapping,
 * else the instance's template, else the first capture. */
static int topic_identity(struct mctx *c, const struct mqt_filter *f,
                          const struct mqt_caps *caps, const char *key,
                          const struct mqt_tmpl *dflt, int *have)
{
    const void *arg[2] = { f, caps };
    const struct mqt_tmpl *t = dflt;
    for (size_t i = 0; i < f->nmap; i++)
        if (!strcmp(f->map[i].key, key))
            t = &f->map[i].t;
    *have = 0;
    char buf[512], why[128];
    if (t) {
        int n = mqt_tmpl_render(t, resolve_caps, (void *)arg, 0, buf, sizeof buf, why,
                                sizeof why);
        if (n < 0)
            return prob(c->p, MQT_E_MISSING, "", "%s: %s", key, why);
        if (n == 0)
            return 0;
        if ((size_t)n > c->map->max_id)
            return prob(c->p, MQT_E_FIELD, "", "%s from the topic is longer than %zu bytes",
                        key, c->map->max_id);
        *have = 1;
        return put(c, key, buf, (size_t)n, "");
    }
    if (f->ncaps && caps->v[0].len) {
        if (caps->v[0].len > c->map->max_id)
            return prob(c->p, MQT_E_FIELD, "", "%s from the topic is longer than %zu bytes",
                        key, c->map->max_id);
        *have = 1;
        return put(c, key, caps->v[0].ptr, caps->v[0].len, "");
    }
    return 0;
}

static int identities(struct mctx *c, const struct mqt_filter *f, const struct mqt_caps *caps,
                      json_t *root)
{
    static const char *const keys[2] = { "conversation.id", "sender.id" };
    const char *ptrs[2] = { c->map->p_conversation, c->map->p_sender };
    const struct mqt_tmpl *dflt[2] = { c->map->conversation, c->map->sender };
    char b[32];
    for (int i = 0; i < 2; i++) {
        int have = 0;
        if (ptrs[i] && root) {
            json_t *v = mqt_pointer_get(root, ptrs[i]);
            const char *s;
            size_t n;
            if (v) {
                if (scalar(v, b, sizeof b, &s, &n) < 0)
                    return prob(c->p, MQT_E_FIELD, ptrs[i], "expected a non-empty string or "
                                "an integer for %s, got %s", keys[i], jtype(v));
                if (n > c->map->max_id)
                    return prob(c->p, MQT_E_FIELD, ptrs[i], "longer than %zu bytes",
                                c->map->max_id);
                if (put(c, keys[i], s, n, ptrs[i]) < 0)
                    return -1;
                have = 1;
            }
        }
        if (!have && topic_identity(c, f, caps, keys[i], dflt[i], &have) < 0)
            return -1;
        if (!have)
            return prob(c->p, MQT_E_MISSING, ptrs[i] ? ptrs[i] : "",
                        "no %s: nothing at %s and the topic gives none", keys[i],
                        ptrs[i] ? ptrs[i] : "(no pointer)");
    }
    /* Filter mappings beyond the two identities. */
    const void *arg[2] = { f, caps };
    for (size_t i = 0; i < f->nmap; i++) {
        if (!strcmp(f->map[i].key, keys[0]) || !strcmp(f->map[i].key, keys[1]))
            continue;
        char buf[512], why[128];
        int n = mqt_tmpl_render(&f->map[i].t, resolve_caps, (void *)arg, 0, buf, sizeof buf,
                                why, sizeof why);
        if (n < 0)
            return prob(c->p, MQT_E_MISSING, "", "%s: %s", f->map[i].key, why);
        if (n > 0 && put(c, f->map[i].key, buf, (size_t)n, "") < 0)
            return -1;
    }
    int rc = put(c, "conversation.kind", "device", 6, "");
    if (rc == 0)
        rc = put(c, "sender.role", "device", 6, "");
    return rc;
}

static int channel_data_caps(struct mctx *c, const struct mqt_filter *f,
                             const struct mqt_caps *caps, const char *topic, size_t tl)
{
    if (put(c, "channel_data.topic", topic, tl, "") < 0)
        return -1;
    for (size_t i = 0; i < f->ncaps && i < caps->n; i++) {
        char key[64];
        snprintf(key, sizeof key, "channel_data.%s", f->caps[i]);
        if (caps->v[i].len && put(c, key, caps->v[i].ptr, caps->v[i].len, "") < 0)
            return -1;
    }
    return 0;
}

static int set_idem(struct mctx *c, const char *conv, size_t cl, const char *v, size_t vl)
{
    /* "conversation:key" with % and : escaped (spec/envelope.md section 5). */
    char b[520];
    size_t o = 0;
    const char *src[2] = { conv, v };
    size_t len[2] = { cl, vl };
    for (int k = 0; k < 2; k++) {
        if (k)
            b[o++] = ':';
        for (size_t i = 0; i < len[k]; i++) {
            char ch = src[k][i];
            if (o + 3 >= 512)
                return prob(c->p, MQT_E_FIELD, "", "idempotency key longer than 512 bytes");
            if (ch == '%' || ch == ':') {
                b[o++] = '%';
                b[o++] = ch == '%' ? '2' : '3';
                b[o++] = ch == '%' ? '5' : 'A';
            } else {
                b[o++] = ch;
            }
        }
    }
    return put(c, "idem", b, o, "");
}

int mqt_map_identity(const struct mqt_map *map, const struct mqt_filter *f,
                     const struct mqt_caps *caps, const struct kfg_msg_sink *s,
                     struct mqt_problem *p)
{
    struct mctx c = { map, s, p, map->max_text, 0 };
    p->err = MQT_E_NONE;
    return identities(&c, f, caps, NULL);
}

int mqt_map_message(const struct mqt_map *map, const struct mqt_filter *f,
                    const struct mqt_caps *caps, const char *topic, size_t topic_len,
                    const void *payload, size_t len, const void *corr, size_t corr_len,
                    const struct kfg_msg_sink *s, struct mqt_problem *p)
{
    struct mctx c = { map, s, p, map->max_text, 0 };
    p->err = MQT_E_NONE;
    p->pointer[0] = p->detail[0] = '\0';
    if (len > map->max_payload)
        return prob(p, MQT_E_TOO_LARGE, "", "payload of %zu bytes, at most %zu", len,
                    map->max_payload);
    json_t *root = NULL;
    if (map->format == MQT_JSON) {
        json_error_t e;
        if (len == 0)
            return prob(p, MQT_E_JSON, "", "empty payload");
        root = json_loadb(payload, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &e);
        if (!root)
            return prob(p, MQT_E_JSON, "", "line %d, column %d: %s", e.line, e.column, e.text);
    } else if (map->format == MQT_MSGPACK) {
        if (len == 0)
            return prob(p, MQT_E_MSGPACK, "", "empty payload");
        root = mqt_msgpack_to_json(payload, len, p);
        if (!root)
            return -1;
    }
    int rc = -1;
    char b[32];
    const char *sv;
    size_t sn;
    json_t *text = NULL, *ev = NULL;
    int is_text = 0;
    if (root) {
        if (map->p_text && (text = mqt_pointer_get(root, map->p_text))) {
            if (!json_is_string(text) || json_string_length(text) == 0) {
                prob(p, MQT_E_FIELD, map->p_text, "expected a non-empty string for the text, "
                                                  "got %s", jtype(text));
                goto out;
            }
            if (json_string_length(text) > map->max_text) {
                prob(p, MQT_E_FIELD, map->p_text, "text longer than %zu bytes", map->max_text);
                goto out;
            }
            is_text = 1;
        }
    } else {
        is_text = map->raw_text && len > 0 && len <= map->max_text && mqt_utf8_ok(payload, len);
    }
    if (s->begin(s->arg, is_text ? "message" : "event") < 0) {
        prob(p, MQT_E_SINK, "", "the gateway refused a new message");
        goto out;
    }
    if (identities(&c, f, caps, root) < 0)
        goto out;
    if (channel_data_caps(&c, f, caps, topic, topic_len) < 0)
        goto out;

    int part;
    if (is_text) {
        part = s->part_add(s->arg, "text");
        if (sink_rc(&c, part, "", "a text part") < 0)
            goto out;
        if (root ? pput(&c, part, "text", json_string_value(text), json_string_length(text),
                        map->p_text) < 0
                 : pput(&c, part, "text", payload, len, "") < 0)
            goto out;
    } else {
        const char *name = map->event_name;
        size_t nl = strlen(name);
        if (root && map->p_event && (ev = mqt_pointer_get(root, map->p_event))) {
            if (scalar(ev, b, sizeof b, &sv, &sn) < 0 || sn > 128) {
                prob(p, MQT_E_FIELD, map->p_event, "expected an event name (1..128 bytes), "
                                                   "got %s", jtype(ev));
                goto out;
            }
            name = sv;
            nl = sn;
        }
        part = s->part_add(s->arg, "event");
        if (sink_rc(&c, part, "", "an event part") < 0 ||
            pput(&c, part, "name", name, nl, map->p_event ? map->p_event : "") < 0)
            goto out;
        if (root) {
            json_t *val = root;
            const char *vp = "";
            if (map->p_value) {
                val = mqt_pointer_get(root, map->p_value);
                vp = map->p_value;
            }
            if (val && put_value(&c, part, val, "value", vp, 0) < 0)
                goto out;
        }
    }

    if (root && map->p_ts) {
        json_t *ts = mqt_pointer_get(root, map->p_ts);
        if (ts) {
            if (!json_is_integer(ts) || json_integer_value(ts) < 0) {
                prob(p, MQT_E_FIELD, map->p_ts, "expected ms since the epoch, got %s",
                     jtype(ts));
                goto out;
            }
            if (sink_rc(&c, s->set_int(s->arg, "ts.channel", json_integer_value(ts)),
                        map->p_ts, "ts.channel") < 0)
                goto out;
        }
    }
    for (size_t i = 0; root && i < map->nfields; i++) {
        json_t *v = mqt_pointer_get(root, map->fields[i].pointer);
        if (!v || json_is_null(v))
            continue;
        const char *key = map->fields[i].key;
        if (!strcmp(key, "ts.channel")) {
            if (!json_is_integer(v) || json_integer_value(v) < 0) {
                prob(p, MQT_E_FIELD, map->fields[i].pointer, "expected ms since the epoch");
                goto out;
            }
            if (sink_rc(&c, s->set_int(s->arg, key, json_integer_value(v)),
                        map->fields[i].pointer, key) < 0)
                goto out;
            continue;
        }
        if (scalar(v, b, sizeof b, &sv, &sn) < 0) {
            prob(p, MQT_E_FIELD, map->fields[i].pointer, "expected a non-empty string, "
                 "integer or boolean for %s, got %s", key, jtype(v));
            goto out;
        }
        if (sn > 1024) {
            prob(p, MQT_E_FIELD, map->fields[i].pointer, "longer than 1024 bytes");
            goto out;
        }
        if (put(&c, key, sv, sn, map->fields[i].pointer) < 0)
            goto out;
    }

    /* Dedupe key: payload field or MQTT 5 correlation data, scoped by the
     * conversation so two devices' counters never collide. Absent: none. */
    const char *iv = NULL;
    size_t il = 0;
    char hex[2 * 128 + 5];
    if (root && map->p_idem) {
        json_t *v = mqt_pointer_get(root, map->p_idem);
        if (v) {
            if (scalar(v, b, sizeof b, &iv, &il) < 0 || il > map->max_id) {
                prob(p, MQT_E_FIELD, map->p_idem, "expected a non-empty string or integer "
                     "of at most %zu bytes for the dedupe key, got %s", map->max_id, jtype(v));
                goto out;
            }
        }
    } else if (map->idem_correlation && corr && corr_len) {
        if (corr_len > 128) {
            prob(p, MQT_E_FIELD, "", "correlation data longer than 128 bytes");
            goto out;
        }
        int printable = 1;
        for (size_t i = 0; i < corr_len; i++)
            if (((const unsigned char *)corr)[i] < 0x21 || ((const unsigned char *)corr)[i] > 0x7e)
                printable = 0;
        if (printable) {
            iv = corr;
            il = corr_len;
        } else {
            memcpy(hex, "hex:", 4);
            for (size_t i = 0; i < corr_len; i++)
                snprintf(hex + 4 + 2 * i, 3, "%02x", ((const unsigned char *)corr)[i]);
            iv = hex;
            il = 4 + 2 * corr_len;
        }
    }
    if (iv) {
        /* The conversation id as mapped: re-derive it the same way. */
        char conv[512];
        size_t cl = 0;
        const void *arg[2] = { f, caps };
        const struct mqt_tmpl *t = map->conversation;
        for (size_t i = 0; i < f->nmap; i++)
            if (!strcmp(f->map[i].key, "conversation.id"))
                t = &f->map[i].t;
        json_t *cv = root && map->p_conversation ? mqt_pointer_get(root, map->p_conversation)
                                                 : NULL;
        const char *cs;
        size_t cn;
        char cb[32];
        if (cv && scalar(cv, cb, sizeof cb, &cs, &cn) == 0 && cn < sizeof conv) {
            memcpy(conv, cs, cn);
            cl = cn;
        } else if (t) {
            char why[64];
            int n = mqt_tmpl_render(t, resolve_caps, (void *)arg, 0, conv, sizeof conv, why,
                                    sizeof why);
            cl = n > 0 ? (size_t)n : 0;
        } else if (f->ncaps && caps->v[0].len < sizeof conv) {
            memcpy(conv, caps->v[0].ptr, caps->v[0].len);
            cl = caps->v[0].len;
        }
        if (set_idem(&c, conv, cl, iv, il) < 0)
            goto out;
    }

    if (!root || map->keep_raw) {
        const char *ct = map->format == MQT_JSON ? "application/json"
                         : map->format == MQT_MSGPACK ? "application/msgpack" : map->raw_ctype;
        if (put(&c, "raw.ctype", ct, strlen(ct), "") < 0 ||
            put(&c, "raw.body", payload, len, "") < 0)
            goto out;
    }
    rc = 0;
out:
    json_decref(root);
    return rc;
}
