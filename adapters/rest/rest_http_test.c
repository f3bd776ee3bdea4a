/* Unit tests: Retry-After in both forms (RFC 9110 §10.2.3) and the cap at
 * the delivery's deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <time.h>

#include "rest.h"

/* 784111777 = Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example). */
#define EX 784111777LL

static int64_t hd(const char *v)
{
    int64_t t = 0;
    if (rest_http_date(v, strlen(v), &t) != 0)
        return INT64_MIN;
    return t;
}

static int64_t ra(const char *v, int64_t now_ms)
{
    int64_t ms = -42;
    if (rest_retry_after_ms(v, strlen(v), now_ms, &ms) != 0)
        return -1;
    return ms;
}

static void test_seconds(void **st)
{
    (void)st;
    assert_int_equal(ra("2", 0), 2000);
    assert_int_equal(ra("0", 0), 0);
    assert_int_equal(ra(" 120\t", 0), 120000);
    assert_int_equal(ra("007", 0), 7000);
    /* absurd values saturate, never wrap negative */
    assert_int_equal(ra("99999999999999999999999999", 0), REST_RETRY_AFTER_SAT_S * 1000);
    assert_int_equal(ra("315360001", 0), REST_RETRY_AFTER_SAT_S * 1000);
    assert_int_equal(ra("-1", 0), -1);
    assert_int_equal(ra("1.5", 0), -1);
    assert_int_equal(ra("1 2", 0), -1);
    assert_int_equal(ra("+3", 0), -1);
    assert_int_equal(ra("", 0), -1);
    assert_int_equal(ra("   ", 0), -1);
    assert_int_equal(rest_retry_after_ms(NULL, 0, 0, &(int64_t){ 0 }), -1);
    /* not NUL-terminated: only len bytes count */
    int64_t ms;
    assert_int_equal(rest_retry_after_ms("35xyz", 2, 0, &ms), 0);
    assert_int_equal(ms, 35000);
}

static void test_http_date_forms(void **st)
{
    (void)st;
    const char *imf = "Sun, 06 Nov 1994 08:49:37 GMT";
    const char *rfc850 = "Sunday, 06-Nov-94 08:49:37 GMT";
    const char *asc = "Sun Nov  6 08:49:37 1994";
    assert_int_equal(hd(imf), EX);
    assert_int_equal(hd(rfc850), EX);
    assert_int_equal(hd(asc), EX);
    const char *asc2 = "Thu Nov 10 08:49:37 1994";
    assert_int_equal(hd(asc2), EX + 4 * 86400);
    /* the same instant against the C library (TZ-independent) */
    struct tm tm = { .tm_year = 2031 - 1900, .tm_mon = 1, .tm_mday = 28, .tm_hour = 23,
                     .tm_min = 59, .tm_sec = 59 };
    const char *d = "Fri, 28 Feb 2031 23:59:59 GMT";
    assert_int_equal(hd(d), (int64_t)timegm(&tm));
    const char *leapd = "Tue, 29 Feb 2028 00:00:00 GMT";
    tm = (struct tm){ .tm_year = 2028 - 1900, .tm_mon = 1, .tm_mday = 29 };
    assert_int_equal(hd(leapd), (int64_t)timegm(&tm));
    const char *y2k = "Saturday, 01-Jan-00 00:00:00 GMT";
    assert_int_equal(hd(y2k), 946684800);
    /* before the epoch: negative, and one second before is not an error */
    assert_int_equal(hd("Wed, 31 Dec 1969 23:59:59 GMT"), -1);
    assert_int_equal(hd("Sunday, 06-Nov-49 08:49:37 GMT"), 2519801377LL);
    assert_int_equal(hd("Sun, 06 Nov 1949 08:49:37 GMT"), -635958623LL);
    assert_int_equal(hd("Sat, 01 Jan 0000 00:00:00 GMT"), -62167219200LL);
}

