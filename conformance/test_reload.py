"""Reload (SIGHUP and POST /admin/reload): added, removed and changed
instances, a replaced plugin .so, connections that live across the reload,
and failed reloads that change nothing."""
import json
import time

import pytest

from conftest import ANSWER_TIMEOUT, EXAMPLE_SO, get, metric_value, post

EX0 = {"kind": "adapter", "type": "example", "name": "ex0", "path": "/ex0/", "reply": "pong"}
ECHO_A = {"kind": "adapter", "type": "echo", "name": "echo-a", "path": "/a/"}
ECHO_GONE = {"kind": "adapter", "type": "echo", "name": "echo-gone", "path": "/gone/"}
ECHO_NEW = {"kind": "adapter", "type": "echo", "name": "echo-new", "path": "/new/"}


@pytest.fixture
def gw(gateway_factory, plugin_cache):
    return gateway_factory(plugins=[(EXAMPLE_SO, "example-adapter.so"),
                                    (plugin_cache("echo", version="1.0"), "echo.so")],
                           instances=[EX0, ECHO_A, ECHO_GONE], workers=2)


def reload(gw, how):
    """Triggers a reload; returns (ok, admin answer or None) once it finished."""
    before = gw.admin_json("/plugins")["gateway"]["generation"]
    mark = gw.log_mark()
    if how == "admin":
        r = gw.admin("POST", "/admin/reload")
        body = json.loads(r.body)
        assert (r.status == 200) == body["ok"], r
        return body["ok"], r
    gw.sighup()
    line = gw.wait_log(r"reload (done|refused)", since=mark)
    ok = "reload done" in line
    after = gw.admin_json("/plugins")["gateway"]["generation"]
    assert after == (before + 1 if ok else before)
    return ok, None


def plugin(gw, name):
    for p in gw.admin_json("/plugins")["plugins"]:
        if p["name"] == name:
            return p
    return None


def instance_names(gw):
    return sorted(i["name"] for i in gw.admin_json("/plugins")["instances"])


@pytest.mark.parametrize("how", ["sighup", "admin"])
def test_reload_add_remove_replace_keeps_connections(gw, plugin_cache, how):
    # Keep-alive connections opened before the reload: one to an unchanged
    # instance, one to an instance whose plugin is about to be replaced.
    keep = gw.conn()
    r = keep.request(get("/ex0/"))
    assert r.status == 200 and r.body == b"pong"
    keep_a = gw.conn()
    r = keep_a.request(get("/a/x"))
    assert r.header("X-Echo-Version") == "1.0"
    assert gw.req(get("/gone/x")).status == 200
    assert plugin(gw, "echo")["version"] == "1.0"
    gen_before = gw.admin_json("/plugins")["gateway"]["generation"]
    ex_gen_before = plugin(gw, "example")["generation"]
    echo_gen_before = plugin(gw, "echo")["generation"]
    ok_before = metric_value(gw.metrics(), "kfgate_reloads_total", outcome="ok") or 0

    # A new build of the same plugin type (another version) lands in
    # plugin_dir under the same file name; the config adds echo-new and drops
    # echo-gone.
    gw.add_plugin(plugin_cache("echo", version="2.0"), "echo.so")
    gw.write_config([EX0, ECHO_A, ECHO_NEW])
    mark = gw.log_mark()
    ok, _ = reload(gw, how)
    assert ok, gw.log()[mark:]

    # The connection to the unchanged instance is the same socket and works.
    for _ in range(5):
        r = keep.request(get("/ex0/"))
        assert r.status == 200 and r.body == b"pong" and not r.closes
    # The connection to the replaced instance works too, now on the new code.
    r = keep_a.request(get("/a/y"))
    assert r.status == 200 and r.header("X-Echo-Version") == "2.0"
    # New instance routes answer; removed ones are 404.
    r = gw.req(get("/new/z"))
    assert r.status == 200 and r.header("X-Echo-Instance") == "echo-new"
    assert r.header("X-Echo-Version") == "2.0"
    assert gw.req(get("/gone/x")).status == 404
    # The same path on the kept connection sees the new route table.
    r = keep.request(get("/gone/x"))
    assert r.status == 404 and not r.closes
    assert keep.request(get("/new/q")).status == 200

    # /plugins shows the new version and generations.
    info = gw.admin_json("/plugins")
    assert info["gateway"]["generation"] == gen_before + 1
    echo = plugin(gw, "echo")
    assert echo["version"] == "2.0"
    assert echo["generation"] == echo_gen_before + 1
    assert echo["file"].endswith("/echo.so")
    assert plugin(gw, "example")["generation"] == ex_gen_before   # not reloaded
    assert "echo-new" in instance_names(gw) and "echo-gone" not in instance_names(gw)
    live = {i["name"]: i for i in info["instances"]}
    assert live["echo-new"]["state"] == "running"
    assert live["ex0"]["generation"] == ex_gen_before
    gw.wait_log(r"plugin .*/echo\.so loaded: echo 2\.0", since=mark)
    gw.wait_log(r"instance=echo-gone .*instance destroyed", since=mark)
    assert (metric_value(gw.metrics(), "kfgate_reloads_total", outcome="ok")
            == ok_before + 1)
    keep.close()
    keep_a.close()


