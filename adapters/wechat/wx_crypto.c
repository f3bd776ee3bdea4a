/* WeChat callback crypto; see wx_crypto.h. */
#include "wx_crypto.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

const char *wx_err_name(int code)
{
    switch (code) {
    case WX_OK: return "OK";
    case WX_VALIDATE_SIGNATURE: return "ValidateSignature_Error";
    case WX_PARSE_XML: return "ParseXml_Error";
    case WX_COMPUTE_SIGNATURE: return "ComputeSignature_Error";
    case WX_ILLEGAL_AES_KEY: return "IllegalAesKey";
    case WX_VALIDATE_RECEIVEID: return "ValidateCorpid_Error";
    case WX_ENCRYPT_AES: return "EncryptAES_Error";
    case WX_DECRYPT_AES: return "DecryptAES_Error";
    case WX_ILLEGAL_BUFFER: return "IllegalBuffer";
    case WX_ENCODE_BASE64: return "EncodeBase64_Error";
    case WX_DECODE_BASE64: return "DecodeBase64_Error";
    case WX_GEN_RETURN_XML: return "GenReturnXml_Error";
    default: return "Unknown";
    }
}

/* ------------------------------------------------------------------------ */
/* Algorithms, fetched once: with OpenSSL 3, EVP_sha1() and
 * EVP_aes_256_cbc() make every init look the implementation up again
 * (about a tenth of the hot path). */

static const EVP_MD *md_sha1;
static const EVP_CIPHER *cipher_aes;
static pthread_once_t algs_once = PTHREAD_ONCE_INIT;
#if OPENSSL_VERSION_MAJOR >= 3
static EVP_MD *md_fetched;
static EVP_CIPHER *cipher_fetched;

/* The fetched algorithms are reference-counted objects: give them back when
 * the gateway unloads this plugin (a reload must not leak them). */
__attribute__((destructor)) static void algs_release(void)
{
    EVP_MD_free(md_fetched);
    EVP_CIPHER_free(cipher_fetched);
}
#endif

static void algs_fetch(void)
{
#if OPENSSL_VERSION_MAJOR >= 3
    md_sha1 = md_fetched = EVP_MD_fetch(NULL, "SHA1", NULL);
    cipher_aes = cipher_fetched = EVP_CIPHER_fetch(NULL, "AES-256-CBC", NULL);
#endif
    if (!md_sha1)
        md_sha1 = EVP_sha1();
    if (!cipher_aes)
        cipher_aes = EVP_aes_256_cbc();
}

static const EVP_MD *alg_sha1(void)
{
    pthread_once(&algs_once, algs_fetch);
    return md_sha1;
}

static const EVP_CIPHER *alg_aes(void)
{
    pthread_once(&algs_once, algs_fetch);
    return cipher_aes;
}

/* ------------------------------------------------------------------------ */
/* Signatures */

struct piece {
    const char *p;
    size_t n;
};

static int piece_cmp(const struct piece *a, const struct piece *b)
{
    size_t n = a->n < b->n ? a->n : b->n;
    int c = n ? memcmp(a->p, b->p, n) : 0;
    if (c)
        return c;
    return a->n < b->n ? -1 : a->n > b->n;
}

