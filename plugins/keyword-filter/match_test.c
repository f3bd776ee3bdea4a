/* Unit tests for the keyword matcher (cmocka). `make test` runs them under
 * ASan and UBSan. The last test compares the automaton with a naive search
 * on random input, which is what catches failure-link mistakes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "match.h"

static struct kwm *build(const char *const *words, size_t n)
{
    struct kwm *m = kwm_new();
    assert_non_null(m);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(kwm_add(m, words[i], strlen(words[i])), KWM_OK);
    assert_int_equal(kwm_build(m), KWM_OK);
    return m;
}

/* Masks text and compares with want; want NULL means "no match". */
static void check_mask(const struct kwm *m, const char *text, const char *want)
{
    char *out;
    size_t out_len;
    long n = kwm_mask(m, text, strlen(text), '*', &out, &out_len);
    if (!want) {
        assert_int_equal(n, 0);
        assert_null(out);
        return;
    }
    assert_true(n > 0);
    assert_non_null(out);
    char *z = malloc(out_len + 1);
    assert_non_null(z);
    memcpy(z, out, out_len);
    z[out_len] = '\0';
    assert_string_equal(z, want);
    free(z);
    free(out);
}

static void test_utf8_validation(void **state)
{
    (void)state;
    assert_true(kwm_utf8_valid("", 0));
    assert_true(kwm_utf8_valid("abc", 3));
    assert_true(kwm_utf8_valid("傻瓜", strlen("傻瓜")));
    assert_true(kwm_utf8_valid("\xF0\x9F\x98\x80", 4));       /* U+1F600 */
    assert_false(kwm_utf8_valid("\x80", 1));                  /* lone continuation */
    assert_false(kwm_utf8_valid("\xC0\x80", 2));              /* overlong NUL */
    assert_false(kwm_utf8_valid("\xE0\x80\x80", 3));          /* overlong */
    assert_false(kwm_utf8_valid("\xED\xA0\x80", 3));          /* surrogate */
    assert_false(kwm_utf8_valid("\xF4\x90\x80\x80", 4));      /* > U+10FFFF */
    assert_false(kwm_utf8_valid("\xE5\xA5", 2));              /* truncated */
    assert_false(kwm_utf8_valid("\xE5\x41\xBD", 3));          /* bad continuation */
    assert_false(kwm_utf8_valid("\xFF", 1));
}

static void test_add_rejects(void **state)
{
    (void)state;
    struct kwm *m = kwm_new();
    assert_non_null(m);
    assert_int_equal(kwm_add(m, "", 0), KWM_EINVAL);
    assert_int_equal(kwm_add(m, "\xE5\xA5", 2), KWM_EINVAL);
    assert_int_equal(kwm_add(m, "ok", 2), KWM_OK);
    assert_int_equal(kwm_build(m), KWM_OK);
    assert_int_equal(kwm_add(m, "late", 4), KWM_EINVAL);   /* after build */
    assert_int_equal(kwm_build(m), KWM_EINVAL);
    kwm_free(m);
}

static void test_empty_matcher(void **state)
{
    (void)state;
    struct kwm *m = build(NULL, 0);
    struct kwm_hit hit;
    assert_int_equal(kwm_find(m, "anything", 8, &hit), 0);
    check_mask(m, "anything", NULL);
    assert_int_equal(kwm_states(m), 1);
    kwm_free(m);
}

static void test_find_ascii_case_insensitive(void **state)
{
    (void)state;
    static const char *const w[] = {"Spam", "eggs"};
    struct kwm *m = build(w, 2);
    struct kwm_hit hit;
    const char *t = "this is SPAM!";
    assert_int_equal(kwm_find(m, t, strlen(t), &hit), 1);
    assert_int_equal(hit.start, 8);
    assert_int_equal(hit.len, 4);
    assert_int_equal(hit.word, 0);
    t = "green EgGs";
    assert_int_equal(kwm_find(m, t, strlen(t), &hit), 1);
    assert_int_equal(hit.start, 6);
    assert_int_equal(hit.word, 1);
    assert_int_equal(kwm_find(m, "spa m", 5, &hit), 0);
    /* Embedded NUL bytes are ordinary bytes. */
    assert_int_equal(kwm_find(m, "x\0spam", 6, &hit), 1);
    assert_int_equal(hit.start, 2);
    kwm_free(m);
}

static void test_find_chinese(void **state)
{
    (void)state;
    static const char *const w[] = {"傻瓜", "坏人", "退款"};
    struct kwm *m = build(w, 3);
    struct kwm_hit hit;
    const char *t = "你是傻瓜吗";
    assert_int_equal(kwm_find(m, t, strlen(t), &hit), 1);
    assert_int_equal(hit.start, 6);   /* after two 3-byte characters */
    assert_int_equal(hit.len, 6);
    assert_int_equal(hit.word, 0);
    t = "我要退款，马上";
    assert_int_equal(kwm_find(m, t, strlen(t), &hit), 1);
    assert_int_equal(hit.word, 2);
    t = "你好，世界";
    assert_int_equal(kwm_find(m, t, strlen(t), &hit), 0);
    kwm_free(m);
}

