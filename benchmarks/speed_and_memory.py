#!/usr/bin/env python
"""Speed and memory: harmonization per volume at several step counts, the peers,
and whole participant-level runs for growing numbers of subjects.

Every measurement runs in a fresh child process, so its peak memory (max RSS of
the process and its workers, from ``getrusage(RUSAGE_CHILDREN)``) is its own.

A. ``harmonize_volume`` on one template-space brain (the model's 2 mm grid) for
   S = 5, 10, 25, 50 steps (each with the default number of averaged chains), on the
   CPU (``--threads``) and on CUDA when present: seconds per volume, network
   evaluations per second (slices x steps x chains / s), peak RSS.
B. The peers on the same brain (seconds per volume).
C. The participant level (preprocessing + harmonization, S = 10) on 1, 2 and 4
   simulated 2 mm heads with ``--nprocs 2``: wall time, seconds per subject, peak
   RSS; the 4-subject run again with ``--mem-mb`` to show the bound is kept.
D. Volume size: ``harmonize_volume`` (S = 5) on the same head rendered on finer grids
   (``--grids-mm``). The app always harmonizes on the model's grid (2 mm for the
   bundled model), whatever the input's voxel size, so this is the cost a model
   trained on a finer grid would have (the network is fully convolutional).

    python benchmarks/speed_and_memory.py --out-dir /tmp/hb_speed
    python benchmarks/speed_and_memory.py --sections D \
        --results benchmarks/results/speed_vs_volume_size.md
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD_A = r"""
import json, sys, time, numpy as np, torch, nibabel as nb
from harmonize_bids.diffusion.checkpoint import bundled_model, load_model
from harmonize_bids.diffusion.schedule import SamplerSettings
from harmonize_bids.diffusion.volume import harmonize_volume
from harmonize_bids.training.data import normalize_brain
from harmonize_bids.simulate.render import load_anatomy, render_clean, acquire
from harmonize_bids.simulate.protocols import PROTOCOLS
from harmonize_bids.simulate.tissues import is_brain_label
from harmonize_bids.templates import get_template
steps, device, threads = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
from harmonize_bids.utils.cpu import configure_cpu
configure_cpu(threads)
model, _ = load_model(bundled_model(), device=device)
grid_mm = float(sys.argv[4]) if len(sys.argv) > 4 else model.config.voxel_mm
anat = load_anatomy(get_template("demo_anatomy"))
rng = np.random.default_rng(0)
p = PROTOCOLS["ge15tspgr"]
r = render_clean(anat, p, rng, spacing_mm=grid_mm)
img = acquire(r, p, rng)
from scipy import ndimage as ndi
mask = ndi.zoom(is_brain_label(anat.labels).astype(np.float32),
                np.array(img.shape) / np.array(anat.labels.shape), order=1) > 0.5
vol = normalize_brain(img, mask)
n_slices = int((mask.sum(axis=(0, 1)) > 0).sum())
harmonize_volume(model, vol, mask, 0, SamplerSettings(steps=1), device=device)  # warm-up
if device == "cuda": torch.cuda.synchronize()
t0 = time.perf_counter()
# the source is ge15tspgr: source-site guidance (when the default has it) runs as in the app
harmonize_volume(model, vol, mask, model.config.site_index("siemens3tmprage"),
                 SamplerSettings(steps=steps), device=device,
                 source_site=model.config.site_index("ge15tspgr"))
if device == "cuda": torch.cuda.synchronize()
sec = time.perf_counter() - t0
print(json.dumps({"seconds": sec, "slices": n_slices, "shape": list(vol.shape),
                  "chains": SamplerSettings(steps=steps).samples}))
"""

CHILD_B = r"""
import json, time, numpy as np
from harmonize_bids import peers
from harmonize_bids.simulate.render import load_anatomy, render_clean, acquire
from harmonize_bids.simulate.protocols import PROTOCOLS
from harmonize_bids.simulate.tissues import is_brain_label
from harmonize_bids.templates import get_template
from scipy import ndimage as ndi
anat = load_anatomy(get_template("demo_anatomy"))
rng = np.random.default_rng(0)
vols = []
for name in ("ge15tspgr", "siemens3tmprage"):
    p = PROTOCOLS[name]
    img = acquire(render_clean(anat, p, rng, spacing_mm=2.0), p, rng)
    vols.append(img)
