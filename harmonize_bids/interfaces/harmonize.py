"""The harmonization step as a function and a nipype interface.

The model works on the template-space brain at its own voxel size (2 mm by
default).  The change it makes there (harmonized - input, both at the model's
resolution) is upsampled and added to the 1 mm input, so fine anatomical
detail of the input is kept while contrast, intensity and texture move to the
target site.  The slice-wise model's output is first freed of slice-to-slice
jumps in intensity level (``level_slices``).  With ``match_intensities`` the
model's output is finished by mapping its tissue intensity landmarks onto the
target site's
(:mod:`harmonize_bids.site_intensity`), when the model stores them; with the
dataset's ``site_landmarks`` (:mod:`harmonize_bids.dataset_landmarks`) and the scan's
source site, onto the target site's landmarks moved by where this scan stands among
its site's scans (:func:`~harmonize_bids.site_intensity.scan_target_landmarks`), so the
match removes the scanner's part of the intensities and keeps the subject's; when the
dataset holds enough scans of the target site itself, their landmark mean and spread
stand for it where the model's landmarks do not fit them (ComBat's reference batch,
shrunk towards the model's: :func:`~harmonize_bids.site_intensity.dataset_reference`;
sidecar ``TissueIntensityReference``), for scans whose subject part cannot be kept too.

A brain already at the target site is the reference the others are brought to:
:func:`keep_std_image` writes it unchanged (as ComBat leaves its reference batch),
since even a perfect model could only add its own error to it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)
from scipy import ndimage as ndi

from harmonize_bids.diffusion.schedule import SamplerSettings
from harmonize_bids.site_intensity import SCHEMES
from harmonize_bids.utils.cpu import configure_cpu


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; ``cuda`` must be usable."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA GPU is available")
    return device


def _fit(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, arr.dtype)
    sl = tuple(slice(0, min(a, b)) for a, b in zip(arr.shape, shape))
    out[sl] = arr[sl]
    return out


def _save_in_brain(values: np.ndarray, mask: np.ndarray, like: nb.Nifti1Image,
                   out_file: Path) -> None:
    """Write ``values`` inside ``mask`` (negatives clipped, zero outside) on ``like``'s grid."""
    out = np.where(mask, np.clip(values, 0, None), 0).astype(np.float32)
    nb.Nifti1Image(out, like.affine, like.header).to_filename(str(out_file))


def harmonize_std_image(std_file: Path, mask_file: Path, model_file: Path, target_site: str,
                        out_file: Path, sampler: SamplerSettings = SamplerSettings(), *,
                        seed: int = 0, device: str = "auto", mem_mb: int | None = None,
                        num_threads: int = 1, match_intensities: str = "none",
                        level_slices: bool = True, source_site: str | None = None,
                        site_landmarks: Path | None = None, log=print) -> dict[str, Any]:
    """Harmonize a template-space brain; write ``out_file``; return sidecar metadata.

    ``source_site`` and ``site_landmarks``: see the module docstring; a scan whose site
    the file holds too few scans of gets the plain match, and the log says so."""
    from harmonize_bids.dataset_landmarks import read_site_landmarks
    from harmonize_bids.diffusion.checkpoint import file_sha256, load_model
    from harmonize_bids.diffusion.volume import batch_size_for, harmonize_volume
    from harmonize_bids.site_intensity import (match_landmarks, per_tissue_of,
                                               scan_target_landmarks, target_landmarks,
                                               tissue_landmarks)
    from harmonize_bids.utils.grid import to_model_grid

    if match_intensities not in ("none", *SCHEMES):
        raise ValueError(f"match_intensities must be 'none' or one of {sorted(SCHEMES)}, "
                         f"got {match_intensities!r}")
    configure_cpu(num_threads)
    device = resolve_device(device)
    model, _card = load_model(model_file, device=device)
    site = model.config.site_index(target_site)
    landmarks = None
    if match_intensities != "none":
        try:
            landmarks = target_landmarks(model.config, target_site, match_intensities)
        except ValueError as err:
            log(f"{err}: the output is kept as sampled")
    # read (and check) the dataset's statistics before the model runs, not after
    statistics = None if landmarks is None or site_landmarks is None \
        else read_site_landmarks(site_landmarks, model.config.voxel_mm)
    img = nb.load(str(std_file))
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.asarray(nb.load(str(mask_file)).dataobj) > 0
    low, low_mask, zoom = to_model_grid(data, mask, img.header.get_zooms()[:3],
                                        model.config.voxel_mm)
    started = time.monotonic()
    batch = batch_size_for(mem_mb, low.shape[:2], 4 * model.config.base_channels)
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - last[0] > 10 or done == total:
            last[0] = time.monotonic()
            log(f"harmonizing: {done}/{total} slices")

    away = guidance_site(model.config, source_site, target_site, log) \
        if sampler.source_guidance else None
    harmonized = harmonize_volume(model, low, low_mask, site, sampler, seed=seed, device=device,
                                  max_batch=batch, level=level_slices, progress=progress,
                                  source_site=None if away is None
                                  else model.config.site_index(away))
    matched = subject_kept = False
    reference = "model"
    if statistics is not None:
        try:
            own = tissue_landmarks(low, low_mask, per_tissue_of(landmarks))
        except ValueError:
            own = None
        landmarks, why, reference = scan_target_landmarks(landmarks, statistics, source_site,
                                                          own, target_site=target_site)
        subject_kept = why is None
        whose = "the dataset's own scans of" if reference == "dataset" else "the model's"
        if why:
            log(f"tissue intensities matched to the mean of {whose} '{target_site}', not "
                f"kept per subject ({why})")
        elif reference == "dataset":
            log(f"tissue intensities placed among the dataset's own scans of '{target_site}'")
    if landmarks is not None:
        try:
            harmonized = match_landmarks(harmonized, low_mask, landmarks)
            matched = True
        except ValueError as err:
            log(f"tissue intensities not matched to '{target_site}' ({err})")
    change = ndi.zoom(harmonized - low, 1 / zoom, order=1)
    _save_in_brain(data + _fit(change, data.shape), mask, img, out_file)
    return {
        "TargetSite": target_site,
        "HarmonizationApplied": True,
        "ModelSHA256": file_sha256(model_file),
        "ModelSites": list(model.config.sites),
        **sampler.metadata(),
        # what the chain ran: at a very small --strength fewer distinct timesteps remain
        "Timesteps": sampler.timesteps(model.config.num_timesteps),
        **({"SourceSiteGuidanceAwayFrom": away} if away is not None else {}),
        "SliceLevelsEqualized": bool(level_slices),
        "TissueIntensitiesMatched": matched,
        **({"TissueIntensityLandmarks": match_intensities,
            "TissueIntensitiesSubjectKept": subject_kept,
            "TissueIntensityReference": reference} if matched else {}),
        "RandomSeed": int(seed),
        "Device": device,
        "ModelVoxelSize": model.config.voxel_mm,
        "HarmonizationSeconds": round(time.monotonic() - started, 1),
    }


