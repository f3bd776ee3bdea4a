/* WeChat callback requests and their envelopes; see wx_proto.h. */
#include "wx_proto.h"

#include <kfgate/envelope.h>

#include <errno.h>
#include <stddef.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest query values we take (decoded). */
#define SIG_CAP 64
#define ECHO_CAP 4096

static void reject(struct wx_req *r, int status, int code, const char *why)
{
    r->kind = WX_R_REJECT;
    r->status = status;
    r->code = code;
    r->why = why;
}

void wx_req_free(struct wx_req *r)
{
    free(r->echo);
    free(r->plainbuf);
    wx_xml_free(&r->xml);
    r->echo = NULL;
    r->plainbuf = NULL;
}

struct q {
    char sig[SIG_CAP], msig[SIG_CAP], ts[32], nonce[80], etype[16];
    size_t sig_n, msig_n, ts_n, nonce_n, etype_n;
    int has_sig, has_msig, has_etype;
    char *echo;
    size_t echo_n;
    int has_echo;
};

/* A scanned parameter into buf (NUL-terminated); 1 ok, 0 absent; -1 malformed. */
static int qput(const struct wx_qparam *p, size_t *len)
{
    if (p->got == -1) {
        p->out[0] = '\0';
        *len = 0;
        return 0;
    }
    if (p->got < 0)
        return -1;
    p->out[p->got] = '\0';
    *len = (size_t)p->got;
    return 1;
}

#define QP(name, buf, cap) { name, sizeof(name) - 1, buf, (cap) - 1, -1 }

/* Reads the parameters every form may use, in one pass over the query; -1
 * names a malformed one (the first in this order). */
static int read_query(const char *q, size_t qlen, struct q *v, int want_echo,
                      const char **bad)
{
    struct wx_qparam ps[] = {
        QP("signature", v->sig, sizeof v->sig),
        QP("msg_signature", v->msig, sizeof v->msig),
        QP("timestamp", v->ts, sizeof v->ts),
        QP("nonce", v->nonce, sizeof v->nonce),
        QP("encrypt_type", v->etype, sizeof v->etype),
        QP("echostr", v->echo, ECHO_CAP),
    };
    static const char *const why[] = {
        "bad query parameter 'signature'", "bad query parameter 'msg_signature'",
        "bad query parameter 'timestamp'", "bad query parameter 'nonce'",
        "bad query parameter 'encrypt_type'", "bad query parameter 'echostr'",
    };
    size_t *lens[] = { &v->sig_n, &v->msig_n, &v->ts_n, &v->nonce_n, &v->etype_n, &v->echo_n };
    int *has[] = { &v->has_sig, &v->has_msig, NULL, NULL, &v->has_etype, &v->has_echo };
    size_t np = want_echo ? 6 : 5;
    wx_query_scan(q, qlen, ps, np);
    for (size_t k = 0; k < np; k++) {
        int r = qput(&ps[k], lens[k]);
        if (r < 0)
            return *bad = why[k], -1;
        if (has[k])
            *has[k] = r;
    }
    return 0;
}

