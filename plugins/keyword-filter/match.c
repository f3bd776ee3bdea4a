/*
 * Aho–Corasick over bytes, built once, read-only afterwards.
 *
 * Why Aho–Corasick: the filter runs on every inbound message with lists of
 * hundreds to tens of thousands of sensitive words. Searching each word
 * separately costs O(words x text); the automaton reads each text byte once
 * (plus amortized failure-link steps), O(text + matches) whatever the number
 * of words.
 *
 * Why sparse transitions: a full 256-way table per state costs 1 KiB per
 * state; 10,000 Chinese words of ~3 characters (9 bytes) make ~90,000 states,
 * i.e. ~90 MiB per instance. Here a state stores only its real edges,
 * sorted by byte (binary search; most states have one or two), ~20 bytes per
 * state plus 5 per edge, a few MiB for the same list. Only the root, which
 * every failure path ends in, keeps a full 256-entry table.
 *
 * Layout after kwm_build: states are numbered in breadth-first order (the
 * root is 0), so the hot first levels sit together in memory.
 */
#include "match.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NONE UINT32_MAX

/* Build-time trie: children as linked lists in an edge pool. */
struct bedge {
    uint32_t next;       /* next sibling edge, or NONE */
    uint32_t target;
    uint8_t label;
};

struct bnode {
    uint32_t first;      /* first child edge, or NONE */
    uint32_t depth;
    uint32_t word;       /* word index if a word ends here, else NONE */
};

/* Packed automaton. */
struct state {
    uint32_t edge;       /* first edge in labels[]/targets[] */
    uint32_t fail;
    uint32_t out_len;    /* longest word that is a suffix of this state, 0 = none */
    uint32_t out_word;   /* its index */
    uint16_t nedge;
};

struct kwm {
    /* build time */
    struct bnode *bn;
    size_t nbn, capbn;
    struct bedge *be;
    size_t nbe, capbe;
    size_t nwords;       /* kwm_add calls that succeeded */
    int built;

    /* after build */
    struct state *st;
    uint8_t *labels;
    uint32_t *targets;
    uint32_t root[256];  /* root transitions; 0 = stay at the root */
    size_t nstates;
};

static inline uint8_t fold(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t n = *cap ? *cap * 2 : 64;
    while (n < need) n *= 2;
    if (n > SIZE_MAX / elem || n >= NONE) return -1;
    void *q = realloc(*p, n * elem);
    if (!q) return -1;
    *p = q;
    *cap = n;
    return 0;
}

int kwm_utf8_valid(const char *str, size_t len)
{
    const uint8_t *s = (const uint8_t *)str;
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t n;
        uint8_t lo = 0x80, hi = 0xBF;   /* range of the second byte */
        if (c < 0x80) { i++; continue; }
        else if (c >= 0xC2 && c <= 0xDF) n = 1;
        else if (c == 0xE0) n = 2, lo = 0xA0;            /* no overlongs */
        else if (c == 0xED) n = 2, hi = 0x9F;            /* no surrogates */
        else if (c >= 0xE1 && c <= 0xEF) n = 2;
        else if (c == 0xF0) n = 3, lo = 0x90;
        else if (c >= 0xF1 && c <= 0xF3) n = 3;
        else if (c == 0xF4) n = 3, hi = 0x8F;            /* <= U+10FFFF */
        else return 0;
        if (len - i <= n) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += n + 1;
    }
    return 1;
}

struct kwm *kwm_new(void)
{
    struct kwm *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    if (grow((void **)&m->bn, &m->capbn, 1, sizeof *m->bn)) {
        free(m);
        return NULL;
    }
    m->bn[0] = (struct bnode){NONE, 0, NONE};
    m->nbn = 1;
    return m;
}

void kwm_free(struct kwm *m)
{
    if (!m) return;
    free(m->bn);
    free(m->be);
    free(m->st);
    free(m->labels);
    free(m->targets);
    free(m);
}

static uint32_t bchild(const struct kwm *m, uint32_t node, uint8_t c)
{
    for (uint32_t e = m->bn[node].first; e != NONE; e = m->be[e].next)
        if (m->be[e].label == c) return m->be[e].target;
    return NONE;
}

