"""SOAP adapter (adapters/soap, issue 6) against the real daemon, with a real
third-party SOAP client: python3-zeep, built from the WSDL the gateway
serves at {path}?wsdl, in SOAP 1.1 and SOAP 1.2.

Covered: every operation (PushMessage, PushEvent, GetMessageStatus) and the
envelope on the bus field by field; WS-Addressing MessageID as idempotency
key; every fault class (malformed XML, not SOAP, wrong envelope namespace,
unknown operation, missing field, auth failure, overload, limits,
mustUnderstand) in both versions; WS-Security UsernameToken text and digest
incl. a replayed nonce and a stale/future Created, HTTP Basic, a password
from the environment; XXE and entity-expansion payloads refused without
reading a file or the network; the XPath-mapped CreateTicket service of
config.example.toml through its own WSDL; outbound SOAP callbacks to a local
SOAP receiver that fails, stalls and succeeds, with the receipts on the bus.
"""
import base64
import concurrent.futures
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import tomllib
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import zeep
from lxml import etree
from zeep.transports import Transport
from zeep.wsse.username import UsernameToken

from conftest import ROOT, Gateway, free_port, render_config

# KFG_SOAP_SO: another build of the adapter (e.g. with ASan, see adapters/soap/README.md).
SOAP_SO = os.environ.get("KFG_SOAP_SO") or os.path.join(ROOT, "build", "plugins", "soap-adapter.so")
TAIL = os.path.join(ROOT, "build", "kfgate-tail")
SEND = os.path.join(ROOT, "build", "kfgate-send")
EXAMPLE = os.path.join(ROOT, "config.example.toml")

E11 = "http://schemas.xmlsoap.org/soap/envelope/"
E12 = "http://www.w3.org/2003/05/soap-envelope"
KFG = "urn:kfgate:soap:1"
WSA = "http://www.w3.org/2005/08/addressing"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
TNS = "urn:example:legacy:tickets:2009"
UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
BOB_PW = "b0b-from-env-%d" % os.getpid()
OUT_PW = "out-secret-42"

pytestmark = pytest.mark.skipif(not os.path.exists(SOAP_SO),
                                reason="build/plugins/soap-adapter.so not built")
VERSIONS = [11, 12]


# ---------------------------------------------------------------------------
# A legacy SOAP endpoint for the callbacks

class Receiver:
    """Scripted SOAP server: each attempt for an envelope takes the next
    action of the default script ("ok", "server-fault", "client-fault",
    "503", "429:<retry-after s>", "stall:<s>"); then "ok". Records every
    request."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.scripts = {}
        self.default = []
        self.port = free_port()
        rec = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                doc = etree.fromstring(body)
                ver = 12 if doc.tag == "{%s}Envelope" % E12 else 11
                mid = doc.findtext(".//{%s}MessageID" % WSA) or ""
                eid = mid.replace("urn:uuid:", "")
                with rec.lock:
                    script = rec.scripts.setdefault(eid, list(rec.default))
                    action = script.pop(0) if script else "ok"
                    rec.requests.append({"t": time.monotonic(), "headers": dict(self.headers),
                                         "body": body, "doc": doc, "version": ver, "id": eid,
                                         "action": action})
                if action.startswith("stall:"):
                    time.sleep(float(action.split(":")[1]))
                    action = "ok"
                ns = E12 if ver == 12 else E11
                ct = "application/soap+xml" if ver == 12 else "text/xml"
                if action == "ok":
                    code, out = 200, ('<s:Envelope xmlns:s="%s"><s:Body><k:DeliverMessageResponse'
                                      ' xmlns:k="%s"><k:accepted>true</k:accepted>'
                                      '</k:DeliverMessageResponse></s:Body></s:Envelope>'
                                      % (ns, KFG))
                elif action in ("server-fault", "client-fault"):
                    who = {("server-fault", 11): "Server", ("client-fault", 11): "Client",
                           ("server-fault", 12): "Receiver", ("client-fault", 12): "Sender"}
                    c = who[(action, ver)]
                    if ver == 12:
                        f = ('<s:Fault><s:Code><s:Value>s:%s</s:Value></s:Code><s:Reason>'
                             '<s:Text xml:lang="en">legacy says %s</s:Text></s:Reason></s:Fault>'
                             % (c, action))
                    else:
                        f = ('<s:Fault><faultcode>s:%s</faultcode><faultstring>legacy says %s'
                             '</faultstring></s:Fault>' % (c, action))
                    code, out = 500, '<s:Envelope xmlns:s="%s"><s:Body>%s</s:Body></s:Envelope>' % (
                        ns, f)
                else:
                    code, out, ct = int(action.split(":")[0]), "busy", "text/plain"
                data = out.encode()
                try:
                    self.send_response(code)
                    if ":" in action:
                        self.send_header("Retry-After", action.split(":")[1])
                    self.send_header("Content-Type", ct)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self):
        return "http://127.0.0.1:%d/legacy" % self.port

    def attempts(self, eid):
        with self.lock:
            return [r for r in self.requests if r["id"] == eid]

    def wait_attempts(self, eid, n, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.attempts(eid)
            if len(got) >= n:
                return got
            time.sleep(0.02)
        raise AssertionError("%d attempts for %s, wanted %d" % (len(self.attempts(eid)), eid, n))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Hits:
    """An HTTP server that only counts requests: proof of no network access."""

    def __init__(self):
        self.count = 0
        self.port = free_port()
        hits = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                hits.count += 1
                data = b'<!ENTITY % p "x">'
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------
# The daemon

def example_tickets():
    """The CreateTicket instance exactly as config.example.toml has it."""
    with open(EXAMPLE, "rb") as f:
        cfg = tomllib.load(f)
    t = [a for a in cfg["adapter"] if a.get("type") == "soap" and a.get("name") == "tickets"]
    assert t, "config.example.toml has no soap instance named tickets"
    t = dict(t[0])
    t["wsdl_file"] = os.path.join(ROOT, t["wsdl_file"])
    return t


def instances(rx, rx12):
    base = {"kind": "adapter", "type": "soap", "tenant": "acme"}
    tickets = example_tickets()
    tickets.update(kind="adapter", tenant="acme",
                   endpoint_url=rx12.url, endpoint_version="1.2",
                   endpoint_action=TNS + "/AddNote",
                   endpoint_template='<t:AddNote xmlns:t="%s"><t:Customer>{conversation}'
                                     '</t:Customer><t:Text>{text}</t:Text><t:Ref>{envelope_id}'
                                     '</t:Ref><t:Try>{attempt}</t:Try></t:AddNote>' % TNS,
                   endpoint_auth="wsse", endpoint_username="kfgate",
                   endpoint_password="env:KFG_TEST_SOAP_OUT_PW", endpoint_timeout_ms=2000)
    return [
        dict(base, name="soap-a", path="/soap/a", auth="either",
             users=["alice=wonderland", "bob=env:KFG_TEST_SOAP_BOB"], wsse_window_s=120,
             endpoint_url=rx.url, endpoint_timeout_ms=800, endpoint_max_attempts=4),
        dict(base, name="soap-b", path="/soap/b", auth="basic", users=["carol=c4r0l"]),
        dict(base, name="soap-lim", path="/soap/lim", auth="none", max_body=4096, max_depth=8,
             keep_raw=True),
        tickets,
        # A legacy endpoint that is down (nothing listens), one attempt each.
        dict(base, name="soap-down", path="/soap/down", auth="none",
             endpoint_url="http://127.0.0.1:%d/down" % free_port(), endpoint_max_attempts=1),
    ]


def start_gateway(root, insts, extra_journal="", env=None):
    env = dict(env or {})
    env.update(KFG_TEST_SOAP_BOB=BOB_PW, KFG_TEST_SOAP_OUT_PW=OUT_PW)
    gw = Gateway(root, plugins=[(SOAP_SO, "soap-adapter.so")], instances=insts, workers=2,
                 env=env)
    text = render_config(gw.plugin_dir, gw.http_port, gw.admin_port, instances=insts,
                         workers=2, workdir=root)
    # Fast host retries so the callback tests run in seconds.
    text = text.replace("[bus]\n", "[bus]\nretry_max = 6\nretry_base_ms = 100\n"
                                   "retry_cap_ms = 400\n", 1)
    if extra_journal:
        text = text.replace("[journal]\n", "[journal]\n" + extra_journal, 1)
    gw.write_config(text=text)
    gw.start()
    return gw


@pytest.fixture(scope="module")
def rx():
    r = Receiver(), Receiver()
    yield r
    for x in r:
        x.close()


@pytest.fixture(scope="module")
def gw(rx):
    root = tempfile.mkdtemp(prefix="kfc-soap-", dir="/tmp")
    g = start_gateway(root, instances(*rx))
    yield g
    g.stop()
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------
# Clients

class RecordingTransport(Transport):
    """zeep's transport, keeping the last HTTP response (status, headers)."""

    def post(self, address, message, headers):
        self.sent_headers = dict(headers)
        r = super().post(address, message, headers)
        self.last = r
        return r


