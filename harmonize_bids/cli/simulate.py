"""``harmonize_bids-simulate``: write a traveling-subject BIDS dataset."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harmonize_bids.simulate.protocols import PROTOCOLS, Protocol, get_protocol


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harmonize_bids-simulate",
        description="Render every anatomy (whole-head label maps, e.g. SynthSeg's) under "
                    "every scanner protocol and write a BIDS dataset with the ground truth "
                    "(brain masks, CSF/GM/WM maps) in derivatives/simulation-truth.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("labels_dir", type=Path, nargs="?",
                        help="folder of label maps, or one label map file; with only one "
                             "positional argument: the shipped demo anatomy (a SynthSeg label "
                             "atlas in MNI space)")
    parser.add_argument("out_dir", type=Path, nargs="?", help="new BIDS dataset folder")
    parser.add_argument("--protocols", default=",".join(list(PROTOCOLS)[:3]),
                        help="comma-separated protocol names (see --list-protocols)")
    parser.add_argument("--protocol-file", type=Path, action="append", default=[],
                        metavar="JSON", help="extra protocol(s) from JSON files")
    parser.add_argument("--n-anatomies", type=int, default=3)
    parser.add_argument("--resolution", type=float, default=2.0, help="voxel size (mm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rescan", action="store_true",
                        help="also write a rescan (new noise) of every image in the truth")
    parser.add_argument("--augment", action="store_true",
                        help="deform/flip every anatomy, not only the extra ones")
    parser.add_argument("--list-protocols", action="store_true",
                        help="print the named protocols and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    from harmonize_bids.simulate.dataset import make_traveling_dataset

    parser = _build_parser()
    opts = parser.parse_args(argv)
    if opts.list_protocols:
        print(f"{'name':<18} {'sequence':<7} {'field':>5} {'TR':>6} {'TI':>6} {'TE':>5} "
              f"{'flip':>4} {'voxel (mm)':<16} {'SNR':>4}  description")
        for p in PROTOCOLS.values():
            vox = "x".join(f"{v:g}" for v in p.voxel_mm)
            print(f"{p.name:<18} {p.sequence:<7} {p.field_strength:>4g}T {p.tr:>6g} "
                  f"{p.ti:>6g} {p.te:>5g} {p.flip_deg:>4g} {vox:<16} {p.snr:>4g}  {p.description}")
        return 0
    if opts.labels_dir is None:
        parser.error("OUT_DIR is required (or use --list-protocols)")
    if opts.out_dir is None:  # one positional argument: the output; the demo anatomy
        from harmonize_bids.templates import get_template

        opts.out_dir, opts.labels_dir = opts.labels_dir, get_template("demo_anatomy")
    try:
        protocols = [get_protocol(n.strip()) for n in opts.protocols.split(",") if n.strip()]
        protocols += [Protocol.from_file(f) for f in opts.protocol_file]
    except (KeyError, ValueError, OSError) as err:
        print(f"harmonize_bids-simulate: error: {err}", file=sys.stderr)
        return 64
    if not opts.labels_dir.exists():
        print(f"harmonize_bids-simulate: error: no such file or folder {opts.labels_dir}",
              file=sys.stderr)
        return 66
    start = time.monotonic()
    try:
        make_traveling_dataset(opts.labels_dir, opts.out_dir, protocols,
                               n_anatomies=opts.n_anatomies, resolution_mm=opts.resolution,
                               seed=opts.seed, rescan=opts.rescan, augment=opts.augment,
                               progress=lambda msg: print(msg, flush=True))
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"harmonize_bids-simulate: error: {err}", file=sys.stderr)
        return 66 if isinstance(err, FileNotFoundError) else 73 if isinstance(
            err, FileExistsError) else 64
    print(f"Wrote {opts.out_dir} in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
