#!/usr/bin/env bash
# bench_crossbarrier.sh: PyTorch training throughput with CrossBarrier
# against DistributedOptimizer, on an emulated cluster with rate-limited
# links (scripts/netcluster.sh): N workers on hosts 0..N-1 and K summation
# servers on hosts N..N+K-1, every role started through bpsrun's
# environment mode on its host. Runs alternate between the two optimizers
# (A B, then B A, ...) so that both see the same machine; every run writes
# rank 0's step times (benchmark.py --timeline) and gobps's communication
# timeline (BYTEPS_TRACE_ON), and scripts/timeline_overlap.py lines them up
# to show where the time of a step goes.
#
#   sudo scripts/bench_crossbarrier.sh [options]
#
# Options (defaults in brackets):
#   --rate RATE        link rate each way, tc syntax [1gbit]
#   --workers N        [4]
#   --servers K        dedicated server hosts [4]
#   --repeats R        runs of each optimizer [5]
#   --model M          benchmark.py's --model: mlp (25M parameters, 100 MB
#                      of gradients a step) or cnn [mlp]
#   --batch-size B     per worker [8]
#   --iters I          timed iterations of 3 batches each [4]
#   --out DIR          results.tsv, table.md, logs/ and timelines
#                      [$TMPDIR/gobps-crossbarrier]
#
# Needs root, /usr/bin/python3 with torch, and build/libgobps.so and
# bin/bpsrun (built first). The cluster is removed at the end, also on
# Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NC="$ROOT/scripts/netcluster.sh"
PY=/usr/bin/python3
RATE=1gbit N=4 K=4 REPEATS=5 MODEL=mlp BATCH=8 ITERS=4
OUT=${TMPDIR:-/tmp}/gobps-crossbarrier

die() { echo "bench_crossbarrier: $*" >&2; exit 2; }
say() { echo "bench_crossbarrier: $*" >&2; }

while (($#)); do
	case $1 in
	--rate) RATE=$2; shift ;;
	--workers) N=$2; shift ;;
	--servers) K=$2; shift ;;
	--repeats) REPEATS=$2; shift ;;
	--model) MODEL=$2; shift ;;
	--batch-size) BATCH=$2; shift ;;
	--iters) ITERS=$2; shift ;;
	--out) OUT=$2; shift ;;
	-h | --help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done
[[ $(id -u) == 0 ]] || die "needs root (network namespaces); run it with sudo"
for v in N K REPEATS BATCH ITERS; do
	[[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "bad value for $v: ${!v}"
done
"$PY" -c 'import torch' 2>/dev/null || die "$PY cannot import torch (apt-get install python3-torch)"

say "building bpsrun and libgobps.so"
make -C "$ROOT" build >/dev/null
export BPSBENCH="$ROOT/bin/bpsbench" # netcluster.sh verify runs it
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)

PIDS=()
. "$ROOT/scripts/netjob.sh"
cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	"$NC" down || true
	exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
"$NC" up $((N + K)) "$RATE"
"$NC" verify 4s | tee "$OUT/verify.txt"
ip_of() { "$NC" ip "$1"; }

printf 'run\toptimizer\tsamples_per_sec\n' >"$OUT/results.tsv"
PORT=9300

# run TAG OPTIMIZER: one job; appends its RESULT to results.tsv.
run() {
	local tag=$1 opt=$2 i
	PORT=$((PORT + 1))
	local -a common=(DMLC_NUM_WORKER="$N" DMLC_NUM_SERVER="$K" DMLC_PS_ROOT_URI="$(ip_of 0)"
		DMLC_PS_ROOT_PORT="$PORT" PYTHONPATH="$ROOT/python" GOBPS_LIB="$ROOT/build/libgobps.so"
		PYTHONDONTWRITEBYTECODE=1 BYTEPS_TRACE_ON=1 BYTEPS_TRACE_DIR="$OUT/trace-$tag")
	local -a bg=() workers=()
	start 0 "$OUT/logs/$tag-scheduler.log" timeout -k 5 600 env "${common[@]}" DMLC_ROLE=scheduler \
		DMLC_NODE_HOST="$(ip_of 0)" "$ROOT/bin/bpsrun"
	bg+=("$LAST")
	for ((i = 0; i < K; i++)); do
		start $((N + i)) "$OUT/logs/$tag-server$i.log" timeout -k 5 600 env "${common[@]}" DMLC_ROLE=server \
			DMLC_NODE_HOST="$(ip_of $((N + i)))" GOBPS_SERVER_ID="$i" "$ROOT/bin/bpsrun"
		bg+=("$LAST")
	done
	for ((i = 0; i < N; i++)); do
		start "$i" "$OUT/logs/$tag-worker$i.log" timeout -k 5 600 env "${common[@]}" DMLC_ROLE=worker \
			DMLC_NODE_HOST="$(ip_of "$i")" DMLC_WORKER_ID="$i" "$ROOT/bin/bpsrun" \
			"$PY" "$ROOT/examples/pytorch/benchmark.py" --mode gobps --model "$MODEL" --batch-size "$BATCH" \
			--num-warmup-batches 3 --num-batches-per-iter 3 --num-iters "$ITERS" --optimizer "$opt" \
			--timeline "$OUT/steps-$tag.json"
		workers+=("$LAST")
	done
	local ok=0
	waitall 600 "${workers[@]}" || ok=1
	waitall 20 "${bg[@]}" || ok=1
	((ok == 0)) || die "$tag failed; logs in $OUT/logs/$tag-*"
	local r
	r=$(sed -n 's/.*RESULT .*samples_per_sec=\([0-9.]*\).*/\1/p' "$OUT/logs/$tag-worker0.log")
	[[ -n $r ]] || die "$tag: no RESULT line in $OUT/logs/$tag-worker0.log"
	printf '%s\t%s\t%s\n' "$tag" "$opt" "$r" | tee -a "$OUT/results.tsv" >&2
}

for ((rep = 1; rep <= REPEATS; rep++)); do
	order=(distributed crossbarrier)
	((rep % 2)) || order=(crossbarrier distributed)
	for opt in "${order[@]}"; do
		run "$opt-$rep" "$opt"
	done
done

{
	echo "n=$N workers, k=$K server hosts, $RATE links, model $MODEL, batch $BATCH per worker;" \
		"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) CPUs;" \
		"load before: $LOAD0; $(grep -h goodput_bps "$OUT/verify.txt" | head -1)"
	echo
	awk -F'\t' 'NR > 1 { v[$2] = v[$2] " " $3 }
		END { for (o in v) print o ":" v[o] }' "$OUT/results.tsv" |
		sort | while IFS=: read -r opt vals; do
			read -ra xs <<<"$vals"
			sorted=$(printf '%s\n' "${xs[@]}" | sort -g | tr '\n' ' ')
			echo "$opt samples/s (sorted): $sorted"
		done
	echo
	"$PY" "$ROOT/scripts/timeline_overlap.py" \
		"$OUT/steps-distributed-$REPEATS.json" "$OUT/trace-distributed-$REPEATS/0/comm.json" \
		"$OUT/steps-crossbarrier-$REPEATS.json" "$OUT/trace-crossbarrier-$REPEATS/0/comm.json"
} | tee "$OUT/table.md"
say "results in $OUT (results.tsv, table.md, logs/, steps-*.json, trace-*/)"
