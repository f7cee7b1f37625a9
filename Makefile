# tutti: build, test and demo. `make` builds build/tutti.

SANITIZE ?=
ifeq ($(SANITIZE),address)
BUILD ?= build/asan
SANFLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else ifeq ($(SANITIZE),thread)
BUILD ?= build/tsan
SANFLAGS = -fsanitize=thread -fno-omit-frame-pointer
else
BUILD ?= build
SANFLAGS =
endif

CC ?= cc
PKGS = libmicrohttpd libnghttp2 libcares jansson libuv openssl
CFLAGS ?= -O2 -g
WARN = -Wall -Wextra -Wstrict-prototypes -Wshadow -Wno-unused-parameter -Wno-format-truncation -Werror
CPPFLAGS += -D_GNU_SOURCE -Igateway -Iclients
ALL_CFLAGS = -std=c11 $(WARN) $(CFLAGS) $(SANFLAGS) -MMD -MP \
	$(shell pkg-config --cflags $(PKGS) 2>/dev/null)
LDLIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lhttp_parser -lpthread

CLIENT_SRCS = clients/buf.c clients/errors.c clients/sockaddr.c clients/resolver.c \
	clients/transport.c \
	clients/upstream.c clients/h1.c clients/h2.c
GATEWAY_SRCS = gateway/log.c gateway/config.c gateway/template.c \
	gateway/trace.c gateway/headers.c \
	gateway/router.c gateway/aggregate.c gateway/ptimer.c gateway/fanout.c \
	gateway/server.c gateway/worker.c \
	gateway/lifecycle.c gateway/shared_config.c \
	gateway/metrics.c gateway/admin.c gateway/contracts.c
MAIN_SRC = gateway/main.c

LIB_OBJS = $(patsubst %.c,$(BUILD)/obj/%.o,$(CLIENT_SRCS) $(GATEWAY_SRCS))
MAIN_OBJ = $(BUILD)/obj/$(MAIN_SRC:.c=.o)

UNIT_TESTS = config router template aggregate h1 h2 upstream transport trace headers \
	contracts ptimer
UNIT_BINS = $(patsubst %,$(BUILD)/tests/%_test,$(UNIT_TESTS))

FIXTURE_SRCS = tests/fixture/faultd.c
FIXTURE = $(BUILD)/faultd

.PHONY: all
all: $(BUILD)/tutti

$(BUILD)/tutti: $(LIB_OBJS) $(MAIN_OBJ)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/tests/%_test: $(BUILD)/obj/tests/unit/%_test.o $(LIB_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

$(FIXTURE): $(patsubst %.c,$(BUILD)/obj/%.o,$(FIXTURE_SRCS)) $(BUILD)/obj/clients/buf.o $(BUILD)/obj/clients/errors.o
	$(CC) $(ALL_CFLAGS) -o $@ $^ $(LDLIBS)

# libFuzzer targets, built with clang into build/fuzz apart from the gcc
# trees; see tests/fuzz/README.md. The h1 and h2 targets link
# tests/fuzz/fake_transport.c in place of clients/transport.c, and
# tests/fuzz/pool_fuzz.c, the loop and call results they share.
FUZZ_CC ?= clang
FUZZ_BUILD = build/fuzz
FUZZ_TARGETS = config route aggregate h1 h2
FUZZ_SECONDS ?= 300
FUZZ_CFLAGS = -std=c11 $(WARN) -Wno-unknown-warning-option -O1 -g \
	-fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-fno-omit-frame-pointer -MMD -MP \
	$(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_LIB_OBJS = $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(CLIENT_SRCS) $(GATEWAY_SRCS))
FUZZ_FAKE_OBJS = $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,clients/buf.c \
	clients/errors.c clients/sockaddr.c tests/fuzz/fake_transport.c \
	tests/fuzz/pool_fuzz.c)
FUZZ_BINS = $(patsubst %,$(FUZZ_BUILD)/fuzz_%,$(FUZZ_TARGETS))

$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) -Itests/fuzz $(FUZZ_CFLAGS) \
		-fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_BUILD)/fuzz_config $(FUZZ_BUILD)/fuzz_route \
