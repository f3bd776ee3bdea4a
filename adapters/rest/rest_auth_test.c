/* Unit tests: constant-time compare, bearer keys, HMAC signatures (window,
 * replay, rotation), webhook signatures, destination checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rest.h"

static const char *keys[] = { "key-one", "key-two" };
static const char *rkeys[] = { "read-only" };
static const char *secrets[] = { "s1", "s2" };

static struct rest_auth auth(struct rest_replay *rp)
{
    struct rest_auth a = { keys, 2, rkeys, 1, secrets, 2, 300, rp };
    return a;
}

static int bearer(const struct rest_auth *a, const char *hdr, int write, struct rest_problem *p)
{
    return rest_auth_check(a, hdr, hdr ? strlen(hdr) : 0, NULL, 0, NULL, 0, "", 0, 1000, write, p);
}

static void test_ct_equal(void **st)
{
    (void)st;
    assert_true(rest_ct_equal("abc", 3, "abc", 3));
    assert_false(rest_ct_equal("abc", 3, "abd", 3));
    assert_false(rest_ct_equal("abc", 3, "abcd", 4));
    assert_false(rest_ct_equal("", 0, "a", 1));
    assert_true(rest_ct_equal("", 0, "", 0));
    /* a shorter prefix with a zero byte must not match */
    assert_false(rest_ct_equal("ab", 2, "ab\0", 3));
}

static void test_bearer(void **st)
{
    (void)st;
    struct rest_auth a = auth(NULL);
    struct rest_problem p;
    assert_int_equal(bearer(&a, "Bearer key-one", 1, &p), 0);
    assert_int_equal(bearer(&a, "bearer key-two", 1, &p), 0);
    assert_int_equal(bearer(&a, "Bearer key-three", 1, &p), -1);
    assert_int_equal(p.status, 401);
    assert_string_equal(p.header, "Authorization");
    assert_int_equal(bearer(&a, "Basic a2V5LW9uZQ==", 1, &p), -1);
    assert_int_equal(p.status, 401);
    assert_int_equal(bearer(&a, "Bearer read-only", 0, &p), 0);
    assert_int_equal(bearer(&a, "Bearer read-only", 1, &p), -1);
    assert_int_equal(p.status, 403);
    assert_string_equal(p.type, "forbidden");
    assert_int_equal(bearer(&a, "Bearer ", 1, &p), -1);
    assert_int_equal(bearer(&a, NULL, 1, &p), -1);
    assert_int_equal(p.status, 401);
    assert_string_equal(p.type, "unauthorized");
}

static int hm(const struct rest_auth *a, const char *ts, const char *sig, const char *body,
              int64_t now, struct rest_problem *p)
{
    return rest_auth_check(a, NULL, 0, ts, ts ? strlen(ts) : 0, sig, sig ? strlen(sig) : 0,
                           body, strlen(body), now, 1, p);
}

static void mksig(const char *secret, const char *ts, const char *body, char *out)
{
    char hx[65];
    rest_hmac_hex(secret, strlen(secret), ts, strlen(ts), body, strlen(body), NULL, 0, hx);
    sprintf(out, "v1=%s", hx);
}

static void test_hmac_known_vector(void **st)
{
    (void)st;
    /* python3: hmac.new(b"key", b"1700000000.{}", sha256).hexdigest() */
    char hx[65];
    rest_hmac_hex("key", 3, "1700000000", 10, "{}", 2, NULL, 0, hx);
    assert_string_equal(hx, "9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae");
}

static void test_hmac(void **st)
{
    (void)st;
    struct rest_replay *rp = rest_replay_new(16);
    struct rest_auth a = auth(rp);
    struct rest_problem p;
    char sig[80], sig2[80], both[200];
    const char *body = "{\"text\":\"hi\"}";
    mksig("s1", "1000", body, sig);
    assert_int_equal(hm(&a, "1000", sig, body, 1000, &p), 0);
    /* replayed */
    assert_int_equal(hm(&a, "1000", sig, body, 1001, &p), -1);
    assert_string_equal(p.type, "signature-replayed");
    /* second secret (rotation), two signatures in one header */
    mksig("s2", "1001", body, sig2);
    mksig("old", "1001", body, sig);
    snprintf(both, sizeof both, "%s, %s", sig, sig2);
    assert_int_equal(hm(&a, "1001", both, body, 1001, &p), 0);
    /* stale and future */
    mksig("s1", "600", body, sig);
    assert_int_equal(hm(&a, "600", sig, body, 1000, &p), -1);
    assert_string_equal(p.type, "signature-expired");
    assert_string_equal(p.header, REST_HDR_TIMESTAMP);
    mksig("s1", "1301", body, sig);
    assert_int_equal(hm(&a, "1301", sig, body, 1000, &p), -1);
    assert_string_equal(p.type, "signature-expired");
    /* at the edge of the window: accepted */
    mksig("s1", "700", body, sig);
    assert_int_equal(hm(&a, "700", sig, body, 1000, &p), 0);
    /* tampered body */
    mksig("s1", "1002", body, sig);
    assert_int_equal(hm(&a, "1002", sig, "{\"text\":\"ho\"}", 1002, &p), -1);
    assert_string_equal(p.type, "bad-signature");
    /* malformed timestamp and signature */
    assert_int_equal(hm(&a, "10a2", sig, body, 1002, &p), -1);
    assert_string_equal(p.type, "bad-signature");
    assert_int_equal(hm(&a, NULL, sig, body, 1002, &p), -1);
    assert_int_equal(hm(&a, "1002", "v1=zz", body, 1002, &p), -1);
    assert_int_equal(hm(&a, "1002", "", body, 1002, &p), -1);
    /* no secrets configured */
    a.nsecrets = 0;
    mksig("s1", "1003", body, sig);
    assert_int_equal(hm(&a, "1003", sig, body, 1003, &p), -1);
    assert_int_equal(p.status, 401);
    rest_replay_free(rp);
}

