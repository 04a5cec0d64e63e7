"""Noise schedule math for DDPM/DDIM, kept apart from any network.

Notation (Ho et al. 2020; Nichol & Dhariwal 2021; Song et al. 2021):
``alpha_bar[t] = prod_{s<=t} (1 - beta_s)``, ``x_t = sqrt(ab) x0 + sqrt(1-ab) eps``,
``v = sqrt(ab) eps - sqrt(1-ab) x0`` (Salimans & Ho 2022).  Arrays are float64
numpy; tensors broadcast over ``[N x C x H x W]`` through :func:`extract`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

ScheduleKind = Literal["cosine", "linear"]
Prediction = Literal["eps", "x0", "v"]


def cosine_betas(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule: alpha_bar(t) = cos^2(((t/T + s)/(1 + s)) pi/2), betas clipped.

    >>> b = cosine_betas(1000); b.shape, bool(b[0] < 1e-4), float(b[-1])
    ((1000,), True, 0.999)
    """
    def f(t: float) -> float:
        return math.cos((t / num_steps + s) / (1 + s) * math.pi / 2) ** 2

    return np.array([min(1 - f(i + 1) / f(i), max_beta) for i in range(num_steps)])


def linear_betas(num_steps: int, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    """Linear schedule of Ho et al., rescaled so any T spans the same noise range."""
    scale = 1000 / num_steps
    return np.linspace(start * scale, end * scale, num_steps, dtype=np.float64)


@dataclass(frozen=True)
class NoiseSchedule:
    """alpha-bar of a T-step diffusion, and the maths that uses it."""

    alphas_cumprod: np.ndarray

    @classmethod
    def make(cls, num_steps: int = 1000, kind: ScheduleKind = "cosine") -> "NoiseSchedule":
        betas = cosine_betas(num_steps) if kind == "cosine" else linear_betas(num_steps)
        return cls(np.cumprod(1.0 - betas))

    @property
    def num_steps(self) -> int:
        return len(self.alphas_cumprod)

    # ---- conversions between parameterizations (any array/tensor type) --------------
    @staticmethod
    def q_sample(x0, eps, ab):
        """x_t = sqrt(ab) x0 + sqrt(1 - ab) eps."""
        return ab ** 0.5 * x0 + (1 - ab) ** 0.5 * eps

    @staticmethod
    def v_target(x0, eps, ab):
        """v = sqrt(ab) eps - sqrt(1 - ab) x0."""
        return ab ** 0.5 * eps - (1 - ab) ** 0.5 * x0

    @staticmethod
    def x0_eps_from(prediction: Prediction, out, x_t, ab):
        """(x0, eps) implied by the network output under a parameterization."""
        sa, s1 = ab ** 0.5, (1 - ab) ** 0.5
        if prediction == "eps":
            return (x_t - s1 * out) / sa, out
        if prediction == "x0":
            return out, (x_t - sa * out) / s1
        if prediction == "v":
            x0 = sa * x_t - s1 * out
            return x0, s1 * x_t + sa * out
        raise ValueError(f"unknown prediction type {prediction!r}")


def loss_weight(ab, prediction: Prediction, max_weight: float | None = 5.0):
    """Per-sample weight of the MSE of a ``prediction`` so that the clean-image error
    counts ``min(1 + SNR, max_weight)`` times (SNR = ab / (1 - ab)).

    Plain v-prediction weighs the clean-image error by ``1 + SNR``, which spends most
    of the gradient on nearly clean inputs (the easy denoising); capping it (after
    Hang et al. 2023, "Min-SNR weighting") moves the effort to the noisy steps, where
    the site and the anatomical condition decide the image.  ``None`` -> plain loss.

    >>> [round(float(loss_weight(ab, "v", 5.0)), 4) for ab in (0.5, 0.9, 0.99)]
    [1.0, 0.5, 0.05]
    >>> round(float(loss_weight(0.9, "x0", 5.0)), 4), round(float(loss_weight(0.9, "eps", 5.0)), 4)
    (5.0, 0.5556)
    """
    snr = ab / (1 - ab)
    native = {"x0": 1 + 0 * snr, "v": 1 + snr, "eps": snr}[prediction]  # x0-error weight
    if max_weight is None:
        return native / native
    capped = (1 + snr).clip(max=max_weight) if hasattr(snr, "clip") else min(1 + snr, max_weight)
    return capped / native


def respace(num_steps: int, sample_steps: int, strength: float = 1.0, stop: float = 0.0
            ) -> list[int]:
    """Timesteps kept for skip sampling, descending, evenly spaced.

    The chain starts at ``round(strength (T-1))`` (``strength`` s < 1: from the
    noised source, SDEdit-style) and ends at ``round(stop (T-1))``: with
    ``stop`` = 0 (the default) the last step is t = 0; with ``stop`` > 0 the
    sampler returns the model's clean-image estimate at that noise level
    (the unpredictable finest detail, such as thermal noise, is then averaged
    out rather than drawn).

    >>> respace(1000, 5)
    [999, 749, 500, 250, 0]
    >>> respace(1000, 4, strength=0.3)
    [300, 200, 100, 0]
    >>> respace(1000, 4, stop=0.3)
    [999, 766, 533, 300]
    """
    if sample_steps < 1 or sample_steps > num_steps:
        raise ValueError(f"sample_steps must be in [1, {num_steps}], got {sample_steps}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    if not 0.0 <= stop < strength:
        raise ValueError(f"stop must be in [0, strength={strength}), got {stop}")
    start = int(round(strength * (num_steps - 1)))
    if sample_steps == 1:
        return [start]
    end = int(round(stop * (num_steps - 1)))
    steps = np.round(np.linspace(start, end, sample_steps)).astype(int)
    return sorted(set(int(s) for s in steps), reverse=True)


@dataclass(frozen=True)
class SamplerSettings:
    """How the skip sampler runs.

    steps
        Network evaluations (S << T).
    strength
        Where the chain starts: 1 = pure noise; < 1 = the source slice noised to
        t = strength (T-1) (SDEdit-style; keeps more of the source's look).
    stop
        Where it ends: 0 = run to t = 0 (a full sample, noise texture included);
        > 0 = return the model's clean-image estimate at t = stop (T-1), which
        averages out what cannot be predicted from the source (thermal noise).
    eta
        DDIM stochasticity; 0 = deterministic.
    samples
        Independent chains (different initial noise, the same condition), averaged:
        an estimate of the posterior mean, which is what squared-error scores such as
        PSNR reward. Each chain costs ``steps`` network evaluations.
    source_guidance
        w >= 0: each step's prediction is pushed away from what the model makes of
        the same slice for the *source's* site, ``f(target) + w (f(target) - f(source))``
        (:func:`away_from`); 0 = off. Where the sampler is given no source site (or
        it is the target) nothing changes. Doubles the network evaluations.

    The defaults (5 steps x 2 chains: 10 network evaluations) are the app's defaults
    everywhere (command line, :class:`~harmonize_bids.config.Settings`, demo): on the
    held-out slab diagnostic they beat 10 steps x 1 chain, which costs the same, for
    every bundled model tried (``benchmarks/results/detail_path_ab.md``).
    """

    steps: int = 5
    strength: float = 1.0
    stop: float = 0.0
    eta: float = 0.0
    samples: int = 2
    source_guidance: float = 0.0

    def __post_init__(self):
        respace(1000, self.steps, self.strength, self.stop)  # raises on bad values
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if int(self.samples) != self.samples or self.samples < 1:
            raise ValueError(f"samples must be a positive integer, got {self.samples}")
        if not self.source_guidance >= 0:
            raise ValueError(f"source_guidance must be >= 0, got {self.source_guidance}")

    def timesteps(self, num_steps: int) -> list[int]:
        """The kept timesteps of a ``num_steps`` schedule, descending."""
        return respace(num_steps, self.steps, self.strength, self.stop)

    def metadata(self) -> dict:
        """Sidecar fields (BIDS-style keys)."""
        return {"Steps": int(self.steps), "Strength": float(self.strength),
                "StopAt": float(self.stop), "Eta": float(self.eta),
                "Samples": int(self.samples), "SourceSiteGuidance": float(self.source_guidance)}


def away_from(towards, away, weight: float):
    """Guidance away from a condition: ``towards + weight (towards - away)``.

    ``towards`` is the network's prediction under the wanted condition (the target
    site), ``away`` under the one to leave (the source's site); ``weight`` 0 gives
    ``towards`` back. The same extrapolation as classifier-free guidance, with the
    source's site in place of the null condition.

    >>> away_from(2.0, 1.0, 0.5)
    2.5
    >>> away_from(2.0, 1.0, 0.0)
    2.0
    """
    return towards + weight * (towards - away) if weight else towards


def ddim_step(x0, eps, ab_prev, eta: float = 0.0, ab_t=None, noise=None):
    """One DDIM update from (x0, eps) at t to the previous kept step.

    x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - ab_prev)/(1 - ab_t)) sqrt(1 - ab_t/ab_prev).
    With eta = 0 (the default) the update is deterministic.
    """
    if eta == 0.0:
        return ab_prev ** 0.5 * x0 + (1 - ab_prev) ** 0.5 * eps
    sigma = eta * ((1 - ab_prev) / (1 - ab_t)) ** 0.5 * (1 - ab_t / ab_prev) ** 0.5
    return ab_prev ** 0.5 * x0 + (1 - ab_prev - sigma ** 2) ** 0.5 * eps + sigma * noise
