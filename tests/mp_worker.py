"""One process of tests/test_multiprocess.py's 2-process job (started by launch/local_multiprocess.sh).

    mp_worker.py --workdir=DIR --config.distributed.coordinator_address=... (num_processes, process_id)

Runs every multi-process check in one job (starting processes is the cost) and writes what it saw
to DIR/result_<process>.json for the test to compare with single-process values.
"""
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import loop_toy  # noqa: E402
from polypjax import parallel  # noqa: E402
from polypjax.data import export, pipeline  # noqa: E402
from polypjax.train import loop  # noqa: E402

EPOCH = 12  # training examples: each process's share is 6, 3 local batches of 2
EVAL_EXAMPLES = 10  # not a multiple of the global eval batch (8): the last batch is padded


class Ids:
    def __len__(self):
        return EPOCH

    def __getitem__(self, i):
        return {"image": np.full((4, 4, 3), i, np.uint8), "mask": np.zeros((4, 4), np.uint8)}


def predict_factory(mesh):
    """A fixed 'segmenter': logits from the red channel (Dice/IoU need no training to be compared)."""
    return jax.jit(lambda params, state, batch: batch["image"][..., :1].astype(jnp.float32) - 128.0,
                   out_shardings=parallel.batch_sharding(mesh))  # as the segmentation task's


def features(images):
    """A fixed feature map [B, 5] standing in for Inception (per-row, so any mesh gives equal rows)."""
    x = images.astype(jnp.float32) / 255.0
    return jnp.concatenate([x.mean(axis=(1, 2)), (x ** 2).mean(axis=(1, 2, 3))[:, None],
                            jnp.sin(x[:, 0, 0, :1] * 3.0)], axis=1)


def eval_checks(out_dir, mesh):
    """Dice/IoU counts, FID moments and mask statistics of one set: the same code the tasks run."""
    import ml_collections
    from polypjax.experiments import generation_metrics
    from polypjax.train import seg_eval
    source = loop_toy.Source()
    subset = [source[i] for i in range(EVAL_EXAMPLES)]
    config = ml_collections.ConfigDict({"mesh": {"data": -1, "fsdp": 1},
                                        "data": {"image_size": 8, "eval_batch_size": 8}})
    seg = seg_eval.evaluate_sets(predict_factory, {}, {}, {"toy": subset}, config, out_dir, step=0, num_overlays=2)
    moments, stats = generation_metrics.scan_set(subset, name="toy", mesh=mesh, image_size=8, batch_size=8,
                                                 extract=jax.jit(features))
    return {"seg": seg["toy"], "moments": {"n": moments.n, "sum": moments.sum.tolist(),
                                           "sum_outer": moments.sum_outer.tolist()},
            "mask_stats": {k: np.asarray(v, np.float64).tolist() for k, v in stats.items()}}


def main():
    sys.modules["tensorflow"] = None  # TensorBoard's import costs seconds per process; the JSON writer is enough
    args = dict(a[2:].split("=", 1) for a in sys.argv[1:])
    parallel.initialize_distributed(args["config.distributed.coordinator_address"],
                                    int(args["config.distributed.num_processes"]),
                                    int(args["config.distributed.process_id"]))
    pid, workdir = jax.process_index(), pathlib.Path(args["workdir"])
    mesh = parallel.make_mesh()
    result = {"process_count": jax.process_count(), "device_count": jax.device_count(),
              "local_device_count": jax.local_device_count()}

    # Disjoint shares: one epoch of this process's training stream.
    stream = iter(pipeline.train_dataset(Ids(), image_size=None, global_batch_size=4, seed=0))
    result["epoch_ids"] = sorted(int(b["image"][j, 0, 0, 0]) for b in [next(stream) for _ in range(3)]
                                 for j in range(2))

    # Global batch assembly: process p's rows are rows [2p, 2p+2) of the global batch.
    local = {"x": np.arange(8, dtype=np.float32).reshape(2, 4) + 100 * pid}
    batch = parallel.global_batch(local, mesh)
    result["global_rows"] = parallel.to_host(batch["x"]).tolist()
    result["global_sum"] = float(jax.jit(jnp.sum)(batch["x"]))

    # Only process 0 writes: every output goes through data/export's atomic writers.
    written = []
    for name in ("atomic_write_text", "atomic_write_bytes"):
        original = getattr(export, name)
        setattr(export, name, lambda path, data, _o=original: (written.append(str(path)), _o(path, data))[1])
    result.update(eval_checks(workdir / "eval", mesh))

    # Checkpoints across processes: 4 steps straight, and 2 steps then a resume to 4.
    # The claim writes config.json (process 0 only); the loop metrics, compute.json, checkpoints.
    from polypjax import workdir as workdir_lib
    with workdir_lib.claim(workdir / "a", loop_toy.config(4)) as wd:
        straight = loop.train(loop_toy.WideTask(loop_toy.config(4)), loop_toy.config(4), wd)
    result["digest_straight"] = loop_toy.params_digest(straight)
    loop.train(loop_toy.WideTask(loop_toy.config(2)), loop_toy.config(2), workdir / "b")
    resumed = loop.train(loop_toy.WideTask(loop_toy.config(4)), loop_toy.config(4), workdir / "b")
    result["digest_resumed"] = loop_toy.params_digest(resumed)
    result["params"] = jax.tree.map(lambda x: parallel.to_host(x).tolist(), resumed.params)
    result["written"] = written
    (workdir / f"result_{pid}.json").write_text(json.dumps(result))
    jax.distributed.shutdown()


if __name__ == "__main__":
    try:
        main()
    except BaseException:
        # A process that failed would wait at jax's exit barrier for its peer, and that peer in its
        # next collective for it: exit now so the launcher sees the failure and stops the job.
        import os
        import traceback
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
