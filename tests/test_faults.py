"""Bad input and faults of the machine, provoked for real through `python -m polypjax.main` (and the
inspector and review commands): each stops with one `error: ...` line naming the file or config
field, no traceback, and keeps what was written, so the same command run again continues.

A full disk is a small tmpfs mounted by the test and a denied permission a process without the
capabilities that let root ignore file modes; both need root (as CI runs) and skip otherwise.
docs/faults.md lists every fault and the line the user sees.
"""
import contextlib
import copy
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import ml_collections
import pytest

from polypjax import configlib, tasks

ROOT = pathlib.Path(__file__).resolve().parent.parent
# One CPU device and glibc's own malloc (no re-exec), as a user's run would be but quicker to start.
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "XLA_FLAGS": "--xla_backend_optimization_level=0",
       "POLYPJAX_HUGEPAGES": "0"}
TINY_SEG = ["--config=configs/segmentation.py", "--config.data.image_size=32", "--config.data.batch_size=4",
            "--config.data.phantom_train_examples=8", "--config.data.phantom_test_examples=4",
            "--config.data.test=phantom-a", "--config.train.log_every=2", "--config.model.kwargs.features=4,8",
            "--config.optim.schedule=constant"]


def _main(*args, timeout=300, wrap=()):
    return subprocess.run([*wrap, sys.executable, "-m", "polypjax.main", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def _start(*args):
    return subprocess.Popen([sys.executable, "-m", "polypjax.main", *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _one_line_error(proc, *fragments) -> str:
    """The run failed with one `error:` line, last, holding `fragments`, and printed no traceback."""
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.read()
    assert proc.returncode not in (0, None), err[-3000:]
    assert "Traceback" not in err, err[-6000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("error:")] == [last], err[-3000:]
    for fragment in fragments:
        assert fragment in last, last
    return last


# --------------------------------------------------------------------------- config fields

def _leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _wrong_values(value):
    """Values of another type than `value`'s (None, which ml_collections lets into any field, too)."""
    if isinstance(value, bool):
        return ["yes", None]
    if isinstance(value, int):
        return ["8", 1.5, None]
    if isinstance(value, float):
        return ["0.5", None]
    if isinstance(value, str):
        return [["phantom-a", "phantom-b"], 3, None]
    return [3, None]


def _task_configs(tmp_path):
    generator = tmp_path / "generator"
    generator.mkdir()
    (generator / "config.json").write_text(json.dumps(configlib.load_config("diffusion").to_dict()))
    folder = tmp_path / "folder"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    g = configlib.load_config("generate")
    g.generate.generator_workdir = str(generator)
    e = configlib.load_config("evaluate_generation")
    e.evaluate.generated = str(folder)
    return {"prepare_data": configlib.load_config("prepare_data"),
            "segmentation": configlib.load_config("segmentation"),
            "diffusion": configlib.load_config("diffusion"), "gan": configlib.load_config("gan"),
            "generate": g, "evaluate_generation": e, "pipeline:mini": configlib.load_config("pipeline", "mini")}


def test_every_field_of_every_task_refuses_a_value_of_another_type_naming_it(tmp_path):
    """main.run's checks (tasks.check_types, then tasks.resolve) on every leaf of every task config."""
    missed = []
    for name, config in _task_configs(tmp_path).items():
        tasks.resolve(config)  # valid as it is
        base = config.to_dict()
        for field, value in _leaves(base):
            for wrong in _wrong_values(value):
                d = copy.deepcopy(base)
                *parents, leaf = field.split(".")
                node = d
                for p in parents:
                    node = node[p]
                node[leaf] = wrong
                bad = ml_collections.ConfigDict(d)  # as a config built from a dict: no type checks on set
                try:
                    tasks.check_types(bad)
                    tasks.resolve(bad)
                    missed.append(f"{name}: config.{field}={wrong!r} accepted")
                except configlib.ConfigError as e:
                    if f"config.{field}" not in str(e) or "\n" in str(e):
                        missed.append(f"{name}: config.{field}={wrong!r}: {e}")
                except Exception as e:  # any other exception is what this test reports
                    missed.append(f"{name}: config.{field}={wrong!r}: {type(e).__name__}: {e}")
    assert not missed, "\n".join(missed)


@pytest.mark.parametrize("name,field", [("segmentation", "data.train"), ("segmentation", "data.synthetic"),
                                        ("generate", "generate.source"), ("generate", "generate.color_reference"),
                                        ("evaluate_generation", "evaluate.real"), ("pipeline:mini", "data.train")])
def test_several_sources_where_one_is_expected_name_the_field(tmp_path, name, field):
    config = _task_configs(tmp_path)[name]
    if name == "generate":
        config.generate.mode = "inpaint"
        config.generate.source = "phantom-a"
    *parents, leaf = field.split(".")
    node = config
    for p in parents:
        node = node[p]
    node[leaf] = "phantom-a,phantom-b"
    with pytest.raises(configlib.ConfigError, match=rf"^config.{field} must name one data source, got 2"):
        tasks.resolve(config)


def test_a_pipeline_override_of_another_type_names_the_pipeline_field():
    c = configlib.load_config("pipeline", "mini")
    c.segmentation.overrides.train.num_steps = None
    with pytest.raises(configlib.ConfigError, match=r"^config.segmentation.overrides.train.num_steps must be an "
                                                    r"integer, got NoneType None$"):
        tasks.resolve(c)


@pytest.mark.parametrize("line,message", [
    ("c.data.test = ['phantom-a', 'phantom-b']", "Could not override field 'test'"),
    ("c.data.train = None", "config.data.train must be a string, got NoneType None"),
    ("c.data.augment.enabled = None", "config.data.augment.enabled must be true or false, got NoneType None"),
])
def test_a_config_file_with_a_wrong_type_stops_with_one_line(tmp_path, line, message):
    config = tmp_path / "my_config.py"
    config.write_text(f"from polypjax import configlib\n\n\ndef get_config():\n    c = configlib.load_config("
                      f"'segmentation')\n    {line}\n    return c\n")
    _one_line_error(_main(f"--config={config}", f"--workdir={tmp_path / 'wd'}"), message)
    assert not (tmp_path / "wd").exists()


# --------------------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size at tmp_path/disk; `.resize(size)` frees space as a user would."""
    path = tmp_path / "disk"
    path.mkdir()

    class Disk:
        root = path

        def mount(self, size: str):
            out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True, text=True)
            if out.returncode:
                pytest.skip(f"cannot mount a small tmpfs here (needs root, as CI has): {out.stderr.strip()}")
            return path

        def resize(self, size: str):
            subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)

        def fill(self, leave: int = 0):
            """Fills the disk, then frees `leave` bytes of it."""
            filler = path / "filler"
            with open(filler, "ab") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            os.truncate(filler, max(0, filler.stat().st_size - leave))

    yield Disk()
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _steps(workdir) -> list[int]:
    ckpt = pathlib.Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def test_disk_full_during_an_asynchronous_checkpoint_is_one_line_and_the_rerun_resumes(small_disk):
    """The disk fills while orbax writes a checkpoint in its background threads: orbax, tensorstore and
    asyncio report it from those threads, and the user must still see only the one line."""
    wd = small_disk.mount("8m") / "run"
    # No scalars until the end: the first write to meet the full disk is a checkpoint's.
    args = [*TINY_SEG, "--config.train.num_steps=400", "--config.train.checkpoint_every=2",
            "--config.train.log_every=1000", f"--workdir={wd}"]
    proc = _start(*args)
    deadline = time.monotonic() + 240
    while not _steps(wd):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "no first checkpoint in time"
        time.sleep(0.01)
    small_disk.fill(leave=64 << 10)  # room for a log line, not for a checkpoint
    proc.wait(timeout=240)
    _one_line_error(proc, "no space left on the disk writing", str(wd / "checkpoints"), "rerun the same command")
    kept = _steps(wd)
    assert kept and max(kept) < 400
    small_disk.resize("64m")
    (small_disk.root / "filler").unlink()
    rerun = _main(*args, "--config.train.num_steps=" + str(max(kept) + 2))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"at step {max(kept)}" in rerun.stderr  # resumed from the last complete checkpoint
    assert max(_steps(wd)) == max(kept) + 2


def test_disk_full_at_the_workdir_claim_names_the_file(small_disk):
    wd = small_disk.mount("1m") / "run"
    args = ["--config=configs/prepare_data.py", "--config.data.image_size=32", "--config.data.phantom_train_examples=4",
            "--config.data.phantom_test_examples=2", f"--workdir={wd}"]
    small_disk.fill()
    _one_line_error(_main(*args), f"no space left on the disk writing {wd / '.run.lock'}")
    small_disk.resize("16m")
    assert _main(*args).returncode == 0
    small_disk.fill()
    moved = "--config.mesh.data=1"  # a field that may change on resume: config.json is written again
    _one_line_error(_main(*args, moved), f"no space left on the disk writing {wd / 'config.json'}")
    assert json.loads((wd / "config.json").read_text())["mesh"]["data"] == -1  # the old one, whole
    (small_disk.root / "filler").unlink()
    assert _main(*args, moved).returncode == 0


# --------------------------------------------------------------------------- generation and evaluation

GENERATE = ["--config=configs/generate.py", "--config.generate.num_samples=48", "--config.generate.batch_size=4",
            "--config.generate.sampler.steps=3"]


def _pairs(folder) -> dict:
    """{id: (image bytes, mask bytes)} of the pairs a generated folder's manifest lists."""
    folder = pathlib.Path(folder)
    ids = [json.loads(line)["id"] for line in (folder / "manifest.jsonl").read_text().splitlines()]
    return {i: ((folder / "images" / f"{i}.png").read_bytes(), (folder / "masks" / f"{i}.png").read_bytes())
            for i in ids}


@pytest.fixture(scope="module")
def generate_args(trained_generator):
    return [*GENERATE, f"--config.generate.generator_workdir={trained_generator}"]


def _complete(folder, before: dict) -> None:
    """The folder holds every pair, and those written before the fault are the same files."""
    after = _pairs(folder)
    assert len(after) == 48 and json.loads((folder / "generation.json").read_text())["status"] == "complete"
    assert {i: after[i] for i in before} == before


def test_disk_full_mid_folder_keeps_the_pairs_and_the_rerun_completes_them(generate_args, small_disk):
    out = small_disk.mount("96k") / "generated"
    _one_line_error(_main(*generate_args, f"--workdir={out}"), "no space left on the disk writing", str(out))
    before = _pairs(out)
    assert 0 < len(before) < 48
    small_disk.resize("4m")
    proc = _main(*generate_args, f"--workdir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    _complete(out, before)


def test_generation_killed_mid_folder_resumes(generate_args, tmp_path):
    out = tmp_path / "generated"
    proc = _start(*generate_args, f"--workdir={out}")
    manifest = out / "manifest.jsonl"
    while not (manifest.exists() and manifest.read_text().count("\n") >= 4):
        assert proc.poll() is None, "generation ended before it was killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((out / "generation.json").read_text())["status"] == "incomplete"
    before = _pairs(out)
    again = _main(*generate_args, f"--workdir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    _complete(out, before)


def test_evaluation_killed_then_rerun_writes_its_metrics(folder_data, tmp_path):
    wd = tmp_path / "evaluation"
    args = ["--config=configs/evaluate_generation.py", f"--config.evaluate.generated={folder_data}",
            "--config.data.image_size=16", "--config.data.phantom_train_examples=12", "--config.evaluate.image_size=16",
            "--config.evaluate.batch_size=4", "--config.evaluate.msssim_pairs=4", "--config.evaluate.msssim_size=176",
            "--config.evaluate.kid_subsets=2", "--config.evaluate.kid_subset_size=4", f"--workdir={wd}"]
    proc = _start(*args)
    while not (wd / "config.json").exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (wd / "generation_metrics.json").exists(), "evaluation finished before it was killed"
    again = _main(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((wd / "generation_metrics.json").read_text())["generated"][0]["num_images"] == 8


# --------------------------------------------------------------------------- permissions and vanished files

def _without_root_powers() -> list[str]:
    """A command prefix under which file modes apply: none for a user that is not root; for root,
    setpriv without the capabilities that override them (the process stays root, so it can still
    run this venv's python under /root)."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None:
        pytest.skip("root, and no setpriv to drop the capabilities that ignore file modes")
    with tempfile.TemporaryDirectory() as tmp:
        closed = pathlib.Path(tmp) / "closed"
        closed.write_text("")
        closed.chmod(0)
        probe = subprocess.run([*prefix, "test", "-r", str(closed)], capture_output=True)
    if probe.returncode == 0 or probe.stderr:
        pytest.skip(f"cannot drop root's file capabilities here ({probe.stderr.decode().strip() or 'still readable'})")
    return prefix


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
    """Eight phantom pairs as a Kvasir-style folder (a copy per test: tests change its modes)."""
    from polypjax.data import export, phantom
    out = tmp_path_factory.mktemp("folder") / "pairs"
    export.write_source(phantom.PhantomSource("phantom-a", num_examples=8, size=32, seed=0, split="train"), out,
                        progress=False)
    return out


def _copy(folder, tmp_path) -> pathlib.Path:
    out = tmp_path / "data"
    shutil.copytree(folder, out)
    return out


@pytest.mark.parametrize("closed,message", [
    ("", "config.data.train: {data}: cannot list this folder (Permission denied)"),
    ("masks", "config.data.train: {data}/masks: cannot list this folder (Permission denied)"),
    ("images/phantom-a-train-00002.png", "config.data.train: {data}/images/phantom-a-train-00002.png: cannot be "
                                         "read (Permission denied)"),
])
def test_data_this_user_cannot_read_is_one_line_before_anything_is_written(folder_data, tmp_path, closed, message):
    prefix = _without_root_powers()
    data = _copy(folder_data, tmp_path)
    (data / closed).chmod(0)
    proc = _main(*TINY_SEG, f"--config.data.train={data}@all", f"--workdir={tmp_path / 'wd'}", wrap=prefix)
    _one_line_error(proc, message.format(data=data))
    assert not (tmp_path / "wd").exists()
    inspector = subprocess.run([*prefix, sys.executable, "-m", "polypjax.data", str(data)], cwd=ROOT, env=ENV,
                               capture_output=True, text=True, timeout=120)
    assert inspector.returncode == 1 and "Traceback" not in inspector.stderr, inspector.stderr[-3000:]
    assert f"error: {message.format(data=data).removeprefix('config.data.train: ')}" in inspector.stdout


def test_a_workdir_this_user_cannot_write_is_one_line(folder_data, tmp_path):
    prefix = _without_root_powers()
    wd = tmp_path / "closed"
    wd.mkdir()
    wd.chmod(0o555)
    args = ["--config=configs/prepare_data.py", "--config.data.image_size=32", "--config.data.phantom_train_examples=4",
            "--config.data.phantom_test_examples=2"]
    _one_line_error(_main(*args, f"--workdir={wd}", wrap=prefix), f"--workdir {wd}: {wd / '.run.lock'}: Permission denied")
    _one_line_error(_main(*args, f"--workdir={wd / 'sub'}", wrap=prefix), f"--workdir {wd / 'sub'}: cannot create it")
    review = subprocess.run([*prefix, sys.executable, "-m", "polypjax.review", "make", "--real", str(folder_data),
                             "--synthetic", str(folder_data), "--n", "4", "--out", str(wd / "review")], cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=120)
    _one_line_error(review, f"error: {wd / 'review'}: permission denied")


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry))
    return out


def test_a_training_file_removed_after_the_check_is_one_line_from_the_data_worker(folder_data, tmp_path):
    """The check passed and the run listed the folder; then the file goes, and the grain worker process
    that reads it is the one that finds out. The worker is the run's first child process: it starts
    after the folder was listed, and imports for seconds before its first read."""
    data = _copy(folder_data, tmp_path)
    wd = tmp_path / "wd"
    proc = _start(*TINY_SEG, "--config.train.num_steps=4", "--config.train.checkpoint_every=2",
                  "--config.data.worker_count=1", f"--config.data.train={data}@all", f"--workdir={wd}")
    while not _children(proc.pid):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.002)
    image = data / "images" / "phantom-a-train-00003.png"
    image.unlink()
    proc.wait(timeout=300)
    _one_line_error(proc, f"{image}: cannot be read (No such file or directory)")
    assert (wd / "config.json").exists()


def test_a_checkpoint_this_user_cannot_read_stops_the_resume_and_is_kept(trained_generator, tmp_path):
    """A damaged checkpoint is removed and the one before it restored; one that is only closed to this
    user is whole, and removing it would lose its training."""
    prefix = _without_root_powers()
    wd = tmp_path / "generator"
    shutil.copytree(trained_generator, wd)
    metadata = wd / "checkpoints" / "4" / "state" / "_METADATA"
    metadata.chmod(0)
    config = tmp_path / "tiny.py"  # the shared generator's own config, as a config file
    config.write_text(f"import sys\nsys.path.insert(0, {str(ROOT / 'tests')!r})\nfrom tiny_configs import tiny_config\n\n\n"
                      "def get_config():\n    return tiny_config('joint')\n")
    _one_line_error(_main(f"--config={config}", f"--workdir={wd}", wrap=prefix), f"{metadata}: permission denied")
    assert _steps(wd) == [2, 4] and metadata.exists()


def test_a_pair_without_its_image_is_one_error_not_two(folder_data, tmp_path):
    """Removed before the run lists the folder, the file leaves its mask unpaired; main prefixes
    `error: ` itself, so the message must not carry the problem's own severity."""
    from polypjax.data.sources import DataError, FolderSource
    data = _copy(folder_data, tmp_path)
    (data / "images" / "phantom-a-train-00003.png").unlink()
    with pytest.raises(DataError, match=rf"^{data}/masks/phantom-a-train-00003.png: mask has no image in "):
        FolderSource(data)


def test_a_run_that_fails_before_its_first_step_leaves_no_tensorflow_import_running(tmp_path):
    """train() imports tensorflow (TensorBoard's writer) in a thread while it starts; a run that fails
    first must wait for it, or the import goes on while main prints the error and exits: its
    libraries' banners come after the `error:` line, or the interpreter's exit meets it half done.
    In a fresh process, where the import takes seconds and the failure is at once."""
    code = ("import threading\n"
            "from polypjax import configlib\n"
            "from polypjax.train import loop\n"
            "class Task:\n"
            "    def train_iterator(self):\n"
            "        raise RuntimeError('no data')\n"
            "try:\n"
            f"    loop.train(Task(), configlib.load_config('segmentation'), {str(tmp_path)!r})\n"
            "except RuntimeError:\n"
            "    print([t.name for t in threading.enumerate() if t.is_alive()])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "['MainThread']", out.stdout
