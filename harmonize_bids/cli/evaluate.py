"""``harmonize_bids-evaluate BIDS_DIR [DERIVATIVES_DIR]``: score harmonization against truth."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="harmonize_bids-evaluate",
        description="Compare harmonized outputs (…_desc-harmonized_T1w.nii.gz in "
                    "DERIVATIVES_DIR) of a simulated traveling-subject dataset (BIDS_DIR, "
                    "from harmonize_bids-simulate) with the true image of the same anatomy "
                    "at the target site. Without DERIVATIVES_DIR, scores the 'no "
                    "harmonization' baseline for every pair of sites.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("derivatives_dir", type=Path, nargs="?")
    parser.add_argument("--method", default=None, help="name for the table's method column")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    parser.add_argument("-q", "--quiet", action="store_true")
    opts = parser.parse_args(argv)

    from harmonize_bids.evaluation import evaluate, format_table

    try:
        result = evaluate(opts.bids_dir, opts.derivatives_dir,
                          progress=(lambda m: None) if opts.quiet else
                          (lambda m: print(m, file=sys.stderr, flush=True)))
    except FileNotFoundError as err:
        print(f"harmonize_bids-evaluate: error: {err}", file=sys.stderr)
        return 66
    method = opts.method or ("no harmonization" if opts.derivatives_dir is None
                             else "harmonize_bids")
    table = format_table(result, method)
    print(table)
    if opts.out:
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        opts.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
