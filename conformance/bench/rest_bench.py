"""REST adapter ingest (issue 5): requests/s and p99 of a single-message
POST {path}/messages under wrk (keep-alive, 64 connections, a Lua script
that sends the JSON body with a bearer key), each answer a 202 only after
the envelope is journaled, with the journal's default fsync ("interval",
10 ms) and with fsync "never"; next to, in the same run, a bare libevent
evhttp "hello" answering the same POST, and a small Node.js ingest server
(conformance/bench/rest_node: key check, JSON parse, validation of the
message's fields, msgpack encode with @msgpack/msgpack, 202 with an id; no
journal). Every server has one core (CPU 1) and kfgate one worker loop;
wrk runs on CPU 0. Median (min-max) of 3 runs, BENCH_SECONDS each.

A third kfgate row sets [bus] batch_linger_us = 0, to show what the
feed's default 1 ms batch linger costs this path (it once cost a third of
the core, when NNG's expire thread polled the clock; since 3d6e3fb it is
~10% of the CPU per request).

REST_BENCH_ONLY=kfgate (or a comma list of kfgate,kfgate-never,
kfgate-nolinger,evhttp,node) runs a subset."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import benchlib as B  # noqa: E402

KEY = "bench-key-0123456789abcdef"
BODY = json.dumps({"conversation": {"id": "cust-7"}, "sender": {"id": "cust-7", "name": "Li Lei"},
                   "text": "where is my parcel? order 99812 was due yesterday"},
                  separators=(",", ":"))
PATH = "/api/bench/messages"
CONNS = 64
NODE_DIR = os.path.join(B.ROOT, "conformance", "bench", "rest_node")


def lua_script(tmp):
    path = os.path.join(tmp, "post.lua")
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write("wrk.body = %s\n" % json.dumps(BODY))
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
        f.write('wrk.headers["Authorization"] = "Bearer %s"\n' % KEY)
    return path


def wrk_post(url, script, seconds=B.SECONDS):
    """One wrk run on the load CPU; (requests/s, p99 ms, errors), where
    errors count non-2xx answers and socket errors."""
    out = subprocess.run(["taskset", "-c", B.LOAD_CPU, "wrk", "-t1", f"-c{CONNS}",
                          f"-d{seconds}s", "--latency", "-s", script, url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    p99 = float(m.group(1)) * B._UNITS[m.group(2)]
    err = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(err.group(1)) if err else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return rps, p99, errors


def kfgate(fsync, linger=None):
    def start(tmp, port):
        run = tempfile.mkdtemp(dir=tmp)
        cfg = os.path.join(run, "kfgate.toml")
        fs = f'fsync = "{fsync}"\n' if fsync else ""   # None: the default policy
        lg = f"batch_linger_us = {linger}\n" if linger is not None else ""
        with open(cfg, "w") as f:
            f.write(f"""[gateway]
workers = 1
plugin_dir = "{B.ROOT}/build/plugins"
[http]
listen = "127.0.0.1:{port}"
[admin]
listen = ""
[log]
level = "warn"
[journal]
dir = "{run}/journal"
{fs}[bus]
{lg}feed = "ipc://{run}/feed"
replay = "ipc://{run}/replay"
outbound = "ipc://{run}/out"
[[adapter]]
type = "rest"
name = "bench"
tenant = "bench"
path = "/api/bench"
api_keys = ["{KEY}"]
""")
        return B.start_pinned([f"{B.ROOT}/build/kfgate", "-c", cfg]), run
    return start


def evhttp(tmp, port):
    return B.start_evhttp_hello(tmp, port), None


def node(tmp, port):
    return B.start_pinned(["node", os.path.join(NODE_DIR, "server.js"), str(port), KEY]), None


SERVERS = [("kfgate rest, fsync default (interval 10 ms)", "kfgate", kfgate(None)),
           ("kfgate rest, fsync never", "kfgate-never", kfgate("never")),
           # Diagnostic: the bus's default 1 ms linger makes NNG's expire
           # thread poll the clock (see the README of the bench results).
           ("kfgate rest, fsync default, batch_linger_us = 0", "kfgate-nolinger",
            kfgate(None, 0)),
           ("libevent evhttp hello (same POST)", "evhttp", evhttp),
           ("Node.js ingest (JSON + @msgpack/msgpack)", "node", node)]


def main():
    only = os.environ.get("REST_BENCH_ONLY")
    servers = [s for s in SERVERS if not only or s[1] in only.split(",")]
    if any(s[1] == "node" for s in servers):
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=NODE_DIR, check=True)
    results = {}
    tmp = tempfile.mkdtemp(prefix="kfg-rest-bench-")
    script = lua_script(tmp)
    try:
        for _ in range(B.RUNS):          # interleave servers run by run
            for name, _, start in servers:
                port = B.free_port()
                p, run = start(tmp, port)
                try:
                    B.wait_port(port)
                    url = f"http://127.0.0.1:{port}{PATH}"
                    wrk_post(url, script, seconds=1)     # warm-up
                    results.setdefault(name, []).append(wrk_post(url, script))
                finally:
                    B.stop(p)
                    if run:
                        shutil.rmtree(run, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def median_rps(tag):
        for name, t, _ in servers:
            if t == tag:
                return B.med([r[0] for r in results[name]])[0]
        return None
    evh, nd = median_rps("evhttp"), median_rps("node")
    rows = []
    for name, _, _ in servers:
        rps = [r[0] for r in results[name]]
        m = B.med(rps)[0]
        rows.append([name, B.fmt(rps), B.fmt([r[1] for r in results[name]], " ms", 2),
                     f"{100 * m / evh:.0f}%" if evh else "-",
                     f"{m / nd:.2f}x" if nd else "-",
                     str(sum(r[2] for r in results[name]))])
    B.table(f"REST ingest, single-message POST ({len(BODY)} B JSON), wrk -t1 -c{CONNS} "
            f"{B.SECONDS}s, server on 1 core; median (min–max) of {B.RUNS}; "
            "target >= 65k req/s, >= 1.4x Node, p99 <= 2.5 ms",
            ["server", "requests/s", "p99", "vs evhttp", "vs Node", "errors"], rows)


if __name__ == "__main__":
    main()
