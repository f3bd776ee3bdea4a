"""Message framing on the front door: keep-alive, pipelining, Content-Length
and chunked request bodies, Expect: 100-continue."""
import socket
import time

import pytest

from conftest import ANSWER_TIMEOUT, chunked, get, module_gateway, post

MAX_BODY = 8192
ECHO = {"kind": "adapter", "type": "echo", "name": "echo0", "path": "/echo/"}


@pytest.fixture(scope="module")
def gw(request, plugin_cache):
    return module_gateway(request, plugins=[(plugin_cache("echo"), "echo.so")],
                          http={"max_body_bytes": MAX_BODY, "header_timeout_ms": 3000,
                                "body_timeout_ms": 3000},
                          instances=[ECHO], workers=2)


# ---------------------------------------------------------------------------
# Keep-alive

def test_keep_alive_many_requests_one_connection(gw):
    with gw.conn() as c:
        for i in range(25):
            r = c.request(get("/echo/k%d?i=%d" % (i, i)))
            assert r.status == 200, r
            assert r.version == "HTTP/1.1"
            assert not r.closes
            assert r.header("X-Echo-Path") == "/echo/k%d" % i
            assert r.header("X-Echo-Query") == "i=%d" % i
            assert r.header("Date") and r.header("Server") == "kfgate"
        # Mix in bodies and a 404 on the same connection.
        assert c.request(post("/echo/p", "hello")).body == b"hello"
        r = c.request(get("/nothing-here"))
        assert r.status == 404 and not r.closes
        assert c.request(get("/echo/after-404")).status == 200


