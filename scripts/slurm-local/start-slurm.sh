#!/usr/bin/env bash
# scripts/slurm-local/start-slurm.sh [DIR]
#
# Start a real single-node SLURM cluster on this machine, for the tests of cmim's SLURM paths
# (submitit, snakemake-executor-plugin-slurm). Target: Debian 12, root, no systemd.
#
#   munged  ->  private mariadbd + slurmdbd (so sacct works)  ->  slurmctld  ->  slurmd (2 fake GPUs)
#                                                                            + 2 "network nodes"
#
# The network nodes make multi-node jobs possible on one machine: each is one more slurmd, in its
# own network and UTS namespace (its own hostname cmim-nI and address on a bridge, as a separate
# host would have), in partition `multi`. Where namespaces cannot be made, the cluster starts without
# them and env.sh says why (CMIM_SLURM_NET_WHY).
#
# Everything the cluster owns lives in DIR (default $CMIM_SLURM_DIR or /tmp/cmim-slurm): configs,
# state, database, logs, pid files, and env.sh (source it, or export SLURM_CONF=DIR/slurm.conf).
# Outside DIR it touches only: missing Debian packages (apt-get), /etc/hosts (if the short hostname
# does not resolve), /etc/munge/munge.key (if missing), /run/munge, and the symlinks
# /etc/slurm/{slurm,gres}.conf -> DIR (snakemake's jobstep plugin drops SLURM_CONF before its srun).
#
# Idempotent: daemons that already run from DIR are kept; if the generated config differs from the
# one in DIR, the slurm daemons are restarted. Stop with scripts/slurm-local/stop-slurm.sh DIR.
#
# Knobs (environment):
#   CMIM_SLURM_DIR=/tmp/cmim-slurm   default DIR
#   CMIM_SLURM_GPUS=2                fake GPUs (gres/gpu) on the node; 0: no GRES
#   CMIM_SLURM_PARTITION=cpu         the single (default) partition
#   CMIM_SLURM_ACCOUNT=testacct      account created in slurmdbd; root's default account
#   CMIM_SLURM_CRED_EXPIRE=10        AuthInfo=cred_expire (s); a requeued job waits this + 1 s
#                                    before it may start again (Slurm's default: 120 s)
#   CMIM_SLURM_PORTS="6817 6818 6819 3307"   slurmctld, slurmd, slurmdbd, mariadb (127.0.0.1 only)
#   CMIM_SLURM_WAIT=60               seconds to wait for each daemon
#   CMIM_SLURM_LINK_ETC=1            0: do not symlink /etc/slurm/*.conf (then the snakemake slurm
#                                    executor's jobstep srun cannot find the config)
#   CMIM_SLURM_NET_NODES=2           network nodes (0: none); their partition CMIM_SLURM_MULTI_PARTITION=multi
#   CMIM_SLURM_NET=10.231.0          their /24: the bridge (and slurmctld) .1, node I at .(I+1)
set -euo pipefail

# ------------------------------------------------------------------------------------------ settings
SELF_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="$(realpath -m "${1:-${CMIM_SLURM_DIR:-/tmp/cmim-slurm}}")"
GPUS="${CMIM_SLURM_GPUS:-2}"
PARTITION="${CMIM_SLURM_PARTITION:-cpu}"
ACCOUNT="${CMIM_SLURM_ACCOUNT:-testacct}"
CRED_EXPIRE="${CMIM_SLURM_CRED_EXPIRE:-10}"
read -r CTLD_PORT SLURMD_PORT DBD_PORT DB_PORT <<< "${CMIM_SLURM_PORTS:-6817 6818 6819 3307}"
WAIT="${CMIM_SLURM_WAIT:-60}"
LINK_ETC="${CMIM_SLURM_LINK_ETC:-1}"
NET_NODES="${CMIM_SLURM_NET_NODES:-2}"
MULTI_PARTITION="${CMIM_SLURM_MULTI_PARTITION:-multi}"
NET="${CMIM_SLURM_NET:-10.231.0}"
NET_WHY=""
BRIDGE=cmimbr0
CLUSTER=cmim
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd slurm-wlm-mysql-plugin mariadb-server mariadb-client)

