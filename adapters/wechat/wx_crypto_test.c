/* cmocka tests of wx_crypto.c with Tencent's published sample vectors
 * (WeCom WXBizMsgCrypt samples: token QDG6eK, CorpID wx5823bf96d3bd56c7,
 * EncodingAESKey jWmYm7...B2C) and hand-made negatives with the official
 * codes (wechat.md §3). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "wx_crypto.h"

#define TOKEN "QDG6eK"
#define CORP "wx5823bf96d3bd56c7"
#define AESKEY "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
#define V_SIG "5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3"
#define V_TS "1409659589"
#define V_NONCE "263014780"
#define V_ECHO "P9nAzCzyDtyTWESHep1vC5X9xho/qYX3Zpb4yKa9SKld1DsH3Iyt3tP3zNdtp+4RPcs8TgAE7OaBO+FZXvnaqQ=="
#define V_ECHO_PLAIN "1616140317555161061"
#define P_SIG "477715d11cdb4164915debcba66cb864d751f3e6"
#define P_TS "1409659813"
#define P_NONCE "1372623149"
#define P_ENC                                                                              \
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3" \
    "QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48" \
    "kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izo" \
    "un1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUa" \
    "x5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl" \
    "/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q=="

#define S(x) x, strlen(x)

static unsigned char key[32];

static int setup(void **st)
{
    (void)st;
    return wx_aes_key(S(AESKEY), key) == WX_OK ? 0 : -1;
}

static void hex(const unsigned char *b, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
}

static void test_aes_key(void **st)
{
    (void)st;
    unsigned char k[32];
    char h[65];
    assert_int_equal(wx_aes_key(S(AESKEY), k), WX_OK);
    hex(k, 32, h);
    assert_string_equal(h, "8d69989bbaabe67328014c194631ad0719b3dca035b64023df292447aab60760");
    /* The MP sample key ends in 'G': its discarded bits are non-zero. */
    assert_int_equal(wx_aes_key(S("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"), k), WX_OK);
    hex(k, 32, h);
    assert_string_equal(h, "69b71d79f8218a39259a7a29aabb2dbafc31cb3d35db7e39ebbf3d0010831051");
    assert_int_equal(wx_aes_key(S("abcdefghijklmnopqrstuvwxyz0123456789ABCDEF"), k),
                     WX_ILLEGAL_AES_KEY);
    assert_int_equal(wx_aes_key(S("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"), k),
                     WX_ILLEGAL_AES_KEY);
    assert_int_equal(wx_aes_key(S("abcdefghijklmnopqrstuvwxyz0123456789ABCDEF="), k),
                     WX_ILLEGAL_AES_KEY);
    assert_int_equal(wx_aes_key(S("abcdefghijklmnopqrstuvwxyz0123456789ABCD-_G"), k),
                     WX_ILLEGAL_AES_KEY);
    assert_int_equal(wx_aes_key(NULL, 0, k), WX_ILLEGAL_AES_KEY);
    assert_string_equal(wx_err_name(WX_ILLEGAL_AES_KEY), "IllegalAesKey");
}

