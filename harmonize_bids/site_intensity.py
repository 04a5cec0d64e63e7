"""Tissue intensity landmarks of a site, and mapping an image onto them.

The diffusion model moves contrast and texture to the target site, but its
output keeps part of each source's histogram character (blur and noise widen or
shift the tissue peaks), so the source site stays predictable from the output's
histogram.  A site's *tissue landmarks* are a few intensities that belong mostly to
the scanner:

    (0.5th percentile, CSF quantiles, GM quantiles, WM quantiles, 99.5th percentile)

of a brain normalized as the model sees it (99th percentile = 1), with the
tissue classes from an intensity-only 3-class Gaussian mixture
(:func:`harmonize_bids.metrics.tissue_segmentation`).  Each tissue contributes
``k`` evenly spaced quantiles (:func:`tissue_levels`): ``k = 1`` gives its median
(the *medians* scheme: where each tissue peak sits), ``k = 3`` its quartiles (the
*quartiles* scheme: where it sits and how wide it is), ``k = 9`` its deciles (the
*deciles* scheme: the shape of each peak, tails included), ``k = 19`` its quantiles
on the 5 % grid (the *vigintiles* scheme: the finest the model stores).  A landmark
vector has ``2 + 3 k`` values, so its length says which scheme it is.  Unlike a full
histogram (which Nyúl and histogram matching impose), landmarks do not depend on
how much of each tissue a brain has, so mapping onto them leaves anatomy alone.

:func:`match_landmarks` maps an image's own landmarks piecewise-linearly onto
given ones (a monotone map: the ordering of voxels, hence edges and
structures, is kept; end segments extrapolate linearly).  The model stores the
mean landmarks of every site it knows (:func:`site_landmarks`, from its
training targets) on the 5 % grid (``k = 19``, :data:`STORED_PER_TISSUE`), which
holds the levels of every scheme, so the participant level can finish each
harmonized brain with the target site's tissue intensities; :func:`coarsen` takes
a scheme's levels out of the stored ones.

Mostly, not only: one brain's landmarks also carry the subject (its own tissue
intensities and mix), and mapping onto a site *mean* erases that part too. For a
source already at the target's contrast this costs 2.9 dB PSNR to the truth
(``docs/model.md``, "Decisions of session 24"). :func:`standardized_landmarks` keeps
where the scan stands among its own site's scans instead, from a dataset's
:func:`site_statistics` (``--keep-subject-intensities``, session 25);
:func:`subject_landmarks` keeps the ratio to the site's mean, which leaks the site.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

#: the landmark schemes by name: quantiles per tissue
SCHEMES = {"medians": 1, "quartiles": 3, "deciles": 9, "vigintiles": 19}
#: what a model stores: quantiles on the 5 % grid, which holds the levels of every scheme
STORED_PER_TISSUE = 19
TISSUES = ("csf", "gm", "wm")
#: fewest scans of a site for its mean and spread to stand for it; fewer get the plain
#: match onto the target site's landmarks.  Session 25 (``landmark_site_means.py
#: --scans-per-site``): 2 scans per site gain nothing over the plain match, 3 most of what
#: 8 gain, 4 all of it, towards both targets
MIN_SITE_IMAGES = 3


def tissue_levels(per_tissue: int) -> tuple[float, ...]:
    """The ``per_tissue`` evenly spaced quantile levels of a tissue.

    >>> tissue_levels(1), tissue_levels(3)
    ((0.5,), (0.25, 0.5, 0.75))
    """
    if int(per_tissue) < 1:
        raise ValueError(f"need at least one quantile per tissue, got {per_tissue}")
    return tuple(i / (per_tissue + 1) for i in range(1, per_tissue + 1))


def landmark_names(per_tissue: int = 1) -> tuple[str, ...]:
    """What the values of a landmark vector are, e.g. ``('p0.5', 'csf_q50', ..., 'p99.5')``."""
    levels = tissue_levels(per_tissue)
    return ("p0.5", *(f"{t}_q{round(100 * q):d}" for t in TISSUES for q in levels), "p99.5")


#: what the five numbers of a medians-scheme landmark vector are
LANDMARK_NAMES = landmark_names(1)


def per_tissue_of(landmarks: Sequence[float]) -> int:
    """How many quantiles per tissue a landmark vector holds (``ValueError`` if no scheme)."""
    n = len(landmarks)
    if n < 5 or (n - 2) % 3:
        raise ValueError(f"a landmark vector has 2 + 3 k values (k >= 1), got {n}")
    return (n - 2) // 3


def tissue_landmarks(image: np.ndarray, mask: np.ndarray, per_tissue: int = 1,
                     random_state: int = 0) -> np.ndarray:
    """The tissue landmarks (:func:`landmark_names`) of the in-mask intensities."""
    from harmonize_bids.metrics import tissue_segmentation

    levels = tissue_levels(per_tissue)
    mask = np.asarray(mask) > 0
    image = np.asarray(image, dtype=np.float64)
    labels = tissue_segmentation(image, mask, random_state=random_state)
    values = image[mask]
    inner = []
    for k in (1, 2, 3):
        tissue = image[labels == k]
        if tissue.size == 0:
            raise ValueError(f"tissue class {k} is empty; cannot compute landmarks")
        inner.extend(np.quantile(tissue, levels).tolist())
    low, high = np.percentile(values, [0.5, 99.5])
    return np.array([low, *inner, high], dtype=np.float64)


def check_landmarks(landmarks: Sequence[float]) -> np.ndarray:
    """``landmarks`` as an array, or ``ValueError`` unless ``2 + 3 k`` finite values whose
    tissue landmarks increase strictly.

    The end percentiles need not bracket them: with many quantiles per tissue the
    CSF 5 % quantile can lie below the brain's 0.5th percentile (CSF is a small
    part of a brain).  :func:`match_landmarks` uses an end only where it lies
    outside the tissue landmarks.
    """
    arr = np.asarray(landmarks, dtype=np.float64)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise ValueError(f"need a vector of finite landmarks, got {landmarks!r}")
    per_tissue_of(arr)
    if not np.all(np.diff(arr[1:-1]) > 0):
        raise ValueError(f"tissue landmarks must increase strictly, got {arr.round(4).tolist()}")
    return arr


def coarsen(landmarks: Sequence[float], per_tissue: int) -> np.ndarray:
    """The landmarks of the coarser scheme ``per_tissue`` taken out of finer ones.

    >>> coarsen([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0], 1).tolist()
    [0.1, 0.3, 0.6, 0.9, 1.0]
    """
    arr = check_landmarks(landmarks)
    have = np.asarray(tissue_levels(per_tissue_of(arr)))
    want = tissue_levels(per_tissue)
    index = [np.flatnonzero(np.isclose(have, q, rtol=0, atol=1e-9)) for q in want]
    if any(i.size == 0 for i in index):
        raise ValueError(f"levels {want} are not among the stored ones {tuple(have)}")
    k = len(have)
    keep = [0, *(1 + t * k + int(i[0]) for t in range(3) for i in index), len(arr) - 1]
    return arr[keep]


def wm_median_index(per_tissue: int) -> int:
    """Where the white-matter median sits in a landmark vector of ``per_tissue`` quantiles.

    >>> wm_median_index(1), wm_median_index(3), wm_median_index(19)
    (3, 8, 48)
    """
    if int(per_tissue) < 1 or per_tissue % 2 == 0:
        raise ValueError(f"only odd quantile counts hold the median, got {per_tissue}")
    return 1 + 2 * per_tissue + per_tissue // 2


def in_wm_units(landmarks: Sequence[float]) -> np.ndarray:
    """``landmarks`` divided by their white-matter median.

    >>> in_wm_units([0.2, 0.6, 1.0, 2.0, 2.4]).tolist()
    [0.1, 0.3, 0.5, 1.0, 1.2]
    """
    arr = check_landmarks(landmarks)
    wm = arr[wm_median_index(per_tissue_of(arr))]
    if wm <= 0:
        raise ValueError("landmarks must be positive to put them in white-matter units")
    return arr / wm


def subject_landmarks(target_site: Sequence[float], source_site: Sequence[float],
                      source_own: Sequence[float]) -> np.ndarray:
    """The target site's landmarks moved by one scan's deviation from its own site's mean.

    A scan's landmarks are part scanner, part subject: two brains scanned alike differ
    in their tissue intensities (and their tissue mix moves the quantiles).  Mapping
    every output onto the target site's *mean* landmarks also erases that subject part.
    When the source scan's site is known (``source_site``, its mean landmarks), its
    deviation from them is carried over: every vector is put in units of its own
    white-matter median, and ``target * own / site`` (in those units) is returned at
    the target's scale.  A scan that sits on its site's mean gets ``target_site``; one
    from a site identical to the target keeps its own landmarks.

    >>> t = [0.1, 0.3, 0.6, 0.8, 1.0]
    >>> subject_landmarks(t, [0.2, 0.4, 0.7, 1.0, 1.2], [0.2, 0.4, 0.7, 1.0, 1.2]).round(6).tolist()
    [0.1, 0.3, 0.6, 0.8, 1.0]
    >>> subject_landmarks(t, t, [2.0, 6.0, 13.0, 16.0, 20.0]).round(6).tolist()
    [0.1, 0.3, 0.65, 0.8, 1.0]
    """
    target = check_landmarks(target_site)
    site, own = in_wm_units(source_site), in_wm_units(source_own)
    if not len(target) == len(site) == len(own):
        raise ValueError(f"landmark vectors of different schemes: {len(target)}, "
                         f"{len(site)}, {len(own)} values")
    if np.any(site <= 0):
        raise ValueError("landmarks must be positive to compare them in white-matter units")
    return check_landmarks(target * own / site)


def site_landmarks(images: Mapping[str, Iterable[tuple[np.ndarray, np.ndarray]]],
                   per_tissue: int = STORED_PER_TISSUE) -> dict[str, list[float]]:
    """``{site: mean landmarks}`` over each site's ``(image, mask)`` pairs (rounded to 1e-4).

    Images whose landmarks are degenerate (a tissue class empty, no strict
    increase) are left out; a site with none left is left out.
    """
    out = {}
    for site, pairs in images.items():
        rows = []
        for image, mask in pairs:
            try:
                rows.append(check_landmarks(tissue_landmarks(image, mask, per_tissue)))
            except ValueError:
                continue
        if rows:
            out[site] = [round(float(v), 4) for v in np.mean(rows, axis=0)]
    return out


def piecewise_linear(values: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Map ``source[i] -> target[i]`` linearly between landmarks, extrapolating the end segments.

    >>> piecewise_linear(np.array([-1., 0.5, 3.]), np.array([0., 1., 2.]), np.array([0., 2., 3.]))
    array([-2.,  1.,  4.])
    """
    out = np.interp(values, source, target)
    low, high = values < source[0], values > source[-1]
    slope_low = (target[1] - target[0]) / (source[1] - source[0])
    slope_high = (target[-1] - target[-2]) / (source[-1] - source[-2])
    out[low] = target[0] + (values[low] - source[0]) * slope_low
    out[high] = target[-1] + (values[high] - source[-1]) * slope_high
    return out


