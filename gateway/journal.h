/*
 * The durable journal: an append-only, segmented, checksummed log of opaque
 * records (the bus's msgpack envelopes), with group commit, a configurable
 * fsync policy, torn-tail recovery, retention, and idempotency-key dedupe
 * stored in the same record as the message.
 *
 * ON-DISK FORMAT (all integers little-endian)
 *
 *   Directory `dir` holds the segment files and a lock file:
 *     LOCK                         flock(LOCK_EX) while a journal is open, so
 *                                  two processes never write the same dir
 *     NNNNNNNNNNNNNNNNNNNN.kfj     a segment; the name is the sequence number
 *                                  of its first record, 20 decimal digits,
 *                                  zero-padded (e.g. 00000000000000000001.kfj)
 *   Other names are ignored. Sequences start at 1 and grow by exactly 1 from
 *   record to record; segments sort by name = by sequence.
 *
 *   Segment file:
 *     offset 0   8 bytes  magic "KFGJRNL1"
 *     offset 8   u64      first_seq (must equal the file name)
 *     offset 16  records, back to back, nothing between them:
 *
 *   Record (8-byte header + body):
 *     u32  body_len        bytes of the body below, 18 .. 18+65535+16 MiB
 *     u32  crc             CRC32C (Castagnoli, reflected, init and final xor
 *                          0xFFFFFFFF) over the 4 bytes of body_len followed
 *                          by the whole body
 *     body:
 *       u64  seq           the previous record's seq + 1 (the first record
 *                          of a segment has seq = first_seq)
 *       i64  accepted_ms   wall-clock ms since the epoch when the journal
 *                          accepted it; never decreases from record to record
 *       u16  key_len       0 = no idempotency key
 *       key_len bytes      the idempotency key
 *       payload            the rest of the body (opaque; may be empty)
 *
 *   A record is recognised only if its header is whole, body_len is in range,
 *   the body is whole, the CRC matches and seq is the expected one. On open,
 *   the last segment is cut (ftruncate) at the first unrecognised byte: that
 *   is how a torn write, a zero-filled or a garbage tail is recovered, and it
 *   is logged (segment, offset, bytes cut, reason). Any unrecognised byte in
 *   a segment that is not the last, or a bad segment header, makes open fail
 *   with the file and offset, unless opts.truncate_corrupt is set, in which
 *   case that segment is cut there too and the journal opens with a gap in
 *   the sequence (logged at error level). Gaps between segments (a missing
 *   middle file) are logged and tolerated; overlapping segments are refused.
 *
 * COMMIT. A record is committed when it has been written and, under
 * KFG_FSYNC_ALWAYS, fdatasync'ed by its batch (group commit: one fsync for
 * everything queued while the previous one ran). Under KFG_FSYNC_INTERVAL
 * and KFG_FSYNC_NEVER it is committed once write() returned: it is in the
 * kernel and survives a crash of the gateway (SIGKILL, abort, OOM kill) at
 * once. What a power loss or kernel crash can take differs: under INTERVAL
 * a syncer thread of its own fdatasyncs at most interval_ms after a write
 * (also when no further record arrives), so at most the last interval_ms
 * (plus one fsync) of records, and a slow fsync never holds up a commit;
 * under NEVER whatever the kernel had not written back. This is
 * Redis's appendfsync always / everysec / no, and Kafka's flush.ms: the
 * latency of an fsync is paid only by those who ask for ALWAYS.
 * Completion callbacks and kfg_journal_read see only committed records.
 *
 * THREADING. Every function may be called from any thread, concurrently,
 * except open/close. Completion callbacks run on the journal's writer thread
 * with no journal lock held (they may call append or read; they should be
 * quick: they delay the next batch). Read callbacks run on the reader's
 * thread with no lock held.
 *
 * FAILURE. A failed write or fsync puts the journal in a failed state
 * (fsync errors cannot be retried safely): the affected batch completes with
 * KFG_EFAIL, and so does every later append. Close and reopen to recover;
 * open cuts whatever was half-written.
 */
#ifndef KFG_JOURNAL_H
#define KFG_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

