"""WeChat safe-mode callbacks (issue 4): MP POSTs with encrypt_type=aes
through the whole gateway (query, msg_signature, base64, AES-256-CBC, frame
and AppID checks, inner XML, envelope, journal commit, bus publish,
"success"), next to a small Node.js server built from popular npm packages
(@wecom/crypto + fast-xml-parser + @msgpack/msgpack, conformance/bench/
wechat_node/) doing the same per-request work minus the journal. Same run,
same machine; each server pinned to CPU 1 (kfgate with one worker loop),
wrk -t1 -c64 pinned to CPU 0, with a Lua script sending each request from a
pre-generated pool of distinct messages (distinct MsgIds: the dedupe never
short-circuits; a fresh journal for every kfgate run). kfgate runs with
the default journal policy (fsync = "interval") and with fsync = "never".
A bare libevent evhttp server answering the same POSTs with no work is a
reference (the last row): what the load generator, the kernel's loopback
TCP and a plain libevent HTTP server cost by themselves. It is not a floor
for kfgate, whose own HTTP server answers a GET about twice as fast as
evhttp (http_bench.py).
Median (min-max) of 3; BENCH_SECONDS sets the run length."""
import base64
import glob
import hashlib
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

sys.path.insert(0, os.path.dirname(__file__))
import benchlib as B  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_DIR = os.path.join(HERE, "wechat_node")
LUA = os.path.join(HERE, "wechat_bench.lua")
TOKEN, AES, APPID = "pamtest", "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "wxb11529c136998cb6"
TS, NONCE = "1700000000", "584930"
WARM = 30000                      # pool lines kept for the warm-up runs
CONNS = 64


def make_pool(path, n):
    """n distinct encrypted text messages: "<msg_signature> <Encrypt>" lines."""
    key = base64.b64decode(AES + "=")
    with open(path, "w") as f:
        for i in range(n):
            inner = ("<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA["
                     "oBench%05d]]></FromUserName><CreateTime>1700000000</CreateTime><MsgType>"
                     "<![CDATA[text]]></MsgType><Content><![CDATA[你好，我想查询一下订单 %d 的状态"
                     "]]></Content><MsgId>%d</MsgId></xml>"
                     % (i % 1000, i, 7100000000000000000 + i)).encode()
            frame = os.urandom(16) + struct.pack(">I", len(inner)) + inner + APPID.encode()
            pad = 32 - len(frame) % 32
            frame += bytes([pad]) * pad
            e = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
            enc = base64.b64encode(e.update(frame) + e.finalize()).decode()
            sig = hashlib.sha1("".join(sorted([TOKEN, TS, NONCE, enc])).encode()).hexdigest()
            f.write("%s %s\n" % (sig, enc))


