"""MQTT adapter (adapters/mqtt, issue 8) against the real daemon and a real
Mosquitto broker on loopback, with third-party clients (mosquitto_pub /
mosquitto_sub and python3-paho-mqtt): JSON, msgpack and raw payloads,
topic captures field by field on the bus, QoS 0 and 1, dedupe keys,
outbound publishes with receipts, bad payloads, TLS with a test CA, the
broker SIGKILLed and restarted mid-stream without losing a QoS 1 message,
and a gateway that starts while its broker is down.

Each broker and gateway has its own temp directory, config and ports; only
PIDs started here are signalled (conformance/mqtt/broker.py)."""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import msgpack
import paho.mqtt.client as paho
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
import pytest

from conftest import ROOT, Gateway, metric_value, render_config

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "mqtt"))
from broker import Broker  # noqa: E402

# KFG_MQTT_SO: another build of the adapter (e.g. with ASan, beside KFGATE_BIN).
MQTT_SO = os.environ.get("KFG_MQTT_SO") or os.path.join(ROOT, "build", "plugins",
                                                        "mqtt-adapter.so")
REST_SO = os.path.join(ROOT, "build", "plugins", "rest-adapter.so")
TAIL = os.path.join(ROOT, "build", "kfgate-tail")
SEND = os.path.join(ROOT, "build", "kfgate-send")
PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"

pytestmark = pytest.mark.skipif(not os.path.exists(MQTT_SO),
                                reason="build/plugins/mqtt-adapter.so not built")

FAST = {"reconnect_min_ms": 100, "reconnect_max_ms": 1000, "keepalive_s": 5}


def start_gateway(root, insts, plugins, env=None):
    gw = Gateway(root, plugins=plugins, instances=insts, env=env)
    text = render_config(gw.plugin_dir, gw.http_port, gw.admin_port, instances=insts,
                         workdir=root)
    text = text.replace("[bus]\n", "[bus]\nretry_base_ms = 100\nretry_cap_ms = 400\n", 1)
    gw.write_config(text=text)
    gw.start()
    return gw


def stop_clean(gw):
    """Stops the daemon; under a sanitizer build (KFGATE_BIN, KFG_MQTT_SO) a
    report in its log fails the test."""
    gw.stop()
    log = gw.log()
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in log, log[log.index(marker) - 200:][:4000]


# ---------------------------------------------------------------------------
# The bus

