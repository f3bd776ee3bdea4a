/*
 * kfgate MQTT adapter: the parts that need neither a host nor a broker.
 *
 * Plain C over jansson and msgpack-c, so the unit tests (mqtt_map_test.c,
 * cmocka) and the libFuzzer harness (mqtt_fuzz.c) link it alone;
 * mqtt_plugin.c glues it to <kfgate/plugin.h> and libmosquitto.
 *
 *   broker URLs       mqtt://host[:port], mqtts://host[:port]
 *   topic filters     "devices/{device}/up": named single-level captures,
 *                     '+' and a final '#', with optional per-filter mapping
 *   templates         "devices/{device}/down", "{site}:{kiosk}"
 *   payload mapping   JSON (RFC 6901 pointers), msgpack (converted to the
 *                     same JSON tree first) or raw bytes, onto envelope keys
 *                     through a sink, with a precise reason on failure
 *
 * OWNERSHIP. Parsed configuration (struct mqt_url, mqt_filter, mqt_tmpl,
 * mqt_map) copies what it needs from the config strings into its own
 * fixed buffers, except mqt_map's pointer strings, which are borrowed from
 * the host's config (valid until destroy). Captures (struct mqt_caps) point
 * into the topic string passed to mqt_filter_match and live as long as it.
 * Nothing here allocates memory that outlives a call, except the JSON trees
 * of mqt_payload_parse (the caller json_decref's them).
 */
#ifndef KFGATE_MQTT_H
#define KFGATE_MQTT_H

#include <jansson.h>
#include <kfgate/envelope.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------------
 * Broker URLs.
 */
struct mqt_url {
    int tls;                    /* mqtts:// (or ssl://) */
    char host[256];             /* no brackets for IPv6 literals */
    int port;
};

/* 0, or -1 with why. Accepts mqtt://, mqtts://, tcp://, ssl://; no user
 * info, path, query or fragment (credentials are separate keys). */
int mqt_url_parse(const char *url, struct mqt_url *out, char *why, size_t cap);

/* ---------------------------------------------------------------------------
 * Templates: literal text with {name} references. "{{" is a literal '{'.
 */
#define MQT_TMPL_MAX 16         /* references in one template */
#define MQT_NAME_MAX 32         /* bytes of a capture / variable name */

struct mqt_tmpl {
    char text[512];             /* literals with the references cut out */
    size_t nseg;
    struct {
        uint16_t lit_off, lit_len;  /* literal before the reference */
        char name[MQT_NAME_MAX];    /* "" for the trailing literal */
    } seg[MQT_TMPL_MAX + 1];
};

int mqt_tmpl_parse(const char *s, size_t len, struct mqt_tmpl *t, char *why, size_t cap);
/* Number of references. */
size_t mqt_tmpl_vars(const struct mqt_tmpl *t);

/* Resolves a variable; returns 0 with val and len set, or -1 when unknown. */
typedef int (*mqt_resolve_fn)(void *arg, const char *name, const char **val, size_t *len);

/* Renders into out (NUL-terminated). topic_safe: every value must be
 * non-empty and free of '/', '+', '#' and NUL, so a value cannot change the
 * topic's levels. Returns the length, or -1 with why. */
int mqt_tmpl_render(const struct mqt_tmpl *t, mqt_resolve_fn fn, void *arg, int topic_safe,
                    char *out, size_t cap, char *why, size_t wcap);

/* ---------------------------------------------------------------------------
 * Topic filters with captures.
 *
 *   "devices/{device}/up"                      -> subscribes "devices/+/up"
 *   "sites/{site}/kiosks/{kiosk}/# => conversation.id={site}:{kiosk}; sender.id={kiosk}"
 *
 * A level is a literal, "{name}" (captures that level), "+" (matches a
 * level, not captured) or, last only, "#" (any number of levels, also none).
 * After "=>", ';'-separated "envelope.key=template" pairs name where the
 * captures go; templates may only reference the filter's own captures.
 */
#define MQT_LEVELS_MAX 32
#define MQT_CAPS_MAX 8
#define MQT_FMAP_MAX 8

enum mqt_level { MQT_LIT, MQT_CAP, MQT_PLUS, MQT_HASH };

struct mqt_filter {
    char sub[512];              /* what is subscribed: captures as '+' */
    size_t nlevels;
    struct {
        uint8_t kind;           /* enum mqt_level */
        uint8_t cap;            /* capture index for MQT_CAP */
        uint16_t off, len;      /* the literal inside sub */
    } lv[MQT_LEVELS_MAX];
    size_t ncaps;
    char caps[MQT_CAPS_MAX][MQT_NAME_MAX];
    size_t nmap;
    struct {
        char key[64];           /* envelope key */
        struct mqt_tmpl t;
    } map[MQT_FMAP_MAX];
};

