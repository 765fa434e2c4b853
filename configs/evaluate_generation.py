"""Generation metrics of one or more generated folders against real data.

    python -m polypjax.main --config=configs/evaluate_generation.py --workdir=runs/eval \
        --config.evaluate.generated=/path/to/generated[,/path/to/other] \
        [--config.evaluate.real=/path/to/Kvasir-SEG@train] \
        [--config.evaluate.inception_weights=fid_inception.npz] \
        [--config.evaluate.real_stats=runs/kvasir_train_stats.npz] \
        [--config.evaluate.segmenter_workdir=runs/seg_real]

Writes generation_metrics.{json,md}: FID and KID (only with the real FID Inception weights, see
tools/convert_fid_inception.py), MS-SSIM diversity, mask statistics and their distances to the
real masks, and label consistency (a segmenter trained on real data scored against the generated
masks).
"""
import ml_collections

from polypjax import configlib


def get_config():
    config = configlib.base_config("evaluate_generation")
    # Phantom frames are rendered at data.phantom_size (follows data.image_size).
    config.data.image_size = 256
    e = ml_collections.ConfigDict()
    e.real = "phantom-a"  # a source spec; default split: train (what a generator learns from)
    e.generated = ""  # comma-separated generated folders (Kvasir layout); must be given
    e.image_size = 256  # images are resized to this square size before Inception; 0: native size
    e.batch_size = 32  # global batch of the feature / segmenter passes (a multiple of the devices)
    e.inception_weights = ""  # converted FID Inception .npz; without it FID/KID are "unavailable"
    e.inception_dtype = "float32"  # or bfloat16 (faster on accelerators; FID drifts slightly)
    e.real_stats = ""  # optional .npz cache of the real features' mu/sigma (pytorch-fid format)
    e.kid_subsets = 100
    e.kid_subset_size = 1000
    e.msssim_pairs = 1000  # random distinct pairs per set for the MS-SSIM diversity
    e.msssim_size = 256  # MS-SSIM's 5 scales need a smaller side > 160
    e.segmenter_workdir = ""  # a train_segmentation workdir (real data) for label consistency
    config.evaluate = e
    return config
