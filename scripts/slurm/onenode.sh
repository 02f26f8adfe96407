#!/bin/bash
# Brings up a one-node Slurm cluster on this machine, for trying
# scripts/slurm/job.sbatch and bpsrun's Slurm mode with a real srun:
#
#   sudo scripts/slurm/onenode.sh          # installs slurm-wlm if missing
#   GOBPS_TEST_SLURM=1 go test -run TestSbatchExample ./cmd/bpsrun
#   sudo scripts/slurm/onenode.sh stop
#
# Debian 12's slurm-wlm (22.05) with munge; the node is this host
# (hostname -s) with CPUS (default 8) CPUs whatever it has, so that jobs of
# more tasks than cores run (with --overcommit). It writes
# /etc/slurm/slurm.conf, and refuses to replace one it did not write (a
# real cluster's node) unless GOBPS_SLURM_FORCE=1. make test runs it as
# root (make test-slurm), and stops the daemons afterwards.
set -euo pipefail

CPUS=${CPUS:-8}
host=$(hostname -s)

stop() {
	for d in slurmd slurmctld; do
		if pid=$(pidof "$d"); then kill $pid || true; fi
	done
}

if [ "${1:-}" = stop ]; then
	stop
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "onenode.sh: run it as root (it installs packages and starts daemons)" >&2
	exit 1
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -o DPkg::Lock::Timeout=120 slurm-wlm
fi

install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
	(umask 077 && head -c 1024 /dev/urandom >/etc/munge/munge.key)
fi
chown munge:munge /etc/munge/munge.key /var/log/munge/* 2>/dev/null || true
if ! pidof munged >/dev/null; then
	su -s /bin/sh munge -c munged
fi

if [ -s /etc/slurm/slurm.conf ] && ! grep -q "^# written by gobps's scripts/slurm/onenode.sh" /etc/slurm/slurm.conf &&
	[ "${GOBPS_SLURM_FORCE:-}" != 1 ]; then
	echo "onenode.sh: /etc/slurm/slurm.conf was not written by this script (a real Slurm node?); not replacing it (GOBPS_SLURM_FORCE=1 does)" >&2
	exit 3
fi
mkdir -p /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /etc/slurm
cat >/etc/slurm/slurm.conf <<CONF
# written by gobps's scripts/slurm/onenode.sh
ClusterName=gobps-test
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
NodeName=$host CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

stop
sleep 1
slurmctld
slurmd
for _ in $(seq 60); do
	if sinfo -h -o %T 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; then
		sinfo
		exit 0
	fi
	sleep 1
done
echo "onenode.sh: the node did not come up in 60 s; see /var/log/slurm/" >&2
sinfo >&2 || true
exit 1
