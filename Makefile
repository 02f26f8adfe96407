# gobps: the README's two commands are `make demo` and `make test`.
GO      ?= go
BIN     := bin
RACE_PKGS := ./core/... ./summation/... ./scheduler/... ./rdma/... ./gpu/... ./cgo/... ./cluster/... ./internal/... ./cmd/internal/...
# Debian's python3-torch and python3-sklearn work with this interpreter only.
PY      := /usr/bin/python3
PYDEPS  := python3-torch python3-sklearn
LIB     := build/libgobps.so
# Build dependencies from Debian: the verbs headers the rdma/ibv shims
# compile against (the library itself is loaded at run time, if present).
DEPS    := libibverbs-dev
GUEST   := build/rdma-guest

.PHONY: all deps sshdeps test-slurm build lib pydeps demo test test-noasm test-rdma pytest vet race fuzz bench bench-torch bench-net bench-crossbarrier bench-launch clean

all: build

# Installs the build dependencies from Debian when run as root and they are
# missing; otherwise says what is missing (or build with -tags noverbs,
# which leaves the verbs transport out).
deps:
	@if [ ! -f /usr/include/infiniband/verbs.h ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=600 $(DEPS) || \
			{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=600 $(DEPS); }; \
		else \
			echo "missing <infiniband/verbs.h>: install it with 'apt-get install -y $(DEPS)' (as root), or build with -tags noverbs"; exit 1; \
		fi; \
	fi

build: deps lib
	$(GO) build -o $(BIN)/ ./cmd/bpsrun ./cmd/bpsbench
	$(GO) build -o $(BIN)/gotrain ./examples/go

# The C shared library (API: cgo/gobps.h) that the PyTorch plugin loads.
lib: deps
	$(GO) build -buildmode=c-shared -o $(LIB) ./cgo

# Installs PyTorch and scikit-learn from Debian when run as root and they
# are missing; otherwise only says what is missing (the PyTorch tests then
# skip, and demo runs the Go example).
pydeps:
	@if ! $(PY) -c 'import torch, sklearn' 2>/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y $(PYDEPS) || \
			{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y $(PYDEPS); }; \
		else \
			echo "PyTorch is missing: install it with 'apt-get install -y $(PYDEPS)' (as root)"; \
		fi; \
	fi

# A real srun: a one-node Slurm cluster on this machine
# (scripts/slurm/onenode.sh, Debian's slurm-wlm, installed when missing)
# runs scripts/slurm/job.sbatch, whose workers check every sum. As root
# only; skipped, saying why, where Slurm cannot be installed or this
# machine is a real Slurm node (its slurm.conf was not written by
# onenode.sh). The daemons are stopped afterwards.
test-slurm:
	@if [ "$$(id -u)" != 0 ]; then echo "test-slurm: skipped: needs root (it starts Slurm's daemons)"; exit 0; fi; \
	if ! command -v slurmctld >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=600 slurm-wlm >/dev/null 2>&1 || \
		{ apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=600 slurm-wlm >/dev/null 2>&1; } || \
		{ echo "test-slurm: skipped: slurm-wlm cannot be installed here"; exit 0; }; \
	fi; \
	scripts/slurm/onenode.sh; rc=$$?; \
	if [ $$rc = 3 ]; then echo "test-slurm: skipped: this machine has a Slurm configuration of its own"; exit 0; fi; \
	if [ $$rc = 0 ]; then GOBPS_TEST_SLURM=1 $(GO) test -count=1 -timeout 5m -run TestSbatchExampleRealSlurm ./cmd/bpsrun; rc=$$?; fi; \
	scripts/slurm/onenode.sh stop; exit $$rc

# The ssh client and server that the multi-host launch test (bpsrun -H
# over network-namespace hosts, e2e/multihost_test.go) runs, installed from
# Debian when run as root and missing; without them that test skips. The
# server is not started as a service: the test runs its own, in each host.
SSHDEPS := openssh-client openssh-server
sshdeps:
	@if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=600 $(SSHDEPS) || \
			{ apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=600 $(SSHDEPS); } || true; \
		else \
			echo "no ssh server: the multi-host launch test will skip (as root: apt-get install -y $(SSHDEPS))"; \
		fi; \
	fi

# The main job: PyTorch on scikit-learn's digits under bpsrun, 2 workers,
# 2 servers; without PyTorch, the Go training example.
demo: build pydeps
	@if $(PY) -c 'import torch, sklearn' 2>/dev/null; then \
		echo $(BIN)/bpsrun --local -np 2 --servers 2 -- $(PY) examples/pytorch/train_digits.py; \
		$(BIN)/bpsrun --local -np 2 --servers 2 -- $(PY) examples/pytorch/train_digits.py; \
	else \
		echo "make demo: no PyTorch for $(PY) (as root: apt-get install -y $(PYDEPS)); running the Go example instead"; \
		$(BIN)/bpsrun --local -np 4 --servers 2 -- $(BIN)/gotrain -epochs 10; \
	fi

# Everything CI runs: vet, the race detector on the concurrent packages,
# then the whole suite (with the multi-process end-to-end tests, whose jobs
# have a secret; then again with mutual TLS, and with no authentication),
# and a short fuzz of the wire decoder and the handshake.
test: deps vet race fuzz test-noasm pydeps sshdeps test-rdma test-slurm
	$(GO) test -count=1 -timeout 15m ./...
	GOBPS_E2E_AUTH=tls $(GO) test -count=1 -timeout 5m ./e2e
	GOBPS_E2E_AUTH=none $(GO) test -count=1 -timeout 5m ./e2e

# The pure-Go build (no assembly anywhere): the whole suite in its short
# form, the end-to-end exact-sum run included, with the generic kernels.
test-noasm: deps
	$(GO) vet -tags noasm ./...
	$(GO) test -tags noasm -short -count=1 ./...

# The C API and PyTorch plugin tests alone (cgo/*_test.go, python/tests).
pytest: pydeps
	$(GO) test -count=1 -v -run 'TestCAPI|TestTorch' ./cgo

# The real-GPU tests (gpu/cuda: copies, events and the Stager on device
# memory). Without a CUDA driver and GPU they skip, saying why (this
# project's CI has none); the GPU pipeline is tested on the fake device by
# `make test`.
.PHONY: test-gpu
test-gpu:
	$(GO) test -count=1 -v -run 'TestGPU|TestOpen' ./gpu/cuda

vet: deps
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

race: deps
	$(GO) test -race -short -count=1 -timeout 10m $(RACE_PKGS)

# Fuzz for a fixed number of inputs rather than a duration: with
# -fuzztime as a duration, go test sometimes fails with "context deadline
# exceeded" when a worker is slow to stop on a loaded machine.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecodeHeader -fuzztime 300000x ./proto
	$(GO) test -run '^$$' -fuzz FuzzKernels -fuzztime 100000x ./summation/kernel
	$(GO) test -run '^$$' -fuzz FuzzDecompress -fuzztime 100000x ./summation/codec
	$(GO) test -run '^$$' -fuzz FuzzAccept -fuzztime 100000x ./internal/auth

# The verbs transport over real RC queue pairs, and a job of 2 servers and
# 2 workers with exact sums, inside a QEMU guest with Soft-RoCE (rdma_rxe on
# the guest's loopback): scripts/rdma_qemu.sh fetches the kernel and
# rdma-core from Debian once, into .cache/rdma-qemu. Needs root to install
# qemu the first time.
test-rdma: deps
	@mkdir -p $(GUEST)
	$(GO) test -c -o $(GUEST)/rdma.test ./rdma
	$(GO) test -c -o $(GUEST)/verbs.test ./rdma/verbs
	$(GO) build -o $(GUEST)/ ./cmd/bpsrun ./e2e/testjob
	$(GO) build -buildmode=c-shared -o $(GUEST)/libgobps.so ./cgo
	$${CC:-cc} -Wall -Werror -O1 -Icgo -o $(GUEST)/capi cgo/testdata/capi.c -L$(GUEST) -lgobps \
		-Wl,-rpath,'$$ORIGIN' -lpthread -ldl
	cp scripts/rdma_qemu/guest_tests.sh $(GUEST)/
	scripts/rdma_qemu.sh run --add $(GUEST):guest --timeout 900 -- sh guest/guest_tests.sh

bench: build
	$(BIN)/bpsbench pushpull
	$(BIN)/bpsbench sum

# gobps (2 workers on this machine) against torch DDP over gloo and against
# the same training step with no communication (the limit), same model,
# interleaved runs: a 4-layer 2048-wide MLP (batch 16) and ResNet-18 (64x64,
# batch 8), one torch thread per worker.
bench-torch: build pydeps
	$(PY) examples/pytorch/benchmark.py --mode compare --model mlp2048 --batch-size 16 --np 2 --servers 1 --repeats 5 --bpsrun $(BIN)/bpsrun
	$(PY) examples/pytorch/benchmark.py --mode compare --model resnet18 --batch-size 8 --np 2 --servers 1 --repeats 5 --bpsrun $(BIN)/bpsrun

# Ring all-reduce (and gloo) against gobps on an emulated cluster of network
# namespaces with rate-limited links (needs root; see docs/benchmarks.md).
bench-net: build
	scripts/bench_allreduce_vs_ps.sh --no-build

# CrossBarrier against DistributedOptimizer, 4 workers and 4 server hosts on
# 1 Gbit/s links, with each step's timeline (needs root; see
# docs/benchmarks.md).
bench-crossbarrier: build pydeps
	scripts/bench_crossbarrier.sh

# How long bpsrun -H takes to start and end a job on 4 hosts over ssh,
# against bpsrun --local with the same processes (needs root and
# openssh-server; see docs/benchmarks.md).
bench-launch: build sshdeps
	scripts/bench_launch.sh

clean:
	rm -rf $(BIN) build
