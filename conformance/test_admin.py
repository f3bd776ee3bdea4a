"""The admin listener: /healthz, /readyz, /metrics (Prometheus text),
/plugins (JSON), POST /admin/deliver; and a clean SIGTERM."""
import json
import re
import signal
import subprocess

import pytest

from conftest import ABI, KFGATE, EXAMPLE_SO, get, metric_value, module_gateway, post

ECHO = {"kind": "adapter", "type": "echo", "name": "echo0", "path": "/echo/",
        "tenant": "acme"}
EX0 = {"kind": "adapter", "type": "example", "name": "ex0", "path": "/ex0/"}


@pytest.fixture(scope="module")
def gw(request, plugin_cache):
    return module_gateway(request, plugins=[(plugin_cache("echo"), "echo.so"),
                                            (EXAMPLE_SO, "example-adapter.so")],
                          instances=[ECHO, EX0], workers=2)


def test_healthz(gw):
    r = gw.admin("GET", "/healthz")
    assert r.status == 200 and r.body == b"ok\n"


def test_readyz_all_healthy(gw):
    r = gw.admin("GET", "/readyz")
    assert r.status == 200, r
    assert r.header("Content-Type") == "application/json"
    body = json.loads(r.body)
    assert body["ready"] is True
    assert {i["name"]: i["healthy"] for i in body["instances"]} == {"echo0": True, "ex0": True}


def test_readyz_unhealthy_instance(gateway_factory, plugin_cache):
    gw = gateway_factory(plugins=[(plugin_cache("echo"), "echo.so")],
                         instances=[ECHO, dict(ECHO, name="sick", path="/sick/",
                                               unhealthy="upstream down")])
    r = gw.admin("GET", "/readyz")
    assert r.status == 503, r
    body = json.loads(r.body)
    assert body["ready"] is False
    by = {i["name"]: i for i in body["instances"]}
    assert by["echo0"]["healthy"] is True
    assert by["sick"]["healthy"] is False and by["sick"]["detail"] == "upstream down"
    # Liveness is not readiness.
    assert gw.admin("GET", "/healthz").status == 200


def test_admin_routes_are_not_on_the_front_door(gw):
    for path in ("/healthz", "/metrics", "/plugins"):
        assert gw.req(get(path)).status == 404
    assert gw.admin("GET", "/no-such-admin-route").status == 404


# ---------------------------------------------------------------------------
# /metrics

SERIES = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|'
                    r'\\[\\"n])*"(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*)?\})?'
                    r' (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')


def test_metrics_is_prometheus_text(gw):
    r = gw.admin("GET", "/metrics")
    assert r.status == 200
    assert r.header("Content-Type").startswith("text/plain; version=0.0.4")
    text = r.body.decode()
    assert text.endswith("\n")
    types, helps = {}, set()
    for ln in text.splitlines():
        if ln.startswith("# HELP "):
            name = ln.split(" ")[2]
            assert name not in helps, "HELP twice for %s" % name
            helps.add(name)
            continue
        if ln.startswith("# TYPE "):
            _, _, name, typ = ln.split(" ")
            assert typ in ("counter", "gauge", "histogram", "summary", "untyped"), ln
            assert name not in types, "TYPE twice for %s" % name
            types[name] = typ
            continue
        assert not ln.startswith("#") and ln, "stray line %r" % ln
        m = SERIES.match(ln)
        assert m, "not a Prometheus sample line: %r" % ln
        name = m.group(1)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        family = name if name in types else base
        assert family in types, "sample %r before/without its # TYPE" % ln
        if types[family] == "histogram" and name != family:
            assert name.endswith(("_bucket", "_sum", "_count"))
            if name.endswith("_bucket"):
                assert 'le="' in ln
    for must in ("kfgate_http_requests_total", "kfgate_http_request_duration_seconds",
                 "kfgate_reloads_total", "kfgate_instances", "kfgate_http_open_connections",
                 "kfgate_http_rejected_total"):
        assert must in types, must
    assert types["kfgate_http_request_duration_seconds"] == "histogram"
    assert types["kfgate_http_requests_total"] == "counter"
    assert metric_value(text, "kfgate_instances") == 2


def test_histogram_buckets_are_cumulative(gw):
    gw.req(get("/echo/h"))
    text = gw.metrics()
    buckets = []
    for ln in text.splitlines():
        if ln.startswith("kfgate_http_request_duration_seconds_bucket{") and \
                'instance="echo0"' in ln:
            le = re.search(r'le="([^"]+)"', ln).group(1)
            buckets.append((float("inf") if le == "+Inf" else float(le), float(ln.split()[-1])))
    assert buckets and buckets[-1][0] == float("inf")
    assert [b[0] for b in buckets] == sorted(b[0] for b in buckets)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    count = metric_value(text, "kfgate_http_request_duration_seconds_count", instance="echo0")
    assert count == buckets[-1][1]


