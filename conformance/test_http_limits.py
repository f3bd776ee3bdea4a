"""HTTP limits of the front door: 431, 413, 408, 503, and isolation of
stalled or abusive connections from everyone else."""
import socket
import time

import pytest

from conftest import (ANSWER_TIMEOUT, Conn, chunked, get, module_gateway, post)

MAX_HEAD = 2048
MAX_HEADERS = 16
MAX_BODY = 4096
HEADER_TIMEOUT_MS = 600
BODY_TIMEOUT_MS = 600

LIMITS = {
    "max_head_bytes": MAX_HEAD,
    "max_headers": MAX_HEADERS,
    "max_body_bytes": MAX_BODY,
    "header_timeout_ms": HEADER_TIMEOUT_MS,
    "body_timeout_ms": BODY_TIMEOUT_MS,
    "idle_timeout_ms": 1500,
    "write_timeout_ms": 800,
}

ECHO = {"kind": "adapter", "type": "echo", "name": "echo0", "path": "/echo/"}


@pytest.fixture(scope="module")
def gw(request, plugin_cache):
    return module_gateway(request, plugins=[(plugin_cache("echo"), "echo.so")],
                          http=LIMITS, instances=[ECHO])


def head_of_size(size, path="/echo/x"):
    """A GET whose head (final CRLFCRLF included) is exactly `size` bytes."""
    base = "GET %s HTTP/1.1\r\nHost: t\r\nX-Pad: \r\n\r\n" % path
    pad = size - len(base)
    assert pad >= 0
    return base.replace("X-Pad: ", "X-Pad: " + "a" * pad)


def assert_refused(c, status):
    r = c.read_response()
    assert r.status == status, r
    assert r.closes, "an error that breaks framing must close: %r" % r
    assert c.closed_by_peer(), "connection not closed after %d" % status
    return r


# ---------------------------------------------------------------------------
# 431

def test_head_at_limit_is_served(gw):
    with gw.conn() as c:
        r = c.request(head_of_size(MAX_HEAD))
        assert r.status == 200, r


def test_head_over_limit_431(gw):
    mark = gw.log_mark()
    with gw.conn() as c:
        c.send(head_of_size(MAX_HEAD + 1))
        assert_refused(c, 431)
    gw.wait_log(r"431 .*request head too large", since=mark)


def test_huge_head_without_end_431(gw):
    """A head that never ends is refused once it passes the limit, without
    waiting for the end (or the header timeout)."""
    mark = gw.log_mark()
    with gw.conn() as c:
        c.send("GET /echo/ HTTP/1.1\r\nHost: t\r\nX-Long: " + "b" * (MAX_HEAD * 4))
        assert_refused(c, 431)
    gw.wait_log(r"431 .*request head too large", since=mark)


def head_with_fields(n):
    """A request with exactly n field lines (Host included)."""
    fields = ["Host: t"] + ["X-F%d: v" % i for i in range(n - 1)]
    return "GET /echo/f HTTP/1.1\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n"


def test_max_headers_at_limit_is_served(gw):
    with gw.conn() as c:
        assert c.request(head_with_fields(MAX_HEADERS)).status == 200


def test_too_many_headers_431(gw):
    mark = gw.log_mark()
    with gw.conn() as c:
        c.send(head_with_fields(MAX_HEADERS + 1))
        assert_refused(c, 431)
    gw.wait_log(r"431 .*too many header fields", since=mark)


# ---------------------------------------------------------------------------
# 413

def test_body_at_limit_is_served(gw):
    body = b"x" * MAX_BODY
    with gw.conn() as c:
        r = c.request(post("/echo/b", body))
        assert r.status == 200 and r.body == body


def test_content_length_over_limit_413_before_body(gw):
    """Refused from the head alone: the client need not send the body."""
    mark = gw.log_mark()
    with gw.conn() as c:
        c.send("POST /echo/b HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
               % (MAX_BODY + 1))
        assert_refused(c, 413)
    gw.wait_log(r"413 .*Content-Length over max_body_bytes", since=mark)


