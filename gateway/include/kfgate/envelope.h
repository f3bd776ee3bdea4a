/*
 * kfgate envelope v1 for plugins: field names, part kinds, types and small
 * builders/readers over the host's msg_* calls (kfgate/plugin.h), so no
 * adapter touches msgpack bytes or spells a key by hand. Header-only; needs
 * nothing but plugin.h and the C standard library. The contract is
 * spec/envelope.md.
 *
 * Keys are dotted paths through the flat host API: msg_set(m, "sender.id",
 * ...) becomes {"sender": {"id": ...}} on the bus. A key cannot be both a
 * value and a map ("a" and "a.b" exclude each other). Part fields take the
 * same rule ("value.x" inside a part).
 *
 * Plugins can only set strings (msg_set, msg_part_set) and int64
 * (msg_set_int). For the fields the spec types as numbers or booleans
 * (part "size", "lat", ...; "ts.channel", "deadline") the host converts a
 * decimal string to the spec's type when it encodes; the helpers below
 * write such strings for you.
 *
 * Every helper returns what the host call returns: KFG_OK (or a part index
 * >= 0 for the part builders) or a negative enum kfg_result. A NULL
 * optional argument leaves that field unset.
 */
#ifndef KFGATE_ENVELOPE_H
#define KFGATE_ENVELOPE_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kfgate/plugin.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KFG_ENV_VERSION 1

/* --- top-level fields (set by the host: V..TYPE, SEQ, TS_ACCEPTED) ------ */
#define KFG_ENV_V "v"
#define KFG_ENV_ID "id"
#define KFG_ENV_SEQ "seq"
#define KFG_ENV_TENANT "tenant"
#define KFG_ENV_CHANNEL "channel"
#define KFG_ENV_INSTANCE "instance"
#define KFG_ENV_DIR "dir"
#define KFG_ENV_TYPE "type"
#define KFG_ENV_PARTS "parts"

#define KFG_ENV_CONVERSATION "conversation"
#define KFG_ENV_CONVERSATION_ID "conversation.id"
#define KFG_ENV_CONVERSATION_KIND "conversation.kind"
#define KFG_ENV_CONVERSATION_THREAD "conversation.thread"
#define KFG_ENV_CONVERSATION_NAME "conversation.name"
#define KFG_ENV_SENDER "sender"
#define KFG_ENV_SENDER_ID "sender.id"
#define KFG_ENV_SENDER_NAME "sender.name"
#define KFG_ENV_SENDER_ROLE "sender.role"
#define KFG_ENV_RECIPIENT "recipient"
#define KFG_ENV_RECIPIENT_ID "recipient.id"
#define KFG_ENV_RECIPIENT_NAME "recipient.name"
#define KFG_ENV_RECIPIENT_ROLE "recipient.role"

#define KFG_ENV_TS "ts"
#define KFG_ENV_TS_CHANNEL "ts.channel"       /* int64 ms, channel's time */
#define KFG_ENV_TS_ACCEPTED "ts.accepted"     /* int64 ms, host-set */

#define KFG_ENV_REPLY_TO "reply_to"
#define KFG_ENV_IDEM "idem"
#define KFG_ENV_CHANNEL_MSG_ID "channel_msg_id"
#define KFG_ENV_DEADLINE "deadline"           /* int64 ms since epoch */
#define KFG_ENV_TRACE "trace"
#define KFG_ENV_TRACEPARENT "trace.traceparent"
#define KFG_ENV_TRACESTATE "trace.tracestate"
#define KFG_ENV_RAW "raw"
#define KFG_ENV_RAW_CTYPE "raw.ctype"
#define KFG_ENV_RAW_BODY "raw.body"           /* bin on the bus */
#define KFG_ENV_CHANNEL_DATA "channel_data"   /* a map: "channel_data.<key>" */

/* status receipts (type "status"), set by the host */
#define KFG_ENV_STATUS "status"
#define KFG_ENV_REF "ref"
#define KFG_ENV_REF_SEQ "ref_seq"
#define KFG_ENV_CODE "code"
#define KFG_ENV_DETAIL "detail"
#define KFG_ENV_RETRIABLE "retriable"
#define KFG_ENV_ATTEMPTS "attempts"

