"""Every pybids query of the input dataset lives here.

Queries are data (:data:`DEFAULT_QUERIES`); ``--bids-filter-file`` merges into
them.  The site of each T1w image is resolved by :func:`resolve_site`.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from harmonize_bids.exceptions import (
    InputError,
    NothingSelectedError,
    UsageError,
    ValidationError,
)

#: Named queries; each is a dict of pybids filters.
DEFAULT_QUERIES: dict[str, dict[str, Any]] = {
    "t1w": {"datatype": "anat", "suffix": "T1w", "extension": [".nii", ".nii.gz"]},
}

#: Sidecar fields that identify a scanner, in the order they build a site key.
SCANNER_FIELDS = (
    "Manufacturer",
    "ManufacturersModelName",
    "MagneticFieldStrength",
    "InstitutionName",
    "StationName",
)

#: Entities of the source file that are carried into derivative names.
SOURCE_ENTITIES = ("subject", "session", "acquisition", "ceagent", "reconstruction", "run")
#: Entities a T1w may have that derivative names do not carry: images differing only
#: in these are refused (:func:`resolve_sites`) rather than written over each other.
NOT_CARRIED = ("task", "echo", "part", "chunk")

_LABEL_RE = re.compile(r"^[a-zA-Z0-9]+$")


@dataclass(frozen=True)
class T1wRecord:
    """One T1w image selected for processing and the site it comes from."""

    path: Path
    entities: dict[str, Any] = field(hash=False, compare=False)
    site: str
    site_source: str

    @property
    def subject(self) -> str:
        return self.entities["subject"]

    @property
    def session(self) -> str | None:
        return self.entities.get("session")

    @property
    def relpath(self) -> str:
        """Path relative to the dataset root, POSIX style (for BIDS URIs)."""
        return self.entities["_relpath"]

    @property
    def label(self) -> str:
        """A short name for logs and work directories, e.g. ``sub-01_ses-a_run-1``."""
        parts = [f"sub-{self.subject}"]
        for key, prefix in (("session", "ses"), ("acquisition", "acq"),
                            ("ceagent", "ce"), ("reconstruction", "rec"), ("run", "run")):
            if self.entities.get(key) is not None:
                parts.append(f"{prefix}-{self.entities[key]}")
        return "_".join(parts)


def clean_labels(labels: Iterable[str] | None, prefix: str) -> tuple[str, ...]:
    """Strip an optional ``sub-``/``ses-`` prefix and reject unsafe labels.

    >>> clean_labels(["sub-01", "02"], "sub-")
    ('01', '02')
    """
    out = []
    for label in labels or ():
        label = label[len(prefix):] if label.startswith(prefix) else label
        if not _LABEL_RE.match(label):
            raise UsageError(
                f"Invalid label {label!r}: BIDS labels are letters and digits only."
            )
        out.append(label)
    return tuple(dict.fromkeys(out))


def load_bids_filters(path: Path | None) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file``: ``{"t1w": {"session": "01", ...}}``.

    ``null`` means "entity absent" and ``"*"`` means "any value", as in fMRIPrep.
    """
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise InputError(f"BIDS filter file not found: {path}")
    try:
        filters = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"BIDS filter file {path} is not valid JSON: {err}") from err
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise UsageError(f"BIDS filter file {path} must map query names to objects.")
    unknown = set(filters) - set(DEFAULT_QUERIES)
    if unknown:
        raise UsageError(
            f"Unknown query {sorted(unknown)} in {path}; known: {sorted(DEFAULT_QUERIES)}."
        )
    return filters


def _to_pybids(filters: dict[str, Any]) -> dict[str, Any]:
    from bids.layout import Query

    def convert(value: Any) -> Any:
        if value is None:
            return Query.NONE
        if value == "*":
            return Query.ANY
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return {key: convert(value) for key, value in filters.items()}


