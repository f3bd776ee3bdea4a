/*
 * The durable journal (see journal.h for the format and the contract).
 *
 * Two locks. `mu` guards the append side: the fill queue (records encoded
 * back to back in one buffer, plus one small entry per append for its
 * completion), the dedupe index, the sequence counter and the flags. `smu`
 * guards the segment list and the per-segment offset indexes that readers
 * use. The writer thread swaps the fill queue with its own (so appends go on
 * while it writes), writes the batch with one pwrite per segment touched,
 * fdatasyncs per policy, publishes the committed sequence, then runs the
 * completions in order with no lock held. Only the writer thread changes the
 * segment list (rollover, retention); readers pin a segment with a
 * reference while they pread from it, so retention can unlink it under them.
 *
 * The dedupe index is a FIFO of entries in sequence (= accepted time) order,
 * keys packed in a byte FIFO, and an open-addressing table of entry ids;
 * expiry pops the head. No malloc per append once the buffers have grown.
 */
#include "journal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kfgate/plugin.h"
#include "log.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

static const char SEG_MAGIC[8] = { 'K', 'F', 'G', 'J', 'R', 'N', 'L', '1' };
#define BODY_MAX (KFG_JOURNAL_BODY_MIN + KFG_JOURNAL_MAX_KEY + KFG_JOURNAL_MAX_PAYLOAD)
#define READ_CHUNK (1u << 20)
#define SEQ_LIMIT ((uint64_t)1 << 62)

/* ------------------------------------------------------------------------ */
/* CRC32C */

static uint32_t crc_tab[8][256];
static int crc_hw;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_tab[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_tab[t][i] = (crc_tab[t - 1][i] >> 8) ^ crc_tab[0][crc_tab[t - 1][i] & 0xff];
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif
}

static uint32_t crc_sw(uint32_t crc, const uint8_t *p, size_t len)
{
    crc = ~crc;
    while (len && ((uintptr_t)p & 7)) {
        crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        len--;
    }
    while (len >= 8) {
        uint32_t lo = ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                       (uint32_t)p[3] << 24) ^ crc;
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        crc = crc_tab[7][lo & 0xff] ^ crc_tab[6][(lo >> 8) & 0xff] ^
              crc_tab[5][(lo >> 16) & 0xff] ^ crc_tab[4][lo >> 24] ^
              crc_tab[3][hi & 0xff] ^ crc_tab[2][(hi >> 8) & 0xff] ^
              crc_tab[1][(hi >> 16) & 0xff] ^ crc_tab[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = crc_tab[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_sse42(uint32_t crc, const uint8_t *p,
                                                             size_t len)
{
    uint64_t c = ~crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = _mm_crc32_u8(c32, *p++);
    return ~c32;
}
#endif

uint32_t kfg_crc32c_sw(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&crc_once, crc_init);
    return crc_sw(crc, data, len);
}

uint32_t kfg_crc32c(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&crc_once, crc_init);
#if defined(__x86_64__)
    if (crc_hw)
        return crc_sse42(crc, data, len);
#endif
    return crc_sw(crc, data, len);
}

/* ------------------------------------------------------------------------ */
/* little-endian helpers */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

/* ------------------------------------------------------------------------ */
/* record parsing */

/* Returns the record's size (header + body) or 0 with *why set. */
static size_t parse_record(const uint8_t *p, size_t avail, uint64_t expect,
                           struct kfg_journal_rec *r, const char **why)
{
    if (avail < KFG_JOURNAL_REC_HDR) {
        *why = "torn record header";
        return 0;
    }
    uint32_t blen = get32(p);
    if (blen < KFG_JOURNAL_BODY_MIN || blen > BODY_MAX) {
        *why = "bad record length";
        return 0;
    }
    if (avail - KFG_JOURNAL_REC_HDR < blen) {
        *why = "torn record body";
        return 0;
    }
    const uint8_t *b = p + KFG_JOURNAL_REC_HDR;
    uint32_t c = kfg_crc32c(0, p, 4);
    c = kfg_crc32c(c, b, blen);
    if (c != get32(p + 4)) {
        *why = "checksum mismatch";
        return 0;
    }
    if (get64(b) != expect) {
        *why = "unexpected sequence number";
        return 0;
    }
    size_t klen = get16(b + 16);
    if (KFG_JOURNAL_BODY_MIN + klen > blen) {
        *why = "key longer than record";
        return 0;
    }
    r->seq = expect;
    r->accepted_ms = (int64_t)get64(b + 8);
    r->keylen = klen;
    r->key = b + KFG_JOURNAL_BODY_MIN;
    r->payload = r->key + klen;
    r->len = blen - KFG_JOURNAL_BODY_MIN - klen;
    r->size = KFG_JOURNAL_REC_HDR + (size_t)blen;
    return r->size;
}

size_t kfg_journal_scan(const void *seg, size_t len, uint64_t first_seq,
                        int (*fn)(void *arg, const struct kfg_journal_rec *r),
                        void *arg, const char **why)
{
    const uint8_t *p = seg;
    const char *w = NULL;
    if (len < KFG_JOURNAL_SEG_HDR) {
        w = len ? "torn segment header" : "empty segment file";
        goto out0;
    }
    if (memcmp(p, SEG_MAGIC, 8) != 0) {
        w = "bad segment magic";
        goto out0;
    }
    if (get64(p + 8) != first_seq) {
        w = "segment header's first sequence does not match the file name";
        goto out0;
    }
    size_t off = KFG_JOURNAL_SEG_HDR;
    uint64_t seq = first_seq;
    while (off < len) {
        struct kfg_journal_rec r;
        size_t n = parse_record(p + off, len - off, seq, &r, &w);
        if (!n)
            break;
        r.offset = off;
        if (fn && fn(arg, &r) != 0) {
            w = "stopped";
            off += n;
            break;
        }
        off += n;
        seq++;
    }
    if (why)
        *why = w;
    return off;
out0:
    if (why)
        *why = w;
    return 0;
}

/* ------------------------------------------------------------------------ */
/* structures */

struct seg {
    uint64_t first;          /* sequence in the name and header */
    uint64_t count;          /* records indexed */
    uint32_t *off;           /* count + 1 entries; off[count] = end */
    size_t cap;
    uint64_t size;           /* file bytes */
    int64_t max_ms;          /* newest record's accepted time, 0 if none */
    int fd;
    int refs;                /* readers holding it (under smu) */
    int dead;                /* removed by retention */
    _Atomic int dirty;       /* written since its last fdatasync started */
    char *path;
};

struct pend {
    uint64_t seq;
    kfg_journal_done_fn done;
    void *arg;
    uint32_t len;            /* record bytes in the queue's buffer; 0 for a dup */
    uint32_t dup;
};

struct queue {
    struct kfg_buf buf;
    struct pend *e;
    size_t n, cap;
};

struct dent {
    uint64_t seq;
    int64_t ms;
    uint64_t koff;           /* absolute offset in the key FIFO */
    uint32_t klen;
    uint32_t hash;
};

struct dedupe {
    struct dent *e;
    uint64_t ebase;          /* absolute id of e[0] */
    size_t ehead, eend, ecap;
    uint8_t *k;
    uint64_t kbase;
    size_t khead, kend, kcap;
    uint64_t *tab;           /* entry id + 1; 0 = empty */
    size_t tcap, tcount;
};

struct kfg_journal {
    char *dir;
    int dirfd, lockfd;
    size_t seg_bytes;
    int policy;
    uint32_t interval_ms;
    uint64_t max_bytes;
    uint32_t max_age_s;
    int64_t window_ms;       /* < 0: dedupe off */
    uint32_t max_pending;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    int writer_idle, closing, failed;
    struct queue fill, work;
    struct kfg_buf scratch;
    uint64_t next_seq;
    int64_t last_ms;
    uint64_t pending;
    struct dedupe dd;
    uint64_t n_appends, n_dups, n_again;

    pthread_mutex_t smu;
    struct seg **segs;
    size_t nsegs, segcap;
    uint64_t total_bytes;
    _Atomic uint64_t committed;
    _Atomic uint64_t last_assigned;

    _Atomic uint64_t n_batches, n_batch_records, n_batch_max, n_fsyncs, n_written,
        n_deleted;
    _Atomic int unsynced;    /* data written since the last fsync started */
    int started;
    pthread_t thr;

    /* KFG_FSYNC_INTERVAL: the fsyncs run on their own thread, so a slow
     * disk flush never holds up a commit (which is only a write()). */
    pthread_mutex_t ymu;
    pthread_cond_t ycv;
    int ystop, ystarted;
    int64_t last_fsync_mono; /* syncer thread */
    pthread_t ythr;
    void (*before_sync)(void *);
    void *before_sync_arg;
};

/* ------------------------------------------------------------------------ */
/* time */

static int64_t now_real_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timespec mono_deadline(int64_t at_ms)
{
    struct timespec ts;
    ts.tv_sec = at_ms / 1000;
    ts.tv_nsec = (at_ms % 1000) * 1000000;
    return ts;
}

/* ------------------------------------------------------------------------ */
/* dedupe index */

static struct dent *dd_ent(struct dedupe *d, uint64_t id)
{
    return &d->e[id - d->ebase];
}

static size_t dd_find_slot(struct dedupe *d, uint32_t hash, const void *key, size_t klen)
{
    size_t mask = d->tcap - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        uint64_t v = d->tab[i];
        if (!v)
            return (size_t)-1;
        struct dent *e = dd_ent(d, v - 1);
        if (e->hash == hash && e->klen == klen &&
            memcmp(d->k + (e->koff - d->kbase), key, klen) == 0)
            return i;
    }
}