/* --- values ------------------------------------------------------------- */
#define KFG_ENV_DIR_IN "in"
#define KFG_ENV_DIR_OUT "out"

#define KFG_ENV_TYPE_MESSAGE "message"
#define KFG_ENV_TYPE_EVENT "event"
#define KFG_ENV_TYPE_STATUS "status"
#define KFG_ENV_TYPE_TYPING "typing"

#define KFG_ENV_STATUS_ACCEPTED "accepted"
#define KFG_ENV_STATUS_SENT "sent"
#define KFG_ENV_STATUS_DELIVERED "delivered"
#define KFG_ENV_STATUS_READ "read"
#define KFG_ENV_STATUS_FAILED "failed"

#define KFG_ENV_CONV_DIRECT "direct"
#define KFG_ENV_CONV_GROUP "group"
#define KFG_ENV_CONV_CHANNEL "channel"
#define KFG_ENV_CONV_DEVICE "device"

#define KFG_ENV_ROLE_CUSTOMER "customer"
#define KFG_ENV_ROLE_AGENT "agent"
#define KFG_ENV_ROLE_BOT "bot"
#define KFG_ENV_ROLE_SYSTEM "system"
#define KFG_ENV_ROLE_DEVICE "device"

/* --- parts -------------------------------------------------------------- */
#define KFG_ENV_KIND_TEXT "text"
#define KFG_ENV_KIND_IMAGE "image"
#define KFG_ENV_KIND_VOICE "voice"
#define KFG_ENV_KIND_VIDEO "video"
#define KFG_ENV_KIND_FILE "file"
#define KFG_ENV_KIND_LOCATION "location"
#define KFG_ENV_KIND_LINK "link"
#define KFG_ENV_KIND_EVENT "event"

#define KFG_ENV_P_KIND "kind"
#define KFG_ENV_P_TEXT "text"
#define KFG_ENV_P_FORMAT "format"             /* "plain" | "markdown" | "html" */
#define KFG_ENV_P_URL "url"
#define KFG_ENV_P_MEDIA_ID "media_id"
#define KFG_ENV_P_MIME "mime"
#define KFG_ENV_P_SIZE "size"                 /* uint */
#define KFG_ENV_P_NAME "name"
#define KFG_ENV_P_DURATION_MS "duration_ms"   /* uint */
#define KFG_ENV_P_WIDTH "width"               /* uint */
#define KFG_ENV_P_HEIGHT "height"             /* uint */
#define KFG_ENV_P_SHA256 "sha256"             /* 64 lowercase hex */
#define KFG_ENV_P_THUMB_URL "thumb_url"
#define KFG_ENV_P_THUMB_MEDIA_ID "thumb_media_id"
#define KFG_ENV_P_EXPIRES "expires"           /* int64 ms: media_id expiry */
#define KFG_ENV_P_LAT "lat"                   /* float64 */
#define KFG_ENV_P_LON "lon"                   /* float64 */
#define KFG_ENV_P_LABEL "label"
#define KFG_ENV_P_SCALE "scale"               /* int */
#define KFG_ENV_P_TITLE "title"
#define KFG_ENV_P_DESCRIPTION "description"
#define KFG_ENV_P_EVENT_NAME "name"
#define KFG_ENV_P_EVENT_KEY "key"
#define KFG_ENV_P_EVENT_VALUE "value"

#define KFG_ENV_FORMAT_PLAIN "plain"
#define KFG_ENV_FORMAT_MARKDOWN "markdown"
#define KFG_ENV_FORMAT_HTML "html"

/* Longest key the helpers build (channel_data.<name>), like the host. */
#define KFG_ENV_KEY_MAX 256

/* --- builders ----------------------------------------------------------- */

/* A message builder behind function pointers, so an adapter's mapping
 * code (JSON, XPath, topic captures) can be unit-tested with a fake and run
 * in the gateway with kfg_host_sink below. begin starts the one message;
 * part_add returns the part's index (>= 0); everything returns 0 or an
 * error. Values are copied, as by the msg_* calls. */
