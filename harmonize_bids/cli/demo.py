"""``harmonize_bids-demo [OUT_DIR]``: the main job on built-in data.

Generates a small multi-site BIDS dataset from the package's own head template
(:mod:`harmonize_bids.synthetic`), runs the participant level on it and
points to the outputs.  Needs nothing but the installed package.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harmonize_bids.cli.run import main as run_main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="harmonize_bids-demo",
        description="Generate a small synthetic multi-site BIDS dataset and run "
                    "harmonize_bids on it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("out_dir", nargs="?", type=Path, default=Path("harmonize_bids_demo"),
                        help="folder for the demo dataset, derivatives and work dir")
    parser.add_argument("--n-subjects", type=int, default=3)
    parser.add_argument("--resolution", type=float, default=2.0, help="voxel size in mm")
    parser.add_argument("--nprocs", type=int, default=None)
    parser.add_argument("--sloppy", action="store_true", help="fast, low-quality settings")
    opts = parser.parse_args(argv)

    from harmonize_bids.synthetic import make_synthetic_dataset

    out = opts.out_dir.absolute()
    bids_dir = out / "bids"
    if not (bids_dir / "dataset_description.json").exists():
        print(f"Generating {opts.n_subjects} synthetic participants in {bids_dir} ...", flush=True)
        make_synthetic_dataset(bids_dir, n_subjects=opts.n_subjects,
                               resolution_mm=opts.resolution, seed=0)
    args = [str(bids_dir), str(out / "derivatives"), "participant", "-w", str(out / "work"),
            "--random-seed", "0"]
    if opts.nprocs:
        args += ["--nprocs", str(opts.nprocs)]
    if opts.sloppy:
        args.append("--sloppy")
    code = run_main(args)
    if code == 0:
        print(f"\nDone. Derivatives: {out / 'derivatives'}\n"
              f"  e.g. {out / 'derivatives/sub-01/anat'}\n"
              "Harmonization to a target site arrives with the bundled model.")
    return code


if __name__ == "__main__":
    sys.exit(main())
