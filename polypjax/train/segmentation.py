"""Segmentation task: model, BCE + soft Dice loss, config checks; its data regimes are in
`seg_regimes.py`, its Dice/IoU evaluation in `seg_eval.py`, inference from a workdir in
`experiments/segmenter_inference.py`."""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import optax

from polypjax import parallel
from polypjax.configlib import ConfigError, check_number
from polypjax.data import catalog, pipeline
from polypjax.models import segmenters
from polypjax.train import loop
from polypjax.train.seg_eval import evaluate_sets
from polypjax.train.seg_regimes import REGIMES, augmentation, paste_donors, training_sources



def preprocess(batch: dict, dtype=jnp.float32):
    """uint8 batch -> images in [-1, 1] and float masks [N,H,W,1]; runs on device inside jit."""
    image = batch["image"].astype(dtype) / 127.5 - 1.0
    mask = batch["mask"].astype(jnp.float32)[..., None]
    return image, mask


def bce_dice_loss(logits, masks, bce_weight: float = 1.0, dice_weight: float = 1.0, eps: float = 1.0):
    """Mean BCE over pixels plus (1 - soft Dice) per image averaged over the batch.

    Soft Dice is computed per image (not over the whole batch) so small polyps weigh as much as
    large ones; `eps` smooths images whose mask is empty.
    """
    logits = logits.astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, masks).mean()
    probs = jax.nn.sigmoid(logits)
    axes = tuple(range(1, logits.ndim))
    inter = (probs * masks).sum(axes)
    dice = (2 * inter + eps) / (probs.sum(axes) + masks.sum(axes) + eps)
    soft_dice_loss = (1.0 - dice).mean()
    return bce_weight * bce + dice_weight * soft_dice_loss, {"bce": bce, "soft_dice_loss": soft_dice_loss}


def model_kwargs(config) -> dict:
    kwargs = dict(config.model.kwargs) if "kwargs" in config.model else {}
    kwargs["dtype"] = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
    kwargs["conv"] = config.model.get("conv", "auto")  # absent from configs written before the field
    return kwargs


class SegmentationTask:
    def __init__(self, config, workdir: pathlib.Path):
        self.config = config
        self.workdir = pathlib.Path(workdir)
        self.model = segmenters.create_model(config.model.name, **model_kwargs(config))
        self.train_sources, self.weights, self.replace_source = training_sources(config)
        self.paste_donors = paste_donors(config, self.train_sources)
        self.test_sources = catalog.make_sources(config.data.test, config.data, default_split="test",
                                                 seed=config.seed)
        self.last_results = None  # the latest evaluation, {test set: figures}: what results.json reports

    # --- training -------------------------------------------------------------------------
    def train_iterator(self):
        c = self.config
        return pipeline.train_dataset(self.train_sources, weights=self.weights, image_size=c.data.image_size,
                                      global_batch_size=c.data.batch_size, seed=c.seed, augment=augmentation(c),
                                      worker_count=c.data.worker_count, replace_with=self.replace_source,
                                      replace_prob=c.regime.alpha if c.regime.kind == "replace" else 0.0,
                                      paste_from=self.paste_donors, paste=c.regime.get("copy_paste"))

    def init(self, rng, batch):
        image, _ = preprocess(batch)
        variables = self.model.init({"params": rng}, image[:1], train=False)
        params = variables.pop("params")
        return params, dict(variables)

    def loss(self, params, model_state, batch, rng):
        image, mask = preprocess(batch, self.model.dtype)
        out, updates = self.model.apply({"params": params, **model_state}, image, train=True,
                                        mutable=list(model_state.keys()), rngs={"dropout": rng})
        if out.ndim == 5:  # deep supervision: one head per nested decoder depth
            losses = [bce_dice_loss(o, mask, self.config.loss.bce_weight, self.config.loss.dice_weight)
                      for o in out]
            loss = sum(l for l, _ in losses) / len(losses)
            parts = jax.tree.map(lambda *v: sum(v) / len(v), *[p for _, p in losses])
        else:
            loss, parts = bce_dice_loss(out, mask, self.config.loss.bce_weight, self.config.loss.dice_weight)
        return loss, (parts, {**model_state, **updates})

    # --- evaluation -----------------------------------------------------------------------
    def predict_fn(self, mesh):
        """The jitted prediction for `mesh`, built once per run: every evaluation reuses its trace."""
        cache = self.__dict__.setdefault("_predict_fns", {})
        if mesh not in cache:
            model = self.model

            def predict(params, model_state, batch):
                return logits_of(model, {"params": params, **model_state}, batch["image"])

            cache[mesh] = jax.jit(predict, out_shardings=parallel.batch_sharding(mesh))
        return cache[mesh]

    def evaluate(self, state, step: int, writer) -> dict:
        params = state.ema_params if self.config.train.ema_decay > 0 else state.params
        results = evaluate_sets(self.predict_fn, params, state.model_state, self.test_sources, self.config,
                                self.workdir / "eval", step)
        self.last_results = results
        scalars = {}
        for name, r in results.items():
            for k in ("mDice", "mIoU", "dice", "iou"):
                scalars[f"eval/{name}/{k}"] = r[k]
        return scalars


