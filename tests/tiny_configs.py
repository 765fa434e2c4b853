"""Tiny configs of the real config files, shared by the generator and generate tests."""
from polypjax import configlib


def tiny_config(kind="joint"):
    c = configlib.load_config("diffusion", "cpu")
    c.generator.kind = kind
    c.data.image_size = 16
    c.data.batch_size = 8
    c.data.phantom_train_examples = 16
    c.model.update(channels=16, channel_mult=(1, 2), attention_resolutions=(8,), num_heads=2)
    c.train.num_steps = 4
    c.train.checkpoint_every = 2
    c.train.log_every = 2
    c.train.eval_every = 0
    c.eval.num_samples = 8
    c.eval.sampler.steps = 4
    c.diffusion.num_timesteps = 100
    return c


def generate_config(generator_workdir, num=6, batch=4):
    c = configlib.load_config("generate")
    c.generate.update(generator_workdir=str(generator_workdir), num_samples=num, batch_size=batch)
    c.generate.sampler.steps = 3
    return c


def tiny_gan_config(joint=True):
    c = configlib.load_config("gan", "joint" if joint else "spade")
    c.data.image_size = 16
    c.data.batch_size = 8
    c.data.phantom_train_examples = 16
    c.model.update(gen_channels=8, num_up=2, disc_channels=8)
    c.train.update(num_steps=4, checkpoint_every=2, log_every=2, eval_every=0)
    c.eval.num_samples = 8
    return c
