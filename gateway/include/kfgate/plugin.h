/*
 * kfgate plugin ABI — the only header a channel adapter or filter needs.
 *
 * A plugin is a shared object that exports one data symbol,
 *
 *     const struct kfg_plugin kfg_plugin_descriptor = { KFG_PLUGIN_HEADER, ... };
 *
 * and links against nothing of the daemon: everything it may ask of the
 * gateway arrives as a table of function pointers (struct kfg_host) at init.
 * The full contract, with examples, is spec/plugin-abi.md.
 *
 * VERSIONING. KFG_ABI_MAJOR changes only when an existing field or function
 * changes meaning; the loader refuses any other major. KFG_ABI_MINOR grows
 * when fields or host functions are appended; a plugin built against an older
 * minor still loads (the host reads only `struct_size` bytes of its
 * descriptor and treats missing callbacks as NULL), a plugin that needs a
 * newer minor than the host provides is refused by name. Enum values and
 * struct members are append-only, never renumbered or reordered.
 *
 * THREADING. The gateway runs one control loop (the main thread) and N worker
 * loops (one thread each, libevent). For every instance:
 *   - init, start, stop, destroy, health and deliver run on the control loop;
 *   - HTTP route handlers run on the worker loop that owns the connection; the
 *     handlers of one instance may run at the same time on different workers,
 *     so state they share must be read-only after start, atomic, or locked;
 *   - filter callbacks run on the loop that called emit (any loop);
 *   - every completion callback (emit done, HTTP client done, timer, post)
 *     runs later on the loop that started the operation, never from inside
 *     the call that started it.
 * Host functions may be called from any loop thread unless noted; calls that
 * touch a request (req_*) only from the loop that owns it (the one that ran
 * its handler; see req_loop and post to hop there).
 *
 * OWNERSHIP, stated once for the whole ABI:
 *   - Every `const char *` / struct kfg_str the host hands to a plugin is
 *     borrowed: valid until the callback returns, unless a function's comment
 *     says longer (config values: until destroy; request data: until respond).
 *   - Every buffer a plugin passes to the host is copied before the call
 *     returns; the plugin keeps ownership of its own memory.
 *   - A struct kfg_msg passed to emit belongs to the host when emit returns
 *     KFG_OK, and still belongs to the plugin on any error (NNG's rule).
 *   - Handles the host returns (timers, metrics, messages) are released with
 *     their matching free call, or by the host at destroy for metrics.
 */
#ifndef KFGATE_PLUGIN_H
#define KFGATE_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KFG_ABI_MAJOR 1
#define KFG_ABI_MINOR 1

/* The exported descriptor's symbol name. */
#define KFG_PLUGIN_SYMBOL "kfg_plugin_descriptor"

/* Results: 0 is success, errors are negative. Append only. */
enum kfg_result {
    KFG_OK = 0,
    KFG_AGAIN = -1,      /* not now: paused or over a limit; try later */
    KFG_RETRY = -2,      /* delivery failed, may succeed if retried */
    KFG_EINVAL = -3,     /* bad argument or malformed input */
    KFG_ENOMEM = -4,
    KFG_EFAIL = -5,      /* failed for good; do not retry */
    KFG_ENOTFOUND = -6,
    KFG_EEXIST = -7,     /* e.g. a route another instance already owns */
    KFG_ESTOPPED = -8,   /* the instance or gateway is shutting down */
    KFG_EDROPPED = -9,   /* a filter dropped the message (emit completion) */
    KFG_ETIMEDOUT = -10,
};

enum kfg_plugin_kind {
    KFG_KIND_ADAPTER = 1,    /* receives from a channel, delivers to it */
    KFG_KIND_FILTER = 2,     /* a stage every inbound message passes */
};

enum kfg_log_level {
    KFG_LOG_ERROR = 0,
    KFG_LOG_WARN = 1,
    KFG_LOG_INFO = 2,
    KFG_LOG_DEBUG = 3,
};

/* A byte string that is not NUL-terminated unless said otherwise. */
struct kfg_str {
    const char *ptr;
    size_t len;
};

