#!/usr/bin/env python
"""Sampler settings and detail transfer, side by side, on a central slab.

A quick diagnostic (minutes, not the hour of ``quality_vs_peers.py``): the
central ``--slab`` axial slices of the held-out anatomies of the quality
benchmark's test set (N4-corrected, unseen protocols included), every source
sent to every ``--targets`` site, with each variant of
:class:`~harmonize_bids.diffusion.schedule.SamplerSettings` and, optionally,
:func:`harmonize_bids.postprocess.transfer_detail` on the output.  All variants
of one source share the initial noise (chain j of every variant starts from noise j).  Prints SSIM / PSNR / tissue Dice per
pair and their means, and the site predictability of each variant's slabs
(:func:`harmonize_bids.metrics.site_predictability`: can the source site be told
from the output's histogram? with ``--n-test 4`` each source has 4 slabs per
target), and writes them to ``--results``.

    python benchmarks/sampler_variants.py --variant S10=10,1,0 S5x2=5,1,0,2 \
        "S10+detail=10,1,0,1,1.0" --n-test 2
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from quality_vs_peers import held_out_label_maps, log, test_dataset  # noqa: E402
from train_simulated import ras_volumes  # noqa: E402

DEFAULT_VARIANTS = ["S5=5,1,0", "S10=10,1,0", "S25=25,1,0", "S10-strength0.5=10,0.5,0",
                    "S10-stop0.35=10,1,0.35", "S5x2=5,1,0,2", "S5x4=5,1,0,4",
                    "S10+detail1=10,1,0,1,1.0"]


def parse_variant(text: str) -> tuple[str, tuple[int, float, float, int], float | None]:
    """``NAME=steps,strength,stop[,samples[,detail_sigma_vox]]`` -> (name, key, sigma).

    >>> parse_variant("a=10,0.5,0,2,1.0")
    ('a', (10, 0.5, 0.0, 2), 1.0)
    >>> parse_variant("b=5,1,0")
    ('b', (5, 1.0, 0.0, 1), None)
    """
    name, _, spec = text.partition("=")
    parts = spec.split(",")
    if not name or not 3 <= len(parts) <= 5:
        raise argparse.ArgumentTypeError(
            f"expected NAME=steps,strength,stop[,samples[,sigma]]: {text!r}")
    key = (int(parts[0]), float(parts[1]), float(parts[2]),
           int(parts[3]) if len(parts) > 3 else 1)
    return name, key, (float(parts[4]) if len(parts) == 5 else None)


def main() -> None:
    import torch

    from harmonize_bids import metrics
    from harmonize_bids.diffusion.checkpoint import bundled_model, file_sha256, load_model
    from harmonize_bids.diffusion.sampler import harmonize_slices
    from harmonize_bids.diffusion.schedule import SamplerSettings
    from harmonize_bids.diffusion.volume import slice_stacks
    from harmonize_bids.evaluation import read_simulated_dataset
    from harmonize_bids.postprocess import transfer_detail
    from harmonize_bids.simulate.protocols import PROTOCOLS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled model")
    parser.add_argument("--variant", type=parse_variant, nargs="+",
                        default=[parse_variant(v) for v in DEFAULT_VARIANTS],
                        help="NAME=steps,strength,stop[,detail_sigma_vox]")
    parser.add_argument("--targets", nargs="+", default=["siemens3tmprage", "ge15tspgr"])
    parser.add_argument("--n-test", type=int, default=2, help="held-out anatomies")
    parser.add_argument("--slab", type=int, default=16, help="central axial slices")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/hb_quality"),
                        help="where the quality benchmark's test set is (made if absent)")
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).parent / "results" / "sampler_variants.md")
    args = parser.parse_args()
    from harmonize_bids.utils.cpu import configure_cpu
    configure_cpu(args.threads)
    model_file = args.model or bundled_model()
    model, card = load_model(model_file)
    model.eval()
    held_out = held_out_label_maps(card, 4)
    ds = test_dataset([s for s in model.config.sites if s in PROTOCOLS], held_out,
                      args.out_dir, args.threads)
    vols, masks = ras_volumes(ds)
    dseg = {i.anatomy: np.asarray(nb.as_closest_canonical(nb.load(i.dseg)).dataobj)
            for i in read_simulated_dataset(ds)}
    chains = max(key[3] for _, key, _ in args.variant)
    noise = torch.randn((chains, 1, 256, 256), generator=torch.Generator().manual_seed(0))
    mult = model.config.multiple
    names = ["none"] + [name for name, _, _ in args.variant]
    scores: dict[tuple[str, str], list[dict]] = {}
    #: (variant, target) -> [(slab, mask, source site)], for site predictability
    outputs: dict[tuple[str, str], list] = {}
    t0 = time.monotonic()
    for anatomy in sorted(vols)[:args.n_test]:
        mask = masks[anatomy]
        zs = np.nonzero(mask.sum((0, 1)) > 0)[0]
        slab = np.arange(zs[len(zs) // 2] - args.slab // 2, zs[len(zs) // 2] + args.slab // 2)
        m3, tissues = mask[:, :, slab], dseg[anatomy][:, :, slab]
        for target in args.targets:
            truth = vols[anatomy][target][:, :, slab]
            for site in sorted(vols[anatomy]):
                if site == target:
                    continue
                src = vols[anatomy][site]
                stacks = torch.from_numpy(slice_stacks(src, model.config.context_slices)[slab])
                h, w = stacks.shape[-2:]
                nz = noise[..., :h + (-h) % mult, :w + (-w) % mult]
                row = {"none": metrics.compare(src[:, :, slab], truth, m3, tissues)}
                outputs.setdefault(("none", target), []).append((src[:, :, slab], m3, site))
                cache: dict[tuple, np.ndarray] = {}
                for name, key, sigma in args.variant:
                    if key not in cache:
                        sampler = SamplerSettings(*key[:3], samples=key[3])
                        out = harmonize_slices(model, stacks, model.config.site_index(target),
                                               sampler, noise=nz[:sampler.samples])
                        cache[key] = np.where(
                            m3, np.clip(np.moveaxis(out[:, 0].numpy(), 0, -1), 0, None), 0)
                    vol = cache[key]
                    if sigma:
                        vol = transfer_detail(vol, src[:, :, slab], m3, sigma_vox=sigma)
                    row[name] = metrics.compare(vol, truth, m3, tissues)
                    outputs.setdefault((name, target), []).append((vol, m3, site))
                scores.setdefault((site, target), []).append(row)
        log(f"{anatomy} done ({time.monotonic() - t0:.0f} s)")
    head = "| source → target | " + " | ".join(names) + " |"
    lines = [head, "|" + "---|" * (len(names) + 1)]
    means = {n: [] for n in names}
    for (site, target), rows in sorted(scores.items()):
        cells = []
        for n in names:
            v = [float(np.mean([r[n][k] for r in rows])) for k in ("ssim", "psnr", "tissue_dice")]
            means[n].append(v)
            cells.append(f"{v[0]:.3f} / {v[1]:.1f} / {v[2]:.3f}")
        lines.append(f"| {site} → {target} | " + " | ".join(cells) + " |")
    lines.append("| **mean** | " + " | ".join(
        "{:.3f} / {:.2f} / {:.3f}".format(*np.mean(means[n], 0)) for n in names) + " |")
    if args.n_test >= 2:  # the classifier needs two slabs per source site
        pred = {n: [metrics.site_predictability(*zip(*outputs[n, t]))["accuracy"]
                    for t in args.targets] for n in names}
        lines += ["", "Site predictability (source site told from the slab's histogram; "
                  f"chance {1 / len({s for _, _, s in outputs['none', args.targets[0]]}):.2f}),"
                  f" per target {args.targets} and mean:", "",
                  "| " + " | ".join(names) + " |", "|" + "---|" * len(names),
                  "| " + " | ".join(" / ".join(f"{a:.2f}" for a in pred[n]) +
                                    f" (**{np.mean(pred[n]):.2f}**)" for n in names) + " |"]
    spec = ", ".join(f"{n} = steps {k[0]}, strength {k[1]:g}, stop {k[2]:g}, chains {k[3]}"
                     + (f", detail σ {s:g} vox" if s else "") for n, k, s in args.variant)
    text = "\n".join([
        "# Sampler settings and detail transfer on a central slab", "",
        f"- command: `python benchmarks/sampler_variants.py {' '.join(sys.argv[1:])}`",
        f"- model: `{model_file.name}` (sha256 {file_sha256(model_file)[:12]})",
        f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{args.threads} torch threads; {(time.monotonic() - t0) / 60:.0f} min",
        f"- data: the central {args.slab} axial slices of held-out anatomies "
        f"{held_out[:args.n_test]} (quality benchmark's N4-corrected test set)",
        f"- variants: {spec}", "- cells: SSIM / PSNR (dB) / tissue Dice against the true "
        "target image", "", *lines, ""])
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)


if __name__ == "__main__":
    main()
