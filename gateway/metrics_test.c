#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics.h"

static int teardown(void **state)
{
    (void)state;
    kfg_metrics_shutdown();
    return 0;
}

static char *render(void)
{
    struct kfg_buf b = {0};
    kfg_metrics_render(&b);
    assert_false(b.oom);
    return b.p ? b.p : calloc(1, 1);
}

static void test_render_exact(void **state)
{
    (void)state;
    struct kfg_metric *c0 = kfg_metric_get(KFG_METRIC_COUNTER, "kfg_requests_total",
                                           "Requests handled.", "instance=\"wx0\",outcome=\"ok\"");
    struct kfg_metric *g = kfg_metric_get(KFG_METRIC_GAUGE, "kfg_up", "1 while running.", NULL);
    struct kfg_metric *h = kfg_metric_get(KFG_METRIC_HISTOGRAM, "kfg_latency_seconds",
                                          "Latency.", "instance=\"wx0\"");
    /* Same name created later still renders with its family. */
    struct kfg_metric *c1 = kfg_metric_get(KFG_METRIC_COUNTER, "kfg_requests_total",
                                           "Requests handled.", "instance=\"wx1\",outcome=\"ok\"");
    assert_non_null(c0);
    assert_non_null(g);
    assert_non_null(h);
    assert_non_null(c1);
    kfg_metric_add(c0, 3);
    kfg_metric_add(c1, 1);
    kfg_metric_add(c1, 1);
    kfg_metric_set(g, 1);
    kfg_metric_add(g, -3);
    kfg_metric_observe(h, 0.0003);
    kfg_metric_observe(h, 0.02);
    kfg_metric_observe(h, 42);
    char *s = render();
    assert_string_equal(s,
        "# HELP kfg_requests_total Requests handled.\n"
        "# TYPE kfg_requests_total counter\n"
        "kfg_requests_total{instance=\"wx0\",outcome=\"ok\"} 3\n"
        "kfg_requests_total{instance=\"wx1\",outcome=\"ok\"} 2\n"
        "# HELP kfg_up 1 while running.\n"
        "# TYPE kfg_up gauge\n"
        "kfg_up -2\n"
        "# HELP kfg_latency_seconds Latency.\n"
        "# TYPE kfg_latency_seconds histogram\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.0001\"} 0\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.00025\"} 0\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.0005\"} 1\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.001\"} 1\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.0025\"} 1\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.005\"} 1\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.01\"} 1\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.025\"} 2\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.05\"} 2\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.1\"} 2\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.25\"} 2\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"0.5\"} 2\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"1\"} 2\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"2.5\"} 2\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"5\"} 2\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"10\"} 2\n"
        "kfg_latency_seconds_bucket{instance=\"wx0\",le=\"+Inf\"} 3\n"
        "kfg_latency_seconds_sum{instance=\"wx0\"} 42.0203\n"
        "kfg_latency_seconds_count{instance=\"wx0\"} 3\n");
    free(s);
}

static void test_histogram_no_labels_and_bounds(void **state)
{
    (void)state;
    struct kfg_metric *h = kfg_metric_get(KFG_METRIC_HISTOGRAM, "h", NULL, "");
    assert_non_null(h);
    /* le is inclusive; bounds hit exactly land in their own bucket. */
    kfg_metric_observe(h, 0.0001);
    kfg_metric_observe(h, 0.000100001);
    kfg_metric_observe(h, 0.005);
    kfg_metric_observe(h, 1);
    kfg_metric_observe(h, 10);
    kfg_metric_observe(h, 10.000001);
    kfg_metric_observe(h, -1);          /* clamped to 0 */
    kfg_metric_observe(h, NAN);         /* clamped to 0 */
    kfg_metric_observe(h, INFINITY);    /* +Inf bucket, clamped sum */
    assert_int_equal(kfg_metric_count(h), 9);
    char *s = render();
    assert_string_equal(s,
        "# TYPE h histogram\n"
        "h_bucket{le=\"0.0001\"} 3\n"
        "h_bucket{le=\"0.00025\"} 4\n"
        "h_bucket{le=\"0.0005\"} 4\n"
        "h_bucket{le=\"0.001\"} 4\n"
        "h_bucket{le=\"0.0025\"} 4\n"
        "h_bucket{le=\"0.005\"} 5\n"
        "h_bucket{le=\"0.01\"} 5\n"
        "h_bucket{le=\"0.025\"} 5\n"
        "h_bucket{le=\"0.05\"} 5\n"
        "h_bucket{le=\"0.1\"} 5\n"
        "h_bucket{le=\"0.25\"} 5\n"
        "h_bucket{le=\"0.5\"} 5\n"
        "h_bucket{le=\"1\"} 6\n"
        "h_bucket{le=\"2.5\"} 6\n"
        "h_bucket{le=\"5\"} 6\n"
        "h_bucket{le=\"10\"} 7\n"
        "h_bucket{le=\"+Inf\"} 9\n"
        "h_sum 1000000021.005201001\n"
        "h_count 9\n");
    free(s);
}

