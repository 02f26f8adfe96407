#!/usr/bin/env bash
# bench_allreduce_vs_ps.sh: gobps push_pull against ring all-reduce on an
# emulated cluster with rate-limited links (scripts/netcluster.sh), on one
# Linux box. Run as root from anywhere in a checkout:
#
#   scripts/bench_allreduce_vs_ps.sh                  # the full sweep
#   scripts/bench_allreduce_vs_ps.sh --quick          # CI's sanity check
#   scripts/bench_allreduce_vs_ps.sh --rate 200mbit --sizes 64MiB --layouts 4:4
#
# For every layout (n workers; k dedicated server hosts, or servers
# co-located with the workers) and model size it runs, each on the same
# hosts, and each role through bpsrun's environment mode as a cluster
# manager would start it:
#   ps    gobps push_pull of one float32 tensor (bpsbench psworker),
#   ring  the ring all-reduce in Go over gobps's TCP transport
#         (bpsbench allreduce), the baseline that is always available,
#   gloo  torch.distributed's gloo all_reduce, when /usr/bin/python3 has
#         torch; otherwise it says so and skips it.
# Every run checks its sums exactly. It measures the links' real TCP goodput
# first (netcluster.sh verify), then prints a table with each method's
# bandwidth bound at that goodput (bpsbench report) and writes a PNG plot.
#
# Options (defaults in brackets):
#   --rate RATE         link rate each way, tc syntax [1gbit]
#   --sizes LIST        model sizes [4MiB,16MiB,64MiB,256MiB]
#   --layouts LIST      n:k pairs: n workers and k dedicated server hosts;
#                       k=0 puts one server on every worker host
#                       (co-located); n:k+ is BytePS's mixed mode, n
#                       co-located servers plus k dedicated, with
#                       BYTEPS_ENABLE_MIXED_MODE=1
#                       [2:0,2:1,2:2,4:0,4:2,4:4,4:2+]
#   --methods LIST      of ps, ring, gloo [ps,ring,gloo]
#   --partition SIZE    BYTEPS_PARTITION_BYTES [4MiB]
#   --credit VALUE      BYTEPS_SCHEDULING_CREDIT (docs/env.md); "default"
#                       leaves it unset (4 partitions), "model" is the whole
#                       tensor [default]
#   --segment SIZE      ring all-reduce frame size [1MiB]
#   --iters N           timed iterations per run [10]
#   --warmup N          untimed iterations first [2]
#   --verify-time T     how long verify measures [6s]
#   --out DIR           results.tsv, table.md, allreduce_vs_ps.png and logs/
#                       [$TMPDIR/gobps-bench]
#   --bin DIR           where bpsrun and bpsbench are (built there) [bin]
#   --no-build          use the binaries in --bin as they are
#   --quick             CI: 10mbit, 1MiB, layout 2:2, 32KiB partitions,
#                       ring and ps, 3 iterations
#   --keep              leave the cluster up at the end (netcluster.sh down
#                       removes it)
#
# Environment: GOBPS_NET_PREFIX and GOBPS_NET_SUBNET as for netcluster.sh.
# The script removes everything it created when it ends, also on Ctrl-C.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NC="$ROOT/scripts/netcluster.sh"
PY=/usr/bin/python3

RATE=1gbit
SIZES=4MiB,16MiB,64MiB,256MiB
LAYOUTS=2:0,2:1,2:2,4:0,4:2,4:4,4:2+
METHODS=ps,ring,gloo
PARTITION=4MiB
CREDIT=default
SEGMENT=1MiB
ITERS=10
WARMUP=2
VERIFY_TIME=6s
AFTER=1 # verify again at the end
OUT=${TMPDIR:-/tmp}/gobps-bench
BIN=bin
BUILD=1
KEEP=0

die() { echo "bench: $*" >&2; exit 2; }
say() { echo "bench: $*" >&2; }

while (($#)); do
	case $1 in
	--rate) RATE=$2; shift ;;
	--sizes) SIZES=$2; shift ;;
	--layouts) LAYOUTS=$2; shift ;;
	--methods) METHODS=$2; shift ;;
	--partition) PARTITION=$2; shift ;;
	--credit) CREDIT=$2; shift ;;
	--segment) SEGMENT=$2; shift ;;
	--iters) ITERS=$2; shift ;;
	--warmup) WARMUP=$2; shift ;;
	--verify-time) VERIFY_TIME=$2; shift ;;
	--out) OUT=$2; shift ;;
	--bin) BIN=$2; shift ;;
	--no-build) BUILD=0 ;;
	--keep) KEEP=1 ;;
	--quick)
		RATE=10mbit SIZES=1MiB LAYOUTS=2:2 METHODS=ps,ring PARTITION=32KiB
		ITERS=3 WARMUP=1 VERIFY_TIME=5s AFTER=0
		;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done

