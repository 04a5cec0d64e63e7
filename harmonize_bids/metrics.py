"""Metrics that judge MRI harmonization.

A harmonized T1w image is compared with the true image of the same anatomy at
the target site, inside a brain mask.  Images are 3D float arrays on the same
grid; masks are boolean arrays of the same shape (any non-zero value is taken
as "inside").

Normalization
-------------
Every comparison metric (:func:`mae`, :func:`psnr`, :func:`correlation`,
:func:`ssim3d`, :func:`intensity_wasserstein`, :func:`flicker`,
:func:`slice_jumps`, :func:`compare`) first applies **the same** robust
normalization to each image, :func:`robust_normalize`::

    x' = (x - p_1) / (p_99 - p_1)      inside the mask,   x' = 0 outside,

where ``p_1`` and ``p_99`` are the 1st and 99th percentiles of that image's
in-mask intensities.  Each image is normalized with its own percentiles, so a
global gain/offset difference between sites is not counted as an error, and
``data_range=1.0`` is the natural range for PSNR and SSIM.  Pass
``normalize=False`` to compare raw intensities instead.

All functions are pure; the only randomness (sub-sampling and initialisation
in :func:`tissue_segmentation`, fold shuffling in :func:`site_predictability`)
is driven by an explicit ``random_state``.  scikit-learn is imported lazily,
only by the two functions that need it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage as ndi
from scipy import stats

__all__ = [
    "robust_normalize",
    "mae",
    "psnr",
    "correlation",
    "ssim3d",
    "wasserstein",
    "intensity_wasserstein",
    "dice",
    "tissue_segmentation",
    "tissue_dice",
    "flicker",
    "slice_jumps",
    "site_histogram_features",
    "site_predictability",
    "compare",
]

TISSUE_NAMES = ("csf", "gm", "wm")
_MAX_GMM_SAMPLES = 200_000


# --------------------------------------------------------------------------- #
# input checking
# --------------------------------------------------------------------------- #
def _as_mask(mask: ArrayLike, shape: tuple[int, ...] | None = None) -> NDArray[np.bool_]:
    """Return ``mask`` as a boolean array (non-zero = inside), checking its shape."""
    m = np.asarray(mask)
    if m.dtype != np.bool_:
        m = m != 0
    if shape is not None and m.shape != shape:
        raise ValueError(f"mask shape {m.shape} does not match image shape {shape}")
    return m


def _as_image(image: ArrayLike, name: str = "image") -> NDArray[np.float64]:
    x = np.asarray(image, dtype=np.float64)
    if x.ndim == 0:
        raise ValueError(f"{name} must be an array, not a scalar")
    return x


def _check_in_mask(x: NDArray[np.float64], mask: NDArray[np.bool_], name: str) -> None:
    if not mask.any():
        raise ValueError("mask is empty")
    if not np.isfinite(x[mask]).all():
        raise ValueError(f"{name} has non-finite values inside the mask")


def _prepare_pair(
    a: ArrayLike, b: ArrayLike, mask: ArrayLike, normalize: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Check two images and a mask on one grid; normalize both if asked."""
    xa, xb = _as_image(a, "a"), _as_image(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"image shapes differ: {xa.shape} vs {xb.shape}")
    m = _as_mask(mask, xa.shape)
    _check_in_mask(xa, m, "a")
    _check_in_mask(xb, m, "b")
    if normalize:
        xa, xb = robust_normalize(xa, m), robust_normalize(xb, m)
    return xa, xb, m


