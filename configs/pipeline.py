"""The whole pipeline: phantom data (train on domain A, test on A and B) or real folders.

    --config=configs/pipeline.py             the CPU grid on phantom data (= configs/demo.py)
    --config=configs/pipeline.py:quickstart  the README's first command (= configs/quickstart.py)
    --config=configs/pipeline.py:mini        every stage at toy size (tests; its numbers mean nothing)
    --config=configs/pipeline.py:kvasir_cpu  real Kvasir-SEG at 32 px on a CPU (= configs/kvasir_cpu.py)
    --config=configs/pipeline.py:kvasir_gpu  real Kvasir-SEG at 128 px on one GPU (= configs/kvasir_gpu.py)
    --config=configs/pipeline.py:paper       the paper's setting for accelerators (= configs/paper.py)

Each stage's config is its task's own configs/*.py plus the overrides below (see
polypjax/experiments/pipeline.py); the report is runs/pipeline/report/report.html.
"""
import ml_collections

from polypjax import configlib


def get_config(variant: str = "cpu"):
    config = configlib.base_config("pipeline")
    config.data.image_size = 32
    config.data.phantom_train_examples = 200
    config.data.phantom_test_examples = 50
    # The joint generator of the quickstart: label-consistent pairs after 300 steps at batch 32.
    config.generators = ml_collections.ConfigDict({"joint": {"variant": "cpu", "overrides": {
        "data": {"batch_size": 32},
        "model": {"channels": 32, "channel_mult": (1, 2, 2)},
        "train": {"num_steps": 300, "checkpoint_every": 100, "eval_every": 0, "log_every": 50},
        "eval": {"num_samples": 8, "sampler": {"steps": 20}}}},
        # The GAN baseline (configs/gan.py, image + mask from noise) beside it, the paper's comparison;
        # it takes only the modes its kind can (sample: a GAN cannot inpaint).
        "joint_gan": {"config": "gan", "variant": "joint", "overrides": {
            "data": {"batch_size": 16}, "train": {"num_steps": 600, "checkpoint_every": 200, "log_every": 50}}}})
    config.generate = ml_collections.ConfigDict({
        "multiple": 1.0,  # synthetic pairs = multiple x the real training pairs (the paper's 1x/2x/3x)
        # One synthetic set per mode: sample (from noise), inpaint (RePaint into the real training
        # frames, the paper), sdedit (variations of real pairs), from_masks (two_stage, real masks).
        "modes": ("sample", "inpaint"),
        "overrides": {"generate": {"batch_size": 50, "sampler": {"kind": "ddim", "steps": 20}}},
        # RePaint's jumps on a DDIM schedule: 25 steps, jumps of 5, 2 samples (45 UNet calls a pair
        # instead of the paper's 960; configs/paper.py keeps the paper's schedule).
        "mode_overrides": {"inpaint": {"generate": {"inpaint": {
            "sampler": "repaint_ddim", "steps": 25, "jump_length": 5, "jump_n_sample": 2}}}}})
    # image_size 0: the generator's size (data.image_size); real frames are resized to it.
    config.evaluate = ml_collections.ConfigDict({"overrides": {"evaluate": {
        "image_size": 0, "batch_size": 50, "msssim_pairs": 200, "msssim_size": 176}}})
    config.segmentation = ml_collections.ConfigDict({
        "variant": "cpu",
        "models": {"unet": {"model": {"kwargs": {"features": (16, 32, 64)}}}},
        # "replace" (the paper's alpha) is left to configs/paper.py here, for time. The baselines a
        # synthetic set must beat: augmentation, copy-paste of real polyps (and augmented copies,
        # below); "+aug": the same regime with classic augmentation on (like for like).
        "regimes": ("real", "real_augment", "copy_paste", "synthetic", "mixed", "copy_paste+aug", "mixed+aug"),
        "alpha": 0.5, "synthetic_fraction": 0.5,
        # "matched": a mixed run gets the steps that show it as many real images as real-only, and
        # the baselines it is compared with the same total; "same_steps": every run the same count.
        "exposure": "matched",
        # fraction > 0: that share of the real training pairs is set aside (outside every training
        # set and subset) and one real-only run per model and N, evaluated on it every eval_every
        # steps up to max_steps, sets the step count at that N: the first step within tolerance of
        # the curve's best. 0: every run at the overrides' num_steps.
        "validation": {"fraction": 0.0, "max_steps": 600, "eval_every": 50, "tolerance": 0.01},
        # A mixed run on classically augmented copies of the real pairs, at the synthetic sets' count
        # (the N's own pairs at N): separates "more data" from "better data".
        "augmented_copies": True,
        "seeds": (0, 1),
        "low_data": {"sizes": (16, 64), "synthetic_per_real": 1.0, "regimes": ("real", "copy_paste", "mixed"),
                     "protocols": ("paper",)},
        "overrides": {"data": {"batch_size": 16}, "train": {"num_steps": 150, "checkpoint_every": 150,
                                                            "log_every": 25}}})
    # A blinded real-vs-synthetic page of the first generator's pairs (polypjax.review), linked from the report.
    config.review = ml_collections.ConfigDict({"enabled": True, "n": 20, "seed": 0, "show_masks": True})
    variants = {"cpu": lambda c: None, "demo": lambda c: None, "quickstart": _quickstart, "mini": _miniature,
                "mini_gan": _miniature_gan, "kvasir_cpu": _kvasir_cpu,
                "kvasir_gpu": _kvasir_gpu, "paper": _paper}
    if variant not in variants:
        raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(variants)}")
    variants[variant](config)
    return config


