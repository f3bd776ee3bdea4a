/* Parser, envelope and fault tests (cmocka). */
#include "test_sink.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <libxml/parser.h>
#include <unistd.h>

static const struct soap_limits LIM = { 65536, 16, 200, 1024 };

#define E11 "http://schemas.xmlsoap.org/soap/envelope/"
#define E12 "http://www.w3.org/2003/05/soap-envelope"

static int parse(const char *s, struct soap_doc *d, struct soap_fault *f)
{
    memset(f, 0, sizeof *f);
    return soap_parse(NULL, &LIM, s, strlen(s), d, f);
}

static void expect_fault(const char *s, int http, int code, const char *sub)
{
    struct soap_doc d;
    struct soap_fault f;
    assert_int_equal(parse(s, &d, &f), -1);
    assert_int_equal(f.http, http);
    assert_int_equal(f.code, code);
    assert_string_equal(f.sub, sub);
    assert_true(strlen(f.reason) > 10);
    soap_doc_free(&d);
}

static void t_versions_and_prefixes(void **st)
{
    (void)st;
    struct soap_doc d;
    struct soap_fault f;
    /* 1.1 with an unusual prefix, default namespace on the operation. */
    const char *a = "<?xml version='1.0'?><x:Envelope xmlns:x='" E11 "'><x:Header/>"
                    "<x:Body><Op xmlns='urn:o'><v>1</v></Op></x:Body></x:Envelope>";
    assert_int_equal(parse(a, &d, &f), 0);
    assert_int_equal(d.version, 11);
    assert_non_null(d.op);
    assert_true(soap_is(d.op, "urn:o", "Op"));
    soap_doc_free(&d);
    /* 1.2, default namespace for the envelope itself. */
    const char *b = "<Envelope xmlns='" E12 "'><Body><o:Op xmlns:o='urn:o'/></Body></Envelope>";
    assert_int_equal(parse(b, &d, &f), 0);
    assert_int_equal(d.version, 12);
    assert_true(soap_is(d.op, "urn:o", "Op"));
    assert_null(d.header);
    soap_doc_free(&d);
}

static void t_doctype_refused_without_reading(void **st)
{
    (void)st;
    char path[] = "/tmp/soap-xxe-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char marker[] = "KFG-UNIT-XXE-MARKER-7f3a";
    assert_int_equal(write(fd, marker, sizeof marker - 1), (ssize_t)(sizeof marker - 1));
    close(fd);
    char xxe[1024];
    snprintf(xxe, sizeof xxe,
             "<?xml version='1.0'?><!DOCTYPE e [<!ENTITY x SYSTEM 'file://%s'>]>"
             "<e:Envelope xmlns:e='" E11 "'><e:Body><o:Op xmlns:o='urn:o'>&x;</o:Op></e:Body>"
             "</e:Envelope>", path);
    struct soap_doc d;
    struct soap_fault f;
    assert_int_equal(parse(xxe, &d, &f), -1);
    assert_string_equal(f.sub, "DtdNotAllowed");
    assert_int_equal(f.code, SOAP_FC_CLIENT);
    assert_null(strstr(f.reason, marker));
    assert_null(d.doc);
    soap_doc_free(&d);
    unlink(path);
    /* Any spelling, any place. */
    expect_fault("<!doctype x><x/>", 500, SOAP_FC_CLIENT, "DtdNotAllowed");
    expect_fault("<e:Envelope xmlns:e='" E11 "'><!DocType e><e:Body/></e:Envelope>", 500,
                 SOAP_FC_CLIENT, "DtdNotAllowed");
}

static void t_billion_laughs(void **st)
{
    (void)st;
    const char *lol =
        "<?xml version='1.0'?><!DOCTYPE lolz [<!ENTITY lol 'lol'>"
        "<!ENTITY lol1 '&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;'>"
        "<!ENTITY lol2 '&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;'>"
        "<!ENTITY lol3 '&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;'>]>"
        "<e:Envelope xmlns:e='" E11 "'><e:Body><o:Op xmlns:o='urn:o'>&lol3;</o:Op></e:Body>"
        "</e:Envelope>";
    expect_fault(lol, 500, SOAP_FC_CLIENT, "DtdNotAllowed");
    /* An entity reference without any DTD: the parser stops at it. */
    expect_fault("<e:Envelope xmlns:e='" E11 "'><e:Body><o:Op xmlns:o='urn:o'>&lol3;</o:Op>"
                 "</e:Body></e:Envelope>", 500, SOAP_FC_CLIENT, "DtdNotAllowed");
    /* Character references and the predefined entities are fine. */
    struct soap_doc d;
    struct soap_fault f;
    assert_int_equal(parse("<e:Envelope xmlns:e='" E11 "'><e:Body><o>&#65;&lt;</o></e:Body>"
                           "</e:Envelope>", &d, &f), 0);
    assert_memory_equal(soap_text(&d, d.op).ptr, "A<", 2);
    soap_doc_free(&d);
}

