/*
 * libFuzzer harness over the callback handler: one input is
 *   byte 0        configuration: bit 0 variant (MP / WeCom), bits 1-2 MP mode,
 *                 bit 3 POST (else GET), bit 4 keep_raw, bits 5-7 the kind
 *                 of the passive reply built for a message
 *   up to '\n'    the raw query string
 *   the rest      the body
 * run through wx_request, and for a message wx_build_msg (fake host) and a
 * passive reply (plain and encrypted). The configuration is the official
 * WeCom sample's (token QDG6eK, CorpID wx5823bf96d3bd56c7), so the seed
 * corpus (fuzz-corpus/) reaches the decrypt and mapping paths.
 *
 * Every input is also run through both XML parsers as a document of its own
 * (the query line included: whatever bytes): whenever the scanner accepts,
 * libxml2 must accept with exactly the same fields, or the harness aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <stdio.h>

#include "fake_host.h"
#include "wx_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void differential(const char *doc, size_t len)
{
    static struct wx_xml a, b;     /* big: not on the fuzzer's stack */
    if (wx_xml_parse_fast(doc, len, &a) != WX_OK)
        return;
    if (wx_xml_parse_libxml(doc, len, &b) != WX_OK) {
        fprintf(stderr, "scanner accepted what libxml2 refuses\n");
        abort();
    }
    if (a.n != b.n)
        abort();
    for (size_t i = 0; i < a.n; i++)
        if (strcmp(a.f[i].name, b.f[i].name) != 0 || a.f[i].len != b.f[i].len ||
            memcmp(a.f[i].val, b.f[i].val, a.f[i].len) != 0) {
            fprintf(stderr, "field %zu differs: %s\n", i, a.f[i].name);
            abort();
        }
    wx_xml_free(&a);
    wx_xml_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int inited;
    static struct wx_conf conf;
    if (!inited) {
        wx_xml_init();
        conf.token = "QDG6eK";
        conf.token_len = 6;
        conf.has_key = 1;
        conf.receive_id = "wx5823bf96d3bd56c7";
        conf.rid_len = strlen(conf.receive_id);
        wx_aes_key("jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C", 43, conf.key);
        conf.aes = wx_aes_new(conf.key);     /* as the plugin runs: reused contexts */
        inited = 1;
    }
    if (size < 1)
        return 0;
    struct wx_conf c = conf;
    c.variant = data[0] & 1 ? WX_WECOM : WX_MP;
    c.mode = (data[0] >> 1) & 3;
    if (c.mode > WX_MODE_SAFE)
        c.mode = WX_MODE_ANY;
    const char *method = data[0] & 8 ? "POST" : "GET";
    const char *q = (const char *)data + 1;
    size_t rest = size - 1;
    const char *nl = memchr(q, '\n', rest);
    size_t qlen = nl ? (size_t)(nl - q) : rest;
    const char *body = nl ? nl + 1 : q + rest;
    size_t blen = nl ? rest - qlen - 1 : 0;
    /* copies, so that ASan sees reads past the ends */
    char *qc = malloc(qlen + 1), *bc = malloc(blen + 1);
    memcpy(qc, q, qlen);
    memcpy(bc, body, blen);
    {
        char *whole = malloc(size - 1 + 1);
        memcpy(whole, data + 1, size - 1);
        differential(whole, size - 1);
        differential(bc, blen);
        free(whole);
    }

    struct wx_req r;
    wx_request(&c, method, strlen(method), qc, qlen, bc, blen, &r);
    if (r.kind == WX_R_MESSAGE) {
        struct wx_build_opts o = {.variant = c.variant, .keep_raw = data[0] & 16,
                                  .now_ms = 1700000000000LL, .deadline_ms = 1700000004500LL};
        struct kfg_msg *m = NULL;
        struct wx_info info;
        if (wx_build_msg(&fake_host, NULL, &r.xml, r.inner, r.inner_len, &o, &m, &info) ==
            KFG_OK) {
            /* the reply kind from bits 5-7; its values from the inbound text */
            static const char *const kinds[8] = {"text", "text", WX_KIND_MUSIC, "link",
                                                 "image", "video", "event", "voice"};
            const char *kind = kinds[data[0] >> 5];
            struct kfg_msg *out = fh_new(NULL, "message");
            int p = fh_part_add(out, kind);
            struct kfg_str t = fh_part_count(m) ? fh_part_get(m, 0, "text")
                                                : (struct kfg_str){NULL, 0};
            const char *tv = t.ptr ? t.ptr : "x";
            size_t tl = t.ptr ? t.len : 1;
            static const char *const keys[] = {"text", "title", "description", "url", "hq_url",
                                               "thumb_media_id", "media_id", "thumb_url",
                                               "name", "key"};
            for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
                if (tl > k)      /* fewer keys for short texts: the refusals too */
                    fh_part_set(out, (size_t)p, keys[k], tv, tl);
            struct wx_buf b = {0}, e = {0};
            if (wx_reply_xml(&fake_host, out, c.variant, &info, 1700000001, &b) == KFG_OK)
                wx_reply_encrypt(&c, b.p, b.len, 1700000001, &e);
            wx_buf_free(&b);
            wx_buf_free(&e);
            fh_free(out);
            fh_free(m);
        }
    }
    wx_req_free(&r);
    free(qc);
    free(bc);
    return 0;
}
