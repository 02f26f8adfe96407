#!/usr/bin/env bash
# sshcluster.sh: netcluster.sh's emulated hosts, each running an ssh server,
# for bpsrun -H (multi-host launch over ssh) on one Linux box. Needs root,
# iproute2 and Debian's openssh-server (/usr/sbin/sshd) and openssh-client.
#
#   sshcluster.sh up N DIR [RATE]  create hosts 0..N-1 (netcluster.sh up N
#                                  RATE, default 10gbit), make a client key
#                                  and a host key in DIR (a fresh directory),
#                                  and start sshd on port 22 of every host,
#                                  which lets root in with that key only
#   sshcluster.sh flags DIR        print the bpsrun flags that reach the
#                                  hosts: --ssh-identity and --ssh-option
#                                  UserKnownHostsFile (the hosts' key is
#                                  known; nothing is trusted blindly)
#   sshcluster.sh down DIR         stop those ssh servers and remove the hosts
#                                  (netcluster.sh down ends every process
#                                  left in them)
#
# Everything runs inside the hosts' namespaces: run bpsrun there too, for
# example with netcluster.sh exec 0 bin/bpsrun -H ... . GOBPS_NET_PREFIX and
# GOBPS_NET_SUBNET are netcluster.sh's.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
net() { "$here/netcluster.sh" "$@"; }
die() { echo "sshcluster: $*" >&2; exit 1; }

cmd_up() {
	local n=${1:?usage: sshcluster.sh up N DIR [RATE]} dir=${2:?usage: sshcluster.sh up N DIR [RATE]} rate=${3:-10gbit}
	[[ -x /usr/sbin/sshd ]] || die "no /usr/sbin/sshd (apt-get install openssh-server)"
	command -v ssh-keygen >/dev/null || die "no ssh-keygen (apt-get install openssh-client)"
	mkdir -p "$dir"
	dir=$(cd "$dir" && pwd)
	rm -f "$dir/id" "$dir/id.pub" "$dir/hostkey" "$dir/hostkey.pub"
	ssh-keygen -q -t ed25519 -N '' -C gobps-sshcluster -f "$dir/id"
	ssh-keygen -q -t ed25519 -N '' -C gobps-sshcluster-host -f "$dir/hostkey"
	cp "$dir/id.pub" "$dir/authorized_keys"
	: >"$dir/known_hosts"
	mkdir -p /run/sshd # sshd's privilege separation directory
	net up "$n" "$rate"
	local i ip
	for ((i = 0; i < n; i++)); do
		ip=$(net ip "$i")
		echo "$ip $(cut -d' ' -f1,2 "$dir/hostkey.pub")" >>"$dir/known_hosts"
		cat >"$dir/sshd_config.$i" <<EOF
ListenAddress $ip:22
HostKey $dir/hostkey
AuthorizedKeysFile $dir/authorized_keys
PidFile $dir/sshd.$i.pid
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 200
MaxSessions 200
LogLevel ERROR
EOF
		net exec "$i" /usr/sbin/sshd -f "$dir/sshd_config.$i" -E "$dir/sshd.$i.log"
	done
	# wait (bounded) until every host answers with the key it should
	for ((i = 0; i < n; i++)); do
		ip=$(net ip "$i")
		local ok=0 try
		for ((try = 0; try < 50; try++)); do
			if net exec 0 ssh -T -o BatchMode=yes -o ConnectTimeout=2 -i "$dir/id" \
				-o UserKnownHostsFile="$dir/known_hosts" "$ip" true 2>/dev/null; then
				ok=1
				break
			fi
			sleep 0.1
		done
		((ok)) || die "sshd on host $i ($ip) does not answer: see $dir/sshd.$i.log"
	done
}

cmd_flags() {
	local dir=${1:?usage: sshcluster.sh flags DIR}
	dir=$(cd "$dir" && pwd)
	echo "--ssh-identity $dir/id --ssh-option UserKnownHostsFile=$dir/known_hosts"
}

cmd_down() {
	local dir=${1:?usage: sshcluster.sh down DIR} f
	for f in "$dir"/sshd.*.pid; do
		[[ -f $f ]] || continue
		kill "$(cat "$f")" 2>/dev/null || true
		rm -f "$f"
	done
	net down
}

case ${1:-} in
up) shift; cmd_up "$@" ;;
flags) shift; cmd_flags "$@" ;;
down) shift; cmd_down "$@" ;;
*) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
