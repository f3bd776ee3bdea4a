/*
 * libFuzzer harness for the journal's recovery of untrusted bytes: whatever
 * a segment file holds (torn, zeroed, garbage, hostile), recovery must not
 * crash, must keep exactly a prefix of whole valid records, and must leave a
 * journal that works and reopens cleanly.
 *
 * The first byte picks the mode, the rest is a segment image:
 *   even: kfg_journal_scan over a heap copy of exactly the image, checking
 *         that every record slice lies inside it, offsets are contiguous,
 *         seqs consecutive, and the good prefix is consistent with *why;
 *   odd:  the image is written as the last (only) segment of a journal in a
 *         temporary directory and opened; on a bad header, opened again with
 *         truncate_corrupt. The recovered journal must read back exactly
 *         last_seq - first_seq + 1 consecutive records, accept an append,
 *         close, and reopen with no repair at last_seq + 1.
 * Bit 1 of the mode byte: take first_seq from the image's header (else 1).
 * Bit 2: first recompute the CRC of every record whose length fits, so the
 * checks behind the checksum (sequence, key length) get explored too.
 */
#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "journal.h"
#include "kfgate/plugin.h"
#include "log.h"

struct scan_chk {
    const uint8_t *base;
    size_t len;
    size_t next_off;
    uint64_t next_seq;
    size_t n;
};

static void inside(const struct scan_chk *c, const void *p, size_t n)
{
    const uint8_t *q = p;
    if (n == 0)
        return;
    if (!q || q < c->base || q > c->base + c->len || n > (size_t)(c->base + c->len - q))
        abort();
}

static int scan_cb(void *arg, const struct kfg_journal_rec *r)
{
    struct scan_chk *c = arg;
    if (r->offset != c->next_off || r->seq != c->next_seq)
        abort();
    if (r->size < KFG_JOURNAL_REC_HDR + KFG_JOURNAL_BODY_MIN || r->offset + r->size > c->len)
        abort();
    inside(c, r->key, r->keylen);
    inside(c, r->payload, r->len);
    if (r->keylen + r->len + KFG_JOURNAL_BODY_MIN + KFG_JOURNAL_REC_HDR != r->size)
        abort();
    c->next_off = r->offset + r->size;
    c->next_seq++;
    c->n++;
    return 0;
}

static uint64_t hdr_seq(const uint8_t *p, size_t len)
{
    uint64_t s = 0;
    if (len < 16)
        return 1;
    for (int i = 7; i >= 0; i--)
        s = s << 8 | p[8 + i];
    /* keep it a valid file name and away from the sequence limit */
    if (s == 0 || s >= ((uint64_t)1 << 62))
        s = 1;
    return s;
}

static void fix_crcs(uint8_t *p, size_t len)
{
    size_t off = KFG_JOURNAL_SEG_HDR;
    while (len >= KFG_JOURNAL_REC_HDR && off <= len - KFG_JOURNAL_REC_HDR) {
        uint32_t blen = (uint32_t)p[off] | (uint32_t)p[off + 1] << 8 |
                        (uint32_t)p[off + 2] << 16 | (uint32_t)p[off + 3] << 24;
        if (blen < KFG_JOURNAL_BODY_MIN || blen > len - off - KFG_JOURNAL_REC_HDR)
            return;
        uint32_t c = kfg_crc32c(0, p + off, 4);
        c = kfg_crc32c(c, p + off + KFG_JOURNAL_REC_HDR, blen);
        for (int i = 0; i < 4; i++)
            p[off + 4 + i] = (uint8_t)(c >> (8 * i));
        off += KFG_JOURNAL_REC_HDR + blen;
    }
}

static char g_dir[64];

static void clear_dir(void)
{
    DIR *d = opendir(g_dir);
    if (!d)
        return;
    struct dirent *de;
    char p[256];
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s", g_dir, de->d_name);
        unlink(p);
    }
    closedir(d);
}

static void remove_dir(void)
{
    clear_dir();
    rmdir(g_dir);
}

struct rd {
    uint64_t next;
    size_t n;
};

