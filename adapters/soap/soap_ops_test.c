/* The request pipeline: dispatch, kfgate's operations, XPath mapping. */
#include "test_sink.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <libxml/parser.h>

#define E11 "http://schemas.xmlsoap.org/soap/envelope/"
#define E12 "http://www.w3.org/2003/05/soap-envelope"
#define TNS "urn:example:legacy:tickets:2009"

static struct soap_user users[] = { { "alice", "wonderland", 5, 10 } };
static struct soap_map map;
static struct soap_cfg cfg;
static struct ts sink;
static struct soap_out out;

static int setup(void **st)
{
    (void)st;
    memset(&map, 0, sizeof map);
    map.x_conv = map.x_sender = map.x_text = map.x_event = map.x_idem = -1;
    char why[256];
    assert_int_equal(soap_map_add_ns(&map, "t=" TNS, why, sizeof why), 0);
    assert_int_equal(soap_map_set_op(&map, "t:CreateTicket", why, sizeof why), 0);
    map.type = "message";
    map.action = strdup(TNS "/CreateTicket");
    map.response = strdup("<t:CreateTicketResponse xmlns:t=\"" TNS "\"><t:TicketId>{id}"
                          "</t:TicketId><t:State>{status}</t:State></t:CreateTicketResponse>");
    assert_int_equal(soap_map_add_expr(&map, "map_conversation", "t:Customer/t:Number",
                                       &map.x_conv, why, sizeof why), 0);
    assert_int_equal(soap_map_add_expr(&map, "map_sender", "t:Customer/t:Number", &map.x_sender,
                                       why, sizeof why), 0);
    assert_int_equal(soap_map_add_expr(&map, "map_text", "concat(t:Subject, ': ', t:Description)",
                                       &map.x_text, why, sizeof why), 0);
    assert_int_equal(soap_map_add_expr(&map, "map_idem", "@externalRef", &map.x_idem, why,
                                       sizeof why), 0);
    assert_int_equal(soap_map_add_field(&map, "sender.name=t:Customer/t:Name", why, sizeof why), 0);
    assert_int_equal(soap_map_add_field(&map, "channel_data.priority=t:Priority", why, sizeof why),
                     0);
    assert_int_equal(soap_map_finish(&map, why, sizeof why), 0);
    memset(&cfg, 0, sizeof cfg);
    cfg.lim = (struct soap_limits){ 65536, 32, 1000, 4096 };
    cfg.sec = (struct soap_sec){ SOAP_AUTH_NONE, users, 1, 1, 0, 300, NULL };
    cfg.map = &map;
    cfg.native = 1;
    cfg.pool = soap_pool_new();
    return 0;
}

static int teardown(void **st)
{
    (void)st;
    soap_map_free(&map);
    soap_pool_free(cfg.pool);
    ts_reset(&sink);
    return 0;
}

static void run(const char *ctype, const char *action, const char *body)
{
    ts_reset(&sink);
    struct soap_in in = { body, strlen(body), { ctype, strlen(ctype) },
                          { action, action ? strlen(action) : 0 }, { NULL, 0 },
                          1796230800000LL, "01a237b2-e280-7000-8000-000000000001" };
    if (!action)
        in.soapaction.ptr = NULL;
    struct kfg_msg_sink s = ts_sink(&sink);
    soap_process(&cfg, &in, &s, &out);
}

#define ENV11(body) "<s:Envelope xmlns:s='" E11 "'><s:Body>" body "</s:Body></s:Envelope>"
#define ENV12(body) "<s:Envelope xmlns:s='" E12 "'><s:Body>" body "</s:Body></s:Envelope>"
#define PM(inner) "<k:PushMessage xmlns:k='urn:kfgate:soap:1'>" inner "</k:PushMessage>"

