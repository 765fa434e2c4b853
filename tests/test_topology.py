"""Topology independence: the same steps on 1 device, 8 data-parallel and 8 fsdp give the same
parameters (to float32 reduction-order rounding); a checkpoint written on 8 devices restores on 4
and 1; fsdp shrinks the train state each device holds."""
import json
import pathlib
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import loop_toy  # noqa: E402
from polypjax.train import loop  # noqa: E402

STEPS = 4
# float32 sums over 8 examples in another order (per-device partial sums, then an all-reduce)
# differ in the last bits: after 4 steps parameters differ by at most 3e-8 here.
RTOL, ATOL = 1e-4, 1e-6


def _config(data, fsdp, steps=STEPS):
    c = loop_toy.config(steps)
    c.mesh.data, c.mesh.fsdp = data, fsdp
    return c


def _train(workdir, data, fsdp, steps=STEPS):
    return loop.train(loop_toy.WideTask(_config(data, fsdp, steps)), _config(data, fsdp, steps), workdir)


def _host(state):
    return jax.device_get((state.params, state.model_state, state.opt_state))


def _devices(state):
    return {d for leaf in jax.tree.leaves(state.params) for d in leaf.sharding.device_set}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return {name: (wd, _train(wd, data, fsdp)) for name, data, fsdp in
            [("one", 1, 1), ("dp8", 8, 1), ("fsdp8", 1, 8)]
            for wd in [tmp_path_factory.mktemp(name)]}


def test_same_parameters_on_every_topology(runs):
    reference = _host(runs["one"][1])
    for name in ("dp8", "fsdp8"):
        state = runs[name][1]
        assert len(_devices(state)) == 8
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL, err_msg=name),
                     reference, _host(state))
    kernel = runs["fsdp8"][1].params["Conv_1"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    assert {s.data.shape for s in kernel.addressable_shards} == {(3, 3, 16, 16)}


def test_fsdp_memory_per_device_is_recorded_and_smaller(runs):
    record = {name: json.loads((runs[name][0] / "compute.json").read_text()) for name in ("dp8", "fsdp8")}
    assert record["fsdp8"]["mesh"] == {"data": 1, "fsdp": 8} and record["dp8"]["mesh"] == {"data": 8, "fsdp": 1}
    full, sharded = (record[n]["state_bytes_per_device"] for n in ("dp8", "fsdp8"))
    big = 3 * 3 * 16 * 128 * 4 * 4  # Conv_1's kernel: params, EMA, Adam's two moments, float32
    assert full - sharded == big - big // 8


@pytest.mark.parametrize("data,fsdp", [(4, 1), (1, 1)])
def test_checkpoint_from_8_devices_restores_on_fewer(runs, tmp_path, data, fsdp):
    import shutil
    wd = tmp_path / "wd"
    shutil.copytree(runs["fsdp8"][0], wd)
    restored = _train(wd, data, fsdp)  # the run is complete: restore only, no step
    assert int(restored.step) == STEPS and len(_devices(restored)) == data * fsdp
    jax.tree.map(np.testing.assert_array_equal, _host(runs["fsdp8"][1]), _host(restored))
