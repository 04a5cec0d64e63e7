"""Anatomical preprocessing: RAS, N4, brain extraction, registration to MNI.

Each stage is its own sub-workflow so the working directory maps onto the
code: ``anat_preproc_wf/{reorient,n4,brain_extraction_wf,n4_brain,register_template_wf}``
(``n4_brain``: N4 again, its field fitted on the extracted brain only).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from harmonize_bids.interfaces.ants import ApplyTransform, N4BiasFieldCorrection, Register
from harmonize_bids.interfaces.images import (
    ApplyMask,
    Binarize,
    NormalizeIntensity,
    RefineBrainMask,
    ReorientRAS,
)
from harmonize_bids.templates import get_template


@dataclass(frozen=True)
class AntsSettings:
    """Quality/speed knobs of the ANTs steps (``--sloppy`` picks the fast set)."""

    n4_grid_mm: float
    n4_iterations: tuple[int, ...]
    #: after brain extraction, redo N4 on the raw head with the field fitted on the
    #: brain only (``docs/design.md``, "Preprocessing")
    n4_in_brain: bool
    registration_mm: float
    transform: str
    aff_iterations: tuple[int, ...]
    syn_iterations: tuple[int, ...]

    @property
    def registration(self) -> str:
        """The transforms fitted to the template, as sidecars and methods name them.

        >>> AntsSettings.for_run(True).registration, AntsSettings.for_run(False).registration
        ('Affine', 'Affine + SyN')
        """
        return "Affine" if self.transform == "Affine" else f"Affine + {self.transform}"

    @classmethod
    def for_run(cls, sloppy: bool) -> "AntsSettings":
        if sloppy:
            return cls(n4_grid_mm=8.0, n4_iterations=(20, 10), n4_in_brain=True,
                       registration_mm=4.0,
                       transform="Affine", aff_iterations=(100, 50, 0),
                       syn_iterations=(0,))
        return cls(n4_grid_mm=6.0, n4_iterations=(50, 50, 30, 20), n4_in_brain=True,
                   registration_mm=2.0,
                   transform="SyN", aff_iterations=(500, 250, 100, 0),
                   syn_iterations=(40, 20, 0))


def participant_n4(in_file: Path, out_file: Path, brain_mask: Path | None, *,
                   sloppy: bool = False, num_threads: int = 1) -> Path:
    """N4 of a head image as the participant level's final N4 does it (its settings;
    the field fitted inside ``brain_mask`` when ``n4_in_brain``), outside nipype: for
    the benchmark's truths and the training script's renders."""
    from harmonize_bids.interfaces.ants import n4_correct

    settings = AntsSettings.for_run(sloppy)
    return n4_correct(in_file, out_file, grid_mm=settings.n4_grid_mm,
                      iterations=settings.n4_iterations,
                      mask=brain_mask if settings.n4_in_brain else None,
                      num_threads=num_threads)


def init_anat_preproc_wf(*, omp_nthreads: int, sloppy: bool, random_seed: int,
                         name: str = "anat_preproc_wf") -> pe.Workflow:
    """Preprocess one T1w image up to the model's input in template space.

    Parameters
    ----------
    omp_nthreads
        Threads for each ANTs call.
    sloppy
        Fast, low-quality settings (affine only, coarse grids) for tests.
    random_seed
        Seed of ANTs' random metric sampling.

    Inputs
    ------
    t1w
        The raw T1w image.

    Outputs
    -------
    t1w_preproc
        RAS, N4-corrected head (native grid; the brain-fitted field with
        ``n4_in_brain``).
    brain_mask
        Binary brain mask (native grid).
    t1w2std_xfm, std2t1w_xfm
        Composite ANTs transforms to and from MNI152NLin2009aSym.
    std_t1w, std_mask
        Intensity-normalized brain and its mask in MNI152NLin2009aSym (1 mm).
    intensity_scale
        The divisor used by the intensity normalization.
    """
    settings = AntsSettings.for_run(sloppy)
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        "The T1w image was reoriented to RAS, corrected for intensity non-uniformity "
        "with N4 (ANTs), skull-stripped by registering a head template with a brain "
        "probability map, "
        + ("corrected with N4 again with the field fitted inside the brain mask, "
           if settings.n4_in_brain else "")
        + f"and registered to MNI152NLin2009aSym (ANTs {settings.registration}"
        + (", --sloppy)." if sloppy else ").")
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "t1w_preproc", "brain_mask", "t1w2std_xfm", "std2t1w_xfm",
        "std_t1w", "std_mask", "intensity_scale"]), name="outputnode")

    reorient = pe.Node(ReorientRAS(), name="reorient")
    n4 = pe.Node(N4BiasFieldCorrection(
        grid_mm=settings.n4_grid_mm, iterations=list(settings.n4_iterations),
        num_threads=omp_nthreads), name="n4", n_procs=omp_nthreads, mem_gb=1.0)
    brain_extraction_wf = init_brain_extraction_wf(
        omp_nthreads=omp_nthreads, settings=settings, random_seed=random_seed)
    register_template_wf = init_register_template_wf(
        omp_nthreads=omp_nthreads, settings=settings, random_seed=random_seed)

    workflow.connect([
        (inputnode, reorient, [("t1w", "in_file")]),
        (reorient, n4, [("out_file", "in_file")]),
        (n4, brain_extraction_wf, [("out_file", "inputnode.in_file")]),
        (brain_extraction_wf, register_template_wf, [
            ("outputnode.out_mask", "inputnode.mask"),
            ("outputnode.head_xfm", "inputnode.initial_xfm")]),
        (brain_extraction_wf, outputnode, [("outputnode.out_mask", "brain_mask")]),
        (register_template_wf, outputnode, [
            ("outputnode.t1w2std_xfm", "t1w2std_xfm"),
            ("outputnode.std2t1w_xfm", "std2t1w_xfm"),
            ("outputnode.std_t1w", "std_t1w"),
            ("outputnode.std_mask", "std_mask"),
            ("outputnode.intensity_scale", "intensity_scale")]),
    ])
    if settings.n4_in_brain:
        # the head-wide N4 served brain extraction; the field refitted on the brain
        # alone leaves far less residue inside it (docs/design.md, "Preprocessing")
        n4_brain = pe.Node(N4BiasFieldCorrection(
            grid_mm=settings.n4_grid_mm, iterations=list(settings.n4_iterations),
            num_threads=omp_nthreads), name="n4_brain", n_procs=omp_nthreads, mem_gb=1.0)
        mask_brain = pe.Node(ApplyMask(), name="mask_brain")
        workflow.connect([
            (reorient, n4_brain, [("out_file", "in_file")]),
            (brain_extraction_wf, n4_brain, [("outputnode.out_mask", "mask_file")]),
            (n4_brain, mask_brain, [("out_file", "in_file")]),
            (brain_extraction_wf, mask_brain, [("outputnode.out_mask", "mask_file")]),
            (mask_brain, register_template_wf, [("out_file", "inputnode.brain")]),
            (n4_brain, outputnode, [("out_file", "t1w_preproc")]),
        ])
    else:
        workflow.connect([
            (brain_extraction_wf, register_template_wf, [
                ("outputnode.out_brain", "inputnode.brain")]),
            (n4, outputnode, [("out_file", "t1w_preproc")]),
        ])
    return workflow


def init_brain_extraction_wf(*, omp_nthreads: int, settings: AntsSettings, random_seed: int,
                             name: str = "brain_extraction_wf") -> pe.Workflow:
    """Register the head template to the subject and warp its brain probability back.

    Inputs: ``in_file`` (bias-corrected head).  Outputs: ``out_mask``,
    ``out_brain`` (masked head) and ``head_xfm`` (subject -> template head,
    a good start for the brain registration).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_mask", "out_brain", "head_xfm"]),
                         name="outputnode")
    head_template = str(get_template("head"))
    resolution_mm = max(settings.registration_mm, 2.0)  # the head template is 2 mm
    reg_head_affine = pe.Node(Register(
        fixed_image=head_template, transform="Affine", resolution_mm=resolution_mm,
        aff_iterations=list(settings.aff_iterations), random_seed=random_seed,
        num_threads=omp_nthreads), name="reg_head_affine", n_procs=omp_nthreads, mem_gb=2.0)
    warp_prob = pe.Node(ApplyTransform(
        input_image=str(get_template("brain_probseg")), interpolation="linear",
        num_threads=omp_nthreads), name="warp_prob", n_procs=omp_nthreads)
    refine_mask = pe.Node(RefineBrainMask(threshold=0.5), name="refine_mask")
    mask_brain = pe.Node(ApplyMask(), name="mask_brain")
    workflow.connect([
        (inputnode, reg_head_affine, [("in_file", "moving_image")]),
        (inputnode, warp_prob, [("in_file", "reference_image")]),
        (warp_prob, refine_mask, [("out_file", "in_file")]),
        (inputnode, mask_brain, [("in_file", "in_file")]),
        (refine_mask, mask_brain, [("out_file", "mask_file")]),
        (refine_mask, outputnode, [("out_file", "out_mask")]),
        (mask_brain, outputnode, [("out_file", "out_brain")]),
        # the affine part only: a composite holding a SyN field cannot be inverted
        # by antsRegistration, which then would not write the inverse transform
        (reg_head_affine, outputnode, [("forward_transform", "head_xfm")]),
    ])
    if settings.transform == "SyN":
        reg_head_syn = pe.Node(Register(
            fixed_image=head_template, transform="SyNOnly", resolution_mm=resolution_mm,
            syn_iterations=list(settings.syn_iterations), random_seed=random_seed,
            num_threads=omp_nthreads), name="reg_head_syn", n_procs=omp_nthreads, mem_gb=2.0)
        workflow.connect([
            (inputnode, reg_head_syn, [("in_file", "moving_image")]),
            (reg_head_affine, reg_head_syn, [("forward_transform", "initial_transform")]),
            (reg_head_syn, warp_prob, [("inverse_transform", "transform")]),
        ])
    else:
        workflow.connect(reg_head_affine, "inverse_transform", warp_prob, "transform")
    return workflow


