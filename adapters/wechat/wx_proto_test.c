/* cmocka tests of wx_proto.c / wx_reply.c: every request form and its
 * refusals in the official order, the mapping of every §5 message type and
 * event onto the envelope (through a fake host), and passive replies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_host.h"
#include "wx_crypto.h"
#include "wx_proto.h"

#define S(x) x, strlen(x)

#define TOKEN "QDG6eK"
#define CORP "wx5823bf96d3bd56c7"
#define AESKEY "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
#define V_QUERY                                                                       \
    "msg_signature=5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3&timestamp=1409659589&"    \
    "nonce=263014780&echostr=P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3" \
    "tP3zNdtp%2B4RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D"
#define P_QUERY \
    "msg_signature=477715d11cdb4164915debcba66cb864d751f3e6&timestamp=1409659813&nonce=1372623149"
#define P_BODY                                                                               \
    "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA["         \
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3"   \
    "QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48"   \
    "kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izo"   \
    "un1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUa"   \
    "x5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl"   \
    "/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]></Encrypt><AgentID><![CDATA[218" \
    "]]></AgentID></xml>"

/* MP test instance */
#define MP_TOKEN "pamtest"
#define MP_APPID "wxb11529c136998cb6"
#define MP_AES "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

static struct wx_conf wecom, mp;

static int setup(void **st)
{
    (void)st;
    wx_xml_init();
    wecom = (struct wx_conf){.variant = WX_WECOM, .token = TOKEN, .token_len = 6, .has_key = 1,
                             .receive_id = CORP, .rid_len = strlen(CORP)};
    if (wx_aes_key(S(AESKEY), wecom.key) != WX_OK)
        return -1;
    mp = (struct wx_conf){.variant = WX_MP, .mode = WX_MODE_ANY, .token = MP_TOKEN,
                          .token_len = strlen(MP_TOKEN), .has_key = 1,
                          .receive_id = MP_APPID, .rid_len = strlen(MP_APPID)};
    return wx_aes_key(S(MP_AES), mp.key) == WX_OK ? 0 : -1;
}

static void sign(const char *token, const char *ts, const char *nonce, const char *x,
                 char out[41])
{
    const char *p[4] = {token, ts, nonce, x};
    size_t l[4] = {strlen(token), strlen(ts), strlen(nonce), x ? strlen(x) : 0};
    assert_int_equal(wx_signature(p, l, x ? 4 : 3, out), WX_OK);
}

static void req(const struct wx_conf *c, const char *method, const char *q, const char *body,
                struct wx_req *r)
{
    wx_request(c, method, strlen(method), q, strlen(q), body, body ? strlen(body) : 0, r);
}

static void expect_reject(const struct wx_conf *c, const char *method, const char *q,
                          const char *body, int status, int code)
{
    struct wx_req r;
    req(c, method, q, body, &r);
    if (r.kind != WX_R_REJECT || r.status != status || r.code != code)
        fail_msg("kind %d status %d code %d (%s), want reject %d %d", r.kind, r.status, r.code,
                 r.why ? r.why : "", status, code);
    wx_req_free(&r);
}

/* ---- verification -------------------------------------------------------- */

static void test_wecom_verify_official(void **st)
{
    (void)st;
    struct wx_req r;
    req(&wecom, "GET", V_QUERY, NULL, &r);
    assert_int_equal(r.kind, WX_R_ECHO);
    assert_int_equal(r.echo_len, 19);
    assert_memory_equal(r.echo, "1616140317555161061", 19);
    wx_req_free(&r);
    /* a bad signature, the '+' decoded as space, the wrong corp */
    expect_reject(&wecom, "GET",
                  "msg_signature=5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd4&timestamp=1409659589&"
                  "nonce=263014780&echostr=P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3"
                  "tP3zNdtp%2B4RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D",
                  NULL, 403, WX_VALIDATE_SIGNATURE);
    expect_reject(&wecom, "GET",
                  "msg_signature=5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3&timestamp=1409659589&"
                  "nonce=263014780&echostr=P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3"
                  "tP3zNdtp%204RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D",
                  NULL, 403, WX_VALIDATE_SIGNATURE);
    struct wx_conf other = wecom;
    other.receive_id = "ww0000000000000000";
    expect_reject(&other, "GET", V_QUERY, NULL, 400, WX_VALIDATE_RECEIVEID);
    /* the query decoded twice would not match either: %252B */
    expect_reject(&wecom, "GET", "msg_signature=x&timestamp=1&nonce=2", NULL, 400, 0);
    expect_reject(&wecom, "PUT", V_QUERY, NULL, 405, 0);
}

