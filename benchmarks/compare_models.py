#!/usr/bin/env python
"""A few-minute A/B of model files on held-out traveling subjects, before any hour-long
benchmark.

For each model, each source site and the first ``--n-anatomies`` test anatomies of a
``quality_vs_peers.py --out-dir`` (its N4-corrected ``test_n4/``), harmonize the source
towards ``--target`` (in the test images' own RAS grid, not the app's template space;
S = 5 x 2, slices levelled, the model's tissue landmarks matched: the app's default)
and score it against the true target image: SSIM, PSNR, tissue Dice (label map),
agreement with the truth's own 3-class segmentation, the coarse error band and the
depth x tissue part (``error_bands.py``), and the mean WM/GM error by depth below the
brain's surface.
"none" (the source itself) and the target's rescan (the ceiling) are scored alike.
With ``--keep-subject`` each model is also scored with the subject-kept match
(``--keep-subject-intensities``; site statistics from every scan of the test set, as
``quality_vs_peers.py --keep-subject``) as ``MODEL+subject``, and so is the source
itself (``source+subject``: what the match alone does, with the first model's landmarks).

    python benchmarks/compare_models.py --out-dir /tmp/hb_q17 --target siemens3tmprage \\
        --sources philips3ttfe ge15tspgr --n-anatomies 3 \\
        --models bundled ft_ctrl=/tmp/hb_small/ft_ctrl.safetensors \\
        --results benchmarks/results/compare_models.md
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import nibabel as nb
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from error_bands import DEPTH_NAMES, depth_parts, error_parts, level_by_z  # noqa: E402
from train_simulated import load_ras, ras_volumes  # noqa: E402
from results_file import write_results  # noqa: E402

COLUMNS = ("SSIM", "PSNR", "Dice", "agreement", "coarse", "depth x tissue")


def parse_models(specs: list[str]) -> dict[str, str | None]:
    """``NAME=PATH`` (or ``bundled``) -> {name: path; None for the bundled model}.

    >>> parse_models(["bundled", "ft=/m/ft.safetensors"])
    {'bundled': None, 'ft': '/m/ft.safetensors'}
    """
    out: dict[str, str | None] = {}
    for spec in specs:
        name, _, path = spec.partition("=")
        if not path and name != "bundled":
            raise SystemExit(f"--models: {spec!r} is not NAME=PATH (or 'bundled')")
        out[name] = path or None
    return out


def add_test_set_arguments(parser: argparse.ArgumentParser, n_anatomies: int) -> None:
    """``--out-dir``, ``--target``, ``--sources``, ``--n-anatomies``: what
    :func:`read_test_set` and the scoring read."""
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="a quality_vs_peers.py --out-dir (its test_n4/ is used)")
    parser.add_argument("--target", required=True)
    parser.add_argument("--sources", nargs="+", required=True)
    parser.add_argument("--n-anatomies", type=int, default=n_anatomies)
    parser.add_argument("--label-maps", nargs="+", default=None, metavar="NAME",
                        help="only anatomies rendered from these label maps (e.g. "
                             "training_seg_13) or deformed variants of them; --n-anatomies "
                             "then counts among those")


def label_map_of(anatomy: str) -> str:
    """The label map an anatomy of the test set was rendered from (variants: ``-vN``).

    >>> label_map_of("training_seg_16-v7"), label_map_of("training_seg_13")
    ('training_seg_16', 'training_seg_13')
    """
    return anatomy.split("-v")[0]


def read_test_set(out_dir: Path, n_anatomies: int, label_maps: list[str] | None = None
                  ) -> tuple[dict, dict, dict, list[str]]:
    """``(volumes, masks, by, anatomies)`` of a ``quality_vs_peers.py --out-dir``'s
    N4-corrected ``test_n4/``: RAS volumes ``{anatomy: {site: array}}`` and brain masks
    ``{anatomy: array}`` (``train_simulated.ras_volumes``), the image records
    ``by[anatomy][site]``, and the first ``n_anatomies`` anatomies in sorted order
    (of those from ``label_maps`` when given)."""
    from harmonize_bids.evaluation import read_simulated_dataset

    test = out_dir / "test_n4"
    vols, masks = ras_volumes(test)
    by: dict = defaultdict(dict)
    for img in read_simulated_dataset(test):
        by[img.anatomy][img.site] = img
    chosen = [a for a in sorted(by) if label_maps is None or label_map_of(a) in label_maps]
    return vols, masks, by, chosen[:n_anatomies]


def score(image: np.ndarray, truth: np.ndarray, mask: np.ndarray, labels: np.ndarray,
          truth_classes: np.ndarray) -> list:
    """One row: :data:`COLUMNS`, the WM and GM depth profiles, then the WM error by chunk
    of axial slices, inferior to superior (:func:`error_bands.level_by_z`; fractions).

    ``truth_classes``: the truth's own 3-class segmentation, against which the
    image's segmentation is scored for "agreement" (anatomy, not contrast; what
    ``tissue_agreement.py`` scores)."""
    from harmonize_bids import metrics

    r = metrics.compare(image, truth, mask, labels)
    d = depth_parts(image, truth, mask, labels)
    e = error_parts(image, truth, mask)
    agreement = metrics.tissue_dice(image, mask, truth_classes)["mean"]
    return [r["ssim"], r["psnr"], r["tissue_dice"], agreement,
            e["coarse"] * 1e4, d["depth x tissue"] * 1e4, *d["wm"], *d["gm"],
            *(np.asarray(level_by_z(metrics.robust_normalize(image, mask),
                                    metrics.robust_normalize(truth, mask),
                                    np.where(mask > 0, labels, 0), 3, 1.0)) / 100)]


def table(rows: dict[tuple[str, str], list[list[float]]], sources: list[str]) -> str:
    """Markdown: one line per source and method, means over anatomies.

    >>> row = [0.9, 22.0, 0.8, 0.85, 10.0, 12.0] + [-0.05] * 7 + [0.01] * 7 + [-0.1] + [0.0] * 5
    >>> print(table({("ours", "a"): [row, row]}, ["a"]).splitlines()[-1])
    | a | ours | 0.900 | 22.00 | 0.800 | 0.850 | 10.0 | 12.0 | -5.0 -5.0 -5.0 -5.0 -5.0 -5.0 -5.0 | +1.0 +1.0 +1.0 +1.0 +1.0 +1.0 +1.0 | -10.0 +0.0 +0.0 +0.0 +0.0 +0.0 |
    """
    n = len(DEPTH_NAMES)
    head = ("| source | method | SSIM | PSNR | tissue Dice | agreement | coarse | depth x tissue "
            f"| WM by depth ({', '.join(DEPTH_NAMES)} vox), % | GM by depth, % "
            "| WM by slice chunk (inf -> sup), % |")
    lines = [head, "|" + "---|" * 11]
    for src in sources + ["(rescan)"]:
        for (method, s), vals in rows.items():
            if s != src:
                continue
            v = np.nanmean(np.asarray(vals, float), axis=0)
            wm = " ".join(f"{100 * x:+.1f}" for x in v[6:6 + n])
            gm = " ".join(f"{100 * x:+.1f}" for x in v[6 + n:6 + 2 * n])
            wm_z = " ".join(f"{100 * x:+.1f}" for x in v[6 + 2 * n:])
            lines.append(f"| {src} | {method} | {v[0]:.3f} | {v[1]:.2f} | {v[2]:.3f} | "
                         f"{v[3]:.3f} | {v[4]:.1f} | {v[5]:.1f} | {wm} | {gm} | {wm_z} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_test_set_arguments(parser, n_anatomies=3)
    parser.add_argument("--models", nargs="+", required=True, help="bundled and/or NAME=PATH")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=None, help="also write the table here")
    parser.add_argument("--keep-subject", action="store_true",
                        help="also score the subject-kept match (MODEL+subject rows)")
    parser.add_argument("--save-dir", type=Path, default=None,
                        help="also keep each output as SAVE_DIR/MODEL/ANATOMY_from-SOURCE.nii.gz "
                             "(RAS, the truth's grid) for further analysis")
    args = parser.parse_args()

    import torch

    from harmonize_bids import metrics
    from harmonize_bids.diffusion.checkpoint import bundled_model, load_model
    from harmonize_bids.diffusion.schedule import SamplerSettings
    from harmonize_bids.diffusion.volume import harmonize_volume
    from harmonize_bids.site_intensity import (
        SCHEMES,
        match_landmarks,
        scan_target_landmarks,
        target_landmarks,
        tissue_landmarks,
    )
    from quality_vs_peers import dataset_statistics

    torch.set_num_threads(args.threads)
    models = parse_models(args.models)
    vols, masks, by, anatomies = read_test_set(args.out_dir, args.n_anatomies, args.label_maps)
    statistics = dataset_statistics([img for a in by for img in by[a].values()], vols, masks,
                                    "vigintiles") if args.keep_subject else None

    # the truth of each anatomy at the target, read and segmented once
    refs = {}
    for a in anatomies:
        truth_img = by[a][args.target]
        truth = load_ras(truth_img.t1w)
        refs[a] = (truth, load_ras(truth_img.dseg),
                   metrics.tissue_segmentation(truth, masks[a]),
                   nb.as_closest_canonical(nb.load(str(truth_img.t1w))).affine)

    rows: dict[tuple[str, str], list] = defaultdict(list)
    t0 = time.monotonic()
    for a in anatomies:
        truth, labels, classes, _ = refs[a]
        for src in args.sources:
            rows[("none", src)].append(score(vols[a][src], truth, masks[a], labels, classes))
        rescan = by[a][args.target].rescan
        if rescan is not None:
            rows[("rescan", "(rescan)")].append(
                score(load_ras(rescan), truth, masks[a], labels, classes))
    for name, path in models.items():
        model, _ = load_model(path or bundled_model())
        model.eval()
        site = model.config.site_index(args.target)
        landmarks = target_landmarks(model.config, args.target, "vigintiles")
        for a in anatomies:
            truth, labels, classes, affine = refs[a]
            mask = masks[a]
            for src in args.sources:
                raw = harmonize_volume(model, vols[a][src], mask, site,
                                       SamplerSettings(steps=5, samples=2), seed=0)
                if statistics is not None:
                    kept, why, _ = scan_target_landmarks(landmarks, statistics, src,
                                                         tissue_landmarks(vols[a][src], mask,
                                                                          SCHEMES["vigintiles"]))
                    if why:
                        raise SystemExit(f"{a} from {src}: no subject-kept match: {why}")
                    rows[(f"{name}+subject", src)].append(
                        score(match_landmarks(raw, mask, kept), truth, mask, labels, classes))
                    if name == next(iter(models)):  # what changing nothing but this gives
                        rows[("source+subject", src)].append(score(
                            match_landmarks(vols[a][src], mask, kept), truth, mask, labels,
                            classes))
                out = match_landmarks(raw, mask, landmarks)
                if args.save_dir:
                    dest = args.save_dir / name / f"{a}_from-{src}.nii.gz"
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    nb.save(nb.Nifti1Image(out.astype(np.float32), affine), str(dest))
                rows[(name, src)].append(score(out, truth, mask, labels, classes))
            print(f"[{time.monotonic() - t0:5.0f} s] {name}: {a}", flush=True)

    text = table(dict(rows), args.sources)
    write_results(args.results, f"Model A/B towards `{args.target}`", sys.argv,
                  f"{args.threads} threads, {time.monotonic() - t0:.0f} s; anatomies: "
                  f"{', '.join(anatomies)}.\nCoarse and depth x tissue: mean squared error "
                  "x 10^4 (error_bands.py); WM/GM: mean error by depth below the brain's "
                  "surface, % of the range.", text)


if __name__ == "__main__":
    main()
