"""The WebSocket adapter (issue 7, spec/websocket.md), black box.

One daemon (2 workers, its own journal and bus) with five instances of the
real adapter, driven by Debian's python3-websockets (asyncio client) and, for
frames no well-behaved client sends, by a raw socket client below. Outbound
traffic comes from build/kfgate-send, the journal is read back with
build/kfgate-tail, and the round trip uses build/kfgate-echo.

  test_handshake_ok / test_handshake_refusals / test_same_origin_default
  test_widget_served
  test_fragments_and_control_frames, test_ping_pong, test_close_handshake
  test_invalid_utf8_1007, test_protocol_violations_1002, test_too_big_1009,
  test_wrong_frame_kind_1003, test_frame_before_hello_1008, test_hello_timeout_4008
  test_auth_valid_expired_forged, test_anonymous_refused
  test_ack_after_commit, test_resend_dedupe, test_events, test_msgpack_subprotocol
  test_rate_limit, test_per_ip_cap
  test_multi_tab_delivery, test_echo_round_trip
  test_resume_nothing_lost_nothing_duplicated, test_resume_during_live_traffic
  test_slow_reader_closed_others_continue
  test_keepalive_and_idle_timeout, test_shutdown_closes_1001
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time

import msgpack
import pytest
import websockets
import websockets.exceptions

from conftest import ROOT, Gateway, metric_value

BUILD = os.path.join(ROOT, "build")
# KFG_WS_SO / KFG_WS_PRELOAD run the suite against another build of the
# adapter, e.g. one with -fsanitize=address and LD_PRELOAD=libasan.so.
SO = os.environ.get("KFG_WS_SO") or os.path.join(BUILD, "plugins", "websocket-adapter.so")
PRELOAD = os.environ.get("KFG_WS_PRELOAD")
SEND = os.path.join(BUILD, "kfgate-send")
TAIL = os.path.join(BUILD, "kfgate-tail")
ECHO = os.path.join(BUILD, "kfgate-echo")
SECRET = "test-secret-0123456789abcdef"
TENANT = "acme"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
T = 5.0     # generous "did it answer at all" bound, never a performance check


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def mint(sub, conv=None, exp=None, secret=SECRET, name=None, **extra):
    p = {"sub": sub, "exp": int(time.time()) + 3600 if exp is None else exp}
    if conv:
        p["conv"] = conv
    if name:
        p["name"] = name
    p.update(extra)
    body = "v1." + b64u(json.dumps(p, separators=(",", ":")).encode())
    sig = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    return body + "." + b64u(sig)


# ---------------------------------------------------------------------------
# The daemon

INSTANCES = [
    dict(kind="adapter", type="websocket", name="web", tenant=TENANT, path="/ws",
         allowed_origins=["https://shop.example"], allow_anonymous=True,
         token_secret=SECRET, max_message_bytes=4096, hello_timeout_ms=600,
         rate_per_sec=100, rate_burst=100),
    dict(kind="adapter", type="websocket", name="auth", tenant=TENANT, path="/auth",
         token_secret=SECRET, resume_concurrency=1),
    dict(kind="adapter", type="websocket", name="rl", tenant=TENANT, path="/rl",
         allowed_origins=["*"], allow_anonymous=True, rate_per_sec=1, rate_burst=3),
    dict(kind="adapter", type="websocket", name="cap", tenant=TENANT, path="/cap",
         allow_anonymous=True, max_connections_per_ip=2),
    dict(kind="adapter", type="websocket", name="idle", tenant=TENANT, path="/idle",
         allow_anonymous=True, ping_interval_ms=300, idle_timeout_ms=1000, max_inflight=2,
         rate_per_sec=1000, rate_burst=1000),
    dict(kind="adapter", type="websocket", name="slow", tenant=TENANT, path="/slow",
         allow_anonymous=True, token_secret=SECRET, send_queue_max=64,
         send_queue_bytes=131072, sndbuf_bytes=32768, resume_max=1000),
]


@pytest.fixture(scope="module")
def gw():
    root = tempfile.mkdtemp(prefix="kfws-", dir="/tmp")
    env = {"LD_PRELOAD": PRELOAD} if PRELOAD else None
    g = Gateway(root, plugins=[(SO, "websocket-adapter.so")], instances=INSTANCES, workers=2,
                env=env)
    g.feed = "ipc://%s/feed.ipc" % root
    g.replay = "ipc://%s/replay.ipc" % root
    g.outbound = "ipc://%s/outbound.ipc" % root
    g.start()
    yield g
    g.stop()


def url(gw, path="/ws"):
    return "ws://127.0.0.1:%d%s" % (gw.http_port, path)


def send_out(gw, instance, conv, texts):
    """Outbound envelopes through kfgate-send; returns their seqs."""
    lines = "".join(json.dumps({"v": 1, "instance": instance, "dir": "out", "type": "message",
                                "conversation": {"id": conv},
                                "sender": {"id": "agent-1", "role": "agent"},
                                "parts": [{"kind": "text", "text": t}]}) + "\n" for t in texts)
    r = subprocess.run([SEND, "--outbound", gw.outbound], input=lines, capture_output=True,
                       text=True, timeout=30)
    answers = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert r.returncode == 0 and all(a["ok"] for a in answers), (r.stdout, r.stderr)
    return [a["seq"] for a in answers]


def records(gw, from_seq, instance=None):
    """Every journal record from from_seq (committed ones: kfgate-tail replays)."""
    args = [TAIL, "--feed", gw.feed, "--replay", gw.replay, "--from", str(from_seq),
            "--idle", "300"]
    if instance:
        args += ["--topic", "%s/websocket/%s" % (TENANT, instance)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def hello(ws, **kw):
    kw["type"] = "hello"
    await ws.send(json.dumps(kw))
    w = json.loads(await asyncio.wait_for(ws.recv(), T))
    assert w["type"] == "welcome", w
    return w


async def recv_json(ws, timeout=T):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def recv_type(ws, typ, timeout=T):
    """The next frame of that type; frames of other types in between are returned too."""
    others = []
    while True:
        f = await recv_json(ws, timeout)
        if f["type"] == typ:
            return f, others
        others.append(f)


# ---------------------------------------------------------------------------
# A raw client for the frames python-websockets would never send

class Raw:
    def __init__(self, gw, path="/ws", proto="kfgate.v1.json", headers="", rcvbuf=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(T)
        self.sock.connect(("127.0.0.1", gw.http_port))
        self.key = base64.b64encode(os.urandom(16)).decode()
        req = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
               % (path, gw.http_port, self.key))
        if proto:
            req += "Sec-WebSocket-Protocol: %s\r\n" % proto
        self.sock.sendall((req + headers + "\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode("latin-1")
        assert self.head.startswith("HTTP/1.1 101 "), self.head
        accept = base64.b64encode(hashlib.sha1(self.key.encode() + GUID).digest()).decode()
        assert "Sec-WebSocket-Accept: %s" % accept in self.head, self.head

    def _fill(self):
        d = self.sock.recv(65536)
        if not d:
            raise EOFError
        self.buf += d

    @staticmethod
    def frame(op, payload=b"", fin=True, mask=True, rsv=0, length=None):
        b0 = (0x80 if fin else 0) | rsv << 4 | op
        n = len(payload) if length is None else length
        m = 0x80 if mask else 0
        if n < 126:
            h = struct.pack("!BB", b0, m | n)
        elif n < 65536:
            h = struct.pack("!BBH", b0, m | 126, n)
        else:
            h = struct.pack("!BBQ", b0, m | 127, n)
        if not mask:
            return h + payload
        k = os.urandom(4)
        return h + k + bytes(c ^ k[i % 4] for i, c in enumerate(payload))

    def send(self, op, payload=b"", **kw):
        if isinstance(payload, str):
            payload = payload.encode()
        self.sock.sendall(self.frame(op, payload, **kw))

    def send_json(self, obj):
        self.send(1, json.dumps(obj))

    def recv_frame(self):
        while True:
            if len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                assert not b1 & 0x80, "server frames are never masked"
                n, h = b1 & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, h = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, h = struct.unpack("!Q", self.buf[2:10])[0], 10
                if (b1 & 0x7F) < 126 or h > 2:
                    if len(self.buf) >= h + n:
                        p, self.buf = self.buf[h:h + n], self.buf[h + n:]
                        return b0 >> 7, b0 & 0x0F, p
            self._fill()

    def recv_json(self):
        fin, op, p = self.recv_frame()
        assert (fin, op) == (1, 1), (fin, op, p)
        return json.loads(p)

    def hello(self, **kw):
        kw["type"] = "hello"
        self.send_json(kw)
        w = self.recv_json()
        assert w["type"] == "welcome", w
        return w

    def expect_close(self, code, answer=True):
        """Reads up to the server's close frame, checks its code, answers it
        (unless told not to) and expects the server to close TCP."""
        while True:
            fin, op, p = self.recv_frame()
            if op == 8:
                break
        got = struct.unpack("!H", p[:2])[0] if len(p) >= 2 else 1005
        assert got == code, (got, p)
        if answer:
            try:
                self.send(8, p[:2])
            except OSError:
                pass
        try:
            while True:
                self._fill()
        except (EOFError, ConnectionResetError):
            pass
        self.sock.close()
        return p[2:].decode()

    def close(self):
        self.sock.close()


def raw_http(gw, head):
    s = socket.create_connection(("127.0.0.1", gw.http_port), timeout=T)
    s.sendall(head.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        d = s.recv(65536)
        if not d:
            break
        data += d
    s.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.decode("latin-1")


def upgrade_head(gw, path="/ws", version="13", key="dGhlIHNhbXBsZSBub25jZQ==", extra="",
                 upgrade=True, method="GET"):
    h = "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % (method, path, gw.http_port)
    if upgrade:
        h += "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
    if version is not None:
        h += "Sec-WebSocket-Version: %s\r\n" % version
    if key is not None:
        h += "Sec-WebSocket-Key: %s\r\n" % key
    return h + extra + "\r\n"


# ---------------------------------------------------------------------------
# Handshake

def test_handshake_ok(gw):
    async def go():
        async with websockets.connect(url(gw), subprotocols=["x-other", "kfgate.v1.json"]) as ws:
            assert ws.subprotocol == "kfgate.v1.json"
            w = await hello(ws)
            assert w["anonymous"] is True and w["conversation"].startswith("anon:")
            assert len(w["conversation"]) == 5 + 22 and w["visitor"] == w["conversation"]
            assert w["max_message"] == 4096 and w["resume"] is False
        async with websockets.connect(url(gw), subprotocols=["kfgate.v1.msgpack"]) as ws:
            assert ws.subprotocol == "kfgate.v1.msgpack"
        # No subprotocol offered: JSON, and no Sec-WebSocket-Protocol header (W8);
        # the allowed Origin passes.
        async with websockets.connect(url(gw), origin="https://shop.example") as ws:
            assert ws.subprotocol is None
            assert "Sec-WebSocket-Protocol" not in ws.response_headers
            await hello(ws)
    run(go())


def test_handshake_refusals(gw):
    st, r = raw_http(gw, upgrade_head(gw, version="8"))
    assert st == 426 and "Sec-WebSocket-Version: 13" in r and "must be 13" in r
    st, r = raw_http(gw, upgrade_head(gw, version=None))
    assert st == 426
    for key in (None, "short", "dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZR==",
                "!GhlIHNhbXBsZSBub25jZQ=="):
        st, r = raw_http(gw, upgrade_head(gw, key=key))
        assert st == 400 and "Sec-WebSocket-Key" in r, (key, r)
    st, r = raw_http(gw, upgrade_head(gw, extra="Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"))
    assert st == 400        # two keys
    st, r = raw_http(gw, upgrade_head(gw, extra="Origin: https://evil.example\r\n"))
    assert st == 403 and "Origin" in r
    st, r = raw_http(gw, upgrade_head(gw, upgrade=False))
    assert st == 426 and "Upgrade: websocket" in r
    st, r = raw_http(gw, upgrade_head(gw, method="POST"))
    assert st == 405 and "Allow: GET" in r
    st, r = raw_http(gw, upgrade_head(gw).replace("HTTP/1.1", "HTTP/1.0", 1))
    assert st == 426 and "HTTP/1.1" in r
    st, r = raw_http(gw, upgrade_head(gw, extra="Sec-WebSocket-Protocol: mqtt, chat\r\n"))
    assert st == 400 and "kfgate.v1.json" in r
    # the refusals are logged with their cause
    gw.wait_log(r"handshake refused with 403: Origin not allowed")
    # and the client library sees them too
    async def go():
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            async with websockets.connect(url(gw), origin="https://evil.example"):
                pass
        assert e.value.status_code == 403
    run(go())


def test_any_origin(gw):
    """allowed_origins = ["*"]: any Origin passes."""
    for o in ("https://evil.example", "null", "http://127.0.0.1:1"):
        st, r = raw_http(gw, upgrade_head(gw, path="/rl", extra="Origin: %s\r\n" % o))
        assert st == 101, (o, r)


def test_same_origin_default(gw):
    """`auth` has no allowed_origins: only the page's own origin (Host) passes."""
    own = "http://127.0.0.1:%d" % gw.http_port
    st, r = raw_http(gw, upgrade_head(gw, path="/auth", extra="Origin: %s\r\n" % own))
    assert st == 101, r
    st, r = raw_http(gw, upgrade_head(gw, path="/auth", extra="Origin: http://127.0.0.2:1\r\n"))
    assert st == 403