def _miniature_gan(config):
    """mini with the GAN baseline beside the joint diffusion model."""
    gan = config.generators.joint_gan
    _miniature(config)
    gan.overrides.model = {"gen_channels": 8, "num_up": 2, "disc_channels": 8}
    gan.overrides.train.update({"num_steps": 4, "checkpoint_every": 2, "log_every": 2})
    config.generators.joint_gan = gan


def _quickstart(config):
    """The smallest run whose numbers mean something: one generator trained long enough for
    label-consistent pairs (300 steps, tools/generator_recipes.py), its pairs from noise, and a
    segmenter with and without them at all 200 and at 16 real pairs, beside real + augmentation
    and real + copy-paste, exposure-matched. RePaint into the real frames
    (--config.generate.modes=sample,inpaint: about 3 more minutes on 2 idle cores) and
    the GAN baseline are left to configs/demo.py, to stay within 10 minutes."""
    del config.generators["joint_gan"]
    config.generate.modes = ("sample",)  # its inpaint settings stay, for the modes override above
    config.evaluate.overrides.evaluate.update({"msssim_pairs": 100})
    s = config.segmentation
    # The baselines a synthetic set must beat, cheapest first; augmented copies and the "+aug"
    # variants are left to configs/demo.py, for time.
    s.regimes = ("real", "real_augment", "copy_paste", "mixed")
    s.low_data.update({"sizes": (16,), "regimes": ("real", "copy_paste", "mixed")})
    s.augmented_copies = False


