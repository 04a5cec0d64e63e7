"""Image operations in nibabel/scipy: input checks, reorientation, masks, scaling."""
from __future__ import annotations

from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from scipy import ndimage as ndi


class ImageCheckError(ValueError):
    """The input image cannot be a usable T1w volume."""


def load_t1w(path: Path) -> nb.Nifti1Image:
    """Load a T1w image and check it is a usable 3D volume.

    A 4D image with one volume is squeezed; anything else that is not 3D,
    has non-finite or constant values, or absurd voxel sizes is refused with
    a message that says why.
    """
    try:
        img = nb.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # truncated gzip, bad header, ...
        raise ImageCheckError(f"{path}: cannot read the image ({err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageCheckError(f"{path}: expected a 3D T1w volume, got shape {data.shape}")
    if min(data.shape) < 8:
        raise ImageCheckError(f"{path}: image too small for a head ({data.shape})")
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if not np.all(np.isfinite(zooms)) or zooms.min() < 0.1 or zooms.max() > 10:
        raise ImageCheckError(f"{path}: implausible voxel size {tuple(zooms)} mm")
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        raise ImageCheckError(f"{path}: broken affine (orientation) in the header")
    data = np.asarray(data, dtype=np.float32)
    if not np.all(np.isfinite(data)):
        raise ImageCheckError(f"{path}: image contains NaN or infinite values")
    if float(data.max() - data.min()) <= 0:
        raise ImageCheckError(f"{path}: image is constant")
    smoothness = neighbour_correlation(data)
    if smoothness < 0.3:
        raise ImageCheckError(f"{path}: does not look like an MR image of a head (neighbouring "
                              f"voxels are uncorrelated, r = {smoothness:.2f}: noise?)")
    return nb.Nifti1Image(data, img.affine, img.header)


def neighbour_correlation(data: np.ndarray) -> float:
    """Mean correlation of each voxel with its neighbour along each axis.

    Anatomy is spatially smooth (r > 0.8 for any MR head, at any resolution we
    accept); white noise gives r ~ 0.

    >>> rng = np.random.default_rng(0)
    >>> abs(neighbour_correlation(rng.random((20, 20, 20)))) < 0.05
    True
    """
    data = np.asarray(data, dtype=np.float64)
    rs = []
    for axis in range(3):
        a = np.moveaxis(data, axis, 0)
        x, y = a[:-1].ravel(), a[1:].ravel()
        if x.std() > 0 and y.std() > 0:
            rs.append(float(np.corrcoef(x, y)[0, 1]))
    return float(np.mean(rs)) if rs else 0.0


def reorient_to_ras(in_file: Path, out_file: Path) -> Path:
    """Check the image and write it in the closest canonical (RAS+) orientation, float32."""
    img = nb.as_closest_canonical(load_t1w(in_file))
    out = nb.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    out.header.set_xyzt_units("mm")
    out.to_filename(str(out_file))
    return Path(out_file)


def refine_brain_mask(prob_file: Path, out_file: Path, threshold: float = 0.5) -> Path:
    """Threshold a brain probability map, keep the largest component, fill holes."""
    img = nb.load(str(prob_file))
    prob = np.asarray(img.dataobj, dtype=np.float32)
    if prob.max() > 1.5:  # stored as 0-255
        prob = prob / 255.0
    mask = prob >= threshold
    labels, n = ndi.label(mask)
    if n == 0:
        raise ImageCheckError(f"{prob_file}: brain extraction found no brain")
    if n > 1:
        sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    mask = ndi.binary_fill_holes(mask)
    out = nb.Nifti1Image(mask.astype(np.uint8), img.affine)
    out.header.set_data_dtype(np.uint8)
    out.to_filename(str(out_file))
    return Path(out_file)


def apply_mask(in_file: Path, mask_file: Path, out_file: Path) -> Path:
    """Zero everything outside the mask."""
    img = nb.load(str(in_file))
    mask = np.asarray(nb.load(str(mask_file)).dataobj) > 0
    data = np.asarray(img.dataobj, dtype=np.float32) * mask
    nb.Nifti1Image(data, img.affine).to_filename(str(out_file))
    return Path(out_file)


def normalize_intensity(in_file: Path, mask_file: Path, out_file: Path,
                        percentile: float = 99.0) -> tuple[Path, float]:
    """Scale so the given percentile of in-mask intensities becomes 1; zero outside.

    Returns the output path and the scale divisor (recorded in the sidecar).
    """
    img = nb.load(str(in_file))
    data = np.asarray(img.dataobj, dtype=np.float32)
    mask = np.asarray(nb.load(str(mask_file)).dataobj) > 0.5
    if not mask.any():
        raise ImageCheckError(f"{mask_file}: empty brain mask")
    scale = float(np.percentile(data[mask], percentile))
    if scale <= 0:
        raise ImageCheckError(f"{in_file}: no positive intensities in the brain")
    out = np.where(mask, np.clip(data, 0, None) / scale, 0).astype(np.float32)
    nb.Nifti1Image(out, img.affine).to_filename(str(out_file))
    return Path(out_file), scale


def binarize(in_file: Path, out_file: Path, threshold: float = 0.5) -> Path:
    """Binarize an interpolated mask."""
    img = nb.load(str(in_file))
    mask = (np.asarray(img.dataobj, dtype=np.float32) >= threshold).astype(np.uint8)
    out = nb.Nifti1Image(mask, img.affine)
    out.header.set_data_dtype(np.uint8)
    out.to_filename(str(out_file))
    return Path(out_file)


# --------------------------------------------------------------------------- nipype


class _InOutInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True)


