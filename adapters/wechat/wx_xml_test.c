/* cmocka tests of wx_xml.c: field extraction, CDATA, entities, and the
 * refusals (DOCTYPE, XXE, duplicates, wrong root). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "wx_crypto.h"
#include "wx_xml.h"

#define S(x) x, strlen(x)

static int setup(void **st)
{
    (void)st;
    wx_xml_init();
    return 0;
}

static void expect_field(const struct wx_xml *x, const char *name, const char *val)
{
    const struct wx_field *f = wx_xml_get(x, name);
    assert_non_null(f);
    assert_int_equal(f->len, strlen(val));
    assert_memory_equal(f->val, val, f->len);
}

/* The official WeCom sample plaintext: no CDATA on numbers, newlines. */
static void test_official_plaintext(void **st)
{
    (void)st;
    const char *doc = "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n"
                      "<FromUserName><![CDATA[mycreate]]></FromUserName>\n"
                      "<CreateTime>1409659813</CreateTime>\n"
                      "<MsgType><![CDATA[text]]></MsgType>\n"
                      "<Content><![CDATA[hello]]></Content>\n"
                      "<MsgId>4561255354251345929</MsgId>\n"
                      "<AgentID>218</AgentID>\n"
                      "</xml>";
    struct wx_xml x;
    assert_int_equal(wx_xml_parse(S(doc), &x), WX_OK);
    assert_int_equal(x.n, 7);
    expect_field(&x, "ToUserName", "wx5823bf96d3bd56c7");
    expect_field(&x, "FromUserName", "mycreate");
    expect_field(&x, "CreateTime", "1409659813");
    expect_field(&x, "Content", "hello");
    expect_field(&x, "MsgId", "4561255354251345929");
    expect_field(&x, "AgentID", "218");
    assert_null(wx_xml_get(&x, "Encrypt"));
    wx_xml_free(&x);
}

static void test_cdata_and_entities(void **st)
{
    (void)st;
    const char *doc =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
        "<xml><Content><![CDATA[a]]]]><![CDATA[>b]]></Content>"
        "<Plain>x &amp; y &lt;z&gt; &#20320;&#x597d;</Plain>"
        "<Mixed> pre <![CDATA[<in>]]> post </Mixed>"
        "<MsgType>  <![CDATA[video]]></MsgType>"
        "<Empty/><Articles><item><Title>t</Title></item></Articles>"
        "<Utf8>\xe4\xbd\xa0\xe5\xa5\xbd</Utf8></xml>";
    struct wx_xml x;
    assert_int_equal(wx_xml_parse(S(doc), &x), WX_OK);
    expect_field(&x, "Content", "a]]>b");
    expect_field(&x, "Plain", "x & y <z> \xe4\xbd\xa0\xe5\xa5\xbd");
    expect_field(&x, "Mixed", " pre <in> post ");
    expect_field(&x, "Empty", "");
    expect_field(&x, "Articles", "");
    expect_field(&x, "Utf8", "\xe4\xbd\xa0\xe5\xa5\xbd");
    const char *p;
    size_t n;
    assert_int_equal(wx_xml_get_trim(&x, "MsgType", &p, &n), 1);
    assert_int_equal(n, 5);
    assert_memory_equal(p, "video", 5);
    assert_int_equal(wx_xml_get_trim(&x, "Nope", &p, &n), 0);
    wx_xml_free(&x);
}

static void expect_refused(const char *doc)
{
    struct wx_xml x;
    assert_int_equal(wx_xml_parse(S(doc), &x), WX_PARSE_XML);
    assert_int_equal(x.n, 0);
    assert_null(x.heap);
    wx_xml_free(&x);
}

