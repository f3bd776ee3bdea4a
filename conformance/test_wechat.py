"""The WeChat adapter (issue 4, ../shared/protocols/wechat.md), black box.

The real build/kfgate with build/plugins/wechat.so, driven like WeChat would
(percent-encoded queries, text/xml bodies, 5-second budget, retries) and
checked on the bus with build/kfgate-tail; outbound through build/kfgate-send
and a fake WeChat API server (token, stable_token, gettoken, custom/send,
message/send, with injectable errors and call counters).

Encrypted requests are built here with python3-cryptography (AES-256-CBC, no
library padding, the 32-byte PKCS#7 variant done by hand); the WeCom vectors
are Tencent's published WXBizMsgCrypt samples.

  test_mp_verification            plain echo, in every mode; bad signature: 403, no echo
  test_wecom_verification_official  decrypt-and-echo of the official vector, exact bytes
  test_wecom_post_official        the official POST vector published field by field
  test_mp_types_every_mode        every message type and event of §5 in plain,
                                  compatible and safe mode, field by field on the bus
  test_negative_cases             each refusal: 4xx, nothing published, code named in the log
  test_retries_published_once     sequential and overlapping retries: acked, published once
  test_passive_reply_encrypted    an answer within the window comes back in the HTTP
                                  response as a valid signed encrypted envelope
  test_late_reply_through_api     after the window: `success`, then custom/send
  test_token_refresh_and_errors   40001/40014/42001 -> one refresh + one retry; 45015,
                                  45009, 45047, 40003 final, one call each; -1 retried
                                  by the host with backoff
  test_token_single_flight_and_expiry  a burst before the first token: one token
                                  call; refreshed ahead of expiry
  test_token_config_error_and_health  40125 from the token endpoint: final, and the
                                  instance reports unhealthy on /readyz with the code
  test_passive_reply_matched_by_reply_to  two open messages of one user answered in
                                  reverse order: each answer in its own HTTP response
  test_music_and_news             music passive reply (decrypted by @wecom/crypto when
                                  installed, else by hand), music through custom/send,
                                  news through WeCom message/send
"""
import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.etree import ElementTree

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from conftest import ROOT, Gateway, render_config

# WECHAT_SO: another build of the plugin (e.g. one with ASan) for a debugging run
WECHAT_SO = os.environ.get("WECHAT_SO") or os.path.join(ROOT, "build", "plugins", "wechat.so")
TAIL = os.path.join(ROOT, "build", "kfgate-tail")
SEND = os.path.join(ROOT, "build", "kfgate-send")

# Tencent's WeCom sample
W_TOKEN = "QDG6eK"
W_CORP = "wx5823bf96d3bd56c7"
W_AES = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C"
W_VERIFY = ("msg_signature=5c45ff5e21c57e6ad56bac8758b79b1d9ac89fd3&timestamp=1409659589&"
            "nonce=263014780&echostr=P9nAzCzyDtyTWESHep1vC5X9xho%2FqYX3Zpb4yKa9SKld1DsH3Iyt3"
            "tP3zNdtp%2B4RPcs8TgAE7OaBO%2BFZXvnaqQ%3D%3D")
W_POST_Q = ("msg_signature=477715d11cdb4164915debcba66cb864d751f3e6&timestamp=1409659813&"
            "nonce=1372623149")
W_POST_BODY = (
    "<xml><ToUserName><![CDATA[wx5823bf96d3bd56c7]]></ToUserName><Encrypt><![CDATA["
    "RypEvHKD8QQKFhvQ6QleEB4J58tiPdvo+rtK1I9qca6aM/wvqnLSV5zEPeusUiX5L5X/0lWfrf0QADHHhGd3"
    "QczcdCUpj911L3vg3W/sYYvuJTs3TUUkSUXxaccAS0qhxchrRYt66wiSpGLYL42aM6A8dTT+6k4aSknmPj48"
    "kzJs8qLjvd4Xgpue06DOdnLxAUHzM6+kDZ+HMZfJYuR+LtwGc2hgf5gsijff0ekUNXZiqATP7PF5mZxZ3Izo"
    "un1s4zG4LUMnvw2r+KqCKIw+3IQH03v+BCA9nMELNqbSf6tiWSrXJB3LAVGUcallcrw8V2t9EL4EhzJWrQUa"
    "x5wLVMNS0+rUPA3k22Ncx4XXZS9o0MBH27Bo6BpNelZpS+/uh9KsNlY6bHCmJU9p8g7m3fVKn28H3KDYA5Pl"
    "/T8Z1ptDAVe0lXdQ2YoyyH2uyPIGHBZZIs2pDBS8R07+qN+E7Q==]]></Encrypt><AgentID><![CDATA[218"
    "]]></AgentID></xml>")

# Our MP test account (the MP sample key: its last symbol has non-zero spare bits)
M_TOKEN = "pamtest"
M_APPID = "wxb11529c136998cb6"
M_AES = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
M_SECRET = "mp-secret-1"

TENANT = "acme"


# ---------------------------------------------------------------------------
# WeChat's side of the crypto

def aes_key(k43):
    return base64.b64decode(k43 + "=")


def sha1sig(*parts):
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def encrypt(k43, msg, rid, rnd=b"0123456789abcdef"):
    key = aes_key(k43)
    m = msg.encode() if isinstance(msg, str) else msg
    frame = rnd + struct.pack(">I", len(m)) + m + rid.encode()
    pad = 32 - len(frame) % 32
    frame += bytes([pad]) * pad
    e = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(e.update(frame) + e.finalize()).decode()


def raw_encrypt(k43, frame):
    key = aes_key(k43)
    e = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(e.update(frame) + e.finalize()).decode()


def decrypt(k43, b64, rid):
    """The checks WeChat makes on a reply (wechat.md §10.4)."""
    key = aes_key(k43)
    ct = base64.b64decode(b64, validate=True)
    assert len(ct) % 32 == 0 and len(ct) >= 32
    d = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    pt = d.update(ct) + d.finalize()
    pad = pt[-1]
    assert 1 <= pad <= 32 and pt[-pad:] == bytes([pad]) * pad
    pt = pt[:-pad]
    n = struct.unpack(">I", pt[16:20])[0]
    assert pt[20 + n:].decode() == rid
    return pt[20:20 + n].decode()


def q(**kw):
    return urllib.parse.urlencode(kw, quote_via=urllib.parse.quote, safe="")


# ---------------------------------------------------------------------------
# The fake WeChat API

