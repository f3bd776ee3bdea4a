/*
 * Retry-After (RFC 9110 §10.2.3) as a webhook receiver sends it: either
 * delay-seconds or an HTTP-date in any of the three forms a recipient must
 * accept (§5.6.7): IMF-fixdate, obsolete RFC 850 and asctime. The value is
 * untrusted (any receiver), so every field is range-checked and nothing
 * overflows; rest_retry_fuzz.c runs it under libFuzzer.
 */
#include "rest.h"

#include <string.h>

static const char *const wkday[7] = { "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun" };
static const char *const weekday[7] = { "Monday", "Tuesday", "Wednesday", "Thursday",
                                        "Friday", "Saturday", "Sunday" };
static const char *const month[12] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

/* The cursor over the value; every reader fails (returns 0) at the end. */
struct cur {
    const char *p, *end;
};

static int lit(struct cur *c, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n) != 0)
        return 0;
    c->p += n;
    return 1;
}

/* Exactly n digits (n <= 4). */
static int digits(struct cur *c, int n, int *out)
{
    if (c->end - c->p < n)
        return 0;
    int v = 0;
    for (int i = 0; i < n; i++) {
        char d = c->p[i];
        if (d < '0' || d > '9')
            return 0;
        v = v * 10 + (d - '0');
    }
    c->p += n;
    *out = v;
    return 1;
}

static int name_of(struct cur *c, const char *const *names, int n)
{
    for (int i = 0; i < n; i++) {
        size_t l = strlen(names[i]);
        if ((size_t)(c->end - c->p) >= l && memcmp(c->p, names[i], l) == 0) {
            c->p += l;
            return i;
        }
    }
    return -1;
}

static int leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil); no timegm, so the TZ of the process cannot matter. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int hms(struct cur *c, int *h, int *mi, int *s)
{
    return digits(c, 2, h) && lit(c, ":") && digits(c, 2, mi) && lit(c, ":") &&
           digits(c, 2, s) && *h <= 23 && *mi <= 59 && *s <= 60;
}

static int valid_date(int y, int m, int d)
{
    static const int mdays[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    if (m < 0 || m > 11 || d < 1)
        return 0;
    return d <= mdays[m] + (m == 1 && leap(y));
}

int rest_http_date(const char *s, size_t len, int64_t *out_s)
{
    struct cur c = { s, s + len };
    int y = 0, m, d = 0, h = 0, mi = 0, sec = 0;
    const char *start = c.p;
    int wd = name_of(&c, weekday, 7);
    if (wd >= 0 && lit(&c, ", ")) {
        /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT */
        int yy;
        if (!digits(&c, 2, &d) || !lit(&c, "-") || (m = name_of(&c, month, 12)) < 0 ||
            !lit(&c, "-") || !digits(&c, 2, &yy) || !lit(&c, " ") || !hms(&c, &h, &mi, &sec) ||
            !lit(&c, " GMT"))
            return -1;
        /* Two-digit years: RFC 9110 puts them no more than 50 years ahead
         * of now; with no "now" here, 70..99 = 19xx, 00..69 = 20xx is the
         * same answer until 2020+50. */
        y = yy >= 70 ? 1900 + yy : 2000 + yy;
    } else {
        c.p = start;
        if (name_of(&c, wkday, 7) < 0)
            return -1;
        if (lit(&c, ", ")) {
            /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
            if (!digits(&c, 2, &d) || !lit(&c, " ") || (m = name_of(&c, month, 12)) < 0 ||
                !lit(&c, " ") || !digits(&c, 4, &y) || !lit(&c, " ") ||
                !hms(&c, &h, &mi, &sec) || !lit(&c, " GMT"))
                return -1;
        } else if (lit(&c, " ")) {
            /* asctime: Sun Nov  6 08:49:37 1994 (day space-padded) */
            if ((m = name_of(&c, month, 12)) < 0 || !lit(&c, " "))
                return -1;
            if (c.p < c.end && *c.p == ' ') {
                c.p++;
                if (!digits(&c, 1, &d))
                    return -1;
            } else if (!digits(&c, 2, &d)) {
                return -1;
            }
            if (!lit(&c, " ") || !hms(&c, &h, &mi, &sec) || !lit(&c, " ") ||
                !digits(&c, 4, &y))
                return -1;
        } else {
            return -1;
        }
    }
    if (c.p != c.end || !valid_date(y, m, d))
        return -1;
    *out_s = days_from_civil(y, m + 1, d) * 86400 + h * 3600 + mi * 60 + sec;
    return 0;
}

int rest_retry_after_ms(const char *v, size_t len, int64_t now_ms, int64_t *out_ms)
{
    if (!v)
        return -1;
    /* Field values arrive with optional whitespace around them. */
    while (len && (*v == ' ' || *v == '\t'))
        v++, len--;
    while (len && (v[len - 1] == ' ' || v[len - 1] == '\t' || v[len - 1] == '\r' ||
                   v[len - 1] == '\n'))
        len--;
    if (!len)
        return -1;
    if (v[0] >= '0' && v[0] <= '9') {
        int64_t s = 0;
        for (size_t i = 0; i < len; i++) {
            if (v[i] < '0' || v[i] > '9')
                return -1;
            /* Saturate: "99999999999999999999" is absurd, not an error;
             * the caller caps it at its deadline anyway. */
            if (s < REST_RETRY_AFTER_SAT_S)
                s = s * 10 + (v[i] - '0');
        }
        if (s > REST_RETRY_AFTER_SAT_S)
            s = REST_RETRY_AFTER_SAT_S;
        *out_ms = s * 1000;
        return 0;
    }
    int64_t t;
    if (rest_http_date(v, len, &t) != 0)
        return -1;     /* dates before 1970 are fine: negative t, in the past */
    int64_t ms = t * 1000 - now_ms;
    if (ms < 0)
        ms = 0;     /* a date in the past: retry at once (the backoff still applies) */
    if (ms > REST_RETRY_AFTER_SAT_S * 1000)
        ms = REST_RETRY_AFTER_SAT_S * 1000;
    *out_ms = ms;
    return 0;
}

int64_t rest_retry_cap(int64_t hint_ms, int64_t now_ms, int64_t deadline_ms,
                       int64_t age_limit_at_ms, int64_t max_ms)
{
    if (hint_ms <= 0)
        return 0;
    int64_t w = max_ms > 0 && hint_ms > max_ms ? max_ms : hint_ms;
    /* Coming back before the receiver asked is futile (it said no until
     * then), and waiting until a limit only to give up there wastes the
     * slot: past a limit, the caller dead-letters now. */
    if ((deadline_ms > 0 && now_ms + w > deadline_ms) ||
        (age_limit_at_ms > 0 && now_ms + w > age_limit_at_ms))
        return -1;
    return w;
}