def _kvasir_cpu(config):
    """Real Kvasir-SEG (--config.data.train=/path/to/Kvasir-SEG; its seeded hash split is the test
    set, add external sets with --config.data.test=...) on a 2-core CPU, under the protocol of
    issue 30: 3 seeds, N in {50, all}, both protocols at N = 50 with the same synthetic count, the
    step count of each N from a validation split, exposure-matched, beside augmentation and
    copy-paste (like for like: the synthetic and copy-paste regimes with augmentation on).

    32 px, the quickstart's generator recipe: the whole grid at 64 px was estimated at over four
    hours here (0.5 s a segmenter step, 2 s a generator step), so it could not meet the issue's
    100 minutes; 32 px costs about a quarter. Measured wall time: docs/kvasir_cpu.md. Left out for
    time: the unaugmented synthetic and copy-paste regimes (configs/demo.py runs them on phantom
    data; add them with --config.segmentation.regimes=...)."""
    config.data.train = "/path/to/Kvasir-SEG"  # must be overridden: checked before any work
    config.data.test = config.data.get_ref("train") + "@test"
    config.data.image_size = 32
    del config.generators["joint_gan"]
    g = config.generators.joint.overrides
    g.train.update({"num_steps": 1200, "checkpoint_every": 200, "log_every": 100})
    # RePaint on a DDIM schedule (45 UNet calls a pair) into half of the pool's frames, and into
    # each N's own frames under both protocols (same count).
    config.generate.update({"modes": ("inpaint",), "multiple": 0.5})
    s = config.segmentation
    s.regimes = ("real", "real_augment", "copy_paste+aug", "mixed+aug")
    s.seeds = (0, 1, 2)
    s.validation.update({"fraction": 0.1, "max_steps": 800, "eval_every": 100})
    s.low_data.update({"sizes": (50,), "regimes": ("real", "real_augment", "copy_paste+aug", "mixed+aug"),
                       "protocols": ("paper", "same_data")})
    s.augmented_copies = True  # beside mixed+aug: as many augmented copies of the real pairs
    s.overrides.data.update({"batch_size": 16, "worker_count": 2})
    s.overrides.train.update({"num_steps": 300, "checkpoint_every": 200})


def _kvasir_gpu(config):
    """Real Kvasir-SEG at 128 px on one H100/H200-class GPU, the smallest grid that answers "do the
    painted pairs beat copy-paste + augmentation at N = 50": RePaint pairs from a generator trained
    on all the training pairs (the paper protocol), three seeds of real + augmentation, copy-paste +
    augmentation and mixed + augmentation at N = 50, exposure-matched, step counts from a validation
    split. Compute in bfloat16, parameters and optimiser state in float32.

    The generator's size comes from XLA's cost analysis (compute.step_flops, CPU, 2026-12-04): this
    ADM (128 channels, (1, 1, 2, 3, 4), one res block, attention at 16 and 8) costs 262 GFLOP per
    image per training step at 128 px, so 64 images a step are 16.7 TFLOP; at an assumed 25 % MFU
    of the H200's measured 790 TFLOP/s bf16 peak that is 0.085 s a step, and 1000 steps (79 epochs
    of the pool) about 85-90 s: the "about 2 minutes" of the accelerator issue with compile time.
    tools/device_run.sh runs it (tools/README.md, "Measurements", has what it took)."""
    _kvasir_cpu(config)
    config.data.image_size = 128
    g = config.generators.joint.overrides
    g.data.update({"batch_size": 64, "worker_count": 4})
    g.model.update({"channels": 128, "channel_mult": (1, 1, 2, 3, 4), "attention_resolutions": (16, 8),
                    "num_head_channels": 64, "dtype": "bfloat16"})
    g.train.update({"num_steps": 1000, "checkpoint_every": 1000, "log_every": 100})
    # RePaint on a DDIM schedule (45 UNet calls a pair) into half of the pool's frames (the
    # generation metrics' set) and into each N's own 50 frames.
    config.generate.update({"modes": ("inpaint",), "multiple": 0.5})
    config.generate.overrides.generate.update({"batch_size": 64})
    s = config.segmentation
    s.models.unet.model.update({"dtype": "bfloat16", "kwargs": {"features": (32, 64, 128, 256)}})
    s.regimes = ()  # the full set only trains the judge of label consistency (its first seed)
    s.seeds = (0, 1, 2)
    s.validation.update({"fraction": 0.1, "max_steps": 600, "eval_every": 100})
    s.low_data.update({"sizes": (50,), "regimes": ("real_augment", "copy_paste+aug", "mixed+aug"),
                       "protocols": ("paper",)})
    s.augmented_copies = False
    s.overrides.data.update({"batch_size": 32, "worker_count": 4})
    s.overrides.train.update({"num_steps": 400, "checkpoint_every": 10_000, "log_every": 100})
    config.review.n = 20


