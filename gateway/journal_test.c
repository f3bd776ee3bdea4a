/*
 * The durable journal (journal.h): round trips, recovery of torn and corrupt
 * tails, dedupe (committed, pending, across reopen, expiry), rollover,
 * retention, back-pressure, concurrent appenders, fsync policies, close, and
 * a crash test that SIGKILLs an appending child at random moments and checks
 * that every acknowledged record survives exactly once and intact.
 * Timeouts only guard against hangs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "journal.h"
#include "log.h"

#define WAIT_MS 20000

/* ------------------------------------------------------------------------ */
/* fixture: a fresh temporary directory */

struct fx {
    char dir[64];
};

static void rm_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    char p[512];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->dir, sizeof(f->dir), "/tmp/kfj_test.XXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    rm_dir(f->dir);
    free(f);
    return 0;
}

static struct kfg_journal *jopen(const char *dir, int policy, size_t segb,
                                 void (*tweak)(struct kfg_journal_opts *))
{
    struct kfg_journal_opts o;
    kfg_journal_opts_init(&o);
    o.dir = dir;
    o.fsync = policy;
    o.interval_ms = 5;
    if (segb)
        o.segment_bytes = segb;
    if (tweak)
        tweak(&o);
    struct kfg_journal *j = NULL;
    char err[512];
    int rc = kfg_journal_open(&o, &j, err, sizeof(err));
    if (rc != KFG_OK)
        fprintf(stderr, "open failed: %s\n", err);
    assert_int_equal(rc, KFG_OK);
    assert_non_null(j);
    return j;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------------ */
/* encode: a payload given by the caller; counts calls */

struct payload {
    const void *p;
    size_t len;
    atomic_int *calls;
    uint64_t seq_seen;
};

static int enc_payload(void *arg, uint64_t seq, int64_t ms, struct kfg_buf *out)
{
    struct payload *pl = arg;
    (void)ms;
    pl->seq_seen = seq;
    if (pl->calls)
        atomic_fetch_add(pl->calls, 1);
    kfg_buf_append(out, pl->p, pl->len);
    return 0;
}

/* Writes "seq=<seq>" then pads to len with a pattern derived from seq. */
static int enc_seqpat(void *arg, uint64_t seq, int64_t ms, struct kfg_buf *out)
{
    size_t len = (size_t)(uintptr_t)arg;
    (void)ms;
    char hdr[32];
    int n = snprintf(hdr, sizeof(hdr), "seq=%" PRIu64 ";", seq);
    kfg_buf_append(out, hdr, (size_t)n);
    for (size_t i = (size_t)n; i < len; i++)
        kfg_buf_putc(out, (char)('a' + (seq + i) % 26));
    return 0;
}

static int check_seqpat(uint64_t seq, const void *p, size_t len)
{
    char hdr[32];
    int n = snprintf(hdr, sizeof(hdr), "seq=%" PRIu64 ";", seq);
    if (len < (size_t)n || memcmp(p, hdr, (size_t)n) != 0)
        return 0;
    const char *c = p;
    for (size_t i = (size_t)n; i < len; i++)
        if (c[i] != (char)('a' + (seq + i) % 26))
            return 0;
    return 1;
}

static int enc_fail(void *arg, uint64_t seq, int64_t ms, struct kfg_buf *out)
{
    (void)arg, (void)seq, (void)ms;
    kfg_buf_puts(out, "partial");
    return KFG_EINVAL;
}

/* ------------------------------------------------------------------------ */
/* completion log */

struct done_ev {
    int result;
    uint64_t seq;
    int dup;
    uintptr_t tag;
};

struct dlog {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct done_ev *ev;
    size_t n, cap;
    /* blocking: the completion with tag == block_tag waits for release */
    uintptr_t block_tag;
    int blocked, released;
    struct kfg_journal *j;
    uint64_t fsyncs_at_first;
};

struct dtag {
    struct dlog *log;
    uintptr_t tag;
};

static void dlog_init(struct dlog *d)
{
    memset(d, 0, sizeof(*d));
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cv, NULL);
    d->block_tag = (uintptr_t)-1;
}

static void dlog_free(struct dlog *d)
{
    free(d->ev);
    pthread_mutex_destroy(&d->mu);
    pthread_cond_destroy(&d->cv);
}

static void on_done(void *arg, int result, uint64_t seq, int dup)
{
    struct dtag *t = arg;
    struct dlog *d = t->log;
    uint64_t fs = 0;
    if (d->j) {
        struct kfg_journal_stats st;
        kfg_journal_stats(d->j, &st);
        fs = st.fsyncs;
    }
    pthread_mutex_lock(&d->mu);
    if (d->n == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 64;
        d->ev = realloc(d->ev, d->cap * sizeof(*d->ev));
    }
    if (d->n == 0)
        d->fsyncs_at_first = fs;
    d->ev[d->n++] = (struct done_ev){ result, seq, dup, t->tag };
    pthread_cond_broadcast(&d->cv);
    if (t->tag == d->block_tag) {
        d->blocked = 1;
        pthread_cond_broadcast(&d->cv);
        while (!d->released)
            pthread_cond_wait(&d->cv, &d->mu);
    }
    pthread_mutex_unlock(&d->mu);
}

static int dlog_wait(struct dlog *d, size_t n)
{
    int64_t end = mono_ms() + WAIT_MS;
    pthread_mutex_lock(&d->mu);
    while (d->n < n && mono_ms() < end) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 10 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&d->cv, &d->mu, &ts);
    }
    int ok = d->n >= n;
    pthread_mutex_unlock(&d->mu);
    return ok;
}

static void dlog_wait_blocked(struct dlog *d)
{
    int64_t end = mono_ms() + WAIT_MS;
    pthread_mutex_lock(&d->mu);
    while (!d->blocked && mono_ms() < end) {
        pthread_mutex_unlock(&d->mu);
        usleep(1000);
        pthread_mutex_lock(&d->mu);
    }
    int b = d->blocked;
    pthread_mutex_unlock(&d->mu);
    assert_true(b);
}

static void dlog_release(struct dlog *d)
{
    pthread_mutex_lock(&d->mu);
    d->released = 1;
    pthread_cond_broadcast(&d->cv);
    pthread_mutex_unlock(&d->mu);
}

/* ------------------------------------------------------------------------ */
/* read collector */

struct rrec {
    uint64_t seq;
    int64_t ms;
    char key[64];
    size_t keylen;
    uint8_t *payload;
    size_t len;
};

struct rlog {
    struct rrec *r;
    size_t n, cap;
    size_t stop_after;   /* 0: never */
};

static int on_read(void *arg, uint64_t seq, int64_t ms, const void *key, size_t keylen,
                   const void *payload, size_t len)
{
    struct rlog *l = arg;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->r = realloc(l->r, l->cap * sizeof(*l->r));
    }
    struct rrec *r = &l->r[l->n++];
    r->seq = seq;
    r->ms = ms;
    r->keylen = keylen < sizeof(r->key) ? keylen : sizeof(r->key) - 1;
    memcpy(r->key, key, r->keylen);
    r->key[r->keylen] = '\0';
    r->payload = malloc(len ? len : 1);
    memcpy(r->payload, payload, len);
    r->len = len;
    return l->stop_after && l->n >= l->stop_after;
}

