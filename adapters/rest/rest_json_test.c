/* Unit tests: JSON pointers, body parsing, validation and mapping (native
 * and foreign schemas), problem documents, media types, idempotency keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rest.h"

/* A sink that records "key=value" lines; part fields as "p<i>.key=value". */
struct rec {
    char buf[8192];
    size_t len;
    int parts;
    int fail_on_part;   /* make part_add fail (sink errors) */
};

static void out(struct rec *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->buf + r->len, sizeof r->buf - r->len, fmt, ap);
    va_end(ap);
    if (n > 0)
        r->len += (size_t)n;
}

static int r_begin(void *a, const char *type)
{
    out(a, "type=%s\n", type);
    return 0;
}
static int r_set(void *a, const char *k, const char *v, size_t n)
{
    out(a, "%s=%.*s\n", k, (int)n, v);
    return 0;
}
static int r_set_int(void *a, const char *k, int64_t v)
{
    out(a, "%s=#%lld\n", k, (long long)v);
    return 0;
}
static int r_part_add(void *a, const char *kind)
{
    struct rec *r = a;
    if (r->fail_on_part)
        return -4;
    out(a, "part%d=%s\n", r->parts, kind);
    return r->parts++;
}
static int r_part_set(void *a, int p, const char *k, const char *v, size_t n)
{
    out(a, "p%d.%s=%.*s\n", p, k, (int)n, v);
    return 0;
}

static const struct rest_limits lim = { 3, 64, 256, 100 };

/* Maps body (one message or a batch) and returns 0 or the problem status. */
static int run(const char *body, const struct rest_map *map, struct rec *r,
               struct rest_problem *p)
{
    memset(r, 0, sizeof *r);
    memset(p, 0, sizeof *p);
    json_t **items;
    size_t n;
    int batch;
    json_t *root = rest_parse_body(body, strlen(body), map, &lim, &items, &n, &batch, p);
    if (!root)
        return p->status;
    struct kfg_msg_sink s = { r, r_begin, r_set, r_set_int, r_part_add, r_part_set };
    int st = 0;
    for (size_t i = 0; i < n && !st; i++) {
        char base[32] = "";
        if (batch)
            snprintf(base, sizeof base, "/messages/%zu", i);
        if (rest_map_message(items[i], base, map, &lim, &s, p) != 0)
            st = p->status;
    }
    free(items);
    json_decref(root);
    return st;
}

static void test_pointer(void **st)
{
    (void)st;
    json_t *j = json_loads("{\"a\":{\"b/c\":[10,{\"~x\":true}]},\"\":1}", 0, NULL);
    assert_ptr_equal(rest_pointer_get(j, ""), j);
    assert_int_equal(json_integer_value(rest_pointer_get(j, "/a/b~1c/0")), 10);
    assert_true(json_is_true(rest_pointer_get(j, "/a/b~1c/1/~0x")));
    assert_int_equal(json_integer_value(rest_pointer_get(j, "/")), 1);
    assert_null(rest_pointer_get(j, "/a/b~1c/2"));
    assert_null(rest_pointer_get(j, "/a/b~1c/01"));
    assert_null(rest_pointer_get(j, "/a/b~1c/-"));
    assert_null(rest_pointer_get(j, "/a/b~2c"));
    assert_null(rest_pointer_get(j, "a"));
    assert_null(rest_pointer_get(j, "/a/b~1c/0/x"));
    assert_true(rest_pointer_valid("/x~0~1"));
    assert_false(rest_pointer_valid("/x~"));
    assert_false(rest_pointer_valid(NULL));
    char b[16] = "";
    rest_pointer_push(b, sizeof b, "a/b~c");
    assert_string_equal(b, "/a~1b~0c");
    char small[6] = "";
    rest_pointer_push(small, sizeof small, "abcdefgh");
    assert_true(strlen(small) < sizeof small);
    json_decref(j);
}

