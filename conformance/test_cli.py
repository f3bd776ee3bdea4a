"""Command line: --version, --check diagnostics (file:line:column, key,
nearest-key suggestion, types) and env:NAME secrets."""
import os
import re
import subprocess

import pytest

from conftest import ABI, KFGATE, get

ECHO_KEYS = 'path = "/e/"\n'


def run(args, env=None, cwd=None):
    e = {k: v for k, v in os.environ.items() if not k.startswith("KFC_")}
    e.update(env or {})
    return subprocess.run([KFGATE] + args, capture_output=True, text=True, timeout=30,
                          env=e, cwd=cwd)


@pytest.fixture
def pdir(tmp_path, plugin_cache):
    d = tmp_path / "plugins"
    d.mkdir()
    (d / "echo.so").write_bytes(open(plugin_cache("echo"), "rb").read())
    return d


def write(tmp_path, text):
    p = tmp_path / "kfgate.toml"
    p.write_text(text)
    return str(p)


def test_version():
    r = run(["--version"])
    assert r.returncode == 0, r
    assert re.match(r"^kfgate \d+\.\d+\.\d+ \(plugin ABI %s, libevent [^,]+, .+\)\n$"
                    % re.escape(ABI), r.stdout), r.stdout
    r2 = run(["-v"])
    assert r2.returncode == 0 and r2.stdout == r.stdout


def test_usage_errors():
    r = run([])
    assert r.returncode == 2 and "usage: kfgate" in r.stderr
    r = run(["--bogus"])
    assert r.returncode == 2 and "usage: kfgate" in r.stderr
    r = run(["--help"])
    assert r.returncode == 0 and "--check" in r.stdout


def test_check_missing_file(tmp_path):
    path = str(tmp_path / "nope.toml")
    r = run(["-c", path, "--check"])
    assert r.returncode == 1
    assert "%s: cannot open" % path in r.stderr


def test_check_valid(tmp_path, pdir):
    path = write(tmp_path, '[gateway]\nplugin_dir = "%s"\n\n[[adapter]]\ntype = "echo"\n'
                           'name = "e1"\n%s' % (pdir, ECHO_KEYS))
    r = run(["-c", path, "--check"])
    assert r.returncode == 0, r
    assert "configuration %s is valid (1 instance(s))" % path in r.stdout


def test_check_unknown_core_key_names_file_line_column_and_nearest(tmp_path, pdir):
    text = ('[gateway]\nplugin_dir = "%s"\n'
            '\n'
            '[http]\n'
            'max_headers = 10\n'
            '   max_head_byte = 4096\n' % pdir)        # line 6, column 4
    path = write(tmp_path, text)
    r = run(["-c", path, "--check"])
    assert r.returncode == 1, r
    assert ("%s:6:4: [http] unknown key 'max_head_byte' (did you mean 'max_head_bytes'?)"
            % path) in r.stderr.splitlines(), r.stderr
    assert "configuration %s is invalid" % path in r.stderr


def test_check_unknown_section_suggests(tmp_path, pdir):
    path = write(tmp_path, '[gateway]\nplugin_dir = "%s"\n[htpp]\nlisten = "x"\n' % pdir)
    r = run(["-c", path, "--check"])
    assert r.returncode == 1
    assert "%s:3:2: unknown key 'htpp' (did you mean 'http'?)" % path in r.stderr, r.stderr


def test_check_unknown_key_far_from_everything_has_no_suggestion(tmp_path, pdir):
    path = write(tmp_path, '[gateway]\nplugin_dir = "%s"\n[http]\nzzzzzzzz = 1\n' % pdir)
    r = run(["-c", path, "--check"])
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if "zzzzzzzz" in ln]
    assert lines == ["%s:4:1: [http] unknown key 'zzzzzzzz'" % path], r.stderr


def test_check_unknown_plugin_key(tmp_path, pdir):
    text = ('[gateway]\nplugin_dir = "%s"\n'
            '[[adapter]]\n'
            'type = "echo"\n'
            'name = "e1"\n'
            'path = "/e/"\n'
            'replly = "x"\n' % pdir)                    # line 7, column 1
    path = write(tmp_path, text)
    r = run(["-c", path, "--check"])
    assert r.returncode == 1
    assert ("%s:7:1: adapter 'e1' (type echo): unknown key 'replly' (did you mean 'reply'?)"
            % path) in r.stderr, r.stderr


def test_check_missing_required_plugin_key(tmp_path, pdir):
    path = write(tmp_path, '[gateway]\nplugin_dir = "%s"\n[[adapter]]\ntype = "echo"\n'
                           'name = "e1"\n' % pdir)
    r = run(["-c", path, "--check"])
    assert r.returncode == 1
    assert "%s:3:1: adapter 'e1' (type echo): key 'path' is required" % path in r.stderr, \
        r.stderr