class FakeAPI:
    def __init__(self, expires_in=7200):
        self.lock = threading.Lock()
        self.calls = {}          # path -> count
        self.sent = []           # (path, token, body dict)
        self.inject = []         # errcodes for the next send calls
        self.expires_in = expires_in
        self.tokens = 0
        self.current = {}        # appid/corpid -> its valid token
        self.token_delay = 0.0   # seconds the token endpoints take
        api = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def answer(self, obj):
                b = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

            def handle_any(self, body):
                u = urllib.parse.urlsplit(self.path)
                qs = urllib.parse.parse_qs(u.query)
                with api.lock:
                    api.calls[u.path] = api.calls.get(u.path, 0) + 1
                if u.path in ("/cgi-bin/token", "/cgi-bin/stable_token", "/cgi-bin/gettoken"):
                    if api.token_delay:
                        time.sleep(api.token_delay)
                    force = u.path == "/cgi-bin/token"      # /token rotates on every call
                    if u.path == "/cgi-bin/stable_token":
                        req = json.loads(body)
                        ok = req.get("appid") == M_APPID and req.get("secret") == M_SECRET
                        force = bool(req.get("force_refresh"))
                        who = M_APPID
                    elif u.path == "/cgi-bin/gettoken":
                        ok = qs.get("corpid") == [W_CORP] and qs.get("corpsecret") == ["wc-secret"]
                        who = W_CORP
                    else:
                        ok = qs.get("appid") == [M_APPID] and qs.get("secret") == [M_SECRET]
                        who = M_APPID
                    if not ok:
                        return self.answer({"errcode": 40125, "errmsg": "invalid appsecret"})
                    with api.lock:
                        if force or who not in api.current:
                            api.tokens += 1
                            api.current[who] = "TOKEN-%d" % api.tokens
                        tok = api.current[who]
                    return self.answer({"access_token": tok, "expires_in": api.expires_in})
                if u.path in ("/cgi-bin/message/custom/send", "/cgi-bin/message/send"):
                    tok = qs.get("access_token", [""])[0]
                    with api.lock:
                        api.sent.append((u.path, tok, json.loads(body)))
                        err = api.inject.pop(0) if api.inject else 0
                        valid = tok in api.current.values()
                    if err == 0 and not valid:
                        err = 40001
                    if err:
                        return self.answer({"errcode": err, "errmsg": "injected %d" % err})
                    return self.answer({"errcode": 0, "errmsg": "ok"})
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self):
                self.handle_any(b"")

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                self.handle_any(self.rfile.read(n))

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.t = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.t.start()

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.srv.server_address[1]

    def count(self, path):
        with self.lock:
            return self.calls.get(path, 0)

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


# ---------------------------------------------------------------------------
# The daemon

def instances(api_url):
    base = {"kind": "adapter", "type": "wechat", "tenant": TENANT, "api_base": api_url}
    return [
        dict(base, name="mp-any", path="/wx/mp", variant="mp", mode="compatible",
             token=M_TOKEN, encoding_aes_key=M_AES, receive_id=M_APPID, secret=M_SECRET,
             reply_window_ms=0),
        dict(base, name="mp-safe", path="/wx/safe", variant="mp", mode="safe",
             token=M_TOKEN, encoding_aes_key=M_AES, receive_id=M_APPID, secret=M_SECRET,
             reply_window_ms=0),
        dict(base, name="mp-plain", path="/wx/plain", variant="mp", mode="plain",
             token=M_TOKEN, secret=M_SECRET, reply_window_ms=0),
        dict(base, name="mp-reply", path="/wx/reply", variant="mp", mode="compatible",
             token=M_TOKEN, encoding_aes_key=M_AES, receive_id=M_APPID, secret=M_SECRET,
             reply_window_ms=4000),
        dict(base, name="mp-late", path="/wx/late", variant="mp", token=M_TOKEN,
             encoding_aes_key=M_AES, receive_id=M_APPID, secret=M_SECRET,
             reply_window_ms=100),
        dict(base, name="wecom", path="/wx/wecom", variant="wecom", token=W_TOKEN,
             encoding_aes_key=W_AES, receive_id=W_CORP, secret="wc-secret", agent_id=1000002,
             reply_window_ms=0),
        dict(base, name="mp-burst", path="/wx/burst", variant="mp", token=M_TOKEN,
             encoding_aes_key=M_AES, receive_id=M_APPID, secret=M_SECRET, reply_window_ms=0),
        dict(base, name="mp-badsecret", path="/wx/bad", variant="mp", token=M_TOKEN,
             encoding_aes_key=M_AES, receive_id=M_APPID, secret="not-the-secret",
             reply_window_ms=0),
    ]


@pytest.fixture(scope="module")
def api():
    a = FakeAPI()
    yield a
    a.close()


@pytest.fixture(scope="module")
def gw(api):
    root = tempfile.mkdtemp(prefix="kfc-wx-", dir="/tmp")
    insts = instances(api.url)
    g = Gateway(root, plugins=[(WECHAT_SO, "wechat.so")], instances=insts, workers=2)
    text = render_config(g.plugin_dir, g.http_port, g.admin_port, instances=insts, workers=2,
                         workdir=root)
    text = text.replace("[bus]\n", "[bus]\nretry_max = 4\nretry_base_ms = 100\n"
                                   "retry_cap_ms = 300\n", 1)
    g.write_config(text=text)
    g.start()
    yield g
    died = not g.alive()
    g.stop()
    if died or g.proc.returncode not in (0, None):
        print("kfgate exited with %s; log tail:\n%s" % (g.proc.returncode, g.log()[-6000:]))
    shutil.rmtree(root, ignore_errors=True)


def http(gw, method, path, query="", body=b"", timeout=6):
    if isinstance(body, str):
        body = body.encode()
    target = path + ("?" + query if query else "")
    data = ("%s %s HTTP/1.1\r\nHost: wx\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n"
            % (method, target, len(body))).encode() + body
    return gw.req(data, timeout=timeout)


