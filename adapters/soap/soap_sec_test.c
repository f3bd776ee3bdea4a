/* WS-Security, Basic, nonce cache, base64, dateTime (cmocka). */
#include "test_sink.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <libxml/parser.h>

#define E11 "http://schemas.xmlsoap.org/soap/envelope/"
/* 2026-12-02T17:00:00Z */
#define T0 1796230800LL
#define NONCE_B64 "MDEyMzQ1Njc4OWFiY2RlZg=="
#define DIGEST "aU/wEy6pZmawNCQvdtoSsk6i1lc="

static struct soap_user users[] = {
    { "alice", "wonderland", 5, 10 },
    { "bob", "builder", 3, 7 },
};

static struct soap_sec sec(int mode, struct soap_nonces *n)
{
    struct soap_sec s = { mode, users, 2, 1, 0, 300, n };
    return s;
}

static void b64(void **st)
{
    (void)st;
    unsigned char out[64];
    assert_int_equal(soap_b64_decode(NONCE_B64, strlen(NONCE_B64), out, sizeof out), 16);
    assert_memory_equal(out, "0123456789abcdef", 16);
    char enc[40];
    soap_b64_encode(out, 16, enc);
    assert_string_equal(enc, NONCE_B64);
    soap_b64_encode((const unsigned char *)"ab", 2, enc);
    assert_string_equal(enc, "YWI=");
    assert_int_equal(soap_b64_decode("YW I=", 5, out, sizeof out), 2);
    assert_int_equal(soap_b64_decode("YW*=", 4, out, sizeof out), -1);
    assert_int_equal(soap_b64_decode("YWJ=", 4, out, sizeof out), -1);  /* stray bits */
    assert_int_equal(soap_b64_decode("YQ==YQ==", 8, out, sizeof out), -1);
    assert_int_equal(soap_b64_decode(NONCE_B64, strlen(NONCE_B64), out, 4), -1);
}

static void datetime(void **st)
{
    (void)st;
    int64_t ms;
    assert_int_equal(soap_datetime("2026-12-02T17:00:00Z", 20, &ms), 0);
    assert_true(ms == T0 * 1000);
    assert_int_equal(soap_datetime("2026-12-02T18:30:00.250+01:30", 29, &ms), 0);
    assert_true(ms == T0 * 1000 + 250);
    assert_int_equal(soap_datetime("2026-12-02T17:00:00", 19, &ms), 0);
    assert_true(ms == T0 * 1000);
    assert_int_equal(soap_datetime("2026-02-29T00:00:00Z", 20, &ms), -1);
    assert_int_equal(soap_datetime("2024-02-29T00:00:00Z", 20, &ms), 0);
    assert_int_equal(soap_datetime("2026-13-01T00:00:00Z", 20, &ms), -1);
    assert_int_equal(soap_datetime("2026-12-02 17:00:00Z", 20, &ms), -1);
    assert_int_equal(soap_datetime("2026-12-02T17:00:00Zjunk", 24, &ms), -1);
    char out[25];
    soap_datetime_fmt(T0 * 1000 + 7, out);
    assert_string_equal(out, "2026-12-02T17:00:00.007Z");
}

static void digest_vector(void **st)
{
    (void)st;
    char d[29];
    soap_digest_b64("0123456789abcdef", 16, "2026-12-02T17:00:00Z", 20, "wonderland", 10, d);
    assert_string_equal(d, DIGEST);   /* computed independently with Python hashlib */
    assert_true(soap_ct_equal("abc", 3, "abc", 3));
    assert_false(soap_ct_equal("abc", 3, "abd", 3));
    assert_false(soap_ct_equal("abc", 3, "abcd", 4));
    assert_true(soap_ct_equal("", 0, "", 0));
}

static void nonce_cache(void **st)
{
    (void)st;
    struct soap_nonces *n = soap_nonces_new(2);
    assert_int_equal(soap_nonce_check(n, "a", 1, "n1", 2, 100, 10), 0);
    assert_int_equal(soap_nonce_check(n, "a", 1, "n1", 2, 100, 11), 1);
    assert_int_equal(soap_nonce_check(n, "b", 1, "n1", 2, 100, 11), 0);   /* per user */
    assert_int_equal(soap_nonce_check(n, "a", 1, "n2", 2, 100, 12), -1);  /* full of live */
    /* Once the first ones expire there is room again, and n1 may be reused. */
    assert_int_equal(soap_nonce_check(n, "a", 1, "n2", 2, 300, 100), 0);
    assert_int_equal(soap_nonce_check(n, "a", 1, "n1", 2, 300, 101), 0);
    assert_int_equal(soap_nonce_check(n, "a", 1, "n1", 2, 300, 102), 1);
    soap_nonces_free(n);
}

