/*
 * REST adapter: authentication, signatures, destination checks.
 */
#include "rest.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int rest_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    /* Compare over the longer length so neither content nor the position
     * of the first difference shows in the time taken. */
    const unsigned char *x = a, *y = b;
    size_t n = alen > blen ? alen : blen;
    unsigned char d = (unsigned char)(alen != blen);
    for (size_t i = 0; i < n; i++) {
        unsigned char cx = i < alen ? x[i] : 0;
        unsigned char cy = i < blen ? y[i] : 0;
        d |= (unsigned char)(cx ^ cy);
    }
    return d == 0;
}

static void hexify(const unsigned char *in, size_t n, char *out)
{
    static const char hx[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hx[in[i] >> 4];
        out[2 * i + 1] = hx[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void rest_hmac_hex(const char *secret, size_t slen, const void *p1, size_t l1,
                   const void *p2, size_t l2, const void *p3, size_t l3, char out[65])
{
    unsigned char mac[EVP_MAX_MD_SIZE];
    size_t maclen = 0;
    char digest[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC *mac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *c = mac_alg ? EVP_MAC_CTX_new(mac_alg) : NULL;
    int ok = c && EVP_MAC_init(c, (const unsigned char *)secret, slen, params) == 1 &&
             EVP_MAC_update(c, p1, l1) == 1 &&
             EVP_MAC_update(c, (const unsigned char *)".", 1) == 1 &&
             EVP_MAC_update(c, p2, l2) == 1;
    if (ok && p3)
        ok = EVP_MAC_update(c, (const unsigned char *)".", 1) == 1 &&
             EVP_MAC_update(c, p3, l3) == 1;
    if (ok)
        ok = EVP_MAC_final(c, mac, &maclen, sizeof mac) == 1 && maclen == 32;
    EVP_MAC_CTX_free(c);
    EVP_MAC_free(mac_alg);
    if (!ok) {
        /* Never matches a real signature (not hex). */
        memset(out, '!', 64);
        out[64] = '\0';
        return;
    }
    hexify(mac, 32, out);
}

/* ---------------------------------------------------------------------------
 * Replay cache: signatures accepted inside the tolerance window.
 */
struct rest_replay {
    struct rest_bmap map;
};

struct rest_replay *rest_replay_new(size_t cap)
{
    struct rest_replay *r = calloc(1, sizeof *r);
    if (!r || rest_bmap_init(&r->map, cap ? cap : 1, NULL) != 0) {
        free(r);
        return NULL;
    }
    return r;
}

void rest_replay_free(struct rest_replay *r)
{
    if (!r)
        return;
    rest_bmap_destroy(&r->map);
    free(r);
}

int rest_replay_seen(struct rest_replay *r, const char sig_hex[65], int64_t ts,
                     int64_t now_s, int64_t tolerance_s)
{
    int seen = 0;
    pthread_mutex_lock(&r->map.mu);
    /* Drop what has expired, oldest first. */
    while (r->map.oldest && r->map.oldest->aux < now_s)
        rest_bmap_remove(&r->map, r->map.oldest);
    struct rest_bent *e = rest_bmap_find(&r->map, sig_hex, 64);
    if (e) {
        seen = 1;
    } else {
        /* When full of live entries, the oldest goes: the cache is bounded,
         * so a flood of valid signatures can only shorten its memory. */
        e = rest_bmap_insert(&r->map, sig_hex, 64, NULL);
        if (e)
            e->aux = ts + tolerance_s;
    }
    pthread_mutex_unlock(&r->map.mu);
    return seen;
}

/* ---------------------------------------------------------------------------
 * Request auth.
 */
static int match_any(const char **keys, size_t n, const char *tok, size_t len)
{
    int hit = 0;
    for (size_t i = 0; i < n; i++)    /* no early exit */
        hit |= rest_ct_equal(keys[i], strlen(keys[i]), tok, len);
    return hit;
}

static int parse_ts(const char *s, size_t n, int64_t *out)
{
    if (n == 0 || n > 12)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 0;
}

int rest_auth_check(const struct rest_auth *a, const char *authz, size_t authz_len,
                    const char *ts, size_t ts_len, const char *sig, size_t sig_len,
                    const void *body, size_t body_len, int64_t now_s, int write,
                    struct rest_problem *p)
{
    if (authz) {
        if (authz_len < 7 || strncasecmp(authz, "Bearer ", 7) != 0) {
            rest_problem_set(p, 401, "unauthorized", "Unauthorized", NULL,
                             "Authorization must use the Bearer scheme");
            snprintf(p->header, sizeof p->header, "Authorization");
            return -1;
        }
        const char *tok = authz + 7;
        size_t len = authz_len - 7;
        while (len && *tok == ' ')
            tok++, len--;
        int w = match_any(a->keys, a->nkeys, tok, len);
        int r = match_any(a->read_keys, a->nread, tok, len);
        if (w)
            return 0;
        if (r && !write)
            return 0;
        if (r) {
            rest_problem_set(p, 403, "forbidden", "Forbidden", NULL,
                             "this API key may read but not write");
            return -1;
        }
        rest_problem_set(p, 401, "unauthorized", "Unauthorized", NULL, "unknown API key");
        snprintf(p->header, sizeof p->header, "Authorization");
        return -1;
    }
    if (!sig) {
        rest_problem_set(p, 401, "unauthorized", "Unauthorized", NULL,
                         "send an API key (Authorization: Bearer) or a request "
                         "signature (" REST_HDR_TIMESTAMP ", " REST_HDR_SIGNATURE ")");
        return -1;
    }
    if (a->nsecrets == 0) {
        rest_problem_set(p, 401, "unauthorized", "Unauthorized", NULL,
                         "this instance does not accept request signatures");
        snprintf(p->header, sizeof p->header, REST_HDR_SIGNATURE);
        return -1;
    }
    int64_t t;
    if (!ts || parse_ts(ts, ts_len, &t) != 0) {
        rest_problem_set(p, 401, "bad-signature", "Invalid request signature", NULL,
                         "%s must be the signing time in Unix seconds",
                         REST_HDR_TIMESTAMP);
        snprintf(p->header, sizeof p->header, REST_HDR_TIMESTAMP);
        return -1;
    }
    if (t < now_s - a->tolerance_s || t > now_s + a->tolerance_s) {
        rest_problem_set(p, 401, "signature-expired", "Request signature outside the time window",
                         NULL, "signed at %lld, now %lld: more than %lld s apart",
                         (long long)t, (long long)now_s, (long long)a->tolerance_s);
        snprintf(p->header, sizeof p->header, REST_HDR_TIMESTAMP);
        return -1;
    }
    /* "v1=<hex>[,v1=<hex>...]": a sender rotating secrets may sign twice. */
    char want[65];
    char matched[65] = "";
    int ok = 0;
    for (size_t s = 0; s < a->nsecrets; s++) {
        rest_hmac_hex(a->secrets[s], strlen(a->secrets[s]), ts, ts_len, body, body_len,
                      NULL, 0, want);
        size_t i = 0;
        while (i < sig_len) {
            size_t j = i;
            while (j < sig_len && sig[j] != ',')
                j++;
            const char *it = sig + i;
            size_t n = j - i;
            while (n && *it == ' ')
                it++, n--;
            while (n && it[n - 1] == ' ')
                n--;
            if (n == 67 && memcmp(it, "v1=", 3) == 0 && rest_ct_equal(it + 3, 64, want, 64)) {
                ok = 1;
                memcpy(matched, want, 65);
            }
            i = j + 1;
        }
    }
    if (!ok) {
        rest_problem_set(p, 401, "bad-signature", "Invalid request signature", NULL,
                         "no v1 signature in %s matches HMAC-SHA256(secret, "
                         "timestamp \".\" body)", REST_HDR_SIGNATURE);
        snprintf(p->header, sizeof p->header, REST_HDR_SIGNATURE);
        return -1;
    }
    if (a->replay && rest_replay_seen(a->replay, matched, t, now_s, a->tolerance_s)) {
        rest_problem_set(p, 401, "signature-replayed", "Request signature already used", NULL,
                         "this signature was accepted before; sign every request anew");
        snprintf(p->header, sizeof p->header, REST_HDR_SIGNATURE);
        return -1;
    }
    return 0;
}

char *rest_webhook_signature(const char *const *secrets, size_t n, int64_t ts,
                             const char *delivery_id, const void *body, size_t len)
{
    char tsb[24];
    int tl = snprintf(tsb, sizeof tsb, "%lld", (long long)ts);
    char *out = malloc(n * 68 + 1);
    if (!out)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char hx[65];
        rest_hmac_hex(secrets[i], strlen(secrets[i]), tsb, (size_t)tl, delivery_id,
                      strlen(delivery_id), body, len, hx);
        if (i)
            out[o++] = ',';
        memcpy(out + o, "v1=", 3);
        memcpy(out + o + 3, hx, 64);
        o += 67;
    }
    out[o] = '\0';
    return out;
}

/* ---------------------------------------------------------------------------
 * Destinations.
 */
static int v4_private(const unsigned char a[4])
{
    uint32_t x = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];
    static const struct { uint32_t net, mask; } r[] = {
        { 0x00000000u, 0xff000000u },   /* 0/8 "this network" */
        { 0x0a000000u, 0xff000000u },   /* 10/8 */
        { 0x64400000u, 0xffc00000u },   /* 100.64/10 CGNAT */
        { 0x7f000000u, 0xff000000u },   /* 127/8 loopback */
        { 0xa9fe0000u, 0xffff0000u },   /* 169.254/16 link-local, cloud metadata */
        { 0xac100000u, 0xfff00000u },   /* 172.16/12 */
        { 0xc0000000u, 0xffffff00u },   /* 192.0.0/24 */
        { 0xc0a80000u, 0xffff0000u },   /* 192.168/16 */
        { 0xc6120000u, 0xfffe0000u },   /* 198.18/15 benchmarking */
        { 0xe0000000u, 0xf0000000u },   /* 224/4 multicast */
        { 0xf0000000u, 0xf0000000u },   /* 240/4 reserved, broadcast */
    };
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
        if ((x & r[i].mask) == r[i].net)
            return 1;
    return 0;
}

int rest_ip_is_private(const char *host)
{
    unsigned char a[16];
    if (inet_pton(AF_INET, host, a) == 1)
        return v4_private(a);
    if (inet_pton(AF_INET6, host, a) != 1)
        return 0;
    static const unsigned char zero[16];
    if (memcmp(a, zero, 15) == 0 && (a[15] == 0 || a[15] == 1))
        return 1;                                   /* :: and ::1 */
    if ((a[0] & 0xfe) == 0xfc)
        return 1;                                   /* fc00::/7 unique local */
    if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
        return 1;                                   /* fe80::/10 link-local */
    if (a[0] == 0xff)
        return 1;                                   /* multicast */
    static const unsigned char mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff };
    if (memcmp(a, mapped, 12) == 0 || memcmp(a, zero, 12) == 0)
        return v4_private(a + 12);                  /* ::ffff:a.b.c.d, ::a.b.c.d */
    static const unsigned char nat64[12] = { 0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0 };
    if (memcmp(a, nat64, 12) == 0)
        return v4_private(a + 12);
    return 0;
}

int rest_url_check(const char *url, int *private_out, char *why, size_t cap)
{
    *private_out = 0;
    const char *p;
    if (strncasecmp(url, "http://", 7) == 0)
        p = url + 7;
    else if (strncasecmp(url, "https://", 8) == 0)
        p = url + 8;
    else {
        snprintf(why, cap, "webhook_url must be http:// or https://");
        return -1;
    }
    size_t alen = strcspn(p, "/?#");
    if (memchr(p, '@', alen)) {
        snprintf(why, cap, "webhook_url must not carry credentials (use webhook_secrets)");
        return -1;
    }
    char host[256];
    size_t hlen;
    const char *rest;
    if (*p == '[') {
        const char *e = memchr(p, ']', alen);
        if (!e) {
            snprintf(why, cap, "webhook_url: unterminated IPv6 literal");
            return -1;
        }
        hlen = (size_t)(e - p - 1);
        if (hlen >= sizeof host)
            goto toolong;
        memcpy(host, p + 1, hlen);
        rest = e + 1;
    } else {
        hlen = strcspn(p, ":/?#");
        if (hlen >= sizeof host)
            goto toolong;
        memcpy(host, p, hlen);
        rest = p + hlen;
    }
    host[hlen] = '\0';
    if (hlen == 0) {
        snprintf(why, cap, "webhook_url has no host");
        return -1;
    }
    if (*rest == ':') {
        size_t n = 0;
        long port = 0;
        for (rest++; *rest >= '0' && *rest <= '9' && n < 6; rest++, n++)
            port = port * 10 + (*rest - '0');
        if (n == 0 || port < 1 || port > 65535 || (*rest && !strchr("/?#", *rest))) {
            snprintf(why, cap, "webhook_url: bad port");
            return -1;
        }
    } else if (*rest && !strchr("/?#", *rest)) {
        snprintf(why, cap, "webhook_url: bad authority");
        return -1;
    }
    for (size_t i = 0; i < hlen; i++)
        host[i] = (char)tolower((unsigned char)host[i]);
    if (hlen && host[hlen - 1] == '.')
        host[--hlen] = '\0';
    size_t ll = strlen("localhost");
    if (strcmp(host, "localhost") == 0 ||
        (hlen > ll && strcmp(host + hlen - ll - 1, ".localhost") == 0))
        *private_out = 1;
    else
        *private_out = rest_ip_is_private(host);
    return 0;
toolong:
    snprintf(why, cap, "webhook_url: host too long");
    return -1;
}
