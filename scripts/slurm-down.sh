#!/usr/bin/env bash
# slurm-down.sh -- stops what scripts/slurm-up.sh started, by the pids in its pid files
# (never by process name: other Slurm or MariaDB processes on this machine are left
# alone). Jobs still running are killed with their slurmd. Run as root.
#
#   SCIFAAS_SLURM_BASE=/var/tmp/scifaas-slurm   the directory slurm-up.sh used
#   SCIFAAS_SLURM_KEEP_MUNGE=0                  1: leave munged running
set -euo pipefail

BASE=${SCIFAAS_SLURM_BASE:-/var/tmp/scifaas-slurm}
KEEP_MUNGE=${SCIFAAS_SLURM_KEEP_MUNGE:-0}

stop() {
  local file=$1 name pid
  [ -s "$file" ] || return 0
  name=$(basename "$file" .pid)
  pid=$(cat "$file")
  if ! kill -0 "$pid" 2>/dev/null; then
    rm -f "$file"
    return 0
  fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || { echo "slurm-down: stopped $name ($pid)"; rm -f "$file"; return 0; }
    sleep 0.1
  done
  kill -9 "$pid" 2>/dev/null || true
  echo "slurm-down: killed $name ($pid) after 10 s"
  rm -f "$file"
}

# Compute nodes first, so that the controller does not mark them down in between.
for f in "$BASE"/run/slurmd-*.pid; do
  [ -e "$f" ] && stop "$f"
done
stop "$BASE/run/slurmctld.pid"
stop "$BASE/run/slurmdbd.pid"
stop "$BASE/run/mysqld/mysqld.pid"
if [ "$KEEP_MUNGE" != 1 ]; then
  stop /run/munge/munged.pid
fi
exit 0
