/*
 * kfgate WebSocket adapter: the parts that need no host (unit-tested and
 * fuzzed on their own). spec/websocket.md is the protocol.
 *
 *   ws_frame.c  RFC 6455 framing: frame headers, UTF-8, the receive state
 *               machine (fragments, control frames, limits), the handshake
 *               accept key, close-code rules
 *   ws_proto.c  the widget protocol: client frames (JSON or msgpack) in,
 *               server frames out, a bounded msgpack reader/writer
 *   ws_token.c  visitor tokens (HMAC-SHA256 with expiry)
 *
 * OWNERSHIP. struct ws_rx owns its two heap buffers (`in`, `msg`), both NULL
 * while idle; ws_rx_free releases them. ws_rx_input may unmask and modify the
 * buffer it is given (a scratch buffer of the caller) and never keeps a
 * pointer to it. The data passed to the callbacks is borrowed for the call.
 * struct ws_cframe owns its json_t root; its string pointers borrow from it
 * and live until ws_cframe_free. struct ws_obuf owns its bytes.
 */
#ifndef WS_H
#define WS_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* ---- framing ---------------------------------------------------------- */

enum {
    WS_OP_CONT = 0x0, WS_OP_TEXT = 0x1, WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8, WS_OP_PING = 0x9, WS_OP_PONG = 0xA,
};

/* Close codes (RFC 6455 §7.4 and spec/websocket.md §10). */
enum {
    WS_CLOSE_NORMAL = 1000, WS_CLOSE_GOING_AWAY = 1001, WS_CLOSE_PROTOCOL = 1002,
    WS_CLOSE_UNSUPPORTED = 1003, WS_CLOSE_NO_STATUS = 1005, WS_CLOSE_INVALID = 1007,
    WS_CLOSE_POLICY = 1008, WS_CLOSE_TOO_BIG = 1009, WS_CLOSE_INTERNAL = 1011,
    WS_CLOSE_TRY_AGAIN = 1013,
    WS_CLOSE_TOKEN_INVALID = 4001, WS_CLOSE_TOKEN_EXPIRED = 4002,
    WS_CLOSE_FORBIDDEN = 4003, WS_CLOSE_HELLO_TIMEOUT = 4008,
};

/* Incremental UTF-8 check (RFC 3629: no overlongs, surrogates or > U+10FFFF).
 * *state is 0 between characters; returns 0 when p[0..n) is valid so far,
 * -1 when not. A message is complete and valid when the state ends at 0. */
int ws_utf8_step(uint8_t *state, const uint8_t *p, size_t n);
int ws_utf8_valid(const uint8_t *p, size_t n);

/* A server frame header (never masked) for a payload of len bytes: writes
 * 2, 4 or 10 bytes to out and returns how many. */
size_t ws_frame_header(uint8_t out[10], int opcode, uint64_t len);

/* Sec-WebSocket-Accept for a client key: 28 characters + NUL into out. */
void ws_accept_key(const char *key, size_t key_len, char out[29]);
/* 1 when key is base64 of exactly 16 bytes (RFC 6455 §4.1). */
int ws_key_valid(const char *key, size_t len);

/* 1 when a peer may send this close code (RFC 6455 §7.4). */
int ws_close_code_valid(unsigned code);

/* Callback results for ws_rx_ops (besides 0 = go on). */
#define WS_RX_PAUSE 1      /* stop after this frame, keep the rest for later */
#define WS_RX_CLOSED 2     /* stop, the connection is gone: discard the rest */

struct ws_rx_ops {
    /* A complete data message (text already UTF-8 checked). data is
     * writable scratch, borrowed for the call. */
    int (*message)(void *arg, int opcode, uint8_t *data, size_t len);
    /* A control frame: ping, pong, or close (code 1005 when the frame had
     * none; the reason is checked UTF-8). */
    int (*control)(void *arg, int opcode, unsigned code, uint8_t *data, size_t len);
};

struct ws_rx {
    uint8_t *in;          /* an incomplete frame kept from the last read */
    uint8_t *msg;         /* the fragments of an open message */
    uint32_t in_len, in_cap, msg_len, msg_cap;
    uint32_t max_message; /* bytes of one message, all fragments */
    uint8_t msg_op;       /* WS_OP_TEXT / BINARY while fragmented, else 0 */
    uint8_t utf8;         /* ws_utf8_step state across fragments */
    uint8_t closed;       /* a close frame was handed out: ignore the rest */
};