static void rlog_free(struct rlog *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->r[i].payload);
    free(l->r);
    memset(l, 0, sizeof(*l));
}

static int read_all(struct kfg_journal *j, struct rlog *l)
{
    return kfg_journal_read(j, 0, 0, on_read, l);
}

/* Appends n records of seqpat(len) with no key; waits for their completions. */
static void append_n(struct kfg_journal *j, int n, size_t len)
{
    struct dlog d;
    dlog_init(&d);
    struct dtag t = { &d, 0 };
    for (int i = 0; i < n; i++) {
        int rc;
        while ((rc = kfg_journal_append(j, NULL, 0, enc_seqpat, (void *)(uintptr_t)len, on_done,
                                        &t)) == KFG_AGAIN)
            usleep(100);
        assert_int_equal(rc, KFG_OK);
    }
    assert_true(dlog_wait(&d, (size_t)n));
    for (int i = 0; i < n; i++)
        assert_int_equal(d.ev[i].result, KFG_OK);
    dlog_free(&d);
}

static char *seg_path(const char *dir, uint64_t first, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s/%020" PRIu64 ".kfj", dir, first);
    return buf;
}

static off_t file_size(const char *p)
{
    struct stat st;
    if (stat(p, &st) < 0)
        return -1;
    return st.st_size;
}

static size_t count_segments(const char *dir)
{
    DIR *d = opendir(dir);
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)))
        if (strlen(de->d_name) == 24 && strstr(de->d_name, ".kfj"))
            n++;
    closedir(d);
    return n;
}

/* ------------------------------------------------------------------------ */
/* tests */

static void test_crc32c(void **state)
{
    (void)state;
    assert_int_equal(kfg_crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(kfg_crc32c_sw(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(kfg_crc32c(0, "", 0), 0);
    uint8_t buf[1100];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (uint8_t)(i * 131 + 7);
    for (size_t off = 0; off < 9; off++)
        for (size_t len = 0; len < 1090; len += 37) {
            uint32_t a = kfg_crc32c(0, buf + off, len);
            assert_int_equal(a, kfg_crc32c_sw(0, buf + off, len));
            /* chaining */
            uint32_t c = kfg_crc32c(0, buf + off, len / 3);
            c = kfg_crc32c(c, buf + off + len / 3, len - len / 3);
            assert_int_equal(a, c);
        }
}

static void test_roundtrip(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_ALWAYS, 0, NULL);
    assert_int_equal(kfg_journal_last_seq(j), 0);
    assert_int_equal(kfg_journal_first_seq(j), 1);
    struct dlog d;
    dlog_init(&d);
    struct dtag t = { &d, 0 };
    char payloads[100][64];
    struct payload pl[100];
    for (int i = 0; i < 100; i++) {
        int n = snprintf(payloads[i], sizeof(payloads[i]), "payload number %d", i);
        pl[i] = (struct payload){ payloads[i], (size_t)n, NULL, 0 };
        char key[16];
        int kl = snprintf(key, sizeof(key), "key%d", i);
        assert_int_equal(kfg_journal_append(j, key, (i % 2) ? (size_t)kl : 0, enc_payload, &pl[i],
                                            on_done, &t),
                         KFG_OK);
        assert_int_equal(pl[i].seq_seen, (uint64_t)i + 1);
    }
    assert_int_equal(kfg_journal_last_seq(j), 100);
    assert_true(dlog_wait(&d, 100));
    for (int i = 0; i < 100; i++) {
        assert_int_equal(d.ev[i].result, KFG_OK);
        assert_int_equal(d.ev[i].seq, (uint64_t)i + 1);
        assert_int_equal(d.ev[i].dup, 0);
    }
    assert_int_equal(kfg_journal_committed_seq(j), 100);
    struct rlog l = { 0 };
    assert_int_equal(read_all(j, &l), 100);
    int64_t prev_ms = 0;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(l.r[i].seq, (uint64_t)i + 1);
        assert_int_equal(l.r[i].len, pl[i].len);
        assert_memory_equal(l.r[i].payload, payloads[i], pl[i].len);
        if (i % 2) {
            char key[16];
            snprintf(key, sizeof(key), "key%d", i);
            assert_string_equal(l.r[i].key, key);
        } else {
            assert_int_equal(l.r[i].keylen, 0);
        }
        assert_true(l.r[i].ms >= prev_ms);
        assert_true(l.r[i].ms > 1600000000000LL);
        prev_ms = l.r[i].ms;
    }
    rlog_free(&l);
    /* a window, and a stop from the callback */
    assert_int_equal(kfg_journal_read(j, 50, 10, on_read, &l), 10);
    assert_int_equal(l.r[0].seq, 50);
    assert_int_equal(l.r[9].seq, 59);
    rlog_free(&l);
    l.stop_after = 3;
    assert_int_equal(kfg_journal_read(j, 90, 0, on_read, &l), 3);
    rlog_free(&l);
    assert_int_equal(kfg_journal_read(j, 101, 0, on_read, &l), 0);
    /* enc failing abandons the append without using a sequence number */
    assert_int_equal(kfg_journal_append(j, "zz", 2, enc_fail, NULL, on_done, &t), KFG_EINVAL);
    assert_int_equal(kfg_journal_last_seq(j), 100);
    assert_int_equal(kfg_journal_append(j, NULL, 0, NULL, NULL, NULL, NULL), KFG_EINVAL);
    struct kfg_journal_stats st;
    kfg_journal_stats(j, &st);
    assert_int_equal(st.appends, 100);
    assert_int_equal(st.pending, 0);
    assert_int_equal(st.segments, 1);
    assert_true(st.fsyncs >= 1);
    assert_true(st.batches >= 1 && st.batch_records == 100);
    /* the key of the failed encode was not recorded */
    struct payload p2 = { "x", 1, NULL, 0 };
    assert_int_equal(kfg_journal_append(j, "zz", 2, enc_payload, &p2, on_done, &t), KFG_OK);
    assert_true(dlog_wait(&d, 101));
    assert_int_equal(d.ev[100].dup, 0);
    assert_int_equal(d.ev[100].seq, 101);
    kfg_journal_close(j);
    dlog_free(&d);
}

static void test_reopen_continues(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_INTERVAL, 0, NULL);
    append_n(j, 10, 40);
    kfg_journal_close(j);
    j = jopen(f->dir, KFG_FSYNC_INTERVAL, 0, NULL);
    assert_int_equal(kfg_journal_last_seq(j), 10);
    assert_int_equal(kfg_journal_committed_seq(j), 10);
    assert_int_equal(kfg_journal_first_seq(j), 1);
    append_n(j, 5, 40);
    assert_int_equal(kfg_journal_last_seq(j), 15);
    struct rlog l = { 0 };
    assert_int_equal(read_all(j, &l), 15);
    for (size_t i = 0; i < 15; i++) {
        assert_int_equal(l.r[i].seq, i + 1);
        assert_true(check_seqpat(l.r[i].seq, l.r[i].payload, l.r[i].len));
    }
    rlog_free(&l);
    /* a second open of the same directory is refused */
    struct kfg_journal_opts o;
    kfg_journal_opts_init(&o);
    o.dir = f->dir;
    struct kfg_journal *j2 = NULL;
    char err[256];
    assert_int_equal(kfg_journal_open(&o, &j2, err, sizeof(err)), KFG_EEXIST);
    assert_null(j2);
    kfg_journal_close(j);
}

