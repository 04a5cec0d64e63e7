"""Judge harmonization on a simulated traveling-subject dataset.

For an image of anatomy *a* from site *s* harmonized to site *t*, the truth
is the image of *a* acquired at *t* (same voxel grid by construction of
:mod:`harmonize_bids.simulate.dataset`), compared inside the true brain mask
with :func:`harmonize_bids.metrics.compare`; ``flicker`` and ``slice_jumps``
measure how consistent the change is between slices (voxel to voxel, and in
each slice's overall level).  Beside every score stands the
**ceiling**: a rescan at the target site (same acquisition, new noise)
compared with the scan.  ``site_predictability`` asks how well the *source*
site can still be told from the images sent to one target (chance = 1/sites), by
a classifier scored on subjects it never saw: the folds keep every image of one
label map (a real subject and its deformed variants) together
(:func:`subject_groups`; since session 31, before that plain stratified folds).

With no harmonized outputs, every image is taken as its own "harmonization"
(the *no harmonization* baseline): how far apart the sites are to begin with.
An output of an image that was already at its target site (the app keeps those
unchanged as the reference) is not a harmonization and is not scored.
"""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nb
import numpy as np

from harmonize_bids import metrics
from harmonize_bids.derivatives import derivative_path, sidecar_path
from harmonize_bids.simulate.dataset import TRUTH_NAME, label_map_of

METRIC_COLUMNS = ("ssim", "psnr", "mae", "correlation", "wasserstein", "tissue_dice", "flicker",
                  "slice_jumps")


@dataclass(frozen=True)
class SimulatedImage:
    """One image of the simulated dataset and its truth files."""

    participant: str
    site: str
    anatomy: str
    t1w: Path
    brain_mask: Path
    dseg: Path
    rescan: Path | None


def read_simulated_dataset(bids_dir: Path) -> list[SimulatedImage]:
    """Participants of a dataset written by ``harmonize_bids-simulate``."""
    bids_dir = Path(bids_dir)
    tsv = bids_dir / "participants.tsv"
    truth = bids_dir / "derivatives" / TRUTH_NAME
    if not tsv.is_file() or not truth.is_dir():
        raise FileNotFoundError(
            f"{bids_dir} is not a simulated traveling-subject dataset "
            f"(needs participants.tsv and derivatives/{TRUTH_NAME})")
    images = []
    with tsv.open(newline="") as fobj:
        for row in csv.DictReader(fobj, delimiter="\t"):
            sub = row["participant_id"]
            tdir = truth / sub / "anat"
            rescan = tdir / f"{sub}_desc-rescan_T1w.nii.gz"
            images.append(SimulatedImage(
                participant=sub.removeprefix("sub-"), site=row["site"], anatomy=row["anatomy"],
                t1w=bids_dir / sub / "anat" / f"{sub}_T1w.nii.gz",
                brain_mask=tdir / f"{sub}_desc-brain_mask.nii.gz", dseg=tdir / f"{sub}_dseg.nii.gz",
                rescan=rescan if rescan.is_file() else None))
    return images


def bias_corrected_copy(bids_dir: Path, dest: Path, *, sloppy: bool = False,
                        num_threads: int = 1,
                        progress: Callable[[str], None] = lambda msg: None) -> Path:
    """A copy of a simulated dataset whose T1w images (and rescans) are N4-corrected
    with the participant level's own settings, as the app would see them (with
    ``n4_in_brain``, the field fitted inside the exact brain mask, where the app
    uses its own brain extraction's).

    The bias field is random per acquisition and the app removes it before it
    harmonizes, so a fair truth is the target-site image after the same N4.
    Masks and tissue maps are copied unchanged.  Written beside ``dest`` and
    renamed into place when complete; an existing ``dest`` is returned as is.
    """
    import shutil

    from harmonize_bids.workflows.anatomical import participant_n4

    dest = Path(dest)
    if dest.is_dir():
        return dest
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(bids_dir, tmp)
    try:
        images = read_simulated_dataset(tmp)
        for k, img in enumerate(images):
            for path in (img.t1w, img.rescan):
                if path is not None:
                    participant_n4(path, path, img.brain_mask, sloppy=sloppy,
                                   num_threads=num_threads)
            progress(f"[{k + 1}/{len(images)}] N4: sub-{img.participant}")
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _load(path: Path) -> np.ndarray:
    return np.asarray(nb.load(str(path)).dataobj, dtype=np.float32)