static void test_signature_vectors(void **st)
{
    (void)st;
    assert_int_equal(wx_signature_check(S(TOKEN), S(V_TS), S(V_NONCE), S(V_ECHO), S(V_SIG)),
                     WX_OK);
    assert_int_equal(wx_signature_check(S(TOKEN), S(P_TS), S(P_NONCE), S(P_ENC), S(P_SIG)),
                     WX_OK);
    /* swapping timestamp and nonce gives the same signature: sorted input */
    assert_int_equal(wx_signature_check(S(TOKEN), S(P_NONCE), S(P_TS), S(P_ENC), S(P_SIG)),
                     WX_OK);
    /* uppercase hex is not accepted */
    assert_int_equal(wx_signature_check(S(TOKEN), S(P_TS), S(P_NONCE), S(P_ENC),
                                        S("477715D11CDB4164915DEBCBA66CB864D751F3E6")),
                     WX_VALIDATE_SIGNATURE);
    /* Encrypt left out of the hash (the classic bug) */
    assert_int_equal(wx_signature_check(S(TOKEN), S(P_TS), S(P_NONCE), NULL, 0, S(P_SIG)),
                     WX_VALIDATE_SIGNATURE);
    /* wrong token, truncated, longer, empty */
    assert_int_equal(wx_signature_check(S("QDG6eL"), S(P_TS), S(P_NONCE), S(P_ENC), S(P_SIG)),
                     WX_VALIDATE_SIGNATURE);
    assert_int_equal(wx_signature_check(S(TOKEN), S(P_TS), S(P_NONCE), S(P_ENC), P_SIG, 39),
                     WX_VALIDATE_SIGNATURE);
    assert_int_equal(wx_signature_check(S(TOKEN), S(P_TS), S(P_NONCE), S(P_ENC),
                                        S(P_SIG "0")),
                     WX_VALIDATE_SIGNATURE);
    assert_int_equal(wx_signature_check(S(TOKEN), S(P_TS), S(P_NONCE), S(P_ENC), "", 0),
                     WX_VALIDATE_SIGNATURE);
    /* the plain signature: sha1 of sorted token, timestamp, nonce */
    const char *parts[3] = {"pamtest", "1409304348", "xxxxxx"};
    size_t lens[3] = {7, 10, 6};
    char sig[41];
    assert_int_equal(wx_signature(parts, lens, 3, sig), WX_OK);
    assert_int_equal(wx_signature_check(S("pamtest"), S("1409304348"), S("xxxxxx"), NULL, 0,
                                        sig, 40),
                     WX_OK);
    /* prefix ordering: "ab" < "abc" (bytewise, shorter first) */
    const char *p2[2] = {"abc", "ab"};
    const char *p3[2] = {"ab", "abc"};
    size_t l2[2] = {3, 2}, l3[2] = {2, 3};
    char s2[41], s3[41];
    wx_signature(p2, l2, 2, s2);
    wx_signature(p3, l3, 2, s3);
    assert_string_equal(s2, s3);
}

static void test_decrypt_vectors(void **st)
{
    (void)st;
    unsigned char *buf;
    size_t off, n;
    assert_int_equal(wx_decrypt(key, S(V_ECHO), S(CORP), &buf, &off, &n), WX_OK);
    assert_int_equal(n, strlen(V_ECHO_PLAIN));
    assert_memory_equal(buf + off, V_ECHO_PLAIN, n);
    free(buf);
    assert_int_equal(wx_decrypt(key, S(P_ENC), S(CORP), &buf, &off, &n), WX_OK);
    const char *msg = (const char *)buf + off;
    assert_non_null(strstr(msg, "<Content><![CDATA[hello]]></Content>"));
    assert_non_null(strstr(msg, "<MsgId>4561255354251345929</MsgId>"));
    assert_int_equal(msg[n], '\0');
    free(buf);
    /* receive id */
    assert_int_equal(wx_decrypt(key, S(P_ENC), S("wx5823bf96d3bd56c8"), &buf, &off, &n),
                     WX_VALIDATE_RECEIVEID);
    assert_null(buf);
    assert_int_equal(wx_decrypt(key, S(P_ENC), S(""), &buf, &off, &n), WX_VALIDATE_RECEIVEID);
    assert_int_equal(wx_decrypt(key, S(P_ENC), S(CORP "x"), &buf, &off, &n),
                     WX_VALIDATE_RECEIVEID);
    /* another key: the padding comes out wrong (or the frame) */
    unsigned char k2[32];
    wx_aes_key(S("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"), k2);
    int rc = wx_decrypt(k2, S(P_ENC), S(CORP), &buf, &off, &n);
    assert_true(rc == WX_DECRYPT_AES || rc == WX_ILLEGAL_BUFFER || rc == WX_VALIDATE_RECEIVEID);
    assert_null(buf);
}

/* Encrypts raw plaintext blocks (no padding added) with the test key, as
 * base64: for frames the encoder would never make. */