def client(gw, path="/soap/a", version=11, wsse=None, basic=None, service="KfgateService",
           port=None):
    s = requests.Session()
    if basic:
        s.auth = basic
    t = RecordingTransport(session=s, timeout=10)
    c = zeep.Client("http://127.0.0.1:%d%s?wsdl" % (gw.http_port, path), wsse=wsse, transport=t)
    port = port or ("KfgateSoap12Port" if version == 12 else "KfgateSoap11Port")
    return c.bind(service, port), t


def alice(digest=True, **kw):
    return UsernameToken("alice", "wonderland", use_digest=digest, **kw)


def wsa(mid):
    el = etree.Element("{%s}MessageID" % WSA)
    el.text = mid
    return [el]


def fault_info(exc):
    """(code, kfg code) of a zeep Fault: code as sent ("soap:Client",
    "env:Sender"), the kfg code from the detail (== the 1.2 Subcode)."""
    d = exc.detail
    code = d.findtext(".//{%s}code" % KFG) if d is not None else None
    return exc.code, code


def expect_fault(version, fn, code, sub, http=500):
    """Calls fn (a zeep call), expects a SOAP fault of that class."""
    svc_t = fn.__self__ if hasattr(fn, "__self__") else None
    del svc_t
    with pytest.raises(zeep.exceptions.Fault) as ei:
        fn()
    c, k = fault_info(ei.value)
    want = {("client", 11): "soap:Client", ("server", 11): "soap:Server",
            ("client", 12): "env:Sender", ("server", 12): "env:Receiver"}[(code, version)]
    assert c == want, (c, ei.value.message)
    assert k == sub, (k, ei.value.message)
    if version == 12:
        assert [q.localname for q in ei.value.subcodes] == [sub]
    assert ei.value.message
    return ei.value


CT = {11: "text/xml; charset=utf-8", 12: "application/soap+xml; charset=utf-8"}


def raw(gw, body, version=11, path="/soap/a", action=None, ctype=None, headers=None):
    h = {"Content-Type": ctype or CT[version]}
    if version == 12 and action and not ctype:
        h["Content-Type"] += '; action="%s"' % action
    if version == 11 and action is not None:
        h["SOAPAction"] = '"%s"' % action
    h.update(headers or {})
    if isinstance(body, str):
        body = body.encode()
    return requests.post("http://127.0.0.1:%d%s" % (gw.http_port, path), data=body, headers=h,
                         timeout=10)


def parse_fault(r):
    """{version, code, sub, reason} of a fault answer (raw HTTP)."""
    doc = etree.fromstring(r.content)
    if doc.tag == "{%s}Envelope" % E12:
        f = doc.find("{%s}Body/{%s}Fault" % (E12, E12))
        assert f is not None, r.content
        return {"version": 12, "code": f.findtext("{%s}Code/{%s}Value" % (E12, E12)),
                "sub": f.findtext("{%s}Code/{%s}Subcode/{%s}Value" % (E12, E12, E12)),
                "reason": f.findtext("{%s}Reason/{%s}Text" % (E12, E12)),
                "detail": f.findtext(".//{%s}code" % KFG), "doc": doc}
    assert doc.tag == "{%s}Envelope" % E11, r.content
    f = doc.find("{%s}Body/{%s}Fault" % (E11, E11))
    assert f is not None, r.content
    return {"version": 11, "code": f.findtext("faultcode"), "sub": None,
            "reason": f.findtext("faultstring"), "detail": f.findtext(".//{%s}code" % KFG),
            "doc": doc}


