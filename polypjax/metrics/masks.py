"""Per-mask shape statistics of a set of polyp masks, and distances between two sets of them.

Generated masks should look like real ones in size, count, shape and placement, not only
overlap-wise.  Each mask gives one value per statistic (host numpy + scikit-image regionprops);
two sets are compared statistic by statistic with the 1-D Wasserstein distance, which is in the
statistic's own units (e.g. an area-fraction W1 of 0.02 means areas differ by ~2% of the image).

Statistics (arrays of length N):
  area_fraction      foreground pixels / image pixels
  num_components     8-connected foreground components
  eccentricity       of the largest component (0 = circle; NaN for an empty mask)
  solidity           area / convex-hull area of the largest component (NaN for an empty mask)
  touches_border     any foreground pixel on the image border (bool)
  centroid_y/_x      foreground centroid, (row + 0.5) / H and (col + 0.5) / W (NaN if empty)
"""
import numpy as np
import scipy.stats
from skimage.measure import label, regionprops

STATISTICS = ("area_fraction", "num_components", "eccentricity", "solidity", "touches_border",
              "centroid_y", "centroid_x")


def _binary(mask):
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise ValueError(f"a mask must be HxW (or HxWx1), got shape {mask.shape}")
    # Float masks may be soft (probabilities); integer/bool ones are {0,1} or {0,255}.
    return mask > 0.5 if np.issubdtype(mask.dtype, np.floating) else mask > 0


def _one_mask(mask):
    m = _binary(mask)
    h, w = m.shape
    out = dict(area_fraction=m.mean(), num_components=0, eccentricity=np.nan, solidity=np.nan,
               touches_border=bool(m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any()),
               centroid_y=np.nan, centroid_x=np.nan)
    if not m.any():
        return out
    labels, count = label(m, connectivity=2, return_num=True)
    largest = max(regionprops(labels), key=lambda r: r.area)
    ys, xs = np.nonzero(m)
    out.update(num_components=count, eccentricity=largest.eccentricity,
               solidity=largest.solidity, centroid_y=(ys.mean() + 0.5) / h,
               centroid_x=(xs.mean() + 0.5) / w)
    return out


def mask_statistics(masks):
    """{statistic: [N] array} for masks given as [N,H,W(,1)] or a sequence of HxW arrays."""
    per_mask = [_one_mask(m) for m in masks]
    dtypes = {"num_components": np.int64, "touches_border": bool}
    return {k: np.array([p[k] for p in per_mask], dtype=dtypes.get(k, np.float64))
            for k in STATISTICS}


def statistic_distances(real_stats, synth_stats):
    """{statistic: Wasserstein-1 distance} between two `mask_statistics` results.

    NaNs (empty masks have no shape) are left out of both sides; a statistic with no finite
    value on one side gets NaN.  For touches_border W1 is the difference of the two fractions.
    """
    out = {}
    for key in STATISTICS:
        if key not in real_stats or key not in synth_stats:
            continue
        a = np.asarray(real_stats[key], np.float64)
        b = np.asarray(synth_stats[key], np.float64)
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
        out[key] = (float(scipy.stats.wasserstein_distance(a, b)) if len(a) and len(b)
                    else float("nan"))
    return out


def summarize(stats):
    """{statistic: mean over masks} (NaNs ignored); touches_border becomes a fraction."""
    out = {}
    for key, values in stats.items():
        v = np.asarray(values, np.float64)
        out[key] = float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
    return out


def markdown_table(columns, digits=4, row_header="statistic"):
    """Markdown table with one row per statistic and one column per {name: {statistic: value}}.

    e.g. markdown_table({"real mean": summarize(r), "synthetic mean": summarize(s),
                         "W1": statistic_distances(r, s)})
    """
    names = list(columns)
    rows = [k for k in STATISTICS if any(k in columns[n] for n in names)]
    rows += sorted({k for n in names for k in columns[n]} - set(rows))

    def fmt(v):
        if v is None:
            return ""
        v = float(v)
        return "nan" if np.isnan(v) else f"{v:.{digits}f}"

    lines = ["| " + " | ".join([row_header] + names) + " |",
             "|" + "---|" * (len(names) + 1)]
    for r in rows:
        lines.append("| " + " | ".join([r] + [fmt(columns[n].get(r)) for n in names]) + " |")
    return "\n".join(lines) + "\n"
