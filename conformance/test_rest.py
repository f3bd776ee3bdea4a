"""REST adapter (adapters/rest, issue 5) against the real daemon: the ingest
API over HTTP (each part kind, batches, every error class with its problem
document, bearer keys and HMAC signatures incl. replayed and stale ones,
idempotent retries, JSON-pointer mapping) and signed outbound webhooks to
local receivers that fail, stall, answer 429 and finally succeed.

Only the standard library: http.client for requests, http.server for the
webhook receivers, build/kfgate-tail and build/kfgate-send for the bus."""
import base64
import email.utils
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ROOT, Gateway, free_port, render_config

REST_SO = os.path.join(ROOT, "build", "plugins", "rest-adapter.so")
TAIL = os.path.join(ROOT, "build", "kfgate-tail")
SEND = os.path.join(ROOT, "build", "kfgate-send")

KEY = "k-live-0123456789"
KEY_ENV = "k-from-env-9876"
READ_KEY = "k-read-only-555"
SECRET = "s3cret-one"
SECRET2 = "s3cret-two"
WH_SECRET = "wh-secret-xyz"
UUID_RX = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

pytestmark = pytest.mark.skipif(not os.path.exists(REST_SO),
                                reason="build/plugins/rest-adapter.so not built")


# ---------------------------------------------------------------------------
# Webhook receivers

class Receiver:
    """A local HTTP server with a script per delivery id: each attempt takes
    the next action ("ok", "500", "400", "stall:<secs>", "block:<gate>"
    (answers 200 once the test sets the gate, or after 4 s), and
    "429:<v>" / "503:<v>" with Retry-After <v>, where "date+<n>" stands for
    the HTTP-date n seconds from now); when the script runs out, "ok".
    Every request is recorded."""

    def __init__(self, default=None):
        self.lock = threading.Lock()
        self.requests = []
        self.scripts = {}
        self.gates = {}
        self.default = default or []    # script for ids without their own
        self.port = free_port()
        rec = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                did = self.headers.get("Kfgate-Delivery-Id", "")
                with rec.lock:
                    script = rec.scripts.setdefault(did, list(rec.default))
                    action = script.pop(0) if script else "ok"
                    rec.requests.append({"t": time.monotonic(), "headers": dict(self.headers),
                                         "body": body, "id": did, "action": action})
                if action.startswith("stall:"):
                    time.sleep(float(action.split(":")[1]))
                    action = "ok"
                elif action.startswith("block:"):
                    rec.gates[action[6:]].wait(4)
                    action = "ok"
                extra = []
                if action == "ok":
                    code = 200
                elif action == "429":
                    code = 429
                    extra.append(("Retry-After", "1"))
                elif ":" in action:
                    code, ra = action.split(":", 1)
                    code = int(code)
                    if ra.startswith("date+"):
                        ra = email.utils.formatdate(time.time() + float(ra[5:]), usegmt=True)
                    extra.append(("Retry-After", ra))
                else:
                    code = int(action)
                try:
                    self.send_response(code)
                    for k, v in extra:
                        self.send_header(k, v)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return "http://127.0.0.1:%d/hook" % self.port

    def script(self, did, actions):
        with self.lock:
            self.scripts[did] = list(actions)

    def attempts(self, did):
        with self.lock:
            return [r for r in self.requests if r["id"] == did]

    def wait_attempts(self, did, n, timeout=15):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.attempts(did)
            if len(got) >= n:
                return got
            time.sleep(0.02)
        raise AssertionError("%d attempts for %s, wanted %d" % (len(self.attempts(did)),
                                                                did, n))

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------------
# The daemon

def instances(rx_main, rx_slow, rx_fast):
    base = {"kind": "adapter", "type": "rest", "tenant": "acme"}
    return [
        dict(base, name="rest-a", path="/api/a",
             api_keys=[KEY, "env:KFG_TEST_REST_KEY"], read_keys=[READ_KEY],
             hmac_secrets=[SECRET, SECRET2], hmac_tolerance_s=60),
        dict(base, name="rest-map", path="/api/map", api_keys=[KEY], keep_raw=True,
             map_conversation="/order/customer_id", map_sender="/order/customer_id",
             map_text="/order/note",
             map_fields=["channel_data.order_id=/order/id",
                         "sender.name=/order/customer/name",
                         "conversation.name=/order/shop~1name"]),
        dict(base, name="rest-lim", path="/api/lim", api_keys=[KEY], max_body=2048,
             max_batch=3, rate_limit=1, rate_burst=2),
        dict(base, name="rest-wh", path="/api/wh", api_keys=[KEY],
             webhook_url=rx_main.url, webhook_allow_private=True,
             webhook_secrets=[WH_SECRET], webhook_timeout_ms=400, webhook_max_attempts=4),
        dict(base, name="rest-slow", path="/api/slow", api_keys=[KEY],
             webhook_url=rx_slow.url, webhook_allow_private=True,
             webhook_secrets=[WH_SECRET], webhook_timeout_ms=5000, webhook_concurrency=1),
        dict(base, name="rest-fast", path="/api/fast", api_keys=[KEY],
             webhook_url=rx_fast.url, webhook_allow_private=True,
             webhook_secrets=[WH_SECRET], webhook_timeout_ms=5000),
        dict(base, name="rest-age", path="/api/age", api_keys=[KEY],
             webhook_url=rx_main.url, webhook_allow_private=True,
             webhook_secrets=[WH_SECRET], webhook_max_age_ms=8000,
             webhook_retry_after_max_s=2),
        dict(base, name="rest-old", path="/api/old", api_keys=[KEY],
             webhook_url=rx_main.url, webhook_allow_private=True,
             webhook_secrets=[WH_SECRET], webhook_max_age_ms=8000),
    ]