struct kfg_msg_sink {
    void *arg;
    int (*begin)(void *arg, const char *type);
    int (*set)(void *arg, const char *key, const char *val, size_t len);
    int (*set_int)(void *arg, const char *key, int64_t v);
    int (*part_add)(void *arg, const char *kind);
    int (*part_set)(void *arg, int part, const char *key, const char *val, size_t len);
};

/* The sink that builds a host message for an instance. Set host and ins,
 * m NULL; after a successful begin, m is the plugin's message (emit or
 * msg_free it). One message per kfg_host_sink. */
struct kfg_host_sink {
    const struct kfg_host *host;
    struct kfg_instance *ins;
    struct kfg_msg *m;
};

static inline int kfg_host_sink_begin(void *arg, const char *type)
{
    struct kfg_host_sink *s = (struct kfg_host_sink *)arg;
    if (s->m)
        return KFG_EINVAL;
    s->m = s->host->msg_new(s->ins, type);
    return s->m ? KFG_OK : KFG_ENOMEM;
}

static inline int kfg_host_sink_set(void *arg, const char *key, const char *val, size_t len)
{
    struct kfg_host_sink *s = (struct kfg_host_sink *)arg;
    return s->host->msg_set(s->m, key, val, len);
}

static inline int kfg_host_sink_set_int(void *arg, const char *key, int64_t v)
{
    struct kfg_host_sink *s = (struct kfg_host_sink *)arg;
    return s->host->msg_set_int(s->m, key, v);
}

static inline int kfg_host_sink_part_add(void *arg, const char *kind)
{
    struct kfg_host_sink *s = (struct kfg_host_sink *)arg;
    return s->host->msg_part_add(s->m, kind);
}

static inline int kfg_host_sink_part_set(void *arg, int part, const char *key,
                                         const char *val, size_t len)
{
    struct kfg_host_sink *s = (struct kfg_host_sink *)arg;
    return s->host->msg_part_set(s->m, (size_t)part, key, val, len);
}

static inline struct kfg_msg_sink kfg_host_sink(struct kfg_host_sink *s)
{
    struct kfg_msg_sink k = { s, kfg_host_sink_begin, kfg_host_sink_set,
                              kfg_host_sink_set_int, kfg_host_sink_part_add,
                              kfg_host_sink_part_set };
    return k;
}

/* msg_set of a NUL-terminated string; NULL sets nothing and returns OK. */
static inline int kfg_env_setz(const struct kfg_host *h, struct kfg_msg *m,
                               const char *key, const char *s)
{
    return s ? h->msg_set(m, key, s, strlen(s)) : KFG_OK;
}

static inline int kfg_env_part_setz(const struct kfg_host *h, struct kfg_msg *m,
                                    int part, const char *key, const char *s)
{
    if (part < 0)
        return part;
    return s ? h->msg_part_set(m, (size_t)part, key, s, strlen(s)) : KFG_OK;
}

/* Numbers in part fields travel as decimal strings through the ABI; the
 * host encodes them with the spec's type. */
static inline int kfg_env_part_set_uint(const struct kfg_host *h, struct kfg_msg *m,
                                        int part, const char *key, uint64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof b, "%llu", (unsigned long long)v);
    return part < 0 ? part : h->msg_part_set(m, (size_t)part, key, b, (size_t)n);
}

static inline int kfg_env_part_set_int(const struct kfg_host *h, struct kfg_msg *m,
                                       int part, const char *key, int64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof b, "%lld", (long long)v);
    return part < 0 ? part : h->msg_part_set(m, (size_t)part, key, b, (size_t)n);
}

static inline int kfg_env_part_set_double(const struct kfg_host *h, struct kfg_msg *m,
                                          int part, const char *key, double v)
{
    char b[40];
    int n = snprintf(b, sizeof b, "%.17g", v);
    if (n <= 0 || (size_t)n >= sizeof b || v != v || v - v != 0)
        return KFG_EINVAL;     /* NaN and infinities have no place here */
    return part < 0 ? part : h->msg_part_set(m, (size_t)part, key, b, (size_t)n);
}

