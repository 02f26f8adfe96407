#!/usr/bin/env bash
# rdma_qemu.sh: run host-built programs (Go test binaries, cgo included)
# inside a QEMU guest that has a real verbs device: Soft-RoCE (rdma_rxe) on
# the guest's loopback, rxe0. For machines whose own kernel has no RDMA.
#
#   rdma_qemu.sh prepare
#       fetch and build everything the guest needs, once, into the cache
#       (idempotent: a second run does nothing and takes about a second)
#   rdma_qemu.sh run [--add HOSTPATH[:GUESTPATH]]... [--timeout SECS] -- CMD [ARGS...]
#       boot the guest and run CMD there in /work, with GOBPS_IN_QEMU=1 set,
#       memlock unlimited and rxe0 up; exit with CMD's exit status. Each
#       --add copies a file or directory into the guest (default guest path
#       /work/BASENAME; a relative GUESTPATH is under /work), with the shared
#       libraries (host ldd) of every ELF file in it. --timeout bounds CMD
#       (default $GOBPS_QEMU_RUN_TIMEOUT); the guest's console, CMD's output
#       included, streams to stdout.
#   rdma_qemu.sh check
#       prepare, then a self-test in the guest (scripts/rdma_qemu/selftest.sh):
#       ibv_devinfo and an ibv_rc_pingpong server and client over rxe0 on
#       127.0.0.1; exit 0 only if the ping-pong succeeded. Prints the times.
#
# The guest: Debian 12's kernel (the linux-image-6.1.*-amd64 that
# linux-image-amd64 depends on) booted by qemu-system-x86_64 (TCG by default;
# -cpu max -smp 2 -m 2048 -nographic -no-reboot -nic none)
# with an initramfs and no disk: busybox-static, the modules crc32_generic,
# udp_tunnel, ip6_udp_tunnel, ib_core, ib_uverbs and rdma_rxe (and whatever
# they depend on), libibverbs with only the rxe provider, ibverbs-utils
# (ibv_devices, ibv_devinfo, ibv_rc_pingpong, ...), iproute2's rdma tool, and
# their shared libraries (glibc is the host's: host and guest are both Debian
# 12). Its /init (scripts/rdma_qemu/init) mounts proc, sys, devtmpfs and
# tmpfs on /tmp and /dev/shm, brings lo up, loads the modules, runs
# `rdma link add rxe0 type rxe netdev lo`, prints ibv_devices, runs CMD
# under busybox timeout, prints `GOBPS_GUEST_EXIT=<code>` and powers off.
# The host parses that marker; without it (boot failure, host timeout) the
# script exits non-zero with a message: 124 host timeout, 125 no marker.
# In the guest, 125 also means its setup (modules, rxe link) failed.
#
# Needs: Debian 12 (bookworm) amd64 with working apt sources, root to
# install the host tools that are missing (qemu-system-x86, cpio, binutils,
# dpkg; apt-get install, apt-get update only if that fails). The guest's
# packages are fetched with apt-get download into the cache and unpacked
# there with dpkg-deb -x; nothing of them is installed on the host.
#
# Cache: $GOBPS_QEMU_CACHE (default <repo>/.cache/rdma-qemu, ~85 MB):
# debs/ the downloaded packages (unpacked/ holds them unpacked only while
# the initramfs is built), base.cpio.gz the initramfs every run boots,
# kernel/vmlinuz its kernel, stamp what they were built from. run concatenates a small second cpio (the --add files, their
# libraries, the command as a shell script) after the base one. Remove the
# directory to start over.
#
# Environment:
#   GOBPS_QEMU_CACHE         the cache directory (above)
#   GOBPS_QEMU_RUN_TIMEOUT   default --timeout of CMD in the guest, seconds
#                            (default 600)
#   GOBPS_QEMU_BOOT_TIMEOUT  seconds allowed on top of it for qemu's start,
#                            the guest's boot and power-off (default 300);
#                            past the sum the host kills qemu (exit 124)
#   GOBPS_QEMU_ACCEL         tcg (the default), kvm, or auto (kvm when
#                            /dev/kvm can be opened, else tcg). tcg boots in
#                            seconds; where KVM is nested (a VM in a VM) it
#                            can be far slower than tcg, even hang: on the
#                            machine this was written on it never got past
#                            the BIOS, so kvm is never the default.
#   GOBPS_QEMU_MEM           guest memory in MiB (default 2048)
#   GOBPS_QEMU_SMP           guest CPUs (default 2)
#   GOBPS_QEMU_KERNEL_PKG    the kernel package (default: the one
#                            linux-image-amd64 depends on)
#   GOBPS_QEMU_CHECK_TIMEOUT check's --timeout (default 300)
#   GOBPS_RXE_GID            check's GID index (default: the one whose GID
#                            is ::ffff:127.0.0.1, RoCE v2: index 1 on the
#                            6.1 kernel)
#   GOBPS_PINGPONG_ITERS     check's ibv_rc_pingpong -n (default 1000)
#
# Timings on a 2-core box, TCG: prepare cold ~7 s plus the host packages'
# install when missing (~10 s), warm <1 s; a boot to the command ~3 s of
# guest time, check ~10 s in all.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
DATA=$HERE/rdma_qemu
CACHE=${GOBPS_QEMU_CACHE:-$REPO/.cache/rdma-qemu}
RUN_TIMEOUT=${GOBPS_QEMU_RUN_TIMEOUT:-600}
BOOT_TIMEOUT=${GOBPS_QEMU_BOOT_TIMEOUT:-300}
ACCEL=${GOBPS_QEMU_ACCEL:-tcg}
MEM=${GOBPS_QEMU_MEM:-2048}
SMP=${GOBPS_QEMU_SMP:-2}

