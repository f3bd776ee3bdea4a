/* RFC 6455 framing: UTF-8, headers, keys, close codes, the receiver. */
#include "ws.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* ---- UTF-8 -------------------------------------------------------------- */

static void test_utf8(void **state)
{
    (void)state;
    static const char *const ok[] = {
        "", "plain ascii, longer than eight bytes", "h\xc3\xa9llo", "\xe4\xbd\xa0\xe5\xa5\xbd",
        "\xf0\x9f\x98\x80", "\xef\xbf\xbf", "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf", "\xe0\xa0\x80",
        "\xf0\x90\x80\x80", "\xc2\x80",
    };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        assert_true(ws_utf8_valid((const uint8_t *)ok[i], strlen(ok[i])));
    static const char *const bad[] = {
        "\xc0\xaf", "\xc1\xbf", "\xe0\x80\x80", "\xe0\x9f\xbf", "\xed\xa0\x80", "\xed\xbf\xbf",
        "\xf0\x80\x80\x80", "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff",
        "\x80", "abc\xbf", "\xc3", "\xe4\xbd", "\xf0\x9f\x98", "\xc3\x28", "\xe4\x28\xa0",
        "12345678\xc3", "1234567\xe4\xbd\xa0x\x80",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(ws_utf8_valid((const uint8_t *)bad[i], strlen(bad[i])));
}

/* Every split point of a valid text gives the same answer incrementally. */
static void test_utf8_split(void **state)
{
    (void)state;
    const char *s = "a\xc3\xa9\xe4\xbd\xa0\xf0\x9f\x98\x80z";
    size_t n = strlen(s);
    for (size_t cut = 0; cut <= n; cut++) {
        uint8_t st = 0;
        assert_int_equal(ws_utf8_step(&st, (const uint8_t *)s, cut), 0);
        assert_int_equal(ws_utf8_step(&st, (const uint8_t *)s + cut, n - cut), 0);
        assert_int_equal(st, 0);
    }
    /* the check fails at the first impossible byte, not at the end */
    uint8_t st = 0;
    assert_int_equal(ws_utf8_step(&st, (const uint8_t *)"\xe4", 1), 0);
    assert_int_not_equal(st, 0);
    assert_int_equal(ws_utf8_step(&st, (const uint8_t *)"(", 1), -1);
}

/* ---- headers, keys, codes ----------------------------------------------- */

static void test_header(void **state)
{
    (void)state;
    uint8_t h[10];
    assert_int_equal(ws_frame_header(h, WS_OP_TEXT, 0), 2);
    assert_memory_equal(h, "\x81\x00", 2);
    assert_int_equal(ws_frame_header(h, WS_OP_BINARY, 125), 2);
    assert_memory_equal(h, "\x82\x7d", 2);
    assert_int_equal(ws_frame_header(h, WS_OP_TEXT, 126), 4);
    assert_memory_equal(h, "\x81\x7e\x00\x7e", 4);
    assert_int_equal(ws_frame_header(h, WS_OP_TEXT, 65535), 4);
    assert_memory_equal(h, "\x81\x7e\xff\xff", 4);
    assert_int_equal(ws_frame_header(h, WS_OP_PONG, 65536), 10);
    assert_memory_equal(h, "\x8a\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10);
}

static void test_accept_key(void **state)
{
    (void)state;
    char out[29];
    ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out);     /* RFC 6455 §1.3 */
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_true(ws_key_valid("dGhlIHNhbXBsZSBub25jZQ==", 24));
    assert_true(ws_key_valid("AAAAAAAAAAAAAAAAAAAAAA==", 24));
    assert_false(ws_key_valid("dGhlIHNhbXBsZSBub25jZR==", 24));  /* bits past 16 bytes */
    assert_false(ws_key_valid("dGhlIHNhbXBsZSBub25jZQ=", 23));
    assert_false(ws_key_valid("dGhlIHNhbXBsZSBub25jZQ", 22));
    assert_false(ws_key_valid("dGhlIHNhbXBsZSBub25j*Q==", 24));
    assert_false(ws_key_valid("dGhlIHNhbXBsZSBub25jZQA=", 24));
}

static void test_close_codes(void **state)
{
    (void)state;
    unsigned ok[] = { 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                      3000, 4001, 4999 };
    unsigned bad[] = { 0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535 };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        assert_true(ws_close_code_valid(ok[i]));
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_false(ws_close_code_valid(bad[i]));
}

/* ---- the receiver ------------------------------------------------------- */

struct rec {
    int nmsg, nctl;
    int op[16], ctl_op[16];
    unsigned code[16];
    char data[16][256];
    size_t len[16];
    int pause_after;     /* return WS_RX_PAUSE after this many messages, 0 = never */
};

static int on_msg(void *arg, int op, uint8_t *data, size_t len)
{
    struct rec *r = arg;
    assert_true(r->nmsg < 16 && len < 256);
    r->op[r->nmsg] = op;
    memcpy(r->data[r->nmsg], data, len);
    r->len[r->nmsg++] = len;
    return r->pause_after && r->nmsg == r->pause_after ? WS_RX_PAUSE : 0;
}

static int on_ctl(void *arg, int op, unsigned code, uint8_t *data, size_t len)
{
    struct rec *r = arg;
    (void)data;
    (void)len;
    r->ctl_op[r->nctl] = op;
    r->code[r->nctl++] = code;
    return 0;
}

static const struct ws_rx_ops ops = { on_msg, on_ctl };

/* A masked client frame into out; returns its length. */
static size_t cframe(uint8_t *out, int b0, const void *payload, size_t n)
{
    static const uint8_t key[4] = { 0x37, 0xfa, 0x21, 0x3d };
    size_t h = 0;
    out[h++] = (uint8_t)b0;
    if (n < 126) {
        out[h++] = (uint8_t)(0x80 | n);
    } else {
        out[h++] = 0x80 | 126;
        out[h++] = (uint8_t)(n >> 8);
        out[h++] = (uint8_t)n;
    }
    memcpy(out + h, key, 4);
    h += 4;
    for (size_t i = 0; i < n; i++)
        out[h + i] = ((const uint8_t *)payload)[i] ^ key[i & 3];
    return h + n;
}

static int feed(struct ws_rx *rx, struct rec *r, const uint8_t *p, size_t n, const char **why)
{
    uint8_t buf[4096];
    memcpy(buf, p, n);
    return ws_rx_input(rx, buf, n, &ops, r, why);
}

static void test_rx_one_message_any_split(void **state)
{
    (void)state;
    uint8_t f[512];
    size_t n = cframe(f, 0x81, "{\"type\":\"hello\"} h\xc3\xa9", 21);
    /* fed in two pieces at every split, and byte by byte */
    for (size_t cut = 0; cut <= n; cut++) {
        struct ws_rx rx = { .max_message = 1024 };
        struct rec r = { 0 };
        const char *why;
        assert_int_equal(feed(&rx, &r, f, cut, &why), 0);
        assert_int_equal(feed(&rx, &r, f + cut, n - cut, &why), 0);
        assert_int_equal(r.nmsg, 1);
        assert_int_equal(r.len[0], 21);
        assert_memory_equal(r.data[0], "{\"type\":\"hello\"} h\xc3\xa9", 21);
        assert_null(rx.in);                 /* nothing kept once it is used */
        assert_null(rx.msg);
        ws_rx_free(&rx);
    }
    struct ws_rx rx = { .max_message = 1024 };
    struct rec r = { 0 };
    const char *why;
    for (size_t i = 0; i < n; i++)
        assert_int_equal(feed(&rx, &r, f + i, 1, &why), 0);
    assert_int_equal(r.nmsg, 1);
    assert_null(rx.in);
    ws_rx_free(&rx);
}

static void test_rx_fragments_with_control(void **state)
{
    (void)state;
    uint8_t buf[1024];
    size_t n = 0;
    n += cframe(buf + n, 0x01, "ab\xe4", 3);           /* text, not fin, split character */
    n += cframe(buf + n, 0x89, "p", 1);                /* ping in between */
    n += cframe(buf + n, 0x00, "\xbd\xa0", 2);         /* continuation */
    n += cframe(buf + n, 0x80, "cd", 2);               /* final continuation */
    n += cframe(buf + n, 0x82, "\xff\x00", 2);         /* binary: no UTF-8 rule */
    n += cframe(buf + n, 0x88, "\x03\xe8ok", 4);       /* close 1000 "ok" */
    n += cframe(buf + n, 0x81, "ignored", 7);          /* after close: ignored */
    struct ws_rx rx = { .max_message = 1024 };
    struct rec r = { 0 };
    const char *why;
    assert_int_equal(feed(&rx, &r, buf, n, &why), 0);
    assert_int_equal(r.nmsg, 2);
    assert_int_equal(r.op[0], WS_OP_TEXT);
    assert_int_equal(r.len[0], 7);
    assert_memory_equal(r.data[0], "ab\xe4\xbd\xa0" "cd", 7);
    assert_int_equal(r.op[1], WS_OP_BINARY);
    assert_int_equal(r.nctl, 2);
    assert_int_equal(r.ctl_op[0], WS_OP_PING);
    assert_int_equal(r.ctl_op[1], WS_OP_CLOSE);
    assert_int_equal(r.code[1], 1000);
    assert_null(rx.msg);
    ws_rx_free(&rx);
}

static void expect_fail(const uint8_t *p, size_t n, int code, uint32_t max)
{
    struct ws_rx rx = { .max_message = max };
    struct rec r = { 0 };
    const char *why = NULL;
    assert_int_equal(feed(&rx, &r, p, n, &why), code);
    assert_non_null(why);
    ws_rx_free(&rx);
}

static void test_rx_violations(void **state)
{
    (void)state;
    uint8_t f[512];
    size_t n;
    static const uint8_t unmasked[] = { 0x81, 0x02, 'h', 'i' };
    expect_fail(unmasked, sizeof unmasked, WS_CLOSE_PROTOCOL, 1024);
    n = cframe(f, 0xC1, "hi", 2);                              /* RSV1 */
    expect_fail(f, n, WS_CLOSE_PROTOCOL, 1024);
    n = cframe(f, 0x83, "hi", 2);                              /* opcode 3 */
    expect_fail(f, n, WS_CLOSE_PROTOCOL, 1024);
    n = cframe(f, 0x8B, "", 0);                                /* opcode 11 */
    expect_fail(f, n, WS_CLOSE_PROTOCOL, 1024);
    n = cframe(f, 0x80, "x", 1);                               /* continuation first */
    expect_fail(f, n, WS_CLOSE_PROTOCOL, 1024);
    n = cframe(f, 0x09, "x", 1);                               /* fragmented ping */
    expect_fail(f, n, WS_CLOSE_PROTOCOL, 1024);
    uint8_t big[200];
    memset(big, 'a', sizeof big);
    n = cframe(f, 0x89, big, 126);                             /* ping over 125 */
    expect_fail(f, n, WS_CLOSE_PROTOCOL, 1024);
    n = cframe(f, 0x88, "\x03", 1);                            /* 1-byte close */
    expect_fail(f, n, WS_CLOSE_PROTOCOL, 1024);
    n = cframe(f, 0x88, "\x03\xed", 2);                        /* close 1005 */
    expect_fail(f, n, WS_CLOSE_PROTOCOL, 1024);
    n = cframe(f, 0x88, "\x03\xe8\xff", 3);                    /* reason not UTF-8 */
    expect_fail(f, n, WS_CLOSE_INVALID, 1024);
    n = cframe(f, 0x81, "\xc0\xaf", 2);
    expect_fail(f, n, WS_CLOSE_INVALID, 1024);
    n = cframe(f, 0x81, "ok\xe4", 3);                          /* ends inside a sequence */
    expect_fail(f, n, WS_CLOSE_INVALID, 1024);
    n = cframe(f, 0x81, big, 200);                             /* over max_message */
    expect_fail(f, n, WS_CLOSE_TOO_BIG, 100);
    expect_fail(f, 4, WS_CLOSE_TOO_BIG, 100);                  /* header alone says so */
    static const uint8_t nonmin16[] = { 0x81, 0xFE, 0x00, 0x05 };
    expect_fail(nonmin16, sizeof nonmin16, WS_CLOSE_PROTOCOL, 1024);
    static const uint8_t top[] = { 0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0 };
    expect_fail(top, sizeof top, WS_CLOSE_PROTOCOL, 1024);
    /* a new data frame inside a fragmented message */
    size_t m = cframe(f, 0x01, "a", 1);
    m += cframe(f + m, 0x81, "b", 1);
    expect_fail(f, m, WS_CLOSE_PROTOCOL, 1024);
    /* fragments adding up over the limit */
    m = cframe(f, 0x01, big, 60);
    m += cframe(f + m, 0x00, big, 60);
    expect_fail(f, m, WS_CLOSE_TOO_BIG, 100);
}

static void test_rx_pause_keeps_the_rest(void **state)
{
    (void)state;
    uint8_t buf[256];
    size_t n = cframe(buf, 0x81, "one", 3);
    n += cframe(buf + n, 0x81, "two", 3);
    n += cframe(buf + n, 0x81, "thr", 3);
    struct ws_rx rx = { .max_message = 1024 };
    struct rec r = { .pause_after = 1 };
    const char *why;
    assert_int_equal(feed(&rx, &r, buf, n, &why), WS_RX_PAUSE);
    assert_int_equal(r.nmsg, 1);
    assert_non_null(rx.in);                 /* the unread frames are kept */
    r.pause_after = 0;
    assert_int_equal(ws_rx_input(&rx, NULL, 0, &ops, &r, &why), 0);
    assert_int_equal(r.nmsg, 3);
    assert_memory_equal(r.data[2], "thr", 3);
    assert_null(rx.in);
    ws_rx_free(&rx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_utf8_split),
        cmocka_unit_test(test_header),
        cmocka_unit_test(test_accept_key),
        cmocka_unit_test(test_close_codes),
        cmocka_unit_test(test_rx_one_message_any_split),
        cmocka_unit_test(test_rx_fragments_with_control),
        cmocka_unit_test(test_rx_violations),
        cmocka_unit_test(test_rx_pause_keeps_the_rest),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
