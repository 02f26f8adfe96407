#!/bin/sh
# Self-test run inside the rdma_qemu.sh guest by `rdma_qemu.sh check`:
# ibv_devinfo, then an ibv_rc_pingpong server and client over rxe0 on
# 127.0.0.1. Exits 0 only if both ends of the ping-pong succeeded.
#
# The GID index is the one of rxe0 port 1 whose GID is the IPv4-mapped
# 127.0.0.1 (::ffff:127.0.0.1, a RoCE v2 GID); GOBPS_RXE_GID overrides it.
set -u
dev=rxe0
gids=/sys/class/infiniband/$dev/ports/1/gids

ibv_devinfo -d "$dev" || exit 1
rdma link show

gid=${GOBPS_RXE_GID:-}
if [ -z "$gid" ]; then
	for f in "$gids"/*; do
		if [ "$(cat "$f" 2>/dev/null)" = "0000:0000:0000:0000:0000:ffff:7f00:0001" ]; then
			gid=${f##*/}
			break
		fi
	done
fi
if [ -z "$gid" ]; then
	echo "selftest: no GID of $dev is ::ffff:127.0.0.1; the table:"
	for f in "$gids"/*; do echo "  ${f##*/} $(cat "$f" 2>/dev/null)"; done
	exit 1
fi
echo "selftest: GID index $gid: $(cat "$gids/$gid") ($(cat "/sys/class/infiniband/$dev/ports/1/gid_attrs/types/$gid" 2>/dev/null))"

iters=${GOBPS_PINGPONG_ITERS:-1000}
ibv_rc_pingpong -d "$dev" -g "$gid" -n "$iters" >/tmp/server.log 2>&1 &
server=$!
client=1
i=0
while [ "$i" -lt 20 ]; do
	sleep 0.5
	i=$((i + 1))
	if ibv_rc_pingpong -d "$dev" -g "$gid" -n "$iters" 127.0.0.1 >/tmp/client.log 2>&1; then
		client=0
		break
	fi
	# a refused connection means the server is not listening yet: retry
	grep -q "Couldn't connect" /tmp/client.log || break
done
[ "$client" -eq 0 ] || kill "$server" 2>/dev/null
wait "$server"
server_rc=$?
echo "--- ibv_rc_pingpong server (exit $server_rc):"
cat /tmp/server.log
echo "--- ibv_rc_pingpong client (exit $client):"
cat /tmp/client.log
if [ "$server_rc" -ne 0 ] || [ "$client" -ne 0 ]; then
	echo "selftest: FAIL"
	exit 1
fi
echo "selftest: PASS (ibv_rc_pingpong over $dev, GID index $gid)"