# --------------------------------------------------------------------------- #
# normalization
# --------------------------------------------------------------------------- #
def robust_normalize(
    image: ArrayLike, mask: ArrayLike, low: float = 1.0, high: float = 99.0
) -> NDArray[np.float64]:
    """Map the in-mask ``low``/``high`` percentiles of ``image`` to 0 and 1.

    ``x' = (x - p_low) / (p_high - p_low)`` inside the mask, ``0`` outside,
    with the percentiles (linear interpolation) taken over in-mask voxels only.
    Values beyond the percentiles are not clipped.

    Parameters
    ----------
    image : array
        Intensities.
    mask : bool array, same shape as ``image``
        Voxels to use (and keep).
    low, high : float
        Percentiles, ``0 <= low < high <= 100``.

    Returns
    -------
    float64 array, same shape as ``image``.

    Raises
    ------
    ValueError
        Empty mask, non-finite in-mask values, bad percentiles, or
        ``p_high == p_low`` (no contrast to normalize).

    Examples
    --------
    >>> x = np.arange(5.0)
    >>> robust_normalize(x, np.ones(5, bool), low=0, high=100).tolist()
    [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    x = _as_image(image)
    m = _as_mask(mask, x.shape)
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"need 0 <= low < high <= 100, got low={low}, high={high}")
    _check_in_mask(x, m, "image")
    values = x[m]
    p_low, p_high = np.percentile(values, [low, high])
    span = p_high - p_low
    if not span > 0:
        raise ValueError(
            f"percentiles {low} and {high} of the in-mask intensities are equal "
            f"({p_low!r}); cannot normalize a constant image"
        )
    out = np.zeros(x.shape, dtype=np.float64)
    out[m] = (values - p_low) / span
    return out


# --------------------------------------------------------------------------- #
# voxel-wise comparisons
# --------------------------------------------------------------------------- #
def mae(a: ArrayLike, b: ArrayLike, mask: ArrayLike, normalize: bool = True) -> float:
    """Mean absolute error inside the mask.

    ``MAE = (1/|M|) * sum_{v in M} |a_v - b_v|`` (after normalization).

    Examples
    --------
    >>> a = np.zeros((2, 2, 1)); b = np.full((2, 2, 1), 0.5)
    >>> mae(a, b, np.ones(a.shape, bool), normalize=False)
    0.5
    """
    xa, xb, m = _prepare_pair(a, b, mask, normalize)
    return float(np.mean(np.abs(xa[m] - xb[m])))


def psnr(
    a: ArrayLike,
    b: ArrayLike,
    mask: ArrayLike,
    data_range: float = 1.0,
    normalize: bool = True,
) -> float:
    """Peak signal-to-noise ratio inside the mask, in dB.

    ``PSNR = 10 * log10(R^2 / MSE)`` with ``MSE = (1/|M|) sum_{v in M} (a_v - b_v)^2``
    and ``R = data_range`` (1.0 suits normalized images).  Returns ``inf`` when
    the images are identical inside the mask.

    Examples
    --------
    >>> a = np.zeros((2, 2, 1)); b = np.full((2, 2, 1), 0.1)
    >>> round(psnr(a, b, np.ones(a.shape, bool), normalize=False), 6)
    20.0
    """
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    xa, xb, m = _prepare_pair(a, b, mask, normalize)
    mse = float(np.mean((xa[m] - xb[m]) ** 2))
    if mse == 0.0:
        return math.inf
    return float(10.0 * np.log10(data_range**2 / mse))


def correlation(a: ArrayLike, b: ArrayLike, mask: ArrayLike, normalize: bool = True) -> float:
    """Pearson correlation of the in-mask intensities.

    ``r = sum (a - mean a)(b - mean b) / sqrt(sum (a - mean a)^2 * sum (b - mean b)^2)``
    over mask voxels.  (Pearson's r is invariant to the linear normalization;
    ``normalize`` is kept for a uniform signature.)  Returns ``nan`` when either
    image is constant inside the mask (only possible with ``normalize=False``).
    """
    xa, xb, m = _prepare_pair(a, b, mask, normalize)
    da = xa[m] - xa[m].mean()
    db = xb[m] - xb[m].mean()
    denom = math.sqrt(float(np.dot(da, da)) * float(np.dot(db, db)))
    if denom == 0.0:
        return math.nan
    return float(np.clip(np.dot(da, db) / denom, -1.0, 1.0))


def _bbox_slices(mask: NDArray[np.bool_], margin: int) -> tuple[slice, ...]:
    """Bounding box of ``mask`` grown by ``margin`` voxels, clipped to the array."""
    slices = []
    for axis in range(mask.ndim):
        other = tuple(i for i in range(mask.ndim) if i != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        lo = max(int(idx[0]) - margin, 0)
        hi = min(int(idx[-1]) + 1 + margin, mask.shape[axis])
        slices.append(slice(lo, hi))
    return tuple(slices)


def ssim3d(
    a: ArrayLike,
    b: ArrayLike,
    mask: ArrayLike,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
    normalize: bool = True,
) -> float:
    """Structural similarity with Gaussian-weighted local statistics, mean over the mask.

    With ``G`` a Gaussian filter of width ``sigma`` voxels,
    ``mu_a = G(a)``, ``s_a^2 = G(a^2) - mu_a^2``, ``s_ab = G(a b) - mu_a mu_b``,
    ``C1 = (k1 R)^2``, ``C2 = (k2 R)^2``, ``R = data_range``::

        SSIM_v = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))

    and the result is the mean of ``SSIM_v`` over mask voxels.  Filtering runs
    on the images cropped to the mask's bounding box plus ``ceil(3 sigma)``
    voxels (``reflect`` boundary beyond that); voxels outside the mask keep
    their (normalized: zero) values and so enter the local statistics near the
    brain edge identically for both images.  Identical images give exactly 1.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    if not (k1 > 0 and k2 > 0):
        raise ValueError("k1 and k2 must be positive")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    xa, xb, m = _prepare_pair(a, b, mask, normalize)
    box = _bbox_slices(m, int(math.ceil(3.0 * sigma)))
    xa, xb, m = xa[box], xb[box], m[box]

    def g(x: NDArray[np.float64]) -> NDArray[np.float64]:
        return ndi.gaussian_filter(x, sigma=sigma, mode="reflect")

    mu_a, mu_b = g(xa), g(xb)
    var_a = g(xa * xa) - mu_a * mu_a
    var_b = g(xb * xb) - mu_b * mu_b
    cov = g(xa * xb) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2.0 * mu_a * mu_b + c1) * (2.0 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return float(np.mean(num[m] / den[m]))


# --------------------------------------------------------------------------- #
# intensity distributions
# --------------------------------------------------------------------------- #
def wasserstein(a_values: ArrayLike, b_values: ArrayLike) -> float:
    """1D Wasserstein-1 (earth mover's) distance between two intensity samples.

    ``W1 = integral |F_a(t) - F_b(t)| dt`` with ``F`` the empirical CDFs
    (:func:`scipy.stats.wasserstein_distance`).  Inputs are flattened.

    Examples
    --------
    >>> wasserstein([0.0, 1.0], [1.0, 2.0])
    1.0
    """
    va = np.asarray(a_values, dtype=np.float64).ravel()
    vb = np.asarray(b_values, dtype=np.float64).ravel()
    if va.size == 0 or vb.size == 0:
        raise ValueError("intensity samples must not be empty")
    if not (np.isfinite(va).all() and np.isfinite(vb).all()):
        raise ValueError("intensity samples must be finite")
    return float(stats.wasserstein_distance(va, vb))


def intensity_wasserstein(
    a: ArrayLike,
    b: ArrayLike,
    mask_a: ArrayLike,
    mask_b: ArrayLike | None = None,
    normalize: bool = True,
) -> float:
    """Wasserstein-1 distance between the in-mask intensity distributions of two images.

    ``W1(a'[M_a], b'[M_b])`` where ``a' = robust_normalize(a, M_a)`` and
    ``b' = robust_normalize(b, M_b)``; each image uses its own mask, so the two
    need not share a grid.  ``mask_b`` defaults to ``mask_a`` (then the shapes
    must agree).  Because of the normalization the value is invariant to a
    global ``x -> c x + d`` (``c > 0``) rescale of either image.
    """
    xa = _as_image(a, "a")
    xb = _as_image(b, "b")
    ma = _as_mask(mask_a, xa.shape)
    mb = ma if mask_b is None else _as_mask(mask_b)
    if mb.shape != xb.shape:
        raise ValueError(f"mask_b shape {mb.shape} does not match b's shape {xb.shape}")
    _check_in_mask(xa, ma, "a")
    _check_in_mask(xb, mb, "b")
    if normalize:
        xa, xb = robust_normalize(xa, ma), robust_normalize(xb, mb)
    return wasserstein(xa[ma], xb[mb])


# --------------------------------------------------------------------------- #
# segmentation overlap
# --------------------------------------------------------------------------- #
def dice(a: ArrayLike, b: ArrayLike) -> float:
    """Dice overlap of two masks: ``2 |A & B| / (|A| + |B|)``, 1.0 when both are empty.

    Examples
    --------
    >>> dice([1, 1, 0, 0], [1, 0, 1, 0])
    0.5
    """
    ma, mb = _as_mask(a), _as_mask(b)
    if ma.shape != mb.shape:
        raise ValueError(f"mask shapes differ: {ma.shape} vs {mb.shape}")
    total = int(ma.sum()) + int(mb.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(ma, mb).sum() / total)


def tissue_segmentation(
    image: ArrayLike,
    mask: ArrayLike,
    n_classes: int = 3,
    random_state: int | None = 0,
) -> NDArray[np.int_]:
    """Intensity-only tissue classes from a 1D Gaussian mixture.

    A ``GaussianMixture(n_components=n_classes)`` is fitted to the in-mask
    intensities, z-scored (``(x - mean) / std``, which does not change the
    partition), using at most 200000 of the sorted values drawn without
    replacement with ``np.random.default_rng(random_state)`` (sorted first, so the
    result does not depend on the voxel order); every in-mask voxel then gets its
    most probable component.  Labels are ordered by increasing component mean
    and numbered from 1 (for T1w and 3 classes: 1 = CSF, 2 = GM, 3 = WM);
    voxels outside the mask are 0.

    Returns
    -------
    int array, same shape as ``image``.
    """
    from sklearn.mixture import GaussianMixture

    x = _as_image(image)
    m = _as_mask(mask, x.shape)
    _check_in_mask(x, m, "image")
    n_classes = int(n_classes)
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    values = x[m]
    if values.size < n_classes:
        raise ValueError(f"mask has {values.size} voxels, fewer than n_classes={n_classes}")
    # fit on the sorted values, so the classes do not depend on the voxel order
    # (the same brain stored in another orientation gets the same classes)
    ordered = np.sort(values.astype(np.float64))
    mean, std = float(ordered.mean()), float(ordered.std())
    if std == 0.0:
        raise ValueError("image is constant inside the mask; cannot segment")
    fit_on = ((ordered - mean) / std).reshape(-1, 1)
    rng = np.random.default_rng(random_state)
    if fit_on.shape[0] > _MAX_GMM_SAMPLES:
        fit_on = fit_on[rng.choice(fit_on.shape[0], size=_MAX_GMM_SAMPLES, replace=False)]
    seed = None if random_state is None else int(random_state)
    gmm = GaussianMixture(n_components=n_classes, random_state=seed).fit(fit_on)
    raw = gmm.predict(((values - mean) / std).reshape(-1, 1))
    order = np.argsort(gmm.means_.ravel())  # order[k] = component with k-th smallest mean
    relabel = np.empty(n_classes, dtype=np.int_)
    relabel[order] = np.arange(1, n_classes + 1)
    labels = np.zeros(x.shape, dtype=np.int_)
    labels[m] = relabel[raw]
    return labels


def tissue_dice(
    image: ArrayLike,
    mask: ArrayLike,
    tissue_map: ArrayLike,
    random_state: int | None = 0,
) -> dict[str, float]:
    """Dice of :func:`tissue_segmentation` of ``image`` against a reference tissue map.

    The reference uses labels 1 = CSF, 2 = GM, 3 = WM.  For each class ``k``,
    ``Dice_k = dice(seg == k, ref == k)`` with both restricted to the mask;
    ``"mean"`` is the unweighted mean of the three.

    Returns
    -------
    dict with keys ``"csf"``, ``"gm"``, ``"wm"``, ``"mean"``.
    """
    x = _as_image(image)
    m = _as_mask(mask, x.shape)
    ref = np.asarray(tissue_map)
    if ref.shape != x.shape:
        raise ValueError(f"tissue_map shape {ref.shape} does not match image shape {x.shape}")
    seg = tissue_segmentation(x, m, n_classes=len(TISSUE_NAMES), random_state=random_state)
    out = {
        name: dice((seg == k) & m, (ref == k) & m)
        for k, name in enumerate(TISSUE_NAMES, start=1)
    }
    out["mean"] = float(np.mean([out[name] for name in TISSUE_NAMES]))
    return out


# --------------------------------------------------------------------------- #
# inter-slice consistency
# --------------------------------------------------------------------------- #
def _mean_abs_diff(d: NDArray[np.float64], mask: NDArray[np.bool_], axis: int) -> float:
    """Mean of ``|d[v + e_axis] - d[v]|`` over pairs with both voxels in the mask."""
    diffs = np.abs(np.diff(d, axis=axis))
    head = [slice(None)] * d.ndim
    tail = [slice(None)] * d.ndim
    head[axis], tail[axis] = slice(None, -1), slice(1, None)
    both = mask[tuple(head)] & mask[tuple(tail)]
    if not both.any():
        raise ValueError(f"no pair of neighbouring mask voxels along axis {axis}")
    return float(diffs[both].mean())


def flicker(
    source: ArrayLike,
    harmonized: ArrayLike,
    mask: ArrayLike,
    axis: int = 2,
    normalize: bool = True,
) -> float:
    """Inter-slice consistency of the change made by harmonization.

    With the change ``D = normalize(harmonized) - normalize(source)`` and
    ``g_j = mean |D[v + e_j] - D[v]|`` over voxel pairs along axis ``j`` whose
    both voxels are in the mask (forward differences, :func:`numpy.diff`)::

        flicker = g_axis / ((g_j + g_k) / 2),      j, k = the two other axes.

    About 1 for a change that is equally smooth in all directions; > 1 when
    slices along ``axis`` were processed inconsistently (e.g. 2D slice-wise
    models).  Returns 0.0 when ``D`` is numerically zero in the mask and
    ``inf`` if ``D`` varies only across slices (constant within every slice).
    """
    xs, xh, m = _prepare_pair(source, harmonized, mask, normalize)
    if xs.ndim != 3:
        raise ValueError(f"flicker needs 3D images, got {xs.ndim}D")
    if not -3 <= axis < 3:
        raise ValueError(f"axis must be in [-3, 2], got {axis}")
    axis %= 3
    d = np.where(m, xh - xs, 0.0)
    scale = max(1.0, float(np.abs(xs[m]).max()), float(np.abs(xh[m]).max()))
    if float(np.abs(d[m]).max()) <= 1e-12 * scale:
        return 0.0
    across = _mean_abs_diff(d, m, axis)
    others = [j for j in range(3) if j != axis]
    within = 0.5 * sum(_mean_abs_diff(d, m, j) for j in others)
    if within == 0.0:
        return math.inf
    return float(across / within)


def slice_jumps(
    source: ArrayLike,
    harmonized: ArrayLike,
    mask: ArrayLike,
    axis: int = 2,
    normalize: bool = True,
) -> float:
    """Slice-to-slice jumps in the overall level of the change made by harmonization.

    With the change ``D = normalize(harmonized) - normalize(source)``, ``d_z`` its
    mean over the in-mask voxels of slice ``z`` (along ``axis``) and ``n_z`` their
    number::

        slice_jumps = sqrt( sum_z w_z (d_{z+1} - d_z)^2 / sum_z w_z ),   w_z = min(n_z, n_{z+1}),

    over consecutive slices that both hold mask voxels, in units of the
    normalized intensity range.  0 for an unchanged image or any change whose
    level is the same in every slice; a slice-wise model whose slices each find
    their own brightness scores high even when :func:`flicker`, which looks at
    voxel-to-voxel differences, does not notice.

    >>> src = np.ones((4, 4, 4)); m = np.ones_like(src, bool)
    >>> h = src + np.array([0.0, 0.1, 0.0, 0.1])    # every other slice brighter
    >>> round(slice_jumps(src, h, m, normalize=False), 6)
    0.1
    """
    from harmonize_bids.utils.slices import slice_means

    xs, xh, m = _prepare_pair(source, harmonized, mask, normalize)
    if xs.ndim != 3:
        raise ValueError(f"slice_jumps needs 3D images, got {xs.ndim}D")
    level, count = slice_means(xh - xs, m, axis)
    weight = np.minimum(count[:-1], count[1:])
    if not weight.any():
        raise ValueError(f"no two neighbouring slices along axis {axis} hold mask voxels")
    return float(np.sqrt(np.sum(weight * np.diff(level) ** 2) / weight.sum()))


# --------------------------------------------------------------------------- #
# site effect remaining
# --------------------------------------------------------------------------- #
def site_histogram_features(
    images: Sequence[ArrayLike], masks: Sequence[ArrayLike], n_bins: int = 32
) -> NDArray[np.float64]:
    """What :func:`site_predictability` classifies: one row per image, the density
    histogram (``n_bins`` bins on ``[0, 1.2]``) of its robust-normalized in-mask
    intensities clipped to ``[0, 1.2]``."""
    feats = []
    for i, (img, msk) in enumerate(zip(images, masks)):
        x = _as_image(img, f"images[{i}]")
        m = _as_mask(msk, x.shape)
        v = np.clip(robust_normalize(x, m)[m], 0.0, 1.2)
        hist, _ = np.histogram(v, bins=n_bins, range=(0.0, 1.2), density=True)
        feats.append(hist)
    return np.asarray(feats, dtype=np.float64)


def site_classifier():
    """The classifier :func:`site_predictability` cross-validates:
    ``StandardScaler -> LogisticRegression(max_iter=1000)`` (unfitted)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))


def site_splits(
    sites: Sequence[Any],
    n_splits: int = 5,
    random_state: int = 0,
    groups: Sequence[Any] | None = None,
):
    """The cross-validation :func:`repeated_site_accuracy` uses for one repeat.

    Without ``groups``: ``StratifiedKFold(n_splits=min(n_splits, smallest site
    count), shuffle=True)``.  With ``groups`` (the subject each image shows, e.g. the
    label map a traveling subject was rendered from): ``StratifiedGroupKFold`` with
    ``min(n_splits, number of subjects)`` folds, so a subject's images are never on
    both sides of a split and the classifier is scored on people it never saw.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(sites)
    if groups is None:
        folds = int(min(n_splits, np.unique(labels, return_counts=True)[1].min()))
        return StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(random_state))
    n_groups = np.unique(np.asarray(groups)).size
    if n_groups < 2:
        raise ValueError(f"grouped folds need at least 2 subjects, got {n_groups}")
    return StratifiedGroupKFold(n_splits=int(min(n_splits, n_groups)), shuffle=True,
                                random_state=int(random_state))