def tail(gw, instance, wait_for=None, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([TAIL, "--from", "1", "--idle", "300", "--topic",
                              "%s/wechat/%s" % (TENANT, instance),
                              "--feed", "ipc://%s/feed.ipc" % gw.dir,
                              "--replay", "ipc://%s/replay.ipc" % gw.dir],
                             capture_output=True, text=True, timeout=20)
        recs = [json.loads(ln)["envelope"] for ln in out.stdout.splitlines() if ln.strip()]
        if wait_for is None or wait_for(recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


def inbound(gw, instance, wait_for=None, timeout=5):
    return [r for r in tail(gw, instance, wait_for, timeout) if r.get("dir") == "in"]


def by_idem(gw, instance, idem, timeout=5):
    recs = inbound(gw, instance, lambda rs: any(r.get("idem") == idem for r in rs), timeout)
    got = [r for r in recs if r.get("idem") == idem]
    assert got, "no record with idem %r in %r" % (idem, recs)
    return got


def send_outbound(gw, env):
    out = subprocess.run([SEND, "--outbound", "ipc://%s/outbound.ipc" % gw.dir],
                         input=json.dumps(env) + "\n", capture_output=True, text=True,
                         timeout=20)
    ans = json.loads(out.stdout.splitlines()[0])
    assert ans["ok"], ans
    return ans


def receipts(gw, instance, ref, want, timeout=10):
    def got(rs):
        return want in [r["status"] for r in rs if r.get("type") == "status" and r.get("ref") == ref]
    recs = tail(gw, instance, got, timeout)
    return [r for r in recs if r.get("type") == "status" and r.get("ref") == ref]


# ---------------------------------------------------------------------------
# Request builders

def xml_msg(msg_type, fields, frm="oUser1", to="gh_test", ct=1700000000):
    body = "".join("<%s><![CDATA[%s]]></%s>" % (k, v, k) if not isinstance(v, int)
                   else "<%s>%d</%s>" % (k, v, k) for k, v in fields.items())
    return ("<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[%s]]>"
            "</FromUserName><CreateTime>%d</CreateTime><MsgType><![CDATA[%s]]></MsgType>%s</xml>"
            % (to, frm, ct, msg_type, body))


def mp_request(mode, inner, ts="1700000000", nonce="584930", token=M_TOKEN, appid=M_APPID):
    """(query, body) of an MP POST in plain, compatible or safe form."""
    sig = sha1sig(token, ts, nonce)
    if mode == "plain":
        return q(signature=sig, timestamp=ts, nonce=nonce, openid="oUser1"), inner
    enc = encrypt(M_AES, inner, appid)
    msig = sha1sig(token, ts, nonce, enc)
    query = q(signature=sig, timestamp=ts, nonce=nonce, openid="oUser1", encrypt_type="aes",
              msg_signature=msig)
    if mode == "compatible":
        # plaintext fields and Encrypt in one document
        body = inner.replace("</xml>", "<Encrypt><![CDATA[%s]]></Encrypt></xml>" % enc)
    else:
        body = "<xml><ToUserName><![CDATA[gh_test]]></ToUserName><Encrypt><![CDATA[%s]]>" \
               "</Encrypt></xml>" % enc
    return query, body


def wecom_request(inner, ts="1700000000", nonce="1234567", corp=W_CORP, agent="1000002"):
    enc = encrypt(W_AES, inner, corp)
    msig = sha1sig(W_TOKEN, ts, nonce, enc)
    body = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><Encrypt><![CDATA[%s]]></Encrypt>"
            "<AgentID><![CDATA[%s]]></AgentID></xml>" % (W_CORP, enc, agent))
    return q(msg_signature=msig, timestamp=ts, nonce=nonce), body


def acked(r):
    return r.status == 200 and r.body in (b"success", b"")


_ids = [int(time.time() * 1000) % 10 ** 9 * 1000]


def new_id():
    _ids[0] += 1
    return _ids[0]


# ---------------------------------------------------------------------------
# Verification

def test_mp_verification(gw):
    ts, nonce = "1409304348", "xxxxxx"
    good = q(signature=sha1sig(M_TOKEN, ts, nonce), timestamp=ts, nonce=nonce,
             echostr="5837397749283+1/=")
    for path in ("/wx/mp", "/wx/safe", "/wx/plain"):
        r = http(gw, "GET", path, good)
        assert r.status == 200 and r.body == b"5837397749283+1/=", (path, r)
    mark = gw.log_mark()
    bad = q(signature=sha1sig(M_TOKEN, ts, nonce + "1"), timestamp=ts, nonce=nonce,
            echostr="5837397749283")
    r = http(gw, "GET", "/wx/mp", bad)
    assert r.status == 403 and b"5837397749283" not in r.body
    gw.wait_log(r"-40001 ValidateSignature_Error", since=mark)


def test_wecom_verification_official(gw):
    r = http(gw, "GET", "/wx/wecom", W_VERIFY)
    assert r.status == 200, r
    assert r.body == b"1616140317555161061"
    # a raw '+' is a '+' (decoded once, not as a form): same answer
    r = http(gw, "GET", "/wx/wecom", W_VERIFY.replace("%2B", "+"))
    assert r.status == 200 and r.body == b"1616140317555161061"
    # '+' turned into a space on the way: the signature no longer matches
    r = http(gw, "GET", "/wx/wecom", W_VERIFY.replace("%2B", "%20", 1))
    assert r.status == 403 and r.body == b""
    # decoded twice would be wrong too: %252B is the three characters %2B
    r = http(gw, "GET", "/wx/wecom", W_VERIFY.replace("%2B", "%252B", 1))
    assert r.status == 403 and r.body == b""
    # our own echostr for another corp id: -40005
    echo = encrypt(W_AES, "42", "ww_other")
    mark = gw.log_mark()
    r = http(gw, "GET", "/wx/wecom", q(msg_signature=sha1sig(W_TOKEN, "1", "2", echo),
                                      timestamp="1", nonce="2", echostr=echo))
    assert r.status == 400 and r.body == b""
    gw.wait_log(r"-40005 ValidateCorpid_Error", since=mark)


def test_wecom_post_official(gw):
    r = http(gw, "POST", "/wx/wecom", W_POST_Q, W_POST_BODY)
    assert acked(r), r
    rec = by_idem(gw, "wecom", "4561255354251345929")
    assert len(rec) == 1
    e = rec[0]
    assert e["type"] == "message" and e["channel"] == "wechat" and e["tenant"] == TENANT
    assert e["sender"]["id"] == "mycreate" and e["conversation"]["id"] == "mycreate"
    assert e["recipient"]["id"] == W_CORP
    assert e["channel_msg_id"] == "4561255354251345929"
    assert e["ts"]["channel"] == 1409659813000
    assert e["channel_data"]["AgentID"] == 218
    assert e["parts"] == [{"kind": "text", "text": "hello"}]


# ---------------------------------------------------------------------------
# Every type and event of §5, in each MP mode

def cases():
    """(msg_type, fields, check(envelope)) for every §5 type and event."""
    def text(e):
        assert e["type"] == "message" and e["parts"] == [{"kind": "text", "text": "你好 <&> ]]> x"}]

    three_days = 3 * 24 * 3600 * 1000

    def image(e):
        p = e["parts"][0]
        assert p["kind"] == "image" and p["media_id"] == "MEDIA_IMG" and p["url"] == "http://mmbiz/x.jpg"
        assert abs(p["expires"] - e["ts"]["accepted"] - three_days) < 5000, p   # temporary media

    def voice(e):
        assert e["parts"][0]["kind"] == "voice" and e["parts"][0]["media_id"] == "MEDIA_V"
        assert e["parts"][0]["mime"] == "audio/amr" and e["parts"][0]["format"] == "amr"
        assert abs(e["parts"][0]["expires"] - e["ts"]["accepted"] - three_days) < 5000
        assert e["parts"][1] == {"kind": "text", "text": "语音识别"}

    def video(e):
        p = e["parts"][0]
        assert p["kind"] == "video" and p["media_id"] == "MV" and p["thumb_media_id"] == "TH"

    def location(e):
        p = e["parts"][0]
        assert p["kind"] == "location" and abs(p["lat"] - 23.134521) < 1e-9
        assert abs(p["lon"] - 113.358803) < 1e-9 and p["label"] == "广州" and p["scale"] == 20

    def link(e):
        p = e["parts"][0]
        assert p == {"kind": "link", "url": "https://example.com/a", "title": "T",
                     "description": "D"}, p

    def ev(name, key=None, **value):
        def check(e):
            assert e["type"] == "event"
            p = e["parts"][0]
            assert p["kind"] == "event" and p["name"] == name, p
            if key is not None:
                assert p["key"] == key, p
            for k, v in value.items():
                assert p["value"][k] == v, p
        return check

    def no_key(check):
        def f(e):
            check(e)
            assert "key" not in e["parts"][0] and len(e["parts"]) == 1, e["parts"]
        return f

    def location_event(e):
        ev("location", latitude="23.137466", longitude="113.352425", precision="119.385040")(e)
        p = e["parts"][1]
        assert p["kind"] == "location" and abs(p["lat"] - 23.137466) < 1e-9
        assert abs(p["lon"] - 113.352425) < 1e-9

    def unknown(e):
        assert e["type"] == "event"
        assert e["parts"][0]["name"] == "wechat_unknown" and e["parts"][0]["key"] == "file"
        assert "<MsgType><![CDATA[file]]></MsgType>" in base64.b64decode(
            e["raw"]["body"]["$bin"]).decode()

    return [
        ("text", {"Content": "你好 <&> ]]]]><![CDATA[> x", "MsgId": None}, text),
        ("image", {"PicUrl": "http://mmbiz/x.jpg", "MediaId": "MEDIA_IMG", "MsgId": None}, image),
        ("voice", {"MediaId": "MEDIA_V", "Format": "amr", "Recognition": "语音识别",
                   "MsgId": None}, voice),
        ("video", {"MediaId": "MV", "ThumbMediaId": "TH", "MsgId": None}, video),
        ("shortvideo", {"MediaId": "MV", "ThumbMediaId": "TH", "MsgId": None}, video),
        ("location", {"Location_X": "23.134521", "Location_Y": "113.358803", "Scale": "20",
                      "Label": "广州", "MsgId": None}, location),
        ("link", {"Title": "T", "Description": "D", "Url": "https://example.com/a",
                  "MsgId": None}, link),
        ("file", {"Title": "a.pdf", "MsgId": None}, unknown),
        ("event", {"Event": "subscribe"}, no_key(ev("subscribe"))),
        ("event", {"Event": "subscribe", "EventKey": "qrscene_777", "Ticket": "TK"},
         ev("subscribe", "777", scene="777", ticket="TK")),
        ("event", {"Event": "unsubscribe"}, no_key(ev("unsubscribe"))),
        ("event", {"Event": "SCAN", "EventKey": "888", "Ticket": "TK"},
         ev("scan", "888", scene="888")),
        ("event", {"Event": "LOCATION", "Latitude": "23.137466", "Longitude": "113.352425",
                   "Precision": "119.385040"}, location_event),
        ("event", {"Event": "CLICK", "EventKey": "V1001_TODAY"}, ev("menu_click", "V1001_TODAY")),
        ("event", {"Event": "VIEW", "EventKey": "https://x.y/z", "MenuId": "M9"},
         ev("menu_view", "https://x.y/z", menu_id="M9")),
        ("event", {"Event": "TEMPLATESENDJOBFINISH", "MsgID": "200163836",
                   "Status": "failed:user block"},
         ev("template_send_job_finish", "200163836", status="failed:user block")),
        ("event", {"Event": "some_new_event"}, None),
    ]


def idem_part(s):
    return s.replace("%", "%25").replace(":", "%3A")


@pytest.mark.parametrize("mode,path,instance", [("plain", "/wx/plain", "mp-plain"),
                                                ("compatible", "/wx/mp", "mp-any"),
                                                ("safe", "/wx/safe", "mp-safe"),
                                                ("wecom", "/wx/wecom", "wecom")])
def test_mp_types_every_mode(gw, mode, path, instance):
    sent = []
    for mt, fields, check in cases():
        fields = dict(fields)
        ct = 1700000000 + new_id() % 100000
        msgid = None
        if "MsgId" in fields:
            msgid = str(new_id()) + "123456789"     # beyond 2^53
            fields["MsgId"] = msgid
        if mode == "wecom":
            query, body = wecom_request(xml_msg(mt, fields, ct=ct))
        else:
            query, body = mp_request(mode, xml_msg(mt, fields, ct=ct))
        r = http(gw, "POST", path, query, body)
        assert acked(r), (mt, fields, r, gw.log()[-2000:])
        idem = msgid or "oUser1:%d:%s:%s" % (ct, idem_part(fields["Event"]),
                                             idem_part(fields.get("EventKey", "")))
        if mode == "wecom" and not msgid:
            idem += ":"                     # WeCom adds the (here absent) AgentID
        sent.append((idem, ct, msgid, check))
    want = {i for i, _, _, _ in sent}
    recs = inbound(gw, instance, lambda rs: want <= {r.get("idem") for r in rs})
    for idem, ct, msgid, check in sent:
        got = [r for r in recs if r.get("idem") == idem]
        assert len(got) == 1, (idem, got)
        e = got[0]
        assert e["conversation"]["id"] == "oUser1" and e["sender"]["id"] == "oUser1"
        assert e["recipient"]["id"] == "gh_test"
        assert e["ts"]["channel"] == ct * 1000
        if msgid:
            assert e["channel_msg_id"] == msgid
        if check:
            check(e)
        else:
            assert e["type"] == "event" and e["parts"][0]["name"] == "wechat_unknown"
            assert e["parts"][0]["key"] == "some_new_event"


def test_wecom_event_and_kf(gw):
    ct = 1700000000 + new_id() % 100000
    inner = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><FromUserName><![CDATA[zhangsan]]>"
             "</FromUserName><CreateTime>%d</CreateTime><MsgType><![CDATA[event]]></MsgType>"
             "<Event><![CDATA[click]]></Event><EventKey><![CDATA[K1]]></EventKey>"
             "<AgentID>1000002</AgentID></xml>" % (W_CORP, ct))
    r = http(gw, "POST", "/wx/wecom", *wecom_request(inner))
    assert acked(r), r
    e = by_idem(gw, "wecom", "zhangsan:%d:click:K1:1000002" % ct)[0]
    assert e["parts"][0] == {"kind": "event", "name": "menu_click", "key": "K1"}
    assert e["channel_data"]["AgentID"] == 1000002
    inner = ("<xml><ToUserName><![CDATA[%s]]></ToUserName><CreateTime>%d</CreateTime>"
             "<MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event>"
             "<Token><![CDATA[ENCApHxnGDNAVNY4]]></Token><OpenKfId><![CDATA[wkAB]]></OpenKfId>"
             "</xml>" % (W_CORP, ct))
    r = http(gw, "POST", "/wx/wecom", *wecom_request(inner))
    assert acked(r), r
    e = by_idem(gw, "wecom", "wkAB:%d:kf_msg_or_event:ENCApHxnGDNAVNY4:" % ct)[0]
    assert e["parts"][0]["name"] == "kf_msg_or_event"
    assert e["parts"][0]["value"] == {"token": "ENCApHxnGDNAVNY4", "open_kfid": "wkAB"}