def axial_axis(path: Path) -> int:
    """The array axis of ``path`` that runs inferior-superior: the axis across which a
    slice-wise model's axial slices are stacked, whatever the stored orientation (the
    simulator writes LIA, where it is axis 1)."""
    codes = nb.aff2axcodes(nb.load(str(path)).affine)
    return next(i for i, c in enumerate(codes) if c in ("S", "I"))


def harmonized_outputs(images: list[SimulatedImage], derivatives_dir: Path
                       ) -> list[tuple[SimulatedImage, Path, str]]:
    """(source image, harmonized file, target site) for every harmonized output found."""
    found = []
    for img in images:
        ents = {"subject": img.participant}
        path = derivative_path(derivatives_dir, ents, "harmonized")
        if path.is_file():
            side = json.loads(sidecar_path(path).read_text())
            found.append((img, path, side["TargetSite"]))
    return found


def subject_groups(images: list[SimulatedImage]) -> list[str] | None:
    """The subject of each image for site-predictability folds (its label map), or
    ``None`` when the images show fewer than 2 subjects (too few to group: plain
    stratified folds, and the result says so)."""
    groups = [label_map_of(img.anatomy) for img in images]
    return groups if len(set(groups)) >= 2 else None


def evaluate(bids_dir: Path, derivatives_dir: Path | None = None,
             progress: Callable[[str], None] = lambda msg: None) -> dict:
    """Scores per (source, target) pair, ceilings per target, site predictability.

    Returns ``{"pairs": {(s, t): {metric: mean}}, "ceiling": {t: {metric: mean}},
    "site_predictability": {t: accuracy}, "site_predictability_sd": {t: sd over the
    classifier's repeated splits}, "site_predictability_grouped": {t: whether the
    folds were grouped by subject}, "site_predictability_folds": {t: (lowest, highest)
    accuracy of a test fold}, "chance": {t: 1/n}, "n": {(s, t): n}}``.
    """
    images = read_simulated_dataset(bids_dir)
    by_anatomy: dict[str, dict[str, SimulatedImage]] = defaultdict(dict)
    for img in images:
        by_anatomy[img.anatomy][img.site] = img
    sites = sorted({img.site for img in images})

    if derivatives_dir is None:  # no harmonization: every image "sent" to every other site
        jobs = [(img, img.t1w, t) for img in images for t in sites if t != img.site]
    else:
        # an image already at its target is the reference, not a harmonization
        jobs = [j for j in harmonized_outputs(images, Path(derivatives_dir))
                if j[0].site != j[2]]
        if not jobs:
            raise FileNotFoundError(f"no harmonized outputs (desc-harmonized) in {derivatives_dir}")

    scores: dict[tuple[str, str], list[dict]] = defaultdict(list)
    sent: dict[str, list[tuple[np.ndarray, np.ndarray, str]]] = defaultdict(list)
    for k, (src, path, target) in enumerate(jobs):
        truth = by_anatomy[src.anatomy].get(target)
        if truth is None:
            continue
        mask = _load(truth.brain_mask) > 0
        harmonized = _load(path)
        row = metrics.compare(harmonized, _load(truth.t1w), mask, _load(truth.dseg))
        if path == src.t1w:
            row["flicker"] = row["slice_jumps"] = 0.0
        else:
            source = _load(src.t1w)
            axis = axial_axis(src.t1w)  # until session 17: axis 2, which is A-P in LIA files
            row["flicker"] = metrics.flicker(source, harmonized, mask, axis=axis)
            row["slice_jumps"] = metrics.slice_jumps(source, harmonized, mask, axis=axis)
        scores[(src.site, target)].append(row)
        sent[target].append((harmonized, mask, src))
        progress(f"[{k + 1}/{len(jobs)}] {src.participant} ({src.site}) -> {target}")

    ceiling = {}
    for target in sites:
        rows = [metrics.compare(_load(img.rescan), _load(img.t1w), _load(img.brain_mask) > 0,
                                _load(img.dseg))
                for img in images if img.site == target and img.rescan is not None]
        if rows:
            ceiling[target] = {m: float(np.mean([r[m] for r in rows])) for m in rows[0]}

    predictability, spread, chance, grouped, folds = {}, {}, {}, {}, {}
    for target, items in sent.items():
        try:
            res = metrics.site_predictability(
                [i[0] for i in items], [i[1] for i in items], [i[2].site for i in items],
                groups=subject_groups([i[2] for i in items]))
        except ValueError:
            continue
        predictability[target], chance[target] = res["accuracy"], res["chance"]
        spread[target], grouped[target] = res["accuracy_sd"], res["grouped"]
        folds[target] = (res["fold_min"], res["fold_max"])
    if derivatives_dir is None:  # one question for the baseline: are raw sites apart?
        try:
            res = metrics.site_predictability([_load(i.t1w) for i in images],
                                              [_load(i.brain_mask) > 0 for i in images],
                                              [i.site for i in images],
                                              groups=subject_groups(images))
            predictability = {t: res["accuracy"] for t in sites}
            spread = {t: res["accuracy_sd"] for t in sites}
            chance = {t: res["chance"] for t in sites}
            grouped = {t: res["grouped"] for t in sites}
            folds = {t: (res["fold_min"], res["fold_max"]) for t in sites}
        except ValueError:  # too few images per site to cross-validate a classifier
            predictability, spread, chance, grouped, folds = {}, {}, {}, {}, {}
    return {
        "pairs": {key: {m: float(np.mean([r[m] for r in rows])) for m in METRIC_COLUMNS}
                  for key, rows in scores.items()},
        "n": {key: len(rows) for key, rows in scores.items()},
        "ceiling": ceiling,
        "site_predictability": predictability,
        "site_predictability_sd": spread,
        "site_predictability_grouped": grouped,
        "site_predictability_folds": folds,
        "chance": chance,
    }