def site_fold_accuracies(
    features: ArrayLike,
    sites: Sequence[Any],
    n_splits: int = 5,
    random_state: int = 0,
    n_repeats: int = 10,
    groups: Sequence[Any] | None = None,
) -> list[NDArray[np.float64]]:
    """Accuracy of :func:`site_classifier` telling ``sites`` from ``features`` (one row
    per image) in every test fold of every repeat: repeat ``r`` splits with
    :func:`site_splits` (``random_state + r``), plain stratified folds or folds grouped
    by subject when ``groups`` is given.  Needs every site at least twice."""
    from sklearn.model_selection import cross_val_score

    labels = np.asarray(sites)
    x = np.asarray(features, dtype=np.float64)
    return [cross_val_score(site_classifier(), x, labels, scoring="accuracy", groups=groups,
                            cv=site_splits(labels, n_splits, int(random_state) + r, groups))
            for r in range(int(n_repeats))]


def repeated_site_accuracy(
    features: ArrayLike,
    sites: Sequence[Any],
    n_splits: int = 5,
    random_state: int = 0,
    n_repeats: int = 10,
    groups: Sequence[Any] | None = None,
) -> tuple[float, float]:
    """(mean, sd) over ``n_repeats`` of the cross-validated accuracy of
    :func:`site_classifier` (:func:`site_fold_accuracies`, each repeat's folds
    averaged).  :func:`site_predictability` scores its histograms with it, and
    benchmarks can score other features (e.g. tissue fractions) the same way.
    """
    summary = _fold_summary(site_fold_accuracies(features, sites, n_splits, random_state,
                                                 n_repeats, groups))
    return summary["accuracy"], summary["accuracy_sd"]


