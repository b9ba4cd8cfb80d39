#!/usr/bin/env bash
# Start a throw-away one-node SLURM cluster on this machine (munge + slurmctld + slurmd),
# for tests and for trying `snakemake --profile slurm` without a real cluster.
#   scripts/slurm-up.sh      # idempotent: installs slurm-wlm + munge if missing, starts what is down
#   scripts/slurm-down.sh    # stops the daemons by the pids in their pid files
# Needs root and no systemd (the daemons daemonize themselves). Measured here: SLURM 22.05 +
# munge 0.5.15 from Debian 12; see docs/cluster.md. slurm.conf is written from `nproc` and the
# free memory, one partition `debug` (Default=YES), no accounting database (so `sacct` fails:
# the profiles use `slurm-status-command: squeue`). The node has no GPUs (no gres).
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin:/usr/bin

CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
CONF=$CONF_DIR/slurm.conf
RUN_DIR=/run/slurm
SPOOL=/var/spool/slurm
LOG_DIR=/var/log/slurm
HOST=$(hostname -s)

log() { echo "slurm-up: $*" >&2; }
alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [[ $(id -u) != 0 ]]; then
    log "needs root (writes $CONF, starts munged/slurmctld/slurmd)"; exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    log "installing slurm-wlm and munge (apt-get, ~30 s)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# --- munge: the package creates the key; the daemon runs as the munge user.
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
if ! alive /run/munge/munged.pid; then
    runuser -u munge -- /usr/sbin/munged
    log "munged started"
fi
for _ in $(seq 50); do munge -n </dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done

# --- slurm.conf from this machine's size. RealMemory: ~90% of the available memory (a
# value above what slurmd measures drains the node).
mkdir -p "$CONF_DIR" "$RUN_DIR" "$SPOOL/ctld" "$SPOOL/d" "$LOG_DIR"
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # GNU nproc obeys these (a test run sets OMP_NUM_THREADS=1)
MEM_MB=$(awk '/MemAvailable/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
NEW_CONF=$(cat <<CONF
# Written by scripts/slurm-up.sh: a throw-away one-node cluster ($HOST, $CPUS CPUs).
ClusterName=dowser
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue for MinJobAge s; the executor plugin polls squeue
# (no sacct here), so keep this >= 3x its status-check interval.
MinJobAge=300
KillWait=5
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/d
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
)
if alive $RUN_DIR/slurmctld.pid && alive $RUN_DIR/slurmd.pid; then
    log "already running (slurmctld $(cat $RUN_DIR/slurmctld.pid), slurmd $(cat $RUN_DIR/slurmd.pid))"
else
    # A fresh cluster: new conf, cleared state (-c: forget jobs of an earlier cluster).
    echo "$NEW_CONF" > "$CONF"
    alive $RUN_DIR/slurmctld.pid || { slurmctld -c; log "slurmctld started"; }
    alive $RUN_DIR/slurmd.pid || { slurmd; log "slurmd started"; }
fi

# Wait for the node to come up idle (~1 s here).
for _ in $(seq 100); do
    state=$(sinfo -h -N -o %t 2>/dev/null | head -n1 || true)
    case $state in
        idle*|mix*|alloc*) log "node $HOST is $state: $(sinfo -h -o '%P %D %c CPUs %m MB')"; exit 0 ;;
        drain*|down*|drng*) scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.3
done
log "node did not come up; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
sinfo -N -l >&2 || true
exit 1
