/* The widget protocol: subprotocols, client frames, msgpack, encoding. */
#include "ws.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

static void test_sub_pick(void **state)
{
    (void)state;
#define PICK(s) ws_sub_pick(s, strlen(s))
    assert_int_equal(PICK("kfgate.v1.json"), WS_SUB_JSON);
    assert_int_equal(PICK("chat, kfgate.v1.msgpack, kfgate.v1.json"), WS_SUB_MSGPACK);
    assert_int_equal(PICK("  kfgate.v1.json  "), WS_SUB_JSON);
    assert_int_equal(PICK("kfgate.v1.jsonx"), -1);
    assert_int_equal(PICK("kfgate.v1"), -1);
    assert_int_equal(PICK(""), -1);
    assert_int_equal(PICK("KFGATE.V1.JSON"), -1);      /* tokens are case-sensitive */
#undef PICK
}

static int parse(const char *json, struct ws_cframe *f, char *err)
{
    return ws_cframe_parse((const uint8_t *)json, strlen(json), WS_SUB_JSON, f, err, 160);
}

static void test_hello(void **state)
{
    (void)state;
    struct ws_cframe f;
    char err[160];
    assert_int_equal(parse("{\"type\":\"hello\",\"token\":\"v1.a.b\",\"conversation\":\"c\","
                           "\"resume_from\":41,\"extra\":[1]}", &f, err), 0);
    assert_int_equal(f.type, WS_C_HELLO);
    assert_int_equal(f.token.n, 6);
    assert_memory_equal(f.conversation.p, "c", 1);
    assert_true(f.has_resume);
    assert_int_equal(f.resume_from, 41);
    ws_cframe_free(&f);
    assert_int_equal(parse("{\"type\":\"hello\"}", &f, err), 0);
    assert_false(f.has_resume);
    assert_null(f.token.p);
    ws_cframe_free(&f);
    static const char *const bad[] = {
        "{\"type\":\"hello\",\"resume_from\":-1}",
        "{\"type\":\"hello\",\"resume_from\":\"3\"}",
        "{\"type\":\"hello\",\"token\":5}",
        "{\"type\":\"hello\",\"conversation\":\"\"}",
        "{\"type\":\"hello\",\"type\":\"hello\"}",
        "[]", "{}", "{\"type\":7}", "nope", "{\"type\":\"hello\"} x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(parse(bad[i], &f, err), -1);
        assert_true(err[0] != 0);
        ws_cframe_free(&f);
    }
}

static void test_message(void **state)
{
    (void)state;
    struct ws_cframe f;
    char err[160];
    assert_int_equal(parse("{\"type\":\"message\",\"id\":\"c-1\",\"text\":\"hi\",\"reply_to\":\"r\"}",
                           &f, err), 0);
    assert_int_equal(f.type, WS_C_MESSAGE);
    assert_memory_equal(f.id.p, "c-1", 3);
    assert_memory_equal(f.text.p, "hi", 2);
    assert_null(f.parts);
    ws_cframe_free(&f);
    assert_int_equal(parse("{\"type\":\"message\",\"id\":\"c-2\",\"parts\":[{\"kind\":\"text\","
                           "\"text\":\"a\",\"format\":\"markdown\"},{\"kind\":\"image\",\"url\":"
                           "\"https://x/y.png\",\"size\":12},{\"kind\":\"location\",\"lat\":1,"
                           "\"lon\":2.5}]}", &f, err), 0);
    assert_int_equal(json_array_size(f.parts), 3);
    ws_cframe_free(&f);
    struct { const char *json, *needle; int id_kept; } bad[] = {
        { "{\"type\":\"message\",\"text\":\"x\"}", "needs an id", 0 },
        { "{\"type\":\"message\",\"id\":\"a b\",\"text\":\"x\"}", "id must", 0 },
        { "{\"type\":\"message\",\"id\":\"a\"}", "text or parts", 1 },
        { "{\"type\":\"message\",\"id\":\"a\",\"text\":\"\"}", "non-empty", 1 },
        { "{\"type\":\"message\",\"id\":\"a\",\"text\":\"x\",\"parts\":[]}", "not both", 1 },
        { "{\"type\":\"message\",\"id\":\"a\",\"parts\":[]}", "1..16", 1 },
        { "{\"type\":\"message\",\"id\":\"a\",\"parts\":[{\"kind\":\"sticker\"}]}", "not supported", 1 },
        { "{\"type\":\"message\",\"id\":\"a\",\"parts\":[{\"kind\":\"image\"}]}", "url is required", 1 },
        { "{\"type\":\"message\",\"id\":\"a\",\"parts\":[{\"kind\":\"text\",\"text\":\"x\",\"url\":\"u\"}]}",
          "not a field", 1 },
        { "{\"type\":\"message\",\"id\":\"a\",\"parts\":[{\"kind\":\"location\",\"lat\":91,\"lon\":0}]}",
          "lat", 1 },
        { "{\"type\":\"message\",\"id\":\"a\",\"parts\":[{\"kind\":\"file\",\"url\":\"u\",\"size\":-1}]}",
          "size", 1 },
        { "{\"type\":\"message\",\"id\":\"a\",\"text\":\"a\\u0000b\"}", "JSON", 0 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(parse(bad[i].json, &f, err), -1);
        if (!strstr(err, bad[i].needle))
            fail_msg("%s: %s", bad[i].json, err);
        assert_int_equal(f.id.p != NULL, bad[i].id_kept);
        ws_cframe_free(&f);
    }
}

static void test_event(void **state)
{
    (void)state;
    struct ws_cframe f;
    char err[160];
    assert_int_equal(parse("{\"type\":\"event\",\"name\":\"read\",\"seq\":9}", &f, err), 0);
    assert_int_equal(f.type, WS_C_EVENT);
    assert_true(f.has_seq);
    assert_int_equal(f.seq, 9);
    assert_null(f.id.p);
    ws_cframe_free(&f);
    assert_int_equal(parse("{\"type\":\"event\",\"name\":\"x-rating\",\"value\":\"5\",\"id\":\"e1\"}",
                           &f, err), 0);
    ws_cframe_free(&f);
    assert_int_equal(parse("{\"type\":\"event\",\"name\":\"Typing\"}", &f, err), -1);
    ws_cframe_free(&f);
    assert_int_equal(parse("{\"type\":\"event\"}", &f, err), -1);
    ws_cframe_free(&f);
}

static void test_msgpack_round_trip(void **state)
{
    (void)state;
    json_t *v = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:f, s:b, s:n, s:[i, s, {s:i}]}",
                          "type", "hello", "small", (json_int_t)5, "neg", (json_int_t)-33,
                          "u16", (json_int_t)40000, "big", (json_int_t)5000000000LL, "min",
                          (json_int_t)INT64_MIN, "real", 1.5, "t", 1, "null", "arr", 1, "s",
                          "k", 2);
    struct ws_obuf b = { 0 };
    assert_int_equal(ws_mp_encode(v, &b), 0);
    char err[160];
    json_t *back = ws_mp_decode(b.p, b.len, err, sizeof err);
    assert_non_null(back);
    assert_true(json_equal(v, back));
    json_decref(back);
    /* the same value as a client frame through the msgpack subprotocol */
    struct ws_cframe f;
    assert_int_equal(ws_cframe_parse(b.p, b.len, WS_SUB_MSGPACK, &f, err, sizeof err), 0);
    assert_int_equal(f.type, WS_C_HELLO);
    ws_cframe_free(&f);
    ws_obuf_free(&b);
    json_decref(v);
    /* smallest encodings */
    json_t *i = json_integer(200);
    assert_int_equal(ws_mp_encode(i, &b), 0);
    assert_int_equal(b.len, 2);
    assert_memory_equal(b.p, "\xcc\xc8", 2);
    json_decref(i);
    ws_obuf_free(&b);
}

