"""grain pipelines: ordering, per-process sharding, eval padding, resume, mixing, augmentation."""
import numpy as np
import pytest

from polypjax.configlib import augment_config
from polypjax.data import pipeline
from polypjax.data.augment import augment_pair


class CountingSource:
    """Pair i has every image pixel = i (mod 256) and a mask that encodes i in its first row."""

    def __init__(self, n, size=8, offset=0):
        self.n, self.size, self.offset = n, size, offset
        self.name = f"count{n}+{offset}"

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        value = i + self.offset
        image = np.full((self.size, self.size, 3), value % 256, np.uint8)
        mask = np.zeros((self.size, self.size), np.uint8)
        mask[0, :] = [(value >> b) & 1 for b in range(self.size)]
        return {"image": image, "mask": mask, "id": str(value)}


def _ids(batch):
    return [int(sum(int(b) << k for k, b in enumerate(row))) for row in batch["mask"][:, 0, :]]


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_train_stream_seeded_epochs_and_resume():
    src = CountingSource(12)
    kw = dict(image_size=None, global_batch_size=4, seed=3, process_index=0, process_count=1)
    a = iter(pipeline.train_dataset(src, **kw))
    batches = _take(a, 6)  # two epochs
    ids = [i for b in batches for i in _ids(b)]
    assert sorted(ids[:12]) == list(range(12)) and sorted(ids[12:]) == list(range(12))
    assert ids[:12] != ids[12:]  # a new permutation every epoch
    assert ids[:12] != list(range(12))
    b = iter(pipeline.train_dataset(src, **kw))
    assert [_ids(x) for x in _take(b, 6)] == [_ids(x) for x in batches]
    # Resume: state after 2 batches, restored into a fresh iterator, gives batches 3..6.
    c = iter(pipeline.train_dataset(src, **kw))
    _take(c, 2)
    state = c.get_state()
    d = iter(pipeline.train_dataset(src, **kw))
    d.set_state(state)
    assert [_ids(x) for x in _take(d, 4)] == [_ids(x) for x in batches[2:]]
    other_seed = iter(pipeline.train_dataset(src, **{**kw, "seed": 4}))
    assert [_ids(x) for x in _take(other_seed, 3)] != [_ids(x) for x in batches[:3]]


def test_train_shards_by_process():
    src = CountingSource(20)
    seen = []
    for p in range(2):
        it = iter(pipeline.train_dataset(src, image_size=None, global_batch_size=4, seed=0,
                                         process_index=p, process_count=2))
        ids = [i for b in _take(it, 5) for i in _ids(b)]  # local batch 2: one epoch of 10
        assert len(ids) == 10 and len(set(ids)) == 10
        seen.append(set(ids))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(20))


@pytest.mark.parametrize("n,gb,procs", [(10, 4, 1), (10, 4, 2), (3, 8, 2), (16, 8, 4)])
def test_eval_exactly_once_ordered_padded(n, gb, procs):
    src = CountingSource(n)
    per_process = [list(pipeline.eval_dataset(src, image_size=None, global_batch_size=gb,
                                              process_index=p, process_count=procs)) for p in range(procs)]
    assert len({len(b) for b in per_process}) == 1  # every process runs the same number of steps
    assert len(per_process[0]) == pipeline.num_eval_batches(src, gb)
    order = []
    for step in range(len(per_process[0])):
        for p in range(procs):  # the global batch is the processes' local batches in order
            batch = per_process[p][step]
            assert batch["image"].shape[0] == gb // procs
            for idx, valid, ident, pair_id in zip(batch["index"], batch["valid"], _ids(batch), batch["id"]):
                if valid:
                    assert idx == ident and pair_id == str(ident)
                    order.append(int(idx))
                else:
                    assert idx == -1
    assert order == list(range(n))


def test_mixing_draws_configured_proportions():
    real, synth = CountingSource(50), CountingSource(50, offset=200)
    it = iter(pipeline.train_dataset([real, synth], weights=[0.7, 0.3], image_size=None,
                                     global_batch_size=10, seed=0, process_index=0, process_count=1))
    ids = [i for b in _take(it, 40) for i in _ids(b)]
    synthetic_fraction = np.mean([i >= 200 for i in ids])
    assert abs(synthetic_fraction - 0.3) < 0.02
    with pytest.raises(ValueError, match="weights"):
        pipeline.train_dataset([real, synth], weights=[1.0], image_size=None, global_batch_size=10,
                               seed=0, process_index=0, process_count=1)