static void test_mp_verify(void **st)
{
    (void)st;
    char sig[41], q[256];
    sign(MP_TOKEN, "1409304348", "xxxxxx", NULL, sig);
    snprintf(q, sizeof q, "signature=%s&timestamp=1409304348&nonce=xxxxxx&echostr=5837397749283",
             sig);
    struct wx_req r;
    req(&mp, "GET", q, NULL, &r);
    assert_int_equal(r.kind, WX_R_ECHO);
    assert_int_equal(r.echo_len, 13);
    assert_memory_equal(r.echo, "5837397749283", 13);
    wx_req_free(&r);
    /* safe mode too: MP verification is always plain */
    struct wx_conf safe = mp;
    safe.mode = WX_MODE_SAFE;
    req(&safe, "GET", q, NULL, &r);
    assert_int_equal(r.kind, WX_R_ECHO);
    wx_req_free(&r);
    sig[0] = sig[0] == 'a' ? 'b' : 'a';
    snprintf(q, sizeof q, "signature=%s&timestamp=1409304348&nonce=xxxxxx&echostr=5837397749283",
             sig);
    expect_reject(&mp, "GET", q, NULL, 403, WX_VALIDATE_SIGNATURE);
    /* duplicate parameter: refused, not guessed */
    sign(MP_TOKEN, "1409304348", "xxxxxx", NULL, sig);
    snprintf(q, sizeof q, "signature=%s&timestamp=1409304348&nonce=xxxxxx&nonce=y&echostr=1", sig);
    expect_reject(&mp, "GET", q, NULL, 400, WX_VALIDATE_SIGNATURE);
}

/* ---- POST forms --------------------------------------------------------------- */

static void test_wecom_post_official(void **st)
{
    (void)st;
    struct wx_req r;
    req(&wecom, "POST", P_QUERY, P_BODY, &r);
    assert_int_equal(r.kind, WX_R_MESSAGE);
    assert_int_equal(r.encrypted, 1);
    const struct wx_field *f = wx_xml_get(&r.xml, "Content");
    assert_non_null(f);
    assert_string_equal(f->val, "hello");
    wx_req_free(&r);
    /* 1. no Encrypt / not XML -> -40002 (before the signature) */
    expect_reject(&wecom, "POST", P_QUERY, "<xml><ToUserName>x</ToUserName></xml>", 400,
                  WX_PARSE_XML);
    expect_reject(&wecom, "POST", P_QUERY, "<xml><Encrypt></Encrypt></xml>", 400, WX_PARSE_XML);
    expect_reject(&wecom, "POST", P_QUERY, "not xml", 400, WX_PARSE_XML);
    expect_reject(&wecom, "POST", P_QUERY, "", 400, WX_PARSE_XML);
    /* 2. signature */
    expect_reject(&wecom, "POST",
                  "msg_signature=477715d11cdb4164915debcba66cb864d751f3e7&timestamp=1409659813&"
                  "nonce=1372623149",
                  P_BODY, 403, WX_VALIDATE_SIGNATURE);
    expect_reject(&wecom, "POST", "timestamp=1409659813&nonce=1372623149", P_BODY, 403,
                  WX_VALIDATE_SIGNATURE);
    /* the plain `signature` is not the one for encrypted POSTs */
    expect_reject(&wecom, "POST",
                  "signature=477715d11cdb4164915debcba66cb864d751f3e6&timestamp=1409659813&"
                  "nonce=1372623149",
                  P_BODY, 403, WX_VALIDATE_SIGNATURE);
    /* a DOCTYPE in the outer body */
    expect_reject(&wecom, "POST", P_QUERY, "<!DOCTYPE x><xml><Encrypt>AAAA</Encrypt></xml>", 400,
                  WX_PARSE_XML);
}

/* An encrypted MP POST of `inner`, signed; returns query and body. */
static void mp_encrypted(const struct wx_conf *c, const char *inner, const char *appid,
                         int compatible, char *q, size_t qcap, char **body)
{
    const unsigned char rnd[16] = "0123456789abcdef";
    char *enc;
    size_t n;
    assert_int_equal(wx_encrypt(c->key, rnd, S(inner), S(appid), &enc, &n), WX_OK);
    char msig[41], sig[41];
    sign(c->token, "1700000000", "987654", enc, msig);
    sign(c->token, "1700000000", "987654", NULL, sig);
    snprintf(q, qcap,
             "signature=%s&timestamp=1700000000&nonce=987654&openid=oUser1&encrypt_type=aes&"
             "msg_signature=%s",
             sig, msig);
    size_t cap = strlen(inner) + n + 256;
    *body = malloc(cap);
    if (compatible)
        snprintf(*body, cap, "<xml><ToUserName><![CDATA[gh_1]]></ToUserName>"
                             "<FromUserName><![CDATA[oForged]]></FromUserName>"
                             "<MsgType><![CDATA[text]]></MsgType><Content>forged</Content>"
                             "<Encrypt><![CDATA[%s]]></Encrypt></xml>", enc);
    else
        snprintf(*body, cap, "<xml><ToUserName><![CDATA[gh_1]]></ToUserName>"
                             "<Encrypt><![CDATA[%s]]></Encrypt></xml>", enc);
    free(enc);
}