def _fold_summary(folds: list[NDArray[np.float64]]) -> dict[str, float]:
    """Mean and sd over repeats of each repeat's mean fold accuracy, and the lowest and
    highest single fold."""
    repeats = [float(np.mean(f)) for f in folds]
    return {"accuracy": float(np.mean(repeats)), "accuracy_sd": float(np.std(repeats)),
            "fold_min": float(min(f.min() for f in folds)),
            "fold_max": float(max(f.max() for f in folds))}


def site_predictability(
    images: Sequence[ArrayLike],
    masks: Sequence[ArrayLike],
    sites: Sequence[Any],
    n_bins: int = 32,
    n_splits: int = 5,
    random_state: int = 0,
    n_repeats: int = 10,
    groups: Sequence[Any] | None = None,
) -> dict[str, float | int]:
    """How well the acquisition site can be predicted from intensity histograms.

    Features: for each image, the density histogram (``n_bins`` bins on
    ``[0, 1.2]``) of its robust-normalized in-mask intensities clipped to
    ``[0, 1.2]``.  Classifier: ``StandardScaler -> LogisticRegression(max_iter=1000)``.
    Score: mean accuracy over ``StratifiedKFold(n_splits=min(n_splits, smallest
    site count), shuffle=True, random_state=random_state + r)`` for ``r`` in
    ``range(n_repeats)``: with a few images per site one split is noisy (16
    images: one image moves a split's accuracy by 0.06, and the split alone
    moved it by up to 0.25), so the splits are repeated and averaged.  After
    good harmonization ``accuracy`` should approach ``chance = 1 / n_sites``.

    ``groups`` names the subject in each image (traveling subjects: the same person
    at several sites).  With it the folds keep a subject's images together
    (:func:`site_splits`), so the classifier is asked about people it never saw, as
    a new study's scans would be; without it an image's own anatomy at other sites
    is in the training folds and the score can read lower than the site effect a
    new subject shows (session 31, ``docs/model.md``).

    Returns
    -------
    dict with ``"accuracy"``, ``"accuracy_sd"`` (standard deviation of the
    repeats' accuracies: how much the split alone moves it; 0 when every repeat
    is the same split, as with grouped folds and no more subjects than folds),
    ``"fold_min"`` and ``"fold_max"`` (the lowest and highest accuracy of any test
    fold: with folds by subject, how much the score depends on who is tested),
    ``"chance"``,
    ``"n_images"``, ``"n_sites"``, ``"n_repeats"``, ``"grouped"`` (whether the folds
    were grouped by subject).

    Raises
    ------
    ValueError
        Mismatched lengths, fewer than 2 sites, a site with fewer than 2 images, or
        ``groups`` with fewer than 2 subjects.
    """
    n = len(images)
    if len(masks) != n or len(sites) != n or (groups is not None and len(groups) != n):
        lengths = (n, len(masks), len(sites)) + (() if groups is None else (len(groups),))
        raise ValueError(f"images, masks, sites (and groups) must have the same length {lengths}")
    if int(n_bins) < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if int(n_splits) < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}")
    if int(n_repeats) < 1:
        raise ValueError(f"n_repeats must be >= 1, got {n_repeats}")
    labels = np.asarray(sites)
    uniq, counts = np.unique(labels, return_counts=True)
    if uniq.size < 2:
        raise ValueError(f"need at least 2 sites, got {uniq.size}")
    if counts.min() < 2:
        small = [str(s) for s, c in zip(uniq, counts) if c < 2]
        raise ValueError(f"every site needs at least 2 images; too few for: {small}")

    features = site_histogram_features(images, masks, int(n_bins))
    return {
        **_fold_summary(site_fold_accuracies(features, labels, n_splits, random_state,
                                             n_repeats, groups)),
        "chance": 1.0 / uniq.size,
        "n_images": n,
        "n_sites": int(uniq.size),
        "n_repeats": int(n_repeats),
        "grouped": groups is not None,
    }


