/*
 * kfgate bus client (spec/bus.md, version 1): follow a node's feed with
 * catch-up replay, gap detection and gap filling, and send outbound
 * envelopes. Link with -lnng -lmsgpackc.
 *
 * OWNERSHIP, once for the whole header:
 *  - Every pointer argument is borrowed for the duration of the call only;
 *    the library copies what it keeps (URLs, prefixes, envelopes it sends).
 *  - Memory the library returns through a struct (struct kfg_bus_rec,
 *    struct kfg_bus_wire) is owned by the library: a record from
 *    kfg_bus_next stays valid until the next kfg_bus_next on the same
 *    subscription or kfg_bus_sub_free; a decoded wire message points into
 *    the caller's input bytes (zero-copy) plus one array freed by
 *    kfg_bus_wire_clear. Callers never free() anything the library gave them.
 *  - struct kfg_bus_ack holds its strings inline (fixed arrays, truncated,
 *    always NUL-terminated); nothing to free.
 *  - Objects made by an _open/_sub call are freed by the matching
 *    _close/_sub_free, which accept NULL.
 *
 * THREADS: kfg_bus_send may be called from any number of threads at once
 * (one REQ context per call). A subscription is used by one thread at a time.
 * Free every subscription before kfg_bus_close. NNG is not fork-safe: fork
 * before kfg_bus_open, never after.
 *
 * ERRORS: 0 is success, errors are negative KFG_BUS_E* values;
 * kfg_bus_strerror names them, kfg_bus_sub_errmsg gives the detail of a
 * subscription's last error.
 */
#ifndef KFGATE_BUS_H
#define KFGATE_BUS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KFG_BUS_DEFAULT_FEED     "ipc:///tmp/kfgate/feed.ipc"
#define KFG_BUS_DEFAULT_REPLAY   "ipc:///tmp/kfgate/replay.ipc"
#define KFG_BUS_DEFAULT_OUTBOUND "ipc:///tmp/kfgate/outbound.ipc"
#define KFG_BUS_HB_TOPIC         "~hb"

enum {
    KFG_BUS_OK = 0,
    KFG_BUS_ETIMEDOUT = -1,  /* nothing arrived in time (next) / no answer (send, replay) */
    KFG_BUS_ENOMEM = -2,
    KFG_BUS_EINVAL = -3,     /* bad argument */
    KFG_BUS_ECONN = -4,      /* transport: cannot connect, connection lost */
    KFG_BUS_EPROTO = -5,     /* the gateway answered something malformed or an error */
    KFG_BUS_ECLOSED = -6,
};
const char *kfg_bus_strerror(int err);

/* ------------------------------------------------------------------------ */
/* Connection */

struct kfg_bus_opts {
    const char *feed_url;        /* NULL: KFG_BUS_DEFAULT_FEED */
    const char *replay_url;      /* NULL: KFG_BUS_DEFAULT_REPLAY */
    const char *outbound_url;    /* NULL: KFG_BUS_DEFAULT_OUTBOUND */
    int request_timeout_ms;      /* wait for a replay/outbound answer; 0: 5000 */
    uint32_t replay_max;         /* records asked per replay request; 0: 256 */
    size_t max_msg;              /* largest NNG message accepted; 0: 64 MiB */
    int recvbuf;                 /* feed socket's NNG_OPT_RECVBUF, messages (1..8192); 0: 1024 */
};

struct kfg_bus;

/* Nothing is dialled here: the feed is dialled by kfg_bus_sub, replay and
 * outbound on first use, so a tool that only tails never touches outbound.
 * opts may be NULL (all defaults). */
int kfg_bus_open(struct kfg_bus **out, const struct kfg_bus_opts *opts);
void kfg_bus_close(struct kfg_bus *b);

/* ------------------------------------------------------------------------ */
/* Subscription: every matching record exactly once, in seq order per topic */

/* cursor for kfg_bus_sub: start at the node's current end (no history). */
#define KFG_BUS_LIVE UINT64_MAX

enum kfg_bus_rec_kind {
    KFG_BUS_RECORD = 1,          /* one journal record */
    KFG_BUS_LOSS = 2,            /* retention deleted [seq, seq_to] before we read it */
};

struct kfg_bus_rec {
    int kind;                    /* enum kfg_bus_rec_kind */
    uint64_t seq;                /* RECORD: its seq; LOSS: first seq gone */
    uint64_t seq_to;             /* RECORD: = seq; LOSS: last seq gone (inclusive) */
    const char *topic;           /* NUL-terminated; LOSS: the prefix or topic that was being read */
    size_t topic_len;
    const void *env;             /* RECORD: the envelope's msgpack map bytes; LOSS: NULL */
    size_t env_len;
    int replayed;                /* RECORD: 1 when it came from the replay endpoint */
};

struct kfg_bus_stats {
    uint64_t delivered;          /* records returned by kfg_bus_next */
    uint64_t from_feed;          /* ... of which taken from feed batches */
    uint64_t replayed;           /* ... of which taken from replay answers (catch-up and fills) */
    uint64_t gaps;               /* gaps found (prev check or heartbeat) */
    uint64_t gaps_by_heartbeat;  /* ... of which found by a heartbeat */
    uint64_t gap_records;        /* records delivered by gap fills */
    uint64_t duplicates;         /* records skipped because already delivered */
    uint64_t batches;            /* feed batches received */
    uint64_t heartbeats;         /* heartbeats received */
    uint64_t replay_requests;
    uint64_t lost;               /* seq numbers reported as KFG_BUS_LOSS */
    uint64_t bad_messages;       /* feed messages that did not decode (ignored) */
    uint64_t cursor;             /* C of spec/bus.md section 2 */
    uint64_t node_last;          /* node's last committed seq, as last heard */
    int64_t last_heartbeat_ms;   /* CLOCK_MONOTONIC ms of the last heartbeat; 0: none yet */
};

