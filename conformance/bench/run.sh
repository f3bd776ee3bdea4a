#!/bin/sh
# make bench: every benchmark, each next to its peer in the same run.
# Load generator pinned to CPU 0, server under test to CPU 1; median of 3
# runs with min-max. BENCH_SECONDS (default 10) sets each run's length.
set -eu
cd "$(dirname "$0")/../.."
# Core hot path without I/O: build a typical message and encode its envelope.
for i in 1 2 3; do taskset -c 1 build/envelope_bench 300000; done
for b in conformance/bench/*_bench.py; do
    /usr/bin/python3 "$b"
done
