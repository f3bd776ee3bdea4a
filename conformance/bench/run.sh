#!/bin/sh
# make bench: every benchmark, each next to its peer in the same run.
# Load generator pinned to CPU 0, server under test to CPU 1; median of 3
# runs with min-max. BENCH_SECONDS (default 10) sets each run's length.
set -eu
cd "$(dirname "$0")/../.."
for b in conformance/bench/*_bench.py; do
    /usr/bin/python3 "$b"
done
