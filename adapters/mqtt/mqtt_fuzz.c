/*
 * libFuzzer harness over everything a device (or a config) can feed the
 * MQTT adapter's pure code: topic filter parsing and matching, templates
 * and the payload mapping in all three formats.
 *
 * Input: one flags byte, then "<filter spec>\n<topic>\n<payload>".
 *   flags bits 0-1: format (json, msgpack, raw, raw+text)
 *   bit 2: keep_raw, bit 3: dedupe by /id, bit 4: correlation data
 *   (the first 8 payload bytes), bit 5: text pointer /text,
 *   bit 6: event pointer /ev, bit 7: tiny limits
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt.h"

static int n_begin;

static int f_begin(void *a, const char *type)
{
    (void)a;
    if (strcmp(type, "message") && strcmp(type, "event"))
        abort();
    n_begin++;
    return 0;
}

static int f_set(void *a, const char *k, const char *v, size_t n)
{
    (void)a;
    /* Keys are the mapping's own or configured; values are bounded. */
    if (!k[0] || strlen(k) > 256 || (n && !v) || n > (1u << 20))
        abort();
    return 0;
}

static int f_set_int(void *a, const char *k, int64_t v)
{
    (void)a;
    (void)v;
    return k[0] ? 0 : -3;
}

static int nparts;

static int f_part_add(void *a, const char *kind)
{
    (void)a;
    if (strcmp(kind, "text") && strcmp(kind, "event"))
        abort();
    return nparts++;
}

static int f_part_set(void *a, int part, const char *k, const char *v, size_t n)
{
    (void)a;
    if (part < 0 || part >= nparts || strlen(k) > 256 || (n && !v))
        abort();
    return 0;
}

static int resolve(void *arg, const char *name, const char **v, size_t *l)
{
    const struct mqt_caps *c = arg;
    if (!c->n)
        return -1;
    (void)name;
    *v = c->v[0].ptr;
    *l = c->v[0].len;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t fl = data[0];
    const char *s = (const char *)data + 1;
    size_t rest = size - 1;
    const char *nl1 = memchr(s, '\n', rest);
    if (!nl1)
        return 0;
    size_t flen = (size_t)(nl1 - s);
    if (flen > 600)
        return 0;
    char spec[601];
    memcpy(spec, s, flen);
    spec[flen] = '\0';
    if (strlen(spec) != flen)
        return 0;
    const char *topic = nl1 + 1;
    rest -= flen + 1;
    const char *nl2 = memchr(topic, '\n', rest);
    if (!nl2)
        return 0;
    size_t tlen = (size_t)(nl2 - topic);
    const char *payload = nl2 + 1;
    size_t plen = rest - tlen - 1;

    struct mqt_filter f;
    char why[256];
    if (mqt_filter_parse(spec, &f, why, sizeof why) != 0)
        return 0;
    /* Copy the topic so captures point into memory ASan can bound. */
    char *t = malloc(tlen ? tlen : 1);
    memcpy(t, topic, tlen);
    struct mqt_caps caps;
    if (!mqt_filter_match(&f, t, tlen, &caps)) {
        free(t);
        return 0;
    }
    for (size_t i = 0; i < caps.n; i++)
        if (caps.v[i].len && (caps.v[i].ptr < t || caps.v[i].ptr + caps.v[i].len > t + tlen))
            abort();
    /* Outbound-style rendering with a capture as the value. */
    struct mqt_tmpl tm;
    char out[128];
    if (mqt_tmpl_parse("x/{v}/y", 7, &tm, why, sizeof why) == 0) {
        int n = mqt_tmpl_render(&tm, resolve, &caps, 1, out, sizeof out, why, sizeof why);
        if (n >= 0 && (memchr(out + 2, '/', (size_t)n - 4) || strlen(out) != (size_t)n))
            abort();
    }

    struct mqt_map m;
    memset(&m, 0, sizeof m);
    m.format = (fl & 3) == 0 ? MQT_JSON : (fl & 3) == 1 ? MQT_MSGPACK : MQT_RAW;
    m.raw_text = (fl & 3) == 3;
    m.keep_raw = !!(fl & 4);
    m.p_idem = (fl & 8) && m.format != MQT_RAW ? "/id" : NULL;
    m.idem_correlation = !!(fl & 16);
    m.p_text = (fl & 32) ? "/text" : NULL;
    m.p_event = (fl & 64) ? "/ev" : NULL;
    m.p_value = (fl & 64) ? "/v" : NULL;
    m.p_ts = "/ts";
    m.max_payload = (fl & 128) ? 64 : 1 << 20;
    m.max_text = (fl & 128) ? 16 : 65536;
    m.max_id = (fl & 128) ? 8 : 256;
    m.event_name = "telemetry";
    m.raw_ctype = "application/octet-stream";
    char w2[64];
    mqt_map_add_field(&m, "sender.name=/name", w2, sizeof w2);
    mqt_map_add_field(&m, "ts.channel=/t2", w2, sizeof w2);
    mqt_map_add_field(&m, "channel_data.a=/a/0", w2, sizeof w2);
    struct kfg_msg_sink sink = { NULL, f_begin, f_set, f_set_int, f_part_add, f_part_set };
    struct mqt_problem p;
    n_begin = 0;
    nparts = 0;
    /* The payload in its own allocation, so reads past it are caught. */
    char *pl = malloc(plen ? plen : 1);
    memcpy(pl, payload, plen);
    int rc = mqt_map_message(&m, &f, &caps, t, tlen, pl, plen, pl,
                             m.idem_correlation ? (plen < 8 ? plen : 8) : 0, &sink, &p);
    if (rc == 0 && (n_begin != 1 || nparts < 1))
        abort();
    if (rc != 0 && (p.err == MQT_E_NONE || p.err >= MQT_E__N))
        abort();
    nparts = 0;
    n_begin = 0;
    mqt_map_identity(&m, &f, &caps, &sink, &p);
    free(pl);
    free(t);
    return 0;
}
