#!/usr/bin/env bash
# Start a one-node SLURM cluster on this host (for tests/test_slurm.py and trying profiles/slurm).
#   bash scripts/slurm_up.sh        # as root; installs slurm-wlm + munge with apt when missing
# Idempotent: when `sinfo` already shows this host's node usable, it returns at once. Otherwise it
# writes the munge key (if none), /etc/slurm/slurm.conf (this host, its CPUs, RealMemory a bit below
# the total; no cgroups, no accounting database), starts munged, slurmctld and slurmd, and waits
# until the node is idle. Exits non-zero with a message saying why when it cannot.
# Without accounting, Snakemake's SLURM executor needs `slurm-no-account` and
# `slurm-status-command: squeue` (both set in profiles/slurm).
set -euo pipefail

die() {
    echo "slurm_up: $*" >&2
    exit 1
}
log() { echo "slurm_up: $*"; }

node="$(hostname -s)"
conf=/etc/slurm/slurm.conf
wait_s="${SLURM_UP_WAIT:-90}"

node_state() {  # this node's state as sinfo reports it (empty when sinfo does not answer)
    command -v sinfo >/dev/null 2>&1 || return 0
    timeout 10 sinfo --noheader --Node --nodes="$node" --format=%T 2>/dev/null | head -n1 | tr -d ' ' || true
}

usable() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

# quick no-op when the cluster is up (works without root)
if [ -f "$conf" ] && usable; then
    log "SLURM already running: node $node is $(node_state)"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "SLURM is not running and starting it needs root (run: sudo bash $0)"

# 1. packages
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v slurmd >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1 || ! command -v sinfo >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "slurm-wlm/munge are not installed and there is no apt-get to install them (Debian/Ubuntu only)"
    log "installing slurm-wlm and munge with apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || die "apt-get update failed"
    apt-get install -y -qq slurm-wlm munge >/dev/null || die "apt-get install slurm-wlm munge failed"
fi
id munge >/dev/null 2>&1 || die "user 'munge' missing (the munge package creates it; reinstall munge)"

# 2. munge: key, directories, daemon
mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "writing a new /etc/munge/munge.key"
    (umask 077 && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none)
fi
chown munge:munge /etc/munge /etc/munge/munge.key /var/log/munge /run/munge /var/lib/munge
chmod 700 /etc/munge
chmod 400 /etc/munge/munge.key
chmod 755 /run/munge
munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }
if ! munge_ok; then
    log "starting munged"
    if command -v runuser >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    else
        su -s /bin/sh munge -c /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
    fi
    for _ in $(seq 20); do munge_ok && break; sleep 0.5; done
    munge_ok || die "munge -n | unmunge fails (see /var/log/munge/munged.log)"
fi

# 3. slurm.conf for a one-node cluster of this host
cpus="$(nproc)"
total_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
reserve_mb=$((total_mb / 20 > 512 ? total_mb / 20 : 512))  # 5 % (at least 512 MB) for the OS and the daemons
real_mb=$((total_mb - reserve_mb))
[ "$real_mb" -gt 0 ] || die "cannot size RealMemory from /proc/meminfo (MemTotal ${total_mb} MB)"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
new_conf="$(
    cat <<EOF
# Written by conceptscope's scripts/slurm_up.sh: a one-node cluster of this host
# (no cgroups, no accounting database: sacct does not work here).
ClusterName=conceptscope
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# finished jobs stay visible to squeue for 5 minutes (Snakemake's status checks read them there)
MinJobAge=300
NodeName=$node CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=local Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
)"
conf_changed=0
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" >"$conf"
    chmod 644 "$conf"
    conf_changed=1
    log "wrote $conf (node $node, CPUs=$cpus, RealMemory=$real_mb MB)"
fi

# 4. daemons (slurmctld, then slurmd); a changed config restarts them
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$conf_changed" -eq 1 ] && running /run/slurmctld.pid; then
    log "configuration changed: stopping the running SLURM daemons"
    scontrol shutdown >/dev/null 2>&1 || true
    for _ in $(seq 30); do running /run/slurmctld.pid || running /run/slurmd.pid || break; sleep 0.5; done
fi
if ! running /run/slurmctld.pid; then
    log "starting slurmctld"
    slurmctld || die "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
fi
for _ in $(seq 30); do timeout 5 scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.5; done
timeout 5 scontrol ping 2>/dev/null | grep -q UP || die "slurmctld does not answer (see /var/log/slurm/slurmctld.log)"
if ! running /run/slurmd.pid; then
    log "starting slurmd"
    slurmd || die "slurmd did not start (see /var/log/slurm/slurmd.log)"
fi

# 5. wait for the node; a node left down or drained by an earlier start is resumed once
resumed=0
for _ in $(seq "$wait_s"); do
    state="$(node_state)"
    case "$state" in
        idle | mixed | allocated | completing)
            log "SLURM is up: node $node is $state ($(sinfo --noheader --format='partition %P, %D node(s), %c CPUs, %m MB' | head -n1))"
            exit 0
            ;;
        down* | drain* | fail*)
            if [ "$resumed" -eq 0 ]; then
                scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi
            ;;
    esac
    sleep 1
done
reason="$(sinfo --noheader --list-reasons 2>/dev/null || true)"
die "node $node is not idle after ${wait_s}s (state '${state:-no answer}'${reason:+; reason: $reason}); see /var/log/slurm/slurmd.log and slurmctld.log"
