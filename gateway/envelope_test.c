/*
 * Envelope v1 (spec/envelope.md): encode/decode field by field, unknown
 * keys kept byte for byte, every rejection reason, dotted keys through the
 * host API and kfgate/envelope.h, the JSON mapping both ways, and limits.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <msgpack.h>

#include "buf.h"
#include "envelope.h"
#include "msg.h"

/* A host table with only the msg_* entries, as a plugin sees them. */
static struct kfg_msg *h_msg_new(struct kfg_instance *ins, const char *type)
{
    (void)ins;
    return kfg_msg_new(type, "acme", "wechat", "wx-main");
}

static const struct kfg_host H = {
    .msg_new = h_msg_new,
    .msg_free = kfg_msg_free,
    .msg_set = kfg_msg_set,
    .msg_set_int = kfg_msg_set_int,
    .msg_get = kfg_msg_get,
    .msg_part_add = kfg_msg_part_add,
    .msg_part_set = kfg_msg_part_set,
    .msg_part_count = kfg_msg_part_count,
    .msg_part_kind = kfg_msg_part_kind,
    .msg_part_get = kfg_msg_part_get,
};

static char *to_json(const void *mp, size_t len)
{
    struct kfg_buf b = { 0 };
    char why[200];
    int r = kfg_env_to_json_r(mp, len, &b, why, sizeof why);
    if (r != 0)
        fail_msg("to_json: %s", why);
    char *s = strdup(kfg_buf_cstr(&b));
    kfg_buf_free(&b);
    return s;
}

static void from_json(const char *js, struct kfg_buf *out)
{
    char why[200];
    kfg_buf_reset(out);
    if (kfg_env_from_json(js, strlen(js), out, why, sizeof why) != 0)
        fail_msg("from_json(%s): %s", js, why);
}

static void assert_str_field(const struct kfg_msg *m, const char *key, const char *want)
{
    struct kfg_str v = kfg_msg_get(m, key);
    if (!v.ptr)
        fail_msg("field %s missing", key);
    if (v.len != strlen(want) || memcmp(v.ptr, want, v.len) != 0)
        fail_msg("field %s: '%.*s' != '%s'", key, (int)v.len, v.ptr, want);
}

/* The WeChat-like inbound message every field test starts from. */
static struct kfg_msg *sample_inbound(void)
{
    struct kfg_msg *m = H.msg_new(NULL, KFG_ENV_TYPE_MESSAGE);
    assert_non_null(m);
    assert_int_equal(kfg_env_set_conversation(&H, m, "oUser1", 6, KFG_ENV_CONV_DIRECT), KFG_OK);
    assert_int_equal(kfg_env_set_sender(&H, m, "oUser1", 6, "Li Lei", KFG_ENV_ROLE_CUSTOMER),
                     KFG_OK);
    assert_int_equal(kfg_env_set_recipient(&H, m, "gh_abc", 6, NULL), KFG_OK);
    assert_int_equal(kfg_env_set_channel_time(&H, m, 1700000000000), KFG_OK);
    assert_int_equal(kfg_env_set_idem(&H, m, "wx:1234567890", 13), KFG_OK);
    assert_int_equal(kfg_env_set_channel_msg_id(&H, m, "1234567890", 10), KFG_OK);
    assert_int_equal(kfg_env_set_deadline(&H, m, 1700000005000), KFG_OK);
    assert_int_equal(kfg_env_set_trace(&H, m,
                     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "k=v"),
                     KFG_OK);
    assert_int_equal(kfg_env_set_raw(&H, m, "application/xml", "<xml/>", 6), KFG_OK);
    assert_int_equal(kfg_env_set_channel_data_int(&H, m, "AgentID", 1000002), KFG_OK);
    assert_int_equal(kfg_env_set_channel_data(&H, m, "MsgType", "text", 4), KFG_OK);
    assert_int_equal(kfg_env_text(&H, m, "hello", 5), 0);
    int p = kfg_env_media(&H, m, KFG_ENV_KIND_IMAGE, "MEDIA1", "https://x/y.jpg", "image/jpeg");
    assert_int_equal(p, 1);
    assert_int_equal(kfg_env_part_set_uint(&H, m, p, KFG_ENV_P_SIZE, 1234), KFG_OK);
    assert_int_equal(kfg_env_location(&H, m, 39.9, 116.25, "Beijing"), 2);
    assert_int_equal(kfg_env_link(&H, m, "https://k.example/a", "A", NULL), 3);
    p = kfg_env_event(&H, m, "menu_click", "V1001");
    assert_int_equal(p, 4);
    assert_int_equal(kfg_env_part_setz(&H, m, p, "value.menu_id", "7"), KFG_OK);
    return m;
}

static void stamp(struct kfg_msg *m)
{
    snprintf(m->id, sizeof m->id, "%s", "018f3e5c-8a2b-7c00-8000-0123456789ab");
    m->seq = 42;
    m->accepted_ms = 1700000000123;
}

static const char SAMPLE_JSON[] =
    "{\"v\":1,\"id\":\"018f3e5c-8a2b-7c00-8000-0123456789ab\",\"seq\":42,"
    "\"tenant\":\"acme\",\"channel\":\"wechat\",\"instance\":\"wx-main\",\"dir\":\"in\","
    "\"type\":\"message\",\"ts\":{\"accepted\":1700000000123,\"channel\":1700000000000},"
    "\"conversation\":{\"id\":\"oUser1\",\"kind\":\"direct\"},"
    "\"sender\":{\"id\":\"oUser1\",\"name\":\"Li Lei\",\"role\":\"customer\"},"
    "\"recipient\":{\"id\":\"gh_abc\"},"
    "\"idem\":\"wx:1234567890\",\"channel_msg_id\":\"1234567890\",\"deadline\":1700000005000,"
    "\"trace\":{\"traceparent\":\"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\","
    "\"tracestate\":\"k=v\"},"
    "\"raw\":{\"ctype\":\"application/xml\",\"body\":{\"$bin\":\"PHhtbC8+\"}},"
    "\"channel_data\":{\"AgentID\":1000002,\"MsgType\":\"text\"},"
    "\"parts\":[{\"kind\":\"text\",\"text\":\"hello\"},"
    "{\"kind\":\"image\",\"media_id\":\"MEDIA1\",\"url\":\"https://x/y.jpg\","
    "\"mime\":\"image/jpeg\",\"size\":1234},"
    "{\"kind\":\"location\",\"lat\":39.899999999999999,\"lon\":116.25,\"label\":\"Beijing\"},"
    "{\"kind\":\"link\",\"url\":\"https://k.example/a\",\"title\":\"A\"},"
    "{\"kind\":\"event\",\"name\":\"menu_click\",\"key\":\"V1001\",\"value\":{\"menu_id\":\"7\"}}]}";

