/*
 * libFuzzer harness for the bus client's decoders of untrusted network
 * bytes: feed messages (batch or heartbeat), replay answers and outbound
 * acknowledgements. The first byte picks the decoder, the rest is the
 * message. Besides the sanitizers, it checks what the client relies on:
 * every slice lies inside the input, record seqs increase (and exceed prev),
 * replay records lie below next, ack strings are NUL-terminated.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kfgate/bus.h"

static void inside(const uint8_t *in, size_t len, const void *p, size_t n)
{
    const uint8_t *q = p;
    if (n == 0)
        return;
    if (!q || q < in || q > in + len || n > (size_t)(in + len - q))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0] % 3;
    /* A heap copy of exactly the message, so ASan sees any over-read. */
    size_t len = size - 1;
    uint8_t *msg = malloc(len ? len : 1);
    if (!msg)
        return 0;
    memcpy(msg, data + 1, len);
    struct kfg_bus_wire w;
    struct kfg_bus_ack a;
    int rv;
    switch (sel) {
    case 0:
        rv = kfg_bus_decode_feed(msg, len, &w);
        if (rv == 0) {
            if (w.kind != KFG_BUS_WIRE_BATCH && w.kind != KFG_BUS_WIRE_HEARTBEAT)
                abort();
            inside(msg, len, w.topic, w.topic_len);
            for (size_t i = 0; i < w.n; i++) {
                inside(msg, len, w.recs[i].topic, w.recs[i].topic_len);
                inside(msg, len, w.recs[i].env, w.recs[i].env_len);
                if (w.kind == KFG_BUS_WIRE_BATCH &&
                    w.recs[i].seq <= (i ? w.recs[i - 1].seq : w.prev))
                    abort();
            }
        } else if (w.recs || w.n) {
            abort();
        }
        kfg_bus_wire_clear(&w);
        break;
    case 1:
        rv = kfg_bus_decode_replay(msg, len, &w);
        if (rv == 0) {
            if (w.kind == KFG_BUS_WIRE_ERROR) {
                inside(msg, len, w.error, w.error_len);
                if (w.n)
                    abort();
            } else if (w.kind != KFG_BUS_WIRE_REPLAY) {
                abort();
            }
            for (size_t i = 0; i < w.n; i++) {
                inside(msg, len, w.recs[i].topic, w.recs[i].topic_len);
                inside(msg, len, w.recs[i].env, w.recs[i].env_len);
                if (w.recs[i].seq == 0 || w.recs[i].seq >= w.next ||
                    (i && w.recs[i].seq <= w.recs[i - 1].seq))
                    abort();
            }
        }
        kfg_bus_wire_clear(&w);
        break;
    default:
        rv = kfg_bus_decode_ack(msg, len, &a);
        if (strnlen(a.id, sizeof a.id) == sizeof a.id ||
            strnlen(a.error, sizeof a.error) == sizeof a.error ||
            strnlen(a.reason, sizeof a.reason) == sizeof a.reason)
            abort();
        if (rv == 0 && !a.ok && !a.error[0])
            abort();
        break;
    }
    free(msg);
    return 0;
}