static struct dent *dd_lookup(struct dedupe *d, const void *key, size_t klen)
{
    if (!d->tcount)
        return NULL;
    uint32_t h = kfg_crc32c(0, key, klen);
    size_t i = dd_find_slot(d, h, key, klen);
    return i == (size_t)-1 ? NULL : dd_ent(d, d->tab[i] - 1);
}

static void dd_tab_put(uint64_t *tab, size_t cap, uint32_t hash, uint64_t v)
{
    size_t mask = cap - 1, i = hash & mask;
    while (tab[i])
        i = (i + 1) & mask;
    tab[i] = v;
}

static int dd_rehash(struct dedupe *d, size_t ncap)
{
    uint64_t *t = calloc(ncap, sizeof(*t));
    if (!t)
        return -1;
    for (size_t i = d->ehead; i < d->eend; i++)
        dd_tab_put(t, ncap, d->e[i].hash, d->ebase + i + 1);
    free(d->tab);
    d->tab = t;
    d->tcap = ncap;
    return 0;
}

/* Removes entry id from the table (backward-shift deletion). */
static void dd_tab_del(struct dedupe *d, uint64_t id)
{
    size_t mask = d->tcap - 1;
    size_t i = dd_ent(d, id)->hash & mask;
    while (d->tab[i] != id + 1) {
        if (!d->tab[i])
            return;   /* not indexed (a duplicate on disk): nothing to do */
        i = (i + 1) & mask;
    }
    d->tcount--;
    for (;;) {
        d->tab[i] = 0;
        size_t k = i;
        for (;;) {
            k = (k + 1) & mask;
            if (!d->tab[k])
                return;
            size_t h = dd_ent(d, d->tab[k] - 1)->hash & mask;
            if (((k - h) & mask) >= ((k - i) & mask))
                break;
        }
        d->tab[i] = d->tab[k];
        i = k;
    }
}

static void dd_expire(struct dedupe *d, int64_t cutoff)
{
    while (d->ehead < d->eend && d->e[d->ehead].ms < cutoff) {
        struct dent *e = &d->e[d->ehead];
        dd_tab_del(d, d->ebase + d->ehead);
        d->khead = (size_t)(e->koff + e->klen - d->kbase);
        d->ehead++;
    }
    if (d->ehead == d->eend) {
        d->ebase += d->eend;
        d->ehead = d->eend = 0;
        d->kbase += d->kend;
        d->khead = d->kend = 0;
    }
}