/* Encode: the exact map, in the spec's JSON form, field by field. */
static void test_encode_inbound(void **state)
{
    (void)state;
    struct kfg_msg *m = sample_inbound();
    stamp(m);
    char why[200] = "";
    assert_int_equal(kfg_env_check(m, why, sizeof why), 0);
    struct kfg_buf b = { 0 };
    assert_int_equal(kfg_env_encode(m, &b), 0);
    char *js = to_json(b.p, b.len);
    assert_string_equal(js, SAMPLE_JSON);
    free(js);

    /* msgpack types on the wire: read back with msgpack-c. */
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    assert_int_equal(msgpack_unpack_next(&u, b.p, b.len, NULL), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object_map *top = &u.data.via.map;
    int seen = 0;
    for (uint32_t i = 0; i < top->size; i++) {
        const msgpack_object_kv *kv = &top->ptr[i];
        const char *k = kv->key.via.str.ptr;
        size_t kl = kv->key.via.str.size;
#define IS(s) (kl == strlen(s) && memcmp(k, s, kl) == 0)
        if (IS("v") || IS("seq")) {
            assert_int_equal(kv->val.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
            seen++;
        } else if (IS("raw")) {
            assert_int_equal(kv->val.via.map.ptr[1].val.type, MSGPACK_OBJECT_BIN);
            seen++;
        } else if (IS("parts")) {
            const msgpack_object_map *loc = &kv->val.via.array.ptr[2].via.map;
            assert_int_equal(loc->ptr[1].val.type, MSGPACK_OBJECT_FLOAT64);
            const msgpack_object_map *img = &kv->val.via.array.ptr[1].via.map;
            assert_int_equal(img->ptr[4].val.type, MSGPACK_OBJECT_POSITIVE_INTEGER);
            seen++;
        }
#undef IS
    }
    assert_int_equal(seen, 4);
    msgpack_unpacked_destroy(&u);

    /* Decoded as a record, every field is back with its type. */
    struct kfg_msg *d = NULL;
    assert_int_equal(kfg_env_decode(b.p, b.len, KFG_ENV_INBOUND, &d, why, sizeof why), 0);
    assert_string_equal(d->id, m->id);
    assert_int_equal(d->seq, 42);
    assert_int_equal(d->accepted_ms, 1700000000123);
    assert_string_equal(d->type, "message");
    assert_str_field(d, "tenant", "acme");
    assert_str_field(d, "channel", "wechat");
    assert_str_field(d, "instance", "wx-main");
    assert_str_field(d, "dir", "in");
    assert_str_field(d, "conversation.id", "oUser1");
    assert_str_field(d, "conversation", "oUser1");          /* alias */
    assert_str_field(d, "sender.name", "Li Lei");
    assert_str_field(d, "recipient.id", "gh_abc");
    assert_str_field(d, "idem", "wx:1234567890");
    assert_str_field(d, "trace.tracestate", "k=v");
    const struct kfg_field *f = kfg_msg_field(d, "ts.channel");
    assert_non_null(f);
    assert_int_equal(f->type, KFG_F_INT);
    assert_true(f->ival == 1700000000000);
    f = kfg_msg_field(d, "channel_data.AgentID");
    assert_true(f && f->type == KFG_F_UINT && f->ival == 1000002);
    f = kfg_msg_field(d, "raw.body");
    assert_true(f && f->type == KFG_F_RAW && f->len == 8 && memcmp(f->val, "\xc4\x06<xml/>", 8) == 0);
    assert_int_equal(d->nparts, 5);
    assert_string_equal(kfg_msg_part_kind(d, 2), "location");
    f = kfg_msg_part_field(d, 2, "lat");
    assert_true(f && f->type == KFG_F_FLOAT && f->dval == 39.9);
    f = kfg_msg_part_field(d, 1, "size");
    assert_true(f && f->type == KFG_F_UINT && f->ival == 1234);
    struct kfg_str t = kfg_env_text_of(&H, d);
    assert_true(t.len == 5 && memcmp(t.ptr, "hello", 5) == 0);
    assert_int_equal(kfg_env_find_part(&H, d, KFG_ENV_KIND_EVENT, 0), 4);
    assert_true(kfg_env_is(&H, d, KFG_ENV_SENDER_ROLE, "customer"));

    /* And encodes to the same bytes. */
    struct kfg_buf b2 = { 0 };
    d->tenant = NULL;
    assert_int_equal(kfg_env_encode(d, &b2), 0);
    js = to_json(b2.p, b2.len);
    assert_string_equal(js, SAMPLE_JSON);
    assert_int_equal(b2.len, b.len);
    assert_memory_equal(b2.p, b.p, b.len);
    free(js);
    kfg_buf_free(&b2);
    kfg_msg_free(d);

    /* kfg_msg_to_json is the same JSON form. */
    struct kfg_buf j = { 0 };
    kfg_msg_to_json(m, &j);
    assert_false(j.oom);
    assert_string_equal(kfg_buf_cstr(&j), SAMPLE_JSON);
    kfg_buf_free(&j);
    kfg_buf_free(&b);
    kfg_msg_free(m);
}

/* Status receipts as the bus builds them. */
static void test_status_receipt(void **state)
{
    (void)state;
    struct kfg_msg *r = kfg_msg_new(KFG_ENV_TYPE_STATUS, "acme", "wechat", "wx-main");
    assert_int_equal(kfg_msg_set(r, KFG_ENV_DIR, "out", 3), KFG_OK);
    assert_int_equal(kfg_msg_set(r, KFG_ENV_STATUS, "failed", 6), KFG_OK);
    assert_int_equal(kfg_msg_set(r, KFG_ENV_REF, "018f3e5c-8a2b-7c00-8000-0123456789ab", 36),
                     KFG_OK);
    assert_int_equal(kfg_msg_set_int(r, KFG_ENV_REF_SEQ, 41), KFG_OK);
    assert_int_equal(kfg_msg_set(r, KFG_ENV_CODE, "wx:45015", 8), KFG_OK);
    assert_int_equal(kfg_msg_set_bool(r, KFG_ENV_RETRIABLE, 0), KFG_OK);
    assert_int_equal(kfg_msg_set_int(r, KFG_ENV_ATTEMPTS, 3), KFG_OK);
    assert_int_equal(kfg_msg_set(r, KFG_ENV_CONVERSATION_ID, "oUser1", 6), KFG_OK);
    stamp(r);
    char why[200] = "";
    assert_int_equal(kfg_env_check(r, why, sizeof why), 0);
    struct kfg_buf b = { 0 };
    assert_int_equal(kfg_env_encode(r, &b), 0);
    char *js = to_json(b.p, b.len);
    assert_string_equal(js,
        "{\"v\":1,\"id\":\"018f3e5c-8a2b-7c00-8000-0123456789ab\",\"seq\":42,"
        "\"tenant\":\"acme\",\"channel\":\"wechat\",\"instance\":\"wx-main\",\"dir\":\"out\","
        "\"type\":\"status\",\"ts\":{\"accepted\":1700000000123},\"status\":\"failed\","
        "\"ref\":\"018f3e5c-8a2b-7c00-8000-0123456789ab\",\"ref_seq\":41,\"code\":\"wx:45015\","
        "\"retriable\":false,\"attempts\":3,\"conversation\":{\"id\":\"oUser1\"}}");
    free(js);
    /* failed without retriable is not a valid receipt */
    struct kfg_msg *r2 = kfg_msg_new(KFG_ENV_TYPE_STATUS, "acme", "wechat", "wx-main");
    kfg_msg_set(r2, KFG_ENV_STATUS, "failed", 6);
    kfg_msg_set(r2, KFG_ENV_REF, "x", 1);
    stamp(r2);
    assert_int_equal(kfg_env_check(r2, why, sizeof why), KFG_EINVAL);
    assert_string_equal(why, "missing required field 'retriable' (status 'failed')");
    kfg_msg_free(r2);
    kfg_buf_free(&b);
    kfg_msg_free(r);
}

/* An outbound envelope from a core: required fields, ids dropped. */
static void test_decode_outbound(void **state)
{
    (void)state;
    struct kfg_buf b = { 0 };
    from_json("{\"v\":1,\"id\":\"spoofed\",\"seq\":99,\"dir\":\"out\",\"type\":\"message\","
              "\"tenant\":\"acme\",\"instance\":\"wx-main\",\"conversation\":{\"id\":\"oUser1\"},"
              "\"reply_to\":\"018f3e5c-8a2b-7c00-8000-0123456789ab\",\"idem\":\"echo:1\","
              "\"deadline\":1700000005000,\"ts\":{\"accepted\":5},"
              "\"parts\":[{\"kind\":\"text\",\"text\":\"echo: hi\",\"format\":\"plain\"}]}", &b);
    struct kfg_msg *m = NULL;
    char why[200];
    assert_int_equal(kfg_env_decode_outbound(b.p, b.len, &m, why, sizeof why), 0);
    assert_string_equal(m->id, "");
    assert_int_equal(m->seq, 0);
    assert_int_equal(m->accepted_ms, 0);
    assert_null(m->instance);
    assert_str_field(m, KFG_ENV_INSTANCE, "wx-main");
    assert_str_field(m, KFG_ENV_TENANT, "acme");
    assert_str_field(m, KFG_ENV_REPLY_TO, "018f3e5c-8a2b-7c00-8000-0123456789ab");
    assert_str_field(m, KFG_ENV_IDEM, "echo:1");
    assert_str_field(m, "conversation", "oUser1");
    assert_int_equal(kfg_msg_part_count(m), 1);
    struct kfg_str t = kfg_msg_part_get(m, 0, "text");
    assert_true(t.len == 8 && memcmp(t.ptr, "echo: hi", 8) == 0);
    /* The gateway stamps it; the struct pointers win over the fields. */
    m->tenant = "acme";
    m->channel = "wechat";
    m->instance = "wx-main";
    stamp(m);
    struct kfg_buf e = { 0 };
    assert_int_equal(kfg_env_encode(m, &e), 0);
    char *js = to_json(e.p, e.len);
    assert_string_equal(js,
        "{\"v\":1,\"id\":\"018f3e5c-8a2b-7c00-8000-0123456789ab\",\"seq\":42,"
        "\"tenant\":\"acme\",\"channel\":\"wechat\",\"instance\":\"wx-main\",\"dir\":\"out\","
        "\"type\":\"message\",\"ts\":{\"accepted\":1700000000123},"
        "\"conversation\":{\"id\":\"oUser1\"},"
        "\"reply_to\":\"018f3e5c-8a2b-7c00-8000-0123456789ab\",\"idem\":\"echo:1\","
        "\"deadline\":1700000005000,"
        "\"parts\":[{\"kind\":\"text\",\"text\":\"echo: hi\",\"format\":\"plain\"}]}");
    free(js);
    kfg_buf_free(&e);
    kfg_msg_free(m);

    /* recipient.id instead of a conversation, and typing without parts */
    from_json("{\"v\":1,\"dir\":\"out\",\"type\":\"typing\",\"instance\":\"wx\","
              "\"recipient\":{\"id\":\"u\"}}", &b);
    assert_int_equal(kfg_env_validate(b.p, b.len, KFG_ENV_OUTBOUND, why, sizeof why), 0);
    kfg_buf_free(&b);
}

/* Unknown keys and values survive decode -> encode byte for byte. */
static void pk_str(msgpack_packer *pk, const char *s)
{
    msgpack_pack_str(pk, strlen(s));
    msgpack_pack_str_body(pk, s, strlen(s));
}

/* Starts an outbound envelope map of nkeys keys in sb, canonical order
 * (spec): v, instance, dir, type first; the caller packs the rest. */
static void pk_head(msgpack_sbuffer *sb, msgpack_packer *pk, size_t nkeys, const char *type)
{
    msgpack_sbuffer_init(sb);
    msgpack_packer_init(pk, sb, msgpack_sbuffer_write);
    msgpack_pack_map(pk, nkeys);
    pk_str(pk, "v"); msgpack_pack_uint8(pk, 1);
    pk_str(pk, "instance"); pk_str(pk, "wx-main");
    pk_str(pk, "dir"); pk_str(pk, "out");
    pk_str(pk, "type"); pk_str(pk, type);
}

static void test_unknown_keys_preserved(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_packer pk;
    pk_head(&sb, &pk, 14, "x-card");       /* then the rest; parts last */
    pk_str(&pk, "conversation");
    msgpack_pack_map(&pk, 3);
    pk_str(&pk, "id"); pk_str(&pk, "c1");
    pk_str(&pk, "x-extra"); msgpack_pack_array(&pk, 2); msgpack_pack_nil(&pk); msgpack_pack_true(&pk);
    pk_str(&pk, "deep"); msgpack_pack_map(&pk, 1); pk_str(&pk, "er"); msgpack_pack_map(&pk, 1);
    pk_str(&pk, "est"); msgpack_pack_int64(&pk, -5);
    pk_str(&pk, "f32"); msgpack_pack_float(&pk, 1.5f);
    pk_str(&pk, "f64"); msgpack_pack_double(&pk, -0.25);
    pk_str(&pk, "big"); msgpack_pack_uint64(&pk, UINT64_MAX);
    pk_str(&pk, "neg"); msgpack_pack_int64(&pk, INT64_MIN);
    pk_str(&pk, "blob"); msgpack_pack_bin(&pk, 3); msgpack_pack_bin_body(&pk, "\0\1\2", 3);
    pk_str(&pk, "ext"); msgpack_pack_ext(&pk, 4, 7); msgpack_pack_ext_body(&pk, "abcd", 4);
    pk_str(&pk, "empty"); msgpack_pack_map(&pk, 0);
    pk_str(&pk, "list");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_map(&pk, 1); pk_str(&pk, "label"); pk_str(&pk, "Yes");
    msgpack_pack_array(&pk, 0);
    pk_str(&pk, "parts");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 3);
    pk_str(&pk, "kind"); pk_str(&pk, "x-card");
    pk_str(&pk, "buttons"); msgpack_pack_array(&pk, 1); pk_str(&pk, "ok");
    pk_str(&pk, "meta"); msgpack_pack_map(&pk, 1); pk_str(&pk, "w"); msgpack_pack_uint16(&pk, 300);

    char why[200];
    struct kfg_msg *m = NULL;
    assert_int_equal(kfg_env_decode_outbound(sb.data, sb.size, &m, why, sizeof why), 0);
    assert_str_field(m, "conversation.id", "c1");
    const struct kfg_field *f = kfg_msg_field(m, "conversation.deep.er.est");
    assert_true(f && f->type == KFG_F_INT && f->ival == -5);
    f = kfg_msg_field(m, "f32");
    assert_true(f && f->type == KFG_F_FLOAT && f->f32 && f->dval == 1.5);
    f = kfg_msg_field(m, "empty");
    assert_true(f && f->type == KFG_F_RAW && f->len == 1);
    struct kfg_buf b = { 0 };
    assert_int_equal(kfg_env_encode(m, &b), 0);
    assert_int_equal(b.len, sb.size);
    assert_memory_equal(b.p, sb.data, sb.size);
    /* and the JSON form of both is the same text */
    char *j1 = to_json(sb.data, sb.size), *j2 = to_json(b.p, b.len);
    assert_string_equal(j1, j2);
    assert_non_null(strstr(j1, "\"big\":18446744073709551615,\"neg\":-9223372036854775808,"
                               "\"blob\":{\"$bin\":\"AAEC\"},\"ext\":{\"$ext\":[7,\"YWJjZA==\"]},"
                               "\"empty\":{},\"list\":[{\"label\":\"Yes\"},[]]"));
    assert_non_null(strstr(j1, "\"f32\":1.5,\"f64\":-0.25"));
    free(j1);
    free(j2);
    /* A filter adds a key next to the unknown ones: still all there. */
    assert_int_equal(kfg_msg_set(m, "conversation.deep.er.other", "x", 1), KFG_OK);
    kfg_buf_reset(&b);
    assert_int_equal(kfg_env_encode(m, &b), 0);
    j1 = to_json(b.p, b.len);
    assert_non_null(strstr(j1, "\"deep\":{\"er\":{\"est\":-5,\"other\":\"x\"}}"));
    free(j1);
    kfg_buf_free(&b);
    kfg_msg_free(m);
    msgpack_sbuffer_destroy(&sb);
}

/* Every rejection reason, from JSON input. */
struct reject {
    unsigned flags;
    const char *json;
    const char *reason;
};

#define OUT KFG_ENV_OUTBOUND
#define IN KFG_ENV_INBOUND
#define OK_OUT "\"v\":1,\"dir\":\"out\",\"type\":\"message\",\"instance\":\"wx\"," \
               "\"conversation\":{\"id\":\"c\"}"
#define REC "\"v\":1,\"id\":\"018f3e5c-8a2b-7c00-8000-0123456789ab\",\"seq\":1," \
            "\"tenant\":\"t\",\"channel\":\"c\",\"instance\":\"i\",\"dir\":\"in\","  \
            "\"ts\":{\"accepted\":1}"
#define TEXT "\"parts\":[{\"kind\":\"text\",\"text\":\"x\"}]"

static const struct reject rejects[] = {
    { OUT, "{\"dir\":\"out\",\"type\":\"message\"}", "missing required field 'v'" },
    { OUT, "{\"v\":2}", "field 'v': unsupported version 2 (this gateway speaks 1)" },
    { OUT, "{\"v\":\"1\"}", "field 'v': expected unsigned integer, got string" },
    { OUT, "{\"v\":-1}", "field 'v': expected unsigned integer, got negative integer" },
    { OUT, "{\"v\":1,\"dir\":\"out\"}", "missing required field 'type'" },
    { OUT, "{\"v\":1,\"type\":\"message\"}", "missing required field 'dir'" },
    { OUT, "{\"v\":1,\"type\":\"foo\"}", "unknown type 'foo'" },
    { OUT, "{\"v\":1,\"type\":7}", "field 'type': expected string, got integer" },
    { OUT, "{\"v\":1,\"type\":\"message\",\"dir\":\"up\"}",
      "field 'dir': expected 'in' or 'out', got 'up'" },
    { OUT, "{\"v\":1,\"type\":\"message\",\"dir\":\"in\"}",
      "field 'dir': must be 'out' on the outbound path, got 'in'" },
    { OUT, "{\"v\":1,\"type\":\"status\",\"dir\":\"out\"}",
      "type 'status' is the gateway's own: a core cannot send it" },
    { OUT, "{\"v\":1,\"type\":\"message\",\"dir\":\"out\"}", "missing required field 'instance'" },
    { OUT, "{\"v\":1,\"type\":\"message\",\"dir\":\"out\",\"instance\":\"\"}",
      "field 'instance': invalid name (1..64 of A-Z a-z 0-9 _ . -)" },
    { OUT, "{\"v\":1,\"type\":\"message\",\"dir\":\"out\",\"instance\":\"a/b\"}",
      "field 'instance': invalid name (1..64 of A-Z a-z 0-9 _ . -)" },
    { OUT, "{\"v\":1,\"type\":\"message\",\"dir\":\"out\",\"instance\":\"wx\"}",
      "missing required field 'conversation.id' or 'recipient.id'" },
    { OUT, "{" OK_OUT "}", "missing required field 'parts' (a message needs at least one part)" },
    { OUT, "{" OK_OUT ",\"conversation\":1}", "JSON line 1 column 92: duplicate object key near '\"conversation\"'" },
    { OUT, "{\"v\":1,\"conversation\":\"c1\"}", "field 'conversation': expected map, got string" },
    { OUT, "{\"v\":1,\"conversation\":{\"id\":5}}",
      "field 'conversation.id': expected string, got integer" },
    { OUT, "{\"v\":1,\"ts\":{\"channel\":1.5}}", "field 'ts.channel': expected integer, got float" },
    { OUT, "{\"v\":1,\"ts\":{\"channel\":18446744073709551615}}",
      "JSON line 1 column 43: too big integer near '18446744073709551615'" },
    { OUT, "{\"v\":1,\"raw\":{\"body\":\"text\"}}", "field 'raw.body': expected binary, got string" },
    { OUT, "{\"v\":1,\"retriable\":1}", "field 'retriable': expected boolean, got integer" },
    { OUT, "{\"v\":1,\"parts\":{}}", "field 'parts': expected array, got map" },
    { OUT, "{\"v\":1,\"parts\":[\"x\"]}", "field 'parts[0]': expected map, got string" },
    { OUT, "{\"v\":1,\"parts\":[{\"text\":\"x\"}]}", "missing required field 'parts[0].kind'" },
    { OUT, "{\"v\":1,\"parts\":[{\"kind\":\"text\",\"text\":\"x\"},{\"kind\":3}]}",
      "field 'parts[1].kind': expected string, got integer" },
    { OUT, "{\"v\":1,\"parts\":[{\"kind\":\"foo\"}]}", "field 'parts[0].kind': unknown kind 'foo'" },
    { OUT, "{\"v\":1,\"parts\":[{\"kind\":\"text\",\"text\":[]}]}",
      "field 'parts[0].text': expected string, got array" },
    { OUT, "{\"v\":1,\"parts\":[{\"kind\":\"image\",\"size\":-1,\"url\":\"u\"}]}",
      "field 'parts[0].size': expected unsigned integer, got negative integer" },
    { OUT, "{\"v\":1,\"parts\":[{\"kind\":\"location\",\"lat\":\"1\",\"lon\":2}]}",
      "field 'parts[0].lat': expected number, got string" },
    { OUT, "{" OK_OUT ",\"parts\":[{\"kind\":\"text\"}]}", "missing required field 'parts[0].text'" },
    { OUT, "{" OK_OUT ",\"parts\":[{\"kind\":\"text\",\"text\":\"x\",\"format\":\"rtf\"}]}",
      "field 'parts[0].format': unknown format 'rtf'" },
    { OUT, "{" OK_OUT ",\"parts\":[{\"kind\":\"voice\",\"mime\":\"audio/amr\"}]}",
      "missing required field 'parts[0].media_id' or 'parts[0].url'" },
    { OUT, "{" OK_OUT ",\"parts\":[{\"kind\":\"file\",\"url\":\"u\",\"sha256\":\"AB\"}]}",
      "field 'parts[0].sha256': expected 64 lowercase hex digits" },
    { OUT, "{" OK_OUT ",\"parts\":[{\"kind\":\"location\",\"lat\":1}]}",
      "missing required field 'parts[0].lon'" },
    { OUT, "{" OK_OUT ",\"parts\":[{\"kind\":\"location\",\"lat\":91,\"lon\":0}]}",
      "field 'parts[0].lat': out of range -90..90" },
    { OUT, "{" OK_OUT ",\"parts\":[{\"kind\":\"location\",\"lat\":0,\"lon\":-180.5}]}",
      "field 'parts[0].lon': out of range -180..180" },
    { OUT, "{" OK_OUT ",\"parts\":[{\"kind\":\"link\"}]}", "missing required field 'parts[0].url'" },
    { OUT, "{" OK_OUT ",\"parts\":[{\"kind\":\"event\",\"key\":\"k\"}]}",
      "missing required field 'parts[0].name'" },
    { OUT, "{" OK_OUT "," TEXT ",\"status\":\"lost\"}", "field 'status': unknown status 'lost'" },
    { OUT, "{" OK_OUT "," TEXT ",\"trace\":{\"traceparent\":\"00-abc\"}}",
      "field 'trace.traceparent': not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)" },
    { OUT, "{" OK_OUT "," TEXT ",\"idem\":\"\"}", "field 'idem': expected 1..512 bytes" },
    { OUT, "{\"v\":1,\"a\":{\"\":1}}", "field 'a': map key #1 is empty" },
    { OUT, "{\"v\":1,\"a\":{\"b.c\":1}}", "field 'a': key 'b.c' contains '.'" },
    { OUT, "{\"v\":1,\"a.b\":1}", "field 'envelope': key 'a.b' contains '.'" },
    { OUT, "{\"v\":1,\"a\":[{\"x\":1,\"y\":{\"z.z\":1}}]}", "field 'a[0].y': key 'z.z' contains '.'" },
    { IN, "{" REC ",\"type\":\"message\"}", "missing required field 'conversation.id'" },
    { IN, "{" REC ",\"type\":\"message\",\"conversation\":{\"id\":\"c\"}}",
      "missing required field 'sender.id'" },
    { IN, "{" REC ",\"type\":\"event\",\"conversation\":{\"id\":\"c\"},\"sender\":{\"id\":\"s\"}}",
      "missing required field 'parts' (a event needs at least one part)" },
    { IN, "{\"v\":1,\"type\":\"message\",\"dir\":\"in\"}", "missing required field 'id'" },
    { IN, "{\"v\":1,\"type\":\"message\",\"dir\":\"in\",\"id\":\"x\"}",
      "field 'id': expected UUID text (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, lowercase hex)" },
    { OUT, "{\"v\":1,\"type\":\"x-a b\"}", "unknown type 'x-a b'" },
    { OUT, "{\"v\":1,\"a\":{\"b\\u0000\":1}}",
      "JSON line 1 column 21: NUL byte in object key not supported near '\"b\\u0000\"'" },
    { IN, "{\"v\":1,\"type\":\"status\",\"id\":\"018f3e5c-8a2b-7c00-8000-0123456789ab\","
          "\"dir\":\"out\"}", "missing required field 'seq'" },
    { IN, "{" REC ",\"type\":\"status\"}", "missing required field 'status'" },
    { IN, "{" REC ",\"type\":\"status\",\"status\":\"sent\"}", "missing required field 'ref'" },
    { 0, "[1]", "JSON: expected an object" },
    { 0, "{\"v\":1,", "JSON line 1 column 7: string or '}' expected near end of file" },
    { 0, "{\"a\":{\"$bin\":\"***\"}}", "field 'a': invalid base64 in $bin" },
    { 0, "{\"a\":{\"$bin\":\"QQ\"}}", "field 'a': invalid base64 in $bin" },
    { 0, "{\"a\":{\"$bin\":5}}", "field 'a': $bin must be a base64 string" },
    { 0, "{\"a\":{\"$ext\":[300,\"\"]}}", "field 'a': $ext must be [type -128..127, base64]" },
    { 0, "{\"a\":{\"$float\":\"nan\"}}",
      "field 'a': $float must be \"NaN\", \"Infinity\" or \"-Infinity\"" },
};

static void test_rejections(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(rejects) / sizeof(rejects[0]); i++) {
        const struct reject *r = &rejects[i];
        struct kfg_buf b = { 0 };
        char why[256] = "";
        int rc = kfg_env_from_json(r->json, strlen(r->json), &b, why, sizeof why);
        if (rc == 0) {
            struct kfg_msg *m = (struct kfg_msg *)1;
            rc = kfg_env_decode(b.p, b.len, r->flags, &m, why, sizeof why);
            assert_int_equal(rc, KFG_EINVAL);
            assert_null(m);
        }
        if (strcmp(why, r->reason) != 0)
            fail_msg("case %zu %s:\n  got  %s\n  want %s", i, r->json, why, r->reason);
        kfg_buf_free(&b);
    }
}

