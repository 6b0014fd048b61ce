# Legate build. `make run` and `make test` are the two entry points (README.md).
#
# B is the build directory: build/ for the normal binary, build/asan/ for the
# AddressSanitizer build that `make test` also runs the integration tests on.
B        ?= build
GEN      := build/gen
PY       := /usr/bin/python3
CC       ?= cc
CXX      ?= c++
SAN      ?=
OPT      ?= -O2
CFLAGS   += $(OPT) -g -std=gnu11 -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers \
            -pthread -Iinclude -I$(GEN) $(SAN) -DH2O_USE_LIBUV=0
CXXFLAGS += $(OPT) -g -std=c++17 -Wall -Iinclude $(SAN)
LDLIBS   := -lh2o-evloop -lnghttp2 -lprotobuf-c -lgrpc -lgpr -lssl -lcrypto -lcares -lyaml -lre2 \
            -lstdc++ -lpthread -lm
LDFLAGS  += $(SAN)

DEB_PKGS := build-essential pkg-config libh2o-evloop-dev libnghttp2-dev libprotobuf-c-dev \
            protobuf-c-compiler protobuf-compiler libprotobuf-dev libgrpc-dev libssl-dev \
            libc-ares-dev libyaml-dev libre2-dev nghttp2-client curl openssl \
            python3 python3-pytest python3-yaml python3-grpcio python3-websockets python3-h2 python3-protobuf \
            libclang-rt-14-dev procps

SRCS_C   := $(shell find src -name '*.c' ! -name main.c | sort)
SRCS_CC  := $(shell find src -name '*.cc' | sort)
OBJS     := $(SRCS_C:%.c=$(B)/%.o) $(SRCS_CC:%.cc=$(B)/%.o)
GEN_OBJS  = $(patsubst %.c,$(B)/gen/%.o,$(shell cat $(GEN)/files.txt 2>/dev/null)) $(B)/gen/registry.o
UNIT_SRCS := $(shell find test/unit -name 'test_*.c' | sort)
UNIT_BINS := $(UNIT_SRCS:test/unit/%.c=$(B)/test/%)
FUZZ_SRCS := $(shell find test/fuzz -name 'fuzz_*.c' | sort)
FUZZ_BINS := $(FUZZ_SRCS:test/fuzz/%.c=$(B)/fuzz/%)

.PHONY: all deps run test unit integration asan fuzz-replay bench clean format asan-unit
all: $(B)/legate

# Installs the Debian packages the build and the tests need, when any is missing.
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	command -v npm >/dev/null 2>&1 || missing="$$missing npm"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:" $$missing; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(GEN)/files.txt: proto/envoy-protos.txt proto/NPM_PACKAGE tools/gen-protos.sh
	sh tools/gen-protos.sh $(GEN)

$(B)/gen/%.o: $(GEN)/%.c $(GEN)/files.txt
	@mkdir -p $(dir $@)
	$(CC) -O1 -g0 -w -I$(GEN) $(SAN) -c $< -o $@

$(B)/libenvoyapi.a: $(GEN)/files.txt
	@$(MAKE) --no-print-directory $(GEN_OBJS)
	rm -f $@ && ar rcs $@ $(GEN_OBJS)

$(B)/%.o: %.c $(GEN)/files.txt
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

# The build's revision, in /server_info's version and server.version as Envoy shows its commit
# (0000... outside a git checkout). $(B)/git-sha changes only when HEAD does.
GIT_SHA := $(shell git rev-parse HEAD 2>/dev/null)
$(B)/git-sha: FORCE
	@mkdir -p $(B); echo '$(GIT_SHA)' | cmp -s - $@ 2>/dev/null || echo '$(GIT_SHA)' > $@
$(B)/src/core/options.o: $(B)/git-sha
$(B)/src/core/options.o: CFLAGS += $(if $(GIT_SHA),-DLG_GIT_SHA='"$(GIT_SHA)"')
.PHONY: FORCE
FORCE:

$(B)/%.o: %.cc
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS) -MMD -MP -c $< -o $@

$(B)/liblegate.a: $(OBJS)
	rm -f $@ && ar rcs $@ $(OBJS)

$(B)/legate: $(B)/src/main.o $(B)/liblegate.a $(B)/libenvoyapi.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(B)/test/%: test/unit/%.c $(B)/liblegate.a $(B)/libenvoyapi.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itest/unit -o $@ $^ $(LDLIBS)

# Fuzz targets linked with a driver that replays their corpus (no libFuzzer needed).
$(B)/fuzz/%: test/fuzz/%.c test/fuzz/replay.c $(B)/liblegate.a $(B)/libenvoyapi.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $^ $(LDLIBS)

-include $(shell find $(B) -name '*.d' 2>/dev/null)

run: deps all
	$(PY) tools/demo.py

unit: $(UNIT_BINS)
	@$(PY) tools/run-unit.py $(UNIT_BINS)

integration: all
	LEGATE_BIN=$(B)/legate $(PY) -m pytest -q -p no:cacheprovider test/integration

ASAN_VARS := B=build/asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer"

asan:
	$(MAKE) $(ASAN_VARS) all

# Replays every fuzz corpus on the AddressSanitizer build.
fuzz-replay:
	$(MAKE) $(ASAN_VARS) $(FUZZ_SRCS:test/fuzz/%.c=build/asan/fuzz/%)
	@for f in $(FUZZ_SRCS:test/fuzz/fuzz_%.c=%); do \
	  echo "fuzz corpus $$f:"; build/asan/fuzz/fuzz_$$f test/fuzz/corpus/$$f || exit 1; done

# The unit tests once more on the AddressSanitizer build.
asan-unit:
	LSAN_OPTIONS=suppressions=$(CURDIR)/tools/lsan.supp:print_suppressions=0 $(MAKE) $(ASAN_VARS) unit

# Unit tests (normal and AddressSanitizer builds), the integration tests on the
# normal build, then once more on the AddressSanitizer build (leaks and memory
# errors fail the run).
test: deps
	$(MAKE) all
	$(MAKE) unit
	$(MAKE) asan
	$(MAKE) asan-unit
	$(MAKE) fuzz-replay
	$(PY) tools/run-tests.py --bin $(B)/legate --asan-bin build/asan/legate

bench: deps all
	$(PY) bench/run.py

format:
	clang-format -i $$(find src include test -name '*.[ch]')

clean:
	rm -rf build
