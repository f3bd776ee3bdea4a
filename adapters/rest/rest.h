/*
 * kfgate REST adapter: the parts that need no host.
 *
 * Everything here is plain C over jansson and OpenSSL's libcrypto, so the
 * unit tests (rest_*_test.c, cmocka) and the libFuzzer harness
 * (rest_fuzz.c) link it without a gateway. rest_plugin.c glues it to
 * <kfgate/plugin.h>.
 *
 *   rest_auth.c   constant-time compare, bearer keys, HMAC-SHA256 request
 *                 signatures with a tolerance window and a replay cache,
 *                 webhook signing, private/loopback address checks
 *   rest_json.c   JSON pointers (RFC 6901), validation of the ingest body
 *                 and its mapping onto envelope keys (native schema and
 *                 configured foreign schemas), problem documents (RFC 9457)
 *   rest_store.c  bounded, locked maps: idempotency keys and status records
 *   rest_http.c   Retry-After (seconds or HTTP-date) of webhook answers
 */
#ifndef KFGATE_REST_H
#define KFGATE_REST_H

#include <jansson.h>
#include <pthread.h>
#include <kfgate/envelope.h>
#include <stddef.h>
#include <string.h>
#include <stdint.h>

/* src (NUL-terminated) into dst of cap bytes, cut to fit, NUL-terminated:
 * snprintf's "%s" without its cost on the per-request path. */
