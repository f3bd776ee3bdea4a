/*
 * Unit tests for mqtt_map.c: URLs, templates, topic filters with captures
 * and the payload mapping (JSON, msgpack, raw) through a recording sink.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt.h"

/* ---------------------------------------------------------------------------
 * A sink that records "key=value" lines; parts as "p<i>.key=value".
 */
struct rec {
    char type[16];
    int begun;
    int nparts;
    char kinds[8][16];
    char lines[64][600];
    size_t n;
    int fail_key;           /* set(): refuse keys containing fail_sub */
    const char *fail_sub;
};

static void add(struct rec *r, const char *k, const char *v, size_t n)
{
    assert_true(r->n < 64);
    snprintf(r->lines[r->n++], sizeof r->lines[0], "%s=%.*s", k, (int)n, v);
}

static int r_begin(void *a, const char *type)
{
    struct rec *r = a;
    if (r->begun)
        return -3;
    r->begun = 1;
    snprintf(r->type, sizeof r->type, "%s", type);
    return 0;
}

static int r_set(void *a, const char *k, const char *v, size_t n)
{
    struct rec *r = a;
    if (r->fail_sub && strstr(k, r->fail_sub))
        return -3;
    add(r, k, v, n);
    return 0;
}

static int r_set_int(void *a, const char *k, int64_t v)
{
    char b[32];
    int n = snprintf(b, sizeof b, "%lld", (long long)v);
    add(a, k, b, (size_t)n);
    return 0;
}

static int r_part_add(void *a, const char *kind)
{
    struct rec *r = a;
    snprintf(r->kinds[r->nparts], sizeof r->kinds[0], "%s", kind);
    return r->nparts++;
}

static int r_part_set(void *a, int part, const char *k, const char *v, size_t n)
{
    char key[128];
    snprintf(key, sizeof key, "p%d.%s", part, k);
    add(a, key, v, n);
    return 0;
}

/* The value recorded for key, or NULL. */
static const char *get(const struct rec *r, const char *key)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i < r->n; i++)
        if (!strncmp(r->lines[i], key, kl) && r->lines[i][kl] == '=')
            return r->lines[i] + kl + 1;
    return NULL;
}

static struct kfg_msg_sink sink_of(struct rec *r)
{
    struct kfg_msg_sink s = { r, r_begin, r_set, r_set_int, r_part_add, r_part_set };
    return s;
}

static void base_map(struct mqt_map *m)
{
    memset(m, 0, sizeof *m);
    m->format = MQT_JSON;
    m->max_payload = 4096;
    m->max_text = 1024;
    m->max_id = 64;
    m->event_name = "telemetry";
    m->raw_ctype = "application/octet-stream";
}

static int run(const struct mqt_map *m, const char *filter, const char *topic,
               const void *payload, size_t len, struct rec *r, struct mqt_problem *p)
{
    struct mqt_filter f;
    char why[256];
    assert_int_equal(mqt_filter_parse(filter, &f, why, sizeof why), 0);
    struct mqt_caps caps;
    assert_int_equal(mqt_filter_match(&f, topic, strlen(topic), &caps), 1);
    struct kfg_msg_sink s = sink_of(r);
    return mqt_map_message(m, &f, &caps, topic, strlen(topic), payload, len, NULL, 0, &s, p);
}

/* ---------------------------------------------------------------------------
 * URLs.
 */