static int read_cb(void *arg, uint64_t seq, int64_t ms, const void *key, size_t keylen,
                   const void *payload, size_t len)
{
    struct rd *r = arg;
    (void)ms;
    if (seq != r->next)
        abort();
    if ((keylen && !key) || (len && !payload))
        abort();
    /* touch every byte so ASan sees any bad slice */
    volatile uint8_t x = 0;
    for (size_t i = 0; i < keylen; i++)
        x ^= ((const uint8_t *)key)[i];
    for (size_t i = 0; i < len; i++)
        x ^= ((const uint8_t *)payload)[i];
    (void)x;
    r->next++;
    r->n++;
    return 0;
}

static int enc(void *arg, uint64_t seq, int64_t ms, struct kfg_buf *out)
{
    (void)arg, (void)seq, (void)ms;
    kfg_buf_puts(out, "fuzz");
    return 0;
}

static void check_open(const uint8_t *img, size_t len, uint64_t first)
{
    clear_dir();
    char path[128];
    snprintf(path, sizeof(path), "%s/%020" PRIu64 ".kfj", g_dir, first);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        abort();
    if (len && write(fd, img, len) != (ssize_t)len)
        abort();
    close(fd);

    struct kfg_journal_opts o;
    kfg_journal_opts_init(&o);
    o.dir = g_dir;
    o.fsync = KFG_FSYNC_NEVER;
    o.segment_bytes = 4096;
    struct kfg_journal *j = NULL;
    char err[512];
    int rc = kfg_journal_open(&o, &j, err, sizeof(err));
    if (rc != KFG_OK) {
        /* only a bad full header is refused; the repair must then work */
        if (len < KFG_JOURNAL_SEG_HDR || !strstr(err, "bad header"))
            abort();
        o.truncate_corrupt = 1;
        if (kfg_journal_open(&o, &j, err, sizeof(err)) != KFG_OK)
            abort();
        o.truncate_corrupt = 0;
    }
    uint64_t last = kfg_journal_last_seq(j), firstq = kfg_journal_first_seq(j);
    if (kfg_journal_committed_seq(j) != last || firstq > last + 1)
        abort();
    if (last >= first && firstq != first)
        abort();
    struct rd r = { firstq, 0 };
    int n = kfg_journal_read(j, 0, 0, read_cb, &r);
    if (n < 0 || (uint64_t)n != last + 1 - firstq || (size_t)n != r.n)
        abort();
    if (kfg_journal_append(j, "fuzz-key", 8, enc, NULL, NULL, NULL) != KFG_OK)
        abort();
    kfg_journal_close(j);
    j = NULL;
    if (kfg_journal_open(&o, &j, err, sizeof(err)) != KFG_OK)
        abort();
    if (kfg_journal_last_seq(j) != last + 1)
        abort();
    kfg_journal_close(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        int nul = open("/dev/null", O_WRONLY);
        kfg_log_setup(KFG_LOG_LOGFMT, KFG_LOG_ERROR, nul);
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(g_dir, sizeof(g_dir), "%s/kfj_fuzz.XXXXXX", base);
        if (!mkdtemp(g_dir))
            abort();
        atexit(remove_dir);
        init = 1;
    }
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    size_t len = size - 1;
    uint8_t *img = malloc(len ? len : 1);
    if (!img)
        return 0;
    memcpy(img, data + 1, len);
    if (mode & 4)
        fix_crcs(img, len);
    uint64_t first = (mode & 2) ? hdr_seq(img, len) : 1;
    if (!(mode & 1)) {
        struct scan_chk c = { img, len, KFG_JOURNAL_SEG_HDR, first, 0 };
        const char *why = (const char *)1;
        size_t good = kfg_journal_scan(img, len, first, scan_cb, &c, &why);
        if (good > len || (good && good < KFG_JOURNAL_SEG_HDR))
            abort();
        if (!why && good != len)
            abort();
        if (why && good == len && len >= KFG_JOURNAL_SEG_HDR)
            abort();
        if (good && good != c.next_off)
            abort();
        /* the same image again without a callback gives the same answer */
        const char *why2 = NULL;
        if (kfg_journal_scan(img, len, first, NULL, NULL, &why2) != good || why2 != why)
            abort();
    } else {
        check_open(img, len, first);
    }
    free(img);
    return 0;
}
