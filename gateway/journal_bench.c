/*
 * Journal throughput and commit latency (not a test; the Makefile ignores
 * *_bench.c). Build by hand:
 *
 *   gcc -std=gnu11 -O2 -D_GNU_SOURCE -Igateway -Igateway/include -pthread \
 *       gateway/journal_bench.c gateway/journal.c gateway/buf.c gateway/log.c \
 *       -o build/journal_bench
 *   build/journal_bench [records] [threads] [payload_bytes] [dir] [rate]
 *
 * For fsync never / interval 10 ms / always: `threads` appenders push
 * `records` records of `payload_bytes` (each with a unique 16-byte
 * idempotency key, so the dedupe index is exercised), retrying on KFG_AGAIN.
 * Reports committed appends/s (first append to last completion), fsyncs,
 * mean batch, and append-to-completion latency p50/p99. rate (appends/s in
 * total, 0 = as fast as possible) paces the appenders, for latency at a
 * given load rather than under saturation (where latency is queueing).
 */
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "journal.h"
#include "kfgate/plugin.h"
#include "log.h"

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct bench {
    struct kfg_journal *j;
    size_t records, threads, plen;
    uint64_t *t_start;     /* by seq */
    uint32_t *lat_us;      /* by seq */
    atomic_size_t done;
    atomic_size_t next;    /* record index handed to appenders */
    double rate;
    uint64_t t0;
    char payload[65536];
};

static struct bench B;

static int enc(void *arg, uint64_t seq, int64_t ms, struct kfg_buf *out)
{
    (void)arg, (void)ms;
    if (seq < B.records + 1)
        B.t_start[seq] = now_ns();
    kfg_buf_append(out, B.payload, B.plen);
    return 0;
}

static void on_done(void *arg, int result, uint64_t seq, int dup)
{
    (void)arg;
    if (result != KFG_OK || dup) {
        fprintf(stderr, "unexpected completion %d dup %d\n", result, dup);
        exit(1);
    }
    if (seq < B.records + 1)
        B.lat_us[seq] = (uint32_t)((now_ns() - B.t_start[seq]) / 1000);
    atomic_fetch_add(&B.done, 1);
}

static void *appender(void *arg)
{
    (void)arg;
    for (;;) {
        size_t i = atomic_fetch_add(&B.next, 1);
        if (i >= B.records)
            return NULL;
        if (B.rate > 0) {
            uint64_t due = B.t0 + (uint64_t)((double)i * 1e9 / B.rate);
            while (now_ns() < due)
                ;
        }
        char key[17];
        snprintf(key, sizeof(key), "%016zx", i);
        int rc;
        while ((rc = kfg_journal_append(B.j, key, 16, enc, NULL, on_done, NULL)) == KFG_AGAIN)
            sched_yield();
        if (rc != KFG_OK) {
            fprintf(stderr, "append: %d\n", rc);
            exit(1);
        }
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static void run(const char *dir, int policy, const char *name)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        exit(1);
    struct kfg_journal_opts o;
    kfg_journal_opts_init(&o);
    o.dir = dir;
    o.fsync = policy;
    o.interval_ms = 10;
    char err[512];
    if (kfg_journal_open(&o, &B.j, err, sizeof(err)) != KFG_OK) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    atomic_store(&B.done, 0);
    atomic_store(&B.next, 0);
    memset(B.lat_us, 0, (B.records + 1) * sizeof(*B.lat_us));
    pthread_t th[64];
    uint64_t t0 = now_ns();
    B.t0 = t0;
    for (size_t t = 0; t < B.threads; t++)
        pthread_create(&th[t], NULL, appender, NULL);
    for (size_t t = 0; t < B.threads; t++)
        pthread_join(th[t], NULL);
    while (atomic_load(&B.done) < B.records)
        usleep(100);
    uint64_t el = now_ns() - t0;
    struct kfg_journal_stats st;
    kfg_journal_stats(B.j, &st);
    kfg_journal_close(B.j);
    qsort(B.lat_us + 1, B.records, sizeof(uint32_t), cmp_u32);
    double secs = (double)el / 1e9;
    printf("%-12s %9.0f appends/s  %6.1f MB/s  fsyncs %6" PRIu64 "  batches %6" PRIu64
           "  mean batch %7.1f  p50 %6.2f ms  p99 %6.2f ms\n",
           name, (double)B.records / secs, (double)st.bytes_written / secs / 1e6, st.fsyncs,
           st.batches, st.batches ? (double)st.batch_records / (double)st.batches : 0.0,
           B.lat_us[1 + B.records / 2] / 1000.0, B.lat_us[1 + B.records * 99 / 100] / 1000.0);
}

int main(int argc, char **argv)
{
    B.records = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
    B.threads = argc > 2 ? strtoul(argv[2], NULL, 10) : 4;
    B.plen = argc > 3 ? strtoul(argv[3], NULL, 10) : 300;
    const char *dir = argc > 4 ? argv[4] : "/tmp/kfj_bench";
    B.rate = argc > 5 ? strtod(argv[5], NULL) : 0;
    if (B.threads < 1 || B.threads > 64 || B.plen > sizeof(B.payload) || !B.records)
        return 2;
    for (size_t i = 0; i < B.plen; i++)
        B.payload[i] = (char)('a' + i % 26);
    B.t_start = calloc(B.records + 1, sizeof(*B.t_start));
    B.lat_us = calloc(B.records + 1, sizeof(*B.lat_us));
    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_WARN, 2);
    printf("%zu records x %zu B payload (+16 B key), %zu appender threads, dir %s, rate %s\n",
           B.records, B.plen, B.threads, dir, B.rate > 0 ? argv[5] : "max");
    run(dir, KFG_FSYNC_NEVER, "never");
    run(dir, KFG_FSYNC_INTERVAL, "interval10ms");
    run(dir, KFG_FSYNC_ALWAYS, "always");
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : 1;
}
