/* WS-Security UsernameToken, HTTP Basic, the nonce cache; see soap.h. */
#include "soap.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int soap_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    const unsigned char *x = a, *y = b;
    size_t n = alen > blen ? alen : blen;
    unsigned char d = alen != blen;
    for (size_t i = 0; i < n; i++) {
        unsigned char p = i < alen ? x[i] : 0, q = i < blen ? y[i] : 0;
        d |= p ^ q;
    }
    return d == 0;
}

static int b64v(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

long soap_b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0, pad = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;   /* xs:base64Binary allows whitespace */
        if (c == '=') {
            pad++;
            continue;
        }
        int v = b64v(c);
        if (v < 0 || pad)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o == cap)
                return -1;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (pad > 2 || bits >= 6 || (acc & ((1u << bits) - 1)) != 0)
        return -1;
    return (long)o;
}

void soap_b64_encode(const unsigned char *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = t[(v >> 6) & 63];
        out[o++] = t[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);
        out[o++] = t[v >> 18];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = i + 1 < n ? t[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int digits(const char *s, size_t n, size_t at, size_t k, int *out)
{
    if (at + k > n)
        return -1;
    int v = 0;
    for (size_t i = 0; i < k; i++) {
        char c = s[at + i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *out = v;
    return 0;
}

int soap_datetime(const char *s, size_t n, int64_t *ms)
{
    int y, mo, d, h, mi, se;
    if (n < 19 || digits(s, n, 0, 4, &y) || s[4] != '-' || digits(s, n, 5, 2, &mo) ||
        s[7] != '-' || digits(s, n, 8, 2, &d) || s[10] != 'T' || digits(s, n, 11, 2, &h) ||
        s[13] != ':' || digits(s, n, 14, 2, &mi) || s[16] != ':' || digits(s, n, 17, 2, &se))
        return -1;
    static const int mdays[] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 ||
        se > 60)
        return -1;
    if (mo == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        return -1;
    size_t i = 19;
    int frac = 0;
    if (i < n && s[i] == '.') {
        i++;
        size_t k = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (k < 3)
                frac = frac * 10 + (s[i] - '0');
            k++;
            i++;
        }
        if (k == 0)
            return -1;
        for (; k < 3; k++)
            frac *= 10;
    }
    int64_t off = 0;
    if (i < n && s[i] == 'Z') {
        i++;
    } else if (i < n && (s[i] == '+' || s[i] == '-')) {
        int oh, om;
        if (digits(s, n, i + 1, 2, &oh) || i + 3 >= n || s[i + 3] != ':' ||
            digits(s, n, i + 4, 2, &om) || oh > 14 || om > 59)
            return -1;
        off = (oh * 60 + om) * 60 * (s[i] == '+' ? 1 : -1);
        i += 6;
    }
    if (i != n)
        return -1;
    int64_t t = days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 +
                (se == 60 ? 59 : se) - off;
    *ms = t * 1000 + frac;
    return 0;
}

void soap_datetime_fmt(int64_t ms, char out[25])
{
    int64_t s = ms / 1000, z = s / 86400 + 719468;
    int64_t sod = s % 86400;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = (int64_t)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned d = doy - (153 * mp + 2) / 5 + 1;
    unsigned m = mp < 10 ? mp + 3 : mp - 9;
    y += m <= 2;
    if (ms < 0 || y > 9999) {
        snprintf(out, 25, "1970-01-01T00:00:00.000Z");
        return;
    }
    snprintf(out, 25, "%04u-%02u-%02uT%02u:%02u:%02u.%03uZ", (unsigned)y % 10000u, m % 100u,
             d % 100u, (unsigned)(sod / 3600) % 100u, (unsigned)(sod / 60 % 60),
             (unsigned)(sod % 60), (unsigned)(ms % 1000));
}

void soap_digest_b64(const void *nonce, size_t nlen, const char *created, size_t clen,
                     const char *pass, size_t plen, char out[29])
{
    unsigned char md[20];
    unsigned int mdl = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c || EVP_DigestInit_ex(c, EVP_sha1(), NULL) != 1 ||
        EVP_DigestUpdate(c, nonce, nlen) != 1 || EVP_DigestUpdate(c, created, clen) != 1 ||
        EVP_DigestUpdate(c, pass, plen) != 1 || EVP_DigestFinal_ex(c, md, &mdl) != 1)
        memset(md, 0, sizeof md);
    EVP_MD_CTX_free(c);
    soap_b64_encode(md, 20, out);
}

/* ---------------------------------------------------------------------------
 * Nonces: a FIFO ring of fixed entries plus hash chains of ring indices.
 * Keys are SHA-1(user NUL nonce), so entries have one size.
 */
struct nent {
    unsigned char key[20];
    int64_t expires;
    int32_t next;            /* hash chain; -1 = end */
    int used;
};

struct soap_nonces {
    pthread_mutex_t mu;
    size_t cap, n, head;     /* ring: oldest at head */
    size_t nb;
    int32_t *buckets;
    struct nent *e;
};

struct soap_nonces *soap_nonces_new(size_t cap)
{
    if (cap == 0 || cap > (1u << 26))
        return NULL;
    struct soap_nonces *n = calloc(1, sizeof *n);
    if (!n)
        return NULL;
    n->cap = cap;
    n->nb = 16;
    while (n->nb < cap)
        n->nb <<= 1;
    n->buckets = malloc(n->nb * sizeof *n->buckets);
    n->e = calloc(cap, sizeof *n->e);
    if (!n->buckets || !n->e) {
        free(n->buckets);
        free(n->e);
        free(n);
        return NULL;
    }
    for (size_t i = 0; i < n->nb; i++)
        n->buckets[i] = -1;
    pthread_mutex_init(&n->mu, NULL);
    return n;
}

void soap_nonces_free(struct soap_nonces *n)
{
    if (!n)
        return;
    pthread_mutex_destroy(&n->mu);
    free(n->buckets);
    free(n->e);
    free(n);
}

static size_t bucket_of(const struct soap_nonces *n, const unsigned char key[20])
{
    uint64_t h;
    memcpy(&h, key, sizeof h);
    return (size_t)(h & (n->nb - 1));
}

static void unlink_entry(struct soap_nonces *n, size_t idx)
{
    int32_t *pp = &n->buckets[bucket_of(n, n->e[idx].key)];
    while (*pp != -1) {
        if ((size_t)*pp == idx) {
            *pp = n->e[idx].next;
            break;
        }
        pp = &n->e[*pp].next;
    }
    n->e[idx].used = 0;
}

int soap_nonce_check(struct soap_nonces *n, const char *user, size_t ulen, const void *nonce,
                     size_t nlen, int64_t expires_s, int64_t now_s)
{
    unsigned char key[20];
    unsigned int kl = 0;
    EVP_MD_CTX *c = EVP_MD_CTX_new();
    if (!c || EVP_DigestInit_ex(c, EVP_sha1(), NULL) != 1 ||
        EVP_DigestUpdate(c, user, ulen) != 1 || EVP_DigestUpdate(c, "", 1) != 1 ||
        EVP_DigestUpdate(c, nonce, nlen) != 1 || EVP_DigestFinal_ex(c, key, &kl) != 1) {
        EVP_MD_CTX_free(c);
        return -1;
    }
    EVP_MD_CTX_free(c);
    pthread_mutex_lock(&n->mu);
    int rc = 0;
    /* Expired entries at the head go first. */
    while (n->n && n->e[n->head].expires <= now_s) {
        unlink_entry(n, n->head);
        n->head = (n->head + 1) % n->cap;
        n->n--;
    }
    size_t b = bucket_of(n, key);
    for (int32_t i = n->buckets[b]; i != -1; i = n->e[i].next) {
        if (memcmp(n->e[i].key, key, 20) == 0) {
            rc = n->e[i].expires > now_s ? 1 : 0;
            if (rc == 0)
                n->e[i].expires = expires_s;
            goto out;
        }
    }
    if (n->n == n->cap) {
        rc = -1;
        goto out;
    }
    size_t idx = (n->head + n->n) % n->cap;
    struct nent *e = &n->e[idx];
    memcpy(e->key, key, 20);
    e->expires = expires_s;
    e->used = 1;
    e->next = n->buckets[b];
    n->buckets[b] = (int32_t)idx;
    n->n++;
out:
    pthread_mutex_unlock(&n->mu);
    return rc;
}

/* ---------------------------------------------------------------------------
 * Users.
 */

/* Every user is compared, so the time does not say which one matched. */
static const struct soap_user *find_user(const struct soap_sec *s, const char *name,
                                         size_t len)
{
    const struct soap_user *hit = NULL;
    for (size_t i = 0; i < s->nusers; i++)
        if (soap_ct_equal(s->users[i].name, s->users[i].nlen, name, len) && !hit)
            hit = &s->users[i];
    return hit;
}

static void auth_failed(struct soap_fault *f)
{
    soap_fault_set(f, 500, SOAP_FC_CLIENT, "AuthenticationFailed",
                   "the security token could not be authenticated (unknown user or wrong "
                   "password)");
}

static int wsse_check(const struct soap_sec *s, const struct soap_token *t, int64_t now_s,
                      const struct soap_user **principal, struct soap_fault *f)
{
    if (!t->present) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "AuthenticationRequired",
                       "a wsse:Security header with a UsernameToken is required");
        return -1;
    }
    if (!t->user.len || !t->password.len) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "InvalidSecurityToken",
                       "the UsernameToken needs a Username and a Password");
        return -1;
    }
    if (!t->digest && !s->allow_text) {
        soap_fault_set(f, 500, SOAP_FC_CLIENT, "UnsupportedPasswordType",
                       "PasswordText is not accepted here; send a PasswordDigest");
        return -1;
    }
    int need_fresh = t->digest || s->text_needs_created || t->nonce.len || t->created.len;
    unsigned char nonce[128];
    long nl = 0;
    int64_t created_ms = 0;
    if (need_fresh) {
        if (!t->nonce.len || !t->created.len) {
            soap_fault_set(f, 500, SOAP_FC_CLIENT, "InvalidSecurityToken",
                           "the UsernameToken needs a wsse:Nonce and a wsu:Created%s",
                           t->digest ? " for a PasswordDigest" : "");
            return -1;
        }
        if (t->nonce_enc.ptr && !(t->nonce_enc.len >= 13 &&
                                  memcmp(t->nonce_enc.ptr + t->nonce_enc.len - 13,
                                         "#Base64Binary", 13) == 0)) {
            soap_fault_set(f, 500, SOAP_FC_CLIENT, "InvalidSecurityToken",
                           "wsse:Nonce EncodingType must be #Base64Binary");
            return -1;
        }
        nl = soap_b64_decode(t->nonce.ptr, t->nonce.len, nonce, sizeof nonce);
        if (nl <= 0) {
            soap_fault_set(f, 500, SOAP_FC_CLIENT, "InvalidSecurityToken",
                           "wsse:Nonce is not base64 of 1..128 bytes");
            return -1;
        }
        if (soap_datetime(t->created.ptr, t->created.len, &created_ms) != 0) {
            soap_fault_set(f, 500, SOAP_FC_CLIENT, "InvalidSecurityToken",
                           "wsu:Created is not an xs:dateTime");
            return -1;
        }
        int64_t skew = now_s - created_ms / 1000;
        if (skew > s->window_s || skew < -s->window_s) {
            soap_fault_set(f, 500, SOAP_FC_CLIENT, "MessageExpired",
                           "wsu:Created is %lld s %s the server's clock; at most %lld s are "
                           "allowed", (long long)(skew < 0 ? -skew : skew),
                           skew < 0 ? "ahead of" : "behind", (long long)s->window_s);
            return -1;
        }
    }
    const struct soap_user *u = find_user(s, t->user.ptr, t->user.len);
    int ok;
    if (t->digest) {
        char want[29];
        /* Unknown users cost the same digest. */
        soap_digest_b64(nonce, (size_t)nl, t->created.ptr, t->created.len, u ? u->pass : "",
                        u ? u->plen : 0, want);
        struct kfg_str got = soap_trim(t->password);
        ok = soap_ct_equal(want, 28, got.ptr, got.len) && u;
    } else {
        ok = soap_ct_equal(u ? u->pass : "", u ? u->plen : 0, t->password.ptr,
                           t->password.len) && u;
    }
    if (!ok) {
        auth_failed(f);
        return -1;
    }
    if (need_fresh && s->nonces) {
        /* After the password check, so only a holder of the password can
         * fill the cache. */
        int r = soap_nonce_check(s->nonces, u->name, u->nlen, nonce, (size_t)nl,
                                 created_ms / 1000 + s->window_s + 1, now_s);
        if (r == 1) {
            soap_fault_set(f, 500, SOAP_FC_CLIENT, "NonceReplayed",
                           "this wsse:Nonce was already used: the request is a replay");
            return -1;
        }
        if (r < 0) {
            soap_fault_set(f, 503, SOAP_FC_SERVER, "Overloaded",
                           "the nonce cache is full of live nonces; retry later");
            f->retry_after = 1;
            return -1;
        }
    }
    *principal = u;
    return 0;
}

