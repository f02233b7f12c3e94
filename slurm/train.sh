#!/usr/bin/env bash
# Train under SLURM: one `ssm-train fit` rank per task, requeued with a checkpoint on preemption.
#
#   mkdir -p logs      # sbatch opens logs/%x-%j.out before this script runs; without logs/ the job
#                      # fails with no log at all
#   sbatch slurm/train.sh configs/experiment/X.yaml [more.yaml ...] [key.sub=value ...]
#   sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-node=4 slurm/train.sh configs/experiment/X.yaml
#   SWEEP_FILE=sweeps/s.txt sbatch --array=0-7 slurm/train.sh configs/experiment/X.yaml
#
# Resources come from the #SBATCH lines below or the sbatch command line and are read back from
# the SLURM environment by the CLI (Lightning's SLURMEnvironment: ranks, world size, master
# address and port); this script writes none of them again. One task per GPU: --ntasks-per-node
# must equal --gpus-per-node (checked). On CPU, one rank per task: --ntasks-per-node, or --ntasks
# spread evenly over --nodes (DDP over gloo, chosen by the CLI from trainer.accelerator=cpu).
# `srun` gets --ntasks-per-node so that every rank sees SLURM_NTASKS_PER_NODE (Lightning needs it).
#
# Arguments: a `*.yaml`/`*.yml` (or any word without `=`) is a config, passed as `-c`, in order;
# `key=value` is an override, passed on after them. Options for sbatch go before the script name.
#
# Preemption and time limits: SLURM sends SIGUSR1 to every task 90 s before the end
# (--signal=USR1@90; not B:USR1, which reaches the batch shell only and leaves the ranks waiting at
# the checkpoint barrier). The CLI (ssm_train/slurm.py: RequeueOnSignal; Lightning's auto-requeue
# is off) saves a checkpoint at a step boundary and rank 0 runs `scontrol requeue`; the requeued
# job keeps its job id, so it finds the same run directory `runs/<name>/` and resumes from it
# (`checkpoint.resume=auto`). The log is appended to.
# When SLURM ends or requeues the job itself (`scontrol requeue`, `scancel`, the time limit,
# pre-emption without a signal) every task gets SIGTERM, then SIGKILL KillWait seconds later
# (30 by default): the ranks save a checkpoint at the next step boundary and exit 0 without
# requeueing (SLURM has requeued the job already, or ends it). Nothing here requeues or traps.
#
# Environment (export before sbatch; sbatch passes the submitting environment on):
#   SSM_TRAIN_VENV   virtualenv to activate (its bin/activate)                        [none]
#   MODULES          modules to `module load`, space-separated (e.g. "cuda/12.4")      [none]
#   SSM_TRAIN_CMD    the CLI, word-split                                 [python -m ssm_train]
#   RUN_NAME         run name; default <job name>-<job id>, or -<array job id>_<task id>;
#                    for an array, _<task id> is appended to a given RUN_NAME
#   MAX_RESTARTS     requeues allowed before the job refuses to start again (exit 3)        [3]
#   SWEEP_FILE       array mode: one line of overrides (and configs) per task; task i runs line
#                    i counting from 0, so submit --array=0-<lines-1>. Words are split as by
#                    xargs (quotes work, nothing is executed); a blank line adds nothing.
#   SRUN_ARGS        extra srun options, word-split (e.g. "--cpu-bind=cores")           [none]
#
# Exit status: the CLI's (srun returns the highest rank's status; config errors are 2), 2 for bad
# arguments or environment found here, 127 when the CLI is not found, 3 past MAX_RESTARTS.
#
#SBATCH --job-name=ssm-train
#SBATCH --nodes=1
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=USR1@90
set -uo pipefail

SSM_TRAIN_VENV="${SSM_TRAIN_VENV:-}"
MODULES="${MODULES:-}"
SSM_TRAIN_CMD="${SSM_TRAIN_CMD:-python -m ssm_train}"
RUN_NAME="${RUN_NAME:-}"
MAX_RESTARTS="${MAX_RESTARTS:-3}"
SWEEP_FILE="${SWEEP_FILE:-}"
SRUN_ARGS="${SRUN_ARGS:-}"
export PYTHONUNBUFFERED=1
# A W&B service address inherited from the submitting process (any process that ran wandb.init
# exports WANDB_SERVICE): the job must start its own, not attach to one that may be on another node
# or gone, and that still holds this run's stream from before a requeue ("run ID ... is in use").
unset WANDB_SERVICE

say() { printf 'train.sh: %s\n' "$*"; }
fail() { printf 'train.sh: error: %s\n' "$1" >&2; exit "${2:-1}"; }

[[ -n "${SLURM_JOB_ID:-}" ]] || fail "not inside a SLURM job; submit with: sbatch $0 CONFIG.yaml [key=value ...]" 2
[[ "$MAX_RESTARTS" =~ ^[0-9]+$ ]] || fail "MAX_RESTARTS must be a non-negative integer, got '$MAX_RESTARTS'" 2

# ---------------------------------------------------------------- restart cap
restarts="${SLURM_RESTART_COUNT:-0}"
if ((restarts > MAX_RESTARTS)); then
    fail "job $SLURM_JOB_ID has been requeued $restarts times, more than MAX_RESTARTS=$MAX_RESTARTS; \
not starting again (raise MAX_RESTARTS, or resubmit with RUN_NAME set to this run's name to resume)" 3
fi

