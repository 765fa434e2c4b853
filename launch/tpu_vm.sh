#!/usr/bin/env bash
# Creates (or reuses) a Cloud TPU VM or pod slice, installs the project on every worker and runs one
# polypjax.main config on all workers at once.
#
#   launch/tpu_vm.sh [--dry-run] --config=configs/diffusion.py:paper --workdir=/mnt/bucket/runs/paper [overrides]
#
# Settings (environment): TPU_NAME (polypjax), ZONE (us-central2-b), ACCELERATOR (v4-32),
# TPU_VERSION (tpu-ubuntu2204-base), BUCKET (gs://... mounted with gcsfuse at MOUNT on every
# worker; the workdir lives there), MOUNT (/mnt/bucket), REPO (git URL of this project), REF (main),
# PROJECT (gcloud project; default: gcloud's). STEP=create|install|run|all (all) runs one stage.
# DRY_RUN=1 or --dry-run prints every command and runs nothing.
#
# jax.distributed on a TPU slice finds the process count and ids itself (the TPU metadata server);
# the coordinator is worker 0, whose address is looked up here and exported as
# JAX_COORDINATOR_ADDRESS (which is also what makes polypjax.parallel join the job).
set -euo pipefail
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
DRY_RUN="${DRY_RUN:-0}"
TPU_NAME="${TPU_NAME:-polypjax}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR="${ACCELERATOR:-v4-32}"
TPU_VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
MOUNT="${MOUNT:-/mnt/bucket}"
REPO="${REPO:-}"
REF="${REF:-main}"
STEP="${STEP:-all}"
COORD_PORT="${COORD_PORT:-8476}"
[[ $# -ge 1 || "$STEP" == create || "$STEP" == install ]] || {
  echo "usage: $0 [--dry-run] --config=... --workdir=$MOUNT/... [overrides]" >&2; exit 2; }
[[ -n "${BUCKET:-}" ]] || { echo "error: BUCKET is not set (gs://NAME holding the workdir and data)" >&2; exit 2; }
GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && WHERE+=(--project="$PROJECT")

run() {  # prints the command; runs it unless dry
  echo "+ $(printf '%q ' "$@")"
  [[ "$DRY_RUN" == 1 ]] || "$@"
}
on_all_workers() { run "${GCLOUD[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command="$1"; }

if [[ "$STEP" == all || "$STEP" == create ]]; then
  if [[ "$DRY_RUN" != 1 ]] && "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" >/dev/null 2>&1; then
    echo "reusing TPU VM $TPU_NAME"
  else
    echo "+ $(printf '%q ' "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}")  # exists? then it is reused"
    run "${GCLOUD[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" --version="$TPU_VERSION"
  fi
fi

if [[ "$STEP" == all || "$STEP" == install ]]; then
  [[ -n "$REPO" ]] || { echo "error: REPO is not set (the git URL every worker clones)" >&2; exit 2; }
  # Same code and packages on every worker; the bucket at the same path everywhere.
  on_all_workers "set -e; test -d polypjax || git clone -q $REPO polypjax; cd polypjax; git fetch -q origin; \
git checkout -q $REF; git pull -q --ff-only || true; test -d ~/venv || python3 -m venv ~/venv; . ~/venv/bin/activate; \
pip install -q -e . 'jax[tpu]'; mountpoint -q $MOUNT || { sudo mkdir -p $MOUNT; sudo chown \$USER $MOUNT; \
gcsfuse --implicit-dirs ${BUCKET#gs://} $MOUNT; }"
fi

if [[ "$STEP" == all || "$STEP" == run ]]; then
  if [[ "$DRY_RUN" == 1 ]]; then
    COORD_IP="WORKER0_IP"
    echo "+ $(printf '%q ' "${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" "--format=value(networkEndpoints[0].ipAddress)")  # -> WORKER0_IP"
  else
    COORD_IP="$("${GCLOUD[@]}" describe "$TPU_NAME" "${WHERE[@]}" "--format=value(networkEndpoints[0].ipAddress)")"
  fi
  args="$(printf '%q ' "$@")"
  on_all_workers "cd polypjax && . ~/venv/bin/activate && JAX_COORDINATOR_ADDRESS=$COORD_IP:$COORD_PORT \
python -m polypjax.main $args"
fi
