# Shared by slurm/train.sbatch and slurm/sweep_array.sbatch (sourced inside the batch job).
# sbatch runs a *copy* of the batch script from the spool dir, so the scripts find the repository
# through $METIS_ROOT or the submit dir, never through their own path.
# shellcheck shell=bash

metis_log() { echo "[metis-slurm $(date +%H:%M:%S)] $*" >&2; }

# cd to the repository root: $METIS_ROOT, else the directory sbatch was called from.
metis_cd_root() {
    local root=${METIS_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
    cd "$root" || { metis_log "cannot cd to $root"; exit 2; }
    if [[ ! -f metis/train.py ]]; then
        metis_log "$root is not the Metis repository: submit from the repo root or set METIS_ROOT"
        exit 2
    fi
    export METIS_ROOT=$PWD
}

# Threads and quiet libraries. One intra-op thread per allocated CPU: without this every
# process starts one thread per core of the node and concurrent jobs thrash.
metis_env() {
    local cpus=${SLURM_CPUS_PER_TASK:-1}
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$cpus}
    export MKL_NUM_THREADS=${MKL_NUM_THREADS:-$cpus}
    export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
    export WANDB_SILENT=${WANDB_SILENT:-true}
    export HYDRA_FULL_ERROR=${HYDRA_FULL_ERROR:-1}
    export PYTHONUNBUFFERED=1
    # Since Slurm 22.05 srun no longer inherits --cpus-per-task from sbatch.
    if [[ -n ${SLURM_CPUS_PER_TASK:-} ]]; then export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; fi
    # The repo's venv when there is one and no $PYTHON was given.
    if [[ -z ${PYTHON:-} ]]; then
        if [[ -x .venv/bin/python ]]; then PYTHON=$PWD/.venv/bin/python; else PYTHON=python; fi
    fi
    export PYTHON
}

# GPUS_PER_NODE (env) > --gpus-per-node (SLURM_GPUS_PER_NODE, maybe "type:N") > 0.
metis_gpus_per_node() {
    local g=${GPUS_PER_NODE:-${SLURM_GPUS_PER_NODE:-0}}
    g=${g##*:}
    [[ $g =~ ^[0-9]+$ ]] || g=0
    echo "$g"
}

metis_tasks_per_node() {
    local t=${SLURM_NTASKS_PER_NODE:-}
    t=${t%%(*}  # "8(x2)" form
    if [[ -z $t ]]; then t=$(( ${SLURM_NTASKS:-1} / ${SLURM_NNODES:-1} )); fi
    (( t < 1 )) && t=1
    echo "$t"
}

# Fills the array METIS_DEVICE_OVERRIDES: one Lightning process per SLURM task.
#   GPU (GPUS_PER_NODE > 0): the experiment's trainer (or $TRAINER), devices = tasks per node
#     (= GPUs per node, Lightning checks), num_nodes = $SLURM_NNODES.
#   CPU (GPUS_PER_NODE = 0): trainer=cpu (or $TRAINER), devices = tasks per node (DDP over gloo
#     when > 1), num_nodes = $SLURM_NNODES.
metis_device_overrides() {
    local gpus tasks nodes=${SLURM_NNODES:-1}
    gpus=$(metis_gpus_per_node)
    tasks=$(metis_tasks_per_node)
    METIS_DEVICE_OVERRIDES=()
    if (( gpus > 0 )); then
        if (( tasks != gpus )); then
            metis_log "WARNING: --ntasks-per-node=$tasks but $gpus GPUs per node: Lightning wants one task per GPU"
        fi
        if [[ -n ${TRAINER:-} ]]; then METIS_DEVICE_OVERRIDES+=("trainer=$TRAINER"); fi
    else
        METIS_DEVICE_OVERRIDES+=("trainer=${TRAINER:-cpu}")
    fi
    METIS_DEVICE_OVERRIDES+=("++trainer.num_nodes=$nodes" "++trainer.devices=$tasks")
}

# Prints `ckpt_path=last` when RUN_DIR/checkpoints holds a completed checkpoint (a requeued or
# resubmitted job): Python then resumes from the newest checkpoint with a completion marker
# (periodic, final or the pre-emption save; metis/utils/checkpoints.py), never from one cut short.
metis_resume_override() {
    local run_dir=$1
    [[ ${RESUME:-auto} == auto ]] || return 0
    if compgen -G "$run_dir/checkpoints/*.ckpt.complete" >/dev/null; then echo "ckpt_path=last"; fi
}
