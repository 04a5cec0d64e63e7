#!/usr/bin/env python
"""The target site's own scans through each method, and what that costs them.

The participant level keeps the target site's own images unchanged (ComBat's
reference batch); ``--harmonize-target-site`` sends them through the model too.  This
writes, for the test set of a ``quality_vs_peers.py --out-dir``, the target site's own
scans as each method leaves them (folders ``{method}_self_{target}``):

- ``ours_self``, ``ours_self_vigintiles``, ``ours_self_vigintiles+subject``: the
  bundled model to their own site (the default sampler, levelled) as sampled, with the
  default tissue match and with the subject-kept one (``--keep-subject-intensities``;
  the dataset's site statistics, as ``quality_vs_peers.py --keep-subject``);
- ``ants_self``, ``nyul_self``: the peers, with the references ``quality_vs_peers.py``
  gives a source of the same anatomy (another anatomy's scan at the target site; Nyúl:
  all of them);

and scores each against the scan's rescan (same site, other noise: the ceiling is the
scan as acquired) and against the scan itself, with tissue Dice against the truth's
labels.  ``target_site_likeness.py --own-scans-through`` and
``tissue_fraction_bias.py --own-scans-through`` then ask what a pooled study sees.

    python benchmarks/target_site_scans.py --out-dir /tmp/hb_q22 \\
        --targets siemens3tmprage ge15tspgr --results benchmarks/results/target_site_scans.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality_vs_peers as qvp  # noqa: E402
from results_file import write_results  # noqa: E402
from target_site_likeness import own_scans  # noqa: E402

#: our variants: folder name -> landmark scheme (``quality_vs_peers.matched``)
OURS = {"ours_self": None, "ours_self_vigintiles": "vigintiles",
        "ours_self_vigintiles+subject": "vigintiles" + qvp.SUBJECT}
#: peers: folder name -> name in ``quality_vs_peers.peer_methods``
PEERS = {"ants_self": "ANTs histogram matching", "nyul_self": "Nyul (intensity-normalization)"}


def write_ours(out_dir: Path, targets: list[str], model) -> None:
    """The model's outputs of each target site's own scans, to that site."""
    from harmonize_bids.derivatives import init_derivatives
    from harmonize_bids.diffusion.schedule import SamplerSettings
    from harmonize_bids.diffusion.volume import harmonize_volume
    from harmonize_bids.evaluation import read_simulated_dataset

    test_ds = out_dir / "test_n4"
    images = read_simulated_dataset(test_ds)
    vols, masks = qvp.ras_volumes(test_ds)
    statistics = qvp.dataset_statistics(images, vols, masks, "vigintiles")
    sampler = SamplerSettings()
    for target in targets:
        dirs = {scheme: out_dir / f"{name}_{target}" for name, scheme in OURS.items()}
        for deriv in dirs.values():
            init_derivatives(deriv, test_ds)
        for img in (i for i in images if i.site == target):
            source, mask = vols[img.anatomy][img.site], masks[img.anatomy]
            out = harmonize_volume(model, source, mask, model.config.site_index(target),
                                   sampler, seed=0, level=True)
            for scheme, deriv in dirs.items():
                final = qvp.matched(out, mask, model, target, scheme, source, img.site,
                                    statistics)
                qvp.save_harmonized(deriv, img, qvp.to_native(final, img.t1w),
                                    {"TargetSite": target, "SourceSite": img.site,
                                     **sampler.metadata()})
            qvp.log(f"ours: {img.participant} ({target})")


def write_peers(out_dir: Path, targets: list[str]) -> None:
    """The peers' outputs of each target site's own scans."""
    from harmonize_bids.derivatives import init_derivatives
    from harmonize_bids.evaluation import read_simulated_dataset

    test_ds = out_dir / "test_n4"
    images = read_simulated_dataset(test_ds)
    methods = qvp.peer_methods()
    for target in targets:
        for folder, name in PEERS.items():
            deriv = out_dir / f"{folder}_{target}"
            init_derivatives(deriv, test_ds)
            for img in (i for i in images if i.site == target):
                refs = qvp.peer_references(images, img, target, every=name.startswith("Nyul"))
                result = methods[name](qvp.load(img.t1w), qvp.load(img.brain_mask) > 0, refs)
                qvp.save_harmonized(deriv, img, result,
                                    {"TargetSite": target, "SourceSite": img.site})
            qvp.log(f"{folder} ({target})")


def cost_rows(out_dir: Path, target: str, through: str | None) -> dict[str, float]:
    """Mean scores of the target site's own scans as ``through`` left them (None: as
    acquired) against their rescans and against the scans themselves."""
    from harmonize_bids.evaluation import read_simulated_dataset
    from harmonize_bids.metrics import compare

    records = {i.anatomy: i for i in read_simulated_dataset(out_dir / "test_n4")
               if i.site == target}
    rescan, scan = [], []
    for anatomy, path in sorted(own_scans(out_dir, target, through).items()):
        rec = records[anatomy]
        mask, labels = qvp.load(rec.brain_mask) > 0, qvp.load(rec.dseg)
        image = qvp.load(path)
        rescan.append(compare(image, qvp.load(rec.rescan), mask))
        scan.append(compare(image, qvp.load(rec.t1w), mask, labels))
    return {"n": len(scan),
            **{f"rescan_{k}": np.mean([r[k] for r in rescan]) for k in ("ssim", "psnr")},
            **{f"scan_{k}": np.mean([r[k] for r in scan]) for k in ("ssim", "psnr")},
            "dice": np.mean([r["tissue_dice"] for r in scan])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="a quality_vs_peers.py --out-dir (its test_n4/ is used)")
    parser.add_argument("--targets", nargs="+", default=["siemens3tmprage", "ge15tspgr"])
    parser.add_argument("--score-only", action="store_true",
                        help="score the folders already written instead of writing them")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    from harmonize_bids.diffusion.checkpoint import bundled_model, file_sha256, load_model
    from harmonize_bids.utils.cpu import configure_cpu

    configure_cpu(args.threads)
    t0 = time.monotonic()
    model_file = bundled_model()
    if not args.score_only:
        write_peers(args.out_dir, args.targets)
        write_ours(args.out_dir, args.targets, load_model(model_file)[0])
    lines = ["| target | own scans | n | vs rescan SSIM | vs rescan PSNR (dB) | "
             "vs the scan SSIM | vs the scan PSNR (dB) | tissue Dice |",
             "|---|---|---|---|---|---|---|---|"]
    for target in args.targets:
        for through in (None, *PEERS, *OURS):
            r = cost_rows(args.out_dir, target, through)
            scan_psnr = "inf" if np.isinf(r["scan_psnr"]) else f"{r['scan_psnr']:.2f}"
            lines.append(f"| {target} | {through or 'as acquired'} | {r['n']} "
                         f"| {r['rescan_ssim']:.3f} | {r['rescan_psnr']:.2f} "
                         f"| {r['scan_ssim']:.3f} | {scan_psnr} | {r['dice']:.3f} |")
    write_results(args.results, "The target site's own scans through each method", sys.argv,
                  f"{time.monotonic() - t0:.0f} s; model `{model_file.name}` (sha256 "
                  f"{file_sha256(model_file)[:12]}); folders `{{method}}_{{target}}` in "
                  f"`{args.out_dir}`. 'vs rescan': against the same head's rescan at the "
                  "target site (the scan as acquired is the ceiling); tissue Dice of each "
                  "image's segmentation against the truth's labels.", "\n".join(lines))


if __name__ == "__main__":
    main()