def start_gateway(root, insts, env=None):
    gw = Gateway(root, plugins=[(REST_SO, "rest-adapter.so")], instances=insts, workers=2,
                 env=env)
    text = render_config(gw.plugin_dir, gw.http_port, gw.admin_port, instances=insts,
                         workers=2, workdir=root)
    # Fast host retries so the webhook tests run in seconds.
    text = text.replace("[bus]\n", "[bus]\nretry_max = 6\nretry_base_ms = 100\n"
                                   "retry_cap_ms = 400\n", 1)
    gw.write_config(text=text)
    gw.start()
    return gw


@pytest.fixture(scope="module")
def rx():
    r = {"main": Receiver(), "slow": Receiver(default=["stall:1.5"] * 10),
         "fast": Receiver()}
    yield r
    for x in r.values():
        x.close()


@pytest.fixture(scope="module")
def gw(rx):
    root = tempfile.mkdtemp(prefix="kfc-rest-", dir="/tmp")
    g = start_gateway(root, instances(rx["main"], rx["slow"], rx["fast"]),
                      env={"KFG_TEST_REST_KEY": KEY_ENV})
    yield g
    g.stop()
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------
# HTTP

class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Resp %d %r %r>" % (self.status, self.headers, self.body[:300])


def call(gw, method, path, body=None, headers=None, key=KEY, ctype="application/json"):
    h = {}
    if key:
        h["Authorization"] = "Bearer " + key
    if body is not None:
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        if ctype:
            h["Content-Type"] = ctype
    h.update(headers or {})
    c = http.client.HTTPConnection("127.0.0.1", gw.http_port, timeout=10)
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    finally:
        c.close()


def post(gw, path, body, **kw):
    return call(gw, "POST", path, body, **kw)


def assert_problem(r, status, slug, pointer=None, header=None):
    assert r.status == status, r
    assert r.header("Content-Type") == "application/problem+json", r
    doc = r.json
    assert doc["status"] == status
    assert doc["type"] == "https://kfgate.dev/problems/" + slug, doc
    assert doc["title"] and doc["detail"]
    assert doc["instance"].startswith("urn:kfgate:request:")
    if pointer is not None:
        assert doc["errors"][0]["pointer"] == pointer, doc
    if header is not None:
        assert doc["errors"][0]["header"] == header, doc
    return doc


def sign(secret, ts, body):
    if isinstance(body, str):
        body = body.encode()
    return hmac.new(secret.encode(), str(ts).encode() + b"." + body, hashlib.sha256).hexdigest()


def signed(body, secret=SECRET, ts=None):
    ts = int(time.time()) if ts is None else ts
    return {"Kfgate-Timestamp": str(ts), "Kfgate-Signature": "v1=" + sign(secret, ts, body)}


# ---------------------------------------------------------------------------
# The bus

def tail(gw, topic, wait_for=None, timeout=5):
    """Every record of topic from the journal: the envelopes, as dicts."""
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
    recs = tail(gw, "acme/rest/" + instance, lambda rs: any(r["seq"] == seq for r in rs))
    for r in recs:
        if r["seq"] == seq:
            return r
    raise AssertionError("no record %d in %r" % (seq, recs))


def send_outbound(gw, env):
    out = subprocess.run([SEND, "--outbound", "ipc://%s/outbound.ipc" % gw.dir],
                         input=json.dumps(env) + "\n", capture_output=True, text=True,
                         timeout=20)
    ans = json.loads(out.stdout.splitlines()[0])
    assert ans["ok"], ans
    return ans


def receipts(gw, instance, ref, want=None, timeout=10):
    def got(rs):
        st = [r["status"] for r in rs if r.get("type") == "status" and r.get("ref") == ref]
        return want is None or want in st
    recs = tail(gw, "acme/rest/" + instance, got, timeout)
    return [r for r in recs if r.get("type") == "status" and r.get("ref") == ref]


MSG = {"conversation": {"id": "c1"}, "sender": {"id": "u1", "name": "Ann"}, "text": "hello"}


# ---------------------------------------------------------------------------
# Ingest

def test_single_text_message(gw):
    r = post(gw, "/api/a/messages", MSG)
    assert r.status == 202, r
    assert r.header("Content-Type") == "application/json"
    doc = r.json
    assert UUID_RX.match(doc["id"]) and isinstance(doc["seq"], int) and doc["seq"] > 0
    assert doc["status"] == "accepted"
    assert r.header("Location") == "/api/a/messages/" + doc["id"]
    env = record(gw, "rest-a", doc["seq"])
    assert env["tenant"] == "acme" and env["channel"] == "rest" and env["instance"] == "rest-a"
    assert env["dir"] == "in" and env["type"] == "message"
    assert env["conversation"] == {"id": "c1"}
    assert env["sender"] == {"id": "u1", "name": "Ann"}
    assert env["parts"] == [{"kind": "text", "text": "hello"}]
    # The answer names the envelope by its id (ABI 1.1 emit2); the adapter's
    # own UUIDv7 for the request is the channel's message id.
    assert env["id"] == doc["id"]
    assert UUID_RX.match(env["channel_msg_id"]) and env["channel_msg_id"] != doc["id"]
    assert "idem" not in env


