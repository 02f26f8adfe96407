#!/bin/sh
# guest_tests.sh: what `make test-rdma` runs inside the QEMU guest
# (scripts/rdma_qemu.sh run), in /work with the binaries under guest/:
#
#   1. the transport tests over real RC queue pairs on rxe0: rdma.test
#      (package rdma: the behaviours every transport shares, the summation
#      server, Open) and verbs.test (package rdma/verbs: the verbs
#      protocol, the MR cache, RLIMIT_MEMLOCK, device discovery);
#      GOBPS_IN_QEMU=1 makes them fail, not skip, without a device;
#   2. jobs of a coordinator, 2 servers and 2 workers with RDMA required
#      (BYTEPS_ENABLE_RDMA=1) and the exact-sum check of e2e/testjob; it
#      must say that it ran over verbs;
#   3. the C API test program (cgo/testdata/capi.c) as 2 workers over verbs.
#
# busybox sh: no bashisms.
set -eu
cd "$(dirname "$0")"

echo "== verbs devices"
ibv_devices || true

echo "== rdma transport tests over rxe0"
./rdma.test -test.v -test.count=1 -test.timeout=10m -test.run 'Verbs|Open'
echo "== verbs transport tests over rxe0"
./verbs.test -test.v -test.count=1 -test.timeout=10m -test.run 'Verbs|Open'

# job NAME ENV...: a 2-server, 2-worker job with RDMA required; both
# workers must report exact sums over verbs.
job() {
	name=$1
	shift
	echo "== a job over verbs ($name): 2 servers, 2 workers, exact sums"
	env "$@" BYTEPS_ENABLE_RDMA=1 BYTEPS_LOG_LEVEL=INFO ./bpsrun --local -v -np 2 --servers 2 -- \
		./testjob -tensors 16 -rounds 3 -max 1048576 -timeout 5m >job.log 2>&1 || {
		cat job.log
		echo "FAIL: the job over verbs ($name) failed"
		exit 1
	}
	cat job.log
	n=$(grep -c 'all 3 rounds exact' job.log || true)
	if [ "$n" != 2 ]; then
		echo "FAIL: $n of 2 workers report exact sums ($name)"
		exit 1
	fi
	v=$(grep -c 'servers over verbs' job.log || true)
	if [ "$v" != 2 ]; then
		echo "FAIL: $v of 2 workers say they ran over verbs ($name)"
		exit 1
	fi
	grep 'transport verbs' job.log | head -2
}

# One machine of 2 workers: local aggregation sends one push per key.
job "local aggregation" GOBPS_LOCAL_AGGREGATION=1
# Every worker pushes every key, with checksums on.
job "every worker pushes, checksums" GOBPS_LOCAL_AGGREGATION=0 GOBPS_CHECKSUM=1

# The C API (what PyTorch calls) over verbs: callers' buffers are staged
# through engine-owned ones (core.Engine.PushPullCopy).
echo "== the C API over verbs: 2 servers, 2 workers"
BYTEPS_ENABLE_RDMA=1 ./bpsrun --local -np 2 --servers 2 -- ./capi job >capi.log 2>&1 || {
	cat capi.log
	echo "FAIL: the C API job over verbs failed"
	exit 1
}
cat capi.log
c=$(grep -c 'capi job: rank [01] ok' capi.log || true)
if [ "$c" != 2 ]; then
	echo "FAIL: $c of 2 C API workers ok"
	exit 1
fi

echo "PASS: verbs transport tests, jobs over verbs, the C API over verbs"
