/*
 * No-HTTP micro-benchmark of the adapter's own hot path: soap_process on
 * the bench envelope (parse, checks, dispatch, PushMessage into a sink that
 * only counts) plus the answer envelope, N times on one thread.
 *   make bench   (prints ns per request; timings only, never pass/fail)
 */
#include "soap.h"

#include <libxml/parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int nop_begin(void *a, const char *t) { (void)a; (void)t; return 0; }
static int nop_set(void *a, const char *k, const char *v, size_t n)
{
    (void)k; (void)v;
    *(size_t *)a += n;
    return 0;
}
static int nop_set_int(void *a, const char *k, int64_t v) { (void)a; (void)k; (void)v; return 0; }
static int nop_part_add(void *a, const char *k) { (void)a; (void)k; return 0; }
static int nop_part_set(void *a, int p, const char *k, const char *v, size_t n)
{
    (void)p;
    return nop_set(a, k, v, n);
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    xmlInitParser();
    static const char body[] =
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><soap:Envelope xmlns:soap=\""
        "http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><k:PushMessage xmlns:k=\""
        "urn:kfgate:soap:1\"><k:conversationId>cust-7</k:conversationId><k:senderId>cust-7"
        "</k:senderId><k:senderName>Li Lei</k:senderName><k:text>where is my parcel? order "
        "99812 was due yesterday</k:text></k:PushMessage></soap:Body></soap:Envelope>";
    struct soap_cfg cfg = { 0 };
    cfg.lim = (struct soap_limits){ 1 << 20, 32, 10000, 65536 };
    cfg.native = 1;
    cfg.pool = soap_pool_new();
    size_t bytes = 0;
    struct kfg_msg_sink s = { &bytes, nop_begin, nop_set, nop_set_int, nop_part_add, nop_part_set };
    struct soap_in in = { body, sizeof body - 1, { "text/xml; charset=utf-8", 23 },
                          { "\"urn:kfgate:soap:1/PushMessage\"", 31 }, { NULL, 0 }, 0,
                          "01a237b2-e280-7000-8000-000000000001" };
    struct soap_out out;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        soap_process(&cfg, &in, &s, &out);
        if (out.fault.http) {
            fprintf(stderr, "fault: %s\n", out.fault.reason);
            return 1;
        }
        struct soap_buf b = { 0 };
        soap_env_begin(&b, out.version);
        sb_puts(&b, "<kfg:PushMessageResponse><kfg:messageId>01a237b2-e280-7000-8000-"
                    "000000000001</kfg:messageId><kfg:seq>1</kfg:seq><kfg:status>accepted"
                    "</kfg:status></kfg:PushMessageResponse>");
        soap_env_end(&b, out.version);
        sb_free(&b);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / (double)n;
    printf("soap_process + answer: %.0f ns per PushMessage (%ld runs, %zu field bytes)\n", ns, n,
           bytes / (size_t)n);
    soap_pool_free(cfg.pool);
    return 0;
}
