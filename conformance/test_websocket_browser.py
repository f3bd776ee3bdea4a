"""End to end in a real browser: `make run`'s configuration (a copy of
config.example.toml with its own ports, journal and bus endpoints) and the
echo core beside the gateway; headless Debian chromium, driven by
playwright-core (conformance/websocket/drive.js), loads the widget from the
websocket instance, chats, survives forced reconnects and a reload, and a
second tab of the same conversation receives the replies too.

Nothing may be lost or doubled: every message typed shows once with its
ack, every echo shows once, and the echo core answered each inbound message
exactly once (so the resend after the dropped connection was deduplicated
by the gateway, not hidden by the page)."""
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import tomllib

import pytest

from conftest import ROOT, KFGATE, free_port

CHROMIUM = "/usr/bin/chromium"
DRIVER_DIR = os.path.join(ROOT, "conformance", "websocket")
ECHO = os.path.join(ROOT, "build", "kfgate-echo")
EXAMPLE = os.path.join(ROOT, "config.example.toml")


def rewrite_config(text, tmp):
    """config.example.toml with every listener on a free loopback port and
    all state under tmp; everything else as `make run` has it."""
    ports = {}
    out, section = [], ""
    for line in text.splitlines():
        h = re.match(r"^\s*\[\[?([A-Za-z0-9_.-]+)\]\]?\s*$", line)
        if h:
            section = h.group(1)
            out.append(line)
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_]+)(\s*=\s*)(.*)$", line)
        if not m:
            out.append(line)
            continue
        ind, key, eq, _ = m.groups()
        new = None
        if key == "listen" and not m.group(4).strip().startswith('""'):
            p = free_port()
            ports.setdefault(section, p)
            new = '"127.0.0.1:%d"' % p
        elif section == "gateway" and key == "plugin_dir":
            new = json.dumps(os.path.join(ROOT, "build", "plugins"))
        elif section == "journal" and key == "dir":
            new = json.dumps(os.path.join(tmp, "journal"))
        elif section == "bus" and key in ("feed", "replay", "outbound"):
            new = json.dumps("ipc://%s/%s.ipc" % (tmp, key))
        out.append(ind + key + eq + new if new is not None else line)
    return "\n".join(out) + "\n", ports


TOKEN_SECRET = "browser-test-secret-" + os.urandom(8).hex()


def enable_tokens(text):
    """The example's commented token_secret, switched on (from the
    environment, as production would have it)."""
    line = 'token_secret = "env:KFG_WS_TOKEN_SECRET"'
    new, n = re.subn(r"(?m)^#\s*token_secret\s*=.*$", line, text, count=1)
    if n:
        return new
    return re.sub(r'(?m)^type = "websocket"$', 'type = "websocket"\n' + line, text, count=1)


