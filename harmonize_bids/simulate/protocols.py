"""Scanner protocols: small, documented, serializable records.

A :class:`Protocol` holds the sequence timing that sets tissue contrast and
the acquisition/reconstruction traits that make a site recognizable (SNR,
bias, resolution, vendor intensity mapping).  Read and write them as JSON
(``Protocol.from_json`` / ``to_json``); :data:`PROTOCOLS` holds named,
realistic examples and :func:`random_protocol` draws new ones for domain
randomization.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

Sequence = Literal["mprage", "spgr"]


@dataclass(frozen=True)
class Protocol:
    """One scanner protocol (times in ms, angles in degrees, lengths in mm)."""

    name: str
    sequence: Sequence
    field_strength: float
    tr: float
    te: float
    flip_deg: float
    ti: float = 0.0
    echo_spacing: float = 0.0
    n_readout: int = 0
    inversion_efficiency: float = 0.96
    #: acquired voxel size (x, y, z) in mm: images are blurred by this point spread
    voxel_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: extra Gaussian blur (FWHM, mm) from reconstruction filters
    blur_fwhm_mm: float = 0.0
    #: signal-to-noise ratio of white matter (Rician noise sigma = WM signal / snr)
    snr: float = 30.0
    #: standard deviation of the log bias field (0.2 ~ +-20 % across the head)
    bias_strength: float = 0.15
    #: within-tissue texture: relative std of smooth T1/PD fluctuations
    texture_std: float = 0.03
    #: vendor mapping: stored = gain * (signal / WM signal) ** gamma + offset
    gain: float = 1000.0
    gamma: float = 1.0
    offset: float = 0.0
    clip_percentile: float = 99.9
    dtype: Literal["uint8", "int16", "uint16", "float32"] = "int16"
    manufacturer: str = "Simulated"
    model: str = "Simulated"
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.sequence not in ("mprage", "spgr"):
            raise ValueError(f"unknown sequence {self.sequence!r}")
        if self.sequence == "mprage" and (self.ti <= 0 or self.n_readout <= 0):
            raise ValueError(f"{self.name}: MPRAGE needs ti > 0 and n_readout > 0")
        if self.snr <= 0 or self.tr <= 0:
            raise ValueError(f"{self.name}: snr and tr must be positive")
        object.__setattr__(self, "voxel_mm", tuple(float(v) for v in self.voxel_mm))

    # -- serialization ----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["voxel_mm"] = list(self.voxel_mm)
        return out

    def to_json(self, path: Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Protocol":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown protocol fields: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "Protocol":
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_file(cls, path: Path) -> "Protocol":
        return cls.from_json(Path(path).read_text())

    def bids_sidecar(self) -> dict[str, Any]:
        """Scanner fields for a BIDS sidecar (times in seconds)."""
        side = {
            "Manufacturer": self.manufacturer,
            "ManufacturersModelName": self.model,
            "MagneticFieldStrength": self.field_strength,
            "RepetitionTime": self.tr / 1000 if self.sequence == "spgr" else None,
            "RepetitionTimePreparation": self.tr / 1000 if self.sequence == "mprage" else None,
            "EchoTime": self.te / 1000,
            "InversionTime": self.ti / 1000 if self.sequence == "mprage" else None,
            "FlipAngle": self.flip_deg,
            "PulseSequenceType": "MPRAGE" if self.sequence == "mprage" else "SPGR",
            "SliceThickness": self.voxel_mm[2],
            "SimulatedProtocol": self.name,
        }
        return {k: v for k, v in side.items() if v is not None}


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("siemens3tmprage", "mprage", 3.0, tr=2300, te=2.98, flip_deg=9, ti=900,
             echo_spacing=7.1, n_readout=176, voxel_mm=(1, 1, 1), snr=35, bias_strength=0.15,
             gain=900, gamma=1.0, dtype="int16", manufacturer="Siemens", model="Prisma",
             description="ADNI-like 3 T MPRAGE, 1 mm isotropic"),
    Protocol("ge15tspgr", "spgr", 1.5, tr=24, te=5, flip_deg=35, voxel_mm=(0.94, 0.94, 1.2),
             snr=22, bias_strength=0.2, blur_fwhm_mm=0.5, gain=2500, gamma=1.1, offset=20,
             dtype="int16", manufacturer="GE", model="Signa HDxt",
             description="1.5 T 3D SPGR (IXI-Guys-like)"),
    Protocol("philips3ttfe", "mprage", 3.0, tr=2000, te=3.7, flip_deg=8, ti=800,
             echo_spacing=8.1, n_readout=150, voxel_mm=(1.2, 0.94, 0.94), snr=30,
             bias_strength=0.25, gain=1800, gamma=0.85, dtype="uint16",
             manufacturer="Philips", model="Achieva",
             description="3 T T1-TFE with inversion prepulse, sagittal"),
    Protocol("siemens15tlowsnr", "mprage", 1.5, tr=2730, te=3.4, flip_deg=7, ti=1000,
             echo_spacing=8.7, n_readout=128, voxel_mm=(1.3, 1.0, 1.0), snr=12,
             bias_strength=0.2, gain=600, gamma=1.0, dtype="int16", manufacturer="Siemens",
             model="Avanto", description="older 1.5 T MPRAGE with low SNR"),
    Protocol("clinical15tthick", "spgr", 1.5, tr=30, te=6, flip_deg=40,
             voxel_mm=(0.9, 0.9, 5.0), snr=25, bias_strength=0.25, blur_fwhm_mm=0.8,
             gain=200, gamma=1.2, dtype="uint8", manufacturer="Siemens", model="Aera",
             description="clinical thick-slice (5 mm axial) T1 gradient echo, 8-bit"),
)}


def random_protocol(rng: np.random.Generator, name: str = "random") -> Protocol:
    """A plausible random protocol (domain randomization)."""
    field_t = float(rng.choice([1.5, 3.0]))
    if rng.random() < 0.6:
        n_readout = int(rng.integers(100, 200))
        es = float(rng.uniform(6, 10))
        ti = float(rng.uniform(700, 1200))
        n_readout = min(n_readout, int(2 * (ti - 50) / es))  # the train must fit before TI
        tr = float(ti + n_readout * es / 2 + rng.uniform(300, 1200))
        kw = dict(sequence="mprage", tr=tr, ti=ti, echo_spacing=es, n_readout=n_readout,
                  flip_deg=float(rng.uniform(6, 12)), te=float(rng.uniform(2.5, 4.5)))
    else:
        kw = dict(sequence="spgr", tr=float(rng.uniform(15, 35)), te=float(rng.uniform(3, 7)),
                  flip_deg=float(rng.uniform(20, 45)))
    thick = float(rng.choice([1.0, 1.0, 1.2, 1.5, 3.0]))
    voxel = [float(rng.uniform(0.9, 1.3)), float(rng.uniform(0.9, 1.3)), thick]
    rng.shuffle(voxel)
    return Protocol(
        name=name, field_strength=field_t, voxel_mm=tuple(voxel),
        snr=float(rng.uniform(10, 45)), bias_strength=float(rng.uniform(0.05, 0.3)),
        blur_fwhm_mm=float(rng.uniform(0, 1.0)), texture_std=float(rng.uniform(0.01, 0.05)),
        gain=float(rng.uniform(100, 3000)), gamma=float(rng.uniform(0.7, 1.4)),
        offset=float(rng.uniform(0, 50)), dtype="float32", **kw)


def get_protocol(name: str) -> Protocol:
    """A named protocol, or a clear error listing the known names."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None
