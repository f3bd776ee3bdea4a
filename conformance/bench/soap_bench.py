"""SOAP adapter ingest (issue 6): requests/s and p99 of a SOAP 1.1
PushMessage under wrk (keep-alive, 64 connections, a Lua script that POSTs
the envelope with its SOAPAction), each answered only after the envelope is
journaled (the default fsync "interval", 10 ms); a second row with a
WS-Security UsernameToken (PasswordText) in every request, a third with
the journal's fsync "never". Next to them, in the same run, the bare
libevent evhttp "hello" (conformance/bench/evhttp_hello.c) answering the
same POST. Every server has one core (CPU 1) and kfgate one worker loop; wrk
runs on CPU 0. Median (min-max) of 3 runs, BENCH_SECONDS each.

A fourth kfgate row sets [bus] batch_linger_us = 0 (diagnostic: the cost
of NNG's expire thread under the default 1 ms linger).

SOAP_BENCH_ONLY=kfgate,kfgate-wsse,kfgate-never,kfgate-nolinger,evhttp runs a
subset."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import benchlib as B  # noqa: E402

PATH = "/soap/bench"
CONNS = 64
ACTION = '"urn:kfgate:soap:1/PushMessage"'
PUSH = ('<?xml version="1.0" encoding="utf-8"?>'
        '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">%s<soap:Body>'
        '<k:PushMessage xmlns:k="urn:kfgate:soap:1"><k:conversationId>cust-7</k:conversationId>'
        '<k:senderId>cust-7</k:senderId><k:senderName>Li Lei</k:senderName>'
        '<k:text>where is my parcel? order 99812 was due yesterday</k:text>'
        '</k:PushMessage></soap:Body></soap:Envelope>')
WSSE = ('<soap:Header><wsse:Security xmlns:wsse="http://docs.oasis-open.org/wss/2004/01/'
        'oasis-200401-wss-wssecurity-secext-1.0.xsd"><wsse:UsernameToken><wsse:Username>bench'
        '</wsse:Username><wsse:Password Type="http://docs.oasis-open.org/wss/2004/01/oasis-'
        '200401-wss-username-token-profile-1.0#PasswordText">bench-pass</wsse:Password>'
        '</wsse:UsernameToken></wsse:Security></soap:Header>')


def lua_script(tmp, body, name):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write("wrk.body = %s\n" % json.dumps(body))
        f.write('wrk.headers["Content-Type"] = "text/xml; charset=utf-8"\n')
        f.write('wrk.headers["SOAPAction"] = %s\n' % json.dumps(ACTION))
    return path


def wrk_post(url, script, seconds=B.SECONDS):
    """One wrk run on the load CPU: (requests/s, p99 ms, errors), errors =
    non-2xx answers + socket errors."""
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


def kfgate(auth, fsync=None, linger=None):
    def start(tmp, port):
        run = tempfile.mkdtemp(dir=tmp)
        cfg = os.path.join(run, "kfgate.toml")
        fs = f'fsync = "{fsync}"\n' if fsync else ""
        lg = f"batch_linger_us = {linger}\n" if linger is not None else ""
        users = 'users = ["bench=bench-pass"]\n' if auth != "none" else ""
        with open(cfg, "w") as f:
            f.write(f"""[gateway]
workers = 1
plugin_dir = "{B.ROOT}/build/plugins"
[http]
listen = "127.0.0.1:{port}"
[admin]
listen = ""
[log]
level = "error"
[journal]
dir = "{run}/journal"
{fs}[bus]
{lg}feed = "ipc://{run}/feed"
replay = "ipc://{run}/replay"
outbound = "ipc://{run}/out"
[[adapter]]
type = "soap"
name = "bench"
tenant = "bench"
path = "{PATH}"
auth = "{auth}"
{users}""")
        return B.start_pinned([f"{B.ROOT}/build/kfgate", "-c", cfg]), run
    return start


def evhttp(tmp, port):
    exe = os.path.join(tmp, "evhttp_hello")
    if not os.path.exists(exe):
        subprocess.run(["cc", "-O2", "-o", exe, f"{B.ROOT}/conformance/bench/evhttp_hello.c",
                        "-levent"], check=True)
    return B.start_pinned([exe, str(port)]), None


SERVERS = [("kfgate soap PushMessage, fsync default (interval 10 ms)", "kfgate",
            kfgate("none"), PUSH % ""),
           ("kfgate soap PushMessage + WSSE PasswordText", "kfgate-wsse", kfgate("wsse"),
            PUSH % WSSE),
           ("kfgate soap PushMessage, fsync never", "kfgate-never", kfgate("none", "never"),
            PUSH % ""),
           # Diagnostic: with the bus's default 1 ms linger NNG's aio expire
           # thread polls the clock on the server's one core (perf: about a
           # third of it under this load); this row shows what that costs.
           ("kfgate soap PushMessage, [bus] batch_linger_us = 0", "kfgate-nolinger",
            kfgate("none", None, 0), PUSH % ""),
           ("libevent evhttp hello (same POST)", "evhttp", evhttp, PUSH % "")]


def main():
    only = os.environ.get("SOAP_BENCH_ONLY")
    servers = [s for s in SERVERS if not only or s[1] in only.split(",")]
    results = {}
    tmp = tempfile.mkdtemp(prefix="kfg-soap-bench-")
    try:
        scripts = {s[1]: lua_script(tmp, s[3], s[1] + ".lua") for s in servers}
        for _ in range(B.RUNS):          # interleave servers run by run
            for name, key, start, _body in servers:
                port = B.free_port()
                p, run = start(tmp, port)
                try:
                    B.wait_port(port)
                    url = f"http://127.0.0.1:{port}{PATH}"
                    wrk_post(url, scripts[key], seconds=1)        # warm-up
                    results.setdefault(name, []).append(wrk_post(url, scripts[key]))
                finally:
                    B.stop(p)
                    if run:
                        shutil.rmtree(run, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    evh_name = "libevent evhttp hello (same POST)"
    evh = B.med([r[0] for r in results[evh_name]])[0] if evh_name in results else None
    rows = []
    for name, _, _, _ in servers:
        rps = [r[0] for r in results[name]]
        m = B.med(rps)[0]
        rows.append([name, B.fmt(rps), B.fmt([r[1] for r in results[name]], " ms", 2),
                     f"{100 * m / evh:.0f}%" if evh else "-",
                     str(sum(r[2] for r in results[name]))])
    B.table(f"SOAP push, wrk -t1 -c{CONNS} {B.SECONDS}s POST ({len(PUSH % '')} B envelope), "
            f"server on 1 core; median (min–max) of {B.RUNS}",
            ["server", "requests/s", "p99", "vs evhttp", "errors"], rows)


if __name__ == "__main__":
    main()