def load_layout(bids_dir: Path):
    """Index the input dataset (no validation here: see :func:`validate_dataset`)."""
    from bids.layout import BIDSLayout, BIDSLayoutIndexer

    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(f"BIDS directory not found: {bids_dir}")
    if not (bids_dir / "dataset_description.json").is_file():
        raise InputError(f"{bids_dir} has no dataset_description.json: is it a BIDS dataset?")
    indexer = BIDSLayoutIndexer(
        validate=False,
        ignore=("code", "stimuli", "sourcedata", "models", "derivatives",
                re.compile(r"^\."), re.compile(r"^(?!/sub-).*(func|dwi|fmap|perf|eeg|meg)")),
    )
    try:
        return BIDSLayout(str(bids_dir), validate=False, indexer=indexer)
    except Exception as err:  # pybids raises many types for a broken dataset
        raise InputError(f"Cannot index {bids_dir} as BIDS: {err}") from err


def collect_t1w(
    layout,
    participant_label: tuple[str, ...] = (),
    session_label: tuple[str, ...] = (),
    bids_filters: dict[str, dict[str, Any]] | None = None,
) -> list[Path]:
    """Return the T1w images selected by labels and filters, sorted."""
    subjects = layout.get_subjects()
    missing = sorted(set(participant_label) - set(subjects))
    if missing:
        raise InputError(
            f"Participant(s) not found in {layout.root}: {', '.join(missing)}. "
            f"Available: {', '.join(sorted(subjects)) or 'none'}."
        )
    if session_label:
        sessions = layout.get_sessions(subject=list(participant_label) or None)
        absent = sorted(set(session_label) - set(sessions))
        if absent:
            raise InputError(
                f"Session(s) not found: {', '.join(absent)}. "
                f"Available: {', '.join(sorted(sessions)) or 'none'}."
            )
    query = dict(DEFAULT_QUERIES["t1w"])
    query.update((bids_filters or {}).get("t1w", {}))
    if participant_label:
        query["subject"] = list(participant_label)
    if session_label:
        query["session"] = list(session_label)
    try:
        files = layout.get(return_type="file", invalid_filters="error", **_to_pybids(query))
    except ValueError as err:
        raise UsageError(f"Invalid BIDS filter: {err}") from err
    if not files:
        raise NothingSelectedError(
            f"No T1w images match the selection (query: {query})."
        )
    return sorted(Path(f) for f in files)


#: the site column looked for when ``--site-column`` is not given
DEFAULT_SITE_COLUMN = "site"


def _participants_sites(layout, column: str) -> dict[str, str]:
    """``{subject: site}`` from participants.tsv's ``column``; ``{}`` without the file
    (or without the default column).  A column asked for by name that the file lacks
    is a usage error: a misspelling would otherwise fall back to scanner fields."""
    tsv = Path(layout.root) / "participants.tsv"
    if not tsv.is_file():
        return {}
    with tsv.open(newline="", encoding="utf-8-sig") as fobj:  # tolerate a BOM
        reader = csv.DictReader(fobj, delimiter="\t")
        rows = list(reader)
        columns = list(reader.fieldnames or [])
    if column not in columns:
        if column != DEFAULT_SITE_COLUMN:
            raise UsageError(f"--site-column {column}: participants.tsv has no such column "
                             f"(its columns: {', '.join(columns)})")
        return {}
    sites = {}
    for row in rows:
        pid = (row.get("participant_id") or "").removeprefix("sub-")
        value = (row.get(column) or "").strip()
        if pid and value and value != "n/a":
            sites[pid] = value
    return sites


def scanner_site_key(metadata: dict[str, Any]) -> str | None:
    """Build a site key from sidecar scanner fields.

    >>> scanner_site_key({"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma fit",
    ...                   "MagneticFieldStrength": 3})
    'siemens-prismafit-3t'
    >>> scanner_site_key({}) is None
    True
    """
    parts = []
    for key in SCANNER_FIELDS:
        value = metadata.get(key)
        if value in (None, ""):
            continue
        text = f"{value:g}t" if key == "MagneticFieldStrength" and isinstance(value, (int, float)) \
            else str(value)
        text = re.sub(r"[^a-z0-9.]", "", text.lower())
        if text:
            parts.append(text)
    return "-".join(parts) or None


