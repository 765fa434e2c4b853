"""Mesh, shardings and host-local -> global batches on 8 simulated CPU devices."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from polypjax import parallel


def test_default_mesh_spans_every_device_once():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data", "fsdp") and mesh.devices.shape == (jax.device_count(), 1)
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


@pytest.mark.parametrize("data,fsdp", [(-1, 1), (4, 2), (1, 8)])
def test_sharded_batch_round_trips_exactly(data, fsdp):
    mesh = parallel.make_mesh(data, fsdp)
    rng = np.random.default_rng(0)
    local = {"image": rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8),
             "mask": rng.integers(0, 2, (16, 8, 8), dtype=np.uint8),
             "valid": rng.random(16) > 0.3, "id": np.array([str(i) for i in range(16)])}
    batch = parallel.global_batch(local, mesh)
    assert batch["image"].sharding == parallel.batch_sharding(mesh)
    assert len(batch["image"].addressable_shards) == 8
    assert {s.data.shape[0] for s in batch["image"].addressable_shards} == {2}
    for key in ("image", "mask", "valid"):
        back = parallel.to_host(batch[key])
        assert back.dtype == local[key].dtype
        np.testing.assert_array_equal(back, local[key])
    np.testing.assert_array_equal(batch["id"], local["id"])  # strings stay on the host
    total = jax.jit(lambda x: jnp.sum(x.astype(jnp.int32)))(batch["image"])
    assert int(total) == int(local["image"].astype(np.int64).sum())


def test_mesh_errors():
    with pytest.raises(ValueError, match="divisor"):
        parallel.make_mesh(-1, 3)
    with pytest.raises(ValueError, match="does not match"):
        parallel.make_mesh(5, 2)
    assert parallel.make_mesh(1, 1).devices.shape == (1, 1)  # a one-device reference mesh


def test_fsdp_param_shardings():
    mesh = parallel.make_mesh(2, 4)
    params = {"big": jnp.zeros((3, 3, 64, 128)), "bias": jnp.zeros((128,)), "odd": jnp.zeros((129, 127))}
    sh = parallel.param_shardings(mesh, params, min_size=1000)
    assert sh["big"].spec == jax.sharding.PartitionSpec(None, None, None, "fsdp")
    assert sh["bias"].spec == jax.sharding.PartitionSpec()
    assert sh["odd"].spec == jax.sharding.PartitionSpec()
    placed = jax.device_put(params, sh)
    assert placed["big"].addressable_shards[0].data.shape == (3, 3, 64, 32)
    replicated = parallel.param_shardings(parallel.make_mesh(), params)
    assert all(s.spec == jax.sharding.PartitionSpec() for s in jax.tree.leaves(replicated))


def test_initialize_distributed_is_noop_on_one_host(monkeypatch):
    for k in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "JAX_COORDINATOR_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    called = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: called.append(a))
    parallel.initialize_distributed()
    assert not called
    monkeypatch.setenv("SLURM_NTASKS", "4")
    parallel.initialize_distributed()
    assert called == [()]


@pytest.mark.parametrize("data,fsdp", [(-1, 1), (2, 4)])
def test_local_rows_are_this_process_rows_in_order(data, fsdp):
    mesh = parallel.make_mesh(data, fsdp)
    local = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    out = jax.jit(lambda b: b["x"] * 2, out_shardings=parallel.batch_sharding(mesh))(parallel.global_batch(local, mesh))
    np.testing.assert_array_equal(parallel.local_rows(out), local["x"] * 2)
    replicated = jax.device_put(local["x"], parallel.replicated(mesh))  # 8 copies of one shard
    np.testing.assert_array_equal(parallel.local_rows(replicated), local["x"])
