"""Segmentation training.

    --config=configs/segmentation.py          CPU-sized: phantom data, 128 px, small UNet (minutes)
    --config=configs/segmentation.py:kvasir   real data at 256 px, resunet34; pass the folder with
                                              --config.data.train=/path/to/Kvasir-SEG
                                              (and external sets: --config.data.test=/path/Kvasir-SEG,/path/CVC-ClinicDB@all)
Regimes: --config.regime.kind=real|real_augment|copy_paste|synthetic|mixed|replace (see
polypjax/train/seg_regimes.py); --config.regime.augment=True adds classic augmentation to any.
"""
import ml_collections

from polypjax import configlib


def get_config(variant: str = "cpu"):
    config = configlib.base_config("train_segmentation")
    config.train, config.optim = configlib.train_config()
    config.data.synthetic = ""  # a generated folder for the synthetic / mixed / replace regimes
    config.model = configlib.model_config(name="unet", dtype="float32", kwargs={"features": (16, 32, 64, 128)})
    config.loss = ml_collections.ConfigDict({"bce_weight": 1.0, "dice_weight": 1.0})
    config.regime = ml_collections.ConfigDict({"kind": "real", "alpha": 0.5, "synthetic_fraction": 0.5,
                                               "real_subset": 0, "augment": False})
    config.regime.copy_paste = configlib.copy_paste_config()
    if variant == "cpu":
        config.data.image_size = 128
        config.data.batch_size = 16
        config.data.phantom_train_examples = 1000
        config.data.phantom_test_examples = 100
        config.train.num_steps = 600
        config.train.checkpoint_every = 200
        config.train.log_every = 25
        config.optim.learning_rate = 2e-3
    elif variant == "kvasir":
        config.data.train = "/path/to/Kvasir-SEG"  # must be overridden: checked before any work
        config.data.test = config.data.get_ref("train") + "@test"  # follows --config.data.train
        config.data.image_size = 256
        config.data.batch_size = 8
        config.data.worker_count = 2
        config.model = configlib.model_config(name="resunet34", dtype="float32", kwargs={})
        config.train.num_steps = 8000
        config.train.checkpoint_every = 1000
        config.train.eval_every = 2000
        config.optim.learning_rate = 1e-3
        config.optim.warmup_steps = 200
    else:
        raise ValueError(f"unknown variant {variant!r}: use cpu or kvasir")
    return config
