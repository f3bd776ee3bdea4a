/* Unit tests: idempotency map, status records, bounded eviction, UUIDv7. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rest.h"

static void h32(unsigned char h[32], int v)
{
    memset(h, v, 32);
}

static void test_idem_flow(void **st)
{
    (void)st;
    struct rest_idem *m = rest_idem_new(2);
    unsigned char a[32], b[32];
    h32(a, 1);
    h32(b, 2);
    int status = 0;
    char *ans = NULL;
    assert_int_equal(rest_idem_begin(m, "k1", 2, a, &status, &ans), REST_IDEM_NEW);
    assert_int_equal(rest_idem_begin(m, "k1", 2, a, &status, &ans), REST_IDEM_PENDING);
    assert_int_equal(rest_idem_begin(m, "k1", 2, b, &status, &ans), REST_IDEM_MISMATCH);
    rest_idem_finish(m, "k1", 2, 202, "{\"seq\":1}");
    assert_int_equal(rest_idem_begin(m, "k1", 2, a, &status, &ans), REST_IDEM_DONE);
    assert_int_equal(status, 202);
    assert_string_equal(ans, "{\"seq\":1}");
    free(ans);
    assert_int_equal(rest_idem_begin(m, "k1", 2, b, &status, &ans), REST_IDEM_MISMATCH);
    /* abort forgets a pending key, so a retry may run again */
    assert_int_equal(rest_idem_begin(m, "k2", 2, a, &status, &ans), REST_IDEM_NEW);
    rest_idem_abort(m, "k2", 2);
    assert_int_equal(rest_idem_begin(m, "k2", 2, b, &status, &ans), REST_IDEM_NEW);
    /* full: k1 (done) is evicted for k3; then only pending entries: FULL */
    assert_int_equal(rest_idem_begin(m, "k3", 2, a, &status, &ans), REST_IDEM_NEW);
    assert_int_equal(rest_idem_count(m), 2);
    assert_int_equal(rest_idem_begin(m, "k1", 2, b, &status, &ans), REST_IDEM_FULL);
    /* abort of a done key keeps it */
    rest_idem_finish(m, "k3", 2, 202, "x");
    rest_idem_abort(m, "k3", 2);
    assert_int_equal(rest_idem_begin(m, "k3", 2, a, &status, &ans), REST_IDEM_DONE);
    free(ans);
    rest_idem_free(m);
}

static void test_bmap_many(void **st)
{
    (void)st;
    struct rest_bmap m;
    assert_int_equal(rest_bmap_init(&m, 100, free), 0);
    char k[32];
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(k, sizeof k, "key-%d", i);
        struct rest_bent *e = rest_bmap_insert(&m, k, (size_t)n, NULL);
        assert_non_null(e);
        e->val = strdup(k);
    }
    assert_int_equal(m.n, 100);
    assert_null(rest_bmap_find(&m, "key-899", 7));
    struct rest_bent *e = rest_bmap_find(&m, "key-900", 7);
    assert_non_null(e);
    assert_string_equal(e->val, "key-900");
    assert_ptr_equal(m.oldest, e);
    rest_bmap_remove(&m, e);
    assert_null(rest_bmap_find(&m, "key-900", 7));
    assert_int_equal(m.n, 99);
    rest_bmap_destroy(&m);
}

static void test_status(void **st)
{
    (void)st;
    struct rest_status *s = rest_status_new(2);
    int64_t first = 0;
    assert_int_equal(rest_status_add(s, "in-1", "in", "accepted", 7, NULL, NULL, 100, NULL), 0);
    assert_int_equal(rest_status_add(s, "out-1", "out", "attempt", 0, NULL, NULL, 200, &first),
                     1);
    assert_int_equal(first, 200);
    rest_status_add(s, "out-1", "out", "attempt_failed", 0, "http:500", "x", 210, NULL);
    assert_int_equal(rest_status_add(s, "out-1", "out", "attempt", 0, NULL, NULL, 300, &first),
                     2);
    assert_int_equal(first, 200);
    rest_status_add(s, "out-1", "out", "sent", 0, "http:200", NULL, 310, NULL);
    json_t *o = rest_status_get(s, "out-1");
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "sent");
    assert_string_equal(json_string_value(json_object_get(o, "direction")), "out");
    json_t *rc = json_object_get(o, "receipts");
    assert_int_equal(json_array_size(rc), 4);
    assert_string_equal(json_string_value(json_object_get(json_array_get(rc, 1), "code")),
                        "http:500");
    json_decref(o);
    o = rest_status_get(s, "in-1");
    assert_int_equal(json_integer_value(json_object_get(o, "seq")), 7);
    json_decref(o);
    /* bounded: a third id evicts the oldest */
    rest_status_add(s, "in-2", "in", "accepted", 8, NULL, NULL, 400, NULL);
    assert_null(rest_status_get(s, "in-1"));
    /* many receipts for one id stay bounded, the first one kept */
    for (int i = 0; i < 100; i++)
        rest_status_add(s, "in-2", "in", "x", 0, NULL, NULL, 500 + i, NULL);
    o = rest_status_get(s, "in-2");
    rc = json_object_get(o, "receipts");
    assert_true(json_array_size(rc) <= 32);
    assert_string_equal(json_string_value(json_object_get(json_array_get(rc, 0), "status")),
                        "accepted");
    json_decref(o);
    rest_status_free(s);
}

static void test_uuid7(void **st)
{
    (void)st;
    char a[37], b[37];
    rest_uuid7(a, 1700000000000);
    rest_uuid7(b, 1700000000001);
    assert_int_equal(strlen(a), 36);
    assert_true(a[14] == '7');
    assert_true(strchr("89ab", a[19]) != NULL);
    assert_true(a[8] == '-' && a[13] == '-' && a[18] == '-' && a[23] == '-');
    assert_true(strcmp(a, b) < 0);      /* ordered by time */
    assert_memory_equal(a, "018bcfe5-6800", 13);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idem_flow),
        cmocka_unit_test(test_bmap_many),
        cmocka_unit_test(test_status),
        cmocka_unit_test(test_uuid7),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