/* Feed bytes read from the socket (buf may be NULL/0 to go on after a
 * pause). Returns 0 (all handled; an incomplete frame is kept), WS_RX_PAUSE
 * or WS_RX_CLOSED from a callback, or a close code (1002, 1007, 1009, 1011)
 * the server must close with; *why then names the cause. */
int ws_rx_input(struct ws_rx *rx, uint8_t *buf, size_t len,
                const struct ws_rx_ops *ops, void *arg, const char **why);
/* Bytes kept by the receiver (for memory accounting and pause checks). */
static inline size_t ws_rx_pending(const struct ws_rx *rx) { return rx->in_len; }
void ws_rx_free(struct ws_rx *rx);

/* ---- output buffers ---------------------------------------------------- */

struct ws_obuf {
    uint8_t *p;
    size_t len, cap;
    int oom;              /* an append failed; the buffer is unusable */
};
void ws_obuf_put(struct ws_obuf *b, const void *p, size_t n);
void ws_obuf_free(struct ws_obuf *b);

/* ---- the widget protocol ----------------------------------------------- */

enum ws_sub { WS_SUB_JSON = 0, WS_SUB_MSGPACK = 1 };
#define WS_SUB_JSON_NAME "kfgate.v1.json"
#define WS_SUB_MSGPACK_NAME "kfgate.v1.msgpack"

/* Pick the subprotocol from a Sec-WebSocket-Protocol value (client order,
 * comma list). Returns WS_SUB_* or -1 when none is supported. */
int ws_sub_pick(const char *v, size_t len);

enum ws_ctype { WS_C_HELLO = 1, WS_C_MESSAGE, WS_C_EVENT };

struct ws_cstr {
    const char *p;       /* borrowed from the frame's root; NULL when absent */
    size_t n;
};

struct ws_cframe {
    json_t *root;
    int type;                      /* enum ws_ctype */
    struct ws_cstr id;             /* message/event: client id */
    /* hello */
    struct ws_cstr token, conversation;
    int has_resume;
    uint64_t resume_from;
    /* message */
    struct ws_cstr text, reply_to;
    json_t *parts;                 /* borrowed; validated array or NULL */
    /* event */
    struct ws_cstr name, value;
    int has_seq;
    uint64_t seq;
};

#define WS_ID_MAX 64
#define WS_PARTS_MAX 16

/* Decode and validate one client frame. Returns 0, or -1 with err set
 * (spec/websocket.md `bad_request` detail); f->id is set when readable even
 * on error, so the error can echo it. Always call ws_cframe_free. */
int ws_cframe_parse(const uint8_t *p, size_t n, int sub, struct ws_cframe *f,
                    char *err, size_t errcap);
void ws_cframe_free(struct ws_cframe *f);

/* One server frame, ready for the socket: the WebSocket header followed by
 * the frame in the subprotocol's encoding (text JSON or binary msgpack).
 * Consumes no reference of obj. Returns 0 or -1 (out of memory, or a value
 * that cannot be encoded). */
int ws_encode(const json_t *obj, int sub, struct ws_obuf *out);

/* The msgpack half, exposed for tests and the fuzzer: decode one map (depth
 * and counts bounded by n) into json; NULL with err set when invalid. */
json_t *ws_mp_decode(const uint8_t *p, size_t n, char *err, size_t errcap);
int ws_mp_encode(const json_t *v, struct ws_obuf *out);

/* ---- visitor tokens ---------------------------------------------------- */

enum { WS_TOK_OK = 0, WS_TOK_INVALID = -1, WS_TOK_EXPIRED = -2 };
#define WS_TOKEN_MAX 2048
#define WS_IDENT_MAX 128

struct ws_visitor {
    char sub[WS_IDENT_MAX + 1];
    char conv[WS_IDENT_MAX + 1];   /* the token's conv, else sub */
    char name[WS_IDENT_MAX + 1];   /* "" when absent */
    int64_t exp;
};

/* Verify a token against secret at time now (Unix seconds); aud, when the
 * token names one, must equal instance. Returns WS_TOK_*; *why names the
 * cause of a refusal. */
int ws_token_verify(const uint8_t *secret, size_t secret_len, const char *tok,
                    size_t len, int64_t now, const char *instance,
                    struct ws_visitor *out, const char **why);
/* Mint one (tests, tools): writes a NUL-terminated token to out; returns its
 * length or -1 when out is too small. payload_json is used as is. */
int ws_token_mint(const uint8_t *secret, size_t secret_len, const char *payload_json,
                  char *out, size_t cap);

#endif