/* Opaque handles owned by the host. */
struct kfg_instance;     /* one configured [[adapter]] or [[filter]] */
struct kfg_request;      /* one HTTP request on the front door */
struct kfg_msg;          /* one normalized message (envelope) */
struct kfg_delivery;     /* one outbound delivery in progress */
struct kfg_timer;
struct kfg_metric;
struct kfg_loop;         /* one event loop (control or worker) */
struct event_base;       /* libevent */

/* ---------------------------------------------------------------------------
 * Declarative configuration. A plugin lists the keys of its instance table;
 * the host validates every [[adapter]]/[[filter]] table against the list
 * before init (unknown key, wrong type, missing required key: a config error
 * naming file, line, column and key), so a plugin never sees a typo.
 * The keys `type`, `name`, `tenant` and `log_level` belong to the host and
 * must not be listed.
 */
enum kfg_config_type {
    KFG_CFG_STRING = 1,
    KFG_CFG_INT = 2,         /* int64 */
    KFG_CFG_BOOL = 3,
    KFG_CFG_FLOAT = 4,
    KFG_CFG_SECRET = 5,      /* string; "env:NAME" reads the environment;
                                never printed by the host */
    KFG_CFG_STRING_ARRAY = 6,
};

#define KFG_CFG_REQUIRED 0x1u

struct kfg_config_key {
    const char *name;
    uint32_t type;           /* enum kfg_config_type */
    uint32_t flags;          /* KFG_CFG_REQUIRED */
    const char *def;         /* default as text ("4500", "true", "mp"), or NULL */
    const char *help;        /* one line, shown by `kfgate --help-plugin` */
};

/* ---------------------------------------------------------------------------
 * HTTP front door.
 */
#define KFG_ROUTE_EXACT 0x0u
#define KFG_ROUTE_PREFIX 0x1u    /* path is a prefix ("/wx/" matches "/wx/a") */
#define KFG_ROUTE_UPGRADE 0x2u   /* the handler may take over upgraded
                                    connections (req_upgrade) */

/* Called on the worker that owns the connection, with the instance context.
 * The handler answers with req_respond now or later (from the same worker),
 * or takes the connection with req_upgrade. */
typedef void (*kfg_http_handler)(void *ctx, struct kfg_request *req);

/* One response header for req_respond. */
struct kfg_header {
    const char *name;
    const char *value;
};

/* What req_upgrade hands over. The plugin owns fd from then on (close it);
 * fd is a connected socket, already non-blocking and close-on-exec;
 * `pending` are bytes the client sent after the request head, which the
 * plugin must treat as the first input on fd; valid until the handler
 * returns. */
struct kfg_upgraded {
    int fd;
    struct kfg_str pending;
    struct kfg_loop *loop;   /* the worker loop the fd belongs to */
};

/* ---------------------------------------------------------------------------
 * Outbound HTTP client, one libcurl multi handle per loop driven by it.
 */
struct kfg_http_call {
    const char *method;              /* "GET", "POST", ... */
    const char *url;
    const char *const *headers;      /* "Name: value" strings, NULL-terminated,
                                        or NULL */
    const void *body;
    size_t body_len;
    uint32_t timeout_ms;             /* 0 = the gateway's default */
};

/* result: KFG_OK when an HTTP response arrived (any status), else
 * KFG_ETIMEDOUT / KFG_EFAIL with `error` naming the cause. body is borrowed. */
typedef void (*kfg_http_done)(void *arg, int result, int status,
                              struct kfg_str body, const char *error);

/* emit completion: result KFG_OK (accepted; seq is the journal sequence),
 * KFG_EDROPPED (a filter dropped it; `reason` says why), or an error. */
typedef void (*kfg_emit_done)(void *arg, int result, uint64_t seq,
                              const char *reason);

/* ABI 1.1. What an emit2 completion reports; borrowed for the call. */
struct kfg_emit_result {
    int result;              /* as for kfg_emit_done */
    uint64_t seq;            /* journal sequence (the original's when duplicate) */
    const char *id;          /* envelope id (the original's when duplicate);
                                NULL unless result is KFG_OK */
    int duplicate;           /* 1: the idempotency key was seen in the window;
                                nothing new was journaled or published */
    const char *reason;      /* KFG_EDROPPED or an error: why; else NULL */
};
typedef void (*kfg_emit_done2)(void *arg, const struct kfg_emit_result *r);