/* Rejections that only raw msgpack can express. */
static void expect_raw(const void *p, size_t n, const char *want)
{
    char why[256] = "";
    assert_int_equal(kfg_env_decode(p, n, KFG_ENV_OUTBOUND, NULL, why, sizeof why), KFG_EINVAL);
    if (strcmp(why, want) != 0)
        fail_msg("got  %s\nwant %s", why, want);
}

static void test_rejections_raw(void **state)
{
    (void)state;
    expect_raw("\x92\x01\x02", 3, "envelope: expected map, got array");
    expect_raw("", 0, "not msgpack: truncated value at 'envelope' (offset 0)");
    expect_raw("\x81\xa1v\x01\xc0", 5, "envelope: 1 trailing bytes after the map");
    expect_raw("\x81\xa1v\xc1", 4, "not msgpack: invalid byte 0xc1 at offset 3");
    expect_raw("\x82\xa1v\x01\xa1x\xd9\x10" "abc", 11,
               "not msgpack: truncated value at 'x' (offset 6)");
    expect_raw("\x81\x01\x01", 3, "field 'envelope': map key #1 is integer, not a string");
    expect_raw("\x82\xa1v\x01\xa1x\xa2\xc3\x28", 9, "field 'x': invalid UTF-8");
    expect_raw("\x82\xa1v\x01\xa2\xed\xa0\x01", 8, "field 'envelope': map key #2 is not valid UTF-8");
    expect_raw("\x82\xa1v\x01\xa2x\x00\x01", 7, "field 'envelope': map key #2 contains NUL");
    expect_raw("\x82\xa1v\x01\xa4type\xa3x-\x00", 13, "unknown type 'x-'");
    expect_raw("\x83\xa1v\x01\xa1x\x01\xa1x\x02", 10, "field 'envelope': duplicate key 'x'");
    expect_raw("\x82\xa1v\x01\xa1x\x91\xa2\xc3\x28", 10, "field 'x[0]': invalid UTF-8");
    /* duplicates inside a part, a nested map, and a map kept raw in an array */
    expect_raw("\x82\xa1v\x01\xa5parts\x91\x83\xa4kind\xa4text\xa4text\xa1" "a\xa4text\xa1" "b",
               36, "field 'parts[0]': duplicate key 'text'");
    expect_raw("\x82\xa1v\x01\xa5parts\x91\x82\xa4kind\xa4text\xa4kind\xa4link", 32,
               "field 'parts[0]': duplicate key 'kind'");
    expect_raw("\x82\xa1v\x01\xa1m\x81\xa1n\x82\xa1" "a\x01\xa1" "a\x02", 16,
               "field 'm.n': duplicate key 'a'");
    expect_raw("\x82\xa1v\x01\xa1x\x91\x82\xa1" "a\x01\xa1" "a\x02", 14,
               "field 'x[0]': duplicate key 'a'");
    /* a count that claims more than the bytes left: no allocation, no read */
    expect_raw("\x82\xa1v\x01\xa1x\xdd\xff\xff\xff\xff", 11,
               "not msgpack: truncated value at 'x' (offset 6)");
    expect_raw("\xdf\x7f\xff\xff\xff", 5, "not msgpack: truncated value at 'envelope' (offset 0)");
    /* a map with many keys (sorted duplicate check) */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    pk_str(&pk, "v");
    msgpack_pack_uint8(&pk, 1);
    pk_str(&pk, "m");
    msgpack_pack_map(&pk, 100);
    for (int i = 0; i < 100; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i == 99 ? 42 : i);
        pk_str(&pk, k);
        msgpack_pack_int(&pk, i);
    }
    expect_raw(sb.data, sb.size, "field 'm': duplicate key 'k42'");
    msgpack_sbuffer_destroy(&sb);
}

