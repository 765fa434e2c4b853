"""A workdir belongs to one run: ownership, one run at a time, and resume only with the same config.

`claim(workdir, config)` is entered by `main.run` after the config and the data validated:
1. the path must be a folder (or not exist yet);
2. it must hold no other task's outputs (a `config.json` of another task, or known outputs with no
   `config.json` to say what wrote them) -- checked before anything is written there;
3. an exclusive `fcntl.flock` on `<workdir>/.run.lock`, which records pid, host, command and start
   time; a second run exits at once naming the holder. The kernel drops the lock when the holder
   dies, even by SIGKILL, so a stale lock file never blocks the next run;
4. a stored `config.json` must equal the new config except the fields of `MAY_CHANGE` (the README's
   "what you can change on resume"), and `train.num_steps` follows `_check_num_steps`;
5. only then is `config.json` (re)written.
In multi-process jobs process 0 does all of this; the others wait for its verdict and write nothing.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import fnmatch
import json
import os
import pathlib
import shlex
import socket
import sys

from polypjax import configlib, faults

LOCK_NAME = ".run.lock"

# Top-level names each task writes in its workdir (fnmatch patterns; folders without "/").
_TRAINING = ("checkpoints", "metrics.jsonl", "events.out.tfevents.*")
_PREPARE = ("data", "data_report.json", "data_report.md", "samples_*.png")
OUTPUTS = {
    "train_segmentation": _TRAINING + ("eval", "results.json"),
    "train_diffusion": _TRAINING + ("samples",),
    "generate": ("images", "masks", "manifest.jsonl", "generation.json", "preview.png"),
    "evaluate_generation": ("generation_metrics.json", "generation_metrics.md"),
    "prepare_data": _PREPARE,
    "pipeline": ("data", "generators", "generated", "evaluation", "segmentation", "report"),
}

# Fields that may differ from the stored config when a run continues in its workdir, and why they
# cannot change what it computes. Every other field must match. (README: "what you can change on
# resume".)  Not here on purpose: data.worker_count (grain saves the iterator position per worker
# layout: a checkpoint of 0 workers does not restore into 2, and 2 -> 3 resumes at another
# example), distributed.num_processes (the data state is saved per process).
_INTERVALS = {
    "train.log_every": "how often scalars are written",
    "train.eval_every": "intermediate evaluations read the state and never change it",
    "train.checkpoint_every": "how often the state is saved",
    "train.keep_checkpoints": "how many saved states are kept",
}
_PLACEMENT = {
    "mesh.*": "batches are global and sharded: only floating-point reduction order changes",
    "distributed.coordinator_address": "where the job's processes meet",
    "distributed.process_id": "each process's own id",
}
_TEST_SETS = {
    "data.test": "test sets are scored at the end of every run; results list the current ones",
    "data.phantom_test_examples": "size of the phantom test splits only",
    "data.eval_batch_size": "evaluation counts are exact at any batch size",
}
_NUM_STEPS = {"train.num_steps": "continues or stops earlier; see _check_num_steps"}
# model.conv: how convolutions run on the CPU, results agree to float32 rounding. Configs written
# before the field existed lack it and resume too.
_HOW = dict.fromkeys(configlib.HOW_FIELDS, "how the run computes, not what (configlib.HOW_FIELDS)")
MAY_CHANGE = {
    "train_segmentation": {**_INTERVALS, **_PLACEMENT, **_TEST_SETS, **_NUM_STEPS, **_HOW},
    "train_diffusion": {**_INTERVALS, **_PLACEMENT, **_TEST_SETS, **_NUM_STEPS, **_HOW,
                        "eval.*": "the sample grids drawn at evaluation"},
    "generate": {**_PLACEMENT,
                 "generate.batch_size": "pair i depends only on the seed and i",
                 "generate.num_samples": "the folder is extended (the generate task checks the rest)"},
    "prepare_data": dict(_PLACEMENT),
    "evaluate_generation": {"*": "every output is recomputed by each run"},
    # Each stage records its own config and reruns (with the stages after it) when that changed.
    "pipeline": {"*": "stages compare their recorded configs themselves"},
}


class WorkdirError(configlib.ConfigError):
    """The workdir cannot be used by this run; the message says why and what to do."""


@contextlib.contextmanager
def claim(workdir: pathlib.Path, config):
    """Owns `workdir` for `config`'s run for the duration of the `with` block (see module doc)."""
    import jax
    workdir = pathlib.Path(workdir)
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = _claim_as_lead(workdir, config)
        except WorkdirError as e:
            error = e
    if jax.process_count() > 1 and not _agree(error is None) and error is None:
        error = WorkdirError(f"{workdir}: process 0 refused this workdir (its output says why)")
    if error is not None:
        raise error
    try:
        yield workdir
    finally:
        if lock is not None:
            lock.release()


