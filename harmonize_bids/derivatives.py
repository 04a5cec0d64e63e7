"""The one place that names derivative files and writes their sidecars.

Every output of harmonize_bids is described in :data:`OUTPUTS` by its BIDS
entities, fixed sidecar fields and the outputs it was computed from.  Paths
come from pybids' ``build_path`` on :data:`PATH_PATTERNS`; nothing else in the
package builds a derivative file name or dumps a sidecar.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harmonize_bids import __version__
from harmonize_bids.exceptions import OutputError
from harmonize_bids.utils.io import atomic_path, atomic_write_json, atomic_write_text

#: TemplateFlow identifier of the standard space the model works in.
TEMPLATE_SPACE = "MNI152NLin2009aSym"
BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/harmonize-bids/harmonize_bids"

PATH_PATTERNS = [
    "sub-{subject}[/ses-{session}]/{datatype<anat>|anat}/sub-{subject}[_ses-{session}]"
    "[_acq-{acquisition}][_ce-{ceagent}][_rec-{reconstruction}][_run-{run}]"
    "[_from-{from}][_to-{to}][_mode-{mode}][_space-{space}][_res-{res}]"
    "[_desc-{desc}]_{suffix}{extension}",
]


@dataclass(frozen=True)
class OutputSpec:
    """How one kind of derivative is named and described."""

    entities: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)
    #: other outputs (keys of OUTPUTS) or "raw" this one is computed from
    sources: tuple[str, ...] = ("raw",)
    #: "T1w" (the source image grid) or the template space
    space: str = "T1w"


OUTPUTS: dict[str, OutputSpec] = {
    "t1w_preproc": OutputSpec(
        {"desc": "preproc", "suffix": "T1w", "extension": ".nii.gz"},
        {"SkullStripped": False,
         "Description": "T1w reoriented to RAS and corrected for intensity non-uniformity (ANTs N4; "
                        "the field fitted inside the brain mask)."},
        sources=("raw", "brain_mask"),
    ),
    "brain_mask": OutputSpec(
        {"desc": "brain", "suffix": "mask", "extension": ".nii.gz"},
        {"Type": "Brain",
         "Description": "Brain mask: head template registered with ANTs (to the T1w after a "
                        "head-wide N4), brain probability warped back, thresholded and "
                        "cleaned."},
        sources=("raw",),
    ),
    "t1w2std_xfm": OutputSpec(
        {"from": "T1w", "to": TEMPLATE_SPACE, "mode": "image", "suffix": "xfm", "extension": ".h5"},
        {"Description": "ANTs composite transform from T1w to template space "
                        "(RegistrationTransform: which transforms were fitted).",
         "FromSpace": "T1w", "ToSpace": TEMPLATE_SPACE},
        sources=("t1w_preproc", "brain_mask"),
    ),
    "std2t1w_xfm": OutputSpec(
        {"from": TEMPLATE_SPACE, "to": "T1w", "mode": "image", "suffix": "xfm", "extension": ".h5"},
        {"Description": "ANTs composite transform from template space back to T1w.",
         "FromSpace": TEMPLATE_SPACE, "ToSpace": "T1w"},
        sources=("t1w_preproc", "brain_mask"),
    ),
    "std_t1w": OutputSpec(
        {"space": TEMPLATE_SPACE, "desc": "preproc", "suffix": "T1w", "extension": ".nii.gz"},
        {"SkullStripped": True,
         "Description": "Brain in template space, intensity-normalized: the input of the "
                        "harmonization model."},
        sources=("t1w_preproc", "brain_mask", "t1w2std_xfm"),
        space=TEMPLATE_SPACE,
    ),
    "harmonized": OutputSpec(
        {"desc": "harmonized", "suffix": "T1w", "extension": ".nii.gz"},
        {"SkullStripped": True,
         "Description": "Harmonized brain resampled back to the T1w grid."},
        sources=("std_harmonized", "std2t1w_xfm"),
    ),
    "std_harmonized": OutputSpec(
        {"space": TEMPLATE_SPACE, "desc": "harmonized", "suffix": "T1w", "extension": ".nii.gz"},
        {"SkullStripped": True,
         "Description": "Brain harmonized to the target site in template space."},
        sources=("std_t1w", "std_mask"),
        space=TEMPLATE_SPACE,
    ),
    "std_mask": OutputSpec(
        {"space": TEMPLATE_SPACE, "desc": "brain", "suffix": "mask", "extension": ".nii.gz"},
        {"Type": "Brain", "Description": "Brain mask resampled to template space."},
        sources=("brain_mask", "t1w2std_xfm"),
        space=TEMPLATE_SPACE,
    ),
}


def derivative_relpath(source_entities: dict[str, Any], kind: str) -> str:
    """Relative path of output ``kind`` for a source image with these entities.

    >>> derivative_relpath({"subject": "01", "session": "a", "run": 2}, "brain_mask")
    'sub-01/ses-a/anat/sub-01_ses-a_run-2_desc-brain_mask.nii.gz'
    """
    from bids.layout.writing import build_path

    if kind not in OUTPUTS:
        raise KeyError(f"Unknown output kind {kind!r}; known: {sorted(OUTPUTS)}")
    entities = {k: v for k, v in source_entities.items() if not k.startswith("_")}
    bad = {k: v for k, v in entities.items() if not re.fullmatch(r"[A-Za-z0-9]+", str(v))}
    if bad:
        raise OutputError(f"Refusing entity values that are not BIDS labels: {bad}")
    entities.update(OUTPUTS[kind].entities)
    path = build_path(entities, PATH_PATTERNS, strict=False)
    if path is None:
        raise ValueError(f"Cannot name {kind} for entities {entities}")
    return path


def derivative_path(output_dir: Path, source_entities: dict[str, Any], kind: str) -> Path:
    """Absolute path of output ``kind``; never outside ``output_dir``."""
    output_dir = Path(output_dir).absolute()
    path = (output_dir / derivative_relpath(source_entities, kind)).resolve()
    if output_dir.resolve() not in path.parents:
        raise OutputError(f"Refusing to write outside the output directory: {path}")
    return path


def report_path(output_dir: Path, subject: str) -> Path:
    """The participant's HTML report, ``OUTPUT_DIR/sub-<subject>.html`` (as fMRIPrep).

    >>> report_path(Path("/out"), "01").as_posix()
    '/out/sub-01.html'
    """
    if not re.fullmatch(r"[A-Za-z0-9]+", str(subject)):
        raise OutputError(f"Refusing a subject label that is not a BIDS label: {subject!r}")
    return Path(output_dir).absolute() / f"sub-{subject}.html"


def site_landmarks_path(output_dir: Path) -> Path:
    """The dataset's tissue landmarks per site (the group level's ``--landmarks-only``).

    >>> site_landmarks_path(Path("/out")).as_posix()
    '/out/site_landmarks.json'
    """
    return Path(output_dir).absolute() / SITE_LANDMARKS_FILE


def sidecar_path(path: Path) -> Path:
    """The JSON sidecar beside a derivative file."""
    name = path.name
    for ext in (".nii.gz", ".nii", ".h5", ".txt"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


def build_sidecar(
    source_entities: dict[str, Any],
    kind: str,
    site: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sidecar content: fixed fields, Sources as BIDS URIs, SpatialReference, site."""
    spec = OUTPUTS[kind]
    raw_uri = f"bids:raw:{source_entities['_relpath']}"
    sources = [
        raw_uri if src == "raw" else f"bids::{derivative_relpath(source_entities, src)}"
        for src in spec.sources
    ]
    sidecar: dict[str, Any] = {**spec.metadata, "Sources": sources}
    if spec.entities["suffix"] != "xfm":
        sidecar["SpatialReference"] = raw_uri if spec.space == "T1w" else spec.space
    if site is not None:
        sidecar["Site"] = site
    sidecar.update(extra or {})
    return sidecar


