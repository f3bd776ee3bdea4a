"""Shared pieces of the benchmarks: free ports, pinned processes, wrk runs,
median/min-max tables. Timings live here, never in pass/fail tests."""
import os
import re
import socket
import statistics
import subprocess
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RUNS = 3
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
LOAD_CPU, SERVER_CPU = "0", "1"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def start_pinned(argv, **kw):
    """Starts argv on SERVER_CPU; its threads inherit the pin."""
    return subprocess.Popen(["taskset", "-c", SERVER_CPU] + argv,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def start_evhttp_hello(tmp, port):
    """The reference the HTTP benchmarks are read against: a bare libevent
    evhttp server (evhttp_hello.c) answering any request with a short 200,
    built once into tmp, started pinned."""
    exe = os.path.join(tmp, "evhttp_hello")
    if not os.path.exists(exe):
        subprocess.run(["cc", "-O2", "-o", exe, os.path.join(ROOT, "conformance", "bench",
                                                             "evhttp_hello.c"), "-levent"],
                       check=True)
    return start_pinned([exe, str(port)])


def stop(p):
    p.terminate()
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url, conns=64, seconds=SECONDS):
    """One wrk run on LOAD_CPU; returns (requests/s, p99 ms, errors)."""
    out = subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}",
                          f"-d{seconds}s", "--latency", url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    p99 = float(m.group(1)) * _UNITS[m.group(2)]
    err = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(err.group(1)) if err else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return rps, p99, errors


def med(values):
    return statistics.median(values), min(values), max(values)


def fmt(values, unit="", digits=0):
    m, lo, hi = med(values)
    f = f"{{:,.{digits}f}}"
    return f"{f.format(m)}{unit} ({f.format(lo)}–{f.format(hi)})"


def table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(flush=True)
