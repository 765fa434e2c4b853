#!/usr/bin/env bash
# The accelerator run: one prepared script for a GPU host that starts from a fresh copy of the
# working tree (a host lent for minutes: everything it needs travels with the tree, nothing is
# fetched there).
#
#   tools/device_run.sh --prepare [--data DIR]   here, with the package registry: fills .device/
#   tools/device_run.sh [--cases a,b] [--reduced] [--out DIR] [--data DIR]   on the host
#
# --prepare downloads the wheels a GPU host lacks (grain, ml-collections, clu and what they need
# beyond the host's own packages; never tensorflow) for CPython 3.12 on x86-64 into .device/whl,
# and writes a copy of the Kvasir-SEG folder (default ../shared/data/kvasir-seg-train) with frames
# shrunk to at most 320 px a side (JPEG, quality 95) and masks thresholded at 128 and shrunk with
# nearest-neighbour sampling (PNG) into .device/kvasir-seg-train: the original folder is too large
# to travel with the tree, and the run trains at 128 px. .device/ is ignored by git; name it in
# the device tool's `carry`.
#
# On the host: installs .device/whl into /tmp/site (only when grain, ml_collections or clu are
# missing), records nvidia-smi and the Python packages, runs tools/device_check.py (the paper-scale
# ADM step and its MFU, DDIM-50, RePaint at the paper schedule, the segmenter, FID features, then
# the kvasir_gpu case: configs/kvasir_gpu.py on the data), and leaves in $OUT (default
# runs/device_run): device_check.json (rewritten after every case), device_run.log, env.txt and
# kvasir_gpu.json and kvasir_gpu.tar.gz (the pipeline's report, results.json, per-image scores and
# stage records; no checkpoints or pairs). Each part runs under its own time limit (POLYPJAX_CHECK_S, POLYPJAX_PIPELINE_S
# seconds) so that a slow part leaves the others' results. --cases passes a subset of
# tools/device_check.py's cases (e.g. kvasir_gpu alone for a rerun). --reduced: toy sizes on
# whatever backend is there (tests/test_device_run.py runs it on the CPU).
set -u -o pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PREPARE=0
REDUCED=()
CASES=""
OUT_DIR="${OUT:-$ROOT/runs/device_run}"
DATA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) PREPARE=1 ;;
    --reduced) REDUCED=(--reduced) ;;
    --cases) CASES="$2"; shift ;;
    --out) OUT_DIR="$2"; shift ;;
    --data) DATA="$2"; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see tools/device_run.sh --help)" >&2; exit 2 ;;
  esac
  shift
done
PY="${PYTHON:-python3}"

if [ "$PREPARE" = 1 ]; then
  mkdir -p .device/whl
  # The host's image has jax, flax, optax, orbax, etils, absl, numpy, protobuf, psutil, pyyaml,
  # cloudpickle and the imaging libraries (the device tool's KINDS.md); these are what it lacks.
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .device/whl \
    grain==0.2.18 array_record==0.8.6 portpicker==1.6.0 ml_collections==1.1.0 clu==0.0.12 || exit 1
  SRC="${DATA:-$ROOT/../shared/data/kvasir-seg-train}"
  "$PY" - "$SRC" .device/kvasir-seg-train <<'EOF' || exit 1
import pathlib, sys
import numpy as np
from PIL import Image
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
if not (src / "images").is_dir():
    sys.exit(f"error: {src}: no images/ folder (give the Kvasir-SEG folder with --data)")
for sub in ("images", "masks"):
    (dst / sub).mkdir(parents=True, exist_ok=True)
n = 0
for f in sorted((src / "images").iterdir()):
    m = next((src / "masks").glob(f.stem + ".*"), None)
    if m is None:
        continue
    img = Image.open(f).convert("RGB")
    scale = min(1.0, 320 / max(img.size))
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    img.resize(size, Image.BICUBIC).save(dst / "images" / (f.stem + ".jpg"), quality=95)
    # Kvasir's JPEG masks read as >= 128 (the loader's JPEG rule), applied before shrinking.
    mask = (np.asarray(Image.open(m).convert("L")) >= 128).astype(np.uint8) * 255
    Image.fromarray(mask).resize(size, Image.NEAREST).save(dst / "masks" / (f.stem + ".png"))
    n += 1
