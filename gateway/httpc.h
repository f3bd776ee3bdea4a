/*
 * Outbound HTTP client: one libcurl multi handle per event loop, driven by
 * that loop (CURLMOPT_SOCKETFUNCTION / TIMERFUNCTION on libevent), so
 * plugins make non-blocking HTTP calls without threads. Not thread-safe: a
 * client belongs to one loop and is used only from its thread.
 */
#ifndef KFG_HTTPC_H
#define KFG_HTTPC_H

#include <stddef.h>
#include <stdint.h>

#include "kfgate/plugin.h"   /* struct kfg_http_call, kfg_http_done */

struct event_base;
struct kfg_httpc;

/* A zero field takes the built-in default (the values in the comments, and
 * 1024 for max_inflight). */
struct kfg_httpc_limits {
    uint32_t default_timeout_ms;   /* when call->timeout_ms is 0 (e.g. 10000) */
    uint32_t connect_timeout_ms;   /* e.g. 3000 */
    size_t max_response_bytes;     /* larger bodies fail the call, e.g. 4 MiB */
    unsigned max_inflight;         /* beyond it calls fail with KFG_AGAIN */
};

struct kfg_httpc *kfg_httpc_new(struct event_base *base,
                                const struct kfg_httpc_limits *limits);
/* Cancels every call in flight without calling their done callbacks. */
void kfg_httpc_free(struct kfg_httpc *c);
/* Starts a call; everything in `call` is copied. done(arg, ...) runs later on
 * the loop, exactly once, unless the call is cancelled (kfg_httpc_cancel_owner
 * or kfg_httpc_free). owner groups calls for cancellation (the instance). */
int kfg_httpc_call(struct kfg_httpc *c, const void *owner,
                   const struct kfg_http_call *call, kfg_http_done done,
                   void *arg);
/* The same with the ABI 1.1 completion (struct kfg_http_response: the
 * final response's headers and the elapsed time). */
int kfg_httpc_call2(struct kfg_httpc *c, const void *owner,
                    const struct kfg_http_call *call, kfg_http_done2 done,
                    void *arg);
/* Cancels the calls started with this owner, without callbacks. */
void kfg_httpc_cancel_owner(struct kfg_httpc *c, const void *owner);
unsigned kfg_httpc_inflight(const struct kfg_httpc *c);

#endif