def test_widget_served(gw):
    for path, ctype, marker in (("/ws/widget", "text/html", b"<"),
                                ("/ws/widget.js", "text/javascript", b"")):
        s = socket.create_connection(("127.0.0.1", gw.http_port), timeout=T)
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert ("Content-Type: %s" % ctype).encode() in head
        assert len(body) > 0 and marker in body
        src = "widget/widget.html" if path.endswith("widget") else "widget/widget.js"
        f = os.path.join(ROOT, "adapters", "websocket", src)
        if os.path.exists(f):
            assert body == open(f, "rb").read(), "the .so embeds the widget file"


# ---------------------------------------------------------------------------
# Framing

def test_fragments_and_control_frames(gw):
    r = Raw(gw)
    r.hello()
    # One message in four fragments, a ping between two of them, and a
    # multi-byte character split across fragments.
    msg = json.dumps({"type": "message", "id": "frag-1", "text": "h\u00e9llo \u4f60\u597d"},
                     ensure_ascii=False).encode()
    cut = msg.index("\u4f60".encode()) + 1
    parts = [msg[:5], msg[5:cut], msg[cut:cut + 3], msg[cut + 3:]]
    r.send(1, parts[0], fin=False)
    r.send(0, parts[1], fin=False)
    r.send(9, b"mid")
    r.send(0, parts[2], fin=False)
    r.send(0, parts[3], fin=True)
    fin, op, p = r.recv_frame()
    assert (fin, op, p) == (1, 10, b"mid")
    a = r.recv_json()
    assert a["type"] == "ack" and a["id"] == "frag-1" and a["seq"] > 0
    rec = [x for x in records(gw, a["seq"], "web") if x["seq"] == a["seq"]][0]["envelope"]
    assert rec["parts"] == [{"kind": "text", "text": "h\u00e9llo \u4f60\u597d"}]
    # An empty final fragment and a zero-length first one are fine too.
    m2 = json.dumps({"type": "message", "id": "frag-2", "text": "x"}).encode()
    r.send(1, b"", fin=False)
    r.send(0, m2, fin=False)
    r.send(0, b"", fin=True)
    assert r.recv_json()["id"] == "frag-2"
    r.send(8, struct.pack("!H", 1000))
    r.expect_close(1000)


