"""Sinks: every derivative leaves the workflow through ``DerivativesSink``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from harmonize_bids.interfaces.bids import DerivativesSink

#: outputnode field of ``anat_preproc_wf`` -> derivative kind
ANAT_OUTPUTS = {
    "t1w_preproc": "t1w_preproc",
    "brain_mask": "brain_mask",
    "t1w2std_xfm": "t1w2std_xfm",
    "std2t1w_xfm": "std2t1w_xfm",
    "std_t1w": "std_t1w",
    "std_mask": "std_mask",
}


def _scaling_metadata(scale: float) -> dict:
    return {"IntensityNormalization": {
        "Method": "divide by the 99th percentile of brain intensities", "Divisor": scale}}


def init_ds_anat_wf(*, output_dir: Path, source_entities: dict[str, Any], site: str,
                    random_seed: int, registration: str = "Affine + SyN",
                    sloppy: bool = False,
                    name: str = "ds_anat_wf") -> pe.Workflow:
    """Save the preprocessing derivatives of one T1w image.

    Inputs are the outputs of :func:`~harmonize_bids.workflows.anatomical.init_anat_preproc_wf`
    (plus ``intensity_scale``); each is written with its sidecar.  ``registration``
    (:attr:`AntsSettings.registration`) and ``sloppy`` record how it was registered.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[*ANAT_OUTPUTS, "intensity_scale"]),
                        name="inputnode")
    registration_meta = {"RandomSeed": random_seed, "Software": "ANTs (antspyx)",
                         "RegistrationTransform": registration, "Sloppy": bool(sloppy)}
    for field, kind in ANAT_OUTPUTS.items():
        sink = pe.Node(DerivativesSink(
            output_dir=str(output_dir), kind=kind, source_entities=source_entities, site=site),
            name=f"ds_{field}", run_without_submitting=True)
        sink.overwrite = True  # always (re)write: cheap, and repairs deleted outputs
        if kind.endswith("xfm") or kind.startswith("std"):
            sink.inputs.metadata = registration_meta
        workflow.connect(inputnode, field, sink, "in_file")
        if kind == "std_t1w":
            meta = pe.Node(niu.Function(function=_scaling_metadata, input_names=["scale"],
                                        output_names=["metadata"]),
                           name="std_t1w_metadata", run_without_submitting=True)
            merge = pe.Node(niu.Function(function=_merge_dicts, input_names=["a", "b"],
                                         output_names=["out"]),
                            name="std_t1w_merge", run_without_submitting=True)
            merge.inputs.a = registration_meta
            workflow.connect([
                (inputnode, meta, [("intensity_scale", "scale")]),
                (meta, merge, [("metadata", "b")]),
                (merge, sink, [("out", "metadata")]),
            ])
    return workflow


def _merge_dicts(a: dict, b: dict) -> dict:
    return {**a, **b}


def init_ds_harmonized_wf(*, output_dir: Path, source_entities: dict[str, Any], site: str,
                          name: str = "ds_harmonized_wf") -> pe.Workflow:
    """Save the harmonized brain in template space and on the T1w grid.

    Inputs: ``std_harmonized``, ``harmonized``, ``metadata`` (from the Harmonize node:
    model hash, target site, steps, strength, seed, device); ``SourceSite`` is added.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["std_harmonized", "harmonized", "metadata"]),
                        name="inputnode")
    add_source = pe.Node(niu.Function(function=_merge_dicts, input_names=["a", "b"],
                                      output_names=["out"]),
                         name="add_source", run_without_submitting=True)
    add_source.inputs.b = {"SourceSite": site}
    workflow.connect(inputnode, "metadata", add_source, "a")
    for field in ("std_harmonized", "harmonized"):
        sink = pe.Node(DerivativesSink(
            output_dir=str(output_dir), kind=field, source_entities=source_entities, site=site),
            name=f"ds_{field}", run_without_submitting=True)
        sink.overwrite = True
        workflow.connect([(inputnode, sink, [(field, "in_file")]),
                          (add_source, sink, [("out", "metadata")])])
    return workflow