def save_derivative(
    output_dir: Path,
    source_entities: dict[str, Any],
    kind: str,
    in_file: Path,
    site: str | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Copy ``in_file`` to its derivative name and write its sidecar, atomically.

    An uncompressed NIfTI is gzipped on the way when the output is ``.nii.gz``.
    """
    out = derivative_path(output_dir, source_entities, kind)
    in_file = Path(in_file)
    with atomic_path(out) as tmp:
        if out.name.endswith(".gz") and not in_file.name.endswith(".gz"):
            with in_file.open("rb") as src, gzip.open(tmp, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(in_file, tmp)
    atomic_write_json(build_sidecar(source_entities, kind, site, extra_metadata), sidecar_path(out))
    return out


def container_info() -> dict[str, str] | None:
    """``GeneratedBy.Container`` when running inside Docker or Apptainer."""
    kind = os.environ.get("HARMONIZE_BIDS_CONTAINER")
    if not kind:
        if os.environ.get("APPTAINER_NAME") or os.environ.get("SINGULARITY_NAME"):
            kind = "singularity"
        elif Path("/.dockerenv").exists():
            kind = "docker"
    if not kind:
        return None
    info = {"Type": kind}
    tag = os.environ.get("HARMONIZE_BIDS_CONTAINER_TAG")
    if tag:
        info["Tag"] = tag
    return info


def dataset_description(bids_dir: Path) -> dict[str, Any]:
    """Content of the derivative dataset's ``dataset_description.json``."""
    generated = {"Name": "harmonize_bids", "Version": __version__, "CodeURL": CODE_URL}
    container = container_info()
    if container:
        generated["Container"] = container
    raw_uri = Path(bids_dir).absolute().as_uri()
    return {
        "Name": "harmonize_bids derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [{"URL": raw_uri}],
        "DatasetLinks": {"raw": raw_uri},
        "HowToAcknowledge": "Please cite harmonize_bids and Lan et al. (arXiv:2409.00807).",
    }


#: Files in the output that are not BIDS (ignored by the validator).
#: the group level's statistics of the participants' tissue landmarks, one file per dataset
SITE_LANDMARKS_FILE = "site_landmarks.json"
BIDSIGNORE = ["*_xfm.h5", "*_xfm.json", "logs", "models", "*.html", "figures",
              SITE_LANDMARKS_FILE]


def init_derivatives(output_dir: Path, bids_dir: Path) -> None:
    """Create the output dataset's top-level files (safe under concurrent jobs).

    An existing ``dataset_description.json`` written by harmonize_bids is left
    alone when it says what this run would write, else refreshed (a new version,
    another container, a moved input); one written by another tool is refused.
    Each write is a rename, so parallel jobs always leave one valid file.
    """
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"Cannot create output directory {output_dir}: {err}") from err
    if not os.access(output_dir, os.W_OK):
        raise OutputError(f"Output directory {output_dir} is not writable.")
    desc = output_dir / "dataset_description.json"
    wanted = dataset_description(bids_dir)
    if desc.exists():
        try:
            found = json.loads(desc.read_text())
            names = [g.get("Name") for g in found.get("GeneratedBy", [])]
        except (OSError, UnicodeDecodeError, ValueError, AttributeError, TypeError):
            found, names = None, []
        if "harmonize_bids" not in names:
            raise OutputError(
                f"{output_dir} holds another dataset ({desc} was not written by "
                f"harmonize_bids): use an empty output directory, e.g. "
                f"<bids_dir>/derivatives/harmonize_bids.")
        if found == wanted:
            _write_bidsignore(output_dir)
            return
    atomic_write_json(wanted, desc)
    _write_bidsignore(output_dir)


def _write_bidsignore(output_dir: Path) -> None:
    ignore = Path(output_dir) / ".bidsignore"
    if not ignore.exists():
        atomic_write_text("\n".join(BIDSIGNORE) + "\n", ignore)