def format_table(result: dict, method: str) -> str:
    """Markdown table: one row per (source -> target), with the target's rescan ceiling."""
    head = ("| method | source → target | n | SSIM | PSNR (dB) | MAE | corr | W1 | tissue Dice "
            "| flicker | slice jumps (%) | site pred. [folds by subject: lowest-highest] "
            "or ± sd (plain folds) (chance) "
            "| rescan SSIM / PSNR / Dice |")
    lines = [head, "|" + "---|" * 13]
    for (src, tgt), row in sorted(result["pairs"].items()):
        ceil = result["ceiling"].get(tgt)
        ceil_txt = (f"{ceil['ssim']:.3f} / {ceil['psnr']:.1f} / {ceil['tissue_dice']:.3f}"
                    if ceil else "n/a")
        pred = result["site_predictability"].get(tgt)
        pred_txt = "n/a" if pred is None else f"{pred:.2f} " + (
            "[{:.2f}-{:.2f}]".format(*result["site_predictability_folds"][tgt])
            if result.get("site_predictability_grouped", {}).get(tgt)
            else f"± {result['site_predictability_sd'][tgt]:.2f}") + f" ({result['chance'][tgt]:.2f})"
        lines.append(
            f"| {method} | {src} → {tgt} | {result['n'][(src, tgt)]} | {row['ssim']:.3f} | "
            f"{row['psnr']:.1f} | {row['mae']:.4f} | {row['correlation']:.3f} | "
            f"{row['wasserstein']:.4f} | {row['tissue_dice']:.3f} | {row['flicker']:.2f} | "
            f"{100 * row.get('slice_jumps', float('nan')):.2f} | {pred_txt} | {ceil_txt} |")
    return "\n".join(lines)
