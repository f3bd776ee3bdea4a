/*
 * Multi-word matcher for the keyword filter: an Aho–Corasick automaton over
 * UTF-8 bytes, ASCII case-insensitive.
 *
 * Build once (kwm_add... then kwm_build), then share: after kwm_build the
 * matcher is never written again, so any number of threads may call
 * kwm_find and kwm_mask on it at the same time without locks.
 *
 * Matching works on bytes. That is exact for UTF-8 because UTF-8 is
 * self-synchronizing: a valid word starts with a lead byte (never a
 * continuation byte 10xxxxxx) and ends with a complete character, so in
 * valid UTF-8 text it can only match whole characters. Words are checked
 * for valid UTF-8 in kwm_add. Case folding touches only ASCII A-Z; other
 * scripts (Chinese has no case) are compared byte for byte.
 */
#ifndef KWF_MATCH_H
#define KWF_MATCH_H

#include <stddef.h>

enum {
    KWM_OK = 0,
    KWM_EINVAL = -1,     /* empty word, invalid UTF-8, or added after build */
    KWM_ENOMEM = -2,
};

struct kwm;

/* One match: bytes [start, start + len) of the text, and the index (order
 * of kwm_add calls, from 0) of the longest word that ends there. */
struct kwm_hit {
    size_t start, len;
    size_t word;
};

struct kwm *kwm_new(void);
void kwm_free(struct kwm *m);

/* Adds a word (copied). A word added twice, also in another ASCII case,
 * keeps its first index. */
int kwm_add(struct kwm *m, const char *word, size_t len);
/* Computes the failure links and packs the automaton; no kwm_add after. */
int kwm_build(struct kwm *m);

size_t kwm_states(const struct kwm *m);   /* for logs: automaton size */

/* The first match to end in text (the longest word ending at that byte).
 * Returns 1 and fills *hit, or 0 when nothing matches. */
int kwm_find(const struct kwm *m, const char *text, size_t len, struct kwm_hit *hit);

/* Replaces every match (overlapping and nested ones merged) with `mask`,
 * one mask byte per UTF-8 character of the matched text. On a match returns
 * the number of merged ranges (> 0) and a malloc'd copy in *out / *out_len
 * (not NUL-terminated; free it); 0 and *out = NULL when nothing matched;
 * KWM_ENOMEM. */
long kwm_mask(const struct kwm *m, const char *text, size_t len, char mask,
              char **out, size_t *out_len);

/* 1 if s[0..len) is valid UTF-8 (no overlongs, surrogates or > U+10FFFF). */
int kwm_utf8_valid(const char *s, size_t len);

#endif