/* ABI 1.1. A response as http_call2 reports it; everything is borrowed for
 * the call. Header names are as received (compare case-insensitively); only
 * the final response's headers are listed (not those of a 100 or a redirect). */
struct kfg_http_response {
    int result;              /* KFG_OK when a response arrived (any status),
                                else KFG_ETIMEDOUT / KFG_EFAIL */
    int status;
    struct kfg_str body;
    const char *error;       /* NULL when result is KFG_OK */
    size_t nheaders;
    const struct kfg_str *header_names;
    const struct kfg_str *header_values;
    uint64_t elapsed_us;     /* from the call to the end of the response */
};
typedef void (*kfg_http_done2)(void *arg, const struct kfg_http_response *r);

/* ABI 1.1. Replay from the journal (see host->replay). */
#define KFG_REPLAY_IN 0x1u       /* inbound records */
#define KFG_REPLAY_OUT 0x2u      /* outbound records (not status receipts) */
struct kfg_replay_query {
    uint64_t from_seq;           /* first sequence to consider */
    uint32_t max;                /* most records passed to `each`; 0 = 1000 */
    uint32_t directions;         /* KFG_REPLAY_IN | KFG_REPLAY_OUT; 0 = both */
    const char *conversation;    /* only records whose conversation.id equals
                                    this; NULL = every conversation */
};
/* One record: m is borrowed for the call (read it with msg_get*). Return 0
 * to go on, anything else to stop early. */
typedef int (*kfg_replay_each)(void *arg, uint64_t seq, const struct kfg_msg *m);
/* The end: result KFG_OK (or an error), `next` the sequence to continue from
 * (last examined + 1), `more` 1 when it stopped at `max` or at `each`'s
 * request before the end of the journal. */
typedef void (*kfg_replay_done)(void *arg, int result, uint64_t next, int more);

/* ---------------------------------------------------------------------------
 * The host API table, passed to init; valid until destroy returns.
 * `abi_minor` and `struct_size` tell a plugin which entries exist: check
 * `struct_size > offsetof(struct kfg_host, fn)` before calling an entry added
 * after the minor the plugin was built for.
 */
struct kfg_host {
    uint32_t abi_major, abi_minor, struct_size;
    const char *version;                         /* gateway version */

    /* Instance identity and configuration. Strings live until destroy. */
    const char *(*instance_name)(const struct kfg_instance *ins);
    const char *(*instance_tenant)(const struct kfg_instance *ins);
    /* Typed getters for the instance's own keys; a key left unset yields its
     * declared default (NULL / 0 / false when there is none). */
    const char *(*config_string)(const struct kfg_instance *ins, const char *key);
    int64_t (*config_int)(const struct kfg_instance *ins, const char *key);
    int (*config_bool)(const struct kfg_instance *ins, const char *key);
    double (*config_float)(const struct kfg_instance *ins, const char *key);
    size_t (*config_array_len)(const struct kfg_instance *ins, const char *key);
    const char *(*config_array_string)(const struct kfg_instance *ins,
                                       const char *key, size_t i);