static void test_url(void **st)
{
    (void)st;
    struct mqt_url u;
    char why[200];
    assert_int_equal(mqt_url_parse("mqtt://broker.example:1884", &u, why, sizeof why), 0);
    assert_string_equal(u.host, "broker.example");
    assert_int_equal(u.port, 1884);
    assert_int_equal(u.tls, 0);
    assert_int_equal(mqt_url_parse("mqtts://10.0.0.1", &u, why, sizeof why), 0);
    assert_int_equal(u.port, 8883);
    assert_int_equal(u.tls, 1);
    assert_int_equal(mqt_url_parse("mqtt://[::1]:1883/", &u, why, sizeof why), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(mqt_url_parse("mqtt://u:p@h:1", &u, why, sizeof why), -1);
    assert_non_null(strstr(why, "credentials"));
    assert_int_equal(mqt_url_parse("http://h", &u, why, sizeof why), -1);
    assert_int_equal(mqt_url_parse("mqtt://h:0", &u, why, sizeof why), -1);
    assert_int_equal(mqt_url_parse("mqtt://h:65536", &u, why, sizeof why), -1);
    assert_int_equal(mqt_url_parse("mqtt://h:1883/x", &u, why, sizeof why), -1);
    assert_int_equal(mqt_url_parse("mqtt://", &u, why, sizeof why), -1);
}

/* ---------------------------------------------------------------------------
 * Filters.
 */
static void test_filter_parse(void **st)
{
    (void)st;
    struct mqt_filter f;
    char why[256];
    assert_int_equal(mqt_filter_parse("devices/{device}/up", &f, why, sizeof why), 0);
    assert_string_equal(f.sub, "devices/+/up");
    assert_int_equal(f.ncaps, 1);
    assert_string_equal(f.caps[0], "device");
    assert_int_equal(mqt_filter_parse(" s/{site}/k/{kiosk}/# => conversation.id={site}:{kiosk};"
                                      " sender.id={kiosk} ; channel_data.where = at {site}",
                                      &f, why, sizeof why), 0);
    assert_string_equal(f.sub, "s/+/k/+/#");
    assert_int_equal(f.nmap, 3);
    assert_string_equal(f.map[2].key, "channel_data.where");

    static const char *const bad[] = {
        "a/#/b", "a/b#", "a/{x}/{x}", "a/{}", "a/{bad name}", "a/x{y}", "",
        "a/{x} => parts=1", "a/{x} => sender.id={y}", "a/{x} => sender.id",
        "a/{x} => sender.id={x}; sender.id={x}", "a/{x} => ts=1", NULL
    };
    for (size_t i = 0; bad[i]; i++) {
        why[0] = '\0';
        assert_int_equal(mqt_filter_parse(bad[i], &f, why, sizeof why), -1);
        assert_true(why[0] != '\0');
    }
}

static void test_filter_match(void **st)
{
    (void)st;
    struct mqt_filter f;
    struct mqt_caps c;
    char why[256];
    assert_int_equal(mqt_filter_parse("devices/{device}/up", &f, why, sizeof why), 0);
    assert_int_equal(mqt_filter_match(&f, "devices/lock-7/up", 17, &c), 1);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.v[0].len, 6);
    assert_memory_equal(c.v[0].ptr, "lock-7", 6);
    assert_int_equal(mqt_filter_match(&f, "devices/lock-7/up/x", 19, &c), 0);
    assert_int_equal(mqt_filter_match(&f, "devices/lock-7", 14, &c), 0);
    assert_int_equal(mqt_filter_match(&f, "devices//up", 11, &c), 1);   /* empty level */
    assert_int_equal(c.v[0].len, 0);
    assert_int_equal(mqt_filter_match(&f, "device/x/up", 11, &c), 0);

    assert_int_equal(mqt_filter_parse("a/{x}/#", &f, why, sizeof why), 0);
    assert_int_equal(mqt_filter_match(&f, "a/1", 3, &c), 1);            /* # also matches none */
    assert_int_equal(mqt_filter_match(&f, "a/1/2/3", 7, &c), 1);
    assert_memory_equal(c.v[0].ptr, "1", 1);
    assert_int_equal(mqt_filter_match(&f, "a", 1, &c), 0);

    assert_int_equal(mqt_filter_parse("$share/gw/devices/{device}/up", &f, why, sizeof why), 0);
    assert_string_equal(f.sub, "$share/gw/devices/+/up");
    assert_int_equal(mqt_filter_match(&f, "devices/d9/up", 13, &c), 1);
    assert_memory_equal(c.v[0].ptr, "d9", 2);
    assert_int_equal(mqt_filter_parse("$share//x", &f, why, sizeof why), -1);
    assert_int_equal(mqt_filter_parse("$share/g", &f, why, sizeof why), -1);

    assert_int_equal(mqt_filter_parse("#", &f, why, sizeof why), 0);
    assert_int_equal(mqt_filter_match(&f, "anything/at/all", 15, &c), 1);

    assert_int_equal(mqt_filter_parse("+/{b}", &f, why, sizeof why), 0);
    assert_int_equal(mqt_filter_match(&f, "x/y", 3, &c), 1);
    assert_memory_equal(c.v[0].ptr, "y", 1);
    assert_int_equal(mqt_filter_match(&f, "x/y/", 4, &c), 0);
    assert_int_equal(mqt_filter_match(&f, "x", 1, &c), 0);
}