# bytes converts 4MiB, 32KiB or a plain number to bytes.
bytes() {
	case $1 in
	*MiB) echo $((${1%MiB} << 20)) ;;
	*KiB) echo $((${1%KiB} << 10)) ;;
	*GiB) echo $((${1%GiB} << 30)) ;;
	*[!0-9]* | '') die "bad size '$1'" ;;
	*) echo "$1" ;;
	esac
}

[[ $(id -u) == 0 ]] || die "needs root (network namespaces); run it with sudo"
[[ $ITERS =~ ^[0-9]+$ && $ITERS -ge 1 && $WARMUP =~ ^[0-9]+$ ]] || die "bad --iters/--warmup"
PART_BYTES=$(bytes "$PARTITION")
SEG_BYTES=$(bytes "$SEGMENT")
IFS=, read -ra SIZE_LIST <<<"$SIZES"
IFS=, read -ra LAYOUT_LIST <<<"$LAYOUTS"
IFS=, read -ra METHOD_LIST <<<"$METHODS"
for m in "${METHOD_LIST[@]}"; do
	[[ $m == ps || $m == ring || $m == gloo ]] || die "unknown method '$m'"
done
has() { [[ ,$METHODS, == *,$1,* ]]; }

# The most hosts any layout needs.
HOSTS=2
for l in "${LAYOUT_LIST[@]}"; do
	[[ $l =~ ^([0-9]+):([0-9]+)(\+?)$ ]] || die "bad layout '$l' (want n:k or n:k+)"
	n=${BASH_REMATCH[1]} k=${BASH_REMATCH[2]} plus=${BASH_REMATCH[3]}
	((n >= 1 && n <= 16 && k <= 16)) || die "layout '$l': n must be 1..16 and k at most 16"
	[[ -z $plus ]] || ((k >= 1)) || die "layout '$l': mixed mode needs k >= 1"
	h=$((n + k))
	((h > HOSTS)) && HOSTS=$h
done

mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
RESULTS="$OUT/results.tsv"