/* The encoder writes msgpack itself; every header form it can choose must
 * be the one msgpack-c's packer chooses, or a canonical envelope would not
 * re-encode to its own bytes. Integers, strings and maps at each boundary,
 * and an array of more than 15 parts, packed by msgpack-c, decoded, encoded. */
static void test_encoder_forms_match_msgpack_c(void **state)
{
    (void)state;
    static const uint64_t us[] = { 0, 1, 127, 128, 255, 256, 65535, 65536, 4294967295u,
                                   4294967296u, UINT64_MAX };
    static const int64_t is[] = { -1, -31, -32, -33, -127, -128, -129, -32767, -32768,
                                  -32769, INT32_MIN + 1, INT32_MIN, (int64_t)INT32_MIN - 1,
                                  INT64_MIN };
    static const size_t sl[] = { 0, 1, 31, 32, 255, 256, 65535, 65536 };
    const size_t nu = sizeof us / sizeof us[0], ni = sizeof is / sizeof is[0],
                 ns = sizeof sl / sizeof sl[0];
    char *text = malloc(65536);
    memset(text, 'y', 65536);
    msgpack_sbuffer sb;
    msgpack_packer pk;
    pk_head(&sb, &pk, 9, "x-forms");
    /* one map per kind: "u" unsigned, "i" negative, "s" strings */
    const char *groups[] = { "u", "i", "s" };
    const size_t counts[] = { nu, ni, ns };
    for (int g = 0; g < 3; g++) {
        pk_str(&pk, groups[g]);
        msgpack_pack_map(&pk, counts[g]);
        for (size_t i = 0; i < counts[g]; i++) {
            char k[32];
            snprintf(k, sizeof k, "%s%zu", groups[g], i);
            pk_str(&pk, k);
            if (g == 0) {
                msgpack_pack_uint64(&pk, us[i]);
            } else if (g == 1) {
                msgpack_pack_int64(&pk, is[i]);
            } else {
                msgpack_pack_str(&pk, sl[i]);
                msgpack_pack_str_body(&pk, text, sl[i]);
            }
        }
    }
    /* maps of 15 and 16 entries, and a key of 32 bytes */
    pk_str(&pk, "m");
    msgpack_pack_map(&pk, 2);
    for (int w = 15; w <= 16; w++) {
        char k[40];
        snprintf(k, sizeof k, w == 15 ? "m15" : "m16-a-key-of-exactly-32-bytes-xx");
        pk_str(&pk, k);
        msgpack_pack_map(&pk, (size_t)w);
        for (int e = 0; e < w; e++) {
            snprintf(k, sizeof k, "e%d", e);
            pk_str(&pk, k);
            msgpack_pack_true(&pk);
        }
    }
    pk_str(&pk, "parts");
    msgpack_pack_array(&pk, 17);
    for (int i = 0; i < 17; i++) {
        msgpack_pack_map(&pk, 2);
        pk_str(&pk, "kind"); pk_str(&pk, "text");
        pk_str(&pk, "text"); pk_str(&pk, "p");
    }
    char why[200];
    struct kfg_msg *m = NULL;
    int rc = kfg_env_decode_outbound(sb.data, sb.size, &m, why, sizeof why);
    if (rc)
        fail_msg("decode: %s", why);
    struct kfg_buf b = { 0 };
    assert_int_equal(kfg_env_encode(m, &b), 0);
    assert_int_equal(b.len, sb.size);
    assert_memory_equal(b.p, sb.data, sb.size);
    assert_int_equal(b.p[b.len], '\0');
    kfg_buf_free(&b);
    kfg_msg_free(m);
    msgpack_sbuffer_destroy(&sb);
    free(text);
}