$(FUZZ_BUILD)/fuzz_aggregate: $(FUZZ_BUILD)/fuzz_%: \
		$(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LIB_OBJS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

$(FUZZ_BUILD)/fuzz_h1 $(FUZZ_BUILD)/fuzz_h2: $(FUZZ_BUILD)/fuzz_%: \
		$(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_BUILD)/obj/clients/%.o \
		$(FUZZ_FAKE_OBJS)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $^ $(LDLIBS)

# Keep the unit tests' objects, which make would delete as intermediates.
.SECONDARY:

.PHONY: unit-bins fixture fuzz-bins fuzz fuzz-smoke
unit-bins: $(UNIT_BINS)
fixture: $(FIXTURE)
fuzz-bins: $(FUZZ_BINS)

# Each target for FUZZ_SECONDS on a copy of its corpus, after its
# regressions; fuzz-smoke runs them for 30 s each, as `make test` does.
fuzz: fuzz-bins
	bash tests/fuzz/run.sh --seconds $(FUZZ_SECONDS) $(FUZZ_TARGETS)
fuzz-smoke: fuzz-bins
	bash tests/fuzz/run.sh --seconds 30 $(FUZZ_TARGETS)

# Packages, demo and test suite. `make test` builds three trees (plain,
# ASan+UBSan, TSan) and then runs tests/run.sh over them.
JOBS ?= $(shell nproc 2>/dev/null || echo 1)
SUBMAKE = $(MAKE) --no-print-directory -j$(JOBS)

.PHONY: deps run test format-check tools bench
deps:
	bash tests/deps.sh

# helm, kubectl, the manifest validators and the Pact CLI for the chart
# and contract tests, pinned and checksummed, in the ignored tools/ folder.
tools:
	bash tests/tools.sh

run: deps
	$(SUBMAKE) all
	TUTTI_BIN=$(BUILD)/tutti bash demo/run.sh

test: deps format-check tools
	$(SUBMAKE) SANITIZE= BUILD=build all fixture unit-bins
	$(SUBMAKE) SANITIZE=address BUILD=build/asan all fixture unit-bins
	$(SUBMAKE) SANITIZE=thread BUILD=build/tsan all fixture
	$(SUBMAKE) fuzz-bins
	bash tests/run.sh

# Soak: steady load through $(BUILD)/tutti while faultd injects faults at
# random and DNS answers move, for SOAK_SECONDS (default 600); see
# tests/soak/README.md. `make SANITIZE=address soak` runs the ASan build.
.PHONY: soak
soak: deps
	$(SUBMAKE) all fixture
	TUTTI_BIN=$(BUILD)/tutti FAULTD_BIN=$(BUILD)/faultd python3 tests/soak/soak.py

# The benchmark against the Go, Node and nginx+Lua peers: writes
# BENCHMARKS.md and docs/bench/*.png (about 12 minutes, on a quiet machine).
BENCH_PKGS = wrk gnuplot-nox golang-go golang-golang-x-sync-dev \
	golang-golang-x-net-dev libnginx-mod-http-lua lua-cjson valgrind \
	nghttp2-server
bench:
	bash tests/deps.sh $(BENCH_PKGS)
	$(SUBMAKE) all fixture
	python3 tests/bench/bench.py

FORMAT_SRCS = $(shell find gateway clients tests -name '*.[ch]' 2>/dev/null)
format-check:
	@if [ -z "$(FORMAT_SRCS)" ]; then \
		echo "format-check: no C files found"; \
	else \
		echo "clang-format --dry-run -Werror <$(words $(FORMAT_SRCS)) files>"; \
		clang-format --dry-run -Werror $(FORMAT_SRCS); \
	fi

# Static analysis of the project's own C code (tests/lint/README.md):
# clang-tidy with the checks in .clang-tidy, one process per core, then
# cppcheck. Any finding fails.
LINT_SRCS = $(CLIENT_SRCS) $(GATEWAY_SRCS) $(MAIN_SRC) $(FIXTURE_SRCS)
LINT_FLAGS = $(CPPFLAGS) -std=c11 $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
.PHONY: lint lint-clang-tidy lint-cppcheck
lint: lint-clang-tidy lint-cppcheck
lint-clang-tidy:
	printf '%s\n' $(LINT_SRCS) | xargs -P$(JOBS) -I{} \
		clang-tidy --quiet --warnings-as-errors='*' {} -- $(LINT_FLAGS)
lint-cppcheck:
	cppcheck -q -j$(JOBS) --std=c11 $(CPPFLAGS) \
		--enable=warning,performance,portability --inline-suppr \
		--suppressions-list=tests/lint/cppcheck.supp --error-exitcode=1 \
		$(LINT_SRCS)

.PHONY: clean
clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)