static int auth_doc(const char *header, struct kfg_str authz, struct soap_sec *s, int64_t now,
                    const struct soap_user **who, struct soap_fault *f)
{
    char buf[4096];
    snprintf(buf, sizeof buf,
             "<e:Envelope xmlns:e='" E11 "' xmlns:s='" SOAP_WSSE_NS "' xmlns:u='" SOAP_WSU_NS
             "'><e:Header>%s</e:Header><e:Body/></e:Envelope>", header);
    struct soap_limits lim = { 65536, 16, 200, 1024 };
    struct soap_doc d;
    assert_int_equal(soap_parse(NULL, &lim, buf, strlen(buf), &d, f), 0);
    int rc = soap_authenticate(s, &d, authz, now, who, f);
    soap_doc_free(&d);
    return rc;
}

#define TOKEN(user, type, pw, nonce, created)                                            \
    "<s:Security><s:UsernameToken><s:Username>" user "</s:Username><s:Password Type='"  \
    SOAP_UTP_NS "#" type "'>" pw "</s:Password>" nonce created                           \
    "</s:UsernameToken></s:Security>"
#define NONCE "<s:Nonce EncodingType='http://docs.oasis-open.org/wss/2004/01/oasis-200401-" \
              "wss-soap-message-security-1.0#Base64Binary'>" NONCE_B64 "</s:Nonce>"
#define CREATED "<u:Created>2026-12-02T17:00:00Z</u:Created>"

static const struct kfg_str NOAUTH = { NULL, 0 };

static void wsse_text(void **st)
{
    (void)st;
    struct soap_sec s = sec(SOAP_AUTH_WSSE, NULL);
    const struct soap_user *who;
    struct soap_fault f;
    assert_int_equal(auth_doc(TOKEN("bob", "PasswordText", "builder", "", ""), NOAUTH, &s, T0,
                              &who, &f), 0);
    assert_ptr_equal(who, &users[1]);
    assert_int_equal(auth_doc(TOKEN("bob", "PasswordText", "builder2", "", ""), NOAUTH, &s, T0,
                              &who, &f), -1);
    assert_string_equal(f.sub, "AuthenticationFailed");
    assert_int_equal(f.code, SOAP_FC_CLIENT);
    assert_int_equal(auth_doc(TOKEN("carol", "PasswordText", "builder", "", ""), NOAUTH, &s, T0,
                              &who, &f), -1);
    assert_string_equal(f.sub, "AuthenticationFailed");
    assert_int_equal(auth_doc("", NOAUTH, &s, T0, &who, &f), -1);
    assert_string_equal(f.sub, "AuthenticationRequired");
    s.allow_text = 0;
    assert_int_equal(auth_doc(TOKEN("bob", "PasswordText", "builder", "", ""), NOAUTH, &s, T0,
                              &who, &f), -1);
    assert_string_equal(f.sub, "UnsupportedPasswordType");
    s.allow_text = 1;
    s.text_needs_created = 1;
    assert_int_equal(auth_doc(TOKEN("bob", "PasswordText", "builder", "", ""), NOAUTH, &s, T0,
                              &who, &f), -1);
    assert_string_equal(f.sub, "InvalidSecurityToken");
}