RUN="$DIR/run" LOGS="$DIR/log"
DB_SOCK="$RUN/mariadb.sock"
export SLURM_CONF="$DIR/slurm.conf"
T_START=$EPOCHREALTIME

say() { printf '[start-slurm %5.1fs] %s\n' "$(elapsed)" "$*"; }
elapsed() { awk -v a="$T_START" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
# fail MESSAGE [LOGFILE...]: print the error, then the error lines and the tail of each log; exit 1
fail() {
    local msg=$1; shift
    echo "[start-slurm] ERROR: $msg" >&2
    local f
    for f in "$@"; do
        [ -s "$f" ] || continue
        echo "----- $f: last error lines -----" >&2
        grep -E 'error|fatal|ERROR|FATAL|\[ERROR\]' "$f" | grep -v 'pmix\|PMIx\|MPI: Cannot create' | tail -n 6 >&2 || true
        echo "----- $f: last lines -----" >&2
        tail -n 8 "$f" >&2 || true
    done
    exit 1
}

watched_gone() {
    if [ -n "${WATCH_PID:-}" ]; then ! kill -0 "$WATCH_PID" 2>/dev/null
    elif [ -n "${WATCH:-}" ]; then ! our_pid "$WATCH" >/dev/null
    else false; fi
}

# until_ok SECONDS WHAT LOG COMMAND...: poll COMMAND every 0.2 s; on timeout fail with LOG's tail.
# With WATCH=NAME set, also fail as soon as our NAME process (or WATCH_PID, if set) is gone: a daemon
# that died during start-up is reported at once.
until_ok() {
    local limit=$1 what=$2 log=$3; shift 3
    local deadline=$((SECONDS + limit))
    while ! "$@" >/dev/null 2>&1; do
        if watched_gone; then
            fail "$WATCH exited during start-up (log: $log)" "$log"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            fail "$what not ready after ${limit}s (log: $log)" "$log"
        fi
        sleep 0.2
    done
}

# our_pid NAME [STEM]: the pid in $RUN/STEM.pid (default NAME) if that process is alive and its comm
# is NAME. The slurmds write $RUN/slurmd-<node>.pid: a plain `our_pid slurmd` means any of them.
our_pid() {
    local pid f
    if [ "$1" = slurmd ] && [ $# = 1 ]; then
        for f in "$RUN"/slurmd-*.pid; do
            [ -e "$f" ] || continue
            our_pid slurmd "$(basename "$f" .pid)" && return 0
        done
        return 1
    fi
    pid="$(cat "$RUN/${2:-$1}.pid" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] && echo "$pid"
}

# our_pids NAME: every live pid of ours named NAME (all the slurmds)
our_pids() {
    local f
    for f in "$RUN/$1".pid "$RUN/$1"-*.pid; do
        [ -e "$f" ] && our_pid "$1" "$(basename "$f" .pid)"
    done
    true
}

# refuse_foreign NAME: fail if a NAME process runs that DIR did not start (one cluster per machine)
refuse_foreign() {
    local mine pid comm
    mine=" $(our_pids "$1" | tr '\n' ' ') "
    for comm in /proc/[0-9]*/comm; do
        [ "$(cat "$comm" 2>/dev/null)" = "$1" ] || continue
        pid="${comm#/proc/}"; pid="${pid%/comm}"
        [[ "$mine" == *" $pid "* ]] && continue
        fail "a $1 (pid $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)) runs that was not started" \
             "from $DIR; stop it first (scripts/slurm-local/stop-slurm.sh <its DIR>)"
    done
}

# -------------------------------------------------------------------------------------------- steps
install_packages() {
    local missing=() p
    command -v dpkg-query >/dev/null || fail "dpkg-query not found: this script needs Debian/Ubuntu"
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || fail "packages missing (${missing[*]}) and no apt-get to install them"
    say "installing ${missing[*]} (log: $LOGS/apt.log)"
    # A policy-rc.d that answers 101 keeps the maintainer scripts from starting the daemons.
    local made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\n# temporary, from cmim start-slurm.sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0 apt=(apt-get -q -o DPkg::Lock::Timeout=300)   # wait for another apt/dpkg to finish
    {
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" update &&
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    } > "$LOGS/apt.log" 2>&1 || rc=$?
    [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || fail "apt-get failed (exit $rc) installing ${missing[*]}" "$LOGS/apt.log"
    say "packages installed"
}

fix_hostname() {
    HOST="$(hostname -s)"
    if ! getent hosts "$HOST" >/dev/null; then
        echo "127.0.0.1 $HOST  # cmim start-slurm.sh" >> /etc/hosts
        say "'$HOST' did not resolve: added it to /etc/hosts as 127.0.0.1"
    fi
}

net_node() { echo "cmim-n$1"; }
net_addr() { echo "$NET.$(($1 + 1))"; }

# setup_net_nodes: bridge $BRIDGE ($NET.1) and, per node I, network namespace cmim-nI with a veth
# into the bridge ($NET.(I+1)), and the node's name in /etc/hosts. Idempotent. If the namespaces
# cannot be made, what was made is removed, NET_NODES=0 and NET_WHY says what failed.
setup_net_nodes() {
    [ "$NET_NODES" -gt 0 ] || { NET_WHY="CMIM_SLURM_NET_NODES=0"; return 0; }
    local i node log="$LOGS/net.log"
    if ! make_net_nodes > "$log" 2>&1; then
        NET_WHY="network namespaces for multi-node jobs failed: $(grep -v '^+' "$log" | tail -n 1) (log: $log)"
        say "WARNING: $NET_WHY; starting without network nodes"
        teardown_net_nodes >> "$log" 2>&1
        NET_NODES=0
        return 0
    fi
    for ((i = 1; i <= NET_NODES; i++)); do
        node="$(net_node "$i")"
        grep -Eq "^$(net_addr "$i")[[:space:]]+$node([[:space:]]|\$)" /etc/hosts \
            || echo "$(net_addr "$i") $node  # cmim start-slurm.sh network node" >> /etc/hosts
    done
}

make_net_nodes() {
    set -x
    command -v ip >/dev/null || { echo "no 'ip' command (iproute2)"; return 1; }
    command -v unshare >/dev/null && command -v nsenter >/dev/null \
        || { echo "no 'unshare' / 'nsenter' command (util-linux)"; return 1; }
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge || return 1
    ip addr show dev "$BRIDGE" | grep -q "inet $NET.1/" || ip addr add "$NET.1/24" dev "$BRIDGE" || return 1
    ip link set "$BRIDGE" up || return 1
    local i node
    for ((i = 1; i <= NET_NODES; i++)); do
        node="$(net_node "$i")"
        ip netns list | grep -qw "$node" || ip netns add "$node" || return 1
        ip link show "cmimh$i" >/dev/null 2>&1 || ip link add "cmimh$i" type veth peer name eth0 netns "$node" \
            || return 1
        ip link set "cmimh$i" master "$BRIDGE" && ip link set "cmimh$i" up || return 1
        ip netns exec "$node" ip link set lo up || return 1
        ip netns exec "$node" ip addr show dev eth0 | grep -q "inet $(net_addr "$i")/" \
            || ip netns exec "$node" ip addr add "$(net_addr "$i")/24" dev eth0 || return 1
        ip netns exec "$node" ip link set eth0 up || return 1
    done
    set +x
}

teardown_net_nodes() {
    local node
    for node in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^cmim-n[0-9]+$'); do ip netns del "$node"; done
    ip link del "$BRIDGE" 2>/dev/null
    true
}

start_munge() {
    if [ ! -s /etc/munge/munge.key ]; then
        install -d -m 0700 -o munge -g munge /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key --force
        chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
        say "created /etc/munge/munge.key"
    fi
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        # ours (pid file copied when we started it) or someone else's, which stop-slurm.sh leaves alone
        if our_pid munged >/dev/null; then say "munged is running (pid $(our_pid munged))"
        else say "munged is running (not started by this script: stop-slurm.sh will leave it)"; fi
        return 0
    fi
    install -d -m 0755 -o munge -g munge /run/munge
    install -d -m 0700 -o munge -g munge /var/lib/munge /var/log/munge
    rm -f "$RUN/munged.pid"
    runuser -u munge -- /usr/sbin/munged --force </dev/null >> "$LOGS/munged.out" 2>&1 \
        || fail "munged did not start" "$LOGS/munged.out" /var/log/munge/munged.log
    until_ok "$WAIT" munged /var/log/munge/munged.log sh -c 'munge -n | unmunge'
    cp /run/munge/munged.pid "$RUN/munged.pid"   # the mark that we started it
    say "munged started (pid $(cat "$RUN/munged.pid"))"
}

# render_configs OUT: write slurm.conf, gres.conf, slurmdbd.conf, env.sh for the current knobs to OUT
render_configs() {
    local out=$1 hw cpuline mem_mb gres_line="" i
    hw="$(slurmd -C 2>/dev/null | head -n 1)"
    [ -n "$hw" ] || fail "'slurmd -C' printed nothing"
    # keep the topology fields as slurmd reports them; memory 90 % so registration never fails
    cpuline="$(tr ' ' '\n' <<< "$hw" | grep -E '^(CPUs|Boards|SocketsPerBoard|CoresPerSocket|ThreadsPerCore)=' | tr '\n' ' ')"
    mem_mb="$(tr ' ' '\n' <<< "$hw" | sed -n 's/^RealMemory=//p')"
    mem_mb=$((mem_mb * 9 / 10))
    if [ "$GPUS" -gt 0 ]; then
        gres_line="Gres=gpu:$GPUS"
        for ((i = 0; i < GPUS; i++)); do
            # The gpu gres plugin wants a device file; a char device aliasing /dev/null (1:3) will do
            # (no device cgroup here, the "GPU" only sets CUDA_VISIBLE_DEVICES).
            [ -e "$DIR/dev/gpu$i" ] || mknod -m 0666 "$DIR/dev/gpu$i" c 1 3 2>/dev/null || touch "$DIR/dev/gpu$i"
        done
    fi

    cat > "$out/slurm.conf" <<EOF
# Written by cmim scripts/slurm-local/start-slurm.sh -- a one-node test cluster on loopback.
ClusterName=$CLUSTER
SlurmctldHost=$HOST($CTLD_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job (submitit's preemption/timeout handling) is held for cred_expire + 1 s (default 120).
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups: limits are bookkeeping only.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
# Fast scheduling: start batch jobs at once, main loop every 2 s, backfill every 1 s (defaults
# 60 s / 30 s), so requeued or dependent jobs do not wait a minute for the next pass.
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
# submitit requeues with "scontrol requeue": jobs must be requeue-able.
JobRequeue=1
ReturnToService=2
InactiveLimit=0
KillWait=5
Waittime=0
MinJobAge=300
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 ${cpuline}RealMemory=$mem_mb $gres_line State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
    if [ "$NET_NODES" -gt 0 ]; then
        {
            echo "# Network nodes: one slurmd each in its own network + UTS namespace (start-slurm.sh's header)."
            for ((i = 1; i <= NET_NODES; i++)); do
                echo "NodeName=$(net_node "$i") NodeAddr=$(net_addr "$i") ${cpuline}RealMemory=$mem_mb State=UNKNOWN"
            done
            echo "PartitionName=$MULTI_PARTITION Nodes=cmim-n[1-$NET_NODES] MaxTime=INFINITE State=UP"
        } >> "$out/slurm.conf"
    fi

    {
        echo "# Written by cmim start-slurm.sh: fake GPUs (aliases of /dev/null)"
        echo "AutoDetect=off"
        [ "$GPUS" -gt 0 ] && echo "NodeName=$HOST Name=gpu File=$DIR/dev/gpu[0-$((GPUS - 1))]"
        true
    } > "$out/gres.conf"

    cat > "$out/slurmdbd.conf" <<EOF
# Written by cmim start-slurm.sh
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
AuthType=auth/munge
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF

    {
        echo "# source me: the local SLURM cluster started by cmim scripts/slurm-local/start-slurm.sh"
        printf 'export %s=%q\n' SLURM_CONF "$DIR/slurm.conf" CMIM_SLURM_DIR "$DIR" \
            CMIM_SLURM_PARTITION "$PARTITION" CMIM_SLURM_ACCOUNT "$ACCOUNT" CMIM_SLURM_GPUS "$GPUS" \
            CMIM_SLURM_NET_NODES "$NET_NODES" CMIM_SLURM_NET_WHY "$NET_WHY" \
            CMIM_SLURM_MULTI_PARTITION "$([ "$NET_NODES" -gt 0 ] && echo "$MULTI_PARTITION")"
    } > "$out/env.sh"
}

install_configs() {
    local tmp f changed=0
    tmp="$(mktemp -d "$DIR/.render.XXXXXX")"
    render_configs "$tmp"
    for f in slurm.conf gres.conf slurmdbd.conf env.sh; do
        if ! cmp -s "$tmp/$f" "$DIR/$f"; then
            [ "$f" = env.sh ] || changed=1
            mv -f "$tmp/$f" "$DIR/$f"
        fi
    done
    rm -rf "$tmp"
    chmod 0600 "$DIR/slurmdbd.conf"   # slurmdbd refuses a readable file with a password in it
    if [ "$changed" = 1 ]; then
        say "wrote configs to $DIR"
        if our_pid slurmctld >/dev/null || our_pid slurmd >/dev/null || our_pid slurmdbd >/dev/null; then
            say "config changed while the slurm daemons run: restarting them"
            bash "$SELF_DIR/stop-slurm.sh" "$DIR" --slurm-only
        fi
    fi
}

link_etc() {
    [ "$LINK_ETC" = 1 ] || return 0
    mkdir -p /etc/slurm
    local f
    for f in slurm.conf gres.conf; do
        if [ -e "/etc/slurm/$f" ] && [ ! -L "/etc/slurm/$f" ]; then
            mv "/etc/slurm/$f" "/etc/slurm/$f.cmim-saved"     # stop-slurm.sh puts it back
            say "moved the existing /etc/slurm/$f to /etc/slurm/$f.cmim-saved"
        fi
        [ "$(readlink "/etc/slurm/$f" 2>/dev/null)" = "$DIR/$f" ] || ln -sfn "$DIR/$f" "/etc/slurm/$f"
    done
}

start_mariadb() {
    local pid
    if pid="$(our_pid mariadbd)"; then say "mariadbd is running (pid $pid)"; else
        if [ ! -d "$DIR/mysql/mysql" ]; then
            rm -rf "$DIR/mysql"
            mariadb-install-db --no-defaults --user=root --datadir="$DIR/mysql" --skip-test-db \
                --auth-root-authentication-method=socket > "$LOGS/mariadb-install.log" 2>&1 \
                || fail "mariadb-install-db failed" "$LOGS/mariadb-install.log"
        fi
        [ -s "$LOGS/mariadbd.log" ] && mv -f "$LOGS/mariadbd.log" "$LOGS/mariadbd.log.1"
        # setsid + closed stdio: the daemon must not hold the caller's pipes (pytest's subprocess.run)
        setsid /usr/sbin/mariadbd --no-defaults --user=root --datadir="$DIR/mysql" \
            --bind-address=127.0.0.1 --port="$DB_PORT" --socket="$DB_SOCK" --pid-file="$RUN/mariadbd.pid" \
            --log-error="$LOGS/mariadbd.log" --skip-name-resolve --skip-log-bin --performance-schema=OFF \
            --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
            </dev/null >/dev/null 2>&1 &
        WATCH_PID=$! WATCH=mariadbd until_ok "$WAIT" mariadbd "$LOGS/mariadbd.log" \
            mariadb-admin --no-defaults --socket="$DB_SOCK" ping
        until_ok 10 "mariadbd pid file" "$LOGS/mariadbd.log" our_pid mariadbd
        say "mariadbd started (pid $(our_pid mariadbd), 127.0.0.1:$DB_PORT)"
    fi
    mariadb --no-defaults --socket="$DB_SOCK" -e "
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" \
        || fail "could not create the slurm database user" "$LOGS/mariadbd.log"
}

# start_slurm_daemon NAME READY_CHECK...: start /usr/sbin/NAME (it daemonizes) unless ours runs
start_slurm_daemon() {
    local name=$1 pid stem=$1; shift
    [ "$name" = slurmd ] && stem="slurmd-$HOST"   # the slurmds' files are per node (%n)
    if pid="$(our_pid "$name" "$stem")"; then say "$name is running (pid $pid)"; return 0; fi
    refuse_foreign "$name"
    rm -f "$RUN/$stem.pid"
    [ -s "$LOGS/$stem.log" ] && mv -f "$LOGS/$stem.log" "$LOGS/$stem.log.1"   # keep one earlier run
    "/usr/sbin/$name" </dev/null >> "$LOGS/$stem.out" 2>&1 \
        || fail "$name exited with status $? at start (log: $LOGS/$stem.log)" "$LOGS/$stem.out" "$LOGS/$stem.log"
    until_ok 10 "$name pid file" "$LOGS/$stem.log" our_pid "$name" "$stem"
    WATCH=$name until_ok "$WAIT" "$name" "$LOGS/$stem.log" "$@"
    say "$name started (pid $(our_pid "$name" "$stem"))"
}

ctld_up() { scontrol ping | grep -q 'is UP'; }
dbd_up() { sacctmgr -n list cluster format=cluster; }

# start_net_slurmd I: the slurmd of network node I, inside its namespaces (hostname = node name)
start_net_slurmd() {
    local node pid
    node="$(net_node "$1")"
    if pid="$(our_pid slurmd "slurmd-$node")"; then say "slurmd of $node is running (pid $pid)"; return 0; fi
    rm -f "$RUN/slurmd-$node.pid"
    [ -s "$LOGS/slurmd-$node.log" ] && mv -f "$LOGS/slurmd-$node.log" "$LOGS/slurmd-$node.log.1"
    mkdir -p "$DIR/spool/$node"
    # nsenter, not `ip netns exec`: that one also remounts /sys for the namespace, which hides
    # /sys/fs/cgroup, and slurmd will not start without it
    nsenter --net="/run/netns/$node" unshare --uts sh -c "hostname $node && exec /usr/sbin/slurmd -N $node" \
        </dev/null >> "$LOGS/slurmd-$node.out" 2>&1 \
        || fail "slurmd of $node exited with status $? at start" "$LOGS/slurmd-$node.out" "$LOGS/slurmd-$node.log"
    until_ok 10 "slurmd of $node pid file" "$LOGS/slurmd-$node.log" our_pid slurmd "slurmd-$node"
    say "slurmd of $node started (pid $(our_pid slurmd "slurmd-$node"), $(net_addr "$1"))"
}

# The node state that slurmctld restored from DIR/state can predate this slurmd: wait until
# slurmctld has heard from the running slurmd (its start time), and resume a node left down/drained.
node_ready() {
    local node=${1:-$HOST} started start_s state
    started="$(scontrol -o show node "$node" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2)"
    [ -n "$started" ] && [ "$started" != None ] || return 1
    start_s="$(date -d "$started" +%s 2>/dev/null)" || return 1
    [ "$start_s" -ge $((SLURMD_SINCE - 1)) ] || return 1
    state="$(sinfo -h -n "$node" -o %T 2>/dev/null)"
    case "$state" in
        idle | mixed | allocated | completing) return 0 ;;
        *drain* | *down* | *fail* | inval*)
            scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
            return 1 ;;
        *) return 1 ;;
    esac
}

ensure_account() {
    until_ok "$WAIT" "cluster '$CLUSTER' in slurmdbd" "$LOGS/slurmdbd.log" \
        sh -c "sacctmgr -n -P list cluster format=cluster | grep -qx $CLUSTER"
    if ! sacctmgr -n -P list account "$ACCOUNT" format=account | grep -qx "$ACCOUNT"; then
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description="cmim tests" Organization=cmim \
            > "$LOGS/sacctmgr.out" 2>&1 || fail "sacctmgr add account $ACCOUNT failed" "$LOGS/sacctmgr.out"
    fi
    if ! sacctmgr -n -P list assoc users=root account="$ACCOUNT" format=user | grep -qx root; then
        sacctmgr -i add user root Account="$ACCOUNT" DefaultAccount="$ACCOUNT" \
            > "$LOGS/sacctmgr.out" 2>&1 || fail "sacctmgr add user root failed" "$LOGS/sacctmgr.out"
    fi
}

# --------------------------------------------------------------------------------------------- main
[ "$(uname -s)" = Linux ] || fail "needs Linux"
[ "$(id -u)" = 0 ] || fail "needs root (apt-get, munge, SlurmUser=root)"
[[ "$GPUS" =~ ^[0-9]+$ ]] || fail "CMIM_SLURM_GPUS must be a number, not '$GPUS'"
mkdir -p "$DIR" "$RUN" "$LOGS" "$DIR/state" "$DIR/spool/$(hostname -s)" "$DIR/dev"

install_packages
fix_hostname
setup_net_nodes
CTLD_ADDR=127.0.0.1
[ "$NET_NODES" -gt 0 ] && CTLD_ADDR="$NET.1"   # the network nodes reach slurmctld through the bridge
start_munge
install_configs
link_etc
start_mariadb
start_slurm_daemon slurmdbd dbd_up
start_slurm_daemon slurmctld ctld_up
SLURMD_SINCE=$(date +%s)
our_pid slurmd "slurmd-$HOST" >/dev/null && SLURMD_SINCE=0
start_slurm_daemon slurmd true
for ((i = 1; i <= NET_NODES; i++)); do start_net_slurmd "$i"; done
WATCH=slurmd until_ok "$WAIT" "node $HOST (registration, state idle)" "$LOGS/slurmd-$HOST.log" node_ready
for ((i = 1; i <= NET_NODES; i++)); do
    until_ok "$WAIT" "node $(net_node "$i") (registration, state idle)" "$LOGS/slurmd-$(net_node "$i").log" \
        node_ready "$(net_node "$i")"
done
ensure_account

say "ready: node $HOST is $(sinfo -h -n "$HOST" -o %T), partition '$PARTITION', account '$ACCOUNT', $GPUS fake GPUs"
if [ "$NET_NODES" -gt 0 ]; then
    say "ready: network nodes cmim-n[1-$NET_NODES] ($NET.2-$((NET_NODES + 1))) in partition '$MULTI_PARTITION'"
else
    say "no network nodes: $NET_WHY"
fi
echo "  use:  source $DIR/env.sh     (or export SLURM_CONF=$DIR/slurm.conf)"
echo "  logs: $LOGS/    stop: bash $SELF_DIR/stop-slurm.sh $DIR [--purge]"