static void test_native_text(void **st)
{
    (void)st;
    struct rec r;
    struct rest_problem p;
    assert_int_equal(run("{\"conversation\":\"c1\",\"sender\":{\"id\":\"u1\",\"role\":\"customer\"},"
                         "\"text\":\"hi\",\"ts\":17,\"metadata\":{\"a\":\"x\",\"n\":2,\"b\":true}}",
                         NULL, &r, &p), 0);
    assert_string_equal(r.buf, "type=message\nconversation.id=c1\nsender.id=u1\n"
                               "sender.role=customer\npart0=text\np0.text=hi\n"
                               "ts.channel=#17\nchannel_data.a=x\nchannel_data.n=#2\n"
                               "channel_data.b=true\n");
}

static void test_native_parts(void **st)
{
    (void)st;
    struct rec r;
    struct rest_problem p;
    assert_int_equal(run("{\"type\":\"event\",\"conversation\":{\"id\":\"c\",\"kind\":\"group\"},"
                         "\"sender\":\"u\",\"parts\":["
                         "{\"kind\":\"location\",\"lon\":116,\"lat\":39.5},"
                         "{\"url\":\"https://x/y.png\",\"kind\":\"image\",\"size\":5},"
                         "{\"kind\":\"event\",\"name\":\"scan\",\"value\":{\"s\":\"a\",\"k\":{\"n\":1}}},"
                         "{\"kind\":\"x-card\",\"t\":\"v\"}]}",
                         NULL, &r, &p), 0);
    assert_string_equal(r.buf, "type=event\nconversation.id=c\nconversation.kind=group\n"
                               "sender.id=u\npart0=location\np0.lat=39.5\np0.lon=116.0\n"
                               "part1=image\np1.url=https://x/y.png\np1.size=5\n"
                               "part2=event\np2.name=scan\np2.value.s=a\np2.value.k.n=1\n"
                               "part3=x-card\np3.t=v\n");
}

static void expect_bad(const char *body, int status, const char *type, const char *pointer)
{
    struct rec r;
    struct rest_problem p;
    int got = run(body, NULL, &r, &p);
    if (got != status || strcmp(p.type, type) || strcmp(p.pointer, pointer))
        fail_msg("%s: got %d %s %s (%s)", body, got, p.type, p.pointer, p.detail);
}

static void test_native_errors(void **st)
{
    (void)st;
    expect_bad("", 400, "malformed-json", "");
    expect_bad("{", 400, "malformed-json", "");
    expect_bad("{\"a\":1,\"a\":2}", 400, "malformed-json", "");
    expect_bad("\"x\"", 400, "invalid-field", "");
    expect_bad("{\"sender\":\"u\",\"text\":\"x\"}", 400, "invalid-field", "/conversation");
    expect_bad("{\"conversation\":5,\"sender\":\"u\",\"text\":\"x\"}", 400, "invalid-field",
               "/conversation");
    expect_bad("{\"conversation\":{\"id\":\"\"},\"sender\":\"u\",\"text\":\"x\"}", 400,
               "invalid-field", "/conversation/id");
    expect_bad("{\"conversation\":{\"id\":\"c\",\"x\":1},\"sender\":\"u\",\"text\":\"x\"}", 400,
               "invalid-field", "/conversation/x");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"zz\":1,\"text\":\"x\"}", 400,
               "invalid-field", "/zz");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\"}", 400, "invalid-field", "/parts");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"parts\":[]}", 400, "invalid-field",
               "/parts");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"parts\":[{}]}", 400, "invalid-field",
               "/parts/0/kind");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"parts\":[{\"kind\":\"text\"}]}", 400,
               "invalid-field", "/parts/0/text");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"parts\":[{\"kind\":\"text\",\"text\":\"a\","
               "\"format\":\"rtf\"}]}", 400, "invalid-field", "/parts/0/format");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"parts\":[{\"kind\":\"file\",\"url\":\"https://a\","
               "\"sha256\":\"AB\"}]}", 400, "invalid-field", "/parts/0/sha256");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"parts\":[{\"kind\":\"location\",\"lat\":0,"
               "\"lon\":181}]}", 400, "invalid-field", "/parts/0/lon");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"parts\":[{\"kind\":\"location\",\"lat\":\"0\","
               "\"lon\":1}]}", 400, "invalid-field", "/parts/0/lat");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"parts\":[{\"kind\":\"video\",\"media_id\":\"m\","
               "\"width\":1.5}]}", 400, "invalid-field", "/parts/0/width");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"parts\":[{\"kind\":\"x-\"}]}", 400,
               "invalid-field", "/parts/0/kind");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"text\":\"0123456789012345678901234567890"
               "12345678901234567890123456789012345678901234567890123456789012345678901234567890\"}",
               400, "invalid-field", "/text");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"text\":\"a\",\"ts\":-1}", 400,
               "invalid-field", "/ts");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"text\":\"a\",\"metadata\":{\"a.b\":1}}",
               400, "invalid-field", "/metadata/a.b");
    expect_bad("{\"conversation\":\"c\",\"sender\":\"u\",\"text\":\"a\",\"metadata\":{\"a\":[1]}}",
               400, "invalid-field", "/metadata/a");
    expect_bad("{\"messages\":[{\"conversation\":\"c\",\"sender\":\"u\",\"text\":\"a\"},"
               "{\"conversation\":\"c\",\"sender\":\"u\",\"parts\":[{\"kind\":\"link\"}]}]}",
               400, "invalid-field", "/messages/1/parts/0/url");
    expect_bad("{\"messages\":[1,2,3,4]}", 413, "batch-too-large", "/messages");
    expect_bad("{\"messages\":{}}", 400, "invalid-field", "/messages");
    expect_bad("{\"messages\":[1],\"x\":1}", 400, "invalid-field", "/x");
    expect_bad("{\"messages\":[1]}", 400, "invalid-field", "/messages/0");
}