static void wsse_digest_replay_window(void **st)
{
    (void)st;
    struct soap_nonces *n = soap_nonces_new(100);
    struct soap_sec s = sec(SOAP_AUTH_WSSE, n);
    const struct soap_user *who;
    struct soap_fault f;
    const char *tok = TOKEN("alice", "PasswordDigest", DIGEST, NONCE, CREATED);
    assert_int_equal(auth_doc(tok, NOAUTH, &s, T0 + 10, &who, &f), 0);
    assert_ptr_equal(who, &users[0]);
    /* The same token again is a replay. */
    assert_int_equal(auth_doc(tok, NOAUTH, &s, T0 + 11, &who, &f), -1);
    assert_string_equal(f.sub, "NonceReplayed");
    /* Outside the window: stale (and in the future). */
    soap_nonces_free(n);
    n = soap_nonces_new(100);
    s.nonces = n;
    assert_int_equal(auth_doc(tok, NOAUTH, &s, T0 + 301, &who, &f), -1);
    assert_string_equal(f.sub, "MessageExpired");
    assert_non_null(strstr(f.reason, "behind"));
    assert_int_equal(auth_doc(tok, NOAUTH, &s, T0 - 301, &who, &f), -1);
    assert_string_equal(f.sub, "MessageExpired");
    assert_non_null(strstr(f.reason, "ahead"));
    /* A wrong digest, a digest without nonce. */
    assert_int_equal(auth_doc(TOKEN("alice", "PasswordDigest", "AAAAAAAAAAAAAAAAAAAAAAAAAAA=",
                                    NONCE, CREATED), NOAUTH, &s, T0, &who, &f), -1);
    assert_string_equal(f.sub, "AuthenticationFailed");
    assert_int_equal(auth_doc(TOKEN("alice", "PasswordDigest", DIGEST, "", CREATED), NOAUTH, &s,
                              T0, &who, &f), -1);
    assert_string_equal(f.sub, "InvalidSecurityToken");
    assert_int_equal(auth_doc(TOKEN("alice", "PasswordDigest", DIGEST,
                                    "<s:Nonce>!!!</s:Nonce>", CREATED), NOAUTH, &s, T0, &who,
                              &f), -1);
    assert_string_equal(f.sub, "InvalidSecurityToken");
    /* The failed attempts did not burn the nonce: the real one still works. */
    assert_int_equal(auth_doc(tok, NOAUTH, &s, T0, &who, &f), 0);
    soap_nonces_free(n);
}

static void basic(void **st)
{
    (void)st;
    struct soap_sec s = sec(SOAP_AUTH_BASIC, NULL);
    const struct soap_user *who;
    struct soap_fault f;
    /* bob:builder */
    struct kfg_str ok = { "Basic Ym9iOmJ1aWxkZXI=", 22 };
    struct kfg_str bad = { "Basic Ym9iOmJ1aWxkZXJY", 22 };
    struct kfg_str junk = { "Bearer xyz", 10 };
    assert_int_equal(auth_doc("", ok, &s, T0, &who, &f), 0);
    assert_ptr_equal(who, &users[1]);
    assert_int_equal(auth_doc("", bad, &s, T0, &who, &f), -1);
    assert_int_equal(f.http, 401);
    assert_string_equal(f.sub, "AuthenticationFailed");
    assert_int_equal(auth_doc("", junk, &s, T0, &who, &f), -1);
    assert_string_equal(f.sub, "AuthenticationRequired");
    s.mode = SOAP_AUTH_EITHER;
    assert_int_equal(auth_doc("", ok, &s, T0, &who, &f), 0);
    assert_int_equal(auth_doc(TOKEN("bob", "PasswordText", "builder", "", ""), NOAUTH, &s, T0,
                              &who, &f), 0);
    assert_int_equal(auth_doc("", NOAUTH, &s, T0, &who, &f), -1);
    s.mode = SOAP_AUTH_BOTH;
    assert_int_equal(auth_doc(TOKEN("bob", "PasswordText", "builder", "", ""), NOAUTH, &s, T0,
                              &who, &f), -1);
    assert_int_equal(auth_doc(TOKEN("alice", "PasswordText", "wonderland", "", ""), ok, &s, T0,
                              &who, &f), 0);
    assert_ptr_equal(who, &users[0]);
    s.mode = SOAP_AUTH_NONE;
    assert_int_equal(auth_doc("", NOAUTH, &s, T0, &who, &f), 0);
    assert_null(who);
}

int main(void)
{
    xmlInitParser();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(b64), cmocka_unit_test(datetime), cmocka_unit_test(digest_vector),
        cmocka_unit_test(nonce_cache), cmocka_unit_test(wsse_text),
        cmocka_unit_test(wsse_digest_replay_window), cmocka_unit_test(basic),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    xmlCleanupParser();
    return rc;
}