ALL_PARTS = [
    {"kind": "text", "text": "**hi**", "format": "markdown"},
    {"kind": "image", "url": "https://cdn.example.com/a.jpg", "mime": "image/jpeg",
     "size": 1234, "width": 640, "height": 480, "sha256": "ab" * 32},
    {"kind": "voice", "media_id": "MEDIA-V", "duration_ms": 3000, "mime": "audio/amr"},
    {"kind": "video", "media_id": "MEDIA-X", "thumb_media_id": "T1", "duration_ms": 10},
    {"kind": "file", "url": "https://cdn.example.com/r.pdf", "name": "r.pdf", "size": 9},
    {"kind": "location", "lat": 39.9, "lon": 116, "label": "Beijing", "scale": 15},
    {"kind": "link", "url": "https://example.com/x", "title": "X", "description": "d"},
    {"kind": "event", "name": "order_paid", "key": "o-1", "value": {"amount": 12, "cur": "CNY"}},
    {"kind": "x-acme-card", "title": "card", "n": 3},
]


def test_every_part_kind(gw):
    body = {"type": "message", "conversation": {"id": "c2", "kind": "direct", "name": "C2"},
            "sender": {"id": "u2", "role": "customer"}, "recipient": {"id": "shop-1"},
            "parts": ALL_PARTS, "reply_to": "018f3e5c-8a2b-7c00-8000-0123456789ab",
            "ts": 1700000000000, "metadata": {"crm_id": "X9", "vip": True, "score": 7},
            }
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    r = post(gw, "/api/a/messages", body, headers={"traceparent": tp})
    assert r.status == 202, r
    env = record(gw, "rest-a", r.json["seq"])
    parts = env["parts"]
    assert [p["kind"] for p in parts] == [p["kind"] for p in ALL_PARTS]
    assert parts[0] == {"kind": "text", "text": "**hi**", "format": "markdown"}
    assert parts[1]["size"] == 1234 and parts[1]["width"] == 640 and parts[1]["sha256"] == "ab" * 32
    assert parts[2]["media_id"] == "MEDIA-V" and parts[2]["duration_ms"] == 3000
    assert parts[4]["name"] == "r.pdf"
    assert parts[5]["lat"] == pytest.approx(39.9) and parts[5]["lon"] == pytest.approx(116.0)
    assert isinstance(parts[5]["lon"], float) and parts[5]["label"] == "Beijing"
    assert parts[6]["title"] == "X"
    assert parts[7]["name"] == "order_paid" and parts[7]["key"] == "o-1"
    assert parts[7]["value"]["cur"] == "CNY"
    assert parts[8]["title"] == "card"
    assert env["conversation"] == {"id": "c2", "kind": "direct", "name": "C2"}
    assert env["recipient"] == {"id": "shop-1"}
    assert env["ts"]["channel"] == 1700000000000
    assert env["reply_to"] == body["reply_to"]
    assert env["channel_data"]["crm_id"] == "X9" and env["channel_data"]["score"] == 7
    assert env["trace"]["traceparent"] == tp


def test_event_type(gw):
    r = post(gw, "/api/a/messages", {"type": "event", "conversation": "c3", "sender": "u3",
                                     "parts": [{"kind": "event", "name": "subscribe"}]})
    assert r.status == 202, r
    env = record(gw, "rest-a", r.json["seq"])
    assert env["type"] == "event" and env["conversation"]["id"] == "c3"


def test_batch(gw):
    msgs = [dict(MSG, text="b%d" % i) for i in range(3)]
    r = post(gw, "/api/a/messages", {"messages": msgs})
    assert r.status == 202, r
    out = r.json["messages"]
    assert len(out) == 3 and len({m["id"] for m in out}) == 3
    seqs = [m["seq"] for m in out]
    assert seqs == sorted(seqs)
    for i, m in enumerate(out):
        env = record(gw, "rest-a", m["seq"])
        assert env["parts"][0]["text"] == "b%d" % i and env["id"] == m["id"]


def test_batch_with_a_bad_item_stores_nothing(gw):
    before = len(tail(gw, "acme/rest/rest-a"))
    msgs = [dict(MSG, text="ok"), {"conversation": "c", "sender": "u",
                                   "parts": [{"kind": "text", "text": 5}]}]
    r = post(gw, "/api/a/messages", {"messages": msgs})
    assert_problem(r, 400, "invalid-field", "/messages/1/parts/0/text")
    time.sleep(0.2)
    assert len(tail(gw, "acme/rest/rest-a")) == before


BAD_BODIES = [
    ("malformed", b'{"conversation": ', "malformed-json", ""),
    ("duplicate-key", b'{"text":"a","text":"b"}', "malformed-json", ""),
    ("not-object", b'[1,2]', "invalid-field", ""),
    ("unknown-field", dict(MSG, colour="red"), "invalid-field", "/colour"),
    ("missing-sender", {"conversation": "c", "text": "x"}, "invalid-field", "/sender"),
    ("missing-conv-id", dict(MSG, conversation={"kind": "direct"}), "invalid-field",
     "/conversation/id"),
    ("empty-text", dict(MSG, text=""), "invalid-field", "/text"),
    ("no-content", {"conversation": "c", "sender": "u"}, "invalid-field", "/parts"),
    ("text-and-parts", dict(MSG, parts=[{"kind": "text", "text": "y"}]), "invalid-field",
     "/text"),
    ("bad-type", dict(MSG, type="status"), "invalid-field", "/type"),
    ("unknown-kind", {"conversation": "c", "sender": "u", "parts": [{"kind": "sticker"}]},
     "invalid-field", "/parts/0/kind"),
    ("media-no-ref", {"conversation": "c", "sender": "u", "parts": [{"kind": "image"}]},
     "invalid-field", "/parts/0/media_id"),
    ("lat-range", {"conversation": "c", "sender": "u",
                   "parts": [{"kind": "location", "lat": 91, "lon": 0}]},
     "invalid-field", "/parts/0/lat"),
    ("neg-size", {"conversation": "c", "sender": "u",
                  "parts": [{"kind": "file", "url": "https://x/y", "size": -1}]},
     "invalid-field", "/parts/0/size"),
    ("bad-url", {"conversation": "c", "sender": "u",
                 "parts": [{"kind": "link", "url": "javascript:alert(1)"}]},
     "invalid-field", "/parts/0/url"),
    ("part-unknown-field", {"conversation": "c", "sender": "u",
                            "parts": [{"kind": "text", "text": "a", "colour": 1}]},
     "invalid-field", "/parts/0/colour"),
    ("metadata-key", dict(MSG, metadata={"a/b": "x"}), "invalid-field", "/metadata/a~1b"),
    ("empty-batch", {"messages": []}, "invalid-field", "/messages"),
    ("empty-body", b"", "malformed-json", ""),
]


