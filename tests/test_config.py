"""Config overrides, derived fields and the errors a bad value gives before any work."""
import json
import re
import pathlib
import subprocess
import sys

import pytest

from polypjax import configlib, tasks

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _load(name="prepare_data"):
    return configlib.load_config(name)


def test_derived_fields_follow_overrides():
    c = _load()
    c.data.image_size = 64
    c.data.batch_size = 32
    r = tasks.resolve(c)
    assert r.data.phantom_size == 64 and r.data.eval_batch_size == 32
    c.data.eval_batch_size = 7  # an explicit value wins over the derivation
    assert tasks.resolve(c).data.eval_batch_size == 7


@pytest.mark.parametrize("variant", ["quickstart", "demo", "mini", "kvasir_cpu", "kvasir_gpu", "paper"])
def test_every_pipeline_variant_builds_valid_stage_configs(variant, tmp_path):
    """Each shipped pipeline config resolves, and so does every stage config it would run (a bad
    override in a variant would otherwise surface only when that stage starts, maybe hours in)."""
    from polypjax.experiments import pipeline
    c = configlib.load_config("pipeline", variant)
    if "path/to" in c.data.train:  # the real-data variants need a folder on the command line
        for sub in ("images", "masks"):
            (tmp_path / "kvasir" / sub).mkdir(parents=True)
        c.data.train = str(tmp_path / "kvasir")
    r = tasks.resolve(c)
    stage_dir = tmp_path / "stage"
    (stage_dir / "masks").mkdir(parents=True)
    (stage_dir / "images").mkdir()
    sets = pipeline.synthetic_sets(r)
    assert {m for _, _, m in sets} == set(r.generate.modes)
    for name, g, mode in sets:
        tasks.resolve(pipeline.generator_config(r, g))
        gen = pipeline.generate_config(r, stage_dir, 10, mode, stage_dir / "masks")
        assert gen.generate.mode == mode and (mode != "inpaint" or gen.generate.source == r.data.train)
    ev = tasks.resolve(pipeline.evaluate_config(r, [stage_dir], None)).evaluate
    # Scored at the generator's size: a real folder's frames differ in size (Kvasir-SEG's do).
    assert ev.real == r.data.train and ev.image_size == r.data.image_size
    for model in r.segmentation.models:
        for regime in r.segmentation.regimes:
            seg = tasks.resolve(pipeline.segmentation_config(r, model, regime, seed=0, synthetic=str(stage_dir)))
            assert seg.data.image_size == r.data.image_size and seg.regime.kind == pipeline.regime_kind(regime)
            assert seg.regime.augment == regime.endswith("+aug")


def test_pipeline_modes_are_checked():
    c = configlib.load_config("pipeline", "mini")
    c.generate.modes = ("sample", "repaint")
    with pytest.raises(configlib.ConfigError, match=r"config.generate.modes: 'repaint' is unknown"):
        tasks.resolve(c)
    c.generate.modes = ("from_masks",)
    del c.generate.mode_overrides["inpaint"]
    with pytest.raises(configlib.ConfigError, match=r"'from_masks' needs a two_stage or gan_spade generator"):
        tasks.resolve(c)
    c.generate.modes = ("sample",)
    c.generate.mode_overrides = {"sdedit": {}}  # a known mode's settings, used once it is listed
    tasks.resolve(c)
    c.generate.mode_overrides = {"repaint": {}}
    with pytest.raises(configlib.ConfigError, match=r"mode_overrides.repaint: 'repaint' is not a generation mode"):
        tasks.resolve(c)


def test_quickstart_takes_inpaint_with_its_fast_schedule():
    """The quickstart lists only `sample` (10 minutes); naming inpaint on the command line uses the
    RePaint-on-DDIM settings it keeps, not the paper's 960-call schedule."""
    from polypjax.experiments import pipeline
    c = _load("quickstart")
    assert tasks.resolve(c).task == "pipeline" and c.data.train == "phantom-a"
    assert tuple(c.generate.modes) == ("sample",)
    c.generate.modes = ("sample", "inpaint")
    tasks.resolve(c)
    assert [s[0] for s in pipeline.synthetic_sets(c)] == ["joint", "joint-inpaint"]
    g = pipeline.generate_config(c, pathlib.Path("/tmp/g"), 10, "inpaint")
    assert (g.generate.inpaint.sampler, g.generate.inpaint.steps) == ("repaint_ddim", 25)


