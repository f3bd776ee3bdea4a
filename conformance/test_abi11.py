"""ABI 1.1 host entries, black-box through conformance/plugins/abi11_probe.c:
emit2 (envelope id and duplicate flag), msg_get_int, delivery_attempt,
delivered2 (a channel's Retry-After hint bounded by the deadline), replay
(an instance reading its own records back), and http_call2 (response
headers)."""
import http.server
import json
import os
import threading
import time

import pytest

from conftest import build_plugin, get, post
from test_bus import UUID7, Bus, wall_ms

TENANT = "acme"
NAME = "probe-1"


@pytest.fixture(scope="module")
def probe_so(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("abi11") / "abi11-probe.so")
    return build_plugin("abi11_probe.c", out, extra=["-pthread"])


@pytest.fixture
def probe(gateway_factory, probe_so):
    made = []

    def make(fail_first=0, retry_after_ms=0, bus=None):
        gw = gateway_factory(start=False)
        gw.add_plugin(probe_so, "abi11-probe.so")
        b = Bus(gw, bus=bus, instances=[dict(
            kind="adapter", type="abi11-probe", name=NAME, tenant=TENANT, path="/p/",
            fail_first=fail_first, retry_after_ms=retry_after_ms)])
        made.append(b)
        return b.start()

    return make


def jget(b, path):
    r = b.gw.req(get(path))
    assert r.status == 200, r
    return json.loads(r.body)


def emit(b, text, conv="c1", key=None):
    h = "X-Conversation: %s\r\n" % conv
    if key:
        h += "Idempotency-Key: %s\r\n" % key
    r = b.gw.req(post("/p/emit", text, h))
    assert r.status == 200, r
    return json.loads(r.body)


def out_env(conv, text, **kw):
    e = {"v": 1, "instance": NAME, "dir": "out", "type": "message",
         "conversation": {"id": conv}, "parts": [{"kind": "text", "text": text}]}
    e.update(kw)
    return e