def test_ping_pong(gw):
    r = Raw(gw)
    r.send(9, b"before-hello")          # control frames are fine at any time
    assert r.recv_frame() == (1, 10, b"before-hello")
    r.hello()
    r.send(9, b"x" * 125)
    assert r.recv_frame() == (1, 10, b"x" * 125)
    r.send(10, b"unsolicited")          # ignored
    r.send(9, b"")
    assert r.recv_frame() == (1, 10, b"")
    r.close()

    async def go():
        async with websockets.connect(url(gw)) as ws:
            await hello(ws)
            await asyncio.wait_for(await ws.ping(b"lib"), T)
    run(go())


def test_close_handshake(gw):
    async def go():
        ws = await websockets.connect(url(gw))
        await hello(ws)
        await ws.close(code=4321, reason="bye \u00e9")
        assert ws.close_code == 4321        # echoed
        ws = await websockets.connect(url(gw))
        await ws.close(code=1000)
        assert ws.close_code == 1000
    run(go())
    r = Raw(gw)
    r.send(8, b"")                      # no code: echoed without one
    fin, op, p = r.recv_frame()
    assert op == 8 and p == b""
    r.close()
    for bad in (struct.pack("!H", 1005), struct.pack("!H", 999), struct.pack("!H", 2999),
                struct.pack("!H", 5000), b"\x03"):
        r = Raw(gw)
        r.send(8, bad)
        r.expect_close(1002)
    r = Raw(gw)
    r.send(8, struct.pack("!H", 1000) + b"\xff\xfe")
    r.expect_close(1007)