static void push_message_11(void **st)
{
    (void)st;
    run("text/xml; charset=utf-8", "\"urn:kfgate:soap:1/PushMessage\"",
        ENV11(PM("<k:conversationId> c1 </k:conversationId><k:senderId>u1</k:senderId>"
                 "<k:senderName>Ann</k:senderName><k:text> hello </k:text>"
                 "<k:timestamp>2026-12-02T17:00:00Z</k:timestamp>"
                 "<k:part><k:kind>location</k:kind><k:lat>39.9</k:lat><k:lon>116</k:lon></k:part>"
                 "<k:data><k:key>crm</k:key><k:value>X9</k:value></k:data>")));
    assert_int_equal(out.fault.http, 0);
    assert_int_equal(out.version, 11);
    assert_int_equal(out.op, SOAP_OP_PUSH_MESSAGE);
    assert_true(out.built);
    assert_string_equal(sink.type, "message");
    assert_string_equal(ts_get(&sink, -1, "conversation.id"), "c1");
    assert_string_equal(ts_get(&sink, -1, "sender.id"), "u1");
    assert_string_equal(ts_get(&sink, -1, "sender.name"), "Ann");
    assert_string_equal(ts_get(&sink, -1, "ts.channel"), "1796230800000");
    assert_string_equal(ts_get(&sink, -1, "channel_data.crm"), "X9");
    assert_string_equal(ts_get(&sink, -1, "channel_data.soap_version"), "1.1");
    assert_string_equal(ts_get(&sink, -1, "channel_data.soap_operation"), "PushMessage");
    assert_string_equal(ts_get(&sink, -1, "channel_msg_id"), "01a237b2-e280-7000-8000-000000000001");
    assert_false(ts_has(&sink, -1, "idem"));
    assert_int_equal(sink.nparts, 2);
    assert_string_equal(sink.kinds[0], "text");
    assert_string_equal(ts_get(&sink, 0, "text"), " hello ");   /* text keeps its spaces */
    assert_string_equal(sink.kinds[1], "location");
    assert_string_equal(ts_get(&sink, 1, "lat"), "39.9");
}

static void push_event_12_with_message_id(void **st)
{
    (void)st;
    run("application/soap+xml; charset=utf-8; action=\"urn:kfgate:soap:1/PushEvent\"", NULL,
        "<e:Envelope xmlns:e='" E12 "' xmlns:a='" SOAP_WSA_NS "'><e:Header>"
        "<a:MessageID>urn:uuid:42%x</a:MessageID></e:Header><e:Body>"
        "<PushEvent xmlns='urn:kfgate:soap:1'><conversationId>c</conversationId>"
        "<senderId>u</senderId><name>subscribe</name><value>{\"a\":1}</value></PushEvent>"
        "</e:Body></e:Envelope>");
    assert_int_equal(out.fault.http, 0);
    assert_int_equal(out.version, 12);
    assert_int_equal(out.op, SOAP_OP_PUSH_EVENT);
    assert_string_equal(sink.type, "event");
    assert_string_equal(sink.kinds[0], "event");
    assert_string_equal(ts_get(&sink, 0, "name"), "subscribe");
    assert_string_equal(ts_get(&sink, 0, "value"), "{\"a\":1}");
    /* idem is the MessageID as one escaped component. */
    assert_string_equal(out.idem, "urn%3Auuid%3A42%25x");
    assert_string_equal(ts_get(&sink, -1, "idem"), "urn%3Auuid%3A42%25x");
    assert_string_equal(ts_get(&sink, -1, "channel_data.soap_message_id"), "urn:uuid:42%x");
}

static void expect(int http, int code, const char *sub)
{
    assert_int_equal(out.fault.http, http);
    assert_int_equal(out.fault.code, code);
    assert_string_equal(out.fault.sub, sub);
}