def guidance_site(config, source_site: str | None, target_site: str,
                  log=print) -> str | None:
    """The model's site that source-site guidance pushes away from: the scan's own site when
    the model knows it and it is not the target; None (unguided) otherwise.

    A site the model does not know runs unguided: every stand-in tried (the known site
    nearest in tissue contrast, the mean site embedding) lost 1-3 dB on real texture from
    unseen scanners (``docs/model.md``, "Decisions of session 28" and "of session 29")."""
    if source_site in config.sites:
        return None if source_site == target_site else source_site
    log(f"source site {source_site or '(unknown)'!r} is not one the model knows: no "
        "source-site guidance")
    return None


def keep_std_image(std_file: Path, mask_file: Path, target_site: str,
                   out_file: Path) -> dict[str, Any]:
    """Write a template-space brain that is already at ``target_site`` unchanged.

    The output is what :func:`harmonize_std_image` would write for a model that
    changes nothing (the input inside the mask, negatives clipped), so both kinds of
    participant go through the same resampling afterwards.
    """
    img = nb.load(str(std_file))
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.asarray(nb.load(str(mask_file)).dataobj) > 0
    if mask.shape != data.shape[:3]:
        raise ValueError(f"brain mask {mask.shape} is not on the image's grid {data.shape}")
    _save_in_brain(data, mask, img, out_file)
    return {
        "TargetSite": target_site,
        "HarmonizationApplied": False,
        "HarmonizationNote": "the source site is the target site: the brain is the reference "
                             "and was kept unchanged",
    }


class _HarmonizeInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="template-space normalized brain")
    mask_file = File(exists=True, mandatory=True)
    model_file = File(exists=True, mandatory=True)
    target_site = traits.Str(mandatory=True)
    sampler = traits.Dict(desc="the skip sampler's settings (SamplerSettings fields; "
                               "those left out take their defaults)")
    match_intensities = traits.Enum("none", *SCHEMES, usedefault=True,
                                    desc="map the output's tissue intensity landmarks onto "
                                         "the target site's (site_intensity.SCHEMES)")
    level_slices = traits.Bool(True, usedefault=True,
                               desc="remove slice-to-slice jumps in intensity level "
                                    "(postprocess.level_slices)")
    source_site = traits.Str("", usedefault=True, desc="the site the image was acquired at")
    site_landmarks = File(exists=True, desc="the dataset's tissue landmarks per site "
                                            "(dataset_landmarks): keep where the scan stands "
                                            "among its site's scans in the match")
    random_seed = traits.Int(0, usedefault=True)
    keep_source = traits.Bool(False, usedefault=True,
                              desc="the brain is already at the target site: write it "
                                   "unchanged instead of running the model (keep_std_image)")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True, nohash=True)
    mem_mb = traits.Int(0, usedefault=True, nohash=True)
    num_threads = traits.Int(1, usedefault=True, nohash=True)


class _HarmonizeOutputSpec(TraitedSpec):
    out_file = File(exists=True)
    metadata = traits.Dict()


class Harmonize(SimpleInterface):
    """Run the diffusion model on one template-space brain."""

    input_spec = _HarmonizeInputSpec
    output_spec = _HarmonizeOutputSpec

    def _run_interface(self, runtime):
        out = Path(runtime.cwd) / "harmonized.nii.gz"
        if self.inputs.keep_source:
            self._results["out_file"] = str(out)
            self._results["metadata"] = keep_std_image(
                Path(self.inputs.in_file), Path(self.inputs.mask_file), self.inputs.target_site,
                out)
            return runtime
        meta = harmonize_std_image(
            Path(self.inputs.in_file), Path(self.inputs.mask_file), Path(self.inputs.model_file),
            self.inputs.target_site, out,
            SamplerSettings(**(self.inputs.sampler if isdefined(self.inputs.sampler) else {})),
            seed=self.inputs.random_seed,
            device=self.inputs.device, mem_mb=self.inputs.mem_mb or None,
            num_threads=self.inputs.num_threads,
            match_intensities=self.inputs.match_intensities,
            level_slices=self.inputs.level_slices,
            source_site=self.inputs.source_site or None,
            site_landmarks=Path(self.inputs.site_landmarks)
            if isdefined(self.inputs.site_landmarks) else None,
            log=lambda m: print(f"[harmonize_bids] {m}", flush=True))
        self._results["out_file"] = str(out)
        self._results["metadata"] = meta
        return runtime
