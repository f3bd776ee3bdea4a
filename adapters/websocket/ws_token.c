/*
 * Visitor tokens (spec/websocket.md §4):
 *     v1.<base64url(JSON payload)>.<base64url(HMAC-SHA256(secret, "v1." payload))>
 * The signature is checked, in constant time, before the payload is parsed,
 * so a forged token never reaches the JSON parser.
 */
#include "ws.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>

static int b64u_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Unpadded base64url; returns the decoded length or -1. Trailing bits must
 * be zero so every byte string has exactly one encoding. */
static long b64u_decode(const char *s, size_t n, uint8_t *out, size_t cap)
{
    if (n % 4 == 1)
        return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64u_val((unsigned char)s[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap)
                return -1;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (bits && (acc & ((1u << bits) - 1)))
        return -1;
    return (long)o;
}

static size_t b64u_encode(const uint8_t *p, size_t n, char *out)
{
    static const char a[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | p[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[o++] = a[(acc >> bits) & 63];
        }
    }
    if (bits)
        out[o++] = a[(acc << (6 - bits)) & 63];
    return o;
}

static void sign(const uint8_t *secret, size_t secret_len, const char *data, size_t n,
                 uint8_t mac[32])
{
    unsigned int ml = 32;
    HMAC(EVP_sha256(), secret, (int)secret_len, (const unsigned char *)data, n, mac, &ml);
}

#define NO(code, text) do { *why = (text); return (code); } while (0)

static int copy_ident(json_t *o, const char *key, int required, char *dst, const char **why)
{
    json_t *v = json_object_get(o, key);
    dst[0] = 0;
    if (!v) {
        if (required)
            NO(WS_TOK_INVALID, "token payload lacks a required key");
        return 0;
    }
    size_t n = json_is_string(v) ? json_string_length(v) : 0;
    if (!n || n > WS_IDENT_MAX || memchr(json_string_value(v), 0, n))
        NO(WS_TOK_INVALID, "token identity is not a string of 1..128 bytes");
    memcpy(dst, json_string_value(v), n + 1);
    return 0;
}

int ws_token_verify(const uint8_t *secret, size_t secret_len, const char *tok,
                    size_t len, int64_t now, const char *instance,
                    struct ws_visitor *out, const char **why)
{
    memset(out, 0, sizeof *out);
    if (!secret || !secret_len)
        NO(WS_TOK_INVALID, "this instance has no token_secret");
    if (len > WS_TOKEN_MAX || len < 4 || memcmp(tok, "v1.", 3))
        NO(WS_TOK_INVALID, "not a v1 token");
    const char *dot = memchr(tok + 3, '.', len - 3);
    if (!dot)
        NO(WS_TOK_INVALID, "token has no signature");
    size_t signed_len = (size_t)(dot - tok);
    const char *sig = dot + 1;
    size_t sig_len = len - signed_len - 1;
    uint8_t want[32], got[33];
    if (sig_len != 43 || b64u_decode(sig, sig_len, got, sizeof got) != 32)
        NO(WS_TOK_INVALID, "token signature is not 32 bytes of base64url");
    sign(secret, secret_len, tok, signed_len, want);
    if (CRYPTO_memcmp(want, got, 32) != 0)
        NO(WS_TOK_INVALID, "token signature does not match");
    uint8_t payload[WS_TOKEN_MAX];
    long pl = b64u_decode(tok + 3, signed_len - 3, payload, sizeof payload);
    if (pl <= 0)
        NO(WS_TOK_INVALID, "token payload is not base64url");
    json_t *o = json_loadb((const char *)payload, (size_t)pl, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        NO(WS_TOK_INVALID, "token payload is not a JSON object");
    }
    int r = WS_TOK_INVALID;
    json_t *exp = json_object_get(o, "exp");
    json_t *aud = json_object_get(o, "aud");
    if (!json_is_integer(exp)) {
        *why = "token payload has no integer exp";
    } else if (copy_ident(o, "sub", 1, out->sub, why) || copy_ident(o, "conv", 0, out->conv, why)) {
        /* why is set */
    } else if (json_object_get(o, "name") &&
               (!json_is_string(json_object_get(o, "name")) ||
                json_string_length(json_object_get(o, "name")) > WS_IDENT_MAX)) {
        *why = "token name is not a string of at most 128 bytes";
    } else if (aud && (!json_is_string(aud) || !instance ||
                       strcmp(json_string_value(aud), instance))) {
        *why = "token aud is not this instance";
    } else {
        out->exp = json_integer_value(exp);
        json_t *nm = json_object_get(o, "name");
        if (nm)
            snprintf(out->name, sizeof out->name, "%s", json_string_value(nm));
        if (!out->conv[0])
            memcpy(out->conv, out->sub, sizeof out->conv);
        if (now >= out->exp) {
            r = WS_TOK_EXPIRED;
            *why = "token expired";
        } else if (!strncmp(out->conv, "anon:", 5)) {
            *why = "token conversation uses the reserved prefix anon:";
        } else {
            r = WS_TOK_OK;
        }
    }
    json_decref(o);
    return r;
}

int ws_token_mint(const uint8_t *secret, size_t secret_len, const char *payload_json,
                  char *out, size_t cap)
{
    size_t pl = strlen(payload_json);
    size_t need = 3 + (pl * 4 + 2) / 3 + 1 + 43 + 1;
    if (cap < need)
        return -1;
    memcpy(out, "v1.", 3);
    size_t o = 3 + b64u_encode((const uint8_t *)payload_json, pl, out + 3);
    uint8_t mac[32];
    sign(secret, secret_len, out, o, mac);
    out[o++] = '.';
    o += b64u_encode(mac, 32, out + o);
    out[o] = 0;
    return (int)o;
}
