"""Tiny synthetic multi-site BIDS datasets for tests and the demo.

Heads are the shipped head template moved by a random rigid transform and
scaling, resampled to a coarse grid in a random orientation, and given a
site-specific contrast (gamma, gain), a smooth bias field and Rician noise.
The true brain mask comes along, written as a derivative
(``derivatives/synthetic-truth``).  This is a test fixture, not a physics
simulator.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage as ndi

from harmonize_bids.templates import get_template


@dataclass(frozen=True)
class SiteLook:
    """How a synthetic site renders the template head."""

    name: str
    manufacturer: str
    model: str
    field_strength: float
    gamma: float
    gain: float
    snr: float


DEFAULT_SITES = (
    SiteLook("siteA", "Siemens", "Prisma", 3.0, gamma=1.0, gain=800.0, snr=40.0),
    SiteLook("siteB", "GE", "Signa", 1.5, gamma=1.6, gain=300.0, snr=20.0),
    SiteLook("siteC", "Philips", "Ingenia", 3.0, gamma=0.7, gain=1500.0, snr=30.0),
)

#: Orientations of the stored voxel axes (tests reorientation to RAS).
_ORIENTATIONS = (("R", "A", "S"), ("L", "A", "S"), ("L", "P", "S"), ("P", "I", "R"))


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _grid_affine(orientation: tuple[str, str, str], shape: tuple[int, int, int],
                 spacing: float) -> np.ndarray:
    """Voxel -> world affine for axes in ``orientation``, centred on the origin."""
    axes = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    aff = np.zeros((4, 4))
    aff[3, 3] = 1
    for col, code in enumerate(orientation):
        row, sign = axes[code]
        aff[row, col] = sign * spacing
    aff[:3, 3] = -aff[:3, :3] @ ((np.array(shape) - 1) / 2)
    return aff


def synthetic_head(rng: np.random.Generator, site: SiteLook, *, resolution_mm: float = 4.0,
                   ) -> tuple[nb.Nifti1Image, nb.Nifti1Image]:
    """One synthetic T1w head at ``site`` and its true brain mask (same grid)."""
    head_img = nb.load(get_template("head"))
    head = np.asarray(head_img.dataobj, dtype=np.float32) / 255.0
    prob = np.asarray(nb.load(get_template("brain_probseg")).dataobj, dtype=np.float32) / 255.0

    fov_mm = np.array([200.0, 240.0, 230.0])
    orientation = _ORIENTATIONS[rng.integers(len(_ORIENTATIONS))]
    perm = ["RLAPSI".index(c) // 2 for c in orientation]
    shape = tuple(int(round(fov_mm[p] / resolution_mm)) for p in perm)
    out_aff = _grid_affine(orientation, shape, resolution_mm)

    # subject world -> template world: rotation, scaling and a shift
    moved = np.eye(4)
    moved[:3, :3] = _rotation(np.deg2rad(rng.uniform(-8, 8, 3))) * rng.uniform(0.92, 1.08)
    moved[:3, 3] = rng.uniform(-8, 8, 3) + np.array([0.0, -15.0, 10.0])
    vox2tpl = np.linalg.inv(head_img.affine) @ moved @ out_aff
    resample = dict(matrix=vox2tpl[:3, :3], offset=vox2tpl[:3, 3], output_shape=shape, order=1)
    head = ndi.affine_transform(head, **resample)
    mask = ndi.affine_transform(prob, **resample) >= 0.5

    # site look: gamma, bias field, Rician noise, gain
    image = np.clip(head, 0, None) ** site.gamma
    coords = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    bias = np.exp(np.tensordot(rng.normal(0, 0.15, 3), coords, axes=1))
    image = image * bias
    sigma = image[mask].mean() / site.snr
    image = np.hypot(image + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    data = np.clip(np.round(image * site.gain), 0, 32767).astype(np.int16)

    hdr = nb.Nifti1Header()
    hdr.set_xyzt_units("mm")
    t1w = nb.Nifti1Image(data, out_aff, hdr)
    t1w.set_qform(out_aff, code=1)
    t1w.set_sform(out_aff, code=1)
    mask_img = nb.Nifti1Image(mask.astype(np.uint8), out_aff, hdr.copy())
    mask_img.set_data_dtype(np.uint8)
    return t1w, mask_img


def make_synthetic_dataset(out_dir: Path, *, n_subjects: int = 3, sites=DEFAULT_SITES,
                           resolution_mm: float = 4.0, seed: int = 0,
                           sessions: tuple[str, ...] = ()) -> Path:
    """Write a small multi-site BIDS dataset; subjects cycle through ``sites``.

    Returns ``out_dir``.  The true brain masks are under
    ``derivatives/synthetic-truth``.
    """
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset_description.json").write_text(json.dumps(
        {"Name": "harmonize_bids synthetic heads", "BIDSVersion": "1.10.0",
         "DatasetType": "raw", "License": "CC0",
         "Authors": ["harmonize_bids"]}, indent=2))
    (out_dir / "README").write_text(
        "Synthetic T1w heads made by harmonize_bids.synthetic for tests and demos.\n"
        "Each participant is the package's head template, moved, resampled and rendered\n"
        "with a site-specific contrast, bias field and noise.\n")
    truth = out_dir / "derivatives" / "synthetic-truth"
    truth.mkdir(parents=True, exist_ok=True)
    (truth / "dataset_description.json").write_text(json.dumps(
        {"Name": "true brain masks", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "harmonize_bids.synthetic"}]}, indent=2))
    rows = ["participant_id\tsite"]
    for i in range(n_subjects):
        sub = f"{i + 1:02d}"
        site = sites[i % len(sites)]
        rows.append(f"sub-{sub}\t{site.name}")
        for ses in sessions or (None,):
            rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "anat"
            stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "")
            t1w, mask = synthetic_head(rng, site, resolution_mm=resolution_mm)
            (out_dir / rel).mkdir(parents=True, exist_ok=True)
            t1w.to_filename(out_dir / rel / f"{stem}_T1w.nii.gz")
            (out_dir / rel / f"{stem}_T1w.json").write_text(json.dumps(
                {"Manufacturer": site.manufacturer, "ManufacturersModelName": site.model,
                 "MagneticFieldStrength": site.field_strength}, indent=2))
            (truth / rel).mkdir(parents=True, exist_ok=True)
            mask.to_filename(truth / rel / f"{stem}_desc-brain_mask.nii.gz")
    (out_dir / "participants.tsv").write_text("\n".join(rows) + "\n")
    (out_dir / "participants.json").write_text(json.dumps(
        {"site": {"Description": "acquisition site (synthetic scanner)"}}, indent=2))
    return out_dir
