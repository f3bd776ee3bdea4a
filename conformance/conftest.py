"""Black-box conformance harness for the kfgate daemon.

Every test talks to the real build/kfgate binary, started with a temporary
configuration and plugin_dir, over plain sockets. Nothing here links against
the daemon. See conformance/README.md for what each test file covers.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# KFGATE_BIN runs the suite against another build of the daemon (make
# test-conformance-asan points it at the ASan+UBSan one).
KFGATE = os.environ.get("KFGATE_BIN") or os.path.join(ROOT, "build", "kfgate")
SANITIZER_RX = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error: ")
INCLUDE = os.path.join(ROOT, "gateway", "include")

def _abi():
    """The ABI version the gateway under test speaks, from its own header."""
    with open(os.path.join(INCLUDE, "kfgate", "plugin.h")) as f:
        h = f.read()
    return tuple(int(re.search(r"#define KFG_ABI_%s (\d+)" % k, h).group(1))
                 for k in ("MAJOR", "MINOR"))


ABI_MAJOR, ABI_MINOR = _abi()
ABI = "%d.%d" % (ABI_MAJOR, ABI_MINOR)
PLUGIN_SRC = os.path.join(ROOT, "conformance", "plugins")
EXAMPLE_SO = os.path.join(ROOT, "build", "plugins", "example-adapter.so")
CC = os.environ.get("CC", "cc")

# Generous bound for "did it answer at all": never a performance criterion.
ANSWER_TIMEOUT = 5.0


# ---------------------------------------------------------------------------
# Building test plugins

def build_plugin(src, out, defines=None, extra=None):
    """Compiles conformance/plugins/<src> into the shared object `out`."""
    cmd = [CC, "-std=gnu11", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
           "-I", INCLUDE]
    for k, v in (defines or {}).items():
        cmd.append("-D%s" % k if v is None else "-D%s=%s" % (k, v))
    cmd += extra or []
    cmd += [os.path.join(PLUGIN_SRC, src), "-o", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("cannot build %s: %s\n%s" % (src, " ".join(cmd), r.stderr))
    return out


def cstr(s):
    """A -D value that the C preprocessor sees as a string literal."""
    return '"%s"' % s


@pytest.fixture(scope="session")
def plugin_cache(tmp_path_factory):
    """Test plugins, each built once per session; returns a builder."""
    d = tmp_path_factory.mktemp("plugin-builds")
    built = {}

    def get(kind, **kw):
        key = (kind, tuple(sorted(kw.items())))
        if key in built:
            return built[key]
        name = "%s-%d.so" % (kind, len(built))
        out = str(d / name)
        if kind == "echo":
            defines = {"ECHO_NAME": cstr(kw.get("name", "echo")),
                       "ECHO_VERSION": cstr(kw.get("version", "1.0"))}
            build_plugin("echo_plugin.c", out, defines)
        else:   # an ABI variant, e.g. "BAD_MAJOR"
            defines = {"VARIANT_" + kind: None,
                       "VARIANT_NAME": cstr(kw.get("name", kind.lower().replace("_", "-")))}
            build_plugin("abi_variants.c", out, defines)
        built[key] = out
        return out

    return get


# ---------------------------------------------------------------------------
# Ports and configuration

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)    # a TOML basic string is JSON-compatible here


def render_config(plugin_dir, http_port, admin_port, http=None, instances=(),
                  workers=1, workdir=None, extra=""):
    """TOML text for a daemon. `instances` are dicts with a 'kind' key
    ("adapter" or "filter") and the table's keys."""
    lines = ["[gateway]", "workers = %d" % workers,
             "plugin_dir = %s" % toml_value(plugin_dir),
             "drain_timeout_ms = 2000", "",
             "[http]", "listen = %s" % toml_value("127.0.0.1:%d" % http_port)]
    for k, v in (http or {}).items():
        lines.append("%s = %s" % (k, toml_value(v)))
    lines += ["", "[admin]",
              "listen = %s" % toml_value("127.0.0.1:%d" % admin_port if admin_port else ""),
              "", "[log]", 'level = "info"', ""]
    if workdir:
        # Keep any state the daemon may write inside the test's directory.
        lines += ["[journal]", "dir = %s" % toml_value(os.path.join(workdir, "journal")),
                  "", "[bus]",
                  "feed = %s" % toml_value("ipc://%s/feed.ipc" % workdir),
                  "replay = %s" % toml_value("ipc://%s/replay.ipc" % workdir),
                  "outbound = %s" % toml_value("ipc://%s/outbound.ipc" % workdir),
                  # Every adapter under test must emit spec-valid envelopes.
                  "validate_inbound = true", ""]
    lines.append(extra)
    for ins in instances:
        ins = dict(ins)
        lines.append("[[%s]]" % ins.pop("kind", "adapter"))
        for k, v in ins.items():
            lines.append("%s = %s" % (k, toml_value(v)))
        lines.append("")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Raw HTTP

