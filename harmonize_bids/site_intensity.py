"""Tissue intensity landmarks of a site, and mapping an image onto them.

The diffusion model moves contrast and texture to the target site, but its
output keeps part of each source's histogram character (blur and noise widen or
shift the tissue peaks), so the source site stays predictable from the output's
histogram.  A site's *tissue landmarks* are a few intensities that belong to the
scanner, not to the brain:

    (0.5th percentile, CSF median, GM median, WM median, 99.5th percentile)

of a brain normalized as the model sees it (99th percentile = 1), with the
tissue classes from an intensity-only 3-class Gaussian mixture
(:func:`harmonize_bids.metrics.tissue_segmentation`).  Unlike a full histogram
(which Nyúl and histogram matching impose), they do not depend on how much of
each tissue a brain has, so mapping onto them leaves anatomy alone.

:func:`match_landmarks` maps an image's own landmarks piecewise-linearly onto
given ones (a monotone map: the ordering of voxels, hence edges and
structures, is kept; end segments extrapolate linearly).  The model stores the
mean landmarks of every site it knows (:func:`site_landmarks`, from its
training targets), so the participant level can finish each harmonized brain
with the target site's tissue intensities.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

#: what the five numbers of a landmark vector are
LANDMARK_NAMES = ("p0.5", "csf_median", "gm_median", "wm_median", "p99.5")


def tissue_landmarks(image: np.ndarray, mask: np.ndarray, random_state: int = 0) -> np.ndarray:
    """The five tissue landmarks (:data:`LANDMARK_NAMES`) of the in-mask intensities."""
    from harmonize_bids.metrics import tissue_segmentation

    mask = np.asarray(mask) > 0
    image = np.asarray(image, dtype=np.float64)
    labels = tissue_segmentation(image, mask, random_state=random_state)
    values = image[mask]
    medians = []
    for k in (1, 2, 3):
        tissue = image[labels == k]
        if tissue.size == 0:
            raise ValueError(f"tissue class {k} is empty; cannot compute landmarks")
        medians.append(float(np.median(tissue)))
    low, high = np.percentile(values, [0.5, 99.5])
    return np.array([low, *medians, high], dtype=np.float64)


def check_landmarks(landmarks: Sequence[float]) -> np.ndarray:
    """``landmarks`` as an array, or ``ValueError`` unless 5 finite, strictly increasing values."""
    arr = np.asarray(landmarks, dtype=np.float64)
    if arr.shape != (len(LANDMARK_NAMES),) or not np.all(np.isfinite(arr)):
        raise ValueError(f"need {len(LANDMARK_NAMES)} finite landmarks, got {landmarks!r}")
    if not np.all(np.diff(arr) > 0):
        raise ValueError(f"landmarks must increase strictly, got {arr.round(4).tolist()}")
    return arr


def site_landmarks(images: Mapping[str, Iterable[tuple[np.ndarray, np.ndarray]]]
                   ) -> dict[str, list[float]]:
    """``{site: mean landmarks}`` over each site's ``(image, mask)`` pairs (rounded to 1e-4).

    Images whose landmarks are degenerate (a tissue class empty, no strict
    increase) are left out; a site with none left is left out.
    """
    out = {}
    for site, pairs in images.items():
        rows = []
        for image, mask in pairs:
            try:
                rows.append(check_landmarks(tissue_landmarks(image, mask)))
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

    An end percentile that ties with its neighbouring tissue median (e.g. many
    voxels at 0) is left out of the map.  Raises ``ValueError`` when the tissue
    medians themselves do not increase (e.g. a flat image), so the caller can
    keep the image as it is and say so.
    """
    mask = np.asarray(mask) > 0
    target_arr = check_landmarks(target)
    own = tissue_landmarks(image, mask)
    if not np.all(np.diff(own[1:4]) > 0):
        raise ValueError(f"tissue medians do not increase: {own[1:4].round(4).tolist()}")
    keep = [i for i in range(5) if i in (1, 2, 3) or (i == 0 and own[0] < own[1])
            or (i == 4 and own[4] > own[3])]
    out = np.zeros(np.shape(image), dtype=np.float32)
    values = np.asarray(image, dtype=np.float64)[mask]
    out[mask] = np.clip(piecewise_linear(values, own[keep], target_arr[keep]), 0, None)
    return out