static char *raw_encrypt(const unsigned char *pt, size_t len)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    unsigned char *ct = malloc(len + 32);
    int a = 0, b = 0;
    EVP_EncryptInit_ex(c, EVP_aes_256_cbc(), NULL, key, key);
    EVP_CIPHER_CTX_set_padding(c, 0);
    EVP_EncryptUpdate(c, ct, &a, pt, (int)len);
    EVP_EncryptFinal_ex(c, ct + a, &b);
    EVP_CIPHER_CTX_free(c);
    char *out = malloc(4 * (len / 3 + 2) + 1);
    wx_b64_encode(ct, (size_t)(a + b), out);
    free(ct);
    return out;
}

/* frame: 16 random, be32 len, msg, id, then `pad` bytes of value padv */
static char *frame(uint32_t lenfield, const char *msg, const char *id, size_t pad, int padv,
                   size_t total)
{
    unsigned char f[256];
    memset(f, 'r', 16);
    f[16] = (unsigned char)(lenfield >> 24);
    f[17] = (unsigned char)(lenfield >> 16);
    f[18] = (unsigned char)(lenfield >> 8);
    f[19] = (unsigned char)lenfield;
    size_t o = 20;
    memcpy(f + o, msg, strlen(msg));
    o += strlen(msg);
    memcpy(f + o, id, strlen(id));
    o += strlen(id);
    while (o + pad < total)
        f[o++] = 'z';
    memset(f + o, padv, pad);
    o += pad;
    assert_int_equal(o % 32, 0);
    return raw_encrypt(f, o);
}

static void test_decrypt_negatives(void **st)
{
    (void)st;
    unsigned char *buf;
    size_t off, n;
    /* step 3: base64 */
    assert_int_equal(wx_decrypt(key, "", 0, S(CORP), &buf, &off, &n), WX_DECODE_BASE64);
    assert_int_equal(wx_decrypt(key, S("abc"), S(CORP), &buf, &off, &n), WX_DECODE_BASE64);
    assert_int_equal(wx_decrypt(key, S("ab!d"), S(CORP), &buf, &off, &n), WX_DECODE_BASE64);
    assert_int_equal(wx_decrypt(key, S("ab=d"), S(CORP), &buf, &off, &n), WX_DECODE_BASE64);
    /* '+' turned into ' ' by a form decoder */
    char spaced[sizeof P_ENC];
    memcpy(spaced, P_ENC, sizeof P_ENC);
    *strchr(spaced, '+') = ' ';
    assert_int_equal(wx_decrypt(key, S(spaced), S(CORP), &buf, &off, &n), WX_DECODE_BASE64);
    /* step 4: length not a multiple of 32 (16 bytes), pad byte 0 and 33,
     * non-uniform pad (strict) */
    assert_int_equal(wx_decrypt(key, S("AAAAAAAAAAAAAAAAAAAAAA=="), S(CORP), &buf, &off, &n),
                     WX_DECRYPT_AES);
    char *b = frame(2, "hi", CORP, 1, 0, 64);
    assert_int_equal(wx_decrypt(key, S(b), S(CORP), &buf, &off, &n), WX_DECRYPT_AES);
    free(b);
    b = frame(2, "hi", CORP, 1, 33, 64);
    assert_int_equal(wx_decrypt(key, S(b), S(CORP), &buf, &off, &n), WX_DECRYPT_AES);
    free(b);
    {
        unsigned char f[64];
        memset(f, 'r', 16);
        f[16] = f[17] = f[18] = 0;
        f[19] = 2;
        memcpy(f + 20, "hi" CORP, 20);
        memset(f + 40, 24, 24);
        f[50] = 23;   /* one pad byte differs */
        b = raw_encrypt(f, 64);
        assert_int_equal(wx_decrypt(key, S(b), S(CORP), &buf, &off, &n), WX_DECRYPT_AES);
        free(b);
        f[50] = 24;
        b = raw_encrypt(f, 64);
        assert_int_equal(wx_decrypt(key, S(b), S(CORP), &buf, &off, &n), WX_OK);
        assert_memory_equal(buf + off, "hi", 2);
        free(buf);
        free(b);
    }
    /* step 5: frame of 20 bytes or less after the pad; a length field
     * beyond the frame, also 0x7fffffff and 0xffffffff (no overflow) */
    b = frame(0, "", "", 12, 12, 32);
    assert_int_equal(wx_decrypt(key, S(b), S(CORP), &buf, &off, &n), WX_ILLEGAL_BUFFER);
    free(b);
    {
        unsigned char f[32];
        memset(f, 'r', 16);
        memset(f + 16, 16, 16);   /* 16 bytes of frame, 16 of pad */
        b = raw_encrypt(f, 32);
        assert_int_equal(wx_decrypt(key, S(b), S(CORP), &buf, &off, &n), WX_ILLEGAL_BUFFER);
        free(b);
        memset(f, 32, 32);        /* nothing but a full pad block */
        b = raw_encrypt(f, 32);
        assert_int_equal(wx_decrypt(key, S(b), S(CORP), &buf, &off, &n), WX_ILLEGAL_BUFFER);
        free(b);
    }
    b = frame(100, "hi", CORP, 24, 24, 64);
    assert_int_equal(wx_decrypt(key, S(b), S(CORP), &buf, &off, &n), WX_ILLEGAL_BUFFER);
    free(b);
    b = frame(0x7fffffff, "hi", CORP, 24, 24, 64);
    assert_int_equal(wx_decrypt(key, S(b), S(CORP), &buf, &off, &n), WX_ILLEGAL_BUFFER);
    free(b);
    b = frame(0xffffffff, "hi", CORP, 24, 24, 64);
    assert_int_equal(wx_decrypt(key, S(b), S(CORP), &buf, &off, &n), WX_ILLEGAL_BUFFER);
    free(b);
    /* step 6: the length field eats the id -> the id is wrong */
    b = frame(4, "hi", CORP, 24, 24, 64);
    assert_int_equal(wx_decrypt(key, S(b), S(CORP), &buf, &off, &n), WX_VALIDATE_RECEIVEID);
    free(b);
}

