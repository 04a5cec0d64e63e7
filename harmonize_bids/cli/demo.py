"""``harmonize_bids-demo [OUT_DIR]``: the main job on built-in data.

1. Renders a small traveling-subject BIDS dataset with the package's own MRI
   simulator (:mod:`harmonize_bids.simulate`) from the shipped demo anatomy
   (a SynthSeg label atlas in ``harmonize_bids/data/templates``): the same head
   scanned with the target site's protocol and with the source protocols (by
   default one the bundled model knows, ``ge15tspgr``, and one it never saw,
   ``clinical15tthick``, a 1.5 T scan with 5 mm slices).
2. Runs the participant level on it with the bundled model, harmonizing every
   image of the source sites to ``--target-site`` (the target site's own image is the
   reference and is kept unchanged).
3. Scores the harmonized images against the truth (the target-site rendering
   of the same head) beside no harmonization and a rescan at the target site (the
   ceiling), and points to the outputs and the HTML reports.

Needs nothing but the installed package (no network, no ``../shared``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harmonize_bids.cli.run import main as run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmonize_bids-demo",
        description="Simulate one head at several scanners, harmonize every scan to a target "
                    "site with the bundled model, and score the result against the truth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out_dir", nargs="?", type=Path, default=Path("harmonize_bids_demo"),
                        help="folder for the demo dataset, derivatives and work dir")
    parser.add_argument("--target-site", default="siemens3tmprage",
                        help="site to harmonize to (a site of the model)")
    parser.add_argument("--sources", nargs="+", default=["ge15tspgr", "clinical15tthick"],
                        help="simulator protocols the head is also scanned with")
    parser.add_argument("--n-anatomies", type=int, default=1,
                        help="heads: the atlas, then deformed/flipped variants of it")
    parser.add_argument("--resolution", type=float, default=2.0, help="voxel size in mm")
    parser.add_argument("--steps", type=int, default=None,
                        help="denoising steps (default: the participant level's)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file; default: the bundled model")
    parser.add_argument("--nprocs", type=int, default=None)
    parser.add_argument("--sloppy", action="store_true", help="fast, low-quality settings")
    return parser


def make_demo_dataset(bids_dir: Path, target_site: str, sources: list[str],
                      n_anatomies: int, resolution_mm: float) -> Path:
    """Render the demo anatomy under the target (when it is a simulator protocol) and
    source protocols as a traveling-subject BIDS dataset (with truth derivatives)."""
    from harmonize_bids.simulate.dataset import make_traveling_dataset
    from harmonize_bids.simulate.protocols import PROTOCOLS
    from harmonize_bids.templates import get_template

    names = ([target_site] if target_site in PROTOCOLS else []) + \
        [s for s in sources if s != target_site]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        raise SystemExit(f"harmonize_bids-demo: unknown protocol(s) {unknown}; "
                         f"choose from {sorted(PROTOCOLS)}")
    return make_traveling_dataset(get_template("demo_anatomy"), bids_dir,
                                  [PROTOCOLS[n] for n in names], n_anatomies=n_anatomies,
                                  resolution_mm=resolution_mm, seed=0, rescan=True,
                                  progress=lambda msg: print("  " + msg, flush=True))


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    out = opts.out_dir.absolute()
    bids_dir, deriv = out / "bids", out / "derivatives"
    if not (bids_dir / "dataset_description.json").exists():
        print(f"Rendering the demo head under {[opts.target_site] + opts.sources} "
              f"into {bids_dir} ...", flush=True)
        make_demo_dataset(bids_dir, opts.target_site, opts.sources, opts.n_anatomies,
                          opts.resolution)
    args = [str(bids_dir), str(deriv), "participant", "-w", str(out / "work"),
            "--random-seed", "0", "--target-site", opts.target_site]
    if opts.steps is not None:
        args += ["--steps", str(opts.steps)]
    if opts.model:
        args += ["--model", str(opts.model)]
    if opts.nprocs:
        args += ["--nprocs", str(opts.nprocs)]
    if opts.sloppy:
        args.append("--sloppy")
    code = run_main(args)
    if code != 0:
        return code
    print(f"\nDone. Derivatives: {deriv}")
    reports = sorted(deriv.glob("sub-*.html"))
    if reports:
        print(f"  HTML reports: {reports[0]}" + (f" (+{len(reports) - 1} more)"
                                                  if len(reports) > 1 else ""))
    print(f"  harmonized images: {deriv}/sub-*/anat/*desc-harmonized_T1w.nii.gz")
    print_scores(bids_dir, deriv)
    return 0


def print_scores(bids_dir: Path, deriv: Path) -> None:
    """Harmonized vs. truth beside no harmonization (only where the truth exists)."""
    from harmonize_bids.evaluation import evaluate, format_table

    try:
        harmonized = evaluate(bids_dir, deriv)
    except FileNotFoundError:
        return
    if not harmonized["pairs"]:
        print("  (no target-site truth rendered: nothing to score)")
        return
    baseline = evaluate(bids_dir)
    targets = {t for _, t in harmonized["pairs"]}
    baseline["pairs"] = {k: v for k, v in baseline["pairs"].items() if k[1] in targets}
    print("\nAgainst the truth (the same head scanned at the target site):\n")
    print(format_table(baseline, "no harmonization") + "\n")
    print(format_table(harmonized, "harmonize_bids"))
    print("\nrescan: the same head scanned twice at the target site (the ceiling); "
          "scores after robust intensity normalization (harmonize_bids.metrics)")


if __name__ == "__main__":
    sys.exit(main())