def test_resize_and_batch_shapes():
    src = CountingSource(5, size=24)
    it = iter(pipeline.train_dataset(src, image_size=16, global_batch_size=2, seed=0,
                                     process_index=0, process_count=1))
    batch = next(it)
    assert batch["image"].shape == (2, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["mask"].shape == (2, 16, 16) and set(np.unique(batch["mask"])) <= {0, 1}
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        pipeline.train_dataset(src, image_size=16, global_batch_size=3, seed=0, process_index=0, process_count=2)


def test_augmentation_moves_image_and_mask_together():
    cfg = augment_config()
    cfg.update(enabled=True, rotate_deg=30.0, scale=0.2, shift=0.1, brightness=0.0)
    rng = np.random.default_rng(0)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 20:50] = 1
    image = np.where(mask[..., None] == 1, 200, 20).astype(np.uint8).repeat(3, -1)
    changed = 0
    for _ in range(10):
        img2, mask2 = augment_pair(image, mask, rng, cfg)
        assert img2.shape == image.shape and mask2.shape == mask.shape
        assert set(np.unique(mask2)) <= {0, 1}
        inside = img2[..., 0][mask2 == 1]
        # The bright region follows the mask (bilinear edges aside).
        assert inside.size == 0 or np.median(inside) > 150
        changed += not np.array_equal(mask2, mask)
    assert changed >= 8
    cfg.update(rotate_deg=0.0, scale=0.0, shift=0.0, hflip=0.0, vflip=0.0, rot90=False,
               brightness=0.2, contrast=0.2, hue=0.1)
    img3, mask3 = augment_pair(image, mask, rng, cfg)
    np.testing.assert_array_equal(mask3, mask)
    assert not np.array_equal(img3, image)


def test_augmented_stream_is_deterministic():
    cfg = augment_config()
    cfg.update(enabled=True, rotate_deg=20.0, brightness=0.1)
    src = CountingSource(8, size=16)
    kw = dict(image_size=16, global_batch_size=4, seed=1, augment=cfg, process_index=0, process_count=1)
    a = _take(iter(pipeline.train_dataset(src, **kw)), 3)
    b = _take(iter(pipeline.train_dataset(src, **kw)), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])


def test_worker_processes_give_the_same_stream():
    from polypjax import main
    src = CountingSource(12)
    kw = dict(image_size=None, global_batch_size=4, seed=5, process_index=0, process_count=1)
    inline = [_ids(b) for b in _take(iter(pipeline.train_dataset(src, **kw)), 4)]
    main.make_grain_flags_readable()  # what the entry point does (pytest leaves absl flags unparsed)
    it = iter(pipeline.train_dataset(src, worker_count=1, **kw))
    try:
        assert [_ids(b) for b in _take(it, 4)] == inline
    finally:
        it.close()  # its worker and shared-memory batches, not left to the garbage collector


_ORPHAN_SCRIPT = """
import multiprocessing, os, sys, time
from absl import flags
from polypjax import main
from polypjax.data import pipeline
from test_pipeline import CountingSource
if __name__ == "__main__":
    try:  # the data code leaves process-wide flags to the entry point, and says so
        pipeline.train_dataset(CountingSource(12), image_size=None, global_batch_size=4, seed=0, worker_count=2)
        sys.exit("no error without the entry point's flag set-up")
    except RuntimeError as e:
        assert "polypjax.main.run" in str(e), e
    main.make_grain_flags_readable()
    it = iter(pipeline.train_dataset(CountingSource(12), image_size=None, global_batch_size=4, seed=0,
                                     worker_count=2, process_index=0, process_count=1))
    for _ in range(8):  # workers outlive grain's short-lived threads that started them
        next(it)
    assert not flags.FLAGS.is_parsed()  # one flag made readable, the rest untouched
    if sys.argv[1:] == ["exit"]:
        print("DONE", flush=True)
        sys.exit(0)
    print("CHILDREN", *[p.pid for p in multiprocessing.active_children()], flush=True)
    time.sleep(120)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line for line in f)
    except FileNotFoundError:
        return False


def _orphan_env():
    import os
    import pathlib
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(pathlib.Path(__file__).parent),
                                                         str(pathlib.Path(__file__).parent.parent)])}


def test_two_workers_keep_delivering_batches(tmp_path):
    import subprocess
    import sys
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT)
    out = subprocess.run([sys.executable, str(script), "exit"], capture_output=True, text=True,
                         env=_orphan_env(), timeout=120)
    assert out.returncode == 0 and "DONE" in out.stdout, out.stderr[-3000:]


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="/proc is Linux-only")
def test_workers_exit_when_the_training_process_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=_orphan_env())
    line = ""
    deadline = time.time() + 120
    while not line.startswith("CHILDREN") and time.time() < deadline:
        line = proc.stdout.readline()
    children = [int(p) for p in line.split()[1:]]
    assert len(children) >= 2, f"expected two worker processes, got {children}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while any(_alive(p) for p in children) and time.time() < deadline:
        time.sleep(0.2)
    alive = [p for p in children if _alive(p)]
    for p in alive:
        os.kill(p, signal.SIGKILL)
    assert not alive, f"worker processes {alive} outlived their killed parent"