class Response:
    def __init__(self, version, status, reason, headers, body, raw):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers      # list of (name, value) as sent
        self.body = body
        self.raw = raw

    def header(self, name, default=None):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return default

    def header_all(self, name):
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def closes(self):
        return "close" in (self.header("Connection") or "").lower()

    def __repr__(self):
        return "<Response %d %r %r>" % (self.status, self.headers, self.body[:200])


class Conn:
    """One client connection with a read buffer, so that pipelined responses
    and interim 1xx answers can be read one at a time."""

    def __init__(self, port, timeout=ANSWER_TIMEOUT, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no complete response in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by the server")
        self.buf += chunk

    def read_response(self, timeout=None, head_request=False):
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"^(HTTP/\d\.\d) (\d{3}) ?(.*)$", lines[0])
        assert m, "bad status line %r" % lines[0]
        headers = []
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers.append((k, v.strip()))
        resp = Response(m.group(1), int(m.group(2)), m.group(3), headers, b"", head)
        if resp.status < 200 or resp.status in (204, 304) or head_request:
            return resp
        cl = resp.header("Content-Length")
        assert cl is not None, "kfgate answers always carry Content-Length: %r" % resp
        n = int(cl)
        while len(self.buf) < n:
            self._fill(deadline)
        resp.body, self.buf = self.buf[:n], self.buf[n:]
        resp.raw += b"\r\n\r\n" + resp.body
        return resp

    def request(self, data, timeout=None):
        self.send(data)
        return self.read_response(timeout)

    def closed_by_peer(self, timeout=ANSWER_TIMEOUT):
        """True once the server has closed (EOF or reset) with nothing more
        pending beyond what is buffered."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def get(path, host="t"):
    return "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host)


def post(path, body, extra="", host="t"):
    if isinstance(body, str):
        body = body.encode()
    return ("POST %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s\r\n"
            % (path, host, len(body), extra)).encode() + body


def chunked(body, sizes):
    """Chunked framing of body, cut into chunks of the given sizes."""
    out, i = b"", 0
    for n in sizes:
        part = body[i:i + n]
        i += n
        if part:
            out += b"%x\r\n" % len(part) + part + b"\r\n"
    assert i >= len(body)
    return out + b"0\r\n\r\n"


def one_request(port, data, timeout=ANSWER_TIMEOUT):
    with Conn(port, timeout) as c:
        return c.request(data)


# ---------------------------------------------------------------------------
# The daemon

class Gateway:
    """A running build/kfgate with its own directory, config and log."""

    def __init__(self, root, plugins=(), http=None, instances=(), workers=1,
                 admin=True, env=None):
        self.dir = root
        self.plugin_dir = os.path.join(root, "plugins")
        os.makedirs(self.plugin_dir, exist_ok=True)
        for src, name in plugins:
            self.add_plugin(src, name)
        self.http_port = free_port()
        self.admin_port = free_port() if admin else 0
        self.http_opts = dict(http or {})
        self.workers = workers
        self.config_path = os.path.join(root, "kfgate.toml")
        self.log_path = os.path.join(root, "kfgate.log")
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.proc = None
        self.write_config(instances)

    # -- files
    def add_plugin(self, src, name):
        """Copies a built .so into plugin_dir as `name` atomically (a new
        inode, like `cp x.so.tmp && mv`), so a reload sees a new file."""
        dst = os.path.join(self.plugin_dir, name)
        tmp = os.path.join(self.plugin_dir, "." + name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        return dst

    def remove_plugin(self, name):
        os.unlink(os.path.join(self.plugin_dir, name))

    def write_config(self, instances=(), text=None, http=None):
        if text is None:
            text = render_config(self.plugin_dir, self.http_port, self.admin_port,
                                 http=http if http is not None else self.http_opts,
                                 instances=instances, workers=self.workers,
                                 workdir=self.dir)
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    # -- process
    def start(self, expect_ok=True):
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([KFGATE, "-c", self.config_path], cwd=self.dir,
                                     stdout=self.logf, stderr=self.logf, env=self.env)
        if not expect_ok:
            return self
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("kfgate exited with %d:\n%s" % (self.proc.returncode,
                                                                   self.log()))
            if "listening on" in self.log() and self._connectable():
                return self
            time.sleep(0.02)
        raise RuntimeError("kfgate did not come up:\n" + self.log())

    def _connectable(self):
        # Only the admin port is probed: a probe on the front door would hold
        # one of its max_connections slots until the daemon sees it close.
        # The front door's sockets are listening before the log line above.
        for p in [self.admin_port] if self.admin_port else []:
            try:
                socket.create_connection(("127.0.0.1", p), timeout=0.5).close()
            except OSError:
                return False
        return True

    def stop(self):
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.logf.close()
        m = SANITIZER_RX.search(self.log())
        if m:
            raise AssertionError("sanitizer report in the daemon's log:\n" +
                                 self.log()[max(0, m.start() - 200):m.start() + 6000])

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    # -- log
    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_mark(self):
        return len(self.log())

    def wait_log(self, pattern, since=0, timeout=ANSWER_TIMEOUT):
        """Waits for a log line matching the regex after offset `since`;
        returns the first matching line."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log()[since:]
            for line in text.splitlines():
                if rx.search(line):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError("no log line matching %r; log since mark:\n%s"
                                     % (pattern, text))
            time.sleep(0.02)

    # -- HTTP helpers
    def conn(self, timeout=ANSWER_TIMEOUT):
        return Conn(self.http_port, timeout)

    def admin_conn(self, timeout=ANSWER_TIMEOUT):
        return Conn(self.admin_port, timeout)

    def req(self, data, timeout=ANSWER_TIMEOUT):
        return one_request(self.http_port, data, timeout)

    def admin(self, method, path, body=b""):
        assert self.admin_port
        with Conn(self.admin_port) as c:
            if method == "GET":
                return c.request(get(path))
            return c.request(post(path, body).replace(b"POST", method.encode(), 1))

    def admin_json(self, path):
        r = self.admin("GET", path)
        assert r.status == 200, r
        return json.loads(r.body)

    def metrics(self):
        r = self.admin("GET", "/metrics")
        assert r.status == 200, r
        return r.body.decode()

    def sighup(self):
        self.proc.send_signal(signal.SIGHUP)


def metric_value(text, name, **labels):
    """The value of one Prometheus series, or None when absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                              m.group(3) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return None


@pytest.fixture
def gateway_factory(tmp_path_factory):
    """Starts daemons on demand; every one is stopped at teardown."""
    started = []

    def make(start=True, **kw):
        root = tempfile.mkdtemp(prefix="kfc-", dir="/tmp")
        gw = Gateway(root, **kw)
        started.append(gw)
        if start:
            gw.start()
        return gw

    yield make
    for gw in started:
        gw.stop()
        if gw.proc and gw.proc.returncode not in (0, None):
            print("kfgate exited with %s; log:\n%s" % (gw.proc.returncode, gw.log()))
        shutil.rmtree(gw.dir, ignore_errors=True)


def module_gateway(request, **kw):
    """A daemon shared by the tests of one module (see the module fixtures)."""
    root = tempfile.mkdtemp(prefix="kfc-", dir="/tmp")
    gw = Gateway(root, **kw)
    gw.start()

    def fin():
        gw.stop()
        shutil.rmtree(root, ignore_errors=True)

    request.addfinalizer(fin)
    return gw