/* Dotted keys through the host API. */
static void test_dotted_keys(void **state)
{
    (void)state;
    struct kfg_msg *m = kfg_msg_new("message", "t", "c", "i");
    assert_int_equal(kfg_msg_set(m, "a.b.c", "1", 1), KFG_OK);
    assert_int_equal(kfg_msg_set(m, "x", "2", 1), KFG_OK);
    assert_int_equal(kfg_msg_set(m, "a.b.d", "3", 1), KFG_OK);
    assert_int_equal(kfg_msg_set(m, "a.e", "4", 1), KFG_OK);
    assert_int_equal(kfg_msg_set(m, "a.b.c", "5", 1), KFG_OK);       /* replaced in place */
    /* a key cannot be both a value and a map */
    assert_int_equal(kfg_msg_set(m, "a.b", "v", 1), KFG_EINVAL);
    assert_int_equal(kfg_msg_set(m, "a.b.c.d", "v", 1), KFG_EINVAL);
    assert_int_equal(kfg_msg_set(m, "x.y", "v", 1), KFG_EINVAL);
    assert_int_equal(kfg_msg_set(m, "ab", "6", 1), KFG_OK);          /* "ab" is not "a" */
    /* malformed keys */
    static const char *const bad[] = { "", ".a", "a.", "a..b", ".", NULL };
    for (const char *const *k = bad; *k; k++)
        assert_int_equal(kfg_msg_set(m, *k, "v", 1), KFG_EINVAL);
    char longkey[300];
    memset(longkey, 'k', sizeof longkey - 1);
    longkey[sizeof longkey - 1] = '\0';
    assert_int_equal(kfg_msg_set(m, longkey, "v", 1), KFG_EINVAL);
    assert_int_equal(kfg_msg_set(m, "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q", "v", 1), KFG_EINVAL);
    /* reserved, also as a map or inside one */
    static const char *const res[] = { "v", "id", "seq", "tenant", "channel", "instance",
                                       "type", "parts", "ts", "ts.accepted", "id.x",
                                       "tenant.name", NULL };
    for (const char *const *k = res; *k; k++)
        assert_int_equal(kfg_msg_set(m, *k, "v", 1), KFG_EINVAL);
    assert_int_equal(kfg_msg_set(m, "ts.channel", "17", 2), KFG_OK);
    assert_int_equal(kfg_msg_set(m, "channel_data.k", "v", 1), KFG_OK);
    /* aliases */
    assert_int_equal(kfg_msg_set(m, "sender", "s1", 2), KFG_OK);
    assert_str_field(m, "sender.id", "s1");
    assert_str_field(m, "sender", "s1");
    assert_int_equal(kfg_msg_set(m, "idempotency_key", "k", 1), KFG_OK);
    assert_str_field(m, "idem", "k");
    /* an int field reads as no string */
    assert_int_equal(kfg_msg_set_int(m, "n", 5), KFG_OK);
    assert_null(kfg_msg_get(m, "n").ptr);
    /* parts take dotted keys too; "kind" is not a field */
    int p = kfg_msg_part_add(m, "event");
    assert_int_equal(kfg_msg_part_set(m, (size_t)p, "name", "scan", 4), KFG_OK);
    assert_int_equal(kfg_msg_part_set(m, (size_t)p, "value.scene", "9", 1), KFG_OK);
    assert_int_equal(kfg_msg_part_set(m, (size_t)p, "value", "9", 1), KFG_EINVAL);
    assert_int_equal(kfg_msg_part_set(m, (size_t)p, "kind", "x", 1), KFG_EINVAL);
    struct kfg_buf b = { 0 };
    assert_int_equal(kfg_env_encode(m, &b), 0);
    char *js = to_json(b.p, b.len);
    assert_string_equal(js,
        "{\"v\":1,\"tenant\":\"t\",\"channel\":\"c\",\"instance\":\"i\",\"dir\":\"in\","
        "\"type\":\"message\",\"a\":{\"b\":{\"c\":\"5\",\"d\":\"3\"},\"e\":\"4\"},\"x\":\"2\","
        "\"ab\":\"6\",\"ts\":{\"channel\":17},\"channel_data\":{\"k\":\"v\"},"
        "\"sender\":{\"id\":\"s1\"},\"idem\":\"k\",\"n\":5,"
        "\"parts\":[{\"kind\":\"event\",\"name\":\"scan\",\"value\":{\"scene\":\"9\"}}]}");
    free(js);
    /* decode flattens back to the same dotted keys */
    struct kfg_msg *d = NULL;
    char why[200];
    assert_int_equal(kfg_env_decode(b.p, b.len, 0, &d, why, sizeof why), 0);
    assert_str_field(d, "a.b.d", "3");
    struct kfg_str v = kfg_msg_part_get(d, 0, "value.scene");
    assert_true(v.len == 1 && v.ptr[0] == '9');
    kfg_msg_free(d);
    kfg_buf_free(&b);
    kfg_msg_free(m);
}

