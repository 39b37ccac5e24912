# Model Nodes on Nomad: the one entry point.
#   make build     binaries into ./bin
#   make test      every test: unit + e2e (the real Nomad, Consul, Vault, node, root),
#                  then make test-v2
#   make test-v2   the driver's cgroup limits on cgroup v2, in qemu guests (scripts/v2vm)
#   make unit      the quick loop: unit tests only (no agents, no node, no root)
#   make e2e       the packages holding e2e suites, with the real agents
#   make soak      faults on Nomad's own timers (a 10.5-minute Vault outage, a node
#                  cut off past the jobs' 30 s reschedule delay); CI runs it
#   make bench     benchmarks (see docs/performance.md)
#   make scale     the system at 10,000 models (docs/scaling.md; 45-60 min, up to 11 GiB)
#   make lint      gofmt, go vet, staticcheck
#   make proto     regenerate the Go code from proto/*.proto
#   make demo      the whole story on one machine, then a clean teardown
#                  (DEMO_KEEP=1 leaves it running; make demo-down stops it)
#   make dev       start a local Nomad + Consul + Vault cluster on 127.0.0.1
#   make dev-down  stop it
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
GOTEST_FLAGS ?= -count=1 -timeout 40m
# Test binaries run at once by make test and make e2e. The e2e packages spend
# their time waiting on the agents' timers (a warm make test uses a fifth of
# its wall time in CPU on two cores), so four at a time finish sooner than
# GOMAXPROCS's two without starving each other; each package starts agents
# of its own on ports of its own.
GOTEST_PARALLEL ?= 4
BENCH ?= .
BENCH_COUNT ?= 6

export GOTOOLCHAIN := local

.PHONY: all build test test-v2 unit e2e soak bench scale lint proto hashistack uv demo demo-down dev dev-down clean tools

all: build

# The commands, and the device plugin the tests give Nomad (a test rig: it
# lives under internal/testing, which production code never imports).
build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/... ./internal/testing/testdevice/cmd/...

# with_agents obtains (or builds once and caches) the pinned HashiCorp agents
# and hands their paths to the tests through NOMAD_BIN/CONSUL_BIN/VAULT_BIN,
# make build's binaries through MODELNODES_BIN, and uv (deploy/uv/install:
# it builds Python models' environments) through MODELNODES_UV.
with_agents = eval "$$(deploy/hashistack/install | sed 's/^\([a-z]*\)=/export \U\1\E_BIN=/')"; \
  export MODELNODES_BIN=$(BIN) MODELNODES_UV=$$(deploy/uv/install | sed -n 's/^uv=//p')

# Every test: the unit tests and the e2e suites, the files whose first line
# is //go:build e2e (they need the real agents, node for the dev chain, or
# root for the driver's sandbox; see docs/testing.md). go vet of the untagged
# build first: it compiles make unit's test binaries, which the tagged run
# does not (an untagged test calling a helper only an e2e file defines).
test: hashistack uv build
	$(GO) vet ./...
	@$(with_agents); \
	  $(GO) test -tags e2e $(GOTEST_FLAGS) -p $(GOTEST_PARALLEL) ./...
	@$(MAKE) --no-print-directory test-v2