def _agree(ok: bool) -> bool:
    """Process 0's verdict, on every process."""
    import numpy as np
    from jax.experimental import multihost_utils
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def _claim_as_lead(workdir: pathlib.Path, config) -> "_Lock":
    try:
        return _claim_or_raise(workdir, config)
    except OSError as e:
        if faults.disk_full(e):
            raise  # main's message for a full disk: free some and rerun
        raise WorkdirError(f"--workdir {workdir}: {e.filename or workdir}: {e.strerror or e}; give this user "
                           "access to it or use another --workdir") from None


def _claim_or_raise(workdir: pathlib.Path, config) -> "_Lock":
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file, not a folder; give a folder path")
    check_ownership(workdir, config.task)  # read-only: nothing is written to a foreign folder
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WorkdirError(f"--workdir {workdir}: cannot create it ({e.strerror})") from None
    lock = _Lock(workdir / LOCK_NAME)
    try:
        check_ownership(workdir, config.task)  # again under the lock: another run may have just started
        stored = stored_config(workdir)
        new = _normalised(config)
        if stored is not None:
            check_resume(workdir, stored, new)
        if stored != new:
            configlib.write_config(workdir, new)
    except BaseException:
        lock.release()
        raise
    return lock


# --------------------------------------------------------------------------- ownership

def stored_config(workdir: pathlib.Path) -> dict | None:
    path = workdir / "config.json"
    if not path.exists():
        return None
    try:
        stored = json.loads(path.read_text())
    except ValueError as e:
        raise WorkdirError(f"{path} is not readable JSON ({e}); this folder's run is unknown: use another "
                           "--workdir") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("task"), str):
        raise WorkdirError(f"{path} names no task; this folder's run is unknown: use another --workdir")
    return stored


def _owners(name: str) -> list[str]:
    return [t for t, patterns in OUTPUTS.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def check_ownership(workdir: pathlib.Path, task: str) -> None:
    """Raises unless `workdir` is empty of other runs' outputs (a missing folder is fine)."""
    if not workdir.is_dir():
        return
    stored = stored_config(workdir)
    if stored is not None and stored["task"] != task:
        raise WorkdirError(f"{workdir} is a {stored['task']} workdir (see its config.json); a {task} run would "
                           f"overwrite it: give this run its own --workdir")
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in workdir.iterdir()
                     if not p.name.startswith(".") and p.name != "config.json")
    known = {e: _owners(e.rstrip("/")) for e in entries}
    if stored is None:
        found = [e for e, owners in known.items() if owners]
        if found:
            raise WorkdirError(f"{workdir} holds {', '.join(found[:6])} but no config.json, so what wrote them is "
                               f"unknown; a {task} run would mix its outputs in: use another --workdir")
        return
    foreign = [e for e, owners in known.items() if owners and task not in owners]
    if foreign:
        who = sorted({o for e in foreign for o in known[e]})
        raise WorkdirError(f"{workdir} holds {', '.join(foreign[:6])} (outputs of {' / '.join(who)}), which a "
                           f"{task} run does not write: use another --workdir")


# --------------------------------------------------------------------------- resume

