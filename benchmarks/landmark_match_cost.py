#!/usr/bin/env python
"""What the tissue landmark match costs against the truth, by where its landmarks come from.

The app finishes every harmonized brain by mapping its tissue landmarks onto the target
site's *mean* landmarks (``--match-intensities``).  A brain's landmarks are part scanner,
part subject, so that map also moves the subject part.  This script applies the match to
the **source image itself** (no model) and to any images kept by ``compare_models.py
--save-dir`` (``--outputs NAME=DIR``), for the first ``--n-anatomies`` held-out anatomies
of a ``quality_vs_peers.py --out-dir`` (its N4-corrected ``test_n4/``), with the target
landmarks taken from:

- ``site mean``: the target site's mean landmarks stored in the model (the app's default);
- ``subject kept``: the same, moved by the source scan's deviation from its own site's
  stored mean (``site_intensity.subject_landmarks`` of the model's stored means);
- ``truth's own``: the true target image's own landmarks (an oracle: what a perfect
  landmark estimate would give; sources only).

and scores each against the true target image like ``compare_models.py`` (SSIM, PSNR,
tissue Dice, ...), beside no harmonization and the rescan.

    python benchmarks/landmark_match_cost.py --out-dir /tmp/hb_q22 --target siemens3tmprage \\
        --sources philips3ttfe ge15tspgr --n-anatomies 4 \\
        --outputs ft=/tmp/save/ft --results benchmarks/results/landmark_match_cost.md
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_models import add_test_set_arguments, read_test_set, score, table  # noqa: E402
from results_file import write_results  # noqa: E402
from train_simulated import load_ras  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_test_set_arguments(parser, n_anatomies=4)
    parser.add_argument("--model", type=Path, default=None,
                        help="the model whose stored landmarks are used (default: bundled)")
    parser.add_argument("--scheme", default="vigintiles")
    parser.add_argument("--outputs", nargs="*", default=[],
                        help="NAME=DIR of compare_models.py --save-dir outputs "
                             "(DIR/ANATOMY_from-SOURCE.nii.gz)")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()

    from harmonize_bids import metrics
    from harmonize_bids.diffusion.checkpoint import bundled_model, read_config
    from harmonize_bids.site_intensity import (SCHEMES, match_landmarks, subject_landmarks,
                                               target_landmarks, tissue_landmarks)

    t0 = time.monotonic()
    model_file = args.model or bundled_model()
    config = read_config(Path(model_file))
    site_mean = target_landmarks(config, args.target, args.scheme)
    vols, masks, by, anatomies = read_test_set(args.out_dir, args.n_anatomies, args.label_maps)
    outputs = dict(spec.split("=", 1) for spec in args.outputs)

    rows: dict[tuple[str, str], list] = defaultdict(list)
    for a in anatomies:
        mask = masks[a] > 0
        truth = load_ras(by[a][args.target].t1w)
        labels = load_ras(by[a][args.target].dseg)
        classes = metrics.tissue_segmentation(truth, mask)
        own_truth = tissue_landmarks(truth, mask, SCHEMES[args.scheme])
        rescan = by[a][args.target].rescan
        if rescan is not None:
            rows[("rescan", "(rescan)")].append(
                score(load_ras(rescan), truth, mask, labels, classes))
        for src in args.sources:
            source = vols[a][src]
            kept = subject_landmarks(site_mean, target_landmarks(config, src, args.scheme),
                                     tissue_landmarks(source, mask, SCHEMES[args.scheme]))
            rows[("none", src)].append(score(source, truth, mask, labels, classes))
            images = {"source": source}
            images.update({name: load_ras(Path(d) / f"{a}_from-{src}.nii.gz")
                           for name, d in outputs.items()})
            for name, image in images.items():
                targets = {"site mean": site_mean, "subject kept": kept}
                if name == "source":
                    targets["truth's own"] = own_truth
                for how, landmarks in targets.items():
                    rows[(f"{name}, matched: {how}", src)].append(
                        score(match_landmarks(image, mask, landmarks), truth, mask, labels,
                              classes))
            print(f"[{time.monotonic() - t0:5.0f} s] {a} from {src}", flush=True)

    text = table(dict(rows), args.sources)
    write_results(args.results, f"Landmark match cost towards `{args.target}`", sys.argv,
                  f"{time.monotonic() - t0:.0f} s; model `{Path(model_file).name}`, "
                  f"{args.scheme}; anatomies: {', '.join(anatomies)}.", text)


if __name__ == "__main__":
    main()