static void reopen_expect(const char *dir, uint64_t last, off_t want_size, const char *seg)
{
    struct kfg_journal *j = jopen(dir, KFG_FSYNC_ALWAYS, 0, NULL);
    assert_int_equal(kfg_journal_last_seq(j), last);
    struct rlog l = { 0 };
    assert_int_equal(read_all(j, &l), (int)last);
    for (size_t i = 0; i < l.n; i++) {
        assert_int_equal(l.r[i].seq, i + 1);
        assert_true(check_seqpat(l.r[i].seq, l.r[i].payload, l.r[i].len));
    }
    rlog_free(&l);
    assert_int_equal(file_size(seg), want_size);
    kfg_journal_close(j);
}

/* Records of seqpat(100) with no key are 8 + 18 + 100 = 126 bytes. */
#define REC100 126

static void test_torn_tail(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_ALWAYS, 0, NULL);
    append_n(j, 20, 100);
    kfg_journal_close(j);
    char seg[256];
    seg_path(f->dir, 1, seg, sizeof(seg));
    assert_int_equal(file_size(seg), 16 + 20 * REC100);

    /* cut mid-record: the 20th is gone, 19 remain */
    assert_int_equal(truncate(seg, 16 + 19 * REC100 + 60), 0);
    reopen_expect(f->dir, 19, 16 + 19 * REC100, seg);

    /* cut inside a record header */
    assert_int_equal(truncate(seg, 16 + 18 * REC100 + 3), 0);
    reopen_expect(f->dir, 18, 16 + 18 * REC100, seg);

    /* garbage appended after the last good record */
    int fd = open(seg, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    uint8_t junk[777];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(rand() & 0xff);
    assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    /* and a zero-filled block (what a crashed filesystem may leave) */
    memset(junk, 0, sizeof(junk));
    assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
    close(fd);
    reopen_expect(f->dir, 18, 16 + 18 * REC100, seg);

    /* a plausible-looking header whose body runs past the end */
    fd = open(seg, O_WRONLY | O_APPEND);
    uint8_t hdr[12] = { 200, 0, 0, 0, 1, 2, 3, 4, 19, 0, 0, 0 };
    assert_int_equal(write(fd, hdr, sizeof(hdr)), (ssize_t)sizeof(hdr));
    close(fd);
    reopen_expect(f->dir, 18, 16 + 18 * REC100, seg);

    /* the sequence continues from the last good record */
    j = jopen(f->dir, KFG_FSYNC_ALWAYS, 0, NULL);
    append_n(j, 2, 100);
    assert_int_equal(kfg_journal_last_seq(j), 20);
    kfg_journal_close(j);
    reopen_expect(f->dir, 20, 16 + 20 * REC100, seg);

    /* a torn segment header (a crash right after creating the file) */
    assert_int_equal(truncate(seg, 7), 0);
    j = jopen(f->dir, KFG_FSYNC_ALWAYS, 0, NULL);
    assert_int_equal(kfg_journal_last_seq(j), 0);
    append_n(j, 1, 100);
    assert_int_equal(kfg_journal_last_seq(j), 1);
    kfg_journal_close(j);
}

static void flip_byte(const char *path, off_t at)
{
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    uint8_t b;
    assert_int_equal(pread(fd, &b, 1, at), 1);
    b ^= 0x5a;
    assert_int_equal(pwrite(fd, &b, 1, at), 1);
    close(fd);
}

static void test_corrupt_middle_of_last(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_NEVER, 0, NULL);
    append_n(j, 20, 100);
    kfg_journal_close(j);
    char seg[256];
    seg_path(f->dir, 1, seg, sizeof(seg));
    /* a payload byte of record 10: records 10..20 are cut */
    flip_byte(seg, 16 + 9 * REC100 + 8 + 18 + 50);
    reopen_expect(f->dir, 9, 16 + 9 * REC100, seg);
    /* a length field of record 5 */
    flip_byte(seg, 16 + 4 * REC100 + 1);
    reopen_expect(f->dir, 4, 16 + 4 * REC100, seg);
    /* the sequence field of record 3 (CRC catches it) */
    flip_byte(seg, 16 + 2 * REC100 + 8);
    reopen_expect(f->dir, 2, 16 + 2 * REC100, seg);
}

static void test_corrupt_nonlast_segment(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_NEVER, 4096, NULL);
    append_n(j, 100, 100);   /* 32 records per 4 KiB segment */
    struct kfg_journal_stats st;
    kfg_journal_stats(j, &st);
    assert_int_equal(st.segments, 4);
    kfg_journal_close(j);
    char seg[256], seg2[256];
    seg_path(f->dir, 1, seg, sizeof(seg));
    seg_path(f->dir, 33, seg2, sizeof(seg2));
    assert_int_equal(file_size(seg), 16 + 32 * REC100);
    assert_int_equal(file_size(seg2), 16 + 32 * REC100);
    off_t bad = 16 + 5 * REC100;
    flip_byte(seg, bad + 40);

    struct kfg_journal_opts o;
    kfg_journal_opts_init(&o);
    o.dir = f->dir;
    o.segment_bytes = 4096;
    char err[512];
    struct kfg_journal *jj = NULL;
    assert_int_equal(kfg_journal_open(&o, &jj, err, sizeof(err)), KFG_EFAIL);
    assert_null(jj);
    assert_non_null(strstr(err, seg));
    char offs[64];
    snprintf(offs, sizeof(offs), "offset %lld", (long long)bad);
    assert_non_null(strstr(err, offs));
    assert_non_null(strstr(err, "checksum"));
    assert_int_equal(file_size(seg), 16 + 32 * REC100);   /* untouched */

    /* a bad header in a middle segment is refused too */
    flip_byte(seg2, 2);
    assert_int_equal(kfg_journal_open(&o, &jj, err, sizeof(err)), KFG_EFAIL);
    assert_non_null(strstr(err, seg));
    flip_byte(seg2, 2);

    /* with truncate_corrupt: cut there, keep the rest, with a gap */
    o.truncate_corrupt = 1;
    assert_int_equal(kfg_journal_open(&o, &jj, err, sizeof(err)), KFG_OK);
    assert_int_equal(file_size(seg), bad);
    assert_int_equal(kfg_journal_last_seq(jj), 100);
    struct rlog l = { 0 };
    assert_int_equal(read_all(jj, &l), 5 + 68);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(l.r[i].seq, i + 1);
    for (size_t i = 5; i < l.n; i++)
        assert_int_equal(l.r[i].seq, 33 + (i - 5));
    for (size_t i = 0; i < l.n; i++)
        assert_true(check_seqpat(l.r[i].seq, l.r[i].payload, l.r[i].len));
    rlog_free(&l);
    /* reading from inside the gap starts after it */
    assert_int_equal(kfg_journal_read(jj, 10, 1, on_read, &l), 1);
    assert_int_equal(l.r[0].seq, 33);
    rlog_free(&l);
    kfg_journal_close(jj);
    /* and the repaired journal opens without the option afterwards */
    j = jopen(f->dir, KFG_FSYNC_NEVER, 4096, NULL);
    assert_int_equal(kfg_journal_last_seq(j), 100);
    kfg_journal_close(j);
}

