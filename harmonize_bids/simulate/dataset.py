"""Traveling-subject BIDS datasets: every anatomy rendered under every protocol.

Layout (``OUT_DIR``)::

    dataset_description.json, README, participants.tsv (+ .json)
    sub-a01s01/anat/sub-a01s01_T1w.nii.gz + .json    anatomy 01 at site 01
    code/protocols/<site>.json                      the protocols, as JSON
    derivatives/simulation-truth/
        dataset_description.json, dseg.tsv
        sub-a01s01/anat/sub-a01s01_desc-brain_mask.nii.gz
        sub-a01s01/anat/sub-a01s01_dseg.nii.gz        CSF=1, GM=2, WM=3
        sub-a01s01/anat/sub-a01s01_desc-rescan_T1w.nii.gz   (with rescan=True)

``participants.tsv`` has ``site`` (the protocol name) and ``anatomy`` columns;
all images of one anatomy share one voxel grid, so they pair voxel by voxel.
Every image has its own random stream derived from (seed, anatomy, site), so
the output does not depend on the order of work.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from harmonize_bids.simulate.anatomy import deform, flip_left_right
from harmonize_bids.simulate.protocols import Protocol
from harmonize_bids.simulate.render import Anatomy, acquire, load_anatomy, render_clean, to_nifti

TRUTH_NAME = "simulation-truth"


def participant_label(anatomy_index: int, site_index: int) -> str:
    """``a01s02``: anatomy 1 at site 2 (BIDS labels must be alphanumeric)."""
    return f"a{anatomy_index + 1:02d}s{site_index + 1:02d}"


def label_map_of(anatomy: str) -> str:
    """The label map (the real subject) an anatomy was rendered from: variants made by
    :func:`anatomies` are named ``MAP-vK`` and show the same person deformed.

    >>> label_map_of("training_seg_13-v5"), label_map_of("training_seg_14")
    ('training_seg_13', 'training_seg_14')
    """
    return anatomy.split("-v")[0]


def anatomies(label_files: Sequence[Path], n: int, seed: int,
              augment: bool = False) -> list[tuple[str, Callable[[], Anatomy]]]:
    """``n`` anatomy names and loaders: the label maps in turn, then deformed/flipped
    variants of them once the maps run out (or always with ``augment``)."""
    out = []
    for k in range(n):
        path = label_files[k % len(label_files)]
        varied = augment or k >= len(label_files)

        def load(path=path, k=k, varied=varied) -> Anatomy:
            # every anatomy (variants included) is its own subject, with its own texture
            anat = dataclasses.replace(load_anatomy(path),
                                       texture_seed=int(np.random.default_rng([seed, k]).integers(2**31)))
            if varied:
                rng = np.random.default_rng([seed, k, 7919])
                if (k // len(label_files)) % 2 == 1 or rng.random() < 0.5:
                    anat = flip_left_right(anat)
                anat = deform(anat, rng)
            return anat
        out.append((f"{Path(path).name.split('.')[0]}" + (f"-v{k}" if varied else ""), load))
    return out


def make_traveling_dataset(
    labels_dir: Path,
    out_dir: Path,
    protocols: Sequence[Protocol],
    *,
    n_anatomies: int = 3,
    resolution_mm: float = 2.0,
    seed: int = 0,
    rescan: bool = False,
    augment: bool = False,
    progress: Callable[[str], None] = print,
) -> Path:
    """Write the dataset (see module docstring) into ``out_dir``, atomically.

    ``labels_dir`` is a folder of label maps or a single label map file.

    Everything is written to a temporary folder beside ``out_dir`` and renamed
    at the end, so an interrupted run leaves no half-written dataset.
    """
    labels_dir, out_dir = Path(labels_dir), Path(out_dir)
    label_files = [labels_dir] if labels_dir.is_file() else sorted(
        p for p in labels_dir.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    if not label_files:
        raise FileNotFoundError(f"no label maps (*.nii, *.nii.gz) in {labels_dir}")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty")
    names = [p.name for p in protocols]
    if len(set(names)) != len(names) or not all(n.isalnum() for n in names):
        raise ValueError(f"protocol names must be unique and alphanumeric: {names}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _write(tmp, label_files, protocols, n_anatomies, resolution_mm, seed, rescan,
               augment, progress)
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write(root: Path, label_files, protocols, n_anatomies, resolution_mm, seed, rescan,
           augment, progress) -> None:
    truth = root / "derivatives" / TRUTH_NAME
    truth.mkdir(parents=True)
    (root / "code" / "protocols").mkdir(parents=True)
    _json(root / "dataset_description.json", {
        "Name": "harmonize_bids simulated traveling subjects", "BIDSVersion": "1.10.0",
        "DatasetType": "raw", "License": "Apache-2.0 (derived from SynthSeg label maps)",
        "Authors": ["harmonize_bids simulator"],
        "GeneratedBy": [{"Name": "harmonize_bids-simulate"}]})
    (root / "README").write_text(
        "Simulated T1w images: every anatomy (a SynthSeg whole-head label map, possibly\n"
        "deformed) rendered under every scanner protocol (site) by harmonize_bids.simulate.\n"
        "Ground truth (brain masks, CSF/GM/WM maps, rescans) in derivatives/simulation-truth.\n")
    _json(truth / "dataset_description.json", {
        "Name": "simulation ground truth", "BIDSVersion": "1.10.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "harmonize_bids-simulate"}]})
    (truth / "README").write_text("Ground truth of the simulated images: exact brain masks, "
                                  "CSF/GM/WM maps and rescans, on each image's grid.\n")
    (truth / "dseg.tsv").write_text("index\tname\n1\tCSF\n2\tGM\n3\tWM\n")
    for protocol in protocols:
        protocol.to_json(root / "code" / "protocols" / f"{protocol.name}.json")

    rows = ["participant_id\tsite\tanatomy"]
    anats = anatomies(label_files, n_anatomies, seed, augment)
    total = len(anats) * len(protocols)
    done = 0
    for a_idx, (anat_name, load) in enumerate(anats):
        anatomy = load()
        for s_idx, protocol in enumerate(protocols):
            sub = participant_label(a_idx, s_idx)
            rows.append(f"sub-{sub}\t{protocol.name}\t{anat_name}")
            rng = np.random.default_rng([seed, a_idx, s_idx])
            rendering = render_clean(anatomy, protocol, rng, spacing_mm=resolution_mm)
            anat_dir = root / f"sub-{sub}" / "anat"
            anat_dir.mkdir(parents=True)
            to_nifti(acquire(rendering, protocol, rng), rendering.affine).to_filename(
                anat_dir / f"sub-{sub}_T1w.nii.gz")
            _json(anat_dir / f"sub-{sub}_T1w.json", protocol.bids_sidecar())
            truth_dir = truth / f"sub-{sub}" / "anat"
            truth_dir.mkdir(parents=True)
            to_nifti(rendering.brain_mask, rendering.affine).to_filename(
                truth_dir / f"sub-{sub}_desc-brain_mask.nii.gz")
            _json(truth_dir / f"sub-{sub}_desc-brain_mask.json", {
                "Type": "Brain", "Description": "exact brain mask (label map labels 1-499)"})
            to_nifti(rendering.dseg, rendering.affine).to_filename(
                truth_dir / f"sub-{sub}_dseg.nii.gz")
            if rescan:
                to_nifti(acquire(rendering, protocol, np.random.default_rng([seed, a_idx, s_idx, 1])),
                         rendering.affine).to_filename(truth_dir / f"sub-{sub}_desc-rescan_T1w.nii.gz")
                _json(truth_dir / f"sub-{sub}_desc-rescan_T1w.json", {
                    **protocol.bids_sidecar(), "SkullStripped": False,
                    "Description": "same acquisition with new thermal noise (scan-rescan ceiling)"})
            done += 1
            progress(f"[{done}/{total}] sub-{sub}: {anat_name} as {protocol.name}")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    _json(root / "participants.json", {
        "site": {"Description": "scanner protocol the image was simulated with"},
        "anatomy": {"Description": "label map (and variant) the image was rendered from"}})


def _json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")
