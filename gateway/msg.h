/*
 * The in-memory message behind the plugin ABI's struct kfg_msg: typed fields
 * by name plus ordered content parts. The message owns copies of everything
 * set on it, in its arena (struct kfg_msg). Host-assigned fields (see
 * kfg_msg_reserved) cannot be set by plugins, so identity and tenant never
 * come from client input.
 *
 * Keys are dotted paths (spec/envelope.md, "Dotted keys"): "sender.id" is
 * the key "id" of the map "sender". A key is one or more non-empty segments
 * separated by single dots, at most KFG_MSG_KEY_MAX bytes and
 * KFG_MSG_KEY_DEPTH segments; one key cannot be both a value and a map
 * ("a" and "a.b" exclude each other: the second set is KFG_EINVAL).
 * Compatibility aliases: "conversation", "sender" and "recipient" mean
 * "<name>.id", "idempotency_key" means "idem", "direction" means "dir".
 * Fields are kept in the order they were first set; the envelope encoder
 * (envelope.h) turns them into nested msgpack maps in that order.
 */
#ifndef KFG_MSG_H
#define KFG_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "kfgate/plugin.h"

#define KFG_MSG_KEY_MAX 256
#define KFG_MSG_KEY_DEPTH 16

/* Field value types. KFG_F_STR is what plugins set with msg_set; the
 * others come from msg_set_int (KFG_F_INT), the host, or the decoder. */
enum kfg_ftype {
    KFG_F_STR = 0,
    KFG_F_INT,          /* ival */
    KFG_F_UINT,         /* (uint64_t)ival */
    KFG_F_BOOL,         /* ival 0 or 1 */
    KFG_F_FLOAT,        /* dval; f32 when it arrived as a float32 */
    KFG_F_RAW,          /* val/len: the msgpack bytes of exactly one value */
};

struct kfg_field {
    char *key;
    char *val;          /* STR: NUL-terminated copy; RAW: msgpack bytes;
                           NULL for the other types */
    size_t len;
    int64_t ival;
    double dval;
    uint8_t type;       /* enum kfg_ftype */
    uint8_t f32;
};

struct kfg_part {
    char *kind;
    struct kfg_field *fields;
    size_t nfields, cap;
};

/* Everything a message holds (type, keys, values, field and part arrays)
 * lives in its arena: the inline block below, then heap blocks chained from
 * `blocks`, all freed at once by kfg_msg_free. Building or decoding a
 * message therefore costs one malloc for a typical envelope instead of two
 * per field. A replaced value keeps its old bytes until the message is freed
 * (so a pointer from kfg_msg_get stays valid for the message's lifetime). */
#define KFG_MSG_INLINE_FIELDS 16
#define KFG_MSG_INLINE_PARTS 2
#define KFG_MSG_INLINE_ARENA 1024

struct kfg_msg_blk;

struct kfg_msg {
    char *type;
    const char *tenant;     /* borrowed from the instance */
    const char *channel;    /* plugin type name; borrowed */
    const char *instance;   /* borrowed */
    char id[37];            /* UUIDv7, set at acceptance */
    uint64_t seq;
    int64_t accepted_ms;
    struct kfg_field *fields;
    size_t nfields, cap;
    struct kfg_part *parts;
    size_t nparts, partcap;
    char *a_p;              /* free space of the current arena block */
    size_t a_left;
    size_t a_next;          /* size of the next heap block */
    struct kfg_msg_blk *blocks;
    struct kfg_field fields0[KFG_MSG_INLINE_FIELDS];
    struct kfg_part parts0[KFG_MSG_INLINE_PARTS];
    _Alignas(16) char arena0[KFG_MSG_INLINE_ARENA];
};

struct kfg_msg *kfg_msg_new(const char *type, const char *tenant,
                            const char *channel, const char *instance);
void kfg_msg_free(struct kfg_msg *m);
int kfg_msg_reserved(const char *key);
int kfg_msg_set(struct kfg_msg *m, const char *key, const char *val, size_t len);
int kfg_msg_set_int(struct kfg_msg *m, const char *key, int64_t val);
/* Typed setters for the host (the plugin ABI only has string and int). */
int kfg_msg_set_uint(struct kfg_msg *m, const char *key, uint64_t val);
int kfg_msg_set_bool(struct kfg_msg *m, const char *key, int val);
int kfg_msg_set_float(struct kfg_msg *m, const char *key, double val);
/* mp/len: the msgpack encoding of exactly one value (not checked here),
 * copied and emitted verbatim by the encoder. */
int kfg_msg_set_raw(struct kfg_msg *m, const char *key, const void *mp, size_t len);
/* String value of a STR field (or of id/type/tenant/channel/instance), ptr
 * NULL when absent or of another type. */
struct kfg_str kfg_msg_get(const struct kfg_msg *m, const char *key);
/* host->msg_get_int: integer fields, including the host's seq and
 * ts.accepted. KFG_ENOTFOUND when absent or not an integer. */
int kfg_msg_get_int(const struct kfg_msg *m, const char *key, int64_t *out);
/* Any field by key (aliases applied), NULL when absent. Not for the
 * struct-backed keys (id, seq, type, tenant, channel, instance). */
const struct kfg_field *kfg_msg_field(const struct kfg_msg *m, const char *key);
const struct kfg_field *kfg_msg_part_field(const struct kfg_msg *m, size_t part,
                                           const char *key);
/* Host-internal: sets a copy of f (key, type, value) at top level (part < 0)
 * or in a part, without the reserved-key check and without aliases. */
int kfg_msg_put(struct kfg_msg *m, long part, const struct kfg_field *f);
/* 1 when key is a well-formed dotted key. */
int kfg_msg_key_valid(const char *key);
/* The canonical key for an alias ("sender" -> "sender.id"), else key. */
const char *kfg_msg_canon_key(const char *key);
int kfg_msg_part_add(struct kfg_msg *m, const char *kind);
int kfg_msg_part_set(struct kfg_msg *m, size_t part, const char *key,
                     const char *val, size_t len);
size_t kfg_msg_part_count(const struct kfg_msg *m);
const char *kfg_msg_part_kind(const struct kfg_msg *m, size_t part);
struct kfg_str kfg_msg_part_get(const struct kfg_msg *m, size_t part,
                                const char *key);
/* Replaces the type with a copy of t[0..n). */
int kfg_msg_set_type(struct kfg_msg *m, const char *t, size_t n);
/* Stamps id (time-ordered UUIDv7), seq and acceptance time. */
void kfg_msg_accept(struct kfg_msg *m, uint64_t seq);
/* One JSON object, no trailing newline: the envelope in its JSON form
 * (spec/envelope.md; kfg_env_encode then kfg_env_to_json). */
void kfg_msg_to_json(const struct kfg_msg *m, struct kfg_buf *out);
/* A time-ordered UUIDv7 text into out[37]; thread-safe. */
void kfg_uuid7(char out[37], int64_t *ms_out);

#endif
