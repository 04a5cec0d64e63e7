#!/usr/bin/env python
"""Time the default (and --sloppy) participant preprocessing of one T1w.

Input: an IXI Hammersmith head from ../shared/data (2 mm) resampled to the
requested voxel size, or a synthetic head when the shared data are absent.
Prints a table of seconds per step and the peak memory of the worker
processes, and writes it to benchmarks/results/preprocessing_speed.md.

    python benchmarks/preprocessing_speed.py [--resolution 1.0] [--nprocs 2]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import nibabel as nb
import numpy as np
from scipy import ndimage as ndi

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi-hh-t1w-2mm"


def make_input(bids: Path, resolution: float) -> str:
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "speed", "BIDSVersion": "1.10.0"}))
    if SHARED.is_dir():
        img = nb.load(SHARED / "IXI014-HH-1236_T1.nii.gz")
        source = "IXI014 (IXI HH, 2 mm) resampled"
    else:
        from harmonize_bids.synthetic import DEFAULT_SITES, synthetic_head
        img, _ = synthetic_head(np.random.default_rng(0), DEFAULT_SITES[0], resolution_mm=2.0)
        source = "synthetic head (2 mm) resampled"
    zoom = np.array(img.header.get_zooms()[:3]) / resolution
    data = ndi.zoom(np.asarray(img.dataobj, dtype=np.float32), zoom, order=1)
    aff = img.affine.copy()
    aff[:3, :3] = aff[:3, :3] / zoom
    nb.Nifti1Image(data, aff).to_filename(bids / "sub-01/anat/sub-01_T1w.nii.gz")
    return f"{source} to {resolution:g} mm, shape {data.shape}"


def node_times(work: Path) -> dict[str, float]:
    from nipype.utils.filemanip import loadpkl

    times = {}
    for res in work.rglob("result_*.pklz"):
        result = loadpkl(res)
        duration = getattr(getattr(result, "runtime", None), "duration", None)
        if duration is not None:
            times[res.parent.name] = float(duration)
    return times


def main() -> None:
    from harmonize_bids.cli.run import main as run_main

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=1.0)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "preprocessing_speed.md")
    args = parser.parse_args()

    rows, notes = [], []
    for sloppy in (False, True):
        tmp = Path(tempfile.mkdtemp(prefix="hb_speed_"))
        desc = make_input(tmp / "bids", args.resolution)
        argv = [str(tmp / "bids"), str(tmp / "out"), "participant", "-w", str(tmp / "work"),
                "--nprocs", str(args.nprocs), "--skip-bids-validation"]
        if sloppy:
            argv.append("--sloppy")
        start = time.monotonic()
        code = run_main(argv)
        wall = time.monotonic() - start
        times = node_times(tmp / "work")
        label = "sloppy" if sloppy else "default"
        for step in ("reorient", "n4", "reg_head_affine", "reg_head_syn", "warp_prob",
                     "reg_brain", "resample_brain", "normalize"):
            if step in times:
                rows.append((label, step, f"{times[step]:.1f}"))
        rows.append((label, "**total wall time**", f"{wall:.1f}" + ("" if code == 0 else " (FAILED)")))
        notes.append(desc)
        shutil.rmtree(tmp)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    lines = [
        "# Preprocessing speed (one T1w)", "",
        f"- command: `python benchmarks/preprocessing_speed.py --resolution {args.resolution:g} "
        f"--nprocs {args.nprocs}`",
        f"- date: {datetime.date.today()}; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}; no GPU involved",
        f"- input: {notes[0]}",
        f"- peak resident memory of one worker process: {peak_mb:.0f} MB", "",
        "| settings | step | seconds |", "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows], "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