# Everything started below is recorded here and ended by cleanup.
PIDS=()
cleanup() {
	local rc=$? pid
	trap - EXIT INT TERM
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	if ((KEEP == 0)); then
		"$NC" down || true
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

if ((BUILD)); then
	say "building bpsrun and bpsbench into $BIN"
	(cd "$ROOT" && go build -o "$BIN/" ./cmd/bpsrun ./cmd/bpsbench)
fi
BIN=$(cd "$([[ $BIN = /* ]] && echo "$BIN" || echo "$ROOT/$BIN")" && pwd)
[[ -x $BIN/bpsrun && -x $BIN/bpsbench ]] || die "no bpsrun/bpsbench in $BIN"
export BPSBENCH="$BIN/bpsbench"

GLOO=0
if has gloo; then
	if "$PY" -c 'import torch.distributed as d; assert d.is_available() and d.is_gloo_available()' 2>/dev/null; then
		GLOO=1
	else
		say "gloo: skipped: $PY cannot import torch with gloo (Debian: apt-get install python3-torch)"
	fi
fi

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
"$NC" up "$HOSTS" "$RATE"
say "measuring the links (verify, $VERIFY_TIME)"
"$NC" verify "$VERIFY_TIME" | tee "$OUT/verify.txt"
GOODPUT=$(sed -n 's/^goodput_bps=\([0-9]*\).*/\1/p' "$OUT/verify.txt")
[[ -n $GOODPUT ]] || die "verify gave no goodput"
RATE_BPS=$(awk -v r="$RATE" 'BEGIN { n = r + 0; u = substr(r, length(n "") + 1); m = 1
	if (u ~ /^k/) m = 1e3; else if (u ~ /^m/) m = 1e6; else if (u ~ /^g/) m = 1e9
	if (u ~ /bps$/) m *= 8; printf "%.0f", n * m }')

printf 'method\tn\tk\tmode\tbytes\tpartition\tcredit\trate_bps\tgoodput_bps\tmedian_ms\tmin_ms\tmax_ms\titers\n' >"$RESULTS"

ip_of() { "$NC" ip "$1"; }

# deadline is a generous bound, in seconds, on one run of SIZE bytes: every
# iteration at a quarter of the measured goodput, plus start-up.
deadline() {
	awk -v b="$1" -v g="$GOODPUT" -v it=$((ITERS + WARMUP + 2)) 'BEGIN { printf "%d", 30 + it * 4 * 2 * b * 8 / g }'
}

# start and waitall
. "$ROOT/scripts/netjob.sh"

# record METHOD N K MODE SIZE LOG...: the slowest worker's median (and its
# min and max) from the workers' result lines.
record() {
	local method=$1 n=$2 k=$3 mode=$4 size=$5
	shift 5
	local lines
	lines=$(grep -h -E "^(psworker|allreduce|gloo) rank=.* exact=true" "$@" || true)
	if (($(wc -l <<<"$lines") != n)) || [[ -z $lines ]]; then
		say "$method n=$n k=$k $mode $size: expected $n result lines, got: $lines"
		return 1
	fi
	awk -v method="$method" -v n="$n" -v k="$k" -v mode="$mode" -v size="$size" -v part="$PART_BYTES" \
		-v credit="$CREDIT_BYTES" -v rate="$RATE_BPS" -v good="$GOODPUT" -v iters="$ITERS" '
		{ for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
		  if (f["median_ms"] + 0 > med) { med = f["median_ms"] + 0; mn = f["min_ms"]; mx = f["max_ms"] } }
		END { printf "%s\t%d\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%.2f\t%.2f\t%.2f\t%d\n", method, n, k, mode, size, part, credit, rate, good, med, mn, mx, iters }' \
		<<<"$lines" | tee -a "$RESULTS" >&2
}

PORT=9100 # coordinator port; each run gets the next one (no TIME_WAIT surprises)

# run_ps N K MODE SIZE
run_ps() {
	local n=$1 k=$2 mode=$3 size=$4 tag="ps-n$1-k$2-$3-$4"
	local limit nserv i h
	limit=$(deadline "$size")
	local -a srv_hosts=()
	case $mode in
	dedicated) for ((i = 0; i < k; i++)); do srv_hosts+=($((n + i))); done ;;
	colocated) for ((i = 0; i < n; i++)); do srv_hosts+=("$i"); done ;;
	mixed)
		for ((i = 0; i < n; i++)); do srv_hosts+=("$i"); done
		for ((i = 0; i < k; i++)); do srv_hosts+=($((n + i))); done
		;;
	esac
	nserv=${#srv_hosts[@]}
	PORT=$((PORT + 1))
	local -a common=(DMLC_NUM_WORKER="$n" DMLC_NUM_SERVER="$nserv" DMLC_PS_ROOT_URI="$(ip_of 0)"
		DMLC_PS_ROOT_PORT="$PORT" BYTEPS_PARTITION_BYTES="$PART_BYTES" BYTEPS_SCHEDULING_CREDIT="$CREDIT_BYTES")
	[[ $mode != mixed ]] || common+=(BYTEPS_ENABLE_MIXED_MODE=1)
	local -a bg=() workers=() logs=()
	start 0 "$OUT/logs/$tag-scheduler.log" timeout -k 5 "$limit" env "${common[@]}" DMLC_ROLE=scheduler \
		DMLC_NODE_HOST="$(ip_of 0)" "$BIN/bpsrun"
	bg+=("$LAST")
	for i in "${!srv_hosts[@]}"; do
		h=${srv_hosts[$i]}
		start "$h" "$OUT/logs/$tag-server$i.log" timeout -k 5 "$limit" env "${common[@]}" DMLC_ROLE=server \
			DMLC_NODE_HOST="$(ip_of "$h")" GOBPS_SERVER_ID="$i" "$BIN/bpsrun"
		bg+=("$LAST")
	done
	for ((i = 0; i < n; i++)); do
		logs+=("$OUT/logs/$tag-worker$i.log")
		start "$i" "${logs[$i]}" timeout -k 5 "$limit" env "${common[@]}" DMLC_ROLE=worker \
			DMLC_NODE_HOST="$(ip_of "$i")" DMLC_WORKER_ID="$i" \
			"$BIN/bpsrun" "$BIN/bpsbench" psworker -size "$size" -iters "$ITERS" -warmup "$WARMUP"
		workers+=("$LAST")
	done
	local ok=0
	waitall "$limit" "${workers[@]}" || ok=1
	# the coordinator ends the servers once every worker has left
	waitall 20 "${bg[@]}" || ok=1
	((ok == 0)) || { say "$tag failed; logs in $OUT/logs/$tag-*"; return 1; }
	record ps "$n" "$k" "$mode" "$size" "${logs[@]}"
}