# Bump when the layout of the base initramfs changes, to rebuild caches.
BASE_VERSION=1
# The modules the guest loads, in this order, after their dependencies.
MODULES=(crc32_generic udp_tunnel ip6_udp_tunnel ib_core ib_uverbs rdma_rxe)
# The guest's packages besides the kernel (a superset of what its binaries
# need: only the shared libraries they really use go into the initramfs).
PACKAGES=(busybox-static libibverbs1 ibverbs-providers ibverbs-utils iproute2
	libnl-3-200 libnl-route-3-200 libmnl0 libelf1 libbsd0 libcap2 libselinux1
	libdb5.3 zlib1g libmd0 libpcre2-8-0 libbpf1 libtirpc3 libxtables12)
# Where the guest's shared libraries are looked up: the unpacked packages
# first, then the host (glibc and whatever the packages above lack).
LIBDIRS_REL=(usr/lib/x86_64-linux-gnu lib/x86_64-linux-gnu)
HOST_LIBDIRS=(/lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64)
MULTIARCH=usr/lib/x86_64-linux-gnu

log() { echo "rdma_qemu: $*" >&2; }
die() {
	echo "rdma_qemu: error: $*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 2
}

# now prints seconds since the epoch with centiseconds.
now() { date +%s.%N | cut -c1-13; }
# since T prints seconds elapsed since T (from now).
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- host tools

apt_install() {
	[ "$(id -u)" = 0 ] || die "missing host packages ($*): install them (as root: apt-get install $*)"
	log "installing host packages: $*"
	export DEBIAN_FRONTEND=noninteractive
	# wait for another apt-get rather than fail at once
	local lock=(-o DPkg::Lock::Timeout=600)
	if ! apt-get "${lock[@]}" install -y -q --no-install-recommends "$@" >&2; then
		log "apt-get install failed; apt-get update and again"
		apt-get "${lock[@]}" update -q >&2
		apt-get "${lock[@]}" install -y -q --no-install-recommends "$@" >&2
	fi
}