def test_check_bad_type_core_key(tmp_path, pdir):
    text = ('[gateway]\nplugin_dir = "%s"\n'
            '[http]\n'
            'max_headers = "ten"\n' % pdir)             # line 4, value at column 15
    path = write(tmp_path, text)
    r = run(["-c", path, "--check"])
    assert r.returncode == 1
    assert ("%s:4:15: [http] key 'max_headers' must be an integer, not string" % path
            in r.stderr.splitlines()), r.stderr


def test_check_bad_type_plugin_key(tmp_path, pdir):
    text = ('[gateway]\nplugin_dir = "%s"\n'
            '[[adapter]]\n'
            'type = "echo"\n'
            'name = "e1"\n'
            'path = 42\n'                               # line 6, value at column 8
            'token = ["a"]\n' % pdir)                   # line 7, value at column 9
    path = write(tmp_path, text)
    r = run(["-c", path, "--check"])
    assert r.returncode == 1
    err = r.stderr.splitlines()
    assert ("%s:6:8: adapter 'e1' (type echo): key 'path' must be a string, not integer"
            % path) in err, r.stderr
    assert ("%s:7:9: adapter 'e1' (type echo): key 'token' must be a string "
            "(or \"env:NAME\"), not array" % path) in err, r.stderr


def test_check_out_of_range(tmp_path, pdir):
    path = write(tmp_path, '[gateway]\nplugin_dir = "%s"\n[http]\nmax_headers = -1\n' % pdir)
    r = run(["-c", path, "--check"])
    assert r.returncode == 1
    assert "%s:4:15: [http] key 'max_headers' = -1 is out of range" % path in r.stderr, r.stderr


def test_check_toml_syntax_error(tmp_path):
    path = write(tmp_path, '[gateway]\nworkers = = 1\n')
    r = run(["-c", path, "--check"])
    assert r.returncode == 1
    assert re.search(r"^%s:2:\d+: " % re.escape(path), r.stderr, re.M), r.stderr


def test_check_reports_every_error(tmp_path, pdir):
    path = write(tmp_path, '[gateway]\nplugin_dir = "%s"\nworkerz = 1\n[http]\n'
                           'max_bodyy = 1\n' % pdir)
    r = run(["-c", path, "--check"])
    assert "unknown key 'workerz' (did you mean 'workers'?)" in r.stderr
    assert "unknown key 'max_bodyy'" in r.stderr


SECRET_CFG = ('[gateway]\nplugin_dir = "%s"\n'
              '[[adapter]]\n'
              'type = "echo"\n'
              'name = "e1"\n'
              'path = "/e/"\n'
              'reply = "env:KFC_SECRET"\n'
              'token = "env:KFC_SECRET"\n')              # line 8, value at column 9


def test_check_env_secret_set(tmp_path, pdir):
    path = write(tmp_path, SECRET_CFG % pdir)
    r = run(["-c", path, "--check"], env={"KFC_SECRET": "s3cr3t-Value"})
    assert r.returncode == 0, r
    assert "s3cr3t-Value" not in r.stdout + r.stderr


def test_check_env_secret_unset(tmp_path, pdir):
    path = write(tmp_path, SECRET_CFG % pdir)
    r = run(["-c", path, "--check"])
    assert r.returncode == 1
    assert ("%s:8:9: key 'token': environment variable 'KFC_SECRET' is not set" % path
            in r.stderr.splitlines()), r.stderr


def test_check_env_secret_empty_name(tmp_path, pdir):
    path = write(tmp_path, (SECRET_CFG % pdir).replace('token = "env:KFC_SECRET"',
                                                       'token = "env:"'))
    r = run(["-c", path, "--check"])
    assert r.returncode == 1
    assert "key 'token': environment variable '' is not set" in r.stderr


def test_env_secret_reaches_plugin_and_is_never_shown(gateway_factory, plugin_cache):
    secret = "s3cr3t-Value-42"
    gw = gateway_factory(plugins=[(plugin_cache("echo"), "echo.so")],
                         env={"KFC_SECRET": secret},
                         instances=[{"kind": "adapter", "type": "echo", "name": "e1",
                                     "path": "/e/", "reply": "env:KFC_SECRET",
                                     "token": "env:KFC_SECRET"}])
    # The secret key got the environment's value ...
    assert gw.req(get("/e/secret?v=" + secret)).status == 200
    assert gw.req(get("/e/secret?v=env:KFC_SECRET")).status == 403
    # ... a plain string key is taken literally: env: is for secrets only.
    assert gw.req(get("/e/other")).body == b"env:KFC_SECRET"
    # Never printed by the host.
    assert secret not in gw.log()
    assert secret.encode() not in gw.admin("GET", "/plugins").body
    assert secret.encode() not in gw.admin("GET", "/metrics").body
    assert secret.encode() not in gw.admin("GET", "/readyz").body


def test_example_config_is_valid():
    """`make run` starts the daemon on config.example.toml: every instance in
    it must load with the plugins the build makes, with no edits."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = run(["--check", "-c", "config.example.toml"], cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "configuration config.example.toml is valid" in r.stdout + r.stderr, r