static void test_http_date_rejects(void **st)
{
    (void)st;
    static const char *const bad[] = {
        "Sun, 06 Nov 1994 08:49:37 UTC",     /* only GMT */
        "Sun, 6 Nov 1994 08:49:37 GMT",      /* two-digit day */
        "Sun, 06 Now 1994 08:49:37 GMT",
        "Sun, 31 Nov 1994 08:49:37 GMT",     /* no such day */
        "Sun, 29 Feb 2100 08:49:37 GMT",     /* 2100 is not a leap year */
        "Sun, 00 Nov 1994 08:49:37 GMT",
        "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Nov 1994 08:60:00 GMT",
        "Sun, 06 Nov 1994 08:49:61 GMT",
        "Sun, 06 Nov 1994 08:49:37 GMT x",   /* trailing garbage */
        "Sun, 06 Nov 94 08:49:37 GMT",
        "Xyz, 06 Nov 1994 08:49:37 GMT",
        "Sun,06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-1994 08:49:37 GMT",
        "Sun Nov 6 08:49:37 1994",           /* asctime pads the day */
        "Sun Nov  6 08:49:37 94",
        "Sunday",
        "Sun",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (hd(bad[i]) != INT64_MIN)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_int_equal(ra(bad[i], 0), -1);
    }
}

static void test_date_relative_to_now(void **st)
{
    (void)st;
    int64_t now = EX * 1000;
    assert_int_equal(ra("Sun, 06 Nov 1994 08:49:39 GMT", now), 2000);
    assert_int_equal(ra("Sun, 06 Nov 1994 08:49:39 GMT", now + 500), 1500);
    /* in the past: no extra wait */
    assert_int_equal(ra("Sun, 06 Nov 1994 08:49:30 GMT", now), 0);
    /* before 1970: in the past */
    assert_int_equal(ra("Sun, 06 Nov 1949 08:49:37 GMT", now), 0);
    /* far future saturates */
    assert_int_equal(ra("Fri, 31 Dec 9999 23:59:59 GMT", 0), REST_RETRY_AFTER_SAT_S * 1000);
}

static void test_cap(void **st)
{
    (void)st;
    /* no limits but the maximum: absurd values capped */
    assert_int_equal(rest_retry_cap(2000, 1000, 0, 0, 3600000), 2000);
    assert_int_equal(rest_retry_cap(7200000, 1000, 0, 0, 3600000), 3600000);
    assert_int_equal(rest_retry_cap(REST_RETRY_AFTER_SAT_S * 1000, 0, 0, 0, 3600000), 3600000);
    assert_int_equal(rest_retry_cap(0, 1000, 0, 0, 3600000), 0);
    assert_int_equal(rest_retry_cap(-5, 1000, 0, 0, 3600000), 0);
    /* inside the envelope's deadline, up to exactly it */
    assert_int_equal(rest_retry_cap(10000, 1000, 11000, 0, 3600000), 10000);
    /* past it, or past the webhook_max_age limit: give up now */
    assert_int_equal(rest_retry_cap(10001, 1000, 11000, 0, 3600000), -1);
    assert_int_equal(rest_retry_cap(6000, 1000, 11000, 6000, 3600000), -1);
    assert_int_equal(rest_retry_cap(5000, 1000, 11000, 6000, 3600000), 5000);
    /* the capped value is what is checked against the limits */
    assert_int_equal(rest_retry_cap(REST_RETRY_AFTER_SAT_S * 1000, 0, 3600000, 0, 3600000),
                     3600000);
    assert_int_equal(rest_retry_cap(REST_RETRY_AFTER_SAT_S * 1000, 0, 60000, 0, 3600000), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seconds),
        cmocka_unit_test(test_http_date_forms),
        cmocka_unit_test(test_http_date_rejects),
        cmocka_unit_test(test_date_relative_to_now),
        cmocka_unit_test(test_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
