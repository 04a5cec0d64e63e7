#!/usr/bin/env python
"""The group level: fine-tuning the bundled model against training a new network.

A dataset as the ``group`` level sees it is cut from the N4-corrected traveling
subjects of a ``quality_vs_peers.py --out-dir`` (track A): every image is its own
participant, at one site.  The anatomies rendered from ``--eval-label-maps`` (and
their deformed variants) are left out at ``--target``: their images there are the
truths.  Every other image is training data, so the target site is learned from
other people's scans, as in a real dataset.  Each arm trains with the group level's
own code (``training.group.fit_group_model``, the app's defaults but ``--steps``):

- ``fine-tune``: starts from the bundled model (the app's default since session 38);
- ``scratch``: a new network (``--from-scratch``).

An arm written ``KIND:STEPS`` (e.g. ``fine-tune:500``) trains ``STEPS`` steps instead
of ``--steps``; its models land in ``KIND-STEPS/``.

``--leave-out-sites`` keeps every image of those sites out of the dataset while still
scoring them as sources: a scanner the group level never saw, to ask whether a
fine-tune on a small dataset forgets what the bundled model learned about unseen
protocols.  ``--also NAME=PATH`` scores further models beside (e.g. an arm of an
earlier run).

Then ``compare_models.py`` scores the left-out anatomies' sources harmonized towards
``--target`` against their truths, beside the bundled model itself and no
harmonization.  Like the group level, the arms train on the very scans they
harmonize (the sources), never on the truths.

    python benchmarks/group_fine_tune.py --out-dir /tmp/hb_q38 --target siemens3tmprage \\
        --steps 2000 --work /tmp/hb_g38 \\
        --results benchmarks/results/group_fine_tune_session38.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_models import label_map_of, read_test_set  # noqa: E402

ARMS = ("fine-tune", "scratch")


def parse_arm(spec: str, default_steps: int) -> tuple[str, str, int]:
    """``(name, kind, steps)`` of an arm written ``KIND`` or ``KIND:STEPS``.

    >>> parse_arm("fine-tune", 2000)
    ('fine-tune', 'fine-tune', 2000)
    >>> parse_arm("fine-tune:500", 2000)
    ('fine-tune-500', 'fine-tune', 500)
    """
    kind, _, steps = spec.partition(":")
    if kind not in ARMS or (steps and not steps.isdigit()):
        raise argparse.ArgumentTypeError(f"arm {spec!r}: expected one of {ARMS}[:STEPS]")
    if not steps:
        return kind, kind, default_steps
    return f"{kind}-{steps}", kind, int(steps)


def dataset_images(by: dict, target: str, eval_label_maps: list[str],
                   left_out_sites: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """``[(anatomy, site)]`` the group level trains on: every image but the evaluated
    anatomies' images at ``target`` and every image at ``left_out_sites``.

    >>> by = {"m_1": {"t": 0, "s": 0, "u": 0}, "m_1-v5": {"t": 0, "s": 0}, "m_2": {"t": 0, "s": 0}}
    >>> dataset_images(by, "t", ["m_1"], ("u",))
    [('m_1', 's'), ('m_1-v5', 's'), ('m_2', 's'), ('m_2', 't')]
    """
    return [(a, s) for a in sorted(by) for s in sorted(by[a])
            if not (s == target and label_map_of(a) in eval_label_maps)
            and s not in left_out_sites]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="a quality_vs_peers.py --out-dir (its test_n4/ is used)")
    parser.add_argument("--target", default="siemens3tmprage")
    parser.add_argument("--eval-label-maps", nargs="+",
                        default=["training_seg_13", "training_seg_14"])
    parser.add_argument("--steps", type=int, default=2000, help="optimizer steps per arm")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), metavar="KIND[:STEPS]",
                        help=f"arms to train, KIND one of {ARMS}; STEPS overrides --steps")
    parser.add_argument("--work", type=Path, required=True,
                        help="models and training states (an arm already trained is reused)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--leave-out-sites", nargs="+", default=[], metavar="SITE",
                        help="no image of these sites in the dataset (still scored as sources)")
    parser.add_argument("--sources", nargs="+", default=None, metavar="SITE",
                        help="score these sources (default: every site of the test set "
                             "but --target)")
    parser.add_argument("--also", nargs="+", default=[], metavar="NAME=PATH",
                        help="further model files scored beside the arms")
    parser.add_argument("--results", type=Path, required=True)
    args = parser.parse_args()
    if args.target in args.leave_out_sites:
        parser.error("--leave-out-sites cannot hold --target")

    from harmonize_bids.diffusion.checkpoint import bundled_model
    from harmonize_bids.training.group import GroupOptions, fit_group_model
    from harmonize_bids.utils.cpu import configure_cpu

    configure_cpu(args.threads)
    vols, masks, by, _ = read_test_set(args.out_dir, None)
    images = dataset_images(by, args.target, args.eval_label_maps, tuple(args.leave_out_sites))
    volumes = {f"{a}@{s}": {s: vols[a][s]} for a, s in images}
    image_masks = {f"{a}@{s}": masks[a] for a, s in images}
    sites = sorted({s for _, s in images})
    print(f"{len(images)} training images at {sites}; left out at {args.target}: "
          f"{args.eval_label_maps}", flush=True)
    models, minutes, steps = {}, {}, {}
    for spec in args.arms:
        try:
            arm, kind, steps[arm] = parse_arm(spec, args.steps)
        except argparse.ArgumentTypeError as err:
            parser.error(str(err))
        arm_dir = args.work / arm
        path = arm_dir / "models" / "harmonize_bids_model.safetensors"
        if not path.is_file():
            t0 = time.monotonic()
            options = GroupOptions(train_steps=steps[arm], num_threads=args.threads,
                                   seed=args.seed, device="cpu",
                                   start_from=bundled_model() if kind == "fine-tune" else None)
            fit_group_model(volumes, image_masks, list(volumes), arm_dir / "models", arm_dir,
                            options, log=lambda m: print(f"[{arm}] {m}", flush=True))
            minutes[arm] = (time.monotonic() - t0) / 60
        card = json.loads(path.with_suffix(".json").read_text())
        if card["training"]["steps"] != steps[arm]:
            raise SystemExit(f"{path} has {card['training']['steps']} steps, not {steps[arm]}")
        minutes.setdefault(arm, card["training"]["seconds"] / 60)
        models[arm] = path
    sources = args.sources or sorted({s for a in by for s in by[a]} - {args.target})
    cmd = [sys.executable, str(Path(__file__).with_name("compare_models.py")),
           "--out-dir", str(args.out_dir), "--target", args.target, "--sources", *sources,
           "--label-maps", *args.eval_label_maps, "--n-anatomies", "100",
           "--threads", str(args.threads), "--results", str(args.results),
           "--models", "bundled", *(f"{arm}={path}" for arm, path in models.items()),
           *args.also]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    with args.results.open("a") as fobj:
        fobj.write("\nTraining: `python benchmarks/group_fine_tune.py "
                   + " ".join(sys.argv[1:]) + "`; "
                   + ", ".join(f"{arm} {m:.1f} min for {steps[arm]} steps"
                               for arm, m in minutes.items())
                   + f"; {len(images)} training images at {sites}.\n")


if __name__ == "__main__":
    main()