def test_reload_changed_config_replaces_instance(gw):
    keep = gw.conn()
    assert keep.request(get("/ex0/")).body == b"pong"
    gw.write_config([dict(EX0, reply="pong2"), ECHO_A, ECHO_GONE])
    ok, r = reload(gw, "admin")
    assert ok, r
    # Same connection, new instance of ex0 with its new reply.
    assert keep.request(get("/ex0/")).body == b"pong2"
    assert gw.req(get("/ex0/")).body == b"pong2"
    keep.close()


def test_reload_unchanged_is_a_no_op_for_instances(gw):
    mark = gw.log_mark()
    ok, _ = reload(gw, "admin")
    assert ok
    # No instance was started or destroyed.
    text = gw.log()[mark:]
    assert "instance started" not in text and "instance destroyed" not in text, text
    assert gw.req(get("/a/x")).status == 200


def assert_nothing_changed(gw, gen):
    info = gw.admin_json("/plugins")
    assert info["gateway"]["generation"] == gen
    assert sorted(i["name"] for i in info["instances"]) == ["echo-a", "echo-gone", "ex0"]
    assert gw.req(get("/ex0/")).body == b"pong"
    assert gw.req(get("/gone/x")).status == 200
    assert gw.req(get("/a/x")).header("X-Echo-Version") == "1.0"
    assert gw.req(get("/new/x")).status == 404


BAD_CONFIGS = [
    # (id, instances, http overrides, text expected in the errors)
    ("unknown-core-key", [EX0, ECHO_A, ECHO_GONE], {"max_head_byte": 100},
     "unknown key 'max_head_byte' (did you mean 'max_head_bytes'?)"),
    ("unknown-plugin-key", [EX0, ECHO_A, dict(ECHO_GONE, pathh="/x/")], {},
     "unknown key 'pathh' (did you mean 'path'?)"),
    ("bad-type", [EX0, dict(ECHO_A, path=5), ECHO_GONE], {},
     "key 'path' must be a string, not integer"),
    ("no-such-plugin", [EX0, ECHO_A, ECHO_GONE,
                        {"kind": "adapter", "type": "ehco", "name": "x", "path": "/x/"}], {},
     "no plugin of type 'ehco'"),
    ("init-fails", [EX0, ECHO_A, ECHO_GONE, dict(ECHO_NEW, path="no-slash")], {},
     "instance 'echo-new' (echo): init failed"),
    ("route-conflict", [EX0, ECHO_A, ECHO_GONE, dict(ECHO_NEW, path="/a/")], {},
     "instance 'echo-new' (echo): start failed"),
]


