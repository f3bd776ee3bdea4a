#!/usr/bin/env python3
"""Run the toml-test suite (TOML 1.0.0 cases) against a decoder program.

The decoder reads TOML on stdin. For valid input it prints toml-test's
tagged JSON on stdout and exits 0; for invalid input it exits non-zero.

Valid cases are compared with the expected .json by value, the way toml-test
does: key order is irrelevant, integers compare as numbers, floats as
doubles (any nan equals any nan), date/times after normalising ' '/'t' to
'T' and 'z' to 'Z', with fractional seconds compared to the nanosecond and
offset date-times compared as instants. Invalid cases must exit non-zero
without crashing. A sanitizer report on stderr fails any case.

Usage: run_toml_test.py --bin build/kfgate-toml [--suite DIR] [--jobs N]
                        [--filter SUBSTR]
"""

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

TIMEOUT = 20
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer", "UndefinedBehaviorSanitizer",
                   "runtime error:", "MemorySanitizer")
DATE = r"(\d{4})-(\d{2})-(\d{2})"
TIME = r"(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
DT_PATTERNS = {
    "datetime": re.compile(DATE + "T" + TIME + r"(Z|[+-]\d{2}:\d{2})"),
    "datetime-local": re.compile(DATE + "T" + TIME),
    "date-local": re.compile(DATE),
    "time-local": re.compile(TIME),
}


class Mismatch(Exception):
    pass


def default_suite():
    """$TOML_TEST_DIR, else the team's shared copy beside the checkout (the
    suite is third-party data and is not copied into this repository)."""
    env = os.environ.get("TOML_TEST_DIR")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    for cand in (repo.parent / "shared" / "toml-test",):
        if (cand / "files-toml-1.0.0").is_file():
            return cand
    return None


def nanos(frac):
    # Go's time.Parse, which toml-test uses, keeps 9 digits and drops the rest.
    return int((frac or "")[:9].ljust(9, "0"))


def datetime_key(kind, text):
    text = text.replace(" ", "T").replace("t", "T").replace("z", "Z")
    m = DT_PATTERNS[kind].fullmatch(text)
    if not m:
        raise Mismatch(f"{text!r} is not a valid {kind}")
    g = m.groups()
    if kind == "date-local":
        return tuple(map(int, g))
    if kind == "time-local":
        return (int(g[0]), int(g[1]), int(g[2]), nanos(g[3]))
    fields = tuple(map(int, g[:6])) + (nanos(g[6]),)
    if kind == "datetime-local":
        return fields
    offset = 0
    if g[7] != "Z":
        sign = -1 if g[7][0] == "-" else 1
        offset = sign * (int(g[7][1:3]) * 60 + int(g[7][4:6]))
    y, mo, d, h, mi, s, ns = fields
    days = datetime.date(y, mo, d).toordinal()
    return (days * 86400 + h * 3600 + mi * 60 + s - offset * 60, ns)


def is_value(node):
    return isinstance(node, dict) and len(node) == 2 and "type" in node and "value" in node


def compare_scalar(path, want, have):
    wt, ht = want["type"], have["type"]
    if wt != ht:
        raise Mismatch(f"{path}: type {ht!r}, expected {wt!r}")
    wv, hv = want["value"], have["value"]
    if not isinstance(hv, str):
        raise Mismatch(f"{path}: value is not a JSON string: {hv!r}")
    if wt == "integer":
        ok = int(wv) == int(hv)
    elif wt == "float":
        wf, hf = float(wv), float(hv)
        ok = (math.isnan(wf) and math.isnan(hf)) or wf == hf
    elif wt in DT_PATTERNS:
        ok = datetime_key(wt, wv) == datetime_key(wt, hv)
    else:
        ok = wv == hv
    if not ok:
        raise Mismatch(f"{path}: {wt} {hv!r}, expected {wv!r}")


