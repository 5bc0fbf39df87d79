#!/usr/bin/env bash
# slurm-up.sh -- a real Slurm on this one machine, for the scifaas tests. Run as root.
#
# Idempotent: installs the Debian packages that are missing, writes the config, starts
# the daemons that are not running (restarting them when the config changed), and waits
# until every node is idle. Stop everything with scripts/slurm-down.sh.
#
# Tunables (environment):
#   SCIFAAS_SLURM_NODES=1        emulated compute nodes n1..nN, each its own slurmd on this
#                                machine (its own port, spool, pid and log file), so that
#                                multi-node pilots run for real; default 1
#   SCIFAAS_SLURM_CPUS=4         CPUs each node announces (more than the machine has is
#                                fine: slurmd trusts the config), so that several one-node
#                                pilots fit at once; default 4
#   SCIFAAS_SLURM_ACCOUNTING=0   1: also MariaDB + slurmdbd, so that `sacct` works
#                                (about 15 s more on the first run); default 0
#   SCIFAAS_SLURM_BASE=/var/tmp/scifaas-slurm   config, state, spool, logs and pid files
#
# Client commands (sbatch, squeue, qsub, ...) find the config through the symlink
# /etc/slurm/slurm.conf, so nothing else needs to be set. The partition is `debug`.
set -euo pipefail

BASE=${SCIFAAS_SLURM_BASE:-/var/tmp/scifaas-slurm}
NODES=${SCIFAAS_SLURM_NODES:-1}
CPUS=${SCIFAAS_SLURM_CPUS:-4}
ACCOUNTING=${SCIFAAS_SLURM_ACCOUNTING:-0}
export DEBIAN_FRONTEND=noninteractive
started_at=$(date +%s)