def resolve_sites(
    layout,
    files: list[Path],
    site_column: str = "site",
    site_from_session: bool = False,
) -> list[T1wRecord]:
    """Attach a site to each image: participants.tsv, else session, else scanner fields."""
    from_tsv = _participants_sites(layout, site_column)
    records, by_label = [], {}
    for path in files:
        bids_file = layout.get_file(str(path))
        entities = {k: v for k, v in bids_file.get_entities().items() if k in SOURCE_ENTITIES}
        entities["_relpath"] = Path(bids_file.relpath).as_posix()
        subject = entities["subject"]
        if subject in from_tsv:
            site, source = from_tsv[subject], f"participants.tsv:{site_column}"
        elif site_from_session and entities.get("session"):
            site, source = entities["session"], "session"
        else:
            key = scanner_site_key(layout.get_metadata(str(path)))
            site, source = (key, "sidecar") if key else ("unknown", "none")
        record = T1wRecord(path=Path(path), entities=entities, site=site, site_source=source)
        by_label.setdefault(record.label, []).append(record)
        records.append(record)
    clashes = {label: recs for label, recs in by_label.items() if len(recs) > 1}
    if clashes:
        label, recs = next(iter(clashes.items()))
        raise InputError(
            f"{len(clashes)} group(s) of T1w images would share derivative names, e.g. "
            f"{label}: " + ", ".join(r.relpath for r in recs) + ". Their names differ only "
            f"in entities the derivatives do not carry ({', '.join(NOT_CARRIED)}): select "
            "one per group with --bids-filter-file, e.g. "
            '{"t1w": {"echo": 1}} or {"t1w": {"part": "mag"}}.')
    return records


def format_site_table(records: list[T1wRecord]) -> str:
    """A plain-text table of images per site, for the start-up report."""
    by_site: dict[str, list[T1wRecord]] = {}
    for rec in records:
        by_site.setdefault(rec.site, []).append(rec)
    width = max([len("site")] + [len(s) for s in by_site])
    lines = [f"{'site':<{width}}  images  subjects  from"]
    for site in sorted(by_site):
        recs = by_site[site]
        sources = ",".join(sorted({r.site_source for r in recs}))
        lines.append(
            f"{site:<{width}}  {len(recs):>6}  {len({r.subject for r in recs}):>8}  {sources}"
        )
    return "\n".join(lines)


def validate_dataset(bids_dir: Path, participant_label: tuple[str, ...], scratch_dir: Path) -> None:
    """Run ``bids-validator-deno`` offline on the selected participants.

    Only the top-level files and the selected ``sub-*`` folders are linked into
    ``scratch_dir`` and validated there (as fMRIPrep does), so problems in
    other participants do not block this run.  Raises :class:`ValidationError`.
    """
    exe = shutil.which("bids-validator-deno")
    if exe is None:
        raise ValidationError(
            "bids-validator-deno is not installed; install it or pass --skip-bids-validation."
        )
    bids_dir = Path(bids_dir).absolute()
    if scratch_dir.exists():
        shutil.rmtree(scratch_dir)
    scratch_dir.mkdir(parents=True)
    for entry in bids_dir.iterdir():
        if entry.name.startswith("sub-"):
            if participant_label and entry.name[4:] not in participant_label:
                continue
        elif entry.name in ("derivatives", "sourcedata", "code") or entry.name.startswith("."):
            if entry.name != ".bidsignore":
                continue
        os.symlink(entry, scratch_dir / entry.name)
    proc = subprocess.run(
        [exe, "--format", "json", "--ignoreWarnings", str(scratch_dir)],
        capture_output=True, text=True, check=False,
    )
    errors = parse_validator_errors(proc.stdout)
    if errors is None:
        raise ValidationError(
            f"bids-validator-deno failed to run (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    if errors:
        lines = "\n".join(f"  - {e}" for e in errors[:20])
        more = f"\n  ... and {len(errors) - 20} more" if len(errors) > 20 else ""
        raise ValidationError(
            f"The input is not valid BIDS ({len(errors)} error(s)):\n{lines}{more}\n"
            "Fix the dataset, or pass --skip-bids-validation to proceed at your own risk."
        )


def parse_validator_errors(stdout: str) -> list[str] | None:
    """Errors from the validator's JSON report, or None if it is not a report."""
    try:
        report = json.loads(stdout)
    except json.JSONDecodeError:
        return None
    issues = report.get("issues", {})
    issues = issues.get("issues", []) if isinstance(issues, dict) else issues
    out = []
    for issue in issues:
        if issue.get("severity") != "error":
            continue
        where = issue.get("location") or ""
        out.append(f"{issue.get('code', 'ERROR')}: {where} {issue.get('issueMessage') or ''}".strip())
    return out