static void faults(void **st)
{
    (void)st;
    run("text/xml", NULL, ENV11("<k:Nope xmlns:k='urn:kfgate:soap:1'/>"));
    expect(500, SOAP_FC_CLIENT, "UnknownOperation");
    assert_non_null(strstr(out.fault.reason, "{urn:kfgate:soap:1}Nope"));
    run("text/xml", NULL, ENV11(""));
    expect(500, SOAP_FC_CLIENT, "UnknownOperation");
    run("text/xml", "\"urn:kfgate:soap:1/PushEvent\"",
        ENV11(PM("<k:conversationId>c</k:conversationId><k:senderId>u</k:senderId>"
                 "<k:text>x</k:text>")));
    expect(500, SOAP_FC_CLIENT, "ActionMismatch");
    run("text/xml", NULL, ENV11(PM("<k:senderId>u</k:senderId><k:text>x</k:text>")));
    expect(500, SOAP_FC_CLIENT, "MissingField");
    assert_non_null(strstr(out.fault.reason, "conversationId"));
    run("text/xml", NULL, ENV11(PM("<k:conversationId>c</k:conversationId><k:text>x</k:text>")));
    expect(500, SOAP_FC_CLIENT, "MissingField");
    assert_non_null(strstr(out.fault.reason, "senderId"));
    run("text/xml", NULL, ENV11(PM("<k:conversationId>c</k:conversationId><k:senderId>u"
                                   "</k:senderId>")));
    expect(500, SOAP_FC_CLIENT, "MissingField");
    run("text/xml", NULL, ENV11(PM("<k:conversationId>c</k:conversationId><k:senderId>u"
                                   "</k:senderId><k:txt>x</k:txt>")));
    expect(500, SOAP_FC_CLIENT, "InvalidField");
    assert_non_null(strstr(out.fault.reason, "<txt>"));
    run("text/xml", NULL, ENV11(PM("<k:conversationId>c</k:conversationId><k:senderId>u"
                                   "</k:senderId><k:part><k:kind>image</k:kind></k:part>")));
    expect(500, SOAP_FC_CLIENT, "MissingField");
    assert_non_null(strstr(out.fault.reason, "part[0]"));
    run("text/xml", NULL, ENV11(PM("<k:conversationId>c</k:conversationId><k:senderId>u"
                                   "</k:senderId><k:part><k:kind>location</k:kind><k:lat>91"
                                   "</k:lat><k:lon>0</k:lon></k:part>")));
    expect(500, SOAP_FC_CLIENT, "InvalidField");
    /* Content types. */
    run("application/json", NULL, ENV11(""));
    expect(500, SOAP_FC_CLIENT, "UnsupportedMediaType");   /* SOAP, wrong type */
    run("application/soap+xml", NULL, ENV11(""));
    expect(500, SOAP_FC_CLIENT, "UnsupportedMediaType");
    assert_int_equal(out.version, 11);   /* answered in the envelope's version */
    run("text/xml", NULL, "<notsoap/>");
    expect(400, SOAP_FC_CLIENT, "NotSoap");
    run("application/json", NULL, "{\"a\":1}");
    expect(400, SOAP_FC_CLIENT, "UnsupportedMediaType");   /* not SOAP at all */
    run("text/xml; charset=latin1", NULL, ENV11(""));
    expect(400, SOAP_FC_CLIENT, "UnsupportedMediaType");
    run("application/soap+xml", NULL, "<a>");
    expect(400, SOAP_FC_CLIENT, "MalformedXml");
    assert_int_equal(out.version, 12);
}

static void auth_required(void **st)
{
    (void)st;
    cfg.sec.mode = SOAP_AUTH_WSSE;
    run("text/xml", NULL, ENV11(PM("<k:conversationId>c</k:conversationId><k:text>x</k:text>")));
    expect(500, SOAP_FC_CLIENT, "AuthenticationRequired");
    assert_false(sink.begun);
    run("text/xml", NULL,
        "<s:Envelope xmlns:s='" E11 "' xmlns:w='" SOAP_WSSE_NS "'><s:Header><w:Security>"
        "<w:UsernameToken><w:Username>alice</w:Username><w:Password>wonderland</w:Password>"
        "</w:UsernameToken></w:Security></s:Header><s:Body>"
        PM("<k:conversationId>c</k:conversationId><k:text>x</k:text>") "</s:Body></s:Envelope>");
    assert_int_equal(out.fault.http, 0);
    /* The sender defaults to the authenticated user. */
    assert_string_equal(ts_get(&sink, -1, "sender.id"), "alice");
    assert_string_equal(ts_get(&sink, -1, "channel_data.soap_principal"), "alice");
    cfg.sec.mode = SOAP_AUTH_NONE;
}