say() { printf 'slurm-up: %s\n' "$*"; }
die() { printf 'slurm-up: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and starts daemons)"
[[ "$NODES" =~ ^[1-9][0-9]?$ ]] || die "SCIFAAS_SLURM_NODES must be 1..99, not '$NODES'"
[[ "$CPUS" =~ ^[1-9][0-9]*$ ]] || die "SCIFAAS_SLURM_CPUS must be a positive number, not '$CPUS'"

# A daemon is running when its pid file names a live process.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid_file() {
  local file=$1 pid
  alive "$file" || return 0
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# ---- 1. packages ---------------------------------------------------------------------
packages="slurm-wlm slurmctld slurmd slurm-client munge slurm-wlm-torque"
[ "$ACCOUNTING" = 1 ] && packages="$packages slurmdbd mariadb-server"
missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  say "installing$missing"
  # There is no init system here, and the tests start the daemons themselves: keep the
  # packages' install scripts from trying to start them.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# ---- 2. munge (authentication between the Slurm commands and daemons) ----------------
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /etc/munge
install -d -o munge -g munge -m 0711 /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
  runuser -u munge -- /usr/sbin/munged
fi
for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
munge -n </dev/null | unmunge >/dev/null || die "munge does not work (see /var/log/munge)"

# ---- 3. slurm.conf -------------------------------------------------------------------
host=$(hostname -s)
memory=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
[ -n "$memory" ] || memory=1000
spank_pbs=$(ls /usr/lib/*/slurm-wlm/spank_pbs.so /usr/lib/slurm-wlm/spank_pbs.so 2>/dev/null | head -1 || true)
[ -n "$spank_pbs" ] || die "spank_pbs.so not found (is slurm-wlm-torque installed?)"
mkdir -p "$BASE"/{etc,state,spool,log,run}

if [ "$ACCOUNTING" = 1 ]; then
  accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux"
else
  accounting="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi

# spank_pbs sets PBS_JOBID, PBS_O_WORKDIR, ... in jobs, which the PBS-compatible qsub,
# qstat and qdel of slurm-wlm-torque rely on. slurmd reads plugstack.conf next to
# SLURM_CONF unless told where it is, so it is named explicitly.
echo "optional $spank_pbs" > "$BASE/etc/plugstack.conf"

{
  cat <<EOF
# Written by scifaas scripts/slurm-up.sh; rewritten on every run.
ClusterName=scifaas
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
# No cgroups in a container: track job processes through /proc, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# The nodes announce the CPUs written below, not what the machine has.
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldPort=6817
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
StateSaveLocation=$BASE/state
# One slurmd per emulated node: %n is the node's name.
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmdSpoolDir=$BASE/spool/%n
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
$accounting
JobCompType=jobcomp/none
PlugStackConfig=$BASE/etc/plugstack.conf
# Finished jobs stay visible to squeue this long (seconds).
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
Waittime=0
EOF
  for k in $(seq 1 "$NODES"); do
    echo "NodeName=n$k NodeHostname=$host NodeAddr=127.0.0.1 Port=$((17000 + k)) CPUs=$CPUS RealMemory=$memory State=UNKNOWN"
  done
  echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
} > "$BASE/etc/slurm.conf.new"

if ! cmp -s "$BASE/etc/slurm.conf.new" "$BASE/etc/slurm.conf"; then
  # A new config (other nodes, say) under running daemons: start afresh, without the
  # old state, which may name nodes that no longer exist.
  for f in "$BASE"/run/slurmd-*.pid "$BASE/run/slurmctld.pid"; do
    [ -e "$f" ] && stop_pid_file "$f"
  done
  rm -rf "${BASE:?}/state" "${BASE:?}/spool" "$BASE"/run/slurmd-*.pid
  mkdir -p "$BASE/state" "$BASE/spool"
  say "configured $NODES node(s) with $CPUS CPUs each"
fi
mv -f "$BASE/etc/slurm.conf.new" "$BASE/etc/slurm.conf"
mkdir -p /etc/slurm
ln -sfn "$BASE/etc/slurm.conf" /etc/slurm/slurm.conf
export SLURM_CONF="$BASE/etc/slurm.conf"

# ---- 4. optional accounting: MariaDB + slurmdbd ---------------------------------------
if [ "$ACCOUNTING" = 1 ]; then
  # mysqld runs as mysql: its socket and pid file live in directories it owns.
  install -d -o mysql -g mysql /run/mysqld "$BASE/run/mysqld"
  if ! mysqladmin ping >/dev/null 2>&1; then
    (setsid mysqld --user=mysql --pid-file="$BASE/run/mysqld/mysqld.pid" \
      >"$BASE/log/mysqld.log" 2>&1 &)
    for _ in $(seq 150); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.2; done
    mysqladmin ping >/dev/null 2>&1 || die "MariaDB did not start (see $BASE/log/mysqld.log)"
  fi
  mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > "$BASE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$BASE/run/slurmdbd.pid
LogFile=$BASE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$BASE/etc/slurmdbd.conf"
  ln -sfn "$BASE/etc/slurmdbd.conf" /etc/slurm/slurmdbd.conf
  alive "$BASE/run/slurmdbd.pid" || slurmdbd
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && break; sleep 0.2; done
fi

# ---- 5. daemons ------------------------------------------------------------------------
alive "$BASE/run/slurmctld.pid" || slurmctld
for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.2; done
scontrol ping 2>/dev/null | grep -q UP || die "slurmctld did not come up (see $BASE/log/slurmctld.log)"
if [ "$ACCOUNTING" = 1 ]; then
  sacctmgr -i add cluster scifaas >/dev/null 2>&1 || true
  sacctmgr -i add account default Cluster=scifaas >/dev/null 2>&1 || true
  sacctmgr -i add user root Account=default >/dev/null 2>&1 || true
fi
for k in $(seq 1 "$NODES"); do
  mkdir -p "$BASE/spool/n$k"
  alive "$BASE/run/slurmd-n$k.pid" || slurmd -N "n$k"
done

# Every node idle (a node that was down when slurmctld last saw it is resumed).
ready=0
for _ in $(seq 150); do
  states=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u)
  if [ "$(grep -c ' idle$' <<<"$states")" = "$NODES" ]; then ready=1; break; fi
  while read -r node state; do
    case "$state" in
      down*|drain*) scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
    esac
  done <<<"$states"
  sleep 0.2
done
sinfo -N
[ "$ready" = 1 ] || die "not every node became idle (see $BASE/log/)"
say "ready in $(( $(date +%s) - started_at ))s: $NODES node(s), partition debug, SLURM_CONF=$SLURM_CONF"
