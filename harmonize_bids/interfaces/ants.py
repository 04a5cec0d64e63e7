"""ANTs (antspyx) steps as functions and as nipype interfaces.

antspyx writes transforms to the system temporary directory unless given an
``outprefix``; every function here takes an explicit output location so all
intermediates stay inside nipype's working directory.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


def ants_seed(random_seed: int) -> int:
    """The seed given to ANTs for our ``--random-seed``.

    ANTs takes a seed of 0 to mean "seed from the clock", so 0 cannot be passed
    through; we shift by one and keep the value in ITK's 32-bit range.

    >>> ants_seed(0), ants_seed(41)
    (1, 42)
    """
    return int(random_seed) % (2**31 - 1) + 1


@contextmanager
def ants_environment(num_threads: int, random_seed: int | None) -> Iterator[None]:
    """Threads and seed for ANTs calls made inside the block.

    ``ANTS_RANDOM_SEED`` is read by the ANTs library; antspyx passes
    ``--random-seed`` from ``ants.config._random_seed`` (restored afterwards).
    ITK reads the thread count only at its first use in a process, so the
    thread setting here holds only if no ANTs call came before; the CLI also
    sets it in the environment of nipype's worker processes.  Results are
    bit-for-bit reproducible with one thread; with more, ITK's parallel
    reductions make them differ slightly from run to run.
    """
    import ants

    saved_env = {k: os.environ.get(k) for k in
                 ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "ANTS_RANDOM_SEED")}
    saved_seed = ants.config._random_seed
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, int(num_threads)))
    if random_seed is not None:
        os.environ["ANTS_RANDOM_SEED"] = str(ants_seed(random_seed))
        ants.config._random_seed = ants_seed(random_seed)
    try:
        yield
    finally:
        ants.config._random_seed = saved_seed
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def n4_shrink_factor(spacing: tuple[float, ...], grid_mm: float) -> int:
    """Shrink factor that puts N4's working grid near ``grid_mm``.

    >>> n4_shrink_factor((1.0, 1.0, 1.2), 4.0), n4_shrink_factor((4.0, 4.0, 4.0), 4.0)
    (4, 1)
    """
    return max(1, int(round(grid_mm / min(spacing))))


def n4_correct(
    in_file: Path,
    out_file: Path,
    *,
    grid_mm: float = 4.0,
    iterations: tuple[int, ...] = (50, 50, 50, 50),
    mask: Path | None = None,
    num_threads: int = 1,
) -> Path:
    """N4 bias-field correction of a head image (negative values clipped first).

    The bias field is fitted on a grid of about ``grid_mm`` (the image is
    shrunk by an integer factor), which sets the cost whatever the resolution.
    With ``mask`` (a brain mask on the image's grid) the field is fitted on the
    brain's voxels only and applied to the whole image: scalp, fat and
    background no longer pull the fit, which leaves far less residue inside the
    brain (``docs/design.md``, "Preprocessing").
    """
    import ants

    with ants_environment(num_threads, None):
        img = ants.image_read(str(in_file)).clone("float")
        img = ants.threshold_image(img, 0, None, 1, 0) * img  # clip negatives to 0
        weights = None
        if mask is not None:
            weights = ants.threshold_image(ants.image_read(str(mask)).clone("float"),
                                           0.5, None, 1, 0)
            if weights.shape != img.shape:
                raise ValueError(f"N4 mask {mask} has shape {weights.shape}, "
                                 f"the image {in_file} has {img.shape}")
            weights = ants.copy_image_info(img, weights)
        corrected = ants.n4_bias_field_correction(
            img, mask=weights, shrink_factor=n4_shrink_factor(img.spacing, grid_mm),
            convergence={"iters": list(iterations), "tol": 1e-7},
        )
        ants.image_write(corrected, str(out_file))
    return Path(out_file)


def register(
    fixed_file: Path,
    moving_file: Path,
    outprefix: Path,
    *,
    transform: str = "SyN",
    resolution_mm: float = 2.0,
    initial_transform: Path | None = None,
    aff_iterations: tuple[int, ...] = (500, 250, 100, 0),
    syn_iterations: tuple[int, ...] = (40, 20, 0),
    num_threads: int = 1,
    random_seed: int | None = None,
) -> tuple[Path, Path]:
    """Register ``moving`` to ``fixed``; return composite (forward, inverse) ``.h5``.

    The fixed image is resampled to ``resolution_mm`` first: the metric is
    evaluated on its grid, so this bounds the cost whatever the subject's
    resolution.  The forward transform maps moving-space points to fixed space
    when used by ``apply_transforms`` with ``fixed`` as the reference.
    """
    import ants

    with ants_environment(num_threads, random_seed):
        fixed = ants.image_read(str(fixed_file)).clone("float")
        if resolution_mm and min(fixed.spacing) < resolution_mm:
            fixed = ants.resample_image(fixed, (resolution_mm,) * 3, False, 0)
        moving = ants.image_read(str(moving_file)).clone("float")
        kwargs = {}
        if initial_transform is not None:
            kwargs["initial_transform"] = [str(initial_transform)]
        result = ants.registration(
            fixed, moving, type_of_transform=transform,
            outprefix=str(outprefix), write_composite_transform=True,
            aff_iterations=aff_iterations, aff_shrink_factors=(6, 4, 2, 1)[-len(aff_iterations):],
            aff_smoothing_sigmas=(3, 2, 1, 0)[-len(aff_iterations):],
            reg_iterations=syn_iterations, **kwargs,
        )
    fwd, inv = Path(result["fwdtransforms"]), Path(result["invtransforms"])
    return fwd, inv


def apply_transform(
    reference_file: Path,
    moving_file: Path,
    transform: Path,
    out_file: Path,
    *,
    interpolation: str = "linear",
    num_threads: int = 1,
) -> Path:
    """Resample ``moving`` onto ``reference``'s grid through ``transform``."""
    import ants

    with ants_environment(num_threads, None):
        ref = ants.image_read(str(reference_file))
        mov = ants.image_read(str(moving_file)).clone("float")
        out = ants.apply_transforms(ref, mov, [str(transform)], interpolator=interpolation)
        ants.image_write(out, str(out_file))
    return Path(out_file)


# --------------------------------------------------------------------------- nipype


class _N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="head image")
    grid_mm = traits.Float(4.0, usedefault=True, desc="approximate N4 working grid (mm)")
    iterations = traits.List(traits.Int, [50, 50, 50, 50], usedefault=True)
    mask_file = File(exists=True, desc="brain mask: fit the field on the brain only")
    num_threads = traits.Int(1, usedefault=True, nohash=True)


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="bias-corrected image")


