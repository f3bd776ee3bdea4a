/*
 * The envelope (spec/envelope.md) in the gateway: struct kfg_msg <-> msgpack,
 * strict validation with a precise reason, and msgpack <-> JSON for the
 * tools. Field names and part kinds are in kfgate/envelope.h.
 *
 * Mapping between struct kfg_msg and the msgpack map:
 *   - v is always 1; id, seq and ts.accepted come from kfg_msg_accept (or
 *     from a decoded record); type from m->type; tenant/channel/instance
 *     from the struct's pointers when set, else from fields of those names
 *     (the decoder stores them as fields: the struct only borrows);
 *   - every field is a dotted key: "a.b" and "a.c" become {"a":{"b":..,
 *     "c":..}}, in the order the keys were first set;
 *   - a STR field whose key the spec types as a number, boolean or binary
 *     (part "size", "lat"; "ts.channel", "raw.body", ...) is encoded with
 *     that type when it parses (plugins can only set strings);
 *   - RAW fields (unknown arrays, nil, bin, ext, and maps whose keys cannot
 *     be flattened) are written back byte for byte.
 * Decoding flattens every non-empty map into dotted fields and keeps every
 * key it does not know, so decode then encode preserves unknown keys and
 * their values.
 */
#ifndef KFG_ENVELOPE_H
#define KFG_ENVELOPE_H

#include <stddef.h>

#include "buf.h"
#include "kfgate/envelope.h"
#include "msg.h"

#define KFG_ENV_MAX_SIZE (1u << 20)      /* bytes of one msgpack envelope */
#define KFG_ENV_MAX_JSON (4u << 20)      /* bytes of one JSON envelope */
#define KFG_ENV_MAX_DEPTH 16             /* nesting of maps and arrays */
#define KFG_ENV_MAX_PARTS 64

/* Decode flags. Without INBOUND/OUTBOUND only the structure, the types of
 * known fields, the enumerations and v/type/dir are checked. */
#define KFG_ENV_INBOUND 0x1u    /* the rules for a record the gateway publishes */
#define KFG_ENV_OUTBOUND 0x2u   /* the rules for an envelope from a core; drops
                                   id, seq and ts.accepted (never from the wire) */

/* Appends m as one msgpack map to out, through a msgpack_packer writing
 * straight into the buffer. 0, or KFG_ENOMEM (out->oom is set too). */
int kfg_env_encode(const struct kfg_msg *m, struct kfg_buf *out);

/* Decodes one envelope (exactly len bytes, one map) into a new message
 * (*out, free with kfg_msg_free; its tenant/channel/instance pointers are
 * NULL, the values are fields). 0, or KFG_EINVAL with a NUL-terminated
 * reason such as "field 'parts[1].kind': expected string, got integer",
 * or KFG_ENOMEM. */
int kfg_env_decode(const void *mp, size_t len, unsigned flags, struct kfg_msg **out,
                   char *reason, size_t reason_cap);
/* kfg_env_decode with KFG_ENV_OUTBOUND: the outbound path's admission. */
int kfg_env_decode_outbound(const void *mp, size_t len, struct kfg_msg **out,
                            char *reason, size_t reason_cap);
/* Checks without keeping the message. */
int kfg_env_validate(const void *mp, size_t len, unsigned flags, char *reason,
                     size_t reason_cap);
/* Encodes m and checks it as an inbound record (KFG_ENV_INBOUND), for the
 * emit path: a plugin's mistake (a part without its required field, a
 * "size" that is not a number) is found before it reaches the bus. */
int kfg_env_check(const struct kfg_msg *m, char *reason, size_t reason_cap);

/* The JSON form (spec/envelope.md, "JSON mapping"): same keys; bin as
 * {"$bin":"<base64>"}, ext as {"$ext":[type,"<base64>"]}, NaN/infinities as
 * {"$float":"NaN"|"Infinity"|"-Infinity"}; floats always with a '.' or an
 * exponent. Appends one JSON object (no newline) to out. 0, or -1 when mp
 * is not one msgpack map within the limits (out may hold a partial text;
 * invalid UTF-8 in strings becomes U+FFFD). */
int kfg_env_to_json(const void *mp, size_t len, struct kfg_buf *out);
int kfg_env_to_json_r(const void *mp, size_t len, struct kfg_buf *out, char *reason,
                      size_t reason_cap);
/* The reverse: one JSON object (surrounding whitespace allowed) to one
 * msgpack map appended to out. Integers become msgpack ints (they must fit
 * int64), numbers with '.' or an exponent float64. This converts only; it
 * does not validate an envelope (the receiver does). 0, or -1 with reason. */
int kfg_env_from_json(const char *json, size_t len, struct kfg_buf *out, char *reason,
                      size_t reason_cap);

#endif