def test_invalid_utf8_1007(gw):
    for payload in (b'{"type":"hello","x":"\xc0\xaf"}',      # overlong
                    b'{"type":"hello","x":"\xed\xa0\x80"}',  # surrogate
                    b'{"type":"hello","x":"\xf4\x90\x80\x80"}',  # > U+10FFFF
                    b'{"type":"hello","x":"\xff"}'):
        r = Raw(gw)
        r.send(1, payload)
        r.expect_close(1007)
    # split across fragments, the message ends inside a sequence
    r = Raw(gw)
    r.hello()
    r.send(1, b'{"type":"message","id":"u","text":"\xe4', fin=False)
    r.send(0, b'\xbd', fin=True)
    r.expect_close(1007)
    # invalid in a middle fragment: closed before the message completes
    r = Raw(gw)
    r.hello()
    r.send(1, b'{"type":"message",', fin=False)
    r.send(0, b'"text":"\x80"', fin=False)
    r.expect_close(1007)
    gw.wait_log(r"closing .* with 1007: text message")


def test_protocol_violations_1002(gw):
    cases = [
        dict(op=1, payload=b'{"type":"hello"}', mask=False),     # unmasked
        dict(op=1, payload=b'{"type":"hello"}', rsv=4),          # RSV1 without extension
        dict(op=1, payload=b'{"type":"hello"}', rsv=1),
        dict(op=3, payload=b"x"),                                 # reserved data opcode
        dict(op=11, payload=b""),                                 # reserved control opcode
        dict(op=0, payload=b"x"),                                 # continuation, no message
        dict(op=9, payload=b"p", fin=False),                      # fragmented control
        dict(op=9, payload=b"p" * 126),                           # control over 125
    ]
    for c in cases:
        r = Raw(gw)
        r.send(c.pop("op"), c.pop("payload"), **c)
        why = r.expect_close(1002)
        assert why, "the close reason names the violation"
    # a new data frame while a fragmented one is open
    r = Raw(gw)
    r.send(1, b'{"type":', fin=False)
    r.send(1, b'"hello"}')
    r.expect_close(1002)
    # non-minimal length encoding
    r = Raw(gw)
    r.sock.sendall(struct.pack("!BBH", 0x81, 0x80 | 126, 5) + b"\0\0\0\0hello")
    # a failed connection: close frame, then FIN at once (RFC 6455 7.1.7),
    # while the client keeps sending garbage
    r.sock.sendall(b"\xff" * 1000)
    r.expect_close(1002, answer=False)
    # the daemon is fine
    r = Raw(gw)
    r.hello()
    r.close()


def test_too_big_1009(gw):
    r = Raw(gw)
    r.hello()
    big = json.dumps({"type": "message", "id": "big", "text": "x" * 5000}).encode()
    r.sock.sendall(Raw.frame(1, big))
    assert "max_message_bytes" in r.expect_close(1009)
    # over the limit across fragments, each one small
    r = Raw(gw)
    r.hello()
    for i in range(5):
        r.send(1 if i == 0 else 0, b"y" * 1000, fin=False)
    r.expect_close(1009)
    # refused as soon as the header says so: the payload never comes
    r = Raw(gw)
    r.sock.sendall(struct.pack("!BBQ", 0x82, 0x80 | 127, 1 << 40) + b"\0\0\0\0")
    r.expect_close(1009)


def test_wrong_frame_kind_1003(gw):
    r = Raw(gw)
    r.send(2, msgpack.packb({"type": "hello"}))
    r.expect_close(1003)
    r = Raw(gw, proto="kfgate.v1.msgpack")
    r.send(1, '{"type":"hello"}')
    r.expect_close(1003)


def test_frame_before_hello_1008(gw):
    r = Raw(gw)
    r.send_json({"type": "message", "id": "m", "text": "hi"})
    e = r.recv_json()
    assert e["type"] == "error" and e["code"] == "hello_required"
    r.expect_close(1008)
    r = Raw(gw)
    r.send(1, "not json")
    assert r.recv_json()["code"] == "bad_request"
    r.expect_close(1008)


def test_hello_timeout_4008(gw):
    r = Raw(gw)
    t0 = time.monotonic()
    e = r.recv_json()
    assert e["code"] == "hello_required"
    r.expect_close(4008)
    assert time.monotonic() - t0 >= 0.5


def test_bad_frames_after_hello_keep_the_connection(gw):
    r = Raw(gw)
    r.hello()
    for bad, code in (('{"type":"message","id":"a"}', "bad_request"),
                      ('{"type":"message","text":"no id"}', "bad_request"),
                      ('{"type":"message","id":"bad id!","text":"x"}', "bad_request"),
                      ('{"type":"message","id":"p1","parts":[{"kind":"image"}]}', "bad_request"),
                      ('{"type":"nope"}', "bad_request"),
                      ('{"type":"hello"}', "bad_request"),
                      ('[1,2]', "bad_request"),
                      ('{"type":"message","id":"d","text":"a","text":"b"}', "bad_request")):
        r.send(1, bad)
        e = r.recv_json()
        assert e["type"] == "error" and e["code"] == code, (bad, e)
        assert e["detail"]
    e = json.loads(json.dumps({}))
    r.send(1, '{"type":"message","id":"p2","text":"x","parts":[]}')
    e = r.recv_json()
    assert e["id"] == "p2" and "not both" in e["detail"]
    r.send_json({"type": "message", "id": "ok-1", "parts": [
        {"kind": "text", "text": "see"}, {"kind": "link", "url": "https://x.example/a"},
        {"kind": "location", "lat": 1.5, "lon": -2.25, "label": "here"}]})
    a = r.recv_json()
    assert a["type"] == "ack", a
    rec = [x for x in records(gw, a["seq"], "web") if x["seq"] == a["seq"]][0]["envelope"]
    assert rec["parts"][1] == {"kind": "link", "url": "https://x.example/a"}
    assert rec["parts"][2]["lat"] == 1.5 and rec["parts"][2]["lon"] == -2.25
    r.close()