@pytest.mark.parametrize("field,value,message", [
    ("data.image_size", -5, "config.data.image_size must be positive"),
    ("data.batch_size", 0, "config.data.batch_size must be positive"),
    ("data.test_fraction", 1.5, "test_fraction must be in"),
    ("data.train", "/no/such/folder", "config.data.train: source '/no/such/folder': folder"),
    ("data.test", "phantom-a,phantom-z", "unknown phantom domain 'phantom-z'"),
    ("data.test", "phantom-a@everything", "split 'everything'"),
    ("data.augment.hflip", 2.0, "probability"),
    ("task", "nope", "config.task='nope' is unknown"),
])
def test_bad_values_raise_one_clear_error(field, value, message):
    c = _load()
    node = c
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(configlib.ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        tasks.resolve(c)


def _main(tmp_path, *overrides):
    return subprocess.run([sys.executable, "-m", "polypjax.main", f"--config={ROOT / 'configs/prepare_data.py'}",
                           f"--workdir={tmp_path / 'wd'}", *overrides], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.mark.parametrize("override,message", [
    ("--config.data.nope=3", "names no existing field ('nope')"),
    ("--config.data.image_size=abc", "--config.data.image_size=abc"),
    ("--config.data.image_size=-1", "config.data.image_size must be positive"),
    ("--config.data.train=/missing/path", "folder '/missing/path' does not exist"),
    ("--config.distributed.num_processes=0", "config.distributed.num_processes must be"),
    ("--config.distributed.process_id=2", "process_id=2 must be below config.distributed.num_processes=1"),
])
def test_cli_bad_override_stops_before_work(tmp_path, override, message):
    out = _main(tmp_path, override)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-2:]
    assert any(message in line for line in last), out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "wd" / "config.json").exists()


def test_cli_runs_and_records_resolved_config(tmp_path):
    out = _main(tmp_path, "--config.data.image_size=32", "--config.data.phantom_train_examples=6",
                "--config.data.phantom_test_examples=4", "--config.data.test=phantom-b")
    assert out.returncode == 0, out.stderr[-3000:]
    wd = tmp_path / "wd"
    config = json.loads((wd / "config.json").read_text())
    assert config["data"]["image_size"] == 32 and config["data"]["phantom_size"] == 32
    report = json.loads((wd / "data_report.json").read_text())
    assert [(r["name"], r["num_pairs"], r["errors"]) for r in report] == [
        ("phantom-a@train", 6, 0), ("phantom-b@test", 4, 0)]
    assert (wd / "data" / "phantom-a-train" / "manifest.jsonl").exists()
    assert (wd / "samples_phantom-b-test.png").exists()
    assert "| phantom-b@test | test |" in (wd / "data_report.md").read_text()


@pytest.mark.parametrize("field,value,message", [
    ("optim.learning_rate", float("nan"), "config.optim.learning_rate must be finite"),
    ("optim.b1", float("inf"), "config.optim.b1 must be finite"),
    ("data.test_fraction", float("nan"), "config.data.test_fraction must be finite"),
    ("data.augment.rotate_deg", float("nan"), "rotate_deg must be finite"),
    ("seed", -1, "config.seed must be >= 0, a finite integer"),
    ("data.image_size", 36, "config.data.image_size=36 must be a multiple of 8"),
    ("data.image_size", 8, "config.data.phantom_size must be >= 16"),
    ("mesh.data", 64, "needs 64 devices"),
])
def test_numbers_must_be_finite_and_fit(field, value, message):
    c = _load("segmentation")
    c.model.kwargs.features = (8, 16, 32, 64)
    node = c
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(configlib.ConfigError, match=message):
        tasks.resolve(c)


