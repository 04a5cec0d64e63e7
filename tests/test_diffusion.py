"""The diffusion model parts: schedule math, network shapes, sampler, checkpoints, training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harmonize_bids.diffusion.checkpoint import ModelFileError, load_model, read_config, save_model
from harmonize_bids.diffusion.condition import GradientReversal
from harmonize_bids.diffusion.model import HarmonizationModel, ModelConfig
from harmonize_bids.diffusion.sampler import SamplerSettings, harmonize_slices
from harmonize_bids.diffusion.schedule import (
    NoiseSchedule,
    cosine_betas,
    ddim_step,
    linear_betas,
    respace,
)

TINY = dict(base_channels=8, channel_mults=(1, 2), attention_levels=(1,), encoder_channels=8,
            cond_channels=2)


def tiny_model(sites=("a", "b"), **kw) -> HarmonizationModel:
    torch.manual_seed(0)
    return HarmonizationModel(ModelConfig(sites=sites, **{**TINY, **kw}))


# ------------------------------------------------------------------ schedule
def test_cosine_schedule_hand_values():
    s, T = 0.008, 1000
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    sched = NoiseSchedule.make(T, "cosine")
    assert sched.alphas_cumprod[0] == pytest.approx(f(1) / f(0), rel=1e-12)
    assert sched.alphas_cumprod[499] == pytest.approx(f(500) / f(0), rel=1e-9)
    assert np.all(np.diff(sched.alphas_cumprod) < 0) and sched.alphas_cumprod[-1] < 1e-4
    assert cosine_betas(T).max() == 0.999


def test_linear_schedule_hand_values():
    sched = NoiseSchedule.make(1000, "linear")
    assert sched.alphas_cumprod[0] == pytest.approx(1 - 1e-4)
    assert sched.alphas_cumprod[1] == pytest.approx((1 - 1e-4) * (1 - linear_betas(1000)[1]))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_parameterizations_roundtrip(prediction):
    rng = np.random.default_rng(0)
    x0, eps, ab = rng.normal(size=5), rng.normal(size=5), 0.37
    x_t = NoiseSchedule.q_sample(x0, eps, ab)
    out = {"eps": eps, "x0": x0, "v": NoiseSchedule.v_target(x0, eps, ab)}[prediction]
    got_x0, got_eps = NoiseSchedule.x0_eps_from(prediction, out, x_t, ab)
    assert np.allclose(got_x0, x0) and np.allclose(got_eps, eps)


def test_respacing_indices():
    assert respace(1000, 5) == [999, 749, 500, 250, 0]
    assert respace(1000, 10)[:3] == [999, 888, 777]
    assert respace(1000, 4, strength=0.3) == [300, 200, 100, 0]
    assert respace(1000, 1) == [999]
    assert respace(1000, 4, stop=0.3) == [999, 766, 533, 300]
    assert respace(1000, 3, strength=0.5, stop=0.2) == [500, 350, 200]
    assert respace(10, 10) == list(range(9, -1, -1))
    for bad in [dict(sample_steps=0), dict(sample_steps=1001), dict(sample_steps=5, strength=0),
                dict(sample_steps=5, stop=1.0), dict(sample_steps=5, strength=0.4, stop=0.4)]:
        with pytest.raises(ValueError):
            respace(1000, **bad)


def test_ddim_update_hand_value():
    # x_prev = sqrt(0.81) * 2 + sqrt(0.19) * 0.5
    assert ddim_step(2.0, 0.5, 0.81) == pytest.approx(0.9 * 2 + math.sqrt(0.19) * 0.5)
    # eta = 1 with zero noise shrinks the eps term by sqrt(1 - ab_prev - sigma^2)
    sigma = math.sqrt((1 - 0.81) / (1 - 0.5)) * math.sqrt(1 - 0.5 / 0.81)
    assert ddim_step(2.0, 0.5, 0.81, eta=1.0, ab_t=0.5, noise=0.0) == pytest.approx(
        0.9 * 2 + math.sqrt(0.19 - sigma ** 2) * 0.5)


# ------------------------------------------------------------------ network
def test_shapes_and_site_errors():
    model = tiny_model()
    x = torch.randn(3, 1, 16, 24)
    cond = model.encode(torch.randn(3, 3, 16, 24))
    assert cond.shape == (3, 2, 16, 24)
    out = model(x, torch.tensor([0, 10, 999]), torch.tensor([0, 1, 0]), cond)
    assert out.shape == (3, 1, 16, 24)
    with pytest.raises(KeyError, match="it knows: a, b"):
        model.config.site_index("c")
    with pytest.raises(ValueError):
        ModelConfig(sites=("a", "a"))


def test_gradient_reversal_flips_gradient():
    x = torch.ones(3, requires_grad=True)
    GradientReversal.apply(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))


class _Oracle(HarmonizationModel):
    """Predicts the exact v for a known clean image: the sampler must return it."""

    clean: torch.Tensor

    def forward(self, x_t, t, site, cond, source=None):
        ab = torch.as_tensor(self.schedule().alphas_cumprod, dtype=x_t.dtype)[t][:, None, None, None]
        eps = (x_t - ab.sqrt() * self.clean) / (1 - ab).sqrt()
        return NoiseSchedule.v_target(self.clean, eps, ab)


@pytest.mark.parametrize("steps,strength,stop", [(10, 1.0, 0.0), (3, 0.5, 0.0), (1, 1.0, 0.0),
                                                 (4, 1.0, 0.3), (2, 0.6, 0.5)])
def test_sampler_with_perfect_predictions_returns_the_clean_image(steps, strength, stop):
    model = _Oracle(ModelConfig(sites=("a",), **TINY))
    model.clean = torch.rand(2, 1, 16, 16)
    out = harmonize_slices(model, torch.rand(2, 3, 16, 16), 0,
                           SamplerSettings(steps=steps, strength=strength, stop=stop),
                           generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, model.clean, atol=1e-4)


@pytest.mark.parametrize("source_input", [False, True])
def test_sampler_is_deterministic_pads_and_shares_noise(source_input):
    model = tiny_model(source_input=source_input)
    src = torch.rand(4, 3, 18, 22)   # not a multiple of 2: padded inside
    run = lambda seed, **kw: harmonize_slices(  # noqa: E731
        model, src, 1, SamplerSettings(steps=4), generator=torch.Generator().manual_seed(seed),
        **kw)
    a, b, c = run(1), run(1), run(2)
    assert a.shape == (4, 1, 18, 22)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # identical source slices + shared initial noise => identical outputs
    same = harmonize_slices(model, src[:1].repeat(3, 1, 1, 1), 0, SamplerSettings(steps=3),
                            generator=torch.Generator().manual_seed(0))
    assert torch.allclose(same[0], same[2])


def test_several_chains_average_their_clean_estimates():
    model = tiny_model()
    src = torch.rand(3, 3, 16, 16)
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    single = SamplerSettings(steps=3, samples=1)
    one = [harmonize_slices(model, src, 1, single, noise=noise[j:j + 1]) for j in range(2)]
    both = harmonize_slices(model, src, 1, SamplerSettings(steps=3, samples=2), noise=noise)
    assert not torch.allclose(one[0], one[1])
    assert torch.allclose(both, (one[0] + one[1]) / 2, atol=1e-6)
    # drawn noise: deterministic per generator seed, and one chain is the default draw
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    two = SamplerSettings(steps=3, samples=2)
    assert torch.equal(harmonize_slices(model, src, 1, two, generator=gen()),
                       harmonize_slices(model, src, 1, two, generator=gen()))
    with pytest.raises(ValueError, match="2 chains"):
        harmonize_slices(model, src, 1, two, noise=noise[:1])
    with pytest.raises(ValueError, match="samples"):
        SamplerSettings(samples=0)
    assert SamplerSettings(samples=3).metadata()["Samples"] == 3
    # the oracle's chains all end at the clean image: their mean too
    oracle = _Oracle(ModelConfig(sites=("a",), **TINY))
    oracle.clean = torch.rand(2, 1, 16, 16)
    out = harmonize_slices(oracle, torch.rand(2, 3, 16, 16), 0,
                           SamplerSettings(steps=4, samples=3),
                           generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, oracle.clean, atol=1e-4)


class _SiteOracle(HarmonizationModel):
    """Predicts the clean image ``clean + offset[site]`` directly (x0 prediction)."""

    offsets = (0.0, 0.3, -0.2)

    def forward(self, x_t, t, site, cond, source=None):
        return self.clean + torch.as_tensor(self.offsets, dtype=x_t.dtype)[site][:, None, None, None]


def test_source_site_guidance_extrapolates_away_from_the_source_site():
    """f(target) + w (f(target) - f(source)) at every step: the final clean estimate of an
    oracle whose sites differ by a constant moves by w times that difference; without a
    source site, with the target as source, or with w = 0 the chain is unguided."""
    model = _SiteOracle(ModelConfig(sites=("a", "b", "c"), prediction="x0", **TINY))
    model.clean = torch.rand(2, 1, 16, 16)
    src = torch.rand(2, 3, 16, 16)

    def run(weight, source_site):
        return harmonize_slices(model, src, 1, SamplerSettings(steps=4, source_guidance=weight),
                                generator=torch.Generator().manual_seed(0),
                                source_site=source_site)

    plain = model.clean + 0.3
    for weight, source_site in ((0.5, None), (0.5, 1), (0.0, 0)):
        assert torch.allclose(run(weight, source_site), plain, atol=1e-5)
    assert torch.allclose(run(0.5, 0), plain + 0.5 * (0.3 - 0.0), atol=1e-5)
    assert torch.allclose(run(2.0, 2), plain + 2.0 * (0.3 + 0.2), atol=1e-5)
    assert SamplerSettings(source_guidance=0.5).metadata()["SourceSiteGuidance"] == 0.5
    with pytest.raises(ValueError, match="source_guidance"):
        SamplerSettings(source_guidance=-0.1)


def test_source_site_guidance_on_a_trained_network_is_deterministic_and_differs():
    model = tiny_model(sites=("a", "b", "c"))
    with torch.no_grad():  # an untrained network's zero-initialized output layer ignores sites
        for param in model.parameters():
            param.normal_(0, 0.2)
    src = torch.rand(3, 3, 16, 16)
    guided = SamplerSettings(steps=3, source_guidance=1.0)

    def run(sampler, source_site):
        return harmonize_slices(model, src, 1, sampler, source_site=source_site,
                                generator=torch.Generator().manual_seed(4))

    assert torch.equal(run(guided, 0), run(guided, 0))
    assert not torch.allclose(run(guided, 0), run(guided, 2))
    assert not torch.allclose(run(guided, 0), run(SamplerSettings(steps=3), 0))


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_roundtrip_and_card(tmp_path):
    model = tiny_model(sites=("ixihh", "siemens3tmprage"))
    path = save_model(model, tmp_path / "m.safetensors", card={"steps": 5})
    loaded, card = load_model(path)
    assert card["sites"] == ["ixihh", "siemens3tmprage"] and card["steps"] == 5
    assert len(card["sha256"]) == 64
    assert read_config(path) == model.config
    x, cond = torch.randn(1, 1, 8, 8), torch.zeros(1, 2, 8, 8)
    t, s = torch.tensor([3]), torch.tensor([1])
    model.eval()
    assert torch.equal(model(x, t, s, cond), loaded(x, t, s, cond))
    assert [p.name for p in tmp_path.iterdir()].count("m.safetensors") == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_untrusted_model_files_are_refused(tmp_path):
    pickled = tmp_path / "evil.pt"
    torch.save({"weights": torch.zeros(2)}, pickled)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(pickled)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ModelFileError):
        load_model(junk)
    good = save_model(tiny_model(), tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(ModelFileError):
        load_model(truncated)
    with pytest.raises(ModelFileError, match="not found"):
        load_model(tmp_path / "missing.safetensors")
    # a damaged card beside good weights: the file's error, not a JSON traceback
    good.with_suffix(".json").write_text('{"sites": ["a"')
    with pytest.raises(ModelFileError, match="model card is not valid JSON"):
        load_model(good)
    good.with_suffix(".json").write_text('["a"]')
    with pytest.raises(ModelFileError, match="not a JSON object"):
        load_model(good)


# ------------------------------------------------------------------ training
def toy_paired_slices():
    """Training pairs of one toy anatomy at two model sites and one source protocol."""
    from harmonize_bids.training.data import PairedSlices, normalize_brain
    from harmonize_bids.simulate.protocols import PROTOCOLS
    from harmonize_bids.simulate.render import render
    from toys import toy_labels

    anat = toy_labels((24, 24, 16))
    volumes = {"toy": {}}
    for name in ("siemens3tmprage", "ge15tspgr", "siemens15tlowsnr"):
        img, mask, _ = render(anat, PROTOCOLS[name], np.random.default_rng(0))
        volumes["toy"][name] = normalize_brain(np.asarray(img.dataobj, float),
                                               np.asarray(mask.dataobj))
    return PairedSlices(volumes, ["siemens3tmprage", "ge15tspgr"], crop=(16, 16))


@pytest.mark.parametrize("source_input,residual_scale", [(False, 0.0), (True, 0.0), (True, 3.0)])
def test_tiny_model_trains_and_loss_drops(source_input, residual_scale):
    from harmonize_bids.training.loop import TrainConfig, TrainLoop, training_losses

    data = toy_paired_slices()
    model = tiny_model(sites=("siemens3tmprage", "ge15tspgr"), source_input=source_input,
                       residual_scale=residual_scale)
    loop = TrainLoop(model, lambda rng: data.sample(8, rng), TrainConfig(lr=2e-3, seed=0))
    fixed = data.sample(8, np.random.default_rng(1))
    t = torch.tensor([50, 200, 400, 600, 800, 900, 950, 999])
    noise = torch.randn(fixed.target.shape, generator=torch.Generator().manual_seed(1))

    def fixed_loss():
        model.eval()
        with torch.no_grad():
            return float(training_losses(model, loop.schedule, fixed, t, noise,
                                         loop.config)["diffusion"])

    before = fixed_loss()
    history = loop.run(60)
    after = fixed_loss()
    assert len(history) == 60 and loop.step == 60
    assert after < 0.7 * before, (before, after)
    assert {"diffusion", "consistency", "adversary", "loss"} <= set(history[-1])


def test_warmup_raises_the_learning_rate_linearly_before_the_step():
    """With a warm-up the optimizer's rate rises lr/N, 2 lr/N, ... and then stays; it is
    set before each step, so the first step moves the weights by about lr/N (Adam's
    first step is lr * sign of the gradient), not lr."""
    from harmonize_bids.training.loop import TrainConfig, TrainLoop

    data = toy_paired_slices()
    moves, rates = {}, {}
    for warmup in (0, 4):
        model = tiny_model(sites=("siemens3tmprage", "ge15tspgr"))
        before = [p.detach().clone() for p in model.parameters()]
        loop = TrainLoop(model, lambda rng: data.sample(4, rng),
                         TrainConfig(lr=1e-3, warmup_steps=warmup, seed=0))
        loop.run_step()
        moves[warmup] = max(float((p.detach() - b).abs().max())
                            for p, b in zip(model.parameters(), before))
        rates[warmup] = [loop.optimizer.param_groups[0]["lr"]]
        for _ in range(4):
            loop.run_step()
            rates[warmup].append(loop.optimizer.param_groups[0]["lr"])
    assert rates[0] == pytest.approx([1e-3] * 5)
    assert rates[4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3])
    assert moves[0] == pytest.approx(1e-3, rel=0.05)
    assert moves[4] == pytest.approx(2.5e-4, rel=0.05)


def test_resuming_from_a_saved_state_continues_the_uninterrupted_run(tmp_path):
    """2 steps, save, a fresh loop loads and takes 2 more: the same weights, EMA and
    history as 4 steps in one go (batches, timesteps and noise continue too)."""
    from harmonize_bids.training.loop import TrainConfig, TrainLoop, load_state, save_state

    data = toy_paired_slices()
    config = TrainConfig(lr=1e-3, warmup_steps=3, seed=0)

    def new_loop():
        return TrainLoop(tiny_model(sites=("siemens3tmprage", "ge15tspgr")),
                         lambda rng: data.sample(4, rng), config)

    straight = new_loop()
    straight.run(4)
    first = new_loop()
    first.run(2)
    save_state(first, tmp_path / "state.safetensors")
    resumed = new_loop()
    assert load_state(resumed, tmp_path / "state.safetensors") and resumed.step == 2
    resumed.run(2)
    assert [h["diffusion"] for h in resumed.history] == [h["diffusion"] for h in straight.history]
    for a, b in zip(list(straight.model.parameters()) + list(straight.ema.parameters()),
                    list(resumed.model.parameters()) + list(resumed.ema.parameters())):
        assert torch.equal(a, b)
    assert not load_state(new_loop(), tmp_path / "absent.safetensors")

    # under torchrun the file holds rank 0's streams; each process gets its own instead
    draws = []
    for rank in (0, 1):
        loop = new_loop()
        loop.rank, loop.world_size = rank, 2
        assert load_state(loop, tmp_path / "state.safetensors") and loop.step == 2
        draws.append((loop.rng.integers(1 << 30), int(torch.randint(1 << 30, (1,),
                                                                    generator=loop.generator))))
    single = new_loop()
    load_state(single, tmp_path / "state.safetensors")
    draws.append((single.rng.integers(1 << 30), int(torch.randint(1 << 30, (1,),
                                                                  generator=single.generator))))
    assert len({d[0] for d in draws}) == 3 and len({d[1] for d in draws}) == 3


def test_gradient_checkpointing_gives_the_same_gradients():
    from harmonize_bids.diffusion.unet import UNet

    torch.manual_seed(0)
    net = UNet(2, 1, base_channels=8, channel_mults=(1, 2), attention_levels=(1,), emb_dim=16)
    x, emb = torch.randn(2, 2, 16, 16), torch.randn(2, 16)
    grads = []
    for flag in (False, True):
        net.zero_grad()
        net.train()
        net.gradient_checkpointing = flag
        net(x, emb).square().mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_train_config_switches_checkpointing_on_in_every_unet():
    from harmonize_bids.training.loop import TrainConfig, TrainLoop

    model = tiny_model()
    loop = TrainLoop(model, lambda rng: None, TrainConfig(gradient_checkpointing=True))
    flags = [m.gradient_checkpointing for m in loop.model.modules()
             if hasattr(m, "gradient_checkpointing")]
    assert len(flags) >= 2 and all(flags)


def test_sampler_timesteps_put_their_share_on_the_chain_and_the_rest_uniform():
    """A share of the timesteps lands on the app's chain (t = 0 excluded), the rest
    spreads over [0, T); without a share the loop keeps its uniform draws exactly."""
    from harmonize_bids.training.loop import (
        SamplerTimesteps,
        TrainConfig,
        TrainLoop,
        UniformTimesteps,
    )

    chain = {t for t in respace(1000, 5) if t > 0}
    t, w = SamplerTimesteps(1000, share=0.5).sample(20000,
                                                    torch.Generator().manual_seed(0))
    on_chain = np.isin(t.numpy(), sorted(chain))
    # uniform draws hit the 4 chain steps 0.4% of the time: 0.5 + 0.5 * 0.004
    assert abs(on_chain.mean() - 0.502) < 0.015, on_chain.mean()
    rest = t.numpy()[~on_chain]
    assert rest.min() < 20 and rest.max() > 980 and abs(rest.mean() - 499.5) < 15
    assert torch.equal(w, torch.ones(20000))
    assert 0 not in set(SamplerTimesteps(1000, share=1.0).sample(
        500, torch.Generator().manual_seed(1))[0].tolist())
    with pytest.raises(ValueError, match="share"):
        SamplerTimesteps(1000, share=1.5)

    model = tiny_model()
    assert type(TrainLoop(model, lambda rng: None, TrainConfig()).timesteps) is UniformTimesteps
    chained = TrainLoop(model, lambda rng: None, TrainConfig(sampler_share=0.3, sampler_steps=10))
    assert set(chained.timesteps.chain.tolist()) == {t for t in respace(1000, 10) if t > 0}


@pytest.mark.parametrize("balance, expected_share", [(True, 0.5), (False, 0.1)])
def test_paired_slices_balance_target_sites(balance, expected_share):
    """Balanced: each target site gets the same share of batches, however many
    anatomies carry it (here 9 anatomies at "big", 1 at "small")."""
    from harmonize_bids.training.data import PairedSlices

    vol = np.zeros((16, 16, 6), np.float32)
    vol[2:14, 2:14, :] = 1.0
    volumes = {f"a{i}": {"big": vol, "other": vol} for i in range(9)}
    volumes["a9"] = {"small": vol, "other": vol}
    data = PairedSlices(volumes, ["big", "small"], crop=(16, 16),
                        balance_target_sites=balance)
    batch = data.sample(2000, np.random.default_rng(0))
    share_small = float((batch.target_site == 1).float().mean())
    assert abs(share_small - expected_share) < 0.04, share_small


def test_loss_weight_caps_the_clean_image_weight():
    """v-loss weighs the x0 error by 1 + SNR; the cap keeps noisy steps at weight 1
    and scales nearly clean ones down to ``max_weight / (1 + SNR)``."""
    from harmonize_bids.diffusion.schedule import loss_weight

    ab = torch.tensor([0.01, 0.5, 0.8, 0.99])          # SNR 0.0101, 1, 4, 99
    assert torch.allclose(loss_weight(ab, "v", 5.0), torch.tensor([1.0, 1.0, 1.0, 0.05]))
    assert torch.allclose(loss_weight(ab, "v", None), torch.ones(4))
    # the x0 error weight is the same whatever the parameterization
    snr = ab / (1 - ab)
    for pred, native in (("x0", torch.ones(4)), ("v", 1 + snr), ("eps", snr)):
        assert torch.allclose(loss_weight(ab, pred, 5.0) * native, (1 + snr).clamp(max=5.0))


def test_training_loss_uses_the_weights():
    from harmonize_bids.training.data import Batch
    from harmonize_bids.training.loop import TrainConfig, training_losses

    model = tiny_model().eval()
    g = torch.Generator().manual_seed(0)
    batch = Batch(torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g),
                  torch.rand(2, 1, 8, 8, generator=g), torch.tensor([0, 1]), torch.tensor([0, 1]))
    t, noise = torch.tensor([5, 900]), torch.randn(2, 1, 8, 8, generator=g)
    sched = model.schedule()
    with torch.no_grad():
        plain = training_losses(model, sched, batch, t, noise,
                                TrainConfig(max_loss_weight=None))["diffusion"]
        capped = training_losses(model, sched, batch, t, noise,
                                 TrainConfig(max_loss_weight=5.0))["diffusion"]
    # t = 5 is nearly clean (1 + SNR >> 5): it is down-weighted, so the loss drops
    assert float(capped) < float(plain)


def test_distribution_loss_sees_values_not_places():
    """W2^2 of in-brain intensities: a spatial shuffle costs nothing, a narrowed
    distribution costs its squared quantile error; outside the brain is ignored."""
    from harmonize_bids.training.loop import distribution_loss

    g = torch.Generator().manual_seed(0)
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 2:14, 2:14] = 0.5 + 0.1 * torch.randn(2, 1, 12, 12, generator=g)
    ab = torch.ones(2)
    flat = target.flatten(1).clone()
    inside = flat[0] > 0
    flat[0, inside] = flat[0, inside][torch.randperm(int(inside.sum()), generator=g)]
    shuffled = flat.view_as(target)
    assert float(distribution_loss(shuffled, target, ab)) < 1e-12
    # outside the brain the prediction may be anything
    noisy_outside = torch.where(target > 0, target, torch.randn(target.shape, generator=g))
    assert float(distribution_loss(noisy_outside, target, ab)) < 1e-12
    # shrinking every value halfway to the mean: W2^2 = (1/2)^2 * variance
    mean = target[target > 0].view(2, -1).mean(1)[:, None, None, None]
    narrowed = torch.where(target > 0, mean + 0.5 * (target - mean), 0.0)
    var = target[target > 0].view(2, -1).var(1, unbiased=False)
    expected = float((0.25 * var).mean())
    assert abs(float(distribution_loss(narrowed, target, ab)) - expected) < 1e-6
    # ab weights each sample; samples with too little brain are left out
    half = distribution_loss(narrowed, target, torch.tensor([1.0, 0.0]))
    assert abs(float(half) - float(0.25 * var[0]) / 2) < 1e-6
    empty = torch.zeros_like(target)
    assert float(distribution_loss(narrowed, empty, ab)) == 0.0


def test_distribution_term_enters_the_loss_and_has_gradients():
    from harmonize_bids.training.data import Batch
    from harmonize_bids.training.loop import TrainConfig, training_losses

    model = tiny_model().eval()  # no bottleneck noise: both calls see the same condition
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 2:14, 2:14] = torch.rand(2, 1, 12, 12, generator=g)
    batch = Batch(torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g),
                  target, torch.tensor([0, 1]), torch.tensor([0, 1]))
    t, noise = torch.tensor([50, 300]), torch.randn(2, 1, 16, 16, generator=g)
    sched = model.schedule()
    off = training_losses(model, sched, batch, t, noise, TrainConfig())
    assert "distribution" not in off
    on = training_losses(model, sched, batch, t, noise, TrainConfig(distribution_weight=2.0))
    assert float(on["distribution"].detach()) > 0
    assert torch.allclose(on["loss"], off["loss"] + 2.0 * on["distribution"])
    model.zero_grad()
    on["distribution"].backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
               for p in model.denoiser.parameters())


def test_edge_weight_counts_the_brains_outer_band_more():
    """The band's weights by hand; with edge_weight 0 the diffusion loss is the plain
    mean, with it the weighted mean of the per-pixel errors (and differs)."""
    from harmonize_bids.training.data import Batch
    from harmonize_bids.training.loop import TrainConfig, edge_band_weights, training_losses

    brain = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    brain[..., 2:10, 2:10] = True
    w = edge_band_weights(brain, 2, 4.0)
    assert float(w[0, 0, 5, 5]) == 1.0 and float(w[0, 0, 0, 0]) == 1.0  # deep, outside
    assert float(w[0, 0, 2, 5]) == 5.0 and float(w[0, 0, 3, 3]) == 5.0  # band (2 pixels)
    assert float(w[0, 0, 4, 5]) == 1.0

    model = tiny_model().eval()
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 2:14, 2:14] = 0.2 + torch.rand(2, 1, 12, 12, generator=g)
    batch = Batch(torch.rand(2, 3, 16, 16, generator=g), torch.rand(2, 3, 16, 16, generator=g),
                  target, torch.tensor([0, 1]), torch.tensor([0, 1]))
    t, noise = torch.tensor([50, 300]), torch.randn(2, 1, 16, 16, generator=g)
    sched = model.schedule()
    with torch.no_grad():
        plain = training_losses(model, sched, batch, t, noise, TrainConfig())["diffusion"]
        zero = training_losses(model, sched, batch, t, noise,
                               TrainConfig(edge_weight=0.0, edge_width=5))["diffusion"]
        ab = torch.as_tensor(sched.alphas_cumprod, dtype=torch.float32)[t][:, None, None, None]
        out = model(sched.q_sample(target, noise, ab), t, batch.target_site,
                    model.encode(batch.source), batch.source)
    assert torch.equal(plain, zero)
    # the weighted loss is the weighted mean of the per-pixel errors, by hand
    from harmonize_bids.diffusion.schedule import loss_weight
    v = sched.v_target(target, noise, ab)
    pix = edge_band_weights(target > 0, 2, 3.0)
    by_hand = (loss_weight(ab.flatten(), "v", 5.0) * ((pix * (out - v) ** 2).sum((1, 2, 3))
                                                      / pix.sum((1, 2, 3)))).mean()
    with torch.no_grad():
        edged = training_losses(model, sched, batch, t, noise,
                                TrainConfig(edge_weight=3.0, edge_width=2))["diffusion"]
    assert model.config.prediction == "v"
    assert torch.allclose(edged, by_hand, rtol=1e-5)
    assert not torch.allclose(edged, plain)


@pytest.mark.parametrize("source_input,residual_scale", [(False, 0.0), (True, 0.0), (True, 3.0)])
def test_output_consistency_term_compares_predictions_from_two_sites(source_input,
                                                                     residual_scale):
    """Zero when both sources are the same slice, positive otherwise, added to the loss
    with its weight, and its gradient reaches the condition encoder and the denoiser
    (with and without the detail path)."""
    from harmonize_bids.training.data import Batch
    from harmonize_bids.training.loop import TrainConfig, training_losses

    # eval: no bottleneck noise, so the same input gives the same condition
    model = tiny_model(source_input=source_input, residual_scale=residual_scale).eval()
    g = torch.Generator().manual_seed(1)
    source = torch.rand(2, 3, 16, 16, generator=g)
    target = torch.rand(2, 1, 16, 16, generator=g)
    sites = torch.tensor([0, 1])
    t, noise = torch.tensor([50, 300]), torch.randn(2, 1, 16, 16, generator=g)
    sched = model.schedule()
    same = Batch(source, source.clone(), target, sites, sites)
    on = TrainConfig(output_consistency_weight=3.0)
    same_loss = training_losses(model, sched, same, t, noise, on)["output_consistency"]
    assert float(same_loss.detach()) < 1e-12
    other = Batch(source, torch.rand(2, 3, 16, 16, generator=g), target, sites, sites)
    off = training_losses(model, sched, other, t, noise, TrainConfig())
    assert "output_consistency" not in off
    losses = training_losses(model, sched, other, t, noise, on)
    assert float(losses["output_consistency"].detach()) > 0
    assert torch.allclose(losses["loss"], off["loss"] + 3.0 * losses["output_consistency"])
    model.zero_grad()
    losses["output_consistency"].backward()
    for part in (model.denoiser, model.encoder):
        assert any(p.grad is not None and float(p.grad.abs().sum()) > 0
                   for p in part.parameters())


def test_bf16_only_where_the_cpu_has_it():
    from harmonize_bids.training.loop import fast_bf16_on_cpu, use_bf16

    assert not fast_bf16_on_cpu({"avx2", "fma", "avx512f"})
    assert fast_bf16_on_cpu({"avx2", "avx512_bf16"}) and fast_bf16_on_cpu({"amx_bf16"})
    assert use_bf16("cpu") == fast_bf16_on_cpu()
    assert not use_bf16("cuda") or torch.cuda.is_available()


def test_residual_bias_is_smooth_bounded_and_seeded():
    from harmonize_bids.training.data import residual_bias

    field = residual_bias((64, 48), np.random.default_rng(3), 0.05)
    assert field.shape == (64, 48) and field.dtype == np.float32
    log = np.log(field)
    assert abs(log.mean()) < 1e-3 and log.std() <= 0.05 + 1e-6
    assert np.abs(np.diff(log, axis=0)).max() < 0.01          # smooth
    assert np.array_equal(field, residual_bias((64, 48), np.random.default_rng(3), 0.05))
    assert np.all(residual_bias((8, 8), np.random.default_rng(0), 0.0) == 1.0)


def test_warm_start_widens_the_input_and_keeps_the_function():
    """A model given the source stack, started from one without it, computes the same thing."""
    import dataclasses

    from harmonize_bids.training.warm_start import warm_start, widen_input

    torch.manual_seed(0)
    old = tiny_model()
    # make every layer matter (ResBlocks start with zeroed output convolutions)
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.05 * torch.randn_like(p))
    new = HarmonizationModel(dataclasses.replace(old.config, source_input=True))
    widened = warm_start(new, old.state_dict())
    assert widened == ["denoiser.inp.weight"]
    old.eval(), new.eval()
    src = torch.randn(2, 3, 16, 24)
    x, t, s = torch.randn(2, 1, 16, 24), torch.tensor([5, 900]), torch.tensor([0, 1])
    cond = old.encode(src)
    torch.testing.assert_close(new(x, t, s, cond, src), old(x, t, s, cond))
    # the new model does read the source once its new weights move
    with torch.no_grad():
        new.denoiser.inp.weight[:, -3:] += 0.1
    assert not torch.allclose(new(x, t, s, cond, src), old(x, t, s, cond))
    with pytest.raises(ValueError, match="pass source"):
        new(x, t, s, cond)
    with pytest.raises(ValueError, match="cannot widen"):
        widen_input(torch.zeros(4, 5, 3, 3), torch.zeros(4, 3, 3, 3))
    with pytest.raises(ValueError, match="do not fit"):
        warm_start(new, {k: v for k, v in old.state_dict().items() if "site" not in k})


def test_site_donors_same_name_else_the_most_alike_tissue_intensities():
    from harmonize_bids.training.warm_start import site_donors

    known = {"bright_gm": [0.1, 0.5, 0.8, 1.0, 1.2], "dark_gm": [0.1, 0.3, 0.6, 1.0, 1.2]}
    sites = ["bright_gm", "dark_gm"]
    # compared in white-matter units: a scan at twice the scale with dark GM is "dark_gm"
    new = {"x": [0.2, 0.62, 1.2, 2.0, 2.4], "y": [0.1, 0.45, 0.75, 1.0, 1.1],
           "dark_gm": [0.1, 0.5, 0.8, 1.0, 1.2], "z": None}
    assert site_donors(known, new, sites) == {"x": "dark_gm", "y": "bright_gm",
                                              "dark_gm": "dark_gm", "z": "bright_gm"}
    # landmarks of different schemes: compared by their tissue medians
    quartiles = [0.2, 0.5, 0.6, 0.7, 0.9, 1.2, 1.3, 1.9, 2.0, 2.1, 2.4]  # medians .6 1.2 2
    assert site_donors(known, {"x": quartiles}, sites) == {"x": "dark_gm"}
    # an earlier model without landmarks: every unknown site starts from its first site
    assert site_donors({}, {"x": [0.2, 0.62, 1.2, 2.0, 2.4]}, sites) == {"x": "bright_gm"}
    with pytest.raises(ValueError, match="no sites"):
        site_donors({}, {"x": None}, [])


def test_a_model_for_new_sites_starts_from_its_donors_rows():
    """with_sites: the new model computes for each site what the donor site did."""
    import dataclasses

    from harmonize_bids.training.warm_start import with_sites

    torch.manual_seed(0)
    old = tiny_model()  # sites a, b
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.05 * torch.randn_like(p))
    per_site = old.per_site_tensors()
    assert per_site == ["site_embedding.weight", "site_classifier.net.6.weight",
                        "site_classifier.net.6.bias"]
    new = HarmonizationModel(dataclasses.replace(old.config, sites=("p", "a", "q")))
    new.load_state_dict(with_sites(old.state_dict(), old.config.sites,
                                   {"p": "b", "a": "a", "q": "b"}, per_site))
    old.eval(), new.eval()
    src = torch.randn(3, 3, 16, 24)
    x, t = torch.randn(3, 1, 16, 24), torch.tensor([5, 400, 900])
    cond = old.encode(src)
    torch.testing.assert_close(new(x, t, torch.tensor([0, 1, 2]), cond),
                               old(x, t, torch.tensor([1, 0, 1]), cond))
    logits_old, logits_new = old.site_classifier(cond), new.site_classifier(cond)
    torch.testing.assert_close(logits_new, logits_old[:, [1, 0, 1]])


def test_a_fine_tune_holds_out_only_what_the_earlier_model_never_saw():
    from harmonize_bids.training.warm_start import still_unseen

    earlier = ["IXI146", "IXI148", "IXI150", "IXI159"]
    assert still_unseen(earlier, ["IXI014", "IXI015"]) == earlier
    assert still_unseen(earlier, ["IXI148", "IXI014"]) == ["IXI146", "IXI150", "IXI159"]
    # an earlier model that holds nothing out leaves nothing held out
    assert still_unseen([], ["IXI014"]) == []
    assert still_unseen(None, []) == []


def test_thick_slice_blur_smooths_one_axis_and_keeps_the_stack_shape():
    from harmonize_bids.training.data import PairedSlices, thick_slice_blur

    rng = np.random.default_rng(0)
    vol = rng.random((20, 20, 12)).astype(np.float32)
    box = (slice(2, 18), slice(4, 20))
    seen = set()
    for seed in range(12):
        out = thick_slice_blur(vol, 5, 1, box, np.random.default_rng(seed))
        raw = vol[box[0], box[1], 4:7]
        assert out.shape == raw.shape
        # the noise gets smoother: a blurred axis has smaller neighbour differences
        diffs = [np.abs(np.diff(out, axis=a)).mean() / np.abs(np.diff(raw, axis=a)).mean()
                 for a in range(3)]
        seen.add(int(np.argmin(diffs)))
        assert min(diffs) < 0.8
        assert abs(out.mean() - raw.mean()) < 0.05
    assert seen == {0, 1, 2}  # every axis gets blurred by some seed
    # slice_blur=0 leaves sources as they were; 1 blurs every source, not the target
    vols = {"a": {"s": vol, "t": vol[::-1].copy()}}
    plain = PairedSlices(vols, ["s", "t"], crop=(8, 8), slice_blur=0.0, augment=0.0,
                         residual_bias=0.0).sample(6, np.random.default_rng(1))
    blurred = PairedSlices(vols, ["s", "t"], crop=(8, 8), slice_blur=1.0, augment=0.0,
                           residual_bias=0.0).sample(6, np.random.default_rng(1))
    assert not torch.allclose(plain.source, blurred.source)
    # targets are never blurred: each is an exact crop of its site's volume
    batch = PairedSlices(vols, ["s", "t"], crop=(8, 8), slice_blur=1.0, augment=0.0,
                         residual_bias=0.0).sample(4, np.random.default_rng(2))
    for i in range(4):
        site = ["s", "t"][int(batch.target_site[i])]
        assert any(np.allclose(batch.target[i, 0].numpy(), vols["a"][site][x:x + 8, y:y + 8, z])
                   for x in range(13) for y in range(13) for z in range(1, 11))


def test_added_noise_is_rician_inside_the_brain_only_and_seeded():
    from harmonize_bids.training.data import added_noise

    x = np.zeros((3, 64, 64), np.float32)
    x[:, 8:56, 8:56] = 1.0
    noisy = [added_noise(x, np.random.default_rng(seed), 0.2) for seed in range(6)]
    assert np.array_equal(noisy[0], added_noise(x, np.random.default_rng(0), 0.2))
    for y in noisy:
        assert y.shape == x.shape and y.dtype == np.float32
        assert np.all(y[x == 0] == 0)  # the background stays zero
        assert np.all(y >= 0)  # a magnitude image
        assert y[x > 0].std() < 0.2 * 1.1  # sigma ~ U(0, 0.2) at signal 1
    assert max(y[x > 0].std() for y in noisy) > 0.05  # some seeds add real noise
    assert np.array_equal(added_noise(x, np.random.default_rng(0), 0.0), x)


def test_source_noise_reaches_sources_only():
    from harmonize_bids.training.data import PairedSlices

    flat = np.zeros((24, 24, 8), np.float32)
    flat[2:22, 2:22] = 0.5
    vols = {"a": {"s": flat, "t": flat.copy()}}
    kw = dict(crop=(16, 16), slice_blur=0.0, augment=0.0, residual_bias=0.0)
    quiet = PairedSlices(vols, ["s", "t"], **kw).sample(8, np.random.default_rng(0))
    loud = PairedSlices(vols, ["s", "t"], source_noise=1.0, noise_sigma=0.2,
                        **kw).sample(8, np.random.default_rng(0))
    inside = quiet.source > 0
    assert quiet.source[inside].std() == 0
    assert loud.source[inside].std() > 0.01 and loud.source_alt[inside].std() > 0.01
    assert loud.target[loud.target > 0].std() == 0  # targets are never made noisier


def test_bundle_model_keeps_the_tensors_and_records_what_it_replaced(tmp_path):
    import importlib.util
    from pathlib import Path

    from harmonize_bids.diffusion.checkpoint import file_sha256

    spec = importlib.util.spec_from_file_location(
        "bundle_model", Path(__file__).resolve().parents[1] / "scripts" / "bundle_model.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    old, new = tiny_model(), tiny_model()
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.01)
    dest = save_model(old, tmp_path / "bundled.safetensors", card={"name": "old"})
    old_sha = file_sha256(dest)
    trained = save_model(new, tmp_path / "trained.safetensors", card={"name": "new"})
    bare = save_model(new, tmp_path / "bare.safetensors")
    bare.with_suffix(".json").unlink()
    with pytest.raises(SystemExit, match="no model card"):
        script.bundle(bare, "undocumented", dest)
    assert file_sha256(dest) == old_sha  # nothing half-written
    script.bundle(trained, "fewer leaks", dest)
    model, card = load_model(dest)
    for a, b in zip(model.state_dict().values(), new.state_dict().values()):
        assert torch.equal(a, b)
    assert card["name"] == "new" and card["bundled"]["note"] == "fewer leaks"
    assert card["bundled"]["from"]["sha256"] == file_sha256(trained)
    assert card["bundled"]["replaces"]["sha256"] == old_sha
    assert card["weights"] == dest.name and card["sha256"] == file_sha256(dest)


def test_harmonize_volume_levels_its_slices_unless_told_not_to():
    """The volume's slices come from separate chains; by default their level jumps are
    removed against the source (postprocess.level_slices), and that is all that differs."""
    from harmonize_bids.diffusion.volume import harmonize_volume
    from harmonize_bids.postprocess import level_slices

    model = tiny_model().eval()
    rng = np.random.default_rng(0)
    volume = (0.4 + 0.4 * rng.random((20, 20, 9))).astype(np.float32)
    mask = np.zeros(volume.shape, bool)
    mask[3:-3, 3:-3, 1:-1] = True
    sampler = SamplerSettings(steps=2, samples=1)
    raw = harmonize_volume(model, volume, mask, 1, sampler, seed=3, level=False)
    levelled = harmonize_volume(model, volume, mask, 1, sampler, seed=3)
    assert not np.allclose(raw, levelled)
    np.testing.assert_allclose(levelled, level_slices(raw, np.where(mask, volume, 0), mask),
                               atol=1e-6)
    assert not levelled[~mask].any()


# ------------------------------------------------------------ background fill
def _ball(shape=(20, 20, 12), radius=7.0):
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    return np.sqrt(((grid - centre) ** 2).sum(0)) <= radius


def test_fill_background_continues_the_brain_and_keeps_it():
    from scipy import ndimage as ndi

    from harmonize_bids.utils.background import fill_background, nearest_brain

    brain = _ball()
    vol = np.where(brain, np.random.default_rng(0).uniform(0.5, 1.0, brain.shape), 0)
    filled = fill_background(vol, brain, 2)
    assert np.array_equal(filled[brain], vol[brain].astype(np.float32))  # the brain stays
    distance = ndi.distance_transform_edt(~brain)
    assert (filled[~brain & (distance <= 2)] >= 0.5).all()  # near background: brain values
    assert (filled[~brain & (distance > 2)] == 0).all()  # farther: zero
    # the precomputed map gives the same fill
    assert np.array_equal(fill_background(vol, brain, 2, nearest_brain(brain, 2)), filled)
    assert np.array_equal(fill_background(vol, brain, 0), np.where(brain, vol, 0).astype(np.float32))
    with pytest.raises(ValueError):
        fill_background(vol, brain, -1)


def test_model_config_checks_and_stores_fill_background():
    with pytest.raises(ValueError):
        ModelConfig(sites=("a",), fill_background=-1)
    cfg = ModelConfig(sites=("a",), fill_background=3)
    assert ModelConfig.from_dict(cfg.to_dict()).fill_background == 3
    old = cfg.to_dict()
    del old["fill_background"]  # a model saved before the option: zero background
    assert ModelConfig.from_dict(old).fill_background == 0


def test_paired_slices_fill_the_background_but_sample_only_brain_slices():
    from harmonize_bids.training.data import PairedSlices

    brain = _ball()
    vols = {"x": {"s": np.where(brain, 0.8, 0).astype(np.float32),
                  "t": np.where(brain, 0.6, 0).astype(np.float32)}}
    zero = PairedSlices(vols, ["s", "t"], crop=(20, 20), augment=0.0, residual_bias=0.0,
                        slice_blur=0.0)
    filled = PairedSlices(vols, ["s", "t"], crop=(20, 20), augment=0.0, residual_bias=0.0,
                          slice_blur=0.0, fill_background=3)
    assert np.array_equal(zero.slices["x"], filled.slices["x"])
    assert vols["x"]["s"][0, 0, 6] == 0  # the caller's volumes are not changed
    b0, b1 = zero.sample(4, np.random.default_rng(0)), filled.sample(4, np.random.default_rng(0))
    # same draws; with the fill, more of each crop holds the (constant) site value
    assert (b1.target > 0).sum() > (b0.target > 0).sum()
    assert set(np.unique(b1.target.numpy())) <= {0.0, np.float32(0.6), np.float32(0.8)}


def test_paired_slices_with_a_crop_beyond_the_slice_give_whole_slices_padded_like_inference():
    from harmonize_bids.diffusion.sampler import _pad_to
    from harmonize_bids.training.data import PairedSlices

    rng = np.random.default_rng(3)
    vols = {"x": {s: rng.uniform(0.1, 1.0, (14, 18, 6)).astype(np.float32) for s in "st"}}
    data = PairedSlices(vols, ["s", "t"], crop=(16, 24), augment=0.0, residual_bias=0.0,
                        slice_blur=0.0)
    batch = data.sample(6, np.random.default_rng(0))
    assert batch.target.shape == (6, 1, 16, 24)
    for target, site in zip(batch.target, batch.target_site):
        volume = vols["x"]["st"[int(site)]]
        z = [z for z in range(6) if np.array_equal(volume[..., z], target[0, :14, :18])]
        assert len(z) == 1, "a whole slice of the volume, not a part of it"
        padded, _ = _pad_to(torch.from_numpy(volume[None, None, :, :, z[0]]), 8)
        assert torch.equal(target[None], padded)  # zeros below and right, as at inference


def test_region_group_norm_takes_its_statistics_inside_the_region():
    from harmonize_bids.diffusion.unet import RegionGroupNorm

    torch.manual_seed(0)
    norm = RegionGroupNorm(2, 4)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 4, 6, 7)
    region = torch.zeros(2, 1, 6, 7, dtype=torch.bool)
    region[0, :, 1:4, 2:6] = True  # sample 1: empty region -> statistics over everything
    assert torch.allclose(norm(x), torch.nn.functional.group_norm(
        x, 2, norm.weight, norm.bias, norm.eps))
    assert torch.allclose(norm(x, torch.ones_like(region)), norm(x), atol=1e-6)
    out = norm(x, region)
    assert torch.allclose(out[1], norm(x)[1], atol=1e-6)
    for chans in ([0, 1], [2, 3]):
        inside = x[0, chans][:, 1:4, 2:6]
        mean, var = inside.mean(), inside.var(unbiased=False)
        expected = (x[0, chans] - mean) / torch.sqrt(var + norm.eps)
        expected = expected * norm.weight[chans, None, None] + norm.bias[chans, None, None]
        assert torch.allclose(out[0, chans], expected, atol=1e-5)  # every pixel, same stats


@pytest.mark.parametrize("norm_in_brain", [True, False])
def test_normalizing_in_the_brain_makes_the_output_independent_of_the_background(
        norm_in_brain):
    model = tiny_model(source_input=True, norm_in_brain=norm_in_brain).eval()
    rng = np.random.default_rng(0)
    brain = torch.from_numpy(rng.uniform(0.2, 1.0, (3, 8, 8)).astype(np.float32))
    x_brain = torch.from_numpy(rng.standard_normal((1, 8, 8)).astype(np.float32))

    def predict(size: int) -> torch.Tensor:  # the same brain amid more or less background
        at = slice((size - 8) // 2, (size - 8) // 2 + 8)
        source, x_t = torch.zeros(1, 3, size, size), torch.zeros(1, 1, size, size)
        source[0, :, at, at], x_t[0, :, at, at] = brain, x_brain
        with torch.no_grad():
            out = model(x_t, torch.tensor([500]), torch.tensor([0]), model.encode(source),
                        source)
        return out[0, 0, at, at]

    small, large = predict(64), predict(112)  # brain beyond the receptive field's reach
    assert torch.allclose(small, large, atol=1e-5) == norm_in_brain


def test_norm_in_brain_needs_a_zero_background_and_keeps_the_weights_layout():
    with pytest.raises(ValueError, match="zero background"):
        ModelConfig(sites=("a",), norm_in_brain=True, fill_background=2)
    plain, in_brain = tiny_model(), tiny_model(norm_in_brain=True)
    assert plain.state_dict().keys() == in_brain.state_dict().keys()
    old = ModelConfig(sites=("a",)).to_dict()
    del old["norm_in_brain"]  # a model saved before the option
    assert ModelConfig.from_dict(old).norm_in_brain is False


def test_harmonize_volume_feeds_the_filled_background_and_masks_the_output():
    from harmonize_bids.diffusion.volume import harmonize_volume

    brain = _ball((16, 16, 6), 5.0)
    vol = np.where(brain, np.random.default_rng(1).uniform(0.3, 1.0, brain.shape), 0)
    settings = SamplerSettings(steps=2)
    outs = {}
    for width in (0, 3):
        model = tiny_model(fill_background=width).eval()
        outs[width] = harmonize_volume(model, vol, brain, 0, settings, seed=0, level=False)
        assert (outs[width][~brain] == 0).all()
    # same weights (tiny_model seeds them), different input outside the brain: the
    # brain's output changes near its edge
    assert not np.allclose(outs[0][brain], outs[3][brain])


# ------------------------------------------------------------------ residual diffusion
class _ResidualOracle(HarmonizationModel):
    """A residual model predicting the exact v of a known clean image's residual."""

    clean: torch.Tensor

    def forward(self, x_t, t, site, cond, source=None):
        ab = torch.as_tensor(self.schedule().alphas_cumprod, dtype=x_t.dtype)[t][:, None, None, None]
        residual = self.diffused(self.clean, source)
        eps = (x_t - ab.sqrt() * residual) / (1 - ab).sqrt()
        return NoiseSchedule.v_target(residual, eps, ab)