/* conversation.id (the channel-native id, e.g. the WeChat OpenID of a 1:1
 * chat or a group chat id) and optionally conversation.kind. */
static inline int kfg_env_set_conversation(const struct kfg_host *h, struct kfg_msg *m,
                                           const char *id, size_t len, const char *kind)
{
    int r = h->msg_set(m, KFG_ENV_CONVERSATION_ID, id, len);
    return r == KFG_OK ? kfg_env_setz(h, m, KFG_ENV_CONVERSATION_KIND, kind) : r;
}

/* sender.id (channel-native: OpenID, WeCom userid, device id, ...), and
 * optionally sender.name and sender.role (KFG_ENV_ROLE_*). */
static inline int kfg_env_set_sender(const struct kfg_host *h, struct kfg_msg *m,
                                     const char *id, size_t len, const char *name,
                                     const char *role)
{
    int r = h->msg_set(m, KFG_ENV_SENDER_ID, id, len);
    if (r == KFG_OK)
        r = kfg_env_setz(h, m, KFG_ENV_SENDER_NAME, name);
    return r == KFG_OK ? kfg_env_setz(h, m, KFG_ENV_SENDER_ROLE, role) : r;
}

/* recipient.id: inbound, the account the channel delivered to (WeChat
 * ToUserName); outbound, whom to deliver to. */
static inline int kfg_env_set_recipient(const struct kfg_host *h, struct kfg_msg *m,
                                        const char *id, size_t len, const char *name)
{
    int r = h->msg_set(m, KFG_ENV_RECIPIENT_ID, id, len);
    return r == KFG_OK ? kfg_env_setz(h, m, KFG_ENV_RECIPIENT_NAME, name) : r;
}

/* ts.channel: when it happened at the channel, ms since the epoch. */
static inline int kfg_env_set_channel_time(const struct kfg_host *h, struct kfg_msg *m,
                                           int64_t ms)
{
    return h->msg_set_int(m, KFG_ENV_TS_CHANNEL, ms);
}

/* deadline: inbound, the time (ms since the epoch) until which the channel
 * waits for a synchronous reply (WeChat passive reply: receipt + 5 s). */
static inline int kfg_env_set_deadline(const struct kfg_host *h, struct kfg_msg *m,
                                       int64_t ms)
{
    return h->msg_set_int(m, KFG_ENV_DEADLINE, ms);
}

static inline int kfg_env_set_reply_to(const struct kfg_host *h, struct kfg_msg *m,
                                       const char *id)
{
    return kfg_env_setz(h, m, KFG_ENV_REPLY_TO, id);
}

static inline int kfg_env_set_channel_msg_id(const struct kfg_host *h, struct kfg_msg *m,
                                             const char *id, size_t len)
{
    return h->msg_set(m, KFG_ENV_CHANNEL_MSG_ID, id, len);
}

static inline int kfg_env_set_idem(const struct kfg_host *h, struct kfg_msg *m,
                                   const char *key, size_t len)
{
    return h->msg_set(m, KFG_ENV_IDEM, key, len);
}

/* idem from several natural-key components, e.g. WeChat events
 * {FromUserName, CreateTime, Event, EventKey}: "c1:c2:...", with '%' and
 * ':' inside a component escaped as %25 and %3A so two different tuples
 * never give the same key. Fails with KFG_EINVAL above 512 bytes. */
static inline int kfg_env_set_idem_parts(const struct kfg_host *h, struct kfg_msg *m,
                                         const struct kfg_str *c, size_t n)
{
    char b[512];
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i) {
            if (o + 1 > sizeof b)
                return KFG_EINVAL;
            b[o++] = ':';
        }
        for (size_t j = 0; j < c[i].len; j++) {
            char ch = c[i].ptr[j];
            if (ch == '%' || ch == ':') {
                if (o + 3 > sizeof b)
                    return KFG_EINVAL;
                b[o++] = '%';
                b[o++] = ch == '%' ? '2' : '3';
                b[o++] = ch == '%' ? '5' : 'A';
            } else {
                if (o + 1 > sizeof b)
                    return KFG_EINVAL;
                b[o++] = ch;
            }
        }
    }
    return h->msg_set(m, KFG_ENV_IDEM, b, o);
}