static void test_same_handle(void **state)
{
    (void)state;
    struct kfg_metric *a = kfg_metric_get(KFG_METRIC_COUNTER, "c", NULL, "x=\"1\"");
    struct kfg_metric *b = kfg_metric_get(KFG_METRIC_COUNTER, "c", "Help given later.", "x=\"1\"");
    struct kfg_metric *c = kfg_metric_get(KFG_METRIC_COUNTER, "c", "Ignored.", "x=\"2\"");
    struct kfg_metric *n1 = kfg_metric_get(KFG_METRIC_GAUGE, "g", "G.", NULL);
    struct kfg_metric *n2 = kfg_metric_get(KFG_METRIC_GAUGE, "g", "G.", "");
    assert_non_null(a);
    assert_ptr_equal(a, b);
    assert_non_null(c);
    assert_ptr_not_equal(a, c);
    assert_non_null(n1);
    assert_ptr_equal(n1, n2);   /* NULL and "" both mean no labels */
    /* Hot metrics never share a cache line. */
    assert_int_equal((uintptr_t)a % 64, 0);
    assert_int_equal((uintptr_t)c % 64, 0);
    kfg_metric_add(a, 5);
    assert_int_equal(kfg_metric_value(b), 5);
    assert_int_equal(kfg_metric_value(c), 0);
    char *s = render();
    assert_string_equal(s,
        "# HELP c Help given later.\n"
        "# TYPE c counter\n"
        "c{x=\"1\"} 5\n"
        "c{x=\"2\"} 0\n"
        "# HELP g G.\n"
        "# TYPE g gauge\n"
        "g 0\n");
    free(s);
}

static void test_type_conflict(void **state)
{
    (void)state;
    assert_non_null(kfg_metric_get(KFG_METRIC_COUNTER, "x", "X.", NULL));
    assert_null(kfg_metric_get(KFG_METRIC_GAUGE, "x", "X.", NULL));
    assert_null(kfg_metric_get(KFG_METRIC_HISTOGRAM, "x", "X.", "a=\"1\""));
    /* Histogram series names cannot be claimed by another family. */
    assert_non_null(kfg_metric_get(KFG_METRIC_HISTOGRAM, "lat", NULL, NULL));
    assert_null(kfg_metric_get(KFG_METRIC_COUNTER, "lat_count", NULL, NULL));
    assert_null(kfg_metric_get(KFG_METRIC_GAUGE, "lat_sum", NULL, NULL));
    assert_null(kfg_metric_get(KFG_METRIC_COUNTER, "lat_bucket", NULL, NULL));
    assert_non_null(kfg_metric_get(KFG_METRIC_COUNTER, "lat_total", NULL, NULL));
    assert_non_null(kfg_metric_get(KFG_METRIC_GAUGE, "dur_count", NULL, NULL));
    assert_null(kfg_metric_get(KFG_METRIC_HISTOGRAM, "dur", NULL, NULL));
    assert_null(kfg_metric_get((enum kfg_metric_type)0, "t", NULL, NULL));
    assert_null(kfg_metric_get((enum kfg_metric_type)4, "t", NULL, NULL));
    /* The conflicting calls did not create anything. */
    char *s = render();
    assert_string_equal(s,
        "# HELP x X.\n# TYPE x counter\nx 0\n"
        "# TYPE lat histogram\n"
        "lat_bucket{le=\"0.0001\"} 0\n" "lat_bucket{le=\"0.00025\"} 0\n"
        "lat_bucket{le=\"0.0005\"} 0\n" "lat_bucket{le=\"0.001\"} 0\n"
        "lat_bucket{le=\"0.0025\"} 0\n" "lat_bucket{le=\"0.005\"} 0\n"
        "lat_bucket{le=\"0.01\"} 0\n" "lat_bucket{le=\"0.025\"} 0\n"
        "lat_bucket{le=\"0.05\"} 0\n" "lat_bucket{le=\"0.1\"} 0\n"
        "lat_bucket{le=\"0.25\"} 0\n" "lat_bucket{le=\"0.5\"} 0\n"
        "lat_bucket{le=\"1\"} 0\n" "lat_bucket{le=\"2.5\"} 0\n"
        "lat_bucket{le=\"5\"} 0\n" "lat_bucket{le=\"10\"} 0\n"
        "lat_bucket{le=\"+Inf\"} 0\n" "lat_sum 0\n" "lat_count 0\n"
        "# TYPE lat_total counter\nlat_total 0\n"
        "# TYPE dur_count gauge\ndur_count 0\n");
    free(s);
}