static void get_status(void **st)
{
    (void)st;
    run("text/xml", "\"urn:kfgate:soap:1/GetMessageStatus\"",
        ENV11("<k:GetMessageStatus xmlns:k='urn:kfgate:soap:1'><k:messageId> abc </k:messageId>"
              "</k:GetMessageStatus>"));
    assert_int_equal(out.fault.http, 0);
    assert_int_equal(out.op, SOAP_OP_GET_STATUS);
    assert_false(out.built);
    assert_string_equal(out.query, "abc");
}

#define TICKET(attrs, inner)                                                           \
    ENV11("<t:CreateTicket xmlns:t='" TNS "' " attrs ">" inner "</t:CreateTicket>")

static void mapped_create_ticket(void **st)
{
    (void)st;
    run("text/xml", "\"" TNS "/CreateTicket\"",
        TICKET("externalRef='REF:1'", "<t:Customer><t:Number>C-1001</t:Number><t:Name>Ann</t:Name>"
               "</t:Customer><t:Subject>Printer</t:Subject><t:Description>on fire"
               "</t:Description><t:Priority> high </t:Priority>"));
    assert_int_equal(out.fault.http, 0);
    assert_int_equal(out.op, SOAP_OP_MAPPED);
    assert_string_equal(ts_get(&sink, -1, "conversation.id"), "C-1001");
    assert_string_equal(ts_get(&sink, -1, "sender.id"), "C-1001");
    assert_string_equal(ts_get(&sink, -1, "sender.name"), "Ann");
    assert_string_equal(ts_get(&sink, -1, "channel_data.priority"), "high");
    assert_string_equal(ts_get(&sink, 0, "text"), "Printer: on fire");
    assert_string_equal(out.idem, "REF%3A1");
    /* Other prefixes, optional field absent. */
    run("text/xml", NULL,
        ENV11("<CreateTicket xmlns='" TNS "'><Customer><Number>C-2</Number></Customer>"
              "<Subject>S</Subject></CreateTicket>"));
    assert_int_equal(out.fault.http, 0);
    assert_false(ts_has(&sink, -1, "channel_data.priority"));
    assert_false(ts_has(&sink, -1, "idem"));
    run("text/xml", NULL, TICKET("", "<t:Subject>S</t:Subject>"));
    expect(500, SOAP_FC_CLIENT, "MissingField");
    assert_non_null(strstr(out.fault.reason, "map_conversation"));
    run("text/xml", "\"urn:other\"", TICKET("", "<t:Subject>S</t:Subject>"));
    expect(500, SOAP_FC_CLIENT, "ActionMismatch");
    /* The element in another namespace is not the mapped operation. */
    run("text/xml", NULL, ENV11("<CreateTicket xmlns='urn:other'/>"));
    expect(500, SOAP_FC_CLIENT, "UnknownOperation");
}