int wx_signature(const char *const *parts, const size_t *lens, size_t n,
                 char out[WX_SIG_LEN + 1])
{
    struct piece v[8];
    if (n == 0 || n > 8)
        return WX_COMPUTE_SIGNATURE;
    for (size_t i = 0; i < n; i++) {
        v[i].p = parts[i] ? parts[i] : "";
        v[i].n = parts[i] ? lens[i] : 0;
    }
    /* insertion sort: n <= 8 */
    for (size_t i = 1; i < n; i++) {
        struct piece t = v[i];
        size_t j = i;
        while (j > 0 && piece_cmp(&v[j - 1], &t) > 0) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = t;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, alg_sha1(), NULL) == 1;
    for (size_t i = 0; ok && i < n; i++)
        if (v[i].n)
            ok = EVP_DigestUpdate(ctx, v[i].p, v[i].n) == 1;
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 20;
    EVP_MD_CTX_free(ctx);
    if (!ok)
        return WX_COMPUTE_SIGNATURE;
    static const char hex[] = "0123456789abcdef";
    for (unsigned i = 0; i < 20; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[WX_SIG_LEN] = '\0';
    return WX_OK;
}

int wx_signature_check(const char *token, size_t token_len,
                       const char *timestamp, size_t ts_len,
                       const char *nonce, size_t nonce_len,
                       const char *x, size_t x_len,
                       const char *given, size_t given_len)
{
    const char *parts[4] = {token, timestamp, nonce, x};
    size_t lens[4] = {token_len, ts_len, nonce_len, x_len};
    char want[WX_SIG_LEN + 1];
    if (wx_signature(parts, lens, x ? 4 : 3, want) != WX_OK)
        return WX_VALIDATE_SIGNATURE;
    /* The length is not secret; the content is compared in constant time. */
    if (!given || given_len != WX_SIG_LEN)
        return WX_VALIDATE_SIGNATURE;
    return CRYPTO_memcmp(want, given, WX_SIG_LEN) == 0 ? WX_OK : WX_VALIDATE_SIGNATURE;
}

/* ------------------------------------------------------------------------ */
/* Base64 */

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* 0..63 for the alphabet, 0x80 for everything else: OR-ing four lookups
 * tells whether any of them was bad. */
static const unsigned char b64tab[256] = {
#define X 0x80
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, 62, X, X, X, 63,
    52, 53, 54, 55, 56, 57, 58, 59, 60, 61, X, X, X, X, X, X,
    X, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, X, X, X, X, X,
    X, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
    41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
#undef X
};

int wx_b64_decode(const char *in, size_t len, unsigned char *out, size_t *out_len)
{
    *out_len = 0;
    if (len == 0 || len % 4)
        return WX_DECODE_BASE64;
    const unsigned char *s = (const unsigned char *)in;
    size_t pad = 0;
    if (s[len - 1] == '=') pad++;
    if (pad && s[len - 2] == '=') pad++;
    size_t full = len - 4;          /* the last quantum is done apart */
    size_t o = 0;
    for (size_t i = 0; i < full; i += 4) {
        unsigned a = b64tab[s[i]], b = b64tab[s[i + 1]], c = b64tab[s[i + 2]],
                 d = b64tab[s[i + 3]];
        if ((a | b | c | d) & 0x80)
            return WX_DECODE_BASE64;
        uint32_t w = a << 18 | b << 12 | c << 6 | d;
        out[o] = (unsigned char)(w >> 16);
        out[o + 1] = (unsigned char)(w >> 8);
        out[o + 2] = (unsigned char)w;
        o += 3;
    }
    unsigned v[4];
    for (int k = 0; k < 4; k++) {
        unsigned char ch = s[full + (size_t)k];
        if (ch == '=' && (size_t)k >= 4 - pad) {
            v[k] = 0;
            continue;
        }
        v[k] = b64tab[ch];
        if (v[k] & 0x80)
            return WX_DECODE_BASE64;
    }
    uint32_t w = v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3];
    out[o++] = (unsigned char)(w >> 16);
    if (pad < 2) out[o++] = (unsigned char)(w >> 8);
    if (pad < 1) out[o++] = (unsigned char)w;
    *out_len = o;
    return WX_OK;
}

