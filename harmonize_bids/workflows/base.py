"""The top-level workflow: one preprocessing branch per selected T1w image."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nipype.pipeline import engine as pe

from harmonize_bids.diffusion.schedule import SamplerSettings
from harmonize_bids.utils.bids import T1wRecord
from harmonize_bids.workflows.anatomical import AntsSettings, init_anat_preproc_wf
from harmonize_bids.workflows.harmonization import init_harmonize_wf
from harmonize_bids.workflows.outputs import ANAT_OUTPUTS, init_ds_anat_wf, init_ds_harmonized_wf


@dataclass(frozen=True)
class HarmonizeOptions:
    """What the harmonization step needs (absent: preprocessing only)."""

    model_file: Path
    target_site: str
    sampler: SamplerSettings = SamplerSettings()
    device: str = "auto"
    mem_mb: int | None = None
    match_intensities: str = "none"
    level_slices: bool = True
    keep_target_site: bool = True  # images already at the target site are kept unchanged
    site_landmarks: Path | None = None  # the dataset's: the landmark match keeps the subject

    def keeps(self, record: T1wRecord) -> bool:
        """Whether ``record`` is kept unchanged: it was acquired at the target site."""
        return self.keep_target_site and record.site == self.target_site


def workflow_name(record: T1wRecord) -> str:
    """Nipype-safe name of a T1w's branch, e.g. ``sub_01_ses_a_wf``."""
    return re.sub(r"[^a-zA-Z0-9]", "_", record.label) + "_wf"


def init_harmonize_bids_wf(*, records: list[T1wRecord], output_dir: Path, omp_nthreads: int,
                           sloppy: bool, random_seed: int,
                           harmonize: HarmonizeOptions | None = None,
                           name: str = "harmonize_bids_wf") -> pe.Workflow:
    """Build the workflow for all selected T1w images.

    Parameters
    ----------
    records
        The T1w images with their entities and sites (from ``utils.bids``).
    output_dir
        Root of the derivative dataset.
    omp_nthreads, sloppy, random_seed
        See :func:`~harmonize_bids.workflows.anatomical.init_anat_preproc_wf`.
    harmonize
        Model and target site; without it the workflow stops after preprocessing.
    """
    workflow = pe.Workflow(name=name)
    for record in records:
        single_wf = pe.Workflow(name=workflow_name(record))
        anat_preproc_wf = init_anat_preproc_wf(
            omp_nthreads=omp_nthreads, sloppy=sloppy, random_seed=random_seed)
        anat_preproc_wf.inputs.inputnode.t1w = str(record.path)
        ds_anat_wf = init_ds_anat_wf(
            output_dir=output_dir, source_entities=dict(record.entities), site=record.site,
            random_seed=random_seed, registration=AntsSettings.for_run(sloppy).registration,
            sloppy=sloppy)
        single_wf.connect(
            anat_preproc_wf, "outputnode.intensity_scale", ds_anat_wf, "inputnode.intensity_scale")
        for field in ANAT_OUTPUTS:
            single_wf.connect(anat_preproc_wf, f"outputnode.{field}",
                              ds_anat_wf, f"inputnode.{field}")
        if harmonize is not None:
            harmonize_wf = init_harmonize_wf(
                model_file=harmonize.model_file, target_site=harmonize.target_site,
                sampler=harmonize.sampler, random_seed=random_seed,
                device=harmonize.device, omp_nthreads=omp_nthreads, mem_mb=harmonize.mem_mb,
                match_intensities=harmonize.match_intensities,
                level_slices=harmonize.level_slices, keep_source=harmonize.keeps(record),
                source_site=record.site,
                site_landmarks=harmonize.site_landmarks)
            ds_harmonized_wf = init_ds_harmonized_wf(
                output_dir=output_dir, source_entities=dict(record.entities), site=record.site)
            single_wf.connect([
                (anat_preproc_wf, harmonize_wf, [
                    ("outputnode.std_t1w", "inputnode.std_t1w"),
                    ("outputnode.std_mask", "inputnode.std_mask"),
                    ("outputnode.t1w_preproc", "inputnode.t1w_preproc"),
                    ("outputnode.brain_mask", "inputnode.brain_mask"),
                    ("outputnode.std2t1w_xfm", "inputnode.std2t1w_xfm")]),
                (harmonize_wf, ds_harmonized_wf, [
                    ("outputnode.std_harmonized", "inputnode.std_harmonized"),
                    ("outputnode.harmonized", "inputnode.harmonized"),
                    ("outputnode.metadata", "inputnode.metadata")]),
            ])
        workflow.add_nodes([single_wf])
    return workflow
