#!/usr/bin/env bash
# Launch ae-jax on a Cloud TPU VM: one host, or every host of a pod slice at once.
#
#   scripts/launch_tpu.sh setup  NAME ZONE                 # install ae-jax + jax[tpu] on every host
#   scripts/launch_tpu.sh single [overrides...]            # run here, on a single-host TPU VM
#   scripts/launch_tpu.sh pod    NAME ZONE RUN_DIR [overrides...]
#                                                          # run on all hosts of pod slice NAME
# Examples:
#   scripts/launch_tpu.sh single data=mnist trainer.batch_size=1024
#   scripts/launch_tpu.sh pod my-v4-32 us-central2-b /mnt/shared/runs/hinton \
#       +experiment=hinton2006_mnist
#
# What matters on a pod slice:
# - Every host runs the SAME command; trainer.distributed=true makes each call
#   jax.distributed.initialize(), which finds the coordinator and the process ids from the
#   TPU metadata by itself (ae-jax also turns this on automatically when TPU_WORKER_HOSTNAMES
#   lists several hosts).
# - RUN_DIR must be one directory that every host sees (a Filestore/NFS mount or a GCS Fuse
#   mount): checkpoints are written by all hosts together, metrics and figures by host 0.
#   Re-running the same command with the same RUN_DIR resumes from the newest valid checkpoint,
#   which is what you want after a preemption (the VM sends SIGTERM; ae-jax checkpoints and exits).
# - trainer.batch_size is the GLOBAL batch; it must divide by the total number of TPU cores.
set -euo pipefail

REPO_URL="${AE_JAX_REPO_URL:-https://github.com/your-org/ae-jax.git}"  # where hosts clone from
REPO_DIR="${AE_JAX_REPO_DIR:-ae-jax}"
mode="${1:-}"
shift || true

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
need() {  # need COUNT WHAT: the mode's arguments, or one line saying which are missing
  if [ "$#" -lt 2 ] || [ "$ARGC" -lt "$1" ]; then
    echo "launch_tpu.sh $mode needs $2 (got $ARGC argument(s)); see scripts/launch_tpu.sh --help" >&2
    exit 2
  fi
}
ARGC=$#

case "$mode" in
  -h|--help|help)
    usage
    ;;
  setup)
    need 2 "NAME ZONE"
    name="$1"; zone="$2"
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
      set -e
      [ -d $REPO_DIR ] || git clone $REPO_URL $REPO_DIR
      cd $REPO_DIR && python3 -m pip install -U pip && python3 -m pip install -e . 'jax[tpu]'
    "
    ;;
  single)
    exec python3 experiments/train.py "$@"
    ;;
  pod)
    need 3 "NAME ZONE RUN_DIR [overrides...]"
    name="$1"; zone="$2"; run_dir="$3"; shift 3
    overrides="$(printf ' %q' "$@")"
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
      cd $REPO_DIR && python3 experiments/train.py trainer.distributed=true \
        hydra.run.dir=$run_dir $overrides
    "
    ;;
  *)
    [ -n "$mode" ] && echo "launch_tpu.sh: unknown mode '$mode'; the modes are setup, single, pod" >&2
    usage >&2
    exit 2
    ;;
esac
