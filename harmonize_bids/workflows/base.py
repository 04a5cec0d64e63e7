"""The top-level workflow: one preprocessing branch per selected T1w image."""
from __future__ import annotations

import re
from pathlib import Path

from nipype.pipeline import engine as pe

from harmonize_bids.utils.bids import T1wRecord
from harmonize_bids.workflows.anatomical import init_anat_preproc_wf
from harmonize_bids.workflows.outputs import ANAT_OUTPUTS, init_ds_anat_wf


def workflow_name(record: T1wRecord) -> str:
    """Nipype-safe name of a T1w's branch, e.g. ``sub_01_ses_a_wf``."""
    return re.sub(r"[^a-zA-Z0-9]", "_", record.label) + "_wf"


def init_harmonize_bids_wf(*, records: list[T1wRecord], output_dir: Path, omp_nthreads: int,
                           sloppy: bool, random_seed: int,
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
    """
    workflow = pe.Workflow(name=name)
    for record in records:
        single_wf = pe.Workflow(name=workflow_name(record))
        anat_preproc_wf = init_anat_preproc_wf(
            omp_nthreads=omp_nthreads, sloppy=sloppy, random_seed=random_seed)
        anat_preproc_wf.inputs.inputnode.t1w = str(record.path)
        ds_anat_wf = init_ds_anat_wf(
            output_dir=output_dir, source_entities=dict(record.entities), site=record.site,
            random_seed=random_seed)
        single_wf.connect(
            anat_preproc_wf, "outputnode.intensity_scale", ds_anat_wf, "inputnode.intensity_scale")
        for field in ANAT_OUTPUTS:
            single_wf.connect(anat_preproc_wf, f"outputnode.{field}",
                              ds_anat_wf, f"inputnode.{field}")
        workflow.add_nodes([single_wf])
    return workflow
