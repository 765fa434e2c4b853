"""GAN generator training (the baseline of the diffusion-vs-GAN comparison), task train_diffusion.

    --config=configs/gan.py              joint: image + mask from noise (SinGAN-Seg's 4-channel
                                         analogue), 32 px on phantom data (CPU minutes)
    --config=configs/gan.py:spade        mask-conditioned SPADE generator; generate with mode
                                         from_masks (real masks), so only the image stage differs

A workdir of this config is a generator workdir like any diffusion one (generate, evaluate and the
pipeline read it the same way).
"""
import ml_collections

from polypjax import configlib


def get_config(variant: str = "joint"):
    config = configlib.base_config("train_diffusion")
    config.train, config.optim = configlib.train_config()
    _, config.optim_disc = configlib.train_config()
    config.generator = ml_collections.ConfigDict({"kind": "gan"})
    config.gan = ml_collections.ConfigDict({
        "joint": True,
        "z_dim": 64,
        "feature_matching": 10.0,  # pix2pixHD's lambda
    })
    config.model = configlib.model_config(
        gen_channels=32, num_up=3,  # 4x4 -> 32x32
        disc_channels=32, disc_layers=2, disc_scales=2)
    config.postprocess = ml_collections.ConfigDict({"opening_radius": 1, "min_component_size": 8})
    config.eval = ml_collections.ConfigDict({"num_samples": 8, "seed": 0})
    # SPADE's TTUR: Adam(beta1 0, beta2 0.999), generator 1e-4, discriminator 4e-4.
    for optim, lr in ((config.optim, 1e-4), (config.optim_disc, 4e-4)):
        optim.update(name="adam", learning_rate=lr, b1=0.0, b2=0.999, weight_decay=0.0,
                     schedule="constant", warmup_steps=0, grad_clip=0.0)
    config.train.ema_decay = 0.999
    config.data.update(image_size=32, batch_size=32, phantom_train_examples=2000)
    config.train.update(num_steps=3000, checkpoint_every=500, eval_every=1000, log_every=50)
    if variant == "spade":
        config.gan.joint = False
    elif variant != "joint":
        raise ValueError(f"unknown variant {variant!r}: use joint or spade")
    return config