def match_landmarks(image: np.ndarray, mask: np.ndarray, target: Sequence[float]
                    ) -> np.ndarray:
    """``image`` with its in-mask tissue landmarks mapped onto ``target`` (>= 0, 0 outside).

    The scheme (medians, quartiles, deciles, vigintiles) is ``target``'s.  An end
    percentile that does not lie outside its neighbouring tissue landmark, in the
    image or in ``target`` (e.g. many voxels at 0, or a fine scheme's CSF 5 %
    quantile), is left out of the map.  Raises ``ValueError`` when the tissue
    landmarks themselves do not increase (e.g. a flat image, or tissue classes that
    overlap), so the caller can keep the image as it is and say so.
    """
    mask = np.asarray(mask) > 0
    target_arr = check_landmarks(target)
    own = tissue_landmarks(image, mask, per_tissue_of(target_arr))
    last = len(own) - 1
    if not np.all(np.diff(own[1:last]) > 0):
        raise ValueError(f"tissue landmarks do not increase: {own[1:last].round(4).tolist()}")
    outside_low = own[0] < own[1] and target_arr[0] < target_arr[1]
    outside_high = own[last] > own[last - 1] and target_arr[last] > target_arr[last - 1]
    keep = [i for i in range(len(own)) if 0 < i < last or (i == 0 and outside_low)
            or (i == last and outside_high)]
    out = np.zeros(np.shape(image), dtype=np.float32)
    values = np.asarray(image, dtype=np.float64)[mask]
    out[mask] = np.clip(piecewise_linear(values, own[keep], target_arr[keep]), 0, None)
    return out


