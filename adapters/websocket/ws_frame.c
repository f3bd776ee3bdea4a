/*
 * RFC 6455 framing for the server side: the receive state machine, UTF-8,
 * headers, the accept key. No I/O and no host: the plugin feeds it bytes.
 *
 * The receiver works on complete frames. A frame that is complete in the
 * buffer the caller read into is unmasked and handled in place, so the
 * common case (a small unfragmented message per read) copies nothing; only
 * the incomplete tail of a read and the fragments of an open message are
 * kept on the heap, and freed as soon as they are used up, so an idle
 * connection holds no buffer.
 */
#include "ws.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* UTF-8 */

/* States: 0 start; 1..3 that many continuation bytes (80..BF) to come;
 * 4 after E0 (next A0..BF); 5 after ED (next 80..9F); 6 after F0 (next
 * 90..BF); 7 after F4 (next 80..8F). 4-7 are followed by 1 or 2 more. */
int ws_utf8_step(uint8_t *state, const uint8_t *p, size_t n)
{
    uint8_t s = *state;
    size_t i = 0;
    while (i < n) {
        if (s == 0) {
            /* ASCII runs, eight bytes at a time */
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080ull)
                    break;
                i += 8;
            }
            if (i >= n)
                break;
            uint8_t c = p[i++];
            if (c < 0x80)
                continue;
            if (c >= 0xC2 && c <= 0xDF)
                s = 1;
            else if (c == 0xE0)
                s = 4;
            else if (c == 0xED)
                s = 5;
            else if (c >= 0xE1 && c <= 0xEF)
                s = 2;
            else if (c == 0xF0)
                s = 6;
            else if (c >= 0xF1 && c <= 0xF3)
                s = 3;
            else if (c == 0xF4)
                s = 7;
            else
                return *state = 0xFF, -1;
            continue;
        }
        uint8_t c = p[i++];
        uint8_t lo = 0x80, hi = 0xBF, next;
        switch (s) {
        case 1: next = 0; break;
        case 2: next = 1; break;
        case 3: next = 2; break;
        case 4: lo = 0xA0; next = 1; break;
        case 5: hi = 0x9F; next = 1; break;
        case 6: lo = 0x90; next = 2; break;
        case 7: hi = 0x8F; next = 2; break;
        default: return -1;
        }
        if (c < lo || c > hi)
            return *state = 0xFF, -1;
        s = next;
    }
    *state = s;
    return 0;
}

int ws_utf8_valid(const uint8_t *p, size_t n)
{
    uint8_t s = 0;
    return ws_utf8_step(&s, p, n) == 0 && s == 0;
}

/* ------------------------------------------------------------------------ */
/* Headers, keys, close codes */

size_t ws_frame_header(uint8_t out[10], int opcode, uint64_t len)
{
    out[0] = (uint8_t)(0x80 | (opcode & 0x0F));
    if (len < 126) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

void ws_accept_key(const char *key, size_t key_len, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char in[128], md[SHA_DIGEST_LENGTH];
    if (key_len > sizeof in - (sizeof guid - 1))
        key_len = sizeof in - (sizeof guid - 1);   /* callers check the key first */
    memcpy(in, key, key_len);
    memcpy(in + key_len, guid, sizeof guid - 1);
    SHA1(in, key_len + sizeof guid - 1, md);
    EVP_EncodeBlock((unsigned char *)out, md, sizeof md);   /* 28 + NUL */
}

static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int ws_key_valid(const char *key, size_t len)
{
    /* 16 bytes = 22 characters, the last carrying 2 bits, then "==" */
    if (len != 24 || key[22] != '=' || key[23] != '=')
        return 0;
    for (size_t i = 0; i < 22; i++)
        if (b64val((unsigned char)key[i]) < 0)
            return 0;
    return (b64val((unsigned char)key[21]) & 0x0F) == 0;
}

int ws_close_code_valid(unsigned code)
{
    if (code >= 3000 && code <= 4999)
        return 1;           /* registered and private use */
    switch (code) {
    case 1000: case 1001: case 1002: case 1003: case 1007: case 1008:
    case 1009: case 1010: case 1011: case 1012: case 1013: case 1014:
        return 1;
    default:
        return 0;           /* 1004-1006 and 1015 never on the wire */
    }
}

/* ------------------------------------------------------------------------ */
/* Receiving */

static int grow(uint8_t **buf, uint32_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    if (c > UINT32_MAX)
        return -1;
    uint8_t *n = realloc(*buf, c);
    if (!n)
        return -1;
    *buf = n;
    *cap = (uint32_t)c;
    return 0;
}

static void drop_msg(struct ws_rx *rx)
{
    free(rx->msg);
    rx->msg = NULL;
    rx->msg_len = rx->msg_cap = 0;
    rx->msg_op = 0;
    rx->utf8 = 0;
}

static void unmask(uint8_t *p, size_t n, const uint8_t m[4])
{
    uint32_t m32;
    memcpy(&m32, m, 4);
    uint64_t m64 = (uint64_t)m32 << 32 | m32;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= m64;
        memcpy(p + i, &w, 8);
    }
    for (; i < n; i++)
        p[i] ^= m[i & 3];
}