/* Numbers a plugin sets as text: typed when they parse, caught when not. */
static void test_coercion_and_check(void **state)
{
    (void)state;
    struct kfg_msg *m = H.msg_new(NULL, "message");
    kfg_env_set_conversation(&H, m, "c", 1, NULL);
    kfg_env_set_sender(&H, m, "s", 1, NULL, NULL);
    int p = kfg_env_media(&H, m, KFG_ENV_KIND_VOICE, "M", NULL, "audio/amr");
    assert_int_equal(H.msg_part_set(m, (size_t)p, "size", "12x", 3), KFG_OK);
    stamp(m);
    char why[200];
    assert_int_equal(kfg_env_check(m, why, sizeof why), KFG_EINVAL);
    assert_string_equal(why, "field 'parts[0].size': expected unsigned integer, got string");
    assert_int_equal(kfg_env_part_set_uint(&H, m, p, "size", 99), KFG_OK);
    assert_int_equal(kfg_env_part_set_uint(&H, m, p, "duration_ms", 2500), KFG_OK);
    assert_int_equal(kfg_env_check(m, why, sizeof why), 0);
    assert_int_equal(kfg_env_part_set_double(&H, m, p, "x", NAN), KFG_EINVAL);
    assert_int_equal(kfg_env_location(&H, m, 91, 0, NULL), KFG_EINVAL);
    assert_int_equal(kfg_env_media(&H, m, KFG_ENV_KIND_FILE, NULL, NULL, NULL), KFG_EINVAL);
    /* a "retriable" set as text */
    assert_int_equal(H.msg_set(m, "retriable", "true", 4), KFG_OK);
    struct kfg_buf b = { 0 };
    assert_int_equal(kfg_env_encode(m, &b), 0);
    char *js = to_json(b.p, b.len);
    assert_non_null(strstr(js, "\"retriable\":true"));
    assert_non_null(strstr(js, "\"size\":99,\"duration_ms\":2500"));
    free(js);
    kfg_buf_free(&b);
    /* a message without dir gets "in"; dir "out" set by the host stays */
    kfg_msg_free(m);
}

static void test_idem_parts(void **state)
{
    (void)state;
    struct kfg_msg *m = H.msg_new(NULL, "event");
    struct kfg_str c[] = { { "oU:1", 4 }, { "1700000000", 10 }, { "CLICK", 5 }, { "50%", 3 } };
    assert_int_equal(kfg_env_set_idem_parts(&H, m, c, 4), KFG_OK);
    assert_str_field(m, "idem", "oU%3A1:1700000000:CLICK:50%25");
    char big[600];
    memset(big, 'a', sizeof big);
    struct kfg_str c2[] = { { big, sizeof big } };
    assert_int_equal(kfg_env_set_idem_parts(&H, m, c2, 1), KFG_EINVAL);
    kfg_msg_free(m);
}