def _paper(config):
    """Saragih et al. 2024 for accelerators: 256 px, the guided-diffusion-sized joint model
    (configs/diffusion.py:paper, 1000 steps, eps, 500k steps), RePaint at the paper's schedule into
    the real training frames, UNet++ scored on the Kvasir hash split and CVC-ClinicDB:
        --config.data.train=/data/Kvasir-SEG --config.data.test=/data/Kvasir-SEG@test,/data/CVC-ClinicDB@all
    Expected compute (XLA cost analysis of the training step, launch/README.md): 7.8 TFLOP a step at
    batch 1, so about 3e19 FLOP for 500k steps at batch 8 (tens of GPU-hours on A100/H100-class chips)."""
    config.data.train = "/path/to/Kvasir-SEG"
    config.data.test = config.data.get_ref("train") + "@test"
    config.data.image_size = 256
    config.generators = ml_collections.ConfigDict({"joint": {"variant": "paper", "overrides": {
        "data": {"worker_count": 4}}}})
    config.generate.update({"multiple": 1.0, "modes": ("inpaint", "sample")})
    config.generate.overrides = {"generate": {"batch_size": 16, "sampler": {"kind": "ddpm", "steps": 250}}}
    config.generate.mode_overrides = {"inpaint": {"generate": {"inpaint": {
        "sampler": "repaint", "steps": 200, "jump_length": 10, "jump_n_sample": 5}}}}
    config.evaluate.overrides.evaluate.update({"msssim_pairs": 1000, "msssim_size": 176})
    s = config.segmentation
    s.models = ml_collections.ConfigDict({"unetpp": {"model": {"name": "unetpp", "kwargs": {}}}})
    s.variant = "kvasir"
    s.regimes = ("real", "real_augment", "copy_paste", "synthetic", "mixed", "replace", "copy_paste+aug", "mixed+aug")
    s.seeds = (0, 1, 2)
    s.low_data.update({"sizes": (50, 100, 200), "regimes": ("real", "mixed"), "protocols": ("paper", "same_data")})
    s.overrides = {"data": {"batch_size": 8, "worker_count": 4}, "train": {"num_steps": 8000, "checkpoint_every": 1000}}
    config.review.n = 50


def _miniature(config):
    """Every stage, every kind of segmentation run and the report, at toy size (tests, smoke runs)."""
    del config.generators["joint_gan"]  # `mini_gan` has both families
    config.data.phantom_train_examples = 12
    config.data.phantom_test_examples = 4
    g = config.generators.joint.overrides
    g.data.batch_size = 4
    g.model.update({"channels": 8, "channel_mult": (1, 2), "attention_resolutions": (), "num_heads": 1})
    g.train.update({"num_steps": 4, "checkpoint_every": 2, "log_every": 2})
    g.eval.update({"num_samples": 2, "sampler": {"steps": 2}})
    config.generate.overrides.generate.update({"batch_size": 4, "sampler": {"kind": "ddim", "steps": 2}})
    config.generate.mode_overrides.inpaint.generate.inpaint.update({"steps": 4, "jump_length": 2, "jump_n_sample": 2})
    config.evaluate.overrides.evaluate.update({"batch_size": 4, "msssim_pairs": 4, "kid_subsets": 2,
                                               "kid_subset_size": 4})
    s = config.segmentation
    s.models.unet.model.kwargs.features = (4, 8)
    s.regimes = ("real", "mixed")
    s.seeds = (0,)
    s.low_data.update({"sizes": (6,), "regimes": ("real", "mixed")})
    s.augmented_copies = False  # its own test turns it on
    s.overrides.data.update({"batch_size": 4})
    s.overrides.train.update({"num_steps": 4, "checkpoint_every": 2, "log_every": 2})
    config.review.enabled = False