def assert_raw_fault(r, version, status, code, sub):
    assert r.status_code == status, (r.status_code, r.content)
    assert r.headers["Content-Type"].startswith(CT[version].split(";")[0]), r.headers
    f = parse_fault(r)
    assert f["version"] == version
    want = {("client", 11): "soap:Client", ("server", 11): "soap:Server",
            ("version", 11): "soap:VersionMismatch", ("must", 11): "soap:MustUnderstand",
            ("client", 12): "env:Sender", ("server", 12): "env:Receiver",
            ("version", 12): "env:VersionMismatch", ("must", 12): "env:MustUnderstand"}
    assert f["code"] == want[(code, version)], f
    assert f["detail"] == sub, f
    if version == 12:
        assert f["sub"] == "kfg:" + sub, f
    assert f["reason"] and len(f["reason"]) > 10
    return f


def env(version, body, header=""):
    ns = E12 if version == 12 else E11
    return ('<?xml version="1.0"?><x:Envelope xmlns:x="%s"><x:Header>%s</x:Header>'
            '<x:Body>%s</x:Body></x:Envelope>' % (ns, header, body))


def push_body(text="hi", conv="c-raw", sender="u-raw"):
    return ('<k:PushMessage xmlns:k="%s"><k:conversationId>%s</k:conversationId>'
            '<k:senderId>%s</k:senderId><k:text>%s</k:text></k:PushMessage>'
            % (KFG, conv, sender, text))


# ---------------------------------------------------------------------------
# The bus