host_tools() {
	local missing=() tool pkg
	for tool in qemu-system-x86_64:qemu-system-x86 cpio:cpio gzip:gzip \
		readelf:binutils objdump:binutils dpkg-deb:dpkg ldd:libc-bin \
		apt-get:apt tail:coreutils awk:mawk flock:util-linux; do
		pkg=${tool#*:}
		tool=${tool%%:*}
		if ! command -v "$tool" >/dev/null 2>&1; then
			case " ${missing[*]} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
		fi
	done
	if [ "${#missing[@]}" -gt 0 ]; then
		apt_install "${missing[@]}"
	fi
}

# ------------------------------------------------------------ guest packages

kernel_pkg() {
	if [ -n "${GOBPS_QEMU_KERNEL_PKG:-}" ]; then
		echo "$GOBPS_QEMU_KERNEL_PKG"
		return
	fi
	local pkg
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
		sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
	if [ -z "$pkg" ]; then
		apt-get update -q >&2 || true
		pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
			sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | head -n1)
	fi
	[ -n "$pkg" ] || die "cannot tell which kernel linux-image-amd64 depends on (apt-cache depends linux-image-amd64)"
	echo "$pkg"
}

# fetch PKG...: download the packages not yet in $CACHE/debs.
fetch() {
	local want=() pkg
	for pkg in "$@"; do
		if ! compgen -G "$CACHE/debs/${pkg}_*.deb" >/dev/null; then
			want+=("$pkg")
		fi
	done
	[ "${#want[@]}" -gt 0 ] || return 0
	log "apt-get download ${want[*]}"
	# apt drops privileges to _apt for downloads, which then cannot write
	# a directory owned by root: download into a directory _apt may use.
	local tmp
	tmp=$(mktemp -d "$CACHE/debs.tmp.XXXXXX")
	chmod 0777 "$tmp"
	if ! (cd "$tmp" && apt-get download -q "${want[@]}" >&2); then
		log "apt-get download failed; apt-get update and again"
		apt-get update -q >&2 || true
		(cd "$tmp" && apt-get download -q "${want[@]}" >&2) || {
			rm -rf "$tmp"
			die "apt-get download ${want[*]} failed"
		}
	fi
	mv "$tmp"/*.deb "$CACHE/debs/"
	rm -rf "$tmp"
}

# unpack: dpkg-deb -x every downloaded package into $CACHE/unpacked (which
# build_base removes when done: 400 MB, mostly modules it does not use).
unpack() {
	local deb
	rm -rf "$CACHE/unpacked"
	mkdir -p "$CACHE/unpacked"
	for deb in "$CACHE"/debs/*.deb; do
		dpkg-deb -x "$deb" "$CACHE/unpacked"
	done
}

# ------------------------------------------------------------ shared libraries

# find_lib SONAME prints the path of SONAME: in the unpacked packages first,
# then on the host.
find_lib() {
	local d
	for d in "${LIBDIRS_REL[@]}"; do
		if [ -e "$CACHE/unpacked/$d/$1" ]; then
			echo "$CACHE/unpacked/$d/$1"
			return
		fi
	done
	for d in "${HOST_LIBDIRS[@]}"; do
		if [ -e "$d/$1" ]; then
			echo "$d/$1"
			return
		fi
	done
	return 1
}

# needed ELF prints the DT_NEEDED sonames of ELF.
needed() { objdump -p "$1" 2>/dev/null | awk '$1 == "NEEDED" { print $2 }'; }

# copy_libs STAGE ELF...: copy the shared libraries ELF... need, recursively,
# from the unpacked packages or the host into STAGE/$MULTIARCH.
copy_libs() {
	local stage=$1
	shift
	local -A seen=()
	local queue=("$@") f so path
	while [ "${#queue[@]}" -gt 0 ]; do
		f=${queue[0]}
		queue=("${queue[@]:1}")
		for so in $(needed "$f"); do
			[ -n "${seen[$so]:-}" ] && continue
			seen[$so]=1
			path=$(find_lib "$so") || die "no $so (needed by $f) in the unpacked packages or on the host"
			cp -L "$path" "$stage/$MULTIARCH/$so"
			queue+=("$path")
		done
	done
}

is_elf() { [ -f "$1" ] && [ "$(head -c4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }

# ------------------------------------------------------------------- modules

# modinfo_depends KO prints the modules KO depends on, comma-separated.
modinfo_depends() { readelf -p .modinfo "$1" 2>/dev/null | sed -n 's/^ *\[ *[0-9a-f]*\] *depends=//p'; }

# ------------------------------------------------------------------- prepare

base_inputs() {
	{
		echo "version $BASE_VERSION"
		echo "modules ${MODULES[*]}"
		(cd "$CACHE/debs" && ls -- *.deb)
		cat "$DATA/init"
	} | sha256sum | cut -d' ' -f1
}

prepare() {
	local t0 kpkg
	t0=$(now)
	host_tools
	mkdir -p "$CACHE/debs"
	# one prepare at a time per cache (runs may start side by side)
	exec 9>"$CACHE/.lock"
	flock 9
	kpkg=$(kernel_pkg)
	fetch "$kpkg" "${PACKAGES[@]}"
	local stamp
	stamp="$kpkg $(base_inputs)"
	if [ -f "$CACHE/base.cpio.gz" ] && [ -f "$CACHE/kernel/vmlinuz" ] &&
		[ "$(cat "$CACHE/stamp" 2>/dev/null)" = "$stamp" ]; then
		exec 9>&-
		log "prepare: up to date ($kpkg, $(du -h "$CACHE/base.cpio.gz" | cut -f1) initramfs) in $(since "$t0")s"
		return 0
	fi
	unpack
	build_base "$kpkg"
	echo "$stamp" >"$CACHE/stamp"
	exec 9>&-
	log "prepare: done in $(since "$t0")s ($kpkg, $(du -h "$CACHE/base.cpio.gz" | cut -f1) initramfs)"
}

build_base() {
	local kpkg=$1 u=$CACHE/unpacked stage kver
	kver=${kpkg#linux-image-}
	[ -f "$u/boot/vmlinuz-$kver" ] || die "no $u/boot/vmlinuz-$kver in $kpkg"
	[ -d "$u/lib/modules/$kver" ] || die "no $u/lib/modules/$kver in $kpkg"
	stage=$CACHE/base.tmp
	rm -rf "$stage"
	mkdir -p "$stage"
	(
		cd "$stage"
		mkdir -p usr/bin usr/sbin "$MULTIARCH/libibverbs" usr/lib64 usr/lib/modules/gobps \
			etc/libibverbs.d etc/gobps proc sys dev tmp run root work
		ln -s usr/bin bin
		ln -s usr/sbin sbin
		ln -s usr/lib lib
		ln -s usr/lib64 lib64
	)

	# busybox and its applets
	cp "$u/bin/busybox" "$stage/usr/bin/busybox"
	local applet
	while read -r applet; do
		applet=${applet#/}
		case $applet in
		bin/* | sbin/*) applet=usr/$applet ;;
		esac
		[ -e "$stage/$applet" ] || [ -L "$stage/$applet" ] || ln -s /usr/bin/busybox "$stage/$applet"
	done < <("$u/bin/busybox" --list-full)

	# verbs: libibverbs, the rxe provider only, ibverbs-utils, rdma
	local elfs=() f
	for f in "$u"/usr/bin/ibv_*; do
		cp "$f" "$stage/usr/bin/"
		elfs+=("$f")
	done
	local rdma=
	for f in "$u"/{usr/bin,usr/sbin,bin,sbin}/rdma; do
		[ -f "$f" ] && rdma=$f && break
	done
	[ -n "$rdma" ] || die "no rdma in iproute2"
	rm -f "$stage/usr/sbin/rdma" "$stage/usr/bin/rdma"
	cp "$rdma" "$stage/usr/sbin/rdma"
	elfs+=("$rdma")
	local rxe
	rxe=$(compgen -G "$u/$MULTIARCH/libibverbs/librxe-rdmav*.so" | head -n1) ||
		die "no librxe in ibverbs-providers"
	cp "$rxe" "$stage/$MULTIARCH/libibverbs/"
	elfs+=("$rxe")
	cp "$u/etc/libibverbs.d/rxe.driver" "$stage/etc/libibverbs.d/"
	copy_libs "$stage" "${elfs[@]}"
	# the dynamic loader, where ELF executables look for it
	cp -L /lib64/ld-linux-x86-64.so.2 "$stage/$MULTIARCH/ld-linux-x86-64.so.2"
	ln -s ../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$stage/usr/lib64/ld-linux-x86-64.so.2"
	# what a cgo binary usually needs beyond libc (cheap, saves surprises)
	for f in libpthread.so.0 libdl.so.2 libm.so.6 librt.so.1 libresolv.so.2 \
		libnss_files.so.2 libnss_dns.so.2; do
		[ -e "$stage/$MULTIARCH/$f" ] || cp -L "/lib/x86_64-linux-gnu/$f" "$stage/$MULTIARCH/$f" 2>/dev/null || true
	done

	# modules, in load order, dependencies first
	local -A kofile=() loaded=()
	local order=() ko name
	while IFS= read -r -d '' ko; do
		name=${ko##*/}
		name=${name%%.ko*}
		kofile[${name//-/_}]=$ko
	done < <(find "$u/lib/modules/$kver" -name '*.ko*' -print0)
	add_module() {
		local m=${1//-/_} d
		[ -n "${loaded[$m]:-}" ] && return 0
		[ -n "${kofile[$m]:-}" ] || die "no module $m in $kpkg"
		loaded[$m]=1
		local IFS=,
		for d in $(modinfo_depends "${kofile[$m]}"); do
			[ -n "$d" ] && add_module "$d"
		done
		order+=("$m")
	}
	for name in "${MODULES[@]}"; do
		add_module "$name"
	done
	for name in "${order[@]}"; do
		ko=${kofile[$name]}
		case $ko in
		*.ko.xz) xz -dc "$ko" ;;
		*.ko.zst) zstd -dcq "$ko" ;;
		*.ko.gz) gzip -dc "$ko" ;;
		*) cat "$ko" ;;
		esac >"$stage/usr/lib/modules/gobps/$name.ko"
		echo "$name" >>"$stage/usr/lib/modules/gobps/order"
	done
	log "guest modules: ${order[*]}"

	# a few files programs expect
	cat >"$stage/etc/hosts" <<-'EOF'
		127.0.0.1	localhost
		::1	localhost ip6-localhost ip6-loopback
	EOF
	echo "hosts: files dns" >"$stage/etc/nsswitch.conf"
	echo "root:x:0:0:root:/root:/bin/sh" >"$stage/etc/passwd"
	echo "root:x:0:" >"$stage/etc/group"
	cp "$DATA/init" "$stage/init"
	chmod 0755 "$stage/init"
	mknod -m 0600 "$stage/dev/console" c 5 1 2>/dev/null || true

	mkdir -p "$CACHE/kernel"
	cp "$u/boot/vmlinuz-$kver" "$CACHE/kernel/vmlinuz"
	echo "$kver" >"$CACHE/kernel/version"
	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
		gzip -1 >"$CACHE/base.cpio.gz.tmp"
	mv "$CACHE/base.cpio.gz.tmp" "$CACHE/base.cpio.gz"
	rm -rf "$stage" "$CACHE/unpacked"
}