# ---------------------------------------------------------------------------
# Authentication

def test_auth_valid_expired_forged(gw):
    async def go():
        async with websockets.connect(url(gw, "/auth")) as ws:
            w = await hello(ws, token=mint("visitor-7", conv="conv-auth", name="Ada"))
            assert (w["visitor"], w["conversation"], w["anonymous"]) == \
                ("visitor-7", "conv-auth", False)
            await ws.send(json.dumps({"type": "message", "id": "a1", "text": "hi"}))
            a = await recv_json(ws)
            assert a["type"] == "ack"
        env = [x for x in records(gw, a["seq"], "auth") if x["seq"] == a["seq"]][0]["envelope"]
        assert env["sender"] == {"id": "visitor-7", "name": "Ada", "role": "customer"}
        assert env["conversation"] == {"id": "conv-auth", "kind": "direct"}
        # without conv the conversation is the visitor id
        async with websockets.connect(url(gw, "/auth")) as ws:
            w = await hello(ws, token=mint("visitor-8"))
            assert w["conversation"] == "visitor-8"
        cases = [
            (mint("v", exp=int(time.time()) - 1), 4002, "token_expired"),
            (mint("v", secret="another-secret-0123456789"), 4001, "token_invalid"),
            (mint("v")[:-2] + "AA", 4001, "token_invalid"),
            ("v1.e30." + b64u(hmac.new(SECRET.encode(), b"v1.e30", hashlib.sha256).digest()),
             4001, "token_invalid"),          # signed, but {} has no sub/exp
            (mint("v", aud="some-other-instance"), 4001, "token_invalid"),
            (mint("v", conv="anon:xxxxxxxxxxxxxxxxxxxx"), 4001, "token_invalid"),
            ("garbage", 4001, "token_invalid"),
        ]
        for tok, code, name in cases:
            ws = await websockets.connect(url(gw, "/auth"))
            await ws.send(json.dumps({"type": "hello", "token": tok}))
            e = await recv_json(ws)
            assert e["type"] == "error" and e["code"] == name, (tok, e)
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), T)
            assert ws.close_code == code, (tok, ws.close_code)
        # conversation in hello must match the token's
        ws = await websockets.connect(url(gw, "/auth"))
        await ws.send(json.dumps({"type": "hello", "token": mint("v", conv="c-a"),
                                  "conversation": "c-b"}))
        assert (await recv_json(ws))["code"] == "forbidden"
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), T)
        assert ws.close_code == 4003
    run(go())
    gw.wait_log(r"closing .* with 4001: token signature does not match")


def test_anonymous_refused(gw):
    async def go():
        ws = await websockets.connect(url(gw, "/auth"))
        await ws.send(json.dumps({"type": "hello"}))
        assert (await recv_json(ws))["code"] == "forbidden"
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), T)
        assert ws.close_code == 4003
        # where anonymous is allowed, a client-chosen id must look random enough
        ws = await websockets.connect(url(gw))
        await ws.send(json.dumps({"type": "hello", "conversation": "anon:short"}))
        assert (await recv_json(ws))["code"] == "forbidden"
        ws = await websockets.connect(url(gw))
        w = await hello(ws, conversation="anon:" + "k" * 20)
        assert w["conversation"] == "anon:" + "k" * 20
        await ws.close()
    run(go())


# ---------------------------------------------------------------------------
# Inbound: acks, dedupe, events, msgpack, limits

def test_ack_after_commit(gw):
    async def go():
        async with websockets.connect(url(gw), origin="https://shop.example") as ws:
            w = await hello(ws)
            for i in range(5):
                await ws.send(json.dumps({"type": "message", "id": "c-%d" % i,
                                          "text": "m%d" % i, "reply_to": "r-%d" % i}))
            acks = [await recv_json(ws) for _ in range(5)]
            return w, acks
    w, acks = run(go())
    assert [a["id"] for a in acks] == ["c-%d" % i for i in range(5)]
    assert all(a["type"] == "ack" and a["duplicate"] is False for a in acks)
    # When the ack is there, the record is in the journal (kfgate-tail replays
    # committed records only), with the ack's seq and id.
    recs = {x["seq"]: x["envelope"] for x in records(gw, acks[0]["seq"], "web")}
    for i, a in enumerate(acks):
        env = recs[a["seq"]]
        assert env["id"] == a["msg_id"] and env["dir"] == "in" and env["type"] == "message"
        assert (env["tenant"], env["channel"], env["instance"]) == (TENANT, "websocket", "web")
        assert env["conversation"]["id"] == w["conversation"]
        assert env["sender"]["id"] == w["conversation"]
        assert env["idem"] == w["conversation"].replace(":", "%3A") + ":c-%d" % i
        assert env["channel_msg_id"] == "c-%d" % i and env["reply_to"] == "r-%d" % i
        assert env["channel_data"] == {"origin": "https://shop.example"}
        assert env["parts"] == [{"kind": "text", "text": "m%d" % i}]


def test_resend_dedupe(gw):
    tok = mint("dedupe-visitor", conv="conv-dedupe")

    async def go():
        async with websockets.connect(url(gw)) as ws:
            await hello(ws, token=tok)
            await ws.send(json.dumps({"type": "message", "id": "once", "text": "x"}))
            a1 = await recv_json(ws)
        # the client did not trust its ack (say it was lost): resends after reconnecting
        async with websockets.connect(url(gw)) as ws:
            await hello(ws, token=tok)
            await ws.send(json.dumps({"type": "message", "id": "once", "text": "x"}))
            a2 = await recv_json(ws)
            await ws.send(json.dumps({"type": "message", "id": "twice", "text": "x"}))
            a3 = await recv_json(ws)
        return a1, a2, a3
    a1, a2, a3 = run(go())
    assert a1["duplicate"] is False and a2["duplicate"] is True
    assert (a2["seq"], a2["msg_id"]) == (a1["seq"], a1["msg_id"])
    assert a3["duplicate"] is False and a3["seq"] > a1["seq"]
    recs = records(gw, a1["seq"], "web")
    ins = [x for x in recs if x["envelope"]["dir"] == "in" and
           x["envelope"]["conversation"]["id"] == "conv-dedupe"]
    assert [x["envelope"]["channel_msg_id"] for x in ins] == ["once", "twice"]