def target_landmarks(config, target_site: str, scheme: str) -> np.ndarray:
    """The target site's stored tissue landmarks in ``scheme`` (``ValueError`` when the
    model stores none for the site, or only a coarser scheme)."""
    stored = config.site_landmarks.get(target_site)
    if stored is None:
        raise ValueError(f"the model stores no tissue intensity landmarks for '{target_site}'")
    try:
        return coarsen(stored, SCHEMES[scheme])
    except ValueError:
        have = next((n for n, k in SCHEMES.items() if k == per_tissue_of(stored)),
                    f"{per_tissue_of(stored)} quantiles per tissue")
        raise ValueError(f"the model stores '{have}' landmarks for '{target_site}', "
                         f"not '{scheme}'") from None


@dataclass(frozen=True)
class SiteLandmarks:
    """One site's tissue landmarks over a dataset's scans, in white-matter-median units."""

    images: int
    mean: np.ndarray
    sd: np.ndarray


def site_statistics(landmarks_by_site: Mapping[str, Iterable[Sequence[float]]]
                    ) -> dict[str, SiteLandmarks]:
    """Mean and standard deviation (ddof 1; 0 for a single scan) of each site's landmarks,
    every scan's in units of its own white-matter median.

    >>> stats = site_statistics({"a": [[1., 2, 4, 8, 9], [2., 4, 8, 16, 20]]})
    >>> stats["a"].images, stats["a"].mean.tolist()
    (2, [0.125, 0.25, 0.5, 1.0, 1.1875])
    """
    out = {}
    for site, rows in landmarks_by_site.items():
        units = [in_wm_units(r) for r in rows]
        if units:
            out[site] = scan_statistics(units)
    return out


