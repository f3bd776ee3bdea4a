/*
 * No-HTTP micro-benchmark of the inbound hot path, one core: a safe-mode
 * MP text callback through wx_request (query, outer XML, signature,
 * base64, AES, frame, inner XML) and wx_build_msg (envelope through a fake
 * host), plus the "success" decision. Prints messages/s.
 *   make bench [BENCH_N=200000]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fake_host.h"
#include "wx_proto.h"

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    struct wx_conf c = {.variant = WX_MP, .mode = WX_MODE_ANY, .token = "pamtest",
                        .token_len = 7, .has_key = 1, .receive_id = "wxb11529c136998cb6",
                        .rid_len = 18};
    wx_xml_init();
    wx_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", 43, c.key);
    const char *inner =
        "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName><FromUserName><![CDATA["
        "oia2TjjewbmiOUlr6X-1crbLOvLw]]></FromUserName><CreateTime>1700000000</CreateTime>"
        "<MsgType><![CDATA[text]]></MsgType><Content><![CDATA[你好，我想查询一下订单状态]]>"
        "</Content><MsgId>6054768590064713728</MsgId></xml>";
    const unsigned char rnd[16] = "0123456789abcdef";
    char *enc;
    size_t enc_len;
    wx_encrypt(c.key, rnd, inner, strlen(inner), c.receive_id, c.rid_len, &enc, &enc_len);
    const char *parts[4] = {"pamtest", "1700000000", "584930", enc};
    size_t lens[4] = {7, 10, 6, enc_len};
    char sig[41];
    wx_signature(parts, lens, 4, sig);
    char q[512], body[2048];
    snprintf(q, sizeof q, "signature=x&timestamp=1700000000&nonce=584930&openid=oia2T&"
             "encrypt_type=aes&msg_signature=%s", sig);
    snprintf(body, sizeof body, "<xml><ToUserName><![CDATA[gh_7f083739789a]]></ToUserName>"
             "<Encrypt><![CDATA[%s]]></Encrypt></xml>", enc);
    size_t qlen = strlen(q), blen = strlen(body);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long ok = 0;
    for (long i = 0; i < n; i++) {
        struct wx_req r;
        wx_request(&c, "POST", 4, q, qlen, body, blen, &r);
        if (r.kind == WX_R_MESSAGE) {
            struct wx_build_opts o = {.variant = WX_MP, .now_ms = 1700000000000LL,
                                      .deadline_ms = 1700000004500LL};
            struct kfg_msg *m;
            struct wx_info info;
            if (wx_build_msg(&fake_host, NULL, &r.xml, r.inner, r.inner_len, &o, &m, &info) ==
                KFG_OK) {
                ok++;
                fh_free(m);
            }
        }
        wx_req_free(&r);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double s = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("wechat hot path (safe mode: verify, decrypt, parse, normalize): %ld msgs in %.3f s "
           "= %.0f msgs/s, %.2f us/msg\n", ok, s, (double)ok / s, s * 1e6 / (double)ok);
    free(enc);
    return ok == n ? 0 : 1;
}
