#!/bin/bash
# One training rank, as launch/train.sbatch starts it under `srun --kill-on-bad-exit=1`: any rank
# exiting non-zero makes Slurm kill its peers at once instead of leaving them in a collective until
# the timeout. A preempted rank saves and exits 75, itself non-zero, which would get its slower
# peers killed mid-exit (srun then reports 137, not 75): here a 75 becomes exit 0 plus the marker
# file ELAMA_PREEMPTED_MARKER, which the sbatch script reads to requeue.
#   usage: rank.sh <python args...>
set -uo pipefail
# Slurm signals every process of the step; the trainer handles TERM/USR1 (save, exit 75), and this
# shell must outlive it to translate its exit code.
trap '' TERM USR1
python "$@"
rc=$?
if (( rc == ELAMA_REQUEUE_EXIT_CODE )); then
  touch "${ELAMA_PREEMPTED_MARKER}"
  exit 0
fi
exit "${rc}"