def mint(secret, sub, conv=None, name=None, ttl=3600):
    """spec/websocket.md section 4, as a tenant's back end does it."""
    def b64u(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    p = {"sub": sub, "exp": int(time.time()) + ttl}
    if conv:
        p["conv"] = conv
    if name:
        p["name"] = name
    body = "v1." + b64u(json.dumps(p, separators=(",", ":")).encode())
    return body + "." + b64u(hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest())


@pytest.fixture
def make_run(request):
    tokens = getattr(request, "param", None) == "tokens"
    # ipc paths must stay short (107 bytes): a /tmp dir of our own.
    tmp = tempfile.mkdtemp(prefix="kfw-", dir="/tmp")
    with open(EXAMPLE) as f:
        text, ports = rewrite_config(f.read(), tmp)
    if tokens:
        text = enable_tokens(text)
    cfg = tomllib.loads(text)
    ws = [a for a in cfg.get("adapter", []) if a.get("type") == "websocket"]
    assert ws, "config.example.toml has no websocket instance"
    cfg_path = os.path.join(tmp, "kfgate.toml")
    with open(cfg_path, "w") as f:
        f.write(text)
    log_path = os.path.join(tmp, "kfgate.log")
    logf = open(log_path, "wb")
    gw = subprocess.Popen([KFGATE, "-c", cfg_path], cwd=ROOT, stdout=logf, stderr=logf,
                          env=dict(os.environ, KFG_WS_TOKEN_SECRET=TOKEN_SECRET))
    echo_out = open(os.path.join(tmp, "echo.out"), "w+")
    echo = subprocess.Popen([ECHO, "--feed", cfg["bus"]["feed"], "--replay", cfg["bus"]["replay"],
                             "--outbound", cfg["bus"]["outbound"]],
                            stdout=echo_out, stderr=subprocess.STDOUT, text=True)

    def log():
        with open(log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    deadline = time.monotonic() + 10
    while "listening on" not in log():
        assert gw.poll() is None, "kfgate exited:\n" + log()
        assert time.monotonic() < deadline, "kfgate did not come up:\n" + log()
        time.sleep(0.05)
    env = {"port": ports["http"], "path": ws[0]["path"].rstrip("/"), "log": log,
           "echo_out": echo_out}
    try:
        yield env
    finally:
        for p in (echo, gw):
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        logf.close()
        echo_out.close()
        shutil.rmtree(tmp, ignore_errors=True)


def drive(make_run, query="", mode=None):
    assert os.path.isdir(os.path.join(DRIVER_DIR, "node_modules", "playwright-core")), \
        "run `npm install` in conformance/websocket (make test-conformance does)"
    url = "http://127.0.0.1:%d%s/widget%s" % (make_run["port"], make_run["path"], query)
    r = subprocess.run(["node", os.path.join(DRIVER_DIR, "drive.js"), url, CHROMIUM]
                       + ([mode] if mode else []),
                       cwd=DRIVER_DIR, capture_output=True, text=True, timeout=120)
    try:
        res = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        pytest.fail("driver said nothing usable (rc %d):\n%s\n%s\ngateway log:\n%s"
                    % (r.returncode, r.stdout, r.stderr, make_run["log"]()))
    assert res["ok"], "browser step failed after %s: %s\nerrors: %s\ngateway log:\n%s" % (
        [s["step"] for s in res["steps"]], res.get("failure"), res["errors"], make_run["log"]())
    assert res["errors"] == [], res["errors"]
    return res


def echo_answers(make_run):
    out = make_run["echo_out"]
    out.flush()
    out.seek(0)
    return [json.loads(ln) for ln in out.read().splitlines() if ln.startswith("{")]


def test_widget_chats_and_survives_reconnects(make_run):
    res = drive(make_run)
    assert res["steps"][0]["status"] == 200
    assert res["steps"][0]["ctype"].startswith("text/html")

    sent = ["hello one", "hello two", "hello three", "hello four", "hello five"]
    mine = [ln for ln in res["lines"] if "kfg-out" in ln["cls"]]
    echoes = [ln["text"] for ln in res["lines"] if "kfg-in" in ln["cls"]]
    # Each typed message once, in order, each acknowledged (kept over the
    # reload from sessionStorage); each echo exactly once, in order.
    assert [ln["text"] for ln in mine] == sent, res["lines"]
    assert all("kfg-sent" in ln["cls"] and ln["state"] == "✓" for ln in mine), mine
    assert echoes == ["echo: " + t for t in sent], res["lines"]
    assert res["state"]["pending"] == []
    # "hello two" was sent in the same tick as the drop: its ack could not
    # arrive on that socket, so the widget resent it and the gateway
    # answered from its dedupe index.
    offline = next(s for s in res["steps"] if s["step"].startswith("echo of a message typed"))
    assert offline["stats"]["duplicates"] >= 1, offline
    assert offline["stats"]["welcomes"] == 3, offline
    # The second tab (same anonymous conversation, from localStorage) got
    # the reply pushed to it: only that one, it joined live.
    both = next(s for s in res["steps"] if s["step"] == "echo in both tabs")
    assert both["tab2conv"] == res["state"]["conversation"]
    assert [(ln["cls"], ln["text"]) for ln in both["tab2"]] == [("kfg-in", "echo: hello five")], both

    # The core saw each message once: one answer per inbound record.
    answers = echo_answers(make_run)
    assert len(answers) == len(sent), answers
    assert len({a["in_id"] for a in answers}) == len(sent)
    assert all(a["ok"] and not a["duplicate"] for a in answers), answers


@pytest.mark.parametrize("make_run", ["tokens"], indirect=True)
def test_widget_with_a_visitor_token(make_run):
    """?token= from the tenant's back end: the widget joins the token's
    conversation (not an anonymous one) and chats."""
    conv = "conv-" + os.urandom(6).hex()
    token = mint(TOKEN_SECRET, "visitor-7", conv=conv, name="Ada")
    res = drive(make_run, "?token=" + token, mode="short")
    assert res["state"]["conversation"] == conv
    assert [ln["text"] for ln in res["lines"]] == ["hello one", "echo: hello one"], res["lines"]
    answers = echo_answers(make_run)
    assert len(answers) == 1 and answers[0]["ok"], answers


@pytest.mark.parametrize("make_run", ["tokens"], indirect=True)
@pytest.mark.parametrize("why,status", [
    ("forged", "disconnected: the visitor token is invalid"),
    ("expired", "disconnected: the visitor token has expired"),
])
def test_widget_refused_token_stops(make_run, why, status):
    """A forged (other secret) or expired token: the server closes with
    4001/4002, the widget shows why, disables the input and does not retry."""
    if why == "forged":
        token = mint("not-the-instance-secret", "visitor-8")
    else:
        token = mint(TOKEN_SECRET, "visitor-8", ttl=-10)
    res = drive(make_run, "?token=" + token, mode="refused")
    assert res["status"] == status
    assert res["inputDisabled"] is True
    assert res["state"]["stats"]["connects"] == 1
    assert res["state"]["stats"]["welcomes"] == 0