def validate(config) -> None:
    r = config.regime
    if config.model.name not in segmenters.MODELS:
        raise ConfigError(f"config.model.name={config.model.name!r} is unknown; choose one of {sorted(segmenters.MODELS)}")
    if r.kind not in REGIMES:
        raise ConfigError(f"config.regime.kind={r.kind!r} is unknown; choose one of {REGIMES}")
    check_number(config, "regime.alpha", 0, 1)
    check_number(config, "regime.synthetic_fraction", 0, 1)
    check_number(config, "regime.real_subset", 0, integer=True)  # 0: all
    if not isinstance(r.get("augment", False), bool):
        raise ConfigError(f"config.regime.augment must be True or False, got {r.augment!r}")
    _check_copy_paste(config)
    for name in ("bce_weight", "dice_weight"):
        check_number(config, f"loss.{name}", 0)
    if r.kind in ("synthetic", "mixed", "replace") and not config.data.synthetic:
        raise ConfigError(f"config.regime.kind={r.kind!r} needs config.data.synthetic (a generated folder)")
    if config.data.synthetic:
        from polypjax.configlib import check_source_spec
        check_source_spec(config.data.synthetic, "data.synthetic")
    if config.model.dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"config.model.dtype must be float32 or bfloat16, got {config.model.dtype!r}")
    _check_image_size(config)
    loop.validate_train_config(config)
    if not catalog.split_specs(config.data.test):
        raise ConfigError("config.data.test names no test set")


def _check_copy_paste(config) -> None:
    r = config.regime
    if "copy_paste" not in r:  # configs written before the regime
        if r.kind == "copy_paste":
            raise ConfigError("config.regime.kind='copy_paste' needs the config.regime.copy_paste block")
        return
    p = "regime.copy_paste"
    check_number(config, f"{p}.probability", 0, 1)
    check_number(config, f"{p}.max_pastes", 1, integer=True)
    check_number(config, f"{p}.scale_min", 0, low_open=True)
    check_number(config, f"{p}.scale_max", r.copy_paste.scale_min)
    check_number(config, f"{p}.rotate_deg", 0, 180)
    check_number(config, f"{p}.feather_sigma", 0)
    check_number(config, f"{p}.min_distance", 0, integer=True)
    check_number(config, f"{p}.tries", 1, integer=True)
    for name in ("flip", "match_colour"):
        if not isinstance(r.copy_paste[name], bool):
            raise ConfigError(f"config.{p}.{name} must be True or False, got {r.copy_paste[name]!r}")


def _check_image_size(config) -> None:
    try:
        model = segmenters.create_model(config.model.name, **model_kwargs(config))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.model.kwargs {dict(config.model.kwargs)} do not fit "
                          f"{config.model.name}: {e}") from None
    multiple = segmenters.input_multiple(model)
    if config.data.image_size % multiple:
        raise ConfigError(f"config.data.image_size={config.data.image_size} must be a multiple of {multiple} "
                          f"for {config.model.name} with these features (its total downsampling)")


def logits_of(model, variables, images):
    """Segmenter logits float32 [N,H,W,1] of uint8 images (the last head under deep supervision):
    what evaluation and inference both compute."""
    image, _ = preprocess({"image": images, "mask": jnp.zeros(images.shape[:3], jnp.uint8)}, model.dtype)
    logits = model.apply(variables, image, train=False)
    return (logits[-1] if logits.ndim == 5 else logits).astype(jnp.float32)