size_t wx_b64_encode(const unsigned char *in, size_t len, char *out)
{
    static const char a[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0, i = 0;
    for (; i + 3 <= len; i += 3) {
        uint32_t w = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = a[w >> 18];
        out[o++] = a[(w >> 12) & 63];
        out[o++] = a[(w >> 6) & 63];
        out[o++] = a[w & 63];
    }
    if (len - i == 1) {
        uint32_t w = (uint32_t)in[i] << 16;
        out[o++] = a[w >> 18];
        out[o++] = a[(w >> 12) & 63];
        out[o++] = '=';
        out[o++] = '=';
    } else if (len - i == 2) {
        uint32_t w = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = a[w >> 18];
        out[o++] = a[(w >> 12) & 63];
        out[o++] = a[(w >> 6) & 63];
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

int wx_aes_key(const char *k, size_t len, unsigned char key[32])
{
    if (!k || len != 43)
        return WX_ILLEGAL_AES_KEY;
    /* 43 symbols = 258 bits: 32 bytes and 2 discarded bits, which the
     * console often leaves non-zero. */
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < 43; i++) {
        int v = b64val((unsigned char)k[i]);
        if (v < 0)
            return WX_ILLEGAL_AES_KEY;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o < 32)
                key[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return o == 32 ? WX_OK : WX_ILLEGAL_AES_KEY;
}

/* ------------------------------------------------------------------------ */
/* AES frames */

struct wx_aes {
    unsigned char key[32];
    pthread_mutex_t mu[2];          /* [0] decrypt, [1] encrypt */
    EVP_CIPHER_CTX *ctx[2];
};

static int aes_init(EVP_CIPHER_CTX *c, const unsigned char key[32], int enc)
{
    /* WXBizMsgCrypt: the IV is the key's first 16 bytes; no EVP padding. */
    return EVP_CipherInit_ex(c, alg_aes(), NULL, key, key, enc) == 1 &&
           EVP_CIPHER_CTX_set_padding(c, 0) == 1;
}

struct wx_aes *wx_aes_new(const unsigned char key[32])
{
    struct wx_aes *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    memcpy(a->key, key, 32);
    for (int e = 0; e < 2; e++) {
        pthread_mutex_init(&a->mu[e], NULL);
        a->ctx[e] = EVP_CIPHER_CTX_new();
        if (!a->ctx[e] || !aes_init(a->ctx[e], key, e)) {
            EVP_CIPHER_CTX_free(a->ctx[e]);
            a->ctx[e] = NULL;
        }
    }
    return a;
}

void wx_aes_free(struct wx_aes *a)
{
    if (!a)
        return;
    for (int e = 0; e < 2; e++) {
        EVP_CIPHER_CTX_free(a->ctx[e]);
        pthread_mutex_destroy(&a->mu[e]);
    }
    OPENSSL_cleanse(a->key, sizeof a->key);
    free(a);
}

static int aes_run(EVP_CIPHER_CTX *c, const unsigned char *in, size_t len, unsigned char *out)
{
    int n1 = 0, n2 = 0;
    return EVP_CipherUpdate(c, out, &n1, in, (int)len) == 1 &&
           EVP_CipherFinal_ex(c, out + n1, &n2) == 1 && (size_t)(n1 + n2) == len;
}

static int aes_cbc(const unsigned char key[32], struct wx_aes *a, int enc,
                   const unsigned char *in, size_t len, unsigned char *out)
{
    if (len > INT32_MAX)
        return -1;
    if (a && a->ctx[enc] && memcmp(a->key, key, 32) == 0 &&
        pthread_mutex_trylock(&a->mu[enc]) == 0) {
        /* Same cipher, key and direction: only the IV starts over. */
        int ok = EVP_CipherInit_ex(a->ctx[enc], NULL, NULL, NULL, key, -1) == 1 &&
                 aes_run(a->ctx[enc], in, len, out);
        pthread_mutex_unlock(&a->mu[enc]);
        return ok ? 0 : -1;
    }
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    int ok = c && aes_init(c, key, enc) && aes_run(c, in, len, out);
    EVP_CIPHER_CTX_free(c);
    return ok ? 0 : -1;
}

int wx_decrypt(const unsigned char key[32], const char *b64, size_t b64_len,
               const char *receive_id, size_t rid_len,
               unsigned char **buf, size_t *msg_off, size_t *msg_len)
{
    return wx_decrypt_with(key, NULL, b64, b64_len, receive_id, rid_len, buf, msg_off, msg_len);
}

int wx_decrypt_with(const unsigned char key[32], struct wx_aes *aes, const char *b64,
                    size_t b64_len, const char *receive_id, size_t rid_len,
                    unsigned char **buf, size_t *msg_off, size_t *msg_len)
{
    *buf = NULL;
    *msg_off = *msg_len = 0;
    if (b64_len == 0 || b64_len % 4)
        return WX_DECODE_BASE64;
    /* One buffer: base64 decoded into it, then decrypted in place (CBC
     * decryption in place is supported by EVP when in == out). */
    size_t cap = b64_len / 4 * 3;
    unsigned char *pt = malloc(cap + 1);
    size_t ctlen = 0;
    int rc;
    if (!pt) {
        rc = WX_DECRYPT_AES;
        goto fail;
    }
    if ((rc = wx_b64_decode(b64, b64_len, pt, &ctlen)) != WX_OK)
        goto fail;
    rc = WX_DECRYPT_AES;
    if (ctlen < 32 || ctlen % 32)
        goto fail;
    if (aes_cbc(key, aes, 0, pt, ctlen, pt) != 0)
        goto fail;
    size_t p = pt[ctlen - 1];
    if (p < 1 || p > 32)
        goto fail;
    /* Strict: every pad byte must hold the count (the official samples only
     * check the range; a correct sender always pads this way). */
    for (size_t i = ctlen - p; i < ctlen; i++)
        if (pt[i] != p)
            goto fail;
    size_t rem = ctlen - p;
    rc = WX_ILLEGAL_BUFFER;
    if (rem <= 20)
        goto fail;
    uint64_t n = (uint64_t)pt[16] << 24 | (uint64_t)pt[17] << 16 | (uint64_t)pt[18] << 8 |
                 pt[19];
    if (n > rem - 20)   /* 20 + n <= rem, without overflow */
        goto fail;
    size_t id_off = 20 + (size_t)n;
    size_t id_len = rem - id_off;
    rc = WX_VALIDATE_RECEIVEID;
    if (id_len != rid_len || (rid_len && memcmp(pt + id_off, receive_id, rid_len) != 0))
        goto fail;
    pt[id_off] = '\0';     /* the message is followed by a NUL */
    *buf = pt;
    *msg_off = 20;
    *msg_len = (size_t)n;
    return WX_OK;
fail:
    free(pt);
    return rc;
}

int wx_encrypt(const unsigned char key[32], const unsigned char random16[16],
               const char *msg, size_t msg_len,
               const char *receive_id, size_t rid_len,
               char **out, size_t *out_len)
{
    return wx_encrypt_with(key, NULL, random16, msg, msg_len, receive_id, rid_len, out,
                           out_len);
}

int wx_encrypt_with(const unsigned char key[32], struct wx_aes *aes,
                    const unsigned char random16[16], const char *msg, size_t msg_len,
                    const char *receive_id, size_t rid_len, char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (msg_len > UINT32_MAX || msg_len > SIZE_MAX / 2 - rid_len - 64)
        return WX_ENCRYPT_AES;
    size_t flen = 20 + msg_len + rid_len;
    size_t pad = 32 - flen % 32;     /* 1..32: a full block when aligned */
    size_t total = flen + pad;
    /* the frame is encrypted in place (EVP allows in == out for CBC) */
    unsigned char *f = malloc(total);
    char *b = malloc(4 * ((total + 2) / 3) + 1);
    if (!f || !b) {
        free(f), free(b);
        return WX_ENCRYPT_AES;
    }
    memcpy(f, random16, 16);
    f[16] = (unsigned char)(msg_len >> 24);
    f[17] = (unsigned char)(msg_len >> 16);
    f[18] = (unsigned char)(msg_len >> 8);
    f[19] = (unsigned char)msg_len;
    if (msg_len)
        memcpy(f + 20, msg, msg_len);
    if (rid_len)
        memcpy(f + 20 + msg_len, receive_id, rid_len);
    memset(f + flen, (int)pad, pad);
    if (aes_cbc(key, aes, 1, f, total, f) != 0) {
        free(f), free(b);
        return WX_ENCRYPT_AES;
    }
    *out_len = wx_b64_encode(f, total, b);
    *out = b;
    free(f);
    return WX_OK;
}

int wx_random_alnum(char *buf, size_t n)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char r[64];
    while (n) {
        size_t k = n < sizeof r ? n : sizeof r;
        if (RAND_bytes(r, (int)k) != 1)
            return -1;
        for (size_t i = 0; i < k; i++)
            *buf++ = a[r[i] % 62];   /* bias is irrelevant for a frame prefix */
        n -= k;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Query string */

static int hexv(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* One value, percent-decoded once; its length or -3 / -4. */
static long query_value(const char *v, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t j = 0; j < n; j++) {
        unsigned char c = (unsigned char)v[j];
        if (c == '%') {
            if (j + 2 >= n)
                return -3;
            int hi = hexv((unsigned char)v[j + 1]), lo = hexv((unsigned char)v[j + 2]);
            if (hi < 0 || lo < 0)
                return -3;
            c = (unsigned char)(hi * 16 + lo);
            j += 2;
        }
        if (o == cap)
            return -4;
        out[o++] = (char)c;
    }
    return (long)o;
}

void wx_query_scan(const char *q, size_t qlen, struct wx_qparam *ps, size_t np)
{
    for (size_t k = 0; k < np; k++)
        ps[k].got = -1;
    size_t i = 0;
    while (i < qlen) {
        const char *amp = memchr(q + i, '&', qlen - i);
        size_t end = amp ? (size_t)(amp - q) : qlen;
        const char *eq = memchr(q + i, '=', end - i);
        size_t nlen = eq ? (size_t)(eq - (q + i)) : end - i;
        /* Names are matched raw: WeChat's are plain ASCII. */
        for (size_t k = 0; k < np; k++) {
            struct wx_qparam *p = &ps[k];
            if (p->nlen != nlen || memcmp(q + i, p->name, nlen) != 0)
                continue;
            if (p->got >= 0)
                p->got = -2;
            else if (p->got == -1)     /* "name" without '=': present, empty */
                p->got = eq ? query_value(eq + 1, end - nlen - i - 1, p->out, p->cap) : 0;
            break;
        }
        i = end + 1;
    }
}

long wx_query_get(const char *q, size_t qlen, const char *name, char *out, size_t cap)
{
    struct wx_qparam p = { name, strlen(name), out, cap, -1 };
    wx_query_scan(q, qlen, &p, 1);
    return p.got;
}
