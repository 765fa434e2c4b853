"""grain input pipelines: infinite sharded training streams and ordered, padded evaluation.

Training: per-process shard of each source -> seeded shuffle (a new permutation every epoch) ->
repeat -> (weighted mix of sources) -> decode + resize -> joint augmentation -> batch. The iterator
state (`get_state`/`set_state`, or grain's orbax handler) is saved with the model so a resumed run
sees the same sequence.

Evaluation: the global index space is padded up to whole global batches; process p takes columns
[p*b, (p+1)*b) of every global batch, so each example is seen exactly once across processes, in
order, and padded slots carry `valid=False`.
"""
from __future__ import annotations

import math
from typing import Sequence

import grain
import numpy as np
from PIL import Image

from polypjax.data import augment as augment_lib
from polypjax.data import copy_paste as copy_paste_lib


def resize_pair(pair: dict, size: int | None) -> dict:
    """Square resize: image bilinear, mask nearest (keeps it binary)."""
    image, mask = pair["image"], pair["mask"]
    if size is not None and image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
        mask = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    return {"image": image, "mask": mask}


def _check_batch(global_batch_size: int, process_count: int) -> int:
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(f"global batch size {global_batch_size} must be a positive multiple of "
                         f"the number of processes ({process_count})")
    return global_batch_size // process_count


def _process(process_index, process_count):
    if process_index is None or process_count is None:
        import jax
        return jax.process_index(), jax.process_count()
    return process_index, process_count


class _ResizedCache:
    """`source` at `size`, each pair read (decoded, rendered, resized) once per process: an epoch
    of a short run reads every pair several times, on the thread that feeds the device. Other keys
    of a pair (its id) are kept. The arrays are read-only, so a transform that wrote into them
    would fail instead of changing the cache."""

    def __init__(self, source, size: int):
        self.source, self.size, self._pairs = source, size, {}

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        pair = self._pairs.get(index)
        if pair is None:
            pair = self.source[index]
            pair = {**pair, **resize_pair(pair, self.size)}
            for key in ("image", "mask"):
                pair[key].setflags(write=False)
            self._pairs[index] = pair
        return dict(pair)


_CACHE_BYTES = 256 << 20  # per process and source: 16k pairs at 64 px, 1k at 256 px


def cached(source, size: int, max_bytes: int = _CACHE_BYTES):
    """`source` whose pairs are read once at `size`, when they fit in `max_bytes`; else `source`."""
    return _ResizedCache(source, size) if size and len(source) * size * size * 4 <= max_bytes else source


class _AtSize:
    """`source`'s pairs at `size` (a no-op on a `cached` source), other keys kept."""

    def __init__(self, source, size: int | None):
        self.source, self.size = source, size

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        pair = self.source[int(index)]
        return {**pair, **resize_pair(pair, self.size)}


class _CopyPaste:
    """The copy-paste regime's step: a grain random_map, so its rng comes from the stream's seed and
    the example's position (a resumed stream pastes the same polyps)."""

    def __init__(self, donors, cfg, size: int | None):
        self.donors, self.cfg, self.size = _AtSize(donors, size), cfg, size

    def __call__(self, pair: dict, rng: np.random.Generator) -> dict:
        target = {**pair, **resize_pair(pair, self.size)}
        return copy_paste_lib.paste_random(target, self.donors, rng, self.cfg)[0]


def _shuffled_stream(source, seed: int, process_index: int, process_count: int) -> grain.MapDataset:
    ds = grain.MapDataset.source(source)
    if process_count > 1:
        if len(source) < process_count:
            raise ValueError(f"{getattr(source, 'name', source)} has {len(source)} examples, fewer "
                             f"than the {process_count} processes")
        ds = ds[process_index::process_count]
    return ds.shuffle(seed=seed).repeat()


def train_dataset(sources, *, image_size: int, global_batch_size: int, seed: int,
                  weights: Sequence[float] | None = None, augment=None,
                  process_index: int | None = None, process_count: int | None = None,
                  worker_count: int = 0, replace_with=None, replace_prob: float = 0.0,
                  paste_from=None, paste=None) -> grain.IterDataset:
    """Infinite stream of {"image": uint8 [b,S,S,3], "mask": uint8 [b,S,S]} local batches.

    `sources` is one source or a list mixed by `weights` (exact proportions, interleaved).
    With `replace_with`, each drawn example is swapped for a random example of that source with
    probability `replace_prob` (decided per draw, seeded). With `paste_from` (a source) and `paste`
    (the fields of `config.regime.copy_paste`), polyps of that source's pairs are pasted into drawn
    examples (`copy_paste.paste_random`), before augmentation. Donors are drawn from the whole of
    `paste_from`, not from this process's shard: the data a run may use is the source, and which
    process reads which example is not a property of the experiment.
    """
    process_index, process_count = _process(process_index, process_count)
    local_batch = _check_batch(global_batch_size, process_count)
    if not isinstance(sources, (list, tuple)):
        sources = [sources]
    at_size = [cached(s, image_size) for s in sources]
    streams = [_shuffled_stream(s, seed + 1009 * k, process_index, process_count) for k, s in enumerate(at_size)]
    if len(streams) == 1:
        ds = streams[0]
    else:
        if weights is None or len(weights) != len(streams) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"mixing {len(streams)} sources needs as many non-negative weights, got {weights}")
        ds = grain.MapDataset.mix(streams, list(weights))
    if replace_with is not None and replace_prob > 0:
        n_replace = len(replace_with)

        def maybe_replace(pair, rng):
            return replace_with[int(rng.integers(n_replace))] if rng.random() < replace_prob else pair
        ds = ds.random_map(maybe_replace, seed=seed + 7919)
    if paste_from is not None and paste is not None and paste.probability > 0:
        # The stream's own cache when the donors are one of its sources: each pair is read once.
        donors = next((c for s, c in zip(sources, at_size) if s is paste_from), None)
        ds = ds.random_map(_CopyPaste(cached(paste_from, image_size) if donors is None else donors, paste, image_size),
                           seed=seed + 104729)
    ds = ds.map(lambda pair: resize_pair(pair, image_size))
    if augment is not None and augment.enabled:
        ds = ds.random_map(lambda pair, rng: dict(zip(("image", "mask"), augment_lib.augment_pair(
            pair["image"], pair["mask"], rng, augment))), seed=seed)
    ds = ds.batch(local_batch, drop_remainder=True)
    it = ds.to_iter_dataset()
    if worker_count > 0:
        _check_grain_flags_readable()
        import functools
        import os
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count),
                            worker_init_fn=functools.partial(_exit_with_parent, parent_pid=os.getpid()))
    return it


