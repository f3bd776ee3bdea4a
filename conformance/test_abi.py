"""The loader refuses plugins that do not match the host's ABI, naming the
file and the reason, both in `kfgate --check` and in a running daemon."""
import os
import subprocess

import pytest

from conftest import ABI, ABI_MAJOR, ABI_MINOR, KFGATE, get, render_config

# (variant, descriptor name, text the reason must contain)
VARIANTS = [
    ("BAD_MAJOR", "bad-major",
     "built for plugin ABI %d.0, this gateway speaks %s" % (ABI_MAJOR + 1, ABI)),
    ("NEWER_MINOR", "newer-minor",
     "needs plugin ABI %d.%d, this gateway provides %s" % (ABI_MAJOR, ABI_MINOR + 1, ABI)),
    ("SMALL_STRUCT", "small-struct",
     "descriptor struct_size 16 is invalid"),
    ("NO_SYMBOL", "no-symbol",
     "no 'kfg_plugin_descriptor' symbol"),
    ("UNDEFINED", "undefined",
     "dlopen failed: undefined symbol: kfg_conformance_no_such_function"),
    ("NO_DELIVER", "no-deliver",
     "adapter 'no-deliver' has no deliver callback"),
]


def run_check(config_path, env=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([KFGATE, "-c", config_path, "--check"], capture_output=True,
                          text=True, timeout=30, env=e, cwd=os.path.dirname(config_path))


@pytest.mark.parametrize("variant,name,reason", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_check_refuses_mismatched_plugin(tmp_path, plugin_cache, variant, name, reason):
    pdir = tmp_path / "plugins"
    pdir.mkdir()
    so = pdir / (name + ".so")
    so.write_bytes(open(plugin_cache(variant, name=name), "rb").read())
    cfg = tmp_path / "kfgate.toml"
    cfg.write_text(render_config(str(pdir), 1, 0, instances=[
        {"kind": "adapter", "type": name, "name": "x1"}]))
    r = run_check(str(cfg))
    assert r.returncode != 0, r
    out = r.stdout + r.stderr
    # The log line names the file and the reason ...
    log = [ln for ln in out.splitlines() if "refused" in ln and "level=error" in ln]
    assert log, out
    assert str(so) in log[0] and reason in log[0], log
    # ... and so does the configuration error for the instance that needs it.
    err = [ln for ln in out.splitlines() if ln.startswith(str(cfg) + ":")]
    assert err, out
    assert "adapter 'x1'" in err[0] and "'%s'" % name in err[0]
    assert "%s was refused: " % so in err[0] and reason in err[0], err
    assert "configuration %s is invalid" % cfg in out


def test_check_accepts_good_plugin_beside_refused_ones(tmp_path, plugin_cache):
    """Refused files that no instance uses are logged, but do not make a
    configuration that only uses good plugins invalid."""
    pdir = tmp_path / "plugins"
    pdir.mkdir()
    for variant, name, _ in VARIANTS:
        (pdir / (name + ".so")).write_bytes(open(plugin_cache(variant, name=name), "rb").read())
    (pdir / "echo.so").write_bytes(open(plugin_cache("echo"), "rb").read())
    cfg = tmp_path / "kfgate.toml"
    cfg.write_text(render_config(str(pdir), 1, 0, instances=[
        {"kind": "adapter", "type": "echo", "name": "e1", "path": "/e/"}]))
    r = run_check(str(cfg))
    assert r.returncode == 0, r
    assert "is valid (1 instance(s))" in r.stdout
    for variant, name, reason in VARIANTS:
        assert any(str(pdir / (name + ".so")) in ln and reason in ln
                   for ln in r.stderr.splitlines()), (variant, r.stderr)


def test_check_refuses_duplicate_plugin_name(tmp_path, plugin_cache):
    pdir = tmp_path / "plugins"
    pdir.mkdir()
    (pdir / "a-echo.so").write_bytes(open(plugin_cache("echo"), "rb").read())
    (pdir / "b-echo.so").write_bytes(open(plugin_cache("echo", version="9"), "rb").read())
    cfg = tmp_path / "kfgate.toml"
    cfg.write_text(render_config(str(pdir), 1, 0, instances=[
        {"kind": "adapter", "type": "echo", "name": "e1", "path": "/e/"}]))
    r = run_check(str(cfg))
    line = [ln for ln in r.stderr.splitlines() if "refused" in ln]
    assert line, r.stderr
    assert str(pdir / "b-echo.so") in line[0]
    assert "plugin name 'echo' is already provided by %s" % (pdir / "a-echo.so") in line[0]


def test_check_refuses_wrong_kind(tmp_path, plugin_cache):
    pdir = tmp_path / "plugins"
    pdir.mkdir()
    (pdir / "echo.so").write_bytes(open(plugin_cache("echo"), "rb").read())
    cfg = tmp_path / "kfgate.toml"
    cfg.write_text(render_config(str(pdir), 1, 0, instances=[
        {"kind": "filter", "type": "echo", "name": "f1", "path": "/e/"}]))
    r = run_check(str(cfg))
    assert r.returncode != 0
    assert "plugin 'echo' is an adapter, configure it as [[adapter]]" in r.stderr


def test_running_daemon_lists_refused_plugins(gateway_factory, plugin_cache):
    plugins = [(plugin_cache(v, name=n), n + ".so") for v, n, _ in VARIANTS]
    plugins.append((plugin_cache("echo"), "echo.so"))
    gw = gateway_factory(plugins=plugins, instances=[
        {"kind": "adapter", "type": "echo", "name": "e1", "path": "/e/"}])
    info = gw.admin_json("/plugins")
    refused = {os.path.basename(r["file"]): r for r in info["refused"]}
    for variant, name, reason in VARIANTS:
        r = refused.get(name + ".so")
        assert r, (variant, info["refused"])
        assert r["file"] == os.path.join(gw.plugin_dir, name + ".so")
        assert reason in r["reason"], (variant, r)
        gw.wait_log(r"level=error .*plugin %s refused: .*%s" % (
            r["file"].replace(".", r"\."), reason.replace("(", r"\(").replace(".", r"\.")))
    assert [p["name"] for p in info["plugins"]] == ["echo"]
    assert info["plugins"][0]["abi"] == ABI
    # The good plugin serves.
    assert gw.req(get("/e/x")).status == 200


def test_refused_plugin_dropped_in_at_reload(gateway_factory, plugin_cache):
    gw = gateway_factory(plugins=[(plugin_cache("echo"), "echo.so")], instances=[
        {"kind": "adapter", "type": "echo", "name": "e1", "path": "/e/"}])
    assert gw.admin_json("/plugins")["refused"] == []
    gw.add_plugin(plugin_cache("BAD_MAJOR", name="bad-major"), "bad-major.so")
    mark = gw.log_mark()
    r = gw.admin("POST", "/admin/reload")
    assert r.status == 200, r              # nothing configured needs it
    gw.wait_log(r"plugin .*/bad-major\.so refused: built for plugin ABI 2\.0", since=mark)
    refused = gw.admin_json("/plugins")["refused"]
    assert [os.path.basename(x["file"]) for x in refused] == ["bad-major.so"]
    assert gw.req(get("/e/x")).status == 200


def test_daemon_refuses_to_start_when_needed_plugin_is_refused(gateway_factory, plugin_cache):
    gw = gateway_factory(start=False,
                         plugins=[(plugin_cache("NEWER_MINOR", name="newer-minor"),
                                   "newer-minor.so")],
                         instances=[{"kind": "adapter", "type": "newer-minor", "name": "n1"}])
    gw.start(expect_ok=False)
    rc = gw.proc.wait(timeout=10)
    assert rc != 0
    log = gw.log()
    assert "newer-minor.so was refused: needs plugin ABI %d.%d" % (ABI_MAJOR, ABI_MINOR + 1) in log, log
    assert "cannot start" in log