@pytest.mark.parametrize("body,slug,pointer", [b[1:] for b in BAD_BODIES],
                         ids=[b[0] for b in BAD_BODIES])
def test_invalid_body_names_the_field(gw, body, slug, pointer):
    r = post(gw, "/api/a/messages", body)
    doc = assert_problem(r, 400, slug)
    if pointer:
        assert doc["errors"][0]["pointer"] == pointer, doc
    else:
        assert doc.get("errors", [{}])[0].get("pointer", "") == ""


def test_auth_missing_and_wrong_key(gw):
    r = post(gw, "/api/a/messages", MSG, key=None)
    assert_problem(r, 401, "unauthorized")
    assert r.header("WWW-Authenticate", ).startswith("Bearer")
    assert_problem(post(gw, "/api/a/messages", MSG, key="nope"), 401, "unauthorized",
                   header="Authorization")
    r = post(gw, "/api/a/messages", MSG, key=None, headers={"Authorization": "Basic eDp5"})
    assert_problem(r, 401, "unauthorized")


def test_auth_key_from_environment(gw):
    assert post(gw, "/api/a/messages", MSG, key=KEY_ENV).status == 202


def test_auth_read_key_cannot_write(gw):
    assert_problem(post(gw, "/api/a/messages", MSG, key=READ_KEY), 403, "forbidden")
    r = post(gw, "/api/a/messages", MSG)
    g = call(gw, "GET", "/api/a/messages/" + r.json["id"], key=READ_KEY)
    assert g.status == 200, g


def test_hmac_signature_and_rotation(gw):
    for secret in (SECRET, SECRET2):
        body = json.dumps(dict(MSG, text="signed " + secret))
        r = post(gw, "/api/a/messages", body, key=None, headers=signed(body, secret))
        assert r.status == 202, r
    # A sender mid-rotation may send two signatures; one must match.
    body = json.dumps(dict(MSG, text="two sigs"))
    ts = int(time.time())
    h = {"Kfgate-Timestamp": str(ts),
         "Kfgate-Signature": "v1=%s, v1=%s" % (sign("old", ts, body), sign(SECRET2, ts, body))}
    assert post(gw, "/api/a/messages", body, key=None, headers=h).status == 202


def test_hmac_replayed_signature_refused(gw):
    body = json.dumps(dict(MSG, text="once"))
    h = signed(body)
    assert post(gw, "/api/a/messages", body, key=None, headers=h).status == 202
    r = post(gw, "/api/a/messages", body, key=None, headers=h)
    assert_problem(r, 401, "signature-replayed", header="Kfgate-Signature")


@pytest.mark.parametrize("skew", [-3600, -61, 61, 3600])
def test_hmac_stale_signature_refused(gw, skew):
    body = json.dumps(MSG)
    h = signed(body, ts=int(time.time()) + skew)
    r = post(gw, "/api/a/messages", body, key=None, headers=h)
    assert_problem(r, 401, "signature-expired", header="Kfgate-Timestamp")


def test_hmac_bad_signature_refused(gw):
    body = json.dumps(MSG)
    h = signed(body)
    tampered = json.dumps(dict(MSG, text="tampered"))
    assert_problem(post(gw, "/api/a/messages", tampered, key=None, headers=h), 401,
                   "bad-signature")
    h["Kfgate-Timestamp"] = "yesterday"
    assert_problem(post(gw, "/api/a/messages", body, key=None, headers=h), 401,
                   "bad-signature", header="Kfgate-Timestamp")


def test_unsupported_media_type(gw):
    for ct in ("text/plain", "application/json; charset=latin1", None):
        r = post(gw, "/api/a/messages", json.dumps(MSG), ctype=ct)
        assert_problem(r, 415, "unsupported-media-type")
        assert r.header("Accept-Post") == "application/json"
    ok = post(gw, "/api/a/messages", json.dumps(MSG), ctype="Application/JSON; charset=UTF-8")
    assert ok.status == 202, ok


def test_body_too_large(gw):
    r = post(gw, "/api/lim/messages", dict(MSG, text="x" * 3000))
    assert_problem(r, 413, "too-large")


def test_batch_too_large(gw):
    time.sleep(2.1)     # a full token bucket for the rate-limited instance
    r = post(gw, "/api/lim/messages", {"messages": [MSG] * 4})
    assert_problem(r, 413, "batch-too-large", "/messages")


def test_rate_limit_429_with_retry_after(gw):
    time.sleep(2.1)
    codes = [post(gw, "/api/lim/messages", MSG) for _ in range(4)]
    assert [c.status for c in codes[:2]] == [202, 202], codes
    assert_problem(codes[2], 429, "rate-limited")
    assert int(codes[2].header("Retry-After")) >= 1
    time.sleep(1.1)
    assert post(gw, "/api/lim/messages", MSG).status == 202