@pytest.mark.parametrize("args,message", [
    (["--config=configs/nope.py"], "No such file or directory: 'configs/nope.py'"),
    (["--config=configs/segmentation.py:bogus"], "unknown variant 'bogus'"),
    (["--config=configs/prepare_data.py", "--workdir=FILE"], "exists and is not a directory"),
    (["--config=configs/segmentation.py", "--config.optim.learning_rate=nan"], "learning_rate must be finite"),
    (["--config=configs/segmentation.py", "--config.model.conv=cudnn"],
     "config.model.conv='cudnn' is unknown; choose one of auto, onednn, taps, xla"),
])
def test_cli_errors_are_one_line(tmp_path, args, message):
    (tmp_path / "FILE").write_text("")
    args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
    if not any(a.startswith("--workdir") for a in args):
        args.append(f"--workdir={tmp_path / 'wd'}")
    out = subprocess.run([sys.executable, "-m", "polypjax.main", *args], capture_output=True, text=True,
                         timeout=300, cwd=ROOT, env={**__import__("os").environ, "POLYPJAX_HUGEPAGES": "0"})
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    error_lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0], out.stderr[-2000:]


def test_derived_fields_follow_until_set_and_never_write_back():
    d = configlib.data_config(image_size=32, batch_size=16)
    d.batch_size, d.image_size = 8, 48
    assert (d.eval_batch_size, d.phantom_size) == (8, 48)  # they follow
    d.eval_batch_size, d.phantom_size = 4, 64
    assert (d.batch_size, d.image_size) == (8, 48)  # setting them leaves their sources alone