/* The encrypted forms: MP safe/compatible and WeCom. */
static void encrypted_post(const struct wx_conf *c, const struct q *v, const char *body,
                           size_t blen, struct wx_req *r)
{
    /* 1. <Encrypt> from the body. */
    struct wx_xml outer;
    if (wx_xml_parse(body, blen, &outer) != WX_OK) {
        reject(r, 400, WX_PARSE_XML, "body is not a WeChat XML document");
        return;
    }
    const struct wx_field *enc = wx_xml_get(&outer, "Encrypt");
    if (!enc || enc->len == 0) {
        wx_xml_free(&outer);
        reject(r, 400, WX_PARSE_XML, "no <Encrypt> in the body");
        return;
    }
    /* 2. msg_signature over token, timestamp, nonce, Encrypt. */
    if (!v->has_msig ||
        wx_signature_check(c->token, c->token_len, v->ts, v->ts_n, v->nonce, v->nonce_n,
                           enc->val, enc->len, v->msig, v->msig_n) != WX_OK) {
        wx_xml_free(&outer);
        reject(r, 403, WX_VALIDATE_SIGNATURE, "msg_signature mismatch");
        return;
    }
    /* 3-6. base64, AES and padding, frame, receive id. */
    size_t off, n;
    int rc = wx_decrypt_with(c->key, c->aes, enc->val, enc->len, c->receive_id, c->rid_len,
                        &r->plainbuf, &off, &n);
    wx_xml_free(&outer);
    if (rc != WX_OK) {
        reject(r, 400, rc, rc == WX_VALIDATE_RECEIVEID ? "receive id mismatch"
                                                       : "cannot decrypt <Encrypt>");
        return;
    }
    r->inner = (const char *)r->plainbuf + off;
    r->inner_len = n;
    if (wx_xml_parse(r->inner, r->inner_len, &r->xml) != WX_OK) {
        reject(r, 400, WX_PARSE_XML, "decrypted message is not a WeChat XML document");
        return;
    }
    r->encrypted = 1;
    r->kind = WX_R_MESSAGE;
}

void wx_request(const struct wx_conf *c, const char *method, size_t mlen,
                const char *query, size_t qlen, const char *body, size_t blen,
                struct wx_req *r)
{
    /* The XML's inline arena is not cleared: only its header. */
    memset(r, 0, offsetof(struct wx_req, xml));
    r->xml.n = 0;
    r->xml.heap = NULL;
    r->xml.slow = 0;
    int is_get = mlen == 3 && memcmp(method, "GET", 3) == 0;
    int is_post = mlen == 4 && memcmp(method, "POST", 4) == 0;
    if (!is_get && !is_post) {
        reject(r, 405, 0, "method not allowed");
        return;
    }
    struct q v;
    memset(&v, 0, sizeof v);
    const char *bad = NULL;
    char *echo = NULL;
    if (is_get) {
        echo = malloc(ECHO_CAP);
        if (!echo) {
            reject(r, 500, 0, "out of memory");
            return;
        }
        v.echo = echo;
    }
    if (read_query(query ? query : "", query ? qlen : 0, &v, is_get, &bad) < 0) {
        free(echo);
        reject(r, 400, WX_VALIDATE_SIGNATURE, bad);
        return;
    }
    memcpy(r->timestamp, v.ts, v.ts_n + 1);
    memcpy(r->nonce, v.nonce, v.nonce_n + 1);

    if (is_get) {
        if (!v.has_echo || v.echo_n == 0) {
            free(echo);
            reject(r, 400, 0, "verification without echostr");
            return;
        }
        if (c->variant == WX_MP) {
            /* MP verification is always the plain form, in every mode. */
            if (!v.has_sig ||
                wx_signature_check(c->token, c->token_len, v.ts, v.ts_n, v.nonce, v.nonce_n,
                                   NULL, 0, v.sig, v.sig_n) != WX_OK) {
                free(echo);
                reject(r, 403, WX_VALIDATE_SIGNATURE, "signature mismatch (URL verification)");
                return;
            }
            r->kind = WX_R_ECHO;
            r->echo = echo;
            r->echo_len = v.echo_n;
            return;
        }
        /* WeCom: signature over the echostr, then decrypt it. */
        if (!v.has_msig ||
            wx_signature_check(c->token, c->token_len, v.ts, v.ts_n, v.nonce, v.nonce_n,
                               echo, v.echo_n, v.msig, v.msig_n) != WX_OK) {
            free(echo);
            reject(r, 403, WX_VALIDATE_SIGNATURE, "msg_signature mismatch (URL verification)");
            return;
        }
        unsigned char *pb;
        size_t off, n;
        int rc = wx_decrypt_with(c->key, c->aes, echo, v.echo_n, c->receive_id, c->rid_len, &pb,
                                 &off, &n);
        free(echo);
        if (rc != WX_OK) {
            reject(r, 400, rc, "cannot decrypt echostr (URL verification)");
            return;
        }
        r->echo = malloc(n + 1);
        if (!r->echo) {
            free(pb);
            reject(r, 500, 0, "out of memory");
            return;
        }
        memcpy(r->echo, pb + off, n + 1);
        r->echo_len = n;
        free(pb);
        r->kind = WX_R_ECHO;
        return;
    }