def test_events(gw):
    async def go():
        async with websockets.connect(url(gw)) as ws:
            await hello(ws, token=mint("ev", conv="conv-ev"))
            await ws.send(json.dumps({"type": "event", "name": "typing"}))     # no ack
            await ws.send(json.dumps({"type": "event", "name": "read", "seq": 41, "id": "r1"}))
            a = await recv_json(ws)
            assert a["type"] == "ack" and a["id"] == "r1", a
            await ws.send(json.dumps({"type": "event", "name": "Bad"}))
            assert (await recv_json(ws))["code"] == "bad_request"
            return a
    a = run(go())
    recs = [x["envelope"] for x in records(gw, a["seq"] - 1, "web")
            if x["envelope"].get("conversation", {}).get("id") == "conv-ev"]
    assert [r["type"] for r in recs] == ["event", "event"]
    assert recs[0]["parts"] == [{"kind": "event", "name": "typing"}] and "idem" not in recs[0]
    assert recs[1]["parts"] == [{"kind": "event", "name": "read", "value": "41"}]
    assert recs[1]["idem"] == "conv-ev:r1"


def test_msgpack_subprotocol(gw):
    async def go():
        async with websockets.connect(url(gw), subprotocols=["kfgate.v1.msgpack"]) as ws:
            await ws.send(msgpack.packb({"type": "hello", "token": mint("mp", conv="conv-mp")}))
            w = await asyncio.wait_for(ws.recv(), T)
            assert isinstance(w, bytes)
            w = msgpack.unpackb(w)
            assert w["type"] == "welcome" and w["conversation"] == "conv-mp"
            await ws.send(msgpack.packb({"type": "message", "id": "mp-1", "text": "\u00e9"}))
            a = msgpack.unpackb(await asyncio.wait_for(ws.recv(), T))
            assert a["type"] == "ack" and isinstance(a["seq"], int) and a["duplicate"] is False
            await ws.send(msgpack.packb({"type": "message", "id": "mp-2", "text": b"bin"}))
            e = msgpack.unpackb(await asyncio.wait_for(ws.recv(), T))
            assert e["code"] == "bad_request" and "bin" in e["detail"]
            seqs = send_out(gw, "web", "conv-mp", ["to msgpack"])
            m = msgpack.unpackb(await asyncio.wait_for(ws.recv(), T))
            assert m["type"] == "message" and m["seq"] == seqs[0] and m["text"] == "to msgpack"
    run(go())


def test_rate_limit(gw):
    async def go():
        async with websockets.connect(url(gw, "/rl")) as ws:
            await hello(ws)
            for i in range(5):
                await ws.send(json.dumps({"type": "message", "id": "r%d" % i, "text": "x"}))
            got = [await recv_json(ws) for _ in range(5)]
            return got
    got = run(go())
    acks = [g for g in got if g["type"] == "ack"]
    errs = [g for g in got if g["type"] == "error"]
    assert len(acks) == 3 and len(errs) == 2, got     # burst 3
    assert all(e["code"] == "rate_limited" and e["retry_after_ms"] > 0 for e in errs)
    assert sorted(e["id"] for e in errs) == ["r3", "r4"]


def test_per_ip_cap(gw):
    async def go():
        a = await websockets.connect(url(gw, "/cap"))
        b = await websockets.connect(url(gw, "/cap"))
        with pytest.raises(websockets.exceptions.InvalidStatusCode) as e:
            await websockets.connect(url(gw, "/cap"))
        assert e.value.status_code == 503
        await a.close()
        await asyncio.sleep(0.2)
        c = await websockets.connect(url(gw, "/cap"))       # a slot is free again
        await b.close()
        await c.close()
    run(go())
    gw.wait_log(r"refused with 503: max_connections_per_ip reached")


# ---------------------------------------------------------------------------
# Outbound: tabs, echo, resume, slow readers

def test_multi_tab_delivery(gw):
    tok = mint("tabs", conv="conv-tabs")

    async def go():
        tabs = [await websockets.connect(url(gw)) for _ in range(4)]
        for t in tabs:
            await hello(t, token=tok)
        other = await websockets.connect(url(gw))
        await hello(other, token=mint("someone-else"))
        seqs = send_out(gw, "web", "conv-tabs", ["one", "two"])
        for t in tabs:
            got = [await recv_json(t), await recv_json(t)]
            assert [g["seq"] for g in got] == seqs
            assert [g["text"] for g in got] == ["one", "two"]
            assert got[0]["type"] == "message" and got[0]["sender"]["id"] == "agent-1"
            assert got[0]["parts"] == [{"kind": "text", "text": "one"}]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(other.recv(), 0.3)
        for t in tabs + [other]:
            await t.close()
    run(go())


def test_echo_round_trip(gw):
    echo = subprocess.Popen([ECHO, "--feed", gw.feed, "--replay", gw.replay, "--outbound",
                             gw.outbound, "--topic", "%s/websocket/web" % TENANT],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)

        async def go():
            async with websockets.connect(url(gw)) as ws:
                await hello(ws, token=mint("echoer", conv="conv-echo"))
                await ws.send(json.dumps({"type": "message", "id": "e1", "text": "ping \u00e9"}))
                a = await recv_json(ws)
                assert a["type"] == "ack"
                m, others = await recv_type(ws, "message")
                assert not others
                assert m["text"] == "echo: ping \u00e9" and m["reply_to"] == a["msg_id"]
                assert m["seq"] > a["seq"]
        run(go())
    finally:
        echo.kill()
        echo.wait()