class N4BiasFieldCorrection(SimpleInterface):
    """ANTs N4 through antspyx, output in the node's working directory."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        out = Path(runtime.cwd) / "n4_corrected.nii.gz"
        self._results["out_file"] = str(n4_correct(
            Path(self.inputs.in_file), out, grid_mm=self.inputs.grid_mm,
            iterations=tuple(self.inputs.iterations),
            mask=Path(self.inputs.mask_file) if self.inputs.mask_file else None,
            num_threads=self.inputs.num_threads,
        ))
        return runtime


class _RegisterInputSpec(BaseInterfaceInputSpec):
    fixed_image = File(exists=True, mandatory=True)
    moving_image = File(exists=True, mandatory=True)
    transform = traits.Enum("SyN", "Affine", "Rigid", "SyNOnly", usedefault=True,
                            desc="antspyx type_of_transform; SyNOnly: no linear stages")
    resolution_mm = traits.Float(2.0, usedefault=True)
    initial_transform = File(exists=True, desc="transform to start from (composite .h5)")
    aff_iterations = traits.List(traits.Int, [500, 250, 100, 0], usedefault=True)
    syn_iterations = traits.List(traits.Int, [40, 20, 0], usedefault=True)
    random_seed = traits.Int(0, usedefault=True)
    num_threads = traits.Int(1, usedefault=True, nohash=True)


class _RegisterOutputSpec(TraitedSpec):
    forward_transform = File(exists=True, desc="moving -> fixed composite transform")
    inverse_transform = File(exists=True, desc="fixed -> moving composite transform")


class Register(SimpleInterface):
    """ANTs registration through antspyx, transforms kept in the working directory."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        init = self.inputs.initial_transform if self.inputs.initial_transform else None
        fwd, inv = register(
            Path(self.inputs.fixed_image), Path(self.inputs.moving_image),
            Path(runtime.cwd) / "reg_", transform=self.inputs.transform,
            resolution_mm=self.inputs.resolution_mm,
            initial_transform=Path(init) if init else None,
            aff_iterations=tuple(self.inputs.aff_iterations),
            syn_iterations=tuple(self.inputs.syn_iterations),
            num_threads=self.inputs.num_threads, random_seed=self.inputs.random_seed,
        )
        self._results["forward_transform"] = str(fwd)
        self._results["inverse_transform"] = str(inv)
        return runtime


class _ApplyInputSpec(BaseInterfaceInputSpec):
    reference_image = File(exists=True, mandatory=True)
    input_image = File(exists=True, mandatory=True)
    transform = File(exists=True, mandatory=True)
    interpolation = traits.Enum("linear", "nearestNeighbor", "bSpline", usedefault=True)
    num_threads = traits.Int(1, usedefault=True, nohash=True)


class _ApplyOutputSpec(TraitedSpec):
    out_file = File(exists=True)


class ApplyTransform(SimpleInterface):
    """Resample an image through a transform onto a reference grid."""

    input_spec = _ApplyInputSpec
    output_spec = _ApplyOutputSpec

    def _run_interface(self, runtime):
        out = Path(runtime.cwd) / "resampled.nii.gz"
        self._results["out_file"] = str(apply_transform(
            Path(self.inputs.reference_image), Path(self.inputs.input_image),
            Path(self.inputs.transform), out, interpolation=self.inputs.interpolation,
            num_threads=self.inputs.num_threads,
        ))
        return runtime