static void test_replay_expiry_and_bound(void **st)
{
    (void)st;
    struct rest_replay *rp = rest_replay_new(2);
    char a[65], b[65], c[65];
    memset(a, 'a', 64), a[64] = 0;
    memset(b, 'b', 64), b[64] = 0;
    memset(c, 'c', 64), c[64] = 0;
    assert_false(rest_replay_seen(rp, a, 100, 100, 10));
    assert_true(rest_replay_seen(rp, a, 100, 105, 10));
    /* expired entries go: after ts + tolerance, a is forgotten (it would be
     * refused as stale anyway) */
    assert_false(rest_replay_seen(rp, a, 100, 111, 10));
    assert_false(rest_replay_seen(rp, b, 111, 111, 10));
    assert_false(rest_replay_seen(rp, c, 111, 111, 10));   /* evicts the oldest */
    assert_true(rest_replay_seen(rp, c, 111, 112, 10));
    rest_replay_free(rp);
}

static void test_webhook_signature(void **st)
{
    (void)st;
    const char *s[] = { "k1", "k2" };
    char *v = rest_webhook_signature(s, 2, 1700000000, "id-1", "{}", 2);
    assert_non_null(v);
    char h1[65], h2[65];
    rest_hmac_hex("k1", 2, "1700000000", 10, "id-1", 4, "{}", 2, h1);
    rest_hmac_hex("k2", 2, "1700000000", 10, "id-1", 4, "{}", 2, h2);
    char want[200];
    snprintf(want, sizeof want, "v1=%s,v1=%s", h1, h2);
    assert_string_equal(v, want);
    free(v);
    /* the three-part form differs from the two-part one */
    rest_hmac_hex("k1", 2, "1700000000", 10, "id-1", 4, NULL, 0, h2);
    assert_string_not_equal(h1, h2);
}

static void test_private_addresses(void **st)
{
    (void)st;
    const char *priv[] = { "127.0.0.1", "10.1.2.3", "172.16.0.1", "172.31.255.255",
                           "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                           "224.0.0.1", "255.255.255.255", "::1", "::", "fe80::1",
                           "fd00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "ff02::1",
                           "64:ff9b::a00:1", NULL };
    const char *pub[] = { "8.8.8.8", "172.32.0.1", "192.169.0.1", "100.128.0.1",
                          "2001:4860:4860::8888", "::ffff:8.8.8.8", "example.com", NULL };
    for (int i = 0; priv[i]; i++)
        assert_true(rest_ip_is_private(priv[i]));
    for (int i = 0; pub[i]; i++)
        assert_false(rest_ip_is_private(pub[i]));
}

static void test_url_check(void **st)
{
    (void)st;
    char why[160];
    int priv;
    assert_int_equal(rest_url_check("https://hooks.example.com/x", &priv, why, sizeof why), 0);
    assert_false(priv);
    assert_int_equal(rest_url_check("http://127.0.0.1:8080/hook", &priv, why, sizeof why), 0);
    assert_true(priv);
    assert_int_equal(rest_url_check("http://[::1]:80/", &priv, why, sizeof why), 0);
    assert_true(priv);
    assert_int_equal(rest_url_check("http://LocalHost./", &priv, why, sizeof why), 0);
    assert_true(priv);
    assert_int_equal(rest_url_check("http://api.localhost", &priv, why, sizeof why), 0);
    assert_true(priv);
    assert_int_equal(rest_url_check("http://10.0.0.5?x", &priv, why, sizeof why), 0);
    assert_true(priv);
    assert_int_equal(rest_url_check("ftp://x/", &priv, why, sizeof why), -1);
    assert_int_equal(rest_url_check("http://u:p@x/", &priv, why, sizeof why), -1);
    assert_int_equal(rest_url_check("http://x:99999/", &priv, why, sizeof why), -1);
    assert_int_equal(rest_url_check("http://x:/", &priv, why, sizeof why), -1);
    assert_int_equal(rest_url_check("http:///", &priv, why, sizeof why), -1);
    assert_int_equal(rest_url_check("http://[::1/", &priv, why, sizeof why), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ct_equal),
        cmocka_unit_test(test_bearer),
        cmocka_unit_test(test_hmac_known_vector),
        cmocka_unit_test(test_hmac),
        cmocka_unit_test(test_replay_expiry_and_bound),
        cmocka_unit_test(test_webhook_signature),
        cmocka_unit_test(test_private_addresses),
        cmocka_unit_test(test_url_check),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