int kwm_add(struct kwm *m, const char *word, size_t len)
{
    if (m->built || len == 0 || !kwm_utf8_valid(word, len)) return KWM_EINVAL;
    /* Reserve the worst case up front so a failure leaves the trie intact. */
    if (grow((void **)&m->bn, &m->capbn, m->nbn + len, sizeof *m->bn) ||
        grow((void **)&m->be, &m->capbe, m->nbe + len, sizeof *m->be))
        return KWM_ENOMEM;

    uint32_t node = 0;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = fold((uint8_t)word[i]);
        uint32_t next = bchild(m, node, c);
        if (next == NONE) {
            next = (uint32_t)m->nbn++;
            m->bn[next] = (struct bnode){NONE, m->bn[node].depth + 1, NONE};
            uint32_t e = (uint32_t)m->nbe++;
            m->be[e] = (struct bedge){m->bn[node].first, next, c};
            m->bn[node].first = e;
        }
        node = next;
    }
    if (m->bn[node].word == NONE) m->bn[node].word = (uint32_t)m->nwords;
    m->nwords++;
    return KWM_OK;
}

/* The goto function of a non-root state: binary search over its labels. */
static inline uint32_t child(const struct kwm *m, const struct state *s, uint8_t c)
{
    const uint8_t *lab = m->labels + s->edge;
    uint32_t lo = 0, hi = s->nedge;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (lab[mid] < c) lo = mid + 1;
        else hi = mid;
    }
    return (lo < s->nedge && lab[lo] == c) ? m->targets[s->edge + lo] : NONE;
}

static inline uint32_t step(const struct kwm *m, uint32_t s, uint8_t c)
{
    for (;;) {
        if (s == 0) return m->root[c];
        uint32_t t = child(m, &m->st[s], c);
        if (t != NONE) return t;
        s = m->st[s].fail;
    }
}

static int cmp_label(const void *a, const void *b)
{
    const struct bedge *x = a, *y = b;
    return (int)x->label - (int)y->label;
}

int kwm_build(struct kwm *m)
{
    if (m->built) return KWM_EINVAL;
    size_t n = m->nbn;
    uint32_t *order = malloc(n * sizeof *order);   /* BFS order -> old id */
    uint32_t *newid = malloc(n * sizeof *newid);   /* old id -> BFS order */
    struct bedge *tmp = malloc((m->nbe ? m->nbe : 1) * sizeof *tmp);
    m->st = calloc(n, sizeof *m->st);
    m->labels = malloc(m->nbe ? m->nbe : 1);
    m->targets = malloc((m->nbe ? m->nbe : 1) * sizeof *m->targets);
    if (!order || !newid || !tmp || !m->st || !m->labels || !m->targets) {
        free(order), free(newid), free(tmp);
        free(m->st), free(m->labels), free(m->targets);
        m->st = NULL, m->labels = NULL, m->targets = NULL;
        return KWM_ENOMEM;
    }

    /* Breadth-first numbering. */
    size_t head = 0, tail = 0;
    order[tail++] = 0;
    newid[0] = 0;
    while (head < tail) {
        uint32_t u = order[head++];
        for (uint32_t e = m->bn[u].first; e != NONE; e = m->be[e].next) {
            newid[m->be[e].target] = (uint32_t)tail;
            order[tail++] = m->be[e].target;
        }
    }

    /* Pack edges per state, sorted by label, with new ids. */
    size_t ne = 0;
    for (size_t s = 0; s < n; s++) {
        uint32_t u = order[s];
        size_t k = 0;
        for (uint32_t e = m->bn[u].first; e != NONE; e = m->be[e].next) tmp[k++] = m->be[e];
        qsort(tmp, k, sizeof *tmp, cmp_label);
        m->st[s].edge = (uint32_t)ne;
        m->st[s].nedge = (uint16_t)k;
        for (size_t i = 0; i < k; i++) {
            m->labels[ne] = tmp[i].label;
            m->targets[ne] = newid[tmp[i].target];
            ne++;
        }
        m->st[s].out_word = m->bn[u].word;
    }

    /* Root row: a missing edge stays at the root (state 0). */
    memset(m->root, 0, sizeof m->root);
    for (uint32_t i = 0; i < m->st[0].nedge; i++)
        m->root[m->labels[m->st[0].edge + i]] = m->targets[m->st[0].edge + i];

    /* Failure links and outputs, in BFS order so a state's failure target
     * (always shallower) is complete before it is used. */
    m->nstates = n;
    m->st[0].fail = 0;
    for (size_t s = 0; s < n; s++) {
        struct state *u = &m->st[s];
        uint32_t depth = m->bn[order[s]].depth;
        if (s != 0) {
            /* out: the word ending here, else the longest one ending at the
             * failure state (a shorter suffix). */
            if (u->out_word != NONE) {
                u->out_len = depth;
            } else {
                u->out_len = m->st[u->fail].out_len;
                u->out_word = m->st[u->fail].out_word;
            }
        }
        for (uint32_t i = 0; i < u->nedge; i++) {
            uint8_t c = m->labels[u->edge + i];
            uint32_t v = m->targets[u->edge + i];
            if (s == 0) {
                m->st[v].fail = 0;
                continue;
            }
            /* The longest proper suffix of (u, c) that is a state. */
            m->st[v].fail = step(m, u->fail, c);
        }
    }
    m->st[0].out_len = 0;
    m->st[0].out_word = NONE;

    free(order);
    free(newid);
    free(tmp);
    free(m->bn), m->bn = NULL;
    free(m->be), m->be = NULL;
    m->built = 1;
    return KWM_OK;
}

