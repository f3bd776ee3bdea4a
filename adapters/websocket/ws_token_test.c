/* Visitor tokens: the spec's test vector, expiry, forgery, payload rules. */
#include "ws.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define KEY "s3cret-demo-key"

static int verify(const char *tok, int64_t now, struct ws_visitor *v, const char **why)
{
    return ws_token_verify((const uint8_t *)KEY, strlen(KEY), tok, strlen(tok), now, "web", v,
                           why);
}

/* spec/websocket.md §4 */
static const char vector[] =
    "v1.eyJzdWIiOiJ2aXNpdG9yLTQyIiwiY29udiI6ImNvbnYtMSIsImV4cCI6MTg5MzQ1NjAwMCwibmFtZSI6IkFkYSJ9"
    ".K4AqEUIioOnnn5wN38mmBR-cRI3sFvK8ykcTH2e1RXQ";

static void test_spec_vector(void **state)
{
    (void)state;
    struct ws_visitor v;
    const char *why = NULL;
    assert_int_equal(verify(vector, 1700000000, &v, &why), WS_TOK_OK);
    assert_string_equal(v.sub, "visitor-42");
    assert_string_equal(v.conv, "conv-1");
    assert_string_equal(v.name, "Ada");
    assert_int_equal(v.exp, 1893456000);
    char out[512];
    int n = ws_token_mint((const uint8_t *)KEY, strlen(KEY),
                          "{\"sub\":\"visitor-42\",\"conv\":\"conv-1\",\"exp\":1893456000,"
                          "\"name\":\"Ada\"}", out, sizeof out);
    assert_int_equal(n, (int)strlen(vector));
    assert_string_equal(out, vector);
}

static void test_expired(void **state)
{
    (void)state;
    struct ws_visitor v;
    const char *why;
    assert_int_equal(verify(vector, 1893456000, &v, &why), WS_TOK_EXPIRED);
    assert_int_equal(verify(vector, 1893455999, &v, &why), WS_TOK_OK);
}

static void test_forged(void **state)
{
    (void)state;
    struct ws_visitor v;
    const char *why;
    char t[512];
    /* another key */
    assert_int_equal(ws_token_verify((const uint8_t *)"another-key", 11, vector, strlen(vector),
                                     0, "web", &v, &why), WS_TOK_INVALID);
    assert_string_equal(why, "token signature does not match");
    /* one payload character changed (same length, still base64url) */
    strcpy(t, vector);
    t[10] ^= 1;
    assert_int_equal(verify(t, 0, &v, &why), WS_TOK_INVALID);
    /* one signature character changed */
    strcpy(t, vector);
    t[strlen(t) - 5] = t[strlen(t) - 5] == 'A' ? 'B' : 'A';
    assert_int_equal(verify(t, 0, &v, &why), WS_TOK_INVALID);
    /* non-zero trailing bits: another spelling of the same signature bytes */
    strcpy(t, vector);
    t[strlen(t) - 1] = 'R';
    assert_int_equal(verify(t, 0, &v, &why), WS_TOK_INVALID);
    static const char *const junk[] = { "", "v1.", "v1.abc", "v2.abc.def", "v1..", "v1.a.b.c",
                                        "v1.!!!.K4AqEUIioOnnn5wN38mmBR-cRI3sFvK8ykcTH2e1RXQ" };
    for (size_t i = 0; i < sizeof junk / sizeof junk[0]; i++)
        assert_int_equal(verify(junk[i], 0, &v, &why), WS_TOK_INVALID);
    /* over the length limit */
    char *big = malloc(WS_TOKEN_MAX + 10);
    memset(big, 'A', WS_TOKEN_MAX + 9);
    memcpy(big, "v1.", 3);
    big[WS_TOKEN_MAX + 9] = 0;
    assert_int_equal(verify(big, 0, &v, &why), WS_TOK_INVALID);
    free(big);
    /* no secret configured */
    assert_int_equal(ws_token_verify(NULL, 0, vector, strlen(vector), 0, "web", &v, &why),
                     WS_TOK_INVALID);
}

static int mint_verify(const char *payload, struct ws_visitor *v, const char **why)
{
    char t[1024];
    assert_true(ws_token_mint((const uint8_t *)KEY, strlen(KEY), payload, t, sizeof t) > 0);
    return verify(t, 1000, v, why);
}

static void test_payload_rules(void **state)
{
    (void)state;
    struct ws_visitor v;
    const char *why;
    assert_int_equal(mint_verify("{\"sub\":\"u\",\"exp\":2000}", &v, &why), WS_TOK_OK);
    assert_string_equal(v.conv, "u");              /* conv defaults to sub */
    assert_string_equal(v.name, "");
    assert_int_equal(mint_verify("{\"sub\":\"u\",\"exp\":2000,\"aud\":\"web\"}", &v, &why), WS_TOK_OK);
    static const char *const bad[] = {
        "{\"exp\":2000}", "{\"sub\":\"u\"}", "{\"sub\":\"u\",\"exp\":\"2000\"}",
        "{\"sub\":\"\",\"exp\":2000}", "{\"sub\":7,\"exp\":2000}",
        "{\"sub\":\"u\",\"exp\":2000,\"aud\":\"other\"}",
        "{\"sub\":\"u\",\"exp\":2000,\"conv\":\"anon:abc\"}",
        "{\"sub\":\"u\",\"exp\":2000,\"name\":5}", "[1]", "not json",
        "{\"sub\":\"u\",\"sub\":\"v\",\"exp\":2000}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why = NULL;
        assert_int_equal(mint_verify(bad[i], &v, &why), WS_TOK_INVALID);
        assert_non_null(why);
    }
    char p[512];
    snprintf(p, sizeof p, "{\"sub\":\"%0129d\",\"exp\":2000}", 0);  /* 129 bytes */
    assert_int_equal(mint_verify(p, &v, &why), WS_TOK_INVALID);
    snprintf(p, sizeof p, "{\"sub\":\"%0128d\",\"exp\":2000}", 0);
    assert_int_equal(mint_verify(p, &v, &why), WS_TOK_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_spec_vector),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_forged),
        cmocka_unit_test(test_payload_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