/* ---------------------------------------------------------------------------
 * Templates.
 */
static int res(void *arg, const char *name, const char **v, size_t *l)
{
    (void)arg;
    if (!strcmp(name, "device")) {
        *v = "lock7";
        *l = 5;
        return 0;
    }
    if (!strcmp(name, "evil")) {
        *v = "a/b";
        *l = 3;
        return 0;
    }
    if (!strcmp(name, "empty")) {
        *v = "";
        *l = 0;
        return 0;
    }
    return -1;
}

static void test_template(void **st)
{
    (void)st;
    struct mqt_tmpl t;
    char out[64], why[128];
    assert_int_equal(mqt_tmpl_parse("devices/{device}/down", 21, &t, why, sizeof why), 0);
    assert_int_equal(mqt_tmpl_vars(&t), 1);
    assert_int_equal(mqt_tmpl_render(&t, res, NULL, 1, out, sizeof out, why, sizeof why), 18);
    assert_string_equal(out, "devices/lock7/down");

    assert_int_equal(mqt_tmpl_parse("x/{evil}", 8, &t, why, sizeof why), 0);
    assert_int_equal(mqt_tmpl_render(&t, res, NULL, 1, out, sizeof out, why, sizeof why), -1);
    assert_non_null(strstr(why, "levels"));
    assert_int_equal(mqt_tmpl_render(&t, res, NULL, 0, out, sizeof out, why, sizeof why), 5);

    assert_int_equal(mqt_tmpl_parse("x/{empty}", 9, &t, why, sizeof why), 0);
    assert_int_equal(mqt_tmpl_render(&t, res, NULL, 1, out, sizeof out, why, sizeof why), -1);
    assert_int_equal(mqt_tmpl_parse("{nope}", 6, &t, why, sizeof why), 0);
    assert_int_equal(mqt_tmpl_render(&t, res, NULL, 1, out, sizeof out, why, sizeof why), -1);
    assert_non_null(strstr(why, "{nope}"));

    assert_int_equal(mqt_tmpl_parse("{{lit}} {device}", 16, &t, why, sizeof why), 0);
    assert_int_equal(mqt_tmpl_render(&t, res, NULL, 0, out, sizeof out, why, sizeof why), 11);
    assert_string_equal(out, "{lit} lock7");
    assert_int_equal(mqt_tmpl_parse("a}", 2, &t, why, sizeof why), -1);
    assert_int_equal(mqt_tmpl_parse("{a", 2, &t, why, sizeof why), -1);
    assert_int_equal(mqt_tmpl_parse("{a b}", 5, &t, why, sizeof why), -1);

    char small[8];
    assert_int_equal(mqt_tmpl_parse("devices/{device}", 16, &t, why, sizeof why), 0);
    assert_int_equal(mqt_tmpl_render(&t, res, NULL, 1, small, sizeof small, why, sizeof why),
                     -1);
}

/* ---------------------------------------------------------------------------
 * Mapping.
 */
static void test_json_text(void **st)
{
    (void)st;
    struct mqt_map m;
    base_map(&m);
    m.p_text = "/msg/text";
    m.p_ts = "/ts";
    assert_int_equal(mqt_map_add_field(&m, "sender.name=/name", (char[64]){ 0 }, 64), 0);
    struct rec r = { 0 };
    struct mqt_problem p;
    const char *js = "{\"msg\":{\"text\":\"door jammed\"},\"ts\":1700000000000,\"name\":\"Lock 7\"}";
    assert_int_equal(run(&m, "devices/{device}/up", "devices/lock7/up", js, strlen(js), &r, &p),
                     0);
    assert_string_equal(r.type, "message");
    assert_string_equal(get(&r, "conversation.id"), "lock7");
    assert_string_equal(get(&r, "sender.id"), "lock7");
    assert_string_equal(get(&r, "sender.role"), "device");
    assert_string_equal(get(&r, "conversation.kind"), "device");
    assert_string_equal(get(&r, "channel_data.device"), "lock7");
    assert_string_equal(get(&r, "channel_data.topic"), "devices/lock7/up");
    assert_string_equal(r.kinds[0], "text");
    assert_string_equal(get(&r, "p0.text"), "door jammed");
    assert_string_equal(get(&r, "ts.channel"), "1700000000000");
    assert_string_equal(get(&r, "sender.name"), "Lock 7");
    assert_null(get(&r, "raw.body"));
    assert_null(get(&r, "idem"));
}

