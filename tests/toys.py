"""Tiny generated inputs shared by the tests (no real data needed)."""
from __future__ import annotations

import numpy as np

from harmonize_bids.simulate.render import Anatomy


def toy_labels(shape=(40, 48, 40), spacing=2.0) -> Anatomy:
    """A cartoon head: scalp fat, skull, CSF, cortex, WM, ventricles (SynthSeg labels)."""
    idx = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1) / 2
    r = np.sqrt(sum(((idx[k] - centre[k]) / (shape[k] / 2)) ** 2 for k in range(3)))
    x = idx[0] - centre[0]
    labels = np.zeros(shape, np.int16)
    labels[r < 0.95] = 511          # scalp fat
    labels[r < 0.85] = 515          # skull
    labels[r < 0.78] = 24           # CSF
    labels[r < 0.72] = np.where(x[r < 0.72] < 0, 3, 42)     # cortex
    labels[r < 0.55] = np.where(x[r < 0.55] < 0, 2, 41)     # white matter
    vent = np.sqrt(((idx[0] - centre[0]) / 3) ** 2 + ((idx[1] - centre[1]) / 6) ** 2
                   + ((idx[2] - centre[2]) / 3) ** 2) < 1
    labels[vent & (x < 0)] = 4
    labels[vent & (x >= 0)] = 43
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = -centre * spacing
    return Anatomy(labels, affine, "toy")
