#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for tests/test_slurm.py (CI runs it as root).
#
#   bash scripts/start_slurm.sh              install slurm-wlm + munge if missing (root + apt-get),
#                                            write /etc/slurm/slurm.conf, start munged, slurmctld,
#                                            slurmd, wait until the node is idle
#   bash scripts/start_slurm.sh --no-install the same, but never calls apt-get
#   bash scripts/start_slurm.sh --stop       stop the daemons this script started (by pid file)
#
# Idempotent: exits 0 at once when the cluster already answers with an idle node.
# Exit codes: 0 cluster up; 3 SLURM missing and cannot be installed here; 1 anything else.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
template="$repo_root/ci/slurm.conf.in"
# srun inside a job ignores SLURM_CONF (install-notes §5), so the config must live here.
conf=/etc/slurm/slurm.conf
munge_pid=/run/munge/munged.pid
ctld_pid=/run/slurmctld.pid
slurmd_pid=/run/slurmd.pid
host="$(hostname -s)"
wait_seconds=30

log() { echo "start_slurm: $*" >&2; }

pid_alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_daemon() {
    local pidfile=$1
    if pid_alive "$pidfile"; then
        local pid
        pid="$(cat "$pidfile")"
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile"
}

node_state() { sinfo --noheader --nodes="$host" --format=%T 2>/dev/null | head -n1; }

if [[ "${1:-}" == "--stop" ]]; then
    stop_daemon "$slurmd_pid"
    stop_daemon "$ctld_pid"
    stop_daemon "$munge_pid"
    log "stopped"
    exit 0
fi
install_allowed=1
[[ "${1:-}" == "--no-install" ]] && install_allowed=0

cpus="$(nproc)"
# A node that claims more memory than it has is drained by slurmctld; claim 90 % of MemTotal.
real_memory_mb="$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
new_conf="$(mktemp)"
trap 'rm -f "$new_conf"' EXIT
sed -e "s/@HOST@/$host/g" -e "s/@CPUS@/$cpus/g" -e "s/@REAL_MEMORY_MB@/$real_memory_mb/g" \
    "$template" >"$new_conf"

if command -v sinfo >/dev/null && [[ "$(node_state)" =~ ^(idle|mixed|allocated) ]] \
        && { cmp -s "$new_conf" "$conf" || [[ $EUID -ne 0 ]]; }; then
    log "already running: node $host is $(node_state)"
    exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    if (( ! install_allowed )); then
        log "slurm-wlm/munge are not installed; run 'sudo bash scripts/start_slurm.sh' to install them"
        exit 3
    fi
    if [[ $EUID -ne 0 ]]; then
        log "slurm-wlm/munge are not installed and installing them needs root (running as $(id -un))"
        exit 3
    fi
    if ! command -v apt-get >/dev/null; then
        log "slurm-wlm/munge are not installed and there is no apt-get to install them with"
        exit 3
    fi
    log "installing slurm-wlm and munge with apt-get (about 25 s)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
if [[ $EUID -ne 0 ]]; then
    log "SLURM is installed but not running, and starting its daemons needs root (running as $(id -un))"
    exit 3
fi

mkdir -p /etc/slurm /run/munge /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
chown munge:munge /run/munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    runuser -u munge -- /usr/sbin/mungekey --create --keyfile=/etc/munge/munge.key
fi

if ! cmp -s "$new_conf" "$conf"; then
    log "writing $conf (node $host, $cpus CPUs, $real_memory_mb MB)"
    # Daemons that run on an older config would disagree with the new one: restart them.
    stop_daemon "$slurmd_pid"
    stop_daemon "$ctld_pid"
    install -m 644 "$new_conf" "$conf"
fi

if ! pid_alive "$munge_pid"; then
    runuser -u munge -- /usr/sbin/munged --pid-file="$munge_pid"
fi
if ! munge -n | unmunge >/dev/null; then
    log "munge does not work: 'munge -n | unmunge' failed; see /var/log/munge/munged.log"
    exit 1
fi
pid_alive "$ctld_pid" || slurmctld
pid_alive "$slurmd_pid" || slurmd

for _ in $(seq $((wait_seconds * 2))); do
    state="$(node_state || true)"
    case "$state" in
        idle*|mixed*|allocated*)
            log "running: node $host is $state"
            exit 0 ;;
        down*|drain*)
            scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.5
done
log "node $host did not become idle within ${wait_seconds} s (last state: '${state:-none}');" \
    "see /var/log/slurm/slurmctld.log and /var/log/slurm/slurmd.log"
exit 1