GRAIN_WORKER_FLAG = "grain_enable_multiprocess_worker_profiling"


def _check_grain_flags_readable() -> None:
    """grain reads one absl flag with `.value` whenever it starts workers (on a thread, mid-stream),
    which fails before absl parsed the command line. Process-wide flags are the entry point's
    business (`polypjax.main.run` makes that flag readable), so here a caller that skipped it gets
    a clear error now instead of a grain traceback at the first batch."""
    from absl import flags
    if not flags.FLAGS.is_parsed() and GRAIN_WORKER_FLAG in flags.FLAGS and not flags.FLAGS[GRAIN_WORKER_FLAG].present:
        raise RuntimeError("data.worker_count > 0: grain's workers read absl flags, which are not parsed in this "
                           "process; run through polypjax.main.run (or absl.app.run), or call "
                           "polypjax.main.make_grain_flags_readable() first")


_PARENT_POLL_S = 0.2


def _exit_with_parent(worker_index: int, worker_count: int, *, parent_pid: int) -> None:
    """Makes a grain worker exit as soon as the training process is gone, even killed by SIGKILL.

    A watchdog thread polls getppid(): a process whose parent dies is re-parented (to init or a
    subreaper), so its parent pid changes and cannot change back. `parent_pid` is taken in the
    trainer before the worker starts, so a trainer that died even before this runs is noticed.
    Not PR_SET_PDEATHSIG: Linux sends that signal when the *thread* that forked the worker exits,
    and grain starts its workers from short-lived threads, so every worker was killed moments
    after start and training waited forever on their queues (issue 12).
    """
    import os
    import threading
    import time
    del worker_index, worker_count

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)  # no cleanup to run: the trainer that wanted this worker's output is gone

    threading.Thread(target=watch, name="polypjax-exit-with-parent", daemon=True).start()


def release_shared_memory() -> None:
    """Unlinks grain's shared-memory batches that nothing references any more, before this returns.

    grain unlinks a batch from a pool of daemon threads; a process that exits right after a failure
    (polypjax.main) leaves deletions queued there, and multiprocessing's resource tracker then reports
    the memory as leaked, after the run's one-line error. grain offers no public call for this, so its
    pool is reached by name; deletions after this one are done where they happen."""
    import gc
    from grain.multiprocessing import SharedMemoryArray
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)
    disable = getattr(SharedMemoryArray, "_disable_async_del", None)
    if disable is not None:
        disable()
    gc.collect()
    if pool is not None:
        pool.close()
        pool.join()


class _PaddedEvalSource:
    """Maps this process's slots of the padded global order to source indices."""

    def __init__(self, source, global_batch_size: int, process_index: int, process_count: int):
        self.source = source
        self.local_batch = _check_batch(global_batch_size, process_count)
        self.num_batches = max(1, math.ceil(len(source) / global_batch_size))
        self.global_batch_size = global_batch_size
        self.process_index = process_index

    def __len__(self) -> int:
        return self.num_batches * self.local_batch

    def __getitem__(self, slot: int) -> dict:
        batch, column = divmod(slot, self.local_batch)
        index = batch * self.global_batch_size + self.process_index * self.local_batch + column
        valid = index < len(self.source)
        # Padded slots repeat example 0 so shapes and dtypes match; `valid` removes them from metrics.
        pair = self.source[index if valid else 0]
        return {**pair, "index": np.int64(index if valid else -1), "valid": np.bool_(valid)}


def eval_dataset(source, *, image_size: int, global_batch_size: int,
                 process_index: int | None = None, process_count: int | None = None) -> grain.MapDataset:
    """Finite, ordered batches with "index" (source index, -1 for padding), "valid" and "id" fields
    ("id": the pair's id, or its source index as text for sources without ids)."""
    process_index, process_count = _process(process_index, process_count)
    padded = _PaddedEvalSource(source, global_batch_size, process_index, process_count)
    ds = grain.MapDataset.source(padded).map(
        lambda p: {**resize_pair(p, image_size), "index": p["index"], "valid": p["valid"],
                   "id": str(p.get("id", p["index"]))})
    return ds.batch(padded.local_batch)


def num_eval_batches(source, global_batch_size: int) -> int:
    return max(1, math.ceil(len(source) / global_batch_size))