static void test_dedupe_committed_and_reopen(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_ALWAYS, 0, NULL);
    struct dlog d;
    dlog_init(&d);
    struct dtag t = { &d, 0 };
    atomic_int calls = 0;
    struct payload pl = { "hello", 5, &calls, 0 };
    assert_int_equal(kfg_journal_append(j, "msg-1", 5, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_int_equal(kfg_journal_append(j, "msg-2", 5, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_true(dlog_wait(&d, 2));
    assert_int_equal(calls, 2);
    assert_int_equal(kfg_journal_append(j, "msg-1", 5, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_true(dlog_wait(&d, 3));
    assert_int_equal(calls, 2);   /* enc not called for the duplicate */
    assert_int_equal(d.ev[2].result, KFG_OK);
    assert_int_equal(d.ev[2].dup, 1);
    assert_int_equal(d.ev[2].seq, 1);
    assert_int_equal(kfg_journal_last_seq(j), 2);
    /* "msg-10" shares a prefix; different lengths are different keys */
    assert_int_equal(kfg_journal_append(j, "msg-10", 6, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_true(dlog_wait(&d, 4));
    assert_int_equal(d.ev[3].dup, 0);
    assert_int_equal(d.ev[3].seq, 3);
    kfg_journal_close(j);

    /* the index is rebuilt from the journal */
    j = jopen(f->dir, KFG_FSYNC_ALWAYS, 0, NULL);
    struct kfg_journal_stats st;
    kfg_journal_stats(j, &st);
    assert_int_equal(st.dedupe_keys, 3);
    assert_int_equal(kfg_journal_append(j, "msg-2", 5, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_true(dlog_wait(&d, 5));
    assert_int_equal(d.ev[4].dup, 1);
    assert_int_equal(d.ev[4].seq, 2);
    assert_int_equal(d.ev[4].result, KFG_OK);
    assert_int_equal(calls, 3);
    assert_int_equal(kfg_journal_last_seq(j), 3);
    struct rlog l = { 0 };
    assert_int_equal(read_all(j, &l), 3);
    rlog_free(&l);
    kfg_journal_close(j);
    dlog_free(&d);
}

static void window_1s(struct kfg_journal_opts *o)
{
    o->dedupe_window_s = 1;
}

static void no_dedupe(struct kfg_journal_opts *o)
{
    o->dedupe_window_s = KFG_JOURNAL_NO_DEDUPE;
}

static void test_dedupe_window_expiry(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_NEVER, 0, window_1s);
    struct dlog d;
    dlog_init(&d);
    struct dtag t = { &d, 0 };
    struct payload pl = { "x", 1, NULL, 0 };
    assert_int_equal(kfg_journal_append(j, "k", 1, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_int_equal(kfg_journal_append(j, "k", 1, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_true(dlog_wait(&d, 2));
    assert_int_equal(d.ev[1].dup, 1);
    usleep(1150 * 1000);
    assert_int_equal(kfg_journal_append(j, "k", 1, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_true(dlog_wait(&d, 3));
    assert_int_equal(d.ev[2].dup, 0);
    assert_int_equal(d.ev[2].seq, 2);
    kfg_journal_close(j);
    /* reopen: only keys inside the window are rebuilt (both are old now) */
    usleep(1150 * 1000);
    j = jopen(f->dir, KFG_FSYNC_NEVER, 0, window_1s);
    struct kfg_journal_stats st;
    kfg_journal_stats(j, &st);
    assert_int_equal(st.dedupe_keys, 0);
    kfg_journal_close(j);
    /* dedupe off: the same key twice is two records */
    j = jopen(f->dir, KFG_FSYNC_NEVER, 0, no_dedupe);
    assert_int_equal(kfg_journal_append(j, "k", 1, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_int_equal(kfg_journal_append(j, "k", 1, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_true(dlog_wait(&d, 5));
    assert_int_equal(d.ev[3].dup + d.ev[4].dup, 0);
    assert_int_equal(kfg_journal_last_seq(j), 4);
    kfg_journal_close(j);
    dlog_free(&d);
}

static void test_dedupe_pending_original(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_ALWAYS, 0, NULL);
    struct dlog d;
    dlog_init(&d);
    d.block_tag = 1;
    struct dtag tb = { &d, 1 }, t2 = { &d, 2 }, t3 = { &d, 3 }, t4 = { &d, 4 };
    atomic_int calls = 0;
    struct payload pl = { "body", 4, &calls, 0 };
    /* the writer blocks in the first completion, so what follows stays pending */
    assert_int_equal(kfg_journal_append(j, "blocker", 7, enc_payload, &pl, on_done, &tb), KFG_OK);
    dlog_wait_blocked(&d);
    assert_int_equal(kfg_journal_append(j, "orig", 4, enc_payload, &pl, on_done, &t2), KFG_OK);
    assert_int_equal(kfg_journal_append(j, "orig", 4, enc_payload, &pl, on_done, &t3), KFG_OK);
    assert_int_equal(kfg_journal_append(j, "orig", 4, enc_payload, &pl, on_done, &t4), KFG_OK);
    assert_int_equal(calls, 2);
    assert_int_equal(kfg_journal_committed_seq(j), 1);   /* original not committed yet */
    assert_int_equal(kfg_journal_last_seq(j), 2);
    /* no duplicate may complete before its original */
    pthread_mutex_lock(&d.mu);
    assert_int_equal(d.n, 1);
    pthread_mutex_unlock(&d.mu);
    dlog_release(&d);
    assert_true(dlog_wait(&d, 4));
    assert_int_equal(d.ev[1].tag, 2);
    assert_int_equal(d.ev[1].dup, 0);
    assert_int_equal(d.ev[1].seq, 2);
    for (int i = 2; i < 4; i++) {
        assert_int_equal(d.ev[i].tag, (uintptr_t)i + 1);
        assert_int_equal(d.ev[i].dup, 1);
        assert_int_equal(d.ev[i].seq, 2);
        assert_int_equal(d.ev[i].result, KFG_OK);
    }
    struct kfg_journal_stats st;
    kfg_journal_stats(j, &st);
    assert_int_equal(st.duplicates, 2);
    kfg_journal_close(j);
    dlog_free(&d);
}

static void test_rollover(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_ALWAYS, 4096, NULL);
    append_n(j, 50, 974);   /* 1000-byte records: 4 per segment */
    struct kfg_journal_stats st;
    kfg_journal_stats(j, &st);
    assert_int_equal(st.segments, 13);
    assert_int_equal(count_segments(f->dir), 13);
    char p[256];
    for (uint64_t first = 1; first <= 49; first += 4) {
        off_t sz = file_size(seg_path(f->dir, first, p, sizeof(p)));
        assert_int_equal(sz, 16 + (first == 49 ? 2 : 4) * 1000);
    }
    assert_int_equal(st.bytes, 12 * 4016 + 2016);
    struct rlog l = { 0 };
    assert_int_equal(read_all(j, &l), 50);
    for (size_t i = 0; i < 50; i++) {
        assert_int_equal(l.r[i].seq, i + 1);
        assert_true(check_seqpat(l.r[i].seq, l.r[i].payload, l.r[i].len));
    }
    rlog_free(&l);
    /* reads spanning segments, from the middle of one */
    assert_int_equal(kfg_journal_read(j, 7, 6, on_read, &l), 6);
    assert_int_equal(l.r[0].seq, 7);
    assert_int_equal(l.r[5].seq, 12);
    rlog_free(&l);
    kfg_journal_close(j);
    j = jopen(f->dir, KFG_FSYNC_ALWAYS, 4096, NULL);
    assert_int_equal(kfg_journal_last_seq(j), 50);
    append_n(j, 3, 974);
    assert_int_equal(count_segments(f->dir), 14);
    assert_int_equal(read_all(j, &l), 53);
    rlog_free(&l);
    /* a record larger than a segment gets a segment of its own */
    append_n(j, 1, 10000);
    append_n(j, 1, 10);
    assert_int_equal(read_all(j, &l), 55);
    assert_int_equal(l.r[53].len, 10000);
    assert_true(check_seqpat(54, l.r[53].payload, l.r[53].len));
    rlog_free(&l);
    kfg_journal_close(j);
}

static void retention_16k(struct kfg_journal_opts *o)
{
    o->segment_bytes = 4096;
    o->max_bytes = 16384;
}

static void retention_age(struct kfg_journal_opts *o)
{
    o->segment_bytes = 4096;
    o->max_age_s = 1;
}

static void test_retention(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_NEVER, 0, retention_16k);
    append_n(j, 100, 974);
    struct kfg_journal_stats st;
    /* retention runs on the writer right after the batch's completions */
    int64_t end = mono_ms() + WAIT_MS;
    do {
        kfg_journal_stats(j, &st);
    } while (st.bytes > 16384 && mono_ms() < end && usleep(1000) == 0);
    assert_true(st.bytes <= 16384);
    assert_true(st.segments >= 3);
    assert_int_equal(count_segments(f->dir), st.segments);
    assert_true(st.segments_deleted > 0);
    uint64_t first = kfg_journal_first_seq(j);
    assert_true(first > 1);
    assert_int_equal((first - 1) % 4, 0);   /* whole segments went */
    char p[256];
    assert_int_equal(file_size(seg_path(f->dir, 1, p, sizeof(p))), -1);
    struct rlog l = { 0 };
    assert_int_equal(read_all(j, &l), (int)(101 - first));
    assert_int_equal(l.r[0].seq, first);
    assert_int_equal(l.r[l.n - 1].seq, 100);
    rlog_free(&l);
    kfg_journal_close(j);
    j = jopen(f->dir, KFG_FSYNC_NEVER, 0, retention_16k);
    assert_int_equal(kfg_journal_first_seq(j), first);
    assert_int_equal(kfg_journal_last_seq(j), 100);
    kfg_journal_close(j);

    /* by age: everything but the active segment goes once it is old */
    j = jopen(f->dir, KFG_FSYNC_NEVER, 0, retention_age);
    append_n(j, 9, 974);
    kfg_journal_stats(j, &st);
    size_t before = st.segments;
    assert_true(before >= 3);
    usleep(2100 * 1000);
    append_n(j, 1, 10);   /* retention runs after each batch (and idle) */
    end = mono_ms() + WAIT_MS;
    do {
        kfg_journal_stats(j, &st);
    } while (st.segments > 1 && mono_ms() < end && usleep(1000) == 0);
    assert_int_equal(st.segments, 1);
    assert_int_equal(count_segments(f->dir), 1);
    assert_int_equal(kfg_journal_first_seq(j), kfg_journal_last_seq(j) - 1);
    kfg_journal_close(j);
}

static void max_pending_4(struct kfg_journal_opts *o)
{
    o->max_pending = 4;
}

static void test_again(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_NEVER, 0, max_pending_4);
    struct dlog d;
    dlog_init(&d);
    d.block_tag = 1;
    struct dtag tb = { &d, 1 }, t = { &d, 0 };
    struct payload pl = { "p", 1, NULL, 0 };
    assert_int_equal(kfg_journal_append(j, NULL, 0, enc_payload, &pl, on_done, &tb), KFG_OK);
    dlog_wait_blocked(&d);
    for (int i = 0; i < 4; i++)
        assert_int_equal(kfg_journal_append(j, NULL, 0, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_int_equal(kfg_journal_append(j, NULL, 0, enc_payload, &pl, on_done, &t), KFG_AGAIN);
    /* a duplicate also occupies a slot */
    assert_int_equal(kfg_journal_append(j, "a", 1, enc_payload, &pl, on_done, &t), KFG_AGAIN);
    struct kfg_journal_stats st;
    kfg_journal_stats(j, &st);
    assert_int_equal(st.pending, 4);
    assert_int_equal(st.again, 2);
    assert_int_equal(kfg_journal_last_seq(j), 5);
    dlog_release(&d);
    assert_true(dlog_wait(&d, 5));
    for (int i = 0; i < 5; i++) {
        assert_int_equal(d.ev[i].result, KFG_OK);
        assert_int_equal(d.ev[i].seq, (uint64_t)i + 1);
    }
    assert_int_equal(kfg_journal_append(j, NULL, 0, enc_payload, &pl, on_done, &t), KFG_OK);
    assert_true(dlog_wait(&d, 6));
    kfg_journal_close(j);
    dlog_free(&d);
}

#define NTHREADS 4
#define PER_THREAD 5000

struct thr_arg {
    struct kfg_journal *j;
    int tid;
    struct dlog *d;
    struct dtag t;   /* outlives the thread: completions come later */
};

struct thr_payload {
    int tid, i;
};

static int enc_thr(void *arg, uint64_t seq, int64_t ms, struct kfg_buf *out)
{
    struct thr_payload *p = arg;
    (void)seq, (void)ms;
    kfg_buf_printf(out, "t%d-%d", p->tid, p->i);
    return 0;
}

static void *appender(void *arg)
{
    struct thr_arg *a = arg;
    a->t = (struct dtag){ a->d, (uintptr_t)a->tid };
    for (int i = 0; i < PER_THREAD; i++) {
        struct thr_payload p = { a->tid, i };
        char key[32];
        int kl = snprintf(key, sizeof(key), "t%d-%d", a->tid, i);
        /* odd i are keyed; every 10th (i % 10 == 9) is sent twice, as a
         * channel retry would be, and the repeat must be a duplicate */
        int times = i % 10 == 9 ? 2 : 1;
        for (int r = 0; r < times; r++) {
            int rc;
            while ((rc = kfg_journal_append(a->j, key, (i % 2) ? (size_t)kl : 0, enc_thr, &p,
                                            on_done, &a->t)) == KFG_AGAIN)
                sched_yield();
            if (rc != KFG_OK)
                abort();
        }
    }
    return NULL;
}

static void small_pending(struct kfg_journal_opts *o)
{
    o->max_pending = 512;
    o->segment_bytes = 65536;
}

static void test_concurrent(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_INTERVAL, 0, small_pending);
    struct dlog d;
    dlog_init(&d);
    pthread_t th[NTHREADS];
    struct thr_arg a[NTHREADS];
    for (int t = 0; t < NTHREADS; t++) {
        a[t] = (struct thr_arg){ j, t, &d, { NULL, 0 } };
        assert_int_equal(pthread_create(&th[t], NULL, appender, &a[t]), 0);
    }
    /* replay runs concurrently with the appends */
    uint64_t seen = 0;
    while (seen < NTHREADS * PER_THREAD) {
        struct rlog l = { 0 };
        int n = kfg_journal_read(j, seen + 1, 0, on_read, &l);
        assert_true(n >= 0);
        for (int i = 0; i < n; i++)
            assert_int_equal(l.r[i].seq, seen + 1 + (uint64_t)i);
        seen += (uint64_t)n;
        rlog_free(&l);
        usleep(2000);
    }
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(th[t], NULL);
    size_t ndup = NTHREADS * PER_THREAD / 10;
    assert_true(dlog_wait(&d, NTHREADS * PER_THREAD + ndup));
    assert_int_equal(kfg_journal_last_seq(j), NTHREADS * PER_THREAD);
    struct rlog l = { 0 };
    assert_int_equal(read_all(j, &l), NTHREADS * PER_THREAD);
    int next[NTHREADS] = { 0 };
    for (size_t i = 0; i < l.n; i++) {
        assert_int_equal(l.r[i].seq, i + 1);
        int tid, n;
        char buf[64];
        memcpy(buf, l.r[i].payload, l.r[i].len);
        buf[l.r[i].len] = '\0';
        assert_int_equal(sscanf(buf, "t%d-%d", &tid, &n), 2);
        assert_true(tid >= 0 && tid < NTHREADS);
        /* each thread's records in its own order, each exactly once */
        assert_int_equal(n, next[tid]);
        next[tid] = n + 1;
        if (n % 2)
            assert_string_equal(l.r[i].key, buf);
        else
            assert_int_equal(l.r[i].keylen, 0);
    }
    for (int t = 0; t < NTHREADS; t++)
        assert_int_equal(next[t], PER_THREAD);
    /* completions in sequence order; a duplicate comes after its original
     * and carries the original's seq (a record of the same thread, i%10==9) */
    uint64_t last = 0;
    size_t dups = 0;
    for (size_t i = 0; i < d.n; i++) {
        assert_int_equal(d.ev[i].result, KFG_OK);
        if (d.ev[i].dup) {
            dups++;
            assert_true(d.ev[i].seq <= last);
            struct rrec *r = &l.r[d.ev[i].seq - 1];
            int tid, n;
            assert_int_equal(sscanf(r->key, "t%d-%d", &tid, &n), 2);
            assert_int_equal((uintptr_t)tid, d.ev[i].tag);
            assert_int_equal(n % 10, 9);
            continue;
        }
        assert_int_equal(d.ev[i].seq, last + 1);
        last = d.ev[i].seq;
    }
    assert_int_equal(dups, ndup);
    rlog_free(&l);
    struct kfg_journal_stats st;
    kfg_journal_stats(j, &st);
    assert_int_equal(st.pending, 0);
    assert_true(st.batches < st.batch_records);   /* group commit happened */
    kfg_journal_close(j);
    dlog_free(&d);
}

static void test_fsync_policies(void **state)
{
    struct fx *f = *state;
    int policies[3] = { KFG_FSYNC_ALWAYS, KFG_FSYNC_INTERVAL, KFG_FSYNC_NEVER };
    for (int p = 0; p < 3; p++) {
        char sub[128];
        snprintf(sub, sizeof(sub), "%s/p%d", f->dir, p);
        struct kfg_journal *j = jopen(sub, policies[p], 0, NULL);
        struct dlog d;
        dlog_init(&d);
        d.j = j;
        struct dtag t = { &d, 0 };
        int64_t t0 = mono_ms();
        for (int i = 0; i < 300; i++)
            assert_int_equal(kfg_journal_append(j, NULL, 0, enc_seqpat, (void *)(uintptr_t)64,
                                                on_done, &t),
                             KFG_OK);
        assert_true(dlog_wait(&d, 300));
        int64_t el = mono_ms() - t0;
        for (int i = 0; i < 300; i++) {
            assert_int_equal(d.ev[i].result, KFG_OK);
            assert_int_equal(d.ev[i].seq, (uint64_t)i + 1);
        }
        struct kfg_journal_stats st;
        kfg_journal_stats(j, &st);
        if (policies[p] == KFG_FSYNC_NEVER) {
            assert_int_equal(st.fsyncs, 0);
            assert_int_equal(d.fsyncs_at_first, 0);
        } else if (policies[p] == KFG_FSYNC_ALWAYS) {
            /* the first completion came after the fsync that covered it */
            assert_true(d.fsyncs_at_first >= 1);
            assert_true(st.fsyncs >= 1 && st.fsyncs <= st.batches);
        } else {
            /* at most one fsync per 5 ms (+1), however many batches */
            assert_true(st.fsyncs <= (uint64_t)(el / 5) + 2);
        }
        uint64_t n = 300;
        assert_int_equal(kfg_journal_committed_seq(j), n);
        kfg_journal_close(j);
        j = jopen(sub, policies[p], 0, NULL);
        struct rlog l = { 0 };
        assert_int_equal(read_all(j, &l), (int)n);
        rlog_free(&l);
        kfg_journal_close(j);
        dlog_free(&d);
        rm_dir(sub);
    }
}

static void slow_interval(struct kfg_journal_opts *o)
{
    o->interval_ms = 1000;
}

/* Under "interval" a record is committed at write(), and the fsync that
 * bounds a power loss follows within the interval even when nothing else
 * is written: the idle writer does it. */
static void test_interval_syncs_when_idle(void **state)
{
    struct fx *f = *state;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_INTERVAL, 0, slow_interval);
    struct dlog d;
    dlog_init(&d);
    d.j = j;
    struct dtag t = { &d, 0 };
    for (int i = 0; i < 2; i++) {
        assert_int_equal(kfg_journal_append(j, NULL, 0, enc_seqpat, (void *)(uintptr_t)64,
                                            on_done, &t),
                         KFG_OK);
        assert_true(dlog_wait(&d, (size_t)i + 1));
        assert_int_equal(d.ev[i].result, KFG_OK);
    }
    struct kfg_journal_stats st;
    kfg_journal_stats(j, &st);
    uint64_t at_commit = st.fsyncs;
    /* The first write found no earlier fsync and synced; the second came
     * within the 1 s interval, so only the idle writer can sync it. */
    for (int w = 0; w < 600 && st.fsyncs <= at_commit; w++) {
        usleep(5000);
        kfg_journal_stats(j, &st);
    }
    assert_true(st.fsyncs > at_commit);
    kfg_journal_close(j);
    dlog_free(&d);
}

/* A gate that holds the interval fsync until the test opens it. */
static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int entered, open;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0 };

static void gate_wait(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&gate.mu);
    gate.entered++;
    pthread_cond_broadcast(&gate.cv);
    while (!gate.open)
        pthread_cond_wait(&gate.cv, &gate.mu);
    pthread_mutex_unlock(&gate.mu);
}

static void gated_sync(struct kfg_journal_opts *o)
{
    o->test_before_sync = gate_wait;
}

/* Under "interval" a commit is a write(): records go on committing while
 * an fsync is stuck (a slow disk), and the fsync still happens after. */
static void test_interval_fsync_does_not_block_commits(void **state)
{
    struct fx *f = *state;
    gate.entered = gate.open = 0;
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_INTERVAL, 0, gated_sync);
    struct dlog d;
    dlog_init(&d);
    struct dtag t = { &d, 0 };
    assert_int_equal(kfg_journal_append(j, NULL, 0, enc_seqpat, (void *)(uintptr_t)64, on_done,
                                        &t),
                     KFG_OK);
    pthread_mutex_lock(&gate.mu);
    while (!gate.entered)
        pthread_cond_wait(&gate.cv, &gate.mu);
    pthread_mutex_unlock(&gate.mu);
    /* The first fsync is now held; 200 more records must still commit. */
    for (int i = 0; i < 200; i++)
        assert_int_equal(kfg_journal_append(j, NULL, 0, enc_seqpat, (void *)(uintptr_t)64,
                                            on_done, &t),
                         KFG_OK);
    assert_true(dlog_wait(&d, 201));
    for (size_t i = 0; i < 201; i++)
        assert_int_equal(d.ev[i].result, KFG_OK);
    assert_int_equal(kfg_journal_committed_seq(j), 201);
    struct kfg_journal_stats st;
    kfg_journal_stats(j, &st);
    assert_int_equal(st.fsyncs, 0);
    pthread_mutex_lock(&gate.mu);
    gate.open = 1;
    pthread_cond_broadcast(&gate.cv);
    pthread_mutex_unlock(&gate.mu);
    /* Data written while the first fsync was held is synced by a second. */
    for (int w = 0; w < 600 && st.fsyncs < 2; w++) {
        usleep(5000);
        kfg_journal_stats(j, &st);
    }
    assert_true(st.fsyncs >= 2);
    kfg_journal_close(j);
    dlog_free(&d);
}

static void test_close_completes_pending(void **state)
{
    struct fx *f = *state;
    /* a long interval: records are still queued when close starts */
    struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_INTERVAL, 0, slow_interval);
    struct dlog d;
    dlog_init(&d);
    struct dtag t = { &d, 0 };
    append_n(j, 1, 10);   /* the first batch goes at once; the next waits 1 s */
    int64_t t0 = mono_ms();
    for (int i = 0; i < 500; i++)
        assert_int_equal(kfg_journal_append(j, NULL, 0, enc_seqpat, (void *)(uintptr_t)50,
                                            on_done, &t),
                         KFG_OK);
    kfg_journal_close(j);
    assert_true(mono_ms() - t0 < 900);   /* close did not wait out the interval */
    pthread_mutex_lock(&d.mu);
    assert_int_equal(d.n, 500);
    for (size_t i = 0; i < 500; i++) {
        assert_int_equal(d.ev[i].result, KFG_OK);
        assert_int_equal(d.ev[i].seq, i + 2);
    }
    pthread_mutex_unlock(&d.mu);
    j = jopen(f->dir, KFG_FSYNC_NEVER, 0, NULL);
    assert_int_equal(kfg_journal_last_seq(j), 501);
    kfg_journal_close(j);
    dlog_free(&d);
}

/* A write error (RLIMIT_FSIZE makes pwrite fail with EFBIG) in a child:
 * the failing batch completes with KFG_EFAIL, so does a duplicate waiting
 * for that original, later appends are refused, and reopening cuts the
 * half-written record. Exit codes name the failed check. */
static int failure_child(const char *dir)
{
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit rl;
    getrlimit(RLIMIT_FSIZE, &rl);
    struct rlimit small = { 8192, rl.rlim_max };
    if (setrlimit(RLIMIT_FSIZE, &small) < 0)
        return 10;
    struct kfg_journal_opts o;
    kfg_journal_opts_init(&o);
    o.dir = dir;
    o.fsync = KFG_FSYNC_ALWAYS;
    struct kfg_journal *j;
    char err[256];
    if (kfg_journal_open(&o, &j, err, sizeof(err)) != KFG_OK)
        return 11;
    struct dlog d;
    dlog_init(&d);
    d.block_tag = 1;
    struct dtag t = { &d, 0 }, tb = { &d, 1 }, to = { &d, 2 }, tdup = { &d, 3 };
    for (int i = 0; i < 7; i++)   /* 16 + 7 * 1026 = 7198 bytes */
        if (kfg_journal_append(j, NULL, 0, enc_seqpat, (void *)(uintptr_t)1000, on_done, &t))
            return 12;
    if (!dlog_wait(&d, 7))
        return 13;
    if (kfg_journal_append(j, NULL, 0, enc_seqpat, (void *)(uintptr_t)100, on_done, &tb))
        return 14;
    int64_t end = mono_ms() + WAIT_MS;
    while (!d.blocked && mono_ms() < end)
        usleep(1000);
    /* the original crosses the limit; its duplicate waits for it */
    if (kfg_journal_append(j, "o", 1, enc_seqpat, (void *)(uintptr_t)2000, on_done, &to) ||
        kfg_journal_append(j, "o", 1, enc_seqpat, (void *)(uintptr_t)2000, on_done, &tdup))
        return 15;
    dlog_release(&d);
    if (!dlog_wait(&d, 10))
        return 16;
    for (int i = 0; i < 8; i++)
        if (d.ev[i].result != KFG_OK)
            return 17;
    if (d.ev[8].tag != 2 || d.ev[8].result != KFG_EFAIL || d.ev[8].dup || d.ev[8].seq != 9)
        return 18;
    if (d.ev[9].tag != 3 || d.ev[9].result != KFG_EFAIL || !d.ev[9].dup || d.ev[9].seq != 9)
        return 19;
    if (kfg_journal_append(j, NULL, 0, enc_seqpat, (void *)(uintptr_t)10, on_done, &t) !=
        KFG_EFAIL)
        return 20;
    struct kfg_journal_stats st;
    kfg_journal_stats(j, &st);
    if (!st.failed || kfg_journal_committed_seq(j) != 8)
        return 21;
    kfg_journal_close(j);
    setrlimit(RLIMIT_FSIZE, &rl);
    if (kfg_journal_open(&o, &j, err, sizeof(err)) != KFG_OK)
        return 22;
    if (kfg_journal_last_seq(j) != 8)
        return 23;
    /* the key of the failed original is free again */
    if (kfg_journal_append(j, "o", 1, enc_seqpat, (void *)(uintptr_t)10, on_done, &t))
        return 24;
    if (!dlog_wait(&d, 11) || d.ev[10].dup || d.ev[10].seq != 9 || d.ev[10].result != KFG_OK)
        return 25;
    kfg_journal_close(j);
    dlog_free(&d);
    return 0;
}

static void test_write_failure(void **state)
{
    struct fx *f = *state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0)
        _exit(failure_child(f->dir));
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ------------------------------------------------------------------------ */
/* crash test */

struct ack {
    uint32_t i;
    uint32_t dup;
    uint64_t seq;
};

struct child_ctx {
    int fd;
    uint32_t i;
};

static size_t crash_plen(uint32_t i)
{
    return 20 + (i * 7919u) % 3000;
}

static int enc_crash(void *arg, uint64_t seq, int64_t ms, struct kfg_buf *out)
{
    uint32_t i = *(uint32_t *)arg;
    (void)seq, (void)ms;
    size_t n = crash_plen(i);
    if (kfg_buf_reserve(out, n) < 0)
        return KFG_ENOMEM;
    for (size_t k = 0; k < n; k++)
        out->p[out->len + k] = (char)((i * 31u + k * 17u) & 0xff);
    memcpy(out->p + out->len, &i, 4);
    out->len += n;
    return 0;
}

static int crash_payload_ok(uint32_t i, const uint8_t *p, size_t len)
{
    if (len != crash_plen(i))
        return 0;
    uint32_t got;
    memcpy(&got, p, 4);
    if (got != i)
        return 0;
    for (size_t k = 4; k < len; k++)
        if (p[k] != (uint8_t)((i * 31u + k * 17u) & 0xff))
            return 0;
    return 1;
}

static void crash_done(void *arg, int result, uint64_t seq, int dup)
{
    /* arg carries i; the pipe fd is global to the child */
    extern int crash_pipe_fd;
    if (result != KFG_OK)
        return;
    struct ack a = { (uint32_t)(uintptr_t)arg, (uint32_t)dup, seq };
    if (write(crash_pipe_fd, &a, sizeof(a)) != (ssize_t)sizeof(a))
        _exit(3);
}

int crash_pipe_fd = -1;

static void crash_opts(struct kfg_journal_opts *o)
{
    o->segment_bytes = 65536;
    o->max_pending = 2000;
}

static void crash_child(const char *dir, int policy, uint32_t start)
{
    struct kfg_journal_opts o;
    kfg_journal_opts_init(&o);
    crash_opts(&o);
    o.dir = dir;
    o.fsync = policy;
    o.interval_ms = 3;
    struct kfg_journal *j = NULL;
    char err[512];
    if (kfg_journal_open(&o, &j, err, sizeof(err)) != KFG_OK) {
        fprintf(stderr, "child: %s\n", err);
        _exit(2);
    }
    for (uint32_t i = start;; i++) {
        /* a channel retry: an earlier message again (maybe from before the crash) */
        uint32_t ids[2] = { i, i >= 5 ? i - 5 : i };
        for (int r = 0; r < ((i % 4 == 0) ? 2 : 1); r++) {
            uint32_t id = r ? ids[1] : ids[0];
            char key[24];
            int kl = snprintf(key, sizeof(key), "k%u", id);
            int rc;
            while ((rc = kfg_journal_append(j, key, (size_t)kl, enc_crash, &id, crash_done,
                                            (void *)(uintptr_t)id)) == KFG_AGAIN)
                usleep(50);
            if (rc != KFG_OK)
                _exit(4);
        }
    }
}

static void test_crash_sigkill(void **state)
{
    struct fx *f = *state;
    signal(SIGPIPE, SIG_IGN);
    uint32_t next = 0;
    size_t total_acked = 0;
    srand((unsigned)time(NULL));
    int policies[3] = { KFG_FSYNC_INTERVAL, KFG_FSYNC_ALWAYS, KFG_FSYNC_NEVER };
    for (int round = 0; round < 8; round++) {
        int pfd[2];
        assert_int_equal(pipe(pfd), 0);
        int policy = policies[round % 3];
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(pfd[0]);
            crash_pipe_fd = pfd[1];
            kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_ERROR, 2);
            crash_child(f->dir, policy, next);
            _exit(0);
        }
        close(pfd[1]);
        size_t cap = 1 << 16, n = 0;
        struct ack *acks = malloc(cap * sizeof(*acks));
        int64_t kill_at = mono_ms() + 30 + rand() % 250;
        int killed = 0;
        size_t partial = 0;
        uint8_t *raw = (uint8_t *)acks;
        for (;;) {
            int64_t now = mono_ms();
            if (!killed && now >= kill_at) {
                kill(pid, SIGKILL);
                killed = 1;
            }
            struct pollfd pf = { pfd[0], POLLIN, 0 };
            poll(&pf, 1, killed ? 1000 : (int)(kill_at - now));
            if (!(pf.revents & (POLLIN | POLLHUP)))
                continue;
            if (n + 1024 > cap) {
                cap *= 2;
                acks = realloc(acks, cap * sizeof(*acks));
                raw = (uint8_t *)acks;
            }
            ssize_t r = read(pfd[0], raw + n * sizeof(*acks) + partial,
                             1024 * sizeof(*acks) - partial);
            if (r <= 0) {
                if (killed)
                    break;
                continue;
            }
            partial += (size_t)r;
            n += partial / sizeof(*acks);
            partial %= sizeof(*acks);
        }
        close(pfd[0]);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        total_acked += n;

        /* recover and check */
        struct kfg_journal *j = jopen(f->dir, KFG_FSYNC_ALWAYS, 0, crash_opts);
        struct rlog l = { 0 };
        int got = read_all(j, &l);
        assert_true(got >= 0);
        uint64_t last = kfg_journal_last_seq(j);
        assert_int_equal((uint64_t)got, last);   /* no gaps */
        uint32_t maxi = 0;
        uint64_t *seq_of = calloc((size_t)next + 2000000, sizeof(uint64_t));
        for (size_t r = 0; r < l.n; r++) {
            assert_int_equal(l.r[r].seq, r + 1);
            unsigned id;
            assert_int_equal(sscanf(l.r[r].key, "k%u", &id), 1);
            assert_true(id < next + 1900000);
            assert_int_equal(seq_of[id], 0);   /* each key stored once */
            seq_of[id] = l.r[r].seq;
            assert_true(crash_payload_ok(id, l.r[r].payload, l.r[r].len));
            if (id + 1 > maxi)
                maxi = id + 1;
        }
        for (size_t a = 0; a < n; a++) {
            assert_true(acks[a].i < next + 1900000);
            /* acknowledged: present, and at the sequence the ack said */
            assert_int_equal(seq_of[acks[a].i], acks[a].seq);
        }
        kfg_journal_close(j);
        rlog_free(&l);
        free(seq_of);
        free(acks);
        if (maxi > next)
            next = maxi;
    }
    assert_true(total_acked > 0);
    fprintf(stderr, "crash test: %zu acks checked over 8 kills, %u keys\n", total_acked, next);
}

int main(void)
{
    kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_WARN, 2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reopen_continues, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_middle_of_last, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_nonlast_segment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedupe_committed_and_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedupe_window_expiry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dedupe_pending_original, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rollover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention, setup, teardown),
        cmocka_unit_test_setup_teardown(test_again, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fsync_policies, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interval_syncs_when_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_interval_fsync_does_not_block_commits, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_close_completes_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_sigkill, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