enum kfg_fsync_policy {
    KFG_FSYNC_ALWAYS = 0,     /* one fdatasync per batch before completion */
    KFG_FSYNC_INTERVAL = 1,   /* completion after write(); fdatasync within
                                 interval_ms of it */
    KFG_FSYNC_NEVER = 2,      /* completion after write(); fsync only at close */
};

#define KFG_JOURNAL_MAX_KEY 65535u
#define KFG_JOURNAL_MAX_PAYLOAD (16u << 20)
#define KFG_JOURNAL_MAX_SEGMENT ((size_t)1 << 30)   /* largest segment_bytes */
#define KFG_JOURNAL_NO_DEDUPE UINT32_MAX            /* dedupe_window_s: off */

struct kfg_journal_opts {
    const char *dir;              /* created (one level) if missing */
    size_t segment_bytes;         /* roll over past this; 0 = 64 MiB;
                                     4096 .. KFG_JOURNAL_MAX_SEGMENT */
    int fsync;                    /* enum kfg_fsync_policy */
    uint32_t interval_ms;         /* KFG_FSYNC_INTERVAL; 0 = 10 */
    uint64_t max_bytes;           /* retention: 0 = no limit */
    uint32_t max_age_s;           /* retention: 0 = no limit */
    uint32_t dedupe_window_s;     /* 0 = 86400; KFG_JOURNAL_NO_DEDUPE = off */
    uint32_t max_pending;         /* appends not yet completed; 0 = 65536 */
    int truncate_corrupt;         /* cut corruption in non-last segments
                                     instead of refusing to open */
    /* Tests only: called on the syncing thread before each interval
     * fdatasync, to make one slow. NULL in production. */
    void (*test_before_sync)(void *arg);
    void *test_before_sync_arg;
};

/* Fills *o with the defaults above (dir NULL, fsync KFG_FSYNC_INTERVAL). */
void kfg_journal_opts_init(struct kfg_journal_opts *o);

struct kfg_journal;

/* Called inside append, under the journal's lock, with the record's sequence
 * number and accepted time: append the payload to `out` (which starts empty
 * and is the journal's own scratch buffer; do not keep it). Return 0, or a
 * negative kfg_result to abandon the append (append returns it; the sequence
 * number is not used). Must not call back into the journal. */
typedef int (*kfg_journal_encode_fn)(void *arg, uint64_t seq, int64_t accepted_ms,
                                     struct kfg_buf *out);

/* Called once per successful append, from the writer thread, in sequence
 * order, once the record is committed (result KFG_OK) or has failed
 * (KFG_EFAIL: write/fsync error; KFG_ESTOPPED: closed before it could be
 * written). duplicate = 1: the key was seen within the window; seq is the
 * original record's, nothing was appended, and result is the original's
 * (the call waits for the original's commit if it is still pending). */
typedef void (*kfg_journal_done_fn)(void *arg, int result, uint64_t seq, int duplicate);

/* Read callback: return 0 to go on, anything else to stop. Everything is
 * borrowed for the duration of the call. */
typedef int (*kfg_journal_read_fn)(void *arg, uint64_t seq, int64_t accepted_ms,
                                   const void *key, size_t keylen,
                                   const void *payload, size_t len);

/* Opens (creating if need be) the journal in o->dir and starts its writer
 * thread. Returns KFG_OK, or a negative kfg_result with a message in err
 * (KFG_EINVAL: bad option; KFG_EFAIL: I/O error or corruption, naming the
 * segment file and offset; KFG_EEXIST: another process has it open). */
int kfg_journal_open(const struct kfg_journal_opts *o, struct kfg_journal **out,
                     char *err, size_t errcap);

/* Queues one record. key/keylen: the idempotency key (keylen 0 = none;
 * at most KFG_JOURNAL_MAX_KEY). enc is called before this returns; done
 * (may be NULL) later. Returns KFG_OK (done will be called exactly once),
 * or, with no call to done: KFG_AGAIN (max_pending appends are in flight),
 * KFG_EINVAL (key or payload too long, enc NULL), KFG_ENOMEM, enc's error,
 * KFG_EFAIL (the journal has failed), KFG_ESTOPPED (closing). */
int kfg_journal_append(struct kfg_journal *j, const void *key, size_t keylen,
                       kfg_journal_encode_fn enc, void *enc_arg,
                       kfg_journal_done_fn done, void *done_arg);