def scan_statistics(rows: Sequence[Sequence[float]]) -> SiteLandmarks:
    """Mean and standard deviation (ddof 1; 0 for one scan) of one vector per scan.

    >>> s = scan_statistics([[0.1, 1.0], [0.3, 1.0]])
    >>> s.images, s.mean.tolist(), s.sd.round(4).tolist()
    (2, [0.2, 1.0], [0.1414, 0.0])
    """
    arr = np.asarray(rows, dtype=np.float64)
    if arr.ndim != 2 or len(arr) == 0:
        raise ValueError("need one row of values per scan")
    sd = arr.std(axis=0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1])
    return SiteLandmarks(len(arr), arr.mean(axis=0), sd)


def within_site_z(own: np.ndarray, site: SiteLandmarks, max_z: float) -> np.ndarray:
    """Each value's z-score among its site's scans, clipped to ``max_z``; 0 where the
    site has no spread.

    >>> within_site_z(np.array([0.3, 0.5]), SiteLandmarks(4, np.array([0.2, 0.5]),
    ...                                                   np.array([0.02, 0.0])), 3.0).tolist()
    [3.0, 0.0]
    """
    sd = np.asarray(site.sd, dtype=np.float64)
    z = np.divide(own - site.mean, sd, out=np.zeros_like(own, dtype=np.float64), where=sd > 0)
    return np.clip(z, -max_z, max_z)


def pooled_spread(statistics: Mapping[str, SiteLandmarks], min_images: int) -> np.ndarray:
    """Each landmark's spread between scans of one site, relative to its mean, averaged
    over the sites with at least ``min_images`` scans (``ValueError`` if none has)."""
    rows = [s.sd / s.mean for s in statistics.values() if s.images >= min_images]
    if not rows:
        raise ValueError(f"no site has {min_images} or more scans")
    return np.mean(rows, axis=0)