#define TEXT_MSG                                                                          \
    "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oUser1]]>"      \
    "</FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>" \
    "<Content><![CDATA[hi there]]></Content><MsgId>1234567890123456789</MsgId></xml>"

static void test_mp_modes(void **st)
{
    (void)st;
    char q[512], *body;
    struct wx_req r;
    /* safe */
    mp_encrypted(&mp, TEXT_MSG, MP_APPID, 0, q, sizeof q, &body);
    req(&mp, "POST", q, body, &r);
    assert_int_equal(r.kind, WX_R_MESSAGE);
    assert_int_equal(r.encrypted, 1);
    assert_string_equal(wx_xml_get(&r.xml, "Content")->val, "hi there");
    wx_req_free(&r);
    struct wx_conf plain_only = mp;
    plain_only.mode = WX_MODE_PLAIN;
    expect_reject(&plain_only, "POST", q, body, 403, WX_ILLEGAL_AES_KEY);
    free(body);
    /* compatible: the plaintext copy is ignored, the encrypted one counts */
    mp_encrypted(&mp, TEXT_MSG, MP_APPID, 1, q, sizeof q, &body);
    req(&mp, "POST", q, body, &r);
    assert_int_equal(r.kind, WX_R_MESSAGE);
    assert_string_equal(wx_xml_get(&r.xml, "FromUserName")->val, "oUser1");
    wx_req_free(&r);
    free(body);
    /* wrong appid inside */
    mp_encrypted(&mp, TEXT_MSG, "wx0000000000000000", 0, q, sizeof q, &body);
    expect_reject(&mp, "POST", q, body, 400, WX_VALIDATE_RECEIVEID);
    free(body);
    /* plain */
    char sig[41];
    sign(MP_TOKEN, "1700000000", "987654", NULL, sig);
    snprintf(q, sizeof q, "signature=%s&timestamp=1700000000&nonce=987654&openid=oUser1", sig);
    req(&mp, "POST", q, TEXT_MSG, &r);
    assert_int_equal(r.kind, WX_R_MESSAGE);
    assert_int_equal(r.encrypted, 0);
    assert_string_equal(wx_xml_get(&r.xml, "MsgId")->val, "1234567890123456789");
    wx_req_free(&r);
    snprintf(q, sizeof q, "signature=%s&timestamp=1700000000&nonce=987654&encrypt_type=raw", sig);
    req(&mp, "POST", q, TEXT_MSG, &r);
    assert_int_equal(r.kind, WX_R_MESSAGE);
    wx_req_free(&r);
    struct wx_conf safe_only = mp;
    safe_only.mode = WX_MODE_SAFE;
    expect_reject(&safe_only, "POST", q, TEXT_MSG, 403, WX_VALIDATE_SIGNATURE);
    snprintf(q, sizeof q, "signature=%s&timestamp=1700000001&nonce=987654", sig);
    expect_reject(&mp, "POST", q, TEXT_MSG, 403, WX_VALIDATE_SIGNATURE);
    snprintf(q, sizeof q, "signature=%s&timestamp=1700000000&nonce=987654&encrypt_type=des", sig);
    expect_reject(&mp, "POST", q, TEXT_MSG, 400, 0);
    snprintf(q, sizeof q, "signature=%s&timestamp=1700000000&nonce=987654", sig);
    expect_reject(&mp, "POST", q, "<!DOCTYPE xml><xml/>", 400, WX_PARSE_XML);
}

/* ---- the envelope -------------------------------------------------------------- */

static struct kfg_msg *build(const char *xml, int variant, struct wx_info *info)
{
    struct wx_xml x;
    assert_int_equal(wx_xml_parse(S(xml), &x), WX_OK);
    struct wx_build_opts o = {.variant = variant, .now_ms = 1700000000500LL,
                              .deadline_ms = 1700000005000LL};
    struct kfg_msg *m = NULL;
    int rc = wx_build_msg(&fake_host, NULL, &x, S(xml), &o, &m, info);
    wx_xml_free(&x);
    assert_int_equal(rc, KFG_OK);
    return m;
}

#define HDR(type)                                                                        \
    "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oUser1]]>"     \
    "</FromUserName><CreateTime>1700000000</CreateTime><MsgType><![CDATA[" type "]]>"    \
    "</MsgType>"