static void test_refusals(void **st)
{
    (void)st;
    /* XXE in every spelling of DOCTYPE */
    expect_refused("<?xml version=\"1.0\"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "
                   "\"file:///etc/passwd\">]><xml><Content>&xxe;</Content></xml>");
    expect_refused("<!doctype xml><xml><A>1</A></xml>");
    expect_refused("<!DocType xml SYSTEM \"http://127.0.0.1/x.dtd\"><xml><A>1</A></xml>");
    expect_refused("<!DOCTYPE xml [<!ENTITY a \"aaaaaaaa\"><!ENTITY b \"&a;&a;&a;&a;\">]>"
                   "<xml><A>&b;</A></xml>");
    /* found by its '!' wherever it is, even inside CDATA text */
    expect_refused("<xml><A><![CDATA[x<!DOCTYPE]]></A></xml>");
    expect_refused("<xml><A>1</A></xml><!dOcTyPe");
    /* '!' elsewhere, "<!" without doctype, a cut-off spelling: parsed */
    struct wx_xml bang;
    assert_int_equal(wx_xml_parse(S("<xml><A><![CDATA[wow!! <!doc !doctype]]></A></xml>"),
                                  &bang), WX_OK);
    assert_string_equal(wx_xml_get(&bang, "A")->val, "wow!! <!doc !doctype");
    wx_xml_free(&bang);
    assert_int_equal(wx_xml_parse(S("<xml><A><![CDATA[<!doctyp]]></A></xml>"), &bang), WX_OK);
    wx_xml_free(&bang);
    /* an entity that was never declared */
    expect_refused("<xml><Content>&xxe;</Content></xml>");
    /* wrong root, namespaced root, not XML, truncated, two roots, empty */
    expect_refused("<root><A>1</A></root>");
    expect_refused("<x:xml xmlns:x=\"urn:x\"><A>1</A></x:xml>");
    expect_refused("success");
    expect_refused("<xml><A>1</A>");
    expect_refused("<xml/><xml/>");
    expect_refused("");
    /* ambiguous: a field twice */
    expect_refused("<xml><MsgId>1</MsgId><MsgId>2</MsgId></xml>");
    /* NUL in the middle */
    struct wx_xml x;
    assert_int_equal(wx_xml_parse("<xml><A>1\0</A></xml>", 20, &x), WX_PARSE_XML);
    wx_xml_free(&x);
    /* a processing instruction and comments are fine */
    assert_int_equal(wx_xml_parse(S("<?xml version=\"1.0\"?><!-- c --><xml><A>1</A></xml>"), &x),
                     WX_OK);
    expect_field(&x, "A", "1");
    wx_xml_free(&x);
}

static void test_builders(void **st)
{
    (void)st;
    struct wx_buf b = {0};
    wx_buf_elem(&b, "Content", S("a]]>b]]>"));
    assert_string_equal(b.p, "<Content><![CDATA[a]]]]><![CDATA[>b]]]]><![CDATA[>]]></Content>");
    /* and it parses back to the same text */
    struct wx_buf d = {0};
    wx_buf_puts(&d, "<xml>");
    wx_buf_put(&d, b.p, b.len);
    wx_buf_puts(&d, "</xml>");
    struct wx_xml x;
    assert_int_equal(wx_xml_parse(d.p, d.len, &x), WX_OK);
    expect_field(&x, "Content", "a]]>b]]>");
    wx_xml_free(&x);
    wx_buf_free(&b);
    wx_buf_free(&d);

    /* the encrypted reply envelope, signed over its own fields */
    assert_int_equal(wx_reply_envelope(&b, S("QDG6eK"), S("ENC+/=="), S("1409659813"),
                                       S("1372623149")),
                     WX_OK);
    assert_int_equal(wx_xml_parse(b.p, b.len, &x), WX_OK);
    expect_field(&x, "Encrypt", "ENC+/==");
    expect_field(&x, "TimeStamp", "1409659813");
    expect_field(&x, "Nonce", "1372623149");
    const struct wx_field *sig = wx_xml_get(&x, "MsgSignature");
    assert_non_null(sig);
    assert_int_equal(wx_signature_check(S("QDG6eK"), S("1409659813"), S("1372623149"),
                                        S("ENC+/=="), sig->val, sig->len),
                     WX_OK);
    assert_non_null(strstr(b.p, "<xml><Encrypt>"));
    assert_true(strstr(b.p, "<MsgSignature>") < strstr(b.p, "<TimeStamp>"));
    assert_true(strstr(b.p, "<TimeStamp>") < strstr(b.p, "<Nonce>"));
    wx_xml_free(&x);
    wx_buf_free(&b);
}

