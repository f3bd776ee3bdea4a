"""MQTT: device messages/s from a Mosquitto broker through the mqtt adapter,
the journal and the NNG feed to a kfgate/bus.h subscriber (bus_sub.c, as in
bus_bench.py), and its p50/p99 end to end (publish -> subscriber), next to
mosquitto_sub reading the same stream from the same broker in the same run.
QoS 1 everywhere (publisher, the gateway's subscription, mosquitto_sub's);
the gateway acknowledges only after the journal commit (spec/mqtt.md §6),
mosquitto_sub as soon as it has read a message.

Pinning (benchlib): broker and gateway (one worker) on CPU 1 (the servers);
the device publisher (mqtt_pub.c, libmosquitto), bus_sub and mosquitto_sub
on CPU 0 (the load). First as fast as the broker takes the messages, then
paced at half the gateway's measured rate for the latency figures.
BENCH_SECONDS scales the message count (5,000 per second of run)."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "mqtt"))
import benchlib as B  # noqa: E402
from broker import Broker  # noqa: E402

COUNT = int(os.environ.get("MQTT_BENCH_COUNT", str(5000 * B.SECONDS)))
DEVICES = 100
LIBS = ["-levent", "-lcurl", "-ldl", "-lpthread", "-lnng", "-lmsgpackc", "-ljansson"]


def build(tmp):
    bench = f"{B.ROOT}/conformance/bench"
    subprocess.run(["cc", "-O2", "-I", f"{B.ROOT}/gateway/include", f"{bench}/bus_sub.c",
                    f"{B.ROOT}/build/libkfgate.a", *LIBS, "-o", f"{tmp}/bus_sub"], check=True)
    subprocess.run(["cc", "-O2", f"{bench}/mqtt_pub.c", "-lmosquitto", "-o",
                    f"{tmp}/mqtt_pub"], check=True)
    plugins = os.path.join(tmp, "plugins")
    os.makedirs(plugins)
    shutil.copy(f"{B.ROOT}/build/plugins/mqtt-adapter.so", plugins)
    return plugins


def parse(line):
    return {k: float(v) for k, v in (kv.split("=") for kv in line.split()) if k}


def pct(sorted_vals, q):
    return sorted_vals[min(len(sorted_vals) - 1, int(len(sorted_vals) * q))] if sorted_vals else 0


def mosq_sub_stats(out, count):
    """mosquitto_sub -F '%U %p' lines: receive time (realtime, ns
    resolution) and the payload with R0=<realtime ns>."""
    times, lat = [], []
    for ln in out.splitlines():
        ts, _, payload = ln.partition(" ")
        i = payload.find("R0=")
        if i < 0:
            continue
        recv = float(ts)
        sent = int(payload[i + 3:payload.index(";", i)]) / 1e9
        times.append(recv)
        lat.append((recv - sent) * 1000)
    lat.sort()
    secs = times[-1] - times[0] if len(times) > 1 else 0
    return {"received": len(times), "lost": count - len(times),
            "rate": len(times) / secs if secs > 0 else 0,
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99)}


def run(tmp, plugins, count, rate):
    d = tempfile.mkdtemp(dir=tmp)
    broker = Broker(os.path.join(d, "broker"), persistence=False,
                    extra="max_queued_messages 0\nmax_inflight_messages 100").start(
                        cpu=B.SERVER_CPU)
    feed, replay = f"ipc://{d}/feed", f"ipc://{d}/replay"
    admin = B.free_port()
    cfg = os.path.join(d, "kfgate.toml")
    with open(cfg, "w") as f:
        f.write(f"""[gateway]
workers = 1
plugin_dir = "{plugins}"
[http]
listen = "127.0.0.1:{B.free_port()}"
[admin]
listen = "127.0.0.1:{admin}"
[log]
level = "warn"
[journal]
dir = "{d}/journal"
fsync = "interval"
fsync_interval_ms = 10
[bus]
feed = "{feed}"
replay = "{replay}"
outbound = "ipc://{d}/out"
[[adapter]]
type = "mqtt"
name = "fleet"
tenant = "bench"
brokers = ["{broker.url}"]
client_id = "kfgate-bench"
subscribe = ["bench/{{device}}/up"]
qos = 1
json_text = "/text"
max_pending = 10000
""")
    gw = B.start_pinned([f"{B.ROOT}/build/kfgate", "-c", cfg])
    subs = []
    try:
        B.wait_port(admin)
        time.sleep(0.5)     # connected and subscribed
        subs.append(subprocess.Popen(["taskset", "-c", B.LOAD_CPU, f"{tmp}/bus_sub", feed,
                                      replay, str(count), "5000"],
                                     stdout=subprocess.PIPE, text=True))
        # To a file, not a pipe: nobody reads a pipe while bus_sub is awaited,
        # and a full pipe would stall mosquitto_sub.
        mq_file = open(os.path.join(d, "mosquitto_sub.out"), "w")
        subs.append(subprocess.Popen(["taskset", "-c", B.LOAD_CPU, "mosquitto_sub", "-h",
                                      "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t",
                                      "bench/+/up", "-C", str(count), "-W", "60", "-F",
                                      "%U %p", "-i", "bench-mosquitto-sub"],
                                     stdout=mq_file))
        time.sleep(0.5)
        subprocess.run(["taskset", "-c", B.LOAD_CPU, f"{tmp}/mqtt_pub", "127.0.0.1",
                        str(broker.port), str(count), str(rate), "1", str(DEVICES)],
                       check=True, capture_output=True, text=True, timeout=300)
        bus_out = subs[0].communicate(timeout=120)[0].strip()
        subs[1].wait(120)
        mq_file.close()
        with open(os.path.join(d, "mosquitto_sub.out")) as f:
            mq_out = f.read()
    finally:
        for p in subs:
            if p.poll() is None:
                p.kill()
        B.stop(gw)
        broker.stop()
        shutil.rmtree(d, ignore_errors=True)
    return parse(bus_out), mosq_sub_stats(mq_out, count)


def row(label, res, count):
    return [label, B.fmt([r["rate"] for r in res]),
            f"{int(sum(r['lost'] for r in res)):,} of {B.RUNS * count:,}",
            B.fmt([r["p50_ms"] for r in res], " ms", 2),
            B.fmt([r["p99_ms"] for r in res], " ms", 2)]


def main():
    tmp = tempfile.mkdtemp(prefix="kfg-mqttbench-")
    try:
        plugins = build(tmp)
        full = [run(tmp, plugins, COUNT, 0) for _ in range(B.RUNS)]
        half = max(100, int(B.med([g["rate"] for g, _ in full])[0] / 2))
        n_half = max(1000, min(COUNT, half * B.SECONDS))
        paced = [run(tmp, plugins, n_half, half) for _ in range(B.RUNS)]
        rows = [row("kfgate mqtt -> journal -> bus subscriber, max rate", [g for g, _ in full],
                    COUNT),
                row("mosquitto_sub, same stream, max rate", [m for _, m in full], COUNT),
                row(f"kfgate mqtt -> bus subscriber, at {half:,}/s", [g for g, _ in paced],
                    n_half),
                row(f"mosquitto_sub, same stream, at {half:,}/s", [m for _, m in paced],
                    n_half)]
        B.table(f"MQTT, {COUNT:,} QoS 1 device messages over {DEVICES} topics, broker -> "
                f"subscriber; median (min–max) of {B.RUNS}; broker + gateway on CPU "
                f"{B.SERVER_CPU}, publisher + subscribers on CPU {B.LOAD_CPU}",
                ["path", "messages/s received", "lost", "p50", "p99"], rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