def test_idempotent_retry_returns_the_original(gw):
    key = "order-42-msg-%d" % time.time_ns()
    body = dict(MSG, text="pay me once")
    r1 = post(gw, "/api/a/messages", body, headers={"Idempotency-Key": key})
    assert r1.status == 202, r1
    r2 = post(gw, "/api/a/messages", body, headers={"Idempotency-Key": key})
    assert r2.status == 202 and r2.json == r1.json
    assert r2.header("Idempotent-Replayed") == "true"
    env = record(gw, "rest-a", r1.json["seq"])
    assert env["idem"] == key
    recs = [x for x in tail(gw, "acme/rest/rest-a")
            if x.get("parts") and x["parts"][0].get("text") == "pay me once"]
    assert len(recs) == 1


def test_idempotency_key_reused_with_other_body(gw):
    key = "reuse-%d" % time.time_ns()
    assert post(gw, "/api/a/messages", MSG, headers={"Idempotency-Key": key}).status == 202
    r = post(gw, "/api/a/messages", dict(MSG, text="other"), headers={"Idempotency-Key": key})
    assert_problem(r, 409, "idempotency-key-reused", header="Idempotency-Key")


def test_idempotent_batch(gw):
    key = "batch-%d" % time.time_ns()
    body = {"messages": [dict(MSG, text="ib0"), dict(MSG, text="ib1")]}
    r1 = post(gw, "/api/a/messages", body, headers={"Idempotency-Key": key})
    r2 = post(gw, "/api/a/messages", body, headers={"Idempotency-Key": key})
    assert r1.status == r2.status == 202 and r1.json == r2.json
    envs = [record(gw, "rest-a", m["seq"]) for m in r1.json["messages"]]
    assert [e["idem"] for e in envs] == [key + ":0", key + ":1"]


def test_bad_idempotency_key(gw):
    r = post(gw, "/api/a/messages", MSG, headers={"Idempotency-Key": "x" * 300})
    assert_problem(r, 400, "invalid-header", header="Idempotency-Key")


def test_pointer_mapping_of_a_foreign_schema(gw):
    order = {"order": {"id": 99812, "customer_id": "cust-7", "note": "where is my parcel?",
                       "customer": {"name": "Li Lei"}, "shop/name": "Main St"},
             "ignored": {"deep": True}}
    r = post(gw, "/api/map/messages", order)
    assert r.status == 202, r
    env = record(gw, "rest-map", r.json["seq"])
    assert env["conversation"] == {"id": "cust-7", "name": "Main St"}
    assert env["sender"] == {"id": "cust-7", "name": "Li Lei"}
    assert env["parts"] == [{"kind": "text", "text": "where is my parcel?"}]
    assert env["channel_data"]["order_id"] == "99812"
    raw = base64.b64decode(env["raw"]["body"]["$bin"])
    assert json.loads(raw) == order and env["raw"]["ctype"] == "application/json"


def test_pointer_mapping_errors_name_the_pointer(gw):
    r = post(gw, "/api/map/messages", {"order": {"note": "hi"}})
    assert_problem(r, 400, "invalid-field", "/order/customer_id")
    r = post(gw, "/api/map/messages", {"order": {"customer_id": "c", "note": 5}})
    assert_problem(r, 400, "invalid-field", "/order/note")
    r = post(gw, "/api/map/messages", {"order": {"customer_id": "c"}})
    assert_problem(r, 400, "invalid-field", "/order/note")


def test_message_status(gw):
    r = post(gw, "/api/a/messages", MSG)
    g = call(gw, "GET", "/api/a/messages/" + r.json["id"])
    assert g.status == 200, g
    doc = g.json
    assert doc["id"] == r.json["id"] and doc["seq"] == r.json["seq"]
    assert doc["direction"] == "in" and doc["status"] == "accepted"
    assert [x["status"] for x in doc["receipts"]] == ["accepted"]
    assert_problem(call(gw, "GET", "/api/a/messages/" + r.json["id"], key=None), 401,
                   "unauthorized")
    assert_problem(call(gw, "GET", "/api/a/messages/0190aaaa-0000-7000-8000-000000000000"),
                   404, "not-found")


def test_health_and_unknown_routes(gw):
    h = call(gw, "GET", "/api/a/health", key=None)
    assert h.status == 200 and h.json["status"] == "ok" and h.json["instance"] == "rest-a"
    r = call(gw, "GET", "/api/a/messages")
    assert_problem(r, 405, "method-not-allowed")
    assert r.header("Allow") == "POST"
    assert_problem(call(gw, "GET", "/api/a/nothing"), 404, "not-found")
    assert_problem(call(gw, "DELETE", "/api/a/messages/x"), 405, "method-not-allowed")


def test_private_webhook_destination_refused(gateway_factory):
    insts = [{"kind": "adapter", "type": "rest", "name": "rest-p", "tenant": "acme",
              "path": "/p", "api_keys": [KEY], "webhook_url": "http://127.0.0.1:9/hook"}]
    gw = gateway_factory(start=False, plugins=[(REST_SO, "rest-adapter.so")], instances=insts)
    gw.start(expect_ok=False)
    try:
        gw.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    assert "loopback or private address" in gw.log(), gw.log()


# ---------------------------------------------------------------------------
# Webhooks

def bus_ready():
    return os.path.exists(os.path.join(ROOT, "gateway", "busd.c")) and os.path.exists(SEND)


