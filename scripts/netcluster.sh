#!/usr/bin/env bash
# netcluster.sh: an emulated cluster of hosts with rate-limited links, on one
# Linux box. Needs root (network namespaces) and iproute2 (ip, tc).
#
#   netcluster.sh up N RATE     create hosts 0..N-1 (RATE in tc syntax:
#                               10mbit, 200mbit, 1gbit)
#   netcluster.sh down          remove everything up created (and end the
#                               processes still running in those hosts)
#   netcluster.sh exec H CMD…   run CMD on host H
#   netcluster.sh ip H          print host H's address
#   netcluster.sh hosts         print the number of hosts
#   netcluster.sh verify [T]    measure the TCP goodput every link really
#                               has, with one stream in and one out of every
#                               host at once, for T (default 3s)
#   netcluster.sh mesh W [T]    one stream each way between every host below
#                               W and every host from W up, all at once, for
#                               T (default 6s): how evenly many flows share
#                               the links (see GOBPS_NET_QUEUE)
#
# Each host is a network namespace PREFIXhI (gobps-h0, …) with one interface, eth0,
# at SUBNET.(11+I)/24. eth0 is one end of a veth pair whose other end is a
# port of a Linux bridge that lives in a namespace of its own (PREFIXbr),
# so the hosts see a switch and nothing else: the subnet exists only inside
# these namespaces. Each link is shaped in both directions with HTB (netem
# is not needed): on eth0 (what the host sends) and on the bridge port
# (what the host receives), like a full-duplex switch port of RATE. The
# bridge port is one FIFO, as in a switch; eth0 by default shares RATE
# fairly between the peers the host sends to, as a Linux host's fq_codel
# queue does (see shape below).
#
# Environment:
#   GOBPS_NET_PREFIX   name prefix of everything created (default gobps-);
#                      down removes exactly the namespaces PREFIXbr and
#                      PREFIXh<number>
#   GOBPS_NET_SUBNET   first three octets of the private /24 (default 10.77.0)
#   GOBPS_NET_CC       TCP congestion control in the hosts (default: cubic if
#                      this box allows it in namespaces, else reno; "system"
#                      keeps the box's default)
#   GOBPS_NET_SYSCTL   more per-host sysctls, e.g.
#                      "net.ipv4.tcp_slow_start_after_idle=0"
#   GOBPS_NET_QUEUE    fair (default): each host's own queue shares its link
#                      between its peers; fifo: one FIFO, where a few
#                      connections can starve the others for seconds
#   GOBPS_NET_LEAF     the FIFO under each HTB class, in tc syntax (default
#                      "pfifo limit 1000", or 100 below 100 Mbit/s)
#   BPSBENCH           the bpsbench binary verify runs (default bin/bpsbench)
set -euo pipefail

PREFIX=${GOBPS_NET_PREFIX:-gobps-}
SUBNET=${GOBPS_NET_SUBNET:-10.77.0}
BRNS="${PREFIX}br"
MAXHOSTS=64

die() { echo "netcluster: $*" >&2; exit 1; }

hostns() { echo "${PREFIX}h$1"; }
hostip() { echo "$SUBNET.$((11 + $1))"; }

# ours lists the namespaces this prefix owns.
ours() {
	ip netns list 2>/dev/null | awk '{print $1}' |
		grep -E "^$(printf '%s' "$PREFIX" | sed 's/[.[\*^$]/\\&/g')(br|h[0-9]+)\$" || true
}

# nhosts counts the hosts that exist.
nhosts() {
	local n=0
	while ((n < MAXHOSTS)) && ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$(hostns "$n")"; do
		n=$((n + 1))
	done
	echo "$n"
}

checkhost() {
	[[ $1 =~ ^[0-9]+$ ]] || die "host '$1' is not a number"
	local n
	n=$(nhosts)
	(($1 < n)) || die "no host $1 (there are $n; run up first)"
}

# bits converts a tc rate (10mbit, 1gbit, 12.5mbps) to bits per second.
bits() {
	awk -v r="$1" 'BEGIN {
		n = r + 0; u = substr(r, length(n "") + 1)
		m = 1
		if (u ~ /^k/) m = 1e3; else if (u ~ /^m/) m = 1e6; else if (u ~ /^g/) m = 1e9
		if (u ~ /bps$/) m *= 8
		printf "%.0f", n * m
	}'
}

