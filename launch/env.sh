# shellcheck shell=bash
# The environment every elama sbatch script sources: Python, threads, NCCL, and the requeue exit code.
# Each setting keeps a value the site exported before sbatch (sbatch passes the environment on).

# Python: the project venv when ELAMA_VENV names one, else whatever python is on PATH (a container).
if [[ -n "${ELAMA_VENV:-}" ]]; then
  export VIRTUAL_ENV="${ELAMA_VENV}"
  export PATH="${ELAMA_VENV}/bin:${PATH}"
fi
# Logs reach the job's output file as they are written, not when a killed rank's buffer is lost.
export PYTHONUNBUFFERED=1
# Tracebacks of every thread on SIGSEGV/SIGABRT/SIGBUS: a hung or crashed rank says where.
export PYTHONFAULTHANDLER=1

# One BLAS/OpenMP thread per rank: GPU ranks do little CPU math, tokenizer and CPU ranks scale by
# processes; threads on top would oversubscribe the cores Slurm gave the task.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# NCCL on multi-node H100. The fabric is the site's: export NCCL_SOCKET_IFNAME (e.g. ib0 or bond0),
# NCCL_IB_HCA (e.g. mlx5) or NCCL_IB_DISABLE=1 (Ethernet only) before sbatch. The default skips
# loopback and container bridges for NCCL's bootstrap and socket traffic.
export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-^lo,docker}"
export NCCL_IB_DISABLE="${NCCL_IB_DISABLE:-0}"
export NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
# A failed or timed-out collective aborts the communicator and ends the process instead of hanging
# every rank until the job's time limit; Slurm then sees the failure.
export TORCH_NCCL_ASYNC_ERROR_HANDLING="${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}"
# One hardware work queue makes kernels run in the order they are issued: megatron-core's async
# TP/sequence-parallel all-gather and reduce-scatter rely on it to start before the matmul they
# overlap with (tensor_parallel/layers.py, LinearWithGradAccumulationAndAsyncCommunication).
export CUDA_DEVICE_MAX_CONNECTIONS=1

# The trainer exits with this code after saving a checkpoint on SIGTERM/SIGUSR1 (EX_TEMPFAIL in
# sysexits.h); the sbatch script then runs `scontrol requeue "$SLURM_JOB_ID"`.
export ELAMA_REQUEUE_EXIT_CODE=75

# pyxis/enroot: every srun step runs in the container named by ELAMA_CONTAINER_IMAGE (with
# ELAMA_CONTAINER_MOUNTS, default the submit directory), or on the host when it is unset.
elama_container=()
if [[ -n "${ELAMA_CONTAINER_IMAGE:-}" ]]; then
  elama_container=("--container-image=${ELAMA_CONTAINER_IMAGE}"
                   "--container-mounts=${ELAMA_CONTAINER_MOUNTS:-${SLURM_SUBMIT_DIR}:${SLURM_SUBMIT_DIR}}"
                   "--container-workdir=${SLURM_SUBMIT_DIR}")
fi
export elama_container
