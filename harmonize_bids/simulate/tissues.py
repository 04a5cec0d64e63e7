"""Tissues of a whole-head label map and their relaxation parameters.

Relaxation times are rounded literature values for healthy adults (ms):

- brain at 3 T: Wansapura et al., JMRI 1999 (T1 WM 832, GM 1331); Stanisz et al.,
  MRM 2005 (3 T: WM 1084, GM 1820, caudate 1480?; 1.5 T: WM 884, GM 1124);
  Rooney et al., MRM 2007 (field dependence of T1: WM 1.5 T ~ 780, 3 T ~ 1080,
  GM 1.5 T ~ 1200, 3 T ~ 1600; CSF ~ 4300 at both); Peters et al., MRI 2007 and
  Wansapura 1999 for T2* (WM 3 T ~ 53, GM 3 T ~ 66; 1.5 T ~ 20 % longer).
- outside the brain: fat T1 ~ 260 (1.5 T) / 380 (3 T), muscle ~ 1000 / 1420
  (Gold et al., AJR 2004; de Bazelaire et al., Radiology 2004), blood
  ~ 1440 / 1930 (Lu et al., MRM 2004), cortical bone and air have a very low proton
  density and very short T2*, vitreous humour is close to CSF.
- proton density (relative to water): WM 0.69, GM 0.80, CSF 1.0 (e.g. Tofts,
  Quantitative MRI of the Brain, 2003); fat 0.9, muscle 0.75, bone 0.05.

Deep grey nuclei sit between GM and WM (pallidum closest to WM, thalamus
between).  The numbers matter for *relative* contrast between tissues and
field strengths, which is what harmonization has to undo.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tissue:
    """Relaxation parameters of one tissue: T1 and T2* (ms) at 1.5 T and 3 T, PD."""

    name: str
    t1_15: float
    t1_30: float
    t2s_15: float
    t2s_30: float
    pd: float
    #: 0 background/outside the head, 1 CSF, 2 GM, 3 WM, 4 other head tissue
    tissue_class: int

    def t1(self, field_t: float) -> float:
        """T1 at ``field_t`` tesla, interpolated linearly between 1.5 T and 3 T."""
        return _interp(field_t, self.t1_15, self.t1_30)

    def t2s(self, field_t: float) -> float:
        """T2* at ``field_t`` tesla, interpolated linearly between 1.5 T and 3 T."""
        return _interp(field_t, self.t2s_15, self.t2s_30)


def _interp(field_t: float, at15: float, at30: float) -> float:
    w = (float(field_t) - 1.5) / 1.5
    return float(at15 + w * (at30 - at15))


TISSUES: dict[str, Tissue] = {t.name: t for t in (
    Tissue("background", 1.0, 1.0, 1.0, 1.0, 0.0, 0),
    Tissue("csf", 4200, 4300, 400, 300, 1.00, 1),
    Tissue("gm", 1200, 1600, 84, 66, 0.80, 2),
    Tissue("deep_gm", 1000, 1400, 70, 55, 0.78, 2),
    Tissue("pallidum", 850, 1150, 40, 30, 0.72, 2),
    Tissue("wm", 780, 1080, 66, 53, 0.69, 3),
    Tissue("vessel", 1440, 1930, 40, 25, 0.85, 4),
    Tissue("fat", 260, 380, 35, 25, 0.90, 4),
    Tissue("muscle", 1000, 1420, 35, 28, 0.75, 4),
    Tissue("skin", 900, 1200, 30, 25, 0.70, 4),
    Tissue("bone", 250, 300, 1.5, 1.0, 0.05, 4),
    Tissue("marrow", 300, 420, 20, 15, 0.60, 4),
    Tissue("eye", 3500, 4000, 300, 250, 0.95, 4),
    Tissue("air", 1.0, 1.0, 1.0, 1.0, 0.0, 4),
    Tissue("soft_tissue", 1000, 1300, 40, 30, 0.75, 4),
)}

#: SynthSeg/FreeSurfer label -> tissue name.  Labels 502-530 (outside the brain)
#: were identified by their location in the SynthSeg training maps.
LABEL_TISSUE: dict[int, str] = {
    0: "background",
    2: "wm", 41: "wm", 7: "wm", 46: "wm", 16: "wm", 28: "wm", 60: "wm", 85: "wm",
    3: "gm", 42: "gm", 8: "gm", 47: "gm", 17: "gm", 53: "gm", 18: "gm", 54: "gm",
    10: "deep_gm", 49: "deep_gm", 11: "deep_gm", 50: "deep_gm", 12: "deep_gm",
    51: "deep_gm", 26: "deep_gm", 58: "deep_gm", 13: "pallidum", 52: "pallidum",
    4: "csf", 43: "csf", 5: "csf", 44: "csf", 14: "csf", 15: "csf", 24: "csf", 72: "csf",
    30: "vessel", 62: "vessel", 136: "deep_gm", 137: "deep_gm", 163: "deep_gm", 164: "deep_gm",
    502: "soft_tissue", 506: "soft_tissue", 507: "soft_tissue", 508: "air", 509: "muscle",
    511: "fat", 512: "soft_tissue", 514: "eye", 515: "bone", 516: "air", 530: "soft_tissue",
}

#: Left <-> right label pairs (for left-right flips of label maps).
LR_PAIRS = ((2, 41), (3, 42), (4, 43), (5, 44), (7, 46), (8, 47), (10, 49), (11, 50),
            (12, 51), (13, 52), (17, 53), (18, 54), (26, 58), (28, 60), (30, 62),
            (136, 163), (137, 164))

TISSUE_NAMES = tuple(TISSUES)


def is_brain_label(labels: np.ndarray) -> np.ndarray:
    """Brain mask of a SynthSeg label map: labels 1-499 (CSF spaces included)."""
    return (labels > 0) & (labels < 500)


def tissue_index_map(labels: np.ndarray) -> np.ndarray:
    """Index into :data:`TISSUE_NAMES` for every voxel (unknown labels: soft tissue)."""
    lut_keys = np.array(sorted(LABEL_TISSUE), dtype=np.int64)
    lut_vals = np.array([TISSUE_NAMES.index(LABEL_TISSUE[k]) for k in lut_keys], dtype=np.int16)
    labels = np.asarray(labels).astype(np.int64)
    pos = np.clip(np.searchsorted(lut_keys, labels), 0, len(lut_keys) - 1)
    found = lut_keys[pos] == labels
    default = np.where(is_brain_label(labels), TISSUE_NAMES.index("gm"),
                       TISSUE_NAMES.index("soft_tissue"))
    return np.where(found, lut_vals[pos], default).astype(np.int16)


def three_class_map(labels: np.ndarray) -> np.ndarray:
    """CSF=1 / GM=2 / WM=3 inside the brain, 0 elsewhere (the ``dseg`` truth)."""
    idx = tissue_index_map(labels)
    classes = np.array([TISSUES[n].tissue_class for n in TISSUE_NAMES], dtype=np.uint8)
    out = classes[idx]
    out[~is_brain_label(labels)] = 0
    out[out == 4] = 2  # vessels inside the brain count as GM-like partial volume
    return out


def parameter_maps(tissue_idx: np.ndarray, field_t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 (ms), T2* (ms) and PD maps for a tissue index map at ``field_t`` tesla."""
    t1 = np.array([TISSUES[n].t1(field_t) for n in TISSUE_NAMES], dtype=np.float32)
    t2s = np.array([TISSUES[n].t2s(field_t) for n in TISSUE_NAMES], dtype=np.float32)
    pd = np.array([TISSUES[n].pd for n in TISSUE_NAMES], dtype=np.float32)
    return t1[tissue_idx], t2s[tissue_idx], pd[tissue_idx]