/* W3C trace context of the inbound request (headers traceparent and
 * tracestate), if the channel sent one. */
static inline int kfg_env_set_trace(const struct kfg_host *h, struct kfg_msg *m,
                                    const char *traceparent, const char *tracestate)
{
    int r = kfg_env_setz(h, m, KFG_ENV_TRACEPARENT, traceparent);
    return r == KFG_OK ? kfg_env_setz(h, m, KFG_ENV_TRACESTATE, tracestate) : r;
}

/* The original payload as received (after decryption), when the instance
 * is configured to keep it; ctype e.g. "application/xml". */
static inline int kfg_env_set_raw(const struct kfg_host *h, struct kfg_msg *m,
                                  const char *ctype, const void *body, size_t len)
{
    int r = kfg_env_setz(h, m, KFG_ENV_RAW_CTYPE, ctype);
    return r == KFG_OK ? h->msg_set(m, KFG_ENV_RAW_BODY, (const char *)body, len) : r;
}

/* channel_data.<name> = value: channel-specific data, opaque to the core
 * (WeCom AgentID, MQTT topic, ...). name may itself be dotted. */
static inline int kfg_env_set_channel_data(const struct kfg_host *h, struct kfg_msg *m,
                                           const char *name, const char *val, size_t len)
{
    char key[KFG_ENV_KEY_MAX + 1];
    int n = snprintf(key, sizeof key, KFG_ENV_CHANNEL_DATA ".%s", name);
    if (n < 0 || (size_t)n >= sizeof key)
        return KFG_EINVAL;
    return h->msg_set(m, key, val, len);
}

static inline int kfg_env_set_channel_data_int(const struct kfg_host *h, struct kfg_msg *m,
                                               const char *name, int64_t val)
{
    char key[KFG_ENV_KEY_MAX + 1];
    int n = snprintf(key, sizeof key, KFG_ENV_CHANNEL_DATA ".%s", name);
    if (n < 0 || (size_t)n >= sizeof key)
        return KFG_EINVAL;
    return h->msg_set_int(m, key, val);
}

/* Appends a text part; returns its index or an error. */
static inline int kfg_env_text(const struct kfg_host *h, struct kfg_msg *m,
                               const char *text, size_t len)
{
    int p = h->msg_part_add(m, KFG_ENV_KIND_TEXT);
    if (p < 0)
        return p;
    int r = h->msg_part_set(m, (size_t)p, KFG_ENV_P_TEXT, text, len);
    return r == KFG_OK ? p : r;
}

/* A text part with a format (KFG_ENV_FORMAT_*). */
static inline int kfg_env_text_format(const struct kfg_host *h, struct kfg_msg *m,
                                      const char *text, size_t len, const char *format)
{
    int p = kfg_env_text(h, m, text, len);
    int r = kfg_env_part_setz(h, m, p, KFG_ENV_P_FORMAT, format);
    return r == KFG_OK ? p : r;
}

/* Appends a media part by reference (kind image/voice/video/file): the
 * channel's media_id and/or a url (at least one), and a MIME type. Bytes
 * never travel on the bus. Add size, name, duration_ms, ... with
 * kfg_env_part_set_uint / kfg_env_part_setz on the returned index. */
static inline int kfg_env_media(const struct kfg_host *h, struct kfg_msg *m,
                                const char *kind, const char *media_id, const char *url,
                                const char *mime)
{
    if (!kind || (!media_id && !url))
        return KFG_EINVAL;
    int p = h->msg_part_add(m, kind);
    int r = kfg_env_part_setz(h, m, p, KFG_ENV_P_MEDIA_ID, media_id);
    if (r == KFG_OK)
        r = kfg_env_part_setz(h, m, p, KFG_ENV_P_URL, url);
    if (r == KFG_OK)
        r = kfg_env_part_setz(h, m, p, KFG_ENV_P_MIME, mime);
    return r == KFG_OK ? p : r;
}