static void common(const struct kfg_msg *m, const char *type)
{
    assert_string_equal(m->type, type);
    assert_string_equal(fh_s(m, "conversation.id"), "oUser1");
    assert_string_equal(fh_s(m, "conversation.kind"), "direct");
    assert_string_equal(fh_s(m, "sender.id"), "oUser1");
    assert_string_equal(fh_s(m, "sender.role"), "customer");
    assert_string_equal(fh_s(m, "recipient.id"), "gh_1");
    assert_int_equal(fh_i(m, "ts.channel"), 1700000000000LL);
    assert_int_equal(fh_i(m, "deadline"), 1700000005000LL);
}

static void test_map_messages(void **st)
{
    (void)st;
    struct wx_info info;
    struct kfg_msg *m = build(TEXT_MSG, WX_MP, &info);
    common(m, "message");
    assert_string_equal(fh_s(m, "idem"), "1234567890123456789");
    assert_string_equal(fh_s(m, "channel_msg_id"), "1234567890123456789");
    assert_int_equal(m->np, 1);
    assert_string_equal(m->p[0].kind, "text");
    assert_string_equal(fh_ps(m, 0, "text"), "hi there");
    assert_string_equal(info.from, "oUser1");
    assert_string_equal(info.to, "gh_1");
    assert_false(fh_has(m, "raw.body"));
    fh_free(m);

    m = build(HDR("image") "<PicUrl><![CDATA[http://mmbiz/x.jpg]]></PicUrl>"
              "<MediaId><![CDATA[MEDIA1]]></MediaId><MsgId>11</MsgId></xml>", WX_MP, &info);
    common(m, "message");
    assert_string_equal(m->p[0].kind, "image");
    assert_string_equal(fh_ps(m, 0, "media_id"), "MEDIA1");
    assert_string_equal(fh_ps(m, 0, "url"), "http://mmbiz/x.jpg");
    assert_string_equal(fh_ps(m, 0, "expires"), "1700259200500");
    assert_string_equal(fh_s(m, "idem"), "11");
    fh_free(m);

    m = build(HDR("voice") "<MediaId>V1</MediaId><Format>amr</Format>"
              "<Recognition><![CDATA[你好]]></Recognition><MsgId>12</MsgId></xml>", WX_MP, &info);
    assert_int_equal(m->np, 2);
    assert_string_equal(m->p[0].kind, "voice");
    assert_string_equal(fh_ps(m, 0, "media_id"), "V1");
    assert_string_equal(fh_ps(m, 0, "mime"), "audio/amr");
    assert_string_equal(m->p[1].kind, "text");
    assert_string_equal(fh_ps(m, 1, "text"), "你好");
    fh_free(m);
    m = build(HDR("voice") "<MediaId>V1</MediaId><Format>speex</Format><Recognition/>"
              "<MsgId>12</MsgId></xml>", WX_MP, &info);
    assert_int_equal(m->np, 1);
    assert_string_equal(fh_ps(m, 0, "mime"), "audio/speex");
    fh_free(m);

    const char *vt[] = {"video", "shortvideo"};
    for (int i = 0; i < 2; i++) {
        char doc[512];
        snprintf(doc, sizeof doc,
                 "<xml><ToUserName>gh_1</ToUserName><FromUserName>oUser1</FromUserName>"
                 "<CreateTime>1700000000</CreateTime><MsgType>%s</MsgType><MediaId>VID</MediaId>"
                 "<ThumbMediaId>TH</ThumbMediaId><MsgId>13</MsgId></xml>", vt[i]);
        m = build(doc, WX_MP, &info);
        common(m, "message");
        assert_string_equal(m->p[0].kind, "video");
        assert_string_equal(fh_ps(m, 0, "media_id"), "VID");
        assert_string_equal(fh_ps(m, 0, "thumb_media_id"), "TH");
        assert_string_equal(fh_s(m, "channel_data.msg_type"), vt[i]);
        fh_free(m);
    }

    m = build(HDR("location") "<Location_X>23.134521</Location_X><Location_Y>113.358803"
              "</Location_Y><Scale>20</Scale><Label><![CDATA[位置信息]]></Label><MsgId>14</MsgId>"
              "</xml>", WX_MP, &info);
    common(m, "message");
    assert_string_equal(m->p[0].kind, "location");
    assert_true(strncmp(fh_ps(m, 0, "lat"), "23.1345", 7) == 0);
    assert_true(strncmp(fh_ps(m, 0, "lon"), "113.3588", 8) == 0);
    assert_string_equal(fh_ps(m, 0, "label"), "位置信息");
    assert_string_equal(fh_ps(m, 0, "scale"), "20");
    fh_free(m);

    m = build(HDR("link") "<Title><![CDATA[T]]></Title><Description><![CDATA[D]]></Description>"
              "<Url><![CDATA[https://x/y]]></Url><PicUrl>https://p</PicUrl><MsgId>15</MsgId></xml>",
              WX_WECOM, &info);
    assert_string_equal(m->p[0].kind, "link");
    assert_string_equal(fh_ps(m, 0, "url"), "https://x/y");
    assert_string_equal(fh_ps(m, 0, "title"), "T");
    assert_string_equal(fh_ps(m, 0, "description"), "D");
    assert_string_equal(fh_ps(m, 0, "thumb_url"), "https://p");
    fh_free(m);

    /* ids and URLs are trimmed: with trailing whitespace they are copied,
     * without it taken from the parsed document as they are */
    m = build(HDR("link") "<Title>\n  T2 \n</Title><Url> https://x/z\t</Url><MsgId>16</MsgId></xml>",
              WX_MP, &info);
    assert_string_equal(fh_ps(m, 0, "url"), "https://x/z");
    assert_string_equal(fh_ps(m, 0, "title"), "T2");
    fh_free(m);
    m = build(HDR("image") "<MediaId>M2 </MediaId><PicUrl> https://p/2</PicUrl><MsgId>17</MsgId></xml>",
              WX_MP, &info);
    assert_string_equal(fh_ps(m, 0, "media_id"), "M2");
    assert_string_equal(fh_ps(m, 0, "url"), "https://p/2");
    fh_free(m);
}

