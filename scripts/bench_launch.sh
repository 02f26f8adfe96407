#!/usr/bin/env bash
# bench_launch.sh: how long bpsrun -H takes to start a job across hosts
# over ssh and finish it, end to end, against the same job started with
# bpsrun --local on one of those hosts (the baseline: the same processes,
# no ssh), in alternating runs on the same machine.
#
#   sudo scripts/bench_launch.sh [--runs R] [--hosts H]
#
# The cluster is scripts/sshcluster.sh's: H hosts (default 4), each a
# network namespace with an ssh server. The job: the coordinator on host
# 0, one server on each of the last H/2 hosts, two workers on each of the
# first H/2, every worker doing one push_pull of one small tensor
# (e2e/testjob -tensors 1 -rounds 1): what is timed is start-up, joining
# and shutting down. --local runs the same 1 coordinator, H/2 servers and
# H workers (as H/2 machines of 2) on host 0 alone.
#
# Prints each run's seconds and, for each way, the median, min and max
# over R runs (default 7). Needs root, iproute2, openssh-server and
# openssh-client; builds bin/bpsrun and bin/testjob first.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=7 HOSTS=4
while (($#)); do
	case $1 in
	--runs) RUNS=$2; shift 2 ;;
	--hosts) HOSTS=$2; shift 2 ;;
	*) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
	esac
done
((HOSTS >= 2 && HOSTS % 2 == 0)) || { echo "bench_launch: --hosts must be even and at least 2" >&2; exit 2; }

export GOBPS_NET_PREFIX=${GOBPS_NET_PREFIX:-gobps-launch-} GOBPS_NET_SUBNET=${GOBPS_NET_SUBNET:-10.79.250}
cd "$ROOT"
go build -o bin/ ./cmd/bpsrun
go build -o bin/testjob ./e2e/testjob
dir=$(mktemp -d)
trap 'scripts/sshcluster.sh down "$dir" >/dev/null 2>&1 || true; rm -rf "$dir"' EXIT
scripts/sshcluster.sh up "$HOSTS" "$dir" >&2
read -r -a sshflags <<<"$(scripts/sshcluster.sh flags "$dir")"

half=$((HOSTS / 2))
workers="" servers=""
for ((i = 0; i < half; i++)); do
	workers+="${workers:+,}$(scripts/netcluster.sh ip "$i"):2"
	servers+="${servers:+,}$(scripts/netcluster.sh ip $((half + i)))"
done
job=("$ROOT/bin/testjob" -tensors 1 -rounds 1 -max 64)

now() { date +%s.%N; }
# run WAY: one job, its wall seconds on stdout; a failed job stops the run.
run() {
	local t0 t1 log="$dir/last.log"
	t0=$(now)
	if [[ $1 == ssh ]]; then
		scripts/netcluster.sh exec 0 bin/bpsrun -H "$workers" --server-hosts "$servers" "${sshflags[@]}" -- "${job[@]}" >"$log" 2>&1
	else
		scripts/netcluster.sh exec 0 bin/bpsrun --local -np "$HOSTS" --local-size 2 --servers "$half" -- "${job[@]}" >"$log" 2>&1
	fi || { echo "bench_launch: the $1 job failed:" >&2; cat "$log" >&2; exit 1; }
	t1=$(now)
	echo "$t1 - $t0" | bc -l
}

stats() { sort -g | awk '{a[NR]=$1} END {printf "median %.3f s, min %.3f, max %.3f (%d runs)\n", a[int((NR+1)/2)], a[1], a[NR], NR}'; }

run ssh >/dev/null # warm-up: ssh's first connections, the page cache
run local >/dev/null
: >"$dir/ssh" && : >"$dir/local"
for ((r = 0; r < RUNS; r++)); do
	for way in ssh local; do
		s=$(run "$way")
		echo "$s" >>"$dir/$way"
		printf 'run %d %-5s %.3f s\n' "$r" "$way" "$s"
	done
done
echo "bpsrun -H ($HOSTS hosts over ssh: $workers; servers $servers): $(stats <"$dir/ssh")"
echo "bpsrun --local (the same processes on one host): $(stats <"$dir/local")"
