"""Sample labelled pairs from a trained generator into a Kvasir-style folder (the workdir).

    python -m polypjax.main --config=configs/generate.py --workdir=runs/synthetic \
        --config.generate.generator_workdir=runs/diffusion [--config.generate.num_samples=1000] \
        [--config.generate.sampler.kind=dpm++ --config.generate.sampler.steps=20] \
        [--config.generate.color_reference=/path/to/Kvasir-SEG@train]
        [--config.generate.mode=inpaint --config.generate.source=/path/to/Kvasir-SEG@train]
        [--config.generate.mode=from_masks --config.generate.masks=/path/to/masks --config.generate.images_per_mask=4]
"""
import ml_collections

from polypjax import configlib


def get_config():
    config = configlib.base_config("generate")
    g = ml_collections.ConfigDict()
    g.generator_workdir = ""  # a train_diffusion workdir (its latest checkpoint is used)
    g.num_samples = 1000
    g.batch_size = 32
    g.seed = 0
    g.use_ema = True
    g.sampler = {"kind": "ddim", "steps": 50, "eta": 0.0, "guidance": 1.0, "clip_x0": True}
    # A source spec (e.g. "phantom-a" or /data/Kvasir-SEG@train): each generated image's colour
    # histograms are matched to one of its frames (skimage match_histograms); "" leaves colours as sampled.
    g.color_reference = ""
    g.mode = "sample"  # sample | inpaint (the paper's RePaint) | paint (label-exact) | sdedit | from_masks
    g.source = ""  # inpaint / paint / sdedit: the real frames (a source spec); pair i uses frame source_frame(seed, i)
    # RePaint at the paper's settings (200 respaced steps, jumps of 10, 5 samples: 960 UNet calls per
    # pair); sampler="repaint_ddim" with e.g. steps=25, jump_length=5, jump_n_sample=2 is the fast variant.
    # region: the real mask dilated by an ellipse of radius `dilation` px (-1: the paper's 20x20 px at
    # 256 px, scaled with the image size), or "ellipse" drawn from the source's mask areas.
    g.inpaint = {"sampler": "repaint", "steps": 200, "jump_length": 10, "jump_n_sample": 5,
                 "region": "dilated_mask", "dilation": -1}
    # paint (label-exact, two_stage generators): a real polyp mask of another frame of `source`,
    # scaled, rotated and flipped (the copy-paste draws below), is placed in the frame and the
    # mask-conditioned image model paints the frame inside the placed mask dilated as `inpaint`
    # says, with inpaint's sampler settings; the label is the placed mask, exactly. placement
    # "away": on mucosa away from the frame's own polyp (label = union of both); "replace": the
    # own polyp is painted over as mucosa (the region covers it too) and the label is the new mask.
    g.paint = ml_collections.ConfigDict({"placement": "away", "copy_paste": configlib.copy_paste_config()})
    g.sdedit = {"strength": 0.5}  # fraction of the sampler's steps the real pair is noised to
    g.masks = ""  # from_masks: a folder of mask images (any size; resized to the model's)
    g.images_per_mask = 1  # from_masks: pairs per mask (then the count is masks x images_per_mask)
    # Optional quality filter: generation goes on (indices past N, deterministically) until N pass.
    g.filter = {"enabled": False, "min_mask_fraction": 0.0, "max_components": 0,
                "segmenter_workdir": "", "min_dice": 0.0}
    g.writer_threads = 2  # host threads post-processing and writing while the device samples
    config.generate = g
    return config
