"""Training data of the segmentation regimes (`config.regime.kind`), the paper's comparisons:

- `real`: the real training set (`data.train`), optional subset of N images (`regime.real_subset`);
- `real_augment`: the same with classic augmentation switched on (the baseline a synthetic set
  must beat); the same as `real` with `regime.augment`;
- `copy_paste`: the real pairs, into which, with probability `regime.copy_paste.probability`, each
  drawn example gets polyps cut from other pairs of the same real source (subset included) pasted
  (`data/copy_paste.py`): the label-exact, generator-free alternative to a synthetic set, under
  the same data-access rule;
- `synthetic`: only the generated folder (`data.synthetic`);
- `mixed`: real and synthetic streams interleaved in the ratio `regime.synthetic_fraction`;
- `replace`: the paper's rule: each real example drawn is replaced by a random synthetic one with
  probability `regime.alpha` (decided per draw, so every epoch sees a different replacement).

Augmentation is orthogonal to the data source: `regime.augment` switches classic augmentation on
for any regime, after the regime's own data (pastes included).
"""
from __future__ import annotations

from polypjax.configlib import ConfigError
from polypjax.data import catalog, sources

REGIMES = ("real", "real_augment", "copy_paste", "synthetic", "mixed", "replace")
AUGMENTED = "+aug"  # a pipeline regime name with this suffix runs that regime with classic augmentation on


def classic_augmentation(augment):
    """The real+augmentation baseline: flips, rotations, scale/shift and colour jitter."""
    a = augment.copy_and_resolve_references() if hasattr(augment, "copy_and_resolve_references") else augment
    a = a.unlock() if hasattr(a, "unlock") else a
    a.update(enabled=True, rotate_deg=max(a.rotate_deg, 20.0), scale=max(a.scale, 0.15),
             shift=max(a.shift, 0.05), brightness=max(a.brightness, 0.1), contrast=max(a.contrast, 0.1),
             hue=max(a.hue, 0.02))
    return a


def augmentation(config):
    """The augmentation config of the run: classic under `real_augment` or `regime.augment`."""
    if config.regime.kind == "real_augment" or config.regime.get("augment", False):
        return classic_augmentation(config.data.augment)
    return config.data.augment


def paste_donors(config, train_sources):
    """The source whose polyps the copy_paste regime pastes: its own real source (the subset, when
    there is one), never more data than the regime trains on; None for other regimes."""
    return train_sources[0] if config.regime.kind == "copy_paste" else None


def training_sources(config):
    """-> (sources, weights, replacement source) for the configured regime."""
    c, r = config.data, config.regime
    if r.kind in ("synthetic", "mixed", "replace") and not c.synthetic:
        raise ConfigError(f"config.regime.kind={r.kind!r} needs config.data.synthetic (a generated folder)")
    real = None
    if r.kind != "synthetic":
        real = catalog.make_source(c.train, c, default_split="train", seed=config.seed)
        if r.real_subset:
            real = sources.random_subset(real, r.real_subset, seed=catalog.data_seed(c, config.seed))
    synth = catalog.make_source(c.synthetic, c, default_split="all", seed=config.seed) if c.synthetic else None
    if r.kind in ("real", "real_augment", "copy_paste"):
        return [real], None, None
    if r.kind == "synthetic":
        return [synth], None, None
    if r.kind == "mixed":
        f = r.synthetic_fraction
        return [real, synth], [1.0 - f, f], None
    return [real], None, synth  # replace