mask = ndi.zoom(is_brain_label(anat.labels).astype(np.float32),
                np.array(vols[0].shape) / np.array(anat.labels.shape), order=1) > 0.5
src, ref = vols
out = {}
for name, fn in [("Nyul", lambda: peers.nyul(src, mask, [ref], [mask])),
                 ("WhiteStripe", lambda: peers.whitestripe(src, mask, ref, mask)),
                 ("z-score", lambda: peers.zscore_to(src, mask, ref, mask)),
                 ("ANTs histogram matching", lambda: peers.ants_histogram_match(src, mask, ref, mask))]:
    t0 = time.perf_counter(); fn(); out[name] = time.perf_counter() - t0
print(json.dumps(out))
"""


def run_child(cmd: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run ``cmd`` in a child; return (stdout, seconds, peak RSS in MB of it and its workers)."""
    code = (
        "import resource, subprocess, sys, json, time\n"
        "t0 = time.perf_counter()\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sec = time.perf_counter() - t0\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "print(json.dumps({'rc': p.returncode, 'out': p.stdout, 'err': p.stderr[-3000:],"
        " 'sec': sec, 'rss': rss}))\n")
    res = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True,
                         env={**os.environ, **(env or {})})
    data = json.loads(res.stdout)
    if data["rc"] != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{data['err']}")
    return data["out"], data["sec"], data["rss"]


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25, 50])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subjects", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--mem-mb", type=int, default=3000)
    parser.add_argument("--grids-mm", type=float, nargs="+", default=[2.0, 1.5, 1.0],
                        help="grid spacings of section D")
    parser.add_argument("--sections", nargs="+", choices=list("ABCD"), default=list("ABCD"))
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=None,
                        help="devices for sections A and D (default: cpu, and cuda when "
                        "present)")
    parser.add_argument("--no-malloc-tuning", action="store_true",
                        help="measure with glibc's default allocator settings (sets "
                             "HARMONIZE_BIDS_NO_MALLOC_TUNING for every child)")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/hb_speed"))
    parser.add_argument("--results", type=Path,
                        default=Path(__file__).parent / "results" / "speed_and_memory.md")
    args = parser.parse_args()
    from harmonize_bids.utils.cpu import OPT_OUT

    if args.no_malloc_tuning:
        os.environ[OPT_OUT] = "1"  # the children inherit it
    args.out_dir.mkdir(parents=True, exist_ok=True)
    devices = args.devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devices and not torch.cuda.is_available():
        parser.error("--devices cuda: torch sees no CUDA device")
    lines = ["# Speed and memory", "",
             f"- command: `python benchmarks/speed_and_memory.py {' '.join(sys.argv[1:])}`",
             f"- date: {datetime.date.today()}; {platform.machine()}, {os.cpu_count()} CPUs, "
             f"torch {torch.__version__}; GPU: "
             f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
             f"- LD_PRELOAD: `{os.environ.get('LD_PRELOAD', '')}`; glibc malloc tuning "
             f"(`harmonize_bids.utils.cpu`): {'off' if os.environ.get(OPT_OUT) else 'on'}"]
    if "A" in args.sections:
        lines += section_a(args, devices)
    if "B" in args.sections:
        lines += section_b()
    if "C" in args.sections:
        lines += section_c(args)
    if "D" in args.sections:
        lines += section_d(args, devices)
    text = "\n".join(lines)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text + "\n")


def section_a(args: argparse.Namespace, devices: list[str]) -> list[str]:
    """Harmonization of one volume at each step count."""
    lines = ["", "## A. Harmonization of one volume (demo head, model grid 2 mm, bundled model)",
             "", "| device | threads | steps S x chains | s / volume | slices | "
             "network evaluations / s | peak RSS (MB) |", "|---|---|---|---|---|---|---|"]
    for device in devices:
        for steps in args.steps:
            out, _, rss = run_child([sys.executable, "-c", CHILD_A, str(steps), device,
                                     str(args.threads)])
            r = json.loads(out.strip().splitlines()[-1])
            evals = r["slices"] * steps * r.get("chains", 1)
            lines.append(f"| {device} | {args.threads} | {steps} x {r.get('chains', 1)} | "
                         f"{r['seconds']:.1f} | {r['slices']} | {evals / r['seconds']:.0f} | "
                         f"{rss:.0f} |")
            log(lines[-1])
    return lines


