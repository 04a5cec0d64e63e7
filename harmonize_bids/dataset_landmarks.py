"""The dataset's tissue landmarks per site: what ``--keep-subject-intensities`` needs.

The group level (``--landmarks-only``, or before it trains) measures the tissue
landmarks (:mod:`harmonize_bids.site_intensity`) of every participant's
template-space brain, on the model's grid, and writes each site's mean and spread to
``OUTPUT_DIR/site_landmarks.json``.  The participant level reads that file to map a
harmonized brain onto the target site's landmarks moved by where the scan stands
among its own site's scans (:func:`~harmonize_bids.site_intensity.scan_target_landmarks`),
which keeps the subject's part of the intensities while the site's goes.
"""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Callable

import numpy as np

from harmonize_bids import __version__
from harmonize_bids.exceptions import InputError
from harmonize_bids.site_intensity import (
    SiteLandmarks,
    landmark_names,
    per_tissue_of,
    site_statistics,
    tissue_landmarks,
)
from harmonize_bids.utils.bids import T1wRecord
from harmonize_bids.utils.grid import preprocessed_brain
from harmonize_bids.utils.io import atomic_write_json

#: the format of the file, checked when it is read
FORMAT = "harmonize_bids site landmarks 1"


def participant_landmarks(records: list[T1wRecord], output_dir: Path, voxel_mm: float,
                          per_tissue: int, log: Callable[[str], None] = print
                          ) -> dict[str, list[np.ndarray]]:
    """``{site: [landmarks of each preprocessed brain]}`` from the participant level's
    template-space brains, resampled to ``voxel_mm`` as the harmonize step does.

    Records without a preprocessed brain, and brains whose landmarks are degenerate,
    are left out (and logged); ``InputError`` when none is left.
    """
    by_site: dict[str, list[np.ndarray]] = {}
    missing, bad = [], []
    for i, rec in enumerate(records, 1):
        loaded = preprocessed_brain(output_dir, rec.entities, voxel_mm)
        if loaded is None:
            missing.append(rec.label)
            continue
        brain, mask = loaded
        try:
            by_site.setdefault(rec.site, []).append(tissue_landmarks(brain, mask, per_tissue))
        except ValueError as err:
            bad.append(f"{rec.label} ({err})")
        log(f"tissue landmarks: {i}/{len(records)} brains")
    if missing:
        log(f"no preprocessed brain (left out): {', '.join(missing)}")
    if bad:
        log(f"degenerate tissue landmarks (left out): {', '.join(bad)}")
    if not by_site:
        raise InputError("No preprocessed participants found in the output directory: run "
                         "the participant level first")
    return by_site


def write_site_landmarks(path: Path, statistics: dict[str, SiteLandmarks],
                         voxel_mm: float) -> Path:
    """Write ``statistics`` (:func:`~harmonize_bids.site_intensity.site_statistics`)."""
    per_tissue = per_tissue_of(next(iter(statistics.values())).mean)
    return atomic_write_json({
        "Format": FORMAT,
        "Created": datetime.datetime.now().isoformat(timespec="seconds"),
        "HarmonizeBidsVersion": __version__,
        "ModelVoxelSize": float(voxel_mm),
        "Landmarks": list(landmark_names(per_tissue)),
        "Units": "each brain's white-matter median",
        "Sites": {site: {"Images": s.images, "Mean": [round(float(v), 6) for v in s.mean],
                         "SD": [round(float(v), 6) for v in s.sd]}
                  for site, s in sorted(statistics.items())},
    }, Path(path))


def read_site_landmarks(path: Path, voxel_mm: float | None = None
                        ) -> dict[str, SiteLandmarks]:
    """The statistics in ``path``; ``InputError`` when it is not such a file or was
    measured at another voxel size than ``voxel_mm`` (the model's)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"Cannot read the site landmarks file {path}: {err}") from err
    if not isinstance(data, dict) or data.get("Format") != FORMAT:
        raise InputError(f"{path} is not a site landmarks file written by the group level "
                         f"(expected Format '{FORMAT}')")
    if voxel_mm is not None and abs(float(data.get("ModelVoxelSize", -1)) - voxel_mm) > 1e-6:
        raise InputError(f"{path} was measured at {data.get('ModelVoxelSize')} mm, the model "
                         f"works at {voxel_mm} mm: run the group level with this model")
    try:
        out = {site: SiteLandmarks(int(v["Images"]), np.asarray(v["Mean"], float),
                                   np.asarray(v["SD"], float))
               for site, v in data["Sites"].items()}
        for s in out.values():
            per_tissue_of(s.mean)
            if s.sd.shape != s.mean.shape:
                raise ValueError("Mean and SD differ in length")
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path}: malformed site landmarks ({err})") from err
    return out


def measure_site_landmarks(records: list[T1wRecord], output_dir: Path, voxel_mm: float,
                           per_tissue: int, out_file: Path,
                           log: Callable[[str], None] = print) -> Path:
    """Measure every participant's landmarks, write each site's statistics to ``out_file``."""
    statistics = site_statistics(participant_landmarks(records, output_dir, voxel_mm,
                                                       per_tissue, log))
    for site, s in sorted(statistics.items()):
        log(f"site '{site}': {s.images} brain(s)")
    write_site_landmarks(out_file, statistics, voxel_mm)
    log(f"Site landmarks written to {out_file}")
    return out_file