static void test_first_match_is_first_to_end(void **state)
{
    (void)state;
    static const char *const w[] = {"abcdef", "cd", "bcd"};
    struct kwm *m = build(w, 3);
    struct kwm_hit hit;
    assert_int_equal(kwm_find(m, "xabcdefx", 8, &hit), 1);
    /* "cd" and "bcd" both end at byte 4; the longer one is reported. */
    assert_int_equal(hit.start, 2);
    assert_int_equal(hit.len, 3);
    assert_int_equal(hit.word, 2);
    kwm_free(m);
}

static void test_duplicate_words_keep_first_index(void **state)
{
    (void)state;
    static const char *const w[] = {"foo", "bar", "FOO"};
    struct kwm *m = build(w, 3);
    struct kwm_hit hit;
    assert_int_equal(kwm_find(m, "a foo", 5, &hit), 1);
    assert_int_equal(hit.word, 0);
    kwm_free(m);
}

static void test_no_unicode_case_folding(void **state)
{
    (void)state;
    static const char *const w[] = {"\xC3\x81"};   /* Á */
    struct kwm *m = build(w, 1);
    struct kwm_hit hit;
    assert_int_equal(kwm_find(m, "\xC3\xA1", 2, &hit), 0);   /* á */
    assert_int_equal(kwm_find(m, "\xC3\x81", 2, &hit), 1);
    /* Full-width Latin letters are not ASCII: not folded either. */
    static const char *const w2[] = {"ab"};
    struct kwm *m2 = build(w2, 1);
    assert_int_equal(kwm_find(m2, "ＡＢ", strlen("ＡＢ"), &hit), 0);
    kwm_free(m);
    kwm_free(m2);
}

static void test_mask_chinese_and_mixed(void **state)
{
    (void)state;
    static const char *const w[] = {"傻瓜", "bad", "坏人"};
    struct kwm *m = build(w, 3);
    check_mask(m, "你是傻瓜吗", "你是**吗");
    check_mask(m, "BAD坏人 and bad 傻瓜!", "***** and *** **!");
    check_mask(m, "没问题", NULL);
    check_mask(m, "", NULL);
    kwm_free(m);
}

static void test_mask_overlaps_and_nesting(void **state)
{
    (void)state;
    static const char *const w1[] = {"ab", "bc"};
    struct kwm *m = build(w1, 2);
    check_mask(m, "xabcx", "x***x");   /* overlapping */
    check_mask(m, "abab", "****");     /* adjacent */
    kwm_free(m);

    static const char *const w2[] = {"he", "she", "his", "hers"};
    m = build(w2, 4);
    check_mask(m, "ushers", "u*****");
    check_mask(m, "ahishe", "a*****");
    kwm_free(m);

    /* A long word ending later swallows earlier, shorter matches. */
    static const char *const w3[] = {"b", "d", "abcde"};
    m = build(w3, 3);
    check_mask(m, "abcde", "*****");
    check_mask(m, "abcdx", "a*c*x");
    kwm_free(m);

    static const char *const w4[] = {"aa"};
    m = build(w4, 1);
    check_mask(m, "aaaaa", "*****");
    check_mask(m, "a", NULL);
    kwm_free(m);

    /* Chinese words sharing characters. */
    static const char *const w5[] = {"中国", "国人", "中国人民"};
    m = build(w5, 3);
    check_mask(m, "我是中国人", "我是***");
    check_mask(m, "中国人民万岁", "****万岁");
    kwm_free(m);
}

static void test_mask_invalid_utf8_text(void **state)
{
    (void)state;
    static const char *const w[] = {"好"};
    struct kwm *m = build(w, 1);
    /* Stray bytes around the word stay as they are. */
    const char t[] = "\xFF\xE5\xA5\xBD\x80";
    char *out;
    size_t n;
    assert_int_equal(kwm_mask(m, t, 5, '*', &out, &n), 1);
    assert_int_equal(n, 3);
    assert_memory_equal(out, "\xFF*\x80", 3);
    free(out);
    kwm_free(m);
}

/* --- randomized comparison with a naive matcher ------------------------- */

static uint32_t rng_state = 12345;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

/* A small alphabet so that words overlap a lot: ASCII in both cases and a
 * few Chinese characters. */
static const char *const alphabet[] = {"a", "B", "b", "A", "c", "中", "国", "人", "好"};
#define NALPHA (sizeof alphabet / sizeof alphabet[0])

