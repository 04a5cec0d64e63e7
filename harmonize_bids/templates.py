"""Locate the templates the app needs; all are installed, none downloaded.

- ``mni_brain``: nilearn's skull-stripped MNI152NLin2009aSym T1w at 1 mm
  (``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``), the target space.
- ``head`` and ``brain_probseg``: a 2 mm head template in the same space and its
  brain probability map, shipped in ``harmonize_bids/data/templates`` and built
  by ``scripts/build_head_template.py`` (sources and licences in the README
  there).
- ``demo_anatomy``: a whole-head SynthSeg-style label map in the same space (the
  maximum-probability atlas of 16 SynthSeg label maps, 1.5 mm), rendered by the
  simulator for the demo; built by ``scripts/build_demo_anatomy.py``.
"""
from __future__ import annotations

from pathlib import Path

from harmonize_bids.derivatives import TEMPLATE_SPACE

_DATA = Path(__file__).parent / "data" / "templates"

_SHIPPED = {
    "head": f"tpl-{TEMPLATE_SPACE}_res-02_desc-head_T1w.nii.gz",
    "brain_probseg": f"tpl-{TEMPLATE_SPACE}_res-02_label-brain_probseg.nii.gz",
    "demo_anatomy": f"tpl-{TEMPLATE_SPACE}_res-15_atlas-SynthSeg_dseg.nii.gz",
}


def get_template(name: str) -> Path:
    """Path of a template file by name (``mni_brain``, ``head``, ``brain_probseg``,
    ``demo_anatomy``).

    >>> get_template("mni_brain").name
    'mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz'
    """
    if name == "mni_brain":
        import nilearn

        path = Path(nilearn.__file__).parent / "datasets" / "data" / \
            "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    elif name in _SHIPPED:
        path = _DATA / _SHIPPED[name]
    else:
        raise KeyError(f"Unknown template {name!r}")
    if not path.is_file():
        raise FileNotFoundError(f"Template file missing from the installation: {path}")
    return path
