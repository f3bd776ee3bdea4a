/*
 * No-HTTP micro-benchmark of the inbound hot path, one core: a safe-mode
 * MP text callback through wx_request (query, outer XML, signature,
 * base64, AES, frame, inner XML), wx_build_msg into the gateway's own
 * message (gateway/msg.c, the functions behind the host table), the msgpack
 * envelope the journal stores (kfg_env_encode) or an encrypted passive
 * text reply (wx_reply_xml + wx_reply_encrypt: XML, AES, base64, signature).
 * Each iteration uses a distinct MsgId, encrypted beforehand, so nothing is
 * cached. Prints messages/s, and how many documents went to libxml2.
 *   make bench [BENCH_N=200000]
 * Built with -DWX_BENCH_FAKE_HOST it uses the unit tests' fake host instead
 * (no gateway library needed; the fake host is slower than the real one).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef WX_BENCH_FAKE_HOST
#include "fake_host.h"
#define BENCH_HOST fake_host
#define BENCH_FREE fh_free
#else
#include "buf.h"
#include "envelope.h"
#include "msg.h"
static struct kfg_msg *b_msg_new(struct kfg_instance *ins, const char *type)
{
    (void)ins;
    return kfg_msg_new(type, "acme", "wechat", "wx-bench");
}
static const struct kfg_host real_host = {
    .msg_new = b_msg_new,
    .msg_free = kfg_msg_free,
    .msg_set = kfg_msg_set,
    .msg_set_int = kfg_msg_set_int,
    .msg_get = kfg_msg_get,
    .msg_part_add = kfg_msg_part_add,
    .msg_part_set = kfg_msg_part_set,
    .msg_part_count = kfg_msg_part_count,
    .msg_part_kind = kfg_msg_part_kind,
    .msg_part_get = kfg_msg_part_get,
};
#define BENCH_HOST real_host
#define BENCH_FREE kfg_msg_free
#endif

#include "wx_proto.h"

#define POOL 1024

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    struct wx_conf c = {.variant = WX_MP, .mode = WX_MODE_ANY, .token = "pamtest",
                        .token_len = 7, .has_key = 1, .receive_id = "wxb11529c136998cb6",
                        .rid_len = 18};
    wx_xml_init();
    wx_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", 43, c.key);
    c.aes = wx_aes_new(c.key);             /* as the plugin does, once per instance */
    static char q[POOL][512], body[POOL][2048];
    static size_t qlen[POOL], blen[POOL];
    for (int k = 0; k < POOL; k++) {
        char inner[1024];
        snprintf(inner, sizeof inner,
                 "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName>"
                 "<![CDATA[oia2TjjewbmiOUlr6X-1crbLOvLw]]></FromUserName><CreateTime>1700000000"
                 "</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好，我想查询"
                 "一下订单状态]]></Content><MsgId>60547685900647%05d</MsgId></xml>", k);
        const unsigned char rnd[16] = "0123456789abcdef";
        char *enc;
        size_t enc_len;
        wx_encrypt(c.key, rnd, inner, strlen(inner), c.receive_id, c.rid_len, &enc, &enc_len);
        const char *parts[4] = {"pamtest", "1700000000", "584930", enc};
        size_t lens[4] = {7, 10, 6, enc_len};
        char sig[41];
        wx_signature(parts, lens, 4, sig);
        qlen[k] = (size_t)snprintf(q[k], sizeof q[k],
                                   "signature=x&timestamp=1700000000&nonce=584930&openid=oia2T&"
                                   "encrypt_type=aes&msg_signature=%s", sig);
        blen[k] = (size_t)snprintf(body[k], sizeof body[k],
                                   "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>"
                                   "<Encrypt><![CDATA[%s]]></Encrypt></xml>", enc);
        free(enc);
    }
    int rc = 0;
    /* pass 0: inbound; 1: + envelope encode; 2: + an encrypted passive reply */
    for (int encode = 0; encode < 3; encode++) {
#ifdef WX_BENCH_FAKE_HOST
        if (encode == 1)
            continue;
#else
        struct kfg_buf env = {0};
#endif
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        long ok = 0, slow = 0;
        static struct wx_req r;
        for (long i = 0; i < n; i++) {
            int k = (int)(i % POOL);
            wx_request(&c, "POST", 4, q[k], qlen[k], body[k], blen[k], &r);
            if (r.kind == WX_R_MESSAGE) {
                slow += r.xml.slow;
                struct wx_build_opts o = {.variant = WX_MP, .now_ms = 1700000000000LL,
                                          .deadline_ms = 1700000004500LL};
                struct kfg_msg *m;
                struct wx_info info;
                if (wx_build_msg(&BENCH_HOST, NULL, &r.xml, r.inner, r.inner_len, &o, &m,
                                 &info) == KFG_OK) {
                    ok++;
#ifndef WX_BENCH_FAKE_HOST
                    if (encode == 1) {
                        kfg_buf_reset(&env);
                        if (kfg_env_encode(m, &env) != 0)
                            ok--;
                    }
#endif
                    if (encode == 2) {
                        struct kfg_msg *a = BENCH_HOST.msg_new(NULL, "message");
                        int p = BENCH_HOST.msg_part_add(a, "text");
                        BENCH_HOST.msg_part_set(a, (size_t)p, "text", "已收到，谢谢", 18);
                        struct wx_buf x = {0}, e = {0};
                        if (wx_reply_xml(&BENCH_HOST, a, WX_MP, &info, 1700000001, &x) !=
                                KFG_OK ||
                            wx_reply_encrypt(&c, x.p, x.len, 1700000001, &e) != WX_OK)
                            ok--;
                        wx_buf_free(&x);
                        wx_buf_free(&e);
                        BENCH_FREE(a);
                    }
                    BENCH_FREE(m);
                }
            }
            wx_req_free(&r);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
#ifdef WX_BENCH_FAKE_HOST
        const char *into = "the fake host";
#else
        const char *into = "the gateway's message";
#endif
        printf("wechat hot path, safe mode (verify, decrypt, parse, normalize into %s%s): %ld "
               "msgs in %.3f s = %.0f msgs/s, %.2f us/msg; %ld parsed by libxml2\n", into,
               encode == 1 ? ", + msgpack envelope encode (core)"
               : encode == 2 ? ", + encrypted passive reply" : "",
               ok, s, (double)ok / s, s * 1e6 / (double)ok, slow);
#ifndef WX_BENCH_FAKE_HOST
        kfg_buf_free(&env);
#endif
        if (ok != n)
            rc = 1;
    }
    return rc;
}
