#!/usr/bin/env bash
# Stop the throw-away cluster of scripts/slurm-up.sh: slurmd, slurmctld, munged, each by the
# pid in its pid file (nothing else on the machine is touched). Idempotent.
set -uo pipefail

stop() {  # stop <name> <pidfile>
    local pid
    [[ -s $2 ]] || return 0
    pid=$(cat "$2")
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        echo "slurm-down: stopped $1 ($pid)" >&2
    fi
    rm -f "$2"
}

stop slurmd /run/slurm/slurmd.pid
stop slurmctld /run/slurm/slurmctld.pid
[[ ${1:-} == --keep-munge ]] || stop munged /run/munge/munged.pid