    /* Logging: one structured line with level, instance and request id
     * (req may be NULL). Lines above the instance's level cost one compare. */
    void (*log)(const struct kfg_instance *ins, const struct kfg_request *req,
                int level, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
    void (*vlog)(const struct kfg_instance *ins, const struct kfg_request *req,
                 int level, const char *fmt, va_list ap);

    /* Metrics, exported at /metrics with an instance="<name>" label added.
     * `labels` is extra label text such as `outcome="ok"` or NULL. Handles
     * live until destroy; bumping them is lock-free from any thread. */
    struct kfg_metric *(*metric_counter)(struct kfg_instance *ins,
                                         const char *name, const char *help,
                                         const char *labels);
    struct kfg_metric *(*metric_gauge)(struct kfg_instance *ins,
                                       const char *name, const char *help,
                                       const char *labels);
    /* Latency histogram in seconds with the gateway's default buckets. */
    struct kfg_metric *(*metric_histogram)(struct kfg_instance *ins,
                                           const char *name, const char *help,
                                           const char *labels);
    void (*metric_add)(struct kfg_metric *m, int64_t delta);  /* counter, gauge */
    void (*metric_set)(struct kfg_metric *m, int64_t value);  /* gauge */
    void (*metric_observe)(struct kfg_metric *m, double seconds);

    /* Loops, timers, hopping between threads. */
    struct kfg_loop *(*loop_current)(void);      /* NULL off the gateway's loops */
    struct event_base *(*loop_base)(struct kfg_loop *loop);
    /* Run fn(arg) on `loop` soon; safe from any thread, also off-loop.
     * Returns KFG_ESTOPPED once the loop is gone (fn is then not called). */
    int (*post)(struct kfg_loop *loop, void (*fn)(void *arg), void *arg);
    /* A timer on the calling loop; fires fn(arg) after ms, every ms when
     * repeat. timer_free cancels and releases it (also from inside fn). */
    struct kfg_timer *(*timer_start)(struct kfg_instance *ins, uint64_t ms,
                                     int repeat, void (*fn)(void *arg),
                                     void *arg);
    void (*timer_free)(struct kfg_timer *t);

    /* HTTP front door. Routes are registered in start (control loop) and
     * removed by the host when the instance stops; two instances claiming
     * the same method and path is KFG_EEXIST. method NULL = any method. */
    int (*route_add)(struct kfg_instance *ins, const char *method,
                     const char *path, unsigned flags, kfg_http_handler fn);
    /* Request accessors; the data lives until req_respond/req_upgrade. */
    struct kfg_str (*req_method)(const struct kfg_request *req);
    struct kfg_str (*req_path)(const struct kfg_request *req);   /* raw, no query */
    struct kfg_str (*req_query)(const struct kfg_request *req);  /* raw, no '?' */
    /* First header of that name (case-insensitive); ptr NULL when absent. */
    struct kfg_str (*req_header)(const struct kfg_request *req, const char *name);
    size_t (*req_header_count)(const struct kfg_request *req);
    int (*req_header_at)(const struct kfg_request *req, size_t i,
                         struct kfg_str *name, struct kfg_str *value);
    struct kfg_str (*req_body)(const struct kfg_request *req);   /* decoded */
    const char *(*req_id)(const struct kfg_request *req);
    const char *(*req_peer)(const struct kfg_request *req);      /* "ip:port" */
    struct kfg_loop *(*req_loop)(const struct kfg_request *req);
    /* Answer the request, exactly once, on its loop. headers may be NULL;
     * the host adds Content-Length, Date and Connection. Everything is copied.
     * If the client went away meanwhile, the answer is discarded; the call
     * still releases the request. */
    int (*req_respond)(struct kfg_request *req, int status,
                       const struct kfg_header *headers, size_t nheaders,
                       const void *body, size_t len);
    /* Take over the connection of an upgrade request on a KFG_ROUTE_UPGRADE
     * route, from inside the handler. The request is released; the plugin
     * writes the 101 response itself and owns the fd. */
    int (*req_upgrade)(struct kfg_request *req, struct kfg_upgraded *out);

    /* Outbound HTTP through the calling loop's libcurl multi handle.
     * Everything in call is copied; done runs later on the calling loop. */
    int (*http_call)(struct kfg_instance *ins, const struct kfg_http_call *call,
                     kfg_http_done done, void *arg);

    /* Messages. A message carries fields by name (see spec/envelope.md for
     * the names; <kfgate/envelope.h> has them as constants, with builders;
     * unknown names are kept) and ordered content parts, each a kind
     * ("text", "image", ...) with its own fields.
     *
     * Keys are dotted paths: msg_set(m, "sender.id", ...) is the key "id" of
     * the map "sender" on the bus ({"sender": {"id": ...}}); part fields
     * follow the same rule ("value.scene"). A key is 1..16 non-empty
     * segments, at most 256 bytes; a key cannot be both a value and a map
     * (after "a.b" is set, setting "a" or "a.b.c" is KFG_EINVAL). Setting an
     * existing key replaces its value in place. The host's keys (v, id, seq,
     * tenant, channel, instance, type, parts, ts.accepted) cannot be set.
     * Aliases kept for older adapters: "conversation", "sender" and
     * "recipient" mean "<name>.id", "idempotency_key" means "idem".
     * Values are strings (msg_set, msg_part_set) or int64 (msg_set_int);
     * fields the spec types as numbers or booleans (part "size", "lat", ...)
     * are given as decimal text and encoded with the spec's type.
     * msg_get returns only string values (ptr NULL for the others). */
    struct kfg_msg *(*msg_new)(struct kfg_instance *ins, const char *type);
    void (*msg_free)(struct kfg_msg *m);
    int (*msg_set)(struct kfg_msg *m, const char *key, const char *val,
                   size_t len);
    int (*msg_set_int)(struct kfg_msg *m, const char *key, int64_t val);
    /* Field value, or ptr NULL when absent; valid until the message changes. */
    struct kfg_str (*msg_get)(const struct kfg_msg *m, const char *key);
    /* Appends a part and returns its index (>= 0) or an error. */
    int (*msg_part_add)(struct kfg_msg *m, const char *kind);
    int (*msg_part_set)(struct kfg_msg *m, size_t part, const char *key,
                        const char *val, size_t len);
    size_t (*msg_part_count)(const struct kfg_msg *m);
    const char *(*msg_part_kind)(const struct kfg_msg *m, size_t part);
    struct kfg_str (*msg_part_get)(const struct kfg_msg *m, size_t part,
                                   const char *key);
    /* Publish an inbound message: filters run, then the message is made
     * durable and published; done(arg, ...) follows on the calling loop.
     * Acknowledge the channel only from done with KFG_OK (or KFG_EDROPPED).
     * KFG_AGAIN: the gateway is over a limit; answer 503 / stop reading. */
    int (*emit)(struct kfg_instance *ins, struct kfg_msg *m, kfg_emit_done done,
                void *arg);

    /* Finish a delivery started by the deliver callback, on the control
     * loop: result KFG_OK, KFG_RETRY or KFG_EFAIL; channel_code is the
     * channel's own error code or NULL; detail a short text or NULL. */
    void (*delivered)(struct kfg_delivery *d, int result,
                      const char *channel_code, const char *detail);

    /* An instance whose stop returned KFG_AGAIN calls this, on the control
     * loop, once its own in-flight work is finished. */
    void (*stopped)(struct kfg_instance *ins);

    /* ---- ABI 1.1: check host->abi_minor >= 1 before calling these. ---- */

    /* Integer or unsigned field ("seq", "ts.accepted", msg_set_int values):
     * KFG_OK with *out set, or KFG_ENOTFOUND when absent or not a number. */
    int (*msg_get_int)(const struct kfg_msg *m, const char *key, int64_t *out);

    /* emit with a completion that also says the envelope id and whether the
     * message was a duplicate; otherwise exactly emit. */
    int (*emit2)(struct kfg_instance *ins, struct kfg_msg *m, kfg_emit_done2 done,
                 void *arg);

    /* http_call whose completion carries the response headers. */
    int (*http_call2)(struct kfg_instance *ins, const struct kfg_http_call *call,
                      kfg_http_done2 done, void *arg);

    /* delivered with a hint: for KFG_RETRY, retry_after_ms > 0 asks for the
     * next attempt no sooner than that (a channel's Retry-After); the host
     * waits max(hint, its own backoff) but never past the message's
     * deadline. 0 = the host's backoff alone. */
    void (*delivered2)(struct kfg_delivery *d, int result, const char *channel_code,
                       const char *detail, uint64_t retry_after_ms);

    /* Which attempt this delivery is: 1 for the first. */
    unsigned (*delivery_attempt)(const struct kfg_delivery *d);

    /* Read this instance's own records back from the journal (its topic,
     * committed records only), in sequence order, off the loop's thread:
     * each and done run later on the calling loop. Returns KFG_OK (done will
     * be called exactly once) or an error. This is how a channel resumes a
     * client that missed outbound messages. */
    int (*replay)(struct kfg_instance *ins, const struct kfg_replay_query *q,
                  kfg_replay_each each, kfg_replay_done done, void *arg);

    void *reserved[16];
};

/* True when the host provides entry `fn` (a struct kfg_host member added
 * after the minor the plugin may meet): the host's table is long enough to
 * hold it and it is set. Test before calling anything newer than 1.0:
 *     if (KFG_HOST_HAS(host, emit2)) host->emit2(...); else host->emit(...);
 */
#define KFG_HOST_HAS(h, fn)                                                 \
    ((h)->struct_size >= offsetof(struct kfg_host, fn) + sizeof((h)->fn) &&  \
     (h)->fn != NULL)

/* ---------------------------------------------------------------------------
 * The descriptor. Unset callbacks are NULL; the host allocates `ctx_size`
 * zeroed bytes per instance and passes them to every callback as ctx.
 *
 * Lifecycle of one instance (all on the control loop):
 *   init -> start -> [traffic] -> stop -> (drain) -> destroy
 * init failing skips the rest; start failing goes straight to destroy.
 */
struct kfg_plugin {
    uint32_t abi_major;          /* KFG_ABI_MAJOR the plugin was built with */
    uint32_t abi_minor;          /* KFG_ABI_MINOR the plugin was built with */
    uint32_t struct_size;        /* sizeof(struct kfg_plugin) at build time */
    uint32_t kind;               /* enum kfg_plugin_kind */
    const char *name;            /* the `type` users write in the config */
    const char *version;         /* the plugin's own version, free text */
    const char *description;     /* one line */
    const struct kfg_config_key *config;   /* terminated by a {NULL} entry */
    size_t ctx_size;

