# kfgate — top-level build.
#   make            daemon, tools, adapters and example plugins
#   make deps       install missing Debian packages (idempotent)
#   make test       deps + build + unit tests (ASan+UBSan) + toml-test + conformance
#   make run        deps + build + gateway in the foreground with config.example.toml
#   make fuzz       libFuzzer harnesses, FUZZ_SECONDS each
#   make bench      wrk benchmarks against evhttp and nginx (see conformance/bench)

VERSION := 0.1.0
BUILD   := build
# NNG 1.5.2 leaks in-flight messages at pipe close (see the file).
LSAN_OPTIONS := suppressions=$(CURDIR)/gateway/lsan.supp:print_suppressions=0
CC      ?= gcc
PYTHON  := /usr/bin/python3

WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
CFLAGS_BASE := -std=gnu11 -g $(WARN) -Igateway -Igateway/include -pthread \
               -D_GNU_SOURCE -DKFG_VERSION=\"$(VERSION)\"
CFLAGS  ?= -O2
SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
LIBS    := -levent -lcurl -ldl -lpthread -lnng -lmsgpackc -ljansson

# Every gateway/*.c is part of the core except tests, fuzzers, benches and main.
CORE_SRC  := $(filter-out %_test.c %_fuzz.c %_bench.c gateway/main.c,$(wildcard gateway/*.c))
CORE_OBJ  := $(CORE_SRC:gateway/%.c=$(BUILD)/obj/%.o)
ASAN_OBJ  := $(CORE_SRC:gateway/%.c=$(BUILD)/asan/%.o)
TEST_SRC  := $(wildcard gateway/*_test.c)
TEST_BIN  := $(TEST_SRC:gateway/%.c=$(BUILD)/test/%)
FUZZ_SRC  := $(wildcard gateway/*_fuzz.c)
FUZZ_BIN  := $(FUZZ_SRC:gateway/%.c=$(BUILD)/fuzz/%)
FUZZ_SECONDS ?= 60
TOOLS     := $(BUILD)/kfgate-toml $(BUILD)/kfgate-tail $(BUILD)/kfgate-send $(BUILD)/kfgate-echo
PLUGIN_DIRS := $(patsubst %/Makefile,%,$(wildcard adapters/*/Makefile plugins/*/Makefile))

DEPS_PKGS := gcc make clang libclang-rt-14-dev pkg-config libevent-dev \
             libcurl4-openssl-dev libssl-dev libxml2-dev libmsgpack-dev libnng-dev \
             libcmocka-dev libjansson-dev python3 python3-pytest python3-msgpack \
             nng-utils python3-cryptography curl \
             python3-zeep python3-lxml python3-requests \
             libwslay-dev python3-websockets chromium \
             libmosquitto-dev mosquitto mosquitto-clients python3-paho-mqtt
BENCH_PKGS := wrk nginx-light
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all deps bench-deps plugins test test-unit test-toml test-plugins \
        test-conformance test-conformance-asan fuzz fuzz-smoke run bench clean
.DELETE_ON_ERROR:

all: $(BUILD)/kfgate $(TOOLS) plugins

deps:
	@missing=$$(for p in $(DEPS_PKGS) $(EXTRA_PKGS); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "deps: installing" $$missing; \
	    $(SUDO) apt-get update -qq && \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

bench-deps:
	@$(MAKE) --no-print-directory deps EXTRA_PKGS="$(BENCH_PKGS)"

$(BUILD)/obj/%.o: gateway/%.c | $(BUILD)/obj
	$(CC) $(CFLAGS_BASE) $(CFLAGS) -MMD -MP -c $< -o $@

$(BUILD)/asan/%.o: gateway/%.c | $(BUILD)/asan
	$(CC) $(CFLAGS_BASE) -O1 $(SAN) -MMD -MP -c $< -o $@

$(BUILD)/libkfgate.a: $(CORE_OBJ)
	ar rcs $@ $^

$(BUILD)/libkfgate-asan.a: $(ASAN_OBJ)
	ar rcs $@ $^

# -rdynamic is not needed: plugins reach the daemon only through struct kfg_host.
$(BUILD)/kfgate: $(BUILD)/obj/main.o $(BUILD)/libkfgate.a
	$(CC) $(CFLAGS_BASE) $(CFLAGS) $^ $(LIBS) -o $@

# The daemon under ASan+UBSan, for test-conformance-asan.
$(BUILD)/kfgate-asan: gateway/main.c $(BUILD)/libkfgate-asan.a
	$(CC) $(CFLAGS_BASE) -O1 $(SAN) $^ $(LIBS) -o $@

# No-I/O micro-benchmarks of core hot paths (make bench runs them).
$(BUILD)/%_bench: gateway/%_bench.c $(BUILD)/libkfgate.a
	$(CC) $(CFLAGS_BASE) $(CFLAGS) $^ $(LIBS) -o $@

$(BUILD)/kfgate-toml: gateway/tools/kfgate_toml.c $(BUILD)/libkfgate.a
	$(CC) $(CFLAGS_BASE) $(CFLAGS) $^ $(LIBS) -o $@

# Bus clients (kfgate/bus.h): tail the feed, send outbound, an echo core.
$(BUILD)/kfgate-tail $(BUILD)/kfgate-send $(BUILD)/kfgate-echo: $(BUILD)/kfgate-%: gateway/tools/kfgate_%.c gateway/tools/tool_exit.h $(BUILD)/libkfgate.a
	$(CC) $(CFLAGS_BASE) $(CFLAGS) $(filter-out %.h,$^) $(LIBS) -o $@

$(BUILD)/test/%: gateway/%.c $(BUILD)/libkfgate-asan.a | $(BUILD)/test
	$(CC) $(CFLAGS_BASE) -O1 $(SAN) $^ $(LIBS) -lcmocka -o $@

$(BUILD)/fuzz/%: gateway/%.c $(CORE_SRC) | $(BUILD)/fuzz
	clang $(CFLAGS_BASE) -Wno-missing-prototypes -O1 -fsanitize=fuzzer,address,undefined \
	    $< $(filter-out $<,$(CORE_SRC)) $(LIBS) -o $@

plugins:
	@for d in $(PLUGIN_DIRS); do \
	    $(MAKE) --no-print-directory -C $$d OUT=$(CURDIR)/$(BUILD)/plugins \
	        KFGATE_INCLUDE=$(CURDIR)/gateway/include || exit 1; done

$(BUILD)/obj $(BUILD)/asan $(BUILD)/test $(BUILD)/fuzz:
	mkdir -p $@

test: deps
	@$(MAKE) --no-print-directory all
	@$(MAKE) --no-print-directory test-unit test-plugins test-toml fuzz-smoke test-conformance \
	    test-conformance-asan
	@echo "make test: all passed"

test-unit: $(TEST_BIN)
	@set -e; for t in $(TEST_BIN); do echo "== $$t"; \
	    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	    LSAN_OPTIONS=$(LSAN_OPTIONS) $$t; done

test-plugins:
	@for d in $(PLUGIN_DIRS); do \
	    if grep -q '^test:' $$d/Makefile; then \
	        $(MAKE) --no-print-directory -C $$d test OUT=$(CURDIR)/$(BUILD)/plugins \
	            KFGATE_INCLUDE=$(CURDIR)/gateway/include || exit 1; fi; done

test-toml: $(BUILD)/kfgate-toml
	$(PYTHON) conformance/toml/run_toml_test.py --bin $(BUILD)/kfgate-toml

# The WeChat tests check our passive replies with a third-party library
# (@wecom/crypto from the npm registry); the widget's browser test drives
# Debian's chromium with playwright-core (npm, no browser download).
test-conformance: all
	cd conformance/wechat && npm install --no-audit --no-fund --silent
	cd conformance/websocket && npm install --no-audit --no-fund --silent
	$(PYTHON) -m pytest -q conformance

# The bus, ABI and HTTP suites again against the ASan+UBSan daemon: races
# between loops and the journal's writer show up here, not in unit tests.
# Any sanitizer report in a daemon's log fails the test that ran it.
ASAN_SUITES := conformance/test_bus.py conformance/test_abi11.py \
               conformance/test_http_bad_requests.py conformance/test_reload.py \
               conformance/test_wechat.py
test-conformance-asan: all $(BUILD)/kfgate-asan
	KFGATE_BIN=$(CURDIR)/$(BUILD)/kfgate-asan \
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	LSAN_OPTIONS=$(LSAN_OPTIONS) \
	    $(PYTHON) -m pytest -q $(ASAN_SUITES)
	$(MAKE) --no-print-directory -C adapters/websocket asan OUT=$(CURDIR)/$(BUILD)/plugins \
	    KFGATE_INCLUDE=$(CURDIR)/gateway/include
	KFGATE_BIN=$(CURDIR)/$(BUILD)/kfgate-asan \
	KFG_WS_SO=$(CURDIR)/$(BUILD)/plugins/asan/websocket-adapter.so \
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1 \
	LSAN_OPTIONS=$(LSAN_OPTIONS) \
	    $(PYTHON) -m pytest -q conformance/test_websocket.py

# A short bounded run of every harness on its seed corpus: catches regressions
# in CI; `make fuzz` is the long run.
fuzz-smoke: $(FUZZ_BIN)
	@set -e; for f in $(FUZZ_BIN); do n=$$(basename $$f _fuzz); \
	    mkdir -p $(BUILD)/corpus/$$n; \
	    $$f -max_total_time=10 -print_final_stats=0 $(BUILD)/corpus/$$n gateway/fuzz-corpus/$$n \
	        >$(BUILD)/fuzz/$$n.log 2>&1 || { tail -40 $(BUILD)/fuzz/$$n.log; exit 1; }; \
	    echo "fuzz $$n: ok"; done
	@set -e; for d in $(PLUGIN_DIRS); do \
	    if grep -q '^fuzz-smoke:' $$d/Makefile; then \
	        $(MAKE) --no-print-directory -C $$d fuzz-smoke OUT=$(CURDIR)/$(BUILD)/plugins KFGATE_INCLUDE=$(CURDIR)/gateway/include >$(BUILD)/fuzz/$$(basename $$d).log 2>&1 \
	            || { tail -40 $(BUILD)/fuzz/$$(basename $$d).log; exit 1; }; \
	        echo "fuzz $$d: ok"; fi; done

fuzz: $(FUZZ_BIN)
	@set -e; for f in $(FUZZ_BIN); do n=$$(basename $$f _fuzz); \
	    mkdir -p $(BUILD)/corpus/$$n; \
	    $$f -max_total_time=$(FUZZ_SECONDS) $(BUILD)/corpus/$$n gateway/fuzz-corpus/$$n; done
	@set -e; for d in $(PLUGIN_DIRS); do \
	    if grep -q '^fuzz:' $$d/Makefile; then \
	        $(MAKE) --no-print-directory -C $$d fuzz FUZZ_SECONDS=$(FUZZ_SECONDS) OUT=$(CURDIR)/$(BUILD)/plugins KFGATE_INCLUDE=$(CURDIR)/gateway/include; fi; done

# The gateway in the foreground and kfgate-echo (the example core) beside
# it, so a message POSTed to the example route comes back as "echo: ...".
run: deps
	@$(MAKE) --no-print-directory all
	@$(BUILD)/kfgate-echo & echo_pid=$$!; \
	trap 'kill $$echo_pid 2>/dev/null' EXIT INT TERM; \
	$(BUILD)/kfgate -c config.example.toml

bench: bench-deps
	@$(MAKE) --no-print-directory all $(BUILD)/envelope_bench
	conformance/bench/run.sh

clean:
	rm -rf $(BUILD)

-include $(wildcard $(BUILD)/obj/*.d $(BUILD)/asan/*.d)
