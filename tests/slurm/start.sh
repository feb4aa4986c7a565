#!/usr/bin/env bash
# Start a one-node SLURM cluster on 127.0.0.1 for the tests: munged, slurmctld and slurmd with their
# state, logs and slurm.conf under $LORA_LAB_SLURM_DIR (default /tmp/lora_lab_slurm).
# Idempotent: when the cluster already answers with its node idle, it only says so.
# Needs the Debian/Ubuntu packages (apt-get install -y slurm-wlm munge) and root (slurmd starts
# each job as the user who submitted it). On success the last line on stdout is
#   export SLURM_CONF=<dir>/slurm.conf
# which every SLURM command (sbatch, squeue, sinfo, scontrol) needs, so `eval "$(tests/slurm/start.sh)"`
# starts the cluster and points the shell at it. On failure it says why on stderr and exits 1.
set -euo pipefail

STATE="${LORA_LAB_SLURM_DIR:-/tmp/lora_lab_slurm}"
export SLURM_CONF="$STATE/slurm.conf"
export PATH="$PATH:/usr/sbin:/sbin"
HOST="$(hostname -s)"

die() {
    echo "tests/slurm/start.sh: cannot start the one-node SLURM cluster: $*" >&2
    exit 1
}

node_state() { timeout 10 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 | tr -d '*~#'; }

for bin in munged munge slurmctld slurmd sinfo sbatch squeue scontrol scancel; do
    command -v "$bin" >/dev/null || die "'$bin' is not installed; install SLURM and munge with: apt-get install -y slurm-wlm munge"
done
[ "$(id -u)" = 0 ] || die "it must run as root (slurmd starts each job as the user who submitted it); run it with sudo"

if [ -f "$SLURM_CONF" ] && [ "$(node_state)" = idle ]; then
    echo "SLURM already running: node $HOST idle in partition debug (state in $STATE)" >&2
    echo "export SLURM_CONF=$SLURM_CONF"
    exit 0
fi

# Anything left from an earlier start that no longer answers is stopped first.
"$(dirname "$0")/stop.sh" >/dev/null 2>&1 || true
mkdir -p "$STATE/munge" "$STATE/ctld" "$STATE/spool"
chmod 755 "$STATE/munge"  # the socket is for every user (jobs run as their submitter); the key stays 0400

# munge: the credential service SLURM's daemons and commands authenticate with; a private key and socket.
if [ ! -s "$STATE/munge/munge.key" ]; then
    dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
    chmod 400 "$STATE/munge/munge.key"
fi
munged --force --key-file="$STATE/munge/munge.key" --socket="$STATE/munge/munge.socket" \
    --pid-file="$STATE/munge/munged.pid" --seed-file="$STATE/munge/munged.seed" \
    --log-file="$STATE/munge/munged.log" \
    || die "munged did not start: $(tail -5 "$STATE/munge/munged.log" 2>/dev/null)"
munge -n -S "$STATE/munge/munge.socket" | unmunge -S "$STATE/munge/munge.socket" >/dev/null \
    || die "munge credentials do not round-trip: $(tail -5 "$STATE/munge/munged.log" 2>/dev/null)"

# This machine's CPUs, sockets and memory as slurmd sees them, e.g. "CPUs=2 Boards=1 ... RealMemory=24105".
HW="$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //')" || die "'slurmd -C' cannot read this machine's hardware"

cat > "$SLURM_CONF" <<CONF
# One-node cluster on loopback for lora_lab's tests (written by tests/slurm/start.sh).
ClusterName=lora_lab
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$STATE/munge/munge.socket
CredType=cred/munge
# no cgroups: processes are tracked through /proc and tasks are not bound to cores
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# cores and memory are the consumable resources (jobs ask for --cpus-per-task and --mem)
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# no accounting database: sacct has nothing to read (squeue shows the jobs)
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# finished jobs stay visible in squeue for 5 minutes; a signalled job gets 30 s before SIGKILL
MinJobAge=300
KillWait=30
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
NodeName=$HOST NodeAddr=127.0.0.1 $HW State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -c -f "$SLURM_CONF" || die "slurmctld did not start: $(tail -5 "$STATE/slurmctld.log" 2>/dev/null)"
slurmd -f "$SLURM_CONF" -N "$HOST" || die "slurmd did not start: $(tail -5 "$STATE/slurmd.log" 2>/dev/null)"

state=""
for _ in $(seq 60); do
    state="$(node_state || true)"
    case "$state" in
        idle) break ;;
        down|drain*|drained) scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
[ "$state" = idle ] || die "node $HOST is '${state:-not reported}' after 60 s instead of idle.
slurmctld.log: $(tail -5 "$STATE/slurmctld.log" 2>/dev/null)
slurmd.log: $(tail -5 "$STATE/slurmd.log" 2>/dev/null)"
echo "SLURM up: node $HOST ($HW) idle in partition debug; state and logs in $STATE" >&2
echo "export SLURM_CONF=$SLURM_CONF"