def wait_attempts(b, n, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        a = jget(b, "/p/attempts")
        if len(a) >= n or time.monotonic() > deadline:
            return a
        time.sleep(0.05)


def test_emit2_reports_id_and_duplicate(probe):
    b = probe()
    t0 = wall_ms()
    first = emit(b, "hello", key="k-1")
    t1 = wall_ms()
    assert first["result"] == 0 and first["duplicate"] is False, first
    assert UUID7.match(first["id"]), first
    assert t0 - 5 <= int(first["id"].replace("-", "")[:12], 16) <= t1 + 5
    again = emit(b, "hello again", key="k-1")
    assert again == dict(first, duplicate=True), (again, first)
    other = emit(b, "other", key="k-2")
    assert other["duplicate"] is False and other["seq"] == first["seq"] + 1
    assert other["id"] != first["id"]
    # What emit2 reported is what the feed carries.
    recs = b.all_records()
    by_seq = {r["seq"]: r["envelope"] for r in recs}
    assert by_seq[first["seq"]]["id"] == first["id"]
    assert by_seq[other["seq"]]["id"] == other["id"]
    assert sum(1 for r in recs if r["envelope"].get("idem") == "k-1") == 1


def test_delivery_attempt_and_seq(probe):
    b = probe(fail_first=2, bus={"retry_base_ms": 20, "retry_cap_ms": 40})
    [a] = b.send([out_env("c9", "x")])
    assert a["ok"], a
    att = wait_attempts(b, 3)
    assert [x[0] for x in att] == [1, 2, 3], att
    assert all(x[1] == a["seq"] and x[2] == "c9" for x in att), (att, a)


def test_retry_after_hint_is_honoured(probe):
    # The host's own backoff is 20..40 ms; the channel asks for 1500 ms.
    b = probe(fail_first=1, retry_after_ms=1500, bus={"retry_base_ms": 20, "retry_cap_ms": 40})
    [a] = b.send([out_env("c1", "later please")])
    att = wait_attempts(b, 2)
    assert [x[0] for x in att] == [1, 2], att
    gap = att[1][3] - att[0][3]
    assert gap >= 1450, gap
    time.sleep(0.2)
    assert len(jget(b, "/p/attempts")) == 2
    recs = b.all_records()
    st = [r["envelope"]["status"] for r in recs
          if r["envelope"].get("type") == "status" and r["envelope"].get("ref") == a["id"]]
    assert st == ["accepted", "sent"], st


def test_retry_after_past_deadline_fails_at_once(probe):
    b = probe(fail_first=5, retry_after_ms=5000, bus={"retry_base_ms": 20, "retry_cap_ms": 40})
    [a] = b.send([out_env("c1", "soon or never", deadline=wall_ms() + 2000)])
    assert a["ok"], a
    deadline = time.monotonic() + 10
    while True:
        recs = b.all_records()
        rc = [r["envelope"] for r in recs
              if r["envelope"].get("type") == "status" and r["envelope"].get("ref") == a["id"]]
        if len(rc) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [x["status"] for x in rc] == ["accepted", "failed"], rc
    assert rc[1]["code"] == "expired", rc[1]
    # Failed without waiting out the 5 s hint: only the one attempt happened.
    assert len(jget(b, "/p/attempts")) == 1


def test_replay_own_records(probe):
    b = probe()
    i1 = emit(b, "in-a", conv="A")
    acc = b.send([out_env("A", "out-a1"), out_env("B", "out-b1"), out_env("A", "out-a2")])
    assert all(x["ok"] for x in acc), acc
    i2 = emit(b, "in-b", conv="B")
    wait_attempts(b, 3)

    r = jget(b, "/p/replay?from=0&dirs=out&conv=A")
    assert r["result"] == 0 and r["more"] is False, r
    assert r["recs"] == [[acc[0]["seq"], "out", "A", "out-a1"],
                         [acc[2]["seq"], "out", "A", "out-a2"]], r
    # Status receipts share the topic but are never replayed as messages.
    r = jget(b, "/p/replay?from=0&dirs=out")
    assert [x[1:] for x in r["recs"]] == [["out", "A", "out-a1"], ["out", "B", "out-b1"],
                                          ["out", "A", "out-a2"]], r
    r = jget(b, "/p/replay?from=0&dirs=in")
    assert [x[0] for x in r["recs"]] == [i1["seq"], i2["seq"]], r
    r = jget(b, "/p/replay?from=%d&dirs=out&conv=A" % (acc[0]["seq"] + 1))
    assert [x[0] for x in r["recs"]] == [acc[2]["seq"]], r
    # max stops early and says where to go on; going on finds the rest.
    r = jget(b, "/p/replay?from=0&max=1")
    assert len(r["recs"]) == 1 and r["more"] is True and r["next"] == r["recs"][0][0] + 1, r
    r2 = jget(b, "/p/replay?from=%d&max=100" % r["next"])
    assert r2["more"] is False
    assert [x[0] for x in r2["recs"]] == [x["seq"] for x in acc] + [i2["seq"]], r2
    assert jget(b, "/p/replay?from=999999")["recs"] == []


class _H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"slow down"
        self.send_response(429)
        self.send_header("Retry-After", "7")
        self.send_header("X-Probe", "hello there")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def test_http_call2_headers(probe):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    try:
        b = probe()
        r = jget(b, "/p/http?url=http://127.0.0.1:%d/x" % srv.server_address[1])
        assert r["result"] == 0 and r["status"] == 429, r
        assert r["x_probe"] == "hello there" and r["retry_after"] == "7", r
        assert r["body"] == "slow down" and r["nheaders"] >= 3 and r["elapsed_us"] > 0, r
        # A connection refused: an error result, no headers.
        port = srv.server_address[1]
        srv.shutdown()
        srv.server_close()
        r = jget(b, "/p/http?url=http://127.0.0.1:%d/x" % port)
        assert r["result"] != 0 and r["nheaders"] == 0, r
    finally:
        srv.server_close()