static void test_validation(void **state)
{
    (void)state;
    static const char *const bad_names[] = {
        "", "1abc", "a-b", "a b", "a.b", "ä", "a\"", NULL,
    };
    for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++)
        assert_null(kfg_metric_get(KFG_METRIC_COUNTER, bad_names[i], NULL, NULL));
    assert_non_null(kfg_metric_get(KFG_METRIC_COUNTER, "_ok:name_1", NULL, NULL));
    assert_non_null(kfg_metric_get(KFG_METRIC_COUNTER, ":colon", NULL, NULL));

    static const char *const bad_labels[] = {
        "a=b", "a=\"b", "a=\"b\",", ",a=\"b\"", "a=\"b\"c=\"d\"", "a =\"b\"",
        "1a=\"b\"", "a-b=\"c\"", "a=\"x\\q\"", "a=\"x\\\"", "a=\"x\ny\"",
        "a=\"x\"y\"", "__name__=\"x\"", "a=\"1\",a=\"2\"", "{a=\"1\"}", "a",
    };
    for (size_t i = 0; i < sizeof(bad_labels) / sizeof(bad_labels[0]); i++)
        if (kfg_metric_get(KFG_METRIC_COUNTER, "lbl", NULL, bad_labels[i]))
            fail_msg("accepted labels: %s", bad_labels[i]);
    assert_non_null(kfg_metric_get(KFG_METRIC_COUNTER, "lbl", NULL,
                                   "a=\"\",_b=\"x\\\\y\\\"z\\n\",c9=\"\xc3\xa9\",le=\"1\""));
    /* `le` belongs to render on histograms. */
    assert_null(kfg_metric_get(KFG_METRIC_HISTOGRAM, "hl", NULL, "le=\"1\""));
    assert_non_null(kfg_metric_get(KFG_METRIC_HISTOGRAM, "hl", NULL, "lee=\"1\""));
}

static void test_label_escape(void **state)
{
    (void)state;
    char out[64];
    kfg_metrics_label_escape(out, sizeof(out), "a\\b\"c\nd\te");
    assert_string_equal(out, "a\\\\b\\\"c\\nd\te");
    kfg_metrics_label_escape(out, sizeof(out), NULL);
    assert_string_equal(out, "");
    /* Truncation never leaves half an escape ... */
    kfg_metrics_label_escape(out, 4, "ab\"c");
    assert_string_equal(out, "ab");
    kfg_metrics_label_escape(out, 5, "ab\"c");
    assert_string_equal(out, "ab\\\"");
    kfg_metrics_label_escape(out, 1, "abc");
    assert_string_equal(out, "");
    /* ... nor half a UTF-8 character. */
    kfg_metrics_label_escape(out, 4, "a\xe2\x82\xac");
    assert_string_equal(out, "a");
    kfg_metrics_label_escape(out, 5, "a\xe2\x82\xac");
    assert_string_equal(out, "a\xe2\x82\xac");
    out[0] = 'x';
    kfg_metrics_label_escape(out, 0, "abc");   /* writes nothing */
    assert_int_equal(out[0], 'x');

    /* An escaped value is accepted as a label and rendered verbatim. */
    char lbl[128];
    kfg_metrics_label_escape(out, sizeof(out), "we\"ird\\name\n");
    snprintf(lbl, sizeof(lbl), "instance=\"%s\"", out);
    struct kfg_metric *m = kfg_metric_get(KFG_METRIC_GAUGE, "esc", "Back\\slash\nnewline \"q\".", lbl);
    assert_non_null(m);
    char *s = render();
    assert_string_equal(s,
        "# HELP esc Back\\\\slash\\nnewline \"q\".\n"
        "# TYPE esc gauge\n"
        "esc{instance=\"we\\\"ird\\\\name\\n\"} 0\n");
    free(s);
}

static void test_null_safe(void **state)
{
    (void)state;
    kfg_metric_add(NULL, 1);
    kfg_metric_set(NULL, 1);
    kfg_metric_observe(NULL, 1);
    assert_int_equal(kfg_metric_value(NULL), 0);
    assert_int_equal(kfg_metric_count(NULL), 0);
    char *s = render();
    assert_string_equal(s, "");
    free(s);
}

#define NTHREADS 4
#define NITER 100000

