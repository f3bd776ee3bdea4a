/* Status table and ids (cmocka). */
#include "test_sink.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

static struct soap_rec rec(const char *id, const char *env, const char *idem, const char *st,
                           uint64_t seq)
{
    struct soap_rec r;
    memset(&r, 0, sizeof r);
    snprintf(r.id, sizeof r.id, "%s", id);
    snprintf(r.envelope_id, sizeof r.envelope_id, "%s", env);
    snprintf(r.idem, sizeof r.idem, "%s", idem);
    snprintf(r.dir, sizeof r.dir, "in");
    snprintf(r.status, sizeof r.status, "%s", st);
    r.seq = seq;
    r.updated_ms = 1000 + (int64_t)seq;
    return r;
}

static void keys_and_update(void **st)
{
    (void)st;
    struct soap_store *s = soap_store_new(4);
    struct soap_rec r = rec("m1", "e1", "k1", "accepted", 7), out;
    soap_store_put(s, &r);
    assert_int_equal(soap_store_get(s, "m1", 2, &out), 0);
    assert_int_equal(soap_store_get(s, "e1", 2, &out), 0);
    assert_int_equal(soap_store_get(s, "k1", 2, &out), 0);
    assert_string_equal(out.id, "m1");
    assert_true(out.seq == 7);
    assert_int_equal(soap_store_get(s, "m", 1, &out), -1);
    /* An update keeps seq, keys and the creation time. */
    struct soap_rec u = rec("m1", "", "", "dropped", 0);
    u.updated_ms = 5000;
    soap_store_put(s, &u);
    assert_int_equal(soap_store_get(s, "k1", 2, &out), 0);
    assert_string_equal(out.status, "dropped");
    assert_true(out.seq == 7);
    assert_string_equal(out.envelope_id, "e1");
    assert_true(out.created_ms == 1007 && out.updated_ms == 5000);
    assert_int_equal((int)soap_store_count(s), 1);
    soap_store_free(s);
}

static void eviction(void **st)
{
    (void)st;
    struct soap_store *s = soap_store_new(3);
    char id[16], env[16];
    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof id, "m%d", i);
        snprintf(env, sizeof env, "e%d", i);
        struct soap_rec r = rec(id, env, "", "accepted", (uint64_t)i + 1);
        soap_store_put(s, &r);
    }
    struct soap_rec out;
    assert_int_equal((int)soap_store_count(s), 3);
    assert_int_equal(soap_store_get(s, "m6", 2, &out), -1);
    assert_int_equal(soap_store_get(s, "e6", 2, &out), -1);
    for (int i = 7; i < 10; i++) {
        snprintf(id, sizeof id, "e%d", i);
        assert_int_equal(soap_store_get(s, id, 2, &out), 0);
        assert_true(out.seq == (uint64_t)i + 1);
    }
    /* A newer record with the same idem wins the lookup. */
    struct soap_rec a = rec("a", "", "dup", "accepted", 1), b = rec("b", "", "dup", "accepted", 2);
    soap_store_put(s, &a);
    soap_store_put(s, &b);
    assert_int_equal(soap_store_get(s, "dup", 3, &out), 0);
    assert_string_equal(out.id, "b");
    soap_store_free(s);
}

static void uuid7(void **st)
{
    (void)st;
    char a[37], b[37];
    soap_uuid7(a, 1796230800000LL);
    soap_uuid7(b, 1796230800000LL);
    assert_int_equal((int)strlen(a), 36);
    assert_true(a[14] == '7');
    assert_true(strchr("89ab", a[19]) != NULL);
    assert_memory_equal(a, "01a237b2-e280", 13);   /* the ms timestamp in front */
    assert_string_not_equal(a, b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(keys_and_update), cmocka_unit_test(eviction), cmocka_unit_test(uuid7),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