static void map_config_errors(void **st)
{
    (void)st;
    struct soap_map m;
    memset(&m, 0, sizeof m);
    m.x_conv = m.x_sender = m.x_text = m.x_event = m.x_idem = -1;
    char why[256];
    assert_int_equal(soap_map_add_ns(&m, "1bad=urn:x", why, sizeof why), -1);
    assert_int_equal(soap_map_add_ns(&m, "noequals", why, sizeof why), -1);
    assert_int_equal(soap_map_add_ns(&m, "t=urn:x", why, sizeof why), 0);
    assert_int_equal(soap_map_set_op(&m, "u:Op", why, sizeof why), -1);
    assert_non_null(strstr(why, "prefix not declared"));
    assert_int_equal(soap_map_set_op(&m, "t:Op", why, sizeof why), 0);
    assert_int_equal(soap_map_add_field(&m, "id=t:x", why, sizeof why), -1);
    assert_int_equal(soap_map_add_expr(&m, "map_conversation", "u:Customer", &m.x_conv, why,
                                       sizeof why), 0);
    assert_int_equal(soap_map_add_expr(&m, "map_sender", "t:A", &m.x_sender, why, sizeof why), 0);
    assert_int_equal(soap_map_add_expr(&m, "map_text", "t:B", &m.x_text, why, sizeof why), 0);
    m.response = strdup("<t:R xmlns:t='urn:x'>{id}</t:R>");
    m.type = "message";
    /* An undeclared prefix is found at init, not on the first request. */
    assert_int_equal(soap_map_finish(&m, why, sizeof why), -1);
    assert_non_null(strstr(why, "u:Customer"));
    soap_map_free(&m);
    m.x_conv = m.x_sender = m.x_text = -1;
    assert_int_equal(soap_map_add_ns(&m, "t=urn:x", why, sizeof why), 0);
    assert_int_equal(soap_map_set_op(&m, "t:Op", why, sizeof why), 0);
    assert_int_equal(soap_map_add_expr(&m, "c", "t:A[", &m.x_conv, why, sizeof why), 0);
    assert_int_equal(soap_map_add_expr(&m, "s", "t:A", &m.x_sender, why, sizeof why), 0);
    assert_int_equal(soap_map_add_expr(&m, "t", "t:A", &m.x_text, why, sizeof why), 0);
    m.response = strdup("<ok/>");
    assert_int_equal(soap_map_finish(&m, why, sizeof why), -1);
    assert_non_null(strstr(why, "does not compile"));
    soap_map_free(&m);
    m.x_conv = m.x_sender = m.x_text = -1;
    assert_int_equal(soap_map_add_ns(&m, "t=urn:x", why, sizeof why), 0);
    assert_int_equal(soap_map_set_op(&m, "t:Op", why, sizeof why), 0);
    assert_int_equal(soap_map_add_expr(&m, "c", "t:A", &m.x_conv, why, sizeof why), 0);
    assert_int_equal(soap_map_add_expr(&m, "s", "t:A", &m.x_sender, why, sizeof why), 0);
    assert_int_equal(soap_map_add_expr(&m, "t", "t:A", &m.x_text, why, sizeof why), 0);
    m.response = strdup("<a><b></a>");
    assert_int_equal(soap_map_finish(&m, why, sizeof why), -1);
    assert_non_null(strstr(why, "map_response"));
    soap_map_free(&m);
}

static void template(void **st)
{
    (void)st;
    struct soap_buf b = { 0 };
    struct soap_vals v = { "i<1>", "e&", "3", "accepted", NULL };
    soap_template(&b, "<r a='{id}'>{envelope_id}{seq}{status}{idem}{unknown}{</r>", &v);
    assert_string_equal(b.p, "<r a='i&lt;1&gt;'>e&amp;3accepted{unknown}{</r>");
    sb_free(&b);
}

static void sink_failure_is_server_fault(void **st)
{
    (void)st;
    /* Eight sink calls for this message: each one failing is a Server fault,
     * and with none failing the message is built. */
    for (int k = 1; k <= 9; k++) {
        ts_reset(&sink);
        sink.fail_after = k;
        const char *body = ENV11(PM("<k:conversationId>c</k:conversationId><k:senderId>u"
                                    "</k:senderId><k:text>x</k:text>"));
        struct soap_in in = { body, strlen(body), { "text/xml", 8 }, { NULL, 0 }, { NULL, 0 },
                              0, "01a237b2-e280-7000-8000-000000000001" };
        struct kfg_msg_sink s = ts_sink(&sink);
        soap_process(&cfg, &in, &s, &out);
        if (k <= 8)
            expect(500, SOAP_FC_SERVER, "Internal");
        else
            assert_int_equal(out.fault.http, 0);
    }
}

int main(void)
{
    xmlInitParser();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(push_message_11), cmocka_unit_test(push_event_12_with_message_id),
        cmocka_unit_test(faults), cmocka_unit_test(auth_required), cmocka_unit_test(get_status),
        cmocka_unit_test(mapped_create_ticket), cmocka_unit_test(map_config_errors),
        cmocka_unit_test(template), cmocka_unit_test(sink_failure_is_server_fault),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    xmlCleanupParser();
    return rc;
}
