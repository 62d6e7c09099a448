#!/usr/bin/env bash
# scripts/slurm-local/stop-slurm.sh [DIR] [--purge]
#
# Stop the cluster that start-slurm.sh started from DIR (default $CMIM_SLURM_DIR or /tmp/cmim-slurm):
# cancel all jobs, then stop the slurmds + slurmctld, slurmdbd, mariadbd and munged -- each one only by
# the pid in DIR/run/NAME.pid (DIR/run/slurmd-<node>.pid) and only if that pid still is a NAME
# process (munged only if start-slurm.sh started it). Removes the /etc/slurm symlinks into DIR
# (restoring files it moved) and the network nodes' namespaces and bridge (cmim-nI, cmimbr0).
#   --purge        also delete DIR (configs, state, job database, logs)
#   --slurm-only   (used by start-slurm.sh to apply a new config) stop only slurmd, slurmctld and
#                  slurmdbd; keep munged, mariadbd and the /etc/slurm links
set -uo pipefail

DIR="" PURGE=0 SLURM_ONLY=0
for arg in "$@"; do
    case "$arg" in
        --purge) PURGE=1 ;;
        --slurm-only) SLURM_ONLY=1 ;;
        -*) echo "usage: $0 [DIR] [--purge]" >&2; exit 2 ;;
        *) DIR="$arg" ;;
    esac
done
DIR="$(realpath -m "${DIR:-${CMIM_SLURM_DIR:-/tmp/cmim-slurm}}")"
RUN="$DIR/run"
export SLURM_CONF="$DIR/slurm.conf"
say() { echo "[stop-slurm] $*"; }

# our_pid NAME [STEM]: the pid in $RUN/STEM.pid (default NAME) if it is a live NAME process
our_pid() {
    local pid
    pid="$(cat "$RUN/${2:-$1}.pid" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}

# terminate NAME...: SIGTERM every NAME in the list that runs from DIR (for slurmd: every
# DIR/run/slurmd*.pid), wait for all of them together (up to 20 s), SIGKILL what is left. Pid files
# are removed either way.
terminate() {
    local name pid f stem t0=$EPOCHREALTIME
    local -a names=() pids=()
    for name in "$@"; do
        for f in "$RUN/$name.pid" "$RUN/$name"-*.pid; do
            [ -e "$f" ] || continue
            stem="$(basename "$f" .pid)"
            if pid="$(our_pid "$name" "$stem")"; then
                kill -TERM "$pid" 2>/dev/null && names+=("$stem") && pids+=("$pid")
            fi
            rm -f "$f"
        done
    done
    [ ${#pids[@]} -gt 0 ] || return 0
    local i deadline=$((SECONDS + 20))
    for i in "${!pids[@]}"; do
        while [ "$(cat "/proc/${pids[$i]}/comm" 2>/dev/null)" = "${names[$i]%%-*}" ]; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                say "${names[$i]} (pid ${pids[$i]}) ignored SIGTERM for 20 s: SIGKILL"
                kill -KILL "${pids[$i]}" 2>/dev/null
                break
            fi
            sleep 0.05
        done
    done
    say "stopped ${names[*]} ($(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }') s)"
}

# Job step daemons (slurmstepd) inherit SLURM_CONF=DIR/slurm.conf from our slurmd: end the ones left.
stray_stepds() {
    local d pid
    for d in /proc/[0-9]*; do
        [ "$(cat "$d/comm" 2>/dev/null)" = slurmstepd ] || continue
        tr '\0' '\n' < "$d/environ" 2>/dev/null | grep -qx "SLURM_CONF=$SLURM_CONF" || continue
        pid="${d#/proc/}"
        echo "$pid"
    done
}

if [ ! -f "$SLURM_CONF" ]; then
    say "no cluster config in $DIR: nothing to stop"
else
    # 1. cancel all jobs while slurmctld still runs, so no job outlives the daemons
    if our_pid slurmctld >/dev/null && timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
        jobs="$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')"
        if [ -n "${jobs// /}" ]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null
            for _ in $(seq 100); do
                [ -z "$(squeue -h -t PENDING,RUNNING,SUSPENDED,COMPLETING 2>/dev/null)" ] && break
                sleep 0.1
            done
        fi
    fi
    # 2. the slurm daemons, together (2 s faster than one after the other; job records slurmctld
    #    could not hand to slurmdbd any more are kept in DIR/state and sent at the next start)
    terminate slurmd slurmctld slurmdbd
    stepds="$(stray_stepds)"
    if [ -n "$stepds" ]; then
        say "ending leftover slurmstepd: $stepds"
        # shellcheck disable=SC2086
        kill -TERM $stepds 2>/dev/null; sleep 1
        stepds="$(stray_stepds)"
        # shellcheck disable=SC2086
        [ -z "$stepds" ] || kill -KILL $stepds 2>/dev/null
    fi
    # 3. the base services and the network nodes' namespaces
    if [ "$SLURM_ONLY" = 0 ]; then
        terminate mariadbd munged
        for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^cmim-n[0-9]+$'); do
            ip netns del "$ns" 2>/dev/null
        done
        ip link del cmimbr0 2>/dev/null
        for f in slurm.conf gres.conf; do
            if [ -L "/etc/slurm/$f" ] && [ "$(readlink "/etc/slurm/$f")" = "$DIR/$f" ]; then
                rm -f "/etc/slurm/$f"
                [ -e "/etc/slurm/$f.cmim-saved" ] && mv "/etc/slurm/$f.cmim-saved" "/etc/slurm/$f"
            fi
        done
    fi
fi

if [ "$PURGE" = 1 ]; then
    if [ -n "$(our_pid slurmctld; our_pid mariadbd)" ]; then
        say "daemons still run from $DIR: not deleting it"; exit 1
    fi
    rm -rf "$DIR" && say "deleted $DIR"
fi
exit 0