@pytest.mark.parametrize("instances,http,errtext", [b[1:] for b in BAD_CONFIGS],
                         ids=[b[0] for b in BAD_CONFIGS])
def test_invalid_reload_changes_nothing(gw, instances, http, errtext):
    gen = gw.admin_json("/plugins")["gateway"]["generation"]
    failed_before = metric_value(gw.metrics(), "kfgate_reloads_total", outcome="failed") or 0
    keep = gw.conn()
    assert keep.request(get("/ex0/")).status == 200
    gw.write_config(instances, http=http)
    mark = gw.log_mark()
    r = gw.admin("POST", "/admin/reload")
    assert r.status == 422, r
    body = json.loads(r.body)
    assert body["ok"] is False
    assert errtext in body["errors"], body
    assert gw.config_path in body["errors"] or "instance '" in body["errors"], body
    gw.wait_log(r"level=error .*reload refused, nothing changed", since=mark)
    assert_nothing_changed(gw, gen)
    assert keep.request(get("/ex0/")).body == b"pong"
    assert (metric_value(gw.metrics(), "kfgate_reloads_total", outcome="failed")
            == failed_before + 1)
    # A correct config afterwards reloads fine.
    gw.write_config([EX0, ECHO_A, ECHO_NEW])
    ok, r = reload(gw, "admin")
    assert ok, r
    assert gw.req(get("/new/x")).status == 200
    keep.close()


def test_invalid_reload_by_sighup_logs_why(gw):
    gen = gw.admin_json("/plugins")["gateway"]["generation"]
    gw.write_config(text="[gateway]\nworkers = 2\nplugin_dir = \"%s\"\n[http\n" % gw.plugin_dir)
    mark = gw.log_mark()
    gw.sighup()
    line = gw.wait_log(r"reload refused", since=mark)
    assert gw.config_path in line, line
    assert gw.alive()
    assert_nothing_changed(gw, gen)


def test_reload_with_plugin_replaced_by_broken_build(gw, plugin_cache):
    """A broken file over a plugin in use: the reload is refused (instances
    need the type) and the running copy keeps serving."""
    gen = gw.admin_json("/plugins")["gateway"]["generation"]
    gw.add_plugin(plugin_cache("BAD_MAJOR", name="echo"), "echo.so")
    r = gw.admin("POST", "/admin/reload")
    assert r.status == 422, r
    errors = json.loads(r.body)["errors"]
    assert "echo.so was refused: built for plugin ABI 2.0" in errors, errors
    assert_nothing_changed(gw, gen)
    # The refusal is not remembered over the file that is still loaded.
    assert plugin(gw, "echo")["version"] == "1.0"


def test_reload_while_requests_in_flight_on_other_connections(gw):
    """Requests racing with a reload are all answered (old or new code)."""
    conns = [gw.conn() for _ in range(8)]
    gw.write_config([EX0, ECHO_A, ECHO_NEW])
    for c in conns:
        c.send(get("/a/race") * 5)
    ok, _ = reload(gw, "admin")
    assert ok
    for c in conns:
        for _ in range(5):
            assert c.read_response(timeout=ANSWER_TIMEOUT).status == 200
        assert c.request(post("/new/p", "after")).body == b"after"
        c.close()


def test_reload_applies_new_http_limits(gw):
    body = b"L" * 3000
    assert gw.req(post("/a/limits", body)).body == body
    keep = gw.conn()
    assert keep.request(post("/a/limits", body)).status == 200
    gw.write_config([EX0, ECHO_A, ECHO_GONE], http={"max_body_bytes": 2000})
    ok, r = reload(gw, "admin")
    assert ok, r
    assert gw.req(post("/a/limits", body)).status == 413
    assert gw.req(post("/a/limits", body[:2000])).status == 200
    # Also on a connection that was open before the reload.
    assert keep.request(post("/a/limits", body)).status == 413
    keep.close()