def tail(gw, topic, wait_for=None, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([TAIL, "--from", "1", "--idle", "300", "--topic", topic,
                              "--feed", "ipc://%s/feed.ipc" % gw.dir,
                              "--replay", "ipc://%s/replay.ipc" % gw.dir],
                             capture_output=True, text=True, timeout=20)
        recs = [json.loads(ln)["envelope"] for ln in out.stdout.splitlines() if ln.strip()]
        if wait_for is None or wait_for(recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


def record(gw, instance, seq):
    recs = tail(gw, "acme/soap/" + instance, lambda rs: any(r["seq"] == seq for r in rs))
    for r in recs:
        if r["seq"] == seq:
            return r
    raise AssertionError("no record %d in %r" % (seq, recs))


def send_outbound(gw, envl):
    out = subprocess.run([SEND, "--outbound", "ipc://%s/outbound.ipc" % gw.dir],
                         input=json.dumps(envl) + "\n", capture_output=True, text=True,
                         timeout=20)
    ans = json.loads(out.stdout.splitlines()[0])
    assert ans["ok"], ans
    return ans


def receipts(gw, instance, ref, want=None, timeout=10):
    def got(rs):
        st = [r["status"] for r in rs if r.get("type") == "status" and r.get("ref") == ref]
        return want is None or want in st
    recs = tail(gw, "acme/soap/" + instance, got, timeout)
    return [r for r in recs if r.get("type") == "status" and r.get("ref") == ref]


def outbound(instance, text, conv="cust-1"):
    return {"v": 1, "instance": instance, "dir": "out", "type": "message",
            "conversation": {"id": conv}, "idem": "t-%d" % time.time_ns(),
            "parts": [{"kind": "text", "text": text}]}


# ---------------------------------------------------------------------------
# WSDL

def test_wsdl_is_served_with_the_address(gw):
    r = requests.get("http://127.0.0.1:%d/soap/a?wsdl" % gw.http_port, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/xml")
    doc = etree.fromstring(r.content)
    locs = [e.get("location") for e in doc.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address",
                                                 "{http://schemas.xmlsoap.org/wsdl/soap12/}address")]
    assert locs == ["http://127.0.0.1:%d/soap/a" % gw.http_port] * 2
    assert b"kfgate.invalid" not in r.content
    with open(os.path.join(ROOT, "spec", "soap", "kfgate.wsdl"), "rb") as f:
        spec = f.read()
    assert r.content == spec.replace(b"http://kfgate.invalid/soap",
                                     ("http://127.0.0.1:%d/soap/a" % gw.http_port).encode())
    g = requests.get("http://127.0.0.1:%d/soap/a" % gw.http_port, timeout=5)
    assert g.status_code == 400 and b"?wsdl" in g.content
    p = requests.put("http://127.0.0.1:%d/soap/a" % gw.http_port, data=b"x", timeout=5)
    assert p.status_code == 405 and "POST" in p.headers["Allow"]


# ---------------------------------------------------------------------------
# Operations

@pytest.mark.parametrize("version", VERSIONS)
def test_push_message_and_its_envelope(gw, version):
    svc, t = client(gw, version=version, wsse=alice())
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    t.session.headers["traceparent"] = tp
    when = datetime.datetime(2026, 12, 1, 8, 30, 0, tzinfo=datetime.timezone.utc)
    r = svc.PushMessage(conversationId="c-%d" % version, conversationKind="direct",
                        senderId="u-1", senderName="Ann", recipientId="desk-7",
                        timestamp=when, text="hello <world> & co",
                        part=[{"kind": "link", "url": "https://example.com/x", "title": "X"},
                              {"kind": "location", "lat": 39.9, "lon": 116.4, "label": "BJ"}],
                        data=[{"key": "crm_id", "value": "X9"}])
    assert t.last.status_code == 200
    assert t.last.headers["Content-Type"] == CT[version]
    if version == 12:
        assert 'action="urn:kfgate:soap:1/PushMessage"' in t.sent_headers["Content-Type"]
    else:
        assert t.sent_headers["SOAPAction"] == '"urn:kfgate:soap:1/PushMessage"'
    assert r.status == "accepted" and r.seq > 0 and UUID7.match(r.messageId)
    assert UUID7.match(r.envelopeId) and r.envelopeId != r.messageId
    e = record(gw, "soap-a", r.seq)
    assert e["v"] == 1
    assert e["id"] == r.envelopeId and e["seq"] == r.seq
    assert e["tenant"] == "acme" and e["channel"] == "soap" and e["instance"] == "soap-a"
    assert e["dir"] == "in" and e["type"] == "message"
    assert e["conversation"] == {"id": "c-%d" % version, "kind": "direct"}
    assert e["sender"] == {"id": "u-1", "name": "Ann"}
    assert e["recipient"] == {"id": "desk-7"}
    assert e["ts"]["channel"] == int(when.timestamp() * 1000)
    assert isinstance(e["ts"]["accepted"], int) and abs(e["ts"]["accepted"] / 1000 - time.time()) < 60
    assert e["parts"][0] == {"kind": "text", "text": "hello <world> & co"}
    assert e["parts"][1] == {"kind": "link", "url": "https://example.com/x", "title": "X"}
    assert e["parts"][2]["kind"] == "location" and e["parts"][2]["label"] == "BJ"
    assert e["parts"][2]["lat"] == pytest.approx(39.9) and isinstance(e["parts"][2]["lon"], float)
    assert len(e["parts"]) == 3
    assert e["channel_msg_id"] == r.messageId
    assert e["channel_data"] == {"crm_id": "X9", "soap_version": "%d.%d" % divmod(version, 10),
                                 "soap_operation": "PushMessage",
                                 "soap_action": "urn:kfgate:soap:1/PushMessage",
                                 "soap_principal": "alice"}
    assert e["trace"] == {"traceparent": tp}
    assert "idem" not in e and "raw" not in e


@pytest.mark.parametrize("version", VERSIONS)
def test_push_event(gw, version):
    svc, t = client(gw, version=version, wsse=alice(digest=False))
    r = svc.PushEvent(conversationId="dev-9", name="telemetry", key="temp", value="21.5")
    assert r.status == "accepted"
    e = record(gw, "soap-a", r.seq)
    assert e["type"] == "event"
    assert e["sender"] == {"id": "alice"}          # defaults to the authenticated user
    assert e["parts"] == [{"kind": "event", "name": "telemetry", "key": "temp", "value": "21.5"}]
    assert e["channel_data"]["soap_operation"] == "PushEvent"


@pytest.mark.parametrize("version", VERSIONS)
def test_get_message_status(gw, version):
    svc, _ = client(gw, version=version, wsse=alice())
    r = svc.PushMessage(conversationId="c-st", senderId="u", text="status?")
    for key in (r.messageId, r.envelopeId):
        st = svc.GetMessageStatus(messageId=key)
        assert st.messageId == r.messageId and st.envelopeId == r.envelopeId
        assert st.direction == "in" and st.status == "accepted" and st.seq == r.seq
        assert abs(st.created.timestamp() - time.time()) < 60
    expect_fault(version, lambda: svc.GetMessageStatus(messageId="no-such-id"), "client",
                 "UnknownMessage")


@pytest.mark.parametrize("version", VERSIONS)
def test_ws_addressing_message_id_is_the_idempotency_key(gw, version):
    svc, t = client(gw, version=version, wsse=alice())
    mid = "urn:uuid:%s" % uuid.uuid4()
    a = svc.PushMessage(conversationId="c-idem", senderId="u", text="once",
                        _soapheaders=wsa(mid))
    b = svc.PushMessage(conversationId="c-idem", senderId="u", text="once",
                        _soapheaders=wsa(mid))
    assert a.status == "accepted" and b.status == "duplicate"
    assert (b.messageId, b.seq, b.envelopeId) == (a.messageId, a.seq, a.envelopeId)
    esc = mid.replace("%", "%25").replace(":", "%3A")
    recs = [x for x in tail(gw, "acme/soap/soap-a") if x.get("idem") == esc]
    assert len(recs) == 1 and recs[0]["seq"] == a.seq
    assert recs[0]["channel_data"]["soap_message_id"] == mid
    st = svc.GetMessageStatus(messageId=mid)
    assert st.messageId == a.messageId and st.idem == esc


@pytest.mark.parametrize("version", VERSIONS)
def test_keep_raw_keeps_the_envelope(gw, version):
    body = env(version, push_body(text="raw me", conv="c-raw-%d" % version))
    r = raw(gw, body, version, path="/soap/lim")
    assert r.status_code == 200, r.content
    seq = int(etree.fromstring(r.content).findtext(".//{%s}seq" % KFG))
    e = record(gw, "soap-lim", seq)
    assert base64.b64decode(e["raw"]["body"]["$bin"]).decode() == body
    assert e["raw"]["ctype"] == ("application/soap+xml" if version == 12 else "text/xml")
    assert e["sender"] == {"id": "u-raw"} and e["parts"] == [{"kind": "text", "text": "raw me"}]


# ---------------------------------------------------------------------------
# Security

@pytest.mark.parametrize("version", VERSIONS)
def test_wsse_text_and_digest_accepted(gw, version):
    for tok in (alice(digest=False), alice(digest=True),
                UsernameToken("bob", BOB_PW, use_digest=True)):      # password from env:
        svc, _ = client(gw, version=version, wsse=tok)
        assert svc.PushMessage(conversationId="c-auth", text="x").status == "accepted"


@pytest.mark.parametrize("version", VERSIONS)
def test_wsse_failures(gw, version):
    for tok in (UsernameToken("alice", "wrong", use_digest=True),
                UsernameToken("alice", "wrong"), UsernameToken("mallory", "wonderland")):
        svc, t = client(gw, version=version, wsse=tok)
        expect_fault(version, lambda: svc.PushMessage(conversationId="c", text="x"), "client",
                     "AuthenticationFailed")
        assert t.last.status_code == 500
    svc, t = client(gw, version=version)
    f = expect_fault(version, lambda: svc.PushMessage(conversationId="c", text="x"), "client",
                     "AuthenticationRequired")
    assert t.last.status_code == 401 and "Basic" in t.last.headers["WWW-Authenticate"]
    assert "UsernameToken" in f.message


@pytest.mark.parametrize("version", VERSIONS)
def test_wsse_replayed_nonce_is_refused(gw, version):
    created = datetime.datetime.utcnow().replace(microsecond=0)
    tok = alice(nonce="n-%s" % uuid.uuid4(), created=created)
    svc, _ = client(gw, version=version, wsse=tok)
    assert svc.PushMessage(conversationId="c-replay", text="first").status == "accepted"
    before = len(tail(gw, "acme/soap/soap-a"))
    expect_fault(version, lambda: svc.PushMessage(conversationId="c-replay", text="first"),
                 "client", "NonceReplayed")
    time.sleep(0.2)
    assert len(tail(gw, "acme/soap/soap-a")) == before


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("skew", [-3600, 3600])
def test_wsse_stale_or_future_created_is_refused(gw, version, skew):
    created = datetime.datetime.utcnow().replace(microsecond=0) + datetime.timedelta(seconds=skew)
    svc, _ = client(gw, version=version, wsse=alice(created=created))
    f = expect_fault(version, lambda: svc.PushMessage(conversationId="c", text="x"), "client",
                     "MessageExpired")
    assert ("behind" if skew < 0 else "ahead") in f.message and "120 s" in f.message


@pytest.mark.parametrize("version", VERSIONS)
def test_http_basic_auth(gw, version):
    svc, t = client(gw, path="/soap/b", version=version, basic=("carol", "c4r0l"))
    r = svc.PushMessage(conversationId="c-basic", text="via basic")
    assert r.status == "accepted"
    assert record(gw, "soap-b", r.seq)["sender"] == {"id": "carol"}
    svc, t = client(gw, path="/soap/b", version=version, basic=("carol", "nope"))
    expect_fault(version, lambda: svc.PushMessage(conversationId="c", text="x"), "client",
                 "AuthenticationFailed")
    assert t.last.status_code == 401
    assert t.last.headers["WWW-Authenticate"].startswith("Basic realm=")


# ---------------------------------------------------------------------------
# Faults

@pytest.mark.parametrize("version", VERSIONS)
def test_fault_malformed_xml(gw, version):
    r = raw(gw, env(version, "<k:PushMessage xmlns:k='%s'><k:text>x</k:PushMessage>" % KFG),
            version)
    f = assert_raw_fault(r, version, 400, "client", "MalformedXml")
    assert "line 1" in f["reason"]


def test_fault_not_soap_at_all(gw):
    r = raw(gw, '{"text": "hi"}', ctype="application/json")
    assert_raw_fault(r, 11, 400, "client", "UnsupportedMediaType")
    r = raw(gw, "<order><id>1</id></order>", 11)
    f = assert_raw_fault(r, 11, 400, "client", "NotSoap")
    assert "<order>" in f["reason"]
    # A SOAP 1.2 envelope sent as text/xml: SOAP after all, answered in 1.2.
    r = raw(gw, env(12, push_body()), ctype="text/xml")
    assert_raw_fault(r, 12, 500, "client", "UnsupportedMediaType")
    r = raw(gw, env(11, push_body()), ctype="text/xml; charset=iso-8859-1")
    assert_raw_fault(r, 11, 400, "client", "UnsupportedMediaType")


@pytest.mark.parametrize("version", VERSIONS)
def test_fault_wrong_envelope_namespace(gw, version):
    body = '<x:Envelope xmlns:x="urn:not:soap"><x:Body>%s</x:Body></x:Envelope>' % push_body()
    r = raw(gw, body, version)
    f = assert_raw_fault(r, version, 500, "version", "VersionMismatch")
    assert "urn:not:soap" in f["reason"]
    if version == 12:
        up = f["doc"].findall("{%s}Header/{%s}Upgrade/{%s}SupportedEnvelope" % (E12, E12, E12))
        assert len(up) == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_fault_unknown_operation(gw, version):
    r = raw(gw, env(version, '<k:DeleteEverything xmlns:k="%s"/>' % KFG), version,
            path="/soap/lim")
    f = assert_raw_fault(r, version, 500, "client", "UnknownOperation")
    assert "DeleteEverything" in f["reason"]
    r = raw(gw, env(version, push_body()), version, action="urn:kfgate:soap:1/PushEvent",
            path="/soap/lim")
    assert_raw_fault(r, version, 500, "client", "ActionMismatch")


@pytest.mark.parametrize("version", VERSIONS)
def test_fault_missing_field(gw, version):
    svc, t = client(gw, version=version, wsse=alice())
    f = expect_fault(version, lambda: svc.PushMessage(conversationId="c-missing"), "client",
                     "MissingField")
    assert "<text>" in f.message and t.last.status_code == 500
    r = raw(gw, env(version, '<k:PushMessage xmlns:k="%s"><k:text>x</k:text></k:PushMessage>'
                    % KFG), version, path="/soap/lim")
    f = assert_raw_fault(r, version, 500, "client", "MissingField")
    assert "conversationId" in f["reason"]
    r = raw(gw, env(version, '<k:PushMessage xmlns:k="%s"><k:conversationId>c</k:conversationId>'
                    '<k:senderId>u</k:senderId><k:txet>x</k:txet></k:PushMessage>' % KFG),
            version, path="/soap/lim")
    f = assert_raw_fault(r, version, 500, "client", "InvalidField")
    assert "<txet>" in f["reason"]


@pytest.mark.parametrize("version", VERSIONS)
def test_fault_must_understand_and_limits(gw, version):
    ns = E12 if version == 12 else E11
    hdr = '<h:Billing xmlns:h="urn:billing" xmlns:x="%s" x:mustUnderstand="%s"/>' % (
        ns, "true" if version == 12 else "1")
    r = raw(gw, env(version, push_body(), hdr), version, path="/soap/lim")
    f = assert_raw_fault(r, version, 500, "must", "MustUnderstand")
    assert "{urn:billing}Billing" in f["reason"]
    big = push_body(text="x" * 5000)
    r = raw(gw, env(version, big), version, path="/soap/lim")
    assert_raw_fault(r, version, 413, "client", "TooLarge")
    deep = "<a>" * 10 + "</a>" * 10
    r = raw(gw, env(version, push_body(text=deep)), version, path="/soap/lim")
    assert_raw_fault(r, version, 500, "client", "TooDeep")


def test_overload_is_a_receiver_fault_with_503(gateway_factory, tmp_path):
    """emit's KFG_AGAIN ([journal] max_pending = 1, fsync always: a second
    push while the first waits for its fsync finds the journal full) is a
    Server/Receiver fault "Overloaded", HTTP 503 with Retry-After; nothing
    else is lost: every push is either accepted or told to retry."""
    insts = [{"kind": "adapter", "type": "soap", "name": "soap-o", "tenant": "acme",
              "path": "/o", "auth": "none"}]
    root = tempfile.mkdtemp(prefix="kfc-soapo-", dir="/tmp")
    gw = start_gateway(root, insts, extra_journal='max_pending = 1\nfsync = "always"\n')
    try:
        def one(i):
            v = 12 if i % 2 else 11
            return v, raw(gw, env(v, push_body(text="m%d" % i)), v, path="/o")
        busy = ok = 0
        for _ in range(5):
            with concurrent.futures.ThreadPoolExecutor(24) as ex:
                for v, r in ex.map(one, range(96)):
                    if r.status_code == 200:
                        ok += 1
                        continue
                    f = assert_raw_fault(r, v, 503, "server", "Overloaded")
                    assert int(r.headers["Retry-After"]) >= 1
                    assert "retry" in f["reason"]
                    busy += 1
            if busy:
                break
        assert busy > 0 and ok > 0, (busy, ok)
        assert "SOAP" in gw.log() and "Overloaded" in gw.log()
    finally:
        gw.stop()
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------
# XML attacks

@pytest.mark.parametrize("version", VERSIONS)
def test_xxe_is_refused_without_reading_the_file(gw, version, tmp_path):
    marker = "KFG-XXE-MARKER-%s" % uuid.uuid4().hex
    secret = tmp_path / "secret.txt"
    secret.write_text(marker)
    os.chmod(secret, 0o644)
    hits = Hits()
    try:
        payloads = [
            '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file://%s">]>%s'
            % (secret, env(version, push_body(text="&xxe;"))[len('<?xml version="1.0"?>'):]),
            '<!DOCTYPE x [<!ENTITY %% p SYSTEM "http://127.0.0.1:%d/evil.dtd"> %%p;]>%s'
            % (hits.port, env(version, push_body())[len('<?xml version="1.0"?>'):]),
            '<!DOCTYPE x SYSTEM "http://127.0.0.1:%d/evil.dtd">%s'
            % (hits.port, env(version, push_body())[len('<?xml version="1.0"?>'):]),
        ]
        before = len(tail(gw, "acme/soap/soap-a"))
        mark = gw.log_mark()
        for p in payloads:
            r = raw(gw, p, version, headers={"Authorization": "Basic " + base64.b64encode(
                b"alice:wonderland").decode()})
            f = assert_raw_fault(r, version, 500, "client", "DtdNotAllowed")
            assert marker.encode() not in r.content
            assert "DOCTYPE" in f["reason"]
        # The same refusal when the DOCTYPE hides in UTF-16.
        r = raw(gw, payloads[0].encode("utf-16"), version)
        assert_raw_fault(r, version, 400, "client", "NotUtf8")
        time.sleep(0.3)
        assert hits.count == 0, "the gateway fetched an external DTD"
        recs = tail(gw, "acme/soap/soap-a")
        assert len(recs) == before
        assert marker not in json.dumps(recs)
        assert marker not in gw.log()[mark:]
        assert "DtdNotAllowed" in gw.log()[mark:]
    finally:
        hits.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_billion_laughs_is_refused(gw, version):
    ents = "".join('<!ENTITY l%d "%s">' % (i, "&l%d;" % (i - 1) * 10) for i in range(1, 10))
    p = '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY l0 "lol">%s]>%s' % (
        ents, env(version, push_body(text="&l9;"))[len('<?xml version="1.0"?>'):])
    t0 = time.monotonic()
    r = raw(gw, p, version)
    assert time.monotonic() - t0 < 3
    assert_raw_fault(r, version, 500, "client", "DtdNotAllowed")
    assert len(r.content) < 4096
    # An entity reference without any DTD is refused as well.
    r = raw(gw, env(version, push_body(text="&l9;")), version)
    assert_raw_fault(r, version, 500, "client", "DtdNotAllowed")
    # Still serving everyone else.
    svc, _ = client(gw, version=version, wsse=alice())
    assert svc.PushMessage(conversationId="c-after", text="fine").status == "accepted"


# ---------------------------------------------------------------------------
# The XPath-mapped legacy service (config.example.toml "tickets")

def helpdesk():
    user, pw = example_tickets()["users"][0].split("=", 1)
    return UsernameToken(user, pw, use_digest=True)


@pytest.mark.parametrize("version", VERSIONS)
def test_mapped_create_ticket(gw, version):
    port = "HelpDeskSoap12Port" if version == 12 else "HelpDeskSoap11Port"
    svc, t = client(gw, path="/soap/tickets", wsse=helpdesk(), service="HelpDesk", port=port)
    ref = "REF-%d-%d" % (version, time.time_ns())
    r = svc.CreateTicket(Customer={"Number": "C-1001", "Name": "Ann Smith"}, Subject="Printer",
                         Description="is on fire", Priority="high", externalRef=ref)
    assert t.last.status_code == 200 and t.last.headers["Content-Type"] == CT[version]
    assert UUID7.match(r.TicketId) and r.State == "accepted"
    rec = [x for x in tail(gw, "acme/soap/tickets",
                           lambda rs: any(x.get("channel_msg_id") == r.TicketId for x in rs))
           if x.get("channel_msg_id") == r.TicketId]
    assert len(rec) == 1
    e = rec[0]
    assert e["instance"] == "tickets" and e["channel"] == "soap" and e["type"] == "message"
    assert e["conversation"] == {"id": "C-1001"}
    assert e["sender"] == {"id": "C-1001", "name": "Ann Smith"}
    assert e["parts"] == [{"kind": "text", "text": "Printer: is on fire"}]
    assert e["idem"] == ref
    assert e["channel_data"]["priority"] == "high"
    assert e["channel_data"]["soap_operation"] == "CreateTicket"
    assert e["channel_data"]["soap_action"] == TNS + "/CreateTicket"
    # The legacy system retries: same natural key, the original ticket.
    again = svc.CreateTicket(Customer={"Number": "C-1001"}, Subject="Printer", externalRef=ref)
    assert again.TicketId == r.TicketId and again.State == "duplicate"
    # A request the mapping cannot fill names the config key.
    with pytest.raises(zeep.exceptions.Fault) as ei:
        svc.CreateTicket(Customer={"Number": " "}, Subject="x")
    assert "map_conversation" in ei.value.message
    assert fault_info(ei.value)[1] == "MissingField"


# ---------------------------------------------------------------------------
# Outbound SOAP callbacks

def test_callback_retries_until_success(gw, rx):
    main = rx[0]
    main.default = ["server-fault", "503", "stall:1.5"]
    try:
        ans = send_outbound(gw, outbound("soap-a", "answer <1> & more"))
        eid = ans["id"]
        main.wait_attempts(eid, 4)
    finally:
        main.default = []
    time.sleep(0.3)
    atts = main.attempts(eid)
    assert [a["action"] for a in atts] == ["server-fault", "503", "stall:1.5", "ok"]
    for i, a in enumerate(atts):
        assert a["version"] == 11
        assert a["headers"]["Content-Type"] == "text/xml; charset=utf-8"
        assert a["headers"]["SOAPAction"] == '"urn:kfgate:soap:1/DeliverMessage"'
        d = a["doc"].find(".//{%s}DeliverMessage" % KFG)
        assert d.findtext("{%s}envelopeId" % KFG) == eid
        assert d.findtext("{%s}attempt" % KFG) == str(i + 1)
        assert d.findtext("{%s}instance" % KFG) == "soap-a"
        assert d.findtext("{%s}conversationId" % KFG) == "cust-1"
        assert d.findtext("{%s}text" % KFG) == "answer <1> & more"
        assert d.findtext("{%s}part/{%s}kind" % (KFG, KFG)) == "text"
    rs = receipts(gw, "soap-a", eid, want="sent")
    assert [r["status"] for r in rs] == ["accepted", "sent"]
    assert rs[-1]["attempts"] == 4
    svc, _ = client(gw, wsse=alice())
    st = svc.GetMessageStatus(messageId=eid)
    assert st.direction == "out" and st.status == "sent" and st.attempts == 4


def test_callback_client_fault_fails_at_once(gw, rx):
    rx[0].default = ["client-fault"]
    try:
        ans = send_outbound(gw, outbound("soap-a", "bad"))
        rs = receipts(gw, "soap-a", ans["id"], want="failed")
    finally:
        rx[0].default = []
    assert len(rx[0].attempts(ans["id"])) == 1
    failed = [r for r in rs if r["status"] == "failed"][0]
    assert failed["code"] == "soap:Client" and failed["retriable"] is False
    assert "legacy says client-fault" in failed["detail"]


def test_callback_dead_letter_after_the_limit(gw, rx):
    rx[0].default = ["server-fault"] * 20
    try:
        ans = send_outbound(gw, outbound("soap-a", "never"))
        rx[0].wait_attempts(ans["id"], 4)
        rs = receipts(gw, "soap-a", ans["id"], want="failed")
    finally:
        rx[0].default = []
    time.sleep(0.5)
    assert len(rx[0].attempts(ans["id"])) == 4                 # endpoint_max_attempts
    failed = [r for r in rs if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["code"] == "soap:Server"
    assert "gave up after 4 attempts" in failed[0]["detail"]


def test_callback_soap12_template_and_wsse(gw, rx):
    r12 = rx[1]
    r12.default = ["server-fault"]
    try:
        ans = send_outbound(gw, outbound("tickets", "we replaced the toner", conv="C-1001"))
        atts = r12.wait_attempts(ans["id"], 2)
    finally:
        r12.default = []
    receipts(gw, "tickets", ans["id"], want="sent")
    for i, a in enumerate(atts[:2]):
        assert a["version"] == 12
        ct = a["headers"]["Content-Type"]
        assert ct.startswith("application/soap+xml") and 'action="%s/AddNote"' % TNS in ct
        note = a["doc"].find(".//{%s}AddNote" % TNS)
        assert note.findtext("{%s}Customer" % TNS) == "C-1001"
        assert note.findtext("{%s}Text" % TNS) == "we replaced the toner"
        assert note.findtext("{%s}Ref" % TNS) == ans["id"]
        assert note.findtext("{%s}Try" % TNS) == str(i + 1)
        tok = a["doc"].find(".//{%s}UsernameToken" % WSSE)
        nonce = base64.b64decode(tok.findtext("{%s}Nonce" % WSSE))
        created = tok.findtext("{%s}Created" % WSU)
        want = base64.b64encode(hashlib.sha1(nonce + created.encode() + OUT_PW.encode())
                                .digest()).decode()
        assert tok.findtext("{%s}Username" % WSSE) == "kfgate"
        assert tok.findtext("{%s}Password" % WSSE) == want
    assert atts[0]["doc"].findtext(".//{%s}Nonce" % WSSE) != atts[1]["doc"].findtext(
        ".//{%s}Nonce" % WSSE)


def test_callback_retry_after_is_honoured(gw, rx):
    """A 429 with Retry-After: 2 delays the next attempt at least that long
    (the host's own backoff here is at most 400 ms)."""
    rx[0].default = ["429:2"]
    try:
        ans = send_outbound(gw, outbound("soap-a", "later please"))
        atts = rx[0].wait_attempts(ans["id"], 2, timeout=10)
    finally:
        rx[0].default = []
    assert atts[1]["t"] - atts[0]["t"] >= 1.9, (atts[0]["t"], atts[1]["t"])
    rs = receipts(gw, "soap-a", ans["id"], want="sent")
    assert rs[-1]["attempts"] == 2


def test_metrics(gw, rx):
    from conftest import metric_value
    svc, _ = client(gw, wsse=alice())
    svc.PushMessage(conversationId="c-metrics", text="counted")
    assert raw(gw, env(11, push_body()), 11).status_code == 401
    assert raw(gw, "<x/>", 11, path="/soap/lim").status_code == 400
    rx[0].default = ["503"]
    try:
        ans = send_outbound(gw, outbound("soap-a", "count me"))
        receipts(gw, "soap-a", ans["id"], want="sent")
    finally:
        rx[0].default = []
    m = gw.metrics()
    assert metric_value(m, "soap_requests_total", instance="soap-a", outcome="accepted") > 0
    assert metric_value(m, "soap_requests_total", instance="soap-a", outcome="auth") > 0
    assert metric_value(m, "soap_requests_total", instance="soap-lim",
                        outcome="client_fault") > 0
    assert metric_value(m, "soap_deliveries_total", instance="soap-a", outcome="retry") > 0


def test_reload_waits_for_a_callback_in_flight(gateway_factory):
    """A changed instance is replaced on reload; the old one, with a call in
    flight, stops with KFG_AGAIN and reports stopped once the call finished;
    the delivery still counts (sent) and the new generation answers at once."""
    slow = Receiver()
    slow.default = ["stall:1.0"]
    try:
        inst = {"kind": "adapter", "type": "soap", "name": "soap-r", "tenant": "acme",
                "path": "/r", "auth": "none", "endpoint_url": slow.url}
        gw = gateway_factory(start=False, plugins=[(SOAP_SO, "soap-adapter.so")],
                             instances=[inst])
        gw.write_config(text=render_config(gw.plugin_dir, gw.http_port, gw.admin_port,
                                           instances=[inst], workdir=gw.dir))
        gw.start()
        ans = send_outbound(gw, outbound("soap-r", "in flight"))
        slow.wait_attempts(ans["id"], 1, timeout=5)
        mark = gw.log_mark()
        changed = dict(inst, max_text=1000)
        gw.write_config(text=render_config(gw.plugin_dir, gw.http_port, gw.admin_port,
                                           instances=[changed], workdir=gw.dir))
        r = gw.admin("POST", "/admin/reload")
        assert r.status == 200, r
        assert raw(gw, env(11, push_body()), 11, path="/r").status_code == 200
        gw.wait_log(r"instance=soap-r .*stopping, 1 outbound call\(s\) in flight", since=mark)
        gw.wait_log(r"instance=soap-r .*drained", since=mark, timeout=5)
        rs = receipts(gw, "soap-r", ans["id"], want="sent")
        assert [x["status"] for x in rs] == ["accepted", "sent"]
        assert len(slow.attempts(ans["id"])) == 1
    finally:
        slow.close()


def test_bad_config_is_refused_naming_the_key(gateway_factory):
    cases = [
        ({"auth": "wsse"}, "needs users"),
        ({"auth": "none", "namespaces": ["t=urn:t"], "map_operation": "t:Op",
          "map_conversation": "u:X", "map_sender": "t:S", "map_text": "t:T",
          "map_response": "<t:R xmlns:t='urn:t'/>"}, "u:X"),
        ({"auth": "none", "map_text": "t:T"}, "map_text is set but map_operation is not"),
        ({"auth": "wsse", "users": ["x=env:KFG_TEST_SOAP_NOT_SET"]},
         "KFG_TEST_SOAP_NOT_SET is not set"),
        ({"auth": "none", "endpoint_template": "<a><b></a>"}, "endpoint_template"),
    ]
    for extra, want in cases:
        inst = dict({"kind": "adapter", "type": "soap", "name": "soap-bad", "tenant": "acme",
                     "path": "/bad"}, **extra)
        gw = gateway_factory(start=False, plugins=[(SOAP_SO, "soap-adapter.so")],
                             instances=[inst])
        gw.env.pop("KFG_TEST_SOAP_NOT_SET", None)
        gw.start(expect_ok=False)
        deadline = time.monotonic() + 10
        while want not in gw.log() and time.monotonic() < deadline and gw.proc.poll() is None:
            time.sleep(0.05)
        assert want in gw.log(), (extra, gw.log())
        gw.stop()


def test_endpoint_down_makes_the_instance_unhealthy(gw):
    """Ten failed callbacks in a row: /readyz reports the instance unhealthy
    with the endpoint and the last error."""
    ids = [send_outbound(gw, outbound("soap-down", "n%d" % i))["id"] for i in range(10)]
    for i in ids:
        rs = receipts(gw, "soap-down", i, want="failed")
        f = [r for r in rs if r["status"] == "failed"][0]
        assert f["code"] == "http:network" and "gave up after 1 attempts" in f["detail"]
    deadline = time.monotonic() + 5
    while True:
        r = gw.admin("GET", "/readyz")
        by = {i["name"]: i for i in json.loads(r.body)["instances"]}
        if not by["soap-down"]["healthy"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert r.status == 503
    assert by["soap-down"]["healthy"] is False
    assert "last 10 callback attempts" in by["soap-down"]["detail"]
    assert "http:network" in by["soap-down"]["detail"]
    assert by["soap-a"]["healthy"] is True


def test_public_url_goes_into_the_wsdl(gateway_factory):
    inst = {"kind": "adapter", "type": "soap", "name": "soap-pub", "tenant": "acme",
            "path": "/pub", "auth": "none", "public_url": "https://gw.example.com/soap?x=<1>"}
    gw = gateway_factory(plugins=[(SOAP_SO, "soap-adapter.so")], instances=[inst])
    r = requests.get("http://127.0.0.1:%d/pub?wsdl" % gw.http_port, timeout=5,
                     headers={"Host": "evil.example"})
    assert r.status_code == 200
    doc = etree.fromstring(r.content)
    locs = [e.get("location") for e in doc.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address",
                                                 "{http://schemas.xmlsoap.org/wsdl/soap12/}address")]
    assert locs == ["https://gw.example.com/soap?x=<1>"] * 2     # escaped in the XML
    # Without public_url a Host header that is not a host name is refused.
    gw2 = gateway_factory(plugins=[(SOAP_SO, "soap-adapter.so")],
                          instances=[dict(inst, name="soap-pub2", public_url="")])
    r = requests.get("http://127.0.0.1:%d/pub?wsdl" % gw2.http_port, timeout=5,
                     headers={"Host": "ex_ample.com"})
    assert r.status_code == 400 and b"Host" in r.content