class _OutFileSpec(TraitedSpec):
    out_file = File(exists=True)


class ReorientRAS(SimpleInterface):
    """Check a T1w image and reorient it to RAS+."""

    input_spec = _InOutInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        out = Path(runtime.cwd) / "t1w_ras.nii.gz"
        self._results["out_file"] = str(reorient_to_ras(Path(self.inputs.in_file), out))
        return runtime


class _ThresholdInputSpec(_InOutInputSpec):
    threshold = traits.Float(0.5, usedefault=True)


class RefineBrainMask(SimpleInterface):
    """Probability map to a clean binary brain mask."""

    input_spec = _ThresholdInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        out = Path(runtime.cwd) / "brain_mask.nii.gz"
        self._results["out_file"] = str(refine_brain_mask(
            Path(self.inputs.in_file), out, self.inputs.threshold))
        return runtime


class Binarize(SimpleInterface):
    """Threshold an interpolated mask."""

    input_spec = _ThresholdInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        out = Path(runtime.cwd) / "mask.nii.gz"
        self._results["out_file"] = str(binarize(
            Path(self.inputs.in_file), out, self.inputs.threshold))
        return runtime


class _MaskInputSpec(_InOutInputSpec):
    mask_file = File(exists=True, mandatory=True)


class ApplyMask(SimpleInterface):
    """Zero voxels outside a mask."""

    input_spec = _MaskInputSpec
    output_spec = _OutFileSpec

    def _run_interface(self, runtime):
        out = Path(runtime.cwd) / "masked.nii.gz"
        self._results["out_file"] = str(apply_mask(
            Path(self.inputs.in_file), Path(self.inputs.mask_file), out))
        return runtime


class _NormalizeInputSpec(_MaskInputSpec):
    percentile = traits.Float(99.0, usedefault=True)


class _NormalizeOutputSpec(_OutFileSpec):
    scale = traits.Float(desc="divisor applied to the intensities")


class NormalizeIntensity(SimpleInterface):
    """Scale brain intensities so a high percentile is 1."""

    input_spec = _NormalizeInputSpec
    output_spec = _NormalizeOutputSpec

    def _run_interface(self, runtime):
        out = Path(runtime.cwd) / "normalized.nii.gz"
        path, scale = normalize_intensity(Path(self.inputs.in_file), Path(self.inputs.mask_file),
                                          out, self.inputs.percentile)
        self._results["out_file"] = str(path)
        self._results["scale"] = scale
        return runtime
