#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and for trying slurm/train.sh.
#
#   slurm/local-cluster.sh start     # install (Debian, as root) if needed, start munged, slurmctld, slurmd
#   slurm/local-cluster.sh status    # daemons, node state, queue
#   slurm/local-cluster.sh env       # prints `export SLURM_CONF=...` (for `eval "$(...)"`)
#   slurm/local-cluster.sh stop      # cancel jobs, stop the daemons this script started
#   slurm/local-cluster.sh restart
#
# Runs as root without systemd. Everything it writes lives in one state directory, except a symlink
# /etc/slurm/slurm.conf -> <state>/etc/slurm.conf made only when that file does not exist yet (so a
# plain `sbatch` finds the cluster) and removed again by `stop`.
#
# Environment (read at `start`):
#   SSM_SLURM_DIR        state directory                          [/tmp/ssm-train-slurm]
#   SSM_SLURM_CPUS       CPUs the node advertises (may exceed the real count; jobs are not bound)
#                                                                 [max(8, real CPUs)]
#   SSM_SLURM_GPUS       GPUs to declare as gres gpu:N (/dev/nvidia0..N-1) [count of /dev/nvidia[0-9]*]
#   SSM_SLURM_CTLD_PORT  slurmctld port                           [6817]
#   SSM_SLURMD_PORT      slurmd port                              [6818]
#   SSM_SLURM_EXTRA_CONF extra slurm.conf lines, appended verbatim (later lines win)
#
# Job ids persist across stop/start (state is kept in the state directory), and a fresh state
# directory starts numbering from a time-derived FirstJobId: run directories are keyed by job id
# (slurm/train.sh), so a re-created cluster must not hand out an old run's id again.
#
# Exit status: 0 ok, 1 failure (the daemon log tail is printed), 69 SLURM is absent and cannot be
# installed here (not root, no apt-get, or the install failed).
set -euo pipefail

readonly DIR="${SSM_SLURM_DIR:-/tmp/ssm-train-slurm}"
readonly CONF="$DIR/etc/slurm.conf"
readonly ETC_LINK=/etc/slurm/slurm.conf
readonly MUNGE_SOCKET=/run/munge/munge.socket.2
readonly PACKAGES=(slurmctld slurmd slurm-client munge)
export SLURM_CONF="$CONF"