# ---------------------------------------------------------------- arguments
configs=()
overrides=()
add_words() {  # source words...
    local src="$1" w
    shift
    for w in "$@"; do
        case "$w" in
            -*) fail "$src: unexpected option '$w' (sbatch options go before the script name)" 2 ;;
            *=*) overrides+=("$w") ;;
            *)
                if [[ "$w" =~ \.ya?ml$ && ! -f "$w" ]]; then
                    fail "$src: config file not found: '$w' (relative to $PWD)" 2
                fi
                configs+=(-c "$w") ;;
        esac
    done
}
(($# > 0)) || fail "no config given; usage: sbatch $0 CONFIG.yaml [key=value ...]" 2
add_words "arguments" "$@"

is_array=0
[[ -n "${SLURM_ARRAY_TASK_ID:-}" ]] && is_array=1
if [[ -n "$SWEEP_FILE" ]]; then
    ((is_array)) || fail "SWEEP_FILE=$SWEEP_FILE is set but this is not an array job (submit with --array=0-N)" 2
    [[ -f "$SWEEP_FILE" ]] || fail "SWEEP_FILE not found: '$SWEEP_FILE' (relative to $PWD)" 2
    n_lines="$(awk 'END { print NR }' "$SWEEP_FILE")"
    ((SLURM_ARRAY_TASK_ID < n_lines)) \
        || fail "array task $SLURM_ARRAY_TASK_ID has no line in $SWEEP_FILE ($n_lines lines: use --array=0-$((n_lines - 1)))" 2
    line="$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$SWEEP_FILE")"
    words=()
    if [[ -n "${line//[[:space:]]/}" ]]; then
        # xargs splits like a shell without expanding anything; it prints the words before an
        # unbalanced quote and then fails, so its status decides, not its output.
        split="$(mktemp)"
        printf '%s\n' "$line" | xargs printf '%s\0' >"$split" \
            || { rm -f "$split"; fail "$SWEEP_FILE line $((SLURM_ARRAY_TASK_ID + 1)): cannot split (unbalanced quote?): $line" 2; }
        mapfile -d '' words <"$split"
        rm -f "$split"
    fi
    add_words "$SWEEP_FILE line $((SLURM_ARRAY_TASK_ID + 1))" "${words[@]}"
fi

# ---------------------------------------------------------------- run name: stable across requeues
safe() { printf '%s' "$1" | tr -c 'A-Za-z0-9._-' '_'; }
if ((is_array)); then
    job_key="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    name="${RUN_NAME:+${RUN_NAME}_${SLURM_ARRAY_TASK_ID}}"
else
    job_key="$SLURM_JOB_ID"
    name="$RUN_NAME"
fi
name="$(safe "${name:-${SLURM_JOB_NAME:-ssm-train}-$job_key}")"

# ---------------------------------------------------------------- topology: read, never set
nnodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
ntasks="${SLURM_NTASKS:-1}"
((ntasks % nnodes == 0)) \
    || fail "DDP needs the same number of ranks on every node: $ntasks tasks on $nnodes nodes (use --ntasks-per-node)" 2
tasks_per_node="${SLURM_NTASKS_PER_NODE:-$((ntasks / nnodes))}"
gpus_per_node="${SLURM_GPUS_ON_NODE:-0}"
if ((gpus_per_node > 0 && gpus_per_node != tasks_per_node)); then
    fail "one rank per GPU: --ntasks-per-node=$tasks_per_node but $gpus_per_node GPUs per node; set both to $gpus_per_node" 2
fi

# ---------------------------------------------------------------- environment
if [[ -n "$MODULES" ]]; then
    if ! type module >/dev/null 2>&1; then
        for init in /etc/profile.d/lmod.sh /etc/profile.d/modules.sh /usr/share/lmod/lmod/init/bash; do
            # shellcheck disable=SC1090
            [[ -f "$init" ]] && source "$init" && break
        done
    fi
    type module >/dev/null 2>&1 || fail "MODULES=$MODULES is set but no 'module' command is available" 2
    # shellcheck disable=SC2086
    module load $MODULES || fail "module load $MODULES failed" 2
fi
if [[ -n "$SSM_TRAIN_VENV" ]]; then
    [[ -f "$SSM_TRAIN_VENV/bin/activate" ]] || fail "SSM_TRAIN_VENV=$SSM_TRAIN_VENV has no bin/activate" 2
    # shellcheck disable=SC1091
    source "$SSM_TRAIN_VENV/bin/activate"
fi
read -r -a cli <<<"$SSM_TRAIN_CMD"
((${#cli[@]} > 0)) || fail "SSM_TRAIN_CMD is empty" 2
command -v "${cli[0]}" >/dev/null || fail "SSM_TRAIN_CMD: '${cli[0]}' not found on PATH (set SSM_TRAIN_VENV?)" 127
read -r -a srun_args <<<"$SRUN_ARGS"

# ---------------------------------------------------------------- launch
cmd=("${cli[@]}" fit "${configs[@]}" "name=$name" checkpoint.resume=auto "${overrides[@]}")
say "$(date -Is) job $SLURM_JOB_ID${SLURM_ARRAY_TASK_ID:+ (array $job_key)} restart $restarts/$MAX_RESTARTS \
on ${SLURM_JOB_NODELIST:-?}: $nnodes node(s) x $tasks_per_node task(s), $gpus_per_node GPU(s)/node"
say "run $name in $PWD"
say "srun $(printf '%q ' "${cmd[@]}")"
# --kill-on-bad-exit: a rank that dies must not leave the others waiting in a collective (they also
# notice it themselves and exit 1 naming the lost rank; ssm_train/faults.py).
srun --kill-on-bad-exit=1 --ntasks-per-node="$tasks_per_node" "${srun_args[@]}" "${cmd[@]}"
rc=$?
say "$(date -Is) srun exited with status $rc"
exit "$rc"