static void t_not_soap(void **st)
{
    (void)st;
    expect_fault("<a><b></a>", 400, SOAP_FC_CLIENT, "MalformedXml");
    expect_fault("not xml at all", 400, SOAP_FC_CLIENT, "MalformedXml");
    expect_fault("<Envelopes/>", 400, SOAP_FC_CLIENT, "NotSoap");
    expect_fault("\xFF\xFE<\0a\0/\0>\0", 400, SOAP_FC_CLIENT, "NotUtf8");
    expect_fault("\x4C\x6F\xA7\x94\x93@\xA5\x85", 400, SOAP_FC_CLIENT, "NotUtf8");
    /* A declared encoding is ignored: the bytes are read as UTF-8, so a
     * Latin-1 byte is not well-formed and UTF-8 text comes through as is. */
    expect_fault("<?xml version='1.0' encoding='ISO-8859-1'?><e:Envelope xmlns:e='"
                 "http://schemas.xmlsoap.org/soap/envelope/'><e:Body><o>\xE9</o></e:Body>"
                 "</e:Envelope>", 400, SOAP_FC_CLIENT, "MalformedXml");
    {
        struct soap_doc d;
        struct soap_fault f;
        assert_int_equal(parse("<?xml version='1.0' encoding='ISO-8859-1'?><e:Envelope "
                               "xmlns:e='" E11 "'><e:Body><o>\xC3\xA9</o></e:Body></e:Envelope>",
                               &d, &f), 0);
        assert_string_equal(soap_text(&d, d.op).ptr, "\xC3\xA9");
        soap_doc_free(&d);
    }
    struct soap_doc d;
    struct soap_fault f;
    assert_int_equal(soap_parse(NULL, &LIM, "", 0, &d, &f), -1);
    assert_string_equal(f.sub, "NotSoap");
}

static void t_wrong_namespace(void **st)
{
    (void)st;
    expect_fault("<e:Envelope xmlns:e='urn:not-soap'><e:Body/></e:Envelope>", 500,
                 SOAP_FC_VERSION, "VersionMismatch");
    expect_fault("<Envelope><Body/></Envelope>", 500, SOAP_FC_VERSION, "VersionMismatch");
}

static void t_envelope_structure(void **st)
{
    (void)st;
    expect_fault("<e:Envelope xmlns:e='" E11 "'/>", 500, SOAP_FC_CLIENT, "BadEnvelope");
    expect_fault("<e:Envelope xmlns:e='" E11 "'><e:Body/><e:Header/></e:Envelope>", 500,
                 SOAP_FC_CLIENT, "BadEnvelope");
    expect_fault("<e:Envelope xmlns:e='" E11 "'><e:Body><a/><b/></e:Body></e:Envelope>", 500,
                 SOAP_FC_CLIENT, "BadEnvelope");
    /* Body in the other version's namespace. */
    expect_fault("<e:Envelope xmlns:e='" E11 "' xmlns:f='" E12 "'><f:Body/></e:Envelope>", 500,
                 SOAP_FC_CLIENT, "BadEnvelope");
}

static void t_limits(void **st)
{
    (void)st;
    char deep[2048] = "<e:Envelope xmlns:e='" E11 "'><e:Body>";
    for (int i = 0; i < 20; i++)
        strcat(deep, "<a>");
    for (int i = 0; i < 20; i++)
        strcat(deep, "</a>");
    strcat(deep, "</e:Body></e:Envelope>");
    expect_fault(deep, 500, SOAP_FC_CLIENT, "TooDeep");
    char wide[8192] = "<e:Envelope xmlns:e='" E11 "'><e:Body><o>";
    for (int i = 0; i < 300; i++)
        strcat(wide, "<a/>");
    strcat(wide, "</o></e:Body></e:Envelope>");
    expect_fault(wide, 500, SOAP_FC_CLIENT, "TooManyElements");
    char big[4096] = "<e:Envelope xmlns:e='" E11 "'><e:Body><o>";
    memset(big + strlen(big), 'x', 2000);
    strcat(big, "</o></e:Body></e:Envelope>");
    expect_fault(big, 500, SOAP_FC_CLIENT, "TooLarge");
    struct soap_limits small = LIM;
    small.max_body = 10;
    struct soap_doc d;
    struct soap_fault f;
    const char *ok = "<e:Envelope xmlns:e='" E11 "'><e:Body/></e:Envelope>";
    assert_int_equal(soap_parse(NULL, &small, ok, strlen(ok), &d, &f), -1);
    assert_int_equal(f.http, 413);
}