def tail(gw, instance, wait_for=None, timeout=10):
    """Every record of the instance's topic, as envelopes."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([TAIL, "--from", "1", "--idle", "300", "--topic",
                              "acme/mqtt/" + instance,
                              "--feed", "ipc://%s/feed.ipc" % gw.dir,
                              "--replay", "ipc://%s/replay.ipc" % gw.dir],
                             capture_output=True, text=True, timeout=30)
        recs = [json.loads(ln)["envelope"] for ln in out.stdout.splitlines() if ln.strip()]
        if wait_for is None or wait_for(recs) or time.monotonic() > deadline:
            return recs
        time.sleep(0.1)


def inbound(gw, instance, pred, timeout=10):
    """The inbound records of the instance that satisfy pred; waits for one."""
    recs = tail(gw, instance, lambda rs: any(r["dir"] == "in" and pred(r) for r in rs),
                timeout)
    got = [r for r in recs if r["dir"] == "in" and pred(r)]
    assert got, "no matching record on the bus; records: %r" % recs[-5:]
    return got


def text_of(r):
    for p in r.get("parts", []):
        if p.get("kind") == "text":
            return p.get("text")
    return None


def send_outbound(gw, env):
    out = subprocess.run([SEND, "--outbound", "ipc://%s/outbound.ipc" % gw.dir],
                         input=json.dumps(env) + "\n", capture_output=True, text=True,
                         timeout=20)
    ans = json.loads(out.stdout.splitlines()[0])
    assert ans["ok"], ans
    return ans


def receipts(gw, instance, ref, want, timeout=15):
    def got(rs):
        return want in [r["status"] for r in rs
                        if r.get("type") == "status" and r.get("ref") == ref]
    recs = tail(gw, instance, got, timeout)
    return [r for r in recs if r.get("type") == "status" and r.get("ref") == ref]


def pub(broker, topic, payload, qos=1, port=None, extra=()):
    """mosquitto_pub; payload bytes go through a file (binary-safe)."""
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(payload if isinstance(payload, bytes) else payload.encode())
    try:
        subprocess.run([PUB, "-h", "127.0.0.1", "-p", str(port or broker.port), "-q", str(qos),
                        "-t", topic, "-f", f.name] + list(extra),
                       check=True, timeout=10, capture_output=True)
    finally:
        os.unlink(f.name)


class Sub:
    """mosquitto_sub in the background, -v lines collected."""

    def __init__(self, broker, topic, qos=1):
        self.lines = []
        self.p = subprocess.Popen([SUB, "-h", "127.0.0.1", "-p", str(broker.port), "-q",
                                   str(qos), "-t", topic, "-v", "-i",
                                   "sub-%d" % os.getpid()],
                                  stdout=subprocess.PIPE, text=True)
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()
        time.sleep(0.3)     # subscribed before anything is published

    def _read(self):
        for ln in self.p.stdout:
            self.lines.append(ln.rstrip("\n"))

    def wait(self, n=1, timeout=10):
        deadline = time.monotonic() + timeout
        while len(self.lines) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.lines)

    def close(self):
        self.p.terminate()
        self.p.wait(5)


def wait_ready(gw, want, timeout=15):
    deadline = time.monotonic() + timeout
    while True:
        r = gw.admin("GET", "/readyz")
        doc = json.loads(r.body)
        if doc["ready"] == want or time.monotonic() > deadline:
            return r.status, doc
        time.sleep(0.05)


# ---------------------------------------------------------------------------
# One broker (plain + TLS) and one gateway for the functional tests

@pytest.fixture(scope="module")
def env():
    root = tempfile.mkdtemp(prefix="kfc-mqtt-", dir="/tmp")
    b = Broker(os.path.join(root, "broker"), tls=True).start()
    base = dict(FAST, kind="adapter", type="mqtt", tenant="acme")
    insts = [
        dict(base, name="dev", brokers=[b.url], client_id="kfgate-test-dev",
             subscribe=["devices/{device}/up",
                        "sites/{site}/kiosks/{kiosk}/help => conversation.id={site}:{kiosk};"
                        " sender.id={kiosk}; sender.name=kiosk {kiosk}"],
             json_text="/text", json_fields=["sender.name=/name"], json_ts="/ts",
             dedupe="/msg_id", max_payload=4096,
             publish_topic="devices/{device}/down"),
        dict(base, name="mp", brokers=[b.url], subscribe=["mp/{device}/up"],
             format="msgpack", json_text="/text", keep_raw=True),
        dict(base, name="raw", brokers=[b.url], subscribe=["raw/{device}/up"], format="raw",
             raw_ctype="application/x-lock", qos=0, publish_topic="raw/{device}/down",
             publish_format="text", publish_qos=0),
        dict(base, name="tls", brokers=[b.tls_url], tls_ca=b.ca_path,
             subscribe=["tls/{device}/up"], json_text="/text"),
        dict(base, name="v5", brokers=[b.url], protocol="5", subscribe=["v5/{device}/up"],
             json_text="/text", dedupe="correlation_data"),
        dict(base, name="shared", brokers=[b.url], subscribe=["$share/kfg/sh/{device}/up"],
             json_text="/text"),
    ]
    gw = start_gateway(os.path.join(root, "gw"), insts, [(MQTT_SO, "mqtt-adapter.so")])
    status, doc = wait_ready(gw, True)
    assert status == 200, doc
    yield b, gw
    b.stop()
    stop_clean(gw)
    shutil.rmtree(root, ignore_errors=True)


def test_json_text_topic_captures_field_by_field(env):
    b, gw = env
    pub(b, "devices/lock-7/up", json.dumps({"text": "door jammed", "name": "Front door",
                                            "msg_id": "a-1", "ts": 1700000000000}))
    r = inbound(gw, "dev", lambda r: text_of(r) == "door jammed")[0]
    assert r["type"] == "message"
    assert r["conversation"] == {"id": "lock-7", "kind": "device"}
    assert r["sender"] == {"id": "lock-7", "role": "device", "name": "Front door"}
    assert r["channel_data"]["topic"] == "devices/lock-7/up"
    assert r["channel_data"]["device"] == "lock-7"
    assert r["channel_data"]["qos"] == 1
    assert r["ts"]["channel"] == 1700000000000
    assert r["idem"] == "lock-7:a-1"
    assert r["parts"] == [{"kind": "text", "text": "door jammed"}]
    assert r["tenant"] == "acme" and r["channel"] == "mqtt" and r["instance"] == "dev"


def test_filter_with_its_own_mapping(env):
    b, gw = env
    pub(b, "sites/berlin/kiosks/k9/help", json.dumps({"text": "paper jam"}), qos=0)
    r = inbound(gw, "dev", lambda r: text_of(r) == "paper jam")[0]
    assert r["conversation"]["id"] == "berlin:k9"
    assert r["sender"]["id"] == "k9"
    assert r["sender"]["name"] == "kiosk k9"
    assert r["channel_data"]["site"] == "berlin"
    assert r["channel_data"]["kiosk"] == "k9"
    assert r["channel_data"]["qos"] == 0


def test_telemetry_becomes_an_event_qos0(env):
    b, gw = env
    pub(b, "devices/th-1/up", json.dumps({"temp": 21.5, "bat": 80, "door": {"open": False},
                                          "hist": [1, 2]}), qos=0)
    r = inbound(gw, "dev", lambda r: r["sender"]["id"] == "th-1")[0]
    assert r["type"] == "event"
    part = r["parts"][0]
    assert part["kind"] == "event" and part["name"] == "telemetry"
    assert part["value"] == {"temp": "21.5", "bat": "80", "door": {"open": "false"},
                             "hist": "[1,2]"}
    assert r["channel_data"]["qos"] == 0


def test_msgpack_payload(env):
    b, gw = env
    body = msgpack.packb({"text": "hello from msgpack", "n": 7}, use_bin_type=True)
    pub(b, "mp/m-1/up", body)
    r = inbound(gw, "mp", lambda r: text_of(r) == "hello from msgpack")[0]
    assert r["sender"]["id"] == "m-1"
    assert r["raw"]["ctype"] == "application/msgpack"
    assert base64.b64decode(r["raw"]["body"]["$bin"]) == body


def test_raw_payload_kept_byte_for_byte(env):
    b, gw = env
    body = bytes([0x00, 0xff, 0x10, 0x80]) + b"lock"
    pub(b, "raw/r-1/up", body, qos=0)
    r = inbound(gw, "raw", lambda r: r["sender"]["id"] == "r-1")[0]
    assert r["type"] == "event"
    assert r["parts"][0] == {"kind": "event", "name": "telemetry"}
    assert r["raw"]["ctype"] == "application/x-lock"
    assert base64.b64decode(r["raw"]["body"]["$bin"]) == body


def test_dedupe_by_payload_field(env):
    b, gw = env
    m = json.dumps({"text": "same twice", "msg_id": "dup-1"})
    pub(b, "devices/d-2/up", m)
    pub(b, "devices/d-2/up", m)
    pub(b, "devices/d-2/up", json.dumps({"text": "after the dup", "msg_id": "dup-2"}))
    inbound(gw, "dev", lambda r: text_of(r) == "after the dup")
    recs = inbound(gw, "dev", lambda r: text_of(r) == "same twice")
    assert len(recs) == 1, recs
    assert recs[0]["idem"] == "d-2:dup-1"
    assert metric_value(gw.metrics(), "mqtt_messages_in_total", instance="dev",
                        outcome="duplicate") >= 1


def test_bad_payloads_become_events_and_nothing_breaks(env):
    b, gw = env
    pub(b, "devices/bad-1/up", b"{not json")
    pub(b, "devices/bad-2/up", json.dumps({"text": 5}))
    big = json.dumps({"text": "x" * 5000})                             # > max_payload 4096
    pub(b, "devices/bad-3/up", big)
    pub(b, "mp/bad-4/up", b"\xc1\x00")
    pub(b, "mp/bad-5/up", b"\xdf\xff\xff\xff\xff")                    # 4G-entry map header
    want = {"bad-1": ("invalid_json", None), "bad-2": ("invalid_field", "/text"),
            "bad-3": ("too_large", None)}
    for dev, (reason, ptr) in want.items():
        r = inbound(gw, "dev", lambda r, d=dev: r["sender"]["id"] == d)[0]
        assert r["type"] == "event"
        part = r["parts"][0]
        assert part["name"] == "invalid_payload"
        assert part["value"]["reason"] == reason, part
        assert part["value"]["detail"]
        if ptr:
            assert part["value"]["pointer"] == ptr
        assert r["channel_data"]["topic"] == "devices/%s/up" % dev
    r = inbound(gw, "dev", lambda r: r["sender"]["id"] == "bad-1")[0]
    assert base64.b64decode(r["raw"]["body"]["$bin"]) == b"{not json"
    r = inbound(gw, "dev", lambda r: r["sender"]["id"] == "bad-3")[0]
    assert "raw" not in r and r["parts"][0]["value"]["size"] == str(len(big))
    for dev in ("bad-4", "bad-5"):
        r = inbound(gw, "mp", lambda r, d=dev: r["sender"]["id"] == d)[0]
        assert r["parts"][0]["value"]["reason"] == "invalid_msgpack"
    text = gw.metrics()
    assert metric_value(text, "mqtt_errors_total", instance="dev", reason="invalid_json") >= 1
    assert metric_value(text, "mqtt_errors_total", instance="dev", reason="too_large") >= 1
    assert metric_value(text, "mqtt_errors_total", instance="mp", reason="invalid_msgpack") >= 2
    # Still serving, and good messages still flow.
    assert gw.alive()
    pub(b, "devices/good-1/up", json.dumps({"text": "still fine"}))
    inbound(gw, "dev", lambda r: text_of(r) == "still fine")
    assert "bad payload on devices/bad-1/up: invalid_json" in gw.log()


def test_outbound_publish_with_sent_receipt(env):
    b, gw = env
    sub = Sub(b, "devices/+/down")
    try:
        ans = send_outbound(gw, {"v": 1, "instance": "dev", "dir": "out", "type": "message",
                                 "conversation": {"id": "lock-7"},
                                 "parts": [{"kind": "text", "text": "unlock now"}]})
        lines = sub.wait(1)
        assert lines, "nothing published"
        topic, _, payload = lines[0].partition(" ")
        assert topic == "devices/lock-7/down"
        doc = json.loads(payload)
        assert doc["id"] == ans["id"]
        assert doc["conversation"] == "lock-7"
        assert doc["parts"] == [{"kind": "text", "text": "unlock now"}]
        rs = receipts(gw, "dev", ans["id"], "sent")
        assert [r["status"] for r in rs][:2] == ["accepted", "sent"]
    finally:
        sub.close()
    text = gw.metrics()
    assert metric_value(text, "mqtt_messages_out_total", instance="dev", outcome="sent") >= 1


def test_outbound_text_format_qos0(env):
    b, gw = env
    sub = Sub(b, "raw/+/down", qos=0)
    try:
        ans = send_outbound(gw, {"v": 1, "instance": "raw", "dir": "out", "type": "message",
                                 "conversation": {"id": "r-9"},
                                 "parts": [{"kind": "text", "text": "beep"}]})
        assert sub.wait(1) == ["raw/r-9/down beep"]
        receipts(gw, "raw", ans["id"], "sent")
    finally:
        sub.close()


def test_outbound_topic_injection_refused(env):
    b, gw = env
    sub = Sub(b, "devices/#")
    try:
        ans = send_outbound(gw, {"v": 1, "instance": "dev", "dir": "out", "type": "message",
                                 "conversation": {"id": "x/../other"},
                                 "parts": [{"kind": "text", "text": "nope"}]})
        rs = receipts(gw, "dev", ans["id"], "failed")
        failed = [r for r in rs if r["status"] == "failed"][0]
        assert failed["code"] == "mqtt:topic"
        assert failed["retriable"] is False
        assert "levels" in failed["detail"]
        time.sleep(0.3)
        assert not [ln for ln in sub.lines if "nope" in ln]
    finally:
        sub.close()


def test_tls_with_test_ca(env):
    b, gw = env
    pub(b, "tls/t-1/up", json.dumps({"text": "over tls"}), port=b.tls_port,
        extra=["--cafile", b.ca_path])
    r = inbound(gw, "tls", lambda r: text_of(r) == "over tls")[0]
    assert r["sender"]["id"] == "t-1"
    assert "connected to mqtts://127.0.0.1:%d" % b.tls_port in gw.log()


def test_mqtt5_correlation_data_dedupe(env):
    b, gw = env
    c = paho.Client(client_id="v5-pub", protocol=paho.MQTTv5)
    c.connect("127.0.0.1", b.port)
    c.loop_start()
    try:
        for text in ("first copy", "second copy"):
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = b"corr-42"
            c.publish("v5/dv/up", json.dumps({"text": text}), qos=1,
                      properties=props).wait_for_publish(5)
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = b"corr-43"
        c.publish("v5/dv/up", json.dumps({"text": "third"}), qos=1,
                  properties=props).wait_for_publish(5)
    finally:
        c.loop_stop()
        c.disconnect()
    inbound(gw, "v5", lambda r: text_of(r) == "third")
    recs = [r for r in tail(gw, "v5") if r["dir"] == "in" and r["sender"]["id"] == "dv"]
    assert [text_of(r) for r in recs] == ["first copy", "third"]
    assert recs[0]["idem"] == "dv:corr-42"


def test_shared_subscription(env):
    b, gw = env
    pub(b, "sh/s-1/up", json.dumps({"text": "to the group"}))
    r = inbound(gw, "shared", lambda r: text_of(r) == "to the group")[0]
    assert r["sender"]["id"] == "s-1"
    assert r["channel_data"]["topic"] == "sh/s-1/up"


def test_readyz_and_metrics_when_healthy(env):
    b, gw = env
    status, doc = wait_ready(gw, True)
    assert status == 200
    names = {i["name"]: i["healthy"] for i in doc["instances"]}
    assert names == {"dev": True, "mp": True, "raw": True, "tls": True, "v5": True,
                     "shared": True}
    assert metric_value(gw.metrics(), "mqtt_connected", instance="tls") == 1


# ---------------------------------------------------------------------------
# Resilience

def test_broker_killed_mid_stream_no_qos1_message_lost():
    root = tempfile.mkdtemp(prefix="kfc-mqtt-kill-", dir="/tmp")
    b = Broker(os.path.join(root, "broker")).start()
    gw = None
    c = None
    try:
        inst = dict(FAST, kind="adapter", type="mqtt", tenant="acme", name="fleet",
                    brokers=[b.url], client_id="kfgate-fleet", subscribe=["fleet/{device}/up"],
                    json_text="/text", dedupe="/id")
        gw = start_gateway(os.path.join(root, "gw"), [inst], [(MQTT_SO, "mqtt-adapter.so")])
        assert wait_ready(gw, True)[0] == 200
        time.sleep(1.5)     # the broker's autosave has our subscription
        # The publisher: QoS 1, a persistent session of its own; paho keeps
        # unacknowledged messages and resends them after reconnecting.
        c = paho.Client(client_id="fleet-publisher", clean_session=False)
        c.reconnect_delay_set(1, 2)
        c.max_inflight_messages_set(50)
        c.max_queued_messages_set(0)
        acked = set()
        c.on_publish = lambda cl, ud, mid: acked.add(mid)
        c.connect("127.0.0.1", b.port, keepalive=5)
        c.loop_start()
        n = 400
        infos = []
        for i in range(n):
            infos.append(c.publish("fleet/dev-%d/up" % (i % 5),
                                   json.dumps({"text": "m%d" % i, "id": i}), qos=1))
            if i == 150:
                b.kill()
                time.sleep(0.5)
                b.start()
            time.sleep(0.003)
        deadline = time.monotonic() + 40
        # A publish made while paho was disconnected reports NO_CONN but
        # stays queued; the broker's PUBACK (on_publish) is what counts.
        while time.monotonic() < deadline and not all(x.mid in acked for x in infos):
            time.sleep(0.05)
        unacked = [i for i, x in enumerate(infos) if x.mid not in acked]
        assert not unacked, "the broker never acknowledged %d messages" % len(unacked)

        def complete(rs):
            return len({text_of(r) for r in rs if r["dir"] == "in"}) >= n
        recs = tail(gw, "fleet", complete, timeout=30)
        got = {text_of(r) for r in recs if r["dir"] == "in"}
        missing = sorted(set("m%d" % i for i in range(n)) - got, key=lambda s: int(s[1:]))
        assert not missing, "lost %d QoS 1 messages: %s" % (len(missing), missing[:20])
        # The journal's dedupe kept redelivered copies off the bus.
        texts = [text_of(r) for r in recs if r["dir"] == "in"]
        assert len(texts) == len(set(texts)), "duplicates on the bus"
        assert gw.log().count("connected to mqtt://") >= 2
    finally:
        if c:
            c.loop_stop()
            c.disconnect()
        b.stop()
        if gw:
            stop_clean(gw)
        shutil.rmtree(root, ignore_errors=True)


def test_gateway_killed_mid_stream_no_qos1_message_lost():
    """Ack after commit: the gateway is SIGKILLed while devices publish; what
    the broker had not seen acknowledged it redelivers to the restarted
    gateway (persistent session), so every QoS 1 message reaches the bus."""
    root = tempfile.mkdtemp(prefix="kfc-mqtt-gwkill-", dir="/tmp")
    b = Broker(os.path.join(root, "broker"), persistence=False).start()
    gw = None
    c = None
    try:
        inst = dict(FAST, kind="adapter", type="mqtt", tenant="acme", name="fleet",
                    brokers=[b.url], client_id="kfgate-fleet-gw", subscribe=["f/{device}/up"],
                    json_text="/text", dedupe="/id")
        gw = start_gateway(os.path.join(root, "gw"), [inst], [(MQTT_SO, "mqtt-adapter.so")])
        assert wait_ready(gw, True)[0] == 200
        c = paho.Client(client_id="fleet-pub-2", clean_session=False)
        acked = set()
        c.on_publish = lambda cl, ud, mid: acked.add(mid)
        c.max_inflight_messages_set(100)
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        n = 3000
        infos = []
        for i in range(n):
            infos.append(c.publish("f/d%d/up" % (i % 7), json.dumps({"text": "g%d" % i, "id": i}),
                                   qos=1))
            if i == 1500:
                gw.proc.kill()      # SIGKILL: no drain, nothing flushed
                gw.proc.wait(5)
                gw.logf.close()
            if i % 100 == 0:
                time.sleep(0.01)
        gw.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(x.mid in acked for x in infos):
            time.sleep(0.05)

        def complete(rs):
            return len({text_of(r) for r in rs if r["dir"] == "in"}) >= n
        recs = tail(gw, "fleet", complete, timeout=30)
        got = {text_of(r) for r in recs if r["dir"] == "in"}
        missing = sorted(set("g%d" % i for i in range(n)) - got, key=lambda s: int(s[1:]))
        assert not missing, "lost %d QoS 1 messages: %s" % (len(missing), missing[:20])
        texts = [text_of(r) for r in recs if r["dir"] == "in"]
        assert len(texts) == len(set(texts)), "duplicates on the bus"
        assert "session resumed" in gw.log()
    finally:
        if c:
            c.loop_stop()
            c.disconnect()
        b.stop()
        if gw:
            stop_clean(gw)
        shutil.rmtree(root, ignore_errors=True)


def test_mqtt5_persistent_session_survives_a_gateway_restart():
    """protocol 5 + clean_session = false: the CONNECT carries a Session
    Expiry Interval, so what devices publish while the gateway is down is
    queued by the broker and delivered after the restart."""
    root = tempfile.mkdtemp(prefix="kfc-mqtt-v5s-", dir="/tmp")
    b = Broker(os.path.join(root, "broker"), persistence=False).start()
    gw = None
    try:
        inst = dict(FAST, kind="adapter", type="mqtt", tenant="acme", name="v5s",
                    brokers=[b.url], protocol="5", client_id="kfgate-v5s",
                    session_expiry_s=600, subscribe=["v5s/{device}/up"], json_text="/text")
        gw = start_gateway(os.path.join(root, "gw"), [inst], [(MQTT_SO, "mqtt-adapter.so")])
        assert wait_ready(gw, True)[0] == 200
        gw.proc.kill()
        gw.proc.wait(5)
        gw.logf.close()
        for i in range(10):
            pub(b, "v5s/d/up", json.dumps({"text": "while down %d" % i}))
        gw.start()
        recs = tail(gw, "v5s", lambda rs: len([r for r in rs if r["dir"] == "in"]) >= 10)
        texts = sorted(text_of(r) for r in recs if r["dir"] == "in")
        assert texts == sorted("while down %d" % i for i in range(10))
        assert "session resumed" in gw.log()
    finally:
        b.stop()
        if gw:
            stop_clean(gw)
        shutil.rmtree(root, ignore_errors=True)


def test_broker_down_at_start_other_adapters_serve_then_it_connects():
    root = tempfile.mkdtemp(prefix="kfc-mqtt-late-", dir="/tmp")
    b = Broker(os.path.join(root, "broker"), persistence=False)     # not started yet
    gw = None
    try:
        insts = [dict(FAST, kind="adapter", type="mqtt", tenant="acme", name="late",
                      brokers=[b.url], subscribe=["late/{device}/up"], json_text="/text",
                      publish_topic="late/{device}/down", reconnect_min_ms=200),
                 dict(kind="adapter", type="rest", tenant="acme", name="api", path="/api",
                      api_keys=["k-test-123456"])]
        plugins = [(MQTT_SO, "mqtt-adapter.so")]
        if os.path.exists(REST_SO):
            plugins.append((REST_SO, "rest-adapter.so"))
        else:
            insts = insts[:1]
        gw = start_gateway(os.path.join(root, "gw"), insts, plugins)
        status, doc = wait_ready(gw, True, timeout=1.5)
        assert status == 503
        late = [i for i in doc["instances"] if i["name"] == "late"][0]
        assert late["healthy"] is False
        assert "not connected" in late["detail"] and str(b.port) in late["detail"], late
        if len(insts) == 2:
            api = [i for i in doc["instances"] if i["name"] == "api"][0]
            assert api["healthy"] is True
            body = json.dumps({"conversation": "c1", "sender": "u1", "text": "hi"})
            r = gw.req(("POST /api/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
                        "k-test-123456\r\nContent-Type: application/json\r\n"
                        "Content-Length: %d\r\n\r\n%s" % (len(body), body)).encode())
            assert r.status == 202, r
        # An outbound message while the broker is down waits in the queue.
        ans = send_outbound(gw, {"v": 1, "instance": "late", "dir": "out", "type": "message",
                                 "conversation": {"id": "d1"},
                                 "parts": [{"kind": "text", "text": "queued while down"}]})
        time.sleep(0.3)
        b.start()
        sub = Sub(b, "late/+/down")
        try:
            status, doc = wait_ready(gw, True, timeout=15)
            assert status == 200, doc
            # The broker's PUBACK (the `sent` receipt) is the proof that the
            # queued message went out after the reconnect. The subscriber can
            # only see it if it subscribed before the gateway reconnected (a
            # race this test cannot order: the broker is down until now), so
            # when it did, the topic and payload must be right.
            receipts(gw, "late", ans["id"], "sent")
            lines = sub.wait(1, timeout=2)
            if lines:
                assert lines[0].startswith("late/d1/down "), lines
                assert json.loads(lines[0].split(" ", 1)[1])["id"] == ans["id"]
        finally:
            sub.close()
        pub(b, "late/d1/up", json.dumps({"text": "now connected"}))
        inbound(gw, "late", lambda r: text_of(r) == "now connected")
    finally:
        b.stop()
        if gw:
            stop_clean(gw)
        shutil.rmtree(root, ignore_errors=True)


def test_reload_replaces_the_client_without_losing_messages():
    """SIGHUP with a changed table: the new generation connects with the same
    client id (the broker hands the session over), the old one drains."""
    root = tempfile.mkdtemp(prefix="kfc-mqtt-reload-", dir="/tmp")
    b = Broker(os.path.join(root, "broker"), persistence=False).start()
    gw = None
    try:
        inst = dict(FAST, kind="adapter", type="mqtt", tenant="acme", name="rl",
                    brokers=[b.url], client_id="kfgate-rl", subscribe=["rl/{device}/up"],
                    json_text="/text", dedupe="/id")
        gw = start_gateway(os.path.join(root, "gw"), [inst], [(MQTT_SO, "mqtt-adapter.so")])
        assert wait_ready(gw, True)[0] == 200
        pub(b, "rl/a/up", json.dumps({"text": "before", "id": 1}))
        inbound(gw, "rl", lambda r: text_of(r) == "before")
        text = open(gw.config_path).read().replace('json_text = "/text"',
                                                   'json_text = "/text"\n'
                                                   'json_fields = ["sender.name=/who"]')
        gw.write_config(text=text)
        mark = gw.log_mark()
        gw.sighup()
        gw.wait_log("instance destroyed", since=mark, timeout=10)
        assert wait_ready(gw, True)[0] == 200
        for i in range(20):
            pub(b, "rl/a/up", json.dumps({"text": "after %d" % i, "id": 100 + i, "who": "Ann"}),
                qos=1)
        recs = inbound(gw, "rl", lambda r: (text_of(r) or "").startswith("after"))
        recs = tail(gw, "rl", lambda rs: len([r for r in rs if (text_of(r) or "")
                                              .startswith("after")]) >= 20)
        after = [r for r in recs if (text_of(r) or "").startswith("after")]
        assert len(after) == 20
        assert all(r["sender"].get("name") == "Ann" for r in after)
        assert gw.alive()
    finally:
        b.stop()
        if gw:
            stop_clean(gw)
        shutil.rmtree(root, ignore_errors=True)


def test_username_password_from_environment():
    root = tempfile.mkdtemp(prefix="kfc-mqtt-auth-", dir="/tmp")
    bdir = os.path.join(root, "broker")
    os.makedirs(bdir)
    pwfile = os.path.join(bdir, "passwd")
    subprocess.run(["mosquitto_passwd", "-c", "-b", pwfile, "gw", "s3cret-pw"], check=True,
                   capture_output=True)
    b = Broker(bdir, persistence=False,
               extra="allow_anonymous false\npassword_file %s" % pwfile).start()
    gw = None
    try:
        base = dict(FAST, kind="adapter", type="mqtt", tenant="acme", brokers=[b.url],
                    json_text="/text", username="gw")
        insts = [dict(base, name="good", password="env:KFG_TEST_MQTT_PW",
                      subscribe=["auth/{device}/up"]),
                 dict(base, name="wrong", password="not-it", subscribe=["other/{device}/up"])]
        gw = start_gateway(os.path.join(root, "gw"), insts, [(MQTT_SO, "mqtt-adapter.so")],
                           env={"KFG_TEST_MQTT_PW": "s3cret-pw"})
        time.sleep(1.0)
        status, doc = wait_ready(gw, True, timeout=0.5)
        health = {i["name"]: i for i in doc["instances"]}
        assert health["good"]["healthy"] is True
        assert health["wrong"]["healthy"] is False
        assert "refused" in health["wrong"]["detail"], health["wrong"]
        assert status == 503
        subprocess.run([PUB, "-h", "127.0.0.1", "-p", str(b.port), "-u", "gw", "-P", "s3cret-pw",
                        "-q", "1", "-t", "auth/a1/up", "-m", json.dumps({"text": "authed"})],
                       check=True, timeout=10)
        inbound(gw, "good", lambda r: text_of(r) == "authed")
        assert "s3cret-pw" not in gw.log()
    finally:
        b.stop()
        if gw:
            stop_clean(gw)
        shutil.rmtree(root, ignore_errors=True)


def test_mutual_tls_client_certificate():
    root = tempfile.mkdtemp(prefix="kfc-mqtt-mtls-", dir="/tmp")
    b = Broker(os.path.join(root, "broker"), tls=True, persistence=False,
               extra="require_certificate true").start()
    gw = None
    try:
        base = dict(FAST, kind="adapter", type="mqtt", tenant="acme", brokers=[b.tls_url],
                    tls_ca=b.ca_path, json_text="/text")
        insts = [dict(base, name="mtls", tls_cert=b.client_cert, tls_key=b.client_key,
                      subscribe=["m/{device}/up"]),
                 dict(base, name="nocert", subscribe=["n/{device}/up"])]
        gw = start_gateway(os.path.join(root, "gw"), insts, [(MQTT_SO, "mqtt-adapter.so")])
        time.sleep(1.0)
        status, doc = wait_ready(gw, True, timeout=0.5)
        health = {i["name"]: i for i in doc["instances"]}
        assert health["mtls"]["healthy"] is True, health
        assert health["nocert"]["healthy"] is False
        pub(b, "m/c1/up", json.dumps({"text": "mutual"}), port=b.tls_port,
            extra=["--cafile", b.ca_path, "--cert", b.client_cert, "--key", b.client_key])
        inbound(gw, "mtls", lambda r: text_of(r) == "mutual")
    finally:
        b.stop()
        if gw:
            stop_clean(gw)
        shutil.rmtree(root, ignore_errors=True)


def test_outbound_while_broker_stays_down_is_retried_then_failed():
    """Held at most outbound_queue_ms, handed back as KFG_RETRY; the gateway's
    retries run out and the receipt names the adapter's last reason."""
    root = tempfile.mkdtemp(prefix="kfc-mqtt-down-", dir="/tmp")
    b = Broker(os.path.join(root, "broker"), persistence=False)     # never started
    gw = None
    try:
        inst = dict(FAST, kind="adapter", type="mqtt", tenant="acme", name="gone",
                    brokers=[b.url], subscribe=["g/{device}/up"], publish_topic="g/{device}/down",
                    outbound_queue_ms=200)
        gw = Gateway(os.path.join(root, "gw"), plugins=[(MQTT_SO, "mqtt-adapter.so")],
                     instances=[inst])
        text = render_config(gw.plugin_dir, gw.http_port, gw.admin_port, instances=[inst],
                             workdir=gw.dir)
        text = text.replace("[bus]\n", "[bus]\nretry_max = 2\nretry_base_ms = 50\n"
                                        "retry_cap_ms = 100\n", 1)
        gw.write_config(text=text)
        gw.start()
        ans = send_outbound(gw, {"v": 1, "instance": "gone", "dir": "out", "type": "message",
                                 "conversation": {"id": "d1"},
                                 "parts": [{"kind": "text", "text": "never"}]})
        rs = receipts(gw, "gone", ans["id"], "failed", timeout=15)
        failed = [r for r in rs if r["status"] == "failed"][0]
        assert failed["code"] == "mqtt:disconnected", failed
        assert "not connected" in failed.get("detail", ""), failed
        assert "sent" not in [r["status"] for r in rs]
    finally:
        if gw:
            stop_clean(gw)
        shutil.rmtree(root, ignore_errors=True)