static void test_map_wecom_official(void **st)
{
    (void)st;
    struct wx_req r;
    req(&wecom, "POST", P_QUERY, P_BODY, &r);
    assert_int_equal(r.kind, WX_R_MESSAGE);
    struct wx_build_opts o = {.variant = WX_WECOM, .keep_raw = 1, .now_ms = 1};
    struct kfg_msg *m;
    struct wx_info info;
    assert_int_equal(wx_build_msg(&fake_host, NULL, &r.xml, r.inner, r.inner_len, &o, &m, &info),
                     KFG_OK);
    assert_string_equal(fh_s(m, "sender.id"), "mycreate");
    assert_string_equal(fh_s(m, "recipient.id"), CORP);
    assert_string_equal(fh_s(m, "idem"), "4561255354251345929");
    assert_int_equal(fh_i(m, "channel_data.AgentID"), 218);
    assert_int_equal(fh_i(m, "ts.channel"), 1409659813000LL);
    assert_string_equal(fh_s(m, "raw.ctype"), "application/xml");
    assert_true(strncmp(fh_s(m, "raw.body"), "<xml><ToUserName>", 17) == 0);
    assert_false(fh_has(m, "deadline"));
    fh_free(m);
    wx_req_free(&r);
}

static void event_check(const char *ev_xml, int variant, const char *name, const char *key,
                        const char *idem, struct kfg_msg **out)
{
    struct wx_info info;
    struct kfg_msg *m = build(ev_xml, variant, &info);
    assert_string_equal(m->type, "event");
    assert_true(info.is_event);
    assert_string_equal(m->p[0].kind, "event");
    assert_string_equal(fh_ps(m, 0, "name"), name);
    assert_string_equal(fh_ps(m, 0, "key"), key);
    assert_string_equal(fh_s(m, "idem"), idem);
    assert_false(fh_has(m, "channel_msg_id"));
    *out = m;
}