static void t_headers(void **st)
{
    (void)st;
    struct soap_doc d;
    struct soap_fault f;
    const char *h =
        "<e:Envelope xmlns:e='" E12 "' xmlns:a='" SOAP_WSA_NS "' xmlns:s='" SOAP_WSSE_NS
        "' xmlns:u='" SOAP_WSU_NS "'><e:Header><a:MessageID> urn:uuid:1 </a:MessageID>"
        "<a:Action>urn:x</a:Action><s:Security e:mustUnderstand='true'><s:UsernameToken>"
        "<s:Username>alice</s:Username><s:Password Type='" SOAP_UTP_NS
        "#PasswordDigest'>abc=</s:Password><s:Nonce>bm9uY2U=</s:Nonce>"
        "<u:Created>2026-12-02T17:00:00Z</u:Created></s:UsernameToken></s:Security>"
        "<x:Other xmlns:x='urn:x' e:mustUnderstand='true' e:role='urn:someone-else'/>"
        "<x:Loose xmlns:x='urn:x'/></e:Header><e:Body/></e:Envelope>";
    assert_int_equal(parse(h, &d, &f), 0);
    assert_int_equal((int)d.wsa_message_id.len, 10);
    assert_memory_equal(d.wsa_message_id.ptr, "urn:uuid:1", 10);
    assert_memory_equal(d.wsa_action.ptr, "urn:x", 5);
    assert_true(d.tok.present);
    assert_true(d.tok.digest);
    assert_memory_equal(d.tok.user.ptr, "alice", 5);
    assert_memory_equal(d.tok.created.ptr, "2026-12-02T17:00:00Z", 20);
    assert_null(d.op);
    soap_doc_free(&d);
    expect_fault("<e:Envelope xmlns:e='" E11 "'><e:Header><x:H xmlns:x='urn:x' "
                 "e:mustUnderstand='1'/></e:Header><e:Body/></e:Envelope>",
                 500, SOAP_FC_MUST, "MustUnderstand");
    expect_fault("<e:Envelope xmlns:e='" E11 "' xmlns:s='" SOAP_WSSE_NS "'><e:Header>"
                 "<s:Security><s:UsernameToken><s:Username>a</s:Username><s:Password "
                 "Type='urn:other'>x</s:Password></s:UsernameToken></s:Security></e:Header>"
                 "<e:Body/></e:Envelope>", 500, SOAP_FC_CLIENT, "UnsupportedPasswordType");
}

static void t_text(void **st)
{
    (void)st;
    struct soap_doc d;
    struct soap_fault f;
    const char *s = "<e:Envelope xmlns:e='" E11 "'><e:Body><o>a<![CDATA[<b>]]>c&amp;d</o>"
                    "</e:Body></e:Envelope>";
    assert_int_equal(parse(s, &d, &f), 0);
    struct kfg_str t = soap_text(&d, d.op);
    assert_int_equal((int)t.len, 7);
    assert_memory_equal(t.ptr, "a<b>c&d", 7);
    soap_doc_free(&d);
    struct kfg_str z = soap_trim((struct kfg_str){ " \n x y\t", 7 });
    assert_int_equal((int)z.len, 3);
}

static void t_ctype(void **st)
{
    (void)st;
    struct kfg_str a;
    const char *c1 = "text/xml; charset=UTF-8";
    assert_int_equal(soap_ctype_version(c1, strlen(c1), &a), 11);
    assert_null(a.ptr);
    const char *c2 = "application/soap+xml;charset=utf-8; action=\"urn:a;b\"";
    assert_int_equal(soap_ctype_version(c2, strlen(c2), &a), 12);
    assert_int_equal((int)a.len, 7);
    assert_memory_equal(a.ptr, "urn:a;b", 7);
    const char *c3 = "Application/SOAP+XML; action=urn:x";
    assert_int_equal(soap_ctype_version(c3, strlen(c3), &a), 12);
    assert_memory_equal(a.ptr, "urn:x", 5);
    const char *c4 = "text/xml; charset=iso-8859-1";
    assert_int_equal(soap_ctype_version(c4, strlen(c4), &a), -1);
    assert_int_equal(soap_ctype_version("application/json", 16, &a), 0);
    assert_int_equal(soap_ctype_version(NULL, 0, &a), 0);
    struct kfg_str q = soap_unquote((struct kfg_str){ " \"urn:x\" ", 9 });
    assert_int_equal((int)q.len, 5);
}