size_t kwm_states(const struct kwm *m)
{
    return m->built ? m->nstates : m->nbn;
}

int kwm_find(const struct kwm *m, const char *text, size_t len, struct kwm_hit *hit)
{
    if (!m->built) return 0;
    uint32_t s = 0;
    for (size_t i = 0; i < len; i++) {
        s = step(m, s, fold((uint8_t)text[i]));
        if (m->st[s].out_len) {
            hit->len = m->st[s].out_len;
            hit->start = i + 1 - hit->len;
            hit->word = m->st[s].out_word;
            return 1;
        }
    }
    return 0;
}

struct range {
    size_t start, end;   /* [start, end) */
};

long kwm_mask(const struct kwm *m, const char *text, size_t len, char mask,
              char **out, size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (!m->built) return 0;

    /* Collect match ranges, merging as we go. Matches are reported in order
     * of their end, so a new range can only overlap the ranges at the top
     * of the stack (a long word may swallow several earlier ones). Only the
     * longest word per end position matters: shorter ones are inside it. */
    struct range *r = NULL;
    size_t nr = 0, capr = 0;
    uint32_t s = 0;
    for (size_t i = 0; i < len; i++) {
        s = step(m, s, fold((uint8_t)text[i]));
        uint32_t ol = m->st[s].out_len;
        if (!ol) continue;
        struct range nw = {i + 1 - ol, i + 1};
        while (nr && nw.start <= r[nr - 1].end) {
            if (r[nr - 1].start < nw.start) nw.start = r[nr - 1].start;
            nr--;
        }
        if (grow((void **)&r, &capr, nr + 1, sizeof *r)) {
            free(r);
            return KWM_ENOMEM;
        }
        r[nr++] = nw;
    }
    if (nr == 0) {
        free(r);
        return 0;
    }

    /* One mask byte per character: the output is never longer. */
    char *o = malloc(len);
    if (!o) {
        free(r);
        return KWM_ENOMEM;
    }
    size_t w = 0, at = 0;
    for (size_t k = 0; k < nr; k++) {
        memcpy(o + w, text + at, r[k].start - at);
        w += r[k].start - at;
        for (size_t i = r[k].start; i < r[k].end; i++)
            if (((uint8_t)text[i] & 0xC0) != 0x80) o[w++] = mask;
        at = r[k].end;
    }
    memcpy(o + w, text + at, len - at);
    w += len - at;
    free(r);
    *out = o;
    *out_len = w;
    return (long)nr;
}