/* Adds key (not already present) for seq. 0 or -1 (no memory). */
static int dd_insert(struct dedupe *d, const void *key, size_t klen, uint64_t seq, int64_t ms)
{
    if ((d->tcount + 1) * 2 > d->tcap &&
        dd_rehash(d, d->tcap ? d->tcap * 2 : 1024) < 0)
        return -1;
    if (d->eend == d->ecap) {
        if (d->ehead && d->ehead >= d->ecap / 2) {
            memmove(d->e, d->e + d->ehead, (d->eend - d->ehead) * sizeof(*d->e));
            d->ebase += d->ehead;
            d->eend -= d->ehead;
            d->ehead = 0;
        } else {
            size_t nc = d->ecap ? d->ecap * 2 : 1024;
            struct dent *ne = realloc(d->e, nc * sizeof(*ne));
            if (!ne)
                return -1;
            d->e = ne;
            d->ecap = nc;
        }
    }
    if (d->kend + klen > d->kcap) {
        if (d->khead && d->khead >= d->kcap / 2 && d->kend - d->khead + klen <= d->kcap) {
            memmove(d->k, d->k + d->khead, d->kend - d->khead);
            d->kbase += d->khead;
            d->kend -= d->khead;
            d->khead = 0;
        } else {
            size_t nc = d->kcap ? d->kcap : 16384;
            while (nc < d->kend + klen)
                nc *= 2;
            uint8_t *nk = realloc(d->k, nc);
            if (!nk)
                return -1;
            d->k = nk;
            d->kcap = nc;
        }
    }
    struct dent *e = &d->e[d->eend];
    e->seq = seq;
    e->ms = ms;
    e->koff = d->kbase + d->kend;
    e->klen = (uint32_t)klen;
    e->hash = kfg_crc32c(0, key, klen);
    memcpy(d->k + d->kend, key, klen);
    d->kend += klen;
    dd_tab_put(d->tab, d->tcap, e->hash, d->ebase + d->eend + 1);
    d->eend++;
    d->tcount++;
    return 0;
}

static void dd_free(struct dedupe *d)
{
    free(d->e);
    free(d->k);
    free(d->tab);
    memset(d, 0, sizeof(*d));
}

/* ------------------------------------------------------------------------ */
/* segments */

static void seg_free(struct seg *s)
{
    if (!s)
        return;
    if (s->fd >= 0)
        close(s->fd);
    free(s->off);
    free(s->path);
    free(s);
}

static struct seg *seg_alloc(const char *dir, uint64_t first)
{
    struct seg *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->fd = -1;
    s->first = first;
    s->cap = 256;
    s->off = malloc(s->cap * sizeof(*s->off));
    size_t pl = strlen(dir) + 32;
    s->path = malloc(pl);
    if (!s->off || !s->path) {
        seg_free(s);
        return NULL;
    }
    snprintf(s->path, pl, "%s/%020" PRIu64 ".kfj", dir, first);
    s->off[0] = KFG_JOURNAL_SEG_HDR;
    s->size = KFG_JOURNAL_SEG_HDR;
    return s;
}