def test_connection_close_is_honoured(gw):
    with gw.conn() as c:
        r = c.request("GET /echo/x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert r.status == 200 and r.closes
        assert c.closed_by_peer()


def test_http10_default_close_and_keep_alive(gw):
    with gw.conn() as c:
        r = c.request("GET /echo/x HTTP/1.0\r\n\r\n")
        assert r.status == 200 and r.closes
        assert c.closed_by_peer()
    with gw.conn() as c:
        for _ in range(3):
            r = c.request("GET /echo/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert r.status == 200
            assert (r.header("Connection") or "").lower() == "keep-alive"


def test_head_request_has_no_body(gw):
    with gw.conn() as c:
        c.send("HEAD /echo/h HTTP/1.1\r\nHost: t\r\n\r\n")
        r = c.read_response(head_request=True)
        assert r.status == 200
        # The next response on the connection starts right after the head.
        r2 = c.request(get("/echo/after-head"))
        assert r2.status == 200 and r2.header("X-Echo-Path") == "/echo/after-head"


# ---------------------------------------------------------------------------
# Pipelining

def test_pipelining_in_order_complete(gw):
    n = 50
    reqs = b""
    for i in range(n):
        if i % 3 == 0:
            reqs += post("/echo/p%d" % i, "body-%d" % i)
        elif i % 3 == 1:
            reqs += (b"POST /echo/p%d HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                     % i) + chunked(b"chunked-%d" % i, [3, 100])
        else:
            reqs += get("/echo/p%d" % i).encode()
    with gw.conn() as c:
        c.send(reqs)                            # one write
        for i in range(n):
            r = c.read_response()
            assert r.status == 200, (i, r)
            assert r.header("X-Echo-Path") == "/echo/p%d" % i, (i, r)
            want = {0: b"body-%d" % i, 1: b"chunked-%d" % i, 2: b"echo"}[i % 3]
            assert r.body == want, (i, r)
        # Nothing more than the n answers arrived.
        c.sock.settimeout(0.2)
        try:
            extra = c.sock.recv(1)
        except socket.timeout:
            extra = b""
        assert c.buf == b"" and extra == b""


def test_pipelined_requests_after_connection_close_are_not_served(gw):
    with gw.conn() as c:
        c.send("GET /echo/a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
               + get("/echo/b"))
        r = c.read_response()
        assert r.header("X-Echo-Path") == "/echo/a" and r.closes
        assert c.closed_by_peer()
        assert c.buf == b"", "a request after Connection: close was answered"


def test_request_without_length_has_empty_body(gw):
    """RFC 9112 6.3: no Content-Length and no Transfer-Encoding is a body of
    length 0; what follows is the next request."""
    with gw.conn() as c:
        c.send("POST /echo/nolen HTTP/1.1\r\nHost: t\r\n\r\n" + get("/echo/next"))
        r = c.read_response()
        assert r.status == 200 and r.header("X-Body-Length") == "0"
        assert c.read_response().header("X-Echo-Path") == "/echo/next"


def test_transfer_coding_name_is_case_insensitive(gw):
    with gw.conn() as c:
        r = c.request(b"POST /echo/te HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: Chunked\r\n\r\n"
                      + chunked(b"abc", [3]))
        assert r.status == 200 and r.body == b"abc"


def test_pipelining_split_at_every_byte_boundary(gw):
    """Two pipelined requests, sent in two writes cut at each position."""
    data = post("/echo/one", "first") + get("/echo/two").encode()
    for cut in range(1, len(data), 7):
        with gw.conn() as c:
            c.send(data[:cut])
            time.sleep(0.002)
            c.send(data[cut:])
            r1, r2 = c.read_response(), c.read_response()
            assert (r1.body, r2.header("X-Echo-Path")) == (b"first", "/echo/two"), cut


def test_pipelining_error_stops_the_stream(gw):
    """After a framing error the server answers what came before, then the
    error, then closes: nothing after the bad request is served."""
    data = (get("/echo/ok1") + "GET /echo/bad HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n"
            + get("/echo/never"))
    with gw.conn() as c:
        c.send(data)
        r1 = c.read_response()
        assert r1.status == 200 and r1.header("X-Echo-Path") == "/echo/ok1"
        r2 = c.read_response()
        assert r2.status == 400 and r2.closes
        assert c.closed_by_peer()
        assert c.buf == b""


# ---------------------------------------------------------------------------
# Request bodies

@pytest.mark.parametrize("size", [0, 1, 100, MAX_BODY])
def test_content_length_body(gw, size):
    body = bytes((i * 7) % 256 for i in range(size))
    with gw.conn() as c:
        r = c.request(post("/echo/cl", body))
        assert r.status == 200
        assert r.header("X-Body-Length") == str(size)
        assert r.body == (body if size else b"echo")


def test_content_length_body_in_pieces(gw):
    body = b"0123456789" * 300
    with gw.conn() as c:
        data = post("/echo/cl", body)
        for i in range(0, len(data), 500):
            c.send(data[i:i + 500])
            time.sleep(0.001)
        r = c.read_response()
        assert r.body == body


@pytest.mark.parametrize("sizes", [[1] * 20, [5, 10, 5], [4096, 4096], [8192]])
def test_chunked_body(gw, sizes):
    body = bytes((i * 13) % 256 for i in range(sum(sizes)))
    with gw.conn() as c:
        r = c.request(b"POST /echo/ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + chunked(body, sizes))
        assert r.status == 200
        assert r.header("X-Body-Length") == str(len(body))
        assert r.body == body


def test_chunked_with_extensions_and_trailers(gw):
    with gw.conn() as c:
        r = c.request(b"POST /echo/ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5;name=value;flag\r\nhello\r\n"
                      b"6 ; q=\"quoted\"\r\n world\r\n"
                      b"0\r\nX-Trailer: yes\r\nX-Other: 1\r\n\r\n")
        assert r.status == 200 and r.body == b"hello world"
        assert c.request(get("/echo/next")).status == 200


def test_chunked_sent_byte_by_byte(gw):
    data = (b"POST /echo/ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked(b"drip-drip-drip", [4, 5, 5]))
    with gw.conn() as c:
        for b in data:
            c.send(bytes([b]))
        r = c.read_response()
        assert r.body == b"drip-drip-drip"


def test_chunk_size_hex_case_and_leading_zeros(gw):
    body = b"z" * 0x1A
    with gw.conn() as c:
        r = c.request(b"POST /echo/ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"001a\r\n" + body[:0x1A] + b"\r\n0\r\n\r\n")
        assert r.body == body
    with gw.conn() as c:
        r = c.request(b"POST /echo/ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"1A\r\n" + body + b"\r\n0\r\n\r\n")
        assert r.body == body


# ---------------------------------------------------------------------------
# Expect: 100-continue

def test_expect_100_continue_content_length(gw):
    with gw.conn() as c:
        c.send("POST /echo/e HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n"
               "Expect: 100-continue\r\n\r\n")
        interim = c.read_response()
        assert interim.status == 100, interim
        c.send("hello there")
        r = c.read_response()
        assert r.status == 200 and r.body == b"hello there"
        # The connection goes on normally.
        assert c.request(get("/echo/after")).status == 200


def test_expect_100_continue_chunked(gw):
    with gw.conn() as c:
        c.send("POST /echo/e HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
               "Expect: 100-continue\r\n\r\n")
        assert c.read_response().status == 100
        c.send(chunked(b"chunky", [3, 3]))
        r = c.read_response()
        assert r.status == 200 and r.body == b"chunky"


def test_expect_with_body_already_sent_gets_no_100(gw):
    """A client that sends the body without waiting needs no 100; the final
    answer is the first thing it reads (a 100 is allowed by RFC 9110 but
    must then precede it, so accept either form)."""
    with gw.conn() as c:
        c.send(post("/echo/e", "eager", extra="Expect: 100-continue\r\n"))
        r = c.read_response()
        if r.status == 100:
            r = c.read_response()
        assert r.status == 200 and r.body == b"eager"


def test_expect_too_large_gets_413_without_100(gw):
    with gw.conn() as c:
        c.send("POST /echo/e HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n"
               "Expect: 100-continue\r\n\r\n" % (MAX_BODY + 1))
        r = c.read_response()
        assert r.status == 413, r
        assert b"100 Continue" not in r.raw
        assert r.closes
        assert c.closed_by_peer()
        assert b"100 Continue" not in c.buf


def test_expect_unknown_417(gw):
    with gw.conn() as c:
        c.send("POST /echo/e HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n"
               "Expect: something-else\r\n\r\nx")
        r = c.read_response()
        assert r.status == 417, r


def test_expect_ignored_in_http10(gw):
    with gw.conn() as c:
        c.send("POST /echo/e HTTP/1.0\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        c.sock.settimeout(0.3)
        try:
            early = c.sock.recv(100)
        except socket.timeout:
            early = b""
        assert b"100 Continue" not in early
        c.buf += early
        c.send("data")
        r = c.read_response()
        assert r.status == 200 and r.body == b"data"


def test_pipelining_large_answers_with_a_slow_reader(gw):
    """The server stops reading a pipelining client that does not read its
    answers, and serves on once the client reads: all answers arrive, in
    order, none lost."""
    import threading
    n, size = 120, 8000
    data = b"".join(post("/echo/big%d" % i, bytes([65 + i % 26]) * size) for i in range(n))
    with gw.conn(timeout=20) as c:
        t = threading.Thread(target=c.sock.sendall, args=(data,))
        t.start()
        time.sleep(0.3)          # let the server fill its buffers first
        for i in range(n):
            r = c.read_response(timeout=20)
            assert r.status == 200 and r.header("X-Echo-Path") == "/echo/big%d" % i, i
            assert r.body == bytes([65 + i % 26]) * size, i
        t.join(10)
        assert not t.is_alive()


# ---------------------------------------------------------------------------
# Responses without content: HEAD, 204, 304 (RFC 9112 6.3)

def test_head_on_404_has_no_body(gw):
    with gw.conn() as c:
        c.send("HEAD /nowhere HTTP/1.1\r\nHost: t\r\n\r\n" + get("/echo/after"))
        r = c.read_response(head_request=True)
        assert r.status == 404
        r2 = c.read_response()
        assert r2.status == 200 and r2.header("X-Echo-Path") == "/echo/after", r2


def test_head_is_served_by_get_routes(gw):
    """RFC 9110 9.1: HEAD is supported wherever GET is."""
    with gw.admin_conn() as c:
        c.send("HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n" + get("/healthz"))
        r = c.read_response(head_request=True)
        assert r.status == 200, r
        r2 = c.read_response()
        assert r2.status == 200 and r2.body == b"ok\n"
        r3 = c.request(post("/healthz", ""))
        assert r3.status == 405
        assert "HEAD" in r3.header("Allow") and "GET" in r3.header("Allow")


@pytest.mark.parametrize("status", [204, 304])
def test_no_content_statuses_end_at_the_head(gw, status):
    with gw.conn() as c:
        c.send("GET /echo/nc HTTP/1.1\r\nHost: t\r\nX-Echo-Status: %d\r\n\r\n" % status
               + get("/echo/next"))
        r = c.read_response()              # no body is read for 204/304
        assert r.status == status
        if status == 204:
            assert r.header("Content-Length") is None
        r2 = c.read_response()
        assert r2.status == 200 and r2.header("X-Echo-Path") == "/echo/next", r2
