# moat: the README's two commands are `make demo` and `make test`; both install what they
# need first (.ci/deps), so a fresh Debian 12 machine needs nothing typed before them.

GO      ?= go
BIN     := bin/moat
PKGS    := ./...
# The whole suite must stay under 15 minutes on 2 cores (CI runs it as root).
TESTFLAGS ?= -count=1 -timeout 14m

export PATH := $(PATH):/usr/local/go/bin

.PHONY: all deps generate build test demo bench bench-micro lint clean

all: build

deps:
	@./.ci/deps

## generate: compile bpf/ with clang through bpf2go into dataplane/*_bpfel.{go,o}.
generate: deps
	$(GO) generate ./dataplane/...

build: deps
	$(GO) build -o $(BIN) ./cmd/moat

test: deps
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)
	$(GO) test $(TESTFLAGS) $(PKGS)

demo: build
	./$(BIN) demo

## bench: moat against plain XDP forwarding, nftables and HAProxy, with the bounds xdp_drop
## and plain_ct (quick profile, < 5 min); `./bin/moat bench --profile full` is the long
## one. bench-micro: per-path ns/packet.
bench: build
	./$(BIN) bench --profile quick --out bench/results/latest

bench-micro: build
	$(GO) test -run '^$$' -bench FastPath -benchtime 200000x ./dataplane/
	$(GO) test -run '^$$' -bench BuildTable -benchtime 20x ./lb/

lint: deps
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)

clean:
	rm -rf bin