# ---------------------------------------------------------------------------
# Refusals

def negatives():
    ts, nonce = "1700000000", "584930"
    inner = lambda: xml_msg("text", {"Content": "neg", "MsgId": str(new_id())})  # noqa: E731
    out = []

    def safe(body_enc, sig_over=None, extra_q=None):
        msig = sha1sig(M_TOKEN, ts, nonce, sig_over if sig_over is not None else body_enc)
        qq = dict(timestamp=ts, nonce=nonce, encrypt_type="aes", msg_signature=msig)
        qq.update(extra_q or {})
        return q(**qq), ("<xml><ToUserName>gh</ToUserName><Encrypt><![CDATA[%s]]></Encrypt>"
                         "</xml>" % body_enc)

    good = encrypt(M_AES, inner(), M_APPID)
    out.append(("no-encrypt", "/wx/safe", q(timestamp=ts, nonce=nonce, encrypt_type="aes",
                                            msg_signature="0" * 40),
                "<xml><ToUserName>gh</ToUserName></xml>", 400, "-40002 ParseXml_Error"))
    out.append(("not-xml", "/wx/safe", safe(good)[0], "hello", 400, "-40002 ParseXml_Error"))
    qq, b = safe(good)
    out.append(("bad-msg-signature", "/wx/safe", qq.replace("msg_signature=", "msg_signature=f", 1)[:-1],
                b, 403, "-40001 ValidateSignature_Error"))
    # the plain signature where msg_signature belongs
    out.append(("plain-signature-only", "/wx/safe",
                q(signature=sha1sig(M_TOKEN, ts, nonce), timestamp=ts, nonce=nonce,
                  encrypt_type="aes"), b, 403, "-40001 ValidateSignature_Error"))
    # Encrypt left out of the signature
    out.append(("signature-without-encrypt", "/wx/safe",
                q(timestamp=ts, nonce=nonce, encrypt_type="aes",
                  msg_signature=sha1sig(M_TOKEN, ts, nonce)), b, 403,
                "-40001 ValidateSignature_Error"))
    # '+' lost to form decoding: the query is decoded once, so "+" in a
    # signed value stays "+": a sender that form-encodes breaks it
    out.append(("bad-base64", "/wx/safe", *safe("abc!"), 400, "-40010 DecodeBase64_Error"))
    out.append(("short-ciphertext", "/wx/safe", *safe(base64.b64encode(b"x" * 16).decode()), 400,
                "-40007 DecryptAES_Error"))
    frame = b"r" * 16 + struct.pack(">I", 2) + b"hi" + M_APPID.encode()
    frame += b"z" * (63 - len(frame)) + b"\x00"
    out.append(("pad-zero", "/wx/safe", *safe(raw_encrypt(M_AES, frame)), 400,
                "-40007 DecryptAES_Error"))
    frame = b"r" * 16 + struct.pack(">I", 0x7fffffff) + b"hi" + M_APPID.encode()
    frame += bytes([64 - len(frame)]) * (64 - len(frame))
    out.append(("length-overflow", "/wx/safe", *safe(raw_encrypt(M_AES, frame)), 400,
                "-40008 IllegalBuffer"))
    out.append(("wrong-appid", "/wx/safe", *safe(encrypt(M_AES, inner(), "wx0000000000000000")),
                400, "-40005 ValidateAppid_Error"))
    xxe = ('<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
           '<xml><ToUserName>gh</ToUserName><FromUserName>oUser1</FromUserName><CreateTime>1'
           '</CreateTime><MsgType>text</MsgType><Content>&x;</Content><MsgId>%d</MsgId></xml>'
           % new_id())
    out.append(("xxe-inside", "/wx/safe", *safe(encrypt(M_AES, xxe, M_APPID)), 400,
                "-40002 ParseXml_Error"))
    out.append(("xxe-plain", "/wx/plain", q(signature=sha1sig(M_TOKEN, ts, nonce), timestamp=ts,
                                            nonce=nonce), xxe, 400, "-40002 ParseXml_Error"))
    out.append(("plain-bad-signature", "/wx/plain",
                q(signature=sha1sig(M_TOKEN, ts, nonce + "0"), timestamp=ts, nonce=nonce),
                inner(), 403, "-40001 ValidateSignature_Error"))
    out.append(("plain-into-safe", "/wx/safe",
                q(signature=sha1sig(M_TOKEN, ts, nonce), timestamp=ts, nonce=nonce),
                inner(), 403, "plain request refused"))
    out.append(("uppercase-signature", "/wx/plain",
                q(signature=sha1sig(M_TOKEN, ts, nonce).upper(), timestamp=ts, nonce=nonce),
                inner(), 403, "-40001 ValidateSignature_Error"))
    out.append(("wecom-wrong-corp", "/wx/wecom", *wecom_request(inner(), corp="ww_other"), 400,
                "-40005 ValidateCorpid_Error"))
    return out