    /* Read config, allocate; no I/O yet. Return KFG_OK or an error after
     * logging why. The host pointer is valid until destroy returns. */
    int (*init)(struct kfg_instance *ins, const struct kfg_host *host, void *ctx);
    /* Register routes, open connections, start timers. */
    int (*start)(void *ctx);
    /* Take no new work. Return KFG_OK when nothing of the plugin's own is in
     * flight, or KFG_AGAIN and call host->stopped later. Requests it holds
     * must still be answered. The host waits for open requests and
     * deliveries too, up to the configured drain timeout. */
    int (*stop)(void *ctx);
    /* Release everything: cancel timers and HTTP calls, close fds. No host
     * call that refers to this instance may follow. */
    void (*destroy)(void *ctx);
    /* KFG_OK if healthy, else an error with a short reason in detail. */
    int (*health)(void *ctx, char *detail, size_t detail_cap);

    /* Adapters: deliver an outbound message to the channel; finish with
     * host->delivered (now or later). The message is borrowed until then.
     * Return KFG_OK if the delivery was started, else an error (the host
     * then finishes it with that result). */
    int (*deliver)(void *ctx, const struct kfg_msg *m, struct kfg_delivery *d);

    /* Filters: inspect or modify m (through the host msg_* calls). Return
     * KFG_OK to pass it on, KFG_EDROPPED to drop it with a reason written
     * to `reason` (a NUL-terminated string of at most reason_cap bytes). */
    int (*filter)(void *ctx, struct kfg_msg *m, char *reason, size_t reason_cap);

    void *reserved[8];
};

/* Put this first in a descriptor initializer. */
#define KFG_PLUGIN_HEADER                                                   \
    .abi_major = KFG_ABI_MAJOR, .abi_minor = KFG_ABI_MINOR,                 \
    .struct_size = sizeof(struct kfg_plugin)

/* Plugins export their descriptor with this, e.g.
 *     KFG_PLUGIN_EXPORT = { KFG_PLUGIN_HEADER, .kind = KFG_KIND_ADAPTER, ... };
 */
#define KFG_PLUGIN_EXPORT                                                   \
    __attribute__((visibility("default"))) const struct kfg_plugin          \
        kfg_plugin_descriptor

#ifdef __cplusplus
}
#endif
#endif /* KFGATE_PLUGIN_H */