static inline void rest_copy(char *dst, size_t cap, const char *src)
{
    if (!cap)
        return;
    size_t n = strlen(src);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* ---------------------------------------------------------------------------
 * Problems (RFC 9457). One per answer; `pointer` names the offending field
 * of the request body (RFC 6901), `header` an offending request header.
 */
#define REST_PROBLEM_BASE "https://kfgate.dev/problems/"

struct rest_problem {
    int status;                 /* HTTP status, 0 = no problem */
    const char *type;           /* slug after REST_PROBLEM_BASE */
    const char *title;          /* fixed per type */
    char detail[256];
    char pointer[256];          /* "" when the problem is not a body field */
    char header[64];            /* "" when the problem is not a header */
    int retry_after;            /* seconds; 0 = no Retry-After */
};

void rest_problem_set(struct rest_problem *p, int status, const char *type,
                      const char *title, const char *pointer, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* The application/problem+json document; malloc'd, NUL-terminated. `extra`
 * (may be NULL) is merged into the top level (e.g. per-item results). */
char *rest_problem_json(const struct rest_problem *p, const char *instance_path,
                        json_t *extra);

/* ---------------------------------------------------------------------------
 * Auth.
 */
struct rest_replay;             /* signatures seen inside the window */

struct rest_auth {
    const char **keys;          /* bearer keys with write access */
    size_t nkeys;
    const char **read_keys;     /* bearer keys for GET only */
    size_t nread;
    const char **secrets;       /* HMAC secrets (any of them verifies) */
    size_t nsecrets;
    int64_t tolerance_s;        /* |now - timestamp| allowed */
    struct rest_replay *replay; /* NULL: no replay cache */
};

#define REST_HDR_TIMESTAMP "Kfgate-Timestamp"
#define REST_HDR_SIGNATURE "Kfgate-Signature"
#define REST_HDR_DELIVERY "Kfgate-Delivery-Id"
#define REST_HDR_ATTEMPT "Kfgate-Attempt"

/* 1 when a and b are equal; time depends on the lengths only. */
int rest_ct_equal(const void *a, size_t alen, const void *b, size_t blen);

/* hex(HMAC-SHA256(secret, p1 || "." || p2 [|| "." || p3])) into out[65]. */
void rest_hmac_hex(const char *secret, size_t slen, const void *p1, size_t l1,
                   const void *p2, size_t l2, const void *p3, size_t l3, char out[65]);

/* Checks a request. authz is the Authorization header, ts and sig the
 * signature headers (ptr NULL when absent); write: the request changes
 * something (POST). Returns 0, or fills p (401/403) and returns -1. */
int rest_auth_check(const struct rest_auth *a, const char *authz, size_t authz_len,
                    const char *ts, size_t ts_len, const char *sig, size_t sig_len,
                    const void *body, size_t body_len, int64_t now_s, int write,
                    struct rest_problem *p);

struct rest_replay *rest_replay_new(size_t cap);
void rest_replay_free(struct rest_replay *r);
/* 1 when (sig) was seen before and has not expired; else records it. */
int rest_replay_seen(struct rest_replay *r, const char sig_hex[65], int64_t ts,
                     int64_t now_s, int64_t tolerance_s);

/* The webhook signature header value: "v1=<hex>[,v1=<hex>]" over
 * timestamp "." delivery_id "." body, one per secret. malloc'd. */
char *rest_webhook_signature(const char *const *secrets, size_t n, int64_t ts,
                             const char *delivery_id, const void *body, size_t len);

/* Webhook destination check. Parses an http(s) URL; returns 0 when usable,
 * else -1 with why. *private_out is set to 1 when the host is a loopback,
 * private, link-local or otherwise non-public address (literal IPs and
 * "localhost" names; other names are not resolved here). */
int rest_url_check(const char *url, int *private_out, char *why, size_t cap);
/* 1 for a non-public IPv4/IPv6 literal. */
int rest_ip_is_private(const char *host);

/* ---------------------------------------------------------------------------
 * Ingest bodies.
 */


#define REST_MAP_FIELDS_MAX 32

/* A foreign schema: envelope field <- JSON pointer into the body. */
struct rest_map {
    int enabled;
    const char *type;           /* fixed envelope type ("message") */
    const char *conversation;   /* pointers; NULL = not mapped */
    const char *sender;
    const char *text;
    const char *parts;          /* pointer to an array of native parts */
    const char *event;          /* pointer to an event name: event part */
    size_t nfields;
    struct {
        char key[128];          /* envelope key: "sender.name", "channel_data.x" */
        const char *pointer;
    } fields[REST_MAP_FIELDS_MAX];
};

struct rest_limits {
    size_t max_batch;           /* messages per POST */
    size_t max_parts;           /* parts per message (<= 64) */
    size_t max_id;              /* bytes of an id */
    size_t max_text;            /* bytes of a text part */
};

/* RFC 6901. Returns the value or NULL (absent, or malformed pointer). */
json_t *rest_pointer_get(json_t *root, const char *pointer);
/* 1 when pointer is "" or "/..." with valid ~0/~1 escapes. */
int rest_pointer_valid(const char *pointer);
/* Appends "/" + escaped token to buf (NUL-terminated, truncated at cap). */
void rest_pointer_push(char *buf, size_t cap, const char *token);

/* Parses a body: one JSON object, or {"messages": [...]} (native schema
 * only). On success returns the root (caller json_decref) and sets *items
 * (borrowed array of objects) and *n. On error fills p (400/413). */
json_t *rest_parse_body(const char *body, size_t len, const struct rest_map *map,
                        const struct rest_limits *lim, json_t ***items, size_t *n,
                        int *batch, struct rest_problem *p);

/* Validates one message object and writes it into the sink. `base` is the
 * JSON pointer of obj in the body ("" or "/messages/3"). Returns 0 or fills
 * p (400 naming the field, or 500 when the sink failed) and returns -1. */
int rest_map_message(json_t *obj, const char *base, const struct rest_map *map,
                     const struct rest_limits *lim, const struct kfg_msg_sink *s,
                     struct rest_problem *p);

/* "envelope.key=/pointer" from config into map->fields; 0 or -1 + why. */
int rest_map_add_field(struct rest_map *map, const char *spec, char *why, size_t cap);

/* Media type check for POST bodies: 1 when application/json (parameters
 * allowed, charset only utf-8). */
int rest_ctype_json(const char *ct, size_t len);

/* Idempotency-Key check: 1..255 printable ASCII. */
int rest_idem_key_valid(const char *k, size_t len);

/* ---------------------------------------------------------------------------
 * Bounded maps, safe from any thread. Oldest entries are evicted first.
 *
 * rest_bmap is the shared engine (hash chains + an age list); callers lock
 * `mu` around every call.
 */
struct rest_bent {
    char *key;                  /* in the same block as the entry */
    size_t klen;
    uint64_t hash;
    struct rest_bent *hnext, *older, *newer;
    int64_t aux;
    void *val;
};

struct rest_bmap {
    pthread_mutex_t mu;
    size_t cap, n, nbuckets;
    struct rest_bent **buckets;
    struct rest_bent *oldest, *newest;
    void (*free_val)(void *val);
};

int rest_bmap_init(struct rest_bmap *m, size_t cap, void (*free_val)(void *));
void rest_bmap_destroy(struct rest_bmap *m);
struct rest_bent *rest_bmap_find(struct rest_bmap *m, const char *key, size_t klen);
/* A new entry (the key must be absent); evicts the oldest entry for which
 * evictable(e) is true (NULL: any) when full. NULL when nothing could be
 * evicted or out of memory. */
struct rest_bent *rest_bmap_insert(struct rest_bmap *m, const char *key, size_t klen,
                                   int (*evictable)(const struct rest_bent *e));
void rest_bmap_remove(struct rest_bmap *m, struct rest_bent *e);
struct rest_idem;

enum rest_idem_state {
    REST_IDEM_NEW = 0,          /* reserved for this request: finish or abort */
    REST_IDEM_PENDING,          /* another request with that key is running */
    REST_IDEM_DONE,             /* *status and *answer hold the original */
    REST_IDEM_MISMATCH,         /* the key was used with another body */
    REST_IDEM_FULL,             /* no room: every entry is pending */
};

struct rest_idem *rest_idem_new(size_t cap);
void rest_idem_free(struct rest_idem *m);
/* answer is malloc'd for the caller on DONE. */
enum rest_idem_state rest_idem_begin(struct rest_idem *m, const char *key, size_t klen,
                                     const unsigned char hash[32], int *status,
                                     char **answer);
void rest_idem_finish(struct rest_idem *m, const char *key, size_t klen, int status,
                      const char *answer);
void rest_idem_abort(struct rest_idem *m, const char *key, size_t klen);
size_t rest_idem_count(struct rest_idem *m);

struct rest_status;

struct rest_status *rest_status_new(size_t cap);
void rest_status_free(struct rest_status *s);
/* Appends a receipt to the record of id (created on first use). code,
 * detail may be NULL. Returns the number of attempt receipts so far and
 * sets *first_ms to when the record was created (both for webhooks). */
int rest_status_add(struct rest_status *s, const char *id, const char *dir,
                    const char *status, uint64_t seq, const char *code,
                    const char *detail, int64_t at_ms, int64_t *first_ms);
/* The record as a JSON object (caller json_decref), or NULL. */
json_t *rest_status_get(struct rest_status *s, const char *id);

/* ---------------------------------------------------------------------------
 * Retry-After of a webhook receiver's 429/503.
 */

/* Values beyond this (seconds) saturate instead of overflowing. */
#define REST_RETRY_AFTER_SAT_S (10LL * 365 * 86400)

/* An HTTP-date (IMF-fixdate, RFC 850 or asctime; RFC 9110 §5.6.7): 0 with
 * *out_s = seconds since the epoch (negative before 1970), or -1 when it is
 * none of them. */
int rest_http_date(const char *s, size_t len, int64_t *out_s);

/* A Retry-After field value (delay-seconds or HTTP-date, surrounding
 * whitespace allowed) as a delay from now_ms: 0 with *out_ms set (>= 0; a
 * past date is 0), or -1 when malformed. */
int rest_retry_after_ms(const char *v, size_t len, int64_t now_ms, int64_t *out_ms);

/* The wait to ask the host for: hint_ms (<= 0: none, 0), at most max_ms
 * (> 0; absurd values are capped there); -1 when now_ms + that wait falls
 * after deadline_ms or age_limit_at_ms (absolute ms; 0 = none): the
 * delivery cannot succeed in time and is dead-lettered at once. */
int64_t rest_retry_cap(int64_t hint_ms, int64_t now_ms, int64_t deadline_ms,
                       int64_t age_limit_at_ms, int64_t max_ms);

/* Fills out with a lowercase UUIDv7 (36 chars + NUL). */
void rest_uuid7(char out[37], int64_t now_ms);

#endif /* KFGATE_REST_H */