static void test_json_event_value(void **st)
{
    (void)st;
    struct mqt_map m;
    base_map(&m);
    m.p_text = "/text";     /* absent: the payload becomes an event */
    struct rec r = { 0 };
    struct mqt_problem p;
    const char *js = "{\"temp\":21.5,\"n\":3,\"ok\":true,\"x\":null,\"arr\":[1,2],"
                     "\"deep\":{\"a\":{\"b\":{\"c\":{\"d\":1}}}}}";
    assert_int_equal(run(&m, "t/{id}", "t/d1", js, strlen(js), &r, &p), 0);
    assert_string_equal(r.type, "event");
    assert_string_equal(r.kinds[0], "event");
    assert_string_equal(get(&r, "p0.name"), "telemetry");
    assert_string_equal(get(&r, "p0.value.temp"), "21.5");
    assert_string_equal(get(&r, "p0.value.n"), "3");
    assert_string_equal(get(&r, "p0.value.ok"), "true");
    assert_string_equal(get(&r, "p0.value.x"), "null");
    assert_string_equal(get(&r, "p0.value.arr"), "[1,2]");
    /* Four levels as keys, the rest as JSON text. */
    assert_string_equal(get(&r, "p0.value.deep.a.b.c"), "{\"d\":1}");

    /* A scalar payload and a named event from the payload. */
    struct rec r2 = { 0 };
    m.p_event = "/ev";
    m.p_value = "/v";
    js = "{\"ev\":\"fault\",\"v\":{\"code\":17}}";
    assert_int_equal(run(&m, "t/{id}", "t/d1", js, strlen(js), &r2, &p), 0);
    assert_string_equal(get(&r2, "p0.name"), "fault");
    assert_string_equal(get(&r2, "p0.value.code"), "17");
    assert_null(get(&r2, "p0.value.ev"));

    struct rec r3 = { 0 };
    base_map(&m);
    assert_int_equal(run(&m, "t/{id}", "t/d1", "42.0", 4, &r3, &p), 0);
    assert_string_equal(get(&r3, "p0.value"), "42.0");
}