def test_per_instance_request_counters_move(gw):
    m0 = gw.metrics()
    ok0 = metric_value(m0, "kfgate_http_requests_total", instance="echo0", code="2xx") or 0
    bad0 = metric_value(m0, "kfgate_http_requests_total", instance="echo0", code="4xx") or 0
    ex0 = metric_value(m0, "kfgate_http_requests_total", instance="ex0", code="2xx") or 0
    lat0 = metric_value(m0, "kfgate_http_request_duration_seconds_count", instance="echo0") or 0
    with gw.conn() as c:
        for i in range(7):
            assert c.request(get("/echo/m%d" % i)).status == 200
        for i in range(3):
            assert c.request(get("/echo/secret?v=wrong")).status == 403
        assert c.request(get("/no-instance-here")).status == 404    # nobody's
    with gw.conn() as c:
        for i in range(2):
            assert c.request(get("/ex0/")).status == 200
    m1 = gw.metrics()
    assert metric_value(m1, "kfgate_http_requests_total", instance="echo0", code="2xx") \
        == ok0 + 7
    assert metric_value(m1, "kfgate_http_requests_total", instance="echo0", code="4xx") \
        == bad0 + 3
    assert metric_value(m1, "kfgate_http_requests_total", instance="ex0", code="2xx") == ex0 + 2
    assert metric_value(m1, "kfgate_http_request_duration_seconds_count",
                        instance="echo0") == lat0 + 10
    # The example plugin's own metrics carry the instance label too.
    assert metric_value(m1, "example_requests_total", instance="ex0", outcome="get") >= 2


def test_open_connections_gauge(gw):
    base = metric_value(gw.metrics(), "kfgate_http_open_connections", server="http")
    conns = [gw.conn() for _ in range(4)]
    for c in conns:
        assert c.request(get("/echo/x")).status == 200
    assert metric_value(gw.metrics(), "kfgate_http_open_connections", server="http") \
        == base + 4
    for c in conns:
        c.close()


# ---------------------------------------------------------------------------
# /plugins

def test_plugins_json(gw):
    r = gw.admin("GET", "/plugins")
    assert r.status == 200 and r.header("Content-Type") == "application/json"
    info = json.loads(r.body)
    version = subprocess.run([KFGATE, "--version"], capture_output=True,
                             text=True).stdout.split()[1]
    assert info["gateway"] == {"version": version, "abi": ABI, "generation": 1}
    plugins = {p["name"]: p for p in info["plugins"]}
    assert set(plugins) == {"echo", "example"}
    assert plugins["echo"]["version"] == "1.0"
    assert plugins["echo"]["kind"] == "adapter" and plugins["echo"]["abi"] == ABI
    assert plugins["echo"]["generation"] == 1
    assert plugins["echo"]["file"] == gw.plugin_dir + "/echo.so"
    assert plugins["example"]["version"] == "1.0.0"
    assert info["refused"] == []
    assert info["draining"] == []
    ins = {i["name"]: i for i in info["instances"]}
    assert set(ins) == {"echo0", "ex0"}
    e = ins["echo0"]
    assert e["type"] == "echo" and e["tenant"] == "acme" and e["state"] == "running"
    assert e["healthy"] is True
    assert e["routes"] == [{"method": None, "path": "/echo/", "prefix": True}]
    assert ins["ex0"]["tenant"] == "default"
    assert {(r["method"], r["path"]) for r in ins["ex0"]["routes"]} == \
        {("GET", "/ex0/"), ("POST", "/ex0/")}


# ---------------------------------------------------------------------------
# POST /admin/deliver

def test_admin_deliver(gw):
    r = gw.admin("POST", "/admin/deliver?instance=ex0&conversation=c1", b"hello out")
    assert r.status == 200, r
    assert json.loads(r.body)["result"] == "delivered"
    r = gw.admin("POST", "/admin/deliver?instance=echo0&conversation=c1", b"x")
    assert r.status == 502 and json.loads(r.body)["result"] == "failed"
    r = gw.admin("POST", "/admin/deliver?instance=nobody&conversation=c1", b"x")
    assert r.status == 404
    m = gw.metrics()
    assert metric_value(m, "kfgate_deliveries_total", instance="ex0", outcome="ok") >= 1
    assert metric_value(m, "kfgate_deliveries_total", instance="echo0", outcome="failed") >= 1


# ---------------------------------------------------------------------------
# Shutdown

def test_sigterm_drains_and_exits_cleanly(gateway_factory, plugin_cache):
    gw = gateway_factory(plugins=[(plugin_cache("echo"), "echo.so")], instances=[ECHO])
    idle = gw.conn()
    assert idle.request(get("/echo/x")).status == 200
    busy = gw.conn()
    assert busy.request(get("/echo/y")).status == 200     # surely accepted
    busy.send("POST /echo/b HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhe")
    mark = gw.log_mark()
    gw.proc.send_signal(signal.SIGTERM)
    gw.wait_log(r"shutting down: draining", since=mark)
    # The half-sent request still completes, and is answered with close.
    busy.send("llo")
    r = busy.read_response()
    assert r.status == 200 and r.body == b"hello" and r.closes
    assert gw.proc.wait(timeout=10) == 0
    assert idle.closed_by_peer()
    log = gw.log()
    assert "SIGTERM received" in log and "msg=bye" in log, log
