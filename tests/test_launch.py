"""The launchers' dry runs print every command, with the right process ids and coordinator."""
import os
import pathlib
import shlex
import subprocess

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parent.parent / "launch"
ARGS = ["--config=configs/diffusion.py:paper", "--workdir=/shared/runs/paper", "--config.data.test=a b"]


def _dry(script, *args, **env):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_", "DRY_RUN", "PORT"))}
    out = subprocess.run(["bash", str(LAUNCH / script), "--dry-run", *args], capture_output=True, text=True,
                         env={**base, **env}, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _flags(words):
    return dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)


def test_local_multiprocess_dry_run():
    lines = _dry("local_multiprocess.sh", "3", "2", *ARGS, PORT="23456")
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(f"[process {i}] ") and line.endswith(f"> ./process_{i}.log")
        words = shlex.split(line.split("] ", 1)[1].rsplit(">", 1)[0])
        assert "XLA_FLAGS=--xla_force_host_platform_device_count=2" in words and "JAX_PLATFORMS=cpu" in words
        assert words[words.index("-m") + 1] == "polypjax.main"
        flags = _flags(words)
        assert flags["config.data.test"] == "a b"  # arguments pass through unchanged
        assert flags["workdir"] == "/shared/runs/paper"
        assert flags["config.distributed.coordinator_address"] == "localhost:23456"
        assert flags["config.distributed.num_processes"] == "3"
        assert flags["config.distributed.process_id"] == str(i)


@pytest.mark.parametrize("per,nodelist,ntasks,host", [("gpu", "gpu[03-04,07]", 24, "gpu03"),
                                                      ("node", "a1,b2", 2, "a1")])
def test_slurm_dry_run(per, nodelist, ntasks, host):
    nnodes = 3 if per == "gpu" else 2
    lines = _dry("slurm_gpu.sbatch", *ARGS, PER=per, SLURM_JOB_ID="4321", SLURM_JOB_NODELIST=nodelist,
                 SLURM_NNODES=str(nnodes), SLURM_NTASKS=str(ntasks), SLURM_GPUS_ON_NODE="8")
    srun = shlex.split(lines[0])
    assert srun[:3] == ["srun", f"--ntasks={ntasks}", "--kill-on-bad-exit=1"] and srun[3:5] == ["bash", "-c"]
    # The per-task variables are left for each task's shell to expand.
    assert "--config.distributed.process_id=$SLURM_PROCID" in srun[5]
    tasks = lines[1:]
    assert len(tasks) == ntasks
    port = str(4321 % 4096 + 61440)
    for p, line in enumerate(tasks):
        assert line.startswith(f"[task {p}] ")
        words = shlex.split(line.split("] ", 1)[1])
        flags = _flags(words)
        assert flags["config.distributed.coordinator_address"] == f"{host}:{port}"
        assert flags["config.distributed.num_processes"] == str(ntasks)
        assert flags["config.distributed.process_id"] == str(p)
        assert flags["config.data.test"] == "a b"
        local = words[0].split("=", 1)[1]
        assert local == (str(p % 8) if per == "gpu" else "0,1,2,3,4,5,6,7")


def test_slurm_needs_its_environment():
    out = subprocess.run(["bash", str(LAUNCH / "slurm_gpu.sbatch"), "--dry-run", *ARGS], capture_output=True,
                         text=True, env={k: v for k, v in os.environ.items() if not k.startswith("SLURM_")})
    assert out.returncode == 2 and "SLURM_JOB_ID is not set" in out.stderr


def test_tpu_vm_dry_run():
    lines = _dry("tpu_vm.sh", *ARGS, BUCKET="gs://my-bucket", REPO="https://example.org/polypjax.git",
                 TPU_NAME="pod", ZONE="us-central2-b", ACCELERATOR="v4-32")
    commands = [shlex.split(line[2:].split("  #")[0]) for line in lines if line.startswith("+ ")]
    assert len(commands) == len(lines) == 5
    describe, create, install, address, run = commands
    assert describe[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "describe"] and describe[5] == "pod"
    assert create[4:6] == ["create", "pod"] and "--accelerator-type=v4-32" in create
    for ssh in (install, run):
        assert ssh[4:6] == ["ssh", "pod"] and "--worker=all" in ssh and "--zone=us-central2-b" in ssh
    install_cmd = _flags(install)["command"]
    assert "git clone -q https://example.org/polypjax.git" in install_cmd and "pip install" in install_cmd
    assert "gcsfuse --implicit-dirs my-bucket /mnt/bucket" in install_cmd
    assert "networkEndpoints[0].ipAddress" in address[-1]
    words = shlex.split(_flags(run)["command"])
    assert "JAX_COORDINATOR_ADDRESS=WORKER0_IP:8476" in words
    assert words[words.index("-m") + 1] == "polypjax.main" and _flags(words)["config.data.test"] == "a b"
    assert _flags(words)["workdir"] == "/shared/runs/paper"