def kfgate(tmp, port, fsync):
    d = tempfile.mkdtemp(prefix="run-", dir=tmp)      # fresh journal: no dedupe hits
    cfg = os.path.join(d, "kfgate.toml")
    journal = "" if fsync is None else 'fsync = "%s"\n' % fsync
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
dir = "{d}/journal"
{journal}[bus]
feed = "ipc://{d}/feed"
replay = "ipc://{d}/replay"
outbound = "ipc://{d}/out"
[[adapter]]
type = "wechat"
name = "wx-bench"
tenant = "acme"
path = "/wx/bench"
variant = "mp"
mode = "safe"
token = "{TOKEN}"
encoding_aes_key = "{AES}"
receive_id = "{APPID}"
reply_window_ms = 0
""")
    return B.start_pinned([f"{B.ROOT}/build/kfgate", "-c", cfg])


def node(tmp, port, _):
    return B.start_pinned(["node", os.path.join(NODE_DIR, "server.js"), str(port), TOKEN, AES,
                           APPID])


def evhttp(tmp, port, _):
    return B.start_evhttp_hello(tmp, port)


# The evhttp row is a reference: the same wrk script and POSTs, answered with
# a bare 200 and no work at all.
SERVERS = [('kfgate wechat (fsync "interval", the default)', kfgate, "interval"),
           ('kfgate wechat (fsync "never")', kfgate, "never"),
           ("Node.js (@wecom/crypto + fast-xml-parser + @msgpack/msgpack)", node, None),
           ("libevent evhttp hello, no work (the same POSTs)", evhttp, None)]

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(port, pool, start, count, seconds):
    env = dict(os.environ, WX_POOL=pool, WX_POOL_START=str(start), WX_POOL_COUNT=str(count),
               WX_PATH="/wx/bench")
    out = subprocess.run(["taskset", "-c", B.LOAD_CPU, "wrk", "-t1", f"-c{CONNS}",
                          f"-d{seconds}s", "--latency", "-s", LUA, f"http://127.0.0.1:{port}"],
                         check=True, capture_output=True, text=True, env=env).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    p99 = float(m.group(1)) * _UNITS[m.group(2)]
    err = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(err.group(1)) if err else 0) + (sum(map(int, sock.groups())) if sock else 0)
    wrapped = "WRAPPED" in out
    return rps, p99, errors, wrapped


def micro():
    """The no-HTTP micro-benchmark of the adapter's hot path (adapters/wechat wx_bench.c)."""
    plugins = os.path.join(B.ROOT, "build", "plugins")
    subprocess.run(["make", "-s", "-C", os.path.join(B.ROOT, "adapters", "wechat"),
                    os.path.join(plugins, "..", "wechat-test", "wx_bench"), "OUT=" + plugins,
                    "KFGATE_INCLUDE=" + os.path.join(B.ROOT, "gateway", "include")],
                   check=True, stdout=subprocess.DEVNULL)
    exe = os.path.join(B.ROOT, "build", "wechat-test", "wx_bench")
    runs = {}
    for _ in range(B.RUNS):
        out = subprocess.run(["taskset", "-c", B.SERVER_CPU, exe, "200000"], check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            m = re.search(r"\((.*)\): .* = (\d+) msgs/s", line)
            runs.setdefault(m.group(1), []).append(float(m.group(2)))
    B.table(f"WeChat adapter hot path without HTTP (wx_bench: 200k safe-mode text messages, "
            f"1024 distinct, 1 core); median (min–max) of {B.RUNS}",
            ["stages", "messages/s"], [[k, B.fmt(v)] for k, v in runs.items()])


def main():
    micro()
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=NODE_DIR,
                   check=True)
    tmp = tempfile.mkdtemp(prefix="kfg-wx-bench-")
    results = {}
    try:
        # enough distinct messages for the fastest server plus warm-ups
        n = min(max(B.SECONDS * 80000, 100000), 1500000)
        pool = os.path.join(tmp, "pool.txt")
        make_pool(pool, n + WARM)
        # Every run starts on a quiet disk: the pool (hundreds of MB just
        # written) is flushed now, and each kfgate run's journal is deleted
        # after it, so that no writeback of an earlier run's pages competes
        # with a later run's fdatasyncs (a run of 3 once showed p99 8 ms).
        os.sync()
        for _ in range(B.RUNS):            # interleave servers run by run
            for name, start, arg in SERVERS:
                port = B.free_port()
                p = start(tmp, port, arg)
                try:
                    B.wait_port(port)
                    wrk(port, pool, n, WARM, 1)                            # warm-up
                    results.setdefault(name, []).append(wrk(port, pool, 0, n, B.SECONDS))
                finally:
                    B.stop(p)
                    for d in glob.glob(os.path.join(tmp, "run-*")):
                        shutil.rmtree(d, ignore_errors=True)
                    os.sync()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    node_rps = B.med([r[0] for r in results[SERVERS[2][0]]])[0]
    floor_rps = B.med([r[0] for r in results[SERVERS[3][0]]])[0]
    rows = []
    for name, _, _ in SERVERS:
        rps = [r[0] for r in results[name]]
        rows.append([name, B.fmt(rps), B.fmt([r[1] for r in results[name]], " ms", 2),
                     f"{B.med(rps)[0] / node_rps:.2f}x", f"{100 * B.med(rps)[0] / floor_rps:.0f}%",
                     str(sum(r[2] for r in results[name])),
                     "yes" if any(r[3] for r in results[name]) else "no"])
    B.table(f"WeChat safe-mode callbacks, wrk -t1 -c{CONNS} {B.SECONDS}s, distinct signed and "
            f"encrypted messages, server on 1 core; median (min–max) of {B.RUNS}",
            ["server", "callbacks/s", "p99", "vs Node.js", "vs evhttp", "errors", "pool wrapped"],
            rows)


if __name__ == "__main__":
    main()