static void test_json_errors(void **st)
{
    (void)st;
    struct mqt_map m;
    base_map(&m);
    m.p_text = "/text";
    struct mqt_problem p;
    struct {
        const char *payload;
        enum mqt_err err;
        const char *ptr;
    } cases[] = {
        { "{bad", MQT_E_JSON, "" },
        { "", MQT_E_JSON, "" },
        { "{\"a\":1,\"a\":2}", MQT_E_JSON, "" },
        { "{\"text\":5}", MQT_E_FIELD, "/text" },
        { "{\"text\":\"\"}", MQT_E_FIELD, "/text" },
        { "{\"a.b\":1}", MQT_E_FIELD, "/a.b" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct rec r = { 0 };
        assert_int_equal(run(&m, "t/{id}", "t/d", cases[i].payload, strlen(cases[i].payload),
                             &r, &p), -1);
        assert_int_equal(p.err, cases[i].err);
        assert_string_equal(p.pointer, cases[i].ptr);
        assert_true(p.detail[0] != '\0');
    }
    /* Oversized. */
    m.max_payload = 8;
    struct rec r = { 0 };
    assert_int_equal(run(&m, "t/{id}", "t/d", "{\"text\":\"xx\"}", 13, &r, &p), -1);
    assert_int_equal(p.err, MQT_E_TOO_LARGE);
    assert_string_equal(mqt_err_code(p.err), "too_large");

    /* Text over max_text. */
    base_map(&m);
    m.p_text = "/text";
    m.max_text = 3;
    struct rec r2 = { 0 };
    assert_int_equal(run(&m, "t/{id}", "t/d", "{\"text\":\"abcd\"}", 15, &r2, &p), -1);
    assert_int_equal(p.err, MQT_E_FIELD);

    /* No identity at all: a filter without captures and no pointer. */
    base_map(&m);
    struct rec r3 = { 0 };
    assert_int_equal(run(&m, "plain/topic", "plain/topic", "{}", 2, &r3, &p), -1);
    assert_int_equal(p.err, MQT_E_MISSING);
    /* ... which a pointer can supply. */
    m.p_conversation = "/dev";
    m.p_sender = "/dev";
    struct rec r4 = { 0 };
    assert_int_equal(run(&m, "plain/topic", "plain/topic", "{\"dev\":7}", 9, &r4, &p), 0);
    assert_string_equal(get(&r4, "conversation.id"), "7");
    /* The pointer wins over the topic. */
    struct rec r5 = { 0 };
    assert_int_equal(run(&m, "d/{device}", "d/fromtopic", "{\"dev\":\"frompayload\"}", 21, &r5,
                         &p), 0);
    assert_string_equal(get(&r5, "sender.id"), "frompayload");
    struct rec r6 = { 0 };
    assert_int_equal(run(&m, "d/{device}", "d/t", "{\"dev\":[1]}", 11, &r6, &p), -1);
    assert_int_equal(p.err, MQT_E_FIELD);
    assert_string_equal(p.pointer, "/dev");

    /* A refusing sink is reported, not ignored. */
    base_map(&m);
    struct rec r7 = { 0 };
    r7.fail_sub = "channel_data";
    assert_int_equal(run(&m, "d/{device}", "d/t", "{}", 2, &r7, &p), -1);
    assert_int_equal(p.err, MQT_E_SINK);
}

static void test_filter_mapping_and_idem(void **st)
{
    (void)st;
    struct mqt_map m;
    base_map(&m);
    m.p_idem = "/id";
    m.p_text = "/t";
    struct rec r = { 0 };
    struct mqt_problem p;
    const char *js = "{\"t\":\"help\",\"id\":\"m:1\"}";
    assert_int_equal(run(&m, "s/{site}/k/{kiosk} => conversation.id={site}:{kiosk}; "
                             "sender.id={kiosk}; sender.name=kiosk {kiosk}",
                         "s/berlin/k/k9", js, strlen(js), &r, &p), 0);
    assert_string_equal(get(&r, "conversation.id"), "berlin:k9");
    assert_string_equal(get(&r, "sender.id"), "k9");
    assert_string_equal(get(&r, "sender.name"), "kiosk k9");
    assert_string_equal(get(&r, "channel_data.site"), "berlin");
    assert_string_equal(get(&r, "channel_data.kiosk"), "k9");
    /* idem = conversation ":" key, with ':' escaped in both. */
    assert_string_equal(get(&r, "idem"), "berlin%3Ak9:m%3A1");

    /* Instance-wide templates. */
    struct mqt_tmpl conv;
    char why[128];
    assert_int_equal(mqt_tmpl_parse("dev-{device}", 12, &conv, why, sizeof why), 0);
    m.conversation = &conv;
    struct rec r2 = { 0 };
    assert_int_equal(run(&m, "d/{device}", "d/x1", js, strlen(js), &r2, &p), 0);
    assert_string_equal(get(&r2, "conversation.id"), "dev-x1");
    assert_string_equal(get(&r2, "sender.id"), "x1");
    assert_string_equal(get(&r2, "idem"), "dev-x1:m%3A1");

    /* An integer key, and a bad one. */
    struct rec r3 = { 0 };
    assert_int_equal(run(&m, "d/{device}", "d/x1", "{\"t\":\"a\",\"id\":12}", 17, &r3, &p), 0);
    assert_string_equal(get(&r3, "idem"), "dev-x1:12");
    struct rec r4 = { 0 };
    assert_int_equal(run(&m, "d/{device}", "d/x1", "{\"t\":\"a\",\"id\":{}}", 17, &r4, &p), -1);
    assert_string_equal(p.pointer, "/id");
}

static void test_correlation_idem(void **st)
{
    (void)st;
    struct mqt_map m;
    base_map(&m);
    m.idem_correlation = 1;
    struct mqt_filter f;
    char why[128];
    assert_int_equal(mqt_filter_parse("d/{device}", &f, why, sizeof why), 0);
    struct mqt_caps c;
    assert_int_equal(mqt_filter_match(&f, "d/x", 3, &c), 1);
    struct rec r = { 0 };
    struct kfg_msg_sink s = sink_of(&r);
    struct mqt_problem p;
    assert_int_equal(mqt_map_message(&m, &f, &c, "d/x", 3, "{}", 2, "abc-1", 5, &s, &p), 0);
    assert_string_equal(get(&r, "idem"), "x:abc-1");
    struct rec r2 = { 0 };
    s = sink_of(&r2);
    assert_int_equal(mqt_map_message(&m, &f, &c, "d/x", 3, "{}", 2, "\x01\xff", 2, &s, &p), 0);
    assert_string_equal(get(&r2, "idem"), "x:hex%3A01ff");
}

static void test_raw(void **st)
{
    (void)st;
    struct mqt_map m;
    base_map(&m);
    m.format = MQT_RAW;
    m.raw_ctype = "application/x-lock";
    struct rec r = { 0 };
    struct mqt_problem p;
    const unsigned char bin[] = { 0x00, 0xff, 0x10, 'a' };
    assert_int_equal(run(&m, "d/{device}", "d/l1", bin, sizeof bin, &r, &p), 0);
    assert_string_equal(r.type, "event");
    assert_string_equal(get(&r, "p0.name"), "telemetry");
    assert_string_equal(get(&r, "raw.ctype"), "application/x-lock");
    /* The bytes arrive unchanged (the recording stops at the NUL). */
    const char *body = get(&r, "raw.body");
    assert_non_null(body);
    assert_int_equal(body[0], '\0');

    m.raw_text = 1;
    struct rec r2 = { 0 };
    assert_int_equal(run(&m, "d/{device}", "d/l1", "hello", 5, &r2, &p), 0);
    assert_string_equal(r2.type, "message");
    assert_string_equal(get(&r2, "p0.text"), "hello");
    assert_string_equal(get(&r2, "raw.body"), "hello");
    /* Not UTF-8: stays an event. */
    struct rec r3 = { 0 };
    assert_int_equal(run(&m, "d/{device}", "d/l1", "\xc3\x28", 2, &r3, &p), 0);
    assert_string_equal(r3.type, "event");
}

static size_t pack(msgpack_sbuffer *sb, int variant)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    switch (variant) {
    case 0:     /* {"text":"hi","n":-5,"f":1.5,"b":bin"\x01\x02"} */
        msgpack_pack_map(&pk, 4);
        msgpack_pack_str(&pk, 4);
        msgpack_pack_str_body(&pk, "text", 4);
        msgpack_pack_str(&pk, 2);
        msgpack_pack_str_body(&pk, "hi", 2);
        msgpack_pack_str(&pk, 1);
        msgpack_pack_str_body(&pk, "n", 1);
        msgpack_pack_int(&pk, -5);
        msgpack_pack_str(&pk, 1);
        msgpack_pack_str_body(&pk, "f", 1);
        msgpack_pack_double(&pk, 1.5);
        msgpack_pack_str(&pk, 1);
        msgpack_pack_str_body(&pk, "b", 1);
        msgpack_pack_bin(&pk, 2);
        msgpack_pack_bin_body(&pk, "\x01\x02", 2);
        break;
    case 1:     /* {1: 2}: a non-string key */
        msgpack_pack_map(&pk, 1);
        msgpack_pack_int(&pk, 1);
        msgpack_pack_int(&pk, 2);
        break;
    case 2:     /* uint64 above INT64_MAX */
        msgpack_pack_uint64(&pk, UINT64_MAX);
        break;
    case 3:     /* ext */
        msgpack_pack_ext(&pk, 1, 5);
        msgpack_pack_ext_body(&pk, "x", 1);
        break;
    }
    return sb->size;
}