def standardized_landmarks(target_site: Sequence[float], source_site: SiteLandmarks,
                           spread: Sequence[float], source_own: Sequence[float],
                           max_z: float = 3.0) -> np.ndarray:
    """The target site's landmarks moved by where one scan stands within its own site.

    A location-and-scale adjustment of the landmarks (as ComBat adjusts features): each
    of the scan's landmarks (white-matter units) becomes a z-score within its site
    (``source_site``: the dataset's mean and spread of that site's scans, clipped to
    ``max_z``), and the target's landmark is moved by that many times the pooled
    spread (``spread``, relative: :func:`pooled_spread`).  Every site's outputs then
    share their landmarks' mean and spread, so neither tells the site, while each
    brain keeps its place among its site's brains: how the subject differs.  A scan
    on its site's mean gets ``target_site``.  Keeping the deviation as a ratio instead
    (:func:`subject_landmarks`) carries each site's spread along and leaks the site
    (``docs/model.md``, "Decisions of session 25").

    >>> site = SiteLandmarks(8, np.array([0.2, 0.4, 0.7, 1.0, 1.2]), np.full(5, 0.02))
    >>> t = [0.1, 0.3, 0.6, 0.8, 1.0]
    >>> standardized_landmarks(t, site, np.full(5, 0.1), [0.2, 0.4, 0.7, 1.0, 1.2]).tolist()
    [0.1, 0.3, 0.6, 0.8, 1.0]
    >>> standardized_landmarks(t, site, np.full(5, 0.1), [0.2, 0.4, 0.72, 1.0, 1.2]).round(4).tolist()
    [0.1, 0.3, 0.66, 0.8, 1.0]
    """
    target = check_landmarks(target_site)
    own = in_wm_units(source_own)
    spread = np.asarray(spread, dtype=np.float64)
    if not len(target) == len(own) == len(source_site.mean) == len(spread):
        raise ValueError(f"landmark vectors of different schemes: {len(target)}, "
                         f"{len(source_site.mean)}, {len(own)}, {len(spread)} values")
    return check_landmarks(target * (1 + within_site_z(own, source_site, max_z) * spread))


class MatchTarget(NamedTuple):
    """What one harmonized scan is matched onto, and why (:func:`scan_target_landmarks`)."""

    landmarks: np.ndarray
    #: None when the subject part was kept; else why the plain match was used
    why_not_kept: str | None
    #: whose landmarks stand for the target site: ``"model"`` (the model's stored ones,
    #: from its training images) or ``"dataset"`` (the dataset's own scans of that site)
    reference: str


def reference_weight(model: np.ndarray, dataset_mean: np.ndarray,
                     dataset_sd: np.ndarray, images: int) -> float:
    """How far to move from the model's landmarks towards the mean of the dataset's
    ``images`` scans of a site: the positive-part James-Stein weight
    ``max(0, 1 - sum(sd**2 / images) / sum((mean - model)**2))``.

    The dataset's mean is the better reference where the model's landmarks are off
    (a simulated site's, measured on simulator texture, against real anatomy: 2-4 dB,
    ``docs/model.md``, "Decisions of session 32"), the worse one where they are right
    and the dataset holds few scans (3 scans of the real site ``ixi-hh``: -0.8 dB).  The
    weight is 0 when the two differ by no more than the mean's own sampling noise and
    tends to 1 as the difference outgrows it.  One weight for the whole vector keeps
    the landmarks increasing.

    >>> model = np.array([0.2, 0.5, 1.0])
    >>> reference_weight(model, np.array([0.21, 0.49, 1.0]), np.full(3, 0.05), 4)
    0.0
    >>> round(reference_weight(model, np.array([0.3, 0.6, 1.0]), np.full(3, 0.05), 4), 3)
    0.906
    """
    noise = float(np.sum(np.asarray(dataset_sd, dtype=np.float64) ** 2) / images)
    gap = float(np.sum((np.asarray(dataset_mean, dtype=np.float64) - model) ** 2))
    return 0.0 if gap <= noise else 1.0 - noise / gap