# The driver on cgroup v2. This host class boots cgroup v1 and its hierarchies
# must not change, so each test binary runs in its own throwaway qemu guest
# whose kernel has only v2 (scripts/v2vm; docs/testing.md): the cgroup and
# sandbox packages; the driver's tests that set and read limits (CPU quota,
# pids cap, the OOM kill reported, stats, cleanup, no process outliving its
# task; the device allowlist, whose BPF program driver/sandbox's
# TestSandboxReservedDevices checks); and one model job through the real
# Nomad, Consul and Vault in the guest (TestE2EReservedDevices, the same
# through Nomad's device plugins, adds about 3 minutes there: run it with
# V2_DRIVER_TESTS='...|TestE2EReservedDevices'). TestFingerprint, TestVersionIsTheBootedOne and the e2e test fail
# unless the driver (and Nomad) saw v2. Where no guest can run (not root; no
# qemu and no apt to install it) it is skipped, saying why. The guests
# stretch the tests' deadlines (MODELNODES_TEST_TIMEOUT_SCALE) for qemu's
# software CPU.
# A guest run takes 3-6 minutes; one whose guest stops answering (seen once:
# silent for 43 minutes at full CPU, under load) fails after V2_TIMEOUT, its
# kernel's last words printed, instead of taking the whole CI budget.
V2_TIMEOUT ?= 15m
V2_DRIVER_TESTS ?= TestFingerprint|TestLifecycleWithRecovery|TestHostileModelStaysInItsSandbox|TestE2ESecureModel
test-v2: hashistack build
	@rc=0; scripts/v2vm --setup || rc=$$?; \
	  if [ $$rc = 77 ]; then echo "test-v2: SKIPPED: no cgroup v2 guest can run on this machine (the reason is above)"; exit 0; fi; \
	  [ $$rc = 0 ] || exit $$rc; \
	  eval "$$(deploy/hashistack/install | sed 's/^\([a-z]*\)=/export \U\1\E_BIN=/')"; export MODELNODES_BIN=$(BIN); \
	  $(GO) test -tags e2e $(GOTEST_FLAGS) -timeout $(V2_TIMEOUT) -p 1 -exec $(CURDIR)/scripts/v2vm ./driver/cgroup ./driver/sandbox && \
	  $(GO) test -tags e2e $(GOTEST_FLAGS) -timeout $(V2_TIMEOUT) -exec $(CURDIR)/scripts/v2vm -run '^($(V2_DRIVER_TESTS))$$' ./driver

# The quick loop: the untagged tests, which need no agents, no node, no root.
# They take make build's binaries (MODELNODES_BIN) instead of each building its
# own: a minute of go build saved on two cores.
unit: build
	MODELNODES_BIN=$(BIN) $(GO) test -count=1 ./...

# The packages that hold e2e suites (scripts/e2e-packages lists them), each
# whole: its unit tests run beside its e2e suites.
e2e: hashistack uv build
	@$(with_agents); \
	  $(GO) test -tags e2e $(GOTEST_FLAGS) -p $(GOTEST_PARALLEL) $$(scripts/e2e-packages)

# Soak tests (TestSoak*): the faults make test runs with shortened timers,
# on Nomad's own (a Vault outage longer than Nomad's default template
# retries and its 5-minute re-read: about 13 minutes). CI runs it after
# make test.
soak: hashistack uv build
	@$(with_agents); \
	  MODELNODES_SOAK=1 $(GO) test -tags e2e $(GOTEST_FLAGS) -run '^TestSoak' -v ./internal/testing/testcluster/

hashistack:
	deploy/hashistack/install >/dev/null

# uv at its pinned version: on PATH, else fetched once from PyPI into ~/.cache/modelnodes.
uv:
	deploy/uv/install >/dev/null

bench: build
	MODELNODES_BIN=$(BIN) scripts/bench

# 10,000 models: the scheduler, Nomad and Consul servers on simulated
# machines, the coordinator client's fan-out and discovery (scripts/scale).
scale: build
	MODELNODES_BIN=$(BIN) scripts/scale

# go vet twice: the e2e build holds every test file, and the default build
# (make unit's) fails when an untagged test uses a helper only e2e files define.
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -tags e2e ./...

proto:
	scripts/genproto

# The demo (cmd/modelnodes-demo): its dev cluster runs on deploy/dev/up's
# ports + 1000 with its state in ~/.local/state/modelnodes/demo, next to any
# `make dev` cluster. Ctrl-C or `make demo-down` (from any shell) tears it down.
demo: hashistack uv build
	@eval "$$(deploy/hashistack/install | sed 's/^\([a-z]*\)=/export \U\1\E_BIN=/')"; \
	  $(BIN)/modelnodes-demo run $(if $(filter 1 yes true,$(DEMO_KEEP)),--keep)

demo-down:
	@if [ -x $(BIN)/modelnodes-demo ]; then $(BIN)/modelnodes-demo down; \
	  else $(GO) run ./cmd/modelnodes-demo down; fi

dev: hashistack uv build
	deploy/dev/up

dev-down:
	deploy/dev/down

clean:
	rm -rf $(BIN)
