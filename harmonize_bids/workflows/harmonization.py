"""Harmonization after preprocessing: model in template space, then back to T1w."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from harmonize_bids.diffusion.schedule import SamplerSettings
from harmonize_bids.interfaces.ants import ApplyTransform
from harmonize_bids.interfaces.harmonize import Harmonize
from harmonize_bids.interfaces.images import ApplyMask


def init_harmonize_wf(*, model_file: Path, target_site: str, sampler: SamplerSettings,
                      random_seed: int, device: str, omp_nthreads: int, mem_mb: int | None,
                      match_intensities: str = "none", level_slices: bool = True,
                      keep_source: bool = False, source_site: str | None = None,
                      site_landmarks: Path | None = None,
                      name: str = "harmonize_wf") -> pe.Workflow:
    """Harmonize the template-space brain to ``target_site`` and resample it to T1w.

    With ``keep_source`` (the image is already at ``target_site``) the brain is kept
    unchanged instead: it is the reference the other sites are brought to.  With
    ``site_landmarks`` (the dataset's, :mod:`harmonize_bids.dataset_landmarks`) the
    landmark match keeps where the scan stands among the scans of its ``source_site``.

    Inputs: ``std_t1w``, ``std_mask``, ``t1w_preproc``, ``brain_mask``,
    ``std2t1w_xfm``.  Outputs: ``std_harmonized``, ``harmonized``, ``metadata``.
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        f"The image was acquired at the target site '{target_site}', the reference the "
        "other sites were harmonized to, so its brain in template space was kept unchanged "
        "(as ComBat leaves its reference batch) and resampled back to the T1w grid."
    ) if keep_source else (
        f"The brain in template space was harmonized to site '{target_site}' with a "
        f"conditional diffusion model ({sampler.steps} deterministic DDIM steps"
        + (f", stopping at {sampler.stop:g} of the noise schedule with the model's "
           "clean-image estimate" if sampler.stop else "")
        + (f"; the mean of {sampler.samples} chains from independent initial noise"
           if sampler.samples > 1 else "")
        + (f"; each step pushed away from the model's prediction for the source's site "
           f"with weight {sampler.source_guidance:g} where the model knows that site"
           if sampler.source_guidance else "")
        + ")"
        + (", its slice-to-slice jumps in overall intensity were removed against a linear "
           "intensity map of the source" if level_slices else "")
        + (f", its tissue intensity landmarks (CSF, grey and white matter {match_intensities})"
           " were mapped onto those of the target site"
           + (" moved by where the scan stands among its site's scans in this dataset (each "
              "landmark's z-score within the site times the spread pooled over sites)"
              if site_landmarks else "")
           if match_intensities != "none" else "")
        + " and it was resampled back to the T1w grid.")
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "std_t1w", "std_mask", "t1w_preproc", "brain_mask", "std2t1w_xfm"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["std_harmonized", "harmonized",
                                                       "metadata"]), name="outputnode")
    harmonize = pe.Node(Harmonize(
        model_file=str(model_file), target_site=target_site,
        sampler=dataclasses.asdict(sampler),
        match_intensities=match_intensities, level_slices=level_slices,
        random_seed=random_seed, keep_source=keep_source,
        source_site=source_site or "",
        **({"site_landmarks": str(site_landmarks)} if site_landmarks else {}),
        device=device, mem_mb=mem_mb or 0, num_threads=omp_nthreads),
        # a kept brain is only copied: it needs neither the model's threads nor its memory
        name="harmonize", n_procs=1 if keep_source else omp_nthreads,
        mem_gb=0.5 if keep_source else (mem_mb or 4096) / 1024)
    to_t1w = pe.Node(ApplyTransform(interpolation="linear", num_threads=omp_nthreads),
                     name="to_t1w", n_procs=omp_nthreads)
    mask_t1w = pe.Node(ApplyMask(), name="mask_t1w")
    workflow.connect([
        (inputnode, harmonize, [("std_t1w", "in_file"), ("std_mask", "mask_file")]),
        (inputnode, to_t1w, [("t1w_preproc", "reference_image"),
                             ("std2t1w_xfm", "transform")]),
        (harmonize, to_t1w, [("out_file", "input_image")]),
        (to_t1w, mask_t1w, [("out_file", "in_file")]),
        (inputnode, mask_t1w, [("brain_mask", "mask_file")]),
        (harmonize, outputnode, [("out_file", "std_harmonized"), ("metadata", "metadata")]),
        (mask_t1w, outputnode, [("out_file", "harmonized")]),
    ])
    return workflow