def _normalised(config) -> dict:
    """The config as config.json stores it (tuples become lists), so the two compare equal."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(d, sort_keys=True))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _may_change(task: str, field: str) -> bool:
    return any(fnmatch.fnmatchcase(field, p) for p in MAY_CHANGE.get(task, {}))


def _show(value) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


_ABSENT = object()


def differences(old: dict, new: dict) -> dict[str, tuple]:
    """{dotted field: (old, new)} of every field that differs."""
    a, b = _flat(old), _flat(new)
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def check_resume(workdir: pathlib.Path, old: dict, new: dict) -> None:
    """Raises unless a run of `new` may continue the run `old` left in `workdir`."""
    task = new["task"]
    diff = differences(configlib.without_neutral_fields(old), configlib.without_neutral_fields(new))
    refused = {k: v for k, v in diff.items() if not _may_change(task, k)}
    if refused:
        items = [f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in refused.items()]
        more = f"; and {len(items) - 8} more" if len(items) > 8 else ""
        raise WorkdirError(f"{workdir} holds a {task} run with another config; these fields change what it "
                           f"computes: {'; '.join(items[:8])}{more}. To start fresh use a new --workdir or "
                           f"delete {workdir} (the README lists what may change on resume)")
    if "train" in new:
        _check_num_steps(workdir, old, new)


def latest_checkpoint_step(workdir: pathlib.Path) -> int | None:
    ckpt = workdir / "checkpoints"
    if not ckpt.is_dir():
        return None
    import orbax.checkpoint as ocp
    steps = ocp.utils.checkpoint_steps(ckpt.absolute())  # finalized steps only, not tmp folders
    return max(steps) if steps else None


def _check_num_steps(workdir: pathlib.Path, old: dict, new: dict) -> None:
    """A larger `train.num_steps` continues the run, a smaller one stops it earlier, except:
    - below the latest checkpoint: that model has trained more steps than the run would claim;
    - with `optim.schedule=cosine` once a step was trained: the rate decays over num_steps, so the
      steps done followed another schedule and the result would be no N-step run at all. With
      `constant` the rate at a step does not depend on num_steps and a continued run ends where a
      fresh longer one would."""
    n_old, n_new = old.get("train", {}).get("num_steps"), new.get("train", {}).get("num_steps")
    if n_new is None:
        return
    latest = latest_checkpoint_step(workdir)
    if not latest:
        return
    if n_new < latest:
        raise WorkdirError(f"config.train.num_steps={n_new} is below the latest checkpoint (step {latest}) in "
                           f"{workdir}: that model has trained {latest} steps. Give num_steps >= {latest}, or "
                           f"start fresh with a new --workdir")
    if n_new != n_old and new.get("optim", {}).get("schedule") == "cosine":
        raise WorkdirError(f"config.train.num_steps: {n_old} -> {n_new}, but optim.schedule=cosine decays the "
                           f"learning rate over num_steps and {latest} steps were trained for {n_old}; "
                           f"continuing would match no {n_new}-step run. Start fresh with a new --workdir "
                           f"(optim.schedule=constant runs can be extended)")


# --------------------------------------------------------------------------- lock

class _Lock:
    """An exclusive flock on a file in the workdir; the kernel releases it when the process dies.

    The file is never deleted (unlinking a lock file lets two runs lock two different files)."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        # O_CLOEXEC (Python's default): worker processes started by exec do not inherit the lock.
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self.fd)
            raise WorkdirError(f"{path.parent} is in use by another run ({holder}); wait for it to finish "
                               "or stop it, or use another --workdir") from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv),
                "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        try:
            with faults.writing(path):
                os.ftruncate(self.fd, 0)
                os.pwrite(self.fd, (json.dumps(info) + "\n").encode(), 0)
                os.fsync(self.fd)
        except BaseException:
            self.release()
            raise

    def _holder(self) -> str:
        try:
            info = json.loads(os.pread(self.fd, 65536, 0).decode() or "{}")
        except ValueError:
            info = {}
        if not info:
            return "it has not recorded itself yet"
        return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
                f"{info.get('command')}")

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
