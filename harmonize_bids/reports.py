"""Visual reports: one self-contained HTML file per participant (``sub-<label>.html``).

For every T1w image of the participant, in the spirit of fMRIPrep's reports:

1. **Brain mask** on the bias-corrected T1w (three orthogonal slices): is the
   skull stripped and the whole brain kept?
2. **Template registration**: the template-space brain with the tissue outlines
   of the MNI152NLin2009aSym template on top: do they line up?
3. **Harmonization** (when run): the template-space brain before and after, and
   their difference, on three axial slices, with the model, sites and seed.

Figures are PNGs embedded in the HTML, so a report is one file that can be
mailed or opened from an archive.  Reports are written atomically.
"""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np

from harmonize_bids.derivatives import derivative_path, report_path, sidecar_path


def _load(path: Path) -> np.ndarray:
    return np.asarray(nb.as_closest_canonical(nb.load(str(path))).dataobj, np.float32)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight", facecolor="black")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _views(volume: np.ndarray, center: tuple[int, int, int]) -> list[np.ndarray]:
    """Sagittal, coronal and axial slices through ``center`` (RAS, for display)."""
    x, y, z = center
    return [np.rot90(volume[x]), np.rot90(volume[:, y]), np.rot90(volume[:, :, z])]


def _center(mask: np.ndarray) -> tuple[int, int, int]:
    idx = np.argwhere(mask > 0)
    if not len(idx):
        return tuple(s // 2 for s in mask.shape)
    return tuple(int(v) for v in idx.mean(axis=0).round())


def _window(img: np.ndarray) -> tuple[float, float]:
    vals = img[img > 0]
    return (0.0, float(np.percentile(vals, 99.5))) if vals.size else (0.0, 1.0)


def mask_figure(t1w: Path, mask: Path) -> str:
    """Brain mask outline (red) on the bias-corrected T1w."""
    img, msk = _load(t1w), _load(mask)
    return _outlined_views(img, msk, _center(msk), "r")


def _outlined_views(image: np.ndarray, outline: np.ndarray, center: tuple[int, int, int],
                    color: str) -> str:
    """Three orthogonal slices of ``image`` with the 0.5 contour of ``outline``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vmin, vmax = _window(image)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, sl, ms in zip(axes, _views(image, center), _views(outline.astype(float), center)):
        ax.imshow(sl, cmap="gray", vmin=vmin, vmax=vmax)
        ax.contour(ms, levels=[0.5], colors=color, linewidths=0.8)
        ax.axis("off")
    return _png(fig)


def registration_figure(std_t1w: Path, template_brain: Path) -> str:
    """Template-space brain with the template's tissue outlines (yellow)."""
    from scipy import ndimage as ndi

    img = nb.as_closest_canonical(nb.load(str(std_t1w)))
    data = np.asarray(img.dataobj, np.float32)
    tpl = nb.as_closest_canonical(nb.load(str(template_brain)))
    # template onto the output grid (both in MNI mm; nearest-voxel resampling is enough here)
    vox2vox = np.linalg.inv(tpl.affine) @ img.affine
    tpl_data = ndi.affine_transform(np.asarray(tpl.dataobj, np.float32), vox2vox[:3, :3],
                                    vox2vox[:3, 3], output_shape=data.shape, order=1)
    tpl_mask = tpl_data > np.percentile(tpl_data[tpl_data > 0], 30) if (tpl_data > 0).any() \
        else tpl_data > 0
    return _outlined_views(data, tpl_mask, _center(data > 0), "y")


def harmonization_figure(std_t1w: Path, std_harmonized: Path) -> str:
    """Before, after and after - before on three axial slices (template space)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    before, after = _load(std_t1w), _load(std_harmonized)
    brain = np.nonzero((before > 0).sum(axis=(0, 1)))[0]
    zs = np.linspace(brain.min(), brain.max(), 5)[1:4].round().astype(int) if brain.size \
        else [before.shape[2] // 2] * 3
    diff = after - before
    lim = float(np.percentile(np.abs(diff[before > 0]), 99)) if (before > 0).any() else 1.0
    vmax = max(_window(before)[1], _window(after)[1])
    fig, axes = plt.subplots(3, 3, figsize=(9, 9.5))
    for col, z in enumerate(zs):
        for row, (sl, kw) in enumerate([
                (before[:, :, z], dict(cmap="gray", vmin=0, vmax=vmax)),
                (after[:, :, z], dict(cmap="gray", vmin=0, vmax=vmax)),
                (diff[:, :, z], dict(cmap="RdBu_r", vmin=-lim, vmax=lim))]):
            axes[row, col].imshow(np.rot90(sl), **kw)
            axes[row, col].axis("off")
    for row, title in enumerate(["source", "harmonized", "harmonized - source"]):
        axes[row, 0].set_title(title, color="w", loc="left", fontsize=10)
    return _png(fig)


def _sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    return json.loads(side.read_text()) if side.is_file() else {}


def write_report(output_dir: Path, subject: str, records: list, template_brain: Path) -> Path:
    """Write ``sub-<subject>.html`` for the participant's records; return its path."""
    from harmonize_bids import __version__
    from harmonize_bids.utils.io import atomic_write_text

    parts = [f"<h1>harmonize_bids report: sub-{html.escape(subject)}</h1>",
             f"<p>harmonize_bids {html.escape(__version__)}</p>"]
    for rec in records:
        ents = rec.entities
        parts.append(f"<h2>{html.escape(Path(ents['_relpath']).name)}</h2>")
        parts.append(f"<p>Site: <b>{html.escape(rec.site)}</b> (from "
                     f"{html.escape(rec.site_source)})</p>")
        t1w, mask = (derivative_path(output_dir, ents, k) for k in ("t1w_preproc", "brain_mask"))
        std = derivative_path(output_dir, ents, "std_t1w")
        harm = derivative_path(output_dir, ents, "std_harmonized")
        if t1w.is_file() and mask.is_file():
            parts += ["<h3>Brain mask</h3>", "<p>Red: brain mask on the bias-corrected T1w.</p>",
                      f'<img src="data:image/png;base64,{mask_figure(t1w, mask)}">']
        if std.is_file():
            parts += ["<h3>Registration to MNI152NLin2009aSym</h3>",
                      "<p>Yellow: tissue outlines of the MNI152NLin2009aSym template "
                      "(white matter, ventricles): they should follow the same edges "
                      "in the participant's brain.</p>",
                      f'<img src="data:image/png;base64,'
                      f'{registration_figure(std, template_brain)}">']
        if harm.is_file() and std.is_file():
            side = _sidecar(harm)
            keys = ("Site", "TargetSite", "HarmonizationApplied", "HarmonizationNote", "Steps",
                    "Strength", "StopAt", "Samples", "SourceSiteGuidance",
                    "SourceSiteGuidanceAwayFrom", "SliceLevelsEqualized",
                    "TissueIntensitiesMatched", "TissueIntensityLandmarks",
                    "TissueIntensitiesSubjectKept", "TissueIntensityReference", "RandomSeed",
                    "Device", "ModelSHA256")
            rows = "".join(f"<tr><td>{k}</td><td>{html.escape(str(side[k]))}</td></tr>"
                           for k in keys if k in side)
            parts += ["<h3>Harmonization</h3>", f"<table>{rows}</table>",
                      f'<img src="data:image/png;base64,{harmonization_figure(std, harm)}">']
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>sub-{html.escape(subject)}</title><style>body{{font-family:sans-serif;"
            "background:#fafafa;margin:2em}img{max-width:100%;background:#000}"
            "td{padding:2px 12px}</style></head><body>" + "\n".join(parts) + "</body></html>")
    return atomic_write_text(page, report_path(output_dir, subject))