def test_negative_cases(gw):
    for name, path, query, body, status, logtext in negatives():
        inst = {"/wx/safe": "mp-safe", "/wx/plain": "mp-plain", "/wx/wecom": "wecom"}[path]
        before = len(inbound(gw, inst))
        mark = gw.log_mark()
        r = http(gw, "POST", path, query, body)
        assert r.status == status, (name, r, gw.log()[mark:])
        assert r.body == b"", (name, r)
        gw.wait_log(r"rejected: .*" + logtext.replace("(", r"\("), since=mark)
        time.sleep(0.05)
        assert len(inbound(gw, inst)) == before, name


# ---------------------------------------------------------------------------
# Retries

def test_retries_published_once(gw):
    # sequential: WeChat's three attempts of one message
    msgid = str(new_id())
    query, body = mp_request("safe", xml_msg("text", {"Content": "again", "MsgId": msgid}))
    for _ in range(3):
        r = http(gw, "POST", "/wx/safe", query, body)
        assert acked(r), r
    assert len(by_idem(gw, "mp-safe", msgid)) == 1
    # overlapping: retries that arrive while the first one is still open,
    # each with its own nonce (so its own ciphertext and signature)
    msgid = str(new_id())
    inner = xml_msg("text", {"Content": "overlap", "MsgId": msgid})
    reqs = [mp_request("safe", inner, nonce=str(100000 + i)) for i in range(6)]
    results = [None] * len(reqs)

    def go(i):
        results[i] = http(gw, "POST", "/wx/safe", *reqs[i])

    ts = [threading.Thread(target=go, args=(i,)) for i in range(len(reqs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(acked(r) for r in results), results
    time.sleep(0.2)
    assert len(by_idem(gw, "mp-safe", msgid)) == 1
    # events: same FromUserName + CreateTime + Event + EventKey is one event
    ct = 1700000000 + new_id() % 100000
    inner = xml_msg("event", {"Event": "CLICK", "EventKey": "K"}, ct=ct)
    for i in range(3):
        assert acked(http(gw, "POST", "/wx/safe", *mp_request("safe", inner, nonce=str(i + 7))))
    assert len(by_idem(gw, "mp-safe", "oUser1:%d:CLICK:K" % ct)) == 1


# ---------------------------------------------------------------------------
# Replies

def test_passive_reply_encrypted(gw):
    msgid = str(new_id())
    inner = xml_msg("text", {"Content": "ping", "MsgId": msgid}, frm="oReply1")
    query, body = mp_request("safe", inner)
    # a tiny core: wait for the record on the feed, answer it at once
    tailer = subprocess.Popen([TAIL, "--topic", "%s/wechat/mp-reply" % TENANT, "--count", "1",
                               "--feed", "ipc://%s/feed.ipc" % gw.dir,
                               "--replay", "ipc://%s/replay.ipc" % gw.dir],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    answer = {}

    def core():
        line = tailer.stdout.readline()
        env = json.loads(line)["envelope"]
        answer["in"] = env
        answer["ack"] = send_outbound(gw, {
            "v": 1, "instance": "mp-reply", "dir": "out", "type": "message",
            "conversation": {"id": env["conversation"]["id"]}, "reply_to": env["id"],
            "idem": "echo:" + env["id"], "parts": [{"kind": "text", "text": "pong ]]> <b>"}]})

    t = threading.Thread(target=core)
    t.start()
    t0 = time.monotonic()
    r = http(gw, "POST", "/wx/reply", query, body)
    took = time.monotonic() - t0
    t.join(10)
    tailer.wait(5)
    assert r.status == 200 and took < 5.0, (r, took)
    assert answer["in"]["deadline"] > answer["in"]["ts"]["accepted"]
    # WeChat's checks of an encrypted passive reply
    env = ElementTree.fromstring(r.body)
    enc = env.find("Encrypt").text
    stamp = env.find("TimeStamp").text
    nonce = env.find("Nonce").text
    assert [c.tag for c in env] == ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]
    assert env.find("MsgSignature").text == sha1sig(M_TOKEN, stamp, nonce, enc)
    assert abs(int(stamp) - time.time()) < 60          # seconds, not ms
    x = ElementTree.fromstring(decrypt(M_AES, enc, M_APPID))
    assert x.find("ToUserName").text == "oReply1"
    assert x.find("FromUserName").text == "gh_test"
    assert x.find("MsgType").text == "text"
    assert x.find("Content").text == "pong ]]> <b>"
    ref = answer["ack"]["id"]
    assert "sent" in [s["status"] for s in receipts(gw, "mp-reply", ref, "sent")]


def test_late_reply_through_api(gw, api):
    msgid = str(new_id())
    query, body = mp_request("safe", xml_msg("text", {"Content": "late", "MsgId": msgid},
                                             frm="oLate1"))
    r = http(gw, "POST", "/wx/late", query, body)
    assert acked(r), r
    e = by_idem(gw, "mp-late", msgid)[0]
    n_sent = len(api.sent)
    ack = send_outbound(gw, {"v": 1, "instance": "mp-late", "dir": "out", "type": "message",
                             "conversation": {"id": "oLate1"}, "reply_to": e["id"],
                             "idem": "late:" + e["id"],
                             "parts": [{"kind": "text", "text": "later \"quoted\""}]})
    rs = receipts(gw, "mp-late", ack["id"], "sent")
    assert "sent" in [s["status"] for s in rs], rs
    path, tok, sent = api.sent[n_sent]
    assert path == "/cgi-bin/message/custom/send" and tok.startswith("TOKEN-")
    assert sent == {"touser": "oLate1", "msgtype": "text", "text": {"content": "later \"quoted\""}}
    assert api.count("/cgi-bin/stable_token") >= 1


def test_token_refresh_and_errors(gw, api):
    def out(text, inst="mp-any", to="oUser9"):
        return send_outbound(gw, {"v": 1, "instance": inst, "dir": "out", "type": "message",
                                  "conversation": {"id": to}, "idem": "t:%d" % new_id(),
                                  "parts": [{"kind": "text", "text": text}]})

    # warm: one token for the instance
    ack = out("warm")
    assert "sent" in [s["status"] for s in receipts(gw, "mp-any", ack["id"], "sent")]
    tokens = api.count("/cgi-bin/stable_token")
    sends = len(api.sent)
    # 40001 once: refresh once, retry once, sent
    api.inject = [40001]
    ack = out("after 40001")
    assert "sent" in [s["status"] for s in receipts(gw, "mp-any", ack["id"], "sent")]
    assert api.count("/cgi-bin/stable_token") == tokens + 1
    assert len(api.sent) == sends + 2
    # 45015 (48-hour window): failed, not retried, the code surfaced
    sends = len(api.sent)
    api.inject = [45015]
    ack = out("outside the window")
    rs = receipts(gw, "mp-any", ack["id"], "failed")
    failed = [s for s in rs if s["status"] == "failed"][0]
    assert "45015" in failed.get("code", ""), failed
    assert failed["retriable"] is False
    time.sleep(0.5)
    assert len(api.sent) == sends + 1
    # the other token errors: refresh once, retry once, sent
    for code in (40014, 42001):
        sends = len(api.sent)
        api.inject = [code]
        ack = out("after %d" % code)
        assert "sent" in [s["status"] for s in receipts(gw, "mp-any", ack["id"], "sent")]
        assert len(api.sent) == sends + 2, code
        assert api.sent[-1][1] == api.current[M_APPID]
    # quota, too many messages, bad openid: final, exactly one call, no storm
    for code in (45009, 45047, 40003):
        sends = len(api.sent)
        api.inject = [code]
        ack = out("final %d" % code)
        rs = receipts(gw, "mp-any", ack["id"], "failed")
        failed = [s for s in rs if s["status"] == "failed"][0]
        assert str(code) in failed.get("code", "") and failed["retriable"] is False, failed
        time.sleep(0.5)
        assert len(api.sent) == sends + 1, code
    # -1 (busy): retriable, the host retries with backoff, then sent
    sends = len(api.sent)
    api.inject = [-1, -1]
    ack = out("busy")
    assert "sent" in [s["status"] for s in receipts(gw, "mp-any", ack["id"], "sent")]
    assert len(api.sent) == sends + 3
    # WeCom: gettoken + message/send with agentid
    sends = len(api.sent)
    ack = out("to wecom", inst="wecom", to="zhangsan")
    assert "sent" in [s["status"] for s in receipts(gw, "wecom", ack["id"], "sent")]
    path, tok, body = api.sent[sends]
    assert path == "/cgi-bin/message/send" and api.count("/cgi-bin/gettoken") >= 1
    assert body["touser"] == "zhangsan" and body["agentid"] == 1000002
    assert body["text"] == {"content": "to wecom"}


# ---------------------------------------------------------------------------
# Vectors of a third-party implementation (conformance/wechat/gen_vectors.js,
# @wecom/crypto 1.0.1), committed as vectors.json

VECTORS = os.path.join(ROOT, "conformance", "wechat", "vectors.json")
WECOM_CRYPTO = os.path.join(ROOT, "conformance", "wechat", "node_modules", "@wecom", "crypto")


def test_third_party_vectors(gw):
    with open(VECTORS) as f:
        vec = json.load(f)
    assert vec["mp"] == {"token": M_TOKEN, "key": M_AES, "id": M_APPID}
    for v in vec["vectors"]:
        query = q(signature=sha1sig(M_TOKEN, v["timestamp"], v["nonce"]), timestamp=v["timestamp"],
                  nonce=v["nonce"], openid="oVec1", encrypt_type="aes",
                  msg_signature=v["msg_signature"])
        body = ("<xml><ToUserName><![CDATA[gh_vec]]></ToUserName><Encrypt><![CDATA[%s]]>"
                "</Encrypt></xml>" % v["encrypt"])
        r = http(gw, "POST", "/wx/safe", query, body)
        assert acked(r), (v["name"], r)
    recs = inbound(gw, "mp-safe", lambda rs: sum(r["sender"]["id"] == "oVec1" for r in rs) >= 8)
    mine = {r["idem"]: r for r in recs if r["sender"]["id"] == "oVec1"}
    # each message once (the aligned variant of a vector is a retry of it)
    assert len(mine) == 8, sorted(mine)
    assert mine["7000000000000000001"]["parts"] == [
        {"kind": "text", "text": "第三方 vector ]]> & <ok>"}]
    assert mine["7000000000000000003"]["parts"][1] == {"kind": "text", "text": "腾讯微信团队"}
    assert mine["oVec1:1710000007:subscribe:qrscene_123123"]["parts"][0]["key"] == "123123"
    assert mine["oVec1:1710000008:CLICK:EVENTKEY"]["parts"][0]["name"] == "menu_click"


def test_passive_reply_decrypted_by_third_party(gw):
    """The reply envelope, decrypted and its signature recomputed by
    @wecom/crypto (installed with `npm install` in conformance/wechat)."""
    if not os.path.isdir(WECOM_CRYPTO) or not shutil.which("node"):
        pytest.skip("@wecom/crypto not installed (cd conformance/wechat && npm install)")
    msgid = str(new_id())
    query, body = mp_request("safe", xml_msg("text", {"Content": "ping", "MsgId": msgid},
                                             frm="oReply2"))
    tailer = subprocess.Popen([TAIL, "--topic", "%s/wechat/mp-reply" % TENANT, "--count", "1",
                               "--feed", "ipc://%s/feed.ipc" % gw.dir,
                               "--replay", "ipc://%s/replay.ipc" % gw.dir],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)

    def core():
        env = json.loads(tailer.stdout.readline())["envelope"]
        send_outbound(gw, {"v": 1, "instance": "mp-reply", "dir": "out", "type": "message",
                           "conversation": {"id": env["conversation"]["id"]},
                           "reply_to": env["id"], "idem": "tp:" + env["id"],
                           "parts": [{"kind": "text", "text": "第三方 ok"}]})

    t = threading.Thread(target=core)
    t.start()
    r = http(gw, "POST", "/wx/reply", query, body)
    t.join(10)
    tailer.wait(5)
    assert r.status == 200, r
    env = ElementTree.fromstring(r.body)
    script = ("const c=require(process.argv[1]);const [k,t,ts,n,e,s]=process.argv.slice(2);"
              "if(c.getSignature(t,ts,n,e)!==s)process.exit(3);"
              "process.stdout.write(JSON.stringify(c.decrypt(k,e)))")
    out = subprocess.run(["node", "-e", script, WECOM_CRYPTO, M_AES, M_TOKEN,
                          env.find("TimeStamp").text, env.find("Nonce").text,
                          env.find("Encrypt").text, env.find("MsgSignature").text],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out
    d = json.loads(out.stdout)
    assert d["id"] == M_APPID
    x = ElementTree.fromstring(d["message"])
    assert x.find("ToUserName").text == "oReply2" and x.find("Content").text == "第三方 ok"


def out_env(inst, to, parts):
    return {"v": 1, "instance": inst, "dir": "out", "type": "message",
            "conversation": {"id": to}, "idem": "o:%d" % new_id(), "parts": parts}


def test_token_single_flight_and_expiry(gw, api):
    """A burst of sends before the instance has a token shares one token
    request; a token is renewed ahead of its expiry."""
    api.token_delay = 0.4
    api.expires_in = 2             # margin = half of it: due again after 1 s
    try:
        before = api.count("/cgi-bin/stable_token")
        sends = len(api.sent)
        envs = [out_env("mp-burst", "oBurst%d" % i, [{"kind": "text", "text": "b%d" % i}])
                for i in range(5)]
        out = subprocess.run([SEND, "--outbound", "ipc://%s/outbound.ipc" % gw.dir],
                             input="".join(json.dumps(e) + "\n" for e in envs),
                             capture_output=True, text=True, timeout=20)
        acks = [json.loads(ln) for ln in out.stdout.splitlines()]
        assert len(acks) == 5 and all(a["ok"] for a in acks), out
        for a in acks:
            assert "sent" in [s["status"] for s in receipts(gw, "mp-burst", a["id"], "sent")]
        assert api.count("/cgi-bin/stable_token") == before + 1
        assert sorted(b["touser"] for _, _, b in api.sent[sends:]) == \
            ["oBurst%d" % i for i in range(5)]
        time.sleep(1.3)
        ack = send_outbound(gw, out_env("mp-burst", "oBurst9", [{"kind": "text", "text": "x"}]))
        assert "sent" in [s["status"] for s in receipts(gw, "mp-burst", ack["id"], "sent")]
        assert api.count("/cgi-bin/stable_token") == before + 2
    finally:
        api.token_delay = 0.0
        api.expires_in = 7200


def readyz(gw, name):
    r = gw.admin("GET", "/readyz")
    doc = json.loads(r.body)
    return [i for i in doc["instances"] if i["name"] == name][0]


def test_token_config_error_and_health(gw, api):
    assert readyz(gw, "mp-badsecret")["healthy"] is True
    calls = api.count("/cgi-bin/stable_token")
    sends = len(api.sent)
    mark = gw.log_mark()
    ack = send_outbound(gw, out_env("mp-badsecret", "oUser1", [{"kind": "text", "text": "x"}]))
    rs = receipts(gw, "mp-badsecret", ack["id"], "failed")
    failed = [s for s in rs if s["status"] == "failed"][0]
    assert failed.get("code") == "40125" and failed["retriable"] is False, failed
    gw.wait_log(r"access token refresh failed: token request refused errcode=40125", since=mark)
    time.sleep(0.5)
    assert api.count("/cgi-bin/stable_token") == calls + 1      # not retried
    assert len(api.sent) == sends                               # nothing sent
    st = readyz(gw, "mp-badsecret")
    assert st["healthy"] is False and "40125" in st["detail"] and "invalid appsecret" in \
        st["detail"], st
    assert readyz(gw, "mp-any")["healthy"] is True


def passive(gw, instance, path, frm, parts):
    """One safe-mode message to `instance` answered at once by a tiny core
    with `parts`; returns the HTTP answer."""
    query, body = mp_request("safe", xml_msg("text", {"Content": "ping", "MsgId": str(new_id())},
                                             frm=frm))
    tailer = subprocess.Popen([TAIL, "--topic", "%s/wechat/%s" % (TENANT, instance),
                               "--count", "1", "--feed", "ipc://%s/feed.ipc" % gw.dir,
                               "--replay", "ipc://%s/replay.ipc" % gw.dir],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)

    def core():
        env = json.loads(tailer.stdout.readline())["envelope"]
        send_outbound(gw, {"v": 1, "instance": instance, "dir": "out", "type": "message",
                           "conversation": {"id": env["conversation"]["id"]},
                           "reply_to": env["id"], "idem": "p:" + env["id"], "parts": parts})

    t = threading.Thread(target=core)
    t.start()
    r = http(gw, "POST", path, query, body)
    t.join(10)
    tailer.wait(5)
    return r


def decrypt_reply(body):
    """The inner XML of an encrypted reply: @wecom/crypto when installed
    (signature recomputed and compared by it), else our own checks."""
    env = ElementTree.fromstring(body)
    enc, stamp = env.find("Encrypt").text, env.find("TimeStamp").text
    nonce, sig = env.find("Nonce").text, env.find("MsgSignature").text
    if os.path.isdir(WECOM_CRYPTO) and shutil.which("node"):
        script = ("const c=require(process.argv[1]);const [k,t,ts,n,e,s]=process.argv.slice(2);"
                  "if(c.getSignature(t,ts,n,e)!==s)process.exit(3);"
                  "process.stdout.write(JSON.stringify(c.decrypt(k,e)))")
        out = subprocess.run(["node", "-e", script, WECOM_CRYPTO, M_AES, M_TOKEN, stamp, nonce,
                              enc, sig], capture_output=True, text=True, timeout=20)
        assert out.returncode == 0, out
        d = json.loads(out.stdout)
        assert d["id"] == M_APPID
        return ElementTree.fromstring(d["message"])
    assert sig == sha1sig(M_TOKEN, stamp, nonce, enc)
    return ElementTree.fromstring(decrypt(M_AES, enc, M_APPID))


def test_music_and_news(gw, api):
    music = {"kind": "x-wechat-music", "title": "Song", "description": "D & d",
             "url": "http://m.example/x.mp3", "hq_url": "http://m.example/hq.mp3",
             "thumb_media_id": "THUMB1"}
    r = passive(gw, "mp-reply", "/wx/reply", "oMusic1", [music])
    assert r.status == 200, r
    x = decrypt_reply(r.body)
    assert x.find("ToUserName").text == "oMusic1" and x.find("MsgType").text == "music"
    m = x.find("Music")
    assert [c.tag for c in m] == ["Title", "Description", "MusicUrl", "HQMusicUrl",
                                  "ThumbMediaId"]
    assert [c.text for c in m] == ["Song", "D & d", "http://m.example/x.mp3",
                                   "http://m.example/hq.mp3", "THUMB1"]
    # news (one article on MP) as a passive reply
    r = passive(gw, "mp-reply", "/wx/reply", "oNews1",
                [{"kind": "link", "url": "https://e.example/a", "title": "A",
                  "description": "about a", "thumb_url": "https://e.example/a.jpg"}])
    x = decrypt_reply(r.body)
    assert x.find("MsgType").text == "news" and x.find("ArticleCount").text == "1"
    item = x.find("Articles").find("item")
    assert [(c.tag, c.text) for c in item] == [
        ("Title", "A"), ("Description", "about a"), ("PicUrl", "https://e.example/a.jpg"),
        ("Url", "https://e.example/a")]
    # music through custom/send
    sends = len(api.sent)
    ack = send_outbound(gw, out_env("mp-late", "oMusic2", [dict(music, hq_url="")]))
    assert "sent" in [s["status"] for s in receipts(gw, "mp-late", ack["id"], "sent")]
    path, _, body = api.sent[sends]
    assert path == "/cgi-bin/message/custom/send"
    assert body == {"touser": "oMusic2", "msgtype": "music", "music": {
        "title": "Song", "description": "D & d", "musicurl": "http://m.example/x.mp3",
        "hqmusicurl": "http://m.example/x.mp3", "thumb_media_id": "THUMB1"}}
    # news through WeCom message/send
    sends = len(api.sent)
    ack = send_outbound(gw, out_env("wecom", "lisi", [
        {"kind": "link", "url": "https://e.example/%d" % i, "title": "T%d" % i} for i in (1, 2)]))
    assert "sent" in [s["status"] for s in receipts(gw, "wecom", ack["id"], "sent")]
    path, _, body = api.sent[sends]
    assert path == "/cgi-bin/message/send" and body["msgtype"] == "news"
    assert body["agentid"] == 1000002
    assert body["news"]["articles"] == [
        {"title": "T%d" % i, "description": "", "url": "https://e.example/%d" % i, "picurl": ""}
        for i in (1, 2)]
    # music has no WeCom form: failed for good
    ack = send_outbound(gw, out_env("wecom", "lisi", [music]))
    rs = receipts(gw, "wecom", ack["id"], "failed")
    assert [s for s in rs if s["status"] == "failed"][0]["retriable"] is False


def test_passive_reply_matched_by_reply_to(gw):
    """Two messages of one user wait at once; the core answers the second
    first. Each answer must come back in the response of the message it
    answers (reply_to), not in the oldest one of that user."""
    reqs = [mp_request("safe", xml_msg("text", {"Content": "q%d" % i, "MsgId": str(new_id())},
                                       frm="oTwice1"), nonce=str(700 + i)) for i in range(2)]
    tailer = subprocess.Popen([TAIL, "--topic", "%s/wechat/mp-reply" % TENANT, "--count", "2",
                               "--feed", "ipc://%s/feed.ipc" % gw.dir,
                               "--replay", "ipc://%s/replay.ipc" % gw.dir],
                              stdout=subprocess.PIPE, text=True)
    time.sleep(0.3)
    results = [None, None]

    def go(i):
        results[i] = http(gw, "POST", "/wx/reply", *reqs[i])

    def core():
        envs = [json.loads(tailer.stdout.readline())["envelope"] for _ in range(2)]
        for env in reversed(envs):
            text = env["parts"][0]["text"]
            send_outbound(gw, {"v": 1, "instance": "mp-reply", "dir": "out", "type": "message",
                               "conversation": {"id": "oTwice1"}, "reply_to": env["id"],
                               "idem": "tw:" + env["id"],
                               "parts": [{"kind": "text", "text": "answer to " + text}]})

    t = threading.Thread(target=core)
    t.start()
    first = threading.Thread(target=go, args=(0,))
    first.start()
    time.sleep(0.3)                     # q0 is the older waiter
    go(1)
    first.join(10)
    t.join(10)
    tailer.wait(5)
    for i in range(2):
        assert results[i].status == 200, results[i]
        x = decrypt_reply(results[i].body)
        assert x.find("Content").text == "answer to q%d" % i, (i, x.find("Content").text)
