"""Malformed requests get a precise 4xx/5xx, the connection is closed when
framing can no longer be trusted, and the server goes on serving others."""
import pytest

from conftest import get, module_gateway

ECHO = {"kind": "adapter", "type": "echo", "name": "echo0", "path": "/echo/"}


@pytest.fixture(scope="module")
def gw(request, plugin_cache):
    return module_gateway(request, plugins=[(plugin_cache("echo"), "echo.so")],
                          http={"header_timeout_ms": 3000, "body_timeout_ms": 3000},
                          instances=[ECHO], workers=2)


H = "Host: t\r\n"

# (id, raw request, expected status, text the log line must contain)
CASES = [
    # request line
    ("garbage-line", "HELLO\r\n\r\n", 400, "400 Bad Request"),
    ("no-version", "GET /echo/\r\n" + H + "\r\n", 400, "400 Bad Request"),
    ("double-space", "GET  /echo/ HTTP/1.1\r\n" + H + "\r\n", 400, "400 Bad Request"),
    ("lowercase-version", "GET /echo/ http/1.1\r\n" + H + "\r\n", 400, "invalid HTTP version"),
    ("space-in-target", "GET /echo/a b HTTP/1.1\r\n" + H + "\r\n", 400, "400 Bad Request"),
    ("control-in-target", "GET /echo/\x01 HTTP/1.1\r\n" + H + "\r\n", 400,
     "invalid request-target"),
    ("bad-method-char", "G(T /echo/ HTTP/1.1\r\n" + H + "\r\n", 400, "invalid method"),
    ("http-2.0", "GET /echo/ HTTP/2.0\r\n" + H + "\r\n", 505, "unsupported HTTP version"),
    ("http-1.2", "GET /echo/ HTTP/1.2\r\n" + H + "\r\n", 505, "unsupported HTTP version"),
    ("http-0.9-style", "GET /echo/ HTTP/0.9\r\n" + H + "\r\n", 505,
     "unsupported HTTP version"),
    ("connect", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501,
     "CONNECT is not supported"),
    # header syntax
    ("space-before-colon", "GET /echo/ HTTP/1.1\r\n" + H + "X-A : b\r\n\r\n", 400,
     "400 Bad Request"),
    ("no-colon", "GET /echo/ HTTP/1.1\r\n" + H + "JustAName\r\n\r\n", 400, "400 Bad Request"),
    ("empty-name", "GET /echo/ HTTP/1.1\r\n" + H + ": v\r\n\r\n", 400, "empty field name"),
    ("obs-fold", "GET /echo/ HTTP/1.1\r\n" + H + "X-A: b\r\n  continued\r\n\r\n", 400,
     "obs-fold"),
    ("ctl-in-value", "GET /echo/ HTTP/1.1\r\n" + H + "X-A: b\x00c\r\n\r\n", 400,
     "400 Bad Request"),
    ("missing-host", "GET /echo/ HTTP/1.1\r\n\r\n", 400, "missing Host"),
    ("duplicate-host", "GET /echo/ HTTP/1.1\r\n" + H + "Host: u\r\n\r\n", 400,
     "duplicate Host"),
    ("bad-host", "GET /echo/ HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "invalid Host"),
    # line endings: CRLF only (bare LF / bare CR would allow smuggling)
    ("bare-lf-request-line", "GET /echo/ HTTP/1.1\n" + H + "\r\n", 400, "bare LF"),
    ("bare-lf-header", "GET /echo/ HTTP/1.1\r\nHost: t\n\r\n", 400, "bare LF"),
    ("bare-lf-end", "GET /echo/ HTTP/1.1\r\nHost: t\r\n\n", 400, "bare LF"),
    ("bare-cr", "GET /echo/ HTTP/1.1\r\nHost: t\rX-A: b\r\n\r\n", 400, "bare CR"),
    # Content-Length / Transfer-Encoding
    ("cl-and-te", "POST /echo/ HTTP/1.1\r\n" + H + "Content-Length: 5\r\n"
     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
     "Transfer-Encoding with Content-Length"),
    ("te-and-cl", "POST /echo/ HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n"
     "Content-Length: 5\r\n\r\n0\r\n\r\n", 400, "Transfer-Encoding with Content-Length"),
    ("cl-differing-lines", "POST /echo/ HTTP/1.1\r\n" + H + "Content-Length: 5\r\n"
     "Content-Length: 6\r\n\r\nhello!", 400, "conflicting Content-Length"),
    ("cl-differing-list", "POST /echo/ HTTP/1.1\r\n" + H + "Content-Length: 5, 6\r\n\r\n"
     "hello!", 400, "conflicting Content-Length"),
    ("cl-negative", "POST /echo/ HTTP/1.1\r\n" + H + "Content-Length: -1\r\n\r\n", 400,
     "invalid Content-Length"),
    ("cl-plus", "POST /echo/ HTTP/1.1\r\n" + H + "Content-Length: +5\r\n\r\nhello", 400,
     "invalid Content-Length"),
    ("cl-hex", "POST /echo/ HTTP/1.1\r\n" + H + "Content-Length: 0x5\r\n\r\nhello", 400,
     "invalid Content-Length"),
    ("cl-overflow", "POST /echo/ HTTP/1.1\r\n" + H +
     "Content-Length: 99999999999999999999999\r\n\r\n", 400, "Content-Length overflow"),
    ("te-unknown-coding", "POST /echo/ HTTP/1.1\r\n" + H + "Transfer-Encoding: gzip, chunked"
     "\r\n\r\n0\r\n\r\n", 501, "unsupported transfer coding"),
    ("te-not-final-chunked", "POST /echo/ HTTP/1.1\r\n" + H +
     "Transfer-Encoding: chunked, gzip\r\n\r\n", 400, "final transfer coding is not chunked"),
    ("te-chunked-twice", "POST /echo/ HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n"
     "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "chunked applied more than once"),
    ("te-in-http10", "POST /echo/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400, "Transfer-Encoding in HTTP/1.0"),
    # chunked framing
    ("chunk-size-not-hex", "POST /echo/ HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n"
     "zz\r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size"),
    ("chunk-size-empty", "POST /echo/ HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n"
     "\r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size"),
    ("chunk-size-negative", "POST /echo/ HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked"
     "\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400, "invalid chunk size"),
    # A chunk-size past max_body_bytes is 413 as soon as its digits say so,
    # long before it could overflow.
    ("chunk-size-huge", "POST /echo/ HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked"
     "\r\n\r\n10000000000000000\r\n", 413, "body too large"),
    ("chunk-data-too-long", "POST /echo/ HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked"
     "\r\n\r\n3\r\nhello\r\n0\r\n\r\n", 400, "missing CRLF after chunk data"),
    ("chunk-bare-lf", "POST /echo/ HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n"
     "5\nhello\r\n0\r\n\r\n", 400, "bare LF"),
    ("trailer-too-large", "POST /echo/ HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked"
     "\r\n\r\n0\r\nX-T: " + "t" * 5000 + "\r\n\r\n", 431, "trailer section too large"),
    ("trailer-bad-syntax", "POST /echo/ HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked"
     "\r\n\r\n0\r\nBad Trailer: x\r\n\r\n", 400, "invalid trailer field"),
    # Expect
    ("expect-unknown", "POST /echo/ HTTP/1.1\r\n" + H + "Content-Length: 0\r\n"
     "Expect: 200-ok\r\n\r\n", 417, "unsupported expectation"),
]


@pytest.mark.parametrize("raw,status,logtext", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_request(gw, raw, status, logtext):
    mark = gw.log_mark()
    with gw.conn() as c:
        c.send(raw)
        r = c.read_response()
        assert r.status == status, r
        assert r.closes, "framing is lost after an error: must close: %r" % r
        assert c.closed_by_peer(), "connection left open after %d" % status
    line = gw.wait_log(r"level=(info|warn) .*%d " % status, since=mark)
    assert logtext in line, line
    # ... and everybody else is still served.
    with gw.conn() as c:
        r = c.request(get("/echo/still-ok"))
        assert r.status == 200 and r.header("X-Echo-Path") == "/echo/still-ok"


def test_bad_request_after_good_on_same_connection(gw):
    """The good request is answered fully before the bad one's 400."""
    with gw.conn() as c:
        assert c.request(get("/echo/first")).status == 200
        r = c.request("GET /echo/ HTTP/1.1\r\nHost: t\r\nX-A : b\r\n\r\n")
        assert r.status == 400 and r.closes


def test_leading_empty_lines_are_skipped(gw):
    """RFC 9112 2.2: a server SHOULD ignore at least one empty line before
    the request-line."""
    with gw.conn() as c:
        r = c.request("\r\n\r\n" + get("/echo/lead"))
        assert r.status == 200 and r.header("X-Echo-Path") == "/echo/lead"


def test_same_content_length_repeated_is_accepted(gw):
    """RFC 9112 6.3: identical repeated values are one valid value."""
    with gw.conn() as c:
        r = c.request("POST /echo/ HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                      "Content-Length: 5\r\n\r\nhello")
        assert r.status == 200 and r.body == b"hello"


def test_absolute_form_target(gw):
    with gw.conn() as c:
        r = c.request("GET http://example.com/echo/abs?q=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        assert r.status == 200
        assert r.header("X-Echo-Path") == "/echo/abs"
        assert r.header("X-Echo-Query") == "q=1"


def test_unknown_method_on_a_route_and_405(gw, plugin_cache):
    # The echo route takes any method, so an unknown method token is
    # delivered to it as is.
    with gw.conn() as c:
        r = c.request("BREW /echo/pot HTTP/1.1\r\nHost: t\r\n\r\n")
        assert r.status == 200 and r.header("X-Echo-Method") == "BREW"
    # An admin route with a fixed method answers 405 with Allow.
    r = gw.admin("POST", "/healthz")
    assert r.status == 405, r
    assert "GET" in (r.header("Allow") or "")


def test_404_keeps_connection(gw):
    with gw.conn() as c:
        r = c.request(get("/no/such/route"))
        assert r.status == 404 and not r.closes
        assert c.request(get("/echo/x")).status == 200
