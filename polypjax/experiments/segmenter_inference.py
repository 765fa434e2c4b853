"""A trained segmenter from its workdir, for inference: label consistency, generation filters."""
from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp

from polypjax.models import segmenters
from polypjax.train import loop
from polypjax.train.segmentation import logits_of, model_kwargs, preprocess


def load_segmenter(workdir: str | pathlib.Path, *, use_ema: bool | None = None):
    """A trained segmenter from a `train_segmentation` workdir, for inference on uint8 images.

    Returns `predict(images uint8 [N,H,W,3]) -> logits float32 [N,H,W,1]` (images must already be
    at `predict.image_size`, the size it was trained at), with `predict.config` the run's config and
    `predict.features(images) -> [N, C]` the average-pooled deepest encoder features.
    """
    config, restored = loop.restore_run(workdir, "train_segmentation")
    if use_ema is None:
        use_ema = config.train.ema_decay > 0
    params = restored["ema_params" if use_ema else "params"]
    model_state = restored.get("model_state") or {}
    model = segmenters.create_model(config.model.name, **model_kwargs(config))

    @jax.jit
    def _predict(images):
        return logits_of(model, {"params": params, **model_state}, images)

    @jax.jit
    def _features(images):
        image, _ = preprocess({"image": images, "mask": jnp.zeros(images.shape[:3], jnp.uint8)}, model.dtype)
        return segmenters.encoder_features(model, {"params": params, **model_state}, image)

    def predict(images):
        return _predict(jnp.asarray(images))

    predict.features = lambda images: _features(jnp.asarray(images))
    predict.image_size = int(config.data.image_size)
    predict.config = config
    return predict
