"""Test session set-up: 8 simulated CPU devices and a persistent compilation cache.

Both must be set before jax is imported anywhere, which is why they live here.
"""
import os
import pathlib

# LLVM at -O0: the tests' programs are tiny, so compiling is most of their cost; -O0 compiles a
# tiny ADM training step 3-4x faster (12 s -> 3.3 s here) and runs it no slower. Values differ from
# -O3 only in float rounding; runs keep XLA's defaults.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 " + TEST_XLA_FLAGS)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_CACHE))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "data"


@pytest.fixture(scope="session")
def kvasir_dir():
    path = SHARED_DATA / "kvasir-seg-train"
    if not path.is_dir():
        pytest.skip(f"real Kvasir-SEG pairs not present at {path} (see shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def trained_generator(tmp_path_factory):
    """A tiny joint generator trained 4 steps through main.run (checkpoints at 2 and 4), shared by
    every test that needs a trained one: training it is most of their cost."""
    from polypjax import main
    from tiny_configs import tiny_config
    wd = tmp_path_factory.mktemp("generator")
    main.run(tiny_config("joint"), str(wd))
    return wd


# xdist hands out whole files (--dist loadfile) in collection order (--no-loadscope-reorder; its
# default order is by test count, which sends these few-test, minutes-long files last and leaves one
# worker idle while the other finishes them). These files hold most of the suite's time (pytest's
# durations report), so they go first: longest first keeps both workers busy to the end.
LONGEST_FIRST = ("test_multiprocess_pipeline.py", "test_pipeline_task.py", "test_faults.py",
                 "test_generator_quality.py", "test_generators.py", "test_generate_modes.py", "test_train_loop.py",
                 "test_device_check.py", "test_gan.py", "test_multiprocess.py", "test_adm_unet.py", "test_topology.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
