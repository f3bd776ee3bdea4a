/* Unit tests for the HTTP/1.1 request-head parser and chunked decoder
 * (cmocka). References are to RFC 9112 unless noted. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "http_parse.h"

#define MAXH 128

static struct kfg_http_header hdrs[MAXH];
static struct kfg_http_request req;
static const char *why;

/* One call on the whole of s[0..n) with the given limits. */
static int parse_lim(const char *s, size_t n, size_t max_head, unsigned max_headers)
{
    struct kfg_http_limits lim = { max_head, max_headers };

    assert_true(max_headers <= MAXH);
    memset(&req, 0, sizeof req);
    req.headers = hdrs;
    why = NULL;
    int r = kfg_http_parse_request(NULL, s, n, &lim, &req, &why);
    if (r < 0)
        assert_non_null(why);
    return r;
}

static int parse_n(const char *s, size_t n)
{
    return parse_lim(s, n, 16384, 100);
}

static int parse(const char *s)
{
    return parse_n(s, strlen(s));
}

static void assert_slice(struct kfg_http_slice sl, const char *want)
{
    if (sl.n != strlen(want) || memcmp(sl.p, want, sl.n) != 0)
        fail_msg("slice '%.*s' != '%s'", (int)sl.n, sl.p, want);
}

/* Status (negative) of a request that must fail. */
#define EXPECT(status, s) do {                                             \
        int r_ = parse(s);                                                  \
        if (r_ != -(status))                                                \
            fail_msg("got %d (%s), want -%d for:\n%s", r_, r_ < 0 ? why : "", \
                     status, s);                                            \
    } while (0)

#define OK(s) do {                                                         \
        int r_ = parse(s);                                                  \
        if (r_ != (int)strlen(s))                                           \
            fail_msg("got %d (%s), want %d for:\n%s", r_, r_ < 0 ? why : "", \
                     (int)strlen(s), s);                                    \
    } while (0)

/* ---- request line (3) ------------------------------------------------ */