struct mqt_caps {
    size_t n;
    struct {
        const char *ptr;        /* into the topic */
        size_t len;
    } v[MQT_CAPS_MAX];
};

int mqt_filter_parse(const char *spec, struct mqt_filter *f, char *why, size_t cap);
/* 1 when topic (len bytes, no NUL needed) matches; fills caps. */
int mqt_filter_match(const struct mqt_filter *f, const char *topic, size_t len,
                     struct mqt_caps *caps);
/* Index of the capture called name, or -1. */
int mqt_filter_cap(const struct mqt_filter *f, const char *name);
/* 1 when key is an envelope key a mapping may set (conversation.id,
 * sender.id, the names, roles and kinds, recipient.*, channel_data.<x>). */
int mqt_key_mappable(const char *key);

/* ---------------------------------------------------------------------------
 * Payload mapping.
 */
enum mqt_format { MQT_JSON, MQT_MSGPACK, MQT_RAW };


#define MQT_FIELDS_MAX 16

struct mqt_map {
    enum mqt_format format;
    size_t max_payload;         /* bytes; larger payloads are refused */
    size_t max_text;            /* bytes of a text part */
    size_t max_id;              /* bytes of an id (conversation, sender, idem) */
    const char *event_name;     /* event part name when there is no text */
    const char *raw_ctype;      /* raw.ctype for format raw / keep_raw */
    int raw_text;               /* raw: a UTF-8 payload becomes a text part */
    int keep_raw;               /* json/msgpack: also keep raw.body */
    /* JSON pointers (NULL = not mapped); borrowed from the config. */
    const char *p_text, *p_event, *p_value, *p_conversation, *p_sender, *p_ts, *p_idem;
    size_t nfields;
    struct {
        char key[64];
        const char *pointer;
    } fields[MQT_FIELDS_MAX];
    /* Defaults for filters without their own conversation.id / sender.id
     * mapping: templates over the filter's captures. NULL: the first
     * capture. */
    const struct mqt_tmpl *conversation, *sender;
    int idem_correlation;       /* MQTT 5 correlation data -> idem */
};

/* Why a payload was refused: a fixed code (the metric label) and text. */
enum mqt_err {
    MQT_E_NONE = 0,
    MQT_E_TOO_LARGE,
    MQT_E_JSON,
    MQT_E_MSGPACK,
    MQT_E_MISSING,              /* a required mapped field is absent */
    MQT_E_FIELD,                /* a mapped field has the wrong type or size */
    MQT_E_SINK,                 /* the host refused a value */
    MQT_E__N
};
const char *mqt_err_code(enum mqt_err e);

struct mqt_problem {
    enum mqt_err err;
    char pointer[128];          /* JSON pointer of the field, "" if none */
    char detail[200];
};

/* "envelope.key=/json/pointer" into map->fields; 0 or -1 + why. */
int mqt_map_add_field(struct mqt_map *map, const char *spec, char *why, size_t cap);

/* msgpack -> JSON tree (maps with str keys, arrays, scalars; bin becomes a
 * base64 string; ext, non-str keys, uint above INT64_MAX, NaN/inf, more than
 * 32 levels and trailing bytes are refused). NULL + problem on failure. */
json_t *mqt_msgpack_to_json(const void *buf, size_t len, struct mqt_problem *p);

/* The whole inbound mapping for one message that matched filter f.
 * corr/corr_len: MQTT 5 correlation data or NULL. Writes the envelope
 * (type, conversation, sender, parts, ts.channel, idem, mapped fields,
 * raw, channel_data.<capture>) into the sink. 0, or -1 with p filled. */
int mqt_map_message(const struct mqt_map *map, const struct mqt_filter *f,
                    const struct mqt_caps *caps, const char *topic, size_t topic_len,
                    const void *payload, size_t len, const void *corr, size_t corr_len,
                    const struct kfg_msg_sink *s, struct mqt_problem *p);

/* Identities only (for the bad-payload event): conversation.id and
 * sender.id from the topic alone. 0 or -1. */
int mqt_map_identity(const struct mqt_map *map, const struct mqt_filter *f,
                     const struct mqt_caps *caps, const struct kfg_msg_sink *s,
                     struct mqt_problem *p);

/* RFC 6901 over a jansson tree; NULL when absent or malformed. */
json_t *mqt_pointer_get(json_t *root, const char *ptr);
int mqt_pointer_valid(const char *ptr);

/* Standard base64 with padding; out must hold 4 * ((len + 2) / 3) + 1. */
size_t mqt_base64(const void *in, size_t len, char *out);
/* 1 when the bytes are valid UTF-8 without NUL. */
int mqt_utf8_ok(const void *buf, size_t len);

#endif /* KFGATE_MQTT_H */