    if (c->variant == WX_WECOM) {
        encrypted_post(c, &v, body, blen, r);
        return;
    }
    int aes = v.has_etype && v.etype_n == 3 && memcmp(v.etype, "aes", 3) == 0;
    int raw = !v.has_etype || (v.etype_n == 3 && memcmp(v.etype, "raw", 3) == 0);
    if (!aes && !raw) {
        reject(r, 400, 0, "unknown encrypt_type");
        return;
    }
    if (aes) {
        if (c->mode == WX_MODE_PLAIN || !c->has_key) {
            reject(r, 403, WX_ILLEGAL_AES_KEY,
                   "encrypted request, but the instance has no encoding_aes_key / mode is plain");
            return;
        }
        encrypted_post(c, &v, body, blen, r);
        return;
    }
    if (c->mode == WX_MODE_SAFE) {
        reject(r, 403, WX_VALIDATE_SIGNATURE, "plain request refused: mode is safe");
        return;
    }
    if (!v.has_sig ||
        wx_signature_check(c->token, c->token_len, v.ts, v.ts_n, v.nonce, v.nonce_n, NULL, 0,
                           v.sig, v.sig_n) != WX_OK) {
        reject(r, 403, WX_VALIDATE_SIGNATURE, "signature mismatch");
        return;
    }
    if (wx_xml_parse(body, blen, &r->xml) != WX_OK) {
        reject(r, 400, WX_PARSE_XML, "body is not a WeChat XML document");
        return;
    }
    r->inner = body;
    r->inner_len = blen;
    r->kind = WX_R_MESSAGE;
}

/* ------------------------------------------------------------------------ */
/* The envelope */