static struct kfg_metric *g_counter, *g_gauge, *g_hist;
static volatile int g_stop;

static void *hammer(void *arg)
{
    (void)arg;
    for (int i = 0; i < NITER; i++) {
        kfg_metric_add(g_counter, 1);
        kfg_metric_add(g_gauge, (i & 1) ? -1 : 1);
        kfg_metric_observe(g_hist, (i % 4) * 0.001);   /* 0, 1, 2, 3 ms */
    }
    return NULL;
}

static void *scraper(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&g_stop, __ATOMIC_RELAXED)) {
        struct kfg_buf b = {0};
        kfg_metrics_render(&b);
        kfg_buf_free(&b);
    }
    return NULL;
}

static void test_concurrent_updates(void **state)
{
    (void)state;
    g_counter = kfg_metric_get(KFG_METRIC_COUNTER, "hits_total", "Hits.", NULL);
    g_gauge = kfg_metric_get(KFG_METRIC_GAUGE, "inflight", "In flight.", NULL);
    g_hist = kfg_metric_get(KFG_METRIC_HISTOGRAM, "lat_seconds", "Latency.", NULL);
    pthread_t th[NTHREADS], scr;
    g_stop = 0;
    assert_int_equal(pthread_create(&scr, NULL, scraper, NULL), 0);
    for (int t = 0; t < NTHREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, hammer, NULL), 0);
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(th[t], NULL);
    __atomic_store_n(&g_stop, 1, __ATOMIC_RELAXED);
    pthread_join(scr, NULL);

    assert_int_equal(kfg_metric_value(g_counter), NTHREADS * NITER);
    assert_int_equal(kfg_metric_value(g_gauge), 0);
    assert_int_equal(kfg_metric_count(g_hist), NTHREADS * NITER);
    char *s = render();
    /* 0 and 1 ms fall in le=0.001, 2 ms in le=0.0025, 3 ms in le=0.005;
     * sum = 4 threads * 25000 * 6 ms = 600 s exactly. */
    assert_non_null(strstr(s, "hits_total 400000\n"));
    assert_non_null(strstr(s, "lat_seconds_bucket{le=\"0.0005\"} 100000\n"));
    assert_non_null(strstr(s, "lat_seconds_bucket{le=\"0.001\"} 200000\n"));
    assert_non_null(strstr(s, "lat_seconds_bucket{le=\"0.0025\"} 300000\n"));
    assert_non_null(strstr(s, "lat_seconds_bucket{le=\"0.005\"} 400000\n"));
    assert_non_null(strstr(s, "lat_seconds_bucket{le=\"+Inf\"} 400000\n"));
    assert_non_null(strstr(s, "lat_seconds_sum 600\n"));
    assert_non_null(strstr(s, "lat_seconds_count 400000\n"));
    free(s);
}

static struct kfg_metric *g_got[NTHREADS][64];

static void *getter(void *arg)
{
    int t = (int)(intptr_t)arg;
    for (int i = 0; i < 64; i++) {
        char lbl[32];
        snprintf(lbl, sizeof(lbl), "n=\"%d\"", i);
        g_got[t][i] = kfg_metric_get(KFG_METRIC_COUNTER, "race_total", "Race.", lbl);
        kfg_metric_add(g_got[t][i], 1);
    }
    return NULL;
}

static void test_concurrent_get(void **state)
{
    (void)state;
    pthread_t th[NTHREADS];
    for (int t = 0; t < NTHREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, getter, (void *)(intptr_t)t), 0);
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(th[t], NULL);
    for (int i = 0; i < 64; i++) {
        assert_non_null(g_got[0][i]);
        for (int t = 1; t < NTHREADS; t++)
            assert_ptr_equal(g_got[t][i], g_got[0][i]);
        assert_int_equal(kfg_metric_value(g_got[0][i]), NTHREADS);
    }
    char *s = render();
    int series = 0;
    for (const char *p = s; (p = strstr(p, "race_total{")); p++)
        series++;
    assert_int_equal(series, 64);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_render_exact, teardown),
        cmocka_unit_test_teardown(test_histogram_no_labels_and_bounds, teardown),
        cmocka_unit_test_teardown(test_same_handle, teardown),
        cmocka_unit_test_teardown(test_type_conflict, teardown),
        cmocka_unit_test_teardown(test_validation, teardown),
        cmocka_unit_test_teardown(test_label_escape, teardown),
        cmocka_unit_test_teardown(test_null_safe, teardown),
        cmocka_unit_test_teardown(test_concurrent_updates, teardown),
        cmocka_unit_test_teardown(test_concurrent_get, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
