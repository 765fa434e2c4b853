"""Quickstart on the embedded phantom data (CPU, minutes): for now data preparation and inspection."""
from polypjax import configlib


def get_config():
    config = configlib.base_config("prepare_data")
    config.data.image_size = 128
    config.data.phantom_train_examples = 200
    config.data.phantom_test_examples = 50
    return config