static int ieq(const char *a, size_t n, const char *b)
{
    if (strlen(b) != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char x = a[i], y = b[i];
        if (x >= 'A' && x <= 'Z') x = (char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z') y = (char)(y - 'A' + 'a');
        if (x != y)
            return 0;
    }
    return 1;
}

static int parse_i64(const char *p, size_t n, int64_t *out)
{
    if (n == 0 || n > 19)
        return 0;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

static int parse_double(const char *p, size_t n, double *out)
{
    char b[64];
    if (n == 0 || n >= sizeof b)
        return 0;
    memcpy(b, p, n);
    b[n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (!((b[i] >= '0' && b[i] <= '9') || b[i] == '.' || b[i] == '-' || b[i] == '+' ||
              b[i] == 'e' || b[i] == 'E'))
            return 0;
    char *end;
    errno = 0;
    double d = strtod(b, &end);
    if (errno || *end || !isfinite(d))
        return 0;
    *out = d;
    return 1;
}

struct ctx {
    const struct kfg_host *h;
    struct kfg_msg *m;
    const struct wx_xml *x;
    int rc;
};

/* Trimmed field or NULL; *n its length. Values are NUL-free for the ones we
 * pass as C strings: libxml2 never yields a NUL in text. */
static const char *tf(const struct wx_xml *x, const char *name, size_t *n)
{
    const char *p;
    if (!wx_xml_get_trim(x, name, &p, n))
        return NULL;
    return p;
}

/* Sets a part field from a trimmed XML field if present and non-empty. */
static void part_from(struct ctx *c, int part, const char *key, const char *field)
{
    size_t n;
    const char *p = tf(c->x, field, &n);
    if (c->rc != KFG_OK)
        return;
    if (part < 0) {
        c->rc = part;
        return;
    }
    if (p && n)
        c->rc = c->h->msg_part_set(c->m, (size_t)part, key, p, n);
}

/* Sets a part field from the exact (untrimmed) XML field if present. */
static void part_from_exact(struct ctx *c, int part, const char *key, const char *field)
{
    const struct wx_field *f = wx_xml_get(c->x, field);
    if (c->rc != KFG_OK)
        return;
    if (part < 0) {
        c->rc = part;
        return;
    }
    if (f && f->len)
        c->rc = c->h->msg_part_set(c->m, (size_t)part, key, f->val, f->len);
}

/* A trimmed field as a C string (for the envelope.h builders that take
 * them); NULL when absent or empty. The arena's own bytes when no
 * whitespace trails (the usual case: no copy), else a copy in *own, which
 * the caller frees (free(NULL) otherwise). */
static const char *cstrf(const struct wx_xml *x, const char *name, char **own)
{
    size_t n;
    const char *p = tf(x, name, &n);
    *own = NULL;
    if (!p || !n)
        return NULL;
    if (p[n] == '\0')
        return p;
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return *own = s;
}

static const char *const event_names[][2] = {
    {"subscribe", "subscribe"},
    {"unsubscribe", "unsubscribe"},
    {"SCAN", "scan"},
    {"LOCATION", "location"},
    {"CLICK", "menu_click"},
    {"VIEW", "menu_view"},
    {"TEMPLATESENDJOBFINISH", "template_send_job_finish"},
    {"kf_msg_or_event", "kf_msg_or_event"},
};

/* Adds the parts of a known message type; returns 0 if the type is unknown
 * or its fields do not fit (the caller then publishes it as unknown). */
static int message_parts(struct ctx *c, const char *mt, size_t mtn, const struct wx_build_opts *o)
{
    const struct kfg_host *h = c->h;
    struct kfg_msg *m = c->m;
    const struct wx_xml *x = c->x;
    int64_t expires = o->now_ms + 3 * 24 * 3600 * 1000LL;   /* temporary media: 3 days */
    size_t n;
    if (ieq(mt, mtn, "text")) {
        const struct wx_field *f = wx_xml_get(x, "Content");
        if (!f)
            return 0;
        int p = kfg_env_text(h, m, f->val, f->len);
        c->rc = p < 0 ? p : KFG_OK;
        return 1;
    }
    if (ieq(mt, mtn, "image")) {
        char *o1, *o2;
        const char *mid = cstrf(x, "MediaId", &o1), *url = cstrf(x, "PicUrl", &o2);
        int p = (mid || url) ? kfg_env_media(h, m, KFG_ENV_KIND_IMAGE, mid, url, NULL) : -1;
        free(o1), free(o2);
        if (p == -1)
            return 0;
        if (p < 0) {
            c->rc = p;
            return 1;
        }
        if (tf(x, "MediaId", &n) && n)
            c->rc = kfg_env_part_set_int(h, m, p, KFG_ENV_P_EXPIRES, expires);
        return 1;
    }
    if (ieq(mt, mtn, "voice")) {
        char *o1;
        const char *mid = cstrf(x, "MediaId", &o1);
        if (!mid)
            return 0;
        size_t fn;
        const char *fmt = tf(x, "Format", &fn);
        const char *mime = NULL;
        if (fmt && ieq(fmt, fn, "amr"))
            mime = "audio/amr";
        else if (fmt && ieq(fmt, fn, "speex"))
            mime = "audio/speex";
        int p = kfg_env_media(h, m, KFG_ENV_KIND_VOICE, mid, NULL, mime);
        free(o1);
        if (p < 0) {
            c->rc = p;
            return 1;
        }
        c->rc = kfg_env_part_set_int(h, m, p, KFG_ENV_P_EXPIRES, expires);
        part_from(c, p, "format", "Format");
        /* Speech recognition: the text as its own part. */
        const struct wx_field *rec = wx_xml_get(x, "Recognition");
        if (c->rc == KFG_OK && rec && rec->len) {
            int t = kfg_env_text(h, m, rec->val, rec->len);
            c->rc = t < 0 ? t : KFG_OK;
        }
        return 1;
    }
    if (ieq(mt, mtn, "video") || ieq(mt, mtn, "shortvideo")) {
        char *o1;
        const char *mid = cstrf(x, "MediaId", &o1);
        if (!mid)
            return 0;
        int p = kfg_env_media(h, m, KFG_ENV_KIND_VIDEO, mid, NULL, NULL);
        free(o1);
        if (p < 0) {
            c->rc = p;
            return 1;
        }
        c->rc = kfg_env_part_set_int(h, m, p, KFG_ENV_P_EXPIRES, expires);
        part_from(c, p, KFG_ENV_P_THUMB_MEDIA_ID, "ThumbMediaId");
        return 1;
    }
    if (ieq(mt, mtn, "location")) {
        size_t an, bn;
        const char *a = tf(x, "Location_X", &an), *b = tf(x, "Location_Y", &bn);
        double lat, lon;
        if (!a || !b || !parse_double(a, an, &lat) || !parse_double(b, bn, &lon) ||
            !(lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180))
            return 0;
        char *o1;
        const char *label = cstrf(x, "Label", &o1);
        int p = kfg_env_location(h, m, lat, lon, label);
        free(o1);
        if (p < 0) {
            c->rc = p;
            return 1;
        }
        int64_t scale;
        const char *s = tf(x, "Scale", &n);
        if (s && parse_i64(s, n, &scale))
            c->rc = kfg_env_part_set_int(h, m, p, KFG_ENV_P_SCALE, scale);
        return 1;
    }
    if (ieq(mt, mtn, "link")) {
        char *o1, *o2, *o3;
        const char *url = cstrf(x, "Url", &o1);
        if (!url)
            return 0;
        const char *title = cstrf(x, "Title", &o2), *desc = cstrf(x, "Description", &o3);
        int p = kfg_env_link(h, m, url, title, desc);
        free(o1), free(o2), free(o3);
        if (p < 0) {
            c->rc = p;
            return 1;
        }
        part_from(c, p, KFG_ENV_P_THUMB_URL, "PicUrl");
        return 1;
    }
    return 0;
}

/* Adds the event part of a known event; 0 if unknown. */
static int event_parts(struct ctx *c, const char *ev, size_t evn)
{
    const struct kfg_host *h = c->h;
    struct kfg_msg *m = c->m;
    const struct wx_xml *x = c->x;
    const char *name = NULL;
    for (size_t i = 0; i < sizeof event_names / sizeof event_names[0]; i++)
        if (ieq(ev, evn, event_names[i][0]))
            name = event_names[i][1];
    if (!name)
        return 0;
    size_t kn;
    const char *key = tf(x, "EventKey", &kn);
    int p = h->msg_part_add(m, KFG_ENV_KIND_EVENT);
    if (p < 0) {
        c->rc = p;
        return 1;
    }
    c->rc = kfg_env_part_setz(h, m, p, KFG_ENV_P_EVENT_NAME, name);
    if (strcmp(name, "subscribe") == 0) {
        /* qrscene_<scene>: a follow through a parametric QR code. */
        if (key && kn > 8 && memcmp(key, "qrscene_", 8) == 0) {
            if (c->rc == KFG_OK)
                c->rc = h->msg_part_set(m, (size_t)p, KFG_ENV_P_EVENT_KEY, key + 8, kn - 8);
            if (c->rc == KFG_OK)
                c->rc = h->msg_part_set(m, (size_t)p, "value.scene", key + 8, kn - 8);
        } else if (key && kn && c->rc == KFG_OK) {
            c->rc = h->msg_part_set(m, (size_t)p, KFG_ENV_P_EVENT_KEY, key, kn);
        }
        part_from(c, p, "value.ticket", "Ticket");
    } else if (strcmp(name, "scan") == 0) {
        if (key && kn && c->rc == KFG_OK) {
            c->rc = h->msg_part_set(m, (size_t)p, KFG_ENV_P_EVENT_KEY, key, kn);
            if (c->rc == KFG_OK)
                c->rc = h->msg_part_set(m, (size_t)p, "value.scene", key, kn);
        }
        part_from(c, p, "value.ticket", "Ticket");
    } else if (strcmp(name, "location") == 0) {
        part_from(c, p, "value.latitude", "Latitude");
        part_from(c, p, "value.longitude", "Longitude");
        part_from(c, p, "value.precision", "Precision");
        size_t an, bn;
        const char *a = tf(x, "Latitude", &an), *b = tf(x, "Longitude", &bn);
        double lat, lon;
        if (c->rc == KFG_OK && a && b && parse_double(a, an, &lat) &&
            parse_double(b, bn, &lon) && lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180) {
            int q = kfg_env_location(h, m, lat, lon, NULL);
            c->rc = q < 0 ? q : KFG_OK;
        }
    } else if (strcmp(name, "menu_click") == 0) {
        if (key && kn && c->rc == KFG_OK)
            c->rc = h->msg_part_set(m, (size_t)p, KFG_ENV_P_EVENT_KEY, key, kn);
    } else if (strcmp(name, "menu_view") == 0) {
        if (key && kn && c->rc == KFG_OK)
            c->rc = h->msg_part_set(m, (size_t)p, KFG_ENV_P_EVENT_KEY, key, kn);
        part_from(c, p, "value.menu_id", "MenuId");
    } else if (strcmp(name, "template_send_job_finish") == 0) {
        part_from(c, p, KFG_ENV_P_EVENT_KEY, "MsgID");
        part_from_exact(c, p, "value.status", "Status");
    } else if (strcmp(name, "kf_msg_or_event") == 0) {
        part_from(c, p, "value.token", "Token");
        part_from(c, p, "value.open_kfid", "OpenKfId");
    } else if (key && kn && c->rc == KFG_OK) {
        c->rc = h->msg_part_set(m, (size_t)p, KFG_ENV_P_EVENT_KEY, key, kn);
    }
    return 1;
}

static void copy_id(char *dst, const char *p, size_t n)
{
    if (p && n <= WX_ID_MAX) {
        memcpy(dst, p, n);
        dst[n] = '\0';
    } else {
        dst[0] = '\0';
    }
}

int wx_build_msg(const struct kfg_host *h, struct kfg_instance *ins,
                 const struct wx_xml *x, const char *inner, size_t inner_len,
                 const struct wx_build_opts *o, struct kfg_msg **out, struct wx_info *info)
{
    *out = NULL;
    memset(info, 0, sizeof *info);
    size_t mtn, fromn, ton, ctn, evn = 0, ekn = 0, agn = 0, midn = 0, kfn = 0;
    const char *mt = tf(x, "MsgType", &mtn);
    const char *from = tf(x, "FromUserName", &fromn);
    const char *to = tf(x, "ToUserName", &ton);
    const char *ct = tf(x, "CreateTime", &ctn);
    const char *ev = tf(x, "Event", &evn);
    const char *ek = tf(x, "EventKey", &ekn);
    const char *agent = tf(x, "AgentID", &agn);
    const char *msgid = tf(x, "MsgId", &midn);
    const char *kfid = tf(x, "OpenKfId", &kfn);
    if (!mt || !mtn)
        return KFG_EINVAL;
    int is_event = ieq(mt, mtn, "event");
    /* kf_msg_or_event has no FromUserName: the account is the party. */
    const char *who = from && fromn ? from : NULL;
    size_t whon = fromn;
    if (!who && is_event && ev && ieq(ev, evn, "kf_msg_or_event") && kfid && kfn)
        who = kfid, whon = kfn;
    if (!who || !whon)
        return KFG_EINVAL;

    copy_id(info->from, from, fromn);
    copy_id(info->to, to, ton);
    wx_copy_cut(info->msg_type, sizeof info->msg_type, mt, mtn < 31 ? mtn : 31);

    struct kfg_msg *m = NULL;
    struct ctx c = {h, NULL, x, KFG_OK};
    int unknown = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        m = h->msg_new(ins, (is_event || unknown) ? KFG_ENV_TYPE_EVENT : KFG_ENV_TYPE_MESSAGE);
        if (!m)
            return KFG_ENOMEM;
        c.m = m;
        c.rc = kfg_env_set_conversation(h, m, who, whon, KFG_ENV_CONV_DIRECT);
        if (c.rc == KFG_OK)
            c.rc = kfg_env_set_sender(h, m, who, whon, NULL,
                                      from && fromn ? KFG_ENV_ROLE_CUSTOMER : KFG_ENV_ROLE_SYSTEM);
        if (c.rc == KFG_OK && to && ton)
            c.rc = kfg_env_set_recipient(h, m, to, ton, NULL);
        int64_t cts;
        if (c.rc == KFG_OK && ct && parse_i64(ct, ctn, &cts) && cts < 100000000000LL)
            c.rc = kfg_env_set_channel_time(h, m, cts * 1000);
        if (c.rc == KFG_OK && msgid && midn)
            c.rc = kfg_env_set_channel_msg_id(h, m, msgid, midn);
        if (c.rc == KFG_OK && o->deadline_ms)
            c.rc = kfg_env_set_deadline(h, m, o->deadline_ms);
        if (c.rc == KFG_OK)
            c.rc = kfg_env_set_channel_data(h, m, "msg_type", mt, mtn);
        int64_t aid;
        if (c.rc == KFG_OK && agent && agn) {
            if (parse_i64(agent, agn, &aid))
                c.rc = kfg_env_set_channel_data_int(h, m, "AgentID", aid);
            else
                c.rc = kfg_env_set_channel_data(h, m, "AgentID", agent, agn);
        }

        /* Dedupe key: MsgId for messages; the official event rule plus
         * Event, EventKey (or the kf Token) and AgentID otherwise. */
        if (c.rc == KFG_OK) {
            if (!is_event && msgid && midn) {
                c.rc = kfg_env_set_idem(h, m, msgid, midn);
                wx_copy_cut(info->idem, sizeof info->idem, msgid, midn);
            } else {
                size_t tokn = 0;
                const char *tok = tf(x, "Token", &tokn);
                struct kfg_str parts[5] = {
                    {who, whon},
                    {ct ? ct : "", ct ? ctn : 0},
                    {is_event ? (ev ? ev : "") : mt, is_event ? evn : mtn},
                    {ek && ekn ? ek : (tok ? tok : ""), ek && ekn ? ekn : tokn},
                    {agent ? agent : "", agn},
                };
                size_t np = o->variant == WX_WECOM ? 5 : 4;
                c.rc = kfg_env_set_idem_parts(h, m, parts, np);
                struct kfg_str got = h->msg_get(m, KFG_ENV_IDEM);
                if (got.ptr)
                    wx_copy_cut(info->idem, sizeof info->idem, got.ptr, got.len);
            }
        }

        int known = 0;
        if (c.rc == KFG_OK && !unknown) {
            if (is_event)
                known = ev && evn && event_parts(&c, ev, evn);
            else
                known = message_parts(&c, mt, mtn, o);
        }
        if (c.rc == KFG_OK && !known && !unknown) {
            /* Unknown (or unfit): start over as an event with the raw XML. */
            h->msg_free(m);
            m = NULL;
            unknown = 1;
            continue;
        }
        if (c.rc == KFG_OK && unknown) {
            int p = kfg_env_event(h, m, "wechat_unknown", NULL);
            if (p >= 0) {
                c.rc = h->msg_part_set(m, (size_t)p, KFG_ENV_P_EVENT_KEY,
                                       is_event && ev && evn ? ev : mt,
                                       is_event && ev && evn ? evn : mtn);
                if (c.rc == KFG_OK)
                    c.rc = h->msg_part_set(m, (size_t)p, "value.msg_type", mt, mtn);
                if (c.rc == KFG_OK && is_event && ev && evn)
                    c.rc = h->msg_part_set(m, (size_t)p, "value.event", ev, evn);
            } else {
                c.rc = p;
            }
        }
        if (c.rc == KFG_OK && (unknown || o->keep_raw))
            c.rc = kfg_env_set_raw(h, m, "application/xml", inner, inner_len);
        break;
    }
    if (c.rc != KFG_OK) {
        h->msg_free(m);
        return c.rc;
    }
    info->is_event = is_event;
    info->unknown = unknown;
    *out = m;
    return KFG_OK;
}