def dataset_reference(target: np.ndarray, statistics: Mapping[str, SiteLandmarks],
                      target_site: str | None, min_images: int = MIN_SITE_IMAGES
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    """``(landmarks, relative spread)`` of the target site from the dataset's own scans
    of it (ComBat's *reference batch*), or None when it has fewer than ``min_images``
    or their mean is within its sampling noise of the model's ``target`` landmarks.

    The mean is in white-matter units; it is put on the scale of the model's ``target``
    landmarks (same white-matter median), so outputs keep the model's intensity scale,
    and moved there from ``target`` by :func:`reference_weight` (shrinkage towards the
    model's landmarks: a handful of scans is a noisy mean).

    >>> stats = {"t": SiteLandmarks(3, np.array([0.2, 0.4, 0.8, 1.0, 1.1]), np.full(5, 0.01))}
    >>> ref, spread = dataset_reference(np.array([0.1, 0.2, 0.3, 0.5, 0.6]), stats, "t")
    >>> ref.round(3).tolist(), spread.round(4).tolist()
    ([0.1, 0.2, 0.4, 0.5, 0.55], [0.05, 0.025, 0.0125, 0.01, 0.0091])
    >>> dataset_reference(np.array([0.1, 0.2, 0.3, 0.5, 0.6]), stats, "t", min_images=4) is None
    True
    """
    weight = target_site_weight(target, statistics, target_site, min_images)
    if not weight:
        return None
    target = check_landmarks(target)
    site = statistics[target_site]
    mean = site.mean * target[wm_median_index(per_tissue_of(target))]
    return (check_landmarks(target + weight * (mean - target)),
            np.asarray(site.sd / site.mean, dtype=np.float64))


def target_site_weight(target: np.ndarray, statistics: Mapping[str, SiteLandmarks],
                       target_site: str | None, min_images: int = MIN_SITE_IMAGES
                       ) -> float | None:
    """:func:`reference_weight` of the dataset's scans of ``target_site`` against the
    model's ``target`` landmarks (on their white-matter scale), or None when the dataset
    holds fewer than ``min_images`` of them."""
    site = statistics.get(target_site) if target_site else None
    if site is None or site.images < min_images:
        return None
    target = check_landmarks(target)
    wm = target[wm_median_index(per_tissue_of(target))]
    return reference_weight(target, site.mean * wm, site.sd * wm, site.images)


def scan_target_landmarks(target: np.ndarray, statistics: Mapping[str, SiteLandmarks] | None,
                          source_site: str | None, source_own: Sequence[float] | None,
                          min_images: int = MIN_SITE_IMAGES, target_site: str | None = None,
                          ) -> MatchTarget:
    """What to match one harmonized scan onto (:class:`MatchTarget`).

    Whose landmarks stand for the target site: when the dataset's ``statistics`` hold
    ``target_site`` with at least ``min_images`` scans, the mean and spread of *those*
    scans (:func:`dataset_reference`, ComBat's reference batch): the harmonized scans
    and the dataset's own scans of the target site then share their landmark
    statistics; else the model's ``target`` landmarks and the spread pooled over sites.
    Where the scan goes among them: :func:`standardized_landmarks` when the statistics
    also hold the scan's ``source_site`` with at least ``min_images`` scans (the subject
    part is kept); else the reference's mean, and the reason the subject part could not
    be kept.  Real anatomy at a simulated site sits ~2 dB closer to the truth on the
    dataset's reference than on the model's stored landmarks (``docs/model.md``,
    "Decisions of session 32"), so a scan from a site with too few scans gets it too.
    """
    try:
        reference = None if statistics is None else \
            dataset_reference(target, statistics, target_site, min_images)
    except ValueError:  # the dataset's mean is no landmark vector: the model's stays
        reference = None
    base, whose = (target, "model") if reference is None else (reference[0], "dataset")

    def plain(why: str) -> MatchTarget:
        return MatchTarget(base, why, whose)

    if statistics is None:
        return plain("no site statistics")
    if not source_site:
        return plain("the source site is not known")
    if source_own is None:
        return plain("the scan's own tissue landmarks could not be measured")
    site = statistics.get(source_site)
    if site is None or site.images < min_images:
        have = 0 if site is None else site.images
        return plain(f"the dataset has {have} scan(s) of '{source_site}', fewer than "
                     f"{min_images}")
    try:
        spread = pooled_spread(statistics, min_images) if reference is None else reference[1]
        return MatchTarget(standardized_landmarks(base, site, spread, source_own), None, whose)
    except ValueError as err:
        return plain(str(err))


def finest_scheme(config, target_site: str) -> str:
    """The finest scheme the model stores landmarks for ``target_site`` in, or ``'none'``.

    What ``--match-intensities auto`` (the default) resolves to: models of this
    version store the 5 % grid (``'vigintiles'``), older group models quartiles or
    medians, a model trained without landmarks none.
    """
    for name in sorted(SCHEMES, key=SCHEMES.get, reverse=True):
        try:
            target_landmarks(config, target_site, name)
        except ValueError:
            continue
        return name
    return "none"