/* The same, but an idle writer is not woken: the record waits for the next
 * kfg_journal_kick (or any other append). A thread that appends a burst
 * (one event-loop pass of requests) kicks once at its end, so the writer
 * takes the burst as one batch instead of preempting it after each record.
 * The caller must kick after a KFG_OK. */
int kfg_journal_append_deferred(struct kfg_journal *j, const void *key, size_t keylen,
                                kfg_journal_encode_fn enc, void *enc_arg,
                                kfg_journal_done_fn done, void *done_arg);
void kfg_journal_kick(struct kfg_journal *j);

/* Calls cb for committed records with seq >= from_seq, in order, at most
 * max_records of them (0 = no limit), skipping gaps (records removed by
 * retention or by truncate_corrupt). Returns the number of records passed to
 * cb (>= 0), or KFG_EFAIL on an I/O error or a record that no longer checks
 * out (logged). Safe alongside appends and retention. */
int kfg_journal_read(struct kfg_journal *j, uint64_t from_seq, size_t max_records,
                     kfg_journal_read_fn cb, void *arg);

uint64_t kfg_journal_last_seq(struct kfg_journal *j);      /* last assigned; 0 if none */
uint64_t kfg_journal_committed_seq(struct kfg_journal *j); /* last committed; 0 if none */
/* Oldest record still stored; last_seq + 1 when the journal holds none. */
uint64_t kfg_journal_first_seq(struct kfg_journal *j);

struct kfg_journal_stats {
    uint64_t bytes;              /* sum of segment file sizes */
    uint64_t segments;
    uint64_t pending;            /* appends not yet completed */
    uint64_t max_pending;
    uint64_t first_seq, last_seq, committed_seq;
    uint64_t appends;            /* records appended since open */
    uint64_t duplicates;         /* appends answered as duplicates */
    uint64_t dedupe_keys;        /* keys in the dedupe index now */
    uint64_t again;              /* appends refused with KFG_AGAIN */
    uint64_t batches;            /* writer batches (completion rounds) */
    uint64_t batch_records;      /* records in all batches (mean = / batches) */
    uint64_t batch_max;          /* largest batch, in records */
    uint64_t fsyncs;
    uint64_t bytes_written;      /* since open */
    uint64_t segments_deleted;   /* by retention, since open */
    uint64_t failed;             /* 1 once a write or fsync failed */
};

void kfg_journal_stats(struct kfg_journal *j, struct kfg_journal_stats *st);

/* Stops accepting appends, writes and fsyncs everything queued, completes
 * every pending append (KFG_OK if committed, else KFG_ESTOPPED / KFG_EFAIL),
 * joins the writer thread and frees j. No other call may race with it. */
void kfg_journal_close(struct kfg_journal *j);

/* ---------------------------------------------------------------------------
 * Building blocks, exposed for tests and the fuzzer.
 */
uint32_t kfg_crc32c(uint32_t crc, const void *data, size_t len);   /* crc = 0 to start */
uint32_t kfg_crc32c_sw(uint32_t crc, const void *data, size_t len); /* table only */

#define KFG_JOURNAL_SEG_HDR 16
#define KFG_JOURNAL_REC_HDR 8
#define KFG_JOURNAL_BODY_MIN 18

struct kfg_journal_rec {
    uint64_t seq;
    int64_t accepted_ms;
    const uint8_t *key;
    size_t keylen;
    const uint8_t *payload;
    size_t len;
    size_t offset;               /* of the record header in the segment */
    size_t size;                 /* header + body */
};

/* Parses a segment image (header and records) of len bytes that should
 * start at first_seq; calls fn (if not NULL) for each recognised record,
 * stopping early if fn returns nonzero. Returns the length of the good
 * prefix: KFG_JOURNAL_SEG_HDR + all recognised records, or 0 if the header
 * is bad or short. *why (if not NULL) is NULL if all len bytes are good,
 * else a static reason for the first bad byte at the returned offset. */
size_t kfg_journal_scan(const void *seg, size_t len, uint64_t first_seq,
                        int (*fn)(void *arg, const struct kfg_journal_rec *r),
                        void *arg, const char **why);

#endif
