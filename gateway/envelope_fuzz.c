/*
 * libFuzzer harness for the envelope codec (spec/envelope.md): the decoder
 * of outbound envelopes from cores, the JSON reader of kfgate-send, and the
 * msgpack -> JSON writer of kfgate-tail. The first byte picks the target
 * (and decode flags), the rest is the input. Besides the sanitizers it
 * checks the properties the gateway relies on:
 *   - decode succeeds => encode succeeds, the result decodes again, and
 *     encoding is a fixed point (encode(decode(encode(x))) == encode(x));
 *   - a decoded envelope converts to JSON, and that JSON converts back;
 *   - from_json succeeds => to_json succeeds and from_json(to_json(x))
 *     gives the very same bytes;
 *   - a failure always comes with a NUL-terminated, non-empty reason.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "envelope.h"

static void check_reason(const char *r, size_t cap)
{
    if (!memchr(r, '\0', cap) || !r[0])
        abort();
}

static void decode_target(const uint8_t *p, size_t n, unsigned flags)
{
    char why[256];
    struct kfg_msg *m = NULL;
    int rc = kfg_env_decode(p, n, flags, &m, why, sizeof why);
    if (rc != 0) {
        if (m || (rc != KFG_EINVAL && rc != KFG_ENOMEM))
            abort();
        check_reason(why, sizeof why);
        return;
    }
    struct kfg_buf a = { 0 }, b = { 0 }, j = { 0 }, back = { 0 };
    if (kfg_env_encode(m, &a) != 0)
        abort();
    struct kfg_msg *m2 = NULL;
    /* The outbound decoder drops id/seq/ts.accepted; what it kept is a
     * valid envelope under the same rules. */
    if (kfg_env_decode(a.p, a.len, flags, &m2, why, sizeof why) != 0)
        abort();
    if (kfg_env_encode(m2, &b) != 0 || a.len != b.len || memcmp(a.p, b.p, a.len) != 0)
        abort();
    if (kfg_env_to_json_r(a.p, a.len, &j, why, sizeof why) != 0)
        abort();
    /* Integers above INT64_MAX cannot pass through jansson. */
    if (kfg_env_from_json(j.p, j.len, &back, why, sizeof why) == 0) {
        struct kfg_msg *m3 = NULL;
        if (kfg_env_decode(back.p, back.len, flags, &m3, why, sizeof why) != 0)
            abort();
        kfg_msg_free(m3);
    } else {
        check_reason(why, sizeof why);
    }
    kfg_msg_free(m);
    kfg_msg_free(m2);
    kfg_buf_free(&a);
    kfg_buf_free(&b);
    kfg_buf_free(&j);
    kfg_buf_free(&back);
}

static void json_target(const uint8_t *p, size_t n)
{
    char why[256];
    struct kfg_buf a = { 0 }, j = { 0 }, b = { 0 };
    if (kfg_env_from_json((const char *)p, n, &a, why, sizeof why) != 0) {
        check_reason(why, sizeof why);
        if (a.len)
            abort();
        kfg_buf_free(&a);
        return;
    }
    if (kfg_env_to_json_r(a.p, a.len, &j, why, sizeof why) != 0)
        abort();
    if (kfg_env_from_json(j.p, j.len, &b, why, sizeof why) != 0)
        abort();
    if (a.len != b.len || memcmp(a.p, b.p, a.len) != 0)
        abort();
    /* and the envelope decoder copes with whatever it is */
    kfg_env_validate(a.p, a.len, KFG_ENV_OUTBOUND, why, sizeof why);
    kfg_buf_free(&a);
    kfg_buf_free(&j);
    kfg_buf_free(&b);
}

static void to_json_target(const uint8_t *p, size_t n)
{
    char why[256];
    struct kfg_buf j = { 0 };
    if (kfg_env_to_json_r(p, n, &j, why, sizeof why) != 0)
        check_reason(why, sizeof why);
    kfg_buf_free(&j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *p = data + 1;
    size_t n = size - 1;
    switch (data[0] & 3) {
    case 0:
        decode_target(p, n, (data[0] >> 2) & 3);
        break;
    case 1:
        json_target(p, n);
        break;
    case 2:
        to_json_target(p, n);
        break;
    default:
        decode_target(p, n, KFG_ENV_OUTBOUND);
        break;
    }
    return 0;
}