static void test_msgpack_rejects(void **state)
{
    (void)state;
    char err[160];
    struct { const char *bytes; size_t n; const char *needle; } bad[] = {
        { "\x81\xa4type\xc4\x01x", 10, "bin" },
        { "\x81\xa4type\xd4\x01x", 10, "ext" },
        { "\x81\x01\x01", 3, "key" },
        { "\xdd\xff\xff\xff\xff", 5, "count" },           /* 4 G elements in 5 bytes */
        { "\xdf\x7f\xff\xff\xff\x00", 6, "count" },
        { "\x82\xa1k\x01\xa1k\x02", 7, "duplicate" },
        { "\x81\xa1k\xa2\xc3\x28", 6, "UTF-8" },
        { "\xcf\xff\xff\xff\xff\xff\xff\xff\xff", 9, "2^63" },
        { "\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00", 9, "non-finite" },
        { "\x81\xa1k", 3, "truncated" },
        { "\xc1", 1, "reserved" },
        { "\x01\x02", 2, "after" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *v = ws_mp_decode((const uint8_t *)bad[i].bytes, bad[i].n, err, sizeof err);
        assert_null(v);
        if (!strstr(err, bad[i].needle))
            fail_msg("case %zu: %s", i, err);
    }
    /* nesting is bounded */
    uint8_t deep[64];
    memset(deep, 0x91, sizeof deep);
    deep[63] = 0x01;
    assert_null(ws_mp_decode(deep, sizeof deep, err, sizeof err));
    assert_non_null(strstr(err, "deep"));
}

static void test_encode_frames(void **state)
{
    (void)state;
    json_t *o = json_pack("{s:s, s:I}", "type", "ack", "seq", (json_int_t)42);
    struct ws_obuf b = { 0 };
    assert_int_equal(ws_encode(o, WS_SUB_JSON, &b), 0);
    assert_int_equal(b.p[0], 0x81);
    assert_int_equal(b.p[1], b.len - 2);
    assert_memory_equal(b.p + 2, "{\"type\":\"ack\",\"seq\":42}", b.len - 2);
    ws_obuf_free(&b);
    assert_int_equal(ws_encode(o, WS_SUB_MSGPACK, &b), 0);
    assert_int_equal(b.p[0], 0x82);
    char err[160];
    json_t *back = ws_mp_decode(b.p + 2, b.len - 2, err, sizeof err);
    assert_true(json_equal(o, back));
    json_decref(back);
    ws_obuf_free(&b);
    json_decref(o);
    /* a long text gets the 16-bit length form */
    char *t = malloc(1000);
    memset(t, 'x', 999);
    t[999] = 0;
    o = json_pack("{s:s}", "text", t);
    assert_int_equal(ws_encode(o, WS_SUB_JSON, &b), 0);
    assert_int_equal(b.p[1], 126);
    assert_int_equal((b.p[2] << 8 | b.p[3]), b.len - 4);
    ws_obuf_free(&b);
    json_decref(o);
    free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sub_pick),
        cmocka_unit_test(test_hello),
        cmocka_unit_test(test_message),
        cmocka_unit_test(test_event),
        cmocka_unit_test(test_msgpack_round_trip),
        cmocka_unit_test(test_msgpack_rejects),
        cmocka_unit_test(test_encode_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
