# Model Nodes on Nomad: the one entry point.
#   make build     binaries into ./bin
#   make test      unit + integration tests against the real Nomad, Consul and Vault
#   make bench     benchmarks (see docs/performance.md)
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
BENCH ?= .
BENCH_COUNT ?= 6

export GOTOOLCHAIN := local

.PHONY: all build test unit bench lint proto hashistack demo demo-down dev dev-down clean tools

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

# Obtain (or build once and cache) the pinned HashiCorp agents, then run every
# test. The agents' paths reach the tests through NOMAD_BIN/CONSUL_BIN/VAULT_BIN.
test: hashistack build
	@eval "$$(deploy/hashistack/install | sed 's/^\([a-z]*\)=/export \U\1\E_BIN=/')"; \
	  export MODELNODES_BIN=$(BIN); \
	  $(GO) test $(GOTEST_FLAGS) ./...

# Unit tests only: no agents needed.
unit:
	$(GO) test -count=1 -short ./...

hashistack:
	deploy/hashistack/install >/dev/null

bench: build
	MODELNODES_BIN=$(BIN) scripts/bench

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

proto:
	scripts/genproto

# The demo (cmd/modelnodes-demo): its dev cluster runs on deploy/dev/up's
# ports + 1000 with its state in ~/.local/state/modelnodes/demo, next to any
# `make dev` cluster. Ctrl-C or `make demo-down` (from any shell) tears it down.
demo: hashistack build
	@eval "$$(deploy/hashistack/install | sed 's/^\([a-z]*\)=/export \U\1\E_BIN=/')"; \
	  $(BIN)/modelnodes-demo run $(if $(filter 1 yes true,$(DEMO_KEEP)),--keep)

demo-down:
	@if [ -x $(BIN)/modelnodes-demo ]; then $(BIN)/modelnodes-demo down; \
	  else $(GO) run ./cmd/modelnodes-demo down; fi

dev: hashistack build
	deploy/dev/up

dev-down:
	deploy/dev/down

clean:
	rm -rf $(BIN)
