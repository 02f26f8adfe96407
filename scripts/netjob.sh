# netjob.sh: helpers for benchmarks that start processes on the hosts of
# scripts/netcluster.sh. Source it after setting NC (the netcluster.sh
# path) and PIDS=() and defining say; it defines:
#
#   start HOST LOG CMD...   runs CMD on HOST in the background with its
#                           output in LOG, records its pid in PIDS (for the
#                           caller's cleanup) and in LAST
#   waitall SECONDS PID...  waits for the pids, at most SECONDS in all, then
#                           ends the rest; fails if any failed or had to be
#                           ended

start() {
	local host=$1 log=$2
	shift 2
	"$NC" exec "$host" "$@" >"$log" 2>&1 &
	PIDS+=($!)
	LAST=$!
}

waitall() {
	local limit=$1 pid ok=0 t=0
	shift
	while ((t < limit * 5)); do
		local alive=0
		for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		((alive)) || break
		sleep 0.2
		t=$((t + 1))
	done
	for pid in "$@"; do
		if kill -0 "$pid" 2>/dev/null; then
			say "pid $pid still running after ${limit}s: ending it"
			kill -TERM "$pid" 2>/dev/null || true
			ok=1
		fi
	done
	for pid in "$@"; do
		wait "$pid" || ok=1
	done
	return $ok
}