# run_ring N SIZE
run_ring() {
	local n=$1 size=$2 tag="ring-n$1-$2" limit i
	limit=$(deadline "$size")
	local -a pids=() logs=()
	for ((i = 0; i < n; i++)); do
		logs+=("$OUT/logs/$tag-rank$i.log")
		start "$i" "${logs[$i]}" timeout -k 5 "$limit" "$BIN/bpsbench" allreduce -rank "$i" -ranks "$n" \
			-listen "$(ip_of "$i"):5400" -right "$(ip_of $(((i + 1) % n))):5400" \
			-size "$size" -segment "$SEG_BYTES" -iters "$ITERS" -warmup "$WARMUP"
		pids+=("$LAST")
	done
	waitall "$limit" "${pids[@]}" || { say "$tag failed; logs in $OUT/logs/$tag-*"; return 1; }
	record ring "$n" 0 none "$size" "${logs[@]}"
}

# run_gloo N SIZE
run_gloo() {
	local n=$1 size=$2 tag="gloo-n$1-$2" limit i
	limit=$(deadline "$size")
	PORT=$((PORT + 1))
	local -a pids=() logs=()
	for ((i = 0; i < n; i++)); do
		logs+=("$OUT/logs/$tag-rank$i.log")
		start "$i" "${logs[$i]}" timeout -k 5 "$limit" env GLOO_SOCKET_IFNAME=eth0 OMP_NUM_THREADS=1 \
			"$PY" "$ROOT/scripts/gloo_allreduce.py" --rank "$i" --ranks "$n" --master "$(ip_of 0):$PORT" \
			--bytes "$size" --iters "$ITERS" --warmup "$WARMUP" --timeout "$limit"
		pids+=("$LAST")
	done
	waitall "$limit" "${pids[@]}" || { say "$tag failed; logs in $OUT/logs/$tag-*"; return 1; }
	record gloo "$n" 0 none "$size" "${logs[@]}"
}

FAILED=0
declare -A DONE_N=() # the all-reduce baselines run once per (n, size)
for sz in "${SIZE_LIST[@]}"; do
	size=$(bytes "$sz")
	((size % 4 == 0)) || die "size $sz is not a whole number of float32"
	CREDIT_BYTES=$CREDIT
	if [[ $CREDIT == default ]]; then
		CREDIT_BYTES=0 # unset: gobps's default
	elif [[ $CREDIT == model ]]; then
		CREDIT_BYTES=$((size > PART_BYTES ? size : PART_BYTES))
		((CREDIT_BYTES > 64)) || CREDIT_BYTES=65
	fi
	for l in "${LAYOUT_LIST[@]}"; do
		[[ $l =~ ^([0-9]+):([0-9]+)(\+?)$ ]]
		n=${BASH_REMATCH[1]} k=${BASH_REMATCH[2]} plus=${BASH_REMATCH[3]}
		mode=dedicated
		((k == 0)) && mode=colocated
		[[ -n $plus ]] && mode=mixed
		if has ps; then
			say "ps: n=$n workers, $mode servers (k=$k), $sz"
			run_ps "$n" "$k" "$mode" "$size" || FAILED=1
		fi
		if [[ -z ${DONE_N[$n:$size]:-} ]] && ((n >= 2)); then
			DONE_N[$n:$size]=1
			if has ring; then
				say "ring: n=$n, $sz"
				run_ring "$n" "$size" || FAILED=1
			fi
			if has gloo && ((GLOO)); then
				say "gloo: n=$n, $sz"
				run_gloo "$n" "$size" || FAILED=1
			fi
		fi
	done
done

if ((AFTER)); then
	say "measuring the links again"
	"$NC" verify "$VERIFY_TIME" | tee "$OUT/verify-after.txt" >&2 || true
fi

echo
echo "Link: $RATE shaped, ${GOBPS_NET_QUEUE:-fair} host queues, TCP goodput measured $(awk -v g="$GOODPUT" 'BEGIN{printf "%.1f", g/1e6}') Mbit/s per link (median, every link loaded both ways, TCP $(sed -n 's/.*cc=\([a-z0-9]*\).*/\1/p' "$OUT/verify.txt")); partitions $PARTITION; credit $CREDIT; $ITERS timed iterations after $WARMUP warm-up"
echo "Machine: $(nproc) CPUs, $(uname -r); load average at start $LOAD0, at end $(cut -d' ' -f1-3 /proc/loadavg)"
((GLOO)) || ! has gloo || echo "gloo: skipped (no torch in $PY)"
echo
"$BIN/bpsbench" report -in "$RESULTS" -md "$OUT/table.md" -png "$OUT/allreduce_vs_ps.png"
say "results in $OUT (results.tsv, table.md, allreduce_vs_ps.png, logs/)"
((FAILED == 0)) || { say "some runs failed (see above)"; exit 1; }