needs_bus = pytest.mark.skipif(not bus_ready(), reason="the bus (gateway/busd.c, "
                                                       "build/kfgate-send) is not in yet")


def outbound(instance, text, conv="cust-1"):
    return {"v": 1, "instance": instance, "dir": "out", "type": "message",
            "conversation": {"id": conv}, "idem": "t-%d" % time.time_ns(),
            "parts": [{"kind": "text", "text": text}]}


def verify(att):
    h = att["headers"]
    ts = h["Kfgate-Timestamp"]
    want = hmac.new(WH_SECRET.encode(),
                    ts.encode() + b"." + att["id"].encode() + b"." + att["body"],
                    hashlib.sha256).hexdigest()
    assert h["Kfgate-Signature"] == "v1=" + want, h
    assert abs(int(ts) - time.time()) < 60


@needs_bus
def test_webhook_retries_until_success(gw, rx):
    env = outbound("rest-wh", "answer 1")
    # Script the receiver before the first attempt can arrive: the outbound
    # id is unknown until the answer, so script by default for this test.
    rx["main"].default = ["500", "stall:1.0", "429:1"]
    try:
        ans = send_outbound(gw, env)
        did = ans["id"]
        atts = rx["main"].wait_attempts(did, 4)
    finally:
        rx["main"].default = []
    time.sleep(0.5)
    atts = rx["main"].attempts(did)
    assert [a["action"] for a in atts] == ["500", "stall:1.0", "429:1", "ok"]
    for i, a in enumerate(atts):
        verify(a)
        assert a["headers"]["Kfgate-Attempt"] == str(i + 1)
        assert a["headers"]["Content-Type"] == "application/json"
        assert a["body"] == atts[0]["body"]      # same body, same id, every attempt
    body = json.loads(atts[0]["body"])
    assert body["id"] == did and body["instance"] == "rest-wh"
    assert body["parts"] == [{"kind": "text", "text": "answer 1"}]
    assert body["conversation"] == {"id": "cust-1"}
    rs = receipts(gw, "rest-wh", did, want="sent")
    assert [r["status"] for r in rs] == ["accepted", "sent"]
    assert rs[-1]["attempts"] == 4
    st = call(gw, "GET", "/api/wh/messages/" + did).json
    assert st["direction"] == "out" and st["status"] == "sent"