static void test_map_events(void **st)
{
    (void)st;
    struct kfg_msg *m;
    event_check(HDR("event") "<Event><![CDATA[subscribe]]></Event></xml>", WX_MP, "subscribe", "",
                "oUser1:1700000000:subscribe:", &m);
    common(m, "event");
    fh_free(m);
    event_check(HDR("event") "<Event><![CDATA[subscribe]]></Event><EventKey><![CDATA[qrscene_123"
                "]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket></xml>",
                WX_MP, "subscribe", "123", "oUser1:1700000000:subscribe:qrscene_123", &m);
    assert_string_equal(fh_ps(m, 0, "value.scene"), "123");
    assert_string_equal(fh_ps(m, 0, "value.ticket"), "TICKET");
    fh_free(m);
    event_check(HDR("event") "<Event>unsubscribe</Event></xml>", WX_MP, "unsubscribe", "",
                "oUser1:1700000000:unsubscribe:", &m);
    fh_free(m);
    event_check(HDR("event") "<Event>SCAN</Event><EventKey>123</EventKey><Ticket>T</Ticket></xml>",
                WX_MP, "scan", "123", "oUser1:1700000000:SCAN:123", &m);
    assert_string_equal(fh_ps(m, 0, "value.scene"), "123");
    fh_free(m);
    event_check(HDR("event") "<Event>LOCATION</Event><Latitude>23.137466</Latitude>"
                "<Longitude>113.352425</Longitude><Precision>119.385040</Precision></xml>",
                WX_MP, "location", "", "oUser1:1700000000:LOCATION:", &m);
    assert_string_equal(fh_ps(m, 0, "value.precision"), "119.385040");
    assert_int_equal(m->np, 2);
    assert_string_equal(m->p[1].kind, "location");
    fh_free(m);
    event_check(HDR("event") "<Event>CLICK</Event><EventKey>V1001_TODAY</EventKey></xml>", WX_MP,
                "menu_click", "V1001_TODAY", "oUser1:1700000000:CLICK:V1001_TODAY", &m);
    fh_free(m);
    /* case-insensitive event names */
    event_check(HDR("event") "<Event>click</Event><EventKey>K</EventKey></xml>", WX_MP,
                "menu_click", "K", "oUser1:1700000000:click:K", &m);
    fh_free(m);
    event_check(HDR("event") "<Event>VIEW</Event><EventKey>http://a.b/c?x=1:2</EventKey>"
                "<MenuId>7</MenuId></xml>",
                WX_MP, "menu_view", "http://a.b/c?x=1:2",
                "oUser1:1700000000:VIEW:http%3A//a.b/c?x=1%3A2", &m);
    assert_string_equal(fh_ps(m, 0, "value.menu_id"), "7");
    fh_free(m);
    event_check(HDR("event") "<Event>TEMPLATESENDJOBFINISH</Event><MsgID>200163836</MsgID>"
                "<Status><![CDATA[failed:user block]]></Status></xml>",
                WX_MP, "template_send_job_finish", "200163836",
                "oUser1:1700000000:TEMPLATESENDJOBFINISH:", &m);
    assert_string_equal(fh_ps(m, 0, "value.status"), "failed:user block");
    fh_free(m);
    /* WeCom: AgentID joins the key */
    event_check(HDR("event") "<Event>click</Event><EventKey>K</EventKey><AgentID>1000002</AgentID>"
                "</xml>", WX_WECOM, "menu_click", "K", "oUser1:1700000000:click:K:1000002", &m);
    assert_int_equal(fh_i(m, "channel_data.AgentID"), 1000002);
    fh_free(m);
    /* kf_msg_or_event: no FromUserName */
    struct wx_info info;
    m = build("<xml><ToUserName><![CDATA[ww12345678910]]></ToUserName><CreateTime>1348831860"
              "</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]>"
              "</Event><Token><![CDATA[ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR]]></Token>"
              "<OpenKfId><![CDATA[wkxxxxxxx]]></OpenKfId></xml>", WX_WECOM, &info);
    assert_string_equal(fh_ps(m, 0, "name"), "kf_msg_or_event");
    assert_string_equal(fh_ps(m, 0, "value.open_kfid"), "wkxxxxxxx");
    assert_string_equal(fh_ps(m, 0, "value.token"), "ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR");
    assert_string_equal(fh_s(m, "conversation.id"), "wkxxxxxxx");
    assert_string_equal(fh_s(m, "sender.role"), "system");
    assert_string_equal(fh_s(m, "idem"),
                        "wkxxxxxxx:1348831860:kf_msg_or_event:"
                        "ENCApHxnGDNAVNY4AaSJKj4Tb5mwsEMzxhFmHVGcra996NR:");
    assert_string_equal(info.from, "");
    fh_free(m);
}

static void test_map_unknown(void **st)
{
    (void)st;
    struct wx_info info;
    const char *file = HDR("file") "<Title>a.pdf</Title><MsgId>99</MsgId></xml>";
    struct kfg_msg *m = build(file, WX_MP, &info);
    assert_string_equal(m->type, "event");
    assert_true(info.unknown);
    assert_int_equal(m->np, 1);
    assert_string_equal(fh_ps(m, 0, "name"), "wechat_unknown");
    assert_string_equal(fh_ps(m, 0, "key"), "file");
    assert_string_equal(fh_s(m, "raw.body"), file);
    assert_string_equal(fh_s(m, "raw.ctype"), "application/xml");
    assert_string_equal(fh_s(m, "idem"), "99");   /* MsgId wins */
    fh_free(m);
    m = build(HDR("event") "<Event>enter_agent</Event><AgentID>1</AgentID></xml>", WX_WECOM, &info);
    assert_string_equal(fh_ps(m, 0, "name"), "wechat_unknown");
    assert_string_equal(fh_ps(m, 0, "key"), "enter_agent");
    assert_string_equal(fh_ps(m, 0, "value.event"), "enter_agent");
    assert_string_equal(fh_s(m, "idem"), "oUser1:1700000000:enter_agent::1");
    fh_free(m);
    /* a known type whose fields do not fit: published as unknown, not lost */
    m = build(HDR("location") "<Location_X>999</Location_X><Location_Y>1</Location_Y>"
              "<MsgId>5</MsgId></xml>", WX_MP, &info);
    assert_string_equal(fh_ps(m, 0, "name"), "wechat_unknown");
    assert_string_equal(fh_s(m, "idem"), "5");
    fh_free(m);
    m = build(HDR("text") "<MsgId>6</MsgId></xml>", WX_MP, &info);
    assert_string_equal(fh_ps(m, 0, "name"), "wechat_unknown");
    fh_free(m);
    /* no MsgType / no sender: refused */
    struct wx_xml x;
    struct kfg_msg *none;
    struct wx_build_opts o = {0};
    assert_int_equal(wx_xml_parse(S("<xml><FromUserName>a</FromUserName></xml>"), &x), WX_OK);
    assert_int_equal(wx_build_msg(&fake_host, NULL, &x, "", 0, &o, &none, &info), KFG_EINVAL);
    assert_null(none);
    wx_xml_free(&x);
    assert_int_equal(wx_xml_parse(S("<xml><MsgType>text</MsgType><Content>a</Content></xml>"), &x),
                     WX_OK);
    assert_int_equal(wx_build_msg(&fake_host, NULL, &x, "", 0, &o, &none, &info), KFG_EINVAL);
    wx_xml_free(&x);
    assert_int_equal(fh_live, 0);
}