struct kfg_bus_sub;

/* Subscribes the feed to prefix ("" = everything) and to the heartbeat, then
 * dials it (synchronously when the node is up; otherwise in the background,
 * reconnecting by itself). cursor is the highest seq already processed
 * (0: none, deliver from seq 1; KFG_BUS_LIVE: from the node's end as the
 * replay endpoint reports it during this call, or during the first
 * kfg_bus_next if it did not answer in time). The catch-up replay runs
 * inside the first kfg_bus_next calls. */
int kfg_bus_sub(struct kfg_bus *b, const char *prefix, uint64_t cursor,
                struct kfg_bus_sub **out);
void kfg_bus_sub_free(struct kfg_bus_sub *s);

/* The next record (or loss report) into *rec: 0, KFG_BUS_ETIMEDOUT when the
 * feed stayed quiet for timeout_ms (<0: wait forever, 0: poll), or another
 * error: a replay request that failed or got no answer is KFG_BUS_ECONN (or
 * KFG_BUS_EPROTO for an error answer), with the detail in
 * kfg_bus_sub_errmsg. Replay requests made on the way (catch-up, gap fills)
 * may take up to request_timeout_ms each beyond timeout_ms. After any error
 * the state is intact: calling again resumes where it stopped, with nothing
 * lost or repeated. */
int kfg_bus_next(struct kfg_bus_sub *s, struct kfg_bus_rec *rec, int timeout_ms);
void kfg_bus_sub_stats(const struct kfg_bus_sub *s, struct kfg_bus_stats *st);
const char *kfg_bus_sub_errmsg(const struct kfg_bus_sub *s);    /* "" when none */

/* ------------------------------------------------------------------------ */
/* Outbound */

struct kfg_bus_ack {
    int ok;                      /* 1: journaled and queued for delivery */
    int duplicate;               /* 1: idem seen before; id/seq are the original's */
    uint64_t seq;
    char id[64];                 /* gateway-assigned envelope id when ok */
    char error[32];              /* when !ok: invalid, unknown_instance, not_deliverable, busy, stopping */
    char reason[256];            /* when !ok: the precise cause */
};

/* Sends one outbound envelope (msgpack map bytes) and waits for its answer
 * (timeout_ms <= 0: request_timeout_ms). 0 when the gateway answered: check
 * ack->ok. KFG_BUS_ETIMEDOUT or KFG_BUS_ECONN after the request left mean the
 * outcome is unknown; resending is safe only if the envelope has `idem`.
 * The library never resends by itself (NNG_OPT_REQ_RESENDTIME is off). */
int kfg_bus_send(struct kfg_bus *b, const void *env, size_t len, struct kfg_bus_ack *ack,
                 int timeout_ms);

/* ------------------------------------------------------------------------ */
/* Wire decoders (untrusted bytes in; no allocation beyond w->recs; bounded
 * nesting). Used by the client itself; public for tests, fuzzers and tools. */

enum kfg_bus_wire_kind {
    KFG_BUS_WIRE_BATCH = 1,
    KFG_BUS_WIRE_HEARTBEAT = 2,
    KFG_BUS_WIRE_REPLAY = 3,
    KFG_BUS_WIRE_ERROR = 4,      /* a replay answer {"v":1,"error":...} */
};

struct kfg_bus_wrec {
    uint64_t seq;
    const char *topic;           /* not NUL-terminated: use topic_len */
    size_t topic_len;
    const uint8_t *env;          /* envelope bytes; heartbeat: NULL (seq = topics[topic]) */
    size_t env_len;
};

struct kfg_bus_wire {
    int kind;                    /* enum kfg_bus_wire_kind */
    const char *topic;           /* batch: its topic (topic_len bytes) */
    size_t topic_len;
    uint64_t prev;               /* batch */
    uint64_t last;               /* heartbeat, replay */
    uint64_t next, first;        /* replay */
    const char *error;           /* ERROR: the reason (error_len bytes) */
    size_t error_len;
    size_t n;                    /* records (batch, replay) or topics (heartbeat) */
    struct kfg_bus_wrec *recs;
};

/* A feed message (topic NUL map): a batch or a heartbeat. Checks v == 1,
 * record seqs > prev and strictly increasing, envelopes are bin, topics are
 * [A-Za-z0-9_.-/] of 1..255 bytes. 0 or KFG_BUS_EPROTO / KFG_BUS_ENOMEM; on
 * error *w is cleared. */
int kfg_bus_decode_feed(const void *msg, size_t len, struct kfg_bus_wire *w);
/* A replay answer: KFG_BUS_WIRE_REPLAY or KFG_BUS_WIRE_ERROR. */
int kfg_bus_decode_replay(const void *msg, size_t len, struct kfg_bus_wire *w);
void kfg_bus_wire_clear(struct kfg_bus_wire *w);
/* An outbound answer. */
int kfg_bus_decode_ack(const void *msg, size_t len, struct kfg_bus_ack *ack);

#ifdef __cplusplus
}
#endif

#endif
