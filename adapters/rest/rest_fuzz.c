/*
 * libFuzzer harness over the REST ingest handler: everything POST
 * {path}/messages does before emit, on fuzzer-chosen headers and body:
 * media type, auth (bearer, HMAC with window and replay cache), the
 * idempotency map, body parsing, validation and mapping (native and a
 * foreign schema) into a sink that checks what it is given, and the
 * problem document of every refusal (which must be valid JSON).
 *
 * Input: byte 0 = flags, then up to four header values separated by
 * '\n' (Authorization, Kfgate-Timestamp, Kfgate-Signature, Content-Type),
 * then the body. Flag bit 0: sign the body correctly (so the fuzzer gets
 * past auth); bit 1: use the foreign schema; bit 2: send an
 * Idempotency-Key derived from the body.
 *
 *   make -C adapters/rest fuzz FUZZ_SECONDS=60
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rest.h"

static int sink_count;

static int f_begin(void *a, const char *type)
{
    (void)a;
    if (strcmp(type, "message") && strcmp(type, "event"))
        abort();
    return 0;
}

static int f_key(const char *k)
{
    /* Dotted keys of the host API: 1..16 non-empty segments, <= 256 bytes. */
    size_t n = strlen(k);
    if (n == 0 || n > 256 || k[0] == '.' || k[n - 1] == '.' || strstr(k, ".."))
        abort();
    return 0;
}

static int f_set(void *a, const char *k, const char *v, size_t n)
{
    (void)a;
    f_key(k);
    if (memchr(v, 0, n))    /* jansson refuses NUL in strings */
        abort();
    sink_count++;
    return 0;
}

static int f_set_int(void *a, const char *k, int64_t v)
{
    (void)a, (void)v;
    return f_key(k);
}

static int f_part_add(void *a, const char *kind)
{
    int *parts = a;
    if (!*kind)
        abort();
    return (*parts)++;
}

static int f_part_set(void *a, int part, const char *k, const char *v, size_t n)
{
    int *parts = a;
    if (part < 0 || part >= *parts)
        abort();
    return f_set(NULL, k, v, n);
}

static void check_problem(const struct rest_problem *p)
{
    if (p->status < 400 || p->status > 599)
        abort();
    char *doc = rest_problem_json(p, "urn:kfgate:request:fuzz", NULL);
    json_t *j = doc ? json_loads(doc, 0, NULL) : NULL;
    if (!j)
        abort();
    json_decref(j);
    free(doc);
}

static const char *keys[] = { "fuzz-key" };
static const char *rkeys[] = { "fuzz-read" };
static const char *secrets[] = { "fuzz-secret" };
static struct rest_replay *replay;
static struct rest_idem *idem;
static struct rest_status *status;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!replay) {
        replay = rest_replay_new(64);
        idem = rest_idem_new(64);
        status = rest_status_new(64);
    }
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    struct kfg_hdr { const char *p; size_t n; } h[4] = { { 0 } };
    for (int i = 0; i < 4 && p < end; i++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break;
        if (nl > p) {
            h[i].p = p;
            h[i].n = (size_t)(nl - p);
        }
        p = nl + 1;
    }
    const char *body = p;
    size_t blen = (size_t)(end - p);
    int64_t now = 1700000000;

    struct rest_auth a = { keys, 1, rkeys, 1, secrets, 1, 300, replay };
    struct rest_problem pr;
    memset(&pr, 0, sizeof pr);
    char tsb[16], sigb[80];
    if (flags & 1) {
        snprintf(tsb, sizeof tsb, "%lld", (long long)(now - (flags >> 4)));
        char hx[65];
        rest_hmac_hex(secrets[0], strlen(secrets[0]), tsb, strlen(tsb), body, blen, NULL, 0, hx);
        snprintf(sigb, sizeof sigb, "v1=%s", hx);
        h[0].p = NULL;
        h[1].p = tsb, h[1].n = strlen(tsb);
        h[2].p = sigb, h[2].n = strlen(sigb);
    }
    /* The handler's order: auth, then the media type (415), then the body. */
    if (rest_auth_check(&a, h[0].p, h[0].n, h[1].p, h[1].n, h[2].p, h[2].n, body, blen, now,
                        1, &pr) != 0) {
        check_problem(&pr);
        return 0;
    }
    if (!rest_ctype_json(h[3].p, h[3].n)) {
        rest_problem_set(&pr, 415, "unsupported-media-type", "Unsupported media type", NULL,
                         "send Content-Type: application/json (UTF-8)");
        check_problem(&pr);
        return 0;
    }
    char ikey[32];
    size_t iklen = 0;
    if (flags & 4) {
        unsigned char hash[32] = { 0 };
        for (size_t i = 0; i < blen; i++)
            hash[i % 32] ^= (unsigned char)body[i];
        iklen = (size_t)snprintf(ikey, sizeof ikey, "k%u", (unsigned)(blen % 7));
        int st = 0;
        char *ans = NULL;
        enum rest_idem_state s = rest_idem_begin(idem, ikey, iklen, hash, &st, &ans);
        free(ans);
        if (s != REST_IDEM_NEW)
            return 0;
    }

    struct rest_map map = { 0 };
    if (flags & 2) {
        map.enabled = 1;
        map.type = "message";
        map.conversation = "/a/conv";
        map.sender = "/a/b~1c";
        map.text = "/text";
        map.event = "/ev/0";
        map.parts = "/parts";
        char why[256];
        rest_map_add_field(&map, "channel_data.x=/x", why, sizeof why);
        rest_map_add_field(&map, "ts.channel=/t", why, sizeof why);
    }
    struct rest_limits lim = { 8, 64, 256, 4096 };
    json_t **items;
    size_t n;
    int batch;
    json_t *root = rest_parse_body(body, blen, &map, &lim, &items, &n, &batch, &pr);
    if (!root) {
        check_problem(&pr);
        if (iklen)
            rest_idem_abort(idem, ikey, iklen);
        return 0;
    }
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        int parts = 0;
        struct kfg_msg_sink s = { &parts, f_begin, f_set, f_set_int, f_part_add, f_part_set };
        char base[32] = "";
        if (batch)
            snprintf(base, sizeof base, "/messages/%zu", i);
        if (rest_map_message(items[i], base, &map, &lim, &s, &pr) != 0) {
            check_problem(&pr);
            if (strncmp(pr.pointer, base, strlen(base)) != 0 ||
                (pr.pointer[0] && pr.pointer[0] != '/'))
                abort();
            ok = 0;
            break;
        }
        if (parts == 0 || parts > 64)
            abort();
    }
    if (ok) {
        char id[37];
        rest_uuid7(id, now * 1000);
        rest_status_add(status, id, "in", "accepted", 1, NULL, NULL, now * 1000, NULL);
        json_decref(rest_status_get(status, id));
    }
    if (iklen) {
        if (ok)
            rest_idem_finish(idem, ikey, iklen, 202, "{}");
        else
            rest_idem_abort(idem, ikey, iklen);
    }
    free(items);
    json_decref(root);
    return 0;
}