@pytest.mark.parametrize("strength", [1.0, 0.5])
def test_a_residual_model_samples_the_image_its_residual_stands_for(strength):
    model = _ResidualOracle(ModelConfig(sites=("a",), residual_scale=3.0, **TINY))
    model.clean = torch.rand(2, 1, 16, 16)
    source = torch.rand(2, 3, 16, 16)
    out = harmonize_slices(model, source, 0, SamplerSettings(steps=4, strength=strength),
                           generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, model.clean, atol=1e-4)


def test_a_residual_model_that_predicts_no_change_returns_the_source():
    """x0-prediction of a zero residual: every step's clean estimate is the centre slice."""
    model = tiny_model(prediction="x0", residual_scale=2.0, context_slices=1)
    for p in model.denoiser.parameters():
        torch.nn.init.zeros_(p)
    source = torch.rand(3, 3, 16, 16)
    out = harmonize_slices(model, source, 1, SamplerSettings(steps=3),
                           generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, source[:, 1:2], atol=1e-6)
    # the same weights diffusing the image itself return zeros instead
    image_model = tiny_model(prediction="x0", context_slices=1)
    image_model.load_state_dict(model.state_dict())
    assert float(harmonize_slices(image_model, source, 1, SamplerSettings(steps=3),
                                  generator=torch.Generator().manual_seed(0)).abs().max()) < 1e-6