static void check_fault_doc(int version, int code, const char *want_code, const char *want_sub)
{
    struct soap_fault f;
    soap_fault_set(&f, 500, code, "NonceReplayed", "reason with <markup> & \"quotes\"");
    struct soap_buf b = { 0 };
    soap_fault_xml(&b, version, &f, "req-1");
    assert_false(b.oom);
    xmlDocPtr doc = xmlReadMemory(b.p, (int)b.len, NULL, NULL, XML_PARSE_NONET);
    assert_non_null(doc);
    xmlFreeDoc(doc);
    assert_non_null(strstr(b.p, want_code));
    if (want_sub)
        assert_non_null(strstr(b.p, want_sub));
    assert_non_null(strstr(b.p, "reason with &lt;markup&gt; &amp; &quot;quotes&quot;"));
    assert_non_null(strstr(b.p, "<kfg:requestId>req-1</kfg:requestId>"));
    sb_free(&b);
}

static void t_fault_xml(void **st)
{
    (void)st;
    check_fault_doc(11, SOAP_FC_CLIENT, "<faultcode>soap:Client</faultcode>",
                    "<kfg:code>NonceReplayed</kfg:code>");
    check_fault_doc(11, SOAP_FC_SERVER, "<faultcode>soap:Server</faultcode>", NULL);
    check_fault_doc(12, SOAP_FC_CLIENT, "<env:Value>env:Sender</env:Value>",
                    "<env:Subcode><env:Value>kfg:NonceReplayed</env:Value></env:Subcode>");
    check_fault_doc(12, SOAP_FC_SERVER, "<env:Value>env:Receiver</env:Value>", NULL);
    check_fault_doc(12, SOAP_FC_VERSION, "<env:Upgrade>", "env:VersionMismatch");
}

static void t_escape(void **st)
{
    (void)st;
    struct soap_buf b = { 0 };
    sb_esc(&b, "a\x01<\r'", 5);
    assert_string_equal(b.p, "a\xEF\xBF\xBD&lt;&#13;&apos;");
    sb_free(&b);
}

static void t_reply(void **st)
{
    (void)st;
    struct soap_reply r;
    const char *f11 = "<s:Envelope xmlns:s='" E11 "'><s:Body><s:Fault><faultcode>s:Client"
                      "</faultcode><faultstring>bad ticket</faultstring></s:Fault></s:Body>"
                      "</s:Envelope>";
    assert_int_equal(soap_reply_parse(NULL, f11, strlen(f11), &r), 0);
    assert_true(r.fault);
    assert_int_equal(r.code, SOAP_FC_CLIENT);
    assert_string_equal(r.reason, "bad ticket");
    const char *f12 = "<s:Envelope xmlns:s='" E12 "'><s:Body><s:Fault><s:Code><s:Value>"
                      "s:Receiver</s:Value></s:Code><s:Reason><s:Text xml:lang='en'>down"
                      "</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>";
    assert_int_equal(soap_reply_parse(NULL, f12, strlen(f12), &r), 0);
    assert_int_equal(r.code, SOAP_FC_SERVER);
    assert_string_equal(r.faultcode, "s:Receiver");
    const char *ok = "<s:Envelope xmlns:s='" E11 "'><s:Body><x/></s:Body></s:Envelope>";
    assert_int_equal(soap_reply_parse(NULL, ok, strlen(ok), &r), 0);
    assert_false(r.fault);
    assert_int_equal(soap_reply_parse(NULL, "{}", 2, &r), -1);
}

static void t_pool(void **st)
{
    (void)st;
    struct soap_pool *p = soap_pool_new();
    const char *ok = "<e:Envelope xmlns:e='" E11 "'><e:Body><o/></e:Body></e:Envelope>";
    for (int i = 0; i < 3; i++) {
        struct soap_doc d;
        struct soap_fault f;
        /* A refused document must not poison the pooled context. */
        assert_int_equal(soap_parse(p, &LIM, "<a><b></a>", 10, &d, &f), -1);
        soap_doc_free(&d);
        assert_int_equal(soap_parse(p, &LIM, ok, strlen(ok), &d, &f), 0);
        soap_doc_free(&d);
    }
    soap_pool_free(p);
}

int main(void)
{
    xmlInitParser();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(t_versions_and_prefixes), cmocka_unit_test(t_doctype_refused_without_reading),
        cmocka_unit_test(t_billion_laughs), cmocka_unit_test(t_not_soap),
        cmocka_unit_test(t_wrong_namespace), cmocka_unit_test(t_envelope_structure),
        cmocka_unit_test(t_limits), cmocka_unit_test(t_headers), cmocka_unit_test(t_text),
        cmocka_unit_test(t_ctype), cmocka_unit_test(t_fault_xml), cmocka_unit_test(t_escape),
        cmocka_unit_test(t_reply), cmocka_unit_test(t_pool),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    xmlCleanupParser();
    return rc;
}