static size_t random_string(char *buf, size_t max_chars)
{
    size_t n = 1 + rnd() % max_chars, len = 0;
    for (size_t i = 0; i < n; i++) {
        const char *c = alphabet[rnd() % NALPHA];
        memcpy(buf + len, c, strlen(c));
        len += strlen(c);
    }
    return len;
}

static int ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z') x += 32;
        if (y >= 'A' && y <= 'Z') y += 32;
        if (x != y) return 0;
    }
    return 1;
}

static void test_random_against_naive(void **state)
{
    (void)state;
    enum { NWORDS = 300, NTEXTS = 2000 };
    static char words[NWORDS][64];
    static size_t wlen[NWORDS];
    struct kwm *m = kwm_new();
    assert_non_null(m);
    for (size_t i = 0; i < NWORDS; i++) {
        wlen[i] = random_string(words[i], 1 + i % 6);
        assert_int_equal(kwm_add(m, words[i], wlen[i]), KWM_OK);
    }
    assert_int_equal(kwm_build(m), KWM_OK);

    char text[512], want[512];
    unsigned char marked[512];
    for (int t = 0; t < NTEXTS; t++) {
        size_t len = random_string(text, 40);

        /* Naive: mark every byte covered by any word; find the first end. */
        memset(marked, 0, len);
        size_t first_end = SIZE_MAX, first_len = 0;
        for (size_t i = 0; i < NWORDS; i++)
            for (size_t p = 0; p + wlen[i] <= len; p++)
                if (ieq(text + p, words[i], wlen[i])) {
                    memset(marked + p, 1, wlen[i]);
                    size_t end = p + wlen[i];
                    if (end < first_end || (end == first_end && wlen[i] > first_len))
                        first_end = end, first_len = wlen[i];
                }
        size_t wl = 0;
        for (size_t i = 0; i < len; i++) {
            if (!marked[i]) want[wl++] = text[i];
            else if (((unsigned char)text[i] & 0xC0) != 0x80) want[wl++] = '#';
        }

        struct kwm_hit hit;
        int found = kwm_find(m, text, len, &hit);
        assert_int_equal(found, first_end != SIZE_MAX);
        if (found) {
            assert_int_equal(hit.start + hit.len, first_end);
            assert_int_equal(hit.len, first_len);
            assert_true(ieq(text + hit.start, words[hit.word], hit.len));
            assert_int_equal(wlen[hit.word], hit.len);
        }

        char *out;
        size_t out_len;
        long n = kwm_mask(m, text, len, '#', &out, &out_len);
        if (!found) {
            assert_int_equal(n, 0);
            continue;
        }
        assert_true(n > 0);
        assert_int_equal(out_len, wl);
        assert_memory_equal(out, want, wl);
        free(out);
    }
    kwm_free(m);
}

static void test_many_words_scale(void **state)
{
    (void)state;
    /* 20,000 distinct 2-4 character Chinese words from CJK U+4E00..: the
     * automaton stays small and a long text is matched in one pass. */
    struct kwm *m = kwm_new();
    assert_non_null(m);
    rng_state = 777;
    char w[16];
    for (int i = 0; i < 20000; i++) {
        size_t n = 2 + rnd() % 3, len = 0;
        for (size_t k = 0; k < n; k++) {
            uint32_t cp = 0x4E00 + rnd() % 2000;
            w[len++] = (char)(0xE0 | (cp >> 12));
            w[len++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            w[len++] = (char)(0x80 | (cp & 0x3F));
        }
        assert_int_equal(kwm_add(m, w, len), KWM_OK);
    }
    assert_int_equal(kwm_build(m), KWM_OK);
    assert_true(kwm_states(m) < 20000 * 12 + 1);

    /* A 1 MB text of characters outside the words' range finds nothing. */
    size_t len = 3 * 350000;
    char *text = malloc(len);
    assert_non_null(text);
    for (size_t i = 0; i < len; i += 3)
        memcpy(text + i, "好", 3);   /* U+597D, above the words' range */
    struct kwm_hit hit;
    assert_int_equal(kwm_find(m, text, len, &hit), 0);
    kwm_free(m);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_validation),
        cmocka_unit_test(test_add_rejects),
        cmocka_unit_test(test_empty_matcher),
        cmocka_unit_test(test_find_ascii_case_insensitive),
        cmocka_unit_test(test_find_chinese),
        cmocka_unit_test(test_first_match_is_first_to_end),
        cmocka_unit_test(test_duplicate_words_keep_first_index),
        cmocka_unit_test(test_no_unicode_case_folding),
        cmocka_unit_test(test_mask_chinese_and_mixed),
        cmocka_unit_test(test_mask_overlaps_and_nesting),
        cmocka_unit_test(test_mask_invalid_utf8_text),
        cmocka_unit_test(test_random_against_naive),
        cmocka_unit_test(test_many_words_scale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
