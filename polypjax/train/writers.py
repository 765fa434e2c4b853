"""Metric writers and progress reporting, with a fallback when tensorflow is absent.

clu's `metric_writers` (and `periodic_actions`, which imports it) import tensorflow at import
time, which the GPU/TPU hosts may not carry. This module is the only place that imports them:
without tensorflow the run logs scalars and writes JSON lines, and reports progress itself.
Scalars always go to `<workdir>/metrics.jsonl` so reports can be built without TensorBoard.
"""
from __future__ import annotations

import json
import logging
import pathlib
import time

import numpy as np

from polypjax import faults


def tensorflow_available() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


class JsonlWriter:
    """Appends `{"step": s, "name": value, ...}` lines; one file per run directory."""

    def __init__(self, path: pathlib.Path):
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write_scalars(self, step: int, scalars: dict) -> None:
        record = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
        with faults.writing(self.path), open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def write_images(self, step, images):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


class PlainLoggingWriter(JsonlWriter):
    """Log lines only (the fallback for clu's LoggingWriter)."""

    def __init__(self):
        pass

    def write_scalars(self, step, scalars):
        logging.info("[%d] %s", step, ", ".join(f"{k}={float(np.asarray(v)):.6g}" for k, v in scalars.items()))


class Writers:
    """Fans every call out to several writers."""

    def __init__(self, writers):
        self.writers = list(writers)

    def __getattr__(self, name):
        def call(*args, **kwargs):
            for w in self.writers:
                getattr(w, name)(*args, **kwargs)
        return call


def make_writer(workdir: pathlib.Path, *, is_main_process: bool = True, tensorboard: bool = True):
    """TensorBoard + log (clu) when tensorflow is importable, else log + JSON lines only."""
    writers = []
    if is_main_process:
        writers.append(JsonlWriter(pathlib.Path(workdir) / "metrics.jsonl"))
    if tensorboard and tensorflow_available():
        from clu import metric_writers
        writers.append(metric_writers.create_default_writer(str(workdir), just_logging=not is_main_process,
                                                            asynchronous=False))
    else:
        writers.append(PlainLoggingWriter())
    return Writers(writers)


class Progress:
    """Steps/s and ETA as scalars (clu's ReportProgress when available) plus a tqdm bar."""

    def __init__(self, num_steps: int, writer, start_step: int, every_steps: int = 50, show_bar: bool = True):
        self.num_steps = num_steps
        self.writer = writer
        self.every_steps = every_steps
        self._clu = None
        if tensorflow_available():
            from clu import periodic_actions
            self._clu = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer,
                                                        every_steps=every_steps)
        self._last = (start_step, time.monotonic())
        from tqdm import tqdm
        self.bar = tqdm(total=num_steps, initial=start_step, unit="step", disable=None if show_bar else True,
                        dynamic_ncols=True)

    def __call__(self, step: int) -> None:
        self.bar.update(1)
        if self._clu is not None:
            self._clu(step)
            return
        if step % self.every_steps == 0:
            last_step, last_time = self._last
            now = time.monotonic()
            rate = (step - last_step) / max(now - last_time, 1e-9)
            self._last = (step, now)
            eta = (self.num_steps - step) / max(rate, 1e-9)
            self.writer.write_scalars(step, {"steps_per_sec": rate})
            logging.info("step %d/%d: %.3g steps/s, ETA %.0f s", step, self.num_steps, rate, eta)

    def close(self):
        self.bar.close()