static void test_msgpack(void **st)
{
    (void)st;
    struct mqt_map m;
    base_map(&m);
    m.format = MQT_MSGPACK;
    m.p_text = "/text";
    m.keep_raw = 1;
    m.nfields = 0;
    assert_int_equal(mqt_map_add_field(&m, "channel_data.n=/n", (char[64]){ 0 }, 64), 0);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    pack(&sb, 0);
    struct rec r = { 0 };
    struct mqt_problem p;
    assert_int_equal(run(&m, "d/{device}", "d/m1", sb.data, sb.size, &r, &p), 0);
    assert_string_equal(get(&r, "p0.text"), "hi");
    assert_string_equal(get(&r, "channel_data.n"), "-5");
    assert_string_equal(get(&r, "raw.ctype"), "application/msgpack");
    msgpack_sbuffer_destroy(&sb);

    /* The converter itself. */
    msgpack_sbuffer_init(&sb);
    pack(&sb, 0);
    json_t *j = mqt_msgpack_to_json(sb.data, sb.size, &p);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "b")), "AQI=");
    assert_true(json_real_value(json_object_get(j, "f")) == 1.5);
    json_decref(j);
    /* Trailing bytes and truncation. */
    assert_null(mqt_msgpack_to_json(sb.data, sb.size - 1, &p));
    assert_int_equal(p.err, MQT_E_MSGPACK);
    char *two = malloc(sb.size + 1);
    memcpy(two, sb.data, sb.size);
    two[sb.size] = (char)0xc0;
    assert_null(mqt_msgpack_to_json(two, sb.size + 1, &p));
    assert_non_null(strstr(p.detail, "trailing"));
    free(two);
    msgpack_sbuffer_destroy(&sb);
    for (int v = 1; v <= 3; v++) {
        msgpack_sbuffer_init(&sb);
        pack(&sb, v);
        assert_null(mqt_msgpack_to_json(sb.data, sb.size, &p));
        assert_int_equal(p.err, MQT_E_MSGPACK);
        msgpack_sbuffer_destroy(&sb);
    }
    /* 0xc1 is never valid. */
    assert_null(mqt_msgpack_to_json("\xc1", 1, &p));
    /* Deep nesting is refused, not recursed into without bound. */
    char deep[200];
    memset(deep, 0x91, sizeof deep);    /* fixarray of 1, 200 levels */
    deep[sizeof deep - 1] = 0x01;
    assert_null(mqt_msgpack_to_json(deep, sizeof deep, &p));
}