# ----------------------------------------------------------------------- run

# run ARGS... (see the usage above) boots the guest and sets RC to the exit
# status this script should have: CMD's, or 124/125. It returns 0 so that
# set -e stays in force in it (a function called as "run || ..." runs
# without it).

# quote ARG prints ARG single-quoted for sh.
quote() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# guest_path HOSTPATH GUESTPATH prints where an --add lands in the stage,
# relative to its root, with the guest's symlinked top directories (bin,
# sbin, lib, lib64) resolved: a cpio directory entry for one of those would
# replace the symlink.
guest_path() {
	local g=$2
	[ -n "$g" ] || g=/work/$(basename "$1")
	case $g in
	/*) ;;
	*) g=/work/$g ;;
	esac
	g=${g#/}
	case $g in
	bin | bin/* | sbin | sbin/* | lib | lib/* | lib64 | lib64/*) g=usr/$g ;;
	esac
	echo "$g"
}

QEMU_PID=
TAIL_PID=
TMP=

cleanup() {
	if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
		kill "$QEMU_PID" 2>/dev/null || true
		sleep 0.5
		kill -9 "$QEMU_PID" 2>/dev/null || true
	fi
	if [ -n "$TAIL_PID" ]; then
		kill "$TAIL_PID" 2>/dev/null || true
	fi
	if [ -n "$TMP" ]; then
		rm -rf "$TMP"
	fi
}

accel_args() {
	case $ACCEL in
	kvm) echo "-accel kvm" ;;
	tcg) echo "-accel tcg" ;;
	auto)
		if [ -r /dev/kvm ] && [ -w /dev/kvm ] && (exec 3<>/dev/kvm) 2>/dev/null; then
			echo "-accel kvm -accel tcg"
		else
			echo "-accel tcg"
		fi
		;;
	*) die "GOBPS_QEMU_ACCEL=$ACCEL: want kvm, tcg or auto" ;;
	esac
}

run() {
	local adds=() timeout=$RUN_TIMEOUT
	while [ $# -gt 0 ]; do
		case $1 in
		--add)
			[ $# -ge 2 ] || usage
			adds+=("$2")
			shift 2
			;;
		--add=*)
			adds+=("${1#--add=}")
			shift
			;;
		--timeout)
			[ $# -ge 2 ] || usage
			timeout=$2
			shift 2
			;;
		--timeout=*)
			timeout=${1#--timeout=}
			shift
			;;
		--)
			shift
			break
			;;
		*) usage ;;
		esac
	done
	[ $# -gt 0 ] || usage
	case $timeout in '' | *[!0-9]*) die "--timeout $timeout: want whole seconds" ;; esac

	[ -n "$PREPARED" ] || prepare
	trap cleanup EXIT
	trap 'cleanup; trap - INT; kill -INT $$' INT
	trap 'cleanup; trap - TERM; kill -TERM $$' TERM
	TMP=$(mktemp -d "${TMPDIR:-/tmp}/gobps-rdma-qemu.XXXXXX")
	local stage=$TMP/stage spec host guest f
	mkdir -p "$stage/$MULTIARCH" "$stage/usr/lib64" "$stage/etc/gobps" "$stage/work"
	local elfs=()
	for spec in "${adds[@]}"; do
		host=${spec%%:*}
		guest=
		[ "$host" = "$spec" ] || guest=${spec#*:}
		[ -e "$host" ] || die "--add $spec: no $host"
		guest=$(guest_path "$host" "$guest")
		mkdir -p "$stage/$(dirname "$guest")"
		cp -rL "$host" "$stage/$guest"
		while IFS= read -r -d '' f; do
			is_elf "$f" && elfs+=("$f")
		done < <(find "$stage/$guest" -type f -print0)
	done
	# their libraries, as the host's dynamic loader resolves them
	local line so path
	for f in "${elfs[@]}"; do
		while read -r line; do
			case $line in
			*" => "/*)
				so=${line%% => *}
				path=${line#* => }
				path=${path%% (*}
				cp -L "$path" "$stage/$MULTIARCH/$(basename "$so")"
				;;
			/*ld-linux*)
				path=${line%% (*}
				cp -L "$path" "$stage/$MULTIARCH/$(basename "$path")"
				;;
			*"not found"*) log "warning: $(basename "$f"): ${line}" ;;
			esac
		done < <(ldd "$f" 2>/dev/null || true)
	done
	{
		echo "#!/bin/sh"
		local a cmd="exec"
		for a in "$@"; do
			cmd+=" $(quote "$a")"
		done
		echo "$cmd"
	} >"$stage/etc/gobps/cmd.sh"
	echo "$timeout" >"$stage/etc/gobps/timeout"
	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
		gzip -1 >"$TMP/extra.cpio.gz"
	cat "$CACHE/base.cpio.gz" "$TMP/extra.cpio.gz" >"$TMP/initrd"
	rm -rf "$stage"

	local limit=$((timeout + BOOT_TIMEOUT)) accel
	accel=$(accel_args)
	local logf=$TMP/console.log t0
	: >"$logf"
	log "booting $(cat "$CACHE/kernel/version") ($accel, -smp $SMP -m $MEM; host timeout ${limit}s)"
	t0=$(now)
	# shellcheck disable=SC2086 # accel is several words on purpose
	qemu-system-x86_64 $accel -cpu max -smp "$SMP" -m "$MEM" \
		-nographic -no-reboot -nic none \
		-kernel "$CACHE/kernel/vmlinuz" -initrd "$TMP/initrd" \
		-append "console=ttyS0 panic=-1 quiet" \
		</dev/null >"$logf" 2>&1 &
	QEMU_PID=$!
	# stream the console, without its carriage returns and SeaBIOS's
	# terminal resets
	tail -n +1 -f --pid="$QEMU_PID" "$logf" |
		sed -u -e 's/\r$//' -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' &
	TAIL_PID=$!
	local timed_out=
	local deadline=$((SECONDS + limit))
	while kill -0 "$QEMU_PID" 2>/dev/null; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			timed_out=1
			kill "$QEMU_PID" 2>/dev/null || true
			sleep 1
			kill -9 "$QEMU_PID" 2>/dev/null || true
			break
		fi
		sleep 0.5
	done
	wait "$QEMU_PID" 2>/dev/null || true
	QEMU_PID=
	wait "$TAIL_PID" 2>/dev/null || true
	TAIL_PID=
	local wall code
	wall=$(since "$t0")
	code=$(tr -d '\r' <"$logf" | sed -n 's/^GOBPS_GUEST_EXIT=\([0-9][0-9]*\)$/\1/p' | tail -n1)
	LAST_WALL=$wall
	LAST_LOG=$(tr -d '\r' <"$logf" | grep -a '^gobps-init: ' || true)
	if [ -n "$timed_out" ]; then
		log "host timeout: the guest ran past ${limit}s (command timeout ${timeout}s + GOBPS_QEMU_BOOT_TIMEOUT ${BOOT_TIMEOUT}s); killed qemu"
		RC=124
	elif [ -z "$code" ]; then
		log "the guest ended without reporting an exit code (no GOBPS_GUEST_EXIT line: boot failure or kernel panic?) after ${wall}s"
		RC=125
	else
		log "guest exit code $code, ${wall}s wall"
		RC=$code
	fi
}

check() {
	local t0 rc
	t0=$(now)
	prepare
	PREPARED=1
	log "prepare took $(since "$t0")s"
	run --timeout "${GOBPS_QEMU_CHECK_TIMEOUT:-300}" --add "$DATA/selftest.sh:/work/selftest.sh" -- sh /work/selftest.sh
	rc=$RC
	local boot took
	boot=$(echo "$LAST_LOG" | sed -n 's/^gobps-init: ready after \([0-9.]*\)s.*/\1/p')
	took=$(echo "$LAST_LOG" | sed -n 's/^gobps-init: the command exited [0-9]* after \([0-9.]*\)s.*/\1/p')
	log "check: boot ${boot:-?}s (guest uptime until the test started), test ${took:-?}s, qemu wall ${LAST_WALL:-?}s, total $(since "$t0")s"
	if [ "$rc" -eq 0 ]; then
		log "check: PASS"
	else
		log "check: FAIL (exit $rc)"
	fi
	RC=$rc
}

LAST_WALL=
LAST_LOG=
PREPARED=
RC=0
case ${1:-} in
prepare)
	shift
	[ $# -eq 0 ] || usage
	prepare
	;;
run)
	shift
	run "$@"
	exit "$RC"
	;;
check)
	shift
	[ $# -eq 0 ] || usage
	check
	exit "$RC"
	;;
*) usage ;;
esac