def test_residual_scale_is_checked_stored_and_defaults_to_the_image():
    with pytest.raises(ValueError, match="residual_scale"):
        ModelConfig(sites=("a",), residual_scale=-1.0)
    config = ModelConfig(sites=("a",), residual_scale=3.0)
    assert ModelConfig.from_dict(config.to_dict()) == config
    old = ModelConfig(sites=("a",)).to_dict()
    del old["residual_scale"]  # a model saved before the option (the bundled one)
    assert ModelConfig.from_dict(old).residual_scale == 0.0
    model = tiny_model(residual_scale=3.0)
    image, source = torch.rand(2, 1, 8, 8), torch.rand(2, 3, 8, 8)
    diffused = model.diffused(image, source)
    assert torch.allclose(diffused, 3.0 * (image - source[:, 1:2]))
    assert torch.allclose(model.image(diffused, source), image, atol=1e-6)


def test_protocol_copies_of_a_real_image_become_sites_named_after_their_protocols():
    """``add_protocol_copies`` adds the first image re-rendered under each named protocol
    (bias-free, brain-normalized), with each protocol's grey/white contrast; a name already there is refused; ``add_shifted_copies`` draws
    its random protocols and renders in the same order as before it was built on it."""
    import dataclasses

    from harmonize_bids.simulate.protocols import PROTOCOLS, random_protocol
    from harmonize_bids.simulate.render import render
    from harmonize_bids.simulate.shift import shift_real_image
    from harmonize_bids.training.data import (add_protocol_copies, add_shifted_copies,
                                              normalize_brain)
    from toys import toy_labels

    anat = toy_labels((24, 24, 16))
    img, mask_img, dseg = render(anat, PROTOCOLS["philips3ttfe"], np.random.default_rng(0),
                                 spacing_mm=2.0)
    mask = np.asarray(mask_img.dataobj) > 0
    real = normalize_brain(np.asarray(img.dataobj, np.float32), mask)
    tissue = np.asarray(dseg.dataobj)
    gm, wm = (tissue == 2) & mask, (tissue == 3) & mask

    volumes, masks = {"a": {"ixi-hh": real.copy()}}, {"a": mask}
    named = [PROTOCOLS["siemens3tmprage"], PROTOCOLS["ge15tspgr"]]
    add_protocol_copies(volumes, masks, named, np.random.default_rng(3))
    assert list(volumes["a"]) == ["ixi-hh", "siemens3tmprage", "ge15tspgr"]
    np.testing.assert_array_equal(volumes["a"]["ixi-hh"], real)
    gm_over_wm = {s: np.median(v[gm]) / np.median(v[wm]) for s, v in volumes["a"].items()}
    # GM over WM of the protocols' tissue signals: philips3ttfe 0.68 < siemens3tmprage
    # 0.73 < ge15tspgr 0.80 (partial volume of the toy head at 2 mm compresses them)
    assert gm_over_wm["ixi-hh"] < gm_over_wm["siemens3tmprage"] < gm_over_wm["ge15tspgr"]
    for v in volumes["a"].values():
        assert np.percentile(v[mask], 99) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="already has an image of site 'ge15tspgr'"):
        add_protocol_copies(volumes, masks, [PROTOCOLS["ge15tspgr"]], np.random.default_rng(3))

    shifted = {"a": {"ixi-hh": real.copy()}}
    add_shifted_copies(shifted, masks, 2, np.random.default_rng(7))
    rng = np.random.default_rng(7)  # the loop it replaced
    for k in range(2):
        protocol = dataclasses.replace(random_protocol(rng, f"shifted{k}"), bias_strength=0.0)
        expected = shift_real_image(real, mask, protocol, rng, spacing_mm=(2.0, 2.0, 2.0))
        np.testing.assert_array_equal(shifted["a"][f"shifted{k}"],
                                      normalize_brain(expected.astype(np.float32), mask))