/* Appends a location part (WGS-84 degrees); label may be NULL. */
static inline int kfg_env_location(const struct kfg_host *h, struct kfg_msg *m,
                                   double lat, double lon, const char *label)
{
    if (!(lat >= -90 && lat <= 90 && lon >= -180 && lon <= 180))
        return KFG_EINVAL;
    int p = h->msg_part_add(m, KFG_ENV_KIND_LOCATION);
    int r = kfg_env_part_set_double(h, m, p, KFG_ENV_P_LAT, lat);
    if (r == KFG_OK)
        r = kfg_env_part_set_double(h, m, p, KFG_ENV_P_LON, lon);
    if (r == KFG_OK)
        r = kfg_env_part_setz(h, m, p, KFG_ENV_P_LABEL, label);
    return r == KFG_OK ? p : r;
}

/* Appends a link part; title and description may be NULL. */
static inline int kfg_env_link(const struct kfg_host *h, struct kfg_msg *m,
                               const char *url, const char *title, const char *description)
{
    if (!url)
        return KFG_EINVAL;
    int p = h->msg_part_add(m, KFG_ENV_KIND_LINK);
    int r = kfg_env_part_setz(h, m, p, KFG_ENV_P_URL, url);
    if (r == KFG_OK)
        r = kfg_env_part_setz(h, m, p, KFG_ENV_P_TITLE, title);
    if (r == KFG_OK)
        r = kfg_env_part_setz(h, m, p, KFG_ENV_P_DESCRIPTION, description);
    return r == KFG_OK ? p : r;
}

/* Appends an event part: name ("subscribe", "menu_click", "scan", ...) and
 * an optional key (EventKey). More with kfg_env_part_setz(..., "value.x"). */
static inline int kfg_env_event(const struct kfg_host *h, struct kfg_msg *m,
                                const char *name, const char *key)
{
    if (!name)
        return KFG_EINVAL;
    int p = h->msg_part_add(m, KFG_ENV_KIND_EVENT);
    int r = kfg_env_part_setz(h, m, p, KFG_ENV_P_EVENT_NAME, name);
    if (r == KFG_OK)
        r = kfg_env_part_setz(h, m, p, KFG_ENV_P_EVENT_KEY, key);
    return r == KFG_OK ? p : r;
}

/* --- readers (deliver, filters) ----------------------------------------- */

/* A string field (dotted key), ptr NULL when absent or not a string. */
static inline struct kfg_str kfg_env_get(const struct kfg_host *h, const struct kfg_msg *m,
                                         const char *key)
{
    return h->msg_get(m, key);
}

/* 1 when the string field key equals the NUL-terminated s. */
static inline int kfg_env_is(const struct kfg_host *h, const struct kfg_msg *m,
                             const char *key, const char *s)
{
    struct kfg_str v = h->msg_get(m, key);
    return v.ptr && strlen(s) == v.len && memcmp(v.ptr, s, v.len) == 0;
}

/* Index of the first part of kind at or after `from`, or -1. */
static inline int kfg_env_find_part(const struct kfg_host *h, const struct kfg_msg *m,
                                    const char *kind, size_t from)
{
    size_t n = h->msg_part_count(m);
    for (size_t i = from; i < n; i++) {
        const char *k = h->msg_part_kind(m, i);
        if (k && strcmp(k, kind) == 0)
            return (int)i;
    }
    return -1;
}

/* The text of the first text part, ptr NULL when there is none. */
static inline struct kfg_str kfg_env_text_of(const struct kfg_host *h,
                                             const struct kfg_msg *m)
{
    int p = kfg_env_find_part(h, m, KFG_ENV_KIND_TEXT, 0);
    if (p < 0)
        return (struct kfg_str){ NULL, 0 };
    return h->msg_part_get(m, (size_t)p, KFG_ENV_P_TEXT);
}

#ifdef __cplusplus
}
#endif
#endif /* KFGATE_ENVELOPE_H */