static void test_encrypt_roundtrip(void **st)
{
    (void)st;
    const unsigned char rnd[16] = "aaaabbbbccccdddd";
    /* msg lengths around the 32-byte boundary: frame = 20 + len + 18 */
    for (size_t len = 0; len < 100; len++) {
        char msg[128];
        for (size_t i = 0; i < len; i++)
            msg[i] = (char)('A' + i % 26);
        char *out;
        size_t olen;
        assert_int_equal(wx_encrypt(key, rnd, msg, len, S(CORP), &out, &olen), WX_OK);
        assert_int_equal(olen, strlen(out));
        unsigned char raw[256];
        size_t rlen;
        assert_int_equal(wx_b64_decode(out, olen, raw, &rlen), WX_OK);
        assert_int_equal(rlen % 32, 0);
        size_t flen = 20 + len + strlen(CORP);
        /* aligned frame: a full block of 0x20 */
        assert_int_equal(rlen, flen + (32 - flen % 32));
        unsigned char *buf;
        size_t off, n;
        assert_int_equal(wx_decrypt(key, out, olen, S(CORP), &buf, &off, &n), WX_OK);
        assert_int_equal(n, len);
        assert_memory_equal(buf + off, msg, len);
        assert_memory_equal(buf, rnd, 16);
        free(buf);
        free(out);
    }
    /* frame exactly 64 bytes: 20 + 26 + 18 -> 32 bytes of 0x20 */
    char *out;
    size_t olen;
    assert_int_equal(wx_encrypt(key, rnd, "abcdefghijklmnopqrstuvwxyz", 26, S(CORP), &out, &olen),
                     WX_OK);
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    unsigned char raw[128], pt[128];
    size_t rlen;
    int a = 0, bb = 0;
    wx_b64_decode(out, olen, raw, &rlen);
    assert_int_equal(rlen, 96);
    EVP_DecryptInit_ex(c, EVP_aes_256_cbc(), NULL, key, key);
    EVP_CIPHER_CTX_set_padding(c, 0);
    EVP_DecryptUpdate(c, pt, &a, raw, (int)rlen);
    EVP_DecryptFinal_ex(c, pt + a, &bb);
    EVP_CIPHER_CTX_free(c);
    for (int i = 64; i < 96; i++)
        assert_int_equal(pt[i], 0x20);
    free(out);
}