#define FAIL(code, text) do { *why = (text); return (code); } while (0)

/* Checks the header at p[0..n): 0 when more bytes are needed, a close code
 * when it is invalid, else -1 with *hl and *plen set. */
static int header(const struct ws_rx *rx, const uint8_t *p, size_t n, size_t *hl,
                  uint64_t *plen, const char **why)
{
    if (n < 2)
        return 0;
    uint8_t b0 = p[0], b1 = p[1];
    unsigned op = b0 & 0x0F, fin = b0 >> 7;
    if (b0 & 0x70)
        FAIL(WS_CLOSE_PROTOCOL, "reserved bits set (no extension negotiated)");
    if (!(b1 & 0x80))
        FAIL(WS_CLOSE_PROTOCOL, "unmasked client frame");
    if (op >= 8) {
        if (op > WS_OP_PONG)
            FAIL(WS_CLOSE_PROTOCOL, "unknown control opcode");
        if (!fin)
            FAIL(WS_CLOSE_PROTOCOL, "fragmented control frame");
        if ((b1 & 0x7F) > 125)
            FAIL(WS_CLOSE_PROTOCOL, "control frame payload over 125 bytes");
    } else if (op > WS_OP_BINARY) {
        FAIL(WS_CLOSE_PROTOCOL, "unknown data opcode");
    } else if (op == WS_OP_CONT && !rx->msg_op) {
        FAIL(WS_CLOSE_PROTOCOL, "continuation frame without a message");
    } else if (op != WS_OP_CONT && rx->msg_op) {
        FAIL(WS_CLOSE_PROTOCOL, "new data frame inside a fragmented message");
    }
    uint64_t len = b1 & 0x7F;
    size_t h = 2;
    if (len == 126) {
        if (n < 4)
            return 0;
        len = (uint64_t)p[2] << 8 | p[3];
        if (len < 126)
            FAIL(WS_CLOSE_PROTOCOL, "length not in its shortest form");
        h = 4;
    } else if (len == 127) {
        if (n < 10)
            return 0;
        if (p[2] & 0x80)
            FAIL(WS_CLOSE_PROTOCOL, "64-bit length with the top bit set");
        len = 0;
        for (int i = 0; i < 8; i++)
            len = len << 8 | p[2 + i];
        if (len <= 0xFFFF)
            FAIL(WS_CLOSE_PROTOCOL, "length not in its shortest form");
        h = 10;
    }
    if (op < 8 && (uint64_t)rx->msg_len + len > rx->max_message)
        FAIL(WS_CLOSE_TOO_BIG, "message over max_message_bytes");
    *hl = h + 4;
    *plen = len;
    return -1;
}

/* One complete frame at f (header hl bytes, payload len bytes). */
static int frame(struct ws_rx *rx, uint8_t *f, size_t hl, size_t len,
                 const struct ws_rx_ops *ops, void *arg, const char **why)
{
    unsigned op = f[0] & 0x0F, fin = f[0] >> 7;
    uint8_t *p = f + hl;
    unmask(p, len, f + hl - 4);
    if (op >= 8) {
        unsigned code = WS_CLOSE_NO_STATUS;
        if (op == WS_OP_CLOSE) {
            if (len == 1)
                FAIL(WS_CLOSE_PROTOCOL, "close frame with a 1-byte payload");
            if (len >= 2) {
                code = (unsigned)p[0] << 8 | p[1];
                if (!ws_close_code_valid(code))
                    FAIL(WS_CLOSE_PROTOCOL, "invalid close code");
                if (!ws_utf8_valid(p + 2, len - 2))
                    FAIL(WS_CLOSE_INVALID, "close reason is not UTF-8");
                p += 2;
                len -= 2;
            }
            rx->closed = 1;
        }
        return ops->control(arg, (int)op, code, p, len);
    }
    if (op == WS_OP_TEXT || (op == WS_OP_CONT && rx->msg_op == WS_OP_TEXT)) {
        if (ws_utf8_step(&rx->utf8, p, len) < 0)
            FAIL(WS_CLOSE_INVALID, "text message is not valid UTF-8");
        if (fin && rx->utf8 != 0)
            FAIL(WS_CLOSE_INVALID, "text message ends inside a UTF-8 sequence");
    }
    if (fin && op != WS_OP_CONT) {      /* the common case: in place */
        rx->utf8 = 0;
        return ops->message(arg, (int)op, p, len);
    }
    if (op != WS_OP_CONT)
        rx->msg_op = (uint8_t)op;
    if (len && grow(&rx->msg, &rx->msg_cap, (size_t)rx->msg_len + len) < 0)
        FAIL(WS_CLOSE_INTERNAL, "out of memory");
    if (len)
        memcpy(rx->msg + rx->msg_len, p, len);
    rx->msg_len += (uint32_t)len;
    if (!fin)
        return 0;
    int mop = rx->msg_op;
    uint8_t *m = rx->msg;
    size_t mlen = rx->msg_len;
    rx->msg = NULL;                 /* the callback may free the rx */
    rx->msg_len = rx->msg_cap = 0;
    rx->msg_op = 0;
    rx->utf8 = 0;
    static uint8_t empty[1];
    int r = ops->message(arg, mop, m ? m : empty, mlen);
    free(m);
    return r;
}

