#!/usr/bin/env bash
# bench_scale_validate.sh: checks the scale model (cmd/internal/scalemodel,
# `bpsbench model`) against gobps on the emulated cluster. Run as root from
# anywhere in a checkout:
#
#   scripts/bench_scale_validate.sh                 # measure, then compare
#   scripts/bench_scale_validate.sh --compare-only  # the table from earlier runs
#
# It runs scripts/bench_allreduce_vs_ps.sh (gobps push_pull of one float32
# tensor, bpsbench psworker, on scripts/netcluster.sh hosts) RUNS times for
# every rate, each run on a fresh cluster under its own name prefix and
# subnet so it cannot disturb another engineer's cluster, and each run
# inside `flock /tmp/gobps-bench.lock` so no two benchmarks on this machine
# overlap. Then `bpsbench model validate` predicts every layout from the
# goodput each run measured (netcluster.sh verify) and the profile that
# `bpsbench model calibrate` writes on this machine, and prints the
# predicted time, the median of the RUNS measured medians, their spread
# and the error.
#
# Options (defaults in brackets):
#   --runs N          runs per rate [5]
#   --rates LIST      rates, each with its size and layouts, as
#                     RATE/SIZE/LAYOUTS;… (layouts as in
#                     bench_allreduce_vs_ps.sh, joined by +)
#                     [200mbit/16MiB/2:0+2:2+3:0+3:3+4:0+4:4+6:0+6:6+8:0+8:8;1gbit/64MiB/2:0+2:2+3:0+3:3+4:0+4:4+6:0]
#   --iters N         timed iterations per run [5]
#   --warmup N        untimed iterations first [1]
#   --out DIR         runs/, profile.json, validate.md [$TMPDIR/gobps-scale]
#   --bin DIR         where bpsrun and bpsbench are built [OUT/bin]
#   --no-build        use the binaries in --bin as they are
#   --compare-only    skip the runs; compare what OUT/runs holds
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=5
RATES="200mbit/16MiB/2:0+2:2+3:0+3:3+4:0+4:4+6:0+6:6+8:0+8:8;1gbit/64MiB/2:0+2:2+3:0+3:3+4:0+4:4+6:0"
ITERS=5
WARMUP=1
OUT=${TMPDIR:-/tmp}/gobps-scale
BIN=
BUILD=1
MEASURE=1
LOCK=/tmp/gobps-bench.lock

die() { echo "scale-validate: $*" >&2; exit 2; }
say() { echo "scale-validate: $*" >&2; }

while (($#)); do
	case $1 in
	--runs) RUNS=$2; shift ;;
	--rates) RATES=$2; shift ;;
	--iters) ITERS=$2; shift ;;
	--warmup) WARMUP=$2; shift ;;
	--out) OUT=$2; shift ;;
	--bin) BIN=$2; shift ;;
	--no-build) BUILD=0 ;;
	--compare-only) MEASURE=0 ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) die "unknown option $1 (see --help)" ;;
	esac
	shift
done

[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 ]] || die "bad --runs"
mkdir -p "$OUT/runs"
OUT=$(cd "$OUT" && pwd)
[[ -n $BIN ]] || BIN=$OUT/bin
if ((BUILD)); then
	say "building bpsrun and bpsbench into $BIN"
	(cd "$ROOT" && go build -o "$BIN/" ./cmd/bpsrun ./cmd/bpsbench)
fi
BIN=$(cd "$BIN" && pwd)
[[ -x $BIN/bpsrun && -x $BIN/bpsbench ]] || die "no bpsrun/bpsbench in $BIN"

if ((MEASURE)); then
	[[ $(id -u) == 0 ]] || die "needs root (network namespaces); run it with sudo"
	IFS=';' read -ra RATE_LIST <<<"$RATES"
	for ((r = 1; r <= RUNS; r++)); do
		for spec in "${RATE_LIST[@]}"; do
			IFS=/ read -r rate size layouts <<<"$spec"
			[[ -n $rate && -n $size && -n $layouts ]] || die "bad --rates entry '$spec'"
			dir=$OUT/runs/$rate-$size-run$r
			if [[ -s $dir/results.tsv ]] && (($(wc -l <"$dir/results.tsv") > 1)); then
				say "$dir: done already"
				continue
			fi
			say "run $r/$RUNS: $rate, $size, layouts ${layouts//+/,} (waiting for $LOCK)"
			# a name prefix and subnet of our own: netcluster.sh up removes
			# an earlier cluster of the same prefix
			flock "$LOCK" env GOBPS_NET_PREFIX=gobps-sv- GOBPS_NET_SUBNET=10.79.0 \
				"$ROOT/scripts/bench_allreduce_vs_ps.sh" --no-build --bin "$BIN" --methods ps \
				--rate "$rate" --sizes "$size" --layouts "${layouts//+/,}" \
				--iters "$ITERS" --warmup "$WARMUP" --out "$dir" >"$dir.log" 2>&1 ||
				say "run $r $rate failed (see $dir.log); its finished layouts still count"
			printf 'load=%s cpu=%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)" >>"$dir.log"
		done
	done
fi

if [[ ! -s $OUT/profile.json ]]; then
	say "calibrating this machine (bpsbench model calibrate)"
	flock "$LOCK" "$BIN/bpsbench" model calibrate -out "$OUT/profile.json"
fi

say "comparing (bpsbench model validate)"
"$BIN/bpsbench" model validate -profile "$OUT/profile.json" -md "$OUT/validate.md" "$OUT"/runs/*/results.tsv
say "table in $OUT/validate.md"
