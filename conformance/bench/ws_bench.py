"""WebSocket: the gateway's websocket adapter next to a Node.js `ws` server
(conformance/bench/ws_node), measured the same way in the same run by one
load generator (conformance/bench/ws_load.c, epoll, masked client frames):

  idle       IDLE_CONNS open, idle connections (two load processes, several
             127.0.0.x source addresses), RSS of the server per connection
             (VmRSS from /proc before and after);
  handshake  upgrades/s: connect, upgrade, check Sec-WebSocket-Accept, close;
  echo       ECHO_CONNS connections each with one message in flight: messages/s
             and round-trip p50/p99. For kfgate the round trip is the whole bus
             path (adapter -> journal -> feed -> echo core -> outbound ->
             journal -> adapter); the Node server echoes directly.

The server under test (gateway with one worker, or node) is pinned to CPU 1,
the load generator to CPU 0; the echo core (ws_echo_core.c: kfgate-echo's
answers, pipelined over 256 outbound requests in flight) runs on CPU 0 beside
the load generator, since it is the application, not the gateway. Median (min-max) of 3 runs; BENCH_SECONDS
sets the length of the timed runs."""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import benchlib as B  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
IDLE_CONNS = int(os.environ.get("WS_BENCH_IDLE", "19000"))
ECHO_CONNS = int(os.environ.get("WS_BENCH_ECHO_CONNS", "1000"))
HS_SLOTS = 64
LIBS = ["-levent", "-lcurl", "-ldl", "-lpthread", "-lnng", "-lmsgpackc", "-ljansson"]
SOURCES = 16           # 127.0.0.2 .. 127.0.0.17: ports never run out

# How the widget protocol (spec/websocket.md) looks to the load generator.
WS_PATH = "/ws"
ORIGIN = "http://127.0.0.1"
KFG_PROTOCOL = "kfgate.v1.json"
KFG_HELLO = '{"type":"hello"}'
KFG_MSG = '{"type":"message","id":"{id}","text":"bench {id}"}'
KFG_MATCH = '"echo: bench '


def build(tmp):
    exe = os.path.join(tmp, "ws_load")
    subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", f"{HERE}/ws_load.c", "-lcrypto",
                    "-o", exe], check=True)
    subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-I", f"{B.ROOT}/gateway/include",
                    f"{HERE}/ws_echo_core.c", f"{B.ROOT}/build/libkfgate.a", *LIBS,
                    "-o", os.path.join(tmp, "ws_echo_core")], check=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"],
                   cwd=f"{HERE}/ws_node", check=True)
    return exe


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def parse(line):
    out = {}
    for kv in line.split():
        k, _, v = kv.partition("=")
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


