/* bus_sub: the kfgate-tail-like subscriber of the bus benchmark. Subscribes
 * through kfgate/bus.h (gap fill included), counts COUNT records whose text
 * carries "T0=<CLOCK_MONOTONIC ns>;" (the flood adapter's stamp), and prints
 * the rate between the first and the last, the end-to-end latency
 * percentiles and the library's gap counters.
 *
 *   bus_sub FEED_URL REPLAY_URL COUNT [IDLE_MS]
 */
#define _GNU_SOURCE
#include <kfgate/bus.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "../../gateway/tools/tool_exit.h"

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bus_sub FEED_URL REPLAY_URL COUNT [IDLE_MS]\n");
        return 2;
    }
    long count = atol(argv[3]);
    int idle = argc > 4 ? atoi(argv[4]) : 10000;
    struct kfg_bus_opts o = { .feed_url = argv[1], .replay_url = argv[2] };
    struct kfg_bus *b;
    struct kfg_bus_sub *s;
    if (kfg_bus_open(&b, &o) != 0 || kfg_bus_sub(b, "", 0, &s) != 0) {
        fprintf(stderr, "bus_sub: cannot subscribe\n");
        return 1;
    }
    uint64_t *lat = malloc(sizeof(*lat) * (size_t)count);
    long got = 0, seen = 0;
    uint64_t first = 0, last = 0, prev_seq = 0, disorder = 0;
    while (got < count) {
        struct kfg_bus_rec r;
        int rv = kfg_bus_next(s, &r, idle);
        if (rv == KFG_BUS_ETIMEDOUT)
            break;
        if (rv != 0)
            continue;
        if (r.kind != KFG_BUS_RECORD)
            continue;
        uint64_t now = mono_ns();
        seen++;
        if (r.seq <= prev_seq)
            disorder++;
        prev_seq = r.seq;
        const char *t0 = memmem(r.env, r.env_len, "T0=", 3);
        if (!t0)
            continue;
        uint64_t sent = strtoull(t0 + 3, NULL, 10);
        lat[got++] = now > sent ? now - sent : 0;
        if (!first)
            first = now;
        last = now;
    }
    struct kfg_bus_stats st;
    kfg_bus_sub_stats(s, &st);
    qsort(lat, (size_t)got, sizeof(*lat), cmp_u64);
    double secs = got > 1 ? (double)(last - first) / 1e9 : 0;
    printf("received=%ld lost=%ld rate=%.0f p50_ms=%.3f p99_ms=%.3f gaps=%llu "
           "gap_records=%llu replayed=%llu duplicates=%llu disorder=%llu\n",
           got, count - got, secs > 0 ? (double)got / secs : 0,
           got ? (double)lat[got / 2] / 1e6 : 0,
           got ? (double)lat[(size_t)((double)got * 0.99)] / 1e6 : 0,
           (unsigned long long)st.gaps, (unsigned long long)st.gap_records,
           (unsigned long long)st.replayed, (unsigned long long)st.duplicates,
           (unsigned long long)disorder);
    free(lat);
    tool_exit_guard(0);
    kfg_bus_sub_free(s);
    kfg_bus_close(b);
    return got == count ? 0 : 1;
}