/* Indexes one more record [start, start+size). 0 or -1. */
static int seg_push(struct seg *s, size_t start, size_t size, int64_t ms)
{
    if (s->count + 2 > s->cap) {
        size_t nc = s->cap * 2;
        uint32_t *no = realloc(s->off, nc * sizeof(*no));
        if (!no)
            return -1;
        s->off = no;
        s->cap = nc;
    }
    s->off[s->count] = (uint32_t)start;
    s->off[s->count + 1] = (uint32_t)(start + size);
    s->count++;
    if (ms > s->max_ms)
        s->max_ms = ms;
    return 0;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static int pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    uint8_t *p = buf;
    while (len) {
        ssize_t n = pread(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;   /* shorter than indexed */
            return -1;
        }
        p += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return 0;
}

static void seg_header(uint8_t h[KFG_JOURNAL_SEG_HDR], uint64_t first)
{
    memcpy(h, SEG_MAGIC, 8);
    put64(h + 8, first);
}

/* Writes a fresh header at the start of fd and cuts everything after it. */
static int seg_reset(struct seg *s, int sync)
{
    uint8_t h[KFG_JOURNAL_SEG_HDR];
    seg_header(h, s->first);
    if (ftruncate(s->fd, 0) < 0 || pwrite_full(s->fd, h, sizeof(h), 0) < 0)
        return -1;
    if (sync && fdatasync(s->fd) < 0)
        return -1;
    s->count = 0;
    s->off[0] = KFG_JOURNAL_SEG_HDR;
    s->size = KFG_JOURNAL_SEG_HDR;
    s->max_ms = 0;
    return 0;
}

/* Creates a new, empty segment file for first. */
static struct seg *seg_create(struct kfg_journal *j, uint64_t first, char *err, size_t errcap)
{
    struct seg *s = seg_alloc(j->dir, first);
    if (!s) {
        snprintf(err, errcap, "journal: out of memory");
        return NULL;
    }
    s->fd = open(s->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    int sync = j->policy != KFG_FSYNC_NEVER;
    if (s->fd < 0 || seg_reset(s, sync) < 0 || (sync && fsync(j->dirfd) < 0)) {
        snprintf(err, errcap, "journal: cannot create segment %s: %s", s->path,
                 strerror(errno));
        if (s->fd >= 0)
            unlink(s->path);
        seg_free(s);
        return NULL;
    }
    return s;
}

/* Appends s to the list (under smu). 0 or -1. */
static int segs_add(struct kfg_journal *j, struct seg *s)
{
    pthread_mutex_lock(&j->smu);
    if (j->nsegs == j->segcap) {
        size_t nc = j->segcap ? j->segcap * 2 : 16;
        struct seg **ns = realloc(j->segs, nc * sizeof(*ns));
        if (!ns) {
            pthread_mutex_unlock(&j->smu);
            return -1;
        }
        j->segs = ns;
        j->segcap = nc;
    }
    j->segs[j->nsegs++] = s;
    j->total_bytes += s->size;
    pthread_mutex_unlock(&j->smu);
    return 0;
}

/* Deletes whole oldest segments (never the active one) past the limits. */
static void retention(struct kfg_journal *j)
{
    if (!j->max_bytes && !j->max_age_s)
        return;
    int64_t cutoff = now_real_ms() - (int64_t)j->max_age_s * 1000;
    for (;;) {
        pthread_mutex_lock(&j->smu);
        struct seg *s = j->nsegs > 1 ? j->segs[0] : NULL;
        int del = s && ((j->max_bytes && j->total_bytes > j->max_bytes) ||
                        (j->max_age_s && s->max_ms < cutoff));
        int freeit = 0;
        if (del) {
            memmove(j->segs, j->segs + 1, (j->nsegs - 1) * sizeof(*j->segs));
            j->nsegs--;
            j->total_bytes -= s->size;
            s->dead = 1;
            freeit = s->refs == 0;
        }
        pthread_mutex_unlock(&j->smu);
        if (!del)
            return;
        kfg_info("journal: retention removes %s (%" PRIu64 " records, %" PRIu64 " bytes)",
                 s->path, s->count, s->size);
        if (unlink(s->path) < 0)
            kfg_warn("journal: cannot remove %s: %s", s->path, strerror(errno));
        atomic_fetch_add_explicit(&j->n_deleted, 1, memory_order_relaxed);
        if (freeit)
            seg_free(s);
    }
}

/* ------------------------------------------------------------------------ */
/* options */

void kfg_journal_opts_init(struct kfg_journal_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->segment_bytes = (size_t)64 << 20;
    o->fsync = KFG_FSYNC_INTERVAL;
    o->interval_ms = 10;
    o->dedupe_window_s = 86400;
    o->max_pending = 65536;
}

/* ------------------------------------------------------------------------ */
/* open */

struct scan_ctx {
    struct kfg_journal *j;
    struct seg *s;
    int64_t cutoff;          /* dedupe window start */
    int oom;
};

static int scan_cb(void *arg, const struct kfg_journal_rec *r)
{
    struct scan_ctx *c = arg;
    if (seg_push(c->s, r->offset, r->size, r->accepted_ms) < 0) {
        c->oom = 1;
        return 1;
    }
    if (r->accepted_ms > c->j->last_ms)
        c->j->last_ms = r->accepted_ms;
    if (r->keylen && c->j->window_ms >= 0 && r->accepted_ms >= c->cutoff &&
        !dd_lookup(&c->j->dd, r->key, r->keylen) &&
        dd_insert(&c->j->dd, r->key, r->keylen, r->seq, r->accepted_ms) < 0) {
        c->oom = 1;
        return 1;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Lists segment sequence numbers in dir, sorted. -1 on error (errno). */
static int list_segments(const char *dir, uint64_t **out, size_t *n)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    uint64_t *v = NULL;
    size_t nv = 0, cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *nm = de->d_name;
        if (strlen(nm) != 24 || strcmp(nm + 20, ".kfj") != 0)
            continue;
        uint64_t s = 0;
        int ok = 1;
        for (int i = 0; i < 20; i++) {
            if (nm[i] < '0' || nm[i] > '9' || s > (UINT64_MAX - 9) / 10) {
                ok = 0;
                break;
            }
            s = s * 10 + (uint64_t)(nm[i] - '0');
        }
        if (!ok)
            continue;
        if (nv == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *nvp = realloc(v, cap * sizeof(*v));
            if (!nvp) {
                free(v);
                closedir(d);
                errno = ENOMEM;
                return -1;
            }
            v = nvp;
        }
        v[nv++] = s;
    }
    closedir(d);
    if (nv)
        qsort(v, nv, sizeof(*v), cmp_u64);
    *out = v;
    *n = nv;
    return 0;
}

static void syncer_stop(struct kfg_journal *j);

static void journal_free(struct kfg_journal *j)
{
    syncer_stop(j);
    for (size_t i = 0; i < j->nsegs; i++)
        seg_free(j->segs[i]);
    free(j->segs);
    dd_free(&j->dd);
    kfg_buf_free(&j->fill.buf);
    kfg_buf_free(&j->work.buf);
    kfg_buf_free(&j->scratch);
    free(j->fill.e);
    free(j->work.e);
    if (j->dirfd >= 0)
        close(j->dirfd);
    if (j->lockfd >= 0)
        close(j->lockfd);
    pthread_mutex_destroy(&j->mu);
    pthread_mutex_destroy(&j->smu);
    pthread_mutex_destroy(&j->ymu);
    pthread_cond_destroy(&j->cv);
    pthread_cond_destroy(&j->ycv);
    free(j->dir);
    free(j);
}

/* Opens and recovers one segment; i of n. 0, or -1 with err. */
static int open_segment(struct kfg_journal *j, uint64_t first, int last, int truncate_corrupt,
                        int64_t cutoff, uint64_t *expect, char *err, size_t errcap)
{
    struct seg *s = seg_alloc(j->dir, first);
    if (!s) {
        snprintf(err, errcap, "journal: out of memory");
        return -1;
    }
    struct stat st;
    s->fd = open(s->path, O_RDWR | O_CLOEXEC);
    if (s->fd < 0 || fstat(s->fd, &st) < 0) {
        snprintf(err, errcap, "journal: cannot open segment %s: %s", s->path, strerror(errno));
        seg_free(s);
        return -1;
    }
    size_t len = (size_t)st.st_size;
    if ((uint64_t)st.st_size > UINT32_MAX) {
        snprintf(err, errcap, "journal: segment %s is larger than 4 GiB", s->path);
        seg_free(s);
        return -1;
    }
    if (*expect && first < *expect) {
        snprintf(err, errcap,
                 "journal: segment %s starts at seq %" PRIu64
                 " but earlier segments hold records up to seq %" PRIu64,
                 s->path, first, *expect - 1);
        seg_free(s);
        return -1;
    }
    if (*expect && first > *expect)
        kfg_warn("journal: sequence gap: seq %" PRIu64 "..%" PRIu64 " are missing before %s",
                 *expect, first - 1, s->path);
    const char *why = NULL;
    size_t good = 0;
    struct scan_ctx c = { j, s, cutoff, 0 };
    if (len) {
        void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, s->fd, 0);
        if (m == MAP_FAILED) {
            snprintf(err, errcap, "journal: cannot map segment %s: %s", s->path,
                     strerror(errno));
            seg_free(s);
            return -1;
        }
        good = kfg_journal_scan(m, len, first, scan_cb, &c, &why);
        munmap(m, len);
    } else {
        why = "empty segment file";
    }
    if (c.oom) {
        snprintf(err, errcap, "journal: out of memory reading %s", s->path);
        seg_free(s);
        return -1;
    }
    s->size = good ? good : KFG_JOURNAL_SEG_HDR;
    if (why) {
        int torn_header = good == 0 && len < KFG_JOURNAL_SEG_HDR;
        if (!last && !truncate_corrupt) {
            snprintf(err, errcap,
                     "journal: segment %s is corrupt at offset %zu (%s); refusing to open "
                     "(set truncate_corrupt to cut it there)",
                     s->path, good, why);
            seg_free(s);
            return -1;
        }
        if (good == 0 && !torn_header && !truncate_corrupt) {
            snprintf(err, errcap,
                     "journal: segment %s has a bad header at offset 0 (%s); refusing to "
                     "open (set truncate_corrupt to reset it)",
                     s->path, why);
            seg_free(s);
            return -1;
        }
        if (last && (good || torn_header))
            kfg_warn("journal: cut torn tail of %s at offset %zu: %zu bytes dropped (%s)",
                     s->path, good, len - good, why);
        else
            kfg_error("journal: cut CORRUPT segment %s at offset %zu: %zu bytes dropped (%s); "
                      "records from seq %" PRIu64 " of this segment are lost",
                      s->path, good, len - good, why, first + s->count);
        int rc = good ? ftruncate(s->fd, (off_t)good) : seg_reset(s, 0);
        if (rc < 0 || fdatasync(s->fd) < 0) {
            snprintf(err, errcap, "journal: cannot truncate %s: %s", s->path, strerror(errno));
            seg_free(s);
            return -1;
        }
    }
    if (s->count)
        *expect = first + s->count;
    else if (!*expect || first > *expect)
        *expect = first;
    if (segs_add(j, s) < 0) {
        snprintf(err, errcap, "journal: out of memory");
        seg_free(s);
        return -1;
    }
    return 0;
}

static void *writer_main(void *arg);
static void *syncer_main(void *arg);

int kfg_journal_open(const struct kfg_journal_opts *o, struct kfg_journal **out, char *err,
                     size_t errcap)
{
    char dummy[8];
    if (!err || !errcap) {
        err = dummy;
        errcap = sizeof(dummy);
    }
    err[0] = '\0';
    *out = NULL;
    if (!o || !o->dir || !o->dir[0]) {
        snprintf(err, errcap, "journal: dir is required");
        return KFG_EINVAL;
    }
    size_t segb = o->segment_bytes ? o->segment_bytes : (size_t)64 << 20;
    if (segb < 4096 || segb > KFG_JOURNAL_MAX_SEGMENT) {
        snprintf(err, errcap, "journal: segment_bytes %zu out of range 4096..%zu", segb,
                 KFG_JOURNAL_MAX_SEGMENT);
        return KFG_EINVAL;
    }
    if (o->fsync < KFG_FSYNC_ALWAYS || o->fsync > KFG_FSYNC_NEVER) {
        snprintf(err, errcap, "journal: unknown fsync policy %d", o->fsync);
        return KFG_EINVAL;
    }
    struct kfg_journal *j = calloc(1, sizeof(*j));
    if (!j) {
        snprintf(err, errcap, "journal: out of memory");
        return KFG_ENOMEM;
    }
    j->dirfd = j->lockfd = -1;
    pthread_mutex_init(&j->mu, NULL);
    pthread_mutex_init(&j->smu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_mutex_init(&j->ymu, NULL);
    pthread_cond_init(&j->ycv, &ca);
    pthread_condattr_destroy(&ca);
    j->before_sync = o->test_before_sync;
    j->before_sync_arg = o->test_before_sync_arg;
    j->seg_bytes = segb;
    j->policy = o->fsync;
    j->interval_ms = o->interval_ms ? o->interval_ms : 10;
    j->max_bytes = o->max_bytes;
    j->max_age_s = o->max_age_s;
    j->window_ms = o->dedupe_window_s == KFG_JOURNAL_NO_DEDUPE ? -1
                   : (int64_t)(o->dedupe_window_s ? o->dedupe_window_s : 86400) * 1000;
    j->max_pending = o->max_pending ? o->max_pending : 65536;
    j->dir = strdup(o->dir);
    int rc = KFG_EFAIL;
    if (!j->dir) {
        snprintf(err, errcap, "journal: out of memory");
        rc = KFG_ENOMEM;
        goto fail;
    }
    if (mkdir(j->dir, 0755) < 0 && errno != EEXIST) {
        snprintf(err, errcap, "journal: cannot create %s: %s", j->dir, strerror(errno));
        goto fail;
    }
    j->dirfd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (j->dirfd < 0) {
        snprintf(err, errcap, "journal: cannot open %s: %s", j->dir, strerror(errno));
        goto fail;
    }
    {
        char lp[4096];
        snprintf(lp, sizeof(lp), "%s/LOCK", j->dir);
        j->lockfd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (j->lockfd < 0) {
            snprintf(err, errcap, "journal: cannot open %s: %s", lp, strerror(errno));
            goto fail;
        }
        if (flock(j->lockfd, LOCK_EX | LOCK_NB) < 0) {
            snprintf(err, errcap, "journal: %s is in use by another journal (%s)", j->dir,
                     strerror(errno));
            rc = KFG_EEXIST;
            goto fail;
        }
    }
    uint64_t *names = NULL;
    size_t nnames = 0;
    if (list_segments(j->dir, &names, &nnames) < 0) {
        snprintf(err, errcap, "journal: cannot list %s: %s", j->dir, strerror(errno));
        goto fail;
    }
    int64_t cutoff = now_real_ms() - (j->window_ms >= 0 ? j->window_ms : 0);
    uint64_t expect = 0;
    for (size_t i = 0; i < nnames; i++) {
        if (names[i] == 0 || names[i] >= SEQ_LIMIT) {
            snprintf(err, errcap, "journal: segment %s/%020" PRIu64 ".kfj: sequence out of range",
                     j->dir, names[i]);
            free(names);
            goto fail;
        }
        if (open_segment(j, names[i], i + 1 == nnames, o->truncate_corrupt, cutoff, &expect,
                         err, errcap) < 0) {
            free(names);
            goto fail;
        }
    }
    free(names);
    if (!j->nsegs) {
        struct seg *s = seg_create(j, 1, err, errcap);
        if (!s)
            goto fail;
        if (segs_add(j, s) < 0) {
            seg_free(s);
            snprintf(err, errcap, "journal: out of memory");
            goto fail;
        }
    }
    struct seg *act = j->segs[j->nsegs - 1];
    j->next_seq = act->first + act->count;
    atomic_store(&j->committed, j->next_seq - 1);
    atomic_store(&j->last_assigned, j->next_seq - 1);
    retention(j);
    if (j->policy == KFG_FSYNC_INTERVAL) {
        if (pthread_create(&j->ythr, NULL, syncer_main, j) != 0) {
            snprintf(err, errcap, "journal: cannot start the fsync thread");
            goto fail;
        }
        j->ystarted = 1;
    }
    if (pthread_create(&j->thr, NULL, writer_main, j) != 0) {
        snprintf(err, errcap, "journal: cannot start the writer thread");
        goto fail;
    }
    j->started = 1;
    kfg_info("journal: opened %s: %zu segments, seq %" PRIu64 "..%" PRIu64 ", %zu dedupe keys",
             j->dir, j->nsegs, j->segs[0]->first, j->next_seq - 1,
             j->dd.eend - j->dd.ehead);
    *out = j;
    return KFG_OK;
fail:
    journal_free(j);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* append */

static int queue_reserve_entry(struct queue *q)
{
    if (q->n < q->cap)
        return 0;
    size_t nc = q->cap ? q->cap * 2 : 256;
    struct pend *ne = realloc(q->e, nc * sizeof(*ne));
    if (!ne)
        return -1;
    q->e = ne;
    q->cap = nc;
    return 0;
}

static void wake_writer(struct kfg_journal *j)
{
    if (j->writer_idle)
        pthread_cond_signal(&j->cv);
}

static int append_impl(struct kfg_journal *j, const void *key, size_t keylen,
                       kfg_journal_encode_fn enc, void *enc_arg, kfg_journal_done_fn done,
                       void *done_arg, int wake)
{
    if (!j || !enc || keylen > KFG_JOURNAL_MAX_KEY || (keylen && !key))
        return KFG_EINVAL;
    pthread_mutex_lock(&j->mu);
    int rc;
    if (j->closing) {
        rc = KFG_ESTOPPED;
        goto out;
    }
    if (j->failed) {
        rc = KFG_EFAIL;
        goto out;
    }
    if (j->pending >= j->max_pending) {
        j->n_again++;
        rc = KFG_AGAIN;
        goto out;
    }
    if (queue_reserve_entry(&j->fill) < 0) {
        rc = KFG_ENOMEM;
        goto out;
    }
    int64_t now = now_real_ms();
    int dedupe = keylen && j->window_ms >= 0;
    if (dedupe) {
        dd_expire(&j->dd, now - j->window_ms);
        struct dent *e = dd_lookup(&j->dd, key, keylen);
        if (e) {
            struct pend *p = &j->fill.e[j->fill.n++];
            p->seq = e->seq;
            p->done = done;
            p->arg = done_arg;
            p->len = 0;
            p->dup = 1;
            j->pending++;
            j->n_dups++;
            if (wake)
                wake_writer(j);
            rc = KFG_OK;
            goto out;
        }
    }
    uint64_t seq = j->next_seq;
    int64_t ms = now > j->last_ms ? now : j->last_ms;
    kfg_buf_reset(&j->scratch);
    rc = enc(enc_arg, seq, ms, &j->scratch);
    if (rc != 0) {
        rc = rc < 0 ? rc : KFG_EFAIL;
        goto out;
    }
    if (j->scratch.oom) {
        rc = KFG_ENOMEM;
        goto out;
    }
    size_t plen = j->scratch.len;
    if (plen > KFG_JOURNAL_MAX_PAYLOAD) {
        rc = KFG_EINVAL;
        goto out;
    }
    size_t blen = KFG_JOURNAL_BODY_MIN + keylen + plen;
    size_t total = KFG_JOURNAL_REC_HDR + blen;
    struct kfg_buf *b = &j->fill.buf;
    if (kfg_buf_reserve(b, total) < 0) {
        b->oom = 0;   /* the buffer itself is intact; only this record is refused */
        rc = KFG_ENOMEM;
        goto out;
    }
    if (dedupe && dd_insert(&j->dd, key, keylen, seq, ms) < 0) {
        rc = KFG_ENOMEM;
        goto out;
    }
    uint8_t *r = (uint8_t *)b->p + b->len;
    put32(r, (uint32_t)blen);
    uint8_t *body = r + KFG_JOURNAL_REC_HDR;
    put64(body, seq);
    put64(body + 8, (uint64_t)ms);
    put16(body + 16, (uint16_t)keylen);
    if (keylen)
        memcpy(body + KFG_JOURNAL_BODY_MIN, key, keylen);
    if (plen)
        memcpy(body + KFG_JOURNAL_BODY_MIN + keylen, j->scratch.p, plen);
    uint32_t c = kfg_crc32c(0, r, 4);
    put32(r + 4, kfg_crc32c(c, body, blen));
    b->len += total;
    struct pend *p = &j->fill.e[j->fill.n++];
    p->seq = seq;
    p->done = done;
    p->arg = done_arg;
    p->len = (uint32_t)total;
    p->dup = 0;
    j->next_seq = seq + 1;
    atomic_store_explicit(&j->last_assigned, seq, memory_order_release);
    j->last_ms = ms;
    j->pending++;
    j->n_appends++;
    if (wake)
        wake_writer(j);
    rc = KFG_OK;
out:
    pthread_mutex_unlock(&j->mu);
    return rc;
}

int kfg_journal_append(struct kfg_journal *j, const void *key, size_t keylen,
                       kfg_journal_encode_fn enc, void *enc_arg, kfg_journal_done_fn done,
                       void *done_arg)
{
    return append_impl(j, key, keylen, enc, enc_arg, done, done_arg, 1);
}

int kfg_journal_append_deferred(struct kfg_journal *j, const void *key, size_t keylen,
                                kfg_journal_encode_fn enc, void *enc_arg,
                                kfg_journal_done_fn done, void *done_arg)
{
    return append_impl(j, key, keylen, enc, enc_arg, done, done_arg, 0);
}

void kfg_journal_kick(struct kfg_journal *j)
{
    pthread_mutex_lock(&j->mu);
    if (j->fill.n)
        wake_writer(j);
    pthread_mutex_unlock(&j->mu);
}

/* ------------------------------------------------------------------------ */
/* writer */

static void set_failed(struct kfg_journal *j)
{
    pthread_mutex_lock(&j->mu);
    j->failed = 1;
    pthread_mutex_unlock(&j->mu);
}

/* The caller cleared j->unsynced first where that applies; the segment's
 * mark is cleared before the flush, so data written meanwhile stays marked
 * for the next one. */
static int do_sync(struct kfg_journal *j, struct seg *s)
{
    atomic_store(&s->dirty, 0);
    if (fdatasync(s->fd) < 0) {
        kfg_error("journal: fdatasync %s failed: %s; the journal stops accepting appends",
                  s->path, strerror(errno));
        return -1;
    }
    atomic_fetch_add_explicit(&j->n_fsyncs, 1, memory_order_relaxed);
    return 0;
}

/* Writes len bytes of whole records to the end of s and indexes them. */
static int flush_chunk(struct kfg_journal *j, struct seg *s, const uint8_t *data, size_t len)
{
    if (!len)
        return 0;
    if (pwrite_full(s->fd, data, len, s->size) < 0) {
        kfg_error("journal: write to %s failed: %s; the journal stops accepting appends",
                  s->path, strerror(errno));
        return -1;
    }
    atomic_store(&s->dirty, 1);
    if (!atomic_exchange(&j->unsynced, 1) && j->policy == KFG_FSYNC_INTERVAL) {
        pthread_mutex_lock(&j->ymu);
        pthread_cond_signal(&j->ycv);
        pthread_mutex_unlock(&j->ymu);
    }
    atomic_fetch_add_explicit(&j->n_written, len, memory_order_relaxed);
    pthread_mutex_lock(&j->smu);
    size_t at = 0;
    int rc = 0;
    while (at < len) {
        size_t sz = KFG_JOURNAL_REC_HDR + get32(data + at);
        int64_t ms = (int64_t)get64(data + at + KFG_JOURNAL_REC_HDR + 8);
        if (seg_push(s, s->size + at, sz, ms) < 0) {
            kfg_error("journal: out of memory indexing %s", s->path);
            rc = -1;
            break;
        }
        at += sz;
    }
    s->size += at;
    j->total_bytes += at;
    pthread_mutex_unlock(&j->smu);
    return rc;
}

static void seg_release(struct kfg_journal *j, struct seg *s);

/* KFG_FSYNC_INTERVAL: the fsync that bounds what a power loss can take,
 * on the syncer thread while the writer goes on writing. The mark is
 * cleared before the segment is picked: anything written before the clear
 * is in that segment or in an older one, which the writer synced when it
 * rolled past it; anything after it sets the mark again. The segment is
 * held so that retention cannot close it meanwhile. */
static int interval_sync(struct kfg_journal *j)
{
    if (!atomic_exchange(&j->unsynced, 0))
        return 0;
    pthread_mutex_lock(&j->smu);
    struct seg *s = j->nsegs ? j->segs[j->nsegs - 1] : NULL;
    if (s)
        s->refs++;
    pthread_mutex_unlock(&j->smu);
    if (!s)
        return 0;
    if (j->before_sync)
        j->before_sync(j->before_sync_arg);
    int rc = do_sync(j, s);
    seg_release(j, s);
    return rc;
}

/* The interval runs from fsync start to fsync start. */
static void *syncer_main(void *arg)
{
    struct kfg_journal *j = arg;
    pthread_mutex_lock(&j->ymu);
    while (!j->ystop) {
        if (!atomic_load(&j->unsynced)) {
            pthread_cond_wait(&j->ycv, &j->ymu);
            continue;
        }
        int64_t now = now_mono_ms(), due = j->last_fsync_mono + j->interval_ms;
        if (now < due) {
            struct timespec dl = mono_deadline(due);
            pthread_cond_timedwait(&j->ycv, &j->ymu, &dl);
            continue;
        }
        j->last_fsync_mono = now;
        pthread_mutex_unlock(&j->ymu);
        int rc = interval_sync(j);
        if (rc < 0)
            set_failed(j);
        pthread_mutex_lock(&j->ymu);
        if (rc < 0)
            break;
    }
    pthread_mutex_unlock(&j->ymu);
    return NULL;
}

static void syncer_stop(struct kfg_journal *j)
{
    if (!j->ystarted)
        return;
    pthread_mutex_lock(&j->ymu);
    j->ystop = 1;
    pthread_cond_signal(&j->ycv);
    pthread_mutex_unlock(&j->ymu);
    pthread_join(j->ythr, NULL);
    j->ystarted = 0;
}

/* Writes a batch; returns 0 once it is committed under the policy. */
static int write_batch(struct kfg_journal *j, struct queue *q, uint64_t *last_rec)
{
    const uint8_t *p = (const uint8_t *)q->buf.p;
    struct seg *s = j->segs[j->nsegs - 1];
    size_t start = 0, end = 0;
    for (size_t i = 0; i < q->n; i++) {
        struct pend *e = &q->e[i];
        if (e->dup)
            continue;
        if ((s->count || end > start) && s->size + (end - start) + e->len > j->seg_bytes) {
            if (flush_chunk(j, s, p + start, end - start) < 0)
                return -1;
            start = end;
            /* Before the new segment exists: see interval_sync. */
            if (j->policy != KFG_FSYNC_NEVER && do_sync(j, s) < 0)
                return -1;
            char err[512];
            struct seg *ns = seg_create(j, e->seq, err, sizeof(err));
            if (!ns) {
                kfg_error("%s; the journal stops accepting appends", err);
                return -1;
            }
            if (segs_add(j, ns) < 0) {
                kfg_error("journal: out of memory adding a segment");
                unlink(ns->path);
                seg_free(ns);
                return -1;
            }
            s = ns;
        }
        end += e->len;
        *last_rec = e->seq;
    }
    if (flush_chunk(j, s, p + start, end - start) < 0)
        return -1;
    if (j->policy == KFG_FSYNC_ALWAYS && atomic_exchange(&j->unsynced, 0) && do_sync(j, s) < 0)
        return -1;
    return 0;
}

static void *writer_main(void *arg)
{
    struct kfg_journal *j = arg;
    pthread_mutex_lock(&j->mu);
    for (;;) {
        while (j->fill.n == 0 && !j->closing) {
            j->writer_idle = 1;
            struct timespec dl = mono_deadline(now_mono_ms() + 1000);
            int w = pthread_cond_timedwait(&j->cv, &j->mu, &dl);
            j->writer_idle = 0;
            if (w == ETIMEDOUT && j->fill.n == 0) {
                if (j->window_ms >= 0)
                    dd_expire(&j->dd, now_real_ms() - j->window_ms);
                pthread_mutex_unlock(&j->mu);
                retention(j);
                pthread_mutex_lock(&j->mu);
            }
        }
        if (j->fill.n == 0 && j->closing)
            break;
        struct queue tmp = j->fill;
        j->fill = j->work;
        j->work = tmp;
        int was_failed = j->failed, closing = j->closing;
        pthread_mutex_unlock(&j->mu);

        struct queue *q = &j->work;
        uint64_t last_rec = 0;
        int ok = 0, fail_rc = closing ? KFG_ESTOPPED : KFG_EFAIL;
        if (!was_failed) {
            if (write_batch(j, q, &last_rec) == 0) {
                ok = 1;
                if (last_rec)
                    atomic_store_explicit(&j->committed, last_rec, memory_order_release);
            } else {
                fail_rc = KFG_EFAIL;
                set_failed(j);
            }
        }
        atomic_fetch_add_explicit(&j->n_batches, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&j->n_batch_records, q->n, memory_order_relaxed);
        if (q->n > atomic_load_explicit(&j->n_batch_max, memory_order_relaxed))
            atomic_store_explicit(&j->n_batch_max, q->n, memory_order_relaxed);
        pthread_mutex_lock(&j->mu);
        j->pending -= q->n;
        pthread_mutex_unlock(&j->mu);

        uint64_t committed = atomic_load_explicit(&j->committed, memory_order_acquire);
        for (size_t i = 0; i < q->n; i++) {
            struct pend *e = &q->e[i];
            int res = e->dup ? (e->seq <= committed ? KFG_OK : fail_rc)
                             : (ok ? KFG_OK : fail_rc);
            if (e->done)
                e->done(e->arg, res, e->seq, (int)e->dup);
        }
        q->n = 0;
        kfg_buf_reset(&q->buf);
        if (ok)
            retention(j);
        pthread_mutex_lock(&j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    /* Close: whatever policy, everything written this session goes to disk. */
    for (size_t i = 0; !j->failed && i < j->nsegs; i++) {
        struct seg *s = j->segs[i];
        if (atomic_load(&s->dirty) && do_sync(j, s) < 0)
            break;
    }
    if (j->policy == KFG_FSYNC_NEVER)
        fsync(j->dirfd);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* read */

static void seg_release(struct kfg_journal *j, struct seg *s)
{
    pthread_mutex_lock(&j->smu);
    int freeit = --s->refs == 0 && s->dead;
    pthread_mutex_unlock(&j->smu);
    if (freeit)
        seg_free(s);
}

int kfg_journal_read(struct kfg_journal *j, uint64_t from_seq, size_t max_records,
                     kfg_journal_read_fn cb, void *arg)
{
    if (!j || !cb)
        return KFG_EINVAL;
    uint8_t *buf = NULL;
    size_t bcap = 0;
    int n = 0, stop = 0;
    uint64_t from = from_seq ? from_seq : 1;
    while (!stop && (!max_records || (size_t)n < max_records) && n < INT32_MAX) {
        pthread_mutex_lock(&j->smu);
        uint64_t committed = atomic_load_explicit(&j->committed, memory_order_acquire);
        if (from > committed || !j->nsegs) {
            pthread_mutex_unlock(&j->smu);
            break;
        }
        /* last segment with first <= from */
        size_t lo = 0, hi = j->nsegs;
        while (hi - lo > 1) {
            size_t mid = (lo + hi) / 2;
            if (j->segs[mid]->first <= from)
                lo = mid;
            else
                hi = mid;
        }
        size_t i = lo;
        struct seg *s = j->segs[i];
        if (from < s->first)
            from = s->first;
        while (from >= s->first + s->count) {
            if (++i == j->nsegs) {
                s = NULL;
                break;
            }
            s = j->segs[i];
            if (from < s->first)
                from = s->first;
        }
        if (!s || from > committed) {
            pthread_mutex_unlock(&j->smu);
            break;
        }
        size_t ri = (size_t)(from - s->first);
        uint64_t avail = s->count - ri;
        if (avail > committed - from + 1)
            avail = committed - from + 1;
        if (max_records && avail > max_records - (size_t)n)
            avail = max_records - (size_t)n;
        size_t k = 1;
        uint32_t start = s->off[ri];
        while (k < avail && s->off[ri + k + 1] - start <= READ_CHUNK)
            k++;
        size_t len = s->off[ri + k] - start;
        s->refs++;
        pthread_mutex_unlock(&j->smu);

        if (len > bcap) {
            uint8_t *nb = realloc(buf, len);
            if (!nb) {
                seg_release(j, s);
                n = KFG_ENOMEM;
                break;
            }
            buf = nb;
            bcap = len;
        }
        int rrc = pread_full(s->fd, buf, len, start);
        if (rrc < 0) {
            kfg_error("journal: read %s at offset %u failed: %s", s->path, start,
                      strerror(errno));
            seg_release(j, s);
            n = KFG_EFAIL;
            break;
        }
        size_t at = 0;
        for (size_t r = 0; r < k && !stop; r++) {
            struct kfg_journal_rec rec;
            const char *why = NULL;
            size_t sz = parse_record(buf + at, len - at, from, &rec, &why);
            if (!sz) {
                kfg_error("journal: %s offset %zu: record seq %" PRIu64 " fails verification (%s)",
                          s->path, (size_t)start + at, from, why);
                n = KFG_EFAIL;
                stop = 2;
                break;
            }
            n++;
            if (cb(arg, rec.seq, rec.accepted_ms, rec.key, rec.keylen, rec.payload, rec.len))
                stop = 1;
            at += sz;
            from++;
        }
        seg_release(j, s);
    }
    free(buf);
    return n;
}

/* ------------------------------------------------------------------------ */
/* queries, close */

uint64_t kfg_journal_last_seq(struct kfg_journal *j)
{
    return atomic_load_explicit(&j->last_assigned, memory_order_acquire);
}

uint64_t kfg_journal_committed_seq(struct kfg_journal *j)
{
    return atomic_load_explicit(&j->committed, memory_order_acquire);
}

uint64_t kfg_journal_first_seq(struct kfg_journal *j)
{
    uint64_t first = 0;
    pthread_mutex_lock(&j->smu);
    for (size_t i = 0; i < j->nsegs; i++)
        if (j->segs[i]->count) {
            first = j->segs[i]->first;
            break;
        }
    pthread_mutex_unlock(&j->smu);
    return first ? first : kfg_journal_last_seq(j) + 1;
}

void kfg_journal_stats(struct kfg_journal *j, struct kfg_journal_stats *st)
{
    memset(st, 0, sizeof(*st));
    pthread_mutex_lock(&j->mu);
    st->pending = j->pending;
    st->max_pending = j->max_pending;
    st->appends = j->n_appends;
    st->duplicates = j->n_dups;
    st->again = j->n_again;
    st->dedupe_keys = j->dd.tcount;
    st->failed = (uint64_t)j->failed;
    pthread_mutex_unlock(&j->mu);
    pthread_mutex_lock(&j->smu);
    st->bytes = j->total_bytes;
    st->segments = j->nsegs;
    pthread_mutex_unlock(&j->smu);
    st->first_seq = kfg_journal_first_seq(j);
    st->last_seq = kfg_journal_last_seq(j);
    st->committed_seq = kfg_journal_committed_seq(j);
    st->batches = atomic_load(&j->n_batches);
    st->batch_records = atomic_load(&j->n_batch_records);
    st->batch_max = atomic_load(&j->n_batch_max);
    st->fsyncs = atomic_load(&j->n_fsyncs);
    st->bytes_written = atomic_load(&j->n_written);
    st->segments_deleted = atomic_load(&j->n_deleted);
}

void kfg_journal_close(struct kfg_journal *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&j->mu);
    j->closing = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    if (j->started)
        pthread_join(j->thr, NULL);
    kfg_info("journal: closed %s at seq %" PRIu64, j->dir, kfg_journal_committed_seq(j));
    journal_free(j);
}