static void test_batch_ok(void **st)
{
    (void)st;
    struct rec r;
    struct rest_problem p;
    assert_int_equal(run("{\"messages\":[{\"conversation\":\"c\",\"sender\":\"u\",\"text\":\"a\"},"
                         "{\"conversation\":\"d\",\"sender\":\"v\",\"text\":\"b\"}]}",
                         NULL, &r, &p), 0);
    assert_non_null(strstr(r.buf, "conversation.id=d\n"));
}

static void test_sink_failure_is_reported(void **st)
{
    (void)st;
    struct rec r;
    struct rest_problem p;
    memset(&p, 0, sizeof p);
    memset(&r, 0, sizeof r);
    r.fail_on_part = 1;
    json_t *j = json_loads("{\"conversation\":\"c\",\"sender\":\"u\",\"text\":\"a\"}", 0, NULL);
    struct kfg_msg_sink s = { &r, r_begin, r_set, r_set_int, r_part_add, r_part_set };
    assert_int_equal(rest_map_message(j, "", NULL, &lim, &s, &p), -1);
    assert_int_equal(p.status, 400);
    assert_string_equal(p.pointer, "/text");
    json_decref(j);
}

static void test_foreign_schema(void **st)
{
    (void)st;
    struct rest_map m = { 0 };
    m.enabled = 1;
    m.type = "message";
    m.conversation = "/order/customer";
    m.sender = "/order/customer";
    m.text = "/order/note";
    m.event = "/order/status";
    char why[256];
    assert_int_equal(rest_map_add_field(&m, "channel_data.order=/order/id", why, sizeof why), 0);
    assert_int_equal(rest_map_add_field(&m, "ts.channel=/order/at", why, sizeof why), 0);
    assert_int_equal(rest_map_add_field(&m, "sender.name=/who~1name", why, sizeof why), 0);
    assert_int_equal(rest_map_add_field(&m, "conversation.id=/x", why, sizeof why), -1);
    assert_int_equal(rest_map_add_field(&m, "channel_data.=/x", why, sizeof why), -1);
    assert_int_equal(rest_map_add_field(&m, "sender.name=x", why, sizeof why), -1);
    assert_int_equal(rest_map_add_field(&m, "nokey", why, sizeof why), -1);
    struct rec r;
    struct rest_problem p;
    assert_int_equal(run("{\"order\":{\"customer\":42,\"note\":\"late\",\"status\":\"shipped\","
                         "\"id\":\"o-1\",\"at\":5},\"who/name\":\"Li\",\"messages\":1}",
                         &m, &r, &p), 0);
    assert_string_equal(r.buf, "type=message\nconversation.id=42\nsender.id=42\n"
                               "part0=text\np0.text=late\npart1=event\np1.name=shipped\n"
                               "channel_data.order=o-1\nts.channel=#5\nsender.name=Li\n");
    assert_int_equal(run("{\"order\":{\"note\":\"x\"}}", &m, &r, &p), 400);
    assert_string_equal(p.pointer, "/order/customer");
    assert_int_equal(run("{\"order\":{\"customer\":{},\"note\":\"x\"}}", &m, &r, &p), 400);
    assert_string_equal(p.pointer, "/order/customer");
    assert_int_equal(run("{\"order\":{\"customer\":\"c\"}}", &m, &r, &p), 400);
    assert_string_equal(p.pointer, "/order/note");
    assert_int_equal(run("{\"order\":{\"customer\":\"c\",\"note\":\"x\",\"at\":\"now\"}}", &m,
                         &r, &p), 400);
    assert_string_equal(p.pointer, "/order/at");
    /* optional mapped fields may be absent or null */
    assert_int_equal(run("{\"order\":{\"customer\":\"c\",\"note\":\"x\",\"id\":null}}", &m, &r,
                         &p), 0);
}

