"""polypjax entry point.

    python -m polypjax.main --config=configs/<task>.py --workdir=DIR [--config.data.image_size=128 ...]

`config.task` selects what runs (see polypjax/tasks.py). The config is validated before any work;
then the run claims DIR (polypjax/workdir.py: one run at a time, no other task's outputs, resume only
with a compatible config) and writes the resolved config to DIR/config.json.
"""
from __future__ import annotations

import logging
import pathlib
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml-collections config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs, checkpoints and logs.")


def make_grain_flags_readable() -> None:
    """grain's worker start reads one absl flag with `.value`, which fails before absl parsed the
    command line (tests, notebooks, the pipeline's in-process stages). Marking that one flag present,
    as grain itself does for its debug flags in workers, keeps its default readable without
    declaring every flag of the process parsed; the entry point owns process-wide state."""
    from polypjax.data.pipeline import GRAIN_WORKER_FLAG
    if not flags.FLAGS.is_parsed() and GRAIN_WORKER_FLAG in flags.FLAGS:
        flags.FLAGS[GRAIN_WORKER_FLAG].present = True


def run(config, workdir: str) -> object:
    """Validates `config`, claims and records it in `workdir` and runs its task (also the API for tests)."""
    from polypjax import compile_cache, configlib, parallel, tasks
    from polypjax import workdir as workdir_lib
    compile_cache.enable()
    make_grain_flags_readable()
    # Joined before validation: checking some configs (the pipeline's stages) touches the devices,
    # and jax.distributed must come first; only the types of the fields are checked before it.
    tasks.check_types(config)
    d = config.distributed
    configlib.check_number(config, "distributed.num_processes", 1, integer=True)
    configlib.check_number(config, "distributed.process_id", 0, integer=True)
    if d.process_id >= d.num_processes:
        raise configlib.ConfigError(f"config.distributed.process_id={d.process_id} must be below "
                                    f"config.distributed.num_processes={d.num_processes}")
    parallel.initialize_distributed(d.coordinator_address or None, d.num_processes, d.process_id)
    resolved = tasks.resolve(config)
    tasks.check_data(resolved)  # every data source the task reads, before anything is written
    with workdir_lib.claim(pathlib.Path(workdir), resolved) as wd:  # lock, ownership, resume check, config.json
        return tasks.module(resolved.task).run(resolved, wd)


class _LibraryInfoFilter(logging.Filter):
    """Drops INFO chatter of libraries (orbax logs every checkpoint step) from the run's log."""

    NOISY = ("orbax", "jax/_src", "etils", "clu/metric_writers/summary_writer", "grain/")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(s in record.pathname for s in self.NOISY)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from polypjax import faults
    for handler in logging.root.handlers:
        handler.addFilter(_LibraryInfoFilter())
        handler.addFilter(faults.LibraryDiskFullFilter())
    faults.install_quiet_hooks()
    from polypjax.configlib import ConfigError
    from polypjax.data.sources import DataError
    from polypjax.train.loop import NonFiniteLossError
    if _WORKDIR.value is None:
        sys.exit("error: --workdir is required")
    if pathlib.Path(_WORKDIR.value).exists() and not pathlib.Path(_WORKDIR.value).is_dir():
        sys.exit(f"error: --workdir={_WORKDIR.value} exists and is not a directory")
    try:
        run(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, DataError, NonFiniteLossError) as e:
        _fail(f"error: {e}")
    except Exception as e:
        line = faults.describe(e, _WORKDIR.value)
        if line is not None:
            if faults.disk_full(e):
                faults.ignore_orphaned_coroutines()
            _fail(f"error: {line}")
        if not _multi_process():
            raise
        import traceback
        traceback.print_exc()
        _fail(f"error: process {sys.modules['jax'].process_index()} failed ({type(e).__name__}: {str(e)[:300]})")


def _multi_process() -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized() and jax.process_count() > 1


def _fail(message: str) -> None:
    """Exits with `message`. In a multi-process job a failed process must not wait at jax's exit
    barrier for peers that wait for it in their next collective (minutes, until a timeout): it leaves
    at once, so the launcher sees the failure and stops the job."""
    logging.shutdown()
    if not _multi_process():
        _release_failed_run()
        sys.exit(message)
    print(message, file=sys.stderr, flush=True)
    sys.stdout.flush()
    import os
    os._exit(1)


def _release_failed_run() -> None:
    """The exception being handled holds the failed run's frames and, through them, its buffers:
    grain's batches in shared memory, which its resource tracker reports as leaked (after the error
    line) when they are still held at exit. An error from a data thread also holds that thread's
    frames, callers included. Clearing them frees the buffers now (a frame still running refuses)."""
    import gc
    error, seen = sys.exc_info()[1], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            while frame is not None:
                try:
                    frame.clear()
                except RuntimeError:
                    pass
                frame = frame.f_back
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    gc.collect()
    if "grain" in sys.modules:
        from polypjax.data import pipeline
        pipeline.release_shared_memory()


def _one_line(message: str) -> str:
    """ml_collections embeds the config file's traceback in its message: keep the first line and
    the exception at the end (e.g. "ValueError: unknown variant 'x'")."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if len(lines) <= 1 else f"{lines[0].rstrip(':')}: {lines[-1]}"


def _split_comma_lists(config, argv) -> None:
    """ml_collections reads `--config.generate.modes=sample,inpaint` as the one-item tuple
    ('sample,inpaint',); on the command line a comma separates the items of a list of names, as the
    README writes them."""
    for arg in argv[1:]:
        name = arg[len("--config."):].split("=", 1)[0] if arg.startswith("--config.") and "=" in arg else None
        if name is None:
            continue
        *parents, leaf = name.split(".")
        node = config
        for part in parents:
            node = node[part]
        value = node[leaf]
        if isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], str) and "," in value[0]:
            node[leaf] = tuple(item.strip() for item in value[0].split(",") if item.strip())


def parse_flags(argv):
    """absl's parser, with config overrides that name no field reported in one line."""
    try:
        rest = flags.FLAGS(argv)
        getattr(_CONFIG.value, "task", None)  # a config file that failed to load raises when first read
        _split_comma_lists(_CONFIG.value, argv)
        return rest
    except flags.Error as e:
        sys.exit(f"error: {_one_line(str(e))} (--helpshort lists the flags)")
    except OSError as e:  # ml_collections: the config file is missing or unreadable
        sys.exit(f"error: --config: {_one_line(str(e))}")
    except (AttributeError, KeyError) as e:
        bad = [a for a in argv[1:] if a.startswith("--config.")]
        sys.exit(f"error: a config override names no existing field ({str(e).strip(chr(34))}); "
                 f"overrides given: {' '.join(bad)}")


if __name__ == "__main__":
    from polypjax import hostenv
    hostenv.reexec_with_hugepage_malloc()
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