/* An instance's reused contexts give the bytes a fresh context gives, for
 * every message in turn (the IV starts over each time), also when the
 * context is busy or was made for another key (then a fresh one is used). */
struct aes_job {
    struct wx_aes *aes;
    int bad;
};

static void *aes_worker(void *arg)
{
    struct aes_job *j = arg;
    const unsigned char rnd[16] = "0123456789abcdef";
    for (size_t len = 0; len < 400; len++) {
        char msg[512];
        for (size_t i = 0; i < len; i++)
            msg[i] = (char)('a' + (i * 7 + len) % 26);
        char *a, *b;
        size_t an, bn;
        unsigned char *buf = NULL;
        size_t off, n;
        if (wx_encrypt(key, rnd, msg, len, S(CORP), &a, &an) != WX_OK ||
            wx_encrypt_with(key, j->aes, rnd, msg, len, S(CORP), &b, &bn) != WX_OK) {
            j->bad++;
            continue;
        }
        if (an != bn || memcmp(a, b, an) != 0 ||
            wx_decrypt_with(key, j->aes, b, bn, S(CORP), &buf, &off, &n) != WX_OK ||
            n != len || memcmp(buf + off, msg, len) != 0)
            j->bad++;
        free(buf);
        free(a);
        free(b);
    }
    return NULL;
}