log() { printf 'local-cluster: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
unavailable() { log "unavailable: $*"; exit 69; }

# ---------------------------------------------------------------- processes we own, by pid file
# A pid counts as ours only while /proc/<pid>/comm still names the daemon: pid files outlive
# their processes and pids are reused.
pid_alive() {  # pidfile comm
    local pid
    [[ -s "$1" ]] || return 1
    pid="$(<"$1")"
    [[ "$pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$2" ]]
}

stop_pid() {  # pidfile comm
    local pid
    pid_alive "$1" "$2" || { rm -f "$1"; return 0; }
    pid="$(<"$1")"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        pid_alive "$1" "$2" || break
        sleep 0.1
    done
    if pid_alive "$1" "$2"; then
        log "$2 (pid $pid) ignored SIGTERM for 5 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$1"
}

wait_for() {  # seconds command...: polls the command every 0.1 s until it succeeds
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# ---------------------------------------------------------------- packages
ensure_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    ((${#missing[@]} == 0)) && return 0
    [[ "$(id -u)" == 0 ]] || unavailable "packages missing (${missing[*]}) and not root to install them"
    command -v apt-get >/dev/null || unavailable "packages missing (${missing[*]}) and no apt-get"
    log "installing ${PACKAGES[*]} (apt-get) ..."
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } >"/tmp/ssm-train-slurm-apt.log" 2>&1; then
        tail -n 20 /tmp/ssm-train-slurm-apt.log >&2
        unavailable "apt-get install ${PACKAGES[*]} failed (log: /tmp/ssm-train-slurm-apt.log)"
    fi
}

# ---------------------------------------------------------------- munge
munge_works() { munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munge() {
    munge_works && return 0    # a system munged (or ours from before) already answers
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    # munged refuses to run as root and needs its directories owned by its own user.
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    runuser -u munge -- munged --pid-file=/run/munge/munged.pid
    cp /run/munge/munged.pid "$DIR/run/munged.pid"
    wait_for 10 munge_works || die "munged did not answer (see /var/log/munge/munged.log)"
}

# ---------------------------------------------------------------- slurm.conf
write_conf() {
    local node real_cpus mem cpus gpus ctld_port d_port first_id
    local hw; hw="$(slurmd -C | head -n 1)"
    node="$(sed -n 's/.*NodeName=\([^ ]*\).*/\1/p' <<<"$hw")"
    real_cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")"
    mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")"
    [[ -n "$node" && -n "$real_cpus" && -n "$mem" ]] || die "cannot parse 'slurmd -C': $hw"
    cpus="${SSM_SLURM_CPUS:-$((real_cpus > 8 ? real_cpus : 8))}"
    gpus="${SSM_SLURM_GPUS:-$(find /dev -maxdepth 1 -name 'nvidia[0-9]*' 2>/dev/null | wc -l)}"
    ctld_port="${SSM_SLURM_CTLD_PORT:-6817}"
    d_port="${SSM_SLURMD_PORT:-6818}"
    # Kept for the life of the state directory: see the header.
    # Seconds since the epoch, folded below MaxJobId (67 M; wraps every ~2 years): a cluster
    # re-created later starts above every id an earlier one handed out at under one job a second.
    [[ -s "$DIR/first-job-id" ]] || echo $(( $(date +%s) % 60000000 + 1000 )) >"$DIR/first-job-id"
    first_id="$(<"$DIR/first-job-id")"

    local gres_line="" node_gres=""
    if ((gpus > 0)); then
        gres_line="GresTypes=gpu"
        node_gres="Gres=gpu:$gpus"
        echo "NodeName=$node Name=gpu File=/dev/nvidia[0-$((gpus - 1))]" >"$DIR/etc/gres.conf"
    else
        rm -f "$DIR/etc/gres.conf"
    fi

    cat >"$CONF.new" <<EOF
# Written by slurm/local-cluster.sh; regenerated at every start.
ClusterName=ssmlocal
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits out the credential lifetime before it may start again (default 120 s).
AuthInfo=cred_expire=5,socket=$MUNGE_SOCKET
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/slurmd-%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups here (containers, no systemd): track processes by pid, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# The node may advertise more CPUs than it has (multi-task jobs on a small machine).
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
FirstJobId=$first_id
KillWait=5
MinJobAge=600
InactiveLimit=0
Waittime=0
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
MailProg=/bin/true
$gres_line
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus Boards=1 SocketsPerBoard=1 CoresPerSocket=$cpus ThreadsPerCore=1 RealMemory=$mem $node_gres State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
${SSM_SLURM_EXTRA_CONF:-}
EOF
    mv "$CONF.new" "$CONF"
    echo "$node" >"$DIR/node"
}

link_etc_conf() {
    if [[ -L "$ETC_LINK" && "$(readlink "$ETC_LINK")" == "$CONF" ]]; then
        return 0
    elif [[ -e "$ETC_LINK" || -L "$ETC_LINK" ]]; then
        log "note: $ETC_LINK exists and is not ours; run: export SLURM_CONF=$CONF"
    else
        mkdir -p "$(dirname "$ETC_LINK")"
        ln -s "$CONF" "$ETC_LINK"
    fi
}

unlink_etc_conf() {
    if [[ -L "$ETC_LINK" && "$(readlink "$ETC_LINK")" == "$CONF" ]]; then rm -f "$ETC_LINK"; fi
}

# ---------------------------------------------------------------- cluster state
ctld_up() { pid_alive "$DIR/run/slurmctld.pid" slurmctld && scontrol ping 2>/dev/null | grep -q 'is UP'; }
node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n 1; }
node_ready() { [[ "$(node_state)" =~ ^(idle|mixed|allocated|completing)$ ]]; }

fail_with_logs() {
    local f
    for f in "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log"; do
        [[ -f "$f" ]] && { log "--- tail $f"; tail -n 15 "$f" >&2; }
    done
    die "$1"
}

cmd_start() {
    [[ "$(id -u)" == 0 ]] || unavailable "must run as root (slurmd starts jobs as their user)"
    ensure_packages
    if ctld_up && pid_alive "$DIR/run/slurmd.pid" slurmd && node_ready; then
        log "already running ($DIR); node $(node_state)"
        link_etc_conf
        return 0
    fi
    mkdir -p "$DIR"/{etc,state,spool,run,log}
    start_munge
    # Configuration changes need a restart of both daemons; a half-started cluster is restarted.
    stop_pid "$DIR/run/slurmd.pid" slurmd
    stop_pid "$DIR/run/slurmctld.pid" slurmctld
    write_conf
    link_etc_conf
    slurmctld -f "$CONF" || fail_with_logs "slurmctld did not start"
    wait_for 15 ctld_up || fail_with_logs "slurmctld did not answer 'scontrol ping' within 15 s"
    slurmd -f "$CONF" || fail_with_logs "slurmd did not start"
    # A node drained in an earlier life of this state directory is resumed.
    local node; node="$(<"$DIR/node")"
    for _ in $(seq 150); do
        node_ready && break
        if [[ "$(node_state)" =~ drain|down ]]; then
            scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true
        fi
        sleep 0.1
    done
    node_ready || fail_with_logs "node $node is '$(node_state)', not idle, after 15 s"
    log "up: node $node $(node_state), $(sinfo -h -N -o '%c CPUs'); SLURM_CONF=$CONF"
}

cmd_stop() {
    if ctld_up; then
        local jobs; jobs="$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')"
        if [[ -n "${jobs// /}" ]]; then
            log "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            # shellcheck disable=SC2016  # expanded by the inner bash
            wait_for 15 bash -c '[[ -z "$(squeue -h -o %A)" ]]' \
                || log "jobs still listed after 15 s: $(squeue -h -o '%A %T' | tr '\n' ' ')"
        fi
    fi
    stop_pid "$DIR/run/slurmd.pid" slurmd
    stop_pid "$DIR/run/slurmctld.pid" slurmctld
    stop_pid "$DIR/run/munged.pid" munged    # only if this script started it
    unlink_etc_conf
    log "stopped ($DIR kept: state, logs)"
}

cmd_status() {
    local ok=0 d
    for d in slurmctld slurmd munged; do
        if pid_alive "$DIR/run/$d.pid" "$d"; then
            echo "$d: running (pid $(<"$DIR/run/$d.pid"))"
        elif [[ "$d" == munged ]] && munge_works; then
            echo "munged: running (not started by this script)"
        else
            echo "$d: stopped"; ok=1
        fi
    done
    echo "SLURM_CONF=$CONF"
    if ctld_up; then
        sinfo -N -o '%N %T %c %m %G'
        squeue -o '%.12i %.12j %.9T %.10M %.6D %R'
    fi
    ((ok == 0)) && node_ready
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) echo "usage: $0 start|stop|restart|status|env   (state: $DIR)" >&2; exit 2 ;;
esac