@needs_bus
def test_webhook_dead_letter_after_the_limit(gw, rx):
    rx["main"].default = ["503"] * 20
    try:
        ans = send_outbound(gw, outbound("rest-wh", "never"))
        did = ans["id"]
        rx["main"].wait_attempts(did, 4)
        rs = receipts(gw, "rest-wh", did, want="failed")
    finally:
        rx["main"].default = []
    time.sleep(1.0)
    assert len(rx["main"].attempts(did)) == 4          # webhook_max_attempts
    failed = [r for r in rs if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["code"] == "http:503", failed
    assert "gave up after 4 attempts" in failed[0]["detail"]
    st = call(gw, "GET", "/api/wh/messages/" + did).json
    assert st["status"] == "failed"


@needs_bus
def test_webhook_4xx_fails_at_once(gw, rx):
    rx["main"].default = ["400"]
    try:
        ans = send_outbound(gw, outbound("rest-wh", "bad"))
        rs = receipts(gw, "rest-wh", ans["id"], want="failed")
    finally:
        rx["main"].default = []
    assert len(rx["main"].attempts(ans["id"])) == 1
    failed = [r for r in rs if r["status"] == "failed"][0]
    assert failed["code"] == "http:400" and failed["retriable"] is False


@needs_bus
def test_slow_receiver_does_not_delay_another(gw, rx):
    """While rest-slow's receiver holds its only call (concurrency 1, with a
    second delivery queued behind it), rest-fast's delivery is made and
    receipted: ordering, not timing."""
    gate = threading.Event()
    rx["slow"].gates["hold"] = gate
    saved = rx["slow"].default
    rx["slow"].default = ["block:hold"]
    try:
        slow = send_outbound(gw, outbound("rest-slow", "slow one"))
        rx["slow"].wait_attempts(slow["id"], 1, timeout=5)
        queued = send_outbound(gw, outbound("rest-slow", "queued behind it"))
        fast = send_outbound(gw, outbound("rest-fast", "fast one"))
        fa = rx["fast"].wait_attempts(fast["id"], 1, timeout=5)
        verify(fa[0])
        assert [r["status"] for r in receipts(gw, "rest-fast", fast["id"], want="sent")] == \
            ["accepted", "sent"]
        held = not gate.is_set() and len(rx["slow"].attempts(queued["id"])) == 0
        slow_rs = [r["status"] for r in receipts(gw, "rest-slow", slow["id"])]
    finally:
        rx["slow"].default = saved
        gate.set()
    assert held and slow_rs == ["accepted"], "the fast delivery waited for the slow receiver"
    assert rx["slow"].wait_attempts(queued["id"], 1)[0]["t"] > rx["slow"].attempts(
        slow["id"])[0]["t"]
    receipts(gw, "rest-slow", slow["id"], want="sent")
    receipts(gw, "rest-slow", queued["id"], want="sent")


def out_receipts(gw, instance, did):
    return call(gw, "GET", "/api/%s/messages/%s" % (instance, did)).json["receipts"]


@needs_bus
@pytest.mark.parametrize("action", ["429:2", "503:date+3"], ids=["seconds", "http-date"])
def test_webhook_honours_retry_after(gw, rx, action):
    """429 with Retry-After: 2 (or 503 with an HTTP-date 3 s ahead), then 200:
    exactly two attempts, the second no sooner than the receiver asked (the
    host's own backoff here is at most 0.4 s)."""
    rx["main"].default = [action]
    try:
        ans = send_outbound(gw, outbound("rest-wh", "later please"))
        did = ans["id"]
        rx["main"].wait_attempts(did, 2, timeout=15)
        rs = receipts(gw, "rest-wh", did, want="sent")
    finally:
        rx["main"].default = []
    time.sleep(0.5)
    atts = rx["main"].attempts(did)
    assert [a["action"] for a in atts] == [action, "ok"]
    assert atts[1]["t"] - atts[0]["t"] >= 1.9, "retried before the Retry-After"
    for i, a in enumerate(atts):
        verify(a)
        assert a["headers"]["Kfgate-Attempt"] == str(i + 1)
        assert a["headers"]["Kfgate-Delivery-Id"] == did and a["body"] == atts[0]["body"]
    assert [r["status"] for r in rs] == ["accepted", "sent"] and rs[-1]["attempts"] == 2
    retrying = [x for x in out_receipts(gw, "wh", did) if x["status"] == "retrying"]
    assert len(retrying) == 1 and "Retry-After" in retrying[0]["detail"], retrying


@needs_bus
def test_webhook_malformed_retry_after_uses_the_backoff(gw, rx):
    mark = gw.log_mark()
    rx["main"].default = ["429:soon\x01"]
    try:
        ans = send_outbound(gw, outbound("rest-wh", "malformed hint"))
        did = ans["id"]
        receipts(gw, "rest-wh", did, want="sent")
    finally:
        rx["main"].default = []
    assert [a["action"] for a in rx["main"].attempts(did)] == ["429:soon\x01", "ok"]
    # The receiver's control byte is not copied into the log line.
    gw.wait_log(r'malformed Retry-After \\"soon\?\\"', since=mark)
    retrying = [x for x in out_receipts(gw, "wh", did) if x["status"] == "retrying"]
    assert "malformed Retry-After ignored" in retrying[0]["detail"], retrying


@needs_bus
def test_webhook_absurd_retry_after_is_capped(gw, rx):
    """rest-age caps Retry-After at webhook_retry_after_max_s = 2."""
    rx["main"].default = ["429:99999999999999999999"]
    try:
        ans = send_outbound(gw, outbound("rest-age", "capped"))
        did = ans["id"]
        rx["main"].wait_attempts(did, 2, timeout=10)
        receipts(gw, "rest-age", did, want="sent")
    finally:
        rx["main"].default = []
    atts = rx["main"].attempts(did)
    assert len(atts) == 2 and atts[1]["t"] - atts[0]["t"] >= 1.9
    retrying = [x for x in out_receipts(gw, "age", did) if x["status"] == "retrying"]
    assert "capped at webhook_retry_after_max_s" in retrying[0]["detail"], retrying


@needs_bus
@pytest.mark.parametrize("where", ["deadline", "max_age"])
def test_webhook_retry_after_past_the_limit_dead_letters(gw, rx, where):
    """A Retry-After that ends after the envelope's deadline (or after
    rest-old's webhook_max_age_ms = 8 s) cannot succeed in time: one attempt,
    then a failed receipt at once saying why."""
    if where == "deadline":
        env = dict(outbound("rest-wh", "too late"), deadline=int(time.time() * 1000) + 5000)
        inst, action = "rest-wh", "429:30"
    else:
        env, inst, action = outbound("rest-old", "too old"), "rest-old", "503:date+60"
    rx["main"].default = [action]
    try:
        ans = send_outbound(gw, env)
        did = ans["id"]
        # Well before the 30 / 60 s the receiver asked for.
        rs = receipts(gw, inst, did, want="failed", timeout=10)
    finally:
        rx["main"].default = []
    time.sleep(0.5)
    assert len(rx["main"].attempts(did)) == 1
    failed = [r for r in rs if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["code"] == "http:" + action.split(":")[0], failed
    assert "falls after the delivery's %s" % ("deadline" if where == "deadline"
                                              else "webhook_max_age_ms") in failed[0]["detail"]


def test_gateway_over_its_limit_is_429_with_item_results(gateway_factory):
    """emit's KFG_AGAIN (here: [journal] max_pending = 1, so the second
    message of a batch finds the journal full) is a 429 with Retry-After;
    the problem lists what happened to each item, and a retry with the same
    Idempotency-Key cannot store the accepted item twice (its idem)."""
    insts = [{"kind": "adapter", "type": "rest", "name": "rest-b", "tenant": "acme",
              "path": "/b", "api_keys": [KEY]}]
    gw = gateway_factory(start=False, plugins=[(REST_SO, "rest-adapter.so")],
                         instances=insts)
    text = render_config(gw.plugin_dir, gw.http_port, gw.admin_port, instances=insts,
                         workdir=gw.dir)
    gw.write_config(text=text.replace("[journal]\n", "[journal]\nmax_pending = 1\n", 1))
    gw.start()
    key = "over-%d" % time.time_ns()
    body = {"messages": [dict(MSG, text="m%d" % i) for i in range(20)]}
    r = post(gw, "/b/messages", body, headers={"Idempotency-Key": key})
    doc = assert_problem(r, 429, "busy")
    assert int(r.header("Retry-After")) >= 1
    items = doc["messages"]
    # Accepted while the journal kept up, then the refused one, then the
    # rest not sent (how many fit depends on the journal writer's speed).
    st = " ".join(m["status"] for m in items)
    assert re.match(r"^(accepted )+error( not_sent)*$", st), st
    env = record(gw, "rest-b", items[0]["seq"])
    assert env["idem"] == key + ":0"
    # Nothing was remembered for the key: a retry runs again (and the journal
    # answers the first item with its original seq).
    r2 = post(gw, "/b/messages", body, headers={"Idempotency-Key": key})
    assert r2.status == 429
    assert r2.json["messages"][0]["seq"] == items[0]["seq"]
    assert r2.json["messages"][0]["id"] == items[0]["id"] == env["id"]   # the original
    # Single messages fit.
    assert post(gw, "/b/messages", MSG).status == 202


KWF_SO = os.path.join(ROOT, "build", "plugins", "keyword-filter.so")


@pytest.mark.skipif(not os.path.exists(KWF_SO), reason="keyword-filter not built")
def test_filter_drop_is_reported_per_item(gateway_factory):
    """A filter that drops a message is not an error: 202 with status
    "dropped" and the filter's reason (the adapter's id, no seq), and only
    the other items of a batch are journaled."""
    insts = [{"kind": "adapter", "type": "rest", "name": "rest-f", "tenant": "acme",
              "path": "/f", "api_keys": [KEY]},
             {"kind": "filter", "type": "keyword-filter", "name": "kw", "words": ["scam"]}]
    gw = gateway_factory(start=False, plugins=[(REST_SO, "rest-adapter.so"),
                                               (KWF_SO, "keyword-filter.so")],
                         instances=insts)
    gw.write_config(text=render_config(gw.plugin_dir, gw.http_port, gw.admin_port,
                                       instances=insts, workdir=gw.dir))
    gw.start()
    r = post(gw, "/f/messages", dict(MSG, text="a refund scam"))
    assert r.status == 202, r
    doc = r.json
    assert doc["status"] == "dropped" and doc["reason"] and "seq" not in doc, doc
    assert UUID_RX.match(doc["id"])
    r = post(gw, "/f/messages", {"messages": [dict(MSG, text="fine"),
                                              dict(MSG, text="scam again")]})
    assert r.status == 202, r
    items = r.json["messages"]
    assert [m["status"] for m in items] == ["accepted", "dropped"], items
    recs = [x for x in tail(gw, "acme/rest/rest-f", lambda rs: len(rs) >= 1) if x.get("parts")]
    assert [x["parts"][0]["text"] for x in recs] == ["fine"]
    assert recs[0]["id"] == items[0]["id"]


@needs_bus
def test_webhook_concurrency_queues_per_instance(gw, rx):
    """rest-slow has webhook_concurrency = 1: its second delivery waits in
    the instance's queue until the first (stalled 1.5 s) is answered."""
    a = send_outbound(gw, outbound("rest-slow", "first"))
    b = send_outbound(gw, outbound("rest-slow", "second"))
    fa = rx["slow"].wait_attempts(a["id"], 1, timeout=5)[0]
    fb = rx["slow"].wait_attempts(b["id"], 1, timeout=8)[0]
    assert fb["t"] - fa["t"] >= 1.3, (fa["t"], fb["t"])
    receipts(gw, "rest-slow", b["id"], want="sent")


def test_missing_environment_key_fails_init(gateway_factory):
    insts = [{"kind": "adapter", "type": "rest", "name": "rest-e", "tenant": "acme",
              "path": "/e", "api_keys": ["env:KFG_TEST_REST_NOT_SET"]}]
    gw = gateway_factory(start=False, plugins=[(REST_SO, "rest-adapter.so")], instances=insts)
    gw.env.pop("KFG_TEST_REST_NOT_SET", None)
    gw.start(expect_ok=False)
    try:
        gw.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    assert "KFG_TEST_REST_NOT_SET is not set" in gw.log(), gw.log()


@needs_bus
def test_reload_waits_for_a_webhook_in_flight(gateway_factory):
    """A changed instance is replaced on reload; the old one, with a webhook
    call in flight, stops with KFG_AGAIN and reports host->stopped once
    the call finished, and the delivery still counts (sent)."""
    slow = Receiver(default=["stall:1.0"])
    try:
        inst = {"kind": "adapter", "type": "rest", "name": "rest-r", "tenant": "acme",
                "path": "/r", "api_keys": [KEY], "webhook_url": slow.url,
                "webhook_allow_private": True, "webhook_secrets": [WH_SECRET]}
        gw = gateway_factory(start=False, plugins=[(REST_SO, "rest-adapter.so")],
                             instances=[inst])
        gw.write_config(text=render_config(gw.plugin_dir, gw.http_port, gw.admin_port,
                                           instances=[inst], workdir=gw.dir))
        gw.start()
        ans = send_outbound(gw, outbound("rest-r", "in flight"))
        slow.wait_attempts(ans["id"], 1, timeout=5)
        mark = gw.log_mark()
        changed = dict(inst, max_text=1000)
        gw.write_config(text=render_config(gw.plugin_dir, gw.http_port, gw.admin_port,
                                           instances=[changed], workdir=gw.dir))
        r = gw.admin("POST", "/admin/reload")
        assert r.status == 200, r
        # The new generation answers at once; the old one drains.
        assert post(gw, "/r/messages", MSG).status == 202
        gw.wait_log(r"instance=rest-r .*stopping, 1 webhook call\(s\) in flight", since=mark)
        gw.wait_log(r"instance=rest-r .*drained", since=mark, timeout=5)
        gw.wait_log(r"instance=rest-r .*instance destroyed", since=mark, timeout=5)
        rs = receipts(gw, "rest-r", ans["id"], want="sent")
        assert [x["status"] for x in rs] == ["accepted", "sent"]
        assert len(slow.attempts(ans["id"])) == 1
    finally:
        slow.close()