def section_b() -> list[str]:
    """The peers' time on one volume."""
    out, _, _ = run_child([sys.executable, "-c", CHILD_B])
    peer = json.loads(out.strip().splitlines()[-1])
    lines = ["", "## B. The peers on one volume (2 mm, CPU)", "",
             "| method | s / volume |", "|---|---|"]
    return lines + [f"| {k} | {v:.2f} |" for k, v in peer.items()]


def section_d(args: argparse.Namespace, devices: list[str], steps: int = 5) -> list[str]:
    """Harmonization time against the grid the volume is harmonized on."""
    lines = ["", f"## D. Volume size: harmonization (S = {steps}) against grid spacing", "",
             "The demo head rendered on each grid; the bundled model (trained at 2 mm) run "
             "on it. This measures cost only: the app harmonizes on the model's own grid.", "",
             "| device | grid (mm) | shape | slices | voxels (M) | s / volume | "
             "network evaluations / s | peak RSS (MB) |", "|---|---|---|---|---|---|---|---|"]
    for device in devices:
        for grid in args.grids_mm:
            out, _, rss = run_child([sys.executable, "-c", CHILD_A, str(steps), device,
                                     str(args.threads), str(grid)])
            r = json.loads(out.strip().splitlines()[-1])
            shape = r["shape"]
            lines.append(f"| {device} | {grid:g} | {'x'.join(map(str, shape))} | "
                         f"{r['slices']} | {np.prod(shape) / 1e6:.2f} | {r['seconds']:.1f} | "
                         f"{r['slices'] * steps * r.get('chains', 1) / r['seconds']:.0f} | "
                         f"{rss:.0f} |")
            log(lines[-1])
    return lines


def section_c(args: argparse.Namespace) -> list[str]:
    """Participant level for growing numbers of subjects."""
    import torch

    lines = ["", "## C. Participant level (preprocessing + harmonization S=10, `--nprocs 2`)",
              "", "Simulated 2 mm heads (demo anatomy and deformed variants, protocol "
              "ge15tspgr), harmonized to siemens3tmprage with `--device auto` (here: "
              f"{'cuda' if torch.cuda.is_available() else 'cpu'}).", "",
              "| subjects | --mem-mb | wall (s) | s / subject | peak RSS of one process (MB) |",
              "|---|---|---|---|---|"]
    from harmonize_bids.simulate.dataset import make_traveling_dataset
    from harmonize_bids.simulate.protocols import PROTOCOLS
    from harmonize_bids.templates import get_template

    runs = [(n, None) for n in args.subjects] + [(max(args.subjects), args.mem_mb)]
    for n, mem in runs:
        ds = args.out_dir / f"ds{n}"
        if not ds.exists():
            make_traveling_dataset(get_template("demo_anatomy"), ds, [PROTOCOLS["ge15tspgr"]],
                                   n_anatomies=n, resolution_mm=2.0, seed=3,
                                   progress=lambda m: None)
        tag = f"{n}_{mem or 'none'}"
        cmd = [sys.executable, "-m", "harmonize_bids.cli.run", str(ds),
               str(args.out_dir / f"out{tag}"), "participant", "-w",
               str(args.out_dir / f"work{tag}"), "--nprocs", "2", "--omp-nthreads", "1",
               "--target-site", "siemens3tmprage", "--skip-bids-validation"]
        if mem:
            cmd += ["--mem-mb", str(mem)]
        _, sec, rss = run_child(cmd)
        lines.append(f"| {n} | {mem or '-'} | {sec:.0f} | {sec / n:.0f} | {rss:.0f} |")
        log(lines[-1])
    lines += ["", "Peak RSS is the largest single process (nipype worker or main), as "
              "`getrusage(RUSAGE_CHILDREN)` reports it; MultiProc runs at most `--nprocs` "
              "of them at once and, with `--mem-mb`, only as many as their declared memory "
              "estimates fit in the bound."]
    return lines


if __name__ == "__main__":
    main()
