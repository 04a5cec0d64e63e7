"""Paired slices for training: the same anatomy seen at several sites.

Volumes live in memory as ``{anatomy: {site: array[X, Y, Z]}}`` on one grid
per anatomy (brain only, intensity-normalized so the 99th percentile of the
brain is 1).  A batch pairs, for random anatomies and axial slices:

- ``source`` ``[B x (2k+1) x H x W]``: the slice and its k neighbours on each
  side at a random source site (any site, including sites the model does not
  learn as targets: randomized protocols for invariance), intensity-augmented,
  with a small random bias field (what N4 leaves behind) and, in a share
  ``slice_blur`` of the samples, blurred along one random axis as thick slices
  would blur it (:func:`thick_slice_blur`: 2-7 mm FWHM at 2 mm voxels; clinical
  scans with 5 mm slices are common, and a model that reads the source stack
  must learn not to copy their blur) and, in a share ``source_noise``, given extra
  Rician noise (:func:`added_noise`: an older or faster scanner's lower SNR; the
  condition-consistency loss then asks c to ignore it);
- ``source_alt``: the same slices at another random site (for the
  condition-consistency loss);
- ``target`` ``[B x 1 x H x W]``: the slice at a random *target* site (a site
  of the model that this anatomy was seen at); ``target_site`` and
  ``source_site`` (index or -1) indices.

With ``balance_target_sites`` (the default) the target site is drawn first,
uniformly over the model's sites, then an anatomy seen there: every site gets
the same share of training however many anatomies carry it (without it, a
site with many participants, e.g. 30 real IXI brains beside 24 simulated
anatomies shared by 3 sites, takes most of the batches).

Traveling subjects (simulation) give true pairs.  A real dataset has one site
per participant: its extra "sites" are protocol-shifted copies of the real
image (:func:`add_shifted_copies`), so the model still learns to map many
scanners onto each real site, with the real image as the target.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class Batch:
    source: torch.Tensor
    source_alt: torch.Tensor
    target: torch.Tensor
    target_site: torch.Tensor
    source_site: torch.Tensor


def normalize_brain(image: np.ndarray, mask: np.ndarray, percentile: float = 99.0) -> np.ndarray:
    """Zero outside the brain, brain scaled so its ``percentile`` is 1 (as preprocessing does)."""
    mask = mask > 0
    scale = float(np.percentile(image[mask], percentile))
    return np.where(mask, np.clip(image, 0, None) / scale, 0).astype(np.float32)


def augment_intensity(x: np.ndarray, rng: np.random.Generator, strength: float = 1.0
                      ) -> np.ndarray:
    """Random monotonic remap (gamma, gain) of a normalized slice stack, brain only."""
    inside = x > 0
    gamma = float(np.exp(rng.normal(0, 0.25 * strength)))
    gain = float(np.exp(rng.normal(0, 0.1 * strength)))
    return np.where(inside, gain * np.clip(x, 0, None) ** gamma, 0).astype(np.float32)


def residual_bias(shape: tuple[int, int], rng: np.random.Generator, max_strength: float
                  ) -> np.ndarray:
    """A smooth multiplicative field ``exp(s f)`` over a slice, ``s ~ U(0, max_strength)``,
    ``f`` a unit-std cubic interpolation of a 3x3 grid: the bias N4 leaves behind."""
    from scipy import ndimage as ndi

    strength = float(rng.uniform(0, max_strength))
    coarse = rng.standard_normal((3, 3))
    field = ndi.zoom(coarse, [n / 3 for n in shape], order=3)[:shape[0], :shape[1]]
    field = (field - field.mean()) / (field.std() + 1e-12)
    return np.exp(strength * field).astype(np.float32)


def thick_slice_blur(vol: np.ndarray, z: int, k: int, box: tuple[slice, slice],
                     rng: np.random.Generator, sigma_range: tuple[float, float] = (0.4, 1.5)
                     ) -> np.ndarray:
    """``[H x W x (2k+1)]`` slices ``z - k .. z + k`` of ``vol`` inside ``box``, Gaussian-
    blurred along one random axis (x, y or z) with sigma ~ U(sigma_range) voxels.

    Blurring along z reads the neighbouring slices it needs (edge-padded), so the
    stack looks like a thick-slice acquisition resampled to the volume's grid.
    """
    from scipy.ndimage import gaussian_filter1d

    sigma = float(rng.uniform(*sigma_range))
    axis = int(rng.integers(3))
    margin = int(np.ceil(4 * sigma)) if axis == 2 else 0
    zs = np.clip(np.arange(z - k - margin, z + k + margin + 1), 0, vol.shape[2] - 1)
    block = vol[box[0], box[1]][:, :, zs]
    block = gaussian_filter1d(block, sigma, axis=axis, mode="nearest")
    return block[:, :, margin:block.shape[2] - margin]


def added_noise(stack: np.ndarray, rng: np.random.Generator, max_sigma: float) -> np.ndarray:
    """``stack`` with Rician noise of sigma ~ U(0, ``max_sigma``) inside the brain
    (non-zero voxels; normalized units, the brain's 99th percentile is 1), as a scanner
    with a lower SNR would have measured it; the background stays zero.

    >>> x = np.zeros((1, 4, 4), np.float32); x[0, 1:3, 1:3] = 0.5
    >>> y = added_noise(x, np.random.default_rng(0), 0.1)
    >>> bool(np.all(y[x == 0] == 0)), bool(np.all(y[x > 0] >= 0)), bool(np.any(y != x))
    (True, True, True)
    """
    from harmonize_bids.simulate.artifacts import rician_noise

    noisy = rician_noise(stack, float(rng.uniform(0, max_sigma)), rng)
    return np.where(stack > 0, noisy, 0).astype(np.float32)


def _filled(by_site: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    """One anatomy's volumes with the background filled around their common brain."""
    from scipy import ndimage as ndi

    from harmonize_bids.utils.background import fill_background, nearest_brain

    brain = ndi.binary_fill_holes(np.any([v > 0 for v in by_site.values()], axis=0))
    nearest = nearest_brain(brain, width)  # one distance transform for all sites
    return {site: fill_background(v, brain, width, nearest) for site, v in by_site.items()}


class PairedSlices:
    """Random paired batches from in-memory volumes (see module docstring)."""

    def __init__(self, volumes: dict[str, dict[str, np.ndarray]], target_sites: list[str],
                 *, context_slices: int = 1, crop: tuple[int, int] = (64, 64),
                 augment: float = 1.0, balance_target_sites: bool = True,
                 residual_bias: float = 0.05, slice_blur: float = 0.25,
                 source_noise: float = 0.0, noise_sigma: float = 0.1,
                 fill_background: int = 0):
        self.volumes = volumes
        self.slice_blur = slice_blur
        self.source_noise = source_noise
        self.noise_sigma = noise_sigma
        self.residual_bias = residual_bias
        self.balance_target_sites = balance_target_sites
        self.target_sites = list(target_sites)
        self.k = context_slices
        self.crop = crop
        self.augment = augment
        self.anatomies = sorted(volumes)
        for anat in self.anatomies:
            if not any(s in volumes[anat] for s in self.target_sites):
                raise ValueError(f"anatomy {anat} has no image at any target site")
        # axial slices that contain brain, per anatomy
        self.slices = {}
        for anat in self.anatomies:
            ref = next(iter(volumes[anat].values()))
            has_brain = np.nonzero((ref > 0).sum(axis=(0, 1)) > 50)[0]
            self.slices[anat] = has_brain[(has_brain >= self.k) & (has_brain < ref.shape[2] - self.k)]
        if fill_background:  # the brain (any site's non-zero voxels) continued outward
            self.volumes = {anat: _filled(by_site, fill_background)
                            for anat, by_site in volumes.items()}
        #: anatomies seen at each target site
        self.anatomies_at = {s: [a for a in self.anatomies if s in volumes[a]]
                             for s in self.target_sites}

    def _draw_anatomy_and_target(self, rng: np.random.Generator) -> tuple[str, str]:
        if self.balance_target_sites:
            sites = [s for s in self.target_sites if self.anatomies_at[s]]
            s_tgt = sites[rng.integers(len(sites))]
            here = self.anatomies_at[s_tgt]
            return here[rng.integers(len(here))], s_tgt
        anat = self.anatomies[rng.integers(len(self.anatomies))]
        here = [s for s in self.target_sites if s in self.volumes[anat]]
        return anat, here[rng.integers(len(here))]

    def _stack(self, vol: np.ndarray, z: int, x0: int, y0: int,
               rng: np.random.Generator | None = None) -> np.ndarray:
        """``[(2k+1) x H x W]`` crop around slice ``z`` (thick-slice blurred if ``rng``)."""
        h, w = self.crop
        if rng is None:
            sl = vol[x0:x0 + h, y0:y0 + w, z - self.k:z + self.k + 1]
        else:
            sl = thick_slice_blur(vol, z, self.k, (slice(x0, x0 + h), slice(y0, y0 + w)), rng)
        out = np.zeros((h, w, 2 * self.k + 1), np.float32)
        out[:sl.shape[0], :sl.shape[1]] = sl
        return np.moveaxis(out, -1, 0)

    def _source(self, vol: np.ndarray, z: int, x0: int, y0: int, rng: np.random.Generator
                ) -> np.ndarray:
        """A source stack: maybe thick-slice blurred, maybe noisier, intensity-augmented,
        with a random residual bias."""
        blur = self.slice_blur > 0 and rng.random() < self.slice_blur
        stack = self._stack(vol, z, x0, y0, rng if blur else None)
        if self.source_noise > 0 and rng.random() < self.source_noise:
            stack = added_noise(stack, rng, self.noise_sigma)
        stack = augment_intensity(stack, rng, self.augment)
        if self.residual_bias > 0:
            stack = stack * residual_bias(stack.shape[1:], rng, self.residual_bias)
        return stack

    def sample(self, batch_size: int, rng: np.random.Generator) -> Batch:
        src, alt, tgt, tsite, ssite = [], [], [], [], []
        for _ in range(batch_size):
            anat, s_tgt = self._draw_anatomy_and_target(rng)
            sites = sorted(self.volumes[anat])
            z = int(rng.choice(self.slices[anat]))
            shape = self.volumes[anat][sites[0]].shape
            x0 = int(rng.integers(0, max(1, shape[0] - self.crop[0] + 1)))
            y0 = int(rng.integers(0, max(1, shape[1] - self.crop[1] + 1)))
            s_src, s_alt = rng.choice(sites, 2, replace=len(sites) < 2)
            src.append(self._source(self.volumes[anat][s_src], z, x0, y0, rng))
            alt.append(self._source(self.volumes[anat][s_alt], z, x0, y0, rng))
            tgt.append(self._stack(self.volumes[anat][s_tgt], z, x0, y0)[self.k:self.k + 1])
            tsite.append(self.target_sites.index(s_tgt))
            ssite.append(self.target_sites.index(s_src) if s_src in self.target_sites else -1)
        t = torch.from_numpy
        return Batch(t(np.stack(src)), t(np.stack(alt)), t(np.stack(tgt)),
                     torch.tensor(tsite), torch.tensor(ssite))


def volumes_from_simulated_dataset(bids_dir: Path, anatomies: list[str] | None = None
                                   ) -> dict[str, dict[str, np.ndarray]]:
    """Skull-stripped, normalized volumes of a ``harmonize_bids-simulate`` dataset."""
    import nibabel as nb

    from harmonize_bids.evaluation import read_simulated_dataset

    out: dict[str, dict[str, np.ndarray]] = {}
    for img in read_simulated_dataset(bids_dir):
        if anatomies is not None and img.anatomy not in anatomies:
            continue
        data = np.asarray(nb.load(img.t1w).dataobj, dtype=np.float32)
        mask = np.asarray(nb.load(img.brain_mask).dataobj) > 0
        out.setdefault(img.anatomy, {})[img.site] = normalize_brain(data, mask)
    return out


def add_shifted_copies(volumes: dict[str, dict[str, np.ndarray]], masks: dict[str, np.ndarray],
                       n_copies: int, rng: np.random.Generator,
                       spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)) -> None:
    """Add ``n_copies`` randomly protocol-shifted copies of each anatomy's first image
    (sites ``shifted0``, ``shifted1``, ...: sources only, never targets).

    The copies get no bias field of their own: like the real images (N4-corrected
    by the participant level) they stand for bias-corrected scans, and
    :class:`PairedSlices` adds the small residual bias N4 leaves.
    """
    from harmonize_bids.simulate.protocols import random_protocol

    for anat in volumes:
        for k in range(n_copies):  # draw order as before: protocol, then its render
            add_protocol_copies({anat: volumes[anat]}, masks,
                                [random_protocol(rng, f"shifted{k}")], rng, spacing_mm)


def add_protocol_copies(volumes: dict[str, dict[str, np.ndarray]], masks: dict[str, np.ndarray],
                        protocols, rng: np.random.Generator,
                        spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)) -> None:
    """Add each anatomy's first image re-rendered under every one of ``protocols``
    (:func:`~harmonize_bids.simulate.shift.shift_real_image`, bias-free as in
    :func:`add_shifted_copies`), as the site named after the protocol.

    With the names of model sites these copies are *targets* as well as sources: real
    anatomy and texture at the simulated sites, which label-map renders alone do not
    teach (``docs/model.md``, "Decisions of session 32").
    """
    import dataclasses

    from harmonize_bids.simulate.shift import shift_real_image

    for anat, by_site in volumes.items():
        real = next(iter(by_site.values()))
        for protocol in protocols:
            if protocol.name in by_site:
                raise ValueError(f"{anat} already has an image of site '{protocol.name}'")
            shifted = shift_real_image(real, masks[anat],
                                       dataclasses.replace(protocol, bias_strength=0.0), rng,
                                       spacing_mm=spacing_mm)
            by_site[protocol.name] = normalize_brain(shifted.astype(np.float32), masks[anat])
