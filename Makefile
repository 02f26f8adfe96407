# gobps: the README's two commands are `make demo` and `make test`.
GO      ?= go
BIN     := bin
RACE_PKGS := ./core/... ./summation/... ./scheduler/... ./rdma/...

.PHONY: all build demo test test-noasm vet race fuzz bench clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/bpsrun ./cmd/bpsbench
	$(GO) build -o $(BIN)/gotrain ./examples/go

# The main job: the Go training example under bpsrun, 4 workers, 2 servers.
demo: build
	$(BIN)/bpsrun --local -np 4 --servers 2 -- $(BIN)/gotrain -epochs 10

# Everything CI runs: vet, the race detector on the concurrent packages,
# then the whole suite (with the multi-process end-to-end tests), and a
# short fuzz of the wire decoder.
test: vet race fuzz test-noasm
	$(GO) test -count=1 -timeout 15m ./...

# The pure-Go build (no assembly anywhere): the whole suite in its short
# form, the end-to-end exact-sum run included, with the generic kernels.
test-noasm:
	$(GO) vet -tags noasm ./...
	$(GO) test -tags noasm -short -count=1 ./...

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

race:
	$(GO) test -race -short -count=1 -timeout 10m $(RACE_PKGS)

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeHeader -fuzztime 10s ./core/proto
	$(GO) test -run '^$$' -fuzz FuzzKernels -fuzztime 10s ./summation/kernel

bench: build
	$(BIN)/bpsbench pushpull
	$(BIN)/bpsbench sum

clean:
	rm -rf $(BIN)