def test_folder_names_with_at_sign_work_and_with_comma_are_refused_clearly(tmp_path):
    import numpy as np
    from PIL import Image

    from polypjax.data import catalog
    at = tmp_path / "kvasir@v2"
    for sub in ("images", "masks"):
        (at / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(at / "images" / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(at / "masks" / "a.png")
    assert catalog.parse_spec(str(at), "train") == catalog.Spec("folder", str(at), "train")
    assert catalog.parse_spec(f"{at}@all", "train") == catalog.Spec("folder", str(at), "all")
    comma = tmp_path / "a,b"
    comma.mkdir()
    c = configlib.base_config("prepare_data")
    for value in (str(comma), f"phantom-a,{comma}@test"):
        with pytest.raises(configlib.ConfigError, match=r"has a ',' in its path"):
            configlib.check_no_comma_folder(value, "data.test")
    configlib.check_no_comma_folder("phantom-a,phantom-b", "data.test")  # an ordinary list passes
    c.data.test = str(comma)
    with pytest.raises(configlib.ConfigError, match=r"config.data.test: folder .* has a ','"):
        tasks.resolve(c)


@pytest.mark.parametrize("name", ["segmentation", "diffusion"])
def test_model_conv_is_a_checked_field_of_every_model_config(name):
    c = _load(name)
    assert c.model.conv == "auto"
    for value in ("xla", "taps", "onednn"):
        c.model.conv = value
        configlib.check_conv(c)
    c.model.conv = "cudnn"
    with pytest.raises(configlib.ConfigError) as e:
        tasks.resolve(c)
    assert str(e.value) == "config.model.conv='cudnn' is unknown; choose one of auto, onednn, taps, xla"


def test_configs_written_before_model_conv_still_build_their_models():
    """A run's config.json from before the field: models build with the default (auto), resuming
    may add the field, and fingerprints of what was computed do not change."""
    from polypjax import workdir
    from polypjax.diffusion import generators
    from polypjax.train.segmentation import model_kwargs
    import ml_collections

    seg, dif = _load("segmentation").to_dict(), _load("diffusion").to_dict()
    for d in (seg, dif):
        del d["model"]["conv"]
    assert model_kwargs(ml_collections.ConfigDict(seg))["conv"] == "auto"
    assert generators.make_unet(ml_collections.ConfigDict(dif).model, 4, 4).conv == "auto"
    new = _load("segmentation").to_dict()
    new["model"]["conv"] = "xla"
    workdir.check_resume(pathlib.Path("unused"), json.loads(json.dumps(seg)), json.loads(json.dumps(new)))
    assert configlib.what_it_computes(seg) == configlib.what_it_computes(new)
    assert "conv" in new["model"]  # a copy: the config itself is left alone


def test_configs_written_before_the_loss_fields_resume_and_keep_their_fingerprints():
    """A diffusion run recorded before diffusion.min_snr_gamma and .timestep_sampling existed
    computed what their neutral values compute: it resumes under today's config and its stage and
    generator fingerprints do not change; a non-neutral value is a change and is refused."""
    from polypjax import workdir

    old = json.loads(json.dumps(_load("diffusion").to_dict()))  # as read back from config.json
    for field in ("min_snr_gamma", "timestep_sampling"):
        del old["diffusion"][field]
    new = json.loads(json.dumps(_load("diffusion").to_dict()))
    workdir.check_resume(pathlib.Path("unused"), json.loads(json.dumps(old)), new)
    assert configlib.what_it_computes(old) == configlib.what_it_computes(new)
    for field, value in (("min_snr_gamma", 5.0), ("timestep_sampling", "lognormal")):
        changed = json.loads(json.dumps(new))
        changed["diffusion"][field] = value
        assert configlib.what_it_computes(changed) != configlib.what_it_computes(old)
        with pytest.raises(workdir.WorkdirError, match=f"diffusion.{field}: \\(absent\\) -> "):
            workdir.check_resume(pathlib.Path("unused"), json.loads(json.dumps(old)), changed)
    assert "min_snr_gamma" in new["diffusion"]  # a copy: the config itself is left alone


def test_pipeline_seeds_vary_initialisation_not_data():
    from polypjax.data import catalog
    from polypjax.experiments import pipeline
    c = configlib.load_config("pipeline", "mini")
    seeds = [pipeline.segmentation_config(c, "unet", "real", seed=k) for k in (0, 1, 2)]
    assert [s.seed for s in seeds] == [0, 1, 2]
    assert {catalog.data_seed(s.data, s.seed) for s in seeds} == {c.seed}
    assert seeds[0].data.seed == -1  # equal to its own seed: as before the field, same fingerprint
    src = [catalog.make_source("phantom-a", s.data, seed=s.seed) for s in seeds[:2]]
    assert (src[0][3]["image"] == src[1][3]["image"]).all()


def test_exposure_matched_steps():
    from polypjax.experiments import pipeline
    assert pipeline.exposure_steps(150, 0.5, "matched") == 300
    assert pipeline.exposure_steps(150, 0.2, "matched") == 188  # ceil(150 / 0.8)
    assert pipeline.exposure_steps(150, 0.5, "same_steps") == 150
    c = configlib.load_config("pipeline", "mini")
    c.segmentation.exposure = "more"
    with pytest.raises(configlib.ConfigError, match="config.segmentation.exposure='more'"):
        configlib.resolve(c, pipeline.validate)


def test_regime_names_with_aug_run_that_regime_augmented():
    from polypjax.experiments import pipeline
    c = configlib.load_config("pipeline", "mini")
    seg = pipeline.segmentation_config(c, "unet", "copy_paste+aug", seed=0)
    assert seg.regime.kind == "copy_paste" and seg.regime.augment
    assert not pipeline.segmentation_config(c, "unet", "mixed", seed=0).regime.augment
    for bad in ("mixed+augment", "real+aug", "nonsense+aug"):
        c.segmentation.regimes = ("real", bad)
        with pytest.raises(configlib.ConfigError, match=re.escape(f"config.segmentation.regimes: '{bad}' is unknown")):
            configlib.resolve(c, pipeline.validate)


def test_fingerprints_leave_out_where_a_process_sits_in_its_job():
    """The coordinator's address (a free port per launch) and the process id change with every
    launch of the same job: a run's fingerprint (a generated folder's record of its generator) does
    not, and equals that of the run made without a job."""
    one = json.loads(json.dumps(_load("diffusion").to_dict()))
    job = json.loads(json.dumps(one))
    job["distributed"].update(coordinator_address="localhost:43567", process_id=1)
    assert configlib.what_it_computes(job) == configlib.what_it_computes(one)
    job["distributed"]["num_processes"] = 2  # how many share the data is part of what training computes
    assert configlib.what_it_computes(job) != configlib.what_it_computes(one)
    assert one["distributed"]["coordinator_address"] == "" and one["distributed"]["process_id"] == 0