# --------------------------------------------------------------------------- #
# bundle
# --------------------------------------------------------------------------- #
def compare(
    harmonized: ArrayLike,
    truth: ArrayLike,
    mask: ArrayLike,
    tissue_map: ArrayLike | None = None,
    random_state: int | None = 0,
) -> dict[str, float]:
    """All image-comparison metrics of a harmonized image against the target-site truth.

    Both images are robust-normalized once (see the module docstring), then
    ``ssim`` (:func:`ssim3d`), ``psnr``, ``mae``, ``correlation`` and
    ``wasserstein`` (:func:`intensity_wasserstein`) are computed; if
    ``tissue_map`` (1 = CSF, 2 = GM, 3 = WM) is given, ``tissue_dice`` is the
    mean Dice of the segmentation of ``harmonized`` against it.
    """
    xh, xt, m = _prepare_pair(harmonized, truth, mask, normalize=True)
    out = {
        "ssim": ssim3d(xh, xt, m, normalize=False),
        "psnr": psnr(xh, xt, m, normalize=False),
        "mae": mae(xh, xt, m, normalize=False),
        "correlation": correlation(xh, xt, m, normalize=False),
        "wasserstein": intensity_wasserstein(xh, xt, m, normalize=False),
    }
    if tissue_map is not None:
        out["tissue_dice"] = tissue_dice(xh, m, tissue_map, random_state=random_state)["mean"]
    return out