static void test_problem_json(void **st)
{
    (void)st;
    struct rest_problem p;
    rest_problem_set(&p, 400, "invalid-field", "Invalid request field", "/parts/0/text",
                     "expected a string, got %s", "a number");
    char *s = rest_problem_json(&p, "urn:kfgate:request:r1", NULL);
    json_t *j = json_loads(s, 0, NULL);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "type")),
                        "https://kfgate.dev/problems/invalid-field");
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 400);
    json_t *e = json_array_get(json_object_get(j, "errors"), 0);
    assert_string_equal(json_string_value(json_object_get(e, "pointer")), "/parts/0/text");
    assert_string_equal(json_string_value(json_object_get(j, "instance")),
                        "urn:kfgate:request:r1");
    json_decref(j);
    free(s);
    /* invalid UTF-8 in a detail still gives a valid document */
    rest_problem_set(&p, 400, "x", "X", NULL, "bad \xff\xfe byte");
    s = rest_problem_json(&p, NULL, NULL);
    j = json_loads(s, 0, NULL);
    assert_non_null(j);
    assert_null(json_object_get(j, "errors"));
    json_decref(j);
    free(s);
}

static void test_ctype(void **st)
{
    (void)st;
#define CT(s) rest_ctype_json(s, strlen(s))
    assert_true(CT("application/json"));
    assert_true(CT("Application/JSON"));
    assert_true(CT("application/json; charset=utf-8"));
    assert_true(CT("application/json;charset=\"UTF-8\""));
    assert_true(CT("application/json ; foo=bar"));
    assert_false(CT("application/jsonx"));
    assert_false(CT("application/json; charset=latin1"));
    assert_false(CT("text/plain"));
    assert_false(CT("application/json; broken"));
    assert_false(CT(""));
    assert_false(rest_ctype_json(NULL, 0));
}

static void test_idem_key(void **st)
{
    (void)st;
    assert_true(rest_idem_key_valid("abc-123", 7));
    assert_false(rest_idem_key_valid("", 0));
    assert_false(rest_idem_key_valid(" a", 2));
    assert_false(rest_idem_key_valid("a\tb", 3));
    assert_false(rest_idem_key_valid("caf\xc3\xa9", 5));
    char big[300];
    memset(big, 'a', sizeof big);
    assert_true(rest_idem_key_valid(big, 255));
    assert_false(rest_idem_key_valid(big, 256));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pointer),
        cmocka_unit_test(test_native_text),
        cmocka_unit_test(test_native_parts),
        cmocka_unit_test(test_native_errors),
        cmocka_unit_test(test_batch_ok),
        cmocka_unit_test(test_sink_failure_is_reported),
        cmocka_unit_test(test_foreign_schema),
        cmocka_unit_test(test_problem_json),
        cmocka_unit_test(test_ctype),
        cmocka_unit_test(test_idem_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