print(f"{n} pairs from {src} in {dst}")
EOF
  du -sh .device
  exit 0
fi

mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/device_run.log"
: > "$LOG"
say() { echo "[device_run] $*" | tee -a "$LOG"; }
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import grain, ml_collections, clu" 2>/dev/null; then
  if ! ls .device/whl/*.whl >/dev/null 2>&1; then
    say "error: grain, ml_collections or clu missing and no wheels in .device/whl (run --prepare here first)"
    exit 1
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .device/whl/*.whl 2>&1 | tee -a "$LOG" || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  say "installed $(ls .device/whl | tr '\n' ' ')"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# A fresh compilation cache per run: the segmenters of one model share their programs.
export POLYPJAX_COMPILATION_CACHE="${POLYPJAX_COMPILATION_CACHE:-/tmp/polypjax-xla-cache}"
{
  date -u
  nvidia-smi 2>&1 || echo "no nvidia-smi"
  "$PY" -m pip list 2>/dev/null | grep -iE '^(jax|jaxlib|jax-cuda|flax|optax|orbax|grain|clu|ml.collections|numpy|tensorstore) '
} > "$OUT_DIR/env.txt" 2>&1

if [ -z "$DATA" ]; then
  for d in "$ROOT/.device/kvasir-seg-train" "$ROOT/../shared/data/kvasir-seg-train" "$ROOT/shared/data/kvasir-seg-train"; do
    [ -d "$d/images" ] && DATA="$d" && break
  done
fi
ALL="adm_train_paper,ddim50,repaint,seg_train,seg_infer,fid_features,kvasir_gpu"
CASES="${CASES:-$ALL}"
CHECK_CASES=$(echo "$CASES" | tr ',' '\n' | grep -v '^kvasir_gpu$' | paste -sd, -)
status=0
if [ -n "$CHECK_CASES" ]; then
  say "device_check: $CHECK_CASES"
  timeout "${POLYPJAX_CHECK_S:-240}" "$PY" tools/device_check.py "${REDUCED[@]}" --cases "$CHECK_CASES" \
    --out "$OUT_DIR/device_check.json" 2>&1 | tee -a "$LOG"
  rc=$?; [ $rc -ne 0 ] && status=$rc && say "device_check exited with $rc"
fi
if echo "$CASES" | tr ',' '\n' | grep -qx kvasir_gpu; then
  # The workdir stays out of $OUT (the device tool returns few files): its tarball goes there.
  WORK="${POLYPJAX_WORKDIR:-$(mktemp -d)/kvasir_gpu}"
  if [ ${#REDUCED[@]} -eq 0 ] && [ -z "$DATA" ]; then
    say "kvasir_gpu: no data folder found (.device/kvasir-seg-train, ../shared/data/kvasir-seg-train); skipped"
  else
    say "kvasir_gpu on $([ ${#REDUCED[@]} -gt 0 ] && echo "phantom data (reduced)" || echo "$DATA") in $WORK"
    timeout "${POLYPJAX_PIPELINE_S:-300}" "$PY" tools/device_check.py "${REDUCED[@]}" --cases kvasir_gpu \
      --data "$DATA" --workdir "$WORK" --out "$OUT_DIR/kvasir_gpu.json" 2>&1 | tee -a "$LOG"
    rc=$?; [ $rc -ne 0 ] && status=$rc && say "kvasir_gpu exited with $rc"
    # What a reader needs, without checkpoints and pair folders: the report, results and stage records.
    (cd "$(dirname "$WORK")" && find "$(basename "$WORK")" \( -name checkpoints -o -name images -o -name masks \) -prune \
      -o -type f \( -name '*.json' -o -name '*.jsonl' -o -name '*.md' -o -name '*.html' -o -name '*.png' \
      -o -name '*.csv' \) -size -2M -print | tar czf "$OUT_DIR/kvasir_gpu.tar.gz" -T - ) 2>&1 | tee -a "$LOG"
  fi
fi
say "done (status $status); files in $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"
exit $status