/* JSON <-> msgpack, both ways. */
static void test_json_roundtrip(void **state)
{
    (void)state;
    static const char *const cases[] = {
        "{}",
        "{\"a\":null,\"b\":true,\"c\":false,\"d\":0,\"e\":-1,\"f\":9223372036854775807,"
        "\"g\":-9223372036854775808,\"h\":1.0,\"i\":-2.5e-300,\"j\":\"\xc3\xa9\\n\\\"\","
        "\"k\":[],\"l\":{},\"m\":[[[]]],\"n\":{\"$bin\":\"\"},\"o\":{\"$bin\":\"AAEC/w==\"},"
        "\"p\":{\"$ext\":[-1,\"AAAAAA==\"]},\"q\":{\"$float\":\"NaN\"},"
        "\"r\":{\"$float\":\"-Infinity\"},\"s\":\"\\u0000x\",\"t\":{\"$bin\":\"x\",\"y\":1}}",
        SAMPLE_JSON,
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct kfg_buf b = { 0 };
        from_json(cases[i], &b);
        char *js = to_json(b.p, b.len);
        assert_string_equal(js, cases[i]);
        free(js);
        kfg_buf_free(&b);
    }
    /* whitespace and escapes normalise */
    struct kfg_buf b = { 0 };
    from_json("  {\"a\" : 1e2 , \"\\u0062\":[1, 2]}\n", &b);
    char *js = to_json(b.p, b.len);
    assert_string_equal(js, "{\"a\":100.0,\"b\":[1,2]}");
    free(js);
    /* float32 keeps its shortest text */
    static const unsigned char f32[] = { 0x81, 0xa1, 'x', 0xca, 0x3d, 0xcc, 0xcc, 0xcd };
    js = to_json(f32, sizeof f32);
    assert_string_equal(js, "{\"x\":0.100000001}");
    free(js);
    /* to_json refuses what is not one map */
    char why[200];
    kfg_buf_reset(&b);
    assert_int_equal(kfg_env_to_json_r("\x91\x01", 2, &b, why, sizeof why), -1);
    assert_string_equal(why, "envelope: expected map");
    assert_int_equal(kfg_env_to_json_r("\x80\x80", 2, &b, why, sizeof why), -1);
    assert_string_equal(why, "envelope: 1 trailing bytes after the map");
    assert_int_equal(kfg_env_to_json_r("\x81\x01\x01", 3, &b, why, sizeof why), -1);
    assert_string_equal(why, "field 'envelope': map key #1 is integer, not a string");
    assert_int_equal(kfg_env_to_json("\x81\xa1x", 3, &b), -1);
    kfg_buf_free(&b);
}

/* Limits: depth, size, parts, key length. */
static void nest(struct kfg_buf *js, int maps)
{
    kfg_buf_reset(js);
    kfg_buf_puts(js, "{\"v\":1,\"instance\":\"i\",\"dir\":\"out\",\"type\":\"x-t\",\"a\":");
    for (int i = 0; i < maps; i++)
        kfg_buf_puts(js, "{\"k\":");
    kfg_buf_puts(js, "1");
    for (int i = 0; i < maps; i++)
        kfg_buf_putc(js, '}');
    kfg_buf_putc(js, '}');
}

static void test_limits(void **state)
{
    (void)state;
    struct kfg_buf js = { 0 }, b = { 0 };
    char why[512];
    /* the envelope is level 1, "a" level 2: 15 nested maps in it fit */
    nest(&js, 15);
    from_json(js.p, &b);
    struct kfg_msg *m = NULL;
    assert_int_equal(kfg_env_decode_outbound(b.p, b.len, &m, why, sizeof why), 0);
    struct kfg_buf e = { 0 };
    assert_int_equal(kfg_env_encode(m, &e), 0);
    assert_int_equal(e.len, b.len);
    assert_memory_equal(e.p, b.p, b.len);
    kfg_msg_free(m);
    kfg_buf_reset(&e);
    assert_int_equal(kfg_env_to_json_r(b.p, b.len, &e, why, sizeof why), 0);
    assert_string_equal(e.p, js.p);
    nest(&js, 16);
    kfg_buf_reset(&b);
    assert_int_equal(kfg_env_from_json(js.p, js.len, &b, why, sizeof why), -1);
    assert_string_equal(why, "field 'a.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k': nested deeper than 16 levels");
    /* the same in msgpack, which only a hand-made encoder can produce */
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 2);
    pk_str(&pk, "v");
    msgpack_pack_uint8(&pk, 1);
    pk_str(&pk, "a");
    for (int i = 0; i < 16; i++) {
        msgpack_pack_map(&pk, 1);
        pk_str(&pk, "k");
    }
    msgpack_pack_uint8(&pk, 1);
    assert_int_equal(kfg_env_decode(sb.data, sb.size, 0, NULL, why, sizeof why), KFG_EINVAL);
    assert_string_equal(why, "field 'a.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k': nested deeper than 16 levels");
    kfg_buf_reset(&e);
    assert_int_equal(kfg_env_to_json_r(sb.data, sb.size, &e, why, sizeof why), -1);
    assert_string_equal(why, "field 'a.k.k.k.k.k.k.k.k.k.k.k.k.k.k.k': nested deeper than 16 levels");
    msgpack_sbuffer_destroy(&sb);
    /* deep arrays count the same */
    kfg_buf_reset(&js);
    kfg_buf_puts(&js, "{\"v\":1,\"a\":");
    for (int i = 0; i < 20; i++)
        kfg_buf_putc(&js, '[');
    for (int i = 0; i < 20; i++)
        kfg_buf_putc(&js, ']');
    kfg_buf_putc(&js, '}');
    static unsigned char deep[64];
    size_t n = 0;
    deep[n++] = 0x82;
    deep[n++] = 0xa1, deep[n++] = 'v', deep[n++] = 1;
    deep[n++] = 0xa1, deep[n++] = 'a';
    for (int i = 0; i < 20; i++)
        deep[n++] = 0x91;
    deep[n++] = 0x90;
    assert_int_equal(kfg_env_decode(deep, n, 0, NULL, why, sizeof why), KFG_EINVAL);
    assert_string_equal(why, "field 'a[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]': nested "
                             "deeper than 16 levels");
    /* size */
    size_t big = KFG_ENV_MAX_SIZE + 1;
    unsigned char *p = calloc(1, big);
    p[0] = 0x80;
    assert_int_equal(kfg_env_decode(p, big, 0, NULL, why, sizeof why), KFG_EINVAL);
    assert_string_equal(why, "envelope too large: 1048577 bytes (limit 1048576)");
    kfg_buf_reset(&e);
    assert_int_equal(kfg_env_to_json_r(p, big, &e, why, sizeof why), -1);
    assert_string_equal(why, "envelope too large: 1048577 bytes (limit 1048576)");
    free(p);
    kfg_buf_reset(&js);
    kfg_buf_puts(&js, "{\"v\":1,\"a\":\"");
    for (size_t i = 0; i < KFG_ENV_MAX_SIZE; i++)
        kfg_buf_putc(&js, 'x');
    kfg_buf_puts(&js, "\"}");
    kfg_buf_reset(&b);
    assert_int_equal(kfg_env_from_json(js.p, js.len, &b, why, sizeof why), -1);
    assert_string_equal(why, "envelope too large: 1048587 bytes (limit 1048576)");
    assert_int_equal(b.len, 0);
    assert_int_equal(kfg_env_from_json(js.p, KFG_ENV_MAX_JSON + 1, &b, why, sizeof why), -1);
    assert_string_equal(why, "JSON envelope too large: 4194305 bytes (limit 4194304)");
    /* parts */
    for (int np = 64; np <= 65; np++) {
        kfg_buf_reset(&js);
        kfg_buf_puts(&js, "{" OK_OUT ",\"parts\":[");
        for (int i = 0; i < np; i++)
            kfg_buf_printf(&js, "%s{\"kind\":\"text\",\"text\":\"%d\"}", i ? "," : "", i);
        kfg_buf_puts(&js, "]}");
        kfg_buf_reset(&b);
        from_json(js.p, &b);
        int rc = kfg_env_validate(b.p, b.len, KFG_ENV_OUTBOUND, why, sizeof why);
        if (np == 64) {
            assert_int_equal(rc, 0);
        } else {
            assert_int_equal(rc, KFG_EINVAL);
            assert_string_equal(why, "field 'parts': 65 parts, at most 64");
        }
    }
    /* key path length */
    kfg_buf_reset(&js);
    kfg_buf_puts(&js, "{\"v\":1,\"a\":{\"");
    for (int i = 0; i < 300; i++)
        kfg_buf_putc(&js, 'k');
    kfg_buf_puts(&js, "\":1}}");
    kfg_buf_reset(&b);
    from_json(js.p, &b);
    assert_int_equal(kfg_env_validate(b.p, b.len, 0, why, sizeof why), KFG_EINVAL);
    assert_non_null(strstr(why, "': key path longer than 256 bytes"));
    /* a tiny reason buffer is truncated, never overrun */
    char tiny[8];
    assert_int_equal(kfg_env_validate("\x90", 1, 0, tiny, sizeof tiny), KFG_EINVAL);
    assert_string_equal(tiny, "envelop");
    kfg_buf_free(&js);
    kfg_buf_free(&b);
    kfg_buf_free(&e);
}