def test_resume_nothing_lost_nothing_duplicated(gw):
    tok = mint("resumer", conv="conv-resume")

    async def go():
        async with websockets.connect(url(gw)) as ws:
            await hello(ws, token=tok)
            [s1] = send_out(gw, "web", "conv-resume", ["first"])
            m = await recv_json(ws)
            assert m["seq"] == s1
        # offline: three messages go to the journal
        missed = send_out(gw, "web", "conv-resume", ["a", "b", "c"])
        send_out(gw, "web", "conv-elsewhere", ["not yours"])
        async with websockets.connect(url(gw)) as ws:
            w = await hello(ws, token=tok, resume_from=s1)
            assert w["resume"] is True
            got = [await recv_json(ws) for _ in range(3)]
            assert [g["seq"] for g in got] == missed
            assert [g["text"] for g in got] == ["a", "b", "c"]
            r = await recv_json(ws)
            assert r == {"type": "resumed", "last_seq": missed[-1], "count": 3,
                         "truncated": False}
            [s5] = send_out(gw, "web", "conv-resume", ["live"])
            m = await recv_json(ws)
            assert (m["seq"], m["text"]) == (s5, "live")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)
        # resume_from at the end: nothing to replay
        async with websockets.connect(url(gw)) as ws:
            await hello(ws, token=tok, resume_from=s5)
            assert await recv_json(ws) == {"type": "resumed", "last_seq": s5, "count": 0,
                                           "truncated": False}
    run(go())


def test_resume_during_live_traffic(gw):
    """Messages keep coming while a client resumes: each one exactly once, in order."""
    tok = mint("racer", conv="conv-race")
    [s0] = send_out(gw, "web", "conv-race", ["start"])
    sent = []
    backlog = send_out(gw, "web", "conv-race", ["b%d" % i for i in range(40)])
    sent += backlog

    def live():
        for i in range(10):
            sent.extend(send_out(gw, "web", "conv-race", ["l%d-%d" % (i, k) for k in range(3)]))

    async def go():
        th = threading.Thread(target=live)
        async with websockets.connect(url(gw)) as ws:
            th.start()
            await hello(ws, token=tok, resume_from=s0)
            seen, resumed = [], None
            while True:
                try:
                    f = await recv_json(ws, timeout=1.5)
                except asyncio.TimeoutError:
                    if not th.is_alive():
                        break
                    continue
                if f["type"] == "resumed":
                    resumed = f
                else:
                    seen.append(f["seq"])
        th.join()
        return seen, resumed
    seen, resumed = run(go())
    assert resumed is not None and resumed["truncated"] is False
    assert seen == sorted(sent), "every message after resume_from once, in seq order"


def test_slow_reader_closed_others_continue(gw):
    tok = mint("slowpoke", conv="conv-slow")
    start = send_out(gw, "slow", "conv-slow", ["before"])[0]
    mark = gw.log_mark()
    # A reads nothing (small receive buffer); B reads everything.
    a = Raw(gw, path="/slow", rcvbuf=4096)
    a.hello(token=tok)

    async def go():
        async with websockets.connect(url(gw, "/slow")) as b:
            await hello(b, token=tok)
            # B keeps reading while the sender runs in a thread
            sender = asyncio.ensure_future(asyncio.to_thread(
                lambda: [s for k in range(40) for s in send_out(
                    gw, "slow", "conv-slow", ["%d-%d " % (k, i) + "z" * 2000 for i in range(10)])]))
            got = []
            while len(got) < 400:
                got.append((await recv_json(b))["seq"])
            seqs = await sender
            assert got == seqs
            return seqs
    seqs = run(go())
    gw.wait_log(r"closing a client that does not read \(1013\)", since=mark)
    assert metric_value(gw.metrics(), "kfg_ws_slow_closed_total", instance="slow") >= 1
    # A's connection is gone: it drains what the kernel held, then EOF/reset.
    a.sock.settimeout(T)
    with pytest.raises((EOFError, ConnectionResetError)):
        while True:
            a._fill()
    a.close()

    # Its undelivered messages are still there: a resume brings all of them.
    async def resume():
        async with websockets.connect(url(gw, "/slow")) as c:
            await hello(c, token=tok, resume_from=start)
            got = []
            while True:
                f = await recv_json(c)
                if f["type"] == "resumed":
                    return got, f
                got.append(f["seq"])
    got, r = run(resume())
    assert got == seqs and r["count"] == len(seqs)


def test_keepalive_and_idle_timeout(gw):
    """A silent client is pinged after ping_interval_ms and closed (1001) after
    idle_timeout_ms; one that answers the pings stays."""
    r = Raw(gw, path="/idle")
    r.hello()
    fin, op, p = r.recv_frame()
    assert (op, p) == (9, b""), "a ping after ping_interval_ms"
    assert r.expect_close(1001) == "idle timeout"

    async def go():
        async with websockets.connect(url(gw, "/idle")) as ws:   # answers pings itself
            await hello(ws)
            await asyncio.sleep(1.6)
            await ws.send(json.dumps({"type": "message", "id": "alive", "text": "x"}))
            assert (await recv_json(ws))["type"] == "ack"
    run(go())


def test_shutdown_closes_1001(gateway_factory):
    """SIGTERM: every connection gets a 1001 and the daemon stops within its drain."""
    g = gateway_factory(plugins=[(SO, "websocket-adapter.so")], workers=2,
                        env={"LD_PRELOAD": PRELOAD} if PRELOAD else None,
                        instances=[dict(kind="adapter", type="websocket", name="web",
                                        tenant=TENANT, path="/ws", allow_anonymous=True)])
    raws = [Raw(g) for _ in range(6)]
    for r in raws[:4]:
        r.hello()
    # one client with an emit in flight and one that never said hello
    raws[0].send_json({"type": "message", "id": "last", "text": "x"})
    t0 = time.monotonic()
    g.proc.send_signal(15)
    for r in raws:
        while True:
            fin, op, p = r.recv_frame()
            if op == 8:
                break
        assert struct.unpack("!H", p[:2])[0] == 1001
    assert g.proc.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5
    log = g.log()
    assert "instance destroyed" in log
    assert "drain timeout" not in log, "the adapter reported itself stopped"