/* Handles the frames of p[0..n); *used says how far it got. */
static int run(struct ws_rx *rx, uint8_t *p, size_t n, size_t *used,
               const struct ws_rx_ops *ops, void *arg, const char **why)
{
    size_t o = 0;
    int r = 0;
    while (o < n && !rx->closed) {
        size_t hl = 0;
        uint64_t len = 0;
        int h = header(rx, p + o, n - o, &hl, &len, why);
        if (h >= 0) {
            r = h;                  /* 0: incomplete header */
            break;
        }
        if (n - o < hl || n - o - hl < len)
            break;                  /* incomplete payload */
        r = frame(rx, p + o, hl, (size_t)len, ops, arg, why);
        o += hl + (size_t)len;
        if (r)
            break;
    }
    if (rx->closed && r == 0)
        o = n;                      /* bytes after a close frame mean nothing */
    *used = o;
    return r;
}

static int input(struct ws_rx *rx, uint8_t *buf, size_t len, const struct ws_rx_ops *ops,
                 void *arg, const char **why)
{
    size_t used = 0;
    int r;
    if (rx->in_len) {
        if (len) {
            if (grow(&rx->in, &rx->in_cap, (size_t)rx->in_len + len) < 0)
                FAIL(WS_CLOSE_INTERNAL, "out of memory");
            memcpy(rx->in + rx->in_len, buf, len);
            rx->in_len += (uint32_t)len;
        }
        r = run(rx, rx->in, rx->in_len, &used, ops, arg, why);
        if (r == WS_RX_CLOSED || (r && r != WS_RX_PAUSE))
            return r;               /* rx may be gone: touch nothing */
        size_t rest = rx->in_len - used;
        if (!rest) {
            free(rx->in);
            rx->in = NULL;
            rx->in_len = rx->in_cap = 0;
        } else {
            memmove(rx->in, rx->in + used, rest);
            rx->in_len = (uint32_t)rest;
        }
        return r;
    }
    if (!len)
        return 0;
    r = run(rx, buf, len, &used, ops, arg, why);
    if (r == WS_RX_CLOSED || (r && r != WS_RX_PAUSE))
        return r;
    size_t rest = len - used;
    if (rest) {
        if (grow(&rx->in, &rx->in_cap, rest) < 0)
            FAIL(WS_CLOSE_INTERNAL, "out of memory");
        memcpy(rx->in, buf + used, rest);
        rx->in_len = (uint32_t)rest;
    }
    return r;
}

int ws_rx_input(struct ws_rx *rx, uint8_t *buf, size_t len,
                const struct ws_rx_ops *ops, void *arg, const char **why)
{
    *why = NULL;
    if (rx->closed)
        return 0;                   /* after a close or a failure: discard */
    int r = input(rx, buf, len, ops, arg, why);
    if (r >= 1000) {
        /* The stream cannot be parsed past this point (RFC 6455 §7.1.7):
         * everything after it is discarded, nothing more is kept. */
        rx->closed = 1;
        ws_rx_free(rx);
    }
    return r;
}

void ws_rx_free(struct ws_rx *rx)
{
    free(rx->in);
    rx->in = NULL;
    rx->in_len = rx->in_cap = 0;
    drop_msg(rx);
}

/* ------------------------------------------------------------------------ */

void ws_obuf_put(struct ws_obuf *b, const void *p, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->len + n)
            c *= 2;
        uint8_t *q = realloc(b->p, c);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

void ws_obuf_free(struct ws_obuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}