static void test_request_line_basic(void **state)
{
    (void)state;
    const char *s = "GET /index.html?a=1&b=2 HTTP/1.1\r\nHost: example.com\r\n\r\n";
    assert_int_equal(parse(s), strlen(s));
    assert_int_equal(req.method, KFG_HTTP_GET);
    assert_slice(req.method_name, "GET");
    assert_slice(req.target, "/index.html?a=1&b=2");
    assert_slice(req.path, "/index.html");
    assert_slice(req.query, "a=1&b=2");
    assert_slice(req.host, "example.com");
    assert_int_equal(req.version_minor, 1);
    assert_int_equal(req.content_length, -1);
    assert_false(req.chunked);
    assert_true(req.keep_alive);
    assert_true(req.has_host);
    assert_int_equal(req.nheaders, 1);

    /* Only the first '?' splits; an empty query is still a query. */
    OK("GET /p?x?y HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_slice(req.path, "/p");
    assert_slice(req.query, "x?y");
    OK("GET /p? HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_slice(req.query, "");
}

static void test_methods(void **state)
{
    (void)state;
    static const struct { const char *m; enum kfg_http_method e; } ms[] = {
        { "GET", KFG_HTTP_GET }, { "HEAD", KFG_HTTP_HEAD }, { "POST", KFG_HTTP_POST },
        { "PUT", KFG_HTTP_PUT }, { "DELETE", KFG_HTTP_DELETE },
        { "PATCH", KFG_HTTP_PATCH }, { "OPTIONS", KFG_HTTP_OPTIONS },
        { "TRACE", KFG_HTTP_TRACE }, { "PURGE", KFG_HTTP_OTHER },
        { "get", KFG_HTTP_OTHER },      /* methods are case-sensitive (RFC 9110 9.1) */
        { "GETX", KFG_HTTP_OTHER }, { "M-SEARCH", KFG_HTTP_OTHER },
        { "P", KFG_HTTP_OTHER },
    };
    char buf[128];

    for (size_t i = 0; i < sizeof ms / sizeof ms[0]; i++) {
        snprintf(buf, sizeof buf, "%s / HTTP/1.1\r\nHost: h\r\n\r\n", ms[i].m);
        assert_int_equal(parse(buf), strlen(buf));
        assert_int_equal(req.method, ms[i].e);
        assert_slice(req.method_name, ms[i].m);
    }
    EXPECT(501, "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    EXPECT(400, "GE(T / HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "G\xc3\xa9T / HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, " / HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, " GET / HTTP/1.1\r\nHost: h\r\n\r\n");
}

static void test_request_line_syntax(void **state)
{
    (void)state;
    EXPECT(400, "GET  / HTTP/1.1\r\nHost: h\r\n\r\n");     /* two SPs */
    EXPECT(400, "GET /  HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n");     /* HTAB is not SP */
    EXPECT(400, "GET / HTTP/1.1 \r\nHost: h\r\n\r\n");     /* trailing SP */
    EXPECT(400, "GET /\r\nHost: h\r\n\r\n");               /* HTTP/0.9 form */
    EXPECT(400, "GET / \r\nHost: h\r\n\r\n");
    EXPECT(400, "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n");   /* SP in target */
    EXPECT(400, "GET /a#frag HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET /\x7f HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET /\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n");
    const char nul[] = "GET /\0 HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_int_equal(parse_n(nul, sizeof nul - 1), -400);
}

static void test_versions(void **state)
{
    (void)state;
    OK("GET / HTTP/1.0\r\n\r\n");
    assert_int_equal(req.version_minor, 0);
    assert_false(req.has_host);
    assert_false(req.keep_alive);       /* 1.0 closes by default (9.3) */
    OK("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    assert_true(req.keep_alive);
    OK("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    assert_false(req.keep_alive);
    OK("GET / HTTP/1.1\r\nHost: h\r\nConnection: foo, CLOSE\r\n\r\n");
    assert_false(req.keep_alive);

    EXPECT(505, "GET / HTTP/1.2\r\nHost: h\r\n\r\n");
    EXPECT(505, "GET / HTTP/2.0\r\nHost: h\r\n\r\n");
    EXPECT(505, "GET / HTTP/0.9\r\nHost: h\r\n\r\n");
    EXPECT(505, "GET / HTTP/9.9\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET / http/1.1\r\nHost: h\r\n\r\n");      /* case-sensitive (2.3) */
    EXPECT(400, "GET / HTTP/1.10\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET / HTTP/11\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.x\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET / HTTPS/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1x\r\nHost: h\r\n\r\n");
}

static void test_targets(void **state)
{
    (void)state;
    OK("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_slice(req.path, "*");
    assert_slice(req.query, "");
    EXPECT(400, "GET * HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "OPTIONS *x HTTP/1.1\r\nHost: h\r\n\r\n");

    /* absolute-form: its authority wins over Host (3.2.2, 7.2). */
    OK("GET http://api.example:8080/v1?q=1 HTTP/1.1\r\nHost: other\r\n\r\n");
    assert_slice(req.host, "api.example:8080");
    assert_slice(req.path, "/v1");
    assert_slice(req.query, "q=1");
    OK("GET HTTPS://h HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_slice(req.host, "h");
    assert_slice(req.path, "/");
    OK("GET http://h?x HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_slice(req.path, "/");
    assert_slice(req.query, "x");
    OK("GET http://[::1]:80/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_slice(req.host, "[::1]:80");
    /* The target's authority wins even over a Host that disagrees. */
    OK("GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n");
    assert_slice(req.host, "a");

    EXPECT(400, "GET ftp://h/ HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET http:/h HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET http:// HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET http:///p HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET http://user@h/ HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET example.com:80 HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET index.html HTTP/1.1\r\nHost: h\r\n\r\n");
    /* absolute-form still needs a (possibly ignored) valid Host in 1.1 */
    EXPECT(400, "GET http://h/ HTTP/1.1\r\n\r\n");
}

static void test_leading_empty_lines(void **state)
{
    (void)state;
    const char *s = "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n";
    assert_int_equal(parse(s), strlen(s));  /* counted in the head (2.2) */
    assert_slice(req.method_name, "GET");
    EXPECT(400, "\nGET / HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "\r\rGET / HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_int_equal(parse("\r\n\r\n"), 0);
    assert_int_equal(parse("\r"), 0);
}

/* ---- header fields (5) ---------------------------------------------- */

static void test_headers(void **state)
{
    (void)state;
    OK("GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Pad: \t v a l \t \r\n"
       "x-CASE:1\r\nX-Obs: caf\xc3\xa9\r\nX-Tab: a\tb\r\n\r\n");
    assert_int_equal(req.nheaders, 6);
    assert_slice(req.headers[1].name, "X-Empty");
    assert_slice(req.headers[1].value, "");
    assert_slice(req.headers[2].value, "v a l");
    assert_slice(req.headers[3].name, "x-CASE");     /* case as sent */
    assert_slice(req.headers[3].value, "1");
    assert_slice(req.headers[4].value, "caf\xc3\xa9");
    assert_slice(req.headers[5].value, "a\tb");
    assert_non_null(kfg_http_header_get(&req, "X-CASE"));
    assert_slice(*kfg_http_header_get(&req, "x-pad"), "v a l");
    assert_null(kfg_http_header_get(&req, "X-Missing"));
    assert_null(kfg_http_header_get(&req, "X-Pa"));

    /* Repeated fields are kept in order; header_get gives the first. */
    OK("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\na: 2\r\n\r\n");
    assert_slice(*kfg_http_header_get(&req, "a"), "1");
    assert_slice(req.headers[2].value, "2");

    /* Every VCHAR and obs-text byte is allowed in a value. */
    char buf[512];
    size_t n = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: h\r\nX: ");
    for (int c = 0x21; c <= 0xff; c++)
        if (c != 0x7f)
            buf[n++] = (char)c;
    memcpy(buf + n, "\r\n\r\n", 4);
    n += 4;
    assert_int_equal(parse_n(buf, n), n);
    assert_int_equal(req.headers[1].value.n, 0xff - 0x21);
}

static void test_header_syntax(void **state)
{
    (void)state;
    EXPECT(400, "GET / HTTP/1.1\r\nHost : h\r\n\r\n");     /* 5.1: no WS before ':' */
    EXPECT(400, "GET / HTTP/1.1\r\nHost\t: h\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nX-A\r\n\r\n");      /* no colon */
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nX(A): v\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nX\xc3\xa9: v\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01" "b\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nX: 01234567\x1f" "89\r\n\r\n");
    const char nul[] = "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n";
    assert_int_equal(parse_n(nul, sizeof nul - 1), -400);
}

static void test_obs_fold_rejected(void **state)
{
    (void)state;
    /* 5.2: a server MUST reject obs-fold (or replace it); we reject. */
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n two\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nX-A: one\r\n\ttwo\r\n\r\n");
    /* Whitespace before the first field could hide it from others (2.2). */
    EXPECT(400, "GET / HTTP/1.1\r\n Host: h\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\n\tHost: h\r\n\r\n");
    /* A folded Content-Length is not a second chance at framing. */
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n 0\r\n\r\n");
}

static void test_bare_cr_lf(void **state)
{
    (void)state;
    /* 2.2: bare CR MUST be rejected or replaced; bare LF as a terminator is
     * rejected by policy (one unambiguous framing). */
    EXPECT(400, "GET / HTTP/1.1\nHost: h\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\n\n");
    EXPECT(400, "GET / HTTP/1.1\n\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nX: a\nY: b\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nX: a\rY: b\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\rHost: h\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\n\r\r");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\n\rX");
    EXPECT(400, "GET /\r HTTP/1.1\r\nHost: h\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nX\n: v\r\nHost: h\r\n\r\n");
    /* A CR at the very end is only incomplete. */
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: h\r\n\r"), 0);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: h\r"), 0);
    assert_int_equal(parse("GET / HTTP/1.1\r"), 0);
}

static void test_host(void **state)
{
    (void)state;
    EXPECT(400, "GET / HTTP/1.1\r\n\r\n");                  /* 3.2: MUST 400 */
    EXPECT(400, "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n");
    EXPECT(400, "GET / HTTP/1.1\r\nHost: a b\r\n\r\n");
    OK("GET / HTTP/1.1\r\nHost:\r\n\r\n");                  /* empty is allowed */
    assert_true(req.has_host);
    assert_slice(req.host, "");
    OK("GET / HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n");
    assert_slice(req.host, "[2001:db8::1]:8443");
    OK("GET / HTTP/1.0\r\nHost: h.example\r\n\r\n");
    assert_slice(req.host, "h.example");
}

static void test_expect_upgrade(void **state)
{
    (void)state;
    OK("PUT / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
    assert_true(req.expect_continue);
    OK("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n");
    assert_false(req.expect_continue);      /* RFC 9110 10.1.1: ignore in 1.0 */
    EXPECT(417, "PUT / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n");
    EXPECT(417, "PUT / HTTP/1.1\r\nHost: h\r\nExpect:\r\n\r\n");

    OK("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
       "Upgrade: websocket\r\n\r\n");
    assert_true(req.upgrade);
    assert_slice(req.upgrade_proto, "websocket");
    OK("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n");
    assert_false(req.upgrade);              /* Connection must list it */
    assert_slice(req.upgrade_proto, "");
    OK("GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    assert_false(req.upgrade);
    EXPECT(400, "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: a\r\nUpgrade: b\r\n\r\n");

    struct kfg_http_slice v = { "a, WebSocket ,b", 15 };
    assert_true(kfg_http_list_has(v, "websocket"));
    assert_true(kfg_http_list_has(v, "b"));
    assert_false(kfg_http_list_has(v, "web"));
}

/* ---- limits ----------------------------------------------------------- */

static void test_limit_head_bytes(void **state)
{
    (void)state;
    const char *s = "GET / HTTP/1.1\r\nHost: h\r\nX-Pad: 0123456789\r\n\r\n";
    size_t n = strlen(s);

    assert_int_equal(parse_lim(s, n, n, 100), n);           /* exactly fits */
    assert_int_equal(parse_lim(s, n, n - 1, 100), -431);
    /* Incomplete and already as long as the limit: 431, not "more". */
    assert_int_equal(parse_lim(s, n - 1, n - 1, 100), -431);
    assert_int_equal(parse_lim(s, n - 2, n - 1, 100), 0);
    /* Bytes after the head (a body) do not count. */
    char buf[256];
    snprintf(buf, sizeof buf, "%sBODYBODYBODY", s);
    assert_int_equal(parse_lim(buf, strlen(buf), n, 100), n);
    /* A syntax error inside the window wins over the size limit. */
    const char *lf = "GET / HTTP/1.1\nHost: h\r\n\r\n";
    assert_int_equal(parse_lim(lf, strlen(lf), 20, 100), -400);

    /* A huge head of small lines. */
    size_t big = 20000;
    char *h = malloc(big);
    assert_non_null(h);
    size_t m = (size_t)snprintf(h, big, "GET / HTTP/1.1\r\nHost: h\r\n");
    while (m + 16 < big)
        m += (size_t)snprintf(h + m, big - m, "X-A: 12345678\r\n");
    assert_int_equal(parse_lim(h, m, 16384, 100), -431);
    free(h);
}

static void test_limit_header_count(void **state)
{
    (void)state;
    char buf[1024];
    size_t n = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 7; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "X-%d: v\r\n", i);
    memcpy(buf + n, "\r\n", 2);
    n += 2;
    assert_int_equal(parse_lim(buf, n, 16384, 8), n);       /* 8 fields */
    assert_int_equal(req.nheaders, 8);
    assert_int_equal(parse_lim(buf, n, 16384, 7), -431);
    assert_string_equal(why, "too many header fields");
    /* Failing as soon as the eighth field starts, before the head ends. */
    assert_int_equal(parse_lim(buf, n - 8, 16384, 7), -431);
    assert_int_equal(parse_lim("GET / HTTP/1.0\r\n\r\n", 18, 16384, 0), 18);
    assert_int_equal(parse_lim("GET / HTTP/1.0\r\nA: b\r\n\r\n", 24, 16384, 0), -431);
}

/* ---- message body length (6) ------------------------------------------ */

static void test_content_length(void **state)
{
    (void)state;
    static const struct { const char *v; int64_t want; } ok[] = {
        { "0", 0 }, { "13", 13 }, { "007", 7 }, { "9223372036854775807", INT64_MAX },
        { "00000000000000000000000000042", 42 },
    };
    char buf[256];

    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        snprintf(buf, sizeof buf, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %s\r\n\r\n",
                 ok[i].v);
        assert_int_equal(parse(buf), strlen(buf));
        assert_int_equal(req.content_length, ok[i].want);
        assert_false(req.chunked);
    }
    static const char *const bad[] = {
        "9223372036854775808", "99999999999999999999", "-1", "+5", "0x10", "1a",
        "1.0", "1 2", "", "5,", ",5", "5, 6", "1e3", "\xd9\xa3",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(buf, sizeof buf, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %s\r\n\r\n",
                 bad[i]);
        if (parse(buf) != -400)
            fail_msg("Content-Length '%s' accepted", bad[i]);
    }
    /* Absent in 1.0 and 1.1: no body (6.3, requests). */
    OK("POST / HTTP/1.0\r\n\r\n");
    assert_int_equal(req.content_length, -1);
}

static void test_duplicate_content_length(void **state)
{
    (void)state;
    /* 6.3: identical values may be accepted as one; differing MUST be 400. */
    OK("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
    assert_int_equal(req.content_length, 5);
    OK("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5,5\r\n\r\n");
    assert_int_equal(req.content_length, 5);
    OK("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\ncontent-length: 05\r\n\r\n");
    assert_int_equal(req.content_length, 5);
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Length: 10\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length:\r\n\r\n");
    /* Not a different field: Content-Length with trailing junk in the name. */
    OK("POST / HTTP/1.1\r\nHost: h\r\nContent-Lengthx: 5\r\n\r\n");
    assert_int_equal(req.content_length, -1);
}

static void test_transfer_encoding(void **state)
{
    (void)state;
    OK("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_true(req.chunked);
    assert_int_equal(req.content_length, -1);
    OK("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: CHUNKED\r\n\r\n");
    assert_true(req.chunked);
    OK("POST / HTTP/1.1\r\nHost: h\r\ntransfer-encoding:  chunked \r\n\r\n");
    assert_true(req.chunked);

    /* 6.3: chunked not final in a request: 400. */
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                "Transfer-Encoding: gzip\r\n\r\n");
    /* 7: chunked MUST NOT be applied more than once. */
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                "Transfer-Encoding: chunked\r\n\r\n");
    /* Codings we cannot undo before chunked: 501 (6.1). */
    EXPECT(501, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
    EXPECT(501, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n"
                "Transfer-Encoding: chunked\r\n\r\n");
    /* Malformed lists and spellings others might read as chunked. */
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked,\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: ,chunked\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked;q=1\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunk ed\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\x0b\r\n\r\n");
    /* 6.1: TE in HTTP/1.0 means the framing is faulty. */
    EXPECT(400, "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
}

static void test_cl_te_conflict(void **state)
{
    (void)state;
    /* 6.1/6.3: both present is a smuggling attempt: reject, close. */
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                "Transfer-Encoding: chunked\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                "Content-Length: 4\r\n\r\n");
    EXPECT(400, "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
                "Content-Length: 0\r\n\r\n");
    /* Even when the TE is unsupported, the conflict is what is reported. */
    assert_int_equal(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                           "Transfer-Encoding: gzip, chunked\r\n\r\n"), -400);
    /* Value errors are reported in field order, before whole-head checks. */
    assert_int_equal(parse("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: x\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n"), -400);
    assert_string_equal(why, "invalid Content-Length");
}

/* ---- pipelining and incremental feeding -------------------------------- */

static void test_pipelined(void **state)
{
    (void)state;
    const char *s = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
                    "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                    "GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
                    "GARBAGE";
    size_t n = strlen(s), off = 0;
    int r;

    r = parse_n(s, n);
    assert_int_equal(r, strlen("GET /a HTTP/1.1\r\nHost: h\r\n\r\n"));
    assert_slice(req.path, "/a");
    off += (size_t)r;
    r = parse_n(s + off, n - off);
    assert_true(r > 0);
    assert_slice(req.path, "/b");
    assert_int_equal(req.content_length, 3);
    off += (size_t)r;
    assert_memory_equal(s + off, "abc", 3);
    off += 3;
    r = parse_n(s + off, n - off);
    assert_true(r > 0);
    assert_slice(req.path, "/c");
    assert_false(req.keep_alive);
    off += (size_t)r;
    assert_string_equal(s + off, "GARBAGE");
    assert_int_equal(parse_n(s + off, n - off), 0);
}

/* Inputs for the split tests: valid and invalid heads of each kind. */
static const char *const split_inputs[] = {
    "GET /index.html?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\nBODY",
    "\r\n\r\nPOST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello",
    "GET http://a:1/p HTTP/1.1\r\nHost: b\r\nX: 0123456789abcdef0123456789\r\n\r\n",
    "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: h\nX: a\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    "GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n",
    "PUT / HTTP/1.1\r\nHost: h\r\nExpect: nope\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: h\r\nX: 01234567\x01" "0123456789\r\n\r\n",
};

static void same_req(const struct kfg_http_request *a, const char *abase,
                     const struct kfg_http_request *b, const char *bbase)
{
#define SAME(f) do {                                                          \
        assert_int_equal(a->f.n, b->f.n);                                     \
        if (a->f.n)                                                           \
            assert_int_equal(a->f.p - abase, b->f.p - bbase);                 \
    } while (0)
    assert_int_equal(a->method, b->method);
    assert_int_equal(a->version_minor, b->version_minor);
    assert_int_equal(a->content_length, b->content_length);
    assert_int_equal(a->chunked, b->chunked);
    assert_int_equal(a->keep_alive, b->keep_alive);
    assert_int_equal(a->nheaders, b->nheaders);
    SAME(method_name);
    SAME(target);
    SAME(path);
    SAME(query);
    SAME(host);
    for (unsigned i = 0; i < a->nheaders; i++) {
        SAME(headers[i].name);
        SAME(headers[i].value);
    }
#undef SAME
}

static void test_incremental_every_split(void **state)
{
    (void)state;
    struct kfg_http_limits lim = { 16384, 4 };
    static struct kfg_http_header h1[8], h2[8];

    for (size_t t = 0; t < sizeof split_inputs / sizeof split_inputs[0]; t++) {
        const char *s = split_inputs[t];
        size_t n = strlen(s);
        struct kfg_http_request whole = { .headers = h1 }, part;
        int want = kfg_http_parse_request(NULL, s, n, &lim, &whole, NULL);

        assert_int_not_equal(want, 0);
        for (size_t k = 0; k <= n; k++) {
            /* Two reads: s[0..k) then all of it, the bytes moving between
             * the calls (each call gets its own exact-size copy). */
            struct kfg_http_parser ps = { 0 };
            char *b1 = malloc(k + 1), *b2 = malloc(n);
            const char *w = NULL;
            int r;

            memcpy(b1, s, k);
            memcpy(b2, s, n);
            part = (struct kfg_http_request){ .headers = h2 };
            r = kfg_http_parse_request(&ps, b1, k, &lim, &part, &w);
            if (r == 0)
                r = kfg_http_parse_request(&ps, b2, n, &lim, &part, &w);
            else
                assert_true(r < 0 || r == want);
            if (r != want)
                fail_msg("input %zu split at %zu: %d (%s), want %d", t, k, r,
                         r < 0 ? w : "", want);
            if (r > 0)
                same_req(&whole, s, &part, k >= (size_t)r ? b1 : b2);
            free(b1);
            free(b2);
        }
        /* One byte more per read, always with the same parser state. */
        struct kfg_http_parser ps = { 0 };
        int r = 0;
        size_t k;
        for (k = 1; k <= n && r == 0; k++) {
            char *b = malloc(k);
            memcpy(b, s, k);
            part = (struct kfg_http_request){ .headers = h2 };
            r = kfg_http_parse_request(&ps, b, k, &lim, &part, NULL);
            if (r > 0)
                same_req(&whole, s, &part, b);
            free(b);
        }
        assert_int_equal(r, want);
        if (r > 0)
            assert_int_equal(k - 1, r);     /* decided exactly at the end */
        assert_int_equal(ps.off, 0);
        assert_int_equal(ps.line, 0);
    }
}

/* ---- chunked transfer coding (7.1) ------------------------------------- */

/* Decodes s in one call with max_body; returns r, payload in out. */
static int dechunk(const char *s, size_t max_body, char *out, size_t *out_n,
                   size_t *used)
{
    struct kfg_http_chunked c;
    size_t n = strlen(s), u = 0, o = 0;
    char *b = malloc(n + 1);
    const char *w = NULL;
    int r;

    memcpy(b, s, n);
    kfg_http_chunked_init(&c, max_body);
    r = kfg_http_chunked_decode(&c, b, n, &u, &o, &w);
    if (r < 0)
        assert_non_null(w);
    memcpy(out, b, o);
    out[o] = '\0';
    if (out_n)
        *out_n = o;
    if (used)
        *used = u;
    /* Byte by byte gives the same. */
    struct kfg_http_chunked c2;
    char acc[4096];
    size_t ao = 0, au = 0;
    int r2 = 0;
    kfg_http_chunked_init(&c2, max_body);
    for (size_t i = 0; i < n && r2 == 0; i++) {
        char ch = s[i];
        size_t x, y;
        r2 = kfg_http_chunked_decode(&c2, &ch, 1, &x, &y, NULL);
        if (y)
            acc[ao++] = ch;
        au += x;
    }
    assert_int_equal(r, r2);
    assert_int_equal(o, ao);
    assert_memory_equal(out, acc, o);
    if (r != 0)
        assert_int_equal(u, au);
    free(b);
    return r;
}

#define DECHUNK_OK(s, payload) do {                                         \
        char out_[4096];                                                     \
        size_t used_;                                                        \
        int r_ = dechunk(s, 1 << 20, out_, NULL, &used_);                    \
        if (r_ != 1)                                                         \
            fail_msg("got %d for chunked '%s'", r_, s);                      \
        assert_string_equal(out_, payload);                                  \
        assert_int_equal(used_, strlen(s));                                  \
    } while (0)

#define DECHUNK_FAIL(status, s) do {                                        \
        char out_[4096];                                                     \
        int r_ = dechunk(s, 1 << 20, out_, NULL, NULL);                      \
        if (r_ != -(status))                                                 \
            fail_msg("got %d, want -%d for chunked '%s'", r_, status, s);     \
    } while (0)

static void test_chunked_basic(void **state)
{
    (void)state;
    DECHUNK_OK("0\r\n\r\n", "");
    DECHUNK_OK("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", "hello world");
    DECHUNK_OK("A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n",
               "0123456789abcdefghij");
    DECHUNK_OK("0005\r\nhello\r\n000\r\n\r\n", "hello");    /* leading zeros */
    DECHUNK_OK("3\r\n\r\n\n\r\n0\r\n\r\n", "\r\n\n");         /* data is opaque */

    /* What follows the body is left alone for the next request. */
    char out[64];
    size_t used, on;
    const char *s = "3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    assert_int_equal(dechunk(s, 100, out, &on, &used), 1);
    assert_int_equal(on, 3);
    assert_string_equal(s + used, "GET / HTTP/1.1\r\n");

    /* Incomplete is 0 and everything was consumed. */
    assert_int_equal(dechunk("5\r\nhel", 100, out, &on, &used), 0);
    assert_int_equal(used, 6);
    assert_string_equal(out, "hel");
}

static void test_chunked_extensions(void **state)
{
    (void)state;
    /* 7.1.1 chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ) */
    DECHUNK_OK("5;a\r\nhello\r\n0\r\n\r\n", "hello");
    DECHUNK_OK("5;a=b;c=d\r\nhello\r\n0;last\r\n\r\n", "hello");
    DECHUNK_OK("5 ; a = b ;c\r\nhello\r\n0\r\n\r\n", "hello");
    DECHUNK_OK("5\t;\ta\t=\tb\r\nhello\r\n0\r\n\r\n", "hello");
    DECHUNK_OK("5;a=\"quoted; \\\"value\\\"\"\r\nhello\r\n0\r\n\r\n", "hello");
    DECHUNK_OK("5;a=\"\"\r\nhello\r\n0\r\n\r\n", "hello");

    DECHUNK_FAIL(400, "5;\r\nhello\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "5;a=\r\nhello\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "5;=b\r\nhello\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "5;a b\r\nhello\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "5;a=\"unterminated\r\nhello\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "5;a=\"x\"y\r\nhello\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "5;a=b c\r\nhello\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "5;a=\"\x01\"\r\nhello\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "5;a\n\r\nhello\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "5 \r\nhello\r\n0\r\n\r\n");     /* BWS must lead to ';' */

    /* The size line is limited (extensions included). */
    char buf[KFG_HTTP_CHUNK_LINE_MAX + 64];
    size_t n = (size_t)snprintf(buf, sizeof buf, "1;");
    while (n < KFG_HTTP_CHUNK_LINE_MAX + 8)
        buf[n++] = 'x';
    snprintf(buf + n, sizeof buf - n, "\r\na\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, buf);
    n = (size_t)snprintf(buf, sizeof buf, "1;");
    while (n < KFG_HTTP_CHUNK_LINE_MAX - 2)
        buf[n++] = 'x';
    snprintf(buf + n, sizeof buf - n, "\r\na\r\n0\r\n\r\n");
    DECHUNK_OK(buf, "a");                   /* exactly at the limit */
}

static void test_chunked_trailers(void **state)
{
    (void)state;
    DECHUNK_OK("5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-Other:\r\n\r\n", "hello");
    DECHUNK_OK("0\r\nExpires: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n", "");
    DECHUNK_FAIL(400, "0\r\nX-Sum: a\r\n folded\r\n\r\n");
    DECHUNK_FAIL(400, "0\r\n X: a\r\n\r\n");
    DECHUNK_FAIL(400, "0\r\nX : a\r\n\r\n");
    DECHUNK_FAIL(400, "0\r\nX\r\n\r\n");
    DECHUNK_FAIL(400, "0\r\n: a\r\n\r\n");
    DECHUNK_FAIL(400, "0\r\nX: a\nY: b\r\n\r\n");
    DECHUNK_FAIL(400, "0\r\nX: a\x01\r\n\r\n");
    DECHUNK_FAIL(400, "0\r\nX: a\r\n\n");
    DECHUNK_FAIL(400, "0\r\n\n");
    DECHUNK_FAIL(400, "0\r\n\rX");

    char *buf = malloc(KFG_HTTP_TRAILER_MAX + 64);
    size_t n = (size_t)snprintf(buf, 64, "0\r\nX: ");
    while (n < KFG_HTTP_TRAILER_MAX + 8)
        buf[n++] = 'v';
    snprintf(buf + n, 64, "\r\n\r\n");
    DECHUNK_FAIL(431, buf);
    free(buf);
}

static void test_chunked_invalid_sizes(void **state)
{
    (void)state;
    DECHUNK_FAIL(400, "\r\n\r\n");               /* empty size */
    DECHUNK_FAIL(400, "-1\r\nx\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "+1\r\nx\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "0x5\r\nhello\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "g\r\n");
    DECHUNK_FAIL(400, " 5\r\nhello\r\n0\r\n\r\n");
    DECHUNK_FAIL(400, "5\nhello\r\n0\r\n\r\n");  /* bare LF */
    DECHUNK_FAIL(400, "5\rhello\r\n0\r\n\r\n");  /* bare CR */
    DECHUNK_FAIL(400, "5\r\nhelloX\r\n0\r\n\r\n");   /* data longer than size */
    DECHUNK_FAIL(400, "5\r\nhello\n0\r\n\r\n");
    DECHUNK_FAIL(400, "5\r\nhello\r0\r\n\r\n");
    DECHUNK_FAIL(400, "5\r\nhello\r\n0\r\n\n");
    DECHUNK_FAIL(400, "5\r\nhello\r\n0\n\r\n");

    /* Over max_body: 413 as soon as the size says so. */
    char out[64];
    size_t used;
    assert_int_equal(dechunk("11\r\n", 16, out, NULL, &used), -413);
    assert_int_equal(used, 2);
    assert_int_equal(dechunk("10\r\n0123456789abcdef\r\n0\r\n\r\n", 16, out, NULL, NULL), 1);
    assert_int_equal(dechunk("8\r\n01234567\r\n9\r\n", 16, out, NULL, NULL), -413);
    assert_int_equal(dechunk("1\r\nx\r\n0\r\n\r\n", 0, out, NULL, NULL), -413);
    assert_int_equal(dechunk("0\r\n\r\n", 0, out, NULL, NULL), 1);
    assert_int_equal(dechunk("fffffffffffffff\r\n", (size_t)-1, out, NULL, NULL), 0);
    /* More hex digits than 64 bits hold: 400, never a wrapped size. */
    assert_int_equal(dechunk("10000000000000005\r\nhello\r\n0\r\n\r\n", (size_t)-1, out,
                             NULL, NULL), -400);
}

static void test_chunked_sticky(void **state)
{
    (void)state;
    struct kfg_http_chunked c;
    char b[32];
    size_t u, o;
    const char *w = NULL;

    kfg_http_chunked_init(&c, 100);
    memcpy(b, "0\r\n\r\nX", 6);
    assert_int_equal(kfg_http_chunked_decode(&c, b, 6, &u, &o, NULL), 1);
    assert_int_equal(u, 5);
    assert_int_equal(kfg_http_chunked_decode(&c, b, 6, &u, &o, NULL), 1);
    assert_int_equal(u, 0);
    assert_int_equal(o, 0);

    kfg_http_chunked_init(&c, 100);
    memcpy(b, "z\r\n", 3);
    assert_int_equal(kfg_http_chunked_decode(&c, b, 3, &u, &o, &w), -400);
    assert_string_equal(w, "invalid chunk size");
    w = NULL;
    memcpy(b, "0\r\n\r\n", 5);
    assert_int_equal(kfg_http_chunked_decode(&c, b, 5, &u, &o, &w), -400);
    assert_string_equal(w, "invalid chunk size");
}

/* Every split of a chunked body into two calls decodes the same. */
static void test_chunked_every_split(void **state)
{
    (void)state;
    const char *s = "5;a=\"b\"\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n"
                    "0\r\nT: v\r\n\r\nNEXT";
    size_t n = strlen(s);

    for (size_t k = 0; k <= n; k++) {
        struct kfg_http_chunked c;
        char buf[128], body[128];
        size_t bn = 0, u1, o1, u2 = 0, o2 = 0;
        int r;

        memcpy(buf, s, n);
        kfg_http_chunked_init(&c, 1000);
        r = kfg_http_chunked_decode(&c, buf, k, &u1, &o1, NULL);
        assert_true(r == 0 || (r == 1 && k >= n - 4));
        memcpy(body, buf, o1);
        bn = o1;
        if (r == 0) {
            assert_int_equal(u1, k);
            r = kfg_http_chunked_decode(&c, buf + k, n - k, &u2, &o2, NULL);
            memcpy(body + bn, buf + k, o2);
            bn += o2;
        }
        assert_int_equal(r, 1);
        assert_int_equal(u1 + u2, n - 4);
        assert_int_equal(bn, 31);
        assert_memory_equal(body, "helloabcdefghijklmnopqrstuvwxyz", 31);
    }
}

/* A whole chunked request: head, then body in place, then the next one. */
static void test_chunked_request_pipelined(void **state)
{
    (void)state;
    char buf[256];
    const char *s = "POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\nT: 1\r\n\r\n"
                    "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
    size_t n = strlen(s), used, out;
    struct kfg_http_chunked c;

    memcpy(buf, s, n);
    int r = parse_n(buf, n);
    assert_true(r > 0);
    assert_true(req.chunked);
    kfg_http_chunked_init(&c, 1 << 20);
    assert_int_equal(kfg_http_chunked_decode(&c, buf + r, n - (size_t)r, &used, &out, NULL), 1);
    assert_int_equal(out, 9);
    assert_memory_equal(buf + r, "Wikipedia", 9);
    size_t next = (size_t)r + used;
    assert_int_equal(parse_n(buf + next, n - next), n - next);
    assert_slice(req.path, "/next");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_line_basic),
        cmocka_unit_test(test_methods),
        cmocka_unit_test(test_request_line_syntax),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_targets),
        cmocka_unit_test(test_leading_empty_lines),
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_header_syntax),
        cmocka_unit_test(test_obs_fold_rejected),
        cmocka_unit_test(test_bare_cr_lf),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_expect_upgrade),
        cmocka_unit_test(test_limit_head_bytes),
        cmocka_unit_test(test_limit_header_count),
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_duplicate_content_length),
        cmocka_unit_test(test_transfer_encoding),
        cmocka_unit_test(test_cl_te_conflict),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_incremental_every_split),
        cmocka_unit_test(test_chunked_basic),
        cmocka_unit_test(test_chunked_extensions),
        cmocka_unit_test(test_chunked_trailers),
        cmocka_unit_test(test_chunked_invalid_sizes),
        cmocka_unit_test(test_chunked_sticky),
        cmocka_unit_test(test_chunked_every_split),
        cmocka_unit_test(test_chunked_request_pipelined),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