# shape DEV in namespace NS to RATE. Below 100 Mbit/s the device also
# stops building GSO super-packets, so the queue holds wire-sized frames and
# 100 of them are a switch-like buffer (120 ms at 10 Mbit/s) rather than
# seconds of bufferbloat; at higher rates GSO stays on, since segmenting
# every frame would cost more CPU than two cores have.
#
# With PEERS empty the link is one HTB class of RATE over one FIFO: a
# switch port. With PEERS (the addresses of the other hosts) it is what a
# Linux host's own NIC queue does: fq_codel, the default queue of
# systemd-based distributions, serves the flows it holds in turn, so one
# connection cannot starve the others. This kernel has no fq_codel (nor
# sfq or fq), so each peer gets an HTB class of its own under the RATE
# class, matched on the destination address by a u32 filter; the busy
# classes share RATE equally and a lone busy one takes all of it.
# That is fairness per destination host rather than per connection (the
# connections to one host share a FIFO), which is all the traffic here
# needs: a host keeps about one busy connection per peer.
shape() {
	local ns=$1 dev=$2 rate=$3 limit=1000 j=0 peer
	shift 3
	if (($(bits "$rate") < 100000000)); then
		ip -n "$ns" link set dev "$dev" gso_max_size 1500
		limit=100
	fi
	local leaf=${GOBPS_NET_LEAF:-pfifo limit $limit}
	tc -n "$ns" qdisc replace dev "$dev" root handle 1: htb default 10
	tc -n "$ns" class add dev "$dev" parent 1: classid 1:1 htb rate "$rate" ceil "$rate" quantum 65536
	local share=$rate
	# the peers' classes and the default one (ARP) guarantee no more than
	# RATE between them, so HTB's cap holds; what a class lends is shared
	# by equal quanta
	(($# == 0)) || share="$(($(bits "$rate") / ($# + 1)))bit"
	tc -n "$ns" class add dev "$dev" parent 1:1 classid 1:10 htb rate "$share" ceil "$rate" quantum 65536
	tc -n "$ns" qdisc add dev "$dev" parent 1:10 handle 10: $leaf
	for peer in "$@"; do
		j=$((j + 1))
		tc -n "$ns" class add dev "$dev" parent 1:1 classid "1:$((100 + j))" htb rate "$share" ceil "$rate" quantum 65536
		tc -n "$ns" qdisc add dev "$dev" parent "1:$((100 + j))" handle "$((100 + j)):" $leaf
		tc -n "$ns" filter add dev "$dev" parent 1: protocol ip prio 1 u32 match ip dst "$peer/32" classid "1:$((100 + j))" ||
			die "cannot classify by address here (tc u32 filter); GOBPS_NET_QUEUE=fifo builds the links without per-peer queues"
	done
}

# pick_cc chooses the hosts' TCP congestion control: GOBPS_NET_CC if set
# ("system" keeps the box's default), else cubic, Linux's usual default, if
# this box allows it in namespaces, else reno, its loss-based ancestor.
# Many-to-many traffic such as a parameter server's depends on flows
# sharing a link fairly; BBR (v1) does not converge to fair shares here and
# leaves the PS far from its bound (see docs/benchmarks.md).
pick_cc() {
	if [[ -n ${GOBPS_NET_CC:-} ]]; then
		echo "$GOBPS_NET_CC"
		return
	fi
	local allowed
	allowed=" $(sysctl -n net.ipv4.tcp_allowed_congestion_control 2>/dev/null) "
	if [[ $allowed == *" cubic "* ]]; then
		echo cubic
	elif [[ $allowed == *" reno "* ]]; then
		echo reno
	else
		echo system
	fi
}

# hostcc prints host 0's TCP congestion control.
hostcc() {
	ip netns exec "$(hostns 0)" sysctl -n net.ipv4.tcp_congestion_control 2>/dev/null || echo unknown
}

cmd_down() {
	local ns pid
	for ns in $(ours); do
		# end what still runs in the host (ours: nothing else runs there)
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -TERM "$pid" 2>/dev/null || true
		done
	done
	for ns in $(ours); do
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			[[ -z $(ip netns pids "$ns" 2>/dev/null) ]] && break
			sleep 0.2
		done
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -KILL "$pid" 2>/dev/null || true
		done
		ip netns del "$ns" 2>/dev/null || true
	done
}

cmd_up() {
	(($# == 2)) || die "usage: netcluster.sh up N RATE"
	local n=$1 rate=$2 i ns
	[[ $n =~ ^[0-9]+$ ]] && ((n >= 1 && n <= MAXHOSTS)) || die "N must be 1..$MAXHOSTS, got '$n'"
	[[ $rate =~ ^[0-9]+(\.[0-9]+)?([kmg]?(bit|bps))$ ]] || die "RATE must look like 10mbit, 200mbit or 1gbit, got '$rate'"
	local queue=${GOBPS_NET_QUEUE:-fair}
	[[ $queue == fair || $queue == fifo ]] || die "GOBPS_NET_QUEUE must be fair or fifo, got '$queue'"
	[[ $(id -u) == 0 ]] || die "needs root (network namespaces)"
	command -v tc >/dev/null || die "tc (iproute2) not found"
	if [[ -n $(ours) ]]; then
		echo "netcluster: removing an earlier cluster with prefix $PREFIX" >&2
		cmd_down
	fi
	local cc
	cc=$(pick_cc)
	ip netns add "$BRNS"
	ip -n "$BRNS" link set lo up
	ip -n "$BRNS" link add br0 type bridge
	ip -n "$BRNS" link set br0 up
	for ((i = 0; i < n; i++)); do
		ns=$(hostns "$i")
		ip netns add "$ns"
		ip -n "$ns" link set lo up
		if [[ $cc != system ]]; then
			ip netns exec "$ns" sysctl -qw net.ipv4.tcp_congestion_control="$cc"
		fi
		for kv in ${GOBPS_NET_SYSCTL:-}; do
			ip netns exec "$ns" sysctl -qw "$kv"
		done
		ip link add eth0 netns "$ns" type veth peer name "v$i" netns "$BRNS"
		ip -n "$BRNS" link set "v$i" master br0
		ip -n "$BRNS" link set "v$i" up
		ip -n "$ns" addr add "$(hostip "$i")/24" dev eth0
		ip -n "$ns" link set eth0 up
		local peers=() j
		if [[ $queue == fair ]]; then
			for ((j = 0; j < n; j++)); do
				((j == i)) || peers+=("$(hostip "$j")")
			done
		fi
		shape "$ns" eth0 "$rate" "${peers[@]}"
		shape "$BRNS" "v$i" "$rate"
	done
	echo "netcluster: $n hosts ($(hostip 0) .. $(hostip $((n - 1)))), every link shaped to $rate each way, $queue host queues, TCP congestion control $(hostcc)"
}

cmd_exec() {
	(($# >= 2)) || die "usage: netcluster.sh exec H CMD..."
	checkhost "$1"
	local ns
	ns=$(hostns "$1")
	shift
	exec ip netns exec "$ns" "$@"
}

# need_bench sets BENCH, the bpsbench binary verify and mesh run.
need_bench() {
	BENCH=${BPSBENCH:-bin/bpsbench}
	[[ -x $BENCH ]] || die "no $BENCH: build it (make build) or set BPSBENCH"
}

# stream H LISTEN TO T OUT runs bpsbench netperf on host H in the
# background ($! is its pid): it accepts one stream on LISTEN and sends one
# to TO for T, and writes its report to OUT.
stream() {
	ip netns exec "$(hostns "$1")" "$BENCH" netperf -listen "$2" -to "$3" -time "$4" >"$5" 2>&1 &
}

# received OUT WHAT prints the receive rate in bit/s of the netperf report
# in OUT, or says WHAT has no measurement and fails.
received() {
	local bps
	bps=$(sed -n 's/.*recv_bps=\([0-9]*\).*/\1/p' "$1")
	if [[ -z $bps ]]; then
		echo "netcluster: $2: no measurement: $(cat "$1")" >&2
		return 1
	fi
	echo "$bps"
}

# median_of reads sorted numbers, one a line, and prints "min median max".
median_of() {
	awk '{ v[NR] = $1 } END { if (NR) printf "%.1f %.1f %.1f\n", v[1], (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2, v[NR] }'
}

cmd_verify() {
	local t=${1:-3s} n i dir bps pids=() list=()
	n=$(nhosts)
	((n >= 2)) || die "verify needs at least 2 hosts (have $n)"
	need_bench
	dir=$(mktemp -d)
	for ((i = 0; i < n; i++)); do
		stream "$i" "$(hostip "$i"):5301" "$(hostip $(((i + 1) % n))):5301" "$t" "$dir/$i"
		pids+=($!)
	done
	local fail=0 pid
	for pid in "${pids[@]}"; do
		wait "$pid" || fail=1
	done
	for ((i = 0; i < n; i++)); do
		bps=$(received "$dir/$i" "host $i") || { fail=1; continue; }
		list+=("$bps")
		printf 'host %d <- host %d: %8.1f Mbit/s\n' "$i" $(((i + n - 1) % n)) "$(awk "BEGIN{print $bps/1e6}")"
	done
	rm -rf "$dir"
	((fail == 0)) || die "verify failed"
	local lo med hi
	read -r lo med hi < <(printf '%s\n' "${list[@]}" | sort -n | median_of)
	awk -v n="$n" -v cc="$(hostcc)" -v lo="$lo" -v med="$med" -v hi="$hi" 'BEGIN {
		printf "verify: %d links, TCP goodput with every link loaded both ways (%s): min %.1f median %.1f max %.1f Mbit/s\n", n, cc, lo / 1e6, med / 1e6, hi / 1e6
		printf "goodput_bps=%.0f min_bps=%.0f cc=%s\n", med, lo, cc
	}'
}

# cmd_mesh W [T]: every host below W (the "workers") exchanges one TCP
# stream each way with every host from W up (the "servers") at once, the
# traffic of a parameter server with dedicated servers, and reports how
# evenly the flows shared the links: a PS key waits for its slowest push.
cmd_mesh() {
	local w=${1:-} t=${2:-6s} n i j dir bps pids=() flows=()
	n=$(nhosts)
	[[ $w =~ ^[0-9]+$ ]] && ((w >= 1 && w < n)) || die "usage: netcluster.sh mesh W [T] with 1 <= W < hosts ($n)"
	need_bench
	dir=$(mktemp -d)
	# report i-j: host i receiving from host j
	for ((i = 0; i < w; i++)); do
		for ((j = w; j < n; j++)); do
			stream "$i" "$(hostip "$i"):$((5400 + j))" "$(hostip "$j"):$((5400 + i))" "$t" "$dir/$i-$j"
			pids+=($!)
			stream "$j" "$(hostip "$j"):$((5400 + i))" "$(hostip "$i"):$((5400 + j))" "$t" "$dir/$j-$i"
			pids+=($!)
		done
	done
	local fail=0 pid f
	for pid in "${pids[@]}"; do
		wait "$pid" || fail=1
	done
	local -A host=()
	for f in "$dir"/*; do
		f=${f##*/}
		bps=$(received "$dir/$f" "flow to host ${f%-*} from host ${f#*-}") || { fail=1; continue; }
		flows+=("$bps")
		host[${f%-*}]=$((${host[${f%-*}]:-0} + bps))
	done
	rm -rf "$dir"
	((fail == 0)) || die "mesh failed"
	for i in $(printf '%s\n' "${!host[@]}" | sort -n); do
		printf 'host %d received %.1f Mbit/s in all\n' "$i" "$(awk "BEGIN{print ${host[$i]}/1e6}")"
	done
	local lo med hi
	read -r lo med hi < <(printf '%s\n' "${flows[@]}" | sort -n | median_of)
	awk -v f="${#flows[@]}" -v w="$w" -v lo="$lo" -v med="$med" -v hi="$hi" 'BEGIN {
		printf "mesh: %d flows (hosts 0-%d each way with the rest): per flow min %.1f median %.1f max %.1f Mbit/s\n", f, w - 1, lo / 1e6, med / 1e6, hi / 1e6
	}'
}

case ${1:-} in
up) shift; cmd_up "$@" ;;
down) shift; cmd_down ;;
exec) shift; cmd_exec "$@" ;;
ip) shift; checkhost "${1:-x}"; hostip "$1" ;;
hosts) nhosts ;;
verify) shift; cmd_verify "$@" ;;
mesh) shift; cmd_mesh "$@" ;;
*)
	sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac
