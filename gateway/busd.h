/*
 * The gateway's side of the message bus (spec/bus.md): every envelope is
 * appended to the journal before anyone is told it was accepted, then
 * published on the NNG feed in per-topic batches; a replay service answers
 * from the journal, and an outbound service takes the core's envelopes,
 * journals them, and hands them to the owning adapter with retries and
 * status receipts.
 *
 * This is the seam for other backends: adapters and filters reach the bus
 * only through host->emit and host->delivered, which call kfg_busd_emit and
 * kfg_busd_delivered below, and nothing else in the gateway knows about the
 * journal or NNG. A distributed backend would implement these same four
 * calls (start, stop, emit, delivered) over its own engine.
 */
#ifndef KFG_BUSD_H
#define KFG_BUSD_H

#include <stdint.h>

#include "buf.h"
#include "kfgate/plugin.h"

struct kfg_config;
struct kfg_gateway;
struct kfg_instance;
struct kfg_msg;

/* Opens the journal (recovering a torn tail), scans it for each topic's last
 * sequence, and starts the NNG endpoints. Control loop, before workers run.
 * 0, or -1 with the reason in errs. */
int kfg_busd_start(struct kfg_gateway *gw, const struct kfg_config *cfg, struct kfg_buf *errs);

/* Stops taking outbound work, closes the NNG endpoints, flushes and closes
 * the journal; pending completions still run (or are dropped with their
 * loop). Control loop, after the workers stopped. */
void kfg_busd_stop(struct kfg_gateway *gw);

/* host->emit after the filters: journal (with dedupe on the message's
 * idempotency key), publish, then done on the calling loop. Takes m on
 * KFG_OK. KFG_AGAIN: over the journal's queue limit. */
int kfg_busd_emit(struct kfg_instance *ins, struct kfg_msg *m, kfg_emit_done done,
                  kfg_emit_done2 done2, void *arg);   /* one of done, done2 */

/* host->delivered, delivered2 and delivery_attempt. */
void kfg_busd_delivered(struct kfg_delivery *d, int result, const char *channel_code,
                       const char *detail);
void kfg_busd_delivered2(struct kfg_delivery *d, int result, const char *channel_code,
                         const char *detail, uint64_t retry_after_ms);
unsigned kfg_busd_delivery_attempt(const struct kfg_delivery *d);

/* host->replay: reads on the replay thread, answers on the calling loop. */
int kfg_busd_replay(struct kfg_instance *ins, const struct kfg_replay_query *q,
                    kfg_replay_each each, kfg_replay_done done, void *arg);

/* An outbound envelope from inside the gateway (POST /admin/deliver): the
 * same path as one from the outbound endpoint, with at most max_attempts
 * delivery attempts (0 = [bus] retry_max). accept gets ok/seq or an error
 * with a reason; final, when set and the envelope was accepted, gets the
 * outcome ("sent" or "failed") once the delivery ends. Both run on the
 * control loop; call from there. */
typedef void (*kfg_busd_accept_fn)(void *arg, int result, const char *id, uint64_t seq,
                                   int duplicate, const char *error, const char *reason);
typedef void (*kfg_busd_final_fn)(void *arg, const char *id, uint64_t seq,
                                  const char *status, const char *code, const char *detail);
void kfg_busd_submit(const void *envelope, size_t len, unsigned max_attempts,
                     kfg_busd_accept_fn accept, kfg_busd_final_fn final, void *arg);

#endif
