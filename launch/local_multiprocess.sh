#!/usr/bin/env bash
# N processes on this machine, each with D simulated CPU devices, joined by jax.distributed through a
# localhost coordinator: multi-host behaviour (per-process data shares, global batches, process-0
# writes, multi-process checkpoints) tried without a cluster.
#
#   launch/local_multiprocess.sh [--dry-run] N D --config=configs/X.py --workdir=DIR [--config.a.b=v ...]
#
# Every process runs `python -m polypjax.main ARGS --config.distributed.*` (ENTRY="path/to/script.py"
# runs a script instead, with the same arguments). Process i writes LOG_DIR/process_i.log (LOG_DIR
# defaults to the current folder); process 0's log is also shown here. PORT picks the coordinator
# port (default: a free one). DRY_RUN=1 or --dry-run prints the commands and runs nothing.
# When a process ends badly the others are stopped (SIGTERM, then SIGKILL) and the job exits 1;
# rerunning the same command resumes (launch/README.md, "The pipeline and failures").
set -euo pipefail
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
DRY_RUN="${DRY_RUN:-0}"
if [[ $# -lt 3 ]]; then
  echo "usage: $0 [--dry-run] NUM_PROCESSES DEVICES_PER_PROCESS ARGS..." >&2; exit 2
fi
N="$1"; D="$2"; shift 2
[[ "$N" =~ ^[1-9][0-9]*$ && "$D" =~ ^[1-9][0-9]*$ ]] || { echo "error: N and D must be positive integers" >&2; exit 2; }
PYTHON="${PYTHON:-python}"
LOG_DIR="${LOG_DIR:-.}"
if [[ -z "${PORT:-}" ]]; then
  if [[ "$DRY_RUN" == 1 ]]; then PORT=12355
  else PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
  fi
fi
if [[ -n "${ENTRY:-}" ]]; then ENTRY_ARGS=("$ENTRY"); else ENTRY_ARGS=(-m polypjax.main); fi

commands=()
for ((i = 0; i < N; i++)); do
  cmd=(env "XLA_FLAGS=--xla_force_host_platform_device_count=$D${EXTRA_XLA_FLAGS:+ $EXTRA_XLA_FLAGS}" JAX_PLATFORMS=cpu
       "$PYTHON" "${ENTRY_ARGS[@]}" "$@"
       "--config.distributed.coordinator_address=localhost:$PORT"
       "--config.distributed.num_processes=$N" "--config.distributed.process_id=$i")
  commands+=("$(printf '%q ' "${cmd[@]}")")
done

if [[ "$DRY_RUN" == 1 ]]; then
  for ((i = 0; i < N; i++)); do echo "[process $i] ${commands[$i]}> $LOG_DIR/process_$i.log"; done
  exit 0
fi

mkdir -p "$LOG_DIR"
pids=()
running=()  # indices of the processes whose exit status has not been read
STOP_GRACE_S=10
# A failed or interrupted process leaves its peers blocked in a collective: stop them all, politely
# first (SIGTERM), then for sure: a process that outlived the job would hold its devices and port.
stop() {
  local j t alive
  for j in "${running[@]}"; do kill -TERM "${pids[$j]}" 2>/dev/null || true; done
  for ((t = 0; t < STOP_GRACE_S * 10; t++)); do
    alive=0
    for j in "${running[@]}"; do kill -0 "${pids[$j]}" 2>/dev/null && alive=1; done
    ((alive)) || return 0
    sleep 0.1
  done
  for j in "${running[@]}"; do
    if kill -KILL "${pids[$j]}" 2>/dev/null; then
      echo "warning: process $j did not stop within $STOP_GRACE_S s of SIGTERM: killed" >&2
    fi
  done
}
trap stop EXIT INT TERM
for ((i = 0; i < N; i++)); do
  # exec: the pid is the process itself, not a subshell that a signal would end while it runs on.
  eval "exec ${commands[$i]}" >"$LOG_DIR/process_$i.log" 2>&1 &
  pids+=("$!"); running+=("$i")
done
tail -n +1 -f "$LOG_DIR/process_0.log" --pid "${pids[0]}" &
# Whichever process fails first stops the job (its peers would wait for it in their next collective).
# `wait -n PIDS` fails at once when bash has already reaped those processes (two that end together,
# at the job's exit barrier), so each one's status is read by `wait PID`, kept by bash for reaped ones.
status=0
while ((${#running[@]})); do
  live=()
  for i in "${running[@]}"; do live+=("${pids[$i]}"); done
  wait -n "${live[@]}" 2>/dev/null || true
  still=()
  for i in "${running[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then still+=("$i"); continue; fi
    rc=0; wait "${pids[$i]}" 2>/dev/null || rc=$?
    if ((rc)); then
      why="exit status $rc"; ((rc > 128)) && why="killed by SIG$(kill -l $((rc - 128)))"
      status=1; echo "error: process $i failed ($why); see $LOG_DIR/process_$i.log" >&2
    fi
  done
  if ((status)); then stop; break; fi
  running=("${still[@]}")
done
wait 2>/dev/null || true
exit "$status"
