"""Resolved settings of one run, passed explicitly (no module-level state).

``parse_args`` in :mod:`harmonize_bids.cli.parser` builds a :class:`Settings`;
:meth:`Settings.to_filename` writes it as TOML into the work directory so any
run can be repeated and audited (random seed included).
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomli_w

from harmonize_bids.diffusion.schedule import SamplerSettings

#: dict settings written as JSON text: they may hold ``null`` (a BIDS filter's "entity
#: absent", a YAML plugin file's ``~``), which TOML cannot write
JSON_FIELDS = ("bids_filters", "plugin_args")

AnalysisLevel = Literal["participant", "group"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, after validation of the command line."""

    bids_dir: Path
    output_dir: Path
    analysis_level: AnalysisLevel
    work_dir: Path
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    bids_filters: dict[str, Any] = field(default_factory=dict)
    skip_bids_validation: bool = False
    site_column: str = "site"
    site_from_session: bool = False
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_mb: int | None = None
    plugin: str = "MultiProc"
    plugin_args: dict[str, Any] = field(default_factory=dict)
    random_seed: int = 0
    target_site: str | None = None
    model: Path | None = None
    device: Device = "auto"
    steps: int = SamplerSettings.steps
    strength: float = SamplerSettings.strength
    stop_at: float = SamplerSettings.stop
    samples: int = SamplerSettings.samples
    source_guidance: float = SamplerSettings.source_guidance
    match_intensities: str = "auto"  # 'auto', 'none' or a site_intensity.SCHEMES name
    level_slices: bool = True
    keep_target_site: bool = True  # images at the target site: written unchanged
    #: the dataset's site landmarks (dataset_landmarks): the tissue match keeps the
    #: subject's part and, with enough target-site scans, takes them as its reference
    site_landmarks: Path | None = None
    landmarks_only: bool = False  # group level: only measure the site landmarks
    train_steps: int = 2000
    batch_size: int = 12
    patch_size: int = 64
    learning_rate: float = 2e-4
    warmup_steps: int = 0
    from_scratch: bool = False  # group level: a new network instead of fine-tuning --model
    shifted_copies: int = 3
    gradient_checkpointing: bool = False
    sloppy: bool = False
    verbose: int = 0
    stop_on_first_crash: bool = False

    def sampler(self):
        """The skip sampler's settings (:class:`~harmonize_bids.diffusion.schedule.SamplerSettings`)."""
        return SamplerSettings(steps=self.steps, strength=self.strength, stop=self.stop_at,
                               samples=self.samples, source_guidance=self.source_guidance)

    def to_dict(self) -> dict[str, Any]:
        """Plain, TOML-serializable view (paths as strings, None dropped; the dict
        settings, such as BIDS filters whose ``null`` means "entity absent", as JSON
        text, since TOML has no null)."""
        out = {}
        for key, value in dataclasses.asdict(self).items():
            if value is None:
                continue
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif key in JSON_FIELDS:
                value = json.dumps(value, sort_keys=True)
            out[key] = value
        return out

    def to_filename(self, path: Path) -> Path:
        """Write the settings as TOML; return the path."""
        from harmonize_bids.utils.io import atomic_write_text

        return atomic_write_text(tomli_w.dumps({"harmonize_bids": self.to_dict()}), Path(path))

    @classmethod
    def from_filename(cls, path: Path) -> "Settings":
        """Read settings written by :meth:`to_filename`."""
        data = tomllib.loads(Path(path).read_text())["harmonize_bids"]
        kwargs: dict[str, Any] = {}
        for fld in dataclasses.fields(cls):
            if fld.name not in data:
                continue
            value = data[fld.name]
            if fld.name in ("bids_dir", "output_dir", "work_dir", "model"):
                value = Path(value)
            elif fld.name in ("participant_label", "session_label"):
                value = tuple(value)
            elif fld.name in JSON_FIELDS and isinstance(value, str):
                value = json.loads(value)
            kwargs[fld.name] = value
        return cls(**kwargs)