static void test_helpers(void **st)
{
    (void)st;
    char b[16];
    assert_int_equal(mqt_base64("", 0, b), 0);
    assert_int_equal(mqt_base64("f", 1, b), 4);
    assert_string_equal(b, "Zg==");
    mqt_base64("foob", 4, b);
    assert_string_equal(b, "Zm9vYg==");
    mqt_base64("foobar", 6, b);
    assert_string_equal(b, "Zm9vYmFy");
    assert_int_equal(mqt_utf8_ok("h\xc3\xa9", 3), 1);
    assert_int_equal(mqt_utf8_ok("\xc3", 1), 0);
    assert_int_equal(mqt_utf8_ok("\xed\xa0\x80", 3), 0);     /* surrogate */
    assert_int_equal(mqt_utf8_ok("\xe0\x80\x80", 3), 0);     /* overlong */
    assert_int_equal(mqt_utf8_ok("a\0b", 3), 0);
    assert_int_equal(mqt_utf8_ok("\xf0\x9f\x98\x80", 4), 1);
    assert_int_equal(mqt_pointer_valid("/a~1b"), 1);
    assert_int_equal(mqt_pointer_valid("/a~2"), 0);
    assert_int_equal(mqt_pointer_valid("a"), 0);
    json_t *j = json_loads("{\"a/b\":[10,{\"c~\":3}]}", 0, NULL);
    assert_int_equal(json_integer_value(mqt_pointer_get(j, "/a~1b/1/c~0")), 3);
    assert_null(mqt_pointer_get(j, "/a~1b/01"));
    assert_null(mqt_pointer_get(j, "/a~1b/9"));
    json_decref(j);
    assert_int_equal(mqt_key_mappable("channel_data.x.y"), 1);
    assert_int_equal(mqt_key_mappable("channel_data."), 0);
    assert_int_equal(mqt_key_mappable("channel_data.a..b"), 0);
    assert_int_equal(mqt_key_mappable("idem"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url),
        cmocka_unit_test(test_filter_parse),
        cmocka_unit_test(test_filter_match),
        cmocka_unit_test(test_template),
        cmocka_unit_test(test_json_text),
        cmocka_unit_test(test_json_event_value),
        cmocka_unit_test(test_json_errors),
        cmocka_unit_test(test_filter_mapping_and_idem),
        cmocka_unit_test(test_correlation_idem),
        cmocka_unit_test(test_raw),
        cmocka_unit_test(test_msgpack),
        cmocka_unit_test(test_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
