/*
 * libFuzzer harness over the SOAP request pipeline (soap_process: parser,
 * limits, header blocks, WS-Security, dispatch, kfgate's operations and the
 * XPath-mapped CreateTicket operation) and over the parser of outbound
 * answers (soap_reply_parse).
 *
 * Input: byte 0 picks the Content-Type and the auth mode, then the body.
 * A token in the input is checked against fixed users, so a fuzzer that
 * finds a valid digest (it will not) would still be fine.
 */
#include "test_sink.h"

#include <libxml/parser.h>

#define TNS "urn:example:legacy:tickets:2009"

static struct soap_user users[] = { { "alice", "wonderland", 5, 10 } };
static struct soap_map map;
static struct soap_cfg cfg;

static void silent(void *ctx, const char *msg, ...)
{
    (void)ctx;
    (void)msg;
}

static void init_once(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    xmlInitParser();
    xmlSetGenericErrorFunc(NULL, silent);
    char why[256];
    map.x_conv = map.x_sender = map.x_text = map.x_event = map.x_idem = -1;
    if (soap_map_add_ns(&map, "t=" TNS, why, sizeof why) ||
        soap_map_set_op(&map, "t:CreateTicket", why, sizeof why) ||
        soap_map_add_expr(&map, "c", "t:Customer/t:Number", &map.x_conv, why, sizeof why) ||
        soap_map_add_expr(&map, "s", "string(t:Customer/t:Number)", &map.x_sender, why,
                          sizeof why) ||
        soap_map_add_expr(&map, "t", "concat(t:Subject, ': ', t:Description)", &map.x_text, why,
                          sizeof why) ||
        soap_map_add_expr(&map, "i", "@externalRef", &map.x_idem, why, sizeof why) ||
        soap_map_add_field(&map, "sender.name=t:Customer/t:Name", why, sizeof why) ||
        soap_map_add_field(&map, "channel_data.n=count(//*)", why, sizeof why))
        abort();
    map.type = "message";
    map.response = strdup("<t:R xmlns:t='" TNS "'>{id}</t:R>");
    if (soap_map_finish(&map, why, sizeof why))
        abort();
    cfg.lim = (struct soap_limits){ 65536, 32, 2000, 4096 };
    cfg.sec = (struct soap_sec){ SOAP_AUTH_NONE, users, 1, 1, 0, 300, soap_nonces_new(1024) };
    cfg.map = &map;
    cfg.native = 1;
    cfg.pool = soap_pool_new();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init_once();
    if (size < 1)
        return 0;
    static const char *const ctypes[] = {
        "text/xml; charset=utf-8", "application/soap+xml; charset=utf-8",
        "application/soap+xml; action=\"urn:kfgate:soap:1/PushMessage\"", "text/plain",
    };
    unsigned sel = data[0];
    const char *ct = ctypes[sel & 3];
    cfg.sec.mode = (int)((sel >> 2) % 5);
    struct soap_in in = {
        .body = (const char *)data + 1, .len = size - 1,
        .ctype = { ct, strlen(ct) },
        .soapaction = { "\"urn:kfgate:soap:1/PushMessage\"", (sel & 32) ? 31u : 0u },
        .authz = { "Basic YWxpY2U6d29uZGVybGFuZA==", (sel & 64) ? 30u : 0u },
        .now_ms = 1796230800000LL,
        .msg_id = "01a237b2-e280-7000-8000-000000000001",
    };
    if (!(sel & 32))
        in.soapaction.ptr = NULL;
    if (!(sel & 64))
        in.authz.ptr = NULL;
    struct ts t;
    memset(&t, 0, sizeof t);
    struct kfg_msg_sink s = ts_sink(&t);
    struct soap_out out;
    soap_process(&cfg, &in, &s, &out);
    if (out.fault.http) {
        struct soap_buf b = { 0 };
        soap_fault_xml(&b, out.version, &out.fault, "fuzz");
        sb_free(&b);
    }
    ts_reset(&t);
    struct soap_reply r;
    soap_reply_parse(cfg.pool, (const char *)data + 1, size - 1, &r);
    return 0;
}