def test_chunked_at_limit_is_served(gw):
    body = bytes(range(256)) * (MAX_BODY // 256)
    with gw.conn() as c:
        r = c.request(b"POST /echo/c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + chunked(body, [1000, 1000, 1000, 1096]))
        assert r.status == 200 and r.body == body


def test_chunked_over_limit_413(gw):
    mark = gw.log_mark()
    with gw.conn() as c:
        # Every chunk is fine on its own; their sum is one byte too many.
        c.send(b"POST /echo/c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               + chunked(b"y" * (MAX_BODY + 1), [2048, 2048, 1]))
        assert_refused(c, 413)
    gw.wait_log(r"413 .*body too large", since=mark)


def test_chunked_413_as_soon_as_size_announced(gw):
    """A single chunk-size above the limit is refused before its data."""
    with gw.conn() as c:
        c.send(b"POST /echo/c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"%x\r\n" % (MAX_BODY + 1))
        assert_refused(c, 413)


# ---------------------------------------------------------------------------
# 408

def test_header_timeout_408(gw):
    mark = gw.log_mark()
    with gw.conn() as c:
        c.send("GET /echo/slow HTTP/1.1\r\nHost: t\r\n")   # no final CRLF
        r = c.read_response(timeout=ANSWER_TIMEOUT + HEADER_TIMEOUT_MS / 1000)
        assert r.status == 408, r
        assert r.closes
        assert c.closed_by_peer()
    gw.wait_log(r"408 .*request head not received in time", since=mark)


def test_slowloris_dribble_still_408(gw):
    """Sending one byte at a time does not extend the head deadline: it runs
    from the first byte of the request."""
    text = b"GET /echo/dribble HTTP/1.1\r\nHost: t\r\nX-A: " + b"z" * 200
    with gw.conn() as c:
        got = None
        deadline = time.monotonic() + ANSWER_TIMEOUT + HEADER_TIMEOUT_MS / 1000
        for b in text:
            try:
                c.send(bytes([b]))
            except (BrokenPipeError, ConnectionResetError):
                break
            c.sock.settimeout(0.05)
            try:
                chunk = c.sock.recv(4096)
                if chunk:
                    c.buf += chunk
                    break
            except socket.timeout:
                pass
            if time.monotonic() > deadline:
                break
        got = c.read_response()
        assert got.status == 408, got


def test_body_timeout_408(gw):
    mark = gw.log_mark()
    with gw.conn() as c:
        c.send("POST /echo/b HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n" + "q" * 10)
        r = c.read_response(timeout=ANSWER_TIMEOUT + BODY_TIMEOUT_MS / 1000)
        assert r.status == 408, r
        assert c.closed_by_peer()
    gw.wait_log(r"408 .*request body not received in time", since=mark)


def test_header_timeout_on_a_kept_alive_connection(gw):
    """The head deadline also holds for the second request of a connection."""
    with gw.conn() as c:
        assert c.request(get("/echo/first")).status == 200
        c.send("GET /echo/second HTTP/1.1\r\nHost: t\r\n")
        r = c.read_response(timeout=ANSWER_TIMEOUT + HEADER_TIMEOUT_MS / 1000)
        assert r.status == 408, r


def test_idle_keep_alive_connection_is_closed(gw):
    with gw.conn(timeout=ANSWER_TIMEOUT + 2) as c:
        assert c.request(get("/echo/idle")).status == 200
        # Closed quietly, without an answer: there was no request.
        assert c.closed_by_peer(timeout=ANSWER_TIMEOUT + 2)
        assert c.buf == b""


def test_client_that_stops_reading_is_disconnected(gw):
    mark = gw.log_mark()
    c = gw.conn()
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    big = post("/echo/big", b"R" * MAX_BODY)
    sent = 0
    c.sock.settimeout(0.2)
    try:
        for _ in range(2000):                # far more than any socket buffers
            c.sock.sendall(big)
            sent += 1
    except (socket.timeout, BlockingIOError, BrokenPipeError, ConnectionResetError):
        pass
    gw.wait_log(r"closing connection from .*: client stopped reading", since=mark)
    c.close()
    assert gw.req(get("/echo/ok")).status == 200


def test_chunked_body_timeout_408(gw):
    with gw.conn() as c:
        c.send("POST /echo/b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               "5\r\nhel")
        r = c.read_response(timeout=ANSWER_TIMEOUT + BODY_TIMEOUT_MS / 1000)
        assert r.status == 408, r


def test_rejections_are_counted(gw):
    """kfgate_http_rejected_total moves with the refusals above."""
    from conftest import metric_value
    before = metric_value(gw.metrics(), "kfgate_http_rejected_total",
                          server="http", reason="header_too_large") or 0
    with gw.conn() as c:
        c.send(head_of_size(MAX_HEAD + 10))
        assert c.read_response().status == 431
    after = metric_value(gw.metrics(), "kfgate_http_rejected_total",
                         server="http", reason="header_too_large")
    assert after == before + 1


# ---------------------------------------------------------------------------
# 503 at max_connections

def test_max_connections_503(gateway_factory, plugin_cache):
    gw = gateway_factory(plugins=[(plugin_cache("echo"), "echo.so")],
                         http={"max_connections": 3, "idle_timeout_ms": 20000},
                         instances=[ECHO], workers=2)
    mark = gw.log_mark()
    held = [gw.conn() for _ in range(3)]
    try:
        for c in held:     # each is accepted and served
            assert c.request(get("/echo/held")).status == 200
        with gw.conn() as extra:
            r = extra.read_response()
            assert r.status == 503, r
            assert r.header("Retry-After") is not None
            assert r.closes
            assert extra.closed_by_peer()
        gw.wait_log(r"503: max_connections \(3\) reached", since=mark)
        # The held connections are unaffected.
        for c in held:
            assert c.request(get("/echo/still")).status == 200
        # A slot freed is a slot available again.
        held.pop().close()
        deadline = time.monotonic() + ANSWER_TIMEOUT
        while True:
            with gw.conn() as c:
                try:
                    r = c.request(get("/echo/again"))
                except (EOFError, ConnectionResetError):
                    r = None
                if r is not None and r.status == 200:
                    break
            assert time.monotonic() < deadline, "freed connection slot never reused"
            time.sleep(0.05)
    finally:
        for c in held:
            c.close()


# ---------------------------------------------------------------------------
# Isolation: one bad client never stalls the others

def test_stalled_and_abusive_clients_do_not_stall_others(gateway_factory, plugin_cache):
    # One worker, so every connection shares the same loop; long timeouts so
    # the stalled clients are still stalled while the others are served.
    gw = gateway_factory(plugins=[(plugin_cache("echo"), "echo.so")],
                         http={"header_timeout_ms": 30000, "body_timeout_ms": 30000,
                               "idle_timeout_ms": 30000, "write_timeout_ms": 30000},
                         instances=[ECHO], workers=1)
    bad = []
    try:
        for i in range(5):                      # slowloris: half a head
            c = gw.conn()
            c.send("GET /echo/s%d HTTP/1.1\r\nHost: t\r\nX-Slow: " % i)
            bad.append(c)
        c = gw.conn()                           # half a body
        c.send("POST /echo/b HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nabc")
        bad.append(c)
        c = gw.conn()                           # half a chunk
        c.send("POST /echo/b HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
               "ffff\r\nabc")
        bad.append(c)
        # A pipeliner that never reads its (large) answers.
        c = gw.conn()
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        big = post("/echo/big", b"B" * 60000)
        try:
            c.sock.settimeout(2)
            for _ in range(40):
                c.sock.sendall(big)
        except (socket.timeout, BlockingIOError):
            pass                                # the server stopped reading: fine
        bad.append(c)
        # A connection that sent nothing at all.
        bad.append(gw.conn())

        # Meanwhile everybody else is served, on new and kept-alive connections.
        with gw.conn() as good:
            for i in range(20):
                r = good.request(get("/echo/good%d" % i), timeout=ANSWER_TIMEOUT)
                assert r.status == 200 and r.header("X-Echo-Path") == "/echo/good%d" % i
        for i in range(10):
            r = gw.req(post("/echo/p", "body%d" % i), timeout=ANSWER_TIMEOUT)
            assert r.status == 200 and r.body == b"body%d" % i
        assert gw.admin("GET", "/healthz").status == 200

        # The stalled ones got nothing yet: they were waited for, not dropped.
        for c in bad[:7]:
            c.sock.settimeout(0.05)
            try:
                got = c.sock.recv(1)
            except socket.timeout:
                continue
            assert False, "a stalled client was %s" % ("answered" if got else "dropped")
    finally:
        for c in bad:
            c.close()