def init_register_template_wf(*, omp_nthreads: int, settings: AntsSettings, random_seed: int,
                              name: str = "register_template_wf") -> pe.Workflow:
    """Register the brain to the MNI152NLin2009aSym brain; resample and normalize.

    Inputs: ``brain``, ``mask``, ``initial_xfm``.  Outputs: ``t1w2std_xfm``,
    ``std2t1w_xfm``, ``std_t1w``, ``std_mask``, ``intensity_scale``.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["brain", "mask", "initial_xfm"]),
                        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "t1w2std_xfm", "std2t1w_xfm", "std_t1w", "std_mask", "intensity_scale"]),
        name="outputnode")
    mni_brain = str(get_template("mni_brain"))
    reg_brain = pe.Node(Register(
        fixed_image=mni_brain, transform=settings.transform,
        resolution_mm=settings.registration_mm,
        aff_iterations=list(settings.aff_iterations),
        syn_iterations=list(settings.syn_iterations),
        random_seed=random_seed, num_threads=omp_nthreads),
        name="reg_brain", n_procs=omp_nthreads, mem_gb=2.0)
    resample_brain = pe.Node(ApplyTransform(
        reference_image=mni_brain, interpolation="bSpline", num_threads=omp_nthreads),
        name="resample_brain", n_procs=omp_nthreads, mem_gb=1.0)
    resample_mask = pe.Node(ApplyTransform(
        reference_image=mni_brain, interpolation="linear", num_threads=omp_nthreads),
        name="resample_mask", n_procs=omp_nthreads, mem_gb=1.0)
    binarize_mask = pe.Node(Binarize(threshold=0.5), name="binarize_mask")
    normalize = pe.Node(NormalizeIntensity(percentile=99.0), name="normalize")
    # the harmonization model (workflows/harmonization.py) takes ``normalize``'s output
    workflow.connect([
        (inputnode, reg_brain, [("brain", "moving_image"),
                                ("initial_xfm", "initial_transform")]),
        (inputnode, resample_brain, [("brain", "input_image")]),
        (inputnode, resample_mask, [("mask", "input_image")]),
        (reg_brain, resample_brain, [("forward_transform", "transform")]),
        (reg_brain, resample_mask, [("forward_transform", "transform")]),
        (resample_mask, binarize_mask, [("out_file", "in_file")]),
        (resample_brain, normalize, [("out_file", "in_file")]),
        (binarize_mask, normalize, [("out_file", "mask_file")]),
        (reg_brain, outputnode, [("forward_transform", "t1w2std_xfm"),
                                 ("inverse_transform", "std2t1w_xfm")]),
        (normalize, outputnode, [("out_file", "std_t1w"), ("scale", "intensity_scale")]),
        (binarize_mask, outputnode, [("out_file", "std_mask")]),
    ])
    return workflow
