"""Quickstart on the embedded phantom data (CPU, minutes): data preparation and inspection, then a
short segmentation training run scored in-domain (phantom-a) and cross-domain (phantom-b)."""
from polypjax import configlib


def get_config():
    config = configlib.load_config("segmentation", "cpu")
    config.task = "quickstart"
    config.data.image_size = 64
    config.data.batch_size = 16
    config.data.phantom_train_examples = 400
    config.data.phantom_test_examples = 50
    config.model.kwargs = {"features": (16, 32, 64)}
    config.train.num_steps = 300
    config.train.checkpoint_every = 100
    config.optim.warmup_steps = 20
    return config
