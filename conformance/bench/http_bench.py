"""HTTP front door: a trivial adapter route (the example adapter's GET) under
wrk with keep-alive, next to a bare libevent evhttp "hello" and nginx
`return 200`, all in the same run. The server has one core (CPU 1) and, for
kfgate, one worker loop."""
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import benchlib as B  # noqa: E402


def kfgate(tmp, port):
    cfg = os.path.join(tmp, "kfgate.toml")
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
dir = "{tmp}/journal-{port}"
[bus]
feed = "ipc://{tmp}/feed-{port}"
replay = "ipc://{tmp}/replay-{port}"
outbound = "ipc://{tmp}/out-{port}"
[[adapter]]
type = "example"
name = "bench"
path = "/example/"
""")
    return B.start_pinned([f"{B.ROOT}/build/kfgate", "-c", cfg])


def evhttp(tmp, port):
    return B.start_evhttp_hello(tmp, port)


def nginx(tmp, port):
    with open(f"{B.ROOT}/conformance/bench/nginx.conf") as f:
        conf = f.read().replace("@PORT@", str(port)).replace("@TMP@", tmp)
    with open(os.path.join(tmp, "nginx.conf"), "w") as f:
        f.write(conf)
    return B.start_pinned(["nginx", "-p", tmp, "-c", os.path.join(tmp, "nginx.conf")])


SERVERS = [("kfgate (example route)", kfgate, "/example/"),
           ("libevent evhttp hello", evhttp, "/"),
           ("nginx return 200", nginx, "/")]


def main():
    results = {}
    tmp = tempfile.mkdtemp(prefix="kfg-bench-")
    try:
        for _ in range(B.RUNS):          # interleave servers run by run
            for name, start, path in SERVERS:
                port = B.free_port()
                p = start(tmp, port)
                try:
                    B.wait_port(port)
                    B.wrk(f"http://127.0.0.1:{port}{path}", seconds=1)   # warm-up
                    results.setdefault(name, []).append(
                        B.wrk(f"http://127.0.0.1:{port}{path}"))
                finally:
                    B.stop(p)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    evh = B.med([r[0] for r in results["libevent evhttp hello"]])[0]
    ngx = B.med([r[0] for r in results["nginx return 200"]])[0]
    rows = []
    for name, _, _ in SERVERS:
        rps = [r[0] for r in results[name]]
        m = B.med(rps)[0]
        rows.append([name, B.fmt(rps), B.fmt([r[1] for r in results[name]], " ms", 2),
                     f"{100 * m / evh:.0f}%", f"{100 * m / ngx:.0f}%",
                     str(sum(r[2] for r in results[name]))])
    B.table(f"HTTP keep-alive, wrk -t1 -c64 {B.SECONDS}s, server on 1 core; median (min–max) of {B.RUNS}",
            ["server", "requests/s", "p99", "vs evhttp", "vs nginx", "errors"], rows)


if __name__ == "__main__":
    main()
