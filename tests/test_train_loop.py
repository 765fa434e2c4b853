"""The shared training loop: checkpoints, exact resume after SIGKILL, non-finite guard, writers."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import loop_toy  # noqa: E402
from polypjax.train import loop  # noqa: E402

TOY = pathlib.Path(__file__).parent / "loop_toy.py"
ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run_toy(workdir, steps):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(TOY), str(workdir), str(steps)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _digest(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return [line.split()[1] for line in out.splitlines() if line.startswith("DIGEST")][0]


def test_resume_after_sigkill_is_bitwise_identical(tmp_path):
    reference = _digest(_run_toy(tmp_path / "a", 40))
    proc = _run_toy(tmp_path / "b", 40)
    ckpt = tmp_path / "b" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline:
        steps = [int(p.name) for p in ckpt.glob("*") if p.name.isdigit()] if ckpt.exists() else []
        if steps and max(steps) >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.name) for p in ckpt.glob("*") if p.name.isdigit())
    assert done and max(done) < 40, done  # killed mid-run
    assert _digest(_run_toy(tmp_path / "b", 40)) == reference


def test_loop_checkpoints_evaluates_and_writes_metrics(tmp_path):
    task = loop_toy.ToyTask(loop_toy.config(6))
    state = loop.train(task, loop_toy.config(6), tmp_path)
    assert int(state.step) == 6 and task.evaluations == [6]
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [2, 4, 6][-3:]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train/loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all("train/grad_norm" in r and "train/mse" in r for r in train)
    assert any(r.get("eval/step_seen") == 6 for r in records)
    # A second run over a finished workdir restores instead of training again.
    task2 = loop_toy.ToyTask(loop_toy.config(6))
    state2 = loop.train(task2, loop_toy.config(6), tmp_path)
    assert loop_toy.params_digest(state2) == loop_toy.params_digest(state)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    class NanTask(loop_toy.ToyTask):
        def loss(self, params, model_state, batch, rng):
            loss, aux = super().loss(params, model_state, batch, rng)
            return loss + (jnp.nan if self._nan else 0.0), aux

    cfg = loop_toy.config(10)
    task = NanTask(cfg)
    task._nan = False
    loop.train(task, loop_toy.config(4), tmp_path)  # 4 good steps, checkpoint at 4
    task._nan = True
    with pytest.raises(loop.NonFiniteLossError, match=r"loss is nan at step 5.*last good checkpoint \(step 4\)"):
        loop.train(task, cfg, tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert max(steps) == 4


def test_non_finite_parameters_under_a_finite_loss_stop_too(tmp_path):
    class NanGradTask(loop_toy.ToyTask):
        def loss(self, params, model_state, batch, rng):
            loss, aux = super().loss(params, model_state, batch, rng)
            if self._nan:  # value 0, gradient 0 * inf = nan: the loss stays finite, the parameters do not
                k = params["Conv_0"]["kernel"]
                loss = loss + 0.0 * jnp.sqrt(0.0 * jnp.sum(k))
            return loss, aux

    cfg = loop_toy.config(10)
    task = NanGradTask(cfg)
    task._nan = False
    loop.train(task, loop_toy.config(4), tmp_path)
    task._nan = True
    with pytest.raises(loop.NonFiniteLossError, match=r"parameters are not finite at step 5.*\(step 4\)"):
        loop.train(task, cfg, tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert max(steps) == 4


def test_corrupt_latest_checkpoint_falls_back_to_the_one_before(tmp_path, caplog):
    cfg = loop_toy.config(6)
    fresh = loop_toy.params_digest(loop.train(loop_toy.ToyTask(cfg), cfg, tmp_path / "fresh"))
    wd = tmp_path / "run"
    loop.train(loop_toy.ToyTask(loop_toy.config(4)), loop_toy.config(4), wd)  # checkpoints at 2 and 4
    for f in (wd / "checkpoints" / "4" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    resumed = loop.train(loop_toy.ToyTask(cfg), cfg, wd)
    assert "checkpoint step 4" in caplog.text and "cannot be restored" in caplog.text
    assert loop_toy.params_digest(resumed) == fresh  # resumed exactly from step 2


def test_writer_falls_back_without_tensorflow(tmp_path):
    code = f"""
import sys
sys.modules["tensorflow"] = None  # as if not installed: import raises ImportError, find_spec is None
sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
import loop_toy
from polypjax.train import loop, writers
assert not writers.tensorflow_available()
state = loop.train(loop_toy.ToyTask(loop_toy.config(4)), loop_toy.config(4), {str(tmp_path)!r})
assert sys.modules["tensorflow"] is None
print("OK", int(state.step))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK 4" in out.stdout
    assert (tmp_path / "metrics.jsonl").exists()


def test_disk_full_keeps_the_last_checkpoint_and_the_same_run_resumes(tmp_path):
    """On a real full filesystem (a 4 MiB tmpfs; needs root, as CI has)."""
    from polypjax import faults
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        cfg = loop_toy.config(4)
        fresh = loop_toy.params_digest(loop.train(loop_toy.ToyTask(cfg), cfg, tmp_path / "fresh"))
        wd = disk / "run"
        loop.train(loop_toy.ToyTask(loop_toy.config(2)), loop_toy.config(2), wd)
        filler = disk / "filler"
        with open(filler, "wb") as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        with pytest.raises(Exception) as info:
            loop.train(loop_toy.ToyTask(cfg), cfg, wd)
        assert faults.disk_full(info.value), repr(info.value)
        filler.unlink()
        assert loop_toy.params_digest(loop.train(loop_toy.ToyTask(cfg), cfg, wd)) == fresh
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