def test_second_broker_url_is_tried():
    root = tempfile.mkdtemp(prefix="kfc-mqtt-fo-", dir="/tmp")
    b = Broker(os.path.join(root, "broker"), persistence=False).start()
    dead = Broker(os.path.join(root, "dead"), persistence=False)     # never started
    gw = None
    try:
        inst = dict(FAST, kind="adapter", type="mqtt", tenant="acme", name="fo",
                    brokers=[dead.url, b.url], subscribe=["fo/{device}/up"], json_text="/text")
        gw = start_gateway(os.path.join(root, "gw"), [inst], [(MQTT_SO, "mqtt-adapter.so")])
        status, doc = wait_ready(gw, True, timeout=10)
        assert status == 200, doc
        assert "connected to %s" % b.url in gw.log()
        pub(b, "fo/x/up", json.dumps({"text": "via the second"}))
        inbound(gw, "fo", lambda r: text_of(r) == "via the second")
    finally:
        b.stop()
        if gw:
            stop_clean(gw)
        shutil.rmtree(root, ignore_errors=True)


def test_wrong_ca_is_unhealthy_with_reason():
    root = tempfile.mkdtemp(prefix="kfc-mqtt-ca-", dir="/tmp")
    b = Broker(os.path.join(root, "broker"), tls=True, persistence=False).start()
    other = os.path.join(root, "other")
    os.makedirs(other)
    from broker import make_ca
    _, _, wrong_ca = make_ca(other, cn="some other CA")
    gw = None
    try:
        inst = dict(FAST, kind="adapter", type="mqtt", tenant="acme", name="badca",
                    brokers=[b.tls_url], tls_ca=wrong_ca, subscribe=["x/{d}"])
        gw = start_gateway(os.path.join(root, "gw"), [inst], [(MQTT_SO, "mqtt-adapter.so")])
        time.sleep(1.0)
        status, doc = wait_ready(gw, True, timeout=0.5)
        assert status == 503
        assert doc["instances"][0]["healthy"] is False
        assert "not connected" in doc["instances"][0]["detail"]
        assert gw.alive()
    finally:
        b.stop()
        if gw:
            stop_clean(gw)
        shutil.rmtree(root, ignore_errors=True)
