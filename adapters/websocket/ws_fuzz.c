/*
 * libFuzzer harness over everything a WebSocket client controls: the frame
 * receiver (fed in fuzzer-chosen chunks), client frames in JSON and msgpack,
 * the msgpack reader (with an encode/decode round-trip property), visitor
 * tokens and the handshake's key and subprotocol parsers.
 *
 * The first byte picks a mode:
 *   0: raw bytes into ws_rx, split where the next bytes say
 *   1: "structured" frames: (b0, len, payload) triples, masked by the
 *      harness, so fragments, control frames in between and UTF-8 across
 *      fragments are reached without guessing masks
 *   2: ws_mp_decode + round trip     3: ws_cframe_parse, JSON and msgpack
 *   4: tokens (as given, and minted over the bytes as payload)
 *   5: handshake helpers
 * Every message the receiver hands out goes through the protocol parser as
 * the connection would.
 */
#include "ws.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(x) do { if (!(x)) __builtin_trap(); } while (0)

struct st {
    size_t msgs;
    int closed;
};

static int on_msg(void *arg, int op, uint8_t *data, size_t len)
{
    struct st *s = arg;
    CHECK(op == WS_OP_TEXT || op == WS_OP_BINARY);
    CHECK(len <= 4096);
    if (op == WS_OP_TEXT)
        CHECK(ws_utf8_valid(data, len));
    struct ws_cframe f;
    char err[160];
    if (ws_cframe_parse(data, len, op == WS_OP_TEXT ? WS_SUB_JSON : WS_SUB_MSGPACK, &f, err,
                        sizeof err) == 0)
        CHECK(f.type >= WS_C_HELLO && f.type <= WS_C_EVENT);
    else
        CHECK(err[0]);
    ws_cframe_free(&f);
    s->msgs++;
    return (s->msgs % 7) == 3 ? WS_RX_PAUSE : 0;   /* exercise pause/resume */
}

static int on_ctl(void *arg, int op, unsigned code, uint8_t *data, size_t len)
{
    struct st *s = arg;
    CHECK(op == WS_OP_PING || op == WS_OP_PONG || op == WS_OP_CLOSE);
    CHECK(len <= 125);
    (void)data;
    if (op == WS_OP_CLOSE) {
        CHECK(code == WS_CLOSE_NO_STATUS || ws_close_code_valid(code));
        s->closed = 1;
    }
    return 0;
}

static const struct ws_rx_ops ops = { on_msg, on_ctl };

static void drive(const uint8_t *p, size_t n, const uint8_t *splits, size_t nsplits)
{
    struct ws_rx rx = { .max_message = 4096 };
    struct st s = { 0 };
    uint8_t *buf = malloc(n ? n : 1);
    size_t o = 0, k = 0;
    int r = 0;
    while (o < n) {
        size_t chunk = nsplits ? (size_t)splits[k++ % nsplits] + 1 : n;
        if (chunk > n - o)
            chunk = n - o;
        memcpy(buf, p + o, chunk);
        const char *why = NULL;
        r = ws_rx_input(&rx, buf, chunk, &ops, &s, &why);
        o += chunk;
        while (r == WS_RX_PAUSE)
            r = ws_rx_input(&rx, NULL, 0, &ops, &s, &why);
        if (r) {
            CHECK(r >= 1000 && why && ws_utf8_valid((const uint8_t *)why, strlen(why)));
            break;
        }
        /* kept bytes never exceed one frame (header + max message) */
        CHECK(rx.in_len <= 14 + 4096 + 125 + 14 || s.closed);
        CHECK(rx.msg_len <= rx.max_message);
    }
    ws_rx_free(&rx);
    free(buf);
}

static void structured(const uint8_t *p, size_t n)
{
    /* each 2 input bytes become at most 8 header bytes, payload 1:1 */
    uint8_t *out = malloc(n * 4 + 16);
    size_t o = 0, i = 0;
    static const uint8_t key[4] = { 0xa1, 0x02, 0x5c, 0xf0 };
    while (i + 2 <= n) {
        uint8_t b0 = p[i++];
        size_t len = p[i++] % 200;
        if (len > n - i)
            len = n - i;
        out[o++] = b0;
        if (len < 126) {
            out[o++] = (uint8_t)(0x80 | len);
        } else {
            out[o++] = 0x80 | 126;
            out[o++] = 0;
            out[o++] = (uint8_t)len;
        }
        memcpy(out + o, key, 4);
        o += 4;
        for (size_t j = 0; j < len; j++)
            out[o++] = p[i + j] ^ key[j & 3];
        i += len;
    }
    drive(out, o, p, n < 8 ? n : 8);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t mode = data[0] % 6;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    char err[160];
    switch (mode) {
    case 0: {
        size_t ns = n > 4 ? 4 : 0;
        drive(p + ns, n - ns, p, ns);
        break;
    }
    case 1:
        structured(p, n);
        break;
    case 2: {
        json_t *v = ws_mp_decode(p, n, err, sizeof err);
        if (!v) {
            CHECK(err[0]);
            break;
        }
        struct ws_obuf b = { 0 };
        CHECK(ws_mp_encode(v, &b) == 0);
        json_t *w = ws_mp_decode(b.p, b.len, err, sizeof err);
        CHECK(w && json_equal(v, w));
        /* canonical: re-encoding the decoded value gives the same bytes */
        struct ws_obuf c = { 0 };
        CHECK(ws_mp_encode(w, &c) == 0 && c.len == b.len && !memcmp(c.p, b.p, b.len));
        struct ws_obuf f = { 0 };
        CHECK(ws_encode(v, WS_SUB_JSON, &f) == 0 || !json_is_object(v));
        ws_obuf_free(&f);
        ws_obuf_free(&b);
        ws_obuf_free(&c);
        json_decref(v);
        json_decref(w);
        break;
    }
    case 3: {
        struct ws_cframe f;
        ws_cframe_parse(p, n, WS_SUB_JSON, &f, err, sizeof err);
        ws_cframe_free(&f);
        ws_cframe_parse(p, n, WS_SUB_MSGPACK, &f, err, sizeof err);
        ws_cframe_free(&f);
        break;
    }
    case 4: {
        static const uint8_t key[] = "fuzz-secret-0123456789";
        struct ws_visitor v;
        const char *why = NULL;
        int r = ws_token_verify(key, sizeof key - 1, (const char *)p, n, 1000, "web", &v, &why);
        CHECK(r == WS_TOK_OK || why);
        char *payload = malloc(n + 1), tok[WS_TOKEN_MAX * 2];
        memcpy(payload, p, n);
        payload[n] = 0;
        if (ws_token_mint(key, sizeof key - 1, payload, tok, sizeof tok) > 0) {
            r = ws_token_verify(key, sizeof key - 1, tok, strlen(tok), 1000, "web", &v, &why);
            if (r == WS_TOK_OK)
                CHECK(v.sub[0] && v.conv[0] && strlen(v.sub) <= WS_IDENT_MAX);
        }
        free(payload);
        break;
    }
    default: {
        char acc[29];
        if (ws_key_valid((const char *)p, n)) {
            CHECK(n == 24);
            ws_accept_key((const char *)p, n, acc);
            CHECK(strlen(acc) == 28);
        }
        int s = ws_sub_pick((const char *)p, n);
        CHECK(s >= -1 && s <= 1);
        break;
    }
    }
    return 0;
}