static void test_aes_reused(void **st)
{
    (void)st;
    struct wx_aes *aes = wx_aes_new(key);
    assert_non_null(aes);
    struct aes_job one = { aes, 0 };
    aes_worker(&one);
    assert_int_equal(one.bad, 0);
    /* four threads on one instance's contexts */
    pthread_t th[4];
    struct aes_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (struct aes_job){ aes, 0 };
        assert_int_equal(pthread_create(&th[i], NULL, aes_worker, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(jobs[i].bad, 0);
    }
    wx_aes_free(aes);
    /* contexts of another key are not used for this one */
    unsigned char other[32];
    memcpy(other, key, 32);
    other[0] ^= 1;
    struct wx_aes *wrong = wx_aes_new(other);
    struct aes_job w = { wrong, 0 };
    aes_worker(&w);
    assert_int_equal(w.bad, 0);
    wx_aes_free(wrong);
    wx_aes_free(NULL);
}

static void test_base64(void **st)
{
    (void)st;
    unsigned char out[16];
    size_t n;
    char enc[32];
    const char *v[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *e[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    for (int i = 0; i < 7; i++) {
        assert_int_equal(wx_b64_encode((const unsigned char *)v[i], strlen(v[i]), enc),
                         strlen(e[i]));
        assert_string_equal(enc, e[i]);
        if (i) {
            assert_int_equal(wx_b64_decode(S(e[i]), out, &n), WX_OK);
            assert_int_equal(n, strlen(v[i]));
            assert_memory_equal(out, v[i], n);
        }
    }
    assert_int_equal(wx_b64_decode(S(""), out, &n), WX_DECODE_BASE64);
    assert_int_equal(wx_b64_decode(S("Zg="), out, &n), WX_DECODE_BASE64);
    assert_int_equal(wx_b64_decode(S("Z==="), out, &n), WX_DECODE_BASE64);
    assert_int_equal(wx_b64_decode(S("Zg==Zg=="), out, &n), WX_DECODE_BASE64);
    assert_int_equal(wx_b64_decode(S("Zm9v\nYg=="), out, &n), WX_DECODE_BASE64);
    assert_int_equal(wx_b64_decode(S("Zm-_"), out, &n), WX_DECODE_BASE64);
}

static void test_query(void **st)
{
    (void)st;
    char v[64];
    const char *q = "signature=abc&timestamp=1409659813&nonce=13%2B7&echostr=a+b%2Fc%3D%3D&"
                    "twice=%252B&empty=&flag";
    assert_int_equal(wx_query_get(S(q), "signature", v, sizeof v), 3);
    assert_memory_equal(v, "abc", 3);
    assert_int_equal(wx_query_get(S(q), "nonce", v, sizeof v), 4);
    assert_memory_equal(v, "13+7", 4);
    /* '+' stays '+' (base64), %xx decoded once */
    assert_int_equal(wx_query_get(S(q), "echostr", v, sizeof v), 7);
    assert_memory_equal(v, "a+b/c==", 7);
    assert_int_equal(wx_query_get(S(q), "twice", v, sizeof v), 3);
    assert_memory_equal(v, "%2B", 3);
    assert_int_equal(wx_query_get(S(q), "empty", v, sizeof v), 0);
    assert_int_equal(wx_query_get(S(q), "flag", v, sizeof v), 0);
    assert_int_equal(wx_query_get(S(q), "missing", v, sizeof v), -1);
    assert_int_equal(wx_query_get(S(q), "sign", v, sizeof v), -1);
    assert_int_equal(wx_query_get(S("a=1&a=2"), "a", v, sizeof v), -2);
    assert_int_equal(wx_query_get(S("a=%zz"), "a", v, sizeof v), -3);
    assert_int_equal(wx_query_get(S("a=%4"), "a", v, sizeof v), -3);
    assert_int_equal(wx_query_get(S("a=%"), "a", v, sizeof v), -3);
    assert_int_equal(wx_query_get(S("a=%41&b=1"), "a", v, sizeof v), 1);
    assert_int_equal(v[0], 'A');
    assert_int_equal(wx_query_get(S("a=12345"), "a", v, 4), -4);
    assert_int_equal(wx_query_get("", 0, "a", v, sizeof v), -1);
}

/* One pass over the query gives every parameter what wx_query_get gives it
 * alone, its error included, whatever the others hold. */
static void test_query_scan(void **st)
{
    (void)st;
    const char *qs[] = {
        "signature=abc&timestamp=1409659813&nonce=13%2B7&echostr=a+b%2Fc%3D%3D&empty=&flag",
        "a=1&b=%zz&a=2&c=%41%42&d",
        "b=%4&c=12345678&c=1&sign=x&signature",
        "",
        "&&a=&=x&b==y",
    };
    const char *names[] = { "signature", "nonce", "echostr", "empty", "flag", "missing",
                            "a", "b", "c", "d", "sign", "timestamp" };
    enum { NN = sizeof names / sizeof names[0] };
    for (size_t t = 0; t < sizeof qs / sizeof qs[0]; t++) {
        char outs[NN][8], one[8];
        struct wx_qparam ps[NN];
        for (size_t k = 0; k < NN; k++)
            ps[k] = (struct wx_qparam){ names[k], strlen(names[k]), outs[k], 6, 99 };
        wx_query_scan(qs[t], strlen(qs[t]), ps, NN);
        for (size_t k = 0; k < NN; k++) {
            long want = wx_query_get(qs[t], strlen(qs[t]), names[k], one, 6);
            assert_int_equal(ps[k].got, want);
            if (want > 0)
                assert_memory_equal(outs[k], one, (size_t)want);
        }
    }
}

static void test_random(void **st)
{
    (void)st;
    char a[17] = {0}, b[17] = {0};
    assert_int_equal(wx_random_alnum(a, 16), 0);
    assert_int_equal(wx_random_alnum(b, 16), 0);
    assert_true(strcmp(a, b) != 0);
    for (int i = 0; i < 16; i++)
        assert_true((a[i] >= 'A' && a[i] <= 'Z') || (a[i] >= 'a' && a[i] <= 'z') ||
                    (a[i] >= '0' && a[i] <= '9'));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aes_key),
        cmocka_unit_test(test_signature_vectors),
        cmocka_unit_test(test_decrypt_vectors),
        cmocka_unit_test(test_decrypt_negatives),
        cmocka_unit_test(test_encrypt_roundtrip),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_aes_reused),
        cmocka_unit_test(test_query),
        cmocka_unit_test(test_query_scan),
        cmocka_unit_test(test_random),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