def test_reload_replaces_instance(gateway_factory):
    """A changed instance table on reload: the old instance closes its
    connections with 1001 and reports itself stopped; the new one serves, and
    the journal still resumes the conversation."""
    ins = dict(kind="adapter", type="websocket", name="web", tenant=TENANT, path="/ws",
               allow_anonymous=True, token_secret=SECRET)
    g = gateway_factory(plugins=[(SO, "websocket-adapter.so")], workers=2, instances=[ins],
                        env={"LD_PRELOAD": PRELOAD} if PRELOAD else None)
    g.outbound = "ipc://%s/outbound.ipc" % g.dir
    tok = mint("reloader", conv="conv-reload")
    old = Raw(g)
    old.hello(token=tok)
    [s1] = send_out(g, "web", "conv-reload", ["before reload"])
    assert old.recv_json()["seq"] == s1
    g.write_config([dict(ins, rate_per_sec=10)])
    mark = g.log_mark()
    r = g.admin("POST", "/admin/reload")
    assert r.status == 200 and json.loads(r.body)["ok"], r
    while True:
        fin, op, p = old.recv_frame()
        if op == 8:
            break
    assert struct.unpack("!H", p[:2])[0] == 1001
    old.close()
    g.wait_log(r"instance=web .*instance destroyed", since=mark)
    assert "drain timeout" not in g.log()[mark:]
    [s2] = send_out(g, "web", "conv-reload", ["after reload"])
    new = Raw(g)
    w = new.hello(token=tok, resume_from=s1)
    assert w["rate"] == 10
    m = new.recv_json()
    assert (m["seq"], m["text"]) == (s2, "after reload")
    assert new.recv_json()["type"] == "resumed"
    new.close()


def test_outbound_typing_and_event(gw):
    """Outbound typing and event envelopes reach the tab as typing/event frames with seq."""
    async def go():
        async with websockets.connect(url(gw)) as ws:
            await hello(ws, token=mint("typer", conv="conv-typing"))
            envs = [{"v": 1, "instance": "web", "dir": "out", "type": "typing",
                     "conversation": {"id": "conv-typing"}, "sender": {"id": "agent-7"}},
                    {"v": 1, "instance": "web", "dir": "out", "type": "event",
                     "conversation": {"id": "conv-typing"}, "sender": {"id": "agent-7"},
                     "parts": [{"kind": "event", "name": "read", "value": "42"}]}]
            r = subprocess.run([SEND, "--outbound", gw.outbound],
                               input="".join(json.dumps(e) + "\n" for e in envs),
                               capture_output=True, text=True, timeout=30)
            answers = [json.loads(ln) for ln in r.stdout.splitlines()]
            assert all(a["ok"] for a in answers), r.stdout + r.stderr
            t = await recv_json(ws)
            assert t["type"] == "typing" and t["seq"] == answers[0]["seq"]
            assert t["sender"] == {"id": "agent-7"}
            e = await recv_json(ws)
            assert e["type"] == "event" and e["seq"] == answers[1]["seq"]
            assert (e["name"], e["value"]) == ("read", "42")
            # a resume skips the stale typing indication but keeps the event
        async with websockets.connect(url(gw)) as ws:
            await hello(ws, token=mint("typer", conv="conv-typing"),
                        resume_from=answers[0]["seq"] - 1)
            f = await recv_json(ws)
            assert f["type"] == "event" and f["seq"] == answers[1]["seq"]
            assert (await recv_json(ws))["type"] == "resumed"
    run(go())


def test_inflight_limit_pauses_reading(gw):
    """max_inflight = 2: 60 messages in one write are read two at a time as
    acks come back; every one is acknowledged, in order, none refused."""
    r = Raw(gw, path="/idle")
    r.hello()
    burst = b"".join(Raw.frame(1, json.dumps({"type": "message", "id": "b%d" % i,
                                              "text": "x"}).encode()) for i in range(60))
    r.sock.sendall(burst)
    acks = []
    while len(acks) < 60:
        f = r.recv_json()
        assert f["type"] == "ack", f
        acks.append(f)
    assert [a["id"] for a in acks] == ["b%d" % i for i in range(60)]
    assert [a["seq"] for a in acks] == sorted(a["seq"] for a in acks)
    r.close()


def test_resumes_wait_their_turn(gw):
    """resume_concurrency = 1: eight clients resuming at once are served one
    after the other per loop, each with exactly its own missed messages, and
    live messages sent meanwhile follow their replay."""
    convs = ["conv-queue-%d" % i for i in range(8)]
    base = {c: send_out(gw, "auth", c, ["s"])[0] for c in convs}
    missed = {c: send_out(gw, "auth", c, ["%s-%d" % (c, k) for k in range(30)]) for c in convs}

    async def one(c):
        async with websockets.connect(url(gw, "/auth")) as ws:
            await hello(ws, token=mint("q", conv=c), resume_from=base[c])
            seen, live = [], None
            while True:
                f = await recv_json(ws)
                if f["type"] == "resumed":
                    break
                seen.append(f["seq"])
            [live] = await asyncio.to_thread(send_out, gw, "auth", c, ["live"])
            f = await recv_json(ws)
            return c, seen, f["seq"] == live

    async def go():
        return await asyncio.gather(*(one(c) for c in convs))
    for c, seen, live_ok in run(go()):
        assert seen == missed[c], c
        assert live_ok
