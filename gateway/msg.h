/*
 * The in-memory message behind the plugin ABI's struct kfg_msg: string (or
 * integer) fields by name plus ordered content parts. The message owns
 * copies of everything set on it. Host-assigned fields (see
 * kfg_msg_reserved) cannot be set by plugins, so identity and tenant never
 * come from client input.
 */
#ifndef KFG_MSG_H
#define KFG_MSG_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "kfgate/plugin.h"

struct kfg_field {
    char *key;
    char *val;          /* NUL-terminated copy; NULL for an integer field */
    size_t len;
    int64_t ival;
};

struct kfg_part {
    char *kind;
    struct kfg_field *fields;
    size_t nfields, cap;
};

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
};

struct kfg_msg *kfg_msg_new(const char *type, const char *tenant,
                            const char *channel, const char *instance);
void kfg_msg_free(struct kfg_msg *m);
int kfg_msg_reserved(const char *key);
int kfg_msg_set(struct kfg_msg *m, const char *key, const char *val, size_t len);
int kfg_msg_set_int(struct kfg_msg *m, const char *key, int64_t val);
struct kfg_str kfg_msg_get(const struct kfg_msg *m, const char *key);
int kfg_msg_part_add(struct kfg_msg *m, const char *kind);
int kfg_msg_part_set(struct kfg_msg *m, size_t part, const char *key,
                     const char *val, size_t len);
size_t kfg_msg_part_count(const struct kfg_msg *m);
const char *kfg_msg_part_kind(const struct kfg_msg *m, size_t part);
struct kfg_str kfg_msg_part_get(const struct kfg_msg *m, size_t part,
                                const char *key);
/* Stamps id (time-ordered UUIDv7), seq and acceptance time. */
void kfg_msg_accept(struct kfg_msg *m, uint64_t seq);
/* One JSON object, no trailing newline. */
void kfg_msg_to_json(const struct kfg_msg *m, struct kfg_buf *out);
/* A time-ordered UUIDv7 text into out[37]; thread-safe. */
void kfg_uuid7(char out[37], int64_t *ms_out);

#endif
