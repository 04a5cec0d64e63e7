"""The harmonization model: condition encoder + site-conditioned denoising UNet.

One model serves all sites: a learned embedding per site is added to the
timestep embedding and modulates every ResBlock (FiLM).  The anatomical
condition ``c`` is concatenated to the noisy slice at the input.  With
``ModelConfig.source_input`` the source slice stack itself is concatenated too
(a *detail path*, as in SR3/Palette image-to-image diffusion): ``c`` stays the
domain-invariant description of anatomy that guides every step, while the
denoiser can read fine anatomical detail that ``c``'s bottleneck cannot carry.
Paired training (source at one site, target = the same anatomy at another)
makes copying the source's contrast through this path cost loss, so the
output's contrast still comes from the target site (``docs/model.md``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import nn

from harmonize_bids.diffusion.condition import ConditionEncoder, SiteClassifier
from harmonize_bids.diffusion.schedule import NoiseSchedule
from harmonize_bids.diffusion.unet import UNet, timestep_embedding


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network and its schedule (saved with the weights)."""

    sites: tuple[str, ...]
    context_slices: int = 1
    cond_channels: int = 4
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = (2,)
    encoder_channels: int = 16
    bottleneck_noise: float = 0.1
    #: also feed the (2k+1)-slice source stack to the denoiser (the detail path)
    source_input: bool = False
    dropout: float = 0.0
    prediction: str = "v"
    schedule: str = "cosine"
    num_timesteps: int = 1000
    #: voxel size (mm) the model works at; template-space inputs are resampled to it
    voxel_mm: float = 2.0
    #: background voxels within this many voxels of the brain take the nearest brain
    #: value in training and at inference (:func:`harmonize_bids.utils.background.fill_background`);
    #: 0: zero background (the bundled model)
    fill_background: int = 0
    #: normalize (and attend) inside the source's footprint (its non-zero voxels: the
    #: brain) only, so the output does not depend on the background around the brain
    #: (:class:`~harmonize_bids.diffusion.unet.RegionGroupNorm`); needs a zero background
    norm_in_brain: bool = False
    #: what the chain diffuses: 0, the target image itself (every model before session
    #: 26); r > 0, ``r * (target - source)`` (the source's centre slice), so a chain that
    #: changes nothing returns the source: the output's coarse level and anatomy start
    #: from the source and the network learns only the site change (residual diffusion,
    #: as SR3-style super-resolution diffuses the residual over an upsampled input)
    residual_scale: float = 0.0
    #: site -> tissue intensity landmarks of its images (:mod:`harmonize_bids.site_intensity`);
    #: data, not network: the participant level maps each output onto its target's
    site_landmarks: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if len(set(self.sites)) != len(self.sites) or not self.sites:
            raise ValueError(f"sites must be unique and non-empty: {self.sites}")
        if int(self.fill_background) != self.fill_background or self.fill_background < 0:
            raise ValueError(f"fill_background must be an integer >= 0, got {self.fill_background}")
        if self.norm_in_brain and self.fill_background:
            raise ValueError("norm_in_brain needs a zero background (fill_background=0)")
        if not self.residual_scale >= 0:
            raise ValueError(f"residual_scale must be >= 0, got {self.residual_scale}")
        if self.prediction not in ("eps", "x0", "v"):
            raise ValueError(f"unknown prediction {self.prediction!r}")
        for name in ("sites", "channel_mults", "attention_levels"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        from harmonize_bids.site_intensity import check_landmarks

        unknown = set(self.site_landmarks) - set(self.sites)
        if unknown:
            raise ValueError(f"site_landmarks for sites the model does not know: {sorted(unknown)}")
        object.__setattr__(self, "site_landmarks", {
            site: [float(v) for v in check_landmarks(values)]
            for site, values in self.site_landmarks.items()})

    @property
    def multiple(self) -> int:
        """H and W must be multiples of this."""
        return 2 ** (len(self.channel_mults) - 1)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for key in ("sites", "channel_mults", "attention_levels"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields {sorted(unknown)}")
        return cls(**data)

    def site_index(self, site: str) -> int:
        """Index of a site, or a clear error listing the sites the model knows."""
        try:
            return self.sites.index(site)
        except ValueError:
            raise KeyError(f"site {site!r} is not known to this model; it knows: "
                           f"{', '.join(self.sites)}") from None


def to_diffused(image: torch.Tensor, source: torch.Tensor, residual_scale: float
                ) -> torch.Tensor:
    """``image`` itself (``residual_scale == 0``) or ``residual_scale * (image - source)``.

    >>> to_diffused(torch.tensor([0.5]), torch.tensor([0.25]), 2.0).tolist()
    [0.5]
    >>> to_diffused(torch.tensor([0.5]), torch.tensor([0.25]), 0.0).tolist()
    [0.5]
    """
    return image if not residual_scale else residual_scale * (image - source)


def from_diffused(diffused: torch.Tensor, source: torch.Tensor, residual_scale: float
                  ) -> torch.Tensor:
    """Inverse of :func:`to_diffused`: a zero residual gives the source back.

    >>> from_diffused(torch.tensor([0.0]), torch.tensor([0.25]), 2.0).tolist()
    [0.25]
    """
    return diffused if not residual_scale else source + diffused / residual_scale


class HarmonizationModel(nn.Module):
    """``forward(x_t, t, site, cond)`` -> prediction (eps, x0 or v) ``[N x 1 x H x W]``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        emb_dim = 4 * config.base_channels
        self.time_mlp = nn.Sequential(nn.Linear(config.base_channels, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.site_embedding = nn.Embedding(len(config.sites), emb_dim)
        self.encoder = ConditionEncoder(config.context_slices, config.cond_channels,
                                        config.encoder_channels, config.channel_mults,
                                        config.bottleneck_noise)
        self.denoiser = UNet(self.denoiser_inputs(config), 1, config.base_channels,
                             config.channel_mults, config.num_res_blocks,
                             config.attention_levels, emb_dim, config.dropout)
        self.site_classifier = SiteClassifier(config.cond_channels, len(config.sites))

    def per_site_tensors(self) -> list[str]:
        """Names of the state tensors with one row per site (dim 0, in ``config.sites``
        order): the site embedding and the site classifier's output layer."""
        rows = {id(self.site_embedding.weight), *map(id, self.site_classifier.head.parameters())}
        return [name for name, tensor in self.state_dict(keep_vars=True).items()
                if id(tensor) in rows]

    @staticmethod
    def denoiser_inputs(config: ModelConfig) -> int:
        """Input channels of the denoiser: x_t, the condition, and the source stack if used."""
        source = 2 * config.context_slices + 1 if config.source_input else 0
        return 1 + config.cond_channels + source

    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.make(self.config.num_timesteps, self.config.schedule)

    def region(self, source: torch.Tensor) -> torch.Tensor | None:
        """Where the normalizations take their statistics: the pixels where any slice of
        the source stack has signal (``config.norm_in_brain``), else everywhere (None)."""
        return (source != 0).any(dim=1, keepdim=True) if self.config.norm_in_brain else None

    def encode(self, source: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Anatomical condition of source slices ``[N x (2k+1) x H x W]``."""
        return self.encoder(source, generator, self.region(source))

    def source_centre(self, source: torch.Tensor) -> torch.Tensor:
        """The slice being harmonized, ``[N x 1 x H x W]``, of a source stack."""
        k = self.config.context_slices
        return source[:, k:k + 1]

    def diffused(self, image: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """What the chain diffuses for a clean ``image`` of the slice ``source`` was
        stacked around (see ``ModelConfig.residual_scale``)."""
        return to_diffused(image, self.source_centre(source), self.config.residual_scale)

    def image(self, diffused: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """The clean image a clean ``diffused`` estimate stands for (inverse of :meth:`diffused`)."""
        return from_diffused(diffused, self.source_centre(source), self.config.residual_scale)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, site: torch.Tensor,
                cond: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """Prediction for ``x_t``; ``source`` (the stack ``cond`` was encoded from) is
        required when ``config.source_input`` or ``config.norm_in_brain`` and ignored
        otherwise."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        emb = emb + self.site_embedding(site)
        inputs = [x_t, cond]
        if (self.config.source_input or self.config.norm_in_brain) and source is None:
            raise ValueError("this model reads the source stack: pass source=")
        if self.config.source_input:
            inputs.append(source.to(x_t.dtype))
        region = self.region(source) if source is not None else None
        return self.denoiser(torch.cat(inputs, dim=1), emb, region)