static int basic_check(const struct soap_sec *s, struct kfg_str authz,
                       const struct soap_user **principal, struct soap_fault *f)
{
    if (!authz.ptr || authz.len < 6 || strncasecmp(authz.ptr, "Basic ", 6) != 0) {
        soap_fault_set(f, 401, SOAP_FC_CLIENT, "AuthenticationRequired",
                       "HTTP Basic authentication is required");
        return -1;
    }
    unsigned char buf[512];
    struct kfg_str v = soap_trim((struct kfg_str){ authz.ptr + 6, authz.len - 6 });
    long n = soap_b64_decode(v.ptr, v.len, buf, sizeof buf);
    unsigned char *colon = n > 0 ? memchr(buf, ':', (size_t)n) : NULL;
    if (!colon) {
        soap_fault_set(f, 401, SOAP_FC_CLIENT, "AuthenticationFailed",
                       "the Authorization header is not valid Basic credentials");
        return -1;
    }
    size_t ul = (size_t)(colon - buf);
    const struct soap_user *u = find_user(s, (const char *)buf, ul);
    int ok = soap_ct_equal(u ? u->pass : "", u ? u->plen : 0, colon + 1, (size_t)n - ul - 1) && u;
    memset(buf, 0, sizeof buf);
    if (!ok) {
        soap_fault_set(f, 401, SOAP_FC_CLIENT, "AuthenticationFailed",
                       "HTTP Basic credentials rejected (unknown user or wrong password)");
        return -1;
    }
    *principal = u;
    return 0;
}

int soap_authenticate(const struct soap_sec *s, const struct soap_doc *d, struct kfg_str authz,
                      int64_t now_s, const struct soap_user **principal, struct soap_fault *f)
{
    *principal = NULL;
    const struct soap_user *b = NULL;
    switch (s->mode) {
    case SOAP_AUTH_NONE:
        return 0;
    case SOAP_AUTH_WSSE:
        return wsse_check(s, &d->tok, now_s, principal, f);
    case SOAP_AUTH_BASIC:
        return basic_check(s, authz, principal, f);
    case SOAP_AUTH_EITHER:
        if (d->tok.present)
            return wsse_check(s, &d->tok, now_s, principal, f);
        if (authz.ptr)
            return basic_check(s, authz, principal, f);
        soap_fault_set(f, 401, SOAP_FC_CLIENT, "AuthenticationRequired",
                       "a wsse:Security UsernameToken or HTTP Basic credentials are required");
        return -1;
    case SOAP_AUTH_BOTH:
        if (basic_check(s, authz, &b, f) != 0)
            return -1;
        return wsse_check(s, &d->tok, now_s, principal, f);
    }
    soap_fault_set(f, 500, SOAP_FC_SERVER, "Internal", "bad auth mode");
    return -1;
}