def compare(path, want, have):
    if isinstance(want, list):
        if not isinstance(have, list):
            raise Mismatch(f"{path}: got {type(have).__name__}, expected an array")
        if len(want) != len(have):
            raise Mismatch(f"{path}: array of {len(have)} items, expected {len(want)}")
        for i, (w, h) in enumerate(zip(want, have)):
            compare(f"{path}[{i}]", w, h)
        return
    if not isinstance(want, dict):
        raise Mismatch(f"{path}: malformed expected output")
    if not isinstance(have, dict):
        raise Mismatch(f"{path}: got {type(have).__name__}, expected an object")
    if is_value(want) or is_value(have):
        if not (is_value(want) and is_value(have)):
            raise Mismatch(f"{path}: value/table mismatch")
        compare_scalar(path, want, have)
        return
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        raise Mismatch(f"{path}: missing keys {missing}, unexpected keys {extra}")
    for k in want:
        compare(f"{path}.{k}" if path else k, want[k], have[k])


def run_case(binary, suite, name):
    """Returns None on success or a failure description."""
    src = (suite / name).read_bytes()
    try:
        proc = subprocess.run([binary], input=src, capture_output=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"timed out after {TIMEOUT}s"
    err = proc.stderr.decode("utf-8", "replace")
    if any(mark in err for mark in SANITIZER_MARKS):
        return "sanitizer report:\n" + err[-2000:]
    if proc.returncode < 0:
        return f"killed by signal {-proc.returncode}"
    if name.startswith("invalid/"):
        if proc.returncode == 0:
            return "accepted invalid input"
        return None
    if proc.returncode != 0:
        return f"rejected valid input (exit {proc.returncode}): {err.strip()}"
    try:
        have = json.loads(proc.stdout)
    except ValueError as e:
        return f"output is not JSON ({e})"
    want = json.loads((suite / name).with_suffix(".json").read_bytes())
    try:
        compare("", want, have)
    except Mismatch as e:
        return f"wrong value: {e}"
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", required=True, help="decoder program (TOML on stdin)")
    ap.add_argument("--suite", type=Path, default=None,
                    help="toml-test directory (default: $TOML_TEST_DIR or "
                         "<repo>/../shared/toml-test)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 4)
    ap.add_argument("--filter", default="", help="only cases whose path contains this")
    args = ap.parse_args()

    suite = args.suite or default_suite()
    if suite is None:
        # Only where no copy of the suite exists at all (a bare clone far
        # from the shared folder): say so loudly rather than fail the build.
        # KFG_REQUIRE_TOML_TEST=1 makes it an error.
        msg = ("run_toml_test: SKIPPED: toml-test suite not found (set TOML_TEST_DIR or "
               "put it at <repo>/../shared/toml-test)")
        if os.environ.get("KFG_REQUIRE_TOML_TEST"):
            sys.exit(msg)
        print(msg, file=sys.stderr)
        sys.exit(0)
    listing = suite / "files-toml-1.0.0"
    if not listing.is_file():
        sys.exit(f"run_toml_test: toml-test suite not found: {listing} does not exist "
                 f"(use --suite DIR or set TOML_TEST_DIR)")
    binary = os.path.abspath(args.bin)
    if not os.access(binary, os.X_OK):
        sys.exit(f"run_toml_test: {args.bin} is not an executable program")

    cases = [line.strip() for line in listing.read_text().splitlines()]
    cases = [c for c in cases if c.endswith(".toml") and args.filter in c]
    if not cases:
        sys.exit("run_toml_test: no test cases selected")

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = dict(zip(cases, pool.map(lambda c: run_case(binary, suite, c), cases)))

    failures = sorted((c, r) for c, r in results.items() if r is not None)
    for c, r in failures:
        print(f"FAIL {c}: {r}")
    for kind in ("valid", "invalid"):
        total = [c for c in cases if c.startswith(kind + "/")]
        passed = [c for c in total if results[c] is None]
        print(f"{kind:>7}: {len(passed)}/{len(total)} passed")
    print(f"  total: {len(cases) - len(failures)}/{len(cases)} passed, "
          f"{len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
