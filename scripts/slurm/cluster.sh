#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, to try the Slurm path (and run `make test-slurm`) without a cluster.
#
#   scripts/slurm/cluster.sh up      # install slurm + munge where missing (apt, root), write slurm.conf, start daemons
#   scripts/slurm/cluster.sh down    # stop the daemons this script started (by their pid files)
#   scripts/slurm/cluster.sh status  # one line: up (sinfo's view of the node) or down
#
# Idempotent: `up` on a running cluster only checks it. The node has this machine's cores (nproc) and 90 % of its
# memory; DefMemPerCPU gives a job memory in proportion to its CPUs, so two 1-CPU array tasks run side by side
# (without it a job asks for the whole node's memory and array tasks run one after the other).
# An existing slurm.conf that this script did not write is never overwritten.
set -euo pipefail

CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
CONF=$CONF_DIR/slurm.conf
MARK="# written by trustregion scripts/slurm/cluster.sh"
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd
LOGS=/var/log/slurm
RUN=/run/trustregion-slurm
KILL_WAIT=${SLURM_KILL_WAIT:-30}  # seconds between a step's SIGTERM and its SIGKILL (Slurm's default)

say() { echo "slurm-cluster: $*"; }
die() {
	echo "slurm-cluster: error: $*" >&2
	exit 1
}

running() { # running <pid file>: the process the file names is alive
	[[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
	local missing=()
	command -v munged >/dev/null || missing+=(munge)
	command -v slurmctld >/dev/null || missing+=(slurmctld)
	command -v slurmd >/dev/null || missing+=(slurmd)
	command -v sbatch >/dev/null || missing+=(slurm-client)
	((${#missing[@]} == 0)) && return
	[[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root (apt-get install ${missing[*]})"
	command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get; install Slurm and munge by hand"
	say "installing ${missing[*]} (apt)"
	apt-get update -qq >/dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

write_conf() {
	local host cpus mem_mb def_mem
	host=$(hostname -s)
	cpus=$(nproc)
	mem_mb=$(($(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 9 / 10))
	def_mem=$((mem_mb / cpus))
	if [[ -f $CONF ]] && ! grep -qxF "$MARK" "$CONF"; then
		die "$CONF exists and was not written by this script; move it aside or set SLURM_CONF_DIR"
	fi
	mkdir -p "$CONF_DIR" "$STATE" "$SPOOL" "$LOGS" "$RUN"
	local tmp
	tmp=$(mktemp)
	cat >"$tmp" <<EOF
$MARK
# One node, this machine: $cpus CPUs, $mem_mb MB. No accounting database (sacct is unavailable).
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# How long a requeued job waits before it may start again (Slurm: 120 s); short on a one-node cluster.
AuthInfo=cred_expire=15
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
SchedulerType=sched/backfill
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=$KILL_WAIT
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
	if cmp -s "$tmp" "$CONF"; then
		rm -f "$tmp"
		return 1 # unchanged
	fi
	mv "$tmp" "$CONF"
	chmod 644 "$CONF"
	say "wrote $CONF ($host: $cpus CPUs, $mem_mb MB, DefMemPerCPU=$def_mem)"
}

start_munge() {
	if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
	if [[ ! -s /etc/munge/munge.key ]]; then
		dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
	fi
	chown munge:munge /etc/munge/munge.key
	chmod 400 /etc/munge/munge.key
	mkdir -p /run/munge /var/log/munge /var/lib/munge
	chown munge:munge /run/munge /var/log/munge /var/lib/munge
	runuser -u munge -- munged --force
	for _ in $(seq 50); do
		munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return
		sleep 0.1
	done
	die "munged did not start (see /var/log/munge/munged.log)"
}

up() {
	[[ $(id -u) == 0 ]] || die "run as root: the daemons run as root on this one-node cluster"
	install_packages
	local changed=0
	write_conf && changed=1
	start_munge
	if ((changed)) && { running $RUN/slurmctld.pid || running $RUN/slurmd.pid; }; then
		say "slurm.conf changed: restarting the daemons"
		down_slurm
	fi
	running $RUN/slurmctld.pid || slurmctld
	running $RUN/slurmd.pid || slurmd
	local state=""
	for _ in $(seq 100); do
		state=$(sinfo -h -N -o %t 2>/dev/null | head -1)
		[[ $state == idle* || $state == mix* || $state == alloc* ]] && break
		sleep 0.2
	done
	[[ $state == idle* || $state == mix* || $state == alloc* ]] ||
		die "the node is '${state:-not reported}' after 20 s (see $LOGS/slurmctld.log and $LOGS/slurmd.log)"
	say "up: $(sinfo -h -N -o '%N %t, %c CPUs, %m MB, partition %P')"
}

stop_pid() { # stop_pid <pid file>: SIGTERM the process it names and wait for it
	local file=$1 pid
	running "$file" || return 0
	pid=$(cat "$file")
	kill "$pid"
	for _ in $(seq 100); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	die "process $pid ($file) did not stop"
}

down_slurm() {
	stop_pid $RUN/slurmd.pid
	stop_pid $RUN/slurmctld.pid
}

down() {
	down_slurm
	stop_pid /run/munge/munged.pid
	say "down"
}

status() {
	if running $RUN/slurmctld.pid && running $RUN/slurmd.pid; then
		say "up: $(sinfo -h -N -o '%N %t, %c CPUs, %m MB, partition %P')"
	else
		say "down"
		return 1
	fi
}

case ${1:-} in
up) up ;;
down) down ;;
status) status ;;
*) die "usage: $0 up|down|status" ;;
esac