/* ---- passive replies ---------------------------------------------------------- */

static struct kfg_msg *outbound(const char *kind)
{
    struct kfg_msg *m = fh_new(NULL, "message");
    fh_set(m, "conversation.id", S("oUser1"));
    fh_set(m, "reply_to", S("018f3e5c-8a2b-7c00-8000-0123456789ab"));
    fh_part_add(m, kind);
    return m;
}

static void test_reply_xml(void **st)
{
    (void)st;
    struct wx_info info = {0};
    strcpy(info.from, "oUser1");
    strcpy(info.to, "gh_1");
    struct kfg_msg *m = outbound("text");
    fh_part_set(m, 0, "text", S("echo: a]]>b"));
    struct wx_buf b = {0};
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1700000001, &b), KFG_OK);
    struct wx_xml x;
    assert_int_equal(wx_xml_parse(b.p, b.len, &x), WX_OK);
    assert_string_equal(wx_xml_get(&x, "ToUserName")->val, "oUser1");
    assert_string_equal(wx_xml_get(&x, "FromUserName")->val, "gh_1");
    assert_string_equal(wx_xml_get(&x, "CreateTime")->val, "1700000001");
    assert_string_equal(wx_xml_get(&x, "MsgType")->val, "text");
    assert_string_equal(wx_xml_get(&x, "Content")->val, "echo: a]]>b");
    wx_xml_free(&x);

    /* encrypted: a valid envelope that decrypts to the same XML */
    struct wx_buf e = {0};
    assert_int_equal(wx_reply_encrypt(&mp, b.p, b.len, 1700000001, &e), WX_OK);
    assert_int_equal(wx_xml_parse(e.p, e.len, &x), WX_OK);
    const struct wx_field *enc = wx_xml_get(&x, "Encrypt"), *sig = wx_xml_get(&x, "MsgSignature"),
                          *ts = wx_xml_get(&x, "TimeStamp"), *nonce = wx_xml_get(&x, "Nonce");
    assert_non_null(enc);
    assert_string_equal(ts->val, "1700000001");
    assert_int_equal(wx_signature_check(S(MP_TOKEN), ts->val, ts->len, nonce->val, nonce->len,
                                        enc->val, enc->len, sig->val, sig->len),
                     WX_OK);
    unsigned char *pb;
    size_t off, n;
    assert_int_equal(wx_decrypt(mp.key, enc->val, enc->len, S(MP_APPID), &pb, &off, &n), WX_OK);
    assert_int_equal(n, b.len);
    assert_memory_equal(pb + off, b.p, n);
    free(pb);
    wx_xml_free(&x);
    wx_buf_free(&e);
    wx_buf_free(&b);
    fh_free(m);

    m = outbound("image");
    fh_part_set(m, 0, "media_id", S("M1"));
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1, &b), KFG_OK);
    assert_non_null(strstr(b.p, "<Image><MediaId><![CDATA[M1]]></MediaId></Image>"));
    wx_buf_free(&b);
    fh_free(m);
    m = outbound("image");
    fh_part_set(m, 0, "url", S("https://x"));
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1, &b), KFG_EINVAL);
    wx_buf_free(&b);
    fh_free(m);
    m = outbound("link");
    fh_part_set(m, 0, "url", S("https://x"));
    fh_part_set(m, 0, "title", S("T"));
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1, &b), KFG_OK);
    assert_non_null(strstr(b.p, "<ArticleCount>1</ArticleCount><Articles><item><Title>"));
    wx_buf_free(&b);
    fh_part_add(m, "link");
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1, &b), KFG_EINVAL);
    wx_buf_free(&b);
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_WECOM, &info, 1, &b), KFG_OK);
    assert_non_null(strstr(b.p, "<ArticleCount>2</ArticleCount>"));
    wx_buf_free(&b);
    fh_free(m);
    /* music (MP): every field of §6 in its place; HQMusicUrl defaults to
     * the url; ThumbMediaId and a url are required; not on WeCom */
    m = outbound(WX_KIND_MUSIC);
    fh_part_set(m, 0, "title", S("Song"));
    fh_part_set(m, 0, "description", S("a & b"));
    fh_part_set(m, 0, "url", S("http://m/x.mp3"));
    fh_part_set(m, 0, "thumb_media_id", S("TH1"));
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1700000002, &b), KFG_OK);
    assert_int_equal(wx_xml_parse(b.p, b.len, &x), WX_OK);
    assert_string_equal(wx_xml_get(&x, "MsgType")->val, "music");
    assert_string_equal(wx_xml_get(&x, "ToUserName")->val, "oUser1");
    assert_non_null(strstr(b.p, "<Music><Title><![CDATA[Song]]></Title><Description><![CDATA["
                                "a & b]]></Description><MusicUrl><![CDATA[http://m/x.mp3]]>"
                                "</MusicUrl><HQMusicUrl><![CDATA[http://m/x.mp3]]></HQMusicUrl>"
                                "<ThumbMediaId><![CDATA[TH1]]></ThumbMediaId></Music></xml>"));
    wx_xml_free(&x);
    wx_buf_free(&b);
    fh_part_set(m, 0, "hq_url", S("http://m/hq.mp3"));
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1, &b), KFG_OK);
    assert_non_null(strstr(b.p, "<HQMusicUrl><![CDATA[http://m/hq.mp3]]></HQMusicUrl>"));
    wx_buf_free(&b);
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_WECOM, &info, 1, &b), KFG_EINVAL);
    wx_buf_free(&b);
    fh_free(m);
    m = outbound(WX_KIND_MUSIC);
    fh_part_set(m, 0, "url", S("http://m/x.mp3"));
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1, &b), KFG_EINVAL);
    wx_buf_free(&b);
    fh_free(m);
    m = outbound(WX_KIND_MUSIC);
    fh_part_set(m, 0, "thumb_media_id", S("TH1"));
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1, &b), KFG_EINVAL);
    wx_buf_free(&b);
    fh_free(m);
    /* voice and video by media id */
    m = outbound("voice");
    fh_part_set(m, 0, "media_id", S("V1"));
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_WECOM, &info, 1, &b), KFG_OK);
    assert_non_null(strstr(b.p, "<MsgType><![CDATA[voice]]></MsgType><Voice><MediaId><![CDATA["
                                "V1]]></MediaId></Voice></xml>"));
    wx_buf_free(&b);
    fh_free(m);
    m = outbound("video");
    fh_part_set(m, 0, "media_id", S("VID"));
    fh_part_set(m, 0, "title", S("T"));
    fh_part_set(m, 0, "description", S("D"));
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1, &b), KFG_OK);
    assert_non_null(strstr(b.p, "<Video><MediaId><![CDATA[VID]]></MediaId><Title><![CDATA[T]]>"
                                "</Title><Description><![CDATA[D]]></Description></Video></xml>"));
    wx_buf_free(&b);
    fh_free(m);
    m = outbound("event");
    fh_part_set(m, 0, "name", S("transfer_customer_service"));
    fh_part_set(m, 0, "key", S("kf2001@gh_1"));
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1, &b), KFG_OK);
    assert_non_null(strstr(b.p, "<MsgType><![CDATA[transfer_customer_service]]></MsgType>"
                                "<TransInfo><KfAccount><![CDATA[kf2001@gh_1]]></KfAccount>"));
    wx_buf_free(&b);
    fh_free(m);
    m = outbound("text");
    fh_part_add(m, "image");
    assert_int_equal(wx_reply_xml(&fake_host, m, WX_MP, &info, 1, &b), KFG_EINVAL);
    wx_buf_free(&b);
    fh_free(m);
    assert_int_equal(fh_live, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wecom_verify_official),
        cmocka_unit_test(test_mp_verify),
        cmocka_unit_test(test_wecom_post_official),
        cmocka_unit_test(test_mp_modes),
        cmocka_unit_test(test_map_messages),
        cmocka_unit_test(test_map_wecom_official),
        cmocka_unit_test(test_map_events),
        cmocka_unit_test(test_map_unknown),
        cmocka_unit_test(test_reply_xml),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
