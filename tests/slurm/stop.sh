#!/usr/bin/env bash
# Stop the one-node SLURM cluster tests/slurm/start.sh started (slurmd, slurmctld, munged), by the
# process ids in their pid files; its state directory stays for the logs.
set -uo pipefail
STATE="${LORA_LAB_SLURM_DIR:-/tmp/lora_lab_slurm}"
for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid" "$STATE/munge/munged.pid"; do
    [ -s "$pidfile" ] || continue
    pid="$(cat "$pidfile")"
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
done
echo "SLURM stopped (state and logs kept in $STATE)"