class Kfgate:
    name = "kfgate websocket"
    protocol, hello, msg, match = KFG_PROTOCOL, KFG_HELLO, KFG_MSG, KFG_MATCH

    def __init__(self, tmp, core=False):
        self.tmp = tmp
        self.dir = tempfile.mkdtemp(dir=tmp)
        self.port = B.free_port()
        self.core = core
        self.cfg = os.path.join(self.dir, "kfgate.toml")
        with open(self.cfg, "w") as f:
            f.write(f"""[gateway]
workers = 1
plugin_dir = "{B.ROOT}/build/plugins"
[http]
listen = "127.0.0.1:{self.port}"
max_connections = 19800
[admin]
listen = ""
[log]
level = "warn"
[journal]
dir = "{self.dir}/journal"
[bus]
feed = "ipc://{self.dir}/feed"
replay = "ipc://{self.dir}/replay"
outbound = "ipc://{self.dir}/out"
outbound_contexts = 256
[[adapter]]
type = "websocket"
name = "bench"
tenant = "bench"
path = "{WS_PATH}"
allowed_origins = ["*"]
allow_anonymous = true
max_connections = 19800
max_connections_per_ip = 19800
# One connection carries ~100 messages/s here: far past a person's rate.
rate_per_sec = 1000000
rate_burst = 1000000
""")

    def start(self):
        self.proc = B.start_pinned([f"{B.ROOT}/build/kfgate", "-c", self.cfg])
        B.wait_port(self.port)
        self.core_proc = None
        if self.core:
            self.core_proc = subprocess.Popen(
                ["taskset", "-c", B.LOAD_CPU, os.path.join(self.tmp, "ws_echo_core"),
                 f"ipc://{self.dir}/feed", f"ipc://{self.dir}/replay", f"ipc://{self.dir}/out",
                 "256"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
        return self

    def stop(self):
        if self.core_proc:
            B.stop(self.core_proc)
        B.stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class Node:
    name = "Node.js ws 8 (echoes directly)"
    protocol, hello, msg, match = KFG_PROTOCOL, None, KFG_MSG, ""

    def __init__(self, tmp, core=False):
        self.port = B.free_port()

    def start(self):
        self.proc = B.start_pinned(["node", f"{HERE}/ws_node/server.js", str(self.port)])
        B.wait_port(self.port)
        return self

    def stop(self):
        B.stop(self.proc)


def load(exe, srv, mode, conns, seconds=None, src_base=2, extra=()):
    argv = ["taskset", "-c", B.LOAD_CPU, exe, mode, "--port", str(srv.port), "--path", WS_PATH,
            "--origin", ORIGIN, "--protocol", srv.protocol, "--conns", str(conns),
            "--src", str(SOURCES), "--src-base", str(src_base)]
    if seconds:
        argv += ["--seconds", str(seconds)]
    if srv.hello:
        argv += ["--hello", srv.hello]
    if mode == "echo":
        argv += ["--msg", srv.msg, "--match", srv.match]
    return argv + list(extra)


def run_idle(exe, srv):
    time.sleep(0.5)
    before = rss_kb(srv.proc.pid)
    half = IDLE_CONNS // 2
    procs = [subprocess.Popen(load(exe, srv, "idle", n, src_base=base), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
             for n, base in ((half, 2), (IDLE_CONNS - half, 2 + SOURCES))]
    t0 = time.time()
    opened = 0
    for p in procs:
        line = p.stdout.readline()
        opened += int(parse(line).get("open", 0))
    took = time.time() - t0
    time.sleep(2)       # let the server settle (idle timers armed, buffers released)
    after = rss_kb(srv.proc.pid)
    alive = 0
    for p in procs:
        p.stdin.close()
        alive += int(parse(p.stdout.readline()).get("open", 0))
        p.wait(30)
    return {"open": opened, "alive": alive, "kb": (after - before) / max(opened, 1),
            "rss_mb": after / 1024, "secs": took}


def run_handshake(exe, srv):
    out = subprocess.run(load(exe, srv, "handshake", HS_SLOTS, B.SECONDS), capture_output=True,
                         text=True, timeout=B.SECONDS + 60).stdout
    return parse(out)


def run_echo(exe, srv):
    out = subprocess.run(load(exe, srv, "echo", ECHO_CONNS, B.SECONDS), capture_output=True,
                         text=True, timeout=B.SECONDS + 120).stdout
    return parse(out)


def measure(tmp, exe, cls, fn, core=False):
    res = []
    for _ in range(B.RUNS):
        srv = cls(tmp, core=core).start()
        try:
            res.append(fn(exe, srv))
        finally:
            srv.stop()
    return res


def main():
    tmp = tempfile.mkdtemp(prefix="kfg-wsbench-")
    try:
        exe = build(tmp)
        servers = [c for c in (Kfgate, Node)
                   if os.environ.get("WS_BENCH_ONLY", "") in ("", c.__name__.lower())]
        idle = {c: measure(tmp, exe, c, run_idle) for c in servers}
        hs = {c: measure(tmp, exe, c, run_handshake) for c in servers}
        echo = {c: measure(tmp, exe, c, run_echo, core=True) for c in servers}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    servers = list(idle)
    rows = []
    for c in servers:
        rows.append([c.name, B.fmt([r["open"] for r in idle[c]]),
                     B.fmt([r["alive"] for r in idle[c]]),
                     B.fmt([r["kb"] for r in idle[c]], " KB", 2),
                     B.fmt([r["rss_mb"] for r in idle[c]], " MB", 1)])
    B.table(f"WebSocket idle connections ({IDLE_CONNS:,} asked, {2 * SOURCES} source addresses,"
            f" 2 load processes), server on 1 core; median (min–max) of {B.RUNS}",
            ["server", "open", "still open after 2 s", "RSS per connection", "RSS total"], rows)
    rows = []
    for c in servers:
        rows.append([c.name, B.fmt([r.get("rate", 0) for r in hs[c]]),
                     str(int(sum(r.get("errors", 0) + r.get("upgrade_errors", 0)
                                 + r.get("connect_errors", 0) for r in hs[c])))])
    B.table(f"WebSocket handshakes ({HS_SLOTS} concurrent, {B.SECONDS}s), server on 1 core;"
            f" median (min–max) of {B.RUNS}", ["server", "handshakes/s", "errors"], rows)
    rows = []
    for c in servers:
        rows.append([c.name, B.fmt([r.get("rate", 0) for r in echo[c]]),
                     B.fmt([r.get("p50_us", 0) / 1000 for r in echo[c]], " ms", 2),
                     B.fmt([r.get("p99_us", 0) / 1000 for r in echo[c]], " ms", 2),
                     str(int(sum(r.get("errors", 0) for r in echo[c])))])
    B.table(f"WebSocket echo, {ECHO_CONNS:,} connections x 1 in flight, {B.SECONDS}s, server on"
            f" 1 core (kfgate: through the bus and an echo core); median (min–max) of {B.RUNS}",
            ["server", "messages/s", "round trip p50", "p99", "errors"], rows)
    print("Targets (issue 7): <= 2 KB gateway RSS per idle connection, >= 15k handshakes/s,"
          " >= 110k echo messages/s per core with p99 under Node's. kfgate's echo core"
          " (ws_echo_core) shares CPU 0 with the load generator.", flush=True)


if __name__ == "__main__":
    main()