/* The pre-existing msg.h behaviour callers rely on. */
static void test_msg_compat(void **state)
{
    (void)state;
    struct kfg_msg *m = kfg_msg_new("message", "t", "ex", "ex0");
    assert_int_equal(kfg_msg_set(m, "conversation", "c1", 2), KFG_OK);
    assert_int_equal(kfg_msg_set(m, "direction", "out", 3), KFG_OK);
    int p = kfg_msg_part_add(m, "text");
    assert_int_equal(kfg_msg_part_set(m, (size_t)p, "text", "hi", 2), KFG_OK);
    assert_int_equal(kfg_msg_set(m, "tenant", "evil", 4), KFG_EINVAL);
    assert_int_equal(kfg_msg_set_int(m, "seq", 1), KFG_EINVAL);
    assert_int_equal(kfg_msg_set(m, "x", NULL, 1), KFG_EINVAL);
    assert_int_equal(kfg_msg_set(m, "empty", NULL, 0), KFG_OK);
    assert_str_field(m, "empty", "");
    assert_str_field(m, "tenant", "t");
    assert_str_field(m, "type", "message");
    assert_null(kfg_msg_get(m, "id").ptr);
    kfg_msg_accept(m, 7);
    assert_int_equal(strlen(kfg_msg_get(m, "id").ptr), 36);
    assert_int_equal(kfg_msg_reserved("ts_accepted"), 0);
    assert_int_equal(kfg_msg_reserved("parts"), 1);
    struct kfg_buf j = { 0 };
    kfg_msg_to_json(m, &j);
    assert_false(j.oom);
    assert_non_null(strstr(j.p, "\"seq\":7,\"tenant\":\"t\",\"channel\":\"ex\",\"instance\":\"ex0\","
                                "\"dir\":\"out\",\"type\":\"message\",\"ts\":{\"accepted\":"));
    assert_non_null(strstr(j.p, "\"conversation\":{\"id\":\"c1\"},\"empty\":\"\","
                                "\"parts\":[{\"kind\":\"text\",\"text\":\"hi\"}]}"));
    kfg_buf_free(&j);
    kfg_msg_free(m);
}

/* The arena behind struct kfg_msg: more fields and parts than fit inline,
 * values bigger than any block, replaced values, and every byte of it intact
 * through an encode/decode round trip (ASan checks the bounds). */
static void test_msg_arena(void **state)
{
    (void)state;
    struct kfg_msg *m = kfg_msg_new("message", "t", "ex", "ex0");
    assert_int_equal(kfg_msg_set(m, "conversation", "c1", 2), KFG_OK);
    assert_int_equal(kfg_msg_set(m, "sender", "u1", 2), KFG_OK);
    char key[32], val[64];
    for (int i = 0; i < 3 * KFG_MSG_INLINE_FIELDS; i++) {
        snprintf(key, sizeof key, "ext.k%d", i);
        int n = snprintf(val, sizeof val, "value-%d", i);
        assert_int_equal(kfg_msg_set(m, key, val, (size_t)n), KFG_OK);
    }
    /* A value larger than the inline arena and the first heap block. */
    size_t big_len = 5 * KFG_MSG_INLINE_ARENA + 3;
    char *big = malloc(big_len);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (char)('a' + i % 26);
    assert_int_equal(kfg_msg_set(m, "ext.big", big, big_len), KFG_OK);
    /* Replacing keeps the first-set order, and the old bytes stay readable. */
    struct kfg_str old = kfg_msg_get(m, "ext.k0");
    assert_int_equal(kfg_msg_set(m, "ext.k0", "a much longer replacement value", 31), KFG_OK);
    assert_string_equal(old.ptr, "value-0");
    assert_str_field(m, "ext.k0", "a much longer replacement value");
    /* A value set from (a part of) its own current bytes. */
    struct kfg_str cur = kfg_msg_get(m, "ext.k1");
    assert_int_equal(kfg_msg_set(m, "ext.k1", cur.ptr + 6, cur.len - 6), KFG_OK);
    assert_str_field(m, "ext.k1", "1");
    assert_int_equal(kfg_msg_set(m, "ext.k2.deeper", "x", 1), KFG_EINVAL);
    for (int p = 0; p < 3 * KFG_MSG_INLINE_PARTS; p++) {
        int at = kfg_msg_part_add(m, "text");
        assert_int_equal(at, p);
        int n = snprintf(val, sizeof val, "part %d", p);
        assert_int_equal(kfg_msg_part_set(m, (size_t)at, "text", val, (size_t)n), KFG_OK);
        for (int k = 0; k < 9; k++) {
            snprintf(key, sizeof key, "meta.m%d", k);
            assert_int_equal(kfg_msg_part_set(m, (size_t)at, key, val, (size_t)n), KFG_OK);
        }
    }
    kfg_msg_accept(m, 42);
    struct kfg_buf b = { 0 };
    assert_int_equal(kfg_env_encode(m, &b), 0);
    struct kfg_msg *d = NULL;
    char why[200];
    assert_int_equal(kfg_env_decode(b.p, b.len, KFG_ENV_INBOUND, &d, why, sizeof why), 0);
    assert_int_equal(d->nfields, m->nfields + 4);  /* + tenant, channel, instance, dir */
    assert_str_field(d, "ext.k0", "a much longer replacement value");
    assert_str_field(d, "ext.k47", "value-47");
    struct kfg_str got = kfg_msg_get(d, "ext.big");
    assert_int_equal(got.len, big_len);
    assert_memory_equal(got.ptr, big, big_len);
    assert_int_equal(kfg_msg_part_count(d), 3 * KFG_MSG_INLINE_PARTS);
    got = kfg_msg_part_get(d, 5, "meta.m8");
    assert_int_equal(got.len, 6);
    assert_memory_equal(got.ptr, "part 5", 6);
    assert_int_equal(kfg_msg_set_type(d, "x-custom", 8), KFG_OK);
    assert_str_field(d, "type", "x-custom");
    struct kfg_buf b2 = { 0 };
    assert_int_equal(kfg_env_encode(d, &b2), 0);
    assert_int_equal(b2.len, b.len + 1);     /* "message" -> "x-custom" */
    kfg_buf_free(&b);
    kfg_buf_free(&b2);
    free(big);
    kfg_msg_free(d);
    kfg_msg_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encode_inbound),
        cmocka_unit_test(test_status_receipt),
        cmocka_unit_test(test_decode_outbound),
        cmocka_unit_test(test_unknown_keys_preserved),
        cmocka_unit_test(test_rejections),
        cmocka_unit_test(test_rejections_raw),
        cmocka_unit_test(test_dotted_keys),
        cmocka_unit_test(test_coercion_and_check),
        cmocka_unit_test(test_idem_parts),
        cmocka_unit_test(test_json_roundtrip),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_msg_compat),
        cmocka_unit_test(test_msg_arena),
        cmocka_unit_test(test_encoder_forms_match_msgpack_c),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