/* The scanner takes WeChat's own shapes; everything else goes to libxml2,
 * with the same answer (the fuzz harness checks that on every input). */
static void parse_both(const char *doc, size_t len, int want_slow)
{
    struct wx_xml a, b;
    assert_int_equal(wx_xml_parse(doc, len, &a), WX_OK);
    assert_int_equal(a.slow, want_slow);
    assert_int_equal(wx_xml_parse_libxml(doc, len, &b), WX_OK);
    assert_int_equal(a.n, b.n);
    for (size_t i = 0; i < a.n; i++) {
        assert_string_equal(a.f[i].name, b.f[i].name);
        assert_int_equal(a.f[i].len, b.f[i].len);
        assert_memory_equal(a.f[i].val, b.f[i].val, a.f[i].len);
    }
    wx_xml_free(&a);
    wx_xml_free(&b);
}

static void test_fast_and_slow(void **st)
{
    (void)st;
    /* fast: the official plaintext, an outer envelope, entities, empty */
    parse_both(S("<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName>\n"
                 "<CreateTime>1409659813</CreateTime>\n<AgentID>218</AgentID>\n</xml>"), 0);
    parse_both(S("<xml><ToUserName><![CDATA[gh]]></ToUserName><Encrypt><![CDATA[a+/=]]>"
                 "</Encrypt></xml>"), 0);
    parse_both(S("<xml><C>x &amp; &#20320;&#x1F600; <![CDATA[a]]]]><![CDATA[>b]]></C>"
                 "<E/><F ></F ></xml >\n"), 0);
    /* slow, same fields: declaration, comment, CR, nesting, attribute */
    parse_both(S("<?xml version=\"1.0\"?><xml><A>1</A></xml>"), 1);
    parse_both(S("<xml><!-- c --><A>1</A></xml>"), 1);
    parse_both(S("<xml><A>a\r\nb</A></xml>"), 1);
    parse_both(S("<xml><A>x<B>y</B>z</A></xml>"), 1);
    parse_both(S("<xml><A id=\"1\">v</A></xml>"), 1);
    struct wx_xml x;
    assert_int_equal(wx_xml_parse(S("<xml><A>a\r\nb\rc</A></xml>"), &x), WX_OK);
    assert_string_equal(wx_xml_get(&x, "A")->val, "a\nb\nc");   /* XML line ends */
    wx_xml_free(&x);
    /* refused by both, whichever the scanner would have said */
    static const char *const bad[] = {
        "<xml><A>a]]>b</A></xml>", "<xml><A>&#0;</A></xml>", "<xml><A>&#xD800;</A></xml>",
        "<xml><A>\xc0\xaf</A></xml>", "<xml><A>\xed\xa0\x80</A></xml>",
        "<xml><A>\xef\xbf\xbe</A></xml>", "<xml><A>\x01</A></xml>",
        "<xml><A>1</B></xml>", "<xml><A>1</A></xml>junk", "<xml><A><![CDATA[x</A></xml>",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_not_equal(wx_xml_parse_fast(S(bad[i]), &x), WX_OK);
        assert_int_equal(wx_xml_parse(S(bad[i]), &x), WX_PARSE_XML);
        wx_xml_free(&x);
    }
    /* a document bigger than the inline arena: one allocation, fast path */
    struct wx_buf d = {0};
    wx_buf_puts(&d, "<xml><Content><![CDATA[");
    for (int i = 0; i < 1000; i++)
        wx_buf_puts(&d, "0123456789");
    wx_buf_puts(&d, "]]></Content></xml>");
    assert_int_equal(wx_xml_parse(d.p, d.len, &x), WX_OK);
    assert_int_equal(x.slow, 0);
    assert_non_null(x.heap);
    assert_int_equal(wx_xml_get(&x, "Content")->len, 10000);
    wx_xml_free(&x);
    wx_buf_free(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_official_plaintext),
        cmocka_unit_test(test_cdata_and_entities),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_builders),
        cmocka_unit_test(test_fast_and_slow),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
